//! What the S3 sync uploads from a volume the participant floods: first what the submission is judged and restored
//! by, and within caps on what one worker's folder may cost (files, bytes, one file's size). The objects go to the
//! embedded local store (`--local OUT`: `OUT/s3/1/<path>`), which runs the same sync as S3.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const MERGED: &str = "agent/agent_results.json";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `n` empty files in `dir` (created fast: one `open` each).
fn many_files(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::File::create(dir.join(format!("{i:07}.png"))).unwrap();
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The uploaded objects' folder of the run (`OUT/s3/<submission id>`).
fn objects(out: &Path) -> PathBuf {
    out.join("s3/1")
}

/// Break 7: a SIGTERM (here `--once`) with a flush budget too short for the 30,000 small files in worker 1's folder.
/// Before the fix the sync went smallest first over the whole volume, so the budget ran out in the empty files and
/// S3 held none of the other workers' checkpoints, no merged file, nothing of EvalAI's and no marker. The results
/// files, their last good copies, the merged file, EvalAI's files and the markers go first now.
#[test]
fn a_flush_out_of_time_still_uploads_the_results_evalai_files_and_markers() {
    const IMGS: usize = 30_000;
    let vol = Volume::from_fixture("lb2.0-mid-run");
    many_files(&vol.path("agent/agent1/imgs"), IMGS);
    let good = vol.read("agent/agent2/agent_results.json");
    vol.write_atomic("agent/agent2/.agent_results.json.last-good", good.as_bytes());
    let out = vol.side_dir("local");
    let (code, lc) = LogcopyCmd::new(&vol)
        .switch("--once")
        .flag("--flush-budget", "1")
        .flag("--max-worker-files", "1000000")
        .flag("--local", out.to_str().unwrap())
        .run(secs(120));
    let s3 = objects(&out);
    let imgs = count_files(&s3.join("agent/agent1/imgs"));
    println!("exit {code}; {imgs} of {IMGS} small files uploaded within the budget");
    assert!(imgs < IMGS, "the flush budget was long enough for every file: the test proves nothing\n{}", lc.output());
    let mut wanted: Vec<String> = (1..=3).map(Volume::worker_rel).collect();
    wanted.push("agent/agent2/.agent_results.json.last-good".into());
    wanted.push(MERGED.into());
    for f in ["results.json", "stdout.txt", "metadata.json"] {
        wanted.push(format!("evalai/{f}"));
    }
    for m in std::fs::read_dir(vol.path("containers-status")).unwrap() {
        wanted.push(format!("containers-status/{}", m.unwrap().file_name().to_string_lossy()));
    }
    let missing: Vec<&String> = wanted.iter().filter(|rel| !s3.join(rel).is_file()).collect();
    assert!(missing.is_empty(), "not in the store after the flush: {missing:?}\n{}", lc.output());
    // What is in the store is what the volume holds.
    assert_eq!(std::fs::read_to_string(s3.join(MERGED)).unwrap(), vol.read(MERGED));
}

/// Break 6: a sparse file of 64 GiB (a second's work for the participant, an hour of hashing and an 64 GiB upload
/// for logcopy) over `--max-upload-bytes`: one warning names it, it is neither hashed nor uploaded, and every other
/// file goes.
#[test]
fn a_sparse_file_over_the_upload_cap_is_skipped_with_one_warning() {
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let huge = vol.path("agent/agent2/huge.log");
    std::fs::File::create(&huge).unwrap().set_len(64 << 30).unwrap();
    vol.write_atomic("simulator/recorder/route.log", &vec![7u8; 3 << 20]);
    let out = vol.side_dir("local");
    let (code, lc) = LogcopyCmd::new(&vol)
        .switch("--once")
        .flag("--max-upload-bytes", &(4 << 20).to_string())
        .flag("--local", out.to_str().unwrap())
        .run(secs(120));
    assert_eq!(code, 0, "{}", lc.output());
    let s3 = objects(&out);
    assert!(!s3.join("agent/agent2/huge.log").exists(), "the huge file was uploaded");
    let log = lc.stdout_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("huge.log")).collect();
    assert_eq!(warnings.len(), 1, "one warning names the file: {warnings:#?}");
    assert!(warnings[0].contains("WARN") && warnings[0].contains("--max-upload-bytes"), "{}", warnings[0]);
    for rel in support::files_under(vol.root()) {
        let rel = rel.strip_prefix(vol.root()).unwrap_or(&rel).to_path_buf();
        if rel != Path::new("agent/agent2/huge.log") && !rel.starts_with("logcopy") {
            assert!(s3.join(&rel).is_file(), "{} was not uploaded\n{}", rel.display(), lc.output());
        }
    }
}

/// Break 5: a worker's folder with more files, and more bytes, than its caps: its results file still goes, the
/// smallest files go up to the caps, one warning names the folder for each cap, and other workers are not touched.
#[test]
fn a_worker_folder_over_its_caps_uploads_its_results_and_the_smallest_files_up_to_them() {
    let vol = Volume::from_fixture("lb2.0-mid-run");
    many_files(&vol.path("agent/agent1/imgs"), 500);
    // Worker 3: four files of 1, 2, 3 and 4 MiB against a cap of 6.5 MiB: the 1, 2 and 3 MiB files go.
    for mib in 1..=4u8 {
        vol.write_atomic(&format!("agent/agent3/big-{mib}.bin"), &vec![mib; (mib as usize) << 20]);
    }
    let out = vol.side_dir("local");
    let (code, lc) = LogcopyCmd::new(&vol)
        .switch("--once")
        .flag("--max-worker-files", "100")
        .flag("--max-worker-upload-bytes", &(13 << 19).to_string())
        .flag("--local", out.to_str().unwrap())
        .run(secs(120));
    assert_eq!(code, 0, "{}", lc.output());
    let s3 = objects(&out);
    for i in 1..=3 {
        assert!(s3.join(Volume::worker_rel(i)).is_file(), "worker {i}'s results\n{}", lc.output());
    }
    let uploaded = support::files_under(&s3.join("agent/agent1")).len();
    // Listed: at most 100 entries besides the results file (the imgs folder among them).
    assert!((90..=101).contains(&uploaded), "{uploaded} files of worker 1 uploaded\n{}", lc.output());
    let big: Vec<bool> = (1..=4).map(|m| s3.join(format!("agent/agent3/big-{m}.bin")).is_file()).collect();
    assert_eq!(big, [true, true, true, false], "the smallest files up to 6.5 MiB");
    assert!(s3.join("agent/agent2/leaderboard.log").is_file());
    let log = lc.stdout_text();
    let named = |what: &str| log.lines().filter(|l| l.contains("WARN") && l.contains(what)).count();
    assert_eq!(named("agent/agent1 past its first 100 files"), 1, "{log}");
    assert_eq!(named("agent/agent3 past its first"), 1, "{log}");
}

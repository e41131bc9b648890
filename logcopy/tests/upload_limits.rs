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

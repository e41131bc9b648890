//! The participant's code can write into the volume, so it can swap any folder of the layout for a symbolic link to
//! a folder outside the volume (or to `/proc`). Through the real binary (`logcopy run --local OUT --once` on a copy of
//! a recorded volume): nothing behind such a link is read as a worker's results, and nothing is written through it:
//! not the merged file, not EvalAI's files, not logcopy's log, not the upload manifest.
//!
//! Before the volume's I/O went through `volume::safe` (every component opened beneath the root, no link
//! followed), `O_NOFOLLOW` covered only the last component: `agent/agent2 -> /outside/agent2` published the
//! outside file's records, and `evalai -> /victim` or `logcopy -> /victim` wrote there.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{LogcopyCmd, Scratch, Volume, eventually_true, files_under, fixture_volume, route_ids, worker_file};

/// `logcopy run --local OUT --once` on `vol`; its exit code and its output (stdout and stderr).
fn run_once(vol: &Volume) -> (i32, String) {
    let out = vol.side_dir("local-out");
    let (code, lc) =
        LogcopyCmd::new(vol).flag("--local", out.to_str().unwrap()).switch("--once").run(Duration::from_secs(60));
    (code, lc.output())
}

/// Moves the volume's folder `rel` to `outside` (or leaves `outside` as it is when the folder does not exist) and
/// puts a symbolic link to it in its place.
fn link_outside(vol: &Volume, rel: &str, outside: &Path) {
    let inside = vol.path(rel);
    if inside.exists() {
        std::fs::rename(&inside, outside).unwrap();
    } else {
        std::fs::create_dir_all(outside).unwrap();
    }
    std::os::unix::fs::symlink(outside, &inside).unwrap();
}

/// Every file under `dir` with a hash of its content.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&std::fs::read(&p).unwrap(), &mut h);
            (p, std::hash::Hasher::finish(&h))
        })
        .collect()
}

#[test]
fn a_worker_folder_linked_outside_is_never_read() {
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let outside = Scratch::new("outside-agent2");
    // The forged folder: worker 2's results of the finished volume (five routes), and the same as a last good copy.
    let forged_dir = outside.path("agent2");
    link_outside(&vol, "agent/agent2", &forged_dir);
    let forged =
        std::fs::read_to_string(fixture_volume("lb2.0-finished").join("agent/agent2/agent_results.json")).unwrap();
    std::fs::write(forged_dir.join("agent_results.json"), &forged).unwrap();
    std::fs::write(forged_dir.join(".agent_results.json.last-good"), &forged).unwrap();
    let before = snapshot(outside.dir.as_path());

    let (code, output) = run_once(&vol);
    assert_eq!(code, 0, "{output}");
    let merged = route_ids(&vol.read("agent/agent_results.json"));
    assert!(!merged.is_empty(), "the other workers' routes are merged:\n{output}");
    let forged_ids = route_ids(&forged);
    assert!(
        merged.iter().all(|id| !forged_ids.contains(id)),
        "routes of the file behind the link were merged: {merged:?}\n{output}"
    );
    for rel in ["evalai/results.json", "evalai/stdout.txt", "evalai/metadata.json"] {
        let text = vol.read(rel);
        for id in &forged_ids {
            assert!(!text.contains(id.as_str()), "{rel} names {id}, a route of the file behind the link");
        }
    }
    assert_eq!(snapshot(outside.dir.as_path()), before, "the folder outside changed");
}

#[test]
fn output_folders_linked_outside_are_never_written() {
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let outside = Scratch::new("outside-outputs");
    link_outside(&vol, "evalai", &outside.path("evalai"));
    link_outside(&vol, "logcopy", &outside.path("logcopy"));

    let (code, output) = run_once(&vol);
    assert_eq!(code, 0, "{output}");
    let written = files_under(&outside.dir);
    assert!(written.is_empty(), "logcopy wrote outside the volume: {written:?}\n{output}");
    // The links are left as they are (the participant's), and the merge itself still happens.
    for rel in ["evalai", "logcopy"] {
        assert!(vol.path(rel).symlink_metadata().unwrap().file_type().is_symlink(), "{rel} was replaced");
    }
    assert!(!route_ids(&vol.read("agent/agent_results.json")).is_empty(), "{output}");
}

#[test]
fn every_folder_of_the_layout_linked_outside_or_to_proc() {
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let outside = Scratch::new("outside-all");
    // The agents' folder with its workers' files, moved out whole; the status folder to /proc, the others outside.
    link_outside(&vol, "agent", &outside.path("agent"));
    link_outside(&vol, "evalai", &outside.path("evalai"));
    link_outside(&vol, "logcopy", &outside.path("logcopy"));
    link_outside(&vol, "simulator", &outside.path("simulator"));
    std::fs::remove_dir_all(vol.path("containers-status")).unwrap();
    std::os::unix::fs::symlink("/proc/self", vol.path("containers-status")).unwrap();
    let before = snapshot(outside.dir.as_path());

    let (code, output) = run_once(&vol);
    assert_eq!(code, 0, "{output}");
    assert_eq!(snapshot(outside.dir.as_path()), before, "logcopy changed a folder outside the volume\n{output}");
    // Nothing was read through the links: the merge had no worker file, so nothing at all was written.
    let inside: Vec<PathBuf> = files_under(vol.root());
    assert!(inside.is_empty(), "{inside:?}\n{output}");
}

/// A hard link is a second name of the same file, and the other name can be outside the volume (a hostPath volume, a
/// local run: `ln secret agent/agent1/stolen.log`). A regular file with more than one link is neither uploaded nor
/// read as results; each is named in a warning.
#[test]
fn hard_linked_files_are_neither_uploaded_nor_merged() {
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let outside = Scratch::new("outside-hardlink");
    let secret = outside.path("secret.txt");
    std::fs::write(&secret, b"AWS_SECRET_ACCESS_KEY=hunter2\n").unwrap();
    std::fs::hard_link(&secret, vol.path("agent/agent1/stolen.log")).unwrap();
    // Worker 2's results file, swapped for a hard link to a forged copy outside.
    let forged = outside.path("forged.json");
    std::fs::write(
        &forged,
        std::fs::read(fixture_volume("lb2.0-finished").join("agent/agent2/agent_results.json")).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(vol.path("agent/agent2/agent_results.json")).unwrap();
    std::fs::hard_link(&forged, vol.path("agent/agent2/agent_results.json")).unwrap();

    let (code, out) = run_once(&vol);
    assert_eq!(code, 0, "{out}");
    let uploaded = files_under(&vol.side_dir("local-out").join("s3"));
    assert!(!uploaded.iter().any(|p| p.ends_with("stolen.log")), "the hard-linked file was uploaded: {uploaded:?}");
    for p in &uploaded {
        assert!(!std::fs::read(p).unwrap().windows(7).any(|w| w == b"hunter2"), "the secret was uploaded in {p:?}");
    }
    assert!(out.contains("stolen.log") && out.contains("hard links"), "the skipped file is named:\n{out}");
    let merged = route_ids(&vol.read("agent/agent_results.json"));
    assert!(!merged.iter().any(|r| r == "RouteScenario_9_rep0"), "the forged worker 2 routes were merged: {merged:?}");
    assert!(out.contains("agent/agent2/agent_results.json") && out.contains("hard links"), "named:\n{out}");
}

/// `logcopy restore --resume` on a volume where `agent` (or `agent/agent1`, or `containers-status`) is a link to a
/// folder outside: nothing is written, created, removed or re-moded outside. Before restore went through
/// `volume::safe` (it created folders and files by path, `O_NOFOLLOW` on the last component only), the objects
/// under `agent/` landed in the outside folder, which also became mode 0777, and markers outside were removed.
#[test]
fn restore_writes_nothing_through_a_linked_folder() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    for linked in ["agent", "agent/agent1", "containers-status"] {
        let scratch = Scratch::new("restore-link");
        // What S3 holds for submission 7: the recorded volume (a marker too, which restore deletes).
        let objects = scratch.path("out/s3/7");
        copy_tree(&fixture_volume("lb2.0-mid-run"), &objects);
        let vol = scratch.path("logs");
        std::fs::create_dir_all(vol.join(linked).parent().unwrap()).unwrap();
        let outside = scratch.path("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious.done"), b"keep").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&outside, vol.join(linked)).unwrap();
        let before = snapshot(&outside);

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_logcopy"))
            .args(["restore", "--resume", "1", "--logs"])
            .arg(&vol)
            .arg("--local")
            .arg(scratch.path("out"))
            .env_clear()
            .env("SUBMISSION_ID", "7")
            .output()
            .unwrap();
        let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("{linked} linked outside: {}\n{output}", out.status);
        assert_eq!(snapshot(&outside), before, "{linked}: written through the link\n{output}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "{linked}: created through the link\n{output}");
        assert_eq!(mode(&outside), 0o700, "{linked}: the outside folder was re-moded\n{output}");
        assert!(std::fs::symlink_metadata(vol.join(linked)).unwrap().file_type().is_symlink(), "{linked}");
        assert!(!out.status.success(), "{linked}: a restore that could not write the volume must fail\n{output}");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for f in files_under(from) {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

/// Break 5: a worker's results file rewritten over `--max-results-bytes` (the participant's code can write it) is
/// refused unread, and the worker's last good parse stays in the merge while other workers' changes go on being
/// merged.
#[test]
fn a_results_file_over_the_cap_keeps_the_workers_last_good_parse() {
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let w1 = Volume::worker_rel(1);
    let original = vol.read(&w1);
    let routes1 = route_ids(&original);
    assert!(!routes1.is_empty());
    let out = vol.side_dir("local");
    let mut lc = LogcopyCmd::new(&vol)
        .fast()
        .flag("--max-results-bytes", "20000")
        .flag("--local", out.to_str().unwrap())
        .spawn();
    let merged_has = |ids: &[String]| {
        vol.try_read("agent/agent_results.json").is_some_and(|m| {
            serde_json::from_str::<serde_json::Value>(&m).is_ok() && {
                let have = route_ids(&m);
                ids.iter().all(|id| have.contains(id))
            }
        })
    };
    eventually_true(Duration::from_secs(30), "worker 1's routes merged", || merged_has(&routes1));

    // Valid JSON (trailing blanks), over the cap.
    vol.write_in_place(&w1, format!("{original}{}", " ".repeat(30_000)).as_bytes());
    eventually_true(Duration::from_secs(30), "the refusal logged", || {
        lc.stdout_text().lines().any(|l| l.contains("20000-byte cap") && l.contains("keeping its last good parse"))
    });
    let w4 = worker_file("2.0", 4, 2, None);
    vol.write_atomic(&Volume::worker_rel(4), w4.as_bytes());
    let routes4 = route_ids(&w4);
    eventually_true(Duration::from_secs(30), "worker 4's routes merged", || merged_has(&routes4));
    assert!(merged_has(&routes1), "worker 1's last good parse left the merge\n{}", lc.output());
    lc.sigterm();
    assert_eq!(lc.wait_exit(Duration::from_secs(20)), Some(0), "{}", lc.output());
}

/// A status folder flooded by the participant's code (which can write it) with far more files than any run writes:
/// logcopy reads a bounded number of entries, finds the end markers by name, says so once, and the run still ends
/// with the right status. Before the cap, every cycle listed the whole folder into memory.
#[test]
fn a_flooded_status_folder_is_read_within_a_bound_and_the_run_still_ends() {
    let vol = Volume::from_fixture("lb2.0-finished");
    let status = vol.path("containers-status");
    for i in 0..volume::markers::MAX_STATUS_ENTRIES + 5_000 {
        std::fs::File::create(status.join(format!("junk-{i:06}"))).unwrap();
    }
    let out = vol.side_dir("local-out");
    let (code, lc) = LogcopyCmd::new(&vol).flag("--local", out.to_str().unwrap()).run(Duration::from_secs(120));
    let output = lc.output();
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("logcopy ends: final status FINISHED"), "{output}");
    assert_eq!(output.matches("the status folder holds more than").count(), 1, "the flood is logged once\n{output}");
}

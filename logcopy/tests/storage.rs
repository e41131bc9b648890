//! S3 and DynamoDB against a real local AWS server: `moto_server` (PyPI `moto[server]`, installed into `.venv` by
//! `run-scripts/test`), started on a free 127.0.0.1 port per test with its request recorder on, so each test can
//! count the exact requests logcopy made. A test fails, never skips, when the server cannot start. The harness is
//! in `support/moto.rs` (shared with `benches/storage.rs`).

#[path = "support/moto.rs"]
mod moto;

use aws_sdk_dynamodb::types::AttributeValue;
use moto::{LOG_KEY, Moto, SUBMISSION, TABLE, TEAM, aws_env, daemon, logcopy, scratch, volume, volume_files};
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test]
async fn first_sync_uploads_every_regular_file_once_and_no_link_or_fifo() {
    let moto = Moto::start("first");
    moto.setup("first", TABLE).await;
    let vol = volume("lb2.0-mid-run", "first");
    let secret = scratch("secret").join("secret.txt");
    std::fs::write(&secret, b"AWS_SECRET=never-upload-me").unwrap();
    std::os::unix::fs::symlink(&secret, vol.join("agent/agent1/leak.log")).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", vol.join("agent/agent2/environ.log")).unwrap();
    std::os::unix::fs::symlink(secret.parent().unwrap(), vol.join("simulator/linked-dir")).unwrap();
    let fifo = std::ffi::CString::new(vol.join("agent/agent1/pipe.log").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    assert_eq!(logcopy(&moto, "first", &vol, &["--once"]), 0);
    // What logcopy sent, before this test's own LIST below.
    let lists = moto.requests().iter().filter(|(m, u)| m == "GET" && u.contains("list-type")).count();
    assert_eq!(lists, 0, "the sync listed the bucket");
    let objects = moto.objects("first").await;
    let files = volume_files(&vol);
    assert_eq!(objects.keys().collect::<Vec<_>>(), files.keys().collect::<Vec<_>>(), "S3 holds exactly the volume");
    for (k, v) in &files {
        if k != LOG_KEY {
            assert_eq!(&objects[k], v, "{k} differs in S3");
        }
    }
    assert!(
        !objects
            .keys()
            .any(|k| k.contains("leak") || k.contains("environ") || k.contains("pipe") || k.contains("linked-dir"))
    );
    assert!(!objects.values().any(|v| v.windows(12).any(|w| w == b"never-upload")), "a secret was uploaded");
    let puts = moto.object_puts("first");
    assert!(puts.values().all(|n| *n == 1), "a file was uploaded twice: {puts:?}");
    assert_eq!(puts.keys().collect::<Vec<_>>(), files.keys().collect::<Vec<_>>(), "every file uploaded once");
}

#[tokio::test]
async fn a_changed_file_goes_again_a_restart_uploads_nothing_else() {
    let moto = Moto::start("changed");
    moto.setup("changed", TABLE).await;
    let vol = volume("lb2.0-mid-run", "changed");
    assert_eq!(logcopy(&moto, "changed", &vol, &["--once"]), 0);

    // A restart on an unchanged volume: only logcopy's own log (which grew) goes again.
    moto.reset_recording();
    assert_eq!(logcopy(&moto, "changed", &vol, &["--once"]), 0);
    let puts = moto.object_puts("changed");
    assert_eq!(puts.keys().collect::<Vec<_>>(), [LOG_KEY], "a restart re-uploaded data: {puts:?}");

    // A touched file with the same content: nothing. A changed one: it alone.
    let log = vol.join("agent/agent1/leaderboard.log");
    let same = std::fs::read(&log).unwrap();
    std::fs::write(&log, &same).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(vol.join("simulator/CarlaUE4-2.log"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    moto.reset_recording();
    assert_eq!(logcopy(&moto, "changed", &vol, &["--once"]), 0);
    let puts = moto.object_puts("changed");
    assert_eq!(puts.keys().collect::<Vec<_>>(), ["4321/logcopy/logcopy.log", "4321/simulator/CarlaUE4-2.log"]);
    let objects = moto.objects("changed").await;
    assert_eq!(objects["4321/simulator/CarlaUE4-2.log"], std::fs::read(vol.join("simulator/CarlaUE4-2.log")).unwrap());
}

#[tokio::test]
async fn a_growing_log_goes_at_most_once_per_period_and_whole_at_the_end() {
    let moto = Moto::start("growing");
    moto.setup("growing", TABLE).await;
    let vol = volume("lb2.0-mid-run", "growing");
    let mut child =
        daemon(&moto, "growing", &vol, &["--logs-period", "2", "--status-period", "30", "--debounce", "100ms"]);
    let log = vol.join("agent/agent2/leaderboard.log");
    let started = Instant::now();
    // 6 s of a log growing every 100 ms.
    while started.elapsed() < Duration::from_secs(6) {
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"step\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let n = moto.object_puts("growing")["4321/agent/agent2/leaderboard.log"];
    // One at the start, one per 2 s period at most while it grows, one at the final flush.
    assert!((2..=6).contains(&n), "the growing log was uploaded {n} times in 6 s at a 2 s period");
    let objects = moto.objects("growing").await;
    assert_eq!(
        objects["4321/agent/agent2/leaderboard.log"],
        std::fs::read(&log).unwrap(),
        "the final flush missed the end of the log"
    );
}

#[tokio::test]
async fn large_files_go_in_parts() {
    let moto = Moto::start("multipart");
    moto.setup("multipart", TABLE).await;
    let vol = volume("lb2.0-mid-run", "multipart");
    let rec = vol.join("simulator/recording.log");
    let mut f = std::fs::File::create(&rec).unwrap();
    let block: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    for i in 0..20u8 {
        let mut b = block.clone();
        b[0] = i;
        f.write_all(&b).unwrap();
    }
    drop(f);
    assert_eq!(logcopy(&moto, "multipart", &vol, &["--once"]), 0);
    let reqs = moto.requests();
    let key = "/multipart/4321/simulator/recording.log";
    let create = reqs.iter().filter(|(m, u)| m == "POST" && u.contains(key) && u.contains("uploads")).count();
    let parts = reqs.iter().filter(|(m, u)| m == "PUT" && u.contains(key) && u.contains("partNumber")).count();
    let complete = reqs.iter().filter(|(m, u)| m == "POST" && u.contains(key) && u.contains("uploadId")).count();
    assert_eq!((create, parts, complete), (1, 3, 1), "20 MiB in 8 MiB parts");
    let objects = moto.objects("multipart").await;
    assert_eq!(objects["4321/simulator/recording.log"], std::fs::read(&rec).unwrap());
}

#[tokio::test]
async fn restore_then_run_uploads_nothing_again() {
    let moto = Moto::start("restore");
    moto.setup("restore", TABLE).await;
    let vol = volume("lb2.0-crash-marker", "restore-src");
    assert_eq!(logcopy(&moto, "restore", &vol, &["--once"]), 0);
    let before = moto.objects("restore").await;
    assert!(before.keys().any(|k| k.starts_with("4321/containers-status/")));

    let fresh = scratch("restore-dest");
    let out = Command::new(env!("CARGO_BIN_EXE_logcopy"))
        .args(["restore", "--logs"])
        .arg(&fresh)
        .envs(aws_env(&moto, "restore"))
        .env("SUBMISSION_ID", SUBMISSION)
        .env("RESUME", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A restore says what it is about to fetch (then how far it is, every few seconds, and the end).
    let said = String::from_utf8_lossy(&out.stdout);
    let total = before.keys().filter(|k| !k.starts_with("4321/containers-status/")).count();
    assert!(said.contains(&format!("restoring the volume from the store objects={total}")), "{said}");
    assert!(said.contains("volume restored"), "{said}");
    let after = moto.objects("restore").await;
    assert!(!after.keys().any(|k| k.starts_with("4321/containers-status/")), "markers of the earlier run left in S3");
    assert_eq!(std::fs::read_dir(fresh.join("containers-status")).unwrap().count(), 0);
    let restored = volume_files(&fresh);
    for (k, v) in &after {
        assert_eq!(restored.get(k), Some(v), "{k} not restored");
    }
    // Every container's user may rewrite a restored file (the participant's user its results file), whatever the
    // umask: 0666, as the folders are 0777.
    use std::os::unix::fs::PermissionsExt;
    let results = fresh.join("agent/agent1/agent_results.json");
    let mode = std::fs::metadata(&results).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "{} has mode {mode:o}", results.display());

    moto.reset_recording();
    assert_eq!(logcopy(&moto, "restore", &fresh, &["--once"]), 0);
    let mut puts = moto.object_puts("restore");
    // The run status block of stdout.txt (docs/status.md) reads the status folder, which a resume starts empty: its
    // state changed, so its new bytes go; nothing else does.
    const STDOUT_KEY: &str = "4321/evalai/stdout.txt";
    if puts.remove(STDOUT_KEY).is_some() {
        let now = moto.objects("restore").await;
        assert_ne!(now[STDOUT_KEY], before[STDOUT_KEY], "stdout.txt uploaded again with the same bytes");
    }
    assert_eq!(puts.keys().collect::<Vec<_>>(), [LOG_KEY], "the run after a restore re-uploaded: {puts:?}");
}

#[tokio::test]
async fn start_time_is_set_over_the_pre_run_dash_and_kept_across_restarts() {
    let moto = Moto::start("start");
    moto.setup("start", TABLE).await;
    // The row as the pre-run step writes it.
    let s = |v: &str| AttributeValue::S(v.into());
    moto.dynamo()
        .await
        .put_item()
        .table_name(TABLE)
        .item("team_id", s(TEAM))
        .item("submission_id", s(SUBMISSION))
        .item("team_name", s("My Team"))
        .item("submission_status", s("SUBMITTED"))
        .item("submitted_time", s("2024-03-20 09:02:01 UTC"))
        .item("start_time", s("-"))
        .item("end_time", s("-"))
        .send()
        .await
        .unwrap();
    let vol = volume("lb2.0-mid-run", "start");
    assert_eq!(logcopy(&moto, "start", &vol, &["--once"]), 0);
    let item = moto::item(&moto).await;
    assert_eq!(item["submission_status"], "RUNNING");
    assert_eq!(item["results"], "s3://start/4321");
    assert_eq!(item["team_name"], "My Team", "the update replaced the row");
    let first = item["start_time"].clone();
    assert!(first.ends_with(" UTC") && first.len() == 23, "start_time {first:?}");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(logcopy(&moto, "start", &vol, &["--once"]), 0);
    assert_eq!(moto::item(&moto).await["start_time"], first, "a restart moved the start time");
}

#[tokio::test]
async fn the_final_record_has_the_status_end_time_and_15_metrics() {
    let moto = Moto::start("final");
    moto.setup("final", TABLE).await;
    let vol = volume("lb2.0-finished", "final");
    assert_eq!(logcopy(&moto, "final", &vol, &["--final-status"]), 0);
    let item = moto::item(&moto).await;
    assert_eq!(item["submission_status"], "FINISHED");
    assert!(item["end_time"].ends_with(" UTC"));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vol.join("evalai/results.json")).unwrap()).unwrap();
    let acc = results[0]["accuracies"].as_object().unwrap();
    assert_eq!(acc.len(), 15);
    for (label, value) in acc {
        let attr = label.to_lowercase().replace([' ', '-'], "_");
        assert_eq!(item[&attr], value.to_string(), "{attr}");
    }
    assert_ne!(item["agent_blocked"], "-", "agent_blocked carries its real value");
    let objects = moto.objects("final").await;
    assert!(objects.contains_key("4321/containers-status/logcopy.done"), "logcopy.done did not reach S3");

    // An incomplete submission: FAILED, and every metric "-".
    let moto2 = Moto::start("failed");
    moto2.setup("failed", TABLE).await;
    let vol2 = volume("lb2.0-mid-run", "failed");
    for i in 1..=4 {
        for side in ["agent", "simulator"] {
            std::fs::write(vol2.join(format!("containers-status/{side}-{i}.done")), b"").unwrap();
        }
    }
    assert_eq!(logcopy(&moto2, "failed", &vol2, &["--final-status"]), 0);
    let item = moto::item(&moto2).await;
    assert_eq!(item["submission_status"], "FAILED");
    assert_eq!(item["driving_score"], "-");
    assert_eq!(item["agent_blocked"], "-");
}

#[tokio::test]
async fn an_idle_volume_makes_no_request_and_the_log_still_arrives_at_the_end() {
    let moto = Moto::start("idle");
    moto.setup("idle", TABLE).await;
    let vol = volume("lb2.0-mid-run", "idle");
    let mut child = daemon(&moto, "idle", &vol, &["--logs-period", "1", "--status-period", "30"]);
    // The first sync: every file of the volume in S3.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !moto.object_puts("idle").contains_key("4321/evalai/stdout.txt") {
        assert!(Instant::now() < deadline, "the first sync did not happen");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    // Six rescan periods with nothing changing: not one request (upstream's sync loop: about 48 a minute).
    moto.reset_recording();
    std::thread::sleep(Duration::from_secs(6));
    let idle = moto.requests();
    assert!(idle.is_empty(), "an idle volume made requests: {idle:?}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    // The final flush sends the log as it stands then (lines written after its own upload cannot be in it).
    let objects = moto.objects("idle").await;
    let local = std::fs::read(vol.join("logcopy/logcopy.log")).unwrap();
    let uploaded = &objects[LOG_KEY];
    assert!(local.starts_with(uploaded), "the uploaded log is not a prefix of the volume's");
    assert!(String::from_utf8_lossy(uploaded).contains("SIGTERM"), "the final flush missed the end of the log");
}

#[test]
fn restore_private_status_keeps_the_shared_folders_from_the_evaluator() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    for (flag, shared) in [(None, 0o777), (Some("--private-status"), 0o2775)] {
        let fresh = scratch(&format!("restore-modes-{}", shared));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_logcopy"));
        cmd.args(["restore", "--logs"]).arg(&fresh).arg("--local").arg(fresh.join("out")).env("SUBMISSION_ID", "7");
        if let Some(f) = flag {
            cmd.arg(f);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for d in ["agent", "simulator", "logcopy", "containers-status", "evalai"] {
            assert_eq!(mode(&fresh.join(d)), shared, "{d} with {flag:?}");
        }
        for i in 1..=4 {
            assert_eq!(
                mode(&fresh.join(format!("agent/agent{i}"))),
                0o777,
                "agent/agent{i}: the evaluator writes there"
            );
        }
    }
}

#[tokio::test]
async fn hostile_names_links_and_special_files_are_skipped_without_blocking() {
    use std::os::unix::ffi::OsStrExt;
    let moto = Moto::start("hostile");
    moto.setup("hostile", TABLE).await;
    let vol = volume("lb2.0-mid-run", "hostile");
    let a1 = vol.join("agent/agent1");
    // Links: a loop, a dangling one, one out of the volume, one to a folder out of it.
    std::os::unix::fs::symlink(a1.join("loop-b.log"), a1.join("loop-a.log")).unwrap();
    std::os::unix::fs::symlink(a1.join("loop-a.log"), a1.join("loop-b.log")).unwrap();
    std::os::unix::fs::symlink(a1.join("nowhere"), a1.join("dangling.log")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/passwd", a1.join("passwd.log")).unwrap();
    std::os::unix::fs::symlink("/etc", a1.join("etc")).unwrap();
    // A UNIX socket and a FIFO (reading either would block).
    let _sock = std::os::unix::net::UnixListener::bind(a1.join("agent.sock")).unwrap();
    let fifo = std::ffi::CString::new(a1.join("pipe.log").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // Names that are no S3 key: a newline, a tab, invalid UTF-8.
    std::fs::write(a1.join("bad\nname.log"), b"x").unwrap();
    std::fs::write(a1.join("tab\tname.log"), b"x").unwrap();
    std::fs::write(a1.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9.log")), b"x").unwrap();
    // A deep folder chain with a file at the bottom (a legal name: uploaded).
    let mut deep = vol.join("simulator");
    for i in 0..40 {
        deep = deep.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.log"), b"deep").unwrap();

    let start = Instant::now();
    let out = moto::run_command_for_test(&moto, "hostile", &vol, &["--once"]).output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(60), "logcopy blocked");
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let objects = moto.objects("hostile").await;
    for bad in ["loop-", "dangling", "passwd", "/etc/", "agent.sock", "pipe.log", "name.log", "latin1"] {
        assert!(!objects.keys().any(|k| k.contains(bad)), "{bad} was uploaded: {:?}", objects.keys());
    }
    assert!(objects.keys().any(|k| k.ends_with("/d39/bottom.log")), "the deep file was not uploaded");
    assert!(objects.contains_key("4321/agent/agent1/agent_results.json"), "the regular files were uploaded");
    for skipped in ["a symbolic link", "a FIFO", "a socket", "control character", "not valid UTF-8"] {
        assert!(log.contains(skipped), "no warning about {skipped}:\n{log}");
    }
}

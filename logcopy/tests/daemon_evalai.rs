//! Integration tests of `logcopy run` (the sidecar daemon) against the local EvalAI double
//! (`fixtures/bin/fake-evalai`), on copies of the recorded volumes in `fixtures/volumes/`.
//!
//! Every test runs the real binary as a child process and asserts on what the fake server recorded and on the
//! files on the volume, never on how long something took. Periods are short (status GET and rescan every
//! second, 100 ms debounce) so each test takes seconds; the budget test alone waits for logcopy's fixed 60 s
//! request window.

mod support;

use std::time::Duration;
use support::{
    CHALLENGE, FakeEvalAi, FakeOpts, LogcopyCmd, PHASE, Record, SUBMISSION, TOKEN, Volume, eventually_true,
    files_under, logcopy_merge, now_epoch, route_ids, worker_file,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const MERGED: &str = "agent/agent_results.json";

/// Slack for the time between the moment logcopy decides and the moment the server stamps the request
/// (connection, scheduling): never used to make an assertion about speed, only to not fail on a few ms.
const STAMP_SLACK: f64 = 0.25;

fn worker(i: u32) -> String {
    Volume::worker_rel(i)
}

fn partial_puts(reqs: &[Record]) -> Vec<&Record> {
    reqs.iter().filter(|r| r.is_partial_put()).collect()
}

/// `meta.duration_system` of `route` in a results text (the merged file sent as `metadata`).
fn duration_system_of(results_text: &str, route: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(results_text).ok()?;
    v["_checkpoint"]["records"]
        .as_array()?
        .iter()
        .find(|r| r["route_id"] == route)
        .and_then(|r| r["meta"]["duration_system"].as_f64())
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// 1 (+ 14): on a mid-run volume, start = GET, PATCH running, partial PUT whose fields are the files logcopy
/// wrote; a new worker file is published in a second PUT; every PUT follows a GET at most 2 s old; the token
/// appears nowhere in logcopy's output or on the volume.
#[test]
fn t01_change_is_published_and_token_never_appears() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = LogcopyCmd::new(&vol).fast().evalai(&fake).spawn();

    let first = fake.wait_acked_put(secs(20), 1);
    let reqs = fake.requests();
    assert!(reqs[0].is_get() && reqs[0].status == Some(200), "the first request is the status GET: {:?}", reqs[0]);
    assert!(reqs[1].is_patch(), "the second request is the start PATCH: {:?}", reqs[1]);
    assert_eq!(reqs[1].body_str("submission_status"), Some("running"));
    assert_eq!(reqs[1].body["submission"].as_u64(), Some(SUBMISSION), "PATCH body: {}", reqs[1].body);
    let first_put = reqs.iter().position(Record::is_partial_put).unwrap();
    assert!(
        reqs[2..first_put].iter().all(Record::is_get),
        "only status GETs between the PATCH and the first PUT: {:?}",
        &reqs[2..first_put]
    );
    assert!(!fake.submission()["started_at"].is_null(), "the PATCH set started_at");

    // The PUT carries exactly the files logcopy wrote on the volume.
    let merged = vol.read(MERGED);
    assert_eq!(first.body_str("stdout"), Some(vol.read("evalai/stdout.txt").as_str()), "stdout");
    assert_eq!(first.body_str("result"), Some(vol.read("evalai/results.json").as_str()), "result");
    assert_eq!(vol.read("evalai/metadata.json"), merged, "metadata.json is a copy of the merged file");
    assert_eq!(first.body_str("metadata"), Some(merged.as_str()), "metadata");
    assert_eq!(first.body_str("stderr"), Some(""));
    assert!(first.body["submission"].is_number(), "submission must be a JSON number: {}", first.body["submission"]);
    assert_eq!(first.body["submission"].as_u64(), Some(SUBMISSION));
    assert!(first.body["challenge_phase"].is_number(), "challenge_phase: {}", first.body["challenge_phase"]);
    assert_eq!(first.body["challenge_phase"].as_u64(), Some(PHASE));
    assert_eq!(first.body_str("submission_status"), Some("PARTIALLY_EVALUATED"));
    assert!(first.path.contains(&format!("/challenges/{CHALLENGE}/")), "{}", first.path);
    assert_eq!(first.metadata_routes().len(), 10, "mid-run has 10 records");

    // Worker 4's evaluator writes its first file (in place, as the evaluator does): routes 15 and 16.
    vol.write_in_place(&worker(4), worker_file("2.0", 4, 2, None).as_bytes());
    let second = fake.wait_put_where(secs(20), "a PUT with worker 4's routes", |r| {
        r.metadata_routes().iter().any(|id| id == "RouteScenario_15_rep0")
    });
    let routes = second.metadata_routes();
    assert!(routes.iter().any(|id| id == "RouteScenario_16_rep0"), "{routes:?}");
    assert_eq!(routes.len(), 12);
    assert_eq!(second.body_str("metadata"), Some(vol.read(MERGED).as_str()), "the PUT carries the new merged file");

    // Every partial PUT follows a status GET at most 2 s old.
    let reqs = fake.requests();
    for put in partial_puts(&reqs) {
        let get = reqs.iter().rev().find(|r| r.is_get() && r.t <= put.t);
        let get = get.unwrap_or_else(|| panic!("a PUT with no GET before it: {put:?}"));
        assert!(put.t - get.t <= 2.0 + STAMP_SLACK, "PUT at {} follows the last GET by {:.3} s", put.t, put.t - get.t);
    }

    assert_eq!(lc.terminate(secs(15)), 0, "SIGTERM ends logcopy with 0");

    // 14: the token never appears.
    let token = TOKEN.as_bytes();
    assert_eq!(count(lc.stdout_text().as_bytes(), token), 0, "token in logcopy's stdout");
    assert_eq!(count(lc.stderr_text().as_bytes(), token), 0, "token in logcopy's stderr");
    let files = files_under(vol.root());
    assert!(files.iter().any(|f| f.ends_with("logcopy/logcopy.log")), "logcopy/logcopy.log is written: {files:?}");
    // Also what logcopy wrote beside the volume (the embedded local S3 and DynamoDB copies, its captured output).
    for f in files.into_iter().chain(files_under(&lc.work_dir)) {
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(count(&bytes, token), 0, "token found in {}", f.display());
    }
}

/// 2: rewriting a worker file with identical bytes sends nothing new.
#[test]
fn t02_identical_rewrite_sends_no_put() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = LogcopyCmd::new(&vol).fast().evalai(&fake).spawn();
    fake.wait_acked_put(secs(20), 1);
    let before = partial_puts(&fake.requests()).len();

    let same = std::fs::read(vol.path(&worker(1))).unwrap();
    vol.write_in_place(&worker(1), &same);
    std::thread::sleep(Duration::from_millis(2500)); // the debounce and two full rescans
    let reqs = fake.requests();
    assert_eq!(partial_puts(&reqs).len(), before, "an identical rewrite made a new PUT");
    assert!(lc.is_running());

    // The pipeline was alive all along: a real change is published.
    vol.write_atomic(&worker(4), worker_file("2.0", 4, 1, None).as_bytes());
    fake.wait_put_where(secs(20), "a PUT after a real change", |r| {
        r.metadata_routes().iter().any(|id| id == "RouteScenario_15_rep0")
    });
    assert_eq!(lc.terminate(secs(15)), 0);
}

/// 3: with 4 requests a minute, six quick rewrites coalesce: fewer PUTs than rewrites, the last PUT carries the
/// newest content, and no 60 s window ever holds more than 4 requests.
#[test]
fn t03_updates_coalesce_under_the_budget() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let _lc = LogcopyCmd::new(&vol).fast().flag("--evalai-rpm", "4").evalai(&fake).spawn();
    fake.wait_acked_put(secs(20), 1);
    let start = now_epoch();

    // Six distinct versions of worker 4's file; each one stands out by its first record's duration_system.
    let versions: Vec<f64> = (1..=6).map(|i| 1000.5 + f64::from(i)).collect();
    for d in &versions {
        vol.write_atomic(&worker(4), worker_file("2.0", 4, 2, Some(*d)).as_bytes());
        std::thread::sleep(Duration::from_millis(300)); // longer than the debounce: each is merged on its own
    }
    let newest = *versions.last().unwrap();
    assert_eq!(duration_system_of(&vol.read(MERGED), "RouteScenario_15_rep0"), Some(newest), "merged file");

    // The window is 60 s: the newest content can only go out once the first requests leave it.
    let last = fake.wait_put_where(secs(80), "the newest content acknowledged", |r| {
        r.body_str("metadata").and_then(|m| duration_system_of(m, "RouteScenario_15_rep0")) == Some(newest)
    });
    let reqs = fake.requests();
    let puts_after: Vec<&Record> = partial_puts(&reqs).into_iter().filter(|r| r.t > start).collect();
    assert!(puts_after.len() < versions.len(), "{} PUTs for {} rewrites: nothing coalesced", puts_after.len(), 6);
    let final_put = partial_puts(&reqs).last().copied().unwrap();
    assert_eq!(final_put.t, last.t, "the newest content is in the last PUT");

    // The budget: sorted by time, request i+4 is at least 60 s after request i.
    let mut ts: Vec<f64> = reqs.iter().map(|r| r.t).collect();
    ts.sort_by(f64::total_cmp);
    for w in ts.windows(5) {
        assert!(
            w[4] - w[0] >= 60.0 - STAMP_SLACK,
            "5 requests within {:.3} s (rpm 4): {:?}",
            w[4] - w[0],
            reqs.iter().map(|r| (r.t, r.method.as_str())).collect::<Vec<_>>()
        );
    }
}

/// 4: a cancel set on EvalAI is seen by the periodic GET: cancel markers for every worker, exit 0, and no PUT
/// after the cancel (EvalAI still shows it cancelled).
#[test]
fn t04_cancel_seen_by_the_periodic_get() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = LogcopyCmd::new(&vol).fast().evalai(&fake).spawn();
    fake.wait_acked_put(secs(20), 1);

    fake.set_status("cancelled");
    let cancelled_at = now_epoch();
    let code = lc.wait_exit(secs(15));

    let reqs = fake.requests();
    let late: Vec<&Record> = partial_puts(&reqs).into_iter().filter(|r| r.t > cancelled_at).collect();
    assert!(late.is_empty(), "partial PUTs after the cancel: {late:?}");
    assert_eq!(fake.submission()["status"], "cancelled", "the cancel was undone on EvalAI");
    assert_eq!(code, Some(0), "logcopy exits 0 after the cancel");
    assert!(vol.has_marker("simulation.cancel"));
    for i in 1..=4 {
        assert!(vol.has_marker(&format!("simulation-{i}.cancel")), "simulation-{i}.cancel");
    }
    assert!(!vol.has_marker("logcopy.done"), "a cancelled run is not a completed one");
}

/// 5: a cancel set just before a results file changes: the change must not be sent as a partial PUT, which
/// would turn `cancelled` back into `partially_evaluated` on EvalAI.
#[test]
fn t05_cancel_just_before_a_change_is_not_undone() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = LogcopyCmd::new(&vol).fast().evalai(&fake).spawn();
    fake.wait_acked_put(secs(20), 1);

    // Right after a periodic status GET (so the next one is a full period away), cancel, then change a file.
    let gets = fake.requests().iter().filter(|r| r.is_get()).count();
    fake.wait_requests(secs(10), "the next periodic GET", |r| r.iter().filter(|r| r.is_get()).count() > gets);
    fake.set_status("cancelled");
    let cancelled_at = now_epoch();
    vol.write_atomic(&worker(4), worker_file("2.0", 4, 2, None).as_bytes());
    let code = lc.wait_exit(secs(10));

    let reqs = fake.requests();
    let late: Vec<(f64, &str)> = partial_puts(&reqs)
        .into_iter()
        .filter(|r| r.t > cancelled_at)
        .map(|r| (r.t - cancelled_at, r.body_str("submission_status").unwrap_or("")))
        .collect();
    assert!(late.is_empty(), "partial PUTs sent after the cancel (seconds after it, status): {late:?}");
    assert_eq!(fake.submission()["status"], "cancelled", "the cancel was undone on EvalAI");
    assert_eq!(code, Some(0), "logcopy exits 0 after the cancel");
    assert!(vol.has_marker("simulation.cancel"));
}

/// 6: the start PATCH goes only to a fresh submission: none for `running` or `partially_evaluated`, exactly one
/// for `submitted`.
#[test]
fn t06_patch_only_on_a_fresh_submission() {
    let cases = [("running", 0), ("partially_evaluated", 0), ("submitted", 1)];
    let runs: Vec<_> = cases
        .iter()
        .map(|(status, _)| {
            let fake = FakeEvalAi::start_with(FakeOpts { status: (*status).into(), ..FakeOpts::default() });
            let vol = Volume::from_fixture("lb2.0-mid-run");
            let lc = LogcopyCmd::new(&vol).fast().evalai(&fake).spawn();
            (fake, vol, lc)
        })
        .collect();
    for ((status, patches), (fake, _vol, lc)) in cases.iter().zip(&runs) {
        fake.wait_acked_put(secs(20), 1);
        let gets = fake.requests().iter().filter(|r| r.is_get()).count();
        // Two more status periods: a late PATCH would show.
        fake.wait_requests(secs(10), "two more status GETs", |r| r.iter().filter(|r| r.is_get()).count() >= gets + 2);
        let reqs = fake.requests();
        let got: Vec<&Record> = reqs.iter().filter(|r| r.is_patch()).collect();
        assert_eq!(got.len(), *patches, "submission {status}: PATCHes {got:?}\n{}", lc.output());
        if let Some(p) = got.first() {
            assert_eq!(p.body_str("submission_status"), Some("running"));
            assert!(reqs[0].is_get(), "the PATCH follows the status GET");
        }
    }
}

/// 7a: 500, 503, a reset mid-reply, a closed connection and a reply slower than --request-timeout on the PUT
/// path: the newest payload is still acknowledged in the end, and logcopy keeps running.
#[test]
fn t07_faults_are_retried_until_acknowledged() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = LogcopyCmd::new(&vol).fast().flag("--request-timeout", "1").evalai(&fake).spawn();
    fake.wait_acked_put(secs(20), 1);

    let on_put = |mode: &str| {
        serde_json::json!({"mode": mode, "count": 1, "method": "PUT", "path_contains": "update_partially_evaluated",
                           "seconds": 2})
    };
    for mode in ["500", "503", "reset", "close", "delay"] {
        fake.fault(on_put(mode));
    }
    vol.write_atomic(&worker(4), worker_file("2.0", 4, 2, None).as_bytes());

    let acked = fake.wait_put_where(secs(45), "the new content acknowledged after the faults", |r| {
        r.metadata_routes().iter().any(|id| id == "RouteScenario_15_rep0")
    });
    assert_eq!(acked.body_str("metadata"), Some(vol.read(MERGED).as_str()), "the newest payload");
    let reqs = fake.requests();
    let faults: Vec<&str> = reqs.iter().filter_map(|r| r.fault.as_deref()).collect();
    assert_eq!(faults, ["500", "503", "reset", "close", "delay"], "every fault was met, in order");
    assert!(fake.pending_faults().is_empty());
    assert!(lc.is_running(), "logcopy keeps running after the faults");
    assert_eq!(lc.terminate(secs(15)), 0);
}

/// 7b: a 429 with Retry-After 2 pauses every request for 2 s, including a pending update.
#[test]
fn t07b_retry_after_is_honoured() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = LogcopyCmd::new(&vol).fast().evalai(&fake).spawn();
    fake.wait_acked_put(secs(20), 1);

    fake.fault(serde_json::json!({"mode": "429", "count": 1, "seconds": 2}));
    let reqs = fake.wait_requests(secs(10), "the 429", |r| r.iter().any(|r| r.fault.as_deref() == Some("429")));
    let t429 = reqs.iter().find(|r| r.fault.as_deref() == Some("429")).unwrap().t;
    // Work is waiting during the pause.
    vol.write_atomic(&worker(4), worker_file("2.0", 4, 2, None).as_bytes());
    let put = fake.wait_put_where(secs(20), "the change published after the pause", |r| {
        r.metadata_routes().iter().any(|id| id == "RouteScenario_15_rep0")
    });
    assert!(put.t >= t429 + 2.0, "the PUT came {:.3} s after the 429", put.t - t429);
    let reqs = fake.requests();
    let during: Vec<(f64, &str)> =
        reqs.iter().filter(|r| r.t > t429 && r.t < t429 + 2.0).map(|r| (r.t - t429, r.method.as_str())).collect();
    assert!(during.is_empty(), "requests during the 2 s pause (seconds after the 429, method): {during:?}");
    assert_eq!(lc.terminate(secs(15)), 0);
}

/// 8: a refused token (401) is an operator error: logged, never read as a cancel, logcopy keeps running;
/// SIGTERM still ends it with 0.
#[test]
fn t08_refused_token_is_logged_not_a_cancel() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = LogcopyCmd::new(&vol).fast().evalai_with_token(&fake, "tok-WRONG-0000000000000").spawn();

    let reqs = fake.wait_requests(secs(20), "three refused status GETs", |r| {
        r.iter().filter(|r| r.is_get() && r.status == Some(401)).count() >= 3
    });
    assert!(reqs.iter().all(|r| r.status == Some(401) && r.auth == "invalid"), "{reqs:?}");
    assert!(lc.is_running(), "logcopy keeps running on a refused token\n{}", lc.output());
    eventually_true(secs(5), "a log line saying the token was refused", || {
        lc.output().contains("refused the host token")
    });
    for m in ["simulation.cancel", "simulation-1.cancel", "simulation-4.cancel"] {
        assert!(!vol.has_marker(m), "{m} written on a 401");
    }
    assert_eq!(lc.terminate(secs(20)), 0);
    assert!(!vol.has_marker("simulation.cancel"), "a cancel marker was written at the end");
}

/// 9: a worker file caught half-written keeps its last good parse: the merged file and EvalAI keep the last good
/// merge; the complete file, with one more record, is then published.
#[test]
fn t09_half_written_file_keeps_the_last_good_merge() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = LogcopyCmd::new(&vol).fast().evalai(&fake).spawn();
    fake.wait_acked_put(secs(20), 1);
    let good = vol.read(MERGED);
    assert_eq!(route_ids(&good).len(), 10);

    let len = std::fs::metadata(vol.path(&worker(1))).unwrap().len() as usize;
    vol.truncate_in_place(&worker(1), len / 2);
    std::thread::sleep(Duration::from_millis(2500)); // the debounce and two full rescans
    assert_eq!(vol.read(MERGED), good, "the merged file changed after a half-written worker file");
    assert_eq!(vol.read("evalai/metadata.json"), good);
    let reqs = fake.requests();
    for put in partial_puts(&reqs) {
        assert!(put.metadata_routes().len() >= 10, "a PUT carries fewer records: {:?}", put.metadata_routes());
    }

    // The evaluator finishes its write, with one more record (route 3).
    vol.write_in_place(&worker(1), worker_file("2.0", 1, 4, None).as_bytes());
    let put = fake.wait_put_where(secs(20), "a PUT with the new record", |r| {
        r.metadata_routes().iter().any(|id| id == "RouteScenario_3_rep0")
    });
    assert_eq!(put.metadata_routes().len(), 11);
    assert_eq!(route_ids(&vol.read(MERGED)).len(), 11);
    assert_eq!(lc.terminate(secs(15)), 0);
}

/// 10: SIGTERM right after a change: exit 0 within the flush budget, and the change reached the volume and EvalAI.
#[test]
fn t10_sigterm_flushes_the_newest_change() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = LogcopyCmd::new(&vol).fast().flag("--flush-budget", "5").evalai(&fake).spawn();
    fake.wait_acked_put(secs(20), 1);

    vol.write_atomic(&worker(4), worker_file("2.0", 4, 2, None).as_bytes());
    lc.sigterm();
    let code = lc.wait_exit(secs(5 + 5));
    assert_eq!(code, Some(0), "exit code after SIGTERM (flush budget 5 s)");
    let merged = vol.read(MERGED);
    assert!(route_ids(&merged).iter().any(|id| id == "RouteScenario_15_rep0"), "the merged file has the change");
    let reqs = fake.requests();
    let last = reqs.iter().rev().find(|r| r.is_partial_put() && r.acknowledged()).unwrap();
    assert_eq!(last.body_str("metadata"), Some(merged.as_str()), "the last PUT carries the newest content");
}

/// 18: a 256 GiB sparse file on the volume, whose hash takes minutes (the S3 sync hashes what it uploads): while
/// logcopy hashes it, a rewritten results file is merged, and SIGTERM ends the run within the flush budget. Before
/// the sync's plan left the runtime's one thread, the merge and the SIGTERM both waited for the whole hash.
#[test]
fn t18_hashing_a_huge_file_holds_back_neither_a_merge_nor_the_exit() {
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let huge = vol.path("simulator/recorder/huge.log");
    std::fs::create_dir_all(huge.parent().unwrap()).unwrap();
    std::fs::File::create(&huge).unwrap().set_len(256 << 30).unwrap();
    let out = vol.side_dir("local");
    // Over the default --max-upload-bytes, which would skip it unhashed: lifted, so that it is hashed.
    let mut lc = LogcopyCmd::new(&vol)
        .fast()
        .flag("--flush-budget", "2")
        .flag("--max-upload-bytes", &u64::MAX.to_string())
        .flag("--local", out.to_str().unwrap())
        .spawn();
    let pid = lc.pid();
    eventually_true(secs(30), "logcopy hashing the huge file", || {
        testkit::procfs::read_position(pid, &huge).is_some_and(|p| p >= 64 << 20)
    });

    vol.write_in_place(&worker(4), worker_file("2.0", 4, 2, None).as_bytes());
    eventually_true(secs(30), "the rewrite in the merged file", || {
        vol.try_read(MERGED).is_some_and(|m| route_ids(&m).iter().any(|id| id == "RouteScenario_15_rep0"))
    });
    assert!(testkit::procfs::read_position(pid, &huge).is_some(), "merged while the huge file was still being hashed");
    assert!(out.join("s3/1/agent/agent1/agent_results.json").exists(), "the small files went before the huge one");

    lc.sigterm();
    // The final flush ends at its budget (2 s): its sync hashes the huge file again until it is stopped.
    assert_eq!(lc.wait_exit(secs(2 + 8)), Some(0), "exit code after SIGTERM (flush budget 2 s)\n{}", lc.output());
    let log = lc.stdout_text();
    assert!(log.contains("the periodic sync stops where it is and the final sync starts"), "{log}");
}

/// 11: every side done but worker 4 never wrote a results file: exit 0, logcopy.done, EvalAI `failed`, and
/// stdout.txt ends with a note naming worker 4 and the routes with no result.
#[test]
fn t11_completion_with_a_missing_worker() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = LogcopyCmd::new(&vol).fast().switch("--final-status").evalai(&fake).spawn();
    fake.wait_acked_put(secs(20), 1);

    for i in [1, 2, 4] {
        vol.add_marker(&format!("agent-{i}.done"));
        vol.add_marker(&format!("simulator-{i}.done"));
    }
    let code = lc.wait_exit(secs(30));
    assert_eq!(code, Some(0), "exit code at completion");
    assert!(vol.has_marker("logcopy.done"), "logcopy.done");
    assert!(!vol.has_marker("simulation.cancel"));
    let sub = fake.submission();
    assert_eq!(sub["status"], "failed", "EvalAI's final status");
    let reqs = fake.requests();
    let fin = reqs.iter().rev().find(|r| r.is_final_put() && r.acknowledged()).expect("a final status PUT");
    assert_eq!(fin.body_str("submission_status"), Some("FAILED"));

    let stdout = vol.read("evalai/stdout.txt");
    assert_eq!(sub["stdout"].as_str(), Some(stdout.as_str()), "EvalAI shows the final stdout.txt");
    let at = stdout.find("The submission ended incomplete").unwrap_or_else(|| panic!("no note at the end:\n{stdout}"));
    let note = &stdout[at..];
    assert!(note.contains("worker 4"), "the note names worker 4: {note}");
    let listed: Vec<&str> = note
        .split("Routes with no result:")
        .nth(1)
        .unwrap_or_else(|| panic!("the note lists no routes with no result: {note:?}"))
        .split(|c: char| c == ',' || c == '.' || c.is_whitespace())
        .filter(|s| s.starts_with("RouteScenario_"))
        .collect();
    for r in [3, 4, 7, 8, 9] {
        let id = format!("RouteScenario_{r}_rep0");
        assert!(listed.contains(&id.as_str()), "{id} is not listed as having no result: {listed:?}");
    }
    for have in route_ids(&vol.read(MERGED)) {
        assert!(!listed.contains(&have.as_str()), "{have} has a result but is listed: {listed:?}");
    }
}

/// 12: a finished volume with --final-status: exit 0, logcopy.done, EvalAI `finished` with its leaderboard row.
#[test]
fn t12_completion_finished() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-finished");
    // What the participant's evaluator printed last: the hosts' tail of it (EvalAI's environment_log) carries it,
    // with the token redacted.
    let log = vol.read("agent/agent2/leaderboard.log");
    vol.write_in_place("agent/agent2/leaderboard.log", format!("{log}OPERATOR-TAIL-MARK {TOKEN}\n").as_bytes());
    let mut lc = LogcopyCmd::new(&vol).fast().switch("--final-status").evalai(&fake).spawn();
    let code = lc.wait_exit(secs(30));
    assert_eq!(code, Some(0), "exit code at completion");
    assert!(vol.has_marker("logcopy.done"), "logcopy.done");
    let sub = fake.submission();
    assert_eq!(sub["status"], "finished", "EvalAI's final status: {sub}");
    let row = &sub["leaderboard"];
    assert!(row.is_object(), "no leaderboard row: {sub}");
    assert!(row["Driving score"].is_number(), "{row}");
    let reqs = fake.requests();
    let fin = reqs.iter().rev().find(|r| r.is_final_put() && r.acknowledged()).expect("a final status PUT");
    assert_eq!(fin.body_str("submission_status"), Some("FINISHED"));
    assert_eq!(fin.body_str("metadata"), Some(vol.read(MERGED).as_str()));
    assert_eq!(fin.body_str("result"), Some(vol.read("evalai/results.json").as_str()));
    let operator = fin.body_str("environment_log").unwrap_or_default();
    assert!(operator.contains("===== worker 2") && operator.contains("OPERATOR-TAIL-MARK [redacted]"), "{operator}");
    assert!(!operator.contains(TOKEN), "the token is redacted");
    for r in reqs.iter().filter(|r| r.is_partial_put()) {
        assert!(r.body_str("environment_log").is_none_or(str::is_empty), "a partial update carries the tail");
        assert!(!r.body_str("stdout").unwrap_or_default().contains("OPERATOR-TAIL-MARK"));
    }
}

/// 13: `--once --local` on every recorded volume: exit 0, the requests file, its PUT's metadata is the merged file,
/// which is byte-identical to `logcopy merge` on the same worker files; cancelled volumes send no partial PUT.
#[test]
fn t13_every_recorded_volume_once_local() {
    let names = [
        "lb1.0-cancelled",
        "lb1.0-crash-marker",
        "lb1.0-finished",
        "lb1.0-mid-run",
        "lb2.0-cancelled",
        "lb2.0-crash-marker",
        "lb2.0-finished",
        "lb2.0-mid-run",
    ];
    let on_disk: Vec<String> = std::fs::read_dir(support::repo_root().join("fixtures/volumes"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk.len(), names.len(), "the recorded volumes changed: {on_disk:?}");
    for name in names {
        let vol = Volume::from_fixture(name);
        let out = vol.side_dir("local");
        if name.ends_with("cancelled") {
            // The participant cancelled on EvalAI (the local one): the volume's cancel marker is confirmed.
            std::fs::write(out.join("evalai-cancel"), b"").unwrap();
        }
        let (code, lc) = LogcopyCmd::new(&vol).flag("--local", out.to_str().unwrap()).switch("--once").run(secs(30));
        assert_eq!(code, 0, "{name}: exit code\n{}", lc.output());
        let jsonl = std::fs::read_to_string(out.join("evalai-requests.jsonl"))
            .unwrap_or_else(|e| panic!("{name}: evalai-requests.jsonl: {e}"));
        let lines: Vec<serde_json::Value> =
            jsonl.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}"))).collect();
        let puts: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["method"] == "PUT" && l["path"].as_str().unwrap_or("").contains("update_partially"))
            .collect();
        let merged = vol.read(MERGED);

        let merge_out = vol.side_dir("merge").join("merged.json");
        let paths: Vec<_> = (1..=4).map(|i| vol.path(&worker(i))).collect();
        let m = logcopy_merge(&paths, &merge_out);
        assert!(m.status.success(), "{name}: logcopy merge: {}", String::from_utf8_lossy(&m.stderr));
        assert!(std::fs::read(&merge_out).unwrap() == merged.as_bytes(), "{name}: merged file differs from `merge`");

        if name.ends_with("cancelled") {
            assert!(puts.is_empty(), "{name}: a partial PUT on a cancelled volume: {jsonl}");
            assert!(
                lc.stdout_text().contains("final status CANCELLED"),
                "{name}: did not end as cancelled\n{}",
                lc.output()
            );
            assert!(!vol.has_marker("logcopy.done"), "{name}");
        } else {
            assert_eq!(puts.len(), 1, "{name}: partial PUTs: {jsonl}");
            assert_eq!(puts[0]["body"]["metadata"].as_str(), Some(merged.as_str()), "{name}: PUT metadata");
            assert_eq!(puts[0]["body"]["stdout"].as_str(), Some(vol.read("evalai/stdout.txt").as_str()), "{name}");
        }
    }
}

/// 15: bad configuration exits 2 and names the setting, before touching the volume.
#[test]
fn t16_forged_markers_are_claims_not_commands() {
    // The participant's code can write the status folder. A forged `logcopy.done` changes nothing; a forged
    // `simulation.cancel` is checked with EvalAI, which says `running`: the workers have stopped on it, so the run
    // ends FAILED with the reason, never CANCELLED, and logcopy writes no cancel markers of its own.
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = LogcopyCmd::new(&vol).fast().switch("--final-status").evalai(&fake).spawn();
    fake.wait_acked_put(secs(20), 1);

    vol.add_marker("logcopy.done");
    // Worker 1 records more routes: a change that must still be published.
    let more = std::fs::read(support::fixture_volume("lb2.0-finished").join(Volume::worker_rel(1))).unwrap();
    vol.write_in_place(&Volume::worker_rel(1), &more);
    let before = fake.requests().iter().filter(|r| r.is_partial_put() && r.acknowledged()).count();
    fake.wait_requests(secs(20), "a partial PUT after the forged logcopy.done", |reqs| {
        reqs.iter().filter(|r| r.is_partial_put() && r.acknowledged()).count() > before
    });
    assert!(lc.is_running(), "a forged logcopy.done stopped logcopy");

    vol.add_marker("simulation.cancel");
    let code = lc.wait_exit(secs(30));
    assert_eq!(code, Some(0), "exit code");
    let out = lc.output();
    assert!(out.contains("did not write"), "the forged cancel marker is logged as such:\n{out}");
    assert!(out.contains("forged"), "the end names the forgery:\n{out}");
    let sub = fake.submission();
    assert_eq!(sub["status"], "failed", "EvalAI's final status: {sub}");
    let fin = fake.requests().into_iter().rev().find(|r| r.is_final_put() && r.acknowledged()).expect("final PUT");
    assert_eq!(fin.body_str("submission_status"), Some("FAILED"));
    for i in 1..=4 {
        assert!(!vol.has_marker(&format!("simulation-{i}.cancel")), "logcopy wrote a cancel marker of its own");
    }
}

#[test]
fn t17_a_cancel_marker_confirmed_by_evalai_ends_as_cancelled() {
    // At start, as after a restart of logcopy that had seen the cancel: the marker is checked, EvalAI confirms.
    let fake = FakeEvalAi::start();
    fake.set_status("cancelled");
    let vol = Volume::from_fixture("lb2.0-mid-run");
    vol.add_marker("simulation.cancel");
    let mut lc = LogcopyCmd::new(&vol).fast().switch("--final-status").evalai(&fake).spawn();
    let code = lc.wait_exit(secs(30));
    assert_eq!(code, Some(0), "exit code");
    let reqs = fake.requests();
    assert!(reqs.iter().any(|r| r.is_get()), "EvalAI was asked");
    assert!(!reqs.iter().any(|r| r.is_partial_put()), "no partial PUT on a cancelled submission");
    assert_eq!(fake.submission()["status"], "cancelled");
    for i in 1..=4 {
        assert!(vol.has_marker(&format!("simulation-{i}.cancel")), "simulation-{i}.cancel");
    }
    assert!(!vol.has_marker("logcopy.done"));
}

#[test]
fn t15_bad_configuration_exits_2_naming_the_setting() {
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let base = |vol: &Volume| {
        LogcopyCmd::new(vol)
            .env("CHALLENGE_ID", "12")
            .env("SUBMISSION_ID", "4321")
            .env("TRACK_ID", "2015")
            .env("TEAM_ID", "987")
            .env("EVALAI_API_SERVER", "http://127.0.0.1:9")
            .env("EVALAI_AUTH_TOKEN", "tok-config-test")
            .flag("--local-storage", support::LOCAL_OUT)
    };
    let cases = [
        (base(&vol).env("SUBMISSION_ID", "abc"), "SUBMISSION_ID"),
        (base(&vol).env("EVALAI_API_SERVER", "eval.ai"), "EVALAI_API_SERVER"),
        (base(&vol).env("EVALAI_AUTH_TOKEN", ""), "EVALAI_AUTH_TOKEN"),
        (base(&vol).env("TRACK_ID", "-1"), "TRACK_ID"),
        (base(&vol).flag("--evalai-rpm", "1"), "EVALAI_RPM"),
    ];
    for (cmd, setting) in cases {
        let (code, lc) = cmd.run(secs(10));
        assert_eq!(code, 2, "{setting}: exit code\n{}", lc.output());
        assert!(lc.stderr_text().contains(setting), "{setting} not named on stderr: {}", lc.stderr_text());
    }
    assert!(!vol.exists("evalai") && !vol.exists("logcopy"), "a configuration error touched the volume");

    let gone = support::Scratch::new("no-volume");
    let (code, lc) = base(&vol).logs(&gone.path("missing")).run(secs(10));
    assert_eq!(code, 2, "missing volume: exit code\n{}", lc.output());
    assert!(lc.stderr_text().contains("LOGS_DIR"), "{}", lc.stderr_text());
}

/// Issue 19: a remote edge with a missing setting is exit 2 naming it, never a silent local stand-in (the objects
/// used to go to `./logcopy-local` on the image's read-only root); `--local OUT` still overrides every edge, and
/// says so at start, one line per edge.
#[test]
fn t15b_a_remote_edge_missing_its_settings_exits_2() {
    let vol = Volume::from_fixture("lb2.0-finished");
    let cluster = |vol: &Volume| {
        LogcopyCmd::new(vol)
            .env("CHALLENGE_ID", "12")
            .env("SUBMISSION_ID", "4321")
            .env("TRACK_ID", "2015")
            .env("TEAM_ID", "987")
            .env("EVALAI_AUTH_TOKEN", "tok-config-test")
            .switch("--once")
    };
    let server = ("EVALAI_API_SERVER", "http://127.0.0.1:9");
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Env, &[&str]); 4] = [
        (&[server], &["S3_BUCKET", "DYNAMODB_SUBMISSIONS_TABLE"]),
        (&[server, ("S3_BUCKET", "bkt")], &["DYNAMODB_SUBMISSIONS_TABLE"]),
        (&[("S3_BUCKET", "bkt"), ("DYNAMODB_SUBMISSIONS_TABLE", "t")], &["EVALAI_API_SERVER"]),
        (&[server, ("DYNAMODB_SUBMISSIONS_TABLE", "t")], &["S3_BUCKET"]),
    ];
    for (env, missing) in cases {
        let mut cmd = cluster(&vol);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let (code, lc) = cmd.run(secs(60));
        assert_eq!(code, 2, "{env:?}: exit code\n{}", lc.output());
        let stderr = lc.stderr_text();
        assert_eq!(stderr.lines().count(), 1, "one line, every problem in it: {stderr}");
        assert!(stderr.starts_with("logcopy run: configuration error: "), "{stderr}");
        for m in missing {
            assert!(stderr.contains(&format!("{m}: is required")), "{env:?}: {m} not named: {stderr}");
        }
        assert!(!lc.work_dir.join("logcopy-local").exists(), "{env:?}: nothing went to the local stand-in");
    }
    // `--local OUT` overrides every edge, one line each at start naming what it ignores.
    let out = vol.side_dir("local");
    let (code, lc) = cluster(&vol)
        .env("EVALAI_API_SERVER", server.1)
        .env("S3_BUCKET", "bkt")
        .flag("--local", out.to_str().unwrap())
        .run(secs(60));
    assert_eq!(code, 0, "{}", lc.output());
    let log = lc.stdout_text();
    for line in [
        format!("EvalAI: local file {}/evalai-requests.jsonl (--local); EVALAI_API_SERVER ignored", out.display()),
        format!("S3: local folder {}/s3 (--local); S3_BUCKET ignored", out.display()),
        format!("DynamoDB: local file {}/dynamodb.json (--local)", out.display()),
    ] {
        assert!(log.contains(&line), "{line:?} not logged: {log}");
    }
    assert!(out.join("evalai-requests.jsonl").exists() && out.join("dynamodb.json").exists());
}

//! Score and cancel integrity against the local EvalAI double (`fixtures/bin/fake-evalai`): the fixes of issue 17
//! that a participant or an operator would see, each through the real binary.
//!
//! - a cancel made while a partial PUT is being retried (5xx, a timeout, a 429) is never undone, and the final
//!   status is then CANCELLED on EvalAI and in the DynamoDB record;
//! - a final merge that fails, or a metric EvalAI refuses (NaN), ends the submission FAILED everywhere, never a
//!   FINISHED that EvalAI answers with 400 or that carries an older result;
//! - no redirect is followed, no response body is read whole, credentials in the server URL are never logged.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{FakeEvalAi, FakeOpts, Logcopy, LogcopyCmd, Record, Volume};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The embedded DynamoDB record (no S3_BUCKET: `logcopy-local/dynamodb.json` in logcopy's folder).
fn record(lc: &Logcopy) -> serde_json::Value {
    let text = std::fs::read_to_string(lc.work_dir.join("logcopy-local/dynamodb.json")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

/// Writes that changed or could change EvalAI's status (partial PUTs and PATCHes) after `t`.
fn writes_after(reqs: &[Record], t: f64) -> Vec<String> {
    reqs.iter()
        .filter(|r| r.t > t && (r.is_partial_put() || r.is_patch()))
        .map(|r| format!("{} {} at +{:.2} s", r.method, r.body_str("submission_status").unwrap_or(""), r.t - t))
        .collect()
}

/// The cancel race under retries: the participant cancels while logcopy retries a partial PUT that met a fault.
/// No partial PUT or PATCH reaches EvalAI after the cancel, the final status is CANCELLED (EvalAI and DynamoDB),
/// although every worker finished. Checked for a 500, a reply slower than --request-timeout (that EvalAI applied,
/// as a real timed-out request may be) and a 429 with Retry-After.
#[test]
fn t20_a_cancel_during_put_retries_is_never_undone() {
    // `then_status`: the double sets `cancelled` once the faulted PUT is handled and before its answer goes out,
    // so the cancel lands exactly between the faulted try and logcopy's retry.
    let faults = [
        serde_json::json!({"mode": "500", "count": 1, "method": "PUT", "path_contains": "update_partially",
                           "then_status": "cancelled"}),
        serde_json::json!({"mode": "delay", "seconds": 3, "count": 1, "method": "PUT", "path_contains": "update_partially",
                           "then_status": "cancelled"}),
        serde_json::json!({"mode": "429", "seconds": 3, "count": 1, "method": "PUT", "path_contains": "update_partially",
                           "then_status": "cancelled"}),
    ];
    for fault in faults {
        let mode = fault["mode"].as_str().unwrap().to_string();
        let fake = FakeEvalAi::start_with(FakeOpts { status: "running".into(), ..FakeOpts::default() });
        let vol = Volume::from_fixture("lb2.0-finished");
        // Worker 4 not done yet: the run goes on until the test says so.
        std::fs::remove_file(vol.path("containers-status/agent-4.done")).unwrap();
        fake.fault(fault);
        let mut lc = LogcopyCmd::new(&vol)
            .fast()
            .flag("--request-timeout", "1")
            .flag("--status-period", "30")
            .switch("--final-status")
            .evalai(&fake)
            .spawn();
        // The faulted PUT reached the server (for `delay`: and was applied), and the cancel with it.
        let reqs = fake
            .wait_requests(secs(20), "the faulted PUT", |r| r.iter().any(|r| r.fault.is_some() && r.status.is_some()));
        // The cancel lands when the faulted request has been handled: for `delay`, its 3 s after it was received.
        let faulted = reqs.iter().find(|r| r.fault.is_some()).unwrap();
        let cancelled_at = faulted.t + if mode == "delay" { 3.0 } else { 0.0 };
        // The retry comes within the backoff; then the run ends with every worker done.
        std::thread::sleep(Duration::from_secs(6));
        vol.add_marker("agent-4.done");
        let code = lc.wait_exit(secs(40));
        assert_eq!(code, Some(0), "{mode}: exit code\n{}", lc.output());

        let reqs = fake.requests();
        let late = writes_after(&reqs, cancelled_at);
        assert!(late.is_empty(), "{mode}: writes after the cancel: {late:?}\n{}", lc.output());
        let fin: Vec<&Record> = reqs.iter().filter(|r| r.is_final_put()).collect();
        assert!(!fin.is_empty(), "{mode}: a final PUT");
        for f in &fin {
            assert_eq!(f.body_str("submission_status"), Some("CANCELLED"), "{mode}: a cancel is final");
        }
        assert_eq!(fake.submission()["status"], "cancelled", "{mode}: EvalAI's status");
        assert_eq!(record(&lc)["submission_status"], "CANCELLED", "{mode}: the DynamoDB record follows EvalAI");
        // Every write followed its own status GET (in the order the server received them: a delayed request is
        // recorded when it is answered).
        let mut reqs = reqs;
        reqs.sort_by(|a, b| a.t.total_cmp(&b.t));
        for (i, r) in reqs.iter().enumerate().filter(|(_, r)| !r.is_get()) {
            assert!(i > 0 && reqs[i - 1].is_get(), "{mode}: request {i} ({} {}) follows no GET", r.method, r.path);
        }
    }
}

/// A run whose workers all finish while EvalAI says cancelled (a cancel that came after the last partial PUT):
/// the final PUT is CANCELLED, not FINISHED, and DynamoDB says CANCELLED.
#[test]
fn t21_final_status_over_a_cancel_is_cancelled() {
    let fake = FakeEvalAi::start_with(FakeOpts { status: "cancelled".into(), ..FakeOpts::default() });
    let vol = Volume::from_fixture("lb2.0-finished");
    let mut lc = LogcopyCmd::new(&vol).fast().switch("--final-status").evalai(&fake).spawn();
    assert_eq!(lc.wait_exit(secs(40)), Some(0), "{}", lc.output());
    let reqs = fake.requests();
    assert!(reqs.iter().all(|r| !r.is_partial_put() && !r.is_patch()), "no partial PUT nor PATCH over a cancel");
    let fin: Vec<&Record> = reqs.iter().filter(|r| r.is_final_put()).collect();
    assert_eq!(fin.len(), 1, "{reqs:?}");
    assert_eq!(fin[0].body_str("submission_status"), Some("CANCELLED"));
    assert_eq!(fake.submission()["status"], "cancelled");
    assert_eq!(record(&lc)["submission_status"], "CANCELLED");
}

/// With --final-status on a fresh submission, the end is the status GET and PATCH at start, then GET, final PUT
/// and the checking GET: no partial PUT before the final one (which would need 7 requests against 6 a minute).
#[test]
fn t22_final_status_needs_no_partial_put_first() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-finished");
    let mut lc = LogcopyCmd::new(&vol).fast().switch("--final-status").flag("--evalai-rpm", "6").evalai(&fake).spawn();
    assert_eq!(lc.wait_exit(secs(40)), Some(0), "{}", lc.output());
    let reqs = fake.requests();
    let kinds: Vec<String> =
        reqs.iter().map(|r| format!("{} {}", r.method, r.body_str("submission_status").unwrap_or(""))).collect();
    assert_eq!(kinds, ["GET ", "PATCH running", "GET ", "PUT FINISHED", "GET "], "{reqs:?}");
    assert_eq!(fake.submission()["status"], "finished");
}

/// Two workers with different sensors: the final merge fails. The submission is FAILED on EvalAI and in
/// DynamoDB, with the merge error as the reason, and the final PUT carries no result it did not compute from the
/// final files (not the older, shorter merge that had succeeded).
#[test]
fn t23_a_failed_final_merge_is_failed_everywhere() {
    let fake = FakeEvalAi::start_with(FakeOpts { status: "running".into(), ..FakeOpts::default() });
    let vol = Volume::from_fixture("lb2.0-finished");
    std::fs::remove_file(vol.path("containers-status/agent-4.done")).unwrap();
    let mut lc = LogcopyCmd::new(&vol).fast().switch("--final-status").evalai(&fake).spawn();
    let good = fake.wait_acked_put(secs(20), 1);
    assert!(!good.body_str("result").unwrap_or("").is_empty());
    // Worker 2's evaluator rewrites its file with other sensors, then worker 4 ends.
    let w2 = Volume::worker_rel(2);
    let other = vol.read(&w2).replacen("\"carla_lidar\"", "\"carla_depth\"", 1);
    vol.write_in_place(&w2, other.as_bytes());
    std::thread::sleep(Duration::from_millis(1500));
    vol.add_marker("agent-4.done");
    assert_eq!(lc.wait_exit(secs(40)), Some(0), "{}", lc.output());

    let reqs = fake.requests();
    let fin = reqs.iter().rev().find(|r| r.is_final_put()).expect("a final PUT");
    assert_eq!(fin.body_str("submission_status"), Some("FAILED"), "{fin:?}");
    assert_eq!(fin.body_str("result"), Some(""), "no stale result");
    assert_eq!(fin.body_str("metadata"), Some(""), "no stale merged file");
    let stdout = fin.body_str("stdout").unwrap_or("");
    assert!(stdout.contains("final merge") && stdout.contains("different sensor"), "the reason: {stdout:?}");
    assert_eq!(fake.submission()["status"], "failed");
    assert_eq!(record(&lc)["submission_status"], "FAILED");
    assert!(lc.output().contains("final merge"), "the log says why");
}

/// A NaN score: EvalAI would answer 400 to such a result. No partial PUT carries it; the log names the metric
/// and the worker once; the final status is FAILED naming the metric (never a FINISHED left `running`).
#[test]
fn t24_non_finite_metrics_are_never_sent_and_fail_the_end() {
    let fake = FakeEvalAi::start_with(FakeOpts { status: "running".into(), ..FakeOpts::default() });
    let vol = Volume::from_fixture("lb2.0-finished");
    let w3 = Volume::worker_rel(3);
    let text = vol.read(&w3);
    let at = text.find("\"score_composed\": ").expect("a score") + "\"score_composed\": ".len();
    let end = at + text[at..].find([',', '\n']).unwrap();
    vol.write_atomic(&w3, format!("{}NaN{}", &text[..at], &text[end..]).as_bytes());
    let mut lc = LogcopyCmd::new(&vol).fast().switch("--final-status").evalai(&fake).spawn();
    assert_eq!(lc.wait_exit(secs(40)), Some(0), "{}", lc.output());

    let results = vol.read("evalai/results.json");
    assert!(results.contains("NaN"), "the fixture yields a NaN metric: {results}");
    let reqs = fake.requests();
    assert!(reqs.iter().all(|r| !r.is_partial_put()), "no partial PUT with a NaN metric: {reqs:?}");
    let fin = reqs.iter().rev().find(|r| r.is_final_put()).expect("a final PUT");
    assert_eq!(fin.body_str("submission_status"), Some("FAILED"));
    assert_eq!(fin.status, Some(200), "EvalAI accepted the final status");
    assert_eq!(fake.submission()["status"], "failed");
    assert_eq!(record(&lc)["submission_status"], "FAILED");
    let out = lc.output();
    let named = out.lines().filter(|l| l.contains("Driving score") && l.contains("worker 3")).count();
    assert_eq!(named, 1, "the metric and the worker are named once:\n{out}");
}

/// A tiny HTTP server for what the double does not do: answers every request with `reply(path)`, counting them.
struct Tiny {
    port: u16,
    hits: Arc<AtomicUsize>,
    paths: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Tiny {
    fn start(reply: fn(&str, &mut std::net::TcpStream)) -> Tiny {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, p) = (hits.clone(), paths.clone());
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let (h, p) = (h.clone(), p.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    let n = s.read(&mut buf).unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    h.fetch_add(1, Ordering::SeqCst);
                    p.lock().unwrap().push(path.clone());
                    reply(&path, &mut s);
                });
            }
        });
        Tiny { port, hits, paths }
    }
}

/// `logcopy run` on `vol` against the EvalAI server at `server`.
fn against(vol: &Volume, server: &str) -> LogcopyCmd {
    LogcopyCmd::new(vol)
        .fast()
        .env("CHALLENGE_ID", "1")
        .env("SUBMISSION_ID", "2")
        .env("TRACK_ID", "3")
        .env("TEAM_ID", "4")
        .env("EVALAI_API_SERVER", server)
        .env("EVALAI_AUTH_TOKEN", "tok-tiny-server-test-0001")
        .flag("--local-storage", support::LOCAL_OUT)
}

/// EvalAI's nginx redirects http:// to https://: logcopy follows no redirect (reqwest would turn the PUT into a
/// GET and drop the token), logs the Location, and never sends credentials from the URL to the logs.
#[test]
fn t25_redirects_are_not_followed_and_url_credentials_never_logged() {
    let tiny = Tiny::start(|_, s| {
        let _ = s.write_all(
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://user:hunter2@eval.example/moved\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    });
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let server = format!("http://someone:s3cr3tpw@127.0.0.1:{}", tiny.port);
    let mut lc = against(&vol, &server).spawn();
    support::eventually_true(secs(20), "a redirect logged", || lc.output().contains("redirect"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lc.terminate(secs(15)), 0);
    let out = lc.output();
    assert!(out.contains("https://eval.example/moved"), "the Location is logged, without its credentials:\n{out}");
    assert!(!out.contains("hunter2") && !out.contains("s3cr3tpw"), "credentials logged:\n{out}");
    let paths = tiny.paths.lock().unwrap().clone();
    assert!(paths.iter().all(|p| p.starts_with("/api/jobs/")), "a redirect was followed: {paths:?}");
    assert!(tiny.hits.load(Ordering::SeqCst) >= 1);
}

/// A 2 GiB answer to the status GET: read up to the cap, then dropped. logcopy's peak RSS stays far below it
/// and it keeps running.
#[test]
fn t26_huge_response_bodies_are_not_read_whole() {
    let tiny = Tiny::start(|_, s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2147483648\r\n\r\n");
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..2048 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let mut lc = against(&vol, &format!("http://127.0.0.1:{}", tiny.port)).spawn();
    support::eventually_true(secs(30), "several status GETs", || tiny.hits.load(Ordering::SeqCst) >= 3);
    let status = std::fs::read_to_string(format!("/proc/{}/status", lc.pid())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(lc.is_running(), "logcopy keeps running");
    assert!(hwm_kib < 200 * 1024, "peak RSS {hwm_kib} KiB: a body was read whole");
    assert_eq!(lc.terminate(secs(15)), 0);
}

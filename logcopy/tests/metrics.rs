//! `logcopy run --metrics-addr`: the Prometheus exposition at `/metrics`, scraped with a plain TCP GET while the run
//! moves against the local EvalAI double (`fixtures/bin/fake-evalai`).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::{FakeEvalAi, LogcopyCmd, Volume, worker_file};
use testkit::wait_for;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// One HTTP/1.1 request to the metrics port: (status code, headers, body). The server closes after its answer.
fn http(port: u16, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("the answer, then the connection closed");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head: {raw:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("status: {head}"));
    (status, head.to_string(), body.to_string())
}

/// A scrape that may find the listener full (the connection closed unanswered): `None` then.
fn try_scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.starts_with("HTTP/1.1 200 ").then_some(raw)
}

fn scrape(port: u16) -> String {
    let (status, head, body) = http(port, "GET", "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Type: application/openmetrics-text"), "{head}");
    body
}

/// The value of the sample `series` (name and labels exactly as exposed), if it is there.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const PARTIAL_PUT_OK: &str = r#"logcopy_evalai_requests_total{endpoint="partial_put",outcome="ok"}"#;

/// The exposition's names and types, values that follow the run (a results rewrite: one more partial PUT, more
/// routes done for the worker), 404 elsewhere, and a client that connects and sends nothing does not hold up the
/// next scrape.
#[test]
fn metrics_follow_the_run() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let port = testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut lc =
        LogcopyCmd::new(&vol).fast().evalai(&fake).flag("--route-count", "20").flag("--metrics-addr", &addr).spawn();

    fake.wait_acked_put(secs(20), 1);
    assert!(
        wait_for(secs(20), || value(&scrape(port), PARTIAL_PUT_OK).unwrap_or(0.0) >= 1.0),
        "the first partial PUT is counted: {}",
        lc.output()
    );
    let text = scrape(port);
    for (name, kind) in logcopy::metrics::FAMILIES {
        assert!(text.contains(&format!("\n# TYPE {name} {kind}\n")), "# TYPE {name} {kind}:\n{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "# HELP {name}:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(value(&text, r#"logcopy_state{state="running"}"#), Some(1.0), "{text}");
    assert_eq!(value(&text, r#"logcopy_state{state="ended"}"#), Some(0.0), "{text}");
    assert_eq!(value(&text, "logcopy_evalai_budget_limit_requests"), Some(60.0), "--evalai-rpm 60: {text}");
    assert!(value(&text, "logcopy_evalai_budget_used_requests").unwrap() >= 3.0, "GET, PATCH, GET, PUT: {text}");
    assert!(value(&text, r#"logcopy_evalai_requests_total{endpoint="get_status",outcome="ok"}"#).unwrap() >= 1.0);
    assert!(value(&text, "logcopy_evalai_publishes_total").unwrap() >= 1.0, "{text}");
    assert!(value(&text, "logcopy_evalai_publish_latency_seconds_count").unwrap() >= 1.0, "{text}");
    // Worker 4 has no results file yet on the mid-run volume.
    assert_eq!(value(&text, r#"logcopy_worker_routes_done{worker="4"}"#), Some(0.0), "{text}");
    assert_eq!(value(&text, r#"logcopy_worker_routes_assigned{worker="4"}"#), Some(5.0), "routes 15-19: {text}");
    assert!(value(&text, r#"logcopy_worker_routes_done{worker="1"}"#).unwrap() >= 1.0, "{text}");
    assert!(value(&text, r#"logcopy_worker_crashes{worker="1",role="agent"}"#).is_some(), "{text}");
    // The local S3 stand-in received the volume's files (markers are empty files: wait for bytes too), and the local
    // DynamoDB stand-in the submission's record.
    let uploaded = wait_for(secs(20), || {
        let t = scrape(port);
        value(&t, "logcopy_s3_uploads_total").unwrap_or(0.0) >= 1.0
            && value(&t, "logcopy_s3_uploaded_bytes_total").unwrap_or(0.0) > 0.0
            && value(&t, r#"logcopy_s3_requests_total{op="put",outcome="ok"}"#).unwrap_or(0.0) >= 1.0
            && value(&t, r#"logcopy_dynamodb_requests_total{op="update_item",outcome="ok"}"#).unwrap_or(0.0) >= 1.0
    });
    assert!(uploaded, "uploads, their bytes and the record's update are counted:\n{}", scrape(port));

    // A client that connects and sends nothing, held open: the next scrape is answered all the same.
    let idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let before = scrape(port);
    let puts = value(&before, PARTIAL_PUT_OK).unwrap();

    // Worker 4's evaluator writes its first file: two routes. One more partial PUT, and its routes are counted.
    vol.write_in_place(&Volume::worker_rel(4), worker_file("2.0", 4, 2, None).as_bytes());
    fake.wait_put_where(secs(20), "a PUT with worker 4's routes", |r| {
        r.metadata_routes().iter().any(|id| id == "RouteScenario_15_rep0")
    });
    let moved = wait_for(secs(20), || {
        let t = scrape(port);
        value(&t, PARTIAL_PUT_OK).unwrap_or(0.0) > puts
            && value(&t, r#"logcopy_worker_routes_done{worker="4"}"#) == Some(2.0)
    });
    assert!(moved, "the counters moved with the run:\n{}", scrape(port));
    drop(idle);

    // More idle clients than the listener serves at once: the run goes on (worker 2's new route is published), and
    // once they are gone, scrapes are answered again.
    let flood: Vec<TcpStream> = (0..24).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let w2 = Volume::worker_rel(2);
    let had = support::route_ids(&vol.read(&w2)).len();
    let more = worker_file("2.0", 2, had + 1, None);
    let route = support::route_ids(&more).pop().unwrap();
    vol.write_atomic(&w2, more.as_bytes());
    fake.wait_put_where(secs(20), "a PUT with worker 2's new route", |r| r.metadata_routes().contains(&route));
    drop(flood);
    assert!(wait_for(secs(20), || try_scrape(port).is_some()), "scrapes are answered once the idle clients left");

    // A request head over 8 KiB: 431.
    let mut big = TcpStream::connect(("127.0.0.1", port)).unwrap();
    big.set_read_timeout(Some(secs(10))).unwrap();
    let _ = big.write_all(format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n", "a".repeat(9000)).as_bytes());
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");

    // Elsewhere: 404; another method: 405; both close the connection after the answer.
    assert_eq!(http(port, "GET", "/").0, 404);
    assert_eq!(http(port, "GET", "/metrics/x").0, 404);
    assert_eq!(http(port, "POST", "/metrics").0, 405);
    let (status, _, body) = http(port, "HEAD", "/metrics");
    assert_eq!((status, body.as_str()), (200, ""), "HEAD: the head alone");

    assert_eq!(lc.terminate(secs(15)), 0, "SIGTERM ends logcopy with 0");
}

/// Without `--metrics-addr` nothing listens (the port stays free); an address that cannot be listened on is a
/// configuration error (exit 2).
#[test]
fn off_by_default_and_a_bad_address_is_exit_2() {
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let (code, lc) = LogcopyCmd::new(&vol).fast().evalai(&fake).switch("--once").run(secs(60));
    assert_eq!(code, 0, "{}", lc.output());
    assert!(!lc.output().contains("serving Prometheus metrics"), "no metrics without --metrics-addr: {}", lc.output());

    let taken = std::net::TcpListener::bind(("127.0.0.1", testkit::free_port())).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, lc) =
        LogcopyCmd::new(&vol).fast().evalai(&fake).flag("--metrics-addr", &addr).switch("--once").run(secs(60));
    assert_eq!(code, 2, "{}", lc.output());
    assert!(lc.stderr_text().contains("--metrics-addr / METRICS_ADDR"), "{}", lc.output());
}

#[test]
fn an_idle_run_says_it_is_alive_in_a_heartbeat_line() {
    // The mid-run volume, nothing changing: before the heartbeat line, an idle logcopy logged nothing at all.
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let out = vol.side_dir("local-out");
    let mut lc = LogcopyCmd::new(&vol)
        .fast()
        .flag("--local", out.to_str().unwrap())
        .flag("--route-count", "20")
        .flag("--heartbeat-log", "1")
        .spawn();
    let line = testkit::eventually(secs(30), "a heartbeat line", || {
        lc.stdout_text().lines().find(|l| l.contains("heartbeat: running; routes")).map(str::to_string)
    });
    // Workers 1-3 recorded 3, 2 and 5 of their 5 routes; worker 4 none (its file is missing).
    assert!(line.contains("routes 10/20 (1: 3/5, 2: 2/5, 3: 5/5, 4: 0/5)"), "{line}");
    assert!(line.contains("EvalAI ") && line.contains("S3 ") && line.contains("DynamoDB "), "{line}");
    assert_eq!(lc.terminate(secs(30)), 0);
    let quiet = LogcopyCmd::new(&vol).fast().flag("--local", out.to_str().unwrap()).flag("--heartbeat-log", "0");
    let (code, lc) = quiet.switch("--once").run(secs(30));
    assert_eq!(code, 0);
    assert!(!lc.stdout_text().contains("heartbeat:"), "0 turns it off");
}

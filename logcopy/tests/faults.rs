//! Faults of the outside world and of logcopy itself, against real servers: moto_server (S3, DynamoDB) behind
//! `fixtures/bin/fault-proxy`, and the EvalAI test server with its own fault modes.
//!
//! - every kind of remote fault at once (500, 503, 429 with Retry-After, connection closed or refused, reset mid
//!   answer, answers slower than the timeout) on S3, DynamoDB and EvalAI: the run completes, S3 equals the volume,
//!   DynamoDB and EvalAI hold the final record;
//! - EvalAI down (15 s here; `EVALAI_OUTAGE_SECONDS=600 cargo test -p logcopy --test faults evalai_down` runs the
//!   ten minutes): the evaluation goes on, S3 stays current, the newest result reaches EvalAI when it is back;
//! - logcopy SIGKILLed 20 times at random points while it uploads, with worker files caught half-written:
//!   S3 ends equal to the volume, EvalAI never gets a partial result with fewer routes than an earlier one,
//!   start_time never changes;
//! - a write error on the volume (a file size limit, as a full disk): logcopy keeps running, leaves no partial
//!   output file, and writes the outputs once it can again.
//!
//! Nothing here measures speed; the bounds are there so that a broken logcopy fails instead of hanging.

#[path = "support/moto.rs"]
mod moto;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{FakeEvalAi, LogcopyCmd, Record, Volume, eventually, eventually_true};

const BUCKET: &str = "faults";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// `fixtures/bin/fault-proxy` in front of a target, killed on drop.
struct Proxy {
    child: Child,
    port: u16,
}

impl Proxy {
    fn start(target: &str, dir: &Path) -> Proxy {
        let port_file = dir.join("proxy.port");
        let child = Command::new(support::repo_root().join("fixtures/bin/fault-proxy"))
            .args(["--target", target, "--port-file"])
            .arg(&port_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("proxy.log")).unwrap())
            .spawn()
            .expect("start fault-proxy");
        let port = eventually(secs(20), "fault-proxy's port file", || {
            std::fs::read_to_string(&port_file).ok()?.trim().parse::<u16>().ok()
        });
        Proxy { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn control(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let body = body.to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to fault-proxy");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let json = out.split("\r\n\r\n").nth(1).unwrap_or("{}");
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null)
    }

    fn fault(&self, spec: serde_json::Value) {
        self.control("/__proxy__/faults", spec);
    }

    fn stats(&self) -> serde_json::Value {
        self.control("/__proxy__/stats", serde_json::json!({}))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// logcopy against the fake EvalAI and moto (through `endpoint`), with short periods and timeouts.
fn cmd(vol: &Volume, fake: &FakeEvalAi, moto: &moto::Moto, endpoint: &str) -> LogcopyCmd {
    let mut c = LogcopyCmd::new(vol)
        .fast()
        .evalai(fake)
        .unflag("--local-storage")
        .flag("--storage-timeout", "2")
        .flag("--request-timeout", "2");
    for (k, v) in moto::aws_env(moto, BUCKET) {
        c = c.env(k, &v);
    }
    c.env("AWS_ENDPOINT_URL", endpoint).env("TEAM_ID", moto::TEAM)
}

/// S3's objects under the submission, by volume path.
fn s3_files(moto: &moto::Moto) -> std::collections::BTreeMap<String, Vec<u8>> {
    rt().block_on(moto.objects(BUCKET))
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&format!("{}/", moto::SUBMISSION))?.to_string(), v)))
        .collect()
}

/// The volume's regular files by path, logcopy's manifest left out.
fn volume_files(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    moto::volume_files(root)
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&format!("{}/", moto::SUBMISSION))?.to_string(), v)))
        .collect()
}

/// S3 equals the volume: every file with the same bytes, and nothing else; logcopy's own log up to the final
/// upload (it logs its exit after that).
fn assert_s3_equals_volume(moto: &moto::Moto, root: &Path) {
    let s3 = s3_files(moto);
    let vol = volume_files(root);
    for (k, v) in &vol {
        let Some(got) = s3.get(k) else { panic!("{k} is not in S3") };
        if k == "logcopy/logcopy.log" {
            assert!(v.starts_with(got) && !got.is_empty(), "logcopy.log in S3 is not a prefix of the volume's");
        } else {
            assert!(got == v, "{k} differs in S3 ({} bytes, volume {} bytes)", got.len(), v.len());
        }
    }
    for k in s3.keys() {
        assert!(vol.contains_key(k), "{k} is in S3 but not on the volume");
    }
}

/// Worker files of the finished volume and both done markers for every worker: the run completes.
fn finish(vol: &Volume) {
    for i in 1..=4 {
        let rel = Volume::worker_rel(i);
        let bytes = std::fs::read(support::fixture_volume("lb2.0-finished").join(&rel)).unwrap();
        vol.write_in_place(&rel, &bytes);
        vol.add_marker(&format!("agent-{i}.done"));
        vol.add_marker(&format!("simulator-{i}.done"));
    }
}

fn partial_route_counts(reqs: &[Record]) -> Vec<usize> {
    reqs.iter().filter(|r| r.is_partial_put() && r.acknowledged()).map(|r| r.metadata_routes().len()).collect()
}

#[test]
fn remote_faults_of_every_kind_are_survived() {
    let moto = moto::Moto::start("faults-remote");
    rt().block_on(moto.setup(BUCKET, moto::TABLE));
    let scratch = support::Scratch::new("faults-remote");
    let proxy = Proxy::start(moto.endpoint.trim_start_matches("http://"), &scratch.dir);
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");

    // S3 and DynamoDB, through the proxy: every kind once or more.
    for (mode, extra) in [
        ("http", serde_json::json!({"status": 500, "count": 3})),
        ("http", serde_json::json!({"status": 503, "count": 3})),
        ("http", serde_json::json!({"status": 429, "seconds": 1, "count": 2})),
        ("close", serde_json::json!({"count": 3})),
        ("reset", serde_json::json!({"after": 30, "count": 3})),
        ("slow", serde_json::json!({"seconds": 5, "count": 2})),
    ] {
        let mut spec = extra;
        spec["mode"] = mode.into();
        proxy.fault(spec);
    }
    // EvalAI, with its own fault modes.
    for spec in [
        serde_json::json!({"mode": "500", "count": 2}),
        serde_json::json!({"mode": "503", "count": 2}),
        serde_json::json!({"mode": "429", "seconds": 1, "count": 1}),
        serde_json::json!({"mode": "reset", "count": 1}),
        serde_json::json!({"mode": "close", "count": 1}),
        serde_json::json!({"mode": "delay", "seconds": 4, "count": 1}),
    ] {
        fake.fault(spec);
    }
    let mut lc = cmd(&vol, &fake, &moto, &proxy.endpoint()).switch("--final-status").spawn();
    // Connection refused for 3 s while it works.
    std::thread::sleep(secs(2));
    proxy.control("/__proxy__/refuse", serde_json::json!({"seconds": 3}));
    std::thread::sleep(secs(4));
    finish(&vol);
    let code = lc.wait_exit(secs(120));
    assert_eq!(code, Some(0), "logcopy's exit\n{}", lc.output());

    let stats = proxy.stats();
    assert_eq!(stats["pending"], serde_json::json!([]), "every S3/DynamoDB fault was hit: {stats}");
    assert!(fake.pending_faults().is_empty(), "every EvalAI fault was hit: {:?}", fake.pending_faults());
    assert_s3_equals_volume(&moto, vol.root());
    let item = rt().block_on(moto::item(&moto));
    assert_eq!(item.get("submission_status").map(String::as_str), Some("FINISHED"), "{item:?}");
    assert!(item.get("start_time").is_some_and(|t| t != "-"), "{item:?}");
    assert_eq!(fake.submission()["status"], "finished");
    let reqs = fake.requests();
    let fin = reqs.iter().rev().find(|r| r.is_final_put() && r.acknowledged()).expect("the final status PUT");
    assert_eq!(fin.body_str("metadata"), Some(vol.read("agent/agent_results.json").as_str()));
    let counts = partial_route_counts(&reqs);
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "a partial result regressed: {counts:?}");
}

/// An upload streams from an open file, a body the SDK cannot rebuild, so the SDK retries no upload: each 503 or
/// dropped connection left the file to the next sync, and a final flush has none (an Indexed Job's worker lost its
/// last log to one 503 at its pod's end). The store now sends the file again itself, single and multipart.
#[test]
fn an_upload_refused_or_cut_off_is_sent_again() {
    let moto = moto::Moto::start("put-retry");
    let dir = moto.dir().to_path_buf();
    let proxy = Proxy::start(&moto.endpoint.replace("http://", ""), &dir);
    rt().block_on(async {
        moto.setup(BUCKET, "unused").await;
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(proxy.endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test"))
            .load()
            .await;
        use logcopy::publish::store::ObjectStore;
        let store = logcopy::publish::store::S3Store::new(&sdk, BUCKET);
        let small = dir.join("small.log");
        std::fs::write(&small, b"the last lines of a log\n").unwrap();
        proxy.fault(serde_json::json!({"mode": "http", "status": 503, "count": 2, "match": "PUT"}));
        let stats = store
            .put(&format!("{}/small.log", moto::SUBMISSION), std::fs::File::open(&small).unwrap(), 24)
            .await
            .expect("sent again");
        assert_eq!(stats.requests, 3, "two refusals, then the upload");
        let big = dir.join("big.bin");
        std::fs::write(&big, vec![7u8; 9 << 20]).unwrap();
        proxy.fault(serde_json::json!({"mode": "close", "count": 1, "match": "partNumber=2"}));
        store
            .put(&format!("{}/big.bin", moto::SUBMISSION), std::fs::File::open(&big).unwrap(), 9 << 20)
            .await
            .expect("sent again");
    });
    let objects = s3_files(&moto);
    assert_eq!(objects.get("small.log").map(Vec::as_slice), Some(&b"the last lines of a log\n"[..]));
    assert_eq!(objects.get("big.bin").map(Vec::len), Some(9 << 20));
    assert_eq!(proxy.stats()["pending"], serde_json::json!([]), "every fault was met");
}

#[test]
fn evalai_down_the_evaluation_goes_on_and_the_newest_result_arrives_after() {
    let moto = moto::Moto::start("faults-down");
    rt().block_on(moto.setup(BUCKET, moto::TABLE));
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let outage: u64 = std::env::var("EVALAI_OUTAGE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let mut lc = cmd(&vol, &fake, &moto, &moto.endpoint.clone()).spawn();
    fake.wait_acked_put(secs(30), 1);

    fake.down(outage as f64);
    let down_at = Instant::now();
    // The workers go on: worker 2 records more routes while EvalAI is down.
    let rel = Volume::worker_rel(2);
    let newer = std::fs::read(support::fixture_volume("lb2.0-finished").join(&rel)).unwrap();
    vol.write_in_place(&rel, &newer);
    // S3 stays current.
    eventually_true(secs(20), "the new worker file in S3 while EvalAI is down", || {
        s3_files(&moto).get(&rel) == Some(&newer)
    });
    assert!(down_at.elapsed() < secs(outage), "the outage must still be on (make it longer on a slow machine)");
    // When EvalAI is back, the newest result arrives.
    eventually(secs(outage + 60), "a partial PUT with the new routes after the outage", || {
        let reqs = fake.requests();
        let r = reqs.iter().rev().find(|r| r.is_partial_put() && r.acknowledged())?;
        (r.metadata_routes().len() == support::route_ids(&vol.read("agent/agent_results.json")).len()).then_some(())
    });
    assert!(down_at.elapsed() >= secs(outage), "delivered only once EvalAI was back");
    assert!(lc.is_running(), "logcopy went on through the outage");
    let counts = partial_route_counts(&fake.requests());
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "a partial result regressed: {counts:?}");
    lc.terminate(secs(30));
}

#[test]
fn sigkilled_twenty_times_while_uploading_loses_and_regresses_nothing() {
    let moto = moto::Moto::start("faults-kill");
    rt().block_on(moto.setup(BUCKET, moto::TABLE));
    let fake = FakeEvalAi::start();
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let finished = support::fixture_volume("lb2.0-finished");
    let mut rng = fastrand::Rng::with_seed(20261123);
    let mut start_time: Option<String> = None;
    // The evaluator rewrites a worker file in place; its supervisor keeps an atomic copy of each whole version
    // beside it (`.agent_results.json.last-good`), as `supervisor agent` does.
    let write_whole = |rel: &str, bytes: &[u8]| {
        vol.write_in_place(rel, bytes);
        let copy = volume::layout::last_good_path(&vol.path(rel));
        std::fs::write(copy.with_extension("tmp"), bytes).unwrap();
        std::fs::rename(copy.with_extension("tmp"), copy).unwrap();
    };
    for i in 1..=4 {
        let rel = Volume::worker_rel(i);
        if let Some(text) = vol.try_read(&rel) {
            write_whole(&rel, text.as_bytes());
        }
    }
    let mut half_written: Option<(String, Vec<u8>)> = None;
    // Uploads of 8 MiB parts to moto can take seconds on a loaded machine: the default-like timeout here.
    let kill_cmd = || cmd(&vol, &fake, &moto, &moto.endpoint.clone()).flag("--storage-timeout", "30");
    for round in 0..20 {
        let mut lc = kill_cmd().spawn();
        // A file caught half-written by the last kill is finished a moment after this logcopy started, so that it
        // starts on the half-written file.
        std::thread::sleep(Duration::from_millis(rng.u64(50..400)));
        if let Some((rel, full)) = half_written.take() {
            write_whole(&rel, &full);
        }
        // While it uploads: a new log of 1-12 MiB (multipart above 8 MiB), and a worker that records more routes,
        // sometimes caught half-written when the kill lands.
        let size = (1 + rng.usize(..12)) << 20;
        let log = vol.path(&format!("simulator/recorder-{round}.log"));
        std::fs::write(&log, vec![b'a' + (round % 26) as u8; size]).unwrap();
        let rel = Volume::worker_rel(1 + rng.u32(..4));
        let full = std::fs::read(finished.join(&rel)).unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(100..1000)));
        if rng.bool() {
            vol.write_in_place(&rel, &full[..full.len() / 2]);
            half_written = Some((rel, full));
        } else {
            write_whole(&rel, &full);
        }
        unsafe { libc::kill(lc.pid() as i32, libc::SIGKILL) };
        assert!(lc.wait_exit(secs(10)).is_some(), "round {round}: logcopy did not die");
        let item = rt().block_on(moto::item(&moto));
        if let Some(t) = item.get("start_time").filter(|t| *t != "-") {
            let first = start_time.get_or_insert_with(|| t.clone());
            assert_eq!(t, first, "round {round}: start_time changed");
        }
    }
    if let Some((rel, full)) = half_written.take() {
        write_whole(&rel, &full);
    }
    finish(&vol);
    let mut lc = kill_cmd().switch("--final-status").spawn();
    assert_eq!(lc.wait_exit(secs(120)), Some(0), "{}", lc.output());
    if lc.output().contains("uploading them again") {
        eprintln!("the final check found objects that a killed logcopy's late upload had overwritten");
    }
    assert_s3_equals_volume(&moto, vol.root());
    let item = rt().block_on(moto::item(&moto));
    assert_eq!(item.get("start_time"), start_time.as_ref(), "start_time unchanged by the restarts");
    let counts = partial_route_counts(&fake.requests());
    assert!(counts.len() >= 2, "partial results were published: {counts:?}");
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "a partial result regressed: {counts:?}");
    // No temporary output of a killed logcopy is left on the volume or went to S3.
    let temps: Vec<String> = volume_files(vol.root()).into_keys().filter(|k| k.contains(".logcopy-tmp.")).collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
}

#[test]
fn a_write_error_on_the_volume_leaves_no_partial_output_and_logcopy_goes_on() {
    // A file size limit (as a full disk): writing the merged file (tens of KiB) fails with EFBIG. logcopy ignores
    // SIGXFSZ itself (the kernel's default would kill it, exit 153, leaving a temporary file): the test leaves the
    // signal's disposition alone.
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let merged = vol.path("agent/agent_results.json");
    let _ = std::fs::remove_file(&merged);
    let out: PathBuf = vol.side_dir("local");
    let mut c = Command::new(env!("CARGO_BIN_EXE_logcopy"));
    c.args(["run", "--logs"]).arg(vol.root()).arg("--local").arg(&out).args(["--logs-period", "1"]);
    c.stdout(Stdio::piped()).stderr(Stdio::null());
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            let lim = libc::rlimit { rlim_cur: 8 * 1024, rlim_max: libc::RLIM_INFINITY };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    std::thread::sleep(secs(3));
    assert!(child.try_wait().unwrap().is_none(), "logcopy stopped on the write error");
    assert!(!merged.exists(), "a partial merged file was left");
    let leftovers: Vec<String> = std::fs::read_dir(vol.path("agent"))
        .unwrap()
        .chain(std::fs::read_dir(vol.path("evalai")).unwrap())
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".logcopy-tmp."))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut text = String::new();
    child.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("File too large") || text.contains("too large"), "the write error is logged:\n{text}");
}

//! `logcopy monitor` end to end, with real parts: S3 and DynamoDB on a local `moto_server` (its request recorder
//! counts what the monitor asked), EvalAI on the local fake server, the built binary as a process. The tests play
//! the workers' uploaders: they write each worker's results object and shard status object into S3 directly, as
//! `logcopy upload` does (volume::shard), and read what the monitor published.

mod support;

use logcopy::publish::store::{ObjectStore, PutCondition, PutOutcome, S3Store};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{
    CHALLENGE, FakeEvalAi, PHASE, SUBMISSION, Scratch, TEAM, TOKEN, Volume, now_epoch, route_ids, worker_file,
};
use testkit::moto::Moto;
use volume::markers::{Attempt, Marker, Role, WorkerId};
use volume::shard::{ObjectRef, PodAttempt, ShardStatus, status_key};

const TABLE: &str = "leaderboard-submissions";
const MERGED_KEY: &str = "4321/agent/agent_results.json";
const DONE_KEY: &str = "4321/containers-status/monitor.done";

/// A worker's uploader, as `logcopy upload` writes S3: its results object, then its status object naming it.
struct Uploader {
    store: Arc<S3Store>,
    st: ShardStatus,
}

impl Uploader {
    async fn new(moto: &Moto, bucket: &str, worker: u32, failures: u32) -> Uploader {
        let store = Arc::new(S3Store::new(&moto.sdk().await, bucket));
        let st = ShardStatus {
            worker: WorkerId(worker),
            pod: format!("sub-4321-workers-{}-pod{failures}", worker - 1),
            uid: format!("uid-{worker}-{failures}"),
            job: String::new(),
            attempt: PodAttempt { failures, ignored: 0 },
            // Each replacement took the shard over from the one before (volume::shard's fencing generation).
            generation: u64::from(failures),
            seq: 0,
            results: None,
            markers: started(worker),
            records: Vec::new(),
            ended: false,
            at: 0,
        };
        Uploader { store, st }
    }

    /// Uploads the worker's results file, then the status object naming it.
    async fn results(&mut self, body: &str) {
        let key = format!("{SUBMISSION}/{}", volume::layout::worker_results(self.st.worker.0).display());
        let PutOutcome::Written { etag } =
            self.store.put_bytes(&key, body.as_bytes().to_vec(), PutCondition::Always).await.unwrap()
        else {
            panic!("an unconditional PUT was refused")
        };
        self.st.results = Some(ObjectRef { etag, size: body.len() as u64 });
        self.status().await;
    }

    /// Writes the status object again (a change, or the idle heartbeat): the next seq, the clock now.
    async fn status(&mut self) {
        self.st.seq += 1;
        self.st.at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let key = format!("{SUBMISSION}/{}", status_key(self.st.worker).display());
        self.store.put_bytes(&key, self.st.to_json().into_bytes(), PutCondition::Always).await.unwrap();
    }

    /// The worker's last results and both done markers; its final flush is through.
    async fn finish(&mut self) {
        let w = self.st.worker.0;
        self.st.markers = done(w);
        self.st.ended = true;
        self.results(&worker_file("2.0", w, 5, None)).await;
    }
}

/// The four workers' uploaders (pods after `failures` failed ones), each worker running with 2 routes recorded.
async fn running(moto: &Moto, bucket: &str, failures: u32) -> Vec<Uploader> {
    let mut ups = Vec::new();
    for w in 1..=4 {
        let mut u = Uploader::new(moto, bucket, w, failures).await;
        u.results(&worker_file("2.0", w, 2, None)).await;
        ups.push(u);
    }
    ups
}

fn started(w: u32) -> Vec<Marker> {
    Role::ALL.iter().map(|&role| Marker::Start { role, worker: WorkerId(w), attempt: Attempt(0) }).collect()
}

fn done(w: u32) -> Vec<Marker> {
    let mut m = started(w);
    m.extend(Role::ALL.iter().map(|&role| Marker::Done { role, worker: WorkerId(w) }));
    m
}

/// A `logcopy monitor` process (killed on drop), its output in a file.
struct Monitor {
    child: Child,
    log: PathBuf,
    pub logs: PathBuf,
}

impl Monitor {
    fn start(moto: &Moto, bucket: &str, fake: &FakeEvalAi, dir: &Path, extra: &[&str]) -> Monitor {
        Monitor::start_with(moto, bucket, fake, dir, &[FAST, extra].concat())
    }

    fn start_with(moto: &Moto, bucket: &str, fake: &FakeEvalAi, dir: &Path, flags: &[&str]) -> Monitor {
        let logs = dir.join("working-volume");
        std::fs::create_dir_all(&logs).unwrap();
        let log = dir.join("monitor.log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut c = logcopy("monitor", &logs, fake);
        c.current_dir(dir)
            .args(flags)
            .envs(moto.env(bucket, TABLE))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        Monitor { child: c.spawn().expect("start logcopy monitor"), log, logs }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn exit(&mut self, secs: u64) -> i32 {
        let child = &mut self.child;
        let code = until(secs, "the monitor's exit", || child.try_wait().unwrap()).await;
        code.code().unwrap_or(-1)
    }

    async fn logged(&self, secs: u64, what: &str) {
        until(secs, what, || self.output().contains(what).then_some(())).await;
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- logcopy monitor ---\n{}", self.output());
        }
    }
}

/// `logcopy <command> --logs <logs>` with EvalAI's ids and server, and nothing else of the environment.
fn logcopy(command: &str, logs: &Path, fake: &FakeEvalAi) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logcopy"));
    c.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        c.env("PATH", path);
    }
    c.arg(command)
        .arg("--logs")
        .arg(logs)
        .env("CHALLENGE_ID", CHALLENGE.to_string())
        .env("SUBMISSION_ID", SUBMISSION.to_string())
        .env("TRACK_ID", PHASE.to_string())
        .env("TEAM_ID", TEAM)
        .env("EVALAI_API_SERVER", fake.base_url())
        .env("EVALAI_AUTH_TOKEN", TOKEN);
    c
}

/// Short periods for tests (the flags of the support harness's `fast`), 20 routes on 4 workers.
const FAST: &[&str] = &[
    "--status-period",
    "1",
    "--logs-period",
    "1",
    "--debounce",
    "100ms",
    "--evalai-rpm",
    "60",
    "--request-timeout",
    "5",
    "--flush-budget",
    "10",
    "--final-timeout",
    "30",
    "--monitor-period",
    "500ms",
    "--route-count",
    "20",
    "--workers",
    "4",
    "--final-status",
];

/// Polls `f` (every 100 ms, without blocking the runtime) until it gives a value; panics after `secs`.
async fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn setup(name: &str) -> (Moto, Scratch) {
    let moto = Moto::start(name);
    moto.setup(name, TABLE).await;
    (moto, Scratch::new(&format!("monitor-{name}")))
}

async fn object(moto: &Moto, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let out = moto.s3().await.get_object().bucket(bucket).key(key).send().await.ok()?;
    Some(out.body.collect().await.unwrap().into_bytes().to_vec())
}

/// The monitor over four finished workers publishes what `logcopy run` publishes over a generation 1 volume holding
/// the same files: the same merged file (byte for byte), EvalAI's results, the same final status; it uploads only its
/// own outputs (never a worker's key) and puts `monitor.done` at the end.
#[tokio::test]
async fn the_monitor_publishes_what_run_publishes() {
    let (moto, dir) = setup("same").await;
    for w in 1..=4 {
        Uploader::new(&moto, "same", w, 0).await.finish().await;
    }
    moto.reset_recording();
    let fake = FakeEvalAi::start();
    let mut mon = Monitor::start(&moto, "same", &fake, &dir.path(""), &[]);
    assert_eq!(mon.exit(120).await, 0, "{}", mon.output());
    let merged = object(&moto, "same", MERGED_KEY).await.expect("the merged file is in S3");
    assert!(object(&moto, "same", DONE_KEY).await.is_some(), "monitor.done is in S3");
    let finals: Vec<_> = fake.requests().into_iter().filter(|r| r.is_final_put()).collect();
    assert_eq!(finals.len(), 1, "one final status");
    assert_eq!(finals[0].body_str("submission_status"), Some("FINISHED"));

    // What the monitor wrote to S3: its own outputs only.
    for (key, _) in moto.object_puts("same") {
        let own = key == MERGED_KEY
            || key.starts_with("4321/evalai/")
            || key == "4321/logcopy/logcopy.log"
            || key == DONE_KEY;
        assert!(own, "the monitor uploaded {key}, which is not its own");
    }
    let lists = moto.requests().iter().filter(|(m, u)| m == "GET" && u.contains("list-type=2")).count();
    println!("end: {lists} LIST requests (the storage sink's final check of the monitor's own key folders)");
    assert!(lists <= 4, "{lists} LISTs");

    // `logcopy run` over a generation 1 volume with the same workers' files.
    let vol = Volume::from_fixture("lb2.0-finished");
    for w in 1..=4 {
        std::fs::write(vol.root().join(Volume::worker_rel(w)), worker_file("2.0", w, 5, None)).unwrap();
    }
    let fake_run = FakeEvalAi::start();
    let out = logcopy("run", vol.root(), &fake_run)
        .current_dir(vol.side_dir("run"))
        .args(FAST.iter().filter(|f| !f.starts_with("--monitor-period") && **f != "500ms"))
        .arg("--local-storage")
        .arg(vol.side_dir("run-out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let run_merged = std::fs::read(vol.root().join("agent/agent_results.json")).unwrap();
    assert_eq!(merged, run_merged, "the merged file is byte-identical to run's");
    let run_results = std::fs::read(vol.root().join("evalai/results.json")).unwrap();
    assert_eq!(object(&moto, "same", "4321/evalai/results.json").await.unwrap(), run_results);
    let run_final = fake_run.requests().into_iter().find(|r| r.is_final_put()).expect("run's final status");
    for field in ["submission_status", "result", "metadata"] {
        assert_eq!(finals[0].body_str(field), run_final.body_str(field), "the final PUT's {field}");
    }
}

/// Idle, the monitor costs one conditional GET per worker per period (304s) and no LIST; a worker's results change
/// reaches EvalAI; a stale pod's status object is ignored; EvalAI's cancel puts every cancel key in S3 and ends the
/// run cancelled.
#[tokio::test]
async fn idle_is_cheap_changes_arrive_stale_pods_are_ignored_and_cancel_reaches_s3() {
    let (moto, dir) = setup("idle").await;
    let mut ups = running(&moto, "idle", 1).await;
    let fake = FakeEvalAi::start();
    let mut mon = Monitor::start(&moto, "idle", &fake, &dir.path(""), &[]);
    fake.wait_acked_put(Duration::from_secs(60), 1);

    // Idle: count what the monitor asks S3 for 5 s (its log's upload aside).
    tokio::time::sleep(Duration::from_secs(2)).await;
    moto.reset_recording();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reqs = moto.requests();
    let secs = t0.elapsed().as_secs_f64();
    let status_gets = reqs.iter().filter(|(m, u)| m == "GET" && u.contains("/shards/worker-")).count();
    let lists = reqs.iter().filter(|(m, u)| m == "GET" && (u.contains("list-type") || u.contains("prefix="))).count();
    let other_gets = reqs.iter().filter(|(m, u)| m == "GET" && !u.contains("/shards/worker-")).count();
    println!(
        "idle, 4 workers, period 0.5 s: {status_gets} status GETs in {secs:.1} s ({:.1} per period), {lists} LIST, \
         {other_gets} other GETs",
        status_gets as f64 / (secs / 0.5)
    );
    assert_eq!(lists, 0, "no LIST in steady state: {reqs:?}");
    assert_eq!(other_gets, 0, "no results object fetched while nothing changed: {reqs:?}");
    assert!(status_gets >= 4, "the status objects are polled");
    let per_worker: Vec<usize> =
        (1..=4).map(|w| reqs.iter().filter(|(_, u)| u.contains(&format!("/shards/worker-{w}.json"))).count()).collect();
    let (lo, hi) = (per_worker.iter().min().unwrap(), per_worker.iter().max().unwrap());
    assert!(hi - lo <= 1, "one GET per worker per period: {per_worker:?}");

    // A results change reaches EvalAI.
    let changed = now_epoch();
    ups[1].results(&worker_file("2.0", 2, 4, None)).await;
    let put = fake.wait_put_where(Duration::from_secs(30), "worker 2's new routes", |r| {
        r.metadata_routes().iter().any(|id| id == "RouteScenario_8_rep0")
    });
    println!("a worker's results change to the EvalAI PUT: {:.2} s (monitor period 0.5 s)", put.t - changed);

    // An older pod of worker 3 (generation 0, while generation 1 owns the shard) writes a status object claiming
    // done, at a higher seq: ignored.
    let mut stale = Uploader::new(&moto, "idle", 3, 0).await;
    stale.st.markers = done(3);
    stale.st.seq = 100;
    stale.status().await;
    mon.logged(30, "written by a pod the shard's chain of owners has passed").await;
    assert!(!mon.logs.join("containers-status/agent-3.done").exists(), "the stale pod's markers are not mirrored");

    // EvalAI says cancelled: the cancel keys are in S3 at once, and the run ends cancelled.
    fake.set_status("cancelled");
    let keys = logcopy::monitor::fetch::cancel_keys("4321", 4);
    for key in &keys {
        let mut found = false;
        for _ in 0..300 {
            if object(&moto, "idle", key).await.is_some() {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(found, "{key} is in S3");
    }
    assert_eq!(mon.exit(60).await, 0);
    assert!(mon.output().contains("submission cancelled"), "{}", mon.output());
    assert!(object(&moto, "idle", DONE_KEY).await.is_some(), "monitor.done is in S3");
}

/// A worker whose status object stops changing is lost after `--worker-silence`, and un-lost when it reports
/// again; lost at the end, the run ends FAILED, saying so in neutral words, its routes listed as not run.
#[tokio::test]
async fn a_lost_worker_ends_the_run_failed_and_one_that_reports_again_is_no_longer_lost() {
    let (moto, dir) = setup("lost").await;
    for w in [1, 4] {
        Uploader::new(&moto, "lost", w, 0).await.finish().await;
    }
    let mut two = Uploader::new(&moto, "lost", 2, 0).await;
    two.results(&worker_file("2.0", 2, 2, None)).await;
    // Worker 3 stays alive (its uploader's heartbeat) until the test lets it finish.
    let mut three = Uploader::new(&moto, "lost", 3, 0).await;
    three.results(&worker_file("2.0", 3, 2, None)).await;
    let beating = Arc::new(AtomicBool::new(true));
    let beat = {
        let beating = beating.clone();
        tokio::spawn(async move {
            while beating.load(Ordering::Relaxed) {
                three.status().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            three
        })
    };
    let fake = FakeEvalAi::start();
    let mut mon = Monitor::start(&moto, "lost", &fake, &dir.path(""), &["--worker-silence", "3s"]);
    mon.logged(60, "worker 2 is lost").await;
    assert!(!mon.logged_now("worker 3 is lost"), "a worker whose object keeps changing is not lost");
    two.status().await;
    mon.logged(30, "worker 2 reports again: no longer lost").await;
    // Worker 3 finishes; worker 2 goes silent again: lost at the end.
    beating.store(false, Ordering::Relaxed);
    let mut three = beat.await.unwrap();
    three.finish().await;
    assert_eq!(mon.exit(90).await, 0, "{}", mon.output());
    failed_with(&fake, "worker 2 stopped reporting (its pod was lost)", "RouteScenario_7_rep0");
    let merged = String::from_utf8(object(&moto, "lost", MERGED_KEY).await.unwrap()).unwrap();
    let ids = route_ids(&merged);
    assert_eq!(ids.len(), 5 + 2 + 5 + 5, "every route recorded once: {ids:?}");
}

/// The one final status is FAILED, its stdout saying `reason` and listing `route` (a lost worker's) as not run.
fn failed_with(fake: &FakeEvalAi, reason: &str, route: &str) {
    let finals: Vec<_> = fake.requests().into_iter().filter(|r| r.is_final_put()).collect();
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0].body_str("submission_status"), Some("FAILED"));
    let stdout = finals[0].body_str("stdout").unwrap_or_default().to_string();
    assert!(stdout.contains(reason), "{stdout}");
    assert!(stdout.contains(route), "its routes are listed as not run: {stdout}");
}

/// A worker whose pod never reports (never scheduled, or its restore failing on every try) is lost once every
/// other worker has ended and `--worker-silence` has passed since: the run ends FAILED, saying it never started,
/// its routes listed as not run (it waited for a pod until the Job's deadline, with no final status).
#[tokio::test]
async fn a_worker_that_never_started_ends_the_run_failed() {
    let (moto, dir) = setup("never").await;
    for w in 1..=3 {
        Uploader::new(&moto, "never", w, 0).await.finish().await;
    }
    let fake = FakeEvalAi::start();
    let mut mon = Monitor::start(&moto, "never", &fake, &dir.path(""), &["--worker-silence", "3s"]);
    assert_eq!(mon.exit(90).await, 0, "{}", mon.output());
    failed_with(&fake, "worker 4 never started (no pod reported)", "RouteScenario_19_rep0");
}

/// A monitor killed mid-run and started again on a fresh working volume rebuilds it from S3 and finishes; one final
/// status in all; a monitor started after the end finds `monitor.done` and does nothing.
#[tokio::test]
async fn a_restarted_monitor_continues_and_one_started_after_the_end_does_nothing() {
    let (moto, dir) = setup("restart").await;
    let mut ups = running(&moto, "restart", 0).await;
    let fake = FakeEvalAi::start();
    let first = Scratch::new("monitor-restart-first");
    let mut mon = Monitor::start(&moto, "restart", &fake, &first.path(""), &[]);
    fake.wait_acked_put(Duration::from_secs(60), 1);
    mon.child.kill().unwrap();
    mon.child.wait().unwrap();
    for u in &mut ups {
        u.finish().await;
    }
    let mut mon = Monitor::start(&moto, "restart", &fake, &dir.path(""), &[]);
    assert_eq!(mon.exit(120).await, 0, "{}", mon.output());
    let merged = String::from_utf8(object(&moto, "restart", MERGED_KEY).await.unwrap()).unwrap();
    assert_eq!(route_ids(&merged).len(), 20, "every route once");
    let finals = || fake.requests().into_iter().filter(|r| r.is_final_put()).count();
    assert_eq!(finals(), 1);
    assert_eq!(
        fake.requests().into_iter().rev().find(|r| r.is_final_put()).unwrap().body_str("submission_status"),
        Some("FINISHED")
    );

    let before = fake.requests().len();
    let third = Scratch::new("monitor-restart-third");
    let mut mon = Monitor::start(&moto, "restart", &fake, &third.path(""), &[]);
    assert_eq!(mon.exit(60).await, 0, "{}", mon.output());
    assert!(mon.output().contains("already ended"), "{}", mon.output());
    assert_eq!(fake.requests().len(), before, "no EvalAI request after the end");
}

/// `monitor.done` names the monitor Job that ended: one of an earlier Job (a resumed submission) does not stop a
/// new monitor, which runs to its end and overwrites it with its own Job's UID; one of its own Job (a restart after
/// the end) does.
#[tokio::test]
async fn monitor_done_stops_only_a_monitor_of_the_job_that_ended() {
    let (moto, dir) = setup("resume").await;
    let store = S3Store::new(&moto.sdk().await, "resume");
    store.put_bytes(DONE_KEY, b"job-before\n".to_vec(), PutCondition::Always).await.unwrap();
    for w in 1..=4 {
        Uploader::new(&moto, "resume", w, 0).await.finish().await;
    }
    let fake = FakeEvalAi::start();
    let mut mon = Monitor::start(&moto, "resume", &fake, &dir.path(""), &["--monitor-job-uid", "job-now"]);
    assert_eq!(mon.exit(120).await, 0, "{}", mon.output());
    assert!(mon.output().contains("names another monitor Job"), "{}", mon.output());
    let finals: Vec<_> = fake.requests().into_iter().filter(|r| r.is_final_put()).collect();
    assert_eq!(finals.len(), 1, "the resumed submission's monitor publishes its final status");
    assert_eq!(finals[0].body_str("submission_status"), Some("FINISHED"));
    assert_eq!(object(&moto, "resume", DONE_KEY).await.unwrap(), b"job-now\n", "its end overwrites the marker");

    let before = fake.requests().len();
    let again = Scratch::new("monitor-resume-again");
    let mut mon = Monitor::start(&moto, "resume", &fake, &again.path(""), &["--monitor-job-uid", "job-now"]);
    assert_eq!(mon.exit(60).await, 0, "{}", mon.output());
    assert!(mon.output().contains("already ended"), "{}", mon.output());
    assert_eq!(fake.requests().len(), before, "the same Job restarted after its end: no EvalAI request");
}

/// SIGTERM ends the monitor with the final flush (the newest merge in S3), exit 0, and no `monitor.done`: the run
/// did not end, and a new monitor goes on with it.
#[tokio::test]
async fn sigterm_flushes_and_leaves_no_done_marker() {
    let (moto, dir) = setup("sigterm").await;
    let _ups = running(&moto, "sigterm", 0).await;
    let fake = FakeEvalAi::start();
    let mut mon = Monitor::start(&moto, "sigterm", &fake, &dir.path(""), &[]);
    fake.wait_acked_put(Duration::from_secs(60), 1);
    testkit::procfs::signal(mon.child.id() as i32, libc::SIGTERM);
    assert_eq!(mon.exit(60).await, 0, "{}", mon.output());
    let merged = String::from_utf8(object(&moto, "sigterm", MERGED_KEY).await.expect("the merged file")).unwrap();
    assert_eq!(route_ids(&merged).len(), 8, "2 routes of each of the 4 workers");
    assert!(object(&moto, "sigterm", DONE_KEY).await.is_none(), "no monitor.done after a SIGTERM");
    assert_eq!(fake.requests().into_iter().filter(|r| r.is_final_put()).count(), 0, "no final status");
}

impl Monitor {
    fn logged_now(&self, what: &str) -> bool {
        self.output().contains(what)
    }
}

/// Figures, not a check (`cargo test -p logcopy --test monitor figures -- --ignored --nocapture`): the monitor's S3
/// requests a minute by kind while idle, its CPU and peak RSS, for S = 4, 16 and 64 workers at a 5 s period (the
/// default), each worker running with one route recorded.
#[tokio::test]
#[ignore = "prints figures; about 2.5 minutes"]
async fn figures() {
    for workers in [4u32, 16, 64] {
        let bucket = format!("figures-{workers}");
        let (moto, dir) = setup(&bucket).await;
        for w in 1..=workers {
            let mut u = Uploader::new(&moto, &bucket, w, 0).await;
            u.results(&worker_file("2.0", (w - 1) % 4 + 1, 1, None)).await;
        }
        let fake = FakeEvalAi::start();
        let mut flags: Vec<String> = FAST.iter().map(|f| f.to_string()).collect();
        let value = |flags: &mut Vec<String>, name: &str, v: String| {
            let i = flags.iter().position(|f| f == name).unwrap();
            flags[i + 1] = v;
        };
        value(&mut flags, "--workers", workers.to_string());
        value(&mut flags, "--route-count", (workers * 5).to_string());
        value(&mut flags, "--monitor-period", "5".into());
        value(&mut flags, "--logs-period", "10".into());
        value(&mut flags, "--status-period", "20".into());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mon = Monitor::start_with(&moto, &bucket, &fake, &dir.path(""), &flags);
        fake.wait_acked_put(Duration::from_secs(120), 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        moto.reset_recording();
        let pid = mon.child.id();
        let cpu0 = testkit::procfs::cpu_seconds(pid).unwrap();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (cpu, mins) = (testkit::procfs::cpu_seconds(pid).unwrap() - cpu0, t0.elapsed().as_secs_f64() / 60.0);
        let (hwm, _) = testkit::procfs::memory_kib(pid).unwrap();
        let reqs = moto.requests();
        let count = |f: &dyn Fn(&(String, String)) -> bool| reqs.iter().filter(|r| f(r)).count() as f64 / mins;
        let status = count(&|(m, u)| m == "GET" && u.contains("/shards/"));
        let list = count(&|(m, u)| m == "GET" && u.contains("list-type"));
        let gets = count(&|(m, u)| m == "GET" && !u.contains("/shards/") && !u.contains("list-type"));
        let puts = count(&|(m, _)| m == "PUT");
        let other = count(&|(m, _)| m != "GET" && m != "PUT");
        println!(
            "S={workers:>2} idle, period 5 s: per minute {status:.0} status GETs (304), {gets:.0} other GETs, \
             {list:.0} LIST, {puts:.0} PUT, {other:.0} other (DynamoDB); CPU {:.2} s per minute, peak RSS {} MiB",
            cpu / mins,
            hwm / 1024
        );
        assert_eq!(list, 0.0, "no LIST in steady state");
    }
}

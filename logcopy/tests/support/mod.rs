//! A reusable harness for integration tests of `logcopy run` against the local EvalAI double.
//!
//! - [`FakeEvalAi`]: `fixtures/bin/fake-evalai` on 127.0.0.1 (port 0, read back from its port file), killed by
//!   pid on drop. A server that cannot start fails the test; it never skips it. Helpers read what it recorded
//!   (`/__fake__/requests`), flip a submission's status and queue faults.
//! - [`Volume`], [`Scratch`], [`eventually`] (from the workspace's test kit, `testkit`): a private copy of a
//!   recorded volume, scratch folders, bounded polls.
//! - [`LogcopyCmd`] / [`Logcopy`]: the real `logcopy run` binary as a child process with a clean environment,
//!   its stdout and stderr captured to files, SIGTERM, and a bounded wait for its exit.
//!
//! Scratch folders are removed on drop, except when the test is failing: then they are kept, and their path is
//! printed, together with logcopy's output, to help the diagnosis.

#![allow(dead_code)]

use logcopy::results::pyjson::{self, Object, Value};
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[allow(unused_imports)]
pub use testkit::{Scratch, Volume, eventually, eventually_true, files_under, fixture_volume, repo_root};

/// The folder, relative to logcopy's working directory, where a test's local edges write (the name of the embedded
/// default's folder, so that a test reads one place whichever way the edge went local).
pub const LOCAL_OUT: &str = "logcopy-local";

/// The ids every test's fake submission uses (each test runs its own server).
pub const SUBMISSION: u64 = 4321;
pub const CHALLENGE: u64 = 12;
pub const PHASE: u64 = 2015;
pub const TEAM: &str = "987";
/// The host token the fake server accepts. Long and distinctive, so a leak is found by a plain search.
pub const TOKEN: &str = "tok-LOGCOPY-IT-5f3a9c1e7b2d4680";

/// Wall-clock seconds since the epoch, the clock of the fake server's record timestamps (`t`).
pub fn now_epoch() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock before 1970").as_secs_f64()
}

// ------------------------------------------------------------------------------------------------------------
// Worker results files
// ------------------------------------------------------------------------------------------------------------

fn obj_mut(v: &mut Value) -> &mut Object {
    match v {
        Value::Object(o) => Arc::make_mut(o),
        other => panic!("not an object: {other:?}"),
    }
}

fn arr_mut(v: &mut Value) -> &mut Vec<Value> {
    match v {
        Value::Array(a) => Arc::make_mut(a),
        other => panic!("not an array: {other:?}"),
    }
}

/// A valid Leaderboard worker file for worker `worker`, holding its first `records` records (`progress`
/// `[records, total]`), built from the worker's file in the `*-finished` volume of `version` ("2.0" or "1.0"),
/// so records have exactly the evaluator's shape and key order. `duration_system`, when given, replaces the
/// first record's `meta.duration_system` (a way to make distinct contents with the same routes).
pub fn worker_file(version: &str, worker: u32, records: usize, duration_system: Option<f64>) -> String {
    let src = fixture_volume(&format!("lb{version}-finished")).join(Volume::worker_rel(worker));
    let bytes = std::fs::read(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let mut v = pyjson::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e:?}", src.display()));
    let root = obj_mut(&mut v);
    let cp = obj_mut(root.get_mut("_checkpoint").expect("_checkpoint"));
    let total = match cp.get("progress").and_then(Value::as_array).and_then(|p| p.get(1)) {
        Some(Value::Int(t)) => *t,
        other => panic!("progress total: {other:?}"),
    };
    let recs = arr_mut(cp.get_mut("records").expect("records"));
    assert!(records <= recs.len(), "{} has only {} records", src.display(), recs.len());
    recs.truncate(records);
    if let Some(d) = duration_system {
        let first = obj_mut(recs.first_mut().expect("a record to tweak"));
        obj_mut(first.get_mut("meta").expect("meta")).insert("duration_system", Value::Float(d));
    }
    cp.insert("progress", Value::array(vec![Value::Int(records as i64), Value::Int(total)]));
    pyjson::to_pretty(&v, version == "1.0")
}

/// The `route_id`s of a results file's records (merged or worker), in order.
pub fn route_ids(results_text: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(results_text).unwrap_or_else(|e| panic!("not JSON: {e}"));
    v["_checkpoint"]["records"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["route_id"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------------------
// The fake EvalAI server
// ------------------------------------------------------------------------------------------------------------

/// One API request as the fake server recorded it.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the server received it (wall clock, seconds since the epoch).
    pub t: f64,
    pub method: String,
    pub path: String,
    /// The HTTP status answered; `None` when the connection was closed unanswered.
    pub status: Option<u16>,
    /// The fault injected into this request, if any.
    pub fault: Option<String>,
    pub auth: String,
    pub body: serde_json::Value,
}

impl Record {
    fn from_json(v: &serde_json::Value) -> Record {
        Record {
            t: v["t"].as_f64().expect("record without t"),
            method: v["method"].as_str().unwrap_or_default().to_string(),
            path: v["path"].as_str().unwrap_or_default().to_string(),
            status: v["status"].as_u64().map(|s| s as u16),
            fault: v["fault"].as_str().map(str::to_string),
            auth: v["auth"].as_str().unwrap_or_default().to_string(),
            body: v["body"].clone(),
        }
    }

    pub fn is_get(&self) -> bool {
        self.method == "GET" && self.path.starts_with("/api/jobs/submission/")
    }

    /// A partial update (B): PUT update_partially_evaluated_submission.
    pub fn is_partial_put(&self) -> bool {
        self.method == "PUT" && self.path.contains("/update_partially_evaluated_submission/")
    }

    /// The final status update (C): PUT update_submission.
    pub fn is_final_put(&self) -> bool {
        self.method == "PUT" && self.path.contains("/update_submission/")
    }

    pub fn is_patch(&self) -> bool {
        self.method == "PATCH"
    }

    /// Answered 200 with no fault injected: the client got a normal success.
    pub fn acknowledged(&self) -> bool {
        self.status == Some(200) && self.fault.is_none()
    }

    pub fn body_str(&self, key: &str) -> Option<&str> {
        self.body.get(key).and_then(serde_json::Value::as_str)
    }

    /// The route ids in the body's `metadata` (the merged file sent).
    pub fn metadata_routes(&self) -> Vec<String> {
        self.body_str("metadata").map(route_ids).unwrap_or_default()
    }
}

/// Options of one fake server.
#[derive(Debug, Clone)]
pub struct FakeOpts {
    /// The submission's status at start (`submitted`, `running`, ...).
    pub status: String,
    /// Requests per throttle window per host user (every token of the test is that user), and the window (seconds).
    pub rate: u32,
    pub window: f64,
}

impl Default for FakeOpts {
    fn default() -> Self {
        // A short window: the server's own throttle never gets in the way of a test that is not about it.
        FakeOpts { status: "submitted".into(), rate: 60, window: 2.0 }
    }
}

/// `fixtures/bin/fake-evalai`, running for the duration of a test.
pub struct FakeEvalAi {
    child: Child,
    pub port: u16,
    scratch: Scratch,
}

impl FakeEvalAi {
    pub fn start() -> FakeEvalAi {
        Self::start_with(FakeOpts::default())
    }

    /// Starts the server and waits (at most 15 s) for its port file. Panics, failing the test, when it cannot.
    pub fn start_with(opts: FakeOpts) -> FakeEvalAi {
        let scratch = Scratch::new("fake-evalai");
        let port_file = scratch.path("port");
        let script = repo_root().join("fixtures/bin/fake-evalai");
        let log = File::create(scratch.path("server.log")).unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", "0", "--port-file"])
            .arg(&port_file)
            .arg("--record")
            .arg(scratch.path("record.jsonl"))
            .args(["--token", TOKEN])
            .arg("--submission")
            .arg(format!("{SUBMISSION}:{CHALLENGE}:{PHASE}:{}", opts.status))
            .args(["--rate", &opts.rate.to_string(), "--window", &opts.window.to_string()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the fake EvalAI server (python3 {}): {e}", script.display()));
        let deadline = Instant::now() + Duration::from_secs(15);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file).ok().and_then(|s| s.trim().parse::<u16>().ok()) {
                break p;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(scratch.path("server.log")).unwrap_or_default();
                panic!("the fake EvalAI server exited at start ({status}):\n{log}");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the fake EvalAI server wrote no port file within 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        FakeEvalAi { child, port, scratch }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One HTTP/1.1 request to the server (`Connection: close`); returns the status and the body.
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("cannot connect to the fake EvalAI server: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{method} {path}: bad reply {text:?}"));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, rest.to_string())
    }

    fn control(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let body = body.map(|b| b.to_string());
        let (status, text) = self.http(method, path, body.as_deref());
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
    }

    /// Every API request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<Record> {
        let v = self.control("GET", "/__fake__/requests", None);
        v.as_array().expect("a list of records").iter().map(Record::from_json).collect()
    }

    /// The stored state of the submission (status, stdout, metadata, leaderboard rows, ...).
    pub fn submission(&self) -> serde_json::Value {
        self.control("GET", &format!("/__fake__/submissions/{SUBMISSION}"), None)
    }

    /// Sets the submission's status, as the web UI's cancel does.
    pub fn set_status(&self, status: &str) {
        self.control(
            "POST",
            &format!("/__fake__/submissions/{SUBMISSION}"),
            Some(serde_json::json!({"status": status})),
        );
    }

    /// Queues a fault: `{"mode": ..., "count": ..., "method": ..., "path_contains": ..., "seconds": ...}`.
    pub fn fault(&self, spec: serde_json::Value) {
        self.control("POST", "/__fake__/faults", Some(spec));
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> Vec<serde_json::Value> {
        self.control("GET", "/__fake__/faults", None).as_array().cloned().unwrap_or_default()
    }

    /// Every API connection is closed unanswered for `seconds`.
    pub fn down(&self, seconds: f64) {
        self.control("POST", "/__fake__/down", Some(serde_json::json!({"seconds": seconds})));
    }

    /// Waits until `f` holds for the recorded requests; returns them.
    pub fn wait_requests(&self, timeout: Duration, what: &str, f: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        eventually(timeout, what, || {
            let r = self.requests();
            f(&r).then_some(r)
        })
    }

    /// Waits for the `n`-th acknowledged partial PUT (1-based) and returns it.
    pub fn wait_acked_put(&self, timeout: Duration, n: usize) -> Record {
        let what = format!("acknowledged partial PUT #{n}");
        eventually(timeout, &what, || {
            self.requests().into_iter().filter(|r| r.is_partial_put() && r.acknowledged()).nth(n - 1)
        })
    }

    /// Waits for an acknowledged partial PUT for which `f` holds; returns it.
    pub fn wait_put_where(&self, timeout: Duration, what: &str, f: impl Fn(&Record) -> bool) -> Record {
        eventually(timeout, what, || {
            self.requests().into_iter().find(|r| r.is_partial_put() && r.acknowledged() && f(r))
        })
    }
}

impl Drop for FakeEvalAi {
    fn drop(&mut self) {
        // SIGKILL by pid (this child only), then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.scratch.path("server.log")).unwrap_or_default();
            if !log.trim().is_empty() {
                eprintln!("--- fake-evalai output ---\n{log}");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// The logcopy binary
// ------------------------------------------------------------------------------------------------------------

/// `logcopy run --logs <volume>` with flags and environment, before it is spawned.
pub struct LogcopyCmd {
    logs: PathBuf,
    out_dir: PathBuf,
    flags: Vec<(String, Option<String>)>,
    env: Vec<(String, String)>,
}

impl LogcopyCmd {
    /// `logcopy run --logs <vol>`; stdout/stderr go to files beside the volume.
    pub fn new(vol: &Volume) -> LogcopyCmd {
        LogcopyCmd {
            logs: vol.root().to_path_buf(),
            out_dir: vol.side_dir("logcopy-out"),
            flags: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Short periods for tests: status GET and rescan every second, 100 ms debounce, 60 requests a minute,
    /// short request timeout and final budgets.
    pub fn fast(self) -> LogcopyCmd {
        self.flag("--status-period", "1")
            .flag("--logs-period", "1")
            .flag("--debounce", "100ms")
            .flag("--evalai-rpm", "60")
            .flag("--request-timeout", "5")
            .flag("--flush-budget", "10")
            .flag("--final-timeout", "30")
    }

    /// The environment of the cluster: the ids, the token and the server's URL.
    pub fn evalai(self, fake: &FakeEvalAi) -> LogcopyCmd {
        self.evalai_with_token(fake, TOKEN)
    }

    pub fn evalai_with_token(self, fake: &FakeEvalAi, token: &str) -> LogcopyCmd {
        self.env("CHALLENGE_ID", &CHALLENGE.to_string())
            .env("SUBMISSION_ID", &SUBMISSION.to_string())
            .env("TRACK_ID", &PHASE.to_string())
            .env("TEAM_ID", TEAM)
            .env("EVALAI_API_SERVER", &fake.base_url())
            .env("EVALAI_AUTH_TOKEN", token)
            .flag("--local-storage", LOCAL_OUT)
    }

    /// Points `--logs` somewhere else than the volume (e.g. a folder that does not exist).
    pub fn logs(mut self, path: &Path) -> LogcopyCmd {
        self.logs = path.to_path_buf();
        self
    }

    /// Sets `--name value`, replacing an earlier value of the same flag.
    pub fn flag(mut self, name: &str, value: &str) -> LogcopyCmd {
        self.flags.retain(|(n, _)| n != name);
        self.flags.push((name.to_string(), Some(value.to_string())));
        self
    }

    /// Removes a flag set earlier (e.g. the `--local-storage` of [`LogcopyCmd::evalai`] for a run against moto).
    pub fn unflag(mut self, name: &str) -> LogcopyCmd {
        self.flags.retain(|(n, _)| n != name);
        self
    }

    /// Adds a switch such as `--final-status`.
    pub fn switch(mut self, name: &str) -> LogcopyCmd {
        self.flags.retain(|(n, _)| n != name);
        self.flags.push((name.to_string(), None));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> LogcopyCmd {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The folder logcopy runs in (its working directory, beside the volume): where the embedded local sinks
    /// write by default (`logcopy-local/`), and where its stdout and stderr are captured.
    pub fn work_dir(&self) -> &Path {
        &self.out_dir
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_logcopy"));
        // Nothing inherited (LOGS_DIR, S3_BUCKET, EVALAI_*, AWS_*, ...): only what the test sets. The working
        // directory is private, so relative default outputs never land in the source tree.
        c.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            c.env("PATH", path);
        }
        c.current_dir(&self.out_dir);
        c.arg("run").arg("--logs").arg(&self.logs);
        for (name, value) in &self.flags {
            c.arg(name);
            if let Some(v) = value {
                c.arg(v);
            }
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.stdin(Stdio::null());
        c
    }

    pub fn spawn(self) -> Logcopy {
        let stdout = self.out_dir.join("stdout.log");
        let stderr = self.out_dir.join("stderr.log");
        let child = self
            .command()
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start logcopy: {e}"));
        Logcopy { child, stdout, stderr, work_dir: self.out_dir, exit: None }
    }

    /// Runs to the end (for `--once` and configuration errors), at most `timeout`.
    pub fn run(self, timeout: Duration) -> (i32, Logcopy) {
        let mut l = self.spawn();
        let code = l.wait_exit(timeout).unwrap_or_else(|| panic!("logcopy did not exit within {timeout:?}"));
        (code, l)
    }
}

/// A running `logcopy run`.
pub struct Logcopy {
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Its working directory (holds `logcopy-local/` when no storage target is given).
    pub work_dir: PathBuf,
    exit: Option<i32>,
}

impl Logcopy {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `true` while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait().expect("try_wait") {
            Some(status) => {
                self.exit = Some(exit_code(status));
                false
            }
            None => true,
        }
    }

    /// Waits at most `timeout` for the exit; its code (a signal `s` reads as `128 + s`), or `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return self.exit;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM to this process (by its pid).
    pub fn sigterm(&mut self) {
        if self.is_running() {
            let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
            // SAFETY: kill(2) with a pid we spawned and have not reaped (is_running just said so).
            let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
            assert_eq!(rc, 0, "kill -TERM {pid}: {}", std::io::Error::last_os_error());
        }
    }

    /// SIGTERM, then the exit code within `timeout` (panics if it does not exit).
    pub fn terminate(&mut self, timeout: Duration) -> i32 {
        self.sigterm();
        self.wait_exit(timeout).unwrap_or_else(|| panic!("logcopy did not exit within {timeout:?} of SIGTERM"))
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// stdout and stderr together, for assertions on what was logged and for failure messages.
    pub fn output(&self) -> String {
        format!("--- stdout ---\n{}\n--- stderr ---\n{}", self.stdout_text(), self.stderr_text())
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl Drop for Logcopy {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- logcopy (pid {}) ---\n{}", self.child.id(), self.output());
        }
    }
}

/// `logcopy merge --file-paths <files> --endpoint <endpoint>`.
pub fn logcopy_merge(files: &[PathBuf], endpoint: &Path) -> Output {
    let mut args: Vec<OsString> = vec!["merge".into(), "--file-paths".into()];
    args.extend(files.iter().map(|f| f.as_os_str().to_os_string()));
    args.push("--endpoint".into());
    args.push(endpoint.as_os_str().to_os_string());
    Command::new(env!("CARGO_BIN_EXE_logcopy")).args(&args).env_clear().output().expect("run logcopy merge")
}

//! End-to-end latency of the supervisor's event paths: how fast a crash, a peer's crash marker, CARLA's readiness
//! and a cancellation turn into the next action.
//!
//! `cargo bench -p supervisor --bench latency` runs the release `supervisor` binary as child processes, with tiny
//! child programs (`sh -c` scripts writing `date +%s%N`, `python3 -I -S -c` programs writing `time.time_ns()`) that
//! stamp the wall clock at the moment that matters, so the children's own start-up stays outside the measured
//! interval wherever the path allows it. Every sample has a fresh scratch folder (status folder `<dir>/status`, the
//! children's stamps and the supervisors' logs in `<dir>`) and a free port; at its end the benchmark SIGKILLs the
//! process group of each supervisor it started and of every process that carries the sample's `BENCH_DIR` in its
//! environment (the supervisors' children and theirs). Nothing is asserted: the figures are printed, goals beside.
//! The whole run takes under a minute.
//!
//! 1. **Child exit -> crash marker.** `supervisor simulator --restart container -- sh -c 'date > T; exit 3'`: the
//!    crash marker's appearance minus T (upstream polls every 5 s).
//! 2. **Peer crash marker -> own child stopped.** `supervisor agent` whose evaluator writes a ready file and, on
//!    SIGTERM, its stamp; `simulator-1.start0` is written beforehand so the evaluator starts at once. Once the
//!    ready file exists, the wall time is taken and `simulator-1.crash0` created: the SIGTERM stamp minus it.
//! 3. **CARLA port open -> agent child started.** A pair; CARLA listens and stamps right after `listen()`, the
//!    evaluator stamps first thing: evaluator stamp minus CARLA stamp (the 50 ms readiness probe, the start marker,
//!    the agent's inotify wake-up, the spawn; upstream sleeps 60 s).
//! 4. **Cancel marker -> both supervisors exited.** The same pair, once the evaluator runs: the wall time is taken,
//!    `simulation.cancel` created, both supervisors polled (`try_wait` every 1 ms): the later exit minus it.
//! 5. **Crash -> next attempt's evaluator running, in place.** A pair whose first evaluator run stamps and exits 1;
//!    the second run stamps: second stamp minus first (crash detected, agent crash marker, CARLA stopped, simulator
//!    crash marker, CARLA restarted, port ready, `start1`, evaluator spawned). The fake CARLA's start-up (a Python
//!    interpreter) is inside this interval, as a real CARLA's load time would be. The CARLA starts are counted and
//!    both supervisors checked to be still running (same pids: restarted in place, not by Kubernetes).
//!
//! A marker's time is when a thread of the benchmark blocked on an inotify watch of the status folder woke up for
//! it: an upper bound, late by that thread's wake-up on a busy machine. Marker mtimes are no substitute: file
//! systems stamp them with the coarse clock, up to a kernel tick early; measure 1 prints that lower bound beside.
//! The breakdowns (3a, 5a, ...) use these marker times and so are indicative; the headline figures of 2 to 5 come
//! from the children's stamps alone.
//!
//! Arguments: measure numbers (`cargo bench -p supervisor --bench latency -- 5` runs only measure 5; 3 and 4 share
//! their samples). Environment: `LATENCY_SAMPLES=N` sets the samples per measure (default 30; 3 without `--bench`,
//! as `cargo test --benches` runs it); `LATENCY_KEEP=1` keeps every scratch folder (the supervisors' logs).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use volume::markers::{Attempt, Marker, Role, WorkerId};

const SUPERVISOR: &str = env!("CARGO_BIN_EXE_supervisor");
const BENCH_COMMAND: &str = "cargo bench -p supervisor --bench latency";
const WORKER: WorkerId = WorkerId(1);
const SAMPLES: usize = 30;
const SMOKE_SAMPLES: usize = 3;
/// Longest wait for any one step of a sample before it counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(1);

/// Crashes at once: stamp, exit 3 (CARLA's arguments are appended and ignored).
const CRASH_SH: &str = r#"date +%s%N > "$BENCH_DIR/T"; exit 3"#;

/// An evaluator that waits for SIGTERM and stamps its arrival. SIGTERM is blocked and taken with sigwaitinfo: a
/// handler with `signal.pause()` loses a signal that lands between its last check and the pause() call (the
/// supervisor reacts within a millisecond of the ready file, so it does land there).
const TERM_PY: &str = r#"
import os, signal, time
d = os.environ['BENCH_DIR']
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
open(d + '/ready', 'w').close()
signal.sigwaitinfo({signal.SIGTERM})
t = time.time_ns()
with open(d + '/term', 'w') as f:
    f.write('%d\n' % t)
"#;

/// A CARLA that is ready at once: listens on `-carla-rpc-port=`, stamps right after `listen()` (one line per start).
const CARLA_PY: &str = r#"
import os, socket, sys, time
d = os.environ['BENCH_DIR']
port = int(next(a for a in sys.argv if a.startswith('-carla-rpc-port=')).split('=', 1)[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', port))
s.listen(16)
t = time.time_ns()
with open(d + '/carla.ready', 'a') as f:
    f.write('%d\n' % t)
while True:
    c, _ = s.accept()
    c.close()
"#;

/// An evaluator that stamps its start and runs until killed.
const EVAL_SH: &str = r#"date +%s%N > "$BENCH_DIR/T1"; exec sleep 100"#;

/// An evaluator whose first run stamps and crashes; the next run stamps and runs until killed.
const EVAL_CRASH_ONCE_SH: &str = r#"if [ -f "$BENCH_DIR/DONE1" ]; then date +%s%N > "$BENCH_DIR/T1"; exec sleep 100;
else touch "$BENCH_DIR/DONE1"; date +%s%N > "$BENCH_DIR/T0"; exit 1; fi"#;

/// The supervisor's settings that the environment could carry: the benchmark sets its own.
const CLEARED_ENV: [&str; 13] = [
    "RESTART",
    "MARKER_POLL",
    "MAX_IDLE",
    "READY_TIMEOUT",
    "PEER_WAIT",
    "MAX_ATTEMPTS",
    "RESUME",
    "GPU",
    "NVIDIA_VISIBLE_DEVICES",
    "LOG_FILE",
    "CHECKPOINT_ENDPOINT",
    "PYTHONPATH",
    "PYTHONHOME",
];

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

fn mtime_ns(p: &Path) -> Result<i128, String> {
    let t = fs::metadata(p).and_then(|m| m.modified()).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128))
}

/// The stamps of a file, one per complete line.
fn stamps(p: &Path) -> Vec<i128> {
    let text = fs::read_to_string(p).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Polls `f` every millisecond until it gives a value, for at most [`STEP_TIMEOUT`].
fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> Result<T, String> {
    testkit::poll_every(STEP_TIMEOUT, POLL, what, f)
}

/// The `n`-th stamp of `p` (0-based), once written.
fn wait_stamp(p: &Path, n: usize) -> Result<i128, String> {
    wait_for(&format!("stamp {n} in {}", p.display()), || stamps(p).get(n).copied())
}

/// When each file appeared in a folder (`IN_CREATE`, `IN_MOVED_TO`), as the wall time at which a thread blocked in
/// `read()` on an inotify descriptor woke up: an upper bound of the creation time, precise to the thread's wake-up.
/// (Marker mtimes are no substitute: the file system stamps them with the coarse clock, one kernel tick.)
struct Appearances {
    fd: i32,
    wd: i32,
    seen: Arc<Mutex<HashMap<String, i128>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Appearances {
    fn watch(dir: &Path) -> Result<Appearances, String> {
        let path = CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: inotify_init1 and inotify_add_watch with a valid NUL-terminated path.
        let (fd, wd) = unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC);
            if fd < 0 {
                return Err(format!("inotify_init1: {}", std::io::Error::last_os_error()));
            }
            let wd = libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO);
            if wd < 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(format!("inotify_add_watch {}: {e}", dir.display()));
            }
            (fd, wd)
        };
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let map = seen.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: read into a local buffer of the given length.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                let t = now_ns();
                if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                if n <= 0 {
                    return;
                }
                let mut at = 0usize;
                let header = std::mem::size_of::<libc::inotify_event>();
                while at + header <= n as usize {
                    // SAFETY: the kernel wrote a whole event at `at`; read_unaligned copes with the byte buffer.
                    let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
                    let name = &buf[at + header..at + header + ev.len as usize];
                    let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
                    if ev.mask & libc::IN_IGNORED != 0 {
                        return;
                    }
                    if let Ok(mut m) = map.lock() {
                        m.entry(name).or_insert(t);
                    }
                    at += header + ev.len as usize;
                }
            }
        });
        Ok(Appearances { fd, wd, seen, thread: Some(thread) })
    }

    /// When `name` appeared, waiting for it.
    fn wait(&self, name: &str) -> Result<i128, String> {
        wait_for(&format!("{name} to appear"), || self.seen.lock().ok()?.get(name).copied())
    }

    fn marker(&self, m: Marker) -> Result<i128, String> {
        self.wait(&m.file_name())
    }
}

impl Drop for Appearances {
    fn drop(&mut self) {
        // SAFETY: removing the watch queues IN_IGNORED, which ends the thread; then the descriptor is closed.
        unsafe { libc::inotify_rm_watch(self.fd, self.wd) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: the descriptor is ours and no longer read.
        unsafe { libc::close(self.fd) };
    }
}

/// A supervisor started by the benchmark, in a process group of its own.
struct Sup {
    child: Child,
    exited: Option<(i128, ExitStatus)>,
}

impl Sup {
    /// Records the exit (and its wall time) if it has happened.
    fn poll(&mut self) -> Result<Option<(i128, ExitStatus)>, String> {
        if self.exited.is_none()
            && let Some(st) = self.child.try_wait().map_err(|e| e.to_string())?
        {
            self.exited = Some((now_ns(), st));
        }
        Ok(self.exited)
    }
}

/// One sample: its scratch folder, port and supervisors; dropping it kills what it started.
struct Sample {
    dir: PathBuf,
    port: u16,
    sups: Vec<Sup>,
    keep: bool,
    /// The status folder's new files.
    seen: Appearances,
}

impl Sample {
    fn new(dir: PathBuf) -> Result<Sample, String> {
        fs::create_dir_all(dir.join("status")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let seen = Appearances::watch(&dir.join("status"))?;
        Ok(Sample { dir, port: testkit::free_port(), sups: Vec::new(), keep: false, seen })
    }

    fn status(&self) -> PathBuf {
        self.dir.join("status")
    }

    /// The status folder as the supervisors open it (markers are written beneath it, never through a link).
    fn status_root(&self) -> Result<volume::safe::Root, String> {
        volume::safe::Root::open(&self.status()).map_err(|e| e.to_string())
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts `supervisor <role> ... -- <child...>`; returns its index in `sups`.
    fn spawn(&mut self, role: Role, extra: &[&str], child: &[&str]) -> Result<usize, String> {
        let log = self.file(&format!("{role}.log"));
        let err = fs::File::create(self.file(&format!("{role}.stderr"))).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(SUPERVISOR);
        cmd.arg(role.as_str())
            .arg("--worker-id")
            .arg(WORKER.to_string())
            .arg("--status-dir")
            .arg(self.status())
            .arg("--log-file")
            .arg(&log)
            .args(["--grace", "1"])
            .args(extra)
            .arg("--")
            .args(child);
        for k in CLEARED_ENV {
            cmd.env_remove(k);
        }
        cmd.env("WORKER_ID", WORKER.to_string())
            .env("STATUS_DIR", self.status())
            .env("CARLA_PORT", self.port.to_string())
            .env("GRACE", "1")
            .env("ROUTES_SUBSET", "0-4")
            .env("BENCH_DIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().map_err(|e| format!("cannot start {SUPERVISOR}: {e}"))?;
        self.sups.push(Sup { child, exited: None });
        Ok(self.sups.len() - 1)
    }

    /// Kills every supervisor still running (its group), reaps it, then every process that carries this sample's
    /// `BENCH_DIR` (the supervisors' children and theirs, orphaned now), by process group.
    fn kill_all(&mut self) {
        for s in &mut self.sups {
            if s.exited.is_none() {
                // SAFETY: kill with a negative pid addresses the group this benchmark created for the supervisor.
                unsafe { libc::kill(-(s.child.id() as i32), libc::SIGKILL) };
                if let Ok(st) = s.child.wait() {
                    s.exited = Some((now_ns(), st));
                }
            }
        }
        let needle = format!("BENCH_DIR={}", self.dir.display()).into_bytes();
        // SAFETY: getpgrp has no preconditions.
        let own_group = unsafe { libc::getpgrp() };
        for _ in 0..200 {
            let pids = processes_with_env(&needle);
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: getpgid and kill on a pid read from /proc; a group is only signalled if it is not ours.
                unsafe {
                    let pgid = libc::getpgid(pid);
                    if pgid > 1 && pgid != own_group {
                        libc::kill(-pgid, libc::SIGKILL);
                    }
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            sleep(Duration::from_millis(5));
        }
        eprintln!("warning: processes of {} survived SIGKILL", self.dir.display());
    }
}

impl Drop for Sample {
    fn drop(&mut self) {
        self.kill_all();
        if !self.keep && std::env::var_os("LATENCY_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The live processes whose environment holds `needle` (`NAME=value`).
fn processes_with_env(needle: &[u8]) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle))
        })
        .collect()
}

/// The figures of one measure.
struct Series {
    name: &'static str,
    goal: &'static str,
    values: Vec<f64>,
}

struct Stats {
    n: usize,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Series {
    fn new(name: &'static str, goal: &'static str) -> Series {
        Series { name, goal, values: Vec::new() }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Nearest-rank percentiles.
    fn stats(&self) -> Option<Stats> {
        let v = self.sorted();
        let n = v.len();
        let pct = |p: f64| v[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        (n > 0).then(|| Stats { n, min: v[0], p50: pct(50.0), p90: pct(90.0), p99: pct(99.0), max: v[n - 1] })
    }

    fn print(&self, indent: &str) {
        match self.stats() {
            None => println!("{indent}{}: no samples", self.name),
            Some(s) => {
                println!(
                    "{indent}{}: n={} p50={:.2} p90={:.2} p99={:.2} max={:.2} ms (min {:.2})",
                    self.name, s.n, s.p50, s.p90, s.p99, s.max, s.min
                );
                if indent.is_empty() {
                    let all: Vec<String> = self.sorted().iter().map(|v| format!("{v:.1}")).collect();
                    println!("    sorted: {}", all.join(" "));
                }
            }
        }
    }
}

/// Runs `n` samples of `f`, each in a fresh folder `<root>/<tag>-<i>`; a failed sample keeps its folder.
fn run_samples<R>(
    root: &Path,
    tag: &str,
    n: usize,
    failures: &mut Vec<String>,
    mut f: impl FnMut(&mut Sample) -> Result<R, String>,
) -> Vec<R> {
    let mut out = Vec::new();
    for i in 0..n {
        let dir = root.join(format!("{tag}-{i}"));
        let result = Sample::new(dir.clone()).and_then(|mut s| {
            let r = f(&mut s);
            s.keep = r.is_err();
            r
        });
        match result {
            Ok(r) => out.push(r),
            Err(e) => failures.push(format!("{tag} sample {i}: {e} (folder kept: {})", dir.display())),
        }
    }
    out
}

/// The Python interpreter itself (not a pyenv shim, whose start-up is a shell script).
fn python() -> String {
    Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".into())
}

fn exit_code(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "?".into(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let only: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with('-')).collect();
    let want = |k: &str| only.is_empty() || only.contains(&k);
    let n = std::env::var("LATENCY_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(if bench_mode {
        SAMPLES
    } else {
        SMOKE_SAMPLES
    });
    let root = std::env::temp_dir().join(format!("supervisor-latency-{}", std::process::id()));
    if let Err(e) = fs::create_dir_all(&root) {
        eprintln!("cannot create {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let py = python();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = |s: String| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let load_before = load(fs::read_to_string("/proc/loadavg").unwrap_or_default());
    println!("supervisor latency benchmark: {n} samples per measure, {SUPERVISOR}");
    println!("machine: {cpus} CPUs, Linux {}, load average {load_before}; python: {py}", kernel.trim());
    let started = Instant::now();
    let mut failures = Vec::new();
    let py = py.as_str();
    let carla = [py, "-I", "-S", "-c", CARLA_PY];
    let crash0 = |role| Marker::Crash { role, worker: WORKER, attempt: Attempt(0) };
    let start = |attempt| Marker::Start { role: Role::Simulator, worker: WORKER, attempt: Attempt(attempt) };
    let checkpoint = |s: &Sample| s.file("agent_results.json").to_string_lossy().into_owned();
    let pair = |s: &mut Sample, eval: &str| -> Result<(), String> {
        s.spawn(Role::Simulator, &["--gpu", "none"], &carla)?;
        let cp = checkpoint(s);
        s.spawn(Role::Agent, &["--checkpoint", &cp], &["sh", "-c", eval])?;
        Ok(())
    };

    // 1. Child exit -> crash marker.
    let mut crash_marker = Series::new("1. child exit -> crash marker", "< 50 ms (p99)");
    let mut crash_marker_low = Series::new("1a. the same from the marker's mtime (a lower bound: coarse clock)", "");
    if want("1") {
        let results = run_samples(&root, "crash-marker", n, &mut failures, |s| {
            let i = s.spawn(Role::Simulator, &["--restart", "container", "--gpu", "none"], &["sh", "-c", CRASH_SH])?;
            let marker = s.seen.marker(crash0(Role::Simulator))?;
            let (_, st) = wait_for("the simulator to exit", || s.sups[i].poll().ok().flatten())?;
            if st.code() != Some(1) {
                return Err(format!("the simulator ended with {} (expected exit 1)", exit_code(st)));
            }
            let t = wait_stamp(&s.file("T"), 0)?;
            let mtime = mtime_ns(&s.status().join(crash0(Role::Simulator).file_name()))?;
            Ok((ms(marker - t), ms(mtime - t)))
        });
        for (v, low) in results {
            crash_marker.values.push(v);
            crash_marker_low.values.push(low);
        }
    }

    // 2. Peer crash marker -> own child stopped.
    let mut peer_crash = Series::new("2. peer crash marker -> own child SIGTERMed", "< 200 ms");
    if want("2") {
        peer_crash.values = run_samples(&root, "peer-crash", n, &mut failures, |s| {
            start(0).create_in(&s.status_root()?, Path::new("")).map_err(|e| e.to_string())?;
            let cp = checkpoint(s);
            s.spawn(Role::Agent, &["--checkpoint", &cp], &[py, "-I", "-S", "-c", TERM_PY])?;
            let ready = s.file("ready");
            wait_for("the evaluator's ready file", || ready.exists().then_some(()))?;
            let t0 = now_ns();
            crash0(Role::Simulator).create_in(&s.status_root()?, Path::new("")).map_err(|e| e.to_string())?;
            Ok(ms(wait_stamp(&s.file("term"), 0)? - t0))
        });
    }

    // 3 and 4. CARLA port open -> agent child started; then cancel -> both supervisors exited.
    let mut ready = Series::new("3. CARLA port open -> agent's child started", "< 100 ms");
    let mut ready_parts = [
        Series::new("3a. port open -> simulator-1.start0 (readiness probe)", ""),
        Series::new("3b. simulator-1.start0 -> evaluator stamp (inotify, spawn)", ""),
    ];
    let mut cancel = Series::new("4. simulation.cancel -> both supervisors exited", "< 1 s");
    let mut cancel_parts =
        [Series::new("4a. simulation.cancel -> simulator exited", ""), Series::new("4b. ... -> agent exited", "")];
    if want("3") || want("4") {
        let results = run_samples(&root, "ready-cancel", n, &mut failures, |s| {
            pair(s, EVAL_SH)?;
            let t1 = wait_stamp(&s.file("T1"), 0)?;
            let t0 = wait_stamp(&s.file("carla.ready"), 0)?;
            let marker = s.seen.marker(start(0))?;
            let c0 = now_ns();
            Marker::Cancel.create_in(&s.status_root()?, Path::new("")).map_err(|e| e.to_string())?;
            wait_for("both supervisors to exit", || {
                let mut all = true;
                for sup in &mut s.sups {
                    all &= sup.poll().ok().flatten().is_some();
                }
                all.then_some(())
            })?;
            let ends: Vec<(i128, ExitStatus)> = s.sups.iter().filter_map(|sup| sup.exited).collect();
            for (i, (_, st)) in ends.iter().enumerate() {
                if !st.success() {
                    return Err(format!("supervisor {i} ended with {} after the cancel (expected 0)", exit_code(*st)));
                }
            }
            let c1 = ends.iter().map(|(t, _)| *t).max().unwrap_or(c0);
            Ok([ms(t1 - t0), ms(marker - t0), ms(t1 - marker), ms(c1 - c0), ms(ends[0].0 - c0), ms(ends[1].0 - c0)])
        });
        for r in &results {
            ready.values.push(r[0]);
            ready_parts[0].values.push(r[1]);
            ready_parts[1].values.push(r[2]);
            cancel.values.push(r[3]);
            cancel_parts[0].values.push(r[4]);
            cancel_parts[1].values.push(r[5]);
        }
    }

    // 5. Crash -> next attempt's evaluator running, in place.
    let mut restart = Series::new("5. evaluator crash -> next attempt's evaluator running (in place)", "");
    let mut restart_parts = [
        Series::new("5a. evaluator stamp -> agent-1.crash0 (exit detected)", ""),
        Series::new("5b. agent-1.crash0 -> simulator-1.crash0 (CARLA stopped)", ""),
        Series::new("5c. simulator-1.crash0 -> 2nd CARLA listening (CARLA start-up)", ""),
        Series::new("5d. 2nd CARLA listening -> simulator-1.start1 (readiness probe)", ""),
        Series::new("5e. simulator-1.start1 -> 2nd evaluator stamp (inotify, spawn)", ""),
    ];
    let mut carla_starts = BTreeMap::new();
    let mut in_place = 0;
    if want("5") {
        let results = run_samples(&root, "restart", n, &mut failures, |s| {
            pair(s, EVAL_CRASH_ONCE_SH)?;
            let t1 = wait_stamp(&s.file("T1"), 0)?;
            let t0 = wait_stamp(&s.file("T0"), 0)?;
            let still = s.sups.iter_mut().all(|sup| matches!(sup.poll(), Ok(None)));
            // The stamp follows listen(): a busy machine may run the probe, start1 and the evaluator before it.
            let second = wait_stamp(&s.file("carla.ready"), 1)?;
            let listening = stamps(&s.file("carla.ready"));
            let agent_crash = s.seen.marker(crash0(Role::Agent))?;
            let sim_crash = s.seen.marker(crash0(Role::Simulator))?;
            let start1 = s.seen.marker(start(1))?;
            let total = ms(t1 - t0);
            let parts = [agent_crash - t0, sim_crash - agent_crash, second - sim_crash, start1 - second, t1 - start1];
            Ok((total, parts.map(ms), listening.len(), still))
        });
        for (total, parts, starts, still) in results {
            restart.values.push(total);
            for (p, v) in restart_parts.iter_mut().zip(parts) {
                p.values.push(v);
            }
            *carla_starts.entry(starts).or_insert(0usize) += 1;
            in_place += usize::from(still);
        }
    }
    let elapsed = started.elapsed();
    let load_after = load(fs::read_to_string("/proc/loadavg").unwrap_or_default());

    println!();
    for (s, parts) in [
        (&crash_marker, std::slice::from_ref(&crash_marker_low)),
        (&peer_crash, &[][..]),
        (&ready, &ready_parts[..]),
        (&cancel, &cancel_parts[..]),
        (&restart, &restart_parts[..]),
    ] {
        if s.values.is_empty() {
            continue;
        }
        s.print("");
        for p in parts {
            p.print("    ");
        }
    }
    if !carla_starts.is_empty() {
        let counts: Vec<String> =
            carla_starts.iter().map(|(k, v)| format!("{k} CARLA starts in {v} samples")).collect();
        println!(
            "    {}; both supervisors still running (same pids) in {in_place} of {} samples",
            counts.join(", "),
            carla_starts.values().sum::<usize>()
        );
    }
    if !failures.is_empty() {
        println!("\nfailed samples ({}):", failures.len());
        for f in &failures {
            println!("  {f}");
        }
    }

    let mut table = String::new();
    let _ = writeln!(table, "| measure | samples | p50 | p99 | max | goal |");
    let _ = writeln!(table, "|---|---|---|---|---|---|");
    for s in [&crash_marker, &peer_crash, &ready, &cancel, &restart] {
        let name = s.name.split_once(". ").map_or(s.name, |(_, n)| n);
        let goal = if s.goal.is_empty() { "-" } else { s.goal };
        if let Some(st) = s.stats() {
            let _ = writeln!(
                table,
                "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {goal} |",
                st.n, st.p50, st.p99, st.max
            );
        }
    }
    println!("\n{table}");
    println!(
        "`{BENCH_COMMAND}`: {n} samples per measure in {:.0} s, {cpus} CPUs, load average {load_before} before, \
         {load_after} after",
        elapsed.as_secs_f64()
    );
    if failures.is_empty() && std::env::var_os("LATENCY_KEEP").is_none() {
        let _ = fs::remove_dir_all(&root);
        ExitCode::SUCCESS
    } else {
        println!("scratch folders are kept under {}", root.display());
        if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }
}

//! Harness of the pair tests: a scene (temporary folder, status folder, free port, the fakes' logs), supervisors
//! started as real processes, bounded waits, and the clean-up of everything a scene started.
//!
//! Every process a scene starts carries `PAIRS_SCENE=<tag>` in its environment, which every descendant inherits
//! (CARLA, the evaluator, their grandchildren, orphans of a SIGKILLed supervisor); dropping the scene SIGKILLs
//! every live process whose environment holds the tag, each by its own pid. Dropping a [`Sup`] SIGKILLs the
//! supervisor by pid and reaps it. A failing test keeps its folder (the path is printed); `PAIRS_KEEP=1` keeps
//! every folder, and `--nocapture` shows how long each scene took.

#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const SUPERVISOR: &str = env!("CARGO_BIN_EXE_supervisor");

/// An assertion that prints the scene (markers, the fakes' logs, the supervisors' output) when it fails.
macro_rules! ensure {
    ($scene:expr, $cond:expr, $($fmt:tt)+) => {
        assert!($cond, "{}\n{}", format!($($fmt)+), $scene.report())
    };
}

#[allow(unused_imports)]
pub use testkit::procfs::{all_pids, ignores, pid_exists, proc_state, signal, zombies_of};
pub use testkit::{free_port, wait_for};

/// A fake program of `fixtures/bin`.
pub fn fixture(name: &str) -> PathBuf {
    testkit::fixture("bin").join(name)
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Live (non-zombie) processes carrying `PAIRS_SCENE=<tag>` in their environment.
fn tagged(tag: &str) -> Vec<i32> {
    let needle = format!("PAIRS_SCENE={tag}\0");
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|p| *p != me)
        .filter(|p| {
            fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

/// The tail of a text file, `n` lines.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether a line of a supervisor's output is one of its own entries (text or JSON), not its child's.
pub fn is_supervisor_line(l: &str) -> bool {
    l.contains(" supervisor") || l.starts_with("{\"ts\"")
}

/// One start of the evaluator, from FAKE_EVAL_LOG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalStart {
    pub resume: bool,
    /// `None` for "none" (nothing left to run).
    pub first_route: Option<u32>,
    pub pid: i32,
}

static SCENES: AtomicU32 = AtomicU32::new(0);

/// One test's world: a temporary folder with the status folder, a port, the fakes' logs.
pub struct Scene {
    pub name: String,
    pub dir: PathBuf,
    pub status: PathBuf,
    pub port: u16,
    tag: String,
    env: Vec<(String, String)>,
    launched: AtomicU32,
    created: Instant,
}

impl Scene {
    pub fn new(name: &str) -> Scene {
        let n = SCENES.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{}-{n}", std::process::id(), name);
        let dir = std::env::temp_dir().join(format!("pairs-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("agent")).expect("create the scene folder");
        let status = dir.join("status");
        fs::create_dir_all(&status).expect("create the status folder");
        let port = free_port();
        Scene {
            name: name.into(),
            dir,
            status,
            port,
            tag,
            env: Vec::new(),
            launched: AtomicU32::new(0),
            created: Instant::now(),
        }
    }

    /// An environment variable for every supervisor this scene starts (and so for its children).
    pub fn env(&mut self, k: &str, v: impl AsRef<str>) -> &mut Self {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.as_ref().into()));
        self
    }

    /// An environment variable naming a path in the scene's folder.
    pub fn pathenv(&mut self, k: &str, rel: &str) -> &mut Self {
        let v = self.path(rel).to_string_lossy().into_owned();
        self.env(k, v)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join("agent").join("agent_results.json")
    }

    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent").join("leaderboard.log")
    }

    pub fn sim_log(&self) -> PathBuf {
        self.dir.join("simulator.log")
    }

    pub fn sim(&self) -> Launch<'_> {
        let args: Vec<OsString> =
            vec!["simulator".into(), "--gpu".into(), "none".into(), "--log-file".into(), self.sim_log().into()];
        Launch {
            scene: self,
            role: "simulator",
            args,
            env: Vec::new(),
            unset: Vec::new(),
            command: vec![fixture("fake-carla").into()],
        }
    }

    pub fn agent(&self) -> Launch<'_> {
        let args: Vec<OsString> = vec!["agent".into(), "--checkpoint".into(), self.checkpoint_path().into()];
        Launch {
            scene: self,
            role: "agent",
            args,
            env: Vec::new(),
            unset: Vec::new(),
            command: vec![fixture("fake-evaluator").into()],
        }
    }

    /// The agent with another `--checkpoint` (which may hold `{worker}`).
    pub fn agent_at(&self, checkpoint: &Path) -> Launch<'_> {
        let mut l = self.agent();
        l.args[2] = checkpoint.into();
        l
    }

    /// Both sides with the scene's settings.
    pub fn pair(&self) -> (Sup, Sup) {
        (self.sim().start(), self.agent().start())
    }

    pub fn markers(&self) -> BTreeSet<String> {
        fs::read_dir(&self.status)
            .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    }

    pub fn has(&self, marker: &str) -> bool {
        self.status.join(marker).exists()
    }

    pub fn touch(&self, marker: &str) {
        fs::write(self.status.join(marker), b"").expect("write a marker");
    }

    /// Crash markers (either side of worker 1), sorted.
    pub fn crash_markers(&self) -> Vec<String> {
        self.markers().into_iter().filter(|m| m.contains(".crash")).collect()
    }

    /// Waits up to `timeout` for `cond`; fails the test with the scene's report when it does not come.
    pub fn expect(&self, timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
        if !wait_for(timeout, cond) {
            panic!("timed out after {timeout:?} waiting for: {what}\n{}", self.report());
        }
    }

    pub fn expect_marker(&self, marker: &str, timeout: Duration) {
        self.expect(timeout, &format!("marker {marker}"), || self.has(marker));
    }

    /// CARLA pids, one per start, from FAKE_CARLA_LOG.
    pub fn carla_starts(&self) -> Vec<i32> {
        fs::read_to_string(self.path("carla-starts.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.strip_prefix("start ")?.split_whitespace().find_map(|w| w.strip_prefix("pid="))?.parse().ok()
            })
            .collect()
    }

    /// Evaluator starts that got as far as selecting routes, from FAKE_EVAL_LOG.
    pub fn eval_starts(&self) -> Vec<EvalStart> {
        fs::read_to_string(self.path("eval-starts.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("start ")?;
                let mut resume = None;
                let mut first = None;
                let mut pid = None;
                for w in rest.split_whitespace() {
                    if let Some(v) = w.strip_prefix("resume=") {
                        resume = Some(v == "1");
                    } else if let Some(v) = w.strip_prefix("first_route=") {
                        first = Some(v.parse::<u32>().ok());
                    } else if let Some(v) = w.strip_prefix("pid=") {
                        pid = v.parse().ok();
                    }
                }
                Some(EvalStart { resume: resume?, first_route: first?, pid: pid? })
            })
            .collect()
    }

    /// The checkpoint, when it is there and parses.
    pub fn checkpoint(&self) -> Option<Value> {
        serde_json::from_slice(&fs::read(self.checkpoint_path()).ok()?).ok()
    }

    /// Records in the checkpoint (0 when it does not parse).
    pub fn records(&self) -> usize {
        self.checkpoint().map_or(0, |v| route_ids(&v).len())
    }

    /// Reads a pid file ("PID\n").
    pub fn pid_file(&self, rel: &str) -> Option<i32> {
        fs::read_to_string(self.path(rel)).ok()?.trim().parse().ok()
    }

    /// Route numbers in the order the evaluator prepared them, split per attempt banner of the agent's log.
    pub fn prepared_per_attempt(&self) -> Vec<Vec<u32>> {
        let text = fs::read_to_string(self.agent_log()).unwrap_or_default();
        let mut out: Vec<Vec<u32>> = Vec::new();
        for line in text.lines() {
            if line.starts_with("===== supervisor: agent-") {
                out.push(Vec::new());
            } else if let Some(rest) = line.strip_prefix("========= Preparing RouteScenario_") {
                let num: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let (Ok(n), Some(cur)) = (num.parse(), out.last_mut()) {
                    cur.push(n);
                }
            }
        }
        out
    }

    /// Everything a supervisor printed (its notes and its children's output).
    pub fn output(&self, sup: &Sup) -> String {
        fs::read_to_string(self.dir.join(format!("{}.out", sup.name))).unwrap_or_default()
    }

    /// Markers, the fakes' logs and the tails of every output file, for failure messages.
    pub fn report(&self) -> String {
        let mut s = format!("--- scene {} in {} (port {}) ---\n", self.name, self.dir.display(), self.port);
        s += &format!("markers: {:?}\n", self.markers());
        s += &format!("carla starts: {}\n", tail(&self.path("carla-starts.log"), 20).replace('\n', " | "));
        s += &format!("evaluator starts: {}\n", tail(&self.path("eval-starts.log"), 20).replace('\n', " | "));
        if let Some(v) = self.checkpoint() {
            s += &format!(
                "checkpoint: entry_status={} progress={} routes={:?}\n",
                v["entry_status"],
                v["_checkpoint"]["progress"],
                route_ids(&v)
            );
        } else {
            s += "checkpoint: missing or not JSON\n";
        }
        let mut outs: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "out")).collect())
            .unwrap_or_default();
        outs.sort();
        for p in outs {
            let lines: Vec<String> = fs::read_to_string(&p)
                .unwrap_or_default()
                .lines()
                .filter(|l| is_supervisor_line(l) || l.contains("carla:"))
                .filter(|l| !l.contains("carla: tick"))
                .map(str::to_owned)
                .collect();
            let from = lines.len().saturating_sub(40);
            s += &format!("--- {} (supervisor lines, last 40) ---\n{}\n", p.display(), lines[from..].join("\n"));
        }
        s
    }

    /// Live (non-zombie) processes this scene started, directly or not (the test process excepted).
    pub fn live_processes(&self) -> Vec<i32> {
        tagged(&self.tag)
    }

    /// SIGKILLs every live process of this scene, by pid, until none is left (bounded).
    pub fn kill_all(&self) {
        for _ in 0..100 {
            let left = tagged(&self.tag);
            if left.is_empty() {
                return;
            }
            for p in left {
                signal(p, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.kill_all();
        eprintln!("scene {} took {:.1} s", self.name, self.created.elapsed().as_secs_f64());
        if std::thread::panicking() || std::env::var_os("PAIRS_KEEP").is_some() {
            eprintln!("scene {} kept for inspection in {}", self.name, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A supervisor about to start.
pub struct Launch<'a> {
    scene: &'a Scene,
    role: &'static str,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    unset: Vec<String>,
    command: Vec<OsString>,
}

impl Launch<'_> {
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<str>) -> Self {
        self.env.push((k.into(), v.as_ref().into()));
        self
    }

    /// Leaves `k` out of the supervisor's environment (one the scene sets, such as WORKER_ID).
    pub fn unset(mut self, k: &str) -> Self {
        self.unset.push(k.into());
        self
    }

    /// The child command (CARLA's arguments or the evaluator's are appended by the supervisor).
    pub fn command(mut self, c: Vec<OsString>) -> Self {
        self.command = c;
        self
    }

    pub fn start(self) -> Sup {
        let s = self.scene;
        let n = s.launched.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}", self.role);
        let out = fs::File::create(s.dir.join(format!("{name}.out"))).expect("create the output file");
        let err = out.try_clone().expect("clone the output file");
        let mut cmd = Command::new(SUPERVISOR);
        cmd.args(&self.args).arg("--").args(&self.command);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", &s.dir)
            .env("PAIRS_SCENE", &s.tag)
            .env("WORKER_ID", "1")
            .env("STATUS_DIR", &s.status)
            .env("CARLA_PORT", s.port.to_string())
            .env("GRACE", "1")
            .env("PEER_WAIT", "15")
            .env("READY_TIMEOUT", "5")
            .env("MARKER_POLL", "200ms")
            .env("ROUTES_SUBSET", "0-4")
            .env("FAKE_CARLA_LOG", s.path("carla-starts.log"))
            .env("FAKE_EVAL_LOG", s.path("eval-starts.log"))
            .env("FAKE_EVAL_CONNECT_SECONDS", "5");
        for (k, v) in s.env.iter().chain(&self.env) {
            cmd.env(k, v);
        }
        for k in &self.unset {
            cmd.env_remove(k);
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().expect("start the supervisor");
        Sup { name, child, code: None }
    }
}

/// A running supervisor.
pub struct Sup {
    pub name: String,
    child: Child,
    code: Option<i32>,
}

impl Sup {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The exit code (128 + signal when killed), once it has exited.
    pub fn poll(&mut self) -> Option<i32> {
        if self.code.is_none()
            && let Ok(Some(st)) = self.child.try_wait()
        {
            self.code = Some(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)));
        }
        self.code
    }

    pub fn running(&mut self) -> bool {
        self.poll().is_none()
    }

    /// Waits up to `timeout` for the exit; its code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        wait_for(timeout, || self.poll().is_some());
        self.code
    }

    pub fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if self.running() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait().map(|st| self.code = Some(st.code().unwrap_or(137)));
        }
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Route ids of a results file's records, in order.
pub fn route_ids(v: &Value) -> Vec<String> {
    v["_checkpoint"]["records"]
        .as_array()
        .map(|a| a.iter().map(|r| r["route_id"].as_str().unwrap_or("?").to_owned()).collect())
        .unwrap_or_default()
}

/// `progress` as a pair.
pub fn progress(v: &Value) -> Option<(i64, i64)> {
    let p = v["_checkpoint"]["progress"].as_array()?;
    Some((p.first()?.as_i64()?, p.get(1)?.as_i64()?))
}

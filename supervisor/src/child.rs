//! The supervised child: CarlaUE4 or the leaderboard evaluator, in a process group of its own.
//!
//! Upstream starts the child in the background of a bash script, kills it with `pkill -9 'python|java|ros|...'`
//! (which misses what is not named so and kills unrelated processes that are) and tees its output with
//! `exec > >(tee -a $LOG)`. Here the child leads its own process group, so a stop reaches everything it started
//! (SIGTERM to the group, a grace period, then SIGKILL to the group, then to every descendant that left the group:
//! [`crate::role::Engine::stop`]) and nothing else; its stdout and stderr go to
//! the container's stdout and are appended (never truncated) to its log file on the volume, each attempt under a
//! banner; and the time of its last output feeds the silence (hang) detector.

use crate::reaper;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use volume::safe::Root;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// Run the child (and everything it starts) as this numeric user and group, with no supplementary groups.
    pub run_as: Option<RunAs>,
}

/// A numeric user and group (`--run-as UID[:GID]`; the static binary has no name lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl std::str::FromStr for RunAs {
    type Err = String;

    /// `UID` (the group is the same number) or `UID:GID`, decimal.
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| {
            t.parse::<u32>()
                .map_err(|_| format!("{s:?} is not UID[:GID] (numeric ids: the supervisor has no name lookup)"))
        };
        let (uid, gid) = match s.split_once(':') {
            Some((u, g)) => (num(u)?, num(g)?),
            None => (num(s)?, num(s)?),
        };
        Ok(RunAs { uid, gid })
    }
}

impl Spec {
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A running child.
pub struct Child {
    pub pid: i32,
    started: Instant,
    /// Milliseconds after `started` of the last output byte.
    last_output_ms: Arc<AtomicU64>,
}

impl Child {
    /// How long the child has printed nothing.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_output_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// The child's log file on the volume: its folder (a mount of the volume) is opened once as a root, and the file is
/// opened beneath it for each attempt and each note, for appending (never truncated, never through a link).
#[derive(Debug)]
pub struct LogFile {
    root: Root,
    name: PathBuf,
}

impl LogFile {
    /// Opens the folder of `path`, creating it when missing.
    pub fn open(path: &Path) -> std::io::Result<LogFile> {
        let (root, name) = Root::open_parent(path, true)?;
        Ok(LogFile { root, name })
    }

    /// The file, opened for appending (created 0644 less the umask).
    pub fn append(&self) -> std::io::Result<File> {
        self.root.append(&self.name, 0o644)
    }

    /// The last `max` bytes of the file (never through a link, never blocking on a FIFO).
    pub fn tail(&self, max: u64) -> std::io::Result<Vec<u8>> {
        let (mut f, len) = self.root.open_read(&self.name)?;
        f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
        let mut buf = Vec::new();
        f.take(max).read_to_end(&mut buf)?;
        Ok(buf)
    }

    pub fn path(&self) -> PathBuf {
        self.root.display(&self.name)
    }
}

/// Starts `spec` in a new process group, its output teed to stdout and to `log` under `banner`.
pub fn spawn(spec: &Spec, log: Option<File>, banner: &str) -> std::io::Result<Child> {
    let log = log.map(|f| Arc::new(Mutex::new(f)));
    // The log file gets a banner people find between attempts; stdout gets the same news as a log entry.
    let (when, what) = (volume::time::now_utc(), spec.display());
    crate::log::out(crate::log::Level::Info, &format!("{banner} at {when}: {what}"));
    if let Some(log) = &log
        && let Ok(mut f) = log.lock()
    {
        let _ = f.write_all(format!("\n===== supervisor: {banner} at {when}: {what} =====\n").as_bytes());
    }
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).envs(spec.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    if let Some(RunAs { uid, gid }) = spec.run_as {
        // std drops the supplementary groups (setgroups(0)) before setgid/setuid when it runs as root.
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: only async-signal-safe calls (pthread_sigmask) between fork and exec.
    unsafe {
        cmd.pre_exec(reaper::unblock_all_in_child);
    }
    // The reaper waits while std forks and execs: a failed exec's child is std's to reap ([`reaper::SPAWN_LOCK`]).
    let mut child = {
        let _spawning = reaper::SPAWN_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cmd.spawn()?
    };
    let started = Instant::now();
    let last_output_ms = Arc::new(AtomicU64::new(0));
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let log = log.clone();
        let last = last_output_ms.clone();
        std::thread::spawn(move || tee(stream, log, last, started));
    }
    // The std handle is dropped without waiting: the signal thread reaps every child (one owner of waitpid).
    let pid = child.id() as i32;
    drop(child);
    Ok(Child { pid, started, last_output_ms })
}

fn emit(bytes: &[u8], log: Option<&Arc<Mutex<File>>>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
    if let Some(log) = log
        && let Ok(mut f) = log.lock()
    {
        let _ = f.write_all(bytes);
    }
}

fn tee(mut stream: Box<dyn Read + Send>, log: Option<Arc<Mutex<File>>>, last: Arc<AtomicU64>, started: Instant) {
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                emit(&buf[..n], log.as_ref());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// Writes a supervisor entry to stdout (in the chosen format) and, in the text form, to the log.
pub fn note(log: Option<&LogFile>, level: crate::log::Level, msg: &str) {
    if crate::log::out(level, msg).is_none() {
        return;
    }
    if let Some(log) = log
        && let Ok(mut f) = log.append()
    {
        let _ = f.write_all(crate::log::text_line(level, msg).as_bytes());
    }
}

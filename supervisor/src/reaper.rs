//! PID-1 duties and signals, as `tini -g -s` does them.
//!
//! Upstream's containers run `bash run_carla.sh`: as PID 1, bash forwards no signal to CARLA and reaps no orphan,
//! so `kubectl delete` waits out the grace period and zombies pile up. Here, before any thread exists, `main`
//! blocks the signals we handle and becomes a child subreaper when it is not PID 1. One thread then takes every
//! signal with `sigwaitinfo`: SIGCHLD drives a single `waitpid(-1, WNOHANG)` loop that reaps every child (the
//! main child and any orphan re-parented to us) and reports each exit; SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1
//! and SIGUSR2 are reported for the run loop to forward to the child's process group. This is the one owner of
//! `waitpid` in the process: nothing else waits, so no exit status is ever stolen (the run loop keeps the exit of
//! the attempt's child and drops the others). Being the subreaper is also what lets a stop reach every process of
//! an attempt: one that left the child's process group (`setsid`, a double fork, `setpgid`) is re-parented to us
//! when its parent exits, and [`descendants`] finds it by parent pid.

/// A signal the supervisor takes, sends, forwards or sees a child end by. The raw numbers stay at the edges
/// (`sigwaitinfo`, `kill`, `WTERMSIG`, the status record's field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Term,
    Int,
    Hup,
    Quit,
    Usr1,
    Usr2,
    Kill,
    Chld,
    Segv,
    Abrt,
    Bus,
    Pipe,
    /// Any other signal, by number (a child may die by any).
    Other(i32),
}

/// The named signals, with their numbers and names.
const NAMED: [(Signal, i32, &str); 12] = [
    (Signal::Term, libc::SIGTERM, "SIGTERM"),
    (Signal::Int, libc::SIGINT, "SIGINT"),
    (Signal::Hup, libc::SIGHUP, "SIGHUP"),
    (Signal::Quit, libc::SIGQUIT, "SIGQUIT"),
    (Signal::Usr1, libc::SIGUSR1, "SIGUSR1"),
    (Signal::Usr2, libc::SIGUSR2, "SIGUSR2"),
    (Signal::Kill, libc::SIGKILL, "SIGKILL"),
    (Signal::Chld, libc::SIGCHLD, "SIGCHLD"),
    (Signal::Segv, libc::SIGSEGV, "SIGSEGV"),
    (Signal::Abrt, libc::SIGABRT, "SIGABRT"),
    (Signal::Bus, libc::SIGBUS, "SIGBUS"),
    (Signal::Pipe, libc::SIGPIPE, "SIGPIPE"),
];

impl Signal {
    /// The signals forwarded to the child's process group.
    pub const FORWARDED: [Signal; 6] =
        [Signal::Term, Signal::Int, Signal::Hup, Signal::Quit, Signal::Usr1, Signal::Usr2];

    /// The signal of a raw number (`Other` for one without a name here).
    pub fn from_raw(raw: i32) -> Signal {
        NAMED.iter().find(|(_, r, _)| *r == raw).map_or(Signal::Other(raw), |(s, _, _)| *s)
    }

    /// The number `kill` takes.
    pub fn raw(self) -> i32 {
        match self {
            Signal::Other(raw) => raw,
            named => NAMED.iter().find(|(s, _, _)| *s == named).map_or(0, |(_, r, _)| *r),
        }
    }

    /// `SIGTERM`, ..., or `signal` for an `Other`.
    pub fn name(self) -> &'static str {
        NAMED.iter().find(|(s, _, _)| *s == self).map_or("signal", |(_, _, n)| n)
    }

    /// A signal that ends the supervisor once forwarded (the container is being stopped); SIGUSR1 and SIGUSR2
    /// are only passed on.
    pub fn is_terminating(self) -> bool {
        matches!(self, Signal::Term | Signal::Int | Signal::Hup | Signal::Quit)
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signal::Other(raw) => write!(f, "signal {raw}"),
            named => f.write_str(named.name()),
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Exit {
    /// The exit code a shell would report: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s.raw(),
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "signal {} ({})", s.raw(), s.name()),
        }
    }
}

/// What the signal thread reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// A child was reaped.
    Reaped { pid: i32, exit: Exit },
    /// A signal to forward arrived.
    Signal(Signal),
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, Signal::Chld.raw());
        for s in Signal::FORWARDED {
            libc::sigaddset(&mut set, s.raw());
        }
        set
    }
}

/// Blocks the handled signals in the calling thread (and every thread it starts later), and becomes a child
/// subreaper unless we are PID 1. Call first thing in `main`, before any thread exists.
pub fn setup() -> std::io::Result<()> {
    let set = handled_set();
    // SAFETY: pthread_sigmask with a valid set; prctl with documented arguments.
    unsafe {
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getpid() != 1 && libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Restores an empty signal mask: called in the child between fork and exec, so the child gets the signals we
/// blocked for ourselves.
pub fn unblock_all_in_child() -> std::io::Result<()> {
    // SAFETY: async-signal-safe calls between fork and exec.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn decode(status: i32) -> Option<Exit> {
    if libc::WIFEXITED(status) {
        Some(Exit::Code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(Exit::Signal(Signal::from_raw(libc::WTERMSIG(status))))
    } else {
        None
    }
}

/// Held by [`reap_all`] while it reaps and by [`crate::child::spawn`] while `fork`/`exec` run. When `exec` fails,
/// std's `Command::spawn` waits for the child it forked itself, and panics ("wait() should either return Ok or
/// panic") if `waitpid(-1)` here reaped that child first: an evaluator that could not start ended the supervisor
/// with exit 101 instead of a `spawn-failed` crash. With the lock, the failed child is std's to reap.
pub static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Reaps every exited child without blocking.
pub fn reap_all(mut report: impl FnMut(i32, Exit)) {
    let _spawning = SPAWN_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        if let Some(exit) = decode(status) {
            report(pid, exit);
        }
    }
}

/// Starts the signal thread; `report` returns `false` once nobody listens. Requires [`setup`] first, in `main`.
pub fn spawn(report: impl Fn(SignalEvent) -> bool + Send + 'static) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let set = handled_set();
        // An exit that happened before this thread ran (SIGCHLD already pending) is picked up by the first loop.
        reap_all(|pid, exit| {
            report(SignalEvent::Reaped { pid, exit });
        });
        loop {
            // SAFETY: sigwaitinfo with a valid set and info pointer.
            let sig = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::sigwaitinfo(&set, &mut info)
            };
            if sig < 0 {
                continue; // EINTR
            }
            let sig = Signal::from_raw(sig);
            if sig == Signal::Chld {
                reap_all(|pid, exit| {
                    report(SignalEvent::Reaped { pid, exit });
                });
            } else if !report(SignalEvent::Signal(sig)) {
                return;
            }
        }
    })
}

/// A process seen in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    /// The state letter (`Z` for a zombie, `D` for uninterruptible sleep).
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    /// The command name (at most 15 bytes, chosen by the process itself: never trusted, only shown).
    pub comm: String,
}

impl Proc {
    /// Parses `/proc/<pid>/stat`: `pid (comm) state ppid pgrp ...`. The command name may hold spaces and
    /// parentheses, so the fields are read after its last `)`.
    pub fn parse(stat: &str) -> Option<Proc> {
        let open = stat.find(" (")?;
        let close = stat.rfind(')')?;
        let pid = stat[..open].trim().parse().ok()?;
        let comm = stat.get(open + 2..close)?.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        let mut it = stat[close + 1..].split_whitespace();
        let state = it.next()?.chars().next()?;
        let ppid = it.next()?.parse().ok()?;
        let pgid = it.next()?.parse().ok()?;
        Some(Proc { pid, state, ppid, pgid, comm })
    }
}

/// Every process descended from `root` (by parent pid, zombies included), found by one walk of `/proc`. With the
/// supervisor a child subreaper (or PID 1), a process that left the child's session or group and whose parent
/// exited is re-parented to the supervisor, so it is still found here. A process that exits during the walk is
/// simply missed; one forked during it is found by the next walk.
pub fn descendants(root: i32) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let all: Vec<Proc> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Proc::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?))
        .collect();
    let mut children: std::collections::HashMap<i32, Vec<usize>> = std::collections::HashMap::new();
    for (i, p) in all.iter().enumerate() {
        children.entry(p.ppid).or_default().push(i);
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    let mut seen = std::collections::HashSet::from([root]);
    while let Some(pid) = todo.pop() {
        for &i in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(all[i].pid) {
                todo.push(all[i].pid);
                out.push(all[i].clone());
            }
        }
    }
    out
}

/// Sends `sig` to one process; `false` when it is gone.
pub fn signal_pid(pid: i32, sig: Signal) -> bool {
    pid > 0 && kill(pid, sig.raw())
}

/// Sends `sig` to every process of group `pgid`; `false` when the group has no process left.
pub fn signal_group(pgid: i32, sig: Signal) -> bool {
    pgid > 0 && kill(-pgid, sig.raw())
}

/// Whether any process of group `pgid` is left (zombies included, until reaped): signal 0 checks, sends nothing.
pub fn group_alive(pgid: i32) -> bool {
    pgid > 0 && kill(-pgid, 0)
}

fn kill(target: i32, raw: i32) -> bool {
    // SAFETY: kill has no memory preconditions; callers never pass 0 or -1 (the caller's group, every process).
    unsafe { libc::kill(target, raw) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_convert_both_ways() {
        for raw in 1..=64 {
            assert_eq!(Signal::from_raw(raw).raw(), raw);
        }
        assert_eq!(Signal::from_raw(libc::SIGTERM), Signal::Term);
        assert_eq!(Signal::from_raw(34), Signal::Other(34));
        assert_eq!((Signal::Kill.to_string(), Signal::Other(34).to_string()), ("SIGKILL".into(), "signal 34".into()));
        assert_eq!(Exit::Signal(Signal::Kill).shell_code(), 137);
        assert_eq!(Exit::Signal(Signal::Segv).to_string(), "signal 11 (SIGSEGV)");
        let terminating: Vec<Signal> = Signal::FORWARDED.into_iter().filter(|s| s.is_terminating()).collect();
        assert_eq!(terminating, [Signal::Term, Signal::Int, Signal::Hup, Signal::Quit]);
    }

    #[test]
    fn stat_lines_with_hostile_command_names_parse() {
        let p = Proc::parse("42 (a) b) (c) S 7 42 42 0 -1 4194560").unwrap();
        assert_eq!((p.pid, p.comm.as_str(), p.state, p.ppid, p.pgid), (42, "a) b) (c", 'S', 7, 42));
        let p = Proc::parse("9 (x\ny) Z 1 9 9").unwrap();
        assert_eq!((p.comm.as_str(), p.state), ("x?y", 'Z'));
        for bad in ["", "42", "42 (a", "x (a) S 1 1", "42 (a) S", "42 (a) S one 1", ")( 1 2 3"] {
            assert_eq!(Proc::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn descendants_include_grandchildren_and_not_the_root() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let me = std::process::id() as i32;
        let found: Vec<i32> = descendants(me).iter().map(|p| p.pid).collect();
        assert!(found.contains(&(child.id() as i32)) && found.contains(&grandchild), "{found:?}");
        assert!(!found.contains(&me));
        signal_pid(grandchild, Signal::Kill);
        child.wait().unwrap();
    }
}

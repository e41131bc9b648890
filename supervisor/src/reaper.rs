//! PID-1 duties and signals, as `tini -g -s` does them.
//!
//! Upstream's containers run `bash run_carla.sh`: as PID 1, bash forwards no signal to CARLA and reaps no orphan,
//! so `kubectl delete` waits out the grace period and zombies pile up. Here, before any thread exists, `main`
//! blocks the signals we handle and becomes a child subreaper when it is not PID 1. One thread then takes every
//! signal with `sigwaitinfo`: SIGCHLD drives a single `waitpid(-1, WNOHANG)` loop that reaps every child (the
//! main child and any orphan re-parented to us) and reports each exit; SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1
//! and SIGUSR2 are reported for the run loop to forward to the child's process group. This is the one owner of
//! `waitpid` in the process: nothing else waits, so no exit status is ever stolen.

/// The signals forwarded to the child's process group.
pub const FORWARDED: [i32; 6] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The exit code a shell would report: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
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
            Exit::Signal(s) => write!(f, "signal {s} ({})", signal_name(*s)),
        }
    }
}

pub fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// What the signal thread reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// A child was reaped.
    Reaped { pid: i32, exit: Exit },
    /// A signal to forward arrived.
    Signal(i32),
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
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
        Some(Exit::Signal(libc::WTERMSIG(status)))
    } else {
        None
    }
}

/// Reaps every exited child without blocking.
pub fn reap_all(mut report: impl FnMut(i32, Exit)) {
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
            if sig == libc::SIGCHLD {
                reap_all(|pid, exit| {
                    report(SignalEvent::Reaped { pid, exit });
                });
            } else if !report(SignalEvent::Signal(sig)) {
                return;
            }
        }
    })
}

/// Sends `sig` to every process of group `pgid`; `false` when the group has no process left.
pub fn signal_group(pgid: i32, sig: i32) -> bool {
    // SAFETY: kill with a negative pid addresses the process group.
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// Whether any process of group `pgid` is left (zombies included, until reaped).
pub fn group_alive(pgid: i32) -> bool {
    signal_group(pgid, 0)
}

//! The attempt loop of both sides of a worker pair: plan the attempt from the markers, start the child, watch it,
//! stop it, write the outcome, and restart in place.
//!
//! Replaces the 5 s polling loops of upstream's `run_carla.sh` and `run_leaderboard.sh`. Every detector is an
//! event or a deadline from the configuration: the child's exit arrives from the signal thread the moment it is
//! reaped; markers arrive from inotify with a poll fallback; readiness is a TCP connect to CARLA's RPC port (not
//! `sleep 60`); a hang is output silence for `--idle-timeout`. Upstream exits on every crash and lets Kubernetes
//! restart the container, which spends the Job's `backoffLimit` (shared by all containers of the pod) and waits
//! out a growing back-off; here a crash restarts the child in place, within a budget of attempts counted from
//! the markers (so a container restart keeps the count). The supervisor writes every marker itself after reaping
//! the child, so nothing in the participant's code can skip one.

pub mod agent;
pub mod simulator;

use crate::child::{self, Child, LogFile};
use crate::config::{Common, RestartMode};
use crate::exit;
use crate::log::Level;
use crate::reaper::{self, Exit, Signal, SignalEvent};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use volume::markers::{Attempt, Marker, Role, StatusSet, WorkerId};
use volume::safe::Root;
use volume::status::{self, Reason, Record, State};

/// What the run loop waits on.
#[derive(Debug)]
pub enum Event {
    Signal(SignalEvent),
    /// Something changed in the status folder.
    Markers,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Crash (or hang, or the peer crashed): crash marker, then the next attempt.
    Crash(String),
    /// This side finished: done marker. The words say how ([`FINISHED`] when there is nothing more to say).
    Done(String),
    /// This side ends for good without finishing: failed marker.
    Failed(String),
    /// The peer ended for good: this side ends too.
    PeerFailed,
    /// A cancel marker: stop, exit 0.
    Cancelled,
    /// A forwarded SIGTERM/SIGINT/SIGHUP/SIGQUIT ended the child: exit with its status.
    Terminated(Exit),
}

/// What each role does differently.
pub trait RoleSpec {
    fn role(&self) -> Role;
    /// Before starting `attempt`: wait for what the role needs (the agent waits for the simulator's start marker).
    /// `Err` ends the attempt without a child.
    fn prepare(&mut self, eng: &mut Engine, attempt: Attempt) -> Result<(), Outcome>;
    /// The child of `attempt`.
    fn spec(&mut self, attempt: Attempt) -> child::Spec;
    /// Called often while the child runs; may end the attempt.
    fn tick(&mut self, eng: &mut Engine, child: &Child, attempt: Attempt) -> Option<Outcome>;
    /// The child exited by itself.
    fn on_exit(&mut self, eng: &mut Engine, exit: Exit) -> Outcome;
    /// The peer's markers while the child runs (crash, done, failed are handled here).
    fn on_peer(&mut self, eng: &mut Engine, set: &StatusSet, attempt: Attempt) -> Option<Outcome>;
    /// Whether this side ends (done) once its peer is done: the simulator serves the agent, and no one else.
    fn ends_with_peer_done(&self) -> bool {
        false
    }
    /// After writing this side's crash marker, before the next attempt (the simulator waits for the agent to see it).
    fn after_crash(&mut self, _eng: &mut Engine, _attempt: Attempt) {}
    /// After writing this side's done marker, before exiting (the agent waits for the simulator's end).
    fn after_done(&mut self, _eng: &mut Engine, _attempt: Attempt) {}
    /// This side's end when the peer ended for good: the agent cannot finish without a simulator (failed), the
    /// simulator has nobody to serve (done).
    fn end_for_failed_peer(&self, worker: WorkerId) -> Marker;
    /// The routes this side was given, for the status record: ROUTES_SUBSET and REPETITIONS (agent side).
    fn routes(&self) -> (Option<String>, Option<u32>) {
        (None, None)
    }
    /// The route the child is on, for the status record (agent side).
    fn current_route(&self, _eng: &Engine) -> Option<String> {
        None
    }
    /// The hang detector's limit, for the status record (agent side).
    fn idle_timeout(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The state both roles share.
pub struct Engine {
    pub role: Role,
    pub worker: WorkerId,
    pub common: Common,
    /// The child's log, beneath its folder opened once.
    pub log: Option<LogFile>,
    /// The status folder (`--status-dir`), opened once: markers are read and written beneath it.
    status: Root,
    rx: Receiver<Event>,
    /// The pid of the running attempt's child, and its exit once reaped. The signal thread reaps every child
    /// (orphans of the attempt too); only this one's exit is kept.
    child: Option<(i32, Option<Exit>)>,
    /// A terminating signal that arrived; the supervisor exits after the child does.
    terminating: Option<Signal>,
    _watcher: Option<RecommendedWatcher>,
    /// This side's own markers that it wrote, or found at its first look (an earlier container's): any other
    /// marker of this side that appears was written by someone else.
    own: RefCell<Option<HashSet<String>>>,
    /// Forged markers already logged.
    forged: RefCell<HashSet<String>>,
    /// The status folder was found flooded, and it was logged.
    flooded: std::cell::Cell<bool>,
    /// This side's status record (`<role>-<ID>.status.json` beside the markers), rewritten at each change.
    record: Record,
    /// The last exit of a child of this side, reaped by the monitor or by a stop: the status record's exit.
    last_exit: Option<Exit>,
}

impl Engine {
    /// The engine of one side; `Err` when the status folder cannot be created and opened, or the log's folder.
    pub fn new(
        role: Role,
        worker: WorkerId,
        common: Common,
        log_file: Option<PathBuf>,
        tx: Sender<Event>,
        rx: Receiver<Event>,
    ) -> std::io::Result<Engine> {
        crate::log::speaker(role, worker);
        // The folders given on the command line are the roots (mounts of the volume): opened once, trusted.
        std::fs::create_dir_all(&common.status_dir)?;
        let status = Root::open(&common.status_dir)?;
        let log = log_file.as_deref().map(LogFile::open).transpose()?;
        let watcher = {
            let tx = tx.clone();
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                // Our own reads of the folder (open, read, close) are not changes: only creations, removals
                // and writes wake the loop.
                if let Ok(ev) = &res
                    && matches!(ev.kind, notify::EventKind::Access(_))
                {
                    return;
                }
                let _ = tx.send(Event::Markers);
            })
            .and_then(|mut w| w.watch(&common.status_dir, RecursiveMode::NonRecursive).map(|()| w))
            .ok()
        };
        let record = Record::new(role, worker, common.max_attempts);
        let eng = Engine {
            role,
            worker,
            common,
            log,
            status,
            rx,
            child: None,
            terminating: None,
            _watcher: watcher,
            own: RefCell::new(None),
            forged: RefCell::new(HashSet::new()),
            flooded: std::cell::Cell::new(false),
            record,
            last_exit: None,
        };
        if eng._watcher.is_none() {
            eng.warn("cannot watch the status folder; polling it alone");
        }
        let c = &eng.common;
        eng.debug(&format!(
            "status folder {}, peer wait {:?}, grace {:?}, {} attempts, restart {:?}, marker poll {:?}",
            c.status_dir.display(),
            c.peer_wait,
            c.grace,
            c.max_attempts,
            c.restart,
            c.marker_poll
        ));
        Ok(eng)
    }

    /// An info entry, on stdout and in the child's log.
    pub fn note(&self, msg: &str) {
        child::note(self.log.as_ref(), Level::Info, msg);
    }

    /// A warning: something went wrong that the supervisor works around or reports.
    pub fn warn(&self, msg: &str) {
        child::note(self.log.as_ref(), Level::Warn, msg);
    }

    /// A detail for `--log-level debug`: the settings, each child's process.
    pub fn debug(&self, msg: &str) {
        child::note(self.log.as_ref(), Level::Debug, msg);
    }

    pub fn markers(&self) -> StatusSet {
        let mut set = StatusSet::read(&self.status, Path::new("")).unwrap_or_else(|e| {
            self.warn(&format!("cannot read {}: {e}", self.common.status_dir.display()));
            StatusSet::default()
        });
        if set.truncated() {
            // Flooded (the participant's code can write the folder): this pair's markers, found by name.
            set.probe_ends(&self.status, Path::new(""), [self.worker]);
            let limit = volume::markers::attempt_limit(self.common.max_attempts);
            set.probe_attempts(&self.status, Path::new(""), self.worker, limit.saturating_add(1));
            if !self.flooded.replace(true) {
                self.warn(&format!(
                    "{} holds more than {} entries: only this pair's markers are read, by name",
                    self.common.status_dir.display(),
                    volume::markers::MAX_STATUS_ENTRIES
                ));
            }
        }
        self.check_forged(&set);
        set
    }

    /// Markers are evidence, not commands: a marker of this side that this supervisor did not write (and that
    /// was not there when it started) was forged, by the participant's code, which can write the status folder
    /// unless `--run-as` and `logcopy restore --private-status` keep it out. It is logged once.
    fn check_forged(&self, set: &StatusSet) {
        let mine = |m: &&Marker| m.role() == Some(self.role) && m.worker() == Some(self.worker);
        let mut own = self.own.borrow_mut();
        let Some(own) = own.as_mut() else {
            *own = Some(set.iter().filter(mine).map(Marker::file_name).collect());
            return;
        };
        for m in set.iter().filter(mine) {
            let name = m.file_name();
            if !own.contains(&name) && self.forged.borrow_mut().insert(name.clone()) {
                self.note(&format!(
                    "{name} appeared in the status folder, but this supervisor did not write it: a forged marker \
                     (the participant's code can write the status folder; --run-as with logcopy restore \
                     --private-status keeps it out)"
                ));
            }
        }
    }

    /// The first attempt number this pair cannot reach ([`volume::markers::attempt_limit`]): markers at or above
    /// it are forged and ignored.
    pub fn attempt_limit(&self) -> u32 {
        volume::markers::attempt_limit(self.common.max_attempts)
    }

    pub fn write(&self, marker: Marker) {
        if let Some(own) = self.own.borrow_mut().as_mut() {
            own.insert(marker.file_name());
        }
        match marker.create_in(&self.status, Path::new("")) {
            Ok(()) => self.note(&format!("wrote {marker}")),
            Err(e) => self.warn(&format!("cannot write {marker}: {e}")),
        }
    }

    /// Moves the status record to `state` in `attempt` and rewrites it (atomically, beside the markers).
    pub fn set_state(&mut self, state: State, attempt: Attempt) {
        self.record.change(state, attempt.0, volume::time::unix_now());
        self.write_record();
    }

    /// Records the end of an attempt (or of the side): `reason`, whose fault (`side`), the supervisor's words, and
    /// the child's exit when one was reaped; written with the next [`Engine::set_state`].
    pub fn set_end(&mut self, side: Role, reason: Reason, detail: &str, attempt: Attempt) {
        let exit = self.last_exit.take().map(|e| match e {
            Exit::Code(c) => status::ExitStatus::Code(c),
            Exit::Signal(s) => status::ExitStatus::Signal(s.raw()),
        });
        let at = volume::time::unix_now();
        let attempt = attempt.0;
        self.record.last_end = Some(status::End { side, reason, attempt, exit, detail: detail.to_owned(), at });
    }

    /// Updates the route the child is on; rewrites the record when it changed.
    fn set_current_route(&mut self, route: Option<String>) {
        if route.is_some() && route != self.record.current_route {
            self.record.current_route = route;
            self.write_record();
        }
    }

    fn write_record(&self) {
        let name = status::file_name(self.role, self.worker);
        if let Err(e) = self.record.write(&self.status, Path::new(&name)) {
            self.warn(&format!("cannot write the status record: {e}"));
        }
    }

    /// When `marker` was written (its mtime), if it is present.
    pub fn marker_time(&self, marker: Marker) -> Option<std::time::SystemTime> {
        self.status.stat(Path::new(&marker.file_name())).ok().flatten().and_then(|m| m.modified().ok())
    }

    pub fn peer(&self) -> Role {
        self.role.peer()
    }

    /// Takes one event or times out; reaped exits and signals are recorded here.
    fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        match self.rx.recv_timeout(timeout) {
            Ok(Event::Signal(SignalEvent::Reaped { pid, exit })) => {
                if let Some((child, status)) = &mut self.child
                    && *child == pid
                {
                    *status = Some(exit);
                }
                Some(Event::Signal(SignalEvent::Reaped { pid, exit }))
            }
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                None
            }
        }
    }

    /// Waits until `cond` holds on the markers, up to `limit`. A terminating signal interrupts the wait.
    pub fn wait_markers(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&StatusSet) -> bool,
    ) -> Result<StatusSet, WaitEnd> {
        let deadline = Instant::now() + limit;
        loop {
            let set = self.markers();
            if cond(&set) {
                return Ok(set);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitEnd::Timeout);
            }
            match self.next_event(self.common.marker_poll.min(deadline - now)) {
                Some(Event::Signal(SignalEvent::Signal(s))) if s.is_terminating() => return Err(WaitEnd::Signal(s)),
                _ => {}
            }
        }
    }

    /// The exit of the running attempt's child, once reaped.
    fn child_exit(&self) -> Option<Exit> {
        self.child.and_then(|(_, exit)| exit)
    }

    /// Stops every process of the attempt: the child's process group first (SIGTERM, the grace period, SIGKILL),
    /// then whatever is left of the attempt outside it ([`Engine::kill_descendants`]). Returns the child's exit.
    pub fn stop(&mut self, child: &Child, grace: Duration) -> Option<Exit> {
        let pgid = child.pid;
        if reaper::group_alive(pgid) {
            reaper::signal_group(pgid, Signal::Term);
            if !self.wait_group_gone(child, grace) {
                self.warn(&format!("the child's process group outlived the {grace:?} grace period: SIGKILL"));
                reaper::signal_group(pgid, Signal::Kill);
                if !self.wait_group_gone(child, Duration::from_secs(10)) {
                    self.warn("processes of the child's group are still alive after SIGKILL (stuck in the kernel?)");
                }
            }
        }
        self.kill_descendants();
        self.child.take().and_then(|(_, exit)| exit)
    }

    /// SIGKILLs every descendant of the supervisor, whatever its session or process group (`setsid`, a double
    /// fork, `setpgid`: orphans are re-parented to the supervisor, a child subreaper or PID 1), and waits until
    /// each is reaped and the running child's exit has arrived. The walk repeats until nothing is left (a process
    /// forked between a walk and its kill is found by the next one), within [`SWEEP_LIMIT`]; what is still there
    /// then is logged.
    pub fn kill_descendants(&mut self) {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let deadline = Instant::now() + SWEEP_LIMIT;
        let mut killed = BTreeMap::new();
        loop {
            let left = reaper::descendants(me);
            if left.is_empty() && (self.child.is_none() || self.child_exit().is_some()) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                self.note(&format!(
                    "processes of the attempt are still there {SWEEP_LIMIT:?} after SIGKILL (stuck in the kernel?): \
                     {}",
                    list(left.iter().map(|p| (p.pid, format!("{} {}", p.comm, p.state))))
                ));
                break;
            }
            for p in left.iter().filter(|p| p.state != 'Z') {
                if reaper::signal_pid(p.pid, Signal::Kill) {
                    killed.insert(p.pid, p.comm.clone());
                }
            }
            if let Some(Event::Signal(SignalEvent::Signal(s))) =
                self.next_event(Duration::from_millis(20).min(deadline - now))
                && s.is_terminating()
            {
                self.terminating.get_or_insert(s);
            }
        }
        if !killed.is_empty() {
            self.note(&format!(
                "SIGKILLed {} processes of the attempt outside the child's process group (another session or group, \
                 or orphans): {}",
                killed.len(),
                list(killed.into_iter())
            ));
        }
    }

    fn wait_group_gone(&mut self, child: &Child, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.child_exit().is_some() && !reaper::group_alive(child.pid) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if let Some(Event::Signal(SignalEvent::Signal(s))) =
                self.next_event(Duration::from_millis(20).min(deadline - now))
            {
                if s.is_terminating() {
                    self.terminating.get_or_insert(s);
                }
                reaper::signal_group(child.pid, s);
            }
        }
    }

    /// Watches the running child until its attempt ends.
    fn monitor(&mut self, spec: &mut dyn RoleSpec, child: &Child, attempt: Attempt) -> Outcome {
        let mut next_markers = Instant::now();
        let mut next_route = Instant::now();
        loop {
            // Peeked, not taken: `stop` still needs to know the leader is reaped when it waits for the group.
            if let Some(exit) = self.child_exit() {
                self.last_exit = Some(exit);
                return match self.terminating {
                    Some(_) => Outcome::Terminated(exit),
                    None => spec.on_exit(self, exit),
                };
            }
            if let Some(o) = spec.tick(self, child, attempt) {
                return o;
            }
            let now = Instant::now();
            if now >= next_route {
                let route = spec.current_route(self);
                self.set_current_route(route);
                next_route = now + ROUTE_REFRESH;
            }
            if now >= next_markers {
                let set = self.markers();
                if set.cancelled(self.worker) {
                    return Outcome::Cancelled;
                }
                if let Some(o) = spec.on_peer(self, &set, attempt) {
                    return o;
                }
                next_markers = now + self.common.marker_poll;
            }
            match self.next_event(Duration::from_millis(50)) {
                Some(Event::Markers) => next_markers = Instant::now(),
                Some(Event::Signal(SignalEvent::Signal(s))) => {
                    reaper::signal_group(child.pid, s);
                    if s.is_terminating() {
                        self.note(&format!("{s}: forwarded to the child's process group"));
                        self.terminating.get_or_insert(s);
                        // The child's own handling decides; after the grace period the group is killed.
                        if !self.wait_group_gone(child, self.common.grace) {
                            reaper::signal_group(child.pid, Signal::Kill);
                            self.wait_group_gone(child, Duration::from_secs(10));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    pub fn crash_wait_for_peer(&mut self, attempt: Attempt) {
        // The simulator waits until its agent has stopped too (its crash marker for this attempt, or an end), so a
        // new CARLA never serves an evaluator of the old attempt.
        let (peer, worker) = (self.peer(), self.worker);
        let r = self.wait_markers(self.common.peer_wait, |s| {
            s.crashes(peer, worker).contains(&attempt)
                || s.is_done(peer, worker)
                || s.is_failed(peer, worker)
                || s.cancelled(worker)
        });
        match r {
            Ok(_) => {}
            // A terminating signal during the wait ends the supervisor (checked at the top of the attempt loop).
            Err(WaitEnd::Signal(s)) => {
                self.terminating.get_or_insert(s);
            }
            Err(WaitEnd::Timeout) => self.note(&format!(
                "no marker from the {peer} after this crash within {:?}; going on",
                self.common.peer_wait
            )),
        }
    }
}

/// How long [`Engine::kill_descendants`] keeps killing and waiting for the reaps.
pub const SWEEP_LIMIT: Duration = Duration::from_secs(10);

/// `pid name, pid name, ...`: the first ten, then how many more (a fork bomb must not make a huge line).
fn list(procs: impl Iterator<Item = (i32, String)>) -> String {
    let all: Vec<String> = procs.map(|(pid, name)| format!("{pid} {name}")).collect();
    let mut s = all.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
    if all.len() > 10 {
        s += &format!(" and {} more", all.len() - 10);
    }
    s
}

/// How often the status record's current route is refreshed while the child runs.
const ROUTE_REFRESH: Duration = Duration::from_secs(2);

/// The status record's classified reason of an attempt's end, and whose fault it was. The roles' outcomes carry
/// the supervisor's words; their first words are the classification, pinned by the test beside this function.
pub fn classify(role: Role, outcome: &Outcome) -> (Role, Reason) {
    let peer = role.peer();
    match outcome {
        Outcome::Done(why) if why.contains("could not be set up") => (role, Reason::AgentSetupFailed),
        Outcome::Done(_) => (role, Reason::Finished),
        Outcome::Cancelled => (role, Reason::Cancelled),
        Outcome::PeerFailed => (peer, Reason::PeerFailed),
        Outcome::Terminated(_) => (role, Reason::Terminated),
        Outcome::Failed(why) if why.contains("rejected the agent's sensors") => (role, Reason::SensorsRejected),
        Outcome::Failed(why) if why.contains("could not be set up") => (role, Reason::AgentSetupFailed),
        Outcome::Failed(_) => (role, Reason::Unknown),
        Outcome::Crash(why) => {
            if why.contains("could not be set up") {
                (role, Reason::AgentSetupFailed)
            } else if why.contains("(hang)") {
                (role, Reason::Hang)
            } else if why.starts_with("cannot start ") {
                (role, Reason::SpawnFailed)
            } else if why.contains("did not open port") || why.contains("did not start attempt") {
                (Role::Simulator, Reason::SimulatorNotReady)
            } else if why.starts_with("the simulator crashed") || why.starts_with("the agent crashed") {
                (peer, crashed(peer))
            } else {
                (role, crashed(role))
            }
        }
    }
}

/// The words of a plain [`Outcome::Done`].
pub const FINISHED: &str = "finished";

/// The reason of a crash of `role`'s child.
pub fn crashed(role: Role) -> Reason {
    match role {
        Role::Simulator => Reason::SimulatorCrashed,
        Role::Agent => Reason::EvaluatorCrashed,
    }
}

/// The grace period of a child stopped because the submission was cancelled (at most; `--grace` if shorter).
pub const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// Why a wait ended without its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    Timeout,
    Signal(Signal),
}

/// Runs one side of the pair until it ends; returns the process exit code. No descendant outlives it.
pub fn run(mut eng: Engine, spec: &mut dyn RoleSpec) -> i32 {
    let code = run_attempts(&mut eng, spec);
    eng.kill_descendants();
    code
}

fn run_attempts(eng: &mut Engine, spec: &mut dyn RoleSpec) -> i32 {
    let (role, worker) = (eng.role, eng.worker);
    let peer = role.peer();
    loop {
        if let Some(s) = eng.terminating {
            eng.note(&format!("ending after {s}"));
            return Exit::Signal(s).shell_code();
        }
        let set = eng.markers();
        if set.cancelled(worker) {
            eng.note("the submission is cancelled");
            let attempt = set.plan_attempt(role, worker).attempt;
            eng.set_end(role, Reason::Cancelled, "the submission is cancelled", attempt);
            eng.set_state(State::Cancelled, attempt);
            return 0;
        }
        if set.is_done(role, worker) {
            eng.note("this side has already ended (done marker present)");
            return 0;
        }
        if set.is_failed(role, worker) {
            eng.note("this side has already ended (failed marker present)");
            return exit::failed(eng.common.topology, None);
        }
        if set.is_failed(peer, worker) {
            let attempt = set.plan_attempt(role, worker).attempt;
            eng.set_end(peer, Reason::PeerFailed, &format!("the {peer} ended for good"), attempt);
            let state = match spec.end_for_failed_peer(worker) {
                Marker::Done { .. } => State::Done,
                _ => State::Failed,
            };
            eng.set_state(state, attempt);
            return end_for_peer(eng, spec);
        }
        if spec.ends_with_peer_done() && set.is_done(peer, worker) {
            eng.write(Marker::Done { role, worker });
            let attempt = set.plan_attempt(role, worker).attempt;
            eng.set_end(role, Reason::Finished, &format!("the {peer} is done"), attempt);
            eng.set_state(State::Done, attempt);
            return 0;
        }
        let limit = eng.attempt_limit();
        for m in set.beyond_limit(worker, limit) {
            let name = m.file_name();
            if eng.forged.borrow_mut().insert(name.clone()) {
                eng.note(&format!(
                    "{name}: an attempt number no pair with --max-attempts {} reaches (at most {}): a forged marker, \
                     ignored",
                    eng.common.max_attempts,
                    limit - 1
                ));
            }
        }
        let plan = set.plan_attempt_within(role, worker, limit);
        if let Some(n) = plan.untraced_crash {
            eng.warn(&format!("attempt {n} ended without a trace (killed, OOM, container restart)"));
            eng.write(Marker::Crash { role, worker, attempt: n });
        }
        if plan.spent >= eng.common.max_attempts {
            let why = format!("attempt budget spent ({} of {}): ending for good", plan.spent, eng.common.max_attempts);
            eng.note(&why);
            eng.write(Marker::Failed { role, worker });
            // The last attempt's end, when this process saw it: whose fault the spent budget was.
            let last = eng.record.last_end.as_ref().map(|e| (e.side, e.reason));
            eng.set_end(role, Reason::AttemptBudgetSpent, &why, plan.attempt);
            eng.set_state(State::Failed, plan.attempt);
            return exit::failed(eng.common.topology, last);
        }
        let attempt = plan.attempt;
        (eng.record.routes_subset, eng.record.repetitions) = spec.routes();
        eng.record.idle_timeout_ms = spec.idle_timeout().map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
        eng.set_state(State::Starting, attempt);
        let outcome = match spec.prepare(eng, attempt) {
            Err(o) => o,
            Ok(()) => {
                let s = spec.spec(attempt);
                let log = eng.log.as_ref().and_then(|l| l.append().ok());
                match child::spawn(&s, log, &format!("{role}-{worker} attempt {attempt}")) {
                    Err(e) => Outcome::Crash(format!("cannot start {}: {e}", s.display())),
                    Ok(child) => {
                        eng.debug(&format!("attempt {attempt}: the child is process {}", child.pid));
                        eng.child = Some((child.pid, None));
                        eng.last_exit = None;
                        eng.set_state(State::Running, attempt);
                        let o = eng.monitor(spec, &child, attempt);
                        // A cancelled submission's work is discarded: its children get a short grace, so that the
                        // whole pod is down within about a second of logcopy's cancel marker.
                        let grace = match o {
                            Outcome::Cancelled => eng.common.grace.min(CANCEL_GRACE),
                            _ => eng.common.grace,
                        };
                        if let Some(exit) = eng.stop(&child, grace) {
                            eng.last_exit = Some(exit);
                        }
                        o
                    }
                }
            }
        };
        let route = spec.current_route(eng);
        eng.set_current_route(route);
        let (side, reason) = match classify(role, &outcome) {
            // The evaluator may exit on its own, having lost its CARLA, before this side reads the simulator's
            // crash marker: when that marker of this attempt is already there, the peer crashed first.
            (side, r)
                if side == role && r == crashed(role) && eng.markers().crashes(peer, worker).contains(&attempt) =>
            {
                (peer, crashed(peer))
            }
            other => other,
        };
        let detail = match &outcome {
            Outcome::Crash(why) | Outcome::Failed(why) | Outcome::Done(why) => why.clone(),
            Outcome::PeerFailed => format!("the {peer} ended for good"),
            Outcome::Cancelled => "the submission is cancelled".to_owned(),
            Outcome::Terminated(exit) => format!("the child ended after a forwarded signal ({exit})"),
        };
        eng.set_end(side, reason, &detail, attempt);
        let state = match &outcome {
            Outcome::Crash(_) => State::Restarting,
            Outcome::Done(_) => State::Done,
            Outcome::Failed(_) => State::Failed,
            Outcome::PeerFailed => match spec.end_for_failed_peer(worker) {
                Marker::Done { .. } => State::Done,
                _ => State::Failed,
            },
            Outcome::Cancelled => State::Cancelled,
            Outcome::Terminated(_) => State::Stopped,
        };
        eng.set_state(state, attempt);
        match outcome {
            Outcome::Crash(reason) => {
                eng.warn(&format!("attempt {attempt} crashed: {reason}"));
                eng.write(Marker::Crash { role, worker, attempt });
                if eng.common.restart == RestartMode::Container {
                    return 1;
                }
                spec.after_crash(eng, attempt);
            }
            Outcome::Done(_) => {
                eng.write(Marker::Done { role, worker });
                spec.after_done(eng, attempt);
                return 0;
            }
            Outcome::Failed(why) => {
                eng.note(&format!("ending for good: {why}"));
                eng.write(Marker::Failed { role, worker });
                return exit::failed(eng.common.topology, Some((side, reason)));
            }
            Outcome::PeerFailed => return end_for_peer(eng, spec),
            Outcome::Cancelled => {
                eng.note("the submission is cancelled: stopped");
                return 0;
            }
            Outcome::Terminated(exit) => {
                eng.note(&format!("the child ended after a forwarded signal ({exit})"));
                let forwarded = eng.terminating.map(Signal::raw);
                return exit::terminated(eng.common.topology, exit.shell_code(), forwarded);
            }
        }
    }
}

/// The peer ended for good: this side ends as its role says ([`RoleSpec::end_for_failed_peer`]).
fn end_for_peer(eng: &Engine, spec: &dyn RoleSpec) -> i32 {
    eng.note(&format!("the {} ended for good", eng.role.peer()));
    eng.write(spec.end_for_failed_peer(eng.worker));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roles_words_are_classified() {
        let (a, s) = (Role::Agent, Role::Simulator);
        let crash = |w: &str| Outcome::Crash(w.to_owned());
        let cases = [
            (s, crash("CARLA ended (exit code 1)"), s, Reason::SimulatorCrashed),
            (s, crash("CARLA did not open port 2000 within 5s"), s, Reason::SimulatorNotReady),
            (s, crash("the agent crashed in attempt 0"), a, Reason::EvaluatorCrashed),
            (a, crash("the simulator crashed in attempt 1"), s, Reason::SimulatorCrashed),
            (a, crash("the simulator crashed before attempt 1 started"), s, Reason::SimulatorCrashed),
            (a, crash("the simulator did not start attempt 0 within 15s"), s, Reason::SimulatorNotReady),
            (a, crash("the evaluator printed nothing for 2s (hang) in attempt 0"), a, Reason::Hang),
            (a, crash("the evaluator ended (exit code 3)"), a, Reason::EvaluatorCrashed),
            (a, crash("the evaluator ended with an empty global_record"), a, Reason::EvaluatorCrashed),
            (a, crash("cannot start python3: No such file"), a, Reason::SpawnFailed),
            (
                a,
                Outcome::Failed("the evaluator rejected the agent's sensors (entry_status Rejected)".into()),
                a,
                Reason::SensorsRejected,
            ),
            (a, Outcome::PeerFailed, s, Reason::PeerFailed),
            (s, Outcome::Cancelled, s, Reason::Cancelled),
            (a, Outcome::Done(FINISHED.into()), a, Reason::Finished),
            (
                a,
                Outcome::Done(
                    "the evaluator finished, but the agent could not be set up for any of the 5 routes".into(),
                ),
                a,
                Reason::AgentSetupFailed,
            ),
            (
                a,
                crash(
                    "the agent could not be set up for any of the 2 routes recorded; the evaluator ended (exit code 1)",
                ),
                a,
                Reason::AgentSetupFailed,
            ),
            (a, Outcome::Terminated(Exit::Signal(Signal::Term)), a, Reason::Terminated),
        ];
        for (role, outcome, side, reason) in cases {
            assert_eq!(classify(role, &outcome), (side, reason), "{outcome:?}");
        }
    }
}

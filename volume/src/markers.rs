//! The marker protocol: the empty files in `containers-status/` (mounted at `/tmp/status` in the
//! workers) through which the containers of a submission Job coordinate.
//!
//! This module is the one place where marker names are spelled: the supervisor (simulator and
//! agent containers) and `logcopy` both format and parse them here, so the protocol cannot drift
//! between the two binaries. Upstream, the names were built by `touch` and tested by `ls` and
//! `find` in three shell scripts; we keep them byte for byte, so a Job mixing our containers with
//! upstream ones still agrees on what each file means.
//!
//! Markers are evidence, not commands: a file says that something happened (an attempt started,
//! crashed, finished, or EvalAI reported a cancellation). Each reader decides what to do about it
//! from the whole set it sees ([`StatusSet`]), so a marker read twice, late, or together with
//! others must still lead to the same decision.
//!
//! Parsing is strict: a name is a marker only if it is exactly the canonical spelling of one,
//! so `parse` and `file_name` are inverse of each other. Anything else in the folder (a temporary
//! file, generation 2's `uploader-1.done`, a hand-written `agent-01.done`) is ignored, never
//! guessed at.

use crate::safe::Root;
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Which side of a worker pair a container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The CARLA server (`simulator` container).
    Simulator,
    /// The participant's stack driven by the leaderboard evaluator (`agent` container).
    Agent,
}

impl Role {
    /// Both roles, simulator first.
    pub const ALL: [Role; 2] = [Role::Simulator, Role::Agent];

    /// The name used in marker files and container names: `simulator` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Simulator => "simulator",
            Role::Agent => "agent",
        }
    }

    /// The other side of the pair.
    pub fn peer(self) -> Role {
        match self {
            Role::Simulator => Role::Agent,
            Role::Agent => Role::Simulator,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not the name of a role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a role name (expected \"simulator\" or \"agent\")")]
pub struct UnknownRole {
    /// The string that was given.
    pub name: String,
}

impl FromStr for Role {
    type Err = UnknownRole;

    /// Accepts exactly `simulator` or `agent` (case-sensitive, as in marker names).
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "simulator" => Ok(Role::Simulator),
            "agent" => Ok(Role::Agent),
            _ => Err(UnknownRole { name: s.to_owned() }),
        }
    }
}

/// The number of a worker pair within the Job (`ID` in marker names; 1-based in practice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u32);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The index of one run of a container, starting at 0.
///
/// Upstream, attempt `N` is the number of crash markers of that container already present, so
/// each restart by Kubernetes uses a fresh index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attempt(pub u32);

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// One marker file in `containers-status/`, as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Marker {
    /// `<role>-<worker>.start<attempt>`: the container began this attempt (the agent waits for
    /// its simulator's).
    Start { role: Role, worker: WorkerId, attempt: Attempt },
    /// `<role>-<worker>.crash<attempt>`: this attempt failed; the container exits 1 so that
    /// Kubernetes restarts it.
    Crash { role: Role, worker: WorkerId, attempt: Attempt },
    /// `<role>-<worker>.done`: this side finished normally.
    Done { role: Role, worker: WorkerId },
    /// `<role>-<worker>.failed`: this side ended for good without finishing (no upstream
    /// equivalent; upstream left readers to count crashes against `backoffLimit`).
    Failed { role: Role, worker: WorkerId },
    /// `simulation.cancel`: EvalAI reported the submission cancelled; every worker stops.
    /// Written by `logcopy`.
    Cancel,
    /// `simulation-<worker>.cancel`: cancellation of one worker pair (generation 2).
    WorkerCancel { worker: WorkerId },
    /// `logcopy.done`: `logcopy` finished its final merge and upload.
    LogcopyDone,
}

/// A string that is not exactly the name of a marker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a marker name")]
pub struct UnknownMarker {
    /// The string that was given.
    pub name: String,
}

impl Marker {
    /// The canonical file name of this marker, e.g. `simulator-3.crash0`.
    pub fn file_name(&self) -> String {
        self.to_string()
    }

    /// The marker whose canonical file name is exactly `name`, or `None`.
    ///
    /// Never panics. Numbers are ASCII decimal digits without sign or leading zeros that fit
    /// a `u32`; roles and keywords are lowercase; nothing may precede or follow the name.
    pub fn parse(name: &str) -> Option<Marker> {
        match name {
            "simulation.cancel" => return Some(Marker::Cancel),
            "logcopy.done" => return Some(Marker::LogcopyDone),
            _ => {}
        }
        // The first '.' ends the "<prefix>-<id>" head; a second one (e.g. `.done.tmp`) is left
        // in `kind` and makes it match nothing.
        let (head, kind) = name.split_once('.')?;
        let (prefix, id) = head.split_once('-')?;
        let worker = WorkerId(parse_decimal(id)?);
        if prefix == "simulation" {
            return (kind == "cancel").then_some(Marker::WorkerCancel { worker });
        }
        let role = prefix.parse::<Role>().ok()?;
        match kind {
            "done" => Some(Marker::Done { role, worker }),
            "failed" => Some(Marker::Failed { role, worker }),
            _ => {
                if let Some(n) = kind.strip_prefix("start") {
                    let attempt = Attempt(parse_decimal(n)?);
                    Some(Marker::Start { role, worker, attempt })
                } else if let Some(n) = kind.strip_prefix("crash") {
                    let attempt = Attempt(parse_decimal(n)?);
                    Some(Marker::Crash { role, worker, attempt })
                } else {
                    None
                }
            }
        }
    }

    /// The worker pair this marker is about, or `None` for Job-wide markers.
    pub fn worker(&self) -> Option<WorkerId> {
        match *self {
            Marker::Start { worker, .. }
            | Marker::Crash { worker, .. }
            | Marker::Done { worker, .. }
            | Marker::Failed { worker, .. }
            | Marker::WorkerCancel { worker } => Some(worker),
            Marker::Cancel | Marker::LogcopyDone => None,
        }
    }

    /// The side of the pair this marker is about, or `None` for cancellations and `logcopy.done`.
    pub fn role(&self) -> Option<Role> {
        match *self {
            Marker::Start { role, .. }
            | Marker::Crash { role, .. }
            | Marker::Done { role, .. }
            | Marker::Failed { role, .. } => Some(role),
            Marker::Cancel | Marker::WorkerCancel { .. } | Marker::LogcopyDone => None,
        }
    }
}

impl fmt::Display for Marker {
    /// Writes the canonical file name (the same string as [`Marker::file_name`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Marker::Start { role, worker, attempt } => write!(f, "{role}-{worker}.start{attempt}"),
            Marker::Crash { role, worker, attempt } => write!(f, "{role}-{worker}.crash{attempt}"),
            Marker::Done { role, worker } => write!(f, "{role}-{worker}.done"),
            Marker::Failed { role, worker } => write!(f, "{role}-{worker}.failed"),
            Marker::Cancel => f.write_str("simulation.cancel"),
            Marker::WorkerCancel { worker } => write!(f, "simulation-{worker}.cancel"),
            Marker::LogcopyDone => f.write_str("logcopy.done"),
        }
    }
}

impl FromStr for Marker {
    type Err = UnknownMarker;

    /// Same as [`Marker::parse`], with an error naming the rejected string.
    fn from_str(s: &str) -> Result<Marker, UnknownMarker> {
        Marker::parse(s).ok_or_else(|| UnknownMarker { name: s.to_owned() })
    }
}

/// Parses the canonical decimal spelling of a `u32`: ASCII digits only, no sign, no leading
/// zero except `0` itself. Stricter than `u32::from_str`, which accepts `+7` and `007`, so that
/// every accepted name formats back to itself.
fn parse_decimal(s: &str) -> Option<u32> {
    let bytes = s.as_bytes();
    match bytes {
        [] => None,
        [b'0'] => Some(0),
        [b'0', ..] => None,
        _ => bytes.iter().try_fold(0u32, |acc, &b| {
            if b.is_ascii_digit() { acc.checked_mul(10)?.checked_add(u32::from(b - b'0')) } else { None }
        }),
    }
}

/// The markers present in one listing of the status folder, as typed values.
///
/// Pure: it is built from file names, so reading the folder (and deciding how often) stays
/// with the caller, and tests need no files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSet {
    markers: BTreeSet<Marker>,
    /// The folder had more than [`MAX_STATUS_ENTRIES`] entries: the rest were not read.
    truncated: bool,
}

/// The most entries of the status folder a reading looks at. A submission writes a few markers per worker and
/// attempt (64 workers with 8 attempts: about 2,000); more is the participant's code flooding the folder, which it
/// can write, and must cost neither memory nor a cycle's time. Past it, the end markers are still found by name:
/// [`StatusSet::probe_ends`].
pub const MAX_STATUS_ENTRIES: usize = 50_000;

impl StatusSet {
    /// The markers among `names`; names that are not exactly a marker name are ignored.
    pub fn from_names<I, S>(names: I) -> StatusSet
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        StatusSet { markers: names.into_iter().filter_map(|n| Marker::parse(n.as_ref())).collect(), truncated: false }
    }

    /// Whether the folder this set was read from had more than [`MAX_STATUS_ENTRIES`] entries (the rest unread).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Whether `m` is present.
    pub fn contains(&self, m: &Marker) -> bool {
        self.markers.contains(m)
    }

    /// The attempts of `role` on `worker` that have a crash marker, ascending.
    ///
    /// Their count is the next attempt number upstream would use.
    pub fn crashes(&self, role: Role, worker: WorkerId) -> Vec<Attempt> {
        self.attempts(|m| match *m {
            Marker::Crash { role: r, worker: w, attempt } if r == role && w == worker => Some(attempt),
            _ => None,
        })
    }

    /// The attempts of `role` on `worker` that have a start marker, ascending.
    pub fn starts(&self, role: Role, worker: WorkerId) -> Vec<Attempt> {
        self.attempts(|m| match *m {
            Marker::Start { role: r, worker: w, attempt } if r == role && w == worker => Some(attempt),
            _ => None,
        })
    }

    /// Whether `<role>-<worker>.done` is present.
    pub fn is_done(&self, role: Role, worker: WorkerId) -> bool {
        self.contains(&Marker::Done { role, worker })
    }

    /// Whether `<role>-<worker>.failed` is present.
    pub fn is_failed(&self, role: Role, worker: WorkerId) -> bool {
        self.contains(&Marker::Failed { role, worker })
    }

    /// Whether `worker` must stop: `simulation.cancel` or `simulation-<worker>.cancel` is present.
    pub fn cancelled(&self, worker: WorkerId) -> bool {
        self.contains(&Marker::Cancel) || self.contains(&Marker::WorkerCancel { worker })
    }

    /// Whether any cancellation marker, Job-wide or for one worker, is present.
    pub fn any_cancel(&self) -> bool {
        self.markers.iter().any(|m| matches!(m, Marker::Cancel | Marker::WorkerCancel { .. }))
    }

    /// The file name of a cancellation marker present (Job-wide first), if any.
    pub fn cancel_marker_name(&self) -> Option<String> {
        self.markers.iter().find(|m| matches!(m, Marker::Cancel | Marker::WorkerCancel { .. })).map(Marker::file_name)
    }

    /// Whether `logcopy.done` is present.
    pub fn logcopy_done(&self) -> bool {
        self.contains(&Marker::LogcopyDone)
    }

    /// The markers present, in a stable order (by variant, then role, worker, attempt).
    pub fn iter(&self) -> impl Iterator<Item = &Marker> {
        self.markers.iter()
    }

    /// Collects attempts in ascending order; the set is ordered by variant, role and worker
    /// before attempt, so the matches come out sorted.
    fn attempts(&self, pick: impl Fn(&Marker) -> Option<Attempt>) -> Vec<Attempt> {
        self.markers.iter().filter_map(pick).collect()
    }
}

impl StatusSet {
    /// The markers in the status folder `dir` beneath `root` (the root itself when `dir` is empty), read by name
    /// only (no file is opened); a missing folder has none. A folder reached through a link is an error.
    ///
    /// At most [`MAX_STATUS_ENTRIES`] entries are read, one at a time (only the markers among them are kept): a
    /// folder flooded with a million files costs neither memory nor more than a bounded scan. Past the cap the set
    /// is [`Self::truncated`]; the reader then finds the end markers it needs by name ([`Self::probe_ends`]).
    pub fn read(root: &Root, dir: &Path) -> std::io::Result<StatusSet> {
        let mut set = StatusSet::default();
        let more = root.scan_names(dir, MAX_STATUS_ENTRIES, &mut |name| {
            if let Some(m) = name.to_str().ok().and_then(Marker::parse) {
                set.markers.insert(m);
            }
        })?;
        set.truncated = more.unwrap_or(false);
        Ok(set)
    }

    /// Adds the end markers of `workers` (done and failed of both sides, their cancels) and the Job-wide ones
    /// (`simulation.cancel`, `logcopy.done`) that exist in `dir`, each found by its name (a stat): what decides
    /// the run's end is found however many other files the folder holds.
    pub fn probe_ends(&mut self, root: &Root, dir: &Path, workers: impl IntoIterator<Item = WorkerId>) {
        let mut names = vec![Marker::Cancel, Marker::LogcopyDone];
        for worker in workers {
            names.push(Marker::WorkerCancel { worker });
            for role in [Role::Agent, Role::Simulator] {
                names.push(Marker::Done { role, worker });
                names.push(Marker::Failed { role, worker });
            }
        }
        self.probe(root, dir, names);
    }

    /// Adds the start and crash markers of both sides of `worker` for attempts below `limit` that exist in `dir`,
    /// each found by its name: a supervisor's attempt rule over a flooded folder.
    pub fn probe_attempts(&mut self, root: &Root, dir: &Path, worker: WorkerId, limit: u32) {
        let mut names = Vec::new();
        for role in [Role::Agent, Role::Simulator] {
            for a in 0..limit {
                names.push(Marker::Start { role, worker, attempt: Attempt(a) });
                names.push(Marker::Crash { role, worker, attempt: Attempt(a) });
            }
        }
        self.probe(root, dir, names);
    }

    fn probe(&mut self, root: &Root, dir: &Path, markers: Vec<Marker>) {
        for m in markers {
            if root.stat(&dir.join(m.file_name())).ok().flatten().is_some() {
                self.markers.insert(m);
            }
        }
    }
}

impl Marker {
    /// Creates this marker, an empty file, in the status folder `dir` beneath `root`, creating the folder first
    /// (never through a link; an existing marker, or anything else of its name, is left as it is).
    pub fn create_in(&self, root: &Root, dir: &Path) -> std::io::Result<()> {
        root.create_dir_all(dir)?;
        root.create_new(&dir.join(self.file_name()), 0o666).map(drop)
    }
}

/// The attempt rule: which attempt a side runs next, agreed by both sides of a pair through the markers alone.
///
/// At start (and after every crash), a side reads the status folder:
/// 1. its own `start<N>` with neither `crash<N>` nor a done marker means this side died without a trace (SIGKILL,
///    an out-of-memory kill, a node restart of the container): it writes `crash<N>` first;
/// 2. the next attempt is the highest `N` of any crash marker of either side of the pair, plus one (0 when there is
///    none). A side whose peer crashed writes its own crash marker for that attempt too (upstream's protocol), so
///    both sides compute the same `N` even when one of them was SIGKILLed and wrote nothing;
/// 3. its attempt budget counts its own crash markers, so a container that Kubernetes restarts keeps its count.
///
/// Stale markers of earlier attempts change nothing: only the highest crash counts, and a start marker only
/// matters for the side that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptPlan {
    /// The attempt to run now.
    pub attempt: Attempt,
    /// A crash marker this side must write first for an attempt it left without a trace.
    pub untraced_crash: Option<Attempt>,
    /// Attempts this side has already spent (its crash markers, the untraced one included).
    pub spent: u32,
}

/// The first attempt number that a pair whose sides have `max_attempts` each can never reach: every attempt that
/// ends leaves a crash marker of this side (its own crash, or the one it writes for its peer's), so this side ends
/// for good before its attempts pass `max_attempts`; twice that, plus two, leaves room for a peer with a larger
/// budget. A marker at or above it was forged (`simulator-1.crash4294967295` once made the next attempt saturate
/// at `u32::MAX` and the agent crash on it forever, at 100% CPU).
pub fn attempt_limit(max_attempts: u32) -> u32 {
    max_attempts.saturating_mul(2).saturating_add(2)
}

impl StatusSet {
    /// Applies the attempt rule for `role` of `worker`.
    pub fn plan_attempt(&self, role: Role, worker: WorkerId) -> AttemptPlan {
        self.plan_attempt_within(role, worker, u32::MAX)
    }

    /// The attempt rule, ignoring the start and crash markers at or above `limit` ([`attempt_limit`]): the plan's
    /// attempt then always stays below `limit + 1`, and a forged marker can neither stall nor skip the budget.
    pub fn plan_attempt_within(&self, role: Role, worker: WorkerId, limit: u32) -> AttemptPlan {
        // `u32::MAX` is no limit at all (the plain rule, which the fuzz target checks on any listing).
        let within = |v: Vec<Attempt>| v.into_iter().filter(|a| limit == u32::MAX || a.0 < limit).collect::<Vec<_>>();
        let own_crashes = within(self.crashes(role, worker));
        let done = self.is_done(role, worker) || self.is_failed(role, worker);
        let untraced_crash =
            within(self.starts(role, worker)).into_iter().rev().find(|n| !own_crashes.contains(n) && !done);
        let highest = Role::ALL.iter().flat_map(|r| within(self.crashes(*r, worker))).chain(untraced_crash).max();
        let spent = own_crashes.len() as u32 + u32::from(untraced_crash.is_some());
        AttemptPlan { attempt: Attempt(highest.map_or(0, |a| a.0.saturating_add(1))), untraced_crash, spent }
    }

    /// Whether `role` of `worker` has a crash marker for `attempt` or a later one below `limit` (a peer that crashed
    /// in, or after, this side's attempt); a forged one at or above `limit` does not count.
    pub fn crashed_since(&self, role: Role, worker: WorkerId, attempt: Attempt, limit: u32) -> bool {
        self.crashes(role, worker).iter().any(|a| *a >= attempt && a.0 < limit)
    }

    /// The start and crash markers of `worker` (either side) at or above `limit`: forged, ignored by
    /// [`StatusSet::plan_attempt_within`].
    pub fn beyond_limit(&self, worker: WorkerId, limit: u32) -> Vec<Marker> {
        self.iter()
            .filter(|m| match *m {
                Marker::Start { worker: w, attempt, .. } | Marker::Crash { worker: w, attempt, .. } => {
                    *w == worker && attempt.0 >= limit
                }
                _ => false,
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W3: WorkerId = WorkerId(3);

    /// A status folder flooded past the cap: a reading takes the first entries only (so neither memory nor time
    /// grows with the flood), says it was cut, and the end markers and a pair's attempts are then found by name.
    #[test]
    fn a_flooded_folder_is_read_within_the_cap_and_the_ends_found_by_name() {
        let dir = std::env::temp_dir().join(format!("volume-markers-flood-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = Root::open(&dir).unwrap();
        let status = Path::new("");
        for name in ["agent-3.done", "simulator-3.crash0", "simulator-3.start1"] {
            std::fs::File::create(dir.join(name)).unwrap();
        }
        let set = StatusSet::read(&root, status).unwrap();
        assert!(!set.truncated());
        assert_eq!(set.iter().count(), 3);
        for i in 0..MAX_STATUS_ENTRIES {
            // Valid marker names too: attempts of another pair, which a flood can be made of.
            let name = if i % 2 == 0 { format!("junk-{i}") } else { format!("agent-9.start{i}") };
            std::fs::File::create(dir.join(name)).unwrap();
        }
        let mut set = StatusSet::read(&root, status).unwrap();
        assert!(set.truncated());
        assert!(set.iter().count() <= MAX_STATUS_ENTRIES);
        set.probe_ends(&root, status, [W3]);
        set.probe_attempts(&root, status, W3, 4);
        assert!(set.is_done(Role::Agent, W3));
        assert_eq!(set.crashes(Role::Simulator, W3), [Attempt(0)]);
        assert!(set.starts(Role::Simulator, W3).contains(&Attempt(1)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// One marker of each shape, with the exact name upstream's scripts use.
    fn canonical() -> Vec<(Marker, &'static str)> {
        use Role::{Agent, Simulator};
        vec![
            (Marker::Start { role: Simulator, worker: W3, attempt: Attempt(0) }, "simulator-3.start0"),
            (Marker::Start { role: Agent, worker: W3, attempt: Attempt(2) }, "agent-3.start2"),
            (Marker::Crash { role: Simulator, worker: W3, attempt: Attempt(0) }, "simulator-3.crash0"),
            (Marker::Crash { role: Agent, worker: WorkerId(12), attempt: Attempt(10) }, "agent-12.crash10"),
            (Marker::Done { role: Agent, worker: W3 }, "agent-3.done"),
            (Marker::Done { role: Simulator, worker: WorkerId(1) }, "simulator-1.done"),
            (Marker::Failed { role: Agent, worker: W3 }, "agent-3.failed"),
            (Marker::Failed { role: Simulator, worker: WorkerId(4) }, "simulator-4.failed"),
            (Marker::Cancel, "simulation.cancel"),
            (Marker::WorkerCancel { worker: W3 }, "simulation-3.cancel"),
            (Marker::LogcopyDone, "logcopy.done"),
            (
                Marker::Crash { role: Agent, worker: WorkerId(u32::MAX), attempt: Attempt(u32::MAX) },
                "agent-4294967295.crash4294967295",
            ),
            (Marker::Done { role: Agent, worker: WorkerId(0) }, "agent-0.done"),
        ]
    }

    #[test]
    fn formats_to_upstream_names_and_round_trips() {
        for (m, name) in canonical() {
            assert_eq!(m.file_name(), name);
            assert_eq!(m.to_string(), name);
            assert_eq!(Marker::parse(name), Some(m), "{name}");
            assert_eq!(name.parse::<Marker>(), Ok(m));
        }
    }

    #[test]
    fn rejects_everything_that_is_not_exactly_a_marker() {
        let rejected = [
            "",
            ".",
            "-",
            "agent",
            "agent-",
            "agent-.done",
            "agent-1",
            "agent-1.",
            "agent-01.done",
            "agent-00.done",
            "agent-+1.done",
            "agent--1.done",
            "agent-1.start",
            "agent-1.crash",
            "agent-1.crash-1",
            "agent-1.crash+1",
            "agent-1.crash01",
            "agent-1.start00",
            "agent-1.done.tmp",
            "agent-1.done ",
            " agent-1.done",
            "agent-1.Done",
            "Agent-1.done",
            "AGENT-1.DONE",
            "agent_1.done",
            "agent-1-2.done",
            "agent-1.cancel",
            "agent.done",
            "simulation.cancel2",
            "simulation-1.cancel2",
            "simulation-1.done",
            "simulation-.cancel",
            "simulation-01.cancel",
            "simulator.cancel",
            "simulator-1.cancel",
            "logcopy.done.tmp",
            "logcopy-1.done",
            "logcopy.crash0",
            "uploader-1.done",
            "worker-1.start",
            "worker-1.start0",
            "monitor.done",
            "agent-4294967296.done",
            "agent-1.crash4294967296",
            "agent-99999999999999999999999999999999.done",
            "agent-1.start99999999999999999999999999999999",
            "agent-١.done",
            "agent-1.crash٣",
            "agent-１.done",
            "agént-1.done",
            "agent-1.done\0",
            "agent-1.done\n",
            "simulation.cancel\n",
        ];
        for name in rejected {
            assert_eq!(Marker::parse(name), None, "{name:?}");
            let err = name.parse::<Marker>().unwrap_err();
            assert_eq!(err.name, name);
            let msg = err.to_string();
            assert!(msg.contains("is not a marker name"), "{msg}");
        }
        assert_eq!(
            "agent-01.done".parse::<Marker>().unwrap_err().to_string(),
            "\"agent-01.done\" is not a marker name"
        );
    }

    #[test]
    fn accessors() {
        let crash = Marker::Crash { role: Role::Simulator, worker: W3, attempt: Attempt(1) };
        assert_eq!(crash.worker(), Some(W3));
        assert_eq!(crash.role(), Some(Role::Simulator));
        let wc = Marker::WorkerCancel { worker: W3 };
        assert_eq!(wc.worker(), Some(W3));
        assert_eq!(wc.role(), None);
        for m in [Marker::Cancel, Marker::LogcopyDone] {
            assert_eq!(m.worker(), None);
            assert_eq!(m.role(), None);
        }
    }

    #[test]
    fn role_and_numbers() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
            assert_eq!(role.peer().peer(), role);
        }
        assert_eq!(Role::Simulator.to_string(), "simulator");
        assert_eq!(Role::Agent.to_string(), "agent");
        let err = "Agent".parse::<Role>().unwrap_err();
        assert_eq!(err.name, "Agent");
        assert!(err.to_string().contains("\"Agent\""));
        assert_eq!(WorkerId(42).to_string(), "42");
        assert_eq!(Attempt(0).to_string(), "0");
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("4294967295"), Some(u32::MAX));
        for bad in ["", "00", "01", "+1", "-0", "4294967296", "1 ", "1e3", "٣"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    /// A deterministic linear congruential generator (Knuth's MMIX constants), so the
    /// property test needs no extra crate and fails the same way every run.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn parse_never_panics_and_accepted_names_format_back() {
        const ALPHABET: &[char] =
            &['0', '1', '2', '9', '-', '+', '.', ' ', 'a', 'e', 'n', 's', 't', 'A', 'é', '١', '\0', '\u{feff}', '😀'];
        const WORDS: &[&str] = &[
            "simulator",
            "agent",
            "simulation",
            "logcopy",
            "start",
            "crash",
            "done",
            "failed",
            "cancel",
            "4294967295",
            "4294967296",
            "99999999999999999999",
        ];
        let seeds: Vec<String> = canonical().into_iter().map(|(_, n)| n.to_owned()).collect();
        let mut rng = Lcg(0x5eed);
        let (mut accepted, mut rejected) = (0, 0);
        for _ in 0..5000 {
            let mut s: Vec<char> = seeds[rng.below(seeds.len())].chars().collect();
            for _ in 0..=rng.below(3) {
                let at = rng.below(s.len() + 1);
                match rng.below(5) {
                    0 => s.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
                    1 if at < s.len() => {
                        s.remove(at);
                    }
                    2 if at < s.len() => s[at] = ALPHABET[rng.below(ALPHABET.len())],
                    3 => {
                        let word = WORDS[rng.below(WORDS.len())];
                        s.splice(at..at, word.chars());
                    }
                    _ => s.truncate(at),
                }
            }
            let name: String = s.into_iter().collect();
            match Marker::parse(&name) {
                Some(m) => {
                    accepted += 1;
                    assert_eq!(m.file_name(), name);
                    assert_eq!(Marker::parse(&m.file_name()), Some(m));
                }
                None => rejected += 1,
            }
        }
        // Both branches must be exercised, or the loop proves nothing.
        assert!(accepted > 100, "only {accepted} mutated names were markers");
        assert!(rejected > 1000, "only {rejected} mutated names were rejected");
    }

    #[test]
    fn every_small_marker_round_trips() {
        for worker in (0..5).map(WorkerId) {
            for role in Role::ALL {
                let mut all = vec![Marker::Done { role, worker }, Marker::Failed { role, worker }];
                for attempt in (0..12).map(Attempt) {
                    all.push(Marker::Start { role, worker, attempt });
                    all.push(Marker::Crash { role, worker, attempt });
                }
                for m in all {
                    assert_eq!(Marker::parse(&m.file_name()), Some(m));
                }
            }
            let wc = Marker::WorkerCancel { worker };
            assert_eq!(Marker::parse(&wc.file_name()), Some(wc));
        }
    }

    #[test]
    fn status_set_queries() {
        let names = [
            "simulator-1.start0",
            "agent-1.start0",
            "simulator-1.crash0",
            "agent-1.crash0",
            "simulator-1.start1",
            "agent-1.start1",
            "simulator-1.crash10",
            "simulator-1.crash2",
            "agent-1.done",
            "simulator-1.done",
            "agent-2.start0",
            "agent-2.failed",
            "simulator-12.crash1",
            "agent-1.done.tmp",
            "uploader-1.done",
            "lost+found",
            "",
        ];
        let set = StatusSet::from_names(names);
        let (w1, w2, w12) = (WorkerId(1), WorkerId(2), WorkerId(12));
        assert_eq!(set.iter().count(), 13);
        assert_eq!(set.crashes(Role::Simulator, w1), vec![Attempt(0), Attempt(2), Attempt(10)]);
        assert_eq!(set.crashes(Role::Agent, w1), vec![Attempt(0)]);
        assert_eq!(set.crashes(Role::Simulator, w12), vec![Attempt(1)]);
        assert_eq!(set.crashes(Role::Simulator, w2), vec![]);
        assert_eq!(set.starts(Role::Agent, w1), vec![Attempt(0), Attempt(1)]);
        assert_eq!(set.starts(Role::Agent, w2), vec![Attempt(0)]);
        assert!(set.is_done(Role::Agent, w1) && set.is_done(Role::Simulator, w1));
        assert!(!set.is_done(Role::Agent, w2));
        assert!(set.is_failed(Role::Agent, w2) && !set.is_failed(Role::Simulator, w2));
        assert!(!set.is_failed(Role::Agent, w1));
        assert!(set.contains(&Marker::Start { role: Role::Simulator, worker: w1, attempt: Attempt(1) }));
        assert!(!set.any_cancel() && !set.cancelled(w1) && !set.logcopy_done());

        let one = StatusSet::from_names(vec!["simulation-2.cancel".to_owned()]);
        assert!(one.any_cancel() && one.cancelled(w2) && !one.cancelled(w1));

        let all = StatusSet::from_names(["simulation.cancel", "logcopy.done"]);
        assert!(all.any_cancel() && all.cancelled(w1) && all.cancelled(w12));
        assert!(all.logcopy_done());

        let empty = StatusSet::from_names(std::iter::empty::<&str>());
        assert_eq!(empty, StatusSet::default());
        assert_eq!(empty.iter().next(), None);
    }

    #[test]
    fn status_set_ignores_duplicates_and_iterates_in_order() {
        let set = StatusSet::from_names(["agent-1.done", "agent-1.done", "simulator-1.done"]);
        let names: Vec<String> = set.iter().map(Marker::file_name).collect();
        assert_eq!(names, ["simulator-1.done", "agent-1.done"]);
    }

    fn plan(names: &[&str], role: Role) -> AttemptPlan {
        StatusSet::from_names(names.iter().copied()).plan_attempt(role, WorkerId(1))
    }

    #[test]
    fn forged_attempt_numbers_beyond_the_budget_are_ignored() {
        let limit = attempt_limit(5);
        assert_eq!(limit, 12);
        let names = ["simulator-1.start0", "simulator-1.crash4294967295", "agent-1.start11", "agent-1.crash12"];
        let set = StatusSet::from_names(names);
        let unbounded = set.plan_attempt(Role::Agent, WorkerId(1));
        assert_eq!(unbounded.attempt, Attempt(u32::MAX), "the old rule saturates: the agent would crash on it forever");
        let p = set.plan_attempt_within(Role::Agent, WorkerId(1), limit);
        // agent-1.start11 is within the limit and has no crash marker: an untraced crash, then attempt 12.
        assert_eq!(p, AttemptPlan { attempt: Attempt(12), untraced_crash: Some(Attempt(11)), spent: 1 });
        let beyond: Vec<String> = set.beyond_limit(WorkerId(1), limit).iter().map(Marker::file_name).collect();
        assert_eq!(beyond, ["simulator-1.crash4294967295", "agent-1.crash12"]);
        // Whatever is forged, the attempt stays within limit + 1 and the budget counts only real attempts.
        let p = StatusSet::from_names(["agent-1.crash4294967294", "agent-1.start4294967295"]).plan_attempt_within(
            Role::Agent,
            WorkerId(1),
            limit,
        );
        assert_eq!(p, AttemptPlan { attempt: Attempt(0), untraced_crash: None, spent: 0 });
    }

    #[test]
    fn attempt_rule_fresh_start_is_attempt_0() {
        let p = plan(&[], Role::Simulator);
        assert_eq!(p, AttemptPlan { attempt: Attempt(0), untraced_crash: None, spent: 0 });
        // The agent joins the simulator's running attempt 0.
        assert_eq!(plan(&["simulator-1.start0"], Role::Agent).attempt, Attempt(0));
    }

    #[test]
    fn attempt_rule_one_side_sigkilled() {
        // The agent was SIGKILLed during attempt 0: at its restart it writes crash0 and goes to 1.
        let p = plan(&["simulator-1.start0", "agent-1.start0"], Role::Agent);
        assert_eq!(p, AttemptPlan { attempt: Attempt(1), untraced_crash: Some(Attempt(0)), spent: 1 });
        // The simulator sees agent crash0, writes its own, and computes the same attempt.
        let p = plan(&["simulator-1.start0", "agent-1.start0", "agent-1.crash0"], Role::Simulator);
        assert_eq!(p.attempt, Attempt(1));
        assert_eq!(p.untraced_crash, Some(Attempt(0)));
    }

    #[test]
    fn attempt_rule_both_crashing_at_once() {
        let names = [
            "simulator-1.start2",
            "agent-1.start2",
            "simulator-1.crash2",
            "agent-1.crash2",
            "agent-1.crash1",
            "simulator-1.crash1",
            "agent-1.crash0",
            "simulator-1.crash0",
        ];
        for role in Role::ALL {
            let p = plan(&names, role);
            assert_eq!((p.attempt, p.untraced_crash, p.spent), (Attempt(3), None, 3));
        }
    }

    #[test]
    fn attempt_rule_restart_mid_attempt_and_stale_markers() {
        // Kubernetes restarted the simulator while attempt 3 ran; old markers of attempts 0..2 lie around.
        let names = [
            "simulator-1.crash0",
            "agent-1.crash0",
            "simulator-1.crash1",
            "agent-1.crash1",
            "simulator-1.start1",
            "simulator-1.start3",
            "agent-1.start3",
            "agent-1.crash2",
            "simulator-1.crash2",
        ];
        let p = plan(&names, Role::Simulator);
        assert_eq!(p, AttemptPlan { attempt: Attempt(4), untraced_crash: Some(Attempt(3)), spent: 4 });
        // A stale start of an attempt that did crash is not untraced.
        let p = plan(&["simulator-1.start0", "simulator-1.crash0", "agent-1.crash0"], Role::Simulator);
        assert_eq!((p.attempt, p.untraced_crash), (Attempt(1), None));
        // A side that is done never re-runs.
        let p = plan(&["agent-1.start0", "agent-1.done"], Role::Agent);
        assert_eq!(p.untraced_crash, None);
    }
}

//! The worker status record: `containers-status/<role>-<ID>.status.json`, one per side of a worker pair.
//!
//! Markers are empty files: they say *that* a side crashed, never *why*. Beside them (they stay, for upstream's
//! scripts), each supervisor keeps this record, rewritten atomically at each change of state: its attempt and
//! budget, its state, the routes it was given and the one it is on, and the last end of its child, classified.
//! logcopy reads it to say why a worker restarted or failed.
//!
//! The record is a claim from a folder the participant's code can write: readers show it and never score from
//! it. The parser is strict where a wrong value would mislead (types, ranges, lengths, the size cap, the schema's
//! major version) and lenient where versions skew (the supervisor ships in the leaderboard image, logcopy in its
//! own): unknown fields are ignored, and an unknown `state` or `reason` reads as [`State::Unknown`] or
//! [`Reason::Unknown`] rather than refusing the whole record. The writer keeps the record well under
//! [`MAX_BYTES`]: every string is cut to its bound and the list of changes keeps the last [`MAX_CHANGES`].

use crate::markers::{Role, WorkerId};
use crate::pyjson::{self, Object, Value};
use crate::safe::{ReadError, Root, WriteError};
use std::path::{Path, PathBuf};

/// The schema's major version: a reader refuses another major, and accepts any minor (added fields).
pub const SCHEMA_MAJOR: i64 = 1;
/// The schema's minor version this writer writes.
pub const SCHEMA_MINOR: i64 = 1;
/// The largest record a reader accepts.
pub const MAX_BYTES: u64 = 64 * 1024;
/// The changes of state the writer keeps (the last ones).
pub const MAX_CHANGES: usize = 32;
/// The longest free-text detail (a reason's words, a routes subset), in bytes.
pub const MAX_TEXT: usize = 512;
/// The longest route id, in bytes.
pub const MAX_ROUTE: usize = 256;
/// The routes run again that the writer keeps (the last ones).
pub const MAX_RERUNS: usize = 32;

/// A side's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Starting,
    WaitingForPeer,
    Running,
    Restarting,
    Done,
    Failed,
    Cancelled,
    /// A forwarded SIGTERM (or INT, HUP, QUIT) ended the child and the supervisor: the container is being stopped.
    Stopped,
    /// A value this reader does not know (a newer writer's).
    Unknown,
}

/// Why a child's attempt (or the side) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The attempt finished (the evaluator wrote its results; the simulator's agent was done).
    Finished,
    SimulatorCrashed,
    EvaluatorCrashed,
    /// CARLA did not open its port, or the agent did not see the simulator start, in time.
    SimulatorNotReady,
    /// No output for `--idle-timeout`.
    Hang,
    AgentSetupFailed,
    /// The evaluator rejected the agent's sensors (`entry_status` `Rejected`).
    SensorsRejected,
    /// The child could not be started at all.
    SpawnFailed,
    AttemptBudgetSpent,
    /// The peer ended for good.
    PeerFailed,
    Cancelled,
    /// A forwarded SIGTERM (or INT, HUP, QUIT) ended the child: the container is being stopped.
    Terminated,
    /// A value this reader does not know (a newer writer's).
    Unknown,
}

macro_rules! names {
    ($ty:ident { $($v:ident => $s:literal),* $(,)? }) => {
        impl $ty {
            /// The name in the record.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$v => $s,)* $ty::Unknown => "unknown" }
            }
            /// The value of a name; [`Self::Unknown`] for any other.
            pub fn from_name(s: &str) -> $ty {
                match s { $($s => $ty::$v,)* _ => $ty::Unknown }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(State {
    Starting => "starting", WaitingForPeer => "waiting-for-peer", Running => "running", Restarting => "restarting",
    Done => "done", Failed => "failed", Cancelled => "cancelled", Stopped => "stopped",
});

names!(Reason {
    Finished => "finished", SimulatorCrashed => "simulator-crashed", EvaluatorCrashed => "evaluator-crashed",
    SimulatorNotReady => "simulator-not-ready", Hang => "hang", AgentSetupFailed => "agent-set-up-failed",
    SensorsRejected => "sensors-rejected", SpawnFailed => "spawn-failed",
    AttemptBudgetSpent => "attempt-budget-spent", PeerFailed => "peer-failed", Cancelled => "cancelled",
    Terminated => "terminated",
});

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// The last end of a child (or of the side, when no child ran).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The side whose fault it was (the simulator, when the agent saw its simulator crash).
    pub side: Role,
    pub reason: Reason,
    /// The attempt that ended.
    pub attempt: u32,
    /// The child's exit, when it exited by itself or was stopped and reaped.
    pub exit: Option<ExitStatus>,
    /// The supervisor's words (bounded).
    pub detail: String,
    /// Unix seconds.
    pub at: i64,
}

/// One change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub state: State,
    pub attempt: u32,
    /// Unix seconds.
    pub at: i64,
}

/// The record of one side of a worker pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub role: Role,
    pub worker: WorkerId,
    pub attempt: u32,
    /// The attempt budget (`--max-attempts`).
    pub max_attempts: u32,
    /// The hang detector's limit (`--idle-timeout`, agent side), in milliseconds; `None` from writers before
    /// schema 1.1 and on the simulator side.
    pub idle_timeout_ms: Option<u32>,
    pub state: State,
    /// ROUTES_SUBSET as given to the evaluator (agent side).
    pub routes_subset: Option<String>,
    /// REPETITIONS (agent side).
    pub repetitions: Option<u32>,
    /// The route the evaluator is on, from its checkpoint (agent side).
    pub current_route: Option<String>,
    pub last_end: Option<End>,
    /// The last [`MAX_CHANGES`] changes of state, oldest first.
    pub changes: Vec<Change>,
    /// The route the evaluator was on at each move to `restarting` (the next attempt runs it again from its start),
    /// the last [`MAX_RERUNS`], oldest first (agent side; schema 1.1).
    pub reruns: Vec<String>,
}

/// The record's file name in the status folder: `<role>-<ID>.status.json`.
pub fn file_name(role: Role, worker: WorkerId) -> String {
    format!("{role}-{worker}{}", crate::layout::STATUS_RECORD_SUFFIX)
}

/// The record's path relative to the volume root (generation 1).
pub fn volume_path(role: Role, worker: WorkerId) -> PathBuf {
    Path::new(crate::layout::STATUS_DIR).join(file_name(role, worker))
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl Record {
    /// A fresh record: `starting`, attempt 0, no end.
    pub fn new(role: Role, worker: WorkerId, max_attempts: u32) -> Record {
        Record {
            role,
            worker,
            attempt: 0,
            max_attempts,
            idle_timeout_ms: None,
            state: State::Starting,
            routes_subset: None,
            repetitions: None,
            current_route: None,
            last_end: None,
            changes: Vec::new(),
            reruns: Vec::new(),
        }
    }

    /// Moves to `state` in `attempt` at `at` (unix seconds), keeping the last [`MAX_CHANGES`] changes.
    /// A move to `restarting` notes the current route as run again.
    pub fn change(&mut self, state: State, attempt: u32, at: i64) {
        if state == State::Restarting
            && let Some(route) = &self.current_route
        {
            self.reruns.push(bounded(route, MAX_ROUTE));
            if self.reruns.len() > MAX_RERUNS {
                self.reruns.remove(0);
            }
        }
        self.state = state;
        self.attempt = attempt;
        self.changes.push(Change { state, attempt, at });
        if self.changes.len() > MAX_CHANGES {
            let extra = self.changes.len() - MAX_CHANGES;
            self.changes.drain(..extra);
        }
    }

    /// The record as JSON: bounded strings, at most [`MAX_CHANGES`] changes, so always far under [`MAX_BYTES`].
    pub fn to_json(&self) -> String {
        let opt_str = |s: &Option<String>, max| s.as_deref().map_or(Value::Null, |s| Value::str(bounded(s, max)));
        let mut o = Object::new();
        o.insert("schema", Value::str(format!("{SCHEMA_MAJOR}.{SCHEMA_MINOR}")));
        o.insert("role", Value::str(self.role.as_str()));
        o.insert("worker", Value::Int(self.worker.0.into()));
        o.insert("attempt", Value::Int(self.attempt.into()));
        o.insert("max_attempts", Value::Int(self.max_attempts.into()));
        o.insert("idle_timeout_ms", self.idle_timeout_ms.map_or(Value::Null, |t| Value::Int(t.into())));
        o.insert("state", Value::str(self.state.as_str()));
        o.insert("routes_subset", opt_str(&self.routes_subset, MAX_TEXT));
        o.insert("repetitions", self.repetitions.map_or(Value::Null, |r| Value::Int(r.into())));
        o.insert("current_route", opt_str(&self.current_route, MAX_ROUTE));
        o.insert(
            "last_end",
            self.last_end.as_ref().map_or(Value::Null, |e| {
                let mut end = Object::new();
                end.insert("side", Value::str(e.side.as_str()));
                end.insert("reason", Value::str(e.reason.as_str()));
                end.insert("attempt", Value::Int(e.attempt.into()));
                let (code, signal) = match e.exit {
                    Some(ExitStatus::Code(c)) => (Value::Int(c.into()), Value::Null),
                    Some(ExitStatus::Signal(s)) => (Value::Null, Value::Int(s.into())),
                    None => (Value::Null, Value::Null),
                };
                end.insert("exit_code", code);
                end.insert("signal", signal);
                end.insert("detail", Value::str(bounded(&e.detail, MAX_TEXT)));
                end.insert("at", Value::Int(e.at));
                Value::object(end)
            }),
        );
        let start = self.changes.len().saturating_sub(MAX_CHANGES);
        let changes = self.changes[start..]
            .iter()
            .map(|c| {
                let mut o = Object::new();
                o.insert("state", Value::str(c.state.as_str()));
                o.insert("attempt", Value::Int(c.attempt.into()));
                o.insert("at", Value::Int(c.at));
                Value::object(o)
            })
            .collect();
        o.insert("changes", Value::array(changes));
        let start = self.reruns.len().saturating_sub(MAX_RERUNS);
        let reruns = self.reruns[start..].iter().map(|r| Value::str(bounded(r, MAX_ROUTE))).collect();
        o.insert("reruns", Value::array(reruns));
        let mut s = pyjson::to_pretty(&Value::object(o), false);
        s.push('\n');
        s
    }

    /// Writes the record atomically as `rel` beneath `root`.
    pub fn write(&self, root: &Root, rel: &Path) -> Result<(), WriteError> {
        root.write_atomic(rel, self.to_json().as_bytes())
    }

    /// Parses a record strictly: see the module's documentation for what is refused and what is ignored.
    pub fn parse(bytes: &[u8]) -> Result<Record, Malformed> {
        if bytes.len() as u64 > MAX_BYTES {
            return Err(Malformed::TooLarge { size: bytes.len() as u64 });
        }
        let v = pyjson::parse(bytes).map_err(|e| Malformed::Json(e.to_string()))?;
        let o = v.as_object().ok_or(Malformed::Field { field: "(document)", why: "not an object" })?;
        let schema = str_field(o, "schema", 16)?.ok_or(Malformed::Field { field: "schema", why: "missing" })?;
        let major = schema.split('.').next().and_then(|m| m.parse::<i64>().ok());
        match major {
            Some(SCHEMA_MAJOR) => {}
            Some(_) => return Err(Malformed::Schema(schema)),
            None => return Err(Malformed::Field { field: "schema", why: "not MAJOR.MINOR" }),
        }
        let role = match req_str(o, "role", 16)?.as_str() {
            "agent" => Role::Agent,
            "simulator" => Role::Simulator,
            _ => return Err(Malformed::Field { field: "role", why: "neither agent nor simulator" }),
        };
        let last_end = match o.get("last_end") {
            None | Some(Value::Null) => None,
            Some(Value::Object(e)) => Some(parse_end(e)?),
            Some(_) => return Err(Malformed::Field { field: "last_end", why: "not an object" }),
        };
        let changes = match o.get("changes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if a.len() <= MAX_CHANGES => a
                .iter()
                .map(|c| {
                    let c = c.as_object().ok_or(Malformed::Field { field: "changes", why: "not an object" })?;
                    Ok(Change {
                        state: State::from_name(&req_str(c, "state", 64)?),
                        attempt: req_u32(c, "attempt")?,
                        at: req_time(c, "at")?,
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Array(_)) => return Err(Malformed::Field { field: "changes", why: "too many entries" }),
            Some(_) => return Err(Malformed::Field { field: "changes", why: "not an array" }),
        };
        let reruns = match o.get("reruns") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if a.len() <= MAX_RERUNS => a
                .iter()
                .map(|r| match r {
                    Value::Str(s) if s.len() <= MAX_ROUTE => Ok(s.to_string()),
                    Value::Str(_) => Err(Malformed::Field { field: "reruns", why: "too long" }),
                    _ => Err(Malformed::Field { field: "reruns", why: "not a string" }),
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Array(_)) => return Err(Malformed::Field { field: "reruns", why: "too many entries" }),
            Some(_) => return Err(Malformed::Field { field: "reruns", why: "not an array" }),
        };
        Ok(Record {
            role,
            worker: WorkerId(req_u32(o, "worker")?),
            attempt: req_u32(o, "attempt")?,
            max_attempts: req_u32(o, "max_attempts")?,
            idle_timeout_ms: opt_u32(o, "idle_timeout_ms")?,
            state: State::from_name(&req_str(o, "state", 64)?),
            routes_subset: str_field(o, "routes_subset", MAX_TEXT)?,
            repetitions: opt_u32(o, "repetitions")?,
            current_route: str_field(o, "current_route", MAX_ROUTE)?,
            last_end,
            changes,
            reruns,
        })
    }

    /// Reads and parses the record `rel` beneath `root` through a capped read; `Ok(None)` when there is none.
    pub fn read(root: &Root, rel: &Path) -> Result<Option<Record>, Malformed> {
        match root.read_capped(rel, MAX_BYTES) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => Record::parse(&bytes).map(Some),
            Err(ReadError::TooLarge { size, .. }) => Err(Malformed::TooLarge { size }),
            Err(e) => Err(Malformed::Unreadable(e.to_string())),
        }
    }
}

fn parse_end(e: &Object) -> Result<End, Malformed> {
    let side = match req_str(e, "side", 16)?.as_str() {
        "agent" => Role::Agent,
        "simulator" => Role::Simulator,
        _ => return Err(Malformed::Field { field: "last_end.side", why: "neither agent nor simulator" }),
    };
    let code = opt_i32(e, "exit_code")?;
    let signal = opt_i32(e, "signal")?;
    let exit = match (code, signal) {
        (Some(c), None) => Some(ExitStatus::Code(c)),
        (None, Some(s)) => Some(ExitStatus::Signal(s)),
        (None, None) => None,
        (Some(_), Some(_)) => return Err(Malformed::Field { field: "last_end", why: "both exit_code and signal" }),
    };
    Ok(End {
        side,
        reason: Reason::from_name(&req_str(e, "reason", 64)?),
        attempt: req_u32(e, "attempt")?,
        exit,
        detail: str_field(e, "detail", MAX_TEXT)?.unwrap_or_default(),
        at: req_time(e, "at")?,
    })
}

pub(crate) fn str_field(o: &Object, field: &'static str, max: usize) -> Result<Option<String>, Malformed> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) if s.len() <= max => Ok(Some(s.clone())),
        Some(Value::Str(_)) => Err(Malformed::Field { field, why: "too long" }),
        Some(_) => Err(Malformed::Field { field, why: "not a string" }),
    }
}

pub(crate) fn req_str(o: &Object, field: &'static str, max: usize) -> Result<String, Malformed> {
    str_field(o, field, max)?.ok_or(Malformed::Field { field, why: "missing" })
}

pub(crate) fn opt_int(o: &Object, field: &'static str, min: i64, max: i64) -> Result<Option<i64>, Malformed> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Int(n)) if (min..=max).contains(n) => Ok(Some(*n)),
        Some(Value::Int(_) | Value::BigInt(_)) => Err(Malformed::Field { field, why: "out of range" }),
        Some(_) => Err(Malformed::Field { field, why: "not an integer" }),
    }
}

pub(crate) fn opt_u32(o: &Object, field: &'static str) -> Result<Option<u32>, Malformed> {
    Ok(opt_int(o, field, 0, u32::MAX.into())?.map(|n| n as u32))
}

pub(crate) fn req_u32(o: &Object, field: &'static str) -> Result<u32, Malformed> {
    opt_u32(o, field)?.ok_or(Malformed::Field { field, why: "missing" })
}

fn opt_i32(o: &Object, field: &'static str) -> Result<Option<i32>, Malformed> {
    Ok(opt_int(o, field, i32::MIN.into(), i32::MAX.into())?.map(|n| n as i32))
}

/// Unix seconds from 1970 to 9999.
pub(crate) fn req_time(o: &Object, field: &'static str) -> Result<i64, Malformed> {
    opt_int(o, field, 0, 253_402_300_799)?.ok_or(Malformed::Field { field, why: "missing" })
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("is {size} bytes, over the {MAX_BYTES}-byte cap")]
    TooLarge { size: u64 },
    #[error("cannot be read: {0}")]
    Unreadable(String),
    #[error("is not JSON: {0}")]
    Json(String),
    #[error("has schema {0}, this reader knows {SCHEMA_MAJOR}.x")]
    Schema(String),
    #[error("field {field}: {why}")]
    Field { field: &'static str, why: &'static str },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut r = Record::new(Role::Agent, WorkerId(2), 3);
        r.routes_subset = Some("0-9".into());
        r.repetitions = Some(1);
        r.idle_timeout_ms = Some(800_000);
        r.change(State::Running, 0, 100);
        r.current_route = Some("RouteScenario_3_rep0".into());
        r.last_end = Some(End {
            side: Role::Simulator,
            reason: Reason::SimulatorCrashed,
            attempt: 0,
            exit: Some(ExitStatus::Signal(9)),
            detail: "CARLA ended (signal 9 (SIGKILL))".into(),
            at: 120,
        });
        r.change(State::Restarting, 0, 120);
        r
    }

    #[test]
    fn a_restart_notes_the_route_run_again() {
        let r = sample();
        assert_eq!(r.reruns, ["RouteScenario_3_rep0"]);
        let mut r = Record::new(Role::Simulator, WorkerId(1), 3);
        r.change(State::Restarting, 0, 10);
        assert!(r.reruns.is_empty(), "no route known, none noted");
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let json = r.to_json();
        assert!(json.contains("\"state\": \"restarting\""), "{json}");
        assert_eq!(Record::parse(json.as_bytes()).unwrap(), r);
        assert_eq!(file_name(Role::Simulator, WorkerId(4)), "simulator-4.status.json");
        assert_eq!(volume_path(Role::Agent, WorkerId(1)), Path::new("containers-status/agent-1.status.json"));
    }

    #[test]
    fn the_writer_stays_bounded() {
        let mut r = sample();
        r.routes_subset = Some("é".repeat(10_000));
        r.current_route = Some("x".repeat(10_000));
        r.last_end.as_mut().unwrap().detail = "y".repeat(100_000);
        for i in 0..1000 {
            r.change(State::Restarting, i, 200 + i64::from(i));
        }
        assert_eq!(r.changes.len(), MAX_CHANGES);
        assert_eq!(r.reruns.len(), MAX_RERUNS);
        let json = r.to_json();
        assert!(json.len() < 16 * 1024, "{}", json.len());
        let back = Record::parse(json.as_bytes()).unwrap();
        assert_eq!(back.routes_subset.unwrap().len(), MAX_TEXT);
        assert_eq!(back.changes.last().unwrap().attempt, 999);
    }

    fn patched(edit: impl FnOnce(&mut Object)) -> Vec<u8> {
        let mut v = pyjson::parse(sample().to_json().as_bytes()).unwrap();
        let Value::Object(o) = &mut v else { unreachable!() };
        edit(std::sync::Arc::make_mut(o));
        pyjson::to_pretty(&v, false).into_bytes()
    }

    #[test]
    fn a_newer_minor_version_is_read_and_its_additions_ignored() {
        let bytes = patched(|o| {
            o.insert("schema", Value::str("1.7"));
            o.insert("gpu", Value::str("H200"));
            o.insert("state", Value::str("paused"));
        });
        let r = Record::parse(&bytes).unwrap();
        assert_eq!(r.state, State::Unknown);
        assert_eq!(r.worker, WorkerId(2));
    }

    #[test]
    fn malformed_records_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{".to_vec(), "not JSON"),
            (b"[]".to_vec(), "not an object"),
            (patched(|o| o.insert("schema", Value::str("2.0"))), "schema 2.0"),
            (patched(|o| o.insert("schema", Value::Int(1))), "schema: not a string"),
            (patched(|o| o.insert("worker", Value::Int(-1))), "worker: out of range"),
            (patched(|o| o.insert("attempt", Value::Int(1 << 40))), "attempt: out of range"),
            (patched(|o| o.insert("attempt", Value::str("1"))), "attempt: not an integer"),
            (patched(|o| o.insert("idle_timeout_ms", Value::Int(-5))), "idle_timeout_ms: out of range"),
            (patched(|o| o.insert("idle_timeout_ms", Value::Int(1 << 33))), "idle_timeout_ms: out of range"),
            (patched(|o| o.insert("idle_timeout_ms", Value::str("800s"))), "idle_timeout_ms: not an integer"),
            (patched(|o| o.insert("role", Value::str("logcopy"))), "role"),
            (patched(|o| o.insert("current_route", Value::str("r".repeat(MAX_ROUTE + 1)))), "too long"),
            (patched(|o| o.insert("changes", Value::array(vec![Value::Int(1); MAX_CHANGES + 1]))), "too many"),
            (patched(|o| o.insert("last_end", Value::Int(1))), "last_end: not an object"),
            (patched(|o| o.insert("reruns", Value::array(vec![Value::str("r"); MAX_RERUNS + 1]))), "reruns: too many"),
            (patched(|o| o.insert("reruns", Value::array(vec![Value::Int(3)]))), "reruns: not a string"),
            (patched(|o| o.insert("reruns", Value::array(vec![Value::str("r".repeat(MAX_ROUTE + 1))]))), "too long"),
        ];
        for (bytes, want) in cases {
            let e = Record::parse(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should say {want}");
        }
        let big = vec![b' '; MAX_BYTES as usize + 1];
        assert_eq!(Record::parse(&big), Err(Malformed::TooLarge { size: MAX_BYTES + 1 }));
    }

    #[test]
    fn read_beneath_a_root_is_capped() {
        let dir = std::env::temp_dir().join(format!("volume-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = Root::open(&dir).unwrap();
        let rel = Path::new("agent-2.status.json");
        assert_eq!(Record::read(&root, rel), Ok(None));
        sample().write(&root, rel).unwrap();
        assert_eq!(Record::read(&root, rel), Ok(Some(sample())));
        std::fs::write(dir.join(rel), vec![b' '; MAX_BYTES as usize + 10]).unwrap();
        assert!(matches!(Record::read(&root, rel), Err(Malformed::TooLarge { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! `logcopy status`: the state of a submission, read from the volume without writing on it.
//!
//! Upstream has no such view: an operator lists `containers-status/` and reads the markers' names. Here the
//! markers (which every version writes, upstream's scripts included), the supervisors' status records (which say
//! *why*: see [`volume::status`]) and each worker's results file (routes done) are read into one report, for people
//! (one line per worker) or for programs (`--json`, documented in docs/status.md). Everything on the volume is a
//! claim the participant's code could have written: the report shows it and scores nothing from it. A record that
//! is missing, oversized or malformed is reported as such and never stops the report; so is a results file.

use crate::results::pyjson::{self, Object, Value};
use crate::results::{Version, file::DEFAULT_MAX_BYTES};
use crate::routes::RoutePlan;
use clap::Args;
use std::path::{Path, PathBuf};
use volume::markers::{Role, StatusSet, WorkerId};
use volume::results::Checkpoint;
use volume::safe::Root;
use volume::status::{End, ExitStatus, Record, State};

/// The flags of `logcopy status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The logs volume's root (read only).
    #[arg(long, env = "LOGS_DIR", default_value = volume::layout::mount::LOGS)]
    pub logs: PathBuf,
    /// Print the report as one JSON object (schema in docs/status.md) instead of one line per worker.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub routes: crate::config::RouteArgs,
    /// Leaderboard version of the route names in a results file that does not tell (1.0 or 2.0).
    #[arg(long, env = "LEADERBOARD_VERSION", default_value = "2.0")]
    pub leaderboard_version: Version,
    /// Path of worker i's results file under the volume; `{i}` is the worker number (1..N).
    #[arg(long, env = "RESULTS_PATTERN", default_value = volume::layout::RESULTS_PATTERN)]
    pub results_pattern: String,
}

/// Bad configuration: exit 2.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the volume {}: {source}", path.display())]
    Volume { path: PathBuf, source: std::io::Error },
}

/// What is known of one side of a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    /// The state: from the end markers when there are any, else from the record, else from the other markers.
    pub state: String,
    /// `ok`, `missing`, or `malformed: <why>`.
    pub record: String,
    pub parsed: Option<Record>,
}

/// What is known of one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub id: u32,
    pub simulator: Side,
    pub agent: Side,
    pub attempt: Option<u32>,
    pub routes_done: Option<u64>,
    pub routes_assigned: Option<u64>,
    pub current_route: Option<String>,
    pub last_end: Option<End>,
    /// `ok`, `missing`, or why the results file could not be used.
    pub results: String,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub state: &'static str,
    pub logcopy_done: bool,
    pub workers: Vec<Worker>,
    /// Problems that did not stop the report (the status folder unreadable, ...).
    pub notes: Vec<String>,
}

/// The JSON report's schema version (docs/status.md).
pub const REPORT_SCHEMA: &str = "1.0";

/// Reads the report from the volume at `args.logs`; never writes there.
pub fn report(args: &StatusArgs) -> Result<Report, StatusError> {
    if !args.results_pattern.contains("{i}") {
        return Err(crate::config::bad("--results-pattern / RESULTS_PATTERN", "has no {i}".to_string()).into());
    }
    crate::config::volume_path("--results-pattern / RESULTS_PATTERN", &args.results_pattern)?;
    let root = Root::open(&args.logs).map_err(|source| StatusError::Volume { path: args.logs.clone(), source })?;
    let plan = args.routes.plan();
    let mut notes = Vec::new();
    let status_dir = Path::new(volume::layout::STATUS_DIR);
    let mut set = StatusSet::read(&root, status_dir).unwrap_or_else(|e| {
        notes.push(format!("cannot read {}: {e}", volume::layout::STATUS_DIR));
        StatusSet::default()
    });
    if set.truncated() {
        set.probe_ends(&root, status_dir, (1..=args.routes.workers).map(WorkerId));
        notes.push(format!(
            "{} holds more than {} entries: only the first were read, and the end markers by name",
            volume::layout::STATUS_DIR,
            volume::markers::MAX_STATUS_ENTRIES
        ));
    }
    let workers: Vec<Worker> =
        (1..=args.routes.workers).map(|i| worker(&root, &set, args, plan.as_ref(), WorkerId(i))).collect();
    Ok(Report { state: submission_state(&set, &workers), logcopy_done: set.logcopy_done(), workers, notes })
}

fn submission_state(set: &StatusSet, workers: &[Worker]) -> &'static str {
    let ended = |w: &Worker| matches!(w.agent.state.as_str(), "done" | "failed");
    if set.any_cancel() {
        "cancelled"
    } else if workers.iter().all(|w| w.agent.state == "done") {
        "finished"
    } else if workers.iter().all(ended) {
        "failed"
    } else if workers.iter().all(|w| w.agent.state == "not-started" && w.simulator.state == "not-started") {
        "not-started"
    } else {
        "running"
    }
}

fn side(root: &Root, set: &StatusSet, role: Role, worker: WorkerId) -> Side {
    let (record, parsed) = match Record::read(root, &volume::status::volume_path(role, worker)) {
        Ok(Some(r)) if r.role == role && r.worker == worker => ("ok".to_owned(), Some(r)),
        Ok(Some(r)) => (format!("malformed: the record names {}-{}", r.role, r.worker), None),
        Ok(None) => ("missing".to_owned(), None),
        Err(e) => (format!("malformed: {e}"), None),
    };
    let state = side_state(set, parsed.as_ref(), role, worker);
    Side { state: state.to_owned(), record, parsed }
}

/// A side's state: from the end markers when there is one, else from its record, else from the other markers.
pub(crate) fn side_state(set: &StatusSet, parsed: Option<&Record>, role: Role, worker: WorkerId) -> &'static str {
    if set.is_done(role, worker) {
        State::Done.as_str()
    } else if set.is_failed(role, worker) {
        State::Failed.as_str()
    } else if set.cancelled(worker) {
        State::Cancelled.as_str()
    } else if let Some(r) = parsed {
        r.state.as_str()
    } else {
        match (set.starts(role, worker).last(), set.crashes(role, worker).last()) {
            (None, None) => "not-started",
            (Some(s), Some(c)) if c >= s => State::Restarting.as_str(),
            (None, Some(_)) => State::Restarting.as_str(),
            _ => State::Running.as_str(),
        }
    }
}

fn worker(root: &Root, set: &StatusSet, args: &StatusArgs, plan: Option<&RoutePlan>, id: WorkerId) -> Worker {
    let simulator = side(root, set, Role::Simulator, id);
    let agent = side(root, set, Role::Agent, id);
    let assigned = plan.map(|p| p.assigned(id.0));
    let rel = PathBuf::from(args.results_pattern.replace("{i}", &id.to_string()));
    let (results, routes_done) = match root.read_capped(&rel, DEFAULT_MAX_BYTES) {
        Ok(None) => ("missing".to_owned(), None),
        Err(e) => (format!("unreadable: {e}"), None),
        Ok(Some(bytes)) => match pyjson::parse(&bytes) {
            Err(e) => (format!("not JSON: {e}"), None),
            Ok(v) => match Checkpoint::of(&v).and_then(|c| c.records().map(|_| c)) {
                None => ("no _checkpoint.records".to_owned(), None),
                Some(c) => {
                    let version = crate::results::detect(&v).unwrap_or(args.leaderboard_version);
                    let done = c.route_ids().filter(|n| assigned.is_none_or(|a| a.contains(version, n))).count();
                    ("ok".to_owned(), Some(done as u64))
                }
            },
        },
    };
    let records = [simulator.parsed.as_ref(), agent.parsed.as_ref()];
    // The attempt both sides agree on: the higher of the records', else the markers' highest start.
    let attempt = records
        .iter()
        .flatten()
        .map(|r| r.attempt)
        .max()
        .or_else(|| Role::ALL.iter().filter_map(|&r| set.starts(r, id).last().map(|a| a.0)).max());
    let last_end =
        records.iter().flatten().filter_map(|r| r.last_end.clone()).max_by_key(|e| (e.at, e.side == Role::Agent));
    let finished = matches!(agent.state.as_str(), "done" | "failed" | "cancelled");
    let current_route = agent.parsed.as_ref().and_then(|r| r.current_route.clone()).filter(|_| !finished);
    Worker {
        id: id.0,
        simulator,
        agent,
        attempt,
        routes_done,
        routes_assigned: assigned.map(|a| a.runs()),
        current_route,
        last_end,
        results,
    }
}

fn opt_int(n: Option<u64>) -> Value {
    n.map_or(Value::Null, |n| Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
}

fn end_json(e: &End) -> Value {
    let mut o = Object::new();
    o.insert("reason", Value::str(e.reason.as_str()));
    o.insert("side", Value::str(e.side.as_str()));
    o.insert("attempt", Value::Int(e.attempt.into()));
    let (code, signal) = match e.exit {
        Some(ExitStatus::Code(c)) => (Value::Int(c.into()), Value::Null),
        Some(ExitStatus::Signal(s)) => (Value::Null, Value::Int(s.into())),
        None => (Value::Null, Value::Null),
    };
    o.insert("exit_code", code);
    o.insert("signal", signal);
    o.insert("detail", Value::str(e.detail.clone()));
    o.insert("at", Value::str(volume::time::utc_timestamp(e.at)));
    Value::object(o)
}

impl Report {
    /// The report as JSON (docs/status.md).
    pub fn to_json(&self) -> String {
        let workers = self
            .workers
            .iter()
            .map(|w| {
                let pair = |f: &dyn Fn(&Side) -> &str| {
                    let mut o = Object::new();
                    o.insert("simulator", Value::str(f(&w.simulator)));
                    o.insert("agent", Value::str(f(&w.agent)));
                    Value::object(o)
                };
                let mut o = Object::new();
                o.insert("id", Value::Int(w.id.into()));
                o.insert("state", pair(&|s| &s.state));
                o.insert("attempt", opt_int(w.attempt.map(u64::from)));
                o.insert("routes_done", opt_int(w.routes_done));
                o.insert("routes_assigned", opt_int(w.routes_assigned));
                o.insert("current_route", w.current_route.clone().map_or(Value::Null, Value::str));
                o.insert("last_end", w.last_end.as_ref().map_or(Value::Null, end_json));
                o.insert("records", pair(&|s| &s.record));
                o.insert("results", Value::str(w.results.clone()));
                Value::object(o)
            })
            .collect();
        let mut o = Object::new();
        o.insert("schema", Value::str(REPORT_SCHEMA));
        o.insert("state", Value::str(self.state));
        o.insert("logcopy_done", Value::Bool(self.logcopy_done));
        o.insert("workers", Value::array(workers));
        o.insert("notes", Value::array(self.notes.iter().map(|n| Value::str(n.clone())).collect()));
        let mut s = pyjson::to_pretty(&Value::object(o), false);
        s.push('\n');
        s
    }

    /// The report for people: the submission, then one line per worker.
    pub fn to_text(&self) -> String {
        let mut s = format!("submission: {}{}\n", self.state, if self.logcopy_done { " (logcopy done)" } else { "" });
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        for w in &self.workers {
            let routes = match (w.routes_done, w.routes_assigned) {
                (Some(d), Some(a)) => format!("{d}/{a} routes"),
                (Some(d), None) => format!("{d} routes"),
                (None, Some(a)) => format!("?/{a} routes"),
                (None, None) => "routes ?".to_owned(),
            };
            let attempt = w.attempt.map_or("-".to_owned(), |a| a.to_string());
            let mut line = format!(
                "worker {}: simulator {}, agent {}; attempt {attempt}; {routes}",
                w.id, w.simulator.state, w.agent.state
            );
            if let Some(r) = &w.current_route {
                line.push_str(&format!("; on {r}"));
            }
            if let Some(e) = &w.last_end {
                let exit = match e.exit {
                    Some(ExitStatus::Code(c)) => format!(", exit code {c}"),
                    Some(ExitStatus::Signal(n)) => format!(", signal {n}"),
                    None => String::new(),
                };
                line.push_str(&format!("; last end: {} ({}, attempt {}{exit})", e.reason, e.side, e.attempt));
            }
            for (name, side) in [("simulator", &w.simulator), ("agent", &w.agent)] {
                if side.record.starts_with("malformed") {
                    line.push_str(&format!("; {name} record {}", side.record));
                }
            }
            s.push_str(&line);
            s.push('\n');
        }
        s
    }
}

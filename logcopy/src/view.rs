//! What the participant sees of a run: the run status block at the top of `stdout.txt` (EvalAI's `stdout`), the
//! classified failures in EvalAI's `stderr`, and the provisional scores of `--partial-scores provisional`.
//!
//! EvalAI's stdout and stderr are a participant's only window into a run of hours. Upstream's summary
//! ([`crate::results::evalai::stdout_txt`]) counts only the routes in the workers' files and never says why a
//! worker restarted or failed. The block says where the run stands (state, routes done out of the routes
//! *assigned*, each worker, restarts, throughput), read from the markers, the supervisors' status records
//! ([`volume::status`]) and the merged results.
//!
//! **Test routes are secret**, and the participant's code can write the status folder and its own results file: no
//! free text from either reaches what this module renders. A status record's fields appear only as enums and
//! bounded integers (never `detail`, never `routes_subset`); a route id appears only when it parses as a route the
//! worker was *assigned*, and then in logcopy's own spelling; a route status is counted only when it is one of
//! upstream's statuses (others count as `other`). Upstream's own summary, which follows the block, still echoes
//! each record's route id and status (docs/security.md). The output is ASCII and bounded ([`MAX_WORKER_LINES`]).
//!
//! Rendering is pure: [`render_block`] takes the clock as a parameter (the goldens inject one), and without a
//! clock renders the block's *key*, the block minus its clock fields, which the loop compares to re-render only
//! on a change of state or at a heartbeat.

use crate::publish::End;
use crate::results::Version;
use crate::results::pyjson::{Object, Value};
use crate::routes::{Assigned, RoutePlan, parse_name};
use crate::status::side_state;
use clap::{Args, ValueEnum};
use std::time::Duration;
use volume::markers::{Role, StatusSet, WorkerId};
use volume::results::RouteId;
use volume::safe::Root;
use volume::status::{ExitStatus, Reason, Record, State};

/// What `stdout.txt` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StdoutFormat {
    /// The run status block, then upstream's summary (whose route count is the assigned total).
    Status,
    /// Exactly upstream's generate_stdout.py file.
    Upstream,
}

/// What `results.json` holds before the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartialScores {
    /// Upstream's: every metric 0 until the merged file has its global record.
    Zeros,
    /// The three score averages over the routes done; the infraction metrics stay 0 until the end.
    Provisional,
}

/// The flags of what the participant sees (`logcopy run`).
#[derive(Debug, Clone, Args)]
pub struct ViewArgs {
    /// What stdout.txt (EvalAI's stdout) holds: `status` opens it with the run status block (docs/status.md), then
    /// upstream's summary; `upstream` writes exactly upstream's generate_stdout.py file.
    #[arg(long, env = "STDOUT_FORMAT", value_enum, default_value_t = StdoutFormat::Status)]
    pub stdout_format: StdoutFormat,
    /// Period at which the run status block's clock fields (elapsed, ETA, last activity) are refreshed while
    /// nothing else changes: at most one partial EvalAI update per heartbeat, none after the end (seconds, or
    /// with a unit: 90s, 5m).
    #[arg(long, env = "HEARTBEAT", default_value = "300", value_parser = heartbeat)]
    pub heartbeat: Duration,
    /// What results.json holds before the end: `zeros` (upstream's: every metric 0 until the global record) or
    /// `provisional` (the driving score, route completion and infraction penalty averaged over the routes done).
    #[arg(long, env = "PARTIAL_SCORES", value_enum, default_value_t = PartialScores::Zeros)]
    pub partial_scores: PartialScores,
    /// The Job's deadline (its activeDeadlineSeconds), shown among the budgets of the run status block; only
    /// shown, never enforced by logcopy (seconds, or with a unit: 90s, 5m). Not set: the block says so.
    #[arg(long, env = "JOB_DEADLINE", value_parser = job_deadline, value_name = "DURATION")]
    pub job_deadline: Option<Duration>,
}

impl Default for ViewArgs {
    fn default() -> Self {
        ViewArgs {
            stdout_format: StdoutFormat::Status,
            heartbeat: Duration::from_secs(300),
            partial_scores: PartialScores::Zeros,
            job_deadline: None,
        }
    }
}

/// A heartbeat: at least 1 s (clap value parser).
fn heartbeat(s: &str) -> Result<Duration, String> {
    let d = volume::duration::parse(s).ok_or_else(|| format!("{s:?} is not a duration (e.g. 300, 90s, 5m)"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is below the minimum of 1s"));
    }
    Ok(d)
}

/// A Job deadline: at least 1 s (clap value parser).
fn job_deadline(s: &str) -> Result<Duration, String> {
    let d = volume::duration::parse(s).ok_or_else(|| format!("{s:?} is not a duration (e.g. 86400, 90s, 5m)"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is below the minimum of 1s"));
    }
    Ok(d)
}

/// The most route ids the block lists as run again; the others are counted.
pub const MAX_RERUNS_SHOWN: usize = 10;

/// The most worker lines the block (and stderr) lists; the others are counted.
pub const MAX_WORKER_LINES: usize = 64;

/// Upstream's route statuses (results spec 2.5, 3.3), in the order the block lists them.
const STATUSES: [&str; 10] = [
    "Perfect",
    "Completed",
    "Failed",
    "Failed - Agent timed out",
    "Failed - Agent deviated from the route",
    "Failed - Agent got blocked",
    "Failed - Simulation crashed",
    "Failed - Agent's sensors were invalid",
    "Failed - Agent couldn't be set up",
    "Failed - Agent crashed",
];

/// Where the run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    /// Worker `i` restarts after a crash.
    Restarting(u32),
    /// Every assigned route has a result, or every worker ended: the last merge and publish follow.
    Finishing,
    Finished,
    Cancelled,
    /// Failed, with the participant-facing reason (no marker name, no free text).
    Failed(String),
}

impl Phase {
    fn terminal(&self) -> bool {
        matches!(self, Phase::Finished | Phase::Cancelled | Phase::Failed(_))
    }

    fn words(&self) -> String {
        match self {
            Phase::Starting => "starting".into(),
            Phase::Running => "running".into(),
            Phase::Restarting(i) => format!("restarting worker {i} after a crash"),
            Phase::Finishing => "finishing".into(),
            Phase::Finished => "finished".into(),
            Phase::Cancelled => "cancelled".into(),
            Phase::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// The last end of a worker's child, as enums and integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndView {
    pub side: Role,
    pub reason: Reason,
    /// 0-based.
    pub attempt: u32,
    pub exit: Option<ExitStatus>,
    pub at: i64,
    /// The assigned route it happened on, when the worker has not moved on since.
    pub route: Option<String>,
}

/// One worker, as the participant sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    pub id: u32,
    /// A state name: a record state or `not-started`.
    pub state: &'static str,
    pub routes_done: u64,
    pub routes_assigned: Option<u64>,
    /// An assigned route, in logcopy's spelling.
    pub current_route: Option<String>,
    /// 0-based.
    pub attempt: Option<u32>,
    pub max_attempts: Option<u32>,
    pub last_activity: Option<i64>,
    /// Attempts that ended in a crash and were followed by another: every such end leaves a crash marker of each
    /// side (its own, or the one it writes for its peer), so the larger of the two sides' counts.
    pub restarts: u32,
    pub last_end: Option<EndView>,
    /// The first change of state of its records.
    pub started_at: Option<i64>,
    /// The hang detector's limit (the agent's record), in milliseconds.
    pub idle_timeout_ms: Option<u32>,
    /// The assigned routes run again after a restart (the agent's record), oldest first, in logcopy's spelling.
    pub reruns: Vec<String>,
}

impl WorkerView {
    /// Its last end, when that end was a failure (not finished, cancelled or stopped with its container).
    fn failure(&self) -> Option<&EndView> {
        self.last_end
            .as_ref()
            .filter(|e| !matches!(e.reason, Reason::Finished | Reason::Cancelled | Reason::Terminated))
    }
}

/// The whole view of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    pub phase: Phase,
    pub workers: Vec<WorkerView>,
    pub routes_done: u64,
    pub routes_assigned: Option<u64>,
    /// (status, count) for upstream's statuses, then `other`.
    pub statuses: Vec<(&'static str, u64)>,
    /// The mean driving score over the routes done, and how many had one.
    pub provisional: Option<(f64, u64)>,
    pub heartbeat: Duration,
    /// `--job-deadline`.
    pub job_deadline: Option<Duration>,
}

/// What the view takes from the merged results file (records of assigned routes only), counted once per merge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub routes_done: u64,
    /// (status, count) for upstream's statuses, then `other`.
    pub statuses: Vec<(&'static str, u64)>,
    /// The mean driving score over the routes done, and how many had one.
    pub provisional: Option<(f64, u64)>,
}

impl Tally {
    /// The counts of the merged results file `merged`.
    pub fn of(merged: Option<&Object>) -> Tally {
        let mut counts = [0u64; STATUSES.len() + 1];
        let records = merged_records(merged);
        for r in records {
            let status = r.as_object().and_then(|r| r.get("status")).and_then(Value::as_str);
            let at = status.and_then(|s| STATUSES.iter().position(|k| *k == s)).unwrap_or(STATUSES.len());
            counts[at] += 1;
        }
        Tally {
            routes_done: records.len() as u64,
            statuses: STATUSES.iter().copied().chain(["other"]).zip(counts).filter(|(_, n)| *n > 0).collect(),
            provisional: mean_score(merged, "score_composed"),
        }
    }
}

/// The facts the loop has for the view, besides what is read from the status folder.
pub struct Facts<'a> {
    pub version: Version,
    pub plan: Option<RoutePlan>,
    /// The counts of the merged results file.
    pub tally: &'a Tally,
    /// Records each worker has of its own routes, in worker order.
    pub routes_done: &'a [u64],
    pub end: Option<&'a End>,
    pub heartbeat: Duration,
    pub job_deadline: Option<Duration>,
}

/// `name` in logcopy's own spelling when it is a run of a route `assigned` holds; `None` otherwise.
pub fn assigned_route(version: Version, assigned: Option<&Assigned>, name: &str) -> Option<String> {
    let a = assigned?;
    if !a.contains(version, name) {
        return None;
    }
    let (id, rep) = parse_name(version, name)?;
    Some(RouteId::of(version, id, rep).to_string())
}

fn record(root: &Root, role: Role, worker: WorkerId) -> Option<Record> {
    match Record::read(root, &volume::status::volume_path(role, worker)) {
        Ok(Some(r)) if r.role == role && r.worker == worker => Some(r),
        _ => None,
    }
}

/// One worker, from its markers and records; route names only when assigned to it.
fn worker(root: &Root, set: &StatusSet, f: &Facts, id: u32) -> WorkerView {
    let wid = WorkerId(id);
    let (sim, agent) = (record(root, Role::Simulator, wid), record(root, Role::Agent, wid));
    let (s, a) =
        (side_state(set, sim.as_ref(), Role::Simulator, wid), side_state(set, agent.as_ref(), Role::Agent, wid));
    // The worker's state: a side's end for good first, then a restart, then the agent's.
    let state = [State::Failed, State::Cancelled, State::Restarting]
        .into_iter()
        .map(State::as_str)
        .find(|st| s == *st || a == *st)
        .unwrap_or(if a == "not-started" && s != "not-started" { s } else { a });
    let assigned = f.plan.map(|p| p.assigned(id));
    let records: Vec<&Record> = [sim.as_ref(), agent.as_ref()].into_iter().flatten().collect();
    let attempt = records
        .iter()
        .map(|r| r.attempt)
        .max()
        .or_else(|| Role::ALL.iter().filter_map(|&r| set.starts(r, wid).last().map(|a| a.0)).max());
    let max_attempts = records.iter().map(|r| r.max_attempts).max();
    let times = records.iter().flat_map(|r| r.changes.iter().map(|c| c.at).chain(r.last_end.as_ref().map(|e| e.at)));
    let last_activity = times.clone().max();
    let started_at = records.iter().filter_map(|r| r.changes.first().map(|c| c.at)).min();
    let route = agent
        .as_ref()
        .and_then(|r| r.current_route.as_deref())
        .and_then(|n| assigned_route(f.version, assigned.as_ref(), n));
    let moving = matches!(a, "running" | "done");
    let last_end =
        records.iter().filter_map(|r| r.last_end.as_ref()).max_by_key(|e| (e.at, e.side == Role::Agent)).map(|e| {
            EndView {
                side: e.side,
                reason: e.reason,
                attempt: e.attempt,
                exit: e.exit,
                at: e.at,
                route: if moving || matches!(e.reason, Reason::Finished) { None } else { route.clone() },
            }
        });
    let ended = matches!(a, "done" | "failed" | "cancelled");
    WorkerView {
        id,
        state,
        routes_done: f.routes_done.get(id as usize - 1).copied().unwrap_or(0),
        routes_assigned: assigned.map(|a| a.runs()),
        current_route: route.filter(|_| !ended),
        attempt,
        max_attempts,
        last_activity,
        restarts: u32::try_from(Role::ALL.iter().map(|&r| set.crashes(r, wid).len()).max().unwrap_or(0))
            .unwrap_or(u32::MAX),
        last_end,
        started_at,
        idle_timeout_ms: records.iter().filter_map(|r| r.idle_timeout_ms).max(),
        reruns: agent
            .as_ref()
            .map(|r| r.reruns.iter().filter_map(|n| assigned_route(f.version, assigned.as_ref(), n)).collect())
            .unwrap_or_default(),
    }
}

fn merged_records(merged: Option<&Object>) -> &[Value] {
    merged
        .and_then(|m| m.get("_checkpoint"))
        .and_then(Value::as_object)
        .and_then(|c| c.get("records"))
        .and_then(Value::as_array)
        .map_or(&[][..], |a| a)
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Int(n) => Some(*n as f64),
        Value::Float(x) if x.is_finite() => Some(*x),
        _ => None,
    }
}

/// The mean of each record's `scores.<key>` over the records that have a finite one.
pub fn mean_score(merged: Option<&Object>, key: &str) -> Option<(f64, u64)> {
    let (mut sum, mut n) = (0.0, 0u64);
    for r in merged_records(merged) {
        if let Some(x) =
            number(r.as_object().and_then(|r| r.get("scores")).and_then(Value::as_object).and_then(|s| s.get(key)))
        {
            sum += x;
            n += 1;
        }
    }
    (n > 0).then(|| (sum / n as f64, n))
}

/// The view of a run, read from the status folder beneath `root` (markers, records) and the loop's facts.
pub fn build(root: &Root, set: &StatusSet, workers: u32, f: &Facts) -> RunView {
    let workers: Vec<WorkerView> = (1..=workers).map(|i| worker(root, set, f, i)).collect();
    let routes_done = f.tally.routes_done;
    let routes_assigned = f.plan.map(|p| (1..=p.workers).map(|i| p.assigned(i).runs()).sum());
    let phase = phase(set, &workers, routes_done, routes_assigned, f.end);
    RunView {
        phase,
        workers,
        routes_done,
        routes_assigned,
        statuses: f.tally.statuses.clone(),
        provisional: f.tally.provisional,
        heartbeat: f.heartbeat,
        job_deadline: f.job_deadline,
    }
}

fn phase(set: &StatusSet, workers: &[WorkerView], done: u64, assigned: Option<u64>, end: Option<&End>) -> Phase {
    match end {
        Some(End::Completed { finished: true, .. }) => return Phase::Finished,
        Some(End::Cancelled { .. }) => return Phase::Cancelled,
        Some(End::Completed { finished: false, reason }) => return Phase::Failed(participant_reason(reason, workers)),
        Some(End::Terminated | End::Once) | None => {}
    }
    if set.any_cancel() {
        return Phase::Cancelled;
    }
    if workers.iter().all(|w| w.state == "not-started") {
        return Phase::Starting;
    }
    if let Some(w) = workers.iter().find(|w| w.state == "restarting") {
        return Phase::Restarting(w.id);
    }
    let all_ended = workers.iter().all(|w| matches!(w.state, "done" | "failed"));
    if all_ended || assigned.is_some_and(|a| done >= a) {
        return Phase::Finishing;
    }
    if done == 0 && workers.iter().all(|w| matches!(w.state, "not-started" | "starting" | "waiting-for-peer")) {
        return Phase::Starting;
    }
    Phase::Running
}

/// A reason's words for the participant.
fn reason_words(r: Reason) -> &'static str {
    match r {
        Reason::Finished => "finished",
        Reason::SimulatorCrashed => "the simulator crashed",
        Reason::EvaluatorCrashed => "the evaluator crashed",
        Reason::SimulatorNotReady => "the simulator was not ready in time",
        Reason::Hang => "no output within the idle timeout",
        Reason::AgentSetupFailed => "the agent could not be set up",
        Reason::SensorsRejected => "the agent's sensors were rejected",
        Reason::SpawnFailed => "a process could not be started",
        Reason::AttemptBudgetSpent => "the attempt budget is spent",
        Reason::PeerFailed => "its peer failed",
        Reason::Cancelled => "cancelled",
        Reason::Terminated => "stopped with its container",
        Reason::Unknown => "an unknown reason",
    }
}

/// The run's end reason for the participant: the log's reason, each part of which logcopy composed from counts
/// and the route split, with the parts that name a marker or suspect the participant rewritten neutrally.
pub fn participant_reason(reason: &str, workers: &[WorkerView]) -> String {
    let parts: Vec<String> = reason
        .split("; ")
        .map(|part| {
            if part.starts_with("a cancel marker that logcopy did not write") {
                return "the workers stopped on a cancel request that EvalAI does not confirm".to_string();
            }
            let failed = part
                .strip_prefix("worker ")
                .and_then(|rest| rest.split_once(" failed ("))
                .and_then(|(id, _)| id.parse::<u32>().ok());
            match failed {
                Some(id) => match workers.iter().find(|w| w.id == id).and_then(WorkerView::failure) {
                    Some(e) => format!("worker {id} failed: {}", reason_words(e.reason)),
                    None => format!("worker {id} failed"),
                },
                None => part.to_string(),
            }
        })
        .collect();
    parts.join("; ")
}

/// `3h 02m`, `12m 05s`, `40s`.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

/// A limit in milliseconds: whole seconds as [`span`], else seconds with a decimal.
fn millis_span(ms: u32) -> String {
    if ms.is_multiple_of(1000) { span(i64::from(ms / 1000)) } else { format!("{:.1}s", f64::from(ms) / 1000.0) }
}

/// The routes run again, as the block lists them after their count: each id once, with its count when over one,
/// in worker order; at most [`MAX_RERUNS_SHOWN`], the others counted. Empty when no record names one.
fn reruns_words(workers: &[WorkerView]) -> String {
    let mut ids: Vec<(&str, u32)> = Vec::new();
    for r in workers.iter().flat_map(|w| &w.reruns) {
        match ids.iter_mut().find(|(id, _)| *id == r.as_str()) {
            Some((_, n)) => *n += 1,
            None => ids.push((r, 1)),
        }
    }
    if ids.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = ids
        .iter()
        .take(MAX_RERUNS_SHOWN)
        .map(|(id, n)| if *n > 1 { format!("{id} ({n} times)") } else { id.to_string() })
        .collect();
    let more = ids.len().saturating_sub(MAX_RERUNS_SHOWN);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!(" ({}{more})", shown.join(", "))
}

fn exit_words(exit: Option<ExitStatus>) -> String {
    match exit {
        Some(ExitStatus::Code(c)) => format!(", exit code {c}"),
        Some(ExitStatus::Signal(n)) => format!(", signal {n}"),
        None => String::new(),
    }
}

fn attempt_words(attempt: u32, max: Option<u32>) -> String {
    match max {
        Some(m) => format!("attempt {} of {m}", u64::from(attempt) + 1),
        None => format!("attempt {}", u64::from(attempt) + 1),
    }
}

/// Keeps ASCII and cuts at `max` bytes (on a line end when it can).
fn ascii_bounded(s: String, max: usize) -> String {
    let mut s: String = s.chars().map(|c| if c.is_ascii() { c } else { '?' }).collect();
    if s.len() > max {
        let cut = s[..max].rfind('\n').map_or(max, |i| i + 1);
        s.truncate(cut);
        s.push_str("(cut)\n");
    }
    s
}

/// The most bytes of the block, and of stderr.
pub const MAX_BYTES: usize = 16 * 1024;

/// The run status block. `now` (Unix seconds) fills the clock fields; `None` renders the block's key: the block
/// without them, which changes only when the state does.
pub fn render_block(v: &RunView, now: Option<i64>) -> String {
    let mut s = String::from("Run status");
    if let Some(now) = now {
        s.push_str(&format!(" (as of {})", volume::time::utc_timestamp(now)));
    }
    s.push('\n');
    s.push_str(&format!("- State: {}\n", v.phase.words()));
    match v.routes_assigned {
        Some(a) => s.push_str(&format!("- Routes done: {} out of the {a} assigned\n", v.routes_done)),
        None => s.push_str(&format!("- Routes done: {} (the assigned total is not known)\n", v.routes_done)),
    }
    s.push_str("- Workers:\n");
    for w in v.workers.iter().take(MAX_WORKER_LINES) {
        let routes = match w.routes_assigned {
            Some(a) => format!("{}/{a} routes", w.routes_done),
            None => format!("{} routes", w.routes_done),
        };
        let mut line = format!("  - worker {}: {}; {routes}", w.id, w.state);
        if let Some(r) = &w.current_route {
            line.push_str(&format!("; on {r}"));
        }
        if let Some(a) = w.attempt {
            line.push_str(&format!("; {}", attempt_words(a, w.max_attempts)));
        }
        if w.restarts > 0 {
            line.push_str(&format!("; {} restart(s) after a crash", w.restarts));
            if let Some(e) = w.failure() {
                line.push_str(&format!(" (last: {}, {} side)", reason_words(e.reason), e.side));
            }
        }
        if let (Some(now), Some(t)) = (now, w.last_activity) {
            line.push_str(&format!("; last activity {} ({} ago)", volume::time::utc_timestamp(t), span(now - t)));
        }
        s.push_str(&line);
        s.push('\n');
    }
    if v.workers.len() > MAX_WORKER_LINES {
        s.push_str(&format!("  - and {} more workers\n", v.workers.len() - MAX_WORKER_LINES));
    }
    if !v.statuses.is_empty() {
        let list: Vec<String> = v.statuses.iter().map(|(k, n)| format!("{n} {k}")).collect();
        s.push_str(&format!("- Routes by status: {}\n", list.join(", ")));
    }
    let restarts: u64 = v.workers.iter().map(|w| u64::from(w.restarts)).sum();
    let line = format!(
        "- Simulator restarts after a crash: {restarts} (each restarts its worker pair); routes run again from \
         their start: {restarts}{}",
        reruns_words(&v.workers)
    );
    s.push_str(&line);
    s.push('\n');
    if let Some(now) = now {
        match v.workers.iter().filter_map(|w| w.started_at).min() {
            Some(start) => {
                let elapsed = (now - start).max(0);
                let mut line = format!("- Elapsed: {}", span(elapsed));
                match v.routes_assigned {
                    _ if v.phase.terminal() => {}
                    Some(a) if v.routes_done > 0 && elapsed > 0 && a > v.routes_done => {
                        let per_route = elapsed as f64 / v.routes_done as f64;
                        let eta = (per_route * (a - v.routes_done) as f64).round() as i64;
                        line.push_str(&format!(
                            "; ETA about {} (at the measured {} per route)",
                            span(eta),
                            span(per_route.round() as i64)
                        ));
                    }
                    _ => line.push_str("; ETA not known yet"),
                }
                s.push_str(&line);
                s.push('\n');
            }
            None => s.push_str("- Elapsed: not known (no status records)\n"),
        }
    }
    if let Some((score, n)) = v.provisional {
        s.push_str(&format!(
            "- Provisional driving score (mean over the {n} routes done, not the final score): {score:.3}\n"
        ));
    }
    let budget = v.workers.iter().filter_map(|w| w.max_attempts).max();
    let mut budgets = Vec::new();
    budgets.push(match budget {
        Some(m) => format!("{m} attempts per worker"),
        None => "attempts per worker not known (no status record)".to_string(),
    });
    budgets.push(match v.workers.iter().filter_map(|w| w.idle_timeout_ms).max() {
        Some(ms) => format!("an evaluator counts as hung after {} without output", millis_span(ms)),
        None => "hang timeout not known (no status record says it)".to_string(),
    });
    budgets.push(match v.job_deadline {
        Some(d) => format!("Job deadline {}", span(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))),
        None => "Job deadline not set".to_string(),
    });
    budgets.push(format!("status refreshed at least every {}", span(v.heartbeat.as_secs() as i64)));
    s.push_str(&format!("- Budgets: {}\n", budgets.join("; ")));
    s.push('\n');
    ascii_bounded(s, MAX_BYTES)
}

/// EvalAI's `stderr`: on every failure, the classified reason; empty when nothing failed.
pub fn render_stderr(v: &RunView) -> String {
    let mut s = String::new();
    if let Phase::Failed(why) = &v.phase {
        s.push_str(&format!("The submission failed: {why}\n"));
    }
    let failing: Vec<&WorkerView> = v.workers.iter().filter(|w| w.failure().is_some()).collect();
    for w in failing.iter().take(MAX_WORKER_LINES) {
        let Some(e) = w.failure() else { continue };
        let mut line = format!(
            "worker {}: {} ({} side{}), {}",
            w.id,
            reason_words(e.reason),
            e.side,
            exit_words(e.exit),
            attempt_words(e.attempt, w.max_attempts)
        );
        if let Some(r) = &e.route {
            line.push_str(&format!(", on {r}"));
        }
        line.push_str(&format!(", at {}", volume::time::utc_timestamp(e.at)));
        let saved = match w.routes_assigned {
            Some(a) => format!("results of {} of its {a} routes", w.routes_done),
            None => format!("results of {} routes", w.routes_done),
        };
        line.push_str(&format!("; saved: {saved}; now {}\n", w.state));
        s.push_str(&line);
    }
    if failing.len() > MAX_WORKER_LINES {
        s.push_str(&format!("and {} more workers with a failure\n", failing.len() - MAX_WORKER_LINES));
    }
    ascii_bounded(s, MAX_BYTES)
}

/// `results.json` with the three score metrics averaged over the routes done (`--partial-scores provisional`),
/// rounded to 3 decimals as upstream's global record; the other metrics stay 0.
pub fn provisional_results(version: Version, merged: Option<&Object>) -> Option<String> {
    let mut v = crate::results::evalai::results_value(version, None).ok()?;
    let keys = [
        ("Driving score", "score_composed"),
        ("Route completion", "score_route"),
        ("Infraction penalty", "score_penalty"),
    ];
    if let Value::Array(entries) = &mut v
        && let Some(Value::Object(entry)) = std::sync::Arc::make_mut(entries).first_mut()
        && let Some(Value::Object(acc)) = std::sync::Arc::make_mut(entry).get_mut("accuracies")
    {
        let acc = std::sync::Arc::make_mut(acc);
        for (name, key) in keys {
            if let Some((mean, _)) = mean_score(merged, key) {
                acc.insert(name, Value::Float((mean * 1000.0).round() / 1000.0));
            }
        }
    }
    Some(crate::results::pyjson::to_pretty(&v, version.sort_keys()))
}

/// The block, keyed: re-rendered with the clock only when the state changed or a heartbeat passed (never after a
/// terminal state).
#[derive(Debug, Default)]
pub struct Block {
    key: Option<String>,
    at: i64,
    text: String,
}

impl Block {
    /// A block whose last rendering is the one that opens `stdout` (the file an earlier logcopy left on the
    /// volume): when the state has not changed, a restart keeps it, time included, so that it rewrites and uploads
    /// nothing.
    pub fn resumed(stdout: &str) -> Block {
        let seed = stdout
            .strip_prefix("Run status (as of ")
            .and_then(|rest| rest.get(..23))
            .and_then(|t| parse_utc(t).map(|at| (at, stdout.split_once("\n\n").map(|(b, _)| format!("{b}\n\n")))));
        match seed {
            Some((at, Some(text))) => Block { key: None, at, text },
            _ => Block::default(),
        }
    }

    /// The block for `v` at `now`: the last one when neither its key changed nor a heartbeat passed.
    pub fn update(&mut self, v: &RunView, now: i64) -> &str {
        let key = render_block(v, None);
        if self.key.is_none() && !self.text.is_empty() && render_block(v, Some(self.at)) == self.text {
            self.key = Some(key.clone());
        }
        let beat = !v.phase.terminal() && now.saturating_sub(self.at) >= v.heartbeat.as_secs() as i64;
        if self.key.as_deref() != Some(key.as_str()) || beat {
            self.text = render_block(v, Some(now));
            self.key = Some(key);
            self.at = now;
        }
        &self.text
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` ([`volume::time::utc_timestamp`]) back to Unix seconds; `None` for anything else.
fn parse_utc(s: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from the civil date (H. Hinnant's algorithm), the inverse of utc_timestamp's.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let t = days * 86_400 + hh * 3600 + mm * 60 + ss;
    (volume::time::utc_timestamp(t) == s).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::pyjson::parse;

    fn plan() -> Option<RoutePlan> {
        Some(RoutePlan { routes: 20, repetitions: 1, workers: 4 })
    }

    #[test]
    fn a_route_id_is_shown_only_when_assigned_and_in_logcopys_spelling() {
        let a = plan().map(|p| p.assigned(2));
        let shown = |n: &str| assigned_route(Version::V2, a.as_ref(), n);
        assert_eq!(shown("RouteScenario_7_rep0").as_deref(), Some("RouteScenario_7_rep0"));
        assert_eq!(shown("RouteScenario_17_rep0"), None, "another worker's route");
        assert_eq!(shown("RouteScenario_7_rep1"), None, "a repetition not run");
        assert_eq!(shown("RouteScenario_007_rep0"), None, "not a plain number");
        assert_eq!(shown("SECRET-ROUTE-XYZ"), None);
        assert_eq!(assigned_route(Version::V2, None, "RouteScenario_7_rep0"), None, "no plan: nothing is assigned");
    }

    #[test]
    fn the_participants_reason_names_no_marker_and_suspects_nobody() {
        let forged = "a cancel marker that logcopy did not write (simulation.cancel) stopped the workers, and EvalAI \
                      reports the submission \"running\", not cancelled: the marker was forged (by the participant's code?)";
        let r = participant_reason(forged, &[]);
        assert_eq!(r, "the workers stopped on a cancel request that EvalAI does not confirm");
        let r = participant_reason("worker 2 ended with 4 of 5 routes recorded; worker 4 failed (agent-4.failed)", &[]);
        assert_eq!(r, "worker 2 ended with 4 of 5 routes recorded; worker 4 failed");
    }

    #[test]
    fn provisional_scores_are_the_means_over_the_routes_done() {
        let merged = parse(
            br#"{"_checkpoint": {"global_record": {}, "progress": [2, 4], "records": [
                {"scores": {"score_composed": 50.0, "score_route": 100, "score_penalty": 0.5}},
                {"scores": {"score_composed": 25.5, "score_route": 51.0, "score_penalty": 0.5}}]}}"#,
        )
        .unwrap();
        let r = provisional_results(Version::V2, merged.as_object()).unwrap();
        assert!(r.contains("\"Driving score\": 37.75,"), "{r}");
        assert!(r.contains("\"Route completion\": 75.5,"), "{r}");
        assert!(r.contains("\"Infraction penalty\": 0.5,"), "{r}");
        assert!(r.contains("\"Collisions layout\": 0,"), "{r}");
        assert_eq!(mean_score(None, "score_composed"), None);
    }

    #[test]
    fn the_routes_run_again_are_listed_once_each_and_bounded() {
        let w = |id: u32, reruns: &[&str]| WorkerView {
            id,
            state: "running",
            routes_done: 0,
            routes_assigned: None,
            current_route: None,
            attempt: None,
            max_attempts: None,
            last_activity: None,
            restarts: 0,
            last_end: None,
            started_at: None,
            idle_timeout_ms: None,
            reruns: reruns.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(reruns_words(&[w(1, &[])]), "");
        let two = [w(1, &["RouteScenario_3_rep0", "RouteScenario_3_rep0"]), w(2, &["RouteScenario_8_rep0"])];
        assert_eq!(reruns_words(&two), " (RouteScenario_3_rep0 (2 times), RouteScenario_8_rep0)");
        let many: Vec<String> = (0..12).map(|i| format!("RouteScenario_{i}_rep0")).collect();
        let many = [w(1, &many.iter().map(String::as_str).collect::<Vec<_>>())];
        let words = reruns_words(&many);
        assert!(words.ends_with("RouteScenario_9_rep0 and 2 more)"), "{words}");
        assert_eq!(millis_span(800_000), "13m 20s");
        assert_eq!(millis_span(1_500), "1.5s");
    }

    #[test]
    fn utc_timestamps_read_back() {
        for t in [0, 1_764_651_600, 951_782_400, 4_102_444_799] {
            assert_eq!(parse_utc(&volume::time::utc_timestamp(t)), Some(t));
        }
        assert_eq!(parse_utc("2025-02-30 00:00:00 UTC"), None);
        assert_eq!(parse_utc("not a time"), None);
    }

    #[test]
    fn spans_and_bounds() {
        assert_eq!(span(40), "40s");
        assert_eq!(span(725), "12m 05s");
        assert_eq!(span(3 * 3600 + 125), "3h 02m");
        assert_eq!(span(-5), "0s");
        let long = ascii_bounded(format!("{}\n", "\u{e9}x".repeat(20_000)), MAX_BYTES);
        assert!(long.is_ascii() && long.len() <= MAX_BYTES + 8, "{}", long.len());
    }
}

//! The run loop of `logcopy run`: volume events -> merge -> outputs -> sinks -> end conditions.
//!
//! Replaces the 10 s polling loop of upstream's `run_logcopy.sh`. One task owns the volume: it reacts to file
//! events (debounced) and to a periodic rescan, re-reads a worker's results file only when it changed, keeps
//! the last good parse of a file caught half-written, merges, and writes the merged file and EvalAI's three
//! files atomically. It hands each new result to the sinks (EvalAI, S3, DynamoDB) through a `watch`
//! channel and decides when the run ends:
//! - every worker has ended (both done markers, or a `.failed` marker): final merge and publish, `logcopy.done`;
//! - EvalAI reports the submission cancelled: cancel markers for every worker, final flush, no partial PUT;
//! - a cancel marker that this logcopy did not write (left by an earlier logcopy, or forged by the participant's
//!   code, which can write the status folder): a claim, not a command. It is logged and EvalAI's status is read at
//!   once: `cancelled` ends the run as cancelled; any other status means the marker was forged, and since the
//!   workers have stopped on it, the run ends incomplete (FAILED) with that reason;
//! - SIGTERM or SIGINT: final flush within the flush budget.
//!
//! Every handled end exits 0: under `restartPolicy: OnFailure` a non-zero exit would restart logcopy and spend the
//! Job's retries. Only bad configuration exits non-zero (2).
//!
//! A cycle (reading the files, merging, writing the outputs with fsyncs) is blocking file work: the task lends the
//! volume state to a thread of its own for it and takes it back ([`Held`]), so that the runtime's one thread, which
//! the sinks share, never waits on the volume. Cycles stay one at a time, in the loop's order.

use crate::config::{EvalAiTarget, RunConfig, StorageTarget};
use crate::publish::evalai::{EvalAiSettings, EvalAiSink, HttpTransport, Transport, redact_url};
use crate::publish::local::LocalTransport;
use crate::publish::record::RecordSink;
use crate::publish::retry::RetryPolicy;
use crate::publish::s3sync::StorageSink;
use crate::publish::store::{LocalStore, S3Store};
use crate::publish::table::{DynamoTable, ItemKey, LocalTable};
use crate::publish::{End, FinalDecision, Lane, Outputs, SinkEvent, Snapshot, release_free_memory, spawn_supervised};
use crate::restore::manifest_target;
use crate::results::file::{self, Loaded};
use crate::results::model::route_sort_key;
use crate::results::pyjson::Value;
use crate::results::{self, Input, Version, evalai};
use crate::routes::{Assigned, Missing, SHOWN};
use crate::volume::watch::{Debounce, watch};
use crate::volume::{FileStamp, Layout, Root};
use std::collections::HashSet;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, watch as watch_channel};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};
use volume::markers::{Marker, Role, StatusSet, WorkerId};
use volume::results::RouteId;

/// A setup failure that is the operator's to fix (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--logs / LOGS_DIR: {path}: {reason}")]
    Volume { path: PathBuf, reason: String },
    #[error("EvalAI client: {0}")]
    Client(String),
}

/// One worker's results file and what logcopy knows of it.
struct Worker {
    id: u32,
    rel: String,
    path: PathBuf,
    stamp: Option<FileStamp>,
    /// The last good parse: never replaced by nothing.
    good: Option<Value>,
    /// The last problem logged, so each is logged once.
    problem: Option<String>,
    /// The routes it was given (`--route-count`); `None`: its own progress decides.
    assigned: Option<Assigned>,
}

impl Worker {
    fn report(&mut self, problem: String) {
        if self.problem.as_ref() != Some(&problem) {
            warn!(worker = self.id, file = %self.rel, "{problem}");
            self.problem = Some(problem);
        }
    }

    /// Re-reads the file when it changed; `true` when its data changed.
    fn refresh(&mut self, root: &Root, max_bytes: u64) -> bool {
        let stamp = match FileStamp::of(root, &self.path) {
            Ok(s) => s,
            Err(e) => {
                self.report(format!("cannot stat the results file: {e}"));
                return false;
            }
        };
        if stamp == self.stamp {
            return false;
        }
        self.stamp = stamp;
        let loaded = file::load_beneath(root, &self.path, max_bytes);
        if self.good.is_none() && !matches!(loaded, Ok(Loaded::Data(_))) {
            // Nothing good of our own yet (a fresh start, a restart) and the file caught half-written: the agent
            // supervisor's last good copy beside it is what the evaluator last wrote whole. Publishing less than
            // that would regress what EvalAI already shows.
            let copy = volume::layout::last_good_path(&self.path);
            if let Ok(Loaded::Data(v)) = file::load_beneath(root, &copy, max_bytes) {
                warn!(
                    worker = self.id,
                    file = %self.rel,
                    "the results file does not parse now; using the supervisor's last good copy beside it"
                );
                self.good = Some(v);
                return true;
            }
        }
        let keeping = if self.good.is_some() { "; keeping its last good parse" } else { "" };
        match loaded {
            Ok(Loaded::Data(v)) => {
                self.problem = None;
                self.good = Some(v);
                true
            }
            Ok(Loaded::Missing) => {
                if self.good.is_some() {
                    self.report(format!("the results file disappeared{keeping}"));
                }
                false
            }
            Ok(Loaded::NoData { reason }) => {
                self.report(format!("the results file holds no data yet ({reason}){keeping}"));
                false
            }
            Err(e) => {
                self.report(format!("unusable results file: {e}{keeping}"));
                false
            }
        }
    }

    /// (records present, route total) from the last good parse.
    fn progress(&self) -> Option<(usize, i64)> {
        let cp = self.good.as_ref()?.as_object()?.get("_checkpoint")?.as_object()?;
        let records = cp.get("records")?.as_array()?.len();
        let total = match cp.get("progress")?.as_array()?.get(1)? {
            Value::Int(t) => *t,
            _ => return None,
        };
        Some((records, total))
    }

    /// `Ok` when the worker has recorded what it had to, else what it lacks. With the routes it was given: each has a
    /// record (records of other routes do not count), and, as without them, its progress is complete, so that the
    /// merge can compute the global record. Without: its progress alone, upstream's rule.
    fn verdict(&self, version: Version) -> Result<(), String> {
        let progress = self.progress();
        let Some(a) = &self.assigned else {
            return match progress {
                Some((done, total)) if total > 0 && done as i64 >= total => Ok(()),
                Some((done, total)) => Err(format!("ended with {done} of {total} routes recorded")),
                None => Err("ended without a results file".into()),
            };
        };
        if a.is_empty() {
            return Ok(());
        }
        let Some((records, total)) = progress else {
            return Err(format!("ended without a results file (its routes: {})", a.describe()));
        };
        let ids = self.route_ids();
        let lacking = a.missing(version, ids.iter().map(String::as_str), &mut Missing::default());
        if lacking > 0 {
            let (runs, routes) = (a.runs(), a.describe());
            return Err(format!("ended with {} of the {runs} routes it was given ({routes}) recorded", runs - lacking));
        }
        let outside = ids.iter().filter(|id| !a.contains(version, id)).count();
        if total <= 0 || ((records - outside) as i64) < total {
            return Err(format!("recorded the {} routes it was given, but its progress counts {total}", a.runs()));
        }
        Ok(())
    }

    fn route_ids(&self) -> Vec<String> {
        let Some(cp) = self.good.as_ref().and_then(Value::as_object).and_then(|o| o.get("_checkpoint")) else {
            return Vec::new();
        };
        cp.as_object()
            .and_then(|c| c.get("records"))
            .and_then(Value::as_array)
            .map(|recs| {
                recs.iter().filter_map(|r| r.as_object()?.get("route_id")?.as_str().map(str::to_string)).collect()
            })
            .unwrap_or_default()
    }
}

/// How a worker ended, from the markers and its results.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WorkerEnd {
    Complete,
    Incomplete { reason: String },
    Failed { side: Role },
}

struct State {
    cfg: RunConfig,
    /// The volume's root, opened once: every read and write of the volume goes beneath it.
    root: Arc<Root>,
    layout: Layout,
    workers: Vec<Worker>,
    version: Version,
    outputs: Option<Arc<Outputs>>,
    /// The bytes last written to each output file, to write only what changed.
    written: Vec<(PathBuf, String)>,
    logged: HashSet<String>,
    markers: StatusSet,
    /// Cancel markers this logcopy wrote.
    wrote_cancel: bool,
    /// Why the last merge (or its conversion) failed; `None` after a good one. A run cannot end FINISHED on it.
    merge_error: Option<String>,
}

impl State {
    fn new(cfg: RunConfig, root: Arc<Root>) -> Self {
        let layout = Layout {
            root: cfg.logs.clone(),
            results_pattern: cfg.results_pattern.clone(),
            merged: cfg.merged_path.clone(),
        };
        let workers = (1..=cfg.workers)
            .map(|id| Worker {
                id,
                rel: layout.results_rel(id),
                path: layout.results_file(id),
                stamp: None,
                good: None,
                problem: None,
                assigned: cfg.routes.map(|plan| plan.assigned(id)),
            })
            .collect();
        match cfg.routes {
            None => warn!(
                "no --route-count / ROUTE_COUNT: a worker counts as complete when its own progress says so \
                 (upstream's rule), which its evaluator can misreport"
            ),
            Some(plan) if plan.routes < plan.workers => warn!(
                routes = plan.routes,
                workers = plan.workers,
                "fewer routes than workers: {} workers are given no route and count as complete once they end",
                plan.workers - plan.routes
            ),
            Some(_) => {}
        }
        State {
            version: cfg.version,
            root,
            layout,
            workers,
            cfg,
            outputs: None,
            written: Vec::new(),
            logged: HashSet::new(),
            markers: StatusSet::default(),
            wrote_cancel: false,
            merge_error: None,
        }
    }

    fn log_once(&mut self, key: String, f: impl FnOnce(&str)) {
        if self.logged.insert(key.clone()) {
            f(&key);
        }
    }

    /// Reads the markers and the results files; merges and writes the outputs when something changed.
    /// Returns `true` when the outputs changed.
    fn cycle(&mut self) -> bool {
        match StatusSet::read(&self.root, self.layout.status_dir()) {
            Ok(m) => self.markers = m,
            Err(e) => {
                let dir = self.root.display(self.layout.status_dir());
                self.log_once(format!("cannot read {}: {e}", dir.display()), |m| warn!("{m}"))
            }
        }
        let max = self.cfg.max_results_bytes;
        let mut changed = false;
        for w in &mut self.workers {
            changed |= w.refresh(&self.root, max);
        }
        if !changed && self.outputs.is_some() {
            return false;
        }
        self.merge()
    }

    fn merge(&mut self) -> bool {
        let inputs: Vec<Input> = self
            .workers
            .iter()
            .filter_map(|w| w.good.clone().map(|data| Input { name: w.rel.clone(), data }))
            .collect();
        self.version = match results::detect_all(inputs.iter().map(|i| (i.name.as_str(), &i.data))) {
            Ok(Some(v)) => {
                if v != self.cfg.version {
                    let cfgv = self.cfg.version;
                    self.log_once(
                        format!("the workers' files are Leaderboard {v}, but LEADERBOARD_VERSION is {cfgv}; using {v}"),
                        |m| error!("{m}"),
                    );
                }
                v
            }
            Ok(None) => self.cfg.version,
            Err(e) => {
                self.log_once(format!("{e}; using LEADERBOARD_VERSION {}", self.cfg.version), |m| error!("{m}"));
                self.cfg.version
            }
        };
        let inputs = self.keep_assigned_routes(inputs);
        let merged = match results::merge(self.version, &inputs) {
            Ok(m) => m,
            Err(f) => {
                let msg = format!("merge failed, the last good results stay published: {}", f.error);
                self.log_once(msg, |m| error!("{m}"));
                self.merge_error = Some(f.error.to_string());
                return false;
            }
        };
        for w in &merged.warnings {
            self.log_once(w.clone(), |m| warn!("{m}"));
        }
        let obj = merged.value.as_object();
        let converted =
            evalai::results_json(self.version, obj).and_then(|r| Ok((r, evalai::stdout_txt(self.version, obj)?)));
        let (results, stdout) = match converted {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("EvalAI conversion failed, the last good results stay published: {e}");
                self.log_once(msg, |m| error!("{m}"));
                self.merge_error = Some(format!("the EvalAI conversion failed: {e}"));
                return false;
            }
        };
        self.merge_error = None;
        let refused = non_finite_metric(&results).map(|metric| {
            let from = self.workers.iter().filter(|w| w.good.as_ref().is_some_and(has_non_finite)).map(|w| w.id);
            let from: Vec<String> = from.map(|id| id.to_string()).collect();
            let msg = format!(
                "the metric {metric:?} is not a finite number (from worker {}): EvalAI refuses such a result (400), \
                 so no partial update is sent until it is",
                if from.is_empty() { "?".to_string() } else { from.join(", ") }
            );
            self.log_once(msg.clone(), |m| error!("{m}"));
            format!("the metric {metric:?} is not a finite number")
        });
        let outputs = Outputs { merged: merged.to_bytes(), results, stdout, refused };
        if self.outputs.as_deref() == Some(&outputs) {
            return false;
        }
        self.write_outputs(&outputs);
        self.outputs = Some(Arc::new(outputs));
        true
    }

    /// Leaves the records of routes a worker was not given out of its input, so that they are never merged over
    /// another worker's routes; each such drop is logged once, with the file and the route ids.
    fn keep_assigned_routes(&mut self, mut inputs: Vec<Input>) -> Vec<Input> {
        let mut drops = Vec::new();
        for (w, input) in self.workers.iter().filter(|w| w.good.is_some()).zip(&mut inputs) {
            let Some(a) = &w.assigned else { continue };
            let Some((kept, dropped)) = a.drop_outside(self.version, &input.data) else { continue };
            input.data = kept;
            let shown = dropped.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
            let more = dropped.len().saturating_sub(SHOWN);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            drops.push(format!(
                "{}: {} record(s) of routes that worker {} was not given (its routes: {}) left out of the merge: \
                 {shown}{more}",
                w.rel,
                dropped.len(),
                w.id,
                a.describe()
            ));
        }
        for m in drops {
            self.log_once(m, |m| warn!("{m}"));
        }
        inputs
    }

    /// Writes the four output files (only those whose bytes changed), each atomically.
    fn write_outputs(&mut self, o: &Outputs) {
        let files = [
            (self.layout.merged_file().to_path_buf(), &o.merged),
            (PathBuf::from(volume::layout::EVALAI_RESULTS), &o.results),
            (PathBuf::from(volume::layout::EVALAI_STDOUT), &o.stdout),
            (PathBuf::from(volume::layout::EVALAI_METADATA), &o.merged),
        ];
        for (path, bytes) in files {
            if self.written.iter().any(|(p, b)| *p == path && b == bytes) {
                continue;
            }
            // After a restart the file on the volume may already hold these bytes: leave it (and its stat) alone.
            if !self.written.iter().any(|(p, _)| *p == path)
                && file::read_beneath(&self.root, &path, bytes.len() as u64 + 1).ok().flatten().as_deref()
                    == Some(bytes.as_bytes())
            {
                self.written.push((path, bytes.clone()));
                continue;
            }
            if let Some(parent) = path.parent() {
                let _ = self.root.create_dir_all(parent);
            }
            match self.root.write_atomic(&path, bytes.as_bytes()) {
                Ok(()) => {
                    self.written.retain(|(p, _)| *p != path);
                    self.written.push((path, bytes.clone()));
                }
                // Logged each time: a full disk must stay visible. The old file stays whole; the next cycle retries.
                Err(e) => error!("{e}"),
            }
        }
    }

    fn worker_end(&self, w: &Worker) -> Option<WorkerEnd> {
        let id = WorkerId(w.id);
        for side in Role::ALL {
            if self.markers.is_failed(side, id) {
                return Some(WorkerEnd::Failed { side });
            }
        }
        if !(self.markers.is_done(Role::Agent, id) && self.markers.is_done(Role::Simulator, id)) {
            return None;
        }
        Some(match w.verdict(self.version) {
            Ok(()) => WorkerEnd::Complete,
            Err(reason) => WorkerEnd::Incomplete { reason },
        })
    }

    /// `Some` once every worker has ended, with the final status decision and its reason.
    fn completion(&self) -> Option<End> {
        let mut problems = Vec::new();
        for w in &self.workers {
            match self.worker_end(w)? {
                WorkerEnd::Complete => {}
                WorkerEnd::Failed { side } => {
                    let marker = Marker::Failed { role: side, worker: WorkerId(w.id) };
                    problems.push(format!("worker {} failed ({marker})", w.id));
                }
                WorkerEnd::Incomplete { reason } => problems.push(format!("worker {} {reason}", w.id)),
            }
        }
        Some(if problems.is_empty() {
            End::Completed { finished: true, reason: "every worker finished all its routes".into() }
        } else {
            End::Completed { finished: false, reason: problems.join("; ") }
        })
    }

    /// Route ids of the submission with no result: at most [`SHOWN`] named, and how many in all. With the routes
    /// each worker was given, those without a record. Without them, the routes that the workers' progress totals
    /// add up to (a worker without a results file is assumed to have as many routes as the others, as upstream
    /// splits them evenly). The work is bounded by the records present, never by a progress total, which the
    /// participant's evaluator writes.
    fn missing_routes(&self) -> Missing {
        let mut out = Missing::default();
        if self.cfg.routes.is_some() {
            for w in &self.workers {
                if let Some(a) = &w.assigned {
                    a.missing(self.version, w.route_ids().iter().map(String::as_str), &mut out);
                }
            }
            return out;
        }
        let totals: Vec<Option<i64>> = self.workers.iter().map(|w| w.progress().map(|(_, t)| t)).collect();
        let Some(typical) = totals.iter().flatten().copied().max() else { return out };
        let total: u128 = totals.iter().map(|t| u128::try_from(t.unwrap_or(typical)).unwrap_or(0)).sum();
        let ids: Vec<String> = self.workers.iter().flat_map(Worker::route_ids).collect();
        let keys: HashSet<(u128, u128)> = ids
            .iter()
            .filter_map(|id| route_sort_key(self.version, id))
            .filter_map(|(r, k)| Some((u128::try_from(r).ok()?, u128::try_from(k).ok()?)))
            .collect();
        let reps = match self.version {
            Version::V2 => keys.iter().map(|k| k.1 + 1).max().unwrap_or(1),
            Version::V1 => 1,
        };
        let routes = total / reps;
        let present = keys.iter().filter(|(r, k)| *r < routes && *k < reps).count() as u128;
        out.count = routes * reps - present;
        // Each step either meets a record or names a route, so this ends after at most records + SHOWN steps.
        let mut named = 0u128;
        'walk: for r in 0..routes {
            for k in 0..reps {
                if out.full() || named == out.count {
                    break 'walk;
                }
                if !keys.contains(&(r, k)) {
                    named += 1;
                    // The walk stops after records + SHOWN steps: `r` and `k` stay far below u64::MAX.
                    let (r, k) = (u64::try_from(r).unwrap_or(u64::MAX), u64::try_from(k).unwrap_or(u64::MAX));
                    out.name(|| RouteId::of(self.version, r, k).to_string());
                }
            }
        }
        out
    }

    fn cancel_marker(&self) -> bool {
        self.markers.any_cancel()
    }

    /// Writes `simulation.cancel` and `simulation-ID.cancel` for every worker.
    fn write_cancel_markers(&mut self) {
        let dir = self.layout.status_dir();
        let mut all = vec![Marker::Cancel];
        all.extend((1..=self.cfg.workers).map(|i| Marker::WorkerCancel { worker: WorkerId(i) }));
        for m in all {
            if let Err(e) = m.create_in(&self.root, dir) {
                error!(marker = %m, "cannot write the cancel marker: {e}");
            }
        }
        self.wrote_cancel = true;
    }

    /// The last word on a completed run, from the final files (re-read by [`Self::final_outputs`]): a final merge
    /// that failed, or a metric EvalAI would refuse, makes it FAILED with that reason, never a FINISHED that
    /// EvalAI answers with 400 (and leaves `running`), nor one that carries an older, shorter result.
    fn final_verdict(&mut self, end: End) -> End {
        let End::Completed { finished, reason } = end else { return end };
        if let Some(e) = &self.merge_error {
            let reason = format!("the final merge of the workers' results failed: {e}");
            // Nothing computed from the final files: no result, no merged file, only the reason.
            self.outputs = Some(Arc::new(Outputs { stdout: format!("{reason}\n"), ..Outputs::default() }));
            return End::Completed { finished: false, reason };
        }
        if let Some(why) = self.outputs.as_ref().and_then(|o| o.refused.clone()) {
            let reason = if finished { why } else { format!("{reason}; {why}") };
            return End::Completed { finished: false, reason };
        }
        End::Completed { finished, reason }
    }

    /// The last cycle before the sinks' final work: re-read everything; on an incomplete end, say what is missing.
    fn final_outputs(&mut self, end: &End) -> Option<Arc<Outputs>> {
        for w in &mut self.workers {
            w.stamp = None;
        }
        self.cycle();
        if let End::Completed { finished: false, reason } = end
            && self.merge_error.is_none()
            && let Some(o) = &self.outputs
        {
            let missing = self.missing_routes();
            let mut note = format!("\nThe submission ended incomplete: {reason}.\n");
            if missing.count > 0 {
                let shown = missing.names.join(", ");
                let more = missing.count - missing.names.len() as u128;
                let more =
                    if more > 0 { format!(" and {more} more ({} in all)", missing.count) } else { String::new() };
                note.push_str(&format!("Routes with no result: {shown}{more}.\n"));
                error!(missing = %missing.count, routes = %shown, "routes with no result");
            }
            let with_note = Outputs { stdout: format!("{}{note}", o.stdout), ..(**o).clone() };
            self.write_outputs(&with_note);
            self.outputs = Some(Arc::new(with_note));
        }
        self.outputs.clone()
    }
}

/// Opens the volume's root (`--logs`), once: everything logcopy reads or writes on the volume goes beneath it.
pub fn open_volume(path: &Path) -> Result<Arc<Root>, SetupError> {
    let bad = |reason: String| SetupError::Volume { path: path.to_path_buf(), reason };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("is not a folder".into())),
        Err(e) => return Err(bad(e.to_string())),
    }
    Root::open(path).map(Arc::new).map_err(|e| bad(e.to_string()))
}

/// Runs `logcopy run` to one of its ends, on the volume opened by [`open_volume`].
pub async fn run(cfg: RunConfig, root: Arc<Root>) -> Result<End, SetupError> {
    let settings = EvalAiSettings {
        challenge_id: cfg.challenge_id,
        submission_id: cfg.submission_id,
        track_id: cfg.track_id,
        rpm: cfg.evalai_rpm,
        status_period: cfg.status_period,
        start_patch: cfg.start_patch,
        final_status: cfg.final_status,
        retry: RetryPolicy::default(),
    };
    let (snap_tx, snap_rx) = watch_channel::channel(Arc::new(Snapshot::default()));
    let (ev_tx, ev_rx) = mpsc::channel(64);
    // The final status EvalAI was given; the DynamoDB record follows it (a cancel on EvalAI is final).
    let decision: FinalDecision = Arc::new(watch_channel::channel(None).0);
    let mut sinks: Vec<JoinHandle<()>> = Vec::new();
    // Every sink is supervised: one that dies is started again (`restarted`: an EvalAI sink then takes its budget
    // as spent for a full window, and sends the newest payload once more).
    fn evalai_sink<T: Transport>(
        t: Arc<T>,
        settings: EvalAiSettings,
        decision: FinalDecision,
    ) -> impl FnMut(bool) -> EvalAiSink<Arc<T>> + Send + 'static {
        move |restarted| {
            let sink = EvalAiSink::new(t.clone(), settings.clone()).with_decision(decision.clone());
            if restarted { sink.restarted() } else { sink }
        }
    }
    sinks.push(match &cfg.evalai {
        EvalAiTarget::Http { base, token } => {
            let t = HttpTransport::new(base, token.clone(), cfg.request_timeout)
                .map_err(|e| SetupError::Client(e.to_string()))?;
            info!(server = %redact_url(base), "publishing to EvalAI");
            spawn_supervised(evalai_sink(Arc::new(t), settings, decision.clone()), snap_rx, ev_tx.clone())
        }
        EvalAiTarget::Local { out } => {
            let t = LocalTransport::new(out).map_err(|e| SetupError::Client(format!("{}: {e}", out.display())))?;
            info!(requests = %t.requests_file().display(), "no EvalAI server configured: EvalAI requests go to the local file");
            spawn_supervised(evalai_sink(Arc::new(t), settings, decision.clone()), snap_rx, ev_tx.clone())
        }
    });
    let prefix = cfg.submission_id.to_string();
    let target = manifest_target(&cfg.storage, &prefix);
    let key = ItemKey { team_id: cfg.team_id.clone(), submission_id: prefix.clone() };
    // The record waits for EvalAI's final status at most half the final budget before it writes the run's own.
    let decision_wait = cfg.final_timeout / 2;
    let (final_status, period, limits) = (cfg.final_status, cfg.logs_period, cfg.uploads);
    match &cfg.storage {
        StorageTarget::Aws { bucket, table } => {
            let sdk = crate::publish::store::sdk_config(cfg.storage_timeout).await;
            let (sdk2, bucket2, root2, prefix2) = (sdk.clone(), bucket.clone(), root.clone(), prefix.clone());
            let store = move |_| {
                StorageSink::new(S3Store::new(&sdk2, &bucket2), root2.clone(), &prefix2, &target, period)
                    .with_limits(limits)
            };
            sinks.push(spawn_supervised(store, snap_tx.subscribe(), ev_tx.clone()));
            let url = format!("s3://{bucket}/{prefix}");
            let (table2, d) = (table.clone(), decision.subscribe());
            let record = move |_| {
                RecordSink::new(DynamoTable::new(&sdk, &table2), key.clone(), url.clone(), final_status, period)
                    .following(d.clone(), decision_wait)
            };
            sinks.push(spawn_supervised(record, snap_tx.subscribe(), ev_tx.clone()));
            info!(bucket, table, "syncing the volume to S3 and recording the submission in DynamoDB");
        }
        StorageTarget::Local { out } => {
            let objects = out.join("s3");
            let (objects2, root2, prefix2) = (objects.clone(), root.clone(), prefix.clone());
            let store = move |_| {
                StorageSink::new(LocalStore::new(&objects2), root2.clone(), &prefix2, &target, period)
                    .with_limits(limits)
            };
            sinks.push(spawn_supervised(store, snap_tx.subscribe(), ev_tx.clone()));
            let url = format!("file://{}/{prefix}", objects.display());
            let item = out.join("dynamodb.json");
            let (item2, d) = (item.clone(), decision.subscribe());
            let record = move |_| {
                RecordSink::new(LocalTable::new(&item2), key.clone(), url.clone(), final_status, period)
                    .following(d.clone(), decision_wait)
            };
            sinks.push(spawn_supervised(record, snap_tx.subscribe(), ev_tx.clone()));
            info!(objects = %objects.display(), item = %item.display(), "no S3 bucket configured: objects and the DynamoDB item go to local files");
        }
    }
    drop((ev_tx, decision));
    Engine { state: Held::new(State::new(cfg, root)), snap_tx, events: ev_rx, sinks, seq: 0, unverified_cancel: None }
        .run()
        .await
}

/// The volume state, which each cycle takes to the volume's own thread and brings back; between two cycles it is
/// here.
struct Held {
    state: Option<State>,
    lane: Lane,
}

const HELD: &str = "the volume state is back after each cycle";

impl Held {
    fn new(state: State) -> Held {
        Held { state: Some(state), lane: Lane::new("logcopy-volume") }
    }

    /// Runs `f` (a cycle, or anything else that reads or writes the volume) on the volume's thread.
    async fn lend<R: Send + 'static>(&mut self, f: impl FnOnce(&mut State) -> R + Send + 'static) -> R {
        let work = |state: &mut State| {
            let r = f(state);
            release_free_memory();
            r
        };
        let (state, r) = self.lane.run(self.state.take().expect(HELD), work).await;
        self.state = Some(state);
        r
    }
}

impl Deref for Held {
    type Target = State;
    fn deref(&self) -> &State {
        self.state.as_ref().expect(HELD)
    }
}

impl DerefMut for Held {
    fn deref_mut(&mut self) -> &mut State {
        self.state.as_mut().expect(HELD)
    }
}

struct Engine {
    state: Held,
    snap_tx: watch_channel::Sender<Arc<Snapshot>>,
    events: mpsc::Receiver<SinkEvent>,
    sinks: Vec<JoinHandle<()>>,
    seq: u64,
    /// A cancel marker that this logcopy did not write, waiting for EvalAI's word (its name).
    unverified_cancel: Option<String>,
}

impl Engine {
    /// Waits (at most `limit`) for EvalAI's answer about an unverified cancel marker: `Ok` when it says cancelled
    /// (cancel markers written, as on any cancel), `Err(status)` otherwise; `None` when no answer came.
    async fn verdict(&mut self, limit: std::time::Duration) -> Option<Result<(), String>> {
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(SinkEvent::Cancelled)) => {
                    self.unverified_cancel = None;
                    self.state.write_cancel_markers();
                    return Some(Ok(()));
                }
                Ok(Some(SinkEvent::Status { status })) => return Some(Err(status.to_string())),
                Ok(Some(SinkEvent::Published { .. })) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// A cancel marker on the volume that this logcopy did not write is a claim, not a command: it is logged, and
    /// EvalAI's status decides (asked at once). `true` when one was found now.
    fn check_cancel_marker(&mut self, when: &str) -> bool {
        if self.unverified_cancel.is_some() || self.state.wrote_cancel {
            return false;
        }
        let Some(name) = self.state.markers.cancel_marker_name() else { return false };
        warn!(
            marker = %name,
            "a cancel marker that this logcopy did not write is on the volume {when}: asking EvalAI whether the \
             submission is cancelled (a marker left by an earlier logcopy, or forged by the participant's code)"
        );
        self.unverified_cancel = Some(name);
        true
    }

    fn publish(&mut self, end: Option<End>) {
        self.seq += 1;
        let snap = Snapshot {
            seq: self.seq,
            outputs: self.state.outputs.clone(),
            end,
            verify_cancel: self.unverified_cancel.is_some(),
        };
        let _ = self.snap_tx.send(Arc::new(snap));
    }

    async fn run(mut self) -> Result<End, SetupError> {
        let cfg = self.state.cfg.clone();
        let root = self.state.root.clone();
        for dir in [self.state.layout.evalai_dir(), Path::new(volume::layout::LOGCOPY_DIR)] {
            if let Err(e) = root.create_dir_all(dir) {
                warn!("cannot create {}: {e}", root.display(dir).display());
            }
        }
        // A logcopy killed while writing an output leaves its temporary file: never an output, remove it.
        let merged_dir = self.state.layout.merged_file().parent().map(Path::to_path_buf);
        for dir in [Some(self.state.layout.evalai_dir().to_path_buf()), merged_dir].into_iter().flatten() {
            for entry in root.list(&dir).ok().flatten().into_iter().flatten() {
                if entry.name.to_string_lossy().starts_with(crate::volume::TEMP_PREFIX) {
                    let _ = root.remove_file(&dir.join(&entry.name));
                }
            }
        }
        let (_watcher, mut fs_events) = match watch(&self.state.layout.root) {
            Ok((w, rx)) => (Some(w), rx),
            Err(e) => {
                warn!("cannot watch the volume ({e}); falling back to the {:?} rescan alone", cfg.logs_period);
                (None, mpsc::channel(1).1)
            }
        };
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();

        self.state.lend(State::cycle).await;
        let marker_at_start = self.check_cancel_marker("at start");
        // Every worker had already ended (a restart after the last route): straight to the end, whose final
        // update carries the outputs; a partial update first would only spend the budget.
        if !marker_at_start
            && !cfg.once
            && let Some(end) = self.state.completion()
        {
            return Ok(self.end(end).await);
        }
        self.publish(None);
        if marker_at_start {
            // Left by an earlier logcopy that saw the cancel, or forged: EvalAI's answer decides before anything else.
            match self.verdict(cfg.final_timeout).await {
                Some(Ok(())) => {
                    let reason = "a cancel marker is on the volume at start and EvalAI confirms the cancel";
                    return Ok(self.end(End::Cancelled { reason: reason.into() }).await);
                }
                Some(Err(status)) if !cfg.once => {
                    let reason = forged_reason(self.unverified_cancel.take().unwrap_or_default(), &status);
                    error!("{reason}");
                    return Ok(self.end(End::Completed { finished: false, reason }).await);
                }
                _ => {}
            }
        }
        if cfg.once {
            return Ok(self.end(End::Once).await);
        }

        let mut debounce = Debounce::new(cfg.debounce);
        let mut next_rescan = Instant::now() + cfg.logs_period;
        loop {
            if let Some(end) = self.state.completion() {
                return Ok(self.end(end).await);
            }
            if self.state.cancel_marker() && self.state.wrote_cancel {
                let reason = "EvalAI reports the submission cancelled".to_string();
                return Ok(self.end(End::Cancelled { reason }).await);
            }
            if self.check_cancel_marker("during the run") {
                self.publish(None);
            }
            let wake = debounce.deadline().map_or(next_rescan, |d| d.min(next_rescan));
            tokio::select! {
                Some(paths) = fs_events.recv() => {
                    let layout = &self.state.layout;
                    if paths.is_empty() || paths.iter().any(|p| !layout.is_own_output(p)) {
                        debounce.event(Instant::now());
                    }
                }
                _ = sleep_until(wake) => {
                    if Instant::now() >= next_rescan {
                        next_rescan = Instant::now() + cfg.logs_period;
                    }
                    debounce.clear();
                    if self.state.lend(State::cycle).await {
                        self.publish(None);
                    }
                }
                Some(ev) = self.events.recv() => match ev {
                    SinkEvent::Cancelled => {
                        if self.unverified_cancel.take().is_some() {
                            info!("EvalAI confirms the cancel marker: the submission is cancelled");
                        }
                        self.state.lend(|s| {
                            s.write_cancel_markers();
                            s.cycle()
                        })
                        .await;
                    }
                    SinkEvent::Status { status } => {
                        if let Some(found) = self.unverified_cancel.take() {
                            // The workers obey markers and have stopped on it: the evaluation cannot go on, and
                            // the submission was not cancelled. It ends FAILED with the true reason.
                            let reason = forged_reason(found, status.as_str());
                            error!("{reason}");
                            return Ok(self.end(End::Completed { finished: false, reason }).await);
                        }
                    }
                    SinkEvent::Published { seq } => info!(seq, "EvalAI has the newest results"),
                },
                _ = recv_signal(&mut sigterm) => {
                    info!("SIGTERM: final flush");
                    return Ok(self.end(End::Terminated).await);
                }
                _ = recv_signal(&mut sigint) => {
                    info!("SIGINT: final flush");
                    return Ok(self.end(End::Terminated).await);
                }
            }
        }
    }

    /// The final flush: last cycle, final snapshot, the sinks' final work within its time budget.
    async fn end(mut self, end: End) -> End {
        if matches!(end, End::Cancelled { .. }) && !self.state.wrote_cancel {
            self.state.write_cancel_markers();
        }
        // Before the final flush, so that S3 holds it: the post-run step counts the done markers there.
        if matches!(end, End::Completed { .. })
            && let Err(e) = Marker::LogcopyDone.create_in(&self.state.root, self.state.layout.status_dir())
        {
            error!("cannot write {}: {e}", Marker::LogcopyDone);
        }
        let last = end.clone();
        self.state.lend(move |s| s.final_outputs(&last)).await;
        let end = self.state.final_verdict(end);
        match &end {
            End::Completed { finished: true, reason } => info!(reason, "all workers ended"),
            End::Completed { finished: false, reason } => {
                error!(reason, "all workers ended, the submission is incomplete")
            }
            End::Cancelled { reason } => info!(reason, "submission cancelled"),
            End::Terminated | End::Once => {}
        }
        self.publish(Some(end.clone()));
        let budget = match end {
            End::Terminated | End::Once => self.state.cfg.flush_budget,
            _ => self.state.cfg.final_timeout,
        };
        let deadline = Instant::now() + budget;
        for sink in &mut self.sinks {
            match tokio::time::timeout_at(deadline, &mut *sink).await {
                Ok(_) => {}
                Err(_) => {
                    error!(
                        budget_s = budget.as_secs_f64(),
                        "a sink did not finish its final work in time; stopping it"
                    );
                    sink.abort();
                }
            }
        }
        end
    }
}

fn forged_reason(marker: String, status: &str) -> String {
    format!(
        "a cancel marker that logcopy did not write ({marker}) stopped the workers, and EvalAI reports the submission \
         {status:?}, not cancelled: the marker was forged (by the participant's code?)"
    )
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The first metric of a `results.json` whose value is not a finite number (NaN, Infinity), if any.
fn non_finite_metric(results_json: &str) -> Option<String> {
    let Ok(Value::Array(entries)) = crate::results::pyjson::parse(results_json.as_bytes()) else { return None };
    entries.iter().find_map(|e| {
        let acc = e.as_object()?.get("accuracies")?.as_object()?;
        acc.iter().find(|(_, v)| matches!(v, Value::Float(f) if !f.is_finite())).map(|(k, _)| k.to_string())
    })
}

/// Whether a worker's results hold a number that is not finite anywhere.
fn has_non_finite(v: &Value) -> bool {
    match v {
        Value::Float(f) => !f.is_finite(),
        Value::Array(a) => a.iter().any(has_non_finite),
        Value::Object(o) => o.iter().any(|(_, v)| has_non_finite(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(args: &[&str]) -> State {
        let base = ["--local", "/nonexistent", "--logs", "/nonexistent"];
        // These tests read no file: any folder serves as the root.
        let root = Arc::new(Root::open(&std::env::temp_dir()).unwrap());
        State::new(crate::config::tests::parse(&[&base[..], args].concat()).unwrap(), root)
    }

    /// A worker file with these route ids and this progress.
    fn file(ids: &[String], progress: [i64; 2]) -> Value {
        let recs: Vec<String> = ids.iter().map(|id| format!(r#"{{"route_id": "{id}"}}"#)).collect();
        let text = format!(
            r#"{{"_checkpoint": {{"global_record": {{}}, "progress": [{}, {}], "records": [{}]}}, "entry_status": "Started"}}"#,
            progress[0],
            progress[1],
            recs.join(", ")
        );
        crate::results::pyjson::parse(text.as_bytes()).unwrap()
    }

    fn names(ids: impl IntoIterator<Item = u64>) -> Vec<String> {
        ids.into_iter().map(|i| format!("RouteScenario_{i}_rep0")).collect()
    }

    #[test]
    fn a_worker_is_judged_by_the_routes_it_was_given() {
        let mut s = state(&["--route-count", "20"]);
        let w = &mut s.workers[1]; // routes 5-9
        assert_eq!(w.verdict(Version::V2), Err("ended without a results file (its routes: 5-9)".into()));
        w.good = Some(file(&names(5..10), [5, 5]));
        assert_eq!(w.verdict(Version::V2), Ok(()));
        // Route 7 dropped, progress [4, 4]: upstream's rule would call it complete.
        w.good = Some(file(&names([5, 6, 8, 9]), [4, 4]));
        assert_eq!(w.verdict(Version::V2), Err("ended with 4 of the 5 routes it was given (5-9) recorded".into()));
        // Route 7 replaced by another worker's route 12: it does not count.
        w.good = Some(file(&names([5, 6, 8, 9, 12]), [5, 5]));
        assert!(w.verdict(Version::V2).unwrap_err().contains("4 of the 5"));
        // Every route, and one of another worker's (left out of the merge): complete when the progress agrees.
        w.good = Some(file(&names([5, 6, 7, 8, 9, 12]), [5, 5]));
        assert_eq!(w.verdict(Version::V2), Ok(()));
        w.good = Some(file(&names([5, 6, 7, 8, 9, 12]), [6, 6]));
        assert_eq!(w.verdict(Version::V2), Err("recorded the 5 routes it was given, but its progress counts 6".into()));
        w.good = Some(file(&names(5..10), [5, i64::MAX]));
        assert!(w.verdict(Version::V2).unwrap_err().contains("progress counts 9223372036854775807"));
        // Without --route-count: upstream's rule, the worker's own progress.
        let mut s = state(&[]);
        let w = &mut s.workers[1];
        w.good = Some(file(&names([5, 6, 8, 9]), [4, 4]));
        assert_eq!(w.verdict(Version::V2), Ok(()));
        w.good = Some(file(&names([5, 6, 8, 9]), [4, 5]));
        assert_eq!(w.verdict(Version::V2), Err("ended with 4 of 5 routes recorded".into()));
    }

    #[test]
    fn repetitions_and_leaderboard_1_0_names() {
        let mut s = state(&["--route-count", "8", "--repetitions", "2", "--workers", "2"]);
        let w = &mut s.workers[0]; // routes 0-3, twice
        let runs: Vec<String> = (0..4).flat_map(|i| (0..2).map(move |r| format!("RouteScenario_{i}_rep{r}"))).collect();
        w.good = Some(file(&runs, [8, 8]));
        assert_eq!(w.verdict(Version::V2), Ok(()));
        w.good = Some(file(&runs[..7], [7, 7]));
        assert!(w.verdict(Version::V2).unwrap_err().contains("7 of the 8"));
        // 1.0 names both repetitions of a route alike: each name needs two records.
        let v1: Vec<String> =
            (0..4).flat_map(|i| [format!("RouteScenario_{i}"), format!("RouteScenario_{i}")]).collect();
        w.good = Some(file(&v1, [8, 8]));
        assert_eq!(w.verdict(Version::V1), Ok(()));
        w.good = Some(file(&v1[1..], [7, 7]));
        assert!(w.verdict(Version::V1).unwrap_err().contains("7 of the 8"));
    }

    #[test]
    fn a_worker_given_no_route_is_complete_once_it_ends() {
        let s = state(&["--route-count", "2", "--workers", "4"]);
        let given: Vec<String> = s.workers.iter().map(|w| w.assigned.unwrap().describe()).collect();
        assert_eq!(given, ["0-0", "none", "1-1", "none"]);
        assert_eq!(s.workers[1].verdict(Version::V2), Ok(()));
        assert!(s.workers[0].verdict(Version::V2).is_err());
    }

    #[test]
    fn the_missing_list_is_bounded_and_never_overflows() {
        // No --route-count: the totals decide; a hostile one neither overflows nor makes the work large.
        let mut s = state(&[]);
        s.workers[0].good = Some(file(&names([0]), [1, i64::MAX]));
        s.workers[1].good = Some(file(&names([1_000_000_000]), [1, -7]));
        let m = s.missing_routes();
        assert_eq!(m.names.len(), SHOWN);
        assert_eq!(m.names[0], "RouteScenario_1_rep0");
        // Worker 1's total, worker 2's (negative: none), workers 3 and 4 assumed like the largest; 2 routes are there.
        assert_eq!(m.count, 3 * i64::MAX as u128 - 2);
        // With it: the routes each worker was given.
        let mut s = state(&["--route-count", "1000000", "--repetitions", "1000"]);
        s.workers[0].good = Some(file(&names([0]), [1, i64::MAX]));
        let m = s.missing_routes();
        assert_eq!((m.names.len(), m.count), (SHOWN, 1_000_000 * 1000 - 1));
        assert_eq!(m.names[0], "RouteScenario_0_rep1");
    }
}

//! The merge cycle and the volume state it owns: the workers' files read ([`super::workers`]), merged, converted
//! for EvalAI, and the merged file and EvalAI's three files written atomically (only the bytes that changed); the
//! final cycle of an end, and the last word on a completed run. All of it is blocking file work: the state is lent
//! to a thread of its own for each cycle and comes back ([`Held`]), so that the runtime's one thread, which the
//! sinks share, never waits on the volume. Cycles stay one at a time, in the loop's order.

use super::workers::Workers;
use crate::config::RunConfig;
use crate::publish::{End, Lane, Outputs, release_free_memory};
use crate::results::file;
use crate::results::pyjson::Value;
use crate::results::{self, Input, Version, evalai};
use crate::routes::SHOWN;
use crate::view::{self, PartialScores, StdoutFormat};
use crate::volume::{Layout, Root};
use std::collections::HashSet;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{error, warn};
use volume::markers::{Marker, WorkerId};

/// What the loop knows of the volume: the workers, the newest outputs, what was written and logged.
pub(super) struct State {
    pub cfg: RunConfig,
    /// The volume's root, opened once: every read and write of the volume goes beneath it.
    pub root: Arc<Root>,
    pub layout: Layout,
    pub workers: Workers,
    version: Version,
    pub outputs: Option<Arc<Outputs>>,
    /// The SHA-256 of the bytes last written to each output file, to write only what changed (not the bytes: the
    /// merged file is written twice, as itself and as metadata.json, 14 MB each at 10,000 routes).
    written: Vec<(PathBuf, String)>,
    /// The operator's tail of the evaluator logs (EvalAI's `environment_log`), read once at the end for the final
    /// outputs; empty before.
    environment_log: String,
    /// A write of the outputs failed (a full disk): the next cycle tries again.
    unwritten: bool,
    logged: HashSet<String>,
    /// Cancel markers this logcopy wrote.
    pub wrote_cancel: bool,
    /// Why the last merge (or its conversion) failed; `None` after a good one. A run cannot end FINISHED on it.
    merge_error: Option<String>,
    /// The last good merge and its conversions, from which the outputs are composed.
    last: Option<Arc<Merged>>,
    /// What the outputs were last composed from: a cycle that finds the same composes nothing.
    composed: Option<Composed>,
    /// The run status block of stdout.txt, re-rendered on a change of state or at a heartbeat.
    block: view::Block,
    /// The block was resumed from the stdout.txt on the volume (once, at the first cycle).
    block_resumed: bool,
    /// The clock of the block (Unix seconds); the goldens inject a fixed one.
    pub clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// The end being flushed, once there is one: the view's state.
    end: Option<End>,
}

/// A good merge and what was computed from it, once: the view and the outputs are composed from it. The parsed
/// merge itself is not kept (a merge of 10,000 routes is some tens of MiB parsed): the view needs only its counts.
struct Merged {
    /// Its number: each good merge has the next.
    seq: u64,
    bytes: String,
    /// `results.json` as the outputs carry it: upstream's, or with the provisional scores of
    /// `--partial-scores provisional` before the global record.
    results: String,
    /// Upstream's summary as `--stdout-format` has it: `stdout.txt` as upstream writes it (`upstream`), or with the
    /// truth in its progress line, routes done out of the routes assigned (`status`, after the block).
    summary: String,
    refused: Option<String>,
    /// Records each worker has of its own routes, in worker order.
    done: Vec<u64>,
    /// What the view counts of the merge: routes done, by status, the provisional score.
    tally: view::Tally,
}

/// What a composition of the outputs depends on, besides the merge's own products: equal inputs, equal outputs.
#[derive(PartialEq)]
struct Composed {
    /// The merge's number ([`Merged::seq`]).
    merge: u64,
    /// The run status block (`--stdout-format status`), clock fields included.
    block: Option<String>,
    stderr: String,
    end: Option<End>,
}

fn record_count(v: &Value) -> u64 {
    v.as_object()
        .and_then(|o| o.get("_checkpoint"))
        .and_then(Value::as_object)
        .and_then(|c| c.get("records"))
        .and_then(Value::as_array)
        .map_or(0, |a| a.len() as u64)
}

impl State {
    pub fn new(cfg: RunConfig, root: Arc<Root>) -> Self {
        let layout = cfg.layout();
        let workers = Workers::new(&cfg, &layout);
        State {
            version: cfg.version,
            root,
            layout,
            workers,
            cfg,
            outputs: None,
            written: Vec::new(),
            environment_log: String::new(),
            unwritten: false,
            logged: HashSet::new(),
            wrote_cancel: false,
            merge_error: None,
            last: None,
            composed: None,
            block: view::Block::default(),
            block_resumed: false,
            clock: initial_clock(),
            end: None,
        }
    }

    fn log_once(&mut self, key: String, f: impl FnOnce(&str)) {
        if self.logged.insert(key.clone()) {
            f(&key);
        }
    }

    /// Reads the markers and the results files; merges and writes the outputs when something changed.
    /// Returns `true` when the outputs changed.
    pub fn cycle(&mut self) -> bool {
        if let Err(e) = self.workers.read_markers(&self.root, self.layout.status_dir()) {
            let dir = self.root.display(self.layout.status_dir());
            self.log_once(format!("cannot read {}: {e}", dir.display()), |m| warn!("{m}"))
        }
        let changed = self.workers.refresh(&self.root, self.cfg.max_results_bytes);
        if changed || self.last.is_none() {
            self.merge();
        }
        self.compose()
    }

    /// Merges the workers' files and converts the merge; keeps it in `last` when it is good.
    fn merge(&mut self) {
        let inputs: Vec<Input> = self
            .workers
            .list
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
        let mut done = vec![0; self.workers.list.len()];
        for (w, input) in self.workers.list.iter().filter(|w| w.good.is_some()).zip(&inputs) {
            done[w.id as usize - 1] = record_count(&input.data);
        }
        let merged = match results::merge(self.version, &inputs) {
            Ok(m) => m,
            Err(f) => {
                let msg = format!("merge failed, the last good results stay published: {}", f.error);
                self.log_once(msg, |m| error!("{m}"));
                self.merge_error = Some(f.error.to_string());
                return;
            }
        };
        for w in &merged.warnings {
            self.log_once(w.clone(), |m| warn!("{m}"));
        }
        let obj = merged.value.as_object();
        let truth = self.cfg.routes.map(|p| {
            let assigned: u64 = (1..=p.workers).map(|i| p.assigned(i).runs()).sum();
            (record_count(&merged.value), assigned)
        });
        let format = self.cfg.view.stdout_format;
        let converted = evalai::results_json(self.version, obj).and_then(|r| {
            let summary = match (format, truth) {
                (StdoutFormat::Status, Some(t)) => evalai::stdout_txt_with(self.version, obj, Some(t))?,
                _ => evalai::stdout_txt(self.version, obj)?,
            };
            Ok((r, summary))
        });
        let (results, summary) = match converted {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("EvalAI conversion failed, the last good results stay published: {e}");
                self.log_once(msg, |m| error!("{m}"));
                self.merge_error = Some(format!("the EvalAI conversion failed: {e}"));
                return;
            }
        };
        self.merge_error = None;
        let refused = non_finite_metric(&results).map(|metric| {
            let from = self.workers.list.iter().filter(|w| w.good.as_ref().is_some_and(has_non_finite)).map(|w| w.id);
            let from: Vec<String> = from.map(|id| id.to_string()).collect();
            let msg = format!(
                "the metric {metric:?} is not a finite number (from worker {}): EvalAI refuses such a result (400), \
                 so no partial update is sent until it is",
                if from.is_empty() { "?".to_string() } else { from.join(", ") }
            );
            self.log_once(msg.clone(), |m| error!("{m}"));
            format!("the metric {metric:?} is not a finite number")
        });
        let has_global = obj
            .and_then(|o| o.get("_checkpoint"))
            .and_then(Value::as_object)
            .and_then(|c| c.get("global_record"))
            .is_some_and(Value::is_truthy);
        let results = match self.cfg.view.partial_scores {
            PartialScores::Provisional if !has_global => {
                view::provisional_results(self.version, obj).unwrap_or(results)
            }
            _ => results,
        };
        let bytes = merged.to_bytes();
        let tally = view::Tally::of(obj);
        let seq = self.last.as_ref().map_or(0, |m| m.seq + 1);
        self.last = Some(Arc::new(Merged { seq, bytes, results, summary, refused, done, tally }));
    }

    /// The outputs of the last good merge with the participant's view of the run now (crate::view): the run status
    /// block and the failures; written and kept when they changed. Returns `true` when they changed.
    fn compose(&mut self) -> bool {
        let Some(m) = self.last.clone() else { return false };
        let facts = view::Facts {
            version: self.version,
            plan: self.cfg.routes,
            tally: &m.tally,
            routes_done: &m.done,
            end: self.end.as_ref(),
            heartbeat: self.cfg.view.heartbeat,
            job_deadline: self.cfg.view.job_deadline,
        };
        let v = view::build(&self.root, &self.workers.markers, self.cfg.workers, &facts);
        let stderr = view::render_stderr(&v);
        let block = match self.cfg.view.stdout_format {
            StdoutFormat::Upstream => None,
            StdoutFormat::Status => {
                if !self.block_resumed {
                    // A restart: the block an earlier logcopy wrote stays while the state is the same.
                    self.block_resumed = true;
                    let path = std::path::Path::new(volume::layout::EVALAI_STDOUT);
                    if let Ok(Some(bytes)) = file::read_beneath(&self.root, path, self.cfg.max_results_bytes) {
                        self.block = view::Block::resumed(&String::from_utf8_lossy(&bytes));
                    }
                }
                Some(self.block.update(&v, (self.clock)()).to_owned())
            }
        };
        // An idle cycle ends here: the same merge, block, stderr and end compose the same outputs.
        let inputs = Composed { merge: m.seq, block, stderr, end: self.end.clone() };
        if self.composed.as_ref() == Some(&inputs) {
            if self.unwritten
                && let Some(o) = self.outputs.clone()
            {
                self.write_outputs(&o);
            }
            return false;
        }
        let stdout = match &inputs.block {
            None => m.summary.clone(),
            Some(block) => {
                let mut s = String::with_capacity(block.len() + m.summary.len());
                s.push_str(block);
                s.push_str(&m.summary);
                if let Some(End::Completed { finished: false, reason }) = &self.end {
                    s.push_str(&self.incomplete_note(&view::participant_reason(reason, &v.workers)));
                }
                s
            }
        };
        let outputs = Outputs {
            merged: m.bytes.clone(),
            results: m.results.clone(),
            stdout,
            stderr: inputs.stderr.clone(),
            refused: m.refused.clone(),
            // Set once, at the end (final_outputs).
            environment_log: self.environment_log.clone(),
        };
        self.composed = Some(inputs);
        if self.outputs.as_deref() == Some(&outputs) {
            return false;
        }
        self.write_outputs(&outputs);
        self.outputs = Some(Arc::new(outputs));
        true
    }

    /// The note that ends stdout.txt on an incomplete end: the participant's reason and the routes with no result.
    fn incomplete_note(&self, reason: &str) -> String {
        let missing = self.workers.missing_routes(self.version);
        let mut note = format!("\nThe submission ended incomplete: {reason}.\n");
        if missing.count > 0 {
            let shown = missing.names.join(", ");
            let more = missing.count - missing.names.len() as u128;
            let more = if more > 0 { format!(" and {more} more ({} in all)", missing.count) } else { String::new() };
            note.push_str(&format!("Routes with no result: {shown}{more}.\n"));
        }
        note
    }

    /// Leaves the records of routes a worker was not given out of its input, so that they are never merged over
    /// another worker's routes; each such drop is logged once, with the file and the route ids.
    fn keep_assigned_routes(&mut self, mut inputs: Vec<Input>) -> Vec<Input> {
        let mut drops = Vec::new();
        for (w, input) in self.workers.list.iter().filter(|w| w.good.is_some()).zip(&mut inputs) {
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
        self.unwritten = false;
        let files = [
            (self.layout.merged_file().to_path_buf(), &o.merged),
            (PathBuf::from(volume::layout::EVALAI_RESULTS), &o.results),
            (PathBuf::from(volume::layout::EVALAI_STDOUT), &o.stdout),
            (PathBuf::from(volume::layout::EVALAI_METADATA), &o.merged),
        ];
        for (path, bytes) in files {
            let digest = digest(bytes);
            if self.written.iter().any(|(p, d)| *p == path && *d == digest) {
                continue;
            }
            // After a restart the file on the volume may already hold these bytes: leave it (and its stat) alone.
            if !self.written.iter().any(|(p, _)| *p == path)
                && file::read_beneath(&self.root, &path, bytes.len() as u64 + 1).ok().flatten().as_deref()
                    == Some(bytes.as_bytes())
            {
                self.written.push((path, digest));
                continue;
            }
            if let Some(parent) = path.parent() {
                let _ = self.root.create_dir_all(parent);
            }
            match self.root.write_atomic(&path, bytes.as_bytes()) {
                Ok(()) => {
                    self.written.retain(|(p, _)| *p != path);
                    self.written.push((path, digest));
                }
                // Logged each time: a full disk must stay visible. The old file stays whole; the next cycle retries.
                Err(e) => {
                    error!("{e}");
                    self.unwritten = true;
                }
            }
        }
    }

    /// `Some` once every worker has ended, with the final status decision and its reason.
    pub fn completion(&self) -> Option<End> {
        self.workers.completion(self.version)
    }

    /// Writes `simulation.cancel` and `simulation-ID.cancel` for every worker.
    pub fn write_cancel_markers(&mut self) {
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
    pub fn final_verdict(&mut self, end: End) -> End {
        let End::Completed { finished, reason } = end else { return end };
        if let Some(e) = &self.merge_error {
            let reason = format!("the final merge of the workers' results failed: {e}");
            // Nothing computed from the final files: no result, no merged file, only the reason.
            let stderr = "The submission failed: the workers' results could not be merged\n".to_string();
            self.outputs = Some(Arc::new(Outputs { stdout: format!("{reason}\n"), stderr, ..Outputs::default() }));
            return End::Completed { finished: false, reason };
        }
        if let Some(why) = self.outputs.as_ref().and_then(|o| o.refused.clone()) {
            let reason = if finished { why } else { format!("{reason}; {why}") };
            return End::Completed { finished: false, reason };
        }
        End::Completed { finished, reason }
    }

    /// The last cycle before the sinks' final work: re-read everything; on an incomplete end, say what is missing.
    pub fn final_outputs(&mut self, end: &End) -> Option<Arc<Outputs>> {
        for w in &mut self.workers.list {
            w.forget_stamp();
        }
        // The view's state is the end's from here on (its note, on an incomplete end, closes stdout.txt).
        self.end = Some(end.clone());
        // The operator's tail of each evaluator log, for the final update only (EvalAI shows it to hosts only),
        // composed into the final outputs (no copy of them made for it).
        let token = match &self.cfg.evalai {
            crate::config::EvalAiTarget::Http { token, .. } => Some(token.expose()),
            crate::config::EvalAiTarget::Local { .. } => None,
        };
        self.environment_log =
            crate::oplog::environment_log(&self.root, self.cfg.workers, &token.into_iter().collect::<Vec<_>>());
        self.cycle();
        if let End::Completed { finished: false, .. } = end
            && self.merge_error.is_none()
        {
            let missing = self.workers.missing_routes(self.version);
            if missing.count > 0 {
                error!(missing = %missing.count, routes = %missing.names.join(", "), "routes with no result");
            }
        }
        self.outputs.clone()
    }
}

#[cfg(test)]
thread_local! {
    /// The clock a `State` made on this thread starts with (the goldens of a whole run); `None`: the system's.
    pub(super) static TEST_CLOCK: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
}

/// The clock of a new `State`: the system's (tests may stop it, [`TEST_CLOCK`]).
fn initial_clock() -> Arc<dyn Fn() -> i64 + Send + Sync> {
    #[cfg(test)]
    if let Some(now) = TEST_CLOCK.with(std::cell::Cell::get) {
        return Arc::new(move || now);
    }
    Arc::new(volume::time::unix_now)
}

/// The volume state, which each cycle takes to the volume's own thread and brings back; between two cycles it is
/// here.
pub(super) struct Held {
    state: Option<State>,
    lane: Lane,
}

const HELD: &str = "the volume state is back after each cycle";

impl Held {
    pub fn new(state: State) -> Held {
        Held { state: Some(state), lane: Lane::new("logcopy-volume") }
    }

    /// Runs `f` (a cycle, or anything else that reads or writes the volume) on the volume's thread.
    pub async fn lend<R: Send + 'static>(&mut self, f: impl FnOnce(&mut State) -> R + Send + 'static) -> R {
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

/// The SHA-256 of an output file's bytes (hex).
fn digest(bytes: &str) -> String {
    crate::volume::manifest::sha256(bytes.as_bytes()).map(|(d, _)| d).unwrap_or_default()
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

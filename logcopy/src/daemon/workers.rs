//! Worker tracking: which workers the submission has, each one's results file (re-read when it changed, its last good
//! parse kept, each problem logged once), the routes it was given, and the markers of the status folder. What their
//! state means for the run is [`super::policy`]'s to decide; this module reads and hands it the facts.

use super::policy::{self, Recorded, WorkerEnd, WorkerMarkers};
use crate::config::RunConfig;
use crate::publish::End;
use crate::results::Version;
use crate::results::file::{self, Loaded};
use crate::results::pyjson::Value;
use crate::routes::{Assigned, Missing};
use crate::volume::{FileStamp, Layout, Root};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::warn;
use volume::markers::{StatusSet, WorkerId};

/// One worker's results file and what logcopy knows of it.
pub(crate) struct Worker {
    pub id: u32,
    /// Its results file, as the logs name it (relative to the volume's root).
    pub rel: String,
    path: PathBuf,
    stamp: Option<FileStamp>,
    /// The last good parse: never replaced by nothing.
    pub good: Option<Value>,
    /// The last problem logged, so each is logged once.
    problem: Option<String>,
    /// The routes it was given (`--route-count`); `None`: its own progress decides.
    pub assigned: Option<Assigned>,
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

    /// What it recorded, as the policy judges it.
    fn recorded(&self) -> Recorded<'_> {
        Recorded { assigned: self.assigned.as_ref(), progress: self.progress(), ids: self.route_ids() }
    }

    /// Forgets the file's stamp, so that the next refresh reads it again.
    pub fn forget_stamp(&mut self) {
        self.stamp = None;
    }
}

/// The workers whose pods were lost (`logcopy monitor`'s fetcher decides, from their silence in S3): each one that
/// has no end marker ends the run's wait for it, without finishing. Shared between the fetcher and the run.
#[derive(Debug, Clone, Default)]
pub struct LostWorkers(Arc<Mutex<BTreeMap<u32, Lost>>>);

/// How a worker was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Its pod stopped reporting (its status object unchanged for its silence).
    Silent,
    /// No pod of it ever reported, and every other worker has ended.
    NeverStarted,
}

impl LostWorkers {
    /// Marks worker `id` lost as its pod stopped reporting (or no longer lost); `true` when that changed.
    pub fn set(&self, id: u32, lost: bool) -> bool {
        self.set_how(id, lost.then_some(Lost::Silent))
    }

    /// Marks worker `id` lost as `how` says (`None`: no longer lost); `true` when that changed.
    pub fn set_how(&self, id: u32, how: Option<Lost>) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match how {
            Some(h) => map.insert(id, h) != Some(h),
            None => map.remove(&id).is_some(),
        }
    }

    pub fn contains(&self, id: u32) -> bool {
        self.how(id).is_some()
    }

    pub fn how(&self, id: u32) -> Option<Lost> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied()
    }
}

/// Every worker of the submission and the markers last read.
pub(crate) struct Workers {
    pub list: Vec<Worker>,
    pub markers: StatusSet,
    /// The workers lost (only a monitor marks any).
    pub lost: LostWorkers,
    /// The status folder was found flooded (more entries than a reading takes), and it was logged.
    flooded: bool,
}

impl Workers {
    /// Workers `1..=--workers`, each with the routes the plan gives it; the plan's caveats are logged.
    pub fn new(cfg: &RunConfig, layout: &Layout) -> Workers {
        let list = (1..=cfg.workers)
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
        Workers { list, markers: StatusSet::default(), lost: LostWorkers::default(), flooded: false }
    }

    /// Reads the markers of the status folder `dir`; on an error the last ones read stay.
    pub fn read_markers(&mut self, root: &Root, dir: &Path) -> std::io::Result<()> {
        let mut markers = StatusSet::read(root, dir)?;
        if markers.truncated() {
            markers.probe_ends(root, dir, (1..=self.list.len() as u32).map(WorkerId));
            if !self.flooded {
                self.flooded = true;
                warn!(
                    folder = %root.display(dir).display(),
                    "the status folder holds more than {} entries (the participant's code can write it): only the \
                     first are read, and the end markers by name; crash counts may be short",
                    volume::markers::MAX_STATUS_ENTRIES
                );
            }
        }
        self.markers = markers;
        crate::metrics::worker_markers(&self.markers, self.list.len() as u32);
        Ok(())
    }

    /// Re-reads each results file that changed; `true` when any one's data changed.
    pub fn refresh(&mut self, root: &Root, max_bytes: u64) -> bool {
        let mut changed = false;
        for w in &mut self.list {
            changed |= w.refresh(root, max_bytes);
        }
        crate::metrics::worker_routes(self.list.iter().map(|w| (w.id, w.good.as_ref(), w.assigned)));
        changed
    }

    /// Where worker `w` stands.
    fn end(&self, w: &Worker, version: Version) -> WorkerEnd {
        let markers = WorkerMarkers::of(&self.markers, WorkerId(w.id));
        let lost = || self.lost.how(w.id);
        policy::worker_end(markers, lost, || policy::verdict(version, &w.recorded()))
    }

    /// `Some` once every worker has ended, with the final status decision and its reason.
    pub fn completion(&self, version: Version) -> Option<End> {
        policy::completion(self.list.iter().map(|w| (w.id, self.end(w, version))))
    }

    /// The routes with no result (see [`policy::missing_routes`]).
    pub fn missing_routes(&self, version: Version) -> Missing {
        let recorded: Vec<Recorded> = self.list.iter().map(Worker::recorded).collect();
        policy::missing_routes(version, &recorded)
    }

    /// The name of a cancel marker on the volume, if any.
    pub fn cancel_marker(&self) -> Option<String> {
        self.markers.cancel_marker_name()
    }

    /// Whether any cancel marker is on the volume.
    pub fn any_cancel(&self) -> bool {
        self.markers.any_cancel()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(args: &[&str]) -> Workers {
        let base = ["--local", "/nonexistent", "--logs", "/nonexistent"];
        let cfg = crate::config::tests::parse(&[&base[..], args].concat()).unwrap();
        let layout = cfg.layout();
        Workers::new(&cfg, &layout)
    }

    /// A worker file with these route ids and this progress.
    fn file(ids: &[&str], progress: [i64; 2]) -> Value {
        let recs: Vec<String> = ids.iter().map(|id| format!(r#"{{"route_id": "{id}"}}"#)).collect();
        let text = format!(
            r#"{{"_checkpoint": {{"global_record": {{}}, "progress": [{}, {}], "records": [{}]}}, "entry_status": "Started"}}"#,
            progress[0],
            progress[1],
            recs.join(", ")
        );
        crate::results::pyjson::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn each_worker_is_given_its_routes() {
        let w = workers(&["--route-count", "2", "--workers", "4"]);
        let given: Vec<String> = w.list.iter().map(|w| w.assigned.unwrap().describe()).collect();
        assert_eq!(given, ["0-0", "none", "1-1", "none"]);
        assert_eq!(w.list.iter().map(|w| w.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(workers(&[]).list.iter().all(|w| w.assigned.is_none()), "no --route-count: no routes given");
    }

    #[test]
    fn what_a_worker_recorded_is_read_from_its_last_good_parse() {
        let mut w = workers(&["--route-count", "20"]);
        let r = w.list[1].recorded();
        assert_eq!((r.progress, r.ids.len()), (None, 0));
        assert_eq!(r.assigned.map(Assigned::describe).as_deref(), Some("5-9"));
        w.list[1].good = Some(file(&["RouteScenario_5_rep0", "RouteScenario_6_rep0"], [2, 5]));
        let r = w.list[1].recorded();
        assert_eq!(r.progress, Some((2, 5)));
        assert_eq!(r.ids, ["RouteScenario_5_rep0", "RouteScenario_6_rep0"]);
        // A total that is not an integer: no progress.
        w.list[1].good =
            Some(crate::results::pyjson::parse(br#"{"_checkpoint": {"records": [], "progress": [0, "x"]}}"#).unwrap());
        assert_eq!(w.list[1].recorded().progress, None);
    }

    #[test]
    fn completion_follows_the_markers_and_the_results() {
        use volume::markers::{Marker, Role};
        let mut w = workers(&["--route-count", "2", "--workers", "2"]);
        assert_eq!(w.completion(Version::V2), None);
        let done = |i| [Role::Agent, Role::Simulator].map(|role| Marker::Done { role, worker: WorkerId(i) });
        let names = done(1).into_iter().chain(done(2)).map(|m| m.file_name());
        w.markers = StatusSet::from_names(names);
        let reason = "worker 1 ended without a results file (its routes: 0-0); \
                      worker 2 ended without a results file (its routes: 1-1)";
        assert_eq!(w.completion(Version::V2), Some(End::Completed { finished: false, reason: reason.into() }));
        w.list[0].good = Some(file(&["RouteScenario_0_rep0"], [1, 1]));
        w.list[1].good = Some(file(&["RouteScenario_1_rep0"], [1, 1]));
        let finished = End::Completed { finished: true, reason: "every worker finished all its routes".into() };
        assert_eq!(w.completion(Version::V2), Some(finished));
        assert_eq!(w.missing_routes(Version::V2), Missing::default());
        w.list[1].good = None;
        assert_eq!(w.missing_routes(Version::V2).names, ["RouteScenario_1_rep0"]);
    }
}

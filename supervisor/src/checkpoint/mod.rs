//! The checkpoint: the agent side's protection of the evaluator's results file, which is the
//! participant's score.
//!
//! The leaderboard evaluator (`leaderboard_evaluator.py --checkpoint agent_results.json`) rewrites the
//! whole file after every route with `open(path, 'w')` followed by `json.dump`: not atomically. Our
//! supervisor stops the evaluator when the simulator dies, when it falls silent, or on a cancel, and
//! such a stop often lands exactly while it writes; the file is then empty or cut short. On
//! the next attempt upstream's `validate_and_resume` reads it as "no data", gives up, and the run
//! starts over from the first route, erasing every score of that worker (upstream's
//! `run_leaderboard.sh` had the same hole). Three parts close it and the evaluator's resume holes:
//!
//! * [`guard`]: [`Guard::observe`], called whenever the file changed, keeps a copy of the latest version
//!   that parses (the *last good* copy, `.<name>.last-good` beside it, written atomically);
//!   [`Guard::prepare_resume`], called before a resumed attempt, moves a file that does not parse aside
//!   (renamed, never deleted), puts the last good copy back, then repairs the progress.
//! * [`progress`]: the progress repair, so that the evaluator resumes at the crashed route and nowhere else.
//! * [`skip`]: `--route-retries`, which counts the simulation crashes per route ([`RouteRetries`]) and moves
//!   the checkpoint past a route that crashed the simulator too often.
//!
//! This module holds what they share: the file beneath its folder, reading it, and rewriting it.
//!
//! Every rewrite (the progress repair, a `--route-retries` skip) parses the file with [`volume::pyjson`] and writes
//! it back as the evaluator's `json.dump(indent=4)` would: key order kept, ints and floats spelled as Python spells
//! them, so a file the evaluator wrote differs only in the fields changed (upstream's own writer would produce the
//! same bytes for the changed document).
//!
//! The file lives on a volume the participant's code can write, so it is read and written the way
//! `logcopy` reads and writes the volume, through [`volume::safe::Root`]: its folder (the agent's mount
//! of the volume) is opened once, a symbolic link is never followed, a FIFO never blocks us, and
//! nothing over 64 MiB is read. Every write is a temporary file in the same folder, `fsync`ed, then
//! renamed over the target.
//!
//! The functions return what they did ([`Observed`], [`Repair`], whose `Display` is the log line);
//! the agent role logs them.

pub mod guard;
pub mod progress;
pub mod skip;

pub use guard::{Guard, Observed, Repair};
pub use progress::{ProgressPlan, evaluator_resume_index, plan_progress, plan_progress_skipping};
pub use skip::{RouteRetries, RouteSkip, crashed_route, skip_route};
pub use volume::layout::last_good_path;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use volume::pyjson;
use volume::safe::{ReadError, Root};

/// Largest checkpoint read: far above any real one (10,000 routes take about 15 MB).
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// `FAILURE_MESSAGES["Simulation"]`'s route status suffix; the evaluator tests it with `in`.
const SIMULATION_CRASHED: &str = "Simulation crashed";

/// `FAILURE_MESSAGES["Agent_init"]`'s route status suffix: the agent's set-up raised (or timed out) for the route;
/// the evaluator records it, keeps `entry_status` `Started` and moves on to the next route.
pub const AGENT_NOT_SET_UP: &str = "Agent couldn't be set up";

/// Where a checkpoint is: its folder, opened once as a root (the agent container's mount of its worker's folder),
/// and its name there. Every file the guard keeps beside it (the last good copy, a corrupt file moved aside, the
/// copy before a skip) is in the same folder, reached beneath the same root.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    root: Arc<Root>,
    name: PathBuf,
}

impl CheckpointFile {
    /// Opens the folder of `path` (creating it when missing) as the root of the checkpoint's files.
    pub fn open(path: &Path) -> std::io::Result<CheckpointFile> {
        CheckpointFile::open_for(path, None)
    }

    /// [`CheckpointFile::open`] for an evaluator that runs as `owner` (uid, gid: `--run-as`): a file the supervisor
    /// creates in the folder (the checkpoint restored after it went missing) is given to it, so that the evaluator
    /// can rewrite it; a file rewritten keeps its owner and mode in any case.
    pub fn open_for(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<CheckpointFile> {
        let (root, name) = Root::open_parent(path, true)?;
        let root = match owner {
            Some((uid, gid)) => root.new_files_owned_by(uid, gid),
            None => root,
        };
        Ok(CheckpointFile { root: Arc::new(root), name })
    }

    /// The checkpoint's path, for messages and the evaluator's `--checkpoint`.
    pub fn path(&self) -> PathBuf {
        self.root.display(&self.name)
    }

    /// The folder's root, for the other files the agent keeps beside the checkpoint.
    pub fn root(&self) -> &Arc<Root> {
        &self.root
    }

    /// The checkpoint's name in its folder.
    pub fn name(&self) -> &Path {
        &self.name
    }
}

/// An I/O failure on one of the guard's files.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot rename {} to {}: {source}", from.display(), to.display())]
    Rename { from: PathBuf, to: PathBuf, source: std::io::Error },
}

/// What the agent side needs after the evaluator exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `entry_status` when it is a string.
    pub entry_status: Option<String>,
    /// Number of route records.
    pub records: usize,
    /// `_checkpoint.progress` when it is two integers.
    pub progress: Option<(i64, i64)>,
    /// `_checkpoint.global_record` is `{}` (or absent): the evaluator did not reach its global
    /// statistics. Upstream's `run_leaderboard.sh` reads this as a crash.
    pub global_record_empty: bool,
    /// Route records whose status says the agent could not be set up ([`AGENT_NOT_SET_UP`]).
    pub agent_not_set_up: usize,
}

impl Summary {
    /// Every route recorded failed the agent's set-up (and there is at least one): the agent never ran.
    pub fn agent_never_set_up(&self) -> bool {
        self.records > 0 && self.agent_not_set_up == self.records
    }
}

/// Summarizes a results file; `None` when it is missing or is not a results file.
pub fn summarize(file: &CheckpointFile) -> Result<Option<Summary>, CheckpointError> {
    let bytes = match read_file(&file.root, &file.name)? {
        ReadOutcome::Bytes(b) => b,
        ReadOutcome::Missing | ReadOutcome::Unusable(_) => return Ok(None),
    };
    let Ok(v) = parse_results(&bytes) else { return Ok(None) };
    let cp = &v["_checkpoint"];
    let records = cp["records"].as_array().map_or(&[][..], Vec::as_slice);
    Ok(Some(Summary {
        entry_status: v["entry_status"].as_str().map(str::to_owned),
        records: records.len(),
        agent_not_set_up: records
            .iter()
            .filter(|r| r["status"].as_str().is_some_and(|s| s.contains(AGENT_NOT_SET_UP)))
            .count(),
        progress: progress_pair(cp),
        global_record_empty: cp.get("global_record").is_none_or(|g| g.as_object().is_some_and(|o| o.is_empty())),
    }))
}

/// Whether a resume has anything to resume from: the file is a results file with records or progress.
pub fn exists_with_data(file: &CheckpointFile) -> bool {
    let Ok(ReadOutcome::Bytes(bytes)) = read_file(&file.root, &file.name) else { return false };
    let Ok(v) = parse_results(&bytes) else { return false };
    let cp = &v["_checkpoint"];
    let non_empty = |k: &str| cp[k].as_array().is_some_and(|a| !a.is_empty());
    non_empty("records") || non_empty("progress")
}

/// The checkpoint parsed, when it is a results file (never through a link). `Ok(None)`: missing or not one.
pub fn read_results(file: &CheckpointFile) -> Result<Option<Value>, CheckpointError> {
    Ok(match read_file(&file.root, &file.name)? {
        ReadOutcome::Bytes(b) => parse_results(&b).ok(),
        _ => None,
    })
}

/// The leading run of records whose `index` equals their position. The evaluator writes each record at its
/// route's position, so these are the records its resume check (`route_id` against the route list, position by
/// position) accepts; a record after a gap sits at another route's position and makes it give up.
fn aligned_len(records: &[Value]) -> usize {
    records.iter().enumerate().take_while(|(i, r)| r["index"].as_u64() == Some(*i as u64)).count()
}

/// The position of the evaluator's record of a simulation crash, when it is the last aligned record. Under
/// `Crashed` it is known by position: the evaluator writes `Crashed`, the crashed route's record and
/// `progress[0]` one past it in the same dump, and that record's status can name whatever ended the route first
/// (`compute_route_statistics` lets a timeout, blocked or deviation event overwrite the failure message, and a
/// completed route reads `Completed`). Otherwise by its status ("Failed - Simulation crashed"), which a resumed
/// run keeps under `Started` until it runs the route again.
fn crash_record(results: &Value) -> Option<usize> {
    let cp = &results["_checkpoint"];
    let records = cp["records"].as_array()?;
    let last = aligned_len(records).checked_sub(1)?;
    let by_position = results["entry_status"].as_str() == Some("Crashed")
        && progress_pair(cp).is_some_and(|(done, _)| usize::try_from(done) == Ok(last + 1));
    let by_status = records[last]["status"].as_str().is_some_and(|s| s.contains(SIMULATION_CRASHED));
    (by_position || by_status).then_some(last)
}

/// Every rewrite of the checkpoint: the file parsed with [`volume::pyjson`] (Python's model: key order, int and
/// float kept apart), `edit` applied to its top-level object, and the result written as the 2.0 evaluator's
/// `json.dump(indent=4)` writes it. A file the evaluator wrote therefore comes back byte for byte except the fields
/// changed. `None` (nothing to write) when the file does not parse that way or `edit` finds no place to change.
fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut pyjson::Object) -> Option<()>) -> Option<Vec<u8>> {
    let mut doc = pyjson::parse(bytes).ok()?;
    let pyjson::Value::Object(top) = &mut doc else { return None };
    edit(Arc::make_mut(top))?;
    Some(pyjson::to_pretty(&doc, false).into_bytes())
}

/// `_checkpoint`, to change in place.
fn checkpoint_mut(doc: &mut pyjson::Object) -> Option<&mut pyjson::Object> {
    match doc.get_mut("_checkpoint")? {
        pyjson::Value::Object(cp) => Some(Arc::make_mut(cp)),
        _ => None,
    }
}

/// `_checkpoint.progress` as two integers.
fn progress_pair(cp: &Value) -> Option<(i64, i64)> {
    match cp["progress"].as_array()?.as_slice() {
        [done, total] => Some((done.as_i64()?, total.as_i64()?)),
        _ => None,
    }
}

/// Parses bytes as a results file: a JSON object whose `_checkpoint` holds a `records` list and a
/// `progress` list (every version the evaluator writes). `Err` says why not.
fn parse_results(bytes: &[u8]) -> Result<Value, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    if !v.is_object() {
        return Err("the JSON value is not an object".into());
    }
    let cp = &v["_checkpoint"];
    if !cp["records"].is_array() || !cp["progress"].is_array() {
        return Err("no `_checkpoint.records` and `_checkpoint.progress` lists".into());
    }
    Ok(v)
}

enum ReadOutcome {
    Missing,
    /// There, but not something we read: a link, not a regular file, too large.
    Unusable(String),
    Bytes(Vec<u8>),
}

/// Reads the regular file `rel` beneath `root` without following a link or blocking on a FIFO, up to
/// [`MAX_BYTES`].
fn read_file(root: &Root, rel: &Path) -> Result<ReadOutcome, CheckpointError> {
    match root.read_capped(rel, MAX_BYTES) {
        Ok(Some(bytes)) => Ok(ReadOutcome::Bytes(bytes)),
        Ok(None) => Ok(ReadOutcome::Missing),
        Err(ReadError::Io(source)) => Err(CheckpointError::Read { path: root.display(rel), source }),
        Err(ReadError::TooLarge { .. }) => {
            Ok(ReadOutcome::Unusable(format!("it is larger than the {MAX_BYTES}-byte cap")))
        }
        Err(e @ (ReadError::Symlink | ReadError::NotRegular { .. } | ReadError::HardLinked { .. })) => {
            Ok(ReadOutcome::Unusable(format!("it {e}")))
        }
    }
}

/// Writes `bytes` to `rel` atomically (a temporary file beside it, `fsync`ed, renamed over it).
fn write_atomic(root: &Root, rel: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    root.write_atomic(rel, bytes).map_err(|e| CheckpointError::Write { path: e.path, source: e.source })
}

fn rename(root: &Root, from: &Path, to: &Path) -> Result<(), CheckpointError> {
    root.rename(from, to).map_err(|source| CheckpointError::Rename {
        from: root.display(from),
        to: root.display(to),
        source,
    })
}

/// What the checkpoint's tests share: the fixtures (checkpoints as the evaluator writes them), a scratch folder,
/// the evaluator's resume as a model, and Python's own `json.dump` as the oracle of every rewrite.
#[cfg(test)]
mod test_support {
    use super::*;
    use std::path::PathBuf;

    /// Worker 2 of the recorded crash volume: `Crashed`, `progress [3, 5]`, three records, the last one
    /// `Failed - Simulation crashed`, written like `json.dump(indent=4)`.
    pub(super) const CRASH_RECORDED: &str =
        include_str!("../../../fixtures/volumes/lb2.0-crash-marker/agent/agent2/agent_results.json");

    /// Worker 2 of the recorded mid-run volume: `Started`, `progress [2, 5]`, two records.
    pub(super) const MID_RUN: &str =
        include_str!("../../../fixtures/volumes/lb2.0-mid-run/agent/agent2/agent_results.json");

    /// A finished worker: `Finished`, `progress [2, 2]`, a global record.
    pub(super) const FINISHED: &str =
        include_str!("../../../fixtures/results/lb2.0/simulation_crashed/inputs/partial_agent_results1.json");

    /// Worker 2 of the recorded finished volume: `Started`, `progress [5, 5]`, five records, the last one
    /// (RouteScenario_9) `Failed - Agent got blocked`.
    pub(super) const ALL_ROUTES: &str =
        include_str!("../../../fixtures/volumes/lb2.0-finished/agent/agent2/agent_results.json");

    /// Worker 2 resumed at index 1 of records 0-2, route 1 crashed with nothing recorded: `Crashed`,
    /// `progress [2, 5]`, the records of routes 5 and 7 at positions 0 and 1.
    pub(super) const GAP_AFTER_RESUME: &str =
        include_str!("../../../fixtures/checkpoints/lb2.0-crash-unrecorded-after-mid-resume.json");

    pub(super) struct TempDir(pub(super) PathBuf);

    impl TempDir {
        pub(super) fn new(name: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!("supervisor-checkpoint-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }

        pub(super) fn file(&self) -> PathBuf {
            self.0.join("agent_results.json")
        }

        /// The checkpoint beneath its folder, as the agent opens it.
        pub(super) fn cp(&self) -> CheckpointFile {
            CheckpointFile::open(&self.file()).unwrap()
        }

        pub(super) fn names(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(super) fn with_progress(text: &str, from: &str, to: &str) -> String {
        let old = format!("\"progress\": [\n            {from},");
        assert!(text.contains(&old));
        text.replacen(&old, &format!("\"progress\": [\n            {to},"), 1)
    }

    pub(super) fn with_status(text: &str, from: &str, to: &str) -> String {
        let old = format!("\"entry_status\": \"{from}\"");
        assert!(text.contains(&old));
        text.replacen(&old, &format!("\"entry_status\": \"{to}\""), 1)
    }

    /// The route list of worker 2 in the volumes: routes 5-9, one repetition.
    pub(super) fn worker2_routes() -> Vec<String> {
        (5..10).map(|id| format!("RouteScenario_{id}_rep0")).collect()
    }

    /// `RouteIndexer.validate_and_resume` (branch `leaderboard-2.0`) with its route-id check, which
    /// [`evaluator_resume_index`] leaves out: `None` where the evaluator gives up and starts over, emptying the file.
    pub(super) fn evaluator_resume(results: &Value, routes: &[String]) -> Option<i64> {
        let entry_status = results["entry_status"].as_str().filter(|s| !s.is_empty() && *s != "Invalid")?;
        let (done, total) = progress_pair(&results["_checkpoint"])?;
        if usize::try_from(total).ok()? != routes.len() {
            return None;
        }
        let records = results["_checkpoint"]["records"].as_array()?;
        let (mut check, mut resume) = (0, done);
        while check < resume {
            let at = usize::try_from(check).ok()?;
            match (routes.get(at), records.get(at)) {
                (Some(id), Some(record)) if record["route_id"].as_str() == Some(id.as_str()) => check += 1,
                (Some(_), Some(_)) => return None,
                // Python's IndexError: a route or a record past the end.
                _ => resume = (check - 1).max(0),
            }
        }
        Some(if entry_status == "Crashed" { (resume - 1).max(0) } else { resume.max(0) })
    }

    pub(super) fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// What the 2.0 evaluator itself would write for `input` with only the given fields changed: Python's `json.load`
    /// (key order kept, `object_pairs_hook=OrderedDict`), the change, then `json.dump(indent=4)` as `save_dict` does.
    /// `add`: the record `StatisticsManager` writes for a route whose simulation crashed before it scored, at
    /// `(index, route_id)`: `RouteRecord()` of `statistics_manager.py` (branch `leaderboard-2.0`), whose `to_json` is
    /// `vars(self)`, so its keys come in `__init__`'s order. `exotic`: the first record gets a float Python spells
    /// `1e-06` and a message with non-ASCII text, as the evaluator could write them.
    pub(super) fn python_dump(
        input: &str,
        progress0: Option<i64>,
        entry_status: Option<&str>,
        add: Option<(usize, &str)>,
        exotic: bool,
    ) -> String {
        const SCRIPT: &str = r#"
import json, sys
from collections import OrderedDict as OD
progress0, entry_status, add, exotic = json.loads(sys.argv[1])
doc = json.load(sys.stdin, object_pairs_hook=OD)
cp = doc['_checkpoint']
if exotic:
    r = cp['records'][0]
    r['scores']['score_penalty'] = 0.000001
    r['infractions']['collisions_vehicle'].append('Agent collided against object with type=caf\u00e9 \U0001F600 and id=1')
if add is not None:
    infractions = OD((k, []) for k in ['collisions_layout', 'collisions_pedestrian', 'collisions_vehicle', 'red_light',
        'stop_infraction', 'outside_route_lanes', 'min_speed_infractions', 'yield_emergency_vehicle_infractions',
        'scenario_timeouts', 'route_dev', 'vehicle_blocked', 'route_timeout'])
    cp['records'].append(OD([('index', add[0]), ('route_id', add[1]), ('status', 'Failed - Simulation crashed'),
        ('num_infractions', 0), ('infractions', infractions),
        ('scores', OD([('score_route', 0.0), ('score_penalty', 1.0), ('score_composed', 0.0)])),
        ('meta', OD([('route_length', 0), ('duration_game', 0.0), ('duration_system', 0.0)]))]))
if progress0 is not None:
    cp['progress'][0] = progress0
if entry_status is not None:
    doc['entry_status'] = entry_status
sys.stdout.write(json.dumps(doc, indent=4))
"#;
        use std::io::Write as _;
        let args = serde_json::json!([progress0, entry_status, add, exotic]).to_string();
        let mut child = std::process::Command::new("python3")
            .args(["-c", SCRIPT, &args])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the golden checkpoint test");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "python3 failed on the golden checkpoint test");
        String::from_utf8(out.stdout).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::test_support::*;

    #[test]
    fn summaries() {
        let d = TempDir::new("summary");
        let p = d.file();
        assert_eq!(summarize(&d.cp()).unwrap(), None);
        assert!(!exists_with_data(&d.cp()));

        std::fs::write(&p, FINISHED).unwrap();
        let s = summarize(&d.cp()).unwrap().unwrap();
        assert_eq!(
            s,
            Summary {
                entry_status: Some("Finished".into()),
                records: 2,
                progress: Some((2, 2)),
                global_record_empty: false,
                agent_not_set_up: 0,
            }
        );
        assert!(!s.agent_never_set_up());
        assert!(exists_with_data(&d.cp()));

        let rejected = serde_json::json!({"_checkpoint": {"global_record": {}, "progress": [1, 5], "records": [
            {"index": 0, "route_id": "RouteScenario_0_rep0", "status": "Failed - Agent's sensors were invalid"}]},
            "entry_status": "Rejected", "eligible": false, "sensors": [], "values": [], "labels": []});
        std::fs::write(&p, serde_json::to_vec_pretty(&rejected).unwrap()).unwrap();
        let s = summarize(&d.cp()).unwrap().unwrap();
        assert_eq!(s.entry_status.as_deref(), Some("Rejected"));
        assert_eq!((s.records, s.progress, s.global_record_empty), (1, Some((1, 5)), true));
        assert!(!s.agent_never_set_up());

        let setup = |statuses: &[&str]| {
            let records: Vec<Value> = statuses.iter().map(|st| serde_json::json!({"status": st})).collect();
            let v = serde_json::json!({"_checkpoint": {"global_record": {}, "progress": [1, 5], "records": records},
                "entry_status": "Started"});
            std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
            summarize(&d.cp()).unwrap().unwrap()
        };
        let failed = "Failed - Agent couldn't be set up";
        assert!(setup(&[failed, failed]).agent_never_set_up());
        let s = setup(&[failed, "Perfect"]);
        assert_eq!(s.agent_not_set_up, 1);
        assert!(!s.agent_never_set_up(), "one route ran: the agent was set up once");
        assert!(!setup(&[]).agent_never_set_up(), "nothing recorded is no evidence");

        std::fs::write(&p, MID_RUN).unwrap();
        let s = summarize(&d.cp()).unwrap().unwrap();
        assert_eq!(s.entry_status.as_deref(), Some("Started"));
        assert!(s.global_record_empty);

        // A fresh run's very first write has progress but no records yet: something to resume from.
        std::fs::write(&p, r#"{"_checkpoint": {"global_record": {}, "progress": [0, 5], "records": []}}"#).unwrap();
        assert!(exists_with_data(&d.cp()));
        std::fs::write(&p, r#"{"_checkpoint": {"global_record": {}, "progress": [], "records": []}}"#).unwrap();
        assert!(!exists_with_data(&d.cp()));
        std::fs::write(&p, "").unwrap();
        assert_eq!(summarize(&d.cp()).unwrap(), None);
        assert!(!exists_with_data(&d.cp()));
    }

    /// Issue 18, item 1. Every rewrite of the checkpoint (progress repair, `--route-retries` skip keeping or adding a
    /// record) is byte for byte what the evaluator's `json.dump(indent=4)` would write for the changed document: key
    /// order kept, floats and strings spelled as Python does, only the intended fields different.
    #[test]
    fn every_rewrite_is_what_the_evaluator_would_write() {
        const TWO_ROUTES_ONE_DONE: &str = include_str!(
            "../../../fixtures/results/lb2.0/partial_one_running_one_absent/inputs/partial_agent_results2.json"
        );
        let d = TempDir::new("golden");
        // Each input as the evaluator writes it (the fixtures' own bytes, or re-dumped by Python after a change).
        let check = |name: &str, input: &str, rewrite: &dyn Fn(&TempDir), expected: String| {
            assert_eq!(
                python_dump(input, None, None, None, false),
                input,
                "{name}: the input is not in the evaluator's layout"
            );
            std::fs::write(d.file(), input).unwrap();
            rewrite(&d);
            let got = std::fs::read_to_string(d.file()).unwrap();
            assert_ne!(got, input, "{name}: nothing was rewritten");
            if got != expected {
                let diff: Vec<_> =
                    got.lines().zip(expected.lines()).enumerate().filter(|(_, (a, b))| a != b).take(5).collect();
                panic!("{name}: not what the evaluator would write; first differing lines (got, expected): {diff:#?}");
            }
        };
        let repair = |d: &TempDir| {
            Guard::new(d.cp()).prepare_resume().unwrap();
        };
        let skip = |route: &'static str| {
            move |d: &TempDir| {
                assert!(skip_route(&d.cp(), route).unwrap().is_some());
            }
        };
        for exotic in [false, true] {
            let mid_run = python_dump(MID_RUN, None, None, None, exotic);
            let all_routes = python_dump(ALL_ROUTES, None, None, None, exotic);
            let crash_recorded = python_dump(CRASH_RECORDED, None, None, None, exotic);
            let gap = python_dump(GAP_AFTER_RESUME, None, None, None, exotic);
            let two = python_dump(TWO_ROUTES_ONE_DONE, None, None, None, exotic);

            // Progress repair: a crash with nothing recorded, under `Started` and under `Crashed`; a gap.
            let ahead = with_progress(&mid_run, "2", "3");
            check("repair", &ahead, &repair, python_dump(&ahead, Some(2), None, None, false));
            let crashed = with_status(&ahead, "Started", "Crashed");
            check("repair crashed", &crashed, &repair, python_dump(&crashed, Some(2), Some("Started"), None, false));
            check("repair gap", &gap, &repair, python_dump(&gap, Some(1), Some("Started"), None, false));

            // Skip keeping the record: the evaluator's crash record, and a resumed run's first write.
            let kept = with_status(&with_progress(&crash_recorded, "3", "2"), "Crashed", "Started");
            let expected = python_dump(&kept, Some(3), Some("Started"), None, false);
            check("skip kept", &kept, &skip("RouteScenario_7_rep0"), expected);
            let crashed = with_status(&all_routes, "Started", "Crashed");
            let expected = python_dump(&crashed, Some(5), Some("Started"), None, false);
            check("skip kept crashed", &crashed, &skip("RouteScenario_9_rep0"), expected);

            // Skip adding the evaluator's crash record.
            let expected = python_dump(&mid_run, Some(3), Some("Started"), Some((2, "RouteScenario_7_rep0")), false);
            check("skip added", &mid_run, &skip("RouteScenario_7_rep0"), expected);
            let expected = python_dump(&two, Some(2), Some("Started"), Some((1, "RouteScenario_3_rep0")), false);
            check("skip added last", &two, &skip("RouteScenario_3_rep0"), expected);
        }
    }
}

//! `--route-retries K`: a route that crashed the simulator `K` times is moved past instead of run again. The
//! crashes are counted per route beside the checkpoint ([`RouteRetries`]); [`skip_route`] then rewrites the
//! checkpoint so that the evaluator resumes after the route, keeping the route's record or adding the one the
//! evaluator writes for a simulation crash. Upstream has no such limit: a route that always crashes the simulator
//! spends every retry of the Job.

use super::progress::set_progress0;
use super::{
    CheckpointError, CheckpointFile, ReadOutcome, SIMULATION_CRASHED, Value, aligned_len, checkpoint_mut, crash_record,
    parse_results, progress_pair, read_file, rewrite, write_atomic,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use volume::layout::before_skip_path;
use volume::pyjson;
use volume::results::INFRACTIONS_V2;
use volume::safe::Root;

/// How `--route-retries` moved past a route that crashed the simulator too often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSkip {
    /// The route has the last record: the evaluator's record of the crash (see `crash_record`; `Crashed` makes
    /// it repeat the route), or the record of an earlier run of the route that it was running again (the first
    /// write of a resumed run, `Started` with `progress[0]` at the record). The record stays as it is;
    /// `entry_status` is `Started` (`cleared_crashed`: it was `Crashed`) and `progress[0]` is `index + 1`, so that
    /// the evaluator resumes after the route.
    KeptRecord { route_id: String, index: usize, status: String, cleared_crashed: bool, kept: PathBuf },
    /// The evaluator had recorded nothing for the route: the record it writes for a simulation crash was added at
    /// the route's index, and `progress[0]` set past it.
    AddedRecord { route_id: String, index: usize, kept: PathBuf },
}

impl fmt::Display for RouteSkip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteSkip::KeptRecord { route_id, index, status, cleared_crashed, kept } => write!(
                f,
                "moved past {route_id}: its record at index {index} (status {status:?}) stays, {}progress[0] set to {} \
                 so that the evaluator resumes after it (previous checkpoint kept as {})",
                if *cleared_crashed { "entry_status Crashed set to Started and " } else { "" },
                index + 1,
                kept.display()
            ),
            RouteSkip::AddedRecord { route_id, index, kept } => write!(
                f,
                "moved past {route_id}: added the evaluator's \"Failed - Simulation crashed\" record at index {index} \
                 (zero scores) and set progress[0] to {} (previous checkpoint kept as {})",
                index + 1,
                kept.display()
            ),
        }
    }
}

/// The route the last attempt was on when the simulator crashed, read from the checkpoint: `Some((route_id,
/// recorded))` where `recorded` says the evaluator wrote the crash (its record, `crash_record`, under
/// `entry_status` `Crashed`); when it wrote nothing, the route is `running` (the evaluator's last "Preparing"
/// line), if known.
pub fn crashed_route(results: &Value, running: Option<&str>) -> Option<(String, bool)> {
    // Under `Started` a crash record is an earlier attempt's, kept by the resumed run until it replaces it.
    if results["entry_status"].as_str() == Some("Crashed")
        && let Some(at) = crash_record(results)
        && let Some(id) = results["_checkpoint"]["records"][at]["route_id"].as_str()
    {
        return Some((id.to_string(), true));
    }
    running.map(|id| (id.to_string(), false))
}

/// Moves the checkpoint past `route_id`, which crashed the simulator too often (see [`RouteSkip`]). The previous
/// file is kept beside it (`<name>.before-skip-<route_id>`) and the new one written atomically. `Ok(None)` when
/// the file is not in a shape this can change safely (then nothing is written): the route is not the crashed
/// one at the resume point, the records are not aligned, the status is neither `Started` nor `Crashed`, or the
/// route would pass the total.
pub fn skip_route(file: &CheckpointFile, route_id: &str) -> Result<Option<RouteSkip>, CheckpointError> {
    let (root, path) = (&file.root, file.name.as_path());
    let bytes = match read_file(root, path)? {
        ReadOutcome::Bytes(b) => b,
        _ => return Ok(None),
    };
    let Ok(value) = parse_results(&bytes) else { return Ok(None) };
    let Some((done, total)) = progress_pair(&value["_checkpoint"]) else { return Ok(None) };
    let records = value["_checkpoint"]["records"].as_array().cloned().unwrap_or_default();
    let n = records.len();
    let entry_status = value["entry_status"].as_str().unwrap_or_default().to_string();
    if aligned_len(&records) != n || !matches!(entry_status.as_str(), "Started" | "Crashed") {
        return Ok(None);
    }
    // The route's record is last, and the evaluator would run the route again: it is the crash record, or the
    // first write of a run resumed at it (which crashed again before writing anything else).
    let last_is_the_route = records.last().is_some_and(|r| r["route_id"].as_str() == Some(route_id))
        && (crash_record(&value) == Some(n - 1) || (entry_status == "Started" && usize::try_from(done) == Ok(n - 1)));
    let kept = before_skip_path(path, route_id);
    let (skip, added) = if last_is_the_route {
        let skip = RouteSkip::KeptRecord {
            route_id: route_id.to_string(),
            index: n - 1,
            status: records[n - 1]["status"].as_str().unwrap_or_default().to_string(),
            cleared_crashed: entry_status == "Crashed",
            kept: root.display(&kept),
        };
        (skip, None)
    } else if !records.iter().any(|r| r["route_id"].as_str() == Some(route_id)) && (n as i64) < total {
        let skip = RouteSkip::AddedRecord { route_id: route_id.to_string(), index: n, kept: root.display(&kept) };
        (skip, Some(simulation_crashed_record(n, route_id)))
    } else {
        return Ok(None);
    };
    // `progress[0]` past the route, `entry_status` `Started`, and the added record last; nothing else changes.
    let progress0 = i64::try_from(n + usize::from(added.is_some())).unwrap_or(i64::MAX);
    let Some(out) = rewrite(&bytes, |doc| {
        if let Some(record) = added {
            push_record(doc, record)?;
        }
        set_progress0(doc, progress0)?;
        doc.insert("entry_status", pyjson::Value::str("Started"));
        Some(())
    }) else {
        return Ok(None);
    };
    write_atomic(root, &kept, &bytes)?;
    write_atomic(root, path, &out)?;
    Ok(Some(skip))
}

/// The record `StatisticsManager` (branch `leaderboard-2.0`) writes for a route whose simulation crashed before it
/// could score: a fresh `RouteRecord` with the crash's status, every infraction list empty, zero scores, no length.
/// Its `to_json` is `vars(self)`, so the keys come in the order `RouteRecord.__init__` assigns them (the spec's
/// RouteRecord shape, 2.2), and `compute_route_statistics` gives the scores' floats and the int length.
fn simulation_crashed_record(index: usize, route_id: &str) -> pyjson::Value {
    use pyjson::Value;
    let object = |entries: Vec<(&str, Value)>| Value::object(entries.into_iter().collect());
    let infractions = INFRACTIONS_V2.into_iter().map(|k| (k, Value::empty_array())).collect();
    object(vec![
        ("index", Value::Int(i64::try_from(index).unwrap_or(i64::MAX))),
        ("route_id", Value::str(route_id)),
        ("status", Value::str(format!("Failed - {SIMULATION_CRASHED}"))),
        ("num_infractions", Value::Int(0)),
        ("infractions", object(infractions)),
        (
            "scores",
            object(vec![
                ("score_route", Value::Float(0.0)),
                ("score_penalty", Value::Float(1.0)),
                ("score_composed", Value::Float(0.0)),
            ]),
        ),
        (
            "meta",
            object(vec![
                ("route_length", Value::Int(0)),
                ("duration_game", Value::Float(0.0)),
                ("duration_system", Value::Float(0.0)),
            ]),
        ),
    ])
}

/// Appends `record` to `_checkpoint.records`.
fn push_record(doc: &mut pyjson::Object, record: pyjson::Value) -> Option<()> {
    let pyjson::Value::Array(records) = checkpoint_mut(doc)?.get_mut("records")? else { return None };
    Arc::make_mut(records).push(record);
    Some(())
}

/// `--route-retries K`: the simulation crashes counted per route (kept beside the checkpoint, so that a restarted
/// container keeps them) and the routes moved past.
#[derive(Debug)]
pub struct RouteRetries {
    pub limit: u32,
    root: Arc<Root>,
    path: PathBuf,
    counts: BTreeMap<String, u32>,
    skipped: BTreeSet<String>,
}

impl RouteRetries {
    /// The counts kept beside `checkpoint` (none when the file is missing, unreadable, or not ours).
    pub fn new(checkpoint: &CheckpointFile, limit: u32) -> Self {
        let root = checkpoint.root().clone();
        let path = volume::layout::route_crashes_path(checkpoint.name());
        let saved: serde_json::Value = root
            .read_capped(&path, 16 * 1024 * 1024)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let counts = saved["counts"]
            .as_object()
            .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), u32::try_from(v.as_u64()?).ok()?))).collect())
            .unwrap_or_default();
        let skipped = saved["skipped"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        RouteRetries { limit, root, path, counts, skipped }
    }

    pub fn skipped(&self) -> BTreeSet<String> {
        self.skipped.clone()
    }

    /// The simulation crashes counted against `route`.
    pub fn crashes(&self, route: &str) -> u32 {
        self.counts.get(route).copied().unwrap_or(0)
    }

    /// One more simulation crash on `route`; returns its count.
    pub(crate) fn count(&mut self, route: &str) -> u32 {
        let n = self.counts.entry(route.to_string()).or_default();
        *n += 1;
        let n = *n;
        self.save();
        n
    }

    pub(crate) fn skip(&mut self, route: &str) {
        self.skipped.insert(route.to_string());
        self.save();
    }

    fn save(&self) {
        let doc = serde_json::json!({"counts": self.counts, "skipped": self.skipped});
        let _ = self.root.write_atomic(&self.path, doc.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::test_support::*;
    use crate::checkpoint::{Guard, Repair, plan_progress, plan_progress_skipping};

    #[test]
    fn route_retries_move_past_a_crash_record_kept_by_the_resumed_run() {
        // Issue 17, item 1. The crash of route 2 was recorded (`Crashed`, `progress [3, 5]`); the resumed run wrote
        // `Started`, `progress [2, 5]`, the crash record still last, then crashed again while loading route 2.
        let routes = worker2_routes();
        let state = with_status(&with_progress(CRASH_RECORDED, "3", "2"), "Crashed", "Started");
        let before = parse(&state);
        assert_eq!(evaluator_resume(&before, &routes), Some(2), "the evaluator would run route 2 again");
        // Not the evaluator's record of this attempt's crash: counted from the log's route, not as recorded.
        assert_eq!(crashed_route(&before, Some("RouteScenario_7_rep0")), Some(("RouteScenario_7_rep0".into(), false)));
        let d = TempDir::new("skip-started");
        std::fs::write(d.file(), &state).unwrap();
        // A route with an earlier record that is not the last: nothing to move past safely.
        assert_eq!(skip_route(&d.cp(), "RouteScenario_6_rep0").unwrap(), None);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), state);

        let skip = skip_route(&d.cp(), "RouteScenario_7_rep0").unwrap();
        let after = parse(&std::fs::read_to_string(d.file()).unwrap());
        assert_eq!(after["entry_status"], "Started");
        assert_eq!(after["_checkpoint"]["progress"], serde_json::json!([3, 5]));
        assert_eq!(evaluator_resume(&after, &routes), Some(3), "the evaluator resumes after route 2");
        // Everything else, the crash record included, is what the evaluator wrote.
        let mut expected = before.clone();
        expected["_checkpoint"]["progress"][0] = Value::from(3);
        assert_eq!(after, expected);
        let kept = d.0.join("agent_results.json.before-skip-RouteScenario_7_rep0");
        assert_eq!(std::fs::read_to_string(kept).unwrap(), state);
        assert!(
            matches!(&skip, Some(RouteSkip::KeptRecord { index: 2, cleared_crashed: false, status, .. })
                if status == "Failed - Simulation crashed"),
            "{skip:?}"
        );
        let line = skip.unwrap().to_string();
        assert!(line.contains("progress[0] set to 3") && !line.contains("entry_status Crashed"), "{line}");
        // The next resume leaves it alone.
        let skipped = BTreeSet::from(["RouteScenario_7_rep0".to_string()]);
        assert_eq!(plan_progress_skipping(&after, &skipped), None);
    }

    #[test]
    fn a_crash_record_is_known_by_its_position_not_its_status() {
        // Issue 17, item 2. Route 4 (RouteScenario_9) got blocked, then the simulator crashed: the evaluator's crash
        // record says "Failed - Agent got blocked" (the event's message overwrote "Simulation crashed"), under
        // `Crashed`, `progress [5, 5]`. The evaluator repeats the route, as upstream intends.
        let routes = worker2_routes();
        let crashed = with_status(ALL_ROUTES, "Started", "Crashed");
        let v = parse(&crashed);
        assert_eq!(evaluator_resume(&v, &routes), Some(4));
        assert_eq!(plan_progress(&v), None, "the crash is recorded: nothing to repair");
        let d = TempDir::new("crash-by-position");
        std::fs::write(d.file(), &crashed).unwrap();
        assert_eq!(Guard::new(d.cp()).prepare_resume().unwrap(), []);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), crashed);
        assert_eq!(crashed_route(&v, None), Some(("RouteScenario_9_rep0".into(), true)));

        // Moved past by `--route-retries`: the record stays, the evaluator goes on after it (here: finishes).
        let skip = skip_route(&d.cp(), "RouteScenario_9_rep0").unwrap();
        assert!(
            matches!(&skip, Some(RouteSkip::KeptRecord { index: 4, cleared_crashed: true, status, .. })
                if status == "Failed - Agent got blocked"),
            "{skip:?}"
        );
        let after = parse(&std::fs::read_to_string(d.file()).unwrap());
        assert_eq!(after, parse(ALL_ROUTES));
        assert_eq!(evaluator_resume(&after, &routes), Some(5));

        // The same record under the resumed run's first write (`Started`, `progress [4, 5]`), which then crashed
        // while loading: the evaluator runs route 4 again; moving past it keeps the record too.
        let first_write = with_progress(ALL_ROUTES, "5", "4");
        assert_eq!(plan_progress(&parse(&first_write)), None);
        std::fs::write(d.file(), &first_write).unwrap();
        assert!(matches!(
            skip_route(&d.cp(), "RouteScenario_9_rep0").unwrap(),
            Some(RouteSkip::KeptRecord { index: 4, cleared_crashed: false, .. })
        ));
        assert_eq!(parse(&std::fs::read_to_string(d.file()).unwrap()), parse(ALL_ROUTES));

        // A crash record of a route already moved past (a last good copy from before the skip put back): only
        // the status changes, and the log line says so instead of "lowered from 5 to 5".
        std::fs::write(d.file(), &crashed).unwrap();
        let skipped = BTreeSet::from(["RouteScenario_9_rep0".to_string()]);
        let repairs = Guard::new(d.cp()).prepare_resume_skipping(&skipped).unwrap();
        assert_eq!(repairs, [Repair::ProgressRepaired { from: 5, to: 5, cleared_crashed: true, resumes_at: 5 }]);
        let line = repairs[0].to_string();
        assert!(!line.contains("lowered"), "{line}");
        assert!(line.contains("entry_status Crashed set to Started (progress[0] stays 5)"), "{line}");
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), ALL_ROUTES);
    }
}

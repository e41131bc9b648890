//! The progress repair. When the simulator dies mid-route the 2.0 evaluator often records
//! nothing for that route (its `stop_scenario()` raises, so `_register_statistics` never runs) but
//! still saves `progress = [k + 1, total]` with only `k` records. Its resume
//! (`RouteIndexer.validate_and_resume`, branch `leaderboard-2.0`) then walks the records up to
//! `progress[0]`, hits the end of the list and falls back to `max(len(records) - 1, 0)`: it runs the
//! last *scored* route again and replaces its record, then the crashed one. If the crash also left
//! `entry_status` at `Crashed` it steps back one more. [`plan_progress`] works out the one
//! `progress[0]` (and, when needed, `entry_status`) that makes the evaluator resume at the crashed
//! route and nowhere else; the derivation is written out there. Only `progress[0]` is ever lowered,
//! never `progress[1]` (a total that differs from the selected routes makes the evaluator empty the
//! file). [`super::guard`] runs it before every resumed attempt.

use super::{
    CheckpointError, Repair, aligned_len, checkpoint_mut, crash_record, parse_results, progress_pair, rewrite,
    write_atomic,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use volume::pyjson;
use volume::safe::Root;

/// The change to make to a 2.0 checkpoint's resume point, from [`plan_progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressPlan {
    pub from: i64,
    pub to: i64,
    pub cleared_crashed: bool,
    /// The route index the evaluator resumes at after the change.
    pub resumes_at: i64,
}

/// The route index at which the 2.0 evaluator resumes, as `RouteIndexer.validate_and_resume` computes it
/// (branch `leaderboard-2.0`, `leaderboard/utils/route_indexer.py`), leaving out the route-id check
/// that can only make it give up ([`plan_progress`] keeps that check within the aligned records):
///
/// ```python
/// check_index = 0
/// resume_index = progress[0]
/// while check_index < resume_index:
///     try:
///         ...  route_data[check_index]['route_id'] ...      # IndexError when check_index >= len(records)
///         check_index += 1
///     except IndexError:
///         resume_index = max(check_index - 1, 0)            # ends the loop: check_index > resume_index
/// if entry_status == "Crashed":
///     self.index = max(0, resume_index - 1)
/// else:
///     self.index = max(0, resume_index)
/// ```
///
/// So with `R` records: `progress[0] > R` steps back to `max(R - 1, 0)`, otherwise `progress[0]` stands;
/// then `Crashed` takes one more step back.
pub fn evaluator_resume_index(progress0: i64, records: usize, crashed: bool) -> i64 {
    let records = i64::try_from(records).unwrap_or(i64::MAX);
    let resume = if progress0 > records { (records - 1).max(0) } else { progress0 };
    if crashed { (resume - 1).max(0) } else { resume.max(0) }
}

/// Works out whether, and how, a checkpoint's resume point must change so that the 2.0 evaluator resumes
/// exactly at the route the last attempt was running. `None`: leave the file as it is.
///
/// The target. Records sit at the position of their route (`create_route_data` and
/// `compute_route_statistics` write `records[config.index]`, and each record's `index` field is that
/// position). Let `C` be the length of the leading run of records whose `index` equals their position
/// (all of them, in a file the evaluator finished writing). The route to resume at is
/// * `C - 1` when record `C - 1` is the evaluator's record of a simulation crash (`crash_record`: under
///   `Crashed` with `progress[0] = C`, whatever its status says, or a status that says "Simulation crashed"):
///   upstream's own crash path repeats it, as intended, since the crash was not the agent's;
/// * `C` otherwise: the first route without a record.
///
/// Nothing changes when the evaluator already resumes at the target and its route-id check reads aligned
/// records only (`min(progress[0], R) <= C`, `R` = number of records). With records beyond `C` and
/// `progress[0] > C` it would compare one of them with another route's id and give up, emptying the file, even
/// where the resume index would come out right. Otherwise, using [`evaluator_resume_index`] (`C <= R`):
/// * `entry_status` is not `Crashed`: `progress[0] = target` (`<= R`, so no fallback) resumes at `target`.
/// * `Crashed` and record `C - 1` is the crash: `progress[0] = C` resumes at `C - 1`.
/// * `Crashed` otherwise (the crash was not recorded, or its record is that of a route `--route-retries`
///   moved past): no `progress[0]` works (`C + 1` falls back or runs into unaligned records), so
///   `entry_status` becomes `Started`, what the evaluator itself writes during a run and at the start of
///   every resumed one (`eligible` is `false` for both), and `progress[0] = C`.
///
/// Only lowering is done (`progress[0]` never rises): with `progress[0] <= C` the evaluator checks the
/// route ids of records it wrote itself at their own positions, a subset of what it checks today, so
/// the repair cannot make it give up and empty the file. Lowering also clears the case where upstream
/// would check unaligned records (left by a resumed run stopped between dropping a record and writing
/// it back) and give up. Files that look like Leaderboard 1.0 (route ids without `_rep`), whose
/// evaluator resumes at `progress[0]` whatever the status, are left alone, as are files whose progress
/// is not two integers.
pub fn plan_progress(results: &Value) -> Option<ProgressPlan> {
    plan_progress_skipping(results, &BTreeSet::new())
}

/// [`plan_progress`], where a trailing "Simulation crashed" record of a route in `skipped` (moved past by
/// `--route-retries`) is a result like any other: the resume point is after it, not at it.
pub fn plan_progress_skipping(results: &Value, skipped: &BTreeSet<String>) -> Option<ProgressPlan> {
    let cp = &results["_checkpoint"];
    let records = cp["records"].as_array()?;
    let (from, _total) = progress_pair(cp)?;
    let is_v2 = records
        .iter()
        .any(|r| r.get("num_infractions").is_some() || r["route_id"].as_str().is_some_and(|id| id.contains("_rep")));
    if !is_v2 {
        return None;
    }
    let crashed = results["entry_status"].as_str() == Some("Crashed");
    let crash_last = crash_record(results)
        .is_some_and(|at| !records[at]["route_id"].as_str().is_some_and(|id| skipped.contains(id)));
    let aligned = i64::try_from(aligned_len(records)).ok()?;
    let target = if crash_last { aligned - 1 } else { aligned };
    // The records the route-id check reads: up to `progress[0]`, or all of them before its fallback.
    let checked = from.min(i64::try_from(records.len()).ok()?);
    if evaluator_resume_index(from, records.len(), crashed) == target && checked <= aligned {
        return None;
    }
    let (to, cleared_crashed) = match (crashed, crash_last) {
        (true, true) => (aligned, false),
        (true, false) => (target, true),
        (false, _) => (target, false),
    };
    if to > from {
        return None;
    }
    let resumes_at = evaluator_resume_index(to, records.len(), crashed && !cleared_crashed);
    debug_assert_eq!(resumes_at, target);
    Some(ProgressPlan { from, to, cleared_crashed, resumes_at })
}

/// Applies [`plan_progress`] to the file's bytes and writes the result atomically.
pub(super) fn repair_progress(
    root: &Root,
    path: &Path,
    bytes: &[u8],
    skipped: &BTreeSet<String>,
) -> Result<Option<Repair>, CheckpointError> {
    let Ok(value) = parse_results(bytes) else { return Ok(None) };
    let Some(plan) = plan_progress_skipping(&value, skipped) else { return Ok(None) };
    let Some(out) = apply_plan(bytes, &plan) else { return Ok(None) };
    write_atomic(root, path, &out)?;
    Ok(Some(Repair::ProgressRepaired {
        from: plan.from,
        to: plan.to,
        cleared_crashed: plan.cleared_crashed,
        resumes_at: plan.resumes_at,
    }))
}

/// The checkpoint's bytes with [`ProgressPlan`] applied: `progress[0]` set to `to`, and `entry_status` to `Started`
/// when the plan clears `Crashed`. See [`rewrite`].
pub(super) fn apply_plan(bytes: &[u8], plan: &ProgressPlan) -> Option<Vec<u8>> {
    rewrite(bytes, |doc| {
        set_progress0(doc, plan.to)?;
        if plan.cleared_crashed {
            doc.insert("entry_status", pyjson::Value::str("Started"));
        }
        Some(())
    })
}

/// Sets `_checkpoint.progress[0]`, leaving `progress[1]` as it is.
pub(super) fn set_progress0(doc: &mut pyjson::Object, to: i64) -> Option<()> {
    let pyjson::Value::Array(progress) = checkpoint_mut(doc)?.get_mut("progress")? else { return None };
    *Arc::make_mut(progress).first_mut()? = pyjson::Value::Int(to);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Guard;
    use crate::checkpoint::test_support::*;

    #[test]
    fn crash_recorded_needs_no_repair() {
        // (a) `Crashed`, `progress [3, 5]`, record 2 `Failed - Simulation crashed`: the evaluator resumes at
        // 3 - 1 = 2 and runs the crashed route again, as upstream intends.
        let v: Value = serde_json::from_str(CRASH_RECORDED).unwrap();
        assert_eq!(plan_progress(&v), None);
        assert_eq!(evaluator_resume_index(3, 3, true), 2);
        let d = TempDir::new("crash-recorded");
        std::fs::write(d.file(), CRASH_RECORDED).unwrap();
        assert_eq!(Guard::new(d.cp()).prepare_resume().unwrap(), []);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), CRASH_RECORDED);

        // The resumed run's own first write (`Started`, `progress [2, 5]`, the crash record still there)
        // resumes at 2 as well.
        let first_write = with_progress(CRASH_RECORDED, "3", "2").replace("\"Crashed\"", "\"Started\"");
        assert_eq!(plan_progress(&serde_json::from_str(&first_write).unwrap()), None);
    }

    #[test]
    fn crash_with_nothing_recorded_is_repaired() {
        // (b) Two records, route 2 was running when the simulator died: nothing recorded for it, but
        // `progress [3, 5]`. Upstream resumes at max(2 - 1, 0) = 1 and scores route 1 again.
        let ahead = with_progress(MID_RUN, "2", "3");
        assert_eq!(evaluator_resume_index(3, 2, false), 1);
        let d = TempDir::new("crash-unrecorded");
        std::fs::write(d.file(), &ahead).unwrap();
        let repairs = Guard::new(d.cp()).prepare_resume().unwrap();
        assert_eq!(repairs, [Repair::ProgressRepaired { from: 3, to: 2, cleared_crashed: false, resumes_at: 2 }]);
        assert!(repairs[0].to_string().contains("resumes at route index 2"), "{}", repairs[0]);
        // Only that one character changed: the rest is byte-identical.
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), MID_RUN);
        assert_eq!(d.names(), ["agent_results.json"]);

        // The same with `entry_status` left at `Crashed`: upstream would step back to 0. No progress value
        // alone helps, so the status goes back to `Started`, as the evaluator writes it during a run.
        let crashed = ahead.replace("\"entry_status\": \"Started\"", "\"entry_status\": \"Crashed\"");
        assert_eq!(evaluator_resume_index(3, 2, true), 0);
        std::fs::write(d.file(), &crashed).unwrap();
        let repairs = Guard::new(d.cp()).prepare_resume().unwrap();
        assert_eq!(repairs, [Repair::ProgressRepaired { from: 3, to: 2, cleared_crashed: true, resumes_at: 2 }]);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), MID_RUN);

        // Crashed at route 0 with nothing recorded: resuming at 0 is already right.
        let v = serde_json::json!({"_checkpoint": {"global_record": {}, "progress": [1, 5], "records": []},
            "entry_status": "Crashed"});
        assert_eq!(plan_progress(&v), None);
    }

    #[test]
    fn progress_equal_to_records_needs_no_repair() {
        // (c)
        assert_eq!(plan_progress(&serde_json::from_str(MID_RUN).unwrap()), None);
        assert_eq!(plan_progress(&serde_json::from_str(FINISHED).unwrap()), None);
        let d = TempDir::new("agree");
        std::fs::write(d.file(), MID_RUN).unwrap();
        assert_eq!(Guard::new(d.cp()).prepare_resume().unwrap(), []);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), MID_RUN);
    }

    #[test]
    fn progress_is_never_raised_and_total_never_touched() {
        // Progress behind the records: the evaluator runs route 1 again, but raising progress would widen
        // its route-id check over records we cannot match against the route list.
        let behind = with_progress(MID_RUN, "2", "1");
        assert_eq!(plan_progress(&serde_json::from_str(&behind).unwrap()), None);
        // Far ahead: lowered to the records, total kept.
        let far = with_progress(MID_RUN, "2", "4");
        let plan = plan_progress(&serde_json::from_str(&far).unwrap()).unwrap();
        assert_eq!((plan.from, plan.to, plan.resumes_at), (4, 2, 2));
        assert!(
            String::from_utf8(apply_plan(far.as_bytes(), &plan).unwrap())
                .unwrap()
                .contains("\"progress\": [\n            2,\n            5\n        ]")
        );
    }

    #[test]
    fn unaligned_records_lower_progress_to_the_aligned_ones() {
        // A resumed run dropped record 0 (its placeholder) before writing: records hold routes 1 and 2 at
        // positions 0 and 1. Upstream would compare position 0 with route 0 and start over.
        let v = serde_json::json!({"_checkpoint": {"global_record": {}, "progress": [1, 5], "records": [
            {"index": 1, "route_id": "RouteScenario_1_rep0", "status": "Perfect"},
            {"index": 2, "route_id": "RouteScenario_2_rep0", "status": "Perfect"}]},
            "entry_status": "Started"});
        let plan = plan_progress(&v).unwrap();
        assert_eq!((plan.to, plan.resumes_at), (0, 0));
    }

    #[test]
    fn leaderboard_1_files_are_left_alone() {
        let v = serde_json::json!({"_checkpoint": {"global_record": {}, "progress": [3, 5], "records": [
            {"index": 0, "route_id": "RouteScenario_0", "status": "Completed"}]}, "entry_status": "Started"});
        assert_eq!(plan_progress(&v), None);
    }

    #[test]
    fn a_file_in_another_layout_comes_back_in_the_evaluators() {
        let d = TempDir::new("fallback");
        let compact = serde_json::to_string(&serde_json::json!({
            "_checkpoint": {"global_record": {}, "progress": [3, 5], "records": [
                {"index": 0, "route_id": "RouteScenario_0_rep0", "status": "Failed - Agent got blocked \u{e9}"}]},
            "entry_status": "Crashed", "eligible": false}))
        .unwrap();
        std::fs::write(d.file(), &compact).unwrap();
        let repairs = Guard::new(d.cp()).prepare_resume().unwrap();
        assert_eq!(repairs, [Repair::ProgressRepaired { from: 3, to: 1, cleared_crashed: true, resumes_at: 1 }]);
        let text = std::fs::read_to_string(d.file()).unwrap();
        assert!(text.contains("\"progress\": [\n            1,\n            5\n        ]"), "{text}");
        assert!(text.contains("blocked \\u00e9\""), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["entry_status"], "Started");
        assert_eq!(v["eligible"], false);
    }

    #[test]
    fn records_beyond_the_aligned_ones_are_never_checked() {
        // Issue 17, item 4. Records 0 and 2 at positions 0 and 1, `Crashed`, `progress [2, 5]`: the evaluator
        // would resume at 1 (2, one back), the right route, but its route-id check reads position 1 (route 7's
        // record where route 6's belongs) and gives up, emptying the file.
        let routes = worker2_routes();
        let v = parse(GAP_AFTER_RESUME);
        assert_eq!(evaluator_resume_index(2, 2, true), 1);
        assert_eq!(evaluator_resume(&v, &routes), None);
        let plan = plan_progress(&v);
        assert_eq!(plan, Some(ProgressPlan { from: 2, to: 1, cleared_crashed: true, resumes_at: 1 }));
        let d = TempDir::new("gap");
        std::fs::write(d.file(), GAP_AFTER_RESUME).unwrap();
        Guard::new(d.cp()).prepare_resume().unwrap();
        let text = std::fs::read_to_string(d.file()).unwrap();
        assert_eq!(text, with_status(&with_progress(GAP_AFTER_RESUME, "2", "1"), "Crashed", "Started"));
        assert_eq!(evaluator_resume(&parse(&text), &routes), Some(1));

        // The same records under `Started` with `progress [3, 5]`: the fallback (max(2 - 1, 0) = 1) lands right
        // too, after the check has read position 1.
        let started = with_status(&with_progress(GAP_AFTER_RESUME, "2", "3"), "Crashed", "Started");
        assert_eq!(evaluator_resume_index(3, 2, false), 1);
        assert_eq!(evaluator_resume(&parse(&started), &routes), None);
        let plan = plan_progress(&parse(&started)).unwrap();
        assert_eq!((plan.to, plan.cleared_crashed, plan.resumes_at), (1, false, 1));
        let lowered = String::from_utf8(apply_plan(started.as_bytes(), &plan).unwrap()).unwrap();
        assert_eq!(evaluator_resume(&parse(&lowered), &routes), Some(1));
    }
}

//! The completion policy, as pure functions (no I/O, no clock: inputs in, decision out): what a worker's markers and
//! results mean ([`worker_end`], [`verdict`]), whether and how the submission has ended ([`completion`]), and which
//! routes have no result at an incomplete end ([`missing_routes`]). The volume is read elsewhere
//! ([`super::workers`]); these only decide.

use super::workers::Lost;
use crate::publish::End;
use crate::results::Version;
use crate::results::model::route_sort_key;
use crate::routes::{Assigned, Missing};
use std::collections::HashSet;
use volume::markers::{Marker, Role, StatusSet, WorkerId};
use volume::results::RouteId;

/// What the markers of the status folder say of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct WorkerMarkers {
    /// The first side (in [`Role::ALL`]'s order) that wrote a `.failed` marker.
    pub failed: Option<Role>,
    /// Both sides wrote their done marker.
    pub done: bool,
}

impl WorkerMarkers {
    pub(crate) fn of(markers: &StatusSet, id: WorkerId) -> WorkerMarkers {
        WorkerMarkers {
            failed: Role::ALL.into_iter().find(|&side| markers.is_failed(side, id)),
            done: markers.is_done(Role::Agent, id) && markers.is_done(Role::Simulator, id),
        }
    }
}

/// Where a worker stands, from its markers and its results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerEnd {
    /// No end marker yet.
    Running,
    /// Both done markers, and its results hold every route it had to record.
    Complete,
    /// Both done markers, but its results lack what it had to record (the reason says what).
    Incomplete { reason: String },
    /// A side gave up (its `.failed` marker), whatever the results.
    Failed { side: Role },
    /// No end marker, and its pod stopped reporting for good (`logcopy monitor`: its shard status object stayed
    /// unchanged for `--worker-silence`).
    Lost,
    /// No end marker, and no pod of it ever reported (`logcopy monitor`: every other worker ended
    /// `--worker-silence` ago and its shard status object never appeared).
    NeverStarted,
}

/// What a worker recorded, read from its last good parse: what [`verdict`] and [`missing_routes`] judge.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorded<'a> {
    /// The routes it was given (`--route-count`); `None`: its own progress decides.
    pub assigned: Option<&'a Assigned>,
    /// `_checkpoint`'s (records present, route total); `None` without a usable results file.
    pub progress: Option<(usize, i64)>,
    /// The route ids of its records.
    pub ids: Vec<String>,
}

/// A `.failed` marker ends a worker failed; both done markers end it, complete when its results hold what it had to
/// record (`verdict`, asked only then); without either, it is lost when `lost` says so, else running.
pub(crate) fn worker_end(
    markers: WorkerMarkers,
    lost: impl FnOnce() -> Option<Lost>,
    verdict: impl FnOnce() -> Result<(), String>,
) -> WorkerEnd {
    if let Some(side) = markers.failed {
        return WorkerEnd::Failed { side };
    }
    if !markers.done {
        return match lost() {
            None => WorkerEnd::Running,
            Some(Lost::Silent) => WorkerEnd::Lost,
            Some(Lost::NeverStarted) => WorkerEnd::NeverStarted,
        };
    }
    match verdict() {
        Ok(()) => WorkerEnd::Complete,
        Err(reason) => WorkerEnd::Incomplete { reason },
    }
}

/// `Ok` when the worker has recorded what it had to, else what it lacks. With the routes it was given: each has a
/// record (records of other routes do not count), and, as without them, its progress is complete, so that the merge
/// can compute the global record. Without: its progress alone, upstream's rule.
pub(crate) fn verdict(version: Version, w: &Recorded) -> Result<(), String> {
    let Some(a) = w.assigned else {
        return match w.progress {
            Some((done, total)) if total > 0 && done as i64 >= total => Ok(()),
            Some((done, total)) => Err(format!("ended with {done} of {total} routes recorded")),
            None => Err("ended without a results file".into()),
        };
    };
    if a.is_empty() {
        return Ok(());
    }
    let Some((records, total)) = w.progress else {
        return Err(format!("ended without a results file (its routes: {})", a.describe()));
    };
    let lacking = a.missing(version, w.ids.iter().map(String::as_str), &mut Missing::default());
    if lacking > 0 {
        let (runs, routes) = (a.runs(), a.describe());
        return Err(format!("ended with {} of the {runs} routes it was given ({routes}) recorded", runs - lacking));
    }
    let outside = w.ids.iter().filter(|id| !a.contains(version, id)).count();
    if total <= 0 || ((records - outside) as i64) < total {
        return Err(format!("recorded the {} routes it was given, but its progress counts {total}", a.runs()));
    }
    Ok(())
}

/// `Some` once every worker has ended (`ends`: each worker's id and end, in order; read up to the first that is
/// running), with the final status decision and its reason: FINISHED when all completed, else FAILED naming each
/// worker that did not.
pub(crate) fn completion(ends: impl IntoIterator<Item = (u32, WorkerEnd)>) -> Option<End> {
    let mut problems = Vec::new();
    for (id, end) in ends {
        match end {
            WorkerEnd::Running => return None,
            WorkerEnd::Complete => {}
            WorkerEnd::Failed { side } => {
                let marker = Marker::Failed { role: side, worker: WorkerId(id) };
                problems.push(format!("worker {id} failed ({marker})"));
            }
            WorkerEnd::Incomplete { reason } => problems.push(format!("worker {id} {reason}")),
            WorkerEnd::Lost => problems.push(format!("worker {id} stopped reporting (its pod was lost)")),
            WorkerEnd::NeverStarted => problems.push(format!("worker {id} never started (no pod reported)")),
        }
    }
    Some(if problems.is_empty() {
        End::Completed { finished: true, reason: "every worker finished all its routes".into() }
    } else {
        End::Completed { finished: false, reason: problems.join("; ") }
    })
}

/// EvalAI's cancel ends the run once the cancel markers that logcopy wrote on it are on the volume (`cancel_marker`,
/// as the last cycle read them). The loop asks this after [`completion`], which wins when every worker had ended.
pub(crate) fn cancelled(cancel_marker: bool, wrote_cancel: bool) -> Option<End> {
    (cancel_marker && wrote_cancel).then(|| End::Cancelled { reason: "EvalAI reports the submission cancelled".into() })
}

/// Route ids of the submission with no result: at most [`crate::routes::SHOWN`] named, and how many in all. With the
/// routes each worker was given, those without a record. Without them, the routes that the workers' progress totals
/// add up to (a worker without a results file is assumed to have as many routes as the others, as upstream splits
/// them evenly). The work is bounded by the records present, never by a progress total, which the participant's
/// evaluator writes.
pub(crate) fn missing_routes(version: Version, workers: &[Recorded]) -> Missing {
    let mut out = Missing::default();
    if workers.iter().any(|w| w.assigned.is_some()) {
        for w in workers {
            if let Some(a) = w.assigned {
                a.missing(version, w.ids.iter().map(String::as_str), &mut out);
            }
        }
        return out;
    }
    let totals: Vec<Option<i64>> = workers.iter().map(|w| w.progress.map(|(_, t)| t)).collect();
    let Some(typical) = totals.iter().flatten().copied().max() else { return out };
    let total: u128 = totals.iter().map(|t| u128::try_from(t.unwrap_or(typical)).unwrap_or(0)).sum();
    let keys: HashSet<(u128, u128)> = workers
        .iter()
        .flat_map(|w| &w.ids)
        .filter_map(|id| route_sort_key(version, id))
        .filter_map(|(r, k)| Some((u128::try_from(r).ok()?, u128::try_from(k).ok()?)))
        .collect();
    let reps = match version {
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
                out.name(|| RouteId::of(version, r, k).to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{RoutePlan, SHOWN};

    fn names(ids: impl IntoIterator<Item = u64>) -> Vec<String> {
        ids.into_iter().map(|i| format!("RouteScenario_{i}_rep0")).collect()
    }

    fn plan(routes: u32, repetitions: u32, workers: u32) -> RoutePlan {
        RoutePlan { routes, repetitions, workers }
    }

    /// A worker's record: these route ids, and this route total in its progress (its records are the ids, as
    /// `Worker::progress` counts them).
    fn rec(assigned: Option<&Assigned>, ids: Vec<String>, total: i64) -> Recorded<'_> {
        Recorded { assigned, progress: Some((ids.len(), total)), ids }
    }

    fn markers(names: &[Marker]) -> StatusSet {
        StatusSet::from_names(names.iter().map(Marker::file_name))
    }

    #[test]
    fn worker_end_reads_the_markers_first() {
        let id = WorkerId(2);
        let done = |role| Marker::Done { role, worker: id };
        let failed = |role| Marker::Failed { role, worker: id };
        let m = |names: &[Marker]| WorkerMarkers::of(&markers(names), id);
        assert_eq!(m(&[]), WorkerMarkers { failed: None, done: false });
        assert_eq!(m(&[done(Role::Agent)]), WorkerMarkers { failed: None, done: false }, "one side is not enough");
        assert_eq!(m(&[done(Role::Agent), done(Role::Simulator)]), WorkerMarkers { failed: None, done: true });
        // Another worker's markers say nothing of this one.
        let other = [Marker::Done { role: Role::Agent, worker: WorkerId(1) }, done(Role::Simulator)];
        assert_eq!(m(&other), WorkerMarkers { failed: None, done: false });
        // Both sides failed: the simulator is named, as `Role::ALL` comes first with it.
        let both = m(&[failed(Role::Agent), failed(Role::Simulator), done(Role::Agent), done(Role::Simulator)]);
        assert_eq!(both, WorkerMarkers { failed: Some(Role::Simulator), done: true });

        let (no, yes) = (|| None, || Some(Lost::Silent));
        let never = || -> Result<(), String> { panic!("the verdict is asked only of a worker that is done") };
        assert_eq!(worker_end(WorkerMarkers::default(), no, never), WorkerEnd::Running);
        assert_eq!(worker_end(m(&[done(Role::Agent)]), no, never), WorkerEnd::Running);
        // A failed marker wins over the done markers and over the results.
        assert_eq!(worker_end(both, yes, never), WorkerEnd::Failed { side: Role::Simulator });
        assert_eq!(worker_end(m(&[failed(Role::Agent)]), no, never), WorkerEnd::Failed { side: Role::Agent });
        let done_both = m(&[done(Role::Agent), done(Role::Simulator)]);
        assert_eq!(worker_end(done_both, yes, || Ok(())), WorkerEnd::Complete);
        assert_eq!(worker_end(done_both, no, || Err("lacks".into())), WorkerEnd::Incomplete { reason: "lacks".into() });
        // A lost pod ends a worker that has no end marker; its markers decide otherwise (a lost pod of a worker
        // that had ended changes nothing).
        assert_eq!(worker_end(WorkerMarkers::default(), yes, never), WorkerEnd::Lost);
        assert_eq!(worker_end(m(&[done(Role::Agent)]), yes, never), WorkerEnd::Lost);
        let lost = completion([(1, WorkerEnd::Complete), (2, WorkerEnd::Lost)]);
        let reason = "worker 2 stopped reporting (its pod was lost)".to_string();
        assert_eq!(lost, Some(End::Completed { finished: false, reason }));
        let never = || Some(Lost::NeverStarted);
        assert_eq!(worker_end(WorkerMarkers::default(), never, || Ok(())), WorkerEnd::NeverStarted);
        let lost = completion([(1, WorkerEnd::Complete), (2, WorkerEnd::NeverStarted)]);
        let reason = "worker 2 never started (no pod reported)".to_string();
        assert_eq!(lost, Some(End::Completed { finished: false, reason }));
    }

    #[test]
    fn completion_waits_for_every_worker_and_names_each_problem() {
        assert_eq!(completion([(1, WorkerEnd::Complete), (2, WorkerEnd::Running)]), None);
        // Read up to the first running worker: what follows is not looked at.
        let ends =
            [(1, WorkerEnd::Running)].into_iter().chain(std::iter::from_fn(|| panic!("read past a running one")));
        assert_eq!(completion(ends), None);
        let finished = "every worker finished all its routes".to_string();
        assert_eq!(
            completion([(1, WorkerEnd::Complete), (2, WorkerEnd::Complete)]),
            Some(End::Completed { finished: true, reason: finished.clone() })
        );
        assert_eq!(completion([]), Some(End::Completed { finished: true, reason: finished }));
        let failed = Marker::Failed { role: Role::Agent, worker: WorkerId(3) };
        assert_eq!(
            completion([
                (1, WorkerEnd::Complete),
                (2, WorkerEnd::Incomplete { reason: "ended with 4 of 5 routes recorded".into() }),
                (3, WorkerEnd::Failed { side: Role::Agent }),
            ]),
            Some(End::Completed {
                finished: false,
                reason: format!("worker 2 ended with 4 of 5 routes recorded; worker 3 failed ({failed})"),
            })
        );
    }

    #[test]
    fn evalai_s_cancel_ends_the_run_once_logcopy_s_markers_are_read_back() {
        let reason = "EvalAI reports the submission cancelled".to_string();
        assert_eq!(cancelled(true, true), Some(End::Cancelled { reason }));
        assert_eq!(cancelled(false, true), None, "written, not read back yet");
        assert_eq!(cancelled(true, false), None, "a marker logcopy did not write is the cancel check's");
        assert_eq!(cancelled(false, false), None);
    }

    #[test]
    fn a_worker_is_judged_by_the_routes_it_was_given() {
        let a = plan(20, 1, 4).assigned(2); // routes 5-9
        let w = |ids, total| rec(Some(&a), ids, total);
        let none = Recorded { assigned: Some(&a), ..Recorded::default() };
        assert_eq!(verdict(Version::V2, &none), Err("ended without a results file (its routes: 5-9)".into()));
        assert_eq!(verdict(Version::V2, &w(names(5..10), 5)), Ok(()));
        // Route 7 dropped, progress [4, 4]: upstream's rule would call it complete.
        assert_eq!(
            verdict(Version::V2, &w(names([5, 6, 8, 9]), 4)),
            Err("ended with 4 of the 5 routes it was given (5-9) recorded".into())
        );
        // Route 7 replaced by another worker's route 12: it does not count.
        assert!(verdict(Version::V2, &w(names([5, 6, 8, 9, 12]), 5)).unwrap_err().contains("4 of the 5"));
        // Every route, and one of another worker's (left out of the merge): complete when the progress agrees.
        assert_eq!(verdict(Version::V2, &w(names([5, 6, 7, 8, 9, 12]), 5)), Ok(()));
        assert_eq!(
            verdict(Version::V2, &w(names([5, 6, 7, 8, 9, 12]), 6)),
            Err("recorded the 5 routes it was given, but its progress counts 6".into())
        );
        assert!(
            verdict(Version::V2, &w(names(5..10), i64::MAX))
                .unwrap_err()
                .contains("progress counts 9223372036854775807")
        );
        assert!(verdict(Version::V2, &w(names(5..10), 0)).unwrap_err().contains("progress counts 0"));
        // Without --route-count: upstream's rule, the worker's own progress.
        assert_eq!(verdict(Version::V2, &rec(None, names([5, 6, 8, 9]), 4)), Ok(()));
        assert_eq!(
            verdict(Version::V2, &rec(None, names([5, 6, 8, 9]), 5)),
            Err("ended with 4 of 5 routes recorded".into())
        );
        assert_eq!(verdict(Version::V2, &rec(None, vec![], 0)), Err("ended with 0 of 0 routes recorded".into()));
        assert_eq!(verdict(Version::V2, &Recorded::default()), Err("ended without a results file".into()));
        // A worker given no route (fewer routes than workers) is complete once it ends, with or without a file.
        let empty = plan(2, 1, 4).assigned(2);
        assert!(empty.is_empty());
        assert_eq!(verdict(Version::V2, &Recorded { assigned: Some(&empty), ..Recorded::default() }), Ok(()));
    }

    #[test]
    fn repetitions_and_leaderboard_1_0_names() {
        let a = plan(8, 2, 2).assigned(1); // routes 0-3, twice
        let runs: Vec<String> = (0..4).flat_map(|i| (0..2).map(move |r| format!("RouteScenario_{i}_rep{r}"))).collect();
        assert_eq!(verdict(Version::V2, &rec(Some(&a), runs.clone(), 8)), Ok(()));
        assert!(verdict(Version::V2, &rec(Some(&a), runs[..7].to_vec(), 7)).unwrap_err().contains("7 of the 8"));
        // 1.0 names both repetitions of a route alike: each name needs two records.
        let v1: Vec<String> =
            (0..4).flat_map(|i| [format!("RouteScenario_{i}"), format!("RouteScenario_{i}")]).collect();
        assert_eq!(verdict(Version::V1, &rec(Some(&a), v1.clone(), 8)), Ok(()));
        assert!(verdict(Version::V1, &rec(Some(&a), v1[1..].to_vec(), 7)).unwrap_err().contains("7 of the 8"));
    }

    #[test]
    fn the_missing_routes_are_those_each_worker_was_given_without_a_record() {
        let p = plan(8, 1, 2);
        let (a1, a2) = (p.assigned(1), p.assigned(2)); // 0-3, 4-7
        let m = missing_routes(
            Version::V2,
            &[rec(Some(&a1), names([0, 1, 3, 5]), 4), Recorded { assigned: Some(&a2), ..Recorded::default() }],
        );
        // Worker 1's record of route 5 is not worker 2's.
        assert_eq!(m.names, names([2, 4, 5, 6, 7]));
        assert_eq!(m.count, 5);
        let all = missing_routes(Version::V2, &[rec(Some(&a1), names(0..4), 4), rec(Some(&a2), names(4..8), 4)]);
        assert_eq!(all, Missing::default());
    }

    #[test]
    fn without_the_routes_given_the_progress_totals_decide() {
        // Nothing to go by: no worker has a results file.
        assert_eq!(missing_routes(Version::V2, &[Recorded::default(), Recorded::default()]), Missing::default());
        // Worker 2 has no file: assumed to have as many routes as worker 1 (4); 3 of the 8 are there.
        let m = missing_routes(Version::V2, &[rec(None, names([0, 2, 5]), 4), Recorded::default()]);
        assert_eq!((m.names, m.count), (names([1, 3, 4, 6, 7]), 5));
        // Repetitions: the highest one recorded says how many there are; 1.0 names carry none.
        let reps = vec!["RouteScenario_0_rep0".to_string(), "RouteScenario_0_rep1".into()];
        let m = missing_routes(Version::V2, &[rec(None, reps, 4)]);
        assert_eq!((m.names, m.count), (vec!["RouteScenario_1_rep0".to_string(), "RouteScenario_1_rep1".into()], 2));
        let m = missing_routes(Version::V1, &[rec(None, vec!["RouteScenario_1".into()], 2)]);
        assert_eq!((m.names, m.count), (vec!["RouteScenario_0".to_string()], 1));
    }

    #[test]
    fn the_missing_list_is_bounded_and_never_overflows() {
        // No --route-count: the totals decide; a hostile one neither overflows nor makes the work large.
        let workers = [
            rec(None, names([0]), i64::MAX),
            rec(None, names([1_000_000_000]), -7),
            Recorded::default(),
            Recorded::default(),
        ];
        let m = missing_routes(Version::V2, &workers);
        assert_eq!(m.names.len(), SHOWN);
        assert_eq!(m.names[0], "RouteScenario_1_rep0");
        // Worker 1's total, worker 2's (negative: none), workers 3 and 4 assumed like the largest; 2 routes are there.
        assert_eq!(m.count, 3 * i64::MAX as u128 - 2);
        // With it: the routes each worker was given.
        let p = plan(1_000_000, 1000, 4);
        let given: Vec<Assigned> = (1..=4).map(|i| p.assigned(i)).collect();
        let mut workers: Vec<Recorded> =
            given.iter().map(|a| Recorded { assigned: Some(a), ..Recorded::default() }).collect();
        workers[0] = rec(Some(&given[0]), names([0]), i64::MAX);
        let m = missing_routes(Version::V2, &workers);
        assert_eq!((m.names.len(), m.count), (SHOWN, 1_000_000 * 1000 - 1));
        assert_eq!(m.names[0], "RouteScenario_0_rep1");
    }
}

//! The routes each worker was given, and which records of its results file belong to them.
//!
//! Upstream's pre-run step (`aws/lambda/preparallel.py`) splits the route ids `0..N-1` of the routes file into one
//! contiguous `ROUTES_SUBSET` per worker; the worker's evaluator runs each of them `REPETITIONS` times and names
//! each run `RouteScenario_<id>_rep<r>` (2.0) or `RouteScenario_<id>` (1.0, the same name for every repetition).
//! Upstream then believes a worker's own `progress`, which the participant's evaluator writes: one that drops
//! routes and reports `[k, k]` made the submission FINISHED with fewer routes. Knowing the split, logcopy judges
//! a worker by the routes it was given and keeps records of other routes out of the merge.

use crate::results::Version;
use crate::results::pyjson::Value;
use std::collections::HashMap;
use std::sync::Arc;
use volume::results::RouteId;

/// How many route names a missing-route list holds; the rest are only counted.
pub const SHOWN: usize = 100;

/// Upstream's `ROUTES_SUBSET` bounds (the contract crate's, shared with the supervisor).
pub use volume::shard::upstream_subset;

/// The routes of a submission and how they are split among its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePlan {
    /// Route ids `0..routes` (`ROUTE_COUNT`).
    pub routes: u32,
    /// Runs of every route (`REPETITIONS`).
    pub repetitions: u32,
    pub workers: u32,
}

impl RoutePlan {
    /// The routes worker `worker` (numbered from 1) was given: upstream's subset, clamped to the ids that exist.
    pub fn assigned(&self, worker: u32) -> Assigned {
        let (start, end) = upstream_subset(self.routes, self.workers, worker.saturating_sub(1));
        let clamp = |x: i64| u64::try_from(x).unwrap_or(0).min(u64::from(self.routes));
        let first = clamp(start);
        Assigned { first, end: clamp(end.saturating_add(1)).max(first), repetitions: self.repetitions }
    }
}

/// The route ids `first..end` of one worker, each run `repetitions` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    pub first: u64,
    /// Exclusive.
    pub end: u64,
    pub repetitions: u32,
}

/// Route names with no result: at most [`SHOWN`] of them, and how many in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Missing {
    pub names: Vec<String>,
    pub count: u128,
}

impl Missing {
    pub fn full(&self) -> bool {
        self.names.len() >= SHOWN
    }

    /// Names a missing route (counted by the caller).
    pub fn name(&mut self, name: impl FnOnce() -> String) {
        if !self.full() {
            self.names.push(name());
        }
    }
}

/// `(route id, repetition)` of a route name as the evaluator writes it for `version`; 1.0 names carry no
/// repetition (0 here).
pub fn parse_name(version: Version, name: &str) -> Option<(u64, u64)> {
    RouteId::parse(version, name).map(|id| id.key())
}

fn format_name(version: Version, (id, rep): (u64, u64)) -> String {
    RouteId::of(version, id, rep).to_string()
}

impl Assigned {
    pub fn is_empty(&self) -> bool {
        self.end == self.first
    }

    /// Route runs in all (route ids x repetitions).
    pub fn runs(&self) -> u64 {
        (self.end - self.first) * u64::from(self.repetitions)
    }

    /// Whether `name` is a run of a route this worker was given.
    pub fn contains(&self, version: Version, name: &str) -> bool {
        parse_name(version, name)
            .is_some_and(|(id, rep)| (self.first..self.end).contains(&id) && rep < u64::from(self.repetitions))
    }

    /// How each key is counted: 2.0 names every run apart (one record each); 1.0 names every repetition of a
    /// route the same, so its name needs `repetitions` records.
    fn needed(&self, version: Version) -> (u64, u64) {
        match version {
            Version::V2 => (u64::from(self.repetitions), 1),
            Version::V1 => (1, u64::from(self.repetitions)),
        }
    }

    /// The runs with no record among `names` (the worker's record names, already limited to this worker's
    /// routes), added to `out`; returns how many. Work is bounded by the records plus [`SHOWN`], never by the
    /// route count.
    pub fn missing<'a>(&self, version: Version, names: impl IntoIterator<Item = &'a str>, out: &mut Missing) -> u64 {
        let (keys_per_route, per_key) = self.needed(version);
        let mut have: HashMap<(u64, u64), u64> = HashMap::new();
        let mine = |&(id, rep): &(u64, u64)| (self.first..self.end).contains(&id) && rep < keys_per_route;
        for key in names.into_iter().filter_map(|n| parse_name(version, n)).filter(mine) {
            *have.entry(key).or_default() += 1;
        }
        let recorded: u64 = have.values().map(|&n| n.min(per_key)).sum();
        let count = self.runs() - recorded;
        out.count += u128::from(count);
        let mut left = count;
        'routes: for id in self.first..self.end {
            for rep in 0..keys_per_route {
                if left == 0 || out.full() {
                    break 'routes;
                }
                let lacking = per_key - have.get(&(id, rep)).copied().unwrap_or(0).min(per_key);
                for _ in 0..lacking {
                    out.name(|| format_name(version, (id, rep)));
                }
                left -= lacking;
            }
        }
        count
    }

    /// `data` (a worker's results file) without the records of routes this worker was not given, and their route
    /// ids; `None` when it has none. Records without a string `route_id` stay, for the merge to report.
    pub fn drop_outside(&self, version: Version, data: &Value) -> Option<(Value, Vec<String>)> {
        let records = data.as_object()?.get("_checkpoint")?.as_object()?.get("records")?.as_array()?;
        fn id(r: &Value) -> Option<&str> {
            r.as_object().and_then(|o| o.get("route_id")).and_then(Value::as_str)
        }
        let mine = |r: &&Value| id(r).is_none_or(|i| self.contains(version, i));
        let dropped: Vec<String> = records.iter().filter(|r| !mine(r)).filter_map(id).map(str::to_string).collect();
        if dropped.is_empty() {
            return None;
        }
        let kept: Vec<Value> = records.iter().filter(mine).cloned().collect();
        let mut data = data.clone();
        if let Value::Object(top) = &mut data
            && let Some(Value::Object(cp)) = Arc::make_mut(top).get_mut("_checkpoint")
        {
            Arc::make_mut(cp).insert("records", Value::array(kept));
        }
        Some((data, dropped))
    }

    /// Upstream's `ROUTES_SUBSET` text for these routes, for messages (`5-9`; `none` when there are none).
    pub fn describe(&self) -> String {
        if self.is_empty() { "none".to_string() } else { format!("{}-{}", self.first, self.end - 1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// Upstream's formula, evaluated by python3 itself for 1..64 workers x 1..10,000 routes, against ours. Python
    /// prints every boundary `ceil(k*step)` that differs from the exact `ceil(k*routes/workers)` (about 28,000 of
    /// 20.8 million); every other boundary is the exact one. Each subset `a-b` is two neighbouring boundaries.
    #[test]
    fn subsets_match_upstream_python() {
        let script = r#"
import math, sys
out = []
for w in range(1, 65):
    for r in range(1, 10001):
        step = r / w
        for k in range(w + 1):
            c = math.ceil(k * step)
            if c != -(-k * r // w):
                out.append('%d %d %d %d' % (w, r, k, c))
print('\n'.join(out))
print(' '.join('{}-{}'.format(math.ceil(i * (2 / 4)), math.ceil((i + 1) * (2 / 4)) - 1) for i in range(4)))
"#;
        let out = Command::new("python3")
            .args(["-c", script])
            .stderr(Stdio::inherit())
            .output()
            .expect("python3 is needed to check the formula against upstream's");
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        let two_routes_four_workers = lines.pop().unwrap();
        let subsets: Vec<String> = (0..4)
            .map(|i| {
                let (a, b) = upstream_subset(2, 4, i);
                format!("{a}-{b}")
            })
            .collect();
        assert_eq!(subsets.join(" "), two_routes_four_workers);
        // In Python's order (workers, routes, boundary), so one pass meets them in turn.
        let float_made: Vec<[i64; 4]> = lines
            .iter()
            .map(|l| {
                let n: Vec<i64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
                [n[0], n[1], n[2], n[3]]
            })
            .collect();
        assert!(float_made.len() > 20_000, "python3 found only {} float boundaries", float_made.len());
        let mut next = float_made.iter().peekable();
        for w in 1..=64u32 {
            for r in 1..=10_000u32 {
                let (wi, ri) = (i64::from(w), i64::from(r));
                for k in 0..=w {
                    let ki = i64::from(k);
                    let python = match next.next_if(|e| e[..3] == [wi, ri, ki]) {
                        Some(e) => e[3],
                        None => (ki * ri + wi - 1) / wi,
                    };
                    let ours = if k < w { upstream_subset(r, w, k).0 } else { upstream_subset(r, w, k - 1).1 + 1 };
                    assert_eq!(ours, python, "{r} routes, {w} workers, boundary {k}");
                }
            }
        }
        assert_eq!(next.next(), None, "python3's lines are in its loop order");
    }

    #[test]
    fn float_quirks_are_upstreams_and_assigned_routes_are_sane() {
        // 29/7*7 > 29 in floating point: upstream gives the last worker an id past the routes file.
        assert_eq!(upstream_subset(29, 7, 6), (25, 29));
        let plan = RoutePlan { routes: 29, repetitions: 1, workers: 7 };
        assert_eq!(plan.assigned(7), Assigned { first: 25, end: 29, repetitions: 1 });
        // 58/14*7 is 29.000000000000004: the boundary moves, and stays shared by the neighbours.
        assert_eq!(upstream_subset(58, 14, 6), (25, 29));
        assert_eq!(upstream_subset(58, 14, 7), (30, 33));
        // More workers than routes: empty subsets (`1-0`), never an overlap.
        let plan = RoutePlan { routes: 2, repetitions: 1, workers: 4 };
        let got: Vec<Assigned> = (1..=4).map(|w| plan.assigned(w)).collect();
        assert_eq!(got.iter().map(Assigned::describe).collect::<Vec<_>>(), ["0-0", "none", "1-1", "none"]);
        assert!(got[1].is_empty() && got[3].is_empty());
        // Every route exactly once, for every split.
        for workers in 1..=64 {
            for routes in 1..=300 {
                let plan = RoutePlan { routes, repetitions: 1, workers };
                let mut next = 0;
                for w in 1..=workers {
                    let a = plan.assigned(w);
                    assert_eq!(a.first, next, "{routes} routes, {workers} workers, worker {w}");
                    next = a.end;
                }
                assert_eq!(next, u64::from(routes));
            }
        }
    }

    #[test]
    fn names_are_the_evaluators() {
        let a = Assigned { first: 5, end: 10, repetitions: 2 };
        assert!(a.contains(Version::V2, "RouteScenario_5_rep0"));
        assert!(a.contains(Version::V2, "RouteScenario_9_rep1"));
        for outside in [
            "RouteScenario_4_rep0",
            "RouteScenario_10_rep0",
            "RouteScenario_5_rep2",
            "RouteScenario_05_rep0",
            "RouteScenario_5_rep01",
            "RouteScenario_5",
            "RouteScenario_+5_rep0",
            "RouteScenario_5_rep0 ",
            "RouteScenario_1_0_rep0",
            "Route",
        ] {
            assert!(!a.contains(Version::V2, outside), "{outside}");
        }
        assert!(a.contains(Version::V1, "RouteScenario_7"));
        assert!(!a.contains(Version::V1, "RouteScenario_7_rep0"));
        assert!(!a.contains(Version::V1, "RouteScenario_11"));
    }

    #[test]
    fn missing_runs_come_from_the_assigned_routes() {
        let a = Assigned { first: 5, end: 10, repetitions: 2 };
        let mut m = Missing::default();
        let have = ["RouteScenario_5_rep0", "RouteScenario_5_rep1", "RouteScenario_6_rep1", "RouteScenario_9_rep0"];
        assert_eq!(a.missing(Version::V2, have, &mut m), 6);
        let expect = ["6_rep0", "7_rep0", "7_rep1", "8_rep0", "8_rep1", "9_rep1"];
        assert_eq!(m.names, expect.map(|s| format!("RouteScenario_{s}")));
        assert_eq!(m.count, 6);
        // 1.0: the repetitions share a name; each needs its own record.
        let mut m = Missing::default();
        let have = ["RouteScenario_5", "RouteScenario_5", "RouteScenario_6", "RouteScenario_6", "RouteScenario_6"];
        assert_eq!(a.missing(Version::V1, have, &mut m), 6);
        assert_eq!(m.names[..3], ["RouteScenario_7", "RouteScenario_7", "RouteScenario_8"]);
        // A complete worker lacks nothing.
        let a = Assigned { first: 0, end: 2, repetitions: 1 };
        let mut m = Missing::default();
        assert_eq!(a.missing(Version::V2, ["RouteScenario_1_rep0", "RouteScenario_0_rep0"], &mut m), 0);
        assert_eq!(m, Missing::default());
    }

    #[test]
    fn records_of_other_routes_are_dropped_and_nothing_else() {
        let text = br#"{"_checkpoint": {"global_record": {}, "progress": [3, 2], "records": [
            {"route_id": "RouteScenario_5_rep0", "index": 0}, {"route_id": "RouteScenario_1_rep0", "index": 1},
            {"index": 2}, {"route_id": "RouteScenario_6_rep0", "index": 3}]}, "entry_status": "Started"}"#;
        let data = crate::results::pyjson::parse(text).unwrap();
        let a = Assigned { first: 5, end: 7, repetitions: 1 };
        let (kept, dropped) = a.drop_outside(Version::V2, &data).unwrap();
        assert_eq!(dropped, ["RouteScenario_1_rep0"]);
        let mut expected = data.clone();
        if let Value::Object(top) = &mut expected
            && let Some(Value::Object(cp)) = Arc::make_mut(top).get_mut("_checkpoint")
            && let Some(Value::Array(recs)) = Arc::make_mut(cp).get_mut("records")
        {
            Arc::make_mut(recs).remove(1);
        }
        assert_eq!(kept, expected, "only the record of route 1 goes; the rest, key order included, stays");
        let b = Assigned { first: 0, end: 7, repetitions: 1 };
        assert_eq!(b.drop_outside(Version::V2, &data), None);
    }

    #[test]
    fn the_list_is_bounded_and_the_count_exact() {
        let a = RoutePlan { routes: 1_000_000, repetitions: 1000, workers: 1 }.assigned(1);
        let mut m = Missing::default();
        assert_eq!(a.missing(Version::V2, ["RouteScenario_0_rep0"], &mut m), 999_999_999);
        assert_eq!(m.names.len(), SHOWN);
        assert_eq!(m.names[0], "RouteScenario_0_rep1");
        assert_eq!(m.count, 999_999_999);
    }
}

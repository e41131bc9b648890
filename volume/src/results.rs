//! The Leaderboard results file (the evaluator's `--checkpoint`) as both binaries see it: the version that wrote
//! it, the infraction lists of a route record, the route ids, and a typed view of `_checkpoint`.
//!
//! The merge, the statistics and the EvalAI conversion stay in logcopy; what lives here is what the supervisor's
//! checkpoint repair and logcopy's merge must agree on.

use crate::num::py_int;
use crate::pyjson::{Object, Value};
use std::fmt;
use std::str::FromStr;

/// The Leaderboard generation whose file format and statistics apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// `leaderboard-1.0`: sorted keys, 9 infraction kinds, 12 values, `RouteScenario_<id>`.
    V1,
    /// `leaderboard-2.0`: insertion order, 12 infraction kinds, 15 values, `RouteScenario_<id>_rep<k>`.
    V2,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "1.0",
            Version::V2 => "2.0",
        })
    }
}

impl FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "1.0" | "1" => Ok(Version::V1),
            "2.0" | "2" => Ok(Version::V2),
            other => Err(format!("unknown Leaderboard version {other:?}: expected 1.0 or 2.0")),
        }
    }
}

impl Version {
    /// Whether `json.dump` sorts keys when this version saves a file.
    pub fn sort_keys(self) -> bool {
        self == Version::V1
    }
}

/// The 12 infraction lists of a Leaderboard 2.0 RouteRecord, in the order the evaluator writes them
/// (`PENALTY_NAME_DICT` order plus `route_timeout`).
pub const INFRACTIONS_V2: [&str; 12] = [
    "collisions_layout",
    "collisions_pedestrian",
    "collisions_vehicle",
    "red_light",
    "stop_infraction",
    "outside_route_lanes",
    "min_speed_infractions",
    "yield_emergency_vehicle_infractions",
    "scenario_timeouts",
    "route_dev",
    "vehicle_blocked",
    "route_timeout",
];

/// The 9 infraction kinds of 1.0, in `RouteRecord` order.
pub const INFRACTIONS_V1: [&str; 9] = [
    "collisions_pedestrian",
    "collisions_vehicle",
    "collisions_layout",
    "red_light",
    "stop_infraction",
    "outside_route_lanes",
    "route_dev",
    "route_timeout",
    "vehicle_blocked",
];

/// The route id of one run, as the evaluator names it: `RouteScenario_<route>_rep<repetition>` (2.0), or
/// `RouteScenario_<route>` (1.0, the same name for every repetition: `repetition` is `None`).
///
/// The one place route ids are parsed and formatted. [`RouteId::parse`] is strict (decimal, no sign, no leading
/// zero), so every id it accepts formats back to itself; [`route_sort_key`] is Python's lenient `int()` reading,
/// which upstream's merge sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId {
    pub route: u64,
    pub repetition: Option<u64>,
}

/// What every route id starts with (`RouteScenario_{}` in the evaluator's route indexer).
const PREFIX: &str = "RouteScenario_";

impl RouteId {
    /// A 2.0 run of `route`.
    pub fn v2(route: u64, repetition: u64) -> RouteId {
        RouteId { route, repetition: Some(repetition) }
    }

    /// A 1.0 route (every repetition is named alike).
    pub fn v1(route: u64) -> RouteId {
        RouteId { route, repetition: None }
    }

    /// The id of `route`'s run `repetition` written the way `version` names it.
    pub fn of(version: Version, route: u64, repetition: u64) -> RouteId {
        match version {
            Version::V2 => RouteId::v2(route, repetition),
            Version::V1 => RouteId::v1(route),
        }
    }

    /// The run as `version` names it, or `None` when `name` is not exactly such a name.
    pub fn parse(version: Version, name: &str) -> Option<RouteId> {
        let rest = name.strip_prefix(PREFIX)?;
        match version {
            Version::V2 => {
                let (id, rep) = rest.split_once("_rep")?;
                Some(RouteId::v2(plain_number(id)?, plain_number(rep)?))
            }
            Version::V1 => Some(RouteId::v1(plain_number(rest)?)),
        }
    }

    /// The run named by the evaluator's `========= Preparing RouteScenario_<id> (repetition <k>) =========` line: the
    /// scenario's name and the repetition. `None` when the name is not a route name.
    pub fn prepared(scenario: &str, repetition: u64) -> Option<RouteId> {
        Some(RouteId::v2(RouteId::parse(Version::V1, scenario)?.route, repetition))
    }

    /// `(route, repetition)`, 0 standing for a 1.0 id's repetition.
    pub fn key(&self) -> (u64, u64) {
        (self.route, self.repetition.unwrap_or(0))
    }
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.repetition {
            Some(rep) => write!(f, "{PREFIX}{}_rep{rep}", self.route),
            None => write!(f, "{PREFIX}{}", self.route),
        }
    }
}

/// `digits` as the evaluator writes an id: decimal, no sign, no leading zero.
fn plain_number(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// The sort key of a route id as upstream's merge computes it: `(int(id.split('_')[1]), int(id.split('_rep')[-1]))`
/// in 2.0, `int(id.split('_')[1])` in 1.0. `None` where Python raises.
pub fn route_sort_key(version: Version, id: &str) -> Option<(i64, i64)> {
    let route = py_int(id.split('_').nth(1)?)?;
    match version {
        Version::V1 => Some((route, 0)),
        Version::V2 => Some((route, py_int(id.rsplit("_rep").next()?)?)),
    }
}

/// A read-only, typed view of a results file's `_checkpoint`: the route records, the progress and the global record.
/// Every accessor is `None` (or empty) where the file does not have the expected shape: the file is the
/// participant's evaluator's, and nothing in it is trusted.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint<'a> {
    cp: &'a Object,
}

impl<'a> Checkpoint<'a> {
    /// The `_checkpoint` object of a results file.
    pub fn of(file: &'a Value) -> Option<Checkpoint<'a>> {
        Some(Checkpoint { cp: file.as_object()?.get("_checkpoint")?.as_object()? })
    }

    /// `records`, when it is a list.
    pub fn records(&self) -> Option<&'a [Value]> {
        self.cp.get("records")?.as_array()
    }

    /// The `route_id` strings of the records, in order (records without one are left out).
    pub fn route_ids(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.records()
            .unwrap_or(&[])
            .iter()
            .filter_map(|r| r.as_object().and_then(|o| o.get("route_id")).and_then(Value::as_str))
    }

    /// `progress`, when it is a list.
    pub fn progress(&self) -> Option<&'a [Value]> {
        self.cp.get("progress")?.as_array()
    }

    /// `progress[1]`, the number of route runs the evaluator was given, when it is an integer.
    pub fn total(&self) -> Option<i64> {
        match self.progress()?.get(1)? {
            Value::Int(t) => Some(*t),
            _ => None,
        }
    }

    /// `global_record`, when it is an object.
    pub fn global_record(&self) -> Option<&'a Object> {
        self.cp.get("global_record")?.as_object()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyjson::parse;

    #[test]
    fn route_ids_round_trip_and_parse_strictly() {
        for (version, name, id) in [
            (Version::V2, "RouteScenario_12_rep3", RouteId::v2(12, 3)),
            (Version::V2, "RouteScenario_0_rep0", RouteId::v2(0, 0)),
            (Version::V1, "RouteScenario_7", RouteId::v1(7)),
        ] {
            assert_eq!(RouteId::parse(version, name), Some(id));
            assert_eq!(id.to_string(), name);
        }
        for bad in [
            "RouteScenario_05_rep0",
            "RouteScenario_5_rep01",
            "RouteScenario_5",
            "RouteScenario_+5_rep0",
            "RouteScenario_5_rep0 ",
            "RouteScenario_1_0_rep0",
            "Route_5_rep0",
        ] {
            assert_eq!(RouteId::parse(Version::V2, bad), None, "{bad}");
        }
        assert_eq!(RouteId::parse(Version::V1, "RouteScenario_7_rep0"), None);
        assert_eq!(RouteId::of(Version::V1, 4, 2).to_string(), "RouteScenario_4");
        assert_eq!(RouteId::of(Version::V2, 4, 2).to_string(), "RouteScenario_4_rep2");
        assert_eq!(RouteId::prepared("RouteScenario_3", 0), Some(RouteId::v2(3, 0)));
        assert_eq!(RouteId::prepared("Town01_route", 0), None);
    }

    #[test]
    fn route_keys_like_python() {
        assert_eq!(route_sort_key(Version::V2, "RouteScenario_12_rep3"), Some((12, 3)));
        assert_eq!(route_sort_key(Version::V1, "RouteScenario_12"), Some((12, 0)));
        assert_eq!(route_sort_key(Version::V2, "RouteScenario_12"), None);
        assert_eq!(route_sort_key(Version::V2, "Route"), None);
        assert_eq!(route_sort_key(Version::V2, "RouteScenario_1_rep1_0"), Some((1, 10)));
    }

    #[test]
    fn checkpoint_view() {
        let v = parse(
            br#"{"_checkpoint": {"global_record": {}, "progress": [2, 5], "records": [
            {"route_id": "RouteScenario_0_rep0"}, {"index": 1}, {"route_id": "RouteScenario_2_rep0"}]}}"#,
        )
        .unwrap();
        let cp = Checkpoint::of(&v).unwrap();
        assert_eq!(cp.records().map(<[Value]>::len), Some(3));
        assert_eq!(cp.route_ids().collect::<Vec<_>>(), ["RouteScenario_0_rep0", "RouteScenario_2_rep0"]);
        assert_eq!(cp.total(), Some(5));
        assert!(cp.global_record().is_some_and(Object::is_empty));
        let odd = parse(br#"{"_checkpoint": {"progress": [1, 2.0], "records": {}}}"#).unwrap();
        let cp = Checkpoint::of(&odd).unwrap();
        assert_eq!((cp.records(), cp.total(), cp.route_ids().count()), (None, None, 0));
        assert!(Checkpoint::of(&parse(b"[]").unwrap()).is_none());
    }

    #[test]
    fn versions() {
        assert_eq!("2.0".parse::<Version>(), Ok(Version::V2));
        assert_eq!("1".parse::<Version>(), Ok(Version::V1));
        assert!("3.0".parse::<Version>().is_err());
        assert!(Version::V1.sort_keys() && !Version::V2.sort_keys());
    }
}

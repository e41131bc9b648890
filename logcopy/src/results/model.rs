//! The Leaderboard result-file model: versions, key names, labels, route ids, and version detection.
//!
//! Records pass through the merge as JSON values so that every number keeps its original int/float kind and
//! every unknown key (forks such as Bench2Drive add their own) survives; this module names what upstream's
//! `statistics_manager.py` hard-codes.

use super::num::py_int;
use super::pyjson::{Object, Value};
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

/// The 12 infraction kinds of 2.0, in `PENALTY_NAME_DICT` order plus `route_timeout` (defined beside the
/// supervisor's checkpoint code, which writes a record with them too).
pub use supervisor::checkpoint::INFRACTIONS_V2;

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

/// The record key that 2.0 files written before 2023-06-21 used; read as [`YIELD_KEY`] (documented deviation).
pub const YIELD_KEY_OLD: &str = "yield_emergency_vehicles_infractions";
pub const YIELD_KEY: &str = "yield_emergency_vehicle_infractions";

/// `values`/`labels` rows: (label, group in the global record, key). Rows 0-2 read the score means.
pub const VALUE_ROWS: [(&str, &str); 15] = [
    ("Avg. driving score", "score_composed"),
    ("Avg. route completion", "score_route"),
    ("Avg. infraction penalty", "score_penalty"),
    ("Collisions with pedestrians", "collisions_pedestrian"),
    ("Collisions with vehicles", "collisions_vehicle"),
    ("Collisions with layout", "collisions_layout"),
    ("Red lights infractions", "red_light"),
    ("Stop sign infractions", "stop_infraction"),
    ("Off-road infractions", "outside_route_lanes"),
    ("Route deviations", "route_dev"),
    ("Route timeouts", "route_timeout"),
    ("Agent blocked", "vehicle_blocked"),
    // sic: "vehicles" in the label, "vehicle" in the key (upstream quirk B7)
    ("Yield emergency vehicles infractions", "yield_emergency_vehicle_infractions"),
    ("Scenario timeouts", "scenario_timeouts"),
    ("Min speed infractions", "min_speed_infractions"),
];

/// The sort key of a route id: `(int(id.split('_')[1]), int(id.split('_rep')[-1]))` in 2.0,
/// `int(id.split('_')[1])` in 1.0. `None` where Python raises.
pub fn route_sort_key(version: Version, id: &str) -> Option<(i64, i64)> {
    let route = py_int(id.split('_').nth(1)?)?;
    match version {
        Version::V1 => Some((route, 0)),
        Version::V2 => Some((route, py_int(id.rsplit("_rep").next()?)?)),
    }
}

/// Guesses the version that wrote a worker or merged file; `None` when nothing in it is version-specific.
pub fn detect(file: &Value) -> Option<Version> {
    let top = file.as_object()?;
    let cp = top.get("_checkpoint").and_then(Value::as_object);
    let records = cp.and_then(|c| c.get("records")).and_then(Value::as_array).unwrap_or(&[]);
    for r in records.iter().filter_map(Value::as_object) {
        if r.contains_key("num_infractions") {
            return Some(Version::V2);
        }
        if let Some(inf) = r.get("infractions").and_then(Value::as_object)
            && let Some(v) = detect_infractions(inf)
        {
            return Some(v);
        }
        if let Some(id) = r.get("route_id").and_then(Value::as_str) {
            return Some(if id.contains("_rep") { Version::V2 } else { Version::V1 });
        }
    }
    if let Some(g) = cp.and_then(|c| c.get("global_record")).and_then(Value::as_object) {
        if g.contains_key("scores_mean") {
            return Some(Version::V2);
        }
        if g.contains_key("scores") {
            return Some(Version::V1);
        }
    }
    match top.get("labels").and_then(Value::as_array).map(<[Value]>::len) {
        Some(15) => return Some(Version::V2),
        Some(12) => return Some(Version::V1),
        _ => {}
    }
    match top.get("entry_status").and_then(Value::as_str) {
        Some("" | "Finished with missing data" | "Finished with agent errors") => return Some(Version::V1),
        Some("Invalid") => return Some(Version::V2),
        _ => {}
    }
    if let Some(Value::Str(s)) = top.get("eligible")
        && s.is_empty()
    {
        return Some(Version::V1);
    }
    // 1.0 writes with sorted keys (`eligible` before `entry_status`); 2.0 in insertion order (the reverse).
    let keys: Vec<&str> = top.keys().collect();
    let pos = |k| keys.iter().position(|x| *x == k);
    match (pos("entry_status"), pos("eligible")) {
        (Some(e), Some(g)) if e < g => Some(Version::V2),
        (Some(_), Some(_)) => Some(Version::V1),
        _ => None,
    }
}

fn detect_infractions(inf: &Object) -> Option<Version> {
    if ["min_speed_infractions", "scenario_timeouts", YIELD_KEY, YIELD_KEY_OLD].iter().any(|k| inf.contains_key(k)) {
        Some(Version::V2)
    } else if inf.len() == INFRACTIONS_V1.len() {
        Some(Version::V1)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::pyjson::parse;

    #[test]
    fn route_keys_like_python() {
        assert_eq!(route_sort_key(Version::V2, "RouteScenario_12_rep3"), Some((12, 3)));
        assert_eq!(route_sort_key(Version::V1, "RouteScenario_12"), Some((12, 0)));
        assert_eq!(route_sort_key(Version::V2, "RouteScenario_12"), None);
        assert_eq!(route_sort_key(Version::V2, "Route"), None);
        assert_eq!(route_sort_key(Version::V2, "RouteScenario_1_rep1_0"), Some((1, 10)));
    }

    #[test]
    fn detects_versions() {
        let v2 = parse(br#"{"_checkpoint": {"global_record": {}, "progress": [], "records": []}, "entry_status": "Started", "eligible": false, "sensors": []}"#).unwrap();
        assert_eq!(detect(&v2), Some(Version::V2));
        let v1 = parse(br#"{"_checkpoint": {"global_record": {}, "progress": [], "records": []}, "eligible": false, "entry_status": "Started", "sensors": []}"#).unwrap();
        assert_eq!(detect(&v1), Some(Version::V1));
        let rec1 = parse(br#"{"_checkpoint": {"records": [{"route_id": "RouteScenario_3"}]}}"#).unwrap();
        assert_eq!(detect(&rec1), Some(Version::V1));
        let rec2 = parse(br#"{"_checkpoint": {"records": [{"route_id": "RouteScenario_3_rep0"}]}}"#).unwrap();
        assert_eq!(detect(&rec2), Some(Version::V2));
        assert_eq!(detect(&parse(br#"{"x": 1}"#).unwrap()), None);
        assert_eq!("2.0".parse::<Version>(), Ok(Version::V2));
        assert!("3.0".parse::<Version>().is_err());
    }
}

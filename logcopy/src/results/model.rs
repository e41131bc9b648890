//! The Leaderboard result-file model: versions, key names, labels, route ids, and version detection.
//!
//! Records pass through the merge as JSON values so that every number keeps its original int/float kind and
//! every unknown key (forks such as Bench2Drive add their own) survives; this module names what upstream's
//! `statistics_manager.py` hard-codes.

use super::pyjson::{Object, Value};

/// The version, the infraction lists and route ids are the volume's contract, shared with the supervisor.
pub use volume::results::{INFRACTIONS_V1, INFRACTIONS_V2, Version, route_sort_key};

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

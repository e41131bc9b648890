//! Conversion of the merged file to what EvalAI shows: `results.json`, `stdout.txt` and `metadata.json`.
//!
//! Replaces leaderboard-cloud's `generate_results.py`, `generate_stdout.py` and `generate_metadata.py`
//! (results spec §6), byte for byte, including their quirks: a merged file without a global record exports
//! all-zero accuracies (ints), `stdout.txt` prints values with Python's `str()`, the global FPS comes from the
//! rounded ratio and the per-route FPS from the unrounded one (B10), and the "avaialable" typo stays.

use super::model::Version;
use super::num::Num;
use super::pyjson::{self, Object, Value, py_str};

/// Why a conversion failed (where the upstream script would crash and leave its old output in place).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

fn err(reason: impl Into<String>) -> ConvertError {
    ConvertError(reason.into())
}

/// (EvalAI key, group in the global record (2.0 name), key in the group). The first 12 rows are 1.0's.
const ACCURACIES: [(&str, &str, &str); 15] = [
    ("Driving score", "scores_mean", "score_composed"),
    ("Route completion", "scores_mean", "score_route"),
    ("Infraction penalty", "scores_mean", "score_penalty"),
    ("Collisions pedestrians", "infractions", "collisions_pedestrian"),
    ("Collisions vehicles", "infractions", "collisions_vehicle"),
    ("Collisions layout", "infractions", "collisions_layout"),
    ("Red light infractions", "infractions", "red_light"),
    ("Stop sign infractions", "infractions", "stop_infraction"),
    ("Off-road infractions", "infractions", "outside_route_lanes"),
    ("Route deviations", "infractions", "route_dev"),
    ("Route timeouts", "infractions", "route_timeout"),
    ("Agent blocked", "infractions", "vehicle_blocked"),
    ("Yield emergency vehicle infractions", "infractions", "yield_emergency_vehicle_infractions"),
    ("Scenario timeouts", "infractions", "scenario_timeouts"),
    ("Min speed infractions", "infractions", "min_speed_infractions"),
];

fn rows(version: Version) -> &'static [(&'static str, &'static str, &'static str)] {
    match version {
        Version::V1 => &ACCURACIES[..12],
        Version::V2 => &ACCURACIES[..],
    }
}

fn group_name(version: Version, group: &'static str) -> &'static str {
    match (version, group) {
        (Version::V1, "scores_mean") => "scores",
        _ => group,
    }
}

/// `global_record[group][key]`, with upstream's KeyError as an error.
fn global_field<'a>(
    version: Version,
    g: &'a Object,
    group: &'static str,
    key: &str,
) -> Result<&'a Value, ConvertError> {
    let group = group_name(version, group);
    g.get(group)
        .and_then(Value::as_object)
        .and_then(|o| o.get(key))
        .ok_or_else(|| err(format!("the global record has no `{group}.{key}` (upstream: KeyError)")))
}

/// The merged file's global record when it is non-empty; `Ok(None)` where upstream exports nothing yet.
fn global_record(data: &Object) -> Result<Option<&Object>, ConvertError> {
    let cp = match data.get("_checkpoint") {
        None => return Ok(None),
        Some(Value::Object(cp)) => cp,
        Some(v) => return Err(err(format!("`_checkpoint` is {}, not an object", v.type_name()))),
    };
    match cp.get("global_record") {
        None => Err(err("`_checkpoint` has no `global_record` (upstream: KeyError)")),
        Some(g) if !g.is_truthy() => Ok(None),
        Some(Value::Object(g)) => Ok(Some(&**g)),
        Some(v) => Err(err(format!("`global_record` is {}, not an object", v.type_name()))),
    }
}

/// The value of `results.json`. `data` is the merged file, `None` when it is missing or holds no data.
pub fn results_value(version: Version, data: Option<&Object>) -> Result<Value, ConvertError> {
    let g = match data {
        Some(d) => global_record(d)?,
        None => None,
    };
    let mut acc = Object::with_capacity(15);
    for (name, group, key) in rows(version) {
        let v = match g {
            Some(g) => global_field(version, g, group, key)?.clone(),
            None => Value::Int(0),
        };
        acc.insert(*name, v);
    }
    let mut entry = Object::with_capacity(3);
    entry.insert("split", Value::str("leaderboard"));
    entry.insert("show_to_participant", Value::Bool(true));
    entry.insert("accuracies", Value::object(acc));
    Ok(Value::array(vec![Value::object(entry)]))
}

/// `results.json`, as `generate_results.py` writes it.
pub fn results_json(version: Version, data: Option<&Object>) -> Result<String, ConvertError> {
    Ok(pyjson::to_pretty(&results_value(version, data)?, version.sort_keys()))
}

const PRETTY_SENSORS: [(&str, &str); 7] = [
    ("carla_camera", "RGB Camera"),
    ("carla_lidar", "LIDAR"),
    ("carla_radar", "Radar"),
    ("carla_gnss", "GNSS"),
    ("carla_imu", "IMU"),
    ("carla_opendrive_map", "OpenDrive Map"),
    ("carla_speedometer", "Speedometer"),
];

const INITIALIZING: &str = "Initializing the submission, no data avaialable yet.\n\
More information will be found here once the submission starts running.\n";

fn num_of(v: &Value, what: &str) -> Result<Num, ConvertError> {
    Num::from_value(v).ok_or_else(|| err(format!("{what} is {}, not a number", v.type_name())))
}

/// `stdout.txt`, as `generate_stdout.py` writes it.
pub fn stdout_txt(version: Version, data: Option<&Object>) -> Result<String, ConvertError> {
    stdout_txt_with(version, data, None)
}

/// `stdout.txt` as upstream writes it, except that with `progress` (routes done, routes assigned) its progress line
/// says those counts instead of the merged file's `progress`, which counts only the workers that wrote a file.
pub fn stdout_txt_with(
    version: Version,
    data: Option<&Object>,
    progress: Option<(u64, u64)>,
) -> Result<String, ConvertError> {
    let Some(data) = data else { return Ok(INITIALIZING.into()) };
    let cp = match data.get("_checkpoint") {
        Some(Value::Object(cp))
            if data.contains_key("sensors") && cp.contains_key("progress") && cp.contains_key("records") =>
        {
            cp
        }
        _ => return Ok(INITIALIZING.into()),
    };
    let g = global_record(data)?;
    let mut out = String::with_capacity(1024);
    out.push_str(if g.is_some() {
        "Here is a summary of the submission's results\n\n"
    } else {
        "Here is a summary of the submission's current results\n\n"
    });
    out.push_str("General information:\n- Sensors:\n");
    let sensors = match data.get("sensors") {
        Some(Value::Array(a)) => a.as_slice(),
        Some(v) if !v.is_truthy() => &[],
        Some(v) => return Err(err(format!("`sensors` is {}, not a list", v.type_name()))),
        None => &[],
    };
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for s in sensors {
        let pretty = PRETTY_SENSORS.iter().find(|(k, _)| Some(*k) == s.as_str()).map(|(_, p)| *p).ok_or_else(|| {
            err(format!("unknown sensor {} (upstream: KeyError in PRETTY_SENSORS)", pyjson::py_repr(s)))
        })?;
        match counts.iter_mut().find(|(p, _)| *p == pretty) {
            Some((_, n)) => *n += 1,
            None => counts.push((pretty, 1)),
        }
    }
    for (pretty, n) in counts {
        out.push_str(&format!("  - {n} {pretty}\n"));
    }

    let (done, total) = match cp.get("progress") {
        Some(Value::Array(p)) if p.len() == 2 => (&p[0], &p[1]),
        other => {
            let shown = other.map_or_else(|| "absent".to_string(), pyjson::py_repr);
            return Err(err(format!("`progress` is {shown}, not a pair (upstream: ValueError)")));
        }
    };
    if let Some((done, total)) = progress {
        if done == total {
            out.push_str(&format!("- All {total} route have been completed\n"));
        } else {
            out.push_str(&format!("- Completed {done} out of the {total} routes\n"));
        }
    } else if done.py_eq(total) {
        out.push_str(&format!("- All {} route have been completed\n", py_str(total)));
    } else {
        out.push_str(&format!("- Completed {} out of the {} routes\n", py_str(done), py_str(total)));
    }

    let records = match cp.get("records") {
        Some(Value::Array(a)) => a.as_slice(),
        Some(v) if !v.is_truthy() => &[],
        Some(v) => return Err(err(format!("`records` is {}, not a list", v.type_name()))),
        None => &[],
    };
    struct Route<'a> {
        id: &'a Value,
        index: &'a Value,
        status: &'a Value,
        ratio: Num,
        fps: Num,
    }
    let mut routes = Vec::with_capacity(records.len());
    let (mut game, mut system) = (Num::ZERO, Num::ZERO);
    for (i, r) in records.iter().enumerate() {
        let r = r.as_object().ok_or_else(|| err(format!("record {i} is not an object")))?;
        let field = |k: &str| r.get(k).ok_or_else(|| err(format!("record {i} has no `{k}` (upstream: KeyError)")));
        let meta = field("meta")?.as_object().ok_or_else(|| err(format!("record {i}: `meta` is not an object")))?;
        let meta_num = |k: &str| {
            meta.get(k)
                .ok_or_else(|| err(format!("record {i} has no `meta.{k}` (upstream: KeyError)")))
                .and_then(|v| num_of(v, &format!("record {i}: `meta.{k}`")))
        };
        let (dg, ds) = (meta_num("duration_game")?, meta_num("duration_system")?);
        let ratio = if ds.is_zero() { Num::Int(0) } else { dg.py_div(ds).map_err(|e| err(e.to_string()))? };
        routes.push(Route {
            id: field("route_id")?,
            index: field("index")?,
            status: field("status")?,
            ratio: ratio.round(4),
            fps: Num::Int(20).py_mul(ratio).round(4),
        });
        game = game.py_add(dg);
        system = system.py_add(ds);
    }
    let ratio =
        if system.is_zero() { Num::Float(0.0) } else { game.py_div(system).map_err(|e| err(e.to_string()))? }.round(4);
    let fps = Num::Int(20).py_mul(ratio).round(4);
    out.push_str(&format!("- Submission ratio of {}x\n", py_str(&ratio.to_value())));
    out.push_str(&format!("- Submission FPS of {}\n", py_str(&fps.to_value())));

    if let Some(g) = g {
        out.push_str("- Results:\n");
        for (name, group, key) in rows(version) {
            out.push_str(&format!("  - {name}: {}\n", py_str(global_field(version, g, group, key)?)));
        }
    }
    out.push('\n');
    if !routes.is_empty() {
        out.push_str("Glossary of each route:\n");
        for r in routes {
            out.push_str(&format!(
                "\n- Index: {}\n  - Route ID: {}\n  - Status: {}\n  - Ratio: {}x\n  - FPS: {}\n",
                py_str(r.index),
                py_str(r.id),
                py_str(r.status),
                py_str(&r.ratio.to_value()),
                py_str(&r.fps.to_value())
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::pyjson::parse;

    #[test]
    fn no_data_gives_zeros_and_initializing() {
        let r = results_json(Version::V1, None).unwrap();
        assert!(r.starts_with("[\n    {\n        \"accuracies\": {\n            \"Agent blocked\": 0,"), "{r}");
        assert_eq!(stdout_txt(Version::V2, None).unwrap(), INITIALIZING);
    }

    #[test]
    fn unknown_sensor_is_an_error_like_upstream() {
        let v = parse(
            br#"{"_checkpoint": {"global_record": {}, "progress": [0, 1], "records": []}, "sensors": ["sonar"]}"#,
        )
        .unwrap();
        let e = stdout_txt(Version::V2, v.as_object()).unwrap_err();
        assert!(e.0.contains("unknown sensor 'sonar'"), "{e}");
    }

    #[test]
    fn the_progress_line_can_say_the_assigned_total() {
        let v = parse(br#"{"_checkpoint": {"global_record": {}, "progress": [15, 15], "records": []}, "sensors": []}"#)
            .unwrap();
        let upstream = stdout_txt(Version::V2, v.as_object()).unwrap();
        assert!(upstream.contains("- All 15 route have been completed\n"), "{upstream}");
        let truth = stdout_txt_with(Version::V2, v.as_object(), Some((15, 20))).unwrap();
        assert_eq!(
            truth,
            upstream.replace("- All 15 route have been completed", "- Completed 15 out of the 20 routes")
        );
    }

    #[test]
    fn partial_summary() {
        let v = parse(br#"{"_checkpoint": {"global_record": {}, "progress": [1, 2], "records": [{"index": 0, "route_id": "R_0_rep0", "status": "Perfect", "meta": {"duration_game": 10.0, "duration_system": 0}}]}, "sensors": ["carla_camera", "carla_lidar", "carla_camera"]}"#).unwrap();
        let s = stdout_txt(Version::V2, v.as_object()).unwrap();
        assert_eq!(
            s,
            "Here is a summary of the submission's current results\n\nGeneral information:\n- Sensors:\n  - 2 RGB Camera\n  - 1 LIDAR\n- Completed 1 out of the 2 routes\n- Submission ratio of 0.0x\n- Submission FPS of 0.0\n\nGlossary of each route:\n\n- Index: 0\n  - Route ID: R_0_rep0\n  - Status: Perfect\n  - Ratio: 0x\n  - FPS: 0\n"
        );
    }
}

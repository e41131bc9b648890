//! The N-way merge of worker result files: upstream's `scripts/merge_statistics.py`, 1.0 and 2.0.
//!
//! Output is byte-identical to upstream for every input upstream accepts, quirks included (results spec §5, §8):
//! 1.0 computes its global record over the records in argument order with their original indices (B2) and lists
//! every route as an exception (B1); a missing or unreadable worker drops out of both the record and the
//! route count (B5). Two deliberate differences: each file is read once, so its records and its counts cannot
//! disagree (B8), and 2.0 records that still use the pre-2023-06-21 key `yield_emergency_vehicles_infractions`
//! are read under its current name instead of crashing (B7).
//!
//! Where upstream raises, we return a [`MergeError`] that names the file and the reason, with upstream's own
//! wording where it has one, and nothing is written (1.0 writes its partial file first, as upstream does).

use super::model::{INFRACTIONS_V2, Version, YIELD_KEY, YIELD_KEY_OLD, route_sort_key};
use super::num::Num;
use super::pyjson::{Object, Value};
use super::stats;
use std::collections::HashMap;
use std::sync::Arc;

/// One worker file that holds data, in argument order.
#[derive(Debug, Clone)]
pub struct Input {
    /// How errors name the file (its path as given).
    pub name: String,
    pub data: Value,
}

/// A successful merge.
#[derive(Debug, Clone)]
pub struct Merged {
    pub version: Version,
    /// The merged results file.
    pub value: Value,
    /// Whether every route of every present file is recorded, so that the global record was computed.
    pub complete: bool,
    /// Messages upstream prints while merging (the 2.0 `Invalid` validation).
    pub warnings: Vec<String>,
}

impl Merged {
    /// The merged file's bytes, as `save_dict` writes them.
    pub fn to_bytes(&self) -> String {
        super::pyjson::to_pretty(&self.value, self.version.sort_keys())
    }
}

/// Why a merge stopped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error("{file}: {reason}")]
    Malformed { file: String, reason: String },
    #[error(
        "Stopping. Found two files with different sensor configurations: {file} has {theirs}, but {first} has {ours}"
    )]
    DifferentSensors { file: String, theirs: String, first: String, ours: String },
    #[error("Stopping. Found that the route {route_id} has more than one record (in {})", files.join(", "))]
    Duplicate { route_id: String, files: Vec<String> },
    #[error(
        "Stopping. Missing some data as the ids jumped from {from} to {to} (route {to} is in {file}; the routes between are in no file)"
    )]
    MissingData { from: String, to: String, file: String },
    #[error("{file}: route {route_id}: {reason}")]
    Statistics { file: String, route_id: String, reason: String },
}

/// A failed merge. 1.0 has already written its partial file when its global step fails; `partial` holds it.
#[derive(Debug, Clone)]
pub struct MergeFailure {
    pub error: MergeError,
    pub partial: Option<Value>,
}

impl From<MergeError> for MergeFailure {
    fn from(error: MergeError) -> Self {
        MergeFailure { error, partial: None }
    }
}

fn malformed(file: &str, reason: impl Into<String>) -> MergeError {
    MergeError::Malformed { file: file.to_string(), reason: reason.into() }
}

/// The parts of a worker file that the merge reads, validated once.
struct Worker<'a> {
    name: &'a str,
    records: &'a [Value],
    total: Num,
    sensors: &'a Value,
}

fn worker(input: &Input) -> Result<Worker<'_>, MergeError> {
    let name = input.name.as_str();
    let top = input.data.as_object().ok_or_else(|| malformed(name, "the file is not a JSON object"))?;
    let cp = match top.get("_checkpoint") {
        Some(Value::Object(o)) => o,
        Some(v) => return Err(malformed(name, format!("`_checkpoint` is {}, not an object", v.type_name()))),
        None => return Err(malformed(name, "has no `_checkpoint` (upstream: KeyError '_checkpoint')")),
    };
    let records = match cp.get("records") {
        Some(Value::Array(a)) => a.as_slice(),
        Some(v) => return Err(malformed(name, format!("`_checkpoint.records` is {}, not a list", v.type_name()))),
        None => return Err(malformed(name, "has no `_checkpoint.records` (upstream: KeyError 'records')")),
    };
    let total = match cp.get("progress") {
        Some(Value::Array(p)) if p.len() >= 2 => Num::from_value(&p[1]).ok_or_else(|| {
            malformed(name, format!("`_checkpoint.progress[1]` is {}, not a number", p[1].type_name()))
        })?,
        Some(Value::Array(_)) => {
            return Err(malformed(name, "`_checkpoint.progress` has fewer than 2 entries (upstream: IndexError)"));
        }
        Some(v) => return Err(malformed(name, format!("`_checkpoint.progress` is {}, not a list", v.type_name()))),
        None => return Err(malformed(name, "has no `_checkpoint.progress` (upstream: KeyError 'progress')")),
    };
    let sensors =
        top.get("sensors").ok_or_else(|| malformed(name, "has no `sensors` (upstream: KeyError 'sensors')"))?;
    for (i, r) in records.iter().enumerate() {
        match r.as_object().map(|o| o.get("route_id")) {
            Some(Some(Value::Str(_))) => {}
            Some(Some(v)) => {
                return Err(malformed(name, format!("record {i}: `route_id` is {}, not a string", v.type_name())));
            }
            Some(None) => return Err(malformed(name, format!("record {i} has no `route_id`"))),
            None => return Err(malformed(name, format!("record {i} is {}, not an object", r.type_name()))),
        }
    }
    Ok(Worker { name, records, total, sensors })
}

fn route_id(r: &Value) -> &str {
    // `worker()` checked that every record is an object with a string route_id.
    r.as_object().and_then(|o| o.get("route_id")).and_then(Value::as_str).unwrap_or_default()
}

/// Pass 1 of both versions: counts, totals and the sensor check.
struct Totals<'a> {
    workers: Vec<Worker<'a>>,
    total_routes: i64,
    total_progress: Num,
    sensors: Value,
}

impl Totals<'_> {
    fn complete(&self) -> bool {
        !self.total_progress.is_zero() && self.total_progress.py_eq(Num::Int(self.total_routes))
    }
}

fn totals(inputs: &[Input]) -> Result<Totals<'_>, MergeError> {
    let mut t =
        Totals { workers: Vec::new(), total_routes: 0, total_progress: Num::ZERO, sensors: Value::array(vec![]) };
    let mut first_sensors: Option<&str> = None;
    for input in inputs {
        let w = worker(input)?;
        t.total_routes += w.records.len() as i64;
        t.total_progress = t.total_progress.py_add(w.total);
        if w.sensors.is_truthy() {
            match first_sensors {
                None => {
                    t.sensors = w.sensors.clone();
                    first_sensors = Some(w.name);
                }
                Some(first) if !w.sensors.py_eq(&t.sensors) => {
                    return Err(MergeError::DifferentSensors {
                        file: w.name.to_string(),
                        theirs: super::pyjson::py_repr(w.sensors),
                        first: first.to_string(),
                        ours: super::pyjson::py_repr(&t.sensors),
                    });
                }
                Some(_) => {}
            }
        }
        t.workers.push(w);
    }
    Ok(t)
}

/// A record and the file it came from, sorted by route.
pub(crate) struct Rec<'a> {
    pub file: &'a str,
    pub key: (i64, i64),
    pub record: Object,
}

fn sort_key(version: Version, file: &str, id: &str) -> Result<(i64, i64), MergeError> {
    route_sort_key(version, id).ok_or_else(|| {
        let expected = match version {
            Version::V1 => "RouteScenario_<number>",
            Version::V2 => "RouteScenario_<number>_rep<number>",
        };
        malformed(file, format!("route id {id:?} is not of the form {expected} (upstream: ValueError in int())"))
    })
}

/// Merges the worker files that hold data, in argument order.
pub fn merge(version: Version, inputs: &[Input]) -> Result<Merged, MergeFailure> {
    match version {
        Version::V2 => merge_v2(inputs).map_err(MergeFailure::from),
        Version::V1 => merge_v1(inputs),
    }
}

fn check_duplicates(sorted: &[(&str, &str, (i64, i64))]) -> Result<(), MergeError> {
    let mut count: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, file, _) in sorted {
        count.entry(id).or_default().push(file);
    }
    // Upstream reports the first id, in sorted order, that occurs more than once.
    for (id, _, _) in sorted {
        let files = &count[id];
        if files.len() > 1 {
            let mut files: Vec<String> = files.iter().map(|f| f.to_string()).collect();
            files.dedup();
            return Err(MergeError::Duplicate { route_id: id.to_string(), files });
        }
    }
    Ok(())
}

/// `check_missing_data`, designed for ids 0..R-1 with any number of repetitions (quirk B4 reproduced).
fn check_missing_data(sorted: &[(&str, &str, (i64, i64))]) -> Result<(), MergeError> {
    let (mut rep_num, mut prev_rep, mut prev_total) = (1i64, 0i64, 0i64);
    let mut prev_id = "";
    for &(id, file, (route, rep)) in sorted {
        if rep < prev_rep {
            rep_num = prev_rep.saturating_add(1);
        }
        let total = route.saturating_mul(rep_num).saturating_add(rep);
        if total.saturating_sub(prev_total) > 1 {
            return Err(MergeError::MissingData {
                from: prev_id.to_string(),
                to: id.to_string(),
                file: file.to_string(),
            });
        }
        (prev_rep, prev_total, prev_id) = (rep, total, id);
    }
    Ok(())
}

/// `to_route_record` of 2.0: the RouteRecord defaults, then each input key in input order.
fn route_record_v2(input: &Object) -> Object {
    let mut r = Object::with_capacity(8);
    r.insert("index", Value::Int(-1));
    r.insert("route_id", Value::Null);
    r.insert("status", Value::str("Started"));
    r.insert("num_infractions", Value::Int(0));
    r.insert("infractions", Value::object(INFRACTIONS_V2.iter().map(|k| (*k, Value::empty_array())).collect()));
    r.insert(
        "scores",
        Value::object(
            ["score_route", "score_penalty", "score_composed"].map(|k| (k, Value::Int(0))).into_iter().collect(),
        ),
    );
    r.insert(
        "meta",
        Value::object(
            ["route_length", "duration_game", "duration_system"].map(|k| (k, Value::Int(0))).into_iter().collect(),
        ),
    );
    for (k, v) in input.iter() {
        let mut v = v.clone();
        if k == "infractions"
            && let Value::Object(inf) = &mut v
            && inf.contains_key(YIELD_KEY_OLD)
        {
            Arc::make_mut(inf).rename(YIELD_KEY_OLD, YIELD_KEY);
        }
        r.insert(k, v);
    }
    r
}

fn merge_v2(inputs: &[Input]) -> Result<Merged, MergeError> {
    let t = totals(inputs)?;
    // One pass: each record normalised and its sort key parsed once; the checks read the sorted list.
    let mut recs: Vec<Rec> = Vec::with_capacity(t.total_routes as usize);
    for w in &t.workers {
        for r in w.records {
            let key = sort_key(Version::V2, w.name, route_id(r))?;
            let record = route_record_v2(r.as_object().unwrap_or(&Object::new()));
            recs.push(Rec { file: w.name, key, record });
        }
    }
    recs.sort_by_key(|r| r.key);
    let complete = t.complete();
    if complete {
        let ids: Vec<(&str, &str, (i64, i64))> = recs
            .iter()
            .map(|r| (r.record.get("route_id").and_then(Value::as_str).unwrap_or_default(), r.file, r.key))
            .collect();
        check_duplicates(&ids)?;
        check_missing_data(&ids)?;
    }
    for (i, r) in recs.iter_mut().enumerate() {
        r.record.insert("index", Value::Int(i as i64));
    }

    let mut entry_status = "Started";
    let mut warnings = Vec::new();
    let (global, values, labels) = if complete {
        let g = stats::global_v2(&recs, t.total_progress)?;
        entry_status = g.entry_status;
        // validate_and_write_statistics(sensors_initialized=True, crashed=False)
        let problem = if !t.sensors.is_truthy() {
            Some("Missing 'sensors' data")
        } else if recs.iter().any(|r| r.record.get("status").and_then(Value::as_str) == Some("Started")) {
            Some("Found a route record with missing data")
        } else {
            None
        };
        if let Some(p) = problem {
            warnings.push(format!("The statistics are badly formed. Setting their status to 'Invalid': {p}"));
            entry_status = "Invalid";
        }
        (Value::object(g.global), Value::array(g.values), Value::array(g.labels))
    } else {
        (Value::empty_object(), Value::array(vec![]), Value::array(vec![]))
    };

    let mut cp = Object::with_capacity(3);
    cp.insert("global_record", global);
    cp.insert("progress", Value::array(vec![Value::Int(t.total_routes), t.total_progress.to_value()]));
    cp.insert("records", Value::array(recs.into_iter().map(|r| Value::object(r.record)).collect()));
    let mut out = Object::with_capacity(6);
    out.insert("_checkpoint", Value::object(cp));
    out.insert("entry_status", Value::str(entry_status));
    out.insert("eligible", Value::Bool(entry_status == "Finished"));
    out.insert("sensors", t.sensors);
    out.insert("values", values);
    out.insert("labels", labels);
    Ok(Merged { version: Version::V2, value: Value::object(out), complete, warnings })
}

fn merge_v1(inputs: &[Input]) -> Result<Merged, MergeFailure> {
    let t = totals(inputs)?;
    // Records pass through verbatim (all keys); the written list is sorted by route number, stably.
    let mut sorted: Vec<((i64, i64), Object)> = Vec::with_capacity(t.total_routes as usize);
    for w in &t.workers {
        for r in w.records {
            let key = sort_key(Version::V1, w.name, route_id(r))?;
            sorted.push((key, r.as_object().cloned().unwrap_or_default()));
        }
    }
    sorted.sort_by_key(|x| x.0);
    let records: Vec<Object> = sorted
        .into_iter()
        .enumerate()
        .map(|(i, (_, mut r))| {
            r.insert("index", Value::Int(i as i64));
            r
        })
        .collect();

    let progress = Value::array(vec![Value::Int(t.total_routes), t.total_progress.to_value()]);
    let partial = |records: &[Object]| {
        let mut cp = Object::with_capacity(3);
        cp.insert("progress", progress.clone());
        cp.insert("records", Value::array(records.iter().cloned().map(Value::object).collect()));
        cp.insert("global_record", Value::empty_object());
        let mut out = Object::with_capacity(6);
        out.insert("sensors", t.sensors.clone());
        out.insert("values", Value::array(vec![]));
        out.insert("labels", Value::array(vec![]));
        out.insert("entry_status", Value::str("Started"));
        out.insert("eligible", Value::Bool(false));
        out.insert("_checkpoint", Value::object(cp));
        out
    };
    let mut out = partial(&records);
    let complete = t.complete();
    if complete {
        // Upstream re-reads the files here: records in argument order, original indices (quirk B2).
        let in_file_order: Vec<(&str, &Object)> = t
            .workers
            .iter()
            .flat_map(|w| w.records.iter().filter_map(|r| r.as_object().map(|o| (w.name, o))))
            .collect();
        let fail = |error| MergeFailure { error, partial: Some(Value::object(partial(&records))) };
        let g = stats::global_v1(&in_file_order, t.total_progress).map_err(fail)?;
        // save_global_record: progress matches by construction; then "Agent" in any status.
        let mut entry_status = "Finished";
        for r in &records {
            let status = match r.get("status") {
                Some(Value::Str(s)) => s.as_str(),
                Some(v) => {
                    return Err(fail(malformed(
                        "merged records",
                        format!("a `status` is {}, not a string", v.type_name()),
                    )));
                }
                None => {
                    let id = r.get("route_id").and_then(Value::as_str).unwrap_or("?").to_string();
                    return Err(fail(MergeError::Statistics {
                        file: "merged records".into(),
                        route_id: id,
                        reason: "has no `status` (upstream: KeyError 'status')".into(),
                    }));
                }
            };
            if status.contains("Agent") {
                entry_status = "Finished with agent errors";
                break;
            }
        }
        out.insert("values", Value::array(g.values));
        out.insert("labels", Value::array(g.labels));
        out.insert("entry_status", Value::str(entry_status));
        out.insert("eligible", Value::Bool(true));
        if let Some(Value::Object(cp)) = out.get_mut("_checkpoint") {
            Arc::make_mut(cp).insert("global_record", Value::object(g.global));
        }
    }
    Ok(Merged { version: Version::V1, value: Value::object(out), complete, warnings: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::pyjson::parse;

    fn input(name: &str, json: &str) -> Input {
        Input { name: name.into(), data: parse(json.as_bytes()).unwrap() }
    }

    fn worker_v2(ids: &[&str], total: i64, sensors: &str) -> String {
        let recs: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| format!(r#"{{"index": {i}, "route_id": "{id}", "status": "Perfect", "infractions": {{}}}}"#))
            .collect();
        format!(
            r#"{{"_checkpoint": {{"global_record": {{}}, "progress": [{}, {total}], "records": [{}]}}, "entry_status": "Started", "eligible": false, "sensors": {sensors}, "values": [], "labels": []}}"#,
            ids.len(),
            recs.join(",")
        )
    }

    #[test]
    fn partial_merge_sorts_and_reindexes_without_checks() {
        let a = input("a", &worker_v2(&["RouteScenario_2_rep0", "RouteScenario_0_rep0"], 3, "[\"carla_camera\"]"));
        let b = input("b", &worker_v2(&["RouteScenario_1_rep0"], 3, "[]"));
        let m = merge(Version::V2, &[a, b]).unwrap();
        assert!(!m.complete);
        let cp = m.value.as_object().unwrap().get("_checkpoint").unwrap().as_object().unwrap();
        assert_eq!(cp.get("progress"), Some(&parse(b"[3, 6]").unwrap()));
        let ids: Vec<&str> = cp.get("records").unwrap().as_array().unwrap().iter().map(route_id).collect();
        assert_eq!(ids, ["RouteScenario_0_rep0", "RouteScenario_1_rep0", "RouteScenario_2_rep0"]);
    }

    #[test]
    fn duplicate_and_gap_errors_name_the_files() {
        let a = input("w1.json", &worker_v2(&["RouteScenario_0_rep0", "RouteScenario_1_rep0"], 2, "[]"));
        let b = input("w2.json", &worker_v2(&["RouteScenario_1_rep0"], 1, "[]"));
        let e = merge(Version::V2, &[a.clone(), b]).unwrap_err().error;
        assert_eq!(
            e,
            MergeError::Duplicate {
                route_id: "RouteScenario_1_rep0".into(),
                files: vec!["w1.json".into(), "w2.json".into()]
            }
        );
        let c = input("w3.json", &worker_v2(&["RouteScenario_3_rep0"], 1, "[]"));
        let e = merge(Version::V2, &[a, c]).unwrap_err().error;
        assert!(
            matches!(&e, MergeError::MissingData { from, to, file } if from == "RouteScenario_1_rep0" && to == "RouteScenario_3_rep0" && file == "w3.json"),
            "{e}"
        );
    }

    #[test]
    fn missing_data_check_reproduces_upstream_blind_spots() {
        let ids = |v: &[&'static str]| -> Vec<(&'static str, &'static str, (i64, i64))> {
            v.iter().map(|id| (*id, "f", route_sort_key(Version::V2, id).unwrap())).collect()
        };
        // A hole before the first repetition reset goes unnoticed upstream (spec §5.1).
        assert!(
            check_missing_data(&ids(&["RouteScenario_0_rep0", "RouteScenario_0_rep1", "RouteScenario_1_rep1"])).is_ok()
        );
        assert!(
            check_missing_data(&ids(&["RouteScenario_1_rep0", "RouteScenario_1_rep1", "RouteScenario_2_rep0"]))
                .is_err()
        );
        assert!(check_missing_data(&ids(&["RouteScenario_1_rep0", "RouteScenario_2_rep0"])).is_ok());
    }

    #[test]
    fn different_sensors_are_refused() {
        let a = input("a", &worker_v2(&["RouteScenario_0_rep0"], 1, "[\"carla_camera\"]"));
        let b = input("b", &worker_v2(&["RouteScenario_1_rep0"], 1, "[\"carla_lidar\"]"));
        let e = merge(Version::V2, &[a, b]).unwrap_err().error;
        assert!(e.to_string().contains("Stopping. Found two files with different sensor configurations"));
        assert!(e.to_string().contains("b has ['carla_lidar']"), "{e}");
    }

    #[test]
    fn record_normalisation_keeps_defaults_first_and_unknown_keys_after_meta() {
        let r = parse(br#"{"index": 3, "route_id": "R_1_rep0", "town_name": "T", "meta": {}, "status": "Perfect", "infractions": {"yield_emergency_vehicles_infractions": [1]}}"#).unwrap();
        let out = route_record_v2(r.as_object().unwrap());
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            ["index", "route_id", "status", "num_infractions", "infractions", "scores", "meta", "town_name"]
        );
        let inf = out.get("infractions").unwrap().as_object().unwrap();
        assert_eq!(inf.keys().collect::<Vec<_>>(), [YIELD_KEY]);
    }

    #[test]
    fn malformed_files_are_named() {
        for (json, needle) in [
            (r#"{"sensors": []}"#, "no `_checkpoint`"),
            (r#"{"_checkpoint": {"records": [], "progress": []}, "sensors": []}"#, "fewer than 2"),
            (r#"{"_checkpoint": {"records": [1], "progress": [0, 1]}, "sensors": []}"#, "record 0 is an integer"),
            (
                r#"{"_checkpoint": {"records": [{"route_id": "x"}], "progress": [1, 1]}, "sensors": []}"#,
                "route id \"x\"",
            ),
        ] {
            let e = merge(Version::V2, &[input("bad.json", json)]).unwrap_err().error.to_string();
            assert!(e.starts_with("bad.json: ") && e.contains(needle), "{e}");
        }
    }
}

//! Global statistics: upstream's `compute_global_statistics` for 1.0 and 2.0 (results spec §4).
//!
//! The arithmetic follows Python step by step, because the output is compared byte for byte: left-to-right
//! sums that start from int `0`, true division per term, `round` after the sum, the standard deviation taken
//! around the *rounded* mean (2.0) with libm `pow`, and 2.0's off-lane distance parsed out of token 8 of its
//! message (quirk B6).

use super::merge::{MergeError, Rec};
use super::model::{INFRACTIONS_V1, INFRACTIONS_V2, VALUE_ROWS};
use super::num::{self, ArithError, Num, format_3f};
use super::pyjson::{Object, Value, py_str};

pub(crate) struct Global {
    pub global: Object,
    pub values: Vec<Value>,
    pub labels: Vec<Value>,
    /// 2.0 only: `Finished`, `Crashed` or `Rejected`.
    pub entry_status: &'static str,
}

/// Reads one record's fields, turning Python's KeyError/TypeError into a named error.
struct RecordView<'a> {
    file: &'a str,
    record: &'a Object,
}

impl<'a> RecordView<'a> {
    fn err(&self, reason: impl Into<String>) -> MergeError {
        let route_id = self.record.get("route_id").map(py_str).unwrap_or_else(|| "?".into());
        MergeError::Statistics { file: self.file.to_string(), route_id, reason: reason.into() }
    }

    fn group(&self, group: &str) -> Result<&'a Object, MergeError> {
        match self.record.get_at(canonical_position(group), group) {
            Some(Value::Object(o)) => Ok(o),
            Some(v) => Err(self.err(format!("`{group}` is {}, not an object", v.type_name()))),
            None => Err(self.err(format!("has no `{group}` (upstream: KeyError)"))),
        }
    }

    fn field(&self, group: &str, key: &str) -> Result<&'a Value, MergeError> {
        self.group(group)?
            .get_at(canonical_position(key), key)
            .ok_or_else(|| self.err(format!("has no `{group}.{key}` (upstream: KeyError '{key}')")))
    }

    fn num(&self, group: &str, key: &str) -> Result<Num, MergeError> {
        let v = self.field(group, key)?;
        Num::from_value(v).ok_or_else(|| self.err(format!("`{group}.{key}` is {}, not a number", v.type_name())))
    }

    fn status(&self, default: &'a str) -> Result<&'a str, MergeError> {
        match self.record.get("status") {
            None => Ok(default),
            Some(Value::Str(s)) => Ok(s),
            Some(v) => Err(self.err(format!("`status` is {}, not a string", v.type_name()))),
        }
    }

    /// `len(record.infractions[key])`; `position` is where the evaluator writes the key.
    fn count(&self, position: usize, key: &str) -> Result<Num, MergeError> {
        let v = self
            .group("infractions")?
            .get_at(position, key)
            .ok_or_else(|| self.err(format!("has no `infractions.{key}` (upstream: KeyError '{key}')")))?;
        match v {
            Value::Array(a) => Ok(Num::Int(a.len() as i64)),
            Value::Str(s) => Ok(Num::Int(s.chars().count() as i64)),
            Value::Object(o) => Ok(Num::Int(o.len() as i64)),
            v => Err(self.err(format!("`infractions.{key}` is {}, which has no length", v.type_name()))),
        }
    }

    /// 2.0's off-lane kilometres: token 8 of the first `outside_route_lanes` message, in metres, / 1000.
    fn off_lane_km(&self) -> Result<Num, MergeError> {
        let v = self.field("infractions", "outside_route_lanes")?;
        if !v.is_truthy() {
            return Ok(Num::Float(0.0));
        }
        let first = match v {
            Value::Array(a) => &a[0],
            other => {
                return Err(self.err(format!("`infractions.outside_route_lanes` is {}, not a list", other.type_name())));
            }
        };
        let msg = first.as_str().ok_or_else(|| self.err("an `outside_route_lanes` message is not a string"))?;
        let token = msg.split(' ').nth(8).ok_or_else(|| {
            self.err(format!("cannot read the off-lane distance (9th word) of {msg:?} (upstream: IndexError)"))
        })?;
        let metres: f64 = token.trim().replace('_', "").parse().map_err(|_| {
            self.err(format!("the off-lane distance {token:?} in {msg:?} is not a number (upstream: ValueError)"))
        })?;
        self.arith(Num::Float(metres).py_div(Num::Int(1000)))
    }

    fn arith<T>(&self, r: Result<T, ArithError>) -> Result<T, MergeError> {
        r.map_err(|e| self.err(format!("{e} in the statistics")))
    }
}

/// Where a key sits in a 2.0 record written by the evaluator: lookups try there first.
fn canonical_position(key: &str) -> usize {
    match key {
        "infractions" => 4,
        "scores" => 5,
        "meta" => 6,
        "score_route" | "route_length" => 0,
        "score_penalty" | "duration_game" => 1,
        "score_composed" | "duration_system" => 2,
        _ => 0,
    }
}

const SCORES_MEAN_ORDER: [&str; 3] = ["score_composed", "score_route", "score_penalty"];

fn nums_object<const N: usize>(keys: [&str; N], vals: [Num; N]) -> Value {
    Value::object(keys.iter().zip(vals).map(|(k, v)| (*k, v.to_value())).collect())
}

/// 2.0 `compute_global_statistics` over the merged, sorted and re-indexed records; `n` is the route total.
pub(crate) fn global_v2(recs: &[Rec], n: Num) -> Result<Global, MergeError> {
    let views: Vec<RecordView> = recs.iter().map(|r| RecordView { file: r.file, record: &r.record }).collect();
    let arith = |r: Result<Num, ArithError>| {
        r.map_err(|e| MergeError::Statistics {
            file: "merged records".into(),
            route_id: "-".into(),
            reason: format!("{e} in the global statistics"),
        })
    };

    // [composed, route, penalty], the order of `scores_mean`.
    let mut mean = [Num::ZERO; 3];
    let (mut total_length, mut duration_game, mut duration_system) = (Num::ZERO, Num::ZERO, Num::ZERO);
    let mut exceptions = Vec::new();
    let mut result: &str = "Perfect";
    for v in &views {
        // Upstream adds route, penalty, composed in that order; each sum is independent, so only per-key order matters.
        for (i, key) in SCORES_MEAN_ORDER.iter().enumerate() {
            mean[i] = mean[i].py_add(v.arith(v.num("scores", key)?.py_div(n))?);
        }
        total_length = total_length.py_add(v.num("meta", "route_length")?);
        duration_game = duration_game.py_add(v.num("meta", "duration_game")?);
        duration_system = duration_system.py_add(v.num("meta", "duration_system")?);
        let status = v.status("Started")?;
        let route_result = if status.contains("Failed") { "Failed" } else { status };
        if route_result == "Failed" {
            exceptions.push(Value::array(vec![
                v.record.get("route_id").cloned().unwrap_or(Value::Null),
                v.record.get("index").cloned().unwrap_or(Value::Int(-1)),
                Value::str(status),
            ]));
            result = "Failed";
        } else if result == "Perfect" && route_result != "Perfect" {
            result = route_result;
        }
    }
    let mean = mean.map(|m| m.round(6));

    let std = if n.py_eq(Num::Int(1)) {
        [Num::ZERO; 3]
    } else {
        let mut acc = [Num::ZERO; 3];
        for v in &views {
            for (i, key) in SCORES_MEAN_ORDER.iter().enumerate() {
                let diff = v.num("scores", key)?.py_sub(mean[i]);
                acc[i] = acc[i].py_add(Num::Float(v.arith(num::pow2(diff))?));
            }
        }
        let denom = Num::Float(n.py_sub(Num::Int(1)).as_f64());
        let mut out = [Num::ZERO; 3];
        for i in 0..3 {
            let q = arith(acc[i].py_div(denom))?;
            out[i] = Num::Float(arith(num::sqrt(q.as_f64()).map(Num::Float))?.as_f64()).round(3);
        }
        out
    };

    let mut km = Num::ZERO;
    let mut inf = [Num::ZERO; 12];
    for v in &views {
        let length = v.num("meta", "route_length")?;
        let route = v.num("scores", "score_route")?;
        km = km.py_add(v.arith(v.arith(length.py_div(Num::Int(1000)))?.py_mul(route).py_div(Num::Int(100)))?);
        for (i, key) in INFRACTIONS_V2.iter().enumerate() {
            let value = if *key == "outside_route_lanes" { v.off_lane_km()? } else { v.count(i, key)? };
            inf[i] = inf[i].py_add(value);
        }
    }
    // Python's max(km, 0.001) keeps km unless 0.001 is strictly greater.
    if 0.001 > km.as_f64() {
        km = Num::Float(0.001);
    }
    for (i, key) in INFRACTIONS_V2.iter().enumerate() {
        if *key != "outside_route_lanes" {
            inf[i] = arith(inf[i].py_div(km))?;
        }
        inf[i] = inf[i].round(3);
    }

    let mut entry_status = "Finished";
    for v in &views {
        let status = v.status("Started")?;
        if status.contains("Simulation crashed") {
            entry_status = "Crashed";
        } else if status.contains("Agent's sensors were invalid") {
            entry_status = "Rejected";
        }
    }

    let mut g = Object::with_capacity(7);
    g.insert("index", Value::Int(-1));
    g.insert("route_id", Value::Int(-1));
    g.insert("status", Value::str(result));
    g.insert("infractions", nums_object(INFRACTIONS_V2, inf));
    g.insert("scores_mean", nums_object(SCORES_MEAN_ORDER, mean));
    g.insert("scores_std_dev", nums_object(SCORES_MEAN_ORDER, std));
    let mut meta = Object::with_capacity(4);
    meta.insert("total_length", total_length.to_value());
    meta.insert("duration_game", duration_game.to_value());
    meta.insert("duration_system", duration_system.to_value());
    meta.insert("exceptions", Value::array(exceptions));
    g.insert("meta", Value::object(meta));

    let source = |key: &str| -> Num {
        match SCORES_MEAN_ORDER.iter().position(|k| *k == key) {
            Some(i) => mean[i],
            None => inf[INFRACTIONS_V2.iter().position(|k| *k == key).unwrap_or(0)],
        }
    };
    let values = VALUE_ROWS.iter().map(|(_, key)| Value::Str(py_str(&source(key).to_value()))).collect();
    let labels = VALUE_ROWS.iter().map(|(label, _)| Value::str(*label)).collect();
    Ok(Global { global: g, values, labels, entry_status })
}

/// 1.0 `compute_global_statistics(total_routes)` over the records in argument and file order, with their
/// original indices (quirk B2), listing every record as an exception (quirk B1).
pub(crate) fn global_v1(records: &[(&str, &Object)], n: Num) -> Result<Global, MergeError> {
    const SCORE_ORDER: [&str; 3] = ["score_route", "score_penalty", "score_composed"];
    let views: Vec<RecordView> = records.iter().map(|(file, record)| RecordView { file, record }).collect();
    let global_err = |e: ArithError| MergeError::Statistics {
        file: "merged records".into(),
        route_id: "-".into(),
        reason: format!("{e} in the global statistics"),
    };

    let mut scores = [Num::ZERO; 3];
    let (mut total_length, mut duration_game, mut duration_system) = (Num::ZERO, Num::ZERO, Num::ZERO);
    // `None` is upstream's initial empty list, turned into int 0 by the first record.
    let mut inf: [Option<Num>; 9] = [None; 9];
    let mut exceptions = Vec::new();
    for v in &views {
        for (i, key) in SCORE_ORDER.iter().enumerate() {
            scores[i] = scores[i].py_add(v.num("scores", key)?);
        }
        total_length = total_length.py_add(v.num("meta", "route_length")?);
        duration_game = duration_game.py_add(v.num("meta", "duration_game")?);
        duration_system = duration_system.py_add(v.num("meta", "duration_system")?);
        for (i, key) in INFRACTIONS_V1.iter().enumerate() {
            let acc = inf[i].unwrap_or(Num::ZERO);
            inf[i] = Some(acc);
            let route = v.num("scores", "score_route")?;
            if route.is_zero() {
                continue;
            }
            let length = v.num("meta", "route_length")?;
            let km = v.arith(v.arith(route.py_div(Num::Int(100)))?.py_mul(length).py_div(Num::Float(1000.0)))?;
            inf[i] = Some(acc.py_add(v.arith(v.count(i, key)?.py_div(km))?));
        }
        // `status is not 'Completed'` is always true for strings read from JSON (quirk B1).
        exceptions.push(Value::array(vec![
            v.record.get("route_id").cloned().unwrap_or(Value::Null),
            v.record.get("index").cloned().unwrap_or(Value::Null),
            v.record.get("status").cloned().unwrap_or_else(|| Value::str("Started")),
        ]));
    }
    let status = if views.is_empty() { "Completed" } else { "Failed" };
    let mut std: [Value; 3] = [Value::Int(0), Value::Int(0), Value::Int(0)];
    if !views.is_empty() {
        let nf = Num::Float(n.as_f64());
        for s in scores.iter_mut() {
            *s = s.py_div(nf).map_err(global_err)?;
        }
        if n.py_eq(Num::Int(1)) {
            std = [Value::str("NaN"), Value::str("NaN"), Value::str("NaN")];
        } else {
            let mut acc = [Num::ZERO; 3];
            for v in &views {
                for (i, key) in SCORE_ORDER.iter().enumerate() {
                    let diff = v.num("scores", key)?.py_sub(scores[i]);
                    acc[i] = acc[i].py_add(Num::Float(v.arith(num::pow2(diff))?));
                }
            }
            let denom = Num::Float(n.py_sub(Num::Int(1)).as_f64());
            for i in 0..3 {
                let q = acc[i].py_div(denom).map_err(global_err)?;
                std[i] = Value::Float(num::sqrt(q.as_f64()).map_err(global_err)?);
            }
        }
    }

    let inf_value = |x: Option<Num>| x.map_or(Value::array(vec![]), Num::to_value);
    let mut g = Object::with_capacity(7);
    g.insert("route_id", Value::Int(-1));
    g.insert("index", Value::Int(-1));
    g.insert("status", Value::str(status));
    g.insert("infractions", Value::object(INFRACTIONS_V1.iter().zip(inf).map(|(k, x)| (*k, inf_value(x))).collect()));
    g.insert("scores", nums_object(SCORE_ORDER, scores));
    let mut meta = Object::with_capacity(4);
    meta.insert("total_length", total_length.to_value());
    meta.insert("duration_system", duration_system.to_value());
    meta.insert("duration_game", duration_game.to_value());
    if !exceptions.is_empty() {
        meta.insert("exceptions", Value::array(exceptions));
    }
    g.insert("meta", Value::object(meta));
    g.insert("scores_std_dev", Value::object(SCORE_ORDER.iter().zip(std).map(|(k, v)| (*k, v)).collect()));

    let source = |key: &str| -> Result<Num, MergeError> {
        let x = match SCORE_ORDER.iter().position(|k| *k == key) {
            Some(i) => Some(scores[i]),
            None => inf[INFRACTIONS_V1.iter().position(|k| *k == key).unwrap_or(0)],
        };
        x.ok_or_else(|| MergeError::Statistics {
            file: "merged records".into(),
            route_id: "-".into(),
            reason: "no records to compute the statistics from".into(),
        })
    };
    let mut values = Vec::with_capacity(12);
    for (_, key) in &VALUE_ROWS[..12] {
        values.push(Value::Str(format_3f(source(key)?)));
    }
    let labels = VALUE_ROWS[..12].iter().map(|(label, _)| Value::str(*label)).collect();
    Ok(Global { global: g, values, labels, entry_status: "Finished" })
}

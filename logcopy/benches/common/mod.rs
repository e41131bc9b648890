//! What the benchmark binaries share (each includes it with `mod common;`): a generator of realistic 2.0 route
//! records and mutable access into a results file (a process's CPU time and memory: `testkit::procfs`).

#![allow(dead_code)]

use anyhow::{Result, anyhow, bail};
use logcopy::results::model::INFRACTIONS_V2 as INFRACTIONS;
use logcopy::results::pyjson::{Object, Value};
use std::sync::Arc;

pub fn obj(entries: Vec<(&str, Value)>) -> Value {
    Value::object(entries.into_iter().collect::<Object>())
}

/// A realistic finished 2.0 route record, deterministic in `seed`.
pub fn record(index: usize, route: usize, seed: u64) -> Value {
    let x =
        (seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 33) as f64 / (1u64 << 31) as f64;
    let completed = x > 0.3;
    let route_score = if completed { Value::Int(100) } else { Value::Float((x * 10000.0).round() / 100.0) };
    let penalty = ((0.5 + x / 2.0) * 1e6).round() / 1e6;
    let mut infractions: Vec<(&str, Value)> = INFRACTIONS.iter().map(|k| (*k, Value::empty_array())).collect();
    infractions[2].1 = Value::array(vec![Value::str(
        "Agent collided against object with type=vehicle.tesla.model3 and id=2451 at (x=-112.358, y=43.21, z=0.031)",
    )]);
    infractions[5].1 = Value::array(vec![Value::str(
        "Agent went outside its route lanes for about 12.532 meters (3.97% of the completed route)",
    )]);
    obj(vec![
        ("index", Value::Int(index as i64)),
        ("route_id", Value::str(format!("RouteScenario_{route}_rep0"))),
        ("status", Value::str(if completed { "Completed" } else { "Failed - Agent got blocked" })),
        ("num_infractions", Value::Int(2)),
        ("infractions", obj(infractions)),
        (
            "scores",
            obj(vec![
                ("score_route", route_score),
                ("score_penalty", Value::Float(penalty)),
                ("score_composed", Value::Float((penalty * 100.0 * x * 1e6).round() / 1e6)),
            ]),
        ),
        (
            "meta",
            obj(vec![
                ("route_length", Value::Float(500.0 + (x * 1e6).round() / 1e3)),
                ("duration_game", Value::Float(150.05)),
                ("duration_system", Value::Float(330.471)),
            ]),
        ),
    ])
}

pub fn object(v: &mut Value) -> Result<&mut Object> {
    match v {
        Value::Object(o) => Ok(Arc::make_mut(o)),
        other => bail!("expected an object, found {}", other.type_name()),
    }
}

pub fn field<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Value> {
    object(v)?.get_mut(key).ok_or_else(|| anyhow!("no `{key}` in a results file"))
}

pub fn array(v: &mut Value) -> Result<&mut Vec<Value>> {
    match v {
        Value::Array(a) => Ok(Arc::make_mut(a)),
        other => bail!("expected a list, found {}", other.type_name()),
    }
}

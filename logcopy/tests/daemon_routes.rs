//! Integration tests of `logcopy run`'s completeness rule (`ROUTE_COUNT`): each worker is judged by the routes it
//! was given, not by the progress its evaluator reports, and records of other routes stay out of the merge.
//!
//! Each test runs the real binary on a copy of the finished 2.0 volume (4 workers, 20 routes, every done marker)
//! with the embedded local sinks, so that the run ends at once: the final status is in the local DynamoDB item,
//! the note on an incomplete end in `evalai/stdout.txt`.

mod support;

use logcopy::results::pyjson::{self, Object, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use support::{LogcopyCmd, Volume, fixture_volume, logcopy_merge, route_ids};

const MERGED: &str = "agent/agent_results.json";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn obj_mut(v: &mut Value) -> &mut Object {
    match v {
        Value::Object(o) => Arc::make_mut(o),
        other => panic!("not an object: {other:?}"),
    }
}

/// Worker `i`'s file of the finished volume, edited: `edit` gets its records; `progress` is written as given.
fn edited_worker(i: u32, progress: [i64; 2], edit: impl FnOnce(&mut Vec<Value>)) -> String {
    let src = fixture_volume("lb2.0-finished").join(Volume::worker_rel(i));
    let mut v = pyjson::parse(&std::fs::read(&src).unwrap()).unwrap();
    let cp = obj_mut(obj_mut(&mut v).get_mut("_checkpoint").unwrap());
    match cp.get_mut("records") {
        Some(Value::Array(a)) => edit(Arc::make_mut(a)),
        other => panic!("records: {other:?}"),
    }
    cp.insert("progress", Value::array(progress.iter().map(|&n| Value::Int(n)).collect()));
    pyjson::to_pretty(&v, false)
}

fn record_of(i: u32, route: &str) -> Value {
    let src = fixture_volume("lb2.0-finished").join(Volume::worker_rel(i));
    let v = pyjson::parse(&std::fs::read(&src).unwrap()).unwrap();
    let recs = v.as_object().unwrap().get("_checkpoint").unwrap().as_object().unwrap().get("records").unwrap();
    let found = recs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r.as_object().unwrap().get("route_id").unwrap().as_str() == Some(route));
    found.unwrap_or_else(|| panic!("{route} is not in worker {i}'s file")).clone()
}

/// Runs logcopy to its end on `vol` (local sinks, ROUTE_COUNT as given); returns it and the local DynamoDB item.
fn run(vol: &Volume, route_count: Option<&str>) -> (support::Logcopy, serde_json::Value) {
    let out = vol.side_dir("local");
    let mut cmd = LogcopyCmd::new(vol).fast().flag("--local", out.to_str().unwrap()).switch("--final-status");
    if let Some(n) = route_count {
        cmd = cmd.env("ROUTE_COUNT", n);
    }
    let (code, lc) = cmd.run(secs(60));
    assert_eq!(code, 0, "exit code\n{}", lc.output());
    let item =
        std::fs::read(out.join("dynamodb.json")).unwrap_or_else(|e| panic!("dynamodb.json: {e}\n{}", lc.output()));
    (lc, serde_json::from_slice(&item).unwrap())
}

/// The route names after "Routes with no result:" in the final stdout.txt, and the rest of that line.
fn listed_missing(stdout: &str) -> (Vec<String>, String) {
    let Some((_, rest)) = stdout.split_once("Routes with no result:") else { return (Vec::new(), String::new()) };
    let line = rest.lines().next().unwrap_or_default().to_string();
    let names = line
        .split(|c: char| c == ',' || c == '.' || c.is_whitespace())
        .filter(|s| s.starts_with("RouteScenario_"))
        .map(str::to_string)
        .collect();
    (names, line)
}

/// Worker 4's evaluator drops its last route (19) and reports `progress [4, 4]`. Upstream's merge sees no hole (its
/// check misses trailing routes) and the submission is FINISHED with 19 routes. With ROUTE_COUNT the worker has
/// not recorded every route it was given: the run ends FAILED, naming worker 4 and route 19 alone.
#[test]
fn a_worker_that_drops_routes_and_reports_full_progress_fails() {
    let vol = Volume::from_fixture("lb2.0-finished");
    let dropped = edited_worker(4, [4, 4], |recs| {
        recs.retain(|r| r.as_object().unwrap().get("route_id").unwrap().as_str() != Some("RouteScenario_19_rep0"))
    });
    vol.write_atomic(&Volume::worker_rel(4), dropped.as_bytes());

    let (lc, item) = run(&vol, Some("20"));
    assert_eq!(item["submission_status"], "FAILED", "{item}\n{}", lc.output());
    let stdout = vol.read("evalai/stdout.txt");
    let note =
        &stdout[stdout.find("The submission ended incomplete").unwrap_or_else(|| panic!("no note:\n{stdout}"))..];
    assert!(note.contains("worker 4 ended with 4 of the 5 routes it was given (15-19)"), "{note}");
    let (listed, _) = listed_missing(note);
    assert_eq!(listed, ["RouteScenario_19_rep0"], "{note}");
    assert_eq!(route_ids(&vol.read(MERGED)).len(), 19);
}

/// Worker 1's file carries a record of route 7 (worker 2's), with a made-up score, and `progress [5, 5]`: the
/// record is left out of the merge (logged once, naming the file and the route), so the merged file is exactly
/// upstream's merge of the files without it, and the run ends FINISHED.
#[test]
fn a_record_of_another_workers_route_is_left_out_of_the_merge() {
    let vol = Volume::from_fixture("lb2.0-finished");
    let mut forged = record_of(2, "RouteScenario_7_rep0");
    if let Value::Object(o) = &mut forged
        && let Some(Value::Object(scores)) = Arc::make_mut(o).get_mut("scores")
    {
        Arc::make_mut(scores).insert("score_composed", Value::Float(100.0));
    }
    let with_forged = edited_worker(1, [5, 5], |recs| recs.push(forged));
    vol.write_atomic(&Volume::worker_rel(1), with_forged.as_bytes());

    let (lc, item) = run(&vol, Some("20"));
    assert_eq!(item["submission_status"], "FINISHED", "{item}\n{}", lc.output());
    let out = vol.side_dir("upstream");
    let originals: Vec<PathBuf> =
        (1..=4).map(|i| fixture_volume("lb2.0-finished").join(Volume::worker_rel(i))).collect();
    let m = logcopy_merge(&originals, &out.join("merged.json"));
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    let expected = std::fs::read_to_string(out.join("merged.json")).unwrap();
    assert!(vol.read(MERGED) == expected, "the merged file is not upstream's merge of the files without the record");

    let log = lc.output();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("left out of the merge")).collect();
    assert_eq!(lines.len(), 1, "logged once:\n{log}");
    assert!(lines[0].contains("agent/agent1/agent_results.json"), "{}", lines[0]);
    assert!(lines[0].contains("RouteScenario_7_rep0"), "{}", lines[0]);
}

/// A progress total of 6,000,002, and one of i64::MAX, in worker 1's file: the missing-route list names at most 100
/// routes and counts the rest exactly, without overflow; with ROUTE_COUNT the routes come from the split, and the
/// false total is named as the reason.
#[test]
fn the_missing_route_list_is_bounded_whatever_the_progress_says() {
    for (total, in_all) in [(6_000_002_i64, "5999997"), (i64::MAX, "9223372036854775802")] {
        let vol = Volume::from_fixture("lb2.0-finished");
        vol.write_atomic(&Volume::worker_rel(1), edited_worker(1, [5, total], |_| {}).as_bytes());
        let (lc, item) = run(&vol, None);
        assert_eq!(item["submission_status"], "FAILED", "{item}");
        let (listed, line) = listed_missing(&vol.read("evalai/stdout.txt"));
        assert_eq!(listed.len(), 100, "{total}: {line}\n{}", lc.output());
        assert_eq!(listed[0], "RouteScenario_20_rep0");
        assert_eq!(listed[99], "RouteScenario_119_rep0");
        assert!(line.contains(&format!("({in_all} in all)")), "{total}: {line}");
        assert!(lc.output().contains("no --route-count / ROUTE_COUNT"), "says once that progress decides");

        let vol = Volume::from_fixture("lb2.0-finished");
        vol.write_atomic(&Volume::worker_rel(1), edited_worker(1, [5, total], |_| {}).as_bytes());
        let (lc, item) = run(&vol, Some("20"));
        assert_eq!(item["submission_status"], "FAILED", "{item}");
        let stdout = vol.read("evalai/stdout.txt");
        let reason = format!("worker 1 recorded the 5 routes it was given, but its progress counts {total}");
        assert!(stdout.contains(&reason), "{stdout}\n{}", lc.output());
        assert_eq!(listed_missing(&stdout).0, Vec::<String>::new(), "no route lacks a record");
    }
}

/// A merged path inside a worker's folder, or on a worker's results file, is refused at start (exit 2, naming
/// the setting): it would be read back as that worker's checkpoint.
#[test]
fn a_merged_path_inside_a_workers_folder_is_refused() {
    let vol = Volume::from_fixture("lb2.0-mid-run");
    let out = vol.side_dir("local");
    let base = || LogcopyCmd::new(&vol).flag("--local", out.to_str().unwrap()).switch("--once");
    for cmd in [
        base().flag("--merged-path", "agent/agent1/merged.json"),
        base().env("MERGED_PATH", "agent/agent2/agent_results.json"),
    ] {
        let (code, lc) = cmd.run(secs(10));
        assert_eq!(code, 2, "exit code\n{}", lc.output());
        assert!(lc.stderr_text().contains("MERGED_PATH"), "{}", lc.stderr_text());
    }
    assert!(!vol.exists("evalai") && !vol.exists("agent/agent1/merged.json"), "a refused start touched the volume");
}

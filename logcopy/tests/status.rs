//! `logcopy status` on recorded volumes (markers only: what upstream's scripts and older supervisors leave) and on
//! a volume with the supervisors' status records, including a record that is oversized or malformed. The command
//! must never write on the volume.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;
use testkit::{copy_dir, fixture};
use volume::markers::{Role, WorkerId};
use volume::status::{End, ExitStatus, Reason, Record, State};

fn status(logs: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_logcopy"))
        .arg("status")
        .arg("--logs")
        .arg(logs)
        .args(extra)
        .env_remove("SUBMISSION_WORKERS")
        .env_remove("RESULTS_PATTERN")
        .env_remove("ROUTE_COUNT")
        .output()
        .expect("run logcopy status");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

fn json(logs: &Path) -> Value {
    let (code, out, err) = status(logs, &["--json", "--workers", "4", "--route-count", "20"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Every file under `dir` with its length and mtime: what a read-only command leaves as it was.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        out.insert(d.clone(), (0, fs::symlink_metadata(&d).and_then(|m| m.modified()).unwrap()));
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                out.insert(e.path(), (m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

#[test]
fn every_recorded_volume_reads_from_its_markers_alone() {
    let cases = [
        ("finished", "finished", ["done", "done", "done", "done"]),
        ("mid-run", "running", ["running", "running", "done", "running"]),
        ("crash-marker", "running", ["running", "running", "done", "running"]),
        ("cancelled", "cancelled", ["cancelled", "cancelled", "done", "cancelled"]),
    ];
    for version in ["lb1.0", "lb2.0"] {
        for (name, state, agents) in cases {
            let dir = fixture(&format!("volumes/{version}-{name}"));
            let before = snapshot(&dir);
            let v = json(&dir);
            assert_eq!(snapshot(&dir), before, "{version}-{name}: logcopy status wrote on the volume");
            assert_eq!(v["schema"], "1.0");
            assert_eq!(v["state"], state, "{version}-{name}: {v}");
            let workers = v["workers"].as_array().unwrap();
            assert_eq!(workers.len(), 4);
            for (i, w) in workers.iter().enumerate() {
                assert_eq!(w["id"], i as u64 + 1);
                assert_eq!(w["state"]["agent"], agents[i], "{version}-{name} worker {}: {w}", i + 1);
                assert_eq!(w["routes_assigned"], 5);
                // Worker 4 has written no results file yet in the unfinished volumes.
                assert!(w["routes_done"].is_null() || w["routes_done"].as_u64().is_some_and(|d| d <= 5), "{w}");
                assert_eq!(w["records"]["agent"], "missing");
                assert!(w["last_end"].is_null() && w["current_route"].is_null(), "{w}");
            }
            if name == "finished" {
                assert!(workers.iter().all(|w| w["routes_done"] == 5), "{v}");
            }
            if name == "crash-marker" {
                assert_eq!(workers[1]["attempt"], 1, "worker 2 restarted after crash0: {v}");
            }
            let (code, text, _) = status(&dir, &["--workers", "4"]);
            assert_eq!(code, 0);
            assert_eq!(text.lines().count(), 5, "{text}");
            assert!(text.starts_with(&format!("submission: {state}")), "{text}");
        }
    }
}

#[test]
fn records_say_why_and_bad_records_are_reported_never_fatal() {
    let dir = std::env::temp_dir().join(format!("logcopy-status-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    copy_dir(&fixture("volumes/lb2.0-crash-marker"), &dir).unwrap();
    let status_dir = dir.join("containers-status");
    let mut agent = Record::new(Role::Agent, WorkerId(2), 5);
    agent.routes_subset = Some("5-9".into());
    agent.repetitions = Some(1);
    agent.change(State::Running, 0, 1_700_000_000);
    agent.last_end = Some(End {
        side: Role::Simulator,
        reason: Reason::SimulatorCrashed,
        attempt: 0,
        exit: Some(ExitStatus::Signal(15)),
        detail: "the simulator crashed in attempt 0".into(),
        at: 1_700_000_100,
    });
    agent.change(State::Restarting, 0, 1_700_000_100);
    agent.change(State::Running, 1, 1_700_000_110);
    agent.current_route = Some("RouteScenario_8_rep0".into());
    fs::write(status_dir.join("agent-2.status.json"), agent.to_json()).unwrap();
    let mut sim = Record::new(Role::Simulator, WorkerId(2), 5);
    sim.last_end = Some(End {
        side: Role::Simulator,
        reason: Reason::SimulatorCrashed,
        attempt: 0,
        exit: Some(ExitStatus::Code(1)),
        detail: "CARLA ended (exit code 1)".into(),
        at: 1_700_000_099,
    });
    sim.change(State::Running, 1, 1_700_000_105);
    fs::write(status_dir.join("simulator-2.status.json"), sim.to_json()).unwrap();
    // Worker 1: an oversized record and a malformed one; worker 4: a record of another worker.
    fs::write(status_dir.join("agent-1.status.json"), vec![b' '; 70_000]).unwrap();
    fs::write(status_dir.join("simulator-1.status.json"), b"{\"schema\": \"9.0\"}").unwrap();
    fs::write(status_dir.join("agent-4.status.json"), agent.to_json()).unwrap();

    let before = snapshot(&dir);
    let v = json(&dir);
    assert_eq!(snapshot(&dir), before, "logcopy status wrote on the volume");
    let w = &v["workers"];
    assert_eq!(w[1]["state"]["agent"], "running");
    assert_eq!(w[1]["attempt"], 1);
    assert_eq!(w[1]["current_route"], "RouteScenario_8_rep0");
    assert_eq!(w[1]["records"]["agent"], "ok");
    let end = &w[1]["last_end"];
    assert_eq!(end["reason"], "simulator-crashed", "{end}");
    assert_eq!((end["side"].as_str(), end["signal"].as_i64()), (Some("simulator"), Some(15)), "{end}");
    assert_eq!(end["at"], "2023-11-14 22:15:00 UTC");
    assert!(w[0]["records"]["agent"].as_str().unwrap().contains("over the 65536-byte cap"), "{}", w[0]);
    assert!(w[0]["records"]["simulator"].as_str().unwrap().contains("schema 9.0"), "{}", w[0]);
    assert_eq!(w[0]["state"]["agent"], "running", "the markers still tell: {}", w[0]);
    assert!(w[3]["records"]["agent"].as_str().unwrap().contains("names agent-2"), "{}", w[3]);

    let (code, text, _) = status(&dir, &["--workers", "4"]);
    assert_eq!(code, 0);
    let line = text.lines().find(|l| l.starts_with("worker 2:")).unwrap();
    assert!(line.contains("last end: simulator-crashed (simulator, attempt 0, signal 15)"), "{line}");
    assert!(line.contains("on RouteScenario_8_rep0"), "{line}");
    assert!(text.lines().any(|l| l.starts_with("worker 1:") && l.contains("agent record malformed")), "{text}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configuration_exits_2() {
    let dir = fixture("volumes/lb2.0-finished");
    assert_eq!(status(&dir, &["--results-pattern", "agent/x.json"]).0, 2);
    assert_eq!(status(&dir, &["--results-pattern", "../agent{i}.json"]).0, 2);
    assert_eq!(status(Path::new("/nonexistent/volume"), &[]).0, 2);
}

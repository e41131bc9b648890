//! The worker status record (`<role>-<ID>.status.json` beside the markers) with real processes: the `supervisor`
//! binary on both sides of a pair, `fixtures/bin/fake-carla` and `fixtures/bin/fake-evaluator`, as in `pairs.rs`.
//! A crash, a hang and a cancel each leave the record that names them, parsed by the same strict parser logcopy
//! uses.

#[macro_use]
mod common;

use common::*;
use std::time::Duration;
use volume::markers::Role;
use volume::status::{ExitStatus, Reason, Record, State};

const RUN: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(15);

fn record(scene: &Scene, role: &str) -> Option<Record> {
    let bytes = std::fs::read(scene.status.join(format!("{role}-1.status.json"))).ok()?;
    Some(Record::parse(&bytes).unwrap_or_else(|e| panic!("{role}'s record is malformed: {e}")))
}

/// Waits until `role`'s record satisfies `cond`; returns it.
fn expect_record(scene: &Scene, role: &str, what: &str, cond: impl Fn(&Record) -> bool) -> Record {
    scene.expect(RUN, &format!("{role}'s record: {what}"), || record(scene, role).is_some_and(|r| cond(&r)));
    record(scene, role).unwrap_or_else(|| panic!("{role}'s record vanished"))
}

fn expect_exit(scene: &Scene, sup: &mut Sup, code: i32, within: Duration) {
    let got = sup.wait_exit(within);
    ensure!(scene, got == Some(code), "{} should exit {code} within {within:?}; got {got:?}", sup.name);
}

fn reason(r: &Record) -> Option<Reason> {
    r.last_end.as_ref().map(|e| e.reason)
}

#[test]
fn a_simulator_crash_is_recorded_on_both_sides() {
    let mut scene = Scene::new("record-crash");
    scene
        .env("FAKE_CARLA_CRASH_AFTER", "3")
        .env("FAKE_CARLA_CRASH_CODE", "7")
        .pathenv("FAKE_CARLA_FAULT_ONCE", "carla-fault-once")
        .env("FAKE_EVAL_ROUTE_SECONDS", "0.8")
        .env("ROUTES_SUBSET", "0-4")
        .env("REPETITIONS", "1");
    let (mut sim, mut agent) = scene.pair();
    let s = expect_record(&scene, "simulator", "simulator-crashed", |r| reason(r) == Some(Reason::SimulatorCrashed));
    let end = s.last_end.clone().unwrap();
    ensure!(scene, end.side == Role::Simulator && end.exit == Some(ExitStatus::Code(7)), "CARLA's exit: {end:?}");
    ensure!(scene, end.attempt == 0, "attempt 0 ended: {end:?}");
    ensure!(scene, end.detail.contains("CARLA ended (exit code 7)"), "the supervisor's words: {end:?}");
    let a = expect_record(&scene, "agent", "the simulator's crash", |r| reason(r) == Some(Reason::SimulatorCrashed));
    let end = a.last_end.clone().unwrap();
    ensure!(scene, end.side == Role::Simulator && end.attempt == 0, "the agent blames its simulator: {a:?}");
    ensure!(scene, a.routes_subset.as_deref() == Some("0-4") && a.repetitions == Some(1), "routes: {a:?}");
    ensure!(scene, a.current_route.as_deref().is_some_and(|r| r.starts_with("RouteScenario_")), "route: {a:?}");
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    for role in ["agent", "simulator"] {
        let r = record(&scene, role).unwrap();
        ensure!(scene, r.state == State::Done && r.attempt == 1, "{role} done in attempt 1: {r:?}");
        ensure!(scene, r.changes.iter().any(|c| c.state == State::Restarting && c.attempt == 0), "{r:?}");
    }
    let a = record(&scene, "agent").unwrap();
    let states: Vec<State> = a.changes.iter().map(|c| c.state).collect();
    ensure!(
        scene,
        states
            == [
                State::Starting,
                State::WaitingForPeer,
                State::Running,
                State::Restarting,
                State::Starting,
                State::WaitingForPeer,
                State::Running,
                State::Done
            ],
        "the agent's changes: {states:?}"
    );
}

#[test]
fn a_hang_is_recorded_with_its_side() {
    let mut scene = Scene::new("record-hang");
    scene.env("FAKE_EVAL_HANG_AT_ROUTE", "1").pathenv("FAKE_EVAL_FAULT_ONCE", "eval-fault-once").env("MAX_IDLE", "3");
    let (mut sim, mut agent) = scene.pair();
    let a = expect_record(&scene, "agent", "hang", |r| reason(r) == Some(Reason::Hang));
    let end = a.last_end.clone().unwrap();
    ensure!(scene, end.side == Role::Agent && end.attempt == 0 && end.detail.contains("(hang)"), "{end:?}");
    ensure!(scene, end.exit.is_some(), "the stopped evaluator's exit (the fake exits 0 on SIGTERM): {end:?}");
    ensure!(scene, a.current_route.as_deref() == Some("RouteScenario_1_rep0"), "the hung route: {a:?}");
    let s = expect_record(&scene, "simulator", "the agent's crash", |r| reason(r) == Some(Reason::EvaluatorCrashed));
    ensure!(scene, s.last_end.as_ref().unwrap().side == Role::Agent, "the simulator blames the agent: {s:?}");
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, record(&scene, "agent").unwrap().state == State::Done, "done after the retry");
}

#[test]
fn a_cancel_is_recorded_on_both_sides() {
    let mut scene = Scene::new("record-cancel");
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "1");
    let (mut sim, mut agent) = scene.pair();
    expect_record(&scene, "agent", "running", |r| r.state == State::Running);
    scene.touch("simulation.cancel");
    expect_exit(&scene, &mut sim, 0, STEP);
    expect_exit(&scene, &mut agent, 0, STEP);
    for role in ["agent", "simulator"] {
        let r = record(&scene, role).unwrap();
        ensure!(scene, r.state == State::Cancelled && reason(&r) == Some(Reason::Cancelled), "{role}: {r:?}");
    }
}

#[test]
fn a_spent_budget_is_recorded() {
    let mut scene = Scene::new("record-budget");
    scene.env("FAKE_CARLA_CRASH_AFTER", "1").env("MAX_ATTEMPTS", "1");
    let (mut sim, mut agent) = scene.pair();
    expect_exit(&scene, &mut sim, 0, RUN);
    expect_exit(&scene, &mut agent, 0, RUN);
    // Whichever side looks first ends for its spent budget; the other may end for its peer's failure.
    let (s, a) = (record(&scene, "simulator").unwrap(), record(&scene, "agent").unwrap());
    let spent = [&s, &a].into_iter().find(|r| reason(r) == Some(Reason::AttemptBudgetSpent));
    ensure!(scene, spent.is_some_and(|r| r.state == State::Failed && r.max_attempts == 1), "{s:?}\n{a:?}");
    for r in [&s, &a] {
        let ok = matches!(reason(r), Some(Reason::AttemptBudgetSpent | Reason::PeerFailed));
        ensure!(scene, ok && matches!(r.state, State::Failed | State::Done), "{r:?}");
    }
}

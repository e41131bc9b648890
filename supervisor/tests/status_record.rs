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
    ensure!(scene, a.idle_timeout_ms == Some(3000), "the hang detector's limit (MAX_IDLE 3): {a:?}");
    let s = expect_record(&scene, "simulator", "the agent's crash", |r| reason(r) == Some(Reason::EvaluatorCrashed));
    ensure!(scene, s.idle_timeout_ms.is_none(), "the simulator has no hang detector: {s:?}");
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

#[test]
fn an_agent_that_cannot_be_set_up_is_recorded_as_such() {
    // The evaluator records "Failed - Agent couldn't be set up" for every route and finishes: scored as upstream
    // scores it (the worker is done), and the record names the end for what it was.
    let mut scene = Scene::new("record-setup");
    scene.env("FAKE_EVAL_AGENT_SETUP_FAILS", "1");
    let (mut sim, mut agent) = scene.pair();
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.has("agent-1.done") && scene.crash_markers().is_empty(), "done, no retry");
    let a = record(&scene, "agent").unwrap();
    let end = a.last_end.clone().unwrap();
    ensure!(scene, a.state == State::Done && end.reason == Reason::AgentSetupFailed, "the agent's record: {a:?}");
    ensure!(scene, end.side == Role::Agent && end.exit == Some(ExitStatus::Code(0)), "{end:?}");
    ensure!(scene, end.detail.contains("could not be set up for any of the 5 routes"), "the words: {end:?}");
    let s = record(&scene, "simulator").unwrap();
    ensure!(scene, s.state == State::Done && reason(&s) == Some(Reason::Finished), "the simulator served: {s:?}");
}

#[test]
fn an_evaluator_that_fails_after_no_agent_set_up_is_an_agent_set_up_failure() {
    // Attempt 0: every route fails its set-up and the evaluator exits 1 (a crash: restarted in place). Attempt 1
    // resumes past the last route and finishes; every record still says the agent was never set up.
    let mut scene = Scene::new("record-setup-crash");
    scene
        .env("FAKE_EVAL_AGENT_SETUP_FAILS", "1")
        .env("FAKE_EVAL_EXIT_CODE", "1")
        .pathenv("FAKE_EVAL_FAULT_ONCE", "eval-fault-once");
    let (mut sim, mut agent) = scene.pair();
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.crash_markers() == ["agent-1.crash0", "simulator-1.crash0"], "one crash, attempt 0");
    let out = scene.output(&agent);
    ensure!(
        scene,
        out.contains("attempt 0 crashed: the agent could not be set up for any of the 5 routes recorded")
            && out.contains("the evaluator ended (exit code 1)"),
        "the crash is named for the set-up failure"
    );
    let a = record(&scene, "agent").unwrap();
    ensure!(scene, a.changes.iter().any(|c| c.state == State::Restarting && c.attempt == 0), "{a:?}");
    let end = a.last_end.clone().unwrap();
    ensure!(scene, a.state == State::Done && end.reason == Reason::AgentSetupFailed && end.attempt == 1, "{a:?}");
    let s = record(&scene, "simulator").unwrap();
    ensure!(scene, s.changes.iter().any(|c| c.state == State::Restarting && c.attempt == 0), "{s:?}");
}

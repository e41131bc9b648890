//! `--topology indexed` with real processes: the exit codes an Indexed Job's podFailurePolicy acts on
//! (`supervisor::exit`), beside `--topology pod` (generation 1), whose every handled end stays exit 0; and the
//! worker number and route subset an Indexed Job's pod derives from `JOB_COMPLETION_INDEX`.

#[macro_use]
mod common;

use common::*;
use std::time::Duration;
use supervisor::exit::{BUDGET_SPENT, CONFIG_ERROR, PARTICIPANT_FAULT};

const RUN: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(15);

fn code(c: u8) -> Option<i32> {
    Some(i32::from(c))
}

/// A pair whose CARLA crashes every attempt, with a budget of 2: (simulator's exit, agent's exit).
fn budget_spent(topology: &str) -> (Scene, Option<i32>, Option<i32>) {
    let mut scene = Scene::new(&format!("budget-{topology}"));
    scene.env("FAKE_CARLA_CRASH_AFTER", "0.5").env("TOPOLOGY", topology);
    let mut sim = scene.sim().arg("--max-attempts").arg("2").start();
    let mut agent = scene.agent().arg("--max-attempts").arg("2").start();
    let s = sim.wait_exit(RUN);
    let a = agent.wait_exit(STEP);
    ensure!(scene, scene.has("simulator-1.failed") || scene.has("agent-1.failed"), "a failed marker ends the pair");
    ensure!(scene, scene.carla_starts().len() == 2, "CARLA started exactly twice");
    (scene, s, a)
}

#[test]
fn a_spent_budget_exits_41_under_indexed() {
    let (scene, s, a) = budget_spent("indexed");
    // The side that found the budget spent writes its failed marker and exits 41; its peer, which then finds that
    // marker, ends as its role says (exit 0): the pod's failure carries the 41.
    let ends = [s, a];
    ensure!(scene, ends.contains(&code(BUDGET_SPENT)), "one side exits {BUDGET_SPENT}; got {ends:?}");
    ensure!(scene, ends.iter().all(|e| *e == Some(0) || *e == code(BUDGET_SPENT)), "nothing else; got {ends:?}");
    if s == code(BUDGET_SPENT) {
        ensure!(scene, scene.has("simulator-1.failed"), "the simulator that exited 41 wrote its failed marker");
    }
    if a == code(BUDGET_SPENT) {
        ensure!(scene, scene.has("agent-1.failed"), "the agent that exited 41 wrote its failed marker");
    }

    // A new pod of the shard on a restored volume (markers kept): the side with the failed marker exits 41 again.
    let failed_side = if scene.has("simulator-1.failed") { "simulator" } else { "agent" };
    let mut again =
        if failed_side == "simulator" { scene.sim() } else { scene.agent() }.env("TOPOLOGY", "indexed").start();
    let e = again.wait_exit(STEP);
    ensure!(scene, e == code(BUDGET_SPENT), "the {failed_side} with its failed marker exits 41 again; got {e:?}");
    ensure!(scene, scene.carla_starts().len() == 2, "and starts nothing");
}

#[test]
fn a_spent_budget_exits_0_under_pod() {
    let (scene, s, a) = budget_spent("pod");
    ensure!(scene, s == Some(0) && a == Some(0), "generation 1 is unchanged: both exit 0; got {s:?} {a:?}");
}

fn rejected(topology: &str) -> (Scene, Option<i32>, Option<i32>) {
    let mut scene = Scene::new(&format!("rejected-{topology}"));
    scene.env("FAKE_EVAL_REJECTED", "1").env("TOPOLOGY", topology);
    let (mut sim, mut agent) = scene.pair();
    let a = agent.wait_exit(RUN);
    let s = sim.wait_exit(STEP);
    ensure!(scene, scene.has("agent-1.failed"), "agent-1.failed is written");
    ensure!(scene, scene.crash_markers().is_empty(), "a rejection is no crash: no retry");
    (scene, s, a)
}

#[test]
fn rejected_sensors_are_a_participant_fault_under_indexed() {
    let (scene, s, a) = rejected("indexed");
    ensure!(scene, a == code(PARTICIPANT_FAULT), "the agent exits {PARTICIPANT_FAULT}; got {a:?}");
    ensure!(scene, s == Some(0), "the simulator, with nobody to serve, is done: exit 0; got {s:?}");
}

#[test]
fn rejected_sensors_exit_0_under_pod() {
    let (scene, s, a) = rejected("pod");
    ensure!(scene, s == Some(0) && a == Some(0), "generation 1 is unchanged: both exit 0; got {s:?} {a:?}");
}

/// The agent's evaluator cannot be started (no such program), with a budget of 1: its exit. Before the spawn lock
/// (`reaper::SPAWN_LOCK`), std's `Command::spawn` panicked here when the reaper had taken its failed child: exit 101
/// under both topologies.
fn cannot_start(topology: &str) -> Option<i32> {
    let mut scene = Scene::new(&format!("spawn-{topology}"));
    scene.env("TOPOLOGY", topology);
    let mut sim = scene.sim().start();
    let missing = scene.path("no-such-evaluator");
    let mut agent = scene.agent().arg("--max-attempts").arg("1").command(vec![missing.into()]).start();
    let a = agent.wait_exit(RUN);
    ensure!(scene, scene.output(&agent).contains("cannot start"), "it says why");
    ensure!(scene, scene.has("agent-1.failed"), "agent-1.failed is written");
    sim.kill9();
    a
}

#[test]
fn an_evaluator_that_cannot_start_is_a_participant_fault_under_indexed() {
    let a = cannot_start("indexed");
    assert_eq!(a, code(PARTICIPANT_FAULT), "the agent exits {PARTICIPANT_FAULT}");
}

#[test]
fn an_evaluator_that_cannot_start_ends_the_agent_with_0_under_pod() {
    assert_eq!(cannot_start("pod"), Some(0), "generation 1: a handled end, exit 0");
}

#[test]
fn a_configuration_error_exits_2_under_both() {
    for topology in ["pod", "indexed"] {
        let scene = Scene::new(&format!("config-{topology}"));
        // Worker 8 of 7 shards.
        let mut agent = scene
            .agent()
            .env("TOPOLOGY", topology)
            .env("ROUTES_SUBSET", "")
            .env("ROUTE_COUNT", "29")
            .env("SUBMISSION_WORKERS", "7")
            .env("WORKER_ID", "8")
            .start();
        let a = agent.wait_exit(STEP);
        ensure!(scene, a == code(CONFIG_ERROR), "{topology}: exit {CONFIG_ERROR}; got {a:?}");
        ensure!(scene, scene.output(&agent).contains("SUBMISSION_WORKERS"), "it says why");
    }
}

/// A child's own exit 41 after a forwarded SIGTERM must not fail the shard for good under indexed (143 instead);
/// under pod its code is passed on as before.
#[test]
fn a_childs_code_after_sigterm_never_reads_as_ours_under_indexed() {
    for (topology, want) in [("indexed", 143), ("pod", 41)] {
        let scene = Scene::new(&format!("term-{topology}"));
        let child = "trap 'exit 41' TERM; echo started > \"$0\"; while :; do sleep 0.1; done";
        let started = scene.path("child-started");
        let mut sim = scene
            .sim()
            .env("TOPOLOGY", topology)
            .env("READY_TIMEOUT", "60")
            .command(vec!["sh".into(), "-c".into(), child.into(), started.clone().into()])
            .start();
        scene.expect(STEP, "the child started", || started.exists());
        sim.signal(libc::SIGTERM);
        let e = sim.wait_exit(STEP);
        ensure!(scene, e == Some(want), "{topology}: exit {want}; got {e:?}");
    }
}

#[test]
fn the_worker_and_its_routes_come_from_the_completion_index() {
    let mut scene = Scene::new("index");
    scene.env("TOPOLOGY", "indexed");
    // WORKER_ID unset: JOB_COMPLETION_INDEX 2 is worker 3; 29 routes over 7 workers give it upstream's 9-12.
    let mut sim = scene.sim().unset("WORKER_ID").env("JOB_COMPLETION_INDEX", "2").start();
    let mut agent = scene
        .agent()
        .unset("WORKER_ID")
        .env("JOB_COMPLETION_INDEX", "2")
        .env("ROUTES_SUBSET", "")
        .env("SUBMISSION_WORKERS", "7")
        .env("ROUTE_COUNT", "29")
        .start();
    let a = agent.wait_exit(RUN);
    let s = sim.wait_exit(STEP);
    ensure!(scene, a == Some(0) && s == Some(0), "a finished shard exits 0; got {s:?} {a:?}");
    ensure!(scene, scene.has("agent-3.done") && scene.has("simulator-3.done"), "worker 3's markers");
    let starts = scene.eval_starts();
    ensure!(
        scene,
        starts.first().and_then(|s| s.first_route) == Some(9),
        "the evaluator starts at route 9: {starts:?}"
    );
    let prepared: Vec<u32> = scene.prepared_per_attempt().concat();
    ensure!(
        scene,
        prepared == [9, 10, 11, 12],
        "worker 3 of 7 over 29 routes runs 9-12 (upstream's split); got {prepared:?}"
    );

    let mut bad = scene.sim().unset("WORKER_ID").env("JOB_COMPLETION_INDEX", "x").start();
    let e = bad.wait_exit(STEP);
    ensure!(scene, e == code(CONFIG_ERROR), "a bad index is a configuration error; got {e:?}");
    ensure!(scene, scene.output(&bad).contains("JOB_COMPLETION_INDEX (\"x\")"), "naming the value");
}

/// An Indexed Job's pods share one template: `{worker}` in the checkpoint names the worker's own folder
/// (generation 1's `agent/agentN/` layout on the pod's volume).
#[test]
fn the_checkpoint_template_names_the_workers_folder() {
    let mut scene = Scene::new("template");
    scene.env("TOPOLOGY", "indexed").env("FAKE_EVAL_ROUTE_SECONDS", "0.1");
    std::fs::create_dir_all(scene.path("vol/agent5")).unwrap();
    let mut sim = scene.sim().unset("WORKER_ID").env("JOB_COMPLETION_INDEX", "4").start();
    let template = scene.path("vol/agent{worker}/agent_results.json");
    let mut agent = scene.agent_at(&template).unset("WORKER_ID").env("JOB_COMPLETION_INDEX", "4").start();
    let a = agent.wait_exit(RUN);
    let s = sim.wait_exit(STEP);
    ensure!(scene, a == Some(0) && s == Some(0), "a finished shard exits 0; got {s:?} {a:?}");
    ensure!(scene, scene.path("vol/agent5/agent_results.json").is_file(), "the results file is worker 5's");
    ensure!(scene, scene.path("vol/agent5/leaderboard.log").is_file(), "and the evaluator's log beside it");
}

//! Processes of an attempt that leave the child's process group: `setsid`, a double fork, `setpgid(0, 0)`, and a
//! new session that keeps forking. Real supervisors on both sides of a pair, `fixtures/bin/fake-carla` and
//! `fixtures/bin/fake-evaluator` behind a wrapper that starts the escapers and then execs the fake. Stopping an
//! attempt must leave none of them alive (they would keep writing the checkpoint, or hold the GPU and the ports,
//! into the next attempt), and so must the supervisor's exit.

#[macro_use]
mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::time::Duration;

const RUN: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(15);

/// Starts four processes that leave the process group (each pid appended to `$ESCAPERS` before the fake starts),
/// then execs the program given as its first argument. `$ESCAPERS` differs per side.
const WRAPPER: &str = r#"f="$ESCAPERS"
setsid sleep 120 & echo "setsid $!" >> "$f"
( setsid sleep 120 & echo "double-fork $!" >> "$f" )
( sleep 120 & echo "double-fork-same-group $!" >> "$f" )
python3 -c 'import os; os.setpgid(0, 0); os.execvp("sleep", ["sleep", "120"])' & echo "setpgid $!" >> "$f"
setsid bash -c 'while :; do sleep 120 & sleep 0.2; done' </dev/null >/dev/null 2>&1 & echo "respawner $!" >> "$f"
exec "$@""#;

fn wrapped(program: &str) -> Vec<OsString> {
    vec!["bash".into(), "-c".into(), WRAPPER.into(), "escaper-wrapper".into(), fixture(program).into()]
}

/// The escapers' pids that `side` has logged so far, with their kind.
fn escapers(scene: &Scene, side: &str) -> Vec<(String, i32)> {
    fs::read_to_string(scene.path(&format!("{side}-escapers")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (kind, pid) = l.split_once(' ')?;
            Some((kind.to_owned(), pid.trim().parse().ok()?))
        })
        .collect()
}

fn alive(list: &[(String, i32)]) -> Vec<&(String, i32)> {
    list.iter().filter(|(_, p)| pid_exists(*p)).collect()
}

fn expect_exit(scene: &Scene, sup: &mut Sup, code: i32, within: Duration) {
    let got = sup.wait_exit(within);
    ensure!(scene, got == Some(code), "{} should exit {code} within {within:?}; got {got:?}", sup.name);
}

#[test]
fn escapers_of_a_crashed_attempt_and_of_the_last_are_killed() {
    let mut scene = Scene::new("escapers");
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "1");
    let sim_file = scene.path("simulator-escapers");
    let agent_file = scene.path("agent-escapers");
    let mut sim = scene.sim().command(wrapped("fake-carla")).env("ESCAPERS", sim_file.to_string_lossy()).start();
    let mut agent =
        scene.agent().command(wrapped("fake-evaluator")).env("ESCAPERS", agent_file.to_string_lossy()).start();

    // Attempt 0: once every escaper runs, the evaluator is SIGKILLed (a crash); both sides stop attempt 0.
    scene.expect(RUN, "the evaluator runs and both wrappers logged their escapers", || {
        !scene.eval_starts().is_empty()
            && escapers(&scene, "simulator").len() == 5
            && escapers(&scene, "agent").len() == 5
    });
    let (sim0, agent0) = (escapers(&scene, "simulator"), escapers(&scene, "agent"));
    ensure!(scene, alive(&sim0).len() == 5 && alive(&agent0).len() == 5, "the escapers run: {sim0:?} {agent0:?}");
    signal(scene.eval_starts()[0].pid, libc::SIGKILL);
    // Each side writes its crash marker after it has stopped the attempt: nothing of attempt 0 may be left then.
    scene.expect_marker("agent-1.crash0", RUN);
    ensure!(scene, alive(&agent0).is_empty(), "the agent's attempt-0 escapers survived the stop: {:?}", alive(&agent0));
    scene.expect_marker("simulator-1.crash0", STEP);
    ensure!(scene, alive(&sim0).is_empty(), "CARLA's attempt-0 escapers survived the stop: {:?}", alive(&sim0));
    ensure!(scene, sim.running() && agent.running(), "both supervisors restart in place");
    for sup in [&sim, &agent] {
        let out = scene.output(sup);
        ensure!(scene, out.contains("outside the child's process group"), "{} names what it killed", sup.name);
    }

    // Attempt 1 runs to the end; its escapers go with the attempt, and nothing of the scene outlives the supervisors.
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    let (sim_all, agent_all) = (escapers(&scene, "simulator"), escapers(&scene, "agent"));
    ensure!(scene, sim_all.len() == 10 && agent_all.len() == 10, "two attempts of escapers: {sim_all:?} {agent_all:?}");
    ensure!(scene, alive(&sim_all).is_empty(), "CARLA's escapers outlived the supervisor: {:?}", alive(&sim_all));
    ensure!(
        scene,
        alive(&agent_all).is_empty(),
        "the agent's escapers outlived the supervisor: {:?}",
        alive(&agent_all)
    );
    let left = scene.live_processes();
    ensure!(scene, left.is_empty(), "processes of the scene outlived both supervisors: {left:?}");
}

#[test]
fn escapers_do_not_outlive_a_supervisor_stopped_by_sigterm() {
    // The container is being stopped: the SIGTERM is forwarded to CARLA's group, CARLA exits, and the supervisor
    // exits with CARLA's status; the escapers of the attempt, outside the group, go with it.
    let scene = Scene::new("escapers-sigterm");
    let file = scene.path("simulator-escapers");
    let mut sim = scene.sim().command(wrapped("fake-carla")).env("ESCAPERS", file.to_string_lossy()).start();
    scene.expect_marker("simulator-1.start0", STEP);
    scene.expect(STEP, "the wrapper logged its five escapers", || escapers(&scene, "simulator").len() == 5);
    let list = escapers(&scene, "simulator");
    ensure!(scene, alive(&list).len() == 5, "the escapers run: {list:?}");
    sim.signal(libc::SIGTERM);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, alive(&list).is_empty(), "escapers outlived the supervisor: {:?}", alive(&list));
    let left = scene.live_processes();
    ensure!(scene, left.is_empty(), "processes of the scene outlived the supervisor: {left:?}");
}

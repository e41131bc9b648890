//! Integration tests with real processes: the `supervisor` binary on both sides of a worker pair, with
//! `fixtures/bin/fake-carla` as CARLA and `fixtures/bin/fake-evaluator` as the leaderboard evaluator, sharing one
//! status folder as the simulator and agent containers of a pod do.
//!
//! Each test has its own temporary folder and port, short deadlines (GRACE=1, PEER_WAIT=15, READY_TIMEOUT=5,
//! MARKER_POLL=200ms), bounded waits only, and kills what it started when it ends. Nothing asserts on speed: the
//! bounds are there so that a broken supervisor fails instead of hanging.

#[macro_use]
mod common;

use common::*;
use serde_json::Value;
use std::ffi::OsString;
use std::fs;
use std::time::Duration;

/// Bound of a whole run of a pair (generous: the machine may be loaded; nothing here measures speed).
const RUN: Duration = Duration::from_secs(60);
/// Bound of one step (a marker after an event, an exit after a stop).
const STEP: Duration = Duration::from_secs(15);

fn expect_exit(scene: &Scene, sup: &mut Sup, code: i32, within: Duration) {
    let got = sup.wait_exit(within);
    ensure!(scene, got == Some(code), "{} should exit {code} within {within:?}; got {got:?}", sup.name);
}

/// The checkpoint holds each of the `total` routes (repetition 0) exactly once, in order, and says finished.
fn assert_complete(scene: &Scene, total: usize) {
    let v = scene.checkpoint();
    ensure!(scene, v.is_some(), "the final checkpoint must parse");
    let v = v.unwrap_or(Value::Null);
    let ids = route_ids(&v);
    let expected: Vec<String> = (0..total).map(|i| format!("RouteScenario_{i}_rep0")).collect();
    ensure!(scene, ids == expected, "every route recorded exactly once, in order: got {ids:?}");
    let t = total as i64;
    ensure!(scene, progress(&v) == Some((t, t)), "progress must be [{t}, {t}]");
    ensure!(scene, v["entry_status"] == "Finished", "entry_status must be Finished, got {}", v["entry_status"]);
    let crashed = v["_checkpoint"]["records"]
        .as_array()
        .is_some_and(|a| a.iter().any(|r| r["status"].as_str().is_some_and(|s| s.contains("Simulation crashed"))));
    ensure!(scene, !crashed, "no record may be left as a simulation crash after the resume");
}

/// SIGKILLs the newest fake-carla; its pid.
fn kill_carla(scene: &Scene) -> i32 {
    let pid = scene.carla_starts().last().copied();
    ensure!(scene, pid.is_some(), "fake-carla must have logged its start");
    let pid = pid.unwrap_or(0);
    signal(pid, libc::SIGKILL);
    pid
}

fn wait_records(scene: &Scene, n: usize) {
    scene.expect(RUN, &format!("{n} records in the checkpoint"), || scene.records() >= n);
}

/// The route numbers the evaluator prepared, per attempt (from the agent's log).
fn prepared(scene: &Scene) -> Vec<Vec<u32>> {
    scene.prepared_per_attempt().into_iter().filter(|a| !a.is_empty()).collect()
}

// ------------------------------------------------------------------------------------------------ 1. a finished pair

#[test]
fn finished_pair() {
    let scene = Scene::new("finished");
    let (mut sim, mut agent) = scene.pair();
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    for m in ["simulator-1.start0", "agent-1.done", "simulator-1.done"] {
        ensure!(scene, scene.has(m), "marker {m} must be written");
    }
    ensure!(scene, scene.crash_markers().is_empty(), "no crash marker in a clean run");
    ensure!(scene, !scene.has("agent-1.failed") && !scene.has("simulator-1.failed"), "no failed marker");
    assert_complete(&scene, 5);
    let carla = scene.carla_starts();
    let evals = scene.eval_starts();
    ensure!(scene, carla.len() == 1, "CARLA starts once");
    ensure!(scene, evals.len() == 1 && !evals[0].resume, "the evaluator starts once, fresh");
    ensure!(scene, !pid_exists(carla[0]), "CARLA is stopped and reaped when the pair is done");
}

// ------------------------------------------------------------------------------------------------ 2. in-place restart

#[test]
fn in_place_restart_uses_the_same_attempt_on_both_sides() {
    let mut scene = Scene::new("inplace");
    scene
        .env("FAKE_CARLA_CRASH_AFTER", "3")
        .pathenv("FAKE_CARLA_FAULT_ONCE", "carla-fault-once")
        .env("FAKE_EVAL_ROUTE_SECONDS", "0.8")
        .pathenv("FAKE_EVAL_ENV_DUMP", "eval-env.json");
    let (mut sim, mut agent) = scene.pair();
    scene.expect_marker("simulator-1.crash0", RUN);
    scene.expect_marker("agent-1.crash0", STEP);
    scene.expect_marker("simulator-1.start1", STEP);
    ensure!(scene, sim.running() && agent.running(), "both supervisors restart in place, never exiting");
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.has("agent-1.done") && scene.has("simulator-1.done"), "both done");
    ensure!(
        scene,
        scene.crash_markers() == ["agent-1.crash0", "simulator-1.crash0"],
        "exactly one crash, attempt 0, on both sides"
    );
    ensure!(scene, scene.carla_starts().len() == 2, "CARLA started twice");
    let evals = scene.eval_starts();
    ensure!(scene, evals.len() == 2 && evals[1].resume, "the second evaluator resumed (FAKE_EVAL_LOG resume=1)");
    let dump: Value =
        serde_json::from_slice(&fs::read(scene.path("eval-env.json")).unwrap_or_default()).unwrap_or(Value::Null);
    let argv: Vec<&str> =
        dump["argv"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    ensure!(scene, argv.contains(&"--resume=1"), "the second start passed --resume=1: {argv:?}");
    assert_complete(&scene, 5);
    // The attempt rule needs each side's start marker (agent-ID.start<N>, generation 2).
    for m in ["agent-1.start0", "agent-1.start1"] {
        ensure!(scene, scene.has(m), "the agent must write its start marker {m}");
    }
}

// ------------------------------------------------------------------------------------------------ 3. the attempt rule

#[test]
fn attempt_rule_agent_supervisor_sigkilled_mid_attempt() {
    let mut scene = Scene::new("agentkill");
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "0.5");
    let (mut sim, mut agent) = scene.pair();
    wait_records(&scene, 1);
    // The container's PID 1 is SIGKILLed; its evaluator may live on. Kubernetes starts a new container.
    agent.kill9();
    let mut agent2 = scene.agent().start();
    // The attempt rule's first step: its own start0 without crash0 means attempt 0 ended without a trace.
    scene.expect_marker("agent-1.crash0", Duration::from_secs(10));
    scene.expect_marker("simulator-1.crash0", STEP);
    scene.expect_marker("simulator-1.start1", STEP);
    ensure!(scene, sim.running(), "the simulator restarts in place");
    expect_exit(&scene, &mut agent2, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.has("agent-1.done") && scene.has("simulator-1.done"), "both done");
    ensure!(
        scene,
        scene.crash_markers() == ["agent-1.crash0", "simulator-1.crash0"],
        "the pair continues at attempt 1 and crashes no more"
    );
    ensure!(scene, scene.has("agent-1.start1"), "the new agent runs attempt 1");
    assert_complete(&scene, 5);
}

#[test]
fn attempt_rule_both_sides_crash_at_once() {
    let mut scene = Scene::new("bothcrash");
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "0.5");
    let (mut sim, mut agent) = scene.pair();
    wait_records(&scene, 1);
    let eval = scene.eval_starts().last().map_or(0, |e| e.pid);
    ensure!(scene, eval > 0, "the evaluator logged its start");
    // CARLA dies and the evaluator fails at the same moment: each side sees its own child end first.
    kill_carla(&scene);
    signal(eval, libc::SIGKILL);
    scene.expect_marker("simulator-1.crash0", STEP);
    scene.expect_marker("agent-1.crash0", STEP);
    scene.expect_marker("simulator-1.start1", STEP);
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(
        scene,
        scene.crash_markers() == ["agent-1.crash0", "simulator-1.crash0"],
        "both computed attempt 1 (no crash of a later attempt)"
    );
    ensure!(scene, !scene.has("simulator-1.start2"), "no attempt 2");
    let evals = scene.eval_starts();
    ensure!(scene, evals.len() == 2 && evals[1].resume, "the evaluator of attempt 1 resumed");
    assert_complete(&scene, 5);
    ensure!(scene, scene.has("agent-1.start1"), "the agent must write agent-1.start1 for attempt 1");
}

#[test]
fn attempt_rule_stale_markers_start_both_at_attempt_1() {
    let scene = Scene::new("stale");
    for m in ["simulator-1.start0", "agent-1.start0", "simulator-1.crash0", "agent-1.crash0"] {
        scene.touch(m);
    }
    let (mut sim, mut agent) = scene.pair();
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.has("simulator-1.start1"), "the simulator runs attempt 1");
    ensure!(scene, scene.crash_markers() == ["agent-1.crash0", "simulator-1.crash0"], "no new crash marker");
    ensure!(scene, scene.carla_starts().len() == 1 && scene.eval_starts().len() == 1, "one start each");
    assert_complete(&scene, 5);
    ensure!(scene, scene.has("agent-1.start1"), "the agent must write agent-1.start1 for attempt 1");
}

// ------------------------------------------------------------------------------------------------ 4. the budget

#[test]
fn budget_spent_and_kept_across_a_container_restart() {
    let mut scene = Scene::new("budget");
    scene.env("FAKE_CARLA_CRASH_AFTER", "0.5");
    let mut sim = scene.sim().arg("--max-attempts").arg("2").start();
    let mut agent = scene.agent().arg("--max-attempts").arg("2").start();
    expect_exit(&scene, &mut sim, 0, RUN);
    expect_exit(&scene, &mut agent, 0, STEP);
    ensure!(scene, scene.has("simulator-1.crash0") && scene.has("simulator-1.crash1"), "two crashes");
    ensure!(scene, scene.has("simulator-1.failed") || scene.has("agent-1.failed"), "a failed marker ends the pair");
    ensure!(scene, !scene.has("simulator-1.start2") && !scene.has("simulator-1.crash2"), "no third attempt");
    ensure!(scene, scene.carla_starts().len() == 2, "CARLA started exactly twice");

    // Kubernetes restarts the simulator container: it ends at once.
    let mut sim2 = scene.sim().arg("--max-attempts").arg("2").start();
    expect_exit(&scene, &mut sim2, 0, STEP);
    ensure!(scene, scene.carla_starts().len() == 2, "a restarted container does not start CARLA again");

    // Without the end markers, the spent budget is still read from the crash markers.
    for m in ["simulator-1.failed", "agent-1.failed", "simulator-1.done", "agent-1.done"] {
        let _ = fs::remove_file(scene.status.join(m));
    }
    let mut sim3 = scene.sim().arg("--max-attempts").arg("2").start();
    expect_exit(&scene, &mut sim3, 0, STEP);
    ensure!(scene, scene.carla_starts().len() == 2, "the spent budget is read from the markers: no CARLA start");
    ensure!(scene, scene.has("simulator-1.failed"), "the restarted simulator writes simulator-1.failed");
    ensure!(scene, scene.output(&sim3).contains("attempt budget spent"), "it says why");
}

// ------------------------------------------------------------------------------------------------ 5. --restart container

#[test]
fn restart_container_mode_exits_1_after_the_crash_marker() {
    let mut scene = Scene::new("container");
    scene
        .env("FAKE_CARLA_CRASH_AFTER", "2")
        .pathenv("FAKE_CARLA_FAULT_ONCE", "carla-fault-once")
        .env("FAKE_EVAL_ROUTE_SECONDS", "0.5");
    let mut sim = scene.sim().arg("--restart").arg("container").start();
    let mut agent = scene.agent().arg("--restart").arg("container").start();
    expect_exit(&scene, &mut sim, 1, RUN);
    expect_exit(&scene, &mut agent, 1, STEP);
    ensure!(scene, scene.has("simulator-1.crash0") && scene.has("agent-1.crash0"), "crash markers before exit 1");
    ensure!(scene, !scene.has("simulator-1.start1"), "no in-place restart");
    // Kubernetes restarts both containers: they continue at attempt 1.
    let mut sim2 = scene.sim().arg("--restart").arg("container").start();
    let mut agent2 = scene.agent().arg("--restart").arg("container").start();
    expect_exit(&scene, &mut agent2, 0, RUN);
    expect_exit(&scene, &mut sim2, 0, STEP);
    ensure!(scene, scene.has("simulator-1.start1"), "the restarted pair runs attempt 1");
    ensure!(scene, scene.has("agent-1.done") && scene.has("simulator-1.done"), "both done");
    assert_complete(&scene, 5);
}

// ------------------------------------------------------------------------------------------------ 6. grandchildren

#[test]
fn no_grandchild_left_after_a_crash() {
    let mut scene = Scene::new("grandchild");
    scene
        .env("FAKE_CARLA_GRANDCHILD", "1")
        .pathenv("FAKE_CARLA_GRANDCHILD_PIDFILE", "carla-gc.pid")
        .env("FAKE_EVAL_GRANDCHILD", "1")
        .pathenv("FAKE_EVAL_GRANDCHILD_PIDFILE", "eval-gc.pid")
        .env("FAKE_EVAL_ROUTE_SECONDS", "0.5");
    let (mut sim, mut agent) = scene.pair();
    wait_records(&scene, 1);
    let gc = scene.pid_file("carla-gc.pid").unwrap_or(0);
    let ge = scene.pid_file("eval-gc.pid").unwrap_or(0);
    ensure!(scene, gc > 0 && ge > 0 && pid_exists(gc) && pid_exists(ge), "both grandchildren run ({gc}, {ge})");
    kill_carla(&scene);
    scene.expect_marker("simulator-1.crash0", STEP);
    scene.expect_marker("agent-1.crash0", STEP);
    scene.expect(STEP, "the grandchildren of attempt 0 are gone (ESRCH)", || !pid_exists(gc) && !pid_exists(ge));
    ensure!(scene, sim.running() && agent.running(), "both supervisors still run (in-place restart)");
    // The grandchildren honour SIGTERM and the group is empty right after it: no escalation, no false alarm.
    for sup in [&sim, &agent] {
        let out = scene.output(sup);
        ensure!(
            scene,
            !out.contains("outlived the") && !out.contains("still alive after SIGKILL"),
            "{}: a group that obeyed SIGTERM is neither SIGKILLed nor reported stuck",
            sup.name
        );
    }
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    let (gc1, ge1) = (scene.pid_file("carla-gc.pid").unwrap_or(0), scene.pid_file("eval-gc.pid").unwrap_or(0));
    ensure!(scene, gc1 != gc && ge1 != ge, "attempt 1 started new grandchildren");
    scene
        .expect(STEP, "the grandchildren of attempt 1 are gone after the end", || !pid_exists(gc1) && !pid_exists(ge1));
}

#[test]
fn groups_ignoring_sigterm_are_killed_after_the_grace_period() {
    let mut scene = Scene::new("ignoreterm");
    scene
        .env("FAKE_CARLA_IGNORE_TERM", "1")
        .env("FAKE_CARLA_GRANDCHILD", "1")
        .env("FAKE_CARLA_GRANDCHILD_IGNORE_TERM", "1")
        .pathenv("FAKE_CARLA_GRANDCHILD_PIDFILE", "carla-gc.pid")
        .env("FAKE_EVAL_IGNORE_TERM", "1")
        .env("FAKE_EVAL_GRANDCHILD", "1")
        .env("FAKE_EVAL_GRANDCHILD_IGNORE_TERM", "1")
        .pathenv("FAKE_EVAL_GRANDCHILD_PIDFILE", "eval-gc.pid")
        .env("FAKE_EVAL_ROUTE_SECONDS", "3");
    let (mut sim, mut agent) = scene.pair();
    scene.expect(RUN, "the evaluator runs", || {
        !scene.eval_starts().is_empty() && scene.pid_file("eval-gc.pid").is_some()
    });
    let pids = [
        scene.carla_starts()[0],
        scene.eval_starts()[0].pid,
        scene.pid_file("carla-gc.pid").unwrap_or(0),
        scene.pid_file("eval-gc.pid").unwrap_or(0),
    ];
    ensure!(scene, pids.iter().all(|p| *p > 0 && pid_exists(*p)), "all four run: {pids:?}");
    // A Python process ignores SIGTERM only once its start-up has run `signal.signal(SIGTERM, SIG_IGN)`.
    scene.expect(STEP, "all four ignore SIGTERM", || pids.iter().all(|p| ignores(*p, libc::SIGTERM)));
    scene.touch("simulation.cancel");
    expect_exit(&scene, &mut sim, 0, STEP);
    expect_exit(&scene, &mut agent, 0, STEP);
    scene.expect(STEP, "CARLA, the evaluator and both grandchildren are gone (ESRCH)", || {
        pids.iter().all(|p| !pid_exists(*p))
    });
    ensure!(scene, scene.crash_markers().is_empty(), "a cancel writes no crash marker");
    for sup in [&sim, &agent] {
        let out = scene.output(sup);
        ensure!(scene, out.contains("grace period: SIGKILL"), "{} SIGKILLed the group", sup.name);
        ensure!(scene, !out.contains("still alive after SIGKILL"), "{}: the SIGKILLed group is gone", sup.name);
    }
}

// ------------------------------------------------------------------------------------------------ 7. zombies

#[test]
fn orphans_are_reaped_by_the_supervisor() {
    let mut scene = Scene::new("zombies");
    scene.pathenv("ORPHANS", "orphans").env("FAKE_CARLA_BIN", fixture("fake-carla").to_string_lossy());
    // Double fork: each subshell starts `sleep` and exits at once, so `sleep` is orphaned to the nearest subreaper.
    let script = r#"for i in 1 2 3; do ( sleep 3 & echo $! >> "$ORPHANS" ); done; exec "$FAKE_CARLA_BIN" "$@""#;
    let cmd: Vec<OsString> = vec!["bash".into(), "-c".into(), script.into(), "carla-wrapper".into()];
    let mut sim = scene.sim().command(cmd).start();
    let sup = sim.pid();
    let orphans = || -> Vec<i32> {
        fs::read_to_string(scene.path("orphans"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    scene.expect(STEP, "three orphans started", || orphans().len() == 3);
    let seen: Vec<(i32, Option<(char, i32)>)> = orphans().into_iter().map(|p| (p, proc_state(p))).collect();
    ensure!(
        scene,
        seen.iter().any(|(_, s)| s.is_some()) && seen.iter().all(|(_, s)| s.is_none_or(|(_, pp)| pp == sup)),
        "the orphans are re-parented to the supervisor ({sup}): {seen:?}"
    );
    scene.expect(STEP, "the orphans exited and were reaped: no zombie under the supervisor", || {
        orphans().iter().all(|p| !pid_exists(*p)) && zombies_of(sup).is_empty()
    });
    ensure!(scene, sim.running(), "the simulator still runs");
    scene.touch("simulation.cancel");
    expect_exit(&scene, &mut sim, 0, STEP);
}

// ------------------------------------------------------------------------------------------------ 8-10. resume

#[test]
fn resume_after_a_crash_picks_up_where_it_left() {
    let mut scene = Scene::new("resume");
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "0.5");
    let (mut sim, mut agent) = scene.pair();
    wait_records(&scene, 2);
    kill_carla(&scene);
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.crash_markers() == ["agent-1.crash0", "simulator-1.crash0"], "one crash");
    let runs = prepared(&scene);
    ensure!(scene, runs.len() == 2, "two attempts ran routes: {runs:?}");
    let k = *runs[0].last().unwrap_or(&0);
    ensure!(scene, k >= 2, "the crash came after two routes were recorded: {runs:?}");
    ensure!(scene, runs[0] == (0..=k).collect::<Vec<_>>(), "attempt 0 ran 0..={k}: {runs:?}");
    ensure!(scene, runs[1] == (k..5).collect::<Vec<_>>(), "attempt 1 resumed at the crashed route {k}: {runs:?}");
    let evals = scene.eval_starts();
    ensure!(scene, evals.len() == 2 && evals[1].resume && evals[1].first_route == Some(k), "resumed at {k}");
    assert_complete(&scene, 5);
}

#[test]
fn corrupt_checkpoint_is_replaced_by_the_last_good_copy() {
    let mut scene = Scene::new("corrupt");
    scene
        .env("FAKE_EVAL_TRUNCATE_AT_ROUTE", "2")
        .pathenv("FAKE_EVAL_FAULT_ONCE", "eval-fault-once")
        .env("FAKE_EVAL_ROUTE_SECONDS", "0.8");
    let (mut sim, mut agent) = scene.pair();
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.has("agent-1.crash0"), "the truncating evaluator's attempt is a crash");
    let agent_dir = scene.dir.join("agent");
    let names: Vec<String> = fs::read_dir(&agent_dir)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    ensure!(
        scene,
        names.iter().any(|n| n.starts_with("agent_results.json.corrupt-")),
        "the corrupt file is moved aside: {names:?}"
    );
    ensure!(scene, names.iter().any(|n| n == ".agent_results.json.last-good"), "a last good copy is kept: {names:?}");
    let evals = scene.eval_starts();
    ensure!(scene, evals.len() == 2 && evals[1].resume, "the evaluator resumed from the restored copy");
    ensure!(scene, evals[1].first_route.is_some_and(|r| r > 0), "it did not start over from route 0: {:?}", evals[1]);
    let log = fs::read_to_string(scene.agent_log()).unwrap_or_default();
    ensure!(
        scene,
        log.contains("restored the last good copy") || log.contains("RestoredLastGood"),
        "the agent logs the restore"
    );
    assert_complete(&scene, 5);
}

#[test]
fn progress_is_repaired_so_no_scored_route_runs_twice() {
    let mut scene = Scene::new("norecord");
    scene.env("FAKE_EVAL_CRASH_NO_RECORD", "1").env("FAKE_EVAL_ROUTE_SECONDS", "0.6");
    let (mut sim, mut agent) = scene.pair();
    wait_records(&scene, 2);
    kill_carla(&scene);
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    let runs = prepared(&scene);
    ensure!(scene, runs.len() == 2, "two attempts ran routes: {runs:?}");
    let k = *runs[0].last().unwrap_or(&0);
    ensure!(scene, k >= 2, "the crash came after two routes were recorded");
    let evals = scene.eval_starts();
    ensure!(
        scene,
        evals.len() == 2 && evals[1].first_route == Some(k),
        "the evaluator resumes at the crashed route {k} (not at {}, already scored)",
        k - 1
    );
    for r in 0..k {
        let n = runs.iter().flatten().filter(|x| **x == r).count();
        ensure!(scene, n == 1, "scored route {r} ran {n} times: {runs:?}");
    }
    assert_complete(&scene, 5);
}

// ------------------------------------------------------------------------------------------------ 11-14. outcomes

#[test]
fn rejected_ends_the_worker_for_good() {
    let mut scene = Scene::new("rejected");
    scene.env("FAKE_EVAL_REJECTED", "1");
    let (mut sim, mut agent) = scene.pair();
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.has("agent-1.failed"), "agent-1.failed is written");
    ensure!(scene, scene.crash_markers().is_empty(), "a rejection is no crash: no retry");
    ensure!(scene, scene.eval_starts().len() == 1, "the evaluator ran once");
    ensure!(scene, scene.carla_starts().len() == 1, "CARLA started once");
    ensure!(scene, !pid_exists(scene.carla_starts()[0]), "the simulator stopped CARLA");
}

#[test]
fn cancel_stops_both_without_a_crash_marker() {
    let mut scene = Scene::new("cancel");
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "1");
    let (mut sim, mut agent) = scene.pair();
    wait_records(&scene, 1);
    let (carla, eval) = (scene.carla_starts()[0], scene.eval_starts()[0].pid);
    scene.touch("simulation.cancel");
    expect_exit(&scene, &mut sim, 0, STEP);
    expect_exit(&scene, &mut agent, 0, STEP);
    ensure!(scene, scene.crash_markers().is_empty(), "a cancel writes no crash marker");
    ensure!(
        scene,
        !scene.has("agent-1.done") && !scene.has("agent-1.failed") && !scene.has("simulator-1.failed"),
        "a cancel is neither done nor failed"
    );
    ensure!(scene, !pid_exists(carla) && !pid_exists(eval), "CARLA and the evaluator are stopped");
}

#[test]
fn a_cancel_gives_children_that_ignore_sigterm_a_short_grace() {
    // GRACE is long (as in the cluster); a cancelled submission's children still go within CANCEL_GRACE (1 s), so
    // the pod is down about a second after logcopy's cancel marker.
    let mut scene = Scene::new("cancel-grace");
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "1").env("FAKE_CARLA_IGNORE_TERM", "1").env("FAKE_EVAL_IGNORE_TERM", "1");
    scene.env("GRACE", "60");
    let (mut sim, mut agent) = scene.pair();
    wait_records(&scene, 1);
    let (carla, eval) = (scene.carla_starts()[0], scene.eval_starts()[0].pid);
    scene.touch("simulation.cancel");
    // Bounded well below GRACE: a supervisor that waited out the 60 s grace fails here.
    expect_exit(&scene, &mut sim, 0, Duration::from_secs(20));
    expect_exit(&scene, &mut agent, 0, Duration::from_secs(20));
    ensure!(scene, !pid_exists(carla) && !pid_exists(eval), "CARLA and the evaluator are killed");
}

#[test]
fn a_silent_evaluator_is_a_hang_and_the_pair_restarts_in_place() {
    let mut scene = Scene::new("hang");
    scene.env("FAKE_EVAL_HANG_AT_ROUTE", "1").pathenv("FAKE_EVAL_FAULT_ONCE", "eval-fault-once").env("MAX_IDLE", "3");
    let (mut sim, mut agent) = scene.pair();
    scene.expect_marker("agent-1.crash0", RUN);
    ensure!(scene, !scene.has("agent-1.done"), "a hang is not done");
    scene.expect_marker("simulator-1.crash0", STEP);
    scene.expect_marker("simulator-1.start1", STEP);
    ensure!(scene, sim.running() && agent.running(), "restart in place");
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.output(&agent).contains("printed nothing"), "the agent names the hang");
    ensure!(scene, scene.crash_markers() == ["agent-1.crash0", "simulator-1.crash0"], "one crash");
    let evals = scene.eval_starts();
    ensure!(scene, evals.len() == 2 && evals[1].resume, "the evaluator resumed");
    assert_complete(&scene, 5);
}

fn results_check_is_a_crash(knob: &str, reason: &str) {
    let mut scene = Scene::new(&knob.to_lowercase());
    scene.env(knob, "1").pathenv("FAKE_EVAL_FAULT_ONCE", "eval-fault-once");
    let (mut sim, mut agent) = scene.pair();
    scene.expect_marker("agent-1.crash0", RUN);
    ensure!(scene, !scene.has("agent-1.done"), "{knob}: the first attempt is a crash, not done");
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.output(&agent).contains(reason), "the agent says: {reason}");
    ensure!(scene, scene.eval_starts().len() == 2, "the evaluator ran again");
    ensure!(scene, scene.has("agent-1.done") && scene.has("simulator-1.done"), "both done after the retry");
    assert_complete(&scene, 5);
}

#[test]
fn missing_results_after_exit_0_is_a_crash() {
    results_check_is_a_crash("FAKE_EVAL_NO_RESULTS", "without a results file");
}

#[test]
fn empty_global_record_after_exit_0_is_a_crash() {
    results_check_is_a_crash("FAKE_EVAL_EMPTY_GLOBAL", "empty global_record");
}

// ------------------------------------------------------------------------------------------------ 15. signals

#[test]
fn sigterm_is_forwarded_and_the_exit_status_is_carlas() {
    let scene = Scene::new("sigterm");
    let mut sim = scene.sim().start();
    scene.expect_marker("simulator-1.start0", STEP);
    let carla = scene.carla_starts()[0];
    sim.signal(libc::SIGTERM);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, !pid_exists(carla), "CARLA is gone");
    ensure!(scene, scene.output(&sim).contains("carla: SIGTERM, exiting"), "CARLA got the SIGTERM");
    ensure!(scene, scene.crash_markers().is_empty(), "a SIGTERM is no crash");
}

#[test]
fn sigterm_ignored_by_carla_ends_in_sigkill_and_137() {
    let mut scene = Scene::new("sigterm137");
    scene.env("FAKE_CARLA_IGNORE_TERM", "1");
    let mut sim = scene.sim().start();
    scene.expect_marker("simulator-1.start0", STEP);
    let carla = scene.carla_starts()[0];
    sim.signal(libc::SIGTERM);
    expect_exit(&scene, &mut sim, 137, STEP);
    ensure!(scene, !pid_exists(carla), "CARLA is gone");
}

#[test]
fn sigusr1_is_forwarded_without_stopping() {
    let mut scene = Scene::new("sigusr1");
    // fake-carla has no SIGUSR1 knob (Python's default action would kill it): a wrapper installs a logging
    // handler and runs fake-carla in the same process.
    let wrapper = scene.path("usr1-carla.py");
    fs::write(
        &wrapper,
        "import os, runpy, signal, sys\n\
         def on_usr1(signum, frame):\n\
         \x20   fd = os.open(os.environ['USR1_LOG'], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)\n\
         \x20   os.write(fd, ('SIGUSR1 pid=%d\\n' % os.getpid()).encode())\n\
         \x20   os.close(fd)\n\
         signal.signal(signal.SIGUSR1, on_usr1)\n\
         sys.argv = sys.argv[1:]\n\
         runpy.run_path(sys.argv[0], run_name='__main__')\n",
    )
    .expect("write the wrapper");
    scene.pathenv("USR1_LOG", "usr1.log");
    let cmd: Vec<OsString> = vec!["python3".into(), wrapper.into(), fixture("fake-carla").into()];
    let mut sim = scene.sim().command(cmd).start();
    scene.expect_marker("simulator-1.start0", STEP);
    let carla = scene.carla_starts()[0];
    sim.signal(libc::SIGUSR1);
    let usr1 = || fs::read_to_string(scene.path("usr1.log")).unwrap_or_default();
    scene.expect(STEP, "CARLA received SIGUSR1", || usr1().contains(&format!("SIGUSR1 pid={carla}")));
    std::thread::sleep(Duration::from_secs(1));
    ensure!(scene, sim.running() && pid_exists(carla), "SIGUSR1 stops neither the supervisor nor CARLA");
    ensure!(scene, scene.carla_starts().len() == 1 && scene.crash_markers().is_empty(), "no restart, no crash");
    sim.signal(libc::SIGTERM);
    expect_exit(&scene, &mut sim, 0, STEP);
}

#[test]
fn sigterm_while_waiting_for_the_peer_after_a_crash_ends_the_simulator() {
    let mut scene = Scene::new("sigtermwait");
    scene.env("FAKE_CARLA_CRASH_AFTER", "0.5").env("PEER_WAIT", "30");
    let mut sim = scene.sim().start();
    // No agent: after the crash the simulator waits up to PEER_WAIT for the agent's crash marker.
    scene.expect_marker("simulator-1.crash0", STEP);
    sim.signal(libc::SIGTERM);
    let code = sim.wait_exit(Duration::from_secs(10));
    ensure!(scene, code.is_some(), "a SIGTERM during the wait for the peer must end the supervisor (got {code:?})");
    ensure!(
        scene,
        scene.carla_starts().len() == 1 && !scene.has("simulator-1.start1"),
        "no new CARLA after the SIGTERM"
    );
}

#[test]
fn sigterm_while_the_agent_waits_for_the_simulator() {
    let mut scene = Scene::new("sigtermagent");
    scene.env("PEER_WAIT", "30");
    let mut agent = scene.agent().start();
    let pid = agent.pid();
    // Its signal thread runs: the handled signals are blocked and it waits for simulator-1.start0.
    scene.expect(STEP, "the agent's signal thread", || {
        fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0) >= 2
    });
    agent.signal(libc::SIGTERM);
    expect_exit(&scene, &mut agent, 143, STEP);
    ensure!(scene, scene.eval_starts().is_empty() && scene.crash_markers().is_empty(), "no evaluator, no crash");
}

// ------------------------------------------------------------------------------------------------ 16. arguments

#[test]
fn the_evaluators_arguments_and_environment() {
    let mut scene = Scene::new("args");
    let routes = scene.path("routes-custom.xml").to_string_lossy().into_owned();
    scene
        .env("ROUTES", &routes)
        .env("ROUTES_SUBSET", "0-1")
        .env("REPETITIONS", "2")
        .env("CHALLENGE_TRACK_CODENAME", "MAP")
        .env("FAKE_EVAL_ROUTE_SECONDS", "0.6")
        .pathenv("FAKE_EVAL_ENV_DUMP", "eval-env.json");
    let dump = || -> Option<Value> { serde_json::from_slice(&fs::read(scene.path("eval-env.json")).ok()?).ok() };
    let (mut sim, mut agent) = scene.pair();
    scene.expect(RUN, "the first evaluator's dump", || dump().is_some());
    let d1 = dump().unwrap_or(Value::Null);
    wait_records(&scene, 1);
    kill_carla(&scene);
    scene.expect(RUN, "the second evaluator's dump", || {
        let evals = scene.eval_starts();
        evals.len() == 2 && dump().is_some_and(|d| d["pid"].as_i64() == Some(i64::from(evals[1].pid)))
    });
    let d2 = dump().unwrap_or(Value::Null);
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);

    let argv = |d: &Value| -> Vec<String> {
        d["argv"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let (a1, a2) = (argv(&d1), argv(&d2));
    let p = scene.port;
    for a in [&a1, &a2] {
        ensure!(scene, a.contains(&format!("--port={p}")), "--port={p}: {a:?}");
        ensure!(scene, a.contains(&format!("--traffic-manager-port={}", p + 10)), "--traffic-manager-port: {a:?}");
        ensure!(scene, !a.iter().any(|x| x.starts_with("--resume=0") || x == "--resume"), "never --resume=0: {a:?}");
    }
    ensure!(scene, !a1.iter().any(|x| x.starts_with("--resume")), "no --resume on a fresh start: {a1:?}");
    ensure!(
        scene,
        a2.iter().filter(|x| x.starts_with("--resume")).collect::<Vec<_>>() == ["--resume=1"],
        "--resume=1 after a crash: {a2:?}"
    );
    for (prefix, want) in
        [("--routes=", routes.as_str()), ("--routes-subset=", "0-1"), ("--repetitions=", "2"), ("--track=", "MAP")]
    {
        let pick = |a: &[String]| -> Vec<String> { a.iter().filter(|x| x.starts_with(prefix)).cloned().collect() };
        let want = vec![format!("{prefix}{want}")];
        ensure!(scene, pick(&a1) == want && pick(&a2) == want, "{prefix} identical across attempts: {a1:?} {a2:?}");
    }
    let env = &d2["env"];
    let pythonpath = env["PYTHONPATH"].as_str().unwrap_or("");
    for k in ["CARLA_ROOT", "SCENARIO_RUNNER_ROOT", "LEADERBOARD_ROOT"] {
        let v = env[k].as_str().unwrap_or("");
        ensure!(scene, !v.is_empty(), "{k} is set");
        if k != "CARLA_ROOT" {
            ensure!(scene, pythonpath.split(':').any(|x| x == v), "PYTHONPATH holds {k} ({v}): {pythonpath}");
        }
    }
    for d in [&d1, &d2] {
        ensure!(scene, d["pgid"] == d["pid"], "the evaluator leads its own process group: {} {}", d["pid"], d["pgid"]);
    }
    // Two routes, two repetitions, each once.
    let v = scene.checkpoint().unwrap_or(Value::Null);
    let ids = route_ids(&v);
    let want: Vec<&str> =
        vec!["RouteScenario_0_rep0", "RouteScenario_0_rep1", "RouteScenario_1_rep0", "RouteScenario_1_rep1"];
    ensure!(scene, ids == want, "each route and repetition once: {ids:?}");
    ensure!(scene, progress(&v) == Some((4, 4)), "progress [4, 4]");
}

#[test]
fn run_as_runs_the_evaluator_as_an_unprivileged_user() {
    let mut scene = Scene::new("run-as");
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "0.6");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Not root: the supervisor cannot switch users and says so (exit 2), naming the setting.
        let mut agent = scene.agent().arg("--run-as").arg("65534").start();
        expect_exit(&scene, &mut agent, 2, STEP);
        ensure!(scene, scene.output(&agent).contains("--run-as"), "the error names --run-as");
        return;
    }
    // The evaluator's folders are open to it, as `logcopy restore` makes agent/agentN (0777); the status folder
    // is not (2775 with --private-status).
    use std::os::unix::fs::PermissionsExt;
    for d in [scene.dir.clone(), scene.path("agent")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    fs::set_permissions(&scene.status, fs::Permissions::from_mode(0o2775)).unwrap();
    let mut sim = scene.sim().start();
    let mut agent = scene.agent().arg("--run-as").arg("65534:65533").start();
    wait_records(&scene, 1);
    let eval = scene.eval_starts()[0].pid;
    let status = fs::read_to_string(format!("/proc/{eval}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).map(|l| l[name.len()..].split_whitespace().collect::<Vec<_>>())
    };
    ensure!(scene, field("Uid:") == Some(vec!["65534"; 4]), "the evaluator's uids: {:?}", field("Uid:"));
    ensure!(scene, field("Gid:") == Some(vec!["65533"; 4]), "the evaluator's gids: {:?}", field("Gid:"));
    ensure!(scene, field("Groups:") == Some(vec![]), "no supplementary groups: {:?}", field("Groups:"));
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.has("agent-1.done"), "the supervisor (root) still writes the markers");
    assert_complete(&scene, 5);
}

/// A route that makes CARLA die every time it runs (fake-evaluator asks fake-carla to crash halfway through it).
fn poison_scene(name: &str, recorded: bool) -> Scene {
    let mut scene = Scene::new(name);
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "0.4").env("FAKE_EVAL_POISON_ROUTE", "2");
    if !recorded {
        scene.env("FAKE_EVAL_CRASH_NO_RECORD", "1");
    }
    scene
}

fn route_retries_move_past_a_poison_route(recorded: bool) {
    let scene = poison_scene(if recorded { "poison-recorded" } else { "poison-unrecorded" }, recorded);
    let mut sim = scene.sim().start();
    let mut agent = scene.agent().arg("--route-retries").arg("2").start();
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.has("agent-1.done") && scene.has("simulator-1.done"), "the worker finished");
    ensure!(
        scene,
        scene.crash_markers().len() == 4,
        "two crashes on the poison route, each side: {:?}",
        scene.crash_markers()
    );
    let evals = scene.eval_starts();
    ensure!(scene, evals.len() == 3, "the evaluator ran three times: {}", evals.len());
    let cp = scene.checkpoint().expect("a checkpoint");
    let records = cp["_checkpoint"]["records"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = records.iter().filter_map(|r| r["route_id"].as_str()).collect();
    ensure!(
        scene,
        ids == [
            "RouteScenario_0_rep0",
            "RouteScenario_1_rep0",
            "RouteScenario_2_rep0",
            "RouteScenario_3_rep0",
            "RouteScenario_4_rep0"
        ],
        "every route once, in order: {ids:?}"
    );
    ensure!(scene, records[2]["status"] == "Failed - Simulation crashed", "the poison route's record: {}", records[2]);
    if !recorded {
        // What the evaluator writes for a route whose simulation crashed before it could score.
        ensure!(
            scene,
            records[2]["scores"]["score_route"] == 0.0 && records[2]["meta"]["route_length"] == 0,
            "{}",
            records[2]
        );
        ensure!(scene, records[2]["num_infractions"] == 0 && records[2]["index"] == 2, "{}", records[2]);
    }
    ensure!(
        scene,
        cp["entry_status"] == "Crashed" && cp["eligible"] == false,
        "a crash record makes the entry Crashed"
    );
    ensure!(
        scene,
        cp["_checkpoint"]["progress"] == serde_json::json!([5, 5]),
        "progress {}",
        cp["_checkpoint"]["progress"]
    );
    let kept = scene.path("agent/agent_results.json.before-skip-RouteScenario_2_rep0");
    ensure!(scene, kept.is_file(), "the checkpoint before the skip is kept: {}", kept.display());
    ensure!(
        scene,
        scene.output(&agent).contains("route retries: RouteScenario_2_rep0 crashed the simulator 2 times"),
        "logged"
    );
}

#[test]
fn route_retries_move_past_a_route_whose_crash_the_evaluator_recorded() {
    route_retries_move_past_a_poison_route(true);
}

#[test]
fn route_retries_move_past_a_route_whose_crash_the_evaluator_did_not_record() {
    route_retries_move_past_a_poison_route(false);
}

#[test]
fn without_route_retries_a_poison_route_spends_the_attempt_budget() {
    let scene = poison_scene("poison-default", true);
    let mut sim = scene.sim().arg("--max-attempts").arg("3").start();
    let mut agent = scene.agent().arg("--max-attempts").arg("3").start();
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    ensure!(scene, scene.has("agent-1.failed") || scene.has("simulator-1.failed"), "the worker failed for good");
    ensure!(scene, scene.records() <= 3, "it never got past the poison route: {} records", scene.records());
}

#[test]
fn a_forged_marker_of_this_side_is_logged_as_such() {
    // The participant's code (in the agent container) writes a marker of the agent side that its supervisor did
    // not write; the supervisor says so (and goes on: a start marker changes nothing).
    let mut scene = Scene::new("forged");
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "0.6");
    let (mut sim, mut agent) = scene.pair();
    wait_records(&scene, 1);
    scene.touch("agent-1.start7");
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    let out = scene.output(&agent);
    ensure!(
        scene,
        out.contains("agent-1.start7 appeared in the status folder, but this supervisor did not write it"),
        "not logged"
    );
    ensure!(scene, !out.contains("agent-1.start0 appeared"), "its own markers are not reported");
    assert_complete(&scene, 5);
}

#[test]
fn a_forged_attempt_number_beyond_the_budget_cannot_make_a_side_spin() {
    // The participant's code plants `simulator-1.crash4294967295` (with `simulator-1.start0`): the attempt rule once
    // planned attempt u32::MAX (saturated), on which the agent crashed for its peer's crash forever, at 100% CPU,
    // writing gigabytes of log. Beyond the budget's reach, the marker is logged once as forged and ignored.
    let mut scene = Scene::new("forged-attempt");
    scene.env("FAKE_EVAL_ROUTE_SECONDS", "0.3");
    scene.touch("simulator-1.start0");
    scene.touch("simulator-1.crash4294967295");
    let (mut sim, mut agent) = scene.pair();
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    let out = scene.output(&agent);
    ensure!(scene, out.len() < 1 << 20, "the agent's output is {} bytes", out.len());
    let told = out.matches("simulator-1.crash4294967295: an attempt number").count();
    ensure!(scene, told == 1, "the forged marker is logged once, not {told} times");
    assert_complete(&scene, 5);
}

/// A run under `--run-as` in which the evaluator damages its checkpoint once (`fault`, a FAKE_EVAL_*_AT_ROUTE knob,
/// at route 2) and dies; the (root) supervisor restores the last good copy (its log says `restored`) before the
/// resume. The worker must end done with the checkpoint still the evaluator's.
fn run_as_repair(name: &str, fault: &str, restored: &str) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // Only root can run the evaluator as another user; run_as_runs_* covers the refusal.
    }
    let mut scene = Scene::new(name);
    scene.env(fault, "2").pathenv("FAKE_EVAL_FAULT_ONCE", "eval-fault-once").env("FAKE_EVAL_ROUTE_SECONDS", "0.6");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for d in [scene.dir.clone(), scene.path("agent")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    fs::set_permissions(&scene.status, fs::Permissions::from_mode(0o2775)).unwrap();
    let mut sim = scene.sim().start();
    let mut agent = scene.agent().arg("--run-as").arg("65534:65533").start();
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    let out = scene.output(&agent);
    ensure!(scene, out.contains(restored), "the checkpoint was restored ({restored:?})");
    ensure!(scene, scene.has("agent-1.done") && !scene.has("agent-1.failed"), "the worker ends done");
    let meta = fs::metadata(scene.path("agent/agent_results.json")).unwrap();
    ensure!(scene, (meta.uid(), meta.gid()) == (65534, 65533), "owner {}:{}", meta.uid(), meta.gid());
    assert_complete(&scene, 5);
}

#[test]
fn a_checkpoint_restored_after_it_went_missing_under_run_as_is_the_evaluators() {
    // The evaluator removes its checkpoint: no file is there to keep the owner of, and a root-owned restored file
    // made the evaluator's next write fail with PermissionError until the worker failed.
    run_as_repair(
        "run-as-missing",
        "FAKE_EVAL_DELETE_AT_ROUTE",
        "the checkpoint was missing: restored the last good copy",
    );
}

#[test]
fn a_repair_under_run_as_leaves_the_checkpoint_the_evaluators() {
    // The evaluator truncates its checkpoint (a crash mid-write). The restored file must keep the evaluator's owner
    // and mode: root-owned 0644 made the evaluator fail with PermissionError on every later attempt, and the worker
    // failed where the same run without --run-as ends done (issue 19, break 2).
    run_as_repair("run-as-repair", "FAKE_EVAL_TRUNCATE_AT_ROUTE", "restored the last good copy");
}

// ------------------------------------------------------------------------------------------- the Indexed Job's split

#[test]
fn without_routes_subset_the_agent_computes_its_share_of_route_count() {
    // An Indexed Job's pods share one template: no per-worker ROUTES_SUBSET, only ROUTE_COUNT and the worker count.
    let mut scene = Scene::new("split");
    scene
        .env("ROUTES_SUBSET", "")
        .env("ROUTE_COUNT", "29")
        .env("SUBMISSION_WORKERS", "7")
        .env("WORKER_ID", "7")
        .env("FAKE_EVAL_ROUTE_SECONDS", "0.05")
        .pathenv("FAKE_EVAL_ENV_DUMP", "eval-env.json");
    let (mut sim, mut agent) = scene.pair();
    expect_exit(&scene, &mut agent, 0, RUN);
    expect_exit(&scene, &mut sim, 0, STEP);
    let dump: Value =
        serde_json::from_slice(&fs::read(scene.path("eval-env.json")).unwrap_or_default()).unwrap_or(Value::Null);
    let argv: Vec<&str> =
        dump["argv"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    // Worker 7 of 7 over 29 routes: ceil(6 * 29/7) = 25 .. 28 (upstream's floats say 29, past the routes file).
    ensure!(scene, argv.contains(&"--routes-subset=25-28"), "worker 7's share of 29 routes over 7: {argv:?}");

    let mut scene = Scene::new("split-bad");
    scene.env("ROUTES_SUBSET", "").env("ROUTE_COUNT", "29").env("SUBMISSION_WORKERS", "7").env("WORKER_ID", "8");
    let mut agent = scene.agent().start();
    expect_exit(&scene, &mut agent, 2, STEP);
    ensure!(scene, scene.output(&agent).contains("SUBMISSION_WORKERS"), "the error names the setting");
}

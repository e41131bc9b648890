//! The agent side: the leaderboard evaluator with run_leaderboard.sh's arguments and environment, started once the
//! simulator of the same attempt is ready, its checkpoint guarded, its hangs detected.
//!
//! Upstream sleeps 60 s, passes `--resume=$RESUME` (empty on a fresh run, and `--resume=0` would also mean true:
//! the flag is `type=bool`), polls every 5 s, and `pkill -9`s anything named python, java or ros. Here the
//! evaluator starts as soon as `simulator-ID.start<N>` appears; `--resume=1` is passed when an earlier attempt
//! crashed or a results file with data exists, and nothing otherwise; and the checkpoint is guarded: a copy of
//! each good version is kept, and before a resume a corrupt file is replaced by it and the progress repaired
//! ([`crate::checkpoint`]). ROUTES, ROUTES_SUBSET and REPETITIONS are never changed between attempts.

use super::{Engine, FINISHED, Outcome, RoleSpec, WaitEnd};
pub use crate::checkpoint::RouteRetries;
use crate::checkpoint::{self, CheckpointFile, Guard, Observed};
use crate::child::{Child, LogFile, RunAs, Spec};
use crate::config::EvaluatorEnv;
use crate::reaper::Exit;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use volume::markers::{Attempt, Marker, Role, StatusSet, WorkerId};
use volume::results::RouteId;

/// Sources the participant's environment as upstream does, then runs the evaluator with the given arguments.
const DEFAULT_WRAPPER: &str = "source \"$HOME/.bashrc\" >/dev/null 2>&1; \
    if [ -f \"$HOME/agent_sources.sh\" ]; then source \"$HOME/agent_sources.sh\"; fi; exec \"$@\"";

pub struct Agent {
    pub command: Vec<OsString>,
    /// The evaluator's results file, beneath its folder opened once.
    pub checkpoint: CheckpointFile,
    /// `--run-as`: the evaluator's user and group.
    pub run_as: Option<RunAs>,
    /// `--route-retries`: simulation crashes per route, and the limit.
    pub route_retries: Option<RouteRetries>,
    /// run_leaderboard.sh's variables.
    pub env: EvaluatorEnv,
    /// `--idle-timeout`: the evaluator counts as hung after printing nothing for this long.
    pub idle_timeout: Duration,
    guard: Guard,
    next_observe: Instant,
    /// The checkpoint's (length, mtime) at the last look: it is parsed only when that changed.
    seen: Option<(u64, std::time::SystemTime)>,
    crashed_before: bool,
}

/// The route of the evaluator's last `========= Preparing RouteScenario_3 (repetition 0) =========` line in the log
/// (its last 256 KiB), as a route id: `RouteScenario_3_rep0`.
fn last_route_prepared(log: &LogFile) -> Option<String> {
    let buf = log.tail(256 * 1024).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.lines().rev().find_map(|line| {
        let rest = &line[line.find("Preparing ")? + "Preparing ".len()..];
        let (name, rest) = rest.split_once(" (repetition ")?;
        let rep: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        RouteId::prepared(name.trim(), rep.parse().ok()?).map(|id| id.to_string())
    })
}

impl Agent {
    pub fn new(command: Vec<OsString>, checkpoint: CheckpointFile) -> Self {
        let guard = Guard::new(checkpoint.clone());
        Agent {
            command,
            checkpoint,
            run_as: None,
            route_retries: None,
            env: EvaluatorEnv::default(),
            idle_timeout: Duration::from_secs(800),
            guard,
            next_observe: Instant::now(),
            seen: None,
            crashed_before: false,
        }
    }

    /// Keeps the last good copy current: a cheap stat every tick, a parse only when the file changed.
    fn observe(&mut self) {
        let stat = self.checkpoint.root().stat(self.checkpoint.name()).ok().flatten();
        let stat = stat.and_then(|m| Some((m.len(), m.modified().ok()?)));
        if stat.is_some() && stat == self.seen {
            return;
        }
        if matches!(self.guard.observe(), Ok(Observed::CopiedLastGood | Observed::Unchanged)) {
            // Only a version that parsed is remembered: a half-written one is looked at again next tick.
            self.seen = stat;
        }
    }

    /// `--route-retries`: after attempt `prev` crashed, counts a simulation crash against the route it was on, and
    /// moves past the route once it has crashed the simulator `limit` times.
    fn count_route_crash(&mut self, eng: &mut Engine, prev: Attempt) {
        let Some(rr) = self.route_retries.as_mut() else { return };
        let Ok(Some(value)) = checkpoint::read_results(&self.checkpoint) else { return };
        let running = eng.log.as_ref().and_then(last_route_prepared);
        let Some((route, recorded)) = checkpoint::crashed_route(&value, running.as_deref()) else {
            eng.note("route retries: cannot tell which route the crashed attempt was on; not counted");
            return;
        };
        // Recorded by the evaluator as a simulation crash, or the simulator's crash marker came first (the agent's
        // own crash, e.g. a hang, makes the simulator write its marker after the agent's).
        let sim = eng.marker_time(Marker::Crash { role: Role::Simulator, worker: eng.worker, attempt: prev });
        let agent = eng.marker_time(Marker::Crash { role: Role::Agent, worker: eng.worker, attempt: prev });
        let simulation =
            recorded || matches!((sim, agent), (Some(s), Some(a)) if s <= a) || (sim.is_some() && agent.is_none());
        if !simulation {
            return;
        }
        let n = rr.count(&route);
        if n < rr.limit {
            eng.note(&format!("route retries: {route} crashed the simulator ({n} of {})", rr.limit));
            return;
        }
        match checkpoint::skip_route(&self.checkpoint, &route) {
            Ok(Some(skip)) => {
                rr.skip(&route);
                eng.note(&format!("route retries: {route} crashed the simulator {n} times: {skip}"));
            }
            Ok(None) => eng.note(&format!(
                "route retries: {route} crashed the simulator {n} times, but the checkpoint is not in a shape that \
                 can be moved past it safely; left as it is"
            )),
            Err(e) => eng.warn(&format!("route retries: cannot move past {route}: {e}")),
        }
    }

    /// The evaluator's arguments, from run_leaderboard.sh's environment and defaults.
    pub fn evaluator_args(&self, resume: bool) -> Vec<OsString> {
        let e = &self.env;
        let port = e.carla_port();
        let mut args = vec![
            format!("--port={port}"),
            format!("--traffic-manager-port={}", port + 10),
            format!("--agent={}", e.team_agent()),
            format!("--agent-config={}", e.team_config()),
            format!("--track={}", e.track()),
            format!("--routes={}", e.routes()),
            format!("--routes-subset={}", e.routes_subset()),
            format!("--repetitions={}", e.repetitions()),
        ];
        // `type=bool`: any value, `0` included, means true. Pass `--resume=1` or nothing.
        if resume {
            args.push("--resume=1".into());
        }
        args.extend([
            format!("--checkpoint={}", self.checkpoint.path().display()),
            format!("--record={}", e.record_path()),
            format!("--debug-checkpoint={}", e.debug_checkpoint()),
            format!("--debug={}", e.debug_challenge()),
        ]);
        args.into_iter().map(OsString::from).collect()
    }

    /// PYTHONPATH and the roots, as run_leaderboard.sh exports them.
    fn evaluator_env(&self) -> Vec<(OsString, OsString)> {
        let (carla, sr, lb) = (
            self.env.carla_root().to_string(),
            self.env.scenario_runner_root().to_string(),
            self.env.leaderboard_root().to_string(),
        );
        let dist = PathBuf::from(&carla).join("PythonAPI/carla/dist");
        let egg = std::fs::read_dir(&dist)
            .ok()
            .and_then(|d| {
                d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).find(|n| n.contains("py3."))
            })
            .map(|n| dist.join(n).display().to_string());
        let mut path: Vec<String> = egg.into_iter().collect();
        path.extend([sr.clone(), lb.clone()]);
        if let Ok(existing) = std::env::var("PYTHONPATH")
            && !existing.is_empty()
        {
            path.push(existing);
        }
        [("CARLA_ROOT", carla), ("SCENARIO_RUNNER_ROOT", sr), ("LEADERBOARD_ROOT", lb), ("PYTHONPATH", path.join(":"))]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }
}

impl RoleSpec for Agent {
    fn role(&self) -> Role {
        Role::Agent
    }

    fn prepare(&mut self, eng: &mut Engine, attempt: Attempt) -> Result<(), Outcome> {
        let (sim, w, limit) = (Role::Simulator, eng.worker, eng.attempt_limit());
        eng.set_state(volume::status::State::WaitingForPeer, attempt);
        let waited = Instant::now();
        let r = eng.wait_markers(eng.common.peer_wait, |s| {
            s.starts(sim, w).contains(&attempt)
                || s.cancelled(w)
                || s.is_failed(sim, w)
                || s.crashed_since(sim, w, attempt, limit)
        });
        let set = match r {
            Ok(set) => set,
            Err(WaitEnd::Signal(s)) => {
                eng.note(&format!("{s} while waiting for the simulator"));
                return Err(Outcome::Terminated(Exit::Signal(s)));
            }
            Err(WaitEnd::Timeout) => {
                return Err(Outcome::Crash(format!(
                    "the simulator did not start attempt {attempt} within {:?}",
                    eng.common.peer_wait
                )));
            }
        };
        if set.cancelled(w) {
            return Err(Outcome::Cancelled);
        }
        if set.is_failed(sim, w) {
            return Err(Outcome::PeerFailed);
        }
        if !set.starts(sim, w).contains(&attempt) {
            return Err(Outcome::Crash(format!("the simulator crashed before attempt {attempt} started")));
        }
        eng.note(&format!("the simulator is ready (waited {} ms)", waited.elapsed().as_millis()));
        // This side's start marker: without it, a death without a trace could not be told at the next start.
        eng.write(Marker::Start { role: Role::Agent, worker: w, attempt });
        self.crashed_before = !set.crashes(Role::Agent, w).is_empty();
        if self.crashed_before || checkpoint::exists_with_data(&self.checkpoint) {
            let skipped = self.route_retries.as_ref().map(|r| r.skipped()).unwrap_or_default();
            match self.guard.prepare_resume_skipping(&skipped) {
                Ok(repairs) => {
                    for r in repairs {
                        eng.note(&format!("checkpoint repaired before resuming: {r}"));
                    }
                }
                Err(e) => eng.warn(&format!("cannot check the checkpoint before resuming: {e}")),
            }
        }
        if attempt.0 > 0 && self.route_retries.is_some() {
            self.count_route_crash(eng, Attempt(attempt.0 - 1));
        }
        Ok(())
    }

    fn spec(&mut self, _attempt: Attempt) -> Spec {
        let resume = self.crashed_before || checkpoint::exists_with_data(&self.checkpoint) || self.env.resume();
        let args = self.evaluator_args(resume);
        let (program, mut all) = match self.command.split_first() {
            Some((p, rest)) => (p.clone(), rest.to_vec()),
            None => {
                let evaluator = format!("{}/leaderboard/leaderboard_evaluator.py", self.env.leaderboard_root());
                let pre: Vec<OsString> = ["-c", DEFAULT_WRAPPER, "leaderboard", "python3", "-u", &evaluator]
                    .into_iter()
                    .map(OsString::from)
                    .collect();
                (OsString::from("bash"), pre)
            }
        };
        all.extend(args);
        self.next_observe = Instant::now();
        let mut env = self.evaluator_env();
        if self.run_as.is_some() {
            // The evaluator's own home is not root's (unreadable to it): HOME=/tmp unless the pod sets one.
            if std::env::var_os("HOME").is_none_or(|h| h == "/root") {
                env.push(("HOME".into(), "/tmp".into()));
            }
        }
        Spec { program, args: all, env, cwd: None, run_as: self.run_as }
    }

    fn tick(&mut self, _eng: &mut Engine, child: &Child, attempt: Attempt) -> Option<Outcome> {
        let now = Instant::now();
        if now >= self.next_observe {
            self.next_observe = now + Duration::from_millis(50);
            self.observe();
        }
        if child.silent_for() > self.idle_timeout {
            return Some(Outcome::Crash(format!(
                "the evaluator printed nothing for {:?} (hang) in attempt {attempt}",
                self.idle_timeout
            )));
        }
        None
    }

    fn on_exit(&mut self, eng: &mut Engine, exit: Exit) -> Outcome {
        self.observe();
        let summary = checkpoint::summarize(&self.checkpoint).ok().flatten();
        if summary.as_ref().and_then(|s| s.entry_status.as_deref()) == Some("Rejected") {
            return Outcome::Failed(
                "the evaluator rejected the agent's sensors (entry_status Rejected); retrying cannot help".into(),
            );
        }
        // The evaluator records a set-up failure and moves on to the next route; when every record says so, the
        // participant's agent never ran (an import error, a missing model, a set-up past its watchdog).
        let never_set_up = summary.as_ref().filter(|s| s.agent_never_set_up()).map(|s| {
            format!(
                "the agent could not be set up for any of the {} routes recorded (\"Failed - {}\")",
                s.records,
                checkpoint::AGENT_NOT_SET_UP
            )
        });
        if !exit.success() {
            return Outcome::Crash(match never_set_up {
                Some(why) => format!("{why}; the evaluator ended ({exit})"),
                None => format!("the evaluator ended ({exit})"),
            });
        }
        match summary {
            None => Outcome::Crash("the evaluator ended without a results file".into()),
            Some(s) if s.global_record_empty => {
                Outcome::Crash("the evaluator ended with an empty global_record".into())
            }
            Some(_) => match never_set_up {
                // Scored as upstream scores it (each route failed, the run finished); the end is named for what it was.
                Some(why) => {
                    let why = format!("the evaluator finished, but {why}");
                    eng.note(&why);
                    Outcome::Done(why)
                }
                None => {
                    eng.note("the evaluator finished");
                    Outcome::Done(FINISHED.into())
                }
            },
        }
    }

    fn on_peer(&mut self, eng: &mut Engine, set: &StatusSet, attempt: Attempt) -> Option<Outcome> {
        let (sim, w) = (Role::Simulator, eng.worker);
        if set.is_failed(sim, w) {
            return Some(Outcome::PeerFailed);
        }
        if set.crashed_since(sim, w, attempt, eng.attempt_limit()) {
            // The newest complete checkpoint is copied before the stop can land in the middle of a rewrite.
            self.observe();
            return Some(Outcome::Crash(format!("the simulator crashed in attempt {attempt}")));
        }
        None
    }

    fn after_done(&mut self, eng: &mut Engine, attempt: Attempt) {
        // The simulator ends on our done marker: wait (at most --peer-wait) until it has, so that the pod does not
        // see one container end while the other still runs.
        let (peer, worker) = (Role::Simulator, eng.worker);
        let limit = eng.common.peer_wait;
        let _ = eng.wait_markers(limit, |s| {
            s.is_done(peer, worker) || s.is_failed(peer, worker) || s.crashes(peer, worker).contains(&attempt)
        });
    }

    fn end_for_failed_peer(&self, worker: WorkerId) -> Marker {
        Marker::Failed { role: Role::Agent, worker }
    }

    fn routes(&self) -> (Option<String>, Option<u32>) {
        let subset = Some(self.env.routes_subset().to_owned()).filter(|s| !s.is_empty());
        (subset, self.env.repetitions().trim().parse().ok())
    }

    fn current_route(&self, eng: &Engine) -> Option<String> {
        eng.log.as_ref().and_then(last_route_prepared)
    }

    fn idle_timeout(&self) -> Option<Duration> {
        Some(self.idle_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("supervisor-agent-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("agent")).unwrap();
        d
    }

    /// The files the agent keeps beside the checkpoint, and its log, swapped for links to files outside (or to
    /// `/proc`): nothing is read from them, and nothing is written through them.
    #[test]
    fn files_beside_the_checkpoint_linked_outside_are_neither_read_nor_written() {
        let d = scratch("linked");
        let cp = CheckpointFile::open(&d.join("agent").join(volume::layout::RESULTS_FILE)).unwrap();
        let forged = br#"{"counts": {"RouteScenario_1_rep0": 99}, "skipped": ["RouteScenario_1_rep0"]}"#;
        let outside = d.join("outside.json");
        std::fs::write(&outside, forged).unwrap();
        let crashes = volume::layout::route_crashes_path(&cp.path());
        std::os::unix::fs::symlink(&outside, &crashes).unwrap();

        let mut rr = RouteRetries::new(&cp, 3);
        assert!(rr.skipped().is_empty(), "the counts were read through the link");
        assert_eq!(rr.count("RouteScenario_2_rep0"), 1);
        assert_eq!(std::fs::read(&outside).unwrap(), forged, "written through the link");
        assert!(std::fs::symlink_metadata(&crashes).unwrap().is_file(), "the link is replaced by the agent's file");
        assert_eq!(RouteRetries::new(&cp, 3).crashes("RouteScenario_2_rep0"), 1);

        for target in [outside.as_path(), Path::new("/proc/self/environ")] {
            let log = d.join("agent").join(volume::layout::EVALUATOR_LOG);
            let _ = std::fs::remove_file(&log);
            std::os::unix::fs::symlink(target, &log).unwrap();
            let log = LogFile::open(&log).unwrap();
            assert!(log.append().is_err(), "the log was opened through a link to {}", target.display());
            assert!(log.tail(1024).is_err(), "the log was read through a link to {}", target.display());
            assert!(last_route_prepared(&log).is_none());
        }
        assert_eq!(std::fs::read(&outside).unwrap(), forged);
        std::fs::remove_dir_all(&d).unwrap();
    }
}

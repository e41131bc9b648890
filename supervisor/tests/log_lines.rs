//! The supervisor's own lines, from real pair runs: every line on stdout and stderr is one entry, with an RFC 3339
//! UTC timestamp (milliseconds), a level and a message in text mode (`LOG_FORMAT=text`, the default), and one JSON
//! object with ts, level, role, worker and msg in json mode. The children's output is sent to a file of its own
//! here, so that the supervisor's output holds only the supervisor's entries. The attempt banner in the child's
//! log stays readable UTC.

#[macro_use]
mod common;

use common::*;
use serde_json::Value;
use std::ffi::OsString;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

const RUN: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(15);
const LEVELS: [&str; 4] = ["ERROR", "WARN", "INFO", "DEBUG"];

/// The shape of a text, with every digit as `d`.
fn shape(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_digit() { 'd' } else { c }).collect()
}

/// `2026-12-02T05:35:46.123Z`.
fn is_rfc3339_millis(ts: &str) -> bool {
    shape(ts) == "dddd-dd-ddTdd:dd:dd.dddZ"
}

/// (timestamp, level, message) of a text entry: `TS LEVEL supervisor[ ROLE-W]: MSG`, the level right-aligned in
/// five columns as logcopy's.
fn parse_text(line: &str) -> Option<(&str, &str, &str)> {
    let (ts, rest) = line.split_once(' ')?;
    let level_field = rest.get(..5)?;
    let level = level_field.trim_start();
    let msg = rest.get(5..)?.strip_prefix(" supervisor")?;
    let (_, msg) = msg.split_once(": ")?;
    (is_rfc3339_millis(ts) && LEVELS.contains(&level)).then_some((ts, level, msg))
}

/// The fake `name`, its output (stdout and stderr) appended to `out` instead of the supervisor's.
fn quiet(name: &str, out: &std::path::Path) -> Vec<OsString> {
    let script = format!("exec \"$0\" \"$@\" >>'{}' 2>&1", out.display());
    vec!["sh".into(), "-c".into(), script.into(), fixture(name).into()]
}

/// A finished pair with the children's output elsewhere and `env` for both supervisors; the two outputs.
fn pair_run(scene: &mut Scene, env: &[(&str, &str)]) -> (String, String) {
    for (k, v) in env {
        scene.env(k, v);
    }
    let mut sim = scene.sim().command(quiet("fake-carla", &scene.path("carla.out"))).start();
    let mut agent = scene.agent().command(quiet("fake-evaluator", &scene.path("evaluator.out"))).start();
    let code = agent.wait_exit(RUN);
    ensure!(scene, code == Some(0), "the agent should exit 0; got {code:?}");
    let code = sim.wait_exit(STEP);
    ensure!(scene, code == Some(0), "the simulator should exit 0; got {code:?}");
    ensure!(scene, scene.has("agent-1.done") && scene.has("simulator-1.done"), "both sides done");
    (scene.output(&sim), scene.output(&agent))
}

#[test]
fn text_entries_have_a_utc_stamp_a_level_and_a_message() {
    let mut scene = Scene::new("log-text");
    let (sim, agent) = pair_run(&mut scene, &[]);
    for (who, out) in [("simulator-1", &sim), ("agent-1", &agent)] {
        ensure!(scene, !out.trim().is_empty(), "{who} printed entries");
        for line in out.lines() {
            ensure!(scene, parse_text(line).is_some(), "{who}: not a (timestamp, level, message) entry: {line:?}");
            ensure!(scene, line.contains(&format!(" supervisor {who}: ")), "{who}: names who speaks: {line:?}");
        }
        let start = format!("wrote {who}.start0");
        ensure!(
            scene,
            out.lines().any(|l| parse_text(l).is_some_and(|(_, level, msg)| level == "INFO" && msg == start)),
            "{who}: an INFO entry `{start}`"
        );
        ensure!(
            scene,
            out.lines()
                .any(|l| parse_text(l).is_some_and(|(_, _, msg)| msg.starts_with(&format!("{who} attempt 0 at ")))),
            "{who}: the attempt's start is an entry too"
        );
    }
    // The banner in the child's log: readable UTC, not Unix seconds; the entries there are text entries.
    let log = fs::read_to_string(scene.agent_log()).unwrap_or_default();
    let banner = log.lines().find(|l| l.starts_with("===== supervisor: agent-1 attempt 0 at "));
    ensure!(scene, banner.is_some(), "the agent's log has the attempt banner:\n{log}");
    let when = banner.unwrap_or_default().trim_start_matches("===== supervisor: agent-1 attempt 0 at ");
    let stamp = when.get(..23).unwrap_or_default();
    ensure!(
        scene,
        shape(stamp) == "dddd-dd-dd dd:dd:dd UTC",
        "the banner's time is `YYYY-MM-DD HH:MM:SS UTC`: {when:?}"
    );
    ensure!(scene, log.lines().any(|l| parse_text(l).is_some()), "the log file gets text entries:\n{log}");
}

/// In json mode with LOG_LEVEL=debug, also the details.
#[test]
fn json_entries_are_one_object_per_line() {
    let mut scene = Scene::new("log-json");
    let (sim, agent) = pair_run(&mut scene, &[("LOG_FORMAT", "json"), ("LOG_LEVEL", "debug")]);
    for (role, out) in [("simulator", &sim), ("agent", &agent)] {
        ensure!(scene, !out.trim().is_empty(), "{role} printed entries");
        for line in out.lines() {
            let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            ensure!(scene, v.is_object(), "{role}: not one JSON object: {line:?}");
            ensure!(scene, v["ts"].as_str().is_some_and(is_rfc3339_millis), "{role}: ts: {line}");
            ensure!(scene, v["level"].as_str().is_some_and(|l| LEVELS.contains(&l)), "{role}: level: {line}");
            ensure!(scene, v["role"] == role && v["worker"] == 1, "{role}: role and worker: {line}");
            ensure!(scene, v["msg"].is_string(), "{role}: msg: {line}");
        }
        ensure!(
            scene,
            out.lines().any(|l| serde_json::from_str::<Value>(l)
                .is_ok_and(|v| v["msg"] == format!("wrote {role}-1.start0") && v["level"] == "INFO")),
            "{role}: an INFO entry for its start marker"
        );
        ensure!(
            scene,
            out.lines().any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["level"] == "DEBUG"
                && v["msg"].as_str().is_some_and(|m| m.starts_with("attempt 0: the child is process ")))),
            "{role}: LOG_LEVEL=debug adds the child's process as a DEBUG entry"
        );
    }
    // The log file that participants read keeps the text form.
    let log = fs::read_to_string(scene.agent_log()).unwrap_or_default();
    ensure!(scene, log.lines().any(|l| parse_text(l).is_some()), "the log file gets text entries:\n{log}");
    ensure!(scene, !log.lines().any(|l| l.starts_with('{')), "no JSON in the log file:\n{log}");
}

#[test]
fn log_level_warn_leaves_out_the_info_entries() {
    let mut scene = Scene::new("log-warn");
    let (sim, agent) = pair_run(&mut scene, &[("LOG_LEVEL", "warn")]);
    for out in [&sim, &agent] {
        for line in out.lines() {
            let level = parse_text(line).map(|(_, l, _)| l);
            ensure!(scene, matches!(level, Some("WARN" | "ERROR")), "only warnings and errors: {line:?}");
        }
    }
}

/// A message with a line break (a path) stays one entry, in both formats, on stderr: the status folder cannot be
/// made beneath a file whose name holds line breaks.
#[test]
fn a_line_break_in_a_message_stays_in_one_entry() {
    let scene = Scene::new("log-newline");
    let file = scene.path("no\nsuch\nfolder");
    fs::write(&file, b"").expect("write the file in the way");
    for format in ["text", "json"] {
        let mut child = Command::new(SUPERVISOR)
            .args(["agent", "--worker-id", "1", "--status-dir"])
            .arg(file.join("status"))
            .arg("--checkpoint")
            .arg(scene.checkpoint_path())
            .args(["--log-format", format])
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the supervisor");
        let pid = child.id() as i32;
        let exited = wait_for(STEP, || child.try_wait().ok().flatten().is_some());
        if !exited {
            signal(pid, libc::SIGKILL);
        }
        let out = child.wait_with_output().expect("collect the output");
        assert!(exited, "{format}: the supervisor should stop on the configuration error");
        assert_eq!(out.status.code(), Some(2), "{format}: a configuration error exits 2");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{format}: one line: {err:?}");
        let line = err.lines().next().unwrap_or_default();
        if format == "text" {
            let (_, level, msg) = parse_text(line).unwrap_or_else(|| panic!("not an entry: {line:?}"));
            assert_eq!(level, "ERROR");
            assert!(msg.contains("no\\nsuch\\nfolder"), "the break is written as \\n: {msg}");
        } else {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            assert_eq!(v["level"], "ERROR");
            assert!(v["msg"].as_str().is_some_and(|m| m.contains("no\nsuch\nfolder")), "{v}");
        }
    }
}

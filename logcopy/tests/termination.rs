//! The end's one line for a person: the log's last line and Kubernetes' termination message (`--termination-log`),
//! so that `kubectl describe pod` says why a Complete Job's submission failed, and a bad configuration why it
//! never started.

mod support;

use std::time::Duration;
use support::{LogcopyCmd, Volume};

fn local(vol: &Volume) -> (LogcopyCmd, std::path::PathBuf) {
    let out = vol.side_dir("local-out");
    let msg = vol.side_dir("pod").join("termination-log");
    let cmd = LogcopyCmd::new(vol)
        .fast()
        .flag("--local", out.to_str().unwrap())
        .flag("--termination-log", msg.to_str().unwrap());
    (cmd, msg)
}

#[test]
fn a_finished_run_says_so_in_one_line_and_in_the_termination_message() {
    let vol = Volume::from_fixture("lb2.0-finished");
    let (cmd, msg) = local(&vol);
    let (code, lc) = cmd.switch("--final-status").run(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", lc.output());
    let text = std::fs::read_to_string(&msg).expect("the termination message is written");
    assert!(text.starts_with("final status FINISHED: "), "{text:?}");
    assert_eq!(text.lines().count(), 1, "{text:?}");
    let last = lc.stdout_text().lines().last().unwrap_or_default().to_string();
    assert!(last.contains("logcopy ends: final status FINISHED"), "the log's last line: {last}");
    assert!(!last.contains("Completed {"), "no debug formatting: {last}");
}

#[test]
fn a_failed_run_names_the_reason() {
    // The mid-run volume with every worker's done marker: the workers ended without all their routes.
    let vol = Volume::from_fixture("lb2.0-mid-run");
    for i in 1..=4 {
        vol.add_marker(&format!("agent-{i}.done"));
        vol.add_marker(&format!("simulator-{i}.done"));
    }
    let (cmd, msg) = local(&vol);
    let (code, lc) = cmd.flag("--route-count", "20").run(Duration::from_secs(60));
    assert_eq!(code, 0, "a handled end exits 0: {}", lc.output());
    let text = std::fs::read_to_string(&msg).expect("the termination message is written");
    assert!(text.starts_with("final status FAILED: "), "{text:?}");
    assert!(text.contains("worker"), "the reason names the workers: {text:?}");
}

#[test]
fn a_configuration_error_is_the_termination_message() {
    let vol = Volume::from_fixture("lb2.0-finished");
    let (cmd, msg) = local(&vol);
    let (code, lc) = cmd.flag("--workers", "0").run(Duration::from_secs(30));
    assert_eq!(code, 2, "{}", lc.output());
    let text = std::fs::read_to_string(&msg).expect("the termination message is written");
    assert!(text.starts_with("configuration error: ") && text.contains("--workers"), "{text:?}");
}

#[test]
fn rust_log_filters_on_top_of_the_log_level() {
    let vol = Volume::from_fixture("lb2.0-finished");
    let (cmd, _) = local(&vol);
    let (code, lc) = cmd.env("RUST_LOG", "warn").switch("--once").run(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", lc.output());
    let out = lc.stdout_text();
    assert!(!out.contains(" INFO "), "RUST_LOG=warn leaves no INFO line:\n{out}");

    let vol = Volume::from_fixture("lb2.0-finished");
    let (cmd, _) = local(&vol);
    let (code, lc) = cmd.env("RUST_LOG", "logcopy=[bad").switch("--once").run(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", lc.output());
    let out = lc.stdout_text();
    assert!(
        out.contains("RUST_LOG ignored") && out.contains(" INFO "),
        "a bad RUST_LOG is named, --log-level applies:\n{out}"
    );
}

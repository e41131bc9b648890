//! The supervisor's exit codes, in one place: what `main` returns, what `supervisor exit-codes` prints, what the
//! help lists, and what `docker/k8s/make-job` puts in the worker Job's `podFailurePolicy` (`docker/k8s/check-manifest`
//! compares the two, so a change here that the manifest does not follow fails its test).
//!
//! Under `--topology pod` (generation 1, `restartPolicy: OnFailure`) every handled end exits [`OK`]: a non-zero
//! exit there spends the Job's retries. Under `--topology indexed` (one Indexed Job pod per worker,
//! `restartPolicy: Never`), an exit 0 completes the shard, so a worker that ended for good exits non-zero with a
//! code of its own, which the Job's pod failure policy turns into `FailIndex` (no retry of a shard that cannot
//! succeed): [`BUDGET_SPENT`] or [`PARTICIPANT_FAULT`]. Both avoid 0..=2 (ours), 126..=127 (the shell's) and
//! 128 and above (death by a signal).

use crate::config::Topology;
use volume::markers::Role;
use volume::status::Reason;

/// Every handled end under `pod`; done or cancelled under `indexed`.
pub const OK: u8 = 0;
/// A crash with `--restart container` (upstream's behaviour: Kubernetes restarts the container).
pub const CRASH_RESTART_CONTAINER: u8 = 1;
/// Bad configuration: a flag, a variable, a folder that cannot be opened. It repeats on every try.
pub const CONFIG_ERROR: u8 = 2;
/// `indexed` only: this side ended for good after its attempt budget (`--max-attempts`) was spent, or found its own
/// failed marker at start.
pub const BUDGET_SPENT: u8 = 41;
/// `indexed` only: this side ended for good through the participant's code: the evaluator rejected the agent's
/// sensors, or the budget was spent on an agent that could not be set up or an evaluator that could not start.
pub const PARTICIPANT_FAULT: u8 = 42;

/// One row of the table: name (as `supervisor exit-codes` prints it), code, meaning, and the Indexed Job's
/// `podFailurePolicy` action for it (`None`: no rule; the pod counts against `backoffLimitPerIndex`).
pub struct Code {
    pub name: &'static str,
    pub code: u8,
    pub meaning: &'static str,
    pub action: Option<&'static str>,
}

/// The table, in code order.
pub const TABLE: [Code; 5] = [
    Code { name: "ok", code: OK, meaning: "done, cancelled (and, under pod, every handled end)", action: None },
    Code {
        name: "crash-restart-container",
        code: CRASH_RESTART_CONTAINER,
        meaning: "a crash with --restart container",
        action: None,
    },
    Code {
        name: "config-error",
        code: CONFIG_ERROR,
        meaning: "bad configuration (repeats on every shard)",
        action: Some("FailJob"),
    },
    Code {
        name: "attempt-budget-spent",
        code: BUDGET_SPENT,
        meaning: "indexed: ended for good, attempt budget spent",
        action: Some("FailIndex"),
    },
    Code {
        name: "participant-fault",
        code: PARTICIPANT_FAULT,
        meaning: "indexed: ended for good through the participant's code",
        action: Some("FailIndex"),
    },
];

/// The codes of the table, as `--help` shows them after the flags.
pub fn help() -> String {
    let mut s = String::from("Exit codes (podFailurePolicy action of an Indexed Job in brackets):\n");
    for c in &TABLE {
        let action = c.action.map(|a| format!(" [{a}]")).unwrap_or_default();
        s += &format!("  {:>3}  {}{action}\n", c.code, c.meaning);
    }
    s += "  128+N  the child's end after a forwarded signal N (or its own code; under indexed, one that equals 2, 41\n";
    s += "         or 42 becomes 128+N)";
    s
}

/// `supervisor exit-codes`: one JSON object, name to code, with the actions (what check-manifest reads).
pub fn json() -> String {
    let rows: Vec<String> = TABLE
        .iter()
        .map(|c| {
            let action = c.action.map(|a| format!("\"{a}\"")).unwrap_or_else(|| "null".into());
            format!("{{\"name\":\"{}\",\"code\":{},\"action\":{action}}}", c.name, c.code)
        })
        .collect();
    format!("[{}]", rows.join(","))
}

/// Whether `reason`, on `side`, is the participant's doing (for [`PARTICIPANT_FAULT`]).
pub fn participant_reason(side: Role, reason: Reason) -> bool {
    side == Role::Agent && matches!(reason, Reason::AgentSetupFailed | Reason::SensorsRejected | Reason::SpawnFailed)
}

/// The exit code of a side that ended for good (a failed marker of its own), the last end's reason and side if
/// known.
pub fn failed(topology: Topology, last: Option<(Role, Reason)>) -> i32 {
    match topology {
        Topology::Pod => i32::from(OK),
        Topology::Indexed if last.is_some_and(|(side, r)| participant_reason(side, r)) => i32::from(PARTICIPANT_FAULT),
        Topology::Indexed => i32::from(BUDGET_SPENT),
    }
}

/// The exit code after a forwarded signal ended the child: its own code (or 128 + its signal), except that under
/// `indexed` a code the pod failure policy acts on becomes 128 + the forwarded signal, so a child's own `exit 41`
/// on SIGTERM does not fail its shard for good.
pub fn terminated(topology: Topology, child_code: i32, forwarded: Option<i32>) -> i32 {
    let ours = [CONFIG_ERROR, BUDGET_SPENT, PARTICIPANT_FAULT].map(i32::from);
    match topology {
        Topology::Indexed if ours.contains(&child_code) => 128 + forwarded.unwrap_or(libc::SIGTERM),
        _ => child_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_are_distinct_and_clear_of_the_shell_and_signals() {
        let codes: Vec<u8> = TABLE.iter().map(|c| c.code).collect();
        let mut sorted = codes.clone();
        sorted.dedup();
        assert_eq!(codes, sorted, "distinct, in order");
        for c in [BUDGET_SPENT, PARTICIPANT_FAULT] {
            assert!(c > CONFIG_ERROR && c < 126, "{c} collides with ours, the shell's or a signal's");
        }
    }

    #[test]
    fn pod_keeps_exit_0_and_indexed_names_the_fault() {
        assert_eq!(failed(Topology::Pod, Some((Role::Agent, Reason::SensorsRejected))), 0);
        assert_eq!(failed(Topology::Indexed, None), 41);
        assert_eq!(failed(Topology::Indexed, Some((Role::Simulator, Reason::SimulatorCrashed))), 41);
        assert_eq!(failed(Topology::Indexed, Some((Role::Simulator, Reason::SpawnFailed))), 41);
        assert_eq!(failed(Topology::Indexed, Some((Role::Agent, Reason::SpawnFailed))), 42);
        assert_eq!(failed(Topology::Indexed, Some((Role::Agent, Reason::AgentSetupFailed))), 42);
        assert_eq!(terminated(Topology::Pod, 41, Some(15)), 41);
        assert_eq!(terminated(Topology::Indexed, 41, Some(15)), 143);
        assert_eq!(terminated(Topology::Indexed, 2, None), 143);
        assert_eq!(terminated(Topology::Indexed, 3, Some(15)), 3);
    }

    #[test]
    fn the_json_lists_every_code() {
        let v: serde_json::Value = serde_json::from_str(&json()).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(TABLE.len()));
        assert_eq!(v[3]["code"], 41);
        assert_eq!(v[3]["action"], "FailIndex");
        assert_eq!(v[2]["action"], "FailJob");
        assert!(v[0]["action"].is_null());
    }
}

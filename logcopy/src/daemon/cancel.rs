//! The cancel check: a cancel marker on the volume that this logcopy did not write is a claim, not a command, and
//! only EvalAI's status decides it. [`CancelCheck`] is that question as a state machine:
//!
//! ```text
//! Idle --a marker logcopy did not write--> Asked(marker) --EvalAI: cancelled--> Confirmed(marker)
//!                                                        --EvalAI: any other status--> Refuted(marker, status)
//! ```
//!
//! While it is `Asked`, every snapshot asks the EvalAI sink for the status at once ([`CancelCheck::asking`]). A cancel
//! marker seen after logcopy wrote its own (EvalAI's cancel) asks nothing. Pure: the loop feeds it what it saw and
//! heard.

/// The state of the question "is the submission cancelled, as this marker claims?".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum CancelCheck {
    /// No question: no cancel marker found that this logcopy did not write.
    #[default]
    Idle,
    /// A cancel marker that this logcopy did not write (its name) waits for EvalAI's word.
    Asked { marker: String },
    /// EvalAI says the submission is cancelled: the marker was true.
    Confirmed { marker: String },
    /// EvalAI reports another status: the marker was forged (or left by mistake).
    Refuted { marker: String, status: String },
}

impl CancelCheck {
    /// A cancel marker (`found`, its name) is on the volume: `Idle -> Asked` when this logcopy did not write cancel
    /// markers itself. Returns the marker when the question is asked now, so that the caller logs it once.
    pub(crate) fn found(&mut self, found: Option<String>, wrote_cancel: bool) -> Option<&str> {
        if *self != CancelCheck::Idle || wrote_cancel {
            return None;
        }
        *self = CancelCheck::Asked { marker: found? };
        match self {
            CancelCheck::Asked { marker } => Some(marker),
            _ => None,
        }
    }

    /// Whether EvalAI's status is wanted now (the snapshot's `verify_cancel`).
    pub(crate) fn asking(&self) -> bool {
        matches!(self, CancelCheck::Asked { .. })
    }

    /// EvalAI reports the submission cancelled: `Asked -> Confirmed`. `true` when that answered the question (a
    /// cancel with no question pending is EvalAI's own, and leaves the state alone).
    pub(crate) fn confirm(&mut self) -> bool {
        let CancelCheck::Asked { marker } = self else { return false };
        *self = CancelCheck::Confirmed { marker: std::mem::take(marker) };
        true
    }

    /// EvalAI reports `status`, not cancelled: `Asked -> Refuted`, and the reason the run ends FAILED with (the
    /// workers obey markers and have stopped on it: the evaluation cannot go on). `None` when no question was
    /// pending.
    pub(crate) fn refute(&mut self, status: &str) -> Option<String> {
        let CancelCheck::Asked { marker } = self else { return None };
        let marker = std::mem::take(marker);
        let reason = forged_reason(&marker, status);
        *self = CancelCheck::Refuted { marker, status: status.to_string() };
        Some(reason)
    }
}

fn forged_reason(marker: &str, status: &str) -> String {
    format!(
        "a cancel marker that logcopy did not write ({marker}) stopped the workers, and EvalAI reports the submission \
         {status:?}, not cancelled: the marker was forged (by the participant's code?)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked() -> CancelCheck {
        CancelCheck::Asked { marker: "simulation.cancel".into() }
    }

    #[test]
    fn a_marker_this_logcopy_did_not_write_is_asked_about_once() {
        let mut c = CancelCheck::Idle;
        assert_eq!(c.found(None, false), None, "no marker, no question");
        assert_eq!(c, CancelCheck::Idle);
        assert!(!c.asking());
        assert_eq!(c.found(Some("simulation.cancel".into()), true), None, "logcopy's own markers are no claim");
        assert_eq!(c, CancelCheck::Idle);
        assert_eq!(c.found(Some("simulation.cancel".into()), false), Some("simulation.cancel"));
        assert_eq!(c, asked());
        assert!(c.asking());
        // Asked already: the marker seen again on the next turns asks nothing more.
        assert_eq!(c.found(Some("simulation-2.cancel".into()), false), None);
        assert_eq!(c, asked());
    }

    #[test]
    fn evalai_confirms_or_refutes_the_question() {
        let mut c = asked();
        assert!(c.confirm());
        assert_eq!(c, CancelCheck::Confirmed { marker: "simulation.cancel".into() });
        assert!(!c.asking());
        assert!(!c.confirm(), "answered once");
        assert_eq!(c.refute("running"), None, "a later status changes nothing");
        assert_eq!(c.found(Some("simulation.cancel".into()), false), None, "never asked again");

        let mut c = asked();
        let reason = c.refute("running").unwrap();
        assert_eq!(
            reason,
            "a cancel marker that logcopy did not write (simulation.cancel) stopped the workers, and EvalAI reports \
             the submission \"running\", not cancelled: the marker was forged (by the participant's code?)"
        );
        assert_eq!(c, CancelCheck::Refuted { marker: "simulation.cancel".into(), status: "running".into() });
        assert!(!c.asking());
        assert!(!c.confirm());
        assert_eq!(c.refute("running"), None);
    }

    #[test]
    fn answers_without_a_question_change_nothing() {
        let mut c = CancelCheck::Idle;
        assert!(!c.confirm(), "EvalAI's own cancel answers no question");
        assert_eq!(c.refute("running"), None, "a periodic status answers no question");
        assert_eq!(c, CancelCheck::Idle);
    }
}

//! The submission's DynamoDB record, from start to end.
//!
//! At start (upstream's `update-item` in `run_logcopy.sh`): `submission_status = "RUNNING"`,
//! `results = "s3://<bucket>/<submission>"`, and `start_time` only while it is absent or still the pre-run step's
//! `-`, so a restarted logcopy keeps the first real start time (upstream overwrites it on every restart).
//! With `--final-status`, at the end (the post-run Lambda's DynamoDB part): the final status, `end_time` and the
//! 15 metrics as strings (`-` unless FINISHED). Upstream reads `agent_blocked` from a wrong key and always writes
//! `-`; we write the real value. The final status is the one EvalAI was given ([`super::FinalDecision`]): a cancel on
//! EvalAI turns the run's FINISHED or FAILED into CANCELLED there, and here too. The record waits for that
//! decision up to `decision_wait`, writes what it has, and writes again if a later decision differs.

use super::table::{Condition, ItemKey, ItemStore, Updated};
use super::{End, FinalStatus, Outputs, Sink, SinkEvent, Snapshot};
use crate::results::pyjson::{self, Value, py_str};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use volume::time::now_utc;

/// The 15 metric attributes, in the post-run step's order; each is the EvalAI label lower-cased with `_` for
/// spaces and dashes (`Off-road infractions` -> `off_road_infractions`).
pub const METRICS: [&str; 15] = [
    "driving_score",
    "route_completion",
    "infraction_penalty",
    "collisions_pedestrians",
    "collisions_vehicles",
    "collisions_layout",
    "red_light_infractions",
    "stop_sign_infractions",
    "off_road_infractions",
    "route_deviations",
    "route_timeouts",
    "agent_blocked",
    "yield_emergency_vehicle_infractions",
    "scenario_timeouts",
    "min_speed_infractions",
];

/// The metrics of `results.json` as the post-run step stores them: `str(value)` per label, `-` when absent.
pub fn metrics(results_json: &str) -> Vec<(&'static str, String)> {
    let mut found = std::collections::HashMap::new();
    if let Ok(Value::Array(entries)) = pyjson::parse(results_json.as_bytes())
        && let Some(acc) =
            entries.first().and_then(Value::as_object).and_then(|e| e.get("accuracies")).and_then(Value::as_object)
    {
        for (label, v) in acc.iter() {
            found.insert(label.to_lowercase().replace([' ', '-'], "_"), py_str(v));
        }
    }
    METRICS.iter().map(|m| (*m, found.remove(*m).unwrap_or_else(|| "-".into()))).collect()
}

pub struct RecordSink<T: ItemStore> {
    table: T,
    key: ItemKey,
    results_url: String,
    final_status: bool,
    retry_every: Duration,
    decision: Option<(watch::Receiver<Option<FinalStatus>>, Duration)>,
}

impl<T: ItemStore> RecordSink<T> {
    pub fn new(table: T, key: ItemKey, results_url: String, final_status: bool, retry_every: Duration) -> Self {
        RecordSink { table, key, results_url, final_status, retry_every, decision: None }
    }

    /// Follow the final status EvalAI was given (a receiver of the [`super::FinalDecision`]: holding the sender would keep
    /// the record waiting for a change that never comes), waiting for it at most `wait` before writing the run's own.
    pub fn following(mut self, decision: watch::Receiver<Option<FinalStatus>>, wait: Duration) -> Self {
        self.decision = Some((decision, wait));
        self
    }

    /// The final record, retried a few times.
    async fn finish_retried(&self, status: FinalStatus, outputs: Option<&Outputs>) {
        for _ in 0..3 {
            if self.finish(status, outputs).await {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The start update; `false` when DynamoDB could not be reached (retried later).
    pub async fn start(&self) -> bool {
        let base = vec![("submission_status", "RUNNING".to_string()), ("results", self.results_url.clone())];
        let mut with_start = base.clone();
        with_start.push(("start_time", now_utc()));
        let r = match self.table.update(&self.key, &with_start, Some(Condition::StartTimeUnset)).await {
            Ok(Updated::Applied) => Ok("start_time set"),
            // A restart: the first real start time stays.
            Ok(Updated::ConditionFailed) => self.table.update(&self.key, &base, None).await.map(|_| "start_time kept"),
            Err(e) => Err(e),
        };
        match r {
            Ok(what) => {
                info!(table = %self.table.describe(), "submission recorded as RUNNING ({what})");
                true
            }
            Err(e) => {
                warn!("{e}; retrying");
                false
            }
        }
    }

    /// The post-run record: final status, end time, metrics.
    pub async fn finish(&self, status: FinalStatus, outputs: Option<&Outputs>) -> bool {
        let mut set = vec![("submission_status", status.to_string()), ("end_time", now_utc())];
        let finished = status == FinalStatus::Finished;
        for (name, value) in metrics(outputs.map_or("", |o| o.results.as_str())) {
            set.push((name, if finished { value } else { "-".into() }));
        }
        match self.table.update(&self.key, &set, None).await {
            Ok(_) => {
                info!(%status, "final record written");
                true
            }
            Err(e) => {
                warn!("{e}");
                false
            }
        }
    }
}

impl<T: ItemStore> Sink for RecordSink<T> {
    fn name(&self) -> &'static str {
        "dynamodb"
    }

    async fn run(self, mut snapshots: watch::Receiver<Arc<Snapshot>>, _events: mpsc::Sender<SinkEvent>) {
        let mut started = false;
        loop {
            if !started {
                started = self.start().await;
            }
            let end = snapshots.borrow_and_update().end.clone();
            if let Some(end) = end {
                if self.final_status
                    && let Some(proposed) = End::final_status(&end)
                {
                    let outputs = snapshots.borrow().outputs.clone();
                    let Some((mut decided, wait)) = self.decision.clone() else {
                        self.finish_retried(proposed, outputs.as_deref()).await;
                        return;
                    };
                    let mut status = proposed;
                    if let Ok(Ok(d)) = tokio::time::timeout(wait, decided.wait_for(Option::is_some)).await {
                        status = d.unwrap_or(proposed);
                    }
                    self.finish_retried(status, outputs.as_deref()).await;
                    // EvalAI answered after the wait: its final status still wins.
                    while decided.changed().await.is_ok() {
                        let now = *decided.borrow_and_update();
                        if let Some(s) = now.filter(|s| *s != status) {
                            status = s;
                            self.finish_retried(status, outputs.as_deref()).await;
                        }
                    }
                }
                return;
            }
            let wait = if started { Duration::MAX } else { self.retry_every };
            tokio::select! {
                r = snapshots.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait.min(Duration::from_secs(86_400))) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_like_the_post_run_step_but_with_agent_blocked() {
        let results = r#"[{"split": "leaderboard", "show_to_participant": true, "accuracies": {"Driving score": 45.246103, "Route completion": 74.305, "Off-road infractions": 0.013, "Agent blocked": 0.772, "Collisions layout": 0}}]"#;
        let m: std::collections::HashMap<_, _> = metrics(results).into_iter().collect();
        assert_eq!(m["driving_score"], "45.246103");
        assert_eq!(m["off_road_infractions"], "0.013");
        assert_eq!(m["agent_blocked"], "0.772");
        assert_eq!(m["collisions_layout"], "0");
        assert_eq!(m["min_speed_infractions"], "-");
        assert_eq!(metrics("garbage").iter().filter(|(_, v)| v == "-").count(), 15);
    }
}

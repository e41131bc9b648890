//! The run loop: volume events and the periodic rescan drive merge cycles ([`super::cycle`]), each new result goes
//! to the sinks as a [`Snapshot`], the sinks' events and the cancel check ([`super::cancel`]) are answered, and the
//! first end that applies ([`super::policy`], a cancel, the shutdown future) is flushed within its time budget. The
//! loop installs no signal handler: whoever runs it passes the future that asks it to stop.

use super::SetupError;
use super::cancel::CancelCheck;
use super::cycle::{Held, State};
use super::policy;
use super::sinks::Sinks;
use crate::publish::{End, SinkEvent, Snapshot};
use crate::volume::watch::{Debounce, watch};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, watch as watch_channel};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};
use volume::markers::Marker;

pub(super) struct Engine {
    state: Held,
    snap_tx: watch_channel::Sender<Arc<Snapshot>>,
    events: mpsc::Receiver<SinkEvent>,
    sinks: Vec<JoinHandle<()>>,
    seq: u64,
    /// A cancel marker that this logcopy did not write, and EvalAI's word on it.
    cancel: CancelCheck,
    /// Told each time the cancel markers are written (`logcopy monitor`).
    on_cancel: Option<Arc<tokio::sync::Notify>>,
}

impl Engine {
    /// The loop over the volume state, with the sinks started.
    pub fn new(state: State, sinks: Sinks) -> Engine {
        Engine {
            state: Held::new(state),
            snap_tx: sinks.snapshots,
            events: sinks.events,
            sinks: sinks.tasks,
            seq: 0,
            cancel: CancelCheck::Idle,
            on_cancel: None,
        }
    }

    /// Tells `notify` each time the cancel markers are written.
    pub fn on_cancel(mut self, notify: Option<Arc<tokio::sync::Notify>>) -> Engine {
        self.on_cancel = notify;
        self
    }

    fn cancel_written(&self) {
        if let Some(n) = &self.on_cancel {
            n.notify_one();
        }
    }

    /// Waits (at most `limit`) for EvalAI's answer about an unverified cancel marker: `Ok` when it says cancelled
    /// (cancel markers written, as on any cancel), `Err(status)` otherwise; `None` when no answer came.
    async fn cancel_answer(&mut self, limit: std::time::Duration) -> Option<Result<(), String>> {
        let deadline = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(SinkEvent::Cancelled)) => {
                    self.cancel.confirm();
                    self.state.write_cancel_markers();
                    self.cancel_written();
                    return Some(Ok(()));
                }
                Ok(Some(SinkEvent::Status { status })) => return Some(Err(status.to_string())),
                Ok(Some(SinkEvent::Published { .. })) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// A cancel marker on the volume that this logcopy did not write is a claim, not a command: it is logged, and
    /// EvalAI's status decides (asked at once). `true` when one was found now.
    fn check_cancel_marker(&mut self, when: &str) -> bool {
        let found = self.state.workers.cancel_marker();
        let Some(name) = self.cancel.found(found, self.state.wrote_cancel) else { return false };
        warn!(
            marker = %name,
            "a cancel marker that this logcopy did not write is on the volume {when}: asking EvalAI whether the \
             submission is cancelled (a marker left by an earlier logcopy, or forged by the participant's code)"
        );
        true
    }

    fn publish(&mut self, end: Option<End>) {
        self.seq += 1;
        let snap =
            Snapshot { seq: self.seq, outputs: self.state.outputs.clone(), end, verify_cancel: self.cancel.asking() };
        crate::metrics::snapshot(self.seq, &snap.outputs);
        let _ = self.snap_tx.send(Arc::new(snap));
    }

    /// Runs to one of the ends; `shutdown` resolving (with what asked for it, for the log) ends the run as
    /// [`End::Terminated`], with the final flush.
    pub async fn run(mut self, shutdown: impl Future<Output = &'static str>) -> Result<End, SetupError> {
        let cfg = self.state.cfg.clone();
        let root = self.state.root.clone();
        for dir in [self.state.layout.evalai_dir(), Path::new(volume::layout::LOGCOPY_DIR)] {
            if let Err(e) = root.create_dir_all(dir) {
                warn!("cannot create {}: {e}", root.display(dir).display());
            }
        }
        // A logcopy killed while writing an output leaves its temporary file: never an output, remove it.
        let merged_dir = self.state.layout.merged_file().parent().map(Path::to_path_buf);
        for dir in [Some(self.state.layout.evalai_dir().to_path_buf()), merged_dir].into_iter().flatten() {
            for entry in root.list(&dir).ok().flatten().into_iter().flatten() {
                if entry.name.to_string_lossy().starts_with(crate::volume::TEMP_PREFIX) {
                    let _ = root.remove_file(&dir.join(&entry.name));
                }
            }
        }
        let (_watcher, mut fs_events) = match watch(&self.state.layout.root) {
            Ok((w, rx)) => (Some(w), rx),
            Err(e) => {
                warn!("cannot watch the volume ({e}); falling back to the {:?} rescan alone", cfg.logs_period);
                (None, mpsc::channel(1).1)
            }
        };
        tokio::pin!(shutdown);

        self.state.lend(State::cycle).await;
        let marker_at_start = self.check_cancel_marker("at start");
        // Every worker had already ended (a restart after the last route): straight to the end, whose final
        // update carries the outputs; a partial update first would only spend the budget.
        if !marker_at_start
            && !cfg.once
            && let Some(end) = self.state.completion()
        {
            return Ok(self.end(end).await);
        }
        self.publish(None);
        if marker_at_start {
            // Left by an earlier logcopy that saw the cancel, or forged: EvalAI's answer decides before anything else.
            match self.cancel_answer(cfg.final_timeout).await {
                Some(Ok(())) => {
                    let reason = "a cancel marker is on the volume at start and EvalAI confirms the cancel";
                    return Ok(self.end(End::Cancelled { reason: reason.into() }).await);
                }
                Some(Err(status)) if !cfg.once => {
                    if let Some(reason) = self.cancel.refute(&status) {
                        error!("{reason}");
                        return Ok(self.end(End::Completed { finished: false, reason }).await);
                    }
                }
                _ => {}
            }
        }
        if cfg.once {
            return Ok(self.end(End::Once).await);
        }

        let mut debounce = Debounce::new(cfg.debounce);
        let mut next_rescan = Instant::now() + cfg.logs_period;
        loop {
            let cancelled = || policy::cancelled(self.state.workers.any_cancel(), self.state.wrote_cancel);
            if let Some(end) = self.state.completion().or_else(cancelled) {
                return Ok(self.end(end).await);
            }
            if self.check_cancel_marker("during the run") {
                self.publish(None);
            }
            let wake = debounce.deadline().map_or(next_rescan, |d| d.min(next_rescan));
            tokio::select! {
                Some(paths) = fs_events.recv() => {
                    let layout = &self.state.layout;
                    if paths.is_empty() || paths.iter().any(|p| !layout.is_own_output(p)) {
                        debounce.event(Instant::now());
                    }
                }
                _ = sleep_until(wake) => {
                    if Instant::now() >= next_rescan {
                        next_rescan = Instant::now() + cfg.logs_period;
                    }
                    debounce.clear();
                    if self.state.lend(State::cycle).await {
                        self.publish(None);
                    }
                }
                Some(ev) = self.events.recv() => match ev {
                    SinkEvent::Cancelled => {
                        if self.cancel.confirm() {
                            info!("EvalAI confirms the cancel marker: the submission is cancelled");
                        }
                        self.state.lend(|s| {
                            s.write_cancel_markers();
                            s.cycle()
                        })
                        .await;
                        self.cancel_written();
                    }
                    SinkEvent::Status { status } => {
                        // The workers obey markers and have stopped on it: the evaluation cannot go on, and the
                        // submission was not cancelled. It ends FAILED with the true reason.
                        if let Some(reason) = self.cancel.refute(status.as_str()) {
                            error!("{reason}");
                            return Ok(self.end(End::Completed { finished: false, reason }).await);
                        }
                    }
                    SinkEvent::Published { seq } => info!(seq, "EvalAI has the newest results"),
                },
                why = &mut shutdown => {
                    info!("{why}: final flush");
                    return Ok(self.end(End::Terminated).await);
                }
            }
        }
    }

    /// The final flush: last cycle, final snapshot, the sinks' final work within its time budget.
    async fn end(mut self, end: End) -> End {
        crate::metrics::state(crate::metrics::RunState::Finishing);
        if matches!(end, End::Cancelled { .. }) && !self.state.wrote_cancel {
            self.state.write_cancel_markers();
            self.cancel_written();
        }
        // Before the final flush, so that S3 holds it: the post-run step counts the done markers there.
        if matches!(end, End::Completed { .. })
            && let Err(e) = Marker::LogcopyDone.create_in(&self.state.root, self.state.layout.status_dir())
        {
            error!("cannot write {}: {e}", Marker::LogcopyDone);
        }
        let last = end.clone();
        self.state.lend(move |s| s.final_outputs(&last)).await;
        let end = self.state.final_verdict(end);
        match &end {
            End::Completed { finished: true, reason } => info!(reason, "all workers ended"),
            End::Completed { finished: false, reason } => {
                error!(reason, "all workers ended, the submission is incomplete")
            }
            End::Cancelled { reason } => info!(reason, "submission cancelled"),
            End::Terminated | End::Once => {}
        }
        self.publish(Some(end.clone()));
        let budget = match end {
            End::Terminated | End::Once => self.state.cfg.flush_budget,
            _ => self.state.cfg.final_timeout,
        };
        let deadline = Instant::now() + budget;
        for sink in &mut self.sinks {
            match tokio::time::timeout_at(deadline, &mut *sink).await {
                Ok(_) => {}
                Err(_) => {
                    error!(
                        budget_s = budget.as_secs_f64(),
                        "a sink did not finish its final work in time; stopping it"
                    );
                    sink.abort();
                }
            }
        }
        crate::metrics::state(crate::metrics::RunState::Ended);
        end
    }
}

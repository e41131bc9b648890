//! The outward edges of the daemon: EvalAI, S3 and DynamoDB, each a [`Sink`].
//!
//! The run loop publishes a [`Snapshot`] (the newest outputs and whether the run is ending) on a `watch`
//! channel. Each sink runs as its own task and always works on the newest snapshot, so a slow or failing remote
//! never blocks the volume, and updates that pile up while a remote is away coalesce into the latest one. When
//! the snapshot says the run ends, each sink does its final work and returns; the loop waits for them within a
//! time budget. A sink that dies before that (a panic, or a return before the end) is logged and started again
//! ([`spawn_supervised`]), so no edge can go quiet while the daemon runs on.
//!
//! The runtime has one thread, which the run loop and every sink share; blocking file work (the merge cycle, the
//! S3 plan's walk and hashes, the local store's copies) runs on a [`Lane`] of its own.

pub mod aws;
pub mod budget;
pub mod evalai;
pub mod local;
pub mod record;
pub mod retry;
pub mod s3sync;
pub mod sim;
pub mod store;
pub mod table;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// What logcopy publishes: the merged file and the three EvalAI files, as written on the volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    /// The merged results file (also `metadata.json`).
    pub merged: String,
    /// `results.json`.
    pub results: String,
    /// `stdout.txt`.
    pub stdout: String,
    /// EvalAI's `stderr`: the classified failures ([`crate::view::render_stderr`]); empty when nothing failed.
    pub stderr: String,
    /// EvalAI's `environment_log`, hosts only, on the final update only ([`crate::oplog`]); empty before the end.
    pub environment_log: String,
    /// Why EvalAI would refuse these outputs as a partial update (a non-finite metric: EvalAI answers 400), so
    /// none is sent; `None` when they can be sent.
    pub refused: Option<String>,
}

impl Outputs {
    /// A digest of the content that EvalAI receives, to never send the same payload twice.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.merged, &self.results, &self.stdout, &self.stderr).hash(&mut h);
        h.finish()
    }
}

/// How the run ends, and what the final EvalAI status would be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every worker ended. `finished` when all of them completed every route; otherwise the submission failed.
    Completed { finished: bool, reason: String },
    /// EvalAI (or a cancel marker on the volume) says the submission was cancelled.
    Cancelled { reason: String },
    /// SIGTERM or SIGINT: flush and exit; the Job goes on without us (or is being deleted).
    Terminated,
    /// `--once`: one cycle done.
    Once,
}

impl End {
    /// One line for a person (the log's last line and the termination message): the final status and why.
    pub fn describe(&self) -> String {
        match self {
            End::Completed { finished: true, reason } => format!("final status FINISHED: {reason}"),
            End::Completed { finished: false, reason } => format!("final status FAILED: {reason}"),
            End::Cancelled { reason } => format!("final status CANCELLED: {reason}"),
            End::Terminated => {
                "stopped by SIGTERM before the submission ended: results flushed, no final status sent (a resumed \
                 run decides it)"
                    .to_string()
            }
            End::Once => "one cycle done (--once)".to_string(),
        }
    }

    /// The status the post-run step would give EvalAI, where this end decides one.
    pub fn final_status(&self) -> Option<FinalStatus> {
        match self {
            End::Completed { finished: true, .. } => Some(FinalStatus::Finished),
            End::Completed { finished: false, .. } => Some(FinalStatus::Failed),
            End::Cancelled { .. } => Some(FinalStatus::Cancelled),
            End::Terminated | End::Once => None,
        }
    }
}

/// A terminal status as the post-run step sends it to EvalAI (`update_submission`) and writes it to DynamoDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalStatus {
    Finished,
    Failed,
    Cancelled,
}

impl FinalStatus {
    /// Upper case, as the post-run step writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinalStatus::Finished => "FINISHED",
            FinalStatus::Failed => "FAILED",
            FinalStatus::Cancelled => "CANCELLED",
        }
    }
}

impl std::fmt::Display for FinalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The final status that EvalAI was given, which the DynamoDB record follows (EvalAI may have turned the run's
/// own decision into CANCELLED: a cancel is final). `None` until it is decided.
pub type FinalDecision = Arc<watch::Sender<Option<FinalStatus>>>;

/// The state every sink works from.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases with every new snapshot.
    pub seq: u64,
    /// The newest good outputs; `None` until the first merge succeeds.
    pub outputs: Option<Arc<Outputs>>,
    /// `Some` once the run ends: the sinks do their final work and return.
    pub end: Option<End>,
    /// A cancel marker that this logcopy did not write is on the volume: EvalAI's status is wanted now (a marker is
    /// a claim; only EvalAI says whether the submission was cancelled).
    pub verify_cancel: bool,
}

/// What a sink tells the run loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    /// EvalAI reports the submission cancelled.
    Cancelled,
    /// EvalAI acknowledged a partial update with the outputs of snapshot `seq`.
    Published { seq: u64 },
    /// A status GET read this status (not `cancelled`, which is [`SinkEvent::Cancelled`]).
    Status { status: evalai::SubmissionStatus },
}

/// An outward edge: a task that follows the snapshots until the run ends.
pub trait Sink: Send + 'static {
    /// A short name for logs ("evalai", "s3", ...).
    fn name(&self) -> &'static str;
    /// Runs until the snapshot carries an end and the sink's final work is done (or the channel closes).
    fn run(
        self,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        events: mpsc::Sender<SinkEvent>,
    ) -> impl Future<Output = ()> + Send;
}

/// Gives the memory that a large job freed back to the system. glibc keeps freed memory in the arena of the thread
/// that allocated it, and each lane's thread has its own arena: after a merge of 10,000 routes (the volume's thread)
/// or a walk of 100,000 files (the plans' thread), tens of MiB would stay resident beside the main thread's.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free memory of the allocator to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A blocking job for a [`Lane`].
type LaneJob = Box<dyn FnOnce() + Send>;

/// A thread of its own for one kind of blocking file work, which it runs one job at a time, in order: the run
/// loop's merge cycles, the S3 sink's plans, the local store's copies. Such work never holds the runtime's one
/// thread, which the run loop and every sink share; and the same work always runs on the same thread, so glibc
/// keeps one malloc arena for it. (On tokio's blocking pool, a merge of 10,000 routes ran on another thread from
/// one cycle to the next, each thread's arena kept the memory of its last merge, and the soak's RSS nearly doubled.)
/// The thread ends when the lane is dropped, after the job it is running.
pub struct Lane {
    jobs: Option<std::sync::mpsc::Sender<LaneJob>>,
}

impl Lane {
    /// Starts the lane's thread, named `name`; where no thread can be started, its jobs go to tokio's blocking pool.
    pub fn new(name: &str) -> Lane {
        let (tx, rx) = std::sync::mpsc::channel::<LaneJob>();
        match std::thread::Builder::new().name(name.to_string()).spawn(move || rx.into_iter().for_each(|job| job())) {
            Ok(_) => Lane { jobs: Some(tx) },
            Err(e) => {
                warn!("cannot start the {name} thread ({e}); its work goes to the shared blocking pool");
                Lane { jobs: None }
            }
        }
    }

    /// Runs `f` on the lane's thread with `value` moved there, and gives both back. `f` runs in the caller's span
    /// (its logs keep the submission); a panic in `f` is raised again here, as if `f` had run in place.
    pub async fn run<T, R>(&self, mut value: T, f: impl FnOnce(&mut T) -> R + Send + 'static) -> (T, R)
    where
        T: Send + 'static,
        R: Send + 'static,
    {
        let span = tracing::Span::current();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let job: LaneJob = Box::new(move || {
            let _entered = span.enter();
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let r = f(&mut value);
                (value, r)
            }));
            let _ = done_tx.send(done);
        });
        let refused = match &self.jobs {
            Some(jobs) => jobs.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = refused {
            tokio::task::spawn_blocking(job);
        }
        match done_rx.await {
            Ok(Ok(done)) => done,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // The job was dropped unrun: only when the runtime shuts down, which drops the caller too.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Aborts the task when dropped: a supervised sink's task ends with its supervisor.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a sink made by `make` as a task and starts a new one (`make(true)`) whenever it dies before its work is
/// done: a panic, or a return while the run has not ended and the daemon still listens. Each restart is logged
/// as an error and waits a little longer (1 s more each time, at most 30 s). Aborting the returned task stops the
/// sink too.
pub fn spawn_supervised<S: Sink>(
    mut make: impl FnMut(bool) -> S + Send + 'static,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    events: mpsc::Sender<SinkEvent>,
) -> JoinHandle<()> {
    let task = async move {
        let mut restarts: u32 = 0;
        loop {
            let sink = make(restarts > 0);
            let name = sink.name();
            let mut inner = AbortOnDrop(tokio::spawn(sink.run(snapshots.clone(), events.clone())));
            let why = match (&mut inner.0).await {
                Ok(()) if snapshots.borrow().end.is_some() || snapshots.has_changed().is_err() => {
                    info!(sink = name, "sink finished");
                    return;
                }
                Ok(()) => "it returned before the run ended".to_string(),
                Err(e) if e.is_panic() => {
                    let p = e.into_panic();
                    let msg =
                        p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                    format!("it panicked: {}", msg.unwrap_or_else(|| "(no message)".into()))
                }
                Err(_) => return,
            };
            restarts += 1;
            error!(sink = name, restarts, "the sink died ({why}); starting it again");
            tokio::time::sleep(Duration::from_secs(u64::from(restarts.min(30)))).await;
        }
    };
    tokio::spawn(tracing::Instrument::instrument(task, tracing::Span::current()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Panics on its first life, returns early on its second, and does its work on its third.
    struct Fragile {
        life: u32,
        done: Arc<AtomicU32>,
    }

    impl Sink for Fragile {
        fn name(&self) -> &'static str {
            "fragile"
        }

        async fn run(self, mut snapshots: watch::Receiver<Arc<Snapshot>>, _events: mpsc::Sender<SinkEvent>) {
            match self.life {
                0 => panic!("overflow when adding duration to instant"),
                1 => {}
                _ => {
                    let _ = snapshots.wait_for(|s| s.end.is_some()).await;
                    self.done.store(self.life, Ordering::SeqCst);
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_sink_is_started_again_until_its_work_is_done() {
        let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
        let (ev_tx, _ev_rx) = mpsc::channel(4);
        let done = Arc::new(AtomicU32::new(0));
        let lives = Arc::new(AtomicU32::new(0));
        let (d, l) = (done.clone(), lives.clone());
        let task = spawn_supervised(
            move |restarted| {
                let life = l.fetch_add(1, Ordering::SeqCst);
                assert_eq!(restarted, life > 0, "make(true) on every restart");
                Fragile { life, done: d.clone() }
            },
            snap_rx,
            ev_tx,
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(lives.load(Ordering::SeqCst), 3, "a panic and an early return each start a new sink");
        assert_eq!(done.load(Ordering::SeqCst), 0);
        snap_tx.send_replace(Arc::new(Snapshot { end: Some(End::Terminated), ..Snapshot::default() }));
        task.await.unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 2, "the third sink did the final work");
        assert_eq!(lives.load(Ordering::SeqCst), 3, "a sink that finished is not started again");
    }
}

//! The outward edges of the daemon: EvalAI now, S3 and DynamoDB next, each a [`Sink`].
//!
//! The run loop publishes a [`Snapshot`] (the newest outputs and whether the run is ending) on a `watch`
//! channel. Each sink runs as its own task and always works on the newest snapshot, so a slow or failing remote
//! never blocks the volume, and updates that pile up while a remote is away coalesce into the latest one. When
//! the snapshot says the run ends, each sink does its final work and returns; the loop waits for them within a
//! time budget.

pub mod budget;
pub mod evalai;
pub mod local;
pub mod record;
pub mod retry;
pub mod s3sync;
pub mod store;
pub mod table;

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// What logcopy publishes: the merged file and the three EvalAI files, as written on the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outputs {
    /// The merged results file (also `metadata.json`).
    pub merged: String,
    /// `results.json`.
    pub results: String,
    /// `stdout.txt`.
    pub stdout: String,
}

impl Outputs {
    /// A digest of the content that EvalAI receives, to never send the same payload twice.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.merged, &self.results, &self.stdout).hash(&mut h);
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
    /// The status the post-run step would give EvalAI, where this end decides one.
    pub fn final_status(&self) -> Option<&'static str> {
        match self {
            End::Completed { finished: true, .. } => Some("FINISHED"),
            End::Completed { finished: false, .. } => Some("FAILED"),
            End::Cancelled { .. } => Some("CANCELLED"),
            End::Terminated | End::Once => None,
        }
    }
}

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
    Status { status: String },
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

//! The sinks of a run: the EvalAI sink (over HTTP, or the local file of `--local`), the S3 sync and the DynamoDB
//! record (on AWS, or local files), each a supervised task that follows the loop's snapshots. Started once, before
//! the loop; their setup is the only part of a run that can fail on configuration.

use super::SetupError;
use crate::config::{EvalAiTarget, RunConfig, StorageTarget};
use crate::metrics::{MeteredEvalAi, MeteredStore, MeteredTable};
use crate::publish::evalai::{EvalAiSettings, EvalAiSink, HttpTransport, Transport, redact_url};
use crate::publish::local::LocalTransport;
use crate::publish::record::RecordSink;
use crate::publish::retry::RetryPolicy;
use crate::publish::s3sync::{KeyMap, StorageSink};
use crate::publish::store::{LocalStore, S3Store};
use crate::publish::table::{DynamoTable, ItemKey, LocalTable};
use crate::publish::{FinalDecision, SinkEvent, Snapshot, spawn_supervised};
use crate::restore::manifest_target;
use crate::volume::Root;
use std::sync::Arc;
use tokio::sync::{mpsc, watch as watch_channel};
use tokio::task::JoinHandle;
use tracing::info;

/// The running sinks and the loop's two channels with them.
pub(super) struct Sinks {
    /// The snapshots the sinks follow.
    pub snapshots: watch_channel::Sender<Arc<Snapshot>>,
    /// What the sinks tell the loop.
    pub events: mpsc::Receiver<SinkEvent>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Starts every sink of `cfg`; the storage sinks read the volume beneath `root` and upload the files `keys` keeps.
pub(super) async fn start(cfg: &RunConfig, root: &Arc<Root>, keys: KeyMap) -> Result<Sinks, SetupError> {
    let settings = EvalAiSettings {
        challenge_id: cfg.challenge_id,
        submission_id: cfg.submission_id,
        track_id: cfg.track_id,
        rpm: cfg.evalai_rpm,
        status_period: cfg.status_period,
        start_patch: cfg.start_patch,
        final_status: cfg.final_status,
        retry: RetryPolicy::default(),
    };
    let (snapshots, snap_rx) = watch_channel::channel(Arc::new(Snapshot::default()));
    let (ev_tx, events) = mpsc::channel(64);
    // The final status EvalAI was given; the DynamoDB record follows it (a cancel on EvalAI is final).
    let decision: FinalDecision = Arc::new(watch_channel::channel(None).0);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    // Every sink is supervised: one that dies is started again (`restarted`: an EvalAI sink then takes its budget
    // as spent for a full window, and sends the newest payload once more).
    fn evalai_sink<T: Transport>(
        t: Arc<T>,
        settings: EvalAiSettings,
        decision: FinalDecision,
    ) -> impl FnMut(bool) -> EvalAiSink<Arc<T>> + Send + 'static {
        move |restarted| {
            let sink = EvalAiSink::new(t.clone(), settings.clone()).with_decision(decision.clone());
            if restarted { sink.restarted() } else { sink }
        }
    }
    tasks.push(match &cfg.evalai {
        EvalAiTarget::Http { base, token } => {
            let t = HttpTransport::new(base, token.clone(), cfg.request_timeout)
                .map_err(|e| SetupError::Client(e.to_string()))?;
            let t = MeteredEvalAi(t);
            info!(server = %redact_url(base), "publishing to EvalAI");
            spawn_supervised(evalai_sink(Arc::new(t), settings, decision.clone()), snap_rx, ev_tx.clone())
        }
        EvalAiTarget::Local { out } => {
            let t = LocalTransport::new(out).map_err(|e| SetupError::Client(format!("{}: {e}", out.display())))?;
            info!(requests = %t.requests_file().display(), "EvalAI requests go to the local file");
            let t = MeteredEvalAi(t);
            spawn_supervised(evalai_sink(Arc::new(t), settings, decision.clone()), snap_rx, ev_tx.clone())
        }
    });
    let prefix = cfg.submission_id.to_string();
    let target = manifest_target(&cfg.storage, &prefix);
    let key = ItemKey { team_id: cfg.team_id.clone(), submission_id: prefix.clone() };
    // The record waits for EvalAI's final status at most half the final budget before it writes the run's own.
    let decision_wait = cfg.final_timeout / 2;
    let (final_status, period, limits) = (cfg.final_status, cfg.logs_period, cfg.uploads);
    match &cfg.storage {
        StorageTarget::Aws { bucket, table } => {
            let sdk = crate::publish::store::sdk_config(cfg.storage_timeout).await;
            let (sdk2, bucket2, root2, prefix2) = (sdk.clone(), bucket.clone(), root.clone(), prefix.clone());
            let store = move |_| {
                StorageSink::new(MeteredStore(S3Store::new(&sdk2, &bucket2)), root2.clone(), &prefix2, &target, period)
                    .with_limits(limits)
                    .with_keys(keys.clone())
            };
            tasks.push(spawn_supervised(store, snapshots.subscribe(), ev_tx.clone()));
            let url = format!("s3://{bucket}/{prefix}");
            let (table2, d) = (table.clone(), decision.subscribe());
            let record = move |_| {
                RecordSink::new(
                    MeteredTable(DynamoTable::new(&sdk, &table2)),
                    key.clone(),
                    url.clone(),
                    final_status,
                    period,
                )
                .following(d.clone(), decision_wait)
            };
            tasks.push(spawn_supervised(record, snapshots.subscribe(), ev_tx.clone()));
            info!(bucket, table, "syncing the volume to S3 and recording the submission in DynamoDB");
        }
        StorageTarget::Local { out } => {
            let objects = out.join("s3");
            let (objects2, root2, prefix2) = (objects.clone(), root.clone(), prefix.clone());
            let store = move |_| {
                StorageSink::new(MeteredStore(LocalStore::new(&objects2)), root2.clone(), &prefix2, &target, period)
                    .with_limits(limits)
                    .with_keys(keys.clone())
            };
            tasks.push(spawn_supervised(store, snapshots.subscribe(), ev_tx.clone()));
            let url = format!("file://{}/{prefix}", objects.display());
            let item = out.join("dynamodb.json");
            let (item2, d) = (item.clone(), decision.subscribe());
            let record = move |_| {
                RecordSink::new(MeteredTable(LocalTable::new(&item2)), key.clone(), url.clone(), final_status, period)
                    .following(d.clone(), decision_wait)
            };
            tasks.push(spawn_supervised(record, snapshots.subscribe(), ev_tx.clone()));
            info!(objects = %objects.display(), item = %item.display(), "objects and the DynamoDB item go to local files");
        }
    }
    drop((ev_tx, decision));
    Ok(Sinks { snapshots, events, tasks })
}

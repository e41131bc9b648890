//! `logcopy monitor`: the Indexed Job's one small pod (docs/architecture.md, "Indexed Job"), which merges, converts
//! and publishes to EvalAI and DynamoDB exactly as `logcopy run` does, learning about the workers only from S3.
//!
//! It keeps a working volume (`--logs`, an emptyDir) laid out as generation 1's. The fetcher ([`fetch`]) mirrors
//! each worker's shard into it (its results file, markers and status records, from the shard status object the
//! worker's uploader writes), and `logcopy run`'s loop ([`crate::daemon`]) runs over it unchanged, with three hooks
//! ([`Hooks`]):
//! - its S3 sink uploads only the monitor's own outputs (the merged file, `evalai/*`, its log, the cancel
//!   markers), never a worker's keys, which their uploaders own (a re-upload could overwrite a newer attempt's);
//! - a worker the fetcher found lost (silent for `--worker-silence`, no end marker) ends without finishing: its
//!   routes are listed as not run, the submission is not FINISHED;
//! - when the run writes the cancel markers (EvalAI says cancelled), the monitor puts `simulation.cancel` and every
//!   `simulation-N.cancel` in S3 at once, where the uploaders poll them.
//!
//! At the end (completed or cancelled), after the final publish, it puts `containers-status/monitor.done`, which
//! upstream's post-run step counts, holding the monitor Job's UID (`--monitor-job-uid`, from the Job's
//! `controller-uid` label). A monitor that starts and finds it naming its own Job has nothing left to do and exits 0
//! without publishing again (a restarted monitor never sends a second final status); one naming another Job is an
//! earlier run's (a resumed submission): it is logged, the run goes on, and its end overwrites the marker. A monitor restarted before
//! the end rebuilds its working volume from the status objects (one GET each, no LIST) before its first cycle.

pub mod fetch;

use crate::config::{MonitorArgs, RunConfig, StorageTarget};
use crate::daemon::{Hooks, LostWorkers, SetupError};
use crate::metrics::MeteredStore;
use crate::publish::End;
use crate::publish::s3sync::KeyMap;
use crate::publish::store::{GetCondition, GetOutcome, LocalStore, ObjectStore, PutCondition, PutOutcome, S3Store};
use crate::volume::Root;
use fetch::Fetcher;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{error, info, warn};
use volume::layout::{EVALAI_DIR, LOGCOPY_LOG, STATUS_DIR};
use volume::markers::Marker;
use volume::shard::MONITOR_DONE;

/// The period at which an uploader refreshes its status object even when nothing changed (volume::shard).
const HEARTBEAT: Duration = Duration::from_secs(60);

/// Runs `logcopy monitor` to one of its ends; SIGTERM or SIGINT ends it with the final flush. `None`: the monitor had
/// already ended (`monitor.done` is in S3), nothing was done.
pub async fn run(cfg: RunConfig, mon: MonitorArgs, root: Arc<Root>) -> Result<Option<End>, SetupError> {
    run_until(cfg, mon, root, crate::daemon::shutdown_signals()).await
}

/// [`run`], ended by `shutdown` instead of a signal.
pub async fn run_until(
    cfg: RunConfig,
    mon: MonitorArgs,
    root: Arc<Root>,
    shutdown: impl Future<Output = &'static str>,
) -> Result<Option<End>, SetupError> {
    match cfg.storage.clone() {
        StorageTarget::Aws { bucket, .. } => {
            let sdk = crate::publish::store::sdk_config(cfg.storage_timeout).await;
            let store = Arc::new(MeteredStore(S3Store::new(&sdk, &bucket)));
            monitor(store, cfg, mon, root, shutdown).await
        }
        StorageTarget::Local { out } => {
            let store = Arc::new(MeteredStore(LocalStore::new(&out.join("s3"))));
            monitor(store, cfg, mon, root, shutdown).await
        }
    }
}

async fn monitor<S: ObjectStore>(
    store: Arc<S>,
    cfg: RunConfig,
    mon: MonitorArgs,
    root: Arc<Root>,
    shutdown: impl Future<Output = &'static str>,
) -> Result<Option<End>, SetupError> {
    let prefix = cfg.submission_id.to_string();
    let done_key = format!("{prefix}/{STATUS_DIR}/{MONITOR_DONE}");
    let job = mon.monitor_job_uid.clone().unwrap_or_default();
    if job.is_empty() {
        warn!(
            "no --monitor-job-uid / MONITOR_JOB_UID (make-job gives the monitor Job's UID): a {MONITOR_DONE} of any \
             Job without one is taken for this Job's"
        );
    }
    match store.get_bytes(&done_key, GetCondition::default(), MONITOR_DONE_MAX).await {
        Ok(GetOutcome::Found { body, .. }) => {
            let ended = done_job(&body);
            if ended == job {
                info!(key = %done_key, job = %job, "this monitor Job has already ended: nothing left to do");
                return Ok(None);
            }
            // A resumed submission: the marker is an earlier monitor Job's; this one runs, and its end replaces it.
            info!(
                key = %done_key,
                ended_job = %ended,
                job = %job,
                "{MONITOR_DONE} names another monitor Job (a resumed submission): going on"
            );
        }
        Ok(_) => {}
        Err(e) => warn!("cannot tell whether the monitor had already ended ({e}); going on"),
    }
    if mon.worker_silence < 2 * HEARTBEAT {
        warn!(
            worker_silence_s = mon.worker_silence.as_secs_f64(),
            "--worker-silence is shorter than two of the uploaders' {} s heartbeats: an idle worker can be taken for lost",
            HEARTBEAT.as_secs()
        );
    }
    let lost = LostWorkers::default();
    let mut fetcher = Fetcher::new(store.clone(), root.clone(), &cfg, &mon, lost.clone());
    // The working volume from S3 before the first cycle: a restarted monitor resumes where the workers are.
    let first = fetcher.pass().await;
    let waiting = fetcher.waiting();
    info!(
        workers = cfg.workers,
        status_objects = first.objects,
        results = first.results,
        period_s = mon.monitor_period.as_secs_f64(),
        "monitoring the workers' shards in S3"
    );
    if !waiting.is_empty() {
        let ids: Vec<String> = waiting.iter().map(u32::to_string).collect();
        info!("workers waiting for a pod (no status object yet): {}", ids.join(", "));
    }
    let cancelled = Arc::new(Notify::new());
    let hooks = Hooks { keys: own_keys(&cfg), lost, cancelled: Some(cancelled.clone()) };
    let cancel_put = AtomicBool::new(false);
    let keys = fetch::cancel_keys(&prefix, cfg.workers);
    let period = mon.monitor_period;
    let fetching = async {
        // A pass every period (from start to start); a pass that overran it is followed by the next at once.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            fetcher.pass().await;
        }
    };
    let cancelling = async {
        loop {
            cancelled.notified().await;
            put_all(&*store, &keys, Vec::new(), "the cancel markers").await;
            cancel_put.store(true, Ordering::Relaxed);
        }
    };
    let run = crate::daemon::run_with(cfg, root, shutdown, hooks);
    let end = tokio::select! {
        end = run => end?,
        _ = fetching => unreachable!("the fetcher loops until the run ends"),
        _ = cancelling => unreachable!("the cancel task loops until the run ends"),
    };
    if matches!(end, End::Cancelled { .. }) && !cancel_put.load(Ordering::Relaxed) {
        put_all(&*store, &keys, Vec::new(), "the cancel markers").await;
    }
    if matches!(end, End::Completed { .. } | End::Cancelled { .. }) {
        put_all(&*store, &[done_key], done_body(&job), MONITOR_DONE).await;
    }
    Ok(Some(end))
}

/// The most of `monitor.done` read: it holds a Job UID.
const MONITOR_DONE_MAX: u64 = 4096;

/// `monitor.done`'s body: the UID of the monitor Job that ended (an ordinary `.done` file for upstream's post-run
/// step, which counts the files and reads none).
fn done_body(job: &str) -> Vec<u8> {
    if job.is_empty() { Vec::new() } else { format!("{job}\n").into_bytes() }
}

/// The monitor Job UID a `monitor.done` names (empty: none, as an older monitor wrote it).
fn done_job(body: &[u8]) -> String {
    String::from_utf8_lossy(body).trim().chars().take(MAX_JOB_UID).collect()
}

/// The longest Job UID kept from `monitor.done`.
const MAX_JOB_UID: usize = 64;

/// Puts each key (with `body`), retrying what failed for a while; every failure is logged.
async fn put_all<S: ObjectStore>(store: &S, keys: &[String], body: Vec<u8>, what: &str) {
    let mut pending: Vec<&String> = keys.iter().collect();
    let mut pause = Duration::from_millis(250);
    for _ in 0..8 {
        let mut failed = Vec::new();
        for key in pending {
            match store.put_bytes(key, body.clone(), PutCondition::Always).await {
                Ok(PutOutcome::Written { .. }) => {}
                Ok(PutOutcome::PreconditionFailed) => {}
                Err(e) => {
                    warn!("cannot put {what}: {e} (tried again)");
                    failed.push(key);
                }
            }
        }
        if failed.is_empty() {
            info!(objects = keys.len(), "{what} are in S3");
            return;
        }
        pending = failed;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    error!(missing = pending.len(), "cannot put {what} in S3");
}

/// The monitor's own files of its working volume, the only ones its S3 sink uploads: the merged file, EvalAI's
/// files, its log, the cancel markers. Its `logcopy.done` stays out (upstream's post-run step counts `.done` files:
/// the monitor's is `monitor.done`), and so does every worker's file.
pub fn own_keys(cfg: &RunConfig) -> KeyMap {
    let merged = cfg.merged_path.clone();
    let lists = vec![
        merged.display().to_string(),
        format!("{EVALAI_DIR}/"),
        format!("{}/", volume::layout::LOGCOPY_DIR),
        format!("{STATUS_DIR}/simulation"),
    ];
    KeyMap::new(move |rel| is_own(rel, &merged).then(|| rel.to_path_buf()), lists)
}

fn is_own(rel: &Path, merged: &Path) -> bool {
    let cancel = || {
        rel.parent() == Some(Path::new(STATUS_DIR))
            && matches!(
                rel.file_name().and_then(|n| n.to_str()).and_then(Marker::parse),
                Some(Marker::Cancel | Marker::WorkerCancel { .. })
            )
    };
    rel == merged || rel.starts_with(EVALAI_DIR) || rel == Path::new(LOGCOPY_LOG) || cancel()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_done_names_the_job() {
        assert_eq!(done_job(&done_body("a-b-c")), "a-b-c");
        assert_eq!(done_job(&done_body("")), "");
        assert_eq!(done_job(b""), "", "an older monitor's marker names no Job");
        assert_eq!(done_job(&[b'x'; 100]).len(), MAX_JOB_UID);
    }

    #[test]
    fn the_monitor_uploads_only_its_own_files() {
        let merged = Path::new("agent/agent_results.json");
        let own = |p: &str| is_own(Path::new(p), merged);
        for p in [
            "agent/agent_results.json",
            "evalai/results.json",
            "evalai/stdout.txt",
            "logcopy/logcopy.log",
            "containers-status/simulation.cancel",
            "containers-status/simulation-3.cancel",
        ] {
            assert!(own(p), "{p}");
        }
        for p in [
            "agent/agent1/agent_results.json",
            "containers-status/agent-1.done",
            "containers-status/agent-1.status.json",
            "containers-status/logcopy.done",
            "containers-status/monitor.done",
            "logcopy/.upload-manifest.json",
            "shards/worker-1.json",
        ] {
            assert!(!own(p), "{p}");
        }
        assert_eq!(
            fetch::cancel_keys("7", 2),
            [
                "7/containers-status/simulation.cancel",
                "7/containers-status/simulation-1.cancel",
                "7/containers-status/simulation-2.cancel"
            ]
        );
    }
}

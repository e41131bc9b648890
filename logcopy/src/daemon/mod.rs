//! `logcopy run`: volume events -> merge -> outputs -> sinks -> end conditions.
//!
//! Replaces the 10 s polling loop of upstream's `run_logcopy.sh`. One task owns the volume: it reacts to file
//! events (debounced) and to a periodic rescan, re-reads a worker's results file only when it changed, keeps
//! the last good parse of a file caught half-written, merges, and writes the merged file and EvalAI's three
//! files atomically. It hands each new result to the sinks (EvalAI, S3, DynamoDB) through a `watch`
//! channel and decides when the run ends:
//! - every worker has ended (both done markers, or a `.failed` marker): final merge and publish, `logcopy.done`;
//! - EvalAI reports the submission cancelled: cancel markers for every worker, final flush, no partial PUT;
//! - a cancel marker that this logcopy did not write (left by an earlier logcopy, or forged by the participant's
//!   code, which can write the status folder): a claim, not a command. It is logged and EvalAI's status is read at
//!   once: `cancelled` ends the run as cancelled; any other status means the marker was forged, and since the
//!   workers have stopped on it, the run ends incomplete (FAILED) with that reason;
//! - the shutdown future resolves (SIGTERM or SIGINT in [`run`]): final flush within the flush budget.
//!
//! Every handled end exits 0: under `restartPolicy: OnFailure` a non-zero exit would restart logcopy and spend the
//! Job's retries. Only bad configuration exits non-zero (2).
//!
//! The modules, in the order a run meets them:
//! - `sinks`: starts the EvalAI, S3 and DynamoDB sinks;
//! - `engine`: the loop, which runs until an end and flushes it; it takes a shutdown future and installs no
//!   signal handler;
//! - `cycle`: the volume state and the merge cycle, lent to a thread of its own for each cycle (`cycle::Held`);
//! - `workers`: worker tracking: each worker's results file, the routes it was given, the markers;
//! - `policy`: the completion policy as pure functions: a worker's end, the run's end, the missing routes;
//! - `cancel`: the check of a cancel marker that logcopy did not write, a small state machine.
//!
//! `logcopy monitor` (crate::monitor) runs the same loop over its working volume, with [`Hooks`].

mod cancel;
mod cycle;
mod engine;
mod policy;
mod sinks;
#[cfg(test)]
mod view_goldens;
mod workers;

use crate::config::RunConfig;
use crate::publish::End;
use crate::volume::Root;
use cycle::State;
use engine::Engine;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::signal::unix::{Signal, SignalKind, signal};
pub use workers::{Lost, LostWorkers};

/// What `logcopy monitor` changes in a run over its working volume: which files the storage sink uploads (its own
/// outputs only), the workers its fetcher found lost, and a notice each time the run writes the cancel markers
/// (which the monitor then puts in S3 for the workers' uploaders).
#[derive(Clone, Default)]
pub struct Hooks {
    pub keys: crate::publish::s3sync::KeyMap,
    pub lost: LostWorkers,
    pub cancelled: Option<Arc<tokio::sync::Notify>>,
}

/// A setup failure that is the operator's to fix (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--logs / LOGS_DIR: {path}: {reason}")]
    Volume { path: PathBuf, reason: String },
    #[error("EvalAI client: {0}")]
    Client(String),
}

/// Opens the volume's root (`--logs`), once: everything logcopy reads or writes on the volume goes beneath it.
pub fn open_volume(path: &Path) -> Result<Arc<Root>, SetupError> {
    let bad = |reason: String| SetupError::Volume { path: path.to_path_buf(), reason };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("is not a folder".into())),
        Err(e) => return Err(bad(e.to_string())),
    }
    Root::open(path).map(Arc::new).map_err(|e| bad(e.to_string()))
}

/// Runs `logcopy run` to one of its ends, on the volume opened by [`open_volume`]; SIGTERM or SIGINT ends it with
/// the final flush.
pub async fn run(cfg: RunConfig, root: Arc<Root>) -> Result<End, SetupError> {
    run_until(cfg, root, shutdown_signals()).await
}

/// SIGTERM or SIGINT, with what it was: the handlers are installed now, before anything runs, so that from here on
/// a signal is a request for the final flush.
pub fn shutdown_signals() -> impl Future<Output = &'static str> {
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let mut sigint = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            _ = recv_signal(&mut sigterm) => "SIGTERM",
            _ = recv_signal(&mut sigint) => "SIGINT",
        }
    }
}

/// Runs `logcopy run` to one of its ends; `shutdown` resolving (with what asked for it, for the log) ends it as
/// [`End::Terminated`], with the final flush.
pub async fn run_until(
    cfg: RunConfig,
    root: Arc<Root>,
    shutdown: impl Future<Output = &'static str>,
) -> Result<End, SetupError> {
    run_with(cfg, root, shutdown, Hooks::default()).await
}

/// [`run_until`] with `hooks` (`logcopy monitor`).
pub async fn run_with(
    cfg: RunConfig,
    root: Arc<Root>,
    shutdown: impl Future<Output = &'static str>,
    hooks: Hooks,
) -> Result<End, SetupError> {
    let sinks = sinks::start(&cfg, &root, hooks.keys).await?;
    let mut state = State::new(cfg, root);
    state.workers.lost = hooks.lost;
    Engine::new(state, sinks).on_cancel(hooks.cancelled).run(shutdown).await
}

/// What a run of `cfg` on the volume beneath `root` would publish now, with the clock stopped at `now` (Unix
/// seconds): one cycle, then, when the markers decide an end (a cancel marker counting as confirmed), that end's
/// final cycle. For the goldens of the participant's view (fixtures/view); it writes the outputs on the volume as a
/// run does, and starts no sink.
pub fn preview(cfg: RunConfig, root: Arc<Root>, now: i64) -> Option<crate::publish::Outputs> {
    let mut state = State::new(cfg, root);
    state.clock = Arc::new(move || now);
    state.cycle();
    let cancelled =
        || state.workers.any_cancel().then(|| End::Cancelled { reason: "a cancel marker is on the volume".into() });
    if let Some(end) = state.completion().or_else(cancelled) {
        state.final_outputs(&end);
        state.final_verdict(end);
    }
    state.outputs.as_deref().cloned()
}

async fn recv_signal(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use view_goldens::copy_dir;

    /// A copy of a recorded volume and a folder for the local sinks, in a fresh scratch folder; the configuration
    /// of a run on them with `args` added.
    fn scratch(name: &str, args: &[&str]) -> (PathBuf, PathBuf, RunConfig) {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/volumes/lb2.0-mid-run");
        let scratch = std::env::temp_dir().join(format!("logcopy-loop-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        let (vol, out) = (scratch.join("volume"), scratch.join("out"));
        copy_dir(&fixture, &vol);
        let (v, o) = (vol.to_str().unwrap(), out.to_str().unwrap());
        let base = ["--local", o, "--logs", v, "--evalai-rpm", "60", "--final-timeout", "10", "--flush-budget", "10"];
        let cfg = crate::config::tests::parse(&[&base[..], args].concat()).unwrap();
        (scratch, out, cfg)
    }

    /// A run of `cfg` that no shutdown ends.
    async fn run_to_its_end(cfg: RunConfig) -> End {
        let root = open_volume(&cfg.logs).unwrap();
        run_until(cfg, root, std::future::pending()).await.unwrap()
    }

    fn put_cancel_marker(cfg: &RunConfig) {
        let dir = cfg.logs.join(cfg.layout().status_dir());
        std::fs::write(dir.join(volume::markers::Marker::Cancel.file_name()), "").unwrap();
    }

    /// The loop runs in-process on a copy of a recorded volume, with the local sinks; resolving its shutdown future
    /// (no signal) ends it with the final flush: a worker file that came back after the first cycle, which no cycle
    /// has read yet (long rescan period and debounce), is in the final merged file, its S3 copy and EvalAI's last
    /// update.
    #[tokio::test]
    async fn the_shutdown_future_ends_the_run_with_the_final_flush() {
        let (scratch, out, cfg) = scratch("shutdown", &["--logs-period", "60", "--debounce", "30"]);
        let (vol, layout) = (cfg.logs.clone(), cfg.layout());
        // Worker 2's results file is away at start.
        let (w2, away) = (vol.join(layout.results_file(2)), scratch.join("worker2.json"));
        std::fs::rename(&w2, &away).unwrap();
        let text = std::fs::read_to_string(&away).unwrap();
        let data: serde_json::Value = serde_json::from_str(&text).unwrap();
        let route = data["_checkpoint"]["records"][0]["route_id"].as_str().unwrap().to_string();
        let merged = vol.join(layout.merged_file());

        let root = open_volume(&vol).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = run_until(cfg, root, async {
            let _ = stopped.await;
            "the test"
        });
        let trigger = async {
            // The first cycle wrote the merged file without worker 2; then worker 2's file comes back.
            for _ in 0..600 {
                if merged.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let first = std::fs::read_to_string(&merged).expect("the first cycle writes the merged file");
            assert!(!first.contains(&route), "worker 2's routes are not merged before it comes back");
            std::fs::rename(&away, &w2).unwrap();
            stop.send(()).unwrap();
        };
        let (end, ()) = tokio::join!(run, trigger);
        assert_eq!(end.unwrap(), End::Terminated);

        let last = std::fs::read_to_string(&merged).unwrap();
        assert!(last.contains(&route), "the final flush merged worker 2's file");
        let s3 = out.join("s3").join("1").join(layout.merged_file());
        assert_eq!(std::fs::read_to_string(&s3).unwrap(), last, "the final sync copied the final merged file");
        let requests = std::fs::read_to_string(out.join("evalai-requests.jsonl")).unwrap();
        assert!(requests.contains(&route), "EvalAI's last update carries the final merge");
        let _ = std::fs::remove_dir_all(&scratch);
    }

    /// A cancel marker that logcopy did not write, at start, and EvalAI (the local one) does not say cancelled: the
    /// cancel check refutes it and the run ends FAILED, saying the marker was forged.
    #[tokio::test]
    async fn a_forged_cancel_marker_at_start_ends_the_run_failed() {
        let (scratch, _, cfg) = scratch("forged", &[]);
        put_cancel_marker(&cfg);
        match run_to_its_end(cfg).await {
            End::Completed { finished: false, reason } => assert!(reason.contains("was forged"), "{reason}"),
            end => panic!("not a failed end: {end:?}"),
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }

    /// The same marker, and EvalAI says cancelled (the local EvalAI's cancel file): the run ends cancelled, with
    /// every worker's cancel marker written.
    #[tokio::test]
    async fn a_cancel_marker_that_evalai_confirms_ends_the_run_cancelled() {
        let (scratch, out, cfg) = scratch("confirmed", &[]);
        put_cancel_marker(&cfg);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(crate::publish::local::CANCEL_FILE), "").unwrap();
        let status = cfg.logs.join(cfg.layout().status_dir());
        let end = run_to_its_end(cfg).await;
        let reason = "a cancel marker is on the volume at start and EvalAI confirms the cancel".to_string();
        assert_eq!(end, End::Cancelled { reason });
        let worker = volume::markers::Marker::WorkerCancel { worker: volume::markers::WorkerId(4) };
        assert!(status.join(worker.file_name()).exists(), "every worker's cancel marker is written");
        let _ = std::fs::remove_dir_all(&scratch);
    }
}

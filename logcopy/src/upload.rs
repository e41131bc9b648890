//! `logcopy upload`: the uploader of an Indexed Job's worker pod (a native sidecar: an init container with
//! `restartPolicy: Always`, started before the worker pair and stopped after it). It writes only its own worker's
//! keys (`volume::shard::key_of`), and coordinates with the other pods of its shard and with `logcopy monitor`
//! through S3 alone (docs/architecture.md, "Indexed Job"):
//!
//! - **Takeover.** At start it GETs the shard status object (`shards/worker-N.json`, fencing generation g).
//!   Written by a newer pod of the same Job by the attempt counts ([`ShardStatus::same_job`],
//!   [`ShardStatus::newer_than`]): this pod is stale; it writes nothing to S3, writes the local marker
//!   `simulation-N.cancel` so that its supervisors stop, and waits for SIGTERM (a native sidecar that exits is
//!   restarted by the kubelet, so exiting would only loop), then exits 0. Otherwise its first status PUT carries
//!   generation g + 1 and is conditional on the ETag it read (`If-None-Match: *` and generation 1 when there was
//!   none); its own object (a container restarted in place, the same pod UID) is continued in its generation.
//! - **Overtaken.** From then on, an object it reads with a higher generation than its own makes it stale, whatever
//!   the attempt counts and Jobs.
//! - **On change** of worker N's results file, its companions (last good copy, route-crash record), markers or
//!   status records (notify events, debounced, and a rescan every period): a guard GET of the status object, the
//!   results file with `If-Match` on the ETag this shard uploaded last (at most one upload every
//!   `min(1 s, --upload-period)`), the changed companions, markers and records, then the status object with
//!   `If-Match` on its last ETag (seq + 1). A failed precondition means another pod wrote: the status object is
//!   read again, and a higher generation makes this one stale; a write after it is conditional on what was read,
//!   never blind.
//! - **Every period**, first: one conditional GET of `containers-status/simulation.cancel` (`If-None-Match` on its last
//!   ETag): present, it writes the local markers `simulation.cancel` and `simulation-N.cancel`; the rest of worker
//!   N's files (logs, CARLA's) through the manifest-based sync, lowest priority, within `run`'s caps; and the
//!   status object again once `--heartbeat` has passed without a write, after a conditional GET of the results
//!   object (a write behind this pod's back is undone). Idle: 1 GET a period plus a GET and a PUT a heartbeat.
//! - **SIGTERM**: within `--flush-budget`, the results file, markers and records, then the status object with
//!   `ended: true`, then `containers-status/uploader-N.done`, then the logs. Exit 0.

use crate::config::{ConfigError, LogFormat, bad};
use crate::publish::s3sync::{KeyMap, StorageSink, SyncReport};
use crate::publish::store::{
    GetCondition, GetOutcome, LocalStore, ObjectStore, PutCondition, PutOutcome, S3Store, StoreError,
};
use crate::volume::manifest::{Manifest, sha256};
use crate::volume::watch::Debounce;
use clap::Args;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{error, info, warn};
use tracing_subscriber::filter::LevelFilter;
use volume::layout::{self, STATUS_DIR};
use volume::markers::{MAX_STATUS_ENTRIES, Marker, Role, WorkerId};
use volume::safe::Root;
use volume::shard::{self, ObjectRef, PodAttempt, ShardStatus};
use volume::status;

/// The flags of `logcopy upload`.
#[derive(Debug, Args)]
pub struct UploadCommand {
    /// The pod volume's root.
    #[arg(long, env = "LOGS_DIR", default_value = volume::layout::mount::LOGS)]
    pub logs: PathBuf,
    /// EvalAI submission id: the S3 prefix.
    #[arg(long, env = "SUBMISSION_ID", value_parser = crate::config::evalai_id)]
    pub submission_id: Option<crate::config::EvalAiId>,
    /// Number of workers (route shards) of the submission; the worker must be one of 1..N.
    #[arg(long = "workers", env = "SUBMISSION_WORKERS", default_value = "4",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// This pod's worker (1..N). Default: WORKER_ID, else JOB_COMPLETION_INDEX + 1 (an Indexed Job's pod).
    #[arg(long, value_name = "N")]
    pub worker: Option<String>,
    /// S3 bucket that receives the worker's keys under `<SUBMISSION_ID>/` (endpoint, region and credentials from
    /// the AWS SDK's standard chain).
    #[arg(long, env = "S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// The embedded local store: objects under OUT/s3/ instead of S3 (S3_BUCKET ignored).
    #[arg(long, value_name = "OUT")]
    pub local: Option<PathBuf>,
    /// Period of the cancel check (one conditional GET), the rescan and the logs' sync (seconds or with a unit).
    #[arg(long, env = "UPLOAD_PERIOD", default_value = "5", value_parser = crate::config::period)]
    pub upload_period: Duration,
    /// The status object is written again after this long without a write, so that the monitor can tell a silent
    /// (lost) pod from an idle one.
    #[arg(long, env = "UPLOAD_HEARTBEAT", default_value = "60", value_parser = crate::config::period)]
    pub heartbeat: Duration,
    /// Trailing-edge debounce of file events (at most this long after the first event of a burst).
    #[arg(long, env = "DEBOUNCE", default_value = "250ms", value_parser = crate::config::span)]
    pub debounce: Duration,
    /// Time allowed for the final flush after SIGTERM or SIGINT (under the pod's grace period).
    #[arg(long, env = "FLUSH_BUDGET", default_value = "20", value_parser = crate::config::span)]
    pub flush_budget: Duration,
    /// Timeout of one S3 request attempt.
    #[arg(long, env = "STORAGE_TIMEOUT", default_value = "60", value_parser = crate::config::period)]
    pub storage_timeout: Duration,
    /// This pod's name (the downward API's metadata.name), written into the status object.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    /// This pod's UID (the downward API's metadata.uid): tells two pods of one attempt apart.
    #[arg(long, env = "POD_UID", default_value = "")]
    pub pod_uid: String,
    /// The worker Job's UID (the downward API's metadata.labels['batch.kubernetes.io/controller-uid']): an object
    /// of an earlier Job of the submission (a resume) is taken over whatever its attempt counts.
    #[arg(long, env = "JOB_UID", default_value = "")]
    pub job_uid: String,
    /// The shard's failed pods before this one: the annotation batch.kubernetes.io/job-index-failure-count
    /// through the downward API (never from a participant-writable file); empty is 0.
    #[arg(long, env = "POD_FAILURE_COUNT", default_value = "", value_parser = count)]
    pub pod_failure_count: u32,
    /// The shard's pods lost to a disruption before this one (an eviction): the annotation
    /// batch.kubernetes.io/job-index-ignored-failure-count; empty is 0.
    #[arg(long, env = "POD_IGNORED_FAILURE_COUNT", default_value = "", value_parser = count)]
    pub pod_ignored_failure_count: u32,
    /// Refuse to upload a results file larger than this many bytes.
    #[arg(long, env = "MAX_RESULTS_BYTES", default_value_t = crate::results::file::DEFAULT_MAX_BYTES)]
    pub max_results_bytes: u64,
    #[command(flatten)]
    pub uploads: crate::config::UploadArgs,
    /// Log format on stdout.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Least severe log level shown (error, warn, info, debug, trace).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: LevelFilter,
}

/// A failure count from the downward API: decimal digits, or empty (the annotation is not set yet) for 0.
fn count(s: &str) -> Result<u32, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    s.parse().map_err(|_| format!("{s:?} is not a count (decimal digits)"))
}

/// Where the objects go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    S3 { bucket: String },
    Local { out: PathBuf },
}

/// The validated configuration of `logcopy upload`.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub logs: PathBuf,
    pub prefix: String,
    pub worker: WorkerId,
    pub target: Target,
    pub period: Duration,
    pub heartbeat: Duration,
    pub debounce: Duration,
    pub flush_budget: Duration,
    pub storage_timeout: Duration,
    pub pod: String,
    pub uid: String,
    pub job: String,
    pub attempt: PodAttempt,
    pub max_results_bytes: u64,
    pub limits: crate::publish::s3sync::UploadLimits,
}

impl UploadConfig {
    /// The upload manifest's target, as `restore` seeds it.
    fn manifest_target(&self) -> String {
        let storage = match &self.target {
            Target::S3 { bucket } => crate::config::StorageTarget::Aws { bucket: bucket.clone(), table: String::new() },
            Target::Local { out } => crate::config::StorageTarget::Local { out: out.clone() },
        };
        crate::restore::manifest_target(&storage, &self.prefix)
    }
}

const WORKER: &str = "--worker / WORKER_ID (or JOB_COMPLETION_INDEX)";

/// The worker of an Indexed Job's pod: `flag` (`--worker`), else `WORKER_ID`, else `JOB_COMPLETION_INDEX` + 1;
/// it must be one of 1..=`workers` (`SUBMISSION_WORKERS`).
pub fn resolve_worker(flag: Option<String>, workers: u32) -> Result<WorkerId, ConfigError> {
    let env = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let (value, from) = match flag.or_else(|| env("WORKER_ID")) {
        Some(v) => (v.trim().to_string(), "--worker / WORKER_ID"),
        None => match env("JOB_COMPLETION_INDEX") {
            Some(i) => match i.parse::<u32>() {
                Ok(i) if i < u32::MAX => ((i + 1).to_string(), "JOB_COMPLETION_INDEX + 1"),
                _ => {
                    return Err(bad(WORKER, format!("JOB_COMPLETION_INDEX {i:?} is not an index (decimal digits)")));
                }
            },
            None => {
                return Err(bad(WORKER, "is required: neither --worker, WORKER_ID nor JOB_COMPLETION_INDEX is set"));
            }
        },
    };
    match value.parse::<u32>() {
        Ok(w) if (1..=workers).contains(&w) => Ok(WorkerId(w)),
        Ok(w) => Err(bad(WORKER, format!("worker {w} (from {from}) is not in 1..={workers} (SUBMISSION_WORKERS)"))),
        Err(_) => Err(bad(WORKER, format!("{value:?} (from {from}) is not a worker number"))),
    }
}

impl UploadCommand {
    pub fn validate(&self) -> Result<UploadConfig, crate::config::ConfigErrors> {
        let mut errors = Vec::new();
        let worker = resolve_worker(self.worker.clone(), self.workers).map_err(|e| errors.push(e)).ok();
        let target = match (&self.local, self.s3_bucket.as_deref().map(str::trim).filter(|b| !b.is_empty())) {
            (Some(out), _) => Some(Target::Local { out: out.clone() }),
            (None, Some(b)) if crate::config::valid_bucket(b) => Some(Target::S3 { bucket: b.to_string() }),
            (None, Some(b)) => {
                errors.push(bad("--s3-bucket / S3_BUCKET", format!("{b:?} is not an S3 bucket name")));
                None
            }
            (None, None) => {
                errors.push(bad("--s3-bucket / S3_BUCKET", "is required (or --local OUT for the embedded store)"));
                None
            }
        };
        let local = matches!(target, Some(Target::Local { .. }));
        let id = crate::config::required("--submission-id / SUBMISSION_ID", self.submission_id, local.then_some(1))
            .map_err(|e| errors.push(e))
            .ok();
        let (Some(worker), Some(target), Some(id)) = (worker, target, id) else {
            return Err(crate::config::ConfigErrors(errors));
        };
        Ok(UploadConfig {
            logs: self.logs.clone(),
            prefix: id.to_string(),
            worker,
            target,
            period: self.upload_period,
            heartbeat: self.heartbeat,
            debounce: self.debounce,
            flush_budget: self.flush_budget,
            storage_timeout: self.storage_timeout,
            pod: self.pod_name.trim().to_string(),
            uid: self.pod_uid.trim().to_string(),
            job: self.job_uid.trim().to_string(),
            attempt: PodAttempt { failures: self.pod_failure_count, ignored: self.pod_ignored_failure_count },
            max_results_bytes: self.max_results_bytes,
            limits: self.uploads.limits(),
        })
    }
}

/// `logcopy upload`: 0 after SIGTERM (the final flush done or out of time, or a stale pod that wrote nothing), 2 on
/// bad configuration.
pub fn main(cmd: UploadCommand) -> ExitCode {
    let cfg = match cmd.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("logcopy upload: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match crate::cli::runtime("upload") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let sdk = match &cfg.target {
        Target::S3 { .. } => {
            let sdk = runtime.block_on(crate::publish::store::sdk_config(cfg.storage_timeout));
            match runtime.block_on(crate::publish::aws::check(&sdk, crate::publish::aws::CHECK_WAIT)) {
                Ok(_) => Some(sdk),
                Err(errors) => {
                    eprintln!("logcopy upload: configuration error: {}", crate::config::ConfigErrors(errors));
                    return ExitCode::from(2);
                }
            }
        }
        Target::Local { .. } => None,
    };
    if let Some(problem) = crate::logging::init(cmd.log_format, cmd.log_level, None) {
        warn!("{problem}");
    }
    let root = match std::fs::create_dir_all(&cfg.logs).and_then(|()| Root::open(&cfg.logs)) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            eprintln!("logcopy upload: configuration error: --logs / LOGS_DIR: {}: {e}", cfg.logs.display());
            return ExitCode::from(2);
        }
    };
    let span = tracing::info_span!("upload", submission = %cfg.prefix, worker = cfg.worker.0);
    let run = async {
        match (&cfg.target, sdk) {
            (Target::S3 { bucket }, Some(sdk)) => {
                run(cfg.clone(), S3Store::new(&sdk, bucket), S3Store::new(&sdk, bucket), root).await
            }
            (Target::Local { out }, _) => {
                let s3 = out.join("s3");
                run(cfg.clone(), LocalStore::new(&s3), LocalStore::new(&s3), root).await
            }
            (Target::S3 { .. }, None) => unreachable!("an S3 target has its SDK configuration"),
        }
    };
    let end = runtime.block_on(tracing::Instrument::instrument(run, span));
    info!("logcopy upload ends: {end}");
    crate::logging::flush();
    ExitCode::SUCCESS
}

/// How the uploader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// SIGTERM: the final flush is through.
    Flushed,
    /// SIGTERM: the final flush ran out of `--flush-budget`.
    OutOfTime,
    /// A newer pod of the shard owns it: nothing was written since.
    Stale,
    /// SIGTERM before this pod could take the shard over (S3 out of reach): nothing to flush.
    NeverOwned,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            End::Flushed => "final flush done",
            End::OutOfTime => "final flush out of time (--flush-budget)",
            End::Stale => "stale pod: a newer pod of the shard owns it; nothing written",
            End::NeverOwned => "the shard was never taken over (S3 out of reach?): nothing written",
        })
    }
}

/// A newer pod of the shard wrote its status object: this pod must write nothing more.
#[derive(Debug)]
struct Stale;

/// What a pass over the volume found to write.
#[derive(Default)]
struct Pending {
    /// The results file's bytes and SHA-256, when they are not what this shard uploaded last.
    results: Option<(Vec<u8>, String)>,
    /// Markers and status records (name, bytes, SHA-256) not uploaded as they are.
    files: Vec<(String, Vec<u8>, String)>,
    markers: Vec<Marker>,
    records: Vec<status::Record>,
}

/// The uploader's state between requests.
struct Uploader<S: ObjectStore> {
    cfg: UploadConfig,
    store: Arc<S>,
    root: Arc<Root>,
    /// The last status object this pod wrote (or the one it took over from, before its first write).
    seq: u64,
    /// This pod's fencing generation (`ShardStatus::generation`): the one it took over with; an object of a
    /// higher generation means another pod took the shard over since.
    generation: u64,
    status_etag: Option<String>,
    /// Whether this pod's first status PUT went through.
    owner: bool,
    /// The results object this shard uploaded last, and the SHA-256 of its content when this pod knows it.
    results: Option<ObjectRef>,
    results_sha: Option<String>,
    /// What the status object says of the volume: markers and records, as last written.
    markers: Vec<Marker>,
    records: Vec<status::Record>,
    /// The SHA-256 of each status file (by name) and results companion (by path) uploaded.
    sent: HashMap<String, String>,
    /// When the results file was last uploaded, and when a change held back by the churn limit is due.
    last_results_put: Option<Instant>,
    results_due: Option<Instant>,
    last_write: Instant,
    cancel_etag: Option<String>,
    cancelled: bool,
    /// The local cancel markers were all written once (a missing one after that was removed behind our back).
    cancel_written: bool,
    warned: std::collections::HashSet<String>,
}

fn hash(bytes: &[u8]) -> String {
    sha256(bytes).map(|(h, _)| h).unwrap_or_default()
}

/// The largest marker file uploaded (markers are empty; a forged large one goes as nothing more than this).
const MAX_MARKER_BYTES: u64 = 4096;
/// The most start and crash markers a pass keeps (the lowest attempts): the status object lists at most
/// `shard::MAX_MARKERS`, start and crash markers first, so this leaves room for the four end markers.
const MAX_ATTEMPT_MARKERS: usize = shard::MAX_MARKERS - 4;
/// The largest route-crash record uploaded (as `restore` caps it).
const MAX_ROUTE_CRASHES_BYTES: u64 = 1 << 20;
/// The largest cancel object read.
const MAX_CANCEL_BYTES: u64 = 4096;

impl<S: ObjectStore> Uploader<S> {
    fn key(&self, rel: &Path) -> String {
        format!("{}/{}", self.cfg.prefix, rel.display())
    }

    fn status_key(&self) -> String {
        self.key(&shard::status_key(self.cfg.worker))
    }

    fn results_rel(&self) -> PathBuf {
        layout::worker_results(self.cfg.worker.0)
    }

    fn warn_once(&mut self, what: String) {
        if self.warned.insert(what.clone()) {
            warn!("{what}");
        }
    }

    /// What this pod would write next, as a status object.
    fn status(&self, ended: bool) -> ShardStatus {
        ShardStatus {
            worker: self.cfg.worker,
            pod: self.cfg.pod.clone(),
            uid: self.cfg.uid.clone(),
            job: self.cfg.job.clone(),
            attempt: self.cfg.attempt,
            generation: self.generation,
            seq: self.seq + 1,
            results: self.results.clone(),
            markers: self.markers.clone(),
            records: self.records.clone(),
            ended,
            at: volume::time::unix_now(),
        }
    }

    /// The status object as it is in the store: `(parsed, etag)`; `None` when missing.
    async fn read_status(&mut self) -> Result<Option<(Option<ShardStatus>, String)>, StoreError> {
        match self.store.get_bytes(&self.status_key(), GetCondition::default(), shard::MAX_BYTES).await? {
            GetOutcome::Found { body, etag } => match ShardStatus::parse(&body) {
                Ok(s) if s.worker == self.cfg.worker => Ok(Some((Some(s), etag))),
                Ok(s) => {
                    self.warn_once(format!("the status object is worker {}'s, not ours: overwritten", s.worker));
                    Ok(Some((None, etag)))
                }
                Err(e) => {
                    self.warn_once(format!("the status object is unreadable ({e}): overwritten"));
                    Ok(Some((None, etag)))
                }
            },
            _ => Ok(None),
        }
    }

    /// Whether `other` is this pod's own object: the container restarted in place (the same pod UID).
    fn own(&self, other: &ShardStatus) -> bool {
        !self.cfg.uid.is_empty() && other.uid == self.cfg.uid
    }

    /// At take-over only: whether `other` (not this pod's own) was written by a newer pod of the same Job by the
    /// attempt counts, so that taking over would be a stale pod's. An earlier Job's object (a resumed submission)
    /// and a pod of equal counts (a duplicate pod, a resumed Job) are taken over.
    fn refuse_take_over(&self, other: &ShardStatus) -> bool {
        let mine = self.status(false);
        other.same_job(&mine) && other.newer_than(&mine)
    }

    /// Once this pod owns the shard: whether `other` is of a higher fencing generation than this pod's (another
    /// pod took the shard over since), whatever the attempt counts and Jobs.
    fn overtaken(&self, other: &ShardStatus) -> bool {
        other.generation > self.generation
    }

    /// At start: reads the status object and takes the shard over, unless a newer pod owns it.
    async fn take_over(&mut self) -> Result<(), Result<Stale, StoreError>> {
        for _ in 0..5 {
            let found = self.read_status().await.map_err(Err)?;
            let (prev, etag) = match found {
                Some((prev, etag)) => (prev, Some(etag)),
                None => (None, None),
            };
            // The fencing generation: this pod's own (restarted in place: continued), else the one read plus one
            // (the first write is conditional on the ETag read, so only one pod takes generation g + 1 over g).
            self.seq = 0;
            self.generation = 1;
            if let Some(prev) = &prev {
                if self.own(prev) {
                    self.seq = prev.seq;
                    self.generation = prev.generation.max(1);
                } else if self.refuse_take_over(prev) {
                    self.stale(prev);
                    return Err(Ok(Stale));
                } else {
                    self.generation = prev.generation.saturating_add(1);
                }
                self.results = prev.results.clone();
                self.results_sha = self.restored_results_sha(prev);
                info!(
                    previous_pod = %prev.pod,
                    previous = %prev.attempt,
                    previous_generation = prev.generation,
                    this = %self.cfg.attempt,
                    generation = self.generation,
                    results = prev.results.is_some(),
                    "taking the shard over from its previous pod"
                );
            }
            self.status_etag = etag;
            self.restored_companions();
            let p = self.scan();
            self.markers = p.markers;
            self.records = p.records;
            match self.put_status(false).await {
                Ok(true) => {
                    self.owner = true;
                    info!(
                        seq = self.seq,
                        generation = self.generation,
                        "this pod owns the shard: status object written"
                    );
                    return Ok(());
                }
                Ok(false) => continue,
                Err(Ok(stale)) => return Err(Ok(stale)),
                Err(Err(e)) => return Err(Err(e)),
            }
        }
        Err(Err(StoreError {
            op: "put",
            key: self.status_key(),
            reason: "the status object kept changing under this pod's writes".into(),
        }))
    }

    /// The SHA-256 of the results object the previous pod uploaded, when the volume holds exactly what `restore
    /// --worker` fetched (seeded into the upload manifest): then it is not uploaded again.
    fn restored_results_sha(&self, prev: &ShardStatus) -> Option<String> {
        let r = prev.results.as_ref()?;
        let target = self.cfg.manifest_target();
        let rel = self.results_rel();
        let entry = Manifest::load(&self.root, &target).files.get(&*rel.to_string_lossy()).cloned()?;
        let meta = self.root.stat(&rel).ok()??;
        (entry.stat_matches(&meta) && entry.size == r.size).then_some(entry.sha256)
    }

    /// Marks this pod stale: one clear line, the local cancel marker of its worker (its supervisors stop).
    fn stale(&mut self, newer: &ShardStatus) {
        error!(
            newer_pod = %newer.pod,
            newer = %newer.attempt,
            newer_generation = newer.generation,
            this = %self.cfg.attempt,
            generation = self.generation,
            "stale pod: a newer pod of the shard owns worker {}'s keys; this pod writes nothing more to S3 and stops \
             its pair (local marker simulation-{}.cancel)",
            self.cfg.worker,
            self.cfg.worker
        );
        let marker = Marker::WorkerCancel { worker: self.cfg.worker };
        if let Err(e) = marker.create_in(&self.root, Path::new(STATUS_DIR)) {
            error!("cannot write the local marker {marker}: {e}");
        }
    }

    /// One pass over the volume: the results file when its content changed, worker N's markers and status records,
    /// and those of them that changed since their upload. Local reads only.
    fn scan(&mut self) -> Pending {
        let mut p = Pending { results: self.read_results(), ..Pending::default() };
        let w = self.cfg.worker;
        let dir = Path::new(STATUS_DIR);
        // Read by name as the folder is read (never the whole listing), at most MAX_STATUS_ENTRIES entries: only
        // this worker's own names are kept, its start and crash markers at most MAX_ATTEMPT_MARKERS of the lowest (a
        // participant can write a million forged `agent-N.crashK`), its end markers and records whatever the cap.
        let mut attempts = std::collections::BTreeSet::<Marker>::new();
        let mut others = std::collections::BTreeSet::<String>::new();
        let scanned = self.root.scan_names(dir, MAX_STATUS_ENTRIES, &mut |name| {
            let Ok(name) = name.to_str() else { return };
            if !shard::is_own_status_file(name, w) {
                return;
            }
            match Marker::parse(name) {
                Some(m @ (Marker::Start { .. } | Marker::Crash { .. })) => {
                    attempts.insert(m);
                    if attempts.len() > MAX_ATTEMPT_MARKERS {
                        attempts.pop_last();
                    }
                }
                _ => {
                    others.insert(name.to_string());
                }
            }
        });
        match scanned {
            Ok(Some(true)) => {
                // More entries than read: the end markers and records are found by name (a stat each).
                self.warn_once(format!(
                    "{} holds more than {MAX_STATUS_ENTRIES} entries: the rest are not read; worker {w}'s end \
                     markers and records are found by name",
                    self.root.display(dir).display()
                ));
                let mut names: Vec<String> =
                    [Role::Agent, Role::Simulator].iter().map(|r| status::file_name(*r, w)).collect();
                for role in [Role::Agent, Role::Simulator] {
                    names.push(Marker::Done { role, worker: w }.file_name());
                    names.push(Marker::Failed { role, worker: w }.file_name());
                }
                for name in names {
                    if self.root.stat(&dir.join(&name)).ok().flatten().is_some() {
                        others.insert(name);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                self.warn_once(format!("cannot list {}: {e}", self.root.display(dir).display()));
                p.markers = self.markers.clone();
                p.records = self.records.clone();
                return p;
            }
        }
        let names: Vec<String> = others.into_iter().chain(attempts.iter().map(Marker::file_name)).collect();
        for name in names {
            let rel = dir.join(&name);
            let max = if Marker::parse(&name).is_some() { MAX_MARKER_BYTES } else { status::MAX_BYTES };
            let Some(bytes) = self.read_local(&rel, max) else { continue };
            match Marker::parse(&name) {
                Some(m) => p.markers.push(m),
                None => match status::Record::parse(&bytes) {
                    Ok(r) if r.worker == w => p.records.push(r),
                    Ok(_) => continue,
                    Err(e) => {
                        // A record half-written or forged: left out until it parses.
                        self.warn_once(format!("not uploaded: {}: {e}", rel.display()));
                        continue;
                    }
                },
            }
            self.queue(&mut p, &rel, bytes);
        }
        p.markers.sort();
        // The results file's companions, which `restore --worker` brings into the next pod: with the results,
        // after the guard (never through the logs' sync).
        let [last_good, route_crashes] = self.companions();
        for (rel, max) in [(last_good, self.cfg.max_results_bytes), (route_crashes, MAX_ROUTE_CRASHES_BYTES)] {
            if let Some(bytes) = self.read_local(&rel, max) {
                self.queue(&mut p, &rel, bytes);
            }
        }
        p
    }

    /// The volume's file `rel`, up to `max` bytes; `None` when it is missing or cannot be read (warned once).
    fn read_local(&mut self, rel: &Path, max: u64) -> Option<Vec<u8>> {
        match self.root.read_capped(rel, max) {
            Ok(b) => b,
            Err(e) => {
                self.warn_once(format!("not uploaded: {}: {e}", rel.display()));
                None
            }
        }
    }

    /// Adds `rel` to what a pass writes when its content is not the one uploaded last.
    fn queue(&self, p: &mut Pending, rel: &Path, bytes: Vec<u8>) {
        let sha = hash(&bytes);
        let rel = rel.to_string_lossy().into_owned();
        if self.sent.get(&rel) != Some(&sha) {
            p.files.push((rel, bytes, sha));
        }
    }

    /// The results file's companions: the supervisor's last good copy and its route-crash record.
    fn companions(&self) -> [PathBuf; 2] {
        companions(self.cfg.worker)
    }

    /// At take-over: the companions that the volume holds exactly as `restore --worker` fetched them (seeded into
    /// the upload manifest) count as sent.
    fn restored_companions(&mut self) {
        let manifest = Manifest::load(&self.root, &self.cfg.manifest_target());
        for rel in self.companions() {
            let Some(entry) = manifest.files.get(&*rel.to_string_lossy()) else { continue };
            if let Ok(Some(meta)) = self.root.stat(&rel)
                && entry.stat_matches(&meta)
            {
                self.sent.insert(rel.to_string_lossy().into_owned(), entry.sha256.clone());
            }
        }
    }

    /// The minimum interval between two results uploads (a participant rewriting its results file all the time
    /// costs one PUT an interval, not one a debounce): 1 s, or `--upload-period` when shorter.
    fn results_gap(&self) -> Duration {
        self.cfg.period.min(Duration::from_secs(1))
    }

    /// At a heartbeat and at the final flush: whether the results object is still the one this pod's status object
    /// names (a conditional GET, a 304 when it is). A stale pod's PUT that landed in the guard's window left its
    /// results there: the volume's results file is then uploaded again (on the ETag found) at this pass.
    async fn verify_results(&mut self) {
        let Some(mine) = self.results.as_ref().map(|r| r.etag.clone()) else { return };
        let key = self.key(&self.results_rel());
        let cond = GetCondition { if_none_match: Some(&mine), if_match: None };
        match self.store.get_bytes(&key, cond, self.cfg.max_results_bytes.max(1 << 20)).await {
            Ok(GetOutcome::NotModified) => {}
            Ok(GetOutcome::Found { etag, .. }) if etag == mine => {}
            Ok(GetOutcome::Found { etag, .. }) => {
                warn!(found = %etag, expected = %mine, "the results object is not this pod's: uploaded again");
                self.results_sha = None;
            }
            Ok(GetOutcome::Missing) => {
                // Written again with If-None-Match: * (an If-Match on a missing key is no precondition failure).
                warn!(expected = %mine, "the results object is missing: uploaded again");
                self.results = None;
                self.results_sha = None;
            }
            Ok(GetOutcome::Changed) => {}
            Err(e) => warn!(error = %e, "cannot check the results object; checked again at the next heartbeat"),
        }
    }

    /// The results file's bytes and SHA-256 when its content is not the one this shard uploaded last.
    fn read_results(&mut self) -> Option<(Vec<u8>, String)> {
        let rel = self.results_rel();
        let bytes = match self.root.read_capped(&rel, self.cfg.max_results_bytes) {
            Ok(b) => b?,
            Err(e) => {
                self.warn_once(format!("not uploaded: {}: {e}", rel.display()));
                return None;
            }
        };
        let sha = hash(&bytes);
        (self.results_sha.as_deref() != Some(&sha)).then_some((bytes, sha))
    }

    /// Before this pod writes anything but its status object: one conditional GET of the status object on the
    /// ETag this pod wrote (a 304 when no other pod wrote since). A newer pod's object makes this pod stale before
    /// it writes a results object or a marker over the newer pod's.
    async fn guard(&mut self) -> Result<(), Stale> {
        let Some(etag) = self.status_etag.clone() else { return Ok(()) };
        let cond = GetCondition { if_none_match: Some(&etag), if_match: None };
        match self.store.get_bytes(&self.status_key(), cond, shard::MAX_BYTES).await {
            Ok(GetOutcome::Found { body, .. }) => match ShardStatus::parse(&body) {
                Ok(other) if self.overtaken(&other) => {
                    self.stale(&other);
                    Err(Stale)
                }
                _ => Ok(()),
            },
            Ok(_) => Ok(()),
            Err(e) => {
                warn!(error = %e, "cannot read the status object before writing; going on (its PUT is conditional)");
                Ok(())
            }
        }
    }

    /// Writes what a pass found: the results object, the changed markers and records, then the status object
    /// when anything it says changed (or `force`: a heartbeat; or `ended`: the final flush).
    async fn apply(&mut self, mut p: Pending, force: bool, ended: bool) -> Result<(), Stale> {
        // The churn limit: a change of the results file or its companions (the supervisor rewrites the last good copy
        // as often as the results file) within results_gap of the last upload waits for its end (the first change
        // after a quiet spell goes at once; the final flush never waits).
        let companions = self.companions().map(|c| c.to_string_lossy().into_owned());
        let companion = |name: &String| companions.contains(name);
        if !ended
            && (p.results.is_some() || p.files.iter().any(|(n, ..)| companion(n)))
            && let Some(last) = self.last_results_put
            && last.elapsed() < self.results_gap()
        {
            self.results_due = Some(last + self.results_gap());
            p.results = None;
            p.files.retain(|(n, ..)| !companion(n));
        }
        if p.results.is_some() || !p.files.is_empty() {
            self.guard().await?;
        }
        let results = match p.results {
            Some((bytes, sha)) => self.put_results(bytes, sha).await?,
            None => false,
        };
        for (name, bytes, sha) in p.files {
            if companion(&name) {
                self.last_results_put = Some(Instant::now());
            }
            let key = self.key(Path::new(&name));
            match self.store.put_bytes(&key, bytes, PutCondition::Always).await {
                Ok(_) => {
                    self.sent.insert(name, sha);
                }
                Err(e) => warn!(error = %e, "upload failed; retried at the next change or period"),
            }
        }
        let news = p.markers != self.markers || p.records != self.records;
        self.markers = p.markers;
        self.records = p.records;
        if results || news || force || ended {
            self.write_status(ended).await?;
        }
        Ok(())
    }

    /// Uploads the results file (its content changed). Returns whether the results object changed.
    async fn put_results(&mut self, bytes: Vec<u8>, sha: String) -> Result<bool, Stale> {
        let rel = self.results_rel();
        let key = self.key(&rel);
        let size = bytes.len() as u64;
        let cond = match &self.results {
            Some(r) => PutCondition::IfMatch(r.etag.clone()),
            None => PutCondition::IfAbsent,
        };
        self.last_results_put = Some(Instant::now());
        self.results_due = None;
        let mut outcome = self.store.put_bytes(&key, bytes.clone(), cond).await;
        if let Ok(PutOutcome::PreconditionFailed) = outcome {
            // Another pod wrote the results object: a newer one makes this pod stale; an older one (which read
            // the status object before this pod took over) is overwritten, on the ETag it left.
            self.check_stale().await?;
            warn!("the results object was written by another (older) pod of the shard: written again by this pod");
            let current = self.results.as_ref().map(|r| r.etag.clone());
            let cond = GetCondition { if_none_match: current.as_deref(), if_match: None };
            // Never unconditional: a write on what was just read, else nothing until the next change or period.
            let cond = match self.store.get_bytes(&key, cond, self.cfg.max_results_bytes.max(1 << 20)).await {
                Ok(GetOutcome::Found { etag, .. }) => Some(PutCondition::IfMatch(etag)),
                Ok(GetOutcome::Missing) => Some(PutCondition::IfAbsent),
                Ok(GetOutcome::NotModified | GetOutcome::Changed) => None,
                Err(e) => {
                    warn!(error = %e, "cannot read the results object after a failed precondition");
                    None
                }
            };
            outcome = match cond {
                Some(cond) => self.store.put_bytes(&key, bytes, cond).await,
                None => Ok(PutOutcome::PreconditionFailed),
            };
        }
        match outcome {
            Ok(PutOutcome::Written { etag }) => {
                info!(bytes = size, etag = %etag, "results file uploaded");
                self.results = Some(ObjectRef { etag, size });
                self.results_sha = Some(sha);
                Ok(true)
            }
            Ok(PutOutcome::PreconditionFailed) => {
                warn!("the results object changed again under this pod's write: retried at the next change or period");
                Ok(false)
            }
            Err(e) => {
                warn!(error = %e, "results upload failed; retried at the next change or period");
                Ok(false)
            }
        }
    }

    /// After a failed precondition: the status object again; `Err(Stale)` when a newer pod wrote it.
    async fn check_stale(&mut self) -> Result<Option<(Option<ShardStatus>, String)>, Stale> {
        match self.read_status().await {
            Ok(Some((Some(other), _))) if self.overtaken(&other) => {
                self.stale(&other);
                Err(Stale)
            }
            Ok(found) => Ok(found),
            Err(e) => {
                warn!(error = %e, "cannot read the status object after a failed precondition");
                Ok(None)
            }
        }
    }

    /// Writes the status object (seq + 1) on its last ETag. `Ok(false)`: the precondition failed and the object was
    /// not newer (read again: the next write goes on its ETag); `Err(Ok(Stale))`: a newer pod owns the shard.
    async fn put_status(&mut self, ended: bool) -> Result<bool, Result<Stale, StoreError>> {
        let st = self.status(ended);
        let cond = match &self.status_etag {
            Some(e) => PutCondition::IfMatch(e.clone()),
            None => PutCondition::IfAbsent,
        };
        match self.store.put_bytes(&self.status_key(), st.to_json().into_bytes(), cond).await {
            Ok(PutOutcome::Written { etag }) => {
                self.status_etag = Some(etag);
                self.seq = st.seq;
                self.last_write = Instant::now();
                Ok(true)
            }
            Ok(PutOutcome::PreconditionFailed) => {
                warn!("the status object was written by another pod: reading it again");
                match self.check_stale().await {
                    Err(Stale) => Err(Ok(Stale)),
                    Ok(found) => {
                        match found {
                            Some((other, etag)) => {
                                self.seq = self.seq.max(other.map_or(0, |o| o.seq));
                                self.status_etag = Some(etag);
                            }
                            // Deleted behind this pod's back: written anew.
                            None => self.status_etag = None,
                        }
                        Ok(false)
                    }
                }
            }
            Err(e) => Err(Err(e)),
        }
    }

    /// One pass over the volume and its writes (`force`: the status object even when nothing changed).
    async fn refresh(&mut self, force: bool) -> Result<(), Stale> {
        if force {
            self.verify_results().await;
        }
        let p = self.scan();
        self.apply(p, force, false).await
    }

    async fn write_status(&mut self, ended: bool) -> Result<(), Stale> {
        for _ in 0..3 {
            match self.put_status(ended).await {
                Ok(true) => return Ok(()),
                Ok(false) => continue,
                Err(Ok(stale)) => return Err(stale),
                Err(Err(e)) => {
                    warn!(error = %e, "status object upload failed; retried at the next change or period");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The cancel check: one conditional GET of the Job-wide cancel object (which the monitor always writes);
    /// present, the local markers `simulation.cancel` and `simulation-N.cancel`. Once cancelled, no more GETs: each
    /// period the local markers are looked for (a stat each) and written again when gone, since the participant's
    /// code can write the status folder (without `--run-as`) and would otherwise keep its pair, and its GPU, running
    /// after a cancel until the Job's deadline.
    async fn check_cancel(&mut self) {
        if self.cancelled {
            self.cancel_written = self.write_cancel_markers(self.cancel_written);
            return;
        }
        let key = self.key(&Path::new(STATUS_DIR).join(Marker::Cancel.file_name()));
        let cond = GetCondition { if_none_match: self.cancel_etag.as_deref(), if_match: None };
        match self.store.get_bytes(&key, cond, MAX_CANCEL_BYTES).await {
            Ok(GetOutcome::Found { etag, .. }) => {
                self.cancel_etag = Some(etag);
                info!("the submission is cancelled (S3 {key}): writing the local cancel markers");
                // Cancelled from now on, whether the markers could be written or not: a marker that could not be
                // written is tried again each period (the next GET would only answer 304 on this ETag).
                self.cancelled = true;
                self.cancel_written = self.write_cancel_markers(false);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cancel check failed; retried at the next period"),
        }
    }

    /// Writes the local cancel markers that are missing; `false` when one cannot be written (tried again at the
    /// next period). `again`: they were written before, so a missing one was removed behind logcopy's back.
    fn write_cancel_markers(&self, again: bool) -> bool {
        let dir = Path::new(STATUS_DIR);
        for m in [Marker::Cancel, Marker::WorkerCancel { worker: self.cfg.worker }] {
            if matches!(self.root.stat(&dir.join(m.file_name())), Ok(Some(_))) {
                continue;
            }
            if again {
                warn!(
                    "the local marker {m} was removed after logcopy wrote it (the participant's code can write the \
                     status folder; --run-as keeps it out): written again"
                );
            }
            if let Err(e) = m.create_in(&self.root, dir) {
                error!("cannot write the local marker {m}: {e}");
                return false;
            }
        }
        true
    }
}

/// Worker `w`'s results companions: the supervisor's last good copy and its route-crash record.
fn companions(w: WorkerId) -> [PathBuf; 2] {
    let results = layout::worker_results(w.0);
    [layout::last_good_path(&results), layout::route_crashes_path(&results)]
}

/// Whether a changed path (from notify) is one the results upload or the status object follows: the worker's
/// results file or anything in the status folder (the logs wait for the period's sync, so that an agent writing
/// its log all the time costs no rescan); its companions go with it.
fn watched_change(root: &Root, cfg: &UploadConfig, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root.path()) else { return false };
    rel == layout::worker_results(cfg.worker.0)
        || companions(cfg.worker).iter().any(|c| rel == c)
        || rel.parent() == Some(Path::new(STATUS_DIR))
}

/// Whether a changed path is logcopy's own (its upload manifest): no reason for another sync.
fn own_file(root: &Root, path: &Path) -> bool {
    path.strip_prefix(root.path()).is_ok_and(|rel| rel.starts_with(layout::LOGCOPY_DIR))
}

/// Without a file event, the logs' sync still runs every this many periods (a lost event delays an upload by at
/// most this; at the default 5 s period, a minute).
const RESYNC_PERIODS: u32 = 12;

/// The logs' sync, on a task of its own so that a large upload never delays a results upload.
type SyncRequest = (bool, Option<oneshot::Sender<SyncReport>>);

fn spawn_sync<S: ObjectStore>(cfg: &UploadConfig, store: S, root: Arc<Root>) -> mpsc::Sender<SyncRequest> {
    let w = cfg.worker;
    let results = layout::worker_results(w.0);
    let [last_good, route_crashes] = companions(w);
    // The results file, its companions and the status folder go by this module's own requests (after the guard, at
    // once); the rest of the worker's keys through the manifest-based sync.
    let keys = KeyMap::new(
        move |rel: &Path| {
            if rel == results || rel == last_good || rel == route_crashes || rel.starts_with(STATUS_DIR) {
                None
            } else {
                shard::key_of(rel, w)
            }
        },
        vec![format!("{}/", layout::worker_dir(w.0).display()), format!("{}/worker-{}/", layout::SIMULATOR_DIR, w.0)],
    );
    let target = cfg.manifest_target();
    let mut sink =
        StorageSink::new(store, root, &cfg.prefix, &target, cfg.period).with_limits(cfg.limits).with_keys(keys);
    let (tx, mut rx) = mpsc::channel::<SyncRequest>(1);
    tokio::spawn(async move {
        while let Some((final_flush, done)) = rx.recv().await {
            let report = sink.sync(final_flush).await;
            if let Some(done) = done {
                let _ = done.send(report);
            }
        }
    });
    tx
}

/// The uploader until SIGTERM (or SIGINT): see the module's documentation. `store` serves the conditional
/// requests, `sync_store` the logs' sync.
pub async fn run<S: ObjectStore>(cfg: UploadConfig, store: S, sync_store: S, root: Arc<Root>) -> End {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot handle SIGTERM: {e}");
            return End::NeverOwned;
        }
    };
    let mut int = signal(SignalKind::interrupt()).ok();
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = async { match int.as_mut() { Some(i) => { i.recv().await; } None => std::future::pending().await } } => {},
        }
    };
    let mut stop = std::pin::pin!(stop);
    info!(
        worker = cfg.worker.0,
        pod = %cfg.pod,
        attempt = %cfg.attempt,
        period = ?cfg.period,
        heartbeat = ?cfg.heartbeat,
        store = %store.describe(),
        "uploader starts"
    );
    let sync = spawn_sync(&cfg, sync_store, root.clone());
    let mut up = Uploader {
        store: Arc::new(store),
        root: root.clone(),
        seq: 0,
        generation: 0,
        status_etag: None,
        owner: false,
        results: None,
        results_sha: None,
        markers: Vec::new(),
        records: Vec::new(),
        sent: HashMap::new(),
        last_results_put: None,
        results_due: None,
        last_write: Instant::now(),
        cancel_etag: None,
        cancelled: false,
        cancel_written: false,
        warned: Default::default(),
        cfg,
    };
    let watched = crate::volume::watch::watch(root.path());
    let (_watcher, mut events) = match watched {
        Ok((w, rx)) => (Some(w), rx),
        Err(e) => {
            warn!("cannot watch the volume ({e}): changes are seen at each period's rescan");
            (None, mpsc::channel(1).1)
        }
    };
    let mut debounce = Debounce::new(up.cfg.debounce);
    let mut tick = tokio::time::interval(up.cfg.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stale = false;
    // Whether a file event came since the logs' last sync, and the periods since it.
    let (mut logs_dirty, mut idle_periods) = (true, 0u32);
    loop {
        let deadline = debounce.deadline();
        // A results change held back by the churn limit.
        let due = up.results_due;
        tokio::select! {
            () = &mut stop => break,
            Some(paths) = events.recv(), if !stale => {
                if paths.is_empty() || paths.iter().any(|p| watched_change(&root, &up.cfg, p)) {
                    debounce.event(Instant::now());
                }
                logs_dirty |= paths.is_empty() || paths.iter().any(|p| !own_file(&root, p));
            }
            () = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                debounce.clear();
                if up.owner && up.refresh(false).await.is_err() {
                    stale = true;
                }
            }
            () = async { tokio::time::sleep_until(due.unwrap_or_else(Instant::now)).await }, if due.is_some() && !stale => {
                up.results_due = None;
                if up.owner && up.refresh(false).await.is_err() {
                    stale = true;
                }
            }
            _ = tick.tick(), if !stale => {
                // The cancel first, every tick: a pod that cannot take the shard over still stops its pair.
                up.check_cancel().await;
                if !up.owner {
                    match up.take_over().await {
                        Ok(()) => {}
                        Err(Ok(Stale)) => { stale = true; continue; }
                        Err(Err(e)) => { warn!(error = %e, "cannot take the shard over yet; retried at the next period"); continue; }
                    }
                }
                let beat = up.last_write.elapsed() >= up.cfg.heartbeat;
                if up.refresh(beat).await.is_err() {
                    stale = true;
                    continue;
                }
                // The logs' sync walks the volume: only after a change (or every RESYNC_PERIODS, for lost events).
                idle_periods += 1;
                if (logs_dirty || idle_periods >= RESYNC_PERIODS) && sync.try_send((false, None)).is_ok() {
                    logs_dirty = false;
                    idle_periods = 0;
                }
            }
        }
        if stale {
            debounce.clear();
        }
    }
    if stale {
        return End::Stale;
    }
    if !up.owner {
        return End::NeverOwned;
    }
    info!(budget = ?up.cfg.flush_budget, "SIGTERM: final flush (results, markers and records, the status object, uploader done, then the logs)");
    let budget = up.cfg.flush_budget;
    let flush = async {
        up.verify_results().await;
        let p = up.scan();
        if up.apply(p, false, true).await.is_err() {
            return End::Stale;
        }
        let done = Path::new(STATUS_DIR).join(shard::uploader_done_name(up.cfg.worker));
        if let Err(e) = up.store.put_bytes(&up.key(&done), Vec::new(), PutCondition::Always).await {
            warn!(error = %e, "cannot write {}", done.display());
        }
        let (tx, rx) = oneshot::channel();
        if sync.send((true, Some(tx))).await.is_ok()
            && let Ok(report) = rx.await
        {
            info!(uploaded = report.uploaded, failed = report.failed, "final sync done");
        }
        End::Flushed
    };
    match tokio::time::timeout(budget, flush).await {
        Ok(end) => end,
        Err(_) => {
            warn!(budget = ?budget, "the final flush ran out of --flush-budget");
            End::OutOfTime
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_comes_from_the_flag_or_the_index() {
        // The flag is checked first (the environment of the test process has neither variable).
        assert_eq!(resolve_worker(Some("3".into()), 12).unwrap(), WorkerId(3));
        let e = resolve_worker(Some("13".into()), 12).unwrap_err();
        assert!(e.reason.contains("not in 1..=12"), "{e}");
        let e = resolve_worker(Some("0".into()), 12).unwrap_err();
        assert!(e.reason.contains("not in 1..=12"), "{e}");
        let e = resolve_worker(Some("x".into()), 12).unwrap_err();
        assert!(e.reason.contains("not a worker number"), "{e}");
        assert_eq!(count("").unwrap(), 0);
        assert_eq!(count(" 2 ").unwrap(), 2);
        assert!(count("-1").is_err());
    }
}

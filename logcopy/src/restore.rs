//! `logcopy restore`: the init container's job, which upstream does with aws-cli (so the images need no aws-cli).
//!
//! On a resumed submission (`RESUME` set): delete `containers-status/` under the submission's S3 prefix (the
//! markers of the earlier run must not end the new one), download every other object into the volume, recreate
//! an empty `containers-status/`, and seed the upload manifest with what was downloaded (size and SHA-256), so
//! that the daemon uploads none of it again. On a fresh submission: create the folders the workers write to.
//! Folders get mode 0777, as upstream's init container makes them: every container (logcopy's numeric user, the
//! simulator's `carla`, the participant's, often root) writes its markers and logs there.

use crate::config::{RestoreConfig, StorageTarget};
use crate::publish::s3sync::excluded;
use crate::publish::store::{LocalStore, ObjectStore, S3Store};
use crate::volume::Root;
use crate::volume::manifest::{Entry, Manifest, mtime_ns, sha256};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};
use volume::safe::Kind;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Store(#[from] crate::publish::store::StoreError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub downloaded: usize,
    pub bytes: u64,
    pub status_markers_deleted: usize,
    pub skipped: usize,
}

fn io(path: PathBuf) -> impl FnOnce(std::io::Error) -> RestoreError {
    move |source| RestoreError::Io { path, source }
}

/// Creates the folder `rel` beneath the volume root (no link followed on the way: `agent -> /outside` is an error,
/// never a folder made outside) and gives it `mode`.
fn make_dir(root: &Root, rel: &Path, mode: u32) -> Result<(), RestoreError> {
    root.create_dir_all(rel).map_err(io(root.display(rel)))?;
    root.set_dir_mode(rel, mode).map_err(io(root.display(rel)))
}

/// Writable by every container's user, as upstream.
const OPEN_DIR: u32 = 0o777;
/// `--private-status`: writable by the owner (logcopy) and the group (the pod's fsGroup: the supervisors, the
/// simulator's user, logcopy), not by the evaluator's `--run-as` user; setgid, so new files keep the group.
const PRIVATE_DIR: u32 = 0o2775;

/// The mode of a restored file: 0666 where the evaluator writes (agent/agentN/), and everywhere unless
/// `--private-status`; 0664 in the folders that it keeps private.
fn file_mode(cfg: &RestoreConfig, rel: &str) -> u32 {
    let evaluators = volume::layout::in_worker_dir(Path::new(rel));
    if cfg.private_status && !evaluators { 0o664 } else { 0o666 }
}

/// The manifest target a run with this storage uses (must match the daemon's).
pub fn manifest_target(storage: &StorageTarget, prefix: &str) -> String {
    match storage {
        StorageTarget::Aws { bucket, .. } => format!("s3://{bucket}/{prefix}"),
        StorageTarget::Local { out } => format!("local:{}/{prefix}", out.join("s3").display()),
    }
}

pub async fn restore(cfg: &RestoreConfig) -> Result<RestoreReport, RestoreError> {
    let prefix = cfg.submission_id.to_string();
    // The volume root is the operator's (trusted); everything beneath it is reached through it, no link followed.
    std::fs::create_dir_all(&cfg.logs).map_err(io(cfg.logs.clone()))?;
    let root = Arc::new(Root::open(&cfg.logs).map_err(io(cfg.logs.clone()))?);
    if let Some(w) = cfg.worker {
        return restore_worker(cfg, &root, &prefix, w).await;
    }
    let report = if cfg.resume {
        match &cfg.storage {
            StorageTarget::Aws { bucket, .. } => {
                let sdk = crate::publish::store::sdk_config(crate::publish::store::DEFAULT_STORAGE_TIMEOUT).await;
                download(Arc::new(S3Store::new(&sdk, bucket)), &root, cfg, &prefix).await?
            }
            StorageTarget::Local { out } => {
                download(Arc::new(LocalStore::new(&out.join("s3"))), &root, cfg, &prefix).await?
            }
        }
    } else {
        RestoreReport::default()
    };
    let shared = if cfg.private_status { PRIVATE_DIR } else { OPEN_DIR };
    for d in volume::layout::GEN1_DIRS {
        make_dir(&root, Path::new(d), shared)?;
    }
    for i in 1..=cfg.workers {
        make_dir(&root, &volume::layout::worker_dir(i), OPEN_DIR)?;
    }
    Ok(report)
}

/// A key's path under the volume, when it is a plain relative path.
fn relative(key: &str, prefix: &str) -> Option<PathBuf> {
    let rel = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let p = Path::new(rel);
    (!rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))).then(|| p.to_path_buf())
}

/// Downloads in flight at once.
const CONCURRENCY: usize = 8;

/// How often a long restore says how far it is.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The progress line of a restore: objects and bytes done out of the total, and the rate, at most every
/// [`PROGRESS_EVERY`] (a restore of thousands of objects takes minutes; an init container that says nothing for
/// minutes looks hung).
struct Progress {
    objects: usize,
    bytes: u64,
    start: std::time::Instant,
    last: std::time::Instant,
}

impl Progress {
    fn new(objects: usize, bytes: u64) -> Progress {
        let now = std::time::Instant::now();
        info!(objects, bytes, "restoring the volume from the store");
        Progress { objects, bytes, start: now, last: now }
    }

    fn tell(&mut self, done: usize, bytes: u64) {
        if self.last.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last = std::time::Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        info!(
            "restoring: {done}/{} objects, {:.1}/{:.1} MiB, {:.1} MiB/s",
            self.objects,
            bytes as f64 / MIB,
            self.bytes as f64 / MIB,
            bytes as f64 / MIB / secs
        );
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Streams one object into the volume, beneath its root (a link on the way is an error, one at the file's place
/// is replaced, never written through), and returns its manifest entry.
async fn fetch<S: ObjectStore>(
    store: Arc<S>,
    root: Arc<Root>,
    key: String,
    rel: PathBuf,
    mode: u32,
) -> Result<(u64, Entry), RestoreError> {
    let err = || io(root.display(&rel));
    if let Some(dir) = rel.parent() {
        root.create_dir_all(dir).map_err(err())?;
    }
    // Whatever the umask: 0666 lets every container's user (the participant's rewrites its results file) write it.
    let file = root.create_file(&rel, mode).map_err(err())?;
    let mut again = file.try_clone().map_err(err())?;
    let n = store.get(&key, file).await?;
    again.seek(SeekFrom::Start(0)).map_err(err())?;
    let meta = again.metadata().map_err(err())?;
    let (hash, size) = sha256(again).map_err(err())?;
    Ok((n, Entry { size, sha256: hash, mtime_ns: mtime_ns(&meta), ino: meta.ino() }))
}

async fn download<S: ObjectStore>(
    store: Arc<S>,
    root: &Arc<Root>,
    cfg: &RestoreConfig,
    prefix: &str,
) -> Result<RestoreReport, RestoreError> {
    let mut report = RestoreReport::default();
    let objects = store.list(&format!("{prefix}/")).await?;
    let status_prefix = format!("{prefix}/{}/", volume::layout::STATUS_DIR);
    let markers: Vec<String> =
        objects.iter().filter(|o| o.key.starts_with(&status_prefix)).map(|o| o.key.clone()).collect();
    store.delete(&markers).await?;
    report.status_markers_deleted = markers.len();
    let status_dir = Path::new(volume::layout::STATUS_DIR);
    if let Ok(Some(entries)) = root.list(status_dir) {
        for e in entries.iter().filter(|e| e.kind != Kind::Dir) {
            let _ = root.remove_file(&status_dir.join(&e.name));
        }
    }
    let mut manifest = Manifest::load(root, &manifest_target(&cfg.storage, prefix));
    let mut pending = Vec::new();
    for o in objects.iter().filter(|o| !o.key.starts_with(&status_prefix)) {
        match relative(&o.key, prefix).filter(|r| !excluded(r)) {
            Some(rel) => pending.push((o.key.clone(), rel)),
            None => {
                warn!(key = %o.key, "not restored: not a plain path under the submission");
                report.skipped += 1;
            }
        }
    }
    let total_bytes: u64 = objects.iter().filter(|o| !o.key.starts_with(&status_prefix)).map(|o| o.size).sum();
    let mut progress = Progress::new(pending.len(), total_bytes);
    let mut pending = pending.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut first_error = None;
    loop {
        progress.tell(report.downloaded, report.bytes);
        while running.len() < CONCURRENCY {
            let Some((key, rel)) = pending.next() else { break };
            let (store, root) = (store.clone(), root.clone());
            let mode = file_mode(cfg, &rel.to_string_lossy());
            running.spawn(async move { (rel.clone(), fetch(store, root, key, rel, mode).await) });
        }
        let Some(done) = running.join_next().await else { break };
        let Ok((rel, result)) = done else { continue };
        match result {
            Ok((n, entry)) => {
                manifest.files.insert(rel.to_string_lossy().into_owned(), entry);
                report.downloaded += 1;
                report.bytes += n;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    make_dir(root, Path::new(volume::layout::LOGCOPY_DIR), if cfg.private_status { PRIVATE_DIR } else { OPEN_DIR })?;
    manifest.save(root).map_err(|e| RestoreError::Io { path: e.path, source: e.source })?;
    info!(
        downloaded = report.downloaded,
        bytes = report.bytes,
        markers_deleted = report.status_markers_deleted,
        from = %store.describe(),
        "volume restored"
    );
    Ok(report)
}

/// The files an Indexed Job's worker pod restores for worker `w`, by volume path: its results file (the
/// evaluator's checkpoint), the supervisor's last good copy and its route-crash record beside it. Not the logs, not
/// the markers: each pod starts with a fresh in-pod attempt budget (the shard's pod-level budget is the Job's
/// `backoffLimitPerIndex`).
pub fn worker_files(w: volume::markers::WorkerId) -> [PathBuf; 3] {
    let results = volume::layout::worker_results(w.0);
    [volume::layout::last_good_path(&results), volume::layout::route_crashes_path(&results), results]
}

/// The largest route-crash record restored (it holds a count per route).
const MAX_ROUTE_CRASHES_BYTES: u64 = 1 << 20;

/// `logcopy restore --worker N`: the pod volume's folders (worker N's alone among the workers' folders), then
/// worker N's files of [`worker_files`] by a GET of each exact key (no LIST: upstream's `*${WORKER_ID}.json` also
/// matched workers 11, 21, ...), each capped, written beneath the root (no link followed) and seeded into the upload
/// manifest so that the uploader does not upload them again. A missing object (the shard's first pod) is skipped.
async fn restore_worker(
    cfg: &RestoreConfig,
    root: &Arc<Root>,
    prefix: &str,
    w: volume::markers::WorkerId,
) -> Result<RestoreReport, RestoreError> {
    let shared = if cfg.private_status { PRIVATE_DIR } else { OPEN_DIR };
    for d in volume::layout::GEN1_DIRS {
        make_dir(root, Path::new(d), shared)?;
    }
    make_dir(root, &volume::layout::worker_dir(w.0), OPEN_DIR)?;
    let report = match &cfg.storage {
        StorageTarget::Aws { bucket, .. } => {
            let sdk = crate::publish::store::sdk_config(crate::publish::store::DEFAULT_STORAGE_TIMEOUT).await;
            fetch_worker(&S3Store::new(&sdk, bucket), root, cfg, prefix, w).await?
        }
        StorageTarget::Local { out } => fetch_worker(&LocalStore::new(&out.join("s3")), root, cfg, prefix, w).await?,
    };
    Ok(report)
}

async fn fetch_worker<S: ObjectStore>(
    store: &S,
    root: &Root,
    cfg: &RestoreConfig,
    prefix: &str,
    w: volume::markers::WorkerId,
) -> Result<RestoreReport, RestoreError> {
    use crate::publish::store::{GetCondition, GetOutcome};
    use std::io::Write;
    let mut report = RestoreReport::default();
    let mut manifest = Manifest::load(root, &manifest_target(&cfg.storage, prefix));
    info!(worker = w.0, from = %store.describe(), "restoring worker {w}'s files from the store (exact keys)");
    for rel in worker_files(w) {
        let key = format!("{prefix}/{}", rel.display());
        let max = if rel == volume::layout::route_crashes_path(&volume::layout::worker_results(w.0)) {
            MAX_ROUTE_CRASHES_BYTES
        } else {
            crate::results::file::DEFAULT_MAX_BYTES
        };
        let body = match store.get_bytes(&key, GetCondition::default(), max).await? {
            GetOutcome::Found { body, .. } => body,
            _ => {
                info!(key = %key, "not in the store: nothing to restore");
                continue;
            }
        };
        let err = || io(root.display(&rel));
        let mut file = root.create_file(&rel, file_mode(cfg, &rel.to_string_lossy())).map_err(err())?;
        file.write_all(&body).map_err(err())?;
        file.sync_all().map_err(err())?;
        let meta = file.metadata().map_err(err())?;
        let (hash, size) = sha256(&body[..]).map_err(err())?;
        manifest.files.insert(
            rel.to_string_lossy().into_owned(),
            Entry { size, sha256: hash, mtime_ns: mtime_ns(&meta), ino: meta.ino() },
        );
        report.downloaded += 1;
        report.bytes += size;
        info!(key = %key, bytes = size, "restored");
    }
    manifest.save(root).map_err(|e| RestoreError::Io { path: e.path, source: e.source })?;
    info!(worker = w.0, downloaded = report.downloaded, bytes = report.bytes, "worker {w}'s files restored");
    Ok(report)
}

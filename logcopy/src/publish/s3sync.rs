//! Keeping S3 in step with the volume: upload what changed since its last upload, and nothing else.
//!
//! Replaces upstream's `aws s3 sync /logs s3://$S3_BUCKET/$SUBMISSION_ID` every 10 s (a LIST of the whole prefix
//! and a dozen processes per cycle, about 48 requests a minute when nothing changes). Each sync walks the volume
//! without following links, skips files whose size, mtime and inode match the manifest, hashes the others, and
//! uploads those whose content differs from what was uploaded. A file that keeps changing (a log) goes again at
//! most once every `LOGS_PERIOD`, and always at the final flush. Steady state makes no S3 request.
//!
//! The plan (the walk, a stat of every file, the hashes) is blocking file work, and large: a rescan of 100,000
//! files costs about 0.8 s of CPU, the hash of a 16 GiB sparse file about a minute. It runs on a thread of its own
//! (a [`Lane`]), never on the runtime's one thread, which the volume loop and the other sinks share. It hands each file
//! to upload over a channel as soon as it is hashed, smallest first, so that uploads start at once and a huge file
//! holds back no other. It stops between two files or two hashed chunks when told: when the run ends during a
//! periodic sync (the final sync then starts at once), and when the sink is dropped (its final flush out of time).

use super::store::{ObjectStore, PutStats, StoreError};
use super::{End, Lane, Sink, SinkEvent, Snapshot, release_free_memory};
use crate::volume::TEMP_PREFIX;
use crate::volume::manifest::{Entry, HASH_CHUNK, MANIFEST_REL, Manifest, mtime_ns, sha256_until};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn};
use volume::layout::{self, UploadPriority, upload_priority};
use volume::safe::{Root, object_key};

/// Uploads in flight at once.
const CONCURRENCY: usize = 8;

/// logcopy's own log on the volume. Each sync that uploads something logs a line there, so uploading it on its own
/// would feed a loop that never lets an idle volume rest: outside the final flush it goes only along with another
/// upload.
const OWN_LOG_REL: &str = crate::volume::LOG_REL;

/// What the sync may upload: caps on what the participant's code can make it upload (or hash, or hold in memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// A larger file is neither hashed nor uploaded (`--max-upload-bytes`).
    pub max_file_bytes: u64,
    /// Entries (files and folders) of one worker's folder listed, besides its results files (`--max-worker-files`).
    pub max_worker_files: u64,
    /// Bytes uploaded from one worker's folder, besides its results files (`--max-worker-upload-bytes`).
    pub max_worker_bytes: u64,
}

/// `--max-upload-bytes`: 5 GiB, above CARLA's recordings of a route (tens to a few hundred MB).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 5 << 30;
/// `--max-worker-files`: an evaluator writes a handful of files, an agent its own logs; each entry listed costs
/// about a kilobyte of memory while a sync runs (the walk, the plan, the manifest).
pub const DEFAULT_MAX_WORKER_FILES: u64 = 10_000;
/// `--max-worker-upload-bytes`.
pub const DEFAULT_MAX_WORKER_UPLOAD_BYTES: u64 = 20 << 30;

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            max_file_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_worker_files: DEFAULT_MAX_WORKER_FILES,
            max_worker_bytes: DEFAULT_MAX_WORKER_UPLOAD_BYTES,
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub uploaded: usize,
    pub bytes: u64,
    pub requests: u32,
    /// Changed, but uploaded less than `LOGS_PERIOD` ago: left for a later sync.
    pub deferred: usize,
    pub failed: usize,
}

/// Whether a path under the volume is never uploaded: the manifest and logcopy's temporary files.
pub fn excluded(rel: &Path) -> bool {
    rel == Path::new(MANIFEST_REL) || rel.file_name().is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX))
}

/// One upload, hashed. The file is opened again (beneath the root, no link followed) only when its upload starts,
/// so a sync of 100,000 changed files holds at most CONCURRENCY of them open.
struct Job {
    rel: String,
    key: String,
    path: PathBuf,
    entry: Entry,
    /// The volume root, beneath which the upload opens the file.
    root: Arc<Root>,
}

/// Which files of the volume a sink uploads and under which key (relative to the prefix): `None` leaves a file out.
/// The default keeps every file under its own path; an Indexed Job's uploader keeps its worker's keys
/// (`volume::shard::key_of`), its monitor its own outputs.
#[derive(Clone)]
pub struct KeyMap {
    map: Arc<KeyFn>,
    /// The key folders (relative to the prefix, ending in `/`) the end's check lists instead of the whole prefix.
    lists: Option<Vec<String>>,
}

impl Default for KeyMap {
    fn default() -> Self {
        KeyMap { map: Arc::new(|rel: &Path| Some(rel.to_path_buf())), lists: None }
    }
}

impl KeyMap {
    /// `map` chooses and names the files; the end's check lists only `lists` (key folders ending in `/`, relative
    /// to the prefix), which must hold every key `map` gives.
    pub fn new(map: impl Fn(&Path) -> Option<PathBuf> + Send + Sync + 'static, lists: Vec<String>) -> KeyMap {
        KeyMap { map: Arc::new(map), lists: Some(lists) }
    }
}

/// A key map's function: a volume path to its key below the prefix, or `None`.
type KeyFn = dyn Fn(&Path) -> Option<PathBuf> + Send + Sync;

/// What the sink remembers between syncs; lent to the plan's thread for each sync.
#[derive(Default)]
struct Ledger {
    manifest: Manifest,
    last_upload: HashMap<String, Instant>,
    warned: HashSet<String>,
}

impl Ledger {
    fn warn_once(&mut self, what: String) {
        if self.warned.insert(what.clone()) {
            warn!("{what}");
        }
    }
}

/// Stops the plan in progress when set: by the run's end during a periodic sync, and for good when the sink is
/// dropped (a final flush out of budget is aborted), so that no blocking thread hashes on for a sink that is gone
/// (the runtime waits for its blocking threads before the process exits).
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub struct StorageSink<S: ObjectStore> {
    store: Arc<S>,
    root: Arc<Root>,
    prefix: String,
    ledger: Ledger,
    min_interval: Duration,
    limits: UploadLimits,
    keys: KeyMap,
    stop: Stop,
    /// The plans' thread. Not the local store's: a plan waits for uploads to take its jobs.
    lane: Lane,
}

impl<S: ObjectStore> StorageSink<S> {
    /// `target` names the destination in the manifest (`s3://bucket/prefix`); `prefix` is the key prefix.
    pub fn new(store: S, root: Arc<Root>, prefix: &str, target: &str, min_interval: Duration) -> Self {
        StorageSink {
            store: Arc::new(store),
            ledger: Ledger { manifest: Manifest::load(&root, target), ..Ledger::default() },
            root,
            prefix: prefix.to_string(),
            min_interval,
            limits: UploadLimits::default(),
            keys: KeyMap::default(),
            stop: Stop(Arc::new(AtomicBool::new(false))),
            lane: Lane::new("logcopy-s3-plan"),
        }
    }

    /// With caps other than the defaults.
    pub fn with_limits(mut self, limits: UploadLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Uploading only the files `keys` keeps, under the keys it gives.
    pub fn with_keys(mut self, keys: KeyMap) -> Self {
        self.keys = keys;
        self
    }

    /// At the end: one LIST of the prefix, compared with the manifest by size. An object that is missing or of
    /// another size (an upload of a killed logcopy that the server completed after a newer one, or a change made
    /// behind our back) is forgotten, so that the next pass uploads it again. Returns how many.
    async fn verify(&mut self) -> usize {
        let folders = match &self.keys.lists {
            None => vec![format!("{}/", self.prefix)],
            Some(l) => l.iter().map(|f| format!("{}/{f}", self.prefix)).collect(),
        };
        let mut listed = Vec::new();
        for folder in folders {
            match self.store.list(&folder).await {
                Ok(l) => listed.extend(l),
                Err(e) => {
                    warn!(error = %e, "cannot list the uploaded objects to check them");
                    return 0;
                }
            }
        }
        let remote: HashMap<&str, u64> = listed
            .iter()
            .filter_map(|o| Some((o.key.strip_prefix(&self.prefix)?.strip_prefix('/')?, o.size)))
            .collect();
        let stale: Vec<String> = self
            .ledger
            .manifest
            .files
            .iter()
            .filter(|(rel, e)| remote.get(rel.as_str()) != Some(&e.size))
            .map(|(rel, _)| rel.clone())
            .collect();
        for rel in &stale {
            self.ledger.manifest.files.remove(rel);
        }
        if !stale.is_empty() {
            warn!(
                objects = stale.len(),
                first = %stale[0],
                "objects in the store differ from what was uploaded (an interrupted upload completed late?): \
                 uploading them again"
            );
        }
        stale.len()
    }

    /// One sync pass.
    pub async fn sync(&mut self, final_flush: bool) -> SyncReport {
        self.sync_until(final_flush, std::future::pending()).await.unwrap_or_default()
    }

    /// One sync pass, which stops where it is once `ending` resolves (the run ends): the plan between two files or
    /// two hashed chunks, no further upload started (those under way finish). `None` when it stopped so; what it
    /// did not upload, the final sync does.
    async fn sync_until(&mut self, final_flush: bool, ending: impl Future<Output = ()>) -> Option<SyncReport> {
        self.stop.0.store(false, Ordering::Relaxed);
        let plan = Plan {
            root: self.root.clone(),
            prefix: self.prefix.clone(),
            min_interval: self.min_interval,
            limits: self.limits,
            keys: self.keys.clone(),
            final_flush,
            now: Instant::now(),
            stop: self.stop.0.clone(),
        };
        let (jobs_tx, mut jobs) = mpsc::channel(CONCURRENCY);
        let mut planning = std::pin::pin!(self.lane.run(std::mem::take(&mut self.ledger), move |ledger| {
            let planned = plan.run(ledger, &jobs_tx);
            release_free_memory();
            planned
        }));
        let mut ending = std::pin::pin!(ending);
        let mut planned = None;
        let (mut jobs_open, mut stopped) = (true, false);
        let mut running = JoinSet::new();
        let mut uploaded: Vec<(String, Entry, Result<PutStats, StoreError>, Instant)> = Vec::new();
        while planned.is_none() || (jobs_open && !stopped) || !running.is_empty() {
            tokio::select! {
                p = &mut planning, if planned.is_none() => planned = Some(p),
                job = jobs.recv(), if jobs_open && !stopped && running.len() < CONCURRENCY => match job {
                    Some(job) => {
                        let store = self.store.clone();
                        running.spawn(async move {
                            let r = match job.root.open_read(&job.path) {
                                Ok((file, _)) => store.put(&job.key, file, job.entry.size).await,
                                Err(e) => Err(StoreError { op: "open", key: job.key.clone(), reason: e.to_string() }),
                            };
                            (job.rel, job.entry, r, Instant::now())
                        });
                    }
                    None => jobs_open = false,
                },
                Some(done) = running.join_next() => {
                    if let Ok(done) = done {
                        uploaded.push(done);
                    }
                }
                () = &mut ending, if !stopped => {
                    stopped = true;
                    self.stop.0.store(true, Ordering::Relaxed);
                    // A plan waiting to hand over a job is released (its send fails) and returns.
                    jobs.close();
                }
            }
        }
        let (ledger, planned) = planned.unwrap_or_default();
        self.ledger = ledger;
        let mut report = SyncReport { deferred: planned.deferred, ..SyncReport::default() };
        let mut manifest_changed = planned.manifest_changed;
        for (rel, entry, result, at) in uploaded {
            match result {
                Ok(stats) => {
                    report.uploaded += 1;
                    report.bytes += entry.size;
                    report.requests += stats.requests;
                    self.ledger.last_upload.insert(rel.clone(), at);
                    self.ledger.manifest.files.insert(rel, entry);
                    manifest_changed = true;
                }
                Err(e) => {
                    report.failed += 1;
                    warn!(error = %e, "upload failed; it will be retried at the next sync");
                }
            }
        }
        if manifest_changed {
            // A manifest of 100,000 files is megabytes of JSON, written atomically (fsync): blocking work too.
            let root = self.root.clone();
            let (ledger, saved) =
                self.lane.run(std::mem::take(&mut self.ledger), move |l: &mut Ledger| l.manifest.save(&root)).await;
            self.ledger = ledger;
            if let Err(e) = saved {
                error!("cannot save the upload manifest: {e}");
            }
        }
        if report.uploaded + report.failed > 0 {
            info!(
                uploaded = report.uploaded,
                bytes = report.bytes,
                requests = report.requests,
                failed = report.failed,
                deferred = report.deferred,
                store = %self.store.describe(),
                "volume synced"
            );
        }
        (!stopped).then_some(report)
    }
}

/// One plan: what changed on the volume since its upload, hashed. Blocking file I/O, run on the plans' thread.
struct Plan {
    root: Arc<Root>,
    prefix: String,
    min_interval: Duration,
    limits: UploadLimits,
    keys: KeyMap,
    final_flush: bool,
    now: Instant,
    stop: Arc<AtomicBool>,
}

/// What a plan tells besides the jobs it sent.
#[derive(Default)]
struct Planned {
    /// Changed, but uploaded less than `LOGS_PERIOD` ago.
    deferred: usize,
    /// The manifest took a new stat for unchanged content.
    manifest_changed: bool,
}

impl Plan {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Walks and stats the volume, then hashes what changed and sends each file whose content differs from its
    /// upload as soon as it is hashed. Two passes: first the files the submission is judged and restored by (found
    /// by a walk that lists only the folders that can hold them), then the rest; each by class, then smallest
    /// first. Returns early when stopped, or when nobody takes the jobs.
    fn run(&self, ledger: &mut Ledger, jobs: &mpsc::Sender<Job>) -> Planned {
        let mut out = Planned::default();
        let mut send = Sending::default();
        let mut seen = HashSet::new();
        let first = |rel: &Path| self.stopped() || excluded(rel) || !layout::may_hold_upload_priority(rel);
        if !self.pass(&first, true, ledger, jobs, &mut out, &mut send, &mut seen) {
            return out;
        }
        // The rest, with at most `max_worker_files` entries of each worker's folder listed: a million files there
        // cost neither a million entries in memory nor a million uploads.
        let listed: RefCell<HashMap<PathBuf, u64>> = RefCell::default();
        let capped: RefCell<HashSet<PathBuf>> = RefCell::default();
        let rest = |rel: &Path| {
            if self.stopped() || excluded(rel) {
                return true;
            }
            let Some(folder) = layout::worker_folder(rel) else { return false };
            if upload_priority(rel) != UploadPriority::Rest {
                return false;
            }
            let mut listed = listed.borrow_mut();
            let n = listed.entry(folder.to_path_buf()).or_default();
            *n += 1;
            if *n > self.limits.max_worker_files {
                capped.borrow_mut().insert(folder.to_path_buf());
                return true;
            }
            false
        };
        // A walk cut short by a stop lists less than the volume holds: only a whole pass prunes.
        if self.pass(&rest, false, ledger, jobs, &mut out, &mut send, &mut seen) && !self.stopped() {
            // The files that are gone (or past a cap) leave the manifest, which so holds no more than the volume.
            let before = ledger.manifest.files.len();
            ledger.manifest.files.retain(|rel, _| seen.contains(rel));
            out.manifest_changed |= ledger.manifest.files.len() != before;
        }
        for folder in capped.into_inner() {
            ledger.warn_once(format!(
                "not uploaded: files of {} past its first {} files and folders (--max-worker-files); its results \
                 files still go",
                folder.display(),
                self.limits.max_worker_files
            ));
        }
        out
    }

    /// One pass: the files the walk with `exclude` finds (of the classes above `Rest` when `first`, the others
    /// otherwise), by class then size; the paths it finds go into `seen`. `false` when stopped or nobody takes the
    /// jobs.
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &self,
        exclude: &dyn Fn(&Path) -> bool,
        first: bool,
        ledger: &mut Ledger,
        jobs: &mpsc::Sender<Job>,
        out: &mut Planned,
        send: &mut Sending,
        seen: &mut HashSet<String>,
    ) -> bool {
        let (files, skipped) = self.root.walk(exclude);
        for s in skipped {
            ledger.warn_once(format!("not uploaded: {} is {}", s.rel.display(), s.reason));
        }
        let mut found = Vec::new();
        for f in files {
            if self.stopped() {
                return false;
            }
            let class = upload_priority(&f.rel);
            if (class != UploadPriority::Rest) != first {
                continue;
            }
            let Some(mapped) = (self.keys.map)(&f.rel) else { continue };
            let key = match object_key(&self.prefix, &mapped) {
                Ok(k) => k,
                Err(reason) => {
                    ledger.warn_once(format!("not uploaded: {:?}: {reason}", f.rel));
                    continue;
                }
            };
            let rel = key[self.prefix.len() + 1..].to_string();
            seen.insert(rel.clone());
            let Ok(Some(meta)) = self.root.stat(&f.rel) else { continue };
            if meta.len() > self.limits.max_file_bytes {
                // Neither uploaded nor hashed (a sparse file of terabytes reads as zeros for hours).
                ledger.warn_once(format!(
                    "not uploaded: {rel} is over --max-upload-bytes ({} bytes); it is neither hashed nor uploaded",
                    self.limits.max_file_bytes
                ));
                continue;
            }
            found.push((class, meta, rel, key, f.rel));
        }
        // By class (the results files, the merged file, EvalAI's files, the markers and status records, logcopy's
        // log, then the rest: `layout::upload_priority`), then smallest first (a stable sort: by path among equal
        // sizes): what a final flush out of time leaves behind is the least important and the largest, never a
        // worker's results because another worker wrote 300,000 small files, and a huge file holds back no other.
        found.sort_by_key(|(class, meta, ..)| (*class, meta.len()));
        // Each worker's folder uploads at most `max_worker_bytes`, counted over its files smallest first, uploaded
        // or not: what was uploaded keeps its place, what would pass the cap is left out.
        let mut worker_bytes: HashMap<PathBuf, u64> = HashMap::new();
        let mut changed = Vec::new();
        for (class, meta, rel, key, path) in found {
            if class == UploadPriority::Rest
                && let Some(folder) = layout::worker_folder(&path)
            {
                let total = worker_bytes.entry(folder.to_path_buf()).or_default();
                *total = total.saturating_add(meta.len());
                if *total > self.limits.max_worker_bytes {
                    ledger.warn_once(format!(
                        "not uploaded: files of {} past its first {} bytes (--max-worker-upload-bytes): the largest are \
                         left out; its results files still go",
                        folder.display(),
                        self.limits.max_worker_bytes
                    ));
                    continue;
                }
            }
            if ledger.manifest.files.get(&rel).is_some_and(|e| e.stat_matches(&meta)) {
                continue;
            }
            if !self.final_flush
                && ledger.last_upload.get(&rel).is_some_and(|t| self.now.duration_since(*t) < self.min_interval)
            {
                out.deferred += 1;
                continue;
            }
            changed.push((meta, rel, key, path));
        }
        let mut buf = vec![0u8; HASH_CHUNK];
        for (meta, rel, key, path) in changed {
            let (file, len) = match self.root.open_read(&path) {
                Ok(x) => x,
                Err(e) => {
                    ledger.warn_once(format!("not uploaded: {rel}: {e}"));
                    continue;
                }
            };
            let (hash, n) = match sha256_until(file.take(len), &mut buf, || self.stopped()) {
                Ok(Some(h)) => h,
                Ok(None) => return false,
                Err(_) => continue,
            };
            let entry = Entry { size: n, sha256: hash, mtime_ns: mtime_ns(&meta), ino: meta.ino() };
            if let Some(old) = ledger.manifest.files.get_mut(&rel)
                && old.size == entry.size
                && old.sha256 == entry.sha256
            {
                // Same content under a new stat (a restored file, a touch): remember the stat, upload nothing.
                *old = entry;
                out.manifest_changed = true;
                continue;
            }
            let job = Job { rel, key, path, entry, root: self.root.clone() };
            // Outside the final flush, logcopy's own log goes only along with another upload.
            if !self.final_flush && !send.sent_other && job.rel == OWN_LOG_REL {
                send.held = Some(job);
                continue;
            }
            send.sent_other |= job.rel != OWN_LOG_REL;
            for job in std::iter::once(job).chain(send.held.take()) {
                // Blocks while CONCURRENCY jobs wait; fails once the sync stopped taking them.
                if jobs.blocking_send(job).is_err() {
                    return false;
                }
            }
        }
        true
    }
}

/// What the two passes of a plan share: logcopy's own log, held back outside the final flush until another upload
/// goes.
#[derive(Default)]
struct Sending {
    held: Option<Job>,
    sent_other: bool,
}

impl<S: ObjectStore> Sink for StorageSink<S> {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn run(mut self, mut snapshots: watch::Receiver<Arc<Snapshot>>, _events: mpsc::Sender<SinkEvent>) {
        let mut tick = tokio::time::interval(self.min_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let closed = tokio::select! {
                r = snapshots.changed() => r.is_err(),
                _ = tick.tick() => false,
            };
            if !closed && snapshots.borrow().end.is_none() {
                // The run may end while this sync works (a SIGTERM during a long walk or hash): it then stops
                // where it is and the final sync starts at once.
                let ending = async {
                    let _ = snapshots.wait_for(|s| s.end.is_some()).await;
                };
                if self.sync_until(false, ending).await.is_some() {
                    continue;
                }
                info!("the run is ending: the periodic sync stops where it is and the final sync starts");
            }
            let end = snapshots.borrow().end.clone();
            let mut report = self.sync(true).await;
            if !matches!(end, Some(End::Once)) && self.verify().await > 0 {
                report = self.sync(true).await;
            }
            // What failed is tried again until it is uploaded: the run loop stops this task when the flush
            // budget is spent.
            let mut pause = Duration::from_millis(250);
            while report.failed > 0 && !matches!(end, Some(End::Once)) {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                report = self.sync(true).await;
            }
            if matches!(end, Some(End::Once)) && report.failed > 0 {
                self.sync(true).await;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan hashes the smallest files first and hands each over at once; a stop ends it within one chunk of a
    /// hash that would otherwise run for a long time (a 64 GiB sparse file, which sorts first by path).
    #[test]
    fn a_plan_sends_small_files_first_and_stops_within_a_chunk_of_a_huge_hash() {
        let root = std::env::temp_dir().join(format!("logcopy-plan-stop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("agent")).unwrap();
        std::fs::write(root.join("agent/a.log"), b"aaa").unwrap();
        std::fs::write(root.join("agent/b.log"), b"bb").unwrap();
        std::fs::File::create(root.join("a-huge.bin")).unwrap().set_len(64 << 30).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let plan = Plan {
            root: Arc::new(Root::open(&root).unwrap()),
            prefix: "1".into(),
            min_interval: Duration::ZERO,
            limits: UploadLimits { max_file_bytes: u64::MAX, ..UploadLimits::default() },
            keys: KeyMap::default(),
            final_flush: false,
            now: Instant::now(),
            stop: stop.clone(),
        };
        let (tx, mut rx) = mpsc::channel(CONCURRENCY);
        let planner = std::thread::spawn(move || {
            let mut ledger = Ledger::default();
            plan.run(&mut ledger, &tx);
            ledger
        });
        let first: Vec<String> = (0..2).map(|_| rx.blocking_recv().unwrap().rel).collect();
        assert_eq!(first, ["agent/b.log", "agent/a.log"], "by size, not by path");
        assert!(!planner.is_finished(), "the plan goes on with the huge file");

        stop.store(true, Ordering::Relaxed);
        // Hashing 64 GiB takes half a minute at the least; a stop is seen within one chunk.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !planner.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the plan did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        let ledger = planner.join().unwrap();
        assert!(rx.blocking_recv().is_none(), "no job for the huge file");
        assert!(ledger.manifest.files.is_empty(), "the manifest changes only with uploads");
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A sink with a key map uploads only the files it keeps, under the keys it gives, and its end's check lists
    /// only the folders it names.
    #[tokio::test]
    async fn a_key_map_chooses_and_renames_the_files() {
        let base = std::env::temp_dir().join(format!("logcopy-keymap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let vol = base.join("vol");
        for d in ["agent/agent1", "agent/agent11", "simulator"] {
            std::fs::create_dir_all(vol.join(d)).unwrap();
        }
        for f in ["agent/agent1/agent_results.json", "agent/agent11/agent_results.json", "simulator/CarlaUE4.log"] {
            std::fs::write(vol.join(f), f.as_bytes()).unwrap();
        }
        let root = Arc::new(Root::open(&vol).unwrap());
        let store = super::super::store::LocalStore::new(&base.join("s3"));
        let w = volume::markers::WorkerId(1);
        let keys = KeyMap::new(move |rel| volume::shard::key_of(rel, w), vec!["agent/agent1/".into()]);
        let mut sink = StorageSink::new(store, root, "9", "local:k", Duration::ZERO).with_keys(keys);
        assert_eq!(sink.sync(true).await.uploaded, 2);
        let s3 = base.join("s3");
        let got: Vec<String> = testkit::scratch::files_under(&s3)
            .iter()
            .map(|p| p.strip_prefix(&s3).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, ["9/agent/agent1/agent_results.json", "9/simulator/worker-1/CarlaUE4.log"]);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A file removed from the volume leaves the manifest at the next sync: the manifest never grows past what the
    /// volume holds.
    #[tokio::test]
    async fn the_manifest_forgets_files_that_are_gone() {
        let base = std::env::temp_dir().join(format!("logcopy-manifest-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let vol = base.join("vol");
        std::fs::create_dir_all(vol.join("simulator")).unwrap();
        std::fs::write(vol.join("simulator/a.log"), b"a").unwrap();
        std::fs::write(vol.join("simulator/b.log"), b"b").unwrap();
        let root = Arc::new(Root::open(&vol).unwrap());
        let store = super::super::store::LocalStore::new(&base.join("s3"));
        let mut sink = StorageSink::new(store, root.clone(), "1", "local:t", Duration::ZERO);
        assert_eq!(sink.sync(true).await.uploaded, 2);
        let names = || Manifest::load(&root, "local:t").files.into_keys().collect::<Vec<_>>();
        assert_eq!(names(), ["simulator/a.log", "simulator/b.log"]);
        std::fs::remove_file(vol.join("simulator/b.log")).unwrap();
        assert_eq!(sink.sync(true).await.uploaded, 0);
        assert_eq!(names(), ["simulator/a.log"], "the entry of the removed file stayed");
        let _ = std::fs::remove_dir_all(&base);
    }
}

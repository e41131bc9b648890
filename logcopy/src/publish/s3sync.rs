//! Keeping S3 in step with the volume: upload what changed since its last upload, and nothing else.
//!
//! Replaces upstream's `aws s3 sync /logs s3://$S3_BUCKET/$SUBMISSION_ID` every 10 s (a LIST of the whole prefix
//! and a dozen processes per cycle, about 48 requests a minute when nothing changes). Each sync walks the volume
//! without following links, skips files whose size, mtime and inode match the manifest, hashes the others, and
//! uploads those whose content differs from what was uploaded. A file that keeps changing (a log) goes again at
//! most once every `LOGS_PERIOD`, and always at the final flush. Steady state makes no S3 request.

use super::store::{ObjectStore, StoreError};
use super::{End, Sink, SinkEvent, Snapshot};
use crate::volume::TEMP_PREFIX;
use crate::volume::manifest::{Entry, MANIFEST_REL, Manifest, mtime_ns, sha256};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{error, info, warn};
use volume::safe::{Root, object_key};

/// Uploads in flight at once.
const CONCURRENCY: usize = 8;

/// logcopy's own log on the volume. Each sync that uploads something logs a line there, so uploading it on its own
/// would feed a loop that never lets an idle volume rest: outside the final flush it goes only along with another
/// upload.
const OWN_LOG_REL: &str = crate::volume::LOG_REL;

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

/// A file to upload, hashed and opened.
/// One upload. The file is opened again (beneath the root, no link followed) only when its upload starts, so a
/// sync of 100,000 changed files holds at most CONCURRENCY of them open.
struct Job {
    rel: String,
    key: String,
    path: PathBuf,
    entry: Entry,
}

pub struct StorageSink<S: ObjectStore> {
    store: Arc<S>,
    root: Arc<Root>,
    prefix: String,
    manifest: Manifest,
    min_interval: Duration,
    last_upload: HashMap<String, Instant>,
    warned: HashSet<String>,
}

impl<S: ObjectStore> StorageSink<S> {
    /// `target` names the destination in the manifest (`s3://bucket/prefix`); `prefix` is the key prefix.
    pub fn new(store: S, root: Arc<Root>, prefix: &str, target: &str, min_interval: Duration) -> Self {
        StorageSink {
            store: Arc::new(store),
            manifest: Manifest::load(&root, target),
            root,
            prefix: prefix.to_string(),
            min_interval,
            last_upload: HashMap::new(),
            warned: HashSet::new(),
        }
    }

    fn warn_once(&mut self, what: String) {
        if self.warned.insert(what.clone()) {
            warn!("{what}");
        }
    }

    /// Finds what to upload: stat, then hash what changed. Blocking file I/O.
    fn plan(&mut self, final_flush: bool) -> (Vec<Job>, usize, bool) {
        let (files, skipped) = self.root.walk(&excluded);
        for s in skipped {
            self.warn_once(format!("not uploaded: {} is {}", s.rel.display(), s.reason));
        }
        let now = Instant::now();
        let mut jobs = Vec::new();
        let mut deferred = 0;
        let mut manifest_changed = false;
        for f in files {
            let key = match object_key(&self.prefix, &f.rel) {
                Ok(k) => k,
                Err(reason) => {
                    self.warn_once(format!("not uploaded: {:?}: {reason}", f.rel));
                    continue;
                }
            };
            let rel = key[self.prefix.len() + 1..].to_string();
            let Ok(Some(meta)) = self.root.stat(&f.rel) else { continue };
            if self.manifest.files.get(&rel).is_some_and(|e| e.stat_matches(&meta)) {
                continue;
            }
            if !final_flush && self.last_upload.get(&rel).is_some_and(|t| now.duration_since(*t) < self.min_interval) {
                deferred += 1;
                continue;
            }
            let (file, len) = match self.root.open_read(&f.rel) {
                Ok(x) => x,
                Err(e) => {
                    self.warn_once(format!("not uploaded: {rel}: {e}"));
                    continue;
                }
            };
            let Ok((hash, n)) = sha256(file.take(len)) else { continue };
            let entry = Entry { size: n, sha256: hash, mtime_ns: mtime_ns(&meta), ino: meta.ino() };
            if let Some(old) = self.manifest.files.get_mut(&rel)
                && old.size == entry.size
                && old.sha256 == entry.sha256
            {
                // Same content under a new stat (a restored file, a touch): remember the stat, upload nothing.
                *old = entry;
                manifest_changed = true;
                continue;
            }
            jobs.push(Job { rel, key, path: f.rel, entry });
        }
        if !final_flush && jobs.iter().all(|j| j.rel == OWN_LOG_REL) {
            jobs.clear();
        }
        (jobs, deferred, manifest_changed)
    }

    /// At the end: one LIST of the prefix, compared with the manifest by size. An object that is missing or of
    /// another size (an upload of a killed logcopy that the server completed after a newer one, or a change made
    /// behind our back) is forgotten, so that the next pass uploads it again. Returns how many.
    async fn verify(&mut self) -> usize {
        let listed = match self.store.list(&format!("{}/", self.prefix)).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot list the uploaded objects to check them");
                return 0;
            }
        };
        let remote: HashMap<&str, u64> = listed
            .iter()
            .filter_map(|o| Some((o.key.strip_prefix(&self.prefix)?.strip_prefix('/')?, o.size)))
            .collect();
        let stale: Vec<String> = self
            .manifest
            .files
            .iter()
            .filter(|(rel, e)| remote.get(rel.as_str()) != Some(&e.size))
            .map(|(rel, _)| rel.clone())
            .collect();
        for rel in &stale {
            self.manifest.files.remove(rel);
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
        let (jobs, deferred, mut manifest_changed) = self.plan(final_flush);
        let mut report = SyncReport { deferred, ..SyncReport::default() };
        let mut pending = jobs.into_iter();
        let mut running = JoinSet::new();
        loop {
            while running.len() < CONCURRENCY {
                let Some(job) = pending.next() else { break };
                let root = self.root.clone();
                let store = self.store.clone();
                running.spawn(async move {
                    let r = match root.open_read(&job.path) {
                        Ok((file, _)) => store.put(&job.key, file, job.entry.size).await,
                        Err(e) => Err(StoreError { op: "open", key: job.key.clone(), reason: e.to_string() }),
                    };
                    (job.rel, job.entry, r)
                });
            }
            let Some(done) = running.join_next().await else { break };
            let Ok((rel, entry, result)) = done else { continue };
            match result {
                Ok(stats) => {
                    report.uploaded += 1;
                    report.bytes += entry.size;
                    report.requests += stats.requests;
                    self.last_upload.insert(rel.clone(), Instant::now());
                    self.manifest.files.insert(rel, entry);
                    manifest_changed = true;
                }
                Err(e) => {
                    report.failed += 1;
                    warn!(error = %e, "upload failed; it will be retried at the next sync");
                }
            }
        }
        if manifest_changed && let Err(e) = self.manifest.save(&self.root) {
            error!("cannot save the upload manifest: {e}");
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
        report
    }
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
            let end = snapshots.borrow().end.clone();
            let ending = closed || end.is_some();
            let mut report = self.sync(ending).await;
            if ending {
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
}

//! The monitor's fetcher: mirrors each worker's shard in S3 into the working volume, with no LIST. Each period, one
//! conditional GET of each worker's status object (`If-None-Match` on the ETag last seen: a 304 when nothing
//! moved); on a new object, parsed strictly and never older than the newest seen, its results object is fetched
//! when its ETag changed (`If-Match` on it) and written atomically at the worker's results path, and its markers and
//! status records replace the worker's in `containers-status/`. A worker whose object stays unchanged for
//! `--worker-silence` without an end marker is lost ([`LostWorkers`]); a new object un-loses it.

use crate::config::{MonitorArgs, RunConfig};
use crate::daemon::LostWorkers;
use crate::publish::store::{GetCondition, GetOutcome, ObjectStore};
use crate::volume::{Layout, Root};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{error, info, warn};
use volume::markers::{Marker, Role, StatusSet, WorkerId};
use volume::shard::{self, ShardStatus};

/// What the fetcher knows of one worker's shard.
struct Shard {
    id: u32,
    /// Its status object's key and the ETag of the object last fetched (stale or malformed ones included, so that
    /// they cost a 304 from then on).
    key: String,
    etag: Option<String>,
    /// The newest status object accepted.
    newest: Option<ShardStatus>,
    /// The ETag of the results object now in the working volume.
    results: Option<String>,
    /// When its status object last changed (the monitor's clock; the uploader's `at` is another machine's).
    changed: Instant,
    lost: bool,
    /// The last problem logged, so that each is logged once.
    problem: Option<String>,
}

impl Shard {
    fn report(&mut self, problem: String) {
        if self.problem.as_ref() != Some(&problem) {
            warn!(worker = self.id, "{problem}");
            self.problem = Some(problem);
        }
    }

    /// Whether its markers end it (a `.failed` marker, or both done markers), as the completion policy reads them.
    fn has_ended(&self) -> bool {
        let Some(s) = &self.newest else { return false };
        let set = StatusSet::from_names(s.markers.iter().map(Marker::file_name));
        let w = WorkerId(self.id);
        Role::ALL.iter().any(|&r| set.is_failed(r, w)) || Role::ALL.iter().all(|&r| set.is_done(r, w))
    }
}

/// What one pass did, for the log and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Status objects fetched (not 304).
    pub objects: usize,
    /// Results objects written into the working volume.
    pub results: usize,
}

pub struct Fetcher<S> {
    store: Arc<S>,
    root: Arc<Root>,
    layout: Layout,
    prefix: String,
    max_results: u64,
    silence: Duration,
    shards: Vec<Shard>,
    lost: LostWorkers,
}

impl<S: ObjectStore> Fetcher<S> {
    pub fn new(store: Arc<S>, root: Arc<Root>, cfg: &RunConfig, mon: &MonitorArgs, lost: LostWorkers) -> Self {
        let prefix = cfg.submission_id.to_string();
        let now = Instant::now();
        let shards = (1..=cfg.workers)
            .map(|id| Shard {
                id,
                key: format!("{prefix}/{}", shard::status_key(WorkerId(id)).display()),
                etag: None,
                newest: None,
                results: None,
                changed: now,
                lost: false,
                problem: None,
            })
            .collect();
        Fetcher {
            store,
            root,
            layout: cfg.layout(),
            prefix,
            max_results: cfg.max_results_bytes,
            silence: mon.worker_silence,
            shards,
            lost,
        }
    }

    /// One look at every worker's shard.
    pub async fn pass(&mut self) -> Pass {
        let mut pass = Pass::default();
        for i in 0..self.shards.len() {
            self.poll(i, &mut pass).await;
        }
        pass
    }

    /// The workers whose status object has never appeared (their shard waits for a pod).
    pub fn waiting(&self) -> Vec<u32> {
        self.shards.iter().filter(|s| s.newest.is_none()).map(|s| s.id).collect()
    }

    async fn poll(&mut self, i: usize, pass: &mut Pass) {
        let cond = GetCondition { if_none_match: self.shards[i].etag.as_deref(), if_match: None };
        let key = self.shards[i].key.clone();
        match self.store.get_bytes(&key, cond, shard::MAX_BYTES).await {
            Ok(GetOutcome::Found { body, etag }) => {
                pass.objects += 1;
                self.shards[i].etag = Some(etag);
                self.accept(i, &body);
            }
            Ok(GetOutcome::NotModified | GetOutcome::Missing | GetOutcome::Changed) => {}
            Err(e) => self.shards[i].report(format!("cannot read its status object: {e}")),
        }
        self.fetch_results(i, pass).await;
        self.judge(i);
    }

    /// A new status object: taken when it parses and is newer than the newest seen; its markers and records are
    /// mirrored into the working volume.
    fn accept(&mut self, i: usize, body: &[u8]) {
        let s = &mut self.shards[i];
        let st = match ShardStatus::parse(body) {
            Ok(st) if st.worker.0 == s.id => st,
            Ok(st) => {
                s.report(format!("{} names worker {}: ignored", s.key, st.worker.0));
                return;
            }
            Err(e) => {
                s.report(format!("{} is malformed ({e}): ignored", s.key));
                return;
            }
        };
        if let Some(old) = &s.newest
            && !st.newer_than(old)
        {
            if st != *old {
                let why = format!(
                    "{} was written by an older pod than the newest seen ({} of pod {}, seq {}; newest: {} of pod {}, \
                     seq {}): ignored",
                    s.key, st.attempt, st.pod, st.seq, old.attempt, old.pod, old.seq
                );
                s.report(why);
            }
            return;
        }
        s.problem = None;
        s.changed = Instant::now();
        if s.lost {
            s.lost = false;
            self.lost.set(s.id, false);
            info!(worker = s.id, pod = %st.pod, "{}", format!("worker {} reports again: no longer lost", s.id));
        }
        s.newest = Some(st);
        self.mirror(i);
    }

    /// The worker's markers and status records in the working volume become the newest object's.
    fn mirror(&mut self, i: usize) {
        let s = &self.shards[i];
        let Some(st) = &s.newest else { return };
        let dir = self.layout.status_dir();
        if let Err(e) = self.root.create_dir_all(dir) {
            error!("cannot create {}: {e}", self.root.display(dir).display());
            return;
        }
        let wanted: Vec<String> = st.markers.iter().map(Marker::file_name).collect();
        let records: Vec<(String, String)> =
            st.records.iter().map(|r| (volume::status::file_name(r.role, r.worker), r.to_json())).collect();
        let entries = self.root.list(dir).ok().flatten().unwrap_or_default();
        for e in entries {
            let Some(name) = e.name.to_str() else { continue };
            let kept = wanted.iter().any(|w| w == name) || records.iter().any(|(n, _)| n == name);
            if shard::is_own_status_file(name, WorkerId(s.id))
                && !kept
                && let Err(e) = self.root.remove_file(&dir.join(name))
            {
                warn!("cannot remove {}: {e}", self.root.display(&dir.join(name)).display());
            }
        }
        for m in &st.markers {
            if let Err(e) = m.create_in(&self.root, dir) {
                error!(marker = %m, "cannot write the marker: {e}");
            }
        }
        for (name, json) in records {
            if let Err(e) = self.root.write_atomic(&dir.join(&name), json.as_bytes()) {
                error!("{e}");
            }
        }
    }

    /// Fetches the results object the newest status object names, when it is not the one in the working volume.
    async fn fetch_results(&mut self, i: usize, pass: &mut Pass) {
        let s = &self.shards[i];
        let Some(want) = s.newest.as_ref().and_then(|st| st.results.as_ref()).map(|r| r.etag.clone()) else { return };
        if s.results.as_deref() == Some(want.as_str()) {
            return;
        }
        let key = format!("{}/{}", self.prefix, volume::layout::worker_results(s.id).display());
        let cond = GetCondition { if_none_match: None, if_match: Some(&want) };
        match self.store.get_bytes(&key, cond, self.max_results).await {
            Ok(GetOutcome::Found { body, etag }) => {
                let path: PathBuf = self.layout.results_file(s.id);
                if let Some(parent) = path.parent()
                    && let Err(e) = self.root.create_dir_all(parent)
                {
                    error!("cannot create {}: {e}", self.root.display(parent).display());
                    return;
                }
                match self.root.write_atomic(&path, &body) {
                    Ok(()) => {
                        self.shards[i].results = Some(etag);
                        pass.results += 1;
                    }
                    Err(e) => error!("{e}"),
                }
            }
            // A newer upload replaced it since the status object was written: the next status object names it.
            Ok(GetOutcome::Changed) => {}
            Ok(GetOutcome::Missing) => {
                self.shards[i].report(format!("{key}, which its status object names, is missing (tried again)"))
            }
            Ok(GetOutcome::NotModified) => {}
            Err(e) => self.shards[i].report(format!("cannot read its results object (tried again): {e}")),
        }
    }

    /// Lost: an object seen, unchanged for `--worker-silence`, and no end marker. A shard whose object never
    /// appeared waits for a pod (queued behind the Job's parallelism) and is never lost.
    fn judge(&mut self, i: usize) {
        let silent = self.shards[i].changed.elapsed();
        let s = &self.shards[i];
        if s.lost || s.newest.is_none() || s.has_ended() || silent < self.silence {
            return;
        }
        let st = s.newest.as_ref().expect("checked");
        error!(
            worker = s.id,
            pod = %st.pod,
            uid = %st.uid,
            attempt = %st.attempt,
            seq = st.seq,
            uploader_clock = st.at,
            ended = st.ended,
            silent_s = silent.as_secs(),
            "worker {} is lost: its status object has not changed for {} s (--worker-silence {} s) and it has no \
             end marker; its routes count as not run",
            s.id,
            silent.as_secs(),
            self.silence.as_secs()
        );
        self.shards[i].lost = true;
        self.lost.set(self.shards[i].id, true);
    }
}

/// The keys of the cancel markers the workers' uploaders poll: `simulation.cancel` and each `simulation-N.cancel`.
pub fn cancel_keys(prefix: &str, workers: u32) -> Vec<String> {
    let mut all = vec![Marker::Cancel];
    all.extend((1..=workers).map(|i| Marker::WorkerCancel { worker: WorkerId(i) }));
    let dir = Path::new(volume::layout::STATUS_DIR);
    all.iter().map(|m| format!("{prefix}/{}", dir.join(m.file_name()).display())).collect()
}

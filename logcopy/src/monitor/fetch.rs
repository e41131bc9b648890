//! The monitor's fetcher: mirrors each worker's shard in S3 into the working volume, with no LIST. Each period, one
//! conditional GET of each worker's status object (`If-None-Match` on the ETag last seen: a 304 when nothing
//! moved); on a new object, parsed strictly and taken only when it supersedes the newest seen in the shard's chain of
//! owners ([`ShardStatus::supersedes`]: generation, then seq; never the attempt counts), its results object is fetched
//! when its ETag changed (`If-Match` on it) and written atomically at the worker's results path, and then (never
//! before its results are in place) its markers and status records replace the worker's in `containers-status/`.
//! A worker whose object stays unchanged for `--worker-silence` without an end marker is lost ([`LostWorkers`]; 3 x
//! that while its pod had retries left: a replacement is due); one whose object never appeared is lost once every
//! other worker has ended and `--worker-silence` has passed since; a new object un-loses it.

use crate::config::{MonitorArgs, RunConfig};
use crate::daemon::{Lost, LostWorkers};
use crate::publish::store::{GetCondition, GetOutcome, ObjectStore};
use crate::volume::{Layout, Root};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{error, info, warn};
use volume::markers::{Marker, Role, StatusSet, WorkerId};
use volume::shard::{self, ShardStatus};

/// The most stale pods remembered per shard (each logged once; past it, nothing more is logged).
const MAX_STALE_PODS: usize = 64;

/// How many `--worker-silence` a silent shard gets when its newest object says its pod still had retries
/// (`failures < --backoff-limit-per-index`): its replacement is due, but it may wait for a per-index backoff (10 s
/// doubling to 6 min in Kubernetes) and then for a free slot behind the Job's parallelism, and then restore.
pub const REPLACEMENT_SILENCES: u32 = 3;

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
    /// The newest object's markers and records are not in the working volume yet: they wait for the results
    /// object it names, so that the run never sees a worker's done markers beside older results.
    unmirrored: bool,
    /// The markers in the working volume end the worker (as the completion policy reads them).
    ended: bool,
    /// When it ended (its end markers mirrored, or found lost): the never-started rule counts from the last end.
    ended_at: Option<Instant>,
    /// The pods (UIDs) whose objects the chain of owners has passed, each logged once (a few per shard; capped).
    stale_pods: Vec<String>,
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

    /// Whether the newest object's markers end it (a `.failed` marker, or both done markers), as the completion
    /// policy reads them.
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
    backoff_limit: Option<u32>,
    /// When the fetcher started: the never-started rule's clock when no other shard exists.
    started: Instant,
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
                unmirrored: false,
                ended: false,
                ended_at: None,
                stale_pods: Vec::new(),
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
            backoff_limit: mon.backoff_limit_per_index,
            started: now,
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
        let s = &self.shards[i];
        let in_place = match s.newest.as_ref().and_then(|st| st.results.as_ref()) {
            None => true,
            // Over the cap it is never fetched: the markers go without it.
            Some(r) => r.size > self.max_results || s.results.as_deref() == Some(r.etag.as_str()),
        };
        if s.unmirrored && in_place {
            self.mirror(i);
            let s = &mut self.shards[i];
            s.unmirrored = false;
            s.ended = s.has_ended();
            s.ended_at = match (s.ended, s.ended_at) {
                (true, None) => Some(Instant::now()),
                (true, at) => at,
                (false, _) => None,
            };
        }
        self.judge(i);
    }

    /// A new status object: taken when it parses and is newer than the newest seen (a later pod, or the same pod
    /// later); its markers and records go to the working volume once the results it names are there ([`Self::poll`]).
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
        // The shard's owners form one chain (volume::shard): a pod that takes the shard over writes the generation it
        // read plus one, so `(generation, seq)` orders its objects whatever the attempt counts say (equal counts and
        // another pod UID: a suspended and resumed Job, a duplicate pod; a resumed submission's new Job).
        if let Some(old) = &s.newest
            && !follows(&st, old)
        {
            if st != *old && !s.stale_pods.contains(&st.uid) {
                let why = format!(
                    "{} was written by a pod the shard's chain of owners has passed, or earlier (generation {}, seq {}                      of pod {}, {}; newest: generation {}, seq {} of pod {}, {}): ignored",
                    s.key, st.generation, st.seq, st.pod, st.attempt, old.generation, old.seq, old.pod, old.attempt
                );
                warn!(worker = s.id, "{why}");
                if s.stale_pods.len() < MAX_STALE_PODS {
                    s.stale_pods.push(st.uid.clone());
                }
            }
            return;
        }
        match &s.newest {
            None => info!(worker = s.id, pod = %st.pod, attempt = %st.attempt, "the worker's pod reports"),
            Some(old) if old.uid != st.uid => {
                info!(worker = s.id, pod = %st.pod, attempt = %st.attempt, before = %old.pod, "a new pod of the worker")
            }
            Some(_) => {}
        }
        s.problem = None;
        s.changed = Instant::now();
        if s.lost {
            s.lost = false;
            s.ended_at = None;
            self.lost.set(s.id, false);
            info!(worker = s.id, pod = %st.pod, "worker {} reports again: no longer lost", s.id);
        }
        s.newest = Some(st);
        s.unmirrored = true;
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
        let Some(want) = s.newest.as_ref().and_then(|st| st.results.clone()) else { return };
        if s.results.as_deref() == Some(want.etag.as_str()) {
            return;
        }
        let key = format!("{}/{}", self.prefix, volume::layout::worker_results(s.id).display());
        if want.size > self.max_results {
            // Not fetched at all (the run would refuse it unread, as on a generation 1 volume): the worker's last
            // good results stay.
            let why =
                format!("{key} is {} bytes, over --max-results-bytes {}: not fetched", want.size, self.max_results);
            self.shards[i].report(why);
            return;
        }
        let want = want.etag;
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

    /// Lost (its routes count as not run):
    /// - an object seen, unchanged for `--worker-silence`, and no end marker in the working volume (a worker whose
    ///   last object names results that never became readable is lost too, rather than waited for forever); when
    ///   that object says its pod still had retries (`failures < --backoff-limit-per-index`), a replacement is due
    ///   and the shard gets [`REPLACEMENT_SILENCES`] times as long;
    /// - no object ever (a pod never scheduled, or one whose restore fails on every try): it waits for a pod
    ///   (queued behind the Job's parallelism) until every other shard has ended (done, failed or lost) and
    ///   `--worker-silence` has passed since the last of them ended.
    fn judge(&mut self, i: usize) {
        let s = &self.shards[i];
        if s.lost || s.ended {
            return;
        }
        let Some(st) = s.newest.as_ref() else {
            return self.judge_never_started(i);
        };
        let silent = s.changed.elapsed();
        let retries = self.backoff_limit.is_some_and(|limit| st.attempt.failures < limit);
        let allowed = if retries { self.silence * REPLACEMENT_SILENCES } else { self.silence };
        if silent < allowed {
            return;
        }
        error!(
            worker = s.id,
            pod = %st.pod,
            uid = %st.uid,
            attempt = %st.attempt,
            generation = st.generation,
            seq = st.seq,
            uploader_clock = st.at,
            ended = st.ended,
            silent_s = silent.as_secs(),
            "worker {} is lost: its status object has not changed for {} s ({}) and it has no end marker; its \
             routes count as not run",
            s.id,
            silent.as_secs(),
            if retries {
                format!(
                    "{REPLACEMENT_SILENCES} x --worker-silence {} s: its pod had retries left, no replacement reported",
                    self.silence.as_secs()
                )
            } else {
                format!("--worker-silence {} s", self.silence.as_secs())
            }
        );
        self.set_lost(i, Lost::Silent);
    }

    fn judge_never_started(&mut self, i: usize) {
        let mut last_end = self.started;
        for (j, o) in self.shards.iter().enumerate() {
            // Another shard that never reported does not hold this one back (nor it that one).
            if j == i || o.newest.is_none() {
                continue;
            }
            match o.ended_at {
                Some(at) => last_end = last_end.max(at),
                None => return,
            }
        }
        if last_end.elapsed() < self.silence {
            return;
        }
        let id = self.shards[i].id;
        error!(
            worker = id,
            "worker {id} never started (no pod reported): every other worker has ended and --worker-silence {} s has \
             passed since the last of them; its routes count as not run",
            self.silence.as_secs()
        );
        self.set_lost(i, Lost::NeverStarted);
    }

    fn set_lost(&mut self, i: usize, how: Lost) {
        let s = &mut self.shards[i];
        s.lost = true;
        s.ended_at = Some(Instant::now());
        self.lost.set_how(s.id, Some(how));
    }
}

/// Whether `st` comes after `old` in the shard's chain of owners ([`ShardStatus::supersedes`]). Two objects of
/// generation 0 were written by uploaders that do not fence (an object without the field, as before the fencing
/// generation): only their attempt counts order them, within one Job (a new Job's objects replace an older Job's).
fn follows(st: &ShardStatus, old: &ShardStatus) -> bool {
    if st.generation == 0 && old.generation == 0 {
        return !st.same_job(old) || st.newer_than(old);
    }
    st.supersedes(old)
}

/// The keys of the cancel markers the workers' uploaders poll: `simulation.cancel` and each `simulation-N.cancel`.
pub fn cancel_keys(prefix: &str, workers: u32) -> Vec<String> {
    let mut all = vec![Marker::Cancel];
    all.extend((1..=workers).map(|i| Marker::WorkerCancel { worker: WorkerId(i) }));
    let dir = Path::new(volume::layout::STATUS_DIR);
    all.iter().map(|m| format!("{prefix}/{}", dir.join(m.file_name()).display())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::store::{LocalStore, PutCondition, PutOutcome};
    use volume::markers::Attempt;
    use volume::shard::{ObjectRef, PodAttempt, status_key};

    struct Setup {
        dir: PathBuf,
        store: Arc<LocalStore>,
        fetcher: Fetcher<LocalStore>,
        lost: LostWorkers,
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn setup(name: &str) -> Setup {
        let dir = std::env::temp_dir().join(format!("logcopy-fetch-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (vol, out) = (dir.join("volume"), dir.join("out"));
        std::fs::create_dir_all(&vol).unwrap();
        let args = ["--local", out.to_str().unwrap(), "--logs", vol.to_str().unwrap(), "--workers", "2"];
        let cfg = crate::config::tests::parse(&args).unwrap();
        let mon = MonitorArgs {
            monitor_period: Duration::from_secs(1),
            worker_silence: Duration::from_secs(60),
            backoff_limit_per_index: None,
            monitor_job_uid: None,
        };
        let store = Arc::new(LocalStore::new(&out.join("s3")));
        let root = Arc::new(Root::open(&vol).unwrap());
        let lost = LostWorkers::default();
        let fetcher = Fetcher::new(store.clone(), root, &cfg, &mon, lost.clone());
        Setup { dir, store, fetcher, lost }
    }

    fn status(worker: u32, failures: u32, seq: u64, markers: Vec<Marker>) -> ShardStatus {
        ShardStatus {
            worker: WorkerId(worker),
            pod: format!("pod-{failures}"),
            uid: format!("uid-{failures}"),
            job: String::new(),
            attempt: PodAttempt { failures, ignored: 0 },
            // Each replacement took the shard over from the one before.
            generation: u64::from(failures),
            seq,
            results: None,
            markers,
            records: Vec::new(),
            ended: false,
            at: 1_700_000_000 + seq as i64,
        }
    }

    fn start(w: u32) -> Marker {
        Marker::Start { role: Role::Agent, worker: WorkerId(w), attempt: Attempt(0) }
    }

    fn done(w: u32) -> Vec<Marker> {
        Role::ALL.iter().map(|&role| Marker::Done { role, worker: WorkerId(w) }).collect()
    }

    impl Setup {
        async fn put(&self, key: &str, body: &[u8]) -> String {
            let key = format!("1/{key}");
            match self.store.put_bytes(&key, body.to_vec(), PutCondition::Always).await.unwrap() {
                PutOutcome::Written { etag } => etag,
                PutOutcome::PreconditionFailed => panic!("refused"),
            }
        }

        async fn put_status(&self, st: &ShardStatus) {
            self.put(&status_key(st.worker).display().to_string(), st.to_json().as_bytes()).await;
        }

        fn vol(&self, rel: &str) -> PathBuf {
            self.dir.join("volume").join(rel)
        }
    }

    /// A new object is mirrored (its results object fetched by its ETag, its markers); an unchanged one costs a
    /// 304; a malformed or stale one is ignored; markers the newest object no longer lists are removed.
    #[tokio::test]
    async fn the_fetcher_mirrors_the_newest_object_only() {
        let mut t = setup("mirror");
        assert_eq!(t.fetcher.pass().await, Pass::default());
        assert_eq!(t.fetcher.waiting(), [1, 2], "no object yet: both wait for a pod");

        let etag = t.put("agent/agent1/agent_results.json", b"{\"one\": 1}").await;
        let mut st = status(1, 1, 1, vec![start(1)]);
        st.results = Some(ObjectRef { etag, size: 10 });
        t.put_status(&st).await;
        assert_eq!(t.fetcher.pass().await, Pass { objects: 1, results: 1 });
        assert_eq!(std::fs::read(t.vol("agent/agent1/agent_results.json")).unwrap(), b"{\"one\": 1}");
        assert!(t.vol("containers-status/agent-1.start0").exists());
        assert_eq!(t.fetcher.waiting(), [2]);
        assert_eq!(t.fetcher.pass().await, Pass::default(), "nothing changed: 304s only");

        // Malformed, then a stale pod's object claiming done: both ignored.
        t.put(&status_key(WorkerId(1)).display().to_string(), b"{not json").await;
        assert_eq!(t.fetcher.pass().await, Pass { objects: 1, results: 0 });
        t.put_status(&status(1, 0, 9, done(1))).await;
        t.fetcher.pass().await;
        assert!(!t.vol("containers-status/agent-1.done").exists(), "a stale pod's markers are not mirrored");
        assert_eq!(t.fetcher.shards[0].newest.as_ref().unwrap().seq, 1);

        // The same pod later: its markers replace the old ones.
        let mut st = status(1, 1, 2, done(1));
        st.results = t.fetcher.shards[0].newest.as_ref().unwrap().results.clone();
        t.put_status(&st).await;
        assert_eq!(t.fetcher.pass().await, Pass { objects: 1, results: 0 }, "the same results: not fetched again");
        assert!(t.vol("containers-status/agent-1.done").exists());
        assert!(t.vol("containers-status/simulator-1.done").exists());
        assert!(!t.vol("containers-status/agent-1.start0").exists(), "a marker no longer listed is removed");
    }

    /// A status object's markers wait for the results object it names: a worker's done markers never reach the run
    /// beside older results.
    #[tokio::test]
    async fn the_markers_wait_for_the_results_they_come_with() {
        let mut t = setup("order");
        let results = "agent/agent1/agent_results.json";
        let first = t.put(results, b"{\"routes\": 4}").await;
        let newer = t.put(results, b"{\"routes\": 5}").await;
        let mut st = status(1, 0, 1, done(1));
        st.results = Some(ObjectRef { etag: first, size: 14 });
        t.put_status(&st).await;
        t.fetcher.pass().await;
        assert!(!t.vol("containers-status/agent-1.done").exists(), "its results changed since (412): no markers yet");
        assert!(!t.vol(results).exists());
        st.seq += 1;
        st.results = Some(ObjectRef { etag: newer, size: 14 });
        t.put_status(&st).await;
        assert_eq!(t.fetcher.pass().await, Pass { objects: 1, results: 1 });
        assert_eq!(std::fs::read(t.vol(results)).unwrap(), b"{\"routes\": 5}");
        assert!(t.vol("containers-status/agent-1.done").exists(), "the markers with their results");
    }

    /// Silent past `--worker-silence` without an end marker: lost; a new object un-loses it. A worker that ended, or
    /// whose object never appeared, is never lost. A results object over the cap is not fetched.
    #[tokio::test]
    async fn a_silent_worker_is_lost_until_it_reports_again() {
        let mut t = setup("lost");
        t.put_status(&status(1, 0, 1, vec![start(1)])).await;
        let mut ended = status(2, 0, 1, done(2));
        ended.results = Some(ObjectRef { etag: "\"big\"".into(), size: 1 << 40 });
        t.put_status(&ended).await;
        t.fetcher.pass().await;
        assert!(!t.vol("agent/agent2/agent_results.json").exists(), "over the cap: not fetched");
        let long_ago = Instant::now().checked_sub(Duration::from_secs(61)).unwrap();
        for s in &mut t.fetcher.shards {
            s.changed = long_ago;
        }
        t.fetcher.pass().await;
        assert!(t.lost.contains(1), "silent and running: lost");
        assert!(!t.lost.contains(2), "ended: never lost");
        t.put_status(&status(1, 0, 2, vec![start(1)])).await;
        t.fetcher.pass().await;
        assert!(!t.lost.contains(1), "it reports again: no longer lost");

        let mut t = setup("waiting");
        t.fetcher.shards[0].changed = long_ago;
        t.fetcher.pass().await;
        assert!(!t.lost.contains(1), "no object yet: waiting for a pod, not lost");
    }

    /// The shard's chain of owners, not its attempt counts: a pod with the same counts and another UID (a suspended
    /// and resumed Job, a duplicate pod) that took the shard over (a higher generation) is followed; an object of a
    /// pod the chain has passed is ignored, whatever its counts say.
    #[tokio::test]
    async fn the_fetcher_follows_the_chain_of_owners() {
        let mut t = setup("chain");
        let mut old = status(1, 1, 5, vec![start(1)]);
        old.generation = 1;
        t.put_status(&old).await;
        t.fetcher.pass().await;
        let mut new = status(1, 1, 1, done(1));
        new.uid = "uid-duplicate".into();
        new.pod = "pod-duplicate".into();
        new.generation = 2;
        t.put_status(&new).await;
        assert_eq!(t.fetcher.pass().await.objects, 1);
        assert!(t.vol("containers-status/agent-1.done").exists(), "equal counts, another pod, a higher generation");
        assert_eq!(t.fetcher.shards[0].newest.as_ref().unwrap().uid, "uid-duplicate");

        // The old owner writes on (a later seq of its generation, higher counts even): ignored, logged once.
        let mut stale = status(1, 3, 9, vec![start(1)]);
        stale.uid = old.uid.clone();
        stale.generation = 1;
        t.put_status(&stale).await;
        t.fetcher.pass().await;
        stale.seq += 1;
        t.put_status(&stale).await;
        t.fetcher.pass().await;
        assert!(t.vol("containers-status/agent-1.done").exists(), "a passed owner's markers are not mirrored");
        assert_eq!(t.fetcher.shards[0].newest.as_ref().unwrap().uid, "uid-duplicate");
        assert_eq!(t.fetcher.shards[0].stale_pods, [old.uid.clone()], "each passed pod logged once");

        // Uploaders that do not fence (generation 0 on both sides): the attempt counts order them.
        let mut t = setup("unfenced");
        t.put_status(&status(1, 0, 50, vec![start(1)])).await;
        t.fetcher.pass().await;
        t.put_status(&status(1, 0, 1, done(1))).await;
        t.fetcher.pass().await;
        assert!(!t.vol("containers-status/agent-1.done").exists(), "the same pod, earlier: ignored");
        let mut next = status(1, 1, 1, done(1));
        next.generation = 0;
        t.put_status(&next).await;
        t.fetcher.pass().await;
        assert!(t.vol("containers-status/agent-1.done").exists(), "a later pod, not fenced: followed");
    }

    /// A silent shard whose pod still had retries (`failures < --backoff-limit-per-index`) has a replacement due
    /// (a per-index backoff, a slot behind the parallelism): lost only after 3 x `--worker-silence`; one on its last
    /// try, after `--worker-silence`.
    #[tokio::test]
    async fn a_shard_with_retries_left_gets_longer_before_it_is_lost() {
        let mut t = setup("backoff");
        t.fetcher.backoff_limit = Some(2);
        t.put_status(&status(1, 1, 1, vec![start(1)])).await;
        t.put_status(&status(2, 2, 1, vec![start(2)])).await;
        t.fetcher.pass().await;
        let ago = |s| Instant::now().checked_sub(Duration::from_secs(s)).unwrap();
        for s in &mut t.fetcher.shards {
            s.changed = ago(61);
        }
        t.fetcher.pass().await;
        assert!(!t.lost.contains(1), "retries left: its replacement is due, not lost yet");
        assert!(t.lost.contains(2), "its last try: lost after --worker-silence");
        t.fetcher.shards[0].changed = ago(3 * 60 + 1);
        t.fetcher.pass().await;
        assert!(t.lost.contains(1), "no replacement after 3 x --worker-silence: lost");

        // No limit given: every shard is on its last try.
        let mut t = setup("backoff-unset");
        t.put_status(&status(1, 0, 1, vec![start(1)])).await;
        t.fetcher.pass().await;
        t.fetcher.shards[0].changed = ago(61);
        t.fetcher.pass().await;
        assert!(t.lost.contains(1));
    }

    /// A shard that never wrote a status object (a pod never scheduled, a restore failing on every try) is lost
    /// once every other shard has ended and `--worker-silence` has passed since the last of them ended.
    #[tokio::test]
    async fn a_shard_that_never_started_is_lost_after_the_others_ended() {
        let mut t = setup("never");
        let ago = |s| Instant::now().checked_sub(Duration::from_secs(s)).unwrap();
        t.fetcher.started = ago(3600);
        t.put_status(&status(1, 0, 1, vec![start(1)])).await;
        t.fetcher.pass().await;
        t.fetcher.shards[0].changed = ago(30);
        t.fetcher.pass().await;
        assert!(!t.lost.contains(2), "worker 1 runs: worker 2 waits for a pod");
        t.put_status(&status(1, 0, 2, done(1))).await;
        t.fetcher.pass().await;
        assert!(!t.lost.contains(2), "worker 1 just ended: worker 2 still has --worker-silence");
        t.fetcher.shards[0].ended_at = Some(ago(61));
        t.fetcher.pass().await;
        assert_eq!(t.lost.how(2), Some(Lost::NeverStarted), "every other worker ended --worker-silence ago: lost");
        assert!(!t.lost.contains(1), "ended: never lost");
    }
}

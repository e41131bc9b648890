//! The Indexed Job's contract (scale-out over nodes; `docs/architecture.md`, "Indexed Job"): one worker pair per
//! pod, each pod with a volume of its own, and S3 as the only medium between the pods and the monitor.
//!
//! - **Keys.** A worker's uploader writes only its own worker's keys, under the submission's prefix:
//!   [`key_of`] maps a path of the pod's volume to its key, or refuses it (another worker's files, the Job-wide
//!   markers, logcopy's outputs). Keys keep generation 1's layout, so the monitor's working volume, a restore and
//!   `logcopy status` read them as they read a generation 1 volume.
//! - **The shard status object** ([`ShardStatus`], key [`status_key`]): written by the uploader (our container, not
//!   the participant's) with a conditional PUT at each change: the pod's attempt from the downward API, the ETag
//!   of the results object it uploaded, the worker's markers and its supervisors' status records (claims from a
//!   participant-writable folder, shown and never scored from). The monitor reads it with `If-None-Match` (a 304
//!   when nothing moved) and fetches the results object only when its ETag changed, with `If-Match` on it.
//! - **Attempts.** [`PodAttempt`] orders the pods of one shard: a replacement pod has a higher failure count (or,
//!   after an eviction, which costs no budget, a higher ignored-failure count). Neither the uploader nor the
//!   monitor goes backwards: a pod that finds a newer attempt's status object stops writing.

use crate::markers::{Marker, Role, WorkerId};
use crate::pyjson::{self, Object, Value};
use crate::status::{self, Malformed, opt_int, req_str, req_time, req_u32, str_field};
use std::cmp::Ordering;
use std::path::{Component, Path, PathBuf};

/// The folder of the shard status objects (a key folder; never on a worker pod's volume).
pub const SHARDS_DIR: &str = "shards";
/// The schema's major version (a reader refuses another) and the minor this writer writes.
pub const SCHEMA_MAJOR: i64 = 1;
pub const SCHEMA_MINOR: i64 = 0;
/// The largest status object a reader accepts.
pub const MAX_BYTES: u64 = 256 * 1024;
/// The most markers a status object lists (a worker writes a few per attempt; more is forged).
pub const MAX_MARKERS: usize = 512;
/// The longest pod name (a DNS subdomain) and pod UID.
pub const MAX_POD_NAME: usize = 253;
pub const MAX_UID: usize = 64;
/// The longest ETag accepted.
pub const MAX_ETAG: usize = 128;

/// The key, below the submission's prefix, of worker `w`'s status object: `shards/worker-<ID>.json`.
pub fn status_key(w: WorkerId) -> PathBuf {
    Path::new(SHARDS_DIR).join(format!("worker-{}.json", w.0))
}

/// The name of the marker an uploader writes when its final flush is through (`uploader-<ID>.done`), which
/// upstream's post-run step counts among the `.done` files of a generation 2 submission.
pub fn uploader_done_name(w: WorkerId) -> String {
    format!("uploader-{}.done", w.0)
}

/// The name of the monitor's `.done` marker, counted likewise.
pub const MONITOR_DONE: &str = "monitor.done";

/// The key (relative to the submission's prefix) of `rel`, a path of worker `w`'s pod volume, or `None` when
/// `w`'s uploader must not write it:
/// - `agent/agent<w>/...` (the evaluator's checkpoint and logs), as it is;
/// - `containers-status/<name>`: `w`'s own markers and status records only (never the Job-wide cancel markers,
///   which the monitor writes, nor another worker's);
/// - `simulator/...` (CARLA's and the simulator supervisor's files): below `simulator/worker-<w>/`, since every
///   pod's CARLA writes the same names;
/// - nothing else (logcopy's outputs, other workers' folders, anything at the top).
pub fn key_of(rel: &Path, w: WorkerId) -> Option<PathBuf> {
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let parts: Vec<&str> = rel.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [a, d, _, ..] if *a == crate::layout::AGENT_DIR && *d == format!("agent{}", w.0) => Some(rel.to_path_buf()),
        [s, name] if *s == crate::layout::STATUS_DIR => is_own_status_file(name, w).then(|| rel.to_path_buf()),
        [s, rest @ ..] if *s == crate::layout::SIMULATOR_DIR && !rest.is_empty() => {
            Some(Path::new(crate::layout::SIMULATOR_DIR).join(format!("worker-{}", w.0)).join(rest.join("/")))
        }
        _ => None,
    }
}

/// Whether `name` in `containers-status/` is one of worker `w`'s markers (start, crash, done, failed of either
/// side) or one of its status records.
pub fn is_own_status_file(name: &str, w: WorkerId) -> bool {
    match Marker::parse(name) {
        Some(m @ (Marker::Start { .. } | Marker::Crash { .. } | Marker::Done { .. } | Marker::Failed { .. })) => {
            m.worker() == Some(w)
        }
        Some(_) => false,
        None => [Role::Agent, Role::Simulator].iter().any(|r| name == status::file_name(*r, w)),
    }
}

/// Upstream's `ROUTES_SUBSET` bounds for worker `i` (0-based) of `workers`:
/// `ceil(i*step), ceil((i+1)*step)-1` with `step = routes/workers` in floating point, as Python computes them.
/// The float arithmetic is kept on purpose: `29/7*7` is `29.000000000000004`, so the last of 7 workers over 29
/// routes is given `25-29`, one id past the routes file. `end < start` is an empty subset (more workers than routes).
pub fn upstream_subset(routes: u32, workers: u32, i: u32) -> (i64, i64) {
    let step = f64::from(routes) / f64::from(workers);
    // ceil of at most u32::MAX * 2 fits an i64 exactly.
    let at = |k: u32| (f64::from(k) * step).ceil() as i64;
    (at(i), at(i.saturating_add(1)) - 1)
}

/// The `ROUTES_SUBSET` of worker `w` (numbered from 1) of `workers` over `routes` routes, as `make-job` writes it
/// for a generation 1 pod: upstream's split with its last end kept below `routes` (in floats 29/7*7 > 29, and
/// upstream's "25-29" names a route the routes file does not have, which the evaluator refuses). An Indexed Job's
/// pods share one template, so the agent's supervisor computes it from `JOB_COMPLETION_INDEX`.
pub fn routes_subset(routes: u32, workers: u32, w: WorkerId) -> String {
    let (start, end) = upstream_subset(routes, workers.max(1), w.0.saturating_sub(1));
    format!("{start}-{}", (end + 1).min(i64::from(routes)) - 1)
}

/// The pod of a shard's attempt, from the Job controller's annotations through the downward API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodAttempt {
    /// `batch.kubernetes.io/job-index-failure-count`: the shard's failed pods so far.
    pub failures: u32,
    /// `batch.kubernetes.io/job-index-ignored-failure-count`: its pods lost to a disruption (an eviction).
    pub ignored: u32,
}

impl PodAttempt {
    /// The pods of the shard before this one.
    pub fn ordinal(self) -> u64 {
        u64::from(self.failures) + u64::from(self.ignored)
    }
}

impl Ord for PodAttempt {
    /// A later pod of the shard is greater: both counts only grow, so their sum orders the pods.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ordinal(), self.failures).cmp(&(other.ordinal(), other.failures))
    }
}

impl PartialOrd for PodAttempt {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for PodAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pod attempt {} ({} failed, {} evicted)", self.ordinal(), self.failures, self.ignored)
    }
}

/// The results object as uploaded: its ETag and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub etag: String,
    pub size: u64,
}

/// A worker's shard status object: see the module's documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    pub worker: WorkerId,
    /// The pod's name and UID (from the downward API; the UID tells two pods of one attempt apart).
    pub pod: String,
    pub uid: String,
    /// The worker Job's UID (the pod's `batch.kubernetes.io/controller-uid` label; empty when unknown). The
    /// attempt counts are the Job's: a resumed submission's new Job starts them again, so an object of an earlier
    /// Job is never "newer" ([`Self::same_job`]).
    pub job: String,
    pub attempt: PodAttempt,
    /// The fencing generation: each pod that takes the shard over writes the generation it read plus one, with a
    /// PUT conditional on the ETag it read, so the pods that owned a shard form one chain. Objects order by
    /// `(generation, seq)` ([`Self::supersedes`]): a pod that finds a higher generation than its own was overtaken, whatever
    /// the attempt counts say (a suspended and resumed Job, a duplicate pod, a resumed submission's new Job).
    pub generation: u64,
    /// How many times this pod has written the object (from 1): a change the monitor can see.
    pub seq: u64,
    /// The results object this pod uploaded last, if any (`None`: nothing uploaded yet by any pod).
    pub results: Option<ObjectRef>,
    /// The worker's markers on the pod's volume (only its own: [`is_own_status_file`]), sorted.
    pub markers: Vec<Marker>,
    /// The worker's supervisors' status records (claims).
    pub records: Vec<status::Record>,
    /// The uploader's final flush is through: this pod writes nothing more.
    pub ended: bool,
    /// When it was written (Unix seconds, the uploader's clock): a heartbeat between changes.
    pub at: i64,
}

impl ShardStatus {
    /// The object as JSON (bounded: the markers are capped at [`MAX_MARKERS`], the records are bounded by theirs).
    pub fn to_json(&self) -> String {
        let mut o = Object::new();
        o.insert("schema", Value::str(format!("{SCHEMA_MAJOR}.{SCHEMA_MINOR}")));
        o.insert("worker", Value::Int(self.worker.0.into()));
        o.insert("pod", Value::str(cut(&self.pod, MAX_POD_NAME)));
        o.insert("uid", Value::str(cut(&self.uid, MAX_UID)));
        o.insert("job", Value::str(cut(&self.job, MAX_UID)));
        o.insert("failures", Value::Int(self.attempt.failures.into()));
        o.insert("ignored_failures", Value::Int(self.attempt.ignored.into()));
        o.insert("generation", Value::Int(self.generation.min(i64::MAX as u64) as i64));
        o.insert("seq", Value::Int(self.seq.min(i64::MAX as u64) as i64));
        o.insert(
            "results",
            self.results.as_ref().map_or(Value::Null, |r| {
                let mut x = Object::new();
                x.insert("etag", Value::str(cut(&r.etag, MAX_ETAG)));
                x.insert("size", Value::Int(r.size.min(i64::MAX as u64) as i64));
                Value::object(x)
            }),
        );
        let mut markers = self.markers.clone();
        markers.sort();
        markers.dedup();
        let markers = markers.iter().take(MAX_MARKERS).map(|m| Value::str(m.file_name())).collect();
        o.insert("markers", Value::array(markers));
        let records =
            self.records.iter().filter_map(|r| pyjson::parse(r.to_json().as_bytes()).ok()).collect::<Vec<Value>>();
        o.insert("records", Value::array(records));
        o.insert("ended", Value::Bool(self.ended));
        o.insert("at", Value::Int(self.at));
        let mut s = pyjson::to_pretty(&Value::object(o), false);
        s.push('\n');
        s
    }

    /// Parses an object strictly (types, ranges, lengths, the cap, the schema's major; every marker must be one of
    /// the worker's own, every record about the worker); unknown fields are ignored.
    pub fn parse(bytes: &[u8]) -> Result<ShardStatus, Malformed> {
        if bytes.len() as u64 > MAX_BYTES {
            return Err(Malformed::TooLarge { size: bytes.len() as u64 });
        }
        let v = pyjson::parse(bytes).map_err(|e| Malformed::Json(e.to_string()))?;
        let o = v.as_object().ok_or(Malformed::Field { field: "(document)", why: "not an object" })?;
        let schema = req_str(o, "schema", 16)?;
        match schema.split('.').next().and_then(|m| m.parse::<i64>().ok()) {
            Some(SCHEMA_MAJOR) => {}
            Some(_) => return Err(Malformed::Schema(schema)),
            None => return Err(Malformed::Field { field: "schema", why: "not MAJOR.MINOR" }),
        }
        let worker = WorkerId(req_u32(o, "worker")?);
        if worker.0 == 0 {
            return Err(Malformed::Field { field: "worker", why: "workers are numbered from 1" });
        }
        let results = match o.get("results") {
            None | Some(Value::Null) => None,
            Some(Value::Object(r)) => Some(ObjectRef {
                etag: req_str(r, "etag", MAX_ETAG)?,
                size: opt_int(r, "size", 0, i64::MAX)?.ok_or(Malformed::Field { field: "size", why: "missing" })?
                    as u64,
            }),
            Some(_) => return Err(Malformed::Field { field: "results", why: "not an object" }),
        };
        let markers = match o.get("markers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if a.len() <= MAX_MARKERS => {
                let mut ms = a
                    .iter()
                    .map(|m| {
                        let name = m.as_str().ok_or(Malformed::Field { field: "markers", why: "not a string" })?;
                        match Marker::parse(name) {
                            Some(mk) if is_own_status_file(name, worker) => Ok(mk),
                            _ => Err(Malformed::Field { field: "markers", why: "not one of the worker's markers" }),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                ms.sort();
                ms.dedup();
                ms
            }
            Some(Value::Array(_)) => return Err(Malformed::Field { field: "markers", why: "too many entries" }),
            Some(_) => return Err(Malformed::Field { field: "markers", why: "not an array" }),
        };
        let records = match o.get("records") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if a.len() <= 2 => a
                .iter()
                .map(|r| {
                    let text = pyjson::to_pretty(r, false);
                    let rec = status::Record::parse(text.as_bytes())?;
                    if rec.worker != worker {
                        return Err(Malformed::Field { field: "records", why: "a record of another worker" });
                    }
                    Ok(rec)
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Array(_)) => return Err(Malformed::Field { field: "records", why: "more than two" }),
            Some(_) => return Err(Malformed::Field { field: "records", why: "not an array" }),
        };
        let ended = match o.get("ended") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Malformed::Field { field: "ended", why: "not a boolean" }),
        };
        Ok(ShardStatus {
            worker,
            pod: str_field(o, "pod", MAX_POD_NAME)?.unwrap_or_default(),
            uid: str_field(o, "uid", MAX_UID)?.unwrap_or_default(),
            job: str_field(o, "job", MAX_UID)?.unwrap_or_default(),
            attempt: PodAttempt { failures: req_u32(o, "failures")?, ignored: req_u32(o, "ignored_failures")? },
            generation: opt_int(o, "generation", 0, i64::MAX)?.unwrap_or(0) as u64,
            seq: opt_int(o, "seq", 0, i64::MAX)?.unwrap_or(0) as u64,
            results,
            markers,
            records,
            ended,
            at: req_time(o, "at")?,
        })
    }

    /// Whether this object comes after `other` in the shard's chain of owners: a higher fencing generation, or the
    /// same generation (the same owner) written later. What the monitor follows and what tells an uploader it was
    /// overtaken.
    pub fn supersedes(&self, other: &ShardStatus) -> bool {
        (self.generation, self.seq) > (other.generation, other.seq)
    }

    /// Whether both objects were written by pods of the same worker Job (or either does not say): only then do
    /// their attempt counts compare. A resumed submission runs a new Job whose pods count from 0 again; its pods
    /// take over the shards an earlier Job left, and the monitor follows them.
    pub fn same_job(&self, other: &ShardStatus) -> bool {
        self.job.is_empty() || other.job.is_empty() || self.job == other.job
    }

    /// Whether this object was written by a later pod of the shard than `other` (or by the same pod, later), both
    /// of the same Job ([`Self::same_job`]; across Jobs the counts say nothing).
    pub fn newer_than(&self, other: &ShardStatus) -> bool {
        match self.attempt.cmp(&other.attempt) {
            Ordering::Equal if self.uid == other.uid => self.seq > other.seq,
            o => o == Ordering::Greater,
        }
    }
}

fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markers::Attempt;

    fn w(i: u32) -> WorkerId {
        WorkerId(i)
    }

    #[test]
    fn a_worker_writes_only_its_own_keys() {
        let k = |p: &str, i| key_of(Path::new(p), w(i)).map(|k| k.to_string_lossy().into_owned());
        assert_eq!(k("agent/agent1/agent_results.json", 1).as_deref(), Some("agent/agent1/agent_results.json"));
        assert_eq!(k("agent/agent1/logs/a/b.log", 1).as_deref(), Some("agent/agent1/logs/a/b.log"));
        // Worker 11's folder is not worker 1's (upstream's restore glob `*1.json` matched both).
        assert_eq!(k("agent/agent11/agent_results.json", 1), None);
        assert_eq!(k("agent/agent1/agent_results.json", 11), None);
        assert_eq!(k("agent/agent_results.json", 1), None, "the merged file is the monitor's");
        assert_eq!(k("containers-status/agent-1.start0", 1).as_deref(), Some("containers-status/agent-1.start0"));
        assert_eq!(k("containers-status/simulator-1.done", 1).as_deref(), Some("containers-status/simulator-1.done"));
        assert_eq!(
            k("containers-status/agent-1.status.json", 1).as_deref(),
            Some("containers-status/agent-1.status.json")
        );
        for forged in [
            "containers-status/agent-2.done",
            "containers-status/agent-11.done",
            "containers-status/simulation.cancel",
            "containers-status/simulation-1.cancel",
            "containers-status/logcopy.done",
            "containers-status/notes.txt",
            "containers-status/x/agent-1.done",
            "evalai/stdout.txt",
            "logcopy/logcopy.log",
            "shards/worker-1.json",
            "agent/agent1",
            "../agent/agent1/x",
            "simulator",
        ] {
            assert_eq!(k(forged, 1), None, "{forged}");
        }
        assert_eq!(k("simulator/CarlaUE4.log", 3).as_deref(), Some("simulator/worker-3/CarlaUE4.log"));
        assert_eq!(k("simulator/Logs/x.log", 3).as_deref(), Some("simulator/worker-3/Logs/x.log"));
    }

    /// The same strings as make-job's `subsets()` (Python, float arithmetic): every split of up to 60 routes over
    /// up to 20 workers, computed here by python3.
    #[test]
    fn routes_subsets_are_make_jobs() {
        let script = "import math\nfor r in range(1, 61):\n for n in range(1, 21):\n  s = r / n\n  print(' '.join(f'{math.ceil(i * s)}-{min(math.ceil((i + 1) * s), r) - 1}' for i in range(n)))\n";
        let out = std::process::Command::new("python3").args(["-c", script]).output().expect("python3 runs");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        for r in 1..=60u32 {
            for n in 1..=20u32 {
                let want = lines.next().expect("a line per split");
                let got: Vec<String> = (1..=n).map(|i| routes_subset(r, n, w(i))).collect();
                assert_eq!(got.join(" "), want, "{r} routes over {n} workers");
            }
        }
    }

    #[test]
    fn a_later_pod_of_a_shard_orders_after_an_earlier_one() {
        let a = |failures, ignored| PodAttempt { failures, ignored };
        assert!(a(1, 0) > a(0, 0));
        assert!(a(0, 1) > a(0, 0), "the pod after an eviction");
        assert!(a(1, 1) > a(1, 0));
        assert!(a(2, 0) > a(0, 1));
        assert_eq!(a(0, 0), PodAttempt::default());
    }

    fn sample() -> ShardStatus {
        let mut rec = status::Record::new(Role::Agent, w(2), 3);
        rec.change(status::State::Running, 0, 1_700_000_000);
        ShardStatus {
            worker: w(2),
            pod: "sub-42-workers-1-abcde".into(),
            uid: "0b8c2a4e-1111-2222-3333-444455556666".into(),
            job: "7d0c9f3a-aaaa-bbbb-cccc-ddddeeeeffff".into(),
            attempt: PodAttempt { failures: 1, ignored: 0 },
            generation: 2,
            seq: 7,
            results: Some(ObjectRef { etag: "\"9b2cf535f27731c974343645a3985328\"".into(), size: 1234 }),
            markers: vec![
                Marker::Start { role: Role::Agent, worker: w(2), attempt: Attempt(0) },
                Marker::Start { role: Role::Simulator, worker: w(2), attempt: Attempt(0) },
            ],
            records: vec![rec],
            ended: false,
            at: 1_700_000_100,
        }
    }

    #[test]
    fn the_status_object_round_trips() {
        let mut s = sample();
        s.markers.sort();
        assert_eq!(ShardStatus::parse(s.to_json().as_bytes()).unwrap(), s);
    }

    #[test]
    fn a_status_object_with_another_workers_marker_or_record_is_refused() {
        let mut s = sample();
        s.markers.push(Marker::Done { role: Role::Agent, worker: w(3) });
        assert!(ShardStatus::parse(s.to_json().as_bytes()).is_err());
        let mut s = sample();
        s.records.push(status::Record::new(Role::Simulator, w(5), 3));
        assert!(ShardStatus::parse(s.to_json().as_bytes()).is_err());
        let text = sample().to_json().replace("\"schema\": \"1.0\"", "\"schema\": \"2.0\"");
        assert!(matches!(ShardStatus::parse(text.as_bytes()), Err(Malformed::Schema(_))));
        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_BYTES as usize));
        assert!(matches!(ShardStatus::parse(big.as_bytes()), Err(Malformed::TooLarge { .. })));
    }

    #[test]
    fn the_chain_of_owners_orders_by_generation_then_seq() {
        let a = sample();
        let mut b = a.clone();
        b.seq += 1;
        assert!(b.supersedes(&a) && !a.supersedes(&b));
        let mut c = a.clone();
        (c.generation, c.seq, c.uid) = (a.generation + 1, 1, "a pod with the same counts".into());
        assert!(c.supersedes(&b), "a take-over supersedes the old owner's last write, whatever the counts");
        assert!(!b.supersedes(&c));
        assert!(!a.supersedes(&a));
    }

    #[test]
    fn newer_means_a_later_pod_or_the_same_pod_later() {
        let a = sample();
        let mut b = a.clone();
        b.seq += 1;
        assert!(b.newer_than(&a) && !a.newer_than(&b));
        let mut c = a.clone();
        c.attempt.failures += 1;
        c.uid = "other".into();
        c.seq = 1;
        assert!(c.newer_than(&b), "a replacement pod's first write is newer than the old pod's last");
        assert!(!b.newer_than(&c));
        let mut d = a.clone();
        d.job = "another-job".into();
        assert!(!d.same_job(&a) && a.same_job(&b));
        d.job.clear();
        assert!(d.same_job(&a), "an object that does not name its Job compares by counts");
    }
}

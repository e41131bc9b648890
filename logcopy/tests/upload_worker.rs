//! An Indexed Job's worker pod against a real local S3 (moto_server): `logcopy restore --worker N` and `logcopy
//! upload` as real processes of the built binary. What they must do: write only worker N's keys, keep the shard
//! status object in step with the volume (conditional writes), cost one conditional GET a period when idle, refuse
//! to write as a stale pod, take over as a replacement pod, carry a cancel from S3 to the local markers, flush in
//! order on SIGTERM, and restore by exact keys (12 workers: worker 1 gets only its own).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::moto::Moto;
use volume::shard::ShardStatus;

const BUCKET: &str = "lb-upload";
const TABLE: &str = "leaderboard-submissions";
const ID: &str = "4321";
const STATUS_KEY: &str = "4321/shards/worker-1.json";

fn scratch(name: &str) -> PathBuf {
    testkit::Scratch::new(&format!("upload-{name}")).keep()
}

/// A pod volume of worker 1 (of 12), with what a hostile participant adds: another worker's folder and a forged
/// marker of worker 2.
fn pod_volume(name: &str) -> PathBuf {
    let vol = scratch(name).join("logs");
    for d in ["agent/agent1/logs", "agent/agent11", "containers-status", "simulator", "logcopy", "evalai"] {
        std::fs::create_dir_all(vol.join(d)).unwrap();
    }
    std::fs::write(vol.join("agent/agent1/agent_results.json"), b"{\"_checkpoint\": {\"records\": []}}\n").unwrap();
    std::fs::write(vol.join("agent/agent1/logs/route0.log"), b"route 0\n").unwrap();
    std::fs::write(vol.join("agent/agent11/agent_results.json"), b"{\"worker\": 11}\n").unwrap();
    std::fs::write(vol.join("simulator/CarlaUE4.log"), b"carla\n").unwrap();
    std::fs::write(vol.join("containers-status/agent-1.start0"), b"").unwrap();
    std::fs::write(vol.join("containers-status/simulator-1.start0"), b"").unwrap();
    std::fs::write(vol.join("containers-status/agent-2.done"), b"").unwrap();
    vol
}

struct Pod {
    child: Child,
    out: PathBuf,
}

impl Pod {
    fn sigterm(&mut self) -> i32 {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "logcopy upload did not exit after SIGTERM: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- logcopy upload's output ---\n{}", self.log());
        }
    }
}

fn command(moto: &Moto, sub: &str, vol: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logcopy"));
    cmd.arg(sub)
        .arg("--logs")
        .arg(vol)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(moto.env(BUCKET, TABLE))
        .env("SUBMISSION_ID", ID)
        .env("SUBMISSION_WORKERS", "12");
    cmd
}

/// `logcopy upload` for worker 1 as pod `uid` after `failures` failed pods of its shard.
fn upload(moto: &Moto, vol: &Path, uid: &str, failures: u32, extra: &[&str]) -> Pod {
    let out = vol.parent().unwrap().join(format!("upload-{uid}.log"));
    let child = command(moto, "upload", vol)
        .args(["--upload-period", "500ms", "--debounce", "100ms"])
        .args(extra)
        .env("JOB_COMPLETION_INDEX", "0")
        .env("POD_NAME", format!("sub-4321-workers-0-{uid}"))
        .env("POD_UID", uid)
        .env("POD_FAILURE_COUNT", failures.to_string())
        .env("POD_IGNORED_FAILURE_COUNT", "")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start logcopy upload");
    Pod { child, out }
}

async fn object(moto: &Moto, key: &str) -> Option<(Vec<u8>, String)> {
    let out = moto.s3().await.get_object().bucket(BUCKET).key(key).send().await.ok()?;
    let etag = out.e_tag().unwrap_or_default().to_string();
    Some((out.body.collect().await.unwrap().into_bytes().to_vec(), etag))
}

async fn put(moto: &Moto, key: &str, body: &[u8]) -> String {
    let out = moto.s3().await.put_object().bucket(BUCKET).key(key).body(body.to_vec().into()).send().await.unwrap();
    out.e_tag().unwrap().to_string()
}

async fn status(moto: &Moto) -> Option<(ShardStatus, String)> {
    let (body, etag) = object(moto, STATUS_KEY).await?;
    Some((ShardStatus::parse(&body).expect("the status object parses"), etag))
}

/// A status object of worker 1 written by pod `name` after `failures` failed pods, its results object `etag`.
fn shard(name: &str, failures: u32, seq: u64, etag: &str, size: u64) -> ShardStatus {
    ShardStatus {
        worker: volume::markers::WorkerId(1),
        pod: format!("sub-4321-workers-0-{name}"),
        uid: format!("uid-{name}"),
        job: String::new(),
        attempt: volume::shard::PodAttempt { failures, ignored: 0 },
        generation: 0,
        seq,
        results: Some(volume::shard::ObjectRef { etag: etag.to_string(), size }),
        markers: Vec::new(),
        records: Vec::new(),
        ended: false,
        at: 1_800_000_000,
    }
}

/// Polls `f` (async) until it gives `Some`, for at most `secs`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(secs: u64, what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn keys(objects: &BTreeMap<String, Vec<u8>>) -> Vec<&str> {
    objects.keys().map(String::as_str).collect()
}

/// The recorded S3 requests (method, path and query, less the SDK's `x-id` tag), in order.
fn requests(moto: &Moto) -> Vec<(String, String)> {
    moto.requests()
        .into_iter()
        .map(|(m, url)| (m, url.split_once("://").map_or(url.clone(), |x| x.1.to_string())))
        .map(|(m, url)| (m, url.split_once('/').map_or(String::new(), |x| x.1.to_string())))
        .map(|(m, p)| (m, p.split_once("?x-id=").map_or(p.clone(), |x| x.0.to_string())))
        .collect()
}

/// moto, a pod volume of worker 1 and its uploader (the shard's first pod), once its first status object is written
/// with the results ETag.
async fn started(name: &str, extra: &[&str]) -> (Moto, PathBuf, Pod, ShardStatus) {
    let moto = Moto::start(&format!("upload-{name}"));
    moto.setup(BUCKET, TABLE).await;
    let vol = pod_volume(name);
    let pod = upload(&moto, &vol, &format!("uid-{name}"), 0, extra);
    let (first, _) =
        until(20, "the first status object", || async { status(&moto).await.filter(|(s, _)| s.results.is_some()) })
            .await;
    (moto, vol, pod, first)
}

#[tokio::test]
async fn only_worker_ns_keys_go_the_status_follows_changes_and_sigterm_flushes_in_order() {
    let (moto, vol, mut pod, first) = started("keys", &[]).await;
    // Hostile files added while it runs: a link to a file outside the volume, another worker's status record.
    let outside = vol.parent().unwrap().join("outside-secret");
    std::fs::write(&outside, b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, vol.join("agent/agent1/logs/secret.log")).unwrap();
    std::fs::write(vol.join("containers-status/agent-2.status.json"), b"{}").unwrap();
    assert_eq!((first.worker.0, first.attempt.failures, first.uid.as_str()), (1, 0, "uid-keys"));
    let (_, results_etag) = object(&moto, "4321/agent/agent1/agent_results.json").await.unwrap();
    let names = |s: &ShardStatus| {
        let mut n = s.markers.iter().map(|m| m.file_name()).collect::<Vec<_>>();
        n.sort();
        n
    };
    until(10, "the status object lists the pair's markers and the results ETag", || async {
        status(&moto).await.filter(|(s, _)| {
            names(s) == ["agent-1.start0", "simulator-1.start0"] && s.results.as_ref().unwrap().etag == results_etag
        })
    })
    .await;

    // A change of the results file: uploaded on its last ETag, then the status object with seq + 1.
    let (before, _) = status(&moto).await.unwrap();
    std::fs::write(vol.join("agent/agent1/agent_results.json"), b"{\"_checkpoint\": {\"records\": [1]}}\n").unwrap();
    let (after, _) = until(10, "the status object follows the results file", || async {
        let (s, _) = status(&moto).await?;
        let (body, etag) = object(&moto, "4321/agent/agent1/agent_results.json").await?;
        (body.ends_with(b"[1]}}\n") && s.results.as_ref()?.etag == etag).then_some((s, etag))
    })
    .await;
    assert!(after.seq > before.seq, "seq {} then {}", before.seq, after.seq);
    assert_eq!(after.results.as_ref().unwrap().size, 34);
    // A marker of the worker's: uploaded, and listed.
    std::fs::write(vol.join("containers-status/agent-1.done"), b"").unwrap();
    until(10, "the new marker is listed", || async {
        status(&moto).await.filter(|(s, _)| names(s).contains(&"agent-1.done".to_string()))
    })
    .await;
    until(10, "the new marker is uploaded", || async { object(&moto, "4321/containers-status/agent-1.done").await })
        .await;

    // A new log goes with the next period's sync (its file event marks the logs changed).
    std::fs::write(vol.join("agent/agent1/logs/route1.log"), b"route 1\n").unwrap();
    until(10, "the new log is uploaded", || async { object(&moto, "4321/agent/agent1/logs/route1.log").await }).await;

    // SIGTERM: the log written just before goes last, after the status object's end and uploader-1.done.
    std::fs::write(vol.join("agent/agent1/logs/route0.log"), b"route 0\nroute 0 ends\n").unwrap();
    moto.reset_recording();
    assert_eq!(pod.sigterm(), 0, "{}", pod.log());
    let (end, _) = status(&moto).await.unwrap();
    assert!(end.ended, "the last status object says the pod ended");
    let puts: Vec<String> = requests(&moto).into_iter().filter(|(m, _)| m == "PUT").map(|(_, p)| p).collect();
    let at = |key: &str| puts.iter().rposition(|p| p.starts_with(&format!("{BUCKET}/{key}"))).unwrap_or(usize::MAX);
    let (st, done, log) =
        (at(STATUS_KEY), at("4321/containers-status/uploader-1.done"), at("4321/agent/agent1/logs/route0.log"));
    assert!(st < done && done < log, "flush order: status {st}, uploader done {done}, log {log}: {puts:?}");

    let all = moto.objects(BUCKET).await;
    assert_eq!(
        keys(&all),
        [
            "4321/agent/agent1/agent_results.json",
            "4321/agent/agent1/logs/route0.log",
            "4321/agent/agent1/logs/route1.log",
            "4321/containers-status/agent-1.done",
            "4321/containers-status/agent-1.start0",
            "4321/containers-status/simulator-1.start0",
            "4321/containers-status/uploader-1.done",
            "4321/shards/worker-1.json",
            "4321/simulator/worker-1/CarlaUE4.log",
        ],
        "only worker 1's keys: neither agent/agent11, the forged agent-2.done and agent-2.status.json, nor a link"
    );
    assert_eq!(all["4321/agent/agent1/logs/route0.log"], b"route 0\nroute 0 ends\n");
}

#[tokio::test]
async fn an_idle_uploader_costs_one_conditional_get_a_period_and_its_heartbeats() {
    let (moto, _vol, mut pod, _) = started("idle", &["--heartbeat", "2s"]).await;
    // Let the first sync of the logs finish, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, _) = status(&moto).await.unwrap();
    moto.reset_recording();
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let reqs = requests(&moto);
    let gets: Vec<&String> = reqs.iter().filter(|(m, _)| m == "GET").map(|(_, p)| p).collect();
    let puts: Vec<&String> = reqs.iter().filter(|(m, _)| m == "PUT").map(|(_, p)| p).collect();
    println!(
        "idle for {window:?} at a 500 ms period, 2 s heartbeat: {} GETs, {} PUTs, {} requests",
        gets.len(),
        puts.len(),
        reqs.len()
    );
    let cancel = format!("{BUCKET}/4321/containers-status/simulation.cancel");
    let results = format!("{BUCKET}/4321/agent/agent1/agent_results.json");
    assert!(
        gets.iter().all(|p| **p == cancel || **p == results),
        "idle GETs are the cancel check and the results check of each heartbeat (no LIST): {gets:?}"
    );
    let (cancels, checks) =
        (gets.iter().filter(|p| ***p == cancel).count(), gets.iter().filter(|p| ***p == results).count());
    // At most one a period (the timer cannot fire faster); at least a few, however loaded the machine.
    assert!((2..=12).contains(&cancels), "one cancel GET a period: {cancels}");
    assert!((1..=4).contains(&checks), "one results check (a conditional GET) a heartbeat: {checks}");
    assert!(puts.iter().all(|p| p.as_str() == format!("{BUCKET}/{STATUS_KEY}")), "only heartbeats: {puts:?}");
    assert!((1..=4).contains(&puts.len()), "a heartbeat every 2 s: {}", puts.len());
    assert_eq!(reqs.len(), gets.len() + puts.len(), "{reqs:?}");
    let (after, _) = status(&moto).await.unwrap();
    assert!(after.seq > before.seq && after.at >= before.at, "a heartbeat moves seq and at");
    assert_eq!(pod.sigterm(), 0);
}

#[tokio::test]
async fn a_stale_pod_writes_nothing_and_stops_its_pair_and_a_replacement_takes_over() {
    let moto = Moto::start("upload-stale");
    moto.setup(BUCKET, TABLE).await;
    // The shard's pod after two failures wrote the results and the status object.
    let results_etag = put(&moto, "4321/agent/agent1/agent_results.json", b"{\"newer\": true}\n").await;
    let newer = shard("newer", 2, 4, &results_etag, 16);
    put(&moto, STATUS_KEY, newer.to_json().as_bytes()).await;
    moto.reset_recording();

    // An older pod (one failure counted) comes back: it must write nothing and stop its pair.
    let vol = pod_volume("stale");
    let mut old = upload(&moto, &vol, "uid-old", 1, &[]);
    testkit::eventually_true(Duration::from_secs(20), "the stale pod's local cancel marker", || {
        vol.join("containers-status/simulation-1.cancel").exists()
    });
    std::fs::write(vol.join("agent/agent1/agent_results.json"), b"{\"older\": true}\n").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(old.sigterm(), 0, "{}", old.log());
    assert!(old.log().contains("stale pod"), "{}", old.log());
    let writes: Vec<_> = requests(&moto).into_iter().filter(|(m, _)| m != "GET" && m != "HEAD").collect();
    assert_eq!(writes, [], "a stale pod writes nothing");
    assert_eq!(status(&moto).await.unwrap().0, newer);

    // The replacement (three failures): it takes over, and its first results PUT (on the newer pod's ETag) goes.
    moto.reset_recording();
    let vol = pod_volume("replacement");
    let mut new = upload(&moto, &vol, "uid-new", 3, &[]);
    let (s, _) = until(20, "the replacement's status object with its results", || async {
        let (s, _) = status(&moto).await?;
        let (_, etag) = object(&moto, "4321/agent/agent1/agent_results.json").await?;
        (s.uid == "uid-new" && s.results.as_ref()?.etag == etag && etag != results_etag).then_some((s, etag))
    })
    .await;
    assert_eq!(s.attempt.failures, 3);
    assert!(!vol.join("containers-status/simulation-1.cancel").exists(), "the replacement runs on");
    let results_puts = moto.object_puts(BUCKET).get("4321/agent/agent1/agent_results.json").copied();
    assert_eq!(results_puts, Some(1), "the first results PUT succeeded: {}", new.log());
    assert_eq!(new.sigterm(), 0);
}

/// A resumed submission runs a new worker Job, whose pods count their failures from 0 again: an object of the
/// earlier Job (its pod after two failures) must not make the new Job's first pod stale.
#[tokio::test]
async fn a_new_jobs_pod_takes_over_an_earlier_jobs_shard_whatever_its_counts() {
    let moto = Moto::start("upload-resume");
    moto.setup(BUCKET, TABLE).await;
    let results_etag = put(&moto, "4321/agent/agent1/agent_results.json", b"{\"earlier\": true}\n").await;
    let mut earlier = shard("earlier", 2, 9, &results_etag, 19);
    earlier.job = "job-of-the-first-run".into();
    put(&moto, STATUS_KEY, earlier.to_json().as_bytes()).await;

    let vol = pod_volume("resumed");
    let mut pod = upload(&moto, &vol, "uid-resumed", 0, &["--job-uid", "job-of-the-resume"]);
    let s = until(20, "the new Job's pod owns the shard", || async {
        let (s, _) = status(&moto).await?;
        (s.uid == "uid-resumed").then_some(s)
    })
    .await;
    assert_eq!((s.job.as_str(), s.attempt.failures), ("job-of-the-resume", 0));
    assert!(!vol.join("containers-status/simulation-1.cancel").exists(), "not stale: {}", pod.log());
    assert_eq!(pod.sigterm(), 0);
}

#[tokio::test]
async fn a_cancel_in_s3_reaches_the_local_markers_within_a_period() {
    let (moto, vol, mut pod, _) = started("cancel", &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!vol.join("containers-status/simulation.cancel").exists());
    put(&moto, "4321/containers-status/simulation.cancel", b"").await;
    let t = Instant::now();
    testkit::eventually_true(Duration::from_secs(10), "the local cancel markers", || {
        vol.join("containers-status/simulation.cancel").exists()
            && vol.join("containers-status/simulation-1.cancel").exists()
    });
    println!("cancel in S3 to the local markers: {:?} (period 500 ms)", t.elapsed());
    // The participant's code removes them (it can write the status folder): they are written again within a period,
    // so its supervisors still stop.
    let gets = |moto: &Moto| requests(moto).iter().filter(|(m, _)| m == "GET").count();
    let before = gets(&moto);
    for name in ["simulation.cancel", "simulation-1.cancel"] {
        std::fs::remove_file(vol.join("containers-status").join(name)).unwrap();
    }
    testkit::eventually_true(Duration::from_secs(10), "the removed cancel markers written again", || {
        vol.join("containers-status/simulation.cancel").exists()
            && vol.join("containers-status/simulation-1.cancel").exists()
    });
    assert!(pod.log().contains("was removed after logcopy wrote it"), "{}", pod.log());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gets(&moto), before, "no GET once cancelled (the heartbeat's results check is 60 s away)");
    assert_eq!(pod.sigterm(), 0);
    let all = moto.objects(BUCKET).await;
    assert!(!all.contains_key("4321/containers-status/simulation-1.cancel"), "the local markers are not uploaded");
}

#[tokio::test]
async fn a_cancel_marker_that_cannot_be_written_at_first_is_written_at_a_later_period() {
    let (moto, vol, mut pod, _) = started("cancel-unwritable", &[]).await;
    // The status folder replaced by a file: the local markers cannot be written.
    let status = vol.join("containers-status");
    std::fs::rename(&status, vol.join("status-aside")).unwrap();
    std::fs::write(&status, b"not a folder").unwrap();
    put(&moto, "4321/containers-status/simulation.cancel", b"").await;
    testkit::eventually_true(Duration::from_secs(10), "the failed marker write logged", || {
        pod.log().contains("cannot write the local marker")
    });
    // The folder back: the markers follow within a period or two, though S3 answers the cancel GET with a 304 now.
    std::fs::remove_file(&status).unwrap();
    std::fs::rename(vol.join("status-aside"), &status).unwrap();
    testkit::eventually_true(Duration::from_secs(10), "the local cancel markers, once the folder is back", || {
        status.join("simulation.cancel").exists() && status.join("simulation-1.cancel").exists()
    });
    assert_eq!(pod.sigterm(), 0);
}

#[tokio::test]
async fn restore_worker_fetches_exactly_its_keys_among_twelve_and_the_uploader_sends_none_again() {
    let moto = Moto::start("upload-restore");
    moto.setup(BUCKET, TABLE).await;
    let mut results_etag = String::new();
    for w in 1..=12 {
        let dir = format!("4321/agent/agent{w}");
        let etag = put(&moto, &format!("{dir}/agent_results.json"), format!("{{\"worker\": {w}}}\n").as_bytes()).await;
        if w == 1 {
            results_etag = etag;
        }
        put(&moto, &format!("{dir}/.agent_results.json.last-good"), format!("{{\"good\": {w}}}\n").as_bytes()).await;
        put(
            &moto,
            &format!("{dir}/.agent_results.json.route-crashes"),
            format!("{{\"RouteScenario_{w}\": 1}}").as_bytes(),
        )
        .await;
        put(&moto, &format!("{dir}/logs/route0.log"), b"log").await;
        put(&moto, &format!("4321/containers-status/agent-{w}.crash0"), b"").await;
    }
    // The shard's previous pod (no failure yet) uploaded worker 1's results.
    let prev = shard("prev", 0, 9, &results_etag, 14);
    put(&moto, STATUS_KEY, prev.to_json().as_bytes()).await;
    moto.reset_recording();

    let vol = scratch("restore").join("logs");
    let out = command(&moto, "restore", &vol).arg("--worker").env("JOB_COMPLETION_INDEX", "0").output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let got: Vec<String> = testkit::files_under(&vol)
        .iter()
        .map(|p| p.strip_prefix(&vol).unwrap().to_string_lossy().into_owned())
        .filter(|p| !p.starts_with("logcopy/"))
        .collect();
    assert_eq!(
        got,
        [
            "agent/agent1/.agent_results.json.last-good",
            "agent/agent1/.agent_results.json.route-crashes",
            "agent/agent1/agent_results.json",
        ],
        "worker 1's files alone (not agent11's, no markers, no logs): {log}"
    );
    assert_eq!(std::fs::read(vol.join("agent/agent1/agent_results.json")).unwrap(), b"{\"worker\": 1}\n");
    let reqs = requests(&moto);
    assert_eq!(reqs.len(), 3, "three GETs of exact keys, no LIST: {reqs:?}");
    assert!(reqs.iter().all(|(m, p)| m == "GET" && !p.contains('?')), "{reqs:?}");
    for d in ["containers-status", "simulator", "evalai", "agent/agent1"] {
        assert!(vol.join(d).is_dir(), "{d}");
    }

    // The next pod of the shard (one failure) uploads none of the restored files again.
    moto.reset_recording();
    let mut pod = upload(&moto, &vol, "uid-next", 1, &[]);
    until(20, "the replacement's status object", || async { status(&moto).await.filter(|(s, _)| s.uid == "uid-next") })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pod.sigterm(), 0);
    let puts = moto.object_puts(BUCKET);
    for restored in ["agent_results.json", ".agent_results.json.last-good", ".agent_results.json.route-crashes"] {
        assert_eq!(puts.get(&format!("4321/agent/agent1/{restored}")), None, "{restored} uploaded again: {puts:?}");
    }
    let (s, _) = status(&moto).await.unwrap();
    assert_eq!(s.results, prev.results, "the shard's results object is still the previous pod's");
    assert!(s.ended);
}

#[tokio::test]
async fn a_running_pod_that_finds_a_newer_pod_stops_writing_and_stops_its_pair() {
    let (moto, vol, mut pod, first) = started("overtaken", &[]).await;
    // The shard's next pod (one failure) takes over behind this one's back: the next fencing generation.
    let mut newer = shard("next", 1, 1, &first.results.as_ref().unwrap().etag, 33);
    newer.generation = first.generation + 1;
    put(&moto, STATUS_KEY, newer.to_json().as_bytes()).await;
    let (results_before, _) = object(&moto, "4321/agent/agent1/agent_results.json").await.unwrap();
    moto.reset_recording();
    // A change: the status object is checked (a conditional GET) before the results object or a marker is written.
    std::fs::write(vol.join("agent/agent1/agent_results.json"), b"{\"late\": true}\n").unwrap();
    std::fs::write(vol.join("containers-status/agent-1.crash0"), b"").unwrap();
    // The results file's companions (which restore --worker brings into the next pod) are guarded as it is.
    std::fs::write(vol.join("agent/agent1/.agent_results.json.last-good"), b"{\"late\": true}\n").unwrap();
    std::fs::write(vol.join("agent/agent1/.agent_results.json.route-crashes"), b"{\"late\": 1}").unwrap();
    testkit::eventually_true(Duration::from_secs(10), "the overtaken pod's local cancel marker", || {
        vol.join("containers-status/simulation-1.cancel").exists()
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pod.sigterm(), 0);
    assert!(pod.log().contains("stale pod"), "{}", pod.log());
    let writes: Vec<_> = requests(&moto).into_iter().filter(|(m, _)| m != "GET").collect();
    assert_eq!(writes, [], "nothing written once stale, not even at SIGTERM");
    assert_eq!(status(&moto).await.unwrap().0, newer, "the newer pod's status object stands");
    assert!(object(&moto, "4321/containers-status/uploader-1.done").await.is_none());
    let (results_after, _) = object(&moto, "4321/agent/agent1/agent_results.json").await.unwrap();
    assert_eq!(results_after, results_before, "the newer pod's results object stands");
}

#[test]
fn a_worker_out_of_range_or_missing_is_a_configuration_error_naming_it() {
    let run = |sub: &str, extra: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_logcopy"))
            .arg(sub)
            .args(extra)
            .env_clear()
            .env("SUBMISSION_ID", ID)
            .env("SUBMISSION_WORKERS", "12")
            .env("S3_BUCKET", BUCKET)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let vol = scratch("config").join("logs");
    let logs = vol.to_str().unwrap();
    let (code, err) = run("upload", &["--logs", logs], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--worker / WORKER_ID (or JOB_COMPLETION_INDEX): is required"), "{err}");
    let (code, err) = run("upload", &["--logs", logs], &[("JOB_COMPLETION_INDEX", "12")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("worker 13 (from JOB_COMPLETION_INDEX + 1) is not in 1..=12"), "{err}");
    let (code, err) = run("restore", &["--logs", logs, "--worker"], &[("WORKER_ID", "x1")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("\"x1\" (from --worker / WORKER_ID) is not a worker number"), "{err}");
    let (code, err) = run("restore", &["--logs", logs, "--worker", "3"], &[("S3_BUCKET", "")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("S3_BUCKET: is required with --worker"), "{err}");
    let (code, err) = run("upload", &["--logs", logs, "--worker", "1"], &[("POD_FAILURE_COUNT", "-1")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("POD_FAILURE_COUNT"), "{err}");
}

/// The local cancel markers of worker 1's pod volume.
fn cancelled(vol: &Path) -> bool {
    vol.join("containers-status/simulation-1.cancel").exists()
}

/// Two pods of the shard with equal attempt counts (a suspended and resumed Job, a duplicate pod): the second's
/// take-over writes the next fencing generation, and the first, overtaken, stops at its next write.
#[tokio::test]
async fn of_two_pods_with_equal_counts_the_second_take_over_makes_the_first_stale_by_generation() {
    let (moto, vol_a, mut a, first) = started("dup-a", &[]).await;
    let vol_b = pod_volume("dup-b");
    std::fs::write(vol_b.join("agent/agent1/agent_results.json"), b"{\"pod\": \"b\"}\n").unwrap();
    let mut b = upload(&moto, &vol_b, "uid-dup-b", 0, &[]);
    until(20, "the second pod owns the shard", || async {
        status(&moto).await.filter(|(s, _)| s.uid == "uid-dup-b" && s.results.is_some())
    })
    .await;
    // A change on the first pod: its guard finds the second's generation over its own.
    std::fs::write(vol_a.join("agent/agent1/agent_results.json"), b"{\"pod\": \"a, late\"}\n").unwrap();
    testkit::eventually_true(Duration::from_secs(10), "the first pod's local cancel marker", || cancelled(&vol_a));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.sigterm(), 0);
    assert!(a.log().contains("stale pod"), "{}", a.log());
    let (s, _) = status(&moto).await.unwrap();
    assert_eq!((s.uid.as_str(), s.generation, s.ended), ("uid-dup-b", 2, false), "the second pod's object stands");
    let (body, etag) = object(&moto, "4321/agent/agent1/agent_results.json").await.unwrap();
    assert_eq!(
        (body.as_slice(), Some(etag.as_str())),
        (&b"{\"pod\": \"b\"}\n"[..], s.results.as_ref().map(|r| r.etag.as_str()))
    );
    assert!(!cancelled(&vol_b), "the second pod runs on: {}", b.log());
    assert_eq!(b.sigterm(), 0);
    assert_eq!(first.generation, 1, "the shard's first owner");
    assert_eq!((s.generation, s.attempt.failures), (2, 0), "the take-over writes the generation read plus one");
}

/// The results file's companions (the last good copy, the route-crash record, which restore --worker brings into
/// the next pod) go after the guard, as the results file does: an overtaken pod whose only change is its last good
/// copy uploads nothing and stops.
#[tokio::test]
async fn an_overtaken_pod_does_not_upload_its_results_companions() {
    let (moto, vol, mut pod, first) = started("companions", &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut newer = shard("next", 1, 1, &first.results.as_ref().unwrap().etag, 33);
    newer.generation = first.generation + 1;
    put(&moto, STATUS_KEY, newer.to_json().as_bytes()).await;
    moto.reset_recording();
    std::fs::write(vol.join("agent/agent1/.agent_results.json.last-good"), b"{\"late\": true}\n").unwrap();
    std::fs::write(vol.join("agent/agent1/.agent_results.json.route-crashes"), b"{\"late\": 1}").unwrap();
    testkit::eventually_true(Duration::from_secs(10), "the overtaken pod's local cancel marker", || cancelled(&vol));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pod.sigterm(), 0);
    let writes: Vec<_> = requests(&moto).into_iter().filter(|(m, _)| m != "GET" && m != "HEAD").collect();
    assert_eq!(writes, [], "nothing written once overtaken: {}", pod.log());
}

/// A resumed submission's new Job (J2) takes the shard over while the earlier Job's pod (J1) still runs: J1's final
/// flush gets a failed precondition, reads J2's object (of a higher generation) and writes nothing.
#[tokio::test]
async fn an_earlier_jobs_pod_that_flushes_after_the_new_jobs_take_over_writes_nothing() {
    let (moto, _vol, mut pod, first) = started("job1", &["--job-uid", "job-1"]).await;
    let (current, _) = status(&moto).await.unwrap();
    let mut j2 = shard("j2", 0, 1, &first.results.as_ref().unwrap().etag, 33);
    (j2.job, j2.generation) = ("job-2".into(), current.generation + 1);
    put(&moto, STATUS_KEY, j2.to_json().as_bytes()).await;
    moto.reset_recording();
    assert_eq!(pod.sigterm(), 0);
    // Its one write is the ended status object's PUT on its last ETag, refused (412); nothing after it.
    let writes: Vec<_> = requests(&moto).into_iter().filter(|(m, _)| m != "GET" && m != "HEAD").collect();
    assert_eq!(
        writes,
        [("PUT".to_string(), format!("{BUCKET}/{STATUS_KEY}"))],
        "the earlier Job's pod writes nothing once overtaken: {}",
        pod.log()
    );
    assert!(pod.log().contains("stale pod"), "{}", pod.log());
    assert_eq!(status(&moto).await.unwrap().0, j2, "the new Job's object stands");
    assert!(object(&moto, "4321/containers-status/uploader-1.done").await.is_none());
}

/// A participant floods containers-status/ with 100,000 forged names of its own worker (`agent-1.crashK`, which
/// sort before `agent-1.done`; twice MAX_STATUS_ENTRIES, and 200,000 took this machine's ext4 over a minute to
/// create): the uploader reads the folder bounded, stays small, and its done markers still go.
#[tokio::test]
async fn a_flooded_status_folder_costs_bounded_memory_and_the_done_markers_still_go() {
    let vol = pod_volume("flood");
    let dir = vol.join("containers-status");
    let t = Instant::now();
    for i in 0..100_000 {
        let path = std::ffi::CString::new(dir.join(format!("agent-1.crash{i}")).into_os_string().into_encoded_bytes())
            .unwrap();
        // SAFETY: a NUL-terminated path; mknod creates an empty regular file.
        assert_eq!(unsafe { libc::mknod(path.as_ptr(), libc::S_IFREG | 0o644, 0) }, 0);
    }
    println!("100,000 files in {:?}", t.elapsed());
    let moto = Moto::start("upload-flood");
    moto.setup(BUCKET, TABLE).await;
    let mut pod = upload(&moto, &vol, "uid-flood", 0, &[]);
    until(60, "the first status object", || async { status(&moto).await.filter(|(s, _)| s.results.is_some()) }).await;
    std::fs::write(dir.join("agent-1.done"), b"").unwrap();
    std::fs::write(dir.join("simulator-1.done"), b"").unwrap();
    let (s, _) = until(60, "the done markers are listed", || async {
        status(&moto).await.filter(|(s, _)| {
            let names: Vec<String> = s.markers.iter().map(|m| m.file_name()).collect();
            names.contains(&"agent-1.done".to_string()) && names.contains(&"simulator-1.done".to_string())
        })
    })
    .await;
    assert!(s.markers.len() <= volume::shard::MAX_MARKERS);
    for done in ["agent-1.done", "simulator-1.done"] {
        until(20, "the done marker is uploaded", || async {
            object(&moto, &format!("4321/containers-status/{done}")).await
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", pod.child.id())).unwrap();
    let hwm_kib: u64 = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    println!("peak RSS of the uploader over a 100,000-file status folder: {hwm_kib} KiB");
    assert_eq!(pod.sigterm(), 0);
    assert!(hwm_kib < 64 * 1024, "peak RSS {hwm_kib} KiB");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pod that cannot take the shard over (here: the status object is over the reader's cap, so every read fails)
/// still gets the cancel: the check comes first on every tick.
#[tokio::test]
async fn a_cancel_reaches_a_pod_whose_take_over_keeps_failing() {
    let moto = Moto::start("upload-cancel-unowned");
    moto.setup(BUCKET, TABLE).await;
    let unreadable = vec![b' '; volume::shard::MAX_BYTES as usize + 1];
    put(&moto, STATUS_KEY, &unreadable).await;
    let vol = pod_volume("cancel-unowned");
    let mut pod = upload(&moto, &vol, "uid-unowned", 0, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!vol.join("containers-status/simulation.cancel").exists());
    put(&moto, "4321/containers-status/simulation.cancel", b"").await;
    testkit::eventually_true(Duration::from_secs(10), "the local cancel markers", || {
        vol.join("containers-status/simulation.cancel").exists() && cancelled(&vol)
    });
    assert_eq!(pod.sigterm(), 0);
    assert!(pod.log().contains("cannot take the shard over"), "{}", pod.log());
    assert_eq!(object(&moto, STATUS_KEY).await.unwrap().0, unreadable, "nothing written over it");
}

/// A participant rewriting its results file all the time: at most one results PUT an interval (the upload period
/// of 500 ms here, under 1 s), and the last content goes once it is quiet.
#[tokio::test]
async fn a_results_file_rewritten_all_the_time_costs_one_put_an_interval() {
    let (moto, vol, mut pod, _) = started("churn", &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    moto.reset_recording();
    let results = vol.join("agent/agent1/agent_results.json");
    let last_good = vol.join("agent/agent1/.agent_results.json.last-good");
    let (t, mut i) = (Instant::now(), 0u32);
    while t.elapsed() < Duration::from_secs(5) {
        std::fs::write(&results, format!("{{\"rewrite\": {i}}}\n")).unwrap();
        // The supervisor's last good copy follows the results file as often: limited with it.
        std::fs::write(&last_good, format!("{{\"rewrite\": {i}}}\n")).unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let puts = moto.object_puts(BUCKET).get("4321/agent/agent1/agent_results.json").copied().unwrap_or(0);
    println!("{i} rewrites in 5 s: {puts} results PUTs (debounce 100 ms, interval 500 ms)");
    assert!((2..=12).contains(&puts), "one results PUT at most every 500 ms: {puts}");
    let companion_puts =
        moto.object_puts(BUCKET).get("4321/agent/agent1/.agent_results.json.last-good").copied().unwrap_or(0);
    assert!(companion_puts <= 12, "its last good copy as seldom: {companion_puts}");
    let last = format!("{{\"rewrite\": {}}}\n", i - 1);
    until(10, "the last content is uploaded", || async {
        let (body, etag) = object(&moto, "4321/agent/agent1/agent_results.json").await?;
        let (s, _) = status(&moto).await?;
        (body == last.as_bytes() && s.results?.etag == etag).then_some(())
    })
    .await;
    assert_eq!(pod.sigterm(), 0);
}

/// A stale pod's results PUT that lands in the guard's window leaves S3 holding its results while the owner's status
/// object names the owner's ETag: the owner's heartbeat check finds it and uploads its own again.
#[tokio::test]
async fn a_results_object_overwritten_behind_the_owners_back_is_uploaded_again_at_the_heartbeat() {
    let (moto, vol, mut pod, _) = started("overwritten", &["--heartbeat", "1s"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mine = std::fs::read(vol.join("agent/agent1/agent_results.json")).unwrap();
    put(&moto, "4321/agent/agent1/agent_results.json", b"{\"stale pod\": true}\n").await;
    until(10, "the owner's results again, named by its status object", || async {
        let (body, etag) = object(&moto, "4321/agent/agent1/agent_results.json").await?;
        let (s, _) = status(&moto).await?;
        (body == mine && s.results?.etag == etag).then_some(())
    })
    .await;
    assert_eq!(pod.sigterm(), 0);
}

/// Writes worker 1's results file with record `n` and waits until S3 holds it and the status object names it.
async fn results_change_is_named(moto: &Moto, vol: &Path, n: u32, what: &str) -> ShardStatus {
    let body = format!("{{\"_checkpoint\": {{\"records\": [{n}]}}}}\n");
    std::fs::write(vol.join("agent/agent1/agent_results.json"), &body).unwrap();
    until(10, what, || async {
        let (s, _) = status(moto).await?;
        let (got, etag) = object(moto, "4321/agent/agent1/agent_results.json").await?;
        (got == body.as_bytes() && s.results.as_ref()?.etag == etag).then_some(s)
    })
    .await
}

/// A container restarted in place (the same pod, so the same UID) finds its own status object: it continues its
/// generation and seq, never reads itself as a newer pod, and uploads the next change.
#[tokio::test]
async fn a_container_restarted_in_place_continues_its_generation_and_seq() {
    let (moto, vol, mut pod, _) = started("in-place", &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pod.sigterm(), 0);
    let (before, _) = status(&moto).await.unwrap();
    assert!(before.ended);
    let mut again = upload(&moto, &vol, "uid-in-place", 0, &[]);
    let after = results_change_is_named(&moto, &vol, 2, "the restarted container uploads the change").await;
    assert_eq!(after.generation, before.generation, "the same pod keeps its generation");
    assert!(after.seq > before.seq, "seq {} then {}", before.seq, after.seq);
    assert!(!after.ended, "running again");
    assert!(!again.log().contains("stale pod"), "{}", again.log());
    assert_eq!(again.sigterm(), 0);
}

/// A shard's first pod before its evaluator wrote anything: the status object names no results object, and the
/// results file is uploaded (and named) once it appears.
#[tokio::test]
async fn a_pod_without_a_results_file_yet_names_none_and_uploads_it_when_it_appears() {
    let moto = Moto::start("upload-no-results");
    moto.setup(BUCKET, TABLE).await;
    let vol = pod_volume("no-results");
    std::fs::remove_file(vol.join("agent/agent1/agent_results.json")).unwrap();
    let mut pod = upload(&moto, &vol, "uid-no-results", 0, &[]);
    let (first, _) = until(20, "the first status object", || async { status(&moto).await }).await;
    assert!(first.results.is_none(), "no results object yet: {:?}", first.results);
    assert!(object(&moto, "4321/agent/agent1/agent_results.json").await.is_none());
    results_change_is_named(&moto, &vol, 3, "the new results file uploaded and named").await;
    assert_eq!(pod.sigterm(), 0);
}

/// An older pod's results PUT that landed after this pod took the shard over (it had not seen this pod's status
/// yet): this pod's next upload, `If-Match` on its own last ETag, gets a 412; the status object still names this
/// pod's generation, so it is not stale: it uploads again on the ETag it then reads, and its status names it.
#[tokio::test]
async fn a_failed_precondition_from_an_older_pods_write_is_uploaded_again_on_the_new_etag() {
    let (moto, vol, mut pod, _) = started("refused", &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    put(&moto, "4321/agent/agent1/agent_results.json", b"{\"older pod\": true}\n").await;
    results_change_is_named(&moto, &vol, 4, "this pod's results, named by its status object").await;
    assert!(pod.log().contains("written by another (older) pod of the shard"), "the 412 path: {}", pod.log());
    assert!(!pod.log().contains("stale pod"), "{}", pod.log());
    assert_eq!(pod.sigterm(), 0);
}

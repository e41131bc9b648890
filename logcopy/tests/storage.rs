//! S3 and DynamoDB against a real local AWS server: `moto_server` (PyPI `moto[server]`, installed into `.venv` by
//! `run-scripts/test`), started on a free 127.0.0.1 port per test with its request recorder on, so each test can
//! count the exact requests logcopy made. A test fails, never skips, when the server cannot start.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TABLE: &str = "leaderboard-submissions";
const SUBMISSION: &str = "4321";
const TEAM: &str = "987";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("logcopy-storage-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A moto_server process with its request recording.
struct Moto {
    child: Child,
    endpoint: String,
    recording: PathBuf,
}

impl Moto {
    fn start(name: &str) -> Moto {
        let bin =
            std::env::var_os("MOTO_SERVER").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv/bin/moto_server"));
        assert!(
            bin.exists(),
            "moto_server not found at {}: run run-scripts/test, which installs it into .venv (or set MOTO_SERVER)",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = scratch(&format!("moto-{name}"));
        let recording = dir.join("recording.jsonl");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_RECORDING", "True")
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("moto.log")).unwrap())
            .spawn()
            .expect("start moto_server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on 127.0.0.1:{port} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, endpoint: format!("http://127.0.0.1:{port}"), recording }
    }

    async fn sdk(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test"))
            .load()
            .await
    }

    async fn s3(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::from(&self.sdk().await).force_path_style(true).build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    async fn dynamo(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk().await)
    }

    /// Creates the bucket and the submissions table (team_id + submission_id, as upstream's).
    async fn setup(&self, bucket: &str) {
        self.s3().await.create_bucket().bucket(bucket).send().await.unwrap();
        let key = |n: &str, t| KeySchemaElement::builder().attribute_name(n).key_type(t).build().unwrap();
        let attr = |n: &str| {
            AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().unwrap()
        };
        self.dynamo()
            .await
            .create_table()
            .table_name(TABLE)
            .key_schema(key("team_id", KeyType::Hash))
            .key_schema(key("submission_id", KeyType::Range))
            .attribute_definitions(attr("team_id"))
            .attribute_definitions(attr("submission_id"))
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .unwrap();
        self.reset_recording();
    }

    fn reset_recording(&self) {
        let _ = std::fs::write(&self.recording, b"");
    }

    /// The recorded requests as (method, url), setup and moto-api calls excluded.
    fn requests(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(&self.recording).unwrap_or_default();
        // moto writes each entry and its newline in two writes from concurrent threads, so two entries can share
        // a line: read the file as a stream of JSON values, not as lines.
        serde_json::Deserializer::from_str(&text)
            .into_iter::<serde_json::Value>()
            .map_while(Result::ok)
            .map(|v| (v["method"].as_str().unwrap_or("").to_string(), v["url"].as_str().unwrap_or("").to_string()))
            .filter(|(_, url)| !url.contains("/moto-api/"))
            .collect()
    }

    /// PUT object requests, by key.
    fn object_puts(&self, bucket: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (method, url) in self.requests() {
            if method != "PUT" {
                continue;
            }
            let Some(rest) = url.split_once(&format!("/{bucket}/")).map(|x| x.1) else { continue };
            let key = rest.split('?').next().unwrap_or(rest).to_string();
            *out.entry(key).or_default() += 1;
        }
        out
    }

    async fn objects(&self, bucket: &str) -> BTreeMap<String, Vec<u8>> {
        let s3 = self.s3().await;
        let mut out = BTreeMap::new();
        let list = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
        for o in list.contents() {
            let key = o.key().unwrap().to_string();
            let body = s3.get_object().bucket(bucket).key(&key).send().await.unwrap().body.collect().await.unwrap();
            out.insert(key, body.into_bytes().to_vec());
        }
        out
    }

    async fn item(&self) -> HashMap<String, String> {
        let out = self
            .dynamo()
            .await
            .get_item()
            .table_name(TABLE)
            .key("team_id", AttributeValue::S(TEAM.into()))
            .key("submission_id", AttributeValue::S(SUBMISSION.into()))
            .send()
            .await
            .unwrap();
        out.item()
            .map(|i| i.iter().filter_map(|(k, v)| Some((k.clone(), v.as_s().ok()?.clone()))).collect())
            .unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn volume(fixture: &str, name: &str) -> PathBuf {
    let dest = scratch(&format!("vol-{name}"));
    let status =
        Command::new("cp").arg("-r").arg(repo().join("fixtures/volumes").join(fixture)).arg(&dest).status().unwrap();
    assert!(status.success());
    dest.join(fixture)
}

/// Runs `logcopy run` against moto (EvalAI on the embedded local sink) and returns its exit code.
fn logcopy(moto: &Moto, bucket: &str, vol: &Path, extra: &[&str]) -> i32 {
    let cwd = scratch(&format!("cwd-{bucket}"));
    let out = Command::new(env!("CARGO_BIN_EXE_logcopy"))
        .arg("run")
        .arg("--logs")
        .arg(vol)
        .args(extra)
        .current_dir(&cwd)
        .env_remove("EVALAI_API_SERVER")
        .env_remove("LOGS_DIR")
        .envs(aws_env(moto, bucket))
        .env("CHALLENGE_ID", "55")
        .env("SUBMISSION_ID", SUBMISSION)
        .env("TRACK_ID", "2015")
        .env("TEAM_ID", TEAM)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(!log.contains("panicked"), "{log}");
    out.status.code().unwrap_or(-1)
}

fn aws_env(moto: &Moto, bucket: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
        ("S3_BUCKET", bucket.into()),
        ("DYNAMODB_SUBMISSIONS_TABLE", TABLE.into()),
    ]
}

/// Every regular file of the volume, by its S3 key (the manifest excluded).
fn volume_files(vol: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![vol.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let rel = e.path().strip_prefix(vol).unwrap().to_string_lossy().into_owned();
                if rel != "logcopy/.upload-manifest.json" {
                    out.insert(format!("{SUBMISSION}/{rel}"), std::fs::read(e.path()).unwrap());
                }
            }
        }
    }
    out
}

const LOG_KEY: &str = "4321/logcopy/logcopy.log";

#[tokio::test]
async fn first_sync_uploads_every_regular_file_once_and_no_link_or_fifo() {
    let moto = Moto::start("first");
    moto.setup("first").await;
    let vol = volume("lb2.0-mid-run", "first");
    let secret = scratch("secret").join("secret.txt");
    std::fs::write(&secret, b"AWS_SECRET=never-upload-me").unwrap();
    std::os::unix::fs::symlink(&secret, vol.join("agent/agent1/leak.log")).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", vol.join("agent/agent2/environ.log")).unwrap();
    std::os::unix::fs::symlink(secret.parent().unwrap(), vol.join("simulator/linked-dir")).unwrap();
    let fifo = std::ffi::CString::new(vol.join("agent/agent1/pipe.log").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    assert_eq!(logcopy(&moto, "first", &vol, &["--once"]), 0);
    // What logcopy sent, before this test's own LIST below.
    let lists = moto.requests().iter().filter(|(m, u)| m == "GET" && u.contains("list-type")).count();
    assert_eq!(lists, 0, "the sync listed the bucket");
    let objects = moto.objects("first").await;
    let files = volume_files(&vol);
    assert_eq!(objects.keys().collect::<Vec<_>>(), files.keys().collect::<Vec<_>>(), "S3 holds exactly the volume");
    for (k, v) in &files {
        if k != LOG_KEY {
            assert_eq!(&objects[k], v, "{k} differs in S3");
        }
    }
    assert!(
        !objects
            .keys()
            .any(|k| k.contains("leak") || k.contains("environ") || k.contains("pipe") || k.contains("linked-dir"))
    );
    assert!(!objects.values().any(|v| v.windows(12).any(|w| w == b"never-upload")), "a secret was uploaded");
    let puts = moto.object_puts("first");
    assert!(puts.values().all(|n| *n == 1), "a file was uploaded twice: {puts:?}");
    assert_eq!(puts.keys().collect::<Vec<_>>(), files.keys().collect::<Vec<_>>(), "every file uploaded once");
}

#[tokio::test]
async fn a_changed_file_goes_again_a_restart_uploads_nothing_else() {
    let moto = Moto::start("changed");
    moto.setup("changed").await;
    let vol = volume("lb2.0-mid-run", "changed");
    assert_eq!(logcopy(&moto, "changed", &vol, &["--once"]), 0);

    // A restart on an unchanged volume: only logcopy's own log (which grew) goes again.
    moto.reset_recording();
    assert_eq!(logcopy(&moto, "changed", &vol, &["--once"]), 0);
    let puts = moto.object_puts("changed");
    assert_eq!(puts.keys().collect::<Vec<_>>(), [LOG_KEY], "a restart re-uploaded data: {puts:?}");

    // A touched file with the same content: nothing. A changed one: it alone.
    let log = vol.join("agent/agent1/leaderboard.log");
    let same = std::fs::read(&log).unwrap();
    std::fs::write(&log, &same).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(vol.join("simulator/CarlaUE4-2.log"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    moto.reset_recording();
    assert_eq!(logcopy(&moto, "changed", &vol, &["--once"]), 0);
    let puts = moto.object_puts("changed");
    assert_eq!(puts.keys().collect::<Vec<_>>(), ["4321/logcopy/logcopy.log", "4321/simulator/CarlaUE4-2.log"]);
    let objects = moto.objects("changed").await;
    assert_eq!(objects["4321/simulator/CarlaUE4-2.log"], std::fs::read(vol.join("simulator/CarlaUE4-2.log")).unwrap());
}

#[tokio::test]
async fn a_growing_log_goes_at_most_once_per_period_and_whole_at_the_end() {
    let moto = Moto::start("growing");
    moto.setup("growing").await;
    let vol = volume("lb2.0-mid-run", "growing");
    let mut child = Command::new(env!("CARGO_BIN_EXE_logcopy"))
        .args(["run", "--logs-period", "2", "--status-period", "30", "--debounce", "100ms", "--logs"])
        .arg(&vol)
        .current_dir(scratch("cwd-growing"))
        .env_remove("EVALAI_API_SERVER")
        .envs(aws_env(&moto, "growing"))
        .env("CHALLENGE_ID", "55")
        .env("SUBMISSION_ID", SUBMISSION)
        .env("TRACK_ID", "2015")
        .env("TEAM_ID", TEAM)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let log = vol.join("agent/agent2/leaderboard.log");
    let started = Instant::now();
    // 6 s of a log growing every 100 ms.
    while started.elapsed() < Duration::from_secs(6) {
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"step\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let n = moto.object_puts("growing")["4321/agent/agent2/leaderboard.log"];
    // One at the start, one per 2 s period at most while it grows, one at the final flush.
    assert!((2..=6).contains(&n), "the growing log was uploaded {n} times in 6 s at a 2 s period");
    let objects = moto.objects("growing").await;
    assert_eq!(
        objects["4321/agent/agent2/leaderboard.log"],
        std::fs::read(&log).unwrap(),
        "the final flush missed the end of the log"
    );
}

#[tokio::test]
async fn large_files_go_in_parts() {
    let moto = Moto::start("multipart");
    moto.setup("multipart").await;
    let vol = volume("lb2.0-mid-run", "multipart");
    let rec = vol.join("simulator/recording.log");
    let mut f = std::fs::File::create(&rec).unwrap();
    let block: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    for i in 0..20u8 {
        let mut b = block.clone();
        b[0] = i;
        f.write_all(&b).unwrap();
    }
    drop(f);
    assert_eq!(logcopy(&moto, "multipart", &vol, &["--once"]), 0);
    let reqs = moto.requests();
    let key = "/multipart/4321/simulator/recording.log";
    let create = reqs.iter().filter(|(m, u)| m == "POST" && u.contains(key) && u.contains("uploads")).count();
    let parts = reqs.iter().filter(|(m, u)| m == "PUT" && u.contains(key) && u.contains("partNumber")).count();
    let complete = reqs.iter().filter(|(m, u)| m == "POST" && u.contains(key) && u.contains("uploadId")).count();
    assert_eq!((create, parts, complete), (1, 3, 1), "20 MiB in 8 MiB parts");
    let objects = moto.objects("multipart").await;
    assert_eq!(objects["4321/simulator/recording.log"], std::fs::read(&rec).unwrap());
}

#[tokio::test]
async fn restore_then_run_uploads_nothing_again() {
    let moto = Moto::start("restore");
    moto.setup("restore").await;
    let vol = volume("lb2.0-crash-marker", "restore-src");
    assert_eq!(logcopy(&moto, "restore", &vol, &["--once"]), 0);
    let before = moto.objects("restore").await;
    assert!(before.keys().any(|k| k.starts_with("4321/containers-status/")));

    let fresh = scratch("restore-dest");
    let out = Command::new(env!("CARGO_BIN_EXE_logcopy"))
        .args(["restore", "--logs"])
        .arg(&fresh)
        .envs(aws_env(&moto, "restore"))
        .env("SUBMISSION_ID", SUBMISSION)
        .env("RESUME", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = moto.objects("restore").await;
    assert!(!after.keys().any(|k| k.starts_with("4321/containers-status/")), "markers of the earlier run left in S3");
    assert_eq!(std::fs::read_dir(fresh.join("containers-status")).unwrap().count(), 0);
    let restored = volume_files(&fresh);
    for (k, v) in &after {
        assert_eq!(restored.get(k), Some(v), "{k} not restored");
    }

    moto.reset_recording();
    assert_eq!(logcopy(&moto, "restore", &fresh, &["--once"]), 0);
    let puts = moto.object_puts("restore");
    assert_eq!(puts.keys().collect::<Vec<_>>(), [LOG_KEY], "the run after a restore re-uploaded: {puts:?}");
}

#[tokio::test]
async fn start_time_is_set_over_the_pre_run_dash_and_kept_across_restarts() {
    let moto = Moto::start("start");
    moto.setup("start").await;
    // The row as the pre-run step writes it.
    let s = |v: &str| AttributeValue::S(v.into());
    moto.dynamo()
        .await
        .put_item()
        .table_name(TABLE)
        .item("team_id", s(TEAM))
        .item("submission_id", s(SUBMISSION))
        .item("team_name", s("My Team"))
        .item("submission_status", s("SUBMITTED"))
        .item("submitted_time", s("2024-03-20 09:02:01 UTC"))
        .item("start_time", s("-"))
        .item("end_time", s("-"))
        .send()
        .await
        .unwrap();
    let vol = volume("lb2.0-mid-run", "start");
    assert_eq!(logcopy(&moto, "start", &vol, &["--once"]), 0);
    let item = moto.item().await;
    assert_eq!(item["submission_status"], "RUNNING");
    assert_eq!(item["results"], "s3://start/4321");
    assert_eq!(item["team_name"], "My Team", "the update replaced the row");
    let first = item["start_time"].clone();
    assert!(first.ends_with(" UTC") && first.len() == 23, "start_time {first:?}");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(logcopy(&moto, "start", &vol, &["--once"]), 0);
    assert_eq!(moto.item().await["start_time"], first, "a restart moved the start time");
}

#[tokio::test]
async fn the_final_record_has_the_status_end_time_and_15_metrics() {
    let moto = Moto::start("final");
    moto.setup("final").await;
    let vol = volume("lb2.0-finished", "final");
    assert_eq!(logcopy(&moto, "final", &vol, &["--final-status"]), 0);
    let item = moto.item().await;
    assert_eq!(item["submission_status"], "FINISHED");
    assert!(item["end_time"].ends_with(" UTC"));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vol.join("evalai/results.json")).unwrap()).unwrap();
    let acc = results[0]["accuracies"].as_object().unwrap();
    assert_eq!(acc.len(), 15);
    for (label, value) in acc {
        let attr = label.to_lowercase().replace([' ', '-'], "_");
        assert_eq!(item[&attr], value.to_string(), "{attr}");
    }
    assert_ne!(item["agent_blocked"], "-", "agent_blocked carries its real value");
    let objects = moto.objects("final").await;
    assert!(objects.contains_key("4321/containers-status/logcopy.done"), "logcopy.done did not reach S3");

    // An incomplete submission: FAILED, and every metric "-".
    let moto2 = Moto::start("failed");
    moto2.setup("failed").await;
    let vol2 = volume("lb2.0-mid-run", "failed");
    for i in 1..=4 {
        for side in ["agent", "simulator"] {
            std::fs::write(vol2.join(format!("containers-status/{side}-{i}.done")), b"").unwrap();
        }
    }
    assert_eq!(logcopy(&moto2, "failed", &vol2, &["--final-status"]), 0);
    let item = moto2.item().await;
    assert_eq!(item["submission_status"], "FAILED");
    assert_eq!(item["driving_score"], "-");
    assert_eq!(item["agent_blocked"], "-");
}

//! The `moto_server` harness shared by `tests/storage.rs` and `benches/storage.rs` (included by both with
//! `#[path]`): a local AWS server (PyPI `moto[server]`, installed into `.venv` by `run-scripts/test`, or
//! `MOTO_SERVER`) on a free 127.0.0.1 port with its request recorder on, so a caller can count the exact requests
//! logcopy made, plus helpers that copy a recorded volume, run `logcopy run` against the server and list a
//! volume's files by S3 key. A server that cannot start panics with the reason; callers never skip.

#![allow(dead_code)]

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TABLE: &str = "leaderboard-submissions";
pub const SUBMISSION: &str = "4321";
pub const TEAM: &str = "987";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("logcopy-storage-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A moto_server process with its request recording.
pub struct Moto {
    pub child: Child,
    pub endpoint: String,
    pub recording: PathBuf,
}

impl Moto {
    pub fn start(name: &str) -> Moto {
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

    pub async fn sdk(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test"))
            .load()
            .await
    }

    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::from(&self.sdk().await).force_path_style(true).build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub async fn dynamo(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk().await)
    }

    /// Creates the bucket and the submissions table (team_id + submission_id, as upstream's).
    pub async fn setup(&self, bucket: &str) {
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

    pub fn reset_recording(&self) {
        let _ = std::fs::write(&self.recording, b"");
    }

    /// The recorded requests as (method, url), setup and moto-api calls excluded.
    pub fn requests(&self) -> Vec<(String, String)> {
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
    pub fn object_puts(&self, bucket: &str) -> BTreeMap<String, usize> {
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

    pub async fn objects(&self, bucket: &str) -> BTreeMap<String, Vec<u8>> {
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

    pub async fn item(&self) -> HashMap<String, String> {
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

pub fn volume(fixture: &str, name: &str) -> PathBuf {
    let dest = scratch(&format!("vol-{name}"));
    let status =
        Command::new("cp").arg("-r").arg(repo().join("fixtures/volumes").join(fixture)).arg(&dest).status().unwrap();
    assert!(status.success());
    dest.join(fixture)
}

/// `logcopy run` against moto, EvalAI on the embedded local sink (written under a scratch working directory).
fn run_command(moto: &Moto, bucket: &str, vol: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logcopy"));
    let cwd = scratch(&format!("cwd-{bucket}"));
    cmd.arg("run")
        .args(extra)
        .arg("--logs")
        .arg(vol)
        .arg("--local-evalai")
        .arg(cwd.join("logcopy-local"))
        .current_dir(cwd)
        .env_remove("EVALAI_API_SERVER")
        .env_remove("LOGS_DIR")
        .envs(aws_env(moto, bucket))
        .env("CHALLENGE_ID", "55")
        .env("SUBMISSION_ID", SUBMISSION)
        .env("TRACK_ID", "2015")
        .env("TEAM_ID", TEAM);
    cmd
}

/// The `logcopy run` command against moto, for a test that reads its output itself.
pub fn run_command_for_test(moto: &Moto, bucket: &str, vol: &Path, extra: &[&str]) -> Command {
    run_command(moto, bucket, vol, extra)
}

/// Runs `logcopy run` to its end and returns its exit code.
pub fn logcopy(moto: &Moto, bucket: &str, vol: &Path, extra: &[&str]) -> i32 {
    let out = run_command(moto, bucket, vol, extra).output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(!log.contains("panicked"), "{log}");
    out.status.code().unwrap_or(-1)
}

pub fn aws_env(moto: &Moto, bucket: &str) -> Vec<(&'static str, String)> {
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
pub fn volume_files(vol: &Path) -> BTreeMap<String, Vec<u8>> {
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

pub const LOG_KEY: &str = "4321/logcopy/logcopy.log";

/// Starts `logcopy run` as a long-running daemon against moto (EvalAI on the embedded local sink).
pub fn daemon(moto: &Moto, bucket: &str, vol: &Path, extra: &[&str]) -> std::process::Child {
    run_command(moto, bucket, vol, extra).stdout(std::process::Stdio::null()).spawn().expect("start logcopy run")
}

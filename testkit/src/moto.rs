//! A real local AWS server for the storage tests and benchmarks: `moto_server` (PyPI `moto[server]`, installed into
//! `.venv` by `run-scripts/test`, or the path in `MOTO_SERVER`) on a free 127.0.0.1 port with its request recorder
//! on, so that a caller can count the exact requests a program made; SDK clients for it. A server that cannot start
//! panics with the reason: callers never skip.

use crate::paths::repo_root;
use crate::scratch::Scratch;
use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A moto_server process with its request recording; killed on drop.
pub struct Moto {
    pub child: Child,
    pub endpoint: String,
    /// The recorder's file (JSON values, one per request).
    pub recording: PathBuf,
    dir: PathBuf,
}

impl Moto {
    pub fn start(name: &str) -> Moto {
        let bin = std::env::var_os("MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".venv/bin/moto_server"));
        assert!(
            bin.exists(),
            "moto_server not found at {}: run run-scripts/test, which installs it into .venv (or set MOTO_SERVER)",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = Scratch::new(&format!("moto-{name}")).keep();
        let recording = dir.join("recording.jsonl");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_RECORDING", "True")
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("moto.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on 127.0.0.1:{port} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, endpoint: format!("http://127.0.0.1:{port}"), recording, dir }
    }

    /// The folder of the server's recording and log.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
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

    /// Creates the bucket and a submissions table keyed as upstream's (team_id + submission_id), then forgets
    /// those requests.
    pub async fn setup(&self, bucket: &str, table: &str) {
        self.s3().await.create_bucket().bucket(bucket).send().await.unwrap();
        let key = |n: &str, t| KeySchemaElement::builder().attribute_name(n).key_type(t).build().unwrap();
        let attr = |n: &str| {
            AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().unwrap()
        };
        self.dynamo()
            .await
            .create_table()
            .table_name(table)
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
        parse_recording(&text)
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

    /// Every object of the bucket with its bytes.
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
}

impl Moto {
    /// The environment of a program that talks to this server through the SDK's standard chain: the endpoint, test
    /// credentials, a region, no instance metadata, no shared config files; plus the bucket and table settings
    /// (`S3_BUCKET`, `DYNAMODB_SUBMISSIONS_TABLE`).
    pub fn env(&self, bucket: &str, table: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
            ("S3_BUCKET", bucket.into()),
            ("DYNAMODB_SUBMISSIONS_TABLE", table.into()),
        ]
    }
}

/// Every regular file under `vol` with its bytes, by the key a sync under `prefix` gives it (`prefix/rel`), except
/// the relative paths in `skip`.
pub fn files_by_key(vol: &std::path::Path, prefix: &str, skip: &[&str]) -> BTreeMap<String, Vec<u8>> {
    crate::files_under(vol)
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(vol).ok()?.to_string_lossy().into_owned();
            (!skip.contains(&rel.as_str())).then(|| (format!("{prefix}/{rel}"), std::fs::read(&p).unwrap_or_default()))
        })
        .collect()
}

/// (method, url) of each request in a recording, moto-api calls excluded. moto writes each entry and its newline
/// in two writes from concurrent threads, so two entries can share a line: the text is read as a stream of JSON
/// values, not as lines.
pub fn parse_recording(text: &str) -> Vec<(String, String)> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .map_while(Result::ok)
        .map(|v| (v["method"].as_str().unwrap_or("").to_string(), v["url"].as_str().unwrap_or("").to_string()))
        .filter(|(_, url)| !url.contains("/moto-api/"))
        .collect()
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

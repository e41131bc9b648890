//! What logcopy's storage tests share beyond the test kit's `moto_server` harness ([`Moto`]): one submission's
//! ids and table, its DynamoDB item, copies of recorded volumes, `logcopy run` against the server, and a volume's
//! files by S3 key.

#![allow(dead_code)]

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TABLE: &str = "leaderboard-submissions";
pub const SUBMISSION: &str = "4321";
pub const TEAM: &str = "987";

pub use testkit::moto::Moto;

pub fn repo() -> PathBuf {
    testkit::repo_root()
}

pub fn scratch(name: &str) -> PathBuf {
    testkit::Scratch::new(&format!("storage-{name}")).keep()
}

/// The submission's record in the table.
pub async fn item(moto: &Moto) -> HashMap<String, String> {
    let out = moto
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
    moto.env(bucket, TABLE)
}

/// Every regular file of the volume, by its S3 key (the manifest excluded).
pub fn volume_files(vol: &Path) -> BTreeMap<String, Vec<u8>> {
    testkit::moto::files_by_key(vol, SUBMISSION, &["logcopy/.upload-manifest.json"])
}

pub const LOG_KEY: &str = "4321/logcopy/logcopy.log";

/// Starts `logcopy run` as a long-running daemon against moto (EvalAI on the embedded local sink).
pub fn daemon(moto: &Moto, bucket: &str, vol: &Path, extra: &[&str]) -> std::process::Child {
    run_command(moto, bucket, vol, extra).stdout(std::process::Stdio::null()).spawn().expect("start logcopy run")
}

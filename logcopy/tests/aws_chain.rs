//! The AWS SDK's chain at start (issue 19), through the real binary with no AWS variable inherited, `HOME` an empty
//! folder and the instance metadata disabled: no region, or no credentials provider, is exit 2 with one line that
//! says what to set (it was a raw SDK error after multi-line warnings from `restore`, and exit 0 after a 10-line
//! dump per failed upload from `run --once`); a provider that is configured but does not answer is a warning, the
//! run goes on and exits 0, and every log entry is one line, the repeats of a failure collapsed into one with a count.

mod support;

use std::process::Command;
use std::time::Duration;
use support::{LogcopyCmd, Volume};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `logcopy run --once` with S3 and DynamoDB remote (EvalAI local), and nothing from the machine's AWS setup.
fn remote_storage(vol: &Volume, home: &std::path::Path) -> LogcopyCmd {
    LogcopyCmd::new(vol)
        .env("HOME", home.to_str().unwrap())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("S3_BUCKET", "leaderboard-test")
        .env("DYNAMODB_SUBMISSIONS_TABLE", "submissions")
        .env("CHALLENGE_ID", "12")
        .env("SUBMISSION_ID", "4321")
        .env("TRACK_ID", "2015")
        .env("TEAM_ID", "987")
        .flag("--local-evalai", support::LOCAL_OUT)
        .switch("--once")
}

#[test]
fn no_region_and_no_credentials_exit_2_in_one_line() {
    let vol = Volume::from_fixture("lb2.0-finished");
    let home = vol.side_dir("home");
    let cases = [
        (vec![], vec!["AWS_REGION: no region", "AWS credentials (", "no provider in the AWS SDK chain"]),
        (vec![("AWS_REGION", "us-east-1")], vec!["AWS credentials (", "AWS_ACCESS_KEY_ID"]),
        (vec![("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")], vec!["AWS_REGION: no region"]),
    ];
    for (env, named) in cases {
        let mut cmd = remote_storage(&vol, &home);
        for (k, v) in &env {
            cmd = cmd.env(k, v);
        }
        let (code, lc) = cmd.run(secs(60));
        assert_eq!(code, 2, "{env:?}: exit code\n{}", lc.output());
        let stderr = lc.stderr_text();
        assert_eq!(stderr.lines().count(), 1, "{env:?}: one line: {stderr}");
        assert!(stderr.starts_with("logcopy run: configuration error: "), "{stderr}");
        for n in named {
            assert!(stderr.contains(n), "{env:?}: {n:?} not in: {stderr}");
        }
        if env.iter().any(|(k, _)| *k == "AWS_REGION") {
            assert!(!stderr.contains("AWS_REGION: "), "{env:?}: a region was given: {stderr}");
        }
        assert!(lc.stdout_text().is_empty(), "nothing logged before the check: {}", lc.stdout_text());
    }
    assert!(!vol.path("logcopy/.upload-manifest.json").exists(), "a configuration error touched the volume");

    // restore: the same check, only when it resumes from S3.
    let restore = |resume: &str, region: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_logcopy"));
        c.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        c.args(["restore", "--logs"]).arg(vol.side_dir("fresh")).env("HOME", &home);
        c.env("AWS_EC2_METADATA_DISABLED", "true").env("S3_BUCKET", "leaderboard-test").env("SUBMISSION_ID", "7");
        c.env("RESUME", resume);
        if region {
            c.env("AWS_REGION", "us-east-1");
        }
        c.output().unwrap()
    };
    for region in [false, true] {
        let out = restore("1", region);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "region {region}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("logcopy restore: configuration error: "), "{stderr}");
        assert_eq!(stderr.contains("AWS_REGION: no region"), !region, "{stderr}");
        assert!(stderr.contains("AWS credentials ("), "{stderr}");
    }
    let fresh = restore("", false);
    assert_eq!(fresh.status.code(), Some(0), "a fresh volume needs no AWS: {}", String::from_utf8_lossy(&fresh.stderr));
}

/// A provider that is configured but unreachable (the container credentials endpoint refuses connections, as an
/// STS or an instance metadata outage would): a warning at start, every failure one line, repeats collapsed, exit 0.
#[test]
fn an_unreachable_provider_is_transient_and_its_failures_collapse() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let vol = Volume::from_fixture("lb2.0-finished");
    let home = vol.side_dir("home");
    let (code, lc) = remote_storage(&vol, &home)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &format!("http://127.0.0.1:{closed}/credentials"))
        .env("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{closed}"))
        .flag("--storage-timeout", "1")
        .flag("--final-timeout", "2")
        .run(secs(120));
    assert_eq!(code, 0, "a transient fault never exits non-zero\n{}", lc.output());
    let log = lc.stdout_text();
    assert!(log.contains("WARN AWS credentials: the provider failed ("), "{log}");
    for line in log.lines() {
        assert!(
            line.len() > 20 && line.as_bytes()[..4].iter().all(u8::is_ascii_digit) && line.as_bytes()[4] == b'-',
            "every entry is one line starting with its timestamp: {line:?}\n{log}"
        );
    }
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("upload failed")).collect();
    assert_eq!(failed.len(), 2, "the first failure, then one line with the count of the others:\n{log}");
    assert!(failed[1].contains(" more in ") && failed[1].ends_with(" after the first)"), "{}", failed[1]);
}

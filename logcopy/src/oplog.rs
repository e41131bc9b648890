//! The operator's detail on the final EvalAI update: EvalAI's `environment_log`, which EvalAI shows to the
//! challenge's hosts only and which exists only on `update_submission` (`../shared/spec/evalai-api.md`). It holds a
//! bounded tail of each worker's evaluator log (`agent/agent<i>/leaderboard.log`), the participant's own output,
//! read beneath the volume's root (no link followed, no hard link, regular files only), with control characters
//! removed and anything that looks like a credential redacted. It never reaches a participant-visible field: the
//! partial updates carry no `environment_log`, and stdout, stderr, result and metadata are built without it.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use volume::safe::Root;

/// The tail kept of each worker's evaluator log.
pub const TAIL_BYTES: u64 = 8 * 1024;
/// The whole field at most (EvalAI stores it as a file; 64 workers at most show their tails).
pub const MAX_BYTES: usize = 64 * 1024;

/// The operator's log for `workers` workers; `secrets` (the EvalAI token) are redacted wherever they appear.
pub fn environment_log(root: &Root, workers: u32, secrets: &[&str]) -> String {
    let mut out = String::new();
    for i in 1..=workers {
        let rel = volume::layout::worker_dir(i).join(volume::layout::EVALUATOR_LOG);
        let section = match tail(root, &rel) {
            Ok(Some(t)) if !t.trim().is_empty() => clean(&t, secrets),
            Ok(Some(_)) => "(empty)\n".to_string(),
            Ok(None) => "(no log)\n".to_string(),
            Err(e) => format!("(not read: {e})\n"),
        };
        let head = format!("===== worker {i}: the last {} KiB of {} =====\n", TAIL_BYTES / 1024, rel.display());
        if out.len() + head.len() + section.len() > MAX_BYTES {
            out.push_str("(the other workers' tails left out: the field is full)\n");
            break;
        }
        out.push_str(&head);
        out.push_str(&section);
    }
    out
}

/// The last [`TAIL_BYTES`] of `rel`, from its first whole line; `None` when it does not exist.
fn tail(root: &Root, rel: &Path) -> std::io::Result<Option<String>> {
    let (mut file, len) = match root.open_read(rel) {
        Ok(x) => x,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(Some(match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text,
    }))
}

/// Control characters (but newlines and tabs) removed; the secrets and AWS access key ids redacted.
fn clean(text: &str, secrets: &[&str]) -> String {
    let mut s: String = text.chars().filter(|c| !c.is_control() || *c == '\n' || *c == '\t').collect();
    for secret in secrets.iter().filter(|x| x.len() >= 8) {
        s = s.replace(secret, "[redacted]");
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find(['A']) {
        out.push_str(&rest[..i]);
        let cand = &rest[i..];
        let key = (cand.starts_with("AKIA") || cand.starts_with("ASIA"))
            && cand.len() >= 20
            && cand.as_bytes()[4..20].iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if key {
            out.push_str("[redacted]");
            rest = &cand[20..];
        } else {
            out.push('A');
            rest = &cand[1..];
        }
    }
    out.push_str(rest);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_bounded_cleaned_and_redacted() {
        let dir = std::env::temp_dir().join(format!("oplog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("agent/agent1")).unwrap();
        std::fs::create_dir_all(dir.join("agent/agent2")).unwrap();
        let mut long = "x".repeat(20_000);
        long.push_str("\nline one\x1b[31m red\x07\nkey AKIAABCDEFGHIJKLMNOP and tok-SECRET-123456 end\n");
        std::fs::write(dir.join("agent/agent1/leaderboard.log"), long).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("agent/agent2/leaderboard.log")).unwrap();
        let root = Root::open(&dir).unwrap();
        let log = environment_log(&root, 3, &["tok-SECRET-123456"]);
        assert!(log.contains("===== worker 1"), "{log}");
        assert!(log.contains("line one[31m red\n"), "control characters removed: {log}");
        assert!(log.contains("key [redacted] and [redacted] end"), "{log}");
        assert!(
            !log.contains("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
            "the tail starts at a line"
        );
        assert!(log.contains("===== worker 2") && log.contains("(not read:"), "a link is not followed: {log}");
        assert!(!log.contains("root:"), "{log}");
        assert!(log.contains("===== worker 3") && log.contains("(no log)"), "{log}");
        assert!(log.len() <= MAX_BYTES);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

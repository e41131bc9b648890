//! What `/proc` (Linux) says of a process: whether it exists, its state and parent, its CPU time and memory, how
//! far it has read a file, which signals it ignores. Every reading is of another process, never asked of it.

use std::io::{Error, ErrorKind, Result};
use std::path::Path;

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::new(e.kind(), format!("cannot read {path}: {e}")))
}

fn malformed(path: &str, what: &str) -> Error {
    Error::new(ErrorKind::InvalidData, format!("{path}: no {what}"))
}

/// Whether a process with this pid exists (a zombie still counts): `kill(pid, 0)` does not fail with ESRCH.
pub fn pid_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Sends `sig` to `pid` (a process the caller started); a process already gone is no error.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses and may hold spaces): field
/// 3 (the state) first.
fn stat_fields(pid: impl std::fmt::Display) -> Result<(String, Vec<String>)> {
    let path = format!("/proc/{pid}/stat");
    let stat = read(&path)?;
    let after = stat.rfind(')').map(|i| &stat[i + 1..]).ok_or_else(|| malformed(&path, "command name"))?;
    Ok((path, after.split_whitespace().map(str::to_string).collect()))
}

/// State letter and parent pid, from `/proc/<pid>/stat`.
pub fn proc_state(pid: i32) -> Option<(char, i32)> {
    let (_, f) = stat_fields(pid).ok()?;
    Some((f.first()?.chars().next()?, f.get(1)?.parse().ok()?))
}

/// Every pid in `/proc`.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())).collect())
        .unwrap_or_default()
}

/// Zombies whose parent is `ppid`.
pub fn zombies_of(ppid: i32) -> Vec<i32> {
    all_pids().into_iter().filter(|p| proc_state(*p).is_some_and(|(s, pp)| s == 'Z' && pp == ppid)).collect()
}

/// Whether the process ignores `sig` (its bit in `SigIgn` of `/proc/<pid>/status`).
pub fn ignores(pid: i32, sig: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << (sig - 1)) != 0)
}

/// utime + stime of a process, in seconds (`/proc/<pid>/stat`, fields 14 and 15): the time of all its threads,
/// those that ended included.
pub fn cpu_seconds(pid: impl std::fmt::Display) -> Result<f64> {
    let (path, fields) = stat_fields(pid)?;
    let ticks = |n: usize| -> Result<u64> {
        fields.get(n - 3).and_then(|f| f.parse().ok()).ok_or_else(|| malformed(&path, &format!("field {n}")))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    };
    Ok((ticks(14)? + ticks(15)?) as f64 / hz)
}

/// (VmHWM, VmRSS) of a process in KiB: its peak and its current resident memory (`self` for this process).
pub fn memory_kib(pid: impl std::fmt::Display) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = read(&path)?;
    let value = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| malformed(&path, key))
    };
    Ok((value("VmHWM:")?, value("VmRSS:")?))
}

/// `pid`'s read position in `path` while it has the file open (the furthest, if open more than once), from
/// `/proc/<pid>/fd` and `/proc/<pid>/fdinfo`: shows that a process is reading (hashing) a file at a given moment.
pub fn read_position(pid: u32, path: &Path) -> Option<u64> {
    // The kernel names an open file by its canonical path (no `..`, no link).
    let path = path.canonicalize().ok()?;
    let mut furthest = None;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if std::fs::read_link(fd.path()).ok() != Some(path.clone()) {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()));
        let pos = info.ok().and_then(|i| i.lines().find_map(|l| l.strip_prefix("pos:")?.trim().parse::<u64>().ok()));
        furthest = furthest.max(pos);
    }
    furthest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_as_itself() {
        let me = std::process::id();
        let (hwm, rss) = memory_kib("self").unwrap();
        assert!(hwm >= rss && rss > 0, "{hwm} {rss}");
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert!(pid_exists(me as i32));
        // The main thread (whose state the process's stat gives) waits for this test's thread.
        assert!(proc_state(me as i32).is_some_and(|(s, ppid)| "RS".contains(s) && ppid > 0));
        assert!(memory_kib(u32::MAX).unwrap_err().to_string().contains("/proc/4294967295/status"));
        assert_eq!(read_position(me, Path::new("/nonexistent")), None);
        // A path with `..` names the same open file.
        let s = crate::Scratch::new("procfs");
        std::fs::create_dir_all(s.path("a")).unwrap();
        std::fs::write(s.path("f"), b"0123456789").unwrap();
        let mut f = std::fs::File::open(s.path("f")).unwrap();
        std::io::Read::read_exact(&mut f, &mut [0u8; 4]).unwrap();
        assert_eq!(read_position(me, &s.path("a/../f")), Some(4));
    }
}

//! How far a process has read a file, from `/proc/<pid>/fd` and `/proc/<pid>/fdinfo` (Linux): shows that logcopy is
//! hashing a file at a given moment, without asking logcopy.

use std::path::Path;

/// `pid`'s read position in `path` while it has the file open (the furthest, if open more than once).
pub fn read_position(pid: u32, path: &Path) -> Option<u64> {
    let mut furthest = None;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if std::fs::read_link(fd.path()).ok().as_deref() != Some(path) {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()));
        let pos = info.ok().and_then(|i| i.lines().find_map(|l| l.strip_prefix("pos:")?.trim().parse::<u64>().ok()));
        furthest = furthest.max(pos);
    }
    furthest
}

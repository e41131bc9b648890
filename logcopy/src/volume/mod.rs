//! The shared logs volume: its layout, reading the markers and results files on it, watching it, and writing
//! logcopy's outputs onto it.
//!
//! Everything on the volume may have been written by the participant's code, so nothing here follows a
//! symbolic link or opens a special file, and marker files are read by name only.
//!
//! Upstream's scripts write the merged file and the EvalAI files in place, so a reader (the S3 sync, EvalAI's
//! publisher, a participant downloading the logs) can see half a file, and a failed write leaves one behind.
//! Every output here is written to a temporary file in the same folder and renamed over the target, so readers
//! see the old bytes or the new ones, never a mix, and a failed write leaves the old file untouched.

pub mod manifest;
pub mod watch;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use volume::layout::{LOGCOPY_LOG as LOG_REL, TEMP_PREFIX};

/// A failed output write, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed, then renamed over it.
/// A symlink at `path` is replaced, never followed.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let err = |source| WriteError { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| err(std::io::Error::other("the path has no file name")))?;
    let mut tmp_name = std::ffi::OsString::from(TEMP_PREFIX);
    tmp_name.push(name);
    tmp_name.push(format!(".{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Where things are on the volume (generation 1 layout by default).
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    /// Worker results path under the root, `{i}` standing for the worker number.
    pub results_pattern: String,
    /// The merged results file under the root.
    pub merged: PathBuf,
}

impl Layout {
    pub fn status_dir(&self) -> PathBuf {
        self.root.join(volume::layout::STATUS_DIR)
    }

    pub fn evalai_dir(&self) -> PathBuf {
        self.root.join(volume::layout::EVALAI_DIR)
    }

    pub fn merged_file(&self) -> PathBuf {
        self.root.join(&self.merged)
    }

    pub fn log_file(&self) -> PathBuf {
        self.root.join(LOG_REL)
    }

    /// Worker `i`'s results file (workers are numbered from 1).
    pub fn results_file(&self, i: u32) -> PathBuf {
        self.root.join(self.results_rel(i))
    }

    /// Worker `i`'s results file relative to the root, as logs and errors name it.
    pub fn results_rel(&self, i: u32) -> String {
        self.results_pattern.replace("{i}", &i.to_string())
    }

    /// Whether `path` is one of logcopy's own outputs (their changes must not trigger a new cycle).
    pub fn is_own_output(&self, path: &Path) -> bool {
        path.starts_with(self.evalai_dir())
            || path == self.merged_file()
            || path.starts_with(self.root.join(volume::layout::LOGCOPY_DIR))
            || path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX))
    }
}

/// What identifies a version of a file without reading it: a rewrite changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

impl FileStamp {
    /// The stamp of `path` itself (a symlink is stamped, not followed); `None` when it does not exist.
    pub fn of(path: &Path) -> std::io::Result<Option<FileStamp>> {
        match std::fs::symlink_metadata(path) {
            Ok(m) => Ok(Some(FileStamp {
                len: m.len(),
                mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
                ino: m.ino(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_atomically_and_never_follows_a_link() {
        let d = std::env::temp_dir().join(format!("logcopy-vol-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let target = d.join("outside");
        std::fs::write(&target, b"keep").unwrap();
        let out = d.join("out.json");
        let _ = std::fs::remove_file(&out);
        std::os::unix::fs::symlink(&target, &out).unwrap();
        atomic_write(&out, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(&out).unwrap().file_type().is_symlink());
        let leftovers: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty());
        let e = atomic_write(&d.join("no-such-dir/x.json"), b"x").unwrap_err();
        assert!(e.to_string().contains("no-such-dir/x.json"), "{e}");
    }
}

//! The shared logs volume: its layout, reading the markers and results files on it, watching it, and writing
//! logcopy's outputs onto it.
//!
//! Everything on the volume may have been written by the participant's code, so every read and write goes through
//! [`volume::safe::Root`], opened once at the volume's root: no symbolic link is followed in any component, no
//! special file is opened, and marker files are read by name only.
//!
//! Upstream's scripts write the merged file and the EvalAI files in place, so a reader (the S3 sync, EvalAI's
//! publisher, a participant downloading the logs) can see half a file, and a failed write leaves one behind.
//! Every output here is written to a temporary file in the same folder and renamed over the target, so readers
//! see the old bytes or the new ones, never a mix, and a failed write leaves the old file untouched.

pub mod manifest;
pub mod watch;

pub use volume::layout::{LOGCOPY_LOG as LOG_REL, TEMP_PREFIX};
pub use volume::safe::{Root, WriteError};

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use volume::layout;

/// Writes `bytes` to `path` atomically (a file outside the volume: `logcopy merge`'s endpoint, the local sinks'
/// files): through a root opened at its folder, as every write on the volume goes.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let (root, name) =
        Root::open_parent(path, false).map_err(|source| WriteError { path: path.to_path_buf(), source })?;
    root.write_atomic(&name, bytes)
}

/// Where things are on the volume, relative to its root (generation 1 layout by default): the names come from
/// [`volume::layout`]; the worker files' pattern and the merged file from the configuration.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The volume root's path: for messages and for the watcher, which reports absolute paths. Never joined for I/O.
    pub root: PathBuf,
    /// Worker results path under the root, `{i}` standing for the worker number.
    pub results_pattern: String,
    /// The merged results file under the root.
    pub merged: PathBuf,
}

impl Layout {
    pub fn status_dir(&self) -> &'static Path {
        Path::new(layout::STATUS_DIR)
    }

    pub fn evalai_dir(&self) -> &'static Path {
        Path::new(layout::EVALAI_DIR)
    }

    pub fn merged_file(&self) -> &Path {
        &self.merged
    }

    pub fn log_file(&self) -> &'static Path {
        Path::new(layout::LOGCOPY_LOG)
    }

    /// Worker `i`'s results file (workers are numbered from 1).
    pub fn results_file(&self, i: u32) -> PathBuf {
        PathBuf::from(self.results_rel(i))
    }

    /// Worker `i`'s results file relative to the root, as logs and errors name it.
    pub fn results_rel(&self, i: u32) -> String {
        self.results_pattern.replace("{i}", &i.to_string())
    }

    /// Whether `path` (absolute, as the watcher reports it) is one of logcopy's own outputs (their changes must not
    /// trigger a new cycle).
    pub fn is_own_output(&self, path: &Path) -> bool {
        path.strip_prefix(&self.root).is_ok_and(|rel| layout::is_logcopy_file(rel, &self.merged))
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
    /// The stamp of `rel` beneath `root` itself (a symlink is stamped, not followed; one on the way is an error);
    /// `None` when it does not exist.
    pub fn of(root: &Root, rel: &Path) -> std::io::Result<Option<FileStamp>> {
        Ok(root.stat(rel)?.map(|m| FileStamp {
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            ino: m.ino(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_outputs_are_known_by_their_place() {
        let l = Layout {
            root: "/logs".into(),
            results_pattern: layout::RESULTS_PATTERN.into(),
            merged: layout::MERGED.into(),
        };
        for own in [layout::EVALAI_STDOUT, layout::LOGCOPY_LOG, layout::MERGED] {
            assert!(l.is_own_output(&l.root.join(own)), "{own}");
        }
        assert!(!l.is_own_output(&l.root.join(l.results_file(1))));
        assert!(!l.is_own_output(Path::new("/elsewhere/evalai/stdout.txt")));
    }

    #[test]
    fn atomic_write_outside_the_volume() {
        let d = std::env::temp_dir().join(format!("logcopy-vol-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        atomic_write(&d.join("out.json"), b"new").unwrap();
        assert_eq!(std::fs::read(d.join("out.json")).unwrap(), b"new");
        let e = atomic_write(&d.join("no-such-dir/x.json"), b"x").unwrap_err();
        assert!(e.to_string().contains("no-such-dir/x.json"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn never_replaces_a_device_a_fifo_or_a_folder() {
        use std::os::unix::fs::FileTypeExt;
        let d = std::env::temp_dir().join(format!("logcopy-vol-special-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("folder")).unwrap();
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, is) in [(fifo.as_path(), "fifo"), (&d.join("folder"), "folder"), (Path::new("/dev/null"), "device")]
        {
            let e = atomic_write(path, b"x").unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{is}: {e}");
        }
        let m = std::fs::symlink_metadata("/dev/null").unwrap();
        assert!(m.file_type().is_char_device(), "/dev/null is still a device");
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the fifo is still a fifo");
        let _ = std::fs::remove_dir_all(&d);
    }
}

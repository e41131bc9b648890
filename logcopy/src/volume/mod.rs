//! The shared logs volume: how logcopy writes its outputs onto it.
//!
//! Upstream's scripts write the merged file and the EvalAI files in place, so a reader (the S3 sync, EvalAI's
//! publisher, a participant downloading the logs) can see half a file, and a failed write leaves one behind.
//! Every output here is written to a temporary file in the same folder and renamed over the target, so readers
//! see the old bytes or the new ones, never a mix, and a failed write leaves the old file untouched.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Prefix of logcopy's temporary files; they are never uploaded.
pub const TEMP_PREFIX: &str = ".logcopy-tmp.";

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

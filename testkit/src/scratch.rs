//! Fresh folders for a test or a benchmark, and copies and listings of folder trees.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh folder, unique per process and call (pid, counter, name), under the system's temporary folder; removed on
/// drop unless the thread is panicking (a failing test), when it is kept and its path printed.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("lbrt-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Scratch { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Keeps the folder (it is not removed on drop) and returns its path.
    pub fn keep(self) -> PathBuf {
        let dir = self.dir.clone();
        std::mem::forget(self);
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(scratch folder kept for diagnosis: {})", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Copies the folder tree `from` to `to` (created): folders and regular files; links and special files are left
/// out, as a recorded volume has none.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    let at = |p: &Path, e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    std::fs::create_dir_all(to).map_err(|e| at(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| at(from, e))? {
        let entry = entry.map_err(|e| at(from, e))?;
        let ty = entry.file_type().map_err(|e| at(&entry.path(), e))?;
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &dest).map_err(|e| at(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Every regular file under `dir`, recursively, sorted; links are not followed.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(ty) = entry.file_type() else { continue };
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_folder_is_removed_on_drop_and_copies_keep_files_only() {
        let s = Scratch::new("kit");
        let dir = s.dir.clone();
        std::fs::create_dir_all(s.path("a/b")).unwrap();
        std::fs::write(s.path("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.path("a/link")).unwrap();
        copy_dir(&s.path("a"), &s.path("c")).unwrap();
        assert_eq!(files_under(&s.path("c")), [s.path("c/b/f")]);
        assert!(copy_dir(&s.path("missing"), &s.path("d")).unwrap_err().to_string().contains("missing"));
        drop(s);
        assert!(!dir.exists());
    }
}

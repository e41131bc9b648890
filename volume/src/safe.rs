//! Reading a hostile volume safely: walking it without following links, and opening a file under it so that no
//! path component can be a symbolic link, not even one swapped in between the walk and the open.
//!
//! The agent container runs the participant's code and writes into the volume that logcopy uploads with the
//! Job's AWS role. A link from `agent/agent1/leaderboard.log` to `/proc/self/environ` or to a mounted secret
//! must never be read. `O_NOFOLLOW` protects only the last component, so files are opened with Linux's
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` relative to the volume's root, with a component-by-component
//! `openat(O_NOFOLLOW)` walk where `openat2` is unavailable (Linux before 5.6). FIFOs, sockets and devices are
//! opened with `O_NONBLOCK` and refused after `fstat`, so they never block.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A regular file found by [`walk`], relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub rel: PathBuf,
}

/// What the walk skipped, for a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub rel: PathBuf,
    pub reason: &'static str,
}

/// Lists every regular file under `root`, never descending into a symlinked folder. Symlinks, FIFOs, sockets
/// and devices are reported in `skipped`. `exclude` filters relative paths (files and folders).
pub fn walk(root: &Path, exclude: &dyn Fn(&Path) -> bool) -> (Vec<Found>, Vec<Skipped>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else { continue };
        for entry in entries.flatten() {
            let rel = dir.join(entry.file_name());
            if exclude(&rel) {
                continue;
            }
            // DirEntry::file_type does not follow links.
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(rel);
            } else if ft.is_file() {
                files.push(Found { rel });
            } else {
                use std::os::unix::fs::FileTypeExt;
                let reason = if ft.is_symlink() {
                    "a symbolic link (never followed)"
                } else if ft.is_fifo() {
                    "a FIFO, not a regular file"
                } else if ft.is_socket() {
                    "a socket, not a regular file"
                } else if ft.is_block_device() || ft.is_char_device() {
                    "a device, not a regular file"
                } else {
                    "not a regular file"
                };
                skipped.push(Skipped { rel, reason });
            }
        }
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    (files, skipped)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Opens the volume's root folder itself (it may be a mount point; it is the one path we trust).
pub fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = cstr(root)?;
    // SAFETY: a valid NUL-terminated path; the returned fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat2_beneath(dirfd: i32, rel: &CString, flags: i32) -> io::Result<OwnedFd> {
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid dirfd, NUL-terminated path and a zero-initialised open_how of the right size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The fallback: `openat(O_NOFOLLOW)` one component at a time.
fn openat_walk(dirfd: i32, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
    let comps: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "path leaves the volume")),
        })
        .collect::<io::Result<_>>()?;
    let mut current: Option<OwnedFd> = None;
    for (i, name) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let c =
            CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let base = current.as_ref().map_or(dirfd, |f| f.as_raw_fd());
        let f = if last { flags } else { libc::O_RDONLY | libc::O_DIRECTORY };
        // SAFETY: valid fd and NUL-terminated component.
        let fd = unsafe { libc::openat(base, c.as_ptr(), f | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor we own.
        current = Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    current.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))
}

/// Opens `rel` under the root for reading: no symlink anywhere on the way, never blocking, regular files only.
/// Returns the file and its length at open time.
pub fn open_beneath(root: &OwnedFd, rel: &Path) -> io::Result<(File, u64)> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let fd = match openat2_beneath(root.as_raw_fd(), &cstr(rel)?, flags) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) || e.raw_os_error() == Some(libc::EPERM) => {
            openat_walk(root.as_raw_fd(), rel, flags)?
        }
        other => other?,
    };
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok((file, meta.len()))
}

/// An object key for `rel`, or why the name cannot be one (invalid UTF-8, control characters, odd components).
pub fn object_key(prefix: &str, rel: &Path) -> Result<String, &'static str> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => {
                let s = n.to_str().ok_or("the name is not valid UTF-8")?;
                if s.chars().any(|c| c.is_control()) {
                    return Err("the name holds a control character (newline, tab, ...)");
                }
                parts.push(s);
            }
            _ => return Err("the path has a `..`, `.` or root component"),
        }
    }
    if parts.is_empty() {
        return Err("empty path");
    }
    Ok(format!("{prefix}/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("logcopy-safe-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn walk_skips_links_and_special_files() {
        let d = tmp("walk");
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f.log"), b"x").unwrap();
        std::fs::write(d.join("top.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc", d.join("a/etc-link")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.join("a/host")).unwrap();
        std::os::unix::fs::symlink(".", d.join("a/loop")).unwrap();
        let (files, skipped) = walk(&d, &|p| p.starts_with("excluded"));
        let rels: Vec<_> = files.iter().map(|f| f.rel.to_string_lossy().into_owned()).collect();
        assert_eq!(rels, ["a/b/f.log", "top.json"]);
        assert_eq!(skipped.len(), 3);
    }

    #[test]
    fn open_beneath_refuses_links_anywhere_on_the_path() {
        let d = tmp("open");
        std::fs::create_dir_all(d.join("real")).unwrap();
        std::fs::write(d.join("real/f.log"), b"hello").unwrap();
        std::fs::write(d.join("secret"), b"s3cr3t").unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("dirlink")).unwrap();
        std::os::unix::fs::symlink(d.join("secret"), d.join("real/leak.log")).unwrap();
        let root = open_root(&d).unwrap();
        let (mut f, len) = open_beneath(&root, Path::new("real/f.log")).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), len), ("hello", 5));
        assert!(open_beneath(&root, Path::new("dirlink/f.log")).is_err(), "a symlinked folder was followed");
        assert!(open_beneath(&root, Path::new("real/leak.log")).is_err(), "a symlinked file was followed");
        assert!(open_beneath(&root, Path::new("../x")).is_err());
        // The fallback walk refuses the same paths.
        assert!(openat_walk(root.as_raw_fd(), Path::new("dirlink/f.log"), libc::O_RDONLY).is_err());
        assert!(openat_walk(root.as_raw_fd(), Path::new("real/f.log"), libc::O_RDONLY).is_ok());
    }

    #[test]
    fn object_keys() {
        assert_eq!(object_key("42", Path::new("agent/agent1/a.json")).unwrap(), "42/agent/agent1/a.json");
        assert!(object_key("42", Path::new("a/bad\nname")).is_err());
        let bad = std::ffi::OsStr::from_bytes(b"x\xff");
        assert!(object_key("42", Path::new(bad)).is_err());
        assert!(object_key("42", Path::new("../up")).is_err());
    }
}

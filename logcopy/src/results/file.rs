//! Reading a result file from the shared volume, which the participant's container can write.
//!
//! Upstream's `fetch_dict` reads a missing, empty, truncated or otherwise unparsable file as `{}` ("no data"),
//! and crashes on the rest (a directory, bad UTF-8, a JSON list). We keep that split, and add what a hostile
//! volume needs: a symbolic link is never followed (`O_NOFOLLOW`), a FIFO, socket or device is never read
//! (`O_NONBLOCK` on open, then `fstat`), and a file above a size cap is refused before it is read.

use super::pyjson::{self, ParseError, Value};
use std::fs::OpenOptions;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Default cap on a results file: far above any real one (10,000 routes take about 15 MB).
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// What a readable results file held, as upstream would see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    /// The file does not exist.
    Missing,
    /// The file exists but upstream reads it as no data: empty, truncated, not JSON, or a falsy JSON value.
    NoData { reason: String },
    /// A JSON object with at least one key.
    Data(Value),
}

impl Loaded {
    pub fn data(&self) -> Option<&Value> {
        match self {
            Loaded::Data(v) => Some(v),
            _ => None,
        }
    }

    /// Classifies parsed bytes the way `fetch_dict` and its callers do.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Loaded, LoadError> {
        match pyjson::parse(bytes) {
            Ok(v) if !v.is_truthy() => Ok(Loaded::NoData {
                reason: if bytes.is_empty() { "the file is empty".into() } else { format!("it holds {}", short(&v)) },
            }),
            Ok(v @ Value::Object(_)) => Ok(Loaded::Data(v)),
            Ok(v) => Err(LoadError::NotAnObject { path: path.to_path_buf(), found: v.type_name() }),
            Err(e @ ParseError::Syntax { .. }) => {
                Ok(Loaded::NoData { reason: if bytes.is_empty() { "the file is empty".into() } else { e.to_string() } })
            }
            Err(e) => Err(LoadError::Parse { path: path.to_path_buf(), source: e }),
        }
    }
}

fn short(v: &Value) -> String {
    let s = pyjson::to_pretty(v, false);
    format!("`{s}`, which counts as no data")
}

/// A results file that cannot be used at all (upstream crashes on most of these).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: is a symbolic link; links on the volume are never followed", path.display())]
    Symlink { path: PathBuf },
    #[error("{}: is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: is {size} bytes, over the {max}-byte cap on results files", path.display())]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: ParseError },
    #[error("{}: the top-level JSON value is {found}, not an object", path.display())]
    NotAnObject { path: PathBuf, found: &'static str },
}

fn file_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Reads a file without following a symlink and without blocking on a special file, up to `max_bytes`.
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>, LoadError> {
    let io = |source| LoadError::Io { path: path.to_path_buf(), source };
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(LoadError::Symlink { path: path.to_path_buf() });
        }
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(LoadError::NotRegular { path: path.to_path_buf(), kind: file_kind(meta.file_type()) });
    }
    if meta.len() > max_bytes {
        return Err(LoadError::TooLarge { path: path.to_path_buf(), size: meta.len(), max: max_bytes });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // The file may grow while we read: never take more than the cap.
    file.take(max_bytes + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > max_bytes {
        return Err(LoadError::TooLarge { path: path.to_path_buf(), size: buf.len() as u64, max: max_bytes });
    }
    Ok(Some(buf))
}

/// `fetch_dict(path)` for a local file, with the hostile-volume rules above.
pub fn load(path: &Path, max_bytes: u64) -> Result<Loaded, LoadError> {
    match read_regular(path, max_bytes)? {
        None => Ok(Loaded::Missing),
        Some(bytes) => Loaded::from_bytes(path, &bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("logcopy-file-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn classifies_like_fetch_dict() {
        let d = tmp();
        let p = d.join("r.json");
        assert_eq!(load(&p, 100).unwrap(), Loaded::Missing);
        for (bytes, no_data) in
            [(&b""[..], true), (b"{\"a\": ", true), (b"[]", true), (b"{}", true), (b"{\"a\": 1}", false)]
        {
            std::fs::write(&p, bytes).unwrap();
            let l = load(&p, 100).unwrap();
            assert_eq!(matches!(l, Loaded::NoData { .. }), no_data, "{bytes:?}");
        }
        std::fs::write(&p, b"[1]").unwrap();
        assert!(matches!(load(&p, 100), Err(LoadError::NotAnObject { .. })));
        std::fs::write(&p, b"{\"a\": \xff}").unwrap();
        assert!(matches!(load(&p, 100), Err(LoadError::Parse { .. })));
        std::fs::write(&p, [b' '; 101]).unwrap();
        assert!(matches!(load(&p, 100), Err(LoadError::TooLarge { .. })));
    }

    #[test]
    fn never_follows_links_or_opens_special_files() {
        let d = tmp();
        let target = d.join("secret");
        std::fs::write(&target, b"{\"secret\": 1}").unwrap();
        let link = d.join("link.json");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(load(&link, 100), Err(LoadError::Symlink { .. })));
        assert!(matches!(load(&d, 100), Err(LoadError::NotRegular { kind: "a directory", .. })));
        let fifo = d.join("fifo.json");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opening a FIFO with no writer would block without O_NONBLOCK.
        assert!(matches!(load(&fifo, 100), Err(LoadError::NotRegular { kind: "a FIFO", .. })));
    }
}

//! Reading a result file from the shared volume, which the participant's container can write.
//!
//! Upstream's `fetch_dict` reads a missing, empty, truncated or otherwise unparsable file as `{}` ("no data"),
//! and crashes on the rest (a directory, bad UTF-8, a JSON list). We keep that split, and add what a hostile
//! volume needs, from [`volume::safe`]: a symbolic link is never followed, in any component of the path beneath
//! the volume's root, a FIFO, socket or device is never read, and a file above a size cap is refused before it is
//! read.

use super::pyjson::{self, ParseError, Value};
use std::path::{Path, PathBuf};
use volume::safe::{ReadError, Root};

/// Default cap on a results file: a real one is well under 1 MiB (about 1.4 KB a route; the soak's 10,000 routes
/// over 64 workers are 14 MB in all). Its parse and merge cost about 15 times its size in memory (docs/benchmarks.md:
/// a file at this cap, 60-68 MiB of peak RSS; at 16 MiB, 235 MiB), so the cap bounds logcopy's memory too.
pub const DEFAULT_MAX_BYTES: u64 = 4 * 1024 * 1024;

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
    #[error("{}: is a symbolic link, or lies beneath one; links on the volume are never followed", path.display())]
    Symlink { path: PathBuf },
    #[error("{}: is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: is {size} bytes, over the {max}-byte cap on results files", path.display())]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{}: {source}", path.display())]
    HardLinked { path: PathBuf, source: ReadError },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: ParseError },
    #[error("{}: the top-level JSON value is {found}, not an object", path.display())]
    NotAnObject { path: PathBuf, found: &'static str },
}

/// Reads `rel` beneath `root` (no link followed anywhere on the way, no special file, up to `max_bytes`);
/// `Ok(None)` when it does not exist. Errors name the file by its path under the root.
pub fn read_beneath(root: &Root, rel: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>, LoadError> {
    root.read_capped(rel, max_bytes).map_err(|e| load_error(e, root.display(rel)))
}

fn load_error(e: ReadError, path: PathBuf) -> LoadError {
    match e {
        ReadError::Symlink => LoadError::Symlink { path },
        ReadError::NotRegular { kind } => LoadError::NotRegular { path, kind },
        ReadError::TooLarge { size, max } => LoadError::TooLarge { path, size, max },
        ReadError::Io(source) => LoadError::Io { path, source },
        e @ ReadError::HardLinked { .. } => LoadError::HardLinked { path, source: e },
    }
}

/// `fetch_dict` for `rel` beneath the volume's `root`, with the hostile-volume rules above.
pub fn load_beneath(root: &Root, rel: &Path, max_bytes: u64) -> Result<Loaded, LoadError> {
    match read_beneath(root, rel, max_bytes)? {
        None => Ok(Loaded::Missing),
        Some(bytes) => Loaded::from_bytes(&root.display(rel), &bytes),
    }
}

/// Reads a file named on the command line (`logcopy merge`, `logcopy evalai`): its folder is the root, so only the
/// last component is checked (the operator chose the path).
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>, LoadError> {
    let (root, name) = match Root::open_parent(path, false) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadError::Io { path: path.to_path_buf(), source }),
    };
    root.read_capped(&name, max_bytes).map_err(|e| load_error(e, path.to_path_buf()))
}

/// `fetch_dict(path)` for a file named on the command line, with the hostile-volume rules above.
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
        // A second name of a file (its other name can be outside the volume) is not read either.
        let linked = d.join("linked.json");
        let _ = std::fs::remove_file(&linked);
        std::fs::hard_link(&target, &linked).unwrap();
        let e = load(&linked, 100).unwrap_err();
        assert!(matches!(e, LoadError::HardLinked { .. }), "{e}");
        assert!(e.to_string().contains("has 2 hard links"), "{e}");
    }
}

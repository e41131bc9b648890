//! The upload manifest: what logcopy has already put in S3, keyed by content.
//!
//! Upstream runs `aws s3 sync` every 10 s, which LISTs the whole prefix each time and compares sizes and
//! modification times, so a volume restored from S3 (every file with a new mtime) is uploaded again. Here the
//! manifest, kept on the volume (`logcopy/.upload-manifest.json`, never uploaded itself), records each file's size
//! and SHA-256 as uploaded. A file is hashed only when its size, mtime or inode changed since the last look, and
//! uploaded only when its content differs from what S3 holds; steady state makes no S3 request at all.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use volume::safe::{Root, WriteError};

/// Where the manifest lives, relative to the volume root.
pub use volume::layout::UPLOAD_MANIFEST as MANIFEST_REL;

/// One uploaded file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub size: u64,
    pub sha256: String,
    /// The stat seen when it was last hashed: when it still matches, the file is not hashed again.
    #[serde(default)]
    pub mtime_ns: i64,
    #[serde(default)]
    pub ino: u64,
}

impl Entry {
    pub fn stat_matches(&self, meta: &std::fs::Metadata) -> bool {
        self.size == meta.len() && self.mtime_ns == mtime_ns(meta) && self.ino == meta.ino()
    }
}

pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The destination the entries refer to (`s3://bucket/prefix`); a manifest for another one is ignored.
    pub target: String,
    pub files: BTreeMap<String, Entry>,
}

impl Manifest {
    /// Loads the manifest for `target` from the volume, or an empty one (missing, unreadable, or another target).
    pub fn load(root: &Root, target: &str) -> Manifest {
        let empty = Manifest { target: target.to_string(), files: BTreeMap::new() };
        let Ok(Some(bytes)) = root.read_capped(Path::new(MANIFEST_REL), 256 * 1024 * 1024) else {
            return empty;
        };
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(m) if m.target == target => m,
            _ => empty,
        }
    }

    pub fn save(&self, root: &Root) -> Result<(), WriteError> {
        let path = Path::new(MANIFEST_REL);
        if let Some(dir) = path.parent() {
            let _ = root.create_dir_all(dir);
        }
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        root.write_atomic(path, &bytes)
    }
}

/// How much [`sha256_until`] reads at a time: a stop is seen within one chunk.
pub const HASH_CHUNK: usize = 1024 * 1024;

/// SHA-256 of everything readable from `r`, streamed in 64 KiB blocks; returns (hex digest, bytes read).
pub fn sha256(r: impl Read) -> std::io::Result<(String, u64)> {
    let mut buf = vec![0u8; 64 * 1024];
    sha256_until(r, &mut buf, || false).map(|done| done.unwrap_or_default())
}

/// SHA-256 of everything readable from `r`, read into `buf` one block at a time; `None` as soon as `stop()` says so,
/// asked before each block. The S3 sync hashes a file this way on a blocking thread, so that even a 16 GiB sparse
/// file (read as zeros at memory speed, hashed for about a minute) gives way to a SIGTERM within one
/// [`HASH_CHUNK`].
pub fn sha256_until(
    mut r: impl Read,
    buf: &mut [u8],
    stop: impl Fn() -> bool,
) -> std::io::Result<Option<(String, u64)>> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut total = 0u64;
    loop {
        if stop() {
            return Ok(None);
        }
        match r.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                ctx.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let digest = ctx.finish();
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some((hex, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_text() {
        assert_eq!(sha256(&b"abc"[..]).unwrap().0, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn a_hash_stops_within_one_chunk() {
        use std::cell::Cell;
        // A never-ending reader (as a FIFO that a writer keeps full would be): only the stop ends the hash.
        let asked = Cell::new(0u32);
        let mut buf = vec![0u8; HASH_CHUNK];
        let stopped = sha256_until(std::io::repeat(7), &mut buf, || {
            asked.set(asked.get() + 1);
            asked.get() > 3
        });
        assert_eq!(stopped.unwrap(), None);
        assert_eq!(asked.get(), 4, "asked before each chunk, and nothing read after the stop");
        // Unstopped, the same digest as `sha256`.
        let text = vec![b'x'; 3 * HASH_CHUNK + 5];
        let whole = sha256_until(&text[..], &mut buf, || false).unwrap().unwrap();
        assert_eq!(whole, sha256(&text[..]).unwrap());
        assert_eq!(whole.1, text.len() as u64);
    }

    #[test]
    fn manifest_round_trips_and_ignores_other_targets() {
        let d = std::env::temp_dir().join(format!("logcopy-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let d = Root::open(&d).unwrap();
        let mut m = Manifest::load(&d, "s3://b/1");
        m.files.insert("a.log".into(), Entry { size: 3, sha256: "x".into(), mtime_ns: 1, ino: 2 });
        m.save(&d).unwrap();
        assert_eq!(Manifest::load(&d, "s3://b/1"), m);
        assert!(Manifest::load(&d, "s3://b/2").files.is_empty());
    }
}

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
    #[serde(deserialize_with = "bounded_files")]
    pub files: BTreeMap<String, Entry>,
}

/// The largest manifest loaded: 32 MiB holds about 180,000 entries (about 180 bytes of JSON each), more than the
/// sync's caps let a volume of a few workers reach (`--max-worker-files`). A larger one is ignored.
pub const MAX_MANIFEST_BYTES: u64 = 32 << 20;
/// The most entries loaded (each costs about 200 bytes of memory): past it the manifest is ignored.
pub const MAX_MANIFEST_ENTRIES: usize = 200_000;

/// The `files` map, refused as soon as it passes [`MAX_MANIFEST_ENTRIES`] or holds an entry that no upload could
/// have written (a key that is not a plain relative path, a digest that is not 64 hex digits): a forged or damaged
/// manifest costs neither memory nor a file left out of the upload.
fn bounded_files<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Entry>, D::Error> {
    struct Files;
    impl<'de> serde::de::Visitor<'de> for Files {
        type Value = BTreeMap<String, Entry>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a map of at most {MAX_MANIFEST_ENTRIES} uploaded files")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            use serde::de::Error;
            let mut files = BTreeMap::new();
            while let Some((rel, entry)) = map.next_entry::<String, Entry>()? {
                if files.len() >= MAX_MANIFEST_ENTRIES {
                    return Err(A::Error::custom(format!("more than {MAX_MANIFEST_ENTRIES} entries")));
                }
                let plain = !rel.is_empty()
                    && Path::new(&rel).components().all(|c| matches!(c, std::path::Component::Normal(_)));
                if !plain {
                    return Err(A::Error::custom(format!("{rel:?} is not a plain relative path")));
                }
                if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(A::Error::custom(format!("{rel:?}: the digest is not a SHA-256")));
                }
                files.insert(rel, entry);
            }
            Ok(files)
        }
    }
    d.deserialize_map(Files)
}

impl Manifest {
    /// Loads the manifest for `target` from the volume, or an empty one (then every file is uploaded again):
    /// missing, of another target, or, with a warning, unreadable, over [`MAX_MANIFEST_BYTES`] or invalid.
    pub fn load(root: &Root, target: &str) -> Manifest {
        let empty = Manifest { target: target.to_string(), files: BTreeMap::new() };
        let ignored = |why: &dyn std::fmt::Display| {
            tracing::warn!("the upload manifest {MANIFEST_REL} {why}: ignored, every file is uploaded again");
        };
        let bytes = match root.read_capped(Path::new(MANIFEST_REL), MAX_MANIFEST_BYTES) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return empty,
            Err(e) => {
                ignored(&e);
                return empty;
            }
        };
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(m) if m.target == target => m,
            Ok(_) => empty,
            Err(e) => {
                ignored(&format_args!("is invalid ({e})"));
                empty
            }
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
        m.files.insert("a.log".into(), Entry { size: 3, sha256: "ab".repeat(32), mtime_ns: 1, ino: 2 });
        m.save(&d).unwrap();
        assert_eq!(Manifest::load(&d, "s3://b/1"), m);
        assert!(Manifest::load(&d, "s3://b/2").files.is_empty());
    }

    /// A manifest over the size or entry cap, or with an entry no upload writes, is ignored whole: nothing of it is
    /// kept (a full upload follows), and its load never holds more than the cap.
    #[test]
    fn a_forged_or_oversized_manifest_is_ignored() {
        let d = std::env::temp_dir().join(format!("logcopy-manifest-forged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("logcopy")).unwrap();
        let root = Root::open(&d).unwrap();
        let entry = |sha: &str| Entry { size: 1, sha256: sha.into(), mtime_ns: 1, ino: 2 };
        let good = "a".repeat(64);
        let write = |m: &Manifest| std::fs::write(d.join(MANIFEST_REL), serde_json::to_vec(m).unwrap()).unwrap();
        let mut m = Manifest { target: "s3://b/1".into(), files: BTreeMap::new() };
        m.files.insert("agent/agent1/x.log".into(), entry(&good));
        write(&m);
        assert_eq!(Manifest::load(&root, "s3://b/1"), m, "a valid one loads");
        for (rel, sha) in [("../../etc/passwd", good.as_str()), ("/abs", &good), ("a.log", "not-hex"), ("", &good)] {
            let mut bad = m.clone();
            bad.files.insert(rel.into(), entry(sha));
            write(&bad);
            assert!(Manifest::load(&root, "s3://b/1").files.is_empty(), "{rel:?} {sha:?}");
        }
        let mut many = Manifest { target: "s3://b/1".into(), files: BTreeMap::new() };
        for i in 0..=MAX_MANIFEST_ENTRIES {
            many.files.insert(format!("f{i}"), entry(&good));
        }
        write(&many);
        assert!(Manifest::load(&root, "s3://b/1").files.is_empty(), "over the entry cap");
        let f = std::fs::File::create(d.join(MANIFEST_REL)).unwrap();
        f.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
        assert!(Manifest::load(&root, "s3://b/1").files.is_empty(), "over the size cap");
        let _ = std::fs::remove_dir_all(&d);
    }
}

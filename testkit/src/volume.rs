//! [`Volume`]: a private logs volume for one test, copied from a recorded one or empty, and the writes a test
//! makes to it. Tests may spell the volume's paths; the binaries take them from the `volume` crate.

use crate::paths::fixture_volume;
use crate::scratch::{Scratch, copy_dir};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The folder of the markers.
const STATUS: &str = "containers-status";

/// A logs volume in a fresh scratch folder (`<scratch>/logs`), with room beside it for what is not on the volume.
pub struct Volume {
    scratch: Scratch,
    root: PathBuf,
}

impl Volume {
    /// Copies `fixtures/volumes/<name>` into a fresh folder.
    pub fn from_fixture(name: &str) -> Volume {
        let scratch = Scratch::new(&format!("vol-{name}"));
        let root = scratch.path("logs");
        copy_dir(&fixture_volume(name), &root).unwrap_or_else(|e| panic!("cannot copy the fixture volume: {e}"));
        Volume { scratch, root }
    }

    /// An empty volume.
    pub fn empty(name: &str) -> Volume {
        let scratch = Scratch::new(&format!("vol-{name}"));
        let root = scratch.path("logs");
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        Volume { scratch, root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A folder beside the volume (not inside it), for a program's stdout/stderr and local outputs.
    pub fn side_dir(&self, name: &str) -> PathBuf {
        let d = self.scratch.path(name);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        d
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn try_read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok()
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// Worker `i`'s results file (generation 1 layout).
    pub fn worker_rel(i: u32) -> String {
        format!("agent/agent{i}/agent_results.json")
    }

    /// Writes a file atomically (temporary file in the same folder + rename), as a careful writer would.
    pub fn write_atomic(&self, rel: &str, bytes: &[u8]) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("a file in a folder")).unwrap();
        let tmp = path.with_file_name(format!(".it-tmp.{}", path.file_name().unwrap().to_string_lossy()));
        std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
    }

    /// Writes a file in place, the way the evaluator does (`open(path, 'w')` then `json.dump`): truncate, then
    /// write, so a reader in between sees an empty or partial file.
    pub fn write_in_place(&self, rel: &str, bytes: &[u8]) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("a file in a folder")).unwrap();
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
    }

    /// Truncates a file in place to its first `len` bytes (a writer stopped mid-write).
    pub fn truncate_in_place(&self, rel: &str, len: usize) {
        let bytes = std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        self.write_in_place(rel, &bytes[..len.min(bytes.len())]);
    }

    /// Adds an empty marker file in `containers-status/`.
    pub fn add_marker(&self, name: &str) {
        let dir = self.path(STATUS);
        std::fs::create_dir_all(&dir).unwrap();
        File::create(dir.join(name)).unwrap_or_else(|e| panic!("marker {name}: {e}"));
    }

    pub fn has_marker(&self, name: &str) -> bool {
        self.path(STATUS).join(name).exists()
    }
}

//! Where the workspace and its recorded fixtures are.

use std::path::{Path, PathBuf};

/// The workspace root (this crate's parent folder).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the test kit lives in the workspace").to_path_buf()
}

/// `fixtures/<rel>` of the workspace.
pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("fixtures").join(rel)
}

/// The recorded logs volume `fixtures/volumes/<name>`.
pub fn fixture_volume(name: &str) -> PathBuf {
    fixture("volumes").join(name)
}

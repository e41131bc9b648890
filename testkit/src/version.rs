//! What `--version` must print: `NAME VERSION (rev REV)`, REV being `git rev-parse --short=12 HEAD` of the
//! repository the tests run in, with `-dirty` when tracked files differed from HEAD at the build. The build script
//! reruns on a commit, a checkout, a change of the index or of the crate's sources, not on an edit elsewhere (a
//! doc): a build without `-dirty` in a tree with unstaged edits outside the crate is right.

use std::process::Command;

fn git(args: &[&str]) -> String {
    let out = Command::new("git").current_dir(crate::repo_root()).args(args).output().expect("run git");
    assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `bin --version` and checks it against git: the revision is HEAD's, and `-dirty` appears exactly when the
/// tree has changes to tracked files. Returns the line.
pub fn check_version(bin: &str, name: &str) -> String {
    let out = Command::new(bin).arg("--version").output().expect("run --version");
    assert!(out.status.success(), "{bin} --version failed");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let rev = git(&["rev-parse", "--short=12", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let clean = format!("{name} {} (rev {rev})", env!("CARGO_PKG_VERSION"));
    let marked = format!("{name} {} (rev {rev}-dirty)", env!("CARGO_PKG_VERSION"));
    assert!(
        line == clean || (dirty && line == marked),
        "{bin} --version: {line:?}, against git: {clean:?} (dirty: {dirty})"
    );
    line
}

//! What `--version` must print: `NAME VERSION (rev REV)`, REV being `git rev-parse --short=12 HEAD` of the
//! repository the tests run in, with `-dirty` when tracked files differ from HEAD.

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
    let expected = format!("{name} {} (rev {rev}{})", env!("CARGO_PKG_VERSION"), if dirty { "-dirty" } else { "" });
    assert_eq!(line, expected, "{bin} --version against git");
    line
}

// The git revision of a build, for `--version`: included by the build.rs of each binary crate (logcopy,
// supervisor), which calls `emit_revision()`. Sets the compile-time variable LBRT_REVISION to
// `git rev-parse --short=12 HEAD` (plus `-dirty` when tracked files differ from HEAD); without git or a
// repository (a docker build, whose context leaves .git out), to the LBRT_REVISION of the build's environment
// (the Dockerfile's build argument); else to `unknown`.
//
// Cargo reruns the script when HEAD moves (a checkout or a commit: the HEAD file, the branch's loose ref, and
// packed-refs), when the index changes, when the crate's sources change (so `-dirty` follows edits), and when
// LBRT_REVISION changes. In a worktree `.git` is a file: the paths come from git itself (`--absolute-git-dir`
// for HEAD and the index, `--git-common-dir` for the refs), so both layouts work.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").current_dir(dir).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn git_revision(dir: &Path) -> Option<String> {
    let rev = git(dir, &["rev-parse", "--short=12", "HEAD"]).filter(|r| !r.is_empty())?;
    let git_dir = PathBuf::from(git(dir, &["rev-parse", "--absolute-git-dir"])?);
    let common =
        git(dir, &["rev-parse", "--path-format=absolute", "--git-common-dir"]).map_or(git_dir.clone(), PathBuf::from);
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    println!("cargo:rerun-if-changed={}", git_dir.join("index").display());
    println!("cargo:rerun-if-changed={}", common.join("packed-refs").display());
    if let Some(r) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={}", common.join(r).display());
    }
    let dirty = git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

fn emit_revision() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()));
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-env-changed=LBRT_REVISION");
    let rev = git_revision(&dir)
        .or_else(|| std::env::var("LBRT_REVISION").ok().map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=LBRT_REVISION={rev}");
}

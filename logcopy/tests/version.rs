//! `logcopy --version` names the git revision it was built from (build.rs), as the supervisor's does.

#[test]
fn version_carries_the_git_revision() {
    testkit::check_version(env!("CARGO_BIN_EXE_logcopy"), "logcopy");
}

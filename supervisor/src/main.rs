//! The `supervisor` binary: the entry program of the simulator and agent containers.
//!
//! Its subcommands arrive with the supervisor issue; this build ships the marker protocol library that logcopy
//! already uses, and a binary that says so rather than pretending to supervise anything.

fn main() -> std::process::ExitCode {
    eprintln!(
        "supervisor {}: the simulator/agent entry program is not in this build yet; \
         this release ships its marker protocol library (supervisor::markers) only",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::from(2)
}

//! The entry program of the simulator and agent containers of a submission Job.
//!
//! The binary supervises one side of a worker pair (CARLA or the participant's evaluator). What it shares with
//! the `logcopy` sidecar (the marker protocol, the volume's layout, safe I/O beneath a root) lives in the
//! `volume` crate, which both binaries depend on.
//!
//! - [`config`]: the subcommands and the evaluator's typed environment (`run_leaderboard.sh`'s variables);
//! - [`role`]: the attempt loop shared by both roles, and what each role decides (`simulator`: CARLA and its
//!   readiness; `agent`: the evaluator, its resume, `--route-retries`);
//! - [`child`]: starting the child in its own process group, optionally as another user (`--run-as`);
//! - [`reaper`]: PID-1 duties: signals, the one `waitpid` loop, and stopping every process of an attempt;
//! - [`checkpoint`]: the evaluator's checkpoint: the last good copy, progress repair, route skips, all rewritten
//!   through `volume::pyjson` so that only the changed fields differ;
//! - [`exit`]: the exit codes, and the Indexed Job's pod failure policy actions for them;
//! - [`gpu`]: `supervisor gpu`, the GPU check against `nvidia-smi`.

pub mod checkpoint;
pub mod child;
pub mod config;
pub mod exit;
pub mod gpu;
pub mod log;
pub mod reaper;
pub mod role;

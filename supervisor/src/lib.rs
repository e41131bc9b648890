//! The entry program of the simulator and agent containers of a submission Job.
//!
//! The binary supervises one side of a worker pair (CARLA or the participant's evaluator). What it shares with
//! the `logcopy` sidecar (the marker protocol, the volume's layout, safe I/O beneath a root) lives in the
//! `volume` crate, which both binaries depend on.

pub mod checkpoint;
pub mod child;
pub mod config;
pub mod gpu;
pub mod log;
pub mod reaper;
pub mod role;

//! The entry program of the simulator and agent containers of a submission Job.
//!
//! The binary supervises one side of a worker pair (CARLA or the participant's evaluator);
//! this library holds what must not be spelled twice, starting with the marker protocol in
//! [`markers`], which both the supervisor and the `logcopy` sidecar use.

pub mod checkpoint;
pub mod child;
pub mod config;
pub mod duration;
pub mod gpu;
pub mod markers;
pub mod reaper;
pub mod role;

//! The test kit: what the workspace's integration tests and benchmarks share, so that each exists once.
//!
//! - [`paths`]: the workspace root and the recorded fixtures.
//! - [`scratch`]: fresh folders removed on drop (kept, and named, when a test fails), tree copies and listings.
//! - [`volume`]: [`Volume`], a private copy of a recorded logs volume (or an empty one) with the writes tests make
//!   to it: in place as the evaluator writes, atomically as a careful writer does, markers.
//! - [`wait`]: bounded polls ([`eventually`] panics naming what it waited for; [`wait_for`] says whether it came;
//!   [`poll_until`] gives an error for benchmarks, which report rather than panic).
//! - [`net`]: [`free_port`], a free port P with P+10 free too (CARLA's traffic manager), never handed out twice.
//! - [`procfs`]: what `/proc` says of a process: existence, state, CPU, memory, read position, ignored signals.
//! - [`version`]: [`check_version`], a binary's `--version` against `git rev-parse` (its build.rs stamp).
//! - `moto` (feature `moto`): a real `moto_server` on 127.0.0.1 with its request recorder, and SDK clients for it.
//!
//! A server or fixture that cannot be had fails the caller with the reason; nothing here skips a test.

pub mod net;
pub mod paths;
pub mod procfs;
pub mod scratch;
pub mod version;
pub mod volume;
pub mod wait;

#[cfg(feature = "moto")]
pub mod moto;

pub use net::free_port;
pub use paths::{fixture, fixture_volume, repo_root};
pub use scratch::{Scratch, copy_dir, files_under};
pub use version::check_version;
pub use volume::Volume;
pub use wait::{eventually, eventually_true, poll_every, poll_until, wait_for};

//! The shared logs volume's contract: the one crate both binaries use, so that neither imports the other.
//!
//! Every container of a submission Job mounts one volume (see `/work/shared/spec/upstream-job.md`); the
//! participant's code runs in the agent containers and can write into it. What both sides must agree on lives
//! here, each in its own module:
//! - [`markers`]: the empty files in `containers-status/` through which the containers coordinate;
//! - [`layout`]: the name of every folder and file on the volume (generations 1 and 2), so no other module spells
//!   a path;
//! - [`results`]: the Leaderboard results file's model: versions, infraction lists, route ids, the `_checkpoint`;
//! - [`pyjson`] and [`num`]: JSON and numbers the way CPython reads and writes them, for byte-identical files;
//! - [`status`]: the worker status record beside the markers: why a side restarted or failed;
//! - [`shard`]: the Indexed Job's keys, shard status object and pod attempts (S3 as the medium between pods);
//! - [`safe`]: reading and writing beneath a root without following a symbolic link in any component;
//! - [`duration`] and [`time`]: durations in flags and the UTC timestamps the scripts write.
//!
//! The crate has no async runtime and few dependencies, so that the static PID-1 supervisor stays small.

pub mod duration;
pub mod layout;
pub mod markers;
pub mod num;
pub mod pyjson;
pub mod results;
pub mod safe;
pub mod shard;
pub mod status;
pub mod time;

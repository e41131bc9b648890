//! logcopy: the sidecar of every CARLA Leaderboard submission Job.
//!
//! It replaces upstream's `run_logcopy.sh` and the Python scripts it calls. One volume loop watches the workers'
//! results files and markers, merges them byte-identically to upstream and converts the merge to EvalAI's three
//! files; each outward edge is a sink task that publishes the newest snapshot within its own budget.
//!
//! - [`cli`], [`config`]: the subcommands and their typed, validated configuration (every error at once, exit 2);
//! - [`daemon`]: `logcopy run`: the volume loop (merge cycles on a thread of their own), the end conditions, the
//!   cancel check, the final flush;
//! - [`results`]: the Leaderboard files: version detection, the N-way merge, global statistics, the EvalAI
//!   conversion, reading a worker's file off the volume;
//! - [`publish`]: the sinks: EvalAI (paced, guarded writes), S3 (manifest-based sync), DynamoDB (the submission
//!   record), and their embedded local stand-ins;
//! - [`volume`]: watching the volume and the upload manifest (the contract itself is the `volume` crate);
//! - [`routes`]: the routes each worker is assigned (upstream's subset formula) and which are missing;
//! - [`status`]: `logcopy status`, the read-only view of a live or finished volume;
//! - [`view`]: what the participant sees: the run status block of `stdout.txt`, the failures in EvalAI's `stderr`;
//! - [`monitor`]: `logcopy monitor`: the Indexed Job's monitor, `logcopy run`'s loop over a working volume that
//!   its fetcher mirrors from the workers' shards in S3;
//! - [`restore`]: the init container's job (the volume back from S3 on a resume; an Indexed Job's worker by keys);
//! - [`upload`]: an Indexed Job's worker pod uploader (`logcopy upload`);
//! - [`logging`]: text or JSON log lines, one per entry;
//! - [`metrics`]: the Prometheus metrics of `logcopy run` (`--metrics-addr`), and their listener.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod oplog;
pub mod publish;
pub mod restore;
pub mod results;
pub mod routes;
pub mod status;
pub mod upload;
pub mod view;
pub mod volume;

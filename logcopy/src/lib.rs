//! logcopy: the sidecar of every CARLA Leaderboard submission Job.
//!
//! It replaces upstream's `run_logcopy.sh` and the Python scripts it calls: it merges the workers' route
//! results into one Leaderboard results file, converts that file to what EvalAI shows, and (in later
//! modules) publishes it and keeps S3 and DynamoDB in step with the shared volume.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod logging;
pub mod publish;
pub mod restore;
pub mod results;
pub mod routes;
pub mod status;
pub mod volume;

//! The command line: upstream's script names and flags as subcommands, so an operator can swap them in.
//!
//! Exit codes, the same for every subcommand: 0 success; 1 the work failed (where upstream's Python raised and
//! exited 1: a merge that stops on duplicate routes, a file that is not a results file, ...); 2 bad usage or
//! configuration.

use crate::config::{RestoreArgs, RunArgs};
use crate::results::file::{self, DEFAULT_MAX_BYTES, LoadError, Loaded};
use crate::results::pyjson::{self, Object, Value};
use crate::results::{self, Input, MergeFailure, Version, evalai};
use crate::volume::atomic_write;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tracing_subscriber::filter::LevelFilter;

/// The Leaderboard version when neither a flag nor the files decide it.
pub const DEFAULT_VERSION: Version = Version::V2;

#[derive(Debug, Parser)]
#[command(
    name = "logcopy",
    version = concat!(env!("CARGO_PKG_VERSION"), " (rev ", env!("LBRT_REVISION"), ")"),
    about = "The CARLA Leaderboard results sidecar", propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: watch the volume, merge, publish to EvalAI, S3 and DynamoDB, end when the workers are done.
    Run(Box<RunCommand>),
    /// The init container's job: restore a resumed submission's volume from S3, or create a fresh volume's folders.
    Restore(RestoreArgs),
    /// Merge worker result files into one Leaderboard results file (drop-in for merge_statistics.py).
    Merge(MergeArgs),
    /// Convert a merged results file to EvalAI's results.json, stdout.txt and metadata.json
    /// (drop-in for generate_results.py, generate_stdout.py and generate_metadata.py at once).
    Evalai(EvalaiArgs),
    /// The state of the submission from the markers, the workers' status records and results files (read only,
    /// safe on a live volume): one line per worker, or JSON with --json (docs/status.md).
    Status(crate::status::StatusArgs),
}

#[derive(Debug, Args)]
pub struct RunCommand {
    #[command(flatten)]
    pub args: RunArgs,
    /// Least severe log level shown (error, warn, info, debug, trace).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: LevelFilter,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The worker files, in worker order. Missing, empty or half-written files count as no data, as upstream.
    #[arg(short = 'f', long = "file-paths", num_args = 1.., required = true, value_name = "FILE")]
    pub file_paths: Vec<PathBuf>,
    /// Where the merged file is written (atomically; left untouched when the merge fails).
    #[arg(short = 'e', long, value_name = "FILE")]
    pub endpoint: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct EvalaiArgs {
    /// The merged results file.
    #[arg(short = 'f', long = "file-path", value_name = "FILE")]
    pub file_path: PathBuf,
    /// The folder that receives results.json, stdout.txt and metadata.json (created if missing).
    #[arg(short = 'o', long = "out-dir", value_name = "DIR")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Force the Leaderboard version (1.0 or 2.0) instead of detecting it from the files (default when
    /// nothing in them tells: 2.0).
    #[arg(long = "leaderboard-version", value_name = "VERSION")]
    pub leaderboard_version: Option<Version>,
    /// Refuse a results file larger than this many bytes.
    #[arg(long = "max-results-bytes", value_name = "BYTES", default_value_t = DEFAULT_MAX_BYTES)]
    pub max_results_bytes: u64,
}

/// Runs a parsed command line and decides the exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(r) => return run_daemon(*r),
        Command::Restore(a) => return run_restore(a),
        Command::Merge(a) => merge(&a),
        Command::Evalai(a) => evalai(&a),
        Command::Status(a) => return status(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed) => ExitCode::from(1),
    }
}

/// `logcopy run`: 0 on every handled end (finished, incomplete, cancelled, SIGTERM), 2 on bad configuration.
fn run_daemon(r: RunCommand) -> ExitCode {
    let cfg = match r.args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("logcopy run: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // The volume's root is opened once, here: the log, the merge, the outputs and the S3 sync all go beneath it.
    let volume = crate::daemon::open_volume(&cfg.logs);
    let volume_log = volume.as_ref().ok().map(|root| (&**root, std::path::Path::new(crate::volume::LOG_REL)));
    if let Some(problem) = crate::logging::init(cfg.log_format, r.log_level, volume_log) {
        tracing::warn!("{problem}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logcopy run: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let span = tracing::info_span!("logcopy", submission = cfg.submission_id);
    let result = match volume {
        Ok(root) => runtime.block_on(tracing::Instrument::instrument(crate::daemon::run(cfg, root), span)),
        Err(e) => Err(e),
    };
    match result {
        Ok(end) => {
            tracing::info!(?end, "logcopy ends");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("logcopy run: configuration error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `logcopy status`: 0 with a report (whatever it says), 2 on bad configuration (an unusable volume root included).
fn status(a: &crate::status::StatusArgs) -> ExitCode {
    match crate::status::report(a) {
        Ok(r) => {
            print!("{}", if a.json { r.to_json() } else { r.to_text() });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("logcopy status: configuration error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `logcopy restore`: 0 done, 1 the restore failed (S3 unreachable, disk full, ...), 2 bad configuration.
fn run_restore(a: RestoreArgs) -> ExitCode {
    let cfg = match a.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("logcopy restore: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(crate::config::LogFormat::Human, LevelFilter::INFO, None);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logcopy restore: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(crate::restore::restore(&cfg)) {
        Ok(r) => {
            let what = if cfg.resume { "resumed" } else { "fresh" };
            tracing::info!(downloaded = r.downloaded, bytes = r.bytes, skipped = r.skipped, "{what} volume ready");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("logcopy restore: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The work failed; the reasons were printed.
struct Failed;

fn fail(cmd: &str, msg: impl std::fmt::Display) -> Failed {
    eprintln!("logcopy {cmd}: error: {msg}");
    Failed
}

fn merge(a: &MergeArgs) -> Result<(), Failed> {
    let mut inputs = Vec::with_capacity(a.file_paths.len());
    for path in &a.file_paths {
        let name = path.display().to_string();
        match file::load(path, a.common.max_results_bytes) {
            Ok(Loaded::Data(data)) => inputs.push(Input { name, data }),
            Ok(Loaded::Missing) => {
                eprintln!("logcopy merge: note: {name}: does not exist; counted as no data, as upstream")
            }
            Ok(Loaded::NoData { reason }) => {
                eprintln!("logcopy merge: note: {name}: {reason}; counted as no data, as upstream")
            }
            Err(e) => return Err(fail("merge", e)),
        }
    }
    let version = match a.common.leaderboard_version {
        Some(v) => v,
        None => results::detect_all(inputs.iter().map(|i| (i.name.as_str(), &i.data)))
            .map_err(|e| fail("merge", e))?
            .unwrap_or(DEFAULT_VERSION),
    };
    match results::merge(version, &inputs) {
        Ok(m) => {
            for w in &m.warnings {
                eprintln!("logcopy merge: warning: {w}");
            }
            atomic_write(&a.endpoint, m.to_bytes().as_bytes()).map_err(|e| fail("merge", e))
        }
        Err(MergeFailure { error, partial }) => {
            // 1.0 writes the record list before its global step, as upstream does.
            if let Some(p) = partial {
                let bytes = pyjson::to_pretty(&p, version.sort_keys());
                atomic_write(&a.endpoint, bytes.as_bytes()).map_err(|e| fail("merge", e))?;
            }
            Err(fail("merge", error))
        }
    }
}

fn evalai(a: &EvalaiArgs) -> Result<(), Failed> {
    let path = &a.file_path;
    let raw = file::read_regular(path, a.common.max_results_bytes);
    // What upstream's `fetch_dict` hands the converters: an object, nothing (missing, corrupt, or a JSON value
    // that is not an object, which they test with `in` and export as no data), or a crash.
    let data: Result<Option<Object>, String> = match &raw {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => match Loaded::from_bytes(path, bytes) {
            Ok(Loaded::Data(Value::Object(o))) => Ok(Some(Arc::unwrap_or_clone(o))),
            Ok(_) | Err(LoadError::NotAnObject { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    let version = a.common.leaderboard_version.unwrap_or_else(|| match &data {
        Ok(Some(o)) => results::detect(&Value::object(o.clone())).unwrap_or(DEFAULT_VERSION),
        _ => DEFAULT_VERSION,
    });
    std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| fail("evalai", format!("cannot create {}: {e}", a.out_dir.display())))?;
    let data = data.as_ref().map(Option::as_ref).map_err(String::clone);
    let outputs = [
        ("results.json", data.clone().and_then(|d| evalai::results_json(version, d).map_err(|e| e.to_string()))),
        ("stdout.txt", data.and_then(|d| evalai::stdout_txt(version, d).map_err(|e| e.to_string()))),
    ];
    let mut ok = true;
    for (name, produced) in outputs {
        let written =
            produced.and_then(|s| atomic_write(&a.out_dir.join(name), s.as_bytes()).map_err(|e| e.to_string()));
        if let Err(e) = written {
            ok = false;
            fail("evalai", format!("{name} not written: {}: {e}", path.display()));
        }
    }
    // metadata.json is a byte copy of the merged file; without one, upstream keeps the old copy.
    match raw {
        Ok(Some(bytes)) => {
            if let Err(e) = atomic_write(&a.out_dir.join("metadata.json"), &bytes) {
                ok = false;
                fail("evalai", e);
            }
        }
        Ok(None) => println!("Couldn't generate the metadata, missing input file '{}'", path.display()),
        Err(e) => {
            ok = false;
            fail("evalai", format!("metadata.json not written: {e}"));
        }
    }
    if ok { Ok(()) } else { Err(Failed) }
}

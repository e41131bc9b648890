//! The command line: upstream's script names and flags as subcommands, so an operator can swap them in.
//!
//! Exit codes, the same for every subcommand: 0 success; 1 the work failed (where upstream's Python raised and
//! exited 1: a merge that stops on duplicate routes, a file that is not a results file, ...); 2 bad usage or
//! configuration.

use crate::config::{ConfigErrors, MonitorArgs, RestoreArgs, RunArgs, StorageTarget};
use crate::logging::one_line;
use crate::publish::aws::Checked;
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
    /// The Indexed Job's monitor: mirror the workers' shards from S3 into a working volume (--logs) and run
    /// `logcopy run`'s merge and publishing over it; end when every worker is done, failed or lost.
    Monitor(Box<MonitorCommand>),
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
    /// An Indexed Job's worker pod uploader (a native sidecar): worker N's keys to S3, its shard status object,
    /// the cancel check, the final flush on SIGTERM (docs/architecture.md, "Indexed Job").
    Upload(Box<crate::upload::UploadCommand>),
}

#[derive(Debug, Args)]
pub struct RunCommand {
    #[command(flatten)]
    pub args: RunArgs,
    /// Least severe log level shown (error, warn, info, debug, trace).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: LevelFilter,
    /// Where the end's one-line summary (the final status and why, or the configuration error) is written for
    /// Kubernetes' termination message, so that `kubectl describe pod` says why a Complete Job's submission
    /// failed. Default: /dev/termination-log when it exists (in a pod), else nowhere.
    #[arg(long, env = "TERMINATION_LOG", value_name = "PATH")]
    pub termination_log: Option<PathBuf>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (HOST an IP address, e.g. 0.0.0.0:9100); off by default.
    #[arg(long, env = "METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Period of the heartbeat log line (routes done/assigned per worker, crashes and restarts, EvalAI requests and
    /// budget, S3 uploads, DynamoDB requests), so that an idle run still says it is alive: seconds or with a unit
    /// (`90s`, `5m`); 0 turns it off.
    #[arg(long, env = "HEARTBEAT_LOG", default_value = "60", value_parser = crate::config::span, value_name = "DURATION")]
    pub heartbeat_log: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct MonitorCommand {
    #[command(flatten)]
    pub run: RunCommand,
    #[command(flatten)]
    pub monitor: MonitorArgs,
}

/// Kubernetes' default termination message path, written only where it exists (a local run creates nothing in
/// `/dev`).
const POD_TERMINATION_LOG: &str = "/dev/termination-log";
/// Kubernetes keeps at most 4,096 bytes of a termination message.
const TERMINATION_MAX: usize = 4096;

/// The termination message of a command line clap refused (the value of `--termination-log` is read from the raw
/// arguments, or `TERMINATION_LOG`): a bad flag is as much a reason for a pod to end as a bad setting.
pub fn termination_message_for_refused(args: &[String], text: &str) {
    let flag = args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--termination-log") {
        Some("") => args.get(i + 1).cloned(),
        Some(v) => v.strip_prefix('=').map(str::to_string),
        None => None,
    });
    let path = flag.or_else(|| std::env::var("TERMINATION_LOG").ok()).map(PathBuf::from);
    termination_message(path.as_deref(), &one_line(text));
}

/// Writes `text` to the termination message file: `path`, else the pod's default where it exists. A failure is
/// logged, never fatal (the log has the same line).
fn termination_message(path: Option<&std::path::Path>, text: &str) {
    let default = std::path::Path::new(POD_TERMINATION_LOG);
    let Some(path) = path.or_else(|| default.exists().then_some(default)) else { return };
    let mut end = text.len().min(TERMINATION_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(e) = std::fs::write(path, format!("{}\n", &text[..end])) {
        tracing::warn!("cannot write the termination message to {}: {e}", path.display());
    }
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
        Command::Run(r) => return run_daemon(*r, None),
        Command::Monitor(m) => {
            let m = *m;
            return run_daemon(m.run, Some(m.monitor));
        }
        Command::Restore(a) => return run_restore(a),
        Command::Merge(a) => merge(&a),
        Command::Evalai(a) => evalai(&a),
        Command::Status(a) => return status(&a),
        Command::Upload(u) => return crate::upload::main(*u),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed) => ExitCode::from(1),
    }
}

/// `logcopy run` (and `logcopy monitor`, with its settings): 0 on every handled end (finished, incomplete,
/// cancelled, SIGTERM), 2 on bad configuration.
fn run_daemon(r: RunCommand, monitor: Option<MonitorArgs>) -> ExitCode {
    let termination = r.termination_log.clone();
    let name = if monitor.is_some() { "monitor" } else { "run" };
    let config_error = |e: &dyn std::fmt::Display| {
        eprintln!("logcopy {name}: configuration error: {e}");
        termination_message(termination.as_deref(), &one_line(&format!("configuration error: {e}")));
        ExitCode::from(2)
    };
    let cfg = match r.args.validate() {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logcopy {name}: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // The AWS chain is checked before logging starts: the SDK's own multi-line warnings while it searches the chain
    // stay out of the log, and a missing region or provider is one line and exit 2.
    let aws_warning = match &cfg.storage {
        StorageTarget::Aws { .. } => match runtime.block_on(check_aws(cfg.storage_timeout)) {
            Ok(Checked::Ready) => None,
            Ok(Checked::Transient(w)) => Some(w),
            Err(errors) => return config_error(&ConfigErrors(errors)),
        },
        StorageTarget::Local { .. } => None,
    };
    // The volume's root is opened once, here: the log, the merge, the outputs and the S3 sync all go beneath it.
    let volume = crate::daemon::open_volume(&cfg.logs);
    let volume_log = volume.as_ref().ok().map(|root| (&**root, std::path::Path::new(crate::volume::LOG_REL)));
    if let Some(problem) = crate::logging::init(cfg.log_format, r.log_level, volume_log) {
        tracing::warn!("{problem}");
    }
    // Where each outward edge goes, one line each: a local edge is never a silent default.
    for (warn, line) in &cfg.edges {
        if *warn {
            tracing::warn!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
    if let Some(w) = aws_warning {
        tracing::warn!("{w}");
    }
    if let Err(e) = crate::metrics::listen(r.metrics_addr, &runtime) {
        return config_error(&e);
    }
    let span = tracing::info_span!("logcopy", submission = cfg.submission_id);
    if !r.heartbeat_log.is_zero() {
        crate::metrics::record();
        let beat = crate::metrics::heartbeat_log(r.heartbeat_log, cfg.workers);
        runtime.spawn(tracing::Instrument::instrument(beat, span.clone()));
    }
    let result = match (volume, monitor) {
        (Ok(root), None) => {
            runtime.block_on(tracing::Instrument::instrument(crate::daemon::run(cfg, root), span)).map(Some)
        }
        (Ok(root), Some(m)) => {
            runtime.block_on(tracing::Instrument::instrument(crate::monitor::run(cfg, m, root), span))
        }
        (Err(e), _) => Err(e),
    };
    let code = match result {
        Ok(None) => {
            let line = "the monitor of this submission had already ended (monitor.done is in S3): nothing to do";
            tracing::info!("logcopy ends: {line}");
            termination_message(termination.as_deref(), line);
            ExitCode::SUCCESS
        }
        Ok(Some(end)) => {
            let line = one_line(&end.describe());
            tracing::info!("logcopy ends: {line}");
            termination_message(termination.as_deref(), &line);
            ExitCode::SUCCESS
        }
        Err(e) => {
            let e = one_line(&e.to_string());
            tracing::error!("{e}");
            config_error(&e)
        }
    };
    crate::logging::flush();
    code
}

/// The AWS SDK's configuration from the standard chain, checked ([`crate::publish::aws::check`]).
async fn check_aws(timeout: std::time::Duration) -> Result<Checked, Vec<crate::config::ConfigError>> {
    let sdk = crate::publish::store::sdk_config(timeout).await;
    crate::publish::aws::check(&sdk, crate::publish::aws::CHECK_WAIT).await
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

/// The one-threaded async runtime of a subcommand; exit 2 when it cannot start.
pub(crate) fn runtime(command: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        eprintln!("logcopy {command}: cannot start the async runtime: {e}");
        ExitCode::from(2)
    })
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
    let runtime = match runtime("restore") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // Only a resume touches S3. Its chain is checked before logging starts (as `run`'s); a provider that does not
    // answer is asked again, a few times, before the restore goes on (and fails with exit 1 if S3 stays out of reach).
    let mut warnings = Vec::new();
    if cfg.resume && matches!(cfg.storage, StorageTarget::Aws { .. }) {
        for wait in [1, 2, 4, 8, 0] {
            match runtime.block_on(check_aws(crate::publish::store::DEFAULT_STORAGE_TIMEOUT)) {
                Ok(Checked::Ready) => break,
                Ok(Checked::Transient(w)) => warnings.push(w),
                Err(errors) => {
                    eprintln!("logcopy restore: configuration error: {}", ConfigErrors(errors));
                    return ExitCode::from(2);
                }
            }
            std::thread::sleep(std::time::Duration::from_secs(wait));
        }
    }
    crate::logging::init(crate::config::LogFormat::Human, LevelFilter::INFO, None);
    for w in warnings {
        tracing::warn!("{w}");
    }
    let result = runtime.block_on(crate::restore::restore(&cfg));
    crate::logging::flush();
    match result {
        Ok(r) => {
            let what = match cfg.worker {
                Some(w) => format!("worker {w}'s"),
                None => (if cfg.resume { "resumed" } else { "fresh" }).to_string(),
            };
            tracing::info!(downloaded = r.downloaded, bytes = r.bytes, skipped = r.skipped, "{what} volume ready");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("logcopy restore: error: {}", one_line(&e.to_string()));
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

//! `logcopy run`'s configuration: one struct, built from flags with upstream's environment variable names as
//! fallbacks, validated once at start. A missing or malformed setting is a [`ConfigError`] that names it; the
//! binary exits 2 on it, and on nothing else.

use crate::results::Version;
use crate::results::file::DEFAULT_MAX_BYTES;
use crate::routes::RoutePlan;
use clap::{ArgAction, Args, ValueEnum};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// A secret (the EvalAI host token) that never prints: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it (the Authorization header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event (`text` too, as the supervisor calls it: one `LOG_FORMAT` serves the pod).
    #[value(alias = "text")]
    Human,
    /// One JSON object per line, for FluentD and CloudWatch.
    Json,
}

/// The flags of `logcopy run`, typed by clap's value parsers (each error names the flag, its environment variable and
/// the reason, see [`describe_clap_error`]); what depends on several flags is checked by [`RunArgs::validate`], which
/// reports every problem at once.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// EvalAI challenge id (digits).
    #[arg(long, env = "CHALLENGE_ID", value_parser = evalai_id)]
    pub challenge_id: Option<EvalAiId>,
    /// EvalAI submission id (digits).
    #[arg(long, env = "SUBMISSION_ID", value_parser = evalai_id)]
    pub submission_id: Option<EvalAiId>,
    /// EvalAI challenge phase id, the track (digits).
    #[arg(long, env = "TRACK_ID", value_parser = evalai_id)]
    pub track_id: Option<EvalAiId>,
    /// EvalAI participant team id (the DynamoDB partition key).
    #[arg(long, env = "TEAM_ID")]
    pub team_id: Option<String>,
    /// EvalAI host token. Prefer --evalai-token-file: a flag's value is visible in the process list.
    #[arg(long, env = "EVALAI_AUTH_TOKEN", hide_env_values = true)]
    pub evalai_token: Option<String>,
    /// A file holding the EvalAI host token (e.g. a mounted Kubernetes secret).
    #[arg(long, env = "EVALAI_TOKEN_FILE")]
    pub evalai_token_file: Option<PathBuf>,
    /// EvalAI API base URL, e.g. https://eval.ai. Required once S3 or DynamoDB is remote (else --local-evalai or
    /// --local; with nothing set at all, every edge goes to the embedded default, ./logcopy-local). Plain http:// is refused unless the host is loopback (127.0.0.0/8, ::1, localhost) or
    /// --allow-insecure-evalai is given.
    #[arg(long, env = "EVALAI_API_SERVER")]
    pub evalai_api_server: Option<String>,
    /// Accept a plain http:// EvalAI server that is not loopback (an in-cluster fake, a staging server): the token
    /// then travels unencrypted.
    #[arg(long, env = "ALLOW_INSECURE_EVALAI", action = ArgAction::Set, num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = boolean, value_name = "BOOL")]
    pub allow_insecure_evalai: bool,
    /// Full rescan period, the fallback for lost file events (seconds, or with a unit: 500ms, 10s, 2m).
    #[arg(long, env = "LOGS_PERIOD", default_value = "10", value_parser = period)]
    pub logs_period: Duration,
    /// Leaderboard version while the workers' files carry none (1.0 or 2.0).
    #[arg(long, env = "LEADERBOARD_VERSION", default_value = "2.0")]
    pub leaderboard_version: Version,
    #[command(flatten)]
    pub routes: RouteArgs,
    /// The logs volume's root.
    #[arg(long, env = "LOGS_DIR", default_value = volume::layout::mount::LOGS)]
    pub logs: PathBuf,
    /// Path of worker i's results file under the volume; `{i}` is the worker number (1..N).
    /// Generation 2: agent/partial_agent_results{i}.json
    #[arg(long, env = "RESULTS_PATTERN", default_value = volume::layout::RESULTS_PATTERN)]
    pub results_pattern: String,
    /// Path of the merged results file under the volume.
    #[arg(long, env = "MERGED_PATH", default_value = volume::layout::MERGED)]
    pub merged_path: String,
    /// Most EvalAI requests a minute for this submission (status GETs, PUTs and retries together).
    /// A GET + PUT pair needs 2: fewer than 2 a minute could never send an update.
    #[arg(long, env = "EVALAI_RPM", default_value = "6", value_parser = clap::value_parser!(u32).range(2..=60))]
    pub evalai_rpm: u32,
    /// Period of the EvalAI status GET, which notices a cancel (any GET counts: the one before each PUT too).
    #[arg(long, env = "STATUS_PERIOD", default_value = "20", value_parser = period)]
    pub status_period: Duration,
    /// Do not mark a fresh submission `running` on EvalAI at start (PATCH).
    #[arg(long, env = "NO_START_PATCH", action = ArgAction::Set, num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = boolean, value_name = "BOOL")]
    pub no_start_patch: bool,
    /// At the end, also send EvalAI's terminal status (FINISHED, FAILED or CANCELLED), as the post-run step does.
    #[arg(long, env = "FINAL_STATUS", action = ArgAction::Set, num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = boolean, value_name = "BOOL")]
    pub final_status: bool,
    /// Time allowed for the last flush after SIGTERM or SIGINT; under the pod's grace period (make-job sets
    /// terminationGracePeriodSeconds to this plus 40 s: 60 s by default; Kubernetes' own default is 30 s).
    #[arg(long, env = "FLUSH_BUDGET", default_value = "20", value_parser = span)]
    pub flush_budget: Duration,
    /// Time allowed for the final EvalAI update at a normal end (completion or cancel).
    #[arg(long, env = "FINAL_TIMEOUT", default_value = "300", value_parser = span)]
    pub final_timeout: Duration,
    /// Trailing-edge debounce of file events (at most this long after the first event of a burst).
    #[arg(long, env = "DEBOUNCE", default_value = "250ms", value_parser = span)]
    pub debounce: Duration,
    /// Timeout of one EvalAI request.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "20", value_parser = period)]
    pub request_timeout: Duration,
    /// Timeout of one S3 or DynamoDB request attempt (the SDK retries a timed-out attempt; a failed upload is
    /// retried at the next sync).
    #[arg(long, env = "STORAGE_TIMEOUT", default_value = "60", value_parser = period)]
    pub storage_timeout: Duration,
    /// Log format on stdout (the volume's logcopy/logcopy.log gets the same).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Every outward edge to local files under OUT (EvalAI requests to OUT/evalai-requests.jsonl, S3 objects under
    /// OUT/s3/, the DynamoDB item to OUT/dynamodb.json), whatever server, bucket or table is set: each edge is named
    /// in one line at start, with the setting it ignores.
    #[arg(long, value_name = "OUT", conflicts_with_all = ["local_evalai", "local_storage"])]
    pub local: Option<PathBuf>,
    /// EvalAI alone to the local file OUT/evalai-requests.jsonl (EVALAI_API_SERVER ignored); S3 and DynamoDB need
    /// their bucket and table, or --local-storage.
    #[arg(long, value_name = "OUT")]
    pub local_evalai: Option<PathBuf>,
    /// S3 and DynamoDB alone to local files (objects under OUT/s3/, the item in OUT/dynamodb.json; S3_BUCKET and
    /// DYNAMODB_SUBMISSIONS_TABLE ignored); EvalAI needs its server, or --local-evalai.
    #[arg(long, value_name = "OUT")]
    pub local_storage: Option<PathBuf>,
    /// Run one cycle (scan, merge, publish) and exit.
    #[arg(long)]
    pub once: bool,
    /// Refuse a worker results file larger than this many bytes.
    #[arg(long, env = "MAX_RESULTS_BYTES", default_value_t = DEFAULT_MAX_BYTES)]
    pub max_results_bytes: u64,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub uploads: UploadArgs,
    // What the participant sees (crate::view).
    #[command(flatten)]
    pub view: crate::view::ViewArgs,
}

/// The workers and the routes they were given, as `logcopy run` and `logcopy status` read them.
#[derive(Debug, Clone, Args)]
pub struct RouteArgs {
    /// Number of worker pairs.
    #[arg(long = "workers", env = "SUBMISSION_WORKERS", default_value = "4",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Routes in all (ids 0..N-1), split among the workers as upstream's ROUTES_SUBSET. With it, a worker is
    /// complete only when every route it was given has a record (`logcopy status`: its routes_assigned), and records
    /// of routes it was not given are left out of the merge. Without it, a worker's own progress decides (upstream's
    /// rule).
    #[arg(long, env = "ROUTE_COUNT", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub route_count: Option<u32>,
    /// Runs of every route (the evaluators' --repetitions).
    #[arg(long, env = "REPETITIONS", default_value = "1", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repetitions: u32,
}

impl RouteArgs {
    /// The routes each worker was given, when the route count is known.
    pub fn plan(&self) -> Option<RoutePlan> {
        self.route_count.map(|routes| RoutePlan { routes, repetitions: self.repetitions, workers: self.workers })
    }
}

/// Where the volume's files and the submission's record go.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// S3 bucket that receives the volume under `<SUBMISSION_ID>/`; required, with the table, once an EvalAI server,
    /// a bucket or a table is set (docs/configuration.md: where each edge goes). Endpoint, region and credentials
    /// come from the AWS SDK's standard chain (AWS_ENDPOINT_URL, AWS_REGION, IRSA web identity, ...), checked at
    /// start.
    #[arg(long, env = "S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// DynamoDB submissions table (key team_id + submission_id).
    #[arg(long, env = "DYNAMODB_SUBMISSIONS_TABLE")]
    pub dynamodb_table: Option<String>,
}

/// Where S3 objects and the DynamoDB item go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageTarget {
    Aws {
        bucket: String,
        table: String,
    },
    /// Objects under `OUT/s3/`, the item in `OUT/dynamodb.json`.
    Local {
        out: PathBuf,
    },
}

impl StorageArgs {
    fn bucket(&self) -> Option<&str> {
        self.s3_bucket.as_deref().map(str::trim).filter(|b| !b.is_empty())
    }

    fn table(&self) -> Option<&str> {
        self.dynamodb_table.as_deref().map(str::trim).filter(|t| !t.is_empty())
    }

    /// S3 and DynamoDB, remote: both the bucket and the table are required (each missing one is reported).
    fn remote(&self, errors: &mut Collect, why: &str) -> Option<StorageTarget> {
        let or_local = "(or --local-storage OUT / --local OUT for local files)";
        let bucket = match self.bucket() {
            None => errors.take(Err(bad(BUCKET, format!("is required {why} {or_local}")))),
            Some(b) if !valid_bucket(b) => errors.take(Err(bad(BUCKET, format!("{b:?} is not an S3 bucket name")))),
            Some(b) => Some(b),
        };
        let table = match self.table() {
            None if self.bucket().is_some() => {
                errors.take(Err(bad(TABLE, format!("is required with S3_BUCKET {or_local}"))))
            }
            None => errors.take(Err(bad(TABLE, format!("is required {why} {or_local}")))),
            Some(t) => Some(t),
        };
        let (bucket, table) = (bucket?, table?);
        Some(StorageTarget::Aws { bucket: bucket.to_string(), table: table.to_string() })
    }
}

const SERVER: &str = "--evalai-api-server / EVALAI_API_SERVER";
const BUCKET: &str = "--s3-bucket / S3_BUCKET";
const TABLE: &str = "--dynamodb-table / DYNAMODB_SUBMISSIONS_TABLE";

/// Where the embedded local sinks write when no folder is given.
pub const DEFAULT_LOCAL_OUT: &str = "logcopy-local";

pub(crate) fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
}

/// The flags of `logcopy restore`, the init container's job.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The logs volume's root.
    #[arg(long, env = "LOGS_DIR", default_value = volume::layout::mount::LOGS)]
    pub logs: PathBuf,
    /// EvalAI submission id: the S3 prefix.
    #[arg(long, env = "SUBMISSION_ID", value_parser = evalai_id)]
    pub submission_id: Option<EvalAiId>,
    /// Number of worker pairs (folders agent/agent1..N on a fresh volume).
    #[arg(long = "workers", env = "SUBMISSION_WORKERS", default_value = "4",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Set (non-empty) on a resumed submission: restore the volume from S3. Any non-empty value, `0` included,
    /// means resume: upstream's meaning, which the pre-run step relies on.
    #[arg(long, env = "RESUME")]
    pub resume: Option<String>,
    /// Keep the participant's code out of the shared folders (with `supervisor agent --run-as`): containers-status,
    /// logcopy, evalai, simulator and agent become 2775 (group: the pod's fsGroup, which the supervisors, the
    /// simulator's user and logcopy have and the evaluator's user does not); only agent/agentN stays 0777.
    #[arg(long, env = "PRIVATE_STATUS", action = ArgAction::Set, num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_parser = boolean, value_name = "BOOL")]
    pub private_status: bool,
    /// Embedded local sinks: restore from OUT/s3/ instead of S3.
    #[arg(long, value_name = "OUT")]
    pub local: Option<PathBuf>,
    /// An Indexed Job's worker pod: fetch exactly worker N's results file, its last good copy and route-crash
    /// record (no LIST, no markers, no logs) so that it resumes from the shard's previous pod. Without a value:
    /// WORKER_ID, else JOB_COMPLETION_INDEX + 1 (docs/architecture.md, "Indexed Job").
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "")]
    pub worker: Option<String>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub logs: PathBuf,
    pub private_status: bool,
    pub submission_id: u64,
    pub workers: u32,
    pub resume: bool,
    pub storage: StorageTarget,
    /// `--worker`: an Indexed Job's worker pod, restored by exact keys.
    pub worker: Option<volume::markers::WorkerId>,
}

impl RestoreArgs {
    pub fn validate(self) -> Result<RestoreConfig, ConfigError> {
        let resume = self.resume.as_deref().is_some_and(|r| !r.trim().is_empty());
        let worker = match self.worker.as_deref() {
            None => None,
            Some(flag) => Some(crate::upload::resolve_worker(
                Some(flag).filter(|f| !f.trim().is_empty()).map(str::to_string),
                self.workers,
            )?),
        };
        let storage = match &self.local {
            Some(out) => StorageTarget::Local { out: out.clone() },
            None => match self.storage.bucket() {
                Some(b) if !valid_bucket(b) => {
                    return Err(bad(BUCKET, format!("{b:?} is not an S3 bucket name")));
                }
                // Restore touches S3 only; the table is not needed here.
                Some(b) => StorageTarget::Aws {
                    bucket: b.to_string(),
                    table: self.storage.table().unwrap_or_default().to_string(),
                },
                None if worker.is_some() => {
                    return Err(bad(BUCKET, "is required with --worker (or --local OUT to restore from OUT/s3/)"));
                }
                // Resuming from nowhere would silently hand the workers a fresh volume.
                None if resume => {
                    return Err(bad(
                        BUCKET,
                        "is required to resume (RESUME is set) (or --local OUT to restore from OUT/s3/)",
                    ));
                }
                // A fresh volume: storage is not used.
                None => StorageTarget::Local { out: PathBuf::from(DEFAULT_LOCAL_OUT) },
            },
        };
        let local = matches!(storage, StorageTarget::Local { .. });
        Ok(RestoreConfig {
            private_status: self.private_status,
            logs: self.logs,
            submission_id: required("--submission-id / SUBMISSION_ID", self.submission_id, local.then_some(1))?,
            workers: self.workers,
            resume,
            storage,
            worker,
        })
    }
}

/// Where EvalAI requests go.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalAiTarget {
    Http {
        base: String,
        token: Secret,
    },
    /// The embedded sink: requests are appended to `OUT/evalai-requests.jsonl`.
    Local {
        out: PathBuf,
    },
}

/// The validated configuration of `logcopy run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub challenge_id: u64,
    pub submission_id: u64,
    pub track_id: u64,
    pub team_id: String,
    pub evalai: EvalAiTarget,
    pub logs_period: Duration,
    pub version: Version,
    pub workers: u32,
    /// The routes each worker was given (`--route-count`); `None`: each worker's own progress decides.
    pub routes: Option<RoutePlan>,
    pub logs: PathBuf,
    pub results_pattern: String,
    pub merged_path: PathBuf,
    pub evalai_rpm: u32,
    pub status_period: Duration,
    pub start_patch: bool,
    pub final_status: bool,
    pub flush_budget: Duration,
    pub final_timeout: Duration,
    pub debounce: Duration,
    pub request_timeout: Duration,
    pub storage_timeout: Duration,
    pub log_format: LogFormat,
    pub once: bool,
    pub max_results_bytes: u64,
    pub storage: StorageTarget,
    /// Where each outward edge goes, one line each, logged at start (`warn` for the embedded default and for
    /// an ignored setting).
    pub edges: Vec<(bool, String)>,
    pub uploads: crate::publish::s3sync::UploadLimits,
    /// What the participant sees: stdout.txt's format, the heartbeat, results.json before the end.
    pub view: crate::view::ViewArgs,
}

/// How the local edges were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edges {
    /// `--local OUT`.
    Local,
    /// Nothing set at all: every edge into `./logcopy-local`.
    Embedded,
    /// `--local-evalai`, `--local-storage`, or remote.
    PerEdge,
}

impl Edges {
    fn flag(self, per_edge: &'static str) -> &'static str {
        match self {
            Edges::Local => "--local",
            Edges::Embedded => {
                "the embedded default: no EVALAI_API_SERVER, S3_BUCKET or DYNAMODB_SUBMISSIONS_TABLE is set; \
                 --local OUT chooses the folder"
            }
            Edges::PerEdge => per_edge,
        }
    }

    /// Each line, with whether it is a warning.
    fn describe(self, lines: Vec<String>) -> Vec<(bool, String)> {
        lines.into_iter().map(|l| (self == Edges::Embedded || l.ends_with(" ignored"), l)).collect()
    }
}

impl RunConfig {
    /// Where things are on the volume of this run.
    pub fn layout(&self) -> crate::volume::Layout {
        crate::volume::Layout {
            root: self.logs.clone(),
            results_pattern: self.results_pattern.clone(),
            merged: self.merged_path.clone(),
        }
    }
}

/// A setting that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    /// The flag and its environment variable, e.g. `--submission-id / SUBMISSION_ID`.
    pub setting: String,
    pub reason: String,
}

pub(crate) fn bad(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { setting: setting.to_string(), reason: reason.into() }
}

/// Parses `10`, `1.5`, `250ms`, `10s` or `2m` (shared with the supervisor).
pub use volume::duration::parse as parse_duration;

fn duration_at_least(s: &str, min: Duration) -> Result<Duration, String> {
    let d = parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (e.g. 10, 250ms, 10s, 2m)"))?;
    if d < min {
        return Err(format!("{s:?} is below the minimum of {min:?}"));
    }
    Ok(d)
}

/// A duration (clap value parser).
pub fn span(s: &str) -> Result<Duration, String> {
    duration_at_least(s, Duration::ZERO)
}

/// A period or a timeout: at least 100 ms (clap value parser).
pub(crate) fn period(s: &str) -> Result<Duration, String> {
    duration_at_least(s, Duration::from_millis(100))
}

/// An EvalAI id as given: decimal digits, or empty (a manifest's unset variable), which is no id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalAiId(Option<u64>);

/// An EvalAI id (clap value parser).
pub(crate) fn evalai_id(s: &str) -> Result<EvalAiId, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(EvalAiId(None));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not an EvalAI id (decimal digits)"));
    }
    s.parse().map(|n| EvalAiId(Some(n))).map_err(|_| format!("{s:?} is too large"))
}

/// An id that a run with a remote edge must be given; local runs label with `local_default`.
pub(crate) fn required(
    setting: &'static str,
    v: Option<EvalAiId>,
    local_default: Option<u64>,
) -> Result<u64, ConfigError> {
    v.and_then(|v| v.0).or(local_default).ok_or_else(|| bad(setting, "is required"))
}

/// A boolean: 1/0, true/false, yes/no, on/off (any case); empty is false, as an unset variable (clap value parser).
fn boolean(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" => Ok(true),
        "" | "0" | "false" | "no" | "off" | "n" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (1/0, true/false, yes/no, on/off)")),
    }
}

/// The EvalAI base URL: https, or http to a loopback host (or anywhere with `allow_insecure`). The URL named in an
/// error has its credentials removed.
fn check_evalai_url(base: &str, allow_insecure: bool) -> Result<(), ConfigError> {
    const SETTING: &str = "--evalai-api-server / EVALAI_API_SERVER";
    let shown = crate::publish::evalai::redact_url(base);
    let url = match reqwest::Url::parse(base) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https") && u.host().is_some() && !base.contains(char::is_whitespace) =>
        {
            u
        }
        _ => return Err(bad(SETTING, format!("{shown:?} is not an http(s) URL"))),
    };
    // The parser has normalised the host: IPv4 in dotted decimal, IPv6 in brackets, names in lower case.
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() == "http" && !loopback && !allow_insecure {
        return Err(bad(
            SETTING,
            format!(
                "{shown:?} is plain http to a host that is not loopback: the token would travel unencrypted and \
                 EvalAI's nginx answers it with a redirect; use https:// (or --allow-insecure-evalai / \
                 ALLOW_INSECURE_EVALAI for an in-cluster or staging server)"
            ),
        ));
    }
    Ok(())
}

/// A path under the volume: relative, with no `..`, so it can never leave the volume.
pub(crate) fn volume_path(setting: &'static str, s: &str) -> Result<PathBuf, ConfigError> {
    let p = Path::new(s);
    if s.is_empty() || p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad(setting, format!("{s:?} must be a relative path inside the volume, without `..`")));
    }
    Ok(p.to_path_buf())
}

/// The merged file must stay out of every worker's reach: written into a worker's folder (or over its results
/// file, or its supervisor's last good copy) it is read back as that worker's checkpoint and every merge feeds
/// the next.
fn merged_path(s: &str, results_pattern: &str, workers: u32) -> Result<PathBuf, ConfigError> {
    const SETTING: &str = "--merged-path / MERGED_PATH";
    let merged = volume_path(SETTING, s)?;
    // The folder of the results file is the worker's own when its path names the worker.
    let per_worker_folder = Path::new(results_pattern).parent().is_some_and(|p| p.to_string_lossy().contains("{i}"));
    for i in 1..=workers {
        let results = PathBuf::from(results_pattern.replace("{i}", &i.to_string()));
        let folder = results.parent().filter(|_| per_worker_folder);
        let why = if merged == results || merged == volume::layout::last_good_path(&results) {
            format!("is worker {i}'s results file {} (or its last good copy)", results.display())
        } else if results.starts_with(&merged) {
            format!("is a folder holding worker {i}'s results file {}", results.display())
        } else if let Some(folder) = folder.filter(|f| merged.starts_with(f)) {
            format!("is inside worker {i}'s folder {}", folder.display())
        } else {
            continue;
        };
        return Err(bad(SETTING, format!("{s:?} {why}: the merged file would be read back as the worker's results")));
    }
    Ok(merged)
}

/// Every configuration problem found, reported together (exit 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems instead of stopping at the first.
#[derive(Default)]
struct Collect(Vec<ConfigError>);

impl Collect {
    fn take<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }
}

impl RunArgs {
    /// Validates what depends on several flags into a [`RunConfig`]; every problem is reported, not the first.
    pub fn validate(self) -> Result<RunConfig, ConfigErrors> {
        let mut errors = Collect::default();
        let server = self.evalai_api_server.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let embedded = self.local.is_none()
            && self.local_evalai.is_none()
            && self.local_storage.is_none()
            && server.is_none()
            && self.storage.bucket().is_none()
            && self.storage.table().is_none();
        // Where each edge goes locally, if it does: `--local` (all), `--local-evalai`/`--local-storage` (one), or the
        // embedded default when nothing at all is set. Any other edge is remote and needs all its settings.
        let (evalai_out, storage_out, why) = match &self.local {
            Some(out) => (Some(out.clone()), Some(out.clone()), Edges::Local),
            None if embedded => {
                let out = PathBuf::from(DEFAULT_LOCAL_OUT);
                (Some(out.clone()), Some(out), Edges::Embedded)
            }
            None => (self.local_evalai.clone(), self.local_storage.clone(), Edges::PerEdge),
        };
        let mut edges = Vec::new();
        let evalai = match evalai_out {
            Some(out) => {
                let flag = why.flag("--local-evalai");
                let ignored = if server.is_some() { "; EVALAI_API_SERVER ignored" } else { "" };
                let file = out.join(crate::publish::local::REQUESTS_FILE);
                edges.push(format!("EvalAI: local file {} ({flag}){ignored}", file.display()));
                Some(EvalAiTarget::Local { out })
            }
            None => match server {
                None => errors.take(Err(bad(
                    SERVER,
                    "is required when S3 or DynamoDB is remote (or --local-evalai OUT / --local OUT for a local file)",
                ))),
                Some(base) => {
                    let base = base.trim_end_matches('/');
                    let url = errors.take(check_evalai_url(base, self.allow_insecure_evalai));
                    let token = errors.take(self.token());
                    edges.push(format!("EvalAI: {}", crate::publish::evalai::redact_url(base)));
                    url.zip(token).map(|((), token)| EvalAiTarget::Http { base: base.to_string(), token })
                }
            },
        };
        let storage = match storage_out {
            Some(out) => {
                let flag = why.flag("--local-storage");
                let ignored = |set: bool, name: &str| if set { format!("; {name} ignored") } else { String::new() };
                edges.push(format!(
                    "S3: local folder {} ({flag}){}",
                    out.join("s3").display(),
                    ignored(self.storage.bucket().is_some(), "S3_BUCKET")
                ));
                edges.push(format!(
                    "DynamoDB: local file {} ({flag}){}",
                    out.join("dynamodb.json").display(),
                    ignored(self.storage.table().is_some(), "DYNAMODB_SUBMISSIONS_TABLE")
                ));
                Some(StorageTarget::Local { out })
            }
            None => {
                let why = if server.is_some() { "with EVALAI_API_SERVER" } else { "when EvalAI is remote" };
                let target = self.storage.remote(&mut errors, why);
                if let Some(StorageTarget::Aws { bucket, table }) = &target {
                    edges.push(format!("S3: s3://{bucket}/"));
                    edges.push(format!("DynamoDB: table {table}"));
                }
                target
            }
        };
        // Only a run with nothing remote may go without the ids: they address EvalAI, S3 and DynamoDB.
        let local =
            matches!(evalai, Some(EvalAiTarget::Local { .. })) && matches!(storage, Some(StorageTarget::Local { .. }));
        // Locally the ids only label the requests; in the cluster they address EvalAI and must be given.
        let default_id = local.then_some(1);
        let pattern_ok = if self.results_pattern.contains("{i}") {
            errors.take(volume_path("--results-pattern / RESULTS_PATTERN", &self.results_pattern)).is_some()
        } else {
            errors
                .0
                .push(bad("--results-pattern / RESULTS_PATTERN", format!("{:?} has no {{i}}", self.results_pattern)));
            false
        };
        let merged = if pattern_ok {
            errors.take(merged_path(&self.merged_path, &self.results_pattern, self.routes.workers))
        } else {
            None
        };
        let team_id = match &self.team_id {
            Some(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ if local => Some("local".to_string()),
            _ => errors.take(Err(bad("--team-id / TEAM_ID", "is required"))),
        };
        let challenge_id = errors.take(required("--challenge-id / CHALLENGE_ID", self.challenge_id, default_id));
        let submission_id = errors.take(required("--submission-id / SUBMISSION_ID", self.submission_id, default_id));
        let track_id = errors.take(required("--track-id / TRACK_ID", self.track_id, default_id));
        let (
            Some(storage),
            Some(evalai),
            Some(merged_path),
            Some(team_id),
            Some(challenge_id),
            Some(submission_id),
            Some(track_id),
        ) = (storage, evalai, merged, team_id, challenge_id, submission_id, track_id)
        else {
            return Err(ConfigErrors(errors.0));
        };
        let routes = self.routes.plan();
        Ok(RunConfig {
            challenge_id,
            submission_id,
            track_id,
            team_id,
            evalai,
            logs_period: self.logs_period,
            version: self.leaderboard_version,
            workers: self.routes.workers,
            routes,
            logs: self.logs,
            merged_path,
            results_pattern: self.results_pattern,
            evalai_rpm: self.evalai_rpm,
            status_period: self.status_period,
            start_patch: !self.no_start_patch,
            final_status: self.final_status,
            flush_budget: self.flush_budget,
            final_timeout: self.final_timeout,
            debounce: self.debounce,
            request_timeout: self.request_timeout,
            storage_timeout: self.storage_timeout,
            log_format: self.log_format,
            once: self.once,
            max_results_bytes: self.max_results_bytes,
            storage,
            edges: Edges::describe(why, edges),
            uploads: self.uploads.limits(),
            view: self.view,
        })
    }

    /// The host token, from its file or its flag.
    fn token(&self) -> Result<Secret, ConfigError> {
        let token = match (&self.evalai_token, &self.evalai_token_file) {
            (_, Some(path)) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|e| bad("--evalai-token-file / EVALAI_TOKEN_FILE", format!("{}: {e}", path.display())))?,
            (Some(t), None) => t.trim().to_string(),
            (None, None) => String::new(),
        };
        let problem = if token.is_empty() {
            Some("is required")
        } else if token.contains(char::is_whitespace) {
            Some("holds whitespace inside the token")
        } else if token.chars().any(|c| c.is_control() || !c.is_ascii()) {
            // An HTTP header cannot carry it: every request would fail, and read as an EvalAI outage.
            Some("holds a control or non-ASCII character, which no HTTP header can carry")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(bad("--evalai-token / EVALAI_AUTH_TOKEN (or --evalai-token-file)", problem));
        }
        Ok(Secret::new(token))
    }
}

/// A clap error in this program's one style, `--flag / ENV: reason` (the environment variable looked up in `cmd`),
/// for a value that clap's parsers refused; `None` for usage errors (unknown flag, missing value), which keep
/// clap's own message with the usage line.
pub fn describe_clap_error(e: &clap::Error, cmd: &clap::Command) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let ContextValue::String(arg) = e.get(ContextKind::InvalidArg)? else { return None };
    let long = arg.split_whitespace().next()?.trim_start_matches("--");
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let find = |c: &clap::Command| c.get_arguments().find(|a| a.get_long() == Some(long)).cloned();
    let found = find(cmd).or_else(|| cmd.get_subcommands().find_map(find));
    let env = found.as_ref().and_then(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned());
    let setting = match env {
        Some(env) => format!("--{long} / {env}"),
        None => format!("--{long}"),
    };
    let reason =
        std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_else(|| format!("{value:?} is not valid"));
    Some(format!("{setting}: {reason}"))
}

/// `logcopy monitor`'s own settings (its other settings are `logcopy run`'s).
#[derive(Debug, Clone, Args)]
pub struct MonitorArgs {
    /// Period of the monitor's look at the workers' shard status objects in S3: one conditional GET per worker
    /// (a 304 when nothing moved), the results object only when its ETag changed.
    #[arg(long, env = "MONITOR_PERIOD", default_value = "5", value_parser = period, value_name = "DURATION")]
    pub monitor_period: Duration,
    /// A worker whose status object has not changed for this long (its uploader refreshes it every 60 s even when
    /// idle) and that has no end marker is lost: the run stops waiting for it and lists its routes as not run.
    /// Above the supervisor's hang detector (800 s) and a pod restart.
    #[arg(long, env = "WORKER_SILENCE", default_value = "20m", value_parser = period, value_name = "DURATION")]
    pub worker_silence: Duration,
    /// The worker Job's backoffLimitPerIndex (make-job sets it): a silent worker whose newest status object says
    /// its pod had retries left (fewer failures than this) has a replacement due, which may wait for a per-index
    /// backoff and a free slot, and is lost only after 3 x --worker-silence. Unset: every silent worker is taken
    /// to be on its last try.
    #[arg(long, env = "BACKOFF_LIMIT_PER_INDEX", value_name = "N")]
    pub backoff_limit_per_index: Option<u32>,
    /// The monitor Job's UID (make-job gives its `batch.kubernetes.io/controller-uid` label): written into
    /// containers-status/monitor.done at the end; a monitor that finds the marker naming its own Job (a restart
    /// after the end) exits at once, one naming another Job (a resumed submission) runs.
    #[arg(long, env = "MONITOR_JOB_UID", value_name = "UID")]
    pub monitor_job_uid: Option<String>,
}

/// Caps on what the S3 sync uploads from a volume the participant's code writes into (docs/security.md).
#[derive(Debug, Clone, Args)]
pub struct UploadArgs {
    /// Files larger than this many bytes are neither hashed nor uploaded (one warning names each). CARLA's
    /// recordings of a route are tens to a few hundred MB.
    #[arg(long, env = "MAX_UPLOAD_BYTES", value_name = "BYTES",
          default_value_t = crate::publish::s3sync::DEFAULT_MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: u64,
    /// Files and folders of one worker's folder (agent/agent<i>) that the sync lists and uploads, its results
    /// files aside; past it, one warning names the folder.
    #[arg(long, env = "MAX_WORKER_FILES", value_name = "N",
          default_value_t = crate::publish::s3sync::DEFAULT_MAX_WORKER_FILES)]
    pub max_worker_files: u64,
    /// Bytes uploaded from one worker's folder, its results files aside, smallest files first; past it, one warning
    /// names the folder.
    #[arg(long, env = "MAX_WORKER_UPLOAD_BYTES", value_name = "BYTES",
          default_value_t = crate::publish::s3sync::DEFAULT_MAX_WORKER_UPLOAD_BYTES)]
    pub max_worker_upload_bytes: u64,
}

impl UploadArgs {
    pub fn limits(&self) -> crate::publish::s3sync::UploadLimits {
        crate::publish::s3sync::UploadLimits {
            max_file_bytes: self.max_upload_bytes,
            max_worker_files: self.max_worker_files,
            max_worker_bytes: self.max_worker_upload_bytes,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    /// `logcopy run`'s flags parsed and validated (also for the daemon's tests): the first problem, as the binary
    /// words it.
    pub(crate) fn parse(args: &[&str]) -> Result<RunConfig, ConfigError> {
        parse_all(args).map_err(|mut e| e.0.remove(0))
    }

    /// Every problem: clap's (one: clap stops at the first refused value) or the cross-flag check's.
    fn parse_all(args: &[&str]) -> Result<RunConfig, ConfigErrors> {
        use clap::CommandFactory;
        match T::try_parse_from(std::iter::once("t").chain(args.iter().copied())) {
            Ok(t) => t.run.validate(),
            Err(e) => {
                let text = describe_clap_error(&e, &T::command()).unwrap_or_else(|| panic!("a usage error: {e}"));
                let (setting, reason) = text.split_once(": ").unwrap();
                Err(ConfigErrors(vec![bad(setting, reason)]))
            }
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("eyJhbGciOi.secret");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let cfg = parse(&[
            "--evalai-api-server",
            "https://eval.ai/",
            "--evalai-token",
            "tok3n",
            "--challenge-id",
            "1",
            "--submission-id",
            "2",
            "--track-id",
            "3",
            "--team-id",
            "9",
            "--local-storage",
            "/tmp/s",
        ])
        .unwrap();
        assert!(!format!("{cfg:?}").contains("tok3n"));
        assert_eq!(cfg.evalai, EvalAiTarget::Http { base: "https://eval.ai".into(), token: Secret::new("tok3n") });
    }

    #[test]
    fn errors_name_the_setting() {
        let base =
            ["--evalai-api-server", "https://eval.ai", "--evalai-token", "t", "--team-id", "9", "--local-storage=/s"];
        let e = parse(&base).unwrap_err();
        assert_eq!(e.setting, "--challenge-id / CHALLENGE_ID");
        let mut args = base.to_vec();
        args.extend(["--challenge-id", "12a", "--submission-id", "2", "--track-id", "3"]);
        assert!(parse(&args).unwrap_err().to_string().starts_with("--challenge-id / CHALLENGE_ID: \"12a\""));
        let e = parse(&["--local", "/tmp/x", "--logs-period", "soon"]).unwrap_err();
        assert_eq!(e.setting, "--logs-period / LOGS_PERIOD");
        let e = parse(&["--local", "/tmp/x", "--merged-path", "../escape.json"]).unwrap_err();
        assert_eq!(e.setting, "--merged-path / MERGED_PATH");
        let e = parse(&["--local", "/tmp/x", "--evalai-rpm", "1"]).unwrap_err();
        assert_eq!(e.setting, "--evalai-rpm / EVALAI_RPM");
        let e = parse(&["--evalai-api-server", "eval.ai", "--evalai-token", "t"]).unwrap_err();
        assert_eq!(e.setting, "--evalai-api-server / EVALAI_API_SERVER");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        // A cluster configuration (a server is set) missing its ids, its token and with a bad pattern.
        let e =
            parse_all(&["--evalai-api-server", "https://eval.ai", "--results-pattern", "agent/x.json"]).unwrap_err();
        let settings: Vec<&str> = e.0.iter().map(|e| e.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                "--evalai-token / EVALAI_AUTH_TOKEN (or --evalai-token-file)",
                "--s3-bucket / S3_BUCKET",
                "--dynamodb-table / DYNAMODB_SUBMISSIONS_TABLE",
                "--results-pattern / RESULTS_PATTERN",
                "--team-id / TEAM_ID",
                "--challenge-id / CHALLENGE_ID",
                "--submission-id / SUBMISSION_ID",
                "--track-id / TRACK_ID",
            ]
        );
        assert!(e.to_string().contains("--team-id / TEAM_ID: is required; --challenge-id / CHALLENGE_ID: is required"));
    }

    #[test]
    fn typed_values_name_the_flag_the_variable_and_the_reason() {
        let cases = [
            (vec!["--challenge-id", "12a"], "--challenge-id / CHALLENGE_ID", "\"12a\" is not an EvalAI id"),
            (vec!["--evalai-rpm", "61"], "--evalai-rpm / EVALAI_RPM", "61 is not in 2..=60"),
            (vec!["--workers", "0"], "--workers / SUBMISSION_WORKERS", "0 is not in 1..=1024"),
            (vec!["--status-period", "50ms"], "--status-period / STATUS_PERIOD", "below the minimum"),
            (vec!["--final-status=maybe"], "--final-status / FINAL_STATUS", "is not a boolean"),
            (vec!["--leaderboard-version", "3.0"], "--leaderboard-version / LEADERBOARD_VERSION", "3.0"),
        ];
        for (args, setting, reason) in cases {
            let mut all = vec!["--local", "/tmp/x"];
            all.extend(args);
            let e = parse(&all).unwrap_err();
            assert_eq!(e.setting, setting, "{all:?}");
            assert!(e.reason.contains(reason), "{all:?}: {e}");
        }
        // Booleans: 1/0, true/false, yes/no, on/off; a bare switch is true; empty (an unset variable) is false.
        for (v, want) in [("1", true), ("YES", true), ("on", true), ("0", false), ("false", false), ("", false)] {
            let arg = format!("--final-status={v}");
            assert_eq!(parse(&["--local", "/tmp/x", &arg]).unwrap().final_status, want, "{v:?}");
        }
        assert!(parse(&["--local", "/tmp/x", "--final-status"]).unwrap().final_status);
        // An empty id is no id: fine locally, required in the cluster.
        assert_eq!(parse(&["--local", "/tmp/x", "--challenge-id", ""]).unwrap().challenge_id, 1);
    }

    #[test]
    fn a_token_no_header_can_carry_is_refused_at_start() {
        for token in ["tok\u{7}en", "tok\u{1b}[0m", "tök"] {
            let args = [
                "--evalai-api-server",
                "https://eval.ai",
                "--evalai-token",
                token,
                "--team-id",
                "9",
                "--challenge-id",
                "1",
            ];
            let e = parse_all(&args).unwrap_err();
            let e = e.0.iter().find(|e| e.setting.starts_with("--evalai-token")).expect("the token is refused");
            assert!(e.reason.contains("control or non-ASCII"), "{token:?}: {e}");
            assert!(!e.to_string().contains(token), "the token is never shown");
        }
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let args = |server: &'static str| {
            let mut a =
                vec!["--evalai-api-server", server, "--evalai-token", "t", "--team-id", "9", "--local-storage=/s"];
            a.extend(["--challenge-id", "1", "--submission-id", "2", "--track-id", "3"]);
            a
        };
        for ok in
            ["https://eval.ai", "http://127.0.0.1:8000", "http://127.3.4.5", "http://localhost:1/x", "http://[::1]:9"]
        {
            assert!(parse(&args(ok)).is_ok(), "{ok} is accepted");
        }
        let e = parse(&args("http://user:s3cr3t@eval.ai")).unwrap_err();
        assert_eq!(e.setting, "--evalai-api-server / EVALAI_API_SERVER");
        assert!(e.reason.contains("plain http") && e.reason.contains("http://eval.ai"), "{e}");
        assert!(!e.to_string().contains("s3cr3t"), "credentials in the URL are never shown: {e}");
        for bad in ["http://10.0.0.7:80", "http://127.0.0.1.nip.io", "http://localhost.evil.com"] {
            assert!(parse(&args(bad)).is_err(), "{bad} is refused");
        }
        let mut allowed = args("http://evalai.evalai.svc:8000");
        allowed.push("--allow-insecure-evalai");
        assert!(parse(&allowed).is_ok());
        assert!(parse(&args("ftp://eval.ai")).is_err());
    }

    #[test]
    fn the_merged_file_stays_out_of_the_workers_folders() {
        for inside in ["agent/agent1/merged.json", "agent/agent3/agent_results.json", "agent/agent4/x/y.json", "agent"]
        {
            let e = parse(&["--local", "/tmp/x", "--merged-path", inside]).unwrap_err();
            assert_eq!(e.setting, "--merged-path / MERGED_PATH", "{inside}");
        }
        let e = parse(&["--local", "/tmp/x", "--merged-path", "agent/agent2/./agent_results.json"]).unwrap_err();
        assert!(e.reason.contains("worker 2's results file"), "{e}");
        // Generation 2: the workers share agent/; only their files and the supervisor's copies are theirs.
        let gen2 = ["--local", "/tmp/x", "--results-pattern", "agent/partial_agent_results{i}.json"];
        for theirs in ["agent/partial_agent_results2.json", "agent/.partial_agent_results1.json.last-good"] {
            let e = parse(&[&gen2[..], &["--merged-path", theirs]].concat()).unwrap_err();
            assert_eq!(e.setting, "--merged-path / MERGED_PATH", "{theirs}");
        }
        let ok = parse(&[&gen2[..], &["--merged-path", "agent/agent_results.json"]].concat()).unwrap();
        assert_eq!(ok.merged_path, Path::new("agent/agent_results.json"));
        // Worker 5 does not exist with 4 workers; the default is fine.
        assert!(parse(&["--local", "/tmp/x", "--merged-path", "agent/agent5/merged.json"]).is_ok());
        assert_eq!(parse(&["--local", "/tmp/x"]).unwrap().merged_path, Path::new("agent/agent_results.json"));
    }

    #[test]
    fn route_count_and_repetitions() {
        let cfg = parse(&["--local", "/tmp/x"]).unwrap();
        assert_eq!(cfg.routes, None);
        let cfg = parse(&["--local", "/tmp/x", "--route-count", "20", "--repetitions", "3", "--workers", "2"]).unwrap();
        assert_eq!(cfg.routes, Some(RoutePlan { routes: 20, repetitions: 3, workers: 2 }));
        for (args, setting) in [
            (["--route-count", "0", "--repetitions", "1"], "--route-count / ROUTE_COUNT"),
            (["--route-count", "x", "--repetitions", "1"], "--route-count / ROUTE_COUNT"),
            (["--route-count", "20", "--repetitions", "0"], "--repetitions / REPETITIONS"),
        ] {
            let e = parse(&[&["--local", "/tmp/x"][..], &args].concat()).unwrap_err();
            assert_eq!(e.setting, setting, "{args:?}");
        }
    }

    /// docs/configuration.md's table "Where each edge goes", row by row: the server, the bucket, the table and the
    /// local flags decide where EvalAI and storage go, or which settings are missing (exit 2, all named at once).
    #[test]
    fn where_each_edge_goes() {
        use EvalAiTarget as E;
        use StorageTarget as S;
        let ids = ["--challenge-id", "1", "--submission-id", "2", "--track-id", "3", "--team-id", "9"];
        let (server, bucket, table) =
            ("--evalai-api-server=https://eval.ai", "--s3-bucket=bkt", "--dynamodb-table=tbl");
        let http = || E::Http { base: "https://eval.ai".into(), token: Secret::new("t") };
        let aws = || S::Aws { bucket: "bkt".into(), table: "tbl".into() };
        let e_local = |o: &str| E::Local { out: o.into() };
        let s_local = |o: &str| S::Local { out: o.into() };
        type Row<'a> = (Vec<&'a str>, Result<(EvalAiTarget, StorageTarget), Vec<&'a str>>);
        let rows: Vec<Row> = vec![
            // Nothing set: the embedded default, every edge into ./logcopy-local.
            (vec![], Ok((e_local(DEFAULT_LOCAL_OUT), s_local(DEFAULT_LOCAL_OUT)))),
            (vec![server], Err(vec![BUCKET, TABLE])),
            (vec![server, bucket], Err(vec![TABLE])),
            (vec![server, table], Err(vec![BUCKET])),
            (vec![server, bucket, table], Ok((http(), aws()))),
            (vec![bucket, table], Err(vec![SERVER])),
            (vec![bucket], Err(vec![SERVER, TABLE])),
            (vec![table], Err(vec![SERVER, BUCKET])),
            (vec!["--local=/o"], Ok((e_local("/o"), s_local("/o")))),
            (vec!["--local=/o", server, bucket, table], Ok((e_local("/o"), s_local("/o")))),
            (vec!["--local=/o", server], Ok((e_local("/o"), s_local("/o")))),
            (vec!["--local-evalai=/e", bucket, table], Ok((e_local("/e"), aws()))),
            (vec!["--local-evalai=/e", server, bucket, table], Ok((e_local("/e"), aws()))),
            (vec!["--local-evalai=/e"], Err(vec![BUCKET, TABLE])),
            (vec!["--local-evalai=/e", bucket], Err(vec![TABLE])),
            (vec!["--local-storage=/s", server], Ok((http(), s_local("/s")))),
            (vec!["--local-storage=/s", server, bucket, table], Ok((http(), s_local("/s")))),
            (vec!["--local-storage=/s"], Err(vec![SERVER])),
            (vec!["--local-evalai=/e", "--local-storage=/s", server, bucket], Ok((e_local("/e"), s_local("/s")))),
        ];
        for (flags, want) in rows {
            let args: Vec<&str> = [&ids[..], &["--evalai-token", "t"], &flags].concat();
            match (parse_all(&args), want) {
                (Ok(cfg), Ok((evalai, storage))) => {
                    assert_eq!((&cfg.evalai, &cfg.storage), (&evalai, &storage), "{flags:?}");
                    assert_eq!(cfg.edges.len(), 3, "one line per edge: {flags:?}: {:?}", cfg.edges);
                }
                (Err(e), Err(settings)) => {
                    let got: Vec<&str> = e.0.iter().map(|e| e.setting.as_str()).collect();
                    assert_eq!(got, settings, "{flags:?}: {e}");
                    assert!(e.0.iter().all(|e| e.reason.contains("is required")), "{e}");
                }
                (got, want) => panic!("{flags:?}: got {got:?}, want {want:?}"),
            }
        }
        // `--local` and a per-edge flag together is a usage error.
        for edge in ["--local-evalai=/e", "--local-storage=/s"] {
            assert!(T::try_parse_from(["t", "--local=/o", edge]).is_err(), "{edge}");
        }
    }

    #[test]
    fn each_edge_is_named_at_start_with_what_it_ignores() {
        let all = ["--evalai-api-server=https://eval.ai", "--s3-bucket=bkt", "--dynamodb-table=tbl"];
        let cfg = parse(&[&["--local", "/o"], &all[..]].concat()).unwrap();
        let lines: Vec<&str> = cfg.edges.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            lines,
            [
                "EvalAI: local file /o/evalai-requests.jsonl (--local); EVALAI_API_SERVER ignored",
                "S3: local folder /o/s3 (--local); S3_BUCKET ignored",
                "DynamoDB: local file /o/dynamodb.json (--local); DYNAMODB_SUBMISSIONS_TABLE ignored",
            ]
        );
        assert!(cfg.edges.iter().all(|(warn, _)| *warn), "an ignored setting is a warning");
        let cfg = parse(&["--local", "/o"]).unwrap();
        assert!(cfg.edges.iter().all(|(warn, l)| !warn && !l.contains("ignored")), "{:?}", cfg.edges);
        // The embedded default says so, as a warning, on every edge.
        let cfg = parse(&[]).unwrap();
        assert!(cfg.edges.iter().all(|(warn, l)| *warn && l.contains("embedded default")), "{:?}", cfg.edges);
        let ids = ["--challenge-id", "1", "--submission-id", "2", "--track-id", "3", "--team-id", "9"];
        let cfg = parse(&[&ids[..], &["--evalai-token", "t"], &all[..]].concat()).unwrap();
        let lines: Vec<&str> = cfg.edges.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines, ["EvalAI: https://eval.ai", "S3: s3://bkt/", "DynamoDB: table tbl"]);
    }

    #[test]
    fn restore_from_nowhere_is_refused() {
        #[derive(Parser)]
        struct R {
            #[command(flatten)]
            restore: RestoreArgs,
        }
        let restore = |args: &[&str]| R::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap();
        let e = restore(&["--submission-id", "7", "--resume", "1"]).restore.validate().unwrap_err();
        assert_eq!(e.setting, BUCKET);
        assert!(e.reason.contains("RESUME"), "{e}");
        let ok = restore(&["--submission-id", "7", "--resume", "1", "--s3-bucket", "bkt"]).restore.validate().unwrap();
        assert!(matches!(ok.storage, StorageTarget::Aws { .. }));
        let ok = restore(&["--submission-id", "7", "--resume", "1", "--local", "/o"]).restore.validate().unwrap();
        assert_eq!(ok.storage, StorageTarget::Local { out: "/o".into() });
        // A fresh volume touches no storage.
        assert!(restore(&["--submission-id", "7"]).restore.validate().is_ok());
    }

    #[test]
    fn local_mode_needs_no_ids() {
        let cfg = parse(&["--local", "/tmp/out"]).unwrap();
        assert_eq!(cfg.evalai, EvalAiTarget::Local { out: "/tmp/out".into() });
        assert_eq!((cfg.submission_id, cfg.team_id.as_str()), (1, "local"));
        assert_eq!(cfg.status_period, Duration::from_secs(20));
        assert_eq!(cfg.debounce, Duration::from_millis(250));
    }
}

//! The supervisor's command line: flags with upstream's environment variable names as fallbacks, and every deadline
//! a flag, so that tests can make them short.

use crate::log::{Format, Level};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
use volume::duration::clap_parser;
use volume::layout::{self, mount};
use volume::markers::WorkerId;

#[derive(Debug, Parser)]
#[command(
    name = "supervisor",
    version = concat!(env!("CARGO_PKG_VERSION"), " (rev ", env!("LBRT_REVISION"), ")"),
    about = "Entry program of the CARLA Leaderboard simulator and agent containers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CarlaUE4 (default `./CarlaUE4.sh -vulkan -carla-rpc-port=$CARLA_PORT -RenderOffScreen -nosound -ini:...`).
    #[command(after_help = simulator_help())]
    Simulator(SimulatorArgs),
    /// Run the leaderboard evaluator with run_leaderboard.sh's arguments and environment.
    #[command(after_help = agent_help())]
    Agent(Box<AgentArgs>),
    /// Print the GPU index of a UUID (as get_gpu_device.sh), or list the GPUs.
    Gpu(GpuArgs),
    /// Print the exit codes and their Indexed Job pod failure policy actions as JSON (for check-manifest).
    #[command(hide = true)]
    ExitCodes,
}

/// What `supervisor simulator --help` adds after the flags: the paths it uses by default.
fn simulator_help() -> String {
    format!(
        "\
Paths:
  CARLA's output (stdout and stderr, appended) goes to --log-file, by default
  {} (upstream mounts the volume's {}/ folder at
  {}). CARLA itself reads DISPLAY and its X socket in /tmp/.X11-unix.

{}",
        mount::simulator_log(0).with_file_name("simulator-<worker>.log").display(),
        layout::SIMULATOR_DIR,
        mount::SIMULATOR,
        crate::exit::help()
    )
}

/// What `supervisor agent --help` adds after the flags: how the evaluator is called, and the paths.
fn agent_help() -> String {
    format!(
        "\
The evaluator gets run_leaderboard.sh's arguments from the evaluator flags above: its port, traffic-manager-port
(CARLA_PORT + 10), agent, agent-config, track, routes, routes-subset, repetitions, resume=1 (after a crash, or
with RESUME, or when a results file with data exists), checkpoint, record, debug-checkpoint and debug arguments;
and, exported with PYTHONPATH as upstream, CARLA_ROOT, SCENARIO_RUNNER_ROOT and LEADERBOARD_ROOT. An
empty variable counts as unset (upstream's ${{VAR:-default}}). Its output (appended) goes to --log-file, by default
{log} beside the checkpoint ({default}). NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES are the container
runtime's, passed on.

{exit}",
        log = layout::EVALUATOR_LOG,
        default = std::path::Path::new(mount::AGENT).join(layout::EVALUATOR_LOG).display(),
        exit = crate::exit::help()
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartMode {
    /// Restart the child inside the running container (default).
    InPlace,
    /// Upstream's behaviour: crash marker, exit 1, and let Kubernetes restart the container.
    Container,
}

/// The shape of the Job the supervisor runs in: what an end for good exits with ([`crate::exit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Topology {
    /// Generation 1: one pod of N pairs, restartPolicy OnFailure: every handled end exits 0.
    Pod,
    /// One Indexed Job pod per worker, restartPolicy Never: an end for good exits 41 (attempt budget spent) or 42
    /// (participant fault), which the Job's podFailurePolicy turns into FailIndex.
    Indexed,
}

/// The flags of both roles.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Worker number (generation 2). Default: JOB_COMPLETION_INDEX + 1 (set by Kubernetes in an Indexed Job), else
    /// NVIDIA_VISIBLE_DEVICES + 1 (generation 1).
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<u32>,
    /// The Job's shape: what an end for good exits with (see the exit codes below).
    #[arg(long, env = "TOPOLOGY", value_enum, default_value_t = Topology::Pod)]
    pub topology: Topology,
    /// The shared marker folder (upstream mounts containers-status/ there).
    #[arg(long, env = "STATUS_DIR", default_value = mount::STATUS)]
    pub status_dir: PathBuf,
    /// The child's log file on the volume (appended to, never truncated).
    #[arg(long, env = "LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Longest wait for a marker of the peer (its start, its crash marker after ours, its done marker). Seconds
    /// (`600`, `1.5`) or with a unit (`250ms`, `10s`, `2m`).
    #[arg(long, env = "PEER_WAIT", default_value = "600", value_name = "DURATION", value_parser = clap_parser)]
    pub peer_wait: Duration,
    /// Time between SIGTERM and SIGKILL when stopping the child's process group. Seconds (`10`, `1.5`) or with a
    /// unit (`250ms`, `10s`, `2m`).
    #[arg(long, env = "GRACE", default_value = "10", value_name = "DURATION", value_parser = clap_parser)]
    pub grace: Duration,
    /// Attempts this side may crash before it ends for good (a `.failed` marker, exit 0).
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// What a crash does.
    #[arg(long, env = "RESTART", value_enum, default_value_t = RestartMode::InPlace)]
    pub restart: RestartMode,
    /// Marker poll period, the fallback for lost file events. Seconds (`1`, `0.5`) or with a unit (`200ms`,
    /// `1s`).
    #[arg(long, env = "MARKER_POLL", default_value = "1", value_name = "DURATION", value_parser = clap_parser)]
    pub marker_poll: Duration,
    /// The shape of the supervisor's own lines on stdout and stderr (the child's log file always gets text).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = Format::Text)]
    pub log_format: Format,
    /// The least severe of the supervisor's lines that is written.
    #[arg(long, env = "LOG_LEVEL", value_enum, default_value_t = Level::Info)]
    pub log_level: Level,
}

impl Common {
    /// WORKER_ID, else JOB_COMPLETION_INDEX + 1, else NVIDIA_VISIBLE_DEVICES + 1.
    pub fn worker(&self) -> Result<WorkerId, String> {
        let var = |k: &str| std::env::var(k).ok();
        worker_from(self.worker_id, var("JOB_COMPLETION_INDEX"), var("NVIDIA_VISIBLE_DEVICES"))
    }
}

/// [`Common::worker`] from its three sources.
pub fn worker_from(id: Option<u32>, job_index: Option<String>, nvidia: Option<String>) -> Result<WorkerId, String> {
    if let Some(id) = id {
        return Ok(WorkerId(id));
    }
    if let Some(v) = job_index {
        return v.trim().parse::<u32>().ok().and_then(|i| i.checked_add(1)).map(WorkerId).ok_or_else(|| {
            format!(
                "--worker-id / WORKER_ID is not set and JOB_COMPLETION_INDEX ({v:?}) is not a completion index \
                 (0, 1, ...)"
            )
        });
    }
    match nvidia {
        Some(v) => v.trim().parse::<u32>().ok().and_then(|d| d.checked_add(1)).map(WorkerId).ok_or_else(|| {
            format!("--worker-id / WORKER_ID is not set and NVIDIA_VISIBLE_DEVICES ({v:?}) is not a GPU index")
        }),
        None => Err("--worker-id / WORKER_ID is required (or JOB_COMPLETION_INDEX of an Indexed Job, or \
                     NVIDIA_VISIBLE_DEVICES, generation 1)"
            .into()),
    }
}

impl Common {}

#[derive(Debug, Clone, Args)]
pub struct SimulatorArgs {
    #[command(flatten)]
    pub common: Common,
    /// Longest wait for CARLA's RPC port to accept connections. Seconds (`300`, `1.5`) or with a unit (`250ms`,
    /// `10s`, `5m`).
    #[arg(long, env = "READY_TIMEOUT", default_value = "300", value_name = "DURATION", value_parser = clap_parser)]
    pub ready_timeout: Duration,
    /// CARLA's RPC port.
    #[arg(long, env = "CARLA_PORT", default_value_t = 2000)]
    pub port: u16,
    /// The GPU: an index, a UUID (looked up with nvidia-smi), or `none` (local runs: no -ini GraphicsAdapter).
    /// Default: NVIDIA_VISIBLE_DEVICES.
    #[arg(long, env = "GPU")]
    pub gpu: Option<String>,
    /// nvidia-smi, for UUID lookups.
    #[arg(long, env = "NVIDIA_SMI", default_value = "nvidia-smi")]
    pub nvidia_smi: PathBuf,
    /// The command; CARLA's arguments are appended. Default: ./CarlaUE4.sh
    #[arg(last = true)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub common: Common,
    /// The evaluator's checkpoint (its results file); `{worker}` in it becomes the worker number (an Indexed Job's
    /// pods share one template: /tmp/agent/agent{worker}/agent_results.json).
    #[arg(long, env = "CHECKPOINT_ENDPOINT", default_value = mount::CHECKPOINT)]
    pub checkpoint: PathBuf,
    /// The evaluator counts as hung after printing nothing for this long (upstream MAX_IDLE). Seconds (`800`,
    /// `1.5`) or with a unit (`250ms`, `10s`, `15m`).
    #[arg(long, env = "MAX_IDLE", default_value = "800", value_name = "DURATION", value_parser = clap_parser)]
    pub idle_timeout: Duration,
    /// Run the evaluator and everything it starts as this numeric user (and group; default the same number), with
    /// no supplementary groups, while the supervisor stays root. With `logcopy restore --private-status` the
    /// participant's code can then no longer write the status folder. Off by default (as upstream).
    #[arg(long, env = "RUN_AS", value_name = "UID[:GID]")]
    pub run_as: Option<crate::child::RunAs>,
    #[command(flatten, next_help_heading = "Evaluator (run_leaderboard.sh's variables)")]
    pub evaluator: EvaluatorEnv,
    /// Move past a route after it crashed the simulator this many times (Leaderboard 2.0 repeats a route after
    /// every simulation crash, so one poison route would spend the whole attempt budget). The route keeps the
    /// evaluator's "Failed - Simulation crashed" record (zero scores if it recorded nothing). Off by default.
    #[arg(long, env = "ROUTE_RETRIES", value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub route_retries: Option<u32>,
    /// The command that receives the evaluator's arguments. Default: bash sourcing ~/.bashrc and
    /// ~/agent_sources.sh as upstream, then `python3 -u $LEADERBOARD_ROOT/leaderboard/leaderboard_evaluator.py`.
    #[arg(last = true)]
    pub command: Vec<OsString>,
}

/// run_leaderboard.sh's variables, which become the evaluator's arguments and environment. Each is a flag too; an
/// empty variable counts as unset (upstream's `${VAR:-default}`), so the defaults live here, not in clap.
#[derive(Debug, Clone, Default, Args)]
pub struct EvaluatorEnv {
    /// CARLA's RPC port: --port (and --traffic-manager-port, 10 above it). Default 2000.
    #[arg(long = "carla-port", env = "CARLA_PORT", value_name = "PORT")]
    pub carla_port: Option<String>,
    /// The participant's agent module: --agent.
    #[arg(long = "team-agent", env = "TEAM_AGENT", value_name = "PATH")]
    pub team_agent: Option<String>,
    /// The agent's configuration: --agent-config.
    #[arg(long = "team-config", env = "TEAM_CONFIG", value_name = "PATH")]
    pub team_config: Option<String>,
    /// The track: --track. Default SENSORS.
    #[arg(long = "track-codename", env = "CHALLENGE_TRACK_CODENAME", value_name = "TRACK")]
    pub track: Option<String>,
    /// The routes file: --routes. Default /workspace/leaderboard/data/routes_testing.xml (routes_qualifier.xml on a
    /// QUALIFIER track).
    #[arg(long, env = "ROUTES", value_name = "FILE")]
    pub routes: Option<String>,
    /// This worker's routes, e.g. 0-4: --routes-subset. Unset (an Indexed Job's pods share one template): upstream's
    /// split of --route-count over --workers for this worker.
    #[arg(long = "routes-subset", env = "ROUTES_SUBSET", value_name = "RANGE")]
    pub routes_subset: Option<String>,
    /// The routes in all (ids 0..N), from which this worker's subset is computed when ROUTES_SUBSET is unset.
    #[arg(long = "route-count", env = "ROUTE_COUNT", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub route_count: Option<u32>,
    /// The submission's workers (shards), for the split of --route-count.
    #[arg(long = "workers", env = "SUBMISSION_WORKERS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    /// Runs of every route: --repetitions. Default 1.
    #[arg(long, env = "REPETITIONS", value_name = "N")]
    pub repetitions: Option<String>,
    /// Resume the evaluation (any non-empty value, as upstream): --resume=1 from the first attempt.
    #[arg(long, env = "RESUME", value_name = "ANY")]
    pub resume: Option<String>,
    /// CARLA's recorder folder: --record. Default /home/carla/recorder.
    #[arg(long = "record-path", env = "RECORD_PATH", value_name = "DIR")]
    pub record_path: Option<String>,
    /// The evaluator's --debug-checkpoint. Default /workspace/leaderboard/live_results.txt.
    #[arg(long = "debug-checkpoint", env = "DEBUG_CHECKPOINT_ENDPOINT", value_name = "FILE")]
    pub debug_checkpoint: Option<String>,
    /// The evaluator's --debug. Default 0.
    #[arg(long = "debug-challenge", env = "DEBUG_CHALLENGE", value_name = "LEVEL")]
    pub debug_challenge: Option<String>,
    /// Exported to the evaluator, with PYTHONPATH. Default /workspace/CARLA.
    #[arg(long = "carla-root", env = "CARLA_ROOT", value_name = "DIR")]
    pub carla_root: Option<String>,
    /// Exported to the evaluator, with PYTHONPATH. Default /workspace/scenario_runner.
    #[arg(long = "scenario-runner-root", env = "SCENARIO_RUNNER_ROOT", value_name = "DIR")]
    pub scenario_runner_root: Option<String>,
    /// Exported to the evaluator, with PYTHONPATH; the evaluator is LEADERBOARD_ROOT/leaderboard/
    /// leaderboard_evaluator.py. Default /workspace/leaderboard.
    #[arg(long = "leaderboard-root", env = "LEADERBOARD_ROOT", value_name = "DIR")]
    pub leaderboard_root: Option<String>,
}

/// `path` with every `{worker}` replaced by the worker number.
pub fn with_worker(path: &std::path::Path, worker: WorkerId) -> PathBuf {
    match path.to_str() {
        Some(p) if p.contains("{worker}") => PathBuf::from(p.replace("{worker}", &worker.0.to_string())),
        _ => path.to_path_buf(),
    }
}

/// A value, or its default when unset or empty.
fn or<'a>(v: &'a Option<String>, default: &'a str) -> &'a str {
    v.as_deref().filter(|v| !v.is_empty()).unwrap_or(default)
}

impl EvaluatorEnv {
    pub fn carla_port(&self) -> u32 {
        or(&self.carla_port, "2000").parse().unwrap_or(2000)
    }
    pub fn team_agent(&self) -> &str {
        or(&self.team_agent, "")
    }
    pub fn team_config(&self) -> &str {
        or(&self.team_config, "")
    }
    pub fn track(&self) -> &str {
        or(&self.track, "SENSORS")
    }
    pub fn routes(&self) -> &str {
        let default = if self.track().contains("QUALIFIER") {
            "/workspace/leaderboard/data/routes_qualifier.xml"
        } else {
            "/workspace/leaderboard/data/routes_testing.xml"
        };
        or(&self.routes, default)
    }
    pub fn routes_subset(&self) -> &str {
        or(&self.routes_subset, "")
    }
    pub fn repetitions(&self) -> &str {
        or(&self.repetitions, "1")
    }
    pub fn resume(&self) -> bool {
        self.resume.as_deref().is_some_and(|r| !r.trim().is_empty())
    }
    pub fn record_path(&self) -> &str {
        or(&self.record_path, "/home/carla/recorder")
    }
    pub fn debug_checkpoint(&self) -> &str {
        or(&self.debug_checkpoint, "/workspace/leaderboard/live_results.txt")
    }
    pub fn debug_challenge(&self) -> &str {
        or(&self.debug_challenge, "0")
    }
    pub fn carla_root(&self) -> &str {
        or(&self.carla_root, "/workspace/CARLA")
    }
    pub fn scenario_runner_root(&self) -> &str {
        or(&self.scenario_runner_root, "/workspace/scenario_runner")
    }
    pub fn leaderboard_root(&self) -> &str {
        or(&self.leaderboard_root, "/workspace/leaderboard")
    }
}

#[derive(Debug, Clone, Args)]
pub struct GpuArgs {
    /// A GPU UUID to map to its index; without it, list the GPUs.
    pub uuid: Option<String>,
    /// nvidia-smi, run to list the GPUs.
    #[arg(long, env = "NVIDIA_SMI", default_value = "nvidia-smi")]
    pub nvidia_smi: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_id_then_completion_index_then_gpu() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(worker_from(Some(7), s("0"), s("3")), Ok(WorkerId(7)));
        assert_eq!(worker_from(None, s("0"), s("3")), Ok(WorkerId(1)));
        assert_eq!(worker_from(None, s(" 15 "), None), Ok(WorkerId(16)));
        assert_eq!(worker_from(None, None, s("3")), Ok(WorkerId(4)));
        for bad in ["", "-1", "x", "4294967295"] {
            let err = worker_from(None, s(bad), s("0")).unwrap_err();
            assert!(err.contains("JOB_COMPLETION_INDEX") && err.contains(&format!("{bad:?}")), "{err}");
        }
        assert!(worker_from(None, None, None).unwrap_err().contains("JOB_COMPLETION_INDEX"));
    }

    #[test]
    fn the_checkpoint_names_its_worker() {
        let p = with_worker(std::path::Path::new("/tmp/agent/agent{worker}/agent_results.json"), WorkerId(12));
        assert_eq!(p, std::path::Path::new("/tmp/agent/agent12/agent_results.json"));
        let plain = std::path::Path::new("/tmp/agent/agent_results.json");
        assert_eq!(with_worker(plain, WorkerId(3)), plain);
    }
}

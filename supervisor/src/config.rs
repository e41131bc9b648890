//! The supervisor's command line: flags with upstream's environment variable names as fallbacks, and every deadline
//! a flag, so that tests can make them short.

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
    version,
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
    Agent(AgentArgs),
    /// Print the GPU index of a UUID (as get_gpu_device.sh), or list the GPUs.
    Gpu(GpuArgs),
}

/// What `supervisor simulator --help` adds after the flags: the paths it uses by default.
fn simulator_help() -> String {
    format!(
        "\
Paths:
  CARLA's output (stdout and stderr, appended) goes to --log-file, by default
  {} (upstream mounts the volume's {}/ folder at
  {}). CARLA itself reads DISPLAY and its X socket in /tmp/.X11-unix.",
        mount::simulator_log(0).with_file_name("simulator-<worker>.log").display(),
        layout::SIMULATOR_DIR,
        mount::SIMULATOR
    )
}

/// What `supervisor agent --help` adds after the flags: the environment that becomes the evaluator's arguments.
fn agent_help() -> String {
    format!(
        "\
The evaluator's arguments and environment, from run_leaderboard.sh's variables (defaults in brackets):
  --port=CARLA_PORT [2000] --traffic-manager-port=CARLA_PORT+10 --agent=TEAM_AGENT --agent-config=TEAM_CONFIG
  --track=CHALLENGE_TRACK_CODENAME [SENSORS] --routes=ROUTES [/workspace/leaderboard/data/routes_testing.xml,
  routes_qualifier.xml on a QUALIFIER track] --routes-subset=ROUTES_SUBSET --repetitions=REPETITIONS [1]
  --resume=1 (after a crash, or when RESUME is set, or a results file with data exists) --checkpoint=CHECKPOINT_ENDPOINT
  --record=RECORD_PATH [/home/carla/recorder] --debug-checkpoint=DEBUG_CHECKPOINT_ENDPOINT
  [/workspace/leaderboard/live_results.txt] --debug=DEBUG_CHALLENGE [0].
  CARLA_ROOT [/workspace/CARLA], SCENARIO_RUNNER_ROOT [/workspace/scenario_runner] and LEADERBOARD_ROOT
  [/workspace/leaderboard] are exported with PYTHONPATH, as upstream; the evaluator's output (appended) goes to
  --log-file, by default {log} beside the checkpoint ({default}).
  NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES are the container runtime's, passed on.",
        log = layout::EVALUATOR_LOG,
        default = std::path::Path::new(mount::AGENT).join(layout::EVALUATOR_LOG).display()
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartMode {
    /// Restart the child inside the running container (default).
    InPlace,
    /// Upstream's behaviour: crash marker, exit 1, and let Kubernetes restart the container.
    Container,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Worker number (generation 2). Default: NVIDIA_VISIBLE_DEVICES + 1 (generation 1).
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<u32>,
    /// The shared marker folder (upstream mounts containers-status/ there).
    #[arg(long, env = "STATUS_DIR", default_value = mount::STATUS)]
    pub status_dir: PathBuf,
    /// The child's log file on the volume (appended to, never truncated).
    #[arg(long, env = "LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Longest wait for a marker of the peer (its start, its crash marker after ours, its done marker).
    #[arg(long, env = "PEER_WAIT", default_value = "600", value_parser = clap_parser)]
    pub peer_wait: Duration,
    /// The child counts as hung after printing nothing for this long (agent side; upstream MAX_IDLE).
    #[arg(long, env = "MAX_IDLE", default_value = "800", value_parser = clap_parser)]
    pub idle_timeout: Duration,
    /// Longest wait for CARLA's RPC port to accept connections.
    #[arg(long, env = "READY_TIMEOUT", default_value = "300", value_parser = clap_parser)]
    pub ready_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when stopping the child's process group.
    #[arg(long, env = "GRACE", default_value = "10", value_parser = clap_parser)]
    pub grace: Duration,
    /// Attempts this side may crash before it ends for good (a `.failed` marker, exit 0).
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// What a crash does.
    #[arg(long, env = "RESTART", value_enum, default_value_t = RestartMode::InPlace)]
    pub restart: RestartMode,
    /// Marker poll period, the fallback for lost file events.
    #[arg(long, env = "MARKER_POLL", default_value = "1", value_parser = clap_parser)]
    pub marker_poll: Duration,
}

impl Common {
    /// WORKER_ID, else NVIDIA_VISIBLE_DEVICES + 1.
    pub fn worker(&self) -> Result<WorkerId, String> {
        if let Some(id) = self.worker_id {
            return Ok(WorkerId(id));
        }
        match std::env::var("NVIDIA_VISIBLE_DEVICES") {
            Ok(v) => v.trim().parse::<u32>().map(|d| WorkerId(d + 1)).map_err(|_| {
                format!("--worker-id / WORKER_ID is not set and NVIDIA_VISIBLE_DEVICES ({v:?}) is not a GPU index")
            }),
            Err(_) => Err("--worker-id / WORKER_ID is required (or NVIDIA_VISIBLE_DEVICES, generation 1)".into()),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct SimulatorArgs {
    #[command(flatten)]
    pub common: Common,
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
    /// The evaluator's checkpoint (its results file).
    #[arg(long, env = "CHECKPOINT_ENDPOINT", default_value = mount::CHECKPOINT)]
    pub checkpoint: PathBuf,
    /// Run the evaluator and everything it starts as this numeric user (and group; default the same number), with
    /// no supplementary groups, while the supervisor stays root. With `logcopy restore --private-status` the
    /// participant's code can then no longer write the status folder. Off by default (as upstream).
    #[arg(long, env = "RUN_AS", value_name = "UID[:GID]")]
    pub run_as: Option<crate::child::RunAs>,
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

#[derive(Debug, Clone, Args)]
pub struct GpuArgs {
    /// A GPU UUID to map to its index; without it, list the GPUs.
    pub uuid: Option<String>,
    #[arg(long, env = "NVIDIA_SMI", default_value = "nvidia-smi")]
    pub nvidia_smi: PathBuf,
}

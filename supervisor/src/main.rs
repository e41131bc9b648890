//! The `supervisor` binary: PID-1 set-up before any thread exists, then the command line, then the library.
//!
//! Exit codes ([`supervisor::exit`]): `simulator` and `agent` exit 0 on every handled end (done, failed for good,
//! cancelled) under `--topology pod`, and under `--topology indexed` 41 (attempt budget spent) or 42 (participant
//! fault) when they end for good; 1 on a crash with `--restart container` (upstream's behaviour), the child's code
//! or 128 + signal after a forwarded SIGTERM/SIGINT/SIGHUP/SIGQUIT, and 2 on bad configuration. `gpu` exits 0, or 1
//! when the lookup fails; `exit-codes` (hidden) prints the table as JSON.

use clap::Parser;
use std::process::ExitCode;
use std::sync::mpsc;
use supervisor::checkpoint::CheckpointFile;
use supervisor::config::{Cli, Command};
use supervisor::log::{self, Level};
use supervisor::role::{self, Engine, Event, agent::Agent, simulator::Simulator};
use supervisor::{gpu, reaper};
use volume::markers::Role;

fn main() -> ExitCode {
    // Signals are blocked and the subreaper set before clap or any thread runs (STYLE 13: tini's model).
    if let Err(e) = reaper::setup() {
        log::err(Level::Error, &format!("cannot set up signal handling: {e}"));
        return ExitCode::from(supervisor::exit::CONFIG_ERROR);
    }
    let cli = Cli::parse();
    if let Command::Simulator(a) = &cli.command {
        log::init(a.common.log_format, a.common.log_level);
    } else if let Command::Agent(a) = &cli.command {
        log::init(a.common.log_format, a.common.log_level);
    }
    match cli.command {
        Command::Gpu(a) => gpu_command(&a),
        Command::ExitCodes => {
            println!("{}", supervisor::exit::json());
            ExitCode::SUCCESS
        }
        Command::Simulator(a) => {
            let worker = match a.common.worker() {
                Ok(w) => w,
                Err(e) => return config_error(&e),
            };
            let spec =
                a.gpu.clone().or_else(|| std::env::var("NVIDIA_VISIBLE_DEVICES").ok()).unwrap_or_else(|| "none".into());
            let gpu_index = match gpu::resolve(&spec, &a.nvidia_smi) {
                Ok(gpu::GpuSelection::Index(i)) => Some(i),
                Ok(gpu::GpuSelection::None) => None,
                Err(e) => return config_error(&format!("--gpu / GPU: {e}")),
            };
            let log = a.common.log_file.clone().unwrap_or_else(|| volume::layout::mount::simulator_log(worker.0));
            let mut sim = Simulator::new(a.command.clone(), a.port, gpu_index);
            sim.ready_timeout = a.ready_timeout;
            run(Role::Simulator, worker, a.common, log, &mut sim)
        }
        Command::Agent(a) => {
            let worker = match a.common.worker() {
                Ok(w) => w,
                Err(e) => return config_error(&e),
            };
            let mut a = a;
            a.checkpoint = supervisor::config::with_worker(&a.checkpoint, worker);
            let log_name = volume::layout::EVALUATOR_LOG;
            let default_log = a.checkpoint.parent().map(|d| d.join(log_name)).unwrap_or_else(|| log_name.into());
            let log = a.common.log_file.clone().unwrap_or(default_log);
            if let Some(r) = a.run_as {
                // SAFETY: geteuid has no preconditions.
                let euid = unsafe { libc::geteuid() };
                if euid != 0 && euid != r.uid {
                    return config_error(&format!(
                        "--run-as / RUN_AS {}:{}: the supervisor runs as user {euid}, not root: it cannot switch users",
                        r.uid, r.gid
                    ));
                }
            }
            if a.run_as.is_some() {
                use std::os::unix::fs::PermissionsExt;
                let dir = &a.common.status_dir;
                if std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o002 != 0) {
                    log::err(
                        Level::Warn,
                        &format!(
                            "--run-as is set but {} is writable by every user: the evaluator can still forge markers \
                             (logcopy restore --private-status makes it 2775)",
                            dir.display()
                        ),
                    );
                }
            }
            // The checkpoint's folder (the worker's mount of the volume) is opened once, as a root.
            let checkpoint = match CheckpointFile::open_for(&a.checkpoint, a.run_as.map(|r| (r.uid, r.gid))) {
                Ok(c) => c,
                Err(e) => return config_error(&format!("--checkpoint {}: {e}", a.checkpoint.display())),
            };
            let mut agent = Agent::new(a.command.clone(), checkpoint.clone());
            agent.run_as = a.run_as;
            agent.env = a.evaluator.clone();
            if agent.env.routes_subset.as_deref().is_none_or(str::is_empty)
                && let Some(routes) = agent.env.route_count
            {
                let workers = agent.env.workers.unwrap_or(1);
                if worker.0 > workers {
                    return config_error(&format!("worker {} of --workers / SUBMISSION_WORKERS {workers}", worker.0));
                }
                agent.env.routes_subset = Some(volume::shard::routes_subset(routes, workers, worker));
            }
            agent.idle_timeout = a.idle_timeout;
            agent.route_retries = a.route_retries.map(|k| supervisor::role::agent::RouteRetries::new(&checkpoint, k));
            run(Role::Agent, worker, a.common, log, &mut agent)
        }
    }
}

fn run(
    role: Role,
    worker: volume::markers::WorkerId,
    common: supervisor::config::Common,
    log: std::path::PathBuf,
    spec: &mut dyn role::RoleSpec,
) -> ExitCode {
    let (tx, rx) = mpsc::channel();
    let signals = tx.clone();
    if let Err(e) = reaper::spawn(move |ev| signals.send(Event::Signal(ev)).is_ok()) {
        log::err(Level::Error, &format!("cannot start the signal thread: {e}"));
        return ExitCode::from(supervisor::exit::CONFIG_ERROR);
    }
    let (status, log_dir) = (common.status_dir.clone(), log.parent().map(std::path::Path::to_path_buf));
    let eng = match Engine::new(role, worker, common, Some(log), tx, rx) {
        Ok(e) => e,
        Err(e) => {
            let log_dir = log_dir.unwrap_or_default();
            return config_error(&format!(
                "cannot open the status folder {} or the log's folder {}: {e}",
                status.display(),
                log_dir.display()
            ));
        }
    };
    let code = role::run(eng, spec);
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn config_error(msg: &str) -> ExitCode {
    log::err(Level::Error, &format!("configuration error: {msg}"));
    ExitCode::from(supervisor::exit::CONFIG_ERROR)
}

fn gpu_command(a: &supervisor::config::GpuArgs) -> ExitCode {
    let result = match &a.uuid {
        Some(uuid) => gpu::uuid_to_index(uuid, &a.nvidia_smi).map(|i| println!("{i}")),
        None => gpu::list(&a.nvidia_smi).map(|gpus| {
            for g in gpus {
                println!("{} {}", g.index, g.uuid);
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::err(Level::Error, &format!("gpu: {e}"));
            ExitCode::from(1)
        }
    }
}

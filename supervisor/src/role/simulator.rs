//! The simulator side: CarlaUE4 on its GPU, ready when its RPC port accepts connections.
//!
//! Upstream starts CARLA, sleeps 60 s "to ensure CARLA is ready" and then writes its start marker, so the agent
//! waits a full minute every attempt and still races a slow start. Here readiness is a TCP connect to the RPC
//! port every 50 ms, within `--ready-timeout`; the start marker is written the moment it succeeds.

use super::{Engine, FINISHED, Outcome, RoleSpec};
use crate::child::{Child, Spec};
use crate::reaper::Exit;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use volume::markers::{Attempt, Marker, Role, StatusSet, WorkerId};

pub struct Simulator {
    pub command: Vec<OsString>,
    pub port: u16,
    /// `r.GraphicsAdapter`; `None` for a run without a GPU.
    pub gpu_index: Option<u32>,
    /// `--ready-timeout`: the longest wait for CARLA's RPC port.
    pub ready_timeout: Duration,
    ready: bool,
    ready_deadline: Instant,
    next_probe: Instant,
}

impl Simulator {
    pub fn new(command: Vec<OsString>, port: u16, gpu_index: Option<u32>) -> Self {
        let now = Instant::now();
        Simulator {
            command,
            port,
            gpu_index,
            ready_timeout: Duration::from_secs(300),
            ready: false,
            ready_deadline: now,
            next_probe: now,
        }
    }

    /// CARLA's arguments, as run_carla.sh passes them.
    pub fn carla_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "-vulkan".into(),
            format!("-carla-rpc-port={}", self.port).into(),
            "-RenderOffScreen".into(),
            "-nosound".into(),
        ];
        if let Some(i) = self.gpu_index {
            args.push(format!("-ini:[/Script/Engine.RendererSettings]:r.GraphicsAdapter={i}").into());
        }
        args
    }
}

impl RoleSpec for Simulator {
    fn role(&self) -> Role {
        Role::Simulator
    }

    fn prepare(&mut self, _eng: &mut Engine, _attempt: Attempt) -> Result<(), Outcome> {
        self.ready = false;
        self.ready_deadline = Instant::now() + self.ready_timeout;
        self.next_probe = Instant::now();
        Ok(())
    }

    fn spec(&mut self, _attempt: Attempt) -> Spec {
        let (program, mut args) = match self.command.split_first() {
            Some((p, rest)) => (p.clone(), rest.to_vec()),
            None => (OsString::from("./CarlaUE4.sh"), Vec::new()),
        };
        args.extend(self.carla_args());
        Spec { program, args, env: Vec::new(), cwd: None, run_as: None }
    }

    fn tick(&mut self, eng: &mut Engine, _child: &Child, attempt: Attempt) -> Option<Outcome> {
        if self.ready {
            return None;
        }
        let now = Instant::now();
        if now < self.next_probe {
            return None;
        }
        self.next_probe = now + Duration::from_millis(50);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            self.ready = true;
            eng.note(&format!("CARLA accepts connections on port {}", self.port));
            eng.write(Marker::Start { role: Role::Simulator, worker: eng.worker, attempt });
            return None;
        }
        if now >= self.ready_deadline {
            return Some(Outcome::Crash(format!(
                "CARLA did not open port {} within {:?}",
                self.port, self.ready_timeout
            )));
        }
        None
    }

    fn on_exit(&mut self, _eng: &mut Engine, exit: Exit) -> Outcome {
        Outcome::Crash(format!("CARLA ended ({exit})"))
    }

    fn on_peer(&mut self, eng: &mut Engine, set: &StatusSet, attempt: Attempt) -> Option<Outcome> {
        let (agent, w) = (Role::Agent, eng.worker);
        if set.is_done(agent, w) {
            eng.note("the agent is done: stopping CARLA");
            return Some(Outcome::Done(FINISHED.into()));
        }
        if set.is_failed(agent, w) {
            return Some(Outcome::PeerFailed);
        }
        if set.crashed_since(agent, w, attempt, eng.attempt_limit()) {
            return Some(Outcome::Crash(format!("the agent crashed in attempt {attempt}")));
        }
        None
    }

    fn ends_with_peer_done(&self) -> bool {
        true
    }

    fn after_crash(&mut self, eng: &mut Engine, attempt: Attempt) {
        eng.crash_wait_for_peer(attempt);
    }

    fn end_for_failed_peer(&self, worker: WorkerId) -> Marker {
        Marker::Done { role: Role::Simulator, worker }
    }
}

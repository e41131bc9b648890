//! An in-process model of EvalAI's submission endpoints for simulations on tokio's paused clock: the EvalAI
//! sink's unit tests and the budget benchmark (`cargo bench -p logcopy --bench budget`) run hours of requests in
//! milliseconds with it, deterministically.
//!
//! It answers as EvalAI does (`apps/jobs/views.py`): a GET returns the stored status and `started_at`; a write
//! sets the status it carries whatever the current one (no state machine: a partial PUT after a cancel undoes
//! it); a PATCH to `running` sets `started_at`. Faults queued with [`SimEvalAi::fault`] replace the answer to the
//! next matching request. Every request is logged with its instant and the status its body carried.

use super::evalai::{Method, Request, Response, Transport, TransportError};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// What a queued fault does to the request it meets.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this HTTP status (not applied), with an optional Retry-After.
    Status(u16, Option<Duration>),
    /// Take `after`, then time out; `applied`: the server handled the request all the same.
    Timeout { after: Duration, applied: bool },
    /// Answer normally, then set the stored status to this (a cancel on the web UI right after the request).
    ThenSet(&'static str),
    /// Meet the inner fault, then set the stored status to this before answering: a cancel that lands exactly
    /// between a faulted try and its retry.
    Then(Box<Fault>, &'static str),
}

/// One request as the model saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub method: Method,
    pub path: String,
    /// `submission_status` of the body (lower case), for writes.
    pub status: Option<String>,
    /// The `metadata` string of the body (the merged file), for writes.
    pub metadata: Option<String>,
    /// The fault it met, if any.
    pub fault: Option<String>,
}

impl Seen {
    pub fn is_write(&self) -> bool {
        self.method != Method::Get
    }

    pub fn is_partial_put(&self) -> bool {
        self.method == Method::Put && self.path.contains("update_partially_evaluated")
    }

    pub fn is_final_put(&self) -> bool {
        self.method == Method::Put && self.path.contains("/update_submission/")
    }
}

#[derive(Debug)]
struct State {
    status: String,
    started: bool,
    faults: VecDeque<(Option<Method>, Fault)>,
    log: Vec<Seen>,
}

/// The model of one submission.
#[derive(Debug)]
pub struct SimEvalAi {
    state: Mutex<State>,
    /// Time each answer takes.
    pub latency: Duration,
}

impl SimEvalAi {
    pub fn new(status: &str, started: bool) -> Self {
        SimEvalAi {
            state: Mutex::new(State { status: status.into(), started, faults: VecDeque::new(), log: Vec::new() }),
            latency: Duration::from_millis(50),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the stored status, as the web UI's cancel does.
    pub fn set_status(&self, status: &str) {
        self.lock().status = status.into();
    }

    pub fn status(&self) -> String {
        self.lock().status.clone()
    }

    /// Queues a fault for the next request of `method` (any method when `None`).
    pub fn fault(&self, method: Option<Method>, fault: Fault) {
        self.lock().faults.push_back((method, fault));
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Seen> {
        self.lock().log.clone()
    }

    fn apply(&self, req: &Request) -> Response {
        let mut st = self.lock();
        if req.method == Method::Get {
            let started = if st.started { "\"2026-01-01T00:00:00Z\"" } else { "null" };
            return Response {
                status: 200,
                body: format!("{{\"status\":\"{}\",\"started_at\":{started}}}", st.status),
                ..Response::default()
            };
        }
        let body: serde_json::Value =
            req.body.as_ref().and_then(|b| serde_json::from_str(b.as_str()).ok()).unwrap_or_default();
        if let Some(s) = body.get("submission_status").and_then(|s| s.as_str()) {
            st.status = s.to_lowercase();
            if st.status == "running" {
                st.started = true;
            }
        }
        Response { status: 200, body: "{\"success\":\"ok\"}".into(), ..Response::default() }
    }
}

impl Transport for SimEvalAi {
    async fn send(&self, req: &Request) -> Result<Response, TransportError> {
        let fault = {
            let mut st = self.lock();
            let i = st.faults.iter().position(|(m, _)| m.is_none_or(|m| m == req.method));
            let fault = i.and_then(|i| st.faults.remove(i)).map(|(_, f)| f);
            let body: serde_json::Value =
                req.body.as_ref().and_then(|b| serde_json::from_str(b.as_str()).ok()).unwrap_or_default();
            let field = |k: &str| body.get(k).and_then(|s| s.as_str()).map(str::to_string);
            st.log.push(Seen {
                at: Instant::now(),
                method: req.method,
                path: req.path.clone(),
                status: field("submission_status").map(|s| s.to_lowercase()),
                metadata: field("metadata"),
                fault: fault.as_ref().map(|f| format!("{f:?}")),
            });
            fault
        };
        tokio::time::sleep(self.latency).await;
        self.answer(req, fault).await
    }
}

impl SimEvalAi {
    async fn answer(&self, req: &Request, fault: Option<Fault>) -> Result<Response, TransportError> {
        match fault {
            None => Ok(self.apply(req)),
            Some(Fault::Then(inner, status)) => {
                let r = Box::pin(self.answer(req, Some(*inner))).await;
                self.set_status(status);
                r
            }
            Some(Fault::Status(status, retry_after)) => {
                Ok(Response { status, retry_after, body: "{\"detail\":\"fault\"}".into(), ..Response::default() })
            }
            Some(Fault::Timeout { after, applied }) => {
                if applied {
                    self.apply(req);
                }
                tokio::time::sleep(after).await;
                Err(TransportError::Timeout)
            }
            Some(Fault::ThenSet(status)) => {
                let r = self.apply(req);
                self.set_status(status);
                Ok(r)
            }
        }
    }
}

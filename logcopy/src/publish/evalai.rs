//! Publishing to EvalAI within its request budget, without ever undoing a cancel.
//!
//! Replaces the GET + PUT pair that upstream's logcopy runs every 10 s with curl (12 requests a minute, failures
//! ignored, a cancel overwritten by the PUT that follows it). Here:
//! - a status GET every `--status-period` notices a cancel;
//! - a new result is sent when its content changes, at once when the budget allows, otherwise coalesced so that
//!   only the newest is sent; the same payload is never sent twice;
//! - every partial PUT directly follows its own status GET, because EvalAI has no state machine and a PUT would
//!   turn `cancelled` back into `partially_evaluated`. The periodic GET is not reused even when only a second old:
//!   a cancel made in that second would be undone (the issue allows reusing a GET up to 2 s old; the cancel-race
//!   test shows why we do not). Once cancelled or finished, no partial PUT is sent again;
//! - every request counts against the budget ([`Budget`]), retries included; a 429 pauses all requests until its
//!   Retry-After; 5xx, timeouts and broken connections are retried with full-jitter backoff; 401/403 are an
//!   operator error (a bad token), logged and never read as a cancel;
//! - at start, a submission still `submitted`, `queued` or `resuming` with no `started_at` is marked `running`
//!   (upstream never does, so EvalAI shows no start or execution time); a restart that finds it running does not.

use super::budget::Budget;
use super::retry::RetryPolicy;
use super::{End, Outputs, Sink, SinkEvent, Snapshot};
use crate::config::Secret;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// One EvalAI request: a method, a path under the API base, and a JSON body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: String,
}

/// A request that got no HTTP answer. All of these are worth retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("{0}")]
    Io(String),
}

/// Sends requests: over HTTP ([`HttpTransport`]) or to the local embedded sink.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, req: &Request) -> impl Future<Output = Result<Response, TransportError>> + Send;
}

/// The real EvalAI over HTTPS: `Authorization: Bearer <token>`, JSON bodies, a timeout per request.
pub struct HttpTransport {
    client: reqwest::Client,
    base: String,
    token: Secret,
}

impl HttpTransport {
    pub fn new(base: &str, token: Secret, timeout: Duration) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("logcopy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpTransport { client, base: base.trim_end_matches('/').to_string(), token })
    }
}

impl Transport for HttpTransport {
    async fn send(&self, req: &Request) -> Result<Response, TransportError> {
        let url = format!("{}{}", self.base, req.path);
        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
        };
        let mut rb = self
            .client
            .request(method, &url)
            .header("Authorization", format!("Bearer {}", self.token.expose()))
            .header("Accept", "application/json");
        if let Some(body) = &req.body {
            rb = rb.header("Content-Type", "application/json").body(body.clone());
        }
        let classify = |e: reqwest::Error| {
            // The token is in a header, never in the URL, so the error's text cannot leak it.
            if e.is_timeout() {
                TransportError::Timeout
            } else if e.is_connect() {
                TransportError::Connect(e.to_string())
            } else {
                TransportError::Io(e.to_string())
            }
        };
        let resp = rb.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.text().await.map_err(classify)?;
        Ok(Response { status, retry_after, body })
    }
}

/// A submission status as EvalAI returns it (lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub status: String,
    pub started: bool,
}

impl Status {
    /// Statuses after which a partial PUT would overwrite a decision made elsewhere.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "cancelled" | "finished" | "failed" | "archived")
    }
}

/// Why a request failed for good (after retries, or at once for 4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("EvalAI refused the host token ({status}): {detail}; check EVALAI_AUTH_TOKEN (operator error)")]
    Auth { status: u16, detail: String },
    #[error("EvalAI rejected the request ({status}): {detail}")]
    Rejected { status: u16, detail: String },
    #[error("EvalAI unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: usize, last: String },
}

/// The reason EvalAI gives in an error body: `error`, `detail`, field errors, or HTML (cut short).
fn detail(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(o)) => {
            for k in ["error", "detail"] {
                if let Some(serde_json::Value::String(s)) = o.get(k) {
                    return s.clone();
                }
            }
            serde_json::Value::Object(o).to_string()
        }
        _ => {
            let text: String = body.chars().filter(|c| !c.is_control()).take(120).collect();
            if text.is_empty() { "(empty body)".into() } else { text }
        }
    }
}

#[derive(Serialize)]
struct PartialUpdate<'a> {
    submission: u64,
    submission_status: &'a str,
    challenge_phase: u64,
    stdout: &'a str,
    result: &'a str,
    stderr: &'a str,
    metadata: &'a str,
}

#[derive(Serialize)]
struct FinalUpdate<'a> {
    submission: String,
    challenge_phase: String,
    submission_status: &'a str,
    result: &'a str,
    stdout: &'a str,
    stderr: &'a str,
    environment_log: &'a str,
    metadata: &'a str,
}

#[derive(Serialize)]
struct StartPatch {
    submission: u64,
    submission_status: &'static str,
}

/// The EvalAI settings of one submission.
#[derive(Debug, Clone)]
pub struct EvalAiSettings {
    pub challenge_id: u64,
    pub submission_id: u64,
    pub track_id: u64,
    pub rpm: u32,
    pub status_period: Duration,
    pub start_patch: bool,
    pub final_status: bool,
    pub retry: RetryPolicy,
}

/// The EvalAI sink: one task that owns the budget and every request of this submission.
pub struct EvalAiSink<T: Transport> {
    transport: T,
    cfg: EvalAiSettings,
    budget: Budget,
    /// The last status read and when.
    status: Option<(Status, Instant)>,
    /// Digest of the last payload EvalAI acknowledged.
    sent: Option<u64>,
    /// Cancelled or finished: no more partial PUTs.
    terminal: bool,
    /// No publishing attempt before this (backoff after a failed one).
    not_before: Instant,
    /// When the next periodic status GET is due (set after every status attempt, failed ones too).
    next_status: Instant,
    failures: usize,
}

impl<T: Transport> EvalAiSink<T> {
    pub fn new(transport: T, cfg: EvalAiSettings) -> Self {
        let budget = Budget::new(cfg.rpm);
        EvalAiSink {
            transport,
            cfg,
            budget,
            status: None,
            sent: None,
            terminal: false,
            not_before: Instant::now(),
            next_status: Instant::now(),
            failures: 0,
        }
    }

    fn submission_path(&self) -> String {
        format!("/api/jobs/submission/{}", self.cfg.submission_id)
    }

    fn partial_path(&self) -> String {
        format!("/api/jobs/challenges/{}/update_partially_evaluated_submission/", self.cfg.challenge_id)
    }

    fn final_path(&self) -> String {
        format!("/api/jobs/challenge/{}/update_submission/", self.cfg.challenge_id)
    }

    /// Sends one request within the budget, retrying what is worth retrying.
    async fn request(&mut self, req: Request) -> Result<Response, RequestError> {
        let mut delays = self.cfg.retry.delays();
        let mut attempts = 0;
        loop {
            let at = self.budget.ready_at(Instant::now(), 1);
            sleep_until(at).await;
            self.budget.spend(Instant::now());
            attempts += 1;
            let failure = match self.transport.send(&req).await {
                Ok(r) if (200..300).contains(&r.status) => return Ok(r),
                Ok(r) if r.status == 429 => {
                    let wait = r.retry_after.unwrap_or(Duration::from_secs(60));
                    warn!(method = req.method.as_str(), path = %req.path, wait_s = wait.as_secs(), "EvalAI throttled us (429); pausing every request");
                    self.budget.pause_until(Instant::now() + wait);
                    format!("429 {}", detail(&r.body))
                }
                Ok(r) if r.status == 401 || r.status == 403 => {
                    return Err(RequestError::Auth { status: r.status, detail: detail(&r.body) });
                }
                Ok(r) if r.status < 500 => {
                    return Err(RequestError::Rejected { status: r.status, detail: detail(&r.body) });
                }
                Ok(r) => format!("{} {}", r.status, detail(&r.body)),
                Err(e) => e.to_string(),
            };
            match delays.next() {
                Some(d) => {
                    debug!(method = req.method.as_str(), path = %req.path, error = %failure, retry_in_ms = d.as_millis() as u64, "EvalAI request failed; retrying");
                    tokio::time::sleep(d).await;
                }
                None => return Err(RequestError::Unavailable { attempts, last: failure }),
            }
        }
    }

    /// GETs the submission's status.
    async fn fetch_status(&mut self) -> Result<Status, RequestError> {
        let req = Request { method: Method::Get, path: self.submission_path(), body: None };
        let resp = self.request(req).await;
        self.next_status = Instant::now() + self.cfg.status_period;
        let resp = resp?;
        let v: serde_json::Value = serde_json::from_str(&resp.body).map_err(|e| RequestError::Rejected {
            status: resp.status,
            detail: format!("the submission is not JSON: {e}"),
        })?;
        let status = v.get("status").and_then(|s| s.as_str()).unwrap_or("").to_lowercase();
        let started = v.get("started_at").is_some_and(|s| !s.is_null());
        let st = Status { status, started };
        self.status = Some((st.clone(), Instant::now()));
        Ok(st)
    }

    /// GETs the status and acts on it; `false` when it could not be read.
    async fn refresh(&mut self, events: &mpsc::Sender<SinkEvent>) -> bool {
        match self.fetch_status().await {
            Ok(st) => {
                self.observe(&st, events).await;
                true
            }
            Err(e) => {
                log_failure("status GET", &e);
                false
            }
        }
    }

    async fn observe(&mut self, st: &Status, events: &mpsc::Sender<SinkEvent>) {
        if st.status == "cancelled" && !self.terminal {
            info!("EvalAI reports the submission cancelled");
            self.terminal = true;
            let _ = events.send(SinkEvent::Cancelled).await;
        } else if st.is_terminal() && !self.terminal {
            warn!(status = %st.status, "EvalAI reports a final status set elsewhere; no more partial updates");
            self.terminal = true;
        }
        if st.status != "cancelled" {
            let _ = events.send(SinkEvent::Status { status: st.status.clone() }).await;
        }
    }

    fn next_status_due(&self) -> Instant {
        self.next_status
    }

    /// Start: read the status; mark a fresh submission `running` right after that GET.
    async fn start(&mut self, events: &mpsc::Sender<SinkEvent>) {
        if !self.refresh(events).await || !self.cfg.start_patch || self.terminal {
            return;
        }
        let Some((st, _)) = &self.status else { return };
        if !matches!(st.status.as_str(), "submitted" | "queued" | "resuming") || st.started {
            debug!(status = %st.status, started = st.started, "not marking the submission running");
            return;
        }
        let body =
            serde_json::to_string(&StartPatch { submission: self.cfg.submission_id, submission_status: "running" })
                .unwrap_or_default();
        let req = Request { method: Method::Patch, path: self.partial_path(), body: Some(body) };
        match self.request(req).await {
            Ok(_) => info!("marked the submission running on EvalAI (its start time is now set)"),
            Err(e) => log_failure("start PATCH", &e),
        }
    }

    /// One partial update: a status GET right before it, then the PUT unless the GET says stop.
    async fn publish(&mut self, seq: u64, outputs: &Outputs, events: &mpsc::Sender<SinkEvent>) {
        if !self.refresh(events).await {
            self.back_off();
            return;
        }
        if self.terminal {
            return;
        }
        let body = serde_json::to_string(&PartialUpdate {
            submission: self.cfg.submission_id,
            submission_status: "PARTIALLY_EVALUATED",
            challenge_phase: self.cfg.track_id,
            stdout: &outputs.stdout,
            result: &outputs.results,
            stderr: "",
            metadata: &outputs.merged,
        })
        .unwrap_or_default();
        let req = Request { method: Method::Put, path: self.partial_path(), body: Some(body) };
        match self.request(req).await {
            Ok(_) => {
                self.sent = Some(outputs.digest());
                self.failures = 0;
                info!(seq, "partial results published to EvalAI");
                let _ = events.send(SinkEvent::Published { seq }).await;
            }
            Err(e) => {
                log_failure("partial PUT", &e);
                self.back_off();
            }
        }
    }

    fn back_off(&mut self) {
        self.failures += 1;
        let d = self.cfg.retry.max_delay.mul_f64(fastrand::f64().max(0.25)) * (self.failures.min(4) as u32);
        self.not_before = Instant::now() + d;
    }

    fn wants_publish(&self, snap: &Snapshot) -> bool {
        !self.terminal && snap.outputs.as_ref().is_some_and(|o| Some(o.digest()) != self.sent)
    }

    /// The terminal update (post-run step): PUT update_submission, then GET until EvalAI shows it (5 tries).
    async fn send_final_status(&mut self, status: &'static str, outputs: Option<&Outputs>, reason: &str) {
        let empty = Outputs { merged: String::new(), results: String::new(), stdout: String::new() };
        let o = outputs.unwrap_or(&empty);
        let body = serde_json::to_string(&FinalUpdate {
            submission: self.cfg.submission_id.to_string(),
            challenge_phase: self.cfg.track_id.to_string(),
            submission_status: status,
            result: &o.results,
            stdout: &o.stdout,
            stderr: "",
            environment_log: "",
            metadata: &o.merged,
        })
        .unwrap_or_default();
        for attempt in 1..=5 {
            let req = Request { method: Method::Put, path: self.final_path(), body: Some(body.clone()) };
            if let Err(e) = self.request(req).await {
                log_failure("final status PUT", &e);
                if matches!(e, RequestError::Auth { .. } | RequestError::Rejected { .. }) {
                    return;
                }
                continue;
            }
            match self.fetch_status().await {
                Ok(st) if st.status.eq_ignore_ascii_case(status) => {
                    info!(status, reason, "final status set on EvalAI");
                    return;
                }
                Ok(st) => warn!(attempt, want = status, got = %st.status, "EvalAI does not show the final status yet"),
                Err(e) => log_failure("final status check", &e),
            }
        }
        error!(status, "could not confirm the final status on EvalAI after 5 tries");
    }

    async fn finish(&mut self, snap: &Snapshot, end: &End, events: &mpsc::Sender<SinkEvent>) {
        if !matches!(end, End::Cancelled { .. })
            && let Some(o) = snap.outputs.clone()
            && self.wants_publish(snap)
        {
            self.publish(snap.seq, &o, events).await;
        }
        if self.cfg.final_status
            && let Some(status) = end.final_status()
        {
            let reason = match end {
                End::Completed { reason, .. } | End::Cancelled { reason } => reason.as_str(),
                _ => "",
            };
            self.send_final_status(status, snap.outputs.as_deref(), reason).await;
        }
    }
}

fn log_failure(what: &str, e: &RequestError) {
    match e {
        RequestError::Auth { .. } => error!(request = what, error = %e, "EvalAI request refused"),
        _ => warn!(request = what, error = %e, "EvalAI request failed"),
    }
}

impl<T: Transport> Sink for EvalAiSink<T> {
    fn name(&self) -> &'static str {
        "evalai"
    }

    async fn run(mut self, mut snapshots: watch::Receiver<Arc<Snapshot>>, events: mpsc::Sender<SinkEvent>) {
        self.start(&events).await;
        let mut verifying = false;
        loop {
            let snap = snapshots.borrow_and_update().clone();
            if let Some(end) = &snap.end {
                self.finish(&snap, end, &events).await;
                return;
            }
            // A cancel marker we did not write: read the status as soon as the budget allows, once.
            if snap.verify_cancel && !verifying {
                verifying = true;
                self.next_status = Instant::now();
            }
            if self.wants_publish(&snap) && Instant::now() >= self.not_before {
                // Room for the GET and the PUT together.
                let at = self.budget.ready_at(Instant::now(), 2);
                if at <= Instant::now() {
                    if let Some(o) = snap.outputs.clone() {
                        self.publish(snap.seq, &o, &events).await;
                    }
                    continue;
                }
                // Wait for the budget; a newer snapshot meanwhile replaces this one (coalescing).
                tokio::select! {
                    _ = sleep_until(at) => {}
                    r = snapshots.changed() => if r.is_err() { return },
                    _ = sleep_until(self.next_status_due()) => { self.refresh(&events).await; }
                }
                continue;
            }
            let retry_at = if self.wants_publish(&snap) { Some(self.not_before) } else { None };
            // The periodic GET waits for the budget too, but a new snapshot (or the end) still wakes us.
            let status_at = self.next_status_due().max(self.budget.ready_at(Instant::now(), 1));
            tokio::select! {
                r = snapshots.changed() => if r.is_err() { return },
                _ = sleep_until(status_at) => { self.refresh(&events).await; }
                _ = async { sleep_until(retry_at.unwrap_or_else(Instant::now)).await }, if retry_at.is_some() => {}
            }
        }
    }
}

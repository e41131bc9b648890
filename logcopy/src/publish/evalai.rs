//! Publishing to EvalAI within its request budget, without ever undoing a cancel.
//!
//! Replaces the GET + PUT pair that upstream's logcopy runs every 10 s with curl (12 requests a minute, failures
//! ignored, a cancel overwritten by the PUT that follows it). EvalAI has no state machine: its partial update, its
//! PATCH to `running` and its final `update_submission` all overwrite the status whatever it is
//! (`apps/jobs/views.py`). So here:
//! - every write (partial PUT, start PATCH, final PUT), each retry included, directly follows its own status GET,
//!   with room in the budget for both reserved before the GET ([`EvalAiSink::guarded`]). A partial PUT or a PATCH
//!   is dropped when that GET says `cancelled`; a final update is then CANCELLED, whatever the run decided. Once
//!   cancelled or finished elsewhere, no partial PUT is sent again;
//! - a new result is sent when its content changes, at once when the budget allows, otherwise coalesced so that
//!   only the newest is sent; the same payload is never sent twice. Pairs are paced at least `120 / rpm` s apart,
//!   so the budget is spread over the minute instead of spent in a burst and then waited for;
//! - any GET counts as the periodic status check (every `--status-period`, 20 s by default), and the periodic GET
//!   never takes one of the last two free slots, which stay for the pair of a change, waiting or to come;
//! - every request counts against the budget ([`Budget`]), retries and timed-out ones included (a request that
//!   timed out may have reached EvalAI and counted there); a 429 pauses every request until its Retry-After
//!   (at most [`MAX_RETRY_AFTER`]); 5xx, timeouts and broken connections are retried with full-jitter backoff;
//!   401/403 are an operator error (a bad token), logged and never read as a cancel; a redirect is never followed
//!   (reqwest would turn a PUT into a GET and drop the token), it is reported with its Location;
//! - response bodies are read up to [`MAX_RESPONSE_BYTES`];
//! - at start, a submission `submitted` or `queued` is marked `running` (EvalAI's re-run copies the original row,
//!   `started_at` included, so the start time cannot decide it), and a `resuming` one only while it has no
//!   `started_at` (a resumed submission keeps its id and its real start).

use super::budget::Budget;
use super::retry::RetryPolicy;
use super::{End, FinalDecision, FinalStatus, Outputs, Sink, SinkEvent, Snapshot};
use crate::config::Secret;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

/// The longest pause a 429's Retry-After can impose (EvalAI's own window is 60 s).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The most of a response body that is read; the rest is dropped with the connection. EvalAI's answers here are
/// a few KiB (the submission object, a success line, an error page).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

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
    pub body: Option<Body>,
}

/// A request's JSON body, shared: a retry, a transport's copy or a record of it costs no copy of the bytes (an update
/// carries the merged file, 14 MB at 10,000 routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body(bytes::Bytes);

impl Body {
    /// `value` as JSON, written into a buffer of `size_hint` bytes (the sum of the strings it carries, a margin for
    /// their escapes): growing a 14 MB body by doubling kept up to twice its size.
    pub fn json(value: &impl Serialize, size_hint: usize) -> Body {
        let mut buf = Vec::with_capacity(size_hint);
        // Writing our own structs of strings and numbers into a Vec cannot fail.
        serde_json::to_writer(&mut buf, value).expect("a JSON body serialises");
        Body(buf.into())
    }

    pub fn as_str(&self) -> &str {
        // Built from JSON text or a String: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Body(s.into())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// The `Location` of a redirect, credentials removed.
    pub location: Option<String>,
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

impl<T: Transport> Transport for Arc<T> {
    fn send(&self, req: &Request) -> impl Future<Output = Result<Response, TransportError>> + Send {
        (**self).send(req)
    }
}

/// `scheme://host[:port]/path` of a URL, without the `user:password@` part, for logs.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{tail}")
        }
        None => url.rsplit_once('@').map_or(url, |(_, h)| h).to_string(),
    }
}

/// The real EvalAI over HTTPS: `Authorization: Bearer <token>`, JSON bodies, a timeout per request, no redirects
/// followed, bodies capped.
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
            // EvalAI's nginx answers http:// with a 301; following it turns a PUT into a GET and drops the token.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("logcopy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpTransport { client, base: base.trim_end_matches('/').to_string(), token })
    }
}

/// Reads at most `cap` bytes of a body; the rest is never read (the connection is dropped with the response).
async fn read_capped(resp: &mut reqwest::Response, cap: usize) -> reqwest::Result<String> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() >= room {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
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
            rb = rb.header("Content-Type", "application/json").body(body.0.clone());
        }
        let classify = |e: reqwest::Error| {
            // Without the URL: it may carry credentials (`http://user:pass@host`). The token is in a header.
            let e = e.without_url();
            if e.is_timeout() {
                TransportError::Timeout
            } else if e.is_connect() {
                TransportError::Connect(e.to_string())
            } else {
                TransportError::Io(e.to_string())
            }
        };
        let mut resp = rb.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let retry_after = header("Retry-After").and_then(parse_retry_after);
        let location =
            header("Location").map(|l| redact_url(l).chars().filter(|c| !c.is_control()).take(200).collect());
        let body = read_capped(&mut resp, MAX_RESPONSE_BYTES).await.map_err(classify)?;
        Ok(Response { status, retry_after, location, body })
    }
}

/// `Retry-After` in seconds (DRF sends whole seconds), clamped to [`MAX_RETRY_AFTER`]; any digit string parses,
/// however long.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = v.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// `Submission.status` as EvalAI stores and returns it (`apps/jobs/models.py`, lower case); anything else is kept
/// as `Other` (logged, treated as running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmissionStatus {
    Submitted,
    Submitting,
    Queued,
    Running,
    PartiallyEvaluated,
    Finished,
    Failed,
    Cancelled,
    Resuming,
    Archived,
    Other(String),
}

impl SubmissionStatus {
    pub fn parse(s: &str) -> Self {
        use SubmissionStatus::*;
        match s.to_ascii_lowercase().as_str() {
            "submitted" => Submitted,
            "submitting" => Submitting,
            "queued" => Queued,
            "running" => Running,
            "partially_evaluated" => PartiallyEvaluated,
            "finished" => Finished,
            "failed" => Failed,
            "cancelled" => Cancelled,
            "resuming" => Resuming,
            "archived" => Archived,
            _ => Other(s.chars().filter(|c| !c.is_control()).take(40).collect()),
        }
    }

    pub fn as_str(&self) -> &str {
        use SubmissionStatus::*;
        match self {
            Submitted => "submitted",
            Submitting => "submitting",
            Queued => "queued",
            Running => "running",
            PartiallyEvaluated => "partially_evaluated",
            Finished => "finished",
            Failed => "failed",
            Cancelled => "cancelled",
            Resuming => "resuming",
            Archived => "archived",
            Other(s) => s,
        }
    }

    /// Whether EvalAI shows `f` (the final PUT took).
    pub fn is(&self, f: FinalStatus) -> bool {
        matches!(
            (self, f),
            (SubmissionStatus::Finished, FinalStatus::Finished)
                | (SubmissionStatus::Failed, FinalStatus::Failed)
                | (SubmissionStatus::Cancelled, FinalStatus::Cancelled)
        )
    }
}

impl std::fmt::Display for SubmissionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status GET's answer: the status and whether `started_at` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub status: SubmissionStatus,
    pub started: bool,
}

impl Status {
    /// Statuses after which a partial PUT would overwrite a decision made elsewhere.
    pub fn is_terminal(&self) -> bool {
        use SubmissionStatus::*;
        matches!(self.status, Cancelled | Finished | Failed | Archived)
    }

    pub fn is_cancelled(&self) -> bool {
        self.status == SubmissionStatus::Cancelled
    }

    /// Whether the start PATCH to `running` is due: a fresh or re-run submission (`submitted`, `queued`: a re-run
    /// inherits the original's `started_at`, so it cannot decide), or a resumed one that never got a start time.
    pub fn wants_start(&self) -> bool {
        match self.status {
            SubmissionStatus::Submitted | SubmissionStatus::Queued => true,
            SubmissionStatus::Resuming => !self.started,
            _ => false,
        }
    }
}

/// Why a request failed for good (after retries, or at once for 4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("EvalAI refused the host token ({status}): {detail}; check EVALAI_AUTH_TOKEN (operator error)")]
    Auth { status: u16, detail: String },
    #[error("EvalAI rejected the request ({status}): {detail}")]
    Rejected { status: u16, detail: String },
    #[error(
        "EvalAI answered {status} with a redirect to {location}; redirects are not followed: set EVALAI_API_SERVER \
         to the address EvalAI serves (operator error)"
    )]
    Redirect { status: u16, location: String },
    #[error("EvalAI unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: usize, last: String },
}

/// One attempt's failure: worth another attempt, or final.
enum AttemptError {
    Retry(String),
    Fatal(RequestError),
}

/// The reason EvalAI gives in an error body: `error`, `detail`, field errors, or HTML (cut short).
fn detail(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(o)) => {
            for k in ["error", "detail"] {
                if let Some(serde_json::Value::String(s)) = o.get(k) {
                    return s.chars().take(300).collect();
                }
            }
            serde_json::Value::Object(o).to_string().chars().take(300).collect()
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

impl EvalAiSettings {
    /// The least time between two partial GET + PUT pairs: two requests' share of the minute.
    pub fn pair_spacing(&self) -> Duration {
        Duration::from_secs_f64(120.0 / f64::from(self.rpm.max(1)))
    }
}

/// What the GET before a write decided.
enum Guarded {
    /// The write was sent and acknowledged.
    Sent,
    /// The GET's status made the write pointless (cancelled, final elsewhere, already started).
    Skipped(Status),
}

/// The EvalAI sink: one task that owns the budget and every request of this submission.
pub struct EvalAiSink<T: Transport> {
    transport: T,
    cfg: EvalAiSettings,
    budget: Budget,
    /// Digest of the last payload EvalAI acknowledged.
    sent: Option<u64>,
    /// Cancelled or finished: no more partial PUTs.
    terminal: bool,
    /// No publishing attempt before this (backoff after a failed one).
    not_before: Instant,
    /// When the next periodic status GET is due (set after every status attempt, failed ones too).
    next_status: Instant,
    /// When the last partial pair started (pacing).
    last_pair: Option<Instant>,
    failures: usize,
    /// Where the final status that EvalAI was given is told (the DynamoDB record follows it).
    decision: Option<FinalDecision>,
}

impl<T: Transport> EvalAiSink<T> {
    pub fn new(transport: T, cfg: EvalAiSettings) -> Self {
        let budget = Budget::new(cfg.rpm);
        EvalAiSink {
            transport,
            cfg,
            budget,
            sent: None,
            terminal: false,
            not_before: Instant::now(),
            next_status: Instant::now(),
            last_pair: None,
            failures: 0,
            decision: None,
        }
    }

    /// Tells `decision` the final status sent to EvalAI (or, when EvalAI could not be reached, the run's own).
    pub fn with_decision(mut self, decision: FinalDecision) -> Self {
        self.decision = Some(decision);
        self
    }

    /// A sink restarted after its predecessor died: nothing is known of what that one spent, so the whole budget
    /// is taken as spent for a full window.
    pub fn restarted(mut self) -> Self {
        self.budget.spend_all(Instant::now());
        self
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

    /// One attempt within the budget: waits for a slot, spends it, sends, classifies the answer.
    async fn attempt(&mut self, req: &Request) -> Result<Response, AttemptError> {
        sleep_until(self.budget.ready_at(Instant::now(), 1)).await;
        self.budget.spend(Instant::now());
        crate::metrics::evalai_budget(&self.budget);
        match self.transport.send(req).await {
            Ok(r) if (200..300).contains(&r.status) => Ok(r),
            Ok(r) if r.status == 429 => {
                let wait = r.retry_after.unwrap_or(Duration::from_secs(60)).min(MAX_RETRY_AFTER);
                warn!(method = req.method.as_str(), path = %req.path, wait_s = wait.as_secs(), "EvalAI throttled us (429); pausing every request");
                self.budget.pause_until(Instant::now() + wait);
                Err(AttemptError::Retry(format!("429 {}", detail(&r.body))))
            }
            Ok(r) if r.status == 401 || r.status == 403 => {
                Err(AttemptError::Fatal(RequestError::Auth { status: r.status, detail: detail(&r.body) }))
            }
            Ok(r) if (300..400).contains(&r.status) => Err(AttemptError::Fatal(RequestError::Redirect {
                status: r.status,
                location: r.location.unwrap_or_else(|| "(no Location)".into()),
            })),
            Ok(r) if r.status < 500 => {
                Err(AttemptError::Fatal(RequestError::Rejected { status: r.status, detail: detail(&r.body) }))
            }
            Ok(r) => Err(AttemptError::Retry(format!("{} {}", r.status, detail(&r.body)))),
            Err(e) => Err(AttemptError::Retry(e.to_string())),
        }
    }

    /// Sends one request within the budget, retrying what is worth retrying (GETs: a write goes through
    /// [`Self::guarded`]).
    async fn request(&mut self, req: Request) -> Result<Response, RequestError> {
        let mut delays = self.cfg.retry.delays();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match self.attempt(&req).await {
                Ok(r) => return Ok(r),
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Retry(f)) => f,
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

    /// One status GET attempt; the next periodic GET is a period after it, whatever its outcome.
    async fn status_attempt(&mut self) -> Result<Status, AttemptError> {
        let req = Request { method: Method::Get, path: self.submission_path(), body: None };
        let resp = self.attempt(&req).await;
        self.next_status = Instant::now() + self.cfg.status_period;
        parse_status(&resp?).map_err(AttemptError::Fatal)
    }

    /// GETs the submission's status, retrying.
    async fn fetch_status(&mut self) -> Result<Status, RequestError> {
        let req = Request { method: Method::Get, path: self.submission_path(), body: None };
        let resp = self.request(req).await;
        self.next_status = Instant::now() + self.cfg.status_period;
        parse_status(&resp?)
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
        if st.is_cancelled() && !self.terminal {
            info!("EvalAI reports the submission cancelled");
            self.terminal = true;
            let _ = events.send(SinkEvent::Cancelled).await;
        } else if st.is_terminal() && !self.terminal {
            warn!(status = %st.status, "EvalAI reports a final status set elsewhere; no more partial updates");
            self.terminal = true;
        }
        if !st.is_cancelled() {
            let _ = events.send(SinkEvent::Status { status: st.status.clone() }).await;
        }
    }

    /// A write that must not undo a decision made on EvalAI: each attempt, retries included, is a status GET
    /// followed at once by the write that `write` builds from that status (`None`: skip it). Room for both
    /// requests is reserved before the GET, so nothing of ours comes between them.
    async fn guarded(
        &mut self,
        what: &'static str,
        events: &mpsc::Sender<SinkEvent>,
        mut write: impl FnMut(&Status) -> Option<Request>,
    ) -> Result<Guarded, RequestError> {
        let mut delays = self.cfg.retry.delays();
        let mut attempts = 0;
        loop {
            sleep_until(self.budget.ready_at(Instant::now(), 2)).await;
            attempts += 1;
            let failure = match self.status_attempt().await {
                Ok(st) => {
                    self.observe(&st, events).await;
                    match write(&st) {
                        None => return Ok(Guarded::Skipped(st)),
                        Some(req) => match self.attempt(&req).await {
                            Ok(_) => return Ok(Guarded::Sent),
                            Err(AttemptError::Fatal(e)) => return Err(e),
                            Err(AttemptError::Retry(f)) => f,
                        },
                    }
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Retry(f)) => f,
            };
            match delays.next() {
                Some(d) => {
                    debug!(request = what, error = %failure, retry_in_ms = d.as_millis() as u64, "EvalAI request failed; retrying with a new status GET");
                    tokio::time::sleep(d).await;
                }
                None => return Err(RequestError::Unavailable { attempts, last: failure }),
            }
        }
    }

    /// Start: mark the submission `running` when its status says it has not started (PATCH right after a GET).
    async fn start(&mut self, events: &mpsc::Sender<SinkEvent>) {
        if !self.cfg.start_patch {
            self.refresh(events).await;
            return;
        }
        let body = Body::json(&StartPatch { submission: self.cfg.submission_id, submission_status: "running" }, 64);
        let path = self.partial_path();
        let patch = |st: &Status| {
            st.wants_start().then(|| Request { method: Method::Patch, path: path.clone(), body: Some(body.clone()) })
        };
        match self.guarded("start PATCH", events, patch).await {
            Ok(Guarded::Sent) => info!("marked the submission running on EvalAI (its start time is now set)"),
            Ok(Guarded::Skipped(st)) => {
                debug!(status = %st.status, started = st.started, "not marking the submission running")
            }
            Err(e) => log_failure("start PATCH", &e),
        }
    }

    /// One partial update: a status GET right before it, then the PUT unless the GET says stop.
    async fn publish(&mut self, seq: u64, outputs: &Outputs, events: &mpsc::Sender<SinkEvent>) {
        self.last_pair = Some(Instant::now());
        let update = PartialUpdate {
            submission: self.cfg.submission_id,
            submission_status: "PARTIALLY_EVALUATED",
            challenge_phase: self.cfg.track_id,
            stdout: &outputs.stdout,
            result: &outputs.results,
            stderr: &outputs.stderr,
            metadata: &outputs.merged,
        };
        let body =
            Body::json(&update, body_size_hint(&[&outputs.stdout, &outputs.results, &outputs.stderr, &outputs.merged]));
        let path = self.partial_path();
        let put = |st: &Status| {
            (!st.is_terminal()).then(|| Request { method: Method::Put, path: path.clone(), body: Some(body.clone()) })
        };
        match self.guarded("partial PUT", events, put).await {
            Ok(Guarded::Sent) => {
                self.sent = Some(outputs.digest());
                self.failures = 0;
                info!(seq, "partial results published to EvalAI");
                crate::metrics::evalai_published(seq);
                let _ = events.send(SinkEvent::Published { seq }).await;
            }
            Ok(Guarded::Skipped(st)) => {
                debug!(status = %st.status, "partial PUT dropped: the submission is final on EvalAI")
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
        !self.terminal && snap.outputs.as_ref().is_some_and(|o| o.refused.is_none() && Some(o.digest()) != self.sent)
    }

    /// The terminal update (post-run step): each try is a status GET, the PUT of update_submission (CANCELLED when
    /// that GET says cancelled: a cancel is final), then a GET that checks EvalAI shows it; 5 tries.
    async fn send_final_status(
        &mut self,
        proposed: FinalStatus,
        outputs: Option<&Outputs>,
        reason: &str,
        events: &mpsc::Sender<SinkEvent>,
    ) {
        let empty = Outputs::default();
        let o = outputs.unwrap_or(&empty);
        let path = self.final_path();
        let (submission, phase) = (self.cfg.submission_id.to_string(), self.cfg.track_id.to_string());
        let mut decided = proposed;
        for attempt in 1..=5 {
            let mut chosen = proposed;
            let put = |st: &Status| {
                chosen = if st.is_cancelled() { FinalStatus::Cancelled } else { proposed };
                let update = FinalUpdate {
                    submission: submission.clone(),
                    challenge_phase: phase.clone(),
                    submission_status: chosen.as_str(),
                    result: &o.results,
                    stdout: &o.stdout,
                    stderr: &o.stderr,
                    environment_log: &o.environment_log,
                    metadata: &o.merged,
                };
                let strings = [&o.results, &o.stdout, &o.stderr, &o.environment_log, &o.merged];
                let body = Body::json(&update, body_size_hint(&strings));
                Some(Request { method: Method::Put, path: path.clone(), body: Some(body) })
            };
            let outcome = self.guarded("final status PUT", events, put).await;
            if chosen != proposed {
                warn!(run = %proposed, sent = %chosen, "EvalAI says the submission is cancelled: a cancel is final");
            }
            decided = chosen;
            if let Err(e) = outcome {
                log_failure("final status PUT", &e);
                if matches!(
                    e,
                    RequestError::Auth { .. } | RequestError::Rejected { .. } | RequestError::Redirect { .. }
                ) {
                    break;
                }
                continue;
            }
            self.decide(chosen);
            match self.fetch_status().await {
                Ok(st) if st.status.is(chosen) => {
                    info!(status = %chosen, reason, "final status set on EvalAI");
                    return;
                }
                Ok(st) => warn!(attempt, want = %chosen, got = %st.status, "EvalAI does not show the final status yet"),
                Err(e) => log_failure("final status check", &e),
            }
        }
        self.decide(decided);
        error!(status = %decided, "could not confirm the final status on EvalAI after 5 tries");
    }

    fn decide(&self, status: FinalStatus) {
        if let Some(d) = &self.decision {
            d.send_replace(Some(status));
        }
    }

    async fn finish(&mut self, snap: &Snapshot, end: &End, events: &mpsc::Sender<SinkEvent>) {
        let final_status = if self.cfg.final_status { end.final_status() } else { None };
        // With a final status to send, the final PUT carries the newest outputs: a partial PUT first would only
        // spend the budget.
        if final_status.is_none()
            && !matches!(end, End::Cancelled { .. })
            && let Some(o) = snap.outputs.clone()
            && self.wants_publish(snap)
        {
            self.publish(snap.seq, &o, events).await;
        }
        if let Some(status) = final_status {
            let reason = match end {
                End::Completed { reason, .. } | End::Cancelled { reason } => reason.as_str(),
                _ => "",
            };
            self.send_final_status(status, snap.outputs.as_deref(), reason, events).await;
        }
    }

    /// When the next partial pair may go: paced, within the budget, after any backoff.
    fn pair_at(&mut self, now: Instant) -> Instant {
        let paced = self.last_pair.map_or(now, |t| t + self.cfg.pair_spacing());
        paced.max(self.not_before).max(self.budget.ready_at(now, 2))
    }

    /// When the periodic status GET may go: when it is due and three slots are free, so that two stay for a GET +
    /// PUT pair, whether a change waits now or comes next (with a smaller budget: when the window is empty). A
    /// GET deferred so is not missed: the pair's own GET checks the status too.
    fn status_at(&mut self, now: Instant) -> Instant {
        self.next_status.max(self.budget.ready_at(now, 3))
    }
}

/// The size to reserve for an update's body: its strings, an eighth more for the escapes of the JSON text they are
/// (quotes and line ends in the merged file, the summary's lines), and the fields' names. An estimate: a body that
/// outgrows it is reallocated once, as before.
fn body_size_hint(strings: &[&String]) -> usize {
    let text: usize = strings.iter().map(|s| s.len()).sum();
    text + text / 8 + 512
}

fn parse_status(resp: &Response) -> Result<Status, RequestError> {
    let v: serde_json::Value = serde_json::from_str(&resp.body).map_err(|e| RequestError::Rejected {
        status: resp.status,
        detail: format!("the submission is not JSON: {e}"),
    })?;
    let status = SubmissionStatus::parse(v.get("status").and_then(|s| s.as_str()).unwrap_or(""));
    let started = v.get("started_at").is_some_and(|s| !s.is_null());
    Ok(Status { status, started })
}

fn log_failure(what: &str, e: &RequestError) {
    match e {
        RequestError::Auth { .. } | RequestError::Redirect { .. } => {
            error!(request = what, error = %e, "EvalAI request refused")
        }
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
            let now = Instant::now();
            if self.wants_publish(&snap) {
                let pair_at = self.pair_at(now);
                if pair_at <= now {
                    if let Some(o) = snap.outputs.clone() {
                        self.publish(snap.seq, &o, &events).await;
                    }
                    continue;
                }
                // Wait for the pair's turn; a newer snapshot meanwhile replaces this one (coalescing).
                let status_at = self.status_at(now);
                tokio::select! {
                    _ = sleep_until(pair_at) => {}
                    r = snapshots.changed() => if r.is_err() { return },
                    _ = sleep_until(status_at), if status_at < pair_at => { self.refresh(&events).await; }
                }
                continue;
            }
            // Idle: the periodic GET waits for the budget too, but a new snapshot (or the end) still wakes us.
            let status_at = self.status_at(now);
            tokio::select! {
                r = snapshots.changed() => if r.is_err() { return },
                _ = sleep_until(status_at) => { self.refresh(&events).await; }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim::{Fault, Seen, SimEvalAi};
    use super::*;

    fn settings(rpm: u32, final_status: bool) -> EvalAiSettings {
        EvalAiSettings {
            challenge_id: 1,
            submission_id: 2,
            track_id: 3,
            rpm,
            status_period: Duration::from_secs(20),
            start_patch: true,
            final_status,
            retry: RetryPolicy::default(),
        }
    }

    fn outputs(tag: &str) -> Arc<Outputs> {
        Arc::new(Outputs {
            merged: tag.into(),
            results: "[]".into(),
            stdout: tag.into(),
            stderr: String::new(),
            environment_log: String::new(),
            refused: None,
        })
    }

    /// A sink on `sim`, its snapshot sender, its events and the decision it reports.
    struct Run {
        sim: Arc<SimEvalAi>,
        snaps: watch::Sender<Arc<Snapshot>>,
        events: mpsc::Receiver<SinkEvent>,
        decision: FinalDecision,
        task: tokio::task::JoinHandle<()>,
        seq: u64,
    }

    impl Run {
        fn start(sim: SimEvalAi, cfg: EvalAiSettings) -> Run {
            let sim = Arc::new(sim);
            let (snaps, rx) = watch::channel(Arc::new(Snapshot::default()));
            let (tx, events) = mpsc::channel(1024);
            let decision: FinalDecision = Arc::new(watch::channel(None).0);
            let sink = EvalAiSink::new(sim.clone(), cfg).with_decision(decision.clone());
            let task = tokio::spawn(sink.run(rx, tx));
            Run { sim, snaps, events, decision, task, seq: 0 }
        }

        fn send(&mut self, outputs: Option<Arc<Outputs>>, end: Option<End>) {
            self.seq += 1;
            let snap = Snapshot { seq: self.seq, outputs, end, verify_cancel: false };
            self.snaps.send_replace(Arc::new(snap));
        }

        async fn end(mut self, end: End) -> (Vec<Seen>, Option<FinalStatus>, Vec<SinkEvent>) {
            let outputs = self.snaps.borrow().outputs.clone();
            self.send(outputs, Some(end));
            self.task.await.unwrap();
            let mut events = Vec::new();
            while let Ok(e) = self.events.try_recv() {
                events.push(e);
            }
            (self.sim.log(), *self.decision.borrow(), events)
        }
    }

    /// Every write is the request right after a status GET, with no more than the model's latency between them.
    fn assert_every_write_follows_its_own_get(log: &[Seen]) {
        for (i, w) in log.iter().enumerate().filter(|(_, r)| r.is_write()) {
            let get = i.checked_sub(1).map(|j| &log[j]);
            assert!(
                get.is_some_and(|g| g.method == Method::Get && w.at - g.at <= Duration::from_millis(100)),
                "write #{i} {:?} does not directly follow a GET: {log:#?}",
                w.method
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_during_retries_is_never_undone() {
        // The PUT meets a 500, then a timeout that the server applied, then a 429; each time the participant cancels
        // on the web UI once the faulted try is answered and before the retry (`Fault::Then`). No write may follow.
        for fault in [
            Fault::Status(500, None),
            Fault::Timeout { after: Duration::from_secs(20), applied: true },
            Fault::Status(429, Some(Duration::from_secs(7))),
        ] {
            let sim = SimEvalAi::new("running", true);
            sim.fault(Some(Method::Put), Fault::Then(Box::new(fault.clone()), "cancelled"));
            let mut run = Run::start(sim, settings(6, true));
            run.send(Some(outputs("a")), None);
            tokio::time::sleep(Duration::from_secs(120)).await;
            let (log, decision, events) =
                run.end(End::Completed { finished: true, reason: "every worker finished".into() }).await;
            let faulted = log.iter().position(|r| r.fault.is_some());
            let faulted = faulted.unwrap_or_else(|| panic!("{fault:?}: the PUT met its fault: {log:#?}"));
            let late: Vec<&Seen> = log[faulted + 1..].iter().filter(|r| r.is_partial_put()).collect();
            assert!(late.is_empty(), "{fault:?}: partial PUTs after the cancel: {late:#?}");
            assert!(log.iter().all(|r| r.method != Method::Patch), "{fault:?}: no PATCH on a running submission");
            let finals: Vec<&Seen> = log.iter().filter(|r| r.is_final_put()).collect();
            assert_eq!(finals.len(), 1, "{fault:?}: one final PUT: {log:#?}");
            assert_eq!(finals[0].status.as_deref(), Some("cancelled"), "{fault:?}: a cancel is final");
            assert_eq!(decision, Some(FinalStatus::Cancelled), "{fault:?}: the DynamoDB record is told CANCELLED");
            assert_eq!(run_status(&log), "cancelled");
            assert!(events.contains(&SinkEvent::Cancelled), "{fault:?}: the daemon is told of the cancel");
            assert_every_write_follows_its_own_get(&log);
        }
    }

    /// The last status the model's log implies (what the final GET saw).
    fn run_status(log: &[Seen]) -> &str {
        log.iter().rev().find_map(|r| r.status.as_deref()).unwrap_or("")
    }

    #[tokio::test(start_paused = true)]
    async fn every_attempt_of_a_write_is_a_fresh_get_and_put() {
        let sim = SimEvalAi::new("submitted", false);
        sim.fault(Some(Method::Patch), Fault::Status(502, None));
        sim.fault(Some(Method::Put), Fault::Timeout { after: Duration::from_secs(20), applied: false });
        sim.fault(Some(Method::Put), Fault::Status(503, None));
        let mut run = Run::start(sim, settings(6, false));
        run.send(Some(outputs("a")), None);
        tokio::time::sleep(Duration::from_secs(300)).await;
        let log = run.sim.log();
        let writes: Vec<(Method, bool)> =
            log.iter().filter(|r| r.is_write()).map(|r| (r.method, r.fault.is_some())).collect();
        assert_eq!(
            writes,
            [
                (Method::Patch, true),
                (Method::Patch, false),
                (Method::Put, true),
                (Method::Put, true),
                (Method::Put, false)
            ],
            "{log:#?}"
        );
        assert_every_write_follows_its_own_get(&log);
        assert_eq!(run.sim.status(), "partially_evaluated");
    }

    #[tokio::test(start_paused = true)]
    async fn final_status_sends_no_partial_put_first() {
        let mut run = Run::start(SimEvalAi::new("submitted", false), settings(6, true));
        run.send(Some(outputs("a")), Some(End::Completed { finished: true, reason: "done".into() }));
        let (log, decision, _) = run.end(End::Completed { finished: true, reason: "done".into() }).await;
        let kinds: Vec<String> =
            log.iter().map(|r| format!("{} {}", r.method.as_str(), r.status.as_deref().unwrap_or(""))).collect();
        assert_eq!(kinds, ["GET ", "PATCH running", "GET ", "PUT finished", "GET "], "{log:#?}");
        assert!(log.iter().all(|r| !r.is_partial_put()));
        assert_eq!(decision, Some(FinalStatus::Finished));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_final_put_that_evalai_refuses_is_not_retried_and_the_run_decides() {
        let sim = SimEvalAi::new("running", true);
        sim.fault(Some(Method::Put), Fault::Status(400, None));
        let run = Run::start(sim, settings(6, true));
        let (log, decision, _) = run.end(End::Completed { finished: false, reason: "worker 2 failed".into() }).await;
        assert_eq!(log.iter().filter(|r| r.is_final_put()).count(), 1, "a 400 is final: {log:#?}");
        assert_eq!(decision, Some(FinalStatus::Failed));
    }

    #[tokio::test(start_paused = true)]
    async fn the_start_patch_follows_the_status_not_started_at() {
        // (status, started_at set, PATCH expected): a re-run is `submitted` or `queued` with the original's start.
        let cases = [
            ("submitted", true, true),
            ("queued", true, true),
            ("submitted", false, true),
            ("resuming", false, true),
            ("resuming", true, false),
            ("running", true, false),
            ("partially_evaluated", true, false),
            ("cancelled", false, false),
        ];
        for (status, started, patch) in cases {
            let run = Run::start(SimEvalAi::new(status, started), settings(6, false));
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (log, _, _) = run.end(End::Terminated).await;
            let patches = log.iter().filter(|r| r.method == Method::Patch).count();
            assert_eq!(patches, usize::from(patch), "{status} (started_at set: {started}): {log:#?}");
            assert_every_write_follows_its_own_get(&log);
        }
    }

    #[test]
    fn retry_after_is_clamped_and_never_overflows() {
        assert_eq!(parse_retry_after("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("99999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("99999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("37"), Some(Duration::from_secs(37)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_retry_after_pauses_at_most_the_clamp() {
        let sim = SimEvalAi::new("running", true);
        sim.fault(Some(Method::Put), Fault::Status(429, parse_retry_after("18446744073709551615")));
        let mut run = Run::start(sim, settings(6, false));
        run.send(Some(outputs("a")), None);
        tokio::time::sleep(Duration::from_secs(400)).await;
        let log = run.sim.log();
        let t429 = log.iter().find(|r| r.fault.is_some()).expect("the 429").at;
        let next = log.iter().find(|r| r.at > t429).expect("requests go on after the pause").at;
        assert!(next - t429 >= MAX_RETRY_AFTER && next - t429 < MAX_RETRY_AFTER + Duration::from_secs(10));
        assert!(log.iter().any(|r| r.is_partial_put() && r.fault.is_none()), "the update went through: {log:#?}");
        assert!(!run.task.is_finished(), "the sink lives on");
    }

    #[tokio::test(start_paused = true)]
    async fn changes_30_s_or_more_apart_find_their_two_slots() {
        // Gaps of 30 to 45 s: with a status GET due every 20 s, two idle GETs in a long gap would leave one slot.
        let mut run = Run::start(SimEvalAi::new("running", true), settings(6, false));
        let mut changes = Vec::new();
        for k in 0..60u64 {
            run.send(Some(outputs(&format!("v{k}"))), None);
            changes.push((format!("v{k}"), Instant::now()));
            tokio::time::sleep(Duration::from_secs(30 + (k * 7) % 16)).await;
        }
        let log = run.sim.log();
        for (tag, at) in changes {
            let put = log.iter().find(|r| r.is_partial_put() && r.metadata.as_deref() == Some(tag.as_str()));
            let put = put.unwrap_or_else(|| panic!("{tag} was never sent: {log:#?}"));
            assert!(put.at - at < Duration::from_secs(1), "{tag} waited {:?} for its slots", put.at - at);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pairs_are_paced_and_the_idle_minute_is_status_gets_only() {
        let mut run = Run::start(SimEvalAi::new("running", true), settings(6, false));
        let t0 = Instant::now();
        // Churn: a change every 5 s for 10 minutes.
        for k in 0..120 {
            run.send(Some(outputs(&format!("v{k}"))), None);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let busy_end = Instant::now();
        tokio::time::sleep(Duration::from_secs(120)).await;
        let log = run.sim.log();
        for (i, r) in log.iter().enumerate() {
            let in_window = log[i..].iter().take_while(|s| s.at < r.at + Duration::from_secs(60)).count();
            assert!(in_window <= 6, "more than 6 requests in the minute from {:?}", r.at - t0);
        }
        let puts: Vec<Instant> = log.iter().filter(|r| r.is_partial_put()).map(|r| r.at).collect();
        assert!(puts.windows(2).all(|w| w[1] - w[0] >= Duration::from_secs(20)), "pairs at least 20 s apart");
        assert!(puts.len() >= 29, "the budget is used: {} PUTs in 10 minutes", puts.len());
        // The last minute: no change, so status GETs alone, one every 20 s.
        let idle: Vec<&Seen> = log.iter().filter(|r| r.at > busy_end + Duration::from_secs(60)).collect();
        assert!(idle.iter().all(|r| r.method == Method::Get), "{idle:#?}");
        assert_eq!(idle.len(), 3, "one status GET every 20 s: {idle:#?}");
    }
}

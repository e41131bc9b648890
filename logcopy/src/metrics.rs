//! Prometheus metrics of `logcopy run`: `--metrics-addr HOST:PORT` (`METRICS_ADDR`) serves them, in the OpenMetrics
//! text format, at `GET /metrics`. Off by default: then no listener is opened and every recording function below
//! returns after one atomic load (the registry is never created).
//!
//! What is measured (every name and its meaning: docs/configuration.md#metrics):
//! - EvalAI, S3 and DynamoDB requests by endpoint (or operation) and outcome, counted by wrappers around the
//!   transports and stores ([`MeteredEvalAi`], [`MeteredStore`], [`MeteredTable`]) that the sinks are built with;
//! - the EvalAI request budget: requests in the current 60 s window, and its limit (a copy of the sink's budget,
//!   read at each scrape, so the count falls as requests leave the window);
//! - partial results published and the latency from the snapshot that first carried them (right after the merge
//!   that produced them) to EvalAI's acknowledgement of the PUT;
//! - uploads to S3 and their bytes;
//! - per worker: routes done and assigned, crashes and restarts (from the markers of the status folder);
//! - the daemon's state: `logcopy_state{state="running"|"finishing"|"ended"}`, 1 for the current one.
//!
//! The listener is a minimal HTTP/1.1 server on the runtime's one thread: each connection is a task of its own with
//! a time limit ([`CONNECTION_TIMEOUT`]), reads at most [`MAX_REQUEST_BYTES`] of request head within
//! [`READ_TIMEOUT`], answers once and closes; at most [`MAX_CONNECTIONS`] are served at a time (more are closed at
//! once). A slow or hostile client costs a task and a socket, never the daemon's loop.

use crate::publish::Outputs;
use crate::publish::budget::Budget;
use crate::publish::evalai::{Method, Request, Response, Transport, TransportError};
use crate::publish::store::{
    GetCondition, GetOutcome, MULTIPART_THRESHOLD, ObjectInfo, ObjectStore, PutCondition, PutOutcome, PutStats,
    StoreError,
};
use crate::publish::table::{Condition, ItemKey, ItemStore, TableError, Updated};
use crate::results::pyjson::Value;
use crate::routes::Assigned;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::VecDeque;
use std::fs::File;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use volume::markers::{Role, StatusSet, WorkerId};
use volume::results::Checkpoint;

/// The most of a request's head (request line and headers) that is read.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// The longest wait for a whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest life of a connection, the answer included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; one more is closed without an answer.
pub const MAX_CONNECTIONS: usize = 16;
/// The snapshots remembered for the publish latency (a snapshot older than this many is not timed).
const REMEMBERED_SNAPSHOTS: usize = 64;
/// The publish latency's buckets, in seconds: a pair can wait for the budget (up to a minute and more).
const LATENCY_BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];
/// `Content-Type` of the answer: what `prometheus_client`'s text encoder writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Every metric family exposed (its name in the `# TYPE` line, without a counter's `_total`) and its type.
pub const FAMILIES: [(&str, &str); 14] = [
    ("logcopy_evalai_requests", "counter"),
    ("logcopy_evalai_budget_used_requests", "gauge"),
    ("logcopy_evalai_budget_limit_requests", "gauge"),
    ("logcopy_evalai_publishes", "counter"),
    ("logcopy_evalai_publish_latency_seconds", "histogram"),
    ("logcopy_s3_requests", "counter"),
    ("logcopy_s3_uploads", "counter"),
    ("logcopy_s3_uploaded_bytes", "counter"),
    ("logcopy_dynamodb_requests", "counter"),
    ("logcopy_worker_routes_done", "gauge"),
    ("logcopy_worker_routes_assigned", "gauge"),
    ("logcopy_worker_crashes", "gauge"),
    ("logcopy_worker_restarts", "gauge"),
    ("logcopy_state", "gauge"),
];

const EVALAI_ENDPOINTS: [&str; 4] = ["get_status", "partial_put", "final_put", "patch"];
const EVALAI_OUTCOMES: [&str; 5] = ["ok", "http_4xx", "http_5xx", "timeout", "error"];
const S3_OPS: [&str; 5] = ["put", "multipart", "list", "get", "delete"];
const STORE_OUTCOMES: [&str; 3] = ["ok", "timeout", "error"];
const TABLE_OUTCOMES: [&str; 4] = ["ok", "condition_failed", "timeout", "error"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreOutcome {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabel {
    worker: String,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The daemon's state, as `logcopy_state` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// The loop runs (from the start).
    Running,
    /// An end was reached: the final cycle and the sinks' final work.
    Finishing,
    /// The final flush is over; logcopy exits.
    Ended,
}

impl RunState {
    const ALL: [RunState; 3] = [RunState::Running, RunState::Finishing, RunState::Ended];

    fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Finishing => "finishing",
            RunState::Ended => "ended",
        }
    }
}

/// When each recent snapshot's outputs first appeared, for the publish latency.
#[derive(Default)]
struct Snapshots {
    /// The outputs of the newest snapshot (their address: the loop holds them, so no new outputs can reuse it while
    /// they are current) and when a snapshot first carried them.
    current: Option<(usize, Instant)>,
    /// (snapshot seq, when its outputs first appeared), oldest first.
    since: VecDeque<(u64, Instant)>,
}

struct Metrics {
    registry: Registry,
    evalai_requests: Family<Outcome, Counter>,
    budget_used: Gauge,
    budget_limit: Gauge,
    /// A copy of the EvalAI sink's budget at its last request, read at each scrape.
    budget: Mutex<Option<Budget>>,
    publishes: Counter,
    publish_latency: Histogram,
    snapshots: Mutex<Snapshots>,
    s3_requests: Family<StoreOutcome, Counter>,
    uploads: Counter,
    uploaded_bytes: Counter,
    dynamodb_requests: Family<StoreOutcome, Counter>,
    routes_done: Family<WorkerLabel, Gauge>,
    routes_assigned: Family<WorkerLabel, Gauge>,
    crashes: Family<SideLabel, Gauge>,
    restarts: Family<SideLabel, Gauge>,
    state: Family<StateLabel, Gauge>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("logcopy");
        let m = Metrics {
            evalai_requests: Family::default(),
            budget_used: Gauge::default(),
            budget_limit: Gauge::default(),
            budget: Mutex::new(None),
            publishes: Counter::default(),
            publish_latency: Histogram::new(LATENCY_BUCKETS),
            snapshots: Mutex::new(Snapshots::default()),
            s3_requests: Family::default(),
            uploads: Counter::default(),
            uploaded_bytes: Counter::default(),
            dynamodb_requests: Family::default(),
            routes_done: Family::default(),
            routes_assigned: Family::default(),
            crashes: Family::default(),
            restarts: Family::default(),
            state: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "evalai_requests",
            "EvalAI requests sent, by endpoint (get_status, partial_put, final_put, patch) and outcome (ok, http_4xx, \
             http_5xx, timeout, error)",
            m.evalai_requests.clone(),
        );
        r.register(
            "evalai_budget_used_requests",
            "EvalAI requests of this submission in the current 60 s window",
            m.budget_used.clone(),
        );
        r.register(
            "evalai_budget_limit_requests",
            "EvalAI requests allowed in any 60 s window (--evalai-rpm)",
            m.budget_limit.clone(),
        );
        r.register("evalai_publishes", "Partial results published to EvalAI (PUTs acknowledged)", m.publishes.clone());
        r.register_with_unit(
            "evalai_publish_latency",
            "From the merge that produced new results to EvalAI's acknowledgement of their partial PUT",
            Unit::Seconds,
            m.publish_latency.clone(),
        );
        r.register(
            "s3_requests",
            "S3 operations, by op (put, multipart, list, get, delete) and outcome (ok, timeout, error; for the \
             conditional requests of an Indexed Job also not_modified, precondition_failed, missing)",
            m.s3_requests.clone(),
        );
        r.register("s3_uploads", "Files uploaded to S3", m.uploads.clone());
        r.register_with_unit("s3_uploaded", "Bytes uploaded to S3", Unit::Bytes, m.uploaded_bytes.clone());
        r.register(
            "dynamodb_requests",
            "DynamoDB requests, by op (update_item) and outcome (ok, condition_failed, timeout, error)",
            m.dynamodb_requests.clone(),
        );
        r.register(
            "worker_routes_done",
            "Routes the worker recorded in its results file (of those it was given, with --route-count)",
            m.routes_done.clone(),
        );
        r.register(
            "worker_routes_assigned",
            "Route runs the worker was given (--route-count), else the total its results file announces",
            m.routes_assigned.clone(),
        );
        r.register("worker_crashes", "Crash markers of the worker's side (role) on the volume", m.crashes.clone());
        r.register(
            "worker_restarts",
            "Attempts of the worker's side (role) started after its first (start markers beyond the first)",
            m.restarts.clone(),
        );
        r.register("state", "The daemon's state: 1 for the current one (running, finishing, ended)", m.state.clone());
        // Every known series exists from the start, at 0: a rate over the first increment is then defined.
        for endpoint in EVALAI_ENDPOINTS {
            for outcome in EVALAI_OUTCOMES {
                let _ = m.evalai_requests.get_or_create(&Outcome { endpoint, outcome });
            }
        }
        for op in S3_OPS {
            for outcome in STORE_OUTCOMES {
                let _ = m.s3_requests.get_or_create(&StoreOutcome { op, outcome });
            }
        }
        for outcome in TABLE_OUTCOMES {
            let _ = m.dynamodb_requests.get_or_create(&StoreOutcome { op: "update_item", outcome });
        }
        m.set_state(RunState::Running);
        Metrics { registry, ..m }
    }

    fn set_state(&self, now: RunState) {
        for s in RunState::ALL {
            self.state.get_or_create(&StateLabel { state: s.as_str() }).set(i64::from(s == now));
        }
    }

    /// The exposition, with the budget's window read now.
    fn encode(&self) -> String {
        if let Some(b) = lock(&self.budget).as_mut() {
            self.budget_used.set(b.used(tokio::time::Instant::now()) as i64);
            self.budget_limit.set(b.limit() as i64);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!("cannot encode the metrics: {e}");
        }
        out
    }
}

/// The metrics, when `--metrics-addr` turned them on.
fn on() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Turns the recording on without serving it (for the heartbeat log line, which reads the same counters).
pub fn record() {
    METRICS.get_or_init(Metrics::new);
}

/// The operator's heartbeat, one line: the daemon's state, routes done out of assigned (in all and per worker),
/// crashes and restarts, EvalAI's requests, failures and budget, S3 uploads and bytes, DynamoDB requests. `None`
/// while the recording is off.
pub fn heartbeat(workers: u32) -> Option<String> {
    let m = on()?;
    let gauge = |f: &Family<WorkerLabel, Gauge>, w: u32| f.get_or_create(&WorkerLabel { worker: w.to_string() }).get();
    let side = |f: &Family<SideLabel, Gauge>| -> i64 {
        (1..=workers)
            .flat_map(|w| {
                Role::ALL.map(|role| f.get_or_create(&SideLabel { worker: w.to_string(), role: role.as_str() }).get())
            })
            .sum()
    };
    let state = RunState::ALL
        .into_iter()
        .find(|s| m.state.get_or_create(&StateLabel { state: s.as_str() }).get() == 1)
        .map_or("running", RunState::as_str);
    let (mut done, mut assigned, mut per) = (0, 0, Vec::new());
    for w in 1..=workers {
        let (d, a) = (gauge(&m.routes_done, w), gauge(&m.routes_assigned, w));
        done += d;
        assigned += a;
        per.push(format!("{w}: {d}/{a}"));
    }
    let count = |f: &Family<Outcome, Counter>, ok: bool| -> u64 {
        EVALAI_ENDPOINTS
            .iter()
            .flat_map(|e| EVALAI_OUTCOMES.map(|o| (*e, o)))
            .filter(|(_, o)| (*o == "ok") == ok)
            .map(|(endpoint, outcome)| f.get_or_create(&Outcome { endpoint, outcome }).get())
            .sum()
    };
    let store = |f: &Family<StoreOutcome, Counter>, ops: &[&'static str], outcomes: &[&'static str]| -> (u64, u64) {
        let mut n = (0, 0);
        for op in ops {
            for outcome in outcomes {
                let c = f.get_or_create(&StoreOutcome { op, outcome }).get();
                if *outcome == "ok" { n.0 += c } else { n.1 += c }
            }
        }
        n
    };
    let budget = lock(&m.budget)
        .as_mut()
        .map(|b| format!(", budget {}/{} in the last 60 s", b.used(tokio::time::Instant::now()), b.limit()))
        .unwrap_or_default();
    let (s3_ok, s3_failed) = store(&m.s3_requests, &S3_OPS, &STORE_OUTCOMES);
    let (db_ok, db_failed) = store(&m.dynamodb_requests, &["update_item"], &TABLE_OUTCOMES);
    Some(format!(
        "heartbeat: {state}; routes {done}/{assigned} ({}); crashes {}, restarts {}; EvalAI {} requests ({} failed){budget}, \
         {} publishes; S3 {} uploads, {:.1} MiB, {s3_ok} requests ({s3_failed} failed); DynamoDB {db_ok} requests \
         ({db_failed} failed)",
        per.join(", "),
        side(&m.crashes),
        side(&m.restarts),
        count(&m.evalai_requests, true) + count(&m.evalai_requests, false),
        count(&m.evalai_requests, false),
        m.publishes.get(),
        m.uploads.get(),
        m.uploaded_bytes.get() as f64 / (1024.0 * 1024.0),
    ))
}

/// Logs [`heartbeat`] every `period` (the first after one period), for as long as the runtime runs.
pub async fn heartbeat_log(period: std::time::Duration, workers: u32) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(line) = heartbeat(workers) {
            info!("{line}");
        }
    }
}

/// Turns the metrics on and serves them at `addr` (none: off), on the runtime `rt`. `Err` (a configuration error,
/// exit 2) when nothing can listen there.
pub fn listen(addr: Option<SocketAddr>, rt: &tokio::runtime::Runtime) -> Result<(), String> {
    let Some(addr) = addr else { return Ok(()) };
    let bad = |e: std::io::Error| format!("--metrics-addr / METRICS_ADDR: cannot listen on {addr}: {e}");
    let listener = std::net::TcpListener::bind(addr).map_err(bad)?;
    listener.set_nonblocking(true).map_err(bad)?;
    let local = listener.local_addr().map_err(bad)?;
    let listener = {
        let _in_runtime = rt.enter();
        TcpListener::from_std(listener).map_err(bad)?
    };
    let metrics = METRICS.get_or_init(Metrics::new);
    rt.spawn(tracing::Instrument::instrument(serve(listener, metrics), tracing::Span::current()));
    info!(addr = %local, "serving Prometheus metrics at http://{local}/metrics");
    Ok(())
}

async fn serve(listener: TcpListener, m: &'static Metrics) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                warn!("metrics listener: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Over the cap: closed at once (dropped).
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, m)).await;
            drop(slot);
        });
    }
}

/// Reads one request head, answers it, closes.
async fn answer(mut stream: TcpStream, m: &Metrics) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Head::Complete(h))) => h,
        Ok(Ok(Head::TooLarge)) => {
            reply(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"", false).await?;
            // What the client still sends is read and dropped (a little, briefly): closing on unread bytes would
            // reset the connection, and the client could lose the answer.
            let mut sink = [0u8; 4096];
            let drain = async {
                let mut left = 64 * 1024;
                while left > 0 {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left -= n.min(left),
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            return Ok(());
        }
        // Closed before a whole head, a read error, or too slow: nothing to answer.
        Ok(Ok(Head::Closed)) | Ok(Err(_)) | Err(_) => return Ok(()),
    };
    match route(&head) {
        Route::Metrics { head_only } => {
            let body = m.encode();
            reply(&mut stream, "200 OK", CONTENT_TYPE, body.as_bytes(), head_only).await
        }
        Route::Status(status) => reply(&mut stream, status, "text/plain; charset=utf-8", b"", false).await,
    }
}

async fn reply(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).await?;
    stream.shutdown().await
}

enum Head {
    Complete(String),
    TooLarge,
    Closed,
}

/// Reads until the blank line that ends a request head, at most [`MAX_REQUEST_BYTES`].
async fn read_head<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Head> {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Ok(Head::TooLarge);
        }
        let n = r.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        len += n;
        let seen = &buf[..len];
        if let Some(end) = find(seen, b"\r\n\r\n").or_else(|| find(seen, b"\n\n")) {
            return Ok(Head::Complete(String::from_utf8_lossy(&seen[..end]).into_owned()));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    Status(&'static str),
}

/// What a request head asks for: the metrics (GET or HEAD of `/metrics`, any query), or an error status.
fn route(head: &str) -> Route {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Status("400 Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Status("400 Bad Request");
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path != "/metrics" {
        return Route::Status("404 Not Found");
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::Status("405 Method Not Allowed"),
    }
}

// ---- Recording, called from the daemon. Each is one atomic load when the metrics are off. ----

/// The daemon's state changed.
pub fn state(now: RunState) {
    if let Some(m) = on() {
        m.set_state(now);
    }
}

/// The EvalAI sink spent a request of its budget (a copy is kept for the scrapes).
pub fn evalai_budget(budget: &Budget) {
    if let Some(m) = on() {
        *lock(&m.budget) = Some(budget.clone());
    }
}

/// The loop handed snapshot `seq` to the sinks, with these outputs.
pub fn snapshot(seq: u64, outputs: &Option<Arc<Outputs>>) {
    let (Some(m), Some(o)) = (on(), outputs) else { return };
    let mut s = lock(&m.snapshots);
    let addr = Arc::as_ptr(o) as usize;
    let since = match s.current {
        Some((a, t)) if a == addr => t,
        _ => {
            let t = Instant::now();
            s.current = Some((addr, t));
            t
        }
    };
    if s.since.len() == REMEMBERED_SNAPSHOTS {
        s.since.pop_front();
    }
    s.since.push_back((seq, since));
}

/// EvalAI acknowledged the partial PUT of snapshot `seq`'s outputs.
pub fn evalai_published(seq: u64) {
    let Some(m) = on() else { return };
    m.publishes.inc();
    let since = lock(&m.snapshots).since.iter().find(|(s, _)| *s == seq).map(|(_, t)| *t);
    if let Some(t) = since {
        m.publish_latency.observe(t.elapsed().as_secs_f64());
    }
}

/// The markers of the status folder, read for `workers` workers.
pub fn worker_markers(markers: &StatusSet, workers: u32) {
    let Some(m) = on() else { return };
    for i in 1..=workers {
        for role in Role::ALL {
            let label = SideLabel { worker: i.to_string(), role: role.as_str() };
            let crashes = markers.crashes(role, WorkerId(i)).len();
            let restarts = markers.starts(role, WorkerId(i)).len().saturating_sub(1);
            m.crashes.get_or_create(&label).set(crashes as i64);
            m.restarts.get_or_create(&label).set(restarts as i64);
        }
    }
}

/// Each worker's routes: (worker, the last good parse of its results file, the routes it was given). Done: the
/// records of the routes it was given (of any route without `--route-count`), as `logcopy status` counts them;
/// assigned: its route runs, else the total its file announces.
pub fn worker_routes<'a>(workers: impl IntoIterator<Item = (u32, Option<&'a Value>, Option<Assigned>)>) {
    let Some(m) = on() else { return };
    for (id, good, given) in workers {
        let label = WorkerLabel { worker: id.to_string() };
        let cp = good.and_then(Checkpoint::of);
        let version = good.and_then(crate::results::detect).unwrap_or(crate::cli::DEFAULT_VERSION);
        let done = cp.map_or(0, |c| c.route_ids().filter(|n| given.is_none_or(|a| a.contains(version, n))).count());
        let assigned = given.map(|a| a.runs() as i64).or_else(|| cp.and_then(|c| c.total())).unwrap_or(0);
        m.routes_done.get_or_create(&label).set(done as i64);
        m.routes_assigned.get_or_create(&label).set(assigned);
    }
}

// ---- The wrappers that count requests. ----

/// The endpoint a request of the EvalAI sink is.
fn evalai_endpoint(req: &Request) -> &'static str {
    match req.method {
        Method::Get => "get_status",
        Method::Patch => "patch",
        Method::Put if req.path.contains("update_partially_evaluated_submission") => "partial_put",
        Method::Put => "final_put",
    }
}

fn evalai_outcome(r: &Result<Response, TransportError>) -> &'static str {
    match r {
        Ok(r) if (200..300).contains(&r.status) => "ok",
        Ok(r) if (400..500).contains(&r.status) => "http_4xx",
        Ok(r) if (500..600).contains(&r.status) => "http_5xx",
        Ok(_) => "error",
        Err(TransportError::Timeout) => "timeout",
        Err(_) => "error",
    }
}

/// An EvalAI transport whose requests are counted.
pub struct MeteredEvalAi<T>(pub T);

impl<T: Transport> Transport for MeteredEvalAi<T> {
    async fn send(&self, req: &Request) -> Result<Response, TransportError> {
        let r = self.0.send(req).await;
        if let Some(m) = on() {
            m.evalai_requests
                .get_or_create(&Outcome { endpoint: evalai_endpoint(req), outcome: evalai_outcome(&r) })
                .inc();
        }
        r
    }
}

fn store_outcome<T, E: std::fmt::Display>(r: &Result<T, E>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => {
            let e = e.to_string().to_ascii_lowercase();
            if e.contains("timeout") || e.contains("timed out") { "timeout" } else { "error" }
        }
    }
}

/// An object store whose operations, uploads and bytes are counted.
pub struct MeteredStore<S>(pub S);

impl<S> MeteredStore<S> {
    fn count<T>(&self, op: &'static str, r: &Result<T, StoreError>) {
        if let Some(m) = on() {
            m.s3_requests.get_or_create(&StoreOutcome { op, outcome: store_outcome(r) }).inc();
        }
    }
}

impl<S: ObjectStore> ObjectStore for MeteredStore<S> {
    fn describe(&self) -> String {
        self.0.describe()
    }

    async fn put(&self, key: &str, file: File, len: u64) -> Result<PutStats, StoreError> {
        let r = self.0.put(key, file, len).await;
        self.count(if len >= MULTIPART_THRESHOLD { "multipart" } else { "put" }, &r);
        if let (Some(m), Ok(_)) = (on(), &r) {
            m.uploads.inc();
            m.uploaded_bytes.inc_by(len);
        }
        r
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let r = self.0.list(prefix).await;
        self.count("list", &r);
        r
    }

    async fn get(&self, key: &str, dest: File) -> Result<u64, StoreError> {
        let r = self.0.get(key, dest).await;
        self.count("get", &r);
        r
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        let r = self.0.delete(keys).await;
        self.count("delete", &r);
        r
    }

    async fn put_bytes(&self, key: &str, body: Vec<u8>, cond: PutCondition) -> Result<PutOutcome, StoreError> {
        let len = body.len() as u64;
        let r = self.0.put_bytes(key, body, cond).await;
        if let Some(m) = on() {
            let outcome = match &r {
                Ok(PutOutcome::PreconditionFailed) => "precondition_failed",
                r => store_outcome(r),
            };
            m.s3_requests.get_or_create(&StoreOutcome { op: "put", outcome }).inc();
            if let Ok(PutOutcome::Written { .. }) = &r {
                m.uploads.inc();
                m.uploaded_bytes.inc_by(len);
            }
        }
        r
    }

    async fn get_bytes(&self, key: &str, cond: GetCondition<'_>, max: u64) -> Result<GetOutcome, StoreError> {
        let r = self.0.get_bytes(key, cond, max).await;
        if let Some(m) = on() {
            let outcome = match &r {
                Ok(GetOutcome::NotModified) => "not_modified",
                Ok(GetOutcome::Changed) => "precondition_failed",
                Ok(GetOutcome::Missing) => "missing",
                r => store_outcome(r),
            };
            m.s3_requests.get_or_create(&StoreOutcome { op: "get", outcome }).inc();
        }
        r
    }
}

/// A table whose requests are counted.
pub struct MeteredTable<T>(pub T);

impl<T: ItemStore> ItemStore for MeteredTable<T> {
    fn describe(&self) -> String {
        self.0.describe()
    }

    async fn update(
        &self,
        key: &ItemKey,
        set: &[(&str, String)],
        condition: Option<Condition>,
    ) -> Result<Updated, TableError> {
        let r = self.0.update(key, set, condition).await;
        if let Some(m) = on() {
            let outcome = match &r {
                Ok(Updated::ConditionFailed) => "condition_failed",
                r => store_outcome(r),
            };
            m.dynamodb_requests.get_or_create(&StoreOutcome { op: "update_item", outcome }).inc();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_path_and_method() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics { head_only: false });
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0"), Route::Metrics { head_only: false });
        assert_eq!(route("HEAD /metrics HTTP/1.1"), Route::Metrics { head_only: true });
        assert_eq!(route("GET / HTTP/1.1"), Route::Status("404 Not Found"));
        assert_eq!(route("GET /metricsx HTTP/1.1"), Route::Status("404 Not Found"));
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::Status("405 Method Not Allowed"));
        assert_eq!(route("GET /metrics"), Route::Status("400 Bad Request"));
        assert_eq!(route("GET /metrics SPDY/3"), Route::Status("400 Bad Request"));
        assert_eq!(route(""), Route::Status("400 Bad Request"));
    }

    #[tokio::test]
    async fn a_head_is_read_to_its_blank_line_and_no_further_than_the_cap() {
        let mut ok: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\nignored";
        assert!(
            matches!(read_head(&mut ok).await.unwrap(), Head::Complete(h) if h == "GET /metrics HTTP/1.1\r\nHost: a")
        );
        let big = vec![b'a'; MAX_REQUEST_BYTES * 2];
        assert!(matches!(read_head(&mut big.as_slice()).await.unwrap(), Head::TooLarge));
        let mut cut: &[u8] = b"GET /metrics HTTP/1.1\r\n";
        assert!(matches!(read_head(&mut cut).await.unwrap(), Head::Closed));
    }

    #[test]
    fn endpoints_and_outcomes_are_named_as_documented() {
        let req = |method, path: &str| Request { method, path: path.into(), body: None };
        assert_eq!(evalai_endpoint(&req(Method::Get, "/api/jobs/submission/1")), "get_status");
        assert_eq!(evalai_endpoint(&req(Method::Patch, "/x/update_partially_evaluated_submission/")), "patch");
        assert_eq!(
            evalai_endpoint(&req(Method::Put, "/api/jobs/challenges/1/update_partially_evaluated_submission/")),
            "partial_put"
        );
        assert_eq!(evalai_endpoint(&req(Method::Put, "/api/jobs/challenge/1/update_submission/")), "final_put");
        let status = |s| Ok(Response { status: s, ..Response::default() });
        assert_eq!(evalai_outcome(&status(200)), "ok");
        assert_eq!(evalai_outcome(&status(429)), "http_4xx");
        assert_eq!(evalai_outcome(&status(503)), "http_5xx");
        assert_eq!(evalai_outcome(&status(301)), "error");
        assert_eq!(evalai_outcome(&Err(TransportError::Timeout)), "timeout");
        assert_eq!(evalai_outcome(&Err(TransportError::Connect("refused".into()))), "error");
        let timed_out: Result<(), StoreError> =
            Err(StoreError { op: "put", key: "k".into(), reason: "dispatch failure: TimeoutError".into() });
        assert_eq!(store_outcome(&timed_out), "timeout");
    }

    /// The exposition of a registry of its own (the process-wide one is only for `--metrics-addr`): every metric
    /// has its HELP and TYPE, counters end in `_total`, units are in the names.
    #[test]
    fn the_exposition_names_every_metric_with_its_type() {
        let m = Metrics::new();
        m.set_state(RunState::Finishing);
        m.evalai_requests.get_or_create(&Outcome { endpoint: "partial_put", outcome: "ok" }).inc();
        m.publish_latency.observe(0.3);
        m.uploaded_bytes.inc_by(42);
        m.routes_done.get_or_create(&WorkerLabel { worker: "2".into() }).set(5);
        m.routes_assigned.get_or_create(&WorkerLabel { worker: "2".into() }).set(5);
        let side = SideLabel { worker: "2".into(), role: "agent" };
        m.crashes.get_or_create(&side).set(1);
        m.restarts.get_or_create(&side).set(1);
        let mut b = Budget::new(6);
        b.spend(tokio::time::Instant::now());
        *lock(&m.budget) = Some(b);
        let text = m.encode();
        for (name, kind) in FAMILIES {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} {kind}:\n{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name} help:\n{text}");
        }
        for line in [
            "logcopy_evalai_requests_total{endpoint=\"partial_put\",outcome=\"ok\"} 1",
            "logcopy_s3_uploaded_bytes_total 42",
            "logcopy_evalai_publish_latency_seconds_count 1",
            "logcopy_worker_routes_done{worker=\"2\"} 5",
            "logcopy_evalai_budget_used_requests 1",
            "logcopy_evalai_budget_limit_requests 6",
            "logcopy_state{state=\"finishing\"} 1",
            "logcopy_state{state=\"running\"} 0",
            "logcopy_s3_requests_total{op=\"multipart\",outcome=\"timeout\"} 0",
            "logcopy_dynamodb_requests_total{op=\"update_item\",outcome=\"condition_failed\"} 0",
            "logcopy_worker_crashes{worker=\"2\",role=\"agent\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// docs/configuration.md documents every family.
    #[test]
    fn every_family_is_documented() {
        let doc = include_str!("../../docs/configuration.md");
        for (name, _) in FAMILIES {
            assert!(doc.contains(&format!("`{name}")), "{name} is not in docs/configuration.md");
        }
    }

    /// Without `--metrics-addr` nothing is recorded and nothing is created.
    #[test]
    fn off_records_nothing() {
        assert!(on().is_none());
        evalai_published(1);
        snapshot(1, &Some(Arc::new(Outputs::default())));
        state(RunState::Ended);
        assert!(METRICS.get().is_none());
    }
}

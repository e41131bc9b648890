//! The embedded local EvalAI: with no `EVALAI_API_SERVER`, or with `--local OUT`, every EvalAI request the
//! daemon makes is appended to `OUT/evalai-requests.jsonl` (one JSON object per request: method, path, body)
//! and answered by a small in-process model of the submission, so the whole code path of the real client runs
//! (budget, status checks, PATCH, PUTs, final status) without a network.

use super::evalai::{Method, Request, Response, Transport, TransportError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The local transport: a request log and the submission's status.
pub struct LocalTransport {
    path: PathBuf,
    state: Mutex<LocalState>,
}

struct LocalState {
    status: String,
    started_at: Option<String>,
}

impl LocalTransport {
    /// Requests go to `out/evalai-requests.jsonl` (created with its folder).
    pub fn new(out: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(out)?;
        Ok(LocalTransport {
            path: out.join("evalai-requests.jsonl"),
            state: Mutex::new(LocalState { status: "submitted".into(), started_at: None }),
        })
    }

    pub fn requests_file(&self) -> &Path {
        &self.path
    }

    fn record(&self, req: &Request) -> std::io::Result<()> {
        // The body is kept as the exact JSON text that would be sent (key order included).
        let body = match req.body.as_deref() {
            Some(b) if serde_json::from_str::<serde::de::IgnoredAny>(b).is_ok() => b.to_string(),
            Some(b) => serde_json::Value::String(b.into()).to_string(),
            None => "null".into(),
        };
        let line = format!(
            "{{\"method\":{},\"path\":{},\"body\":{body}}}",
            serde_json::Value::from(req.method.as_str()),
            serde_json::Value::from(req.path.as_str())
        );
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        writeln!(f, "{line}")
    }
}

fn ok(body: serde_json::Value) -> Response {
    Response { status: 200, retry_after: None, body: body.to_string() }
}

impl Transport for LocalTransport {
    async fn send(&self, req: &Request) -> Result<Response, TransportError> {
        self.record(req).map_err(|e| TransportError::Io(format!("{}: {e}", self.path.display())))?;
        let body: serde_json::Value =
            req.body.as_deref().and_then(|b| serde_json::from_str(b).ok()).unwrap_or(serde_json::Value::Null);
        let new_status = body.get("submission_status").and_then(|s| s.as_str()).map(str::to_lowercase);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match req.method {
            Method::Get => ok(serde_json::json!({"status": st.status, "started_at": st.started_at})),
            Method::Patch => {
                if let Some(s) = new_status {
                    st.status = s;
                    st.started_at.get_or_insert_with(|| "local".into());
                }
                ok(serde_json::json!({"status": st.status, "started_at": st.started_at}))
            }
            Method::Put => {
                if let Some(s) = new_status {
                    st.status = s;
                }
                ok(serde_json::json!({"success": "Submission result has been successfully updated"}))
            }
        })
    }
}

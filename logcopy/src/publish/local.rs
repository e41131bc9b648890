//! The embedded local EvalAI: with no `EVALAI_API_SERVER`, or with `--local OUT`, every EvalAI request the
//! daemon makes is appended to `OUT/evalai-requests.jsonl` (one JSON object per request: method, path, body)
//! and answered by a small in-process model of the submission, so the whole code path of the real client runs
//! (budget, status checks, PATCH, PUTs, final status) without a network.
//!
//! A cancel, as a participant makes it on EvalAI's web UI: create the file `OUT/evalai-cancel` (any content). From
//! then on the local submission's status is `cancelled`, which is final, as on EvalAI.

use super::evalai::{Method, Request, Response, Transport, TransportError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The local transport: a request log and the submission's status.
pub struct LocalTransport {
    path: PathBuf,
    cancel: PathBuf,
    state: Mutex<LocalState>,
}

struct LocalState {
    status: String,
    started_at: Option<String>,
}

/// The file whose existence cancels the local submission.
pub const CANCEL_FILE: &str = "evalai-cancel";

impl LocalTransport {
    /// Requests go to `out/evalai-requests.jsonl` (created with its folder).
    pub fn new(out: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(out)?;
        Ok(LocalTransport {
            path: out.join("evalai-requests.jsonl"),
            cancel: out.join(CANCEL_FILE),
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
        if st.status != "cancelled" && std::fs::symlink_metadata(&self.cancel).is_ok() {
            st.status = "cancelled".into();
        }
        Ok(match req.method {
            Method::Get => ok(serde_json::json!({"status": st.status, "started_at": st.started_at})),
            Method::Patch => {
                if let Some(s) = new_status.filter(|_| st.status != "cancelled") {
                    st.status = s;
                    st.started_at.get_or_insert_with(|| "local".into());
                }
                ok(serde_json::json!({"status": st.status, "started_at": st.started_at}))
            }
            Method::Put => {
                if let Some(s) = new_status.filter(|_| st.status != "cancelled") {
                    st.status = s;
                }
                ok(serde_json::json!({"success": "Submission result has been successfully updated"}))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, body: Option<&str>) -> Request {
        Request { method, path: "/api/jobs/submission/1".into(), body: body.map(String::from) }
    }

    async fn status(t: &LocalTransport) -> String {
        let r = t.send(&req(Method::Get, None)).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["status"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn the_cancel_file_cancels_for_good() {
        let dir = std::env::temp_dir().join(format!("logcopy-local-cancel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = LocalTransport::new(&dir).unwrap();
        t.send(&req(Method::Patch, Some(r#"{"submission_status":"running"}"#))).await.unwrap();
        assert_eq!(status(&t).await, "running");
        std::fs::write(dir.join(CANCEL_FILE), b"").unwrap();
        assert_eq!(status(&t).await, "cancelled");
        // Neither a partial PUT nor a PATCH brings it back, as on EvalAI.
        t.send(&req(Method::Put, Some(r#"{"submission_status":"partially_evaluated"}"#))).await.unwrap();
        t.send(&req(Method::Patch, Some(r#"{"submission_status":"running"}"#))).await.unwrap();
        std::fs::remove_file(dir.join(CANCEL_FILE)).unwrap();
        assert_eq!(status(&t).await, "cancelled");
        let lines = std::fs::read_to_string(t.requests_file()).unwrap();
        assert_eq!(lines.lines().count(), 6);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The embedded local EvalAI: with no `EVALAI_API_SERVER`, or with `--local OUT`, every EvalAI request the
//! daemon makes is appended to `OUT/evalai-requests.jsonl` (one JSON object per request: method, path, body)
//! and answered by a small in-process model of the submission, so the whole code path of the real client runs
//! (budget, status checks, PATCH, PUTs, final status) without a network.
//!
//! The model behaves as EvalAI does (`apps/jobs/views.py`): no state machine. A status GET answers the stored
//! status; a partial PUT, a PATCH or a final PUT sets the status it carries, whatever the current one (a partial
//! PUT after a cancel turns it back into `partially_evaluated`, as on EvalAI, which is the race logcopy's guarded
//! writes close); a status the endpoint does not accept is a 400 `Sorry, submission status is invalid`.
//!
//! A cancel, as a participant makes it on EvalAI's web UI: create the file `OUT/evalai-cancel` (any content). It is
//! read once, at the next request: the submission becomes `cancelled` and the file is renamed
//! `evalai-cancel.applied`, so a later write can overwrite the cancel exactly as on EvalAI.
//!
//! A refused host token, as EvalAI answers a wrong or revoked one: while the file `OUT/evalai-refuse-token` exists,
//! every request is recorded and answered 401 (`{"detail": "Invalid token."}`).

use super::evalai::{Body, Method, Request, Response, Transport, TransportError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file, under the local folder, that receives the EvalAI requests.
pub const REQUESTS_FILE: &str = "evalai-requests.jsonl";

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
/// What the cancel file is renamed to once applied.
pub const CANCEL_APPLIED: &str = "evalai-cancel.applied";
/// The file whose existence makes every request a 401 (a refused token).
pub const REFUSE_FILE: &str = "evalai-refuse-token";

/// The statuses each endpoint accepts (after lower-casing), as EvalAI's views check them.
fn accepted(method: Method, path: &str) -> &'static [&'static str] {
    let partial = path.contains("/update_partially_evaluated_submission/");
    match (method, partial) {
        (Method::Put, true) => &["failed", "cancelled", "finished", "partially_evaluated"],
        (Method::Put, false) => &["failed", "cancelled", "finished"],
        (Method::Patch, true) => &["running", "partially_evaluated", "finished"],
        (Method::Patch, false) => &["queued", "running"],
        (Method::Get, _) => &[],
    }
}

impl LocalTransport {
    /// Requests go to `out/evalai-requests.jsonl` (created with its folder).
    pub fn new(out: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(out)?;
        Ok(LocalTransport {
            path: out.join(REQUESTS_FILE),
            cancel: out.join(CANCEL_FILE),
            state: Mutex::new(LocalState { status: "submitted".into(), started_at: None }),
        })
    }

    pub fn requests_file(&self) -> &Path {
        &self.path
    }

    fn record(&self, req: &Request) -> std::io::Result<()> {
        // The body is kept as the exact JSON text that would be sent (key order included), copied once into the
        // line (a final update carries the 14 MB merged file of 10,000 routes).
        let head = format!(
            "{{\"method\":{},\"path\":{},\"body\":",
            serde_json::Value::from(req.method.as_str()),
            serde_json::Value::from(req.path.as_str())
        );
        let body: std::borrow::Cow<'_, str> = match req.body.as_ref().map(Body::as_str) {
            Some(b) if serde_json::from_str::<serde::de::IgnoredAny>(b).is_ok() => b.into(),
            Some(b) => serde_json::Value::String(b.into()).to_string().into(),
            None => "null".into(),
        };
        // One buffer, one write: a reader never sees half a line.
        let mut line = Vec::with_capacity(head.len() + body.len() + 2);
        line.extend_from_slice(head.as_bytes());
        line.extend_from_slice(body.as_bytes());
        line.extend_from_slice(b"}\n");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        f.write_all(&line)
    }
}

fn ok(body: serde_json::Value) -> Response {
    Response { status: 200, body: body.to_string(), ..Response::default() }
}

impl Transport for LocalTransport {
    async fn send(&self, req: &Request) -> Result<Response, TransportError> {
        self.record(req).map_err(|e| TransportError::Io(format!("{}: {e}", self.path.display())))?;
        if std::fs::symlink_metadata(self.path.with_file_name(REFUSE_FILE)).is_ok() {
            let body = serde_json::json!({"detail": "Invalid token."});
            return Ok(Response { status: 401, body: body.to_string(), ..Response::default() });
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // The participant's cancel on the web UI: applied once, then it is an ordinary stored status.
        if std::fs::symlink_metadata(&self.cancel).is_ok() {
            st.status = "cancelled".into();
            let _ = std::fs::rename(&self.cancel, self.cancel.with_file_name(CANCEL_APPLIED));
        }
        if req.method == Method::Get {
            return Ok(ok(serde_json::json!({"status": st.status, "started_at": st.started_at})));
        }
        // Only the status is read: the rest of the body (a 14 MB merged file at 10,000 routes) is skipped, never
        // parsed into a tree.
        #[derive(serde::Deserialize)]
        struct StatusOnly {
            submission_status: Option<String>,
        }
        let body: Option<StatusOnly> = req.body.as_ref().and_then(|b| serde_json::from_str(b.as_str()).ok());
        let new_status = body.and_then(|b| b.submission_status).map(|s| s.to_lowercase());
        let Some(status) = new_status.filter(|s| accepted(req.method, &req.path).contains(&s.as_str())) else {
            let body = serde_json::json!({"error": "Sorry, submission status is invalid"});
            return Ok(Response { status: 400, body: body.to_string(), ..Response::default() });
        };
        let started = status == "running" || status == "queued";
        st.status = status;
        Ok(if req.method == Method::Patch && started {
            st.started_at = Some("local".into());
            ok(serde_json::json!({"status": st.status, "started_at": st.started_at}))
        } else {
            ok(serde_json::json!({"success": "Submission result has been successfully updated"}))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, body: Option<&str>) -> Request {
        Request { method, path: "/api/jobs/submission/1".into(), body: body.map(|b| Body::from(b.to_string())) }
    }

    async fn status(t: &LocalTransport) -> String {
        let r = t.send(&req(Method::Get, None)).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["status"].as_str().unwrap().to_string()
    }

    fn partial(status: &str) -> Request {
        Request {
            method: Method::Put,
            path: "/api/jobs/challenges/1/update_partially_evaluated_submission/".into(),
            body: Some(format!(r#"{{"submission_status":"{status}"}}"#).into()),
        }
    }

    #[tokio::test]
    async fn a_cancel_is_a_stored_status_as_on_evalai() {
        let dir = std::env::temp_dir().join(format!("logcopy-local-cancel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = LocalTransport::new(&dir).unwrap();
        t.send(&req(Method::Patch, Some(r#"{"submission_status":"running"}"#))).await.unwrap();
        assert_eq!(status(&t).await, "running");
        std::fs::write(dir.join(CANCEL_FILE), b"").unwrap();
        assert_eq!(status(&t).await, "cancelled");
        assert!(!dir.join(CANCEL_FILE).exists(), "the cancel file is read once");
        assert!(dir.join(CANCEL_APPLIED).exists(), "and kept as applied");
        assert_eq!(status(&t).await, "cancelled", "the status stays until a write changes it");
        // EvalAI has no state machine: a partial PUT after the cancel turns it back (the race logcopy avoids).
        let r = t.send(&partial("PARTIALLY_EVALUATED")).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(status(&t).await, "partially_evaluated");
        // A status the endpoint does not take is a 400, and changes nothing.
        let r = t.send(&partial("running")).await.unwrap();
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("Sorry, submission status is invalid"));
        let r = t.send(&req(Method::Patch, Some(r#"{"submission_status":"paused"}"#))).await.unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(status(&t).await, "partially_evaluated");
        let lines = std::fs::read_to_string(t.requests_file()).unwrap();
        assert_eq!(lines.lines().count(), 9);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Goldens of what the participant sees (crate::view): each case of fixtures/view is a recorded volume with
//! markers and the supervisors' status records added (fixtures/view/make_cases.py); a run's outputs on it, with the
//! clock stopped 3 h in, must be the case's `stdout.txt` and `stderr.txt` byte for byte. `UPDATE_GOLDENS=1 cargo
//! test -p logcopy view_goldens` rewrites them (then read the diff). And the secrecy test: a marker string planted
//! in every participant-writable place that upstream does not echo reaches no field of any EvalAI request.

use super::*;
use crate::publish::Outputs;

/// The clock of the goldens: fixtures/view/make_cases.py's NOW (2025-12-02 05:00:00 UTC).
const NOW: i64 = 1_764_640_800 + 3 * 3600;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Copies the folder `from` to `to` (the daemon's tests use it too).
pub(super) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| !l.is_empty()).map(String::from).collect()
}

/// The case's volume in a fresh scratch folder, and the flags of its run (`extra` added).
fn volume_of(case: &str, tag: &str) -> (PathBuf, Vec<String>) {
    let dir = fixtures().join("view").join(case);
    let base = lines(&dir.join("base")).remove(0);
    let scratch = std::env::temp_dir().join(format!("logcopy-view-{}-{case}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let vol = scratch.join("volume");
    copy_dir(&fixtures().join("volumes").join(base), &vol);
    for m in lines(&dir.join("remove")) {
        std::fs::remove_file(vol.join("containers-status").join(m)).unwrap();
    }
    if dir.join("containers-status").exists() {
        copy_dir(&dir.join("containers-status"), &vol.join("containers-status"));
    }
    (scratch, lines(&dir.join("args")))
}

fn config(scratch: &Path, args: &[String], extra: &[&str]) -> RunConfig {
    let (vol, out) = (scratch.join("volume"), scratch.join("out"));
    let mut all: Vec<&str> = vec!["--local", out.to_str().unwrap(), "--logs", vol.to_str().unwrap()];
    all.extend(["--evalai-rpm", "60", "--final-timeout", "10", "--flush-budget", "10"]);
    all.extend(args.iter().map(String::as_str));
    all.extend(extra);
    crate::config::tests::parse(&all).unwrap()
}

fn preview_of(case: &str, extra: &[&str]) -> Outputs {
    let (scratch, args) = volume_of(case, "golden");
    let cfg = config(&scratch, &args, extra);
    let root = open_volume(&cfg.logs).unwrap();
    let out = preview(cfg, root, NOW).unwrap_or_else(|| panic!("{case}: no outputs"));
    let _ = std::fs::remove_dir_all(&scratch);
    out
}

const CASES: [&str; 8] =
    ["mid-run", "simulator-crash", "hang", "worker-failed", "cancelled", "finished", "markers-only", "evalai-auth"];

#[test]
fn the_participants_view_of_each_recorded_state_is_its_golden() {
    let update = std::env::var_os("UPDATE_GOLDENS").is_some();
    let mut failures = Vec::new();
    for case in CASES {
        let out = preview_of(case, &[]);
        for (name, got) in [("stdout.txt", &out.stdout), ("stderr.txt", &out.stderr)] {
            let path = fixtures().join("view").join(case).join(name);
            assert!(got.is_ascii(), "{case}/{name} is not ASCII:\n{got}");
            if update {
                std::fs::write(&path, got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if *got != want {
                failures.push(format!(
                    "{case}/{name} differs (UPDATE_GOLDENS=1 rewrites it):\n--- got\n{got}--- want\n{want}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `--stdout-format upstream` gives exactly upstream's file (`logcopy evalai`'s), whatever the records say; the
/// merged file (metadata.json) and results.json are the same bytes in both formats.
#[test]
fn the_upstream_format_is_upstreams_file_and_the_scores_never_change() {
    for case in ["mid-run", "simulator-crash", "finished"] {
        let status = preview_of(case, &[]);
        let upstream = preview_of(case, &["--stdout-format", "upstream"]);
        assert_eq!(status.merged, upstream.merged, "{case}: the merged file");
        assert_eq!(status.results, upstream.results, "{case}: results.json");
        let data = crate::results::pyjson::parse(upstream.merged.as_bytes()).unwrap();
        let version = crate::results::detect(&data).unwrap();
        let want = crate::results::evalai::stdout_txt(version, data.as_object()).unwrap();
        assert_eq!(upstream.stdout, want, "{case}: not upstream's stdout.txt");
        assert!(status.stdout.starts_with("Run status"), "{case}");
        // Provisional scores change results.json alone, and only before the end.
        let provisional = preview_of(case, &["--partial-scores", "provisional"]);
        assert_eq!(provisional.merged, upstream.merged, "{case}: the merged file");
        if case == "finished" {
            assert_eq!(provisional.results, upstream.results, "{case}: the final result is upstream's");
        } else {
            assert!(upstream.results.contains("\"Driving score\": 0,"), "{case}: {}", upstream.results);
            assert!(!provisional.results.contains("\"Driving score\": 0,"), "{case}: {}", provisional.results);
            assert!(provisional.results.contains("\"Collisions layout\": 0,"), "{case}: {}", provisional.results);
        }
    }
}

/// The block's key is its content without the clock: the same state at another time keeps the same block until a
/// heartbeat has passed, then takes the new time; after a terminal state it never changes again.
#[test]
fn the_block_changes_with_the_state_or_at_a_heartbeat() {
    let (scratch, args) = volume_of("mid-run", "beat");
    let cfg = config(&scratch, &args, &["--heartbeat", "300"]);
    let root = open_volume(&cfg.logs).unwrap();
    let clock = Arc::new(std::sync::atomic::AtomicI64::new(NOW));
    let mut state = State::new(cfg, root);
    let c = clock.clone();
    state.clock = Arc::new(move || c.load(std::sync::atomic::Ordering::SeqCst));
    assert!(state.cycle(), "the first cycle writes the outputs");
    let first = state.outputs.clone().unwrap().stdout.clone();
    clock.store(NOW + 299, std::sync::atomic::Ordering::SeqCst);
    assert!(!state.cycle(), "nothing changed before the heartbeat");
    clock.store(NOW + 300, std::sync::atomic::Ordering::SeqCst);
    assert!(state.cycle(), "the heartbeat refreshes the clock fields");
    let second = state.outputs.clone().unwrap().stdout.clone();
    assert_ne!(first, second);
    assert!(second.contains("(as of 2025-12-02 05:05:00 UTC)"), "{second}");
    clock.store(NOW + 301, std::sync::atomic::Ordering::SeqCst);
    assert!(!state.cycle());
    // A change of state (worker 4 done) re-renders at once.
    let status = scratch.join("volume/containers-status");
    std::fs::write(status.join("agent-4.done"), "").unwrap();
    assert!(state.cycle(), "a change of state re-renders the block");
    assert!(state.outputs.clone().unwrap().stdout.contains("(as of 2025-12-02 05:05:01 UTC)"));
    // A terminal state: no heartbeat after it.
    state.final_outputs(&End::Completed { finished: false, reason: "worker 1 failed (agent-1.failed)".into() });
    let last = state.outputs.clone().unwrap().stdout.clone();
    clock.store(NOW + 10_000, std::sync::atomic::Ordering::SeqCst);
    assert!(!state.cycle(), "no heartbeat after a terminal state");
    assert_eq!(state.outputs.clone().unwrap().stdout, last);
    let _ = std::fs::remove_dir_all(&scratch);
}

const SECRET: &str = "SECRET-ROUTE-XYZ";

/// Plants [`SECRET`] in every participant-writable place whose text upstream does not echo: each status record's
/// free-text fields (`detail`, `routes_subset`, `current_route`), a results file's top-level and `entry_status`
/// fields, the evaluator's log, a marker-like file name.
fn plant(vol: &Path) {
    let status = vol.join("containers-status");
    for entry in std::fs::read_dir(&status).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".status.json") {
            continue;
        }
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["routes_subset"] = SECRET.into();
        v["current_route"] = SECRET.into();
        v["reruns"] = serde_json::json!([SECRET, format!("{SECRET}_rep0")]);
        if v["last_end"].is_object() {
            v["last_end"]["detail"] = format!("{SECRET} exception: {SECRET}").into();
        }
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    // A route id in the record that is well-formed but not the worker's own.
    let agent1 = status.join("agent-1.status.json");
    if agent1.exists() {
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&agent1).unwrap()).unwrap();
        v["current_route"] = "RouteScenario_17_rep0".into();
        std::fs::write(&agent1, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    // Free text in a results file that upstream's outputs do not carry: a top-level field of the worker's file.
    let w1 = vol.join("agent/agent1/agent_results.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&w1).unwrap()).unwrap();
    v["participant_note"] = format!("{SECRET} Traceback").into();
    std::fs::write(&w1, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    for i in 1..=4 {
        let log = vol.join(format!("agent/agent{i}/leaderboard.log"));
        if log.exists() {
            let mut text = std::fs::read_to_string(&log).unwrap();
            text.push_str(&format!("\n========= Preparing {SECRET} (repetition 0) =========\nTraceback: {SECRET}\n"));
            std::fs::write(&log, text).unwrap();
        }
    }
}

fn requests(out: &Path) -> Vec<serde_json::Value> {
    let jsonl = std::fs::read_to_string(out.join("evalai-requests.jsonl")).unwrap_or_default();
    jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn no_planted_secret_reaches_anything_the_participant_reads() {
    for (case, extra) in [
        ("mid-run", vec!["--once", "--partial-scores", "provisional"]),
        ("simulator-crash", vec!["--once"]),
        ("worker-failed", vec!["--final-status"]),
        ("cancelled", vec!["--final-status"]),
    ] {
        let (scratch, args) = volume_of(case, "secret");
        plant(&scratch.join("volume"));
        let cfg = config(&scratch, &args, &extra);
        let out = scratch.join("out");
        if case == "cancelled" {
            std::fs::create_dir_all(&out).unwrap();
            std::fs::write(out.join(crate::publish::local::CANCEL_FILE), "").unwrap();
        }
        let root = open_volume(&cfg.logs).unwrap();
        run_until(cfg, root, std::future::pending()).await.unwrap();
        let reqs = requests(&out);
        let writes: Vec<&serde_json::Value> = reqs.iter().filter(|r| r["method"] == "PUT").collect();
        assert!(!writes.is_empty(), "{case}: no PUT recorded: {reqs:?}");
        for r in &reqs {
            let body = &r["body"];
            for field in ["stdout", "stderr", "result", "metadata"] {
                let text = body[field].as_str().unwrap_or("");
                assert!(!text.contains(SECRET), "{case}: {field} of {} carries the secret:\n{text}", r["path"]);
                assert!(!text.contains("forged"), "{case}: {field} says forged:\n{text}");
                assert!(
                    !text.contains(".failed") && !text.contains(".cancel"),
                    "{case}: {field} names a marker:\n{text}"
                );
            }
            if field_has(body, "stdout", "Run status") {
                let stdout = body["stdout"].as_str().unwrap();
                let block = &stdout[..stdout.find("\n\n").unwrap()];
                assert!(!block.contains("RouteScenario_17_rep0"), "{case}: another worker's route shown:\n{block}");
            }
            // Only the hosts' field may carry the participant's own output: EvalAI's `environment_log` (shown to
            // hosts only), on the final update only.
            let mut rest = r.clone();
            let operator = rest["body"].as_object_mut().and_then(|b| b.remove("environment_log"));
            assert!(!rest.to_string().contains(SECRET), "{case}: the request carries the secret: {r}");
            if let Some(log) = operator.as_ref().and_then(|l| l.as_str()).filter(|l| !l.is_empty()) {
                assert!(r["path"].as_str().unwrap_or("").contains("update_submission"), "{case}: {}", r["path"]);
                assert!(log.contains("===== worker 1"), "{case}: the operator's tail: {log}");
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }
}

fn field_has(body: &serde_json::Value, field: &str, what: &str) -> bool {
    body[field].as_str().is_some_and(|s| s.contains(what))
}

/// A local run of the cancelled fixture that EvalAI does not confirm ends failed: the participant reads a neutral
/// reason, the log keeps the technical one.
#[tokio::test]
async fn an_unconfirmed_cancel_is_told_neutrally() {
    let (scratch, args) = volume_of("cancelled", "neutral");
    let cfg = config(&scratch, &args, &["--final-status"]);
    let root = open_volume(&cfg.logs).unwrap();
    let end = run_until(cfg, root, std::future::pending()).await.unwrap();
    let End::Completed { finished: false, reason } = end else { panic!("not failed: {end:?}") };
    assert!(reason.contains("was forged"), "the log keeps the detail: {reason}");
    let reqs = requests(&scratch.join("out"));
    let fin = reqs.iter().rfind(|r| r["path"].as_str().unwrap_or("").contains("update_submission")).unwrap();
    let stdout = fin["body"]["stdout"].as_str().unwrap();
    assert!(stdout.contains("a cancel request that EvalAI does not confirm"), "{stdout}");
    assert!(!stdout.contains("forged") && !stdout.contains("simulation.cancel"), "{stdout}");
    let stderr = fin["body"]["stderr"].as_str().unwrap();
    assert!(stderr.starts_with("The submission failed: the workers stopped on a cancel request"), "{stderr}");
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The partial PUTs of an idle run of the mid-run case for `secs` seconds with `--heartbeat heartbeat`.
async fn idle_puts(heartbeat: &str, secs: u64) -> Vec<String> {
    let (scratch, args) = volume_of("mid-run", &format!("idle-{heartbeat}"));
    let extra = ["--heartbeat", heartbeat, "--logs-period", "200ms", "--status-period", "1"];
    let cfg = config(&scratch, &args, &extra);
    let root = open_volume(&cfg.logs).unwrap();
    let end = run_until(cfg, root, async move {
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
        "the test"
    })
    .await
    .unwrap();
    assert_eq!(end, End::Terminated);
    let puts = requests(&scratch.join("out"))
        .into_iter()
        .filter(|r| r["method"] == "PUT" && r["path"].as_str().unwrap_or("").contains("partially"))
        .map(|r| r["body"]["stdout"].as_str().unwrap_or("").to_string())
        .collect();
    let _ = std::fs::remove_dir_all(&scratch);
    puts
}

/// An idle run sends its first result and then status GETs only, for as long as the heartbeat (default 300 s)
/// has not passed; with a 2 s heartbeat, the clock fields are refreshed, at most one partial PUT a heartbeat.
#[tokio::test]
async fn an_idle_run_sends_at_most_one_update_per_heartbeat() {
    let puts = idle_puts("300", 5).await;
    assert_eq!(puts.len(), 1, "an idle run sent more than its first result: {puts:#?}");
    let puts = idle_puts("2", 7).await;
    // The first result, a change of state or two at start (the EvalAI status seen), then the heartbeats. The
    // bound is loose on purpose: the count depends on when the machine gets to each cycle, and tests assert no
    // timing (the 300 s case above is the exact one).
    assert!((2..=7).contains(&puts.len()), "{} partial PUTs in 7 s with a 2 s heartbeat", puts.len());
    let as_of: Vec<&str> = puts.iter().filter_map(|p| p.split("(as of ").nth(1)?.get(..19)).collect();
    assert!(as_of.windows(2).all(|w| w[0] <= w[1]), "the clock fields never go back: {as_of:?}");
    assert!(as_of.first() < as_of.last(), "a heartbeat refreshed the clock fields: {as_of:?}");
    for pair in puts.windows(2) {
        assert_ne!(pair[0], pair[1], "a PUT without a change");
        let body = |s: &str| s.split_once("\n\n").map(|(_, rest)| rest.to_string());
        assert_eq!(body(&pair[0]), body(&pair[1]), "only the block's clock fields changed");
    }
}

/// The budgets in force: the hang timeout and the attempt budget from the records, the Job deadline from
/// `--job-deadline`; "not set" or "not known" without them.
#[test]
fn the_block_states_the_budgets_in_force() {
    let block = |out: &Outputs| out.stdout.split_once("\n\n").unwrap().0.to_string();
    let mid = block(&preview_of("mid-run", &[]));
    assert!(mid.contains("- Budgets: 3 attempts per worker; an evaluator counts as hung after 13m 20s without output; Job deadline not set;"), "{mid}");
    let deadline = block(&preview_of("mid-run", &["--job-deadline", "172800"]));
    assert!(deadline.contains("; Job deadline 48h 00m;"), "{deadline}");
    let old = block(&preview_of("markers-only", &[]));
    assert!(old.contains("attempts per worker not known") && old.contains("hang timeout not known"), "{old}");
    let bad = crate::config::tests::parse(&["--local", "/tmp/x", "--job-deadline", "0.5"]);
    assert!(bad.is_err(), "a deadline under 1 s is refused");
}

/// An EvalAI auth error (every request answered 401: a wrong or revoked host token) changes nothing the
/// participant would read: the run goes on until it is stopped, and the outputs it writes are the golden ones of
/// its case (`evalai-auth`, the mid-run volume), with no word of the refusal. The operator has it in the log. No
/// final update is made on a stop, so no `environment_log` either.
#[tokio::test]
async fn an_evalai_auth_error_changes_nothing_the_participant_reads() {
    let (scratch, args) = volume_of("evalai-auth", "run");
    let cfg = config(&scratch, &args, &["--status-period", "1"]);
    let out = scratch.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(crate::publish::local::REFUSE_FILE), "").unwrap();
    let root = open_volume(&cfg.logs).unwrap();
    super::cycle::TEST_CLOCK.with(|c| c.set(Some(NOW)));
    let end = run_until(cfg, root, async {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        "the test"
    })
    .await
    .unwrap();
    super::cycle::TEST_CLOCK.with(|c| c.set(None));
    assert_eq!(end, End::Terminated, "the run went on until it was stopped");
    let reqs = requests(&out);
    assert!(reqs.iter().filter(|r| r["method"] == "GET").count() >= 2, "the status GETs go on: {reqs:?}");
    assert!(reqs.iter().all(|r| r["method"] == "GET"), "nothing is written on a refused token: {reqs:?}");
    let golden = std::fs::read_to_string(fixtures().join("view/evalai-auth/stdout.txt")).unwrap();
    let written = std::fs::read_to_string(scratch.join("volume").join(volume::layout::EVALAI_STDOUT)).unwrap();
    assert_eq!(written, golden, "stdout.txt on the volume");
    let stderr = std::fs::read_to_string(fixtures().join("view/evalai-auth/stderr.txt")).unwrap();
    for text in [&written, &stderr] {
        assert!(!text.contains("401") && !text.to_lowercase().contains("token"), "{text}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

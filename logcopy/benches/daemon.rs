//! End-to-end benchmark of `logcopy run`: how fast a new result reaches EvalAI, and what logcopy costs when
//! nothing happens.
//!
//! `cargo bench -p logcopy --bench daemon` runs, in about two minutes, one `logcopy run` (the release binary, as
//! a child process) against the local EvalAI double `fixtures/bin/fake-evalai`, and prints what it measured.
//! Nothing is asserted: the figures are for reading (and for docs/benchmarks.md), the goals are printed beside them.
//!
//! 1. **Volume.** A generation 1 `logs` volume in a scratch folder: a copy of `fixtures/volumes/lb2.0-mid-run`
//!    (4 workers, 20 routes, worker *i* runs routes `5*(i-1)..5*i-1`; workers 1-3 have results, worker 3 is done),
//!    worker 4's file as the evaluator writes it before its first route (no records), and 2,000 small log files
//!    under `agent/agent<i>/logs/` and `simulator/CarlaUE4-<i>/`, so the file watcher has a realistic tree.
//! 2. **EvalAI.** `fake-evalai` on 127.0.0.1 (any free port), throttled like EvalAI at 60 requests a minute, with
//!    submission 1 of challenge 1, phase 1, `submitted`.
//! 3. **logcopy** `run --logs <vol> --status-period 30 --evalai-rpm 60 --logs-period 10`, with only the EvalAI
//!    settings in its environment and `--local-storage logcopy-local` (the S3 and DynamoDB sinks are the local
//!    ones, writing under the scratch folder, its working folder), its output in a file. The benchmark waits for its first
//!    partial PUT (start-up time).
//! 4. **Latency.** 20 times, 2.5 s apart, one worker's results file is rewritten the evaluator's way (truncate and
//!    write in place, no rename): first the 10 missing routes are appended one by one, then 10 scores change.
//!    Every write carries a `score_penalty` no other record has (7 decimals; the generator rounds to 6). The wall
//!    time is taken just before the file is truncated; the double's request log (`GET /__fake__/requests`) is
//!    polled until a successful partial PUT whose `metadata` (the merged file) holds that value. Latency = the
//!    time the double received that PUT (its record's `t`) minus the write time. Both clocks are this machine's,
//!    and the poll interval does not enter the figure.
//! 5. **Idle minute.** Then nothing is written for 60 s. Counted: the EvalAI requests received in that minute, by
//!    method; logcopy's CPU time in it (utime + stime of `/proc/<pid>/stat`); its peak RSS over the whole run
//!    (`VmHWM`) and its RSS at the end (`VmRSS`) from `/proc/<pid>/status`.
//! 6. **Stop.** SIGTERM to logcopy (its exit code is printed), then to the double; a summary table in Markdown.
//!
//! On failure (the double does not start, logcopy exits early, ...) the benchmark says what failed, kills what it
//! started, keeps the scratch folder (the logs of both programs are there) and exits 1.

mod common;

use anyhow::{Context, Result, anyhow, bail};
use common::{array, field};
use logcopy::results::pyjson::{self, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::procfs::{cpu_seconds, memory_kib};

const WORKERS: usize = 4;
const ROUTES_PER_WORKER: usize = 5;
const LOG_FILES: usize = 2_000;
const WRITES: usize = 20;
const WRITE_EVERY: Duration = Duration::from_millis(2_500);
const IDLE: Duration = Duration::from_secs(60);
/// How long a write may take to show up on EvalAI before it counts as not seen.
const SEEN_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_EVERY: Duration = Duration::from_millis(100);

const STATUS_PERIOD_S: u32 = 30;
const EVALAI_RPM: u32 = 60;
const LOGS_PERIOD_S: u32 = 10;
/// Identity of the submission on the double: `ID:CHALLENGE:PHASE:STATUS`.
const SUBMISSION: &str = "1:1:1:submitted";
const TOKEN: &str = "bench-host-token-7d41c9e2";
const PARTIAL_PUT_PATH: &str = "/api/jobs/challenges/1/update_partially_evaluated_submission/";

const BENCH_COMMAND: &str = "cargo bench -p logcopy --bench daemon";

fn main() -> ExitCode {
    let scratch = std::env::temp_dir().join(format!("logcopy-bench-daemon-{}", std::process::id()));
    let outcome = fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create the scratch folder {}", scratch.display()))
        .and_then(|()| run(&scratch));
    match outcome {
        Ok(()) => {
            let _ = fs::remove_dir_all(&scratch);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndaemon benchmark FAILED: {e:#}");
            eprintln!("(the volume and both programs' logs are kept in {})", scratch.display());
            ExitCode::FAILURE
        }
    }
}

fn run(scratch: &Path) -> Result<()> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = manifest.join("../fixtures/volumes/lb2.0-mid-run");
    let fake_evalai = manifest.join("../fixtures/bin/fake-evalai");
    let logcopy_bin = logcopy_binary()?;

    // 1. The volume.
    let vol = scratch.join("logs");
    let mut volume = Workload::create(&fixture, &vol)?;
    println!(
        "volume: {} ({WORKERS} workers, {} routes, {} files)",
        vol.display(),
        WORKERS * ROUTES_PER_WORKER,
        count_files(&vol)?
    );

    // 2. The EvalAI double.
    let server = FakeEvalAi::start(&fake_evalai, scratch)?;
    println!("fake-evalai: 127.0.0.1:{} (60 requests / 60 s per host user)", server.port);

    // 3. logcopy.
    let logcopy_log = scratch.join("logcopy.out");
    let out = File::create(&logcopy_log).context("cannot create logcopy's output file")?;
    let spawned_at = unix_now();
    let child = Command::new(&logcopy_bin)
        .arg("run")
        .arg("--logs")
        .arg(&vol)
        .args(["--status-period", &STATUS_PERIOD_S.to_string()])
        .args(["--evalai-rpm", &EVALAI_RPM.to_string()])
        .args(["--logs-period", &LOGS_PERIOD_S.to_string()])
        .args(["--local-storage", "logcopy-local"])
        // Only the settings below: an S3_BUCKET or LOGS_DIR in the caller's environment must not leak in.
        .env_clear()
        .env("CHALLENGE_ID", "1")
        .env("SUBMISSION_ID", "1")
        .env("TRACK_ID", "1")
        .env("TEAM_ID", "1")
        .env("EVALAI_API_SERVER", format!("http://127.0.0.1:{}", server.port))
        .env("EVALAI_AUTH_TOKEN", TOKEN)
        // Whatever logcopy writes relative to its working folder (local sinks) stays in the scratch folder.
        .current_dir(scratch)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {}", logcopy_bin.display()))?;
    let mut logcopy = Guarded::new("logcopy", child, logcopy_log);
    println!("logcopy: {} (pid {})", logcopy_bin.display(), logcopy.pid());

    let first = wait_for_put(&server, &mut logcopy, 0, |_| true, Duration::from_secs(30))?
        .ok_or_else(|| anyhow!("logcopy sent no partial PUT within 30 s of its start{}", logcopy.log_tail()))?;
    let startup_ms = (first.t - spawned_at) * 1000.0;
    println!("start-up: first partial PUT {startup_ms:.0} ms after the spawn\n");

    // 4. Latency of 20 writes.
    println!("latency: {WRITES} writes, {} s apart", WRITE_EVERY.as_secs_f64());
    let mut latencies = Vec::new();
    let mut seen_from = 0;
    let start = Instant::now() + Duration::from_millis(500);
    for k in 1..=WRITES {
        let due = start + WRITE_EVERY * (k as u32 - 1);
        sleep(due.saturating_duration_since(Instant::now()));
        let edit = volume.next_edit(k)?;
        let written_at = unix_now();
        volume.write_worker(edit.worker)?;
        let marker = edit.marker.as_str();
        let found = wait_for_put(&server, &mut logcopy, seen_from, |m| m.contains(marker), SEEN_TIMEOUT)?;
        match found {
            Some(put) => {
                let ms = (put.t - written_at) * 1000.0;
                seen_from = put.index + 1;
                latencies.push(ms);
                println!("  write {k:2}/{WRITES}: worker {} {:<32} {ms:7.1} ms", edit.worker, edit.what);
            }
            None => println!(
                "  write {k:2}/{WRITES}: worker {} {:<32} NOT SEEN within {} s",
                edit.worker,
                edit.what,
                SEEN_TIMEOUT.as_secs()
            ),
        }
    }
    let lat = Percentiles::of(&latencies);
    println!(
        "  seen {}/{WRITES}: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms\n",
        latencies.len(),
        ms(lat.p50),
        ms(lat.p90),
        ms(lat.p99),
        ms(lat.max)
    );

    // 5. The idle minute.
    println!("idle: {} s without a write", IDLE.as_secs());
    let idle_from = unix_now();
    let cpu_before = cpu_seconds(logcopy.pid())?;
    sleep(IDLE);
    logcopy.ensure_running()?;
    let cpu_after = cpu_seconds(logcopy.pid())?;
    let idle_to = unix_now();
    let (peak_kib, rss_kib) = memory_kib(logcopy.pid())?;
    let records = server.requests()?;
    let idle_requests = by_method(records.iter().filter(|r| r.t >= idle_from && r.t < idle_to));
    let idle_cpu = cpu_after - cpu_before;
    println!("  EvalAI requests: {}", describe_counts(&idle_requests));
    println!("  CPU: {idle_cpu:.3} s; peak RSS {:.1} MiB; RSS now {:.1} MiB\n", mib(peak_kib), mib(rss_kib));

    // Over the whole run: the budget seen from EvalAI's side.
    let all_requests = by_method(records.iter());
    let busiest = busiest_minute(&records);
    let refused = records.iter().filter(|r| !r.status.is_some_and(|s| (200..300).contains(&s))).count();
    println!(
        "whole run: {} EvalAI requests ({}), at most {busiest} in any 60 s, {refused} not answered 2xx",
        records.len(),
        describe_counts(&all_requests)
    );

    // 6. Stop.
    let status = logcopy.terminate(Duration::from_secs(40))?;
    let exit = exit_text(status);
    println!("logcopy after SIGTERM: {exit}");
    let mut server = server;
    server.stop()?;

    let idle_gets = idle_requests.get("GET").copied().unwrap_or(0);
    let idle_total: usize = idle_requests.values().sum();
    let expected_gets = 60 / STATUS_PERIOD_S as usize;
    let mut t = String::new();
    let _ = writeln!(t, "| measure | value | goal |");
    let _ = writeln!(t, "|---|---|---|");
    let _ = writeln!(t, "| results file rewritten -> EvalAI PUT received, p50 | {} ms | |", ms(lat.p50));
    let _ = writeln!(t, "| p90 | {} ms | |", ms(lat.p90));
    let _ = writeln!(t, "| p99 | {} ms | < 1,000 ms (upstream: up to 13,700 ms) |", ms(lat.p99));
    let _ = writeln!(t, "| max | {} ms | |", ms(lat.max));
    let _ = writeln!(t, "| writes seen on EvalAI | {}/{WRITES} | all |", latencies.len());
    let _ = writeln!(t, "| start-up: spawn -> first PUT received | {startup_ms:.0} ms | |");
    let _ = writeln!(
        t,
        "| EvalAI requests in the idle minute | {idle_total} ({}) | status GETs only: {expected_gets} GET |",
        describe_counts(&idle_requests)
    );
    let _ = writeln!(t, "| CPU in the idle minute | {idle_cpu:.3} s | < 0.5 s |");
    let _ = writeln!(t, "| peak RSS (VmHWM, whole run) | {:.1} MiB | < 30 MiB |", mib(peak_kib));
    let _ = writeln!(t, "| RSS at the end of the idle minute | {:.1} MiB | |", mib(rss_kib));
    let _ = writeln!(t, "| most EvalAI requests in any 60 s | {busiest} | <= {EVALAI_RPM} |");
    let _ = writeln!(t, "| EvalAI answers other than 2xx | {refused} | 0 |");
    let _ = writeln!(t, "| exit after SIGTERM | {exit} | 0 |");
    println!("\n## logcopy run: daemon benchmark\n");
    print!("{t}");
    println!(
        "\n{} writes {} s apart, then {} s idle; {} log files on the volume; {} CPUs.",
        WRITES,
        WRITE_EVERY.as_secs_f64(),
        IDLE.as_secs(),
        LOG_FILES,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("Command: `{BENCH_COMMAND}`, which runs");
    println!(
        "`logcopy run --logs <vol> --status-period {STATUS_PERIOD_S} --evalai-rpm {EVALAI_RPM} --logs-period \
         {LOGS_PERIOD_S}` with CHALLENGE_ID=1 SUBMISSION_ID=1 TRACK_ID=1 TEAM_ID=1 \
         EVALAI_API_SERVER=http://127.0.0.1:<port> EVALAI_AUTH_TOKEN=<token>, against \
         `fixtures/bin/fake-evalai --rate 60 --window 60 --submission {SUBMISSION}`, and --local-storage \
         logcopy-local: S3 and DynamoDB are the local sinks."
    );
    if idle_gets != idle_total {
        println!("Note: the idle minute saw requests other than status GETs.");
    }
    Ok(())
}

/// The `logcopy` binary Cargo built for this benchmark (bench profile), or the release build as a fallback.
fn logcopy_binary() -> Result<PathBuf> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_logcopy"));
    if built.is_file() {
        return Ok(built);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let release = target.join("release/logcopy");
    if release.is_file() {
        return Ok(release);
    }
    bail!(
        "no logcopy binary at {} nor {}; build it with `cargo build --release -p logcopy`",
        built.display(),
        release.display()
    )
}

// ---------------------------------------------------------------------------------------------------------------
// The volume
// ---------------------------------------------------------------------------------------------------------------

/// One rewrite of a worker's results file: which worker, what changed, and the text that proves it on EvalAI.
struct Edit {
    worker: usize,
    what: String,
    marker: String,
}

/// The benchmark's workload: the volume and the workers' results as the benchmark last wrote them.
struct Workload {
    root: PathBuf,
    /// Worker i's file content at index i-1.
    files: Vec<Value>,
    /// Records to copy the shape of (worker 3's, which has all its routes).
    templates: Vec<Value>,
}

impl Workload {
    fn create(fixture: &Path, root: &Path) -> Result<Self> {
        if !fixture.is_dir() {
            bail!("the fixture volume {} is missing", fixture.display());
        }
        testkit::copy_dir(fixture, root)
            .with_context(|| format!("cannot copy {} to {}", fixture.display(), root.display()))?;
        let mut files = Vec::new();
        for i in 1..=3 {
            let path = results_path(root, i);
            let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            files.push(pyjson::parse(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?);
        }
        let templates = records(&files[2])?.to_vec();
        if templates.len() != ROUTES_PER_WORKER {
            bail!("worker 3 of the fixture should have {ROUTES_PER_WORKER} records, not {}", templates.len());
        }
        // Worker 4: the file its evaluator writes before the first route.
        let mut w4 = files[0].clone();
        let cp = field(&mut w4, "_checkpoint")?;
        *field(cp, "progress")? = Value::array(vec![Value::Int(0), Value::Int(ROUTES_PER_WORKER as i64)]);
        *field(cp, "records")? = Value::empty_array();
        files.push(w4);
        let volume = Workload { root: root.to_path_buf(), files, templates };
        volume.write_worker(4)?;
        make_log_files(root)?;
        Ok(volume)
    }

    /// Applies the k-th change (1-based) in memory: the 10 missing routes first, round-robin over the workers
    /// that lack some, then score changes on workers 1, 2, 3, 4, 1, ...
    fn next_edit(&mut self, k: usize) -> Result<Edit> {
        // A score_penalty no record has: the generator rounds to 6 decimals, this has 7.
        let penalty_text = format!("0.{:07}", 9_000_003 - k * 10_000);
        let penalty: f64 = penalty_text.parse()?;
        let marker = format!("\"score_penalty\": {}", pyjson::float_json(penalty));
        let missing: Vec<usize> =
            (1..=WORKERS).filter(|&w| records(&self.files[w - 1]).is_ok_and(|r| r.len() < ROUTES_PER_WORKER)).collect();
        if let Some(&worker) = missing.get(k % missing.len().max(1)) {
            let file = &mut self.files[worker - 1];
            let done = records(file)?.len();
            let route = (worker - 1) * ROUTES_PER_WORKER + done;
            let mut record = self.templates[route % ROUTES_PER_WORKER].clone();
            *field(&mut record, "index")? = Value::Int(done as i64);
            let route_id = format!("RouteScenario_{route}_rep0");
            *field(&mut record, "route_id")? = Value::str(route_id.clone());
            set_penalty(&mut record, penalty)?;
            let cp = field(file, "_checkpoint")?;
            array(field(cp, "records")?)?.push(record);
            *field(cp, "progress")? =
                Value::array(vec![Value::Int(done as i64 + 1), Value::Int(ROUTES_PER_WORKER as i64)]);
            return Ok(Edit { worker, what: format!("+ {route_id}"), marker });
        }
        let worker = (k - 1) % WORKERS + 1;
        let file = &mut self.files[worker - 1];
        let index = k % ROUTES_PER_WORKER;
        let record = array(field(field(file, "_checkpoint")?, "records")?)?
            .get_mut(index)
            .ok_or_else(|| anyhow!("worker {worker} has no record {index}"))?;
        set_penalty(record, penalty)?;
        Ok(Edit { worker, what: format!("score of record {index} changed"), marker })
    }

    /// Rewrites worker i's results file as the evaluator does: `open(path, "w")` + `json.dump(indent=4)`, in place.
    fn write_worker(&self, worker: usize) -> Result<()> {
        let path = results_path(&self.root, worker);
        let text = pyjson::to_pretty(&self.files[worker - 1], false);
        let mut f = File::create(&path).with_context(|| format!("cannot truncate {}", path.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
    }
}

fn results_path(root: &Path, worker: usize) -> PathBuf {
    root.join(format!("agent/agent{worker}/agent_results.json"))
}

/// `scores.score_penalty = penalty` and `score_composed = round(score_route * penalty, 6)`, as the evaluator computes.
fn set_penalty(record: &mut Value, penalty: f64) -> Result<()> {
    let scores = field(record, "scores")?;
    let route = match field(scores, "score_route")? {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        other => bail!("score_route is {}", other.type_name()),
    };
    *field(scores, "score_penalty")? = Value::Float(penalty);
    *field(scores, "score_composed")? = Value::Float((route * penalty * 1e6).round() / 1e6);
    Ok(())
}

fn records(file: &Value) -> Result<&[Value]> {
    file.as_object()
        .and_then(|o| o.get("_checkpoint"))
        .and_then(Value::as_object)
        .and_then(|c| c.get("records"))
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("a results file without `_checkpoint.records`"))
}

/// 2,000 log files of a few hundred bytes: per worker, 5 route folders of 50 under `agent/agent<i>/logs/` and
/// 5 session folders of 50 under `simulator/CarlaUE4-<i>/`.
fn make_log_files(root: &Path) -> Result<()> {
    let per_folder = LOG_FILES / (WORKERS * 2 * ROUTES_PER_WORKER);
    for w in 1..=WORKERS {
        for r in 0..ROUTES_PER_WORKER {
            let route = (w - 1) * ROUTES_PER_WORKER + r;
            let agent = root.join(format!("agent/agent{w}/logs/RouteScenario_{route}_rep0"));
            let sim = root.join(format!("simulator/CarlaUE4-{w}/session{r}"));
            for (dir, kind) in [(agent, "agent"), (sim, "simulator")] {
                fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                for n in 0..per_folder {
                    let mut text = String::new();
                    for line in 0..4 {
                        let _ = writeln!(
                            text,
                            "[2024.03.14-09.{:02}.{:02}:{:03}] {kind} worker {w} route {route}: tick {n} line {line}, \
                             frame {} ok",
                            (n / 60) % 60,
                            n % 60,
                            line * 137 % 1000,
                            n * 20 + line
                        );
                    }
                    let path = dir.join(format!("{kind}-{n:03}.log"));
                    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
                }
            }
        }
    }
    Ok(())
}

fn count_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        n += if entry.file_type()?.is_dir() { count_files(&entry.path())? } else { 1 };
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------------------------

/// A child process that is killed if the benchmark stops before stopping it.
struct Guarded {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Guarded {
    fn new(name: &'static str, child: Child, log: PathBuf) -> Self {
        Guarded { name, child: Some(child), log }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The last lines of the child's output, for error messages.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("\n--- last lines of {} ({}) ---\n{tail}", self.name, self.log.display())
    }

    fn ensure_running(&mut self) -> Result<()> {
        let child = self.child.as_mut().ok_or_else(|| anyhow!("{} was already stopped", self.name))?;
        match child.try_wait()? {
            None => Ok(()),
            Some(status) => {
                self.child = None;
                bail!("{} exited early ({}){}", self.name, exit_text(status), self.log_tail())
            }
        }
    }

    /// SIGTERM, then wait up to `grace` for the exit (SIGKILL after that, and an error).
    fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("{} was already stopped", self.name))?;
        // SAFETY: kill(2) on the pid of a child this process has not yet waited for.
        if unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) } != 0 {
            bail!("cannot send SIGTERM to {}: {}", self.name, std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {} s of SIGTERM{}", self.name, grace.as_secs(), self.log_tail());
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `fixtures/bin/fake-evalai` on 127.0.0.1 and its request log.
struct FakeEvalAi {
    process: Guarded,
    port: u16,
}

/// One API request as the double recorded it.
struct RequestRecord {
    /// Position in the double's log.
    index: usize,
    /// Unix time the double received it.
    t: f64,
    method: String,
    path: String,
    status: Option<u16>,
    /// `body.metadata` of a PUT: the merged results file.
    metadata: Option<String>,
}

impl FakeEvalAi {
    fn start(script: &Path, scratch: &Path) -> Result<Self> {
        if !script.is_file() {
            bail!("the EvalAI double {} is missing", script.display());
        }
        let port_file = scratch.join("fake-evalai.port");
        let log = scratch.join("fake-evalai.out");
        let out = File::create(&log).context("cannot create the EvalAI double's output file")?;
        let child = Command::new("python3")
            .arg(script)
            .args(["--host", "127.0.0.1", "--port", "0", "--port-file"])
            .arg(&port_file)
            .arg("--record")
            .arg(scratch.join("fake-evalai-requests.jsonl"))
            .args(["--token", TOKEN, "--submission", SUBMISSION, "--rate", "60", "--window", "60"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start the EvalAI double (is python3 on PATH?)")?;
        let mut process = Guarded::new("fake-evalai", child, log);
        let deadline = Instant::now() + Duration::from_secs(15);
        let port = loop {
            process.ensure_running().context("the EvalAI double did not start")?;
            if let Ok(text) = fs::read_to_string(&port_file)
                && let Ok(port) = text.trim().parse::<u16>()
            {
                break port;
            }
            if Instant::now() >= deadline {
                bail!("the EvalAI double did not start: no port file after 15 s{}", process.log_tail());
            }
            sleep(Duration::from_millis(50));
        };
        let server = FakeEvalAi { process, port };
        server.requests().context("the EvalAI double does not answer")?;
        Ok(server)
    }

    /// Every API request so far (`GET /__fake__/requests`).
    fn requests(&self) -> Result<Vec<RequestRecord>> {
        let body = http_get(self.port, "/__fake__/requests")?;
        let all: Vec<serde_json::Value> =
            serde_json::from_slice(&body).context("GET /__fake__/requests did not return a JSON list")?;
        Ok(all
            .into_iter()
            .enumerate()
            .map(|(index, r)| RequestRecord {
                index,
                t: r["t"].as_f64().unwrap_or(0.0),
                method: r["method"].as_str().unwrap_or("?").to_string(),
                path: r["path"].as_str().unwrap_or("").to_string(),
                status: r["status"].as_u64().and_then(|s| u16::try_from(s).ok()),
                metadata: r["body"]["metadata"].as_str().map(str::to_string),
            })
            .collect())
    }

    fn stop(&mut self) -> Result<()> {
        self.process.terminate(Duration::from_secs(10)).map(|_| ())
    }
}

/// Polls the double's log until a successful partial PUT at position `from` or later has a `metadata` that
/// `matches`; `None` after `timeout`. Fails if logcopy exits meanwhile.
fn wait_for_put(
    server: &FakeEvalAi,
    logcopy: &mut Guarded,
    from: usize,
    matches: impl Fn(&str) -> bool,
    timeout: Duration,
) -> Result<Option<RequestRecord>> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = server.requests()?.into_iter().skip(from).find(|r| {
            r.method == "PUT"
                && r.path == PARTIAL_PUT_PATH
                && r.status.is_some_and(|s| (200..300).contains(&s))
                && r.metadata.as_deref().is_some_and(&matches)
        });
        if found.is_some() {
            return Ok(found);
        }
        logcopy.ensure_running()?;
        if Instant::now() >= deadline {
            return Ok(None);
        }
        sleep(POLL_EVERY);
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1 (`Connection: close`); the body of a 200 answer.
fn http_get(port: u16, path: &str) -> Result<Vec<u8>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to the EvalAI double on {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).with_context(|| format!("GET {path}: no complete answer"))?;
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("GET {path}: no HTTP header"))?;
    let head = String::from_utf8_lossy(&reply[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        bail!("GET {path}: HTTP {status}");
    }
    Ok(reply[split + 4..].to_vec())
}

// ---------------------------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------------------------

/// Nearest-rank percentiles (with 20 samples, p99 is the maximum).
struct Percentiles {
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

impl Percentiles {
    fn of(samples: &[f64]) -> Self {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            if s.is_empty() { None } else { Some(s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]) }
        };
        Percentiles { p50: rank(0.50), p90: rank(0.90), p99: rank(0.99), max: s.last().copied() }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn by_method<'a>(records: impl Iterator<Item = &'a RequestRecord>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.method.clone()).or_insert(0) += 1;
    }
    counts
}

fn describe_counts(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".to_string();
    }
    counts.iter().map(|(m, n)| format!("{n} {m}")).collect::<Vec<_>>().join(", ")
}

/// The most requests the double received within any 60 s (what its throttle counts).
fn busiest_minute(records: &[RequestRecord]) -> usize {
    let mut times: Vec<f64> = records.iter().map(|r| r.t).collect();
    times.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= 60.0 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

fn exit_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown exit".to_string(),
    }
}

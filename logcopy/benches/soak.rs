//! Soak benchmark of `logcopy run` on a volume of the largest size we plan for: 64 workers, 10,000 routes,
//! 100,000 files, 2 GiB of logs. Memory must stay bounded (it must not grow with the log bytes); the figures are
//! peak RSS and cycle times. Not run in CI (it writes 4 GiB and takes several minutes).
//!
//! `cargo bench -p logcopy --bench soak` runs the release `logcopy` binary (`CARGO_BIN_EXE_logcopy`) as a child and
//! samples it every 100 ms through `/proc/<pid>/status` (VmRSS, VmHWM), `/proc/<pid>/stat` (user + system CPU) and
//! `/proc/<pid>/fd` (open descriptors, every 500 ms); at its exit `wait4` gives its whole-life peak RSS and CPU.
//!
//! 1. **Volume**, in `<target>/soak/run-<pid>/vol` (`<target>`: `$CARGO_TARGET_DIR`, else the workspace's
//!    `target/`): 64 workers whose 2.0 results files hold 10,000 routes in all (contiguous ids, 156 or 157 per
//!    worker, every one finished: progress `[n, n]`), the `start0` markers of every container, and 2 GiB of logs:
//!    seven large files (32 to 384 MiB: the CARLA logs of simulators 1-3, the evaluator logs of workers 1-3, one
//!    recording), 1 MiB logs for the other workers, and 99,679 small recorder-like files (1 to 14 KiB) in 10,512
//!    folders (`agent/agent<i>/logs/RouteScenario_<r>_rep0/` x 6 files, `simulator/CarlaUE4-<i>/session<s>/`):
//!    exactly 100,000 files. The log text is a repeated 4 MiB block of log lines, so the volume builds fast.
//! 2. **logcopy** `run --logs VOL --local OUT --workers 64 --logs-period 10 --final-status` (no done markers, so
//!    it does not end; empty environment; `OUT` beside the volume). Measured: spawn -> first merged file,
//!    -> first partial PUT in `OUT/evalai-requests.jsonl`, -> first full S3 sync (the `volume synced` log lines
//!    add up to every file of the volume), and the syncs and "Too many open files" warnings that took.
//! 3. **Rewrites.** 4 rounds: 1 to 3 worker results files rewritten the evaluator's way (truncate + write in
//!    place), each with a `score_penalty` no other record has, plus appends to 1 or 2 logs (two of them 256 and
//!    384 MiB). Latency from the write to: the merged file holding the change (its mtime), the partial PUT holding
//!    it (the request log's mtime), the S3 copy of the rewritten results file and of each appended log.
//! 4. **Idle** 30 s: CPU, syncs, EvalAI requests, RSS.
//! 5. **End.** Every `agent-<i>.done` and `simulator-<i>.done` written at once: time to the final status PUT and to
//!    the exit, its exit code, what the final flush uploaded; then every volume file is checked in `OUT/s3/1/`.
//! 6. A Markdown table. The scratch folder is removed unless `SOAK_KEEP=1`; logcopy's output is kept in
//!    `<target>/soak/logcopy-last.out`.
//!
//! Knobs: `SOAK_KEEP=1`; `SOAK_NOFILE=N` runs logcopy with an open-file soft limit of N (default: inherited);
//! `SOAK_EVALAI_RPM=N` adds `--evalai-rpm N` (default: logcopy's own, 6 a minute, which paces the PUTs).

mod common;

use anyhow::{Context, Result, bail};
use common::{array, field, obj, record};
use logcopy::results::pyjson::{self, Value};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep};
use std::time::{Duration, Instant, SystemTime};
use testkit::procfs::{cpu_seconds, memory_kib};

const WORKERS: usize = 64;
const ROUTES: usize = 10_000;
const FILES: usize = 100_000;
const LOG_BYTES: u64 = 2 << 30;
const MIB: u64 = 1 << 20;
/// The large logs: (path, MiB).
const LARGE: [(&str, u64); 7] = [
    ("simulator/CarlaUE4-1.log", 384),
    ("simulator/CarlaUE4-2.log", 256),
    ("agent/agent1/leaderboard.log", 192),
    ("agent/agent2/leaderboard.log", 128),
    ("simulator/CarlaUE4-3.log", 96),
    ("agent/agent3/leaderboard.log", 64),
    ("simulator/CarlaUE4-1/recorder/RouteScenario_0_rep0.log", 32),
];
/// The evaluator and CARLA logs of the other workers.
const MEDIUM_BYTES: u64 = MIB;
/// Small files per route folder, on the agent side.
const AGENT_FILES: [&str; 6] =
    ["agent.log", "planner.log", "sensors.csv", "controls.csv", "perception.log", "timing.csv"];
const SESSIONS: usize = 8;

const LOGS_PERIOD_S: u32 = 10;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const IDLE: Duration = Duration::from_secs(30);
const FIRST_CYCLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const ROUND_TIMEOUT: Duration = Duration::from_secs(240);
const EXIT_TIMEOUT: Duration = Duration::from_secs(420);

const PARTIAL_PUT: &str =
    "{\"method\":\"PUT\",\"path\":\"/api/jobs/challenges/1/update_partially_evaluated_submission/\"";
const FINAL_PUT: &str = "{\"method\":\"PUT\",\"path\":\"/api/jobs/challenge/1/update_submission/\"";
const BENCH_COMMAND: &str = "cargo bench -p logcopy --bench soak";

/// One rewrite round: the workers whose results change, and the logs that grow (path, bytes appended).
struct Round {
    workers: &'static [usize],
    logs: &'static [(&'static str, u64)],
}

const ROUNDS: [Round; 4] = [
    Round { workers: &[7], logs: &[("agent/agent7/leaderboard.log", 64 << 10)] },
    Round { workers: &[33], logs: &[("simulator/CarlaUE4-1.log", MIB)] },
    Round {
        workers: &[1, 32, 64],
        logs: &[("agent/agent1/leaderboard.log", 256 << 10), ("simulator/CarlaUE4-32.log", 64 << 10)],
    },
    Round { workers: &[50], logs: &[("simulator/CarlaUE4-2.log", MIB)] },
];

fn main() -> ExitCode {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let soak = target.join("soak");
    let scratch = soak.join(format!("run-{}", std::process::id()));
    let keep = std::env::var_os("SOAK_KEEP").is_some_and(|v| v == "1");
    let outcome = fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create the scratch folder {}", scratch.display()))
        .and_then(|()| run(&scratch));
    let _ = fs::copy(scratch.join("logcopy.out"), soak.join("logcopy-last.out"));
    if keep {
        println!("\nscratch folder kept (SOAK_KEEP=1): {}", scratch.display());
    } else {
        let _ = fs::remove_dir_all(&scratch);
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nsoak benchmark FAILED: {e:#}");
            eprintln!("(logcopy's output: {})", soak.join("logcopy-last.out").display());
            ExitCode::FAILURE
        }
    }
}

fn run(scratch: &Path) -> Result<()> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_logcopy"));
    if !bin.is_file() {
        bail!("no logcopy binary at {}", bin.display());
    }
    let vol = scratch.join("vol");
    let out = scratch.join("out");

    // 1. The volume.
    let built = Instant::now();
    let mut volume = Workload::create(&vol)?;
    let build_s = built.elapsed().as_secs_f64();
    let census = census(&vol)?;
    println!(
        "volume: {} files, {} folders, {:.2} GiB ({:.2} GiB of logs, {:.1} MiB of results), built in {build_s:.1} s",
        census.files,
        census.dirs,
        gib(census.bytes),
        gib(volume.log_bytes),
        mib(volume.results_bytes)
    );
    if census.files != FILES as u64 || volume.log_bytes != LOG_BYTES {
        bail!("the volume should hold {FILES} files and {LOG_BYTES} log bytes");
    }

    // 2. logcopy.
    let log_path = scratch.join("logcopy.out");
    let log_file = File::create(&log_path).context("cannot create logcopy's output file")?;
    let mut args: Vec<String> = ["run", "--logs"].map(String::from).to_vec();
    args.push(vol.display().to_string());
    args.push("--local".into());
    args.push(out.display().to_string());
    for a in ["--workers", "64", "--logs-period", &LOGS_PERIOD_S.to_string(), "--final-status"] {
        args.push(a.into());
    }
    if let Some(rpm) = env_u64("SOAK_EVALAI_RPM")? {
        args.push("--evalai-rpm".into());
        args.push(rpm.to_string());
    }
    let mut cmd = Command::new(&bin);
    cmd.args(&args)
        .env_clear()
        .current_dir(scratch)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    if let Some(n) = env_u64("SOAK_NOFILE")? {
        // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut lim: libc::rlimit = std::mem::zeroed();
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                lim.rlim_cur = (n as libc::rlim_t).min(lim.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let spawned = Instant::now();
    let child = cmd.spawn().with_context(|| format!("cannot start {}", bin.display()))?;
    let mut proc = Proc { pid: child.id() as libc::pid_t, exit: None, log: log_path.clone() };
    drop(child); // Reaped by `Proc` (wait4, for the rusage); dropping a std Child neither waits nor kills.
    let sampler = Sampler::start(proc.pid);
    let nofile = open_file_limit(proc.pid);
    println!("logcopy: pid {}, open-file limit {nofile}\n  {} {}", proc.pid, bin.display(), args.join(" "));

    let mut mon = Monitor::new(&log_path, &out.join("evalai-requests.jsonl"));
    let merged = vol.join("agent/agent_results.json");
    let s3 = out.join("s3/1");

    // First cycle: merged file, partial PUT, full sync.
    let expected_uploads = FILES as u64 + 4; // + the merged file and evalai/{results.json,stdout.txt,metadata.json}
    let mut first_merged = None;
    let mut first_put = None;
    let mut first_sync = None;
    while first_sync.is_none() || first_put.is_none() || first_merged.is_none() {
        proc.ensure_running()?;
        let batch = mon.poll()?;
        if first_merged.is_none() && merged.exists() {
            first_merged = Some(mtime_since(&merged, spawned)?);
        }
        if first_put.is_none() && batch.iter().any(|l| l.line.starts_with(PARTIAL_PUT.as_bytes())) {
            first_put = Some(spawned.elapsed());
        }
        if first_sync.is_none() && mon.uploaded >= expected_uploads {
            first_sync = Some((spawned.elapsed(), mon.syncs.len()));
            println!(
                "first full sync: {:.1} s after the spawn, in {} syncs ({} files, {:.2} GiB uploaded); \
                 {} \"Too many open files\" warnings",
                spawned.elapsed().as_secs_f64(),
                mon.syncs.len(),
                mon.uploaded,
                gib(mon.uploaded_bytes),
                mon.emfile
            );
        }
        if spawned.elapsed() > FIRST_CYCLE_TIMEOUT {
            bail!(
                "no complete first cycle within {} s (merged {first_merged:?}, PUT {first_put:?}, {} of \
                 {expected_uploads} files uploaded){}",
                FIRST_CYCLE_TIMEOUT.as_secs(),
                mon.uploaded,
                proc.log_tail()
            );
        }
        sleep(Duration::from_millis(50));
    }
    let (first_merged, first_put, (first_sync, first_sync_count)) =
        (first_merged.unwrap_or_default(), first_put.unwrap_or_default(), first_sync.unwrap_or_default());
    let first_emfile = mon.emfile;
    println!(
        "first cycle: merged file {:.2} s, partial PUT {:.2} s, full sync {:.1} s after the spawn",
        first_merged.as_secs_f64(),
        first_put.as_secs_f64(),
        first_sync.as_secs_f64()
    );
    let phase_first = (spawned, Instant::now());

    // 3. Rewrites.
    println!("\nrewrites: {} rounds", ROUNDS.len());
    let mut rows = Vec::new();
    for (k, round) in ROUNDS.iter().enumerate() {
        sleep(Duration::from_secs(2));
        rows.push(rewrite_round(k, round, &mut volume, &mut proc, &mut mon, &merged, &s3)?);
    }
    let phase_rewrites = (phase_first.1, Instant::now());

    // 4. Idle.
    let syncs_before = mon.syncs.len();
    let requests_before = mon.requests;
    let cpu_before = cpu_seconds(proc.pid)?;
    let idle_from = Instant::now();
    while idle_from.elapsed() < IDLE {
        proc.ensure_running()?;
        mon.poll()?;
        sleep(Duration::from_millis(250));
    }
    let idle_cpu = cpu_seconds(proc.pid)? - cpu_before;
    let (_, idle_rss) = memory_kib(proc.pid)?;
    let idle_syncs = mon.syncs.len() - syncs_before;
    let idle_requests = mon.requests - requests_before;
    let phase_idle = (idle_from, Instant::now());
    println!(
        "\nidle {} s: CPU {idle_cpu:.2} s, {idle_syncs} syncs that uploaded something, {idle_requests} EvalAI \
         requests, RSS {:.1} MiB",
        IDLE.as_secs(),
        kib_mib(idle_rss)
    );

    // 5. End.
    let (_, rss_before_end) = memory_kib(proc.pid)?;
    let cpu_before_end = cpu_seconds(proc.pid)?;
    let syncs_before_end = mon.syncs.len();
    let status_dir = vol.join("containers-status");
    let markers_at = Instant::now();
    for i in 1..=WORKERS {
        for side in ["agent", "simulator"] {
            File::create(status_dir.join(format!("{side}-{i}.done")))?;
        }
    }
    let mut final_put = None;
    let exit = loop {
        let batch = mon.poll()?;
        if final_put.is_none() && batch.iter().any(|l| l.line.starts_with(FINAL_PUT.as_bytes())) {
            final_put = Some(markers_at.elapsed());
        }
        if let Some(exit) = proc.poll_exit()? {
            break exit;
        }
        if markers_at.elapsed() > EXIT_TIMEOUT {
            bail!("logcopy did not exit within {} s of the done markers{}", EXIT_TIMEOUT.as_secs(), proc.log_tail());
        }
        sleep(Duration::from_millis(50));
    };
    let batch = mon.poll()?;
    if final_put.is_none() && batch.iter().any(|l| l.line.starts_with(FINAL_PUT.as_bytes())) {
        final_put = Some(exit.at - markers_at);
    }
    let samples = sampler.stop();
    let exit_time = exit.at - markers_at;
    let final_cpu = exit.cpu_s - cpu_before_end;
    let phase_end = (markers_at, exit.at);
    let (final_files, final_bytes) =
        mon.syncs[syncs_before_end..].iter().fold((0, 0), |(f, b), s| (f + s.uploaded, b + s.bytes));
    println!(
        "\nend: exit {:.2} s after the done markers ({}), final status PUT at {}, final flush uploaded {final_files} \
         files ({:.1} MiB)",
        exit_time.as_secs_f64(),
        exit.describe(),
        final_put.map_or("(none)".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        mib(final_bytes)
    );
    let dynamo = fs::read_to_string(out.join("dynamodb.json")).unwrap_or_default();
    let check = check_copy(&vol, &s3)?;
    println!(
        "S3 copy: {} of {} volume files present with the volume's size ({} missing, {} of another size); {} objects, \
         {:.2} GiB",
        check.same,
        check.files,
        check.missing,
        check.differ,
        check.objects,
        gib(check.object_bytes)
    );
    for odd in check.odd.iter().take(5) {
        println!("  {odd}");
    }

    // 6. The table.
    let phases = [
        ("spawn -> first full cycle", phase_first),
        ("rewrites", phase_rewrites),
        ("idle", phase_idle),
        ("done markers -> exit", phase_end),
    ];
    let last = samples.last().copied().unwrap_or_default();
    let peak_fds = samples.iter().filter_map(|s| s.fds).max().unwrap_or(0);
    let max_of = |rows: &[RoundRow], f: fn(&RoundRow) -> &[Option<f64>]| -> String {
        let all: Vec<Option<f64>> = rows.iter().flat_map(|r| f(r).to_vec()).collect();
        let seen: Vec<f64> = all.iter().flatten().copied().collect();
        let list = all.iter().map(|v| v.map_or("not seen".into(), |v| format!("{v:.0}"))).collect::<Vec<_>>();
        format!("max {} ms ({} ms)", seen.iter().copied().fold(0.0, f64::max).round(), list.join(", "))
    };
    let mut t = String::new();
    let _ = writeln!(t, "| measure | value |");
    let _ = writeln!(t, "|---|---|");
    let _ = writeln!(
        t,
        "| volume | {} files in {} folders, {:.2} GiB: {:.2} GiB of logs (7 files of 32-384 MiB, 122 of 1 MiB, \
         99,679 of 1-14 KiB), {:.1} MiB of results (64 files, {ROUTES} routes); built in {build_s:.0} s |",
        census.files,
        census.dirs,
        gib(census.bytes),
        gib(volume.log_bytes),
        mib(volume.results_bytes)
    );
    let _ = writeln!(t, "| logcopy's open-file limit | {nofile} |");
    let _ = writeln!(
        t,
        "| peak RSS, whole run (wait4 maxrss) | {:.1} MiB (VmHWM last sampled {:.1} MiB) |",
        kib_mib(exit.maxrss_kib),
        kib_mib(last.hwm)
    );
    for (name, (from, to)) in phases {
        let in_phase: Vec<&Sample> = samples.iter().filter(|s| s.t >= from && s.t <= to).collect();
        let peak = in_phase.iter().map(|s| s.rss).max().unwrap_or(0);
        let hwm = in_phase.last().map_or(0, |s| s.hwm);
        let cpu = match (in_phase.first(), in_phase.last()) {
            (Some(a), Some(b)) => b.cpu - a.cpu,
            _ => 0.0,
        };
        let cpu = if name.starts_with("done") { final_cpu } else { cpu };
        let _ = writeln!(
            t,
            "| phase: {name} ({:.1} s) | peak VmRSS {:.1} MiB, VmHWM at its end {:.1} MiB, CPU {cpu:.1} s |",
            (to - from).as_secs_f64(),
            kib_mib(peak),
            kib_mib(hwm)
        );
    }
    let _ = writeln!(t, "| RSS at the end of the idle period | {:.1} MiB |", kib_mib(idle_rss));
    let _ = writeln!(t, "| RSS just before the done markers | {:.1} MiB |", kib_mib(rss_before_end));
    let _ = writeln!(t, "| RSS at the last sample before the exit | {:.1} MiB |", kib_mib(last.rss));
    let _ = writeln!(t, "| most open file descriptors (sampled every 500 ms) | {peak_fds} |");
    let _ =
        writeln!(t, "| spawn -> first merged file (64 files, {ROUTES} routes) | {:.2} s |", first_merged.as_secs_f64());
    let _ = writeln!(t, "| spawn -> first partial PUT | {:.2} s |", first_put.as_secs_f64());
    let _ = writeln!(
        t,
        "| spawn -> first full sync ({expected_uploads} files, {:.2} GiB) | {:.1} s, {first_sync_count} syncs, \
         {first_emfile} \"Too many open files\" warnings |",
        gib(census.bytes),
        first_sync.as_secs_f64()
    );
    let _ = writeln!(t, "| rewrite -> merged file on disk | {} |", max_of(&rows, |r| &r.merged));
    let _ = writeln!(t, "| rewrite -> partial PUT with it | {} |", max_of(&rows, |r| &r.put));
    let _ = writeln!(t, "| rewrite -> S3 copy of the results file | {} |", max_of(&rows, |r| &r.s3_results));
    let _ = writeln!(t, "| log append -> S3 copy of the log | {} |", max_of(&rows, |r| &r.s3_logs));
    let _ = writeln!(
        t,
        "| idle {} s | CPU {idle_cpu:.2} s, {idle_syncs} uploading syncs, {idle_requests} EvalAI requests |",
        IDLE.as_secs()
    );
    let _ = writeln!(
        t,
        "| done markers -> final status PUT | {} |",
        final_put.map_or("none".into(), |d| format!("{:.2} s", d.as_secs_f64()))
    );
    let _ = writeln!(t, "| done markers -> exit | {:.2} s, {} |", exit_time.as_secs_f64(), exit.describe());
    let _ = writeln!(t, "| final flush | {final_files} files, {:.1} MiB uploaded |", mib(final_bytes));
    let _ = writeln!(
        t,
        "| S3 copy after the exit | {}/{} volume files with the right size{}; DynamoDB item {} |",
        check.same,
        check.files,
        if check.odd.is_empty() { String::new() } else { format!(" (not: {})", check.odd.join(", ")) },
        if dynamo.contains("FINISHED") { "FINISHED" } else { "NOT FINISHED" }
    );
    let _ = writeln!(t, "| CPU, whole run | {:.1} s |", exit.cpu_s);
    let _ = writeln!(t, "| warnings / errors logged | {} / {} |", mon.warnings, mon.errors);
    println!("\n## logcopy run: soak benchmark\n");
    print!("{t}");
    println!(
        "\n{} CPUs. Command: `{BENCH_COMMAND}`, which runs `logcopy {}` (empty environment).",
        thread::available_parallelism().map_or(0, |n| n.get()),
        args.join(" ").replace(&scratch.display().to_string(), "<scratch>")
    );
    if !mon.first_warnings.is_empty() {
        println!("\nFirst distinct warnings and errors:");
        for w in &mon.first_warnings {
            println!("  {}", w.chars().take(240).collect::<String>());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Rewrite rounds
// ---------------------------------------------------------------------------------------------------------------

/// The latencies of one round, in ms (`None`: not seen within the round's time limit).
struct RoundRow {
    merged: Vec<Option<f64>>,
    put: Vec<Option<f64>>,
    s3_results: Vec<Option<f64>>,
    s3_logs: Vec<Option<f64>>,
}

fn rewrite_round(
    k: usize,
    round: &Round,
    volume: &mut Workload,
    proc: &mut Proc,
    mon: &mut Monitor,
    merged: &Path,
    s3: &Path,
) -> Result<RoundRow> {
    // The edits, in memory: a score_penalty with 7 decimals (the generator rounds to 6), unique per round and worker.
    let mut markers = Vec::new();
    for (j, &w) in round.workers.iter().enumerate() {
        let penalty: f64 = format!("0.{:07}", 8_000_001 + k * 100_000 + j * 10_000).parse()?;
        let text = pyjson::float_json(penalty);
        volume.set_penalty(w, (k * 37 + j * 11) % 150, penalty)?;
        markers.push(text);
    }
    let in_file: Vec<String> = markers.iter().map(|m| format!("\"score_penalty\": {m},")).collect();
    let in_put: Vec<String> = markers.iter().map(|m| format!("score_penalty\\\": {m},")).collect();
    let merged_stamp = stamp(merged);
    let results_stamps: Vec<_> = round.workers.iter().map(|&w| stamp(&s3.join(results_rel(w)))).collect();

    // The writes, as the evaluator and the loggers do them.
    let written = SystemTime::now();
    let start = Instant::now();
    for &w in round.workers {
        volume.write_worker(w)?;
    }
    let mut log_sizes = Vec::new();
    for &(rel, bytes) in round.logs {
        let path = volume.root.join(rel);
        let mut f = OpenOptions::new().append(true).open(&path).with_context(|| format!("{}", path.display()))?;
        write_block(&mut f, &volume.block, bytes, k * 4099)?;
        log_sizes.push(fs::metadata(&path)?.len());
    }

    let mut merged_seen: Option<f64> = None;
    let mut put_seen: Option<f64> = None;
    let mut results_seen: Vec<Option<f64>> = vec![None; round.workers.len()];
    let mut logs_seen: Vec<Option<f64>> = vec![None; round.logs.len()];
    let since = |t: SystemTime| t.duration_since(written).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    loop {
        proc.ensure_running()?;
        if merged_seen.is_none() && stamp(merged) != merged_stamp {
            let text = fs::read_to_string(merged).unwrap_or_default();
            if in_file.iter().all(|m| text.contains(m.as_str())) {
                merged_seen = Some(since(fs::metadata(merged)?.modified()?));
            }
        }
        let batch = mon.poll()?;
        if put_seen.is_none() {
            let n = batch.len();
            for (i, l) in batch.iter().enumerate() {
                if l.line.starts_with(PARTIAL_PUT.as_bytes()) {
                    let text = String::from_utf8_lossy(&l.line);
                    if in_put.iter().all(|m| text.contains(m.as_str())) {
                        // The request log's mtime is the PUT's time when nothing was appended after it.
                        let at = if i + 1 == n { l.mtime } else { SystemTime::now() };
                        put_seen = Some(since(at));
                        break;
                    }
                }
            }
        }
        for (j, &w) in round.workers.iter().enumerate() {
            let path = s3.join(results_rel(w));
            if results_seen[j].is_none() && stamp(&path) != results_stamps[j] {
                let text = fs::read_to_string(&path).unwrap_or_default();
                if text.contains(in_file[j].as_str()) {
                    results_seen[j] = Some(since(fs::metadata(&path)?.modified()?));
                }
            }
        }
        for (j, &(rel, _)) in round.logs.iter().enumerate() {
            if logs_seen[j].is_none()
                && let Ok(m) = fs::metadata(s3.join(rel))
                && m.len() == log_sizes[j]
            {
                logs_seen[j] = Some(since(m.modified()?));
            }
        }
        let done = merged_seen.is_some()
            && put_seen.is_some()
            && results_seen.iter().all(Option::is_some)
            && logs_seen.iter().all(Option::is_some);
        if done || start.elapsed() > ROUND_TIMEOUT {
            break;
        }
        sleep(Duration::from_millis(20));
    }
    let ms = |v: Option<f64>| v.map_or("not seen".into(), |v| format!("{v:.0} ms"));
    let list = |v: &[Option<f64>]| v.iter().map(|x| ms(*x)).collect::<Vec<_>>().join(", ");
    let logs: Vec<String> = round.logs.iter().map(|(r, b)| format!("{r} +{} KiB", b >> 10)).collect();
    println!(
        "  round {}: workers {:?}, {}: merged {}, PUT {}, S3 results {}, S3 logs {}",
        k + 1,
        round.workers,
        logs.join(", "),
        ms(merged_seen),
        ms(put_seen),
        list(&results_seen),
        list(&logs_seen)
    );
    Ok(RoundRow { merged: vec![merged_seen], put: vec![put_seen], s3_results: results_seen, s3_logs: logs_seen })
}

/// (inode, mtime ns, size) of a file, `None` when absent.
fn stamp(path: &Path) -> Option<(u64, i64, u64)> {
    fs::metadata(path).ok().map(|m| (m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.len()))
}

fn mtime_since(path: &Path, since: Instant) -> Result<Duration> {
    // Converts the file's mtime to the Instant timeline through the wall clock.
    let age = SystemTime::now().duration_since(fs::metadata(path)?.modified()?).unwrap_or_default();
    Ok(since.elapsed().saturating_sub(age))
}

// ---------------------------------------------------------------------------------------------------------------
// The volume
// ---------------------------------------------------------------------------------------------------------------

struct Workload {
    root: PathBuf,
    /// Worker i's results at index i-1.
    files: Vec<Value>,
    /// The 4 MiB of log text every log is cut from.
    block: Vec<u8>,
    log_bytes: u64,
    results_bytes: u64,
}

fn results_rel(worker: usize) -> String {
    format!("agent/agent{worker}/agent_results.json")
}

impl Workload {
    fn create(root: &Path) -> Result<Self> {
        fs::create_dir_all(root)?;
        let block = log_block();
        let mut v = Workload { root: root.to_path_buf(), files: worker_files(), block, log_bytes: 0, results_bytes: 0 };
        let status = root.join("containers-status");
        fs::create_dir_all(&status)?;
        for i in 1..=WORKERS {
            File::create(status.join(format!("agent-{i}.start0")))?;
            File::create(status.join(format!("simulator-{i}.start0")))?;
            v.write_worker(i)?;
            v.results_bytes += fs::metadata(v.root.join(results_rel(i)))?.len();
        }
        // Large and medium logs.
        let mut sized: Vec<(String, u64)> = LARGE.iter().map(|(p, m)| (p.to_string(), m * MIB)).collect();
        for i in 1..=WORKERS {
            for p in [format!("agent/agent{i}/leaderboard.log"), format!("simulator/CarlaUE4-{i}.log")] {
                if !sized.iter().any(|(q, _)| *q == p) {
                    sized.push((p, MEDIUM_BYTES));
                }
            }
        }
        // Small files: 6 per route on the agent side, the rest over 8 sessions per simulator.
        let small_count = FILES - 2 * WORKERS - WORKERS - sized.len();
        let small_bytes = LOG_BYTES - sized.iter().map(|(_, b)| b).sum::<u64>();
        let mut small: Vec<String> = Vec::with_capacity(small_count);
        for w in 0..WORKERS {
            let (lo, hi) = (w * ROUTES / WORKERS, (w + 1) * ROUTES / WORKERS);
            for r in lo..hi {
                for name in AGENT_FILES {
                    small.push(format!("agent/agent{}/logs/RouteScenario_{r}_rep0/{name}", w + 1));
                }
            }
        }
        let sim = small_count - small.len();
        for n in 0..sim {
            let folder = n % (WORKERS * SESSIONS);
            let (w, s) = (folder / SESSIONS + 1, folder % SESSIONS);
            small.push(format!("simulator/CarlaUE4-{w}/session{s}/recorder-{n:05}.log"));
        }
        // Sizes from 1/8 to 15/8 of the mean, the rounding spread over all of them.
        let mean = small_bytes / small_count as u64;
        let mut sizes: Vec<u64> = (0..small_count as u64).map(|k| mean * (1 + (k * 7919) % 15) / 8).collect();
        let sum: u64 = sizes.iter().sum();
        let (per, rest) = if small_bytes >= sum {
            ((small_bytes - sum) / small_count as u64, (small_bytes - sum) % small_count as u64)
        } else {
            bail!("small file sizes overshoot");
        };
        for s in &mut sizes {
            *s += per;
        }
        sizes[0] += rest;
        sized.extend(small.into_iter().zip(sizes));
        let mut made = std::collections::HashSet::new();
        for (k, (rel, size)) in sized.iter().enumerate() {
            let path = root.join(rel);
            if let Some(dir) = path.parent()
                && made.insert(dir.to_path_buf())
            {
                fs::create_dir_all(dir)?;
            }
            let mut f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            write_block(&mut f, &v.block, *size, k * 7919)?;
            v.log_bytes += size;
        }
        Ok(v)
    }

    /// Sets `score_penalty` (and `score_composed`) of one record of a worker, in memory.
    fn set_penalty(&mut self, worker: usize, index: usize, penalty: f64) -> Result<()> {
        let file = &mut self.files[worker - 1];
        let records = array(field(field(file, "_checkpoint")?, "records")?)?;
        let n = records.len();
        let scores = field(&mut records[index % n], "scores")?;
        let route = match field(scores, "score_route")? {
            Value::Int(i) => *i as f64,
            Value::Float(f) => *f,
            other => bail!("score_route is {}", other.type_name()),
        };
        *field(scores, "score_penalty")? = Value::Float(penalty);
        *field(scores, "score_composed")? = Value::Float((route * penalty * 1e6).round() / 1e6);
        Ok(())
    }

    /// Rewrites worker i's results file as the evaluator does: `open(path, "w")` + `json.dump(indent=4)`, in place.
    fn write_worker(&self, worker: usize) -> Result<()> {
        let path = self.root.join(results_rel(worker));
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let text = pyjson::to_pretty(&self.files[worker - 1], false);
        let mut f = File::create(&path).with_context(|| format!("cannot truncate {}", path.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// 4 MiB of plausible CARLA / evaluator log lines.
fn log_block() -> Vec<u8> {
    let mut s = String::with_capacity(4 << 20);
    let mut n = 0u64;
    while s.len() < 4 << 20 {
        let _ = writeln!(
            s,
            "[2024.03.14-09.{:02}.{:02}:{:03}][{:>4}]LogCarla: frame {} tick {:.3} ms, actors {}, walkers {}, \
             sensors 8, route progress {:.2}%",
            (n / 3600) % 60,
            (n / 60) % 60,
            (n * 137) % 1000,
            n % 1000,
            n * 20,
            (n % 97) as f64 * 0.731 + 12.0,
            100 + n % 61,
            n % 43,
            (n % 10_000) as f64 / 100.0
        );
        n += 1;
    }
    s.truncate(4 << 20);
    s.into_bytes()
}

/// Writes `len` bytes of the block, starting at `offset` in it and wrapping around.
fn write_block(f: &mut File, block: &[u8], len: u64, offset: usize) -> Result<()> {
    let mut at = offset % block.len();
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(block.len() - at);
        f.write_all(&block[at..at + n])?;
        left -= n;
        at = 0;
    }
    Ok(())
}

/// The files of 64 workers that have run all of the 10,000 routes, split into contiguous ranges.
fn worker_files() -> Vec<Value> {
    let sensors: Vec<Value> = [
        "carla_camera",
        "carla_camera",
        "carla_camera",
        "carla_lidar",
        "carla_radar",
        "carla_gnss",
        "carla_imu",
        "carla_speedometer",
    ]
    .into_iter()
    .map(Value::str)
    .collect();
    (0..WORKERS)
        .map(|w| {
            let (lo, hi) = (w * ROUTES / WORKERS, (w + 1) * ROUTES / WORKERS);
            let records: Vec<Value> = (lo..hi).enumerate().map(|(i, r)| record(i, r, r as u64)).collect();
            let n = records.len() as i64;
            obj(vec![
                (
                    "_checkpoint",
                    obj(vec![
                        ("global_record", obj(vec![])),
                        ("progress", Value::array(vec![Value::Int(n), Value::Int(n)])),
                        ("records", Value::array(records)),
                    ]),
                ),
                ("entry_status", Value::str("Started")),
                ("eligible", Value::Bool(false)),
                ("sensors", Value::array(sensors.clone())),
                ("values", Value::empty_array()),
                ("labels", Value::empty_array()),
            ])
        })
        .collect()
}

struct Census {
    files: u64,
    dirs: u64,
    bytes: u64,
}

fn census(dir: &Path) -> Result<Census> {
    let mut c = Census { files: 0, dirs: 0, bytes: 0 };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                c.dirs += 1;
                stack.push(e.path());
            } else {
                c.files += 1;
                c.bytes += m.len();
            }
        }
    }
    Ok(c)
}

struct CopyCheck {
    files: u64,
    same: u64,
    missing: u64,
    differ: u64,
    /// The first few files missing or of another size.
    odd: Vec<String>,
    objects: u64,
    object_bytes: u64,
}

/// Every file of the volume (but the upload manifest and temporary files) against its copy under `s3`.
fn check_copy(vol: &Path, s3: &Path) -> Result<CopyCheck> {
    let mut c = CopyCheck { files: 0, same: 0, missing: 0, differ: 0, odd: Vec::new(), objects: 0, object_bytes: 0 };
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(vol.join(&rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(r);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if r == Path::new("logcopy/.upload-manifest.json") || name.starts_with(".logcopy-tmp.") {
                continue;
            }
            c.files += 1;
            match fs::metadata(s3.join(&r)) {
                Ok(o) if o.len() == m.len() => c.same += 1,
                Ok(o) => {
                    c.differ += 1;
                    c.odd.push(format!("{} ({} bytes, its copy {})", r.display(), m.len(), o.len()));
                }
                Err(_) => {
                    c.missing += 1;
                    c.odd.push(format!("{} (no copy)", r.display()));
                }
            }
        }
    }
    let objects = census(s3)?;
    c.objects = objects.files;
    c.object_bytes = objects.bytes;
    Ok(c)
}

// ---------------------------------------------------------------------------------------------------------------
// The child and what it writes
// ---------------------------------------------------------------------------------------------------------------

/// logcopy's process, reaped with `wait4` for its rusage; killed if the benchmark stops first.
struct Proc {
    pid: libc::pid_t,
    exit: Option<Exit>,
    log: PathBuf,
}

#[derive(Clone, Copy)]
struct Exit {
    at: Instant,
    status: i32,
    maxrss_kib: u64,
    cpu_s: f64,
}

impl Exit {
    fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit code {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            "unknown exit".into()
        }
    }
}

impl Proc {
    fn poll_exit(&mut self) -> Result<Option<Exit>> {
        if let Some(e) = self.exit {
            return Ok(Some(e));
        }
        let mut status = 0;
        // SAFETY: a zeroed rusage is valid; wait4 on our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == 0 {
            return Ok(None);
        }
        if r != self.pid {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let exit = Exit {
            at: Instant::now(),
            status,
            maxrss_kib: ru.ru_maxrss.max(0) as u64,
            cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
        };
        self.exit = Some(exit);
        Ok(Some(exit))
    }

    fn ensure_running(&mut self) -> Result<()> {
        match self.poll_exit()? {
            None => Ok(()),
            Some(e) => bail!("logcopy exited early ({}){}", e.describe(), self.log_tail()),
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("\n--- last lines of logcopy ---\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // SAFETY: our own child, not yet reaped.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

/// A complete line appended to a file, with the file's mtime when it was read.
struct Line {
    line: Vec<u8>,
    mtime: SystemTime,
}

/// Follows a file that only grows.
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    fn new(path: &Path) -> Self {
        Tail { path: path.to_path_buf(), offset: 0, partial: Vec::new() }
    }

    fn lines(&mut self) -> Result<Vec<Line>> {
        let Ok(mut f) = File::open(&self.path) else { return Ok(Vec::new()) };
        let mtime = f.metadata()?.modified()?;
        f.seek(SeekFrom::Start(self.offset))?;
        let n = f.read_to_end(&mut self.partial)?;
        self.offset += n as u64;
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else { return Ok(Vec::new()) };
        let rest = self.partial.split_off(end + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        Ok(done.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| Line { line: l.to_vec(), mtime }).collect())
    }
}

/// What one `volume synced` line reported.
struct Sync {
    uploaded: u64,
    bytes: u64,
}

/// logcopy's output and the EvalAI request log, read as they grow.
struct Monitor {
    stdout: Tail,
    requests_log: Tail,
    syncs: Vec<Sync>,
    uploaded: u64,
    uploaded_bytes: u64,
    emfile: u64,
    warnings: u64,
    errors: u64,
    requests: u64,
    first_warnings: Vec<String>,
}

impl Monitor {
    fn new(stdout: &Path, requests: &Path) -> Self {
        Monitor {
            stdout: Tail::new(stdout),
            requests_log: Tail::new(requests),
            syncs: Vec::new(),
            uploaded: 0,
            uploaded_bytes: 0,
            emfile: 0,
            warnings: 0,
            errors: 0,
            requests: 0,
            first_warnings: Vec::new(),
        }
    }

    /// Reads logcopy's new log lines (counting syncs and warnings); returns the new EvalAI requests.
    fn poll(&mut self) -> Result<Vec<Line>> {
        for l in self.stdout.lines()? {
            let text = String::from_utf8_lossy(&l.line);
            if text.contains("volume synced") {
                let s = Sync { uploaded: field_u64(&text, "uploaded="), bytes: field_u64(&text, "bytes=") };
                self.uploaded += s.uploaded;
                self.uploaded_bytes += s.bytes;
                self.syncs.push(s);
            }
            let warn = text.contains(" WARN ");
            let error = text.contains(" ERROR ");
            if text.contains("os error 24") {
                self.emfile += 1;
            }
            self.warnings += u64::from(warn);
            self.errors += u64::from(error);
            if (warn || error) && self.first_warnings.len() < 6 {
                // The message without the timestamp and the file name, to list distinct kinds.
                let msg: String = text.split(": ").skip(1).collect::<Vec<_>>().join(": ");
                // Kind: its first words and its end (a file name in between varies).
                let head: String = msg.chars().take(14).collect();
                let tail: String = msg.chars().rev().take(32).collect::<Vec<_>>().into_iter().rev().collect();
                if !self.first_warnings.iter().any(|w| w.starts_with(&head) && w.ends_with(&tail)) {
                    self.first_warnings.push(msg);
                }
            }
        }
        let lines = self.requests_log.lines()?;
        self.requests += lines.len() as u64;
        Ok(lines)
    }
}

/// The number after `key` in a log line (`uploaded=123`), 0 if absent.
fn field_u64(text: &str, key: &str) -> u64 {
    text.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------------------
// Sampling /proc
// ---------------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Sample {
    t: Instant,
    rss: u64,
    hwm: u64,
    cpu: f64,
    fds: Option<usize>,
}

impl Default for Sample {
    fn default() -> Self {
        Sample { t: Instant::now(), rss: 0, hwm: 0, cpu: 0.0, fds: None }
    }
}

struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: libc::pid_t) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), samples.clone());
        let thread = thread::spawn(move || {
            let pid = pid as u32;
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                if let (Ok((hwm, rss)), Ok(cpu)) = (memory_kib(pid), cpu_seconds(pid)) {
                    let fds = n
                        .is_multiple_of(5)
                        .then(|| fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).ok())
                        .flatten();
                    v.lock().unwrap_or_else(|p| p.into_inner()).push(Sample { t, rss, hwm, cpu, fds });
                }
                n += 1;
                sleep(SAMPLE_EVERY.saturating_sub(t.elapsed()));
            }
        });
        Sampler { stop, samples, thread }
    }

    fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The soft open-file limit of a process (`/proc/<pid>/limits`).
fn open_file_limit(pid: libc::pid_t) -> String {
    fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}

fn env_u64(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map(Some).with_context(|| format!("{name}={v:?}")),
        _ => Ok(None),
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

fn kib_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

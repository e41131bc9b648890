//! Benchmark of how the volume loop keeps up while the S3 sink does heavy file work (issue 18): a rescan of 100,000
//! files, and the hash of a 16 GiB sparse file. It prints figures and asserts nothing.
//!
//! `cargo bench -p logcopy --bench responsive` runs the `logcopy` binary Cargo built for it as a child, with the
//! embedded local sinks (`run --local OUT`: EvalAI requests go to a file, S3 objects under `OUT/s3/`), in
//! `<target>/responsive/run-<pid>/` (`<target>`: `$CARGO_TARGET_DIR`, else the workspace's `target/`), removed at
//! the end. Two logcopy processes, each with `--evalai-rpm 60` (at the default 6 a minute, the rewrites below would
//! spend the EvalAI budget and the final flush would wait for a slot), three figures:
//!
//! 1. **Rescan.** A copy of `fixtures/volumes/lb2.0-mid-run` (4 workers, 20 routes) plus 100,000 small files in
//!    1,000 folders; `--logs-period 2`, so the S3 sink walks and stats every file every 2 s. Once the first full
//!    sync is done (its `volume synced` lines add up to the 100,000 files), 30 rewrites of worker 1's results file
//!    (the evaluator's way: truncate and write in place, with a `score_penalty` no other record has), each issued
//!    as soon as a rescan is seen under way: logcopy's threads together ran at least 50 ms of the last 100 ms
//!    (`/proc/<pid>/task/*/schedstat`), where a merge of this small volume takes a few ms. Latency: the merged
//!    file's mtime, once it holds the new value, minus the time of the write.
//! 2. **Huge file.** A fresh copy of the fixture plus a 16 GiB sparse file (`truncate -s 16G`: no byte on disk);
//!    `--logs-period 10`. The first sync hashes it. Once logcopy has read 256 MiB of it (its read position, from
//!    `/proc/<pid>/fdinfo`), up to 8 rewrites, one a second, as long as logcopy still reads the file; each waits
//!    for the merged file. Delay as above.
//! 3. **SIGTERM while hashing**, the same process: if the hash has ended, the file is made new (truncated and set to
//!    16 GiB again: a new size and mtime, which the next sync hashes again); once 256 MiB of it are read, SIGTERM.
//!    Measured: SIGTERM -> the line `SIGTERM: final flush` in logcopy's output (polled every 5 ms); -> the S3
//!    sink's line that it leaves its periodic sync for the final one (where logcopy has that line); -> the exit,
//!    and its code (flush budget 20 s).
//!
//! A guard thread truncates the huge file to 0 bytes once logcopy has read 15 GiB of it, or once the local store
//! starts copying it (its `.part` file under `OUT/s3/` grows), so that no 16 GiB copy is ever written: the hash or
//! the copy in progress then ends early. A figure that the guard cut short says so.
//!
//! `LOGCOPY_BIN=<path>` measures another build of logcopy (an older commit's) with this same benchmark.

mod common;

use anyhow::{Context, Result, anyhow, bail};
use common::{array, field};
use logcopy::results::pyjson::{self, Value};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep};
use std::time::{Duration, Instant, SystemTime};
use testkit::procfs::cpu_seconds;
use testkit::procfs::read_position;

const FIXTURE: &str = "lb2.0-mid-run";
const SMALL_FILES: usize = 100_000;
const FOLDERS: usize = 1_000;
const RESCAN_PERIOD_S: u64 = 2;
const RESCAN_SAMPLES: usize = 30;
/// A rescan is under way when logcopy's threads ran this much of the last [`BUSY_WINDOW`].
const BUSY_CPU: Duration = Duration::from_millis(50);
const BUSY_WINDOW: Duration = Duration::from_millis(100);
const FIRST_SYNC_TIMEOUT: Duration = Duration::from_secs(30 * 60);

const HUGE_REL: &str = "simulator/recorder/huge.log";
const HUGE_BYTES: u64 = 16 << 30;
/// The guard truncates the huge file once logcopy has read this much of it.
const GUARD_AT: u64 = 15 << 30;
/// How much of the huge file logcopy has read before a rewrite or SIGTERM: its hash is well under way.
const READ_BEFORE: u64 = 256 << 20;
const HUGE_PERIOD_S: u64 = 10;
const HUGE_SAMPLES: usize = 8;
const HASH_START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a rewrite may take to reach the merged file before it counts as not seen.
const SEEN_TIMEOUT: Duration = Duration::from_secs(180);
const EXIT_TIMEOUT: Duration = Duration::from_secs(180);
const FLUSH_LINE: &str = "SIGTERM: final flush";
/// The S3 sink's line when it leaves a periodic sync for the final one.
const SINK_LINE: &str = "the final sync starts";
const BENCH_COMMAND: &str = "cargo bench -p logcopy --bench responsive";

fn main() -> ExitCode {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let scratch = target.join("responsive").join(format!("run-{}", std::process::id()));
    let outcome = fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create the scratch folder {}", scratch.display()))
        .and_then(|()| run(&scratch));
    match outcome {
        Ok(()) => {
            let _ = fs::remove_dir_all(&scratch);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nresponsive benchmark FAILED: {e:#}");
            eprintln!("(the volumes and logcopy's output are kept in {})", scratch.display());
            ExitCode::FAILURE
        }
    }
}

fn run(scratch: &Path) -> Result<()> {
    // LOGCOPY_BIN measures another build (e.g. an older commit's) with this same benchmark.
    let bin =
        std::env::var_os("LOGCOPY_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_logcopy")), PathBuf::from);
    if !bin.is_file() {
        bail!("no logcopy binary at {}", bin.display());
    }
    println!("responsive benchmark: {} ({} CPUs)", bin.display(), cpus());
    let rescan = rescan_phase(&bin, &scratch.join("rescan"))?;
    let huge = huge_phase(&bin, &scratch.join("huge"))?;

    let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0} ms"));
    let lat = Percentiles::of(&rescan.latencies);
    let mut t = String::new();
    let _ = writeln!(t, "| measure | value | goal |");
    let _ = writeln!(t, "|---|---|---|");
    let _ = writeln!(
        t,
        "| rewrite -> merged file while a rescan of {} files runs, p50 / p99 / max | {} / {} / {} ({} of {} \
         rewrites issued during a rescan, {} not seen) | p99 < 300 ms |",
        SMALL_FILES,
        ms(lat.p50),
        ms(lat.p99),
        ms(lat.max),
        rescan.aligned,
        RESCAN_SAMPLES,
        rescan.unseen
    );
    let _ = writeln!(
        t,
        "| logcopy CPU while rewriting during rescans (--logs-period {RESCAN_PERIOD_S}) | {:.2} s per s | |",
        rescan.cpu_per_s
    );
    let _ = writeln!(t, "| first full sync of the {} files | {:.1} s | |", SMALL_FILES, rescan.first_sync_s);
    let _ = writeln!(t, "| SIGTERM -> exit after the rescan phase | {:.1} s | |", rescan.exit_s);
    let delays: Vec<String> = huge.delays.iter().map(|d| format!("{d:.0}")).collect();
    let worst = huge.delays.iter().copied().fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
    let _ = writeln!(
        t,
        "| results rewrite -> merged file while a 16 GiB sparse file is hashed, max (each, ms) | {} ({}{}) | \
         < 300 ms |",
        ms(worst),
        if delays.is_empty() { "none".to_string() } else { delays.join(", ") },
        if huge.cut_in_delays { "; the guard cut the hash short at 15 GiB" } else { "" }
    );
    let _ = writeln!(t, "| SIGTERM -> `{FLUSH_LINE}` logged, hash in progress | {} | < 100 ms |", ms(huge.flush_ms));
    let _ = writeln!(t, "| SIGTERM -> S3 sink leaves its sync for the final one | {} | < 100 ms |", ms(huge.sink_ms));
    let _ = writeln!(
        t,
        "| SIGTERM -> exit, hash in progress (flush budget 20 s) | {:.1} s, {}{} | <= 20 s, 0 |",
        huge.exit_s,
        huge.exit,
        if huge.cut_in_exit { "; the guard cut a hash short at 15 GiB" } else { "" }
    );
    let _ = writeln!(t, "| times the guard truncated the huge file | {} | |", huge.guard_cuts);
    println!("\n## logcopy run: responsiveness benchmark\n");
    print!("{t}");
    println!(
        "\n{} CPUs. Command: `{BENCH_COMMAND}`, which runs `logcopy run --logs <vol> --local <out> --logs-period \
         {RESCAN_PERIOD_S} --evalai-rpm 60` on {FIXTURE} + {} small files, then `logcopy run --logs <vol> --local \
         <out> --logs-period {HUGE_PERIOD_S} --evalai-rpm 60` on {FIXTURE} + a 16 GiB sparse file (empty \
         environment).",
        cpus(),
        SMALL_FILES
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Phase 1: rewrites during rescans of 100,000 files

struct RescanFigures {
    latencies: Vec<f64>,
    aligned: usize,
    unseen: usize,
    cpu_per_s: f64,
    first_sync_s: f64,
    exit_s: f64,
}

fn rescan_phase(bin: &Path, dir: &Path) -> Result<RescanFigures> {
    let vol = copy_fixture(dir)?;
    let built = Instant::now();
    for n in 0..SMALL_FILES {
        let folder = vol.join(format!("agent/agent{}/logs/folder{:04}", n % 4 + 1, n % FOLDERS));
        if n < FOLDERS {
            fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
        }
        let line =
            format!("2024-03-20 09:{:02}:{:02} INFO step {n} of the route, frame {}\n", n / 60 % 60, n % 60, n * 20);
        fs::write(folder.join(format!("step-{n:06}.log")), line.repeat(1 + n % 3))?;
    }
    println!(
        "\n1. rescan: {} small files in {FOLDERS} folders written in {:.1} s",
        SMALL_FILES,
        built.elapsed().as_secs_f64()
    );
    let mut results = Results::load(&vol)?;
    let mut lc = Logcopy::start(bin, &vol, dir, RESCAN_PERIOD_S)?;
    let spawned = Instant::now();
    let mut uploaded = 0u64;
    while uploaded < SMALL_FILES as u64 {
        lc.alive()?;
        for l in lc.new_lines()? {
            if l.contains("volume synced") {
                uploaded += number_after(&l, "uploaded=");
            }
        }
        if spawned.elapsed() > FIRST_SYNC_TIMEOUT {
            bail!("the first full sync did not end within {FIRST_SYNC_TIMEOUT:?} ({uploaded} files){}", lc.tail());
        }
        sleep(Duration::from_millis(100));
    }
    let first_sync_s = spawned.elapsed().as_secs_f64();
    println!("   first full sync: {uploaded} files in {first_sync_s:.1} s");
    sleep(Duration::from_secs(RESCAN_PERIOD_S));

    let (cpu0, t0) = (cpu_seconds(lc.pid())?, Instant::now());
    let mut fig =
        RescanFigures { latencies: Vec::new(), aligned: 0, unseen: 0, cpu_per_s: 0.0, first_sync_s, exit_s: 0.0 };
    for k in 0..RESCAN_SAMPLES {
        let busy = wait_busy(&mut lc, Duration::from_secs(3 * RESCAN_PERIOD_S))?;
        fig.aligned += usize::from(busy);
        let (marker, written) = results.rewrite()?;
        match wait_merged(&mut lc, &vol, &marker, written)? {
            Some(ms) => {
                println!(
                    "   rewrite {:2}/{RESCAN_SAMPLES}{}: {ms:6.0} ms",
                    k + 1,
                    if busy { "" } else { " (no rescan seen)" }
                );
                fig.latencies.push(ms);
            }
            None => {
                println!("   rewrite {:2}/{RESCAN_SAMPLES}: NOT SEEN within {SEEN_TIMEOUT:?}", k + 1);
                fig.unseen += 1;
            }
        }
        // Past this rewrite's own merge and publishing, which must not count as a rescan.
        sleep(Duration::from_millis(300));
    }
    fig.cpu_per_s = (cpu_seconds(lc.pid())? - cpu0) / t0.elapsed().as_secs_f64();
    let (exit, took) = lc.terminate()?;
    println!("   SIGTERM: {exit} after {:.1} s", took.as_secs_f64());
    fig.exit_s = took.as_secs_f64();
    lc.show(&["SIGTERM", "final sync", "sink finished", "WARN", "ERROR"]);
    Ok(fig)
}

/// Waits until logcopy's threads together ran [`BUSY_CPU`] of the last [`BUSY_WINDOW`], at most `limit`;
/// whether they did.
fn wait_busy(lc: &mut Logcopy, limit: Duration) -> Result<bool> {
    let start = Instant::now();
    let mut seen: VecDeque<(Instant, u64)> = VecDeque::new();
    while start.elapsed() < limit {
        lc.alive()?;
        let now = Instant::now();
        let cpu = cpu_ns(lc.pid());
        while seen.front().is_some_and(|(t, _)| now.duration_since(*t) > BUSY_WINDOW) {
            seen.pop_front();
        }
        if let Some((t, c)) = seen.front()
            && now.duration_since(*t) >= BUSY_WINDOW * 9 / 10
            && cpu.saturating_sub(*c) >= BUSY_CPU.as_nanos() as u64
        {
            return Ok(true);
        }
        seen.push_back((now, cpu));
        sleep(Duration::from_millis(5));
    }
    Ok(false)
}

/// Nanoseconds on a CPU of the threads of `pid` now alive (`/proc/<pid>/task/*/schedstat`, first field), at a finer
/// grain than `/proc/<pid>/stat`'s clock ticks. A thread that ends takes its time out of the sum: a window across
/// its end reads as idle.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------------------------
// Phases 2 and 3: the 16 GiB sparse file

struct HugeFigures {
    delays: Vec<f64>,
    cut_in_delays: bool,
    flush_ms: Option<f64>,
    sink_ms: Option<f64>,
    exit_s: f64,
    exit: String,
    cut_in_exit: bool,
    guard_cuts: usize,
}

fn huge_phase(bin: &Path, dir: &Path) -> Result<HugeFigures> {
    let vol = copy_fixture(dir)?;
    let huge = vol.join(HUGE_REL);
    fs::create_dir_all(huge.parent().unwrap_or(&vol))?;
    File::create(&huge)?.set_len(HUGE_BYTES)?;
    println!("\n2. huge file: {} of {} GiB, sparse", huge.display(), HUGE_BYTES >> 30);
    let mut results = Results::load(&vol)?;
    let mut lc = Logcopy::start(bin, &vol, dir, HUGE_PERIOD_S)?;
    let guard = Guard::start(lc.pid(), &huge, &dir.join("out"));
    wait_read(&mut lc, &huge, "its first sync")?;

    let mut delays = Vec::new();
    for k in 0..HUGE_SAMPLES {
        let due = Instant::now() + Duration::from_secs(1);
        if read_position(lc.pid(), &huge).is_none() {
            break;
        }
        let (marker, written) = results.rewrite()?;
        let ms = wait_merged(&mut lc, &vol, &marker, written)?
            .ok_or_else(|| anyhow!("rewrite {} not merged within {SEEN_TIMEOUT:?}{}", k + 1, lc.tail()))?;
        let reading = read_position(lc.pid(), &huge).map_or("the hash had ended".to_string(), |p| {
            format!("logcopy at {:.1} GiB of the file", p as f64 / (1u64 << 30) as f64)
        });
        println!("   rewrite {}: merged after {ms:.0} ms ({reading})", k + 1);
        delays.push(ms);
        sleep(due.saturating_duration_since(Instant::now()));
    }
    let delays_end = Instant::now();

    println!("3. SIGTERM while the file is hashed");
    if read_position(lc.pid(), &huge).is_none() {
        let f = OpenOptions::new().write(true).open(&huge)?;
        f.set_len(0)?;
        f.set_len(HUGE_BYTES)?;
        wait_read(&mut lc, &huge, "a periodic sync")?;
    }
    let pos = read_position(lc.pid(), &huge).unwrap_or(0);
    let sent = lc.signal_term()?;
    let (mut flush_ms, mut sink_ms) = (None, None);
    let status = loop {
        for l in lc.new_lines()? {
            let at = sent.elapsed().as_secs_f64() * 1000.0;
            if flush_ms.is_none() && l.contains(FLUSH_LINE) {
                flush_ms = Some(at);
            }
            if sink_ms.is_none() && l.contains(SINK_LINE) {
                sink_ms = Some(at);
            }
        }
        if let Some(status) = lc.child.try_wait()? {
            break status;
        }
        if sent.elapsed() > EXIT_TIMEOUT {
            bail!("logcopy did not exit within {EXIT_TIMEOUT:?} of SIGTERM{}", lc.tail());
        }
        sleep(Duration::from_millis(5));
    };
    let exit_s = sent.elapsed().as_secs_f64();
    for l in lc.new_lines()? {
        if sink_ms.is_none() && l.contains(SINK_LINE) {
            sink_ms = Some(exit_s * 1000.0);
        }
    }
    let cuts = guard.stop();
    // What logcopy says it did with the file, for reading the figures.
    let said = fs::read_to_string(&lc.out).unwrap_or_default();
    for l in said
        .lines()
        .filter(|l| ["volume synced", "SIGTERM", "final sync", "did not finish"].iter().any(|k| l.contains(k)))
    {
        println!("   logcopy: {}", l.chars().take(200).collect::<String>());
    }
    println!(
        "   SIGTERM at {:.1} GiB of the file: final flush logged after {}, exit after {exit_s:.1} s ({})",
        pos as f64 / (1u64 << 30) as f64,
        flush_ms.map_or("(never)".to_string(), |m| format!("{m:.0} ms")),
        status
    );
    Ok(HugeFigures {
        delays,
        cut_in_delays: cuts.iter().any(|t| *t < delays_end),
        flush_ms,
        sink_ms,
        exit_s,
        exit: status.to_string(),
        cut_in_exit: cuts.iter().any(|t| *t >= sent),
        guard_cuts: cuts.len(),
    })
}

/// Waits until logcopy has read [`READ_BEFORE`] of `huge`.
fn wait_read(lc: &mut Logcopy, huge: &Path, during: &str) -> Result<()> {
    let start = Instant::now();
    while read_position(lc.pid(), huge).unwrap_or(0) < READ_BEFORE {
        lc.alive()?;
        if start.elapsed() > HASH_START_TIMEOUT {
            bail!("logcopy did not read the huge file in {during} within {HASH_START_TIMEOUT:?}{}", lc.tail());
        }
        sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Truncates the huge file once logcopy has read [`GUARD_AT`] of it, so that no copy of 16 GiB is ever written.
struct Guard {
    stop: Arc<AtomicBool>,
    cuts: Arc<Mutex<Vec<Instant>>>,
    thread: thread::JoinHandle<()>,
}

impl Guard {
    /// Follows logcopy's reads of `huge`, and the copy of it that the local store would write under `out`.
    fn start(pid: u32, huge: &Path, out: &Path) -> Guard {
        let (stop, cuts) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (s, c, huge) = (stop.clone(), cuts.clone(), huge.to_path_buf());
        // The local store copies into `.<name>.part` beside the object, and its copy does not move the read position.
        let part = out.join("s3/1").join(HUGE_REL).with_file_name(".huge.log.part");
        let started = Instant::now();
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let why = if read_position(pid, &huge).is_some_and(|p| p >= GUARD_AT) {
                    Some("logcopy read 15 GiB of it")
                } else if fs::metadata(&part).is_ok_and(|m| m.len() > 0) {
                    Some("the local store is copying it")
                } else {
                    None
                };
                // Dated before the truncation: the kernel ends the reads at once but then drops the file's cached pages,
                // which can take a second.
                let now = Instant::now();
                if let Some(why) = why
                    && fs::metadata(&huge).is_ok_and(|m| m.len() > 0)
                    && let Ok(f) = OpenOptions::new().write(true).open(&huge)
                    && f.set_len(0).is_ok()
                {
                    c.lock().unwrap_or_else(|p| p.into_inner()).push(now);
                    let at = now.duration_since(started).as_secs_f64();
                    println!("   (guard, {at:.1} s: {why}; the huge file truncated to 0 bytes)");
                }
                sleep(Duration::from_millis(5));
            }
        });
        Guard { stop, cuts, thread }
    }

    /// When it truncated the file, once it has stopped.
    fn stop(self) -> Vec<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        std::mem::take(&mut *self.cuts.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The volume and logcopy

/// A copy of the fixture volume in `dir/vol`.
fn copy_fixture(dir: &Path) -> Result<PathBuf> {
    let (src, vol) = (Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/volumes").join(FIXTURE), dir.join("vol"));
    fs::create_dir_all(dir)?;
    let status = Command::new("cp").arg("-r").arg(&src).arg(&vol).status().context("cannot run cp")?;
    if !status.success() {
        bail!("cp -r {} {} failed: {status}", src.display(), vol.display());
    }
    Ok(vol)
}

/// Worker 1's results file, rewritten the evaluator's way with a new `score_penalty` in its first record.
struct Results {
    path: PathBuf,
    data: Value,
    writes: usize,
}

impl Results {
    fn load(vol: &Path) -> Result<Results> {
        let path = vol.join("agent/agent1/agent_results.json");
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let data = pyjson::parse(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Results { path, data, writes: 0 })
    }

    /// Rewrites the file (truncate + write in place); returns the text that shows the change in the merged file and
    /// the time of the write.
    fn rewrite(&mut self) -> Result<(String, SystemTime)> {
        self.writes += 1;
        // 7 decimals: no other record has such a penalty.
        let penalty: f64 = format!("0.{:07}", 8_000_001 + self.writes).parse()?;
        let records = array(field(field(&mut self.data, "_checkpoint")?, "records")?)?;
        let first = records.first_mut().ok_or_else(|| anyhow!("worker 1 has no record"))?;
        *field(field(first, "scores")?, "score_penalty")? = Value::Float(penalty);
        let text = pyjson::to_pretty(&self.data, false);
        let written = SystemTime::now();
        let mut f = File::create(&self.path).with_context(|| format!("cannot truncate {}", self.path.display()))?;
        f.write_all(text.as_bytes())?;
        Ok((format!("\"score_penalty\": {}", pyjson::float_json(penalty)), written))
    }
}

/// Waits for the merged file to hold `marker`; the ms from `written` to its mtime, `None` after [`SEEN_TIMEOUT`].
fn wait_merged(lc: &mut Logcopy, vol: &Path, marker: &str, written: SystemTime) -> Result<Option<f64>> {
    let merged = vol.join("agent/agent_results.json");
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < SEEN_TIMEOUT {
        lc.alive()?;
        if let Ok(m) = fs::metadata(&merged)
            && let Ok(mtime) = m.modified()
            && last != Some(mtime)
        {
            last = Some(mtime);
            if fs::read_to_string(&merged).is_ok_and(|t| t.contains(marker)) {
                return Ok(Some(mtime.duration_since(written).map_or(0.0, |d| d.as_secs_f64() * 1000.0)));
            }
        }
        sleep(Duration::from_millis(5));
    }
    Ok(None)
}

/// A `logcopy run` child, killed if the benchmark stops first; its output goes to a file that is followed.
struct Logcopy {
    child: Child,
    out: PathBuf,
    offset: u64,
    partial: String,
}

impl Logcopy {
    /// `logcopy run` with `--logs-period period_s` and an EvalAI budget of 60 requests a minute, so that pacing
    /// never holds back the final flush (the default 6 a minute would after the many rewrites).
    fn start(bin: &Path, vol: &Path, dir: &Path, period_s: u64) -> Result<Logcopy> {
        let out = dir.join("logcopy.out");
        let file = File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--logs")
            .arg(vol)
            .arg("--local")
            .arg(dir.join("out"))
            .args(["--logs-period", &period_s.to_string(), "--evalai-rpm", "60"])
            .env_clear()
            // The huge file is over the default --max-upload-bytes, which would skip it unhashed (an environment
            // variable, which a build from before the flag ignores).
            .env("MAX_UPLOAD_BYTES", u64::MAX.to_string())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        println!("   logcopy: pid {}, --logs-period {period_s}", child.id());
        Ok(Logcopy { child, out, offset: 0, partial: String::new() })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("logcopy exited early ({}){}", status, self.tail()),
        }
    }

    /// The complete lines logcopy wrote since the last call.
    fn new_lines(&mut self) -> Result<Vec<String>> {
        let mut f = File::open(&self.out)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        self.offset += f.read_to_end(&mut bytes)? as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else { return Ok(Vec::new()) };
        let rest = self.partial.split_off(end + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        Ok(done.lines().map(str::to_string).collect())
    }

    fn tail(&self) -> String {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("\n--- last lines of logcopy ---\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
    }

    /// Prints logcopy's lines that hold one of `keys`, for reading the figures.
    fn show(&self, keys: &[&str]) {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        for l in text.lines().filter(|l| keys.iter().any(|k| l.contains(k))) {
            println!("   logcopy: {}", l.chars().take(200).collect::<String>());
        }
    }

    fn signal_term(&mut self) -> Result<Instant> {
        let at = Instant::now();
        // SAFETY: kill(2) on our own child, not yet waited for.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) } != 0 {
            bail!("cannot send SIGTERM to logcopy: {}", std::io::Error::last_os_error());
        }
        Ok(at)
    }

    /// SIGTERM, then the exit (within [`EXIT_TIMEOUT`]) and how long it took.
    fn terminate(&mut self) -> Result<(String, Duration)> {
        let sent = self.signal_term()?;
        while sent.elapsed() < EXIT_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status.to_string(), sent.elapsed()));
            }
            sleep(Duration::from_millis(10));
        }
        bail!("logcopy did not exit within {EXIT_TIMEOUT:?} of SIGTERM{}", self.tail())
    }
}

impl Drop for Logcopy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Figures

/// Nearest-rank percentiles.
struct Percentiles {
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

impl Percentiles {
    fn of(samples: &[f64]) -> Percentiles {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |q: f64| (!s.is_empty()).then(|| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]);
        Percentiles { p50: rank(0.5), p99: rank(0.99), max: s.last().copied() }
    }
}

/// The number after `key` in a log line (`uploaded=123`), 0 if absent.
fn number_after(line: &str, key: &str) -> u64 {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

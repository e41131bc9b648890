//! Benchmark of the S3/DynamoDB side of `logcopy run`: what a sync costs, how many requests it makes, and that
//! an idle volume, a restart and a restore upload nothing again.
//!
//! `cargo bench -p logcopy --bench storage` runs, in about two to three minutes, the release `logcopy` binary
//! (`CARGO_BIN_EXE_logcopy`, as a child process) against a local `moto_server` (the harness of
//! `tests/storage.rs`, `tests/support/moto.rs`: `.venv/bin/moto_server` or `MOTO_SERVER`, on a free 127.0.0.1
//! port, its request recorder on) and prints what it measured. Nothing is asserted: the figures are for reading
//! (and for docs/benchmarks.md), the goals are printed beside them.
//!
//! 1. **Volume.** A copy of `fixtures/volumes/lb2.0-mid-run` (4 workers, real 2.0 results files) in a scratch
//!    folder, plus 2,000 small log files (200 to 600 bytes each) spread over `agent/agent<i>/logs/` and
//!    `simulator/logs/`, and two 20 MiB recordings of random bytes, `simulator/recorder/rec1.log` and `rec2.log`
//!    (multipart uploads of 8 MiB parts: 3 parts each).
//! 2. **AWS.** `moto_server` with the bucket and the submissions table created, then its recording reset.
//! 3. **First sync.** `logcopy run --once --logs <vol>` with the AWS environment of `tests/storage.rs` (EvalAI on
//!    the embedded local sink, in a fresh working folder since that sink writes to `./logcopy-local`). Measured:
//!    wall time; logcopy's user + system CPU seconds and peak RSS, from `/usr/bin/time -f '%e %U %S %M'` (without
//!    it: `getrusage(RUSAGE_CHILDREN)` deltas, and the largest RSS of any child so far); and the requests moto
//!    recorded, S3 by kind (PUT object, multipart create / part / complete, anything else) and DynamoDB by
//!    operation. The fewest requests that can upload these objects is one PUT per small file plus, per multipart
//!    file, one create, its parts and one complete; the benchmark prints that number beside the real one.
//! 4. **Idle minute.** `logcopy run --logs <vol> --logs-period 10` (the daemon, not `--once`), 10 s for its
//!    start-up sync, then the recording is reset and the volume left untouched for 60 s. Counted: the S3 and
//!    DynamoDB requests of that minute (upstream's `aws s3 sync` loop makes about 48 a minute), the daemon's CPU
//!    time in it (`/proc/<pid>/stat`) and its peak RSS (`VmHWM`). Then SIGTERM, and its exit code (goal 0).
//! 5. **Restart.** `logcopy run --once` again on the same volume: the objects uploaded again, except
//!    `logcopy/logcopy.log`, which each run appends to and so legitimately goes again (counted separately).
//! 6. **Restore.** `RESUME=1 logcopy restore --logs <fresh folder>` with the same environment (wall time, CPU,
//!    objects downloaded = GET object requests), then `logcopy run --once` on the fresh folder: the objects
//!    uploaded again, `logcopy/logcopy.log` excepted as above.
//! 7. A Markdown table of every figure and the command.
//!
//! moto records each request with its body (base64) in a JSON file, so the first sync's wall time is mostly
//! moto's: it measures the whole exchange on one machine, not logcopy alone; logcopy's own cost is its CPU time.
//!
//! On failure (moto does not start, logcopy exits non-zero or does not stop, ...) the benchmark says what failed,
//! kills what it started, keeps the scratch folder (volume, logcopy's output, moto's log and recording) and exits 1.

use anyhow::{Context, Result, anyhow, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};
use testkit::moto::Moto;

/// The submission the benchmark plays (ids as the storage tests use them) and its table.
const SUBMISSION: &str = "4321";
const TEAM: &str = "987";
const TABLE: &str = "leaderboard-submissions";
/// logcopy's own log, by its S3 key.
const LOG_KEY: &str = "4321/logcopy/logcopy.log";

/// Every regular file of the volume, by its S3 key (the manifest excluded).
fn volume_files(vol: &Path) -> BTreeMap<String, Vec<u8>> {
    testkit::moto::files_by_key(vol, SUBMISSION, &["logcopy/.upload-manifest.json"])
}

const BUCKET: &str = "bench-storage";
const FIXTURE: &str = "lb2.0-mid-run";
const WORKERS: usize = 4;
const LOG_FILES: usize = 2_000;
const RECORDINGS: [&str; 2] = ["simulator/recorder/rec1.log", "simulator/recorder/rec2.log"];
const RECORDING_BYTES: usize = 20 * 1024 * 1024;
const LOGS_PERIOD_S: u32 = 10;
const STARTUP_WAIT: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(60);
/// How long the daemon may take to exit after SIGTERM (its flush budget is 20 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
const TIME: &str = "/usr/bin/time";
/// Upstream's `aws s3 sync` loop on an idle volume, per minute.
const UPSTREAM_IDLE_REQUESTS: u32 = 48;

const BENCH_COMMAND: &str = "cargo bench -p logcopy --bench storage";

fn main() -> ExitCode {
    let scratch = std::env::temp_dir().join(format!("logcopy-bench-storage-{}", std::process::id()));
    let mut moto_dir = None;
    let outcome = fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create the scratch folder {}", scratch.display()))
        .and_then(|()| run(&scratch, &mut moto_dir));
    match outcome {
        Ok(()) => {
            let _ = fs::remove_dir_all(&scratch);
            if let Some(d) = &moto_dir {
                let _ = fs::remove_dir_all(d);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\nstorage benchmark FAILED: {e:#}");
            eprintln!("(the volume and logcopy's output are kept in {})", scratch.display());
            if let Some(d) = &moto_dir {
                eprintln!("(moto's log and request recording are kept in {})", d.display());
            }
            ExitCode::FAILURE
        }
    }
}

/// Every figure of the final table.
#[derive(Default)]
struct Figures {
    volume_files: usize,
    volume_bytes: u64,
    first: Measured,
    first_reqs: Requests,
    first_missing: usize,
    idle_reqs: Requests,
    /// What the daemon appended to its own log (`logcopy/logcopy.log`, on the volume) in the idle minute.
    idle_log_lines: Vec<String>,
    idle_cpu_s: f64,
    daemon_peak_rss_kib: u64,
    daemon_exit: Option<i32>,
    restart: Measured,
    restart_reqs: Requests,
    restore: Measured,
    restore_reqs: Requests,
    restored_files: usize,
    restored_bytes: u64,
    after_restore: Measured,
    after_restore_reqs: Requests,
}

fn run(scratch: &Path, moto_dir: &mut Option<PathBuf>) -> Result<()> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_logcopy"));
    let clock = Clock::detect();
    let mut fig = Figures::default();
    println!("storage benchmark: logcopy {} ({} CPUs), measuring with {}", bin.display(), cpus(), clock.describe());

    // 1. The volume.
    let vol = scratch.join("vol");
    copy_fixture(&vol)?;
    let (logs, recs) = populate(&vol)?;
    println!("volume: {FIXTURE} + {logs} log files + {recs} recordings of 20 MiB in {}", vol.display());

    // 2. moto, with the bucket and the table.
    let moto =
        catch_unwind(|| Moto::start("bench")).map_err(|p| anyhow!("moto_server did not start: {}", panic_text(&p)))?;
    *moto_dir = moto.recording.parent().map(Path::to_path_buf);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    catch_unwind(AssertUnwindSafe(|| rt.block_on(moto.setup(BUCKET, TABLE))))
        .map_err(|p| anyhow!("cannot create the bucket and the table on moto_server: {}", panic_text(&p)))?;
    println!("moto_server on {} (recording {})", moto.endpoint, moto.recording.display());
    let env = Env { bin: &bin, moto: &moto, scratch, clock };

    // 3. First sync.
    moto.reset_recording();
    fig.first = env.once("first-sync", &vol)?;
    fig.first_reqs = Requests::read(&moto)?;
    let files = volume_files(&vol);
    fig.volume_files = files.len();
    fig.volume_bytes = files.values().map(|v| v.len() as u64).sum();
    let uploaded: BTreeSet<&String> = fig.first_reqs.uploads.keys().collect();
    let missing: Vec<String> = files.keys().filter(|k| !uploaded.contains(k)).cloned().collect();
    fig.first_missing = missing.len();
    drop(files);
    let r = &fig.first_reqs;
    println!(
        "first sync: {:.2} s, {} objects of {} files, {} S3 requests (fewest possible {}), {} DynamoDB requests",
        fig.first.wall_s,
        r.objects(),
        fig.volume_files,
        r.s3_total(),
        r.fewest_s3(),
        r.dynamo_total()
    );
    if !missing.is_empty() {
        println!("  not uploaded: {} files, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    }

    // 4. Idle minute.
    let mut daemon = env.daemon(&vol)?;
    daemon.wait_alive(STARTUP_WAIT, "its start-up sync")?;
    moto.reset_recording();
    let own_log = vol.join("logcopy/logcopy.log");
    let log_len = fs::metadata(&own_log).map_or(0, |m| m.len());
    let cpu0 = proc_cpu_s(daemon.pid())?;
    daemon.wait_alive(IDLE, "the idle minute")?;
    let cpu1 = proc_cpu_s(daemon.pid())?;
    fig.idle_log_lines = new_lines(&own_log, log_len);
    fig.idle_reqs = Requests::read(&moto)?;
    fig.idle_cpu_s = cpu1 - cpu0;
    fig.daemon_peak_rss_kib = proc_status_kib(daemon.pid(), "VmHWM")?;
    println!(
        "idle minute: {} S3 requests, {} DynamoDB requests, {:.3} CPU s, peak RSS {} KiB",
        fig.idle_reqs.s3_total(),
        fig.idle_reqs.dynamo_total(),
        fig.idle_cpu_s,
        fig.daemon_peak_rss_kib
    );
    if fig.idle_reqs.s3_total() > 0 {
        println!("  idle S3 uploads: {:?}", fig.idle_reqs.uploads);
    }
    println!("  lines logcopy/logcopy.log gained in the idle minute: {}", fig.idle_log_lines.len());
    for l in fig.idle_log_lines.iter().take(12) {
        println!("    {l}");
    }
    let status = daemon.stop()?;
    fig.daemon_exit = status.code();
    if status.code() != Some(0) {
        bail!("logcopy run (daemon) exited with {status} after SIGTERM, not 0; its output: {}", daemon.out.display());
    }
    println!("daemon stopped by SIGTERM: {status}");

    // 5. Restart.
    moto.reset_recording();
    fig.restart = env.once("restart", &vol)?;
    fig.restart_reqs = Requests::read(&moto)?;
    println!(
        "restart: {:.2} s, {} objects uploaded again ({} of them logcopy/logcopy.log)",
        fig.restart.wall_s,
        fig.restart_reqs.objects(),
        fig.restart_reqs.log_uploads()
    );

    // 6. Restore into a fresh folder, then a run on it.
    let fresh = scratch.join("restored");
    moto.reset_recording();
    let args: Vec<OsString> = vec!["restore".into(), "--logs".into(), fresh.clone().into()];
    fig.restore = env.measure("restore", &args, &[("RESUME", "1")])?;
    fig.restore_reqs = Requests::read(&moto)?;
    let restored = volume_files(&fresh);
    fig.restored_files = restored.len();
    fig.restored_bytes = restored.values().map(|v| v.len() as u64).sum();
    drop(restored);
    println!(
        "restore: {:.2} s, {} objects downloaded ({} files, {} bytes on the fresh volume)",
        fig.restore.wall_s,
        fig.restore_reqs.kind(GET_OBJECT),
        fig.restored_files,
        fig.restored_bytes
    );
    moto.reset_recording();
    fig.after_restore = env.once("after-restore", &fresh)?;
    fig.after_restore_reqs = Requests::read(&moto)?;
    println!(
        "run after restore: {:.2} s, {} objects uploaded again ({} of them logcopy/logcopy.log)",
        fig.after_restore.wall_s,
        fig.after_restore_reqs.objects(),
        fig.after_restore_reqs.log_uploads()
    );

    // 7. The table.
    println!("\n{}", table(&fig));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// The volume

fn copy_fixture(dest: &Path) -> Result<()> {
    let src = testkit::fixture_volume(FIXTURE);
    let status = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(dest)
        .status()
        .with_context(|| format!("cannot run cp -r {} {}", src.display(), dest.display()))?;
    if !status.success() {
        bail!("cp -r {} {} failed: {status}", src.display(), dest.display());
    }
    Ok(())
}

/// Adds the small logs and the two recordings; returns how many of each.
fn populate(vol: &Path) -> Result<(usize, usize)> {
    let mut rng = fastrand::Rng::with_seed(0x5709_a6e5);
    let dirs: Vec<PathBuf> = (1..=WORKERS)
        .map(|i| vol.join(format!("agent/agent{i}/logs")))
        .chain(std::iter::once(vol.join("simulator/logs")))
        .collect();
    for d in &dirs {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    const WORDS: [&str; 8] = ["tick", "route", "sensor", "frame", "speed", "waypoint", "actor", "collision"];
    for n in 0..LOG_FILES {
        let dir = &dirs[n % dirs.len()];
        let path = dir.join(format!("step-{n:05}.log"));
        let target = rng.usize(200..600);
        let mut text = String::with_capacity(target + 80);
        let mut line = 0;
        while text.len() < target {
            let _ = writeln!(
                text,
                "2024-03-20 09:{:02}:{:02} INFO [{}] {} {} = {:.4}",
                (n / 60) % 60,
                n % 60,
                line,
                WORDS[rng.usize(..WORDS.len())],
                rng.u32(..100_000),
                rng.f64() * 100.0
            );
            line += 1;
        }
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut block = vec![0u8; 1024 * 1024];
    for rel in RECORDINGS {
        let path = vol.join(rel);
        fs::create_dir_all(path.parent().unwrap_or(vol))?;
        let mut f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        for _ in 0..RECORDING_BYTES / block.len() {
            rng.fill(&mut block);
            f.write_all(&block).with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok((LOG_FILES, RECORDINGS.len()))
}

// ---------------------------------------------------------------------------------------------------------------
// Running logcopy

/// How the CPU time and peak RSS of a child are taken.
#[derive(Clone, Copy)]
enum Clock {
    /// GNU time, `-f '%e %U %S %M'`.
    Time,
    /// `getrusage(RUSAGE_CHILDREN)` before and after.
    Rusage,
}

impl Clock {
    fn detect() -> Clock {
        let ok = Command::new(TIME)
            .args(["-f", "%e %U %S %M", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok { Clock::Time } else { Clock::Rusage }
    }

    fn describe(self) -> &'static str {
        match self {
            Clock::Time => "/usr/bin/time -f '%e %U %S %M'",
            Clock::Rusage => "getrusage(RUSAGE_CHILDREN) deltas (no /usr/bin/time)",
        }
    }
}

/// What one `logcopy` process cost.
#[derive(Default, Clone, Copy)]
struct Measured {
    wall_s: f64,
    user_s: f64,
    sys_s: f64,
    max_rss_kib: u64,
}

impl Measured {
    fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

struct Env<'a> {
    bin: &'a Path,
    moto: &'a Moto,
    scratch: &'a Path,
    clock: Clock,
}

impl Env<'_> {
    /// A clean environment for logcopy: PATH, HOME, TMPDIR, the AWS settings of `tests/storage.rs` and the ids.
    /// EvalAI goes to the local file (`--local-evalai logcopy-local`, under the working folder).
    fn environment(&self, cmd: &mut Command) {
        cmd.env_clear();
        for k in ["PATH", "HOME", "TMPDIR"] {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        cmd.envs(self.moto.env(BUCKET, TABLE))
            .env("CHALLENGE_ID", "55")
            .env("SUBMISSION_ID", SUBMISSION)
            .env("TRACK_ID", "2015")
            .env("TEAM_ID", TEAM);
    }

    /// `logcopy run --once --logs VOL`, measured.
    fn once(&self, name: &str, vol: &Path) -> Result<Measured> {
        let args: Vec<OsString> = vec![
            "run".into(),
            "--once".into(),
            "--logs".into(),
            vol.into(),
            "--local-evalai".into(),
            "logcopy-local".into(),
        ];
        self.measure(name, &args, &[])
    }

    /// Runs `logcopy ARGS` (with `extra` environment) in a fresh working folder `<scratch>/cwd-<name>`, its
    /// output in `<scratch>/<name>.out`; fails unless it exits 0.
    fn measure(&self, name: &str, args: &[OsString], extra: &[(&str, &str)]) -> Result<Measured> {
        let cwd = self.scratch.join(format!("cwd-{name}"));
        let _ = fs::remove_dir_all(&cwd);
        fs::create_dir_all(&cwd).with_context(|| format!("cannot create {}", cwd.display()))?;
        let out_path = self.scratch.join(format!("{name}.out"));
        let time_path = self.scratch.join(format!("{name}.time"));
        let mut cmd = match self.clock {
            Clock::Time => {
                let mut c = Command::new(TIME);
                c.args(["-f", "%e %U %S %M", "-o"]).arg(&time_path).arg(self.bin);
                c
            }
            Clock::Rusage => Command::new(self.bin),
        };
        cmd.args(args);
        self.environment(&mut cmd);
        cmd.envs(extra.iter().copied());
        let out = File::create(&out_path).with_context(|| format!("cannot create {}", out_path.display()))?;
        cmd.current_dir(&cwd).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let before = children_rusage();
        let start = Instant::now();
        let status = cmd.status().with_context(|| format!("cannot start logcopy ({name})"))?;
        let wall_s = start.elapsed().as_secs_f64();
        let after = children_rusage();
        if !status.success() {
            bail!("logcopy ({name}) exited with {status}, not 0; {}", tail(&out_path, 2_000));
        }
        let mut m = Measured { wall_s, ..Measured::default() };
        match self.clock {
            Clock::Time => {
                let text = fs::read_to_string(&time_path)
                    .with_context(|| format!("cannot read /usr/bin/time's output {}", time_path.display()))?;
                let last = text.lines().last().unwrap_or_default();
                let f: Vec<&str> = last.split_whitespace().collect();
                let field = |i: usize| -> Result<f64> {
                    f.get(i).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("odd /usr/bin/time output {last:?}"))
                };
                m.user_s = field(1)?;
                m.sys_s = field(2)?;
                m.max_rss_kib = field(3)? as u64;
            }
            Clock::Rusage => {
                m.user_s = after.0 - before.0;
                m.sys_s = after.1 - before.1;
                // The largest of all children waited for so far (cp, time, ...), logcopy's in practice.
                m.max_rss_kib = after.2;
            }
        }
        Ok(m)
    }

    /// `logcopy run --logs VOL --logs-period 10`, the daemon, as a child.
    fn daemon(&self, vol: &Path) -> Result<Daemon> {
        let cwd = self.scratch.join("cwd-daemon");
        fs::create_dir_all(&cwd).with_context(|| format!("cannot create {}", cwd.display()))?;
        let out = self.scratch.join("daemon.out");
        let f = File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
        let mut cmd = Command::new(self.bin);
        self.environment(&mut cmd);
        cmd.arg("run")
            .arg("--logs")
            .arg(vol)
            .args(["--local-evalai", "logcopy-local"])
            .args(["--logs-period", &LOGS_PERIOD_S.to_string()])
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f);
        let child = cmd.spawn().context("cannot start logcopy run (the daemon)")?;
        Ok(Daemon { child, out })
    }
}

/// (user s, system s, max RSS KiB) of the waited-for children so far.
fn children_rusage() -> (f64, f64, u64) {
    // SAFETY: getrusage writes into a zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return (0.0, 0.0, 0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime), ru.ru_maxrss.max(0) as u64)
}

/// The daemon; killed on drop if still running (a failed benchmark leaves nothing behind).
struct Daemon {
    child: Child,
    out: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sleeps `d`, failing as soon as the daemon exits.
    fn wait_alive(&mut self, d: Duration, during: &str) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait()? {
                bail!("logcopy run (daemon) exited with {status} during {during}: {}", tail(&self.out, 2_000));
            }
            sleep(Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }

    /// SIGTERM, then waits for its exit (SIGKILL after [`STOP_TIMEOUT`], an error).
    fn stop(&mut self) -> Result<ExitStatus> {
        // SAFETY: signalling our own child, which has not been waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("logcopy run (daemon) did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed)");
            }
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// utime + stime of a process, in seconds (`/proc/<pid>/stat`).
fn proc_cpu_s(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses; utime and stime are fields 14, 15.
    let rest = stat.rsplit_once(')').map(|x| x.1).ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| anyhow!("odd /proc/{pid}/stat"));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / hz)
}

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmHWM`.
fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(n);
    let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
    format!("last lines of {}:\n{}", path.display(), &text[start..])
}

/// The lines appended to `path` after its first `from` bytes.
fn new_lines(path: &Path, from: u64) -> Vec<String> {
    let bytes = fs::read(path).unwrap_or_default();
    let start = (from as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).lines().map(str::to_string).collect()
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------------------------------------------
// The recording

const PUT_OBJECT: &str = "PUT object";
const CREATE: &str = "multipart create";
const PART: &str = "multipart part";
const COMPLETE: &str = "multipart complete";
const GET_OBJECT: &str = "GET object";

/// What moto recorded since its last reset, by kind.
#[derive(Default)]
struct Requests {
    /// S3 requests by kind ([`PUT_OBJECT`], [`CREATE`], ..., or another description such as `LIST`).
    s3: BTreeMap<String, usize>,
    /// DynamoDB requests by operation (`UpdateItem`, ...).
    dynamo: BTreeMap<String, usize>,
    /// Anything neither (another service, another bucket).
    other: usize,
    /// Completed uploads (PUT object or multipart complete) by key.
    uploads: BTreeMap<String, usize>,
    /// Parts by key.
    parts: BTreeMap<String, usize>,
}

impl Requests {
    fn read(moto: &Moto) -> Result<Requests> {
        let text = fs::read_to_string(&moto.recording)
            .with_context(|| format!("cannot read moto's recording {}", moto.recording.display()))?;
        let mut r = Requests::default();
        // A stream of JSON values, not lines: moto writes an entry and its newline in two writes from
        // concurrent threads, so two entries can share a line (see tests/support/moto.rs).
        for v in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>().map_while(Result::ok) {
            let method = v["method"].as_str().unwrap_or("");
            let url = v["url"].as_str().unwrap_or("");
            if url.contains("/moto-api/") {
                continue;
            }
            let target = v["headers"]
                .as_object()
                .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case("x-amz-target")))
                .and_then(|(_, t)| t.as_str());
            if let Some(t) = target {
                if let Some(op) = t.strip_prefix("DynamoDB_20120810.") {
                    *r.dynamo.entry(op.to_string()).or_default() += 1;
                } else {
                    r.other += 1;
                }
                continue;
            }
            r.s3_request(method, url);
        }
        Ok(r)
    }

    fn s3_request(&mut self, method: &str, url: &str) {
        let after_scheme = url.split_once("://").map_or(url, |x| x.1);
        let path_query = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
        let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
        let params: BTreeSet<&str> = query.split('&').map(|p| p.split('=').next().unwrap_or(p)).collect();
        let Some(rest) = path.strip_prefix(&format!("/{BUCKET}")) else {
            self.other += 1;
            return;
        };
        let key = rest.strip_prefix('/').unwrap_or("").to_string();
        let has = |p: &str| params.contains(p);
        let kind: String = match (method, key.is_empty()) {
            ("PUT", false) if has("partNumber") => {
                *self.parts.entry(key.clone()).or_default() += 1;
                PART.into()
            }
            ("PUT", false) => {
                *self.uploads.entry(key.clone()).or_default() += 1;
                PUT_OBJECT.into()
            }
            ("POST", false) if has("uploads") => CREATE.into(),
            ("POST", false) if has("uploadId") => {
                *self.uploads.entry(key.clone()).or_default() += 1;
                COMPLETE.into()
            }
            ("DELETE", false) if has("uploadId") => "multipart abort".into(),
            ("POST", true) if has("delete") => "DELETE objects".into(),
            ("GET", true) if has("list-type") || has("prefix") => "LIST".into(),
            ("GET", false) => GET_OBJECT.into(),
            (m, _) => format!("{m} {}", if key.is_empty() { "bucket" } else { "object" }),
        };
        *self.s3.entry(kind).or_default() += 1;
    }

    fn kind(&self, k: &str) -> usize {
        self.s3.get(k).copied().unwrap_or(0)
    }

    fn s3_total(&self) -> usize {
        self.s3.values().sum()
    }

    fn dynamo_total(&self) -> usize {
        self.dynamo.values().sum()
    }

    /// Uploads (an object uploaded twice counts twice).
    fn objects(&self) -> usize {
        self.uploads.values().sum()
    }

    fn log_uploads(&self) -> usize {
        self.uploads.get(LOG_KEY).copied().unwrap_or(0)
    }

    /// Uploads other than logcopy's own log.
    fn objects_but_log(&self) -> usize {
        self.objects() - self.log_uploads()
    }

    /// The fewest S3 requests that upload these objects: one PUT per small file; per multipart file one
    /// create, its parts and one complete.
    fn fewest_s3(&self) -> usize {
        self.kind(PUT_OBJECT) + 2 * self.kind(COMPLETE) + self.parts.values().sum::<usize>()
    }

    /// `3 PUT object + 1 UpdateItem`, the kinds present.
    fn breakdown(&self) -> String {
        let mut parts: Vec<String> = self.s3.iter().map(|(k, n)| format!("{n} {k}")).collect();
        parts.extend(self.dynamo.iter().map(|(k, n)| format!("{n} {k}")));
        if self.other > 0 {
            parts.push(format!("{} other", self.other));
        }
        if parts.is_empty() { "none".into() } else { parts.join(", ") }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The table

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn table(f: &Figures) -> String {
    let r = &f.first_reqs;
    let multipart_files = r.kind(COMPLETE);
    let parts: usize = r.parts.values().sum();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |what: &str, value: String, goal: &str| rows.push((what.into(), value, goal.into()));
    row(
        "volume",
        format!("{} files, {}", thousands(f.volume_files as u64), mib(f.volume_bytes)),
        &format!("{FIXTURE} + {LOG_FILES} logs + 2 x 20 MiB"),
    );
    row("first sync: wall time", format!("{:.2} s", f.first.wall_s), "");
    row(
        "first sync: logcopy CPU (user + sys)",
        format!("{:.2} s ({:.2} + {:.2})", f.first.cpu_s(), f.first.user_s, f.first.sys_s),
        "",
    );
    row("first sync: logcopy peak RSS", format!("{} KiB", thousands(f.first.max_rss_kib)), "");
    row(
        "first sync: objects uploaded",
        format!("{} ({} not uploaded)", thousands(r.objects() as u64), f.first_missing),
        "every file once",
    );
    row("first sync: S3 requests", format!("{} ({})", thousands(r.s3_total() as u64), r.breakdown_s3()), "");
    row(
        "first sync: fewest S3 requests for those objects",
        format!(
            "{} = {} PUT + {multipart_files} x (create + complete) + {parts} parts",
            thousands(r.fewest_s3() as u64),
            r.kind(PUT_OBJECT)
        ),
        "= S3 requests",
    );
    row("first sync: DynamoDB requests", format!("{} ({})", r.dynamo_total(), r.breakdown_dynamo()), "");
    let idle = &f.idle_reqs;
    row(
        &format!("idle minute (--logs-period {LOGS_PERIOD_S}): S3 requests"),
        format!("{} ({})", idle.s3_total(), idle.breakdown_s3()),
        &format!("0 (upstream: ~{UPSTREAM_IDLE_REQUESTS})"),
    );
    row("idle minute: objects uploaded, by key", idle.by_key(), "none");
    row("idle minute: lines added to logcopy/logcopy.log", f.idle_log_lines.len().to_string(), "");
    row("idle minute: DynamoDB requests", idle.dynamo_total().to_string(), "0");
    row("idle minute: logcopy CPU", format!("{:.3} s", f.idle_cpu_s), "");
    row("daemon: peak RSS (VmHWM)", format!("{} KiB", thousands(f.daemon_peak_rss_kib)), "");
    row("daemon: exit after SIGTERM", f.daemon_exit.map_or_else(|| "signal".into(), |c| c.to_string()), "0");
    let rs = &f.restart_reqs;
    row("restart (run --once): objects uploaded again", rs.objects_but_log().to_string(), "0");
    row("restart: logcopy/logcopy.log uploads (excluded above)", rs.log_uploads().to_string(), "1");
    row(
        "restart: wall time, CPU, requests",
        format!("{:.2} s, {:.2} s CPU, {}", f.restart.wall_s, f.restart.cpu_s(), rs.breakdown()),
        "",
    );
    let rr = &f.restore_reqs;
    row(
        "restore (RESUME=1): wall time, CPU",
        format!(
            "{:.2} s, {:.2} s CPU, peak RSS {} KiB",
            f.restore.wall_s,
            f.restore.cpu_s(),
            thousands(f.restore.max_rss_kib)
        ),
        "",
    );
    row(
        "restore: objects downloaded",
        format!(
            "{} ({} files, {} on the fresh volume)",
            thousands(rr.kind(GET_OBJECT) as u64),
            thousands(f.restored_files as u64),
            mib(f.restored_bytes)
        ),
        "",
    );
    row("restore: S3 requests", format!("{} ({})", thousands(rr.s3_total() as u64), rr.breakdown_s3()), "");
    let ar = &f.after_restore_reqs;
    row("run after restore: objects uploaded again", ar.objects_but_log().to_string(), "0");
    row("run after restore: logcopy/logcopy.log uploads (excluded above)", ar.log_uploads().to_string(), "1");
    row(
        "run after restore: wall time, CPU, requests",
        format!("{:.2} s, {:.2} s CPU, {}", f.after_restore.wall_s, f.after_restore.cpu_s(), ar.breakdown()),
        "",
    );

    let mut out = String::new();
    let _ = writeln!(out, "`{BENCH_COMMAND}` ({} CPUs; moto_server on 127.0.0.1):\n", cpus());
    let _ = writeln!(out, "| measure | value | goal |");
    let _ = writeln!(out, "|---|---|---|");
    for (w, v, g) in &rows {
        let _ = writeln!(out, "| {w} | {v} | {g} |");
    }
    let _ = writeln!(
        out,
        "\nS3 requests vs objects: each file under 8 MiB takes one PUT; a larger one takes a create, one request \
         per 8 MiB part and a complete, so a 20 MiB recording is 1 object in 5 requests (3 parts + 2). The fewest \
         requests for the first sync is therefore objects + parts + multipart files; any request above that (a \
         LIST, a HEAD, a retry) shows in the S3 row."
    );
    out
}

impl Requests {
    fn breakdown_s3(&self) -> String {
        let parts: Vec<String> = self.s3.iter().map(|(k, n)| format!("{} {k}", thousands(*n as u64))).collect();
        let mut s = if parts.is_empty() { "none".to_string() } else { parts.join(", ") };
        if self.other > 0 {
            let _ = write!(s, "; {} other", self.other);
        }
        s
    }

    /// `4321/logcopy/logcopy.log x 3, ...`, or `none`.
    fn by_key(&self) -> String {
        let keys: Vec<String> = self.uploads.iter().map(|(k, n)| format!("`{k}` x {n}")).collect();
        if keys.is_empty() { "none".into() } else { keys.join(", ") }
    }

    fn breakdown_dynamo(&self) -> String {
        let parts: Vec<String> = self.dynamo.iter().map(|(k, n)| format!("{n} {k}")).collect();
        if parts.is_empty() { "none".into() } else { parts.join(", ") }
    }
}

//! Which GPU a worker pair renders and runs its agent on.
//!
//! # What upstream did
//!
//! Generation 1 spelled the GPU per container in the Job (`NVIDIA_VISIBLE_DEVICES` = 0..3, worker
//! `i` on GPU `i - 1`); nothing was looked up. Generation 2 (one pod per worker) let Kubernetes pick:
//! the agent container has the limit `nvidia.com/gpu: 1`, so it sees exactly the GPU it was given,
//! and the simulator container, with no limit, sees every GPU of the node. Two scripts of the
//! leaderboard image, copied into a shared `/gpu` volume, carried the choice across:
//!
//! * `get_gpu_uuid.sh`, run by the agent container: `nvidia-smi --query-gpu=uuid --format=csv`,
//!   keeping the lines that contain `GPU` (this drops the `uuid` header), written to
//!   `/gpu/uuid.txt<N>` (`N` = the attempt).
//! * `get_gpu_device.sh <file>`, run by both containers: `nvidia-smi --query-gpu=index,uuid
//!   --format=csv`, again filtered with `grep GPU`; the first line *containing* the file's text is
//!   taken and its first comma-separated field (the index) is printed. The simulator passes that
//!   index to CARLA as `r.GraphicsAdapter` (and exports it as `NVIDIA_VISIBLE_DEVICES`, which has no
//!   effect that late).
//!
//! Their failure modes were silent: with several GPUs visible the file holds several lines, no line
//! contains them all, and the index comes out empty; with none visible the file is empty, the empty
//! pattern is contained in every line, and the simulator quietly renders on GPU 0, which may be
//! another worker's. A wedged driver made `nvidia-smi` hang, and the container with it.
//!
//! # What this module does instead
//!
//! * [`pick_uuid`] is `get_gpu_uuid.sh`: the UUID of *the* GPU this container sees. Exactly one
//!   must be visible (that is what the agent's `nvidia.com/gpu: 1` limit guarantees); none or
//!   several is an error naming what was seen, never a guess.
//! * [`uuid_to_index`] is `get_gpu_device.sh`: the index, in this container's numbering, of the GPU
//!   with that UUID. The comparison is on the whole UUID (after trimming, with the `GPU-` prefix
//!   optional and compared case-insensitively, hex digits too), not a substring test, so an empty
//!   or partial UUID never matches some other GPU. An absent UUID is an error listing every GPU.
//! * [`list`] is the query both share: `nvidia-smi --query-gpu=index,uuid --format=csv,noheader`.
//!   Lines that are not `<index>, GPU-<uuid>` (nvidia-smi prints warnings such as "WARNING: infoROM
//!   is corrupted" on stdout) are skipped as upstream's `grep GPU` skipped them, but output with no
//!   GPU line at all is an error showing it.
//! * [`resolve`] turns the operator's or the Job's choice into a [`GpuSelection`]: `none` (a local
//!   run with no GPU), a decimal index (generation 1, taken as given), or a UUID (generation 2).
//!
//! Every `nvidia-smi` call is bounded: it is killed after [`SMI_TIMEOUT`] and reported as hung.
//! Its failures carry the exit status and what it printed. The path of `nvidia-smi` is always a
//! parameter, so the tests run against `fixtures/bin/fake-nvidia-smi`.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The program run when none is configured: `nvidia-smi`, looked up on `PATH`.
pub const NVIDIA_SMI: &str = "nvidia-smi";

/// How long one `nvidia-smi` call may take before it is killed. It answers in well under a second
/// on a healthy node; on a broken driver it can hang for good.
pub const SMI_TIMEOUT: Duration = Duration::from_secs(10);

/// The arguments of the one query this module runs (what `get_gpu_device.sh` asked, without the header).
const QUERY_ARGS: [&str; 2] = ["--query-gpu=index,uuid", "--format=csv,noheader"];

/// How often a running `nvidia-smi` is checked on.
const POLL: Duration = Duration::from_millis(10);

/// How long a killed `nvidia-smi`, or the pipes of one that exited, get to go away.
const GRACE: Duration = Duration::from_secs(1);

/// At most this much of `nvidia-smi`'s output is kept (the rest is read and dropped).
const MAX_OUTPUT: u64 = 1 << 20;

/// At most this many characters of `nvidia-smi`'s output are quoted in an error.
const MAX_QUOTED: usize = 1000;

/// One GPU as `nvidia-smi` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// Its index in this container's numbering (what CARLA's `r.GraphicsAdapter` and CUDA use).
    pub index: u32,
    /// Its UUID as printed, `GPU-` prefix included.
    pub uuid: String,
}

impl fmt::Display for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.index, self.uuid)
    }
}

/// The GPU a worker uses, as [`resolve`] decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuSelection {
    /// The GPU with this index (in this container's numbering).
    Index(u32),
    /// No GPU: a local run on a machine without one (CARLA then renders on whatever it finds).
    None,
}

impl GpuSelection {
    /// The index, if a GPU was selected.
    pub fn index(self) -> Option<u32> {
        match self {
            GpuSelection::Index(index) => Some(index),
            GpuSelection::None => None,
        }
    }
}

impl fmt::Display for GpuSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuSelection::Index(index) => write!(f, "GPU {index}"),
            GpuSelection::None => f.write_str("no GPU"),
        }
    }
}

/// Why no GPU could be determined.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No listed GPU has that UUID.
    #[error("GPU {uuid} not found among: {}", list_text(.available))]
    NotFound {
        /// The UUID looked for, as given (trimmed).
        uuid: String,
        /// Every GPU that was listed.
        available: Vec<Gpu>,
    },
    /// The `nvidia-smi` program does not exist.
    #[error("{} not found: cannot list the GPUs (is the NVIDIA driver mounted into this container?)", .smi.display())]
    SmiMissing {
        /// The program that was looked for.
        smi: PathBuf,
    },
    /// `nvidia-smi` exists but could not be started.
    #[error("cannot run {}: {source}", .smi.display())]
    Spawn {
        /// The program.
        smi: PathBuf,
        /// Why it could not be started.
        source: io::Error,
    },
    /// `nvidia-smi` ran and failed.
    #[error("`{command}` failed with {status}: {output}")]
    SmiFailed {
        /// The command line.
        command: String,
        /// How it ended: `exit code 9`, `killed by signal 11`.
        status: String,
        /// What it printed on stderr (or on stdout when stderr was empty), trimmed and shortened.
        output: String,
    },
    /// `nvidia-smi` did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?} (a hung GPU driver?); it was killed")]
    Timeout {
        /// The command line.
        command: String,
        /// The time it was given.
        timeout: Duration,
    },
    /// `nvidia-smi` succeeded but printed no GPU line.
    #[error("`{command}` printed no `<index>, GPU-<uuid>` line: {output:?}")]
    Malformed {
        /// The command line.
        command: String,
        /// What it printed, trimmed and shortened.
        output: String,
    },
    /// [`pick_uuid`]: no GPU is visible.
    #[error("no GPU is visible to this container (`{command}` listed none)")]
    NoGpu {
        /// The command line.
        command: String,
    },
    /// [`pick_uuid`]: more than one GPU is visible, so none is *the* GPU of this container.
    #[error(
        "{} GPUs are visible, expected exactly one (the container's `nvidia.com/gpu: 1` limit): {}",
        .gpus.len(),
        list_text(.gpus)
    )]
    Ambiguous {
        /// Every visible GPU.
        gpus: Vec<Gpu>,
    },
    /// [`resolve`] or [`uuid_to_index`] was given something that is no GPU choice.
    #[error("invalid GPU {spec:?}: expected `none`, a decimal index or a GPU UUID (`GPU-<uuid>`)")]
    InvalidSpec {
        /// What was given.
        spec: String,
    },
}

/// Every GPU `smi` lists, in its order: `<smi> --query-gpu=index,uuid --format=csv,noheader`.
pub fn list(smi: &Path) -> Result<Vec<Gpu>, GpuError> {
    list_from(Command::new(smi), SMI_TIMEOUT)
}

/// The index of the GPU with UUID `uuid` (`GPU-` prefix optional, case-insensitive), as `smi` numbers it.
///
/// This is upstream's `get_gpu_device.sh`, matching the whole UUID instead of any line that contains it.
pub fn uuid_to_index(uuid: &str, smi: &Path) -> Result<u32, GpuError> {
    let uuid = checked_uuid(uuid)?;
    find_index(uuid, &list(smi)?)
}

/// The UUID of the one GPU this container sees; an error when it sees none or several.
///
/// This is upstream's `get_gpu_uuid.sh`, run in the agent container, whose `nvidia.com/gpu: 1` limit
/// leaves it one GPU: the UUID is what tells the simulator container (which sees them all) where to render.
pub fn pick_uuid(smi: &Path) -> Result<String, GpuError> {
    pick_from(list(smi)?, &command_line(&Command::new(smi)))
}

/// The GPU a worker uses, from `spec`:
///
/// * `none` (any case): no GPU, for local runs; `smi` is not run.
/// * a decimal index (`0`, `3`): that GPU, taken as given (generation 1 wrote it into the Job);
///   `smi` is not run, so this works where no `nvidia-smi` exists.
/// * a UUID (`GPU-<uuid>`, or the bare 8-4-4-4-12 hex form): the index [`uuid_to_index`] finds for it.
///
/// Surrounding whitespace is ignored (the spec often comes from a file); anything else is
/// [`GpuError::InvalidSpec`].
pub fn resolve(spec: &str, smi: &Path) -> Result<GpuSelection, GpuError> {
    let trimmed = spec.trim();
    if trimmed.eq_ignore_ascii_case("none") {
        return Ok(GpuSelection::None);
    }
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed.parse().map(GpuSelection::Index).map_err(|_| invalid(spec));
    }
    if strip_gpu_prefix(trimmed).is_some() || is_bare_uuid(trimmed) {
        return uuid_to_index(trimmed, smi).map(GpuSelection::Index);
    }
    Err(invalid(spec))
}

/// [`list`] with the program (and its environment) already in `cmd` and a given timeout.
fn list_from(mut cmd: Command, timeout: Duration) -> Result<Vec<Gpu>, GpuError> {
    cmd.args(QUERY_ARGS);
    let command = command_line(&cmd);
    let output = run(cmd, &command, timeout)?;
    parse_list(&output, &command)
}

/// The choice of [`pick_uuid`] among what was listed.
fn pick_from(gpus: Vec<Gpu>, program: &str) -> Result<String, GpuError> {
    match gpus.len() {
        0 => Err(GpuError::NoGpu { command: format!("{program} {}", QUERY_ARGS.join(" ")) }),
        1 => Ok(gpus.into_iter().next().map(|gpu| gpu.uuid).unwrap_or_default()),
        _ => Err(GpuError::Ambiguous { gpus }),
    }
}

/// The index of `uuid` (already checked) among `gpus`.
fn find_index(uuid: &str, gpus: &[Gpu]) -> Result<u32, GpuError> {
    let key = uuid_key(uuid);
    gpus.iter()
        .find(|gpu| uuid_key(&gpu.uuid) == key)
        .map(|gpu| gpu.index)
        .ok_or_else(|| GpuError::NotFound { uuid: uuid.to_owned(), available: gpus.to_vec() })
}

/// `uuid` trimmed, if it can be a UUID at all (non-empty, no separators); [`GpuError::InvalidSpec`] otherwise.
fn checked_uuid(uuid: &str) -> Result<&str, GpuError> {
    let trimmed = uuid.trim();
    let body = strip_gpu_prefix(trimmed).unwrap_or(trimmed);
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(invalid(uuid));
    }
    Ok(trimmed)
}

/// What two spellings of one UUID have in common: no `GPU-` prefix, lower case.
fn uuid_key(uuid: &str) -> String {
    let trimmed = uuid.trim();
    strip_gpu_prefix(trimmed).unwrap_or(trimmed).to_ascii_lowercase()
}

/// `s` without its `GPU-` prefix (any case), if it has one.
fn strip_gpu_prefix(s: &str) -> Option<&str> {
    s.get(..4).filter(|prefix| prefix.eq_ignore_ascii_case("GPU-")).map(|_| &s[4..])
}

/// Whether `s` is a UUID in its bare 8-4-4-4-12 hexadecimal form.
fn is_bare_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() })
}

fn invalid(spec: &str) -> GpuError {
    GpuError::InvalidSpec { spec: spec.to_owned() }
}

/// The GPU lines of `output`; other lines (warnings) are skipped unless nothing else is there.
fn parse_list(output: &str, command: &str) -> Result<Vec<Gpu>, GpuError> {
    let mut gpus = Vec::new();
    let mut other = false;
    for line in output.lines().map(str::trim).filter(|line| !line.is_empty()) {
        match parse_line(line) {
            Some(gpu) => gpus.push(gpu),
            None => other = true,
        }
    }
    if gpus.is_empty() && other {
        return Err(GpuError::Malformed { command: command.to_owned(), output: quoted(output) });
    }
    Ok(gpus)
}

/// One `<index>, GPU-<uuid>` line.
fn parse_line(line: &str) -> Option<Gpu> {
    let (index, uuid) = line.split_once(',')?;
    let (index, uuid) = (index.trim(), uuid.trim());
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let body = strip_gpu_prefix(uuid)?;
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    Some(Gpu { index: index.parse().ok()?, uuid: uuid.to_owned() })
}

/// `0 GPU-aaa, 1 GPU-bbb`, or a note that there were none.
fn list_text(gpus: &[Gpu]) -> String {
    if gpus.is_empty() {
        return "(no GPU listed)".to_owned();
    }
    gpus.iter().map(Gpu::to_string).collect::<Vec<_>>().join(", ")
}

/// `cmd` as a shell user would type it (for messages only).
fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` trimmed and cut to [`MAX_QUOTED`] characters.
fn quoted(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// Which pipe a reader thread drained.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pipe {
    Stdout,
    Stderr,
}

/// Runs `cmd` to completion within `timeout` and returns its stdout; see [`GpuError`] for the failures.
fn run(mut cmd: Command, command: &str, timeout: Duration) -> Result<String, GpuError> {
    let smi = PathBuf::from(cmd.get_program());
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => GpuError::SmiMissing { smi: smi.clone() },
        _ => GpuError::Spawn { smi: smi.clone(), source },
    })?;
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        drain(stdout, Pipe::Stdout, tx.clone());
    }
    if let Some(stderr) = child.stderr.take() {
        drain(stderr, Pipe::Stderr, tx);
    }

    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                kill(child);
                return Err(GpuError::Spawn { smi, source });
            }
        }
        let now = Instant::now();
        if now >= deadline {
            kill(child);
            return Err(GpuError::Timeout { command: command.to_owned(), timeout });
        }
        thread::sleep(POLL.min(deadline - now));
    };

    // Both pipes close when it exits, unless something it started still holds them.
    let output_deadline = deadline.max(Instant::now()) + GRACE;
    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        let left = output_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((Pipe::Stdout, bytes)) => stdout = Some(bytes),
            Ok((Pipe::Stderr, bytes)) => stderr = Some(bytes),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(GpuError::Timeout { command: command.to_owned(), timeout });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let stdout = String::from_utf8_lossy(stdout.as_deref().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(stderr.as_deref().unwrap_or_default()).into_owned();

    if status.success() {
        return Ok(stdout);
    }
    let output = match (stderr.trim(), stdout.trim()) {
        ("", "") => "(it printed nothing)".to_owned(),
        ("", stdout) => quoted(stdout),
        (stderr, _) => quoted(stderr),
    };
    Err(GpuError::SmiFailed { command: command.to_owned(), status: status_text(status), output })
}

/// Reads `pipe` to its end on a thread of its own and sends what it read (at most [`MAX_OUTPUT`]).
fn drain(mut pipe: impl Read + Send + 'static, which: Pipe, tx: mpsc::Sender<(Pipe, Vec<u8>)>) {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.by_ref().take(MAX_OUTPUT).read_to_end(&mut bytes);
        // Keep reading so that a chatty child never blocks on a full pipe; what is beyond the cap is dropped.
        let _ = io::copy(&mut pipe, &mut io::sink());
        let _ = tx.send((which, bytes));
    });
}

/// Kills `child` (SIGKILL) and reaps it; if it does not go away within [`GRACE`] (a process stuck in
/// the kernel, as on a wedged driver, ignores even SIGKILL until the call returns), a thread waits for it.
fn kill(mut child: Child) {
    let _ = child.kill();
    let until = Instant::now() + GRACE;
    while Instant::now() < until {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(POLL);
    }
    thread::spawn(move || {
        let _ = child.wait();
    });
}

/// `exit code 9` or `killed by signal 11`.
fn status_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fake() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/bin/fake-nvidia-smi")
    }

    /// The fake with this environment (`FAKE_NVIDIA_SMI_*` variables, without the prefix).
    fn fake_cmd(env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(fake());
        for (name, value) in env {
            cmd.env(format!("FAKE_NVIDIA_SMI_{name}"), value);
        }
        cmd
    }

    fn list_fake(env: &[(&str, &str)]) -> Result<Vec<Gpu>, GpuError> {
        list_from(fake_cmd(env), SMI_TIMEOUT)
    }

    fn gpu(index: u32, uuid: &str) -> Gpu {
        Gpu { index, uuid: uuid.to_owned() }
    }

    /// A fresh directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("supervisor-gpu-test-{}-{n}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// An executable `nvidia-smi` that runs the fake with `gpus`, for the public functions, which take a path
    /// only; it lives as long as the returned [`Scratch`].
    fn fake_smi(gpus: &str) -> (Scratch, PathBuf) {
        let dir = Scratch::new();
        let path = dir.join("nvidia-smi");
        let script = format!("#!/bin/sh\nFAKE_NVIDIA_SMI_GPUS='{gpus}' exec '{}' \"$@\"\n", fake().display());
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        (dir, path)
    }

    /// Calls `f` again while the freshly written script cannot be run because a process forked by another
    /// test at that moment still holds it open for writing (ETXTBSY): a hazard of the tests, not of the code.
    fn retry_busy<T>(mut f: impl FnMut() -> Result<T, GpuError>) -> Result<T, GpuError> {
        for _ in 0..100 {
            match f() {
                Err(GpuError::Spawn { source, .. }) if source.raw_os_error() == Some(26) => {
                    thread::sleep(Duration::from_millis(10))
                }
                other => return other,
            }
        }
        f()
    }

    #[test]
    fn lists_the_fake_gpus_in_order() {
        let gpus = list_fake(&[("GPUS", "GPU-aaa,GPU-bbb")]).unwrap();
        assert_eq!(gpus, vec![gpu(0, "GPU-aaa"), gpu(1, "GPU-bbb")]);
        let default = list_fake(&[]).unwrap();
        assert_eq!(default.len(), 4);
        assert_eq!(default[3].index, 3);
    }

    #[test]
    fn runs_the_query_get_gpu_device_sh_ran_without_header() {
        let dir = Scratch::new();
        let log = dir.join("calls.jsonl");
        list_fake(&[("GPUS", "GPU-aaa"), ("LOG", log.to_str().unwrap())]).unwrap();
        assert_eq!(fs::read_to_string(log).unwrap(), "[\"--query-gpu=index,uuid\", \"--format=csv,noheader\"]\n");
    }

    #[test]
    fn skips_warning_lines_as_upstream_grep_did() {
        let gpus = list_fake(&[("GPUS", "GPU-aaa,GPU-bbb"), ("WARN", "1")]).unwrap();
        assert_eq!(gpus, vec![gpu(0, "GPU-aaa"), gpu(1, "GPU-bbb")]);
    }

    #[test]
    fn parses_robustly() {
        let out = "\r\n  0 ,  GPU-AAA  \r\nWARNING: infoROM is corrupted at gpu 0000:00:1B.0\n1, gpu-bbb\n2, [N/A]\n-1, GPU-c\n";
        assert_eq!(parse_list(out, "smi").unwrap(), vec![gpu(0, "GPU-AAA"), gpu(1, "gpu-bbb")]);
        assert_eq!(parse_list("", "smi").unwrap(), vec![]);
        let err = parse_list("No devices were found\n", "nvidia-smi --query").unwrap_err();
        assert!(matches!(err, GpuError::Malformed { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "`nvidia-smi --query` printed no `<index>, GPU-<uuid>` line: \"No devices were found\""
        );
    }

    #[test]
    fn finds_the_index_of_a_uuid_in_any_spelling() {
        let gpus = [gpu(0, "GPU-0a1b-cc"), gpu(1, "GPU-5a8a7c53-2c0e"), gpu(3, "GPU-ffff")];
        assert_eq!(find_index("GPU-5a8a7c53-2c0e", &gpus).unwrap(), 1);
        assert_eq!(find_index("gpu-5A8A7C53-2C0E", &gpus).unwrap(), 1);
        assert_eq!(find_index("5a8a7c53-2c0e", &gpus).unwrap(), 1);
        assert_eq!(find_index("GPU-ffff", &gpus).unwrap(), 3);
        // A part of a UUID is not that UUID (upstream's substring test took it).
        let err = find_index("GPU-5a8a", &gpus).unwrap_err();
        assert_eq!(err.to_string(), "GPU GPU-5a8a not found among: 0 GPU-0a1b-cc, 1 GPU-5a8a7c53-2c0e, 3 GPU-ffff");
    }

    #[test]
    fn uuid_to_index_through_nvidia_smi() {
        let (_dir, smi) = fake_smi("GPU-aaa,GPU-bbb");
        assert_eq!(retry_busy(|| uuid_to_index("GPU-bbb", &smi)).unwrap(), 1);
        assert_eq!(retry_busy(|| uuid_to_index(" GPU-AAA\n", &smi)).unwrap(), 0);
        let err = retry_busy(|| uuid_to_index("GPU-xxxx", &smi)).unwrap_err();
        assert_eq!(err.to_string(), "GPU GPU-xxxx not found among: 0 GPU-aaa, 1 GPU-bbb");
        match err {
            GpuError::NotFound { uuid, available } => {
                assert_eq!(uuid, "GPU-xxxx");
                assert_eq!(available, vec![gpu(0, "GPU-aaa"), gpu(1, "GPU-bbb")]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_uuid_is_refused_not_matched_with_gpu_0() {
        let (_dir, smi) = fake_smi("GPU-aaa");
        for uuid in ["", "  \n", "GPU-", "gpu-", "GPU-aaa,GPU-bbb", "GPU-aaa\nGPU-bbb"] {
            let err = retry_busy(|| uuid_to_index(uuid, &smi)).unwrap_err();
            assert!(matches!(err, GpuError::InvalidSpec { .. }), "{uuid:?}: {err:?}");
        }
    }

    #[test]
    fn pick_uuid_wants_exactly_one_gpu() {
        let (_one, one) = fake_smi("GPU-5a8a7c53-2c0e-0d4b-6d1e-7f3b1c4e9a01");
        assert_eq!(retry_busy(|| pick_uuid(&one)).unwrap(), "GPU-5a8a7c53-2c0e-0d4b-6d1e-7f3b1c4e9a01");

        let (_two, two) = fake_smi("GPU-aaa,GPU-bbb");
        let err = retry_busy(|| pick_uuid(&two)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 GPUs are visible, expected exactly one (the container's `nvidia.com/gpu: 1` limit): 0 GPU-aaa, 1 GPU-bbb"
        );

        // What an exit-0 listing of nothing gives; the real tool (and the fake) exit 6 instead, see below.
        let err = pick_from(vec![], "nvidia-smi").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no GPU is visible to this container \
             (`nvidia-smi --query-gpu=index,uuid --format=csv,noheader` listed none)"
        );
    }

    #[test]
    fn no_device_is_a_failure_with_its_message() {
        let err = list_fake(&[("GPUS", "")]).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, GpuError::SmiFailed { .. }), "{err:?}");
        assert!(text.ends_with("failed with exit code 6: No devices were found"), "{text}");
    }

    #[test]
    fn a_failing_nvidia_smi_reports_exit_code_and_stderr() {
        let err = list_fake(&[("FAIL", "1")]).unwrap_err();
        match &err {
            GpuError::SmiFailed { command, status, output } => {
                assert!(command.ends_with("fake-nvidia-smi --query-gpu=index,uuid --format=csv,noheader"), "{command}");
                assert_eq!(status, "exit code 9");
                assert!(output.starts_with("NVIDIA-SMI has failed because it couldn't communicate"), "{output}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("failed with exit code 9: NVIDIA-SMI has failed"), "{err}");
    }

    #[test]
    fn a_missing_nvidia_smi_is_named() {
        let missing = Path::new("/nonexistent/bin/nvidia-smi");
        let err = list(missing).unwrap_err();
        assert!(matches!(err, GpuError::SmiMissing { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "/nonexistent/bin/nvidia-smi not found: cannot list the GPUs \
             (is the NVIDIA driver mounted into this container?)"
        );
        assert!(matches!(uuid_to_index("GPU-aaa", missing), Err(GpuError::SmiMissing { .. })));
        assert!(matches!(pick_uuid(missing), Err(GpuError::SmiMissing { .. })));

        let dir = Scratch::new();
        let not_executable = dir.join("nvidia-smi");
        fs::write(&not_executable, "").unwrap();
        let err = list(&not_executable).unwrap_err();
        assert!(matches!(err, GpuError::Spawn { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("cannot run {}: ", not_executable.display())), "{err}");
    }

    #[test]
    fn a_hung_nvidia_smi_is_killed_at_the_timeout() {
        let dir = Scratch::new();
        let pidfile = dir.join("pid");
        // The shell writes its pid, which `exec` hands to the fake, at once: Python may take longer than the
        // timeout to start on a loaded machine, and the fake's own FAKE_NVIDIA_SMI_PIDFILE would come too late.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo $$ > \"$PIDFILE\" && exec \"$FAKE\" \"$@\"", "nvidia-smi"])
            .env("PIDFILE", &pidfile)
            .env("FAKE", fake())
            .env("FAKE_NVIDIA_SMI_HANG", "1");
        let timeout = Duration::from_secs(1);
        let start = Instant::now();
        let err = list_from(cmd, timeout).unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, GpuError::Timeout { .. }), "{err:?}");
        assert!(took >= timeout && took < timeout + Duration::from_secs(3), "{took:?}");
        assert!(err.to_string().ends_with("did not finish within 1s (a hung GPU driver?); it was killed"), "{err}");
        // Killed and reaped: its pid no longer names a process (not even a zombie).
        let pid = fs::read_to_string(&pidfile).unwrap();
        assert!(!Path::new(&format!("/proc/{}", pid.trim())).exists(), "fake nvidia-smi {} still there", pid.trim());
    }

    #[test]
    fn the_timeout_is_ten_seconds() {
        assert_eq!(SMI_TIMEOUT, Duration::from_secs(10));
    }

    #[test]
    fn resolve_none_index_and_uuid() {
        let nowhere = Path::new("/nonexistent/nvidia-smi");
        assert_eq!(resolve("none", nowhere).unwrap(), GpuSelection::None);
        assert_eq!(resolve(" NONE\n", nowhere).unwrap(), GpuSelection::None);
        assert_eq!(resolve("0", nowhere).unwrap(), GpuSelection::Index(0));
        assert_eq!(resolve("3\n", nowhere).unwrap(), GpuSelection::Index(3));
        assert_eq!(resolve("3", nowhere).unwrap().index(), Some(3));
        assert_eq!(GpuSelection::None.index(), None);

        let (_dir, smi) = fake_smi("GPU-aaa,GPU-5a8a7c53-2c0e-0d4b-6d1e-7f3b1c4e9a01");
        assert_eq!(retry_busy(|| resolve("GPU-aaa", &smi)).unwrap(), GpuSelection::Index(0));
        assert_eq!(
            retry_busy(|| resolve("5A8A7C53-2C0E-0D4B-6D1E-7F3B1C4E9A01", &smi)).unwrap(),
            GpuSelection::Index(1)
        );
        let err = retry_busy(|| resolve("GPU-zzz", &smi)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "GPU GPU-zzz not found among: 0 GPU-aaa, 1 GPU-5a8a7c53-2c0e-0d4b-6d1e-7f3b1c4e9a01"
        );
        assert!(matches!(resolve("GPU-aaa", nowhere), Err(GpuError::SmiMissing { .. })));
    }

    #[test]
    fn resolve_refuses_what_is_no_gpu() {
        for spec in ["", " ", "-1", "+1", "1.0", "0x1", "4294967296", "all", "GPU-", "aaa", "0,1", "MIG-aaa"] {
            let err = resolve(spec, Path::new("/nonexistent/nvidia-smi")).unwrap_err();
            assert!(matches!(err, GpuError::InvalidSpec { .. }), "{spec:?}: {err:?}");
        }
        assert_eq!(
            resolve("all", Path::new("nvidia-smi")).unwrap_err().to_string(),
            "invalid GPU \"all\": expected `none`, a decimal index or a GPU UUID (`GPU-<uuid>`)"
        );
    }

    #[test]
    fn displays() {
        assert_eq!(gpu(2, "GPU-c").to_string(), "2 GPU-c");
        assert_eq!(GpuSelection::Index(2).to_string(), "GPU 2");
        assert_eq!(GpuSelection::None.to_string(), "no GPU");
    }
}

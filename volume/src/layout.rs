//! Where everything is on the shared volume: the one module that spells a folder or file name of it.
//!
//! Generation 1 (one pod, N worker pairs and logcopy; what we run) and generation 2 (one pod per worker, S3 as the
//! medium; what we must be able to grow into) are both described here, with the places the containers mount the
//! volume's folders. Paths are relative to the volume root unless they are mount points ([`mount`]); the I/O on
//! them goes through [`crate::safe::Root`], never through a joined absolute path.
//!
//! Generation 1, as logcopy sees the volume:
//! ```text
//! agent/agent<i>/agent_results.json    the evaluator's checkpoint of worker i (its supervisor keeps a last good copy
//! agent/agent<i>/leaderboard.log       beside it, `.agent_results.json.last-good`); the evaluator's output
//! agent/agent_results.json             the merged results file (logcopy)
//! simulator/                           CARLA's logs and recorder files
//! containers-status/                   the marker files (crate::markers) and the status records (crate::status)
//! evalai/{results.json,stdout.txt,metadata.json}   what EvalAI shows (logcopy)
//! logcopy/logcopy.log                  logcopy's own log
//! logcopy/.upload-manifest.json        what logcopy has uploaded to S3 (never uploaded itself)
//! ```
//! Generation 2 adds `agent/partial_agent_results<ID>.json` (a worker's results) and
//! `logs/{agent,simulator,uploader}-<ID>.log`.

use std::path::{Path, PathBuf};

/// The agents' folder: one sub-folder per worker (generation 1), the merged file, generation 2's partial files.
pub const AGENT_DIR: &str = "agent";
/// CARLA's logs and recorder files (mounted at [`mount::SIMULATOR`] in every simulator container).
pub const SIMULATOR_DIR: &str = "simulator";
/// The marker files (mounted at [`mount::STATUS`] in every worker container).
pub const STATUS_DIR: &str = "containers-status";
/// EvalAI's three files, written by logcopy.
pub const EVALAI_DIR: &str = "evalai";
/// logcopy's own files: its log and the upload manifest.
pub const LOGCOPY_DIR: &str = "logcopy";
/// Generation 2's logs folder.
pub const LOGS_DIR: &str = "logs";

/// The folders the init container creates on a fresh volume (mode 0777 upstream), besides one per worker.
pub const GEN1_DIRS: [&str; 5] = [AGENT_DIR, SIMULATOR_DIR, LOGCOPY_DIR, STATUS_DIR, EVALAI_DIR];

/// The evaluator's results file (its `--checkpoint`) in a worker's folder; also the merged file's name.
pub const RESULTS_FILE: &str = "agent_results.json";
/// The evaluator's output, tee'd beside its checkpoint.
pub const EVALUATOR_LOG: &str = "leaderboard.log";

/// Generation 1's worker results files, `{i}` standing for the worker number (logcopy's `--results-pattern`).
pub const RESULTS_PATTERN: &str = "agent/agent{i}/agent_results.json";
/// Generation 2's worker results files.
pub const RESULTS_PATTERN_GEN2: &str = "agent/partial_agent_results{i}.json";
/// The merged results file (generation 1's `AGENT_RESULTS_FILE`; logcopy's `--merged-path`).
pub const MERGED: &str = "agent/agent_results.json";

/// EvalAI's files in [`EVALAI_DIR`].
pub const EVALAI_RESULTS: &str = "evalai/results.json";
pub const EVALAI_STDOUT: &str = "evalai/stdout.txt";
pub const EVALAI_METADATA: &str = "evalai/metadata.json";

/// logcopy's own log.
pub const LOGCOPY_LOG: &str = "logcopy/logcopy.log";
/// What logcopy has uploaded, by content; never uploaded itself.
pub const UPLOAD_MANIFEST: &str = "logcopy/.upload-manifest.json";

/// The suffix of a worker status record in [`STATUS_DIR`]: `<role>-<ID>.status.json` (crate::status).
pub const STATUS_RECORD_SUFFIX: &str = ".status.json";

/// Prefix of the temporary file of every atomic write on the volume (either binary's); such files are never
/// uploaded, and logcopy removes its leftovers at start.
pub const TEMP_PREFIX: &str = ".logcopy-tmp.";

/// Worker `i`'s folder in generation 1 (workers are numbered from 1).
pub fn worker_dir(i: u32) -> PathBuf {
    Path::new(AGENT_DIR).join(format!("agent{i}"))
}

/// Worker `i`'s results file in generation 1.
pub fn worker_results(i: u32) -> PathBuf {
    worker_dir(i).join(RESULTS_FILE)
}

/// Worker `id`'s results file in generation 2.
pub fn partial_results(id: u32) -> PathBuf {
    PathBuf::from(RESULTS_PATTERN_GEN2.replace("{i}", &id.to_string()))
}

/// A generation 2 log: `logs/<side>-<ID>.log`, `side` being `agent`, `simulator` or `uploader`.
pub fn gen2_log(side: &str, id: u32) -> PathBuf {
    Path::new(LOGS_DIR).join(format!("{side}-{id}.log"))
}

/// Whether `rel` lies in a worker's own folder (`agent/agent<i>/...`), where the evaluator writes.
pub fn in_worker_dir(rel: &Path) -> bool {
    let mut parts = rel.components();
    parts.next().is_some_and(|c| c.as_os_str() == AGENT_DIR)
        && parts.next().is_some_and(|c| c.as_os_str().to_string_lossy().starts_with("agent"))
        && parts.next().is_some()
}

/// The order in which the S3 sync uploads what changed, most important first: a final flush out of time (a SIGTERM
/// with 300,000 small files in a worker's folder) must still leave in S3 what the submission is judged and
/// restored by. Within a class the sync goes smallest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UploadPriority {
    /// A worker's results file (generations 1 and 2) and the last good copy beside it.
    Results,
    /// The merged results file.
    Merged,
    /// What EvalAI shows.
    EvalAi,
    /// The marker files and the status records.
    Status,
    /// logcopy's own log.
    OwnLog,
    /// Everything else: the evaluators' and CARLA's logs, recordings, whatever the agent wrote.
    Rest,
}

/// Which class `rel` (relative to the volume root) is uploaded in; see [`UploadPriority`]. Only the exact places of
/// the layout rank above [`UploadPriority::Rest`]: a file named `agent_results.json` deeper in a worker's folder does
/// not.
pub fn upload_priority(rel: &Path) -> UploadPriority {
    let parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
    let name = parts.last().map(|n| n.to_string_lossy()).unwrap_or_default();
    let last_good = format!(".{RESULTS_FILE}.last-good");
    match parts.as_slice() {
        [a, w, _] if *a == AGENT_DIR && is_worker_dir_name(w) && (name == RESULTS_FILE || name == last_good) => {
            UploadPriority::Results
        }
        [a, _] if *a == AGENT_DIR && is_gen2_results(&name) => UploadPriority::Results,
        _ if rel == Path::new(MERGED) => UploadPriority::Merged,
        [d, _] if *d == EVALAI_DIR => UploadPriority::EvalAi,
        [d, _] if *d == STATUS_DIR => UploadPriority::Status,
        _ if rel == Path::new(LOGCOPY_LOG) => UploadPriority::OwnLog,
        _ => UploadPriority::Rest,
    }
}

/// Whether `rel` is a file of a class above [`UploadPriority::Rest`] or a folder that can hold one: the walk of the
/// sync's first pass, which finds them without listing the rest of the volume (300,000 files in a worker's folder).
pub fn may_hold_upload_priority(rel: &Path) -> bool {
    let parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
    upload_priority(rel) != UploadPriority::Rest
        || match parts.as_slice() {
            [] => true,
            [d] => [AGENT_DIR, EVALAI_DIR, STATUS_DIR, LOGCOPY_DIR].iter().any(|x| d == x),
            [a, w] => *a == AGENT_DIR && is_worker_dir_name(w),
            _ => false,
        }
}

/// Whether `name` is a generation 1 worker folder's name, `agent<i>`.
fn is_worker_dir_name(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .and_then(|d| d.strip_prefix("agent"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `name` is generation 2's results file of a worker, or its last good copy.
fn is_gen2_results(name: &str) -> bool {
    let (head, tail) =
        RESULTS_PATTERN_GEN2.rsplit_once('/').map_or(("", ""), |(_, f)| f.split_once("{i}").unwrap_or(("", "")));
    let name = name.strip_prefix('.').and_then(|n| n.strip_suffix(".last-good")).unwrap_or(name);
    name.strip_prefix(head)
        .and_then(|n| n.strip_suffix(tail))
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// The worker's folder (`agent/agent<i>`) that `rel` lies in, below it; `None` elsewhere (the folder itself
/// included).
pub fn worker_folder(rel: &Path) -> Option<&Path> {
    let mut parts = rel.iter();
    let (a, w, _) = (parts.next()?, parts.next()?, parts.next()?);
    if a != AGENT_DIR || !is_worker_dir_name(w) {
        return None;
    }
    rel.ancestors().find(|p| p.iter().count() == 2)
}

/// Whether `rel` is one of logcopy's outputs or its own files (their changes must not start a new cycle).
pub fn is_logcopy_file(rel: &Path, merged: &Path) -> bool {
    rel.starts_with(EVALAI_DIR)
        || rel == merged
        || rel.starts_with(LOGCOPY_DIR)
        || rel.file_name().is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX))
}

/// The name of the temporary file an atomic write of `name` uses (unique per process).
pub fn temp_name(name: &str) -> String {
    format!("{TEMP_PREFIX}{name}.{}", std::process::id())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Where the agent supervisor keeps the last good copy of a checkpoint: `.<name>.last-good` beside it. logcopy reads
/// it when the checkpoint itself is caught half-written and it has no good parse of its own yet.
pub fn last_good_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_file_name(format!(".{}.last-good", file_name(checkpoint)))
}

/// Where `--route-retries` keeps its per-route crash counts: `.<name>.route-crashes` beside the checkpoint.
pub fn route_crashes_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_file_name(format!(".{}.route-crashes", file_name(checkpoint).trim_start_matches('.')))
}

/// Where a checkpoint that did not parse is moved aside: `<name>.corrupt-<unix seconds>[-<n>]`.
pub fn corrupt_path(checkpoint: &Path, unix_secs: u64, n: u32) -> PathBuf {
    let name = file_name(checkpoint);
    let suffix = if n == 0 { String::new() } else { format!("-{n}") };
    checkpoint.with_file_name(format!("{name}.corrupt-{unix_secs}{suffix}"))
}

/// Where the checkpoint is kept before `--route-retries` moves past a route: `<name>.before-skip-<route id>`, the
/// route id with anything but ASCII letters, digits and `_` replaced by `-`.
pub fn before_skip_path(checkpoint: &Path, route_id: &str) -> PathBuf {
    let safe: String = route_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect();
    checkpoint.with_file_name(format!("{}.before-skip-{safe}", file_name(checkpoint)))
}

/// Where the pod spec mounts the volume (generation 1): whole in logcopy's container, by folder in the workers'.
/// Each mount is a root of its own for [`crate::safe::Root`]: the supervisor sees no other part of the volume.
pub mod mount {
    use std::path::PathBuf;

    /// The whole volume, in the logcopy container (logcopy's `--logs`).
    pub const LOGS: &str = "/logs";
    /// `containers-status/`, in every worker container.
    pub const STATUS: &str = "/tmp/status";
    /// The worker's `agent/agent<i>/`, in the agent container.
    pub const AGENT: &str = "/tmp/agent";
    /// The evaluator's checkpoint (`CHECKPOINT_ENDPOINT`) in [`AGENT`].
    pub const CHECKPOINT: &str = "/tmp/agent/agent_results.json";
    /// `simulator/`, in every simulator container (CARLA's `Saved` folder).
    pub const SIMULATOR: &str = "/home/carla/CarlaUE4/Saved";

    /// The simulator supervisor's log of worker `worker` in [`SIMULATOR`].
    pub fn simulator_log(worker: u32) -> PathBuf {
        PathBuf::from(SIMULATOR).join(format!("simulator-{worker}.log"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_1_and_2_names() {
        assert_eq!(worker_results(3), Path::new("agent/agent3/agent_results.json"));
        assert_eq!(RESULTS_PATTERN.replace("{i}", "3"), worker_results(3).to_string_lossy());
        assert_eq!(worker_dir(1).join(EVALUATOR_LOG), Path::new("agent/agent1/leaderboard.log"));
        assert_eq!(Path::new(MERGED), Path::new(AGENT_DIR).join(RESULTS_FILE));
        assert_eq!(partial_results(2), Path::new("agent/partial_agent_results2.json"));
        assert_eq!(gen2_log("uploader", 4), Path::new("logs/uploader-4.log"));
        for f in [EVALAI_RESULTS, EVALAI_STDOUT, EVALAI_METADATA] {
            assert!(Path::new(f).starts_with(EVALAI_DIR));
        }
        for f in [LOGCOPY_LOG, UPLOAD_MANIFEST] {
            assert!(Path::new(f).starts_with(LOGCOPY_DIR));
        }
        assert_eq!(Path::new(mount::CHECKPOINT), Path::new(mount::AGENT).join(RESULTS_FILE));
        assert_eq!(mount::simulator_log(2), Path::new("/home/carla/CarlaUE4/Saved/simulator-2.log"));
    }

    #[test]
    fn files_beside_a_checkpoint() {
        let cp = Path::new("/tmp/agent/agent_results.json");
        assert_eq!(last_good_path(cp), Path::new("/tmp/agent/.agent_results.json.last-good"));
        assert_eq!(route_crashes_path(cp), Path::new("/tmp/agent/.agent_results.json.route-crashes"));
        assert_eq!(corrupt_path(cp, 17, 0), Path::new("/tmp/agent/agent_results.json.corrupt-17"));
        assert_eq!(corrupt_path(cp, 17, 2), Path::new("/tmp/agent/agent_results.json.corrupt-17-2"));
        assert_eq!(
            before_skip_path(cp, "RouteScenario_7_rep0"),
            Path::new("/tmp/agent/agent_results.json.before-skip-RouteScenario_7_rep0")
        );
        assert_eq!(before_skip_path(Path::new("c.json"), "a/../b"), Path::new("c.json.before-skip-a----b"));
        assert!(temp_name("x.json").starts_with(".logcopy-tmp.x.json."));
    }

    #[test]
    fn who_writes_where() {
        assert!(in_worker_dir(Path::new("agent/agent2/agent_results.json")));
        assert!(in_worker_dir(Path::new("agent/agent12/sub/x.log")));
        assert!(!in_worker_dir(Path::new("agent/agent_results.json")));
        assert!(!in_worker_dir(Path::new("agent/agent2")));
        assert_eq!(worker_folder(Path::new("agent/agent12/sub/x.log")), Some(Path::new("agent/agent12")));
        assert_eq!(worker_folder(Path::new("agent/agent2/x")), Some(Path::new("agent/agent2")));
        assert_eq!(worker_folder(Path::new("agent/agent2")), None);
        assert_eq!(worker_folder(Path::new("agent/agentx/y")), None);
        assert_eq!(worker_folder(Path::new("simulator/agent2/x")), None);
        assert!(!in_worker_dir(Path::new("simulator/agent2/x")));
        let merged = Path::new(MERGED);
        for own in [EVALAI_STDOUT, LOGCOPY_LOG, MERGED, "agent/.logcopy-tmp.agent_results.json.7"] {
            assert!(is_logcopy_file(Path::new(own), merged), "{own}");
        }
        assert!(!is_logcopy_file(&worker_results(1), merged));
    }

    #[test]
    fn upload_priorities() {
        use UploadPriority::*;
        for (rel, p) in [
            ("agent/agent2/agent_results.json", Results),
            ("agent/agent12/.agent_results.json.last-good", Results),
            ("agent/partial_agent_results7.json", Results),
            ("agent/.partial_agent_results7.json.last-good", Results),
            ("agent/agent_results.json", Merged),
            ("evalai/stdout.txt", EvalAi),
            ("containers-status/agent-1.done", Status),
            ("containers-status/agent-1.status.json", Status),
            ("logcopy/logcopy.log", OwnLog),
            ("agent/agent2/imgs/agent_results.json", Rest),
            ("agent/agentx/agent_results.json", Rest),
            ("agent/agent2/leaderboard.log", Rest),
            ("agent/agent2/agent_results.json.corrupt-17", Rest),
            ("agent/partial_agent_resultsx.json", Rest),
            ("evalai/sub/x", Rest),
            ("simulator/recorder/route.log", Rest),
            ("logcopy/other", Rest),
        ] {
            assert_eq!(upload_priority(Path::new(rel)), p, "{rel}");
        }
        for rel in
            ["", "agent", "agent/agent3", "evalai", "containers-status", "logcopy", "agent/agent1/agent_results.json"]
        {
            assert!(may_hold_upload_priority(Path::new(rel)), "{rel}");
        }
        for rel in ["simulator", "agent/agent3/imgs", "agent/agentx", "evalai/sub/x", "logs"] {
            assert!(!may_hold_upload_priority(Path::new(rel)), "{rel}");
        }
        assert!(Results < Merged && Merged < EvalAi && EvalAi < Status && Status < OwnLog && OwnLog < Rest);
    }
}

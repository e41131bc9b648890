//! The checkpoint guard: the agent side's protection of the evaluator's results file, which is the
//! participant's score.
//!
//! The leaderboard evaluator (`leaderboard_evaluator.py --checkpoint agent_results.json`) rewrites the
//! whole file after every route with `open(path, 'w')` followed by `json.dump`: not atomically. Our
//! supervisor stops the evaluator when the simulator dies, when it falls silent, or on a cancel, and
//! such a stop often lands exactly while it writes; the file is then empty or cut short. On
//! the next attempt upstream's `validate_and_resume` reads it as "no data", gives up, and the run
//! starts over from the first route, erasing every score of that worker (upstream's
//! `run_leaderboard.sh` had the same hole). This module closes it in two steps:
//!
//! * [`Guard::observe`], called whenever the file changed, keeps a copy of the latest version that
//!   parses (the *last good* copy, `.<name>.last-good` beside it, written atomically).
//! * [`Guard::prepare_resume`], called before a resumed attempt, moves a file that does not parse
//!   aside (renamed, never deleted) and puts the last good copy back; then it repairs the progress
//!   counter, see below.
//!
//! **The progress repair.** When the simulator dies mid-route the 2.0 evaluator often records
//! nothing for that route (its `stop_scenario()` raises, so `_register_statistics` never runs) but
//! still saves `progress = [k + 1, total]` with only `k` records. Its resume
//! (`RouteIndexer.validate_and_resume`, branch `leaderboard-2.0`) then walks the records up to
//! `progress[0]`, hits the end of the list and falls back to `max(len(records) - 1, 0)`: it runs the
//! last *scored* route again and replaces its record, then the crashed one. If the crash also left
//! `entry_status` at `Crashed` it steps back one more. [`plan_progress`] works out the one
//! `progress[0]` (and, when needed, `entry_status`) that makes the evaluator resume at the crashed
//! route and nowhere else; the derivation is written out there. Only `progress[0]` is ever lowered,
//! never `progress[1]` (a total that differs from the selected routes makes the evaluator empty the
//! file).
//!
//! Every rewrite (the progress repair, a `--route-retries` skip) parses the file with [`volume::pyjson`] and writes
//! it back as the evaluator's `json.dump(indent=4)` would: key order kept, ints and floats spelled as Python spells
//! them, so a file the evaluator wrote differs only in the fields changed (upstream's own writer would produce the
//! same bytes for the changed document).
//!
//! The file lives on a volume the participant's code can write, so it is read and written the way
//! `logcopy` reads and writes the volume, through [`volume::safe::Root`]: its folder (the agent's mount
//! of the volume) is opened once, a symbolic link is never followed, a FIFO never blocks us, and
//! nothing over 64 MiB is read. Every write is a temporary file in the same folder, `fsync`ed, then
//! renamed over the target.
//!
//! The functions return what they did ([`Observed`], [`Repair`], whose `Display` is the log line);
//! the agent role logs them.

use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use volume::safe::{ReadError, Root};

/// Largest checkpoint read: far above any real one (10,000 routes take about 15 MB).
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// `FAILURE_MESSAGES["Simulation"]`'s route status suffix; the evaluator tests it with `in`.
const SIMULATION_CRASHED: &str = "Simulation crashed";

pub use volume::layout::last_good_path;
use volume::layout::{before_skip_path, corrupt_path};
use volume::pyjson;
use volume::results::INFRACTIONS_V2;

/// Where a checkpoint is: its folder, opened once as a root (the agent container's mount of its worker's folder),
/// and its name there. Every file the guard keeps beside it (the last good copy, a corrupt file moved aside, the
/// copy before a skip) is in the same folder, reached beneath the same root.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    root: Arc<Root>,
    name: PathBuf,
}

impl CheckpointFile {
    /// Opens the folder of `path` (creating it when missing) as the root of the checkpoint's files.
    pub fn open(path: &Path) -> std::io::Result<CheckpointFile> {
        let (root, name) = Root::open_parent(path, true)?;
        Ok(CheckpointFile { root: Arc::new(root), name })
    }

    /// The checkpoint's path, for messages and the evaluator's `--checkpoint`.
    pub fn path(&self) -> PathBuf {
        self.root.display(&self.name)
    }

    /// The folder's root, for the other files the agent keeps beside the checkpoint.
    pub fn root(&self) -> &Arc<Root> {
        &self.root
    }

    /// The checkpoint's name in its folder.
    pub fn name(&self) -> &Path {
        &self.name
    }
}

/// Watches one worker's checkpoint and keeps its last good copy.
#[derive(Debug)]
pub struct Guard {
    file: CheckpointFile,
    checkpoint: PathBuf,
    last_good: PathBuf,
    /// The bytes last copied (or found in the last good copy when first looked at).
    copied: Option<Vec<u8>>,
    primed: bool,
}

/// What [`Guard::observe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The file parses and equals the last good copy.
    Unchanged,
    /// The file parses and was new: it is now the last good copy.
    CopiedLastGood,
    /// The file is there but is not a results file (empty, half written, a link, ...); nothing copied.
    NotValid { reason: String },
    /// There is no file.
    Missing,
}

/// One change [`Guard::prepare_resume`] made to the checkpoint; `Display` gives the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// The checkpoint did not parse: it was renamed to `moved_aside` (`<name>.corrupt-<unix seconds>`)
    /// and the last good copy put in its place.
    RestoredLastGood { moved_aside: PathBuf },
    /// The checkpoint was missing and the last good copy was put in its place.
    RestoredMissing,
    /// `progress[0]` lowered from `from` to `to` (or kept, `from == to`, when only the status changed) so that
    /// the evaluator resumes at route index `resumes_at`, the first one without a record (or the one recorded as
    /// a simulation crash); `cleared_crashed`: `entry_status` was `Crashed` and is now `Started`.
    ProgressRepaired { from: i64, to: i64, cleared_crashed: bool, resumes_at: i64 },
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repair::RestoredLastGood { moved_aside } => write!(
                f,
                "the checkpoint did not parse: moved it aside to {} and restored the last good copy",
                moved_aside.display()
            ),
            Repair::RestoredMissing => write!(f, "the checkpoint was missing: restored the last good copy"),
            Repair::ProgressRepaired { from, to, cleared_crashed, resumes_at } => {
                // A status change alone (the crash record of a route moved past) keeps progress[0].
                match (from == to, cleared_crashed) {
                    (true, true) => {
                        write!(f, "checkpoint entry_status Crashed set to Started (progress[0] stays {to})")?
                    }
                    (false, true) => write!(
                        f,
                        "checkpoint progress[0] lowered from {from} to {to} and entry_status Crashed set to Started"
                    )?,
                    (_, false) => write!(f, "checkpoint progress[0] lowered from {from} to {to}")?,
                }
                write!(
                    f,
                    " to match the records present: the evaluator resumes at route index {resumes_at} \
                     instead of running a scored route again"
                )
            }
        }
    }
}

/// An I/O failure on one of the guard's files.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot rename {} to {}: {source}", from.display(), to.display())]
    Rename { from: PathBuf, to: PathBuf, source: std::io::Error },
}

/// What the agent side needs after the evaluator exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `entry_status` when it is a string.
    pub entry_status: Option<String>,
    /// Number of route records.
    pub records: usize,
    /// `_checkpoint.progress` when it is two integers.
    pub progress: Option<(i64, i64)>,
    /// `_checkpoint.global_record` is `{}` (or absent): the evaluator did not reach its global
    /// statistics. Upstream's `run_leaderboard.sh` reads this as a crash.
    pub global_record_empty: bool,
}

/// Summarizes a results file; `None` when it is missing or is not a results file.
pub fn summarize(file: &CheckpointFile) -> Result<Option<Summary>, CheckpointError> {
    let bytes = match read_file(&file.root, &file.name)? {
        ReadOutcome::Bytes(b) => b,
        ReadOutcome::Missing | ReadOutcome::Unusable(_) => return Ok(None),
    };
    let Ok(v) = parse_results(&bytes) else { return Ok(None) };
    let cp = &v["_checkpoint"];
    Ok(Some(Summary {
        entry_status: v["entry_status"].as_str().map(str::to_owned),
        records: cp["records"].as_array().map_or(0, Vec::len),
        progress: progress_pair(cp),
        global_record_empty: cp.get("global_record").is_none_or(|g| g.as_object().is_some_and(|o| o.is_empty())),
    }))
}

/// Whether a resume has anything to resume from: the file is a results file with records or progress.
pub fn exists_with_data(file: &CheckpointFile) -> bool {
    let Ok(ReadOutcome::Bytes(bytes)) = read_file(&file.root, &file.name) else { return false };
    let Ok(v) = parse_results(&bytes) else { return false };
    let cp = &v["_checkpoint"];
    let non_empty = |k: &str| cp[k].as_array().is_some_and(|a| !a.is_empty());
    non_empty("records") || non_empty("progress")
}

impl Guard {
    /// A guard for `file`; its last good copy is `.<file name>.last-good` in the same folder.
    pub fn new(file: CheckpointFile) -> Guard {
        let last_good = last_good_path(&file.name);
        Guard { checkpoint: file.name.clone(), file, last_good, copied: None, primed: false }
    }

    /// The checkpoint guarded.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.file.path()
    }

    /// Where the last good copy is kept.
    pub fn last_good_path(&self) -> PathBuf {
        self.file.root.display(&self.last_good)
    }

    /// Called after the checkpoint changed (and periodically): a version that parses as a results file
    /// and differs from the last copy becomes the last good copy (temporary file + rename).
    pub fn observe(&mut self) -> Result<Observed, CheckpointError> {
        let root = &self.file.root;
        let bytes = match read_file(root, &self.checkpoint)? {
            ReadOutcome::Missing => return Ok(Observed::Missing),
            ReadOutcome::Unusable(reason) => return Ok(Observed::NotValid { reason }),
            ReadOutcome::Bytes(b) => b,
        };
        if let Err(reason) = parse_results(&bytes) {
            return Ok(Observed::NotValid { reason });
        }
        if !self.primed {
            // A restarted supervisor finds the copy of its previous life: no need to write it again.
            // Unreadable means "no copy"; the rename below replaces whatever is there.
            if let Ok(ReadOutcome::Bytes(old)) = read_file(root, &self.last_good) {
                self.copied = Some(old);
            }
            self.primed = true;
        }
        if self.copied.as_deref() == Some(&bytes[..]) {
            return Ok(Observed::Unchanged);
        }
        write_atomic(root, &self.last_good, &bytes)?;
        self.copied = Some(bytes);
        Ok(Observed::CopiedLastGood)
    }

    /// Before a resumed attempt: (1) a checkpoint that is not a results file (empty, truncated, not
    /// JSON, not an object, a link, ...) is renamed aside and the last good copy restored; a missing
    /// one is restored too, since the evaluator would otherwise start the worker's routes over.
    /// Without a last good copy that parses, the file is left as it is. (2) The progress is repaired
    /// to the records present ([`plan_progress`]). Returns the repairs done, empty when none.
    pub fn prepare_resume(&self) -> Result<Vec<Repair>, CheckpointError> {
        self.prepare_resume_skipping(&BTreeSet::new())
    }

    /// [`Guard::prepare_resume`], with the routes that `--route-retries` moved past (see
    /// [`plan_progress_skipping`]).
    pub fn prepare_resume_skipping(&self, skipped: &BTreeSet<String>) -> Result<Vec<Repair>, CheckpointError> {
        let mut repairs = Vec::new();
        let root = &self.file.root;
        let current = match read_file(root, &self.checkpoint)? {
            ReadOutcome::Bytes(b) if parse_results(&b).is_ok() => Some(b),
            ReadOutcome::Missing => match self.good_copy()? {
                Some(good) => {
                    write_atomic(root, &self.checkpoint, &good)?;
                    repairs.push(Repair::RestoredMissing);
                    Some(good)
                }
                None => None,
            },
            ReadOutcome::Bytes(_) | ReadOutcome::Unusable(_) => match self.good_copy()? {
                Some(good) => {
                    let moved_aside = self.restore_over_corrupt(&good)?;
                    repairs.push(Repair::RestoredLastGood { moved_aside });
                    Some(good)
                }
                None => None,
            },
        };
        if let Some(bytes) = current
            && let Some(repair) = repair_progress(root, &self.checkpoint, &bytes, skipped)?
        {
            repairs.push(repair);
        }
        Ok(repairs)
    }

    /// The last good copy, when there is one that parses.
    fn good_copy(&self) -> Result<Option<Vec<u8>>, CheckpointError> {
        Ok(match read_file(&self.file.root, &self.last_good)? {
            ReadOutcome::Bytes(b) if parse_results(&b).is_ok() => Some(b),
            _ => None,
        })
    }

    /// Renames the checkpoint aside (never deletes it) and puts `good` in its place.
    fn restore_over_corrupt(&self, good: &[u8]) -> Result<PathBuf, CheckpointError> {
        let root = &self.file.root;
        // Write the copy first, so that the checkpoint is absent only between two renames.
        let tmp = root
            .write_temp(&self.checkpoint, good)
            .map_err(|e| CheckpointError::Write { path: e.path, source: e.source })?;
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut n = 0;
        let mut aside = corrupt_path(&self.checkpoint, secs, n);
        while root.stat(&aside).is_ok_and(|m| m.is_some()) {
            n += 1;
            aside = corrupt_path(&self.checkpoint, secs, n);
        }
        // `rename` moves a link or a FIFO itself, never what it points to.
        let renamed = rename(root, &self.checkpoint, &aside).and_then(|()| rename(root, &tmp, &self.checkpoint));
        if renamed.is_err() {
            let _ = root.remove_file(&tmp);
        }
        renamed?;
        Ok(root.display(&aside))
    }
}

/// How `--route-retries` moved past a route that crashed the simulator too often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSkip {
    /// The route has the last record: the evaluator's record of the crash (see [`crash_record`]; `Crashed` makes
    /// it repeat the route), or the record of an earlier run of the route that it was running again (the first
    /// write of a resumed run, `Started` with `progress[0]` at the record). The record stays as it is;
    /// `entry_status` is `Started` (`cleared_crashed`: it was `Crashed`) and `progress[0]` is `index + 1`, so that
    /// the evaluator resumes after the route.
    KeptRecord { route_id: String, index: usize, status: String, cleared_crashed: bool, kept: PathBuf },
    /// The evaluator had recorded nothing for the route: the record it writes for a simulation crash was added at
    /// the route's index, and `progress[0]` set past it.
    AddedRecord { route_id: String, index: usize, kept: PathBuf },
}

impl fmt::Display for RouteSkip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteSkip::KeptRecord { route_id, index, status, cleared_crashed, kept } => write!(
                f,
                "moved past {route_id}: its record at index {index} (status {status:?}) stays, {}progress[0] set to {} \
                 so that the evaluator resumes after it (previous checkpoint kept as {})",
                if *cleared_crashed { "entry_status Crashed set to Started and " } else { "" },
                index + 1,
                kept.display()
            ),
            RouteSkip::AddedRecord { route_id, index, kept } => write!(
                f,
                "moved past {route_id}: added the evaluator's \"Failed - Simulation crashed\" record at index {index} \
                 (zero scores) and set progress[0] to {} (previous checkpoint kept as {})",
                index + 1,
                kept.display()
            ),
        }
    }
}

/// The checkpoint parsed, when it is a results file (never through a link). `Ok(None)`: missing or not one.
pub fn read_results(file: &CheckpointFile) -> Result<Option<Value>, CheckpointError> {
    Ok(match read_file(&file.root, &file.name)? {
        ReadOutcome::Bytes(b) => parse_results(&b).ok(),
        _ => None,
    })
}

/// The route the last attempt was on when the simulator crashed, read from the checkpoint: `Some((route_id,
/// recorded))` where `recorded` says the evaluator wrote the crash (its record, [`crash_record`], under
/// `entry_status` `Crashed`); when it wrote nothing, the route is `running` (the evaluator's last "Preparing"
/// line), if known.
pub fn crashed_route(results: &Value, running: Option<&str>) -> Option<(String, bool)> {
    // Under `Started` a crash record is an earlier attempt's, kept by the resumed run until it replaces it.
    if results["entry_status"].as_str() == Some("Crashed")
        && let Some(at) = crash_record(results)
        && let Some(id) = results["_checkpoint"]["records"][at]["route_id"].as_str()
    {
        return Some((id.to_string(), true));
    }
    running.map(|id| (id.to_string(), false))
}

/// The leading run of records whose `index` equals their position. The evaluator writes each record at its
/// route's position, so these are the records its resume check (`route_id` against the route list, position by
/// position) accepts; a record after a gap sits at another route's position and makes it give up.
fn aligned_len(records: &[Value]) -> usize {
    records.iter().enumerate().take_while(|(i, r)| r["index"].as_u64() == Some(*i as u64)).count()
}

/// The position of the evaluator's record of a simulation crash, when it is the last aligned record. Under
/// `Crashed` it is known by position: the evaluator writes `Crashed`, the crashed route's record and
/// `progress[0]` one past it in the same dump, and that record's status can name whatever ended the route first
/// (`compute_route_statistics` lets a timeout, blocked or deviation event overwrite the failure message, and a
/// completed route reads `Completed`). Otherwise by its status ("Failed - Simulation crashed"), which a resumed
/// run keeps under `Started` until it runs the route again.
fn crash_record(results: &Value) -> Option<usize> {
    let cp = &results["_checkpoint"];
    let records = cp["records"].as_array()?;
    let last = aligned_len(records).checked_sub(1)?;
    let by_position = results["entry_status"].as_str() == Some("Crashed")
        && progress_pair(cp).is_some_and(|(done, _)| usize::try_from(done) == Ok(last + 1));
    let by_status = records[last]["status"].as_str().is_some_and(|s| s.contains(SIMULATION_CRASHED));
    (by_position || by_status).then_some(last)
}

/// Moves the checkpoint past `route_id`, which crashed the simulator too often (see [`RouteSkip`]). The previous
/// file is kept beside it (`<name>.before-skip-<route_id>`) and the new one written atomically. `Ok(None)` when
/// the file is not in a shape this can change safely (then nothing is written): the route is not the crashed
/// one at the resume point, the records are not aligned, the status is neither `Started` nor `Crashed`, or the
/// route would pass the total.
pub fn skip_route(file: &CheckpointFile, route_id: &str) -> Result<Option<RouteSkip>, CheckpointError> {
    let (root, path) = (&file.root, file.name.as_path());
    let bytes = match read_file(root, path)? {
        ReadOutcome::Bytes(b) => b,
        _ => return Ok(None),
    };
    let Ok(value) = parse_results(&bytes) else { return Ok(None) };
    let Some((done, total)) = progress_pair(&value["_checkpoint"]) else { return Ok(None) };
    let records = value["_checkpoint"]["records"].as_array().cloned().unwrap_or_default();
    let n = records.len();
    let entry_status = value["entry_status"].as_str().unwrap_or_default().to_string();
    if aligned_len(&records) != n || !matches!(entry_status.as_str(), "Started" | "Crashed") {
        return Ok(None);
    }
    // The route's record is last, and the evaluator would run the route again: it is the crash record, or the
    // first write of a run resumed at it (which crashed again before writing anything else).
    let last_is_the_route = records.last().is_some_and(|r| r["route_id"].as_str() == Some(route_id))
        && (crash_record(&value) == Some(n - 1) || (entry_status == "Started" && usize::try_from(done) == Ok(n - 1)));
    let kept = before_skip_path(path, route_id);
    let (skip, added) = if last_is_the_route {
        let skip = RouteSkip::KeptRecord {
            route_id: route_id.to_string(),
            index: n - 1,
            status: records[n - 1]["status"].as_str().unwrap_or_default().to_string(),
            cleared_crashed: entry_status == "Crashed",
            kept: root.display(&kept),
        };
        (skip, None)
    } else if !records.iter().any(|r| r["route_id"].as_str() == Some(route_id)) && (n as i64) < total {
        let skip = RouteSkip::AddedRecord { route_id: route_id.to_string(), index: n, kept: root.display(&kept) };
        (skip, Some(simulation_crashed_record(n, route_id)))
    } else {
        return Ok(None);
    };
    // `progress[0]` past the route, `entry_status` `Started`, and the added record last; nothing else changes.
    let progress0 = i64::try_from(n + usize::from(added.is_some())).unwrap_or(i64::MAX);
    let Some(out) = rewrite(&bytes, |doc| {
        if let Some(record) = added {
            push_record(doc, record)?;
        }
        set_progress0(doc, progress0)?;
        doc.insert("entry_status", pyjson::Value::str("Started"));
        Some(())
    }) else {
        return Ok(None);
    };
    write_atomic(root, &kept, &bytes)?;
    write_atomic(root, path, &out)?;
    Ok(Some(skip))
}

/// The change to make to a 2.0 checkpoint's resume point, from [`plan_progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressPlan {
    pub from: i64,
    pub to: i64,
    pub cleared_crashed: bool,
    /// The route index the evaluator resumes at after the change.
    pub resumes_at: i64,
}

/// The route index at which the 2.0 evaluator resumes, as `RouteIndexer.validate_and_resume` computes it
/// (branch `leaderboard-2.0`, `leaderboard/utils/route_indexer.py`), leaving out the route-id check
/// that can only make it give up ([`plan_progress`] keeps that check within the aligned records):
///
/// ```python
/// check_index = 0
/// resume_index = progress[0]
/// while check_index < resume_index:
///     try:
///         ...  route_data[check_index]['route_id'] ...      # IndexError when check_index >= len(records)
///         check_index += 1
///     except IndexError:
///         resume_index = max(check_index - 1, 0)            # ends the loop: check_index > resume_index
/// if entry_status == "Crashed":
///     self.index = max(0, resume_index - 1)
/// else:
///     self.index = max(0, resume_index)
/// ```
///
/// So with `R` records: `progress[0] > R` steps back to `max(R - 1, 0)`, otherwise `progress[0]` stands;
/// then `Crashed` takes one more step back.
pub fn evaluator_resume_index(progress0: i64, records: usize, crashed: bool) -> i64 {
    let records = i64::try_from(records).unwrap_or(i64::MAX);
    let resume = if progress0 > records { (records - 1).max(0) } else { progress0 };
    if crashed { (resume - 1).max(0) } else { resume.max(0) }
}

/// Works out whether, and how, a checkpoint's resume point must change so that the 2.0 evaluator resumes
/// exactly at the route the last attempt was running. `None`: leave the file as it is.
///
/// The target. Records sit at the position of their route (`create_route_data` and
/// `compute_route_statistics` write `records[config.index]`, and each record's `index` field is that
/// position). Let `C` be the length of the leading run of records whose `index` equals their position
/// (all of them, in a file the evaluator finished writing). The route to resume at is
/// * `C - 1` when record `C - 1` is the evaluator's record of a simulation crash ([`crash_record`]: under
///   `Crashed` with `progress[0] = C`, whatever its status says, or a status that says "Simulation crashed"):
///   upstream's own crash path repeats it, as intended, since the crash was not the agent's;
/// * `C` otherwise: the first route without a record.
///
/// Nothing changes when the evaluator already resumes at the target and its route-id check reads aligned
/// records only (`min(progress[0], R) <= C`, `R` = number of records). With records beyond `C` and
/// `progress[0] > C` it would compare one of them with another route's id and give up, emptying the file, even
/// where the resume index would come out right. Otherwise, using [`evaluator_resume_index`] (`C <= R`):
/// * `entry_status` is not `Crashed`: `progress[0] = target` (`<= R`, so no fallback) resumes at `target`.
/// * `Crashed` and record `C - 1` is the crash: `progress[0] = C` resumes at `C - 1`.
/// * `Crashed` otherwise (the crash was not recorded, or its record is that of a route `--route-retries`
///   moved past): no `progress[0]` works (`C + 1` falls back or runs into unaligned records), so
///   `entry_status` becomes `Started`, what the evaluator itself writes during a run and at the start of
///   every resumed one (`eligible` is `false` for both), and `progress[0] = C`.
///
/// Only lowering is done (`progress[0]` never rises): with `progress[0] <= C` the evaluator checks the
/// route ids of records it wrote itself at their own positions, a subset of what it checks today, so
/// the repair cannot make it give up and empty the file. Lowering also clears the case where upstream
/// would check unaligned records (left by a resumed run stopped between dropping a record and writing
/// it back) and give up. Files that look like Leaderboard 1.0 (route ids without `_rep`), whose
/// evaluator resumes at `progress[0]` whatever the status, are left alone, as are files whose progress
/// is not two integers.
pub fn plan_progress(results: &Value) -> Option<ProgressPlan> {
    plan_progress_skipping(results, &BTreeSet::new())
}

/// [`plan_progress`], where a trailing "Simulation crashed" record of a route in `skipped` (moved past by
/// `--route-retries`) is a result like any other: the resume point is after it, not at it.
pub fn plan_progress_skipping(results: &Value, skipped: &BTreeSet<String>) -> Option<ProgressPlan> {
    let cp = &results["_checkpoint"];
    let records = cp["records"].as_array()?;
    let (from, _total) = progress_pair(cp)?;
    let is_v2 = records
        .iter()
        .any(|r| r.get("num_infractions").is_some() || r["route_id"].as_str().is_some_and(|id| id.contains("_rep")));
    if !is_v2 {
        return None;
    }
    let crashed = results["entry_status"].as_str() == Some("Crashed");
    let crash_last = crash_record(results)
        .is_some_and(|at| !records[at]["route_id"].as_str().is_some_and(|id| skipped.contains(id)));
    let aligned = i64::try_from(aligned_len(records)).ok()?;
    let target = if crash_last { aligned - 1 } else { aligned };
    // The records the route-id check reads: up to `progress[0]`, or all of them before its fallback.
    let checked = from.min(i64::try_from(records.len()).ok()?);
    if evaluator_resume_index(from, records.len(), crashed) == target && checked <= aligned {
        return None;
    }
    let (to, cleared_crashed) = match (crashed, crash_last) {
        (true, true) => (aligned, false),
        (true, false) => (target, true),
        (false, _) => (target, false),
    };
    if to > from {
        return None;
    }
    let resumes_at = evaluator_resume_index(to, records.len(), crashed && !cleared_crashed);
    debug_assert_eq!(resumes_at, target);
    Some(ProgressPlan { from, to, cleared_crashed, resumes_at })
}

/// Applies [`plan_progress`] to the file's bytes and writes the result atomically.
fn repair_progress(
    root: &Root,
    path: &Path,
    bytes: &[u8],
    skipped: &BTreeSet<String>,
) -> Result<Option<Repair>, CheckpointError> {
    let Ok(value) = parse_results(bytes) else { return Ok(None) };
    let Some(plan) = plan_progress_skipping(&value, skipped) else { return Ok(None) };
    let Some(out) = apply_plan(bytes, &plan) else { return Ok(None) };
    write_atomic(root, path, &out)?;
    Ok(Some(Repair::ProgressRepaired {
        from: plan.from,
        to: plan.to,
        cleared_crashed: plan.cleared_crashed,
        resumes_at: plan.resumes_at,
    }))
}

/// The checkpoint's bytes with [`ProgressPlan`] applied: `progress[0]` set to `to`, and `entry_status` to `Started`
/// when the plan clears `Crashed`. See [`rewrite`].
fn apply_plan(bytes: &[u8], plan: &ProgressPlan) -> Option<Vec<u8>> {
    rewrite(bytes, |doc| {
        set_progress0(doc, plan.to)?;
        if plan.cleared_crashed {
            doc.insert("entry_status", pyjson::Value::str("Started"));
        }
        Some(())
    })
}

/// The record `StatisticsManager` (branch `leaderboard-2.0`) writes for a route whose simulation crashed before it
/// could score: a fresh `RouteRecord` with the crash's status, every infraction list empty, zero scores, no length.
/// Its `to_json` is `vars(self)`, so the keys come in the order `RouteRecord.__init__` assigns them (the spec's
/// RouteRecord shape, 2.2), and `compute_route_statistics` gives the scores' floats and the int length.
fn simulation_crashed_record(index: usize, route_id: &str) -> pyjson::Value {
    use pyjson::Value;
    let object = |entries: Vec<(&str, Value)>| Value::object(entries.into_iter().collect());
    let infractions = INFRACTIONS_V2.into_iter().map(|k| (k, Value::empty_array())).collect();
    object(vec![
        ("index", Value::Int(i64::try_from(index).unwrap_or(i64::MAX))),
        ("route_id", Value::str(route_id)),
        ("status", Value::str(format!("Failed - {SIMULATION_CRASHED}"))),
        ("num_infractions", Value::Int(0)),
        ("infractions", object(infractions)),
        (
            "scores",
            object(vec![
                ("score_route", Value::Float(0.0)),
                ("score_penalty", Value::Float(1.0)),
                ("score_composed", Value::Float(0.0)),
            ]),
        ),
        (
            "meta",
            object(vec![
                ("route_length", Value::Int(0)),
                ("duration_game", Value::Float(0.0)),
                ("duration_system", Value::Float(0.0)),
            ]),
        ),
    ])
}

/// Every rewrite of the checkpoint: the file parsed with [`volume::pyjson`] (Python's model: key order, int and
/// float kept apart), `edit` applied to its top-level object, and the result written as the 2.0 evaluator's
/// `json.dump(indent=4)` writes it. A file the evaluator wrote therefore comes back byte for byte except the fields
/// changed. `None` (nothing to write) when the file does not parse that way or `edit` finds no place to change.
fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut pyjson::Object) -> Option<()>) -> Option<Vec<u8>> {
    let mut doc = pyjson::parse(bytes).ok()?;
    let pyjson::Value::Object(top) = &mut doc else { return None };
    edit(Arc::make_mut(top))?;
    Some(pyjson::to_pretty(&doc, false).into_bytes())
}

/// `_checkpoint`, to change in place.
fn checkpoint_mut(doc: &mut pyjson::Object) -> Option<&mut pyjson::Object> {
    match doc.get_mut("_checkpoint")? {
        pyjson::Value::Object(cp) => Some(Arc::make_mut(cp)),
        _ => None,
    }
}

/// Sets `_checkpoint.progress[0]`, leaving `progress[1]` as it is.
fn set_progress0(doc: &mut pyjson::Object, to: i64) -> Option<()> {
    let pyjson::Value::Array(progress) = checkpoint_mut(doc)?.get_mut("progress")? else { return None };
    *Arc::make_mut(progress).first_mut()? = pyjson::Value::Int(to);
    Some(())
}

/// Appends `record` to `_checkpoint.records`.
fn push_record(doc: &mut pyjson::Object, record: pyjson::Value) -> Option<()> {
    let pyjson::Value::Array(records) = checkpoint_mut(doc)?.get_mut("records")? else { return None };
    Arc::make_mut(records).push(record);
    Some(())
}

/// `_checkpoint.progress` as two integers.
fn progress_pair(cp: &Value) -> Option<(i64, i64)> {
    match cp["progress"].as_array()?.as_slice() {
        [done, total] => Some((done.as_i64()?, total.as_i64()?)),
        _ => None,
    }
}

/// Parses bytes as a results file: a JSON object whose `_checkpoint` holds a `records` list and a
/// `progress` list (every version the evaluator writes). `Err` says why not.
fn parse_results(bytes: &[u8]) -> Result<Value, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    if !v.is_object() {
        return Err("the JSON value is not an object".into());
    }
    let cp = &v["_checkpoint"];
    if !cp["records"].is_array() || !cp["progress"].is_array() {
        return Err("no `_checkpoint.records` and `_checkpoint.progress` lists".into());
    }
    Ok(v)
}

enum ReadOutcome {
    Missing,
    /// There, but not something we read: a link, not a regular file, too large.
    Unusable(String),
    Bytes(Vec<u8>),
}

/// Reads the regular file `rel` beneath `root` without following a link or blocking on a FIFO, up to
/// [`MAX_BYTES`].
fn read_file(root: &Root, rel: &Path) -> Result<ReadOutcome, CheckpointError> {
    match root.read_capped(rel, MAX_BYTES) {
        Ok(Some(bytes)) => Ok(ReadOutcome::Bytes(bytes)),
        Ok(None) => Ok(ReadOutcome::Missing),
        Err(ReadError::Io(source)) => Err(CheckpointError::Read { path: root.display(rel), source }),
        Err(ReadError::TooLarge { .. }) => {
            Ok(ReadOutcome::Unusable(format!("it is larger than the {MAX_BYTES}-byte cap")))
        }
        Err(e @ (ReadError::Symlink | ReadError::NotRegular { .. })) => Ok(ReadOutcome::Unusable(format!("it {e}"))),
    }
}

/// Writes `bytes` to `rel` atomically (a temporary file beside it, `fsync`ed, renamed over it).
fn write_atomic(root: &Root, rel: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    root.write_atomic(rel, bytes).map_err(|e| CheckpointError::Write { path: e.path, source: e.source })
}

fn rename(root: &Root, from: &Path, to: &Path) -> Result<(), CheckpointError> {
    root.rename(from, to).map_err(|source| CheckpointError::Rename {
        from: root.display(from),
        to: root.display(to),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worker 2 of the recorded crash volume: `Crashed`, `progress [3, 5]`, three records, the last one
    /// `Failed - Simulation crashed`, written like `json.dump(indent=4)`.
    const CRASH_RECORDED: &str =
        include_str!("../../fixtures/volumes/lb2.0-crash-marker/agent/agent2/agent_results.json");
    /// Worker 2 of the recorded mid-run volume: `Started`, `progress [2, 5]`, two records.
    const MID_RUN: &str = include_str!("../../fixtures/volumes/lb2.0-mid-run/agent/agent2/agent_results.json");
    /// A finished worker: `Finished`, `progress [2, 2]`, a global record.
    const FINISHED: &str =
        include_str!("../../fixtures/results/lb2.0/simulation_crashed/inputs/partial_agent_results1.json");
    /// Worker 2 of the recorded finished volume: `Started`, `progress [5, 5]`, five records, the last one
    /// (RouteScenario_9) `Failed - Agent got blocked`.
    const ALL_ROUTES: &str = include_str!("../../fixtures/volumes/lb2.0-finished/agent/agent2/agent_results.json");
    /// Worker 2 resumed at index 1 of records 0-2, route 1 crashed with nothing recorded: `Crashed`,
    /// `progress [2, 5]`, the records of routes 5 and 7 at positions 0 and 1.
    const GAP_AFTER_RESUME: &str =
        include_str!("../../fixtures/checkpoints/lb2.0-crash-unrecorded-after-mid-resume.json");

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!("supervisor-checkpoint-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }

        fn file(&self) -> PathBuf {
            self.0.join("agent_results.json")
        }

        /// The checkpoint beneath its folder, as the agent opens it.
        fn cp(&self) -> CheckpointFile {
            CheckpointFile::open(&self.file()).unwrap()
        }

        fn names(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn with_progress(text: &str, from: &str, to: &str) -> String {
        let old = format!("\"progress\": [\n            {from},");
        assert!(text.contains(&old));
        text.replacen(&old, &format!("\"progress\": [\n            {to},"), 1)
    }

    fn with_status(text: &str, from: &str, to: &str) -> String {
        let old = format!("\"entry_status\": \"{from}\"");
        assert!(text.contains(&old));
        text.replacen(&old, &format!("\"entry_status\": \"{to}\""), 1)
    }

    /// The route list of worker 2 in the volumes: routes 5-9, one repetition.
    fn worker2_routes() -> Vec<String> {
        (5..10).map(|id| format!("RouteScenario_{id}_rep0")).collect()
    }

    /// `RouteIndexer.validate_and_resume` (branch `leaderboard-2.0`) with its route-id check, which
    /// [`evaluator_resume_index`] leaves out: `None` where the evaluator gives up and starts over, emptying the file.
    fn evaluator_resume(results: &Value, routes: &[String]) -> Option<i64> {
        let entry_status = results["entry_status"].as_str().filter(|s| !s.is_empty() && *s != "Invalid")?;
        let (done, total) = progress_pair(&results["_checkpoint"])?;
        if usize::try_from(total).ok()? != routes.len() {
            return None;
        }
        let records = results["_checkpoint"]["records"].as_array()?;
        let (mut check, mut resume) = (0, done);
        while check < resume {
            let at = usize::try_from(check).ok()?;
            match (routes.get(at), records.get(at)) {
                (Some(id), Some(record)) if record["route_id"].as_str() == Some(id.as_str()) => check += 1,
                (Some(_), Some(_)) => return None,
                // Python's IndexError: a route or a record past the end.
                _ => resume = (check - 1).max(0),
            }
        }
        Some(if entry_status == "Crashed" { (resume - 1).max(0) } else { resume.max(0) })
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn observe_copies_only_valid_versions() {
        let d = TempDir::new("observe");
        let mut g = Guard::new(d.cp());
        assert_eq!(g.last_good_path(), d.0.join(".agent_results.json.last-good"));
        assert_eq!(g.observe().unwrap(), Observed::Missing);

        std::fs::write(d.file(), MID_RUN).unwrap();
        assert_eq!(g.observe().unwrap(), Observed::CopiedLastGood);
        assert_eq!(std::fs::read_to_string(g.last_good_path()).unwrap(), MID_RUN);
        assert_eq!(g.observe().unwrap(), Observed::Unchanged);

        // The evaluator stopped half-way through its rewrite: the copy keeps the previous version.
        std::fs::write(d.file(), &MID_RUN[..MID_RUN.len() / 2]).unwrap();
        assert!(matches!(g.observe().unwrap(), Observed::NotValid { .. }));
        std::fs::write(d.file(), "").unwrap();
        assert!(matches!(g.observe().unwrap(), Observed::NotValid { reason } if reason.contains("empty")));
        std::fs::write(d.file(), "[1, 2]").unwrap();
        assert!(matches!(g.observe().unwrap(), Observed::NotValid { .. }));
        assert_eq!(std::fs::read_to_string(g.last_good_path()).unwrap(), MID_RUN);

        std::fs::write(d.file(), CRASH_RECORDED).unwrap();
        assert_eq!(g.observe().unwrap(), Observed::CopiedLastGood);
        assert_eq!(std::fs::read_to_string(g.last_good_path()).unwrap(), CRASH_RECORDED);
        // No temporary file left behind.
        assert_eq!(d.names(), [".agent_results.json.last-good", "agent_results.json"]);

        // A new guard (a restarted supervisor) recognises its own copy.
        let mut again = Guard::new(d.cp());
        assert_eq!(again.observe().unwrap(), Observed::Unchanged);
    }

    #[test]
    fn restores_last_good_over_truncated_checkpoint_and_keeps_it_aside() {
        let d = TempDir::new("restore");
        let mut g = Guard::new(d.cp());
        std::fs::write(d.file(), MID_RUN).unwrap();
        g.observe().unwrap();
        let truncated = &MID_RUN[..1000];
        std::fs::write(d.file(), truncated).unwrap();

        let repairs = g.prepare_resume().unwrap();
        assert_eq!(repairs.len(), 1, "{repairs:?}");
        let Repair::RestoredLastGood { moved_aside } = &repairs[0] else { panic!("{repairs:?}") };
        let aside_name = moved_aside.file_name().unwrap().to_str().unwrap();
        assert!(aside_name.starts_with("agent_results.json.corrupt-"), "{aside_name}");
        assert_eq!(std::fs::read_to_string(moved_aside).unwrap(), truncated);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), MID_RUN);
        assert!(repairs[0].to_string().contains("moved it aside"));
        assert_eq!(d.names().len(), 3, "{:?}", d.names());

        // Nothing more to do the second time.
        assert_eq!(g.prepare_resume().unwrap(), []);

        // A second corruption in the same second does not overwrite the first one kept aside.
        std::fs::write(d.file(), "{").unwrap();
        let repairs = g.prepare_resume().unwrap();
        let Repair::RestoredLastGood { moved_aside: second } = &repairs[0] else { panic!("{repairs:?}") };
        assert_ne!(second, moved_aside);
        assert_eq!(std::fs::read_to_string(second).unwrap(), "{");
        assert_eq!(std::fs::read_to_string(moved_aside).unwrap(), truncated);
    }

    #[test]
    fn missing_checkpoint_is_restored_from_last_good() {
        let d = TempDir::new("missing");
        let mut g = Guard::new(d.cp());
        std::fs::write(d.file(), MID_RUN).unwrap();
        g.observe().unwrap();
        std::fs::remove_file(d.file()).unwrap();
        assert_eq!(g.prepare_resume().unwrap(), [Repair::RestoredMissing]);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), MID_RUN);
    }

    #[test]
    fn without_a_good_copy_a_corrupt_checkpoint_is_left_alone() {
        let d = TempDir::new("nocopy");
        let g = Guard::new(d.cp());
        assert_eq!(g.prepare_resume().unwrap(), []);
        assert_eq!(d.names(), Vec::<String>::new());

        std::fs::write(d.file(), "{\"_checkpoint\": {\"progr").unwrap();
        assert_eq!(g.prepare_resume().unwrap(), []);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), "{\"_checkpoint\": {\"progr");
        // A last good copy that does not parse either is no copy.
        std::fs::write(g.last_good_path(), "").unwrap();
        assert_eq!(g.prepare_resume().unwrap(), []);
        assert_eq!(d.names(), [".agent_results.json.last-good", "agent_results.json"]);
    }

    #[test]
    fn crash_recorded_needs_no_repair() {
        // (a) `Crashed`, `progress [3, 5]`, record 2 `Failed - Simulation crashed`: the evaluator resumes at
        // 3 - 1 = 2 and runs the crashed route again, as upstream intends.
        let v: Value = serde_json::from_str(CRASH_RECORDED).unwrap();
        assert_eq!(plan_progress(&v), None);
        assert_eq!(evaluator_resume_index(3, 3, true), 2);
        let d = TempDir::new("crash-recorded");
        std::fs::write(d.file(), CRASH_RECORDED).unwrap();
        assert_eq!(Guard::new(d.cp()).prepare_resume().unwrap(), []);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), CRASH_RECORDED);

        // The resumed run's own first write (`Started`, `progress [2, 5]`, the crash record still there)
        // resumes at 2 as well.
        let first_write = with_progress(CRASH_RECORDED, "3", "2").replace("\"Crashed\"", "\"Started\"");
        assert_eq!(plan_progress(&serde_json::from_str(&first_write).unwrap()), None);
    }

    #[test]
    fn crash_with_nothing_recorded_is_repaired() {
        // (b) Two records, route 2 was running when the simulator died: nothing recorded for it, but
        // `progress [3, 5]`. Upstream resumes at max(2 - 1, 0) = 1 and scores route 1 again.
        let ahead = with_progress(MID_RUN, "2", "3");
        assert_eq!(evaluator_resume_index(3, 2, false), 1);
        let d = TempDir::new("crash-unrecorded");
        std::fs::write(d.file(), &ahead).unwrap();
        let repairs = Guard::new(d.cp()).prepare_resume().unwrap();
        assert_eq!(repairs, [Repair::ProgressRepaired { from: 3, to: 2, cleared_crashed: false, resumes_at: 2 }]);
        assert!(repairs[0].to_string().contains("resumes at route index 2"), "{}", repairs[0]);
        // Only that one character changed: the rest is byte-identical.
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), MID_RUN);
        assert_eq!(d.names(), ["agent_results.json"]);

        // The same with `entry_status` left at `Crashed`: upstream would step back to 0. No progress value
        // alone helps, so the status goes back to `Started`, as the evaluator writes it during a run.
        let crashed = ahead.replace("\"entry_status\": \"Started\"", "\"entry_status\": \"Crashed\"");
        assert_eq!(evaluator_resume_index(3, 2, true), 0);
        std::fs::write(d.file(), &crashed).unwrap();
        let repairs = Guard::new(d.cp()).prepare_resume().unwrap();
        assert_eq!(repairs, [Repair::ProgressRepaired { from: 3, to: 2, cleared_crashed: true, resumes_at: 2 }]);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), MID_RUN);

        // Crashed at route 0 with nothing recorded: resuming at 0 is already right.
        let v = serde_json::json!({"_checkpoint": {"global_record": {}, "progress": [1, 5], "records": []},
            "entry_status": "Crashed"});
        assert_eq!(plan_progress(&v), None);
    }

    #[test]
    fn progress_equal_to_records_needs_no_repair() {
        // (c)
        assert_eq!(plan_progress(&serde_json::from_str(MID_RUN).unwrap()), None);
        assert_eq!(plan_progress(&serde_json::from_str(FINISHED).unwrap()), None);
        let d = TempDir::new("agree");
        std::fs::write(d.file(), MID_RUN).unwrap();
        assert_eq!(Guard::new(d.cp()).prepare_resume().unwrap(), []);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), MID_RUN);
    }

    #[test]
    fn progress_is_never_raised_and_total_never_touched() {
        // Progress behind the records: the evaluator runs route 1 again, but raising progress would widen
        // its route-id check over records we cannot match against the route list.
        let behind = with_progress(MID_RUN, "2", "1");
        assert_eq!(plan_progress(&serde_json::from_str(&behind).unwrap()), None);
        // Far ahead: lowered to the records, total kept.
        let far = with_progress(MID_RUN, "2", "4");
        let plan = plan_progress(&serde_json::from_str(&far).unwrap()).unwrap();
        assert_eq!((plan.from, plan.to, plan.resumes_at), (4, 2, 2));
        assert!(
            String::from_utf8(apply_plan(far.as_bytes(), &plan).unwrap())
                .unwrap()
                .contains("\"progress\": [\n            2,\n            5\n        ]")
        );
    }

    #[test]
    fn unaligned_records_lower_progress_to_the_aligned_ones() {
        // A resumed run dropped record 0 (its placeholder) before writing: records hold routes 1 and 2 at
        // positions 0 and 1. Upstream would compare position 0 with route 0 and start over.
        let v = serde_json::json!({"_checkpoint": {"global_record": {}, "progress": [1, 5], "records": [
            {"index": 1, "route_id": "RouteScenario_1_rep0", "status": "Perfect"},
            {"index": 2, "route_id": "RouteScenario_2_rep0", "status": "Perfect"}]},
            "entry_status": "Started"});
        let plan = plan_progress(&v).unwrap();
        assert_eq!((plan.to, plan.resumes_at), (0, 0));
    }

    #[test]
    fn leaderboard_1_files_are_left_alone() {
        let v = serde_json::json!({"_checkpoint": {"global_record": {}, "progress": [3, 5], "records": [
            {"index": 0, "route_id": "RouteScenario_0", "status": "Completed"}]}, "entry_status": "Started"});
        assert_eq!(plan_progress(&v), None);
    }

    #[test]
    fn a_file_in_another_layout_comes_back_in_the_evaluators() {
        let d = TempDir::new("fallback");
        let compact = serde_json::to_string(&serde_json::json!({
            "_checkpoint": {"global_record": {}, "progress": [3, 5], "records": [
                {"index": 0, "route_id": "RouteScenario_0_rep0", "status": "Failed - Agent got blocked \u{e9}"}]},
            "entry_status": "Crashed", "eligible": false}))
        .unwrap();
        std::fs::write(d.file(), &compact).unwrap();
        let repairs = Guard::new(d.cp()).prepare_resume().unwrap();
        assert_eq!(repairs, [Repair::ProgressRepaired { from: 3, to: 1, cleared_crashed: true, resumes_at: 1 }]);
        let text = std::fs::read_to_string(d.file()).unwrap();
        assert!(text.contains("\"progress\": [\n            1,\n            5\n        ]"), "{text}");
        assert!(text.contains("blocked \\u00e9\""), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["entry_status"], "Started");
        assert_eq!(v["eligible"], false);
    }

    #[test]
    fn symlinked_checkpoint_is_not_followed() {
        let d = TempDir::new("symlink");
        let target = d.0.join("elsewhere.json");
        std::fs::write(&target, MID_RUN).unwrap();
        std::os::unix::fs::symlink(&target, d.file()).unwrap();
        let mut g = Guard::new(d.cp());
        assert!(matches!(g.observe().unwrap(), Observed::NotValid { reason } if reason.contains("symbolic link")));
        assert!(!g.last_good_path().exists());
        assert_eq!(summarize(&d.cp()).unwrap(), None);
        assert!(!exists_with_data(&d.cp()));
        // Without a good copy the link stays; with one, the link (not its target) is moved aside.
        assert_eq!(g.prepare_resume().unwrap(), []);
        std::fs::write(g.last_good_path(), CRASH_RECORDED).unwrap();
        let repairs = g.prepare_resume().unwrap();
        let Repair::RestoredLastGood { moved_aside } = &repairs[0] else { panic!("{repairs:?}") };
        assert!(moved_aside.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), MID_RUN);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), CRASH_RECORDED);

        // The last good copy's path as a link is replaced, never written through.
        std::fs::remove_file(g.last_good_path()).unwrap();
        std::os::unix::fs::symlink(&target, g.last_good_path()).unwrap();
        let mut g = Guard::new(d.cp());
        assert_eq!(g.observe().unwrap(), Observed::CopiedLastGood);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), MID_RUN);
        assert!(!g.last_good_path().symlink_metadata().unwrap().file_type().is_symlink());
    }

    #[test]
    fn fifo_is_not_read() {
        let d = TempDir::new("fifo");
        let c = std::ffi::CString::new(d.file().to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let mut g = Guard::new(d.cp());
        assert!(matches!(g.observe().unwrap(), Observed::NotValid { reason } if reason.contains("FIFO")));
        assert!(!exists_with_data(&d.cp()));
    }

    #[test]
    fn summaries() {
        let d = TempDir::new("summary");
        let p = d.file();
        assert_eq!(summarize(&d.cp()).unwrap(), None);
        assert!(!exists_with_data(&d.cp()));

        std::fs::write(&p, FINISHED).unwrap();
        let s = summarize(&d.cp()).unwrap().unwrap();
        assert_eq!(
            s,
            Summary {
                entry_status: Some("Finished".into()),
                records: 2,
                progress: Some((2, 2)),
                global_record_empty: false
            }
        );
        assert!(exists_with_data(&d.cp()));

        let rejected = serde_json::json!({"_checkpoint": {"global_record": {}, "progress": [1, 5], "records": [
            {"index": 0, "route_id": "RouteScenario_0_rep0", "status": "Failed - Agent's sensors were invalid"}]},
            "entry_status": "Rejected", "eligible": false, "sensors": [], "values": [], "labels": []});
        std::fs::write(&p, serde_json::to_vec_pretty(&rejected).unwrap()).unwrap();
        let s = summarize(&d.cp()).unwrap().unwrap();
        assert_eq!(s.entry_status.as_deref(), Some("Rejected"));
        assert_eq!((s.records, s.progress, s.global_record_empty), (1, Some((1, 5)), true));

        std::fs::write(&p, MID_RUN).unwrap();
        let s = summarize(&d.cp()).unwrap().unwrap();
        assert_eq!(s.entry_status.as_deref(), Some("Started"));
        assert!(s.global_record_empty);

        // A fresh run's very first write has progress but no records yet: something to resume from.
        std::fs::write(&p, r#"{"_checkpoint": {"global_record": {}, "progress": [0, 5], "records": []}}"#).unwrap();
        assert!(exists_with_data(&d.cp()));
        std::fs::write(&p, r#"{"_checkpoint": {"global_record": {}, "progress": [], "records": []}}"#).unwrap();
        assert!(!exists_with_data(&d.cp()));
        std::fs::write(&p, "").unwrap();
        assert_eq!(summarize(&d.cp()).unwrap(), None);
        assert!(!exists_with_data(&d.cp()));
    }

    #[test]
    fn route_retries_move_past_a_crash_record_kept_by_the_resumed_run() {
        // Issue 17, item 1. The crash of route 2 was recorded (`Crashed`, `progress [3, 5]`); the resumed run wrote
        // `Started`, `progress [2, 5]`, the crash record still last, then crashed again while loading route 2.
        let routes = worker2_routes();
        let state = with_status(&with_progress(CRASH_RECORDED, "3", "2"), "Crashed", "Started");
        let before = parse(&state);
        assert_eq!(evaluator_resume(&before, &routes), Some(2), "the evaluator would run route 2 again");
        // Not the evaluator's record of this attempt's crash: counted from the log's route, not as recorded.
        assert_eq!(crashed_route(&before, Some("RouteScenario_7_rep0")), Some(("RouteScenario_7_rep0".into(), false)));
        let d = TempDir::new("skip-started");
        std::fs::write(d.file(), &state).unwrap();
        // A route with an earlier record that is not the last: nothing to move past safely.
        assert_eq!(skip_route(&d.cp(), "RouteScenario_6_rep0").unwrap(), None);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), state);

        let skip = skip_route(&d.cp(), "RouteScenario_7_rep0").unwrap();
        let after = parse(&std::fs::read_to_string(d.file()).unwrap());
        assert_eq!(after["entry_status"], "Started");
        assert_eq!(after["_checkpoint"]["progress"], serde_json::json!([3, 5]));
        assert_eq!(evaluator_resume(&after, &routes), Some(3), "the evaluator resumes after route 2");
        // Everything else, the crash record included, is what the evaluator wrote.
        let mut expected = before.clone();
        expected["_checkpoint"]["progress"][0] = Value::from(3);
        assert_eq!(after, expected);
        let kept = d.0.join("agent_results.json.before-skip-RouteScenario_7_rep0");
        assert_eq!(std::fs::read_to_string(kept).unwrap(), state);
        assert!(
            matches!(&skip, Some(RouteSkip::KeptRecord { index: 2, cleared_crashed: false, status, .. })
                if status == "Failed - Simulation crashed"),
            "{skip:?}"
        );
        let line = skip.unwrap().to_string();
        assert!(line.contains("progress[0] set to 3") && !line.contains("entry_status Crashed"), "{line}");
        // The next resume leaves it alone.
        let skipped = BTreeSet::from(["RouteScenario_7_rep0".to_string()]);
        assert_eq!(plan_progress_skipping(&after, &skipped), None);
    }

    #[test]
    fn a_crash_record_is_known_by_its_position_not_its_status() {
        // Issue 17, item 2. Route 4 (RouteScenario_9) got blocked, then the simulator crashed: the evaluator's crash
        // record says "Failed - Agent got blocked" (the event's message overwrote "Simulation crashed"), under
        // `Crashed`, `progress [5, 5]`. The evaluator repeats the route, as upstream intends.
        let routes = worker2_routes();
        let crashed = with_status(ALL_ROUTES, "Started", "Crashed");
        let v = parse(&crashed);
        assert_eq!(evaluator_resume(&v, &routes), Some(4));
        assert_eq!(plan_progress(&v), None, "the crash is recorded: nothing to repair");
        let d = TempDir::new("crash-by-position");
        std::fs::write(d.file(), &crashed).unwrap();
        assert_eq!(Guard::new(d.cp()).prepare_resume().unwrap(), []);
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), crashed);
        assert_eq!(crashed_route(&v, None), Some(("RouteScenario_9_rep0".into(), true)));

        // Moved past by `--route-retries`: the record stays, the evaluator goes on after it (here: finishes).
        let skip = skip_route(&d.cp(), "RouteScenario_9_rep0").unwrap();
        assert!(
            matches!(&skip, Some(RouteSkip::KeptRecord { index: 4, cleared_crashed: true, status, .. })
                if status == "Failed - Agent got blocked"),
            "{skip:?}"
        );
        let after = parse(&std::fs::read_to_string(d.file()).unwrap());
        assert_eq!(after, parse(ALL_ROUTES));
        assert_eq!(evaluator_resume(&after, &routes), Some(5));

        // The same record under the resumed run's first write (`Started`, `progress [4, 5]`), which then crashed
        // while loading: the evaluator runs route 4 again; moving past it keeps the record too.
        let first_write = with_progress(ALL_ROUTES, "5", "4");
        assert_eq!(plan_progress(&parse(&first_write)), None);
        std::fs::write(d.file(), &first_write).unwrap();
        assert!(matches!(
            skip_route(&d.cp(), "RouteScenario_9_rep0").unwrap(),
            Some(RouteSkip::KeptRecord { index: 4, cleared_crashed: false, .. })
        ));
        assert_eq!(parse(&std::fs::read_to_string(d.file()).unwrap()), parse(ALL_ROUTES));

        // A crash record of a route already moved past (a last good copy from before the skip put back): only
        // the status changes, and the log line says so instead of "lowered from 5 to 5".
        std::fs::write(d.file(), &crashed).unwrap();
        let skipped = BTreeSet::from(["RouteScenario_9_rep0".to_string()]);
        let repairs = Guard::new(d.cp()).prepare_resume_skipping(&skipped).unwrap();
        assert_eq!(repairs, [Repair::ProgressRepaired { from: 5, to: 5, cleared_crashed: true, resumes_at: 5 }]);
        let line = repairs[0].to_string();
        assert!(!line.contains("lowered"), "{line}");
        assert!(line.contains("entry_status Crashed set to Started (progress[0] stays 5)"), "{line}");
        assert_eq!(std::fs::read_to_string(d.file()).unwrap(), ALL_ROUTES);
    }

    #[test]
    fn records_beyond_the_aligned_ones_are_never_checked() {
        // Issue 17, item 4. Records 0 and 2 at positions 0 and 1, `Crashed`, `progress [2, 5]`: the evaluator
        // would resume at 1 (2, one back), the right route, but its route-id check reads position 1 (route 7's
        // record where route 6's belongs) and gives up, emptying the file.
        let routes = worker2_routes();
        let v = parse(GAP_AFTER_RESUME);
        assert_eq!(evaluator_resume_index(2, 2, true), 1);
        assert_eq!(evaluator_resume(&v, &routes), None);
        let plan = plan_progress(&v);
        assert_eq!(plan, Some(ProgressPlan { from: 2, to: 1, cleared_crashed: true, resumes_at: 1 }));
        let d = TempDir::new("gap");
        std::fs::write(d.file(), GAP_AFTER_RESUME).unwrap();
        Guard::new(d.cp()).prepare_resume().unwrap();
        let text = std::fs::read_to_string(d.file()).unwrap();
        assert_eq!(text, with_status(&with_progress(GAP_AFTER_RESUME, "2", "1"), "Crashed", "Started"));
        assert_eq!(evaluator_resume(&parse(&text), &routes), Some(1));

        // The same records under `Started` with `progress [3, 5]`: the fallback (max(2 - 1, 0) = 1) lands right
        // too, after the check has read position 1.
        let started = with_status(&with_progress(GAP_AFTER_RESUME, "2", "3"), "Crashed", "Started");
        assert_eq!(evaluator_resume_index(3, 2, false), 1);
        assert_eq!(evaluator_resume(&parse(&started), &routes), None);
        let plan = plan_progress(&parse(&started)).unwrap();
        assert_eq!((plan.to, plan.cleared_crashed, plan.resumes_at), (1, false, 1));
        let lowered = String::from_utf8(apply_plan(started.as_bytes(), &plan).unwrap()).unwrap();
        assert_eq!(evaluator_resume(&parse(&lowered), &routes), Some(1));
    }

    /// What the 2.0 evaluator itself would write for `input` with only the given fields changed: Python's `json.load`
    /// (key order kept, `object_pairs_hook=OrderedDict`), the change, then `json.dump(indent=4)` as `save_dict` does.
    /// `add`: the record `StatisticsManager` writes for a route whose simulation crashed before it scored, at
    /// `(index, route_id)`: `RouteRecord()` of `statistics_manager.py` (branch `leaderboard-2.0`), whose `to_json` is
    /// `vars(self)`, so its keys come in `__init__`'s order. `exotic`: the first record gets a float Python spells
    /// `1e-06` and a message with non-ASCII text, as the evaluator could write them.
    fn python_dump(
        input: &str,
        progress0: Option<i64>,
        entry_status: Option<&str>,
        add: Option<(usize, &str)>,
        exotic: bool,
    ) -> String {
        const SCRIPT: &str = r#"
import json, sys
from collections import OrderedDict as OD
progress0, entry_status, add, exotic = json.loads(sys.argv[1])
doc = json.load(sys.stdin, object_pairs_hook=OD)
cp = doc['_checkpoint']
if exotic:
    r = cp['records'][0]
    r['scores']['score_penalty'] = 0.000001
    r['infractions']['collisions_vehicle'].append('Agent collided against object with type=caf\u00e9 \U0001F600 and id=1')
if add is not None:
    infractions = OD((k, []) for k in ['collisions_layout', 'collisions_pedestrian', 'collisions_vehicle', 'red_light',
        'stop_infraction', 'outside_route_lanes', 'min_speed_infractions', 'yield_emergency_vehicle_infractions',
        'scenario_timeouts', 'route_dev', 'vehicle_blocked', 'route_timeout'])
    cp['records'].append(OD([('index', add[0]), ('route_id', add[1]), ('status', 'Failed - Simulation crashed'),
        ('num_infractions', 0), ('infractions', infractions),
        ('scores', OD([('score_route', 0.0), ('score_penalty', 1.0), ('score_composed', 0.0)])),
        ('meta', OD([('route_length', 0), ('duration_game', 0.0), ('duration_system', 0.0)]))]))
if progress0 is not None:
    cp['progress'][0] = progress0
if entry_status is not None:
    doc['entry_status'] = entry_status
sys.stdout.write(json.dumps(doc, indent=4))
"#;
        use std::io::Write as _;
        let args = serde_json::json!([progress0, entry_status, add, exotic]).to_string();
        let mut child = std::process::Command::new("python3")
            .args(["-c", SCRIPT, &args])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the golden checkpoint test");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "python3 failed on the golden checkpoint test");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Issue 18, item 1. Every rewrite of the checkpoint (progress repair, `--route-retries` skip keeping or adding a
    /// record) is byte for byte what the evaluator's `json.dump(indent=4)` would write for the changed document: key
    /// order kept, floats and strings spelled as Python does, only the intended fields different.
    #[test]
    fn every_rewrite_is_what_the_evaluator_would_write() {
        const TWO_ROUTES_ONE_DONE: &str = include_str!(
            "../../fixtures/results/lb2.0/partial_one_running_one_absent/inputs/partial_agent_results2.json"
        );
        let d = TempDir::new("golden");
        // Each input as the evaluator writes it (the fixtures' own bytes, or re-dumped by Python after a change).
        let check = |name: &str, input: &str, rewrite: &dyn Fn(&TempDir), expected: String| {
            assert_eq!(
                python_dump(input, None, None, None, false),
                input,
                "{name}: the input is not in the evaluator's layout"
            );
            std::fs::write(d.file(), input).unwrap();
            rewrite(&d);
            let got = std::fs::read_to_string(d.file()).unwrap();
            assert_ne!(got, input, "{name}: nothing was rewritten");
            if got != expected {
                let diff: Vec<_> =
                    got.lines().zip(expected.lines()).enumerate().filter(|(_, (a, b))| a != b).take(5).collect();
                panic!("{name}: not what the evaluator would write; first differing lines (got, expected): {diff:#?}");
            }
        };
        let repair = |d: &TempDir| {
            Guard::new(d.cp()).prepare_resume().unwrap();
        };
        let skip = |route: &'static str| {
            move |d: &TempDir| {
                assert!(skip_route(&d.cp(), route).unwrap().is_some());
            }
        };
        for exotic in [false, true] {
            let mid_run = python_dump(MID_RUN, None, None, None, exotic);
            let all_routes = python_dump(ALL_ROUTES, None, None, None, exotic);
            let crash_recorded = python_dump(CRASH_RECORDED, None, None, None, exotic);
            let gap = python_dump(GAP_AFTER_RESUME, None, None, None, exotic);
            let two = python_dump(TWO_ROUTES_ONE_DONE, None, None, None, exotic);

            // Progress repair: a crash with nothing recorded, under `Started` and under `Crashed`; a gap.
            let ahead = with_progress(&mid_run, "2", "3");
            check("repair", &ahead, &repair, python_dump(&ahead, Some(2), None, None, false));
            let crashed = with_status(&ahead, "Started", "Crashed");
            check("repair crashed", &crashed, &repair, python_dump(&crashed, Some(2), Some("Started"), None, false));
            check("repair gap", &gap, &repair, python_dump(&gap, Some(1), Some("Started"), None, false));

            // Skip keeping the record: the evaluator's crash record, and a resumed run's first write.
            let kept = with_status(&with_progress(&crash_recorded, "3", "2"), "Crashed", "Started");
            let expected = python_dump(&kept, Some(3), Some("Started"), None, false);
            check("skip kept", &kept, &skip("RouteScenario_7_rep0"), expected);
            let crashed = with_status(&all_routes, "Started", "Crashed");
            let expected = python_dump(&crashed, Some(5), Some("Started"), None, false);
            check("skip kept crashed", &crashed, &skip("RouteScenario_9_rep0"), expected);

            // Skip adding the evaluator's crash record.
            let expected = python_dump(&mid_run, Some(3), Some("Started"), Some((2, "RouteScenario_7_rep0")), false);
            check("skip added", &mid_run, &skip("RouteScenario_7_rep0"), expected);
            let expected = python_dump(&two, Some(2), Some("Started"), Some((1, "RouteScenario_3_rep0")), false);
            check("skip added last", &two, &skip("RouteScenario_3_rep0"), expected);
        }
    }
}

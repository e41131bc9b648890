//! The last good copy: [`Guard::observe`] copies every version of the checkpoint that parses, and
//! [`Guard::prepare_resume`] puts it back over a file the evaluator left empty or cut short (moved aside, never
//! deleted), then has [`super::progress`] repair the resume point.

use super::progress::repair_progress;
use super::{CheckpointError, CheckpointFile, ReadOutcome, parse_results, read_file, rename, write_atomic};
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};
use volume::layout::{corrupt_path, last_good_path};

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
    /// to the records present ([`plan_progress`](super::plan_progress)). Returns the repairs done, empty when none.
    pub fn prepare_resume(&self) -> Result<Vec<Repair>, CheckpointError> {
        self.prepare_resume_skipping(&BTreeSet::new())
    }

    /// [`Guard::prepare_resume`], with the routes that `--route-retries` moved past (see
    /// [`plan_progress_skipping`](super::plan_progress_skipping)).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::test_support::*;
    use crate::checkpoint::{exists_with_data, summarize};

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
}

//! Leaderboard result files: the model, the N-way merge, global statistics, and the EvalAI conversion.
//!
//! This is the part of logcopy that must agree with upstream byte for byte: the merged file that participants
//! download and the numbers EvalAI shows. Everything here is pure (bytes in, bytes out) except [`file`], which
//! reads a results file off the shared volume under the hostile-volume rules.

pub mod evalai;
pub mod file;
pub mod merge;
pub mod model;
mod stats;

/// Python's JSON and numbers are the volume's contract (the supervisor writes results files too).
pub use volume::{num, pyjson};

pub use file::{LoadError, Loaded};
pub use merge::{Input, MergeError, MergeFailure, Merged, merge};
pub use model::{Version, detect};

/// Two worker files that look like different Leaderboard versions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the files disagree on the Leaderboard version: {first} looks like {first_version}, {second} like {second_version}; \
     pass --leaderboard-version to choose"
)]
pub struct VersionConflict {
    pub first: String,
    pub first_version: Version,
    pub second: String,
    pub second_version: Version,
}

/// The version the files were written by, where any of them says; `Ok(None)` when none does.
pub fn detect_all<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a pyjson::Value)>,
) -> Result<Option<Version>, VersionConflict> {
    let mut seen: Option<(&str, Version)> = None;
    for (name, value) in files {
        let Some(v) = detect(value) else { continue };
        match seen {
            None => seen = Some((name, v)),
            Some((first, fv)) if fv != v => {
                return Err(VersionConflict {
                    first: first.to_string(),
                    first_version: fv,
                    second: name.to_string(),
                    second_version: v,
                });
            }
            Some(_) => {}
        }
    }
    Ok(seen.map(|(_, v)| v))
}

//! Body of the `markers` fuzz target, shared with the corpus replay test `supervisor/tests/fuzz_corpus.rs`
//! (included there with `#[path]`), so that CI runs exactly what the fuzzer runs.
//!
//! Input: file names of a status folder, one per line (names that are not UTF-8 are skipped, as
//! `StatusSet::read` skips them).
//! Asserts: every name `Marker::parse` accepts is the canonical spelling of the marker (`file_name()` gives
//! the name back and parses to the same marker; `FromStr` agrees with `parse`), and `StatusSet` queries and the
//! attempt rule (`plan_attempt`) on the whole listing never panic and stay consistent with the markers present.

use volume::markers::{Marker, Role, StatusSet, WorkerId};

/// Runs marker parsing and attempt planning on one fuzz input.
pub fn run(data: &[u8]) {
    let names: Vec<&str> = data.split(|b| *b == b'\n').filter_map(|n| std::str::from_utf8(n).ok()).collect();
    for name in &names {
        let parsed = Marker::parse(name);
        assert_eq!(name.parse::<Marker>().ok(), parsed, "FromStr and parse disagree on {name:?}");
        if let Some(m) = parsed {
            let file_name = m.file_name();
            assert_eq!(&file_name, name, "{m:?} parsed from {name:?} but is spelled {file_name:?}");
            assert_eq!(m.to_string(), file_name, "Display and file_name disagree for {m:?}");
            assert_eq!(Marker::parse(&file_name), Some(m), "{file_name:?} does not parse back to {m:?}");
        }
    }
    let set = StatusSet::from_names(&names);
    let _ = set.any_cancel();
    let _ = set.logcopy_done();
    if let Some(cancel) = set.cancel_marker_name() {
        assert!(Marker::parse(&cancel).is_some_and(|m| set.contains(&m)), "{cancel:?} is not a marker present");
    }
    // Plan for every worker named in the listing, plus the edges of the id range.
    let mut workers: Vec<WorkerId> = set.iter().filter_map(Marker::worker).collect();
    workers.extend([WorkerId(0), WorkerId(1), WorkerId(u32::MAX)]);
    workers.sort();
    workers.dedup();
    for worker in workers {
        let _ = set.cancelled(worker);
        for role in Role::ALL {
            let _ = set.is_done(role, worker);
            let _ = set.is_failed(role, worker);
            let own_crashes = set.crashes(role, worker);
            let starts = set.starts(role, worker);
            let plan = set.plan_attempt(role, worker);
            if let Some(untraced) = plan.untraced_crash {
                assert!(starts.contains(&untraced), "untraced crash {untraced:?} without its start marker");
                assert!(!own_crashes.contains(&untraced), "untraced crash {untraced:?} already has a crash marker");
            }
            assert_eq!(plan.spent as usize, own_crashes.len() + usize::from(plan.untraced_crash.is_some()));
            for peer in Role::ALL {
                for crash in set.crashes(peer, worker).into_iter().chain(plan.untraced_crash) {
                    assert!(plan.attempt >= crash, "{role} {worker}: attempt {plan:?} does not pass crash {crash:?}");
                }
            }
        }
    }
}

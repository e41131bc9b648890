//! Body of the `results` fuzz target, shared with the corpus replay test `logcopy/tests/fuzz_corpus.rs`
//! (included there with `#[path]`), so that CI runs exactly what the fuzzer runs.
//!
//! Input: up to four worker result files, separated by NUL bytes (a byte no JSON text contains).
//! Path: `Loaded::from_bytes` -> version detection -> `merge` for Leaderboard 1.0 and 2.0 -> EvalAI conversion
//! (`results.json`, `stdout.txt`, the stored metrics), as `logcopy merge`, `logcopy evalai` and the daemon do.
//! Asserts: no panic, and the invariants of `logcopy/tests/merge_never_panics.rs`: a merge error has a message,
//! and a merged file re-parses and re-serialises to the same bytes.

use logcopy::results::{self, Input, Loaded, Version, evalai, merge, pyjson};
use std::path::Path;

/// The byte between two worker files in one fuzz input.
pub const SEPARATOR: u8 = 0;

/// At most this many worker files per input (the fixtures hold up to four workers).
pub const MAX_FILES: usize = 4;

/// Runs the parse, merge and conversion path on one fuzz input.
pub fn run(data: &[u8]) {
    let mut inputs = Vec::new();
    for (i, bytes) in data.splitn(MAX_FILES, |b| *b == SEPARATOR).enumerate() {
        let name = format!("agent{}/agent_results.json", i + 1);
        let loaded = Loaded::from_bytes(Path::new(&name), bytes);
        // `logcopy evalai` converts whatever single file it is given, merged or not.
        let object = match &loaded {
            Ok(Loaded::Data(v)) => v.as_object(),
            _ => None,
        };
        for version in [Version::V1, Version::V2] {
            convert(version, object);
        }
        if let Ok(Loaded::Data(data)) = loaded {
            inputs.push(Input { name, data });
        }
    }
    // The version `logcopy merge` would pick; both are merged below whatever it says.
    let _ = results::detect_all(inputs.iter().map(|i| (i.name.as_str(), &i.data)));
    for version in [Version::V1, Version::V2] {
        let merged = match merge(version, &inputs) {
            Ok(m) => m,
            Err(f) => {
                assert!(!f.error.to_string().is_empty(), "a merge error without a message");
                // 1.0 writes its partial file before failing, as upstream does.
                if let Some(partial) = f.partial {
                    let _ = pyjson::to_pretty(&partial, version.sort_keys());
                }
                continue;
            }
        };
        let bytes = merged.to_bytes();
        let reread = pyjson::parse(bytes.as_bytes()).expect("a merged file always parses");
        assert_eq!(pyjson::to_pretty(&reread, version.sort_keys()), bytes, "merged output is not stable");
        convert(version, reread.as_object());
    }
}

/// The EvalAI outputs of one file and the metrics the record sink stores from them.
fn convert(version: Version, object: Option<&pyjson::Object>) {
    if let Ok(json) = evalai::results_json(version, object) {
        let _ = logcopy::publish::record::metrics(&json);
    }
    let _ = evalai::stdout_txt(version, object);
}

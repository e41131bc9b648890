//! Replays the `results` fuzz corpus (`fuzz/corpus/results/`) through the fuzz target's own body on stable Rust,
//! without libFuzzer: every input the fuzzer kept (seeds from the fixtures, plus what it found) must still go
//! through parse, merge and EvalAI conversion without a panic. See `fuzz/README.md`.

#[path = "../../fuzz/fuzz_targets/common/results.rs"]
mod target;

use std::path::Path;

/// Fewer files than this means the corpus was lost, not that it was minimised.
const MIN_FILES: usize = 40;

#[test]
fn results_corpus_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/results");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("{}", path.display());
        target::run(&bytes);
        count += 1;
    }
    assert!(count >= MIN_FILES, "{}: {count} inputs, expected at least {MIN_FILES}", dir.display());
}

#![no_main]
//! Worker result files -> parse -> merge (1.0 and 2.0) -> EvalAI conversion. See `common/results.rs`.

#[path = "common/results.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::run(data));

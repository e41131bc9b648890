#![no_main]
//! Status-folder file names -> `Marker::parse` round trip and `StatusSet` attempt planning. See `common/markers.rs`.

#[path = "common/markers.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::run(data));

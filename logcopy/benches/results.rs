//! Merge + EvalAI conversion time, on generated 2.0 worker files.
//!
//! `cargo bench -p logcopy --bench results` prints, for each size, two figures:
//! - `merge+convert`: merge of already-parsed worker files plus results.json, stdout.txt and the merged bytes;
//! - `parse+merge+convert`: the same starting from the files' bytes, as one daemon cycle does.
//!
//! Sizes: 4 workers x 5 routes each, and 64 workers sharing 1,250 / 2,500 / 5,000 / 10,000 routes (to show the
//! growth is linear).

mod common;

use common::{obj, record};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use logcopy::results::pyjson::{self, Value};
use logcopy::results::{Input, Loaded, Version, evalai, merge};
use std::hint::black_box;
use std::path::Path;

/// The files of `workers` workers that have run all of `routes` routes, split into contiguous ranges.
fn worker_files(workers: usize, routes: usize) -> Vec<Vec<u8>> {
    (0..workers)
        .map(|w| {
            let (lo, hi) = (w * routes / workers, (w + 1) * routes / workers);
            let records: Vec<Value> = (lo..hi).enumerate().map(|(i, r)| record(i, r, r as u64)).collect();
            let n = records.len() as i64;
            let file = obj(vec![
                (
                    "_checkpoint",
                    obj(vec![
                        ("global_record", obj(vec![])),
                        ("progress", Value::array(vec![Value::Int(n), Value::Int(n)])),
                        ("records", Value::array(records)),
                    ]),
                ),
                ("entry_status", Value::str("Started")),
                ("eligible", Value::Bool(false)),
                ("sensors", Value::array(vec![Value::str("carla_camera"), Value::str("carla_gnss")])),
                ("values", Value::empty_array()),
                ("labels", Value::empty_array()),
            ]);
            pyjson::to_pretty(&file, false).into_bytes()
        })
        .collect()
}

fn parse_all(files: &[Vec<u8>]) -> Vec<Input> {
    files
        .iter()
        .enumerate()
        .filter_map(|(i, b)| match Loaded::from_bytes(Path::new("w"), b) {
            Ok(Loaded::Data(data)) => Some(Input { name: format!("agent{}", i + 1), data }),
            _ => None,
        })
        .collect()
}

/// One cycle's outputs: the merged file's bytes, results.json and stdout.txt.
fn merge_and_convert(inputs: &[Input]) -> (String, String, String) {
    let merged = merge(Version::V2, inputs).expect("generated inputs merge");
    assert!(merged.complete);
    let obj = merged.value.as_object();
    let results = evalai::results_json(Version::V2, obj).unwrap();
    let stdout = evalai::stdout_txt(Version::V2, obj).unwrap();
    (merged.to_bytes(), results, stdout)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("results");
    group.sample_size(20);
    for (workers, routes) in [(4, 20), (64, 1_250), (64, 2_500), (64, 5_000), (64, 10_000)] {
        let files = worker_files(workers, routes);
        let inputs = parse_all(&files);
        let label = format!("{workers}w_{routes}r");
        group.throughput(Throughput::Elements(routes as u64));
        group.bench_with_input(BenchmarkId::new("merge+convert", &label), &inputs, |b, inputs| {
            b.iter(|| black_box(merge_and_convert(black_box(inputs))))
        });
        group.bench_with_input(BenchmarkId::new("parse+merge+convert", &label), &files, |b, files| {
            b.iter(|| black_box(merge_and_convert(&parse_all(black_box(files)))))
        });
        if routes == 10_000 {
            // The stages of one cycle, to see where the time goes.
            group.bench_with_input(BenchmarkId::new("stage:parse", &label), &files, |b, files| {
                b.iter(|| black_box(parse_all(black_box(files))))
            });
            group.bench_with_input(BenchmarkId::new("stage:merge", &label), &inputs, |b, inputs| {
                b.iter(|| black_box(merge(Version::V2, black_box(inputs)).unwrap()))
            });
            let merged = merge(Version::V2, &inputs).unwrap();
            group.bench_with_input(BenchmarkId::new("stage:write-merged", &label), &merged, |b, m| {
                b.iter(|| black_box(m.to_bytes()))
            });
            group.bench_with_input(BenchmarkId::new("stage:stdout", &label), &merged, |b, m| {
                b.iter(|| black_box(evalai::stdout_txt(Version::V2, m.value.as_object()).unwrap()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

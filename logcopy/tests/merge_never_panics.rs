//! Property tests: whatever bytes the workers leave in their files, the merge and the EvalAI conversion
//! return a value or an error, never a panic, and every merged file they produce re-reads to the same bytes.

use logcopy::results::{Input, Loaded, Version, evalai, merge, pyjson};
use proptest::prelude::*;
use std::path::Path;

/// Worker files from the golden cases: realistic starting points for mutations.
fn seeds() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/results");
    let mut out = Vec::new();
    for folder in ["lb1.0", "lb2.0"] {
        for case in std::fs::read_dir(root.join(folder)).unwrap() {
            let inputs = case.unwrap().path().join("inputs");
            if let Ok(files) = std::fs::read_dir(inputs) {
                for f in files {
                    out.push(std::fs::read(f.unwrap().path()).unwrap());
                }
            }
        }
    }
    assert!(out.len() > 20, "seed files missing");
    out
}

/// Runs the whole pipeline on raw file contents, as the CLI and the daemon do.
fn pipeline(files: &[Vec<u8>]) {
    let mut inputs = Vec::new();
    for (i, bytes) in files.iter().enumerate() {
        if let Ok(Loaded::Data(data)) = Loaded::from_bytes(Path::new("w.json"), bytes) {
            inputs.push(Input { name: format!("worker{i}"), data });
        }
    }
    for version in [Version::V1, Version::V2] {
        let merged = match merge(version, &inputs) {
            Ok(m) => m,
            Err(f) => {
                assert!(!f.error.to_string().is_empty());
                continue;
            }
        };
        let bytes = merged.to_bytes();
        let reread = pyjson::parse(bytes.as_bytes()).expect("a merged file always parses");
        assert_eq!(pyjson::to_pretty(&reread, version.sort_keys()), bytes, "merged output is not stable");
        let obj = reread.as_object();
        let _ = evalai::results_json(version, obj);
        let _ = evalai::stdout_txt(version, obj);
    }
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(pos, kind, byte) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let p = pos % bytes.len();
        match kind % 5 {
            0 => bytes[p] = byte,
            1 => bytes.insert(p, byte),
            2 => {
                bytes.remove(p);
            }
            3 => bytes.truncate(p),
            // Swap in a structural character: the likeliest way to change a type without breaking the syntax.
            _ => bytes[p] = b"{}[],:\"0-.eN"[byte as usize % 12],
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(files in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..512), 1..5)) {
        pipeline(&files);
    }

    #[test]
    fn mutated_worker_files_never_panic(
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6),
    ) {
        let seeds = seeds();
        let files: Vec<Vec<u8>> = picks.iter().enumerate()
            .map(|(i, ix)| {
                let seed = ix.get(&seeds).clone();
                // Mutate only the first file, so most runs still merge and reach the statistics.
                if i == 0 { mutate(seed, &edits) } else { seed }
            })
            .collect();
        pipeline(&files);
    }

    #[test]
    fn arbitrary_json_values_in_place_of_fields_never_panic(
        which in any::<prop::sample::Index>(),
        path_pick in any::<prop::sample::Index>(),
        replacement in prop_oneof![
            Just("null"), Just("0"), Just("-1"), Just("1e308"), Just("NaN"), Just("\"\""), Just("\"x\""),
            Just("[]"), Just("{}"), Just("[1, 2, 3]"), Just("true"), Just("99999999999999999999999"),
            Just("{\"a\": []}"), Just("\"Agent went outside\""), Just("[\"a b c d e f g h NaN\"]"),
        ],
    ) {
        let seeds = seeds();
        let seed = which.get(&seeds);
        let Ok(pyjson::Value::Object(top)) = pyjson::parse(seed) else { return Ok(()) };
        let mut top = std::sync::Arc::unwrap_or_clone(top);
        let replacement = pyjson::parse(replacement.as_bytes()).unwrap();
        // Replace one field, at a depth chosen by the index, with the odd value.
        let paths: &[&[&str]] = &[
            &["sensors"], &["_checkpoint"], &["_checkpoint", "progress"], &["_checkpoint", "records"],
            &["_checkpoint", "records", "0", "route_id"], &["_checkpoint", "records", "0", "scores"],
            &["_checkpoint", "records", "0", "meta"], &["_checkpoint", "records", "0", "status"],
            &["_checkpoint", "records", "0", "infractions"],
            &["_checkpoint", "records", "0", "infractions", "outside_route_lanes"],
            &["_checkpoint", "records", "0", "scores", "score_route"],
            &["_checkpoint", "records", "0", "meta", "route_length"],
        ];
        set_path(&mut top, paths[path_pick.index(paths.len())], replacement);
        let bytes = pyjson::to_pretty(&pyjson::Value::object(top), false).into_bytes();
        pipeline(&[bytes, seed.clone()]);
    }
}

fn set_path(obj: &mut pyjson::Object, path: &[&str], value: pyjson::Value) {
    let (first, rest) = path.split_first().unwrap();
    if rest.is_empty() {
        obj.insert(*first, value);
        return;
    }
    match obj.get_mut(first) {
        Some(pyjson::Value::Object(o)) => set_path(std::sync::Arc::make_mut(o), rest, value),
        Some(pyjson::Value::Array(a)) => {
            if let (Some(pyjson::Value::Object(o)), Some(tail)) =
                (std::sync::Arc::make_mut(a).first_mut(), rest.get(1..))
            {
                if tail.is_empty() {
                    return;
                }
                set_path(std::sync::Arc::make_mut(o), tail, value);
            }
        }
        _ => {}
    }
}

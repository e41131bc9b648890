//! Golden cases: every folder under `fixtures/results/lb*/` that holds a `case.json` is run through the real
//! `logcopy merge` and `logcopy evalai` binaries and compared byte for byte with upstream's outputs.
//! A new case is a new folder; no code changes.
//!
//! A case folder with `expected_with_alias/` documents a deliberate deviation (the pre-2023-06-21 2.0 key):
//! there our outputs must equal the files in that folder and the merge must succeed.

use logcopy::results::pyjson::{self, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    testkit::fixture("results")
}

fn logcopy(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logcopy")).args(args).output().expect("run logcopy")
}

fn scratch(name: &str) -> PathBuf {
    testkit::Scratch::new(&format!("golden-{name}")).keep()
}

struct Case {
    dir: PathBuf,
    version: &'static str,
    argv: Vec<String>,
    exit_code: i64,
    stderr_last_line: String,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (folder, version) in [("lb1.0", "1.0"), ("lb2.0", "2.0")] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures().join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("case.json").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            let case = pyjson::parse(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
            let o = case.as_object().unwrap();
            let argv = o.get("merge_argv_order").unwrap().as_array().unwrap();
            out.push(Case {
                version,
                argv: argv.iter().map(|v| v.as_str().unwrap().to_string()).collect(),
                exit_code: match o.get("merge_exit_code") {
                    Some(Value::Int(i)) => *i,
                    other => panic!("{}: bad merge_exit_code {other:?}", dir.display()),
                },
                stderr_last_line: o.get("merge_stderr_last_line").and_then(Value::as_str).unwrap_or("").to_string(),
                dir,
            });
        }
    }
    out
}

fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs one case; returns a list of mismatches (empty when the case passes).
fn run_case(case: &Case, force_version: bool) -> Vec<String> {
    let name = case.dir.file_name().unwrap().to_string_lossy().into_owned();
    let work = scratch(&format!("{}-{name}-{force_version}", case.version));
    let alias = case.dir.join("expected_with_alias");
    let (expected_dir, expected_exit) = if alias.is_dir() { (alias, 0) } else { (case.dir.clone(), case.exit_code) };
    let endpoint = work.join("merged.json");
    let mut problems = Vec::new();

    let mut args: Vec<std::ffi::OsString> = vec!["merge".into(), "--file-paths".into()];
    args.extend(case.argv.iter().map(|f| case.dir.join("inputs").join(f).into_os_string()));
    args.extend(["--endpoint".into(), endpoint.clone().into_os_string()]);
    if force_version {
        args.extend(["--leaderboard-version".into(), case.version.into()]);
    }
    let out = logcopy(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    let stderr = show(&out.stderr);
    if out.status.code() != Some(expected_exit as i32) {
        problems.push(format!("merge exit {:?}, expected {expected_exit}; stderr: {stderr}", out.status.code()));
    }
    if expected_exit != 0 {
        // Our error keeps upstream's own message (after "ValueError: ") and adds the file names.
        let upstream = case.stderr_last_line.split_once(": ").map_or("", |x| x.1);
        if !stderr.contains(upstream) {
            problems.push(format!("merge stderr lacks upstream's message {upstream:?}: {stderr}"));
        }
        if stderr.contains("panicked") {
            problems.push(format!("merge panicked: {stderr}"));
        }
    }
    let merged = read(&endpoint);
    match (read(&expected_dir.join("expected_merged.json")), &merged) {
        (Some(want), Some(got)) if &want != got => {
            problems.push(format!("merged file differs:\n--- expected\n{}\n--- got\n{}", show(&want), show(got)))
        }
        (Some(_), None) => problems.push("merged file not written".into()),
        (None, Some(_)) => problems.push("merged file written where upstream writes none".into()),
        _ => {}
    }

    let out_dir = work.join("evalai");
    let mut args: Vec<std::ffi::OsString> = vec![
        "evalai".into(),
        "--file-path".into(),
        endpoint.into_os_string(),
        "--out-dir".into(),
        out_dir.clone().into_os_string(),
    ];
    if force_version {
        args.extend(["--leaderboard-version".into(), case.version.into()]);
    }
    let out = logcopy(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    if !out.status.success() {
        problems.push(format!("evalai failed: {}", show(&out.stderr)));
    }
    for (ours, theirs) in
        [("results.json", "expected_evalai_results.json"), ("stdout.txt", "expected_evalai_stdout.txt")]
    {
        let want = read(&expected_dir.join(theirs));
        let got = read(&out_dir.join(ours));
        if want != got {
            problems.push(format!(
                "{ours} differs:\n--- expected\n{}\n--- got\n{}",
                show(&want.unwrap_or_default()),
                show(&got.unwrap_or_default())
            ));
        }
    }
    if read(&out_dir.join("metadata.json")) != merged {
        problems.push("metadata.json is not a byte copy of the merged file".into());
    }
    let _ = std::fs::remove_dir_all(&work);
    problems
        .into_iter()
        .map(|p| {
            format!("{}/{name} (version {}): {p}", case.version, if force_version { "forced" } else { "detected" })
        })
        .collect()
}

#[test]
fn every_golden_case_is_byte_identical() {
    let cases = cases();
    assert!(cases.len() >= 21, "expected the 21 upstream cases, found {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        failures.extend(run_case(case, true));
    }
    assert!(failures.is_empty(), "{} mismatches:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// Without `--leaderboard-version`, the version is detected from the files. It is only knowable when at least
/// one input holds data; the all-absent case (`nothing_yet`) falls back to 2.0.
#[test]
fn golden_cases_pass_with_the_detected_version() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let any_input = case.argv.iter().any(|f| case.dir.join("inputs").join(f).is_file());
        if !any_input && case.version != "2.0" {
            continue;
        }
        checked += 1;
        failures.extend(run_case(&case, false));
    }
    assert!(checked >= 20, "only {checked} cases checked");
    assert!(failures.is_empty(), "{} mismatches:\n\n{}", failures.len(), failures.join("\n\n"));
}

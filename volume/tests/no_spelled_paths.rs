//! The lint of the layout: no path of the volume is spelled in the Rust sources of the two binaries outside this
//! crate. Every folder and file name lives in `volume::layout`; a string literal in `logcopy/src` or
//! `supervisor/src` that holds one of them is a second spelling, and this test names its file and line.
//!
//! Checked: the string literals (plain, byte and raw) of the library and binary sources, comments left out.
//! Not checked, on purpose: `#[cfg(test)]` items (the test modules at the end of each file), `tests/`, `benches/`,
//! fixtures, scripts and docs, which describe the volume as data and may spell it.

use std::path::{Path, PathBuf};

/// What no literal of the binaries' sources may hold: the layout's folder and file names (generations 1 and 2), the
/// files beside a checkpoint, and the mount points.
const SPELLED: &[&str] = &[
    "containers-status",
    "agent_results",
    "partial_agent_results",
    "evalai/",
    "logcopy/",
    "last-good",
    "upload-manifest",
    "logcopy.log",
    "leaderboard.log",
    "route-crashes",
    "before-skip",
    ".corrupt-",
    "logcopy-tmp",
    "agent/agent",
    "logs/",
    "/tmp/status",
    "/tmp/agent",
    "CarlaUE4/Saved",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The string literals of Rust source `text` outside `#[cfg(test)]` items, with their line numbers.
fn literals(text: &str) -> Vec<(usize, String)> {
    let b = text.as_bytes();
    let (mut i, mut line) = (0, 1);
    let mut out = Vec::new();
    // Brace depth of the code, and the depth at which a `#[cfg(test)]` item being skipped ends.
    let (mut depth, mut skip_from): (usize, Option<usize>) = (0, None);
    let mut cfg_test_pending = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
        }
        if text[i..].starts_with("//") {
            i += text[i..].find('\n').unwrap_or(text.len() - i);
            continue;
        }
        if text[i..].starts_with("/*") {
            let end = text[i + 2..].find("*/").map_or(text.len(), |e| i + 2 + e + 2);
            line += text[i..end].matches('\n').count();
            i = end;
            continue;
        }
        if text[i..].starts_with("#[cfg(test)]") {
            cfg_test_pending = true;
            i += "#[cfg(test)]".len();
            continue;
        }
        // Raw strings: r"..." and r#"..."# (also br"...").
        let raw = if text[i..].starts_with("br") {
            2
        } else if text[i..].starts_with('r') {
            1
        } else {
            0
        };
        let is_ident_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if raw > 0 && !is_ident_before {
            let hashes = text[i + raw..].bytes().take_while(|&h| h == b'#').count();
            if b.get(i + raw + hashes) == Some(&b'"') {
                let start = i + raw + hashes + 1;
                let close = format!("\"{}", "#".repeat(hashes));
                let end = text[start..].find(&close).map_or(text.len(), |e| start + e);
                if skip_from.is_none() {
                    out.push((line, text[start..end].to_string()));
                }
                line += text[start..end].matches('\n').count();
                i = end + close.len();
                continue;
            }
        }
        match c {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                if skip_from.is_none() {
                    out.push((line, text[start..j.min(b.len())].to_string()));
                }
                line += text[start..j.min(b.len())].matches('\n').count();
                i = j + 1;
                continue;
            }
            // A char literal ('x', '\n', '"'), not a lifetime ('a).
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                i += 3 + text.get(i + 3..).and_then(|t| t.find('\'')).unwrap_or(0) + 1;
                continue;
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') => {
                i += 3;
                continue;
            }
            b'{' => {
                if cfg_test_pending && skip_from.is_none() {
                    skip_from = Some(depth);
                }
                cfg_test_pending = false;
                depth += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                if skip_from == Some(depth) {
                    skip_from = None;
                }
            }
            b';' => cfg_test_pending = false,
            _ => {}
        }
        i += 1;
    }
    out
}

/// Whether `lit` holds `name`; a folder (`evalai/`) only with something after it, a path beneath it: `"logcopy/"`
/// alone is the start of the HTTP user agent, `logcopy/<version>`.
fn spells(lit: &str, name: &str) -> bool {
    lit.match_indices(name).any(|(at, _)| !name.ends_with('/') || at + name.len() < lit.len())
}

/// The files of the `#[cfg(test)] mod name;` declarations of `file`: `name.rs` or `name/mod.rs` in its module's
/// folder (the folder of a `mod.rs`, `lib.rs` or `main.rs`; `foo/` for `foo.rs`).
fn test_module_files(file: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let dir = match file.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs" | "lib.rs" | "main.rs") => file.parent().unwrap_or(Path::new("")).to_path_buf(),
        _ => file.with_extension(""),
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| w[1].strip_prefix("mod ")?.strip_suffix(';'))
        .flat_map(|name| [dir.join(format!("{name}.rs")), dir.join(name).join("mod.rs")])
        .collect()
}

#[test]
fn no_path_of_the_volume_is_spelled_outside_the_layout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for src in ["logcopy/src", "supervisor/src"] {
        rust_files(&root.join(src), &mut files);
    }
    assert!(files.len() > 20, "the sources were not found: {files:?}");
    // Files that are `#[cfg(test)] mod name;` of another (a test module in a file of its own) are test code too.
    let test_files: Vec<PathBuf> = files.iter().flat_map(|f| test_module_files(f)).collect();
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !test_files.contains(f)) {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, lit) in literals(&text) {
            for name in SPELLED.iter().filter(|n| spells(&lit, n)) {
                let rel = file.strip_prefix(&root).unwrap_or(file);
                found.push(format!("{}:{line}: {name:?} in {lit:?}", rel.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "paths of the volume spelled outside volume::layout (use its constants and functions):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_lint_sees_literals_and_skips_comments_and_tests() {
    let src = r####"
        // "containers-status" in a comment
        /* "agent_results" in a block */
        const A: &str = "evalai/results.json";
        const B: &str = r#"logcopy/x "quoted""#;
        fn f<'a>(x: &'a str) -> char { let _ = '"'; let _ = '\''; 'x' }
        const C: &[u8] = b"agent/agent1";
        #[cfg(test)]
        mod tests {
            const D: &str = "containers-status";
            fn g() { let _ = "{"; }
        }
        const E: &str = "after";
    "####;
    let lits: Vec<String> = literals(src).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lits, ["evalai/results.json", "logcopy/x \"quoted\"", "agent/agent1", "after"]);
    assert!(spells("evalai/results.json", "evalai/") && !spells("logcopy/", "logcopy/"));
    assert!(spells("/tmp/agent", "/tmp/agent"));
}

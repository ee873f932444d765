//! No source file over [`MAX_LINES`] lines before its tests.
//!
//! A file that long holds several jobs; split it along its seams (a directory module with one
//! file per job). Counted: every `.rs` file under `crates/`, `test-harness/` and `xtask/`
//! outside `tests/` directories and `target/`, up to its first `#[cfg(test)]` line at column 0
//! (unit tests at the end of a file do not count). Integration-test files are test code and are
//! left out.

use std::path::{Path, PathBuf};

/// The most lines a source file may have before its tests.
const MAX_LINES: usize = 1000;

/// Lines of `text` before its first column-0 `#[cfg(test)]`.
fn lines_before_tests(text: &str) -> usize {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .count()
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            if name != "tests" && name != "target" && name != "node_modules" {
                rust_sources(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn counts_lines_up_to_the_tests() {
    assert_eq!(lines_before_tests("a\nb\n#[cfg(test)]\nmod tests {}\n"), 2);
    assert_eq!(lines_before_tests("a\n    #[cfg(test)]\nb\n"), 3);
    assert_eq!(lines_before_tests(""), 0);
}

#[test]
fn no_source_file_over_the_limit_before_its_tests() {
    let root = super::workspace_root();
    let mut files = Vec::new();
    for top in ["crates", "test-harness", "xtask"] {
        rust_sources(&root.join(top), &mut files);
    }
    // A walk that found nothing would pass everything.
    assert!(files.len() > 100, "found only {} source files", files.len());
    let mut long: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            let n = lines_before_tests(&text);
            (n > MAX_LINES).then(|| {
                format!(
                    "{} has {n} lines before its tests",
                    p.strip_prefix(&root).unwrap_or(p).display()
                )
            })
        })
        .collect();
    long.sort();
    assert!(
        long.is_empty(),
        "split these along their seams (at most {MAX_LINES} lines before the tests):\n{}",
        long.join("\n")
    );
}

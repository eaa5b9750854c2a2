//! The fuzz targets' checks on stable, without libFuzzer: every file of the committed corpora (`fuzz/corpus/<target>/`)
//! and every fixed crash (`fuzz/regressions/<target>/`) goes through the same `relay::fuzzing` check as the fuzz target
//! of that name, so a regression shows in `cargo test -p relay`. See docs/FUZZING.md.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use relay::fuzzing::{check, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files directly in `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> =
        entries.map(|entry| entry.expect("a readable corpus folder").path()).filter(|path| path.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_and_fixed_crash_passes_its_targets_check() {
    let mut failures = Vec::new();
    for target in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(target));
        // A moved or emptied corpus must not pass by checking nothing.
        assert!(corpus.len() >= 3, "fuzz/corpus/{target} has {} files", corpus.len());
        for path in corpus.iter().chain(&files(&fuzz_dir().join("regressions").join(target))) {
            let data = std::fs::read(path).expect("a readable corpus file");
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(target, &data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!("{target}: {}: {message}", path.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} input(s) fail their fuzz target's check:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

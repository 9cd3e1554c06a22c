//! The fuzz corpus (`fuzz/corpus/<target>/`, seeds plus what fuzzing runs found) replayed
//! through the same harnesses the fuzz targets call (`rivet::fuzzing`), on the stable
//! toolchain: a parser change that panics on any kept input fails here, in every test run.
//! The nightly fuzz build and a short run of each target are `scripts/fuzz-smoke.sh`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

const FUZZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");

#[test]
fn every_target_has_a_corpus_and_a_fuzz_binary() {
    let harnesses: BTreeSet<&str> = rivet::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
    let corpora: BTreeSet<String> = fs::read_dir(Path::new(FUZZ).join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let manifest = fs::read_to_string(Path::new(FUZZ).join("Cargo.toml")).unwrap();
    let bins: BTreeSet<String> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "rivet-fuzz")
        .map(String::from)
        .collect();
    let names: BTreeSet<String> = harnesses.iter().map(|s| s.to_string()).collect();
    assert_eq!(names, corpora, "harnesses vs fuzz/corpus/ directories");
    assert_eq!(names, bins, "harnesses vs fuzz/Cargo.toml [[bin]] targets");
    for name in &names {
        let src = fs::read_to_string(Path::new(FUZZ).join(format!("fuzz_targets/{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{name}.rs: {e}"));
        assert!(
            src.contains(&format!("rivet::fuzzing::{name}(data)")),
            "fuzz_targets/{name}.rs does not call rivet::fuzzing::{name}"
        );
    }
}

#[test]
fn the_corpus_replays_without_a_panic() {
    let mut counts = vec![];
    for (name, harness) in rivet::fuzzing::TARGETS {
        let dir = Path::new(FUZZ).join("corpus").join(name);
        let mut n = 0;
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap();
            // A panic names the input, so it can be fuzzed again or minimised.
            let r = std::panic::catch_unwind(|| harness(&data));
            assert!(r.is_ok(), "{name}: {} panicked", path.display());
            n += 1;
        }
        assert!(n >= 5, "{name}: only {n} inputs in {}", dir.display());
        counts.push(format!("{name} {n}"));
    }
    eprintln!("replayed: {}", counts.join(", "));
}

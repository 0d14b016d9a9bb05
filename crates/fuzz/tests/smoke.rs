//! Every harness over its committed seeds plus deterministic mutations of them: the
//! part of the fuzzing that CI runs (`cargo test --workspace`, stable, debug). A failing
//! input is written under `target/tmp/fuzz-smoke/` and named in the panic message; add it
//! to the harness's seeds once the bug is fixed.

#![allow(clippy::unwrap_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use overseer_fuzz::mutate::{Rng, mutate};
use overseer_fuzz::{HARNESSES, SEEDS_DIR};

/// Inputs longer than this are cut (libFuzzer's default `-max_len` is 4096 for an empty
/// corpus; the GGUF seeds are larger).
const MAX_LEN: usize = 1 << 16;

fn seeds(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(SEEDS_DIR).join(name);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no seeds in {}", dir.display());
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn run(name: &str, mutations: usize) {
    let harness = HARNESSES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| *h)
        .unwrap();
    let seeds = seeds(name);
    let fail = |what: &str, input: &[u8]| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}-{what}"));
        std::fs::write(&path, input).unwrap();
        panic!(
            "harness {name} failed on {what}: input in {}",
            path.display()
        );
    };
    for (i, s) in seeds.iter().enumerate() {
        if catch_unwind(AssertUnwindSafe(|| harness(s))).is_err() {
            fail(&format!("seed-{i}"), s);
        }
    }
    let mut rng = Rng::new(name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }));
    for i in 0..mutations {
        let mut input = seeds[rng.below(seeds.len())].clone();
        let other = &seeds[rng.below(seeds.len())];
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input, other);
        }
        input.truncate(MAX_LEN);
        if catch_unwind(AssertUnwindSafe(|| harness(&input))).is_err() {
            fail(&format!("mutation-{i}"), &input);
        }
    }
}

#[test]
fn gguf() {
    run("gguf", 1500);
}

#[test]
fn tokenizer() {
    run("tokenizer", 3000);
}

#[test]
fn template() {
    run("template", 1500);
}

#[test]
fn ingest() {
    run("ingest", 2000);
}

#[test]
fn search() {
    run("search", 1500);
}

#[test]
fn http() {
    run("http", 1000);
}

/// Every harness has seeds and a cargo-fuzz target, and nothing else is there.
#[test]
fn harnesses_seeds_and_targets_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut names: Vec<&str> = HARNESSES.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    let list = |dir: &Path, strip: &str| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().replace(strip, ""))
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(Path::new(SEEDS_DIR), ""), names);
    assert_eq!(list(&root.join("fuzz_targets"), ".rs"), names);
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for n in &names {
        assert!(
            manifest.contains(&format!("name = \"{n}\"")),
            "fuzz/Cargo.toml lacks [[bin]] {n}"
        );
    }
}

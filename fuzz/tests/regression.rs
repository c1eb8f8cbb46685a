//! Every fuzz target over its committed seed corpus and crash files, then a fixed-count
//! seeded random pass (docs/fuzzing.md). `BALP_FUZZ_ITERATIONS` changes the count (default
//! below, sized for CI), `BALP_FUZZ_SEED` the seed.

use balp_fuzz::{Target, corpus_files, random_pass, run_reporting, target};

/// Per target: enough to reach the interesting paths from the corpus, small enough that
/// all six stay well under a minute on the 2-core CI machine in a debug build.
fn iterations(t: &Target) -> u64 {
    let default = match t.name {
        "spool" => 1_500,
        "parse" => 2_000,
        "config" => 3_000,
        _ => 6_000,
    };
    std::env::var("BALP_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("BALP_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_ba1f)
}

fn corpus(name: &str) {
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    let files = corpus_files(name);
    assert!(!files.is_empty(), "fuzz/corpus/{name}/ is empty");
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        run_reporting(t, &data, &f.display().to_string());
    }
}

fn random(name: &str) {
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    random_pass(t, iterations(t), seed());
}

macro_rules! targets {
    ($($name:ident),*) => {
        mod corpus {
            $(#[test] fn $name() { super::corpus(stringify!($name)); })*
        }
        mod random {
            $(#[test] fn $name() { super::random(stringify!($name)); })*
        }
    };
}

targets!(framer, decode, parse, config, spool, http);

#[test]
fn every_status_is_classified() {
    // Totality over the whole u16 range, not just what the fuzzer happened to try.
    let t = target("http").unwrap_or_else(|| panic!("no http target"));
    for status in 0..=u16::MAX {
        let mut input = status.to_le_bytes().to_vec();
        input.extend_from_slice(&[1, 1, 0]);
        run_reporting(t, &input, &format!("status {status}"));
    }
}

#[test]
fn one_file() {
    // BALP_FUZZ_FILE=path BALP_FUZZ_TARGET=name: reproduce one input (e.g. an AFL crash).
    let (Ok(path), Ok(name)) = (
        std::env::var("BALP_FUZZ_FILE"),
        std::env::var("BALP_FUZZ_TARGET"),
    ) else {
        return;
    };
    let t = target(&name).unwrap_or_else(|| panic!("no target {name}"));
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    run_reporting(t, &data, &path);
}

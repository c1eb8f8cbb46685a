//! Fuzz harnesses for balp-agent (docs/fuzzing.md).
//!
//! Each target is one function `fn(&[u8])` that panics when an invariant breaks. The same
//! function is driven three ways:
//!
//! * by AFL++ (`examples/afl.rs`, coverage-guided, built with `cargo afl`);
//! * over the committed seed corpus and every crash file (`corpus/<target>/`,
//!   `crashes/<target>/`) by `cargo test` (tests/regression.rs);
//! * by a fixed number of seeded random mutations of that corpus ([`random_pass`]), also in
//!   `cargo test`, so CI runs a short pass without AFL.
//!
//! The harnesses assert more than "no panic": see each module.

pub mod config;
pub mod decode;
pub mod framer;
pub mod http;
pub mod input;
pub mod mutate;
pub mod parse;
pub mod spool;

use std::path::{Path, PathBuf};

/// One fuzz target.
pub struct Target {
    /// Name used on the command line and as the corpus directory.
    pub name: &'static str,
    /// The harness: panics when an invariant is broken.
    pub run: fn(&[u8]),
    /// Tokens the random pass inserts (and `examples/afl.rs dict NAME` prints for AFL's `-x`).
    pub dict: &'static [&'static str],
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "framer",
        run: framer::run,
        dict: framer::DICT,
    },
    Target {
        name: "decode",
        run: decode::run,
        dict: decode::DICT,
    },
    Target {
        name: "parse",
        run: parse::run,
        dict: parse::DICT,
    },
    Target {
        name: "config",
        run: config::run,
        dict: config::DICT,
    },
    Target {
        name: "spool",
        run: spool::run,
        dict: spool::DICT,
    },
    Target {
        name: "http",
        run: http::run,
        dict: http::DICT,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// `fuzz/` in the source tree.
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `fuzz/corpus/<name>/` and `fuzz/crashes/<name>/`, sorted by path.
pub fn corpus_files(name: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["corpus", "crashes"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(name)) else {
            continue;
        };
        files.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file()),
        );
    }
    files.sort();
    files
}

/// Run `target` on one input; on a panic, say which input it was (hex for short ones).
pub fn run_reporting(target: &Target, input: &[u8], label: &str) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(input)));
    if let Err(e) = result {
        let saved = save_failure(target.name, input);
        let shown: String = if input.len() <= 512 {
            input.escape_ascii().to_string()
        } else {
            format!("({} bytes)", input.len())
        };
        panic!(
            "fuzz target {} failed on {label}: {}\ninput: b\"{shown}\"\nsaved to {}",
            target.name,
            panic_text(&e),
            saved.display()
        );
    }
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// A failing input goes to the temp dir (never the source tree): copy it to
/// `fuzz/crashes/<target>/` to make it a regression test.
fn save_failure(name: &str, input: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "balp-fuzz-{name}-{:016x}",
        fnv(input) // same input, same file
    ));
    if std::fs::write(&path, input).is_err() {
        return Path::new("(not saved)").to_path_buf();
    }
    path
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `iterations` seeded random mutations of the corpus of `target` (and random bytes), each
/// run through the harness. Deterministic for one `seed`.
pub fn random_pass(target: &Target, iterations: u64, seed: u64) {
    let seeds: Vec<Vec<u8>> = corpus_files(target.name)
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut input = Vec::new();
    for i in 0..iterations {
        mutate::next_input(&mut rng, &seeds, target.dict, &mut input);
        run_reporting(target, &input, &format!("random input {i} of seed {seed}"));
    }
}

//! Spool throughput: append + group commit, then sequential reads.
//!
//! `cargo bench --bench spool` runs 200 000 events of ~1.5 KiB in commits of 500. Set
//! `SPOOL_BENCH_EVENTS` for a shorter run and `SPOOL_BENCH_DIR` to measure on another filesystem.

use balp_agent::balp::EventRecord;
use balp_agent::config::{ByteSize, SpoolConfig, WhenFull};
use balp_agent::spool::{Origin, Spool};
use std::time::Instant;

const GROUP: usize = 500;

fn main() {
    let events: usize = std::env::var("SPOOL_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let base = std::env::var_os("SPOOL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = match tempfile::tempdir_in(&base) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot create a temp dir in {}: {e}", base.display());
            std::process::exit(1);
        }
    };
    let config = SpoolConfig {
        max_bytes: ByteSize(u64::MAX),
        when_full: WhenFull::Block,
        min_free: ByteSize(0),
        ..SpoolConfig::default()
    };
    let (mut spool, _) = match Spool::open(dir.path(), &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let pad = "x".repeat(1400);
    let origin = |n: u64| Origin {
        source: "auth".into(),
        stream_key: "file:2049:131077:9f8e7d6c".into(),
        path: "/var/log/auth.log".into(),
        start: n * 120,
        end: n * 120 + 119,
    };
    let record = |n: u64| EventRecord {
        id: uuid::Uuid::from_u128(n as u128),
        pattern: "login",
        json: format!(r#"{{"resourceType":"AuditEvent","n":{n},"pad":"{pad}"}}"#),
        leaf: None,
    };

    let mut bytes = 0u64;
    let mut n = 0u64;
    let start = Instant::now();
    while (n as usize) < events {
        for _ in 0..GROUP.min(events - n as usize) {
            let r = record(n);
            bytes += r.json.len() as u64;
            if let Err(e) = spool.append(&r, &origin(n)) {
                eprintln!("{e}");
                std::process::exit(1);
            }
            n += 1;
        }
        if let Err(e) = spool.commit() {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
    let write = start.elapsed().as_secs_f64();
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!(
        "append+commit: {n} events ({mib:.1} MiB JSON) in {write:.2}s: {:.0} events/s, {:.1} MiB/s, {} commits",
        n as f64 / write,
        mib / write,
        n.div_ceil(GROUP as u64)
    );

    let start = Instant::now();
    let mut from = 1;
    let mut read = 0usize;
    loop {
        let batch = match spool.read_range(from, 500, 4 << 20) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        read += batch.len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "read_range: {read} events in {secs:.2}s: {:.0} events/s, {:.1} MiB/s",
        read as f64 / secs,
        mib / secs
    );
}

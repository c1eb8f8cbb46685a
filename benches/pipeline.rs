//! End-to-end benchmark: 1 M generated FHIR access lines through the real binary
//! (`run --once`: tail → decode → parse → map → batch → stdout sink), three runs.
//! Prints lines/s, events/s and peak RSS (median of the runs), next to a baseline measured in
//! the same command (`wc -l` over the same file) so machine noise shows as a ratio.
//!
//! `cargo bench --bench pipeline` (set BALP_BENCH_LINES to change the line count).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

fn main() {
    let lines: usize = std::env::var("BALP_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    generate(&log, lines);
    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let bin = env!("CARGO_BIN_EXE_balp-agent");

    let mut baseline = Vec::new();
    let mut runs = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        let ok = Command::new("wc")
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .status();
        assert!(ok.map(|s| s.success()).unwrap_or(false), "wc failed");
        baseline.push(t.elapsed().as_secs_f64());

        let state = dir.path().join(format!("state{i}"));
        let cfg = dir.path().join(format!("bench{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"[agent]
state_dir = "{state}"
hostname = "bench-host"
[[sources]]
name = "fhir"
type = "file"
include = ["{log}"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
[output]
type = "stdout"
max_events = 500
"#,
                state = state.display(),
                log = log.display()
            ),
        )
        .expect("config");
        let out = std::fs::File::create(dir.path().join("sink.ndjson")).expect("sink");
        let t = Instant::now();
        let mut child = Command::new(bin)
            .args(["run", "--once", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(out)
            .spawn()
            .expect("spawn agent");
        // VmHWM is the peak RSS of the agent's own image (rusage's maxrss would also count
        // the pages it shared with this process before exec).
        let mut maxrss_kib = 0;
        let status = loop {
            if let Some(hwm) = vm_hwm_kib(child.id()) {
                maxrss_kib = maxrss_kib.max(hwm);
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(e) => panic!("waiting for the agent: {e}"),
            }
        };
        let secs = t.elapsed().as_secs_f64();
        assert!(status.success(), "agent exited with {status}");
        let sink = dir.path().join("sink.ndjson");
        let events = count_events(&sink);
        runs.push((secs, maxrss_kib, events));
        let _ = std::fs::remove_file(sink);
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    baseline.sort_by(f64::total_cmp);
    let (secs, _, events) = runs[1];
    let mut rss: Vec<i64> = runs.iter().map(|r| r.1).collect();
    rss.sort();
    let base = baseline[1];
    println!("lines: {lines} ({:.1} MiB)", size as f64 / (1 << 20) as f64);
    println!(
        "runs (s): {:?}",
        runs.iter()
            .map(|r| (r.0 * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    println!("median: {secs:.3} s");
    println!("lines/s: {:.0}", lines as f64 / secs);
    println!("events/s: {:.0} ({events} events)", events as f64 / secs);
    println!(
        "peak RSS: {:.1} MiB (median of runs)",
        rss[1] as f64 / 1024.0
    );
    println!(
        "baseline wc -l: {base:.3} s ({:.0} lines/s); agent/baseline time ratio: {:.1}",
        lines as f64 / base,
        secs / base
    );
}

fn generate(path: &Path, n: usize) {
    let f = std::fs::File::create(path).expect("log file");
    let mut w = std::io::BufWriter::new(f);
    let kinds = [
        ("GET", "/fhir/Patient/{p}", 200),
        ("GET", "/fhir/Observation?patient={p}&_count=50", 200),
        ("POST", "/fhir/Observation", 201),
        ("PUT", "/fhir/Patient/{p}", 200),
        ("GET", "/fhir/Patient/{p}/_history/3", 200),
        ("GET", "/fhir/Encounter?subject=Patient/{p}", 200),
        ("DELETE", "/fhir/Condition/{p}", 204),
        ("GET", "/fhir/Patient/{p}", 404),
        ("GET", "/static/app.js", 200),
        ("GET", "/fhir/metadata", 200),
    ];
    for i in 0..n {
        let (m, path, status) = kinds[i % kinds.len()];
        let p = i % 50_000;
        let path = path.replace("{p}", &p.to_string());
        writeln!(
            w,
            r#"10.{}.{}.{} - - [25/Nov/2026:15:25:{:02} +0000] "{m} {path} HTTP/1.1" {status} 40 "-" "HAPI-FHIR/7.4.0 (FHIR Client; FHIR 4.0.1/R4; apache)" user="dr.user{}" xff="-" rid="{i:032x}" rt=0.002"#,
            i % 7,
            i % 200,
            i % 250,
            i % 60,
            i % 300
        )
        .expect("write");
    }
    w.flush().expect("flush");
}

/// Entries in the Bundles of the sink (one Bundle per line), read line by line.
fn count_events(sink: &Path) -> usize {
    use std::io::BufRead;
    let Ok(f) = std::fs::File::open(sink) else {
        return 0;
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        // Each entry has exactly one fullUrl: count them without parsing the Bundle.
        .map(|l| l.matches("\"fullUrl\":").count())
        .sum()
}

/// Peak resident set size of a running process, KiB.
fn vm_hwm_kib(pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

//! End-to-end benchmark, as a user would run the agent: 1 M generated nginx lines of FHIR
//! traffic (800 k FHIR requests) through the real binary (`run --once`): file source →
//! fhir_access → fsynced spool → gzip `collection` Bundles of 500 over HTTP to a counting
//! sink on loopback (a Rust HTTP/1.1 server in this file, TCP_NODELAY set, that gunzips each
//! Bundle and counts its entries). Three runs; prints the median of wall time, lines/s,
//! events/s, CPU-seconds and peak RSS, next to `LC_ALL=C grep -cE` with the preset's matching
//! regex over the same file, measured in the same command, so machine noise shows as a ratio.
//!
//! `cargo bench --bench pipeline` (BALP_BENCH_LINES changes the line count; BALP_BENCH_BIN
//! runs another build of the agent, e.g. one of an earlier commit, for an A/B comparison on
//! the same input; BALP_BENCH_OUTPUT adds `[output]` keys to the throughput runs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let lines: usize = std::env::var("BALP_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    generate(&log, lines);
    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let bin_override = std::env::var("BALP_BENCH_BIN").ok();
    let bin = bin_override
        .as_deref()
        .unwrap_or(env!("CARGO_BIN_EXE_balp-agent"));
    println!("agent: {bin}");
    let regex = grep_regex();
    // More `[output]` keys for the throughput runs, e.g. BALP_BENCH_OUTPUT='max_in_flight = 2'.
    let output_extra = std::env::var("BALP_BENCH_OUTPUT").unwrap_or_default();
    let sink = Sink::start();

    let mut baseline = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        let out = Command::new("grep")
            .env("LC_ALL", "C")
            .arg("-cE")
            .arg(&regex)
            .arg(&log)
            .stderr(Stdio::inherit())
            .output()
            .expect("grep");
        baseline.push(t.elapsed().as_secs_f64());
        let matched: usize = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        assert_eq!(matched, lines, "grep -cE must match every generated line");

        let state = dir.path().join(format!("state{i}"));
        let cfg = dir.path().join(format!("bench{i}.toml"));
        write_config(&cfg, &state, &log, sink.addr, &output_extra);
        sink.events.store(0, Ordering::SeqCst);
        sink.state.json_bytes.store(0, Ordering::SeqCst);
        runs.push(run_agent(bin, &cfg, &sink));
        let _ = std::fs::remove_dir_all(&state);
    }
    let median = |f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    baseline.sort_by(f64::total_cmp);
    let base = baseline[baseline.len() / 2];
    let secs = median(&|r| r.secs);
    let cpu = median(&|r| r.cpu_secs);
    let rss = median(&|r| r.peak_rss_kib as f64);
    let events = runs[0].events;
    assert!(
        runs.iter().all(|r| r.events == events),
        "every run delivers the same events: {:?}",
        runs.iter().map(|r| r.events).collect::<Vec<_>>()
    );
    println!("lines: {lines} ({:.1} MiB)", size as f64 / (1 << 20) as f64);
    println!(
        "runs: {}",
        runs.iter()
            .map(|r| format!("{:.2} s / {:.2} CPU-s", r.secs, r.cpu_secs))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("median wall: {secs:.3} s");
    println!("lines/s: {:.0}", lines as f64 / secs);
    println!(
        "events/s: {:.0} ({events} events at the sink)",
        events as f64 / secs
    );
    println!(
        "CPU-seconds: {cpu:.2} ({:.2} per 1 M lines)",
        cpu * 1e6 / lines as f64
    );
    println!("peak RSS: {:.1} MiB", rss / 1024.0);
    println!(
        "baseline LC_ALL=C grep -cE: {base:.3} s; agent/grep wall ratio: {:.1}",
        secs / base
    );
    gzip_floor(&sink, events);
    if std::env::var("BALP_BENCH_OUTAGE").as_deref() != Ok("0") {
        outage(bin, dir.path(), &sink);
    }
}

/// What gzip alone costs for the Bundle JSON of one run: the sampled Bundles are gzipped at
/// the agent's level with the same crate and backend, on one thread, and the CPU time is
/// scaled to the run's bytes. Every event is made, spooled, read back and compressed; this
/// is a lower bound for the compression step alone.
fn gzip_floor(sink: &Sink, events: u64) {
    let total = sink.state.json_bytes.load(Ordering::SeqCst);
    let Ok(sample) = sink.state.sample.lock() else {
        return;
    };
    let sample_bytes: usize = sample.iter().map(Vec::len).sum();
    if sample_bytes == 0 || events == 0 {
        return;
    }
    let started = thread_cpu();
    let mut packed = 0usize;
    for _ in 0..3 {
        for b in sample.iter() {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
            let _ = enc.write_all(b);
            packed += enc.finish().map(|v| v.len()).unwrap_or(0);
        }
    }
    let cpu = (thread_cpu() - started) / 3.0;
    let mib = total as f64 / (1 << 20) as f64;
    println!(
        "gzip floor: {mib:.0} MiB of Bundle JSON per run ({:.0} bytes/event, {:.0}x smaller gzipped); gzip level 1 alone: {:.2} CPU-s per run ({:.0} MiB/s on one core)",
        total as f64 / events as f64,
        (3 * sample_bytes) as f64 / packed.max(1) as f64,
        cpu * total as f64 / sample_bytes as f64,
        sample_bytes as f64 / (1 << 20) as f64 / cpu.max(1e-9)
    );
}

/// CPU seconds this thread has used.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn write_config(cfg: &Path, state: &Path, log: &Path, addr: std::net::SocketAddr, extra: &str) {
    std::fs::write(
        cfg,
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
type = "http"
url = "http://{addr}/fhir/Bundle"
bundle_type = "collection"
compression = "gzip"
max_events = 500
{extra}
"#,
            state = state.display(),
            log = log.display(),
        ),
    )
    .expect("config");
}

/// The ARR is down (503) while 1 M events arrive: RSS is sampled as the spool fills; then the
/// agent is stopped, the ARR comes back, and a fresh start must deliver its first Bundle from
/// the full spool at once and drain it.
fn outage(bin: &str, dir: &Path, sink: &Sink) {
    let lines: usize = std::env::var("BALP_BENCH_OUTAGE_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_250_000);
    let expected = (lines / 10 * 8) as u64 + 1; // + Application Start
    let log = dir.join("outage.log");
    generate(&log, lines);
    let state = dir.join("state-outage");
    let cfg = dir.join("outage.toml");
    write_config(
        &cfg,
        &state,
        &log,
        sink.addr,
        "[spool]\nmax_bytes = \"8GiB\"",
    );
    sink.state.fail.store(true, Ordering::SeqCst);
    sink.events.store(0, Ordering::SeqCst);
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let mut samples: Vec<(u64, i64)> = Vec::new();
    let mut next_mark = expected / 10;
    let mut peak = 0;
    let spooled = loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(hwm) = proc_kib(child.id(), "VmHWM") {
            peak = peak.max(hwm);
        }
        let pending = spool_pending(bin, &cfg);
        if pending >= next_mark {
            samples.push((pending, proc_kib(child.id(), "VmRSS").unwrap_or(0)));
            while next_mark <= pending {
                next_mark += expected / 10;
            }
        }
        if pending >= expected || t.elapsed() > Duration::from_secs(600) {
            break pending;
        }
    };
    let fill_secs = t.elapsed().as_secs_f64();
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    let spool_bytes = dir_bytes(&state.join("spool"));

    sink.state.fail.store(false, Ordering::SeqCst);
    sink.events.store(0, Ordering::SeqCst);
    if let Ok(mut first) = sink.state.first_ok.lock() {
        *first = None;
    }
    let t = Instant::now();
    let status = Command::new(bin)
        .args(["run", "--once", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .status()
        .expect("restart agent");
    let drain_secs = t.elapsed().as_secs_f64();
    assert!(status.success(), "restarted agent exited with {status}");
    let first = sink
        .state
        .first_ok
        .lock()
        .ok()
        .and_then(|f| *f)
        .map(|f| f.duration_since(t).as_secs_f64());
    let delivered = sink.events.load(Ordering::SeqCst);
    println!("outage: ARR answering 503 while {lines} lines arrive");
    println!(
        "  spooled {spooled} events in {fill_secs:.1} s; spool {:.2} GiB on disk",
        spool_bytes as f64 / (1u64 << 30) as f64
    );
    println!(
        "  RSS while filling (MiB at pending events): {}",
        samples
            .iter()
            .map(|(p, kib)| format!("{:.1}@{}k", *kib as f64 / 1024.0, p / 1000))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  peak RSS during the outage: {:.1} MiB",
        peak as f64 / 1024.0
    );
    println!(
        "restart with the full spool: first Bundle accepted after {} s; {delivered} events delivered in {drain_secs:.1} s ({:.0} events/s)",
        first.map_or("(none)".to_owned(), |f| format!("{f:.3}")),
        delivered as f64 / drain_secs
    );
}

/// Pending events as the running agent reports them (`spool status`).
fn spool_pending(bin: &str, cfg: &Path) -> u64 {
    let out = Command::new(bin)
        .args(["spool", "status", "-c"])
        .arg(cfg)
        .output();
    let Ok(out) = out else {
        return 0;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("pending events:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// One agent run.
struct Run {
    secs: f64,
    cpu_secs: f64,
    peak_rss_kib: i64,
    events: u64,
}

fn run_agent(bin: &str, cfg: &Path, sink: &Sink) -> Run {
    let cpu_before = children_cpu_secs();
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(["run", "--once", "-c"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn agent");
    // VmHWM is the peak RSS of the agent's own image (rusage's maxrss would also count the
    // pages it shared with this process before exec).
    let mut peak = 0;
    let status = loop {
        if let Some(hwm) = proc_kib(child.id(), "VmHWM") {
            peak = peak.max(hwm);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for the agent: {e}"),
        }
    };
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success(), "agent exited with {status}");
    Run {
        secs,
        cpu_secs: children_cpu_secs() - cpu_before,
        peak_rss_kib: peak,
        events: sink.events.load(Ordering::SeqCst),
    }
}

/// User + system CPU time of all waited-for children so far.
fn children_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The preset's `request` rule as a POSIX ERE (named groups and `(?:` become plain groups;
/// the other escapes mean the same in ERE brackets).
fn grep_regex() -> String {
    let preset = include_str!("../presets/fhir_access.toml");
    let line = preset
        .lines()
        .skip_while(|l| !l.starts_with("name = \"request\""))
        .find(|l| l.starts_with("regex = '"))
        .expect("request rule");
    let re = line
        .trim_start_matches("regex = '")
        .trim_end_matches('\'')
        .replace("(?:", "(")
        // In a POSIX bracket a backslash is literal: `[^\]]` is written `[^]]`.
        .replace("[^\\]]", "[^]]");
    // Drop `?P<name>` after each `(`.
    let mut out = String::new();
    let mut rest = re.as_str();
    while let Some(i) = rest.find("(?P<") {
        out.push_str(&rest[..=i]);
        let after = &rest[i + 4..];
        let close = after.find('>').expect("named group");
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A counting ARR stand-in: HTTP/1.1 keep-alive, one thread per connection.
struct Sink {
    addr: std::net::SocketAddr,
    events: Arc<AtomicU64>,
    state: Arc<SinkState>,
}

/// What the sink's connections share besides the count.
#[derive(Default)]
struct SinkState {
    /// Answer 503 (an ARR outage) instead of 200.
    fail: std::sync::atomic::AtomicBool,
    /// When the first Bundle was accepted since the last reset.
    first_ok: std::sync::Mutex<Option<Instant>>,
    /// Bundle JSON bytes accepted (gunzipped) since the last reset.
    json_bytes: AtomicU64,
    /// The first accepted Bundles, gunzipped, for the gzip floor.
    sample: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Bundles kept for the gzip floor (about 10 000 events).
const SAMPLE_BUNDLES: usize = 20;

impl Sink {
    fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let addr = listener.local_addr().expect("sink addr");
        let events = Arc::new(AtomicU64::new(0));
        let state = Arc::new(SinkState::default());
        let (counter, shared) = (events.clone(), state.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (counter, shared) = (counter.clone(), shared.clone());
                std::thread::spawn(move || serve(conn, &counter, &shared));
            }
        });
        Sink {
            addr,
            events,
            state,
        }
    }
}

fn serve(conn: TcpStream, events: &AtomicU64, state: &SinkState) {
    let _ = conn.set_nodelay(true);
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut gzip = false;
        let mut line = String::new();
        // Request line and headers.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            } else if lower.starts_with("content-encoding:") && lower.contains("gzip") {
                gzip = true;
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if state.fail.load(Ordering::SeqCst) {
            if writer
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
                .is_err()
            {
                return;
            }
            continue;
        }
        let text = if gzip {
            let mut s = Vec::new();
            if flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut s)
                .is_err()
            {
                return;
            }
            s
        } else {
            body
        };
        let n = memchr::memmem::find_iter(&text, b"\"fullUrl\":").count();
        events.fetch_add(n as u64, Ordering::SeqCst);
        state
            .json_bytes
            .fetch_add(text.len() as u64, Ordering::SeqCst);
        if let Ok(mut sample) = state.sample.lock()
            && sample.len() < SAMPLE_BUNDLES
        {
            sample.push(text);
        }
        if let Ok(mut first) = state.first_ok.lock() {
            first.get_or_insert_with(Instant::now);
        }
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
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

/// A `/proc/PID/status` figure in KiB: `VmHWM` (peak RSS) or `VmRSS` (current).
fn proc_kib(pid: u32, key: &str) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

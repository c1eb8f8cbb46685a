//! The NATS publish path through the real binary: `run --once` over generated FHIR access
//! lines (file source → `fhir_access` → spool with fsync → `type = "nats"` output) into a
//! 1-node JetStream (`nats-server -js` on 127.0.0.1, R1 file-storage stream with a duplicate
//! window). Each run uses a fresh stream and state dir; the stream's message count is checked
//! against the events made. Three runs; prints the median events/s.
//!
//! `cargo bench --bench nats` (BALP_BENCH_EVENTS, default 200 000; BALP_BENCH_BIN runs
//! another build). Needs `nats-server` (Debian package `nats-server`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let events: usize = std::env::var("BALP_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let bin = std::env::var("BALP_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_balp-agent").to_owned());
    let Some(server) = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("nats-server is not installed (apt-get install nats-server)");
        std::process::exit(1);
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("temp dir: {e}");
            std::process::exit(1);
        }
    };
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => {
            eprintln!("free port: {e}");
            std::process::exit(1);
        }
    };
    let mut node = match Command::new(server)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path().join("js"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nats-server: {e}");
            std::process::exit(1);
        }
    };
    let url = format!("nats://127.0.0.1:{port}");
    let log = dir.path().join("access.log");
    if let Err(e) = write_lines(&log, events) {
        eprintln!("{e}");
        std::process::exit(1);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    let mut rates = Vec::new();
    for run in 0..3 {
        let stream = format!("BENCH{run}");
        if let Err(e) = rt.block_on(create_stream(&url, &stream, run)) {
            eprintln!("stream: {e}");
            break;
        }
        let cfg = config(dir.path(), run, &log, &url, &stream);
        let started = Instant::now();
        let status = Command::new(&bin)
            .args(["run", "--once", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .status();
        let secs = started.elapsed().as_secs_f64();
        match status {
            Ok(s) if s.success() => {}
            other => {
                eprintln!("run {run}: balp-agent failed: {other:?}");
                break;
            }
        }
        let stored = rt.block_on(stream_messages(&url, &stream)).unwrap_or(0);
        let rate = stored as f64 / secs;
        println!("run {run}: {stored} messages in the stream, {secs:.2} s, {rate:.0} events/s");
        rates.push(rate);
    }
    let _ = node.kill();
    let _ = node.wait();
    if rates.len() == 3 {
        rates.sort_by(f64::total_cmp);
        println!("median: {:.0} events/s", rates[1]);
    } else {
        std::process::exit(1);
    }
}

fn write_lines(path: &Path, n: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(
            f,
            r#"10.1.2.3 - - [25/Nov/2026:15:25:33 +0000] "GET /fhir/Patient/{i} HTTP/1.1" 200 40 "-" "curl/7.88.1" user="dr.smith" xff="-" rid="req{i:08}" rt=0.001"#
        )?;
    }
    f.flush()
}

fn config(dir: &Path, run: usize, log: &Path, url: &str, stream: &str) -> PathBuf {
    let path = dir.join(format!("run{run}.toml"));
    let text = format!(
        r#"
[agent]
state_dir = "{state}"
hostname = "bench"
[[sources]]
name = "fhir"
type = "file"
include = ["{log}"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
[output]
type = "nats"
max_events = 500
max_in_flight = 4
timeout = "10s"
[output.nats]
servers = ["{url}"]
subject = "bench{run}.{{hostname}}"
stream = "{stream}"
"#,
        state = dir.join(format!("state{run}")).display(),
        log = log.display(),
    );
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("config: {e}");
        std::process::exit(1);
    }
    path
}

async fn create_stream(url: &str, name: &str, run: usize) -> Result<(), String> {
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let mut last = String::new();
    for _ in 0..50 {
        match js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: name.into(),
                subjects: vec![format!("bench{run}.>")],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

async fn stream_messages(url: &str, name: &str) -> Option<u64> {
    let client = async_nats::connect(url).await.ok()?;
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(name).await.ok()?;
    Some(s.info().await.ok()?.state.messages)
}

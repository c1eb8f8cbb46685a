//! Drive the real `balp-agent` binary from integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_balp-agent"))
}

/// A file under the shared corpus.
pub fn corpus(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus")
        .join(rel)
}

/// Write `body` as `config.toml` in `dir`.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, body).expect("write config");
    path
}

/// Run the binary to completion with these arguments.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run balp-agent")
}

/// A running agent; killed on drop if still alive.
pub struct Agent {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Agent {
    /// `balp-agent run -c config` with stderr captured to `<dir>/agent.stderr`.
    pub fn start(config: &Path, extra: &[&str]) -> Agent {
        let dir = config.parent().expect("config dir");
        let stderr = dir.join(format!("agent-{}.stderr", fastrand_suffix()));
        let err = std::fs::File::create(&stderr).expect("stderr file");
        let child = Command::new(bin())
            .arg("run")
            .arg("-c")
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn balp-agent");
        Agent { child, stderr }
    }

    /// Send a signal by name (TERM, KILL, INT).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Wait for exit, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        match self.wait(Duration::from_secs(20)) {
            Some(s) => s,
            None => panic!("agent did not stop within 20 s:\n{}", self.log()),
        }
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn fastrand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Append lines to a file (creating it), flushed.
pub fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    for l in lines {
        writeln!(f, "{l}").expect("append");
    }
    f.flush().expect("flush");
}

/// `n` distinct FHIR access lines (reads of Patient/<start+i>).
pub fn fhir_lines(start: usize, n: usize) -> Vec<String> {
    (start..start + n)
        .map(|i| {
            format!(
                r#"10.1.2.3 - - [25/Nov/2026:15:25:33 +0000] "GET /fhir/Patient/{i} HTTP/1.1" 200 40 "-" "curl/7.88.1" user="dr.smith" xff="-" rid="req{i:08}" rt=0.001"#
            )
        })
        .collect()
}

/// The request id an event of a generated FHIR line carries (its `XrequestId` entity).
pub fn request_id(event: &serde_json::Value) -> Option<&str> {
    event["entity"]
        .as_array()?
        .iter()
        .find(|e| e["type"]["code"] == "XrequestId")?["what"]["identifier"]["value"]
        .as_str()
}

/// `nats-server` where Debian installs it.
pub fn nats_server() -> Option<PathBuf> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Wait until `cond` holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    cond()
}

/// Every AuditEvent made from log lines in the Bundle files of a directory output, in file
/// order (the agent's own start/stop events and the alerts it raises are left out).
pub fn events_in_dir(dir: &Path) -> Vec<serde_json::Value> {
    all_events_in_dir(dir)
        .into_iter()
        .filter(|e| e["type"]["code"] != "110100" && !super::arr::is_agent_alert(e))
        .collect()
}

/// Every AuditEvent in the Bundle files of a directory output, in file order.
pub fn all_events_in_dir(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("bundle file");
        let v: serde_json::Value = serde_json::from_str(&text).expect("bundle json");
        assert_eq!(v["resourceType"], "Bundle", "{}", f.display());
        for e in v["entry"].as_array().cloned().unwrap_or_default() {
            out.push(e["resource"].clone());
        }
    }
    out
}

/// Assert every event passes the BALP conformance checker.
pub fn assert_conformant(events: &[serde_json::Value]) {
    for ev in events {
        let problems = balp_agent::balp::conformance::check(ev);
        assert!(
            problems.is_empty(),
            "non-conformant event {ev}: {problems:?}"
        );
    }
}

//! A real FHIR R4 server as the ARR: `tests/fhir_server/server.mjs` (Medplum's FhirRouter and
//! in-memory repository, every resource validated against the R4 StructureDefinitions) run
//! with Node.js on 127.0.0.1.
//!
//! [`FhirServer::start`] spawns it on a free port and reads the port from its first stdout
//! line; the guard kills it on drop (also when a test panics), and the server exits by itself
//! when its stdin (held by the guard) closes, so even a SIGKILLed test leaves nothing
//! running. HTTP to it is plain HTTP/1.1 over `std::net::TcpStream`, one connection per
//! request.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The server's directory (`package.json`, `server.mjs`, `node_modules` after `npm ci`).
pub fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir_server")
}

/// Why the server cannot run here (no `node` 20+, or `npm ci` not run), or `None` if it can.
pub fn missing() -> Option<String> {
    let version = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(version) = version else {
        return Some("node is not installed (Node.js 20.19+ runs tests/fhir_server)".into());
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        return Some(format!("node {version} is too old (20.19+ needed)"));
    }
    if !server_dir()
        .join("node_modules/@medplum/fhir-router/package.json")
        .exists()
    {
        return Some("tests/fhir_server/node_modules is missing (run `npm ci` there)".into());
    }
    None
}

/// A running server; killed on drop.
pub struct FhirServer {
    child: Child,
    /// Held open: the server exits when it closes.
    _stdin: Option<ChildStdin>,
    port: u16,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

/// An HTTP answer: status and body parsed as JSON (`Null` if it is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub json: serde_json::Value,
}

/// One stored AuditEvent as `/_admin/stored` lists it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StoredEvent {
    /// How often it was written (an update by PUT adds a version).
    pub versions: u64,
    /// `type.code`.
    #[serde(rename = "type")]
    pub type_code: String,
    /// `entity[].what`: the reference, else the identifier value.
    pub what: Vec<String>,
}

/// What the server holds (`GET /_admin/stored`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Stored {
    /// AuditEvents stored as resources, by id.
    #[serde(rename = "AuditEvent")]
    pub audit_events: BTreeMap<String, StoredEvent>,
    /// Bundles stored as resources (collection Bundles POSTed to `[base]/Bundle`): id →
    /// versions.
    #[serde(rename = "Bundle")]
    pub bundles: BTreeMap<String, u64>,
    /// AuditEvents inside stored Bundles, by id (`versions` = how many Bundles hold it).
    pub bundled: Bundled,
    /// Requests the server answered so far.
    pub requests: u64,
}

/// The AuditEvents inside stored Bundles.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Bundled {
    /// By id.
    #[serde(rename = "AuditEvent")]
    pub audit_events: BTreeMap<String, StoredEvent>,
}

impl FhirServer {
    /// Start the server on a free port; panics (with its stderr) if it does not come up.
    pub fn start() -> FhirServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr = dir.path().join("fhir-server.stderr");
        let err = std::fs::File::create(&stderr).expect("stderr file");
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg("0")
            .current_dir(server_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn node tests/fhir_server/server.mjs");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("server stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            // Keep draining so the server never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut server = FhirServer {
            child,
            _stdin: stdin,
            port: 0,
            stderr,
            _dir: dir,
        };
        // Indexing the R4 definitions takes a few seconds on a slow machine.
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        server.port = match line.trim().parse() {
            Ok(p) => p,
            Err(_) => panic!(
                "the FHIR server did not print its port (got {line:?}):\n{}",
                server.log()
            ),
        };
        server
    }

    /// The FHIR base URL, `http://127.0.0.1:PORT/fhir`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/fhir", self.port)
    }

    /// What the server logged to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `GET path` (path from the server root, e.g. `/fhir/AuditEvent?_count=1`).
    pub fn get(&self, path: &str) -> Answer {
        self.request("GET", path, "application/fhir+json", b"")
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Answer {
        self.request("DELETE", path, "application/fhir+json", b"")
    }

    /// `method path` with a FHIR JSON body.
    pub fn send(&self, method: &str, path: &str, body: &serde_json::Value) -> Answer {
        let body = body.to_string();
        self.send_as(method, path, "application/fhir+json", body.as_bytes())
    }

    /// `method path` with this body and `Content-Type`.
    pub fn send_as(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Answer {
        self.request(method, path, content_type, body)
    }

    fn request(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Answer {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to FHIR server");
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Accept: application/fhir+json\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes()).expect("write request");
        s.write_all(body).expect("write body");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read answer");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP head");
        let head = String::from_utf8_lossy(&raw[..split]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("HTTP status");
        let json = serde_json::from_slice(&raw[split + 4..]).unwrap_or(serde_json::Value::Null);
        Answer { status, json }
    }

    /// Everything stored, from the admin endpoint.
    pub fn stored(&self) -> Stored {
        let a = self.get("/_admin/stored");
        assert_eq!(a.status, 200, "{}", a.json);
        serde_json::from_value(a.json).expect("/_admin/stored")
    }

    /// `Bundle.total` of a FHIR search (`query` after `?`, e.g. `_count=1`).
    pub fn search_total(&self, resource_type: &str, query: &str) -> u64 {
        let a = self.get(&format!("/fhir/{resource_type}?{query}"));
        assert_eq!(a.status, 200, "{}", a.json);
        a.json["total"].as_u64().expect("searchset total")
    }

    /// Every resource a FHIR search returns, paged with `_count` and `_offset`.
    pub fn search_all(&self, resource_type: &str, page: usize) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        loop {
            let a = self.get(&format!(
                "/fhir/{resource_type}?_count={page}&_offset={}",
                all.len()
            ));
            assert_eq!(a.status, 200, "{}", a.json);
            let entries = a.json["entry"].as_array().cloned().unwrap_or_default();
            let n = entries.len();
            all.extend(entries.into_iter().map(|e| e["resource"].clone()));
            if n < page {
                return all;
            }
        }
    }

    /// How many AuditEvents are stored as resources (`GET /_admin/count`; cheap to poll).
    pub fn audit_event_count(&self) -> usize {
        let a = self.get("/_admin/count");
        assert_eq!(a.status, 200, "{}", a.json);
        a.json["AuditEvent"].as_u64().expect("count") as usize
    }
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

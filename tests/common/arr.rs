//! A scriptable test Audit Record Repository: a small HTTP/1.1 server on 127.0.0.1.
//!
//! It runs on its own thread with its own tokio runtime, so sync and async tests can both use
//! it, and it stops (closing every connection, hung ones included) when dropped. Each request
//! is answered with the next scripted [`Reply`], then with random 503s at the `fail_ratio`,
//! then with the default reply. Replies can depend on the content (reject the Bundles holding a
//! poison entry, answer per entry in a batch-response) and the server can act as an OAuth2
//! token endpoint. Every request is recorded with its arrival time, lowercased
//! headers and decoded (gunzipped) body. Bodies are read by `Content-Length` only (which is
//! what reqwest sends); connections are kept alive; sizes are bounded.
#![allow(dead_code)]

use flate2::read::GzDecoder;
use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest request head (request line + headers).
const MAX_HEAD: usize = 64 * 1024;
/// Default largest request body (raw and decoded); larger ones get 413.
const DEFAULT_MAX_BODY: usize = 64 << 20;

/// How the server answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// 200 with a batch-response Bundle (for batch/transaction) or an OperationOutcome.
    Ok,
    /// This status with an OperationOutcome body.
    Status(u16),
    /// This status with a `Retry-After` header of this value.
    StatusWithRetryAfter(u16, String),
    /// This status with this body (sent as `application/fhir+json`).
    StatusWithBody(u16, String),
    /// Read the request, then never answer (until the server is dropped).
    Hang,
    /// Read the request, then close the connection without answering.
    CloseConnection,
    /// This status (with an OperationOutcome) if an entry's resource JSON contains this text,
    /// else as [`Reply::Ok`]. Recorded as the reply actually sent.
    RejectEntries(u16, String),
    /// 200 with a batch-response whose entry `i` has status `statuses[i]` (201 past the end);
    /// non-2xx entries carry an OperationOutcome. Only 2xx entries count as accepted.
    EntryStatuses(Vec<u16>),
    /// 200 as an OAuth2 token endpoint: `{"access_token": "tok-<n>", "token_type": "Bearer",
    /// "expires_in": <this>}`, `n` counting the token replies from 1.
    Token(u64),
}

impl Reply {
    /// The HTTP status this reply sends, if it sends one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Reply::Ok | Reply::RejectEntries(..) | Reply::EntryStatuses(_) | Reply::Token(_) => {
                Some(200)
            }
            Reply::Status(s) | Reply::StatusWithRetryAfter(s, _) | Reply::StatusWithBody(s, _) => {
                Some(*s)
            }
            Reply::Hang | Reply::CloseConnection => None,
        }
    }

    fn is_success(&self) -> bool {
        self.status().is_some_and(|s| (200..300).contains(&s))
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When the request was fully read.
    pub time: Instant,
    /// `POST`, …
    pub method: String,
    /// The request target, e.g. `/fhir`.
    pub path: String,
    /// Headers in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, gunzipped if `Content-Encoding: gzip`.
    pub body: Vec<u8>,
    /// The body's size on the wire.
    pub raw_len: usize,
    /// How the server answered.
    pub reply: Reply,
    /// `entry[].resource.id` of the entries the server accepted.
    pub accepted_ids: Vec<String>,
}

impl Recorded {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Debug)]
struct State {
    script: VecDeque<Reply>,
    default: Reply,
    fail_ratio: f64,
    max_body: usize,
    requests: Vec<Recorded>,
    accepted_events: usize,
    tokens: u64,
    /// Keep request bodies (off for soak runs of a million events: only ids are kept).
    keep_bodies: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the recorded requests from the others.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running test ARR; stops when dropped.
pub struct Arr {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Arr {
    /// Start on a free port of 127.0.0.1.
    pub fn start() -> Arr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                script: VecDeque::new(),
                default: Reply::Ok,
                fail_ratio: 0.0,
                max_body: DEFAULT_MAX_BODY,
                requests: Vec::new(),
                accepted_events: 0,
                tokens: 0,
                keep_bodies: true,
            }),
            changed: Condvar::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("test-arr".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(serve(listener, server_shared, stop_rx));
                // Dropping the runtime cancels every connection task, hung ones included.
            })
            .expect("spawn test ARR thread");
        Arr {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// The URL to POST Bundles to, e.g. `http://127.0.0.1:PORT/fhir`.
    pub fn url(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    /// The server's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Keep request bodies (default) or drop them once their accepted ids are taken, for runs
    /// too large to hold every body in memory.
    pub fn keep_bodies(&self, keep: bool) {
        self.shared.lock().keep_bodies = keep;
    }

    /// Replies for the next requests, used in order before the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.lock().script.extend(replies);
    }

    /// The reply once the script is used up (initially [`Reply::Ok`]).
    pub fn set_default(&self, reply: Reply) {
        self.shared.lock().default = reply;
    }

    /// Answer this share (0.0–1.0) of unscripted requests with 503.
    pub fn fail_ratio(&self, ratio: f64) {
        self.shared.lock().fail_ratio = ratio.clamp(0.0, 1.0);
    }

    /// Bodies larger than this (on the wire or gunzipped) get 413 (default 64 MiB).
    pub fn set_max_body(&self, bytes: usize) {
        self.shared.lock().max_body = bytes;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The bodies answered with 2xx, parsed as JSON, in order.
    pub fn accepted_bundles(&self) -> Vec<serde_json::Value> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.reply.is_success())
            .filter_map(Recorded::json)
            .collect()
    }

    /// `entry[].resource.id` of the accepted entries, in order.
    pub fn accepted_event_ids(&self) -> Vec<String> {
        self.shared
            .lock()
            .requests
            .iter()
            .flat_map(|r| r.accepted_ids.iter().cloned())
            .collect()
    }

    /// Accepted Application Start/Stop events of the agent itself (not its seals).
    pub fn accepted_self_events(&self) -> Vec<serde_json::Value> {
        self.accepted_bundles()
            .iter()
            .flat_map(|b| b["entry"].as_array().cloned().unwrap_or_default())
            .map(|e| e["resource"].clone())
            .filter(|r| is_self_audit(r) && !is_seal(r))
            .collect()
    }

    /// Accepted alerts the agent raised itself, in order (redeliveries repeat).
    pub fn accepted_alerts(&self) -> Vec<serde_json::Value> {
        self.accepted_bundles()
            .iter()
            .flat_map(|b| b["entry"].as_array().cloned().unwrap_or_default())
            .map(|e| e["resource"].clone())
            .filter(is_agent_alert)
            .collect()
    }

    /// Wait until at least `n` events were accepted; false on timeout.
    pub fn wait_for_events(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.accepted_events >= n)
    }

    /// Wait until at least `n` requests arrived; false on timeout.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.requests.len() >= n)
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if done(&state) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for Arr {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Ids of the events made from log lines. The agent's own start/stop events (DCM 110100
/// Application Activity) and the alerts it raises are left out, so tests count exactly the
/// events their lines make; [`Arr::accepted_self_events`] and [`Arr::accepted_alerts`] count
/// those.
fn event_ids(bundle: &serde_json::Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| !is_self_audit(&e["resource"]) && !is_agent_alert(&e["resource"]))
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The agent's own Application Start/Stop event?
pub fn is_self_audit(resource: &serde_json::Value) -> bool {
    resource["type"]["code"] == "110100"
}

/// A tamper-evidence seal (also DCM 110100, subtype `urn:balp-agent:tamper#seal`).
pub fn is_seal(resource: &serde_json::Value) -> bool {
    resource["subtype"][0]["code"] == "seal"
}

/// A Security Alert the agent raised itself (`[[alerts]]`, docs/alerts.md)?
pub fn is_agent_alert(resource: &serde_json::Value) -> bool {
    resource["type"]["code"] == "110113"
        && resource["subtype"]
            .as_array()
            .is_some_and(|s| s.iter().any(|c| c["system"] == "urn:balp-agent:alert-rule"))
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(connection(stream, shared.clone()));
                }
            }
        }
    }
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    close: bool,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Serve requests on one connection until it closes or a reply ends it.
async fn connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some((head, head_len)) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        buf.drain(..head_len);
        let max_body = shared.lock().max_body;
        if head.get("transfer-encoding").is_some() {
            let _ = respond(&mut stream, 411, "", None, true).await;
            return;
        }
        let len: usize = match head.get("content-length").map(str::parse) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                let _ = respond(&mut stream, 400, "", None, true).await;
                return;
            }
        };
        if len > max_body {
            record(
                &shared,
                &head,
                Vec::new(),
                len,
                Reply::Status(413),
                Vec::new(),
            );
            let _ = respond(&mut stream, 413, &outcome("too large"), None, true).await;
            return;
        }
        while buf.len() < len {
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let raw: Vec<u8> = buf.drain(..len).collect();
        let gzipped = head
            .get("content-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        let body = if gzipped {
            let mut out = Vec::new();
            let limit = u64::try_from(max_body).unwrap_or(u64::MAX) + 1;
            if GzDecoder::new(&raw[..])
                .take(limit)
                .read_to_end(&mut out)
                .is_err()
            {
                record(
                    &shared,
                    &head,
                    raw.clone(),
                    len,
                    Reply::Status(400),
                    Vec::new(),
                );
                let _ = respond(&mut stream, 400, &outcome("bad gzip"), None, true).await;
                return;
            }
            out
        } else {
            raw
        };
        let reply = if body.len() > max_body {
            Reply::Status(413)
        } else {
            next_reply(&shared)
        };
        let (reply, response_body, accepted) = resolve(&shared, reply, &body);
        record(&shared, &head, body, len, reply.clone(), accepted);
        let close = head.close || reply == Reply::Status(413);
        match reply {
            Reply::Hang => {
                std::future::pending::<()>().await;
            }
            Reply::CloseConnection => return,
            ref r => {
                let ra = match r {
                    Reply::StatusWithRetryAfter(_, ra) => Some(ra.as_str()),
                    _ => None,
                };
                let s = r.status().unwrap_or(200);
                if respond(&mut stream, s, &response_body, ra, close)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if close {
            return;
        }
    }
}

fn next_reply(shared: &Shared) -> Reply {
    let mut s = shared.lock();
    if let Some(r) = s.script.pop_front() {
        return r;
    }
    if s.fail_ratio > 0.0 && fastrand::f64() < s.fail_ratio {
        return Reply::Status(503);
    }
    s.default.clone()
}

/// The reply as sent (content-dependent replies made concrete), its body, and the ids of the
/// entries it accepts.
fn resolve(shared: &Shared, reply: Reply, request: &[u8]) -> (Reply, String, Vec<String>) {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(request).ok();
    let all_ids = || parsed.as_ref().map(event_ids).unwrap_or_default();
    match reply {
        Reply::Ok => (Reply::Ok, ok_body(request), all_ids()),
        Reply::RejectEntries(status, needle) => {
            let poison: Vec<String> = parsed
                .as_ref()
                .and_then(|b| b["entry"].as_array())
                .map(|entries| {
                    entries
                        .iter()
                        .filter(|e| e["resource"].to_string().contains(&needle))
                        .map(|e| e["resource"]["id"].as_str().unwrap_or("?").to_owned())
                        .collect()
                })
                .unwrap_or_default();
            if poison.is_empty() {
                (Reply::Ok, ok_body(request), all_ids())
            } else {
                let body = outcome(&format!("rejected entries: {}", poison.join(", ")));
                (
                    Reply::StatusWithBody(status, body.clone()),
                    body,
                    Vec::new(),
                )
            }
        }
        Reply::EntryStatuses(statuses) => {
            let entries = parsed
                .as_ref()
                .and_then(|b| b["entry"].as_array().cloned())
                .unwrap_or_default();
            let mut accepted = Vec::new();
            let mut out = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                let st = statuses.get(i).copied().unwrap_or(201);
                let mut resp = serde_json::json!({"status": format!("{st} {}", reason(st))});
                if (200..300).contains(&st) {
                    if let Some(id) = e["resource"]["id"].as_str() {
                        accepted.push(id.to_owned());
                    }
                } else {
                    resp["outcome"] = serde_json::from_str(&outcome(&format!("entry {i}: {st}")))
                        .unwrap_or_default();
                }
                out.push(serde_json::json!({ "response": resp }));
            }
            let body = serde_json::json!({
                "resourceType": "Bundle",
                "type": "batch-response",
                "entry": out
            })
            .to_string();
            (Reply::EntryStatuses(statuses), body, accepted)
        }
        Reply::Token(expires_in) => {
            let n = {
                let mut s = shared.lock();
                s.tokens += 1;
                s.tokens
            };
            let body = serde_json::json!({
                "access_token": format!("tok-{n}"),
                "token_type": "Bearer",
                "expires_in": expires_in
            })
            .to_string();
            (Reply::Token(expires_in), body, Vec::new())
        }
        Reply::StatusWithBody(s, b) => (Reply::StatusWithBody(s, b.clone()), b, Vec::new()),
        r @ (Reply::Status(s) | Reply::StatusWithRetryAfter(s, _)) => {
            (r, outcome(&format!("scripted status {s}")), Vec::new())
        }
        r @ (Reply::Hang | Reply::CloseConnection) => (r, String::new(), Vec::new()),
    }
}

fn record(
    shared: &Shared,
    head: &Head,
    body: Vec<u8>,
    raw_len: usize,
    reply: Reply,
    accepted_ids: Vec<String>,
) {
    let mut s = shared.lock();
    let r = Recorded {
        time: Instant::now(),
        method: head.method.clone(),
        path: head.path.clone(),
        headers: head.headers.clone(),
        body: if s.keep_bodies { body } else { Vec::new() },
        raw_len,
        reply,
        accepted_ids,
    };
    s.accepted_events += r.accepted_ids.len();
    s.requests.push(r);
    drop(s);
    shared.changed.notify_all();
}

/// Read until a complete head is buffered; `None` when the connection ends or misbehaves.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Head, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = std::str::from_utf8(&buf[..end]).ok()?;
            let mut lines = text.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let method = first.next()?.to_owned();
            let path = first.next()?.to_owned();
            let version = first.next()?.to_owned();
            let mut headers = Vec::new();
            for line in lines {
                let (n, v) = line.split_once(':')?;
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
            let conn = headers
                .iter()
                .find(|(n, _)| n == "connection")
                .map(|(_, v)| v.to_ascii_lowercase());
            let close = match conn.as_deref() {
                Some("close") => true,
                Some("keep-alive") => false,
                _ => version != "HTTP/1.1",
            };
            return Some((
                Head {
                    method,
                    path,
                    headers,
                    close,
                },
                end + 4,
            ));
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 8 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    body: &str,
    retry_after: Option<&str>,
    close: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if let Some(ra) = retry_after {
        head.push_str(&format!("Retry-After: {ra}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn outcome(text: &str) -> String {
    serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}]
    })
    .to_string()
}

/// A batch-response (or transaction-response) with one `201` per entry, or an informational
/// OperationOutcome for other bodies.
fn ok_body(request: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(request).ok();
    let kind = parsed.as_ref().and_then(|b| b["type"].as_str());
    match (kind, &parsed) {
        (Some(t @ ("batch" | "transaction")), Some(b)) => {
            let n = b["entry"].as_array().map_or(0, Vec::len);
            let entries: Vec<_> = (0..n)
                .map(|_| serde_json::json!({"response": {"status": "201 Created"}}))
                .collect();
            serde_json::json!({
                "resourceType": "Bundle",
                "type": format!("{t}-response"),
                "entry": entries
            })
            .to_string()
        }
        _ => serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": "accepted"}]
        })
        .to_string(),
    }
}

//! `/metrics` and `/health` over a small HTTP/1.1 server.
//!
//! In: the process-wide counters of [`crate::events`] and a shared [`Health`] that the
//! pipeline and the HTTP output update (spool fill, delivery failures, position writes, a
//! configuration-error pause). Out: the Prometheus text exposition format 0.0.4 on
//! `GET /metrics`, and `200 ok` or `503 <reasons>` on `GET /health`.
//! Guarantees: the listener is bound before [`serve`] returns (so a bind error is reported at
//! startup, before READY); a scrape never blocks the pipeline (only short mutex sections);
//! the server is bounded (connections, request size, time per request) and stops on the
//! shutdown signal. No payloads or identifiers are ever exposed, only counts.

use crate::config::{Config, MetricsConfig};
use crate::events::{self, LATENCY_BUCKETS};
use crate::shutdown::Shutdown;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Largest request head read; scrapers send a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client gets this long to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once (a scraper retries).
const MAX_CONNECTIONS: usize = 16;

/// When `/health` turns unhealthy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Spool fill (bytes / max_bytes) above which the agent is unhealthy.
    pub spool_fill: f64,
    /// Delivery failing for longer than this is unhealthy.
    pub delivery_failure: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds::from_metrics(&MetricsConfig::new(""))
    }
}

impl Thresholds {
    /// From `[metrics]`.
    pub fn from_metrics(m: &MetricsConfig) -> Thresholds {
        Thresholds {
            spool_fill: m.spool_threshold,
            delivery_failure: m.delivery_failure_threshold.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct SpoolGauges {
    pending_events: u64,
    bytes: u64,
    max_bytes: u64,
    oldest_age: Option<Duration>,
    quarantined: u64,
    lost: u64,
}

#[derive(Debug, Default)]
struct DeliveryState {
    /// Since when delivery has been failing without a success, and the last reason.
    failing: Option<(Instant, String)>,
    /// Set while the output waits out a configuration error (403, TLS verification, …).
    paused: Option<String>,
}

/// Health state shared by the pipeline, the output and the metrics server.
#[derive(Debug)]
pub struct Health {
    thresholds: Thresholds,
    spool: Mutex<SpoolGauges>,
    delivery: Mutex<DeliveryState>,
    positions_failed: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(Thresholds::default())
    }
}

/// Poisoning only means another thread panicked mid-update of plain numbers: keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Health {
    /// Healthy, empty state with these thresholds.
    pub fn new(thresholds: Thresholds) -> Health {
        Health {
            thresholds,
            spool: Mutex::new(SpoolGauges::default()),
            delivery: Mutex::new(DeliveryState::default()),
            positions_failed: AtomicBool::new(false),
        }
    }

    /// Thresholds from `[metrics]` (defaults when the section is absent).
    pub fn from_config(config: &Config) -> Health {
        Health::new(
            config
                .metrics
                .as_ref()
                .map(Thresholds::from_metrics)
                .unwrap_or_default(),
        )
    }

    /// The spool's current fill: pending events, bytes on disk, quota, age of the oldest
    /// pending record (`None` when empty).
    pub fn set_spool(
        &self,
        pending_events: u64,
        bytes: u64,
        max_bytes: u64,
        oldest_age: Option<Duration>,
    ) {
        let mut g = lock(&self.spool);
        *g = SpoolGauges {
            pending_events,
            bytes,
            max_bytes,
            oldest_age,
            ..*g
        };
    }

    /// Damage the spool met since start: records quarantined, events unreadable (lost).
    pub fn set_spool_damage(&self, quarantined: u64, lost: u64) {
        let mut g = lock(&self.spool);
        g.quarantined = quarantined;
        g.lost = lost;
    }

    /// A delivery succeeded (or the ARR settled a Bundle by rejecting its content): clears
    /// the failure streak and any configuration-error pause.
    pub fn delivery_ok(&self) {
        let mut d = lock(&self.delivery);
        d.failing = None;
        d.paused = None;
    }

    /// A delivery attempt failed; the streak starts at the first failure after a success.
    pub fn delivery_failed(&self, reason: &str) {
        self.delivery_failed_at(reason, Instant::now());
    }

    /// [`Health::delivery_failed`] at a given time (for tests and replays).
    pub fn delivery_failed_at(&self, reason: &str, at: Instant) {
        let mut d = lock(&self.delivery);
        match &mut d.failing {
            Some((_, last)) => reason.clone_into(last),
            None => d.failing = Some((at, reason.to_owned())),
        }
    }

    /// Is the ARR failing right now (a failed attempt since the last success, or a pause)?
    /// The pipeline opens no new Bundle slot while it is: the Bundles in flight are the probes.
    pub fn delivery_failing(&self) -> bool {
        let d = lock(&self.delivery);
        d.failing.is_some() || d.paused.is_some()
    }

    /// Whether the last attempt to persist read positions failed.
    pub fn positions_write_failed(&self, failed: bool) {
        self.positions_failed.store(failed, Ordering::Relaxed);
    }

    /// The output is paused by a configuration error (`Some(reason)`), or no longer (`None`).
    pub fn set_paused(&self, reason: Option<String>) {
        lock(&self.delivery).paused = reason;
    }

    /// `Ok` when healthy, else every reason, joined by `"; "`.
    pub fn status(&self, now: Instant) -> Result<(), String> {
        let mut reasons = Vec::new();
        let s = *lock(&self.spool);
        if s.max_bytes > 0 {
            let fill = s.bytes as f64 / s.max_bytes as f64;
            if fill > self.thresholds.spool_fill {
                reasons.push(format!(
                    "spool {:.0}% full ({} of {} bytes; threshold {:.0}%)",
                    fill * 100.0,
                    s.bytes,
                    s.max_bytes,
                    self.thresholds.spool_fill * 100.0
                ));
            }
        }
        {
            let d = lock(&self.delivery);
            if let Some(reason) = &d.paused {
                reasons.push(format!("output paused by a configuration error: {reason}"));
            }
            if let Some((since, reason)) = &d.failing {
                let for_ = now.saturating_duration_since(*since);
                if for_ > self.thresholds.delivery_failure {
                    reasons.push(format!(
                        "delivery failing for {}s: {reason}",
                        for_.as_secs()
                    ));
                }
            }
        }
        if self.positions_failed.load(Ordering::Relaxed) {
            reasons.push("read positions could not be saved".to_owned());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }

    /// Seconds delivery has been failing (0 when it is not).
    fn failing_seconds(&self, now: Instant) -> f64 {
        lock(&self.delivery)
            .failing
            .as_ref()
            .map_or(0.0, |(since, _)| {
                now.saturating_duration_since(*since).as_secs_f64()
            })
    }

    fn paused(&self) -> bool {
        lock(&self.delivery).paused.is_some()
    }
}

/// Escape a label value: backslash, double quote and line feed (format 0.0.4).
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes one metric family at a time.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // HELP text: backslash and line feed are the only escapes; ours have neither.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The whole `/metrics` page.
pub fn render(health: &Health, now: Instant) -> String {
    let c = events::counters();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut e = Exposition {
        out: String::with_capacity(4096),
    };
    e.family(
        "balp_agent_build_info",
        "gauge",
        "Always 1; the version label says which build is running.",
    );
    e.sample(
        "balp_agent_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    e.single(
        "balp_agent_lines_read_total",
        "counter",
        "Lines read from all sources.",
        get(&c.lines_read),
    );
    e.single(
        "balp_agent_lines_truncated_total",
        "counter",
        "Lines cut at max_line_bytes (still mapped, flagged).",
        get(&c.lines_truncated),
    );
    e.single(
        "balp_agent_lines_invalid_utf8_total",
        "counter",
        "Lines holding invalid UTF-8 (replaced with U+FFFD, flagged).",
        get(&c.lines_invalid_utf8),
    );
    e.single(
        "balp_agent_lines_folded_total",
        "counter",
        "Lines a parser's fold rule folded into the event of an earlier line.",
        get(&c.lines_folded),
    );
    e.single(
        "balp_agent_lines_time_unreadable_total",
        "counter",
        "Lines whose time could not be read (events stamped with header or read time, flagged).",
        get(&c.lines_time_unreadable),
    );
    e.family(
        "balp_agent_unmatched_lines_total",
        "counter",
        "Lines no parser matched, by source and the parser list tried.",
    );
    for ((source, parsers), n) in c.unmatched_by_parsers() {
        e.sample(
            "balp_agent_unmatched_lines_total",
            &[("source", &source), ("parsers", &parsers)],
            n,
        );
    }
    e.family(
        "balp_agent_events_total",
        "counter",
        "AuditEvents produced, by pattern.",
    );
    for (pattern, n) in c.by_pattern() {
        e.sample("balp_agent_events_total", &[("pattern", &pattern)], n);
    }

    e.family(
        "balp_agent_alerts_total",
        "counter",
        "Security Alert events the agent raised itself, by rule name (docs/alerts.md).",
    );
    for (rule, n) in c.alerts() {
        e.sample("balp_agent_alerts_total", &[("rule", &rule)], n);
    }
    e.single(
        "balp_agent_alert_state_write_failures_total",
        "counter",
        "Failed writes of the alert state file (read positions wait for the next success).",
        get(&c.alert_state_write_failures),
    );

    e.single(
        "balp_agent_bundles_sent_total",
        "counter",
        "Bundles the output accepted.",
        get(&c.bundles_sent),
    );
    e.single(
        "balp_agent_bundles_failed_total",
        "counter",
        "Bundles whose delivery failed at least once (kept and retried, never dropped).",
        get(&c.bundles_failed),
    );
    e.single(
        "balp_agent_delivery_retries_total",
        "counter",
        "Delivery attempts that failed and will be retried (the Bundle is kept).",
        get(&c.retries),
    );
    e.single(
        "balp_agent_bundles_dead_lettered_total",
        "counter",
        "Bundles (or parts) the ARR rejected for their content, kept in the dead-letter area.",
        get(&c.dead_lettered),
    );
    let h = c.delivery_latency();
    e.family(
        "balp_agent_delivery_latency_seconds",
        "histogram",
        "Seconds from handing a Bundle to the output until it was settled, retries included.",
    );
    let mut cumulative = 0;
    for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets.iter()) {
        cumulative += n;
        e.sample(
            "balp_agent_delivery_latency_seconds_bucket",
            &[("le", &bound.to_string())],
            cumulative,
        );
    }
    e.sample(
        "balp_agent_delivery_latency_seconds_bucket",
        &[("le", "+Inf")],
        h.count,
    );
    e.sample("balp_agent_delivery_latency_seconds_sum", &[], h.sum);
    e.sample("balp_agent_delivery_latency_seconds_count", &[], h.count);
    e.single(
        "balp_agent_delivery_failing_seconds",
        "gauge",
        "Seconds since delivery started failing without a success (0 when it works).",
        health.failing_seconds(now),
    );
    e.single(
        "balp_agent_output_paused",
        "gauge",
        "1 while the output waits out a configuration error (403/404/405/501, TLS verification).",
        u8::from(health.paused()),
    );

    let s = *lock(&health.spool);
    e.single(
        "balp_agent_spool_pending_events",
        "gauge",
        "Events in the spool not yet accepted by the output.",
        s.pending_events,
    );
    e.single(
        "balp_agent_spool_bytes",
        "gauge",
        "Bytes the spool takes on disk.",
        s.bytes,
    );
    e.single(
        "balp_agent_spool_max_bytes",
        "gauge",
        "The spool's quota (spool.max_bytes).",
        s.max_bytes,
    );
    e.single(
        "balp_agent_spool_oldest_age_seconds",
        "gauge",
        "Age of the oldest pending spool record (0 when empty).",
        s.oldest_age.map_or(0.0, |d| d.as_secs_f64()),
    );
    e.single(
        "balp_agent_spool_quarantined_records_total",
        "counter",
        "Damaged spool records (or segment headers) copied to spool/quarantine since start.",
        s.quarantined,
    );
    e.single(
        "balp_agent_spool_lost_events_total",
        "counter",
        "Spooled events found unreadable since start (damaged, cut off or deleted); never delivered.",
        s.lost,
    );

    e.single(
        "balp_agent_position_write_failures_total",
        "counter",
        "Failed writes of the read positions file.",
        get(&c.position_write_failures),
    );
    e.single(
        "balp_agent_syslog_dropped_total",
        "counter",
        "Syslog (UDP) messages dropped because the pipeline was not taking lines.",
        get(&c.syslog_dropped),
    );
    e.single(
        "balp_agent_syslog_connections_refused_total",
        "counter",
        "Syslog TCP/TLS connections refused at max_connections.",
        get(&c.syslog_connections_refused),
    );
    e.single(
        "balp_agent_healthy",
        "gauge",
        "1 when /health answers 200, else 0.",
        u8::from(health.status(now).is_ok()),
    );
    e.out
}

/// Serve `GET /metrics` and `GET /health` on `listen` (`host:port`) until `shutdown`.
///
/// Binds before returning, so the caller can fail startup on a bind error and report the
/// actual address (useful with port 0). The returned task ends on `shutdown`.
pub async fn serve(
    listen: &str,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> std::io::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("metrics.listen {listen:?}: {e}")))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "metrics and health endpoint listening");
    let task = tokio::spawn(accept_loop(listener, health, shutdown));
    Ok((task, addr))
}

async fn accept_loop(listener: TcpListener, health: Arc<Health>, mut shutdown: Shutdown) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &health)).await;
            drop(permit);
        });
    }
}

/// Answer one request and close the connection.
async fn handle(mut stream: TcpStream, health: &Health) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST_HEAD {
            return respond(&mut stream, 431, "text/plain", "request head too large\n").await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            // Some clients end the head with a bare LF pair, or close early: parse what came.
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return respond(&mut stream, 400, "text/plain", "bad request\n").await;
    };
    let path = target.split('?').next().unwrap_or(target);
    if !matches!(path, "/metrics" | "/health") {
        return respond(&mut stream, 404, "text/plain", "not found\n").await;
    }
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET\n").await;
    }
    let now = Instant::now();
    if path == "/metrics" {
        let body = render(health, now);
        respond(&mut stream, 200, PROMETHEUS_CONTENT_TYPE, &body).await
    } else {
        match health.status(now) {
            Ok(()) => respond(&mut stream, 200, "text/plain", "ok\n").await,
            Err(reason) => {
                respond(
                    &mut stream,
                    503,
                    "text/plain",
                    &format!("unhealthy: {reason}\n"),
                )
                .await
            }
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request over a real socket; returns (status, headers+body text).
    pub(crate) async fn request(addr: SocketAddr, raw: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, out)
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
    }

    #[test]
    fn health_flips_for_each_reason_and_back() {
        let t0 = Instant::now();
        let h = Health::new(Thresholds {
            spool_fill: 0.9,
            delivery_failure: Duration::from_secs(300),
        });
        assert_eq!(h.status(t0), Ok(()));

        h.set_spool(10, 91, 100, Some(Duration::from_secs(3)));
        let e = h.status(t0).unwrap_err();
        assert!(e.contains("spool 91% full"), "{e}");
        h.set_spool(10, 90, 100, None);
        assert_eq!(h.status(t0), Ok(()), "exactly at the threshold is fine");

        h.delivery_failed_at("HTTP 503", t0);
        h.delivery_failed_at("connection refused", t0 + Duration::from_secs(200));
        assert_eq!(h.status(t0 + Duration::from_secs(300)), Ok(()));
        let e = h.status(t0 + Duration::from_secs(301)).unwrap_err();
        assert!(
            e.contains("delivery failing for 301s: connection refused"),
            "{e}"
        );
        h.delivery_ok();
        assert_eq!(h.status(t0 + Duration::from_secs(400)), Ok(()));

        h.positions_write_failed(true);
        assert!(h.status(t0).unwrap_err().contains("positions"));
        h.positions_write_failed(false);
        assert_eq!(h.status(t0), Ok(()));

        h.set_paused(Some("HTTP 403".into()));
        let e = h.status(t0).unwrap_err();
        assert!(e.contains("configuration error: HTTP 403"), "{e}");
        h.set_paused(None);
        assert_eq!(h.status(t0), Ok(()));
        h.set_paused(Some("HTTP 404".into()));
        h.delivery_ok();
        assert_eq!(h.status(t0), Ok(()), "a success ends a pause");

        h.set_spool(0, 95, 100, None);
        h.positions_write_failed(true);
        let e = h.status(t0).unwrap_err();
        assert!(e.contains("spool") && e.contains("; read positions"), "{e}");
    }

    #[test]
    fn thresholds_come_from_the_metrics_section() {
        let mut m = MetricsConfig::new("127.0.0.1:0");
        m.spool_threshold = 0.5;
        let h = Health::from_config(&Config {
            metrics: Some(m),
            ..Config::default()
        });
        h.set_spool(0, 51, 100, None);
        assert!(h.status(Instant::now()).is_err());
        assert_eq!(Thresholds::default().spool_fill, 0.9);
        assert_eq!(
            Thresholds::default().delivery_failure,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        let mut e = Exposition { out: String::new() };
        e.sample("m_total", &[("source", "we\"ird"), ("parsers", "")], 3);
        assert_eq!(e.out, "m_total{source=\"we\\\"ird\",parsers=\"\"} 3\n");
    }

    #[tokio::test]
    async fn health_endpoint_answers_503_with_the_reason_then_200() {
        let health = Arc::new(Health::default());
        let (trigger, shutdown) = crate::shutdown::channel();
        let (task, addr) = serve("127.0.0.1:0", health.clone(), shutdown)
            .await
            .unwrap();
        let (status, body) = request(addr, &get("/health")).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with("\r\n\r\nok\n"), "{body}");

        health.set_paused(Some("TLS verification failed".into()));
        let (status, body) = request(addr, &get("/health")).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("TLS verification failed"), "{body}");
        let (_, metrics) = request(addr, &get("/metrics")).await;
        assert!(metrics.contains("\nbalp_agent_healthy 0\n"), "{metrics}");
        assert!(metrics.contains("\nbalp_agent_output_paused 1\n"));

        health.delivery_ok();
        let (status, _) = request(addr, &get("/health?verbose=1")).await;
        assert_eq!(status, 200);

        let (status, _) = request(addr, &get("/nope")).await;
        assert_eq!(status, 404);
        let (status, body) = request(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 405);
        assert!(body.contains("Allow: GET"));
        let (status, _) = request(addr, "\r\n\r\n").await;
        assert_eq!(status, 400);

        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn bind_error_names_the_key() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = serve(&addr, Arc::new(Health::default()), Shutdown::never())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("metrics.listen"), "{e}");
    }
}

//! Internal events: every observable happening of the agent is defined once here, and each
//! both logs and counts, so the agent's logs and its counters cannot drift apart.
//! Log lines never carry payloads or patient identifiers (SPEC §1).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Lines read from all sources.
    pub lines_read: AtomicU64,
    /// AuditEvents produced.
    pub events: AtomicU64,
    /// Lines cut at `max_line_bytes`.
    pub lines_truncated: AtomicU64,
    /// Lines with invalid UTF-8.
    pub lines_invalid_utf8: AtomicU64,
    /// Lines a `fold` rule folded into the event of an earlier line.
    pub lines_folded: AtomicU64,
    /// Lines whose event time could not be read from the line (events flagged).
    pub lines_time_unreadable: AtomicU64,
    /// Bundles the output accepted.
    pub bundles_sent: AtomicU64,
    /// Delivery attempts that failed and will be retried.
    pub retries: AtomicU64,
    /// Bundles whose delivery failed at least once (each is kept and retried).
    pub bundles_failed: AtomicU64,
    /// Bundles (or entries) put in the dead-letter area.
    pub dead_lettered: AtomicU64,
    /// Failed writes of the positions file.
    pub position_write_failures: AtomicU64,
    /// Failed writes of the alert state file (positions then wait).
    pub alert_state_write_failures: AtomicU64,
    /// Syslog messages dropped because the pipeline was not taking lines (UDP only).
    pub syslog_dropped: AtomicU64,
    /// Syslog TCP/TLS connections refused at `max_connections`.
    pub syslog_connections_refused: AtomicU64,
    /// Lines no parser matched, by (source, parser list tried; empty when not told).
    unmatched: Mutex<BTreeMap<(String, String), u64>>,
    /// Events by pattern name.
    by_pattern: Mutex<BTreeMap<String, u64>>,
    /// Events that did not claim a BALP profile for want of an element, by `profile: reason`.
    downgrades: Mutex<BTreeMap<String, u64>>,
    /// Seconds from handing a Bundle to the output until it was accepted.
    latency: Mutex<Histogram>,
    /// Alerts raised, by rule name.
    alerts: Mutex<BTreeMap<String, u64>>,
}

/// Upper bounds (seconds) of the delivery latency histogram buckets. Fixed so that series
/// stay comparable across versions; the span covers a fast local ARR up to an hour-long outage.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0,
];

/// A Prometheus-style histogram with the fixed [`LATENCY_BUCKETS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), in [`LATENCY_BUCKETS`] order; the last slot
    /// holds those above the largest bound.
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Record one observation (negative or NaN values count as 0).
    pub fn observe(&mut self, value: f64) {
        let v = if value.is_finite() && value > 0.0 {
            value
        } else {
            0.0
        };
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// The process-wide counters.
pub fn counters() -> &'static Counters {
    static C: OnceLock<Counters> = OnceLock::new();
    C.get_or_init(Counters::default)
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str, n: u64) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key.to_owned()).or_default() += n;
    }
}

impl Counters {
    /// Unmatched lines per source.
    pub fn unmatched(&self) -> BTreeMap<String, u64> {
        let mut by_source = BTreeMap::new();
        for ((source, _), n) in self.unmatched_by_parsers() {
            *by_source.entry(source).or_default() += n;
        }
        by_source
    }
    /// Unmatched lines per (source, comma-separated parser list tried; empty when unknown).
    pub fn unmatched_by_parsers(&self) -> BTreeMap<(String, String), u64> {
        self.unmatched.lock().map(|m| m.clone()).unwrap_or_default()
    }
    /// Profile downgrades per `profile: reason`.
    pub fn downgrades(&self) -> BTreeMap<String, u64> {
        self.downgrades
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
    /// The delivery latency histogram so far.
    pub fn delivery_latency(&self) -> Histogram {
        self.latency.lock().map(|h| h.clone()).unwrap_or_default()
    }
    /// Alerts raised per rule name.
    pub fn alerts(&self) -> BTreeMap<String, u64> {
        self.alerts.lock().map(|m| m.clone()).unwrap_or_default()
    }
    /// Events per pattern.
    pub fn by_pattern(&self) -> BTreeMap<String, u64> {
        self.by_pattern
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}

/// Lines were read.
pub fn lines_read(n: u64) {
    counters().lines_read.fetch_add(n, Ordering::Relaxed);
}

/// A line was longer than `max_line_bytes` and was cut.
pub fn line_truncated(stream: &str, offset: u64, max: u64, setting: &'static str) {
    counters().lines_truncated.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        stream,
        offset,
        limit_bytes = max,
        setting,
        "line longer than its limit was cut there (the rest of it is skipped); raise the setting named here if such lines are expected"
    );
}

/// A line held invalid UTF-8.
pub fn invalid_utf8(stream: &str, offset: u64) {
    counters()
        .lines_invalid_utf8
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        stream,
        offset,
        "line held invalid UTF-8; replaced with U+FFFD"
    );
}

/// A parser's `fold` rule folded a line into the event of an earlier line (e.g. libpq's
/// retry without SSL of a failed login).
pub fn folded(source: &str, parser: &str) {
    counters().lines_folded.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(
        source,
        parser,
        "line repeats the event of an earlier line; folded into it"
    );
}

/// A parser matched a line but could not read its time: the event carries the syslog
/// header's time or the read time, flagged `time-unreadable`. `position` names the stream
/// and offset, so the line can be found; the line itself is not logged (it may hold PHI).
pub fn time_unreadable(source: &str, parser: &str, position: &str) {
    counters()
        .lines_time_unreadable
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        source,
        parser,
        position,
        "line's time unreadable (time_format does not fit, or no time in the line); event stamped with the header or read time and flagged time-unreadable"
    );
}

/// No parser matched a line.
pub fn unmatched(source: &str) {
    unmatched_by(source, "");
}

/// No parser of `parsers` (the source's list, comma-separated, e.g. `"sshd,sudo"`) matched
/// a line: counted per source and parser list for `/metrics` (SPEC §5).
pub fn unmatched_by(source: &str, parsers: &str) {
    if let Ok(mut m) = counters().unmatched.lock() {
        *m.entry((source.to_owned(), parsers.to_owned()))
            .or_default() += 1;
    }
    tracing::trace!(source, parsers, "line matched no parser");
}

/// The output accepted a Bundle `seconds` after it was handed over (retries included).
pub fn delivery_latency(seconds: f64) {
    if let Ok(mut h) = counters().latency.lock() {
        h.observe(seconds);
    }
}

/// An event was produced.
pub fn event(pattern: &str) {
    counters().events.fetch_add(1, Ordering::Relaxed);
    bump(&counters().by_pattern, pattern, 1);
}

/// An event was emitted without a BALP profile it would otherwise claim, because the line
/// lacked an element the profile requires (best effort: the event itself is kept).
pub fn profile_downgraded(profile: &str, reason: &str) {
    bump(&counters().downgrades, &format!("{profile}: {reason}"), 1);
    tracing::trace!(
        profile,
        reason,
        "profile withheld: required element missing"
    );
}

/// The output accepted a Bundle.
pub fn bundle_sent(bundle_id: &str, events: usize, target: &str) {
    counters().bundles_sent.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(bundle_id, events, target, "bundle delivered");
}

/// A Bundle's delivery failed for the first time (it is kept and retried; see `retry`).
pub fn bundle_failed() {
    counters().bundles_failed.fetch_add(1, Ordering::Relaxed);
}

/// A delivery attempt failed and will be retried.
pub fn retry(bundle_id: &str, target: &str, reason: &str, wait_ms: u64) {
    counters().retries.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        bundle_id,
        target,
        reason,
        wait_ms,
        "delivery failed; retrying"
    );
}

/// A Bundle was rejected for its content and put in the dead-letter area.
pub fn dead_lettered(bundle_id: &str, events: usize, target: &str, status: u16, file: &str) {
    counters().dead_lettered.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        bundle_id,
        events,
        target,
        status,
        file,
        "bundle rejected; dead-lettered"
    );
}

/// The positions file could not be written.
pub fn position_write_failed(path: &str, error: &str) {
    counters()
        .position_write_failures
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(path, error, "could not persist read positions");
}

/// Syslog messages were dropped because the channel to the pipeline was full (UDP cannot
/// wait). Counted at once; the warning comes from [`syslog_drops_summary`].
pub fn syslog_dropped(listen: &str, n: u64) {
    counters().syslog_dropped.fetch_add(n, Ordering::Relaxed);
    tracing::debug!(
        listen,
        dropped = n,
        "syslog messages dropped: pipeline busy"
    );
}

/// Periodic warning about the drops of one listener since the previous warning.
pub fn syslog_drops_summary(listen: &str, dropped: u64, total: u64) {
    tracing::warn!(
        listen,
        dropped,
        total,
        "syslog messages dropped because the pipeline is not keeping up (UDP has no backpressure)"
    );
}

/// A syslog connection was refused because `max_connections` were open.
pub fn syslog_connection_refused(listen: &str, peer: &str, max: usize) {
    counters()
        .syslog_connections_refused
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        listen,
        peer,
        max_connections = max,
        "syslog connection refused: max_connections reached"
    );
}

/// The rules in force: each gets its counter at 0, so `/metrics` shows every rule.
pub fn alert_rules<'a>(names: impl IntoIterator<Item = &'a str>) {
    for n in names {
        bump(&counters().alerts, n, 0);
    }
}

/// A rule raised an alert (a Security Alert event of the agent's own, spooled with the
/// events that triggered it). The key and the events are in the alert itself, not here:
/// they may name users and patients.
pub fn alert(rule: &str, kind: &str) {
    bump(&counters().alerts, rule, 1);
    tracing::info!(rule, kind, "alert raised");
}

/// The alert state file could not be written; positions are not saved until it is.
pub fn alert_state_write_failed(error: &str) {
    counters()
        .alert_state_write_failures
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        error,
        "could not persist the alert state; read positions wait for it"
    );
}

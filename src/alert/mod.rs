//! Discrepancy alerts: the agent watches the events it makes and raises DCM 110113 Security
//! Alert AuditEvents itself (issue #18, docs/alerts.md).
//!
//! In: one [`AlertFact`] per mapped event (event id, the line's time, kind, user, address,
//! patient, source), built by the per-source processor from the event it just mapped, and
//! the wall-clock time each source last produced a line. Out: [`Alert`]s, each a spool
//! record appended in the same chunk (and so the same group commit) as the events that
//! triggered it.
//!
//! Guarantees:
//! * windows run on event time, so a replay, `balp-agent test` and a re-read after a crash
//!   raise the same alerts; only `silent-source` uses the wall clock (never in `--once` or
//!   `test`, and never before `silent_after` has passed since the start);
//! * windows hold distinct event ids, and a window's content is a function of the set of
//!   facts it saw, not of their order or repetition: re-reading lines changes nothing;
//! * an alert's id is a UUIDv5 of rule, key and its first triggering event id: a re-raised
//!   alert is the same event (the ARR stores it once);
//! * once per incident: after an alert, further matching events for the same key only keep
//!   the incident open; it ends after `cooldown` of event time without one;
//! * the state ([`AlertEngine::save`]) is written before the positions file and covers every
//!   line the positions cover; an incident whose alert is not yet durable in the spool is
//!   saved as the window that raised it, so a crash re-raises it (same id) instead of losing
//!   it;
//! * memory is bounded: at most `threshold` entries per key, at most `max_keys` keys per
//!   rule (expired keys go first, then the least recently active).

pub mod event;
pub mod rules;
mod state;

use crate::balp::model::{AuditEvent, Outcome};
use crate::balp::{EventRecord, ID_NAMESPACE, MapContext, codes};
use crate::config::{AlertRuleKind, Config};
use crate::parse::Pattern;
use event::AlertSpec;
use jiff::Timestamp;
use rules::{By, Rule};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

pub use state::AlertStateError;

/// What an event is, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactKind {
    /// A successful login.
    LoginSuccess,
    /// A failed login.
    LoginFailure,
    /// A read of data (REST read/vread, an explicit read).
    Read,
    /// A query / search.
    Query,
    /// Any other access to data (create, update, delete, disclosure, database access).
    Access,
    /// Not an access (logout, security alerts of the source itself).
    Other,
}

impl FactKind {
    /// Whether this is an access for `off-hours` and `watchlist` (failed logins are not:
    /// the burst rules watch those).
    pub fn is_access(self) -> bool {
        matches!(
            self,
            FactKind::LoginSuccess | FactKind::Read | FactKind::Query | FactKind::Access
        )
    }
}

/// One event, narrowed to what the rules read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertFact {
    /// The event's id.
    pub event_id: Uuid,
    /// When it happened (the line's time; the read time when the line had none).
    pub time: Timestamp,
    /// What it is.
    pub kind: FactKind,
    /// The requesting user.
    pub user: Option<String>,
    /// The client's network address.
    pub address: Option<String>,
    /// The patient (events are one per patient).
    pub patient: Option<String>,
    /// The configured source name.
    pub source: Arc<str>,
}

impl AlertFact {
    /// The fact of an event the mapper just made from a line of `pattern`; `address` is the
    /// client address the mapper used (the event's agents name it in a role that depends on
    /// the direction of the data, so it is not read back from them).
    pub fn of_event(
        ev: &AuditEvent,
        pattern: Pattern,
        time: Timestamp,
        source: &Arc<str>,
        address: Option<&str>,
    ) -> AlertFact {
        let subtype = |system: &str, code: &str| ev.subtype.iter().any(|c| c.is(system, code));
        let kind = match pattern {
            Pattern::Login => match ev.outcome {
                Some(Outcome::Success) | None => FactKind::LoginSuccess,
                Some(_) => FactKind::LoginFailure,
            },
            Pattern::Logout | Pattern::SecurityAlert => FactKind::Other,
            Pattern::Read => FactKind::Read,
            Pattern::Query => FactKind::Query,
            Pattern::Rest => {
                let ri = codes::SYS_RESTFUL_INTERACTION;
                if subtype(ri, "read") || subtype(ri, "vread") {
                    FactKind::Read
                } else if subtype(ri, "search")
                    || subtype(ri, "search-type")
                    || subtype(ri, "search-system")
                {
                    FactKind::Query
                } else {
                    FactKind::Access
                }
            }
            Pattern::Create
            | Pattern::Update
            | Pattern::Delete
            | Pattern::Disclosure
            | Pattern::DisclosureReceived
            | Pattern::Database => FactKind::Access,
        };
        let user = ev
            .agent
            .iter()
            .find(|a| a.requestor)
            .and_then(|a| a.who.as_ref())
            .and_then(|w| w.identifier.as_ref())
            .and_then(|i| i.value.clone());
        let patient = ev
            .entity
            .iter()
            .filter(|e| {
                e.role
                    .as_ref()
                    .is_some_and(|r| r.is(codes::SYS_OBJECT_ROLE, "1"))
            })
            .find_map(|e| {
                e.what
                    .as_ref()?
                    .reference
                    .as_deref()?
                    .strip_prefix("Patient/")
            })
            .map(str::to_owned);
        AlertFact {
            event_id: ev.uuid(),
            time,
            kind,
            user,
            address: address.map(str::to_owned),
            patient,
            source: source.clone(),
        }
    }
}

/// An alert raised, ready to be spooled.
#[derive(Debug, Clone)]
pub struct Alert {
    /// The rule's instance name.
    pub rule: String,
    /// The AuditEvent.
    pub record: EventRecord,
    slot: Slot,
}

/// Where the incident of an alert lives (to note its spool seq).
#[derive(Debug, Clone)]
enum Slot {
    Keys { rule: usize, keys: Vec<String> },
    Silent { rule: usize, source: String },
}

/// Seq of an incident whose alert is not in the spool yet.
const PENDING: u64 = u64::MAX;

/// One event in a window.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    /// Event time, ms since the epoch.
    ms: i64,
    id: Uuid,
    /// The patient (`many-patients` counts distinct patients).
    patient: Option<String>,
}

/// An open incident: its alert was raised; matching events only keep it open.
#[derive(Debug, Clone)]
struct Incident {
    alert: Uuid,
    /// Event time of the last matching event, ms.
    last_ms: i64,
    /// Spool seq of the alert ([`PENDING`] until appended; 0 when loaded: durable).
    seq: u64,
    /// The window that raised it, put back in a saved state while the alert is not durable.
    restore: Vec<Entry>,
}

#[derive(Debug, Clone, Default)]
struct KeyState {
    /// Oldest first, distinct ids, at most `threshold`.
    entries: Vec<Entry>,
    incident: Option<Incident>,
}

impl KeyState {
    /// Latest event time this key saw.
    fn active_ms(&self) -> i64 {
        let e = self.entries.last().map_or(i64::MIN, |e| e.ms);
        let i = self.incident.as_ref().map_or(i64::MIN, |i| i.last_ms);
        e.max(i)
    }
}

/// A silent source's alert.
#[derive(Debug, Clone)]
struct Silence {
    /// The last line time (wall clock, ms) the alert was raised for.
    last_line_ms: i64,
    seq: u64,
}

struct RuleState {
    rule: Rule,
    keys: BTreeMap<String, KeyState>,
    silent: BTreeMap<String, Silence>,
    /// Latest event time seen by the rule, ms (the clock of expiry).
    now_ms: i64,
    since_sweep: u32,
    /// Alerts raised since start.
    raised: u64,
}

/// Facts between sweeps of expired keys.
const SWEEP_EVERY: u32 = 4096;

/// The rules and their windows.
pub struct AlertEngine {
    rules: Vec<RuleState>,
    ctx: MapContext,
    /// Wall clock, ms, of the last line per source.
    last_line: BTreeMap<String, i64>,
    /// Wall clock at start, ms: no source is silent for longer than since then.
    started_ms: i64,
    /// Where the state is saved (None: `balp-agent test`, nothing kept).
    path: Option<PathBuf>,
    /// Read position up to which each stream's lines went through the rules, per source and
    /// stream key (the spool's own positions are not allowed past it at a start).
    coverage: BTreeMap<String, BTreeMap<String, u64>>,
    /// A state file was loaded (else there is no coverage to hold positions to).
    loaded: bool,
    /// Per source and stream key: lines up to this read position are in the spool already
    /// and are read again only for the rules (their events are not spooled again).
    replay_until: BTreeMap<String, BTreeMap<String, u64>>,
    dirty: bool,
    event_rules: bool,
    silent_rules: bool,
}

/// The state file under `state_dir`.
pub const STATE_FILE: &str = "alerts.json";

fn ms(ts: Timestamp) -> i64 {
    ts.as_millisecond()
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The deterministic id of the alert of `rule` for `key` whose first triggering event is
/// `first`.
pub fn alert_id(rule: &str, key: &str, first: &str) -> Uuid {
    let name = format!("alert\u{1f}{rule}\u{1f}{key}\u{1f}{first}");
    crate::balp::uuid_v5(&ID_NAMESPACE, name.as_bytes())
}

fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        _ if s.is_multiple_of(86400) => format!("{}d", s / 86400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

impl AlertEngine {
    /// The engine for `config`'s rules, with no state (`balp-agent test`).
    pub fn new(config: &Config) -> Result<AlertEngine, Vec<String>> {
        let rules = rules::from_config(config)?;
        crate::events::alert_rules(rules.iter().map(|r| r.name.as_str()));
        let event_rules = rules.iter().any(|r| r.kind != AlertRuleKind::SilentSource);
        let silent_rules = rules.iter().any(|r| r.kind == AlertRuleKind::SilentSource);
        Ok(AlertEngine {
            rules: rules
                .into_iter()
                .map(|rule| RuleState {
                    rule,
                    keys: BTreeMap::new(),
                    silent: BTreeMap::new(),
                    now_ms: i64::MIN,
                    since_sweep: 0,
                    raised: 0,
                })
                .collect(),
            ctx: crate::pipeline::map_context(config, "alerts", Vec::new()),
            last_line: BTreeMap::new(),
            started_ms: ms(Timestamp::now()),
            path: None,
            coverage: BTreeMap::new(),
            loaded: false,
            replay_until: BTreeMap::new(),
            dirty: false,
            event_rules,
            silent_rules,
        })
    }

    /// The engine for `run`: state loaded from `state_dir/alerts.json` (a missing file is no
    /// state; a corrupt one is logged and ignored, like a first start). `spool_next_seq` is
    /// the seq the reopened spool appends next: an incident whose alert has a seq below it
    /// is in the spool (or delivered); one at or above it was lost with its commit and goes
    /// back to the window that raised it.
    pub fn open(
        config: &Config,
        state_dir: &Path,
        spool_next_seq: u64,
    ) -> Result<AlertEngine, Vec<String>> {
        let mut engine = AlertEngine::new(config)?;
        let path = state_dir.join(STATE_FILE);
        match state::load(&path) {
            Ok(Some(saved)) => {
                engine.restore(saved, spool_next_seq);
                engine.loaded = true;
                // A source removed from the config is not silent, only gone.
                engine.last_line.retain(|s, _| config.source(s).is_some());
            }
            // Written at once (before any line is read), so that a crash before the first
            // regular save still finds a state whose coverage holds positions back.
            Ok(None) => engine.dirty = true,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "alerts: state unreadable; windows start empty (alerts already raised may be raised again, with the same ids)"
                );
                engine.dirty = true;
            }
        }
        engine.path = Some(path);
        Ok(engine)
    }

    /// Whether any rule reads event facts (else the processors need not build them).
    pub fn wants_facts(&self) -> bool {
        self.event_rules
    }

    /// Whether nothing is configured at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The lines of a stream up to read position `end` went through the rules.
    pub fn covered(&mut self, source: &str, key: &str, end: u64) {
        if !self.event_rules {
            return;
        }
        match self.coverage.get_mut(source) {
            Some(streams) => match streams.get_mut(key) {
                Some(e) => *e = (*e).max(end),
                None => {
                    streams.insert(key.to_owned(), end);
                }
            },
            None => {
                self.coverage
                    .insert(source.to_owned(), BTreeMap::from([(key.to_owned(), end)]));
            }
        }
    }

    /// How far a start may advance a stream's read position to what the spool holds: the
    /// saved state must have seen those lines, or their facts would be missing from the
    /// windows (they are read again instead, and their events spooled again with the same
    /// ids). None: no limit (no event rules, or no state file yet).
    pub fn position_cap(&self, source: &str, key: &str) -> Option<u64> {
        if !self.event_rules || !self.loaded {
            return None;
        }
        Some(
            self.coverage
                .get(source)
                .and_then(|s| s.get(key))
                .copied()
                .unwrap_or(0),
        )
    }

    /// The spool holds the events of the stream's lines up to `end`, past what the windows
    /// saw: those lines are read again for the rules only ([`replayed`](Self::replayed)).
    pub fn replay(&mut self, source: &str, key: &str, end: u64) {
        self.replay_until
            .entry(source.to_owned())
            .or_default()
            .insert(key.to_owned(), end);
    }

    /// The streams read again for the rules at this start, with the offset each replay ends.
    pub fn replay_targets(&self) -> Vec<(String, String, u64)> {
        self.replay_until
            .iter()
            .flat_map(|(s, keys)| keys.iter().map(|(k, u)| (s.clone(), k.clone(), *u)))
            .collect()
    }

    /// Whether the line ending at `end` is one whose events the spool holds already (read
    /// again only for the rules: its events must not be spooled twice).
    pub fn replayed(&mut self, source: &str, key: &str, end: u64) -> bool {
        if self.replay_until.is_empty() {
            return false;
        }
        let Some(streams) = self.replay_until.get_mut(source) else {
            return false;
        };
        let Some(&until) = streams.get(key) else {
            return false;
        };
        if end <= until {
            return true;
        }
        streams.remove(key);
        if streams.is_empty() {
            self.replay_until.remove(source);
        }
        false
    }

    /// Alerts raised since start, per rule name (every rule in force, zeros included).
    pub fn raised(&self) -> BTreeMap<String, u64> {
        self.rules
            .iter()
            .map(|r| (r.rule.name.clone(), r.raised))
            .collect()
    }

    /// A line of `source` was read at wall-clock `now` (for `silent-source`).
    pub fn line_seen(&mut self, source: &str, now: Timestamp) {
        if !self.silent_rules {
            return;
        }
        let now = ms(now);
        // Silences are minutes or hours: a second's precision is saved, not every line.
        let changed = match self.last_line.get_mut(source) {
            Some(t) if now > *t => {
                let moved = now - *t >= 1000;
                *t = now;
                moved
            }
            Some(_) => false,
            None => {
                self.last_line.insert(source.to_owned(), now);
                true
            }
        };
        for r in &mut self.rules {
            if r.rule.kind == AlertRuleKind::SilentSource && !r.silent.is_empty() {
                r.silent.remove(source);
            }
        }
        if changed {
            self.dirty = true;
        }
    }

    /// Sources silent for longer than their rule allows at wall-clock `now`: one alert per
    /// silence (it ends with the source's next line).
    pub fn check_silent(&mut self, now: Timestamp) -> Vec<Alert> {
        let now = ms(now);
        let mut out = Vec::new();
        for (ri, r) in self.rules.iter_mut().enumerate() {
            if r.rule.kind != AlertRuleKind::SilentSource {
                continue;
            }
            let after = i64::try_from(r.rule.silent_after.as_millis()).unwrap_or(i64::MAX);
            for (source, &last) in &self.last_line {
                let alerted = r.silent.get(source).is_some_and(|s| s.last_line_ms == last);
                if !r.rule.covers(source) || alerted {
                    continue;
                }
                // Time the agent was not running is not the source's silence.
                let since = last.max(self.started_ms);
                if now.saturating_sub(since) < after {
                    continue;
                }
                let key = format!("source:{source}");
                let id = alert_id(&r.rule.name, &key, &last.to_string());
                // From the last line, not from the start: a re-raise is the same event.
                let due = last.saturating_add(after);
                let spec = AlertSpec {
                    id,
                    rule: &r.rule.name,
                    kind: r.rule.kind,
                    key: &key,
                    user: None,
                    address: None,
                    patient: None,
                    events: &[],
                    period: (at(last), at(due)),
                    description: format!(
                        "source {source:?} has produced no line for {} (last line read {})",
                        human(r.rule.silent_after),
                        at(last)
                    ),
                    details: vec![
                        ("rule", r.rule.kind.as_str().to_owned()),
                        ("key", key.clone()),
                        ("silent_after", human(r.rule.silent_after)),
                    ],
                };
                out.push(Alert {
                    rule: r.rule.name.clone(),
                    record: event::record(&self.ctx, &spec),
                    slot: Slot::Silent {
                        rule: ri,
                        source: source.clone(),
                    },
                });
                r.silent.insert(
                    source.clone(),
                    Silence {
                        last_line_ms: last,
                        seq: PENDING,
                    },
                );
                r.raised += 1;
                crate::events::alert(&r.rule.name, r.rule.kind.as_str());
                self.dirty = true;
            }
        }
        out
    }

    /// The alert was appended to the spool as record `seq`.
    pub fn spooled(&mut self, alert: &Alert, seq: u64) {
        match &alert.slot {
            Slot::Keys { rule, keys } => {
                let Some(r) = self.rules.get_mut(*rule) else {
                    return;
                };
                for key in keys {
                    if let Some(inc) = r.keys.get_mut(key).and_then(|k| k.incident.as_mut()) {
                        inc.seq = seq;
                    }
                }
            }
            Slot::Silent { rule, source } => {
                if let Some(s) = self
                    .rules
                    .get_mut(*rule)
                    .and_then(|r| r.silent.get_mut(source))
                {
                    s.seq = seq;
                }
            }
        }
    }

    /// Run one fact through every rule; the alerts it raises (at most one per rule: a fact
    /// that completes the windows of several keys of a rule, e.g. its user's and its
    /// address's, raises one alert naming both).
    pub fn observe(&mut self, fact: &AlertFact) -> Vec<Alert> {
        let mut out = Vec::new();
        if !self.event_rules {
            return out;
        }
        let t = ms(fact.time);
        for (ri, r) in self.rules.iter_mut().enumerate() {
            if r.rule.kind == AlertRuleKind::SilentSource || !r.rule.covers(&fact.source) {
                continue;
            }
            if fact
                .user
                .as_ref()
                .is_some_and(|u| r.rule.ignore_users.contains(u))
            {
                continue;
            }
            let keys = rule_keys(&r.rule, fact);
            if keys.is_empty() {
                continue;
            }
            r.now_ms = r.now_ms.max(t);
            let hits: Vec<Hit> = keys
                .into_iter()
                .filter_map(|key| check_key(r, key, fact))
                .collect();
            if !hits.is_empty() {
                let alert = raise(&self.ctx, r, ri, hits, fact);
                r.raised += 1;
                crate::events::alert(&alert.rule, r.rule.kind.as_str());
                out.push(alert);
            }
            r.since_sweep += 1;
            if r.since_sweep >= SWEEP_EVERY || r.keys.len() > r.rule.max_keys {
                sweep(r);
            }
            self.dirty = true;
        }
        out
    }

    /// Save the state if it changed: atomically, before the positions file is written.
    /// Incidents are saved with their alert's spool seq; those above `durable_seq` (not yet
    /// fsynced) also with the window that raised them, which [`open`](Self::open) puts back
    /// if the spool lost that alert, so that re-reading their lines raises it again.
    pub fn save(&mut self, durable_seq: u64) -> Result<(), AlertStateError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        for r in &mut self.rules {
            sweep(r);
        }
        let saved = self.snapshot(durable_seq);
        state::save(&path, saved)?;
        // Still dirty while an alert waits for its commit: the next save must record it.
        self.dirty = self.rules.iter().any(|r| {
            r.keys
                .values()
                .any(|k| k.incident.as_ref().is_some_and(|i| i.seq > durable_seq))
                || r.silent.values().any(|s| s.seq > durable_seq)
        });
        Ok(())
    }
}

fn by_key(by: By, fact: &AlertFact) -> Option<String> {
    let v = match by {
        By::User => fact.user.as_deref()?,
        By::Address => fact.address.as_deref()?,
    };
    Some(format!("{}:{v}", by.as_str()))
}

/// The keys of `rule` this fact counts for (none: the rule ignores it).
fn rule_keys(rule: &Rule, fact: &AlertFact) -> Vec<String> {
    let by_all = || rule.by.iter().filter_map(|b| by_key(*b, fact)).collect();
    match rule.kind {
        AlertRuleKind::FailedLoginBurst if fact.kind == FactKind::LoginFailure => by_all(),
        AlertRuleKind::SuccessAfterFailures
            if matches!(fact.kind, FactKind::LoginFailure | FactKind::LoginSuccess) =>
        {
            by_all()
        }
        AlertRuleKind::ManyPatients
            if matches!(fact.kind, FactKind::Read | FactKind::Query) && fact.patient.is_some() =>
        {
            by_key(By::User, fact).into_iter().collect()
        }
        AlertRuleKind::OffHours
            if fact.kind.is_access()
                && rule.calendar.as_ref().is_some_and(|c| c.outside(fact.time)) =>
        {
            by_key(By::User, fact)
                .or_else(|| by_key(By::Address, fact))
                .into_iter()
                .collect()
        }
        AlertRuleKind::Watchlist if fact.kind.is_access() => {
            let patient = fact.patient.as_ref().filter(|p| rule.patients.contains(*p));
            let user = fact.user.as_ref().filter(|u| rule.users.contains(*u));
            let key = match (patient, user, &fact.user) {
                (Some(p), _, Some(u)) => Some(format!("patient:{p} user:{u}")),
                (Some(p), _, None) => Some(format!("patient:{p}")),
                (None, Some(u), _) => Some(format!("user:{u}")),
                (None, None, _) => None,
            };
            key.into_iter().collect()
        }
        _ => Vec::new(),
    }
}

/// A key whose window (or single event) calls for an alert.
struct Hit {
    key: String,
    /// The window that completed (cleared from the key; kept to restore).
    window: Vec<Entry>,
    /// The event that raised it without being part of the window (a success, a single
    /// access).
    trigger: Option<Entry>,
    description: String,
}

/// Open incident of a key: a matching event keeps it open (true); after `cooldown` of
/// quiet it is over (false, and closed).
fn in_incident(ks: &mut KeyState, t: i64, cooldown_ms: i64) -> bool {
    if let Some(inc) = &mut ks.incident {
        if t <= inc.last_ms.saturating_add(cooldown_ms) {
            inc.last_ms = inc.last_ms.max(t);
            return true;
        }
        ks.incident = None;
    }
    false
}

/// Add the fact to the key's window; a hit if that completes it.
fn check_key(r: &mut RuleState, key: String, fact: &AlertFact) -> Option<Hit> {
    let (threshold, window, cooldown) = limits(&r.rule);
    let label = human(r.rule.window);
    let kind = r.rule.kind;
    let ks = r.keys.entry(key.clone()).or_default();
    let t = ms(fact.time);
    if in_incident(ks, t, cooldown) {
        return None;
    }
    let who = describe_key(&key);
    match kind {
        AlertRuleKind::FailedLoginBurst => {
            insert(&mut ks.entries, entry(fact, None), threshold, window, false);
            (ks.entries.len() >= threshold).then(|| Hit {
                description: format!(
                    "{} failed logins for {who} within {label}",
                    ks.entries.len()
                ),
                window: ks.entries.clone(),
                trigger: None,
                key,
            })
        }
        AlertRuleKind::SuccessAfterFailures => {
            if fact.kind == FactKind::LoginFailure {
                insert(&mut ks.entries, entry(fact, None), threshold, window, false);
                return None;
            }
            let failures: Vec<Entry> = ks
                .entries
                .iter()
                .filter(|e| e.ms <= t && e.ms >= t.saturating_sub(window))
                .cloned()
                .collect();
            (failures.len() >= threshold).then(|| Hit {
                description: format!(
                    "successful login for {who} after {} failed logins within {label}",
                    failures.len()
                ),
                window: failures,
                trigger: Some(entry(fact, None)),
                key,
            })
        }
        AlertRuleKind::ManyPatients => {
            let e = entry(fact, fact.patient.clone());
            insert(&mut ks.entries, e, threshold, window, true);
            (ks.entries.len() >= threshold).then(|| Hit {
                description: format!(
                    "{who} accessed {} distinct patients within {label}",
                    ks.entries.len()
                ),
                window: ks.entries.clone(),
                trigger: None,
                key,
            })
        }
        AlertRuleKind::OffHours | AlertRuleKind::Watchlist => {
            let what = match fact.kind {
                FactKind::LoginSuccess => "login",
                FactKind::Read => "read",
                FactKind::Query => "query",
                _ => "access",
            };
            let description = if kind == AlertRuleKind::OffHours {
                format!("{what} by {who} outside working hours at {}", fact.time)
            } else {
                format!("{what} involving watched {who}")
            };
            // One event raises it, no window: a re-read of that line raises it again.
            Some(Hit {
                key,
                window: Vec::new(),
                trigger: Some(entry(fact, None)),
                description,
            })
        }
        AlertRuleKind::SilentSource => None,
    }
}

/// The user and address an alert is about: those its keys name, else the fact's (for the
/// rules whose key is not the whole story).
fn subject(
    kind: AlertRuleKind,
    keys: &[&str],
    fact_user: Option<&str>,
    fact_addr: Option<&str>,
) -> (Option<String>, Option<String>) {
    let mut user = None;
    let mut address = None;
    for k in keys {
        for part in k.split(' ') {
            match part.split_once(':') {
                Some(("user", u)) => user = Some(u.to_owned()),
                Some(("address", a)) => address = Some(a.to_owned()),
                _ => {}
            }
        }
    }
    if !matches!(kind, AlertRuleKind::FailedLoginBurst) {
        user = user.or_else(|| fact_user.map(str::to_owned));
        if kind != AlertRuleKind::ManyPatients {
            address = address.or_else(|| fact_addr.map(str::to_owned));
        }
    }
    (user, address)
}

fn describe_key(key: &str) -> String {
    match key.split_once(':') {
        Some(("user", u)) => format!("user {u:?}"),
        Some(("address", a)) => format!("address {a}"),
        Some(("patient", rest)) => match rest.split_once(" user:") {
            Some((p, u)) => format!("patient {p:?} by user {u:?}"),
            None => format!("patient {rest:?}"),
        },
        _ => key.to_owned(),
    }
}

fn limits(rule: &Rule) -> (usize, i64, i64) {
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    (rule.threshold, ms(rule.window), ms(rule.cooldown))
}

fn entry(fact: &AlertFact, patient: Option<String>) -> Entry {
    Entry {
        ms: ms(fact.time),
        id: fact.event_id,
        patient,
    }
}

/// Add `e` to a window: distinct ids (and with `by_patient`, one entry per patient, its
/// latest), older than `window` before the newest dropped, at most `cap` (the newest).
/// The result depends only on the set of entries ever added, not on their order.
fn insert(entries: &mut Vec<Entry>, e: Entry, cap: usize, window: i64, by_patient: bool) {
    if entries.iter().any(|x| x.id == e.id) {
        return;
    }
    if by_patient && let Some(i) = entries.iter().position(|x| x.patient == e.patient) {
        if entries[i] >= e {
            return;
        }
        entries.remove(i);
    }
    let at = entries.partition_point(|x| *x < e);
    entries.insert(at, e);
    if let Some(newest) = entries.last().map(|x| x.ms) {
        let floor = newest.saturating_sub(window);
        entries.retain(|x| x.ms >= floor);
    }
    if entries.len() > cap {
        let extra = entries.len() - cap;
        entries.drain(..extra);
    }
}

/// Open the incidents of the hits (one alert for all of them) and make the alert.
fn raise(
    ctx: &MapContext,
    r: &mut RuleState,
    ri: usize,
    hits: Vec<Hit>,
    fact: &AlertFact,
) -> Alert {
    let mut all: Vec<&Entry> = hits
        .iter()
        .flat_map(|h| h.window.iter().chain(h.trigger.iter()))
        .collect();
    all.sort();
    all.dedup_by(|a, b| a.id == b.id);
    let events: Vec<(Timestamp, Uuid)> = all.iter().map(|e| (at(e.ms), e.id)).collect();
    let first_ms = all.first().map_or(0, |e| e.ms);
    let last_ms = all.iter().map(|e| e.ms).max().unwrap_or(first_ms);
    let first = all.first().map(|e| e.id).unwrap_or_default();
    let keys: Vec<&str> = hits.iter().map(|h| h.key.as_str()).collect();
    let key = keys.join(" ");
    let id = alert_id(&r.rule.name, &key, &first.to_string());
    let (user, address) = subject(
        r.rule.kind,
        &keys,
        fact.user.as_deref(),
        fact.address.as_deref(),
    );
    let patient = (r.rule.kind == AlertRuleKind::Watchlist)
        .then_some(fact.patient.as_deref())
        .flatten()
        .filter(|p| r.rule.patients.contains(*p));
    let mut details = vec![
        ("rule", r.rule.kind.as_str().to_owned()),
        ("key", key.clone()),
        ("count", events.len().to_string()),
    ];
    if !r.rule.window.is_zero() {
        details.push(("threshold", r.rule.threshold.to_string()));
        details.push(("window", human(r.rule.window)));
    }
    details.push(("cooldown", human(r.rule.cooldown)));
    let description = hits
        .iter()
        .map(|h| h.description.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let spec = AlertSpec {
        id,
        rule: &r.rule.name,
        kind: r.rule.kind,
        key: &key,
        user: user.as_deref(),
        address: address.as_deref(),
        patient,
        events: &events,
        period: (at(first_ms), at(last_ms)),
        description,
        details,
    };
    let record = event::record(ctx, &spec);
    let mut slot_keys = Vec::new();
    for h in hits {
        let ks = r.keys.entry(h.key.clone()).or_default();
        ks.entries.clear();
        ks.incident = Some(Incident {
            alert: id,
            last_ms,
            seq: PENDING,
            restore: h.window,
        });
        slot_keys.push(h.key);
    }
    Alert {
        rule: r.rule.name.clone(),
        record,
        slot: Slot::Keys {
            rule: ri,
            keys: slot_keys,
        },
    }
}

/// Drop keys that can no longer matter (window expired, incident over), then, above
/// `max_keys`, the least recently active.
fn sweep(r: &mut RuleState) {
    r.since_sweep = 0;
    let (_, window, cooldown) = limits(&r.rule);
    let now = r.now_ms;
    r.keys.retain(|_, k| {
        let live_window = k
            .entries
            .last()
            .is_some_and(|e| e.ms >= now.saturating_sub(window));
        let live_incident = k
            .incident
            .as_ref()
            .is_some_and(|i| i.seq == PENDING || i.last_ms.saturating_add(cooldown) >= now);
        live_window || live_incident
    });
    let max = r.rule.max_keys;
    if r.keys.len() > max {
        let mut by_age: Vec<(i64, String)> = r
            .keys
            .iter()
            .map(|(k, s)| (s.active_ms(), k.clone()))
            .collect();
        by_age.sort();
        let extra = r.keys.len() - max;
        for (_, k) in by_age.into_iter().take(extra) {
            r.keys.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests;

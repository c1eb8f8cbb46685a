//! BALP mapping: [`Extracted`](crate::parse::Extracted) records become FHIR R4 AuditEvents that
//! follow the IHE Basic Audit Log Patterns (see `../shared/balp/REFERENCE.md`).
//!
//! * [`model`]: a typed serde model of R4 AuditEvent (Coding vs CodeableConcept vs code are
//!   distinct types, so a wrong shape does not compile).
//! * [`codes`]: the systems and codes BALP uses.
//! * [`map`]: one extracted record → zero or more events (one per patient).
//! * [`conformance`]: a table-driven checker of every profile an event claims.
//! * [`token`]: OAuth/SAML token add-ons on the user agent and their profiles.
//! * [`database`]: database access events (no BALP profile) and SQL redaction.
//! * [`selfaudit`]: the agent's own start/stop events.

pub mod agents;
pub mod codes;
pub mod conformance;
pub mod database;
pub mod disclosure;
#[cfg(test)]
mod ig_examples;
pub mod json;
pub mod map;
pub mod model;
pub mod parts;
#[cfg(test)]
mod proptests;
pub mod rest;
pub mod security;
pub mod selfaudit;
pub mod token;

pub use database::redact_sql;
pub use selfaudit::{AppActivity, self_audit};

/// Events emitted without a BALP profile they would otherwise claim, by `profile: reason`.
pub fn downgrades() -> std::collections::BTreeMap<String, u64> {
    crate::events::counters().downgrades()
}

use crate::config::Mode;
use crate::source::LineFlags;
use uuid::Uuid;

/// Namespace of the deterministic event ids (UUID v5). Changing it changes every id.
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_0c5e_2d3a_4f6e_9b8a_b41b_a1e7_0001);

/// Everything the mapping needs that does not come from the line.
#[derive(Debug, Clone)]
pub struct MapContext {
    /// The agent's host name (server name when the line has none; part of event ids).
    pub hostname: String,
    /// The configured source name (part of event ids).
    pub source: String,
    /// `source.observer.display`.
    pub observer_display: String,
    /// `source.site`.
    pub site: Option<String>,
    /// security-source-type code for `source.type`.
    pub source_type: String,
    /// minimal or comprehensive.
    pub mode: Mode,
    /// FHIR base paths; requests outside produce no event.
    pub fhir_bases: Vec<String>,
    /// Url of the root extension that carries the event id.
    pub event_id_extension: String,
}

/// The root extension that carries an event's id (`urn:uuid:<id>`), so the id survives an
/// ARR that assigns its own.
pub fn id_extension(url: &str, id: &Uuid) -> model::Extension {
    model::Extension {
        url: url.to_owned(),
        value_identifier: Some(model::Identifier {
            system: Some(codes::SYS_RFC3986.to_owned()),
            value: Some(format!("urn:uuid:{id}")),
            type_: None,
        }),
        value_codeable_concept: None,
    }
}

/// The deterministic id of the `index`-th event made from the line at `position`.
pub fn event_id(hostname: &str, source: &str, position: &str, index: usize) -> Uuid {
    use std::fmt::Write as _;
    thread_local! {
        // Every event needs one; a reused buffer spares the allocations of `format!`.
        static NAME: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    NAME.with_borrow_mut(|name| {
        name.clear();
        let _ = write!(
            name,
            "{hostname}\u{1f}{source}\u{1f}{position}\u{1f}{index}"
        );
        uuid_v5(&ID_NAMESPACE, name.as_bytes())
    })
}

/// `Uuid::new_v5`, with RustCrypto's SHA-1 (SHA-NI where the CPU has it) instead of the
/// uuid crate's portable sha1_smol: one per event, it was 1 % of the agent's CPU.
pub fn uuid_v5(namespace: &Uuid, name: &[u8]) -> Uuid {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(namespace.as_bytes());
    h.update(name);
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// One event ready for batching: its id and its compact JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The AuditEvent's id.
    pub id: Uuid,
    /// Pattern name (for counts).
    pub pattern: &'static str,
    /// Compact JSON of the AuditEvent.
    pub json: String,
    /// Its tamper-evidence leaf hash, when the producer made it from the model
    /// ([`to_record_with_leaf`]); `None`: the spool hashes the JSON.
    pub leaf: Option<crate::tamper::merkle::Hash>,
}

/// Where the line came from and what the source had to change, for ids and flags.
#[derive(Debug, Clone, Copy)]
pub struct LineRef<'a> {
    /// The line's stable position (`LogLine::position`).
    pub position: &'a str,
    /// Truncation / invalid UTF-8 flags.
    pub flags: LineFlags,
}

/// Serialize an event for batching.
pub fn to_record(event: &model::AuditEvent, pattern: crate::parse::Pattern) -> EventRecord {
    let json = json::audit_event(event);
    // Every event of every test (unit tests and the debug binary the integration tests run)
    // proves the hand-written JSON equal to serde's.
    debug_assert_eq!(
        Some(&json),
        serde_json::to_string(event).ok().as_ref(),
        "balp::json differs from serde_json"
    );
    EventRecord {
        id: event.uuid(),
        pattern: pattern.as_str(),
        json,
        leaf: None,
    }
}

/// [`to_record`] with the leaf hash made from the model's JCS form ([`json::audit_event_jcs`]),
/// several times cheaper than canonicalizing the JSON text (`[tamper]` on). Text the fast
/// form does not cover (anything naming `AuditEvent/`, which canonicalization may rewrite)
/// keeps the text path.
pub fn to_record_with_leaf(
    event: &model::AuditEvent,
    pattern: crate::parse::Pattern,
) -> EventRecord {
    let mut record = to_record(event, pattern);
    if memchr::memmem::find(record.json.as_bytes(), b"AuditEvent/").is_none() {
        let hash = crate::tamper::merkle::leaf_hash(json::audit_event_jcs(event).as_bytes());
        // Every event of every debug run proves the model's JCS form equal to the text's.
        debug_assert_eq!(
            hash,
            crate::spool::leaves::event_leaf_hash(&record.json),
            "balp::json::audit_event_jcs differs from the JCS of the JSON"
        );
        record.leaf = Some(hash);
    }
    record
}

#[cfg(test)]
mod id_tests {
    #[test]
    fn uuid_v5_equals_the_uuid_crates() {
        let ns = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_0fed_cba9_8765_4321);
        for n in 0..600usize {
            let name: Vec<u8> = (0..n).map(|i| (i * 31 + n) as u8).collect();
            assert_eq!(
                super::uuid_v5(&ns, &name),
                uuid::Uuid::new_v5(&ns, &name),
                "{n}"
            );
        }
    }
}

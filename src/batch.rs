//! Batching: a Bundle covers a contiguous range of spooled events, at most `max_events`
//! entries and `max_bytes` of JSON, and a partial range is cut once its oldest event has waited
//! `flush_interval` ([`BatchPolicy`]).
//!
//! Because a [`Batch`] is built from spool records only (their ids, JSON and append time), the
//! same range always yields a byte-identical Bundle with the same id: after a retry and after a
//! restart alike.

use crate::balp::EventRecord;
use crate::config::BundleType;
use crate::decode::Stamp;
use uuid::Uuid;

/// Namespace for Bundle ids (UUID v5 over the ids of the entries).
const BUNDLE_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_0c5e_2d3a_4f6e_9b8a_b41b_a1e7_0002);

/// Fixed JSON around each entry (with the comma before the next one) of a `batch` or
/// `transaction` Bundle, so the byte count is exact for those and an upper bound for a
/// `collection` (whose entries have no `request`).
const ENTRY_OVERHEAD: usize =
    r#"{"fullUrl":"urn:uuid:00000000-0000-0000-0000-000000000000","resource":},"#.len()
        + r#","request":{"method":"PUT","url":"AuditEvent/00000000-0000-0000-0000-000000000000"}"#
            .len();

/// A group of events that is delivered as one Bundle.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The events, in the order they were read.
    pub events: Vec<EventRecord>,
    /// Spool sequence numbers of the first and last event (for acknowledgement).
    pub seqs: Option<(u64, u64)>,
    /// The Bundle timestamp: when the first event was spooled (now, if unset).
    pub timestamp: Option<Stamp>,
    /// Approximate size of the Bundle JSON.
    pub bytes: usize,
}

/// When a range of spooled events becomes a Bundle.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Entries per Bundle at most.
    pub max_events: usize,
    /// Uncompressed JSON bytes per Bundle at most.
    pub max_bytes: usize,
    /// A partial Bundle goes out once its oldest event waited this long.
    pub flush_interval: std::time::Duration,
}

impl BatchPolicy {
    /// Should the pending range be cut now? `pending` events are durable and unsent, the oldest
    /// has waited `oldest_age`; `draining` cuts whatever is there.
    pub fn ready(&self, pending: u64, oldest_age: std::time::Duration, draining: bool) -> bool {
        pending > 0
            && (draining || pending >= self.max_events as u64 || oldest_age >= self.flush_interval)
    }
}

impl Batch {
    /// The Bundle id: derived from the entries, so the same events always form the same id
    /// (it is sent as `X-Request-Id` and stays stable across retries).
    pub fn id(&self) -> Uuid {
        let mut name = Vec::with_capacity(self.events.len() * 16);
        for e in &self.events {
            name.extend_from_slice(e.id.as_bytes());
        }
        crate::balp::uuid_v5(&BUNDLE_NAMESPACE, &name)
    }

    /// The Bundle as JSON (deterministic: same events and timestamp, same bytes).
    pub fn bundle_json(&self, bundle_type: BundleType) -> String {
        let ts = self.timestamp.unwrap_or_else(Stamp::now_utc);
        bundle_json(&self.id(), &self.events, bundle_type, &ts.to_instant())
    }

    /// A batch of spooled events (already in seq order).
    pub fn from_spooled(spooled: Vec<crate::spool::SpooledEvent>) -> Batch {
        let seqs = match (spooled.first(), spooled.last()) {
            (Some(a), Some(b)) => Some((a.seq, b.seq)),
            _ => None,
        };
        let timestamp = spooled.first().and_then(|e| {
            jiff::Timestamp::from_millisecond(e.appended_ms as i64)
                .ok()
                .map(|ts| Stamp {
                    ts,
                    offset: jiff::tz::Offset::UTC,
                })
        });
        let events: Vec<EventRecord> = spooled.into_iter().map(|e| e.record).collect();
        let bytes = events.iter().map(|e| e.json.len() + ENTRY_OVERHEAD).sum();
        Batch {
            events,
            seqs,
            timestamp,
            bytes,
        }
    }
}

/// Assemble a Bundle from already-serialized events (no re-serialization of the events).
///
/// `batch` and `transaction` entries are updates of the event's own id,
/// `request: {method: "PUT", url: "AuditEvent/<id>"}`: a redelivery (after a crash, a retry
/// whose answer was lost) overwrites the stored event instead of adding a copy, and servers
/// that assign their own id on create keep ours. `collection` entries carry no request.
pub fn bundle_json(
    id: &Uuid,
    events: &[EventRecord],
    bundle_type: BundleType,
    timestamp: &str,
) -> String {
    let size: usize = events.iter().map(|e| e.json.len() + ENTRY_OVERHEAD).sum();
    let mut out = String::with_capacity(size + 160);
    out.push_str(r#"{"resourceType":"Bundle","id":""#);
    out.push_str(&id.to_string());
    out.push_str(r#"","type":""#);
    out.push_str(bundle_type.as_str());
    out.push_str(r#"","timestamp":""#);
    out.push_str(timestamp);
    out.push_str(r#"","entry":["#);
    // Ids formatted into a stack buffer: no String per entry.
    let mut buf = uuid::Uuid::encode_buffer();
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let id: &str = e.id.hyphenated().encode_lower(&mut buf);
        out.push_str(r#"{"fullUrl":"urn:uuid:"#);
        out.push_str(id);
        out.push_str(r#"","resource":"#);
        out.push_str(&e.json);
        if bundle_type != BundleType::Collection {
            out.push_str(r#","request":{"method":"PUT","url":"AuditEvent/"#);
            out.push_str(id);
            out.push_str(r#""}"#);
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(n: u128, size: usize) -> EventRecord {
        EventRecord {
            id: Uuid::from_u128(n),
            pattern: "read",
            json: format!(
                r#"{{"resourceType":"AuditEvent","x":"{}"}}"#,
                "a".repeat(size)
            ),
            leaf: None,
        }
    }

    #[test]
    fn policy_cuts_full_ranges_old_ranges_and_on_drain() {
        let p = BatchPolicy {
            max_events: 10,
            max_bytes: 1 << 20,
            flush_interval: Duration::from_secs(1),
        };
        let ms = Duration::from_millis;
        assert!(!p.ready(0, ms(5_000), true));
        assert!(p.ready(10, ms(0), false));
        assert!(!p.ready(3, ms(500), false));
        assert!(p.ready(3, ms(1_000), false));
        assert!(p.ready(3, ms(1), true));
    }

    #[test]
    fn bundle_is_valid_json_with_entries_and_stable_id_and_bytes() {
        let batch = Batch {
            events: vec![ev(1, 3), ev(2, 3)],
            seqs: Some((1, 2)),
            timestamp: Some(Stamp {
                ts: jiff::Timestamp::from_millisecond(1_795_000_000_123).unwrap(),
                offset: jiff::tz::Offset::UTC,
            }),
            bytes: 0,
        };
        let json = batch.bundle_json(BundleType::Batch);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["type"], "batch");
        assert_eq!(v["id"], batch.id().to_string());
        assert_eq!(v["timestamp"], "2026-11-18T11:06:40.123+00:00");
        assert_eq!(v["entry"][1]["request"]["method"], "PUT");
        assert_eq!(
            v["entry"][1]["request"]["url"],
            format!("AuditEvent/{}", Uuid::from_u128(2))
        );
        assert_eq!(
            v["entry"][0]["fullUrl"],
            format!("urn:uuid:{}", Uuid::from_u128(1))
        );
        assert_eq!(json, batch.clone().bundle_json(BundleType::Batch));
        let collection = batch.bundle_json(BundleType::Collection);
        assert!(!collection.contains("request"));
    }

    #[test]
    fn entry_overhead_is_exact_for_batch_and_transaction_and_bounds_collection() {
        let events = vec![ev(1, 3), ev(0xffff_ffff_ffff, 50), ev(u128::MAX, 0)];
        let ts = "2026-11-18T11:06:40.123+00:00";
        let id = Uuid::from_u128(9);
        let counted: usize = events.iter().map(|e| e.json.len() + ENTRY_OVERHEAD).sum();
        for t in [BundleType::Batch, BundleType::Transaction] {
            let empty = bundle_json(&id, &[], t, ts).len();
            let json = bundle_json(&id, &events, t, ts);
            // One comma fewer than entries: the last entry has none after it.
            assert_eq!(json.len(), empty + counted - 1, "{t:?}");
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            for (entry, e) in v["entry"].as_array().unwrap().iter().zip(&events) {
                assert_eq!(entry["request"]["method"], "PUT");
                assert_eq!(entry["request"]["url"], format!("AuditEvent/{}", e.id));
                assert_eq!(entry["fullUrl"], format!("urn:uuid:{}", e.id));
            }
        }
        let collection = bundle_json(&id, &events, BundleType::Collection, ts);
        let empty = bundle_json(&id, &[], BundleType::Collection, ts).len();
        assert!(collection.len() < empty + counted);
    }
}

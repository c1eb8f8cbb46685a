//! Batching: events are grouped into FHIR Bundles of at most `max_events` entries and
//! `max_bytes` of JSON, and a partial Bundle is cut after `flush_interval`.
//!
//! A [`Batch`] also carries the read positions that become safe once it is accepted: the
//! position of a line is attached to the batch that holds the line's last event (or, for lines
//! that made no event, to the batch being filled when they were read). Because batches are
//! accepted in order, applying a batch's checkpoints never skips an unaccepted event.

use crate::balp::EventRecord;
use crate::config::BundleType;
use crate::decode::Stamp;
use crate::source::{Checkpoint, StreamId};
use std::sync::Arc;
use uuid::Uuid;

/// Namespace for Bundle ids (UUID v5 over the ids of the entries).
const BUNDLE_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_0c5e_2d3a_4f6e_9b8a_b41b_a1e7_0002);

/// Fixed JSON around each entry; used to keep the byte count exact.
const ENTRY_OVERHEAD: usize =
    r#"{"fullUrl":"urn:uuid:00000000-0000-0000-0000-000000000000","resource":},"#.len()
        + r#","request":{"method":"POST","url":"AuditEvent"}"#.len();

/// A group of events that is delivered as one Bundle.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The events, in the order they were read.
    pub events: Vec<EventRecord>,
    /// Positions that become safe when this batch is accepted.
    pub checkpoints: Vec<Checkpoint>,
    /// Streams fully read and gone: their positions are dropped once this batch is accepted.
    pub forgets: Vec<Arc<StreamId>>,
    /// Approximate size of the Bundle JSON.
    pub bytes: usize,
}

impl Batch {
    /// The Bundle id: derived from the entries, so the same events always form the same id
    /// (it is sent as `X-Request-Id` and stays stable across retries).
    pub fn id(&self) -> Uuid {
        let mut name = Vec::with_capacity(self.events.len() * 16);
        for e in &self.events {
            name.extend_from_slice(e.id.as_bytes());
        }
        Uuid::new_v5(&BUNDLE_NAMESPACE, &name)
    }

    /// The Bundle as JSON. `timestamp` is when the Bundle was assembled.
    pub fn bundle_json(&self, bundle_type: BundleType, timestamp: &Stamp) -> String {
        bundle_json(
            &self.id(),
            &self.events,
            bundle_type,
            &timestamp.to_instant(),
        )
    }
}

/// Assemble a Bundle from already-serialized events (no re-serialization of the events).
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
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"fullUrl":"urn:uuid:"#);
        out.push_str(&e.id.to_string());
        out.push_str(r#"","resource":"#);
        out.push_str(&e.json);
        if bundle_type != BundleType::Collection {
            out.push_str(r#","request":{"method":"POST","url":"AuditEvent"}"#);
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// Accumulates events and positions and cuts [`Batch`]es.
#[derive(Debug)]
pub struct Batcher {
    max_events: usize,
    max_bytes: usize,
    current: Batch,
}

impl Batcher {
    /// A batcher with these limits (each at least 1).
    pub fn new(max_events: usize, max_bytes: usize) -> Batcher {
        Batcher {
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
            current: Batch::default(),
        }
    }

    /// Add an event; returns the full batch if adding it reached a limit. An event larger
    /// than `max_bytes` on its own still goes out, alone.
    pub fn push(&mut self, event: EventRecord) -> Option<Batch> {
        let size = event.json.len() + ENTRY_OVERHEAD;
        let mut cut = None;
        if !self.current.events.is_empty() && self.current.bytes + size > self.max_bytes {
            cut = Some(std::mem::take(&mut self.current));
        }
        self.current.bytes += size;
        self.current.events.push(event);
        if self.current.events.len() >= self.max_events || self.current.bytes >= self.max_bytes {
            // Only one batch can be cut per push: if `cut` is already set, the new event is
            // alone in `current` and below the limits unless it alone exceeds them.
            if cut.is_none() {
                return Some(std::mem::take(&mut self.current));
            }
        }
        cut
    }

    /// Record that everything of `stream` before `offset` has been read and mapped.
    pub fn checkpoint(&mut self, stream: &Arc<StreamId>, offset: u64) {
        match self
            .current
            .checkpoints
            .iter_mut()
            .find(|c| Arc::ptr_eq(&c.stream, stream) || *c.stream == **stream)
        {
            Some(c) => c.offset = c.offset.max(offset),
            None => self.current.checkpoints.push(Checkpoint {
                stream: stream.clone(),
                offset,
            }),
        }
    }

    /// Record that `stream` is gone: its position is forgotten after this batch is accepted.
    pub fn forget(&mut self, stream: &Arc<StreamId>) {
        self.current.checkpoints.retain(|c| *c.stream != **stream);
        self.current.forgets.push(stream.clone());
    }

    /// Cut whatever is pending (events or only positions); `None` if there is nothing.
    pub fn flush(&mut self) -> Option<Batch> {
        if self.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.current))
        }
    }

    /// Is nothing (no event, no position) waiting?
    pub fn is_empty(&self) -> bool {
        self.current.events.is_empty()
            && self.current.checkpoints.is_empty()
            && self.current.forgets.is_empty()
    }

    /// Are any events waiting?
    pub fn has_events(&self) -> bool {
        !self.current.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn ev(n: u128, size: usize) -> EventRecord {
        EventRecord {
            id: Uuid::from_u128(n),
            pattern: "read",
            json: format!(
                r#"{{"resourceType":"AuditEvent","x":"{}"}}"#,
                "a".repeat(size)
            ),
        }
    }

    #[test]
    fn cuts_at_max_events() {
        let mut b = Batcher::new(2, 1 << 20);
        assert!(b.push(ev(1, 1)).is_none());
        let batch = b.push(ev(2, 1)).map(|b| b.events.len());
        assert_eq!(batch, Some(2));
        assert!(!b.has_events());
    }

    #[test]
    fn cuts_before_exceeding_max_bytes() {
        let mut b = Batcher::new(100, 1000);
        assert!(b.push(ev(1, 400)).is_none());
        let first = b.push(ev(2, 400));
        assert_eq!(first.map(|b| b.events.len()), Some(1));
        assert!(b.has_events());
    }

    #[test]
    fn bundle_is_valid_json_with_entries_and_stable_id() {
        let mut b = Batcher::new(10, 1 << 20);
        b.push(ev(1, 3));
        b.push(ev(2, 3));
        let stream = Arc::new(StreamId {
            source: "s".into(),
            key: "k".into(),
            path: PathBuf::from("/x"),
        });
        b.checkpoint(&stream, 10);
        b.checkpoint(&stream, 20);
        let batch = b.flush().unwrap_or_default();
        assert_eq!(batch.checkpoints.len(), 1);
        assert_eq!(batch.checkpoints[0].offset, 20);
        let ts = Stamp::now_utc();
        let json = batch.bundle_json(BundleType::Batch, &ts);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["type"], "batch");
        assert_eq!(v["id"], batch.id().to_string());
        assert_eq!(v["entry"][1]["request"]["url"], "AuditEvent");
        assert_eq!(
            v["entry"][0]["fullUrl"],
            format!("urn:uuid:{}", Uuid::from_u128(1))
        );
        assert_eq!(batch.id(), batch.clone().id());
        let collection = batch.bundle_json(BundleType::Collection, &ts);
        assert!(!collection.contains("request"));
    }
}

//! Typed R4 AuditEvent (stub; the full model replaces it).
use serde::Serialize;
use uuid::Uuid;

/// An R4 AuditEvent.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Always "AuditEvent".
    pub resource_type: &'static str,
    /// Deterministic id.
    pub id: String,
}

impl AuditEvent {
    /// The id as a UUID (nil if it is not one).
    pub fn uuid(&self) -> Uuid {
        Uuid::parse_str(&self.id).unwrap_or_default()
    }
}

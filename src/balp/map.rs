//! Mapping (stub).
use super::model::AuditEvent;
use super::{LineRef, MapContext};
use crate::parse::Extracted;

/// Map one extracted record to events (one per patient).
pub fn map_extracted(_ctx: &MapContext, _ex: &Extracted, _line: LineRef<'_>) -> Vec<AuditEvent> {
    Vec::new()
}

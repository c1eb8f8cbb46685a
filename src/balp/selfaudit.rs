//! Self-audit: the agent records its own start and stop (DICOM Application Activity), as an
//! ATNA Secure Application does.
//!
//! In: the context, start/stop, the time and a boot or sequence id. Out: one AuditEvent
//! (no BALP profile exists for it). Guarantees: the id is deterministic in (hostname, "self",
//! kind, boot id), so a re-sent start event after a crash deduplicates at the ARR.

use super::codes;
use super::model::{Action, Agent, AuditEvent, Outcome, Reference, Source};
use super::{MapContext, event_id};
use crate::decode::Stamp;

/// Which application activity to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppActivity {
    /// DCM 110120 Application Start.
    Start,
    /// DCM 110121 Application Stop.
    Stop,
}

impl AppActivity {
    /// Short name, part of the event id.
    pub fn as_str(self) -> &'static str {
        match self {
            AppActivity::Start => "start",
            AppActivity::Stop => "stop",
        }
    }
}

/// The AuditEvent for the agent's own start or stop.
pub fn self_audit(
    ctx: &MapContext,
    kind: AppActivity,
    time: Stamp,
    seq_or_boot_id: &str,
) -> AuditEvent {
    let subtype = match kind {
        AppActivity::Start => codes::DCM_APPLICATION_START,
        AppActivity::Stop => codes::DCM_APPLICATION_STOP,
    };
    let id = event_id(&ctx.hostname, "self", kind.as_str(), 0);
    // The boot id is folded into the position so each boot's start/stop is its own event.
    let id = if seq_or_boot_id.is_empty() {
        id
    } else {
        event_id(
            &ctx.hostname,
            "self",
            &format!("{}\u{1f}{seq_or_boot_id}", kind.as_str()),
            0,
        )
    };
    AuditEvent {
        id: id.to_string(),
        extension: vec![crate::balp::id_extension(&ctx.event_id_extension, &id)],
        type_: codes::DCM_APPLICATION_ACTIVITY.coding(),
        subtype: vec![subtype.coding()],
        action: Some(Action::E),
        recorded: time.to_instant(),
        outcome: Some(Outcome::Success),
        agent: vec![Agent {
            type_: Some(codes::DCM_APPLICATION.concept()),
            who: Some(Reference::display(&ctx.observer_display)),
            requestor: false,
            ..Agent::default()
        }],
        source: Source {
            site: ctx.site.clone(),
            observer: Reference::display(&ctx.observer_display),
            type_: vec![codes::source_type(&ctx.source_type)],
        },
        ..AuditEvent::default()
    }
}

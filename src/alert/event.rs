//! The AuditEvent of an alert: DCM 110113 Security Alert, the rule as subtype, the agent as
//! the detecting application, the user and address the alert is about, and one entity per
//! triggering event (`AuditEvent/<id>`). No BALP profile covers it (BALP's only 110113
//! profile is AuthZconsent), so it claims none and follows R4 and the agent's security-alert
//! shape (docs/alerts.md, "The alert event").

use crate::balp::codes::{self, Code};
use crate::balp::model::{
    Action, Agent, AuditEvent, Coding, Entity, EntityDetail, Identifier, Network, NetworkType,
    Outcome, Period, Reference, Source,
};
use crate::balp::{EventRecord, MapContext};
use crate::config::AlertRuleKind;
use crate::decode::Stamp;
use jiff::Timestamp;
use jiff::tz::Offset;
use uuid::Uuid;

/// System of the agent-defined subtype coding naming the rule (and of the rule entity).
pub const SYS_ALERT_RULE: &str = "urn:balp-agent:alert-rule";
/// DCM 110133 Audit Recording Stopped (the silent-source subtype).
pub const DCM_AUDIT_RECORDING_STOPPED: Code = Code {
    system: codes::SYS_DCM,
    code: "110133",
    display: "Audit Recording Stopped",
};
/// object-role 4 Domain Resource (a triggering AuditEvent).
const ROLE_DOMAIN_RESOURCE: Code = Code {
    system: codes::SYS_OBJECT_ROLE,
    code: "4",
    display: "Domain Resource",
};
/// object-role 13 Security Resource (the rule that fired).
const ROLE_SECURITY_RESOURCE: Code = Code {
    system: codes::SYS_OBJECT_ROLE,
    code: "13",
    display: "Security Resource",
};

/// Everything one alert says, before it becomes an AuditEvent.
pub struct AlertSpec<'a> {
    /// The alert's id.
    pub id: Uuid,
    /// The rule's instance name.
    pub rule: &'a str,
    /// Which detector.
    pub kind: AlertRuleKind,
    /// What it was counted per (`user:alice`, `address:10.0.0.9`, `source:auth`, …).
    pub key: &'a str,
    /// The user it is about.
    pub user: Option<&'a str>,
    /// The address it is about.
    pub address: Option<&'a str>,
    /// The patient it is about (watchlist).
    pub patient: Option<&'a str>,
    /// The triggering events, oldest first.
    pub events: &'a [(Timestamp, Uuid)],
    /// First and last time of the activity (equal for single-event rules).
    pub period: (Timestamp, Timestamp),
    /// The readable description.
    pub description: String,
    /// `detail` name/value pairs of the rule entity.
    pub details: Vec<(&'static str, String)>,
}

/// Human-readable title of a rule.
pub fn title(kind: AlertRuleKind) -> &'static str {
    match kind {
        AlertRuleKind::FailedLoginBurst => "Failed-login burst",
        AlertRuleKind::SuccessAfterFailures => "Successful login after failures",
        AlertRuleKind::ManyPatients => "One user accessed many patients",
        AlertRuleKind::OffHours => "Access outside working hours",
        AlertRuleKind::Watchlist => "Access involving a watched patient or user",
        AlertRuleKind::SilentSource => "Log source went silent",
    }
}

/// The outcome read as the alert's severity, as DICOM reads a Security Alert's outcome:
/// success is informative, minor/serious failure a threat that was contained or needs
/// review, major failure a possible compromise.
fn severity(kind: AlertRuleKind) -> Outcome {
    match kind {
        AlertRuleKind::OffHours | AlertRuleKind::Watchlist => Outcome::Success,
        AlertRuleKind::FailedLoginBurst => Outcome::MinorFailure,
        AlertRuleKind::ManyPatients | AlertRuleKind::SilentSource => Outcome::SeriousFailure,
        AlertRuleKind::SuccessAfterFailures => Outcome::MajorFailure,
    }
}

fn instant(ts: Timestamp) -> String {
    Stamp {
        ts,
        offset: Offset::UTC,
    }
    .to_instant()
}

fn network(addr: &str) -> Network {
    let bare = addr.trim_start_matches('[').trim_end_matches(']');
    let type_ = if bare.parse::<std::net::IpAddr>().is_ok() {
        NetworkType::IpAddress
    } else {
        NetworkType::MachineName
    };
    Network {
        address: Some(addr.to_owned()),
        type_: Some(type_),
    }
}

/// The alert as an AuditEvent.
pub fn audit_event(ctx: &MapContext, a: &AlertSpec<'_>) -> AuditEvent {
    let mut subtype = vec![Coding::new(
        SYS_ALERT_RULE,
        a.kind.as_str(),
        Some(title(a.kind)),
    )];
    if a.kind == AlertRuleKind::SilentSource {
        subtype.insert(0, DCM_AUDIT_RECORDING_STOPPED.coding());
    }
    let mut agent = vec![Agent {
        type_: Some(codes::DCM_APPLICATION.concept()),
        who: Some(Reference::display(&ctx.observer_display)),
        requestor: false,
        ..Agent::default()
    }];
    if let Some(user) = a.user {
        agent.push(Agent {
            type_: Some(codes::ROLE_HUMANUSER.concept()),
            who: Some(Reference::identifier(user)),
            requestor: true,
            ..Agent::default()
        });
    }
    if let Some(addr) = a.address {
        agent.push(Agent {
            type_: Some(codes::DCM_SOURCE_ROLE_ID.concept()),
            who: Some(Reference::display(addr)),
            requestor: false,
            network: Some(network(addr)),
            ..Agent::default()
        });
    }
    let mut entity = vec![Entity {
        what: Some(Reference {
            identifier: Some(Identifier {
                system: Some(SYS_ALERT_RULE.to_owned()),
                value: Some(a.rule.to_owned()),
                type_: None,
            }),
            ..Reference::default()
        }),
        type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
        role: Some(ROLE_SECURITY_RESOURCE.coding()),
        name: Some(a.rule.to_owned()),
        description: Some(a.description.clone()),
        detail: a
            .details
            .iter()
            .map(|(k, v)| EntityDetail {
                type_: (*k).to_owned(),
                value_string: Some(v.clone()),
                value_base64_binary: None,
            })
            .collect(),
        ..Entity::default()
    }];
    if let Some(p) = a.patient {
        entity.push(Entity {
            what: Some(Reference::to(&format!("Patient/{p}"))),
            type_: Some(codes::ENTITY_PERSON.coding()),
            role: Some(codes::ROLE_PATIENT.coding()),
            ..Entity::default()
        });
    }
    for (_, id) in a.events {
        entity.push(Entity {
            what: Some(Reference {
                reference: Some(format!("AuditEvent/{id}")),
                type_: Some("AuditEvent".to_owned()),
                ..Reference::default()
            }),
            type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
            role: Some(ROLE_DOMAIN_RESOURCE.coding()),
            ..Entity::default()
        });
    }
    AuditEvent {
        id: a.id.to_string(),
        extension: vec![crate::balp::id_extension(&ctx.event_id_extension, &a.id)],
        type_: codes::DCM_SECURITY_ALERT.coding(),
        subtype,
        action: Some(Action::E),
        period: Some(Period {
            start: Some(instant(a.period.0)),
            end: Some(instant(a.period.1)),
        }),
        // The time of the activity that raised it, not of the detection: a replay or a
        // re-raise after a crash makes the same event, byte for byte.
        recorded: instant(a.period.1),
        outcome: Some(severity(a.kind)),
        outcome_desc: Some(a.description.clone()),
        agent,
        source: Source {
            site: ctx.site.clone(),
            observer: Reference::display(&ctx.observer_display),
            type_: vec![codes::source_type(&ctx.source_type)],
        },
        entity,
        ..AuditEvent::default()
    }
}

/// The alert as a spool record, with its leaf hash made from the model (as for events of
/// lines: alerts list up to `threshold` entities, so the text path would cost the most here).
pub fn record(ctx: &MapContext, a: &AlertSpec<'_>) -> EventRecord {
    let ev = audit_event(ctx, a);
    let mut record = crate::balp::to_record_with_leaf(&ev, crate::parse::Pattern::SecurityAlert);
    record.id = a.id;
    record
}

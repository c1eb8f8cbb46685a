//! Privacy disclosure, recorded at the disclosing side (`IHE.BasicAudit.PrivacyDisclosure.
//! Source`) or, for `disclosure-received`, at the recipient (see [`super::map`]).

use super::MapContext;
use super::agents::*;
use super::codes::{self};
use super::model::{Action, AuditEvent, Entity, Reference};
use super::parts::*;
use crate::config::Mode;
use crate::parse::{FieldName as F, Fields};

pub(super) fn disclosure(ctx: &MapContext, f: &Fields, received: bool) -> Built {
    let mut ev = AuditEvent {
        type_: if received {
            codes::DCM_IMPORT.coding()
        } else {
            codes::DCM_EXPORT.coding()
        },
        subtype: vec![codes::LIFECYCLE_DISCLOSE.coding()],
        action: Some(if received { Action::C } else { Action::R }),
        outcome: Some(outcome(f)),
        outcome_desc: f.get(F::OutcomeDesc).map(str::to_owned),
        ..AuditEvent::default()
    };
    ev.purpose_of_event = purposes(f);
    // val-audit-source: the agent on this host's side (the source when disclosing, the
    // recipient when receiving) is the observer, with an identical Reference.
    let (own_type, peer_type) = if received {
        (codes::DCM_DESTINATION_ROLE_ID, codes::DCM_SOURCE_ROLE_ID)
    } else {
        (codes::DCM_SOURCE_ROLE_ID, codes::DCM_DESTINATION_ROLE_ID)
    };
    let mut own = server_agent(ctx, f, own_type);
    own.who = Some(Reference::display(&ctx.observer_display));
    let peer = client_agent(f, peer_type);
    let peer_ok = peer.who.is_some() && peer.network.is_some();
    let peer_idx = if received {
        ev.agent.push(peer);
        ev.agent.push(own);
        0
    } else {
        ev.agent.push(own);
        ev.agent.push(peer);
        1
    };
    if let Some(u) = user_agent(ctx, f, codes::ROLE_HUMANUSER) {
        ev.agent.push(u);
    }
    let mut patients = Vec::new();
    if let Some(r) = f.get(F::Resource).map(str::trim) {
        let what = match r.split('/').collect::<Vec<_>>().as_slice() {
            [t, id] if is_type(t) && is_id(id) => {
                if *t == "Patient" {
                    patients.push((*id).to_owned());
                }
                Reference::to(&format!("{t}/{id}"))
            }
            _ => Reference::identifier(r),
        };
        ev.entity.push(Entity {
            what: Some(what),
            type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
            role: Some(codes::ROLE_DOMAIN_RESOURCE.coding()),
            description: f
                .get(F::Description)
                .filter(|_| ctx.mode == Mode::Comprehensive)
                .map(str::to_owned),
            ..Entity::default()
        });
    }
    field_patients(f, &mut patients);
    let patients = dedup(patients);
    let has_data = !ev.entity.is_empty();
    let profile = if received {
        codes::profile::DISCLOSURE_RECIPIENT
    } else {
        codes::profile::DISCLOSURE_SOURCE
    };
    let claim = Claim {
        plain: Some(profile),
        with_patient: Some(profile),
        success_only: false,
        missing: None,
    }
    .unless_missing(!patients.is_empty(), "no patient")
    .unless_missing(
        peer_ok,
        if received {
            "sender network address unknown"
        } else {
            "recipient network address unknown"
        },
    )
    // The profile needs a second entity (the data) beside the patient.
    .unless_missing(has_data, "no data entity");
    let mut b = Built::new(ev, claim, patients);
    b.client_idx = Some(peer_idx);
    b
}

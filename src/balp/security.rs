//! Login, logout and security alerts (no BALP profile; FHIR R4 `example-login` /
//! `example-logout` semantics, see [`super::map`]).

use super::MapContext;
use super::agents::*;
use super::codes::{self};
use super::model::{Action, Agent, AuditEvent, Coding, Entity, EntityDetail, Reference};
use super::parts::*;
use crate::config::Mode;
use crate::parse::{FieldName as F, Fields, Pattern};

/// User, client (when known) and host agents, and the index of the client agent.
fn security_agents(ctx: &MapContext, f: &Fields) -> (Vec<Agent>, Option<usize>) {
    let mut agents = Vec::new();
    if let Some(u) = user_agent(ctx, f, codes::ROLE_HUMANUSER) {
        agents.push(u);
    }
    let mut client_idx = None;
    if client_address(f).is_some() || f.get(F::ClientId).is_some() {
        client_idx = Some(agents.len());
        agents.push(client_agent(f, codes::DCM_SOURCE_ROLE_ID));
    }
    agents.push(server_agent(ctx, f, codes::DCM_DESTINATION_ROLE_ID));
    (agents, client_idx)
}

pub(super) fn auth_event(ctx: &MapContext, f: &Fields, pattern: Pattern) -> Built {
    let subtype = if pattern == Pattern::Logout {
        codes::DCM_LOGOUT
    } else {
        codes::DCM_LOGIN
    };
    let (agent, client_idx) = security_agents(ctx, f);
    let ev = AuditEvent {
        type_: codes::DCM_USER_AUTHENTICATION.coding(),
        subtype: vec![subtype.coding()],
        action: Some(Action::E),
        outcome: Some(outcome(f)),
        outcome_desc: f.get(F::OutcomeDesc).map(str::to_owned),
        agent,
        ..AuditEvent::default()
    };
    let mut b = Built::new(ev, Claim::default(), Vec::new());
    b.client_idx = client_idx;
    b
}

pub(super) fn security_alert(ctx: &MapContext, f: &Fields) -> Built {
    let subtype = match f.get(F::Subtype).map(str::trim) {
        Some(c) => match codes::dcm_subtype(c) {
            Some(known) => known.coding(),
            None if c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()) => {
                Coding::new(codes::SYS_DCM, c, None)
            }
            None => codes::DCM_USE_OF_RESTRICTED_FUNCTION.coding(),
        },
        None => codes::DCM_USE_OF_RESTRICTED_FUNCTION.coding(),
    };
    let (agent, client_idx) = security_agents(ctx, f);
    let mut ev = AuditEvent {
        type_: codes::DCM_SECURITY_ALERT.coding(),
        subtype: vec![subtype],
        action: Some(Action::E),
        outcome: Some(outcome(f)),
        outcome_desc: f.get(F::OutcomeDesc).map(str::to_owned),
        agent,
        ..AuditEvent::default()
    };
    if let Some(target) = f.get(F::TargetUser).map(str::trim) {
        ev.entity.push(Entity {
            what: Some(Reference::identifier(target)),
            type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
            role: Some(codes::ROLE_SECURITY_USER.coding()),
            ..Entity::default()
        });
    }
    if let Some(cmd) = f.get(F::Command).map(str::trim) {
        let program = cmd.split_whitespace().next().unwrap_or(cmd);
        let mut detail = Vec::new();
        if let Some(t) = f.get(F::Terminal) {
            detail.push(EntityDetail {
                type_: "terminal".to_owned(),
                value_string: Some(t.trim().to_owned()),
                value_base64_binary: None,
            });
        }
        ev.entity.push(Entity {
            what: Some(Reference::identifier(program)),
            type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
            role: Some(codes::ROLE_JOB.coding()),
            description: (ctx.mode == Mode::Comprehensive).then(|| cmd.to_owned()),
            detail,
            ..Entity::default()
        });
    }
    let mut patients = Vec::new();
    field_patients(f, &mut patients);
    let mut b = Built::new(ev, Claim::default(), dedup(patients));
    b.client_idx = client_idx;
    b
}

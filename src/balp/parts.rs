//! The parts every pattern builds its event from: the `Built` event before ids and
//! per-patient copies, the profile it may `Claim`, its outcome, and the patients a record
//! names (FHIR ids only, deduplicated in order).

use super::codes::{self};
use super::model::{AuditEvent, Entity, Outcome, Reference};
use crate::parse::{FieldName as F, Fields};

/// An event before ids, source, time and per-patient parts are filled in.
pub(super) struct Built {
    pub(super) event: AuditEvent,
    /// The main (pattern) profile to claim, if any.
    pub(super) claim: Claim,
    pub(super) patients: Vec<String>,
    /// Add-on profiles (security tokens), claimed by every event of the record.
    pub(super) extra: Vec<&'static str>,
    /// Add-on profiles withheld for a missing element: (profile, reason).
    pub(super) withheld: Vec<(&'static str, &'static str)>,
    /// Overrides the context's `source.type` (e.g. 5 Database Server).
    pub(super) source_type: Option<&'static str>,
    /// Index of the agent that stands for the client application, if any.
    pub(super) client_idx: Option<usize>,
}

impl Built {
    pub(super) fn new(event: AuditEvent, claim: Claim, patients: Vec<String>) -> Built {
        Built {
            event,
            claim,
            patients,
            extra: Vec::new(),
            withheld: Vec::new(),
            source_type: None,
            client_idx: None,
        }
    }
}

/// Which profile an event may claim: without / with a patient, and whether only on success.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Claim {
    pub(super) plain: Option<&'static str>,
    pub(super) with_patient: Option<&'static str>,
    pub(super) success_only: bool,
    /// Set when the profile would apply but a required element is missing: the reason.
    pub(super) missing: Option<&'static str>,
}

impl Claim {
    /// A REST profile pair (success only).
    pub(super) fn rest(pair: Option<(&'static str, &'static str)>) -> Claim {
        match pair {
            Some((plain, with_patient)) => Claim {
                plain: Some(plain),
                with_patient: Some(with_patient),
                success_only: true,
                missing: None,
            },
            None => Claim::default(),
        }
    }

    /// The same claim, withheld for `reason` when `ok` is false.
    pub(super) fn unless_missing(mut self, ok: bool, reason: &'static str) -> Claim {
        if !ok && self.missing.is_none() {
            self.missing = Some(reason);
        }
        self
    }
}

pub(super) fn is_type(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_uppercase())
        && s.len() <= 64
        && c.all(|ch| ch.is_ascii_alphanumeric())
}

pub(super) fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.bytes().all(|b| b == b'.')
}

/// The id of a patient reference (`Patient/1`, `http://x/fhir/Patient/1/_history/2`), or of a
/// plain id when `plain` allows it.
pub(super) fn patient_id(item: &str, plain: bool) -> Option<String> {
    let item = item.trim();
    let found = item
        .match_indices("Patient/")
        .find(|(i, _)| *i == 0 || item[..*i].ends_with('/'));
    let id = match found {
        Some((i, _)) => item[i + "Patient/".len()..].split('/').next().unwrap_or(""),
        None if plain => item,
        None => return None,
    };
    is_id(id).then(|| id.to_owned())
}

pub(super) fn field_patients(f: &Fields, out: &mut Vec<String>) {
    if let Some(v) = f.get(F::Patient) {
        out.extend(v.split(',').filter_map(|item| patient_id(item, true)));
    }
}

pub(super) fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for p in v {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

pub(super) fn patient_entity(id: &str) -> Entity {
    Entity {
        what: Some(Reference::to(&format!("Patient/{id}"))),
        type_: Some(codes::ENTITY_PERSON.coding()),
        role: Some(codes::ROLE_PATIENT.coding()),
        ..Entity::default()
    }
}

pub(super) fn outcome(f: &Fields) -> Outcome {
    if let Some(o) = f.get(F::Outcome) {
        match o.trim().to_ascii_lowercase().as_str() {
            "0" | "success" | "succeeded" | "ok" | "allowed" | "granted" => {
                return Outcome::Success;
            }
            "4" | "failure" | "failed" | "fail" | "minor" | "denied" | "rejected" | "error"
            | "forbidden" | "unauthorized" => return Outcome::MinorFailure,
            "8" | "serious" => return Outcome::SeriousFailure,
            "12" | "major" => return Outcome::MajorFailure,
            _ => {}
        }
    }
    match f.get(F::Status).and_then(|s| s.trim().parse::<u16>().ok()) {
        Some(0..400) | None => Outcome::Success,
        Some(400..500) => Outcome::MinorFailure,
        Some(_) => Outcome::SeriousFailure,
    }
}

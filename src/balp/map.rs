//! Mapping: one [`Extracted`] record (pattern + named fields + time) becomes zero or more R4
//! AuditEvents following BALP (REFERENCE.md §4, §8, §9; SPEC §4).
//!
//! In: the record, the line's position and flags, and the [`MapContext`]. Out: events with
//! deterministic ids (`event_id(hostname, source, position, index)`), the id repeated in a root
//! extension, `source` = the agent as observer. Guarantees:
//! * one event per patient (deduplicated, in order of appearance), each with exactly one
//!   patient entity and the `Patient*` profile; without a patient, one event and the plain
//!   profile;
//! * a BALP REST profile is claimed only for a successful (`outcome` 0), profile-covered
//!   interaction whose agents carry everything the profile needs; everything else keeps the
//!   same shape without a claim (login/logout, security alerts, operations, history,
//!   batch/transaction, conditional create/update/patch, failures);
//! * never panics, whatever the field values are (unknown paths become a generic `rest` event
//!   with the raw request as a query entity, ids that are not FHIR ids are not used as
//!   references).
//!
//! Choices the IG leaves open, documented here:
//! * Login/Logout (no BALP profile; FHIR R4 core `example-login`/`example-logout` semantics):
//!   the user agent is typed `extra-security-role-type#humanuser` (as in the R4 examples),
//!   `who.identifier.value` = user, `requestor` true; the client (where the login came from) is
//!   `DCM#110153` Source Role ID with its network address; the host is `DCM#110152` Destination
//!   Role ID. `IRCP` is not used because nothing is received.
//! * SecurityAlert: same agents; the target user is an entity (`audit-entity-type#2`,
//!   `object-role#11` Security User Entity, `what.identifier.value`); a command is an entity
//!   (`#2`, `object-role#20` Job) whose `what.identifier.value` is the program only (minimal);
//!   comprehensive mode adds the full command line as `description` (it can hold patient data).
//! * `POST [base]` cannot be told apart as batch or transaction without the body: it is
//!   recorded with subtype `transaction`.
//! * Disclosure is recorded at the disclosing side (the agent's host): `IHE.BasicAudit.
//!   PrivacyDisclosure.Source`, claimed (on any outcome, the profile allows failures) when a
//!   patient and the recipient's address are known. The source agent's `who` is the observer
//!   itself (val-audit-source); the recipient comes from `client_address`/`client_id`.
//! * Database access (`Pattern::Database`): see [`super::database`] (DICOM 110112/110110, no
//!   BALP profile, `source.type` 5). Security tokens on any pattern: see [`super::token`].
//! * Best effort: a missing field never drops a record (a REST line without url still gives a
//!   generic `rest` event); a profile whose required element is missing is not claimed and the
//!   downgrade is counted per `profile: reason` ([`crate::events::profile_downgraded`],
//!   [`super::downgrades`]). Failed requests and uncovered interactions are not downgrades: no
//!   profile covers them.
//!
//! # Minimal and comprehensive mode (REFERENCE.md §8)
//!
//! Both modes record the same events with the same ids, agents and entities. *Minimal* (the
//! default, "whenever possible") records identifiers only: user id and issuer, client display,
//! resource references, the raw request as the query entity, jti. *Comprehensive* adds what
//! the log line itself carries about the participants — the user's display name (`who.display`
//! and `name`) and role, the OAuth client_id as the client's `who.identifier` (and so the OAuth
//! Comprehensive / SAML Comprehensive profiles), the full command line of a security alert,
//! the redacted SQL statement, entity descriptions. It never adds search *results*: a log line
//! does not carry them, and BALP recommends against them. The same line
//! `GET /fhir/Observation?patient=123&code=8867-4` → 200, client 10.1.2.3, user `u-7f3a`
//! ("Dr. Jane Smith", physician), iss `https://idp.example.org`, jti `8a1c2f`, client_id
//! `portal` (extension and displays left out, systems shortened):
//!
//! Minimal:
//! ```json
//! {"resourceType": "AuditEvent", "id": "87697593-56c5-52ac-86c4-574fcdaffdda",
//!  "meta": {"profile": [".../IHE.BasicAudit.PatientQuery",
//!                       ".../IHE.BasicAudit.OAUTHaccessTokenUse.Minimal"]},
//!  "type": {"system": "…/audit-event-type", "code": "rest"},
//!  "subtype": [{"system": "…/restful-interaction", "code": "search-type"}],
//!  "action": "E", "recorded": "2026-11-25T15:25:33+00:00", "outcome": "0",
//!  "agent": [
//!   {"type": {"coding": [{"system": "DCM", "code": "110153"}]}, "who": {"display": "portal"},
//!    "requestor": false, "network": {"address": "10.1.2.3", "type": "2"}},
//!   {"type": {"coding": [{"system": "DCM", "code": "110152"}]},
//!    "who": {"display": "fhir01.example.org"}, "requestor": false,
//!    "network": {"address": "fhir01.example.org", "type": "1"}},
//!   {"type": {"coding": [{"system": "…/v3-ParticipationType", "code": "IRCP"},
//!                        {"system": "…/UserAgentTypes", "code": "UserOauthAgent"}]},
//!    "who": {"identifier": {"system": "https://idp.example.org", "value": "u-7f3a"}},
//!    "requestor": true, "policy": ["urn:ietf:params:oauth:jti:8a1c2f"]}],
//!  "source": {"observer": {"display": "balp-agent@fhir01"},
//!             "type": [{"system": "…/security-source-type", "code": "4"}]},
//!  "entity": [
//!   {"type": {"code": "2"}, "role": {"code": "24"},
//!    "description": "GET /fhir/Observation?patient=123&code=8867-4",
//!    "query": "R0VUIC9maGlyL09ic2VydmF0aW9uP3BhdGllbnQ9MTIzJmNvZGU9ODg2Ny00"},
//!   {"type": {"code": "1"}, "role": {"code": "1"}, "what": {"reference": "Patient/123"}}]}
//! ```
//!
//! Comprehensive (differences only):
//! ```json
//! {"meta": {"profile": [".../IHE.BasicAudit.PatientQuery",
//!                       ".../IHE.BasicAudit.OAUTHaccessTokenUse.Minimal",
//!                       ".../IHE.BasicAudit.OAUTHaccessTokenUse.Comprehensive"]},
//!  "agent": [
//!   {"type": {"coding": [{"system": "DCM", "code": "110153"}, {"system": "DCM", "code": "110150"}]},
//!    "who": {"identifier": {"value": "portal"}, "display": "portal"}, "…": "…"},
//!   {"…": "server as above"},
//!   {"…": "user as above",
//!    "who": {"identifier": {"system": "https://idp.example.org", "value": "u-7f3a"},
//!            "display": "Dr. Jane Smith"},
//!    "name": "Dr. Jane Smith", "role": [{"text": "physician"}]}]}
//! ```

use super::codes::{self, Code};
use super::model::{
    Action, Agent, AuditEvent, CodeableConcept, Coding, Entity, EntityDetail, Extension,
    Identifier, Meta, Network, NetworkType, Outcome, Reference, Source,
};
use super::{LineRef, MapContext, event_id};
use crate::config::Mode;
use crate::decode::Stamp;
use crate::parse::{Extracted, FieldName as F, Fields, Pattern};
use base64::Engine as _;

/// Map one extracted record to events (one per patient).
pub fn map_extracted(ctx: &MapContext, ex: &Extracted, line: LineRef<'_>) -> Vec<AuditEvent> {
    let cleaned = sanitized(&ex.fields);
    let f = cleaned.as_ref().unwrap_or(&ex.fields);
    let built = match ex.pattern {
        Pattern::Rest => rest_pattern(ctx, f, &ex.fields),
        Pattern::Create | Pattern::Read | Pattern::Update | Pattern::Delete | Pattern::Query => {
            explicit_pattern(ctx, f, &ex.fields, ex.pattern)
        }
        Pattern::Login | Pattern::Logout => Some(auth_event(ctx, f, ex.pattern)),
        Pattern::SecurityAlert => Some(security_alert(ctx, f)),
        Pattern::Disclosure => Some(disclosure(ctx, f, false)),
        Pattern::DisclosureReceived => Some(disclosure(ctx, f, true)),
        Pattern::Database => Some(super::database::database_event(ctx, f)),
    };
    let Some(mut built) = built else {
        return Vec::new();
    };
    super::token::apply(ctx, f, &mut built);
    // No time of its own: stamped when read, and flagged (below) so nobody mistakes it.
    let recorded = ex.time.unwrap_or_else(Stamp::now_utc).to_instant();
    fan_out(ctx, built, &recorded, ex.time_unreadable, line)
}

/// FHIR strings must not hold control characters other than tab, CR and LF: a copy of the
/// fields with those replaced by U+FFFD, or None when nothing needs replacing.
fn sanitized(fields: &Fields) -> Option<Fields> {
    let bad = |c: char| c.is_control() && !matches!(c, '\t' | '\r' | '\n');
    if !fields.iter().any(|(_, v)| v.chars().any(bad)) {
        return None;
    }
    let mut out = Fields::default();
    for (k, v) in fields.iter() {
        out.set(
            k,
            v.chars()
                .map(|c| if bad(c) { '\u{fffd}' } else { c })
                .collect::<String>(),
        );
    }
    Some(out)
}

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
    plain: Option<&'static str>,
    with_patient: Option<&'static str>,
    success_only: bool,
    /// Set when the profile would apply but a required element is missing: the reason.
    missing: Option<&'static str>,
}

impl Claim {
    /// A REST profile pair (success only).
    fn rest(pair: Option<(&'static str, &'static str)>) -> Claim {
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
    fn unless_missing(mut self, ok: bool, reason: &'static str) -> Claim {
        if !ok && self.missing.is_none() {
            self.missing = Some(reason);
        }
        self
    }
}

fn fan_out(
    ctx: &MapContext,
    b: Built,
    recorded: &str,
    time_unreadable: bool,
    line: LineRef<'_>,
) -> Vec<AuditEvent> {
    let mut base = b.event;
    base.recorded = recorded.to_owned();
    base.source = Source {
        site: ctx.site.clone(),
        observer: Reference::display(&ctx.observer_display),
        type_: vec![codes::source_type(
            b.source_type.unwrap_or(ctx.source_type.as_str()),
        )],
    };
    let mut meta = Meta::default();
    if line.flags.truncated {
        meta.tag.push(codes::FLAG_TRUNCATED.coding());
    }
    if line.flags.invalid_utf8 {
        meta.tag.push(codes::FLAG_INVALID_UTF8.coding());
    }
    if time_unreadable {
        meta.tag.push(codes::FLAG_TIME_UNREADABLE.coding());
    }
    let allowed = !b.claim.success_only || base.outcome == Some(Outcome::Success);
    let variants: Vec<(Option<&String>, Option<&'static str>)> = if b.patients.is_empty() {
        vec![(None, b.claim.plain.filter(|_| allowed))]
    } else {
        b.patients
            .iter()
            .map(|p| (Some(p), b.claim.with_patient.filter(|_| allowed)))
            .collect()
    };
    let last = variants.len().saturating_sub(1);
    variants
        .into_iter()
        .enumerate()
        .map(|(index, (patient, profile))| {
            // One event per patient: all but the last start from a copy of the shared part.
            let mut ev = if index < last {
                base.clone()
            } else {
                std::mem::take(&mut base)
            };
            let id = event_id(&ctx.hostname, &ctx.source, line.position, index);
            ev.id = id.to_string();
            ev.extension.push(Extension {
                url: ctx.event_id_extension.clone(),
                value_identifier: Some(Identifier {
                    system: Some(codes::SYS_RFC3986.to_owned()),
                    value: Some(format!("urn:uuid:{id}")),
                    type_: None,
                }),
                value_codeable_concept: None,
            });
            if let Some(p) = patient {
                ev.entity.push(patient_entity(p));
            }
            let mut m = meta.clone();
            if let Some(p) = profile {
                match b.claim.missing {
                    None => m.profile.push(codes::profile_url(p)),
                    Some(reason) => crate::events::profile_downgraded(p, reason),
                }
            }
            for p in &b.extra {
                m.profile.push(codes::profile_url(p));
            }
            for (p, reason) in &b.withheld {
                crate::events::profile_downgraded(p, reason);
            }
            ev.meta = (!m.is_empty()).then_some(m);
            ev
        })
        .collect()
}

// ---- REST -------------------------------------------------------------------------------

/// The FHIR RESTful interaction a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interaction {
    Create,
    Read,
    Vread,
    Update,
    Patch,
    Delete,
    Search,
    SearchType,
    SearchSystem,
    Operation,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    Transaction,
    /// A request under the base that is no FHIR interaction (or has malformed ids).
    Unknown,
}

impl Interaction {
    fn subtype(self) -> Option<Code> {
        use Interaction::*;
        Some(match self {
            Create => codes::RI_CREATE,
            Read => codes::RI_READ,
            Vread => codes::RI_VREAD,
            Update => codes::RI_UPDATE,
            Patch => codes::RI_PATCH,
            Delete => codes::RI_DELETE,
            Search => codes::RI_SEARCH,
            SearchType => codes::RI_SEARCH_TYPE,
            SearchSystem => codes::RI_SEARCH_SYSTEM,
            Operation => codes::RI_OPERATION,
            HistoryInstance => codes::RI_HISTORY_INSTANCE,
            HistoryType => codes::RI_HISTORY_TYPE,
            HistorySystem => codes::RI_HISTORY_SYSTEM,
            Transaction => codes::RI_TRANSACTION,
            Unknown => return None,
        })
    }

    fn action(self, method: &str) -> Action {
        use Interaction::*;
        match self {
            Create => Action::C,
            Read | Vread | HistoryInstance | HistoryType | HistorySystem => Action::R,
            Update | Patch => Action::U,
            Delete => Action::D,
            Search | SearchType | SearchSystem | Operation | Transaction => Action::E,
            Unknown if is_read_method(method) => Action::R,
            Unknown => Action::E,
        }
    }

    fn profiles(self) -> Option<(&'static str, &'static str)> {
        use Interaction::*;
        use codes::profile as p;
        match self {
            Create => Some((p::CREATE, p::PATIENT_CREATE)),
            Read | Vread => Some((p::READ, p::PATIENT_READ)),
            Update | Patch => Some((p::UPDATE, p::PATIENT_UPDATE)),
            Delete => Some((p::DELETE, p::PATIENT_DELETE)),
            Search | SearchType | SearchSystem => Some((p::QUERY, p::PATIENT_QUERY)),
            _ => None,
        }
    }

    /// (client, server) agent types: Read flips the direction, Delete has its own pair.
    fn endpoint_types(self) -> (Code, Code) {
        use Interaction::*;
        match self {
            Read | Vread | HistoryInstance | HistoryType | HistorySystem => {
                (codes::DCM_DESTINATION_ROLE_ID, codes::DCM_SOURCE_ROLE_ID)
            }
            Delete => (codes::DCM_APPLICATION, codes::PROV_CUSTODIAN),
            _ => (codes::DCM_SOURCE_ROLE_ID, codes::DCM_DESTINATION_ROLE_ID),
        }
    }

    /// IRCP for those who receive data, AUT for those who write it.
    fn user_type(self, method: &str) -> Code {
        use Interaction::*;
        match self {
            Create | Update | Patch | Delete => codes::PART_AUT,
            Read | Vread | Search | SearchType | SearchSystem | HistoryInstance | HistoryType
            | HistorySystem => codes::PART_IRCP,
            Operation | Transaction | Unknown if is_read_method(method) => codes::PART_IRCP,
            Operation | Transaction | Unknown => codes::PART_AUT,
        }
    }

    fn is_search(self) -> bool {
        matches!(
            self,
            Interaction::Search | Interaction::SearchType | Interaction::SearchSystem
        )
    }

    fn is_crud(self) -> bool {
        use Interaction::*;
        matches!(self, Create | Read | Vread | Update | Patch | Delete)
    }
}

fn is_read_method(method: &str) -> bool {
    method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD")
}

/// What a request line says.
#[derive(Debug, Clone, Default)]
struct Request {
    interaction: Option<Interaction>,
    rtype: Option<String>,
    id: Option<String>,
    version: Option<String>,
    /// Update/patch without an id (not covered by BALP).
    conditional: bool,
    path_patients: Vec<String>,
}

/// Split a logged request target into path and query, dropping scheme, authority and fragment.
fn split_target(url: &str) -> (&str, Option<&str>) {
    let mut u = url.trim();
    if let Some(i) = u.find('#') {
        u = &u[..i];
    }
    if !u.starts_with('/')
        && let Some(i) = u.find("://")
    {
        let after = &u[i + 3..];
        u = match after.find(['/', '?']) {
            Some(j) => &after[j..],
            None => "",
        };
    }
    match u.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (u, None),
    }
}

/// The part of `path` below the longest matching base, or None when outside every base.
fn below_base<'a>(path: &'a str, bases: &[String]) -> Option<&'a str> {
    let mut best: Option<(usize, &'a str)> = None;
    for b in bases {
        let (bpath, _) = split_target(b);
        let bpath = bpath.trim().trim_end_matches('/');
        let bpath = bpath.strip_prefix('/').unwrap_or(bpath);
        let p = path.strip_prefix('/').unwrap_or(path);
        let rest = if bpath.is_empty() {
            Some(p)
        } else if p == bpath {
            Some("")
        } else {
            p.strip_prefix(bpath).filter(|r| r.starts_with('/'))
        };
        if let Some(r) = rest
            && best.is_none_or(|(len, _)| bpath.len() >= len)
        {
            best = Some((bpath.len(), r));
        }
    }
    best.map(|(_, r)| r)
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

/// Classify a request below the base. `None` means "produce no event" (capabilities).
fn classify(method: &str, rest: &str, has_query: bool) -> Option<Request> {
    use Interaction::*;
    let m = method.to_ascii_uppercase();
    let m = m.as_str();
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let mut r = Request::default();
    let get = m == "GET" || m == "HEAD";
    let interaction = match segs.as_slice() {
        [] => match m {
            _ if get => SearchSystem,
            "POST" => Transaction,
            _ => Unknown,
        },
        ["metadata"] if get || m == "OPTIONS" => return None,
        ["_search"] if m == "POST" || get => SearchSystem,
        ["_history"] => HistorySystem,
        [op] if op.starts_with('$') => Operation,
        [t] if is_type(t) => {
            r.rtype = Some((*t).to_owned());
            match m {
                _ if get => SearchType,
                "POST" => Create,
                "PUT" => {
                    r.conditional = true;
                    Update
                }
                "PATCH" => {
                    r.conditional = true;
                    Patch
                }
                "DELETE" if has_query => Delete,
                _ => Unknown,
            }
        }
        [t, "_search"] if is_type(t) && (m == "POST" || get) => {
            r.rtype = Some((*t).to_owned());
            SearchType
        }
        [t, "_history"] if is_type(t) => {
            r.rtype = Some((*t).to_owned());
            HistoryType
        }
        [t, op] if is_type(t) && op.starts_with('$') => {
            r.rtype = Some((*t).to_owned());
            Operation
        }
        [t, id] if is_type(t) && is_id(id) => {
            r.rtype = Some((*t).to_owned());
            r.id = Some((*id).to_owned());
            match m {
                _ if get => Read,
                "PUT" => Update,
                "PATCH" => Patch,
                "DELETE" => Delete,
                _ => Unknown,
            }
        }
        [t, id, "_history"] if is_type(t) && is_id(id) => {
            r.rtype = Some((*t).to_owned());
            r.id = Some((*id).to_owned());
            HistoryInstance
        }
        [t, id, "_history", v] if is_type(t) && is_id(id) && is_id(v) => {
            r.rtype = Some((*t).to_owned());
            r.id = Some((*id).to_owned());
            r.version = Some((*v).to_owned());
            if get { Vread } else { Unknown }
        }
        [t, id, op] if is_type(t) && is_id(id) && op.starts_with('$') => {
            r.rtype = Some((*t).to_owned());
            r.id = Some((*id).to_owned());
            Operation
        }
        [c, id, t] if is_type(c) && is_id(id) && is_type(t) && get => {
            // Compartment search: the compartment owner is known, the result type searched.
            if *c == "Patient" {
                r.path_patients.push((*id).to_owned());
            }
            r.rtype = Some((*t).to_owned());
            SearchType
        }
        _ => Unknown,
    };
    if r.rtype.as_deref() == Some("Patient")
        && let Some(id) = &r.id
    {
        r.path_patients.push(id.clone());
    }
    r.interaction = Some(interaction);
    Some(r)
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Percent-decoded, with control characters replaced, for `entity.description`.
fn clean(s: &str) -> String {
    decode(s)
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// The id of a patient reference (`Patient/1`, `http://x/fhir/Patient/1/_history/2`), or of a
/// plain id when `plain` allows it.
fn patient_id(item: &str, plain: bool) -> Option<String> {
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

/// Patients named by search parameters.
fn query_patients(query: &str, rtype: Option<&str>, out: &mut Vec<String>) {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k);
        let v = decode(v);
        let (name, modifier) = match k.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (k.as_str(), None),
        };
        let plain = match (name, modifier) {
            ("patient", None | Some("Patient")) => true,
            ("subject", Some("Patient")) => true,
            ("subject", None) => false,
            ("_id", None) if rtype == Some("Patient") => true,
            _ => continue,
        };
        out.extend(v.split(',').filter_map(|item| patient_id(item, plain)));
    }
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

fn rest_pattern(ctx: &MapContext, f: &Fields, raw: &Fields) -> Option<Built> {
    let method = f.get(F::Method).unwrap_or("GET").trim();
    let Some(url) = f.get(F::Url) else {
        // Best effort: a request whose target was not logged is still recorded, as a generic
        // `rest` event without interaction or profile.
        let req = Request {
            interaction: Some(Interaction::Unknown),
            ..Request::default()
        };
        return Some(rest_event(ctx, f, raw, method, None, None, req, None));
    };
    let (path, query) = split_target(url);
    let rest = below_base(path, &ctx.fhir_bases)?;
    let req = classify(method, rest, query.is_some_and(|q| !q.is_empty()))?;
    Some(rest_event(ctx, f, raw, method, Some(url), query, req, None))
}

/// Build the REST-shaped event for a classified request.
#[allow(clippy::too_many_arguments)]
fn rest_event(
    ctx: &MapContext,
    f: &Fields,
    raw_fields: &Fields,
    method: &str,
    url: Option<&str>,
    query: Option<&str>,
    req: Request,
    resource_name: Option<&str>,
) -> Built {
    let interaction = req.interaction.unwrap_or(Interaction::Unknown);
    let outcome = outcome(f);
    let (client_type, server_type) = interaction.endpoint_types();
    let mut ev = AuditEvent {
        type_: codes::TYPE_REST.coding(),
        subtype: interaction
            .subtype()
            .map(|c| c.coding())
            .into_iter()
            .collect(),
        action: Some(interaction.action(method)),
        outcome: Some(outcome),
        outcome_desc: f.get(F::OutcomeDesc).map(str::to_owned),
        ..AuditEvent::default()
    };
    let client = client_agent(f, client_type);
    let client_ok = client.network.is_some() && client.who.is_some();
    ev.agent.push(client);
    ev.agent.push(server_agent(ctx, f, server_type));
    if let Some(u) = user_agent(ctx, f, interaction.user_type(method)) {
        ev.agent.push(u);
    }
    // The query entity keeps exactly what was requested (BALP), so it reads the fields as
    // logged, before control characters were replaced.
    let raw_method = raw_fields.get(F::Method).map(str::trim).unwrap_or(method);
    let raw_request = match (raw_fields.get(F::Query), raw_fields.get(F::Url)) {
        (Some(q), _) => Some(q.to_owned()),
        (None, Some(u)) => Some(format!("{raw_method} {u}")),
        (None, None) => url.map(|u| format!("{method} {u}")),
    };
    if interaction.is_crud() {
        ev.entity
            .push(data_entity(&req, resource_name, query, f, ctx.mode));
    } else {
        let raw = raw_request.unwrap_or_else(|| method.to_owned());
        let description = f
            .get(F::Description)
            .map(str::to_owned)
            .unwrap_or_else(|| clean(&raw));
        if !interaction.is_search()
            && let (Some(t), Some(id)) = (&req.rtype, &req.id)
        {
            ev.entity.push(Entity {
                what: Some(Reference::to(&format!("{t}/{id}"))),
                type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
                role: Some(codes::ROLE_DOMAIN_RESOURCE.coding()),
                ..Entity::default()
            });
        }
        ev.entity.push(Entity {
            type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
            role: Some(codes::ROLE_QUERY.coding()),
            description: Some(description),
            query: Some(base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())),
            ..Entity::default()
        });
    }
    if let Some(rid) = f.get(F::RequestId) {
        ev.entity.push(Entity {
            what: Some(Reference::identifier(rid.trim())),
            type_: Some(codes::ENTITY_XREQUEST_ID.coding()),
            ..Entity::default()
        });
    }
    let mut patients = req.path_patients.clone();
    if let Some(q) = query {
        query_patients(q, req.rtype.as_deref(), &mut patients);
    }
    field_patients(f, &mut patients);
    let claim = Claim::rest(interaction.profiles().filter(|_| !req.conditional))
        .unless_missing(client_ok, "client network address unknown");
    let mut b = Built::new(ev, claim, dedup(patients));
    b.client_idx = Some(0);
    b
}

fn data_entity(
    req: &Request,
    resource_name: Option<&str>,
    query: Option<&str>,
    f: &Fields,
    mode: Mode,
) -> Entity {
    let what = match (&req.rtype, &req.id, &req.version) {
        (Some(t), Some(id), Some(v)) => Reference::to(&format!("{t}/{id}/_history/{v}")),
        (Some(t), Some(id), None) => Reference::to(&format!("{t}/{id}")),
        // Create (id assigned by the server, not logged) or conditional: the type only.
        (Some(t), None, _) => Reference {
            type_: Some(t.clone()),
            ..Reference::default()
        },
        _ => match resource_name {
            Some(name) => Reference::identifier(name),
            None => Reference::display("unknown"),
        },
    };
    let mut detail = Vec::new();
    if resource_name.is_some()
        && req.rtype.is_none()
        && let Some(db) = f.get(F::Database)
    {
        detail.push(EntityDetail {
            type_: "database".to_owned(),
            value_string: Some(db.to_owned()),
            value_base64_binary: None,
        });
    }
    let description = match (f.get(F::Description), query) {
        (Some(d), _) if mode == Mode::Comprehensive || req.rtype.is_none() => Some(d.to_owned()),
        (_, Some(q)) if req.id.is_none() && !q.is_empty() => Some(clean(q)),
        _ => None,
    };
    Entity {
        what: Some(what),
        type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
        role: Some(codes::ROLE_DOMAIN_RESOURCE.coding()),
        description,
        detail,
        ..Entity::default()
    }
}

pub(super) fn patient_entity(id: &str) -> Entity {
    Entity {
        what: Some(Reference::to(&format!("Patient/{id}"))),
        type_: Some(codes::ENTITY_PERSON.coding()),
        role: Some(codes::ROLE_PATIENT.coding()),
        ..Entity::default()
    }
}

// ---- explicit CRUD/query patterns -------------------------------------------------------

fn explicit_pattern(ctx: &MapContext, f: &Fields, raw: &Fields, pattern: Pattern) -> Option<Built> {
    use Interaction::*;
    let url = f.get(F::Url);
    let (path, query) = url.map(split_target).unwrap_or(("", None));
    let mut req = Request::default();
    let mut resource_name = None;
    let resource = f.get(F::Resource).map(str::trim);
    let target = match resource {
        Some(r) => Some(r),
        None if !path.is_empty() => Some(below_base(path, &ctx.fhir_bases).unwrap_or(path)),
        None => None,
    };
    if let Some(t) = target {
        let segs: Vec<&str> = t.split('/').filter(|s| !s.is_empty()).collect();
        match segs.as_slice() {
            [ty] if is_type(ty) => req.rtype = Some((*ty).to_owned()),
            [ty, id] | [ty, id, "_history"] if is_type(ty) && is_id(id) => {
                req.rtype = Some((*ty).to_owned());
                req.id = Some((*id).to_owned());
            }
            [ty, id, "_history", v] if is_type(ty) && is_id(id) && is_id(v) => {
                req.rtype = Some((*ty).to_owned());
                req.id = Some((*id).to_owned());
                req.version = Some((*v).to_owned());
            }
            _ => resource_name = resource,
        }
    }
    let interaction = match pattern {
        Pattern::Create => Create,
        Pattern::Read if req.version.is_some() => Vread,
        Pattern::Read => Read,
        Pattern::Update => Update,
        Pattern::Delete => Delete,
        _ if req.rtype.is_some() => SearchType,
        _ => Search,
    };
    if interaction == Update && req.id.is_none() && req.rtype.is_some() {
        req.conditional = true;
    }
    if req.rtype.as_deref() == Some("Patient")
        && let Some(id) = &req.id
    {
        req.path_patients.push(id.clone());
    }
    req.interaction = Some(interaction);
    let method = f
        .get(F::Method)
        .map(str::trim)
        .unwrap_or(match interaction {
            Create => "POST",
            Update => "PUT",
            Delete => "DELETE",
            _ => "GET",
        });
    Some(rest_event(
        ctx,
        f,
        raw,
        method,
        url,
        query,
        req,
        resource_name,
    ))
}

// ---- agents -----------------------------------------------------------------------------

pub(super) fn network(addr: &str) -> Network {
    let a = addr.trim();
    let bare = a.trim_start_matches('[').trim_end_matches(']');
    let type_ =
        if bare.parse::<std::net::IpAddr>().is_ok() || a.parse::<std::net::SocketAddr>().is_ok() {
            NetworkType::IpAddress
        } else if a.contains("://") {
            NetworkType::Uri
        } else {
            NetworkType::MachineName
        };
    Network {
        address: Some(a.to_owned()),
        type_: Some(type_),
    }
}

/// The client's address: the first X-Forwarded-For hop when known, else the peer address.
pub(super) fn client_address(f: &Fields) -> Option<&str> {
    let hop = f
        .get(F::ForwardedFor)
        .and_then(|x| x.split(',').next())
        .map(str::trim)
        .filter(|h| !h.is_empty() && *h != "-" && !h.eq_ignore_ascii_case("unknown"));
    hop.or_else(|| f.get(F::ClientAddress).map(str::trim))
        .filter(|a| !a.is_empty())
}

pub(super) fn client_agent(f: &Fields, type_: Code) -> Agent {
    let addr = client_address(f);
    let display = f.get(F::ClientId).map(str::trim).or(addr);
    Agent {
        type_: Some(type_.concept()),
        who: display.map(Reference::display),
        requestor: false,
        network: addr.map(network),
        ..Agent::default()
    }
}

pub(super) fn server_agent(ctx: &MapContext, f: &Fields, type_: Code) -> Agent {
    let name = f
        .get(F::ServerAddress)
        .map(str::trim)
        .unwrap_or(ctx.hostname.as_str());
    Agent {
        type_: Some(type_.concept()),
        who: Some(Reference::display(name)),
        requestor: false,
        network: Some(network(name)),
        ..Agent::default()
    }
}

/// The requesting user, typed `type_` for the pattern; a security token the fields carry adds
/// its agent type and `policy` to this same agent (see [`super::token`]), so the user slice of
/// a REST profile and the token profile's user slice are one agent.
pub(super) fn user_agent(ctx: &MapContext, f: &Fields, type_: Code) -> Option<Agent> {
    let token = super::token::Token::of(f);
    let saml = matches!(token, super::token::Token::Saml { .. });
    let subject = if saml { f.get(F::SamlSubject) } else { None };
    let user = subject.or_else(|| f.get(F::User))?.trim();
    let issuer_field = if saml { F::SamlIssuer } else { F::Issuer };
    let issuer = f
        .get(issuer_field)
        .map(str::trim)
        // Identifier.system is a uri: an issuer that is none is left out, not mangled.
        .filter(|i| i.contains(':') && !i.chars().any(char::is_whitespace))
        .map(str::to_owned);
    let mut who = Reference {
        identifier: Some(Identifier {
            system: issuer,
            value: Some(user.to_owned()),
            type_: None,
        }),
        ..Reference::default()
    };
    let mut agent = Agent {
        type_: Some(type_.concept()),
        requestor: true,
        ..Agent::default()
    };
    if ctx.mode == Mode::Comprehensive {
        if let Some(name) = f.get(F::UserName).map(str::trim) {
            who.display = Some(name.to_owned());
            agent.name = Some(name.to_owned());
        }
        if let Some(role) = f.get(F::UserRole).map(str::trim) {
            agent.role.push(CodeableConcept::from_text(role));
        }
    }
    agent.purpose_of_use = purposes(f);
    agent.who = Some(who);
    token.enhance(&mut agent);
    Some(agent)
}

/// The purpose-of-use codes (v3-ActReason), one per comma- or space-separated item: a FHIR
/// `code` holds no leading, trailing or repeated whitespace.
fn purposes(f: &Fields) -> Vec<CodeableConcept> {
    f.get(F::PurposeOfUse)
        .unwrap_or("")
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|c| !c.is_empty())
        .map(|code| CodeableConcept::from_coding(Coding::new(codes::SYS_ACT_REASON, code, None)))
        .collect()
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

// ---- login / logout / security alert ----------------------------------------------------

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

fn auth_event(ctx: &MapContext, f: &Fields, pattern: Pattern) -> Built {
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

fn security_alert(ctx: &MapContext, f: &Fields) -> Built {
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

// ---- disclosure -------------------------------------------------------------------------

fn disclosure(ctx: &MapContext, f: &Fields, received: bool) -> Built {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balp::conformance;
    use crate::source::LineFlags;
    use serde_json::Value;
    use std::sync::Arc;

    fn ctx(mode: Mode) -> MapContext {
        MapContext {
            hostname: "fhir01.example.org".into(),
            source: "nginx".into(),
            observer_display: "balp-agent@fhir01".into(),
            site: Some("Example Hospital".into()),
            source_type: "4".into(),
            mode,
            fhir_bases: vec!["/fhir".into(), "/basic/fhir/".into()],
            event_id_extension: "urn:balp-agent:event-id".into(),
        }
    }

    fn extracted(pattern: Pattern, fields: &[(F, &str)]) -> Extracted {
        let mut f = Fields::default();
        for (k, v) in fields {
            f.set(*k, *v);
        }
        let ts: jiff::Timestamp = "2026-11-25T15:25:33Z".parse().unwrap();
        Extracted {
            parser: Arc::from("test"),
            pattern,
            time: Some(Stamp {
                ts,
                offset: jiff::tz::Offset::UTC,
            }),
            time_unreadable: false,
            fields: f,
        }
    }

    fn line(pos: &str) -> LineRef<'_> {
        LineRef {
            position: pos,
            flags: LineFlags::default(),
        }
    }

    /// Every event any test produces goes through here: R4 + claimed profiles, no root
    /// `identifier`, id repeated in the extension.
    fn conformant(events: &[AuditEvent]) -> Vec<Value> {
        events
            .iter()
            .map(|e| {
                let text = serde_json::to_string(e).unwrap();
                let v: Value = serde_json::from_str(&text).unwrap();
                let problems = conformance::check(&v);
                assert!(problems.is_empty(), "{problems:#?}\n{v:#}");
                assert!(v.get("identifier").is_none(), "root identifier in {v}");
                assert_eq!(
                    v["extension"][0]["valueIdentifier"]["value"],
                    format!("urn:uuid:{}", e.id)
                );
                assert_eq!(e.uuid().to_string(), e.id);
                v
            })
            .collect()
    }

    fn map(mode: Mode, pattern: Pattern, fields: &[(F, &str)]) -> Vec<Value> {
        let events = map_extracted(&ctx(mode), &extracted(pattern, fields), line("file:1@0"));
        conformant(&events)
    }

    fn rest(method: &str, url: &str, status: &str) -> Vec<Value> {
        map(
            Mode::Minimal,
            Pattern::Rest,
            &[
                (F::Method, method),
                (F::Url, url),
                (F::Status, status),
                (F::ClientAddress, "10.1.2.3"),
                (F::User, "dr.smith"),
            ],
        )
    }

    fn profile(v: &Value) -> Option<&str> {
        v.pointer("/meta/profile/0")
            .and_then(Value::as_str)
            .map(|p| p.trim_start_matches(codes::PROFILE_BASE))
    }

    fn subtype(v: &Value) -> &str {
        v["subtype"][0]["code"].as_str().unwrap_or("")
    }

    fn agent_code(v: &Value, i: usize) -> &str {
        v["agent"][i]["type"]["coding"][0]["code"].as_str().unwrap()
    }

    fn entity_refs(v: &Value) -> Vec<String> {
        v["entity"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.pointer("/what/reference").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    fn nginx_corpus() -> Vec<(String, Vec<(F, String)>)> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/generated/nginx1.22-apache2.4-fhir/nginx-access-fhir_audit.log"
        );
        let re = regex::Regex::new(
            r#"^(\S+) \S+ \S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d+) .* user="([^"]*)" xff="([^"]*)" rid="([^"]*)""#,
        )
        .unwrap();
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let c = re.captures(l).unwrap_or_else(|| panic!("corpus line: {l}"));
                let g = |i: usize| c[i].to_owned();
                (
                    format!("{} {} {}", g(2), g(3), g(4)),
                    vec![
                        (F::ClientAddress, g(1)),
                        (F::Method, g(2)),
                        (F::Url, g(3)),
                        (F::Status, g(4)),
                        (F::User, g(5)),
                        (F::ForwardedFor, g(6)),
                        (F::RequestId, g(7)),
                    ],
                )
            })
            .collect()
    }

    #[test]
    fn every_interaction_in_the_nginx_corpus_maps_as_expected() {
        // (request, number of events, subtype, profile of the first event)
        let expected: &[(&str, usize, &str, Option<&str>)] = &[
            (
                "GET /fhir/Patient/123 200",
                1,
                "read",
                Some("IHE.BasicAudit.PatientRead"),
            ),
            (
                "GET /fhir/Observation?patient=123&_count=50&_sort=-date 200",
                1,
                "search-type",
                Some("IHE.BasicAudit.PatientQuery"),
            ),
            (
                "POST /fhir/Patient 201",
                1,
                "create",
                Some("IHE.BasicAudit.Create"),
            ),
            (
                "PUT /fhir/Patient/123 200",
                1,
                "update",
                Some("IHE.BasicAudit.PatientUpdate"),
            ),
            (
                "DELETE /fhir/Patient/123 204",
                1,
                "delete",
                Some("IHE.BasicAudit.PatientDelete"),
            ),
            (
                "GET /fhir/Patient/123/$everything 200",
                1,
                "operation",
                None,
            ),
            (
                "GET /fhir/Patient?name=M%C3%BCller&birthdate=ge1970-01-01 200",
                1,
                "search-type",
                Some("IHE.BasicAudit.Query"),
            ),
            ("GET /fhir/Patient/999 404", 1, "read", None),
            (
                "GET /basic/fhir/Patient/123/_history/2 200",
                1,
                "vread",
                Some("IHE.BasicAudit.PatientRead"),
            ),
            ("GET /basic/fhir/Patient/123 401", 1, "read", None),
            ("POST /basic/fhir/ 201", 1, "transaction", None),
            ("GET /fhir/metadata 200", 0, "", None),
        ];
        let corpus = nginx_corpus();
        assert_eq!(corpus.len(), expected.len());
        for (i, ((req, fields), exp)) in corpus.iter().zip(expected).enumerate() {
            assert_eq!(req, exp.0);
            let fields: Vec<(F, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let pos = format!("file:1@{i}");
            let events = map_extracted(
                &ctx(Mode::Minimal),
                &extracted(Pattern::Rest, &fields),
                line(&pos),
            );
            let vs = conformant(&events);
            assert_eq!(vs.len(), exp.1, "{req}");
            if let Some(v) = vs.first() {
                assert_eq!(subtype(v), exp.2, "{req}");
                assert_eq!(profile(v), exp.3, "{req}");
                assert_eq!(v["recorded"], "2026-11-25T15:25:33+00:00");
                // X-Request-Id always becomes the transaction entity.
                assert!(
                    v["entity"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|e| e["type"]["code"] == "XrequestId")
                );
            }
        }
    }

    #[test]
    fn read_flips_client_and_server_and_user_is_ircp() {
        let v = &rest("GET", "/fhir/Observation/7", "200")[0];
        assert_eq!(profile(v), Some("IHE.BasicAudit.Read"));
        assert_eq!(v["action"], "R");
        assert_eq!(agent_code(v, 0), "110152");
        assert_eq!(v["agent"][0]["network"]["address"], "10.1.2.3");
        assert_eq!(v["agent"][0]["network"]["type"], "2");
        assert_eq!(agent_code(v, 1), "110153");
        assert_eq!(v["agent"][1]["who"]["display"], "fhir01.example.org");
        assert_eq!(v["agent"][1]["network"]["type"], "1");
        assert_eq!(agent_code(v, 2), "IRCP");
        assert_eq!(v["agent"][2]["who"]["identifier"]["value"], "dr.smith");
        assert_eq!(v["agent"][2]["requestor"], true);
        assert_eq!(entity_refs(v), vec!["Observation/7"]);
    }

    #[test]
    fn writes_use_source_destination_and_aut_and_delete_uses_custodian() {
        let c = &rest("POST", "/fhir/Observation", "201")[0];
        assert_eq!(
            (agent_code(c, 0), agent_code(c, 1), agent_code(c, 2)),
            ("110153", "110152", "AUT")
        );
        assert_eq!(c["action"], "C");
        assert_eq!(c["entity"][0]["what"]["type"], "Observation");
        let u = &rest("PATCH", "/fhir/Observation/1", "200")[0];
        assert_eq!((subtype(u), u["action"].as_str()), ("patch", Some("U")));
        assert_eq!(profile(u), Some("IHE.BasicAudit.Update"));
        let d = &rest("DELETE", "/fhir/Observation/1", "204")[0];
        assert_eq!(
            (agent_code(d, 0), agent_code(d, 1), agent_code(d, 2)),
            ("110150", "custodian", "AUT")
        );
        assert_eq!(profile(d), Some("IHE.BasicAudit.Delete"));
        let cd = &rest("DELETE", "/fhir/Observation?patient=5", "200")[0];
        assert_eq!(profile(cd), Some("IHE.BasicAudit.PatientDelete"));
        let cu = &rest("PUT", "/fhir/Observation?identifier=x", "200")[0];
        assert_eq!(subtype(cu), "update");
        assert_eq!(
            profile(cu),
            None,
            "conditional update is not covered by BALP"
        );
    }

    #[test]
    fn patient_resource_reads_carry_data_and_patient_entities() {
        let v = &rest("GET", "/fhir/Patient/123/_history/4", "200")[0];
        assert_eq!(
            entity_refs(v),
            vec!["Patient/123/_history/4", "Patient/123"]
        );
        assert_eq!(profile(v), Some("IHE.BasicAudit.PatientRead"));
    }

    #[test]
    fn searches_of_every_kind() {
        let st = &rest("POST", "/fhir/Observation/_search?patient=Patient/9", "200")[0];
        assert_eq!(
            (subtype(st), profile(st)),
            ("search-type", Some("IHE.BasicAudit.PatientQuery"))
        );
        let q = st["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["role"]["code"] == "24")
            .unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(q["query"].as_str().unwrap())
            .unwrap();
        assert_eq!(raw, b"POST /fhir/Observation/_search?patient=Patient/9");
        assert!(q.get("what").is_none() && q.get("name").is_none());
        let ss = &rest("POST", "/fhir/_search", "200")[0];
        assert_eq!(
            (subtype(ss), profile(ss)),
            ("search-system", Some("IHE.BasicAudit.Query"))
        );
        let sg = &rest("GET", "/fhir?_type=Observation&subject=Patient/3", "200")[0];
        assert_eq!(
            (subtype(sg), profile(sg)),
            ("search-system", Some("IHE.BasicAudit.PatientQuery"))
        );
        let comp = &rest("GET", "/fhir/Patient/44/Observation?code=x", "200")[0];
        assert_eq!(
            (subtype(comp), profile(comp)),
            ("search-type", Some("IHE.BasicAudit.PatientQuery"))
        );
        assert_eq!(entity_refs(comp), vec!["Patient/44"]);
        let desc = &rest("GET", "/fhir/Patient?name=M%C3%BCller", "200")[0];
        assert_eq!(
            desc["entity"][0]["description"],
            "GET /fhir/Patient?name=Müller"
        );
        assert_eq!(desc["action"], "E");
        assert_eq!(agent_code(desc, 0), "110153");
        assert_eq!(agent_code(desc, 2), "IRCP");
    }

    #[test]
    fn query_fans_out_one_event_per_patient() {
        let vs = rest(
            "GET",
            "/fhir/Observation?patient=1,2&subject:Patient=2&patient=Patient/3",
            "200",
        );
        assert_eq!(vs.len(), 3);
        let ids: std::collections::HashSet<_> =
            vs.iter().map(|v| v["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 3);
        for (v, p) in vs.iter().zip(["1", "2", "3"]) {
            assert_eq!(profile(v), Some("IHE.BasicAudit.PatientQuery"));
            assert_eq!(entity_refs(v), vec![format!("Patient/{p}")]);
        }
        let two = rest("GET", "/fhir/Observation?patient=1,2", "200");
        assert_eq!(two.len(), 2);
        assert_ne!(two[0]["id"], two[1]["id"]);
        // The patient field adds to the URL's patients, without duplicates.
        let vs = map(
            Mode::Minimal,
            Pattern::Rest,
            &[
                (F::Url, "/fhir/Patient/1"),
                (F::ClientAddress, "::1"),
                (F::Patient, "1, 8"),
            ],
        );
        assert_eq!(vs.len(), 2);
        assert_eq!(vs[0]["agent"][0]["network"]["type"], "2");
    }

    #[test]
    fn failed_requests_keep_the_shape_without_a_profile() {
        let v = &rest("GET", "/fhir/Patient/1", "404")[0];
        assert_eq!(v["outcome"], "4");
        assert!(v.get("meta").is_none());
        assert_eq!(entity_refs(v), vec!["Patient/1", "Patient/1"]);
        let v = &rest("GET", "/fhir/Observation?patient=1", "503")[0];
        assert_eq!(v["outcome"], "8");
        assert!(v.get("meta").is_none());
        let v = &map(
            Mode::Minimal,
            Pattern::Rest,
            &[
                (F::Url, "/fhir/Patient/1"),
                (F::ClientAddress, "h"),
                (F::Outcome, "serious"),
                (F::OutcomeDesc, "db down"),
            ],
        )[0];
        assert_eq!(
            (v["outcome"].as_str(), v["outcomeDesc"].as_str()),
            (Some("8"), Some("db down"))
        );
    }

    #[test]
    fn requests_outside_every_base_and_capabilities_give_nothing() {
        assert!(rest("GET", "/fhirx/Patient/1", "200").is_empty());
        assert!(rest("GET", "/other/Patient/1", "200").is_empty());
        assert!(rest("GET", "/fhir/metadata", "200").is_empty());
        assert!(rest("GET", "/", "200").is_empty());
        let abs = rest(
            "GET",
            "https://fhir.example.org:8443/fhir/Patient/5?_format=json",
            "200",
        );
        assert_eq!(profile(&abs[0]), Some("IHE.BasicAudit.PatientRead"));
    }

    #[test]
    fn operations_history_and_batches_are_rest_events_without_profile() {
        for (m, url, sub) in [
            ("GET", "/fhir/Patient/1/$everything", "operation"),
            ("POST", "/fhir/$reindex", "operation"),
            ("GET", "/fhir/Patient/1/_history", "history-instance"),
            ("GET", "/fhir/Observation/_history", "history-type"),
            ("GET", "/fhir/_history", "history-system"),
            ("POST", "/fhir", "transaction"),
        ] {
            let v = &rest(m, url, "200")[0];
            assert_eq!(v["type"]["code"], "rest");
            assert_eq!(subtype(v), sub, "{url}");
            assert_eq!(profile(v), None, "{url}");
        }
        let v = &rest("GET", "/fhir/Patient/1/$everything", "200")[0];
        assert!(entity_refs(v).contains(&"Patient/1".to_owned()));
    }

    #[test]
    fn ids_are_deterministic_and_follow_event_id() {
        let a = rest("GET", "/fhir/Observation?patient=1,2", "200");
        let b = rest("GET", "/fhir/Observation?patient=1,2", "200");
        assert_eq!(a[0]["id"], b[0]["id"]);
        assert_eq!(a[1]["id"], b[1]["id"]);
        let c = ctx(Mode::Minimal);
        assert_eq!(
            a[1]["id"],
            event_id(&c.hostname, &c.source, "file:1@0", 1).to_string()
        );
    }

    #[test]
    fn client_comes_from_forwarded_for_and_client_id() {
        let v = &map(
            Mode::Minimal,
            Pattern::Rest,
            &[
                (F::Url, "/fhir/Observation/1"),
                (F::ClientAddress, "10.0.0.5"),
                (F::ForwardedFor, "203.0.113.7, 10.0.0.5"),
                (F::ClientId, "portal-app"),
                (F::ServerAddress, "192.0.2.10"),
            ],
        )[0];
        assert_eq!(v["agent"][0]["network"]["address"], "203.0.113.7");
        assert_eq!(v["agent"][0]["who"]["display"], "portal-app");
        assert_eq!(
            v["agent"][1]["network"],
            serde_json::json!({"address": "192.0.2.10", "type": "2"})
        );
        assert_eq!(
            v["agent"].as_array().unwrap().len(),
            2,
            "no user agent without a user"
        );
    }

    #[test]
    fn without_a_client_address_no_profile_is_claimed() {
        let v = &map(
            Mode::Minimal,
            Pattern::Rest,
            &[(F::Url, "/fhir/Observation/1")],
        )[0];
        assert_eq!(profile(v), None);
        assert_eq!(v["outcome"], "0");
    }

    #[test]
    fn comprehensive_mode_adds_names_and_roles() {
        let fields = [
            (F::Url, "/fhir/Observation/1"),
            (F::ClientAddress, "10.0.0.5"),
            (F::User, "u1"),
            (F::UserName, "Dr. Smith"),
            (F::UserRole, "physician"),
            (F::Jti, "abc"),
            (F::Issuer, "https://idp.example.org"),
            (F::PurposeOfUse, "TREAT"),
        ];
        let min = &map(Mode::Minimal, Pattern::Rest, &fields)[0]["agent"][2];
        assert!(
            min["who"].get("display").is_none()
                && min.get("name").is_none()
                && min.get("role").is_none()
        );
        assert_eq!(
            min["who"]["identifier"]["system"],
            "https://idp.example.org"
        );
        assert_eq!(min["policy"][0], "urn:ietf:params:oauth:jti:abc");
        let full = &map(Mode::Comprehensive, Pattern::Rest, &fields)[0]["agent"][2];
        assert_eq!(full["who"]["display"], "Dr. Smith");
        assert_eq!(full["name"], "Dr. Smith");
        assert_eq!(full["role"][0]["text"], "physician");
    }

    #[test]
    fn explicit_patterns_use_the_resource_field() {
        let base = [(F::ClientAddress, "db-client"), (F::User, "app")];
        let with = |p: Pattern, extra: &[(F, &'static str)]| {
            let mut f = base.to_vec();
            f.extend_from_slice(extra);
            map(Mode::Minimal, p, &f)
        };
        let r = &with(Pattern::Read, &[(F::Resource, "Patient/7/_history/2")])[0];
        assert_eq!(
            (subtype(r), profile(r)),
            ("vread", Some("IHE.BasicAudit.PatientRead"))
        );
        let c = &with(
            Pattern::Create,
            &[
                (F::Resource, "public.orders"),
                (F::Database, "emr"),
                (F::Patient, "42"),
            ],
        )[0];
        assert_eq!(profile(c), Some("IHE.BasicAudit.PatientCreate"));
        assert_eq!(
            c["entity"][0]["what"]["identifier"]["value"],
            "public.orders"
        );
        assert_eq!(c["entity"][0]["detail"][0]["valueString"], "emr");
        let q = &with(
            Pattern::Query,
            &[
                (F::Query, "SELECT * FROM orders"),
                (F::Resource, "public.orders"),
            ],
        )[0];
        assert_eq!(
            (subtype(q), profile(q)),
            ("search", Some("IHE.BasicAudit.Query"))
        );
        let d = &with(Pattern::Delete, &[(F::Url, "/fhir/Observation/3")])[0];
        assert_eq!(
            (subtype(d), profile(d)),
            ("delete", Some("IHE.BasicAudit.Delete"))
        );
        let u = &with(Pattern::Update, &[(F::Resource, "Observation/3")])[0];
        assert_eq!(profile(u), Some("IHE.BasicAudit.Update"));
    }

    #[test]
    fn login_and_logout_follow_the_r4_examples_without_profile() {
        let v = &map(
            Mode::Minimal,
            Pattern::Login,
            &[
                (F::User, "alice"),
                (F::ClientAddress, "198.51.100.4"),
                (F::Outcome, "failure"),
            ],
        )[0];
        assert_eq!(v["type"]["code"], "110114");
        assert_eq!(subtype(v), "110122");
        assert_eq!(
            (v["action"].as_str(), v["outcome"].as_str()),
            (Some("E"), Some("4"))
        );
        assert!(v.get("meta").is_none());
        assert_eq!(agent_code(v, 0), "humanuser");
        assert_eq!(v["agent"][0]["requestor"], true);
        assert_eq!(v["agent"][1]["network"]["address"], "198.51.100.4");
        assert_eq!(v["agent"][2]["who"]["display"], "fhir01.example.org");
        let v = &map(Mode::Minimal, Pattern::Logout, &[(F::User, "alice")])[0];
        assert_eq!((subtype(v), v["outcome"].as_str()), ("110123", Some("0")));
    }

    #[test]
    fn security_alert_records_target_user_and_command() {
        let fields = [
            (F::User, "bob"),
            (F::TargetUser, "root"),
            (F::Command, "/usr/bin/cat /etc/shadow"),
            (F::Terminal, "pts/0"),
        ];
        let v = &map(Mode::Minimal, Pattern::SecurityAlert, &fields)[0];
        assert_eq!(
            (v["type"]["code"].as_str(), subtype(v)),
            (Some("110113"), "110132")
        );
        assert_eq!(v["entity"][0]["what"]["identifier"]["value"], "root");
        assert_eq!(
            v["entity"][1]["what"]["identifier"]["value"],
            "/usr/bin/cat"
        );
        assert!(v["entity"][1].get("description").is_none());
        let v = &map(Mode::Comprehensive, Pattern::SecurityAlert, &fields)[0];
        assert_eq!(v["entity"][1]["description"], "/usr/bin/cat /etc/shadow");
        let v = &map(
            Mode::Minimal,
            Pattern::SecurityAlert,
            &[(F::Subtype, "110136")],
        )[0];
        assert_eq!(v["subtype"][0]["display"], "Security Roles Changed");
        let v = &map(
            Mode::Minimal,
            Pattern::SecurityAlert,
            &[(F::Subtype, "bogus")],
        )[0];
        assert_eq!(subtype(v), "110132");
    }

    #[test]
    fn line_flags_become_meta_tags_and_time_defaults_to_now() {
        let mut ex = extracted(
            Pattern::Rest,
            &[(F::Url, "/fhir/Patient/1"), (F::ClientAddress, "h")],
        );
        ex.time = None;
        ex.time_unreadable = true;
        let flags = LineFlags {
            truncated: true,
            invalid_utf8: true,
        };
        let events = map_extracted(
            &ctx(Mode::Minimal),
            &ex,
            LineRef {
                position: "p",
                flags,
            },
        );
        let v = &conformant(&events)[0];
        assert_eq!(v["meta"]["tag"][0]["code"], "truncated");
        assert_eq!(v["meta"]["tag"][1]["code"], "invalid-utf8");
        assert_eq!(v["meta"]["tag"][2]["code"], "time-unreadable");
        assert_eq!(v["meta"]["tag"][2]["system"], "urn:balp-agent:line-flag");
        let recorded: jiff::Timestamp = v["recorded"].as_str().unwrap().parse().unwrap();
        assert!((jiff::Timestamp::now() - recorded).as_secs().abs() < 60);
        assert_eq!(profile(v), Some("IHE.BasicAudit.PatientRead"));
    }

    #[test]
    fn hostile_input_never_panics_and_stays_valid() {
        let urls = [
            "/fhir/Patient/../../etc/passwd",
            "/fhir/Patient/%2e%2e",
            "/fhir/Patient/1/_history/2/x/y/z",
            "/fhir//Patient//1",
            "/fhir/patient/1",
            "/fhir/Patient/1?patient=%ff%fe,Patient/%00,,,",
            "/fhir/Observation?patient=",
            "/fhir/Observation?subject=Group/1&patient:identifier=x|y&patient.name=a",
            "/fhir/Patient/ü",
            "http://",
            "fhir/Patient/1",
            "/fhir?",
            "/fhir/?&&==&",
            "/fhir/Patient/1\u{0}\n",
            "//fhir/Patient/1#frag",
            "/fhir/Observation/1/_history/..",
        ];
        let methods = [
            "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "BREW", "",
        ];
        for url in urls {
            for m in methods {
                for addr in [
                    "10.0.0.1",
                    "[::1]:443",
                    "",
                    "not an address\u{7}",
                    "::ffff:1.2.3.4",
                ] {
                    let _ = map(
                        Mode::Comprehensive,
                        Pattern::Rest,
                        &[
                            (F::Method, m),
                            (F::Url, url),
                            (F::ClientAddress, addr),
                            (F::Status, "xyz"),
                            (F::User, "\u{202e}evil"),
                        ],
                    );
                }
            }
        }
        let v = &rest(
            "GET",
            "/fhir/Observation?subject=Group/1&patient:identifier=x|y",
            "200",
        )[0];
        assert_eq!(
            profile(v),
            Some("IHE.BasicAudit.Query"),
            "no patient from a Group or identifier"
        );
        for p in [
            Pattern::Create,
            Pattern::Read,
            Pattern::Update,
            Pattern::Delete,
            Pattern::Query,
            Pattern::Login,
            Pattern::Logout,
            Pattern::SecurityAlert,
            Pattern::Disclosure,
        ] {
            let _ = map(Mode::Minimal, p, &[]);
            let _ = map(
                Mode::Minimal,
                p,
                &[
                    (F::Resource, "///"),
                    (F::Patient, ",,Patient/,x y"),
                    (F::Url, "?"),
                ],
            );
        }
    }

    #[test]
    fn serialized_events_have_no_root_identifier() {
        for v in rest("GET", "/fhir/Observation?patient=1,2", "200")
            .into_iter()
            .chain(rest("DELETE", "/fhir/Patient/1", "500"))
            .chain(map(Mode::Minimal, Pattern::Login, &[(F::User, "a")]))
        {
            let text = serde_json::to_string(&v).unwrap();
            let back: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
            assert!(!back.contains_key("identifier"));
            assert_eq!(back["resourceType"], "AuditEvent");
        }
    }

    #[test]
    fn received_disclosure_is_recorded_at_the_recipient() {
        let fields = [
            (F::User, "clerk"),
            (F::ClientAddress, "lab.example.com"),
            (F::Resource, "DiagnosticReport/r1"),
            (F::Patient, "p1"),
        ];
        let vs = map(Mode::Minimal, Pattern::DisclosureReceived, &fields);
        assert_eq!(vs.len(), 1);
        let v = &vs[0];
        assert_eq!(
            profile(v),
            Some("IHE.BasicAudit.PrivacyDisclosure.Recipient")
        );
        assert_eq!(
            (v["type"]["code"].as_str(), subtype(v), v["action"].as_str()),
            (Some("110107"), "disclose", Some("C"))
        );
        // The sender is the peer; the recipient is this agent (val-audit-source).
        assert_eq!(v["agent"][0]["type"]["coding"][0]["code"], "110153");
        assert_eq!(v["agent"][0]["network"]["address"], "lab.example.com");
        assert_eq!(v["agent"][1]["type"]["coding"][0]["code"], "110152");
        assert_eq!(v["agent"][1]["who"], v["source"]["observer"]);
        let v = &map(Mode::Minimal, Pattern::DisclosureReceived, &fields[2..])[0];
        assert_eq!(profile(v), None, "no sender address, no claim");
    }

    #[test]
    fn disclosure_is_recorded_at_the_source() {
        let fields = [
            (F::User, "clerk"),
            (F::ClientAddress, "payer.example.com"),
            (F::Resource, "DocumentReference/d1"),
            (F::Patient, "p1,p2"),
            (F::PurposeOfUse, "HPAYMT"),
        ];
        let vs = map(Mode::Minimal, Pattern::Disclosure, &fields);
        assert_eq!(vs.len(), 2);
        let v = &vs[0];
        assert_eq!(profile(v), Some("IHE.BasicAudit.PrivacyDisclosure.Source"));
        assert_eq!(
            (v["type"]["code"].as_str(), subtype(v)),
            (Some("110106"), "disclose")
        );
        assert_eq!(v["agent"][0]["who"], v["source"]["observer"]);
        assert_eq!(v["agent"][1]["network"]["address"], "payer.example.com");
        assert_eq!(v["purposeOfEvent"][0]["coding"][0]["code"], "HPAYMT");
        let mut failed = fields.to_vec();
        failed.push((F::Outcome, "4"));
        let v = &map(Mode::Minimal, Pattern::Disclosure, &failed)[0];
        assert_eq!(profile(v), Some("IHE.BasicAudit.PrivacyDisclosure.Source"));
        let v = &map(Mode::Minimal, Pattern::Disclosure, &fields[..3])[0];
        assert_eq!(profile(v), None, "no patient, no claim");
        let no_data: Vec<_> = fields
            .iter()
            .filter(|(k, _)| *k != F::Resource)
            .copied()
            .collect();
        let v = &map(Mode::Minimal, Pattern::Disclosure, &no_data)[0];
        assert_eq!(profile(v), None, "no data entity, no claim");
    }

    #[test]
    fn bases_match_as_whole_path_prefixes() {
        let mut c = ctx(Mode::Minimal);
        c.fhir_bases = vec!["https://h.example.org/r4/".into(), "/".into()];
        let ex = extracted(
            Pattern::Rest,
            &[(F::Url, "/r4/Patient/1"), (F::ClientAddress, "h")],
        );
        let v = &conformant(&map_extracted(&c, &ex, line("p")))[0];
        assert_eq!(entity_refs(v), vec!["Patient/1", "Patient/1"]);
        let ex = extracted(
            Pattern::Rest,
            &[(F::Url, "/Observation/2"), (F::ClientAddress, "h")],
        );
        let v = &conformant(&map_extracted(&c, &ex, line("p")))[0];
        assert_eq!(entity_refs(v), vec!["Observation/2"]);
        assert_eq!(below_base("/fhir", &["/fhir".into()]), Some(""));
        assert_eq!(below_base("/fhirx/Patient", &["/fhir".into()]), None);
        assert_eq!(
            below_base("/a/fhir/X", &["/a".into(), "/a/fhir".into()]),
            Some("/X")
        );
    }

    #[test]
    fn random_field_combinations_always_conform() {
        let pool: &[(F, &[&str])] = &[
            (
                F::Method,
                &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "x"],
            ),
            (
                F::Url,
                &[
                    "/fhir/Patient/1",
                    "/fhir/Observation?patient=1,2",
                    "/fhir/Patient/3/Observation",
                    "/fhir/Observation/_search",
                    "/fhir/_search?subject=Patient/4",
                    "/fhir/Observation/9/_history/1",
                    "/fhir",
                    "/fhir/$op",
                    "/fhir/Patient?_id=5,5",
                    "/elsewhere",
                    "%%%",
                ],
            ),
            (F::Status, &["200", "201", "302", "404", "500", "0", "abc"]),
            (F::Outcome, &["0", "4", "8", "12", "success", "weird"]),
            (
                F::ClientAddress,
                &["10.0.0.1", "2001:db8::1", "host.example", " "],
            ),
            (F::ForwardedFor, &["203.0.113.1, 10.0.0.1", ",", "unknown"]),
            (F::ClientId, &["app"]),
            (
                F::ServerAddress,
                &["https://fhir.example.org/fhir", "192.0.2.1"],
            ),
            (F::User, &["u", "a b"]),
            (F::UserName, &["Name"]),
            (F::UserRole, &["role"]),
            (F::RequestId, &["r1"]),
            (F::Patient, &["7", "7,8", "Patient/9", "bad id"]),
            (
                F::Resource,
                &[
                    "Patient/1",
                    "Observation",
                    "table",
                    "Observation/1/_history/2",
                ],
            ),
            (F::Query, &["SELECT 1"]),
            (F::Description, &["desc"]),
            (F::TargetUser, &["root"]),
            (F::Command, &["/bin/ls -l"]),
            (F::Subtype, &["110122", "999999", "x"]),
            (F::Jti, &["j"]),
            (F::Issuer, &["https://idp", "noturi"]),
            (F::PurposeOfUse, &["TREAT"]),
            (F::Database, &["db"]),
            (F::Terminal, &["pts/1"]),
            (F::OutcomeDesc, &["why"]),
        ];
        let patterns = [
            Pattern::Rest,
            Pattern::Create,
            Pattern::Read,
            Pattern::Update,
            Pattern::Delete,
            Pattern::Query,
            Pattern::Login,
            Pattern::Logout,
            Pattern::SecurityAlert,
            Pattern::Disclosure,
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1500 {
            let mut fields = Vec::new();
            for (k, vals) in pool {
                if rng.bool() {
                    fields.push((*k, vals[rng.usize(..vals.len())]));
                }
            }
            let pattern = patterns[rng.usize(..patterns.len())];
            let mode = if rng.bool() {
                Mode::Minimal
            } else {
                Mode::Comprehensive
            };
            let events = map_extracted(&ctx(mode), &extracted(pattern, &fields), line("p"));
            for v in conformant(&events) {
                let n = v["entity"]
                    .as_array()
                    .map(|a| a.iter().filter(|e| e["role"]["code"] == "1").count())
                    .unwrap_or(0);
                assert!(n <= 1, "{pattern:?} {fields:?}: more than one patient");
            }
        }
    }

    fn profiles(v: &Value) -> Vec<&str> {
        v.pointer("/meta/profile")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|p| p.trim_start_matches(codes::PROFILE_BASE))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn agent_codes(a: &Value) -> Vec<&str> {
        a["type"]["coding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn oauth_jti_claims_minimal_together_with_the_rest_profile() {
        let fields = [
            (F::Url, "/fhir/Patient/1"),
            (F::ClientAddress, "10.0.0.5"),
            (F::User, "sub-1"),
            (F::Jti, "C187CC48"),
            (F::Issuer, "https://idp.example.org"),
        ];
        let v = &map(Mode::Minimal, Pattern::Rest, &fields)[0];
        assert_eq!(
            profiles(v),
            vec![
                "IHE.BasicAudit.PatientRead",
                "IHE.BasicAudit.OAUTHaccessTokenUse.Minimal"
            ]
        );
        let users: Vec<&Value> = v["agent"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["requestor"] == true)
            .collect();
        assert_eq!(users.len(), 1, "one agent is both REST user and oUser");
        assert_eq!(agent_codes(users[0]), vec!["IRCP", "UserOauthAgent"]);
        assert_eq!(users[0]["policy"][0], "urn:ietf:params:oauth:jti:C187CC48");
        // On a write the same agent is AUT + UserOauthAgent.
        let mut w = fields.to_vec();
        w.push((F::Method, "DELETE"));
        let v = &map(Mode::Minimal, Pattern::Rest, &w)[0];
        assert_eq!(agent_codes(&v["agent"][2]), vec!["AUT", "UserOauthAgent"]);
        assert_eq!(profiles(v)[0], "IHE.BasicAudit.PatientDelete");
    }

    #[test]
    fn oauth_comprehensive_makes_the_client_the_oclient() {
        let mut fields = vec![
            (F::Url, "/fhir/Observation/1"),
            (F::ClientAddress, "10.0.0.5"),
            (F::User, "sub-1"),
            (F::UserName, "John Smith"),
            (F::UserRole, "physician"),
            (F::Jti, "urn:ietf:params:oauth:jti:x"),
            (F::Issuer, "https://idp.example.org"),
            (F::ClientId, "SampleApp"),
            (F::PurposeOfUse, "TREAT"),
        ];
        let v = &map(Mode::Comprehensive, Pattern::Rest, &fields)[0];
        assert_eq!(
            profiles(v),
            vec![
                "IHE.BasicAudit.Read",
                "IHE.BasicAudit.OAUTHaccessTokenUse.Minimal",
                "IHE.BasicAudit.OAUTHaccessTokenUse.Comprehensive"
            ]
        );
        assert_eq!(agent_codes(&v["agent"][0]), vec!["110152", "110150"]);
        assert_eq!(v["agent"][0]["who"]["identifier"]["value"], "SampleApp");
        let u = &v["agent"][2];
        assert_eq!(u["who"]["identifier"]["system"], "https://idp.example.org");
        assert_eq!(u["who"]["display"], "John Smith");
        assert_eq!(u["policy"][0], "urn:ietf:params:oauth:jti:x");
        assert_eq!(u["purposeOfUse"][0]["coding"][0]["code"], "TREAT");
        // Delete: the REST client is already DCM 110150, no second coding.
        fields.push((F::Method, "DELETE"));
        let v = &map(Mode::Comprehensive, Pattern::Rest, &fields)[0];
        assert_eq!(agent_codes(&v["agent"][0]), vec!["110150"]);
        assert!(profiles(v).contains(&"IHE.BasicAudit.OAUTHaccessTokenUse.Comprehensive"));
        // Without client_id: Minimal only, and the downgrade is counted.
        let before = crate::events::counters().downgrades();
        let key = "IHE.BasicAudit.OAUTHaccessTokenUse.Comprehensive: client_id unknown";
        let no_client: Vec<_> = fields
            .iter()
            .filter(|(k, _)| *k != F::ClientId)
            .copied()
            .collect();
        let v = &map(Mode::Comprehensive, Pattern::Rest, &no_client)[0];
        assert!(!profiles(v).contains(&"IHE.BasicAudit.OAUTHaccessTokenUse.Comprehensive"));
        let after = crate::events::counters().downgrades();
        assert!(after.get(key).copied().unwrap_or(0) > before.get(key).copied().unwrap_or(0));
    }

    #[test]
    fn opaque_token_keeps_only_its_tail() {
        let token = "secret-part-that-must-not-leak-0123456789abcdef0123456789abcdef";
        let v = &map(
            Mode::Minimal,
            Pattern::Rest,
            &[
                (F::Url, "/fhir/Patient/1"),
                (F::ClientAddress, "10.0.0.5"),
                (F::User, "u"),
                (F::Token, token),
            ],
        )[0];
        assert!(profiles(v).contains(&"IHE.BasicAudit.OAUTHaccessTokenUse.Opaque"));
        assert_eq!(
            v["agent"][2]["policy"][0],
            "0123456789abcdef0123456789abcdef"
        );
        let text = v.to_string();
        assert!(!text.contains("secret-part"));
    }

    #[test]
    fn saml_claims_minimal_with_subject_issuer_and_assertion() {
        let fields = [
            (F::Url, "/fhir/Patient/1"),
            (F::ClientAddress, "10.0.0.5"),
            (F::SamlSubject, "05086900124"),
            (F::SamlIssuer, "https://sts.example.no"),
            (F::SamlAssertionId, "XC4WdYS0W5bjsMGc5Ue6tClD_5U"),
        ];
        let v = &map(Mode::Minimal, Pattern::Rest, &fields)[0];
        assert_eq!(
            profiles(v),
            vec![
                "IHE.BasicAudit.PatientRead",
                "IHE.BasicAudit.SAMLaccessTokenUse.Minimal"
            ]
        );
        let u = &v["agent"][2];
        assert_eq!(agent_codes(u), vec!["IRCP", "UserSamlAgent"]);
        assert_eq!(u["who"]["identifier"]["system"], "https://sts.example.no");
        assert_eq!(u["who"]["identifier"]["value"], "05086900124");
        assert_eq!(
            u["policy"],
            serde_json::json!(["XC4WdYS0W5bjsMGc5Ue6tClD_5U"])
        );
        let v = &map(Mode::Minimal, Pattern::Rest, &fields[..4])[0];
        assert_eq!(
            profiles(v),
            vec!["IHE.BasicAudit.PatientRead"],
            "no assertion id"
        );
    }

    #[test]
    fn token_without_user_is_a_counted_downgrade() {
        let key = "IHE.BasicAudit.OAUTHaccessTokenUse.Minimal: no user (sub)";
        let before = crate::events::counters().downgrades().get(key).copied();
        let v = &map(
            Mode::Minimal,
            Pattern::Rest,
            &[
                (F::Url, "/fhir/Patient/1"),
                (F::ClientAddress, "h"),
                (F::Jti, "j"),
            ],
        )[0];
        assert_eq!(profiles(v), vec!["IHE.BasicAudit.PatientRead"]);
        let after = crate::balp::downgrades().get(key).copied();
        assert!(after.unwrap_or(0) > before.unwrap_or(0));
    }

    #[test]
    fn missing_client_address_is_a_counted_downgrade_and_a_missing_url_no_drop() {
        let key = "IHE.BasicAudit.Read: client network address unknown";
        let before = crate::balp::downgrades().get(key).copied().unwrap_or(0);
        let v = &map(
            Mode::Minimal,
            Pattern::Rest,
            &[(F::Url, "/fhir/Observation/1")],
        )[0];
        assert_eq!(profile(v), None);
        assert!(crate::balp::downgrades().get(key).copied().unwrap_or(0) > before);
        let vs = map(
            Mode::Minimal,
            Pattern::Rest,
            &[(F::Method, "GET"), (F::User, "u")],
        );
        assert_eq!(vs.len(), 1, "an event without url is still recorded");
        assert_eq!(vs[0]["type"]["code"], "rest");
        assert_eq!(profile(&vs[0]), None);
    }

    #[test]
    fn database_access_maps_verbs_tables_and_redacts_statements() {
        let fields = [
            (F::Command, "select"),
            (F::Resource, "public.patients"),
            (F::Database, "emr"),
            (F::User, "app_reader"),
            (F::ClientAddress, "10.0.0.9"),
            (F::Statement, "SELECT * FROM public.patients WHERE id = 42"),
        ];
        let v = &map(Mode::Minimal, Pattern::Database, &fields)[0];
        assert_eq!(
            (v["type"]["code"].as_str(), v["action"].as_str()),
            (Some("110112"), Some("E"))
        );
        assert!(v.get("meta").is_none(), "no BALP profile");
        assert_eq!(v["source"]["type"][0]["code"], "5");
        assert_eq!(agent_code(v, 0), "IRCP");
        assert_eq!(v["agent"][0]["who"]["identifier"]["value"], "app_reader");
        assert_eq!(v["agent"][1]["network"]["address"], "10.0.0.9");
        assert_eq!(
            v["entity"][0]["what"]["identifier"]["value"],
            "public.patients"
        );
        assert_eq!(v["entity"][0]["role"]["code"], "22");
        assert_eq!(v["entity"][1]["what"]["identifier"]["value"], "emr");
        assert_eq!(v["entity"][1]["role"]["code"], "17");
        assert!(
            !v.to_string().contains("WHERE id"),
            "no SQL in minimal mode"
        );
        let mut w = fields.to_vec();
        w[0] = (F::Command, "ALTER ROLE");
        w[5] = (F::Statement, "ALTER ROLE bob PASSWORD 'hunter2'");
        w.push((F::Patient, "p1,p2"));
        let vs = map(Mode::Comprehensive, Pattern::Database, &w);
        assert_eq!(vs.len(), 2, "one event per patient");
        let v = &vs[0];
        assert_eq!(
            (v["type"]["code"].as_str(), subtype(v)),
            (Some("110113"), "110136")
        );
        assert_eq!(
            v["entity"][2]["description"],
            "ALTER ROLE bob PASSWORD '***'"
        );
        assert!(!v.to_string().contains("hunter2"));
        assert_eq!(v["entity"][3]["what"]["reference"], "Patient/p1");
        for (verb, code, action) in [
            ("INSERT", "110110", "C"),
            ("UPDATE", "110110", "U"),
            ("DELETE", "110110", "D"),
            ("VACUUM", "110110", "E"),
        ] {
            let v = &map(Mode::Minimal, Pattern::Database, &[(F::Command, verb)])[0];
            assert_eq!(
                (v["type"]["code"].as_str(), v["action"].as_str()),
                (Some(code), Some(action)),
                "{verb}"
            );
        }
    }

    #[test]
    fn self_audit_records_start_and_stop_with_deterministic_ids() {
        use crate::balp::{AppActivity, self_audit};
        let c = ctx(Mode::Minimal);
        let t = extracted(Pattern::Rest, &[]).time.unwrap();
        let start = self_audit(&c, AppActivity::Start, t, "boot-1");
        let again = self_audit(&c, AppActivity::Start, t, "boot-1");
        let stop = self_audit(&c, AppActivity::Stop, t, "boot-1");
        let other = self_audit(&c, AppActivity::Start, t, "boot-2");
        assert_eq!(start.id, again.id);
        assert_ne!(start.id, stop.id);
        assert_ne!(start.id, other.id);
        let v = &conformant(&[start, stop])[..];
        assert_eq!(v[0]["type"]["code"], "110100");
        assert_eq!(subtype(&v[0]), "110120");
        assert_eq!(subtype(&v[1]), "110121");
        assert_eq!(
            (v[0]["action"].as_str(), v[0]["outcome"].as_str()),
            (Some("E"), Some("0"))
        );
        assert_eq!(agent_code(&v[0], 0), "110150");
        assert_eq!(v[0]["agent"][0]["who"]["display"], "balp-agent@fhir01");
        assert_eq!(v[0]["agent"][0]["requestor"], false);
    }
}

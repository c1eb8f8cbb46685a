//! Mapping: one [`Extracted`] record (pattern + named fields + time) becomes zero or more R4
//! AuditEvents following BALP (REFERENCE.md §4, §8, §9; SPEC §4).
//!
//! This module dispatches on the pattern and finishes the events (ids, source, time,
//! flags, one copy per patient, profiles); each pattern family builds its event in its own
//! module: [`super::rest`] (rest, create, read, update, delete, query), [`super::security`]
//! (login, logout, security-alert), [`super::disclosure`] (disclosure, disclosure-received),
//! [`super::database`]; [`super::parts`] and [`super::agents`] hold what they share, and
//! [`super::token`] adds a security token's parts to any of them.
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

use super::codes::{self};
use super::model::{AuditEvent, Meta, Outcome, Reference, Source};
use super::{LineRef, MapContext, event_id};
use crate::decode::Stamp;
use crate::parse::{Extracted, Fields, Pattern};

/// Map one extracted record to events (one per patient).
pub fn map_extracted(ctx: &MapContext, ex: &Extracted, line: LineRef<'_>) -> Vec<AuditEvent> {
    let cleaned = sanitized(&ex.fields);
    let f = cleaned.as_ref().unwrap_or(&ex.fields);
    let built = match ex.pattern {
        Pattern::Rest => super::rest::rest_pattern(ctx, f, &ex.fields),
        Pattern::Create | Pattern::Read | Pattern::Update | Pattern::Delete | Pattern::Query => {
            super::rest::explicit_pattern(ctx, f, &ex.fields, ex.pattern)
        }
        Pattern::Login | Pattern::Logout => Some(super::security::auth_event(ctx, f, ex.pattern)),
        Pattern::SecurityAlert => Some(super::security::security_alert(ctx, f)),
        Pattern::Disclosure => Some(super::disclosure::disclosure(ctx, f, false)),
        Pattern::DisclosureReceived => Some(super::disclosure::disclosure(ctx, f, true)),
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
use super::parts::{Built, patient_entity};

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
            ev.extension
                .push(crate::balp::id_extension(&ctx.event_id_extension, &id));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balp::codes;
    use crate::balp::conformance;
    use crate::balp::model::*;
    use crate::config::Mode;
    use crate::parse::FieldName as F;
    use crate::source::LineFlags;
    use base64::Engine as _;
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

//! Compact JSON of the [`AuditEvent`] model, written by hand on the hot path.
//!
//! In: a mapped event. Out: the same bytes `serde_json::to_string` makes of it (field order,
//! skipped empty elements and string escapes included; the tests compare the two on every
//! IG example, the corpus and random strings). Why not serde: serde_json escapes strings one
//! byte at a time through a lookup table, and with its per-field calls that was a fifth of the
//! ingest thread's time. Here a string is first checked for anything to escape with a loop
//! the compiler vectorizes; nearly every string (codes, URLs, ids, names) has nothing, and is
//! copied at once. Written into a `String`, so no UTF-8 check of the result is needed either.
//!
//! The serde model stays the definition of the shape: a field added there must be added here,
//! or the equality tests fail.

use super::model::{
    Agent, AuditEvent, CodeableConcept, Coding, Entity, EntityDetail, Extension, Identifier, Meta,
    Network, Period, Reference, Source,
};

/// The event as compact JSON.
pub fn audit_event(e: &AuditEvent) -> String {
    let mut out = String::with_capacity(2560);
    let mut o = Obj::open(&mut out);
    o.str("resourceType", "AuditEvent");
    o.str("id", &e.id);
    if let Some(m) = &e.meta {
        o.key("meta");
        meta(o.out, m);
    }
    o.arr("extension", &e.extension, extension);
    o.key("type");
    coding(o.out, &e.type_);
    o.arr("subtype", &e.subtype, coding);
    if let Some(a) = e.action {
        o.str("action", action_code(a));
    }
    if let Some(p) = &e.period {
        o.key("period");
        period(o.out, p);
    }
    o.str("recorded", &e.recorded);
    if let Some(oc) = e.outcome {
        o.str("outcome", outcome_code(oc));
    }
    o.opt_str("outcomeDesc", e.outcome_desc.as_deref());
    o.arr("purposeOfEvent", &e.purpose_of_event, codeable);
    // Always written, even empty: the model does not skip it.
    o.key("agent");
    list(o.out, &e.agent, agent);
    o.key("source");
    source(o.out, &e.source);
    o.arr("entity", &e.entity, entity);
    o.close();
    out
}

/// An object being written; `first` decides the comma.
struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut String) -> Obj<'a> {
        out.push('{');
        Obj { out, first: true }
    }

    /// `"k":` (keys are constants without anything to escape).
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(k);
        self.out.push_str("\":");
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        string(self.out, v);
    }

    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(k, v);
        }
    }

    /// A list, left out when empty (`skip_serializing_if = "Vec::is_empty"`).
    fn arr<T>(&mut self, k: &str, items: &[T], each: fn(&mut String, &T)) {
        if !items.is_empty() {
            self.key(k);
            list(self.out, items, each);
        }
    }

    fn close(self) {
        self.out.push('}');
    }
}

fn list<T>(out: &mut String, items: &[T], each: fn(&mut String, &T)) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(out, item);
    }
    out.push(']');
}

// `&String`, not `&str`: it is passed as `fn(&mut String, &T)` for lists of `String`.
#[allow(clippy::ptr_arg)]
fn string_item(out: &mut String, s: &String) {
    string(out, s);
}

/// A JSON string, escaped exactly as serde_json does: `"` and `\`, the short forms `\b \t \n
/// \f \r`, other control characters as `\u00xx` (lower-case hex); everything else as is.
fn string(out: &mut String, s: &str) {
    out.push('"');
    // No early exit: the compiler vectorizes this (a branch per byte it would not).
    let dirty = s
        .bytes()
        .fold(false, |d, b| d | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !dirty {
        out.push_str(s);
    } else {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let esc: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                0x08 => "\\b",
                0x09 => "\\t",
                0x0a => "\\n",
                0x0c => "\\f",
                0x0d => "\\r",
                0x00..=0x1f => "",
                _ => continue,
            };
            out.push_str(&s[start..i]);
            if esc.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            } else {
                out.push_str(esc);
            }
            start = i + 1;
        }
        out.push_str(&s[start..]);
    }
    out.push('"');
}

fn coding(out: &mut String, c: &Coding) {
    let mut o = Obj::open(out);
    o.opt_str("system", c.system.as_deref());
    o.opt_str("code", c.code.as_deref());
    o.opt_str("display", c.display.as_deref());
    o.close();
}

fn codeable(out: &mut String, c: &CodeableConcept) {
    let mut o = Obj::open(out);
    o.arr("coding", &c.coding, coding);
    o.opt_str("text", c.text.as_deref());
    o.close();
}

fn identifier(out: &mut String, i: &Identifier) {
    let mut o = Obj::open(out);
    if let Some(t) = &i.type_ {
        o.key("type");
        codeable(o.out, t);
    }
    o.opt_str("system", i.system.as_deref());
    o.opt_str("value", i.value.as_deref());
    o.close();
}

fn reference(out: &mut String, r: &Reference) {
    let mut o = Obj::open(out);
    o.opt_str("reference", r.reference.as_deref());
    o.opt_str("type", r.type_.as_deref());
    if let Some(i) = &r.identifier {
        o.key("identifier");
        identifier(o.out, i);
    }
    o.opt_str("display", r.display.as_deref());
    o.close();
}

fn extension(out: &mut String, x: &Extension) {
    let mut o = Obj::open(out);
    o.str("url", &x.url);
    if let Some(i) = &x.value_identifier {
        o.key("valueIdentifier");
        identifier(o.out, i);
    }
    if let Some(c) = &x.value_codeable_concept {
        o.key("valueCodeableConcept");
        codeable(o.out, c);
    }
    o.close();
}

fn meta(out: &mut String, m: &Meta) {
    let mut o = Obj::open(out);
    o.arr("profile", &m.profile, string_item);
    o.arr("security", &m.security, coding);
    o.arr("tag", &m.tag, coding);
    o.close();
}

fn period(out: &mut String, p: &Period) {
    let mut o = Obj::open(out);
    o.opt_str("start", p.start.as_deref());
    o.opt_str("end", p.end.as_deref());
    o.close();
}

fn network(out: &mut String, n: &Network) {
    let mut o = Obj::open(out);
    o.opt_str("address", n.address.as_deref());
    if let Some(t) = n.type_ {
        o.str("type", network_type_code(t));
    }
    o.close();
}

fn agent(out: &mut String, a: &Agent) {
    let mut o = Obj::open(out);
    o.arr("extension", &a.extension, extension);
    if let Some(t) = &a.type_ {
        o.key("type");
        codeable(o.out, t);
    }
    o.arr("role", &a.role, codeable);
    if let Some(w) = &a.who {
        o.key("who");
        reference(o.out, w);
    }
    o.opt_str("altId", a.alt_id.as_deref());
    o.opt_str("name", a.name.as_deref());
    o.key("requestor");
    o.out.push_str(if a.requestor { "true" } else { "false" });
    if let Some(l) = &a.location {
        o.key("location");
        reference(o.out, l);
    }
    o.arr("policy", &a.policy, string_item);
    if let Some(m) = &a.media {
        o.key("media");
        coding(o.out, m);
    }
    if let Some(n) = &a.network {
        o.key("network");
        network(o.out, n);
    }
    o.arr("purposeOfUse", &a.purpose_of_use, codeable);
    o.close();
}

fn source(out: &mut String, s: &Source) {
    let mut o = Obj::open(out);
    o.opt_str("site", s.site.as_deref());
    o.key("observer");
    reference(o.out, &s.observer);
    o.arr("type", &s.type_, coding);
    o.close();
}

fn entity_detail(out: &mut String, d: &EntityDetail) {
    let mut o = Obj::open(out);
    o.str("type", &d.type_);
    o.opt_str("valueString", d.value_string.as_deref());
    o.opt_str("valueBase64Binary", d.value_base64_binary.as_deref());
    o.close();
}

fn entity(out: &mut String, e: &Entity) {
    let mut o = Obj::open(out);
    if let Some(w) = &e.what {
        o.key("what");
        reference(o.out, w);
    }
    for (k, c) in [
        ("type", &e.type_),
        ("role", &e.role),
        ("lifecycle", &e.lifecycle),
    ] {
        if let Some(c) = c {
            o.key(k);
            coding(o.out, c);
        }
    }
    o.arr("securityLabel", &e.security_label, coding);
    o.opt_str("name", e.name.as_deref());
    o.opt_str("description", e.description.as_deref());
    o.opt_str("query", e.query.as_deref());
    o.arr("detail", &e.detail, entity_detail);
    o.close();
}

fn action_code(a: super::model::Action) -> &'static str {
    use super::model::Action::*;
    match a {
        C => "C",
        R => "R",
        U => "U",
        D => "D",
        E => "E",
    }
}

fn outcome_code(o: super::model::Outcome) -> &'static str {
    use super::model::Outcome::*;
    match o {
        Success => "0",
        MinorFailure => "4",
        SeriousFailure => "8",
        MajorFailure => "12",
    }
}

fn network_type_code(t: super::model::NetworkType) -> &'static str {
    use super::model::NetworkType::*;
    match t {
        MachineName => "1",
        IpAddress => "2",
        Telephone => "3",
        Email => "4",
        Uri => "5",
    }
}

/// The event's RFC 8785 (JCS) form, written straight from the model: the same bytes
/// `tamper::canonical::jcs_text` makes of [`audit_event`]'s output (the tests and a debug
/// assertion on every event compare the two), at a fifth of the cost, because nothing is
/// parsed or sorted: every object's members are written in the order JCS sorts them into
/// (all member names are ASCII, so UTF-16 order is byte order).
pub fn audit_event_jcs(e: &AuditEvent) -> String {
    let mut out = String::with_capacity(2560);
    let mut o = Obj::open(&mut out);
    if let Some(a) = e.action {
        o.str("action", action_code(a));
    }
    o.key("agent");
    list(o.out, &e.agent, jcs::agent);
    o.arr("entity", &e.entity, jcs::entity);
    o.arr("extension", &e.extension, jcs::extension);
    o.str("id", &e.id);
    if let Some(m) = &e.meta {
        o.key("meta");
        jcs::meta(o.out, m);
    }
    if let Some(oc) = e.outcome {
        o.str("outcome", outcome_code(oc));
    }
    o.opt_str("outcomeDesc", e.outcome_desc.as_deref());
    if let Some(p) = &e.period {
        o.key("period");
        jcs::period(o.out, p);
    }
    o.arr("purposeOfEvent", &e.purpose_of_event, jcs::codeable);
    o.str("recorded", &e.recorded);
    o.str("resourceType", "AuditEvent");
    o.key("source");
    jcs::source(o.out, &e.source);
    o.arr("subtype", &e.subtype, jcs::coding);
    o.key("type");
    jcs::coding(o.out, &e.type_);
    o.close();
    out
}

/// The JCS-ordered writers of [`audit_event_jcs`]: each writes the members of one type in
/// sorted name order (the order of the FHIR writers above, permuted).
mod jcs {
    use super::{Obj, network_type_code, string_item};
    use crate::balp::model::{
        Agent, CodeableConcept, Coding, Entity, EntityDetail, Extension, Identifier, Meta, Network,
        Period, Reference, Source,
    };

    pub(super) fn coding(out: &mut String, c: &Coding) {
        let mut o = Obj::open(out);
        o.opt_str("code", c.code.as_deref());
        o.opt_str("display", c.display.as_deref());
        o.opt_str("system", c.system.as_deref());
        o.close();
    }

    pub(super) fn codeable(out: &mut String, c: &CodeableConcept) {
        let mut o = Obj::open(out);
        o.arr("coding", &c.coding, coding);
        o.opt_str("text", c.text.as_deref());
        o.close();
    }

    fn identifier(out: &mut String, i: &Identifier) {
        let mut o = Obj::open(out);
        o.opt_str("system", i.system.as_deref());
        if let Some(t) = &i.type_ {
            o.key("type");
            codeable(o.out, t);
        }
        o.opt_str("value", i.value.as_deref());
        o.close();
    }

    fn reference(out: &mut String, r: &Reference) {
        let mut o = Obj::open(out);
        o.opt_str("display", r.display.as_deref());
        if let Some(i) = &r.identifier {
            o.key("identifier");
            identifier(o.out, i);
        }
        o.opt_str("reference", r.reference.as_deref());
        o.opt_str("type", r.type_.as_deref());
        o.close();
    }

    pub(super) fn extension(out: &mut String, x: &Extension) {
        let mut o = Obj::open(out);
        o.str("url", &x.url);
        if let Some(c) = &x.value_codeable_concept {
            o.key("valueCodeableConcept");
            codeable(o.out, c);
        }
        if let Some(i) = &x.value_identifier {
            o.key("valueIdentifier");
            identifier(o.out, i);
        }
        o.close();
    }

    pub(super) fn meta(out: &mut String, m: &Meta) {
        let mut o = Obj::open(out);
        o.arr("profile", &m.profile, string_item);
        o.arr("security", &m.security, coding);
        o.arr("tag", &m.tag, coding);
        o.close();
    }

    pub(super) fn period(out: &mut String, p: &Period) {
        let mut o = Obj::open(out);
        o.opt_str("end", p.end.as_deref());
        o.opt_str("start", p.start.as_deref());
        o.close();
    }

    fn network(out: &mut String, n: &Network) {
        let mut o = Obj::open(out);
        o.opt_str("address", n.address.as_deref());
        if let Some(t) = n.type_ {
            o.str("type", network_type_code(t));
        }
        o.close();
    }

    pub(super) fn agent(out: &mut String, a: &Agent) {
        let mut o = Obj::open(out);
        o.opt_str("altId", a.alt_id.as_deref());
        o.arr("extension", &a.extension, extension);
        if let Some(l) = &a.location {
            o.key("location");
            reference(o.out, l);
        }
        if let Some(m) = &a.media {
            o.key("media");
            coding(o.out, m);
        }
        o.opt_str("name", a.name.as_deref());
        if let Some(n) = &a.network {
            o.key("network");
            network(o.out, n);
        }
        o.arr("policy", &a.policy, string_item);
        o.arr("purposeOfUse", &a.purpose_of_use, codeable);
        o.key("requestor");
        o.out.push_str(if a.requestor { "true" } else { "false" });
        o.arr("role", &a.role, codeable);
        if let Some(t) = &a.type_ {
            o.key("type");
            codeable(o.out, t);
        }
        if let Some(w) = &a.who {
            o.key("who");
            reference(o.out, w);
        }
        o.close();
    }

    pub(super) fn source(out: &mut String, s: &Source) {
        let mut o = Obj::open(out);
        o.key("observer");
        reference(o.out, &s.observer);
        o.opt_str("site", s.site.as_deref());
        o.arr("type", &s.type_, coding);
        o.close();
    }

    fn entity_detail(out: &mut String, d: &EntityDetail) {
        let mut o = Obj::open(out);
        o.str("type", &d.type_);
        o.opt_str("valueBase64Binary", d.value_base64_binary.as_deref());
        o.opt_str("valueString", d.value_string.as_deref());
        o.close();
    }

    pub(super) fn entity(out: &mut String, e: &Entity) {
        let mut o = Obj::open(out);
        o.opt_str("description", e.description.as_deref());
        o.arr("detail", &e.detail, entity_detail);
        if let Some(c) = &e.lifecycle {
            o.key("lifecycle");
            coding(o.out, c);
        }
        o.opt_str("name", e.name.as_deref());
        o.opt_str("query", e.query.as_deref());
        if let Some(c) = &e.role {
            o.key("role");
            coding(o.out, c);
        }
        o.arr("securityLabel", &e.security_label, coding);
        if let Some(c) = &e.type_ {
            o.key("type");
            coding(o.out, c);
        }
        if let Some(w) = &e.what {
            o.key("what");
            reference(o.out, w);
        }
        o.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same_as_serde(e: &AuditEvent) {
        let json = audit_event(e);
        assert_eq!(json, serde_json::to_string(e).unwrap());
        let jcs = crate::tamper::canonical::jcs_text(&json).unwrap();
        assert_eq!(audit_event_jcs(e).as_bytes(), jcs.as_slice(), "{json}");
    }

    #[test]
    fn every_ig_example_is_written_as_serde_json_writes_it() {
        let mut n = 0;
        for (name, v) in crate::balp::model::tests::examples() {
            let e: AuditEvent =
                serde_json::from_value(v).unwrap_or_else(|err| panic!("{name}: {err}"));
            same_as_serde(&e);
            n += 1;
        }
        assert!(n >= 40, "{n} IG examples");
    }

    #[test]
    fn empty_and_full_models_are_written_as_serde_json_writes_them() {
        same_as_serde(&AuditEvent::default());
        let coding = Coding::new("s", "c", Some("d"));
        let cc = CodeableConcept {
            coding: vec![coding.clone(), Coding::default()],
            text: Some("t".into()),
        };
        let ident = Identifier {
            type_: Some(cc.clone()),
            system: Some("sys".into()),
            value: Some("v".into()),
        };
        let refr = Reference {
            reference: Some("Patient/1".into()),
            type_: Some("Patient".into()),
            identifier: Some(ident.clone()),
            display: Some("x".into()),
        };
        let ext = Extension {
            url: "u".into(),
            value_identifier: Some(ident.clone()),
            value_codeable_concept: Some(cc.clone()),
        };
        let e = AuditEvent {
            id: "i".into(),
            meta: Some(Meta {
                profile: vec!["p1".into(), "p2".into()],
                security: vec![coding.clone()],
                tag: vec![coding.clone()],
            }),
            extension: vec![ext.clone()],
            type_: coding.clone(),
            subtype: vec![coding.clone(), coding.clone()],
            action: Some(super::super::model::Action::E),
            period: Some(Period {
                start: Some("a".into()),
                end: Some("b".into()),
            }),
            recorded: "r".into(),
            outcome: Some(super::super::model::Outcome::MajorFailure),
            outcome_desc: Some("bad".into()),
            purpose_of_event: vec![cc.clone()],
            agent: vec![
                Agent::default(),
                Agent {
                    extension: vec![ext],
                    type_: Some(cc.clone()),
                    role: vec![cc.clone()],
                    who: Some(refr.clone()),
                    alt_id: Some("alt".into()),
                    name: Some("n".into()),
                    requestor: true,
                    location: Some(refr.clone()),
                    policy: vec!["pol".into()],
                    media: Some(coding.clone()),
                    network: Some(Network {
                        address: Some("10.0.0.1".into()),
                        type_: Some(super::super::model::NetworkType::Uri),
                    }),
                    purpose_of_use: vec![cc.clone()],
                },
            ],
            source: Source {
                site: Some("site".into()),
                observer: refr.clone(),
                type_: vec![coding.clone()],
            },
            entity: vec![
                Entity::default(),
                Entity {
                    what: Some(refr),
                    type_: Some(coding.clone()),
                    role: Some(coding.clone()),
                    lifecycle: Some(coding.clone()),
                    security_label: vec![coding],
                    name: Some("n".into()),
                    description: Some("d".into()),
                    query: Some("cQ==".into()),
                    detail: vec![EntityDetail {
                        type_: "t".into(),
                        value_string: Some("v".into()),
                        value_base64_binary: Some("dg==".into()),
                    }],
                },
            ],
            ..AuditEvent::default()
        };
        same_as_serde(&e);
    }

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(
            s in "(?s).{0,40}",
            raw in proptest::collection::vec(0u8..0x80, 0..40),
        ) {
            for s in [s, String::from_utf8(raw).unwrap()] {
                let mut out = String::new();
                string(&mut out, &s);
                prop_assert_eq!(&out, &serde_json::to_string(&s).unwrap());
                let e = AuditEvent {
                    id: s.clone(),
                    recorded: s.clone(),
                    outcome_desc: Some(s.clone()),
                    ..AuditEvent::default()
                };
                let json = audit_event(&e);
                prop_assert_eq!(&json, &serde_json::to_string(&e).unwrap());
                let jcs = crate::tamper::canonical::jcs_text(&json).unwrap();
                let own = audit_event_jcs(&e);
                prop_assert_eq!(own.as_bytes(), jcs.as_slice());
            }
        }
    }
}

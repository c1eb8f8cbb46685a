//! Property tests: arbitrary URLs, methods, statuses, users, addresses, token claims, SQL and
//! patterns never panic, never drop a non-REST record, and never give an event that fails
//! [`conformance::check`]. Case counts stay modest for the 2-core CI.

use super::map::map_extracted;
use super::{AppActivity, LineRef, MapContext, conformance, redact_sql, self_audit};
use crate::config::Mode;
use crate::decode::Stamp;
use crate::parse::{Extracted, FieldName as F, Fields, Pattern};
use proptest::prelude::*;
use std::sync::Arc;

const PATTERNS: &[Pattern] = &[
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
    Pattern::Database,
];

fn ctx(mode: Mode) -> MapContext {
    MapContext {
        hostname: "h.example.org".into(),
        source: "prop".into(),
        observer_display: "balp-agent@h".into(),
        site: None,
        source_type: "4".into(),
        mode,
        fhir_bases: vec!["/fhir".into(), "/".into()],
        event_id_extension: "urn:balp-agent:event-id".into(),
    }
}

fn url() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        Just("Patient".to_owned()),
        Just("Observation".to_owned()),
        Just("_search".to_owned()),
        Just("_history".to_owned()),
        Just("$everything".to_owned()),
        Just("metadata".to_owned()),
        "[A-Za-z0-9.\\-]{1,8}",
        ".{0,6}",
    ];
    (
        prop_oneof![Just("/fhir"), Just(""), Just("http://x/fhir"), Just("//")],
        proptest::collection::vec(seg, 0..5),
        proptest::option::of("[a-z:_.]{1,10}=[A-Za-z0-9/,%|.]{0,12}(&[a-z_]{1,8}=.{0,8}){0,2}"),
    )
        .prop_map(|(base, segs, q)| {
            let mut u = format!("{base}/{}", segs.join("/"));
            if let Some(q) = q {
                u.push('?');
                u.push_str(&q);
            }
            u
        })
}

fn fields() -> impl Strategy<Value = Vec<(F, String)>> {
    let any_s = || ".{0,24}";
    let pool: Vec<BoxedStrategy<(F, String)>> = vec![
        prop_oneof!["GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS", any_s()]
            .prop_map(|v| (F::Method, v))
            .boxed(),
        url().prop_map(|v| (F::Url, v)).boxed(),
        prop_oneof!["[0-9]{1,3}", any_s()]
            .prop_map(|v| (F::Status, v))
            .boxed(),
        prop_oneof!["0|4|8|12|success|failure|major", any_s()]
            .prop_map(|v| (F::Outcome, v))
            .boxed(),
        any_s().prop_map(|v| (F::User, v)).boxed(),
        any_s().prop_map(|v| (F::UserName, v)).boxed(),
        any_s().prop_map(|v| (F::UserRole, v)).boxed(),
        prop_oneof![
            "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
            "\\[?[0-9a-f:]{2,20}\\]?(:[0-9]{1,5})?",
            any_s()
        ]
        .prop_map(|v| (F::ClientAddress, v))
        .boxed(),
        any_s().prop_map(|v| (F::ForwardedFor, v)).boxed(),
        any_s().prop_map(|v| (F::ClientId, v)).boxed(),
        any_s().prop_map(|v| (F::ServerAddress, v)).boxed(),
        any_s().prop_map(|v| (F::RequestId, v)).boxed(),
        prop_oneof!["[a-z0-9,]{1,12}", "Patient/[a-z0-9]{1,5}", any_s()]
            .prop_map(|v| (F::Patient, v))
            .boxed(),
        prop_oneof![
            "[A-Z][a-z]{2,8}(/[a-z0-9]{1,4}){0,3}",
            "[a-z_]{1,8}\\.[a-z_]{1,8}",
            any_s()
        ]
        .prop_map(|v| (F::Resource, v))
        .boxed(),
        any_s().prop_map(|v| (F::Query, v)).boxed(),
        any_s().prop_map(|v| (F::Description, v)).boxed(),
        any_s().prop_map(|v| (F::TargetUser, v)).boxed(),
        prop_oneof![
            "SELECT|INSERT|UPDATE|DELETE|COPY|TRUNCATE|GRANT|ALTER ROLE",
            any_s()
        ]
        .prop_map(|v| (F::Command, v))
        .boxed(),
        prop_oneof!["1101[0-9]{2}", any_s()]
            .prop_map(|v| (F::Subtype, v))
            .boxed(),
        any_s().prop_map(|v| (F::Database, v)).boxed(),
        any_s().prop_map(|v| (F::Terminal, v)).boxed(),
        any_s().prop_map(|v| (F::Jti, v)).boxed(),
        prop_oneof!["https://[a-z]{1,8}\\.example", any_s()]
            .prop_map(|v| (F::Issuer, v))
            .boxed(),
        any_s().prop_map(|v| (F::PurposeOfUse, v)).boxed(),
        prop_oneof![
            "(SELECT|ALTER ROLE x) .{0,20}(PASSWORD|password=|IDENTIFIED BY) ?'?.{0,10}",
            any_s()
        ]
        .prop_map(|v| (F::Statement, v))
        .boxed(),
        ".{0,80}".prop_map(|v| (F::Token, v)).boxed(),
        any_s().prop_map(|v| (F::SamlSubject, v)).boxed(),
        any_s().prop_map(|v| (F::SamlIssuer, v)).boxed(),
        any_s().prop_map(|v| (F::SamlAssertionId, v)).boxed(),
        any_s().prop_map(|v| (F::OutcomeDesc, v)).boxed(),
    ];
    proptest::sample::subsequence(pool, 0..12).prop_flat_map(|chosen| chosen)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_records_never_panic_and_always_conform(
        pattern in proptest::sample::select(PATTERNS),
        comprehensive in any::<bool>(),
        fields in fields(),
    ) {
        let mode = if comprehensive { Mode::Comprehensive } else { Mode::Minimal };
        let mut f = Fields::default();
        for (k, v) in &fields {
            f.set(*k, v.clone());
        }
        let ex = Extracted { parser: Arc::from("p"), pattern, time: Some(Stamp::now_utc()), time_unreadable: false, fields: f };
        let events = map_extracted(&ctx(mode), &ex, LineRef { position: "p:1", flags: Default::default() });
        if pattern != Pattern::Rest {
            prop_assert!(!events.is_empty(), "{pattern:?} record dropped");
        }
        for e in &events {
            let v = serde_json::to_value(e).unwrap();
            let problems = conformance::check(&v);
            prop_assert!(problems.is_empty(), "{problems:#?}\n{v:#}");
        }
    }

    #[test]
    fn long_opaque_tokens_never_reach_an_event_whole(token in "[A-Za-z0-9_\\-]{33,100}") {
        let mut f = Fields::default();
        f.set(F::Url, "/fhir/Patient/1");
        f.set(F::User, "u");
        f.set(F::ClientAddress, "10.0.0.1");
        f.set(F::Token, token.clone());
        let ex = Extracted { parser: Arc::from("p"), pattern: Pattern::Rest, time: None, time_unreadable: true, fields: f };
        for mode in [Mode::Minimal, Mode::Comprehensive] {
            for e in map_extracted(&ctx(mode), &ex, LineRef { position: "p", flags: Default::default() }) {
                let text = serde_json::to_string(&e).unwrap();
                prop_assert!(!text.contains(&token));
            }
        }
    }

    #[test]
    fn quoted_passwords_never_survive_redaction(
        pre in "[a-zA-Z ]{0,20}",
        kw in "PASSWORD|password|ENCRYPTED PASSWORD|IDENTIFIED BY|identified by",
        pw in "[A-Za-z0-9!#$%]{4,16}",
    ) {
        let sql = format!("{pre} {kw} '{pw}'");
        let out = redact_sql(&sql);
        prop_assert!(!out.contains(&pw), "{out}");
        let conn = format!("SELECT dblink('user=a password={pw} host=b')");
        prop_assert!(!redact_sql(&conn).contains(&pw));
    }

    #[test]
    fn self_audit_always_conforms(boot in ".{0,40}", start in any::<bool>()) {
        let kind = if start { AppActivity::Start } else { AppActivity::Stop };
        let e = self_audit(&ctx(Mode::Minimal), kind, Stamp::now_utc(), &boot);
        let v = serde_json::to_value(&e).unwrap();
        prop_assert!(conformance::check(&v).is_empty(), "{:#?}", conformance::check(&v));
    }
}

//! Built-in parser presets: TOML files under `presets/`, embedded in the binary and parsed
//! once. Each is an ordinary [`ParserSpec`] (the same schema as user `[[parsers]]`), so
//! `balp-agent presets show NAME` prints something a user can copy and adapt. Every preset's
//! `samples` are checked by tests.

use super::spec::{ParserFile, ParserSpec};
use std::sync::OnceLock;

/// (name, TOML text) of every preset, in listing order.
const SOURCES: &[(&str, &str)] = &[
    ("sshd", include_str!("../../presets/sshd.toml")),
    ("sudo", include_str!("../../presets/sudo.toml")),
    ("su", include_str!("../../presets/su.toml")),
    ("login", include_str!("../../presets/login.toml")),
    ("pam", include_str!("../../presets/pam.toml")),
    (
        "fhir_access",
        include_str!("../../presets/fhir_access.toml"),
    ),
    (
        "fhir_access_json",
        include_str!("../../presets/fhir_access_json.toml"),
    ),
    ("json_app", include_str!("../../presets/json_app.toml")),
];

/// Every preset, parsed once.
pub fn all() -> Vec<ParserSpec> {
    static ALL: OnceLock<Vec<ParserSpec>> = OnceLock::new();
    ALL.get_or_init(|| {
        SOURCES
            .iter()
            .flat_map(|(name, text)| match toml::from_str::<ParserFile>(text) {
                Ok(f) => f.parsers,
                // Tests parse every embedded preset, so this is unreachable in a released
                // build; degrade to "preset missing" rather than panicking.
                Err(e) => {
                    tracing::error!(preset = name, error = %e, "built-in preset does not parse");
                    Vec::new()
                }
            })
            .collect()
    })
    .clone()
}

/// The preset with this name.
pub fn get(name: &str) -> Option<ParserSpec> {
    all().into_iter().find(|p| p.name == name)
}

/// The TOML text of a preset (for `presets show`).
pub fn source_text(name: &str) -> Option<&'static str> {
    SOURCES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The names of all presets.
pub fn names() -> Vec<&'static str> {
    SOURCES.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::syslog::SyslogDecoder;
    use crate::decode::{Decoded, Decoder};
    use crate::parse::engine::{LineOutcome, ParserSet};
    use crate::parse::{Extracted, FieldName};
    use jiff::Timestamp;
    use jiff::tz::TimeZone;
    use std::collections::BTreeMap;

    /// Traditional syslog stamps in samples and corpus files are read as if now were this.
    fn now() -> Timestamp {
        "2026-12-20T00:00:00Z".parse().unwrap()
    }

    fn decoder_for(spec: &ParserSpec) -> Decoder {
        match spec.decode.as_deref() {
            Some("syslog") => Decoder::Syslog(SyslogDecoder::new(TimeZone::UTC)),
            Some("json") => Decoder::Json,
            _ => Decoder::Raw,
        }
    }

    /// The `yields` notation of samples: `nothing`, `unmatched`, or the pattern followed by
    /// `field=value` in field declaration order (`time` first), values with spaces quoted.
    fn render(outcome: &LineOutcome) -> String {
        match outcome {
            LineOutcome::Unmatched => "unmatched".into(),
            LineOutcome::Matched {
                extracted: None, ..
            } => "nothing".into(),
            LineOutcome::Matched {
                extracted: Some(e), ..
            } => render_extracted(e),
        }
    }

    fn render_extracted(e: &Extracted) -> String {
        let mut out = e.pattern.as_str().to_owned();
        if let Some(t) = e.time {
            out.push_str(&format!(" time={}", t.to_instant()));
        }
        for f in FieldName::ALL {
            if let Some(v) = e.fields.get(*f) {
                if v.contains(char::is_whitespace) || v.is_empty() {
                    out.push_str(&format!(" {}={v:?}", f.as_str()));
                } else {
                    out.push_str(&format!(" {}={v}", f.as_str()));
                }
            }
        }
        out
    }

    fn run_file(preset: &str, path: &str) -> Vec<LineOutcome> {
        let spec = get(preset).unwrap();
        let set = ParserSet::build(&[preset.to_owned()], &[]).unwrap();
        let dec = decoder_for(&spec);
        let full = format!("{}/../shared/corpus/{path}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(full).unwrap();
        text.lines()
            .map(|l| {
                let d: Decoded = dec.decode(l, now());
                set.parse(&d, &TimeZone::UTC)
            })
            .collect()
    }

    fn events(outcomes: &[LineOutcome]) -> Vec<&Extracted> {
        outcomes
            .iter()
            .filter_map(|o| match o {
                LineOutcome::Matched {
                    extracted: Some(e), ..
                } => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_preset_parses_and_compiles() {
        let all = all();
        assert_eq!(
            all.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            names()
        );
        for p in &all {
            crate::parse::engine::compile_parser(p).unwrap();
            assert!(source_text(&p.name).unwrap().contains(&p.name));
            assert!(!p.samples.is_empty(), "{} has no samples", p.name);
        }
        assert!(get("nope").is_none());
    }

    #[test]
    fn every_sample_yields_what_it_says() {
        for spec in all() {
            let set = ParserSet::build(std::slice::from_ref(&spec.name), &[]).unwrap();
            let dec = decoder_for(&spec);
            for s in &spec.samples {
                let d = dec.decode(&s.line, now());
                let got = render(&set.parse(&d, &TimeZone::UTC));
                assert_eq!(got, s.yields, "preset {} line {}", spec.name, s.line);
            }
        }
    }

    /// (pattern, outcome, user) → count
    fn login_counts(outcomes: &[LineOutcome]) -> BTreeMap<(String, String), usize> {
        let mut m = BTreeMap::new();
        for e in events(outcomes) {
            let key = (
                e.pattern.as_str().to_owned(),
                e.fields.get(FieldName::Outcome).unwrap_or("-").to_owned(),
            );
            *m.entry(key).or_insert(0) += 1;
        }
        m
    }

    #[test]
    fn sshd_counts_on_generated_auth_logs() {
        // grep: 2 "sshd[..]: Accepted", 3 "sshd[..]: Failed", 2 sshd session closed.
        for f in ["auth.log", "auth.traditional.log"] {
            let out = run_file("sshd", &format!("generated/debian12-rsyslog-auth/{f}"));
            let c = login_counts(&out);
            let expect: BTreeMap<(String, String), usize> = [
                (("login".into(), "0".into()), 2),
                (("login".into(), "4".into()), 3),
                (("logout".into(), "-".into()), 2),
            ]
            .into();
            assert_eq!(c, expect, "{f}");
            let ev = events(&out);
            let failed_users: Vec<_> = ev
                .iter()
                .filter(|e| e.fields.get(FieldName::Outcome) == Some("4"))
                .map(|e| e.fields.get(FieldName::User).unwrap())
                .collect();
            assert_eq!(failed_users, ["alice", "mallory", "root"]);
            assert!(
                ev.iter()
                    .all(|e| e.time.unwrap().to_instant().starts_with("2026-11-25T15:2"))
            );
        }
    }

    #[test]
    fn sshd_counts_on_loghub_openssh() {
        // grep -c: 1 Accepted, 522 Failed, 2 "message repeated N times: [ Failed" (one event
        // each), 1 session closed. The file has CRLF line ends.
        let out = run_file("sshd", "loghub/OpenSSH_2k.log");
        let c = login_counts(&out);
        let expect: BTreeMap<(String, String), usize> = [
            (("login".into(), "0".into()), 1),
            (("login".into(), "4".into()), 524),
            (("logout".into(), "-".into()), 1),
        ]
        .into();
        assert_eq!(c, expect);
        assert!(
            events(&out)
                .iter()
                .filter(|e| e.pattern == crate::parse::Pattern::Login)
                .all(|e| e.fields.get(FieldName::ClientAddress).is_some())
        );
    }

    /// (method, status) → count, and number of events with user dr.smith / request id / xff.
    fn rest_counts(path: &str) -> (BTreeMap<(String, String), usize>, usize, usize, usize) {
        let out = run_file("fhir_access", path);
        assert_eq!(out.len(), 12);
        let ev = events(&out);
        assert_eq!(ev.len(), 12, "{path}: every line is a request");
        let mut m = BTreeMap::new();
        for e in &ev {
            assert_eq!(e.pattern, crate::parse::Pattern::Rest);
            assert!(
                e.time
                    .unwrap()
                    .to_instant()
                    .starts_with("2026-11-25T15:25:3")
            );
            let key = (
                e.fields.get(FieldName::Method).unwrap().to_owned(),
                e.fields.get(FieldName::Status).unwrap().to_owned(),
            );
            *m.entry(key).or_insert(0) += 1;
        }
        let users = ev
            .iter()
            .filter(|e| e.fields.get(FieldName::User) == Some("dr.smith"))
            .count();
        assert!(ev.iter().all(|e| {
            e.fields.get(FieldName::User).is_none()
                || e.fields.get(FieldName::User) == Some("dr.smith")
        }));
        let rids = ev
            .iter()
            .filter(|e| e.fields.get(FieldName::RequestId).is_some())
            .count();
        let xff = ev
            .iter()
            .filter(|e| e.fields.get(FieldName::ForwardedFor) == Some("203.0.113.7"))
            .count();
        (m, users, rids, xff)
    }

    #[test]
    fn fhir_access_counts_on_nginx_and_apache_logs() {
        let by_method: BTreeMap<(String, String), usize> = [
            (("DELETE".into(), "204".into()), 1),
            (("GET".into(), "200".into()), 6),
            (("GET".into(), "401".into()), 1),
            (("GET".into(), "404".into()), 1),
            (("POST".into(), "201".into()), 2),
            (("PUT".into(), "200".into()), 1),
        ]
        .into();
        let dir = "generated/nginx1.22-apache2.4-fhir";
        // users: remote_user dr.smith on the 200 and 201 lines only (the 401 is not trusted);
        // fhir_audit files add user="dr.smith" on 7 more lines.
        for (file, users, rids, xff) in [
            ("nginx-access.log", 2, 0, 0),
            ("nginx-access-fhir_audit.log", 9, 12, 1),
            ("apache-access.log", 2, 0, 0),
            ("apache-access-fhir_audit.log", 9, 0, 0),
        ] {
            let got = rest_counts(&format!("{dir}/{file}"));
            assert_eq!(got, (by_method.clone(), users, rids, xff), "{file}");
        }
    }

    #[test]
    fn failed_request_never_names_remote_user() {
        let out = run_file(
            "fhir_access",
            "generated/nginx1.22-apache2.4-fhir/apache-access-fhir_audit.log",
        );
        for e in events(&out) {
            if e.fields.get(FieldName::Status) == Some("401") {
                assert_eq!(e.fields.get(FieldName::User), None);
            }
        }
    }
}

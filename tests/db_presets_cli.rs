//! `balp-agent test` on the database corpus (SPEC §2): PostgreSQL's three destinations joined
//! and decoded as `run` does, and MariaDB server_audit; exact events per kind and user.

mod common;

use common::agent::{corpus, run, write_config};
use std::collections::BTreeMap;

const CONFIG: &str = r#"
[agent]
state_dir = "state"
hostname = "db01"
[[sources]]
name = "pg"
type = "file"
include = ["/nonexistent/postgresql.log"]
decode = "postgres"
multiline = "indented"
timezone = "Europe/Berlin"
parsers = ["postgres", "pgaudit"]
[[sources]]
name = "pgcsv"
type = "file"
include = ["/nonexistent/postgresql.csv"]
decode = "postgres_csv"
multiline = "csv"
timezone = "Europe/Berlin"
parsers = ["postgres", "pgaudit"]
[[sources]]
name = "pgjson"
type = "file"
include = ["/nonexistent/postgresql.json"]
decode = "postgres_json"
timezone = "Europe/Berlin"
parsers = ["postgres", "pgaudit"]
[[sources]]
name = "mariadb"
type = "file"
include = ["/nonexistent/server_audit.log"]
decode = "raw"
timezone = "UTC"
parsers = ["mariadb_audit"]
[output]
type = "stdout"
"#;

/// (kind, requesting user) → count; kind = `login/0`, `logout/0`, `alert/<subtype>` or
/// `other/<type>` (the `database` pattern, once mapped).
fn test_counts(source: &str, file: &str) -> (BTreeMap<(String, String), usize>, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), CONFIG);
    let out = run(&[
        "test",
        "-c",
        cfg.to_str().unwrap(),
        "--source",
        source,
        corpus(file).to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let sub = e["subtype"][0]["code"].as_str().unwrap_or("-");
        let kind = match (e["type"]["code"].as_str().unwrap(), sub) {
            ("110114", "110122") => format!("login/{}", e["outcome"].as_str().unwrap()),
            ("110114", "110123") => format!("logout/{}", e["outcome"].as_str().unwrap()),
            ("110113", s) => format!("alert/{s}"),
            (t, _) => format!("other/{t}"),
        };
        let user = e["agent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["requestor"] == true)
            .and_then(|a| a["who"]["identifier"]["value"].as_str())
            .unwrap_or("-")
            .to_owned();
        *m.entry((kind, user)).or_insert(0) += 1;
    }
    (m, stderr)
}

fn k(kind: &str, user: &str) -> (String, String) {
    (kind.into(), user.into())
}

#[test]
fn postgres_destinations_give_the_same_events_through_the_cli() {
    // Read off postgresql.log (see parse::presets tests for the line-by-line account):
    // 10 connection authorized, 4 password failure lines from 2 psql runs (libpq retried
    // each without SSL: 2 lines folded), 9 disconnections, 8 DDL, 3 ROLE.
    let expect: BTreeMap<_, usize> = [
        (k("login/0", "postgres"), 6),
        (k("login/0", "fhir_app"), 4),
        (k("login/4", "fhir_app"), 1),
        (k("login/4", "mallory"), 1),
        (k("logout/0", "postgres"), 6),
        (k("logout/0", "fhir_app"), 3),
        (k("alert/110129", "postgres"), 3),
        (k("alert/110129", "fhir_app"), 5),
        (k("alert/110136", "postgres"), 3),
    ]
    .into();
    let dir = "generated/postgresql15-pgaudit";
    for (source, file, lines, records) in [
        ("pg", "postgresql.log", 90, 82),
        ("pgcsv", "postgresql.csv", 85, 77),
        ("pgjson", "postgresql.json", 77, 77),
    ] {
        let (mut got, stderr) = test_counts(source, &format!("{dir}/{file}"));
        // The 9 pgaudit READ/WRITE lines of fhir_app become database events.
        let other: usize = got
            .iter()
            .filter(|((kind, _), _)| kind.starts_with("other/"))
            .map(|(_, n)| n)
            .sum();
        got.retain(|(kind, _), _| !kind.starts_with("other/"));
        assert_eq!(other, 9, "{file}: database events");
        assert_eq!(got, expect, "{file}");
        assert!(
            stderr.contains(&format!("lines read: {lines}\n")),
            "{stderr}"
        );
        assert!(stderr.contains(&format!("): {records}\n")), "{stderr}");
        assert!(stderr.contains("malformed (decoder): 0\n"), "{stderr}");
        assert!(stderr.contains("folded lines: 2\n"), "{stderr}");
    }
}

#[test]
fn mariadb_server_audit_through_the_cli() {
    // server_audit.log: CONNECT 4, FAILED_CONNECT 2, DISCONNECT 6 (2 of them end the failed
    // connections: folded), QUERY: 2 DDL, 6 user/grant changes, 6 data statements (database
    // events); TABLE rows emit nothing.
    let (mut got, stderr) = test_counts(
        "mariadb",
        "generated/mariadb10.11-server_audit/server_audit.log",
    );
    let data: usize = got
        .iter()
        .filter(|((kind, _), _)| kind.starts_with("other/"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(data, 6, "database events");
    got.retain(|(kind, _), _| !kind.starts_with("other/"));
    let expect: BTreeMap<_, usize> = [
        (k("login/0", "root"), 2),
        (k("login/0", "fhir_app"), 2),
        (k("login/4", "fhir_app"), 1),
        (k("login/4", "mallory"), 1),
        (k("logout/0", "root"), 2),
        (k("logout/0", "fhir_app"), 2),
        (k("alert/110129", "root"), 1),
        (k("alert/110129", "fhir_app"), 1),
        (k("alert/110136", "root"), 6),
    ]
    .into();
    assert_eq!(got, expect);
    assert!(stderr.contains("folded lines: 2\n"), "{stderr}");
}

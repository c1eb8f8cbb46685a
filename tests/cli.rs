//! The command line as users and scripts rely on it (SPEC §2): check, test, presets.

mod common;

use common::agent::{corpus, run, write_config};
use std::collections::BTreeMap;

fn test_events(
    config: &std::path::Path,
    source: &str,
    file: &std::path::Path,
) -> (Vec<serde_json::Value>, String) {
    let out = run(&[
        "test",
        "-c",
        config.to_str().unwrap(),
        "--source",
        source,
        file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "test failed: {stderr}");
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    (events, stderr)
}

fn kind(ev: &serde_json::Value) -> String {
    let sub = ev["subtype"][0]["code"].as_str().unwrap_or("-");
    format!("{}/{}", sub, ev["outcome"].as_str().unwrap_or("-"))
}

fn counts(events: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(kind(e)).or_default() += 1;
    }
    m
}

#[test]
fn test_command_on_debian_auth_log_gives_exact_sshd_events() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        r#"
[agent]
state_dir = "state"
hostname = "fhir-app01"
[[sources]]
name = "auth"
type = "file"
include = ["/nonexistent/auth.log"]
decode = "syslog"
parsers = ["sshd"]
[output]
type = "stdout"
"#,
    );
    for file in [
        "generated/debian12-rsyslog-auth/auth.log",
        "generated/debian12-rsyslog-auth/auth.traditional.log",
    ] {
        let (events, stderr) = test_events(&cfg, "auth", &corpus(file));
        // Read off the file: Accepted ×2 (alice password, alice publickey); Failed password ×3
        // (alice, invalid user mallory, root); sshd session closed ×2 (alice).
        let c = counts(&events);
        assert_eq!(c.get("110122/0"), Some(&2), "{file}: {c:?}");
        assert_eq!(c.get("110122/4"), Some(&3), "{file}: {c:?}");
        assert_eq!(c.get("110123/0"), Some(&2), "{file}: {c:?}");
        assert_eq!(events.len(), 7, "{file}: {c:?}");
        let mut users: Vec<_> = events
            .iter()
            .filter(|e| e["outcome"] == "4")
            .map(|e| e.to_string())
            .collect();
        users.sort();
        assert!(users.iter().any(|u| u.contains("mallory")));
        assert!(users.iter().any(|u| u.contains("root")));
        assert!(stderr.contains("lines read: 132"), "{stderr}");
        assert!(stderr.contains("parser sshd: matched"), "{stderr}");
        common::agent::assert_conformant(&events);
        for e in &events {
            assert!(e.get("identifier").is_none());
            assert_eq!(e["type"]["code"], "110114");
            assert!(
                e["meta"]["profile"].is_null(),
                "login/logout claim no BALP profile"
            );
        }
    }
}

#[test]
fn test_command_on_fhir_access_logs_gives_exact_rest_events() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        r#"
[agent]
state_dir = "state"
hostname = "fhir-app01"
[[sources]]
name = "fhir"
type = "file"
include = ["/nonexistent/access.log"]
decode = "raw"
parsers = ["fhir_access"]
fhir_base = ["/fhir", "/basic/fhir"]
[output]
type = "stdout"
"#,
    );
    for file in [
        "nginx-access.log",
        "nginx-access-fhir_audit.log",
        "apache-access.log",
        "apache-access-fhir_audit.log",
    ] {
        let path = corpus(&format!("generated/nginx1.22-apache2.4-fhir/{file}"));
        let (events, _) = test_events(&cfg, "fhir", &path);
        // 12 requests: /fhir/metadata is not audited → 11 events. Read off the file:
        // read 200, search 200 (patient=123), create 201, update 200, delete 204,
        // $everything 200, search 200 (name=…), read 404, vread 200, read 401, batch 201.
        let c = counts(&events);
        assert_eq!(events.len(), 11, "{file}: {c:?}");
        assert_eq!(c.get("read/0"), Some(&1), "{file}: {c:?}");
        assert_eq!(c.get("vread/0"), Some(&1), "{file}: {c:?}");
        assert_eq!(c.get("read/4"), Some(&2), "{file}: {c:?}");
        assert_eq!(c.get("search-type/0"), Some(&2), "{file}: {c:?}");
        assert_eq!(c.get("create/0"), Some(&1), "{file}: {c:?}");
        assert_eq!(c.get("update/0"), Some(&1), "{file}: {c:?}");
        assert_eq!(c.get("delete/0"), Some(&1), "{file}: {c:?}");
        let profiled = events
            .iter()
            .filter(|e| e["meta"]["profile"].is_array())
            .count();
        // Failed requests (2), the operation and the batch claim no profile.
        assert_eq!(profiled, 7, "{file}");
        // The 401 line names remote_user dr.smith, but authentication failed: no user agent.
        let unauthorized: Vec<_> = events.iter().filter(|e| e["outcome"] == "4").collect();
        assert!(
            unauthorized
                .iter()
                .all(|e| !e.to_string().contains("IRCP") || !e.to_string().contains("401"))
        );
        common::agent::assert_conformant(&events);
    }
}

#[test]
fn check_lists_every_problem_with_position_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        r#"[agent]
state_dir = "state"
colour = "blue"
[[sources]]
name = "auth"
type = "file"
include = ["/var/log/auth.log"]
read_from = "middle"
parsers = ["sshd", "no_such_preset"]
[output]
type = "directory"
path = "out"
flush_interval = "soon"
"#,
    );
    let out = run(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let label = cfg.to_str().unwrap();
    assert!(
        stderr.contains(&format!("{label}:3:1: agent.colour")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{label}:8:13: sources[0].read_from")),
        "{stderr}"
    );
    assert!(stderr.contains("no_such_preset"), "{stderr}");
    assert!(
        stderr.contains(&format!("{label}:13:18: output.flush_interval")),
        "{stderr}"
    );
}

#[test]
fn check_accepts_the_shipped_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = run(&["check", "-c", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn presets_are_listed_and_shown_as_toml() {
    let out = run(&["presets"]);
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("sshd") && list.contains("fhir_access"),
        "{list}"
    );
    let out = run(&["presets", "show", "sshd"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed: toml::Table = toml::from_str(&text).expect("preset is TOML");
    assert!(parsed.contains_key("parsers"));
    let out = run(&["presets", "show", "nope"]);
    assert!(!out.status.success());
}

#[test]
fn check_warns_about_secret_files_others_can_read_without_showing_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token-value").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[agent]
state_dir = "state"
[[sources]]
name = "auth"
type = "file"
include = ["/var/log/auth.log"]
parsers = ["sshd"]
[output]
type = "http"
url = "https://arr.example.org/fhir"
[output.auth]
type = "bearer"
token_file = "{}"
"#,
            token.display()
        ),
    );
    let out = run(&["check", "-c", cfg.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning is not an error: {stderr}");
    assert!(
        stderr.contains("output.auth.token_file") && stderr.contains("mode 0644"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

/// A JWT with the given payload and a signature nobody checks here.
fn jwt(payload: &str) -> String {
    use base64::Engine as _;
    let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.c2lnbmF0dXJl", b(r#"{"alg":"RS256"}"#), b(payload))
}

#[test]
fn test_command_reads_numeric_times_flags_unreadable_ones_and_decodes_bearer_jwts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        r#"
[agent]
state_dir = "state"
hostname = "app01"
[[sources]]
name = "app"
type = "file"
include = ["/nonexistent/app.log"]
decode = "json"
parsers = ["json_app"]
[[sources]]
name = "fhir"
type = "file"
include = ["/nonexistent/access.log"]
decode = "raw"
parsers = ["fhir_access"]
[output]
type = "stdout"
"#,
    );
    let token = jwt(
        r#"{"sub":"8f1c9a2e","iss":"https://idp.example.org","jti":"j-1","azp":"smart-app","scope":"patient/*.read"}"#,
    );
    let app = dir.path().join("app.log");
    std::fs::write(
        &app,
        [
            // pino (ms), zap (float s), Python (created), ns
            r#"{"time":1764084333123,"user":"a","action":"read","resource":"Patient/1","outcome":"success"}"#.to_owned(),
            r#"{"ts":1764084333.25,"user":"a","action":"read","resource":"Patient/1","outcome":"success"}"#.to_owned(),
            r#"{"created":1764084333.5,"user":"a","action":"read","resource":"Patient/1","outcome":"success"}"#.to_owned(),
            r#"{"time":1764084333123456789,"user":"a","action":"read","resource":"Patient/1","outcome":"success"}"#.to_owned(),
            // unreadable, and absent: flagged, counted
            r#"{"time":"yesterday noon","user":"a","action":"read","resource":"Patient/1","outcome":"success"}"#.to_owned(),
            r#"{"user":"a","action":"read","resource":"Patient/1","outcome":"success"}"#.to_owned(),
            format!(r#"{{"time":"2026-11-25T15:54:00Z","user":"dr.smith","token":"Bearer {token}","action":"read","resource":"Patient/1","outcome":"success"}}"#),
        ]
        .join("\n")
            + "\n",
    )
    .unwrap();
    let (events, stderr) = test_events(&cfg, "app", &app);
    assert_eq!(events.len(), 7, "{stderr}");
    assert!(stderr.contains("unreadable time: 2\n"), "{stderr}");
    let recorded: Vec<&str> = events
        .iter()
        .map(|e| e["recorded"].as_str().unwrap())
        .collect();
    assert_eq!(
        &recorded[..4],
        [
            "2025-11-25T15:25:33.123+00:00",
            "2025-11-25T15:25:33.250+00:00",
            "2025-11-25T15:25:33.500+00:00",
            "2025-11-25T15:25:33.123456789+00:00",
        ]
    );
    let flagged = |e: &serde_json::Value| e["meta"]["tag"].to_string().contains("time-unreadable");
    let flags: Vec<bool> = events.iter().map(flagged).collect();
    assert_eq!(flags, [false, false, false, false, true, true, false]);
    // The JWT's subject is the user, its issuer the system; the token is nowhere.
    let last = &events[6];
    let user = last["agent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["requestor"] == true)
        .unwrap();
    assert_eq!(user["who"]["identifier"]["value"], "8f1c9a2e");
    assert_eq!(
        user["who"]["identifier"]["system"],
        "https://idp.example.org"
    );
    assert_eq!(user["policy"][0], "urn:ietf:params:oauth:jti:j-1");
    assert!(
        last["meta"]["profile"]
            .to_string()
            .contains("OAUTHaccessTokenUse.Minimal")
    );
    let out = serde_json::to_string(&events).unwrap();
    assert!(!out.contains(&token[..30]) && !out.contains("c2lnbmF0dXJl"));
    assert!(!out.contains("patient/*.read"), "scope is not recorded");
    common::agent::assert_conformant(&events);

    // fhir_access: 401 names nobody (not remote_user, not the rejected token's sub); 403
    // keeps the authenticated remote_user; metadata makes no event but is not unparsed.
    let access = dir.path().join("access.log");
    std::fs::write(
        &access,
        format!(
            concat!(
                "10.0.0.5 - dr.smith [25/Nov/2026:15:25:38 +0000] \"GET /fhir/Patient/1 HTTP/1.1\" 401 0 \"-\" \"c\" authorization=\"Bearer {t}\"\n",
                "10.0.0.5 - dr.smith [25/Nov/2026:15:25:39 +0000] \"GET /fhir/Patient/2 HTTP/1.1\" 403 0 \"-\" \"c\"\n",
                "10.0.0.5 - - [25/Nov/2026:15:25:40 +0000] \"GET /fhir/Patient/3 HTTP/1.1\" 200 9 \"-\" \"c\" authorization=\"Bearer {t}\"\n",
                "10.0.0.5 - - [25/Nov/2026:15:25:41 +0000] \"GET /fhir/metadata HTTP/1.1\" 200 9 \"-\" \"kube-probe\"\n",
            ),
            t = token
        ),
    )
    .unwrap();
    let (events, stderr) = test_events(&cfg, "fhir", &access);
    assert_eq!(events.len(), 3, "{stderr}");
    assert!(
        stderr.contains("unmatched: 0\n") && stderr.contains("matched 4"),
        "{stderr}"
    );
    let requestor = |e: &serde_json::Value| {
        e["agent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["requestor"] == true)
            .map(|a| a["who"]["identifier"]["value"].as_str().unwrap().to_owned())
    };
    assert_eq!(requestor(&events[0]), None);
    assert_eq!(requestor(&events[1]).as_deref(), Some("dr.smith"));
    assert_eq!(requestor(&events[2]).as_deref(), Some("8f1c9a2e"));
    assert!(
        !serde_json::to_string(&events)
            .unwrap()
            .contains(&token[..30])
    );
    common::agent::assert_conformant(&events);
}

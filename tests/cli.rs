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

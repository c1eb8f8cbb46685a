//! `balp-agent arr check` against a real FHIR R4 server as the ARR (`tests/fhir_server/`:
//! Medplum's FhirRouter and in-memory repository).
//!
//! The real agent delivers the FHIR access corpus plus generated lines and keeps running;
//! `arr check` (beside it, the spool locked) is clean; after one AuditEvent is deleted at the
//! server and a foreign one with this agent's observer is added, it names exactly those two
//! and exits 1; `--since` leaves both out of its window; with the server gone it exits 2 and
//! says which URL failed.
//!
//! Needs Node.js 20.19+ and `npm ci` in `tests/fhir_server`; skipped with a note without
//! them, except when `CI` is set.

mod common;

use common::agent::{Agent, append, corpus, fhir_lines, run, wait_until, write_config};
use common::fhir_server::{FhirServer, missing};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const HOST: &str = "arr-check-host";

fn server(test: &str) -> Option<FhirServer> {
    let why = missing();
    if !common::e2e::runnable(test, why.is_none(), why.as_deref().unwrap_or_default()) {
        return None;
    }
    Some(FhirServer::start())
}

fn config(dir: &Path, url: &str, files: &[&Path]) -> std::path::PathBuf {
    let include: Vec<String> = files
        .iter()
        .map(|f| format!("\"{}\"", f.display()))
        .collect();
    write_config(
        dir,
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "{HOST}"
[[sources]]
name = "fhir"
type = "file"
include = [{}]
read_from = "beginning"
decode = "raw"
fhir_base = ["/fhir", "/basic/fhir"]
parsers = ["fhir_access"]
poll_interval = "50ms"
[output]
type = "http"
url = "{url}"
bundle_type = "batch"
max_events = 50
flush_interval = "100ms"
timeout = "5s"
[output.retry]
initial_backoff = "50ms"
max_backoff = "1s"
"#,
            include.join(", ")
        ),
    )
}

fn arr_check(cfg: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let mut args = vec!["arr", "check", "-c", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(&args);
    let json = if extra.contains(&"--json") {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "arr check --json printed no JSON ({e}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    } else {
        serde_json::Value::Null
    };
    (out, json)
}

fn ids(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn arr_check_is_clean_then_names_a_deleted_and_a_foreign_event_and_fails_when_the_arr_is_down() {
    let Some(s) = server("the arr check test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated.log");
    append(&generated, &fhir_lines(0, 1200));
    let fhir = "generated/nginx1.22-apache2.4-fhir";
    let nginx = corpus(&format!("{fhir}/nginx-access-fhir_audit.log"));
    let apache = corpus(&format!("{fhir}/apache-access-fhir_audit.log"));
    let cfg = config(dir.path(), &s.base_url(), &[&generated, &nginx, &apache]);
    // What the agent must deliver: every event the lines make, and its own start event.
    let made: usize = [&generated, &nginx, &apache]
        .iter()
        .map(|f| {
            let out = run(&[
                "test",
                "-c",
                cfg.to_str().unwrap(),
                "--source",
                "fhir",
                f.to_str().unwrap(),
            ]);
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout).lines().count()
        })
        .sum();
    assert!(made > 1200, "{made}");

    let mut agent = Agent::start(&cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(120), || s.audit_event_count() > made),
        "the agent did not deliver {} events:\n{}",
        made + 1,
        agent.log()
    );
    // Until the ack after the last Bundle, the last events are in the spool, not the log.
    let state = dir.path().join("state");
    assert!(wait_until(Duration::from_secs(10), || {
        balp_agent::spool::delivered::read(&state)
            .map(|r| r.events.len() > made)
            .unwrap_or(false)
    }));

    // Clean, while the agent runs and holds the spool lock; pages of 200 follow next links.
    let (out, report) = arr_check(&cfg, &["--json", "--page-size", "200"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["delivered"], made + 1, "{report}");
    assert_eq!(report["at_arr"], made + 1, "{report}");
    assert!(report["pages"].as_u64().unwrap() >= 6, "{report}");
    assert_eq!(report["observer"], format!("balp-agent@{HOST}"));
    let (out, _) = arr_check(&cfg, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("result: clean"), "{text}");

    // One event deleted at the ARR, one foreign event claiming this agent's observer.
    let log = balp_agent::spool::delivered::read(&state).unwrap();
    let gone = log
        .events
        .values()
        .find(|e| e.seq == 100)
        .expect("seq 100 delivered")
        .clone();
    let a = s.delete(&format!("/fhir/AuditEvent/{}", gone.id));
    assert_eq!(a.status, 200, "{}", a.json);
    let foreign_id = "0b9f9a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    let mut foreign = s.get(&format!(
        "/fhir/AuditEvent/{}",
        log.events.keys().next().unwrap()
    ));
    assert_eq!(foreign.status, 200);
    let ev = foreign.json.as_object_mut().unwrap();
    ev.remove("meta");
    ev.insert("id".into(), foreign_id.into());
    ev.insert(
        "extension".into(),
        serde_json::json!([{"url": "urn:balp-agent:event-id",
            "valueIdentifier": {"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{foreign_id}")}}]),
    );
    ev.insert("recorded".into(), "2026-11-25T15:30:00Z".into());
    let a = s.send(
        "PUT",
        &format!("/fhir/AuditEvent/{foreign_id}"),
        &foreign.json,
    );
    assert!(a.status == 200 || a.status == 201, "{}", a.json);

    let (out, report) = arr_check(&cfg, &["--json", "--page-size", "200"]);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(ids(&report["missing"]), [gone.id.to_string()], "{report}");
    assert_eq!(report["missing"][0]["seq"], 100);
    assert_eq!(report["missing"][0]["recorded"], gone.recorded.as_str());
    assert_eq!(ids(&report["extra"]), [foreign_id], "{report}");
    assert_eq!(report["extra"][0]["recorded"], "2026-11-25T15:30:00Z");
    let (out, _) = arr_check(&cfg, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    eprintln!("{text}");
    assert!(
        text.contains(&format!("missing {}", gone.id))
            && text.contains("seq 100")
            && text.contains(&format!("extra {foreign_id}"))
            && text.contains("result: 1 missing, 1 extra"),
        "{text}"
    );

    // The same state seen through other output settings: the base derived from a collection
    // URL, and an explicit `fhir_base` beside a URL that is no FHIR base.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let base = s.base_url();
    let variants = [
        text.replace("bundle_type = \"batch\"", "bundle_type = \"collection\"")
            .replace(
                &format!("url = \"{base}\""),
                &format!("url = \"{base}/Bundle\""),
            ),
        text.replace(
            &format!("url = \"{base}\""),
            &format!("url = \"{base}/ingest\"\nfhir_base = \"{base}\""),
        ),
    ];
    for (i, variant) in variants.iter().enumerate() {
        assert_ne!(variant, &text);
        let other = dir.path().join(format!("variant{i}.toml"));
        std::fs::write(&other, variant).unwrap();
        let (out, report) = arr_check(&other, &["--json"]);
        assert_eq!(out.status.code(), Some(1), "{variant}\n{report}");
        assert_eq!(ids(&report["missing"]), [gone.id.to_string()], "{report}");
        assert_eq!(ids(&report["extra"]), [foreign_id], "{report}");
    }

    // The lines are of 25 Nov 2026: a window of the last 10 minutes holds only the agent's own
    // start event, so neither discrepancy is in it.
    let (out, report) = arr_check(&cfg, &["--json", "--since", "10m"]);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["delivered"], 1, "{report}");
    assert_eq!(report["at_arr"], 1, "{report}");

    // A wrong base: the server's 404 is an error, named with the URL and the status.
    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong_url = s.base_url().replace("/fhir", "/other");
    let wrong = config(wrong_dir.path(), &wrong_url, &[&generated]);
    let (out, _) = arr_check(&wrong, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("GET {wrong_url}/AuditEvent?")) && err.contains("HTTP 404"),
        "{err}"
    );

    agent.stop();
    let url = s.base_url();
    drop(s);
    let (out, _) = arr_check(&cfg, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    eprintln!("{err}");
    assert!(
        err.contains(&format!("GET {url}/AuditEvent?")) && err.contains("onnection refused"),
        "{err}"
    );
}

/// SIGKILLs while delivering leave the delivered log consistent with the ARR: a Bundle the
/// ARR stored but the agent had not acknowledged is sent again and logged at its ack, a
/// torn last line is cut at the next start, and `arr check` is clean once everything is
/// delivered.
#[test]
fn arr_check_is_clean_after_sigkills_during_delivery() {
    let Some(s) = server("the arr check SIGKILL test") else {
        return;
    };
    const LINES: usize = 3_000;
    const KILLS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, LINES));
    let cfg = config(dir.path(), &s.base_url(), &[&log]);
    let cfg_text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_events = 50", "max_events = 10");
    std::fs::write(&cfg, cfg_text).unwrap();
    let mut last = 0;
    for kill in 0..KILLS {
        let agent = Agent::start(&cfg, &[]);
        let grew = wait_until(Duration::from_secs(60), || s.audit_event_count() > last);
        assert!(grew, "no progress after restart {kill}:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(fastrand::u64(20..300)));
        agent.signal("KILL");
        drop(agent);
        last = s.audit_event_count();
        assert!(last < LINES, "delivery finished before kill {kill}");
    }
    let mut agent = Agent::start(&cfg, &["--once"]);
    let status = agent
        .wait(Duration::from_secs(300))
        .expect("run --once ends");
    assert!(status.success(), "{}", agent.log());
    let stored = s.audit_event_count();
    assert!(stored > LINES, "{stored}");

    let (out, report) = arr_check(&cfg, &["--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["delivered"], stored, "{report}");
    assert_eq!(report["at_arr"], stored, "{report}");
    assert_eq!(report["pending"], 0, "{report}");
    let read = balp_agent::spool::delivered::read(&dir.path().join("state")).unwrap();
    eprintln!(
        "{KILLS} SIGKILLs: {stored} AuditEvents stored; delivered log: {} lines for {} ids, \
         {} skipped",
        read.lines,
        read.events.len(),
        read.skipped
    );
}

/// A config whose output is not HTTP has no ARR to check: exit 2, saying why.
#[test]
fn arr_check_without_an_http_output_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[agent]\nstate_dir = \"state\"\n[output]\ntype = \"directory\"\npath = \"out\"\n",
    );
    let (out, _) = arr_check(&cfg, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("output.type = \"http\""), "{err}");
    let (out, _) = arr_check(&cfg, &["--since", "soon"]);
    assert_eq!(out.status.code(), Some(2), "a bad --since is a usage error");
}

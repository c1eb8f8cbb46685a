//! The real agent against a real FHIR R4 server as the ARR (`tests/fhir_server/`: Medplum's
//! FhirRouter and in-memory repository, every resource validated against the R4
//! StructureDefinitions, gzip request bodies, batch/transaction processing).
//!
//! * The server really validates each entry of every Bundle shape (a self-check, so a green
//!   run below means something).
//! * Every event every preset makes from the corpus is accepted, for `collection` (POSTed to
//!   `[base]/Bundle`), `batch` and `transaction` (POSTed to the base).
//! * Redelivery is idempotent: the agent SIGKILLed 25 times while delivering, and the server
//!   holds exactly one AuditEvent per line.
//! * A batch-response with a failed entry dead-letters only that entry.
//!
//! Needs Node.js 20.19+ and `npm ci` in `tests/fhir_server` (`.ci/run` does it); skipped with
//! a note without them, except when `CI` is set.

mod common;

use balp_agent::batch::Batch;
use balp_agent::config::{BundleType, OutputConfig, OutputType};
use balp_agent::deliver::Delivery;
use balp_agent::deliver::http::HttpOutput;
use common::agent::{Agent, append, corpus, fhir_lines, run, wait_until, write_config};
use common::e2e::kinds;
use common::fhir_server::{FhirServer, missing};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// The server, or `None` (test skipped) when Node.js or its packages are missing outside CI.
fn server(test: &str) -> Option<FhirServer> {
    let why = missing();
    if !common::e2e::runnable(test, why.is_none(), why.as_deref().unwrap_or_default()) {
        return None;
    }
    Some(FhirServer::start())
}

/// A few valid AuditEvents (reads of Patient/0..n) made by `balp-agent test`.
fn sample_events(n: usize) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[agent]\nstate_dir = \"state\"\nhostname = \"h\"\n[[sources]]\nname = \"fhir\"\n\
         type = \"file\"\ninclude = [\"/nonexistent\"]\ndecode = \"raw\"\n\
         parsers = [\"fhir_access\"]\n[output]\ntype = \"stdout\"\n",
    );
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, n));
    let out = run(&[
        "test",
        "-c",
        cfg.to_str().unwrap(),
        "--source",
        "fhir",
        log.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), n);
    events
}

/// A Bundle of these events shaped as the agent shapes it.
fn bundle(kind: &str, events: &[serde_json::Value]) -> serde_json::Value {
    let entry: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            let id = e["id"].as_str().unwrap();
            let mut x = serde_json::json!({"fullUrl": format!("urn:uuid:{id}"), "resource": e});
            if kind != "collection" {
                x["request"] =
                    serde_json::json!({"method": "PUT", "url": format!("AuditEvent/{id}")});
            }
            x
        })
        .collect();
    serde_json::json!({"resourceType": "Bundle", "id": format!("b-{kind}"), "type": kind,
        "timestamp": "2026-11-25T15:25:33Z", "entry": entry})
}

#[test]
fn real_fhir_server_validates_each_entry_of_collection_batch_and_transaction() {
    let Some(s) = server("the real FHIR server validation test") else {
        return;
    };
    let mut events = sample_events(3);
    // R4: AuditEvent.recorded is 1..1.
    events[1].as_object_mut().unwrap().remove("recorded");
    let ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();

    let a = s.send("POST", "/fhir/Bundle", &bundle("collection", &events));
    assert_eq!(a.status, 400, "{}", a.json);
    assert_eq!(a.json["resourceType"], "OperationOutcome");
    assert!(a.json.to_string().contains("recorded"), "{}", a.json);

    // A transaction is all-or-nothing: the valid first entry is not kept either.
    let a = s.send("POST", "/fhir", &bundle("transaction", &events));
    assert_eq!(a.status, 400, "{}", a.json);
    assert!(a.json.to_string().contains("recorded"), "{}", a.json);
    let stored = s.stored();
    assert!(stored.audit_events.is_empty() && stored.bundles.is_empty());

    // A batch answers per entry.
    let a = s.send("POST", "/fhir", &bundle("batch", &events));
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["type"], "batch-response");
    let statuses: Vec<&str> = a.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["200", "400", "200"]);
    let outcome = &a.json["entry"][1]["response"]["outcome"];
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert!(outcome.to_string().contains("recorded"), "{outcome}");
    let stored: BTreeSet<String> = s.stored().audit_events.into_keys().collect();
    assert_eq!(stored, BTreeSet::from([ids[0].clone(), ids[2].clone()]));

    // PUT of the same id again is an update, not a second event.
    let a = s.send("POST", "/fhir", &bundle("batch", &events[..1]));
    assert_eq!(a.status, 200, "{}", a.json);
    let stored = s.stored();
    assert_eq!(stored.audit_events.len(), 2);
    assert_eq!(stored.audit_events[&ids[0]].versions, 2);
    assert_eq!(s.search_total("AuditEvent", "_count=1"), 2);
    // Medplum rewrites the entry's fullUrl (urn:uuid:<id>) wherever a string holds it, also
    // in Identifier.value, which FHIR's rules leave alone (README: Against a real FHIR
    // server); the id itself is kept.
    let a = s.get(&format!("/fhir/AuditEvent/{}", ids[0]));
    assert_eq!(a.json["id"], ids[0].as_str());
    assert_eq!(
        a.json["extension"][0]["valueIdentifier"]["value"],
        format!("AuditEvent/{}", ids[0])
    );

    let valid = bundle("collection", &[events[0].clone(), events[2].clone()]);
    let a = s.send("POST", "/fhir/Bundle", &valid);
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(s.stored().bundled.audit_events.len(), 2);

    // Not FHIR JSON: 415; gzip bodies are covered by the agent's deliveries below.
    let a = s.send_as("POST", "/fhir", "text/plain", b"{}");
    assert_eq!(a.status, 415, "{}", a.json);
}

/// (source, decode and options, parsers, corpus files or generated files) for every preset.
struct Input {
    source: &'static str,
    options: &'static str,
    parsers: &'static str,
    files: Vec<std::path::PathBuf>,
}

/// Lines for the two presets the corpus has no lines for (pam's services other than
/// sshd/sudo/su/login, and a JSON application log).
const PAM_LINES: &str = "\
2026-11-25T15:30:01.000000+00:00 ws01 lightdm: pam_unix(lightdm:session): session opened for user alice(uid=1000) by (uid=0)
2026-11-25T15:31:01.000000+00:00 ws01 cockpit-session: pam_unix(cockpit:auth): authentication failure; logname= uid=0 euid=0 tty= ruser= rhost=10.0.0.9  user=bob
2026-11-25T15:32:01.000000+00:00 ws01 lightdm: pam_unix(lightdm:session): session closed for user alice
";

const APP_LINES: &str = r#"{"time":"2026-11-25T15:30:01.123Z","user":"dr.smith","client_id":"forms-portal","action":"read","resource":"Questionnaire/7","patient":"123","outcome":"success","client_ip":"10.0.0.5","request_id":"r1"}
{"time":"2026-11-25T15:30:02Z","user":"dr.smith","action":"create","resource":"QuestionnaireResponse/8","patient":"123","outcome":"success","client_ip":"10.0.0.5"}
{"time":"2026-11-25T15:30:03Z","user":"dr.smith","action":"update","resource":"QuestionnaireResponse/8","patient":"123","outcome":"failure","client_ip":"10.0.0.5"}
{"time":"2026-11-25T15:30:04Z","user":"dr.smith","action":"delete","resource":"QuestionnaireResponse/8","patient":"123,456","outcome":"success"}
{"time":"2026-11-25T15:30:05Z","user":"dr.smith","action":"search","resource":"Observation","query":"patient=123&code=1234-5","patient":"123","outcome":"success"}
{"time":"2026-11-25T15:30:06Z","user":"dr.smith","action":"login","outcome":"success","client_ip":"10.0.0.5"}
{"time":"2026-11-25T15:30:07Z","user":"dr.smith","action":"logout","outcome":"success","client_ip":"10.0.0.5"}
{"time":"2026-11-25T15:30:08Z","user":"dr.smith","action":"generate_link","resource":"DocumentReference/9","patient":"123","outcome":"success"}
{"time":"2026-11-25T15:30:09Z","user":"dr.smith","action":"disclose","resource":"DocumentReference/9","patient":"123","recipient":"Dr. Jones, City Clinic","outcome":"success"}
{"time":"2026-11-25T15:30:10Z","user":"dr.smith","action":"receive","resource":"DocumentReference/10","patient":"123","sender":"Lab Corp","outcome":"success"}
"#;

fn inputs(dir: &Path) -> Vec<Input> {
    let pam = dir.join("pam.log");
    std::fs::write(&pam, PAM_LINES).unwrap();
    let app = dir.join("app.log");
    std::fs::write(&app, APP_LINES).unwrap();
    let c = |files: &[&str]| files.iter().map(|f| corpus(f)).collect::<Vec<_>>();
    let fhir = "generated/nginx1.22-apache2.4-fhir";
    let pg = "generated/postgresql15-pgaudit";
    vec![
        Input {
            source: "auth",
            options: "decode = \"syslog\"",
            parsers: r#"["sshd", "sudo", "su", "login", "pam"]"#,
            files: c(&[
                "generated/debian12-rsyslog-auth/auth.log",
                "generated/debian12-rsyslog-auth/auth.traditional.log",
                "loghub/OpenSSH_2k.log",
                "loghub/Linux_2k.log",
            ])
            .into_iter()
            .chain([pam])
            .collect(),
        },
        Input {
            source: "fhir",
            options: "decode = \"raw\"\nfhir_base = [\"/fhir\", \"/basic/fhir\"]",
            parsers: r#"["fhir_access"]"#,
            files: c(&[
                &format!("{fhir}/nginx-access.log"),
                &format!("{fhir}/nginx-access-fhir_audit.log"),
                &format!("{fhir}/apache-access.log"),
                &format!("{fhir}/apache-access-fhir_audit.log"),
            ]),
        },
        Input {
            source: "fhirjson",
            options: "decode = \"json\"\nfhir_base = [\"/fhir\", \"/basic/fhir\"]",
            parsers: r#"["fhir_access_json"]"#,
            files: c(&[&format!("{fhir}/nginx-access-json.log")]),
        },
        Input {
            source: "pg",
            options: "decode = \"postgres\"\nmultiline = \"indented\"\ntimezone = \"Europe/Berlin\"",
            parsers: r#"["postgres", "pgaudit"]"#,
            files: c(&[&format!("{pg}/postgresql.log")]),
        },
        Input {
            source: "pgcsv",
            options: "decode = \"postgres_csv\"\nmultiline = \"csv\"\ntimezone = \"Europe/Berlin\"",
            parsers: r#"["postgres", "pgaudit"]"#,
            files: c(&[&format!("{pg}/postgresql.csv")]),
        },
        Input {
            source: "pgjson",
            options: "decode = \"postgres_json\"\ntimezone = \"Europe/Berlin\"",
            parsers: r#"["postgres", "pgaudit"]"#,
            files: c(&[&format!("{pg}/postgresql.json")]),
        },
        Input {
            source: "mariadb",
            options: "decode = \"raw\"\ntimezone = \"UTC\"",
            parsers: r#"["mariadb_audit"]"#,
            files: c(&["generated/mariadb10.11-server_audit/server_audit.log"]),
        },
        Input {
            source: "app",
            options: "decode = \"json\"",
            parsers: r#"["json_app"]"#,
            files: vec![app],
        },
    ]
}

/// `[[sources]]` tables reading these inputs from the beginning.
fn sources_toml(inputs: &[Input]) -> String {
    let mut t = String::new();
    for i in inputs {
        let include: Vec<String> = i
            .files
            .iter()
            .map(|f| format!("\"{}\"", f.display()))
            .collect();
        t.push_str(&format!(
            "[[sources]]\nname = \"{}\"\ntype = \"file\"\ninclude = [{}]\nread_from = \"beginning\"\n{}\nparsers = {}\n",
            i.source,
            include.join(", "),
            i.options,
            i.parsers
        ));
    }
    t
}

/// The events `balp-agent test` makes from the inputs (what `run` must deliver).
fn expected_events(cfg: &Path, inputs: &[Input]) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for i in inputs {
        for f in &i.files {
            let out = run(&[
                "test",
                "-c",
                cfg.to_str().unwrap(),
                "--source",
                i.source,
                f.to_str().unwrap(),
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert!(!events.is_empty(), "{} makes no event", f.display());
            all.extend(events);
        }
    }
    all
}

/// Every event of the real corpus, delivered by `run --once` to the real server with
/// validation on, is accepted, for each Bundle type.
#[test]
fn every_preset_s_corpus_events_are_accepted_by_a_real_fhir_server() {
    if server("the real FHIR server corpus test").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let inputs = inputs(dir.path());
    let sources = sources_toml(&inputs);
    let head =
        "[agent]\nstate_dir = \"state\"\nhostname = \"fhir-app01\"\nmode = \"comprehensive\"\n";
    let test_cfg = write_config(
        dir.path(),
        &format!("{head}{sources}[output]\ntype = \"stdout\"\n"),
    );
    let expected = expected_events(&test_cfg, &inputs);
    let want = kinds(expected.iter());
    for kind in ["collection", "batch", "transaction"] {
        let s = FhirServer::start();
        let run_dir = tempfile::tempdir().unwrap();
        let url = if kind == "collection" {
            format!("{}/Bundle", s.base_url())
        } else {
            s.base_url()
        };
        let cfg = write_config(
            run_dir.path(),
            &format!(
                "{head}{sources}[output]\ntype = \"http\"\nurl = \"{url}\"\nbundle_type = \"{kind}\"\n\
                 flush_interval = \"100ms\"\n[output.retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"1s\"\n"
            ),
        );
        let mut agent = Agent::start(&cfg, &["--once"]);
        let status = agent
            .wait(Duration::from_secs(300))
            .expect("run --once ends");
        assert!(status.success(), "{kind}: {}", agent.log());
        assert!(
            !run_dir.path().join("state/dead-letter").exists(),
            "{kind}: the server rejected events:\n{}",
            agent.log()
        );
        let stored: Vec<serde_json::Value> = if kind == "collection" {
            s.search_all("Bundle", 50)
                .iter()
                .flat_map(|b| b["entry"].as_array().cloned().unwrap_or_default())
                .map(|e| e["resource"].clone())
                .collect()
        } else {
            s.search_all("AuditEvent", 500)
        };
        let (own, from_lines): (Vec<_>, Vec<_>) = stored
            .into_iter()
            .partition(|e| e["type"]["code"] == "110100");
        assert!(!own.is_empty(), "{kind}: the agent's start event");
        assert_eq!(
            from_lines.len(),
            expected.len(),
            "{kind}: events stored vs made"
        );
        assert_eq!(kinds(from_lines.iter()), want, "{kind}");
        let ids: BTreeSet<&str> = from_lines
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), expected.len(), "{kind}: ids are unique");
        if kind != "collection" {
            // PUT AuditEvent/<id> keeps the agent's ids (UUID v5); a create would have got
            // ids the server generates (Medplum: v4).
            for id in &ids {
                assert_eq!(
                    id.as_bytes()[14],
                    b'5',
                    "{kind}: {id} is not the agent's id"
                );
            }
        }
        eprintln!(
            "{kind}: {} events from lines + {} of the agent accepted with validation on \
             ({} requests)",
            from_lines.len(),
            own.len(),
            s.stored().requests
        );
    }
}

fn kill_config(
    dir: &Path,
    log: &Path,
    url: &str,
    kind: &str,
    max_events: usize,
) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "test-host"
[[sources]]
name = "fhir"
type = "file"
include = ["{log}"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
poll_interval = "50ms"
[output]
type = "http"
url = "{url}"
bundle_type = "{kind}"
max_events = {max_events}
flush_interval = "100ms"
timeout = "5s"
[output.retry]
initial_backoff = "20ms"
max_backoff = "200ms"
"#,
            log = log.display(),
        ),
    )
}

/// Stored AuditEvents made from lines (not the agent's own) by request id (`req########`).
fn stored_by_request_id(s: &FhirServer) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in s.stored().audit_events.into_values() {
        // The agent's own start/stop and its alerts (fhir_lines make no other 110113).
        if e.type_code == "110100" || e.type_code == "110113" {
            continue;
        }
        let rid = e
            .what
            .iter()
            .find(|w| w.starts_with("req"))
            .cloned()
            .unwrap_or_default();
        m.entry(rid).or_default().push(e.versions);
    }
    m
}

/// SIGKILL the agent 25 times while it delivers `transaction` Bundles of PUT entries; each
/// restart resends what was in flight. The server ends with exactly one AuditEvent per line.
#[test]
fn sigkill_during_delivery_leaves_exactly_one_audit_event_per_line() {
    let Some(s) = server("the real FHIR server SIGKILL test") else {
        return;
    };
    const LINES: usize = 30_000;
    const KILLS: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, LINES));
    let cfg = kill_config(dir.path(), &log, &s.base_url(), "transaction", 10);
    let started = Instant::now();
    let mut kills = 0;
    let mut last = 0;
    while kills < KILLS {
        let agent = Agent::start(&cfg, &[]);
        // Kill only while delivery is under way: once something new arrived, after a random
        // short delay (a request may be in flight, or its answer on the way back).
        let grew = wait_until(Duration::from_secs(60), || s.audit_event_count() > last);
        assert!(grew, "no progress after restart {kills}:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(fastrand::u64(20..300)));
        agent.signal("KILL");
        drop(agent);
        kills += 1;
        last = s.audit_event_count();
        assert!(
            last < LINES,
            "delivery finished before kill {kills}: make it slower"
        );
    }
    let mut agent = Agent::start(&cfg, &["--once"]);
    let status = agent
        .wait(Duration::from_secs(600))
        .expect("run --once ends");
    assert!(status.success(), "{}", agent.log());

    let by_rid = stored_by_request_id(&s);
    let expected: BTreeSet<String> = (0..LINES).map(|i| format!("req{i:08}")).collect();
    let got: BTreeSet<String> = by_rid.keys().cloned().collect();
    assert_eq!(got.len(), LINES, "{} request ids stored", got.len());
    assert_eq!(got, expected);
    let duplicated: Vec<_> = by_rid.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(duplicated.is_empty(), "duplicates: {:?}", &duplicated[..1]);
    let from_lines = s
        .stored()
        .audit_events
        .values()
        .filter(|e| e.type_code != "110100" && e.type_code != "110113")
        .count();
    assert_eq!(from_lines, LINES);
    // dr.smith reads 30 000 patients: one many-patients alert, whatever the kills did.
    let alerts = s
        .stored()
        .audit_events
        .values()
        .filter(|e| e.type_code == "110113")
        .count();
    assert_eq!(alerts, 1, "one alert for the one incident");
    // Cross-check with plain FHIR search: AuditEvents from lines + the agent's own.
    let own = s
        .stored()
        .audit_events
        .values()
        .filter(|e| e.type_code == "110100")
        .count();
    assert_eq!(
        s.search_total("AuditEvent", "_count=1"),
        (LINES + own + alerts) as u64
    );
    let updated: u64 = by_rid.values().map(|v| v[0] - 1).sum();
    eprintln!(
        "{kills} SIGKILLs in {:?} ({last} AuditEvents stored at the last); {LINES} lines -> \
         {from_lines} AuditEvents from lines (+{own} start/stop of the agent); {updated} \
         redelivered entries were updates",
        started.elapsed()
    );
    assert!(
        updated > 0,
        "no redelivery happened: the kills came at the wrong time"
    );
}

/// A batch whose second entry fails the server's validation: only that entry is
/// dead-lettered, with the server's OperationOutcome; the others are stored.
#[tokio::test]
async fn batch_response_from_a_real_server_dead_letters_only_the_invalid_entry() {
    let Some(s) = server("the real FHIR server batch-response test") else {
        return;
    };
    let mut events = sample_events(4);
    events[1].as_object_mut().unwrap().remove("recorded");
    let batch = Batch {
        events: events
            .iter()
            .map(|e| balp_agent::balp::EventRecord {
                id: e["id"].as_str().unwrap().parse().unwrap(),
                pattern: "read",
                json: e.to_string(),
                leaf: None,
            })
            .collect(),
        ..Batch::default()
    };
    for kind in [BundleType::Batch, BundleType::Transaction] {
        let state = tempfile::tempdir().unwrap();
        let o = OutputConfig {
            output_type: OutputType::Http,
            url: Some(s.base_url()),
            bundle_type: kind,
            ..OutputConfig::default()
        };
        let mut out = HttpOutput::new(&o, state.path()).unwrap();
        let got = out
            .deliver(&batch, &balp_agent::shutdown::Shutdown::never())
            .await
            .unwrap();
        let Delivery::DeadLettered {
            status,
            accepted,
            dead_lettered,
            files,
            ..
        } = got
        else {
            panic!("{kind:?}: expected a dead letter, got {got:?}");
        };
        assert_eq!((status, accepted, dead_lettered), (400, 3, 1), "{kind:?}");
        let letter: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
        assert_eq!(
            letter["bundle"]["entry"][0]["resource"]["id"],
            events[1]["id"]
        );
        assert!(
            letter["response"]
                .as_str()
                .unwrap()
                .contains("OperationOutcome"),
            "{letter}"
        );
        assert!(
            letter["response"].as_str().unwrap().contains("recorded"),
            "{letter}"
        );
        let stored: BTreeSet<String> = s.stored().audit_events.into_keys().collect();
        let want: BTreeSet<String> = [0, 2, 3]
            .iter()
            .map(|&i| events[i]["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(stored, want, "{kind:?}");
    }
}

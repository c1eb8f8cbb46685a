//! Scripted scenarios with known truth: each rule raises exactly the expected alerts, once
//! per incident, with deterministic ids, and survives a save and reload.

use super::*;
use crate::pipeline::SourceProcessor;
use crate::source::{LogLine, StreamId};

/// 2026-11-25 (a Wednesday) 10:00:00 UTC, in ms.
const T0: i64 = 1_795_600_800_000;

fn engine(toml_text: &str) -> AlertEngine {
    let cfg: Config = toml::from_str(toml_text).unwrap();
    AlertEngine::new(&cfg).unwrap()
}

struct Script {
    n: u64,
    source: Arc<str>,
}

impl Script {
    fn new() -> Script {
        Script {
            n: 0,
            source: Arc::from("auth"),
        }
    }

    fn fact(
        &mut self,
        kind: FactKind,
        secs: i64,
        user: Option<&str>,
        addr: Option<&str>,
        patient: Option<&str>,
    ) -> AlertFact {
        self.n += 1;
        AlertFact {
            event_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("ev{}", self.n).as_bytes()),
            time: at(T0 + secs * 1000),
            kind,
            user: user.map(str::to_owned),
            address: addr.map(str::to_owned),
            patient: patient.map(str::to_owned),
            source: self.source.clone(),
        }
    }

    fn fail(&mut self, secs: i64, user: &str, addr: &str) -> AlertFact {
        self.fact(FactKind::LoginFailure, secs, Some(user), Some(addr), None)
    }

    fn read(&mut self, secs: i64, user: &str, patient: &str) -> AlertFact {
        self.fact(
            FactKind::Read,
            secs,
            Some(user),
            Some("10.1.2.3"),
            Some(patient),
        )
    }
}

fn json(a: &Alert) -> serde_json::Value {
    serde_json::from_str(&a.record.json).unwrap()
}

fn refs(a: &Alert) -> Vec<String> {
    json(a)["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["what"]["reference"].as_str())
        .filter_map(|r| r.strip_prefix("AuditEvent/"))
        .map(str::to_owned)
        .collect()
}

fn feed(e: &mut AlertEngine, facts: &[AlertFact]) -> Vec<Alert> {
    facts.iter().flat_map(|f| e.observe(f)).collect()
}

fn conformant(a: &Alert) {
    let v = json(a);
    let problems = crate::balp::conformance::check(&v);
    assert!(problems.is_empty(), "{problems:?}\n{v}");
}

#[test]
fn a_burst_of_failed_logins_raises_one_alert_per_incident() {
    let mut e = engine("");
    let mut s = Script::new();
    let burst: Vec<AlertFact> = (0..8).map(|i| s.fail(i, "root", "203.0.113.9")).collect();
    let raised = feed(&mut e, &burst[..7]);
    assert!(raised.is_empty(), "seven failures are no burst");
    let raised = feed(&mut e, &burst[7..]);
    assert_eq!(
        raised.len(),
        1,
        "user and address complete together: one alert"
    );
    let a = &raised[0];
    assert_eq!(a.rule, "failed-login-burst");
    let key = "user:root address:203.0.113.9";
    assert_eq!(
        a.record.id,
        alert_id("failed-login-burst", key, &burst[0].event_id.to_string())
    );
    let ids: Vec<String> = burst.iter().map(|f| f.event_id.to_string()).collect();
    assert_eq!(
        refs(a),
        ids,
        "entity.what names the eight failures, oldest first"
    );
    let v = json(a);
    assert_eq!(v["type"]["code"], "110113");
    assert_eq!(v["subtype"][0]["code"], "failed-login-burst");
    assert_eq!(v["outcome"], "4");
    assert_eq!(v["recorded"], "2026-11-25T10:00:07+00:00");
    assert_eq!(v["period"]["start"], "2026-11-25T10:00:00+00:00");
    assert_eq!(
        v["outcomeDesc"],
        "8 failed logins for user \"root\" within 2m; 8 failed logins for address 203.0.113.9 within 2m"
    );
    conformant(a);

    // The attack goes on for 20 minutes, a failure every 30 s: the same incident.
    let more: Vec<AlertFact> = (1..=40)
        .map(|i| s.fail(7 + i * 30, "root", "203.0.113.9"))
        .collect();
    assert!(feed(&mut e, &more).is_empty(), "once per incident");
    // 11 minutes of quiet end it; the next burst is a new incident with a new id.
    let last = 7 + 40 * 30;
    let next: Vec<AlertFact> = (0..8)
        .map(|i| s.fail(last + 660 + i, "root", "203.0.113.9"))
        .collect();
    let raised = feed(&mut e, &next);
    assert_eq!(raised.len(), 1);
    assert_ne!(raised[0].record.id, a.record.id);
    assert_eq!(e.raised()["failed-login-burst"], 2);
}

#[test]
fn failures_spread_wider_than_the_window_or_across_keys_raise_nothing() {
    let mut e = engine("");
    let mut s = Script::new();
    // Eight failures, one every 20 s: 140 s from first to last, over the 2 min window.
    let slow: Vec<AlertFact> = (0..8)
        .map(|i| s.fail(i * 20, "alice", "198.51.100.1"))
        .collect();
    assert!(feed(&mut e, &slow).is_empty());
    // Eight users failing once each from eight addresses.
    let spread: Vec<AlertFact> = (0..8)
        .map(|i| s.fail(300 + i, &format!("u{i}"), &format!("198.51.100.{}", 10 + i)))
        .collect();
    assert!(feed(&mut e, &spread).is_empty());
}

#[test]
fn the_address_alone_completes_when_the_attacker_changes_user_names() {
    let mut e = engine("");
    let mut s = Script::new();
    let names = [
        "root", "admin", "oracle", "test", "pi", "ubuntu", "git", "postgres",
    ];
    let facts: Vec<AlertFact> = names
        .iter()
        .enumerate()
        .map(|(i, u)| s.fail(i as i64, u, "192.0.2.66"))
        .collect();
    let raised = feed(&mut e, &facts);
    assert_eq!(raised.len(), 1);
    let v = json(&raised[0]);
    assert_eq!(
        v["outcomeDesc"],
        "8 failed logins for address 192.0.2.66 within 2m"
    );
    assert_eq!(v["agent"][1]["network"]["address"], "192.0.2.66");
    assert_eq!(
        v["agent"].as_array().unwrap().len(),
        2,
        "no user: it names many"
    );
}

#[test]
fn a_success_after_failures_raises_one_alert_and_consumes_them() {
    let mut e = engine("");
    let mut s = Script::new();
    let mut facts: Vec<AlertFact> = (0..5)
        .map(|i| s.fail(i * 10, "alice", "198.51.100.7"))
        .collect();
    let ok = s.fact(
        FactKind::LoginSuccess,
        60,
        Some("alice"),
        Some("198.51.100.7"),
        None,
    );
    facts.push(ok.clone());
    let raised = feed(&mut e, &facts);
    assert_eq!(raised.len(), 1);
    let a = &raised[0];
    assert_eq!(a.rule, "success-after-failures");
    let ids: Vec<String> = facts.iter().map(|f| f.event_id.to_string()).collect();
    assert_eq!(refs(a), ids, "the five failures and the success");
    let v = json(a);
    assert_eq!(v["outcome"], "12");
    assert_eq!(v["agent"][1]["who"]["identifier"]["value"], "alice");
    conformant(a);
    // Logging in again a minute later is the same incident.
    let again = s.fact(
        FactKind::LoginSuccess,
        120,
        Some("alice"),
        Some("198.51.100.7"),
        None,
    );
    assert!(e.observe(&again).is_empty());

    // Four failures and a success: a typo, not an attack.
    let mut e = engine("");
    let mut typo: Vec<AlertFact> = (0..4).map(|i| s.fail(i, "bob", "198.51.100.8")).collect();
    typo.push(s.fact(
        FactKind::LoginSuccess,
        10,
        Some("bob"),
        Some("198.51.100.8"),
        None,
    ));
    assert!(feed(&mut e, &typo).is_empty());
    // Five failures, then a success 11 minutes after the first: outside the 10 min window.
    let mut late: Vec<AlertFact> = (0..5).map(|i| s.fail(i, "carol", "198.51.100.9")).collect();
    late.push(s.fact(
        FactKind::LoginSuccess,
        661,
        Some("carol"),
        Some("198.51.100.9"),
        None,
    ));
    assert!(feed(&mut e, &late).is_empty());
}

#[test]
fn a_user_reading_many_distinct_patients_raises_one_alert() {
    let mut e = engine("");
    let mut s = Script::new();
    let mut facts: Vec<AlertFact> = (0..49)
        .map(|i| s.read(i * 30, "dr.snoop", &format!("p{i}")))
        .collect();
    // Reading the same patients again adds no distinct patient.
    facts.extend((0..20).map(|i| s.read(1500 + i, "dr.snoop", &format!("p{i}"))));
    // Another user, other patients: their own count.
    facts.extend((0..30).map(|i| s.read(i, "dr.ward", &format!("w{i}"))));
    assert!(feed(&mut e, &facts).is_empty());
    let query = s.fact(FactKind::Query, 1600, Some("dr.snoop"), None, Some("p49"));
    let raised = e.observe(&query);
    assert_eq!(raised.len(), 1);
    let a = &raised[0];
    assert_eq!(a.rule, "many-patients");
    assert_eq!(refs(a).len(), 50, "one event per distinct patient");
    assert_eq!(
        json(a)["outcomeDesc"],
        "user \"dr.snoop\" accessed 50 distinct patients within 1h"
    );
    conformant(a);
    assert!(e.observe(&s.read(1700, "dr.snoop", "p999")).is_empty());
}

#[test]
fn access_outside_working_hours_raises_per_user_and_incident() {
    let mut e = engine(
        "[[alerts]]\nrule = \"off-hours\"\ntimezone = \"Europe/Berlin\"\n\
         days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\nhours = \"07:00-19:00\"\n",
    );
    let mut s = Script::new();
    // 16:00 in Berlin on a Wednesday: working hours.
    let day = s.read(5 * 3600, "dr.day", "p1");
    assert!(e.observe(&day).is_empty());
    // 21:00 in Berlin.
    let night = s.read(10 * 3600, "dr.night", "p2");
    let raised = e.observe(&night);
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].rule, "off-hours");
    assert_eq!(refs(&raised[0]), [night.event_id.to_string()]);
    assert_eq!(json(&raised[0])["outcome"], "0");
    conformant(&raised[0]);
    // Half an hour later: the same incident.
    assert!(
        e.observe(&s.read(10 * 3600 + 1800, "dr.night", "p3"))
            .is_empty()
    );
    // A failed login is not an access (the burst rules watch those).
    assert!(
        e.observe(&s.fail(10 * 3600 + 1900, "eve", "192.0.2.1"))
            .is_empty()
    );
    // Saturday 12:00 in Berlin, three days later.
    let weekend = s.fact(
        FactKind::LoginSuccess,
        74 * 3600,
        Some("dr.night"),
        Some("10.0.0.5"),
        None,
    );
    assert_eq!(e.observe(&weekend).len(), 1);
}

#[test]
fn watched_patients_and_users_raise_on_any_access() {
    let mut e =
        engine("[[alerts]]\nrule = \"watchlist\"\npatients = [\"vip-1\"]\nusers = [\"jdoe\"]\n");
    let mut s = Script::new();
    assert!(e.observe(&s.read(0, "dr.a", "p1")).is_empty());
    let vip = s.read(10, "dr.a", "vip-1");
    let raised = e.observe(&vip);
    assert_eq!(raised.len(), 1);
    let v = json(&raised[0]);
    assert_eq!(
        v["outcomeDesc"],
        "read involving watched patient \"vip-1\" by user \"dr.a\""
    );
    assert!(
        v["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["what"]["reference"] == "Patient/vip-1")
    );
    conformant(&raised[0]);
    assert!(
        e.observe(&s.read(20, "dr.a", "vip-1")).is_empty(),
        "same incident"
    );
    assert_eq!(
        e.observe(&s.read(30, "dr.b", "vip-1")).len(),
        1,
        "another user"
    );
    let login = s.fact(
        FactKind::LoginSuccess,
        40,
        Some("jdoe"),
        Some("10.9.9.9"),
        None,
    );
    let raised = e.observe(&login);
    assert_eq!(raised.len(), 1);
    assert_eq!(
        json(&raised[0])["outcomeDesc"],
        "login involving watched user \"jdoe\""
    );
}

#[test]
fn a_silent_source_raises_once_after_its_grace_and_again_after_new_silence() {
    let mut e = engine("[[alerts]]\nrule = \"silent-source\"\nsilent_after = \"1h\"\n");
    e.started_ms = T0;
    e.line_seen("auth", at(T0 + 1000));
    assert!(
        e.check_silent(at(T0 + 3600 * 1000)).is_empty(),
        "not yet an hour"
    );
    let raised = e.check_silent(at(T0 + 3602 * 1000));
    assert_eq!(raised.len(), 1);
    let v = json(&raised[0]);
    assert_eq!(v["subtype"][0]["code"], "110133");
    assert_eq!(v["subtype"][1]["code"], "silent-source");
    assert_eq!(v["recorded"], "2026-11-25T11:00:01+00:00");
    conformant(&raised[0]);
    assert!(
        e.check_silent(at(T0 + 9000 * 1000)).is_empty(),
        "one alert per silence"
    );
    e.line_seen("auth", at(T0 + 9001 * 1000));
    assert!(e.check_silent(at(T0 + 9100 * 1000)).is_empty());
    let again = e.check_silent(at(T0 + 12602 * 1000));
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].record.id, raised[0].record.id);

    // Right after a start a source that was last seen long ago gets the whole grace.
    let mut e = engine("[[alerts]]\nrule = \"silent-source\"\nsilent_after = \"1h\"\n");
    e.last_line.insert("auth".into(), T0 - 86_400_000);
    e.started_ms = T0;
    assert!(e.check_silent(at(T0 + 60_000)).is_empty());
    assert_eq!(e.check_silent(at(T0 + 3601 * 1000)).len(), 1);
    // A source that never produced a line is not silent, only absent.
    assert!(!e.last_line.contains_key("fhir"));
}

#[test]
fn repeated_and_reordered_facts_change_nothing() {
    let mut s = Script::new();
    let burst: Vec<AlertFact> = (0..8).map(|i| s.fail(i, "root", "203.0.113.9")).collect();
    let mut e = engine("");
    let mut twice = burst[..7].to_vec();
    twice.extend(burst[..7].iter().cloned());
    assert!(
        feed(&mut e, &twice).is_empty(),
        "a re-read line is the same event"
    );
    let a = feed(&mut e, &burst[7..]);
    let mut e2 = engine("");
    let mut reversed = burst.clone();
    reversed.reverse();
    let b = feed(&mut e2, &reversed);
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 1);
    assert_eq!(a[0].record.id, b[0].record.id, "the window is a set");
}

#[test]
fn a_saved_window_survives_a_restart_and_the_reread_lines_add_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg: Config = toml::from_str("").unwrap();
    let mut s = Script::new();
    let burst: Vec<AlertFact> = (0..8).map(|i| s.fail(i, "root", "203.0.113.9")).collect();
    let straight = feed(&mut engine(""), &burst);

    let mut e = AlertEngine::open(&cfg, dir.path(), 1).unwrap();
    assert!(feed(&mut e, &burst[..5]).is_empty());
    e.save(0).unwrap();
    drop(e);
    // Restart: the positions lag, so lines 3..5 are read again before the rest.
    let mut e = AlertEngine::open(&cfg, dir.path(), 1).unwrap();
    let raised = feed(&mut e, &burst[3..]);
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].record.id, straight[0].record.id);
    assert_eq!(
        raised[0].record.json, straight[0].record.json,
        "the same event, byte for byte"
    );
}

#[test]
fn an_alert_lost_with_its_commit_is_raised_again_with_the_same_id_and_a_spooled_one_never() {
    let dir = tempfile::tempdir().unwrap();
    let cfg: Config = toml::from_str("").unwrap();
    let mut s = Script::new();
    let burst: Vec<AlertFact> = (0..8).map(|i| s.fail(i, "root", "203.0.113.9")).collect();
    let mut e = AlertEngine::open(&cfg, dir.path(), 1).unwrap();
    let raised = feed(&mut e, &burst);
    assert_eq!(raised.len(), 1);
    e.spooled(&raised[0], 42);
    // Saved while the commit holding seq 42 is still being written.
    e.save(41).unwrap();
    drop(e);
    // SIGKILL before that commit: the spool reopens with 42 as its next seq, the lines are
    // read again, and the alert comes again.
    let mut e = AlertEngine::open(&cfg, dir.path(), 42).unwrap();
    let again = feed(&mut e, &burst[5..]);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].record.json, raised[0].record.json);
    e.spooled(&again[0], 42);
    e.save(41).unwrap();
    drop(e);
    // This time the commit made it (the spool goes on at 43): never raised twice.
    let mut e = AlertEngine::open(&cfg, dir.path(), 43).unwrap();
    assert!(
        feed(&mut e, &burst).is_empty(),
        "spooled: never raised twice"
    );
    e.save(43).unwrap();
    drop(e);
    let mut e = AlertEngine::open(&cfg, dir.path(), 44).unwrap();
    assert!(feed(&mut e, &burst).is_empty());
    let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
    assert!(
        text.starts_with("{\"format\":\"balp-agent-alerts-1\""),
        "{text}"
    );
}

#[test]
fn positions_may_catch_up_with_the_spool_only_as_far_as_the_windows_saw() {
    let dir = tempfile::tempdir().unwrap();
    let cfg: Config = toml::from_str("").unwrap();
    let mut e = AlertEngine::open(&cfg, dir.path(), 1).unwrap();
    assert_eq!(e.position_cap("auth", "k"), None, "no state yet: no limit");
    // The first save comes before any line: a crash right after still finds a state.
    e.save(0).unwrap();
    let e2 = AlertEngine::open(&cfg, dir.path(), 1).unwrap();
    assert_eq!(e2.position_cap("auth", "k"), Some(0));
    e.covered("auth", "k", 100);
    e.covered("auth", "k", 60);
    e.dirty = true;
    e.save(0).unwrap();
    drop(e2);
    let e = AlertEngine::open(&cfg, dir.path(), 1).unwrap();
    assert_eq!(e.position_cap("auth", "k"), Some(100));
    assert_eq!(
        e.position_cap("auth", "other"),
        Some(0),
        "unseen streams are read again"
    );
    let only_silent: Config =
        toml::from_str("[[alerts]]\nrule = \"failed-login-burst\"\nenabled = false\n[[alerts]]\nrule = \"success-after-failures\"\nenabled = false\n[[alerts]]\nrule = \"many-patients\"\nenabled = false\n").unwrap();
    let e = AlertEngine::open(&only_silent, dir.path(), 1).unwrap();
    assert_eq!(e.position_cap("auth", "k"), None, "no window to keep whole");
}

#[test]
fn keys_are_capped_and_expired() {
    let mut e = engine("[[alerts]]\nrule = \"failed-login-burst\"\nmax_keys = 100\n");
    let mut s = Script::new();
    for i in 0..5000 {
        e.observe(&s.fail(
            i,
            &format!("u{i}"),
            &format!("10.0.{}.{}", i / 256, i % 256),
        ));
    }
    let r = e
        .rules
        .iter()
        .find(|r| r.rule.name == "failed-login-burst")
        .unwrap();
    assert!(r.keys.len() <= 100, "{}", r.keys.len());
    // All but the last two minutes' keys have expired by now.
    let s2 = e
        .rules
        .iter()
        .find(|r| r.rule.name == "success-after-failures")
        .unwrap();
    assert!(
        s2.keys.len() <= 2 * (600 + SWEEP_EVERY as usize),
        "{}",
        s2.keys.len()
    );
}

#[test]
fn a_busy_benign_day_raises_nothing() {
    let mut e = engine("");
    let mut s = Script::new();
    let mut rng = fastrand::Rng::with_seed(18);
    let mut raised = 0;
    // 100 000 events over 10 hours: 200 clinicians each reading a few of their 40 patients,
    // logging in (now and then after one or two typos), and 5 service accounts' failures.
    for i in 0..100_000i64 {
        let t = i * 36 / 100;
        let u = rng.usize(0..200);
        let user = format!("clin{u}");
        let addr = format!("10.20.{}.{}", u / 100, u % 100);
        let fact = match rng.u8(0..100) {
            0..=1 => s.fail(t, &user, &addr),
            2..=4 => s.fact(FactKind::LoginSuccess, t, Some(&user), Some(&addr), None),
            5..=9 => s.fact(FactKind::Query, t, Some(&user), Some(&addr), None),
            _ => {
                let p = format!("p{}", u * 40 + rng.usize(0..40));
                s.read(t, &user, &p)
            }
        };
        raised += e.observe(&fact).len();
    }
    assert_eq!(raised, 0, "{:?}", e.raised());
}

fn processor(parsers: &str, decode: &str) -> SourceProcessor {
    let text = format!(
        "[agent]\nhostname = \"h\"\n[[sources]]\nname = \"s\"\ntype = \"file\"\n\
         include = [\"/x\"]\ndecode = \"{decode}\"\nparsers = [\"{parsers}\"]\n"
    );
    let cfg: Config = toml::from_str(&text).unwrap();
    SourceProcessor::build(&cfg, &cfg.sources[0]).unwrap()
}

fn facts_of(p: &mut SourceProcessor, text: &str) -> Vec<AlertFact> {
    let line = LogLine {
        stream: Arc::new(StreamId {
            source: Arc::from("s"),
            key: "k".into(),
            path: "/x".into(),
        }),
        offset: 0,
        end: text.len() as u64 + 1,
        text: text.into(),
        flags: Default::default(),
    };
    let mut facts = Vec::new();
    let events = p.process_facts(&line, Timestamp::now(), Some(&mut facts));
    assert_eq!(events.len(), facts.len());
    for (e, f) in events.iter().zip(&facts) {
        assert_eq!(e.id, f.event_id);
    }
    facts
}

#[test]
fn facts_come_from_the_mapped_events() {
    let mut sshd = processor("sshd", "syslog");
    let f = facts_of(
        &mut sshd,
        "2026-11-25T15:22:50.1+00:00 h sshd[1]: Failed password for invalid user admin from 203.0.113.9 port 4242 ssh2",
    );
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].kind, FactKind::LoginFailure);
    assert_eq!(f[0].user.as_deref(), Some("admin"));
    assert_eq!(f[0].address.as_deref(), Some("203.0.113.9"));
    assert_eq!(f[0].time.to_string(), "2026-11-25T15:22:50.1Z");
    let f = facts_of(
        &mut sshd,
        "2026-11-25T15:22:44.172367+00:00 h sshd[2]: Accepted password for alice from 127.0.0.1 port 55224 ssh2",
    );
    assert_eq!(f[0].kind, FactKind::LoginSuccess);

    let mut fhir = processor("fhir_access", "raw");
    let f = facts_of(
        &mut fhir,
        r#"10.1.2.3 - - [25/Nov/2026:15:25:33 +0000] "GET /fhir/Patient/123 HTTP/1.1" 200 40 "-" "curl/7.88.1" user="dr.smith" xff="-" rid="r1" rt=0.001"#,
    );
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].kind, FactKind::Read);
    assert_eq!(f[0].user.as_deref(), Some("dr.smith"));
    assert_eq!(f[0].patient.as_deref(), Some("123"));
    assert_eq!(f[0].address.as_deref(), Some("10.1.2.3"));
    let f = facts_of(
        &mut fhir,
        r#"10.1.2.3 - - [25/Nov/2026:15:25:34 +0000] "GET /fhir/Observation?patient=77 HTTP/1.1" 200 40 "-" "curl/7.88.1" user="dr.smith" xff="-" rid="r2" rt=0.001"#,
    );
    assert_eq!(f[0].kind, FactKind::Query);
    assert_eq!(f[0].patient.as_deref(), Some("77"));
}

#[test]
fn metrics_count_alerts_per_rule_from_zero() {
    let mut e = engine(
        "[[alerts]]\nrule = \"failed-login-burst\"\nname = \"probe-burst\"\nthreshold = 2\n\
         [[alerts]]\nrule = \"watchlist\"\nname = \"probe-quiet\"\nusers = [\"nobody\"]\n",
    );
    let page = || {
        crate::metrics::render(
            &crate::metrics::Health::default(),
            std::time::Instant::now(),
        )
    };
    assert!(page().contains("balp_agent_alerts_total{rule=\"probe-quiet\"} 0\n"));
    let mut s = Script::new();
    let raised = feed(
        &mut e,
        &[s.fail(0, "x", "192.0.2.7"), s.fail(1, "x", "192.0.2.7")],
    );
    assert_eq!(raised.len(), 1);
    let text = page();
    assert!(
        text.contains("balp_agent_alerts_total{rule=\"probe-burst\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("balp_agent_alerts_total{rule=\"probe-quiet\"} 0\n"));
}

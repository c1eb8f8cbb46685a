//! Discrepancy alerts through the real binary (docs/alerts.md): a scenario with known truth
//! raises exactly the expected alerts at the ARR; a SIGKILL in the middle of a burst loses
//! no window and raises the alert once, with its deterministic id; a silent source raises
//! once per silence; a benign background of 100 000 events raises none.

mod common;

use common::agent::{Agent, append, assert_conformant, run, wait_until, write_config};
use common::arr::{Arr, is_agent_alert};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// 2026-11-25 (a Wednesday), `hh:mm:ss` UTC, as the Debian rsyslog stamp.
fn syslog_at(secs: u32) -> String {
    format!(
        "2026-11-25T{:02}:{:02}:{:02}.000000+00:00",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn failed(secs: u32, user: &str, addr: &str, pid: u32) -> String {
    format!(
        "{} fhir-app01 sshd[{pid}]: Failed password for {user} from {addr} port {} ssh2",
        syslog_at(secs),
        40000 + pid % 20000
    )
}

fn accepted(secs: u32, user: &str, addr: &str, pid: u32) -> String {
    format!(
        "{} fhir-app01 sshd[{pid}]: Accepted password for {user} from {addr} port {} ssh2",
        syslog_at(secs),
        40000 + pid % 20000
    )
}

/// An nginx `fhir_audit` line, as in tests/common/agent.rs `fhir_lines`.
fn fhir(secs: u32, user: &str, path: &str, rid: &str) -> String {
    format!(
        r#"10.1.2.3 - - [25/Nov/2026:{:02}:{:02}:{:02} +0000] "GET /fhir/{path} HTTP/1.1" 200 40 "-" "curl/7.88.1" user="{user}" xff="-" rid="{rid}" rt=0.001"#,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn config(dir: &Path, arr: &Arr, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "fhir-app01"
[[sources]]
name = "auth"
type = "file"
include = ["auth.log"]
read_from = "beginning"
decode = "syslog"
parsers = ["sshd"]
poll_interval = "50ms"
[[sources]]
name = "fhir"
type = "file"
include = ["fhir.log"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
poll_interval = "50ms"
[output]
type = "http"
url = "{url}"
bundle_type = "transaction"
max_events = 100
flush_interval = "100ms"
[output.retry]
initial_backoff = "50ms"
max_backoff = "200ms"
{extra}
"#,
            url = arr.url()
        ),
    )
}

/// Distinct alerts by id (redeliveries of one alert are one).
fn alerts_by_id(arr: &Arr) -> BTreeMap<String, serde_json::Value> {
    arr.accepted_alerts()
        .into_iter()
        .map(|a| (a["id"].as_str().unwrap_or_default().to_owned(), a))
        .collect()
}

fn rule(alert: &serde_json::Value) -> String {
    alert["subtype"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|c| c["system"] == "urn:balp-agent:alert-rule")
        })
        .and_then(|c| c["code"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn refs(alert: &serde_json::Value) -> Vec<String> {
    alert["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["what"]["reference"].as_str())
        .filter_map(|r| r.strip_prefix("AuditEvent/"))
        .map(str::to_owned)
        .collect()
}

/// Every event the ARR accepted (lines' events and alerts), by id.
fn all_by_id(arr: &Arr) -> BTreeMap<String, serde_json::Value> {
    arr.accepted_bundles()
        .iter()
        .flat_map(|b| b["entry"].as_array().cloned().unwrap_or_default())
        .map(|e| e["resource"].clone())
        .map(|r| (r["id"].as_str().unwrap_or_default().to_owned(), r))
        .collect()
}

#[test]
fn a_scenario_with_known_truth_raises_exactly_the_expected_alerts_at_the_arr() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let cfg = config(
        dir.path(),
        &arr,
        r#"
[[alerts]]
rule = "off-hours"
timezone = "UTC"
[[alerts]]
rule = "watchlist"
patients = ["vip-7"]
[[alerts]]
rule = "silent-source"
silent_after = "1s"
"#,
    );
    let mut auth = Vec::new();
    let mut pid = 1000;
    let mut next = || {
        pid += 1;
        pid
    };
    // 10:00 — a brute force: 12 failures for root from one address in 24 s.
    for i in 0..12 {
        auth.push(failed(36_000 + i * 2, "root", "203.0.113.50", next()));
    }
    // 10:30 — alice mistypes five times, then gets in from the same address.
    for i in 0..5 {
        auth.push(failed(37_800 + i * 20, "alice", "198.51.100.23", next()));
    }
    auth.push(accepted(37_800 + 120, "alice", "198.51.100.23", next()));
    // Benign logins through the day; bob's two typos before his login are no incident.
    for i in 0..40 {
        auth.push(accepted(
            39_000 + i * 300,
            &format!("clin{i}"),
            "10.20.0.5",
            next(),
        ));
    }
    auth.push(failed(40_000, "bob", "10.20.0.9", next()));
    auth.push(failed(40_010, "bob", "10.20.0.9", next()));
    auth.push(accepted(40_020, "bob", "10.20.0.9", next()));
    append(&dir.path().join("auth.log"), &auth);

    let mut web = Vec::new();
    // 11:00 — dr.snoop opens 60 distinct charts in 30 minutes.
    for i in 0..60 {
        web.push(fhir(
            39_600 + i * 30,
            "dr.snoop",
            &format!("Patient/s{i}"),
            &format!("snoop{i}"),
        ));
    }
    // Ward doctors read a few of their own patients, repeatedly.
    for d in 0..10 {
        for i in 0..30 {
            let p = format!("Patient/w{d}-{}", i % 12);
            web.push(fhir(
                43_200 + d * 60 + i * 10,
                &format!("dr.ward{d}"),
                &p,
                &format!("w{d}-{i}"),
            ));
        }
    }
    // 13:00 — a VIP chart, read twice by dr.ward3 (one incident).
    web.push(fhir(46_800, "dr.ward3", "Patient/vip-7", "vip1"));
    web.push(fhir(46_900, "dr.ward3", "Patient/vip-7", "vip2"));
    // 23:10 — a read at night.
    web.push(fhir(83_400, "dr.night", "Patient/n1", "night1"));
    append(&dir.path().join("fhir.log"), &web);

    let out = run(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let alerts = alerts_by_id(&arr);
    let mut by_rule: BTreeMap<String, Vec<&serde_json::Value>> = BTreeMap::new();
    for a in alerts.values() {
        by_rule.entry(rule(a)).or_default().push(a);
    }
    let counts: BTreeMap<&str, usize> =
        by_rule.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("failed-login-burst", 1),
            ("many-patients", 1),
            ("off-hours", 1),
            ("success-after-failures", 1),
            ("watchlist", 1),
        ]),
        "no silent-source alert in a --once run"
    );
    let events = all_by_id(&arr);
    let expect_desc = [
        (
            "failed-login-burst",
            "8 failed logins for user \"root\" within 2m; 8 failed logins for address 203.0.113.50 within 2m",
            8,
        ),
        (
            "success-after-failures",
            "successful login for user \"alice\" after 5 failed logins within 10m; successful login for address 198.51.100.23 after 5 failed logins within 10m",
            6,
        ),
        (
            "many-patients",
            "user \"dr.snoop\" accessed 50 distinct patients within 1h",
            50,
        ),
        (
            "watchlist",
            "read involving watched patient \"vip-7\" by user \"dr.ward3\"",
            1,
        ),
        (
            "off-hours",
            "read by user \"dr.night\" outside working hours at 2026-11-25T23:10:00Z",
            1,
        ),
    ];
    for (r, desc, n) in expect_desc {
        let a = by_rule[r][0];
        assert_eq!(a["outcomeDesc"], desc, "{a}");
        let ids = refs(a);
        assert_eq!(ids.len(), n, "{r}: triggering events");
        for id in &ids {
            assert!(events.contains_key(id), "{r}: {id} is not at the ARR");
            assert!(!is_agent_alert(&events[id]));
        }
        // The alert id is derived from rule, key and the first triggering event.
        let key = a["entity"][0]["detail"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["type"] == "key")
            .and_then(|d| d["valueString"].as_str())
            .unwrap()
            .to_owned();
        assert_eq!(
            a["id"],
            balp_agent::alert::alert_id(r, &key, &ids[0]).to_string()
        );
    }
    let all: Vec<serde_json::Value> = alerts.values().cloned().collect();
    assert_conformant(&all);
}

fn burst_config(dir: &Path, arr: &Arr) -> PathBuf {
    config(dir, arr, "")
}

/// The one failed-login-burst alert's id at the ARR must be what its first event says.
fn the_one_burst_alert(arr: &Arr) -> serde_json::Value {
    let alerts = alerts_by_id(arr);
    assert_eq!(alerts.len(), 1, "exactly one alert: {:?}", alerts.keys());
    let a = alerts.into_values().next().unwrap();
    assert_eq!(rule(&a), "failed-login-burst");
    let ids = refs(&a);
    assert_eq!(ids.len(), 8);
    assert_eq!(
        a["id"],
        balp_agent::alert::alert_id(
            "failed-login-burst",
            "user:root address:203.0.113.50",
            &ids[0]
        )
        .to_string()
    );
    a
}

#[test]
fn a_sigkill_in_the_middle_of_a_burst_loses_no_window_and_raises_the_alert_once() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let cfg = burst_config(dir.path(), &arr);
    let log = dir.path().join("auth.log");
    let lines: Vec<String> = (0..8)
        .map(|i| failed(36_000 + i * 3, "root", "203.0.113.50", 2000 + i))
        .collect();
    append(&log, &lines[..5]);
    let mut agent = Agent::start(&cfg, &[]);
    assert!(
        arr.wait_for_events(5, Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    // The window reaches the disk with (before) the positions that skip its lines.
    let state = dir.path().join("state/alerts.json");
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&state)
            .is_ok_and(
                |t| t.contains("\"address:203.0.113.50\"") && t.contains("\"user:root\"")
            )),
        "{}",
        agent.log()
    );
    agent.signal("KILL");
    agent.wait(Duration::from_secs(10));
    assert!(arr.accepted_alerts().is_empty());

    // Only three more failures after the restart: the alert needs the five from before.
    append(&log, &lines[5..]);
    let mut agent = Agent::start(&cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || !arr
            .accepted_alerts()
            .is_empty()),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    let a = the_one_burst_alert(&arr);
    let events = all_by_id(&arr);
    let mut times: Vec<&str> = refs(&a)
        .iter()
        .map(|id| events[id]["recorded"].as_str().unwrap())
        .collect();
    times.dedup();
    assert_eq!(
        times.len(),
        8,
        "all eight failures, the five before the kill included"
    );
}

#[test]
fn a_sigkill_right_after_the_completing_line_raises_the_alert_once_with_its_id() {
    // The kill lands before, during or after the commit that holds the alert: each way the
    // ARR ends up with one alert, with the id its first event gives.
    for (round, delay_ms) in [0u64, 40, 150, 400].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let arr = Arr::start();
        let cfg = burst_config(dir.path(), &arr);
        let log = dir.path().join("auth.log");
        let base = round as u32 * 100;
        let lines: Vec<String> = (0..8)
            .map(|i| failed(36_000 + i, "root", "203.0.113.50", 3000 + base + i))
            .collect();
        append(&log, &lines[..7]);
        let agent = Agent::start(&cfg, &[]);
        assert!(
            arr.wait_for_events(7, Duration::from_secs(20)),
            "{}",
            agent.log()
        );
        append(&log, &lines[7..]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        agent.signal("KILL");
        drop(agent);
        let mut agent = Agent::start(&cfg, &[]);
        assert!(
            wait_until(Duration::from_secs(20), || !arr
                .accepted_alerts()
                .is_empty()),
            "round {round}: {}\nalerts.json: {}\npositions.json: {}",
            agent.log(),
            std::fs::read_to_string(dir.path().join("state/alerts.json")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("state/positions.json")).unwrap_or_default()
        );
        // SIGTERM only once the agent handles it (the alert may have been there already).
        assert!(wait_until(Duration::from_secs(20), || agent
            .log()
            .contains("balp-agent running")));
        let status = agent.stop();
        assert!(status.success(), "round {round}: {}", agent.log());
        // A restart after a clean stop raises nothing more.
        let mut agent = Agent::start(&cfg, &[]);
        assert!(wait_until(Duration::from_secs(20), || agent
            .log()
            .contains("balp-agent running")));
        std::thread::sleep(Duration::from_millis(500));
        assert!(agent.stop().success());
        the_one_burst_alert(&arr);
    }
}

#[test]
fn a_source_gone_silent_raises_one_alert_per_silence() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let cfg = config(
        dir.path(),
        &arr,
        "[[alerts]]\nrule = \"silent-source\"\nsilent_after = \"2s\"\nsources = \"auth\"\n",
    );
    let log = dir.path().join("auth.log");
    append(&log, &[accepted(36_000, "alice", "10.0.0.1", 10)]);
    let mut agent = Agent::start(&cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || alerts_by_id(&arr).len() == 1),
        "{}",
        agent.log()
    );
    let first = alerts_by_id(&arr).into_values().next().unwrap();
    assert_eq!(rule(&first), "silent-source");
    assert_eq!(first["subtype"][0]["code"], "110133");
    assert!(
        first["outcomeDesc"]
            .as_str()
            .unwrap()
            .starts_with("source \"auth\" has produced no line for 2s")
    );
    // Still silent: no second alert.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alerts_by_id(&arr).len(), 1);
    // A line ends the silence; the next silence is a new alert.
    append(&log, &[accepted(36_100, "alice", "10.0.0.1", 11)]);
    assert!(
        wait_until(Duration::from_secs(20), || alerts_by_id(&arr).len() == 2),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    // The fhir source never produced a line: not silent, only absent.
    assert!(
        alerts_by_id(&arr)
            .values()
            .all(|a| a["outcomeDesc"].as_str().unwrap().contains("\"auth\""))
    );
    assert_conformant(&alerts_by_id(&arr).into_values().collect::<Vec<_>>());
}

#[test]
fn a_benign_background_of_100k_events_raises_no_alert() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let cfg = config(
        dir.path(),
        &arr,
        "[[alerts]]\nrule = \"off-hours\"\ntimezone = \"UTC\"\nhours = \"06:00-22:00\"\n",
    );
    let mut rng = fastrand::Rng::with_seed(18);
    // 20 000 sshd lines and 80 000 FHIR reads over a working day (07:00–19:00): 300 users
    // taking turns to log in (about every 10 minutes each, one in five after a typo) and
    // reading their own panel of 40 patients. By construction no user fails more than once
    // per turn or sees more than 40 patients: the truth is "no alert".
    let mut auth = Vec::new();
    let mut pid = 1;
    let mut turn = 0u32;
    while auth.len() < 20_000 {
        let t = 25_200 + (auth.len() as u32 * 43_200 / 20_000);
        let u = turn % 300;
        turn += 1;
        let (user, addr) = (format!("clin{u}"), format!("10.20.{}.{}", u / 200, u % 200));
        if rng.u8(0..5) == 0 {
            pid += 1;
            auth.push(failed(t, &user, &addr, pid));
        }
        pid += 1;
        auth.push(accepted(t, &user, &addr, pid));
    }
    let auth_path = dir.path().join("bg-auth.log");
    append(&auth_path, &auth);
    let web: Vec<String> = (0..80_000u32)
        .map(|i| {
            let t = 25_200 + i * 43_200 / 80_000;
            let u = rng.u32(0..300);
            let p = u * 40 + rng.u32(0..40);
            fhir(
                t,
                &format!("clin{u}"),
                &format!("Patient/{p}"),
                &format!("bg{i}"),
            )
        })
        .collect();
    let web_path = dir.path().join("bg-fhir.log");
    append(&web_path, &web);
    let mut total = 0;
    for (source, path, n) in [
        ("auth", &auth_path, auth.len()),
        ("fhir", &web_path, web.len()),
    ] {
        let out = run(&[
            "test",
            "-c",
            cfg.to_str().unwrap(),
            "--source",
            source,
            path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let raised: Vec<&str> = stdout
            .lines()
            .filter(|l| l.contains("urn:balp-agent:alert-rule"))
            .collect();
        assert!(
            stderr.contains("\nalerts: 0\n"),
            "{source}: {stderr}\n{}",
            raised.join("\n")
        );
        let lines = stdout.lines().count();
        assert_eq!(lines, n, "{source}: one event per line and nothing else");
        assert!(!stdout.contains("urn:balp-agent:alert-rule"));
        total += lines;
    }
    assert_eq!(total, 100_000);
    let ids: BTreeSet<String> = arr.accepted_event_ids().into_iter().collect();
    assert!(ids.is_empty(), "balp-agent test delivers nothing");
}

#[test]
fn balp_agent_test_prints_each_alert_after_the_events_that_raised_it() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let cfg = config(dir.path(), &arr, "");
    let lines: Vec<String> = (0..9)
        .map(|i| failed(36_000 + i, "root", "203.0.113.50", 100 + i))
        .collect();
    let path = dir.path().join("burst.log");
    append(&path, &lines);
    let out = run(&[
        "test",
        "-c",
        cfg.to_str().unwrap(),
        "--source",
        "auth",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kinds: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| v["type"]["code"].as_str().unwrap().to_owned())
        .collect();
    let mut expect = vec!["110114".to_owned(); 8];
    expect.push("110113".into());
    expect.push("110114".into());
    assert_eq!(kinds, expect, "the alert right after the eighth failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\nalerts: 1\n"), "{stderr}");
    assert!(
        stderr.contains("alert rule failed-login-burst: raised 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("alert rule many-patients: raised 0"),
        "{stderr}"
    );
}

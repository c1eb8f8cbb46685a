//! `balp-agent run` end to end: real files, the real binary, a local ARR on 127.0.0.1.

mod common;

use common::agent::{
    Agent, append, assert_conformant, events_in_dir, fhir_lines, wait_until, write_config,
};
use common::arr::{Arr, Reply};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

fn http_config(
    dir: &Path,
    log_glob: &str,
    arr: &Arr,
    max_events: usize,
    flush: &str,
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
include = ["{log_glob}"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
poll_interval = "50ms"
[output]
type = "http"
url = "{url}"
max_events = {max_events}
flush_interval = "{flush}"
timeout = "2s"
[output.retry]
initial_backoff = "50ms"
max_backoff = "200ms"
"#,
            url = arr.url()
        ),
    )
}

fn ids(arr: &Arr) -> Vec<String> {
    arr.accepted_event_ids()
}

fn assert_no_loss_no_dup(arr: &Arr, expected: usize) {
    let ids = ids(arr);
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), expected, "distinct events");
    assert_eq!(ids.len(), expected, "duplicates after a clean stop");
}

#[test]
fn run_once_on_example_config_writes_bundles_to_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The example config uses paths relative to its own directory: copy it with the samples.
    std::fs::create_dir_all(dir.path().join("examples/logs")).unwrap();
    for f in ["auth.log", "fhir-access.log"] {
        std::fs::copy(
            root.join("examples/logs").join(f),
            dir.path().join("examples/logs").join(f),
        )
        .unwrap();
    }
    let cfg = dir.path().join("config.toml");
    std::fs::copy(root.join("config.example.toml"), &cfg).unwrap();
    let mut agent = Agent::start(&cfg, &["--once"]);
    let status = agent
        .wait(Duration::from_secs(30))
        .expect("run --once ends by itself");
    assert!(status.success(), "{}", agent.log());
    let events = events_in_dir(&dir.path().join("out"));
    // 7 sshd events + 11 FHIR REST events (see tests/cli.rs for the count by kind).
    assert_eq!(events.len(), 18, "{}", agent.log());
    assert_conformant(&events);
    assert!(dir.path().join("state/positions.json").exists());
    // SPEC §1: state files 0600, directories 0700.
    fn walk(p: &Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
        use std::os::unix::fs::PermissionsExt;
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            out.push((e.path(), mode));
            if e.path().is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let mut modes = Vec::new();
    walk(&dir.path().join("state"), &mut modes);
    for (path, mode) in &modes {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{}", path.display());
    }
    // The agent audited its own start and stop (DCM 110100 / 110120, 110121).
    let own: Vec<_> = common::agent::all_events_in_dir(&dir.path().join("out"))
        .into_iter()
        .filter(|e| e["type"]["code"] == "110100" && e["subtype"][0]["code"] != "seal")
        .collect();
    assert_eq!(own.len(), 2, "start and stop");
    assert_eq!(own[0]["subtype"][0]["code"], "110120");
    assert_eq!(own[1]["subtype"][0]["code"], "110121");
    assert_conformant(&own);
    // A second run finds nothing new: positions were saved.
    let mut again = Agent::start(&cfg, &["--once"]);
    assert!(again.wait(Duration::from_secs(30)).expect("ends").success());
    assert_eq!(events_in_dir(&dir.path().join("out")).len(), 18);
}

#[test]
fn restart_resumes_with_no_loss_and_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, 100));
    let cfg = http_config(dir.path(), log.to_str().unwrap(), &arr, 50, "100ms");
    let mut agent = Agent::start(&cfg, &[]);
    assert!(
        arr.wait_for_events(100, Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success(), "{}", agent.log());
    // Written while the agent is down.
    append(&log, &fhir_lines(100, 50));
    let mut agent = Agent::start(&cfg, &[]);
    append(&log, &fhir_lines(150, 50));
    assert!(
        arr.wait_for_events(200, Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    assert_no_loss_no_dup(&arr, 200);
    assert_conformant(
        &arr.accepted_bundles()
            .iter()
            .flat_map(|b| b["entry"].as_array().cloned().unwrap_or_default())
            .map(|e| e["resource"].clone())
            .collect::<Vec<_>>(),
    );
}

#[test]
fn rename_rotation_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, 30));
    let cfg = http_config(dir.path(), log.to_str().unwrap(), &arr, 50, "100ms");
    let mut agent = Agent::start(&cfg, &[]);
    assert!(
        arr.wait_for_events(30, Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    // logrotate `create`: rename, then a writer that still holds the old file adds more,
    // then a new file appears at the path.
    let mut old = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::rename(&log, dir.path().join("access.log.1")).unwrap();
    for l in fhir_lines(30, 20) {
        use std::io::Write;
        writeln!(old, "{l}").unwrap();
    }
    drop(old);
    append(&log, &fhir_lines(50, 30));
    assert!(
        arr.wait_for_events(80, Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    assert_no_loss_no_dup(&arr, 80);
}

#[test]
fn arr_503_then_recovery_delivers_everything_with_a_stable_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    arr.script([
        Reply::Status(503),
        Reply::Status(503),
        Reply::StatusWithRetryAfter(429, "0".into()),
    ]);
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, 10));
    let cfg = http_config(dir.path(), log.to_str().unwrap(), &arr, 500, "300ms");
    let mut agent = Agent::start(&cfg, &[]);
    assert!(
        arr.wait_for_events(10, Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    let reqs = arr.requests();
    assert!(reqs.len() >= 4, "three failures then success");
    let first_id = reqs[0].header("x-request-id").map(str::to_owned);
    assert!(first_id.is_some());
    assert!(
        reqs[..4]
            .iter()
            .all(|r| r.header("x-request-id").map(str::to_owned) == first_id)
    );
    assert_eq!(
        reqs[0].header("content-type"),
        Some("application/fhir+json")
    );
    assert_no_loss_no_dup(&arr, 10);
}

#[test]
fn arr_400_dead_letters_only_the_poison_event_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    // The ARR rejects any Bundle holding the event of request id req00000002.
    arr.set_default(Reply::RejectEntries(400, "req00000002".into()));
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, 5));
    let cfg = http_config(dir.path(), log.to_str().unwrap(), &arr, 50, "100ms");
    let mut agent = Agent::start(&cfg, &[]);
    let dead = dir.path().join("state/dead-letter");
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_dir(&dead)
            .map(|d| d.count() > 0)
            .unwrap_or(false)),
        "{}",
        agent.log()
    );
    append(&log, &fhir_lines(5, 5));
    assert!(
        arr.wait_for_events(9, Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    let letters: Vec<_> = std::fs::read_dir(&dead).unwrap().collect();
    assert_eq!(letters.len(), 1, "only the poison event");
    let letter = letters[0].as_ref().unwrap().path();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(letter).unwrap()).unwrap();
    assert_eq!(v["status"], 400);
    let entries = v["bundle"]["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].to_string().contains("req00000002"));
    assert_eq!(arr.accepted_event_ids().len(), 9);
    assert!(agent.log().contains("dead-lettered"));
}

#[test]
fn sigterm_flushes_the_partial_bundle_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, 7));
    // Nothing would be sent for an hour without the drain on SIGTERM.
    let cfg = http_config(dir.path(), log.to_str().unwrap(), &arr, 10000, "1h");
    let mut agent = Agent::start(&cfg, &[]);
    std::thread::sleep(Duration::from_millis(800));
    assert!(arr.accepted_event_ids().is_empty());
    let status = agent.stop();
    assert!(status.success(), "{}", agent.log());
    assert_no_loss_no_dup(&arr, 7);
}

#[test]
fn sigkill_mid_stream_then_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, 3000));
    let cfg = http_config(dir.path(), log.to_str().unwrap(), &arr, 100, "50ms");
    for cycle in 0..3 {
        let agent = Agent::start(&cfg, &[]);
        let target = (cycle + 1) * 500;
        wait_until(Duration::from_secs(20), || {
            arr.accepted_event_ids().len() >= target
        });
        agent.signal("KILL");
        drop(agent);
        append(&log, &fhir_lines(3000 + cycle * 100, 100));
    }
    let mut agent = Agent::start(&cfg, &[]);
    let all = 3300;
    assert!(
        wait_until(Duration::from_secs(30), || arr
            .accepted_event_ids()
            .iter()
            .collect::<BTreeSet<_>>()
            .len()
            >= all),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    // At least once: every event arrived; a duplicate is the very same event (same id, same body).
    let mut seen = std::collections::BTreeMap::new();
    for b in arr.accepted_bundles() {
        for e in b["entry"].as_array().cloned().unwrap_or_default() {
            if common::arr::is_self_audit(&e["resource"])
                || common::arr::is_agent_alert(&e["resource"])
            {
                continue;
            }
            let id = e["resource"]["id"].as_str().unwrap_or_default().to_owned();
            if let Some(prev) = seen.insert(id.clone(), e["resource"].clone()) {
                assert_eq!(prev, e["resource"], "duplicate {id} differs");
            }
        }
    }
    assert_eq!(seen.len(), all);
}

#[test]
fn sighup_reload_adds_a_source_and_an_invalid_config_keeps_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let a = dir.path().join("a.log");
    let b = dir.path().join("b.log");
    append(&a, &fhir_lines(0, 20));
    append(&b, &fhir_lines(1000, 10));
    let base = http_config(dir.path(), a.to_str().unwrap(), &arr, 50, "100ms");
    let original = std::fs::read_to_string(&base).unwrap();
    let mut agent = Agent::start(&base, &[]);
    assert!(
        arr.wait_for_events(20, Duration::from_secs(20)),
        "{}",
        agent.log()
    );

    // Add a second source and reload.
    let with_b = format!(
        "{original}\n[[sources]]\nname = \"second\"\ntype = \"file\"\ninclude = [\"{}\"]\nread_from = \"beginning\"\ndecode = \"raw\"\nparsers = [\"fhir_access\"]\npoll_interval = \"50ms\"\n",
        b.display()
    );
    std::fs::write(&base, &with_b).unwrap();
    agent.signal("HUP");
    append(&a, &fhir_lines(20, 5));
    assert!(
        arr.wait_for_events(35, Duration::from_secs(20)),
        "{}",
        agent.log()
    );

    // A broken config is refused with every problem logged; the running one goes on.
    std::fs::write(
        &base,
        with_b.replace("flush_interval = \"100ms\"", "flush_interval = \"soon\""),
    )
    .unwrap();
    agent.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("new configuration rejected")),
        "{}",
        agent.log()
    );
    append(&b, &fhir_lines(1010, 5));
    assert!(
        arr.wait_for_events(40, Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success(), "{}", agent.log());
    assert!(
        agent.log().contains("output.flush_interval"),
        "the problem is named: {}",
        agent.log()
    );

    // Nothing lost, nothing twice, and one start/stop pair for the whole run.
    assert_no_loss_no_dup(&arr, 40);
    let own = arr.accepted_self_events();
    assert_eq!(own.len(), 2, "reload is not a stop: {own:?}");
}

#[test]
fn max_in_flight_delivers_bundles_concurrently_and_acknowledges_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    // The first Bundle hangs until the client's timeout; the two others go through meanwhile.
    arr.script([Reply::Hang]);
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, 150));
    let cfg = http_config(dir.path(), log.to_str().unwrap(), &arr, 50, "100ms");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_events = 50", "max_events = 50\nmax_in_flight = 3");
    std::fs::write(&cfg, text).unwrap();
    let mut agent = Agent::start(&cfg, &["--once"]);
    let status = agent
        .wait(Duration::from_secs(30))
        .expect("run --once ends");
    assert!(status.success(), "{}", agent.log());
    let reqs = arr.requests();
    let hung = reqs[0].header("x-request-id").map(str::to_owned);
    // Other Bundles were accepted while the first one was still waiting for its answer.
    let retry_at = reqs
        .iter()
        .skip(1)
        .position(|r| r.header("x-request-id").map(str::to_owned) == hung);
    assert!(
        retry_at.is_some_and(|i| i >= 1),
        "requests: {:?}",
        reqs.iter()
            .map(|r| r.header("x-request-id"))
            .collect::<Vec<_>>()
    );
    assert_no_loss_no_dup(&arr, 150);
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[test]
fn running_agent_serves_metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, 12));
    append(&log, &["not an access log line".to_owned()]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = http_config(dir.path(), log.to_str().unwrap(), &arr, 50, "100ms");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{text}\n[metrics]\nlisten = \"{addr}\"\ndelivery_failure_threshold = \"1s\"\n"),
    )
    .unwrap();
    let mut agent = Agent::start(&cfg, &[]);
    assert!(
        arr.wait_for_events(12, Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    // Counters are read live; wait until the scrape shows the delivered Bundle.
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            body = http_get(&addr, "/metrics").1;
            body.contains("balp_agent_bundles_sent_total 1")
                || body.contains("balp_agent_bundles_sent_total 2")
        }),
        "{body}"
    );
    assert!(
        body.contains("# TYPE balp_agent_lines_read_total counter"),
        "{body}"
    );
    assert!(body.contains("balp_agent_lines_read_total 13"), "{body}");
    assert!(
        body.contains("balp_agent_events_total{pattern=\"rest\"} 12"),
        "{body}"
    );
    assert!(
        body.contains(
            "balp_agent_unmatched_lines_total{source=\"fhir\",parsers=\"fhir_access\"} 1"
        ),
        "{body}"
    );
    assert!(
        body.contains("balp_agent_delivery_latency_seconds_bucket"),
        "{body}"
    );
    let (status, health) = http_get(&addr, "/health");
    assert_eq!(status, 200, "{health}");
    // The ARR starts failing: past the threshold (1 s here) /health turns 503 with the reason.
    arr.set_default(Reply::Status(503));
    append(&log, &fhir_lines(100, 3));
    assert!(
        wait_until(Duration::from_secs(10), || http_get(&addr, "/metrics")
            .1
            .contains("balp_agent_bundles_failed_total 1")),
        "{}",
        agent.log()
    );
    let mut health = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (status, body) = http_get(&addr, "/health");
            health = body;
            status == 503
        }),
        "{health}"
    );
    assert!(health.contains("deliver"), "the reason is given: {health}");
    assert!(agent.stop().success());
}

#[test]
fn spool_status_answers_from_the_moment_the_agent_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let log = dir.path().join("access.log");
    // Enough lines to keep the agent busy reading while it is asked.
    append(&log, &fhir_lines(0, 50_000));
    let cfg = http_config(dir.path(), log.to_str().unwrap(), &arr, 10000, "1h");
    let mut agent = Agent::start(&cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("balp-agent running")),
        "{}",
        agent.log()
    );
    // The running agent holds the spool lock: the answer comes from its snapshot, which
    // must exist before the first 1 s tick.
    let out = common::agent::run(&["spool", "status", "-c", cfg.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "spool status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("running agent"), "{stdout}");
    assert!(agent.stop().success(), "{}", agent.log());
}

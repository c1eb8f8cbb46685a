//! A real MariaDB 10.11 + server_audit end to end (`tests/mariadb_e2e.sh`): throw-away server,
//! mariadb client workload, `balp-agent test` on the server_audit.log, exact event counts.
//! Skipped (with a note) when Debian's mariadb-server is not installed, unless `CI` is set.

mod common;

use common::agent::{Agent, write_config};
use common::arr::Arr;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `type/subtype/outcome` → count.
fn kinds<'a>(events: impl Iterator<Item = &'a serde_json::Value>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        let k = format!(
            "{}/{}/{}",
            e["type"]["code"].as_str().unwrap_or("-"),
            e["subtype"][0]["code"].as_str().unwrap_or("-"),
            e["outcome"].as_str().unwrap_or("-")
        );
        *m.entry(k).or_default() += 1;
    }
    m
}

#[test]
fn real_mariadb_with_server_audit_gives_exact_events() {
    if !Path::new("/usr/sbin/mariadbd").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but mariadb-server is not installed (see .ci/run)"
        );
        eprintln!(
            "note: skipping real_mariadb_with_server_audit_gives_exact_events: /usr/sbin/mariadbd missing (apt-get install mariadb-server)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mariadb_e2e.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_balp-agent"))
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mariadb_e2e.sh failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("mariadb_e2e: ok"), "{stdout}");

    // The same log, tailed by `balp-agent run` and delivered over HTTP to a local ARR: the ARR
    // receives exactly the events `balp-agent test` showed (checked above against the workload).
    let expected: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("mariadb.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert!(expected.len() > 20, "{} events", expected.len());
    let arr = Arr::start();
    let run_dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mariadb/server_audit.log");
    let cfg = write_config(
        run_dir.path(),
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "db01"
[[sources]]
name = "mariadb"
type = "file"
include = ["{log}"]
read_from = "beginning"
decode = "raw"
timezone = "UTC"
parsers = ["mariadb_audit"]
[output]
type = "http"
url = "{url}"
flush_interval = "100ms"
"#,
            log = log.display(),
            url = arr.url()
        ),
    );
    let mut agent = Agent::start(&cfg, &["--once"]);
    let status = agent
        .wait(Duration::from_secs(60))
        .expect("run --once ends");
    assert!(status.success(), "{}", agent.log());
    let got: Vec<serde_json::Value> = arr
        .accepted_bundles()
        .iter()
        .flat_map(|b| b["entry"].as_array().cloned().unwrap_or_default())
        .map(|e| e["resource"].clone())
        .filter(|r| !common::arr::is_self_audit(r))
        .collect();
    assert_eq!(kinds(got.iter()), kinds(expected.iter()));
    common::agent::assert_conformant(&got);
}

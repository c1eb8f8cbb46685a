//! Shared steps of the tests against real programs (PostgreSQL, MariaDB, journald, logrotate,
//! rsyslog): skip-or-fail when the program is missing, run a workload script, deliver its log
//! with `run --once` to a local ARR, compare event kinds.

use super::agent::{Agent, write_config};
use super::arr::{Arr, is_self_audit};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Whether a test needing a real program may run: `ready` says the program is there. Without
/// it the test is skipped with a note naming `what` is missing and how to get it, except when
/// `CI` is set: `.ci/run` installs everything, so a missing program is a failure there.
pub fn runnable(test: &str, ready: bool, what: &str) -> bool {
    if ready {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but {test} cannot run: {what} (see .ci/run)"
    );
    eprintln!("note: skipping {test}: {what}");
    false
}

/// `type/subtype/outcome` → count.
pub fn kinds<'a>(events: impl Iterator<Item = &'a serde_json::Value>) -> BTreeMap<String, usize> {
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

/// Run `tests/<name>.sh <agent binary> <temp dir>`, which asserts its own counts and prints
/// `<name>: ok`; the temp dir (with the script's logs and outputs) is returned.
pub fn run_script(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(format!("{name}.sh"));
    let out = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_balp-agent"))
        .arg(dir.path())
        .output()
        .expect("run the e2e script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name}.sh failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains(&format!("{name}: ok")), "{stdout}");
    dir
}

/// The events of an NDJSON file (`balp-agent test` output).
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("ndjson file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect()
}

/// `balp-agent run --once` with `source` (one `[[sources]]` table) delivering over HTTP to a
/// local ARR: the events the ARR accepted, the agent's own start/stop left out, each checked
/// by the BALP conformance checker.
pub fn deliver_once(source: &str) -> Vec<serde_json::Value> {
    let arr = Arr::start();
    let run_dir = tempfile::tempdir().expect("temp dir");
    let cfg = write_config(
        run_dir.path(),
        &format!(
            "[agent]\nstate_dir = \"state\"\nhostname = \"db01\"\n{source}\n[output]\ntype = \"http\"\nurl = \"{url}\"\nflush_interval = \"100ms\"\n",
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
        .filter(|r| !is_self_audit(r))
        .collect();
    super::agent::assert_conformant(&got);
    got
}

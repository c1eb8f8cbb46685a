//! A real MariaDB 10.11 + server_audit end to end (`tests/mariadb_e2e.sh`): throw-away server,
//! mariadb client workload, `balp-agent test` on the server_audit.log, exact event counts.
//! Skipped (with a note) when Debian's mariadb-server is not installed, unless `CI` is set.

mod common;

use common::e2e::{deliver_once, kinds, read_ndjson, run_script, runnable};
use std::path::Path;

#[test]
fn real_mariadb_with_server_audit_gives_exact_events() {
    if !runnable(
        "real_mariadb_with_server_audit_gives_exact_events",
        Path::new("/usr/sbin/mariadbd").exists(),
        "/usr/sbin/mariadbd missing (apt-get install mariadb-server)",
    ) {
        return;
    }
    let dir = run_script("mariadb_e2e");
    // The same log, tailed by `balp-agent run` and delivered over HTTP to a local ARR: the ARR
    // receives exactly the events `balp-agent test` showed (checked above against the workload).
    let expected = read_ndjson(&dir.path().join("mariadb.jsonl"));
    assert!(expected.len() > 20, "{} events", expected.len());
    let got = deliver_once(&format!(
        r#"
[[sources]]
name = "mariadb"
type = "file"
include = ["{log}"]
read_from = "beginning"
decode = "raw"
timezone = "UTC"
parsers = ["mariadb_audit"]
"#,
        log = dir.path().join("mariadb/server_audit.log").display(),
    ));
    assert_eq!(kinds(got.iter()), kinds(expected.iter()));
}

//! A real PostgreSQL 15 + pgaudit end to end (`tests/postgres_e2e.sh`): throw-away cluster,
//! psql workload (with a replication connection), `balp-agent test` on the stderr, csvlog and
//! jsonlog files, exact event counts.
//! Skipped (with a note) when Debian's postgresql-15 is not installed, unless `CI` is set.

mod common;

use common::e2e::{deliver_once, kinds, read_ndjson, run_script, runnable};
use std::path::Path;

#[test]
fn real_postgres_with_pgaudit_gives_exact_events() {
    if !runnable(
        "real_postgres_with_pgaudit_gives_exact_events",
        Path::new("/usr/lib/postgresql/15/bin/initdb").exists(),
        "/usr/lib/postgresql/15/bin/initdb missing (apt-get install postgresql-15 postgresql-15-pgaudit)",
    ) {
        return;
    }
    let dir = run_script("postgres_e2e");
    // The same log, tailed by `balp-agent run` and delivered over HTTP to a local ARR: the ARR
    // receives exactly the events `balp-agent test` showed (checked above against the workload).
    let expected = read_ndjson(&dir.path().join("pg.jsonl"));
    assert!(expected.len() > 20, "{} events", expected.len());
    let got = deliver_once(&format!(
        r#"
[[sources]]
name = "pg"
type = "file"
include = ["{log}"]
read_from = "beginning"
decode = "postgres"
multiline = "indented"
log_line_prefix = "%m [%p] %q%u@%d "
timezone = "Europe/Berlin"
parsers = ["postgres", "pgaudit"]
"#,
        log = dir.path().join("pg/log/postgresql").display(),
    ));
    assert_eq!(kinds(got.iter()), kinds(expected.iter()));
}

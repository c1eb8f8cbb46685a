//! A real PostgreSQL 15 + pgaudit end to end (`tests/postgres_e2e.sh`): throw-away cluster,
//! psql workload, `balp-agent test` on the stderr and csvlog files, exact event counts.
//! Skipped (with a note) when Debian's postgresql-15 is not installed, unless `CI` is set.

use std::path::Path;
use std::process::Command;

#[test]
fn real_postgres_with_pgaudit_gives_exact_events() {
    if !Path::new("/usr/lib/postgresql/15/bin/initdb").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but postgresql-15 is not installed (see .ci/run)"
        );
        eprintln!(
            "note: skipping real_postgres_with_pgaudit_gives_exact_events: /usr/lib/postgresql/15/bin/initdb missing (apt-get install postgresql-15 postgresql-15-pgaudit)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/postgres_e2e.sh");
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
        "postgres_e2e.sh failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("postgres_e2e: ok"), "{stdout}");
}

//! Every event the presets make from the real corpus validates as R4 with an independent model
//! (Python `fhir.resources`, R4B AuditEvent = R4's). CI installs it; elsewhere the test is
//! skipped with a note when Python or the package is missing.

mod common;

use common::agent::{corpus, run, write_config};
use std::process::Command;

fn have_validator() -> bool {
    Command::new("python3")
        .args(["-c", "import fhir.resources.R4B.auditevent"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn corpus_events_validate_with_fhir_resources() {
    if !common::e2e::runnable(
        "the FHIR R4 validation test",
        have_validator(),
        "python3 with fhir.resources is not installed (pip install \"fhir.resources==8.*\")",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        r#"
[agent]
state_dir = "state"
hostname = "fhir-app01"
mode = "comprehensive"
[[sources]]
name = "auth"
type = "file"
include = ["/nonexistent"]
decode = "syslog"
parsers = ["sshd"]
[[sources]]
name = "fhir"
type = "file"
include = ["/nonexistent"]
decode = "raw"
parsers = ["fhir_access"]
fhir_base = ["/fhir", "/basic/fhir"]
[output]
type = "stdout"
"#,
    );
    let inputs = [
        ("auth", "generated/debian12-rsyslog-auth/auth.log"),
        (
            "auth",
            "generated/debian12-rsyslog-auth/auth.traditional.log",
        ),
        ("auth", "loghub/OpenSSH_2k.log"),
        (
            "fhir",
            "generated/nginx1.22-apache2.4-fhir/nginx-access.log",
        ),
        (
            "fhir",
            "generated/nginx1.22-apache2.4-fhir/nginx-access-fhir_audit.log",
        ),
        (
            "fhir",
            "generated/nginx1.22-apache2.4-fhir/apache-access.log",
        ),
        (
            "fhir",
            "generated/nginx1.22-apache2.4-fhir/apache-access-fhir_audit.log",
        ),
    ];
    let ndjson = dir.path().join("events.ndjson");
    let mut all = String::new();
    for (source, file) in inputs {
        let out = run(&[
            "test",
            "-c",
            cfg.to_str().unwrap(),
            "--source",
            source,
            corpus(file).to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    assert!(all.lines().count() > 20);
    std::fs::write(&ndjson, &all).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fhir_validate.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&ndjson)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Tamper evidence end to end (docs/tamper.md): the real binary spools events into its
//! Merkle tree and seals it; `verify` names exactly the events deleted and altered at the
//! output (a directory of Bundles, and the real FHIR server); an inclusion proof from
//! `prove` checks out in Python (hashlib + cryptography, written from the docs, not from our
//! code); and SIGKILLs while sealing lose no leaf, repeat none, and leave the seals chained.

mod common;

use common::agent::{Agent, append, fhir_lines, run, wait_until, write_config};
use common::fhir_server::{FhirServer, missing};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn dir_config(dir: &Path, log: &Path, seal_interval: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "tamper-host"
[[sources]]
name = "fhir"
type = "file"
include = ["{}"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
poll_interval = "50ms"
[output]
type = "directory"
path = "out"
max_events = 25
flush_interval = "100ms"
[tamper]
seal_interval = "{seal_interval}"
# One user reading every patient would raise an alert: an event the counts here leave out.
[[alerts]]
rule = "many-patients"
enabled = false
"#,
            log.display()
        ),
    )
}

fn verify_json(cfg: &Path, from: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["verify", "-c", cfg.to_str().unwrap(), "--json"];
    args.extend_from_slice(from);
    let out = run(&args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// (kind, id) of every finding.
fn findings(report: &serde_json::Value) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    f.sort();
    f
}

fn bundle_files(out: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Leaf entries (seq, id, seal) of a leaf log, read as docs/tamper.md describes the format.
fn leaf_ids(state: &Path) -> Vec<(u64, String, bool)> {
    let b = std::fs::read(state.join("tamper/leaves")).unwrap();
    assert_eq!(&b[0..4], b"BLVS");
    b[16..]
        .chunks_exact(64)
        .map(|e| {
            let seq = u64::from_le_bytes(e[0..8].try_into().unwrap());
            let id = uuid::Uuid::from_slice(&e[8..24]).unwrap().to_string();
            (seq, id, e[56] == 1)
        })
        .collect()
}

/// An independent check of a proof, from docs/tamper.md only: canonical bytes of the event
/// (server meta dropped, JCS via sorted compact JSON, exact for AuditEvents: ASCII keys, no
/// floats), the RFC 9162 inclusion check, the fingerprint, the signed message's fields and
/// the Ed25519 signature.
const PYTHON_CHECK: &str = r#"
import base64, hashlib, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
proof = json.load(open(sys.argv[1]))
event = json.load(open(sys.argv[2]))
meta = {k: v for k, v in event.get("meta", {}).items() if k in ("profile", "security", "tag")}
event.pop("meta", None)
if meta:
    event["meta"] = meta
canon = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
h = lambda b: hashlib.sha256(b).digest()
leaf = h(b"\x00" + canon)
assert leaf.hex() == proof["leaf_hash"], "leaf hash"
fn, sn, r = proof["leaf_index"], proof["tree_size"] - 1, leaf
for p in map(bytes.fromhex, proof["audit_path"]):
    assert sn != 0
    if fn & 1 or fn == sn:
        r = h(b"\x01" + p + r)
        while fn & 1 == 0 and fn != 0:
            fn >>= 1; sn >>= 1
    else:
        r = h(b"\x01" + r + p)
    fn >>= 1; sn >>= 1
assert sn == 0, "path length"
seal = proof["seal"]
assert r.hex() == seal["root"], "root"
pub = bytes.fromhex(seal["public_key"])
assert h(pub).hex() == seal["key"], "fingerprint"
lines = seal["message"].split("\n")
assert lines[0] == "balp-agent tree seal v1"
fields = dict(l.split(": ", 1) for l in lines[1:] if l)
assert fields["root"] == seal["root"] and int(fields["tree_size"]) == proof["tree_size"]
assert fields["key"] == seal["key"]
Ed25519PublicKey.from_public_bytes(pub).verify(base64.b64decode(seal["signature"]), seal["message"].encode())
print("proof ok")
"#;

fn have_python_crypto() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn verify_from_dir_names_exactly_a_deleted_and_an_altered_event_and_a_proof_checks_in_python() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, 120));
    let cfg = dir_config(dir.path(), &log, "1h");
    let out = run(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = dir.path().join("state");
    let leaves = leaf_ids(&state);
    // Start, 120 lines, stop, and the seal at the stop, which covers all before it.
    assert_eq!(leaves.len(), 123);
    assert!(leaves[122].2 && leaves.iter().filter(|l| l.2).count() == 1);

    let outdir = dir.path().join("out");
    let (rc, report) = verify_json(&cfg, &["--from-dir", outdir.to_str().unwrap()]);
    assert_eq!((rc, findings(&report)), (0, vec![]), "{report}");
    assert_eq!(report["seals_ok"], 1);
    assert_eq!(report["sealed_size"], 122);

    // `key show` names the key the seal names.
    let shown = run(&["key", "show", "-c", cfg.to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    let fp = shown
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint (SHA-256 of the public key): "))
        .unwrap()
        .to_owned();

    // A proof of one event, checked by an independent implementation.
    let files = bundle_files(&outdir);
    let bundle: serde_json::Value = files
        .iter()
        .map(|f| serde_json::from_slice::<serde_json::Value>(&std::fs::read(f).unwrap()).unwrap())
        .max_by_key(|b| b["entry"].as_array().map_or(0, Vec::len))
        .unwrap();
    let event = bundle["entry"][2]["resource"].clone();
    let id = event["id"].as_str().unwrap();
    let proof_out = run(&["prove", "-c", cfg.to_str().unwrap(), id]);
    assert!(
        proof_out.status.success(),
        "{}",
        String::from_utf8_lossy(&proof_out.stderr)
    );
    let proof: serde_json::Value = serde_json::from_slice(&proof_out.stdout).unwrap();
    assert_eq!(proof["event_id"], id);
    assert_eq!(proof["tree_size"], 122);
    assert_eq!(proof["seal"]["key"], fp.as_str());
    if common::e2e::runnable(
        "proof check in Python",
        have_python_crypto(),
        "python3 with the cryptography package (pip install cryptography)",
    ) {
        let pf = dir.path().join("proof.json");
        let ef = dir.path().join("event.json");
        std::fs::write(&pf, &proof_out.stdout).unwrap();
        std::fs::write(&ef, serde_json::to_vec(&event).unwrap()).unwrap();
        let py = std::process::Command::new("python3")
            .args([
                "-c",
                PYTHON_CHECK,
                pf.to_str().unwrap(),
                ef.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            py.status.success(),
            "python proof check failed:\n{}{}",
            String::from_utf8_lossy(&py.stdout),
            String::from_utf8_lossy(&py.stderr)
        );
        // The same check rejects an event that was changed.
        let mut changed = event.clone();
        changed["recorded"] = "2000-01-01T00:00:00Z".into();
        std::fs::write(&ef, serde_json::to_vec(&changed).unwrap()).unwrap();
        let py = std::process::Command::new("python3")
            .args([
                "-c",
                PYTHON_CHECK,
                pf.to_str().unwrap(),
                ef.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(!py.status.success());
    }

    // Delete the 6th event and alter the 90th (wherever their Bundles are).
    let mut deleted = String::new();
    let mut altered = String::new();
    let mut seen = 0;
    for f in &files {
        let mut b: serde_json::Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        let entries = b["entry"].as_array_mut().unwrap();
        let n = entries.len();
        if (seen..seen + n).contains(&89) {
            let e = &mut entries[89 - seen]["resource"];
            altered = e["id"].as_str().unwrap().to_owned();
            e["outcome"] = "4".into();
        }
        if (seen..seen + n).contains(&5) {
            deleted = entries[5 - seen]["resource"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            entries.remove(5 - seen);
        }
        seen += n;
        std::fs::write(f, serde_json::to_vec(&b).unwrap()).unwrap();
    }
    assert!(!deleted.is_empty() && !altered.is_empty());
    let (rc, report) = verify_json(&cfg, &["--from-dir", outdir.to_str().unwrap()]);
    let mut want = vec![
        ("altered".to_owned(), altered),
        ("missing".to_owned(), deleted),
    ];
    want.sort();
    assert_eq!((rc, findings(&report)), (1, want), "{report}");
    // The seal itself still verifies: the leaf log was not touched.
    assert_eq!(report["seals_ok"], 1);

    // A leaf log rewritten to hide the deletion no longer matches the signed seal.
    let leaves_path = state.join("tamper/leaves");
    let mut bytes = std::fs::read(&leaves_path).unwrap();
    bytes[16 + 64 * 10 + 30] ^= 1;
    let fixed = crc32c::crc32c(&bytes[16 + 640..16 + 640 + 60]);
    bytes[16 + 640 + 60..16 + 640 + 64].copy_from_slice(&fixed.to_le_bytes());
    std::fs::write(&leaves_path, &bytes).unwrap();
    let (rc, report) = verify_json(&cfg, &["--from-dir", outdir.to_str().unwrap()]);
    assert_eq!(rc, 1);
    let kinds: HashSet<String> = findings(&report).into_iter().map(|f| f.0).collect();
    assert!(kinds.contains("seal"), "{report}");
}

#[test]
fn verify_from_arr_names_exactly_a_deleted_and_an_altered_event_at_the_real_fhir_server() {
    let why = missing();
    if !common::e2e::runnable(
        "verify_from_arr",
        why.is_none(),
        why.as_deref().unwrap_or_default(),
    ) {
        return;
    }
    let server = FhirServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    append(&log, &fhir_lines(0, 150));
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "tamper-arr-host"
[[sources]]
name = "fhir"
type = "file"
include = ["{}"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
[output]
type = "http"
url = "{}"
bundle_type = "batch"
max_events = 40
flush_interval = "100ms"
timeout = "5s"
[[alerts]]
rule = "many-patients"
enabled = false
"#,
            log.display(),
            server.base_url()
        ),
    );
    let out = run(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The seal is stored like any event (the server validated it against R4).
    assert_eq!(server.audit_event_count(), 153);
    let (rc, report) = verify_json(&cfg, &["--from-arr", "--page-size", "50"]);
    assert_eq!((rc, findings(&report)), (0, vec![]), "{report}");
    assert_eq!(report["seals_ok"], 1);

    let all = server.search_all("AuditEvent", 200);
    let plain: Vec<&serde_json::Value> = all
        .iter()
        .filter(|e| e["subtype"][0]["code"] != "seal")
        .collect();
    // Medplum rewrote the event-id extension; the canonical bytes undo exactly that.
    assert!(
        plain[0]["extension"][0]["valueIdentifier"]["value"]
            .as_str()
            .unwrap()
            .starts_with("AuditEvent/")
    );
    let gone = plain[10]["id"].as_str().unwrap().to_owned();
    let a = server.delete(&format!("/fhir/AuditEvent/{gone}"));
    assert!(a.status < 300, "{}", a.json);
    let mut changed = plain[20].clone();
    let changed_id = changed["id"].as_str().unwrap().to_owned();
    changed["agent"][0]["who"]["identifier"]["value"] = "someone-else".into();
    if let Some(m) = changed.as_object_mut() {
        m.remove("meta");
    }
    let a = server.send("PUT", &format!("/fhir/AuditEvent/{changed_id}"), &changed);
    assert!(a.status < 300, "{}", a.json);

    let (rc, report) = verify_json(&cfg, &["--from-arr"]);
    let mut want = vec![
        ("altered".to_owned(), changed_id),
        ("missing".to_owned(), gone),
    ];
    want.sort();
    assert_eq!((rc, findings(&report)), (1, want), "{report}");
}

#[test]
fn sigkill_while_sealing_loses_no_leaf_repeats_none_and_the_seals_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // Seals every 100 ms, so kills land before, during and after sealing.
    let cfg = dir_config(dir.path(), &log, "100ms");
    let state = dir.path().join("state");
    let mut written = 0;
    let mut sizes = Vec::new();
    for cycle in 0..10u64 {
        append(&log, &fhir_lines(written, 200));
        written += 200;
        let agent = Agent::start(&cfg, &[]);
        let before = sizes.last().copied().unwrap_or(0);
        wait_until(Duration::from_secs(30), || {
            std::fs::metadata(state.join("tamper/leaves"))
                .is_ok_and(|m| (m.len().saturating_sub(16) / 64) as usize > before)
        });
        std::thread::sleep(Duration::from_millis(40 + (cycle * 37) % 250));
        agent.signal("KILL");
        drop(agent);
        let n = leaf_ids(&state).len();
        sizes.push(n);
    }
    // A clean run to the end: everything read, delivered and sealed.
    let out = run(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leaves = leaf_ids(&state);
    sizes.push(leaves.len());
    assert!(
        sizes.windows(2).all(|w| w[0] <= w[1]),
        "tree shrank: {sizes:?}"
    );

    // Every leaf once, in seq order; every event in the output is a leaf and vice versa.
    let ids: Vec<&String> = leaves.iter().map(|l| &l.1).collect();
    let unique: HashSet<&String> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a leaf repeats");
    assert!(leaves.windows(2).all(|w| w[0].0 < w[1].0));
    let mut delivered: HashSet<String> = HashSet::new();
    let mut from_lines: HashSet<String> = HashSet::new();
    for f in bundle_files(&dir.path().join("out")) {
        let b: serde_json::Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        for e in b["entry"].as_array().unwrap() {
            let r = &e["resource"];
            let id = r["id"].as_str().unwrap().to_owned();
            if r["type"]["code"] != "110100" {
                from_lines.insert(id.clone());
            }
            delivered.insert(id);
        }
    }
    let leaf_set: HashSet<String> = leaves.iter().map(|l| l.1.clone()).collect();
    assert_eq!(delivered, leaf_set);
    // Every line's event once (the rest are start, stop and seal events).
    assert_eq!(from_lines.len(), written);
    let seals = leaves.iter().filter(|l| l.2).count();
    assert!(seals >= 2, "{seals} seals");

    let outdir = dir.path().join("out");
    let (rc, report) = verify_json(&cfg, &["--from-dir", outdir.to_str().unwrap()]);
    assert_eq!((rc, findings(&report)), (0, vec![]), "{report}");
    assert_eq!(report["seals_ok"].as_u64(), Some(seals as u64));
    assert_eq!(
        report["sealed_size"].as_u64(),
        Some(leaves.len() as u64 - 1)
    );
}

//! The NATS output and source against a nats-server that requires TLS (a private CA) and a
//! token: an agent publishes, a forwarder consumes and delivers every event to the ARR; an
//! agent with the wrong token is refused and says so.
//!
//! Needs `nats-server`: skipped with a note when absent, unless `CI` is set (then it fails).

mod common;

use common::agent::{
    Agent, append, fhir_lines, nats_server, request_id, run, wait_until, write_config,
};
use common::arr::Arr;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "s3cret-fleet-token";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost; returns the CA's path.
fn pki(dir: &Path) -> PathBuf {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "balp-agent NATS test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut server =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    dir.join("ca.pem")
}

fn nats_block(port: u16, token_file: &Path, ca: &Path) -> String {
    format!(
        r#"servers = ["tls://127.0.0.1:{port}"]
token_file = "{token}"
"#,
        token = token_file.display()
    ) + &format!("tls = {{ ca_file = \"{}\" }}\n", ca.display())
}

#[test]
fn tls_and_token_auth_carry_every_event_and_a_wrong_token_is_refused() {
    let Some(bin) = nats_server() else {
        common::e2e::runnable(
            "nats_auth",
            false,
            "nats-server is not installed (apt-get install nats-server)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{store}\" }}\n\
             authorization {{ token: \"{TOKEN}\" }}\n\
             tls {{ cert_file: \"{cert}\", key_file: \"{key}\" }}\n",
            store = dir.path().join("js").display(),
            cert = dir.path().join("server.pem").display(),
            key = dir.path().join("server.key").display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("nats.log")).unwrap();
    let _server = Server(
        Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // The stream, created by a client that must itself use TLS and the token.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut last = String::new();
        for _ in 0..100 {
            let opts = async_nats::ConnectOptions::with_token(TOKEN.to_owned())
                .add_root_certificates(ca.clone())
                .require_tls(true);
            match opts.connect(format!("tls://127.0.0.1:{port}")).await {
                Ok(client) => {
                    let js = async_nats::jetstream::new(client);
                    js.get_or_create_stream(async_nats::jetstream::stream::Config {
                        name: "AUDIT".into(),
                        subjects: vec!["balp.audit.>".into()],
                        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
                        duplicate_window: Duration::from_secs(600),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                    return;
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot reach the TLS NATS server: {last}");
    });

    let good = dir.path().join("token");
    std::fs::write(&good, format!("{TOKEN}\n")).unwrap();
    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, "not-the-token\n").unwrap();
    let access = dir.path().join("access.log");
    append(&access, &fhir_lines(0, 300));
    let publisher = |name: &str, token: &Path| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        write_config(
            &d,
            &format!(
                r#"
[agent]
state_dir = "state"
hostname = "{name}.example.org"
[[sources]]
name = "fhir"
type = "file"
include = ["{log}"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
[output]
type = "nats"
max_events = 100
flush_interval = "100ms"
timeout = "2s"
[output.retry]
initial_backoff = "100ms"
max_backoff = "500ms"
[output.nats]
subject = "balp.audit.{{hostname}}"
stream = "AUDIT"
{nats}"#,
                log = access.display(),
                nats = nats_block(port, token, &ca),
            ),
        )
    };

    // The right token over TLS: everything published, then the run ends.
    let cfg = publisher("good", &good);
    let out = run(&["run", "--once", "-c", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A forwarder with the same credentials delivers every line's event to the ARR.
    let arr = Arr::start();
    let fdir = dir.path().join("forwarder");
    std::fs::create_dir_all(&fdir).unwrap();
    let fcfg = write_config(
        &fdir,
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "forwarder"
[[sources]]
name = "fleet"
type = "nats"
[sources.nats]
stream = "AUDIT"
consumer = "forwarders"
subject_filter = "balp.audit.>"
{nats}
[output]
type = "http"
url = "{url}"
bundle_type = "transaction"
max_events = 100
flush_interval = "100ms"
"#,
            nats = nats_block(port, &good, &ca),
            url = arr.url(),
        ),
    );
    let mut forwarder = Agent::start(&fcfg, &[]);
    let want: BTreeSet<String> = (0..300).map(|i| format!("req{i:08}")).collect();
    let rids = || -> BTreeSet<String> {
        arr.accepted_bundles()
            .iter()
            .flat_map(|b| b["entry"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| request_id(&e["resource"]).map(str::to_owned))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(60), || rids() == want),
        "{} of 300 arrived:\n{}",
        rids().len(),
        forwarder.log()
    );
    assert!(forwarder.stop().success(), "{}", forwarder.log());

    // The wrong token: refused by the server, said in the log, nothing acknowledged.
    let cfg = publisher("bad", &bad);
    let agent = Agent::start(&cfg, &[]);
    let state = dir.path().join("bad").join("state");
    let spooled = || {
        std::fs::read(state.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["pending_events"].as_u64())
            .unwrap_or(0)
    };
    // Refused, and by then every line read into the spool (status.json is refreshed every
    // second), so the kill below cannot come before the lines were read.
    let refused = wait_until(Duration::from_secs(30), || {
        agent.log().to_ascii_lowercase().contains("authorization") && spooled() >= 300
    });
    assert!(refused, "{}", agent.log());
    if let Some(l) = agent
        .log()
        .lines()
        .find(|l| l.to_ascii_lowercase().contains("authorization"))
    {
        eprintln!("refused: {l}");
    }
    agent.signal("KILL");
    let out = run(&["spool", "status", "-c", cfg.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pending = text
        .lines()
        .find_map(|l| l.strip_prefix("pending events:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(pending >= 300, "the refused agent keeps its events: {text}");
    eprintln!("300 of 300 delivered over TLS + token; refused agent holds {pending} events");
}

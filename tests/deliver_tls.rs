//! The HTTP output against a local HTTPS ARR on 127.0.0.1 with certificates made on the fly:
//! mTLS delivers; a missing client certificate and an unknown server CA are configuration
//! errors (paused, unhealthy, retried slowly, never dead-lettered, data kept);
//! `insecure_skip_verify` connects to a self-signed server and says so loudly.

use balp_agent::balp::EventRecord;
use balp_agent::batch::Batch;
use balp_agent::config::{ConfigDuration, OutputConfig, OutputType, RetryConfig};
use balp_agent::deliver::Delivery;
use balp_agent::deliver::http::HttpOutput;
use balp_agent::metrics::{Health, Thresholds};
use balp_agent::shutdown::{self, Shutdown};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};

/// Certificates and keys written as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// `ca.pem` (the ARR's CA), `server.pem/key` (127.0.0.1), `client.pem/key` (issued by the same
/// CA), `other-ca.pem` (a CA that issued nothing here).
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("balp-agent test ARR CA");
    let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();

    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    write(
        "server.pem",
        server.signed_by(&server_key, &ca).unwrap().pem(),
    );
    write("server.key", server_key.serialize_pem());

    let mut client = CertificateParams::new(vec!["agent.example".to_owned()]).unwrap();
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    write(
        "client.pem",
        client.signed_by(&client_key, &ca).unwrap().pem(),
    );
    write("client.key", client_key.serialize_pem());

    write("ca.pem", ca.pem());
    write("other-ca.pem", new_ca("unrelated CA").pem());
    Pki { dir }
}

/// A one-answer-per-connection HTTPS ARR: `200` to every request that gets through TLS.
struct Arr {
    addr: SocketAddr,
    handshakes_failed: Arc<AtomicUsize>,
    /// (request head, had a client certificate) per accepted request.
    requests: Arc<Mutex<Vec<(String, bool)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Arr {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn arr(p: &Pki, require_client_cert: bool) -> Arr {
    let provider = Arc::new(crypto::aws_lc_rs::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p.path("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(p.path("server.key")).unwrap();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(p.path("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes_failed = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (failed, reqs) = (handshakes_failed.clone(), requests.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, failed, reqs) = (acceptor.clone(), failed.clone(), reqs.clone());
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                let had_cert = tls.get_ref().1.peer_certificates().is_some();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head, then Content-Length bytes of body.
                let head_end = loop {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                reqs.lock().unwrap().push((head, had_cert));
                let body = r#"{"resourceType":"OperationOutcome","issue":[]}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Arr {
        addr,
        handshakes_failed,
        requests,
        task,
    }
}

fn output_config(addr: SocketAddr) -> OutputConfig {
    OutputConfig {
        output_type: OutputType::Http,
        url: Some(format!("https://{addr}/fhir")),
        timeout: ConfigDuration(Duration::from_secs(5)),
        retry: RetryConfig {
            initial_backoff: ConfigDuration(Duration::from_millis(20)),
            max_backoff: ConfigDuration(Duration::from_millis(300)),
        },
        ..OutputConfig::default()
    }
}

fn batch() -> Batch {
    let id = uuid::Uuid::from_u128(42);
    Batch {
        events: vec![EventRecord {
            id,
            pattern: "read",
            json: format!(r#"{{"resourceType":"AuditEvent","id":"{id}"}}"#),
            leaf: None,
        }],
        ..Batch::default()
    }
}

fn with_client_cert(o: &mut OutputConfig, p: &Pki) {
    o.tls.ca_file = Some(p.path("ca.pem"));
    o.tls.client_cert_file = Some(p.path("client.pem"));
    o.tls.client_key_file = Some(p.path("client.key"));
}

/// Deliver in the background until `until` holds, then stop; returns the result and when
/// `until` first held.
async fn deliver_until(out: &mut HttpOutput, until: impl Fn() -> bool) -> (Delivery, Instant) {
    let (trigger, stop) = shutdown::channel();
    let watcher = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !until() {
            assert!(Instant::now() < deadline, "condition never held");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let at = Instant::now();
        trigger.trigger();
        at
    };
    let b = batch();
    let (got, at) = tokio::join!(out.deliver(&b, &stop), watcher);
    (got.unwrap(), at)
}

#[tokio::test]
async fn mtls_with_ca_and_client_certificate_delivers() {
    let p = pki();
    let arr = arr(&p, true).await;
    let mut o = output_config(arr.addr);
    with_client_cert(&mut o, &p);
    let state = tempfile::tempdir().unwrap();
    let mut out = HttpOutput::new(&o, state.path()).unwrap();
    let health = Arc::new(Health::new(Thresholds::default()));
    out.set_health(health.clone());
    let got = out.deliver(&batch(), &Shutdown::never()).await.unwrap();
    assert_eq!(got, Delivery::Accepted);
    let reqs = arr.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].0.starts_with("post /fhir http/1.1"),
        "{}",
        reqs[0].0
    );
    assert!(reqs[0].1, "the server saw the client certificate");
    assert_eq!(arr.handshakes_failed.load(Ordering::SeqCst), 0);
    assert_eq!(health.status(Instant::now()), Ok(()));
}

#[tokio::test]
async fn mtls_without_client_certificate_keeps_retrying_and_never_dead_letters() {
    let p = pki();
    let arr = arr(&p, true).await;
    let mut o = output_config(arr.addr);
    o.tls.ca_file = Some(p.path("ca.pem"));
    let state = tempfile::tempdir().unwrap();
    let mut out = HttpOutput::new(&o, state.path()).unwrap();
    let health = Arc::new(Health::new(Thresholds {
        spool_fill: 0.9,
        delivery_failure: Duration::ZERO,
    }));
    out.set_health(health.clone());
    let failed = arr.handshakes_failed.clone();
    let started = Instant::now();
    let (got, at) = deliver_until(&mut out, || failed.load(Ordering::SeqCst) >= 2).await;
    assert_eq!(got, Delivery::Interrupted, "still pending, not dropped");
    assert!(
        at - started >= Duration::from_millis(300),
        "paced by max_backoff"
    );
    assert!(arr.requests.lock().unwrap().is_empty());
    assert!(
        !state.path().join("dead-letter").exists(),
        "nothing dead-lettered"
    );
    let e = health.status(Instant::now()).unwrap_err();
    assert!(e.contains("delivery failing"), "{e}");
    // The ARR refused us for the missing certificate: that will not heal by itself, so the
    // output pauses (slow retries) and says why.
    assert!(
        e.contains("configuration error") && e.contains("CertificateRequired"),
        "{e}"
    );

    // Once the certificate is configured, the same Bundle goes through.
    with_client_cert(&mut o, &p);
    let mut out = HttpOutput::new(&o, state.path()).unwrap();
    out.set_health(health.clone());
    let got = out.deliver(&batch(), &Shutdown::never()).await.unwrap();
    assert_eq!(got, Delivery::Accepted);
    assert_eq!(health.status(Instant::now()), Ok(()));
}

#[tokio::test]
async fn unknown_server_ca_is_a_configuration_error_that_keeps_the_data() {
    let p = pki();
    let arr = arr(&p, false).await;
    let mut o = output_config(arr.addr);
    o.tls.ca_file = Some(p.path("other-ca.pem"));
    let state = tempfile::tempdir().unwrap();
    let mut out = HttpOutput::new(&o, state.path()).unwrap();
    let health = Arc::new(Health::new(Thresholds::default()));
    out.set_health(health.clone());
    let failed = arr.handshakes_failed.clone();
    let started = Instant::now();
    let (got, at) = deliver_until(&mut out, || failed.load(Ordering::SeqCst) >= 2).await;
    assert_eq!(got, Delivery::Interrupted);
    // Paced like a configuration error: max_backoff (300 ms) between attempts, not the
    // 20 ms initial backoff of a transient failure.
    assert!(
        at - started >= Duration::from_millis(300),
        "second attempt after {:?}",
        at - started
    );
    assert!(arr.requests.lock().unwrap().is_empty());
    assert!(!state.path().join("dead-letter").exists());
    let e = health.status(Instant::now()).unwrap_err();
    assert!(
        e.contains("configuration error") && e.contains("TLS certificate rejected"),
        "{e}"
    );
}

/// Collects what tracing writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn insecure_skip_verify_reaches_a_self_signed_server_and_warns() {
    let p = pki();
    let arr = arr(&p, false).await;
    let mut o = output_config(arr.addr);
    o.tls.insecure_skip_verify = true;
    let state = tempfile::tempdir().unwrap();
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let mut out = tracing::subscriber::with_default(subscriber, || {
        HttpOutput::new(&o, state.path()).unwrap()
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("WARN")
            && text.contains("insecure_skip_verify")
            && text.contains("NOT verified"),
        "{text}"
    );
    let got = out.deliver(&batch(), &Shutdown::never()).await.unwrap();
    assert_eq!(got, Delivery::Accepted);
    assert_eq!(arr.requests.lock().unwrap().len(), 1);
}

#[test]
fn client_key_that_does_not_load_is_a_setup_error_naming_the_files() {
    let p = pki();
    let mut o = output_config("127.0.0.1:1".parse().unwrap());
    with_client_cert(&mut o, &p);
    std::fs::write(p.path("client.key"), "-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
    let e = HttpOutput::new(&o, Path::new("/nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("client_key_file") && e.contains("client.key"),
        "{e}"
    );
}

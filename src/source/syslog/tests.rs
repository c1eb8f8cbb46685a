use super::*;
use crate::config::{ByteSize, ConfigDuration, DecodeKind, ListenTlsConfig, ReadFrom, SourceType};
use crate::decode::syslog::SyslogDecoder;
use crate::shutdown::{self, ShutdownTrigger};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn config(listen: &str) -> SourceConfig {
    SourceConfig {
        name: "remote".to_owned(),
        source_type: SourceType::Syslog,
        include: Vec::new(),
        exclude: Vec::new(),
        read_from: ReadFrom::End,
        decode: DecodeKind::Syslog,
        parsers: Vec::new(),
        multiline: Default::default(),
        trust_forwarded_for: false,
        log_line_prefix: None,
        max_line_bytes: ByteSize(64 * 1024),
        timezone: None,
        fhir_base: None,
        poll_interval: ConfigDuration(Duration::from_millis(250)),
        listen: Some(listen.to_owned()),
        journal_match: Vec::new(),
        journal_namespace: None,
        tls: None,
        max_connections: 256,
        max_frame_bytes: ByteSize(64 * 1024),
        nats: None,
    }
}

fn corpus(f: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../shared/corpus/generated/debian12-rsyslog-auth/{f}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

struct Running {
    rx: mpsc::Receiver<SourceMsg>,
    trigger: ShutdownTrigger,
    listener: Listener,
}

impl Running {
    fn start(cfg: &SourceConfig, capacity: usize) -> Running {
        let (trigger, shutdown) = shutdown::channel();
        let (tx, rx) = mpsc::channel(capacity);
        let listener = start(cfg, tx, shutdown).unwrap();
        Running {
            rx,
            trigger,
            listener,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr
    }

    /// Exactly `n` lines, or a panic after `WAIT`.
    async fn lines(&mut self, n: usize) -> Vec<LogLine> {
        let mut out = Vec::new();
        while out.len() < n {
            match timeout(WAIT, self.rx.recv()).await {
                Ok(Some(SourceMsg::Lines(l))) => out.extend(l),
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                Ok(None) => panic!("channel closed after {} lines", out.len()),
                Err(_) => panic!("timed out after {} of {n} lines", out.len()),
            }
        }
        assert_eq!(out.len(), n, "more lines than expected");
        out
    }

    /// Nothing more arrives within a short time.
    async fn quiet(&mut self) {
        if let Ok(Some(m)) = timeout(Duration::from_millis(200), self.rx.recv()).await {
            panic!("unexpected message {m:?}");
        }
    }

    async fn stop(self) {
        self.trigger.trigger();
        timeout(WAIT, self.listener.task)
            .await
            .expect("listener did not stop")
            .unwrap();
    }
}

type Header = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

fn header(text: &str) -> Header {
    let now: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
    let d = SyslogDecoder::new(TimeZone::UTC).decode(text, now);
    assert!(!d.malformed, "{text}");
    (
        d.time.map(|t| t.to_instant()),
        d.host,
        d.program,
        d.pid,
        d.message,
    )
}

fn auth_log_headers() -> Vec<Header> {
    String::from_utf8(corpus("auth.log"))
        .unwrap()
        .lines()
        .map(header)
        .collect()
}

fn headers(lines: &[LogLine]) -> Vec<Header> {
    lines.iter().map(|l| header(&l.text)).collect()
}

#[test]
fn listen_values_parse() {
    let l = Listen::parse("udp://0.0.0.0:5514").unwrap();
    assert_eq!((l.proto, l.addr.port()), (Proto::Udp, 5514));
    assert_eq!(Listen::parse("tls://[::]:6514").unwrap().proto, Proto::Tls);
    assert_eq!(
        Listen::parse("tcp://127.0.0.1:1").unwrap().proto,
        Proto::Tcp
    );
    for bad in [
        "0.0.0.0:5514",
        "http://0.0.0.0:1",
        "udp://localhost:5514",
        "udp://1.2.3.4",
    ] {
        assert!(Listen::parse(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn udp_corpus_arrives_and_decodes_like_auth_log() {
    for file in ["wire-udp-rfc5424.txt", "wire-udp-rfc3164-forwardformat.txt"] {
        let mut r = Running::start(&config("udp://127.0.0.1:0"), 1024);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let text = corpus(file);
        let datagrams: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(datagrams.len(), 132);
        for (i, d) in datagrams.iter().enumerate() {
            // Half with their LF, half without: both forms occur on the wire.
            let d = if i % 2 == 0 {
                d
            } else {
                d.strip_suffix(b"\n").unwrap()
            };
            client.send_to(d, r.addr()).unwrap();
        }
        let lines = r.lines(132).await;
        let mut got = headers(&lines);
        let mut want = auth_log_headers();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{file}");
        for l in &lines {
            assert_eq!(l.stream.key, "syslog:udp://127.0.0.1:0:127.0.0.1");
            assert_eq!(l.stream.path, Path::new("udp://127.0.0.1:0 from 127.0.0.1"));
            assert_eq!(l.offset, l.end);
            assert!(is_syslog_stream(&l.stream));
            assert!(!l.text.ends_with('\n'));
        }
        let mut ids: Vec<u64> = lines.iter().map(|l| l.offset).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 132, "message ids must be distinct");
        r.stop().await;
    }
}

#[tokio::test]
async fn tcp_lf_framed_corpus_arrives_in_order() {
    let mut r = Running::start(&config("tcp://127.0.0.1:0"), 64);
    let mut c = TcpStream::connect(r.addr()).await.unwrap();
    c.write_all(&corpus("wire-tcp-lf-forwardformat.txt"))
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let lines = r.lines(132).await;
    assert_eq!(headers(&lines), auth_log_headers());
    assert_eq!(lines[0].stream.key, "syslog:tcp://127.0.0.1:0:127.0.0.1");
    r.stop().await;
}

#[tokio::test]
async fn tcp_octet_counted_frames_split_across_writes() {
    let mut r = Running::start(&config("tcp://127.0.0.1:0"), 64);
    let mut c = TcpStream::connect(r.addr()).await.unwrap();
    c.set_nodelay(true).unwrap();
    let bytes = corpus("wire-tcp-octetcounted-rfc5424.txt");
    assert!(bytes[0].is_ascii_digit());
    for (i, chunk) in bytes.chunks(7).enumerate() {
        c.write_all(chunk).await.unwrap();
        if i % 64 == 0 {
            c.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    c.shutdown().await.unwrap();
    let lines = r.lines(132).await;
    assert_eq!(headers(&lines), auth_log_headers());
    assert!(lines.iter().all(|l| !l.flags.truncated));
    r.stop().await;
}

#[tokio::test]
async fn message_ids_repeat_after_restart_but_not_within_a_run() {
    let msg = b"<38>2026-11-25T15:22:50.239810+00:00 h sshd[1]: Accepted publickey for alice\n";
    let mut first = Vec::new();
    for _run in 0..2 {
        let mut r = Running::start(&config("tcp://127.0.0.1:0"), 64);
        let mut c = TcpStream::connect(r.addr()).await.unwrap();
        c.write_all(msg).await.unwrap();
        c.write_all(msg).await.unwrap();
        c.shutdown().await.unwrap();
        let ids: Vec<u64> = r.lines(2).await.iter().map(|l| l.offset).collect();
        assert_ne!(ids[0], ids[1], "a repeated message needs its own id");
        if first.is_empty() {
            first = ids;
        } else {
            assert_eq!(ids, first, "ids must be the same after a restart");
        }
        r.stop().await;
    }
}

#[tokio::test]
async fn over_long_frames_are_cut_and_flagged() {
    for listen in ["tcp://127.0.0.1:0", "udp://127.0.0.1:0"] {
        let mut cfg = config(listen);
        cfg.max_frame_bytes = ByteSize(100);
        let mut r = Running::start(&cfg, 64);
        let long = format!("<13>{}", "x".repeat(296));
        let short = "<13>short";
        if listen.starts_with("udp") {
            let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            c.send_to(long.as_bytes(), r.addr()).unwrap();
            c.send_to(short.as_bytes(), r.addr()).unwrap();
        } else {
            // One octet-counted connection and one LF-framed connection.
            let mut c = TcpStream::connect(r.addr()).await.unwrap();
            let framed = format!("{} {long}{} {short}", long.len(), short.len());
            c.write_all(framed.as_bytes()).await.unwrap();
            c.shutdown().await.unwrap();
            let lines = r.lines(2).await;
            assert_eq!(lines[0].text, long[..100]);
            assert!(lines[0].flags.truncated);
            assert_eq!(lines[1].text, short);
            assert!(!lines[1].flags.truncated);
            let mut c = TcpStream::connect(r.addr()).await.unwrap();
            c.write_all(format!("{long}\n{short}\n").as_bytes())
                .await
                .unwrap();
            c.shutdown().await.unwrap();
        }
        let lines = r.lines(2).await;
        assert_eq!(lines[0].text, long[..100], "{listen}");
        assert!(lines[0].flags.truncated);
        assert_eq!(lines[1].text, short);
        assert!(!lines[1].flags.truncated);
        assert!(r.listener.stats.truncated.load(Ordering::Relaxed) >= 1);
        r.stop().await;
    }
}

#[tokio::test]
async fn max_connections_is_enforced() {
    let mut cfg = config("tcp://127.0.0.1:0");
    cfg.max_connections = 2;
    let mut r = Running::start(&cfg, 64);
    let mut c1 = TcpStream::connect(r.addr()).await.unwrap();
    let mut c2 = TcpStream::connect(r.addr()).await.unwrap();
    c1.write_all(b"<13>one\n").await.unwrap();
    c2.write_all(b"<13>two\n").await.unwrap();
    r.lines(2).await;
    let stats = r.listener.stats.clone();
    assert_eq!(stats.open_connections.load(Ordering::Relaxed), 2);

    let mut c3 = TcpStream::connect(r.addr()).await.unwrap();
    let mut b = [0u8; 16];
    let closed = timeout(WAIT, c3.read(&mut b)).await.expect("not closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);

    drop(c1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while stats.open_connections.load(Ordering::Relaxed) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "c1 never counted as closed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut c4 = TcpStream::connect(r.addr()).await.unwrap();
    c4.write_all(b"<13>four\n").await.unwrap();
    assert_eq!(r.lines(1).await[0].text, "<13>four");
    drop((c2, c4));
    r.stop().await;
}

#[tokio::test]
async fn udp_drops_are_counted_when_the_channel_is_full() {
    let mut r = Running::start(&config("udp://127.0.0.1:0"), 1);
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stats = r.listener.stats.clone();
    let sent = 11u64;
    for i in 0..sent {
        c.send_to(format!("<13>m{i}").as_bytes(), r.addr()).unwrap();
        // Let the listener take each datagram on its own, so the channel is full after one.
        let deadline = tokio::time::Instant::now() + WAIT;
        while stats.received.load(Ordering::Relaxed) <= i {
            assert!(
                tokio::time::Instant::now() < deadline,
                "datagram {i} not received"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let dropped = stats.dropped.load(Ordering::Relaxed);
    assert_eq!(dropped, sent - 1);
    let kept = r.lines(1).await;
    assert_eq!(kept[0].text, "<13>m0");
    r.stop().await;
}

#[tokio::test]
async fn tcp_waits_for_a_full_channel_and_loses_nothing() {
    let mut r = Running::start(&config("tcp://127.0.0.1:0"), 1);
    let n = 5000;
    let writer = {
        let addr = r.addr();
        tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut all = String::new();
            for i in 0..n {
                all.push_str(&format!("<13>Nov 25 15:22:50 h app[1]: message {i}\n"));
            }
            c.write_all(all.as_bytes()).await.unwrap();
            c.shutdown().await.unwrap();
        })
    };
    // Not reading for a while: the connection must wait, not drop.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lines = r.lines(n).await;
    for (i, l) in lines.iter().enumerate() {
        assert!(l.text.ends_with(&format!(" message {i}")), "{}", l.text);
    }
    assert_eq!(r.listener.stats.dropped.load(Ordering::Relaxed), 0);
    writer.await.unwrap();
    r.stop().await;
}

#[tokio::test]
async fn stop_ends_the_listener_with_connections_open() {
    let r = Running::start(&config("tcp://127.0.0.1:0"), 1);
    let _idle = TcpStream::connect(r.addr()).await.unwrap();
    r.stop().await;
}

mod tls_tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

    struct Pki {
        dir: tempfile::TempDir,
        ca_der: CertificateDer<'static>,
        client_cert: CertificateDer<'static>,
        client_key_pem: String,
    }

    fn pki() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "balp-agent test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca).unwrap();

        let mut client = CertificateParams::new(vec!["sender.example".to_owned()]).unwrap();
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            ca_der: ca.der().clone(),
            client_cert: client_cert.der().clone(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    fn tls_config(p: &Pki, verify_clients: bool) -> SourceConfig {
        let mut cfg = config("tls://127.0.0.1:0");
        cfg.tls = Some(ListenTlsConfig {
            cert_file: p.dir.path().join("server.pem"),
            key_file: p.dir.path().join("server.key"),
            client_ca_file: verify_clients.then(|| p.dir.path().join("ca.pem")),
        });
        cfg
    }

    fn connector(p: &Pki, with_cert: bool) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(p.ca_der.clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let cfg = if with_cert {
            let key = PrivateKeyDer::from_pem_slice(p.client_key_pem.as_bytes()).unwrap();
            builder
                .with_client_auth_cert(vec![p.client_cert.clone()], key)
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        TlsConnector::from(Arc::new(cfg))
    }

    async fn connect(
        addr: SocketAddr,
        c: &TlsConnector,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        c.connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    #[tokio::test]
    async fn tls_with_a_self_signed_ca_carries_the_corpus() {
        let p = pki();
        let mut r = Running::start(&tls_config(&p, false), 64);
        let mut s = connect(r.addr(), &connector(&p, false)).await.unwrap();
        s.write_all(&corpus("wire-tcp-octetcounted-rfc5424.txt"))
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let lines = r.lines(132).await;
        assert_eq!(headers(&lines), auth_log_headers());
        assert_eq!(lines[0].stream.key, "syslog:tls://127.0.0.1:0:127.0.0.1");
        r.stop().await;
    }

    #[tokio::test]
    async fn tls_client_certificates_are_verified() {
        let p = pki();
        let mut r = Running::start(&tls_config(&p, true), 64);

        // Without a certificate: the server ends the handshake; nothing is received.
        if let Ok(mut s) = connect(r.addr(), &connector(&p, false)).await {
            // TLS 1.3 clients finish before the server has checked them; the refusal shows
            // on the next read.
            let _ = s.write_all(b"<13>from an anonymous client\n").await;
            let _ = s.flush().await;
            let mut b = [0u8; 16];
            let res = timeout(WAIT, s.read(&mut b)).await.expect("not closed");
            assert!(matches!(res, Ok(0) | Err(_)), "{res:?}");
        }

        let mut s = connect(r.addr(), &connector(&p, true)).await.unwrap();
        s.write_all(b"<13>Nov 25 15:22:50 h app: from a known client\n")
            .await
            .unwrap();
        s.flush().await.unwrap();
        let lines = r.lines(1).await;
        assert_eq!(
            lines[0].text,
            "<13>Nov 25 15:22:50 h app: from a known client"
        );
        r.quiet().await;
        drop(s);
        r.stop().await;
    }

    #[tokio::test]
    async fn tls_file_problems_name_the_file() {
        let p = pki();
        let mut cfg = tls_config(&p, false);
        if let Some(t) = cfg.tls.as_mut() {
            t.key_file = p.dir.path().join("missing.key");
        }
        let (_trigger, shutdown) = shutdown::channel();
        let (tx, _rx) = mpsc::channel(1);
        let e = start(&cfg, tx, shutdown).unwrap_err().to_string();
        assert!(e.contains("key_file") && e.contains("missing.key"), "{e}");
    }
}

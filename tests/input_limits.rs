//! Untrusted input at scale, end to end through the real binary: thousands of concurrent
//! syslog peers and a 100 MB line without a newline (over TCP and in a tailed file). Memory
//! stays bounded, every limit that bites is named in the log, and nothing else is lost.

mod common;

use common::agent::{Agent, events_in_dir, wait_until, write_config};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// The address the agent logged for a syslog source (`listen` used port 0).
fn listening_addr(agent: &Agent, source: &str) -> Option<String> {
    let needle = format!("source={source} addr=");
    agent
        .log()
        .lines()
        .filter(|l| l.contains("syslog source listening"))
        .find_map(|l| {
            let at = l.find(&needle)? + needle.len();
            l[at..].split_whitespace().next().map(str::to_owned)
        })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn config(dir: &Path, max_connections: usize, file: &Path) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "collector"
[[sources]]
name = "tcp"
type = "syslog"
listen = "tcp://127.0.0.1:0"
parsers = ["sshd"]
timezone = "UTC"
max_connections = {max_connections}
[[sources]]
name = "auth"
type = "file"
include = ["{file}"]
read_from = "beginning"
parsers = ["sshd"]
timezone = "UTC"
poll_interval = "50ms"
[output]
type = "directory"
path = "out"
max_events = 500
flush_interval = "100ms"
"#,
            file = file.display()
        ),
    )
}

/// An sshd failure unique to `i` (its user and port), as a syslog line without PRI.
fn sshd_line(i: usize) -> String {
    format!(
        "Dec  4 21:00:00 host{} sshd[{}]: Failed password for user{i} from 192.0.2.{} port {} ssh2",
        i % 7,
        1000 + i % 5000,
        i % 250 + 1,
        10_000 + i
    )
}

/// The users named by the events in the output directory.
fn users(out: &Path) -> Vec<String> {
    events_in_dir(out)
        .iter()
        .filter_map(|e| {
            e["agent"].as_array()?.iter().find_map(|a| {
                a["who"]["identifier"]["value"]
                    .as_str()
                    .or(a["who"]["display"].as_str())
                    .filter(|u| u.starts_with("user"))
                    .map(str::to_owned)
            })
        })
        .collect()
}

fn start(dir: &Path, max_connections: usize) -> (Agent, String) {
    let file = dir.join("auth.log");
    std::fs::write(&file, "").unwrap();
    let cfg = config(dir, max_connections, &file);
    let agent = Agent::start(&cfg, &[]);
    let mut addr = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            addr = listening_addr(&agent, "tcp");
            addr.is_some()
        }),
        "agent did not listen:\n{}",
        agent.log()
    );
    (agent, addr.unwrap_or_default())
}

#[test]
fn two_thousand_concurrent_tcp_peers_are_all_served_with_bounded_memory() {
    const PEERS: usize = 2000;
    const EACH: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, addr) = start(dir.path(), PEERS);
    let pid = agent.child.id();
    let rss_idle = rss_kib(pid);

    let mut peers: Vec<TcpStream> = (0..PEERS)
        .map(|i| {
            TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect #{i} to {addr}: {e}"))
        })
        .collect();
    // Every peer is connected before any sends, so all 2000 are open at once.
    for (p, s) in peers.iter_mut().enumerate() {
        let mut text = String::new();
        for k in 0..EACH {
            text.push_str(&format!("<38>{}\n", sshd_line(p * EACH + k)));
        }
        s.write_all(text.as_bytes()).unwrap();
    }
    let out = dir.path().join("out");
    let mut rss_peak = rss_idle;
    let all = wait_until(Duration::from_secs(120), || {
        rss_peak = rss_peak.max(rss_kib(pid));
        users(&out).len() >= PEERS * EACH
    });
    assert!(
        all,
        "{} events of {}:\n{}",
        users(&out).len(),
        PEERS * EACH,
        agent.log()
    );
    let rss_open = rss_kib(pid);

    // One more is refused at once (closed without a byte), and the log says why.
    let mut extra = TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(extra.read(&mut byte), Ok(0) | Err(_)),
        "the connection past max_connections is closed"
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("syslog connection refused: max_connections reached")),
        "{}",
        agent.log()
    );
    drop(peers);
    assert!(agent.stop().success(), "{}", agent.log());

    let got = users(&out);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(got.len(), PEERS * EACH, "each message once");
    assert_eq!(unique.len(), PEERS * EACH);
    eprintln!(
        "{PEERS} peers: RSS idle {rss_idle} KiB, peak {rss_peak} KiB, with all open {rss_open} KiB"
    );
    // 2000 open peers may cost a few KiB each, never the 64 KiB read buffer (128 MiB).
    assert!(
        rss_peak < rss_idle + 48 * 1024,
        "RSS grew from {rss_idle} to {rss_peak} KiB"
    );
}

#[test]
fn a_100_mb_line_without_newline_is_cut_over_tcp_and_in_a_file_and_memory_stays_bounded() {
    const LINE: usize = 100 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, addr) = start(dir.path(), 16);
    let pid = agent.child.id();
    let rss_idle = rss_kib(pid);
    let chunk = vec![b'a'; 1 << 20];
    let mut rss_peak = rss_idle;

    // Over TCP: a peer sends a header and 100 MB with no LF, then closes; another peer's
    // messages arrive meanwhile.
    let mut big = TcpStream::connect(&addr).unwrap();
    let mut small = TcpStream::connect(&addr).unwrap();
    big.write_all(b"<38>Dec  4 21:00:00 big sshd[1]: ").unwrap();
    for i in 0..LINE / chunk.len() {
        big.write_all(&chunk).unwrap();
        if i % 10 == 0 {
            small
                .write_all(format!("<38>{}\n", sshd_line(i)).as_bytes())
                .unwrap();
            rss_peak = rss_peak.max(rss_kib(pid));
        }
    }
    drop(big);
    drop(small);

    // In a file: 100 MB without a newline, then the newline and a normal line.
    let file = dir.path().join("auth.log");
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(b"Dec  4 21:00:00 big sshd[2]: ").unwrap();
        for _ in 0..LINE / chunk.len() {
            f.write_all(&chunk).unwrap();
            rss_peak = rss_peak.max(rss_kib(pid));
        }
        f.write_all(b"\n").unwrap();
        f.write_all(format!("{}\n", sshd_line(900_000)).as_bytes())
            .unwrap();
    }
    let out = dir.path().join("out");
    let want: BTreeSet<String> = (0..LINE / chunk.len())
        .step_by(10)
        .map(|i| format!("user{i}"))
        .chain(["user900000".to_owned()])
        .collect();
    let all = wait_until(Duration::from_secs(120), || {
        rss_peak = rss_peak.max(rss_kib(pid));
        users(&out).into_iter().collect::<BTreeSet<_>>() == want
    });
    assert!(all, "{:?}\n{}", users(&out), agent.log());
    let cut = |setting: &str| {
        agent
            .log()
            .lines()
            .any(|l| l.contains("line longer than its limit was cut") && l.contains(setting))
    };
    assert!(
        wait_until(Duration::from_secs(10), || cut("max_frame_bytes")
            && cut("max_line_bytes")),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success(), "{}", agent.log());
    eprintln!("100 MB lines: RSS idle {rss_idle} KiB, peak {rss_peak} KiB");
    assert!(
        rss_peak < rss_idle + 32 * 1024,
        "a 100 MB line must not be held: RSS {rss_idle} -> {rss_peak} KiB"
    );
    assert_eq!(users(&out).len(), want.len(), "each message once");
}

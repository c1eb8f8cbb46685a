//! A real rsyslogd forwards to the agent's syslog listeners over UDP (rsyslog's default
//! forward format) and TCP (octet-counted RFC 5424), the way a Debian host ships its auth log to a central agent. `logger` writes
//! sshd-like messages into rsyslog's own Unix socket (imuxsock); an rsyslog filter sends
//! `udp*` users' messages over UDP and the rest over TCP, so each path is checked on its own; the agent
//! delivers over HTTP to the test ARR.
//!
//! Needs `rsyslogd` and `logger`: skipped with a note when absent, unless `CI` is set
//! (`.ci/run` installs rsyslog).

mod common;

use common::agent::{Agent, wait_until, write_config};
use common::arr::{Arr, is_self_audit};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn have(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).exists())
}

fn rsyslogd() -> Option<PathBuf> {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

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

/// The accepted AuditEvents made from log lines (the agent's own start/stop left out).
fn log_events(arr: &Arr) -> Vec<serde_json::Value> {
    arr.accepted_bundles()
        .iter()
        .flat_map(|b| b["entry"].as_array().cloned().unwrap_or_default())
        .map(|e| e["resource"].clone())
        .filter(|r| !is_self_audit(r))
        .collect()
}

struct Rsyslogd(Child);

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap_or_default()
}

#[test]
fn rsyslog_forwards_auth_messages_over_udp_and_tcp() {
    let found = rsyslogd().filter(|_| have("logger"));
    if !common::e2e::runnable(
        "the rsyslog forwarding test",
        found.is_some(),
        "rsyslogd or logger not installed (apt-get install rsyslog)",
    ) {
        return;
    }
    let Some(rsyslogd) = found else { return };
    let dir = tempfile::tempdir().unwrap();
    let arr = Arr::start();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "collector"
[[sources]]
name = "udp"
type = "syslog"
listen = "udp://127.0.0.1:0"
parsers = ["sshd"]
timezone = "UTC"
[[sources]]
name = "tcp"
type = "syslog"
listen = "tcp://127.0.0.1:0"
parsers = ["sshd"]
timezone = "UTC"
[output]
type = "http"
url = "{url}"
max_events = 50
flush_interval = "100ms"
timeout = "2s"
[output.retry]
initial_backoff = "50ms"
max_backoff = "200ms"
"#,
            url = arr.url()
        ),
    );
    let mut agent = Agent::start(&config, &[]);
    let mut addrs = (None, None);
    assert!(
        wait_until(Duration::from_secs(20), || {
            addrs = (listening_addr(&agent, "udp"), listening_addr(&agent, "tcp"));
            addrs.0.is_some() && addrs.1.is_some()
        }),
        "agent did not listen:\n{}",
        agent.log()
    );
    let (udp, tcp) = (addrs.0.unwrap(), addrs.1.unwrap());

    let work = dir.path().join("rsyslog");
    std::fs::create_dir_all(&work).unwrap();
    let socket = work.join("log.sock");
    let conf = work.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{socket}" CreatePath="on")
if $msg contains "for udp" then {{
  action(type="omfwd" target="127.0.0.1" port="{udp_port}" protocol="udp")
}} else {{
  action(type="omfwd" target="127.0.0.1" port="{tcp_port}" protocol="tcp"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}}
"#,
            work = work.display(),
            socket = socket.display(),
            udp_port = port(&udp),
            tcp_port = port(&tcp),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(work.join("rsyslogd.out")).unwrap();
    let child = Command::new(&rsyslogd)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(work.join("rsyslogd.pid"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _rsyslog = Rsyslogd(child);
    assert!(
        wait_until(Duration::from_secs(20), || socket.exists()),
        "rsyslogd did not open its socket: {}",
        std::fs::read_to_string(work.join("rsyslogd.out")).unwrap_or_default()
    );

    let mut messages = Vec::new();
    for (i, user) in ["udpalice", "udpbob", "tcpcarol", "tcpdave"]
        .iter()
        .enumerate()
    {
        messages.push(format!(
            "Accepted password for {user} from 192.0.2.{i} port 5100{i} ssh2"
        ));
        messages.push(format!(
            "Failed password for {user} from 192.0.2.{i} port 5200{i} ssh2"
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let ok = Command::new("logger")
            .arg("--socket")
            .arg(&socket)
            .arg("-t")
            .arg("sshd")
            .arg(format!("--id={}", 4000 + i))
            .arg(m)
            .status()
            .unwrap()
            .success();
        assert!(ok, "logger failed");
    }
    let want = messages.len();
    assert!(
        wait_until(Duration::from_secs(30), || log_events(&arr).len() >= want),
        "expected {want} events, got {}\nagent:\n{}\nrsyslogd:\n{}",
        log_events(&arr).len(),
        agent.log(),
        std::fs::read_to_string(work.join("rsyslogd.out")).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_millis(300));
    let status = agent.stop();
    assert!(status.success(), "{}", agent.log());

    let events = log_events(&arr);
    assert_eq!(events.len(), want, "one event per message");
    let bundles = serde_json::to_string(&events).unwrap();
    for user in ["udpalice", "udpbob", "tcpcarol", "tcpdave"] {
        assert_eq!(
            bundles.matches(&format!("\"{user}\"")).count(),
            2,
            "{user}: one success and one failure event\n{bundles}"
        );
    }
    common::agent::assert_conformant(&events);
    for user in ["udpalice", "tcpdave"] {
        let mut outcomes: Vec<&str> = events
            .iter()
            .filter(|e| e["agent"][0]["who"]["identifier"]["value"] == user)
            .filter(|e| e["subtype"][0]["code"] == "110122")
            .filter_map(|e| e["outcome"].as_str())
            .collect();
        outcomes.sort();
        assert_eq!(outcomes.len(), 2, "{user}: login events");
        assert_eq!(outcomes[0], "0", "{user}: the accepted login succeeded");
        assert_ne!(outcomes[1], "0", "{user}: the failed login failed");
    }
}

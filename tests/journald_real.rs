//! `type = "journald"` against the real thing: a private `systemd-journald` (Debian's systemd
//! package) started for a journal namespace of the test's own, fed through its native socket,
//! read by the real `journalctl --namespace`. The agent is killed with SIGKILL between
//! entries and its `journalctl` is killed while entries keep coming; every entry must become
//! exactly one event (by id), none lost.
//!
//! Needs root (journald creates `/run/systemd/journal.<namespace>`); skipped with a note
//! otherwise, or when systemd-journald is missing, unless `CI` is set.

mod common;

use common::agent::{Agent, assert_conformant, events_in_dir, wait_until, write_config};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// A journald of its own namespace; stopped and its files removed on drop.
struct Journald {
    child: Child,
    namespace: String,
    socket: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Journald {
    fn start() -> Journald {
        let namespace = format!("balptest{}", std::process::id());
        let machine_id = std::fs::read_to_string("/etc/machine-id")
            .expect("/etc/machine-id")
            .trim()
            .to_owned();
        let run_dir = PathBuf::from(format!("/run/systemd/journal.{namespace}"));
        let dirs = vec![
            run_dir.clone(),
            PathBuf::from(format!("/var/log/journal/{machine_id}.{namespace}")),
            PathBuf::from(format!("/run/log/journal/{machine_id}.{namespace}")),
        ];
        let child = Command::new(JOURNALD)
            .arg(&namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start systemd-journald");
        let socket = run_dir.join("socket");
        let j = Journald {
            child,
            namespace,
            socket,
            dirs,
        };
        assert!(
            wait_until(Duration::from_secs(10), || j.socket.exists()),
            "systemd-journald made no socket at {}",
            j.socket.display()
        );
        j
    }

    /// Log `message` as sshd would, through the native protocol.
    fn log(&self, message: &str) {
        let sock = UnixDatagram::unbound().expect("datagram socket");
        let entry =
            format!("MESSAGE={message}\nSYSLOG_IDENTIFIER=sshd\nSYSLOG_FACILITY=10\nPRIORITY=6\n");
        sock.send_to(entry.as_bytes(), &self.socket)
            .expect("send to journald");
    }

    /// Entries `start..start + n`: even ones accepted, odd ones failed, each its own user.
    fn log_logins(&self, start: u32, n: u32) {
        for i in start..start + n {
            let verb = if i % 2 == 0 { "Accepted" } else { "Failed" };
            self.log(&format!(
                "{verb} password for user{i} from 192.0.2.{} port {} ssh2",
                i % 250 + 1,
                40000 + i
            ));
        }
    }

    /// How many sshd entries `journalctl` itself shows (so the test waits for journald,
    /// which writes asynchronously, before it judges the agent).
    fn count(&self) -> usize {
        let out = Command::new("journalctl")
            .arg(format!("--namespace={}", self.namespace))
            .args(["--output=cat", "--no-pager", "SYSLOG_IDENTIFIER=sshd"])
            .output()
            .expect("journalctl");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn runnable() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let have = Path::new(JOURNALD).exists() && Path::new("/etc/machine-id").exists();
    common::e2e::runnable(
        "the real-journal test",
        root && have,
        &format!("needs root ({root}), {JOURNALD} and /etc/machine-id ({have})"),
    )
}

fn requestor(e: &serde_json::Value) -> String {
    e["agent"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["requestor"] == true)
        .and_then(|a| a["who"]["identifier"]["value"].as_str())
        .unwrap_or("-")
        .to_owned()
}

/// user → the distinct event ids seen for that user's entry.
fn ids_by_user(events: &[serde_json::Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in events {
        m.entry(requestor(e))
            .or_default()
            .insert(e["id"].as_str().unwrap_or_default().to_owned());
    }
    m
}

fn pids_of_journalctl(namespace: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("journalctl .*--namespace={namespace}")])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn real_journal_is_followed_across_sigkill_and_journalctl_exits() {
    if !runnable() {
        return;
    }
    let journal = Journald::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[agent]
state_dir = "state"
hostname = "test-host"
[[sources]]
name = "journal"
type = "journald"
namespace = "{ns}"
match = ["SYSLOG_IDENTIFIER=sshd"]
read_from = "beginning"
parsers = ["sshd"]
timezone = "UTC"
[output]
type = "directory"
path = "out"
max_events = 20
flush_interval = "100ms"
"#,
            ns = journal.namespace
        ),
    );
    let out = dir.path().join("out");
    let users = |n: u32| -> BTreeSet<String> { (0..n).map(|i| format!("user{i}")).collect() };
    let seen =
        |out: &Path| -> BTreeSet<String> { ids_by_user(&events_in_dir(out)).into_keys().collect() };

    // 1. Entries written before the agent starts are read from the beginning.
    journal.log_logins(0, 40);
    assert!(wait_until(Duration::from_secs(10), || journal.count() == 40));
    let mut agent = Agent::start(&cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(30), || seen(&out) == users(40)),
        "first 40 entries: {:?}\n{}",
        seen(&out).len(),
        agent.log()
    );

    // 2. SIGKILL, entries written while it is down, restart: resumed after the saved cursor.
    agent.signal("KILL");
    agent.wait(Duration::from_secs(10)).expect("killed");
    journal.log_logins(40, 40);
    assert!(wait_until(Duration::from_secs(10), || journal.count() == 80));
    let mut agent = Agent::start(&cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(30), || seen(&out) == users(80)),
        "after SIGKILL: {}\n{}",
        seen(&out).len(),
        agent.log()
    );

    // 3. journalctl killed under the agent while entries keep coming: restarted after the
    //    last cursor read, the exit logged, nothing skipped.
    let before = pids_of_journalctl(&journal.namespace);
    assert_eq!(before.len(), 1, "one journalctl: {before:?}");
    journal.log_logins(80, 20);
    let status = Command::new("kill")
        .args(["-KILL", &before[0]])
        .status()
        .unwrap();
    assert!(status.success());
    journal.log_logins(100, 20);
    assert!(wait_until(Duration::from_secs(10), || journal.count() == 120));
    assert!(
        wait_until(Duration::from_secs(30), || seen(&out) == users(120)),
        "after journalctl was killed: {}\n{}",
        seen(&out).len(),
        agent.log()
    );
    let after = pids_of_journalctl(&journal.namespace);
    assert!(
        after.len() == 1 && after != before,
        "journalctl restarted: {before:?} -> {after:?}"
    );
    assert!(agent.log().contains("journalctl exited"), "{}", agent.log());
    let status = agent.stop();
    assert!(status.success(), "{}", agent.log());

    // Exactly one event per entry: a repeat after SIGKILL is only allowed with the same id.
    let events = events_in_dir(&out);
    let by_user = ids_by_user(&events);
    assert_eq!(by_user.keys().cloned().collect::<BTreeSet<_>>(), users(120));
    for (user, ids) in &by_user {
        assert_eq!(ids.len(), 1, "{user}: {ids:?}");
    }
    // The entry's fields arrive as the syslog shape: outcome by verb, the client address,
    // the journal's own time (not the read time) and the sender's host name.
    let distinct: BTreeMap<&str, &serde_json::Value> = events
        .iter()
        .map(|e| (e["id"].as_str().unwrap_or_default(), e))
        .collect();
    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    for e in distinct.values() {
        *by_outcome
            .entry(e["outcome"].as_str().unwrap_or("-").to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_outcome, [("0".into(), 60), ("4".into(), 60)].into());
    let text = serde_json::to_string(&events).unwrap();
    assert!(text.contains("192.0.2.1\""), "client address kept");
    let now = jiff::Timestamp::now();
    for e in distinct.values() {
        let recorded: jiff::Timestamp = e["recorded"].as_str().unwrap().parse().unwrap();
        let age = now.duration_since(recorded).as_secs();
        assert!((0..600).contains(&age), "recorded {recorded} vs now {now}");
    }
    assert_conformant(&events);
}

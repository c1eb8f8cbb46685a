//! `type = "journald"` end to end: the real binary runs a stand-in `journalctl` (a shell
//! script first on `PATH`) that replays recorded JSON entries, honours `--after-cursor` and
//! records its arguments, so exits and odd entries can be staged at will; the real journal
//! is exercised by `tests/journald_real.rs`.

mod common;

use common::agent::{bin, events_in_dir, wait_until, write_config};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Prints the entries of `$FAKE_JOURNAL` after `--after-cursor`; with `--follow`, then waits
/// (as journalctl does) unless `$FAKE_JOURNAL_EXIT` is set (to test restarts).
const FAKE_JOURNALCTL: &str = r#"#!/bin/sh
printf '%s\n' "$*" >> "$FAKE_JOURNAL_ARGV"
printf '%s\n' "$$" > "$FAKE_JOURNAL_ARGV.pid"
after=""
follow=0
for a in "$@"; do
  case "$a" in
    --after-cursor=*) after="${a#--after-cursor=}" ;;
    --follow) follow=1 ;;
  esac
done
skip=0
[ -n "$after" ] && skip=1
while IFS= read -r line; do
  if [ "$skip" = 1 ]; then
    case "$line" in *"\"__CURSOR\":\"$after\""*) skip=0 ;; esac
    continue
  fi
  printf '%s\n' "$line"
done < "$FAKE_JOURNAL"
if [ "$follow" = 1 ] && [ -z "$FAKE_JOURNAL_EXIT" ]; then
  exec sleep 600
fi
"#;

fn entry(i: u32, message: &str) -> String {
    let pid = 24000 + i;
    let micros = 1_764_084_164_172_367u64 + u64::from(i) * 1_000_000;
    format!(
        r#"{{"__CURSOR":"s=0f3a9c1e;i={i:x};b=7d2e;m={i:x}00;t={micros:x};x=9a{i}","__REALTIME_TIMESTAMP":"{micros}","__MONOTONIC_TIMESTAMP":"{i}00","_BOOT_ID":"7d2e","PRIORITY":"6","SYSLOG_FACILITY":"10","_UID":"0","_GID":"0","_COMM":"sshd","_EXE":"/usr/sbin/sshd","_SYSTEMD_UNIT":"ssh.service","_TRANSPORT":"syslog","_HOSTNAME":"fhir-app01","SYSLOG_IDENTIFIER":"sshd","_PID":"{pid}","SYSLOG_PID":"{pid}","MESSAGE":"{message}"}}"#
    )
}

fn journal_entries(start: u32, n: u32) -> Vec<String> {
    (start..start + n)
        .map(|i| {
            if i % 2 == 0 {
                entry(
                    i,
                    &format!("Accepted password for user{i} from 192.0.2.{i} port 5{i:04} ssh2"),
                )
            } else {
                entry(
                    i,
                    &format!("Failed password for user{i} from 192.0.2.{i} port 5{i:04} ssh2"),
                )
            }
        })
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    journal: PathBuf,
    argv: PathBuf,
    config: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let script = bin_dir.join("journalctl");
    std::fs::write(&script, FAKE_JOURNALCTL).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(
        dir.path(),
        r#"
[agent]
state_dir = "state"
hostname = "test-host"
[[sources]]
name = "journal"
type = "journald"
match = ["_SYSTEMD_UNIT=ssh.service"]
read_from = "beginning"
parsers = ["sshd"]
timezone = "UTC"
[output]
type = "directory"
path = "out"
max_events = 100
flush_interval = "100ms"
"#,
    );
    Setup {
        journal: dir.path().join("journal.json"),
        argv: dir.path().join("argv.log"),
        bin_dir,
        config,
        dir,
    }
}

impl Setup {
    fn write_journal(&self, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&self.journal, text).unwrap();
    }

    fn agent(&self, once: bool, exit_each_time: bool) -> Child {
        let path = format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(bin());
        cmd.arg("run").arg("-c").arg(&self.config);
        if once {
            cmd.arg("--once");
        }
        if exit_each_time {
            cmd.env("FAKE_JOURNAL_EXIT", "1");
        }
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.stderr"))
            .unwrap();
        cmd.env("PATH", path)
            .env("FAKE_JOURNAL", &self.journal)
            .env("FAKE_JOURNAL_ARGV", &self.argv)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.stderr")).unwrap_or_default()
    }

    fn events(&self) -> Vec<serde_json::Value> {
        events_in_dir(&self.dir.path().join("out"))
    }

    fn argv(&self) -> Vec<String> {
        std::fs::read_to_string(&self.argv)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            panic!("agent did not exit in {timeout:?}");
        }
    }
}

fn term(child: &Child) {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn ids(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn users(events: &[serde_json::Value]) -> BTreeSet<String> {
    let text = serde_json::to_string(events).unwrap();
    (0..100)
        .map(|i| format!("user{i}"))
        .filter(|u| text.contains(&format!("\"{u}\"")))
        .collect()
}

#[test]
fn journal_entries_become_events_and_restart_resumes_after_the_cursor() {
    let s = setup();
    let first = journal_entries(0, 4);
    s.write_journal(&first);
    let mut agent = s.agent(true, false);
    let status = wait_exit(&mut agent, Duration::from_secs(30));
    assert!(status.success(), "{}", s.log());
    let events = s.events();
    assert_eq!(events.len(), 4, "{}", s.log());
    common::agent::assert_conformant(&events);
    assert_eq!(users(&events).len(), 4);
    let argv = s.argv();
    assert_eq!(argv.len(), 1, "{argv:?}");
    assert!(argv[0].contains("--output=json"), "{argv:?}");
    assert!(
        !argv[0].contains("--follow"),
        "--once reads without following"
    );
    assert!(!argv[0].contains("--after-cursor"), "{argv:?}");
    assert!(argv[0].ends_with("_SYSTEMD_UNIT=ssh.service"), "{argv:?}");
    let positions = std::fs::read_to_string(s.dir.path().join("state/positions.json")).unwrap();
    let last_cursor = "s=0f3a9c1e;i=3;";
    assert!(positions.contains(last_cursor), "{positions}");

    // Two more entries: the second run resumes after the saved cursor; nothing repeats.
    let mut all = first.clone();
    all.extend(journal_entries(4, 2));
    s.write_journal(&all);
    let mut agent = s.agent(true, false);
    assert!(wait_exit(&mut agent, Duration::from_secs(30)).success());
    let argv = s.argv();
    assert!(
        argv[1].contains("--after-cursor=s=0f3a9c1e;i=3;"),
        "{argv:?}"
    );
    let events = s.events();
    assert_eq!(events.len(), 6, "{}", s.log());
    let distinct: BTreeSet<_> = ids(&events).into_iter().collect();
    assert_eq!(distinct.len(), 6, "no duplicates");
    assert_eq!(users(&events).len(), 6);
}

#[test]
fn journalctl_that_exits_is_restarted_after_the_last_cursor() {
    let s = setup();
    s.write_journal(&journal_entries(0, 2));
    let mut agent = s.agent(false, true);
    assert!(
        wait_until(Duration::from_secs(20), || s.events().len() >= 2),
        "{}",
        s.log()
    );
    // journalctl "exits" after each replay; new entries appear for the next run.
    let mut all = journal_entries(0, 2);
    all.extend(journal_entries(2, 3));
    s.write_journal(&all);
    assert!(
        wait_until(Duration::from_secs(20), || s.events().len() >= 5),
        "{}",
        s.log()
    );
    // Let a few more restarts happen: they must not repeat anything.
    std::thread::sleep(Duration::from_millis(1500));
    term(&agent);
    assert!(wait_exit(&mut agent, Duration::from_secs(20)).success());
    let events = s.events();
    let all_ids = ids(&events);
    let distinct: BTreeSet<_> = all_ids.iter().collect();
    assert_eq!(distinct.len(), 5, "{}", s.log());
    assert_eq!(all_ids.len(), 5, "no duplicates across restarts");
    let argv = s.argv();
    assert!(argv.len() >= 2, "{argv:?}");
    assert!(argv[0].contains("--follow") && argv[0].contains("--no-tail"));
    assert!(
        argv[1..]
            .iter()
            .all(|a| a.contains("--after-cursor=s=0f3a9c1e;i=")),
        "{argv:?}"
    );
    assert!(s.log().contains("journalctl exited"), "{}", s.log());
}

#[test]
fn following_journalctl_is_stopped_with_the_agent() {
    let s = setup();
    s.write_journal(&journal_entries(0, 3));
    let mut agent = s.agent(false, false);
    assert!(
        wait_until(Duration::from_secs(20), || s.events().len() >= 3),
        "{}",
        s.log()
    );
    term(&agent);
    assert!(wait_exit(&mut agent, Duration::from_secs(20)).success());
    assert_eq!(s.argv().len(), 1, "no restart while following");
    let positions = std::fs::read_to_string(s.dir.path().join("state/positions.json")).unwrap();
    assert!(positions.contains("s=0f3a9c1e;i=2;"), "{positions}");
    // The stand-in (by then `sleep 600`) was killed and reaped with the agent.
    let pid = std::fs::read_to_string(s.argv.with_extension("log.pid")).unwrap();
    let proc_dir = Path::new("/proc").join(pid.trim());
    assert!(
        !proc_dir.exists(),
        "journalctl {} still running",
        pid.trim()
    );
}

//! `type = "journald"`: follow the systemd journal through `journalctl --output=json`.
//!
//! In: the source config (`match`, `read_from`, `max_line_bytes`) and the cursor saved for
//! it. Out: one [`LogLine`] per journal entry, whose text is the entry rewritten as a line of
//! rsyslog's file format (`<RFC 3339 UTC µs> <_HOSTNAME> <SYSLOG_IDENTIFIER>[<_PID>]:
//! <MESSAGE>`), so the `syslog` decoder and every preset work unchanged; and, after the
//! lines it covers, a [`SourceMsg::Position`] carrying the journal cursor of the last one.
//!
//! Guarantees:
//! * The cursor obeys the rule of file offsets: it is queued behind the events of its lines
//!   and saved only after the spool commit that holds them. A restart resumes with
//!   `--after-cursor`, so no entry is skipped; entries read after the last saved cursor are
//!   read again and give the same event ids.
//! * Event ids are stable across re-reads: the stream key is `journald:<source name>` and
//!   a line's `offset` (and `end`) is FNV-1a 64 of the entry's `__CURSOR`, which the journal
//!   never changes.
//! * `journalctl` is found through `PATH`. If it exits while following, it is started again
//!   after the last cursor read, with a growing pause (0.5 s … 30 s), and the gap is logged.
//!   With `run --once` it runs without `--follow` and its end of output is "caught up".
//!   Restarted before any entry arrived (`read_from = "end"`, no cursor), it resumes
//!   `--since` its first start, so that gap is covered too.
//! * A `MESSAGE` that is not UTF-8 (the journal gives it as an array of bytes) is converted
//!   lossily and flagged; newlines inside a message become `#012` as rsyslog writes them, so
//!   one entry stays one line.

use crate::config::{ReadFrom, SourceConfig};
use crate::shutdown::Shutdown;
use crate::source::file::Sink;
use crate::source::{Checkpoint, LineFlags, LogLine, SourceMsg, StreamId};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Sender;

const KEY_PREFIX: &str = "journald:";
/// The program run, looked up in `PATH`.
pub const JOURNALCTL: &str = "journalctl";
/// Entries between cursor reports while entries keep coming.
const POSITION_EVERY: usize = 1000;
/// How long to wait for output before sending what was collected.
const IDLE: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An idle journal still reports its cursor this often, so the saved position never expires.
const HEARTBEAT: Duration = Duration::from_secs(3600);

/// The stream key of a journald source.
pub fn stream_key(source: &str) -> String {
    format!("{KEY_PREFIX}{source}")
}

/// Whether a stream key belongs to a journald source (its offsets are cursor hashes).
pub fn is_journald_key(key: &str) -> bool {
    key.starts_with(KEY_PREFIX)
}

/// The arguments for `journalctl`: JSON, whole fields, resume after `cursor` (else from
/// `since`, seconds since the epoch, else from the start or the end per `read_from`),
/// following unless `once`, then the matches.
pub fn journalctl_args(
    namespace: Option<&str>,
    matches: &[String],
    read_from: ReadFrom,
    cursor: Option<&str>,
    since: Option<i64>,
    once: bool,
) -> Vec<String> {
    let mut args = vec![
        "--output=json".to_owned(),
        "--all".to_owned(),
        "--no-pager".to_owned(),
        "--quiet".to_owned(),
    ];
    if let Some(ns) = namespace {
        args.push(format!("--namespace={ns}"));
    }
    if !once {
        args.push("--follow".to_owned());
    }
    let from_end = match (cursor, since) {
        (Some(c), _) => {
            args.push(format!("--after-cursor={c}"));
            false
        }
        // Restarted before any entry arrived: entries of that second may repeat (same ids).
        (None, Some(secs)) => {
            args.push(format!("--since=@{secs}"));
            false
        }
        (None, None) => read_from == ReadFrom::End,
    };
    if from_end {
        args.push("--lines=0".to_owned());
    } else if !once {
        // --follow alone shows only the last 10 entries first.
        args.push("--no-tail".to_owned());
    }
    args.extend(matches.iter().cloned());
    args
}

/// FNV-1a, 64 bit: fixed forever, so ids do not change with the Rust version.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One journal entry, rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `__CURSOR`.
    pub cursor: String,
    /// The synthesized syslog-file-format line.
    pub text: String,
    /// What had to change.
    pub flags: LineFlags,
}

/// A JSON string field, or a byte-array field converted lossily (`true` if lossy).
fn field(obj: &serde_json::Map<String, Value>, name: &str) -> Option<(String, bool)> {
    match obj.get(name)? {
        Value::String(s) => Some((s.clone(), false)),
        Value::Array(items) => {
            // Binary or non-UTF-8 values come as byte arrays; a field present several times
            // comes as an array of strings (then the first one is used).
            if let Some(Value::String(s)) = items.first() {
                return Some((s.clone(), false));
            }
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect();
            let (text, bad) = crate::source::to_text(&bytes);
            Some((text, bad))
        }
        Value::Number(n) => Some((n.to_string(), false)),
        _ => None,
    }
}

/// The stamp `__REALTIME_TIMESTAMP` (µs since the epoch) as RFC 3339 UTC with µs.
fn render_stamp(micros: i64) -> Option<String> {
    let ts = jiff::Timestamp::from_microsecond(micros).ok()?;
    let dt = jiff::tz::TimeZone::UTC.to_datetime(ts);
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond() / 1000
    ))
}

/// Rewrite one `journalctl --output=json` line; `Err` names what is wrong.
pub fn entry_from_json(json: &str, max_line_bytes: usize) -> Result<Entry, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let (cursor, _) = field(obj, "__CURSOR").ok_or("no __CURSOR")?;
    let micros: i64 = field(obj, "__REALTIME_TIMESTAMP")
        .and_then(|(s, _)| s.parse().ok())
        .ok_or("no usable __REALTIME_TIMESTAMP")?;
    let stamp = render_stamp(micros).ok_or("__REALTIME_TIMESTAMP out of range")?;
    let host = field(obj, "_HOSTNAME").map_or_else(|| "localhost".to_owned(), |(h, _)| h);
    let ident = field(obj, "SYSLOG_IDENTIFIER")
        .or_else(|| field(obj, "_COMM"))
        .map_or_else(|| "journal".to_owned(), |(i, _)| i);
    let pid = field(obj, "_PID").or_else(|| field(obj, "SYSLOG_PID"));
    let (message, lossy) = field(obj, "MESSAGE").unwrap_or_default();
    let message = message.trim_end_matches('\n').replace('\n', "#012");
    let tag = match pid {
        Some((p, _)) => format!("{ident}[{p}]"),
        None => ident,
    };
    let mut text = format!(
        "{stamp} {} {tag}: {message}",
        host.replace(char::is_whitespace, "_")
    );
    let mut flags = LineFlags {
        truncated: false,
        invalid_utf8: lossy,
    };
    if text.len() > max_line_bytes {
        let mut cut = max_line_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        flags.truncated = true;
    }
    Ok(Entry {
        cursor,
        text,
        flags,
    })
}

/// Start following the journal for one `type = "journald"` source on its own OS thread.
/// `cursor` is the saved position (resume after it). With `once`, reads what exists, sends
/// `SourceMsg::CaughtUp(source)` and returns; otherwise runs until shutdown or until the
/// receiver is gone.
pub fn spawn(
    cfg: &SourceConfig,
    cursor: Option<String>,
    tx: Sender<SourceMsg>,
    shutdown: Shutdown,
    once: bool,
) -> std::io::Result<JoinHandle<()>> {
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name(format!("journald-source-{}", cfg.name))
        .spawn(move || {
            let mut follower = Follower::new(&cfg, cursor);
            let mut sink = Sink::new(tx, shutdown.clone());
            let _ = follower.run(&mut sink, &shutdown, once);
            tracing::debug!(source = %cfg.name, "journald source stopped");
        })
}

/// Ended: shutdown, or the receiver is gone.
struct Stopped;

impl From<crate::source::file::Stopped> for Stopped {
    fn from(_: crate::source::file::Stopped) -> Stopped {
        Stopped
    }
}

struct Follower {
    stream: Arc<StreamId>,
    matches: Vec<String>,
    /// `--namespace`, when the source names one.
    namespace: Option<String>,
    read_from: ReadFrom,
    max_line_bytes: usize,
    /// The cursor of the last entry sent (in memory; saved only via the pipeline).
    cursor: Option<String>,
    /// The cursor last reported in a `Position`, and when.
    reported: Option<String>,
    reported_at: Instant,
    since_report: usize,
    /// With `read_from = "end"` and no cursor yet: when the first `journalctl` started, so a
    /// restart before any entry arrived resumes there (`--since`) instead of at the new end.
    started_secs: Option<i64>,
}

/// What a `journalctl` run ended with.
enum RunEnd {
    /// It exited (end of output with `once`, else an unexpected exit).
    Exited(String),
    /// It could not be started.
    NotStarted(std::io::Error),
}

impl Follower {
    fn new(cfg: &SourceConfig, cursor: Option<String>) -> Follower {
        Follower {
            stream: Arc::new(StreamId {
                source: Arc::from(cfg.name.as_str()),
                key: stream_key(&cfg.name),
                path: PathBuf::from("journal"),
            }),
            matches: cfg.journal_match.clone(),
            namespace: cfg.journal_namespace.clone(),
            read_from: cfg.read_from,
            max_line_bytes: (cfg.max_line_bytes.0 as usize).max(1),
            reported: cursor.clone(),
            reported_at: Instant::now(),
            cursor,
            since_report: 0,
            started_secs: None,
        }
    }

    fn run(&mut self, sink: &mut Sink, shutdown: &Shutdown, once: bool) -> Result<(), Stopped> {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let end = self.run_once(sink, shutdown, once)?;
            self.report(sink)?;
            if once {
                if let RunEnd::NotStarted(e) = &end {
                    tracing::error!(source = %self.stream.source, error = %e, "could not run journalctl; nothing read from the journal");
                }
                sink.message(SourceMsg::CaughtUp(self.stream.source.clone()))?;
                return Ok(());
            }
            if started.elapsed() > BACKOFF_MAX * 2 {
                backoff = BACKOFF_MIN;
            }
            match end {
                RunEnd::Exited(status) => tracing::warn!(
                    source = %self.stream.source,
                    %status,
                    after_cursor = self.cursor.as_deref().unwrap_or("-"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "journalctl exited; entries written meanwhile are read after the restart"
                ),
                RunEnd::NotStarted(e) => tracing::error!(
                    source = %self.stream.source,
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "could not run journalctl (is it installed and on PATH?)"
                ),
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                if shutdown.is_triggered() {
                    return Err(Stopped);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Send the cursor of the last line sent, once it moved.
    fn report(&mut self, sink: &mut Sink) -> Result<(), Stopped> {
        let due = self.cursor != self.reported || self.reported_at.elapsed() >= HEARTBEAT;
        if due && let Some(c) = &self.cursor {
            let offset = fnv1a64(c.as_bytes());
            sink.message(SourceMsg::Position(Checkpoint {
                stream: self.stream.clone(),
                offset,
                cursor: Some(c.clone()),
            }))?;
            self.reported = self.cursor.clone();
            self.reported_at = Instant::now();
        } else {
            sink.flush()?;
        }
        self.since_report = 0;
        Ok(())
    }

    /// One `journalctl` process, until it exits or shutdown.
    fn run_once(
        &mut self,
        sink: &mut Sink,
        shutdown: &Shutdown,
        once: bool,
    ) -> Result<RunEnd, Stopped> {
        let since = match (self.cursor.is_some(), self.read_from, self.started_secs) {
            (false, ReadFrom::End, None) => {
                self.started_secs = Some(jiff::Timestamp::now().as_second());
                None
            }
            (false, ReadFrom::End, Some(secs)) => Some(secs),
            _ => None,
        };
        let args = journalctl_args(
            self.namespace.as_deref(),
            &self.matches,
            self.read_from,
            self.cursor.as_deref(),
            since,
            once,
        );
        let mut child = match Command::new(JOURNALCTL)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return Ok(RunEnd::NotStarted(e)),
        };
        tracing::debug!(source = %self.stream.source, ?args, "journalctl started");
        let Some(stdout) = child.stdout.take() else {
            reap(&mut child);
            return Ok(RunEnd::NotStarted(std::io::Error::other("no stdout pipe")));
        };
        // A reader thread, so that this one can notice shutdown while journalctl is quiet.
        let (ltx, lrx) = mpsc::sync_channel::<std::io::Result<String>>(1024);
        let reader = std::thread::Builder::new()
            .name(format!("journalctl-reader-{}", self.stream.source))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let stop = line.is_err();
                    if ltx.send(line).is_err() || stop {
                        break;
                    }
                }
            });
        if let Err(e) = reader {
            reap(&mut child);
            return Ok(RunEnd::NotStarted(e));
        }
        loop {
            if shutdown.is_triggered() {
                reap(&mut child);
                return Err(Stopped);
            }
            match lrx.recv_timeout(IDLE) {
                Ok(Ok(json)) => {
                    if json.trim().is_empty() {
                        continue;
                    }
                    if let Err(stopped) = self.line(&json, sink) {
                        reap(&mut child);
                        return Err(stopped);
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(source = %self.stream.source, error = %e, "reading journalctl output failed");
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(stopped) = self.report(sink) {
                        reap(&mut child);
                        return Err(stopped);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = match child.wait() {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    };
                    return Ok(RunEnd::Exited(status));
                }
            }
        }
    }

    fn line(&mut self, json: &str, sink: &mut Sink) -> Result<(), Stopped> {
        let entry = match entry_from_json(json, self.max_line_bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(source = %self.stream.source, error = %e, "journal entry skipped");
                return Ok(());
            }
        };
        let offset = fnv1a64(entry.cursor.as_bytes());
        sink.push(LogLine {
            stream: self.stream.clone(),
            offset,
            end: offset,
            text: entry.text,
            flags: entry.flags,
        })?;
        self.cursor = Some(entry.cursor);
        self.since_report += 1;
        if self.since_report >= POSITION_EVERY {
            self.report(sink)?;
        }
        Ok(())
    }
}

/// Stop a `journalctl` run and collect it (it only reads, so killing it loses nothing).
fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSHD: &str = r#"{"__CURSOR":"s=6f1c;i=1a2;b=9e;m=1;t=5f;x=1","__REALTIME_TIMESTAMP":"1764080564172367","_HOSTNAME":"web01","SYSLOG_IDENTIFIER":"sshd","_PID":"4242","MESSAGE":"Accepted password for alice from 192.0.2.10 port 51234 ssh2","_SYSTEMD_UNIT":"ssh.service"}"#;

    #[test]
    fn entry_becomes_a_syslog_file_line() {
        let e = entry_from_json(SSHD, 65536).unwrap();
        assert_eq!(e.cursor, "s=6f1c;i=1a2;b=9e;m=1;t=5f;x=1");
        assert_eq!(
            e.text,
            "2025-11-25T14:22:44.172367+00:00 web01 sshd[4242]: Accepted password for alice from 192.0.2.10 port 51234 ssh2"
        );
        assert_eq!(e.flags, LineFlags::default());
    }

    #[test]
    fn synthesized_line_decodes_with_the_syslog_decoder() {
        let e = entry_from_json(SSHD, 65536).unwrap();
        let d = crate::decode::syslog::SyslogDecoder::new(jiff::tz::TimeZone::UTC)
            .decode(&e.text, jiff::Timestamp::now());
        assert!(!d.malformed, "{d:?}");
    }

    #[test]
    fn byte_array_message_is_lossy_and_flagged() {
        let json = r#"{"__CURSOR":"c1","__REALTIME_TIMESTAMP":"0","MESSAGE":[104,105,255,10,120],"SYSLOG_IDENTIFIER":"x"}"#;
        let e = entry_from_json(json, 65536).unwrap();
        assert_eq!(
            e.text,
            "1970-01-01T00:00:00.000000+00:00 localhost x: hi\u{fffd}#012x"
        );
        assert!(e.flags.invalid_utf8);
    }

    #[test]
    fn long_entry_is_cut_and_flagged() {
        let e = entry_from_json(SSHD, 50).unwrap();
        assert_eq!(e.text.len(), 50);
        assert!(e.flags.truncated);
    }

    #[test]
    fn entries_without_cursor_or_time_are_rejected() {
        assert!(entry_from_json(r#"{"MESSAGE":"x"}"#, 100).is_err());
        assert!(entry_from_json(r#"{"__CURSOR":"c","MESSAGE":"x"}"#, 100).is_err());
        assert!(entry_from_json("[1]", 100).is_err());
    }

    #[test]
    fn arguments_resume_after_the_cursor() {
        let m = vec!["_SYSTEMD_UNIT=ssh.service".to_owned()];
        let a = journalctl_args(None, &m, ReadFrom::End, Some("c9"), None, false);
        assert!(a.contains(&"--follow".to_owned()));
        assert!(a.contains(&"--after-cursor=c9".to_owned()));
        assert!(a.contains(&"--no-tail".to_owned()));
        assert_eq!(a.last().unwrap(), "_SYSTEMD_UNIT=ssh.service");
        let a = journalctl_args(None, &[], ReadFrom::End, None, None, false);
        assert!(a.contains(&"--lines=0".to_owned()));
        let a = journalctl_args(None, &[], ReadFrom::End, None, Some(1_764_000_000), false);
        assert!(a.contains(&"--since=@1764000000".to_owned()), "{a:?}");
        assert!(a.contains(&"--no-tail".to_owned()) && !a.contains(&"--lines=0".to_owned()));
        let a = journalctl_args(Some("fhir"), &[], ReadFrom::Beginning, None, None, true);
        assert!(a.contains(&"--namespace=fhir".to_owned()), "{a:?}");
        assert!(
            !a.iter()
                .any(|x| x.starts_with("--follow") || x.starts_with("--lines"))
        );
    }

    #[test]
    fn offsets_are_cursor_hashes() {
        assert!(is_journald_key(&stream_key("j")));
        assert_eq!(fnv1a64(b"c1"), fnv1a64(b"c1"));
        assert_ne!(fnv1a64(b"c1"), fnv1a64(b"c2"));
    }
}

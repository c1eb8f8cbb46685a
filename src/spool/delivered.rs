//! The delivered log: which events the output settled, kept after their spool segments are
//! deleted, so that `balp-agent arr check` can compare the ARR with what the agent sent.
//!
//! `<state_dir>/delivered` (and the previous file, `delivered.1`) holds one line per settled
//! event, `seq TAB event-id TAB recorded LF`, after a `# balp-agent delivered v1` header:
//! the spool seq, the event's UUID and its `AuditEvent.recorded` as sent.
//!
//! Cost: the delivery task hands the lines of every Bundle settled since the last ack to
//! [`Spool::ack_delivered`], which writes them with one `write` (no fsync) just before the
//! ack file is replaced: the ack's own fsyncs are the only ones on that path. The log is
//! `fdatasync`ed only right before the spool deletes a segment (once per 64 MiB segment
//! under load), because until then the records are still on disk: a power failure that
//! loses unsynced lines is repaired when the spool is opened, from the segments, for every
//! acknowledged seq above the log's last one ([`DeliveredLog::last_seq`]). A crash between
//! the write and the ack leaves lines for events the spool sends again, which only repeats
//! ids: the log never lacks an event the spool has forgotten.
//!
//! [`Spool::ack_delivered`]: super::Spool::ack_delivered
//!
//! When `delivered` would pass [`ROTATE_BYTES`], it becomes `delivered.1` (the old one is
//! dropped), so the log keeps at least the last `ROTATE_BYTES` of lines (about 700 000
//! events). A torn last line (the agent killed in the middle of a write) is cut off when the
//! log is opened and skipped by readers, which never take the spool lock (a read that a
//! rotation overtook is repeated).

use super::{SpoolError, fsync_dir, io_err};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The current delivered log under `state_dir`.
pub const DELIVERED_FILE: &str = "delivered";
/// The previous one (after a rotation).
pub const DELIVERED_OLD_FILE: &str = "delivered.1";
/// The first line of every delivered log file.
pub const HEADER: &str = "# balp-agent delivered v1\n";
/// `delivered` is rotated before it grows past this size.
pub const ROTATE_BYTES: u64 = 64 << 20;

/// One settled event as the log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredEntry {
    /// Its spool seq.
    pub seq: u64,
    /// The event id.
    pub id: Uuid,
    /// `AuditEvent.recorded` as sent (empty if the event had none).
    pub recorded: String,
}

/// The line for one settled event, appended to `out`. `json` is the event as sent; its
/// `recorded` is found by its key: the agent's own serializer writes that key once, at the
/// top level, and a `"` inside a JSON string is always escaped, so the first match is it.
pub fn push_line(out: &mut String, seq: u64, id: &Uuid, json: &str) {
    use std::fmt::Write as _;
    const KEY: &str = r#""recorded":""#;
    let recorded = memchr::memmem::find(json.as_bytes(), KEY.as_bytes())
        .map(|at| &json[at + KEY.len()..])
        .and_then(|rest| rest.find('"').map(|end| &rest[..end]))
        .unwrap_or("");
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{seq}\t{}\t{recorded}", id.hyphenated());
}

/// The writer, owned by the spool (lines go in with [`Spool::ack_delivered`]).
///
/// [`Spool::ack_delivered`]: super::Spool::ack_delivered
#[derive(Debug)]
pub struct DeliveredLog {
    dir: PathBuf,
    file: File,
    len: u64,
    rotate_at: u64,
    /// Lines written since the last `fdatasync`.
    dirty: bool,
    /// The highest seq in the file's last lines (0: none).
    last_seq: u64,
}

impl DeliveredLog {
    /// Open (or create) `<state_dir>/delivered` for appending; a torn last line is cut off.
    pub fn open(state_dir: &Path) -> Result<DeliveredLog, SpoolError> {
        DeliveredLog::open_with(state_dir, ROTATE_BYTES)
    }

    /// [`open`](Self::open) with another rotation size (tests).
    pub fn open_with(state_dir: &Path, rotate_at: u64) -> Result<DeliveredLog, SpoolError> {
        let path = state_dir.join(DELIVERED_FILE);
        let mut file = crate::private::options()
            .read(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let len = complete_len(&mut file).map_err(io_err("read", &path))?;
        let last_seq = tail_max_seq(&mut file, len).map_err(io_err("read", &path))?;
        let mut log = DeliveredLog {
            dir: state_dir.to_path_buf(),
            file,
            len,
            rotate_at,
            dirty: false,
            last_seq,
        };
        if len == 0 {
            log.file.set_len(0).map_err(io_err("truncate", &path))?;
            log.write_raw(HEADER.as_bytes())?;
        } else {
            // Only a torn line lies past `len`.
            log.file.set_len(len).map_err(io_err("truncate", &path))?;
        }
        Ok(log)
    }

    /// The highest seq the log names at its end (lines are appended in seq order; only a
    /// Bundle sent again after a crash repeats lower ones). Recovery rebuilds the lines of
    /// acknowledged records above it from the segments.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Append lines made by [`push_line`] (in seq order), without `fdatasync`: they are
    /// visible to readers at once, and [`sync`](Self::sync) makes them durable before the
    /// spool deletes a segment holding their records.
    pub fn write(&mut self, lines: &str) -> Result<(), SpoolError> {
        if lines.is_empty() {
            return Ok(());
        }
        if self.len + lines.len() as u64 > self.rotate_at && self.len > HEADER.len() as u64 {
            self.rotate()?;
        }
        self.write_raw(lines.as_bytes())?;
        self.dirty = true;
        if let Some(seq) = lines
            .lines()
            .next_back()
            .and_then(|l| parse_line(l.as_bytes()))
            .map(|e| e.seq)
        {
            self.last_seq = self.last_seq.max(seq);
        }
        Ok(())
    }

    /// `fdatasync` what [`write`](Self::write) added, if anything.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if !self.dirty {
            return Ok(());
        }
        let path = self.dir.join(DELIVERED_FILE);
        self.file
            .sync_data()
            .map_err(|source| SpoolError::Fsync { path, source })?;
        self.dirty = false;
        Ok(())
    }

    /// Whether everything written is synced (tests).
    #[cfg(test)]
    pub(crate) fn is_synced(&self) -> bool {
        !self.dirty
    }

    /// [`write`](Self::write), then [`sync`](Self::sync).
    pub fn append(&mut self, lines: &str) -> Result<(), SpoolError> {
        self.write(lines)?;
        self.sync()
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let path = self.dir.join(DELIVERED_FILE);
        self.file
            .seek(SeekFrom::Start(self.len))
            .and_then(|_| self.file.write_all(bytes))
            .map_err(io_err("write", &path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// `delivered` → `delivered.1` (replacing it), then a fresh `delivered`.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        // The retired file's lines become durable first: recovery rebuilds only the end of
        // the current file.
        self.sync()?;
        let path = self.dir.join(DELIVERED_FILE);
        let old = self.dir.join(DELIVERED_OLD_FILE);
        std::fs::rename(&path, &old).map_err(io_err("rename into place", &old))?;
        self.file = crate::private::options()
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        self.len = 0;
        self.write_raw(HEADER.as_bytes())?;
        self.file.sync_data().map_err(|source| SpoolError::Fsync {
            path: path.clone(),
            source,
        })?;
        fsync_dir(&self.dir)
    }
}

/// How far back [`DeliveredLog::last_seq`] looks: past any Bundle resent after a crash.
const TAIL_BYTES: u64 = 1 << 20;

/// The highest seq in the complete lines of the last [`TAIL_BYTES`] before `len`.
fn tail_max_seq(file: &mut File, len: u64) -> io::Result<u64> {
    let start = len.saturating_sub(TAIL_BYTES);
    let mut buf = vec![0u8; (len - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut buf)?;
    // A window that starts mid-line skips that first, partial line.
    let from = if start == 0 {
        0
    } else {
        memchr::memchr(b'\n', &buf).map_or(buf.len(), |i| i + 1)
    };
    Ok(buf[from..]
        .split(|b| *b == b'\n')
        .filter_map(parse_line)
        .map(|e| e.seq)
        .max()
        .unwrap_or(0))
}

/// The length of the file up to and including its last line feed (0 if it has none).
fn complete_len(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = memchr::memrchr(b'\n', &buf[..n]) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// What [`read`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveredRead {
    /// Each event id once, with its latest line (a redelivery after a crash repeats ids).
    pub events: HashMap<Uuid, DeliveredEntry>,
    /// Lines that did not parse (a torn last line, damage), skipped.
    pub skipped: u64,
    /// Lines read.
    pub lines: u64,
}

/// Read `delivered.1` and `delivered` under `state_dir` without any lock: a line the agent
/// is writing at this moment (no line feed yet) is left out. Absent files read as empty.
pub fn read(state_dir: &Path) -> Result<DeliveredRead, SpoolError> {
    let mut out = DeliveredRead::default();
    visit(state_dir, |line| {
        out.lines += 1;
        match line.and_then(parse_line) {
            Some(e) => {
                out.events.insert(e.id, e);
            }
            None => out.skipped += 1,
        }
    })?;
    Ok(out)
}

/// Only the ids of [`read`] (a tenth of its memory for a long log).
pub fn read_ids(state_dir: &Path) -> Result<std::collections::HashSet<Uuid>, SpoolError> {
    let mut ids = std::collections::HashSet::new();
    visit(state_dir, |line| {
        if let Some(e) = line.and_then(parse_line) {
            ids.insert(e.id);
        }
    })?;
    Ok(ids)
}

/// Hand every entry line of `delivered.1`, then `delivered`, to `each` (`None`: a torn
/// line). A rotation while reading would hide the lines that moved, so the read is
/// repeated if `delivered` was replaced meanwhile (`each` sees only the final read).
fn visit(state_dir: &Path, mut each: impl FnMut(Option<&[u8]>)) -> Result<(), SpoolError> {
    use std::os::unix::fs::MetadataExt;
    let current = state_dir.join(DELIVERED_FILE);
    let inode = || std::fs::metadata(&current).map(|m| m.ino()).ok();
    for _ in 0..3 {
        let before = inode();
        let mut files = Vec::with_capacity(2);
        for name in [DELIVERED_OLD_FILE, DELIVERED_FILE] {
            let path = state_dir.join(name);
            match std::fs::read(&path) {
                Ok(b) => files.push(b),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("read", &path)(e)),
            }
        }
        if inode() != before {
            continue;
        }
        for bytes in &files {
            let complete = memchr::memrchr(b'\n', bytes).map_or(0, |i| i + 1);
            for line in bytes[..complete].split(|b| *b == b'\n') {
                if !line.is_empty() && !line.starts_with(b"#") {
                    each(Some(line));
                }
            }
            if complete < bytes.len() {
                each(None);
            }
        }
        return Ok(());
    }
    Err(SpoolError::Io {
        op: "read (it kept being rotated)",
        path: current,
        source: io::Error::other("rotated while being read"),
    })
}

/// Events still in the spool (not acknowledged), read without the spool lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolIds {
    /// The acknowledged seq from the ack file (0: none).
    pub acked: u64,
    /// Every event id in a record above `acked`.
    pub pending: std::collections::HashSet<Uuid>,
}

/// The ids of the events the spool under `state_dir` still holds above its ack, read from
/// the segment files as they are now (a running agent may append or delete meanwhile: a
/// segment deleted under the reader was fully acknowledged, and a record not written
/// completely yet is not read).
pub fn spool_ids(state_dir: &Path) -> Result<SpoolIds, SpoolError> {
    use super::format::{self, SEG_HDR_LEN};
    use super::scan::{Frame, Scanner};
    let dir = state_dir.join("spool");
    let mut out = SpoolIds::default();
    if !dir.exists() {
        return Ok(out);
    }
    let ack = dir.join("ack");
    out.acked = match std::fs::read(&ack) {
        Ok(b) => format::decode_ack(&b).unwrap_or(0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io_err("read", &ack)(e)),
    };
    for (_, path) in super::list_segments(&dir)? {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        if len < SEG_HDR_LEN as u64 {
            continue;
        }
        let mut scanner =
            Scanner::new(file, SEG_HDR_LEN as u64, len).map_err(io_err("read", &path))?;
        loop {
            match scanner.next_frame().map_err(io_err("read", &path))? {
                Frame::Record { seq, payload, .. } => {
                    if seq > out.acked
                        && let Some(p) = format::decode_payload(&payload)
                    {
                        out.pending.insert(p.id);
                    }
                }
                Frame::Corrupt { .. } => {}
                Frame::Torn { .. } | Frame::UnknownVersion { .. } | Frame::End => break,
            }
        }
    }
    Ok(out)
}

fn parse_line(line: &[u8]) -> Option<DeliveredEntry> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split('\t');
    // No seq above MAX_SEQ is ever written; a larger one is a damaged line (the log has no
    // checksum), skipped like any other so that `last_seq + 1` cannot overflow.
    let seq = parts
        .next()?
        .parse()
        .ok()
        .filter(|s| *s <= super::format::MAX_SEQ)?;
    let id = Uuid::parse_str(parts.next()?).ok()?;
    let recorded = parts.next()?.to_owned();
    if parts.next().is_some() {
        return None;
    }
    Some(DeliveredEntry { seq, id, recorded })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u128) -> (Uuid, String) {
        let id = Uuid::from_u128(n);
        let json = format!(
            r#"{{"resourceType":"AuditEvent","id":"{id}","outcomeDesc":"x\"recorded\":\"no","recorded":"2026-11-25T15:22:{:02}+01:00","agent":[]}}"#,
            n % 60
        );
        (id, json)
    }

    fn lines(range: std::ops::Range<u128>) -> String {
        let mut s = String::new();
        for n in range {
            let (id, json) = event(n);
            push_line(&mut s, n as u64, &id, &json);
        }
        s
    }

    #[test]
    fn round_trip_keeps_seq_id_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DeliveredLog::open(dir.path()).unwrap();
        log.append(&lines(1..4)).unwrap();
        log.append("").unwrap();
        log.append(&lines(4..6)).unwrap();
        drop(log);
        let r = read(dir.path()).unwrap();
        assert_eq!((r.lines, r.skipped, r.events.len()), (5, 0, 5));
        let e = &r.events[&Uuid::from_u128(2)];
        assert_eq!(e.seq, 2);
        assert_eq!(
            e.recorded, "2026-11-25T15:22:02+01:00",
            "an escaped key inside a string is not taken for `recorded`"
        );
        let text = std::fs::read_to_string(dir.path().join(DELIVERED_FILE)).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        // Reopening appends after what is there.
        let mut log = DeliveredLog::open(dir.path()).unwrap();
        log.append(&lines(6..7)).unwrap();
        assert_eq!(read(dir.path()).unwrap().events.len(), 6);
    }

    #[test]
    fn an_event_without_recorded_has_an_empty_time() {
        let mut s = String::new();
        push_line(
            &mut s,
            7,
            &Uuid::from_u128(7),
            r#"{"resourceType":"AuditEvent"}"#,
        );
        assert_eq!(s, format!("7\t{}\t\n", Uuid::from_u128(7)));
        assert_eq!(
            parse_line(s.trim_end_matches('\n').as_bytes())
                .unwrap()
                .recorded,
            ""
        );
    }

    #[test]
    fn a_torn_tail_is_skipped_by_readers_and_cut_off_by_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DeliveredLog::open(dir.path()).unwrap();
        log.append(&lines(1..3)).unwrap();
        drop(log);
        // What a SIGKILL in the middle of a write leaves: part of a line, no line feed.
        let path = dir.path().join(DELIVERED_FILE);
        let torn = &lines(3..4)[..20];
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(torn.as_bytes())
            .unwrap();
        let r = read(dir.path()).unwrap();
        assert_eq!((r.events.len(), r.skipped), (2, 1));
        let mut log = DeliveredLog::open(dir.path()).unwrap();
        log.append(&lines(3..5)).unwrap();
        let r = read(dir.path()).unwrap();
        assert_eq!((r.events.len(), r.skipped), (4, 0), "the torn line is gone");
        // Damage inside the file costs only the damaged line.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text = text.replacen(&Uuid::from_u128(2).to_string(), "not-a-uuid", 1);
        std::fs::write(&path, text).unwrap();
        let r = read(dir.path()).unwrap();
        assert_eq!((r.events.len(), r.skipped), (3, 1));
    }

    #[test]
    fn rotation_keeps_the_previous_file_and_drops_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        // Two-digit seqs: every line has the same length; room for ten per file.
        let one = lines(10..11).len() as u64;
        let mut log = DeliveredLog::open_with(dir.path(), HEADER.len() as u64 + 10 * one).unwrap();
        for n in 10..=44u128 {
            log.append(&lines(n..n + 1)).unwrap();
        }
        let r = read(dir.path()).unwrap();
        let mut seqs: Vec<u64> = r.events.values().map(|e| e.seq).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (30..=44).collect::<Vec<_>>(),
            "two files' worth is kept"
        );
        let ids: std::collections::HashSet<Uuid> = r.events.keys().copied().collect();
        assert_eq!(read_ids(dir.path()).unwrap(), ids);
        for name in [DELIVERED_FILE, DELIVERED_OLD_FILE] {
            let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.starts_with(HEADER), "{name}: {text}");
        }
        // A redelivered id counts once, with its latest seq.
        let (id, json) = event(31);
        let mut s = String::new();
        push_line(&mut s, 99, &id, &json);
        log.append(&s).unwrap();
        assert_eq!(read(dir.path()).unwrap().events[&id].seq, 99);
    }

    #[test]
    fn spool_ids_are_the_unacknowledged_records_read_without_the_lock() {
        use crate::balp::EventRecord;
        use crate::config::SpoolConfig;
        use crate::spool::{Origin, Spool};
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(spool_ids(dir.path()).unwrap(), SpoolIds::default());
        let (mut spool, _) = Spool::open(dir.path(), &SpoolConfig::default()).unwrap();
        for n in 1..=5u128 {
            let record = EventRecord {
                id: Uuid::from_u128(n),
                pattern: "read",
                json: "{}".into(),
                leaf: None,
            };
            spool
                .append(
                    &record,
                    &Origin {
                        source: "s".into(),
                        stream_key: "k".into(),
                        path: "/p".into(),
                        start: 0,
                        end: 1,
                    },
                )
                .unwrap();
        }
        spool.commit().unwrap();
        spool.ack(2).unwrap();
        // The spool stays open (and locked), as under a running agent.
        let ids = spool_ids(dir.path()).unwrap();
        assert_eq!(ids.acked, 2);
        let want: std::collections::HashSet<Uuid> = (3..=5).map(Uuid::from_u128).collect();
        assert_eq!(ids.pending, want);
    }

    #[test]
    fn last_seq_is_the_highest_seq_at_the_end_also_after_a_resend() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DeliveredLog::open(dir.path()).unwrap();
        assert_eq!(log.last_seq(), 0);
        log.write(&lines(1..8)).unwrap();
        assert_eq!(log.last_seq(), 7);
        // A Bundle resent after a crash logs lower seqs again.
        log.write(&lines(5..7)).unwrap();
        assert_eq!(log.last_seq(), 7);
        drop(log);
        assert_eq!(DeliveredLog::open(dir.path()).unwrap().last_seq(), 7);
    }

    #[test]
    fn a_damaged_seq_in_the_log_is_skipped_and_open_still_works() {
        // Found by the fuzz target `spool` (fuzz/crashes/spool/delivered-seq-u64-max): a
        // line with seq u64::MAX made the spool's open overflow `last_seq + 1`.
        let dir = tempfile::tempdir().unwrap();
        let mut log = DeliveredLog::open(dir.path()).unwrap();
        log.write(&lines(1..3)).unwrap();
        log.write(&format!("{}\t{}\t\n", u64::MAX, Uuid::from_u128(9)))
            .unwrap();
        drop(log);
        assert_eq!(DeliveredLog::open(dir.path()).unwrap().last_seq(), 2);
        let r = read(dir.path()).unwrap();
        assert_eq!((r.events.len(), r.skipped), (2, 1));
        let mut spool = spool_with(dir.path(), 3);
        spool.ack(3).unwrap();
        drop(spool);
        let (mut spool, _) =
            crate::spool::Spool::open(dir.path(), &crate::config::SpoolConfig::default()).unwrap();
        assert_eq!(spool.read_range(0, 10, 1 << 20).unwrap().len(), 0);
    }

    fn spool_with(dir: &Path, n: u128) -> crate::spool::Spool {
        use crate::balp::EventRecord;
        use crate::config::SpoolConfig;
        use crate::spool::{Origin, Spool};
        let (mut spool, _) = Spool::open(dir, &SpoolConfig::default()).unwrap();
        for k in 1..=n {
            let (id, json) = event(k);
            let record = EventRecord {
                id,
                pattern: "read",
                json,
                leaf: None,
            };
            let origin = Origin {
                source: "s".into(),
                stream_key: "k".into(),
                path: "/p".into(),
                start: 0,
                end: 1,
            };
            spool.append(&record, &origin).unwrap();
        }
        spool.commit().unwrap();
        spool
    }

    #[test]
    fn lines_lost_with_the_power_are_rebuilt_from_the_segments_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = spool_with(dir.path(), 5);
        spool.ack_delivered(3, &lines(1..4)).unwrap();
        assert!(
            !spool.delivered.is_synced(),
            "no segment was deleted, so no fdatasync was needed"
        );
        drop(spool);
        // What a power failure may leave of lines that were written but not synced.
        std::fs::write(dir.path().join(DELIVERED_FILE), HEADER).unwrap();
        assert!(read(dir.path()).unwrap().events.is_empty());
        let spool = spool_with(dir.path(), 0);
        assert!(spool.delivered.is_synced());
        let r = read(dir.path()).unwrap();
        let mut got: Vec<(u64, String)> = r
            .events
            .values()
            .map(|e| (e.seq, e.recorded.clone()))
            .collect();
        got.sort_unstable();
        let want: Vec<(u64, String)> = (1..=3u64)
            .map(|k| (k, format!("2026-11-25T15:22:{k:02}+01:00")))
            .collect();
        assert_eq!(got, want, "the acknowledged records' lines are back");
        drop(spool);
        // Nothing lost: a reopen adds nothing.
        let _spool = spool_with(dir.path(), 0);
        assert_eq!(read(dir.path()).unwrap().lines, 3);
    }

    #[test]
    fn the_log_is_synced_before_a_segment_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = spool_with(dir.path(), 5);
        spool.ack_delivered(5, &lines(1..6)).unwrap();
        assert_eq!(
            spool.status().segments,
            0,
            "the fully acknowledged segment is gone"
        );
        assert!(
            spool.delivered.is_synced(),
            "so its lines were synced first"
        );
        assert_eq!(read(dir.path()).unwrap().events.len(), 5);
    }

    #[test]
    fn absent_files_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), DeliveredRead::default());
    }
}

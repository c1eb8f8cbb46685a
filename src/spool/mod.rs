//! The durable disk spool between batching and delivery (format and recovery: `docs/spool.md`).
//!
//! In: [`EventRecord`]s with their [`Origin`] (`append`, then `commit` as one group commit).
//! Out: the same records, byte-identical and in order, as [`SpooledEvent`]s (`read_range`), until
//! `ack` says the ARR has them. Guarantees: a seq returned by `commit` survives a crash (it was
//! written and `fdatasync`ed); a segment is deleted only once every record in it is acknowledged;
//! a corrupt record is quarantined, counted and skipped, and never stops the rest from being read;
//! a failed fsync is reported as [`SpoolError::Fsync`] and must end the process.
//!
//! * [`format`]: the bytes (segment header, record frame, payload, ack file).
//! * [`scan`]: walks the frames of one segment, resyncing after damage.
//! * this file: the writer, reader, recovery and `verify`.

pub mod format;
pub mod scan;

use crate::balp::EventRecord;
use crate::config::SpoolConfig;
use crate::source::LogLine;
use format::{REC_OVERHEAD, SEG_HDR_LEN, SegHeader};
use scan::{Frame, Scanner};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One record in every this many gets an entry in a segment's in-memory index.
const INDEX_EVERY: u64 = 64;
/// How long a free-space reading is reused by `has_room`.
const ROOM_CACHE: Duration = Duration::from_millis(250);

/// Where an event's line came from: enough to rebuild the read position after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Configured source name.
    pub source: String,
    /// Stable key of the stream (`StreamId::key`).
    pub stream_key: String,
    /// Path where the stream was seen.
    pub path: PathBuf,
    /// Byte offset of the line.
    pub start: u64,
    /// Byte offset just past the line: the read position after it.
    pub end: u64,
}

impl Origin {
    /// The origin of a log line.
    pub fn of_line(line: &LogLine) -> Origin {
        Origin {
            source: line.stream.source.to_string(),
            stream_key: line.stream.key.clone(),
            path: line.stream.path.clone(),
            start: line.offset,
            end: line.end,
        }
    }
}

/// A durable record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledEvent {
    /// Its sequence number.
    pub seq: u64,
    /// Unix ms when it was appended (the Bundle timestamp).
    pub appended_ms: u64,
    /// The event.
    pub record: EventRecord,
    /// Where its line came from.
    pub origin: Origin,
}

/// What recovery found at `open`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Durable records not yet acknowledged.
    pub pending_events: u64,
    /// Records (or segment headers) moved to `quarantine/`.
    pub quarantined: u64,
    /// Bytes cut off torn tails (copied to `quarantine/` first).
    pub truncated_bytes: u64,
    /// Per (source, stream key): the path and the largest `end` of any record present.
    pub positions: BTreeMap<(String, String), (PathBuf, u64)>,
}

/// A snapshot for `spool status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolStatus {
    /// Appended, not yet acknowledged records (durable or buffered).
    pub pending_events: u64,
    /// Segment bytes on disk plus bytes buffered for the next commit.
    pub bytes_on_disk: u64,
    /// Age of the oldest unacknowledged record.
    pub oldest_pending_age: Option<Duration>,
    /// Segment files.
    pub segments: usize,
    /// Records quarantined since open (including at open).
    pub quarantined: u64,
    /// The first seq not acknowledged.
    pub first_unacked: u64,
    /// The highest durable seq (0: none).
    pub durable_seq: u64,
}

/// Tuning that tests change; production uses the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    /// A segment is rolled once the next record would take it past this size.
    pub segment_bytes: u64,
    /// `has_room` is false while the filesystem has less free space than this.
    pub free_floor: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            segment_bytes: 64 << 20,
            free_floor: 64 << 20,
        }
    }
}

/// Spool failures. Every message names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// An I/O operation failed.
    #[error("spool: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// fsync/fdatasync failed: the process must exit (never retry an fsync).
    #[error("spool: fsync of {} failed: {source}; exiting so that recovery decides what is on disk", path.display())]
    Fsync {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another process holds the spool.
    #[error("spool: {} is locked by another process", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Written by a newer format this agent does not know.
    #[error("spool: {} at byte {offset} has format version {version}, which this agent does not support", path.display())]
    UnsupportedVersion {
        /// The segment.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// The version found.
        version: u32,
    },
    /// One event is larger than a record may be.
    #[error("spool: an event of {bytes} bytes exceeds the {max}-byte record limit")]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// `ack` of a seq that is not durable yet.
    #[error("spool: ack of seq {seq} is beyond the last durable seq {durable}")]
    AckBeyondDurable {
        /// The seq acknowledged.
        seq: u64,
        /// The highest durable seq.
        durable: u64,
    },
    /// An earlier write failed, so the files are in an unknown state.
    #[error("spool: unusable after an earlier write failure; restart to recover")]
    Poisoned,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The static pattern name for a stored one (`"unknown"` if this build does not know it).
pub fn static_pattern(name: &str) -> &'static str {
    use crate::parse::Pattern::*;
    [
        Rest,
        Create,
        Read,
        Update,
        Delete,
        Query,
        Login,
        Logout,
        SecurityAlert,
        Disclosure,
    ]
    .into_iter()
    .map(|p| p.as_str())
    .find(|s| *s == name)
    .unwrap_or("unknown")
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    seq: u64,
    offset: u64,
}

/// In-memory facts about one segment file.
#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Bytes durably in the file.
    len: u64,
    /// Highest seq in it (buffered ones included).
    last_seq: Option<u64>,
    /// Records in it (buffered ones included).
    records: u64,
    index: Vec<IndexEntry>,
}

impl Segment {
    fn note_record(&mut self, seq: u64, offset: u64) {
        if self.records.is_multiple_of(INDEX_EVERY) {
            self.index.push(IndexEntry { seq, offset });
        }
        self.records += 1;
        self.last_seq = Some(seq);
    }
}

/// A segment with bytes waiting for the next commit.
#[derive(Debug)]
struct Pending {
    file: File,
    first_seq: u64,
    buf: Vec<u8>,
    /// The file was created since the last commit (its directory entry needs an fsync).
    created: bool,
}

#[derive(Debug)]
struct ReadCursor {
    seg_first: u64,
    scanner: Scanner,
    /// The scanner sits on the first frame whose seq is ≥ this, past every frame below it.
    next_seq: u64,
}

/// The spool. One per state directory (held with an exclusive lock).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    qdir: PathBuf,
    _lock: File,
    opts: SpoolOptions,
    max_bytes: u64,
    segments: Vec<Segment>,
    /// The segment being appended to (always the last of `segments`).
    active: Option<Pending>,
    /// Rolled segments whose last bytes are still buffered.
    sealed: Vec<Pending>,
    next_seq: u64,
    durable_seq: u64,
    acked: u64,
    /// Seq ranges (start → end, inclusive) above `acked` that hold no record.
    gaps: BTreeMap<u64, u64>,
    buffered: u64,
    disk_bytes: u64,
    quarantined: u64,
    /// (segment, offset) of damage already quarantined, so reading past it does not count it again.
    known_bad: BTreeSet<(u64, u64)>,
    oldest_pending_ms: Option<u64>,
    cursor: Option<ReadCursor>,
    scratch: Vec<u8>,
    poisoned: bool,
    room: Cell<Option<(Instant, bool)>>,
}

fn create_dir(path: &Path) -> Result<(), SpoolError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err("create directory", path))
}

fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    let d = File::open(dir).map_err(io_err("open directory", dir))?;
    d.sync_all().map_err(|source| SpoolError::Fsync {
        path: dir.to_path_buf(),
        source,
    })
}

fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("open", &path))?;
    // A child forked by this process holds a copy of the descriptor until it execs, so a
    // lock released a moment ago can still look taken: retry briefly before giving up.
    for _ in 0..50 {
        // SAFETY: flock on a valid, owned descriptor; no memory is passed.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(f);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock {
            return Err(SpoolError::Io {
                op: "lock",
                path,
                source: e,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(SpoolError::Locked { path })
}

/// Segment files of a spool directory, by first seq.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        if let Some(first) = name.to_str().and_then(format::parse_segment_name) {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn read_segment_header(file: &mut File, path: &Path) -> Result<SegHeader, SpoolError> {
    let mut h = [0u8; SEG_HDR_LEN];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut h))
        .map_err(io_err("read segment header of", path))?;
    Ok(format::decode_segment_header(&h))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Copy `len` bytes at `offset` of `src` to `qdir/name`, durably.
fn quarantine_copy(
    qdir: &Path,
    src: &Path,
    offset: u64,
    len: u64,
    name: &str,
) -> Result<(), SpoolError> {
    let dest = qdir.join(name);
    let mut from = File::open(src).map_err(io_err("open", src))?;
    from.seek(SeekFrom::Start(offset))
        .map_err(io_err("seek", src))?;
    let mut to = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&dest)
        .map_err(io_err("create", &dest))?;
    io::copy(&mut from.take(len), &mut to).map_err(io_err("copy into", &dest))?;
    to.sync_all().map_err(|source| SpoolError::Fsync {
        path: dest.clone(),
        source,
    })
}

fn unsupported(path: &Path, offset: u64, version: u32) -> SpoolError {
    SpoolError::UnsupportedVersion {
        path: path.to_path_buf(),
        offset,
        version,
    }
}

impl Spool {
    /// Open (creating if needed) the spool under `<state_dir>/spool/` and recover it.
    pub fn open(state_dir: &Path, config: &SpoolConfig) -> Result<(Spool, Recovered), SpoolError> {
        Spool::open_with(state_dir, config, SpoolOptions::default())
    }

    /// [`Spool::open`] with explicit tuning.
    pub fn open_with(
        state_dir: &Path,
        config: &SpoolConfig,
        opts: SpoolOptions,
    ) -> Result<(Spool, Recovered), SpoolError> {
        let dir = state_dir.join("spool");
        let qdir = dir.join("quarantine");
        create_dir(&dir)?;
        create_dir(&qdir)?;
        let lock = lock(&dir)?;
        let tmp = dir.join("ack.tmp");
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io_err("remove", &tmp))?;
        }
        let ack_path = dir.join("ack");
        let ack_file = match fs::read(&ack_path) {
            Ok(b) => {
                let v = format::decode_ack(&b);
                if v.is_none() {
                    tracing::warn!(path = %ack_path.display(), "spool ack file is corrupt; every record present counts as unacknowledged (duplicates possible)");
                }
                v
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(SpoolError::Io {
                    op: "read",
                    path: ack_path,
                    source: e,
                });
            }
        };

        let mut rec = Recovered::default();
        let mut segments = Vec::new();
        let mut gaps = BTreeMap::new();
        let mut prev_seq = 0u64;
        let mut first_record: Option<(u64, u64)> = None;
        let mut first_pending_ms: Option<u64> = None;
        let mut known_bad = BTreeSet::new();
        let mut max_seq = 0u64;
        for (first, path) in list_segments(&dir)? {
            let name = file_name(&path);
            let mut file = File::open(&path).map_err(io_err("open", &path))?;
            let len = file.metadata().map_err(io_err("stat", &path))?.len();
            if len < SEG_HDR_LEN as u64 {
                // Created, but the process died before its header (and any record) was written.
                tracing::warn!(path = %path.display(), bytes = len, "removing spool segment without a header");
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            match read_segment_header(&mut file, &path)? {
                SegHeader::Valid { first_seq } if first_seq != first => {
                    tracing::warn!(path = %path.display(), header_seq = first_seq, "spool segment header names another first seq; the records' own seqs are used");
                }
                SegHeader::Valid { .. } => {}
                SegHeader::UnknownVersion(v) => return Err(unsupported(&path, 0, v.into())),
                SegHeader::Corrupt => {
                    quarantine_copy(
                        &qdir,
                        &path,
                        0,
                        SEG_HDR_LEN as u64,
                        &format!("{name}.header"),
                    )?;
                    rec.quarantined += 1;
                    tracing::error!(path = %path.display(), "spool segment header is corrupt; quarantined it, reading the records after it");
                }
            }
            let mut seg = Segment {
                first_seq: first,
                path: path.clone(),
                len,
                last_seq: None,
                records: 0,
                index: Vec::new(),
            };
            let mut scanner =
                Scanner::new(file, SEG_HDR_LEN as u64, len).map_err(io_err("read", &path))?;
            loop {
                match scanner.next_frame().map_err(io_err("read", &path))? {
                    Frame::End => break,
                    Frame::Record {
                        offset,
                        seq,
                        payload,
                    } => {
                        let decoded = format::decode_payload(&payload);
                        let Some(p) = decoded.filter(|_| seq > prev_seq) else {
                            if seq > prev_seq {
                                max_seq = max_seq.max(seq);
                            }
                            let reason = if seq > prev_seq {
                                "payload does not decode"
                            } else {
                                "seq not above the previous record's"
                            };
                            let frame_len = (REC_OVERHEAD + payload.len()) as u64;
                            quarantine_copy(
                                &qdir,
                                &path,
                                offset,
                                frame_len,
                                &format!("{name}@{offset}.bad"),
                            )?;
                            rec.quarantined += 1;
                            known_bad.insert((first, offset));
                            tracing::error!(path = %path.display(), offset, seq, reason, "spool record quarantined");
                            continue;
                        };
                        if seq > prev_seq + 1 {
                            gaps.insert(prev_seq + 1, seq - 1);
                        }
                        prev_seq = seq;
                        seg.note_record(seq, offset);
                        first_record.get_or_insert((seq, p.appended_ms));
                        if ack_file.is_some_and(|a| seq > a) && first_pending_ms.is_none() {
                            first_pending_ms = Some(p.appended_ms);
                        }
                        let key = (p.origin.source, p.origin.stream_key);
                        let e = rec.positions.entry(key).or_insert((PathBuf::new(), 0));
                        if p.origin.end >= e.1 {
                            *e = (p.origin.path, p.origin.end);
                        }
                    }
                    Frame::Corrupt {
                        offset,
                        len: bad,
                        seq,
                        reason,
                    } => {
                        // A seq from a checksummed header is never handed out again.
                        max_seq = max_seq.max(seq.unwrap_or(0));
                        quarantine_copy(
                            &qdir,
                            &path,
                            offset,
                            bad,
                            &format!("{name}@{offset}.bad"),
                        )?;
                        rec.quarantined += 1;
                        known_bad.insert((first, offset));
                        tracing::error!(path = %path.display(), offset, bytes = bad, reason, "spool record quarantined");
                    }
                    Frame::UnknownVersion { offset, version } => {
                        return Err(unsupported(&path, offset, version.into()));
                    }
                    Frame::Torn { offset } => {
                        let cut = len - offset;
                        quarantine_copy(
                            &qdir,
                            &path,
                            offset,
                            cut,
                            &format!("{name}@{offset}.torn"),
                        )?;
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(io_err("open", &path))?;
                        f.set_len(offset).map_err(io_err("truncate", &path))?;
                        f.sync_all().map_err(|source| SpoolError::Fsync {
                            path: path.clone(),
                            source,
                        })?;
                        seg.len = offset;
                        rec.truncated_bytes += cut;
                        tracing::warn!(path = %path.display(), offset, bytes = cut, "truncated a torn tail of the spool (never reported durable)");
                        break;
                    }
                }
            }
            if seg.records == 0 {
                tracing::warn!(path = %path.display(), "removing spool segment without any valid record");
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            segments.push(seg);
        }

        if max_seq > prev_seq {
            gaps.insert(prev_seq + 1, max_seq);
            prev_seq = max_seq;
        }
        let acked = match ack_file {
            Some(a) => a,
            None => first_record.map_or(0, |(s, _)| s - 1),
        };
        let next_seq = prev_seq.max(acked) + 1;
        let disk_bytes = segments.iter().map(|s| s.len).sum();
        let mut spool = Spool {
            dir,
            qdir,
            _lock: lock,
            opts,
            max_bytes: config.max_bytes.0,
            segments,
            active: None,
            sealed: Vec::new(),
            next_seq,
            durable_seq: next_seq - 1,
            acked,
            gaps,
            buffered: 0,
            disk_bytes,
            quarantined: rec.quarantined,
            known_bad,
            oldest_pending_ms: None,
            cursor: None,
            scratch: Vec::new(),
            poisoned: false,
            room: Cell::new(None),
        };
        spool.trim_gaps();
        spool.delete_acked_segments()?;
        rec.pending_events = spool.pending_events();
        if rec.pending_events > 0 {
            spool.oldest_pending_ms = if ack_file.is_some() {
                first_pending_ms
            } else {
                first_record.map(|(_, ms)| ms)
            };
        }
        Ok((spool, rec))
    }

    fn trim_gaps(&mut self) {
        let acked = self.acked;
        let below: Vec<(u64, u64)> = self.gaps.range(..=acked).map(|(a, b)| (*a, *b)).collect();
        for (start, end) in below {
            self.gaps.remove(&start);
            if end > acked {
                self.gaps.insert(acked + 1, end);
            }
        }
    }

    fn pending_events(&self) -> u64 {
        let missing: u64 = self.gaps.iter().map(|(a, b)| b - a + 1).sum();
        (self.next_seq - 1)
            .saturating_sub(self.acked)
            .saturating_sub(missing)
    }

    /// The seq the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest durable seq (0: none yet).
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// The first seq not acknowledged.
    pub fn first_unacked(&self) -> u64 {
        self.acked + 1
    }

    /// Buffered append (not durable until `commit`); returns the seq assigned.
    pub fn append(&mut self, event: &EventRecord, origin: &Origin) -> Result<u64, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        let appended_ms = now_ms();
        let mut payload = std::mem::take(&mut self.scratch);
        format::encode_payload(
            &mut payload,
            appended_ms,
            event.id,
            event.pattern,
            &event.json,
            origin,
        );
        let result = self.append_payload(&payload, appended_ms);
        self.scratch = payload;
        result
    }

    fn append_payload(&mut self, payload: &[u8], appended_ms: u64) -> Result<u64, SpoolError> {
        if payload.len() > format::MAX_PAYLOAD {
            return Err(SpoolError::TooLarge {
                bytes: payload.len(),
                max: format::MAX_PAYLOAD,
            });
        }
        let frame_len = (REC_OVERHEAD + payload.len()) as u64;
        let roll = match (&self.active, self.segments.last()) {
            (Some(a), Some(seg)) => {
                let used = seg.len + a.buf.len() as u64;
                used > SEG_HDR_LEN as u64 && used + frame_len > self.opts.segment_bytes
            }
            _ => true,
        };
        if roll {
            self.start_segment()?;
        }
        let (Some(active), Some(seg)) = (self.active.as_mut(), self.segments.last_mut()) else {
            return Err(SpoolError::Poisoned);
        };
        let seq = self.next_seq;
        let offset = seg.len + active.buf.len() as u64;
        format::encode_record(&mut active.buf, seq, payload);
        seg.note_record(seq, offset);
        self.next_seq += 1;
        self.buffered += frame_len;
        if self.oldest_pending_ms.is_none() {
            self.oldest_pending_ms = Some(appended_ms);
        }
        Ok(seq)
    }

    fn start_segment(&mut self) -> Result<(), SpoolError> {
        if let Some(prev) = self.active.take()
            && (!prev.buf.is_empty() || prev.created)
        {
            self.sealed.push(prev);
        }
        let first = self.next_seq;
        let path = self.dir.join(format::segment_name(first));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create segment", &path))?;
        self.segments.push(Segment {
            first_seq: first,
            path,
            len: 0,
            last_seq: None,
            records: 0,
            index: Vec::new(),
        });
        let mut buf = Vec::with_capacity(256 * 1024);
        buf.extend_from_slice(&format::encode_segment_header(first));
        self.buffered += SEG_HDR_LEN as u64;
        self.active = Some(Pending {
            file,
            first_seq: first,
            buf,
            created: true,
        });
        Ok(())
    }

    /// Group commit: write and `fdatasync` everything appended; returns the highest durable
    /// seq. Any error leaves the spool unusable; `SpoolError::Fsync` means: exit, never retry.
    pub fn commit(&mut self) -> Result<u64, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        if self.buffered == 0 {
            return Ok(self.durable_seq);
        }
        let result = self.flush_all();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn flush_all(&mut self) -> Result<u64, SpoolError> {
        let mut created = false;
        let mut pending: Vec<Pending> = self.sealed.drain(..).collect();
        let active = self.active.take();
        pending.extend(active);
        let count = pending.len();
        for (i, mut p) in pending.into_iter().enumerate() {
            let Some(seg) = self
                .segments
                .iter_mut()
                .find(|s| s.first_seq == p.first_seq)
            else {
                return Err(SpoolError::Poisoned);
            };
            if !p.buf.is_empty() {
                p.file
                    .write_all(&p.buf)
                    .map_err(io_err("write segment", &seg.path))?;
                p.file.sync_data().map_err(|source| SpoolError::Fsync {
                    path: seg.path.clone(),
                    source,
                })?;
                let n = p.buf.len() as u64;
                seg.len += n;
                self.disk_bytes += n;
                self.buffered -= n;
                p.buf.clear();
            }
            created |= p.created;
            p.created = false;
            if i + 1 == count {
                self.active = Some(p);
            }
        }
        if created {
            fsync_dir(&self.dir)?;
        }
        self.durable_seq = self.next_seq - 1;
        Ok(self.durable_seq)
    }

    /// Durable, unacknowledged records with seq ≥ `from_seq`, in order, at most `max_events`
    /// and at most `max_bytes` of JSON (but at least one). The same arguments always give the
    /// same records.
    pub fn read_range(
        &mut self,
        from_seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<SpooledEvent>, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        let from = from_seq.max(self.acked + 1);
        let mut out = Vec::new();
        if from > self.durable_seq || max_events == 0 {
            return Ok(out);
        }
        if self.cursor.as_ref().is_none_or(|c| c.next_seq != from) {
            self.cursor = self.seek_cursor(from)?;
        }
        let Some(mut cursor) = self.cursor.take() else {
            return Ok(out);
        };
        let result = self.read_with(&mut cursor, from, max_events, max_bytes, &mut out);
        self.cursor = Some(cursor);
        result.map(|_| out)
    }

    /// A cursor at or before the first record with seq ≥ `from`, via the sparse index.
    fn seek_cursor(&self, from: u64) -> Result<Option<ReadCursor>, SpoolError> {
        let pos = self
            .segments
            .iter()
            .rposition(|s| s.index.first().is_some_and(|e| e.seq <= from))
            .unwrap_or(0);
        let Some(seg) = self.segments.get(pos) else {
            return Ok(None);
        };
        let offset = seg
            .index
            .iter()
            .rev()
            .find(|e| e.seq <= from && e.offset < seg.len)
            .map_or(SEG_HDR_LEN as u64, |e| e.offset);
        let file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
        let scanner = Scanner::new(file, offset, seg.len).map_err(io_err("read", &seg.path))?;
        Ok(Some(ReadCursor {
            seg_first: seg.first_seq,
            scanner,
            next_seq: from,
        }))
    }

    fn read_with(
        &mut self,
        cursor: &mut ReadCursor,
        from: u64,
        max_events: usize,
        max_bytes: usize,
        out: &mut Vec<SpooledEvent>,
    ) -> Result<(), SpoolError> {
        let mut json_bytes = 0usize;
        while out.len() < max_events {
            let Some(idx) = self
                .segments
                .iter()
                .position(|s| s.first_seq == cursor.seg_first)
            else {
                break;
            };
            let (path, len) = (self.segments[idx].path.clone(), self.segments[idx].len);
            cursor.scanner.set_limit(len);
            match cursor.scanner.next_frame().map_err(io_err("read", &path))? {
                Frame::End => {
                    let Some(next) = self.segments.get(idx + 1).filter(|s| s.len > 0) else {
                        break;
                    };
                    let file = File::open(&next.path).map_err(io_err("open", &next.path))?;
                    cursor.scanner = Scanner::new(file, SEG_HDR_LEN as u64, next.len)
                        .map_err(io_err("read", &next.path))?;
                    cursor.seg_first = next.first_seq;
                }
                Frame::Record {
                    offset,
                    seq,
                    payload,
                } => {
                    if seq < from {
                        continue;
                    }
                    if seq > self.durable_seq {
                        cursor
                            .scanner
                            .seek_to(offset)
                            .map_err(io_err("seek", &path))?;
                        break;
                    }
                    let Some(p) = format::decode_payload(&payload) else {
                        let frame_len = (REC_OVERHEAD + payload.len()) as u64;
                        if self.quarantine_at_runtime(
                            &path,
                            offset,
                            frame_len,
                            "payload does not decode",
                        )? {
                            self.gaps.insert(seq, seq);
                        }
                        continue;
                    };
                    if !out.is_empty() && json_bytes + p.json.len() > max_bytes {
                        cursor
                            .scanner
                            .seek_to(offset)
                            .map_err(io_err("seek", &path))?;
                        break;
                    }
                    json_bytes += p.json.len();
                    cursor.next_seq = seq + 1;
                    out.push(SpooledEvent {
                        seq,
                        appended_ms: p.appended_ms,
                        record: EventRecord {
                            id: p.id,
                            pattern: static_pattern(&p.pattern),
                            json: p.json,
                        },
                        origin: p.origin,
                    });
                }
                Frame::Corrupt {
                    offset,
                    len: bad,
                    seq,
                    reason,
                } => {
                    if self.quarantine_at_runtime(&path, offset, bad, reason)?
                        && let Some(seq) = seq.filter(|s| *s > self.acked)
                    {
                        self.gaps.insert(seq, seq);
                    }
                }
                Frame::Torn { offset } => {
                    // Durable bytes that no longer form a record: keep them, skip to the end.
                    self.quarantine_at_runtime(
                        &path,
                        offset,
                        len - offset,
                        "damaged end of segment",
                    )?;
                    cursor.scanner.seek_to(len).map_err(io_err("seek", &path))?;
                }
                Frame::UnknownVersion { offset, version } => {
                    return Err(unsupported(&path, offset, version.into()));
                }
            }
        }
        Ok(())
    }

    fn quarantine_at_runtime(
        &mut self,
        path: &Path,
        offset: u64,
        len: u64,
        reason: &'static str,
    ) -> Result<bool, SpoolError> {
        let seg_first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(format::parse_segment_name)
            .unwrap_or(0);
        if !self.known_bad.insert((seg_first, offset)) {
            return Ok(false);
        }
        let name = format!("{}@{offset}.bad", file_name(path));
        quarantine_copy(&self.qdir, path, offset, len, &name)?;
        self.quarantined += 1;
        tracing::error!(path = %path.display(), offset, bytes = len, reason, "spool record quarantined while reading");
        Ok(true)
    }

    /// Everything up to and including `seq` was accepted by the ARR (or dead-lettered):
    /// persist that, then delete the segments whose records are all acknowledged.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        if seq <= self.acked {
            return Ok(());
        }
        if seq > self.durable_seq {
            return Err(SpoolError::AckBeyondDurable {
                seq,
                durable: self.durable_seq,
            });
        }
        let tmp = self.dir.join("ack.tmp");
        let dest = self.dir.join("ack");
        {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            f.write_all(&format::encode_ack(seq))
                .map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(|source| SpoolError::Fsync {
                path: tmp.clone(),
                source,
            })?;
        }
        fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
        fsync_dir(&self.dir)?;
        self.acked = seq;
        self.trim_gaps();
        self.delete_acked_segments()?;
        self.oldest_pending_ms = if self.pending_events() == 0 {
            None
        } else {
            self.appended_ms_of_first_pending()
                .ok()
                .flatten()
                .or(self.oldest_pending_ms)
        };
        Ok(())
    }

    fn delete_acked_segments(&mut self) -> Result<(), SpoolError> {
        let acked = self.acked;
        let active_first = self.active.as_ref().map(|a| a.first_seq);
        let active_idle = self.active.as_ref().is_some_and(|a| a.buf.is_empty());
        let mut i = 0;
        while i < self.segments.len() {
            let seg = &self.segments[i];
            let done = seg.last_seq.is_some_and(|l| l <= acked);
            let is_active = Some(seg.first_seq) == active_first;
            if !done || (is_active && !active_idle) {
                i += 1;
                continue;
            }
            if is_active {
                self.active = None;
            }
            if self
                .cursor
                .as_ref()
                .is_some_and(|c| c.seg_first == seg.first_seq)
            {
                self.cursor = None;
            }
            fs::remove_file(&seg.path).map_err(io_err("remove", &seg.path))?;
            self.disk_bytes -= seg.len;
            self.segments.remove(i);
        }
        Ok(())
    }

    /// The `appended_ms` of the first durable record above `acked`.
    fn appended_ms_of_first_pending(&self) -> Result<Option<u64>, SpoolError> {
        let Some(mut cursor) = self.seek_cursor(self.acked + 1)? else {
            return Ok(None);
        };
        let mut idx = self
            .segments
            .iter()
            .position(|s| s.first_seq == cursor.seg_first);
        while let Some(i) = idx {
            let path = &self.segments[i].path;
            match cursor.scanner.next_frame().map_err(io_err("read", path))? {
                Frame::Record { seq, payload, .. } if seq > self.acked => {
                    return Ok(format::payload_appended_ms(&payload));
                }
                Frame::Record { .. } | Frame::Corrupt { .. } => {}
                Frame::End | Frame::Torn { .. } | Frame::UnknownVersion { .. } => {
                    idx = Some(i + 1).filter(|n| *n < self.segments.len());
                    if let Some(n) = idx {
                        let next = &self.segments[n];
                        let file = File::open(&next.path).map_err(io_err("open", &next.path))?;
                        cursor.scanner = Scanner::new(file, SEG_HDR_LEN as u64, next.len)
                            .map_err(io_err("read", &next.path))?;
                    }
                }
            }
        }
        Ok(None)
    }

    /// Pending events, bytes on disk, oldest pending age, segments, quarantined count.
    pub fn status(&self) -> SpoolStatus {
        SpoolStatus {
            pending_events: self.pending_events(),
            bytes_on_disk: self.disk_bytes + self.buffered,
            oldest_pending_age: self
                .oldest_pending_ms
                .map(|ms| Duration::from_millis(now_ms().saturating_sub(ms))),
            segments: self.segments.len(),
            quarantined: self.quarantined,
            first_unacked: self.acked + 1,
            durable_seq: self.durable_seq,
        }
    }

    /// False when the spool holds `max_bytes` or more, or the filesystem's free space is below
    /// the floor: the pipeline then stops reading inputs (`when_full = "block"`).
    pub fn has_room(&self) -> bool {
        if self.disk_bytes + self.buffered >= self.max_bytes {
            return false;
        }
        if let Some((at, ok)) = self.room.get()
            && at.elapsed() < ROOM_CACHE
        {
            return ok;
        }
        let ok = free_bytes(&self.dir).is_none_or(|free| free >= self.opts.free_floor);
        self.room.set(Some((Instant::now(), ok)));
        ok
    }
}

/// Free bytes available to unprivileged users on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable statvfs storage.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types are u32 on some 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyProblem {
    /// The file.
    pub path: PathBuf,
    /// Where in it.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
    /// What is wrong.
    pub what: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files read.
    pub segments: usize,
    /// Records whose checks pass.
    pub records: u64,
    /// Corrupt records, headers and files.
    pub problems: Vec<VerifyProblem>,
    /// Bytes of incomplete tails (normal after a crash; cut at the next start).
    pub torn_tail_bytes: u64,
    /// The acknowledged seq, if the ack file is present and valid.
    pub acked: Option<u64>,
}

impl VerifyReport {
    /// No corrupt record or header (torn tails are not corruption).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check every record of the spool under `state_dir` without changing anything.
pub fn verify(state_dir: &Path) -> Result<VerifyReport, SpoolError> {
    let dir = state_dir.join("spool");
    let mut report = VerifyReport::default();
    if !dir.exists() {
        return Ok(report);
    }
    let ack_path = dir.join("ack");
    match fs::read(&ack_path) {
        Ok(b) => {
            report.acked = format::decode_ack(&b);
            if report.acked.is_none() {
                report.problems.push(VerifyProblem {
                    path: ack_path,
                    offset: 0,
                    len: b.len() as u64,
                    what: "ack file is corrupt".into(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(SpoolError::Io {
                op: "read",
                path: ack_path,
                source: e,
            });
        }
    }
    for (_, path) in list_segments(&dir)? {
        report.segments += 1;
        let mut file = File::open(&path).map_err(io_err("open", &path))?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        if len < SEG_HDR_LEN as u64 {
            report.torn_tail_bytes += len;
            continue;
        }
        let problem = |offset, len, what: String| VerifyProblem {
            path: path.clone(),
            offset,
            len,
            what,
        };
        match read_segment_header(&mut file, &path)? {
            SegHeader::Valid { .. } => {}
            SegHeader::UnknownVersion(v) => {
                report.problems.push(problem(
                    0,
                    SEG_HDR_LEN as u64,
                    format!("unsupported segment version {v}"),
                ));
                continue;
            }
            SegHeader::Corrupt => report.problems.push(problem(
                0,
                SEG_HDR_LEN as u64,
                "corrupt segment header".into(),
            )),
        }
        let mut scanner =
            Scanner::new(file, SEG_HDR_LEN as u64, len).map_err(io_err("read", &path))?;
        loop {
            match scanner.next_frame().map_err(io_err("read", &path))? {
                Frame::End => break,
                Frame::Record {
                    offset, payload, ..
                } => {
                    if format::decode_payload(&payload).is_some() {
                        report.records += 1;
                    } else {
                        report.problems.push(problem(
                            offset,
                            (REC_OVERHEAD + payload.len()) as u64,
                            "payload does not decode".into(),
                        ));
                    }
                }
                Frame::Corrupt {
                    offset,
                    len: bad,
                    reason,
                    ..
                } => report.problems.push(problem(offset, bad, reason.into())),
                Frame::Torn { offset } => {
                    report.torn_tail_bytes += len - offset;
                    break;
                }
                Frame::UnknownVersion { offset, version } => {
                    report.problems.push(problem(
                        offset,
                        len - offset,
                        format!("unsupported record version {version}"),
                    ));
                    break;
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests;

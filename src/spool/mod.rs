//! The durable disk spool between mapping and batching (format and recovery: `docs/spool.md`).
//!
//! Path of a line: source → decode → parse → map → **spool** → batch → deliver. The ingest
//! loop appends and group-commits; read positions advance only after `commit` returned (the
//! fsync). The delivery task reads durable records, cuts Bundles and calls `ack` only after
//! the output accepted them (HTTP 2xx or dead-lettered), in order.
//!
//! In: [`EventRecord`]s with their [`Origin`] (`append`, then `commit` as one group commit).
//! Out: the same records, byte-identical and in order, as [`SpooledEvent`]s (`read_range`), until
//! `ack` says the ARR has them. Guarantees: a seq returned by `commit` survives a crash (it was
//! written and `fdatasync`ed); a segment is deleted only once every record in it is acknowledged;
//! a corrupt record is quarantined, counted and skipped, and never stops the rest from being read;
//! a failed fsync is reported as [`SpoolError::Fsync`] and must end the process.
//!
//! * [`format`](mod@format): the bytes (segment header, record frame, payload, ack file).
//! * [`scan`]: walks the frames of one segment, resyncing after damage.
//! * [`delivered`]: the delivered log (what the output settled, kept after the segments are
//!   deleted) and a lock-free read of the ids still spooled, for `balp-agent arr check`.
//! * `recover`: `open`, the recovery cases; `writer`: append, commit, ack; `reader`:
//!   `read_range`; `verify`: the offline check. This file: the types, status and `has_room`.

pub mod admin;
pub mod delivered;
pub mod format;
pub mod leaves;
mod reader;
mod recover;
pub mod scan;
mod verify;
mod writer;

pub use verify::{VerifyProblem, VerifyReport, verify};
pub use writer::{CommitDone, CommitError, CommitJob};

use crate::balp::EventRecord;
use crate::config::SpoolConfig;
use crate::source::LogLine;
use format::{REC_OVERHEAD, SEG_HDR_LEN, SegHeader};
use scan::{Frame, Scanner};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
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
    /// Seqs above the ack with no readable record: damaged, cut off or in a deleted segment.
    /// They can never be delivered; each range is logged.
    pub lost: u64,
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
    /// Events found unreadable since open (including at open): never to be delivered.
    pub lost: u64,
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
    /// Keep the tamper-evidence leaf log ([`leaves`]) beside the segments.
    pub tree: bool,
    /// Keep acknowledged segments until [`Spool::positions_saved`] says the saved read
    /// positions cover them (the agent; tools that open the spool leave it off).
    pub gate_on_positions: bool,
}

impl SpoolOptions {
    /// The options `[spool]` sets (the leaf log on, as by default).
    pub fn of_config(config: &SpoolConfig) -> SpoolOptions {
        SpoolOptions {
            free_floor: config.min_free.0,
            // `check` keeps it in this range; a record larger than a segment still fits (a
            // segment holds at least one record).
            segment_bytes: config.segment_size.0.clamp(1 << 20, 1 << 30),
            ..SpoolOptions::default()
        }
    }
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            segment_bytes: 64 << 20,
            free_floor: 64 << 20,
            tree: true,
            gate_on_positions: false,
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
    /// A commit was started while another one was still being written (a bug in the caller).
    #[error("spool: a commit was started while the previous one was still being written")]
    CommitInFlight,
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
    crate::parse::Pattern::parse(name).map_or("unknown", |p| p.as_str())
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
    /// Bytes after `len` handed to a [`CommitJob`] that has not finished.
    staged: u64,
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
    /// Seqs found without a readable record since open (`SpoolStatus::lost`).
    lost: u64,
    /// (segment, offset) of damage already quarantined, so reading past it does not count it again.
    known_bad: BTreeSet<(u64, u64)>,
    oldest_pending_ms: Option<u64>,
    cursor: Option<ReadCursor>,
    /// A cleared commit buffer kept for the next one (saves growing a fresh 1 MiB buffer).
    spare: Option<Vec<u8>>,
    /// A [`CommitJob`] is out: no other commit may start until it is finished.
    staging: bool,
    poisoned: bool,
    /// With `SpoolOptions::gate_on_positions`: the highest seq the saved
    /// read positions cover; a segment is deleted only once its records are at or below it.
    positions_saved: Option<u64>,
    room: Cell<Option<(Instant, bool)>>,
    /// Which events were acknowledged, kept after their segments are deleted.
    delivered: delivered::DeliveredLog,
    /// The tamper-evidence leaf log, written by commit jobs (`None`: `[tamper]` disabled).
    tree: Option<std::sync::Arc<std::sync::Mutex<leaves::LeafLog>>>,
    /// Leaf hashes the producers computed for appended, not yet staged records (seq order).
    leaf_hints: Vec<(u64, crate::tamper::merkle::Hash)>,
}

fn create_dir(path: &Path) -> Result<(), SpoolError> {
    crate::private::create_dir(path).map_err(io_err("create directory", path))
}

fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    crate::private::sync_dir(dir).map_err(|source| SpoolError::Fsync {
        path: dir.to_path_buf(),
        source,
    })
}

fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join("lock");
    let f = crate::private::options()
        .create(true)
        .truncate(false)
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
    let mut to = crate::private::options()
        .create(true)
        .truncate(true)
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
            lost: self.lost,
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

#[cfg(test)]
mod tests;

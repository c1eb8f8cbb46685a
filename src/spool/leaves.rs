//! The leaf log: one Merkle leaf per spooled event, in seq order, the tamper-evidence tree's
//! only persistent state (docs/tamper.md).
//!
//! `<state_dir>/tamper/leaves`: a 16-byte header (`BLVS`, version u16 = 1, 10 reserved bytes)
//! then one 64-byte entry per leaf: seq u64 | event id (16) | leaf hash (32) | kind u8 (0
//! event, 1 seal) | 3 reserved | CRC32C of bytes 0..60. Entry `i` is leaf `i`.
//!
//! Durability mirrors the delivered log ([`super::delivered`]): the commit job that fsynced
//! some records writes their entries right after (one `pwrite`, no fsync of its own); the log
//! is `fdatasync`ed before the spool deletes any segment. So every record is either still in a
//! segment or has a durable entry, and [`Spool::open`](super::Spool::open) appends the
//! entries a power failure took (records above the log's last seq) from the segments before
//! it deletes anything. A SIGKILL loses nothing: the written entries are in the page cache.
//! Entries are written only for fsynced records. If the log still names seqs the spool no
//! longer has at its end (a durable record cut off by damage, a spool deleted or restored),
//! the spool continues its seqs above them instead of reusing them: the tree keeps its
//! history, and verify reports those events as missing.

use super::format::{REC_OVERHEAD, SEG_HDR_LEN};
use super::{SpoolError, io_err};
use crate::tamper::merkle::{Frontier, Hash, leaf_hash};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Directory under `state_dir` for the tree and its keys.
pub const TAMPER_DIR: &str = "tamper";
/// The leaf log, under [`TAMPER_DIR`].
pub const LEAVES_FILE: &str = "leaves";
/// Pattern name of the seal events (their leaves are marked as seals).
pub const SEAL_PATTERN: &str = "tamper-seal";
const MAGIC: [u8; 4] = *b"BLVS";
const VERSION: u16 = 1;
/// Header bytes before the first entry.
pub const HDR_LEN: u64 = 16;
/// Bytes per entry.
pub const ENTRY_LEN: u64 = 64;

/// One leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafEntry {
    /// The spool seq of its record.
    pub seq: u64,
    /// The event id.
    pub id: Uuid,
    /// `SHA-256(0x00 || canonical event bytes)`.
    pub hash: Hash,
    /// The event is a seal.
    pub seal: bool,
}

impl LeafEntry {
    /// The entry of one spooled event.
    pub fn of_event(seq: u64, id: Uuid, pattern: &[u8], json: &str) -> LeafEntry {
        LeafEntry {
            seq,
            id,
            hash: event_leaf_hash(json),
            seal: pattern == SEAL_PATTERN.as_bytes(),
        }
    }

    fn encode(&self) -> [u8; ENTRY_LEN as usize] {
        let mut b = [0u8; ENTRY_LEN as usize];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..24].copy_from_slice(self.id.as_bytes());
        b[24..56].copy_from_slice(&self.hash);
        b[56] = u8::from(self.seal);
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<LeafEntry> {
        if b.len() != ENTRY_LEN as usize {
            return None;
        }
        let crc = u32::from_le_bytes([b[60], b[61], b[62], b[63]]);
        if crc32c::crc32c(&b[0..60]) != crc || b[56] > 1 {
            return None;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[0..8]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[8..24]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[24..56]);
        Some(LeafEntry {
            seq: u64::from_le_bytes(seq),
            id: Uuid::from_bytes(id),
            hash,
            seal: b[56] == 1,
        })
    }
}

/// The leaf hash of an event as the agent spooled it: its canonical bytes
/// ([`crate::tamper::canonical`]); an event that has none (never, for the agent's own JSON)
/// hashes its bytes as they are, so verify reports it as altered instead of losing it.
pub fn event_leaf_hash(json: &str) -> Hash {
    match crate::tamper::canonical::canonical_bytes_of_own(json) {
        Ok(bytes) => leaf_hash(&bytes),
        Err(_) => leaf_hash(json.as_bytes()),
    }
}

/// The tree head as of the last entry, and the last seal in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    /// Leaves so far.
    pub size: u64,
    /// MTH of them.
    pub root: Hash,
    /// (tree size, root) the last seal signed: a seal at leaf `i` covers leaves `0..i`.
    pub last_seal: Option<(u64, Hash)>,
}

/// The writer, shared by the spool and its commit jobs.
#[derive(Debug)]
pub struct LeafLog {
    path: PathBuf,
    file: File,
    count: u64,
    last_seq: u64,
    frontier: Frontier,
    last_seal: Option<(u64, Hash)>,
    /// Entries in the file that failed their CRC (kept where they are, counted, logged).
    pub damaged: u64,
}

impl LeafLog {
    /// Open (creating) `<state_dir>/tamper/leaves`. A torn last entry is cut off; the tree
    /// is rebuilt in memory.
    pub fn open(state_dir: &Path) -> Result<LeafLog, SpoolError> {
        let dir = state_dir.join(TAMPER_DIR);
        crate::private::create_dir(&dir).map_err(io_err("create directory", &dir))?;
        let path = dir.join(LEAVES_FILE);
        let mut file = crate::private::options()
            .read(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        let mut log = LeafLog {
            path: path.clone(),
            file: file.try_clone().map_err(io_err("open", &path))?,
            count: 0,
            last_seq: 0,
            frontier: Frontier::new(),
            last_seal: None,
            damaged: 0,
        };
        if len < HDR_LEN {
            log.file.set_len(0).map_err(io_err("truncate", &path))?;
            log.file
                .write_all_at(&header(), 0)
                .map_err(io_err("write", &path))?;
            log.file.sync_data().map_err(|source| SpoolError::Fsync {
                path: path.clone(),
                source,
            })?;
            crate::private::sync_dir(&dir).map_err(|source| SpoolError::Fsync {
                path: dir.clone(),
                source,
            })?;
            return Ok(log);
        }
        let mut hdr = [0u8; HDR_LEN as usize];
        file.read_exact(&mut hdr).map_err(io_err("read", &path))?;
        if hdr[0..4] != MAGIC {
            return Err(SpoolError::Io {
                op: "read",
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, "not a leaf log"),
            });
        }
        let version = u16::from_le_bytes([hdr[4], hdr[5]]);
        if version != VERSION {
            return Err(super::unsupported(&path, 0, version.into()));
        }
        let whole = (len - HDR_LEN) / ENTRY_LEN;
        let mut reader = io::BufReader::with_capacity(1 << 16, file);
        let mut buf = [0u8; ENTRY_LEN as usize];
        let mut good_end = 0;
        for i in 0..whole {
            reader.read_exact(&mut buf).map_err(io_err("read", &path))?;
            let entry = match LeafEntry::decode(&buf) {
                Some(e) => {
                    good_end = i + 1;
                    e
                }
                None => {
                    // Kept in place: later leaves depend on its position. Verify reports it.
                    log.damaged += 1;
                    tracing::error!(path = %path.display(), leaf = i, "tamper leaf log: entry fails its checksum");
                    LeafEntry {
                        seq: log.last_seq,
                        id: Uuid::nil(),
                        hash: buf[24..56].try_into().unwrap_or([0; 32]),
                        seal: false,
                    }
                }
            };
            if entry.seal {
                log.last_seal = Some((log.frontier.size(), log.frontier.root()));
            }
            log.frontier.push(entry.hash);
            log.last_seq = log.last_seq.max(entry.seq);
        }
        // Damage at the very end is a torn write, not history: cut it.
        let keep = good_end;
        if keep < whole {
            log.damaged -= whole - keep;
            log.frontier = Frontier::new();
            log.last_seal = None;
            log.last_seq = 0;
            for e in read_entries(&path, keep)? {
                if e.seal {
                    log.last_seal = Some((log.frontier.size(), log.frontier.root()));
                }
                log.frontier.push(e.hash);
                log.last_seq = log.last_seq.max(e.seq);
            }
        }
        log.count = keep;
        let want_len = HDR_LEN + keep * ENTRY_LEN;
        if want_len != len {
            tracing::warn!(path = %path.display(), bytes = len - want_len, "tamper leaf log: cut a torn last entry");
            log.file
                .set_len(want_len)
                .map_err(io_err("truncate", &path))?;
        }
        Ok(log)
    }

    /// Leaves so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The highest seq with a leaf (0: none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The current head and the last seal.
    pub fn head(&self) -> TreeHead {
        TreeHead {
            size: self.frontier.size(),
            root: self.frontier.root(),
            last_seal: self.last_seal,
        }
    }

    /// Append entries (in seq order) with one write, no fsync; the tree head moves with them.
    /// On an error nothing counts as written (a retry writes at the same offset).
    pub fn append(&mut self, entries: &[LeafEntry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(entries.len() * ENTRY_LEN as usize);
        for e in entries {
            buf.extend_from_slice(&e.encode());
        }
        self.file
            .write_all_at(&buf, HDR_LEN + self.count * ENTRY_LEN)?;
        for e in entries {
            if e.seal {
                self.last_seal = Some((self.frontier.size(), self.frontier.root()));
            }
            self.frontier.push(e.hash);
            self.last_seq = self.last_seq.max(e.seq);
        }
        self.count += entries.len() as u64;
        Ok(())
    }

    /// `fdatasync` (before a segment is deleted).
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.file.sync_data().map_err(|source| SpoolError::Fsync {
            path: self.path.clone(),
            source,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn header() -> [u8; HDR_LEN as usize] {
    let mut h = [0u8; HDR_LEN as usize];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// The first `max` entries of a leaf log, read without any lock (a torn or damaged entry
/// stops the read at the end; in the middle it is returned with a nil id).
pub fn read_entries(path: &Path, max: u64) -> Result<Vec<LeafEntry>, SpoolError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut hdr = [0u8; HDR_LEN as usize];
    if len < HDR_LEN {
        return Ok(Vec::new());
    }
    file.read_exact(&mut hdr).map_err(io_err("read", path))?;
    if hdr[0..4] != MAGIC {
        return Err(SpoolError::Io {
            op: "read",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, "not a leaf log"),
        });
    }
    let whole = ((len - HDR_LEN) / ENTRY_LEN).min(max);
    let mut reader = io::BufReader::with_capacity(1 << 16, file);
    let mut out = Vec::with_capacity(whole as usize);
    let mut buf = [0u8; ENTRY_LEN as usize];
    let mut good_end = 0;
    for _ in 0..whole {
        if reader.read_exact(&mut buf).is_err() {
            break;
        }
        match LeafEntry::decode(&buf) {
            Some(e) => {
                out.push(e);
                good_end = out.len();
            }
            None => out.push(LeafEntry {
                seq: 0,
                id: Uuid::nil(),
                hash: buf[24..56].try_into().unwrap_or([0; 32]),
                seal: false,
            }),
        }
    }
    out.truncate(good_end);
    Ok(out)
}

/// The leaf entries of the records in one staged commit buffer (`starts_segment`: the buffer
/// begins with a segment header). Records are walked frame by frame without copying. A
/// record whose seq `hints` names (sorted by seq; consumed as the walk passes them) takes that
/// hash, computed by its producer from the model; the others are hashed from their JSON.
pub fn entries_of_buffer(
    buf: &[u8],
    starts_segment: bool,
    hints: &mut &[(u64, Hash)],
    out: &mut Vec<LeafEntry>,
) {
    let mut at = if starts_segment { SEG_HDR_LEN } else { 0 };
    while at + REC_OVERHEAD <= buf.len() {
        let len =
            u32::from_le_bytes([buf[at + 8], buf[at + 9], buf[at + 10], buf[at + 11]]) as usize;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&buf[at + 12..at + 20]);
        let start = at + super::format::REC_HDR_LEN;
        let Some(payload) = buf.get(start..start + len) else {
            break;
        };
        if let Some((id, pattern, json)) = super::format::payload_raw_parts(payload) {
            let seq = u64::from_le_bytes(seq);
            while hints.first().is_some_and(|h| h.0 < seq) {
                *hints = &hints[1..];
            }
            match hints.first() {
                Some(&(s, hash)) if s == seq => {
                    *hints = &hints[1..];
                    out.push(LeafEntry {
                        seq,
                        id,
                        hash,
                        seal: pattern == SEAL_PATTERN.as_bytes(),
                    });
                }
                // Records from `append` are UTF-8 (a `&str`); recovery skips any other, so
                // does this.
                _ => {
                    if let Ok(json) = std::str::from_utf8(json) {
                        out.push(LeafEntry::of_event(seq, id, pattern, json));
                    }
                }
            }
        }
        at += REC_OVERHEAD + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tamper::merkle::root_of;

    fn entry(seq: u64, seal: bool) -> LeafEntry {
        LeafEntry {
            seq,
            id: Uuid::from_u128(seq as u128),
            hash: leaf_hash(&seq.to_le_bytes()),
            seal,
        }
    }

    #[test]
    fn entries_survive_reopen_with_head_and_last_seal() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LeafLog::open(dir.path()).unwrap();
        let es: Vec<LeafEntry> = (1..=10).map(|s| entry(s, s == 7)).collect();
        log.append(&es[..4]).unwrap();
        log.append(&es[4..]).unwrap();
        let head = log.head();
        let hashes: Vec<Hash> = es.iter().map(|e| e.hash).collect();
        assert_eq!(head.size, 10);
        assert_eq!(head.root, root_of(&hashes));
        assert_eq!(head.last_seal, Some((6, root_of(&hashes[..6]))));
        drop(log);
        let log = LeafLog::open(dir.path()).unwrap();
        assert_eq!(log.head(), head);
        assert_eq!(log.last_seq(), 10);
        let path = dir.path().join(TAMPER_DIR).join(LEAVES_FILE);
        assert_eq!(read_entries(&path, u64::MAX).unwrap(), es);
        assert_eq!(read_entries(&path, 3).unwrap(), es[..3]);
    }

    #[test]
    fn a_torn_last_entry_is_cut_and_the_next_write_goes_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LeafLog::open(dir.path()).unwrap();
        log.append(&[entry(1, false), entry(2, false)]).unwrap();
        let path = log.path().to_path_buf();
        drop(log);
        // Half an entry, then a whole entry of garbage.
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        use std::io::Write;
        (&f).write_all(&[7u8; 96]).unwrap();
        let mut log = LeafLog::open(dir.path()).unwrap();
        assert_eq!(log.count(), 2);
        assert_eq!(log.damaged, 0);
        log.append(&[entry(3, false)]).unwrap();
        let got = read_entries(&path, u64::MAX).unwrap();
        assert_eq!(got, vec![entry(1, false), entry(2, false), entry(3, false)]);
    }
}

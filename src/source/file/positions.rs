//! Persisted read positions of all file streams: `<state_dir>/positions.json`.
//!
//! In: [`Checkpoint`]s from the pipeline (sent only once everything before them is safe) and
//! forgotten streams. Out: per source, stream key → offset to resume at (and, for journald,
//! the cursor to resume after).
//!
//! Guarantees:
//! * writes are atomic: tmp file → fsync → the previous file is kept as `positions.json.bak`
//!   → rename → fsync of the directory; files are 0600, the directory 0700;
//! * a missing file means "no positions"; a corrupt one falls back to the `.bak`, else to
//!   nothing, with a loud error, and never stops start-up;
//! * the format is a versioned, tagged enum ([`StateFile`]): a format change is a new
//!   variant, never a silent reinterpretation;
//! * entries expire on load when they were last seen more than [`EXPIRE_AFTER`] before the
//!   newest entry in the file (the agent's own clock of activity, not the wall clock, so a
//!   long downtime does not wipe every position). Streams the source still follows are
//!   refreshed at least hourly (it reports their position even when idle).

use super::identity::{self, FileId};
use crate::source::{Checkpoint, StreamId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Entries not seen for this long (relative to the newest entry) are dropped on load.
pub const EXPIRE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

const FILE_NAME: &str = "positions.json";
const BAK_NAME: &str = "positions.json.bak";
const TMP_NAME: &str = "positions.json.tmp";

/// Why positions could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum PositionsError {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not hold a known format.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// One stream's saved position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `[[sources]] name`.
    pub source: String,
    /// Stream key (see `identity`).
    pub key: String,
    /// Where the stream was last seen (for humans).
    pub path: PathBuf,
    /// Resume here.
    pub offset: u64,
    /// Seconds since the Unix epoch when the position last changed or was confirmed.
    pub last_seen: u64,
    /// Resume after this opaque cursor (journald); absent for files and in files written
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Offset marker of file streams: crc32c of the ≤ 64 bytes before `offset`
    /// (`identity::marker_at`), checked on resume. Absent when it could not be computed
    /// (offset 0, the file already moved or gone) and in files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<u32>,
}

/// Where a file stream resumes: the saved offset and, if known, its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Resume here.
    pub offset: u64,
    /// The marker the bytes before `offset` must still have.
    pub marker: Option<u32>,
    /// Where the stream was last seen (empty if unknown).
    pub path: PathBuf,
}

impl From<u64> for Saved {
    fn from(offset: u64) -> Saved {
        Saved {
            offset,
            marker: None,
            path: PathBuf::new(),
        }
    }
}

/// The on-disk format, one variant per version (`{"version": 1, "positions": [...]}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateFile {
    /// Version 1.
    V1 {
        /// All entries.
        positions: Vec<Entry>,
    },
}

#[derive(Serialize, Deserialize)]
struct V1Repr {
    version: u32,
    positions: Vec<Entry>,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

impl StateFile {
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            StateFile::V1 { positions } => serde_json::to_vec_pretty(&V1Repr {
                version: 1,
                positions: positions.clone(),
            }),
        }
    }

    fn from_json(bytes: &[u8]) -> Result<StateFile, String> {
        let v: VersionOnly = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match v.version {
            1 => {
                let r: V1Repr = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                Ok(StateFile::V1 {
                    positions: r.positions,
                })
            }
            other => Err(format!("unsupported positions format version {other}")),
        }
    }
}

/// The positions of all file sources, in memory, persisted on demand.
#[derive(Debug)]
pub struct Positions {
    dir: PathBuf,
    entries: BTreeMap<(String, String), Entry>,
    /// File entries whose offset changed since their marker was last computed.
    unmarked: BTreeSet<(String, String)>,
    dirty: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PositionsError {
    let path = path.to_path_buf();
    move |source| PositionsError::Io { op, path, source }
}

fn read_state(path: &Path) -> Result<Option<StateFile>, PositionsError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            StateFile::from_json(&bytes)
                .map(Some)
                .map_err(|message| PositionsError::Format {
                    path: path.to_path_buf(),
                    message,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

impl Positions {
    /// Load `<state_dir>/positions.json` (missing = empty; corrupt → `.bak`, else empty, with
    /// a loud error). Creates `state_dir` (0700) if needed; fails only if that is impossible.
    pub fn load(state_dir: &Path) -> Result<Positions, PositionsError> {
        crate::private::create_dir(state_dir).map_err(io_err("create directory", state_dir))?;
        let main = state_dir.join(FILE_NAME);
        let bak = state_dir.join(BAK_NAME);
        let state = match read_state(&main) {
            Ok(Some(s)) => Some(s),
            Ok(None) => match read_state(&bak) {
                // A crash can only leave the main file missing if it never existed; a lone
                // .bak still beats starting from nothing.
                Ok(Some(s)) => {
                    tracing::warn!(path = %main.display(), "positions file missing; using the backup");
                    Some(s)
                }
                _ => None,
            },
            Err(e) => {
                tracing::error!(error = %e, "positions file unreadable; trying the backup");
                match read_state(&bak) {
                    Ok(Some(s)) => {
                        tracing::error!(path = %bak.display(), "read positions from the backup; streams may repeat lines read since");
                        Some(s)
                    }
                    Ok(None) => {
                        tracing::error!(path = %bak.display(), "no backup of the positions; starting without saved positions");
                        None
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "backup of the positions unreadable too; starting without saved positions");
                        None
                    }
                }
            }
        };
        let mut entries = BTreeMap::new();
        if let Some(StateFile::V1 { positions }) = state {
            let newest = positions.iter().map(|e| e.last_seen).max().unwrap_or(0);
            let cutoff = newest.saturating_sub(EXPIRE_AFTER.as_secs());
            for e in positions {
                if e.last_seen < cutoff {
                    tracing::info!(source = %e.source, key = %e.key, path = %e.path.display(), "position expired: stream not seen for 7 days");
                    continue;
                }
                entries.insert((e.source.clone(), e.key.clone()), e);
            }
        }
        Ok(Positions {
            dir: state_dir.to_path_buf(),
            entries,
            unmarked: BTreeSet::new(),
            dirty: false,
        })
    }

    /// Stream key → saved offset, for one source.
    pub fn known(&self, source: &str) -> BTreeMap<String, u64> {
        self.entries
            .values()
            .filter(|e| e.source == source)
            .map(|e| (e.key.clone(), e.offset))
            .collect()
    }

    /// Stream key → saved offset and marker, for one file source.
    pub fn resume(&self, source: &str) -> BTreeMap<String, Saved> {
        self.entries
            .values()
            .filter(|e| e.source == source)
            .map(|e| {
                (
                    e.key.clone(),
                    Saved {
                        offset: e.offset,
                        marker: e.marker,
                        path: e.path.clone(),
                    },
                )
            })
            .collect()
    }

    /// The saved cursor of one stream (journald), if any.
    pub fn cursor(&self, source: &str, key: &str) -> Option<String> {
        self.entries
            .get(&(source.to_owned(), key.to_owned()))
            .and_then(|e| e.cursor.clone())
    }

    /// Record a checkpoint as it is (the pipeline sends them in order, so a smaller offset
    /// means the stream really restarted).
    pub fn apply(&mut self, cp: &Checkpoint) {
        let s = &cp.stream;
        let id = (s.source.to_string(), s.key.clone());
        // An unchanged offset keeps its marker (idle heartbeats); a moved one gets a new one
        // at the next persist.
        let marker = match self.entries.get(&id) {
            Some(e) if e.offset == cp.offset => e.marker,
            _ => {
                if cp.offset > 0 && identity::parse_key(&s.key).is_some() {
                    self.unmarked.insert(id);
                }
                None
            }
        };
        let entry = Entry {
            source: s.source.to_string(),
            key: s.key.clone(),
            path: s.path.clone(),
            offset: cp.offset,
            last_seen: now_secs(),
            cursor: cp.cursor.clone(),
            marker,
        };
        self.entries
            .insert((entry.source.clone(), entry.key.clone()), entry);
        self.dirty = true;
    }

    /// Drop a stream that is gone for good.
    pub fn forget(&mut self, stream: &StreamId) {
        if self
            .entries
            .remove(&(stream.source.to_string(), stream.key.clone()))
            .is_some()
        {
            self.dirty = true;
        }
    }

    /// Whether something changed since the last successful [`Positions::persist`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Write atomically (see the module doc). A failure is counted and logged, and the
    /// positions stay dirty so the next call tries again.
    pub fn persist(&mut self) -> Result<(), PositionsError> {
        self.fill_markers();
        match self.write() {
            Ok(()) => {
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                crate::events::position_write_failed(
                    &self.dir.join(FILE_NAME).display().to_string(),
                    &e.to_string(),
                );
                Err(e)
            }
        }
    }

    /// Compute the markers of moved file entries from the file at the entry's path, but only
    /// if that is still the stream's file (same device, inode and first line): after a
    /// rename the path holds another file, and the entry then goes without a marker (resume
    /// unchecked, as before markers existed). The marker is read up to a second after the
    /// checkpoint; a rewrite within that second gives a marker of the new bytes, so the next
    /// start reads the file again from 0 (repeats, never skips).
    fn fill_markers(&mut self) {
        for id in std::mem::take(&mut self.unmarked) {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            entry.marker = stream_file(&entry.key, &entry.path)
                .and_then(|f| identity::marker_at(&f, entry.offset).ok().flatten());
        }
    }

    fn write(&self) -> Result<(), PositionsError> {
        let main = self.dir.join(FILE_NAME);
        let bak = self.dir.join(BAK_NAME);
        let tmp = self.dir.join(TMP_NAME);
        let state = StateFile::V1 {
            positions: self.entries.values().cloned().collect(),
        };
        let json = state.to_json().map_err(|e| PositionsError::Format {
            path: main.clone(),
            message: e.to_string(),
        })?;
        crate::private::write_synced(&tmp, &json).map_err(io_err("write and fsync", &tmp))?;
        // Keep the previous generation as .bak. A hard link keeps positions.json in place the
        // whole time, so there is no moment without a main file.
        if main.exists() {
            match std::fs::remove_file(&bak) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &bak)(e)),
            }
            if std::fs::hard_link(&main, &bak).is_err() {
                std::fs::copy(&main, &bak).map_err(io_err("copy to backup", &bak))?;
            }
        }
        std::fs::rename(&tmp, &main).map_err(io_err("rename over", &main))?;
        crate::private::sync_dir(&self.dir).map_err(io_err("fsync directory", &self.dir))?;
        Ok(())
    }
}

/// The file at `path` if it is the stream with this key.
fn stream_file(key: &str, path: &Path) -> Option<File> {
    let (want, crc) = identity::parse_key(key)?;
    let file = File::open(path).ok()?;
    let id = FileId::of(&file.metadata().ok()?);
    if id != want {
        return None;
    }
    let now = identity::file_key(&file, id, true).ok()??;
    (identity::parse_key(&now)?.1 == crc).then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    fn cp(source: &str, key: &str, offset: u64) -> Checkpoint {
        Checkpoint {
            stream: Arc::new(StreamId {
                source: Arc::from(source),
                key: key.to_owned(),
                path: PathBuf::from("/var/log/x.log"),
            }),
            offset,
            cursor: None,
        }
    }

    #[test]
    fn positions_persist_atomically_and_reload() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let mut p = Positions::load(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(p.known("a").is_empty());
        assert!(!p.is_dirty());
        p.apply(&cp("a", "file:1:2:aa", 10));
        p.apply(&cp("b", "file:1:3:bb", 5));
        assert!(p.is_dirty());
        p.persist().unwrap();
        assert!(!p.is_dirty());
        let main = dir.join(FILE_NAME);
        assert_eq!(
            std::fs::metadata(&main).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.join(TMP_NAME).exists());
        let text = std::fs::read_to_string(&main).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");

        // Second generation: the first becomes the .bak.
        p.apply(&cp("a", "file:1:2:aa", 20));
        p.forget(&cp("b", "file:1:3:bb", 0).stream);
        p.persist().unwrap();
        let again = Positions::load(&dir).unwrap();
        assert_eq!(
            again.known("a"),
            BTreeMap::from([("file:1:2:aa".to_owned(), 20)])
        );
        assert!(again.known("b").is_empty());

        // A corrupt main file falls back to the previous generation.
        std::fs::write(&main, b"{\"version\":1, \"positions\": [trunc").unwrap();
        let fallback = Positions::load(&dir).unwrap();
        assert_eq!(
            fallback.known("a"),
            BTreeMap::from([("file:1:2:aa".to_owned(), 10)])
        );
        assert_eq!(
            fallback.known("b"),
            BTreeMap::from([("file:1:3:bb".to_owned(), 5)])
        );

        // Both corrupt: empty, no failure.
        std::fs::write(dir.join(BAK_NAME), b"garbage").unwrap();
        let empty = Positions::load(&dir).unwrap();
        assert!(empty.known("a").is_empty());
    }

    #[test]
    fn cursor_round_trips_and_old_files_without_it_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            br#"{"version":1,"positions":[{"source":"a","key":"k","path":"/x","offset":1,"last_seen":1}]}"#,
        )
        .unwrap();
        let mut p = Positions::load(dir.path()).unwrap();
        assert_eq!(p.known("a"), BTreeMap::from([("k".to_owned(), 1)]));
        assert_eq!(p.cursor("a", "k"), None);
        let mut c = cp("j", "journald:j", 7);
        c.cursor = Some("s=abc;i=2".into());
        p.apply(&c);
        p.persist().unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(text.matches("cursor").count(), 1, "{text}");
        let again = Positions::load(dir.path()).unwrap();
        assert_eq!(
            again.cursor("j", "journald:j").as_deref(),
            Some("s=abc;i=2")
        );
        assert_eq!(again.cursor("a", "k"), None);
    }

    #[test]
    fn marker_is_computed_at_persist_from_the_stream_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"first\nsecond\nthird\n").unwrap();
        let f = File::open(&log).unwrap();
        let id = FileId::of(&f.metadata().unwrap());
        let key = identity::file_key(&f, id, false).unwrap().unwrap();
        let state = dir.path().join("state");
        let mut p = Positions::load(&state).unwrap();
        let mut c = cp("a", &key, 13);
        Arc::make_mut(&mut c.stream).path = log.clone();
        p.apply(&c);
        // Not a file stream, or not the file at the path: no marker.
        p.apply(&cp("a", "file:1:2:0000aaaa", 5));
        p.persist().unwrap();
        let again = Positions::load(&state).unwrap();
        let saved = again.resume("a");
        assert_eq!(
            saved[&key],
            Saved {
                offset: 13,
                marker: Some(crc32c::crc32c(b"first\nsecond\n")),
                path: log.clone(),
            }
        );
        assert_eq!(saved["file:1:2:0000aaaa"].marker, None);
        // Renamed away and replaced: the moved offset goes without a marker.
        std::fs::rename(&log, dir.path().join("a.log.1")).unwrap();
        std::fs::write(&log, b"first\nother\n").unwrap();
        let mut p = again;
        c.offset = 19;
        p.apply(&c);
        p.persist().unwrap();
        assert_eq!(
            Positions::load(&state).unwrap().resume("a")[&key].marker,
            None
        );
    }

    #[test]
    fn positions_without_markers_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            br#"{"version":1,"positions":[{"source":"a","key":"file:1:2:0000000a","path":"/x","offset":9,"last_seen":1}]}"#,
        )
        .unwrap();
        let mut p = Positions::load(dir.path()).unwrap();
        assert_eq!(p.resume("a")["file:1:2:0000000a"].offset, 9);
        p.persist().unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains("marker"), "{text}");
    }

    #[test]
    fn unknown_version_is_not_reinterpreted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            br#"{"version":2,"positions":[{"source":"a","key":"k","path":"/x","offset":1,"last_seen":1}]}"#,
        )
        .unwrap();
        let p = Positions::load(dir.path()).unwrap();
        assert!(p.known("a").is_empty());
    }

    #[test]
    fn stale_entries_expire_relative_to_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let newest = 1_000_000_000u64;
        let state = StateFile::V1 {
            positions: vec![
                Entry {
                    source: "a".into(),
                    key: "fresh".into(),
                    path: "/x".into(),
                    offset: 1,
                    last_seen: newest,
                    cursor: None,
                    marker: None,
                },
                Entry {
                    source: "a".into(),
                    key: "stale".into(),
                    path: "/y".into(),
                    offset: 2,
                    last_seen: newest - EXPIRE_AFTER.as_secs() - 1,
                    cursor: None,
                    marker: None,
                },
            ],
        };
        std::fs::write(dir.path().join(FILE_NAME), state.to_json().unwrap()).unwrap();
        let p = Positions::load(dir.path()).unwrap();
        assert_eq!(p.known("a"), BTreeMap::from([("fresh".to_owned(), 1)]));
    }
}

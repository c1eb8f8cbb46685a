//! Discovery and per-file follow state.
//!
//! [`Discovery`] turns the include/exclude globs into the set of files to follow, keyed by
//! [`FileId`] (device + inode), so a renamed file is still the same file and a new file at an
//! old path is a new one. [`Follower`] follows one open file: it notices truncation, reads new
//! complete lines, and once the file has left the watched names (rotated away or deleted) it
//! keeps reading the open handle until the file has been idle for a while, then releases it.
//!
//! Guarantees: a rotated or deleted file is never let go before it has been read to its end
//! and stayed idle for the release time; truncation (size below the read position, or a
//! changed first line) first reads the unread tail of a copytruncate copy, if one is found,
//! as the old stream's continuation, then restarts at 0 with a `Position(0)` for the old
//! stream; a saved position whose offset marker no longer matches is read from 0.

use super::identity::{self, FileId};
use super::reader::{LineReader, RawLine, ReadError};
use super::{Sink, Stopped};
use crate::source::{Checkpoint, LineFlags, LogLine, SourceMsg, StreamId, describe, to_text};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Idle streams report their position this often, so their saved position stays fresh.
const HEARTBEAT: Duration = Duration::from_secs(3600);

/// How far back `read_from = "end"` looks for the end of the last complete line.
const TAIL_WINDOW: u64 = 64 * 1024;

/// The include and exclude globs of one source.
#[derive(Debug)]
pub struct Discovery {
    include: Vec<String>,
    exclude: Vec<glob::Pattern>,
    /// Paths and patterns already complained about, so each problem is logged once.
    reported: HashSet<String>,
}

impl Discovery {
    /// Compile the globs; invalid exclude patterns are logged and ignored.
    pub fn new(source: &str, include: &[String], exclude: &[String]) -> Discovery {
        let exclude = exclude
            .iter()
            .filter_map(|p| match glob::Pattern::new(p) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(source, pattern = %p, error = %e, "invalid exclude glob; ignored");
                    None
                }
            })
            .collect();
        Discovery {
            include: include.to_vec(),
            exclude,
            reported: HashSet::new(),
        }
    }

    /// Whether `path` is excluded (by its full path or its file name).
    pub fn excluded(&self, path: &Path) -> bool {
        let name = path.file_name().and_then(|n| n.to_str());
        self.exclude
            .iter()
            .any(|p| p.matches_path(path) || name.is_some_and(|n| p.matches(n)))
    }

    /// The regular files matched right now, one path per file.
    pub fn scan(&mut self) -> BTreeMap<FileId, PathBuf> {
        let mut found = BTreeMap::new();
        for pattern in &self.include {
            let paths = match glob::glob(pattern) {
                Ok(p) => p,
                Err(e) => {
                    if self.reported.insert(pattern.clone()) {
                        tracing::error!(pattern = %pattern, error = %e, "invalid include glob; ignored");
                    }
                    continue;
                }
            };
            for entry in paths {
                let path = match entry {
                    Ok(p) => p,
                    Err(e) => {
                        let where_ = e.path().display().to_string();
                        if self.reported.insert(where_.clone()) {
                            tracing::warn!(path = %where_, error = %e.error(), "cannot read directory while matching globs; will retry");
                        }
                        continue;
                    }
                };
                if self.excluded(&path) {
                    continue;
                }
                if is_compressed_name(&path) {
                    if self.reported.insert(path.display().to_string()) {
                        tracing::info!(path = %path.display(), "compressed file matched by the include globs; not read (rotated copies are read through the live file)");
                    }
                    continue;
                }
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => {
                        found.entry(FileId::of(&m)).or_insert(path);
                    }
                    Ok(_) => {}
                    // Vanished between listing and stat: the next scan will tell.
                    Err(_) => {}
                }
            }
        }
        found
    }
}

/// File name endings of compressed files, which are never read.
pub const COMPRESSED_SUFFIXES: &[&str] = &[".gz", ".bz2", ".xz", ".zst", ".lz4", ".Z", ".zip"];

/// Whether the name says the file is compressed. Such files are skipped even when a glob
/// matches them: a compressed rotated file holds lines already read through the live file,
/// and reading it again would repeat them under a new stream (new inode, so new event ids).
/// (A `.gz` holding a saved stream's unread tail is read once at start-up, see `compressed`.)
pub fn is_compressed_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| COMPRESSED_SUFFIXES.iter().any(|s| n.ends_with(s)))
}

/// Where a newly found file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From its first byte.
    Beginning,
    /// After its last complete line (`read_from = "end"` for files present at start-up).
    End,
}

/// What one poll of a follower did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Polled {
    /// More data is waiting (the read budget ran out).
    pub more: bool,
    /// The file was released and the follower is to be dropped.
    pub released: bool,
}

/// The file has left the watched names: read it to its end, then release it.
#[derive(Debug)]
struct Gone {
    idle_since: Option<Instant>,
}

/// Follows one open file.
#[derive(Debug)]
pub struct Follower {
    id: FileId,
    file: File,
    path: PathBuf,
    source: Arc<str>,
    /// `None` until the file's head is settled (its first line is complete).
    stream: Option<Arc<StreamId>>,
    /// The stream before a truncation; forgotten if the new content turns out to be another.
    previous: Option<Arc<StreamId>>,
    reader: LineReader,
    max_line_bytes: u64,
    last_size: u64,
    gone: Option<Gone>,
    last_report: Instant,
    read_error_reported: bool,
    /// The offset marker at `reader.committed()`, as (offset, marker), refreshed after reads:
    /// what a copy of this file must have before that offset.
    marker: Option<(u64, u32)>,
    /// Copies (copytruncate) whose tail was read as this stream's continuation; the driver
    /// must never follow them as streams of their own.
    absorbed: Vec<FileId>,
}

impl Follower {
    /// Begin following `file` (found at `path`): resume at its saved position if `known` has
    /// one (taken out of `known`), else start as `start` says.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        source: &Arc<str>,
        path: PathBuf,
        file: File,
        start: Start,
        known: &mut BTreeMap<String, super::Saved>,
        max_line_bytes: u64,
        buf: &mut [u8],
        sink: &mut Sink,
    ) -> std::io::Result<Result<Follower, Stopped>> {
        let meta = file.metadata()?;
        let id = FileId::of(&meta);
        let size = meta.len();
        let key = identity::file_key(&file, id, false)?;
        let saved = key.as_ref().and_then(|k| known.remove(k));
        // Truncated or rewritten while stopped, with a marker to recognise a copy by: the
        // saved stream of this key, or of this inode with another first line.
        let stale = match (&key, &saved) {
            (
                Some(k),
                Some(super::Saved {
                    offset,
                    marker: Some(m),
                    ..
                }),
            ) if *offset > size || identity::marker_at(&file, *offset)? != Some(*m) => {
                Some((k.clone(), *offset, *m))
            }
            (Some(_), None) => {
                // Left in `known` unless its copy is found: the inode may simply have been
                // reused, and the stream's tail may be in a compressed file.
                known
                    .iter()
                    .find(|(k, _)| identity::parse_key(k).is_some_and(|(kid, _)| kid == id))
                    .and_then(|(k, s)| s.marker.map(|m| (k.clone(), s.offset, m)))
            }
            _ => None,
        };
        let offset = match saved {
            Some(super::Saved {
                offset: off,
                marker: Some(m),
                ..
            }) if off <= size && identity::marker_at(&file, off)? != Some(m) => {
                tracing::warn!(path = %path.display(), saved = off, "bytes before the saved position changed (file rewritten or truncated and regrown while stopped); reading it from the start");
                0
            }
            Some(super::Saved { offset: off, .. }) if off <= size => {
                tracing::info!(path = %path.display(), offset = off, "resuming file at its saved position");
                off
            }
            Some(super::Saved { offset: off, .. }) => {
                tracing::warn!(path = %path.display(), saved = off, size, "file is shorter than its saved position (truncated while stopped); reading it from the start");
                0
            }
            None => match start {
                Start::Beginning => 0,
                Start::End => tail_start(&file, size)?,
            },
        };
        let max = usize::try_from(max_line_bytes).unwrap_or(usize::MAX);
        let mut follower = Follower {
            id,
            file,
            path,
            source: source.clone(),
            stream: None,
            previous: None,
            reader: LineReader::new(offset, max),
            max_line_bytes,
            last_size: size,
            gone: None,
            last_report: Instant::now(),
            read_error_reported: false,
            marker: None,
            absorbed: Vec::new(),
        };
        follower.refresh_marker();
        if let Some((k, off, m)) = stale {
            match follower.copy_after_restart(&k, off, m, buf, sink) {
                Ok(true) => {
                    known.remove(&k);
                }
                Ok(false) => {}
                Err(stop) => return Ok(Err(stop)),
            }
        }
        if let Some(k) = key
            && let Err(stop) = follower.establish(k, sink)
        {
            return Ok(Err(stop));
        }
        Ok(Ok(follower))
    }

    /// The device and inode followed.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// copytruncate while stopped: the stream `key` was read up to `off` (marker `m`), but the
    /// file no longer holds those bytes. Read the unread tail of its copy, if there is one,
    /// as [`Follower::follow_copy`] does at run time; the stream then continues from 0 (or
    /// is forgotten if the file now holds another one). True if a copy was found.
    fn copy_after_restart(
        &mut self,
        key: &str,
        off: u64,
        m: u32,
        buf: &mut [u8],
        sink: &mut Sink,
    ) -> Result<bool, Stopped> {
        let stream = Arc::new(StreamId {
            source: self.source.clone(),
            key: key.to_owned(),
            path: self.path.clone(),
        });
        self.stream = Some(stream);
        let start = self.reader.committed();
        self.reader.reset(off);
        self.marker = Some((off, m));
        let result = self.follow_copy(buf, sink);
        self.reader.reset(start);
        self.marker = None;
        let stream = self.stream.take();
        result?;
        let absorbed = !self.absorbed.is_empty();
        if absorbed {
            // Continued (same key) or forgotten (another first line) by `establish`.
            self.previous = stream;
        }
        Ok(absorbed)
    }

    /// Copies absorbed since the last call (see `Follower::follow_copy`).
    pub fn take_absorbed(&mut self) -> Vec<FileId> {
        std::mem::take(&mut self.absorbed)
    }

    /// Whether `file` (id `cand`, at `path`) looks like a copy of this stream made by
    /// copytruncate: same directory and device, another inode, the same first line, and
    /// either still shorter than what was read (a copy in progress) or holding the same bytes
    /// just before the read position. Such a file is not followed as a stream of its own: its
    /// lines up to the read position were read from this file, and the rest is read through
    /// this follower once the truncation is seen.
    pub fn is_copy(&self, file: &File, cand: FileId, path: &Path) -> bool {
        let Some((want, size)) = self.copy_probe(cand, path, file) else {
            return false;
        };
        size < want || self.copy_marker_matches(file)
    }

    /// Same directory, device and first line; returns (committed offset, candidate size).
    fn copy_probe(&self, cand: FileId, path: &Path, file: &File) -> Option<(u64, u64)> {
        let stream = self.stream.as_ref()?;
        if cand.dev != self.id.dev || cand.ino == self.id.ino || path.parent() != self.path.parent()
        {
            return None;
        }
        let (_, crc) = identity::parse_key(&stream.key)?;
        let head = identity::file_key(file, cand, true).ok()??;
        if identity::parse_key(&head)?.1 != crc {
            return None;
        }
        let size = file.metadata().ok()?.len();
        Some((self.reader.committed(), size))
    }

    fn copy_marker_matches(&self, file: &File) -> bool {
        let at = self.reader.committed();
        match self.marker {
            Some((off, m)) if off == at => identity::marker_at(file, at).ok().flatten() == Some(m),
            _ => false,
        }
    }

    /// Remember the marker at the committed offset, if it moved.
    fn refresh_marker(&mut self) {
        let at = self.reader.committed();
        if self.marker.is_some_and(|(off, _)| off == at) {
            return;
        }
        self.marker = identity::marker_at(&self.file, at)
            .ok()
            .flatten()
            .map(|m| (at, m));
    }

    /// copytruncate while followed: the lines appended between our last read and logrotate's
    /// copy are only in the copy. Find it (same directory, first line and bytes before the
    /// read position, at least that long) and read its tail as the continuation of this
    /// stream: same key, offsets continuing from the read position, so the ids of lines
    /// already read do not change and the copy's new lines get the ids they would have had
    /// in the original. The copy is then absorbed: never followed as a stream of its own.
    fn follow_copy(&mut self, buf: &mut [u8], sink: &mut Sink) -> Result<(), Stopped> {
        let Some(stream) = self.stream.clone() else {
            return Ok(());
        };
        let at = self.reader.committed();
        if at == 0 || self.marker.is_none_or(|(off, _)| off != at) {
            return Ok(());
        }
        let Some(dir) = self.path.parent() else {
            return Ok(());
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let cand = FileId::of(&meta);
            match self.copy_probe(cand, &path, &file) {
                Some((want, size)) if size >= want && self.copy_marker_matches(&file) => {}
                _ => continue,
            }
            let max = usize::try_from(self.max_line_bytes).unwrap_or(usize::MAX);
            let mut reader = LineReader::new(at, max);
            let limit = self.max_line_bytes;
            let mut emit = |raw: RawLine<'_>| emit_line(&stream, raw, limit, sink);
            match reader.read(&file, buf, meta.len(), u64::MAX, &mut emit) {
                Ok(_) => {}
                Err(ReadError::Emit(stop)) => return Err(stop),
                Err(ReadError::Io(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the copy left by copytruncate; its last lines may be missing");
                }
            }
            // The copy is complete (logrotate truncates only after copying).
            reader.finish(&mut emit)?;
            tracing::info!(path = %self.path.display(), copy = %path.display(), from = at, to = reader.position(), "file truncated after being copied (copytruncate); read the copy's unread tail");
            // Saved under the copy's own key at its end, so that after a restart a glob that
            // matches the copy resumes it there instead of reading it again from 0.
            if let Ok(Some(copy_key)) = identity::file_key(&file, cand, true) {
                sink.message(SourceMsg::Position(Checkpoint {
                    stream: Arc::new(StreamId {
                        source: self.source.clone(),
                        key: copy_key,
                        path: path.clone(),
                    }),
                    offset: reader.position(),
                    cursor: None,
                }))?;
            }
            self.absorbed.push(cand);
            return Ok(());
        }
        Ok(())
    }

    /// The file is (again) matched by the globs, at `path`.
    pub fn seen_at(&mut self, path: &Path) {
        if self.gone.take().is_some() {
            tracing::info!(path = %path.display(), "file is back under a watched name");
        }
        if self.path != path {
            tracing::info!(from = %self.path.display(), to = %path.display(), "file renamed; still following it");
            self.path = path.to_path_buf();
        }
    }

    /// The file is no longer matched: it was rotated away or deleted.
    pub fn mark_gone(&mut self) {
        if self.gone.is_none() {
            tracing::info!(path = %self.path.display(), "file rotated away or deleted; reading it to the end before letting go");
            self.gone = Some(Gone { idle_since: None });
        }
    }

    /// The stream with this key becomes the current one. A Position at the start offset is
    /// sent first, so that a restart before any line is acknowledged resumes here rather than
    /// at the end of the file.
    fn establish(&mut self, key: String, sink: &mut Sink) -> Result<(), Stopped> {
        let stream = match self.previous.take() {
            Some(prev) if prev.key == key => prev,
            prev => {
                if let Some(prev) = prev {
                    sink.message(SourceMsg::Forget(prev))?;
                }
                Arc::new(StreamId {
                    source: self.source.clone(),
                    key,
                    path: self.path.clone(),
                })
            }
        };
        sink.message(SourceMsg::Position(Checkpoint {
            stream: stream.clone(),
            offset: self.reader.committed(),
            cursor: None,
        }))?;
        self.stream = Some(stream);
        self.last_report = Instant::now();
        Ok(())
    }

    /// The file shrank below what was read, or its first line changed: read the tail of a
    /// copytruncate copy if there is one, then start again at 0.
    fn truncated(&mut self, size: u64, buf: &mut [u8], sink: &mut Sink) -> Result<(), Stopped> {
        self.follow_copy(buf, sink)?;
        tracing::warn!(path = %self.path.display(), read = self.reader.position(), size, "file truncated or rewritten; reading it again from the start");
        self.reader.reset(0);
        self.marker = None;
        if let Some(stream) = self.stream.take() {
            sink.message(SourceMsg::Position(Checkpoint {
                stream: stream.clone(),
                offset: 0,
                cursor: None,
            }))?;
            self.previous = Some(stream);
        }
        Ok(())
    }

    /// Check the file and read what is new (at most `budget` bytes). Releases the file when
    /// it is gone, read to its end and idle for `release_after`.
    pub fn poll(
        &mut self,
        buf: &mut [u8],
        budget: u64,
        release_after: Duration,
        sink: &mut Sink,
    ) -> Result<Polled, Stopped> {
        let size = match self.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                self.report_read_error(&e);
                return Ok(Polled::default());
            }
        };
        if size < self.reader.position() {
            self.truncated(size, buf, sink)?;
        } else if size != self.last_size
            && let Some(stream) = &self.stream
        {
            // Cheap (one read of ≤ 1 KiB, only when the size changed) and catches a file that
            // was truncated and regrew past our offset between two polls.
            match identity::file_key(&self.file, self.id, false) {
                Ok(k) if k.as_deref() != Some(stream.key.as_str()) => {
                    self.truncated(size, buf, sink)?
                }
                Ok(_) => {}
                Err(e) => self.report_read_error(&e),
            }
        }
        let grew = size != self.last_size;
        self.last_size = size;
        let mut polled = Polled::default();
        let mut bytes = 0;
        if self.ensure_stream(false, sink)? {
            match self.read(buf, size, budget, sink) {
                Ok(o) => {
                    polled.more = o.more;
                    bytes = o.bytes;
                }
                Err(ReadError::Emit(stop)) => return Err(stop),
                Err(ReadError::Io(e)) => self.report_read_error(&e),
            }
        }
        if bytes > 0 {
            self.last_report = Instant::now();
            self.refresh_marker();
        } else if let Some(stream) = &self.stream
            && self.gone.is_none()
            && self.last_report.elapsed() >= HEARTBEAT
        {
            sink.message(SourceMsg::Position(Checkpoint {
                stream: stream.clone(),
                offset: self.reader.committed(),
                cursor: None,
            }))?;
            self.last_report = Instant::now();
        }
        if let Some(gone) = &mut self.gone {
            // Idle = no growth and nothing read. Not "read position == size": a file whose only
            // content is an incomplete first line is never read before its release, and
            // `release` reads whatever is left anyway.
            if bytes > 0 || grew || polled.more {
                gone.idle_since = None;
            } else if gone.idle_since.get_or_insert_with(Instant::now).elapsed() >= release_after {
                self.release(buf, sink)?;
                polled.released = true;
            }
        }
        Ok(polled)
    }

    /// Make sure the stream key is known; `settled` accepts an incomplete first line (the
    /// file is being released). False while there is no complete line to read yet.
    fn ensure_stream(&mut self, settled: bool, sink: &mut Sink) -> Result<bool, Stopped> {
        if self.stream.is_some() {
            return Ok(true);
        }
        match identity::file_key(&self.file, self.id, settled) {
            Ok(Some(k)) => {
                self.establish(k, sink)?;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                self.report_read_error(&e);
                Ok(false)
            }
        }
    }

    fn read(
        &mut self,
        buf: &mut [u8],
        size: u64,
        budget: u64,
        sink: &mut Sink,
    ) -> Result<super::reader::ReadOutcome, ReadError<Stopped>> {
        let Some(stream) = self.stream.clone() else {
            return Ok(super::reader::ReadOutcome {
                bytes: 0,
                more: false,
            });
        };
        let max = self.max_line_bytes;
        let mut emit = |raw: RawLine<'_>| emit_line(&stream, raw, max, sink);
        let outcome = self.reader.read(&self.file, buf, size, budget, &mut emit)?;
        self.read_error_reported = false;
        Ok(outcome)
    }

    /// Read whatever is left, hand out a final line without newline, and forget the stream
    /// if the file was deleted. Used when letting go of a gone file and at the end of
    /// `--once`.
    pub fn release(&mut self, buf: &mut [u8], sink: &mut Sink) -> Result<(), Stopped> {
        if !self.ensure_stream(true, sink)? {
            // Empty file: nothing was or will be read.
            return Ok(());
        }
        loop {
            let size = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            match self.read(buf, size, u64::MAX, sink) {
                Ok(o) if o.more => continue,
                Ok(_) => break,
                Err(ReadError::Emit(stop)) => return Err(stop),
                Err(ReadError::Io(e)) => {
                    self.report_read_error(&e);
                    break;
                }
            }
        }
        let Some(stream) = self.stream.clone() else {
            return Ok(());
        };
        let max = self.max_line_bytes;
        self.reader
            .finish(&mut |raw: RawLine<'_>| emit_line(&stream, raw, max, sink))?;
        let deleted = self
            .file
            .metadata()
            .map(|m| m.nlink() == 0)
            .unwrap_or(false);
        if self.gone.is_some() {
            if deleted {
                tracing::info!(path = %self.path.display(), "deleted file read to the end; forgetting it");
                sink.message(SourceMsg::Forget(stream))?;
            } else {
                tracing::info!(path = %self.path.display(), "rotated file read to the end; letting go");
            }
        }
        Ok(())
    }

    fn report_read_error(&mut self, e: &std::io::Error) {
        if !self.read_error_reported {
            self.read_error_reported = true;
            tracing::warn!(path = %self.path.display(), error = %e, "cannot read file; will retry");
        }
    }
}

/// Turn a raw line into a [`LogLine`] and hand it to the sink.
pub(super) fn emit_line(
    stream: &Arc<StreamId>,
    raw: RawLine<'_>,
    max: u64,
    sink: &mut Sink,
) -> Result<(), Stopped> {
    let (text, invalid_utf8) = to_text(raw.bytes);
    if raw.truncated {
        crate::events::line_truncated(&describe(stream), raw.offset, max, "max_line_bytes");
    }
    if invalid_utf8 {
        crate::events::invalid_utf8(&describe(stream), raw.offset);
    }
    sink.push(LogLine {
        stream: stream.clone(),
        offset: raw.offset,
        end: raw.end,
        text,
        flags: LineFlags {
            truncated: raw.truncated,
            invalid_utf8,
        },
    })
}

/// Where `read_from = "end"` starts: just after the last complete line, so a line being
/// written right now is read once it is complete (not from its middle). Without a newline in
/// the last [`TAIL_WINDOW`] bytes, the file's end.
fn tail_start(file: &File, size: u64) -> std::io::Result<u64> {
    let from = size.saturating_sub(TAIL_WINDOW);
    let mut tail = vec![0u8; usize::try_from(size - from).unwrap_or(0)];
    file.read_exact_at(&mut tail, from)?;
    Ok(match memchr::memrchr(b'\n', &tail) {
        Some(i) => from + i as u64 + 1,
        None if from == 0 => 0,
        None => size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_rotated_files_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "access.log",
            "access.log.1",
            "access.log.2.gz",
            "access.log.3.zst",
        ] {
            std::fs::write(dir.path().join(name), format!("{name}\n")).unwrap();
        }
        let glob = format!("{}/access.log*", dir.path().display());
        let mut d = Discovery::new("t", &[glob], &[]);
        let mut names: Vec<String> = d
            .scan()
            .values()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["access.log", "access.log.1"]);
        assert!(is_compressed_name(Path::new("/var/log/auth.log.4.gz")));
        assert!(!is_compressed_name(Path::new("/var/log/gz/auth.log")));
    }
}

//! Unread lines of a followed file that was rotated *and* gzip-compressed while the agent was
//! stopped (logrotate `compress` without `delaycompress`).
//!
//! In: the saved positions no file claimed at start-up. Out: the remaining lines of each such
//! stream, read from its `.gz` copy, then a `Forget` of the stream.
//!
//! A `.gz` next to the stream's last path whose name starts with that path's file name is
//! the stream's copy when its decompressed first line has the stream key's checksum, it is at
//! least as long as the saved offset, and (when the position has a marker) the decompressed
//! bytes before the offset have that marker. Its lines after the offset are read under the
//! stream's own key with decompressed offsets, so their ids are the ones they would have had
//! in the original file; the stream is then forgotten, so the copy is read once and never
//! again (compressed files are otherwise never read, see `watcher::is_compressed_name`).
//! A crash before the positions are saved repeats the same lines with the same ids.

use super::identity::{self, HEAD_BYTES, MARKER_BYTES};
use super::reader::{LineReader, RawLine};
use super::watcher::emit_line;
use super::{Saved, Sink, Stopped};
use crate::source::{SourceMsg, StreamId};
use flate2::read::MultiGzDecoder;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Read the unread tails of the streams in `unclaimed` (key → saved position) from their
/// gzip copies. Returns the keys read (and forgotten); streams without a copy are left alone.
pub fn recover(
    source: &Arc<str>,
    unclaimed: &BTreeMap<String, Saved>,
    max_line_bytes: u64,
    buf: &mut [u8],
    sink: &mut Sink,
) -> Result<Vec<String>, Stopped> {
    let mut done = Vec::new();
    for (key, saved) in unclaimed {
        let path = &saved.path;
        let Some((_, crc)) = identity::parse_key(key) else {
            continue;
        };
        for gz in candidates(path) {
            match matches(&gz, crc, saved) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::debug!(path = %gz.display(), error = %e, "compressed file unreadable; not a candidate");
                    continue;
                }
            }
            let stream = Arc::new(StreamId {
                source: source.clone(),
                key: key.clone(),
                path: gz.clone(),
            });
            match read_tail(&gz, &stream, saved.offset, max_line_bytes, buf, sink) {
                Ok(Ok(end)) => {
                    tracing::info!(path = %gz.display(), from = saved.offset, to = end, "read the unread lines of a file compressed after rotation while stopped");
                }
                Ok(Err(stop)) => return Err(stop),
                Err(e) => {
                    tracing::warn!(path = %gz.display(), error = %e, "compressed rotated file could not be read to its end; lines after the error are missing");
                }
            }
            sink.message(SourceMsg::Forget(stream))?;
            done.push(key.clone());
            break;
        }
    }
    Ok(done)
}

/// `.gz` files beside `path` whose name starts with its file name (`access.log.1.gz`).
fn candidates(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(name) && n.ends_with(".gz"))
                && p.is_file()
        })
        .collect();
    found.sort();
    found
}

/// Whether the decompressed `gz` is the stream with head checksum `crc` and position `saved`.
fn matches(gz: &Path, crc: u32, saved: &Saved) -> io::Result<bool> {
    let mut data = MultiGzDecoder::new(File::open(gz)?);
    let want = usize::try_from(saved.offset)
        .unwrap_or(usize::MAX)
        .max(HEAD_BYTES);
    // The head and the bytes before the offset: read up to the offset, keeping the head and
    // the last MARKER_BYTES bytes only.
    let mut head = Vec::with_capacity(HEAD_BYTES);
    let mut tail: Vec<u8> = Vec::with_capacity(2 * MARKER_BYTES as usize);
    let mut chunk = [0u8; 8192];
    let mut at = 0usize;
    while at < want {
        let n = data.read(&mut chunk[..(want - at).min(8192)])?;
        if n == 0 {
            break;
        }
        let got = &chunk[..n];
        if head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - head.len()).min(n);
            head.extend_from_slice(&got[..take]);
            // Another stream: stop before decompressing up to the offset.
            if identity::head_crc(&head, false).is_some_and(|c| c != crc) {
                return Ok(false);
            }
        }
        if at < saved.offset as usize {
            let upto = (saved.offset as usize - at).min(n);
            tail.extend_from_slice(&got[..upto]);
            let keep = MARKER_BYTES as usize;
            if tail.len() > keep {
                tail.drain(..tail.len() - keep);
            }
        }
        at += n;
    }
    if (at as u64) < saved.offset || identity::head_crc(&head, true) != Some(crc) {
        return Ok(false);
    }
    Ok(match saved.marker {
        Some(m) => crc32c::crc32c(&tail) == m,
        None => true,
    })
}

/// Emit the lines of the decompressed `gz` after `offset`; the end offset read.
fn read_tail(
    gz: &Path,
    stream: &Arc<StreamId>,
    offset: u64,
    max_line_bytes: u64,
    buf: &mut [u8],
    sink: &mut Sink,
) -> io::Result<Result<u64, Stopped>> {
    let mut data = MultiGzDecoder::new(File::open(gz)?);
    io::copy(&mut (&mut data).take(offset), &mut io::sink())?;
    let max = usize::try_from(max_line_bytes).unwrap_or(usize::MAX);
    let mut reader = LineReader::new(offset, max);
    let mut emit = |raw: RawLine<'_>| emit_line(stream, raw, max_line_bytes, sink);
    loop {
        let n = data.read(buf)?;
        if n == 0 {
            break;
        }
        if let Err(stop) = reader.feed(&buf[..n], &mut emit) {
            return Ok(Err(stop));
        }
    }
    if let Err(stop) = reader.finish(&mut emit) {
        return Ok(Err(stop));
    }
    Ok(Ok(reader.position()))
}

//! File identity: which stream a file is, independent of its name.
//!
//! In: an open file. Out: a stream key `file:<dev>:<ino>:<crc32c of the head, hex>` where the
//! head is the first line's first ≤ [`HEAD_BYTES`] bytes (without its `\n`).
//!
//! Guarantees: the key does not change when the file is renamed or the agent restarts (the
//! inode and the first line do not change), and an inode reused for a file with different
//! content gets a different key, so it is read from 0 instead of resuming at a stale offset.
//! The key exists only once the head is settled: the first line is complete or already
//! [`HEAD_BYTES`] long. Since only complete lines are emitted, a key is always available by the
//! time a file's first line is.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

/// How many bytes of the first line go into the key.
pub const HEAD_BYTES: usize = 1024;

/// How many bytes just before a saved offset go into its marker.
pub const MARKER_BYTES: u64 = 64;

/// Device and inode: how the file is recognised while it is open and across renames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    /// The id of the file `meta` describes.
    pub fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The stream key for a file with this id and head checksum.
pub fn key(id: FileId, head_crc: u32) -> String {
    format!("file:{}:{}:{head_crc:08x}", id.dev, id.ino)
}

/// The checksum of a head: crc32c of the first line's first ≤ [`HEAD_BYTES`] bytes.
///
/// `data` is what the file starts with; `settled` says whether a shorter, newline-less `data`
/// is final anyway (the file is being released and will not grow any more). Returns `None`
/// while the head may still change, and for an empty file (it has no stream yet).
pub fn head_crc(data: &[u8], settled: bool) -> Option<u32> {
    if data.is_empty() {
        return None;
    }
    let window = &data[..data.len().min(HEAD_BYTES)];
    match memchr::memchr(b'\n', window) {
        Some(nl) => Some(crc32c::crc32c(&window[..nl])),
        None if window.len() == HEAD_BYTES || settled => Some(crc32c::crc32c(window)),
        None => None,
    }
}

/// Read the head of `file` and compute its key, or `None` while the first line is incomplete
/// and shorter than [`HEAD_BYTES`] (unless `settled`).
pub fn file_key(file: &File, id: FileId, settled: bool) -> io::Result<Option<String>> {
    let mut head = [0u8; HEAD_BYTES];
    let mut filled = 0;
    while filled < HEAD_BYTES {
        let n = file.read_at(&mut head[filled..], filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
        if memchr::memchr(b'\n', &head[filled - n..filled]).is_some() {
            break;
        }
    }
    Ok(head_crc(&head[..filled], settled).map(|crc| key(id, crc)))
}

/// The parts of a stream key made by [`key`]: id and head checksum; `None` for other keys.
pub fn parse_key(key: &str) -> Option<(FileId, u32)> {
    let mut parts = key.strip_prefix("file:")?.split(':');
    let dev = parts.next()?.parse().ok()?;
    let ino = parts.next()?.parse().ok()?;
    let crc = u32::from_str_radix(parts.next()?, 16).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((FileId { dev, ino }, crc))
}

/// The offset marker: crc32c of the (up to) [`MARKER_BYTES`] bytes just before `offset`, so a
/// resume can check that the bytes it skips are still the ones that were read. `None` at
/// offset 0 (nothing to check) and when the file is shorter than `offset`.
pub fn marker_at(file: &File, offset: u64) -> io::Result<Option<u32>> {
    if offset == 0 {
        return Ok(None);
    }
    let from = offset.saturating_sub(MARKER_BYTES);
    let mut bytes = [0u8; MARKER_BYTES as usize];
    let want = &mut bytes[..usize::try_from(offset - from).unwrap_or(0)];
    match file.read_exact_at(want, from) {
        Ok(()) => Ok(Some(crc32c::crc32c(want))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn head_needs_a_complete_first_line_or_enough_bytes() {
        assert_eq!(head_crc(b"", false), None);
        assert_eq!(head_crc(b"", true), None);
        assert_eq!(head_crc(b"partial", false), None);
        assert_eq!(head_crc(b"partial", true), Some(crc32c::crc32c(b"partial")));
        assert_eq!(head_crc(b"one\ntwo\n", false), Some(crc32c::crc32c(b"one")));
        let long = vec![b'x'; HEAD_BYTES + 10];
        assert_eq!(
            head_crc(&long, false),
            Some(crc32c::crc32c(&long[..HEAD_BYTES]))
        );
        // A first line exactly HEAD_BYTES long gives the same key before and after its newline.
        let mut exact = vec![b'y'; HEAD_BYTES];
        let before = head_crc(&exact, false);
        exact.push(b'\n');
        assert_eq!(before, head_crc(&exact, false));
    }

    #[test]
    fn key_is_stable_across_rename() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        let mut f = File::create(&a).unwrap();
        f.write_all(b"first line\nsecond\n").unwrap();
        let file = File::open(&a).unwrap();
        let id = FileId::of(&file.metadata().unwrap());
        let before = file_key(&file, id, false).unwrap().unwrap();
        let b = dir.path().join("b.log.1");
        std::fs::rename(&a, &b).unwrap();
        f.write_all(b"third\n").unwrap();
        let reopened = File::open(&b).unwrap();
        let id2 = FileId::of(&reopened.metadata().unwrap());
        assert_eq!(id, id2);
        assert_eq!(
            Some(before.clone()),
            file_key(&reopened, id2, false).unwrap()
        );
        assert!(before.starts_with(&format!("file:{}:{}:", id.dev, id.ino)));
    }

    #[test]
    fn key_parses_back_and_marker_covers_the_bytes_before_the_offset() {
        let id = FileId { dev: 7, ino: 42 };
        assert_eq!(parse_key(&key(id, 0xab)), Some((id, 0xab)));
        assert_eq!(parse_key("journald:x"), None);
        assert_eq!(parse_key("file:1:2:zz"), None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut data = b"head\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 100));
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(marker_at(&f, 0).unwrap(), None);
        assert_eq!(marker_at(&f, 5).unwrap(), Some(crc32c::crc32c(b"head\n")));
        assert_eq!(
            marker_at(&f, 105).unwrap(),
            Some(crc32c::crc32c(&data[41..105]))
        );
        assert_eq!(marker_at(&f, 200).unwrap(), None);
    }

    #[test]
    fn different_first_line_gives_a_different_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"generation one\n").unwrap();
        let f = File::open(&p).unwrap();
        let id = FileId::of(&f.metadata().unwrap());
        let k1 = file_key(&f, id, false).unwrap();
        std::fs::write(&p, b"generation two\n").unwrap();
        let k2 = file_key(&f, id, false).unwrap();
        assert_ne!(k1, k2);
    }
}

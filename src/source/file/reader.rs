//! Bounded line reading from one file.
//!
//! In: an open file, read with positional reads into a caller-owned buffer (so one buffer
//! serves every file). Out: [`RawLine`]s, each with the exact byte range it occupies.
//!
//! Guarantees:
//! * lines are split on `\n`; one trailing `\r` is stripped;
//! * `offset` is the first byte of the line, `end` is just past its `\n`, so resuming at a
//!   line's `end` continues exactly after it;
//! * an incomplete last line is held back until its `\n` arrives (or [`LineReader::finish`]
//!   is called when the file is being released);
//! * memory is bounded: at most `max_line_bytes + 1` bytes of a pending line are kept; a longer
//!   line is cut at `max_line_bytes` (backing off to a UTF-8 character start when the cut would
//!   split one), flagged, and the rest of it is skipped up to its newline.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// One line as read: bytes without terminator, cut to the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLine<'a> {
    /// Offset of the first byte of the line.
    pub offset: u64,
    /// Offset just past the `\n` (or the end of the data for a final line without one).
    pub end: u64,
    /// The line, without `\n` and one trailing `\r`, at most `max_line_bytes` long.
    pub bytes: &'a [u8],
    /// The line was longer than `max_line_bytes` and was cut.
    pub truncated: bool,
}

/// What one call to [`LineReader::read`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Bytes read from the file.
    pub bytes: u64,
    /// Reading stopped because the budget was used up, not because the data ended.
    pub more: bool,
}

/// The read state of one file: where the next read starts and the pending (incomplete) line.
#[derive(Debug)]
pub struct LineReader {
    /// The next byte to read from the file.
    pos: u64,
    /// Where the pending line starts (== `pos` when nothing is pending).
    line_start: u64,
    /// The first ≤ `max + 1` bytes of the pending line.
    pending: Vec<u8>,
    /// The pending line outgrew `pending`; the rest up to its newline is being skipped.
    overflow: bool,
    max: usize,
}

impl LineReader {
    /// A reader starting at `offset` (which must be the start of a line), with lines cut at
    /// `max_line_bytes`.
    pub fn new(offset: u64, max_line_bytes: usize) -> LineReader {
        LineReader {
            pos: offset,
            line_start: offset,
            pending: Vec::new(),
            overflow: false,
            max: max_line_bytes.max(1),
        }
    }

    /// How far the file has been read (including a pending partial line).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Where the pending line starts: everything before it has been handed out.
    pub fn committed(&self) -> u64 {
        self.line_start
    }

    /// Whether an incomplete line is held back.
    pub fn has_pending(&self) -> bool {
        self.pos > self.line_start
    }

    /// Start again at `offset` (truncation), dropping the pending line.
    pub fn reset(&mut self, offset: u64) {
        self.pos = offset;
        self.line_start = offset;
        self.pending.clear();
        self.overflow = false;
    }

    /// Read from the current position until `until` (the size last seen) or the end of the
    /// data, at most `budget` bytes, handing every complete line to `emit`. An error from
    /// `emit` stops reading and is returned as is (the reader is then not to be used again).
    pub fn read<E>(
        &mut self,
        file: &File,
        buf: &mut [u8],
        until: u64,
        budget: u64,
        emit: &mut dyn FnMut(RawLine<'_>) -> Result<(), E>,
    ) -> Result<ReadOutcome, ReadError<E>> {
        let mut total = 0u64;
        while self.pos < until {
            if total >= budget {
                return Ok(ReadOutcome {
                    bytes: total,
                    more: true,
                });
            }
            let want = usize::try_from(until - self.pos)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = file
                .read_at(&mut buf[..want], self.pos)
                .map_err(ReadError::Io)?;
            if n == 0 {
                break;
            }
            self.consume(&buf[..n], emit).map_err(ReadError::Emit)?;
            total += n as u64;
        }
        Ok(ReadOutcome {
            bytes: total,
            more: false,
        })
    }

    /// Hand the reader the next bytes of a stream that is not a plain file (a decompressed
    /// rotated file): `data` continues at [`LineReader::position`].
    pub fn feed<E>(
        &mut self,
        data: &[u8],
        emit: &mut dyn FnMut(RawLine<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.consume(data, emit)
    }

    /// Split `data` (the bytes at `self.pos`) into lines.
    fn consume<E>(
        &mut self,
        data: &[u8],
        emit: &mut dyn FnMut(RawLine<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let base = self.pos;
        self.pos += data.len() as u64;
        let mut i = 0;
        while i < data.len() {
            let Some(j) = memchr::memchr(b'\n', &data[i..]) else {
                self.hold(&data[i..]);
                break;
            };
            let nl = i + j;
            let end = base + nl as u64 + 1;
            let offset = self.line_start;
            self.line_start = end;
            if self.pending.is_empty() && !self.overflow {
                let (bytes, truncated) = shape(&data[i..nl], false, self.max);
                emit(RawLine {
                    offset,
                    end,
                    bytes,
                    truncated,
                })?;
            } else {
                self.hold(&data[i..nl]);
                let (bytes, truncated) = shape(&self.pending, self.overflow, self.max);
                let result = emit(RawLine {
                    offset,
                    end,
                    bytes,
                    truncated,
                });
                self.pending.clear();
                self.overflow = false;
                result?;
            }
            i = nl + 1;
        }
        Ok(())
    }

    /// Keep the start of the pending line, up to `max + 1` bytes (one more than the limit so
    /// that a line of exactly `max` bytes plus `\r` is not mistaken for a long one).
    fn hold(&mut self, bytes: &[u8]) {
        let room = (self.max + 1).saturating_sub(self.pending.len());
        if bytes.len() > room {
            self.overflow = true;
        }
        self.pending
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Hand out the pending incomplete line, if any (the file is being released and will not
    /// grow any more). Its `end` is the end of the data read.
    pub fn finish<E>(
        &mut self,
        emit: &mut dyn FnMut(RawLine<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.has_pending() {
            return Ok(());
        }
        let offset = self.line_start;
        let end = self.pos;
        let (bytes, truncated) = shape(&self.pending, self.overflow, self.max);
        let result = emit(RawLine {
            offset,
            end,
            bytes,
            truncated,
        });
        self.line_start = self.pos;
        self.pending.clear();
        self.overflow = false;
        result
    }
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError<E> {
    /// The file could not be read.
    Io(io::Error),
    /// The consumer of the lines asked to stop.
    Emit(E),
}

/// Strip one trailing `\r` and cut at `max`. `overflow` means `line` is only the start of a
/// longer line.
fn shape(line: &[u8], overflow: bool, max: usize) -> (&[u8], bool) {
    let line = match line {
        [rest @ .., b'\r'] if !overflow => rest,
        _ => line,
    };
    if !overflow && line.len() <= max {
        return (line, false);
    }
    let mut cut = max.min(line.len());
    // Back off to the start of a character the cut would split, so the kept part does not
    // end in a replacement character. Only for a real UTF-8 lead byte within 3 bytes.
    if cut < line.len() && line[cut] & 0xC0 == 0x80 {
        let mut k = cut;
        while k > 0 && cut - k < 3 && line[k] & 0xC0 == 0x80 {
            k -= 1;
        }
        if (0xC2..=0xF4).contains(&line[k]) {
            cut = k;
        }
    }
    (&line[..cut], true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::io::Write;

    #[derive(Debug, PartialEq)]
    struct Owned {
        offset: u64,
        end: u64,
        text: Vec<u8>,
        truncated: bool,
    }

    fn read_all(path: &std::path::Path, reader: &mut LineReader, buf_len: usize) -> Vec<Owned> {
        let file = File::open(path).unwrap();
        let size = file.metadata().unwrap().len();
        let mut buf = vec![0u8; buf_len];
        let mut out = Vec::new();
        let mut emit = |l: RawLine<'_>| -> Result<(), Infallible> {
            out.push(Owned {
                offset: l.offset,
                end: l.end,
                text: l.bytes.to_vec(),
                truncated: l.truncated,
            });
            Ok(())
        };
        let r = reader.read(&file, &mut buf, size, u64::MAX, &mut emit);
        assert!(matches!(r, Ok(ReadOutcome { more: false, .. })));
        out
    }

    fn owned(offset: u64, end: u64, text: &[u8], truncated: bool) -> Owned {
        Owned {
            offset,
            end,
            text: text.to_vec(),
            truncated,
        }
    }

    #[test]
    fn crlf_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, b"one\r\ntwo\r\r\n\r\n").unwrap();
        let mut r = LineReader::new(0, 100);
        let lines = read_all(&p, &mut r, 3);
        assert_eq!(
            lines,
            vec![
                owned(0, 5, b"one", false),
                owned(5, 11, b"two\r", false),
                owned(11, 13, b"", false)
            ]
        );
    }

    #[test]
    fn partial_last_line_waits_for_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"done\nhalf").unwrap();
        let mut r = LineReader::new(0, 100);
        assert_eq!(read_all(&p, &mut r, 4), vec![owned(0, 5, b"done", false)]);
        assert!(r.has_pending());
        assert_eq!(r.committed(), 5);
        f.write_all(b" more\n").unwrap();
        assert_eq!(
            read_all(&p, &mut r, 4),
            vec![owned(5, 15, b"half more", false)]
        );
        f.write_all(b"tail").unwrap();
        assert!(read_all(&p, &mut r, 4).is_empty());
        let mut last = Vec::new();
        r.finish(&mut |l: RawLine<'_>| -> Result<(), Infallible> {
            last.push(owned(l.offset, l.end, l.bytes, l.truncated));
            Ok(())
        })
        .unwrap();
        assert_eq!(last, vec![owned(15, 19, b"tail", false)]);
        assert!(!r.has_pending());
    }

    #[test]
    fn long_line_is_cut_and_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        let long = vec![b'a'; 100];
        let mut data = long.clone();
        data.extend_from_slice(b"\nshort\n");
        // Exactly max bytes plus \r is not long.
        data.extend_from_slice(b"0123456789\r\n");
        std::fs::write(&p, &data).unwrap();
        for buf_len in [7, 4096] {
            let mut r = LineReader::new(0, 10);
            let lines = read_all(&p, &mut r, buf_len);
            assert_eq!(
                lines,
                vec![
                    owned(0, 101, b"aaaaaaaaaa", true),
                    owned(101, 107, b"short", false),
                    owned(107, 119, b"0123456789", false),
                ],
                "buffer {buf_len}"
            );
            assert!(r.pending.capacity() <= 64);
        }
    }

    #[test]
    fn cut_does_not_split_a_character() {
        let (kept, truncated) = shape("abcdéf".as_bytes(), false, 5);
        assert!(truncated);
        assert_eq!(kept, b"abcd");
        let (kept, truncated) = shape(b"\xff\xff\xff\xff\x80\x80\x80\x80", false, 5);
        assert!(truncated);
        assert_eq!(kept.len(), 5);
    }

    #[test]
    fn budget_stops_early_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, b"1\n2\n3\n4\n").unwrap();
        let file = File::open(&p).unwrap();
        let mut r = LineReader::new(0, 10);
        let mut buf = [0u8; 2];
        let mut n = 0;
        let mut emit = |_: RawLine<'_>| -> Result<(), Infallible> {
            n += 1;
            Ok(())
        };
        let o = r.read(&file, &mut buf, 8, 4, &mut emit).ok().unwrap();
        assert_eq!(
            o,
            ReadOutcome {
                bytes: 4,
                more: true
            }
        );
        let o = r.read(&file, &mut buf, 8, 4, &mut emit).ok().unwrap();
        assert_eq!(
            o,
            ReadOutcome {
                bytes: 4,
                more: false
            }
        );
        assert_eq!(n, 4);
    }
}

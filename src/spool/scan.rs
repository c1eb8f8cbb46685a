//! Walking the frames of one segment: decides whether a full, valid frame is there before anyone
//! parses its payload, and finds the next valid header after damage. Used by recovery, by
//! `read_range` and by `verify`; never writes.

use super::format::{self, REC_HDR_LEN, RecHeaderCheck};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

/// What the scanner found at its position.
#[derive(Debug)]
pub enum Frame {
    /// A complete record whose checks pass (payload without the trailing length).
    Record {
        /// Offset of the frame.
        offset: u64,
        /// Its seq.
        seq: u64,
        /// The payload.
        payload: Vec<u8>,
    },
    /// `len` bytes at `offset` are not a usable record; the scanner continues after them.
    Corrupt {
        /// Where the bad bytes start.
        offset: u64,
        /// How many.
        len: u64,
        /// The seq, when the header was intact (only the payload is bad).
        seq: Option<u64>,
        /// What was wrong.
        reason: &'static str,
    },
    /// From `offset` to the end: not a complete record and no valid record follows.
    Torn {
        /// Where the incomplete bytes start.
        offset: u64,
    },
    /// A record with a valid checksum and a version this code does not know.
    UnknownVersion {
        /// Offset of the frame.
        offset: u64,
        /// The version byte.
        version: u8,
    },
    /// Clean end.
    End,
}

/// Sequential reader of the frames in `[pos, limit)` of one segment file.
#[derive(Debug)]
pub struct Scanner {
    file: BufReader<File>,
    pos: u64,
    limit: u64,
}

impl Scanner {
    /// Scan `file` from `pos` up to `limit` (the file length, or the durable length).
    pub fn new(file: File, pos: u64, limit: u64) -> io::Result<Scanner> {
        let mut file = BufReader::with_capacity(256 * 1024, file);
        file.seek(SeekFrom::Start(pos))?;
        Ok(Scanner { file, pos, limit })
    }

    /// The offset of the next frame.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Raise the limit (the segment grew durably).
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Move to `pos` (cheap when it lies within the buffer).
    pub fn seek_to(&mut self, pos: u64) -> io::Result<()> {
        let delta = pos as i64 - self.pos as i64;
        self.file.seek_relative(delta)?;
        self.pos = pos;
        Ok(())
    }

    fn read_exact_at_pos(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// The next frame.
    pub fn next_frame(&mut self) -> io::Result<Frame> {
        let offset = self.pos;
        if offset >= self.limit {
            return Ok(Frame::End);
        }
        let left = self.limit - offset;
        if left < REC_HDR_LEN as u64 {
            return Ok(Frame::Torn { offset });
        }
        let mut hdr = [0u8; REC_HDR_LEN];
        self.read_exact_at_pos(&mut hdr)?;
        match format::decode_record_header(&hdr) {
            RecHeaderCheck::Valid(h) => {
                if h.frame_len() > left {
                    self.seek_to(offset)?;
                    return Ok(Frame::Torn { offset });
                }
                // Read into spare capacity: zeroing a buffer per record first (`vec![0; n]`)
                // was 2 % of the agent's CPU on the delivery path.
                let want = h.len + 4;
                let mut body = Vec::with_capacity(want);
                let got = (&mut self.file).take(want as u64).read_to_end(&mut body)?;
                self.pos += got as u64;
                if got != want {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if !format::payload_ok(&h, &body) {
                    return Ok(Frame::Corrupt {
                        offset,
                        len: h.frame_len(),
                        seq: Some(h.seq),
                        reason: "payload checksum or trailing length mismatch",
                    });
                }
                body.truncate(h.len);
                Ok(Frame::Record {
                    offset,
                    seq: h.seq,
                    payload: body,
                })
            }
            RecHeaderCheck::UnknownVersion(version) => {
                Ok(Frame::UnknownVersion { offset, version })
            }
            RecHeaderCheck::Invalid => match self.find_next_header(offset + 1)? {
                Some(next) => {
                    self.seek_to(next)?;
                    Ok(Frame::Corrupt {
                        offset,
                        len: next - offset,
                        seq: None,
                        reason: "bad record header",
                    })
                }
                None => {
                    self.seek_to(offset)?;
                    Ok(Frame::Torn { offset })
                }
            },
        }
    }

    /// The first offset at or after `from` (below the limit) holding a record header whose
    /// checksum holds.
    fn find_next_header(&mut self, from: u64) -> io::Result<Option<u64>> {
        const CHUNK: usize = 64 * 1024;
        let mut at = from;
        self.seek_to(from)?;
        let mut buf = vec![0u8; CHUNK + REC_HDR_LEN];
        while at + REC_HDR_LEN as u64 <= self.limit {
            let want = ((self.limit - at) as usize).min(buf.len());
            self.seek_to(at)?;
            self.read_exact_at_pos(&mut buf[..want])?;
            let window = &buf[..want];
            let mut i = 0;
            while i + REC_HDR_LEN <= window.len() {
                if window[i..i + 4] == format::REC_MAGIC
                    && !matches!(
                        format::decode_record_header(&window[i..i + REC_HDR_LEN]),
                        RecHeaderCheck::Invalid
                    )
                {
                    return Ok(Some(at + i as u64));
                }
                i += 1;
            }
            // Overlap by a header length so a header across the chunk border is not missed.
            at += (want - (REC_HDR_LEN - 1)) as u64;
        }
        Ok(None)
    }
}

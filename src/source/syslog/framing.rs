//! Splitting a syslog TCP byte stream into messages (RFC 6587).
//!
//! In: the bytes of one connection, in chunks of any size. Out: each message (frame) once,
//! with a flag when it was cut at `max_frame` bytes. The framing is chosen from the first
//! byte of the connection: a digit means octet counting (`LEN SP MSG`, the length counts
//! every byte of MSG including a trailing LF), anything else means LF-delimited messages.
//!
//! Guarantees: memory per connection is bounded by `max_frame`; an over-long frame yields its
//! first `max_frame` bytes (flagged) and the rest up to the frame's end is skipped; a frame
//! split across any number of chunks comes out identical. A broken octet count (a non-digit
//! where the length should be) switches the connection to LF framing for the rest, starting
//! with the bytes already seen, so nothing is silently discarded.

/// Which framing a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Not decided yet (no byte seen).
    Unknown,
    /// RFC 6587 §3.4.1 octet counting.
    OctetCounted,
    /// RFC 6587 §3.4.2 non-transparent framing with LF as trailer.
    LfDelimited,
}

/// Octet counts longer than this many digits cannot be meant seriously.
const MAX_LEN_DIGITS: usize = 10;
/// A frame buffer larger than this is released after its frame is emitted.
const KEEP_CAPACITY: usize = 16 * 1024;

#[derive(Debug)]
enum State {
    /// Reading the decimal length (`digits` so far, value `len`).
    Len { digits: usize, len: u64 },
    /// Inside an octet-counted frame with `remaining` bytes still to come.
    Body { remaining: u64 },
    /// Inside an LF-delimited message.
    Line,
}

/// Incremental framer for one connection.
#[derive(Debug)]
pub struct Framer {
    framing: Framing,
    state: State,
    max_frame: usize,
    /// The current frame's bytes so far (at most `max_frame`).
    buf: Vec<u8>,
    /// The current frame had more than `max_frame` bytes.
    truncated: bool,
}

impl Framer {
    /// A framer that cuts frames at `max_frame` bytes (at least 1).
    pub fn new(max_frame: usize) -> Framer {
        Framer {
            framing: Framing::Unknown,
            state: State::Line,
            max_frame: max_frame.max(1),
            buf: Vec::new(),
            truncated: false,
        }
    }

    /// The framing in use.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Feed the next chunk; `emit(frame, truncated)` is called for every frame completed by it.
    pub fn push(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        if self.framing == Framing::Unknown {
            let Some(&first) = chunk.first() else {
                return;
            };
            if first.is_ascii_digit() {
                self.framing = Framing::OctetCounted;
                self.state = State::Len { digits: 0, len: 0 };
            } else {
                self.framing = Framing::LfDelimited;
                self.state = State::Line;
            }
        }
        while !chunk.is_empty() {
            chunk = match self.state {
                State::Line => self.push_line(chunk, emit),
                State::Len { .. } => self.push_len(chunk),
                State::Body { .. } => self.push_body(chunk, emit),
            };
        }
    }

    /// The peer closed the connection: emit a last message that had no terminator (LF
    /// framing), or the incomplete frame (octet counting, flagged truncated).
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        match self.state {
            State::Line if !self.buf.is_empty() || self.truncated => {
                emit(&self.buf, self.truncated);
            }
            State::Body { .. } => emit(&self.buf, true),
            _ => {}
        }
        self.buf.clear();
        self.truncated = false;
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = self.max_frame - self.buf.len();
        if bytes.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit_buf(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        emit(&self.buf, self.truncated);
        self.buf.clear();
        if self.buf.capacity() > KEEP_CAPACITY {
            // One long frame must not pin its buffer for the rest of a quiet connection.
            self.buf = Vec::new();
        }
        self.truncated = false;
    }

    fn push_line<'c>(&mut self, chunk: &'c [u8], emit: &mut impl FnMut(&[u8], bool)) -> &'c [u8] {
        match memchr::memchr(b'\n', chunk) {
            Some(i) => {
                if self.buf.is_empty() && !self.truncated && i <= self.max_frame {
                    // The common case: the whole message is in this chunk, no copy.
                    emit(&chunk[..i], false);
                } else {
                    self.append(&chunk[..i]);
                    self.emit_buf(emit);
                }
                &chunk[i + 1..]
            }
            None => {
                self.append(chunk);
                &[]
            }
        }
    }

    fn push_len<'c>(&mut self, chunk: &'c [u8]) -> &'c [u8] {
        let State::Len {
            mut digits,
            mut len,
        } = self.state
        else {
            return chunk;
        };
        for (i, &c) in chunk.iter().enumerate() {
            match c {
                b'0'..=b'9' if digits < MAX_LEN_DIGITS => {
                    digits += 1;
                    len = len * 10 + u64::from(c - b'0');
                }
                // Some senders end octet-counted frames with a LF that is not counted.
                b'\n' | b'\r' if digits == 0 => {}
                b' ' if digits > 0 && len > 0 => {
                    self.state = State::Body { remaining: len };
                    return &chunk[i + 1..];
                }
                _ => {
                    // Not an octet count: read the rest as LF-delimited, keeping the digits
                    // already consumed as the start of the message.
                    tracing::debug!("syslog: invalid octet count; switching to LF framing");
                    self.framing = Framing::LfDelimited;
                    self.state = State::Line;
                    if digits > 0 {
                        // The digits were consumed as a number: write them back as they were,
                        // leading zeros included (a count of zero has no significant digit,
                        // so all of its digits are zeros).
                        let prefix = if len > 0 {
                            len.to_string()
                        } else {
                            String::new()
                        };
                        let zeros = digits.saturating_sub(prefix.len());
                        self.append(&vec![b'0'; zeros]);
                        self.append(prefix.as_bytes());
                    }
                    return &chunk[i..];
                }
            }
        }
        self.state = State::Len { digits, len };
        &[]
    }

    fn push_body<'c>(&mut self, chunk: &'c [u8], emit: &mut impl FnMut(&[u8], bool)) -> &'c [u8] {
        let State::Body { remaining } = self.state else {
            return chunk;
        };
        let take = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        if self.buf.is_empty()
            && !self.truncated
            && take as u64 == remaining
            && take <= self.max_frame
        {
            emit(&chunk[..take], false);
        } else {
            self.append(&chunk[..take]);
            if take as u64 == remaining {
                self.emit_buf(emit);
            }
        }
        let remaining = remaining - take as u64;
        self.state = if remaining == 0 {
            State::Len { digits: 0, len: 0 }
        } else {
            State::Body { remaining }
        };
        &chunk[take..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[&[u8]], max: usize) -> Vec<(Vec<u8>, bool)> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        let mut emit = |b: &[u8], t: bool| out.push((b.to_vec(), t));
        for c in input {
            f.push(c, &mut emit);
        }
        f.finish(&mut emit);
        out
    }

    fn strs(v: &[(Vec<u8>, bool)]) -> Vec<(String, bool)> {
        v.iter()
            .map(|(b, t)| (String::from_utf8_lossy(b).into_owned(), *t))
            .collect()
    }

    #[test]
    fn octet_counted_frames_keep_their_counted_lf() {
        let got = frames(&[b"5 <1>a\n6 <1>b c"], 100);
        assert_eq!(
            strs(&got),
            [("<1>a\n".into(), false), ("<1>b c".into(), false)]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        for input in [
            &b"12 <38>1 hello\n9 <38>x y z\n3 abc"[..],
            &b"<38>one\n<38>two\r\n<38>three"[..],
        ] {
            let whole = frames(&[input], 100);
            for i in 0..=input.len() {
                for j in i..=input.len() {
                    let split = frames(&[&input[..i], &input[i..j], &input[j..]], 100);
                    assert_eq!(split, whole, "split at {i},{j}");
                }
            }
        }
    }

    #[test]
    fn over_long_frames_are_cut_and_the_rest_skipped() {
        let got = frames(&[b"10 0123456789", b"3 abc"], 4);
        assert_eq!(strs(&got), [("0123".into(), true), ("abc".into(), false)]);
        let got = frames(&[b"<1>0123", b"456789\n<1>ok\n"], 5);
        assert_eq!(
            strs(&got),
            [("<1>01".into(), true), ("<1>ok".into(), false)]
        );
    }

    #[test]
    fn a_long_frame_does_not_pin_its_buffer() {
        let mut f = Framer::new(1 << 20);
        let mut n = 0;
        let mut emit = |_: &[u8], _: bool| n += 1;
        let long = vec![b'x'; 100_000];
        f.push(&long[..50_000], &mut emit);
        f.push(&long[50_000..], &mut emit);
        assert!(f.buf.capacity() >= 100_000);
        f.push(b"\n", &mut emit);
        assert_eq!(n, 1);
        assert!(
            f.buf.capacity() <= KEEP_CAPACITY,
            "released after the frame"
        );
    }

    #[test]
    fn uncounted_lf_between_octet_frames_is_ignored() {
        let got = frames(&[b"3 abc\n\r\n3 def"], 100);
        assert_eq!(strs(&got), [("abc".into(), false), ("def".into(), false)]);
    }

    #[test]
    fn broken_octet_count_falls_back_to_lf_framing() {
        let got = frames(&[b"3 abc007x more\nnext\n"], 100);
        assert_eq!(
            strs(&got),
            [
                ("abc".into(), false),
                ("007x more".into(), false),
                ("next".into(), false)
            ]
        );
    }

    #[test]
    fn zero_counts_fall_back_with_every_digit_kept() {
        // Found by the fuzz target `framer` (fuzz/crashes/framer/): "00" then a non-digit
        // came out as "0", "0 x" as " x" — a count of zero lost one digit.
        let got = frames(&[b"3 abc00x more\n"], 100);
        assert_eq!(
            strs(&got),
            [("abc".into(), false), ("00x more".into(), false)]
        );
        let got = frames(&[b"0 x\n"], 100);
        assert_eq!(strs(&got), [("0 x".into(), false)]);
        let got = frames(&[b"3 abc", b"0", b"07x\n"], 100);
        assert_eq!(strs(&got), [("abc".into(), false), ("007x".into(), false)]);
    }

    #[test]
    fn incomplete_octet_frame_at_eof_is_flagged() {
        let got = frames(&[b"10 abc"], 100);
        assert_eq!(strs(&got), [("abc".into(), true)]);
        assert!(frames(&[b"10"], 100).is_empty());
    }
}

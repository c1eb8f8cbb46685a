//! The syslog framer (RFC 6587 octet counting and LF framing) that every TCP and TLS
//! connection goes through (`source/syslog/tcp.rs` feeds it whatever each read returned),
//! plus the UDP cut and the listen-address parser.
//!
//! Input: byte 0 picks `max_frame` (1..=64, or 64 KiB), bytes 1-2 seed the chunking, the
//! rest is the connection's byte stream.
//!
//! Asserts: the frames are exactly those of a plain whole-stream model of RFC 6587 written
//! here (so no byte is lost or duplicated, and a broken octet count falls back to LF framing
//! with the digits kept); the same frames come out when the stream arrives in random chunks
//! and one byte at a time; no frame exceeds `max_frame`.

use crate::input::Input;
use balp_agent::source::syslog::Listen;
use balp_agent::source::syslog::framing::Framer;

/// Tokens for the mutator.
pub const DICT: &[&str] = &[
    "\n",
    "\r\n",
    " ",
    "0",
    "10 ",
    "9999999999",
    "<38>1 ",
    "<13>",
];

type Frames = Vec<(Vec<u8>, bool)>;

/// The harness.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let cfg = input.u8();
    let max = if cfg & 0x80 != 0 {
        64 * 1024
    } else {
        usize::from(cfg & 0x3f) + 1
    };
    let chunk_seed = input.u16();
    let stream = input.rest();

    let expected = model(stream, max);
    let whole = feed(std::iter::once(stream), max);
    assert_frames_eq(&whole, &expected, "whole stream vs model", stream);

    let mut rng = fastrand::Rng::with_seed(u64::from(chunk_seed));
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = rng.usize(0..=rest.len().min(24));
        let (a, b) = rest.split_at(n);
        chunks.push(a);
        rest = b;
    }
    let chunked = feed(chunks.into_iter(), max);
    assert_frames_eq(&chunked, &expected, "random chunks vs model", stream);
    if stream.len() <= 2048 {
        let bytewise = feed(stream.chunks(1), max);
        assert_frames_eq(&bytewise, &expected, "byte at a time vs model", stream);
    }
    for (f, _) in &whole {
        assert!(f.len() <= max, "frame of {} bytes > max {max}", f.len());
    }

    // UDP: one datagram is one message, cut at max_frame.
    let cut = &stream[..stream.len().min(max)];
    assert!(cut.len() <= max);

    // The listen address (from the config) parses or is refused, never panics; what parses
    // prints back to something that parses the same way.
    if let Ok(text) = std::str::from_utf8(stream)
        && text.len() < 256
        && let Ok(l) = Listen::parse(text)
    {
        let again = Listen::parse(&format!("{}://{}", proto(&l), l.addr));
        assert!(again.is_ok_and(|a| a.addr == l.addr && a.proto == l.proto));
    }
}

fn proto(l: &Listen) -> &'static str {
    use balp_agent::source::syslog::Proto;
    match l.proto {
        Proto::Udp => "udp",
        Proto::Tcp => "tcp",
        Proto::Tls => "tls",
    }
}

fn feed<'a>(chunks: impl Iterator<Item = &'a [u8]>, max: usize) -> Frames {
    let mut f = Framer::new(max);
    let mut out = Vec::new();
    let mut emit = |b: &[u8], t: bool| out.push((b.to_vec(), t));
    for c in chunks {
        f.push(c, &mut emit);
    }
    f.finish(&mut emit);
    out
}

fn assert_frames_eq(got: &Frames, want: &Frames, what: &str, stream: &[u8]) {
    if got != want {
        let show = |v: &Frames| {
            v.iter()
                .map(|(b, t)| {
                    format!(
                        "{:?}{}",
                        b.escape_ascii().to_string(),
                        if *t { " (cut)" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
        };
        panic!(
            "{what}: frames differ for stream {:?}\n got: {:?}\nwant: {:?}",
            stream.escape_ascii().to_string(),
            show(got),
            show(want)
        );
    }
}

/// RFC 6587 over the whole stream, as the framer documents it: a leading digit means
/// octet counting (`LEN SP MSG`, CR/LF between frames ignored, a count that is not digits
/// then a space — or is zero, or has more than 10 digits — switches to LF framing from the
/// count's first digit); otherwise LF framing. A frame is cut at `max` (flagged); an
/// octet-counted frame cut short by the end of the stream is flagged too; a last LF-framed
/// message without its LF is emitted if it is not empty.
fn model(input: &[u8], max: usize) -> Frames {
    let cut = |b: &[u8], flag: bool| (b[..b.len().min(max)].to_vec(), flag || b.len() > max);
    let mut out = Vec::new();
    let Some(first) = input.first() else {
        return out;
    };
    let mut pos = 0;
    if first.is_ascii_digit() {
        loop {
            while pos < input.len() && matches!(input[pos], b'\n' | b'\r') {
                pos += 1;
            }
            let start = pos;
            let mut len: u64 = 0;
            while pos < input.len() && input[pos].is_ascii_digit() && pos - start < 10 {
                len = len * 10 + u64::from(input[pos] - b'0');
                pos += 1;
            }
            if pos == input.len() {
                return out;
            }
            if input[pos] == b' ' && pos > start && len > 0 {
                pos += 1;
                let avail = (input.len() - pos) as u64;
                let take = usize::try_from(len.min(avail)).unwrap_or(usize::MAX);
                let body = &input[pos..pos + take];
                pos += take;
                if (take as u64) < len {
                    out.push(cut(body, true));
                    return out;
                }
                out.push(cut(body, false));
                continue;
            }
            pos = start;
            break;
        }
    }
    let mut pieces: Vec<&[u8]> = input[pos..].split(|&b| b == b'\n').collect();
    let last = pieces.pop().unwrap_or_default();
    for p in pieces {
        out.push(cut(p, false));
    }
    if !last.is_empty() {
        out.push(cut(last, false));
    }
    out
}

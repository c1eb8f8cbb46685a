//! The byte layout of segments, records and the ack file (docs/spool.md). Pure functions: bytes
//! in, values out; no I/O.

use super::Origin;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use uuid::Uuid;

/// Segment header magic.
pub const SEG_MAGIC: [u8; 4] = *b"BSEG";
/// Segment format version this code writes and reads.
pub const SEG_VERSION: u16 = 1;
/// Segment header length.
pub const SEG_HDR_LEN: usize = 24;

/// Record frame magic.
pub const REC_MAGIC: [u8; 4] = *b"BREC";
/// Record version this code writes and reads.
pub const REC_VERSION: u8 = 1;
/// Record header length (before the payload).
pub const REC_HDR_LEN: usize = 28;
/// Framing bytes around a payload: header plus trailing length.
pub const REC_OVERHEAD: usize = REC_HDR_LEN + 4;
/// Largest payload accepted; bounds what a corrupt-but-checksummed length could make us allocate.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// The largest seq a record or the ack file may carry. Half the u64 range lasts 290 000
/// years at a million events a second; a larger one (with valid checksums: a forged file, or
/// a writer bug) is treated as damage, so that `next_seq = max + 1` and the gap arithmetic
/// can never overflow (before this limit an ack of u64::MAX wrapped `next_seq` to 0 and
/// made every new event count as acknowledged; found in the #16 audit, kept as inputs of the
/// fuzz target `spool` in fuzz/crashes/spool/).
pub const MAX_SEQ: u64 = u64::MAX / 2;

/// Ack file magic.
pub const ACK_MAGIC: [u8; 4] = *b"BACK";
/// Ack file version.
pub const ACK_VERSION: u16 = 1;
/// Ack file length.
pub const ACK_LEN: usize = 20;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A segment header.
pub fn encode_segment_header(first_seq: u64) -> [u8; SEG_HDR_LEN] {
    let mut h = [0u8; SEG_HDR_LEN];
    h[0..4].copy_from_slice(&SEG_MAGIC);
    h[4..6].copy_from_slice(&SEG_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a segment header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegHeader {
    /// Valid, our version.
    Valid {
        /// First seq recorded in the header.
        first_seq: u64,
    },
    /// Valid checksum but a version we do not know.
    UnknownVersion(u16),
    /// Bad magic or checksum.
    Corrupt,
}

/// Check a segment header.
pub fn decode_segment_header(h: &[u8; SEG_HDR_LEN]) -> SegHeader {
    if h[0..4] != SEG_MAGIC || crc32c::crc32c(&h[0..16]) != u32_at(h, 16) {
        return SegHeader::Corrupt;
    }
    let version = u16_at(h, 4);
    if version != SEG_VERSION {
        return SegHeader::UnknownVersion(version);
    }
    SegHeader::Valid {
        first_seq: u64_at(h, 8),
    }
}

/// A record header whose checksum held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecHeader {
    /// Payload length.
    pub len: usize,
    /// Sequence number.
    pub seq: u64,
    /// CRC32C of the payload.
    pub payload_crc: u32,
}

impl RecHeader {
    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> u64 {
        (REC_OVERHEAD + self.len) as u64
    }
}

/// What a record header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecHeaderCheck {
    /// A usable header.
    Valid(RecHeader),
    /// Valid checksum, unknown record version.
    UnknownVersion(u8),
    /// Not a header (bad magic, checksum, an impossible length or seq).
    Invalid,
}

/// Check the 28 header bytes of a record.
pub fn decode_record_header(h: &[u8]) -> RecHeaderCheck {
    if h.len() < REC_HDR_LEN || h[0..4] != REC_MAGIC {
        return RecHeaderCheck::Invalid;
    }
    if crc32c::crc32c(&h[0..20]) != u32_at(h, 20) {
        return RecHeaderCheck::Invalid;
    }
    if h[4] != REC_VERSION {
        return RecHeaderCheck::UnknownVersion(h[4]);
    }
    let len = u32_at(h, 8) as usize;
    if len > MAX_PAYLOAD {
        return RecHeaderCheck::Invalid;
    }
    let seq = u64_at(h, 12);
    if seq > MAX_SEQ {
        return RecHeaderCheck::Invalid;
    }
    RecHeaderCheck::Valid(RecHeader {
        len,
        seq,
        payload_crc: u32_at(h, 24),
    })
}

/// Append one framed record to `out`.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    let start = out.len();
    out.extend_from_slice(&REC_MAGIC);
    out.push(REC_VERSION);
    out.push(0);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let hcrc = crc32c::crc32c(&out[start..start + 20]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&len.to_le_bytes());
}

/// The frame of [`encode_record`] with the payload written in place by `write` (which must
/// append exactly `len` bytes to the buffer it is given): one copy of the event instead of
/// two. The header's length and checksums are filled in afterwards.
pub fn encode_record_in_place(
    out: &mut Vec<u8>,
    seq: u64,
    len: usize,
    write: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.reserve(REC_HDR_LEN + len + 4);
    out.extend_from_slice(&REC_MAGIC);
    out.push(REC_VERSION);
    out.push(0);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let hcrc = crc32c::crc32c(&out[start..start + 20]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let body = out.len();
    write(out);
    debug_assert_eq!(out.len() - body, len, "payload length as announced");
    let pcrc = crc32c::crc32c(&out[body..]);
    out[body - 4..body].copy_from_slice(&pcrc.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

/// Check a payload (plus its 4 trailing bytes) against its header.
pub fn payload_ok(h: &RecHeader, payload_and_trailer: &[u8]) -> bool {
    payload_and_trailer.len() == h.len + 4
        && crc32c::crc32c(&payload_and_trailer[..h.len]) == h.payload_crc
        && u32_at(payload_and_trailer, h.len) as usize == h.len
}

/// One event as stored: everything needed to rebuild its Bundle entry and its read position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Unix ms when appended.
    pub appended_ms: u64,
    /// Event id.
    pub id: Uuid,
    /// Pattern name as stored.
    pub pattern: String,
    /// Compact AuditEvent JSON.
    pub json: String,
    /// Where the line came from.
    pub origin: Origin,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encode a payload into `out` (cleared first).
pub fn encode_payload(
    out: &mut Vec<u8>,
    appended_ms: u64,
    id: Uuid,
    pattern: &str,
    json: &str,
    origin: &Origin,
) {
    out.clear();
    append_payload(out, appended_ms, id, pattern, json, origin);
}

/// The length [`encode_payload`] gives these parts.
pub fn payload_len(pattern: &str, json: &str, origin: &Origin) -> usize {
    FIXED
        + 5 * 4
        + pattern.len()
        + origin.source.len()
        + origin.stream_key.len()
        + origin.path.as_os_str().len()
        + json.len()
}

/// [`encode_payload`] appended to what `out` holds.
pub fn append_payload(
    out: &mut Vec<u8>,
    appended_ms: u64,
    id: Uuid,
    pattern: &str,
    json: &str,
    origin: &Origin,
) {
    out.extend_from_slice(&appended_ms.to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&origin.start.to_le_bytes());
    out.extend_from_slice(&origin.end.to_le_bytes());
    put_bytes(out, pattern.as_bytes());
    put_bytes(out, origin.source.as_bytes());
    put_bytes(out, origin.stream_key.as_bytes());
    put_bytes(out, origin.path.as_os_str().as_bytes());
    put_bytes(out, json.as_bytes());
}

/// Bytes of the fixed part of a payload.
const FIXED: usize = 8 + 16 + 8 + 8;

/// The `appended_ms` of a payload, read from its first bytes.
pub fn payload_appended_ms(p: &[u8]) -> Option<u64> {
    (p.len() >= 8).then(|| u64_at(p, 0))
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&mut self) -> Option<&'a [u8]> {
        if self.b.len() < self.at + 4 {
            return None;
        }
        let n = u32_at(self.b, self.at) as usize;
        let start = self.at + 4;
        let end = start.checked_add(n)?;
        if end > self.b.len() {
            return None;
        }
        self.at = end;
        Some(&self.b[start..end])
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// The event id, pattern name and AuditEvent JSON of a payload, borrowed (no copy): what a
/// Merkle leaf needs. `None` when its lengths or text do not add up.
pub fn payload_parts(p: &[u8]) -> Option<(Uuid, &[u8], &str)> {
    let (id, pattern, json) = payload_raw_parts(p)?;
    Some((id, pattern, std::str::from_utf8(json).ok()?))
}

/// [`payload_parts`] without checking that the JSON is UTF-8 (for callers that do not read it).
pub fn payload_raw_parts(p: &[u8]) -> Option<(Uuid, &[u8], &[u8])> {
    if p.len() < FIXED {
        return None;
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&p[8..24]);
    let mut c = Cursor { b: p, at: FIXED };
    let pattern = c.bytes()?;
    for _ in 0..3 {
        c.bytes()?;
    }
    let json = c.bytes()?;
    (c.at == p.len()).then_some((Uuid::from_bytes(id), pattern, json))
}

/// Decode a payload; `None` when its lengths or text do not add up.
pub fn decode_payload(p: &[u8]) -> Option<Payload> {
    if p.len() < FIXED {
        return None;
    }
    let appended_ms = u64_at(p, 0);
    let mut id = [0u8; 16];
    id.copy_from_slice(&p[8..24]);
    let start = u64_at(p, 24);
    let end = u64_at(p, 32);
    let mut c = Cursor { b: p, at: FIXED };
    let pattern = c.string()?;
    let source = c.string()?;
    let stream_key = c.string()?;
    let path = PathBuf::from(OsStr::from_bytes(c.bytes()?));
    let json = c.string()?;
    if c.at != p.len() {
        return None;
    }
    Some(Payload {
        appended_ms,
        id: Uuid::from_bytes(id),
        pattern,
        json,
        origin: Origin {
            source,
            stream_key,
            path,
            start,
            end,
        },
    })
}

/// The ack file's bytes.
pub fn encode_ack(acked: u64) -> [u8; ACK_LEN] {
    let mut b = [0u8; ACK_LEN];
    b[0..4].copy_from_slice(&ACK_MAGIC);
    b[4..6].copy_from_slice(&ACK_VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&acked.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The acknowledged seq in an ack file, `None` if it is not a valid one.
pub fn decode_ack(b: &[u8]) -> Option<u64> {
    (b.len() == ACK_LEN
        && b[0..4] == ACK_MAGIC
        && u16_at(b, 4) == ACK_VERSION
        && crc32c::crc32c(&b[0..16]) == u32_at(b, 16)
        && u64_at(b, 8) <= MAX_SEQ)
        .then(|| u64_at(b, 8))
}

/// File name of the segment starting at `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The first seq named by a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_encoded_in_place_equals_the_two_step_encoding() {
        for (json, path) in [("{}", ""), ("{\"a\":\"é\"}", "/var/log/x.log")] {
            let origin = Origin {
                source: "src".into(),
                stream_key: "file:1:2".into(),
                path: path.into(),
                start: 7,
                end: 99,
            };
            let id = Uuid::from_u128(42);
            let mut p = Vec::new();
            encode_payload(&mut p, 123, id, "rest", json, &origin);
            assert_eq!(p.len(), payload_len("rest", json, &origin));
            let mut two = b"prefix".to_vec();
            encode_record(&mut two, 9, &p);
            let mut one = b"prefix".to_vec();
            encode_record_in_place(&mut one, 9, p.len(), |b| {
                append_payload(b, 123, id, "rest", json, &origin)
            });
            assert_eq!(one, two);
        }
    }

    #[test]
    fn a_record_round_trips_and_its_checks_catch_flips() {
        let origin = Origin {
            source: "auth".into(),
            stream_key: "file:1:2:abc".into(),
            path: "/var/log/auth.log".into(),
            start: 10,
            end: 99,
        };
        let mut p = Vec::new();
        encode_payload(
            &mut p,
            42,
            Uuid::from_u128(7),
            "login",
            "{\"a\":1}",
            &origin,
        );
        let mut frame = Vec::new();
        encode_record(&mut frame, 5, &p);
        let RecHeaderCheck::Valid(h) = decode_record_header(&frame) else {
            panic!("header")
        };
        assert_eq!(h.seq, 5);
        assert!(payload_ok(&h, &frame[REC_HDR_LEN..]));
        let back = decode_payload(&frame[REC_HDR_LEN..REC_HDR_LEN + h.len]).unwrap();
        assert_eq!(back.origin, origin);
        assert_eq!(back.json, "{\"a\":1}");
        assert_eq!(back.appended_ms, 42);
        let mut bad = frame.clone();
        bad[13] ^= 1;
        assert_eq!(decode_record_header(&bad), RecHeaderCheck::Invalid);
        let mut bad = frame.clone();
        bad[REC_HDR_LEN + 3] ^= 0x10;
        assert!(!payload_ok(&h, &bad[REC_HDR_LEN..]));
    }

    #[test]
    fn names_and_ack_round_trip() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(decode_ack(&encode_ack(9)), Some(9));
        let mut b = encode_ack(9);
        b[9] ^= 1;
        assert_eq!(decode_ack(&b), None);
        assert_eq!(
            decode_segment_header(&encode_segment_header(3)),
            SegHeader::Valid { first_seq: 3 }
        );
    }
}

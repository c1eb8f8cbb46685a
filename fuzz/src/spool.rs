//! The spool's segment reader and recovery (`Spool::open`, `read_range`, `verify`, the
//! delivered log, `spool_ids`, dead letters) on arbitrary files.
//!
//! Input: a list of operations that build a state directory: segment files (valid, wrong or
//! garbage headers), records framed with correct checksums (payloads that decode, or raw
//! bytes), garbage, bit flips, truncation, an ack file (valid for any seq, or garbage), a
//! delivered log, a dead letter. Records are framed by the spool's own encoder so that the
//! fuzzer gets past the CRCs and reaches the recovery logic.
//!
//! Asserts: opening returns the spool or an error (unsupported version), never panics;
//! every record read back is one the input framed with correct checksums (a record whose
//! CRC is wrong never comes back), with seqs rising and above the ack; as many records come
//! back as `open` counted pending; a new append gets a seq above every one read and the
//! ack, and reads back; a second open (after recovery repaired what it could) gives the same
//! records plus the new one; `verify`, `spool_ids`, the delivered log reader and the
//! dead-letter listing answer without panicking.

use crate::input::{ALNUM, Input};
use balp_agent::balp::EventRecord;
use balp_agent::config::SpoolConfig;
use balp_agent::spool::format::{self, SEG_HDR_LEN};
use balp_agent::spool::{self, Origin, Spool, SpoolError, SpoolOptions, SpooledEvent};
use std::collections::HashMap;
use std::path::Path;
use uuid::Uuid;

/// Tokens for the mutator.
pub const DICT: &[&str] = &["BSEG", "BREC", "BACK", "\x01\x00", "\x7f\x7f\x7f\x7f"];

/// What the input framed with correct checksums: seq → the payloads framed under it.
type Framed = HashMap<u64, Vec<format::Payload>>;

struct Seg {
    first: u64,
    bytes: Vec<u8>,
}

fn payload(input: &mut Input<'_>, seq: u64) -> format::Payload {
    format::Payload {
        appended_ms: 1_700_000_000_000 + u64::from(input.u8()),
        id: Uuid::from_u128(u128::from(seq) << 8 | u128::from(input.u8())),
        pattern: ["read", "rest", "x"][usize::from(input.u8() % 3)].into(),
        json: format!(
            "{{\"resourceType\":\"AuditEvent\",\"n\":{:?}}}",
            input.text()
        ),
        origin: Origin {
            source: input.token(ALNUM, 8),
            stream_key: input.token(ALNUM, 8),
            path: input.token(b"/abc\xff", 8).into(),
            start: u64::from(input.u16()),
            end: u64::from(input.u16()),
        },
    }
}

fn encode(p: &format::Payload) -> Vec<u8> {
    let mut out = Vec::new();
    format::encode_payload(
        &mut out,
        p.appended_ms,
        p.id,
        &p.pattern,
        &p.json,
        &p.origin,
    );
    out
}

/// Build the state directory from the input; returns what was framed correctly, and
/// whether every record framed lies at or above its segment's first seq (the file name).
fn build(data: &[u8], state: &Path) -> (Framed, bool) {
    let mut input = Input::new(data);
    let mut framed = Framed::new();
    let mut segs: Vec<Seg> = Vec::new();
    let mut next = 1u64;
    let mut ack: Option<Vec<u8>> = None;
    let mut delivered: Option<Vec<u8>> = None;
    let mut dead: Option<Vec<u8>> = None;
    let mut op_count = 0;
    let mut in_order = true;
    while !input.is_empty() && op_count < 200 {
        op_count += 1;
        let op = input.u8();
        if segs.is_empty() || op.is_multiple_of(13) {
            let first = match input.u8() % 4 {
                0 => input.u64(),
                1 => next.saturating_sub(u64::from(input.u8() % 3)),
                _ => next,
            };
            let header = match input.u8() % 8 {
                0 => input.bytes(SEG_HDR_LEN).to_vec(),
                1 => {
                    let mut h = format::encode_segment_header(first).to_vec();
                    h[4] = 2; // a newer version
                    let crc = crc32c_of(&h[..16]);
                    h[16..20].copy_from_slice(&crc.to_le_bytes());
                    h
                }
                2 => format::encode_segment_header(input.u64()).to_vec(),
                _ => format::encode_segment_header(first).to_vec(),
            };
            segs.push(Seg {
                first,
                bytes: header,
            });
            continue;
        }
        let Some(seg) = segs.last_mut() else {
            continue;
        };
        match op % 13 {
            1..=5 => {
                let seq = match input.u8() % 8 {
                    0 => input.u64(),
                    1 => next.saturating_sub(u64::from(input.u8() % 4)),
                    2 => next.saturating_add(u64::from(input.u8() % 4)),
                    _ => next,
                };
                let p = payload(&mut input, seq);
                in_order &= seq >= seg.first;
                format::encode_record(&mut seg.bytes, seq, &encode(&p));
                framed.entry(seq).or_default().push(p);
                next = seq.saturating_add(1);
            }
            6 => {
                // A record whose checksums hold but whose payload is any bytes.
                let seq = next;
                let raw = input.chunk().to_vec();
                in_order &= seq >= seg.first;
                format::encode_record(&mut seg.bytes, seq, &raw);
                if let Some(p) = format::decode_payload(&raw) {
                    framed.entry(seq).or_default().push(p);
                }
                next = seq.saturating_add(1);
            }
            7 => seg.bytes.extend_from_slice(input.chunk()),
            8 => {
                let len = seg.bytes.len();
                let at = usize::from(input.u16()) % len.max(1);
                let bit = input.u8() % 8;
                if let Some(b) = seg.bytes.get_mut(at) {
                    *b ^= 1 << bit;
                }
            }
            9 => {
                let cut = usize::from(input.u8() % 64);
                let len = seg.bytes.len();
                seg.bytes.truncate(len.saturating_sub(cut));
            }
            10 => {
                ack = Some(match input.u8() % 6 {
                    0 => input.chunk().to_vec(),
                    1 => format::encode_ack(input.u64()).to_vec(),
                    n => format::encode_ack(next.saturating_sub(u64::from(n))).to_vec(),
                });
            }
            11 => {
                let mut log = spool::delivered::HEADER.as_bytes().to_vec();
                if input.u8().is_multiple_of(4) {
                    log = input.chunk().to_vec();
                }
                for _ in 0..input.u8() % 8 {
                    let seq = match input.u8() % 3 {
                        0 => input.u64(),
                        _ => next.saturating_sub(u64::from(input.u8())),
                    };
                    let id = Uuid::from_u128(u128::from(input.u64()));
                    log.extend_from_slice(format!("{seq}\t{id}\t{}\n", input.text()).as_bytes());
                }
                log.extend_from_slice(input.chunk());
                delivered = Some(log);
            }
            _ => dead = Some(input.chunk().to_vec()),
        }
    }
    let dir = state.join("spool");
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("harness: {}: {e}", path.display()))
    };
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("harness: {e}"));
    for s in &segs {
        write(&dir.join(format::segment_name(s.first)), &s.bytes);
    }
    if let Some(a) = ack {
        write(&dir.join("ack"), &a);
    }
    if let Some(d) = delivered {
        write(&state.join(spool::delivered::DELIVERED_FILE), &d);
    }
    if let Some(d) = dead {
        let dl = state.join("dead-letter");
        std::fs::create_dir_all(&dl).unwrap_or_else(|e| panic!("harness: {e}"));
        write(&dl.join("00000000-0000-0000-0000-000000000001.json"), &d);
    }
    (framed, in_order)
}

fn crc32c_of(data: &[u8]) -> u32 {
    // CRC-32C (Castagnoli), bitwise: the harness must not borrow the code it checks.
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn options() -> SpoolOptions {
    SpoolOptions {
        segment_bytes: 4096,
        free_floor: 0,
        ..SpoolOptions::default()
    }
}

fn open(state: &Path) -> Result<(Spool, spool::Recovered), SpoolError> {
    Spool::open_with(state, &SpoolConfig::default(), options())
}

/// Every durable record above the ack, read in pieces of varying size.
fn read_all(spool: &mut Spool, step: usize) -> Vec<SpooledEvent> {
    let mut out: Vec<SpooledEvent> = Vec::new();
    let mut from = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 100_000, "read_range does not advance");
        let got = spool
            .read_range(from, step, 200)
            .unwrap_or_else(|e| panic!("read_range after a successful open: {e}"));
        let Some(last) = got.last() else {
            break;
        };
        from = last.seq + 1;
        out.extend(got);
    }
    out
}

fn check_framed(events: &[SpooledEvent], framed: &Framed, acked: u64) {
    let mut prev = acked;
    for e in events {
        assert!(e.seq > prev, "seq {} after {prev} (ack {acked})", e.seq);
        prev = e.seq;
        let ok = framed.get(&e.seq).is_some_and(|ps| {
            ps.iter().any(|p| {
                p.id == e.record.id
                    && p.json == e.record.json
                    && p.appended_ms == e.appended_ms
                    && p.origin == e.origin
                    && spool::static_pattern(&p.pattern) == e.record.pattern
            })
        });
        assert!(
            ok,
            "record seq {} was never framed with valid checksums: {e:?}",
            e.seq
        );
    }
}

/// The harness.
pub fn run(data: &[u8]) {
    // tmpfs where there is one: the spool fsyncs, which costs nothing there.
    let base = std::env::var_os("BALP_FUZZ_TMP")
        .map(std::path::PathBuf::from)
        .or_else(|| Some(std::path::PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("balp-fuzz-spool")
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("harness: temp dir in {}: {e}", base.display()));
    let state = tmp.path();
    let (framed, in_order) = build(data, state);
    let step = usize::from(data.first().copied().unwrap_or(0) % 7) + 1;

    // Offline readers first: they must cope with the files as the input left them.
    let _ = spool::verify(state);
    let _ = spool::delivered::spool_ids(state);
    let _ = spool::delivered::read(state);
    let _ = spool::admin::dead_letters(state);

    let (mut spool, rec) = match open(state) {
        Ok(s) => s,
        Err(SpoolError::UnsupportedVersion { .. }) => return,
        Err(e) => panic!("open failed: {e}"),
    };
    let acked = spool.first_unacked() - 1;
    let events = read_all(&mut spool, step);
    if std::env::var_os("BALP_FUZZ_DEBUG").is_some() {
        eprintln!(
            "acked {acked} rec {rec:?}\nevents {:#?}",
            events.iter().map(|e| e.seq).collect::<Vec<_>>()
        );
        for e in std::fs::read_dir(state.join("spool"))
            .into_iter()
            .flatten()
            .flatten()
        {
            eprintln!("{:?} {:?}", e.path(), e.metadata().map(|m| m.len()));
        }
    }
    check_framed(&events, &framed, acked);
    assert_eq!(
        events.len() as u64,
        rec.pending_events,
        "open counted {} pending, {} read back",
        rec.pending_events,
        events.len()
    );
    assert_eq!(spool.status().pending_events, rec.pending_events);

    let origin = Origin {
        source: "fuzz".into(),
        stream_key: "k".into(),
        path: "/p".into(),
        start: 0,
        end: 1,
    };
    let record = EventRecord {
        id: Uuid::from_u128(u128::MAX),
        pattern: "read",
        json: "{\"resourceType\":\"AuditEvent\"}".into(),
        leaf: None,
    };
    let appended = match spool.append(&record, &origin) {
        Ok(seq) => {
            spool
                .commit()
                .unwrap_or_else(|e| panic!("commit after open: {e}"));
            let above = events.last().map_or(acked, |e| e.seq.max(acked));
            assert!(seq > above, "new seq {seq} not above {above}");
            let mut back = spool
                .read_range(seq, 1, 1 << 20)
                .unwrap_or_else(|e| panic!("read of the new record: {e}"));
            assert_eq!(back.len(), 1, "the new record does not read back");
            assert_eq!(back[0].record, record);
            Some(back.remove(0))
        }
        // The seq space is exhausted (an ack or record at u64::MAX): refusing is right.
        Err(_) => None,
    };
    drop(spool);

    let _ = spool::verify(state);
    let (mut again, _) = open(state).unwrap_or_else(|e| panic!("second open failed: {e}"));
    let mut want = events;
    want.extend(appended);
    let got = read_all(&mut again, step);
    if !in_order {
        // Known gap (docs/fuzzing.md): a record below its segment's file name (only a forged
        // or renamed file makes one) is read at the first open, but a segment created after
        // it sorts before that file, and the next open quarantines the record as out of
        // order. Only the first open's guarantees are checked then.
        let old: Vec<SpooledEvent> = got
            .into_iter()
            .filter(|g| {
                want.last()
                    .is_none_or(|w| w.seq != g.seq || w.record != g.record)
            })
            .collect();
        check_framed(&old, &framed, again.first_unacked() - 1);
        return;
    }
    assert_eq!(
        got.len(),
        want.len(),
        "second open reads another number of records"
    );
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.seq, &g.record, &g.origin), (w.seq, &w.record, &w.origin));
    }
}

//! Spool tests, named after the recovery cases of docs/spool.md.

use super::format::{self, REC_HDR_LEN};
use super::*;
use crate::config::{ByteSize, WhenFull};
use std::collections::BTreeSet;
use uuid::Uuid;

const PATTERNS: [&str; 4] = ["read", "login", "security-alert", "query"];

fn config(max: u64) -> SpoolConfig {
    SpoolConfig {
        max_bytes: ByteSize(max),
        when_full: WhenFull::Block,
        min_free: ByteSize(0),
        ..SpoolConfig::default()
    }
}

fn opts(segment_bytes: u64) -> SpoolOptions {
    SpoolOptions {
        segment_bytes,
        free_floor: 0,
        ..SpoolOptions::default()
    }
}

fn open(dir: &Path, segment_bytes: u64) -> (Spool, Recovered) {
    Spool::open_with(dir, &config(1 << 30), opts(segment_bytes)).unwrap()
}

fn event(n: u64) -> (EventRecord, Origin) {
    let record = EventRecord {
        id: Uuid::from_u128(n as u128 + 1),
        pattern: PATTERNS[(n % 4) as usize],
        json: format!(
            r#"{{"resourceType":"AuditEvent","n":{n},"pad":"{}"}}"#,
            "x".repeat((n % 50) as usize)
        ),
        leaf: None,
    };
    let origin = Origin {
        source: "auth".into(),
        stream_key: format!("file:1:{}", n % 3),
        path: format!("/var/log/auth-{}.log", n % 3).into(),
        start: n * 100,
        end: n * 100 + 99,
    };
    (record, origin)
}

/// Append events `from..to` (by number) and commit; returns the seqs.
fn fill(spool: &mut Spool, from: u64, to: u64) -> Vec<u64> {
    let seqs = (from..to)
        .map(|n| {
            let (r, o) = event(n);
            spool.append(&r, &o).unwrap()
        })
        .collect();
    spool.commit().unwrap();
    seqs
}

fn read_all(spool: &mut Spool) -> Vec<SpooledEvent> {
    spool.read_range(0, usize::MAX, usize::MAX).unwrap()
}

fn seg_files(state: &Path) -> Vec<PathBuf> {
    list_segments(&state.join("spool"))
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn quarantine_files(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(state.join("spool/quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// (seq, offset) of every valid record of a segment file.
fn record_offsets(path: &Path) -> Vec<(u64, u64)> {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut s = Scanner::new(f, SEG_HDR_LEN as u64, len).unwrap();
    let mut out = Vec::new();
    while let Frame::Record { offset, seq, .. } = s.next_frame().unwrap() {
        out.push((seq, offset));
    }
    out
}

fn flip(path: &Path, at: u64) {
    let mut b = fs::read(path).unwrap();
    b[at as usize] ^= 0x40;
    fs::write(path, b).unwrap();
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// Each read record is the event its seq number was made from (`fill` numbering = seq - 1).
fn assert_intact(events: &[SpooledEvent]) {
    for e in events {
        let (r, o) = event(e.seq - 1);
        assert_eq!(e.record, r, "seq {}", e.seq);
        assert_eq!(e.origin, o, "seq {}", e.seq);
    }
}

#[test]
fn append_commit_reopen_returns_the_same_records_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec, Recovered::default());
    let seqs = fill(&mut spool, 0, 300);
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    let before = read_all(&mut spool);
    assert_eq!(before.len(), 300);
    assert_intact(&before);
    assert_eq!(spool.status().pending_events, 300);
    drop(spool);
    let (mut spool, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.pending_events, 300);
    assert_eq!((rec.quarantined, rec.truncated_bytes), (0, 0));
    assert_eq!(read_all(&mut spool), before);
    assert_eq!(spool.next_seq(), 301);
    assert!(verify(dir.path()).unwrap().is_clean());
}

#[test]
fn uncommitted_appends_are_not_readable_and_vanish_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 64 << 20);
    fill(&mut spool, 0, 10);
    let (r, o) = event(10);
    spool.append(&r, &o).unwrap();
    assert_eq!(read_all(&mut spool).len(), 10);
    assert!(matches!(
        spool.ack(11),
        Err(SpoolError::AckBeyondDurable { .. })
    ));
    drop(spool);
    let (mut spool, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.pending_events, 10);
    assert_eq!(read_all(&mut spool).len(), 10);
}

#[test]
fn read_range_is_deterministic_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 4096);
    fill(&mut spool, 0, 500);
    assert!(seg_files(dir.path()).len() > 10);
    let chunks = |spool: &mut Spool| {
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let c = spool.read_range(from, 37, 3000).unwrap();
            let Some(last) = c.last() else { break };
            from = last.seq + 1;
            out.push(c);
        }
        out
    };
    let first = chunks(&mut spool);
    assert_eq!(first.iter().map(Vec::len).sum::<usize>(), 500);
    assert!(first.iter().all(|c| c.len() <= 37));
    assert!(
        first
            .iter()
            .all(|c| c.iter().map(|e| e.record.json.len()).sum::<usize>() <= 3000)
    );
    // Out of order starts hit the same records as sequential reading.
    for c in first.iter().rev().step_by(3) {
        assert_eq!(&spool.read_range(c[0].seq, 37, 3000).unwrap(), c);
    }
    drop(spool);
    let (mut spool, _) = open(dir.path(), 4096);
    assert_eq!(chunks(&mut spool), first);
    // One oversized event still comes out alone.
    assert_eq!(spool.read_range(5, 10, 1).unwrap().len(), 1);
}

#[test]
fn with_the_gate_acked_segments_stay_until_saved_positions_cover_them() {
    let dir = tempfile::tempdir().unwrap();
    let gated = SpoolOptions {
        gate_on_positions: true,
        ..opts(4096)
    };
    let (mut spool, _) = Spool::open_with(dir.path(), &config(1 << 30), gated).unwrap();
    fill(&mut spool, 0, 200);
    let before = seg_files(dir.path()).len();
    spool.ack(200).unwrap();
    assert_eq!(
        seg_files(dir.path()).len(),
        before,
        "no positions saved yet"
    );
    let second_last = spool.segments[1].last_seq.unwrap();
    spool.positions_saved(second_last).unwrap();
    assert_eq!(
        seg_files(dir.path()).len(),
        before - 2,
        "the two covered ones go"
    );
    drop(spool);
    // Reopened (gated): acknowledged segments left behind are kept until positions say so,
    // and their records still give the positions.
    let (mut spool, rec) = Spool::open_with(dir.path(), &config(1 << 30), gated).unwrap();
    assert_eq!(rec.pending_events, 0);
    assert!(rec.positions.values().any(|(_, end)| *end > 0));
    assert_eq!(seg_files(dir.path()).len(), before - 2);
    spool.positions_saved(200).unwrap();
    assert!(seg_files(dir.path()).is_empty());
}

#[test]
fn ack_deletes_fully_acked_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 4096);
    fill(&mut spool, 0, 200);
    let segs_before = spool.segments.len();
    // Ack into the middle of the third segment.
    let third = &spool.segments[2];
    let mid = third.first_seq + 1;
    let third_path = third.path.clone();
    spool.ack(mid).unwrap();
    let files = seg_files(dir.path());
    assert_eq!(files.len(), segs_before - 2);
    assert_eq!(files[0], third_path);
    assert_eq!(spool.first_unacked(), mid + 1);
    let rest = read_all(&mut spool);
    assert_eq!(rest[0].seq, mid + 1);
    assert_eq!(rest.len() as u64, 200 - mid);
    assert_eq!(spool.status().pending_events, 200 - mid);
    // Acks never move back.
    spool.ack(3).unwrap();
    assert_eq!(spool.first_unacked(), mid + 1);
    // Everything acked: every segment goes, and appending starts a new one.
    spool.ack(200).unwrap();
    assert!(seg_files(dir.path()).is_empty());
    assert_eq!(spool.status().pending_events, 0);
    assert_eq!(spool.status().oldest_pending_age, None);
    fill(&mut spool, 200, 210);
    assert_eq!(seg_files(dir.path()).len(), 1);
    drop(spool);
    let (mut spool, rec) = open(dir.path(), 4096);
    assert_eq!(rec.pending_events, 10);
    let back = read_all(&mut spool);
    assert_eq!(back.first().map(|e| e.seq), Some(201));
    assert_intact(&back);
}

#[test]
fn torn_tail_is_truncated_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 64 << 20);
    fill(&mut spool, 0, 50);
    drop(spool);
    let seg = seg_files(dir.path())[0].clone();
    let good_len = fs::metadata(&seg).unwrap().len();
    // Half of a valid record for seq 51, as a crash in the middle of a write leaves it.
    let (r, o) = event(50);
    let mut p = Vec::new();
    format::encode_payload(&mut p, 1, r.id, r.pattern, &r.json, &o);
    let mut frame = Vec::new();
    format::encode_record(&mut frame, 51, &p);
    append_bytes(&seg, &frame[..frame.len() / 2]);
    let (mut spool, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.truncated_bytes, (frame.len() / 2) as u64);
    assert_eq!(rec.quarantined, 0);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
    assert_eq!(quarantine_files(dir.path()).len(), 1);
    let all = read_all(&mut spool);
    assert_eq!(all.len(), 50);
    assert_intact(&all);
    // The next record goes into a fresh segment and everything reads back.
    fill(&mut spool, 50, 60);
    drop(spool);
    let (mut spool, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.truncated_bytes, 0);
    let all = read_all(&mut spool);
    assert_eq!(all.len(), 60);
    assert_intact(&all);
}

#[test]
fn zeroed_tail_is_truncated_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 64 << 20);
    fill(&mut spool, 0, 20);
    drop(spool);
    let seg = seg_files(dir.path())[0].clone();
    append_bytes(&seg, &[0u8; 5000]);
    let report = verify(dir.path()).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.torn_tail_bytes, 5000);
    let (mut spool, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.truncated_bytes, 5000);
    assert_eq!(read_all(&mut spool).len(), 20);
}

#[test]
fn flipped_bits_in_a_record_are_quarantined_and_the_rest_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 64 << 20);
    fill(&mut spool, 0, 50);
    drop(spool);
    let seg = seg_files(dir.path())[0].clone();
    let offs: BTreeMap<u64, u64> = record_offsets(&seg).into_iter().collect();
    // Payload bits of seq 10, header (seq field) bits of seq 20, and the last record's payload.
    flip(&seg, offs[&10] + REC_HDR_LEN as u64 + 30);
    flip(&seg, offs[&20] + 14);
    flip(&seg, offs[&50] + REC_HDR_LEN as u64 + 3);
    let report = verify(dir.path()).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.problems.len(), 3);
    assert_eq!(report.records, 47);
    let (mut spool, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.quarantined, 3);
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(rec.pending_events, 47);
    assert_eq!(quarantine_files(dir.path()).len(), 3);
    let all = read_all(&mut spool);
    let seqs: BTreeSet<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.len(), 47);
    assert!(!seqs.contains(&10) && !seqs.contains(&20) && !seqs.contains(&50));
    assert_intact(&all);
    assert_eq!(spool.status().quarantined, 3);
    assert_eq!(spool.status().pending_events, 47);
    // New records keep their numbers: seq 50 is never reused.
    assert_eq!(fill(&mut spool, 50, 51), vec![51]);
}

#[test]
fn corrupt_record_met_while_reading_is_quarantined_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 64 << 20);
    fill(&mut spool, 0, 30);
    let seg = seg_files(dir.path())[0].clone();
    let offs: BTreeMap<u64, u64> = record_offsets(&seg).into_iter().collect();
    flip(&seg, offs[&7] + REC_HDR_LEN as u64 + 5);
    let all = read_all(&mut spool);
    assert_eq!(all.len(), 29);
    assert_eq!(spool.status().quarantined, 1);
    assert_intact(&all);
}

#[test]
fn undecodable_payload_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 64 << 20);
    fill(&mut spool, 0, 5);
    drop(spool);
    let seg = seg_files(dir.path())[0].clone();
    let mut frame = Vec::new();
    format::encode_record(&mut frame, 6, b"checksummed but not a payload");
    // A record whose seq does not grow is a writer bug too.
    format::encode_record(&mut frame, 3, b"also bad");
    append_bytes(&seg, &frame);
    let (mut spool, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.quarantined, 2);
    assert_eq!(read_all(&mut spool).len(), 5);
    assert_eq!(spool.status().pending_events, 5);
    // Seq 6 came from a checksummed header: it is not handed out again.
    assert_eq!(spool.next_seq(), 7);
}

#[test]
fn a_record_repeating_an_earlier_seq_is_quarantined_and_never_read() {
    // Found by the fuzz target `spool`: open quarantined a checksummed record whose seq did
    // not grow ("seq not above the previous record's"), yet read_range returned it too, so
    // the same seq came back twice.
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 64 << 20);
    fill(&mut spool, 0, 5);
    drop(spool);
    let seg = seg_files(dir.path())[0].clone();
    let mut frame = Vec::new();
    for seq in [3u64, 5] {
        let (r, o) = event(seq + 100);
        let mut p = Vec::new();
        format::encode_payload(&mut p, 1, r.id, r.pattern, &r.json, &o);
        format::encode_record(&mut frame, seq, &p);
    }
    append_bytes(&seg, &frame);
    let (mut spool, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.quarantined, 2);
    let all = read_all(&mut spool);
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_intact(&all);
    assert_eq!(spool.status().pending_events, 5);
}

#[test]
fn bad_segment_header_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 64 << 20);
    fill(&mut spool, 0, 20);
    drop(spool);
    let seg = seg_files(dir.path())[0].clone();
    flip(&seg, 2);
    let (mut spool, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.quarantined, 1);
    assert!(quarantine_files(dir.path())[0].ends_with(".header"));
    let all = read_all(&mut spool);
    assert_eq!(all.len(), 20);
    assert_intact(&all);
}

#[test]
fn unknown_format_version_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 64 << 20);
    fill(&mut spool, 0, 3);
    drop(spool);
    let seg = seg_files(dir.path())[0].clone();
    let mut b = fs::read(&seg).unwrap();
    b[4] = 2;
    let crc = crc32c::crc32c(&b[0..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    fs::write(&seg, b).unwrap();
    let err = Spool::open_with(dir.path(), &config(1 << 30), opts(1 << 20)).unwrap_err();
    assert!(
        matches!(err, SpoolError::UnsupportedVersion { version: 2, .. }),
        "{err}"
    );
}

#[test]
fn seqs_beyond_max_seq_are_damage_not_a_wrap() {
    // Found in the #16 audit (inputs in fuzz/crashes/spool/): a checksummed ack of u64::MAX (or a record with that
    // seq) made open compute next_seq = u64::MAX + 1 (a panic in debug builds; in release a
    // wrap to 0, after which every new event counted as acknowledged).
    for forged_ack in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path(), 64 << 20);
        fill(&mut spool, 0, 3);
        drop(spool);
        let sdir = dir.path().join("spool");
        if forged_ack {
            fs::write(sdir.join("ack"), format::encode_ack(u64::MAX)).unwrap();
        } else {
            let (r, o) = event(99);
            let mut p = Vec::new();
            format::encode_payload(&mut p, 1, r.id, r.pattern, &r.json, &o);
            let mut frame = Vec::new();
            format::encode_record(&mut frame, u64::MAX, &p);
            append_bytes(&seg_files(dir.path())[0], &frame);
        }
        let (mut spool, rec) = open(dir.path(), 64 << 20);
        assert_eq!(rec.pending_events, 3, "forged ack: {forged_ack}");
        // The forged record is damage (here the segment's end, so it is cut off as a tail).
        assert_eq!(rec.quarantined + rec.truncated_bytes > 0, !forged_ack);
        assert_eq!(fill(&mut spool, 3, 4), vec![4]);
        assert_eq!(read_all(&mut spool).len(), 4);
    }
    assert_eq!(
        format::decode_ack(&format::encode_ack(format::MAX_SEQ)),
        Some(format::MAX_SEQ)
    );
}

#[test]
fn segment_without_header_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 64 << 20);
    fill(&mut spool, 0, 5);
    drop(spool);
    let sdir = dir.path().join("spool");
    fs::write(sdir.join(format::segment_name(6)), b"").unwrap();
    fs::write(sdir.join(format::segment_name(7)), b"BSEG\x01").unwrap();
    let (mut spool, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.pending_events, 5);
    assert_eq!(seg_files(dir.path()).len(), 1);
    assert_eq!(fill(&mut spool, 5, 6), vec![6]);
    assert_eq!(read_all(&mut spool).len(), 6);
}

#[test]
fn corrupt_ack_file_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 4096);
    fill(&mut spool, 0, 100);
    spool.ack(40).unwrap();
    let first_present = spool.segments[0].index[0].seq;
    assert!(first_present <= 41 && first_present > 1);
    drop(spool);
    let sdir = dir.path().join("spool");
    fs::write(sdir.join("ack"), b"garbage").unwrap();
    fs::write(sdir.join("ack.tmp"), b"half").unwrap();
    let (mut spool, rec) = open(dir.path(), 4096);
    assert!(!sdir.join("ack.tmp").exists());
    assert_eq!(spool.first_unacked(), first_present);
    assert_eq!(rec.pending_events, 101 - first_present);
    assert_eq!(read_all(&mut spool).len() as u64, 101 - first_present);
    // A missing ack file means the same.
    drop(spool);
    fs::remove_file(sdir.join("ack")).unwrap();
    let (spool, _) = open(dir.path(), 4096);
    assert_eq!(spool.first_unacked(), first_present);
    assert_eq!(spool.next_seq(), 101);
}

#[test]
fn fully_acked_segment_left_behind_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 4096);
    fill(&mut spool, 0, 100);
    let n = seg_files(dir.path()).len();
    let third_first = spool.segments[2].first_seq;
    drop(spool);
    // As if the process died between writing `ack` and unlinking the segments.
    fs::write(
        dir.path().join("spool/ack"),
        format::encode_ack(third_first - 1),
    )
    .unwrap();
    let (mut spool, rec) = open(dir.path(), 4096);
    assert_eq!(seg_files(dir.path()).len(), n - 2);
    assert_eq!(rec.pending_events, 100 - (third_first - 1));
    assert_eq!(read_all(&mut spool)[0].seq, third_first);
}

#[test]
fn positions_are_recovered_from_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 4096);
    fill(&mut spool, 0, 30);
    // A lower end for stream 0 appended later does not move its position back.
    let (r, mut o) = event(0);
    o.end = 5;
    spool.append(&r, &o).unwrap();
    spool.commit().unwrap();
    drop(spool);
    let (_, rec) = open(dir.path(), 4096);
    let want: BTreeMap<(String, String), (PathBuf, u64)> = (0..3)
        .map(|k| {
            let last = (0..30u64).filter(|n| n % 3 == k).max().unwrap();
            let (_, o) = event(last);
            (("auth".to_owned(), o.stream_key), (o.path, o.end))
        })
        .collect();
    assert_eq!(rec.positions, want);
}

#[test]
fn has_room_false_past_max_bytes_then_true_after_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open_with(dir.path(), &config(20 * 1024), opts(4096)).unwrap();
    assert!(spool.has_room());
    let mut n = 0;
    while spool.has_room() {
        fill(&mut spool, n, n + 10);
        n += 10;
        assert!(n < 10_000);
    }
    assert!(spool.status().bytes_on_disk >= 20 * 1024);
    spool.ack(spool.durable_seq()).unwrap();
    assert!(spool.has_room());
    assert_eq!(spool.status().bytes_on_disk, 0);
}

#[test]
fn a_second_process_cannot_open_the_same_spool() {
    let dir = tempfile::tempdir().unwrap();
    let (_spool, _) = open(dir.path(), 4096);
    let err = Spool::open_with(dir.path(), &config(1 << 30), opts(4096)).unwrap_err();
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
}

#[test]
fn stored_pattern_names_map_to_static_ones() {
    assert_eq!(static_pattern("security-alert"), "security-alert");
    assert_eq!(static_pattern("rest"), "rest");
    assert_eq!(static_pattern("no-such"), "unknown");
}

/// Random appends, commits, acks, reads and reopens against a model of what must be there.
#[test]
fn random_operations_match_a_model() {
    for seed in 1..=4u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path(), 2048 + rng.u64(0..8192));
        // seq → event number, for durable records; `buffered` not yet committed.
        let mut durable: BTreeMap<u64, u64> = BTreeMap::new();
        let mut buffered: Vec<(u64, u64)> = Vec::new();
        // A commit job taken out (stage_commit) and not yet finished, with what it covers.
        let mut job: Option<(CommitJob, Vec<(u64, u64)>)> = None;
        let mut acked = 0u64;
        let mut n = 0u64;
        for _ in 0..400 {
            match rng.u8(0..12) {
                0..=3 => {
                    for _ in 0..rng.u64(1..30) {
                        let (r, o) = event(n);
                        buffered.push((spool.append(&r, &o).unwrap(), n));
                        n += 1;
                    }
                }
                4 | 5 => {
                    if let Some((j, covered)) = job.take() {
                        spool.finish_commit(j.run()).unwrap();
                        durable.extend(covered);
                    }
                    spool.commit().unwrap();
                    durable.extend(buffered.drain(..));
                }
                10 | 11 => match job.take() {
                    None => {
                        if let Some(j) = spool.stage_commit().unwrap() {
                            assert!(
                                matches!(spool.stage_commit(), Err(SpoolError::CommitInFlight)),
                                "seed {seed}: one commit at a time"
                            );
                            job = Some((j, std::mem::take(&mut buffered)));
                        }
                    }
                    Some((j, covered)) => {
                        spool.finish_commit(j.run()).unwrap();
                        durable.extend(covered);
                    }
                },
                6 => {
                    if let Some(&last) = durable.keys().next_back() {
                        let to = rng.u64(acked..=last);
                        spool.ack(to).unwrap();
                        acked = acked.max(to);
                        durable.retain(|s, _| *s > acked);
                    }
                }
                7 => {
                    // A job never run is a crash between stage and fsync: its events are lost
                    // with everything appended after it, as the model says.
                    job = None;
                    drop(spool);
                    buffered.clear();
                    let (s, rec) = open(dir.path(), 2048 + rng.u64(0..8192));
                    spool = s;
                    assert_eq!(rec.pending_events, durable.len() as u64, "seed {seed}");
                }
                _ => {
                    let from = rng.u64(0..n + 2);
                    let max_events = rng.usize(1..60);
                    let max_bytes = rng.usize(1..5000);
                    let got = spool.read_range(from, max_events, max_bytes).unwrap();
                    let mut want = Vec::new();
                    let mut bytes = 0;
                    for (&seq, &num) in durable.range(from.max(acked + 1)..) {
                        let (r, _) = event(num);
                        if want.len() == max_events
                            || (!want.is_empty() && bytes + r.json.len() > max_bytes)
                        {
                            break;
                        }
                        bytes += r.json.len();
                        want.push((seq, r));
                    }
                    let got: Vec<(u64, EventRecord)> =
                        got.into_iter().map(|e| (e.seq, e.record)).collect();
                    assert_eq!(got, want, "seed {seed}");
                }
            }
            let in_job = job.as_ref().map_or(0, |(_, c)| c.len());
            assert_eq!(
                spool.status().pending_events,
                (durable.len() + buffered.len() + in_job) as u64,
                "seed {seed}"
            );
        }
    }
}

const CRASH_ENV: &str = "BALP_SPOOL_CRASH_DIR";

fn crash_payload(seq: u64) -> (EventRecord, Origin) {
    let (mut r, o) = event(seq);
    r.json.push_str(&"y".repeat((seq % 700) as usize));
    (r, o)
}

/// Not a test by itself: the child process of `sigkill_during_commits_loses_no_durable_record`.
#[test]
fn crash_child_appends_until_killed() {
    let Some(dir) = std::env::var_os(CRASH_ENV) else {
        return;
    };
    let (mut spool, _) = open(Path::new(&dir), 64 * 1024);
    let mut rng = fastrand::Rng::new();
    let mut out = io::stdout();
    for _ in 0..1_000_000 {
        for _ in 0..rng.u64(1..40) {
            let (r, o) = crash_payload(spool.next_seq());
            spool.append(&r, &o).unwrap();
        }
        // As the agent does: the commit is written while the next records are appended.
        let job = spool.stage_commit().unwrap();
        for _ in 0..rng.u64(0..20) {
            let (r, o) = crash_payload(spool.next_seq());
            spool.append(&r, &o).unwrap();
        }
        let durable = match job {
            Some(job) => spool.finish_commit(job.run()).unwrap(),
            None => spool.durable_seq(),
        };
        writeln!(out, "DURABLE {durable}").unwrap();
        if rng.u8(0..10) == 0 && durable > 500 {
            spool.ack(durable - 500).unwrap();
            writeln!(out, "ACKED {}", durable - 500).unwrap();
        }
    }
}

#[test]
fn sigkill_during_commits_loses_no_durable_record() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut ever_durable = 0u64;
    let mut ever_acked = 0u64;
    for round in 0..10 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "spool::tests::crash_child_appends_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let mut stdout = stdout;
            let _ = stdout.read_to_string(&mut text);
            text
        });
        std::thread::sleep(Duration::from_millis(rng.u64(40..250)));
        child.kill().unwrap();
        child.wait().unwrap();
        let text = reader.join().unwrap();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("DURABLE ") {
                ever_durable = ever_durable.max(v.parse().unwrap());
            }
            if let Some(v) = line.strip_prefix("ACKED ") {
                ever_acked = ever_acked.max(v.parse().unwrap());
            }
        }
        let (mut spool, rec) = open(dir.path(), 64 * 1024);
        assert_eq!(rec.quarantined, 0, "round {round}");
        let acked = spool.first_unacked() - 1;
        assert!(acked >= ever_acked, "round {round}: ack went back");
        assert!(spool.durable_seq() >= ever_durable, "round {round}");
        let all = read_all(&mut spool);
        let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
        let want: Vec<u64> = (acked + 1..=spool.durable_seq()).collect();
        assert_eq!(seqs, want, "round {round}: a durable record is missing");
        for e in &all {
            let (r, o) = crash_payload(e.seq);
            assert_eq!((&e.record, &e.origin), (&r, &o), "round {round}");
        }
    }
    assert!(ever_durable > 0, "the child never committed");
    eprintln!("crash test: {ever_durable} seqs reported durable, {ever_acked} acked");
}

#[test]
fn leaf_hashes_given_with_records_are_used_and_the_rest_hashed_from_their_json() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), 4096);
    // Two commits, several segments (4 KiB each), hints on every third record only.
    for round in 0..2u64 {
        for n in round * 60..round * 60 + 60 {
            let (mut r, o) = event(n);
            if n.is_multiple_of(3) {
                r.leaf = Some([n as u8; 32]);
            }
            spool.append(&r, &o).unwrap();
        }
        spool.commit().unwrap();
    }
    let path = dir
        .path()
        .join(super::leaves::TAMPER_DIR)
        .join(super::leaves::LEAVES_FILE);
    let entries = super::leaves::read_entries(&path, u64::MAX).unwrap();
    assert_eq!(entries.len(), 120);
    for (i, e) in entries.iter().enumerate() {
        let n = i as u64;
        let (r, _) = event(n);
        assert_eq!((e.seq, e.id), (n + 1, r.id));
        let want = if n.is_multiple_of(3) {
            [n as u8; 32]
        } else {
            super::leaves::event_leaf_hash(&r.json)
        };
        assert_eq!(e.hash, want, "leaf {i}");
    }
}

//! Every decoder (`syslog`, `raw`, `json`, `postgres` stderr with the default or a fuzzed
//! `log_line_prefix`, `postgres_csv`, `postgres_json`) and the multi-line joiner.
//!
//! Input: byte 0 picks the case, the rest is its input.
//!
//! Asserts, beyond "no panic":
//! * every decoder: a stamp it found renders (`Stamp::to_instant`) as a FHIR instant that
//!   reads back as the same instant; `raw` keeps the line; `json` finds exactly the objects
//!   serde_json reads;
//! * round trips: an RFC 5424 and an RFC 3339 file-format line built from fuzzed host, tag,
//!   pid and message decode back to those fields; fuzzed fields quoted as csvlog quotes them
//!   come back from `split_csv`; a fuzzed JSON object written on one line decodes to itself;
//! * the joiner: the records' byte ranges cover the lines' ranges exactly once, in order (no
//!   line lost or repeated); no record is longer than `max_bytes`; a record not flagged
//!   truncated is exactly its lines joined (indented: one leading TAB dropped), and in csv
//!   mode has balanced quotes.

use crate::input::{ALNUM, Input};
use balp_agent::decode::multiline::{Joiner, Multiline};
use balp_agent::decode::postgres::{self, PostgresDecoder};
use balp_agent::decode::syslog::SyslogDecoder;
use balp_agent::decode::{Decoded, Decoder, Stamp, json, raw};
use balp_agent::source::{LineFlags, LogLine, StreamId};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::sync::Arc;

/// Tokens for the mutator.
pub const DICT: &[&str] = &[
    "<38>1 ",
    "2026-11-25T15:22:44.172367+00:00",
    "Nov 25 15:22:44 ",
    "sshd[123]: ",
    " - - ",
    "[x a=\"b\\\"\"]",
    "{\"message\":\"AUDIT: SESSION,1,1,READ,SELECT,,,\\\"select 1\\\",<not logged>\"}",
    "\"timestamp\":\"2026-11-25 15:22:44.172 CET\"",
    "2026-11-25 15:22:44.172 CET [123] alice@db LOG:  ",
    "%m [%p] %q%u@%d ",
    "%t %r %a %h %l %s %v %x %c %e %i %n %%",
    "\t",
    "\"\"",
];

fn now() -> Timestamp {
    // Fixed, so a traditional stamp's year (and so an input's outcome) never changes.
    Timestamp::from_second(1_795_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn zone(b: u8) -> TimeZone {
    match b % 4 {
        0 => TimeZone::UTC,
        1 => TimeZone::get("Europe/Berlin").unwrap_or(TimeZone::UTC),
        2 => TimeZone::get("America/St_Johns").unwrap_or(TimeZone::UTC),
        _ => TimeZone::fixed(jiff::tz::offset(14)),
    }
}

/// The harness.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let case = input.u8();
    let tz = zone(input.u8());
    match case % 11 {
        0 => {
            let text = lossy(input.rest());
            check(&Decoder::Syslog(SyslogDecoder::new(tz)).decode(&text, now()));
        }
        1 => {
            let text = lossy(input.rest());
            let d = raw::decode(&text);
            assert_eq!(d.message, text);
            check(&d);
        }
        2 => {
            let text = lossy(input.rest());
            let d = json::decode(&text);
            assert_eq!(d.json.is_none(), d.malformed);
            check(&d);
        }
        3 => {
            let text = lossy(input.rest());
            let d = PostgresDecoder::stderr(postgres::DEFAULT_LOG_LINE_PREFIX, tz)
                .map(|p| p.decode(&text));
            check(&d.unwrap_or_else(|e| panic!("default prefix refused: {e}")));
        }
        4 => {
            let prefix = input.text();
            let text = lossy(input.rest());
            if let Ok(p) = PostgresDecoder::stderr(&prefix, tz) {
                check(&p.decode(&text));
            }
        }
        5 => check(&PostgresDecoder::csv(tz).decode(&lossy(input.rest()))),
        6 => check(&PostgresDecoder::json(tz).decode(&lossy(input.rest()))),
        7 => joiner(&mut input),
        8 => rfc5424_round_trip(&mut input, tz),
        9 => csv_round_trip(&mut input),
        _ => json_round_trip(&mut input),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What holds for whatever a decoder returns.
fn check(d: &Decoded) {
    if let Some(stamp) = d.time {
        check_instant(&stamp);
    }
}

/// A stamp renders as a FHIR instant (`YYYY-MM-DDThh:mm:ss[.f]±hh:mm`) of the same instant,
/// unless its year is outside 0001-9999 (the parsers then flag the time unreadable).
fn check_instant(stamp: &Stamp) {
    let s = stamp.to_instant();
    if !stamp.fits_fhir() {
        return;
    }
    let back: Timestamp = s
        .parse()
        .unwrap_or_else(|e| panic!("instant {s:?} does not read back: {e}"));
    assert_eq!(
        back, stamp.ts,
        "instant {s:?} is another time than {:?}",
        stamp.ts
    );
    let b = s.as_bytes();
    assert!(
        b.len() >= 25 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-',
        "instant {s:?} is not YYYY-MM-DDThh:mm:ss±hh:mm"
    );
}

fn rfc5424_round_trip(input: &mut Input<'_>, tz: TimeZone) {
    let printable: Vec<u8> = (0x21u8..0x7f).collect();
    let host = input.token(&printable, 40);
    let app = input.token(&printable, 48);
    let pid = input.token(ALNUM, 12);
    let pri = input.u8();
    let with_sd = input.u8() % 2 == 1;
    let msg = lossy(input.rest());
    if [&host, &app, &pid]
        .iter()
        .any(|t| t.is_empty() || *t == "-")
        || msg.starts_with([' ', '\u{feff}'])
        || msg.ends_with(['\n', '\r'])
    {
        return;
    }
    let sd = if with_sd {
        r#"[ex@1 a="x\"y\]" b="2"]"#
    } else {
        "-"
    };
    let line = format!("<{pri}>1 2026-11-25T15:22:44.172Z {host} {app} {pid} ID47 {sd} {msg}");
    let d = SyslogDecoder::new(tz).decode(&line, now());
    assert!(!d.malformed, "{line:?} is malformed");
    assert_eq!(d.host.as_deref(), Some(host.as_str()), "{line:?}");
    assert_eq!(d.program.as_deref(), Some(app.as_str()), "{line:?}");
    assert_eq!(d.pid.as_deref(), Some(pid.as_str()), "{line:?}");
    assert_eq!(d.message, msg, "{line:?}");
    check(&d);

    // The same fields in rsyslog's file format (the tag is what ends at `[`).
    let tag = input_free_tag(&app);
    let line = format!("2026-11-25T15:22:44.172367+01:00 {host} {tag}[{pid}]: {msg}");
    let d = SyslogDecoder::new(TimeZone::UTC).decode(&line, now());
    if !tag.is_empty() && !host.is_empty() {
        assert!(!d.malformed, "{line:?} is malformed");
        assert_eq!(d.host.as_deref(), Some(host.as_str()), "{line:?}");
        assert_eq!(d.program.as_deref(), Some(tag.as_str()), "{line:?}");
        assert_eq!(d.pid.as_deref(), Some(pid.as_str()), "{line:?}");
        assert_eq!(d.message, msg, "{line:?}");
    }
}

/// The letters and digits of `app`: a tag the file format carries unchanged.
fn input_free_tag(app: &str) -> String {
    app.chars().filter(char::is_ascii_alphanumeric).collect()
}

fn csv_round_trip(input: &mut Input<'_>) {
    let n = usize::from(input.u8() % 30) + 1;
    let fields: Vec<String> = (0..n).map(|_| input.text()).collect();
    let line = fields
        .iter()
        .map(|f| format!("\"{}\"", f.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        postgres::split_csv(&line).as_ref(),
        Some(&fields),
        "{line:?}"
    );
    // Only fields without a comma, quote or newline may go unquoted.
    if fields
        .iter()
        .all(|f| !f.contains([',', '"']) && !f.is_empty())
    {
        let bare = fields.join(",");
        assert_eq!(
            postgres::split_csv(&bare).as_ref(),
            Some(&fields),
            "{bare:?}"
        );
    }
    check(&PostgresDecoder::csv(TimeZone::UTC).decode(&line));
}

fn json_round_trip(input: &mut Input<'_>) {
    let mut map = serde_json::Map::new();
    for _ in 0..input.u8() % 12 {
        let k = input.text();
        let v = match input.u8() % 4 {
            0 => serde_json::Value::String(input.text()),
            1 => serde_json::Value::from(input.u64() >> 11),
            2 => serde_json::Value::Bool(input.u8().is_multiple_of(2)),
            _ => serde_json::Value::Null,
        };
        map.insert(k, v);
    }
    let line = serde_json::Value::Object(map.clone()).to_string();
    let d = json::decode(&line);
    assert!(!d.malformed, "{line:?}");
    assert_eq!(d.json.as_ref(), Some(&map), "{line:?}");
    // MySQL Enterprise Audit's array framing around the same object.
    let d = json::decode(&format!("[{line},"));
    assert_eq!(d.json.as_ref(), Some(&map), "{line:?}");
    check(&PostgresDecoder::json(TimeZone::UTC).decode(&line));
}

fn joiner(input: &mut Input<'_>) {
    let mode = match input.u8() % 3 {
        0 => Multiline::None,
        1 => Multiline::Indented,
        _ => Multiline::Csv,
    };
    let max_bytes = usize::from(input.u16() % 600);
    let max_lines = usize::from(input.u8() % 12);
    let flags_seed = input.u64();
    let stream = Arc::new(StreamId {
        source: Arc::from("fuzz"),
        key: "fuzz".into(),
        path: "fuzz".into(),
    });
    let mut lines = Vec::new();
    let mut offset = 1000u64;
    for (i, raw) in input.rest().split(|&b| b == b'\n').enumerate() {
        let (text, invalid_utf8) = balp_agent::source::to_text(raw);
        let end = offset + raw.len() as u64 + 1;
        lines.push(LogLine {
            stream: stream.clone(),
            offset,
            end,
            text,
            flags: LineFlags {
                truncated: (flags_seed >> (i % 64)) & 1 == 1 && i % 7 == 3,
                invalid_utf8,
            },
        });
        offset = end;
    }
    let mut j = Joiner::new(mode, max_bytes, max_lines);
    let mut records = Vec::new();
    for l in &lines {
        records.extend(j.push(l.clone()).into_iter().map(|r| (r, false)));
    }
    // The record still waiting at the end (EOF, timeout) may lack its continuation.
    records.extend(j.flush().map(|r| (r, true)));
    assert!(!j.has_pending());

    let mut next = 0usize;
    for (r, flushed) in &records {
        let first = next;
        assert!(first < lines.len(), "a record beyond the last line");
        assert_eq!(
            r.offset, lines[first].offset,
            "record does not start where the last ended"
        );
        while next < lines.len() && lines[next].end <= r.end {
            next += 1;
        }
        assert!(next > first, "empty record");
        assert_eq!(r.end, lines[next - 1].end, "record ends inside a line");
        let part = &lines[first..next];
        if mode != Multiline::None {
            assert!(
                r.text.len() <= max_bytes.max(1),
                "record of {} bytes",
                r.text.len()
            );
        }
        if part.iter().any(|l| l.flags.invalid_utf8) {
            assert!(r.flags.invalid_utf8);
        }
        if mode == Multiline::None {
            assert_eq!(part.len(), 1);
        }
        if !r.flags.truncated {
            let mut want = part[0].text.clone();
            for l in &part[1..] {
                want.push('\n');
                match mode {
                    Multiline::Indented => {
                        want.push_str(l.text.strip_prefix('\t').unwrap_or(&l.text))
                    }
                    _ => want.push_str(&l.text),
                }
            }
            assert_eq!(r.text, want, "joined text differs from its lines");
            if mode == Multiline::Csv && !flushed {
                assert_eq!(
                    r.text.matches('"').count() % 2,
                    0,
                    "csv record with an open quote"
                );
            }
        }
    }
    assert_eq!(next, lines.len(), "lines lost at the end");
}

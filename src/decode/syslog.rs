//! `syslog` decoder: rsyslog's file formats and the syslog wire formats in, header (time,
//! host, program, pid) and message out. Hand-written, one pass, no regex; the only allocations
//! are the owned strings of [`Decoded`].
//!
//! Accepted forms (an optional `<PRI>` prefix is skipped, one trailing `\r` is dropped):
//!
//! * RFC 3339 (`RSYSLOG_FileFormat`, Debian's default; with `<PRI>` it is rsyslog's wire
//!   `RSYSLOG_ForwardFormat`): `2026-11-25T15:22:44.172367+00:00 host tag[pid]: msg`. The
//!   stamp's own offset is kept.
//! * Traditional (`RSYSLOG_TraditionalFileFormat`, RFC 3164 style, also on the wire after
//!   `<PRI>`): `Nov 25 15:22:44 host tag[pid]: msg`, the day possibly space-padded (`Nov  5`).
//! * RFC 5424 (only after `<PRI>`): `<38>1 TIMESTAMP HOST APP-NAME PROCID MSGID SD MSG`.
//!   `program` = APP-NAME, `pid` = PROCID, `host` = HOSTNAME; the NILVALUE `-` leaves the
//!   field empty (a `-` TIMESTAMP gives no time, which is not malformed). STRUCTURED-DATA is
//!   skipped (quoted values may hold `\"`, `\]`, `\\`), MSGID is ignored. A UTF-8 BOM at the
//!   start of MSG is dropped. Senders that turn an RFC 3164 message into RFC 5424 (rsyslog's
//!   `RSYSLOG_SyslogProtocol23Format`) keep the space that followed the `tag:` in MSG, so
//!   rsyslog writes `- -  Accepted …`; after the one separator space, **one further space is
//!   dropped too**, so the message is byte for byte what the file formats give for the same
//!   event and parsers anchored at `^` match either way.
//!
//! The tag is everything up to `[` or `:` and may contain `(`, `)`, `.`, `-`, `/`
//! (`sshd(pam_unix)[19939]`, `com.apple.CDScheduler[43]`); the pid is optional (`sudo:`). One
//! space after the colon belongs to the separator; any further spaces stay in the message
//! (sudo right-aligns user names).
//!
//! **Year and zone of traditional stamps.** They carry neither. The zone is the source's
//! configured zone (`tz`), never the agent's own. The year is the year of `now` in that zone,
//! minus one when the stamp would then lie more than 31 days after `now` (December lines read
//! in January). A 29 February that does not exist in the chosen year makes the line
//! malformed. A wall time that occurs twice (DST fall-back) takes the **earlier** instant; a
//! wall time skipped by a DST gap is read with the offset before the gap.
//!
//! A line that fits neither form becomes `Decoded { message: <whole line>, malformed: true }`
//! without header fields, so parsers can still look at it.

use super::{Decoded, Stamp};
use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::{Offset, TimeZone};

/// rsyslog file-format decoder.
#[derive(Debug, Clone)]
pub struct SyslogDecoder {
    /// Zone for stamps without offset.
    pub tz: TimeZone,
}

/// How far in the future a traditional stamp may lie before it is taken to be last year's.
const FUTURE_SLACK_SECS: i64 = 31 * 86_400;

impl SyslogDecoder {
    /// A decoder that reads zone-less stamps in `tz`.
    pub fn new(tz: TimeZone) -> Self {
        SyslogDecoder { tz }
    }

    /// Decode one line. `now` anchors the year of traditional stamps.
    pub fn decode(&self, text: &str, now: Timestamp) -> Decoded {
        let line = text.strip_suffix('\n').unwrap_or(text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        match self.decode_inner(line, now) {
            Some(d) => d,
            None => Decoded {
                message: line.to_owned(),
                malformed: true,
                ..Decoded::default()
            },
        }
    }

    fn decode_inner(&self, line: &str, now: Timestamp) -> Option<Decoded> {
        let rest = skip_pri(line);
        if rest.len() != line.len()
            && let Some(after_version) = rfc5424_version(rest)
        {
            return self.decode_rfc5424(after_version);
        }
        let b = rest.as_bytes();
        let (time, rest) = if b.first()?.is_ascii_digit() {
            let end = rest.find(' ')?;
            let stamp = parse_rfc3339(&rest[..end], &self.tz)?;
            (stamp, &rest[end + 1..])
        } else {
            let (stamp, used) = self.parse_traditional(rest, now)?;
            (stamp, &rest[used..])
        };
        let (host, rest) = rest.split_once(' ')?;
        if host.is_empty() {
            return None;
        }
        let (program, pid, message) = split_tag(rest)?;
        Some(Decoded {
            time: Some(time),
            host: Some(host.to_owned()),
            program: Some(program.to_owned()),
            pid: pid.map(str::to_owned),
            message: message.to_owned(),
            json: None,
            malformed: false,
        })
    }

    /// RFC 5424 after `<PRI>VERSION SP`: `TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP
    /// MSGID SP STRUCTURED-DATA [SP MSG]`.
    fn decode_rfc5424(&self, s: &str) -> Option<Decoded> {
        let (stamp, s) = token(s)?;
        let (host, s) = token(s)?;
        let (app, s) = token(s)?;
        let (procid, s) = token(s)?;
        let (_msgid, s) = token(s)?;
        let time = match stamp {
            "-" => None,
            t => Some(parse_rfc3339(t, &self.tz)?),
        };
        let sd_len = structured_data_len(s.as_bytes())?;
        let message = match s.as_bytes().get(sd_len) {
            None => "",
            Some(b' ') => {
                let m = &s[sd_len + 1..];
                let m = m.strip_prefix('\u{feff}').unwrap_or(m);
                m.strip_prefix(' ').unwrap_or(m)
            }
            Some(_) => return None,
        };
        let nil = |v: &str| (v != "-").then(|| v.to_owned());
        Some(Decoded {
            time,
            host: nil(host),
            program: nil(app),
            pid: nil(procid),
            message: message.to_owned(),
            json: None,
            malformed: false,
        })
    }

    /// `Mmm dd hh:mm:ss ` → stamp and number of bytes consumed (including the trailing space).
    fn parse_traditional(&self, s: &str, now: Timestamp) -> Option<(Stamp, usize)> {
        let b = s.as_bytes();
        if b.len() < 16 || b[3] != b' ' || b[6] != b' ' || b[15] != b' ' {
            return None;
        }
        let month = month_number(&b[..3])?;
        let day = match (b[4], b[5]) {
            (b' ', d) if d.is_ascii_digit() => d - b'0',
            (t, d) if t.is_ascii_digit() && d.is_ascii_digit() => (t - b'0') * 10 + (d - b'0'),
            _ => return None,
        };
        let (hour, minute, second) = parse_hms(&b[7..15])?;
        let now_local = self.tz.to_datetime(now);
        let mut year = now_local.year();
        let mk = |y: i16| -> Option<DateTime> {
            Date::new(y, month as i8, day as i8)
                .ok()
                .map(|d| d.at(hour as i8, minute as i8, second as i8, 0))
        };
        let mut dt = mk(year)?;
        let ahead = dt.duration_since(now_local).as_secs();
        if ahead > FUTURE_SLACK_SECS {
            year -= 1;
            dt = mk(year)?;
        }
        let ts = self.tz.to_ambiguous_timestamp(dt).earlier().ok()?;
        Some((Stamp::in_zone(ts, &self.tz), 16))
    }
}

fn skip_pri(line: &str) -> &str {
    let b = line.as_bytes();
    if b.first() == Some(&b'<')
        && let Some(close) = b.iter().take(5).position(|&c| c == b'>')
        && close > 1
        && b[1..close].iter().all(u8::is_ascii_digit)
    {
        return &line[close + 1..];
    }
    line
}

/// After `<PRI>`: an RFC 5424 VERSION (`1`..`999`, no leading zero) and its space → the rest.
fn rfc5424_version(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let digits = b.iter().take(4).take_while(|c| c.is_ascii_digit()).count();
    if (1..=3).contains(&digits) && b[0] != b'0' && b.get(digits) == Some(&b' ') {
        Some(&s[digits + 1..])
    } else {
        None
    }
}

/// The next non-empty space-terminated token and what follows its space.
fn token(s: &str) -> Option<(&str, &str)> {
    let end = memchr::memchr(b' ', s.as_bytes())?;
    (end > 0).then(|| (&s[..end], &s[end + 1..]))
}

/// Length of the STRUCTURED-DATA at the start of `b`: `-`, or one or more `[…]` elements whose
/// quoted parameter values may contain escaped `"`, `]` and `\`. `None` if it is neither.
fn structured_data_len(b: &[u8]) -> Option<usize> {
    match b.first()? {
        b'-' => return Some(1),
        b'[' => {}
        _ => return None,
    }
    let mut i = 0;
    while b.get(i) == Some(&b'[') {
        i += 1;
        let mut quoted = false;
        loop {
            match *b.get(i)? {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b']' if !quoted => break,
                _ => {}
            }
            i += 1;
        }
        i += 1;
    }
    Some(i)
}

fn month_number(m: &[u8]) -> Option<u8> {
    Some(match m {
        b"Jan" => 1,
        b"Feb" => 2,
        b"Mar" => 3,
        b"Apr" => 4,
        b"May" => 5,
        b"Jun" => 6,
        b"Jul" => 7,
        b"Aug" => 8,
        b"Sep" => 9,
        b"Oct" => 10,
        b"Nov" => 11,
        b"Dec" => 12,
        _ => return None,
    })
}

fn two_digits(b: &[u8]) -> Option<u8> {
    match b {
        [a, c] if a.is_ascii_digit() && c.is_ascii_digit() => Some((a - b'0') * 10 + (c - b'0')),
        _ => None,
    }
}

/// `hh:mm:ss` (exactly 8 bytes).
fn parse_hms(b: &[u8]) -> Option<(u8, u8, u8)> {
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let h = two_digits(&b[0..2])?;
    let m = two_digits(&b[3..5])?;
    let s = two_digits(&b[6..8])?;
    (h < 24 && m < 60 && s < 61).then_some((h, m, s.min(59)))
}

/// Parse an RFC 3339 stamp (`2026-11-25T15:22:44.172367+00:00`, `…Z`; a space instead of `T`
/// is accepted). Without an offset the wall time is read in `tz` (earlier instant when
/// ambiguous). Returns `None` when the text is anything else.
pub fn parse_rfc3339(s: &str, tz: &TimeZone) -> Option<Stamp> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
    {
        return None;
    }
    let year = two_digits(&b[0..2])? as i16 * 100 + two_digits(&b[2..4])? as i16;
    let month = two_digits(&b[5..7])?;
    let day = two_digits(&b[8..10])?;
    let (h, m, sec) = parse_hms(&b[11..19])?;
    let mut i = 19;
    let mut nanos: i32 = 0;
    if b.get(i) == Some(&b'.') || b.get(i) == Some(&b',') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i32::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = (i - start).min(9);
        if digits == 0 {
            return None;
        }
        nanos *= 10i32.pow(9 - digits as u32);
    }
    let dt = Date::new(year, month as i8, day as i8)
        .ok()?
        .at(h as i8, m as i8, sec as i8, nanos);
    let rest = &b[i..];
    let offset = match rest {
        [] => {
            let ts = tz.to_ambiguous_timestamp(dt).earlier().ok()?;
            return Some(Stamp::in_zone(ts, tz));
        }
        [b'Z'] | [b'z'] => Offset::UTC,
        [sign @ (b'+' | b'-'), hh @ ..] => {
            let (oh, om) = match hh {
                [a, c, b':', d, e] => (two_digits(&[*a, *c])?, two_digits(&[*d, *e])?),
                [a, c, d, e] => (two_digits(&[*a, *c])?, two_digits(&[*d, *e])?),
                [a, c] => (two_digits(&[*a, *c])?, 0),
                _ => return None,
            };
            let secs = i32::from(oh) * 3600 + i32::from(om) * 60;
            Offset::from_seconds(if *sign == b'-' { -secs } else { secs }).ok()?
        }
        _ => return None,
    };
    let ts = offset.to_timestamp(dt).ok()?;
    Some(Stamp { ts, offset })
}

/// `tag[pid]: msg` / `tag: msg` → (tag, pid, msg).
fn split_tag(s: &str) -> Option<(&str, Option<&str>, &str)> {
    let b = s.as_bytes();
    let end = b
        .iter()
        .position(|&c| c == b'[' || c == b':' || c == b' ')?;
    if end == 0 {
        return None;
    }
    let tag = &s[..end];
    let (pid, after) = if b[end] == b'[' {
        let close = s[end..].find(']')? + end;
        let pid = &s[end + 1..close];
        if pid.is_empty() || pid.contains(' ') {
            return None;
        }
        (Some(pid), close + 1)
    } else {
        (None, end)
    };
    if b.get(after) != Some(&b':') {
        return None;
    }
    let msg_start = if b.get(after + 1) == Some(&b' ') {
        after + 2
    } else {
        after + 1
    };
    Some((tag, pid, &s[msg_start..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> SyslogDecoder {
        SyslogDecoder::new(TimeZone::UTC)
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn rfc3339_file_format_splits_header() {
        let d = utc().decode(
            "2026-11-25T15:22:44.172367+00:00 fhir-app01 sshd[24192]: Accepted password for alice from 127.0.0.1 port 55224 ssh2",
            ts("2026-11-25T16:00:00Z"),
        );
        assert!(!d.malformed);
        assert_eq!(d.host.as_deref(), Some("fhir-app01"));
        assert_eq!(d.program.as_deref(), Some("sshd"));
        assert_eq!(d.pid.as_deref(), Some("24192"));
        assert_eq!(
            d.message,
            "Accepted password for alice from 127.0.0.1 port 55224 ssh2"
        );
        assert_eq!(
            d.time.unwrap().to_instant(),
            "2026-11-25T15:22:44.172367+00:00"
        );
    }

    #[test]
    fn rfc3339_keeps_offset_of_line() {
        let d = utc().decode(
            "2026-11-25T16:22:44+01:00 h sudo: x",
            ts("2026-11-25T16:00:00Z"),
        );
        let t = d.time.unwrap();
        assert_eq!(t.to_instant(), "2026-11-25T16:22:44+01:00");
        assert_eq!(t.ts, ts("2026-11-25T15:22:44Z"));
    }

    #[test]
    fn traditional_with_padded_day_and_no_pid() {
        let d = utc().decode(
            "Nov  5 09:01:02 host sudo:    alice : TTY=pts/0 ; COMMAND=/bin/id",
            ts("2026-11-25T16:00:00Z"),
        );
        assert!(!d.malformed, "{d:?}");
        assert_eq!(d.program.as_deref(), Some("sudo"));
        assert_eq!(d.pid, None);
        assert_eq!(d.message, "   alice : TTY=pts/0 ; COMMAND=/bin/id");
        assert_eq!(d.time.unwrap().to_instant(), "2026-11-05T09:01:02+00:00");
    }

    #[test]
    fn december_lines_read_in_january_are_last_year() {
        let d = utc().decode("Dec 31 23:59:59 h cron[1]: x", ts("2027-01-02T00:00:00Z"));
        assert_eq!(d.time.unwrap().to_instant(), "2026-12-31T23:59:59+00:00");
        // A few days ahead (clock skew) stays in this year.
        let d = utc().decode("Jan  3 00:00:00 h cron[1]: x", ts("2027-01-02T00:00:00Z"));
        assert_eq!(d.time.unwrap().to_instant(), "2027-01-03T00:00:00+00:00");
    }

    #[test]
    fn traditional_uses_source_zone_and_earlier_instant_when_ambiguous() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let dec = SyslogDecoder::new(berlin);
        let d = dec.decode("Oct 25 02:30:00 h x: y", ts("2026-10-26T00:00:00Z"));
        // 02:30 happens twice; the first one is still CEST (+02:00).
        assert_eq!(d.time.unwrap().to_instant(), "2026-10-25T02:30:00+02:00");
        let d = dec.decode("Nov 25 15:22:50 h x: y", ts("2026-11-26T00:00:00Z"));
        assert_eq!(d.time.unwrap().to_instant(), "2026-11-25T15:22:50+01:00");
    }

    #[test]
    fn pri_prefix_and_odd_tags() {
        let d = utc().decode(
            "<38>Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; rhost=218.188.2.4 \r",
            ts("2026-07-01T00:00:00Z"),
        );
        assert!(!d.malformed);
        assert_eq!(d.program.as_deref(), Some("sshd(pam_unix)"));
        assert_eq!(d.pid.as_deref(), Some("19939"));
        assert_eq!(d.message, "authentication failure; rhost=218.188.2.4 ");
        let d = utc().decode(
            "Jun 14 15:16:01 mac com.apple.CDScheduler[43]: Thermal pressure",
            ts("2026-07-01T00:00:00Z"),
        );
        assert_eq!(d.program.as_deref(), Some("com.apple.CDScheduler"));
    }

    #[test]
    fn lines_that_do_not_fit_are_malformed_but_kept() {
        for line in [
            "hello world",
            "Nov 25 15:22:44 hostonly",
            "2026-11-25T15:22:44 host tag no colon",
            "Foo 25 15:22:44 h t: m",
            "",
        ] {
            let d = utc().decode(line, ts("2026-11-25T16:00:00Z"));
            assert!(d.malformed, "{line}");
            assert_eq!(d.message, line);
            assert!(d.time.is_none());
        }
    }

    #[test]
    fn whole_generated_auth_logs_decode() {
        for f in ["auth.log", "auth.traditional.log"] {
            let path = format!(
                "{}/../shared/corpus/generated/debian12-rsyslog-auth/{f}",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(path).unwrap();
            for line in text.lines() {
                let d = utc().decode(line, ts("2026-12-01T00:00:00Z"));
                assert!(!d.malformed, "{line}");
                assert!(d.time.unwrap().to_instant().starts_with("2026-11-25T15:2"));
            }
        }
    }

    fn corpus(f: &str) -> String {
        let path = format!(
            "{}/../shared/corpus/generated/debian12-rsyslog-auth/{f}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn wire_formats_decode_like_the_file_format() {
        let file = corpus("auth.log");
        for wire in ["wire-udp-rfc5424.txt", "wire-udp-rfc3164-forwardformat.txt"] {
            let text = corpus(wire);
            assert_eq!(text.lines().count(), file.lines().count());
            for (w, f) in text.lines().zip(file.lines()) {
                let now = ts("2026-12-01T00:00:00Z");
                let (dw, df) = (utc().decode(w, now), utc().decode(f, now));
                assert!(!dw.malformed, "{w}");
                assert_eq!(dw.time, df.time, "{w}");
                assert_eq!(dw.host, df.host, "{w}");
                assert_eq!(dw.program, df.program, "{w}");
                assert_eq!(dw.pid, df.pid, "{w}");
                assert_eq!(dw.message, df.message, "{w}");
            }
        }
    }

    #[test]
    fn rfc5424_fields_nil_values_sd_and_bom() {
        let now = ts("2026-12-01T00:00:00Z");
        let d = utc().decode(
            "<85>1 2026-11-25T15:22:59.344440+00:00 fhir-app01 sudo - - -     alice : PWD=/home/alice",
            now,
        );
        assert_eq!(d.program.as_deref(), Some("sudo"));
        assert_eq!(d.pid, None);
        assert_eq!(d.message, "   alice : PWD=/home/alice");
        let d = utc().decode(
            "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Appl\\\"ic]ation\"][x@1 a=\"\\]\"] \u{feff}An application event",
            now,
        );
        assert!(!d.malformed, "{d:?}");
        assert_eq!(d.host.as_deref(), Some("mymachine.example.com"));
        assert_eq!(d.program.as_deref(), Some("evntslog"));
        assert_eq!(d.message, "An application event");
        assert_eq!(
            d.time.unwrap().to_instant(),
            "2003-10-11T22:14:15.003+00:00"
        );
        let d = utc().decode("<13>1 - - - - - -", now);
        assert!(!d.malformed);
        assert!(d.time.is_none() && d.host.is_none() && d.program.is_none());
        assert_eq!(d.message, "");
        let d = utc().decode("<13>1 2026-11-25T15:22:59Z h app 7 - [a b=\"1\"]", now);
        assert_eq!(d.pid.as_deref(), Some("7"));
        assert_eq!(d.message, "");
    }

    #[test]
    fn broken_rfc5424_is_malformed_not_a_panic() {
        let now = ts("2026-12-01T00:00:00Z");
        for line in [
            "<13>1 ",
            "<13>1 2026-11-25T15:22:59Z h app 7 - [unterminated x=\"]",
            "<13>1 2026-11-25T15:22:59Z h app 7 - [a]x",
            "<13>1 2026-11-25T15:22:59Z h app 7 - x msg",
            "<13>1 notatime h app 7 - - msg",
            "<13>1 2026-11-25T15:22:59Z  app 7 - - msg",
            "<13>1 2026-11-25T15:22:59Z h app 7 - [a b=\"\\",
        ] {
            let d = utc().decode(line, now);
            assert!(d.malformed, "{line}");
            assert_eq!(d.message, line);
        }
        // Every prefix of a valid line is handled without panicking.
        let full = "<38>1 2026-11-25T15:22:50.239810+00:00 h sshd 1 - [a b=\"ä\\\"\"] \u{feff} Ä";
        for (i, _) in full.char_indices() {
            let _ = utc().decode(&full[..i], now);
        }
    }
}

//! Decoders split a [`LogLine`](crate::source::LogLine)'s text into a header and a message.
//!
//! * `syslog`: rsyslog's file formats (RFC 3339 `2026-11-25T15:22:44.172367+00:00 host tag[pid]: msg`
//!   and traditional `Nov 25 15:22:44 host tag[pid]: msg`), with the year and zone rule for the
//!   traditional form documented on [`syslog`].
//! * `raw`: the whole line is the message; the parser finds its own time.
//! * `json`: the line is one JSON object; parsers select fields by path.
//! * `postgres`, `postgres_csv`, `postgres_json`: PostgreSQL's stderr, csvlog and jsonlog
//!   destinations, all decoded to one shape ([`postgres`]).
//!
//! Records spanning several lines are joined before decoding by [`multiline`].
//!
//! A line that does not fit its decoder is not lost: it becomes a message without header, the
//! parsers still see it, and the failure is counted.

pub mod json;
pub mod multiline;
pub mod postgres;
pub mod raw;
pub mod syslog;

use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};

/// The IANA zone named `name` (a source's `timezone`): the one rule `check` and the decoders
/// apply to stamps written without an offset.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))
}

/// A point in time together with the UTC offset the log stated (or the configured zone gave).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The instant.
    pub ts: Timestamp,
    /// The offset to render it in, so `recorded` keeps the zone of the line.
    pub offset: Offset,
}

impl Stamp {
    /// Render as a FHIR `instant` (seconds and zone always present), e.g.
    /// `2026-11-25T15:22:44.172367+00:00`.
    pub fn to_instant(&self) -> String {
        let offset = self.shown_offset();
        let dt = offset.to_datetime(self.ts);
        let year = dt.year();
        if !(0..=9999).contains(&year) {
            return self.instant_by_fmt();
        }
        // Digits pushed by hand: `write!` with width specs was 2 % of the agent's CPU (one
        // `recorded` per event); years outside 0..=9999 take the `fmt` path.
        let secs = offset.seconds();
        let abs = secs.unsigned_abs();
        let nanos = u32::try_from(dt.subsec_nanosecond()).unwrap_or(0);
        let mut out = String::with_capacity(36);
        push_digits(&mut out, year.unsigned_abs().into(), 4);
        out.push('-');
        push_digits(&mut out, dt.month().unsigned_abs().into(), 2);
        out.push('-');
        push_digits(&mut out, dt.day().unsigned_abs().into(), 2);
        out.push('T');
        push_digits(&mut out, dt.hour().unsigned_abs().into(), 2);
        out.push(':');
        push_digits(&mut out, dt.minute().unsigned_abs().into(), 2);
        out.push(':');
        push_digits(&mut out, dt.second().unsigned_abs().into(), 2);
        if nanos != 0 {
            out.push('.');
            if nanos % 1_000_000 == 0 {
                push_digits(&mut out, nanos / 1_000_000, 3);
            } else if nanos % 1_000 == 0 {
                push_digits(&mut out, nanos / 1_000, 6);
            } else {
                push_digits(&mut out, nanos, 9);
            }
        }
        out.push(if secs < 0 { '-' } else { '+' });
        push_digits(&mut out, abs / 3600, 2);
        out.push(':');
        push_digits(&mut out, (abs % 3600) / 60, 2);
        out
    }

    /// [`to_instant`](Self::to_instant) through `fmt`, for any year jiff holds.
    fn instant_by_fmt(&self) -> String {
        use std::fmt::Write as _;
        let offset = self.shown_offset();
        let dt = offset.to_datetime(self.ts);
        let secs = offset.seconds();
        let sign = if secs < 0 { '-' } else { '+' };
        let abs = secs.unsigned_abs();
        let nanos = dt.subsec_nanosecond();
        let mut out = String::with_capacity(36);
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        );
        let _ = if nanos == 0 {
            Ok(())
        } else if nanos % 1_000_000 == 0 {
            write!(out, ".{:03}", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            write!(out, ".{:06}", nanos / 1_000)
        } else {
            write!(out, ".{nanos:09}")
        };
        let _ = write!(out, "{sign}{:02}:{:02}", abs / 3600, (abs % 3600) / 60);
        out
    }

    /// The offset [`to_instant`](Self::to_instant) writes. FHIR's instant allows offsets up to
    /// ±14:00 in whole minutes; a line may state any offset jiff reads (±25:59:59). Such a
    /// stamp is written in UTC: the same instant, a valid value (found by the fuzz target
    /// `parse`: "+20:00" failed conformance).
    fn shown_offset(&self) -> Offset {
        let secs = self.offset.seconds();
        if secs.unsigned_abs() <= 14 * 3600 && secs % 60 == 0 {
            self.offset
        } else {
            Offset::UTC
        }
    }

    /// Whether a FHIR `instant` can hold this stamp: its year (as written) is 0001-9999. A
    /// log can state year 0 or, through `%Y` and epoch numbers, negative and five-digit years.
    pub fn fits_fhir(&self) -> bool {
        (1..=9999).contains(&self.shown_offset().to_datetime(self.ts).year())
    }

    /// The current time in UTC.
    pub fn now_utc() -> Stamp {
        Stamp {
            ts: Timestamp::now(),
            offset: Offset::UTC,
        }
    }

    /// Interpret `ts` in `tz`, keeping the zone's offset at that instant.
    pub fn in_zone(ts: Timestamp, tz: &TimeZone) -> Stamp {
        Stamp {
            ts,
            offset: tz.to_offset(ts),
        }
    }
}

/// The header fields a decoder found, and the message the parsers match against.
#[derive(Debug, Clone, Default)]
pub struct Decoded {
    /// Time stated by the header, if the decoder found one.
    pub time: Option<Stamp>,
    /// Host name from the header.
    pub host: Option<String>,
    /// Program (syslog tag / app-name), e.g. `sshd`, `sudo`, `su`.
    pub program: Option<String>,
    /// Process id from the tag, if any.
    pub pid: Option<String>,
    /// The message (for `raw` and `json`, the whole line).
    pub message: String,
    /// For `json`: the parsed object.
    pub json: Option<serde_json::Map<String, serde_json::Value>>,
    /// Set when the line did not fit the decoder (it is still passed on as a bare message).
    pub malformed: bool,
}

/// Which decoder a source uses, with its settings.
#[derive(Debug, Clone)]
pub enum Decoder {
    /// rsyslog file formats.
    Syslog(syslog::SyslogDecoder),
    /// The line as it is.
    Raw,
    /// One JSON object per line.
    Json,
    /// PostgreSQL stderr, csvlog or jsonlog.
    Postgres(postgres::PostgresDecoder),
}

impl Decoder {
    /// Decode one line. `now` anchors the year of traditional syslog stamps.
    pub fn decode(&self, text: &str, now: Timestamp) -> Decoded {
        match self {
            Decoder::Syslog(d) => d.decode(text, now),
            Decoder::Raw => raw::decode(text),
            Decoder::Json => json::decode(text),
            Decoder::Postgres(d) => d.decode(text),
        }
    }

    /// The decoder a source's settings ask for; `tz` is the source's zone. Errors name the
    /// source and key.
    pub fn for_source(
        source: &crate::config::SourceConfig,
        tz: &TimeZone,
    ) -> Result<Decoder, String> {
        use crate::config::DecodeKind;
        Ok(match source.decode {
            DecodeKind::Syslog => Decoder::Syslog(syslog::SyslogDecoder::new(tz.clone())),
            DecodeKind::Raw => Decoder::Raw,
            DecodeKind::Json => Decoder::Json,
            DecodeKind::Postgres => Decoder::Postgres(
                postgres::PostgresDecoder::stderr(
                    source
                        .log_line_prefix
                        .as_deref()
                        .unwrap_or(postgres::DEFAULT_LOG_LINE_PREFIX),
                    tz.clone(),
                )
                .map_err(|e| format!("sources.{}.log_line_prefix: {e}", source.name))?,
            ),
            DecodeKind::PostgresCsv => {
                Decoder::Postgres(postgres::PostgresDecoder::csv(tz.clone()))
            }
            DecodeKind::PostgresJson => {
                Decoder::Postgres(postgres::PostgresDecoder::json(tz.clone()))
            }
        })
    }
}

/// `v` in decimal, zero-padded to `width` digits (`v` must fit in them).
fn push_digits(out: &mut String, v: u32, width: usize) {
    let mut buf = [b'0'; 10];
    let mut v = v;
    let mut i = buf.len();
    while v > 0 && i > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let start = (buf.len() - width).min(i);
    for &b in &buf[start..] {
        out.push(char::from(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_instants_equal_the_fmt_path() {
        let mut rng = fastrand::Rng::with_seed(7);
        let nanos = [0, 5_000_000, 172_367_000, 123_456_789, 999_999_999, 1];
        for i in 0..20_000 {
            let secs = rng.i64(-62_135_596_800..=253_402_300_799);
            let ns = nanos[i % nanos.len()];
            let Ok(ts) = Timestamp::new(secs, ns) else {
                continue;
            };
            let off = rng.i32(-14 * 3600..=14 * 3600) / 60 * 60 + if i % 7 == 0 { 17 } else { 0 };
            let Ok(offset) = Offset::from_seconds(off) else {
                continue;
            };
            let st = Stamp { ts, offset };
            assert_eq!(st.to_instant(), st.instant_by_fmt(), "{secs} {ns} {off}");
        }
        let st = Stamp {
            ts: Timestamp::new(1_764_084_164, 172_367_000).unwrap(),
            offset: Offset::UTC,
        };
        assert_eq!(st.to_instant(), "2025-11-25T15:22:44.172367+00:00");
    }

    #[test]
    fn instants_outside_fhirs_offset_range_are_written_in_utc() {
        let ts: Timestamp = "2026-11-25T15:22:44Z".parse().unwrap();
        let at = |secs: i32| {
            Stamp {
                ts,
                offset: Offset::from_seconds(secs).unwrap(),
            }
            .to_instant()
        };
        assert_eq!(at(3600), "2026-11-25T16:22:44+01:00");
        assert_eq!(at(-14 * 3600), "2026-11-25T01:22:44-14:00");
        // +20:00 (regression from the fuzz target `parse`) and an offset with seconds (which
        // the format cannot hold, so it named another instant) keep the instant in UTC.
        assert_eq!(at(20 * 3600), "2026-11-25T15:22:44+00:00");
        assert_eq!(at(3630), "2026-11-25T15:22:44+00:00");
    }

    #[test]
    fn only_years_0001_to_9999_fit_fhir() {
        let stamp = |y: i16, m: i8, d: i8| Stamp {
            ts: jiff::tz::Offset::UTC
                .to_timestamp(jiff::civil::date(y, m, d).at(15, 25, 33, 0))
                .unwrap(),
            offset: Offset::UTC,
        };
        assert!(stamp(1, 1, 1).fits_fhir());
        assert!(stamp(9999, 12, 30).fits_fhir());
        assert!(!stamp(0, 12, 31).fits_fhir());
        assert!(!stamp(-26, 11, 25).fits_fhir());
    }
}

//! PostgreSQL server logs in their three destinations, decoded to one shape so one preset
//! serves all three:
//!
//! * `postgres` — stderr / `logging_collector` files: `log_line_prefix` (a source setting,
//!   default Debian's `%m [%p] %q%u@%d `) is translated to a regex; the text after the prefix
//!   is `SEVERITY:  message`.
//! * `postgres_csv` — csvlog records (23 to 26 columns, PostgreSQL 12–17).
//! * `postgres_json` — jsonlog objects (PostgreSQL 15+).
//!
//! Out comes a [`Decoded`] whose `message` is PostgreSQL's message text (without prefix or
//! severity), whose `time` is the record's time, and whose `json` holds the record under
//! jsonlog's key names (`timestamp`, `user`, `dbname`, `pid`, `remote_host`, `remote_port`,
//! `session_id`, `error_severity`, `message`, `detail`, `application_name`, …; csvlog's
//! `connection_from` is split into `remote_host`/`remote_port` at its last colon). Values that
//! name no one are left out: `[unknown]` user/database of the stderr prefix and the
//! `[local]` (Unix socket) host.
//!
//! A pgaudit message (`AUDIT: <type>,<statement id>,<substatement id>,<class>,<command>,
//! <object type>,<object name>,<statement>,<parameter>[,<rows>]`, itself CSV) is split into
//! `audit.audit_type`, `audit.statement_id`, `audit.substatement_id`, `audit.class`,
//! `audit.command`, `audit.object_type`, `audit.object_name`, `audit.statement`,
//! `audit.parameter`, `audit.rows`, with CSV quoting removed.
//!
//! Times: PostgreSQL writes `2026-11-25 16:21:15.414 CET`. Zone abbreviations are ambiguous
//! (and jiff refuses to read them), so the abbreviation is ignored and the wall time is read
//! in the source's `timezone`, which must therefore equal PostgreSQL's `log_timezone`.
//! `UTC`/`GMT` and numeric offsets (`+03`, `-0330`) are honoured as written.

use super::Decoded;
use crate::decode::Stamp;
use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};
use regex::Regex;
use serde_json::{Map, Value};

/// Debian's (and PostgreSQL's packaged) default `log_line_prefix`.
pub const DEFAULT_LOG_LINE_PREFIX: &str = "%m [%p] %q%u@%d ";

/// csvlog's columns in order (PostgreSQL 15), as jsonlog key names.
const CSV_KEYS: [&str; 26] = [
    "timestamp",
    "user",
    "dbname",
    "pid",
    "connection_from",
    "session_id",
    "line_num",
    "ps",
    "session_start",
    "vxid",
    "txid",
    "error_severity",
    "state_code",
    "message",
    "detail",
    "hint",
    "internal_query",
    "internal_position",
    "context",
    "statement",
    "cursor_position",
    "location",
    "application_name",
    "backend_type",
    "leader_pid",
    "query_id",
];

/// Which destination a source reads.
#[derive(Debug, Clone)]
pub enum PgFormat {
    /// stderr with the prefix translated to this regex.
    Stderr(Regex),
    /// csvlog.
    Csv,
    /// jsonlog.
    Json,
}

/// A PostgreSQL log decoder.
#[derive(Debug, Clone)]
pub struct PostgresDecoder {
    format: PgFormat,
    tz: TimeZone,
}

impl PostgresDecoder {
    /// stderr format with this `log_line_prefix`; errors name the unsupported escape.
    pub fn stderr(log_line_prefix: &str, tz: TimeZone) -> Result<PostgresDecoder, String> {
        let re = prefix_regex(log_line_prefix)?;
        let re =
            Regex::new(&re).map_err(|e| format!("log_line_prefix {log_line_prefix:?}: {e}"))?;
        Ok(PostgresDecoder {
            format: PgFormat::Stderr(re),
            tz,
        })
    }

    /// csvlog.
    pub fn csv(tz: TimeZone) -> PostgresDecoder {
        PostgresDecoder {
            format: PgFormat::Csv,
            tz,
        }
    }

    /// jsonlog.
    pub fn json(tz: TimeZone) -> PostgresDecoder {
        PostgresDecoder {
            format: PgFormat::Json,
            tz,
        }
    }

    /// Decode one record (possibly spanning lines, see [`super::multiline`]).
    pub fn decode(&self, text: &str) -> Decoded {
        let obj = match &self.format {
            PgFormat::Stderr(re) => stderr_object(re, text),
            PgFormat::Csv => csv_object(text),
            PgFormat::Json => super::json::decode(text).json,
        };
        let Some(mut obj) = obj else {
            return Decoded {
                message: text.to_owned(),
                malformed: true,
                ..Decoded::default()
            };
        };
        normalise(&mut obj);
        let message = match obj.get("message") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        if let Some(rest) = message.strip_prefix("AUDIT: ")
            && let Some(audit) = audit_object(rest)
        {
            obj.insert("audit".into(), Value::Object(audit));
        }
        let time = match obj.get("timestamp") {
            Some(Value::String(s)) => parse_pg_time(s, &self.tz),
            _ => None,
        }
        .or_else(|| match obj.get("timestamp_epoch") {
            Some(Value::String(s)) => parse_epoch(s, &self.tz),
            _ => None,
        });
        let pid = obj.get("pid").map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        Decoded {
            time,
            pid,
            program: Some("postgres".into()),
            message,
            json: Some(obj),
            ..Decoded::default()
        }
    }
}

/// Leave out values that name no one; split csvlog's `connection_from`.
fn normalise(obj: &mut Map<String, Value>) {
    if let Some(Value::String(from)) = obj.remove("connection_from") {
        match from.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => {
                obj.insert("remote_host".into(), Value::String(host.to_owned()));
                obj.insert("remote_port".into(), Value::String(port.to_owned()));
            }
            _ => {
                obj.insert("remote_host".into(), Value::String(from));
            }
        }
    }
    for (key, nobody) in [
        ("user", "[unknown]"),
        ("dbname", "[unknown]"),
        ("remote_host", "[local]"),
    ] {
        if matches!(obj.get(key), Some(Value::String(s)) if s == nobody || s.is_empty()) {
            obj.remove(key);
        }
    }
}

fn stderr_object(re: &Regex, text: &str) -> Option<Map<String, Value>> {
    let caps = re.captures(text)?;
    let mut obj = Map::new();
    for name in re.capture_names().flatten() {
        if let Some(m) = caps.name(name)
            && !m.as_str().is_empty()
        {
            obj.insert(name.to_owned(), Value::String(m.as_str().to_owned()));
        }
    }
    Some(obj)
}

fn csv_object(text: &str) -> Option<Map<String, Value>> {
    let fields = split_csv(text)?;
    if fields.len() < 23 || fields.len() > CSV_KEYS.len() {
        return None;
    }
    let mut obj = Map::new();
    for (key, value) in CSV_KEYS.iter().zip(fields) {
        if !value.is_empty() {
            obj.insert((*key).to_owned(), Value::String(value));
        }
    }
    Some(obj)
}

fn audit_object(payload: &str) -> Option<Map<String, Value>> {
    const KEYS: [&str; 10] = [
        "audit_type",
        "statement_id",
        "substatement_id",
        "class",
        "command",
        "object_type",
        "object_name",
        "statement",
        "parameter",
        "rows",
    ];
    let fields = split_csv(payload)?;
    if fields.len() < 9 || fields.len() > KEYS.len() {
        return None;
    }
    Some(
        KEYS.iter()
            .zip(fields)
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| ((*k).to_owned(), Value::String(v)))
            .collect(),
    )
}

/// Split one CSV record (RFC 4180: fields quoted when they hold `,` `"` or newlines, inner
/// quotes doubled). None when a quote is left open.
pub fn split_csv(s: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut at_start = true;
    loop {
        if at_start && chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        cur.push('"');
                    }
                    '"' => break,
                    c => cur.push(c),
                }
            }
            at_start = false;
            continue;
        }
        match chars.next() {
            None => {
                fields.push(cur);
                return Some(fields);
            }
            Some(',') => {
                fields.push(std::mem::take(&mut cur));
                at_start = true;
            }
            Some(c) => {
                cur.push(c);
                at_start = false;
            }
        }
    }
}

/// Translate a `log_line_prefix` into a regex for a whole stderr record. Escapes after `%q`
/// become optional (PostgreSQL leaves them out for processes without a session).
pub fn prefix_regex(prefix: &str) -> Result<String, String> {
    let ts = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d";
    let zone = r"(?: (?:[A-Za-z][A-Za-z0-9_/+-]*|[+-]\d\d(?::?\d\d)?))?";
    let mut out = String::from("(?s)^");
    let mut used: Vec<&str> = Vec::new();
    let mut optional = false;
    let mut chars = prefix.chars().peekable();
    let group = |name: &'static str, re: &str, used: &mut Vec<&'static str>| -> String {
        if used.contains(&name) {
            format!("(?:{re})")
        } else {
            used.push(name);
            format!("(?P<{name}>{re})")
        }
    };
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push_str(&regex::escape(&c.to_string()));
            continue;
        }
        // Padding (`%-10u`) changes widths only; values are still separated by the literals.
        while chars
            .peek()
            .is_some_and(|c| *c == '-' || c.is_ascii_digit())
        {
            chars.next();
        }
        let Some(e) = chars.next() else {
            return Err(format!("log_line_prefix {prefix:?}: ends with a lone %"));
        };
        let piece = match e {
            'm' => group("timestamp", &format!(r"{ts}\.\d+{zone}"), &mut used),
            't' => group("timestamp", &format!("{ts}{zone}"), &mut used),
            'n' => group("timestamp_epoch", r"\d+(?:\.\d+)?", &mut used),
            's' => group("session_start", &format!("{ts}{zone}"), &mut used),
            'p' => group("pid", r"\d+", &mut used),
            'P' => group("leader_pid", r"\d*", &mut used),
            'u' => group("user", r"\S*?", &mut used),
            'd' => group("dbname", r"\S*?", &mut used),
            'a' => group("application_name", r".*?", &mut used),
            'b' => group("backend_type", r".*?", &mut used),
            'h' => group("remote_host", r"\S*?", &mut used),
            'r' => {
                let host = group("remote_host", r"[^\s(]*?", &mut used);
                let port = group("remote_port", r"\d+", &mut used);
                format!(r"{host}(?:\({port}\))?")
            }
            'c' => group("session_id", r"[0-9a-f]+\.[0-9a-f]+", &mut used),
            'l' => group("line_num", r"\d+", &mut used),
            'i' => group("ps", r".*?", &mut used),
            'e' => group("state_code", r"[0-9A-Z]{5}", &mut used),
            'v' => group("vxid", r"\S*?", &mut used),
            'x' => group("txid", r"\d+", &mut used),
            'Q' => group("query_id", r"-?\d+", &mut used),
            '%' => "%".to_owned(),
            'q' => {
                if !optional {
                    optional = true;
                    out.push_str("(?:");
                }
                continue;
            }
            other => {
                return Err(format!(
                    "log_line_prefix {prefix:?}: unsupported escape %{other}"
                ));
            }
        };
        out.push_str(&piece);
    }
    if optional {
        out.push_str(")?");
    }
    out.push_str(
        r"(?P<error_severity>LOG|FATAL|PANIC|ERROR|WARNING|NOTICE|INFO|DEBUG[1-5]?|DETAIL|HINT|QUERY|CONTEXT|STATEMENT|LOCATION):  (?P<message>.*)$",
    );
    Ok(out)
}

/// Read PostgreSQL's `YYYY-MM-DD HH:MM:SS[.fff][ ZONE]` (see the module doc for the zone).
pub fn parse_pg_time(s: &str, tz: &TimeZone) -> Option<Stamp> {
    let s = s.trim();
    let (wall, zone) = match s.get(19..) {
        Some(rest) => {
            let frac_len = match rest.strip_prefix('.') {
                Some(frac) => 1 + frac.bytes().take_while(u8::is_ascii_digit).count(),
                None => 0,
            };
            (&s[..19 + frac_len], rest[frac_len..].trim())
        }
        None => return None,
    };
    let dt = jiff::fmt::strtime::parse("%Y-%m-%d %H:%M:%S%.f", wall)
        .ok()?
        .to_datetime()
        .ok()?;
    if zone.eq_ignore_ascii_case("UTC") || zone.eq_ignore_ascii_case("GMT") || zone == "Z" {
        let ts = Offset::UTC.to_timestamp(dt).ok()?;
        return Some(Stamp {
            ts,
            offset: Offset::UTC,
        });
    }
    if let Some(offset) = numeric_offset(zone) {
        let ts = offset.to_timestamp(dt).ok()?;
        return Some(Stamp { ts, offset });
    }
    let ts = tz.to_ambiguous_timestamp(dt).earlier().ok()?;
    Some(Stamp::in_zone(ts, tz))
}

/// `+03`, `-0330`, `+05:30` as an offset.
fn numeric_offset(z: &str) -> Option<Offset> {
    let sign = match z.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = z[1..].chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !(digits.len() == 2 || digits.len() == 4) {
        return None;
    }
    let h: i32 = digits[..2].parse().ok()?;
    let m: i32 = match &digits[2..] {
        "" => 0,
        mm => mm.parse().ok()?,
    };
    Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()
}

fn parse_epoch(s: &str, tz: &TimeZone) -> Option<Stamp> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i32 = 0;
    for (k, b) in frac.bytes().take(9).enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        nanos += i32::from(b - b'0') * 10i32.pow(8 - k as u32);
    }
    Timestamp::new(secs, nanos)
        .ok()
        .map(|ts| Stamp::in_zone(ts, tz))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn s<'a>(d: &'a Decoded, key: &str) -> Option<&'a str> {
        d.json.as_ref()?.get(key)?.as_str()
    }

    fn a<'a>(d: &'a Decoded, key: &str) -> Option<&'a str> {
        d.json.as_ref()?.get("audit")?.get(key)?.as_str()
    }

    #[test]
    fn debian_prefix_stderr_line_decodes() {
        let d = PostgresDecoder::stderr(DEFAULT_LOG_LINE_PREFIX, berlin()).unwrap();
        let x = d.decode("2026-11-25 16:21:15.423 CET [20012] fhir_app@fhir LOG:  connection authorized: user=fhir_app database=fhir");
        assert!(!x.malformed);
        assert_eq!(
            x.message,
            "connection authorized: user=fhir_app database=fhir"
        );
        assert_eq!(s(&x, "user"), Some("fhir_app"));
        assert_eq!(s(&x, "dbname"), Some("fhir"));
        assert_eq!(s(&x, "error_severity"), Some("LOG"));
        assert_eq!(x.pid.as_deref(), Some("20012"));
        assert_eq!(
            x.time.unwrap().to_instant(),
            "2026-11-25T16:21:15.423+01:00"
        );
        // Before authentication, and for processes without a session (%q).
        let x = d.decode("2026-11-25 16:21:15.414 CET [20012] [unknown]@[unknown] LOG:  connection received: host=127.0.0.1 port=44976");
        assert_eq!(s(&x, "user"), None);
        let x = d.decode("2026-11-25 16:21:11.758 CET [19587] LOG:  starting PostgreSQL 15.18");
        assert_eq!(x.message, "starting PostgreSQL 15.18");
        assert!(!x.malformed);
        assert!(d.decode("not a postgres line").malformed);
    }

    #[test]
    fn other_prefixes_translate() {
        // AWS RDS style.
        let d = PostgresDecoder::stderr("%t:%r:%u@%d:[%p]:", TimeZone::UTC).unwrap();
        let x = d.decode("2020-11-13 08:07:36 UTC:10.0.1.123(50322):audit_user1@auditdb:[24298]:LOG:  AUDIT: SESSION,2,1,READ,SELECT,TABLE,public.t1,select count(*) from t1;,<none>");
        assert_eq!(s(&x, "remote_host"), Some("10.0.1.123"));
        assert_eq!(s(&x, "remote_port"), Some("50322"));
        assert_eq!(s(&x, "user"), Some("audit_user1"));
        assert_eq!(a(&x, "object_name"), Some("public.t1"));
        assert_eq!(x.time.unwrap().to_instant(), "2020-11-13T08:07:36+00:00");
        let d = PostgresDecoder::stderr("%m [%p] %q%u@%d %h ", berlin()).unwrap();
        let x = d.decode("2026-11-25 16:21:15.423 CET [20012] fhir_app@fhir ::1 LOG:  x");
        assert_eq!(s(&x, "remote_host"), Some("::1"));
        assert!(PostgresDecoder::stderr("%m %Z", berlin()).is_err());
        assert!(PostgresDecoder::stderr("%m %", berlin()).is_err());
    }

    #[test]
    fn audit_payload_is_unquoted() {
        let d = PostgresDecoder::stderr(DEFAULT_LOG_LINE_PREFIX, berlin()).unwrap();
        let x = d.decode("2026-11-25 16:21:15.471 CET [20012] fhir_app@fhir LOG:  AUDIT: SESSION,8,1,WRITE,UPDATE,TABLE,public.patient,\"PREPARE upd(text, text) AS UPDATE patient SET family = $2 WHERE id = $1;\",\"123,\"\"O'Brien, \"\"\"\"Jr\"\"\"\"\"\"\"");
        assert_eq!(a(&x, "class"), Some("WRITE"));
        assert_eq!(a(&x, "command"), Some("UPDATE"));
        assert_eq!(
            a(&x, "statement"),
            Some("PREPARE upd(text, text) AS UPDATE patient SET family = $2 WHERE id = $1;")
        );
        assert_eq!(a(&x, "parameter"), Some("123,\"O'Brien, \"\"Jr\"\"\""));
        let x = d.decode("2026-11-25 16:21:16.472 CET [20146] postgres@fhir LOG:  AUDIT: SESSION,2,1,ROLE,GRANT,TABLE,,ALTER ROLE x; GRANT SELECT ON patient TO PUBLIC;,<none>");
        assert_eq!(a(&x, "object_name"), None);
        assert_eq!(a(&x, "object_type"), Some("TABLE"));
    }

    #[test]
    fn csvlog_record_with_newlines_decodes_like_stderr() {
        let rec = "2026-11-25 16:21:15.468 CET,\"fhir_app\",\"fhir\",20012,\"::1:44976\",6b06fceb.4e2c,13,\"SELECT\",2026-11-25 16:21:15 CET,3/19,0,LOG,00000,\"AUDIT: SESSION,6,1,READ,SELECT,TABLE,public.patient,\"\"SELECT p.family\n  FROM patient p\"\",<none>\",,,,,,,,,\"fhir-server\",\"client backend\",,0";
        let x = PostgresDecoder::csv(berlin()).decode(rec);
        assert!(!x.malformed);
        assert_eq!(s(&x, "remote_host"), Some("::1"));
        assert_eq!(s(&x, "remote_port"), Some("44976"));
        assert_eq!(s(&x, "application_name"), Some("fhir-server"));
        assert_eq!(
            a(&x, "statement"),
            Some("SELECT p.family\n  FROM patient p")
        );
        assert_eq!(
            x.time.unwrap().to_instant(),
            "2026-11-25T16:21:15.468+01:00"
        );
        assert!(PostgresDecoder::csv(berlin()).decode("a,b,c").malformed);
        assert!(PostgresDecoder::csv(berlin()).decode("\"open").malformed);
    }

    #[test]
    fn jsonlog_local_host_is_left_out() {
        let x = PostgresDecoder::json(berlin()).decode(r#"{"timestamp":"2026-11-25 16:21:16.457 CET","user":"postgres","dbname":"fhir","pid":20146,"remote_host":"[local]","error_severity":"LOG","message":"connection authorized: user=postgres database=fhir"}"#);
        assert_eq!(s(&x, "remote_host"), None);
        assert_eq!(x.pid.as_deref(), Some("20146"));
        assert_eq!(
            x.message,
            "connection authorized: user=postgres database=fhir"
        );
    }

    #[test]
    fn zones_utc_and_numeric_offsets_are_honoured() {
        let tz = berlin();
        let t = |s: &str| parse_pg_time(s, &tz).unwrap().to_instant();
        assert_eq!(t("2026-07-01 10:00:00 CEST"), "2026-07-01T10:00:00+02:00");
        assert_eq!(
            t("2026-07-01 10:00:00.5 UTC"),
            "2026-07-01T10:00:00.500+00:00"
        );
        assert_eq!(t("2026-07-01 10:00:00 -03"), "2026-07-01T10:00:00-03:00");
        assert_eq!(t("2026-07-01 10:00:00 +0530"), "2026-07-01T10:00:00+05:30");
        assert_eq!(t("2026-07-01 10:00:00"), "2026-07-01T10:00:00+02:00");
        assert!(parse_pg_time("yesterday", &tz).is_none());
    }

    #[test]
    fn csv_split_handles_quotes_and_empty_fields() {
        assert_eq!(
            split_csv(r#"a,"b,c",,"d""e""#).unwrap(),
            ["a", "b,c", "", "d\"e"]
        );
        assert_eq!(split_csv("").unwrap(), [""]);
        assert!(split_csv(r#""x"#).is_none());
    }
}

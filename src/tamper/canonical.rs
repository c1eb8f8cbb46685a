//! Canonical event bytes: what a leaf hashes, recomputable from the copy an ARR stores.
//!
//! An ARR does not hand back the bytes the agent sent: it adds `meta.versionId` and
//! `meta.lastUpdated` (Medplum also `meta.author`, `meta.project`, `meta.compartment`), may
//! reorder keys or re-escape strings, and Medplum rewrites the event-id extension's
//! `urn:uuid:<id>` to `AuditEvent/<id>` (README, "Medplum findings"). The canonical bytes
//! undo exactly those changes and nothing else (docs/tamper.md, "Canonical event bytes"):
//!
//! 1. `meta` keeps only `profile`, `security` and `tag` (what the agent writes); an empty
//!    `meta` is dropped.
//! 2. A root `extension` whose `valueIdentifier.value` is `AuditEvent/<id>`, `<id>` being the
//!    event's own `id`, reads `urn:uuid:<id>` again.
//! 3. The result is serialized per RFC 8785 (JCS): no whitespace, object members sorted by
//!    the UTF-16 code units of their names, strings with the minimal JSON escapes, numbers
//!    as ECMAScript prints them.

use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Why an event has no canonical form.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an AuditEvent object.
    #[error("not an AuditEvent")]
    NotAuditEvent,
    /// A number JCS cannot represent (beyond the range of a double).
    #[error("number out of range")]
    Number,
    /// Malformed JSON text (at this byte).
    #[error("malformed JSON at byte {0}")]
    Syntax(usize),
    /// An object names a member twice (I-JSON, which JCS requires, forbids it).
    #[error("duplicate object member")]
    DuplicateKey,
}

/// The canonical bytes of one AuditEvent given as JSON text (any JSON: an ARR's copy).
pub fn canonical_bytes(json: &str) -> Result<Vec<u8>, CanonicalError> {
    let value: Value = serde_json::from_str(json)?;
    canonical_value(value)
}

/// [`canonical_bytes`] of an event the agent itself serialized, about six times cheaper:
/// its `meta` holds only what step 1 keeps and, without any `AuditEvent/` in it, step 2
/// changes nothing, so the canonical bytes are the JCS form of the text itself, made
/// without building a tree ([`jcs_text`]). Anything else takes the general path.
pub fn canonical_bytes_of_own(json: &str) -> Result<Vec<u8>, CanonicalError> {
    if memchr::memmem::find(json.as_bytes(), b"AuditEvent/").is_some()
        || !json.starts_with(r#"{"resourceType":"AuditEvent""#)
    {
        return canonical_bytes(json);
    }
    // Not compared with the reference per event in debug builds (it would cost ~200 µs an
    // event in the test suite); the tests compare the two on every IG example and edge case.
    jcs_text(json)
}

/// RFC 8785 form of any JSON text, straight from the text: scalars are copied (strings
/// without escapes and short integers verbatim, the rest re-encoded), object members are
/// canonicalized in place and then put in order.
pub fn jcs_text(json: &str) -> Result<Vec<u8>, CanonicalError> {
    let mut p = TextJcs {
        s: json,
        b: json.as_bytes(),
        at: 0,
        scratch: Vec::new(),
    };
    let mut out = Vec::with_capacity(json.len());
    p.ws();
    p.value(&mut out, 0)?;
    p.ws();
    if p.at != p.b.len() {
        return Err(CanonicalError::Syntax(p.at));
    }
    Ok(out)
}

/// Nesting deeper than this is refused (an AuditEvent is about 6 deep).
const MAX_DEPTH: usize = 64;

struct TextJcs<'a> {
    s: &'a str,
    b: &'a [u8],
    at: usize,
    scratch: Vec<u8>,
}

impl<'a> TextJcs<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.at) {
            self.at += 1;
        }
    }

    fn err<T>(&self) -> Result<T, CanonicalError> {
        Err(CanonicalError::Syntax(self.at))
    }

    fn eat(&mut self, c: u8) -> Result<(), CanonicalError> {
        if self.b.get(self.at) == Some(&c) {
            self.at += 1;
            Ok(())
        } else {
            self.err()
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
        if depth > MAX_DEPTH {
            return self.err();
        }
        match self.b.get(self.at) {
            Some(b'{') => self.object(out, depth),
            Some(b'[') => {
                self.at += 1;
                out.push(b'[');
                self.ws();
                if self.b.get(self.at) == Some(&b']') {
                    self.at += 1;
                    out.push(b']');
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.value(out, depth + 1)?;
                    self.ws();
                    match self.b.get(self.at) {
                        Some(b',') => {
                            self.at += 1;
                            out.push(b',');
                        }
                        Some(b']') => {
                            self.at += 1;
                            out.push(b']');
                            return Ok(());
                        }
                        _ => return self.err(),
                    }
                }
            }
            Some(b'"') => {
                let s = self.string()?;
                match s {
                    Str::Raw(r) => {
                        out.push(b'"');
                        out.extend_from_slice(r.as_bytes());
                        out.push(b'"');
                    }
                    Str::Decoded(d) => {
                        let mut t = String::new();
                        write_string(&mut t, &d);
                        out.extend_from_slice(t.as_bytes());
                    }
                }
                Ok(())
            }
            Some(b't') => self.literal(out, "true"),
            Some(b'f') => self.literal(out, "false"),
            Some(b'n') => self.literal(out, "null"),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            _ => self.err(),
        }
    }

    fn literal(&mut self, out: &mut Vec<u8>, word: &str) -> Result<(), CanonicalError> {
        if self.b[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            out.extend_from_slice(word.as_bytes());
            Ok(())
        } else {
            self.err()
        }
    }

    fn number(&mut self, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
        let start = self.at;
        let digits = |p: &mut Self| {
            let from = p.at;
            while let Some(b'0'..=b'9') = p.b.get(p.at) {
                p.at += 1;
            }
            p.at - from
        };
        if self.b.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let int_start = self.at;
        let n_int = digits(self);
        if n_int == 0 || (n_int > 1 && self.b[int_start] == b'0') {
            return self.err();
        }
        let mut plain = true;
        if self.b.get(self.at) == Some(&b'.') {
            self.at += 1;
            plain = false;
            if digits(self) == 0 {
                return self.err();
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.at) {
            self.at += 1;
            plain = false;
            if let Some(b'+' | b'-') = self.b.get(self.at) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return self.err();
            }
        }
        let text = &self.s[start..self.at];
        // Up to 15 digits an integer is exact as a double and prints as itself.
        if plain && n_int <= 15 && text != "-0" {
            out.extend_from_slice(text.as_bytes());
            return Ok(());
        }
        let f: f64 = text.parse().map_err(|_| CanonicalError::Number)?;
        let mut t = String::new();
        es6_number(&mut t, f)?;
        out.extend_from_slice(t.as_bytes());
        Ok(())
    }

    fn string(&mut self) -> Result<Str<'a>, CanonicalError> {
        self.eat(b'"')?;
        let start = self.at;
        let rest = &self.b[start..];
        let Some(stop) = memchr::memchr2(b'"', b'\\', rest) else {
            return self.err();
        };
        // Unescaped control characters are not allowed in JSON strings.
        if rest[..stop].iter().any(|c| *c < 0x20) {
            return self.err();
        }
        self.at = start + stop;
        if rest[stop] == b'"' {
            self.at += 1;
            return Ok(Str::Raw(&self.s[start..start + stop]));
        }
        // Escapes: decode the whole string.
        let mut d = String::from(&self.s[start..self.at]);
        loop {
            match self.b.get(self.at) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(Str::Decoded(d));
                }
                Some(b'\\') => {
                    self.at += 1;
                    let c = match self.b.get(self.at) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.at += 1;
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.b[self.at..].starts_with(b"\\u") {
                                    return self.err();
                                }
                                self.at += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err();
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            d.push(char::from_u32(code).ok_or(CanonicalError::Syntax(self.at))?);
                            continue;
                        }
                        _ => return self.err(),
                    };
                    d.push(c);
                    self.at += 1;
                }
                Some(c) if *c < 0x20 => return self.err(),
                Some(_) => {
                    let from = self.at;
                    while let Some(c) = self.b.get(self.at) {
                        if *c == b'"' || *c == b'\\' || *c < 0x20 {
                            break;
                        }
                        self.at += 1;
                    }
                    d.push_str(&self.s[from..self.at]);
                }
                None => return self.err(),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, CanonicalError> {
        let h = self
            .s
            .get(self.at..self.at + 4)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or(CanonicalError::Syntax(self.at))?;
        self.at += 4;
        Ok(h)
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
        self.at += 1;
        out.push(b'{');
        let base = out.len();
        // (name, start, end) of each member's canonical bytes in `out`.
        let mut members: Vec<(Str<'a>, usize, usize)> = Vec::new();
        self.ws();
        if self.b.get(self.at) == Some(&b'}') {
            self.at += 1;
            out.push(b'}');
            return Ok(());
        }
        loop {
            self.ws();
            if !members.is_empty() {
                out.push(b',');
            }
            let key_at = self.at;
            let key = self.string()?;
            let start = out.len();
            match &key {
                Str::Raw(_) => out.extend_from_slice(&self.b[key_at..self.at]),
                Str::Decoded(d) => {
                    let mut t = String::new();
                    write_string(&mut t, d);
                    out.extend_from_slice(t.as_bytes());
                }
            }
            self.ws();
            self.eat(b':')?;
            out.push(b':');
            self.ws();
            self.value(out, depth + 1)?;
            members.push((key, start, out.len()));
            self.ws();
            match self.b.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    break;
                }
                _ => return self.err(),
            }
        }
        let sorted = members
            .windows(2)
            .all(|w| key_cmp(&w[0].0, &w[1].0).is_lt());
        if !sorted {
            members.sort_by(|a, b| key_cmp(&a.0, &b.0));
            if members
                .windows(2)
                .any(|w| key_cmp(&w[0].0, &w[1].0).is_eq())
            {
                return Err(CanonicalError::DuplicateKey);
            }
            self.scratch.clear();
            self.scratch.extend_from_slice(&out[base..]);
            out.truncate(base);
            for (i, (_, s, e)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&self.scratch[s - base..e - base]);
            }
        }
        out.push(b'}');
        Ok(())
    }
}

/// A string as read: borrowed when it had no escapes.
enum Str<'a> {
    Raw(&'a str),
    Decoded(String),
}

impl Str<'_> {
    fn as_str(&self) -> &str {
        match self {
            Str::Raw(r) => r,
            Str::Decoded(d) => d,
        }
    }
}

/// RFC 8785 member order: by UTF-16 code units (byte order is the same for ASCII).
fn key_cmp(a: &Str<'_>, b: &Str<'_>) -> std::cmp::Ordering {
    let (a, b) = (a.as_str(), b.as_str());
    if a.is_ascii() && b.is_ascii() {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// [`canonical_bytes`] of an already parsed event.
pub fn canonical_value(mut value: Value) -> Result<Vec<u8>, CanonicalError> {
    let Some(obj) = value.as_object_mut() else {
        return Err(CanonicalError::NotAuditEvent);
    };
    if obj.get("resourceType").and_then(Value::as_str) != Some("AuditEvent") {
        return Err(CanonicalError::NotAuditEvent);
    }
    normalize(obj);
    let mut out = String::with_capacity(2048);
    write_jcs(&mut out, &value)?;
    Ok(out.into_bytes())
}

/// Steps 1 and 2 of the module doc.
fn normalize(obj: &mut Map<String, Value>) {
    if let Some(Value::Object(meta)) = obj.get_mut("meta") {
        meta.retain(|k, _| matches!(k.as_str(), "profile" | "security" | "tag"));
        if meta.is_empty() {
            obj.remove("meta");
        }
    }
    let Some(id) = obj.get("id").and_then(Value::as_str).map(str::to_owned) else {
        return;
    };
    let rewritten = format!("AuditEvent/{id}");
    if let Some(Value::Array(exts)) = obj.get_mut("extension") {
        for ext in exts {
            if let Some(v) = ext.pointer_mut("/valueIdentifier/value")
                && v.as_str() == Some(rewritten.as_str())
            {
                *v = Value::String(format!("urn:uuid:{id}"));
            }
        }
    }
}

/// RFC 8785 serialization of `v` appended to `out`.
pub fn write_jcs(out: &mut String, v: &Value) -> Result<(), CanonicalError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            // JCS numbers are doubles: integers print as themselves only while exact.
            const EXACT: u64 = 1 << 53;
            if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= EXACT) {
                let _ = write!(out, "{i}");
            } else {
                es6_number(out, n.as_f64().ok_or(CanonicalError::Number)?)?;
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jcs(out, x)?;
            }
            out.push(']');
        }
        Value::Object(o) => {
            let mut members: Vec<(&String, &Value)> = o.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, x)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_jcs(out, x)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// A JSON string with JCS's escapes: `\"`, `\\`, `\b \f \n \r \t`, other controls as
/// `\u00xx` (lower-case hex), everything else as is.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(esc);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// ECMAScript's Number::toString for a finite double (RFC 8785 §3.2.2.3): the shortest
/// round-tripping digits, in plain notation for exponents -7 < e < 21, else `d.ddde±x`.
fn es6_number(out: &mut String, f: f64) -> Result<(), CanonicalError> {
    if !f.is_finite() {
        return Err(CanonicalError::Number);
    }
    if f == 0.0 {
        out.push('0');
        return Ok(());
    }
    if f < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` prints the shortest round-tripping digits: "d.ddde-x".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').ok_or(CanonicalError::Number)?;
    let exp: i32 = exp.parse().map_err(|_| CanonicalError::Number)?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exp + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{}", if n > 0 { "+" } else { "-" }, (n - 1).abs());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jcs(text: &str) -> String {
        let v: Value = serde_json::from_str(text).unwrap();
        let mut out = String::new();
        write_jcs(&mut out, &v).unwrap();
        out
    }

    #[test]
    fn rfc8785_sorting_and_escapes() {
        // RFC 8785 §3.2.3: sorting by UTF-16 code units (U+1F600 sorts before U+FB33 there,
        // unlike by code point).
        let text = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
        assert_eq!(
            jcs(text),
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
        assert_eq!(
            jcs(r#"{"b":[1,"\u0001\/\"\\x"],"a":{"d":true,"c":null}}"#),
            r#"{"a":{"c":null,"d":true},"b":[1,"\u0001/\"\\x"]}"#
        );
    }

    #[test]
    fn rfc8785_numbers() {
        // RFC 8785 Appendix B, the ones a double from JSON text can be.
        let cases = [
            ("0.0", "0"),
            ("-0.0", "0"),
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("9007199254740992.0", "9007199254740992"),
            ("295147905179352830000.0", "295147905179352830000"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1e-7"),
            // (RFC 8785 writes it 333333333.33333329; serde_json parses to the nearest
            // double only without its float_roundtrip feature, so the shortest form is used.)
            ("333333333.3333333", "333333333.3333333"),
            ("1.5", "1.5"),
            ("-12.25e1", "-122.5"),
        ];
        for (input, want) in cases {
            assert_eq!(jcs(input), want, "{input}");
        }
    }

    #[test]
    fn server_meta_and_rewritten_id_are_undone_and_nothing_else() {
        let sent = r#"{"resourceType":"AuditEvent","id":"7","meta":{"profile":["p"]},"extension":[{"url":"u","valueIdentifier":{"system":"urn:ietf:rfc:3986","value":"urn:uuid:7"}}],"recorded":"2025-01-01T00:00:00Z"}"#;
        let stored = r#"{"recorded":"2025-01-01T00:00:00Z","resourceType":"AuditEvent","meta":{"versionId":"9","lastUpdated":"2025","author":{"reference":"x"},"profile":["p"]},"id":"7","extension":[{"valueIdentifier":{"value":"AuditEvent/7","system":"urn:ietf:rfc:3986"},"url":"u"}]}"#;
        let a = canonical_bytes(sent).unwrap();
        assert_eq!(a, canonical_bytes(stored).unwrap());
        // Another id's rewrite, a changed profile or a changed field is a different event.
        for altered in [
            stored.replace("AuditEvent/7", "AuditEvent/8"),
            stored.replace(r#"["p"]"#, r#"["q"]"#),
            stored.replace("2025-01-01", "2025-01-02"),
        ] {
            assert_ne!(a, canonical_bytes(&altered).unwrap());
        }
        let bare = r#"{"resourceType":"AuditEvent","meta":{"versionId":"1"}}"#;
        assert_eq!(
            canonical_bytes(bare).unwrap(),
            br#"{"resourceType":"AuditEvent"}"#
        );
        assert!(canonical_bytes(r#"{"resourceType":"Patient"}"#).is_err());
        assert!(canonical_bytes("[1]").is_err());
        assert!(canonical_bytes("{").is_err());
    }

    /// Every IG example (pretty-printed and compact) and hand-made edge cases: the text
    /// path gives the reference path's bytes.
    #[test]
    fn text_jcs_equals_the_reference_on_every_ig_example_and_edge_cases() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/balp/examples");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            let mut want = String::new();
            write_jcs(&mut want, &v).unwrap();
            assert_eq!(
                jcs_text(&text).unwrap(),
                want.as_bytes(),
                "{}",
                path.display()
            );
            let compact = serde_json::to_string(&v).unwrap();
            assert_eq!(jcs_text(&compact).unwrap(), want.as_bytes());
            if v["resourceType"] == "AuditEvent" {
                assert_eq!(
                    canonical_bytes_of_own(&compact).unwrap(),
                    canonical_bytes(&compact).unwrap()
                );
            }
            n += 1;
        }
        assert!(n > 20, "only {n} examples");
        for text in [
            r#" { "b" : [ ] , "a" : { } , "c":[1 , -0, 0.5e1, 1E2, 12345678901234567890, true,false,null] } "#,
            r#"{"\u0061":"\ud83d\ude00\n\/\u00e9\u001f","a\"":"x"}"#,
            r#"{"é":1,"z":2,"😀":3,"דּ":4}"#,
            r#"[[[["deep"]]]]"#,
            r#""just a string""#,
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            let mut want = String::new();
            write_jcs(&mut want, &v).unwrap();
            assert_eq!(
                String::from_utf8(jcs_text(text).unwrap()).unwrap(),
                want,
                "{text}"
            );
        }
        for bad in [
            "{",
            "[1,]",
            r#"{"a":1,"a":2}"#,
            r#""\ud800""#,
            "01",
            "1.",
            "tru",
            "{\"a\" 1}",
            "\"\u{1}\"",
            "[1] x",
        ] {
            assert!(jcs_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_agents_own_serializer_is_jcs_escaped_already() {
        // Strings survive a JCS round trip unchanged (same escapes as serde_json's).
        let s: String = (0u32..0x80).filter_map(char::from_u32).collect::<String>() + "é€😀";
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(jcs(&json), json);
    }
}

#[cfg(test)]
mod cost {
    /// Not an assertion: prints the cost per event (`cargo test --lib canonical_cost -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn canonical_cost() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/balp/examples/ex-auditPoke-SAML-Comp.json"
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let json = serde_json::to_string(&v).unwrap();
        let n = 20_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(crate::spool::leaves::event_leaf_hash(&json));
        }
        let per = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n / 10 {
            std::hint::black_box(super::canonical_bytes(&json).unwrap());
        }
        eprintln!("reference path {:?}", t.elapsed() / (n / 10));
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(crate::tamper::merkle::leaf_hash(json.as_bytes()));
        }
        eprintln!(
            "{} bytes: canonical+hash {:?}, hash only {:?}",
            json.len(),
            per,
            t.elapsed() / n
        );
    }
}

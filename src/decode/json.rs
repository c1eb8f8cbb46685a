//! `json` decoder: one JSON object per line in, [`Decoded`] with the parsed object out.
//!
//! Array-wrapped files (MySQL Enterprise Audit writes `[`, then each record followed by `,`,
//! and `]` only on close) are accepted one record per line: a leading `[` and a trailing `,`
//! or `]` are stripped before parsing. Anything that is not an object afterwards (including
//! the bare `[` / `]` lines) is passed on as a malformed message.
use super::Decoded;

/// Decode a JSON line.
pub fn decode(text: &str) -> Decoded {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut body = line.trim();
    if let Some(rest) = body.strip_prefix('[') {
        body = rest.trim_start();
    }
    if let Some(rest) = body.strip_suffix(']') {
        body = rest.trim_end();
    }
    if let Some(rest) = body.strip_suffix(',') {
        body = rest.trim_end();
    }
    let json = if body.starts_with('{') {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(body).ok()
    } else {
        None
    };
    Decoded {
        malformed: json.is_none(),
        json,
        message: line.to_owned(),
        ..Decoded::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_per_line() {
        let d = decode(r#"{"a":{"b":1},"s":"x"}"#);
        assert!(!d.malformed);
        assert_eq!(d.json.unwrap()["a"]["b"], 1);
    }

    #[test]
    fn array_element_lines_are_accepted() {
        for line in [
            r#"[{"a":1},"#,
            r#"{"a":1},"#,
            r#"{"a":1}]"#,
            r#" { "a": 1 } , "#,
        ] {
            let d = decode(line);
            assert!(!d.malformed, "{line}");
            assert_eq!(d.json.unwrap()["a"], 1);
            assert_eq!(d.message, line);
        }
    }

    #[test]
    fn non_objects_are_malformed() {
        for line in ["[", "]", "42", "\"x\"", "[1,2]", "{broken", ""] {
            let d = decode(line);
            assert!(d.malformed, "{line}");
            assert!(d.json.is_none());
            assert_eq!(d.message, line);
        }
    }

    #[test]
    fn nginx_json_corpus_decodes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/generated/nginx1.22-apache2.4-fhir/nginx-access-json.log"
        );
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.lines() {
            assert!(!decode(line).malformed, "{line}");
        }
    }
}

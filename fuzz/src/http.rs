//! HTTP response handling: the status classification, `Retry-After`, batch-response and
//! transaction-response bodies (entry statuses, OperationOutcome), the dead-letter document
//! built around any answer, and the OAuth2 token endpoint's answer.
//!
//! Input: bytes 0-1 the status, byte 2 the number of entries sent, byte 3 picks the Bundle
//! that was sent (valid or fuzzed JSON), then a length-prefixed `Retry-After` value, then
//! the body.
//!
//! Asserts: classification is total and follows the documented table (2xx accepted, 5xx but
//! 501 transient, …); `Retry-After` is never above its cap and every digit string is a wait;
//! a batch-response is used only with exactly one entry per entry sent, each status is a
//! real one (100-599) and handled as the table says; the dead letter is always valid JSON
//! keeping the status and at most 64 KiB of the answer; a token answer gives a Bearer
//! header only for a 2xx, and any lifetime it states schedules a renewal without panicking.

use crate::input::Input;
use balp_agent::deliver::backoff::MAX_RETRY_AFTER;
use balp_agent::deliver::http::fuzzing::handle;
use balp_agent::deliver::oauth2::{renew_at, token_answer};
use std::time::{Duration, Instant, SystemTime};

/// Tokens for the mutator.
pub const DICT: &[&str] = &[
    "{\"resourceType\":\"Bundle\",\"type\":\"batch-response\",\"entry\":[",
    "{\"response\":{\"status\":\"201 Created\"}}",
    "{\"response\":{\"status\":\"429\",\"outcome\":{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\",\"code\":\"throttled\"}]}}}",
    "\"transaction-response\"",
    "Sun, 06 Nov 1994 08:49:37 GMT",
    "{\"access_token\":\"t\",\"token_type\":\"Bearer\",\"expires_in\":",
    "18446744073709551615",
    "\"error\":\"invalid_client\"",
];

const BUNDLE: &str = r#"{"resourceType":"Bundle","type":"batch","entry":[{"resource":{"resourceType":"AuditEvent","id":"1"},"request":{"method":"POST","url":"AuditEvent"}}]}"#;

/// The harness.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let status = input.u16();
    let n = usize::from(input.u8() % 20);
    let broken_bundle;
    let bundle_json = if input.u8().is_multiple_of(4) {
        broken_bundle = input.text();
        broken_bundle.as_str()
    } else {
        BUNDLE
    };
    let retry_after = input.text();
    let body = input.rest();
    // A fixed clock: the same input always gives the same wait.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);

    let h = handle(status, &retry_after, body, n, bundle_json, now);
    let want = match status {
        200..=299 => Some("Accepted"),
        401 => Some("Unauthorized"),
        413 => Some("TooLarge"),
        408 | 429 => Some("Transient"),
        501 => Some("Config"),
        500..=599 => Some("Transient"),
        400..=499 => None, // rejected or a configuration error
        _ => Some("Config"),
    };
    if let Some(w) = want {
        assert_eq!(h.class, w, "status {status}");
    } else {
        assert!(matches!(h.class, "Rejected" | "Config"), "status {status}");
    }

    if let Some(w) = h.retry_after {
        assert!(
            w <= MAX_RETRY_AFTER,
            "Retry-After {retry_after:?} gave {w:?}"
        );
    }
    let trimmed = retry_after.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        assert!(
            h.retry_after.is_some(),
            "delta-seconds {retry_after:?} ignored"
        );
    }

    if let Some(entries) = &h.entries {
        assert_eq!(
            entries.len(),
            n,
            "batch-response used for another entry count"
        );
        for (s, handling, response) in entries {
            if let Some(s) = *s {
                assert!((100..=599).contains(&s), "entry status {s}");
            }
            let want = match s {
                Some(408 | 429 | 500..=599) => "Retry",
                Some(400..=499) => "Reject",
                _ => "Done",
            };
            assert_eq!(*handling, want, "entry status {s:?}");
            serde_json::from_str::<serde_json::Value>(response)
                .unwrap_or_else(|e| panic!("entry response is not JSON ({e}): {response}"));
        }
    }

    let letter: serde_json::Value = serde_json::from_str(&h.dead_letter)
        .unwrap_or_else(|e| panic!("dead letter is not JSON ({e}): {}", h.dead_letter));
    assert_eq!(letter["status"], status, "dead letter status");
    let kept = letter["response"]
        .as_str()
        .unwrap_or_else(|| panic!("no response kept"));
    assert!(
        kept.len() <= 64 * 1024,
        "dead letter keeps {} bytes",
        kept.len()
    );
    assert!(
        String::from_utf8_lossy(body).starts_with(kept),
        "dead letter response is not the start of the answer"
    );
    match serde_json::from_str::<serde_json::Value>(bundle_json) {
        Ok(b) => assert_eq!(letter["bundle"], b, "Bundle not embedded as sent"),
        Err(_) => assert_eq!(
            letter["bundle"].as_str(),
            Some(bundle_json),
            "broken Bundle not kept as a string"
        ),
    }

    if let Ok((header, expires_in)) = token_answer("https://idp.example.org/token", status, body) {
        assert!(
            (200..300).contains(&status),
            "token taken from HTTP {status}"
        );
        let v = header.to_str().unwrap_or_default();
        assert!(v.starts_with("Bearer ") && v.len() > 7, "header {v:?}");
        let issued = Instant::now();
        if let Some(at) = renew_at(issued, expires_in) {
            assert!(at >= issued);
        }
    }
}

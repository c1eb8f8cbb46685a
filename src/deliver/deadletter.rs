//! Dead letters: Bundles the ARR rejected for their content, kept with the rejection.
//!
//! In: the Bundle JSON, the HTTP status, the response body and the URL. Out: a file
//! `<state_dir>/dead-letter/<millis>-<bundle-id>.json` holding
//! `{"bundle": …, "status": N, "response": "…", "url": "…", "time": "…"}`, written atomically
//! (0600 in a 0700 directory) before the batch counts as settled, so nothing is dropped
//! silently. The directory is created on first use.

use super::DeliverError;
use super::directory::{SeqNamer, blocking, write_atomic};
use crate::decode::Stamp;
use std::path::{Path, PathBuf};

/// At most this much of the response body is kept.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The dead-letter area under `agent.state_dir`.
#[derive(Debug)]
pub struct DeadLetters {
    dir: PathBuf,
    names: Option<SeqNamer>,
}

impl DeadLetters {
    /// The area `<state_dir>/dead-letter` (not created until the first dead letter).
    pub fn new(state_dir: &Path) -> DeadLetters {
        DeadLetters {
            dir: state_dir.join("dead-letter"),
            names: None,
        }
    }

    /// The dead-letter directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write one dead letter durably; returns its path.
    pub async fn write(
        &mut self,
        bundle_id: &str,
        bundle_json: &str,
        status: u16,
        response: &[u8],
        url: &str,
    ) -> Result<PathBuf, DeliverError> {
        let names = match &mut self.names {
            Some(n) => n,
            None => {
                let dir = self.dir.clone();
                let namer = blocking(&self.dir, move || SeqNamer::open(&dir)).await?;
                self.names.insert(namer)
            }
        };
        let name = names.next_name(bundle_id);
        let dir = names.dir().to_path_buf();
        let doc = letter(
            bundle_json,
            status,
            response,
            url,
            &Stamp::now_utc().to_instant(),
        );
        blocking(&self.dir, move || write_atomic(&dir, &name, doc.as_bytes())).await
    }
}

/// The dead-letter document. The Bundle is embedded as JSON when it parses (it always should),
/// else as a string, so the file is valid JSON either way. "Parses" means as the readers of
/// dead letters (`spool dead-letters`, requeue, `arr check`) parse it, into a
/// `serde_json::Value`: `IgnoredAny` also took numbers like `1e999` that `Value` refuses, and
/// such a letter could not have been requeued (found by the fuzz target `http`).
pub(super) fn letter(
    bundle_json: &str,
    status: u16,
    response: &[u8],
    url: &str,
    time: &str,
) -> String {
    let bundle = match serde_json::from_str::<serde_json::Value>(bundle_json) {
        Ok(_) => bundle_json.to_owned(),
        Err(_) => json_string(bundle_json),
    };
    let response = String::from_utf8_lossy(response);
    let body = truncate(&response, MAX_RESPONSE_BYTES);
    format!(
        r#"{{"bundle":{bundle},"status":{status},"response":{},"url":{},"time":{}}}"#,
        json_string(body),
        json_string(url),
        json_string(time),
    )
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn dead_letter_holds_bundle_status_response_url_and_time() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dl = DeadLetters::new(tmp.path());
        let big = "é".repeat(MAX_RESPONSE_BYTES); // 2 bytes each: must be cut on a boundary
        let p = dl
            .write(
                "b1",
                r#"{"resourceType":"Bundle","id":"b1"}"#,
                422,
                big.as_bytes(),
                "https://arr.example/fhir",
            )
            .await
            .unwrap();
        assert!(p.starts_with(tmp.path().join("dead-letter")));
        assert!(
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("-b1.json")
        );
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dmeta = std::fs::metadata(dl.dir()).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["bundle"]["id"], "b1");
        assert_eq!(v["status"], 422);
        assert_eq!(v["url"], "https://arr.example/fhir");
        assert!(v["time"].as_str().unwrap().contains('T'));
        let resp = v["response"].as_str().unwrap();
        assert_eq!(resp.len(), MAX_RESPONSE_BYTES);
        assert!(resp.chars().all(|c| c == 'é'));
    }

    #[test]
    fn dead_letter_is_json_even_for_a_broken_bundle() {
        let doc = letter("{not json", 400, b"bad", "u", "t");
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["bundle"], "{not json");
        assert_eq!(v["response"], "bad");
        // Valid JSON grammar, but no number serde_json reads: kept as a string too.
        let doc = letter(r#"{"n":1e999}"#, 400, b"", "u", "t");
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["bundle"], r#"{"n":1e999}"#);
    }
}

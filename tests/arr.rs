//! The test ARR itself: scripting, recording, keep-alive, gzip, size bounds, stop on drop.

mod common;

use common::arr::{Arr, Reply};
use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::time::Duration;

fn post(stream: &mut StdStream, body: &[u8], extra: &str) {
    let req = format!(
        "POST /fhir HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(req.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
}

/// Read one response: (status, headers lowercased, body).
fn read_response(stream: &mut StdStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "connection closed early"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap().to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

fn bundle(ids: &[&str]) -> Vec<u8> {
    let entries: Vec<_> = ids
        .iter()
        .map(|id| serde_json::json!({"resource": {"resourceType": "AuditEvent", "id": id}}))
        .collect();
    serde_json::json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
        .to_string()
        .into_bytes()
}

#[test]
fn arr_scripts_replies_and_keeps_the_connection_alive() {
    let arr = Arr::start();
    assert!(arr.url().starts_with("http://127.0.0.1:"));
    arr.script([
        Reply::Status(503),
        Reply::StatusWithRetryAfter(429, "2".into()),
    ]);
    let mut s = StdStream::connect(arr.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    post(&mut s, &bundle(&["a"]), "");
    assert_eq!(read_response(&mut s).0, 503);
    post(&mut s, &bundle(&["a"]), "");
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 429);
    assert!(head.contains("retry-after: 2"), "{head}");
    post(&mut s, &bundle(&["a", "b"]), "X-Request-Id: r1\r\n");
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 200);
    assert!(body.contains("batch-response"), "{body}");
    assert!(arr.wait_for_events(2, Duration::from_secs(5)));
    let reqs = arr.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[2].header("X-Request-Id"), Some("r1"));
    assert_eq!(reqs[2].method, "POST");
    assert_eq!(reqs[2].path, "/fhir");
    assert_eq!(arr.accepted_event_ids(), vec!["a", "b"]);
    assert_eq!(arr.accepted_bundles().len(), 1);
}

#[test]
fn arr_gunzips_bodies_and_bounds_their_size() {
    let arr = Arr::start();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bundle(&["z"])).unwrap();
    let zipped = gz.finish().unwrap();
    let mut s = StdStream::connect(arr.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    post(&mut s, &zipped, "Content-Encoding: gzip\r\n");
    assert_eq!(read_response(&mut s).0, 200);
    assert_eq!(arr.accepted_event_ids(), vec!["z"]);
    assert_eq!(arr.requests()[0].raw_len, zipped.len());

    arr.set_max_body(10);
    post(&mut s, &bundle(&["too", "big"]), "");
    assert_eq!(read_response(&mut s).0, 413);
    assert_eq!(arr.requests()[1].reply, Reply::Status(413));
}

#[test]
fn arr_hang_and_close_and_stop_on_drop() {
    let arr = Arr::start();
    arr.script([Reply::CloseConnection, Reply::Hang]);
    let mut s = StdStream::connect(arr.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    post(&mut s, &bundle(&["a"]), "");
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed without a reply"
    );

    let mut h = StdStream::connect(arr.addr()).unwrap();
    h.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    post(&mut h, &bundle(&["b"]), "");
    let mut byte = [0u8; 1];
    assert!(h.read(&mut byte).is_err(), "hang sends nothing");
    assert!(arr.wait_for_requests(2, Duration::from_secs(5)));
    let addr = arr.addr();
    drop(arr);
    // The hung connection is closed and nobody listens any more.
    h.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(h.read(&mut byte).unwrap_or(0), 0);
    assert!(StdStream::connect(addr).is_err());
}

#[test]
fn arr_fail_ratio_and_default() {
    let arr = Arr::start();
    arr.fail_ratio(1.0);
    let mut s = StdStream::connect(arr.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    post(&mut s, &bundle(&["a"]), "");
    assert_eq!(read_response(&mut s).0, 503);
    arr.fail_ratio(0.0);
    arr.set_default(Reply::Status(400));
    post(&mut s, &bundle(&["a"]), "");
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 400);
    assert!(body.contains("OperationOutcome"));
    assert!(arr.accepted_event_ids().is_empty());
    assert!(!arr.wait_for_events(1, Duration::from_millis(50)));
}

#[test]
fn arr_content_dependent_replies_and_token_endpoint() {
    let arr = Arr::start();
    arr.set_default(Reply::RejectEntries(422, "poison".into()));
    arr.script([Reply::EntryStatuses(vec![201, 503])]);
    let mut s = StdStream::connect(arr.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    post(&mut s, &bundle(&["a", "b"]), "");
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "batch-response");
    assert_eq!(v["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(
        v["entry"][1]["response"]["status"],
        "503 Service Unavailable"
    );
    assert_eq!(
        v["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    post(&mut s, &bundle(&["c", "poison"]), "");
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 422);
    assert!(body.contains("poison"), "{body}");
    post(&mut s, &bundle(&["d"]), "");
    assert_eq!(read_response(&mut s).0, 200);
    assert_eq!(arr.accepted_event_ids(), vec!["a", "d"]);
    assert_eq!(arr.requests()[1].reply.status(), Some(422));

    let tokens = Arr::start();
    tokens.set_default(Reply::Token(60));
    let mut t = StdStream::connect(tokens.addr()).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for n in 1..=2 {
        post(&mut t, b"grant_type=client_credentials", "");
        let (status, _, body) = read_response(&mut t);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["access_token"], format!("tok-{n}"));
        assert_eq!(v["expires_in"], 60);
    }
}

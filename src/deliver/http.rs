//! HTTP output: POST each Bundle to the ARR and retry until it is settled.
//!
//! In: a [`Batch`]. Out: [`Delivery::Accepted`] after a 2xx, [`Delivery::DeadLettered`] after
//! the ARR rejected the content (the Bundle and the response are kept under
//! `<state_dir>/dead-letter/`), or [`Delivery::Interrupted`] when the stop signal comes while
//! waiting to retry. Nothing is ever dropped: every other outcome is retried forever.
//!
//! | outcome | action |
//! |---|---|
//! | 2xx | accepted |
//! | transport error, timeout, 408, 429, 5xx (not 501) | retry, exponential backoff with full jitter |
//! | 401 | re-read the credential files and retry at once; if it persists, as 403 |
//! | 403, 404, 405, 501, 3xx, TLS certificate rejected (either side) | configuration error: log, wait `max_backoff`, retry |
//! | 413 | split the Bundle in halves, each delivered in order; a single event is dead-lettered |
//! | other 4xx (400, 422, …) | dead letter |
//!
//! `Retry-After` (seconds or HTTP-date) is a floor on the next wait. The Bundle JSON and its
//! compressed body are built once per Bundle, so every retry sends the same bytes with the same
//! `X-Request-Id`. A request in flight is not cut by the stop signal (it is bounded by
//! `timeout`), so a final drain can finish; only the waits between attempts are.
//! Secrets (token, password, configured headers) never reach the logs.

use super::backoff::{Backoff, parse_retry_after};
use super::deadletter::{DeadLetters, MAX_RESPONSE_BYTES};
use super::{DeliverError, Delivery};
use crate::batch::Batch;
use crate::config::{AuthType, BundleType, Compression, OutputConfig};
use crate::decode::Stamp;
use crate::events;
use crate::metrics::Health;
use crate::shutdown::Shutdown;
use base64::Engine;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The FHIR JSON media type.
const FHIR_JSON: &str = "application/fhir+json";

/// Credentials, re-readable from their files.
#[derive(Debug)]
enum Auth {
    None,
    Bearer {
        token_file: PathBuf,
        value: HeaderValue,
    },
    Basic {
        username: String,
        password_file: PathBuf,
        value: HeaderValue,
    },
}

impl Auth {
    fn from_config(o: &OutputConfig) -> Result<Auth, DeliverError> {
        let a = &o.auth;
        match a.auth_type {
            AuthType::None => Ok(Auth::None),
            AuthType::Bearer => {
                let token_file = a.token_file.clone().ok_or_else(|| {
                    DeliverError::Setup("output.auth.token_file: required for bearer".into())
                })?;
                let value = bearer(&token_file).map_err(DeliverError::Setup)?;
                Ok(Auth::Bearer { token_file, value })
            }
            AuthType::Basic => {
                let username = a.username.clone().ok_or_else(|| {
                    DeliverError::Setup("output.auth.username: required for basic".into())
                })?;
                let password_file = a.password_file.clone().ok_or_else(|| {
                    DeliverError::Setup("output.auth.password_file: required for basic".into())
                })?;
                let value = basic(&username, &password_file).map_err(DeliverError::Setup)?;
                Ok(Auth::Basic {
                    username,
                    password_file,
                    value,
                })
            }
            AuthType::Oauth2 => Err(DeliverError::Setup(
                "output.auth.type = \"oauth2\" is not implemented yet; use bearer or basic".into(),
            )),
        }
    }

    /// Re-read the credential file; on failure keep the old value and say why.
    fn reload(&mut self) {
        let result = match self {
            Auth::None => return,
            Auth::Bearer { token_file, value } => bearer(token_file).map(|v| *value = v),
            Auth::Basic {
                username,
                password_file,
                value,
            } => basic(username, password_file).map(|v| *value = v),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "could not re-read ARR credentials; keeping the old ones");
        }
    }

    fn header(&self) -> Option<&HeaderValue> {
        match self {
            Auth::None => None,
            Auth::Bearer { value, .. } | Auth::Basic { value, .. } => Some(value),
        }
    }
}

fn read_secret(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn secret_header(value: String, path: &Path) -> Result<HeaderValue, String> {
    let mut v = HeaderValue::try_from(value)
        .map_err(|_| format!("{}: not usable in an HTTP header", path.display()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn bearer(token_file: &Path) -> Result<HeaderValue, String> {
    let token = read_secret(token_file)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("{}: the token file is empty", token_file.display()));
    }
    secret_header(format!("Bearer {token}"), token_file)
}

fn basic(username: &str, password_file: &Path) -> Result<HeaderValue, String> {
    let password = read_secret(password_file)?;
    // Only the line ending an editor adds is removed: spaces may belong to the password.
    let password = password.trim_end_matches(['\r', '\n']);
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    secret_header(format!("Basic {encoded}"), password_file)
}

/// What one Bundle came to.
enum Sent {
    Accepted,
    DeadLettered {
        status: u16,
        path: PathBuf,
    },
    /// 413 on a Bundle that can be split.
    TooLarge,
    Interrupted,
}

/// How a status is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Accepted,
    Transient,
    Unauthorized,
    Config,
    TooLarge,
    Rejected,
}

fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Accepted,
        401 => Class::Unauthorized,
        413 => Class::TooLarge,
        408 | 429 => Class::Transient,
        403 | 404 | 405 | 501 => Class::Config,
        400..=499 => Class::Rejected,
        500..=599 => Class::Transient,
        // 1xx/3xx (redirects are not followed: the Bundle goes to exactly `output.url`).
        _ => Class::Config,
    }
}

/// One attempt's result.
enum Attempt {
    Response {
        status: u16,
        retry_after: Option<Duration>,
        body: Vec<u8>,
    },
    Transport {
        reason: String,
        config: bool,
    },
}

/// POSTs Bundles to the ARR.
#[derive(Debug)]
pub struct HttpOutput {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as logged (password hidden).
    target: String,
    bundle_type: BundleType,
    gzip: bool,
    timeout: Duration,
    headers: HeaderMap,
    auth: Auth,
    initial_backoff: Duration,
    max_backoff: Duration,
    dead_letters: DeadLetters,
    /// Told about every attempt's outcome, for `/health`.
    health: Option<Arc<Health>>,
}

impl HttpOutput {
    /// Report delivery successes, failures and configuration-error pauses to `health`.
    pub fn set_health(&mut self, health: Arc<Health>) {
        self.health = Some(health);
    }

    fn report(&self, f: impl FnOnce(&Health)) {
        if let Some(h) = &self.health {
            f(h);
        }
    }

    /// Build the client from `[output]`; dead letters go under `state_dir`.
    pub fn new(o: &OutputConfig, state_dir: &Path) -> Result<HttpOutput, DeliverError> {
        let setup = DeliverError::Setup;
        let raw_url = o
            .url
            .as_deref()
            .ok_or_else(|| setup("output.url: required when output.type = \"http\"".into()))?;
        let url = reqwest::Url::parse(raw_url).map_err(|e| setup(format!("output.url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(setup(format!(
                "output.url: scheme must be http or https, not {}",
                url.scheme()
            )));
        }
        let mut target_url = url.clone();
        if target_url.password().is_some() {
            let _ = target_url.set_password(Some("***"));
        }
        let target = target_url.to_string();

        let mut headers = HeaderMap::new();
        for (name, value) in &o.headers {
            let n = HeaderName::try_from(name.as_str())
                .map_err(|_| setup(format!("output.headers.{name}: not a valid header name")))?;
            let mut v = HeaderValue::try_from(value.as_str())
                .map_err(|_| setup(format!("output.headers.{name}: not a valid header value")))?;
            // Configured headers often carry API keys.
            v.set_sensitive(true);
            headers.append(n, v);
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        headers.insert(header::ACCEPT, HeaderValue::from_static(FHIR_JSON));
        let gzip = o.compression == Compression::Gzip;
        if gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }

        let auth = Auth::from_config(o)?;
        let timeout = o.timeout.0;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("balp-agent/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout);
        let tls = &o.tls;
        if let Some(ca) = &tls.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| setup(format!("output.tls.ca_file: {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("output.tls.ca_file: {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(setup(format!(
                    "output.tls.ca_file: {}: no PEM certificate found",
                    ca.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert).map_err(|e| {
                    setup(format!(
                        "output.tls.client_cert_file: {}: {e}",
                        cert.display()
                    ))
                })?;
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| {
                    setup(format!(
                        "output.tls.client_key_file: {}: {e}",
                        key.display()
                    ))
                })?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    setup(format!(
                        "output.tls.client_cert_file/client_key_file: {}, {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(setup(
                    "output.tls: client_cert_file and client_key_file go together".into(),
                ));
            }
        }
        if tls.insecure_skip_verify {
            tracing::warn!(
                target = %target,
                "output.tls.insecure_skip_verify = true: the ARR's certificate is NOT verified; \
                 anyone on the path can read and alter audit records. Never use this in production."
            );
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let client = builder
            .build()
            .map_err(|e| setup(format!("output: HTTP client: {e}")))?;
        Ok(HttpOutput {
            client,
            url,
            target,
            bundle_type: o.bundle_type,
            gzip,
            timeout,
            headers,
            auth,
            initial_backoff: o.retry.initial_backoff.0,
            max_backoff: o.retry.max_backoff.0,
            dead_letters: DeadLetters::new(state_dir),
            health: None,
        })
    }

    /// Deliver one batch; a 413 splits it into halves delivered in order, each its own Bundle.
    /// The result is `DeadLettered` (the first one) if any part was dead-lettered.
    pub async fn deliver(
        &mut self,
        batch: &Batch,
        shutdown: &Shutdown,
    ) -> Result<Delivery, DeliverError> {
        let n = batch.events.len();
        if n == 0 {
            return Ok(Delivery::Accepted);
        }
        let mut result = Delivery::Accepted;
        // A stack of event ranges still to send; the top is the earliest.
        let mut pending: Vec<Range<usize>> = Vec::with_capacity(8);
        pending.push(0..n);
        while let Some(range) = pending.pop() {
            let part;
            let bundle = if range.len() == n {
                batch
            } else {
                part = Batch {
                    events: batch.events[range.clone()].to_vec(),
                    ..Batch::default()
                };
                &part
            };
            match self.send(bundle, range.len() > 1, shutdown).await? {
                Sent::Accepted => {}
                Sent::DeadLettered { status, path } => {
                    if result == Delivery::Accepted {
                        result = Delivery::DeadLettered { status, path };
                    }
                }
                Sent::TooLarge => {
                    let mid = range.start + range.len() / 2;
                    tracing::warn!(
                        target = %self.target,
                        events = range.len(),
                        "ARR answered 413; splitting the Bundle in halves"
                    );
                    pending.push(mid..range.end);
                    pending.push(range.start..mid);
                }
                Sent::Interrupted => return Ok(Delivery::Interrupted),
            }
        }
        Ok(result)
    }

    /// Send one Bundle until it is settled (or too large and `can_split`).
    async fn send(
        &mut self,
        batch: &Batch,
        can_split: bool,
        shutdown: &Shutdown,
    ) -> Result<Sent, DeliverError> {
        let id = batch.id().to_string();
        let events_n = batch.events.len();
        let json = batch.bundle_json(self.bundle_type, &Stamp::now_utc());
        let body = if self.gzip {
            gzip(json.as_bytes())
        } else {
            json.clone().into_bytes()
        };
        let mut backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        let mut reloaded_after_401 = false;
        let mut shutdown = shutdown.clone();
        loop {
            let (reason, wait, floor) = match self.attempt(&id, &body).await {
                Attempt::Response {
                    status,
                    retry_after,
                    body: response,
                } => match classify(status) {
                    Class::Accepted => {
                        self.report(Health::delivery_ok);
                        events::bundle_sent(&id, events_n, &self.target);
                        return Ok(Sent::Accepted);
                    }
                    Class::Transient => {
                        (format!("HTTP {status}"), backoff.next_delay(), retry_after)
                    }
                    Class::Unauthorized if !reloaded_after_401 => {
                        reloaded_after_401 = true;
                        self.auth.reload();
                        events::retry(&id, &self.target, "HTTP 401; credentials re-read", 0);
                        continue;
                    }
                    Class::Unauthorized | Class::Config => {
                        tracing::error!(
                            target = %self.target,
                            status,
                            "the ARR refuses the request: check output.url, credentials and \
                             permissions; the data is kept and retried"
                        );
                        // Pick up credentials fixed by the operator meanwhile.
                        self.auth.reload();
                        self.report(|h| h.set_paused(Some(format!("HTTP {status}"))));
                        (
                            format!("HTTP {status}: configuration error"),
                            self.max_backoff,
                            retry_after,
                        )
                    }
                    Class::TooLarge if can_split => return Ok(Sent::TooLarge),
                    Class::TooLarge | Class::Rejected => {
                        // The ARR works; it refused this content only.
                        self.report(Health::delivery_ok);
                        let path = self
                            .dead_letters
                            .write(&id, &json, status, &response, &self.target)
                            .await?;
                        events::dead_lettered(
                            &id,
                            events_n,
                            &self.target,
                            status,
                            &path.to_string_lossy(),
                        );
                        return Ok(Sent::DeadLettered { status, path });
                    }
                },
                Attempt::Transport { reason, config } => {
                    if config {
                        tracing::error!(
                            target = %self.target,
                            error = %reason,
                            "TLS certificate rejected (ours or the ARR's): check output.tls; \
                             the data is kept and retried"
                        );
                        self.report(|h| {
                            h.set_paused(Some(format!("TLS certificate rejected: {reason}")));
                        });
                        (reason, self.max_backoff, None)
                    } else {
                        (reason, backoff.next_delay(), None)
                    }
                }
            };
            let wait = floor.map_or(wait, |f| wait.max(f));
            self.report(|h| h.delivery_failed(&reason));
            events::retry(
                &id,
                &self.target,
                &reason,
                u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            );
            if shutdown.is_triggered() {
                return Ok(Sent::Interrupted);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return Ok(Sent::Interrupted),
            }
        }
    }

    /// One POST; the response body is read up to what a dead letter keeps.
    async fn attempt(&self, id: &str, body: &[u8]) -> Attempt {
        let mut headers = self.headers.clone();
        if let Ok(v) = HeaderValue::try_from(id) {
            headers.insert(HeaderName::from_static("x-request-id"), v);
        }
        if let Some(v) = self.auth.header() {
            headers.insert(header::AUTHORIZATION, v.clone());
        }
        let sent = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .timeout(self.timeout)
            .body(body.to_vec())
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return transport(e, self.timeout),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let mut response = Vec::new();
        // Reading the body lets the connection be reused; a failure here does not change
        // what the status said.
        while let Ok(Some(chunk)) = resp.chunk().await {
            let room = MAX_RESPONSE_BYTES.saturating_sub(response.len());
            response.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if response.len() >= MAX_RESPONSE_BYTES {
                break;
            }
        }
        Attempt::Response {
            status,
            retry_after,
            body: response,
        }
    }
}

/// Describe a transport error without the URL (it is logged separately, password hidden).
fn transport(e: reqwest::Error, timeout: Duration) -> Attempt {
    if e.is_timeout() {
        return Attempt::Transport {
            reason: format!("no answer within {timeout:?}"),
            config: false,
        };
    }
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    let config = tls_config_error(&reason);
    Attempt::Transport { reason, config }
}

/// A TLS failure that will not heal by itself, so it is paced like a configuration error:
/// we rejected the ARR's certificate (rustls: "invalid peer certificate: …"), or the ARR
/// rejected ours or its absence (mTLS; a fatal alert naming the certificate).
fn tls_config_error(reason: &str) -> bool {
    const CERT_ALERTS: &[&str] = &[
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
        "CertificateUnknown",
        "CertificateExpired",
        "CertificateRevoked",
        "UnsupportedCertificate",
    ];
    reason.contains("invalid peer certificate")
        || reason
            .split("received fatal alert: ")
            .skip(1)
            .any(|rest| CERT_ALERTS.iter().any(|a| rest.starts_with(a)))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::default(),
    );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
#[path = "../../tests/common/arr.rs"]
mod arr;

#[cfg(test)]
mod tests {
    use super::arr::{Arr, Reply};
    use super::*;
    use crate::config::{AuthConfig, ConfigDuration, RetryConfig};
    use crate::deliver::tests::batch;
    use std::time::Instant;

    fn config(url: &str) -> OutputConfig {
        OutputConfig {
            output_type: crate::config::OutputType::Http,
            url: Some(url.to_owned()),
            bundle_type: BundleType::Batch,
            timeout: ConfigDuration(Duration::from_secs(5)),
            retry: RetryConfig {
                initial_backoff: ConfigDuration(Duration::from_millis(20)),
                max_backoff: ConfigDuration(Duration::from_millis(100)),
            },
            ..OutputConfig::default()
        }
    }

    fn output(o: &OutputConfig, state: &Path) -> HttpOutput {
        HttpOutput::new(o, state).unwrap()
    }

    #[test]
    fn tls_certificate_failures_are_configuration_errors() {
        assert!(tls_config_error(
            "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer"
        ));
        assert!(tls_config_error(
            "error sending request: client error (SendRequest): connection error: \
             received fatal alert: CertificateRequired"
        ));
        assert!(tls_config_error("received fatal alert: UnknownCA"));
        assert!(!tls_config_error(
            "error sending request: connection error: received fatal alert: InternalError"
        ));
        assert!(!tls_config_error(
            "error sending request: connection refused"
        ));
    }

    #[test]
    fn status_classification() {
        assert_eq!(classify(200), Class::Accepted);
        assert_eq!(classify(201), Class::Accepted);
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify(s), Class::Transient, "{s}");
        }
        for s in [403, 404, 405, 501, 301, 302] {
            assert_eq!(classify(s), Class::Config, "{s}");
        }
        assert_eq!(classify(401), Class::Unauthorized);
        assert_eq!(classify(413), Class::TooLarge);
        for s in [400, 409, 422] {
            assert_eq!(classify(s), Class::Rejected, "{s}");
        }
    }

    #[tokio::test]
    async fn http_accepted_with_fhir_headers_and_gzipped_bundle() {
        let arr = Arr::start();
        let tmp = tempfile::tempdir().unwrap();
        let mut o = config(&arr.url());
        o.headers.insert("X-Tenant".into(), "t1".into());
        let mut out = output(&o, tmp.path());
        let b = batch(1..4);
        let got = out.deliver(&b, &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        let reqs = arr.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/fhir");
        assert_eq!(r.header("content-type"), Some(FHIR_JSON));
        assert_eq!(r.header("accept"), Some(FHIR_JSON));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.header("x-request-id"), Some(b.id().to_string().as_str()));
        assert_eq!(r.header("x-tenant"), Some("t1"));
        assert!(r.header("authorization").is_none());
        assert!(r.raw_len < r.body.len() + 100, "body was sent compressed");
        let v = r.json().unwrap();
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["type"], "batch");
        assert_eq!(v["id"], b.id().to_string());
        let ids: Vec<String> = b.events.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(arr.accepted_event_ids(), ids);
    }

    #[tokio::test]
    async fn http_uncompressed_when_compression_none() {
        let arr = Arr::start();
        let tmp = tempfile::tempdir().unwrap();
        let mut o = config(&arr.url());
        o.compression = Compression::None;
        let mut out = output(&o, tmp.path());
        out.deliver(&batch(1..2), &Shutdown::never()).await.unwrap();
        let r = &arr.requests()[0];
        assert!(r.header("content-encoding").is_none());
        assert_eq!(r.raw_len, r.body.len());
    }

    #[tokio::test]
    async fn http_retries_503_with_the_same_request_id() {
        let arr = Arr::start();
        arr.script([Reply::Status(503), Reply::Status(503)]);
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&config(&arr.url()), tmp.path());
        let b = batch(1..3);
        let got = out.deliver(&b, &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        let reqs = arr.requests();
        assert_eq!(reqs.len(), 3);
        let id = b.id().to_string();
        for r in &reqs {
            assert_eq!(r.header("x-request-id"), Some(id.as_str()));
        }
        assert_eq!(reqs[0].body, reqs[2].body, "a retry sends the same Bundle");
        assert_eq!(arr.accepted_bundles().len(), 1);
    }

    #[tokio::test]
    async fn http_retry_after_is_a_floor() {
        let arr = Arr::start();
        arr.script([Reply::StatusWithRetryAfter(429, "1".into())]);
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&config(&arr.url()), tmp.path());
        let got = out.deliver(&batch(1..2), &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        let reqs = arr.requests();
        assert_eq!(reqs.len(), 2);
        let gap = reqs[1].time - reqs[0].time;
        assert!(gap >= Duration::from_secs(1), "next attempt after {gap:?}");
    }

    #[tokio::test]
    async fn http_400_writes_a_dead_letter() {
        let arr = Arr::start();
        arr.script([Reply::StatusWithBody(
            400,
            r#"{"resourceType":"OperationOutcome","issue":[{"diagnostics":"bad entry 2"}]}"#.into(),
        )]);
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&config(&arr.url()), tmp.path());
        let b = batch(1..3);
        let got = out.deliver(&b, &Shutdown::never()).await.unwrap();
        let Delivery::DeadLettered { status, path } = got else {
            panic!("expected a dead letter, got {got:?}");
        };
        assert_eq!(status, 400);
        assert!(path.starts_with(tmp.path().join("dead-letter")));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["status"], 400);
        assert!(v["response"].as_str().unwrap().contains("bad entry 2"));
        assert_eq!(v["bundle"]["id"], b.id().to_string());
        assert_eq!(v["url"], arr.url());
        assert_eq!(arr.requests().len(), 1, "a rejected Bundle is not retried");
    }

    #[tokio::test]
    async fn http_hang_times_out_then_retries() {
        let arr = Arr::start();
        arr.script([Reply::Hang, Reply::CloseConnection]);
        let tmp = tempfile::tempdir().unwrap();
        let mut o = config(&arr.url());
        o.timeout = ConfigDuration(Duration::from_millis(300));
        let mut out = output(&o, tmp.path());
        let started = Instant::now();
        let got = out.deliver(&batch(1..2), &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let reqs = arr.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0].reply, Reply::Hang);
        assert_eq!(reqs[1].reply, Reply::CloseConnection);
        assert!(reqs[1].time - reqs[0].time >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn http_shutdown_during_backoff_interrupts_quickly() {
        let arr = Arr::start();
        let tmp = tempfile::tempdir().unwrap();
        let mut o = config(&arr.url());
        o.retry.initial_backoff = ConfigDuration(Duration::from_secs(60));
        o.retry.max_backoff = ConfigDuration(Duration::from_secs(60));
        let mut out = output(&o, tmp.path());
        // Keep the gap long for sure: the floor is 60 s whatever the jitter draws.
        arr.set_default(Reply::StatusWithRetryAfter(503, "60".into()));
        let (trigger, shutdown) = crate::shutdown::channel();
        let stopper = async {
            while arr.requests().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            trigger.trigger();
            Instant::now()
        };
        let b = batch(1..2);
        let (got, triggered_at) = tokio::join!(out.deliver(&b, &shutdown), stopper);
        assert_eq!(got.unwrap(), Delivery::Interrupted);
        assert!(triggered_at.elapsed() < Duration::from_secs(2));
        assert_eq!(arr.requests().len(), 1);
    }

    #[tokio::test]
    async fn http_413_splits_the_batch_in_order() {
        let arr = Arr::start();
        arr.script([Reply::Status(413)]);
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&config(&arr.url()), tmp.path());
        let b = batch(1..5);
        let got = out.deliver(&b, &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        let bundles = arr.accepted_bundles();
        assert_eq!(bundles.len(), 2);
        let ids: Vec<String> = b.events.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(arr.accepted_event_ids(), ids, "all events, in order");
        assert_ne!(bundles[0]["id"], bundles[1]["id"]);
        assert_ne!(bundles[0]["id"], b.id().to_string());
        let reqs = arr.requests();
        assert_eq!(reqs.len(), 3);
        assert_ne!(
            reqs[1].header("x-request-id"),
            reqs[2].header("x-request-id")
        );
    }

    #[tokio::test]
    async fn http_413_on_a_single_event_is_dead_lettered() {
        let arr = Arr::start();
        arr.script([Reply::Status(413), Reply::Status(413)]);
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&config(&arr.url()), tmp.path());
        let got = out.deliver(&batch(1..3), &Shutdown::never()).await.unwrap();
        assert!(
            matches!(got, Delivery::DeadLettered { status: 413, .. }),
            "{got:?}"
        );
        assert_eq!(
            arr.accepted_event_ids(),
            vec![uuid::Uuid::from_u128(2).to_string()]
        );
    }

    #[tokio::test]
    async fn http_bearer_token_is_re_read_on_401() {
        let arr = Arr::start();
        arr.script([Reply::Status(401)]);
        let tmp = tempfile::tempdir().unwrap();
        let token = tmp.path().join("token");
        std::fs::write(&token, "old\n").unwrap();
        let mut o = config(&arr.url());
        o.auth = AuthConfig {
            auth_type: AuthType::Bearer,
            token_file: Some(token.clone()),
            ..AuthConfig::default()
        };
        let mut out = output(&o, tmp.path());
        std::fs::write(&token, "new\n").unwrap();
        let got = out.deliver(&batch(1..2), &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        let reqs = arr.requests();
        assert_eq!(reqs[0].header("authorization"), Some("Bearer old"));
        assert_eq!(reqs[1].header("authorization"), Some("Bearer new"));
        assert!(
            !format!("{out:?}").contains("new"),
            "secrets stay out of Debug"
        );
    }

    #[tokio::test]
    async fn http_persistent_401_and_403_keep_retrying() {
        let arr = Arr::start();
        arr.script([Reply::Status(401), Reply::Status(401), Reply::Status(403)]);
        let tmp = tempfile::tempdir().unwrap();
        let pw = tmp.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let mut o = config(&arr.url());
        o.auth = AuthConfig {
            auth_type: AuthType::Basic,
            username: Some("agent".into()),
            password_file: Some(pw),
            ..AuthConfig::default()
        };
        let mut out = output(&o, tmp.path());
        let got = out.deliver(&batch(1..2), &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        let reqs = arr.requests();
        assert_eq!(reqs.len(), 4);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("agent:s3cret")
        );
        assert_eq!(reqs[3].header("authorization"), Some(expected.as_str()));
        // Configuration errors wait max_backoff (100 ms here) before the next try.
        assert!(reqs[2].time - reqs[1].time >= Duration::from_millis(100));
        assert!(reqs[3].time - reqs[2].time >= Duration::from_millis(100));
    }

    #[test]
    fn http_setup_errors_name_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = config("ftp://x/");
        let e = HttpOutput::new(&o, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("output.url"), "{e}");
        o = config("http://127.0.0.1:1/fhir");
        o.auth.auth_type = AuthType::Oauth2;
        let e = HttpOutput::new(&o, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("not implemented"), "{e}");
        o.auth = AuthConfig {
            auth_type: AuthType::Bearer,
            token_file: Some(tmp.path().join("missing")),
            ..AuthConfig::default()
        };
        let e = HttpOutput::new(&o, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        o.auth = AuthConfig::default();
        o.tls.ca_file = Some(tmp.path().join("ca.pem"));
        std::fs::write(tmp.path().join("ca.pem"), "not a cert").unwrap();
        let e = HttpOutput::new(&o, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("output.tls.ca_file"), "{e}");
        o.tls.ca_file = None;
        o.tls.client_cert_file = Some(tmp.path().join("c.pem"));
        let e = HttpOutput::new(&o, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
        o.tls.client_cert_file = None;
        o.headers.insert("bad header".into(), "x".into());
        let e = HttpOutput::new(&o, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("output.headers.bad header"), "{e}");
    }
}

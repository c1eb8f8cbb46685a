//! HTTP output: POST each Bundle to the ARR and retry until every event is settled.
//!
//! The last stage of source → decode → parse → map → spool → batch → deliver. The Bundle's
//! events are already fsynced in the spool (their read positions have advanced); the
//! pipeline acknowledges them in the spool only once this returns a settled [`Delivery`], so
//! a crash while a request is in flight resends the Bundle at the next start.
//!
//! In: a [`Batch`]. Out: [`Delivery::Accepted`] when the ARR took every event,
//! [`Delivery::DeadLettered`] when it took all but some events it rejected for their content
//! (each rejected event is kept, as a one-entry Bundle with the ARR's answer, under
//! `<state_dir>/dead-letter/`), or [`Delivery::Interrupted`] when the stop signal comes while
//! waiting to retry. Nothing is ever dropped: every other outcome is retried forever.
//!
//! | outcome | action |
//! |---|---|
//! | 2xx | accepted; with `bundle_type = "batch"` the batch-response is read per entry (below) |
//! | transport error, timeout, 408, 429, 5xx (not 501) | retry, exponential backoff with full jitter |
//! | 401 | refresh the credentials (re-read the file, or fetch a new OAuth2 token) and retry at once; if it persists: pause |
//! | 403, 404, 405, 406, 415, 501, 3xx, TLS verification failure | configuration error: pause |
//! | 413 | bisect (below); a single event is dead-lettered |
//! | other 4xx (400, 422, …) | bisect (below); a single event is dead-lettered |
//!
//! **Bisection.** A rejected Bundle of several events is split in halves, each sent as its own
//! Bundle, earlier half first, recursively; halves the ARR takes are done, and only single
//! events it still rejects are dead-lettered. One poison event in `n` costs about
//! `2·log2(n)` extra requests; every request is bounded by the events of its half.
//!
//! **batch-response.** For `bundle_type = "batch"` a 2xx answer is a `batch-response` Bundle
//! with `entry[i].response.status` for request entry `i`. Entries with 2xx are done; 4xx
//! (except 408/429) are dead-lettered one by one with their `response` (and its `outcome`);
//! 5xx/408/429 entries are sent again, alone together as a smaller Bundle, after a backoff.
//! A 2xx without a readable batch-response (or one whose entry count differs) counts as all
//! accepted. `transaction` and `collection` are all-or-nothing.
//!
//! **Pause.** A persistent 401, a configuration error or a token endpoint that refuses the
//! client pauses delivery: an error is logged (once, then at most every
//! [`ALERT_INTERVAL`] or when the reason changes), [`OutputStatus::paused_reason`] says why,
//! the Bundle is kept and retried every `max_backoff` with fresh credentials; the next 2xx
//! resumes.
//!
//! **Circuit breaker.** Each Bundle is retried in place by its own output slot
//! (`output.max_in_flight`, default 1). While deliveries fail ([`Health`] says so) the
//! pipeline opens no new slot, so the Bundles already in flight are the breaker's half-open
//! probes, paced by the backoff; the first 2xx reopens the other slots.
//!
//! `Retry-After` (seconds or HTTP-date) is a floor on the next wait. The Bundle JSON and its
//! compressed body are built once per Bundle, so every retry sends the same bytes with the same
//! `X-Request-Id`. A request in flight is not cut by the stop signal (it is bounded by
//! `timeout`), so a final drain can finish; only the waits between attempts are.
//! Secrets (token, password, client secret, configured headers) never reach the logs.

use super::backoff::{Backoff, parse_retry_after};
use super::deadletter::{DeadLetters, MAX_RESPONSE_BYTES};
use super::oauth2::{OAuth2, TokenError};
use super::{DeliverError, Delivery, OutputStatus, error_chain};
use crate::batch::Batch;
use crate::config::{AuthType, BundleType, Compression, OutputConfig};
use crate::events;
use crate::metrics::Health;
use crate::shutdown::Shutdown;
use base64::Engine;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The FHIR JSON media type.
const FHIR_JSON: &str = "application/fhir+json";

/// A pause is logged as an error at most this often (unless its reason changes).
pub const ALERT_INTERVAL: Duration = Duration::from_secs(300);

/// A batch-response is read up to this size; a longer one counts as unreadable.
const MAX_BATCH_RESPONSE_BYTES: usize = 32 << 20;

/// Credentials, refreshable.
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
    OAuth2(Box<OAuth2>),
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
            AuthType::Oauth2 => Ok(Auth::OAuth2(Box::new(OAuth2::new(
                a.token_url.as_deref(),
                a.client_id.as_deref(),
                a.client_secret_file.as_deref(),
                a.scope.as_deref(),
            )?))),
        }
    }

    /// Re-read the credential file, or drop the OAuth2 token so that a new one is fetched;
    /// on a read failure keep the old value and say why.
    fn refresh(&mut self) {
        let result = match self {
            Auth::None => return,
            Auth::OAuth2(o) => {
                o.invalidate();
                return;
            }
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

    /// Make sure a credential is at hand (fetches an OAuth2 token when needed).
    async fn ensure(
        &mut self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(), TokenError> {
        match self {
            Auth::OAuth2(o) => o.ensure(client, timeout).await,
            _ => Ok(()),
        }
    }

    fn header(&self) -> Option<&HeaderValue> {
        match self {
            Auth::None => None,
            Auth::OAuth2(o) => o.header(),
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
    /// 2xx, with the response body (read further for a batch-response).
    Accepted {
        response: Vec<u8>,
    },
    DeadLettered {
        status: u16,
        path: PathBuf,
    },
    /// Rejected (4xx content error or 413) and it has several events: bisect.
    Split {
        status: u16,
    },
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
        // 406/415: the ARR does not take FHIR JSON or gzip as sent, whatever the content.
        403 | 404 | 405 | 406 | 415 | 501 => Class::Config,
        400..=499 => Class::Rejected,
        500..=599 => Class::Transient,
        // 1xx/3xx (redirects are not followed: the Bundle goes to exactly `output.url`).
        _ => Class::Config,
    }
}

/// How one entry of a batch-response is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryClass {
    Done,
    Retry,
    Reject(u16),
}

fn classify_entry(status: Option<u16>) -> EntryClass {
    match status {
        Some(408 | 429 | 500..=599) => EntryClass::Retry,
        Some(s @ 400..=499) => EntryClass::Reject(s),
        // 2xx, or no readable status in a 2xx answer.
        _ => EntryClass::Done,
    }
}

/// One entry of a batch-response: its status and its `response` element as JSON.
#[derive(Debug)]
struct EntryResult {
    status: Option<u16>,
    response: String,
}

/// Read a batch-response for `n` request entries; `None` if it is not one, or not for `n`.
fn batch_response(body: &[u8], n: usize) -> Option<Vec<EntryResult>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v["resourceType"] != "Bundle" || v["type"] != "batch-response" {
        return None;
    }
    let entries = v["entry"].as_array()?;
    if entries.len() != n {
        tracing::warn!(
            sent = n,
            answered = entries.len(),
            "batch-response entry count differs from the request; counting all as accepted"
        );
        return None;
    }
    Some(
        entries
            .iter()
            .map(|e| EntryResult {
                status: e["response"]["status"].as_str().and_then(entry_status),
                response: e["response"].to_string(),
            })
            .collect(),
    )
}

/// `"201 Created"` → 201.
fn entry_status(s: &str) -> Option<u16> {
    s.trim()
        .get(..3)?
        .parse()
        .ok()
        .filter(|c| (100..=599).contains(c))
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

/// What a delivery came to so far.
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    dead_lettered: usize,
    first_status: Option<u16>,
    files: Vec<PathBuf>,
}

impl Tally {
    fn dead(&mut self, events: usize, status: u16, path: PathBuf) {
        self.dead_lettered += events;
        self.first_status.get_or_insert(status);
        self.files.push(path);
    }

    fn into_delivery(self) -> Delivery {
        match (self.first_status, self.files.first()) {
            (Some(status), Some(path)) => Delivery::DeadLettered {
                status,
                path: path.clone(),
                accepted: self.accepted,
                dead_lettered: self.dead_lettered,
                files: self.files,
            },
            _ => Delivery::Accepted,
        }
    }
}

/// Sleep `wait` unless the stop signal comes first; false if it did.
async fn wait_or_stop(wait: Duration, shutdown: &Shutdown) -> bool {
    if shutdown.is_triggered() {
        return false;
    }
    let mut shutdown = shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = shutdown.wait() => false,
    }
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
    status: OutputStatus,
    /// When the pause alert was last logged, and for what.
    last_alert: Option<(Instant, String)>,
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
        let url = super::http_url(raw_url).map_err(|e| setup(format!("output.url: {e}")))?;
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
        super::client_pair_complete(
            tls.client_cert_file.is_some(),
            tls.client_key_file.is_some(),
        )
        .map_err(|e| setup(format!("output.tls: {e}")))?;
        if let (Some(cert), Some(key)) = (&tls.client_cert_file, &tls.client_key_file) {
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
            status: OutputStatus::default(),
            last_alert: None,
            health: None,
        })
    }

    /// A handle on the output's state (paused or not), for health reporting.
    pub fn status(&self) -> OutputStatus {
        self.status.clone()
    }

    /// The configured `output.url`.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// `GET url` (a FHIR read or search) with the output's client, TLS, headers and
    /// credentials; a 401 refreshes them once. Returns the status and up to `limit` bytes of
    /// the body, or why no answer came (for `balp-agent arr check`, which never retries).
    pub async fn get(
        &mut self,
        url: &reqwest::Url,
        limit: usize,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut headers = self.headers.clone();
        // The configured headers stay (tenant, API key); the ones about a request body go.
        headers.remove(header::CONTENT_TYPE);
        headers.remove(header::CONTENT_ENCODING);
        let mut refreshed = false;
        loop {
            self.auth
                .ensure(&self.client, self.timeout)
                .await
                .map_err(|e| match e {
                    TokenError::Transient(r) | TokenError::Refused(r) => {
                        format!("token endpoint: {r}")
                    }
                })?;
            let mut h = headers.clone();
            if let Some(v) = self.auth.header() {
                h.insert(header::AUTHORIZATION, v.clone());
            }
            let sent = self
                .client
                .get(url.clone())
                .headers(h)
                .timeout(self.timeout)
                .send()
                .await;
            let mut resp = match sent {
                Ok(r) => r,
                Err(e) if e.is_timeout() => {
                    return Err(format!("no answer within {:?}", self.timeout));
                }
                Err(e) => return Err(error_chain(&e.without_url())),
            };
            let status = resp.status().as_u16();
            if status == 401 && !refreshed {
                refreshed = true;
                self.auth.refresh();
                continue;
            }
            let mut body = Vec::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        if body.len() + chunk.len() > limit {
                            return Err(format!("answer larger than {limit} bytes"));
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(e) => return Err(error_chain(&e.without_url())),
                }
            }
            return Ok((status, body));
        }
    }

    /// Deliver one batch until every event is accepted or dead-lettered (see the module doc).
    pub async fn deliver(
        &mut self,
        batch: &Batch,
        shutdown: &Shutdown,
    ) -> Result<Delivery, DeliverError> {
        let n = batch.events.len();
        if n == 0 {
            return Ok(Delivery::Accepted);
        }
        let mut tally = Tally::default();
        // Event indexes still to send, as a stack of Bundles; the top is the earliest.
        let mut pending: Vec<Vec<usize>> = vec![(0..n).collect()];
        // Paces Bundles of entries a batch-response said to retry.
        let mut entry_backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        while let Some(mut idx) = pending.pop() {
            let part;
            let bundle = if idx.len() == n {
                batch
            } else {
                part = Batch {
                    events: idx.iter().map(|&i| batch.events[i].clone()).collect(),
                    timestamp: batch.timestamp,
                    ..Batch::default()
                };
                &part
            };
            match self.send(bundle, idx.len() > 1, shutdown).await? {
                Sent::Accepted { response } => {
                    let retry = self
                        .settle_entries(bundle, &idx, &response, &mut tally)
                        .await?;
                    if retry.is_empty() {
                        entry_backoff.reset();
                        continue;
                    }
                    let wait = entry_backoff.next_delay();
                    events::retry(
                        &bundle.id().to_string(),
                        &self.target,
                        &format!("batch-response: {} entries failed transiently", retry.len()),
                        u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    );
                    if !wait_or_stop(wait, shutdown).await {
                        return Ok(Delivery::Interrupted);
                    }
                    pending.push(retry);
                }
                Sent::DeadLettered { status, path } => tally.dead(idx.len(), status, path),
                Sent::Split { status } => {
                    tracing::warn!(
                        target = %self.target,
                        status,
                        events = idx.len(),
                        "ARR rejected the Bundle; splitting it in halves to isolate the cause"
                    );
                    let later = idx.split_off(idx.len() / 2);
                    pending.push(later);
                    pending.push(idx);
                }
                Sent::Interrupted => return Ok(Delivery::Interrupted),
            }
        }
        Ok(tally.into_delivery())
    }

    /// Account for an accepted Bundle of the events `idx`: with a batch-response, dead-letter
    /// the entries rejected and return those to retry.
    async fn settle_entries(
        &mut self,
        bundle: &Batch,
        idx: &[usize],
        response: &[u8],
        tally: &mut Tally,
    ) -> Result<Vec<usize>, DeliverError> {
        let id = bundle.id().to_string();
        let entries = if self.bundle_type == BundleType::Batch {
            batch_response(response, idx.len())
        } else {
            None
        };
        let Some(entries) = entries else {
            if self.bundle_type == BundleType::Batch {
                tracing::debug!(bundle_id = %id, "2xx without a readable batch-response; all entries count as accepted");
            }
            tally.accepted += idx.len();
            events::bundle_sent(&id, idx.len(), &self.target);
            return Ok(Vec::new());
        };
        let mut retry = Vec::new();
        let mut done = 0;
        for (k, entry) in entries.iter().enumerate() {
            match classify_entry(entry.status) {
                EntryClass::Done => done += 1,
                EntryClass::Retry => retry.push(idx[k]),
                EntryClass::Reject(status) => {
                    let single = Batch {
                        events: vec![bundle.events[k].clone()],
                        timestamp: bundle.timestamp,
                        ..Batch::default()
                    };
                    let single_id = single.id().to_string();
                    let json = single.bundle_json(self.bundle_type);
                    let path = self
                        .dead_letters
                        .write(
                            &single_id,
                            &json,
                            status,
                            entry.response.as_bytes(),
                            &self.target,
                        )
                        .await?;
                    events::dead_lettered(
                        &single_id,
                        1,
                        &self.target,
                        status,
                        &path.to_string_lossy(),
                    );
                    tally.dead(1, status, path);
                }
            }
        }
        tally.accepted += done;
        if done > 0 {
            events::bundle_sent(&id, done, &self.target);
        }
        Ok(retry)
    }

    /// Delivery is paused: say why (the alert is rate-limited) and show it in the status.
    fn pause(&mut self, reason: String) {
        let now = Instant::now();
        let due = match &self.last_alert {
            None => true,
            Some((at, last)) => *last != reason || now.duration_since(*at) >= ALERT_INTERVAL,
        };
        if due {
            tracing::error!(
                target = %self.target,
                reason = %reason,
                "delivery to the ARR is paused; the data is kept and retried every max_backoff"
            );
            self.last_alert = Some((now, reason.clone()));
        }
        self.report(|h| h.set_paused(Some(reason.clone())));
        self.status.set_paused(Some(reason));
    }

    /// The ARR answered as it should (accepted, or refused only the content).
    fn resume(&mut self) {
        self.report(Health::delivery_ok);
        if self.status.paused_reason().is_some() {
            tracing::info!(target = %self.target, "delivery to the ARR resumed");
            self.status.set_paused(None);
        }
        self.last_alert = None;
    }

    /// Send one Bundle until it is settled (or rejected and `can_split`).
    async fn send(
        &mut self,
        batch: &Batch,
        can_split: bool,
        shutdown: &Shutdown,
    ) -> Result<Sent, DeliverError> {
        let id = batch.id().to_string();
        let events_n = batch.events.len();
        // The JSON is dropped once compressed (a 500-event Bundle is ~1 MiB, its gzip ~40 KiB);
        // a dead letter rebuilds it: the same batch always gives the same bytes.
        let body = {
            let json = batch.bundle_json(self.bundle_type);
            if self.gzip {
                gzip(json.as_bytes())
            } else {
                json.into_bytes()
            }
        };
        let mut backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        let mut refreshed_after_401 = false;
        let mut failed_once = false;
        loop {
            let attempt = match self.auth.ensure(&self.client, self.timeout).await {
                Ok(()) => self.attempt(&id, &body).await,
                Err(TokenError::Transient(reason)) => Attempt::Transport {
                    reason,
                    config: false,
                },
                Err(TokenError::Refused(reason)) => {
                    self.pause(reason.clone());
                    Attempt::Transport {
                        reason,
                        config: true,
                    }
                }
            };
            let (reason, wait, floor) = match attempt {
                Attempt::Response {
                    status,
                    retry_after,
                    body: response,
                } => match classify(status) {
                    Class::Accepted => {
                        self.resume();
                        return Ok(Sent::Accepted { response });
                    }
                    Class::Transient => {
                        (format!("HTTP {status}"), backoff.next_delay(), retry_after)
                    }
                    Class::Unauthorized if !refreshed_after_401 => {
                        refreshed_after_401 = true;
                        self.auth.refresh();
                        events::retry(&id, &self.target, "HTTP 401; credentials refreshed", 0);
                        continue;
                    }
                    Class::Unauthorized | Class::Config => {
                        let reason = if status == 401 {
                            "HTTP 401 from the ARR even with refreshed credentials: check \
                             output.auth"
                                .to_owned()
                        } else {
                            format!(
                                "HTTP {status} from the ARR: check output.url, credentials and \
                                 permissions"
                            )
                        };
                        self.pause(reason.clone());
                        // Pick up credentials fixed by the operator meanwhile.
                        self.auth.refresh();
                        (reason, self.max_backoff, retry_after)
                    }
                    Class::TooLarge | Class::Rejected if can_split => {
                        return Ok(Sent::Split { status });
                    }
                    Class::TooLarge | Class::Rejected => {
                        // The ARR works; it refused this content only.
                        self.report(Health::delivery_ok);
                        let path = self
                            .dead_letters
                            .write(
                                &id,
                                &batch.bundle_json(self.bundle_type),
                                status,
                                &response,
                                &self.target,
                            )
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
                        self.pause(format!(
                            "TLS certificate rejected (ours or the ARR's): check output.tls ({reason})"
                        ));
                        (reason, self.max_backoff, None)
                    } else {
                        (reason, backoff.next_delay(), None)
                    }
                }
            };
            let wait = floor.map_or(wait, |f| wait.max(f));
            self.report(|h| h.delivery_failed(&reason));
            if !failed_once {
                failed_once = true;
                events::bundle_failed();
            }
            events::retry(
                &id,
                &self.target,
                &reason,
                u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            );
            if !wait_or_stop(wait, shutdown).await {
                return Ok(Sent::Interrupted);
            }
        }
    }

    /// One POST; the response body is read up to what a dead letter keeps (further for a
    /// 2xx that may be a batch-response).
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
        let limit = if (200..300).contains(&status) && self.bundle_type == BundleType::Batch {
            MAX_BATCH_RESPONSE_BYTES
        } else {
            MAX_RESPONSE_BYTES
        };
        let mut response = Vec::new();
        // Reading the body lets the connection be reused; a failure here does not change
        // what the status said (a cut batch-response just does not parse).
        while let Ok(Some(chunk)) = resp.chunk().await {
            let room = limit.saturating_sub(response.len());
            response.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if response.len() >= limit {
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
    let reason = error_chain(&e);
    // rustls says "invalid peer certificate: …" when verification fails; that will not heal
    // by itself, so it is paced like a configuration error.
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

/// gzip level for Bundle bodies. AuditEvents repeat the same codes and URLs, so level 1
/// already shrinks a 500-event Bundle about 14x (the bench's "gzip floor" line); level 6
/// gains a little more at two to three times the CPU (README, "Benchmark").
const GZIP_LEVEL: u32 = 1;

/// A gzip member (RFC 1952) of `data`. The deflate state (about 300 KiB of window and hash
/// tables) is kept per thread and reset for each Bundle: allocating and zeroing a fresh one
/// per Bundle cost a fifth as much as compressing it.
fn gzip(data: &[u8]) -> Vec<u8> {
    thread_local! {
        static DEFLATE: std::cell::RefCell<Option<flate2::Compress>> =
            const { std::cell::RefCell::new(None) };
    }
    // ID1 ID2, CM = deflate, no flags, no mtime, no extra flags, OS unknown.
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut out = Vec::with_capacity(data.len() / 8 + 64);
    out.extend_from_slice(&HEADER);
    let deflated = DEFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let c = slot.get_or_insert_with(|| {
            flate2::Compress::new(flate2::Compression::new(GZIP_LEVEL), false)
        });
        c.reset();
        loop {
            let done = usize::try_from(c.total_in()).unwrap_or(usize::MAX);
            if out.capacity() - out.len() < 1024 {
                out.reserve(out.capacity());
            }
            match c.compress_vec(
                data.get(done..).unwrap_or_default(),
                &mut out,
                flate2::FlushCompress::Finish,
            ) {
                Ok(flate2::Status::StreamEnd) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    });
    if !deflated {
        // Not reachable with a valid level and a Vec; the stream API is the fallback.
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(data.len() / 8 + 64),
            flate2::Compression::new(GZIP_LEVEL),
        );
        let _ = enc.write_all(data);
        return enc.finish().unwrap_or_default();
    }
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952 §2.3.1).
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The pure steps of response handling, driven by the fuzz harnesses in `fuzz/` with any
/// status, header and body. Not an API: hidden, and nothing in the agent calls it.
#[doc(hidden)]
pub mod fuzzing {
    use super::{Class, EntryClass, batch_response, classify, classify_entry, parse_retry_after};
    use std::time::{Duration, SystemTime};

    /// What the output makes of one ARR response.
    #[derive(Debug)]
    pub struct Handling {
        /// How the status is handled (`Accepted`, `Transient`, `Unauthorized`, `Config`,
        /// `TooLarge`, `Rejected`).
        pub class: &'static str,
        /// The `Retry-After` floor.
        pub retry_after: Option<Duration>,
        /// For a 2xx answer to a `batch` Bundle of `n` entries: per entry its status, its
        /// handling (`Done`, `Retry`, `Reject`) and its `response` JSON; `None` when the body
        /// is no batch-response for `n` entries (all count as accepted).
        pub entries: Option<Vec<(Option<u16>, &'static str, String)>>,
        /// The dead-letter document a rejection of a Bundle `bundle_json` would write.
        pub dead_letter: String,
    }

    /// Handle one response as [`super::HttpOutput`] does.
    pub fn handle(
        status: u16,
        retry_after: &str,
        body: &[u8],
        n: usize,
        bundle_json: &str,
        now: SystemTime,
    ) -> Handling {
        let class = match classify(status) {
            Class::Accepted => "Accepted",
            Class::Transient => "Transient",
            Class::Unauthorized => "Unauthorized",
            Class::Config => "Config",
            Class::TooLarge => "TooLarge",
            Class::Rejected => "Rejected",
        };
        let entries = batch_response(body, n).map(|es| {
            es.into_iter()
                .map(|e| {
                    let handling = match classify_entry(e.status) {
                        EntryClass::Done => "Done",
                        EntryClass::Retry => "Retry",
                        EntryClass::Reject(_) => "Reject",
                    };
                    (e.status, handling, e.response)
                })
                .collect()
        });
        Handling {
            class,
            retry_after: parse_retry_after(retry_after, now),
            entries,
            dead_letter: super::super::deadletter::letter(
                bundle_json,
                status,
                body,
                "https://arr.example.org/fhir",
                "2026-11-25T15:22:44Z",
            ),
        }
    }
}

#[cfg(test)]
#[path = "../../tests/common/arr.rs"]
mod arr;

#[cfg(test)]
mod gzip_tests {
    use std::io::Read;

    #[test]
    fn gzip_members_decode_to_their_input_with_the_state_reused() {
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new(), b"x".to_vec()];
        let mut big = Vec::new();
        for i in 0..200_000u32 {
            big.extend_from_slice(
                format!("{{\"n\":{},\"h\":{}}}", i, i.wrapping_mul(2_654_435_761)).as_bytes(),
            );
        }
        inputs.push(big);
        inputs.push(b"again, after a big one".to_vec());
        for data in &inputs {
            let gz = super::gzip(data);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(&back, data);
            // One member, nothing after it.
            let mut multi = Vec::new();
            flate2::read::MultiGzDecoder::new(&gz[..])
                .read_to_end(&mut multi)
                .unwrap();
            assert_eq!(&multi, data);
        }
    }
}

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
        for s in [403, 404, 405, 406, 415, 501, 301, 302] {
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
        arr.script([Reply::StatusWithRetryAfter(429, "2".into())]);
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&config(&arr.url()), tmp.path());
        let got = out.deliver(&batch(1..2), &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        let reqs = arr.requests();
        assert_eq!(reqs.len(), 2);
        let gap = reqs[1].time - reqs[0].time;
        assert!(gap >= Duration::from_secs(2), "next attempt after {gap:?}");
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
        let b = batch(1..2);
        let got = out.deliver(&b, &Shutdown::never()).await.unwrap();
        let Delivery::DeadLettered { status, path, .. } = got else {
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
        assert!(e.contains("output.auth.token_url"), "{e}");
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

    fn ids(r: std::ops::Range<u128>) -> Vec<String> {
        r.map(|n| uuid::Uuid::from_u128(n).to_string()).collect()
    }

    fn read_letter(path: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    async fn bisection_isolates_one_poison_entry(status: u16) {
        let arr = Arr::start();
        let poison = uuid::Uuid::from_u128(5).to_string();
        arr.set_default(Reply::RejectEntries(status, poison.clone()));
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&config(&arr.url()), tmp.path());
        let got = out.deliver(&batch(1..9), &Shutdown::never()).await.unwrap();
        let Delivery::DeadLettered {
            status: s,
            accepted,
            dead_lettered,
            files,
            path,
        } = got
        else {
            panic!("expected dead letters, got {got:?}");
        };
        assert_eq!((s, accepted, dead_lettered, files.len()), (status, 7, 1, 1));
        assert_eq!(path, files[0]);
        let mut expected = ids(1..9);
        expected.retain(|id| *id != poison);
        assert_eq!(arr.accepted_event_ids(), expected, "the 7 others, in order");
        let requests = arr.requests().len();
        assert!(requests <= 2 * 3 + 1, "{requests} requests for 8 events");
        let v = read_letter(&files[0]);
        assert_eq!(v["status"], status);
        let entries = v["bundle"]["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["resource"]["id"], poison);
        let response = v["response"].as_str().unwrap();
        assert!(response.contains("OperationOutcome"), "{response}");
        assert!(response.contains(&poison), "{response}");
        assert!(out.status().paused_reason().is_none());
    }

    #[tokio::test]
    async fn http_400_bisection_dead_letters_only_the_poison_entry() {
        bisection_isolates_one_poison_entry(400).await;
    }

    #[tokio::test]
    async fn http_422_bisection_dead_letters_only_the_poison_entry() {
        bisection_isolates_one_poison_entry(422).await;
    }

    #[tokio::test]
    async fn http_bisection_of_500_events_costs_logarithmic_requests() {
        let arr = Arr::start();
        arr.set_default(Reply::RejectEntries(
            400,
            uuid::Uuid::from_u128(377).to_string(),
        ));
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&config(&arr.url()), tmp.path());
        let got = out
            .deliver(&batch(0..500), &Shutdown::never())
            .await
            .unwrap();
        assert_eq!(got.dead_lettered(), 1);
        assert!(got.is_settled());
        assert_eq!(arr.accepted_event_ids().len(), 499);
        let requests = arr.requests().len();
        // ceil(log2(500)) = 9 levels, two Bundles each, plus the first.
        assert!(requests <= 2 * 9 + 1, "{requests} requests");
    }

    #[tokio::test]
    async fn http_batch_response_retries_and_dead_letters_only_failed_entries() {
        let arr = Arr::start();
        arr.script([Reply::EntryStatuses(vec![201, 400, 503, 201, 429])]);
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&config(&arr.url()), tmp.path());
        let got = out.deliver(&batch(1..6), &Shutdown::never()).await.unwrap();
        let Delivery::DeadLettered {
            status,
            accepted,
            dead_lettered,
            files,
            ..
        } = got
        else {
            panic!("expected a dead letter, got {got:?}");
        };
        assert_eq!((status, accepted, dead_lettered), (400, 4, 1));
        let reqs = arr.requests();
        assert_eq!(
            reqs.len(),
            2,
            "one retry Bundle for the two transient entries"
        );
        let retried: Vec<_> = reqs[1].json().unwrap()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
            .collect();
        let all = ids(1..6);
        assert_eq!(retried, vec![all[2].clone(), all[4].clone()]);
        assert_eq!(
            arr.accepted_event_ids(),
            vec![
                all[0].clone(),
                all[3].clone(),
                all[2].clone(),
                all[4].clone()
            ]
        );
        let v = read_letter(&files[0]);
        assert_eq!(v["status"], 400);
        assert_eq!(v["bundle"]["entry"][0]["resource"]["id"], all[1]);
        assert_eq!(v["bundle"]["type"], "batch");
        let response: serde_json::Value =
            serde_json::from_str(v["response"].as_str().unwrap()).unwrap();
        assert_eq!(response["status"], "400 Bad Request");
        assert_eq!(response["outcome"]["resourceType"], "OperationOutcome");
    }

    #[tokio::test]
    async fn http_2xx_without_batch_response_and_transaction_count_as_accepted() {
        let arr = Arr::start();
        arr.script([
            Reply::StatusWithBody(200, "not json".into()),
            Reply::EntryStatuses(vec![400]),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&config(&arr.url()), tmp.path());
        let got = out.deliver(&batch(1..3), &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        // A transaction's 2xx is all-or-nothing: its response is not read per entry.
        let mut o = config(&arr.url());
        o.bundle_type = BundleType::Transaction;
        let mut out = output(&o, tmp.path());
        let got = out.deliver(&batch(3..5), &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        assert_eq!(arr.requests().len(), 2);
        assert!(!tmp.path().join("dead-letter").exists());
    }

    #[tokio::test]
    async fn http_transaction_400_bisects() {
        let arr = Arr::start();
        arr.set_default(Reply::RejectEntries(
            400,
            uuid::Uuid::from_u128(2).to_string(),
        ));
        let tmp = tempfile::tempdir().unwrap();
        let mut o = config(&arr.url());
        o.bundle_type = BundleType::Transaction;
        let mut out = output(&o, tmp.path());
        let got = out.deliver(&batch(1..5), &Shutdown::never()).await.unwrap();
        assert_eq!(got.dead_lettered(), 1);
        assert_eq!(
            arr.accepted_event_ids(),
            ids(1..2).into_iter().chain(ids(3..5)).collect::<Vec<_>>()
        );
        assert!(
            arr.accepted_bundles()
                .iter()
                .all(|b| b["type"] == "transaction")
        );
    }

    fn oauth2_config(arr: &Arr, tokens: &Arr, dir: &Path) -> OutputConfig {
        let secret = dir.join("client-secret");
        std::fs::write(&secret, "s3cr:et\n").unwrap();
        let mut o = config(&arr.url());
        o.auth = AuthConfig {
            auth_type: AuthType::Oauth2,
            token_url: Some(format!("http://{}/token", tokens.addr())),
            client_id: Some("agent".into()),
            client_secret_file: Some(secret),
            scope: Some("audit write".into()),
            ..AuthConfig::default()
        };
        o
    }

    fn token_replies(tokens: &Arr) -> usize {
        tokens
            .requests()
            .iter()
            .filter(|r| matches!(r.reply, Reply::Token(_)))
            .count()
    }

    #[tokio::test]
    async fn http_oauth2_client_credentials_cached_refreshed_and_renewed_on_401() {
        let arr = Arr::start();
        let tokens = Arr::start();
        tokens.set_default(Reply::Token(2));
        // A failing token endpoint is retried, never fatal.
        tokens.script([Reply::Status(503)]);
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&oauth2_config(&arr, &tokens, tmp.path()), tmp.path());
        let none = Shutdown::never();
        assert_eq!(
            out.deliver(&batch(1..2), &none).await.unwrap(),
            Delivery::Accepted
        );
        let t = tokens.requests();
        assert_eq!(t.len(), 2);
        let r = &t[1];
        assert_eq!(r.path, "/token");
        assert_eq!(
            r.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            "grant_type=client_credentials&scope=audit%20write"
        );
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("agent:s3cr%3Aet")
        );
        assert_eq!(r.header("authorization"), Some(basic.as_str()));
        assert_eq!(
            arr.requests()[0].header("authorization"),
            Some("Bearer tok-1")
        );

        // Cached while fresh.
        out.deliver(&batch(2..3), &none).await.unwrap();
        assert_eq!(token_replies(&tokens), 1);
        assert_eq!(
            arr.requests()[1].header("authorization"),
            Some("Bearer tok-1")
        );

        // Renewed before expiry (2 s, renewed 10 % early).
        tokio::time::sleep(Duration::from_millis(1900)).await;
        out.deliver(&batch(3..4), &none).await.unwrap();
        assert_eq!(token_replies(&tokens), 2);
        assert_eq!(
            arr.requests()[2].header("authorization"),
            Some("Bearer tok-2")
        );

        // A 401 forces one refresh, then the Bundle goes through.
        arr.script([Reply::Status(401)]);
        assert_eq!(
            out.deliver(&batch(4..5), &none).await.unwrap(),
            Delivery::Accepted
        );
        assert_eq!(token_replies(&tokens), 3);
        let reqs = arr.requests();
        assert_eq!(reqs.len(), 5);
        assert_eq!(reqs[3].header("authorization"), Some("Bearer tok-2"));
        assert_eq!(reqs[4].header("authorization"), Some("Bearer tok-3"));
        assert!(out.status().paused_reason().is_none());
        let debug = format!("{out:?}");
        assert!(
            !debug.contains("s3cr") && !debug.contains("tok-"),
            "{debug}"
        );
    }

    /// Deliver until `status` says paused, then stop; returns the delivery and the reason.
    async fn deliver_until_paused(out: &mut HttpOutput, b: &Batch) -> (Delivery, String) {
        let status = out.status();
        let (trigger, shutdown) = crate::shutdown::channel();
        let watcher = async {
            let deadline = Instant::now() + Duration::from_secs(10);
            let reason = loop {
                if let Some(r) = status.paused_reason() {
                    break r;
                }
                assert!(Instant::now() < deadline, "never paused");
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            // Let it retry a few times while paused.
            tokio::time::sleep(Duration::from_millis(350)).await;
            trigger.trigger();
            (reason, Instant::now())
        };
        let (got, (reason, at)) = tokio::join!(out.deliver(b, &shutdown), watcher);
        assert!(at.elapsed() < Duration::from_secs(2), "stop came late");
        (got.unwrap(), reason)
    }

    #[tokio::test]
    async fn http_persistent_401_pauses_keeps_the_data_and_resumes() {
        let arr = Arr::start();
        arr.set_default(Reply::Status(401));
        let tmp = tempfile::tempdir().unwrap();
        let token = tmp.path().join("token");
        std::fs::write(&token, "t\n").unwrap();
        let mut o = config(&arr.url());
        o.auth = AuthConfig {
            auth_type: AuthType::Bearer,
            token_file: Some(token),
            ..AuthConfig::default()
        };
        let mut out = output(&o, tmp.path());
        let b = batch(1..3);
        let (got, reason) = deliver_until_paused(&mut out, &b).await;
        assert_eq!(got, Delivery::Interrupted);
        assert!(reason.contains("401"), "{reason}");
        let n = arr.requests().len();
        assert!(n >= 3, "kept retrying while paused ({n} requests)");
        assert!(!tmp.path().join("dead-letter").exists(), "nothing dropped");
        assert!(arr.accepted_event_ids().is_empty());

        arr.set_default(Reply::Ok);
        let got = out.deliver(&b, &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        assert!(out.status().paused_reason().is_none());
        assert_eq!(arr.accepted_event_ids(), ids(1..3));
    }

    #[tokio::test]
    async fn http_oauth2_refused_by_token_endpoint_pauses() {
        let arr = Arr::start();
        let tokens = Arr::start();
        tokens.set_default(Reply::StatusWithBody(
            401,
            r#"{"error":"invalid_client","error_description":"secret s3cr:et wrong"}"#.into(),
        ));
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&oauth2_config(&arr, &tokens, tmp.path()), tmp.path());
        let (got, reason) = deliver_until_paused(&mut out, &batch(1..2)).await;
        assert_eq!(got, Delivery::Interrupted);
        assert!(reason.contains("token endpoint"), "{reason}");
        assert!(reason.contains("invalid_client"), "{reason}");
        assert!(!reason.contains("s3cr"), "{reason}");
        assert!(arr.requests().is_empty(), "no request without a token");
        assert!(tokens.requests().len() >= 2, "token endpoint retried");
    }

    #[test]
    fn pause_alert_is_rate_limited_and_resume_clears_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut out = output(&config("http://127.0.0.1:1/fhir"), tmp.path());
        let status = out.status();
        out.pause("HTTP 403".into());
        let first = out.last_alert.clone().unwrap().0;
        out.pause("HTTP 403".into());
        assert_eq!(out.last_alert.clone().unwrap().0, first, "no second alert");
        assert_eq!(status.paused_reason().as_deref(), Some("HTTP 403"));
        out.pause("HTTP 404".into());
        assert_eq!(
            out.last_alert.clone().unwrap().1,
            "HTTP 404",
            "a new reason alerts"
        );
        out.resume();
        assert!(status.paused_reason().is_none());
        assert!(out.last_alert.is_none());
    }
}

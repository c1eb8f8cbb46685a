//! OAuth2 client credentials grant (RFC 6749 §4.4) for the HTTP output.
//!
//! In: `[output.auth]` `token_url`, `client_id`, `client_secret_file`, optional `scope`.
//! Out: an `Authorization: Bearer …` header value, fetched on first use, cached, and fetched
//! again shortly before it expires (`expires_in` minus 10 %, at most 30 s early) or when the ARR
//! answers 401. The client authenticates with HTTP basic (`client_secret_basic`, RFC 6749
//! §2.3.1: id and secret form-urlencoded, then base64); the secret file is re-read for every
//! token request, so a rotated secret is picked up without a restart. Neither the secret nor
//! the token ever reaches the logs or `Debug`.

use super::DeliverError;
use super::deadletter::MAX_RESPONSE_BYTES;
use base64::Engine;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{self, HeaderValue};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `application/x-www-form-urlencoded` leaves as is (besides alphanumerics).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// The longest time a token is renewed before it expires.
const MAX_MARGIN: Duration = Duration::from_secs(30);

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The token endpoint is unreachable or failing (transport, 408, 429, 5xx): retry soon.
    Transient(String),
    /// The token endpoint refuses the client or the secret file is unreadable: a
    /// configuration error, retried with a long backoff.
    Refused(String),
}

/// A cached access token.
struct Token {
    header: HeaderValue,
    /// When to fetch a new one; `None` when the endpoint gave no `expires_in`.
    renew_at: Option<Instant>,
}

/// Client credentials and the current token.
pub struct OAuth2 {
    token_url: reqwest::Url,
    client_id: String,
    secret_file: PathBuf,
    scope: Option<String>,
    token: Option<Token>,
}

impl std::fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("secret_file", &self.secret_file)
            .field("scope", &self.scope)
            .field("has_token", &self.token.is_some())
            .finish()
    }
}

impl OAuth2 {
    /// Check the settings; no request is made until the first delivery.
    pub fn new(
        token_url: Option<&str>,
        client_id: Option<&str>,
        secret_file: Option<&std::path::Path>,
        scope: Option<&str>,
    ) -> Result<OAuth2, DeliverError> {
        let setup = DeliverError::Setup;
        let need = |k: &str| setup(format!("output.auth.{k}: required for oauth2"));
        let raw = token_url.ok_or_else(|| need("token_url"))?;
        let token_url =
            super::http_url(raw).map_err(|e| setup(format!("output.auth.token_url: {e}")))?;
        let client_id = client_id.ok_or_else(|| need("client_id"))?.to_owned();
        let secret_file = secret_file
            .ok_or_else(|| need("client_secret_file"))?
            .to_path_buf();
        // Fail at start-up, not at the first Bundle, when the secret cannot be read.
        read_secret(&secret_file)
            .map_err(|e| setup(format!("output.auth.client_secret_file: {e}")))?;
        Ok(OAuth2 {
            token_url,
            client_id,
            secret_file,
            scope: scope.map(str::to_owned),
            token: None,
        })
    }

    /// The current `Authorization` value, if a token is held.
    pub fn header(&self) -> Option<&HeaderValue> {
        self.token.as_ref().map(|t| &t.header)
    }

    /// Forget the token (after a 401): the next [`OAuth2::ensure`] fetches a new one.
    pub fn invalidate(&mut self) {
        self.token = None;
    }

    /// Does the token need fetching before the next request?
    pub fn needs_token(&self, now: Instant) -> bool {
        match &self.token {
            None => true,
            Some(t) => t.renew_at.is_some_and(|at| now >= at),
        }
    }

    /// Fetch a token unless a fresh one is held.
    pub async fn ensure(
        &mut self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(), TokenError> {
        if !self.needs_token(Instant::now()) {
            return Ok(());
        }
        let issued = Instant::now();
        let (token, expires_in) = self.fetch(client, timeout).await?;
        let renew_at = renew_at(issued, expires_in);
        self.token = Some(Token {
            header: token,
            renew_at,
        });
        tracing::debug!(
            token_url = %self.token_url,
            expires_in_s = expires_in.map(|d| d.as_secs()),
            "OAuth2 access token obtained"
        );
        Ok(())
    }

    async fn fetch(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(HeaderValue, Option<Duration>), TokenError> {
        let url = self.token_url.as_str();
        let secret = read_secret(&self.secret_file).map_err(TokenError::Refused)?;
        let credentials = format!(
            "{}:{}",
            utf8_percent_encode(&self.client_id, FORM),
            utf8_percent_encode(secret.trim_end_matches(['\r', '\n']), FORM)
        );
        let mut basic = HeaderValue::try_from(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
        .map_err(|_| TokenError::Refused("output.auth: client credentials unusable".into()))?;
        basic.set_sensitive(true);
        let mut form = String::from("grant_type=client_credentials");
        if let Some(scope) = &self.scope {
            form.push_str("&scope=");
            form.push_str(&utf8_percent_encode(scope, FORM).to_string());
        }
        let sent = client
            .post(self.token_url.clone())
            .header(header::AUTHORIZATION, basic)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .timeout(timeout)
            .body(form)
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let e = e.without_url();
                return Err(TokenError::Transient(format!(
                    "token endpoint {url}: {}",
                    super::error_chain(&e)
                )));
            }
        };
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_RESPONSE_BYTES {
                break;
            }
        }
        token_answer(url, status, &body)
    }
}

/// What a token endpoint's answer (`status`, `body`) gives: the `Authorization` header and
/// the token's lifetime, or why not. Pure, so that every answer can be tried (fuzz target
/// `http`).
pub fn token_answer(
    url: &str,
    status: u16,
    body: &[u8],
) -> Result<(HeaderValue, Option<Duration>), TokenError> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        // The OAuth `error` code (e.g. invalid_client) is safe to log; descriptions may
        // echo request data, so they are left out.
        let code = json
            .as_ref()
            .and_then(|v| v["error"].as_str())
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        let reason = format!("token endpoint {url}: HTTP {status}{code}");
        return Err(match status {
            408 | 429 | 500..=599 => TokenError::Transient(reason),
            _ => TokenError::Refused(reason),
        });
    }
    let Some(json) = json else {
        return Err(TokenError::Transient(format!(
            "token endpoint {url}: HTTP {status} without a JSON body"
        )));
    };
    let token = json["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            TokenError::Transient(format!("token endpoint {url}: answer without access_token"))
        })?;
    if let Some(t) = json["token_type"].as_str()
        && !t.eq_ignore_ascii_case("bearer")
    {
        tracing::warn!(
            token_url = url,
            token_type = t,
            "token_type is not Bearer; sending it as a Bearer token"
        );
    }
    let expires_in = match &json["expires_in"] {
        serde_json::Value::Number(n) => n.as_u64(),
        // Some servers send it as a string.
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .map(Duration::from_secs);
    let mut header = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
        TokenError::Transient(format!(
            "token endpoint {url}: access_token not usable in an HTTP header"
        ))
    })?;
    header.set_sensitive(true);
    Ok((header, expires_in))
}

/// When a token issued at `issued` that lives `expires_in` is fetched again: a margin
/// (a tenth of its life, at most [`MAX_MARGIN`]) before it expires; `None` (kept until a
/// 401) when it does not expire or its lifetime runs past what an `Instant` can hold (an
/// endpoint may answer any number: `Instant + Duration` would panic).
pub fn renew_at(issued: Instant, expires_in: Option<Duration>) -> Option<Instant> {
    let e = expires_in?;
    issued.checked_add(e.saturating_sub((e / 10).min(MAX_MARGIN)))
}

fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if s.trim().is_empty() {
        return Err(format!("{}: the secret file is empty", path.display()));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_stated_lifetime_schedules_a_renewal_without_panicking() {
        // An endpoint answering `"expires_in": 18446744073709551615` made `Instant +
        // Duration` overflow and panic the delivery task (found in the #16 audit; the fuzz
        // target `http` tries every lifetime).
        let body =
            br#"{"access_token":"t","token_type":"Bearer","expires_in":18446744073709551615}"#;
        let (header, expires_in) = token_answer("https://idp", 200, body).unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer t");
        assert_eq!(expires_in, Some(Duration::from_secs(u64::MAX)));
        assert_eq!(renew_at(Instant::now(), expires_in), None);
        let now = Instant::now();
        let at = renew_at(now, Some(Duration::from_secs(3600))).unwrap();
        assert_eq!(at, now + Duration::from_secs(3570));
        assert_eq!(renew_at(now, None), None);
        assert!(matches!(
            token_answer("https://idp", 429, b""),
            Err(TokenError::Transient(_))
        ));
        assert!(matches!(
            token_answer("https://idp", 401, br#"{"error":"invalid_client"}"#),
            Err(TokenError::Refused(r)) if r.contains("invalid_client")
        ));
    }

    #[test]
    fn form_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            utf8_percent_encode("a b:c/é*-._", FORM).to_string(),
            "a%20b%3Ac%2F%C3%A9*-._"
        );
    }

    #[test]
    fn oauth2_setup_errors_name_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("secret");
        let e = OAuth2::new(None, Some("c"), Some(&secret), None).unwrap_err();
        assert!(e.to_string().contains("output.auth.token_url"), "{e}");
        let e = OAuth2::new(Some("ftp://x/"), Some("c"), Some(&secret), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("expected an http:// or https:// URL, not ftp"),
            "{e}"
        );
        let e = OAuth2::new(Some("http://x/t"), None, Some(&secret), None).unwrap_err();
        assert!(e.to_string().contains("client_id"), "{e}");
        let e = OAuth2::new(Some("http://x/t"), Some("c"), Some(&secret), None).unwrap_err();
        assert!(e.to_string().contains("client_secret_file"), "{e}");
        std::fs::write(&secret, "s3cr3t-value\n").unwrap();
        let o = OAuth2::new(Some("http://x/t"), Some("c"), Some(&secret), Some("a b")).unwrap();
        assert!(o.needs_token(Instant::now()));
        assert!(!format!("{o:?}").contains("s3cr3t"));
    }
}

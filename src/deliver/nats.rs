//! `type = "nats"`: every AuditEvent of a Bundle is published to a JetStream stream.
//!
//! Each event is one message, its id in the `Nats-Msg-Id` header: JetStream drops a second
//! message with the same id inside the stream's duplicate window, so a resend after a crash or
//! a lost publish ack does not store the event twice. The publishes of a batch are pipelined
//! (all sent, then their acks awaited); the batch is settled, and the spool may acknowledge
//! it, only when every event's publish ack arrived. A missing ack (timeout, no responders
//! while the stream has no leader, a dropped connection) fails the whole batch, which is
//! published again after the backoff: the events already stored come back as duplicates and
//! are dropped by the server.
//!
//! [`connect`] is shared with the NATS source (`crate::source::nats`).

use super::backoff::Backoff;
use super::{DeliverError, Delivery, error_chain};
use crate::batch::Batch;
use crate::config::{NatsConfig, OutputConfig};
use crate::events;
use crate::metrics::Health;
use crate::shutdown::Shutdown;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{HeaderMap, ServerAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The header JetStream de-duplicates by.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The header carrying the event's pattern name, so a forwarder counts events by pattern.
pub const PATTERN: &str = "Balp-Pattern";

/// The subject events are published to when `subject` is not set.
pub const DEFAULT_SUBJECT: &str = "balp.audit.{hostname}";

/// Parse `servers` (each `nats://`, `tls://` or `host:port`).
pub fn server_addrs(servers: &[String]) -> Result<Vec<ServerAddr>, String> {
    if servers.is_empty() {
        return Err("servers: at least one server URL is needed".into());
    }
    servers
        .iter()
        .map(|s| {
            s.parse::<ServerAddr>()
                .map_err(|e| format!("servers: {s:?} is not a NATS server URL: {e}"))
        })
        .collect()
}

/// The subject for this host: `{hostname}` replaced, dots in the host name turned into `_`
/// (a dot separates subject tokens).
pub fn subject_for(template: Option<&str>, hostname: &str) -> String {
    let host: String = hostname
        .chars()
        .map(|c| match c {
            '.' | ' ' | '*' | '>' => '_',
            c => c,
        })
        .collect();
    template
        .unwrap_or(DEFAULT_SUBJECT)
        .replace("{hostname}", &host)
}

fn read_secret(path: &Path, key: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("{key} {}: {e}", path.display()))
}

/// Connect to the cluster with the configured credentials and TLS. `name` shows in the
/// server's connection list. The client reconnects by itself after this returns.
pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
    timeout: Duration,
) -> Result<async_nats::Client, String> {
    let addrs = server_addrs(&cfg.servers)?;
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(timeout)
        .request_timeout(Some(timeout));
    if let Some(f) = &cfg.credentials_file {
        opts = opts
            .credentials_file(f)
            .await
            .map_err(|e| format!("credentials_file {}: {e}", f.display()))?;
    }
    if let Some(f) = &cfg.nkey_seed_file {
        opts = opts.nkey(read_secret(f, "nkey_seed_file")?);
    }
    if let Some(f) = &cfg.token_file {
        opts = opts.token(read_secret(f, "token_file")?);
    }
    if let Some(user) = &cfg.username {
        let pass = match &cfg.password_file {
            Some(f) => read_secret(f, "password_file")?,
            None => return Err("username needs password_file".into()),
        };
        opts = opts.user_and_password(user.clone(), pass);
    }
    if cfg.tls.insecure_skip_verify {
        return Err("tls.insecure_skip_verify is not supported for NATS: set tls.ca_file".into());
    }
    if let Some(ca) = &cfg.tls.ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&cfg.tls.client_cert_file, &cfg.tls.client_key_file) {
        (Some(cert), Some(key)) => {
            opts = opts
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        (None, None) => {}
        _ => return Err("tls: client_cert_file and client_key_file go together".into()),
    }
    opts.connect(addrs)
        .await
        .map_err(|e| format!("connect to {}: {}", cfg.servers.join(","), error_chain(&e)))
}

/// Publishes AuditEvents to JetStream (see the module doc).
#[derive(Debug)]
pub struct NatsOutput {
    cfg: NatsConfig,
    subject: String,
    target: String,
    timeout: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    /// Connected lazily (and again after a failed connect), so a cluster that is down at
    /// start only delays delivery.
    js: Option<jetstream::Context>,
    /// The configured stream was found once (checked again after each new connection).
    stream_checked: bool,
    health: Option<Arc<Health>>,
}

impl NatsOutput {
    /// Build from `[output]` and `[output.nats]`; `hostname` fills `{hostname}`.
    pub fn new(o: &OutputConfig, hostname: &str) -> Result<NatsOutput, DeliverError> {
        let Some(cfg) = o.nats.clone() else {
            return Err(DeliverError::Setup(
                "output.nats: required when output.type = \"nats\"".into(),
            ));
        };
        server_addrs(&cfg.servers).map_err(|e| DeliverError::Setup(format!("output.nats.{e}")))?;
        let subject = subject_for(cfg.subject.as_deref(), hostname);
        if subject.is_empty() || subject.contains(['*', '>', ' ']) || subject.contains("..") {
            return Err(DeliverError::Setup(format!(
                "output.nats.subject: {subject:?} is not a subject to publish to"
            )));
        }
        Ok(NatsOutput {
            target: format!("nats:{}", subject),
            subject,
            timeout: o.timeout.0,
            initial_backoff: o.retry.initial_backoff.0,
            max_backoff: o.retry.max_backoff.0,
            cfg,
            js: None,
            stream_checked: false,
            health: None,
        })
    }

    /// Report outcomes to `/health` and `/metrics`.
    pub fn set_health(&mut self, health: Arc<Health>) {
        self.health = Some(health);
    }

    /// Publish every event of the batch until all are acknowledged, retrying the whole batch
    /// (the server drops what it already has) until the stop signal.
    pub async fn deliver(
        &mut self,
        batch: &Batch,
        shutdown: &Shutdown,
    ) -> Result<Delivery, DeliverError> {
        let id = batch.id().to_string();
        let mut backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        let mut failed_once = false;
        loop {
            match self.publish_all(batch).await {
                Ok(duplicates) => {
                    if let Some(h) = &self.health {
                        h.delivery_ok();
                    }
                    if duplicates > 0 {
                        tracing::debug!(bundle = %id, duplicates, "events already in the stream were dropped by its duplicate window");
                    }
                    events::bundle_sent(&id, batch.events.len(), &self.target);
                    return Ok(Delivery::Accepted);
                }
                Err(reason) => {
                    if let Some(h) = &self.health {
                        h.delivery_failed(&reason);
                    }
                    if !failed_once {
                        failed_once = true;
                        events::bundle_failed();
                    }
                    let wait = backoff.next_delay();
                    events::retry(
                        &id,
                        &self.target,
                        &reason,
                        u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    );
                    if !wait_or_stop(wait, shutdown).await {
                        return Ok(Delivery::Interrupted);
                    }
                }
            }
        }
    }

    /// One attempt: connect if needed, send every publish, then await every ack. Returns how
    /// many the stream reported as duplicates.
    async fn publish_all(&mut self, batch: &Batch) -> Result<usize, String> {
        let js = self.context().await?;
        let mut acks = Vec::with_capacity(batch.events.len());
        for e in &batch.events {
            let mut headers = HeaderMap::new();
            headers.insert(MSG_ID, e.id.to_string().as_str());
            headers.insert(PATTERN, e.pattern);
            let payload = bytes::Bytes::from(e.json.clone());
            let ack = js
                .publish_with_headers(self.subject.clone(), headers, payload)
                .await
                .map_err(|err| self.describe(&err, &err.kind()))?;
            acks.push(ack);
        }
        let mut duplicates = 0;
        for ack in acks {
            match ack.await {
                Ok(a) if a.duplicate => duplicates += 1,
                Ok(_) => {}
                Err(err) => return Err(self.describe(&err, &err.kind())),
            }
        }
        Ok(duplicates)
    }

    fn describe(&self, err: &dyn std::error::Error, kind: &PublishErrorKind) -> String {
        let what = match kind {
            PublishErrorKind::StreamNotFound => format!(
                "no stream takes subject {:?} (no responders: the stream does not exist or has no leader right now)",
                self.subject
            ),
            PublishErrorKind::TimedOut => format!(
                "no publish ack within {:?} (output.timeout): the stream may be electing a leader",
                self.timeout
            ),
            PublishErrorKind::BrokenPipe => "connection to NATS lost before the publish ack".into(),
            PublishErrorKind::MaxPayloadExceeded => {
                "an event is larger than the server's max_payload".into()
            }
            _ => error_chain(err),
        };
        format!("JetStream publish to {:?}: {what}", self.subject)
    }

    /// The JetStream context, connecting (and checking the stream) first if needed.
    async fn context(&mut self) -> Result<jetstream::Context, String> {
        if self.js.is_none() {
            let client = connect(&self.cfg, "balp-agent", self.timeout).await?;
            let js = jetstream::ContextBuilder::new()
                .timeout(self.timeout)
                .build(client);
            self.js = Some(js);
            self.stream_checked = false;
        }
        let Some(js) = self.js.clone() else {
            return Err("not connected".into());
        };
        if !self.stream_checked
            && let Some(name) = &self.cfg.stream
        {
            let stream = js.get_stream(name).await.map_err(|e| {
                format!(
                    "stream {name:?} not available (create it first, see docs/fleet.md): {}",
                    error_chain(&e)
                )
            })?;
            let subjects = &stream.cached_info().config.subjects;
            if !subjects
                .iter()
                .any(|pattern| subject_matches(pattern, &self.subject))
            {
                return Err(format!(
                    "stream {name:?} does not take subject {:?} (its subjects: {})",
                    self.subject,
                    subjects.join(", ")
                ));
            }
            self.stream_checked = true;
        }
        Ok(js)
    }
}

/// Does the NATS subject `pattern` (with `*` and `>` wildcards) match `subject`?
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_like_nats_wildcards() {
        assert!(subject_matches("balp.audit.>", "balp.audit.host1"));
        assert!(subject_matches("balp.audit.*", "balp.audit.host1"));
        assert!(!subject_matches("balp.audit.*", "balp.audit.a.b"));
        assert!(subject_matches("balp.audit.a.b", "balp.audit.a.b"));
        assert!(!subject_matches("balp.audit", "balp.audit.x"));
        assert!(!subject_matches("balp.audit.>", "balp.audit"));
    }

    #[test]
    fn the_hostname_fills_the_subject_without_dots() {
        assert_eq!(
            subject_for(None, "web1.example.org"),
            "balp.audit.web1_example_org"
        );
        assert_eq!(subject_for(Some("a.{hostname}.x"), "h"), "a.h.x");
        assert_eq!(subject_for(Some("fixed"), "h"), "fixed");
    }

    #[test]
    fn servers_must_be_given_and_parse() {
        assert!(server_addrs(&[]).is_err());
        assert!(server_addrs(&["nats://127.0.0.1:4222".into()]).is_ok());
        assert!(server_addrs(&["tls://nats.example.org:4222".into()]).is_ok());
        assert!(server_addrs(&["http://[::1".into()]).is_err());
    }

    #[test]
    fn an_output_without_its_table_is_a_setup_error() {
        let o = OutputConfig::default();
        let e = NatsOutput::new(&o, "h").unwrap_err().to_string();
        assert!(e.contains("output.nats"), "{e}");
    }
}

//! `[[sources]] type = "nats"`: a forwarder takes AuditEvents from a JetStream durable pull
//! consumer and delivers them like its own.
//!
//! Every message is one AuditEvent as an agent's NATS output published it. It is checked
//! (JSON, `resourceType` AuditEvent, a UUID `id`) and enters the spool unchanged, with its
//! id: no parsing or mapping, so a redelivered message becomes the very same event. A message
//! that fails the check is logged and terminated (`+TERM`: JetStream never delivers it again);
//! nothing in it could ever become a valid event.
//!
//! The NATS ack is the last step. The message's reply subject is handed to the [`Acker`]
//! together with the spool seq its event got; the delivery task tells the acker which seqs
//! the spool acknowledged (after the ARR's 2xx) and only then is `+ACK` sent. While an event
//! waits (ARR down, a long backlog), the acker sends progress acks (`+WPI`) every third of
//! `ack_wait`, so JetStream does not hand it to another forwarder meanwhile. After a crash
//! the messages that were not acked are redelivered (to this forwarder after its restart or
//! to another one sharing the consumer) and this forwarder's spool sends what it held: the
//! ARR sees the same event ids again, which a batch/transaction Bundle's `PUT AuditEvent/<id>`
//! makes harmless.

use crate::balp::EventRecord;
use crate::config::{NatsConfig, SourceConfig};
use crate::shutdown::Shutdown;
use crate::source::{SourceMsg, StreamId};
use async_nats::Subject;
use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Message stream errors in a row after which the source connects and binds again.
const MAX_STREAM_ERRORS: u32 = 20;

/// Prefix of the stream keys of NATS sources.
const KEY_PREFIX: &str = "nats:";

/// Is this the key of a NATS stream (no read position: JetStream keeps it)?
pub fn is_nats_key(key: &str) -> bool {
    key.starts_with(KEY_PREFIX)
}

/// One event taken from the stream, with what is needed to acknowledge it later.
#[derive(Debug)]
pub struct Forwarded {
    /// `nats:<stream>/<consumer>` of the source.
    pub stream: Arc<StreamId>,
    /// The message's sequence in the JetStream stream (recorded as the event's origin).
    pub stream_seq: u64,
    /// The event as published.
    pub record: EventRecord,
    /// Where its ack goes.
    pub ack: AckHandle,
}

/// A message's reply subject and the connection to send its ack on.
#[derive(Debug, Clone)]
pub struct AckHandle {
    client: async_nats::Client,
    /// Which connection `client` is (numbered per connect), to flush each one once.
    conn: usize,
    reply: Subject,
}

/// Numbers connections for [`AckHandle::conn`].
static CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl AckHandle {
    async fn send(&self, kind: &'static [u8]) {
        if let Err(e) = self
            .client
            .publish(self.reply.clone(), bytes::Bytes::from_static(kind))
            .await
        {
            // A lost ack means a redelivery of an event already delivered: same id, no loss.
            tracing::warn!(error = %e, "could not send a JetStream ack; the message will be redelivered");
        }
    }
}

/// Holds the acks of spooled NATS events until the spool acknowledges them (see module doc).
#[derive(Debug, Default)]
pub struct Acker {
    held: Mutex<BTreeMap<u64, AckHandle>>,
}

impl Acker {
    /// A new acker, shared by the ingest loop, the delivery task and the progress ticker.
    pub fn new() -> Arc<Acker> {
        Arc::new(Acker::default())
    }

    /// The event with spool seq `seq` came from the message acked by `ack`.
    pub fn hold(&self, seq: u64, ack: AckHandle) {
        self.lock().insert(seq, ack);
    }

    /// The spool acknowledged every seq up to `seq`: ack their messages.
    pub fn settled(&self, seq: u64) {
        let done = {
            let mut held = self.lock();
            let rest = held.split_off(&(seq + 1));
            std::mem::replace(&mut *held, rest)
        };
        if done.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let mut clients: Vec<(usize, async_nats::Client)> = Vec::new();
            for ack in done.values() {
                ack.send(b"+ACK").await;
                if !clients.iter().any(|(n, _)| *n == ack.conn) {
                    clients.push((ack.conn, ack.client.clone()));
                }
            }
            for (_, c) in clients {
                // Written out now rather than with the next publish: a stop right after
                // would otherwise lose them (and cause redeliveries).
                let _ = c.flush().await;
            }
        });
    }

    /// How many events wait for their ack.
    pub fn held(&self) -> usize {
        self.lock().len()
    }

    /// Send a progress ack for every held event, so `ack_wait` restarts for each.
    async fn progress(&self) {
        let handles: Vec<AckHandle> = self.lock().values().cloned().collect();
        for h in &handles {
            h.send(b"+WPI").await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, AckHandle>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a message is not an event.
fn check(payload: &[u8]) -> Result<Uuid, String> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "resourceType")]
        resource_type: Option<String>,
        id: Option<String>,
    }
    let head: Head =
        serde_json::from_slice(payload).map_err(|e| format!("not a JSON object: {e}"))?;
    match head.resource_type.as_deref() {
        Some("AuditEvent") => {}
        Some(other) => return Err(format!("resourceType {other:?}, not AuditEvent")),
        None => return Err("no resourceType".into()),
    }
    let id = head.id.ok_or("no id")?;
    Uuid::parse_str(&id).map_err(|_| format!("id {id:?} is not a UUID"))
}

/// Start the source: a task that reads the consumer until the stop signal, and one that
/// sends progress acks.
pub fn spawn(
    source: &SourceConfig,
    tx: mpsc::Sender<SourceMsg>,
    shutdown: Shutdown,
    acker: Arc<Acker>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let cfg = source
        .nats
        .clone()
        .ok_or_else(|| invalid("a nats source needs [sources.nats]".into()))?;
    let stream = cfg
        .stream
        .clone()
        .ok_or_else(|| invalid("nats.stream: required for a nats source".into()))?;
    let consumer = cfg
        .consumer
        .clone()
        .ok_or_else(|| invalid("nats.consumer: required for a nats source".into()))?;
    crate::deliver::nats::server_addrs(&cfg.servers).map_err(|e| invalid(format!("nats.{e}")))?;
    let id = Arc::new(StreamId {
        source: Arc::from(source.name.as_str()),
        key: format!("{KEY_PREFIX}{stream}/{consumer}"),
        path: format!("nats:{stream}/{consumer}").into(),
    });
    let reader = Reader {
        cfg,
        stream,
        consumer,
        id,
        tx,
        shutdown,
        acker,
    };
    Ok(tokio::spawn(reader.run()))
}

struct Reader {
    cfg: NatsConfig,
    stream: String,
    consumer: String,
    id: Arc<StreamId>,
    tx: mpsc::Sender<SourceMsg>,
    shutdown: Shutdown,
    acker: Arc<Acker>,
}

/// Why reading stopped.
enum Ended {
    Stop,
    Failed(String),
}

impl Reader {
    async fn run(self) {
        let ticker = {
            let acker = self.acker.clone();
            let every = (self.cfg.ack_wait.0 / 3).max(Duration::from_millis(100));
            let mut stop = self.shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => acker.progress().await,
                        _ = stop.wait() => return,
                    }
                }
            })
        };
        let mut backoff = crate::deliver::backoff::Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
        );
        loop {
            match self.read().await {
                Ended::Stop => break,
                Ended::Failed(reason) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(
                        source = %self.id.source,
                        stream = %self.stream,
                        consumer = %self.consumer,
                        %reason,
                        retry_in_ms = wait.as_millis() as u64,
                        "NATS source: reading the consumer failed; retrying"
                    );
                    let mut stop = self.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait() => break,
                    }
                }
            }
        }
        ticker.abort();
    }

    /// Connect, bind to the consumer and read until the stop signal or an error.
    async fn read(&self) -> Ended {
        let timeout = Duration::from_secs(10);
        let client =
            match crate::deliver::nats::connect(&self.cfg, "balp-agent forwarder", timeout).await {
                Ok(c) => c,
                Err(e) => return Ended::Failed(e),
            };
        let conn = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client.clone());
        let stream = match js.get_stream(&self.stream).await {
            Ok(s) => s,
            Err(e) => {
                return Ended::Failed(format!(
                    "stream {:?}: {}",
                    self.stream,
                    crate::deliver::error_chain(&e)
                ));
            }
        };
        let config = pull::Config {
            durable_name: Some(self.consumer.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.cfg.ack_wait.0,
            max_ack_pending: self.cfg.max_ack_pending,
            filter_subject: self.cfg.subject_filter.clone().unwrap_or_default(),
            ..Default::default()
        };
        let consumer = match stream.get_or_create_consumer(&self.consumer, config).await {
            Ok(c) => c,
            Err(e) => {
                return Ended::Failed(format!(
                    "consumer {:?}: {}",
                    self.consumer,
                    crate::deliver::error_chain(&e)
                ));
            }
        };
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(self.cfg.batch.max(1))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => return Ended::Failed(crate::deliver::error_chain(&e)),
        };
        tracing::info!(source = %self.id.source, stream = %self.stream, consumer = %self.consumer, "NATS source reading");
        let mut stop = self.shutdown.clone();
        let mut errors = 0u32;
        loop {
            let first = tokio::select! {
                m = messages.next() => m,
                _ = stop.wait() => return Ended::Stop,
            };
            let mut batch = Vec::new();
            let mut next = first;
            loop {
                match next {
                    None => return Ended::Failed("the message stream ended".into()),
                    Some(Err(e)) => {
                        // Missed heartbeats and the like while a node is down: the stream
                        // goes on by itself. Errors in a row (the consumer deleted, say)
                        // mean binding again.
                        errors += 1;
                        tracing::debug!(error = %e, errors, "NATS source: message stream error");
                        if errors >= MAX_STREAM_ERRORS {
                            return Ended::Failed(format!(
                                "{errors} message stream errors in a row, the last: {e}"
                            ));
                        }
                    }
                    Some(Ok(m)) => {
                        errors = 0;
                        if let Some(f) = self.take(&client, conn, m).await {
                            batch.push(f);
                        }
                    }
                }
                if batch.len() >= self.cfg.batch.max(1) {
                    break;
                }
                // Take what is already there without waiting, so events travel in chunks.
                next = tokio::select! {
                    biased;
                    m = messages.next() => m,
                    _ = std::future::ready(()) => break,
                };
            }
            if !batch.is_empty() && self.tx.send(SourceMsg::Events(batch)).await.is_err() {
                return Ended::Stop;
            }
        }
    }

    /// Turn a message into an event, or terminate it if it cannot be one.
    async fn take(
        &self,
        client: &async_nats::Client,
        conn: usize,
        m: jetstream::Message,
    ) -> Option<Forwarded> {
        let Some(reply) = m.reply.clone() else {
            tracing::warn!(
                "NATS source: a message without a reply subject (not from JetStream?) is skipped"
            );
            return None;
        };
        let ack = AckHandle {
            client: client.clone(),
            conn,
            reply,
        };
        let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        let id = match check(&m.payload) {
            Ok(id) => id,
            Err(reason) => {
                tracing::error!(
                    source = %self.id.source,
                    stream = %self.stream,
                    stream_seq,
                    subject = %m.subject,
                    %reason,
                    "NATS source: message is not an AuditEvent; terminated (never redelivered)"
                );
                ack.send(b"+TERM").await;
                return None;
            }
        };
        let json = match std::str::from_utf8(&m.payload) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                // serde_json accepted it, so it is UTF-8; kept for completeness.
                ack.send(b"+TERM").await;
                return None;
            }
        };
        let pattern = m
            .headers
            .as_ref()
            .and_then(|h| h.get(crate::deliver::nats::PATTERN))
            .map_or("unknown", |v| crate::spool::static_pattern(v.as_str()));
        Some(Forwarded {
            stream: self.id.clone(),
            stream_seq,
            record: EventRecord {
                id,
                pattern,
                json,
                leaf: None,
            },
            ack,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_audit_events_with_a_uuid_id_pass() {
        let id = "0b4fd4a4-8d8c-4b5d-9a1f-6a2f0a2b3c4d";
        let ok = format!(r#"{{"resourceType":"AuditEvent","id":"{id}","x":[1]}}"#);
        assert_eq!(check(ok.as_bytes()).unwrap().to_string(), id);
        for (bad, why) in [
            ("not json", "JSON"),
            (r#"[1,2]"#, "JSON"),
            (r#"{"resourceType":"Patient","id":"x"}"#, "Patient"),
            (r#"{"id":"x"}"#, "resourceType"),
            (r#"{"resourceType":"AuditEvent"}"#, "no id"),
            (r#"{"resourceType":"AuditEvent","id":"abc"}"#, "UUID"),
        ] {
            let e = check(bad.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn nats_keys_are_recognised() {
        assert!(is_nats_key("nats:AUDIT/fwd"));
        assert!(!is_nats_key("file:1:2:3"));
    }
}

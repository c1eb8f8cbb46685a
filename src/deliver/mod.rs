//! Delivery: a [`Batch`] becomes a FHIR Bundle and goes to the configured output.
//!
//! * `directory`: one file per Bundle, written atomically (tmp → fsync → rename → fsync dir).
//! * `stdout`: one Bundle per line.
//! * `http`: POST to the ARR, with retry (see [`http`]).
//! * `nats`: publish each event to a JetStream stream, with retry (see [`nats`]).
//!
//! [`Output::deliver`] returns only when the batch is settled: every event accepted, or
//! accepted but for the events rejected for their content, which are dead-lettered
//! ([`Delivery::DeadLettered`]). Transient failures and pauses are retried inside, forever,
//! until the stop signal, which returns [`Delivery::Interrupted`] so that positions are not
//! advanced. A batch without events (positions only) is settled at once and sends nothing.
//! [`OutputStatus`] tells, from any task, whether delivery is paused and why.

pub mod backoff;
pub mod deadletter;
pub mod directory;
pub mod http;
pub mod nats;
pub mod oauth2;
pub mod stdout;

use crate::batch::Batch;
use crate::config::{BundleType, Config, OutputType};
use crate::shutdown::Shutdown;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The output took the Bundle (2xx, or file written and fsynced).
    Accepted,
    /// The batch is settled, but the ARR rejected some events for their content; each was
    /// written to the dead-letter area (one single-event Bundle per file with the answer).
    DeadLettered {
        /// HTTP status of the first rejection.
        status: u16,
        /// The first dead letter written (also `files[0]`).
        path: PathBuf,
        /// Events the output accepted.
        accepted: usize,
        /// Events dead-lettered (`accepted + dead_lettered` = the batch's events).
        dead_lettered: usize,
        /// Every dead letter written, in order.
        files: Vec<PathBuf>,
    },
    /// The stop signal came before the Bundle was accepted; nothing may be checkpointed.
    Interrupted,
}

impl Delivery {
    /// Is the batch settled (its positions may advance)?
    pub fn is_settled(&self) -> bool {
        !matches!(self, Delivery::Interrupted)
    }

    /// How many events were dead-lettered.
    pub fn dead_lettered(&self) -> usize {
        match self {
            Delivery::DeadLettered { dead_lettered, .. } => *dead_lettered,
            _ => 0,
        }
    }
}

/// Shared view of the output's state, readable from other tasks (health).
#[derive(Debug, Clone, Default)]
pub struct OutputStatus {
    paused: Arc<Mutex<Option<String>>>,
}

impl OutputStatus {
    /// Why delivery is paused (persistent 401, configuration error, token endpoint refusing
    /// the client), or `None` while it runs.
    pub fn paused_reason(&self) -> Option<String> {
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Set or clear the pause reason.
    pub(crate) fn set_paused(&self, reason: Option<String>) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }
}

/// Errors that stop delivery for good (the agent exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The output could not be set up from the config.
    #[error("output: {0}")]
    Setup(String),
    /// Writing locally (directory output, dead letters) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The configured output.
#[derive(Debug)]
pub enum Output {
    /// `type = "directory"`.
    Directory {
        /// The writer.
        out: directory::DirectoryOutput,
        /// Bundle type to emit.
        bundle_type: BundleType,
    },
    /// `type = "stdout"`.
    Stdout {
        /// The writer.
        out: stdout::StdoutOutput,
        /// Bundle type to emit.
        bundle_type: BundleType,
    },
    /// `type = "http"`.
    Http(Box<http::HttpOutput>),
    /// `type = "nats"`.
    Nats(Box<nats::NatsOutput>),
}

impl Output {
    /// Build the output from `[output]` (and `agent.state_dir` for dead letters).
    pub fn from_config(config: &Config) -> Result<Output, DeliverError> {
        let o = &config.output;
        match o.output_type {
            OutputType::Directory => {
                let path = o.path.as_deref().ok_or_else(|| {
                    DeliverError::Setup(
                        "output.path: required when output.type = \"directory\"".into(),
                    )
                })?;
                Ok(Output::Directory {
                    out: directory::DirectoryOutput::new(path)?,
                    bundle_type: o.bundle_type,
                })
            }
            OutputType::Stdout => Ok(Output::Stdout {
                out: stdout::StdoutOutput::default(),
                bundle_type: o.bundle_type,
            }),
            OutputType::Http => Ok(Output::Http(Box::new(http::HttpOutput::new(
                o,
                &config.agent.state_dir,
            )?))),
            OutputType::Nats => Ok(Output::Nats(Box::new(nats::NatsOutput::new(
                o,
                &config.hostname(),
            )?))),
        }
    }

    /// Why delivery is paused, if it is (only the HTTP output pauses).
    pub fn paused_reason(&self) -> Option<String> {
        match self {
            Output::Http(out) => out.status().paused_reason(),
            _ => None,
        }
    }

    /// A handle for reading the state while [`Output::deliver`] runs in another task.
    pub fn status(&self) -> OutputStatus {
        match self {
            Output::Http(out) => out.status(),
            _ => OutputStatus::default(),
        }
    }

    /// Report delivery outcomes to `health` (`/health`, `/metrics`). Only the HTTP output
    /// can fail without failing for good, so the others ignore it.
    pub fn set_health(&mut self, health: std::sync::Arc<crate::metrics::Health>) {
        match self {
            Output::Http(out) => out.set_health(health),
            Output::Nats(out) => out.set_health(health),
            _ => {}
        }
    }

    /// Deliver one batch (see the module doc for when this returns).
    pub async fn deliver(
        &mut self,
        batch: &Batch,
        shutdown: &Shutdown,
    ) -> Result<Delivery, DeliverError> {
        if batch.events.is_empty() {
            return Ok(Delivery::Accepted);
        }
        let started = std::time::Instant::now();
        let settled = self.deliver_events(batch, shutdown).await?;
        if settled != Delivery::Interrupted {
            crate::events::delivery_latency(started.elapsed().as_secs_f64());
        }
        Ok(settled)
    }

    async fn deliver_events(
        &mut self,
        batch: &Batch,
        shutdown: &Shutdown,
    ) -> Result<Delivery, DeliverError> {
        match self {
            Output::Directory { out, bundle_type } => {
                let id = batch.id().to_string();
                let json = batch.bundle_json(*bundle_type);
                let path = out.write(&id, json).await?;
                crate::events::bundle_sent(&id, batch.events.len(), &path.to_string_lossy());
                Ok(Delivery::Accepted)
            }
            Output::Stdout { out, bundle_type } => {
                let id = batch.id().to_string();
                out.write(batch.bundle_json(*bundle_type)).await?;
                crate::events::bundle_sent(&id, batch.events.len(), "stdout");
                Ok(Delivery::Accepted)
            }
            Output::Http(out) => out.deliver(batch, shutdown).await,
            Output::Nats(out) => out.deliver(batch, shutdown).await,
        }
    }
}

/// An ARR or token endpoint URL: absolute, http or https, with a host. The one rule both
/// `check` and the outputs apply.
pub fn http_url(raw: &str) -> Result<reqwest::Url, String> {
    match reqwest::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u),
        Ok(u) => Err(format!(
            "{raw:?}: expected an http:// or https:// URL, not {}:",
            u.scheme()
        )),
        Err(e) => Err(format!("invalid URL {raw:?}: {e}")),
    }
}

/// The rule for `[output.tls]`'s client certificate: its file and its key go together.
pub fn client_pair_complete(has_cert: bool, has_key: bool) -> Result<(), &'static str> {
    if has_cert == has_key {
        Ok(())
    } else {
        Err("client_cert_file and client_key_file go together")
    }
}

/// An error and its sources, joined by ": " (reqwest and rustls keep the cause in the
/// sources; their `Display` alone says only "error sending request").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balp::EventRecord;
    use crate::config::OutputConfig;
    use uuid::Uuid;

    pub(crate) fn batch(ids: std::ops::Range<u128>) -> Batch {
        Batch {
            events: ids
                .map(|n| {
                    let id = Uuid::from_u128(n);
                    EventRecord {
                        id,
                        pattern: "read",
                        json: format!(r#"{{"resourceType":"AuditEvent","id":"{id}"}}"#),
                        leaf: None,
                    }
                })
                .collect(),
            ..Batch::default()
        }
    }

    fn dir_config(path: &std::path::Path) -> Config {
        Config {
            output: OutputConfig {
                output_type: OutputType::Directory,
                path: Some(path.to_path_buf()),
                ..OutputConfig::default()
            },
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn directory_output_writes_the_bundle_of_the_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let mut out = Output::from_config(&dir_config(tmp.path())).unwrap();
        let b = batch(1..3);
        let got = out.deliver(&b, &Shutdown::never()).await.unwrap();
        assert_eq!(got, Delivery::Accepted);
        let files: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.ends_with(&format!("-{}.json", b.id())), "{name}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
        assert_eq!(v["id"], b.id().to_string());
        assert_eq!(v["type"], "collection");
        assert_eq!(v["entry"].as_array().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn batch_without_events_is_accepted_without_output() {
        let tmp = tempfile::tempdir().unwrap();
        let mut out = Output::from_config(&dir_config(tmp.path())).unwrap();
        let got = out.deliver(&Batch::default(), &Shutdown::never()).await;
        assert_eq!(got.unwrap(), Delivery::Accepted);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn missing_directory_path_or_url_is_a_setup_error() {
        let mut c = Config::default();
        c.output.output_type = OutputType::Directory;
        c.output.path = None;
        let e = Output::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("output.path"), "{e}");
        c.output.output_type = OutputType::Http;
        let e = Output::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("output.url"), "{e}");
    }
}

//! Delivery: a [`Batch`] becomes a FHIR Bundle and goes to the configured output.
//!
//! * `directory`: one file per Bundle, written atomically (tmp → fsync → rename → fsync dir).
//! * `stdout`: one Bundle per line.
//! * `http`: POST to the ARR, with retry (see [`http`]).
//!
//! [`Output::deliver`] returns only when the batch is settled: accepted, or rejected for its
//! content and dead-lettered. Transient failures are retried inside, forever, until the stop
//! signal, which returns [`Delivery::Interrupted`] so that positions are not advanced.
//! A batch without events (positions only) is settled at once and sends nothing.

pub mod backoff;
pub mod deadletter;
pub mod directory;
pub mod http;
pub mod stdout;

use crate::batch::Batch;
use crate::config::{BundleType, Config, OutputType};
use crate::decode::Stamp;
use crate::shutdown::Shutdown;

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The output took the Bundle (2xx, or file written and fsynced).
    Accepted,
    /// The ARR rejected the Bundle's content; it was written to the dead-letter area.
    DeadLettered {
        /// HTTP status of the rejection.
        status: u16,
        /// Where the dead letter was written.
        path: std::path::PathBuf,
    },
    /// The stop signal came before the Bundle was accepted; nothing may be checkpointed.
    Interrupted,
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
        }
    }

    /// Report delivery outcomes to `health` (`/health`, `/metrics`). Only the HTTP output
    /// can fail without failing for good, so the others ignore it.
    pub fn set_health(&mut self, health: std::sync::Arc<crate::metrics::Health>) {
        if let Output::Http(out) = self {
            out.set_health(health);
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
                let json = batch.bundle_json(*bundle_type, &Stamp::now_utc());
                let path = out.write(&id, json).await?;
                crate::events::bundle_sent(&id, batch.events.len(), &path.to_string_lossy());
                Ok(Delivery::Accepted)
            }
            Output::Stdout { out, bundle_type } => {
                let id = batch.id().to_string();
                out.write(batch.bundle_json(*bundle_type, &Stamp::now_utc()))
                    .await?;
                crate::events::bundle_sent(&id, batch.events.len(), "stdout");
                Ok(Delivery::Accepted)
            }
            Output::Http(out) => out.deliver(batch, shutdown).await,
        }
    }
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

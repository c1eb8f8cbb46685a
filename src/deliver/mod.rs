//! Delivery: a [`Batch`] becomes a FHIR Bundle and goes to the configured output.
//!
//! * `directory`: one file per Bundle, written atomically (tmp → fsync → rename → fsync dir).
//! * `stdout`: one Bundle per line.
//! * `http`: POST to the ARR, with retry (see [`http`]).
//!
//! [`Output::deliver`] returns only when the batch is settled: accepted, or rejected for its
//! content and dead-lettered. Transient failures are retried inside, forever, until the stop
//! signal, which returns [`Delivery::Interrupted`] so that positions are not advanced.

use crate::batch::Batch;
use crate::config::Config;
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
pub struct Output {}

impl Output {
    /// Build the output from `[output]` (and `agent.state_dir` for dead letters).
    pub fn from_config(_config: &Config) -> Result<Output, DeliverError> {
        Ok(Output {})
    }

    /// Deliver one batch (see the module doc for when this returns).
    pub async fn deliver(
        &mut self,
        _batch: &Batch,
        _shutdown: &Shutdown,
    ) -> Result<Delivery, DeliverError> {
        Ok(Delivery::Accepted)
    }
}

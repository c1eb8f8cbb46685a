//! Starting the sources and waiting for them to end.

use super::PipelineError;
use crate::config::{Config, SourceType};
use crate::shutdown::Shutdown;
use crate::source::SourceMsg;
use crate::source::file::positions::Positions;
use tokio::sync::mpsc;

/// The running sources: threads (file, journald) and async tasks (syslog listeners).
pub(super) struct Started {
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Started {
    /// Sources that can catch up (files and journals; network sources never do).
    pub(super) fn replayable(&self) -> usize {
        self.threads.len()
    }

    /// Wait for every source to end (after the stop signal).
    pub(super) async fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a source thread panicked");
            }
        }
        for t in self.tasks {
            if t.await.is_err() {
                tracing::error!("a source task panicked");
            }
        }
    }
}

/// Start every configured source, each resuming from its saved position or cursor.
pub(super) fn start(
    config: &Config,
    positions: &Positions,
    line_tx: mpsc::Sender<SourceMsg>,
    shutdown: &Shutdown,
    once: bool,
    acker: &std::sync::Arc<crate::source::nats::Acker>,
) -> Result<Started, PipelineError> {
    let mut started = Started {
        threads: Vec::new(),
        tasks: Vec::new(),
    };
    for source in &config.sources {
        let source_error = |error| PipelineError::Source {
            source_name: source.name.clone(),
            error,
        };
        match source.source_type {
            SourceType::Syslog => {
                // Binds before returning, so READY means "listening".
                let (task, addr) =
                    crate::source::syslog::spawn(source, line_tx.clone(), shutdown.clone())
                        .map_err(source_error)?;
                tracing::info!(source = %source.name, %addr, "syslog source listening");
                started.tasks.push(task);
            }
            SourceType::Journald => {
                let cursor = positions.cursor(
                    &source.name,
                    &crate::source::journald::stream_key(&source.name),
                );
                let handle = crate::source::journald::spawn(
                    source,
                    cursor,
                    line_tx.clone(),
                    shutdown.clone(),
                    once,
                )
                .map_err(source_error)?;
                started.threads.push(handle);
            }
            SourceType::Nats => {
                let task = crate::source::nats::spawn(
                    source,
                    line_tx.clone(),
                    shutdown.clone(),
                    acker.clone(),
                )
                .map_err(source_error)?;
                started.tasks.push(task);
            }
            SourceType::File => {
                let known = positions.resume(&source.name);
                let handle = crate::source::file::spawn(
                    source,
                    known,
                    line_tx.clone(),
                    shutdown.clone(),
                    once,
                )
                .map_err(source_error)?;
                started.threads.push(handle);
            }
        }
    }
    Ok(started)
}

//! The pipeline wires the stages together and owns the read positions.
//!
//! ```text
//! sources ──SourceMsg──▶ ingest ──append, group commit (fsync)──▶ spool
//! (file, journald,       decode → parse → map                      │
//!  syslog)                 │                                        ▼
//!                          └─ positions advance          delivery: batch → deliver
//!                             after the fsync            ack after the ARR's 2xx
//! ```
//!
//! A line goes source → decode → parse → map → spool → batch → deliver:
//! * `ingest` runs each line (or joined multi-line record) through its source's
//!   [`SourceProcessor`] (decode → parse → map) and appends the AuditEvents to the spool.
//!   A line's read position advances only after the group commit that fsynced its events
//!   (or, for a line without events, every event before it); positions are saved to disk
//!   about once a second and may lag the spool, never lead it.
//! * `delivery` reads durable events from the spool, cuts them into Bundles, delivers
//!   them, and acknowledges a range in the spool only after the output accepted it (HTTP
//!   2xx, or dead-lettered) and every range before it; only acknowledged records are deleted.
//! * Syslog sources cannot be replayed: their lines never produce positions (see
//!   [`crate::source::syslog`]); they are durable once in the spool. Journald sources
//!   resume by cursor: the source sends a `Position` after the lines it covers, applied at
//!   the same commit as their events.
//! * Backpressure: when the spool is full the ingest loop stops taking lines, the bounded
//!   source channel fills and the sources block, so the log files are the overflow buffer.
//! * On the stop signal the sources stop, what was read is spooled and committed, the
//!   delivery task gets [`DRAIN_FOR`] to deliver it, and positions are persisted. What was
//!   not delivered stays in the spool for the next start.

mod delivery;
mod ingest;
mod process;
mod sources;

pub use process::{ProcStats, SourceProcessor, map_context, source_zone};

use crate::alert::AlertEngine;
use crate::balp::AppActivity;
use crate::batch::BatchPolicy;
use crate::config::Config;
use crate::deliver::{DeliverError, Output};
use crate::metrics::Health;
use crate::shutdown::ShutdownTrigger;
use crate::source::file::positions::{Positions, PositionsError};
use crate::source::{Checkpoint, SourceMsg, StreamId};
use crate::spool::{Spool, SpoolError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// How often accepted positions are written to disk while running.
pub(crate) const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// Group commit: uncommitted appends are fsynced at most this long after the first of them.
pub const COMMIT_EVERY: Duration = Duration::from_millis(50);
/// Group commit: ... or as soon as this many bytes are waiting. While one commit is written
/// the next fills up to this much, so about three such buffers exist at a time (512 KiB keeps
/// peak RSS where one 1 MiB buffer had it before commits ran beside ingest).
pub const COMMIT_BYTES: usize = 512 << 10;
/// On the stop signal, pending events get this long to be delivered (they stay spooled).
pub const DRAIN_FOR: Duration = Duration::from_secs(10);
/// Settled Bundles are acknowledged in the spool at most this often (and when idle).
pub const ACK_EVERY: Duration = Duration::from_millis(200);
/// A multi-line record whose stream stayed quiet this long is complete.
pub const JOIN_IDLE: Duration = Duration::from_secs(1);

/// Errors that stop the agent (it exits non-zero and systemd restarts it).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The config has problems that only show when building the pipeline.
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Config(Vec<String>),
    /// Read positions could not be loaded or saved.
    #[error(transparent)]
    Positions(#[from] PositionsError),
    /// The output failed for good.
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// A source could not be started.
    #[error("source {source_name}: {error}")]
    Source {
        /// The source name.
        source_name: String,
        /// What failed.
        error: std::io::Error,
    },
    /// The spool failed (a failed fsync is always fatal).
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A task panicked or vanished.
    #[error("internal: {0}")]
    Internal(String),
}

/// How `run` behaves.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Read what exists, deliver it, save positions, and exit (instead of following).
    pub once: bool,
    /// The pipeline restarts after a configuration reload: no Application Start is recorded.
    pub resumed: bool,
    /// Set when the stop is a reload: no Application Stop is recorded.
    pub reloading: Arc<std::sync::atomic::AtomicBool>,
}

/// The spool, shared by the ingest loop (append, commit) and the delivery task (read, ack).
#[derive(Clone)]
struct SharedSpool(Arc<Mutex<Spool>>);

impl SharedSpool {
    fn lock(&self) -> Result<MutexGuard<'_, Spool>, PipelineError> {
        self.0
            .lock()
            .map_err(|_| PipelineError::Internal("spool lock poisoned".into()))
    }

    /// Run blocking spool I/O without stalling the other tasks of the runtime.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Spool) -> Result<T, SpoolError>,
    ) -> Result<T, PipelineError> {
        tokio::task::block_in_place(|| {
            let mut guard = self.lock()?;
            f(&mut guard).map_err(PipelineError::from)
        })
    }
}

/// Run the agent until `shutdown` (or, with `once`, until everything present is delivered).
pub async fn run(
    config: Config,
    options: RunOptions,
    trigger: &ShutdownTrigger,
) -> Result<(), PipelineError> {
    let shutdown = trigger.subscribe();
    for w in config.secret_file_warnings() {
        tracing::warn!("{w}");
    }
    let (positions, spool, alerts) = open_state(&config)?;
    let processors = build_processors(&config)?;

    let health = Arc::new(Health::from_config(&config));
    let mut outputs = Vec::new();
    for _ in 0..config.output.max_in_flight.max(1) {
        let mut output = Output::from_config(&config)?;
        output.set_health(health.clone());
        outputs.push(output);
    }
    let (line_tx, mut line_rx) = mpsc::channel::<SourceMsg>(16);
    // NATS sources' acks wait here for the spool's acknowledgements.
    let acker = crate::source::nats::Acker::new();
    let started = sources::start(
        &config,
        &positions,
        line_tx,
        &shutdown,
        options.once,
        &acker,
    )?;

    let spool = SharedSpool(Arc::new(Mutex::new(spool)));
    let committed = Arc::new(Notify::new());
    let room = Arc::new(Notify::new());
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut delivery = tokio::spawn(delivery::delivery_task(delivery::DeliveryCtx {
        spool: spool.clone(),
        outputs,
        policy: BatchPolicy {
            max_events: config.output.max_events.max(1),
            max_bytes: config.output.max_bytes.0 as usize,
            flush_interval: config.output.flush_interval.0,
        },
        health: health.clone(),
        committed: committed.clone(),
        room: room.clone(),
        drain: drain_rx,
        shutdown: shutdown.clone(),
        inflight_path: config.agent.state_dir.join("inflight"),
        acker: acker.clone(),
    }));

    let metrics_task = match &config.metrics {
        Some(m) => {
            let (task, addr) = crate::metrics::serve(&m.listen, health.clone(), shutdown.clone())
                .await
                .map_err(|error| PipelineError::Source {
                    source_name: "metrics.listen".into(),
                    error,
                })?;
            tracing::info!(%addr, "metrics and health served");
            Some(task)
        }
        None => None,
    };

    let sealer = if config.tamper.enabled {
        let ctx = map_context(&config, "self", Vec::new());
        let sealer = crate::tamper::seal::Sealer::new(&config.agent.state_dir, ctx)
            .map_err(|e| PipelineError::Internal(e.to_string()))?;
        tracing::info!(key = %sealer.fingerprint(), "tamper evidence: leaves kept, seals signed with this key");
        Some(sealer)
    } else {
        None
    };
    let mut ingest = ingest::Ingest::new(
        &config,
        ingest::IngestParts {
            spool,
            committed,
            positions,
            processors,
            health,
            drain_tx,
            replayable_sources: started.replayable(),
            once: options.once,
            reloading: options.reloading.clone(),
            sealer,
            alerts,
            acker,
        },
    );
    // The agent audits its own start and stop like any other event.
    if !options.resumed {
        ingest.self_audit(AppActivity::Start)?;
    }
    // The spool is locked from here on: `spool status` reads this snapshot instead, so it
    // must exist from the start, not only after the first tick.
    ingest.persist_and_report()?;
    crate::systemd::notify("READY=1");
    tracing::info!(
        sources = config.sources.len(),
        state_dir = %config.agent.state_dir.display(),
        "balp-agent running"
    );

    let result = ingest
        .run(&mut line_rx, &mut delivery, &room, &shutdown)
        .await;

    crate::systemd::notify("STOPPING=1");
    // Make sure every source stops, whatever ended the loop.
    trigger.trigger();
    drop(line_rx);
    started.join().await;
    if let Some(t) = metrics_task {
        t.abort();
    }
    // The alert state first: saved positions never cover lines its windows do not.
    if ingest.save_alerts() {
        ingest.positions.persist()?;
    }
    if result.is_ok() {
        tracing::info!("balp-agent stopped cleanly");
    }
    result
}

/// Open the state directory: read positions, the spool and the alert state, and let
/// positions catch up with what the spool holds (the spool is the source of truth: a
/// position may lag the last fsynced record if the agent died between the spool commit and
/// the positions write) — but not past the lines the saved alert windows have seen, which
/// are read again instead (their events get the same ids).
fn open_state(config: &Config) -> Result<(Positions, Spool, Option<AlertEngine>), PipelineError> {
    let state_dir = &config.agent.state_dir;
    crate::private::create_dir(state_dir).map_err(|e| PositionsError::Io {
        op: "creating directory",
        path: state_dir.to_path_buf(),
        source: e,
    })?;
    let mut positions = Positions::load(state_dir)?;
    let opts = crate::spool::SpoolOptions {
        tree: config.tamper.enabled,
        // Acknowledged records stay until the saved positions cover their lines, so that
        // a crash right after a delivery does not read those lines again.
        gate_on_positions: true,
        ..crate::spool::SpoolOptions::of_config(&config.spool)
    };
    let (spool, recovered) =
        tokio::task::block_in_place(|| Spool::open_with(state_dir, &config.spool, opts))?;
    if recovered.quarantined > 0 || recovered.truncated_bytes > 0 || recovered.lost > 0 {
        tracing::error!(
            quarantined = recovered.quarantined,
            truncated_bytes = recovered.truncated_bytes,
            lost_events = recovered.lost,
            "spool damage found at start-up: bad records moved to spool/quarantine, the rest will be delivered"
        );
    }
    let alerts =
        AlertEngine::open(config, state_dir, spool.next_seq()).map_err(PipelineError::Config)?;
    let mut alerts = (!alerts.is_empty()).then_some(alerts);
    if recovered.pending_events > 0 {
        tracing::info!(
            pending = recovered.pending_events,
            "spooled events from the last run will be delivered"
        );
    }
    for ((source, key), (path, end)) in &recovered.positions {
        if config.source(source).is_none() {
            continue; // requeued dead letters, or a source removed from the config
        }
        if crate::source::nats::is_nats_key(key) {
            continue; // JetStream keeps the consumer's position
        }
        if crate::source::journald::is_journald_key(key) {
            // A journal line's offset is a hash of its cursor, not an ordered position; the
            // cursor itself lives only in the positions file (which never runs ahead of the
            // spool, so lagging just re-reads entries into id-identical events).
            continue;
        }
        let known = positions.known(source).get(key).copied();
        let mut end = *end;
        if let Some(a) = alerts.as_mut()
            && let Some(cap) = a.position_cap(source, key)
        {
            let cap = cap.max(known.unwrap_or(0));
            if cap < end {
                // Those lines go through the rules again; their events are spooled already.
                a.replay(source, key, end);
                end = cap;
            }
        }
        let end = &end;
        if known.is_none_or(|k| k < *end) {
            positions.apply(&Checkpoint {
                stream: Arc::new(StreamId {
                    source: Arc::from(source.as_str()),
                    key: key.clone(),
                    path: path.clone(),
                }),
                offset: *end,
                cursor: None,
            });
        }
    }
    if positions.is_dirty() {
        // Saved now: the spool keeps the records behind them only until the next ack.
        positions.persist()?;
    }
    Ok((positions, spool, alerts))
}

/// Decode → parse → map for every source; every problem at once.
fn build_processors(config: &Config) -> Result<HashMap<Arc<str>, SourceProcessor>, PipelineError> {
    let mut processors = HashMap::new();
    let mut problems = Vec::new();
    for source in &config.sources {
        if source.source_type == crate::config::SourceType::Nats {
            continue; // forwards finished events: nothing to decode, parse or map
        }
        match SourceProcessor::build(config, source) {
            Ok(p) => {
                processors.insert(Arc::from(source.name.as_str()), p);
            }
            Err(mut e) => problems.append(&mut e),
        }
    }
    if problems.is_empty() {
        Ok(processors)
    } else {
        Err(PipelineError::Config(problems))
    }
}

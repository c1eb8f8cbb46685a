//! The pipeline wires the stages together and owns the read positions.
//!
//! ```text
//! file threads ─SourceMsg─▶ process loop ─Batch─▶ delivery task
//!                              ▲   (decode → parse → map → batch)   │
//!                              └──────────── ack (in order) ─────────┘
//! ```
//!
//! Guarantees:
//! * A read position advances only when the output has accepted every event made from the
//!   lines before it (batches are delivered and acknowledged in order; a batch carries the
//!   positions of the lines whose events it holds, and of event-less lines read while it
//!   was filling).
//! * Syslog sources (async tasks beside the file threads) cannot be replayed: their lines
//!   never produce positions (see [`crate::source::syslog`]).
//! * Backpressure: the delivery queue is bounded; when it is full the process loop stops
//!   taking lines and the file threads block, so the log files are the overflow buffer.
//! * On the stop signal the sources stop, what was read is batched and handed to the output,
//!   and positions of accepted batches are persisted before exit. A batch that could not be
//!   delivered before the stop leaves its positions untouched, so it is read again at start.

use crate::balp::{self, EventRecord, LineRef, MapContext};
use crate::batch::{Batch, Batcher};
use crate::config::{Config, SourceConfig, SourceType};
use crate::decode::Decoder;
use crate::deliver::{DeliverError, Delivery, Output};
use crate::events;
use crate::parse::engine::{LineOutcome, ParserSet};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::source::file::positions::{Positions, PositionsError};
use crate::source::{Checkpoint, LogLine, SourceMsg};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often accepted positions are written to disk while running.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

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
    /// A task panicked or vanished.
    #[error("internal: {0}")]
    Internal(String),
}

/// Per-source counts, as shown by `balp-agent test`.
#[derive(Debug, Default, Clone)]
pub struct ProcStats {
    /// Lines seen.
    pub lines: u64,
    /// Events made.
    pub events: u64,
    /// Lines no parser matched.
    pub unmatched: u64,
    /// Lines that did not fit the decoder (still passed to the parsers).
    pub malformed: u64,
    /// Lines matched, per parser.
    pub matched: BTreeMap<Arc<str>, u64>,
}

/// Decode → parse → map for one source: used by `run` and, identically, by `test`.
pub struct SourceProcessor {
    decoder: Decoder,
    parsers: ParserSet,
    tz: TimeZone,
    ctx: MapContext,
    /// Counts so far.
    pub stats: ProcStats,
}

/// The zone a source uses for stamps without offset: configured, else the system's.
pub fn source_zone(source: &SourceConfig) -> Result<TimeZone, String> {
    match &source.timezone {
        Some(name) => TimeZone::get(name).map_err(|e| {
            format!(
                "sources.{}.timezone: unknown zone {name:?}: {e}",
                source.name
            )
        }),
        None => Ok(TimeZone::system()),
    }
}

impl SourceProcessor {
    /// Build the stages for `source`.
    pub fn build(config: &Config, source: &SourceConfig) -> Result<SourceProcessor, Vec<String>> {
        let tz = source_zone(source).map_err(|e| vec![e])?;
        let decoder = Decoder::for_source(source, &tz).map_err(|e| vec![e])?;
        let parsers = ParserSet::build(&source.parsers, &config.parsers).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| format!("sources.{}.parsers: {p}", source.name))
                .collect::<Vec<_>>()
        })?;
        let hostname = config.hostname();
        let observer_display = config
            .agent
            .observer
            .display
            .clone()
            .unwrap_or_else(|| format!("balp-agent@{hostname}"));
        let ctx = MapContext {
            hostname,
            source: source.name.clone(),
            observer_display,
            site: config.agent.observer.site.clone(),
            source_type: config.agent.observer.type_code.clone(),
            mode: config.agent.mode,
            fhir_bases: source.fhir_bases(),
            event_id_extension: config.agent.event_id_extension.clone(),
        };
        Ok(SourceProcessor {
            decoder,
            parsers,
            tz,
            ctx,
            stats: ProcStats::default(),
        })
    }

    /// The parsers of this source, in order.
    pub fn parser_names(&self) -> Vec<Arc<str>> {
        self.parsers.parser_names()
    }

    /// All events one line yields (none, one, or one per patient), in order.
    pub fn process(&mut self, line: &LogLine, now: Timestamp) -> Vec<EventRecord> {
        self.stats.lines += 1;
        let decoded = self.decoder.decode(&line.text, now);
        if decoded.malformed {
            self.stats.malformed += 1;
        }
        match self.parsers.parse(&decoded, &self.tz) {
            LineOutcome::Unmatched => {
                self.stats.unmatched += 1;
                events::unmatched(&self.ctx.source);
                Vec::new()
            }
            LineOutcome::Matched { parser, extracted } => {
                *self.stats.matched.entry(parser).or_default() += 1;
                let Some(extracted) = extracted else {
                    return Vec::new();
                };
                let position = line.position();
                let lref = LineRef {
                    position: &position,
                    flags: line.flags,
                };
                let made = balp::map::map_extracted(&self.ctx, &extracted, lref);
                self.stats.events += made.len() as u64;
                made.iter()
                    .map(|ev| {
                        events::event(extracted.pattern.as_str());
                        balp::to_record(ev, extracted.pattern)
                    })
                    .collect()
            }
        }
    }
}

/// How `run` behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Read what exists, deliver it, save positions, and exit (instead of following).
    pub once: bool,
}

/// Run the agent until `shutdown` (or, with `once`, until everything present is delivered).
pub async fn run(
    config: Config,
    options: RunOptions,
    trigger: &ShutdownTrigger,
) -> Result<(), PipelineError> {
    let shutdown = trigger.subscribe();
    create_private_dir(&config.agent.state_dir)?;
    let mut positions = Positions::load(&config.agent.state_dir)?;

    let mut processors: HashMap<Arc<str>, SourceProcessor> = HashMap::new();
    let mut problems = Vec::new();
    for source in &config.sources {
        match SourceProcessor::build(&config, source) {
            Ok(p) => {
                processors.insert(Arc::from(source.name.as_str()), p);
            }
            Err(mut e) => problems.append(&mut e),
        }
        if source.source_type == SourceType::Journald {
            problems.push(format!(
                "sources.{}.type: {:?} sources are not implemented yet",
                source.name, source.source_type
            ));
        }
    }
    if !problems.is_empty() {
        return Err(PipelineError::Config(problems));
    }

    let output = Output::from_config(&config)?;
    let (line_tx, mut line_rx) = mpsc::channel::<SourceMsg>(16);
    let mut threads = Vec::new();
    let mut tasks = Vec::new();
    for source in &config.sources {
        let source_error = |error| PipelineError::Source {
            source_name: source.name.clone(),
            error,
        };
        if source.source_type == SourceType::Syslog {
            // Binds before returning, so READY below means "listening".
            let (task, addr) =
                crate::source::syslog::spawn(source, line_tx.clone(), shutdown.clone())
                    .map_err(source_error)?;
            tracing::info!(source = %source.name, %addr, "syslog source listening");
            tasks.push(task);
            continue;
        }
        let known = positions.known(&source.name);
        let handle = crate::source::file::spawn(
            source,
            known,
            line_tx.clone(),
            shutdown.clone(),
            options.once,
        )
        .map_err(source_error)?;
        threads.push(handle);
    }
    drop(line_tx);
    crate::systemd::notify("READY=1");
    tracing::info!(
        sources = config.sources.len(),
        state_dir = %config.agent.state_dir.display(),
        "balp-agent running"
    );

    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(4);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Ack>();
    let delivery = tokio::spawn(delivery_task(output, batch_rx, ack_tx, shutdown.clone()));

    let mut batcher = Batcher::new(config.output.max_events, config.output.max_bytes.0 as usize);
    let flush_every = config.output.flush_interval.0;
    // When the oldest pending item of the current batch must go out (flush_interval after it
    // arrived); None while the batcher is empty.
    let mut flush_at: Option<tokio::time::Instant> = None;
    let mut persist_tick = tokio::time::interval(PERSIST_EVERY);
    persist_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_persist = Instant::now();
    // Only file sources ever catch up; network sources have no "everything present".
    let mut pending_sources = threads.len();
    let mut batch_tx = Some(batch_tx);
    let mut sources_open = true;
    if options.once && pending_sources == 0 {
        sources_open = false;
        finish(&mut batcher, &mut batch_tx).await;
    }
    let mut delivery = delivery;

    let delivery_result = loop {
        tokio::select! {
            biased;
            Some(ack) = ack_rx.recv() => {
                ack.apply(&mut positions);
                if last_persist.elapsed() >= PERSIST_EVERY {
                    persist(&mut positions);
                    last_persist = Instant::now();
                }
            }
            msg = line_rx.recv(), if sources_open => {
                match msg {
                    Some(SourceMsg::Lines(lines)) => {
                        events::lines_read(lines.len() as u64);
                        let now = Timestamp::now();
                        for line in &lines {
                            let Some(proc_) = processors.get_mut(&line.stream.source) else {
                                continue;
                            };
                            for record in proc_.process(line, now) {
                                if let Some(full) = batcher.push(record) {
                                    flush_at = None;
                                    send_batch(&mut batch_tx, full).await;
                                }
                            }
                            // Syslog streams cannot be replayed: there is no position to keep.
                            if !crate::source::syslog::is_syslog_stream(&line.stream) {
                                batcher.checkpoint(&line.stream, line.end);
                            }
                        }
                        arm_flush(&mut flush_at, &batcher, flush_every);
                    }
                    Some(SourceMsg::Position(cp)) => {
                        batcher.checkpoint(&cp.stream, cp.offset);
                        arm_flush(&mut flush_at, &batcher, flush_every);
                    }
                    Some(SourceMsg::Forget(stream)) => {
                        // Forgotten only when everything read before is accepted.
                        batcher.forget(&stream);
                        arm_flush(&mut flush_at, &batcher, flush_every);
                    }
                    Some(SourceMsg::CaughtUp(_)) => {
                        pending_sources = pending_sources.saturating_sub(1);
                        if options.once && pending_sources == 0 {
                            sources_open = false;
                            finish(&mut batcher, &mut batch_tx).await;
                        }
                    }
                    None => {
                        // Every source thread has ended (stop signal): drain into the output.
                        sources_open = false;
                        finish(&mut batcher, &mut batch_tx).await;
                    }
                }
            }
            _ = sleep_until_opt(flush_at), if sources_open => {
                flush_at = None;
                if let Some(b) = batcher.flush() {
                    send_batch(&mut batch_tx, b).await;
                }
            }
            _ = persist_tick.tick() => {
                if positions.is_dirty() && last_persist.elapsed() >= PERSIST_EVERY {
                    persist(&mut positions);
                    last_persist = Instant::now();
                }
            }
            res = &mut delivery => {
                // Collect the acks sent before the task ended, then stop.
                while let Ok(ack) = ack_rx.try_recv() {
                    ack.apply(&mut positions);
                }
                break match res {
                    Ok(r) => r,
                    Err(e) => Err(PipelineError::Internal(format!("delivery task: {e}"))),
                };
            }
        }
    };

    // Delivery stopped: on error or interruption, make the sources stop too.
    crate::systemd::notify("STOPPING=1");
    trigger.trigger();
    drop(line_rx);
    for t in threads {
        if t.join().is_err() {
            tracing::error!("a source thread panicked");
        }
    }
    for t in tasks {
        if t.await.is_err() {
            tracing::error!("a source task panicked");
        }
    }
    positions.persist()?;
    let result = delivery_result;
    if result.is_ok() {
        tracing::info!("balp-agent stopped cleanly");
    }
    result
}

/// Start the flush clock when the batcher holds something and the clock is not running.
fn arm_flush(flush_at: &mut Option<tokio::time::Instant>, batcher: &Batcher, every: Duration) {
    if batcher.is_empty() {
        *flush_at = None;
    } else if flush_at.is_none() {
        *flush_at = Some(tokio::time::Instant::now() + every);
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn send_batch(tx: &mut Option<mpsc::Sender<Batch>>, batch: Batch) {
    if let Some(sender) = tx
        && sender.send(batch).await.is_err()
    {
        // The delivery task ended (error or stop); its result is reported by the loop.
        *tx = None;
    }
}

/// Hand over the last partial batch and close the queue so the delivery task ends.
async fn finish(batcher: &mut Batcher, tx: &mut Option<mpsc::Sender<Batch>>) {
    if let Some(b) = batcher.flush() {
        send_batch(tx, b).await;
    }
    *tx = None;
}

fn persist(positions: &mut Positions) {
    if let Err(e) = positions.persist() {
        events::position_write_failed("positions", &e.to_string());
    }
}

/// What an accepted batch makes safe.
struct Ack {
    checkpoints: Vec<Checkpoint>,
    forgets: Vec<Arc<crate::source::StreamId>>,
}

impl Ack {
    fn apply(&self, positions: &mut Positions) {
        for cp in &self.checkpoints {
            positions.apply(cp);
        }
        for stream in &self.forgets {
            positions.forget(stream);
        }
    }
}

async fn delivery_task(
    mut output: Output,
    mut rx: mpsc::Receiver<Batch>,
    acks: mpsc::UnboundedSender<Ack>,
    shutdown: Shutdown,
) -> Result<(), PipelineError> {
    while let Some(batch) = rx.recv().await {
        match output.deliver(&batch, &shutdown).await? {
            Delivery::Accepted | Delivery::DeadLettered { .. } => {
                let ack = Ack {
                    checkpoints: batch.checkpoints,
                    forgets: batch.forgets,
                };
                if acks.send(ack).is_err() {
                    return Ok(());
                }
            }
            Delivery::Interrupted => {
                tracing::warn!(
                    pending_events = batch.events.len(),
                    "stopped before the output accepted every event; they will be read again at the next start"
                );
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Create a directory (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(path: &std::path::Path) -> Result<(), PositionsError> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| PositionsError::Io {
            op: "creating directory",
            path: path.to_path_buf(),
            source: e,
        })
}

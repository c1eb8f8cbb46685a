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
//! * Journald sources (threads running `journalctl`) resume by cursor: the source sends a
//!   `Position` carrying the cursor after the lines it covers, so it is queued behind their
//!   events and applied only after the spool commit, like a file offset.
//! * Backpressure: the delivery queue is bounded; when it is full the process loop stops
//!   taking lines and the file threads block, so the log files are the overflow buffer.
//! * On the stop signal the sources stop, what was read is batched and handed to the output,
//!   and positions of accepted batches are persisted before exit. A batch that could not be
//!   delivered before the stop leaves its positions untouched, so it is read again at start.

use crate::balp::AppActivity;
use crate::balp::{self, EventRecord, LineRef, MapContext};
use crate::batch::{Batch, BatchPolicy};
use crate::config::{Config, SourceConfig, SourceType};
use crate::decode::multiline::{self, Joiner, Multiline};
use crate::decode::{Decoder, Stamp};
use crate::deliver::{DeliverError, Delivery, Output};
use crate::events;
use crate::metrics::Health;
use crate::parse::engine::{LineOutcome, ParserSet};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::source::file::positions::{Positions, PositionsError};
use crate::source::{Checkpoint, LogLine, SourceMsg, StreamId};
use crate::spool::{Origin, Spool, SpoolError, admin};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, watch};

/// How often accepted positions are written to disk while running.
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// Group commit: uncommitted appends are fsynced at most this long after the first of them.
pub const COMMIT_EVERY: Duration = Duration::from_millis(50);
/// Group commit: ... or as soon as this many bytes are waiting.
pub const COMMIT_BYTES: usize = 1 << 20;
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
    /// Lines a parser's `fold` rule folded into an earlier event (also in `matched`).
    pub folded: u64,
    /// Lines with an event whose time could not be read from the line (events flagged).
    pub time_unreadable: u64,
    /// Lines matched, per parser.
    pub matched: BTreeMap<Arc<str>, u64>,
}

/// Decode → parse → map for one source: used by `run` and, identically, by `test`.
pub struct SourceProcessor {
    decoder: Decoder,
    /// The source's parsers, comma-joined (the label of unmatched-line counts).
    parser_list: String,
    /// Whether a captured X-Forwarded-For may name the client (`trust_forwarded_for`).
    trust_forwarded_for: bool,
    parsers: ParserSet,
    tz: TimeZone,
    ctx: MapContext,
    /// Counts so far.
    pub stats: ProcStats,
}

/// The zone a source uses for stamps without offset: configured, else the system's.
pub fn source_zone(source: &SourceConfig) -> Result<TimeZone, String> {
    match &source.timezone {
        Some(name) => {
            crate::decode::zone(name).map_err(|e| format!("sources.{}.timezone: {e}", source.name))
        }
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
        let ctx = map_context(config, &source.name, source.fhir_bases());
        Ok(SourceProcessor {
            decoder,
            parser_list: source.parsers.join(","),
            trust_forwarded_for: source.trust_forwarded_for,
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
                events::unmatched_by(&self.ctx.source, &self.parser_list);
                Vec::new()
            }
            LineOutcome::Folded { parser } => {
                events::folded(&self.ctx.source, &parser);
                self.stats.folded += 1;
                *self.stats.matched.entry(parser).or_default() += 1;
                Vec::new()
            }
            LineOutcome::Matched { parser, extracted } => {
                *self.stats.matched.entry(parser).or_default() += 1;
                let Some(mut extracted) = extracted else {
                    return Vec::new();
                };
                if !self.trust_forwarded_for {
                    // Spoofable unless a trusted proxy sets it: only the peer address counts.
                    extracted
                        .fields
                        .set(crate::parse::FieldName::ForwardedFor, "");
                }
                let position = line.position();
                let lref = LineRef {
                    position: &position,
                    flags: line.flags,
                };
                if extracted.time_unreadable {
                    self.stats.time_unreadable += 1;
                    events::time_unreadable(&self.ctx.source, &extracted.parser, &position);
                }
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

/// The mapping context of one source (or of the agent itself, for self-audit events).
pub fn map_context(config: &Config, source: &str, fhir_bases: Vec<String>) -> MapContext {
    let hostname = config.hostname();
    let observer_display = config
        .agent
        .observer
        .display
        .clone()
        .unwrap_or_else(|| format!("balp-agent@{hostname}"));
    MapContext {
        hostname,
        source: source.to_owned(),
        observer_display,
        site: config.agent.observer.site.clone(),
        source_type: config.agent.observer.type_code.clone(),
        mode: config.agent.mode,
        fhir_bases,
        event_id_extension: config.agent.event_id_extension.clone(),
    }
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

impl RunOptions {
    fn reloading(&self) -> bool {
        self.reloading.load(std::sync::atomic::Ordering::SeqCst)
    }
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
    let state_dir = config.agent.state_dir.clone();
    crate::private::create_dir(&state_dir).map_err(|e| PositionsError::Io {
        op: "creating directory",
        path: state_dir.to_path_buf(),
        source: e,
    })?;
    let mut positions = Positions::load(&state_dir)?;
    let (spool, recovered) =
        tokio::task::block_in_place(|| Spool::open(&state_dir, &config.spool))?;
    if recovered.quarantined > 0 || recovered.truncated_bytes > 0 {
        tracing::error!(
            quarantined = recovered.quarantined,
            truncated_bytes = recovered.truncated_bytes,
            "spool damage found at start-up: bad records moved to spool/quarantine, the rest will be delivered"
        );
    }
    if recovered.pending_events > 0 {
        tracing::info!(
            pending = recovered.pending_events,
            "spooled events from the last run will be delivered"
        );
    }
    // The spool is the source of truth: a position may lag the last fsynced record if the
    // agent died between the spool commit and the positions write.
    for ((source, key), (path, end)) in &recovered.positions {
        if config.source(source).is_none() {
            continue; // requeued dead letters, or a source removed from the config
        }
        if crate::source::journald::is_journald_key(key) {
            // A journal line's offset is a hash of its cursor, not an ordered position; the
            // cursor itself lives only in the positions file (which never runs ahead of the
            // spool, so lagging just re-reads entries into id-identical events).
            continue;
        }
        let known = positions.known(source).get(key).copied();
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

    let mut processors: HashMap<Arc<str>, SourceProcessor> = HashMap::new();
    let mut problems = Vec::new();
    for source in &config.sources {
        match SourceProcessor::build(&config, source) {
            Ok(p) => {
                processors.insert(Arc::from(source.name.as_str()), p);
            }
            Err(mut e) => problems.append(&mut e),
        }
    }
    if !problems.is_empty() {
        return Err(PipelineError::Config(problems));
    }

    let mut output = Output::from_config(&config)?;
    let health = Arc::new(Health::from_config(&config));
    output.set_health(health.clone());
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
        if source.source_type == SourceType::Journald {
            let cursor = positions.cursor(
                &source.name,
                &crate::source::journald::stream_key(&source.name),
            );
            let handle = crate::source::journald::spawn(
                source,
                cursor,
                line_tx.clone(),
                shutdown.clone(),
                options.once,
            )
            .map_err(source_error)?;
            threads.push(handle);
            continue;
        }
        let known = positions.resume(&source.name);
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

    let spool = SharedSpool(Arc::new(Mutex::new(spool)));
    let committed = Arc::new(Notify::new());
    let room = Arc::new(Notify::new());
    let (drain_tx, drain_rx) = watch::channel(false);
    let policy = BatchPolicy {
        max_events: config.output.max_events.max(1),
        max_bytes: config.output.max_bytes.0 as usize,
        flush_interval: config.output.flush_interval.0,
    };
    let mut outputs = vec![output];
    for _ in 1..config.output.max_in_flight.max(1) {
        let mut more = Output::from_config(&config)?;
        more.set_health(health.clone());
        outputs.push(more);
    }
    let mut delivery = tokio::spawn(delivery_task(DeliveryCtx {
        spool: spool.clone(),
        outputs,
        policy,
        health: health.clone(),
        committed: committed.clone(),
        room: room.clone(),
        drain: drain_rx,
        shutdown: shutdown.clone(),
        inflight_path: state_dir.join("inflight"),
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

    // The agent audits its own start and stop like any other event.
    let self_ctx = map_context(&config, "self", Vec::new());
    let boot_id = Timestamp::now().as_millisecond().to_string();
    if !options.resumed {
        spool_self_audit(&spool, &self_ctx, AppActivity::Start, &boot_id)?;
    }

    let watchdog = crate::systemd::watchdog_interval();
    crate::systemd::notify("READY=1");
    tracing::info!(
        sources = config.sources.len(),
        state_dir = %state_dir.display(),
        "balp-agent running"
    );

    let mut ingest = Ingest {
        spool: spool.clone(),
        committed: committed.clone(),
        pending: Vec::new(),
        uncommitted_bytes: 0,
        commit_at: None,
        multiline: config
            .sources
            .iter()
            .filter(|s| s.multiline != Multiline::None)
            .map(|s| {
                (
                    Arc::from(s.name.as_str()),
                    (s.multiline, s.max_line_bytes.0 as usize),
                )
            })
            .collect(),
        joiners: HashMap::new(),
    };
    let mut joiner_tick = tokio::time::interval(JOIN_IDLE / 2);
    joiner_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut persist_tick = tokio::time::interval(PERSIST_EVERY);
    persist_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requeue_tick = tokio::time::interval(admin::REQUEUE_EVERY);
    requeue_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max_events = config.output.max_events;
    // Only file and journal sources ever catch up; network sources have no "everything present".
    let mut pending_sources = threads.len();
    let mut sources_open = !(options.once && pending_sources == 0);
    if !sources_open {
        let _ = drain_tx.send(true);
    }
    let mut full_since: Option<Instant> = None;
    let mut stop = shutdown.clone();
    let mut stopping = false;

    let result: Result<(), PipelineError> = loop {
        let has_room = match spool.lock() {
            Ok(s) => s.has_room(),
            Err(e) => break Err(e),
        };
        if !has_room && full_since.is_none() {
            full_since = Some(Instant::now());
            tracing::warn!(
                "spool full (spool.max_bytes or disk free space): sources paused until events are delivered"
            );
        } else if has_room && let Some(since) = full_since.take() {
            tracing::info!(
                paused_ms = since.elapsed().as_millis() as u64,
                "spool has room again: sources resumed"
            );
        }
        tokio::select! {
            biased;
            res = &mut delivery => {
                break match res {
                    Ok(r) => r,
                    Err(e) => Err(PipelineError::Internal(format!("delivery task: {e}"))),
                };
            }
            _ = stop.wait(), if !stopping => {
                stopping = true;
                // Sources stop on the same signal; their last lines still arrive below.
            }
            _ = sleep_until_opt(ingest.commit_at) => {
                if let Err(e) = ingest.commit(&mut positions) {
                    break Err(e);
                }
            }
            _ = room.notified(), if !has_room => {}
            // While full, look again now and then: free disk space can change by itself.
            _ = tokio::time::sleep(Duration::from_millis(250)), if !has_room => {}
            msg = line_rx.recv(), if sources_open && has_room => {
                let step = match msg {
                    Some(SourceMsg::Lines(lines)) => {
                        events::lines_read(lines.len() as u64);
                        let now = Timestamp::now();
                        ingest.lines(&lines, &mut processors, now)
                    }
                    Some(SourceMsg::Position(cp)) => {
                        ingest.pending.push(PendingPosition::At(cp));
                        ingest.arm();
                        Ok(())
                    }
                    Some(SourceMsg::Forget(stream)) => {
                        ingest.pending.push(PendingPosition::Forget(stream));
                        ingest.arm();
                        Ok(())
                    }
                    Some(SourceMsg::CaughtUp(_)) => {
                        pending_sources = pending_sources.saturating_sub(1);
                        if options.once && pending_sources == 0 {
                            sources_open = false;
                            // Files are complete: a record waiting for a continuation is done.
                            ingest
                                .flush_joiners(None, &mut processors, Timestamp::now())
                                .and_then(|()| spool_self_audit(&spool, &self_ctx, AppActivity::Stop, &boot_id))
                                .and_then(|()| ingest.force_commit(&mut positions))
                                .map(|()| {
                                    let _ = drain_tx.send(true);
                                })
                        } else {
                            Ok(())
                        }
                    }
                    None => {
                        // Every source has ended (stop signal): spool the rest, then drain.
                        // A multi-line record still open is not flushed: its position was not
                        // advanced, so the next start reads it whole.
                        sources_open = false;
                        let stop_event = if options.reloading() {
                            Ok(())
                        } else {
                            spool_self_audit(&spool, &self_ctx, AppActivity::Stop, &boot_id)
                        };
                        stop_event
                            .and_then(|()| ingest.force_commit(&mut positions))
                            .map(|()| {
                                let _ = drain_tx.send(true);
                            })
                    }
                };
                if let Err(e) = step {
                    break Err(e);
                }
                if ingest.uncommitted_bytes >= COMMIT_BYTES
                    && let Err(e) = ingest.commit(&mut positions)
                {
                    break Err(e);
                }
            }
            _ = persist_tick.tick() => {
                if positions.is_dirty() {
                    health.positions_write_failed(!persist(&mut positions));
                }
                if let Ok(s) = spool.lock() {
                    let st = s.status();
                    health.set_spool(st.pending_events, st.bytes_on_disk, config.spool.max_bytes.0, st.oldest_pending_age);
                    let dead = admin::dead_letters(&state_dir).len();
                    admin::write_status(&state_dir, &admin::StatusReport::from_status("running agent", &st, max_events, dead));
                }
                // The main loop turns: tell systemd we are alive (WatchdogSec).
                if watchdog.is_some() {
                    crate::systemd::watchdog_ping();
                }
            }
            _ = joiner_tick.tick(), if !ingest.joiners.is_empty() => {
                let now = Instant::now();
                if let Err(e) = ingest.flush_joiners(Some(now), &mut processors, Timestamp::now()) {
                    break Err(e);
                }
            }
            _ = requeue_tick.tick(), if has_room => {
                if let Err(e) = ingest.requeue(&state_dir, &mut positions) {
                    break Err(e);
                }
            }
        }
    };

    crate::systemd::notify("STOPPING=1");
    // Make sure every source stops, whatever ended the loop.
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
    if let Some(t) = metrics_task {
        t.abort();
    }
    positions.persist()?;
    if result.is_ok() {
        tracing::info!("balp-agent stopped cleanly");
    }
    result
}

/// A read position waiting for the next group commit.
enum PendingPosition {
    At(Checkpoint),
    Forget(Arc<StreamId>),
}

/// The ingest side: processes lines into the spool and advances positions at each commit.
struct Ingest {
    spool: SharedSpool,
    committed: Arc<Notify>,
    /// Positions of lines processed since the last commit, in order.
    pending: Vec<PendingPosition>,
    uncommitted_bytes: usize,
    commit_at: Option<tokio::time::Instant>,
    /// Sources whose records span several lines: mode and record size limit.
    multiline: HashMap<Arc<str>, (Multiline, usize)>,
    /// Open multi-line records per stream, with the time of their last line.
    joiners: HashMap<Arc<StreamId>, (Joiner, Instant)>,
}

impl Ingest {
    /// Process lines: spool their events, remember their positions for the next commit.
    /// Lines of multi-line sources are first joined into records; a position only ever
    /// advances to the end of a complete record.
    fn lines(
        &mut self,
        lines: &[LogLine],
        processors: &mut HashMap<Arc<str>, SourceProcessor>,
        now: Timestamp,
    ) -> Result<(), PipelineError> {
        if self.multiline.is_empty() {
            // Every line is a record: no copy needed.
            return self.records(lines, processors, now);
        }
        let mut records = Vec::new();
        for line in lines {
            match self.multiline.get(&line.stream.source) {
                Some(&(mode, max_bytes)) => {
                    let (joiner, last) =
                        self.joiners.entry(line.stream.clone()).or_insert_with(|| {
                            (
                                Joiner::new(mode, max_bytes, multiline::DEFAULT_MAX_LINES),
                                Instant::now(),
                            )
                        });
                    *last = Instant::now();
                    records.extend(joiner.push(line.clone()));
                }
                None => records.push(line.clone()),
            }
        }
        self.records(&records, processors, now)
    }

    /// Emit open multi-line records: all of them (`idle_since = None`, at the end of the
    /// files with `--once`), or those whose stream was quiet for [`JOIN_IDLE`].
    fn flush_joiners(
        &mut self,
        idle_since: Option<Instant>,
        processors: &mut HashMap<Arc<str>, SourceProcessor>,
        now: Timestamp,
    ) -> Result<(), PipelineError> {
        let mut records = Vec::new();
        for (joiner, last) in self.joiners.values_mut() {
            let due = idle_since.is_none_or(|t| t.duration_since(*last) >= JOIN_IDLE);
            if due && let Some(r) = joiner.flush() {
                records.push(r);
            }
        }
        self.joiners.retain(|_, (j, _)| j.has_pending());
        if records.is_empty() {
            return Ok(());
        }
        self.records(&records, processors, now)
    }

    /// Spool the events of complete records and queue their positions.
    fn records(
        &mut self,
        records: &[LogLine],
        processors: &mut HashMap<Arc<str>, SourceProcessor>,
        now: Timestamp,
    ) -> Result<(), PipelineError> {
        let mut guard = self.spool.lock()?;
        for line in records {
            let Some(proc_) = processors.get_mut(&line.stream.source) else {
                continue;
            };
            let made = proc_.process(line, now);
            if !made.is_empty() {
                let origin = Origin::of_line(line);
                for record in &made {
                    self.uncommitted_bytes += record.json.len();
                    guard.append(record, &origin)?;
                }
            }
            // Network streams have no read position to keep; journal streams send their
            // cursor as a `SourceMsg::Position` after their lines.
            if !crate::source::syslog::is_syslog_stream(&line.stream)
                && !crate::source::journald::is_journald_key(&line.stream.key)
            {
                self.pending.push(PendingPosition::At(Checkpoint {
                    stream: line.stream.clone(),
                    offset: line.end,
                    cursor: None,
                }));
            }
        }
        drop(guard);
        self.arm();
        Ok(())
    }

    /// Start the commit clock if something waits for a commit.
    fn arm(&mut self) {
        if self.commit_at.is_none() && (!self.pending.is_empty() || self.uncommitted_bytes > 0) {
            self.commit_at = Some(tokio::time::Instant::now() + COMMIT_EVERY);
        }
    }

    /// Put requeued dead letters back into the spool; their files go after the commit.
    fn requeue(
        &mut self,
        state_dir: &Path,
        positions: &mut Positions,
    ) -> Result<(), PipelineError> {
        let taken = self.spool.with(|s| admin::take_requeued(state_dir, s))?;
        if taken.is_empty() {
            return Ok(());
        }
        self.force_commit(positions)?;
        for path in &taken {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::error!(path = %path.display(), error = %e, "requeued dead letter could not be removed; it may be sent twice");
            }
        }
        tracing::info!(files = taken.len(), "dead letters requeued into the spool");
        Ok(())
    }

    /// Commit now, whatever was appended outside this struct (self-audit events) included.
    fn force_commit(&mut self, positions: &mut Positions) -> Result<(), PipelineError> {
        self.uncommitted_bytes += 1;
        self.commit(positions)
    }

    /// Group commit: fsync the spool, then let the covered positions advance.
    fn commit(&mut self, positions: &mut Positions) -> Result<(), PipelineError> {
        self.commit_at = None;
        if self.uncommitted_bytes > 0 {
            self.spool.with(|s| s.commit())?;
            self.uncommitted_bytes = 0;
            self.committed.notify_one();
        }
        for p in self.pending.drain(..) {
            match p {
                PendingPosition::At(cp) => positions.apply(&cp),
                PendingPosition::Forget(stream) => positions.forget(&stream),
            }
        }
        Ok(())
    }
}

/// Save positions; false (logged and counted) if that failed.
fn persist(positions: &mut Positions) -> bool {
    match positions.persist() {
        Ok(()) => true,
        Err(e) => {
            events::position_write_failed("positions", &e.to_string());
            false
        }
    }
}

/// Append and commit the agent's own start or stop event.
fn spool_self_audit(
    spool: &SharedSpool,
    ctx: &MapContext,
    kind: AppActivity,
    boot_id: &str,
) -> Result<(), PipelineError> {
    let event = balp::self_audit(ctx, kind, Stamp::now_utc(), boot_id);
    let json = serde_json::to_string(&event)
        .map_err(|e| PipelineError::Internal(format!("self-audit event: {e}")))?;
    let record = EventRecord {
        id: event.uuid(),
        pattern: "application-activity",
        json,
    };
    let origin = Origin {
        source: "self".into(),
        stream_key: "self".into(),
        path: PathBuf::new(),
        start: 0,
        end: 0,
    };
    events::event("application-activity");
    spool.with(|s| {
        s.append(&record, &origin)?;
        s.commit().map(|_| ())
    })
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// What the delivery task works with.
struct DeliveryCtx {
    spool: SharedSpool,
    /// One output per slot (`output.max_in_flight`); a slot's Bundle retries in place.
    outputs: Vec<Output>,
    policy: BatchPolicy,
    health: Arc<Health>,
    /// Signalled after each group commit.
    committed: Arc<Notify>,
    /// Signalled after each ack (space may have been freed).
    room: Arc<Notify>,
    /// Set when no more events will come (stop signal or `--once` caught up).
    drain: watch::Receiver<bool>,
    shutdown: Shutdown,
    /// Records the ranges of the Bundles in flight, so a restart resends exactly those.
    inflight_path: PathBuf,
}

/// A Bundle being delivered in its own task; the task hands its output back.
struct InFlight {
    first: u64,
    last: u64,
    task: tokio::task::JoinHandle<(Output, Result<Delivery, DeliverError>)>,
}

/// Deliver spooled events as Bundles of contiguous ranges, up to `max_in_flight` at once,
/// and acknowledge them in order. While the ARR fails, no new slot is opened: the Bundles in
/// flight retry and act as the circuit breaker's probes.
async fn delivery_task(mut cx: DeliveryCtx) -> Result<(), PipelineError> {
    let slots = cx.outputs.len().max(1);
    let mut next = cx.spool.lock()?.first_unacked();
    // Bundles that were in flight when the agent stopped are resent with exactly their ranges.
    let mut forced: std::collections::VecDeque<(u64, u64)> = read_inflight(&cx.inflight_path)
        .into_iter()
        .scan(next, |expect, (first, last)| {
            (first == *expect).then(|| {
                *expect = last + 1;
                (first, last)
            })
        })
        .collect();
    let mut window: std::collections::VecDeque<InFlight> = std::collections::VecDeque::new();
    let mut waiting_since: Option<(u64, Instant)> = None;
    // Settled but not yet acknowledged in the spool: acks (two fsyncs each) are coalesced.
    let mut to_ack: Option<u64> = None;
    let mut last_ack = Instant::now();
    let mut send_now = cx.spool.lock()?.durable_seq() >= next;
    let mut drain_deadline: Option<Instant> = None;
    let result = loop {
        let draining = *cx.drain.borrow();
        if draining && cx.shutdown.is_triggered() && drain_deadline.is_none() {
            drain_deadline = Some(Instant::now() + DRAIN_FOR);
        }
        let durable = cx.spool.lock()?.durable_seq();
        let unsent = if durable >= next {
            durable - next + 1
        } else {
            0
        };
        if let Some(seq) = to_ack
            && ((window.is_empty() && unsent == 0)
                || last_ack.elapsed() >= ACK_EVERY
                || !cx.spool.lock()?.has_room())
        {
            cx.spool.with(|s| s.ack(seq))?;
            cx.room.notify_one();
            to_ack = None;
            last_ack = Instant::now();
        }
        if window.is_empty() && unsent == 0 {
            if draining {
                break Ok(());
            }
            tokio::select! {
                _ = cx.committed.notified() => {}
                _ = cx.drain.changed() => {}
            }
            continue;
        }
        if drain_deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                unsent,
                in_flight = window.len(),
                "stop: undelivered events stay in the spool for the next start"
            );
            break Ok(());
        }
        // Open slots while there is something ready and the ARR is not failing.
        let mut opened = false;
        let mut wake = None;
        let mut unsent = unsent;
        while window.len() < slots
            && unsent > 0
            && (window.is_empty() || !cx.health.delivery_failing())
        {
            let Some(output) = cx.outputs.pop() else {
                break;
            };
            // Age of the oldest unsent event as seen by this task; a backlog found at
            // start-up, and Bundles that were in flight, go out at once.
            let since = match waiting_since {
                Some((seq, t)) if seq == next => t,
                _ => {
                    let t = Instant::now();
                    waiting_since = Some((next, t));
                    t
                }
            };
            let ready = send_now
                || !forced.is_empty()
                || cx.policy.ready(unsent, since.elapsed(), draining);
            if !ready {
                cx.outputs.push(output);
                wake = Some(since + cx.policy.flush_interval);
                break;
            }
            let (max_events, max_bytes) = match forced.pop_front() {
                Some((first, last)) => ((last - first + 1) as usize, usize::MAX),
                None => (cx.policy.max_events, cx.policy.max_bytes),
            };
            let spooled = cx
                .spool
                .with(|s| s.read_range(next, max_events, max_bytes))?;
            let batch = Batch::from_spooled(spooled);
            let Some((first, last)) = batch.seqs else {
                // Nothing readable (quarantined on the way): look again from the top.
                cx.outputs.push(output);
                waiting_since = None;
                break;
            };
            let shutdown = cx.shutdown.clone();
            let mut output = output;
            let task = tokio::spawn(async move {
                let result = output.deliver(&batch, &shutdown).await;
                (output, result)
            });
            window.push_back(InFlight { first, last, task });
            next = last + 1;
            unsent = if durable >= next {
                durable - next + 1
            } else {
                0
            };
            waiting_since = None;
            opened = true;
        }
        if unsent == 0 {
            send_now = false;
        }
        if opened {
            let ranges: Vec<(u64, u64)> = window.iter().map(|f| (f.first, f.last)).collect();
            write_inflight(&cx.inflight_path, &ranges);
        }
        let can_open = window.len() < slots;
        let Some(front) = window.front_mut() else {
            let wake = wake.unwrap_or_else(|| Instant::now() + cx.policy.flush_interval);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = cx.committed.notified() => {}
                _ = cx.drain.changed() => {}
            }
            continue;
        };
        let sleep_to = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let joined = tokio::select! {
            joined = &mut front.task => Some(joined),
            _ = cx.committed.notified(), if can_open => None,
            _ = tokio::time::sleep_until(sleep_to.into()), if can_open && wake.is_some() => None,
            _ = cx.drain.changed() => None,
        };
        let Some(joined) = joined else {
            continue;
        };
        let done = window.pop_front();
        let (output, delivered) =
            joined.map_err(|e| PipelineError::Internal(format!("delivery task: {e}")))?;
        cx.outputs.push(output);
        match delivered? {
            Delivery::Accepted | Delivery::DeadLettered { .. } => {
                if let Some(f) = done {
                    to_ack = Some(f.last);
                }
            }
            Delivery::Interrupted => {
                tracing::warn!(
                    unsent,
                    "stopped before the output accepted every event; they stay in the spool for the next start"
                );
                break Ok(());
            }
        }
    };
    // Bundles after an unsettled one are not acknowledged (they are sent again, same ids).
    for f in window {
        f.task.abort();
    }
    if let Some(seq) = to_ack {
        cx.spool.with(|s| s.ack(seq))?;
    }
    result
}

/// The in-flight ranges `first-last`, one per line, if recorded.
fn read_inflight(path: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.trim().split_once('-')?;
            let (first, last): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            (first <= last).then_some((first, last))
        })
        .collect()
}

/// Record the ranges in flight (tmp → rename; no fsync: one per Bundle would cost more than
/// it protects). Best effort: losing it only means a restart may cut the ranges differently
/// (the same events, so the same event ids, in Bundles with other ids).
fn write_inflight(path: &Path, ranges: &[(u64, u64)]) {
    let tmp = path.with_extension("tmp");
    let text: String = ranges.iter().map(|(a, b)| format!("{a}-{b}\n")).collect();
    let result =
        crate::private::write(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not record the Bundles in flight");
    }
}

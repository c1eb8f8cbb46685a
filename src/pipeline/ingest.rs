//! The ingest stage: lines from the sources → decode → parse → map → the spool.
//!
//! One loop takes [`SourceMsg`]es, runs each complete record through its source's
//! [`SourceProcessor`] and appends the events to the spool. Group commit: appends are
//! fsynced at most [`COMMIT_EVERY`] after the first (or at [`COMMIT_BYTES`]), and only then
//! do the read positions of the lines they came from advance, in order. Lines without an
//! event advance with the same commit, so a position never passes an unspooled event.
//! The commit's write and fdatasync run on a blocking thread without the spool's lock
//! ([`crate::spool::CommitJob`]): lines keep being processed into the next commit meanwhile
//! (up to [`COMMIT_BYTES`]), and the delivery task keeps reading. One commit is out at a time.
//! While the spool is full the loop stops taking lines, the source channel fills, and the
//! sources block: the log files are the overflow buffer.

use super::process::{SourceProcessor, map_context};
use super::{COMMIT_BYTES, COMMIT_EVERY, JOIN_IDLE, PERSIST_EVERY, PipelineError, SharedSpool};
use crate::alert::{Alert, AlertEngine, AlertFact};
use crate::balp::{self, AppActivity, EventRecord, MapContext};
use crate::config::Config;
use crate::decode::Stamp;
use crate::decode::multiline::{self, Joiner, Multiline};
use crate::events;
use crate::metrics::Health;
use crate::shutdown::Shutdown;
use crate::source::file::positions::Positions;
use crate::source::{Checkpoint, LogLine, SourceMsg, StreamId};
use crate::spool::{CommitDone, CommitError, CommitJob, Origin, admin};
use jiff::Timestamp;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, watch};

/// A read position waiting for the next group commit.
enum PendingPosition {
    At(Checkpoint),
    Forget(Arc<StreamId>),
}

/// What a commit job answers: its write and fsync, or why the thread that ran it failed.
type JobResult = Result<Result<CommitDone, CommitError>, tokio::task::JoinError>;

/// A commit being written and fsynced, with the positions it makes safe to advance.
struct InFlight {
    job: tokio::task::JoinHandle<Result<CommitDone, CommitError>>,
    positions: Vec<PendingPosition>,
}

/// A commit that found the filesystem full, waiting to be run again (nothing of it is
/// durable, so its positions wait too).
struct Stalled {
    job: CommitJob,
    positions: Vec<PendingPosition>,
    retry_at: tokio::time::Instant,
}

/// How often a commit that found the filesystem full is tried again.
const FULL_RETRY: Duration = Duration::from_secs(1);

/// The ingest side: processes lines into the spool and advances positions at each commit.
pub(super) struct Ingest {
    spool: SharedSpool,
    committed: Arc<Notify>,
    /// Positions of lines processed since the last commit, in order.
    pending: Vec<PendingPosition>,
    /// The commit being written, if any.
    in_flight: Option<InFlight>,
    /// The commit waiting for room on the filesystem, if any (never with one in flight).
    stalled: Option<Stalled>,
    /// Since when commits find the filesystem full (logged once per episode).
    disk_full_since: Option<Instant>,
    uncommitted_bytes: usize,
    commit_at: Option<tokio::time::Instant>,
    /// Sources whose records span several lines: mode and record size limit.
    multiline: HashMap<Arc<str>, (Multiline, usize)>,
    /// Open multi-line records per stream, with the time of their last line.
    joiners: HashMap<Arc<StreamId>, (Joiner, Instant)>,
    /// Read positions; they advance only at a commit.
    pub(super) positions: Positions,
    processors: HashMap<Arc<str>, SourceProcessor>,
    state_dir: PathBuf,
    health: Arc<Health>,
    /// Context and boot id of the agent's own start/stop events.
    self_ctx: MapContext,
    boot_id: String,
    /// Tells the delivery task that no more events will come.
    drain_tx: watch::Sender<bool>,
    once: bool,
    reloading: Arc<AtomicBool>,
    /// File and journal sources not yet caught up (only those ever catch up).
    pending_sources: usize,
    sources_open: bool,
    max_events: usize,
    spool_max_bytes: u64,
    /// Seals the tamper-evidence tree (`None`: `[tamper]` disabled), and when next.
    sealer: Option<crate::tamper::seal::Sealer>,
    seal_every: Duration,
    next_seal: tokio::time::Instant,
    /// The alert rules (None: none in force).
    alerts: Option<AlertEngine>,
    /// Streams whose lines are read again for the rules only: until the saved positions
    /// reach these offsets they do not cover the spool's records (no segment may go).
    replay_hold: Vec<(String, String, u64)>,
    /// The facts of the line being processed (reused).
    facts: Vec<AlertFact>,
    acker: Arc<crate::source::nats::Acker>,
}

/// What one line made: its events, or an alert they raised.
enum Made {
    Event(EventRecord),
    Alert(Alert),
}

/// What [`Ingest::new`] takes besides the config.
pub(super) struct IngestParts {
    pub(super) spool: SharedSpool,
    pub(super) committed: Arc<Notify>,
    pub(super) positions: Positions,
    pub(super) processors: HashMap<Arc<str>, SourceProcessor>,
    pub(super) health: Arc<Health>,
    pub(super) drain_tx: watch::Sender<bool>,
    /// File and journal sources started (their `CaughtUp` ends a `--once` run).
    pub(super) replayable_sources: usize,
    pub(super) once: bool,
    pub(super) reloading: Arc<AtomicBool>,
    pub(super) sealer: Option<crate::tamper::seal::Sealer>,
    /// The alert rules with their saved state (None: none in force).
    pub(super) alerts: Option<AlertEngine>,
    /// Where NATS sources' acks wait for the spool's acknowledgement.
    pub(super) acker: Arc<crate::source::nats::Acker>,
}

impl Ingest {
    /// The ingest loop's state, before any line is read.
    pub(super) fn new(config: &Config, parts: IngestParts) -> Ingest {
        let sources_open = !(parts.once && parts.replayable_sources == 0);
        if !sources_open {
            let _ = parts.drain_tx.send(true);
        }
        Ingest {
            spool: parts.spool,
            committed: parts.committed,
            pending: Vec::new(),
            in_flight: None,
            stalled: None,
            disk_full_since: None,
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
            positions: parts.positions,
            processors: parts.processors,
            state_dir: config.agent.state_dir.clone(),
            health: parts.health,
            self_ctx: map_context(config, "self", Vec::new()),
            boot_id: Timestamp::now().as_millisecond().to_string(),
            drain_tx: parts.drain_tx,
            once: parts.once,
            reloading: parts.reloading,
            pending_sources: parts.replayable_sources,
            sources_open,
            max_events: config.output.max_events,
            spool_max_bytes: config.spool.max_bytes.0,
            sealer: parts.sealer,
            seal_every: config.tamper.seal_interval.0,
            next_seal: tokio::time::Instant::now() + config.tamper.seal_interval.0,
            replay_hold: parts
                .alerts
                .as_ref()
                .map(AlertEngine::replay_targets)
                .unwrap_or_default(),
            alerts: parts.alerts,
            facts: Vec::new(),
            acker: parts.acker,
        }
    }

    /// Take lines until every source has ended (stop signal, or `--once` caught up) and
    /// the delivery task has drained, or until either side fails.
    pub(super) async fn run(
        &mut self,
        line_rx: &mut mpsc::Receiver<SourceMsg>,
        delivery: &mut tokio::task::JoinHandle<Result<(), PipelineError>>,
        room: &Notify,
        shutdown: &Shutdown,
    ) -> Result<(), PipelineError> {
        let mut joiner_tick = interval(JOIN_IDLE / 2);
        let mut persist_tick = interval(PERSIST_EVERY);
        let mut requeue_tick = interval(admin::REQUEUE_EVERY);
        let watchdog = crate::systemd::watchdog_interval().is_some();
        let mut full_since: Option<Instant> = None;
        let mut stop = shutdown.clone();
        let mut stopping = false;
        loop {
            let has_room = self.spool.lock()?.has_room();
            report_room(has_room, &mut full_since);
            tokio::select! {
                biased;
                res = &mut *delivery => {
                    return match res {
                        Ok(r) => r,
                        Err(e) => Err(PipelineError::Internal(format!("delivery task: {e}"))),
                    };
                }
                _ = stop.wait(), if !stopping => {
                    stopping = true;
                    // Sources stop on the same signal; their last lines still arrive below.
                }
                res = job_done(&mut self.in_flight), if self.in_flight.is_some() => {
                    self.finish_commit(res)?;
                    if self.uncommitted_bytes >= COMMIT_BYTES && !self.commit_out() {
                        self.start_commit()?;
                    }
                }
                _ = sleep_until_opt(self.stalled.as_ref().map(|s| s.retry_at)), if self.stalled.is_some() => {
                    self.retry_stalled();
                }
                _ = sleep_until_opt(self.commit_at), if !self.commit_out() => {
                    self.start_commit()?;
                }
                _ = room.notified(), if !has_room => {}
                // While full, look again now and then: free disk space can change by itself.
                _ = tokio::time::sleep(Duration::from_millis(250)), if !has_room => {}
                _ = persist_tick.tick() => {
                    self.check_silent()?;
                    self.persist_and_report()?;
                    // The main loop turns: tell systemd we are alive (WatchdogSec).
                    if watchdog {
                        crate::systemd::watchdog_ping();
                    }
                }
                _ = joiner_tick.tick(), if !self.joiners.is_empty() => {
                    self.flush_joiners(Some(Instant::now()), Timestamp::now())?;
                }
                _ = requeue_tick.tick(), if has_room => self.requeue()?,
                _ = tokio::time::sleep_until(self.next_seal), if self.sealer.is_some() && self.sources_open => {
                    self.seal()?;
                }
                // Last: with `biased`, a branch below a busy source channel would never run, and
                // the ticks above (positions, status, watchdog) must keep turning in a burst.
                // While a commit is out and the next one is full, wait for the first.
                msg = line_rx.recv(), if self.sources_open && has_room && !self.backlogged() => {
                    self.message(msg)?;
                    if self.uncommitted_bytes >= COMMIT_BYTES && !self.commit_out() {
                        self.start_commit()?;
                    }
                }
            }
        }
    }

    /// One message from the sources; `None` means every source has ended.
    fn message(&mut self, msg: Option<SourceMsg>) -> Result<(), PipelineError> {
        match msg {
            Some(SourceMsg::Lines(lines)) => {
                events::lines_read(lines.len() as u64);
                self.lines(&lines, Timestamp::now())
            }
            Some(SourceMsg::Events(events)) => self.forwarded(events),
            Some(SourceMsg::Position(cp)) => {
                self.pending.push(PendingPosition::At(cp));
                self.arm();
                Ok(())
            }
            Some(SourceMsg::Forget(stream)) => {
                self.pending.push(PendingPosition::Forget(stream));
                self.arm();
                Ok(())
            }
            Some(SourceMsg::CaughtUp(_)) => {
                self.pending_sources = self.pending_sources.saturating_sub(1);
                if !(self.once && self.pending_sources == 0) {
                    return Ok(());
                }
                self.sources_open = false;
                // Files are complete: a record waiting for a continuation is done.
                self.flush_joiners(None, Timestamp::now())?;
                self.self_audit(AppActivity::Stop)?;
                self.force_commit()?;
                self.seal()?;
                let _ = self.drain_tx.send(true);
                Ok(())
            }
            None => {
                // Every source has ended (stop signal): spool the rest, then drain. A
                // multi-line record still open is not flushed: its position was not
                // advanced, so the next start reads it whole.
                self.sources_open = false;
                if !self.reloading.load(Ordering::SeqCst) {
                    self.self_audit(AppActivity::Stop)?;
                }
                self.force_commit()?;
                self.seal()?;
                let _ = self.drain_tx.send(true);
                Ok(())
            }
        }
    }

    /// Save the alert state and then dirty positions, and publish the spool's state
    /// (`/health`, `spool status`). Positions wait while the alert state cannot be saved:
    /// saved positions never cover a line the saved alert windows do not. Errs only when
    /// deleting delivered segments fails (an fsync: the spool is unusable).
    pub(super) fn persist_and_report(&mut self) -> Result<(), PipelineError> {
        // Every record up to the durable seq has its lines' positions in memory now (they
        // advance as each commit finishes, on this thread), so once they are saved the
        // spool may delete the segments that hold those records.
        // Lines read again for the rules only are behind the spool's records: those are
        // covered once the positions passed the end of that replay.
        let positions = &self.positions;
        self.replay_hold.retain(|(source, key, until)| {
            positions.known(source).get(key).is_none_or(|p| p < until)
        });
        let covered = if self.replay_hold.is_empty() {
            self.spool.lock().ok().map(|s| s.durable_seq())
        } else {
            None
        };
        let saved = self.save_alerts()
            && (!self.positions.is_dirty() || {
                let ok = persist(&mut self.positions);
                self.health.positions_write_failed(!ok);
                ok
            });
        if let Ok(mut s) = self.spool.lock() {
            if saved && let Some(seq) = covered {
                s.positions_saved(seq)?;
            }
            let st = s.status();
            self.health.set_spool(
                st.pending_events,
                st.bytes_on_disk,
                self.spool_max_bytes,
                st.oldest_pending_age,
            );
            self.health.set_spool_damage(st.quarantined, st.lost);
            let dead = admin::dead_letters(&self.state_dir).len();
            admin::write_status(
                &self.state_dir,
                &admin::StatusReport::from_status("running agent", &st, self.max_events, dead),
            );
        }
        Ok(())
    }

    /// Save the alert state (if it changed); false if that failed (logged).
    pub(super) fn save_alerts(&mut self) -> bool {
        let Some(engine) = self.alerts.as_mut() else {
            return true;
        };
        let durable = match self.spool.lock() {
            Ok(s) => s.durable_seq(),
            Err(_) => return false,
        };
        match engine.save(durable) {
            Ok(()) => true,
            Err(e) => {
                events::alert_state_write_failed(&e.to_string());
                false
            }
        }
    }

    /// Raise the alerts of sources silent for too long (wall clock; never with `--once`).
    fn check_silent(&mut self) -> Result<(), PipelineError> {
        if self.once {
            return Ok(());
        }
        let Some(engine) = self.alerts.as_mut() else {
            return Ok(());
        };
        let raised = engine.check_silent(Timestamp::now());
        if raised.is_empty() {
            return Ok(());
        }
        let origin = Origin {
            source: "self".into(),
            stream_key: "self".into(),
            path: PathBuf::new(),
            start: 0,
            end: 0,
        };
        let mut guard = self.spool.lock()?;
        for alert in &raised {
            self.uncommitted_bytes += alert.record.json.len();
            let seq = guard.append(&alert.record, &origin)?;
            engine.spooled(alert, seq);
        }
        drop(guard);
        self.arm();
        Ok(())
    }

    /// Append and commit the agent's own start or stop event.
    pub(super) fn self_audit(&mut self, kind: AppActivity) -> Result<(), PipelineError> {
        let event = balp::self_audit(&self.self_ctx, kind, Stamp::now_utc(), &self.boot_id);
        let json = serde_json::to_string(&event)
            .map_err(|e| PipelineError::Internal(format!("self-audit event: {e}")))?;
        let record = EventRecord {
            id: event.uuid(),
            pattern: "application-activity",
            json,
            leaf: None,
        };
        let origin = Origin {
            source: "self".into(),
            stream_key: "self".into(),
            path: PathBuf::new(),
            start: 0,
            end: 0,
        };
        events::event("application-activity");
        self.spool.lock()?.append(&record, &origin)?;
        self.force_commit()
    }
    /// Seal the tamper-evidence tree: commit what is appended (so every event has its leaf),
    /// append the seal, commit it. A tree that is not settled (the filesystem full) is
    /// sealed a second later.
    fn seal(&mut self) -> Result<(), PipelineError> {
        if self.sealer.is_none() {
            return Ok(());
        }
        self.force_commit()?;
        let sealed = match &self.sealer {
            Some(sealer) => sealer.append_seal(&mut *self.spool.lock()?)?,
            None => None,
        };
        let now = tokio::time::Instant::now();
        match sealed {
            Some(_) => {
                events::event(crate::spool::leaves::SEAL_PATTERN);
                self.next_seal = now + self.seal_every;
                self.force_commit()
            }
            None => {
                self.next_seal = now + Duration::from_secs(1);
                Ok(())
            }
        }
    }

    /// Process lines: spool their events, remember their positions for the next commit.
    /// Lines of multi-line sources are first joined into records; a position only ever
    /// advances to the end of a complete record.
    fn lines(&mut self, lines: &[LogLine], now: Timestamp) -> Result<(), PipelineError> {
        if self.multiline.is_empty() {
            // Every line is a record: no copy needed.
            return self.records(lines, now);
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
        self.records(&records, now)
    }

    /// Emit open multi-line records: all of them (`idle_since = None`, at the end of the
    /// files with `--once`), or those whose stream was quiet for [`JOIN_IDLE`].
    fn flush_joiners(
        &mut self,
        idle_since: Option<Instant>,
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
        self.records(&records, now)
    }

    /// Spool the events of complete records and queue their positions.
    fn records(&mut self, records: &[LogLine], now: Timestamp) -> Result<(), PipelineError> {
        // Lines are parsed and mapped without the spool's lock, which the delivery task needs
        // to read Bundles meanwhile (holding it across a batch made the two take turns); the
        // events of each chunk are appended under one short lock.
        const CHUNK: usize = 64;
        let mut made: Vec<(usize, Made)> = Vec::new();
        for chunk in records.chunks(CHUNK) {
            // A batch makes ~0.5 MiB of events: commit inside it, so that the spool's buffers
            // stay near COMMIT_BYTES instead of growing with the batch.
            if self.uncommitted_bytes >= COMMIT_BYTES && self.stalled.is_none() {
                self.wait_commit()?;
                if self.stalled.is_none() {
                    self.start_commit()?;
                }
            }
            for (i, line) in chunk.iter().enumerate() {
                let Some(proc_) = self.processors.get_mut(&line.stream.source) else {
                    continue;
                };
                match self.alerts.as_mut() {
                    None => made.extend(
                        proc_
                            .process(line, now)
                            .into_iter()
                            .map(|r| (i, Made::Event(r))),
                    ),
                    Some(engine) => {
                        engine.line_seen(&line.stream.source, now);
                        let facts = engine.wants_facts().then_some(&mut self.facts);
                        let records = proc_.process_facts(line, now, facts);
                        // Read again after a crash only for the rules: the spool has them.
                        if !engine.replayed(&line.stream.source, &line.stream.key, line.end) {
                            made.extend(records.into_iter().map(|r| (i, Made::Event(r))));
                        }
                        // An alert follows the events that raised it, in the same commit.
                        for fact in self.facts.drain(..) {
                            made.extend(
                                engine
                                    .observe(&fact)
                                    .into_iter()
                                    .map(|a| (i, Made::Alert(a))),
                            );
                        }
                    }
                }
                // Network streams have no read position to keep; journal streams send their
                // cursor as a `SourceMsg::Position` after their lines.
                if !crate::source::syslog::is_syslog_stream(&line.stream)
                    && !crate::source::journald::is_journald_key(&line.stream.key)
                {
                    if let Some(engine) = self.alerts.as_mut() {
                        engine.covered(&line.stream.source, &line.stream.key, line.end);
                    }
                    self.pending.push(PendingPosition::At(Checkpoint {
                        stream: line.stream.clone(),
                        offset: line.end,
                        cursor: None,
                    }));
                }
            }
            if made.is_empty() {
                continue;
            }
            let mut guard = self.spool.lock()?;
            let mut origin: Option<(usize, Origin)> = None;
            for (i, m) in made.drain(..) {
                if origin.as_ref().is_none_or(|(at, _)| *at != i) {
                    origin = Some((i, Origin::of_line(&chunk[i])));
                }
                let Some((_, o)) = &origin else {
                    continue;
                };
                let record = match &m {
                    Made::Event(r) => r,
                    Made::Alert(a) => &a.record,
                };
                self.uncommitted_bytes += record.json.len();
                let seq = guard.append(record, o)?;
                if let (Made::Alert(a), Some(engine)) = (&m, self.alerts.as_mut()) {
                    engine.spooled(a, seq);
                }
            }
        }
        self.arm();
        Ok(())
    }

    /// Spool finished events from a forwarding source as they are; each one's NATS ack
    /// waits in the acker for the spool's acknowledgement of its seq. They have no read
    /// position (JetStream redelivers what was never acked).
    fn forwarded(
        &mut self,
        events: Vec<crate::source::nats::Forwarded>,
    ) -> Result<(), PipelineError> {
        events::lines_read(events.len() as u64);
        let mut guard = self.spool.lock()?;
        for f in events {
            let origin = Origin {
                source: f.stream.source.to_string(),
                stream_key: f.stream.key.clone(),
                path: f.stream.path.clone(),
                start: f.stream_seq,
                end: f.stream_seq + 1,
            };
            self.uncommitted_bytes += f.record.json.len();
            let seq = guard.append(&f.record, &origin)?;
            events::event(f.record.pattern);
            self.acker.hold(seq, f.ack);
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
    fn requeue(&mut self) -> Result<(), PipelineError> {
        // Their files are removed after the commit, which a full filesystem would not make.
        if self.stalled.is_some() {
            return Ok(());
        }
        let state_dir = self.state_dir.clone();
        let taken = self.spool.with(|s| admin::take_requeued(&state_dir, s))?;
        if taken.is_empty() {
            return Ok(());
        }
        self.force_commit()?;
        for path in &taken {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::error!(path = %path.display(), error = %e, "requeued dead letter could not be removed; it may be sent twice");
            }
        }
        tracing::info!(files = taken.len(), "dead letters requeued into the spool");
        Ok(())
    }

    /// Commit now, whatever was appended outside this struct (self-audit events) included.
    fn force_commit(&mut self) -> Result<(), PipelineError> {
        self.uncommitted_bytes += 1;
        self.commit()
    }

    /// Commit everything appended so far and wait until it is durable (the commit in
    /// flight first, then the rest); the covered positions advance.
    fn commit(&mut self) -> Result<(), PipelineError> {
        self.wait_commit()?;
        self.start_commit()?;
        self.wait_commit()
    }

    /// Hand what was appended since the last commit to a blocking thread for its write and
    /// fsync; with nothing to write, the pending positions advance at once. Only when no
    /// commit is in flight.
    fn start_commit(&mut self) -> Result<(), PipelineError> {
        self.commit_at = None;
        let job = if self.uncommitted_bytes > 0 {
            self.spool.lock()?.stage_commit()?
        } else {
            None
        };
        self.uncommitted_bytes = 0;
        let positions = std::mem::take(&mut self.pending);
        match job {
            Some(job) => {
                self.in_flight = Some(InFlight {
                    job: tokio::task::spawn_blocking(move || job.try_run()),
                    positions,
                });
            }
            // Everything appended is durable already.
            None => self.advance(positions),
        }
        Ok(())
    }

    /// The commit in flight ended: its events are durable (the delivery task is told) and
    /// its positions advance; or the filesystem was full, and it waits to be run again; or it
    /// failed, and so does the agent.
    fn finish_commit(&mut self, res: JobResult) -> Result<(), PipelineError> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(());
        };
        let done = match res.map_err(|e| PipelineError::Internal(format!("spool commit: {e}")))? {
            Ok(done) => Ok(done),
            Err(CommitError::NoSpace { job, error }) => {
                if self.disk_full_since.is_none() {
                    self.disk_full_since = Some(Instant::now());
                    tracing::error!(
                        error = %error,
                        "spool: the filesystem of the state directory is full; reading waits and the commit is tried again every second (nothing is lost: the lines stay in their files)"
                    );
                }
                self.stalled = Some(Stalled {
                    job,
                    positions: flight.positions,
                    retry_at: tokio::time::Instant::now() + FULL_RETRY,
                });
                return Ok(());
            }
            Err(CommitError::Failed(e)) => Err(e),
        };
        self.spool.lock()?.finish_commit(done)?;
        if let Some(since) = self.disk_full_since.take() {
            tracing::info!(
                waited_ms = since.elapsed().as_millis() as u64,
                "spool: the filesystem has room again; the commit is durable and reading goes on"
            );
        }
        self.committed.notify_one();
        self.advance(flight.positions);
        Ok(())
    }

    /// Run the commit that found the filesystem full again.
    fn retry_stalled(&mut self) {
        if let Some(st) = self.stalled.take() {
            let job = st.job;
            self.in_flight = Some(InFlight {
                job: tokio::task::spawn_blocking(move || job.try_run()),
                positions: st.positions,
            });
        }
    }

    /// Block until the commit in flight (if any) has ended. A commit that finds (or found)
    /// the filesystem full is tried once more; if there is still no room, that is an error:
    /// callers need the events durable now (stop, end of `--once`, requeue).
    fn wait_commit(&mut self) -> Result<(), PipelineError> {
        if self.stalled.is_some() {
            self.retry_stalled();
        }
        let Some(flight) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let res = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(&mut flight.job)
        });
        self.finish_commit(res)?;
        match self.stalled.take() {
            None => Ok(()),
            Some(st) => {
                // Not durable: the lines' positions never advanced, so the next start reads
                // them again.
                drop(st);
                Err(PipelineError::Internal(
                    "spool: the filesystem of the state directory is still full; events not yet durable are read again from their files at the next start".into(),
                ))
            }
        }
    }

    /// A commit is out (or waits for room) and the next one already holds
    /// [`COMMIT_BYTES`]: take no more lines.
    fn backlogged(&self) -> bool {
        self.commit_out() && self.uncommitted_bytes >= COMMIT_BYTES
    }

    /// A commit is being written or waits for room: no other may start.
    fn commit_out(&self) -> bool {
        self.in_flight.is_some() || self.stalled.is_some()
    }

    fn advance(&mut self, positions: Vec<PendingPosition>) {
        for p in positions {
            match p {
                PendingPosition::At(cp) => self.positions.apply(&cp),
                PendingPosition::Forget(stream) => self.positions.forget(&stream),
            }
        }
    }
}

/// Wait for the commit in flight; never ready without one.
async fn job_done(flight: &mut Option<InFlight>) -> JobResult {
    match flight {
        Some(f) => (&mut f.job).await,
        None => std::future::pending().await,
    }
}

/// Log when the spool fills up and when it has room again.
fn report_room(has_room: bool, full_since: &mut Option<Instant>) {
    if !has_room && full_since.is_none() {
        *full_since = Some(Instant::now());
        tracing::warn!(
            "spool full (spool.max_bytes or disk free space): sources paused until events are delivered"
        );
    } else if has_room && let Some(since) = full_since.take() {
        tracing::info!(
            paused_ms = since.elapsed().as_millis() as u64,
            "spool has room again: sources resumed"
        );
    }
}

/// A ticker that does not burst after a stall.
fn interval(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
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

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Spool;
    use std::path::Path;
    use std::sync::Mutex;

    const ACCEPTED: &str = "2026-11-25T15:22:44.172367+00:00 fhir-app01 sshd[24192]: Accepted password for alice from 127.0.0.1 port 55224 ssh2";
    const NOISE: &str = "2026-11-25T15:22:45.000000+00:00 fhir-app01 CRON[1]: (root) CMD (true)";

    fn setup(dir: &Path) -> (Ingest, Arc<StreamId>) {
        let text = format!(
            "[agent]\nstate_dir = {:?}\nhostname = \"h\"\n\
             [[sources]]\nname = \"auth\"\ntype = \"file\"\ninclude = [\"/x/auth.log\"]\nparsers = [\"sshd\"]\n\
             [output]\ntype = \"directory\"\npath = {:?}\n",
            dir.join("state"),
            dir.join("out"),
        );
        let config: Config = toml::from_str(&text).unwrap();
        crate::private::create_dir(&config.agent.state_dir).unwrap();
        let positions = Positions::load(&config.agent.state_dir).unwrap();
        let (spool, _) = Spool::open(&config.agent.state_dir, &config.spool).unwrap();
        let processors = super::super::build_processors(&config).unwrap();
        let ingest = Ingest::new(
            &config,
            IngestParts {
                spool: SharedSpool(Arc::new(Mutex::new(spool))),
                committed: Arc::new(Notify::new()),
                positions,
                processors,
                health: Arc::new(Health::default()),
                drain_tx: watch::channel(false).0,
                replayable_sources: 1,
                once: false,
                reloading: Arc::new(AtomicBool::new(false)),
                sealer: None,
                alerts: None,
                acker: crate::source::nats::Acker::new(),
            },
        );
        let stream = Arc::new(StreamId {
            source: Arc::from("auth"),
            key: "file:1:2:3".into(),
            path: "/x/auth.log".into(),
        });
        (ingest, stream)
    }

    fn line(stream: &Arc<StreamId>, offset: u64, text: &str) -> LogLine {
        LogLine {
            stream: stream.clone(),
            offset,
            end: offset + text.len() as u64 + 1,
            text: text.into(),
            flags: Default::default(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn positions_advance_only_at_the_commit_that_fsynced_the_events() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ingest, stream) = setup(dir.path());
        let first = line(&stream, 0, ACCEPTED);
        let second = line(&stream, first.end, NOISE);
        let end = second.end;
        ingest
            .message(Some(SourceMsg::Lines(vec![first, second])))
            .unwrap();
        {
            let spool = ingest.spool.lock().unwrap();
            assert_eq!(spool.next_seq(), 2, "one event appended");
            assert_eq!(spool.durable_seq(), 0, "not yet fsynced");
        }
        assert!(
            ingest.positions.known("auth").is_empty(),
            "no position before the commit"
        );
        assert!(ingest.commit_at.is_some(), "the commit clock is running");

        ingest.commit().unwrap();
        assert_eq!(ingest.spool.lock().unwrap().durable_seq(), 1);
        assert_eq!(
            ingest.positions.known("auth").get("file:1:2:3"),
            Some(&end),
            "after the commit the position covers the event-less line too"
        );
        assert!(ingest.commit_at.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_read_while_a_commit_is_written_advance_only_with_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ingest, stream) = setup(dir.path());
        let first = line(&stream, 0, ACCEPTED);
        let second = line(&stream, first.end, ACCEPTED);
        let (end1, end2) = (first.end, second.end);
        ingest.message(Some(SourceMsg::Lines(vec![first]))).unwrap();
        ingest.start_commit().unwrap();
        assert!(ingest.in_flight.is_some(), "the first commit is out");
        // Processed while the first commit is written: appended, not covered by it.
        ingest
            .message(Some(SourceMsg::Lines(vec![second])))
            .unwrap();
        assert_eq!(ingest.spool.lock().unwrap().next_seq(), 3);
        assert!(!ingest.backlogged(), "the next commit is far from full");
        ingest.uncommitted_bytes += COMMIT_BYTES;
        assert!(
            ingest.backlogged(),
            "a full next commit waits for the first"
        );
        ingest.uncommitted_bytes -= COMMIT_BYTES;

        let res = job_done(&mut ingest.in_flight).await;
        ingest.finish_commit(res).unwrap();
        assert_eq!(ingest.spool.lock().unwrap().durable_seq(), 1);
        assert_eq!(
            ingest.positions.known("auth").get("file:1:2:3"),
            Some(&end1),
            "only the line the first commit made durable advances"
        );

        ingest.commit().unwrap();
        assert_eq!(ingest.spool.lock().unwrap().durable_seq(), 2);
        assert_eq!(
            ingest.positions.known("auth").get("file:1:2:3"),
            Some(&end2)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_end_of_the_sources_spools_the_stop_event_commits_and_starts_the_drain() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ingest, stream) = setup(dir.path());
        let mut drain = ingest.drain_tx.subscribe();
        ingest
            .message(Some(SourceMsg::Lines(vec![line(&stream, 0, ACCEPTED)])))
            .unwrap();
        ingest.message(None).unwrap();
        assert!(*drain.borrow_and_update(), "delivery is told to drain");
        assert!(!ingest.sources_open);
        let spool = ingest.spool.lock().unwrap();
        assert_eq!(spool.durable_seq(), 2, "the login and the Application Stop");
        assert!(ingest.positions.known("auth").contains_key("file:1:2:3"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn positions_are_saved_while_a_burst_keeps_the_source_channel_full() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ingest, stream) = setup(dir.path());
        let state = dir.path().join("state");
        let mut drain = ingest.drain_tx.subscribe();
        // Stands in for the delivery task: done once told to drain.
        let mut delivery = tokio::spawn(async move {
            while !*drain.borrow_and_update() {
                if drain.changed().await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        // Like a file source that reads faster than lines are mapped: the channel stays full.
        let (tx, mut rx) = mpsc::channel::<SourceMsg>(16);
        let producer = tokio::spawn(async move {
            let started = Instant::now();
            let mut offset = 0;
            let mut saved_during_burst = false;
            while started.elapsed() < Duration::from_millis(2500) {
                let batch: Vec<LogLine> = (0..200)
                    .map(|_| {
                        let l = line(&stream, offset, ACCEPTED);
                        offset = l.end;
                        l
                    })
                    .collect();
                if tx.send(SourceMsg::Lines(batch)).await.is_err() {
                    break;
                }
                if started.elapsed() > PERSIST_EVERY * 2 && !saved_during_burst {
                    saved_during_burst = std::fs::read_to_string(state.join("positions.json"))
                        .is_ok_and(|t| t.contains("file:1:2:3"));
                }
            }
            saved_during_burst
        });
        let room = Notify::new();
        let (_trigger, shutdown) = crate::shutdown::channel();
        ingest
            .run(&mut rx, &mut delivery, &room, &shutdown)
            .await
            .unwrap();
        assert!(
            producer.await.unwrap(),
            "positions reached the disk while lines kept coming"
        );
    }
}

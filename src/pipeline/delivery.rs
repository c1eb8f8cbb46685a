//! The delivery stage: spooled events → [`Batch`]es → the output, acknowledged in order.
//!
//! It reads only what a group commit made durable (`Spool::durable_seq`), cuts contiguous
//! seq ranges into Bundles, keeps up to `output.max_in_flight` of them in flight, and
//! acknowledges a range in the spool only after the output settled it (the ARR answered 2xx,
//! or the events were dead-lettered) and every range before it was settled too. A Bundle in
//! flight when the agent stops is resent at the next start with exactly its range (the
//! `inflight` file), so a resend carries the same Bundle id and the same event ids.
//! Each ack hands the spool the settled events' lines for the delivered log
//! (`spool::delivered`: seq, id, recorded; written without an fsync of their own), which
//! `balp-agent arr check` compares with the ARR.

use super::{ACK_EVERY, DRAIN_FOR, PipelineError, SharedSpool};
use crate::batch::{Batch, BatchPolicy};
use crate::deliver::{DeliverError, Delivery, Output};
use crate::metrics::Health;
use crate::shutdown::Shutdown;
use crate::spool::delivered::push_line;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// What the delivery task works with.
pub(super) struct DeliveryCtx {
    pub(super) spool: SharedSpool,
    /// One output per slot (`output.max_in_flight`); a slot's Bundle retries in place.
    pub(super) outputs: Vec<Output>,
    pub(super) policy: BatchPolicy,
    pub(super) health: Arc<Health>,
    /// Signalled after each group commit.
    pub(super) committed: Arc<Notify>,
    /// Signalled after each ack (space may have been freed).
    pub(super) room: Arc<Notify>,
    /// Set when no more events will come (stop signal or `--once` caught up).
    pub(super) drain: watch::Receiver<bool>,
    pub(super) shutdown: Shutdown,
    /// Records the ranges of the Bundles in flight, so a restart resends exactly those.
    pub(super) inflight_path: PathBuf,
    /// Told every acknowledged seq, so NATS sources ack their messages only then.
    pub(super) acker: Arc<crate::source::nats::Acker>,
}

/// What a delivery task hands back: its output (for the next Bundle) and the outcome.
type Joined = Result<(Output, Result<Delivery, DeliverError>), tokio::task::JoinError>;

/// A Bundle being delivered in its own task; the task hands its output back.
struct InFlight {
    first: u64,
    last: u64,
    /// The Bundle's lines for the delivered log, made while its events were at hand.
    lines: String,
    task: tokio::task::JoinHandle<(Output, Result<Delivery, DeliverError>)>,
}

/// The delivery loop's state between turns.
struct Deliverer {
    cx: DeliveryCtx,
    slots: usize,
    /// The first seq not yet put in a Bundle.
    next: u64,
    /// Ranges that were in flight at the last stop, resent first and cut the same way.
    forced: VecDeque<(u64, u64)>,
    /// Bundles in flight, oldest first (acks follow this order).
    window: VecDeque<InFlight>,
    /// Since when `next` has been waiting to be sent, as seen by this task.
    waiting_since: Option<(u64, Instant)>,
    /// Settled but not yet acknowledged in the spool: acks (two fsyncs each) are coalesced.
    to_ack: Option<u64>,
    /// Delivered-log lines of the events up to `to_ack`, written just before its ack.
    to_log: String,
    last_ack: Instant,
    /// A backlog found at start-up goes out at once, without waiting for a full Bundle.
    send_now: bool,
    drain_deadline: Option<Instant>,
}

/// Deliver spooled events as Bundles of contiguous ranges, up to `max_in_flight` at once,
/// and acknowledge them in order. While the ARR fails, no new slot is opened: the Bundles in
/// flight retry and act as the circuit breaker's probes.
pub(super) async fn delivery_task(cx: DeliveryCtx) -> Result<(), PipelineError> {
    let mut d = Deliverer::new(cx)?;
    let result = d.run().await;
    let finished = d.finish();
    result.and(finished)
}

impl Deliverer {
    fn new(cx: DeliveryCtx) -> Result<Deliverer, PipelineError> {
        let (next, durable) = {
            let spool = cx.spool.lock()?;
            (spool.first_unacked(), spool.durable_seq())
        };
        let forced = resumable(read_inflight(&cx.inflight_path), next);
        Ok(Deliverer {
            slots: cx.outputs.len().max(1),
            next,
            forced,
            window: VecDeque::new(),
            waiting_since: None,
            to_ack: None,
            to_log: String::new(),
            last_ack: Instant::now(),
            send_now: durable >= next,
            drain_deadline: None,
            cx,
        })
    }

    async fn run(&mut self) -> Result<(), PipelineError> {
        loop {
            let draining = *self.cx.drain.borrow();
            if draining && self.cx.shutdown.is_triggered() && self.drain_deadline.is_none() {
                self.drain_deadline = Some(Instant::now() + DRAIN_FOR);
            }
            let durable = self.cx.spool.lock()?.durable_seq();
            let unsent = self.unsent(durable);
            self.ack_if_due(unsent)?;
            if self.window.is_empty() && unsent == 0 {
                if draining {
                    return Ok(());
                }
                tokio::select! {
                    _ = self.cx.committed.notified() => {}
                    _ = self.cx.drain.changed() => {}
                }
                continue;
            }
            if self.drain_deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::warn!(
                    unsent,
                    in_flight = self.window.len(),
                    "stop: undelivered events stay in the spool for the next start"
                );
                return Ok(());
            }
            let (wake, unsent) = self.open_slots(durable, draining)?;
            let Some(joined) = self.wait(wake).await else {
                continue;
            };
            if !self.settle(joined)? {
                tracing::warn!(
                    unsent,
                    "stopped before the output accepted every event; they stay in the spool for the next start"
                );
                return Ok(());
            }
        }
    }

    /// Durable events not yet in a Bundle.
    fn unsent(&self, durable: u64) -> u64 {
        if durable >= self.next {
            durable - self.next + 1
        } else {
            0
        }
    }

    /// Acknowledge the settled prefix when idle, every [`ACK_EVERY`], or when the spool is
    /// full (an ack is what frees space).
    fn ack_if_due(&mut self, unsent: u64) -> Result<(), PipelineError> {
        let Some(seq) = self.to_ack else {
            return Ok(());
        };
        let due = (self.window.is_empty() && unsent == 0)
            || self.last_ack.elapsed() >= ACK_EVERY
            || !self.cx.spool.lock()?.has_room();
        if due {
            self.ack(seq)?;
            self.cx.room.notify_one();
            self.to_ack = None;
            self.last_ack = Instant::now();
        }
        Ok(())
    }

    /// Acknowledge the settled events in the spool, which records them in the delivered log
    /// first (a crash between the two only repeats ids in the log).
    fn ack(&mut self, seq: u64) -> Result<(), PipelineError> {
        let lines = std::mem::take(&mut self.to_log);
        self.cx.spool.with(|s| s.ack_delivered(seq, &lines))?;
        self.cx.acker.settled(seq);
        Ok(())
    }

    /// Open slots while a Bundle is ready and the ARR is not failing. Returns when the next
    /// partial Bundle becomes due (if one waits for `flush_interval`) and what stays unsent.
    fn open_slots(
        &mut self,
        durable: u64,
        draining: bool,
    ) -> Result<(Option<Instant>, u64), PipelineError> {
        let mut opened = false;
        let mut wake = None;
        let mut unsent = self.unsent(durable);
        while self.window.len() < self.slots
            && unsent > 0
            && (self.window.is_empty() || !self.cx.health.delivery_failing())
        {
            let Some(output) = self.cx.outputs.pop() else {
                break;
            };
            let since = match self.waiting_since {
                Some((seq, t)) if seq == self.next => t,
                _ => {
                    let t = Instant::now();
                    self.waiting_since = Some((self.next, t));
                    t
                }
            };
            let ready = self.send_now
                || !self.forced.is_empty()
                || self.cx.policy.ready(unsent, since.elapsed(), draining);
            if !ready {
                self.cx.outputs.push(output);
                wake = Some(since + self.cx.policy.flush_interval);
                break;
            }
            let (max_events, max_bytes) = match self.forced.pop_front() {
                Some((first, last)) => ((last - first + 1) as usize, usize::MAX),
                None => (self.cx.policy.max_events, self.cx.policy.max_bytes),
            };
            let next = self.next;
            let spooled = self
                .cx
                .spool
                .with(|s| s.read_range(next, max_events, max_bytes))?;
            let mut lines = String::with_capacity(spooled.len() * 96);
            for e in &spooled {
                push_line(&mut lines, e.seq, &e.record.id, &e.record.json);
            }
            let batch = Batch::from_spooled(spooled);
            let Some((first, last)) = batch.seqs else {
                // Nothing readable (quarantined on the way): look again from the top.
                self.cx.outputs.push(output);
                self.waiting_since = None;
                break;
            };
            let shutdown = self.cx.shutdown.clone();
            let mut output = output;
            let task = tokio::spawn(async move {
                let result = output.deliver(&batch, &shutdown).await;
                (output, result)
            });
            self.window.push_back(InFlight {
                first,
                last,
                lines,
                task,
            });
            self.next = last + 1;
            unsent = self.unsent(durable);
            self.waiting_since = None;
            opened = true;
        }
        if unsent == 0 {
            self.send_now = false;
        }
        if opened {
            let ranges: Vec<(u64, u64)> = self.window.iter().map(|f| (f.first, f.last)).collect();
            write_inflight(&self.cx.inflight_path, &ranges);
        }
        Ok((wake, unsent))
    }

    /// Wait for the oldest Bundle to settle, or for a reason to look again (new events
    /// while a slot is free, a partial Bundle falling due, the drain signal).
    async fn wait(&mut self, wake: Option<Instant>) -> Option<Joined> {
        let can_open = self.window.len() < self.slots;
        let Some(front) = self.window.front_mut() else {
            let wake = wake.unwrap_or_else(|| Instant::now() + self.cx.policy.flush_interval);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = self.cx.committed.notified() => {}
                _ = self.cx.drain.changed() => {}
            }
            return None;
        };
        let sleep_to = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            joined = &mut front.task => Some(joined),
            _ = self.cx.committed.notified(), if can_open => None,
            _ = tokio::time::sleep_until(sleep_to.into()), if can_open && wake.is_some() => None,
            _ = self.cx.drain.changed() => None,
        }
    }

    /// Take the settled front Bundle: queue its ack, give its output back. False when the
    /// stop interrupted it (its events stay in the spool).
    fn settle(&mut self, joined: Joined) -> Result<bool, PipelineError> {
        let done = self.window.pop_front();
        let (output, delivered) =
            joined.map_err(|e| PipelineError::Internal(format!("delivery task: {e}")))?;
        self.cx.outputs.push(output);
        match delivered? {
            Delivery::Accepted | Delivery::DeadLettered { .. } => {
                if let Some(f) = done {
                    self.to_ack = Some(f.last);
                    self.to_log.push_str(&f.lines);
                }
                Ok(true)
            }
            Delivery::Interrupted => Ok(false),
        }
    }

    /// Stop the Bundles still in flight and acknowledge what settled. Bundles after an
    /// unsettled one are not acknowledged (they are sent again, same ids).
    fn finish(&mut self) -> Result<(), PipelineError> {
        for f in self.window.drain(..) {
            f.task.abort();
        }
        if let Some(seq) = self.to_ack.take() {
            self.ack(seq)?;
        }
        Ok(())
    }
}

/// The recorded in-flight ranges that still line up with the spool: a contiguous run
/// starting at `first_unacked` (anything else is stale and ignored).
fn resumable(ranges: Vec<(u64, u64)>, first_unacked: u64) -> VecDeque<(u64, u64)> {
    ranges
        .into_iter()
        .scan(first_unacked, |expect, (first, last)| {
            (first == *expect).then(|| {
                *expect = last + 1;
                (first, last)
            })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balp::EventRecord;
    use crate::config::{BundleType, ByteSize, SpoolConfig, WhenFull};
    use crate::deliver::directory::DirectoryOutput;
    use crate::shutdown::ShutdownTrigger;
    use crate::spool::{Origin, Spool, SpoolOptions};
    use std::sync::Mutex;
    use tempfile::TempDir;
    use uuid::Uuid;

    /// A spool, a directory output and the signals the ingest side would send.
    struct Harness {
        _dir: TempDir,
        state: PathBuf,
        out: PathBuf,
        spool: SharedSpool,
        committed: Arc<Notify>,
        drain_tx: watch::Sender<bool>,
        _trigger: ShutdownTrigger,
        shutdown: Shutdown,
        appended: u64,
    }

    impl Harness {
        fn new() -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            let out = dir.path().join("out");
            let config = SpoolConfig {
                max_bytes: ByteSize(1 << 30),
                when_full: WhenFull::Block,
                min_free: ByteSize(0),
                ..SpoolConfig::default()
            };
            let opts = SpoolOptions {
                segment_bytes: 1 << 20,
                free_floor: 0,
                ..SpoolOptions::default()
            };
            crate::private::create_dir(&state).unwrap();
            let (spool, _) = Spool::open_with(&state, &config, opts).unwrap();
            let (trigger, shutdown) = crate::shutdown::channel();
            Harness {
                _dir: dir,
                state,
                out,
                spool: SharedSpool(Arc::new(Mutex::new(spool))),
                committed: Arc::new(Notify::new()),
                drain_tx: watch::channel(false).0,
                _trigger: trigger,
                shutdown,
                appended: 0,
            }
        }

        /// Append `n` events; commit them (make them durable) if `commit`.
        fn append(&mut self, n: u64, commit: bool) {
            let mut spool = self.spool.lock().unwrap();
            for _ in 0..n {
                self.appended += 1;
                let k = self.appended;
                let record = EventRecord {
                    id: Uuid::from_u128(u128::from(k)),
                    pattern: "read",
                    json: format!(r#"{{"resourceType":"AuditEvent","n":{k}}}"#),
                    leaf: None,
                };
                let origin = Origin {
                    source: "app".into(),
                    stream_key: "file:1:1".into(),
                    path: "/var/log/app.log".into(),
                    start: k * 10,
                    end: k * 10 + 9,
                };
                spool.append(&record, &origin).unwrap();
            }
            if commit {
                spool.commit().unwrap();
            }
        }

        fn ctx(&self, slots: usize, max_events: usize) -> DeliveryCtx {
            let outputs = (0..slots)
                .map(|_| Output::Directory {
                    out: DirectoryOutput::new(&self.out).unwrap(),
                    bundle_type: BundleType::Collection,
                })
                .collect();
            DeliveryCtx {
                spool: self.spool.clone(),
                outputs,
                policy: BatchPolicy {
                    max_events,
                    max_bytes: 1 << 20,
                    flush_interval: Duration::from_millis(20),
                },
                health: Arc::new(Health::default()),
                committed: self.committed.clone(),
                room: Arc::new(Notify::new()),
                drain: self.drain_tx.subscribe(),
                shutdown: self.shutdown.clone(),
                inflight_path: self.state.join("inflight"),
                acker: crate::source::nats::Acker::new(),
            }
        }

        /// The `n` of every event in every Bundle file, one list per file, in name order.
        fn bundles(&self) -> Vec<Vec<u64>> {
            let mut names: Vec<PathBuf> = match std::fs::read_dir(&self.out) {
                Ok(rd) => rd
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect(),
                Err(_) => Vec::new(),
            };
            names.sort();
            names
                .iter()
                .map(|p| {
                    let v: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
                    v["entry"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["resource"]["n"].as_u64().unwrap())
                        .collect()
                })
                .collect()
        }

        fn first_unacked(&self) -> u64 {
            self.spool.lock().unwrap().first_unacked()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_every_durable_event_in_order_in_bundles_of_max_events_and_acks_them() {
        let mut h = Harness::new();
        h.append(10, true);
        h.drain_tx.send_replace(true);
        delivery_task(h.ctx(1, 4)).await.unwrap();
        assert_eq!(
            h.bundles(),
            vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]
        );
        assert_eq!(
            h.first_unacked(),
            11,
            "every delivered event is acknowledged"
        );
        let log = crate::spool::delivered::read(&h.state).unwrap();
        let mut seqs: Vec<(u64, Uuid)> = log.events.values().map(|e| (e.seq, e.id)).collect();
        seqs.sort_unstable();
        let want: Vec<(u64, Uuid)> = (1..=10).map(|k| (k, Uuid::from_u128(k.into()))).collect();
        assert_eq!(seqs, want, "and recorded in the delivered log");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_not_yet_fsynced_are_not_delivered_or_acknowledged() {
        let mut h = Harness::new();
        h.append(3, true);
        h.append(2, false);
        h.drain_tx.send_replace(true);
        delivery_task(h.ctx(1, 100)).await.unwrap();
        assert_eq!(h.bundles(), vec![vec![1, 2, 3]]);
        assert_eq!(h.first_unacked(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bundles_in_flight_at_the_last_stop_are_resent_with_exactly_their_ranges() {
        let mut h = Harness::new();
        h.append(10, true);
        std::fs::write(h.state.join("inflight"), "1-2\n3-7\n").unwrap();
        h.drain_tx.send_replace(true);
        delivery_task(h.ctx(1, 100)).await.unwrap();
        assert_eq!(
            h.bundles(),
            vec![vec![1, 2], vec![3, 4, 5, 6, 7], vec![8, 9, 10]]
        );
        assert_eq!(h.first_unacked(), 11);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_inflight_ranges_are_ignored() {
        let mut h = Harness::new();
        h.append(6, true);
        std::fs::write(h.state.join("inflight"), "4-5\n").unwrap();
        h.drain_tx.send_replace(true);
        delivery_task(h.ctx(1, 100)).await.unwrap();
        assert_eq!(h.bundles(), vec![vec![1, 2, 3, 4, 5, 6]]);
    }

    #[test]
    fn resumable_keeps_the_contiguous_run_from_the_first_unacked_seq() {
        let r = |v: &[(u64, u64)], first| resumable(v.to_vec(), first).into_iter().collect();
        let got: Vec<(u64, u64)> = r(&[(5, 9), (10, 12), (14, 20)], 5);
        assert_eq!(got, vec![(5, 9), (10, 12)]);
        let got: Vec<(u64, u64)> = r(&[(1, 4)], 5);
        assert!(got.is_empty());
    }

    #[test]
    fn inflight_file_round_trips_and_skips_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inflight");
        assert!(read_inflight(&path).is_empty(), "absent file: no ranges");
        write_inflight(&path, &[(1, 5), (6, 6)]);
        assert_eq!(read_inflight(&path), vec![(1, 5), (6, 6)]);
        std::fs::write(&path, "1-5\nx-y\n9-3\n6-8\n").unwrap();
        assert_eq!(read_inflight(&path), vec![(1, 5), (6, 8)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_committed_while_running_go_out_after_the_flush_interval() {
        let mut h = Harness::new();
        let task = tokio::spawn(delivery_task(h.ctx(1, 100)));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(h.bundles().is_empty());
        h.append(3, true);
        h.committed.notify_one();
        let mut waited = 0;
        while h.bundles().is_empty() && waited < 500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        assert_eq!(
            h.bundles(),
            vec![vec![1, 2, 3]],
            "a partial Bundle goes out once its flush interval passed"
        );
        h.append(2, true);
        h.committed.notify_one();
        h.drain_tx.send_replace(true);
        task.await.unwrap().unwrap();
        let all: Vec<u64> = h.bundles().concat();
        assert_eq!(all, vec![1, 2, 3, 4, 5]);
        assert_eq!(h.first_unacked(), 6);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_slots_deliver_everything_once_and_ack_the_whole_range() {
        let mut h = Harness::new();
        h.append(50, true);
        h.drain_tx.send_replace(true);
        delivery_task(h.ctx(3, 7)).await.unwrap();
        let mut all: Vec<u64> = h.bundles().concat();
        all.sort_unstable();
        assert_eq!(all, (1..=50).collect::<Vec<_>>());
        assert!(h.bundles().iter().all(|b| b.len() <= 7));
        assert_eq!(h.first_unacked(), 51);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_output_that_fails_for_good_stops_the_task_and_nothing_is_acknowledged() {
        let mut h = Harness::new();
        h.append(4, true);
        let cx = h.ctx(1, 100);
        // The output directory is replaced by a file: every Bundle write fails.
        std::fs::remove_dir_all(&h.out).unwrap();
        std::fs::write(&h.out, "not a directory").unwrap();
        h.drain_tx.send_replace(true);
        let err = delivery_task(cx).await.unwrap_err();
        assert!(matches!(err, PipelineError::Deliver(_)), "{err}");
        assert_eq!(h.first_unacked(), 1, "the events stay in the spool");
        let log = crate::spool::delivered::read(&h.state).unwrap();
        assert!(log.events.is_empty(), "nothing settled, nothing logged");
    }
}

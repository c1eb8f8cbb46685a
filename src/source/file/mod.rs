//! The file source: follows the files matched by one `type = "file"` source's globs.
//!
//! In: a [`SourceConfig`] and the saved positions of its streams. Out: [`SourceMsg`]s on a
//! channel — batches of complete lines in stream order, `Position`s when a stream starts or
//! restarts, `Forget` when a deleted file has been read to its end, and `CaughtUp` in
//! `--once` mode.
//!
//! One OS thread per source polls: every `poll_interval` it re-evaluates the globs, `stat`s
//! every followed file and reads what is new. A full channel blocks reading (backpressure);
//! nothing is buffered beyond one batch and one read buffer.
//!
//! * [`identity`] — which stream a file is (device, inode, checksum of its first line).
//! * [`positions`] — the persisted read positions.
//! * [`reader`] — bounded line splitting with exact offsets.
//! * [`watcher`] — glob discovery and the follow state of one file (rotation, truncation,
//!   deletion).

pub mod identity;
pub mod positions;
pub mod reader;
pub mod watcher;

use crate::config::{ReadFrom, SourceConfig};
use crate::shutdown::Shutdown;
use crate::source::{LogLine, SourceMsg};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;
use watcher::{Discovery, Follower, Start};

pub use positions::{Positions, PositionsError};

/// A batch is sent once it holds this many lines…
const BATCH_LINES: usize = 1000;
/// …or this many bytes of text.
const BATCH_BYTES: usize = 1 << 20;
/// Size of the one read buffer the thread shares between its files.
const READ_BUFFER: usize = 64 * 1024;
/// Bytes read from one file per poll before the others get their turn.
const READ_BUDGET: u64 = 32 << 20;
/// The shortest time a rotated or deleted file is kept open after its last growth.
const MIN_RELEASE_AFTER: Duration = Duration::from_secs(5);

/// Timing knobs, fixed in production and shortened in tests.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    poll_interval: Duration,
    /// A rotated or deleted file is released after being idle (read to its end, no growth)
    /// this long.
    release_after: Duration,
}

impl Tuning {
    fn for_config(cfg: &SourceConfig) -> Tuning {
        let poll_interval = cfg.poll_interval.0.max(Duration::from_millis(1));
        Tuning {
            poll_interval,
            // A writer that has not reopened its log yet (e.g. before logrotate's postrotate
            // signal reaches it) still appends to the rotated file; give it time.
            release_after: (poll_interval * 4).max(MIN_RELEASE_AFTER),
        }
    }
}

/// Start following the files of one `type = "file"` source on its own OS thread. Lines go
/// out in batches (up to ~1000 lines or ~1 MiB); a full channel blocks reading. Returns when
/// shutdown is triggered or the receiver is gone, or with `once` after everything present has
/// been read (then `SourceMsg::CaughtUp(source_name)` is the last message).
pub fn spawn(
    cfg: &SourceConfig,
    known: BTreeMap<String, u64>,
    tx: Sender<SourceMsg>,
    shutdown: Shutdown,
    once: bool,
) -> std::io::Result<JoinHandle<()>> {
    spawn_tuned(cfg, Tuning::for_config(cfg), known, tx, shutdown, once)
}

fn spawn_tuned(
    cfg: &SourceConfig,
    tuning: Tuning,
    known: BTreeMap<String, u64>,
    tx: Sender<SourceMsg>,
    shutdown: Shutdown,
    once: bool,
) -> std::io::Result<JoinHandle<()>> {
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name(format!("file-source-{}", cfg.name))
        .spawn(move || {
            let mut sink = Sink::new(tx, shutdown.clone());
            let mut driver = Driver::new(&cfg, tuning, known);
            // Stopped only means "shutdown or receiver gone": nothing to report.
            let _ = driver.run(&mut sink, &shutdown, once);
            tracing::debug!(source = %cfg.name, "file source stopped");
        })
}

/// Reading was interrupted: shutdown was requested or the receiver is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// Collects lines into batches and sends them (and other messages) in order.
#[derive(Debug)]
pub struct Sink {
    tx: Sender<SourceMsg>,
    shutdown: Shutdown,
    batch: Vec<LogLine>,
    bytes: usize,
}

impl Sink {
    fn new(tx: Sender<SourceMsg>, shutdown: Shutdown) -> Sink {
        Sink {
            tx,
            shutdown,
            batch: Vec::with_capacity(BATCH_LINES),
            bytes: 0,
        }
    }

    /// Add a line; sends the batch when it is full.
    pub fn push(&mut self, line: LogLine) -> Result<(), Stopped> {
        self.bytes += line.text.len();
        self.batch.push(line);
        if self.batch.len() >= BATCH_LINES || self.bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Send the lines collected so far.
    pub fn flush(&mut self) -> Result<(), Stopped> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_LINES));
        self.bytes = 0;
        crate::events::lines_read(batch.len() as u64);
        self.deliver(SourceMsg::Lines(batch))
    }

    /// Send a message after the lines collected so far.
    pub fn message(&mut self, msg: SourceMsg) -> Result<(), Stopped> {
        self.flush()?;
        self.deliver(msg)
    }

    /// Wait for room in the channel. Polls instead of `blocking_send` so that a shutdown
    /// while the pipeline is not draining the channel still ends the thread.
    fn deliver(&mut self, mut msg: SourceMsg) -> Result<(), Stopped> {
        let mut wait = Duration::from_millis(1);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(Stopped),
                Err(TrySendError::Full(m)) => {
                    if self.shutdown.is_triggered() {
                        return Err(Stopped);
                    }
                    msg = m;
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(20));
                }
            }
        }
    }
}

/// The loop of one source: discover, read, sleep.
struct Driver {
    source: Arc<str>,
    discovery: Discovery,
    read_from: ReadFrom,
    max_line_bytes: u64,
    tuning: Tuning,
    known: BTreeMap<String, u64>,
    followers: BTreeMap<identity::FileId, Follower>,
    /// Paths that could not be opened, so each is logged once until it opens again.
    unreadable: HashSet<PathBuf>,
    buf: Vec<u8>,
}

impl Driver {
    fn new(cfg: &SourceConfig, tuning: Tuning, known: BTreeMap<String, u64>) -> Driver {
        Driver {
            source: Arc::from(cfg.name.as_str()),
            discovery: Discovery::new(&cfg.name, &cfg.include, &cfg.exclude),
            read_from: cfg.read_from,
            max_line_bytes: cfg.max_line_bytes.0.max(1),
            tuning,
            known,
            followers: BTreeMap::new(),
            unreadable: HashSet::new(),
            buf: vec![0u8; READ_BUFFER],
        }
    }

    fn run(&mut self, sink: &mut Sink, shutdown: &Shutdown, once: bool) -> Result<(), Stopped> {
        let mut first = true;
        loop {
            if shutdown.is_triggered() {
                return Err(Stopped);
            }
            self.discover(first, sink)?;
            first = false;
            let mut more = self.read_all(sink, shutdown)?;
            if once {
                while more {
                    more = self.read_all(sink, shutdown)?;
                }
                // Nothing more is awaited in --once: a final line without newline is complete.
                for f in self.followers.values_mut() {
                    f.release(&mut self.buf, sink)?;
                }
                sink.message(SourceMsg::CaughtUp(self.source.clone()))?;
                return Ok(());
            }
            sink.flush()?;
            if !more {
                sleep_unless_stopped(self.tuning.poll_interval, shutdown);
            }
        }
    }

    /// Re-evaluate the globs: follow new files, notice files that left the watched names.
    fn discover(&mut self, startup: bool, sink: &mut Sink) -> Result<(), Stopped> {
        let found = self.discovery.scan();
        for (id, f) in self.followers.iter_mut() {
            match found.get(id) {
                Some(path) => f.seen_at(path),
                None => f.mark_gone(),
            }
        }
        for (id, path) in found {
            if self.followers.contains_key(&id) {
                continue;
            }
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    if self.unreadable.insert(path.clone()) {
                        tracing::warn!(source = %self.source, path = %path.display(), error = %e, "cannot open file; will retry");
                    }
                    continue;
                }
            };
            let start = if startup && self.read_from == ReadFrom::End {
                Start::End
            } else {
                Start::Beginning
            };
            let follower = match Follower::start(
                &self.source,
                path.clone(),
                file,
                start,
                &mut self.known,
                self.max_line_bytes,
                sink,
            ) {
                Ok(result) => result?,
                Err(e) => {
                    if self.unreadable.insert(path.clone()) {
                        tracing::warn!(source = %self.source, path = %path.display(), error = %e, "cannot read file; will retry");
                    }
                    continue;
                }
            };
            self.unreadable.remove(&path);
            // Replaced between the scan and the open: follow it under its real id; the next
            // scan sorts out the rest.
            self.followers.entry(follower.id()).or_insert(follower);
        }
        Ok(())
    }

    /// Poll every follower once; true if some file has more to read right away.
    fn read_all(&mut self, sink: &mut Sink, shutdown: &Shutdown) -> Result<bool, Stopped> {
        let mut more = false;
        let mut released = Vec::new();
        for (id, f) in self.followers.iter_mut() {
            if shutdown.is_triggered() {
                return Err(Stopped);
            }
            let polled = f.poll(&mut self.buf, READ_BUDGET, self.tuning.release_after, sink)?;
            more |= polled.more;
            if polled.released {
                released.push(*id);
            }
        }
        for id in released {
            self.followers.remove(&id);
        }
        Ok(more)
    }
}

/// Sleep `total`, waking early when shutdown is requested.
fn sleep_unless_stopped(total: Duration, shutdown: &Shutdown) {
    let slice = Duration::from_millis(50);
    let mut left = total;
    while !left.is_zero() && !shutdown.is_triggered() {
        let step = left.min(slice);
        std::thread::sleep(step);
        left -= step;
    }
}

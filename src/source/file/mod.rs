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
//! * [`compressed`] — unread lines of a file compressed after rotation while stopped.
//! * [`identity`] — which stream a file is (device, inode, checksum of its first line).
//! * [`positions`] — the persisted read positions.
//! * [`reader`] — bounded line splitting with exact offsets.
//! * [`watcher`] — glob discovery and the follow state of one file (rotation, truncation,
//!   deletion).

pub mod compressed;
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

pub use positions::{Positions, PositionsError, Saved};

/// A batch is sent once it holds this many lines…
///
/// The ingest channel holds 16 batches, so these bound the memory lines can take while they
/// wait (16 × 256 KiB at most); 256 lines already make the per-message cost negligible.
const BATCH_LINES: usize = 256;
/// …or this many bytes of text.
const BATCH_BYTES: usize = 256 << 10;
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
    known: BTreeMap<String, Saved>,
    tx: Sender<SourceMsg>,
    shutdown: Shutdown,
    once: bool,
) -> std::io::Result<JoinHandle<()>> {
    spawn_tuned(cfg, Tuning::for_config(cfg), known, tx, shutdown, once)
}

fn spawn_tuned(
    cfg: &SourceConfig,
    tuning: Tuning,
    known: BTreeMap<String, Saved>,
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
    /// A sink sending to `tx` that gives up when `shutdown` is triggered.
    pub fn new(tx: Sender<SourceMsg>, shutdown: Shutdown) -> Sink {
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
    known: BTreeMap<String, Saved>,
    followers: BTreeMap<identity::FileId, Follower>,
    /// Paths that could not be opened, so each is logged once until it opens again.
    unreadable: HashSet<PathBuf>,
    /// copytruncate copies whose tail was read through the file they copy: never followed.
    absorbed: HashSet<identity::FileId>,
    /// Files not followed (yet) because they look like a copy of a followed file, so each is
    /// logged once.
    deferred: HashSet<identity::FileId>,
    buf: Vec<u8>,
}

impl Driver {
    fn new(cfg: &SourceConfig, tuning: Tuning, known: BTreeMap<String, Saved>) -> Driver {
        Driver {
            source: Arc::from(cfg.name.as_str()),
            discovery: Discovery::new(&cfg.name, &cfg.include, &cfg.exclude),
            read_from: cfg.read_from,
            max_line_bytes: cfg.max_line_bytes.0.max(1),
            tuning,
            known,
            followers: BTreeMap::new(),
            unreadable: HashSet::new(),
            absorbed: HashSet::new(),
            deferred: HashSet::new(),
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
        // Forget absorbed copies once they are gone, so a reused inode is followed again.
        self.absorbed.retain(|id| found.contains_key(id));
        self.deferred.retain(|id| found.contains_key(id));
        for (id, f) in self.followers.iter_mut() {
            match found.get(id) {
                Some(path) => f.seen_at(path),
                None => f.mark_gone(),
            }
        }
        for (id, path) in found {
            if self.followers.contains_key(&id) || self.absorbed.contains(&id) {
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
            if self.followers.values().any(|f| f.is_copy(&file, id, &path)) {
                if self.deferred.insert(id) {
                    tracing::info!(source = %self.source, path = %path.display(), "file looks like a copy of a followed file (copytruncate); not read as a stream of its own");
                }
                continue;
            }
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
                &mut self.buf,
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
            let mut follower = follower;
            self.absorbed.extend(follower.take_absorbed());
            // Replaced between the scan and the open: follow it under its real id; the next
            // scan sorts out the rest.
            self.followers.entry(follower.id()).or_insert(follower);
        }
        // A copy started in this pass before the file it copies absorbed it has read nothing
        // yet (reading comes after discovery): drop it.
        let absorbed = &self.absorbed;
        self.followers.retain(|id, _| !absorbed.contains(id));
        if startup {
            // What no file claimed may have been rotated and compressed while stopped.
            let unclaimed: BTreeMap<String, Saved> = self
                .known
                .iter()
                .filter(|(k, s)| identity::parse_key(k).is_some() && !s.path.as_os_str().is_empty())
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect();
            let done = compressed::recover(
                &self.source,
                &unclaimed,
                self.max_line_bytes,
                &mut self.buf,
                sink,
            )?;
            for k in done {
                self.known.remove(&k);
            }
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
            self.absorbed.extend(f.take_absorbed());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, ConfigDuration, DecodeKind, SourceType};
    use crate::shutdown::{self, ShutdownTrigger};
    use crate::source::Checkpoint;
    use std::fs::{File, OpenOptions};
    use std::io::Write;
    use std::path::Path;
    use std::time::Instant;
    use tokio::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(10);

    fn config(include: &[&Path], read_from: ReadFrom) -> SourceConfig {
        SourceConfig {
            name: "test".to_owned(),
            source_type: SourceType::File,
            include: include.iter().map(|p| p.display().to_string()).collect(),
            exclude: Vec::new(),
            read_from,
            decode: DecodeKind::Raw,
            parsers: Vec::new(),
            multiline: Default::default(),
            trust_forwarded_for: false,
            log_line_prefix: None,
            max_line_bytes: ByteSize(64 * 1024),
            timezone: None,
            fhir_base: None,
            poll_interval: ConfigDuration(Duration::from_millis(10)),
            listen: None,
            journal_match: Vec::new(),
            journal_namespace: None,
            tls: None,
            max_connections: 256,
            max_frame_bytes: ByteSize(64 * 1024),
            nats: None,
        }
    }

    /// A running source thread and what it has sent so far.
    struct Harness {
        rx: mpsc::Receiver<SourceMsg>,
        trigger: ShutdownTrigger,
        handle: Option<JoinHandle<()>>,
        /// Messages received but not yet taken, in order.
        seen: Vec<SourceMsg>,
    }

    fn start(cfg: &SourceConfig, known: BTreeMap<String, u64>, once: bool) -> Harness {
        start_with_capacity(cfg, known, once, 64)
    }

    fn start_with_capacity(
        cfg: &SourceConfig,
        known: BTreeMap<String, u64>,
        once: bool,
        capacity: usize,
    ) -> Harness {
        let known = known
            .into_iter()
            .map(|(k, o)| (k, Saved::from(o)))
            .collect();
        start_saved(cfg, known, once, capacity)
    }

    fn start_saved(
        cfg: &SourceConfig,
        known: BTreeMap<String, Saved>,
        once: bool,
        capacity: usize,
    ) -> Harness {
        let (tx, rx) = mpsc::channel(capacity);
        let (trigger, shutdown) = shutdown::channel();
        let tuning = Tuning {
            poll_interval: cfg.poll_interval.0,
            release_after: Duration::from_millis(100),
        };
        let handle = spawn_tuned(cfg, tuning, known, tx, shutdown, once).unwrap();
        Harness {
            rx,
            trigger,
            handle: Some(handle),
            seen: Vec::new(),
        }
    }

    impl Harness {
        fn pump(&mut self) -> bool {
            let mut got = false;
            while let Ok(m) = self.rx.try_recv() {
                self.seen.push(m);
                got = true;
            }
            got
        }

        fn line_count(&self) -> usize {
            self.seen
                .iter()
                .map(|m| match m {
                    SourceMsg::Lines(l) => l.len(),
                    _ => 0,
                })
                .sum()
        }

        /// Wait until `n` lines have arrived (in total, not yet taken) and take every line.
        fn lines(&mut self, n: usize) -> Vec<LogLine> {
            let deadline = Instant::now() + WAIT;
            while self.line_count() < n && Instant::now() < deadline {
                if !self.pump() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let lines = self.take_lines();
            assert_eq!(lines.len(), n, "{:?}", texts(&lines));
            lines
        }

        fn take_lines(&mut self) -> Vec<LogLine> {
            let mut out = Vec::new();
            for m in &self.seen {
                if let SourceMsg::Lines(l) = m {
                    out.extend(l.iter().cloned());
                }
            }
            self.seen.retain(|m| !matches!(m, SourceMsg::Lines(_)));
            out
        }

        /// Whatever lines arrive within `d`.
        fn quiet(&mut self, d: Duration) -> Vec<LogLine> {
            let deadline = Instant::now() + d;
            while Instant::now() < deadline {
                self.pump();
                std::thread::sleep(Duration::from_millis(5));
            }
            self.take_lines()
        }

        /// Wait until a message matching `pred` has arrived.
        fn wait_for(&mut self, pred: impl Fn(&SourceMsg) -> bool) -> bool {
            let deadline = Instant::now() + WAIT;
            loop {
                if self.seen.iter().any(&pred) {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
                if !self.pump() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }

        fn positions(&self) -> Vec<Checkpoint> {
            self.seen
                .iter()
                .filter_map(|m| match m {
                    SourceMsg::Position(cp) => Some(cp.clone()),
                    _ => None,
                })
                .collect()
        }

        fn stop(&mut self) {
            self.trigger.trigger();
            if let Some(h) = self.handle.take() {
                let deadline = Instant::now() + WAIT;
                while !h.is_finished() && Instant::now() < deadline {
                    // Keep draining so a blocked send cannot hold the thread.
                    self.pump();
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert!(h.is_finished(), "source thread did not stop");
                h.join().unwrap();
            }
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.trigger.trigger();
        }
    }

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    fn append(path: &Path, data: &[u8]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(data).unwrap();
    }

    fn key_of(path: &Path) -> String {
        let f = File::open(path).unwrap();
        let id = identity::FileId::of(&f.metadata().unwrap());
        identity::file_key(&f, id, false).unwrap().unwrap()
    }

    #[test]
    fn restart_resumes_exactly_at_saved_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"one\ntwo\nthree\n").unwrap();
        let cfg = config(&[&log], ReadFrom::Beginning);

        let mut first = start(&cfg, BTreeMap::new(), false);
        let lines = first.lines(3);
        first.stop();
        // Say the pipeline acknowledged up to the end of "two".
        let acked = lines[1].end;
        assert_eq!(acked, 8);
        let key = lines[1].stream.key.clone();
        assert_eq!(key, key_of(&log));
        append(&log, b"four\n");

        let mut second = start(&cfg, BTreeMap::from([(key.clone(), acked)]), false);
        let lines = second.lines(2);
        assert_eq!(texts(&lines), ["three", "four"]);
        assert_eq!((lines[0].offset, lines[0].end), (8, 14));
        assert_eq!(lines[0].stream.key, key);
        assert!(second.quiet(Duration::from_millis(50)).is_empty());
        second.stop();
    }

    /// Saved position of `path` at `offset`, with the marker the positions file would hold.
    fn saved_at(path: &Path, offset: u64) -> (String, Saved) {
        let f = File::open(path).unwrap();
        let marker = identity::marker_at(&f, offset).unwrap();
        assert!(marker.is_some());
        (
            key_of(path),
            Saved {
                offset,
                marker,
                path: path.to_path_buf(),
            },
        )
    }

    #[test]
    fn unchanged_file_resumes_exactly_at_a_marked_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"one\ntwo\n").unwrap();
        let (key, saved) = saved_at(&log, 4);
        append(&log, b"three\n");
        let cfg = config(&[&log], ReadFrom::Beginning);
        let mut h = start_saved(&cfg, BTreeMap::from([(key, saved)]), false, 64);
        let lines = h.lines(2);
        assert_eq!(texts(&lines), ["two", "three"]);
        assert_eq!(lines[0].offset, 4);
        assert!(h.quiet(Duration::from_millis(50)).is_empty());
        h.stop();
    }

    #[test]
    fn copytruncate_while_stopped_and_regrown_is_read_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"header\nold a\nold b\n").unwrap();
        let (key, saved) = saved_at(&log, 19);
        // Stopped: copytruncate, then the writer (same first line) regrows the file past 19.
        std::fs::copy(&log, dir.path().join("a.log.1")).unwrap();
        let f = OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(0).unwrap();
        drop(f);
        append(&log, b"header\nnew line 1\nnew line 2\n");
        assert_eq!(key_of(&log), key, "same inode and first line: same key");
        let cfg = config(&[&log], ReadFrom::Beginning);
        let mut h = start_saved(&cfg, BTreeMap::from([(key.clone(), saved)]), false, 64);
        let lines = h.lines(3);
        assert_eq!(texts(&lines), ["header", "new line 1", "new line 2"]);
        assert_eq!(lines[0].offset, 0);
        // (The copy a.log.1 holds nothing unread; its end is saved under its own key.)
        let positions: Vec<_> = h
            .positions()
            .into_iter()
            .filter(|cp| cp.stream.key == key)
            .collect();
        assert_eq!(positions[0].offset, 0);
        h.stop();
    }

    fn gzip(path: &Path, data: &[u8]) {
        let mut enc =
            flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap();
    }

    #[test]
    fn file_compressed_after_rotation_while_stopped_yields_its_unread_lines_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        std::fs::write(&log, b"head\nread 1\n").unwrap();
        let (key, saved) = saved_at(&log, 12);
        // Stopped: more lines, then logrotate `compress`: renamed, gzipped, a new file.
        append(&log, b"unread 1\nunread 2\nlast without newline");
        gzip(
            &dir.path().join("app.log.1.gz"),
            &std::fs::read(&log).unwrap(),
        );
        // Same first line, other bytes before the offset: not the stream's copy.
        gzip(&dir.path().join("app.log.2.gz"), b"head\nRAED 1\nother\n");
        std::fs::remove_file(&log).unwrap();
        std::fs::write(&log, b"new file\n").unwrap();
        let cfg = config(&[&dir.path().join("app.log*")], ReadFrom::Beginning);
        let mut h = start_saved(&cfg, BTreeMap::from([(key.clone(), saved)]), false, 64);
        let mut lines = h.lines(4);
        lines.sort_by_key(|l| l.stream.key != key);
        assert_eq!(
            lines
                .iter()
                .map(|l| (l.text.as_str(), l.offset))
                .collect::<Vec<_>>(),
            [
                ("unread 1", 12),
                ("unread 2", 21),
                ("last without newline", 30),
                ("new file", 0)
            ]
        );
        assert_eq!(lines[0].stream.key, key);
        assert!(h.wait_for(|m| matches!(m, SourceMsg::Forget(s) if s.key == key)));
        assert!(h.quiet(Duration::from_millis(100)).is_empty());
        h.stop();
        // The stream is forgotten: the next start reads no compressed file.
        let mut again = start(&cfg, BTreeMap::from([(key_of(&log), 9)]), false);
        assert!(again.quiet(Duration::from_millis(200)).is_empty());
        again.stop();
    }

    #[test]
    fn copytruncate_while_stopped_reads_the_unread_tail_from_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        std::fs::write(&log, b"head\nread 1\n").unwrap();
        let (key, saved) = saved_at(&log, 12);
        // Stopped: unread lines, then logrotate copytruncate, then the writer goes on.
        append(&log, b"unread 1\nunread 2\n");
        copytruncate(&log, &dir.path().join("app.log.1"));
        append(&log, b"after\n");
        let cfg = config(&[&dir.path().join("app.log*")], ReadFrom::Beginning);
        let mut h = start_saved(&cfg, BTreeMap::from([(key.clone(), saved)]), false, 64);
        let mut lines = h.lines(3);
        lines.sort_by_key(|l| l.stream.key != key);
        assert_eq!(
            lines
                .iter()
                .map(|l| (l.text.as_str(), l.offset))
                .collect::<Vec<_>>(),
            [("unread 1", 12), ("unread 2", 21), ("after", 0)]
        );
        assert_eq!(lines[0].stream.key, key);
        assert!(h.quiet(Duration::from_millis(200)).is_empty());
        h.stop();
    }

    #[test]
    fn saved_offset_past_the_end_means_truncated_while_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"one\n").unwrap();
        let key = key_of(&log);
        let cfg = config(&[&log], ReadFrom::End);
        let mut h = start(&cfg, BTreeMap::from([(key.clone(), 1000)]), false);
        let lines = h.lines(1);
        assert_eq!((lines[0].offset, lines[0].text.as_str()), (0, "one"));
        let positions = h.positions();
        assert_eq!(positions[0].offset, 0);
        assert_eq!(positions[0].stream.key, key);
        h.stop();
    }

    #[test]
    fn read_from_end_skips_existing_but_reads_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        std::fs::write(&a, b"old1\nold2\npar").unwrap();
        let cfg = config(&[&dir.path().join("*.log")], ReadFrom::End);
        let mut h = start(&cfg, BTreeMap::new(), false);
        assert!(h.wait_for(|m| matches!(m, SourceMsg::Position(cp) if cp.offset == 10)));
        append(&a, b"tial\nnew\n");
        let b = dir.path().join("b.log");
        std::fs::write(&b, b"b1\nb2\n").unwrap();
        let lines = h.lines(4);
        let from_a: Vec<_> = lines.iter().filter(|l| l.stream.path == a).collect();
        let from_b: Vec<_> = lines.iter().filter(|l| l.stream.path == b).collect();
        assert_eq!(
            from_a
                .iter()
                .map(|l| (l.text.as_str(), l.offset))
                .collect::<Vec<_>>(),
            [("partial", 10), ("new", 18)]
        );
        assert_eq!(
            from_b
                .iter()
                .map(|l| (l.text.as_str(), l.offset))
                .collect::<Vec<_>>(),
            [("b1", 0), ("b2", 3)]
        );
        h.stop();
    }

    #[test]
    fn rotation_by_rename_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let cfg = config(&[&log], ReadFrom::Beginning);
        let mut old = File::create(&log).unwrap();
        for i in 0..50 {
            writeln!(old, "old {i}").unwrap();
        }
        let mut h = start(&cfg, BTreeMap::new(), false);
        let mut lines = h.lines(50);
        // logrotate `create`: rename, the writer keeps writing to its open file, a new file
        // appears at the old name, and only later does the writer switch over.
        std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
        for i in 50..60 {
            writeln!(old, "old {i}").unwrap();
        }
        let mut new = File::create(&log).unwrap();
        for i in 0..20 {
            writeln!(new, "new {i}").unwrap();
        }
        for i in 60..70 {
            writeln!(old, "old {i}").unwrap();
        }
        write!(old, "old last without newline").unwrap();
        lines.extend(h.lines(20 + 20 + 1));
        let old_key = lines[0].stream.key.clone();
        let (from_old, from_new): (Vec<_>, Vec<_>) =
            lines.iter().partition(|l| l.stream.key == old_key);
        let mut expect_old: Vec<String> = (0..70).map(|i| format!("old {i}")).collect();
        expect_old.push("old last without newline".to_owned());
        assert_eq!(
            from_old.iter().map(|l| l.text.clone()).collect::<Vec<_>>(),
            expect_old
        );
        assert_eq!(
            from_new.iter().map(|l| l.text.clone()).collect::<Vec<_>>(),
            (0..20).map(|i| format!("new {i}")).collect::<Vec<_>>()
        );
        assert_eq!(from_new[0].offset, 0);
        // Offsets are contiguous within each stream.
        for w in from_old.windows(2).chain(from_new.windows(2)) {
            assert_eq!(w[0].end, w[1].offset);
        }
        assert!(h.quiet(Duration::from_millis(300)).is_empty());
        // Renamed, not deleted: its position is kept.
        assert!(!h.seen.iter().any(|m| matches!(m, SourceMsg::Forget(_))));
        h.stop();
    }

    #[test]
    fn deleted_file_is_read_to_the_end_then_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let cfg = config(&[&log], ReadFrom::Beginning);
        let mut f = File::create(&log).unwrap();
        writeln!(f, "one").unwrap();
        let mut h = start(&cfg, BTreeMap::new(), false);
        h.lines(1);
        std::fs::remove_file(&log).unwrap();
        writeln!(f, "two").unwrap();
        let lines = h.lines(1);
        assert_eq!(texts(&lines), ["two"]);
        let key = lines[0].stream.key.clone();
        assert!(h.wait_for(|m| matches!(m, SourceMsg::Forget(s) if s.key == key)));
        h.stop();
    }

    #[test]
    fn rotated_file_with_only_a_partial_line_is_released_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let cfg = config(&[&log], ReadFrom::Beginning);
        std::fs::write(&log, b"no newline yet").unwrap();
        let mut h = start(&cfg, BTreeMap::new(), false);
        assert!(h.quiet(Duration::from_millis(50)).is_empty());
        std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
        let lines = h.lines(1);
        assert_eq!(
            (lines[0].text.as_str(), lines[0].end),
            ("no newline yet", 14)
        );
        h.stop();
    }

    #[test]
    fn truncation_restarts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"aaaa\nbbbb\n").unwrap();
        let cfg = config(&[&log], ReadFrom::Beginning);
        let mut h = start(&cfg, BTreeMap::new(), false);
        let before = h.lines(2);
        let old = before[0].stream.clone();
        // copytruncate: the file is emptied in place, then written again.
        let f = OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(0).unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(50));
        append(&log, b"x\n");
        let after = h.lines(1);
        assert_eq!(
            (after[0].text.as_str(), after[0].offset, after[0].end),
            ("x", 0, 2)
        );
        assert!(
            h.positions()
                .iter()
                .any(|cp| cp.stream == old && cp.offset == 0)
        );
        h.stop();
    }

    fn copytruncate(log: &Path, copy: &Path) {
        std::fs::copy(log, copy).unwrap();
        let f = OpenOptions::new().write(true).open(log).unwrap();
        f.set_len(0).unwrap();
    }

    #[test]
    fn copytruncate_while_following_reads_every_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let mut cfg = config(&[&dir.path().join("app.log*")], ReadFrom::Beginning);
        // Slow polls, so the lines appended just before the copy are not read from the
        // original before it is truncated.
        cfg.poll_interval = ConfigDuration(Duration::from_millis(300));
        let a: String = (0..10).map(|i| format!("a {i}\n")).collect();
        std::fs::write(&log, &a).unwrap();
        let mut h = start(&cfg, BTreeMap::new(), false);
        let mut lines = h.lines(10);
        let key = lines[0].stream.key.clone();
        // Between our last read and logrotate's copy: only the copy will hold these.
        append(
            &log,
            (0..5)
                .map(|i| format!("b {i}\n"))
                .collect::<String>()
                .as_bytes(),
        );
        copytruncate(&log, &dir.path().join("app.log.1"));
        append(
            &log,
            (0..5)
                .map(|i| format!("c {i}\n"))
                .collect::<String>()
                .as_bytes(),
        );
        lines.extend(h.lines(10));
        let (old, new): (Vec<_>, Vec<_>) = lines.iter().partition(|l| l.stream.key == key);
        let expect_old: Vec<String> = (0..10)
            .map(|i| format!("a {i}"))
            .chain((0..5).map(|i| format!("b {i}")))
            .collect();
        assert_eq!(
            old.iter().map(|l| l.text.clone()).collect::<Vec<_>>(),
            expect_old
        );
        for w in old.windows(2) {
            assert_eq!(w[0].end, w[1].offset);
        }
        assert_eq!(
            new.iter().map(|l| l.text.clone()).collect::<Vec<_>>(),
            (0..5).map(|i| format!("c {i}")).collect::<Vec<_>>()
        );
        assert_eq!(new[0].offset, 0);
        // The copy matches the globs but is never read as a stream of its own, and its end
        // is saved under its own key for the next start.
        assert!(h.quiet(Duration::from_millis(700)).is_empty());
        let copy = dir.path().join("app.log.1");
        let copy_len = std::fs::metadata(&copy).unwrap().len();
        let saved_copy = h
            .positions()
            .into_iter()
            .find(|cp| cp.stream.path == copy)
            .unwrap();
        assert_eq!(saved_copy.stream.key, key_of(&copy));
        assert_eq!(saved_copy.offset, copy_len);

        // A copy seen by discovery before the truncation (copy in progress or done) is not
        // followed either, and the lines after the truncation still arrive.
        copytruncate(&log, &dir.path().join("app.log.2"));
        std::thread::sleep(Duration::from_millis(700));
        append(&log, b"d 0\n");
        assert_eq!(texts(&h.lines(1)), ["d 0"]);
        assert!(h.quiet(Duration::from_millis(700)).is_empty());
        h.stop();

        // Restarted with what the positions hold: the copies are not read again.
        // (The pipeline would also checkpoint the end of every line read.)
        let mut known: BTreeMap<String, u64> = h
            .positions()
            .into_iter()
            .map(|cp| (cp.stream.key.clone(), cp.offset))
            .collect();
        known.insert(key_of(&log), std::fs::metadata(&log).unwrap().len());
        let mut again = start(&cfg, known, false);
        assert!(texts(&again.quiet(Duration::from_millis(700))).is_empty());
        again.stop();
    }

    #[test]
    fn copy_seen_before_the_truncation_is_not_read_twice() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let cfg = config(&[&dir.path().join("app.log*")], ReadFrom::Beginning);
        std::fs::write(&log, b"x 0\nx 1\n").unwrap();
        let mut h = start(&cfg, BTreeMap::new(), false);
        h.lines(2);
        // logrotate copies, the agent polls a few times, then logrotate truncates.
        std::fs::copy(&log, dir.path().join("app.log.1")).unwrap();
        assert!(h.quiet(Duration::from_millis(200)).is_empty());
        let f = OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(0).unwrap();
        drop(f);
        append(&log, b"y 0\n");
        assert_eq!(texts(&h.lines(1)), ["y 0"]);
        assert!(h.quiet(Duration::from_millis(300)).is_empty());
        h.stop();
    }

    #[test]
    fn rewritten_head_counts_as_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"first\n").unwrap();
        let cfg = config(&[&log], ReadFrom::Beginning);
        let mut h = start(&cfg, BTreeMap::new(), false);
        let before = h.lines(1);
        // Truncated and regrown past the old offset between two polls.
        std::fs::write(&log, b"other head\nmore\n").unwrap();
        let after = h.lines(2);
        assert_eq!(texts(&after), ["other head", "more"]);
        assert_eq!(after[0].offset, 0);
        assert_ne!(after[0].stream.key, before[0].stream.key);
        h.stop();
    }

    #[test]
    fn partial_last_line_waits_for_newline() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"a\nhal").unwrap();
        let cfg = config(&[&log], ReadFrom::Beginning);
        let mut h = start(&cfg, BTreeMap::new(), false);
        assert_eq!(texts(&h.lines(1)), ["a"]);
        assert!(h.quiet(Duration::from_millis(100)).is_empty());
        append(&log, b"f\n");
        let lines = h.lines(1);
        assert_eq!(
            (lines[0].text.as_str(), lines[0].offset, lines[0].end),
            ("half", 2, 7)
        );
        h.stop();
    }

    #[test]
    fn long_line_is_cut_and_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let mut data = vec![b'x'; 100_000];
        data.extend_from_slice(b"\nok\n");
        std::fs::write(&log, &data).unwrap();
        let mut cfg = config(&[&log], ReadFrom::Beginning);
        cfg.max_line_bytes = ByteSize(16);
        let mut h = start(&cfg, BTreeMap::new(), false);
        let lines = h.lines(2);
        assert_eq!(lines[0].text, "x".repeat(16));
        assert!(lines[0].flags.truncated);
        assert_eq!((lines[0].offset, lines[0].end), (0, 100_001));
        assert_eq!((lines[1].text.as_str(), lines[1].offset), ("ok", 100_001));
        assert!(!lines[1].flags.truncated);
        h.stop();
    }

    #[test]
    fn invalid_utf8_is_replaced_and_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"bad \xff byte\r\ngood\n").unwrap();
        let cfg = config(&[&log], ReadFrom::Beginning);
        let mut h = start(&cfg, BTreeMap::new(), false);
        let lines = h.lines(2);
        assert_eq!(lines[0].text, "bad \u{fffd} byte");
        assert!(lines[0].flags.invalid_utf8);
        assert!(!lines[1].flags.invalid_utf8);
        h.stop();
    }

    #[test]
    fn crlf_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"one\r\ntwo\r\n").unwrap();
        let cfg = config(&[&log], ReadFrom::Beginning);
        let mut h = start(&cfg, BTreeMap::new(), false);
        let lines = h.lines(2);
        assert_eq!(texts(&lines), ["one", "two"]);
        assert_eq!(lines[1].end, 10);
        h.stop();
    }

    #[test]
    fn exclude_globs_skip_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.log"), b"keep\n").unwrap();
        std::fs::write(dir.path().join("b.log.gz"), b"by name\n").unwrap();
        std::fs::write(dir.path().join("skip.log"), b"by path\n").unwrap();
        let mut cfg = config(&[&dir.path().join("*")], ReadFrom::Beginning);
        cfg.exclude = vec![
            "*.gz".to_owned(),
            dir.path().join("skip.*").display().to_string(),
        ];
        let mut h = start(&cfg, BTreeMap::new(), false);
        assert_eq!(texts(&h.lines(1)), ["keep"]);
        assert!(h.quiet(Duration::from_millis(100)).is_empty());
        h.stop();
    }

    #[test]
    fn key_is_stable_across_rename() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"one\n").unwrap();
        let cfg = config(&[&dir.path().join("a.log*")], ReadFrom::Beginning);
        let mut h = start(&cfg, BTreeMap::new(), false);
        let before = h.lines(1);
        let moved = dir.path().join("a.log.1");
        std::fs::rename(&log, &moved).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        append(&moved, b"two\n");
        let after = h.lines(1);
        assert_eq!(after[0].text, "two");
        assert_eq!(after[0].stream.key, before[0].stream.key);
        h.stop();
        // And after a restart the same key is computed for the renamed file.
        assert_eq!(key_of(&moved), before[0].stream.key);
    }

    #[test]
    fn once_mode_sends_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.log"), b"a1\na2\n").unwrap();
        std::fs::write(dir.path().join("b.log"), b"b1\nb2 without newline").unwrap();
        std::fs::write(dir.path().join("empty.log"), b"").unwrap();
        let cfg = config(&[&dir.path().join("*.log")], ReadFrom::Beginning);
        let mut h = start(&cfg, BTreeMap::new(), true);
        assert!(h.wait_for(|m| matches!(m, SourceMsg::CaughtUp(name) if &**name == "test")));
        assert!(matches!(h.seen.last(), Some(SourceMsg::CaughtUp(_))));
        let lines = h.take_lines();
        let mut t = texts(&lines);
        t.sort();
        assert_eq!(t, ["a1", "a2", "b1", "b2 without newline"]);
        h.stop();
    }

    #[test]
    fn many_lines_arrive_in_order_with_backpressure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let mut f = std::io::BufWriter::new(File::create(&log).unwrap());
        for i in 0..5000 {
            writeln!(f, "line {i}").unwrap();
        }
        drop(f);
        let cfg = config(&[&log], ReadFrom::Beginning);
        let mut h = start_with_capacity(&cfg, BTreeMap::new(), false, 1);
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        while lines.len() < 5000 && Instant::now() < deadline {
            match h.rx.try_recv() {
                Ok(SourceMsg::Lines(batch)) => {
                    assert!(batch.len() <= BATCH_LINES);
                    lines.extend(batch);
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        assert_eq!(lines.len(), 5000);
        let mut at = 0;
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l.text, format!("line {i}"));
            assert_eq!(l.offset, at);
            at = l.end;
        }
        h.stop();
    }

    #[test]
    fn shutdown_stops_a_thread_blocked_on_a_full_channel() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, "x\n".repeat(5000)).unwrap();
        let cfg = config(&[&log], ReadFrom::Beginning);
        let (tx, _rx) = mpsc::channel(1);
        let (trigger, shutdown) = shutdown::channel();
        let handle = spawn(&cfg, BTreeMap::new(), tx, shutdown, false).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        trigger.trigger();
        let deadline = Instant::now() + WAIT;
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(handle.is_finished());
    }
}

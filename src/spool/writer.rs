//! Appending, group commit and acknowledgement: the only code that writes segments and the
//! ack file.
//!
//! A group commit has three steps so that its write and fdatasync can run without the spool's
//! lock while appends go on: [`Spool::stage_commit`] takes the buffered bytes out (under the
//! lock), [`CommitJob::run`] writes them at their offsets and fsyncs (no lock), and
//! [`Spool::finish_commit`] makes them count as durable (under the lock). Only then may
//! anything that depends on them (read positions, delivery) move. [`Spool::commit`] does all
//! three in a row.

use super::*;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// Bytes taken out of the spool by [`Spool::stage_commit`], to be written and fsynced by
/// [`CommitJob::run`] on any thread.
#[derive(Debug)]
pub struct CommitJob {
    writes: Vec<StagedWrite>,
    /// The spool directory, when a segment file was created since the last commit.
    dir: Option<PathBuf>,
    durable_to: u64,
    /// The leaf log's part (boxed: a job travels inside `CommitError`).
    tree: Option<Box<TreeJob>>,
}

/// The leaf log, which gets the leaves of a job's records once they are fsynced.
#[derive(Debug)]
struct TreeJob {
    log: Arc<Mutex<leaves::LeafLog>>,
    /// Those leaves, hashed on the first run (kept for a run again after a full filesystem).
    leaves: Option<Vec<leaves::LeafEntry>>,
    /// Leaf hashes the producers already made, by seq (the rest are hashed from the JSON).
    hints: Vec<(u64, crate::tamper::merkle::Hash)>,
}

#[derive(Debug)]
struct StagedWrite {
    file: File,
    path: PathBuf,
    first_seq: u64,
    offset: u64,
    buf: Vec<u8>,
}

/// A [`CommitJob`] that was written and fsynced; hand it to [`Spool::finish_commit`].
#[derive(Debug)]
pub struct CommitDone {
    /// (segment first seq, bytes made durable).
    written: Vec<(u64, u64)>,
    durable_to: u64,
    spare: Option<Vec<u8>>,
}

/// Why a [`CommitJob`] did not finish.
#[derive(Debug)]
pub enum CommitError {
    /// A write found the filesystem full (ENOSPC or a quota); nothing of the job was fsynced
    /// and it comes back unchanged: writes are at explicit offsets, so running it again once
    /// there is room rewrites exactly the same bytes.
    NoSpace {
        /// The job, to run again.
        job: CommitJob,
        /// What the write said.
        error: SpoolError,
    },
    /// Anything else (an fsync failure above all): the spool must not be used again.
    Failed(SpoolError),
}

impl CommitJob {
    /// Write every staged buffer at its offset and `fdatasync` it (and the directory, when a
    /// segment was created). Blocking; needs no access to the spool.
    pub fn run(self) -> Result<CommitDone, SpoolError> {
        self.try_run().map_err(|e| match e {
            CommitError::NoSpace { error, .. } | CommitError::Failed(error) => error,
        })
    }

    /// [`run`](Self::run), but a write that finds the filesystem full hands the job back
    /// ([`CommitError::NoSpace`]) instead of failing for good. Every buffer is written before
    /// the first fsync, so a full filesystem is met before anything is synced.
    pub fn try_run(mut self) -> Result<CommitDone, CommitError> {
        // Hashing here keeps it off the ingest thread and outside the spool's lock.
        if let Some(t) = self.tree.as_mut()
            && t.leaves.is_none()
        {
            let mut entries = Vec::new();
            let mut hints = t.hints.as_slice();
            for w in &self.writes {
                leaves::entries_of_buffer(&w.buf, w.offset == 0, &mut hints, &mut entries);
            }
            t.leaves = Some(entries);
        }
        for i in 0..self.writes.len() {
            let w = &self.writes[i];
            // Explicit offsets: the active segment's handle is shared with later appends.
            if let Err(source) = w.file.write_all_at(&w.buf, w.offset) {
                let full = matches!(
                    source.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                );
                let error = SpoolError::Io {
                    op: "write segment",
                    path: w.path.clone(),
                    source,
                };
                return Err(if full {
                    CommitError::NoSpace { job: self, error }
                } else {
                    CommitError::Failed(error)
                });
            }
        }
        let mut written = Vec::with_capacity(self.writes.len());
        let mut spare = None;
        for w in &self.writes {
            w.file.sync_data().map_err(|source| {
                CommitError::Failed(SpoolError::Fsync {
                    path: w.path.clone(),
                    source,
                })
            })?;
        }
        if let Some(dir) = &self.dir {
            fsync_dir(dir).map_err(CommitError::Failed)?;
        }
        // The records are durable: their leaves may be written (no fsync: docs/tamper.md).
        let leaf_failure = match self.tree.as_deref() {
            Some(TreeJob {
                log: tree,
                leaves: Some(entries),
                ..
            }) => {
                let mut log = tree
                    .lock()
                    .map_err(|_| CommitError::Failed(SpoolError::Poisoned))?;
                log.append(entries)
                    .err()
                    .map(|e| (e, log.path().to_path_buf()))
            }
            _ => None,
        };
        if let Some((source, path)) = leaf_failure {
            let full = matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            );
            let error = SpoolError::Io {
                op: "write",
                path,
                source,
            };
            return Err(if full {
                // Running the job again rewrites and re-syncs the same segment bytes, then
                // writes these leaves at the same offset (nothing of them counted).
                CommitError::NoSpace { job: self, error }
            } else {
                CommitError::Failed(error)
            });
        }
        for w in self.writes {
            written.push((w.first_seq, w.buf.len() as u64));
            let mut buf = w.buf;
            buf.clear();
            spare = Some(buf);
        }
        Ok(CommitDone {
            written,
            durable_to: self.durable_to,
            spare,
        })
    }

    /// Bytes this job writes.
    pub fn bytes(&self) -> u64 {
        self.writes.iter().map(|w| w.buf.len() as u64).sum()
    }
}

impl Spool {
    /// Buffered append (not durable until `commit`); returns the seq assigned.
    pub fn append(&mut self, event: &EventRecord, origin: &Origin) -> Result<u64, SpoolError> {
        let appended_ms = now_ms();
        let len = format::payload_len(event.pattern, &event.json, origin);
        // The payload is written straight into the segment buffer (one copy of the event).
        let result = self.append_frame(len, appended_ms, |buf| {
            format::append_payload(
                buf,
                appended_ms,
                event.id,
                event.pattern,
                &event.json,
                origin,
            )
        });
        if let (Ok(seq), Some(hash), Some(_)) = (&result, event.leaf, &self.tree) {
            self.leaf_hints.push((*seq, hash));
        }
        result
    }

    /// Append one record of `len` payload bytes, which `write` appends to the buffer.
    fn append_frame(
        &mut self,
        len: usize,
        appended_ms: u64,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<u64, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        if len > format::MAX_PAYLOAD {
            return Err(SpoolError::TooLarge {
                bytes: len,
                max: format::MAX_PAYLOAD,
            });
        }
        let frame_len = (REC_OVERHEAD + len) as u64;
        let roll = match (&self.active, self.segments.last()) {
            (Some(a), Some(seg)) => {
                let used = seg.len + seg.staged + a.buf.len() as u64;
                used > SEG_HDR_LEN as u64 && used + frame_len > self.opts.segment_bytes
            }
            _ => true,
        };
        if roll {
            self.start_segment()?;
        }
        let (Some(active), Some(seg)) = (self.active.as_mut(), self.segments.last_mut()) else {
            return Err(SpoolError::Poisoned);
        };
        let seq = self.next_seq;
        let offset = seg.len + seg.staged + active.buf.len() as u64;
        format::encode_record_in_place(&mut active.buf, seq, len, write);
        seg.note_record(seq, offset);
        self.next_seq += 1;
        self.buffered += frame_len;
        if self.oldest_pending_ms.is_none() {
            self.oldest_pending_ms = Some(appended_ms);
        }
        Ok(seq)
    }

    fn start_segment(&mut self) -> Result<(), SpoolError> {
        if let Some(prev) = self.active.take()
            && (!prev.buf.is_empty() || prev.created)
        {
            self.sealed.push(prev);
        }
        let first = self.next_seq;
        let path = self.dir.join(format::segment_name(first));
        let file = crate::private::options()
            .create_new(true)
            .open(&path)
            .map_err(io_err("create segment", &path))?;
        self.segments.push(Segment {
            first_seq: first,
            path,
            len: 0,
            staged: 0,
            last_seq: None,
            records: 0,
            index: Vec::new(),
        });
        let mut buf = Vec::with_capacity(256 * 1024);
        buf.extend_from_slice(&format::encode_segment_header(first));
        self.buffered += SEG_HDR_LEN as u64;
        self.active = Some(Pending {
            file,
            first_seq: first,
            buf,
            created: true,
        });
        Ok(())
    }

    /// Group commit: write and `fdatasync` everything appended; returns the highest durable
    /// seq. Any error leaves the spool unusable; `SpoolError::Fsync` means: exit, never retry.
    pub fn commit(&mut self) -> Result<u64, SpoolError> {
        match self.stage_commit()? {
            None => Ok(self.durable_seq),
            Some(job) => {
                let done = job.run();
                self.finish_commit(done)
            }
        }
    }

    /// First step of a group commit: take every buffered byte out for a [`CommitJob`]
    /// (`None`: nothing to write). Appends may go on at once; they go to the next commit.
    /// Until [`finish_commit`](Self::finish_commit), no other commit may start.
    pub fn stage_commit(&mut self) -> Result<Option<CommitJob>, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        if self.staging {
            return Err(SpoolError::CommitInFlight);
        }
        if self.buffered == 0 {
            return Ok(None);
        }
        let result = self.stage();
        match &result {
            Ok(_) => self.staging = true,
            Err(_) => self.poisoned = true,
        }
        result.map(Some)
    }

    fn stage(&mut self) -> Result<CommitJob, SpoolError> {
        let mut writes = Vec::new();
        let mut created = false;
        let sealed: Vec<Pending> = self.sealed.drain(..).collect();
        for p in sealed {
            created |= p.created;
            if p.buf.is_empty() {
                continue;
            }
            // A sealed segment is never appended to again: its handle goes with the job.
            let seg = self.segment_mut(p.first_seq)?;
            let offset = seg.len + seg.staged;
            seg.staged += p.buf.len() as u64;
            writes.push(StagedWrite {
                file: p.file,
                path: seg.path.clone(),
                first_seq: p.first_seq,
                offset,
                buf: p.buf,
            });
        }
        if let Some(mut a) = self.active.take() {
            created |= a.created;
            a.created = false;
            if !a.buf.is_empty() {
                let fresh = self
                    .spare
                    .take()
                    .unwrap_or_else(|| Vec::with_capacity(a.buf.capacity()));
                let buf = std::mem::replace(&mut a.buf, fresh);
                let seg = self.segment_mut(a.first_seq)?;
                let file = a
                    .file
                    .try_clone()
                    .map_err(io_err("duplicate handle of", &seg.path))?;
                let offset = seg.len + seg.staged;
                seg.staged += buf.len() as u64;
                writes.push(StagedWrite {
                    file,
                    path: seg.path.clone(),
                    first_seq: a.first_seq,
                    offset,
                    buf,
                });
            }
            self.active = Some(a);
        }
        Ok(CommitJob {
            writes,
            dir: created.then(|| self.dir.clone()),
            durable_to: self.next_seq - 1,
            tree: self.tree.as_ref().map(|log| {
                Box::new(TreeJob {
                    log: log.clone(),
                    leaves: None,
                    hints: std::mem::take(&mut self.leaf_hints),
                })
            }),
        })
    }

    /// Last step of a group commit: the job's bytes are durable (or, on an error, the spool
    /// is unusable from now on). Returns the highest durable seq.
    pub fn finish_commit(
        &mut self,
        done: Result<CommitDone, SpoolError>,
    ) -> Result<u64, SpoolError> {
        self.staging = false;
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        };
        for (first_seq, n) in done.written {
            let Ok(seg) = self.segment_mut(first_seq) else {
                self.poisoned = true;
                return Err(SpoolError::Poisoned);
            };
            seg.len += n;
            seg.staged -= n;
            self.disk_bytes += n;
            self.buffered -= n;
        }
        if self.spare.is_none() {
            self.spare = done.spare;
        }
        self.durable_seq = self.durable_seq.max(done.durable_to);
        Ok(self.durable_seq)
    }

    /// The tree head, when everything appended has its leaf (no commit out, nothing
    /// buffered): a seal appended next covers exactly the leaves before it. `None` otherwise
    /// or with the tree disabled.
    pub fn tree_head(&self) -> Option<leaves::TreeHead> {
        if self.staging || self.buffered > 0 || self.poisoned {
            return None;
        }
        let tree = self.tree.as_ref()?;
        let log = tree.lock().ok()?;
        Some(log.head())
    }

    fn segment_mut(&mut self, first_seq: u64) -> Result<&mut Segment, SpoolError> {
        self.segments
            .iter_mut()
            .find(|s| s.first_seq == first_seq)
            .ok_or(SpoolError::Poisoned)
    }

    /// [`ack`](Self::ack), with the delivered-log lines of the events it settles
    /// ([`delivered::push_line`]): written (not synced) before the ack file; synced only
    /// before a segment is deleted, since until then recovery can rebuild them.
    pub fn ack_delivered(&mut self, seq: u64, lines: &str) -> Result<(), SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        self.delivered.write(lines)?;
        self.ack(seq)
    }

    /// Everything up to and including `seq` was accepted by the ARR (or dead-lettered):
    /// persist that, then delete the segments whose records are all acknowledged.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        if seq <= self.acked {
            return Ok(());
        }
        if seq > self.durable_seq {
            return Err(SpoolError::AckBeyondDurable {
                seq,
                durable: self.durable_seq,
            });
        }
        let tmp = self.dir.join("ack.tmp");
        let dest = self.dir.join("ack");
        {
            let mut f = crate::private::options()
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            f.write_all(&format::encode_ack(seq))
                .map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(|source| SpoolError::Fsync {
                path: tmp.clone(),
                source,
            })?;
        }
        fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
        fsync_dir(&self.dir)?;
        self.acked = seq;
        self.trim_gaps();
        self.delete_acked_segments()?;
        self.oldest_pending_ms = if self.pending_events() == 0 {
            None
        } else {
            self.appended_ms_of_first_pending()
                .ok()
                .flatten()
                .or(self.oldest_pending_ms)
        };
        Ok(())
    }

    /// The read positions just saved cover every record up to `seq` (the durable seq read
    /// before they were written): acknowledged segments they now cover are deleted.
    pub fn positions_saved(&mut self, seq: u64) -> Result<(), SpoolError> {
        let Some(saved) = &mut self.positions_saved else {
            return Ok(());
        };
        *saved = (*saved).max(seq);
        let upto = (*saved).min(self.acked);
        let due = self
            .segments
            .first()
            .and_then(|s| s.last_seq)
            .is_some_and(|l| l <= upto);
        if self.poisoned || !due {
            return Ok(());
        }
        self.delete_acked_segments()
    }

    pub(super) fn delete_acked_segments(&mut self) -> Result<(), SpoolError> {
        let acked = self
            .positions_saved
            .map_or(self.acked, |p| p.min(self.acked));
        let active_first = self.active.as_ref().map(|a| a.first_seq);
        let active_idle = self.active.as_ref().is_some_and(|a| a.buf.is_empty());
        let mut i = 0;
        while i < self.segments.len() {
            let seg = &self.segments[i];
            let done = seg.last_seq.is_some_and(|l| l <= acked);
            let is_active = Some(seg.first_seq) == active_first;
            if !done || (is_active && !active_idle) {
                i += 1;
                continue;
            }
            if is_active {
                self.active = None;
            }
            if self
                .cursor
                .as_ref()
                .is_some_and(|c| c.seg_first == seg.first_seq)
            {
                self.cursor = None;
            }
            // The delivered log's lines and the leaves of these records must outlive them.
            self.delivered.sync()?;
            if let Some(tree) = &self.tree {
                tree.lock().map_err(|_| SpoolError::Poisoned)?.sync()?;
            }
            fs::remove_file(&seg.path).map_err(io_err("remove", &seg.path))?;
            self.disk_bytes -= seg.len;
            self.segments.remove(i);
        }
        Ok(())
    }
}

//! Appending, group commit and acknowledgement: the only code that writes segments and the
//! ack file.

use super::*;

impl Spool {
    /// Buffered append (not durable until `commit`); returns the seq assigned.
    pub fn append(&mut self, event: &EventRecord, origin: &Origin) -> Result<u64, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        let appended_ms = now_ms();
        let mut payload = std::mem::take(&mut self.scratch);
        format::encode_payload(
            &mut payload,
            appended_ms,
            event.id,
            event.pattern,
            &event.json,
            origin,
        );
        let result = self.append_payload(&payload, appended_ms);
        self.scratch = payload;
        result
    }

    fn append_payload(&mut self, payload: &[u8], appended_ms: u64) -> Result<u64, SpoolError> {
        if payload.len() > format::MAX_PAYLOAD {
            return Err(SpoolError::TooLarge {
                bytes: payload.len(),
                max: format::MAX_PAYLOAD,
            });
        }
        let frame_len = (REC_OVERHEAD + payload.len()) as u64;
        let roll = match (&self.active, self.segments.last()) {
            (Some(a), Some(seg)) => {
                let used = seg.len + a.buf.len() as u64;
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
        let offset = seg.len + active.buf.len() as u64;
        format::encode_record(&mut active.buf, seq, payload);
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
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        if self.buffered == 0 {
            return Ok(self.durable_seq);
        }
        let result = self.flush_all();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn flush_all(&mut self) -> Result<u64, SpoolError> {
        let mut created = false;
        let mut pending: Vec<Pending> = self.sealed.drain(..).collect();
        let active = self.active.take();
        pending.extend(active);
        let count = pending.len();
        for (i, mut p) in pending.into_iter().enumerate() {
            let Some(seg) = self
                .segments
                .iter_mut()
                .find(|s| s.first_seq == p.first_seq)
            else {
                return Err(SpoolError::Poisoned);
            };
            if !p.buf.is_empty() {
                p.file
                    .write_all(&p.buf)
                    .map_err(io_err("write segment", &seg.path))?;
                p.file.sync_data().map_err(|source| SpoolError::Fsync {
                    path: seg.path.clone(),
                    source,
                })?;
                let n = p.buf.len() as u64;
                seg.len += n;
                self.disk_bytes += n;
                self.buffered -= n;
                p.buf.clear();
            }
            created |= p.created;
            p.created = false;
            if i + 1 == count {
                self.active = Some(p);
            }
        }
        if created {
            fsync_dir(&self.dir)?;
        }
        self.durable_seq = self.next_seq - 1;
        Ok(self.durable_seq)
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

    pub(super) fn delete_acked_segments(&mut self) -> Result<(), SpoolError> {
        let acked = self.acked;
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
            fs::remove_file(&seg.path).map_err(io_err("remove", &seg.path))?;
            self.disk_bytes -= seg.len;
            self.segments.remove(i);
        }
        Ok(())
    }
}

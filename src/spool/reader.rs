//! Reading durable records back in seq order through one reused cursor; damage met on the
//! way is quarantined and skipped.

use super::*;

impl Spool {
    /// Durable, unacknowledged records with seq ≥ `from_seq`, in order, at most `max_events`
    /// and at most `max_bytes` of JSON (but at least one). The same arguments always give the
    /// same records.
    pub fn read_range(
        &mut self,
        from_seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<SpooledEvent>, SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned);
        }
        let from = from_seq.max(self.acked + 1);
        let mut out = Vec::new();
        if from > self.durable_seq || max_events == 0 {
            return Ok(out);
        }
        if self.cursor.as_ref().is_none_or(|c| c.next_seq != from) {
            self.cursor = self.seek_cursor(from)?;
        }
        let Some(mut cursor) = self.cursor.take() else {
            return Ok(out);
        };
        let result = self.read_with(&mut cursor, max_events, max_bytes, &mut out);
        self.cursor = Some(cursor);
        result.map(|_| out)
    }

    /// A cursor at or before the first record with seq ≥ `from`, via the sparse index.
    fn seek_cursor(&self, from: u64) -> Result<Option<ReadCursor>, SpoolError> {
        let pos = self
            .segments
            .iter()
            .rposition(|s| s.index.first().is_some_and(|e| e.seq <= from))
            .unwrap_or(0);
        let Some(seg) = self.segments.get(pos) else {
            return Ok(None);
        };
        let offset = seg
            .index
            .iter()
            .rev()
            .find(|e| e.seq <= from && e.offset < seg.len)
            .map_or(SEG_HDR_LEN as u64, |e| e.offset);
        let file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
        let scanner = Scanner::new(file, offset, seg.len).map_err(io_err("read", &seg.path))?;
        Ok(Some(ReadCursor {
            seg_first: seg.first_seq,
            scanner,
            next_seq: from,
        }))
    }

    fn read_with(
        &mut self,
        cursor: &mut ReadCursor,
        max_events: usize,
        max_bytes: usize,
        out: &mut Vec<SpooledEvent>,
    ) -> Result<(), SpoolError> {
        let mut json_bytes = 0usize;
        while out.len() < max_events {
            let Some(idx) = self
                .segments
                .iter()
                .position(|s| s.first_seq == cursor.seg_first)
            else {
                break;
            };
            let (path, len) = (self.segments[idx].path.clone(), self.segments[idx].len);
            cursor.scanner.set_limit(len);
            match cursor.scanner.next_frame().map_err(io_err("read", &path))? {
                Frame::End => {
                    let Some(next) = self.segments.get(idx + 1).filter(|s| s.len > 0) else {
                        break;
                    };
                    let file = File::open(&next.path).map_err(io_err("open", &next.path))?;
                    cursor.scanner = Scanner::new(file, SEG_HDR_LEN as u64, next.len)
                        .map_err(io_err("read", &next.path))?;
                    cursor.seg_first = next.first_seq;
                }
                Frame::Record {
                    offset,
                    seq,
                    payload,
                } => {
                    // Below the start, or not above the record last returned: a record that
                    // repeats or goes back in seq was quarantined by `open` ("seq not above
                    // the previous record's") and must not be delivered after all (found by
                    // the fuzz target `spool`: a duplicate seq came back twice).
                    if seq < cursor.next_seq {
                        continue;
                    }
                    if seq > self.durable_seq {
                        cursor
                            .scanner
                            .seek_to(offset)
                            .map_err(io_err("seek", &path))?;
                        break;
                    }
                    let Some(p) = format::decode_payload(&payload) else {
                        let frame_len = (REC_OVERHEAD + payload.len()) as u64;
                        if self.quarantine_at_runtime(
                            &path,
                            offset,
                            frame_len,
                            "payload does not decode",
                        )? {
                            self.gaps.insert(seq, seq);
                            self.lost += 1;
                        }
                        continue;
                    };
                    if !out.is_empty() && json_bytes + p.json.len() > max_bytes {
                        cursor
                            .scanner
                            .seek_to(offset)
                            .map_err(io_err("seek", &path))?;
                        break;
                    }
                    json_bytes += p.json.len();
                    cursor.next_seq = seq + 1;
                    out.push(SpooledEvent {
                        seq,
                        appended_ms: p.appended_ms,
                        record: EventRecord {
                            id: p.id,
                            pattern: static_pattern(&p.pattern),
                            json: p.json,
                            leaf: None,
                        },
                        origin: p.origin,
                    });
                }
                Frame::Corrupt {
                    offset,
                    len: bad,
                    seq,
                    reason,
                } => {
                    if self.quarantine_at_runtime(&path, offset, bad, reason)?
                        && let Some(seq) = seq.filter(|s| *s > self.acked)
                    {
                        self.gaps.insert(seq, seq);
                        self.lost += 1;
                    }
                }
                Frame::Torn { offset } => {
                    // Durable bytes that no longer form a record: keep them, skip to the end.
                    self.quarantine_at_runtime(
                        &path,
                        offset,
                        len - offset,
                        "damaged end of segment",
                    )?;
                    cursor.scanner.seek_to(len).map_err(io_err("seek", &path))?;
                }
                Frame::UnknownVersion { offset, version } => {
                    return Err(unsupported(&path, offset, version.into()));
                }
            }
        }
        Ok(())
    }

    fn quarantine_at_runtime(
        &mut self,
        path: &Path,
        offset: u64,
        len: u64,
        reason: &'static str,
    ) -> Result<bool, SpoolError> {
        let seg_first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(format::parse_segment_name)
            .unwrap_or(0);
        if !self.known_bad.insert((seg_first, offset)) {
            return Ok(false);
        }
        let name = format!("{}@{offset}.bad", file_name(path));
        quarantine_copy(&self.qdir, path, offset, len, &name)?;
        self.quarantined += 1;
        tracing::error!(path = %path.display(), offset, bytes = len, reason, "spool record quarantined while reading");
        Ok(true)
    }
    /// The `appended_ms` of the first durable record above `acked`.
    pub(super) fn appended_ms_of_first_pending(&self) -> Result<Option<u64>, SpoolError> {
        let Some(mut cursor) = self.seek_cursor(self.acked + 1)? else {
            return Ok(None);
        };
        let mut idx = self
            .segments
            .iter()
            .position(|s| s.first_seq == cursor.seg_first);
        while let Some(i) = idx {
            let path = &self.segments[i].path;
            match cursor.scanner.next_frame().map_err(io_err("read", path))? {
                Frame::Record { seq, payload, .. } if seq > self.acked => {
                    return Ok(format::payload_appended_ms(&payload));
                }
                Frame::Record { .. } | Frame::Corrupt { .. } => {}
                Frame::End | Frame::Torn { .. } | Frame::UnknownVersion { .. } => {
                    idx = Some(i + 1).filter(|n| *n < self.segments.len());
                    if let Some(n) = idx {
                        let next = &self.segments[n];
                        let file = File::open(&next.path).map_err(io_err("open", &next.path))?;
                        cursor.scanner = Scanner::new(file, SEG_HDR_LEN as u64, next.len)
                            .map_err(io_err("read", &next.path))?;
                    }
                }
            }
        }
        Ok(None)
    }
}

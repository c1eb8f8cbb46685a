//! Opening a spool: lock it, read the ack file, scan every segment, repair what a crash or a
//! bad disk left (docs/spool.md, "Recovery"), and rebuild the in-memory state.

use super::*;

impl Spool {
    /// Open (creating if needed) the spool under `<state_dir>/spool/` and recover it.
    pub fn open(state_dir: &Path, config: &SpoolConfig) -> Result<(Spool, Recovered), SpoolError> {
        Spool::open_with(state_dir, config, SpoolOptions::of_config(config))
    }

    /// [`Spool::open`] with explicit tuning.
    pub fn open_with(
        state_dir: &Path,
        config: &SpoolConfig,
        opts: SpoolOptions,
    ) -> Result<(Spool, Recovered), SpoolError> {
        let dir = state_dir.join("spool");
        let qdir = dir.join("quarantine");
        create_dir(&dir)?;
        create_dir(&qdir)?;
        let lock = lock(&dir)?;
        let tmp = dir.join("ack.tmp");
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io_err("remove", &tmp))?;
        }
        let ack_path = dir.join("ack");
        let ack_file = match fs::read(&ack_path) {
            Ok(b) => {
                let v = format::decode_ack(&b);
                if v.is_none() {
                    tracing::warn!(path = %ack_path.display(), "spool ack file is corrupt; every record present counts as unacknowledged (duplicates possible)");
                }
                v
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(SpoolError::Io {
                    op: "read",
                    path: ack_path,
                    source: e,
                });
            }
        };

        let mut rec = Recovered::default();
        let mut segments = Vec::new();
        let mut gaps = BTreeMap::new();
        let mut prev_seq = 0u64;
        let mut first_record: Option<(u64, u64)> = None;
        let mut first_pending_ms: Option<u64> = None;
        let mut known_bad = BTreeSet::new();
        let mut max_seq = 0u64;
        let listed = list_segments(&dir)?;
        let last_listed = listed.last().map(|(first, _)| *first);
        for (first, path) in listed {
            let name = file_name(&path);
            let mut file = File::open(&path).map_err(io_err("open", &path))?;
            let len = file.metadata().map_err(io_err("stat", &path))?.len();
            if len < SEG_HDR_LEN as u64 {
                // Created, but the process died before its header (and any record) was written.
                tracing::warn!(path = %path.display(), bytes = len, "removing spool segment without a header");
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            match read_segment_header(&mut file, &path)? {
                SegHeader::Valid { first_seq } if first_seq != first => {
                    tracing::warn!(path = %path.display(), header_seq = first_seq, "spool segment header names another first seq; the records' own seqs are used");
                }
                SegHeader::Valid { .. } => {}
                SegHeader::UnknownVersion(v) => return Err(unsupported(&path, 0, v.into())),
                SegHeader::Corrupt => {
                    quarantine_copy(
                        &qdir,
                        &path,
                        0,
                        SEG_HDR_LEN as u64,
                        &format!("{name}.header"),
                    )?;
                    rec.quarantined += 1;
                    tracing::error!(path = %path.display(), "spool segment header is corrupt; quarantined it, reading the records after it");
                }
            }
            let mut seg = Segment {
                first_seq: first,
                path: path.clone(),
                len,
                staged: 0,
                last_seq: None,
                records: 0,
                index: Vec::new(),
            };
            let mut scanner =
                Scanner::new(file, SEG_HDR_LEN as u64, len).map_err(io_err("read", &path))?;
            loop {
                match scanner.next_frame().map_err(io_err("read", &path))? {
                    Frame::End => break,
                    Frame::Record {
                        offset,
                        seq,
                        payload,
                    } => {
                        let decoded = format::decode_payload(&payload);
                        let Some(p) = decoded.filter(|_| seq > prev_seq) else {
                            if seq > prev_seq {
                                max_seq = max_seq.max(seq);
                            }
                            let reason = if seq > prev_seq {
                                "payload does not decode"
                            } else {
                                "seq not above the previous record's"
                            };
                            let frame_len = (REC_OVERHEAD + payload.len()) as u64;
                            quarantine_copy(
                                &qdir,
                                &path,
                                offset,
                                frame_len,
                                &format!("{name}@{offset}.bad"),
                            )?;
                            rec.quarantined += 1;
                            known_bad.insert((first, offset));
                            tracing::error!(path = %path.display(), offset, seq, reason, "spool record quarantined");
                            continue;
                        };
                        if seq > prev_seq + 1 {
                            gaps.insert(prev_seq + 1, seq - 1);
                        }
                        prev_seq = seq;
                        seg.note_record(seq, offset);
                        first_record.get_or_insert((seq, p.appended_ms));
                        if ack_file.is_some_and(|a| seq > a) && first_pending_ms.is_none() {
                            first_pending_ms = Some(p.appended_ms);
                        }
                        let key = (p.origin.source, p.origin.stream_key);
                        let e = rec.positions.entry(key).or_insert((PathBuf::new(), 0));
                        if p.origin.end >= e.1 {
                            *e = (p.origin.path, p.origin.end);
                        }
                    }
                    Frame::Corrupt {
                        offset,
                        len: bad,
                        seq,
                        reason,
                    } => {
                        // A seq from a checksummed header is never handed out again.
                        max_seq = max_seq.max(seq.unwrap_or(0));
                        quarantine_copy(
                            &qdir,
                            &path,
                            offset,
                            bad,
                            &format!("{name}@{offset}.bad"),
                        )?;
                        rec.quarantined += 1;
                        known_bad.insert((first, offset));
                        tracing::error!(path = %path.display(), offset, bytes = bad, reason, "spool record quarantined");
                    }
                    Frame::UnknownVersion { offset, version } => {
                        return Err(unsupported(&path, offset, version.into()));
                    }
                    Frame::Torn { offset } => {
                        let cut = len - offset;
                        quarantine_copy(
                            &qdir,
                            &path,
                            offset,
                            cut,
                            &format!("{name}@{offset}.torn"),
                        )?;
                        let f = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(io_err("open", &path))?;
                        f.set_len(offset).map_err(io_err("truncate", &path))?;
                        f.sync_all().map_err(|source| SpoolError::Fsync {
                            path: path.clone(),
                            source,
                        })?;
                        seg.len = offset;
                        rec.truncated_bytes += cut;
                        if Some(first) == last_listed {
                            tracing::warn!(path = %path.display(), offset, bytes = cut, "truncated a torn tail of the spool (a write the crash interrupted, or damage)");
                        } else {
                            // Only the last segment is ever written to: an earlier one that
                            // ends mid-record was cut or damaged after it was durable.
                            tracing::error!(path = %path.display(), offset, bytes = cut, "spool segment ends in the middle of a record although later segments exist: it was cut or damaged; its end is copied to spool/quarantine and the events in it are lost");
                        }
                        break;
                    }
                }
            }
            if seg.records == 0 {
                tracing::warn!(path = %path.display(), "removing spool segment without any valid record");
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            segments.push(seg);
        }

        if max_seq > prev_seq {
            gaps.insert(prev_seq + 1, max_seq);
            prev_seq = max_seq;
        }
        let acked = match ack_file {
            Some(a) => a,
            None => first_record.map_or(0, |(s, _)| s - 1),
        };
        let next_seq = prev_seq.max(acked) + 1;
        let disk_bytes = segments.iter().map(|s| s.len).sum();
        let delivered = delivered::DeliveredLog::open(state_dir)?;
        let mut spool = Spool {
            dir,
            qdir,
            _lock: lock,
            opts,
            max_bytes: config.max_bytes.0,
            segments,
            active: None,
            sealed: Vec::new(),
            next_seq,
            durable_seq: next_seq - 1,
            acked,
            gaps,
            buffered: 0,
            disk_bytes,
            quarantined: rec.quarantined,
            lost: 0,
            known_bad,
            oldest_pending_ms: None,
            cursor: None,
            spare: None,
            staging: false,
            poisoned: false,
            positions_saved: opts.gate_on_positions.then_some(0),
            room: Cell::new(None),
            delivered,
            tree: None,
            leaf_hints: Vec::new(),
        };
        spool.trim_gaps();
        if opts.tree {
            // Also before any segment goes: it may hold records whose leaves were lost.
            spool.open_tree(state_dir)?;
        }
        // After the tree, which may add a gap for events it knows and the spool lost.
        rec.lost = spool.report_lost();
        spool.lost = rec.lost;
        // Before any acknowledged segment goes: it may hold the only trace of lines the
        // delivered log lost (written, not yet synced, when the power went).
        spool.repair_delivered()?;
        spool.delete_acked_segments()?;
        rec.pending_events = spool.pending_events();
        if rec.pending_events > 0 {
            spool.oldest_pending_ms = if ack_file.is_some() {
                first_pending_ms
            } else {
                first_record.map(|(_, ms)| ms)
            };
        }
        Ok((spool, rec))
    }

    /// Give the delivered log the lines of acknowledged records it lacks at its end (seq
    /// above its last one, up to the ack), from the segments still present, and sync it.
    fn repair_delivered(&mut self) -> Result<(), SpoolError> {
        let from = self.delivered.last_seq().saturating_add(1);
        let to = self.acked;
        if from > to {
            return Ok(());
        }
        let mut lines = String::new();
        for seg in &self.segments {
            if seg.last_seq.is_none_or(|l| l < from) || seg.first_seq > to {
                continue;
            }
            let file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
            let mut scanner = Scanner::new(file, SEG_HDR_LEN as u64, seg.len)
                .map_err(io_err("read", &seg.path))?;
            loop {
                match scanner.next_frame().map_err(io_err("read", &seg.path))? {
                    Frame::Record { seq, payload, .. } if (from..=to).contains(&seq) => {
                        if let Some(p) = format::decode_payload(&payload) {
                            delivered::push_line(&mut lines, seq, &p.id, &p.json);
                        }
                    }
                    Frame::Record { .. } | Frame::Corrupt { .. } => {}
                    Frame::Torn { .. } | Frame::UnknownVersion { .. } | Frame::End => break,
                }
            }
        }
        if !lines.is_empty() {
            tracing::warn!(
                lines = lines.lines().count(),
                "delivered log: lines of acknowledged events rebuilt from the spool"
            );
        }
        self.delivered.write(&lines)?;
        self.delivered.sync()
    }

    /// Log every range of seqs above the ack that has no readable record (damage found at
    /// open) and return how many seqs that is.
    fn report_lost(&self) -> u64 {
        const SHOWN: usize = 20;
        let mut total = 0u64;
        for (i, (start, end)) in self.gaps.iter().enumerate() {
            let n = end - start + 1;
            total += n;
            if i < SHOWN {
                tracing::error!(
                    first_seq = start,
                    last_seq = end,
                    events = n,
                    "spool: these events cannot be delivered: their records are damaged (copied to spool/quarantine) or missing (a segment deleted or cut short)"
                );
            }
        }
        if self.gaps.len() > SHOWN {
            tracing::error!(
                ranges = self.gaps.len(),
                events = total,
                "spool: more ranges of undeliverable events than shown"
            );
        }
        total
    }

    /// Open the leaf log and append the leaves of the records above its last seq that are
    /// still in segments (what a power failure took from it), then sync it.
    fn open_tree(&mut self, state_dir: &Path) -> Result<(), SpoolError> {
        let mut log = leaves::LeafLog::open(state_dir)?;
        let end = self.next_seq - 1;
        if log.last_seq() > end {
            // Seqs are never reused: the leaves of records lost at the spool's end (damage, a
            // deleted spool) stay in the tree, and verify reports those events as missing.
            tracing::warn!(
                leaf_seq = log.last_seq(),
                spool_seq = end,
                "tamper leaf log names events the spool no longer holds; the spool continues above them"
            );
            self.gaps.insert(end + 1, log.last_seq());
            self.next_seq = log.last_seq() + 1;
            self.durable_seq = self.next_seq - 1;
            self.trim_gaps();
        }
        let from = log.last_seq() + 1;
        let mut entries = Vec::new();
        for seg in &self.segments {
            if seg.last_seq.is_none_or(|l| l < from) {
                continue;
            }
            let file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
            let mut scanner = Scanner::new(file, SEG_HDR_LEN as u64, seg.len)
                .map_err(io_err("read", &seg.path))?;
            loop {
                match scanner.next_frame().map_err(io_err("read", &seg.path))? {
                    Frame::Record { seq, payload, .. } if seq >= from => {
                        if let Some((id, pattern, json)) = format::payload_parts(&payload) {
                            entries.push(leaves::LeafEntry::of_event(seq, id, pattern, json));
                        }
                    }
                    Frame::Record { .. } | Frame::Corrupt { .. } => {}
                    Frame::Torn { .. } | Frame::UnknownVersion { .. } | Frame::End => break,
                }
            }
        }
        if !entries.is_empty() {
            tracing::warn!(
                leaves = entries.len(),
                "tamper leaf log: leaves of spooled events rebuilt from the spool"
            );
            log.append(&entries).map_err(io_err("write", log.path()))?;
        }
        log.sync()?;
        self.tree = Some(std::sync::Arc::new(std::sync::Mutex::new(log)));
        Ok(())
    }

    pub(super) fn trim_gaps(&mut self) {
        let acked = self.acked;
        let below: Vec<(u64, u64)> = self.gaps.range(..=acked).map(|(a, b)| (*a, *b)).collect();
        for (start, end) in below {
            self.gaps.remove(&start);
            if end > acked {
                self.gaps.insert(acked + 1, end);
            }
        }
    }
}

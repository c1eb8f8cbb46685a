//! `spool verify`: a read-only check of every record.

use super::*;

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyProblem {
    /// The file.
    pub path: PathBuf,
    /// Where in it.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
    /// What is wrong.
    pub what: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files read.
    pub segments: usize,
    /// Records whose checks pass.
    pub records: u64,
    /// Corrupt records, headers and files.
    pub problems: Vec<VerifyProblem>,
    /// Bytes of incomplete tails (normal after a crash; cut at the next start).
    pub torn_tail_bytes: u64,
    /// The acknowledged seq, if the ack file is present and valid.
    pub acked: Option<u64>,
}

impl VerifyReport {
    /// No corrupt record or header (torn tails are not corruption).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check every record of the spool under `state_dir` without changing anything.
pub fn verify(state_dir: &Path) -> Result<VerifyReport, SpoolError> {
    let dir = state_dir.join("spool");
    let mut report = VerifyReport::default();
    if !dir.exists() {
        return Ok(report);
    }
    let ack_path = dir.join("ack");
    match fs::read(&ack_path) {
        Ok(b) => {
            report.acked = format::decode_ack(&b);
            if report.acked.is_none() {
                report.problems.push(VerifyProblem {
                    path: ack_path,
                    offset: 0,
                    len: b.len() as u64,
                    what: "ack file is corrupt".into(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(SpoolError::Io {
                op: "read",
                path: ack_path,
                source: e,
            });
        }
    }
    for (_, path) in list_segments(&dir)? {
        report.segments += 1;
        let mut file = File::open(&path).map_err(io_err("open", &path))?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        if len < SEG_HDR_LEN as u64 {
            report.torn_tail_bytes += len;
            continue;
        }
        let problem = |offset, len, what: String| VerifyProblem {
            path: path.clone(),
            offset,
            len,
            what,
        };
        match read_segment_header(&mut file, &path)? {
            SegHeader::Valid { .. } => {}
            SegHeader::UnknownVersion(v) => {
                report.problems.push(problem(
                    0,
                    SEG_HDR_LEN as u64,
                    format!("unsupported segment version {v}"),
                ));
                continue;
            }
            SegHeader::Corrupt => report.problems.push(problem(
                0,
                SEG_HDR_LEN as u64,
                "corrupt segment header".into(),
            )),
        }
        let mut scanner =
            Scanner::new(file, SEG_HDR_LEN as u64, len).map_err(io_err("read", &path))?;
        loop {
            match scanner.next_frame().map_err(io_err("read", &path))? {
                Frame::End => break,
                Frame::Record {
                    offset, payload, ..
                } => {
                    if format::decode_payload(&payload).is_some() {
                        report.records += 1;
                    } else {
                        report.problems.push(problem(
                            offset,
                            (REC_OVERHEAD + payload.len()) as u64,
                            "payload does not decode".into(),
                        ));
                    }
                }
                Frame::Corrupt {
                    offset,
                    len: bad,
                    reason,
                    ..
                } => report.problems.push(problem(offset, bad, reason.into())),
                Frame::Torn { offset } => {
                    report.torn_tail_bytes += len - offset;
                    break;
                }
                Frame::UnknownVersion { offset, version } => {
                    report.problems.push(problem(
                        offset,
                        len - offset,
                        format!("unsupported record version {version}"),
                    ));
                    break;
                }
            }
        }
    }
    Ok(report)
}

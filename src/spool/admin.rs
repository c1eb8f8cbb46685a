//! The operator's view of the spool: `balp-agent spool status | verify | dead-letters`.
//!
//! `status` opens the spool when no agent holds it; while an agent runs (the spool is locked)
//! it reads the snapshot the agent writes every second (`<state_dir>/status.json`).
//! `dead-letters --requeue` moves dead letters into `<state_dir>/requeue/`; the agent (running,
//! or at its next start) puts their events back into the spool and deletes the files only
//! after the spool commit, so a requeue is never lost.

use super::{Origin, Spool, SpoolError, SpoolStatus, static_pattern};
use crate::balp::EventRecord;
use crate::config::SpoolConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// File the running agent refreshes with its spool status.
pub const STATUS_FILE: &str = "status.json";
/// Directory of dead letters waiting to be put back into the spool.
pub const REQUEUE_DIR: &str = "requeue";
/// Directory of dead letters (written by the output).
pub const DEAD_LETTER_DIR: &str = "dead-letter";

/// What `spool status` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// Where it came from: `spool` (opened) or `running agent` (its snapshot).
    pub from: String,
    /// Events spooled and not yet accepted.
    pub pending_events: u64,
    /// Bundles those events make at `max_events` per Bundle.
    pub pending_bundles: u64,
    /// Spool bytes on disk.
    pub bytes: u64,
    /// Age of the oldest pending event, seconds.
    pub oldest_age_seconds: Option<f64>,
    /// Records quarantined since the spool was opened.
    pub quarantined: u64,
    /// Events found unreadable since the spool was opened (damaged, cut off, deleted).
    #[serde(default)]
    pub lost: u64,
    /// Files in `spool/quarantine/` (kept across restarts until an operator removes them).
    #[serde(default)]
    pub quarantine_files: usize,
    /// Dead-letter files.
    pub dead_letters: usize,
    /// When the snapshot was taken (unix seconds).
    pub taken_at: u64,
}

impl StatusReport {
    /// Build from a spool status.
    pub fn from_status(
        from: &str,
        s: &SpoolStatus,
        max_events: usize,
        dead_letters: usize,
    ) -> Self {
        StatusReport {
            from: from.to_owned(),
            pending_events: s.pending_events,
            pending_bundles: s.pending_events.div_ceil(max_events.max(1) as u64),
            bytes: s.bytes_on_disk,
            oldest_age_seconds: s.oldest_pending_age.map(|d| d.as_secs_f64()),
            quarantined: s.quarantined,
            lost: s.lost,
            quarantine_files: 0,
            dead_letters,
            taken_at: unix_now(),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Write the running agent's snapshot (tmp → rename; no fsync: it is only informative).
pub fn write_status(state_dir: &Path, report: &StatusReport) {
    let path = state_dir.join(STATUS_FILE);
    let tmp = state_dir.join(".status.json.tmp");
    let result = serde_json::to_vec_pretty(report)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::private::write(&tmp, &bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        tracing::debug!(path = %path.display(), error = %e, "could not write status snapshot");
    }
}

/// The spool status, whether or not an agent is running.
pub fn status(
    state_dir: &Path,
    config: &SpoolConfig,
    max_events: usize,
) -> Result<StatusReport, SpoolError> {
    let dead = dead_letters(state_dir).len();
    let quarantine_files = std::fs::read_dir(state_dir.join("spool").join("quarantine"))
        .map(|d| d.filter(|e| e.is_ok()).count())
        .unwrap_or(0);
    match Spool::open(state_dir, config) {
        Ok((spool, _)) => Ok(StatusReport {
            quarantine_files,
            ..StatusReport::from_status("spool", &spool.status(), max_events, dead)
        }),
        Err(SpoolError::Locked { path }) => {
            let snap = std::fs::read(state_dir.join(STATUS_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<StatusReport>(&b).ok());
            match snap {
                Some(mut s) => {
                    s.from = format!(
                        "running agent (snapshot {} s old)",
                        unix_now().saturating_sub(s.taken_at)
                    );
                    s.dead_letters = dead;
                    s.quarantine_files = quarantine_files;
                    Ok(s)
                }
                None => Err(SpoolError::Locked { path }),
            }
        }
        Err(e) => Err(e),
    }
}

/// One dead letter, as listed by `spool dead-letters`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The file.
    pub path: PathBuf,
    /// HTTP status of the rejection.
    pub status: Option<u64>,
    /// Events in the rejected Bundle.
    pub events: usize,
    /// When it was rejected.
    pub time: Option<String>,
}

/// The dead letters under `state_dir`, oldest first.
pub fn dead_letters(state_dir: &Path) -> Vec<DeadLetter> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state_dir.join(DEAD_LETTER_DIR))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let v: serde_json::Value = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            DeadLetter {
                status: v["status"].as_u64(),
                events: v["bundle"]["entry"].as_array().map_or(0, Vec::len),
                time: v["time"].as_str().map(str::to_owned),
                path,
            }
        })
        .collect()
}

/// Move every dead letter into the requeue directory; returns how many were moved.
pub fn requeue_dead_letters(state_dir: &Path) -> std::io::Result<usize> {
    let dir = state_dir.join(REQUEUE_DIR);
    crate::private::create_dir(&dir)?;
    let mut n = 0;
    for letter in dead_letters(state_dir) {
        if let Some(name) = letter.path.file_name() {
            std::fs::rename(&letter.path, dir.join(name))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Append the events of requeued dead letters to the spool. Returns the files whose events
/// were appended: delete them only after the next commit.
pub fn take_requeued(state_dir: &Path, spool: &mut Spool) -> Result<Vec<PathBuf>, SpoolError> {
    let dir = state_dir.join(REQUEUE_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    let mut taken = Vec::new();
    for path in files {
        let Some(v) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            tracing::error!(path = %path.display(), "requeued dead letter is not JSON; left in place");
            continue;
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let origin = Origin {
            source: REQUEUE_DIR.to_owned(),
            stream_key: name,
            path: path.clone(),
            start: 0,
            end: 0,
        };
        for entry in v["bundle"]["entry"].as_array().cloned().unwrap_or_default() {
            let resource = &entry["resource"];
            let Some(id) = resource["id"]
                .as_str()
                .and_then(|s| uuid::Uuid::parse_str(s).ok())
            else {
                continue;
            };
            let record = EventRecord {
                id,
                pattern: static_pattern("requeued"),
                json: resource.to_string(),
                leaf: None,
            };
            spool.append(&record, &origin)?;
        }
        taken.push(path);
    }
    Ok(taken)
}

/// How long the agent waits between looks into the requeue directory.
pub const REQUEUE_EVERY: Duration = Duration::from_secs(5);

//! `<state_dir>/alerts.json`: the windows, open incidents and last line times, replaced
//! atomically (tmp, fsync, rename, fsync of the directory). A versioned, tagged format: a
//! change is a new variant, never a silent reinterpretation.

use super::{AlertEngine, Entry, Incident, KeyState, Silence};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Why the alert state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AlertStateError {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not hold a known format.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "format")]
pub(super) enum StateFile {
    #[serde(rename = "balp-agent-alerts-1")]
    V1(Saved),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Saved {
    /// Wall clock (ms) of the last line per source.
    #[serde(default)]
    last_line: BTreeMap<String, i64>,
    /// Per rule name.
    #[serde(default)]
    rules: BTreeMap<String, SavedRule>,
    /// Per source and stream key: the read position up to which lines went through the
    /// rules.
    #[serde(default)]
    coverage: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedRule {
    /// The rule's kind: state of a name now used by another rule is dropped.
    kind: String,
    #[serde(default)]
    now_ms: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    keys: BTreeMap<String, SavedKey>,
    /// Silent sources already alerted: source → (the last line time alerted for, the
    /// alert's spool seq).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    silent: BTreeMap<String, (i64, u64)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedKey {
    /// (ms, event id, patient).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    entries: Vec<(i64, Uuid, Option<String>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    incident: Option<SavedIncident>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedIncident {
    alert: Uuid,
    last_ms: i64,
    /// The alert's spool seq (`u64::MAX`: not appended yet).
    seq: u64,
    /// The window that raised it, while the alert was not yet durable when saved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    restore: Vec<(i64, Uuid, Option<String>)>,
}

/// The saved state, or None when there is no file.
pub(super) fn load(path: &Path) -> Result<Option<Saved>, AlertStateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AlertStateError::Io {
                op: "reading",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    match serde_json::from_str::<StateFile>(&text) {
        Ok(StateFile::V1(saved)) => Ok(Some(saved)),
        Err(e) => Err(AlertStateError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// Replace the file atomically.
pub(super) fn save(path: &Path, saved: Saved) -> Result<(), AlertStateError> {
    let json =
        serde_json::to_string(&StateFile::V1(saved)).map_err(|e| AlertStateError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let tmp = path.with_extension("json.tmp");
    crate::private::replace(&tmp, path, json.as_bytes()).map_err(|source| AlertStateError::Io {
        op: "writing",
        path: path.to_path_buf(),
        source,
    })
}

fn saved_entries(entries: &[Entry]) -> Vec<(i64, Uuid, Option<String>)> {
    entries
        .iter()
        .map(|e| (e.ms, e.id, e.patient.clone()))
        .collect()
}

fn entries_of(saved: Vec<(i64, Uuid, Option<String>)>, cap: usize) -> Vec<Entry> {
    let mut entries: Vec<Entry> = saved
        .into_iter()
        .map(|(ms, id, patient)| Entry { ms, id, patient })
        .collect();
    entries.sort();
    entries.dedup_by(|a, b| a.id == b.id);
    // A lowered threshold keeps the newest entries.
    if entries.len() > cap {
        entries.drain(..entries.len() - cap);
    }
    entries
}

impl AlertEngine {
    /// What to save; incidents whose alert is above `durable_seq` carry their window.
    pub(super) fn snapshot(&self, durable_seq: u64) -> Saved {
        let mut rules = BTreeMap::new();
        for r in &self.rules {
            let keys = r
                .keys
                .iter()
                .filter(|(_, ks)| !ks.entries.is_empty() || ks.incident.is_some())
                .map(|(k, ks)| {
                    let incident = ks.incident.as_ref().map(|i| SavedIncident {
                        alert: i.alert,
                        last_ms: i.last_ms,
                        seq: i.seq,
                        restore: if i.seq > durable_seq {
                            saved_entries(&i.restore)
                        } else {
                            Vec::new()
                        },
                    });
                    (
                        k.clone(),
                        SavedKey {
                            entries: saved_entries(&ks.entries),
                            incident,
                        },
                    )
                })
                .collect();
            let silent = r
                .silent
                .iter()
                .map(|(src, s)| (src.clone(), (s.last_line_ms, s.seq)))
                .collect();
            rules.insert(
                r.rule.name.clone(),
                SavedRule {
                    kind: r.rule.kind.as_str().to_owned(),
                    now_ms: r.now_ms,
                    keys,
                    silent,
                },
            );
        }
        Saved {
            last_line: self.last_line.clone(),
            rules,
            coverage: self.coverage.clone(),
        }
    }

    /// Take a saved state over (rules matched by name and kind; others dropped). An
    /// incident whose alert seq is not below `spool_next_seq` was lost with its commit: its
    /// window comes back instead, and the lines that completed it are read again.
    pub(super) fn restore(&mut self, saved: Saved, spool_next_seq: u64) {
        self.last_line = saved.last_line;
        self.coverage = saved.coverage;
        let mut saved_rules = saved.rules;
        for r in &mut self.rules {
            let Some(s) = saved_rules.remove(&r.rule.name) else {
                continue;
            };
            if s.kind != r.rule.kind.as_str() {
                continue;
            }
            r.now_ms = s.now_ms;
            let cap = r.rule.threshold;
            r.keys = s
                .keys
                .into_iter()
                .map(|(k, sk)| {
                    let mut entries = sk.entries;
                    let incident = match sk.incident {
                        Some(i) if i.seq < spool_next_seq => Some(Incident {
                            alert: i.alert,
                            last_ms: i.last_ms,
                            seq: 0,
                            restore: Vec::new(),
                        }),
                        Some(i) => {
                            entries.extend(i.restore);
                            None
                        }
                        None => None,
                    };
                    let entries = entries_of(entries, cap);
                    (k, KeyState { entries, incident })
                })
                .collect();
            r.silent = s
                .silent
                .into_iter()
                .filter(|(_, (_, seq))| *seq < spool_next_seq)
                .map(|(src, (last_line_ms, _))| {
                    (
                        src,
                        Silence {
                            last_line_ms,
                            seq: 0,
                        },
                    )
                })
                .collect();
        }
    }
}

//! `balp-agent verify` and `balp-agent prove`: the leaf log against the events an output
//! holds, and inclusion proofs for third parties (docs/tamper.md).
//!
//! The leaf log says which events the agent spooled, in order, and their canonical hashes;
//! the seals at the output sign its prefixes. So verify reports: every leaf whose event is
//! absent (*missing*, unless still in the spool or a dead letter), present with other bytes
//! (*altered*), events of this agent that have no leaf (*extra*), and every seal whose
//! signature, root or chain does not hold (which is also what a rewritten leaf log shows).

use super::canonical::canonical_value;
use super::keys;
use super::merkle::{Frontier, Hash, empty_root, hex, inclusion_path, leaf_hash, root_of};
use super::seal::{Seal, parse_seal};
use crate::spool::leaves::LeafEntry;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `missing`, `altered`, `extra`, `seal`, `leaf-log`.
    pub kind: &'static str,
    /// The event id (empty for a damaged leaf).
    pub id: String,
    /// The leaf index, if it has one.
    pub leaf: Option<u64>,
    /// What is wrong.
    pub detail: String,
}

/// What verify found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Leaves in the log.
    pub leaves: u64,
    /// Events read from the output (this agent's and others').
    pub events: usize,
    /// Seals found and verified.
    pub seals_ok: usize,
    /// The largest tree size a valid seal covers.
    pub sealed_size: u64,
    /// Leaves whose events are still in the spool or dead-lettered (not judged).
    pub pending: usize,
    /// Everything wrong, in leaf order, then extras.
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    /// No findings.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Our event id in a stored event: the event-id extension's UUID (as sent, `urn:uuid:<id>`,
/// or as Medplum rewrites it, `AuditEvent/<id>`), else the resource id.
pub fn stored_event_id(v: &Value, extension_url: &str) -> Option<Uuid> {
    let from_ext = v["extension"].as_array().and_then(|exts| {
        exts.iter()
            .find(|e| e["url"] == extension_url)
            .and_then(|e| e["valueIdentifier"]["value"].as_str())
    });
    if let Some(tail) = from_ext.map(|v| v.rsplit([':', '/']).next().unwrap_or(v))
        && let Ok(id) = Uuid::parse_str(tail)
    {
        return Some(id);
    }
    v["id"].as_str().and_then(|s| Uuid::parse_str(s).ok())
}

/// The leaf hash of a stored event.
pub fn stored_leaf_hash(v: &Value) -> Option<Hash> {
    canonical_value(v.clone()).ok().map(|b| leaf_hash(&b))
}

/// What verify compares.
#[derive(Debug)]
pub struct VerifyInput<'a> {
    /// The leaf log.
    pub leaves: &'a [LeafEntry],
    /// Trusted public keys.
    pub keys: &'a [[u8; 32]],
    /// The agent's observer display (events of other observers are not judged).
    pub observer: &'a str,
    /// Url of the event-id extension.
    pub extension_url: &'a str,
    /// Ids still in the spool or dead-lettered: absent at the output for a known reason.
    pub pending: &'a HashSet<Uuid>,
}

/// Compare the leaf log with the events an output holds.
pub fn verify(input: &VerifyInput<'_>, events: &[Value]) -> VerifyReport {
    let leaves = input.leaves;
    let mut report = VerifyReport {
        leaves: leaves.len() as u64,
        events: events.len(),
        ..VerifyReport::default()
    };
    let mut by_id: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, e) in leaves.iter().enumerate() {
        if e.id.is_nil() {
            report.findings.push(Finding {
                kind: "leaf-log",
                id: String::new(),
                leaf: Some(i as u64),
                detail: "leaf log entry fails its checksum".into(),
            });
            continue;
        }
        by_id.entry(e.id).or_default().push(i);
    }
    // Per leaf: None = no copy seen, Some(true) = a copy matches, Some(false) = only others.
    let mut seen: Vec<Option<bool>> = vec![None; leaves.len()];
    let mut altered_hash: HashMap<usize, Hash> = HashMap::new();
    let mut extra = Vec::new();
    let mut seals: Vec<Seal> = Vec::new();
    for v in events {
        if v["resourceType"] != "AuditEvent" {
            continue;
        }
        let id = stored_event_id(v, input.extension_url);
        let mine = v["source"]["observer"]["display"] == input.observer;
        let Some(idx) = id.and_then(|id| by_id.get(&id)) else {
            if mine {
                extra.push(Finding {
                    kind: "extra",
                    id: id.map(|u| u.to_string()).unwrap_or_default(),
                    leaf: None,
                    detail: format!(
                        "at the output with this agent's observer, but no leaf (recorded {})",
                        v["recorded"].as_str().unwrap_or("?")
                    ),
                });
            }
            continue;
        };
        let hash = stored_leaf_hash(v);
        let matched = idx.iter().any(|i| Some(leaves[*i].hash) == hash);
        for i in idx {
            let ok = Some(leaves[*i].hash) == hash;
            seen[*i] = Some(seen[*i].unwrap_or(false) || ok || matched);
            if !matched && let Some(h) = hash {
                altered_hash.insert(*i, h);
            }
        }
        if matched {
            match parse_seal(v) {
                Ok(Some(s)) => seals.push(s),
                Ok(None) => {}
                Err(e) => report.findings.push(Finding {
                    kind: "seal",
                    id: v["id"].as_str().unwrap_or("").into(),
                    leaf: idx.first().map(|i| *i as u64),
                    detail: e,
                }),
            }
        }
    }
    for (i, e) in leaves.iter().enumerate() {
        if e.id.is_nil() {
            continue;
        }
        match seen[i] {
            Some(true) => {}
            Some(false) => report.findings.push(Finding {
                kind: "altered",
                id: e.id.to_string(),
                leaf: Some(i as u64),
                detail: format!(
                    "leaf {} but the output's copy hashes to {}",
                    hex(&e.hash),
                    altered_hash.get(&i).map(|h| hex(h)).unwrap_or_default()
                ),
            }),
            None if input.pending.contains(&e.id) => report.pending += 1,
            None => report.findings.push(Finding {
                kind: "missing",
                id: e.id.to_string(),
                leaf: Some(i as u64),
                detail: format!(
                    "spool seq {}{}",
                    e.seq,
                    if e.seal { ", a seal" } else { "" }
                ),
            }),
        }
    }
    check_seals(input, &mut seals, &mut report);
    report.findings.extend(extra);
    report
}

/// Signature, root (against the leaf log), position (the seal is leaf `tree_size`) and
/// chain (each names the previous one's head) of every seal found.
fn check_seals(input: &VerifyInput<'_>, seals: &mut Vec<Seal>, report: &mut VerifyReport) {
    let leaves = input.leaves;
    seals.sort_by_key(|s| s.fields.tree_size);
    seals.dedup_by(|a, b| a.id == b.id);
    // Roots of the leaf log at every sealed size, in one pass.
    let sizes: Vec<u64> = seals.iter().map(|s| s.fields.tree_size).collect();
    let mut roots: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut f = Frontier::new();
    let mut want = sizes.iter().peekable();
    while let Some(&&size) = want.peek() {
        if f.size() == size {
            roots.insert(size, f.root());
            want.next();
            continue;
        }
        match leaves.get(f.size() as usize) {
            Some(e) => f.push(e.hash),
            None => break,
        }
    }
    let mut prev: (u64, Hash) = (0, empty_root());
    for s in seals.iter() {
        let n = s.fields.tree_size;
        let leaf = leaves.get(n as usize);
        let mut problems = Vec::new();
        if let Err(e) = s.verify(input.keys) {
            problems.push(e);
        }
        match roots.get(&n) {
            Some(r) if *r == s.fields.root => {}
            Some(_) => problems.push("its root is not the leaf log's head at its size".into()),
            None => problems.push(format!(
                "it covers {n} leaves, the leaf log has {}",
                leaves.len()
            )),
        }
        if leaf.is_none_or(|l| !l.seal || l.id.to_string() != s.id) {
            problems.push(format!("leaf {n} of the leaf log is not this seal"));
        }
        if (s.fields.prev_size, s.fields.prev_root) != prev {
            problems.push(format!(
                "it names the previous seal as size {} root {}, but the previous one found is size {} root {}",
                s.fields.prev_size,
                hex(&s.fields.prev_root),
                prev.0,
                hex(&prev.1)
            ));
        }
        if problems.is_empty() {
            report.seals_ok += 1;
            report.sealed_size = report.sealed_size.max(n);
        } else {
            report.findings.push(Finding {
                kind: "seal",
                id: s.id.clone(),
                leaf: Some(n),
                detail: problems.join("; "),
            });
        }
        prev = (n, s.fields.root);
    }
}

/// An inclusion proof (docs/tamper.md, "Proof format").
#[derive(Debug, Clone, Serialize)]
pub struct Proof {
    /// Format version, 1.
    pub version: u32,
    /// The event.
    pub event_id: String,
    /// Its leaf index.
    pub leaf_index: u64,
    /// Its leaf hash (hex).
    pub leaf_hash: String,
    /// Size of the sealed tree.
    pub tree_size: u64,
    /// Sibling hashes from the leaf up (hex), RFC 9162 §2.1.3.1.
    pub audit_path: Vec<String>,
    /// The seal that signs the tree.
    pub seal: ProofSeal,
}

/// The seal part of a proof.
#[derive(Debug, Clone, Serialize)]
pub struct ProofSeal {
    /// The seal event's id (an AuditEvent at the ARR).
    pub id: String,
    /// Its leaf index (= `tree_size`).
    pub leaf_index: u64,
    /// The signed root (hex).
    pub root: String,
    /// Key fingerprint.
    pub key: String,
    /// Public key (hex) found for that fingerprint.
    pub public_key: String,
    /// The signed text, exactly.
    pub message: String,
    /// Ed25519 signature (base64).
    pub signature: String,
}

/// Why no proof can be made.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    /// The id has no leaf.
    #[error("event {0} has no leaf in the leaf log")]
    NoLeaf(Uuid),
    /// No seal covers the leaf yet.
    #[error("no seal covers event {0} yet (leaf {1}); it is covered by the next seal")]
    NotSealed(Uuid, u64),
}

/// The proof of `id`'s inclusion under the latest seal (from `seals`, the seal events the
/// agent kept) that covers it and whose own leaf is in the log.
pub fn prove(
    id: Uuid,
    leaves: &[LeafEntry],
    seals: &[Value],
    keys: &[[u8; 32]],
) -> Result<Proof, ProveError> {
    use base64::Engine as _;
    let index = leaves
        .iter()
        .position(|e| e.id == id)
        .ok_or(ProveError::NoLeaf(id))?;
    let hashes: Vec<Hash> = leaves.iter().map(|e| e.hash).collect();
    let best = seals
        .iter()
        .filter_map(|v| parse_seal(v).ok().flatten())
        .filter(|s| {
            let n = s.fields.tree_size as usize;
            n > index
                && leaves
                    .get(n)
                    .is_some_and(|l| l.seal && l.id.to_string() == s.id)
                && root_of(&hashes[..n]) == s.fields.root
        })
        .max_by_key(|s| s.fields.tree_size)
        .ok_or(ProveError::NotSealed(id, index as u64))?;
    let n = best.fields.tree_size as usize;
    let public = keys
        .iter()
        .find(|k| keys::fingerprint(k) == best.fields.key)
        .map(|k| hex(k))
        .unwrap_or_default();
    Ok(Proof {
        version: 1,
        event_id: id.to_string(),
        leaf_index: index as u64,
        leaf_hash: hex(&hashes[index]),
        tree_size: n as u64,
        audit_path: inclusion_path(index, &hashes[..n])
            .iter()
            .map(|h| hex(h))
            .collect(),
        seal: ProofSeal {
            id: best.id.clone(),
            leaf_index: n as u64,
            root: hex(&best.fields.root),
            key: best.fields.key.clone(),
            public_key: public,
            message: best.fields.message(),
            signature: base64::engine::general_purpose::STANDARD.encode(best.signature),
        },
    })
}

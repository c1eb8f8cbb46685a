//! Seal events: a signed tree head, delivered as an AuditEvent like any other
//! (docs/tamper.md, "Seal events").
//!
//! A seal is DICOM Application Activity (DCM 110100) with the subtype
//! `urn:balp-agent:tamper#seal`, appended to the spool when every event before it has its leaf:
//! the seal that is leaf `n` signs the head of leaves `0..n` and names the previous seal's
//! head, so the seals form a chain, and each seal is itself covered by the next one.
//! The signature is Ed25519 over [`SealFields::message`], a few lines of text that any
//! language can rebuild from the event.

use super::keys::{self, AgentKey};
use super::merkle::{Hash, empty_root, hex, parse_hex};
use crate::balp::model::{
    Action, Agent, AuditEvent, Coding, Entity, EntityDetail, Outcome, Reference, Source,
};
use crate::balp::{EventRecord, MapContext, codes, event_id};
use crate::decode::Stamp;
use crate::spool::leaves::SEAL_PATTERN;
use crate::spool::{Origin, Spool, SpoolError};
use serde_json::Value;
use std::path::PathBuf;

/// Code system of the seal subtype.
pub const SYS_TAMPER: &str = "urn:balp-agent:tamper";
/// The seal subtype's code.
pub const SEAL_CODE: &str = "seal";
/// First line of every signed message.
pub const MESSAGE_HEADER: &str = "balp-agent tree seal v1";
/// Seals written by this agent, one JSON event a line, for `prove` (a convenience copy).
pub const SEALS_FILE: &str = "seals";

/// What a seal signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealFields {
    /// `source.observer.display` of the agent.
    pub observer: String,
    /// Leaves covered (the seal itself is leaf `tree_size`).
    pub tree_size: u64,
    /// MTH of leaves `0..tree_size`.
    pub root: Hash,
    /// The previous seal's tree size (0 for the first seal).
    pub prev_size: u64,
    /// The previous seal's root (the empty tree's head for the first seal).
    pub prev_root: Hash,
    /// `AuditEvent.recorded` of the seal.
    pub time: String,
    /// Fingerprint of the signing key.
    pub key: String,
}

impl SealFields {
    /// The signed bytes: eight lines, each ending in LF.
    pub fn message(&self) -> String {
        format!(
            "{MESSAGE_HEADER}\nobserver: {}\ntree_size: {}\nroot: {}\nprev_size: {}\nprev_root: {}\ntime: {}\nkey: {}\n",
            self.observer,
            self.tree_size,
            hex(&self.root),
            self.prev_size,
            hex(&self.prev_root),
            self.time,
            self.key
        )
    }
}

/// A seal read back from an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// The event's id.
    pub id: String,
    /// What it signs.
    pub fields: SealFields,
    /// The Ed25519 signature.
    pub signature: [u8; 64],
}

impl Seal {
    /// The signature checks out under one of `keys` whose fingerprint the seal names.
    pub fn verify(&self, keys: &[[u8; 32]]) -> Result<(), String> {
        let Some(key) = keys
            .iter()
            .find(|k| keys::fingerprint(k) == self.fields.key)
        else {
            return Err(format!("signed by unknown key {}", self.fields.key));
        };
        if keys::verify_signature(key, self.fields.message().as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err("signature does not verify".into())
        }
    }
}

fn detail(name: &str, value: String) -> EntityDetail {
    EntityDetail {
        type_: name.to_owned(),
        value_string: Some(value),
        value_base64_binary: None,
    }
}

/// The seal AuditEvent.
pub fn seal_event(ctx: &MapContext, f: &SealFields, signature: &[u8; 64]) -> AuditEvent {
    use base64::Engine as _;
    let id = event_id(
        &ctx.hostname,
        "tamper",
        &format!("seal\u{1f}{}", f.tree_size),
        0,
    );
    AuditEvent {
        id: id.to_string(),
        extension: vec![crate::balp::id_extension(&ctx.event_id_extension, &id)],
        type_: codes::DCM_APPLICATION_ACTIVITY.coding(),
        subtype: vec![Coding {
            system: Some(SYS_TAMPER.into()),
            code: Some(SEAL_CODE.into()),
            display: Some("Audit trail seal (signed Merkle tree head)".into()),
        }],
        action: Some(Action::E),
        recorded: f.time.clone(),
        outcome: Some(Outcome::Success),
        agent: vec![Agent {
            type_: Some(codes::DCM_APPLICATION.concept()),
            who: Some(Reference::display(&ctx.observer_display)),
            requestor: false,
            ..Agent::default()
        }],
        source: Source {
            site: ctx.site.clone(),
            observer: Reference::display(&ctx.observer_display),
            type_: vec![codes::source_type(&ctx.source_type)],
        },
        entity: vec![Entity {
            what: Some(Reference::display(&format!(
                "audit trail of {}",
                ctx.observer_display
            ))),
            type_: Some(Coding {
                system: Some(codes::SYS_AUDIT_ENTITY_TYPE.into()),
                code: Some("2".into()),
                display: Some("System Object".into()),
            }),
            name: Some("RFC 9162 Merkle tree head".to_owned()),
            detail: vec![
                detail("tree_size", f.tree_size.to_string()),
                detail("root", hex(&f.root)),
                detail("prev_size", f.prev_size.to_string()),
                detail("prev_root", hex(&f.prev_root)),
                detail("key", f.key.clone()),
                detail("algorithm", "ed25519".to_owned()),
                EntityDetail {
                    type_: "signature".to_owned(),
                    value_string: None,
                    value_base64_binary: Some(
                        base64::engine::general_purpose::STANDARD.encode(signature),
                    ),
                },
            ],
            ..Entity::default()
        }],
        ..AuditEvent::default()
    }
}

/// Whether an event (as JSON) is a seal, by its subtype.
pub fn is_seal(v: &Value) -> bool {
    v["subtype"].as_array().is_some_and(|a| {
        a.iter()
            .any(|c| c["system"] == SYS_TAMPER && c["code"] == SEAL_CODE)
    })
}

/// Read a seal event; `Ok(None)` when it is not one, `Err` when it is one but malformed.
pub fn parse_seal(v: &Value) -> Result<Option<Seal>, String> {
    use base64::Engine as _;
    if !is_seal(v) {
        return Ok(None);
    }
    let id = v["id"].as_str().unwrap_or("").to_owned();
    let details = v["entity"][0]["detail"]
        .as_array()
        .ok_or("seal without entity.detail")?;
    let get = |name: &str| -> Result<&str, String> {
        details
            .iter()
            .find(|d| d["type"] == name)
            .and_then(|d| {
                d["valueString"]
                    .as_str()
                    .or_else(|| d["valueBase64Binary"].as_str())
            })
            .ok_or_else(|| format!("seal without {name}"))
    };
    let num = |name: &str| -> Result<u64, String> {
        get(name)?
            .parse()
            .map_err(|_| format!("seal {name} is not a number"))
    };
    let hash = |name: &str| -> Result<Hash, String> {
        parse_hex(get(name)?).ok_or_else(|| format!("seal {name} is not 64 hex digits"))
    };
    if get("algorithm")? != "ed25519" {
        return Err("seal algorithm is not ed25519".into());
    }
    let signature: [u8; 64] = base64::engine::general_purpose::STANDARD
        .decode(get("signature")?)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("seal signature is not 64 bytes of base64")?;
    Ok(Some(Seal {
        id,
        fields: SealFields {
            observer: v["source"]["observer"]["display"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            tree_size: num("tree_size")?,
            root: hash("root")?,
            prev_size: num("prev_size")?,
            prev_root: hash("prev_root")?,
            time: v["recorded"].as_str().unwrap_or("").to_owned(),
            key: get("key")?.to_owned(),
        },
        signature,
    }))
}

/// Makes and spools seals for the ingest loop.
#[derive(Debug)]
pub struct Sealer {
    key: AgentKey,
    ctx: MapContext,
    seals_path: PathBuf,
}

impl Sealer {
    /// A sealer with the agent's key (created on first use) and its self-audit context.
    pub fn new(state_dir: &std::path::Path, ctx: MapContext) -> Result<Sealer, keys::KeyError> {
        Ok(Sealer {
            key: AgentKey::load_or_create(state_dir)?,
            ctx,
            seals_path: state_dir.join(super::TAMPER_DIR).join(SEALS_FILE),
        })
    }

    /// The signing key's fingerprint.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint()
    }

    /// Append a seal of the spool's tree as it is now; `Ok(None)` when the tree is not
    /// settled (a commit out or appends not yet committed: the caller commits first) or off.
    /// Returns the tree size it covers. The caller commits it like any event.
    pub fn append_seal(&self, spool: &mut Spool) -> Result<Option<u64>, SpoolError> {
        let Some(head) = spool.tree_head() else {
            return Ok(None);
        };
        let (prev_size, prev_root) = head.last_seal.unwrap_or((0, empty_root()));
        let fields = SealFields {
            observer: self.ctx.observer_display.clone(),
            tree_size: head.size,
            root: head.root,
            prev_size,
            prev_root,
            time: Stamp::now_utc().to_instant(),
            key: self.key.fingerprint(),
        };
        let signature = self.key.sign(fields.message().as_bytes());
        let event = seal_event(&self.ctx, &fields, &signature);
        let json = crate::balp::json::audit_event(&event);
        let record = EventRecord {
            id: event.uuid(),
            pattern: SEAL_PATTERN,
            json,
            leaf: None,
        };
        let origin = Origin {
            source: "self".into(),
            stream_key: "self".into(),
            path: PathBuf::new(),
            start: 0,
            end: 0,
        };
        spool.append(&record, &origin)?;
        // Not synced: `prove` takes only seals whose leaf is in the leaf log.
        let mut line = record.json.clone();
        line.push('\n');
        if let Err(e) = append_line(&self.seals_path, line.as_bytes()) {
            tracing::warn!(path = %self.seals_path.display(), error = %e, "tamper: could not keep a copy of the seal (prove falls back to earlier seals)");
        }
        tracing::info!(
            tree_size = head.size,
            root = %hex(&head.root),
            key = %fields.key,
            "tamper: seal appended"
        );
        Ok(Some(head.size))
    }
}

fn append_line(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    crate::private::options()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn ctx() -> MapContext {
        let config: Config = toml::from_str("").unwrap();
        crate::pipeline::map_context(&config, "self", Vec::new())
    }

    #[test]
    fn a_seal_event_is_conformant_and_reads_back_with_a_valid_signature() {
        let dir = tempfile::tempdir().unwrap();
        let key = AgentKey::load_or_create(dir.path()).unwrap();
        let f = SealFields {
            observer: ctx().observer_display,
            tree_size: 42,
            root: crate::tamper::merkle::leaf_hash(b"r"),
            prev_size: 0,
            prev_root: empty_root(),
            time: "2025-03-01T10:00:00.123Z".into(),
            key: key.fingerprint(),
        };
        let sig = key.sign(f.message().as_bytes());
        let event = seal_event(&ctx(), &f, &sig);
        let v: Value = serde_json::from_str(&crate::balp::json::audit_event(&event)).unwrap();
        assert_eq!(crate::balp::conformance::check(&v), Vec::<String>::new());
        assert!(is_seal(&v));
        let seal = parse_seal(&v).unwrap().unwrap();
        assert_eq!(seal.fields, f);
        assert_eq!(seal.verify(&[key.public()]), Ok(()));
        let mut forged = seal.clone();
        forged.fields.tree_size = 41;
        assert!(forged.verify(&[key.public()]).is_err());
        assert!(seal.verify(&[[7u8; 32]]).is_err());
        assert!(
            f.message()
                .starts_with("balp-agent tree seal v1\nobserver: ")
        );
        assert_eq!(f.message().lines().count(), 8);
    }
}

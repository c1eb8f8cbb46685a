//! Tamper evidence: an RFC 9162 Merkle tree over every AuditEvent the agent spools, sealed
//! by signed seal events, and the checks that use it (docs/tamper.md).
//!
//! * [`merkle`]: hashes, tree heads, inclusion proofs.
//! * [`canonical`]: the canonical bytes of an event, recomputable from an ARR's copy.
//! * The leaf log itself lives with the spool ([`crate::spool::leaves`]), which writes it
//!   with the same durability rules as the segments.

pub mod canonical;
pub mod keys;
pub mod merkle;
pub mod seal;
pub mod verify;

pub use crate::spool::leaves::TAMPER_DIR;

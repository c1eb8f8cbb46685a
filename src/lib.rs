//! balp-agent turns log lines into IHE BALP AuditEvents and delivers them to an Audit Record
//! Repository without losing any on the way.
//!
//! One log line travels through these stages, one module each:
//!
//! ```text
//! source ──LogLine──▶ decode ──Decoded──▶ parse ──Extracted──▶ balp (map) ──EventRecord──▶
//!   spool (append, group commit = fsync) ──▶ read positions advance
//!   spool ──SpooledEvent──▶ batch ──Batch──▶ deliver ──2xx──▶ spool ack (records deleted)
//! ```
//!
//! Two rules carry the durability: a line's read position advances only after the spool
//! fsynced every event made from it and from the lines before it, and a spooled record is
//! acknowledged (and may be deleted) only after the output accepted it (HTTP 2xx, or kept as a
//! dead letter). A crash anywhere re-reads or resends; it never loses.
//!
//! * [`source`] reads lines (files, the journal, syslog over the network) and tags each with
//!   its [`source::StreamId`] and byte range, so that every event has a stable identity and
//!   every read position can be checkpointed.
//! * [`decode`] splits a line into a header (time, host, program) and a message.
//! * [`parse`] runs the configured parsers (user-defined or [`parse::presets`]) and yields the
//!   pattern to emit plus the fields captured from the line.
//! * [`balp`] maps that onto FHIR R4 AuditEvents that follow the BALP profiles.
//! * [`spool`] keeps every event on disk (segments, CRC-framed, fsynced in group commits)
//!   until the output has it.
//! * [`batch`] cuts contiguous ranges of spooled events into FHIR Bundles by count, size and
//!   time.
//! * [`deliver`] writes Bundles to a directory, stdout, or POSTs them to the ARR with retry.
//! * [`metrics`] serves `/metrics` (Prometheus text) and `/health` from [`events`] counters
//!   and the shared [`metrics::Health`].
//! * [`pipeline`] wires the stages together: the ingest loop (decode → parse → map → spool,
//!   positions after the fsync) and the delivery task (spool → batch → deliver, acks after
//!   2xx).
//! * [`alert`] watches the mapped events (and the sources' silence) and raises DCM 110113
//!   Security Alert events of its own, spooled with the events that triggered them.
//! * [`arr`] (`balp-agent arr check`) compares the delivered log with a search of the ARR.
//! * [`tamper`]: the signed Merkle tree over every spooled event, its seals, `verify` and
//!   `prove` (docs/tamper.md).
//! * [`check`] validates a config (`balp-agent check`), reporting every problem at once;
//!   [`config`] holds the plain settings every stage takes.

pub mod alert;
pub mod arr;
pub mod balp;
pub mod batch;
pub mod check;
pub mod config;
pub mod decode;
pub mod deliver;
pub mod events;
pub mod metrics;
pub mod parse;
pub mod pipeline;
pub mod private;
pub mod shutdown;
pub mod source;
pub mod spool;
pub mod systemd;
pub mod tamper;

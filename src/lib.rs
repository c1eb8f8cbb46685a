//! balp-agent turns log lines into IHE BALP AuditEvents and delivers them to an Audit Record
//! Repository without losing any on the way.
//!
//! One log line travels through these stages, one module each:
//!
//! ```text
//! source ──LogLine──▶ decode ──Decoded──▶ parse ──Extracted──▶ balp (map) ──EventRecord──▶
//!   batch ──Batch──▶ deliver ──ack──▶ source positions advance
//! ```
//!
//! * [`source`] reads lines (files today) and tags each with its [`source::StreamId`] and byte
//!   range, so that every event has a stable identity and every read position can be
//!   checkpointed.
//! * [`decode`] splits a line into a header (time, host, program) and a message.
//! * [`parse`] runs the configured parsers (user-defined or [`parse::presets`]) and yields the
//!   pattern to emit plus the fields captured from the line.
//! * [`balp`] maps that onto FHIR R4 AuditEvents that follow the BALP profiles.
//! * [`batch`] groups events into FHIR Bundles by count, size and time.
//! * [`deliver`] writes Bundles to a directory, stdout, or POSTs them to the ARR with retry.
//! * [`metrics`] serves `/metrics` (Prometheus text) and `/health` from [`events`] counters
//!   and the shared [`metrics::Health`].
//! * [`pipeline`] wires the stages together: read positions advance only after the output
//!   has accepted every event read before them.

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

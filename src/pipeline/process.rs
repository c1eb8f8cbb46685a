//! Decode → parse → map for one source: a [`LogLine`] in, its AuditEvents out.

use crate::alert::AlertFact;
use crate::balp::{self, EventRecord, LineRef, MapContext};
use crate::config::{Config, SourceConfig};
use crate::decode::Decoder;
use crate::events;
use crate::parse::engine::{LineOutcome, ParserSet};
use crate::source::LogLine;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Per-source counts, as shown by `balp-agent test`.
#[derive(Debug, Default, Clone)]
pub struct ProcStats {
    /// Lines seen.
    pub lines: u64,
    /// Events made.
    pub events: u64,
    /// Lines no parser matched.
    pub unmatched: u64,
    /// Lines that did not fit the decoder (still passed to the parsers).
    pub malformed: u64,
    /// Lines a parser's `fold` rule folded into an earlier event (also in `matched`).
    pub folded: u64,
    /// Lines with an event whose time could not be read from the line (events flagged).
    pub time_unreadable: u64,
    /// Lines matched, per parser.
    pub matched: BTreeMap<Arc<str>, u64>,
}

/// Decode → parse → map for one source: used by `run` and, identically, by `test`. Clone
/// gives a processor with the same compiled parsers and its own copy of their state.
#[derive(Clone)]
pub struct SourceProcessor {
    decoder: Decoder,
    /// The source's parsers, comma-joined (the label of unmatched-line counts).
    parser_list: String,
    /// Whether a captured X-Forwarded-For may name the client (`trust_forwarded_for`).
    trust_forwarded_for: bool,
    parsers: ParserSet,
    tz: TimeZone,
    ctx: MapContext,
    /// `[tamper]` is on: records carry their leaf hash, made from the model.
    leaf_hashes: bool,
    /// Counts so far.
    pub stats: ProcStats,
}

/// The zone a source uses for stamps without offset: configured, else the system's.
pub fn source_zone(source: &SourceConfig) -> Result<TimeZone, String> {
    match &source.timezone {
        Some(name) => {
            crate::decode::zone(name).map_err(|e| format!("sources.{}.timezone: {e}", source.name))
        }
        None => Ok(TimeZone::system()),
    }
}

impl SourceProcessor {
    /// Build the stages for `source`.
    pub fn build(config: &Config, source: &SourceConfig) -> Result<SourceProcessor, Vec<String>> {
        let tz = source_zone(source).map_err(|e| vec![e])?;
        let decoder = Decoder::for_source(source, &tz).map_err(|e| vec![e])?;
        let parsers = ParserSet::build(&source.parsers, &config.parsers).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| format!("sources.{}.parsers: {p}", source.name))
                .collect::<Vec<_>>()
        })?;
        let ctx = map_context(config, &source.name, source.fhir_bases());
        Ok(SourceProcessor {
            decoder,
            parser_list: source.parsers.join(","),
            trust_forwarded_for: source.trust_forwarded_for,
            parsers,
            tz,
            ctx,
            leaf_hashes: config.tamper.enabled,
            stats: ProcStats::default(),
        })
    }

    /// The same stages without leaf hashes on the records (for `test`, which spools nothing).
    pub fn without_leaf_hashes(mut self) -> SourceProcessor {
        self.leaf_hashes = false;
        self
    }

    /// The parsers of this source, in order.
    pub fn parser_names(&self) -> Vec<Arc<str>> {
        self.parsers.parser_names()
    }

    /// All events one line yields (none, one, or one per patient), in order.
    pub fn process(&mut self, line: &LogLine, now: Timestamp) -> Vec<EventRecord> {
        self.process_facts(line, now, None)
    }

    /// As [`process`](Self::process), and with `facts` the [`AlertFact`] of each event
    /// (built from the mapped event, in the same order).
    pub fn process_facts(
        &mut self,
        line: &LogLine,
        now: Timestamp,
        facts: Option<&mut Vec<AlertFact>>,
    ) -> Vec<EventRecord> {
        self.stats.lines += 1;
        let decoded = self.decoder.decode(&line.text, now);
        if decoded.malformed {
            self.stats.malformed += 1;
        }
        match self.parsers.parse(&decoded, &self.tz) {
            LineOutcome::Unmatched => {
                self.stats.unmatched += 1;
                events::unmatched_by(&self.ctx.source, &self.parser_list);
                Vec::new()
            }
            LineOutcome::Folded { parser } => {
                events::folded(&self.ctx.source, &parser);
                self.stats.folded += 1;
                *self.stats.matched.entry(parser).or_default() += 1;
                Vec::new()
            }
            LineOutcome::Matched { parser, extracted } => {
                *self.stats.matched.entry(parser).or_default() += 1;
                let Some(mut extracted) = extracted else {
                    return Vec::new();
                };
                if !self.trust_forwarded_for {
                    // Spoofable unless a trusted proxy sets it: only the peer address counts.
                    extracted
                        .fields
                        .set(crate::parse::FieldName::ForwardedFor, "");
                }
                let position = line.position();
                let lref = LineRef {
                    position: &position,
                    flags: line.flags,
                };
                if extracted.time_unreadable {
                    self.stats.time_unreadable += 1;
                    events::time_unreadable(&self.ctx.source, &extracted.parser, &position);
                }
                let made = balp::map::map_extracted(&self.ctx, &extracted, lref);
                self.stats.events += made.len() as u64;
                if let Some(facts) = facts {
                    let time = extracted.time.map_or(now, |t| t.ts);
                    let address = balp::agents::client_address(&extracted.fields);
                    facts.extend(made.iter().map(|ev| {
                        AlertFact::of_event(
                            ev,
                            extracted.pattern,
                            time,
                            &line.stream.source,
                            address,
                        )
                    }));
                }
                made.iter()
                    .map(|ev| {
                        events::event(extracted.pattern.as_str());
                        if self.leaf_hashes {
                            balp::to_record_with_leaf(ev, extracted.pattern)
                        } else {
                            balp::to_record(ev, extracted.pattern)
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The mapping context of one source (or of the agent itself, for self-audit events).
pub fn map_context(config: &Config, source: &str, fhir_bases: Vec<String>) -> MapContext {
    let hostname = config.hostname();
    let observer_display = config
        .agent
        .observer
        .display
        .clone()
        .unwrap_or_else(|| format!("balp-agent@{hostname}"));
    MapContext {
        hostname,
        source: source.to_owned(),
        observer_display,
        site: config.agent.observer.site.clone(),
        source_type: config.agent.observer.type_code.clone(),
        mode: config.agent.mode,
        fhir_bases,
        event_id_extension: config.agent.event_id_extension.clone(),
    }
}

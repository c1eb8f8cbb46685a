//! The parser engine: [`ParserSpec`]s (presets or user `[[parsers]]`) are compiled once into
//! a [`ParserSet`] per source; each [`Decoded`] line then yields a [`LineOutcome`].
//!
//! Guarantees: parsers are tried in the configured order, rules within a parser in order, and
//! the first rule that matches decides (one line, at most one [`Extracted`]). Everything that
//! can be checked ahead (regex syntax and size, capture names used by templates, field and
//! pattern names, time formats) is checked by [`compile_parser`], so matching itself cannot
//! fail. A `time` value that does not parse with the rule's format falls back to the
//! decoder's header time.
//!
//! Speed: templates are pre-split into literal pieces and capture indices; a rule's regex is
//! first run as a cheap `is_match` (the regex crate's literal prefilters make non-matching
//! lines cost little), and capture positions are only computed for the rule that matched.
//! The only per-line allocations are the output strings.

use crate::config::parser::{ParserSpec, RuleSpec};
use crate::decode::syslog::parse_rfc3339;
use crate::decode::{Decoded, Stamp};
use crate::parse::{Extracted, FieldName, Fields, Pattern, presets};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use regex::{CaptureLocations, Regex, RegexBuilder};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Largest compiled program a configured regex may produce.
const REGEX_SIZE_LIMIT: usize = 2 << 20;

pub use super::PATTERN_NAMES;

/// The non-strftime time formats.
pub const NAMED_TIME_FORMATS: &[&str] = &[
    "auto", "rfc3339", "epoch", "epoch_ms", "epoch_us", "epoch_ns",
];

/// The shortest integer part `auto` reads as an epoch time: shorter numbers (an hour, a
/// counter) would silently become dates in 1970.
const AUTO_EPOCH_MIN_DIGITS: usize = 9;

/// Look a pattern name up: `Some(None)` for `none`, `None` when unknown.
pub fn parse_pattern(name: &str) -> Option<Option<Pattern>> {
    match name {
        "none" => Some(None),
        _ => Pattern::parse(name).map(Some),
    }
}

/// Compiled parsers for one source, in the configured order.
#[derive(Debug, Clone)]
pub struct ParserSet {
    parsers: Vec<CompiledParser>,
    /// The events that may still absorb a line (rules with `fold`).
    folds: FoldState,
    /// Values lines left for a later line's event (rules with `stash` / `take`).
    stash: StashState,
}

/// What the parsers made of one line.
#[derive(Debug, Clone, PartialEq)]
pub enum LineOutcome {
    /// A rule matched; `extracted` is None for rules with `pattern = "none"` (known noise).
    Matched {
        /// Name of the parser whose rule matched.
        parser: Arc<str>,
        /// The event to emit, if any.
        extracted: Option<Extracted>,
    },
    /// A rule with `fold` matched a line that repeats an event already emitted: nothing to emit.
    Folded {
        /// Name of the parser whose rule matched.
        parser: Arc<str>,
    },
    /// No rule of any parser matched.
    Unmatched,
}

impl ParserSet {
    /// names = the source's `parsers` list: each a preset name or a `[[parsers]]` name (user
    /// parsers shadow presets of the same name). Errors: one message per problem.
    pub fn build(names: &[String], user: &[ParserSpec]) -> Result<ParserSet, Vec<String>> {
        let mut parsers = Vec::with_capacity(names.len());
        let mut problems = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                problems.push(format!("parser {name:?} is listed twice"));
                continue;
            }
            let spec = match user.iter().find(|p| &p.name == name) {
                Some(spec) => Cow::Borrowed(spec),
                None => match presets::get(name) {
                    Some(spec) => Cow::Owned(spec),
                    None => {
                        problems.push(unknown_parser_message(name, user));
                        continue;
                    }
                },
            };
            match compile_parser(&spec) {
                Ok(p) => parsers.push(p),
                Err(mut e) => problems.append(&mut e),
            }
        }
        if problems.is_empty() {
            Ok(ParserSet {
                parsers,
                folds: FoldState::default(),
                stash: StashState::default(),
            })
        } else {
            Err(problems)
        }
    }

    /// Try parsers in order; within a parser, rules in order; first match wins. `tz` is the
    /// source's zone for times without offset.
    /// A line a `fold` rule folds into an earlier event gives [`LineOutcome::Folded`], so
    /// the set keeps state across lines: use one set per stream of lines, in order.
    pub fn parse(&mut self, decoded: &Decoded, tz: &TimeZone) -> LineOutcome {
        for (i, p) in self.parsers.iter().enumerate() {
            if let Some(RuleMatch {
                mut extracted,
                fold,
                carry,
            }) = p.match_line(decoded, tz)
            {
                match carry {
                    Some(Carry::Stash(key, values)) => self.stash.put(i, key, values),
                    Some(Carry::Take(key, fields)) => {
                        let values = self.stash.take(i, &key);
                        if let Some(e) = extracted.as_mut() {
                            for (name, vals) in values {
                                if fields.contains(&name) && e.fields.get(name).is_none() {
                                    e.fields.set(name, vals.join(", "));
                                }
                            }
                        }
                    }
                    None => {}
                }
                if let (Some(e), Some((rule, key))) = (&extracted, fold)
                    && self.folds.folds(i, rule, key, e)
                {
                    return LineOutcome::Folded {
                        parser: p.name.clone(),
                    };
                }
                return LineOutcome::Matched {
                    parser: p.name.clone(),
                    extracted,
                };
            }
        }
        LineOutcome::Unmatched
    }

    /// The parsers' names, in order.
    pub fn parser_names(&self) -> Vec<Arc<str>> {
        self.parsers.iter().map(|p| p.name.clone()).collect()
    }
}

/// The message for a parser name that is neither a `[[parsers]]` entry nor a preset.
pub(crate) fn unknown_parser_message(name: &str, user: &[ParserSpec]) -> String {
    let mut known: Vec<&str> = user.iter().map(|p| p.name.as_str()).collect();
    known.extend(presets::names());
    format!(
        "unknown parser {name:?}: not a [[parsers]] name nor a preset (known: {})",
        known.join(", ")
    )
}

/// One parser, ready to match.
#[derive(Debug, Clone)]
pub struct CompiledParser {
    name: Arc<str>,
    programs: Vec<String>,
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    regex: Option<Regex>,
    json_match: Vec<(Vec<String>, Regex)>,
    pattern: Option<Pattern>,
    time: Option<(Template, TimeFormat)>,
    fields: Vec<(FieldName, Template)>,
    needs_captures: bool,
    /// Where the `key=value` pairs are (`pairs`).
    pairs: Option<PairsFrom>,
    fold: Option<FoldRule>,
    stash: Option<(Template, Vec<(FieldName, Template)>)>,
    take: Option<(Template, Vec<FieldName>)>,
    /// Reused for every search, so a line costs no capture allocation.
    locs: Option<RefCell<CaptureLocations>>,
}

/// The text a rule's `pairs` reads.
#[derive(Debug, Clone, Copy)]
enum PairsFrom {
    /// A capture group.
    Capture(usize),
    /// `$rest`: the line after the regex's match. A regex that stops where the pairs begin
    /// can often run on the one-pass DFA (capture groups at DFA speed); a trailing `(.*)`
    /// capture makes it ambiguous and sends it to the backtracker (0.45 vs 2.1 µs a line).
    Rest,
}

/// A compiled [`FoldSpec`](crate::config::parser::FoldSpec).
#[derive(Debug, Clone)]
struct FoldRule {
    group: Arc<str>,
    fields: Vec<FieldName>,
    key: Option<Template>,
    within_ms: i64,
    max: u32,
}

/// What a matching rule made of a line.
struct RuleMatch<'a> {
    /// Its event (None = noise).
    extracted: Option<Extracted>,
    /// For rules with `fold`: the fold and the rendered key.
    fold: Option<(&'a FoldRule, String)>,
    /// For rules with `stash` or `take`: what to keep or pick up.
    carry: Option<Carry<'a>>,
}

/// What a rule with `stash` or `take` does to the set's [`StashState`].
enum Carry<'a> {
    /// Keep these rendered values under the rendered key.
    Stash(String, Vec<(FieldName, String)>),
    /// Take what is kept under the rendered key into these fields.
    Take(String, &'a [FieldName]),
}

/// What is kept under one stash key: per field, its distinct values in order.
type Kept = Vec<(FieldName, Vec<String>)>;

/// Values kept by `stash` rules until a `take` rule picks them up: per (parser, key), per
/// field, the distinct values in the order they came. Bounded: past [`MAX_KEYS`] keys the
/// oldest are dropped (a statement whose QUERY row never comes, e.g. with QUERY events
/// filtered out), past [`MAX_VALUES`] values a field keeps its first ones.
///
/// [`MAX_KEYS`]: Self::MAX_KEYS
/// [`MAX_VALUES`]: Self::MAX_VALUES
#[derive(Debug, Clone, Default)]
struct StashState {
    entries: HashMap<(usize, String), Kept>,
    /// Keys in the order they were first stashed (may name keys already taken).
    order: VecDeque<(usize, String)>,
}

impl StashState {
    const MAX_KEYS: usize = 4096;
    const MAX_VALUES: usize = 64;

    fn put(&mut self, parser: usize, key: String, values: Vec<(FieldName, String)>) {
        let k = (parser, key);
        if !self.entries.contains_key(&k) {
            while self.entries.len() >= Self::MAX_KEYS {
                match self.order.pop_front() {
                    Some(old) => {
                        self.entries.remove(&old);
                    }
                    None => {
                        self.entries.clear();
                        break;
                    }
                }
            }
            self.order.push_back(k.clone());
            // Taken keys stay in `order` until they reach the front; keep it from growing
            // without bound when most keys are taken.
            if self.order.len() > 2 * Self::MAX_KEYS {
                let entries = &self.entries;
                self.order.retain(|o| entries.contains_key(o) || *o == k);
            }
        }
        let entry = self.entries.entry(k).or_default();
        for (name, value) in values {
            let value = value.trim();
            if value.is_empty() || value == "-" {
                continue;
            }
            let slot = match entry.iter().position(|(n, _)| *n == name) {
                Some(i) => &mut entry[i].1,
                None => {
                    entry.push((name, Vec::new()));
                    let last = entry.len() - 1;
                    &mut entry[last].1
                }
            };
            if slot.len() < Self::MAX_VALUES && !slot.iter().any(|v| v == value) {
                slot.push(value.to_owned());
            }
        }
    }

    fn take(&mut self, parser: usize, key: &str) -> Kept {
        self.entries
            .remove(&(parser, key.to_owned()))
            .unwrap_or_default()
    }
}

/// What makes two lines "the same" for `fold`: parser index, group, the key fields' values,
/// the rendered `key` template.
type FoldKey = (usize, Arc<str>, Vec<Option<String>>, String);

/// Events that may still absorb lines, with their time (ms since the epoch), window and how
/// many lines they absorbed. Entries older than their window are dropped as lines go by, so the map
/// holds only what one window of traffic can produce.
#[derive(Debug, Clone, Default)]
struct FoldState {
    anchors: HashMap<FoldKey, (i64, i64, u32)>,
    /// The size at which the next sweep runs: twice what the last one kept (at least
    /// [`SWEEP_AT`](Self::SWEEP_AT)), so sweeping stays linear while many anchors are alive.
    sweep_at: usize,
}

impl FoldState {
    /// Entries past which the map is swept of expired anchors.
    const SWEEP_AT: usize = 1024;
    /// A hard bound for traffic that keeps more anchors alive than this within one window.
    const MAX: usize = 65_536;

    /// Whether `e` (with rendered `key`) folds into a recent event of parser `parser`; if
    /// not, it becomes an event later lines may fold into.
    fn folds(&mut self, parser: usize, rule: &FoldRule, key: String, e: &Extracted) -> bool {
        // Without a time of the line's own there is no gap to measure: keep the event.
        let Some(t) = e.time.map(|s| s.ts.as_millisecond()) else {
            return false;
        };
        let key: FoldKey = (
            parser,
            rule.group.clone(),
            rule.fields
                .iter()
                .map(|f| e.fields.get(*f).map(str::to_owned))
                .collect(),
            key,
        );
        if let Some((at, within, folded)) = self.anchors.get_mut(&key)
            && (t - *at).abs() <= *within
            && *folded < rule.max
        {
            *folded += 1;
            return true;
        }
        if self.anchors.len() >= self.sweep_at.max(Self::SWEEP_AT) {
            self.anchors
                .retain(|_, (at, within, _)| (t - *at).abs() <= *within);
            if self.anchors.len() >= Self::MAX {
                self.anchors.clear();
            }
            self.sweep_at = (self.anchors.len() * 2).max(Self::SWEEP_AT);
        }
        self.anchors.insert(key, (t, rule.within_ms, 0));
        false
    }
}

#[derive(Debug, Clone)]
enum TimeFormat {
    /// RFC 3339, or a number: epoch seconds, ms, µs or ns by its magnitude (the default).
    Auto,
    Rfc3339,
    /// Epoch time in units of 10^-n seconds (0 = s, 3 = ms, 6 = µs, 9 = ns), fraction allowed.
    Epoch(u32),
    Strftime(String),
}

/// A transformation of a variable's value: `{name:filter}`.
#[derive(Debug, Clone, PartialEq)]
enum Filter {
    /// `jwt.<claim>[.<member>...]`: a claim of the JWT in the value (`Bearer ` allowed),
    /// read from its payload without checking the signature (the server that logged it
    /// did). Absent when the value is not a signed JWT or lacks the claim.
    JwtClaim(Vec<String>),
    /// `bearer`: the value when it is a bearer token that is not a JWT (an opaque token,
    /// for the Opaque profile); absent for a JWT (its claims are read instead) and for any
    /// other scheme (`Basic` carries a password).
    Bearer,
    /// Remove SQL/CSV quoting: `'…'` with backslash escapes and doubled `''` (MySQL/MariaDB),
    /// or `"…"` with doubled `""` (CSV); unquoted values pass unchanged.
    Unquote,
    /// Upper-case.
    Upper,
    /// `first`: the first item of a list separated by commas or spaces (the client's own
    /// address in an `X-Forwarded-For` value).
    First,
}

#[derive(Debug, Clone, PartialEq)]
enum Var {
    Filtered(Box<Var>, Filter),
    Capture(usize),
    /// `kv.<key>`: the value of a pair of the rule's `pairs` capture.
    Pair(String),
    Json(Vec<String>),
    Host,
    Program,
    Pid,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    /// Alternatives: the first one that is set.
    Vars(Vec<Var>),
}

#[derive(Debug, Clone, PartialEq)]
struct Template {
    pieces: Vec<Piece>,
}

/// A problem of a spec, located by rule and key so `check` can point at it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpecProblem {
    /// Index into `rules`, or None for parser-level keys.
    pub rule: Option<usize>,
    /// Key path inside the rule or parser, e.g. `["regex"]`, `["fields", "user"]`.
    pub key: Vec<String>,
    /// What is wrong.
    pub message: String,
}

impl SpecProblem {
    fn render(&self, parser: &str) -> String {
        let key: Vec<String> = self.key.iter().map(|k| quote_key(k)).collect();
        let key = key.join(".");
        match self.rule {
            Some(i) => format!("parser {parser:?}: rules[{i}].{key}: {}", self.message),
            None => format!("parser {parser:?}: {key}: {}", self.message),
        }
    }
}

/// Compile one parser; every problem is reported, each as one message naming the parser,
/// rule and key.
pub fn compile_parser(spec: &ParserSpec) -> Result<CompiledParser, Vec<String>> {
    compile_parser_located(spec).map_err(|ps| ps.iter().map(|p| p.render(&spec.name)).collect())
}

pub(crate) fn compile_parser_located(
    spec: &ParserSpec,
) -> Result<CompiledParser, Vec<SpecProblem>> {
    let mut problems = Vec::new();
    if spec.name.trim().is_empty() {
        problems.push(SpecProblem {
            rule: None,
            key: vec!["name".into()],
            message: "must not be empty".into(),
        });
    }
    const DECODERS: &[&str] = crate::config::DecodeKind::NAMES;
    if let Some(d) = &spec.decode
        && !DECODERS.contains(&d.as_str())
    {
        problems.push(SpecProblem {
            rule: None,
            key: vec!["decode".into()],
            message: format!("unknown decoder {d:?} (allowed: {})", DECODERS.join(", ")),
        });
    }
    if let Some(m) = &spec.multiline
        && !["none", "indented", "csv"].contains(&m.as_str())
    {
        problems.push(SpecProblem {
            rule: None,
            key: vec!["multiline".into()],
            message: format!("unknown multiline mode {m:?} (allowed: none, indented, csv)"),
        });
    }
    if spec.rules.is_empty() {
        problems.push(SpecProblem {
            rule: None,
            key: vec!["rules".into()],
            message: "a parser needs at least one rule".into(),
        });
    }
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, r) in spec.rules.iter().enumerate() {
        match compile_rule(r) {
            Ok(rule) => rules.push(rule),
            Err(errs) => problems.extend(errs.into_iter().map(|(key, message)| SpecProblem {
                rule: Some(i),
                key,
                message,
            })),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(CompiledParser {
        name: Arc::from(spec.name.as_str()),
        programs: spec.programs.clone(),
        rules,
    })
}

fn build_regex(re: &str) -> Result<Regex, String> {
    RegexBuilder::new(re)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex: {}", one_line(&e.to_string())))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn compile_rule(r: &RuleSpec) -> Result<CompiledRule, Vec<(Vec<String>, String)>> {
    let mut errs: Vec<(Vec<String>, String)> = Vec::new();
    let regex = match r.regex.as_deref().map(build_regex) {
        Some(Ok(re)) => Some(re),
        Some(Err(e)) => {
            errs.push((vec!["regex".into()], e));
            None
        }
        None => None,
    };
    let mut json_match = Vec::new();
    for (path, re) in &r.json_match {
        let key = vec!["json_match".to_owned(), path.clone()];
        match (parse_json_path(path), build_regex(re)) {
            (Ok(p), Ok(re)) => json_match.push((p, re)),
            (Err(e), _) | (_, Err(e)) => errs.push((key, e)),
        }
    }
    let pattern = match parse_pattern(&r.pattern) {
        Some(p) => p,
        None => {
            errs.push((
                vec!["pattern".into()],
                format!(
                    "unknown pattern {:?} (allowed: {})",
                    r.pattern,
                    PATTERN_NAMES.join(", ")
                ),
            ));
            None
        }
    };
    let capture_names: Option<Vec<Option<&str>>> =
        regex.as_ref().map(|re| re.capture_names().collect());
    let regex_failed = r.regex.is_some() && regex.is_none();
    let mut fields = Vec::new();
    let mut time_template = None;
    for (name, tpl) in &r.fields {
        let key = vec!["fields".to_owned(), name.clone()];
        let field = FieldName::parse(name);
        if field.is_none() {
            let all: Vec<&str> = FieldName::ALL.iter().map(|f| f.as_str()).collect();
            errs.push((
                key.clone(),
                format!("unknown field {name:?} (allowed: {})", all.join(", ")),
            ));
        }
        match parse_template(tpl, capture_names.as_deref()) {
            Ok(t) => match field {
                Some(FieldName::Time) => time_template = Some(t),
                Some(f) => fields.push((f, t)),
                None => {}
            },
            // Capture names cannot be checked against a regex that did not compile.
            Err(_) if regex_failed => {}
            Err(e) => errs.push((key, e)),
        }
    }
    let time_format = match r.time_format.as_deref() {
        None | Some("auto") => TimeFormat::Auto,
        Some("rfc3339") => TimeFormat::Rfc3339,
        Some("epoch") => TimeFormat::Epoch(0),
        Some("epoch_ms") => TimeFormat::Epoch(3),
        Some("epoch_us") => TimeFormat::Epoch(6),
        Some("epoch_ns") => TimeFormat::Epoch(9),
        Some(f) => match check_strftime(f) {
            Ok(()) => TimeFormat::Strftime(f.to_owned()),
            Err(e) => {
                errs.push((vec!["time_format".into()], e));
                TimeFormat::Rfc3339
            }
        },
    };
    if r.time_format.is_some() && !r.fields.contains_key("time") {
        errs.push((
            vec!["time_format".into()],
            "time_format is set but the rule has no `time` field".into(),
        ));
    }
    let fold = r.fold.as_ref().map(|spec| {
        let mut keys = Vec::new();
        for name in &spec.fields {
            match FieldName::parse(name) {
                Some(f) => keys.push(f),
                None => errs.push((
                    vec!["fold".into(), "fields".into()],
                    format!("unknown field {name:?}"),
                )),
            }
        }
        let key = match spec
            .key
            .as_deref()
            .map(|k| parse_template(k, capture_names.as_deref()))
        {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                if !regex_failed {
                    errs.push((vec!["fold".into(), "key".into()], e));
                }
                None
            }
            None => None,
        };
        if spec.fields.is_empty() && spec.key.is_none() {
            errs.push((
                vec!["fold".into()],
                "needs `fields` or `key`: what makes two lines the same".into(),
            ));
        }
        if !(1..=600_000).contains(&spec.within_ms) {
            errs.push((
                vec!["fold".into(), "within_ms".into()],
                format!("{} is out of range (1 to 600000)", spec.within_ms),
            ));
        }
        if spec.max == 0 {
            errs.push((
                vec!["fold".into(), "max".into()],
                "must be at least 1".into(),
            ));
        }
        let group = match (&spec.group, pattern) {
            (Some(g), _) => g.as_str(),
            (None, Some(p)) => p.as_str(),
            (None, None) => {
                errs.push((
                    vec!["fold".into()],
                    "a rule with pattern \"none\" emits nothing to fold into".into(),
                ));
                ""
            }
        };
        FoldRule {
            group: Arc::from(group),
            fields: keys,
            key,
            within_ms: i64::try_from(spec.within_ms).unwrap_or(i64::MAX),
            max: spec.max,
        }
    });
    let template =
        |tpl: &str, at: &[&str], errs: &mut Vec<(Vec<String>, String)>| match parse_template(
            tpl,
            capture_names.as_deref(),
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                if !regex_failed {
                    errs.push((at.iter().map(|s| (*s).to_owned()).collect(), e));
                }
                None
            }
        };
    let stash = r.stash.as_ref().and_then(|spec| {
        let key = template(&spec.key, &["stash", "key"], &mut errs);
        let mut kept = Vec::new();
        for (name, tpl) in &spec.fields {
            let Some(field) = FieldName::parse(name).filter(|f| *f != FieldName::Time) else {
                errs.push((
                    vec!["stash".into(), "fields".into(), name.clone()],
                    format!("unknown field {name:?} (time cannot be stashed)"),
                ));
                continue;
            };
            if let Some(t) = template(tpl, &["stash", "fields", name.as_str()], &mut errs) {
                kept.push((field, t));
            }
        }
        if spec.fields.is_empty() {
            errs.push((
                vec!["stash".into(), "fields".into()],
                "needs at least one field to keep".into(),
            ));
        }
        key.map(|k| (k, kept))
    });
    let take = r.take.as_ref().and_then(|spec| {
        let key = template(&spec.key, &["take", "key"], &mut errs);
        let mut into = Vec::new();
        for name in &spec.fields {
            match FieldName::parse(name).filter(|f| *f != FieldName::Time) {
                Some(f) => into.push(f),
                None => errs.push((
                    vec!["take".into(), "fields".into()],
                    format!("unknown field {name:?} (time cannot be taken)"),
                )),
            }
        }
        key.map(|k| (k, into))
    });
    if r.stash.is_some() && r.take.is_some() {
        errs.push((
            vec!["take".into()],
            "a rule either stashes values or takes them, not both".into(),
        ));
    }
    let pairs = match (&r.pairs, capture_names.as_deref()) {
        (None, _) => None,
        (Some(name), Some(_)) if name == "$rest" => Some(PairsFrom::Rest),
        (Some(name), Some(names)) => {
            let idx = names
                .iter()
                .position(|n| n.as_deref() == Some(name.as_str()));
            if idx.is_none() {
                errs.push((
                    vec!["pairs".into()],
                    format!("the regex has no capture named {name:?} (or write \"$rest\": the line after the match)"),
                ));
            }
            idx.map(PairsFrom::Capture)
        }
        (Some(_), None) => {
            if !regex_failed {
                errs.push((
                    vec!["pairs".into()],
                    "reads a regex capture or the line after the match, but the rule has no regex"
                        .into(),
                ));
            }
            None
        }
    };
    if r.pairs.is_none() {
        let uses_pairs = |t: &Template| {
            t.pieces.iter().any(|p| match p {
                Piece::Vars(vs) => vs.iter().any(is_pair),
                Piece::Literal(_) => false,
            })
        };
        for (name, tpl) in &fields {
            if uses_pairs(tpl) {
                errs.push((
                    vec!["fields".into(), name.as_str().to_owned()],
                    "uses {kv.…} but the rule has no `pairs` capture to read them from".into(),
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let needs_captures = fields
        .iter()
        .map(|(_, t)| t)
        .chain(time_template.iter())
        .chain(fold.as_ref().and_then(|f| f.key.as_ref()))
        .chain(
            stash
                .iter()
                .flat_map(|(k, fs)| std::iter::once(k).chain(fs.iter().map(|(_, t)| t))),
        )
        .chain(take.iter().map(|(k, _)| k))
        .any(|t| {
            t.pieces.iter().any(|p| match p {
                Piece::Vars(vs) => vs.iter().any(uses_capture),
                Piece::Literal(_) => false,
            })
        });
    let locs = regex.as_ref().map(|r| RefCell::new(r.capture_locations()));
    Ok(CompiledRule {
        locs,
        regex,
        json_match,
        pattern,
        time: time_template.map(|t| (t, time_format)),
        fields,
        needs_captures,
        pairs,
        fold,
        stash,
        take,
    })
}

fn uses_capture(v: &Var) -> bool {
    match v {
        Var::Capture(_) | Var::Pair(_) => true,
        Var::Filtered(inner, _) => uses_capture(inner),
        _ => false,
    }
}

pub(crate) fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}

fn check_strftime(f: &str) -> Result<(), String> {
    if f.contains("%Z") {
        return Err(format!(
            "time_format {f:?}: zone abbreviations (%Z) cannot be read unambiguously; leave them out of the captured time and set the source's `timezone`"
        ));
    }
    // Format a known instant and read it back: this rejects unknown directives and formats
    // that cannot be parsed into a full date and time.
    let probe = Timestamp::new(1_795_000_000, 123_456_000)
        .map_err(|e| e.to_string())?
        .to_zoned_datetime(TimeZone::UTC);
    let bad = |e: String| {
        format!(
            "invalid time_format {f:?}: {e} (use strftime directives, or auto, rfc3339, epoch, epoch_ms, epoch_us, epoch_ns)"
        )
    };
    let text = jiff::fmt::strtime::format(f, &probe).map_err(|e| bad(e.to_string()))?;
    let bdt = jiff::fmt::strtime::parse(f, &text).map_err(|e| bad(e.to_string()))?;
    if bdt.offset().is_some() {
        bdt.to_timestamp()
            .map(|_| ())
            .map_err(|e| bad(e.to_string()))
    } else {
        bdt.to_datetime()
            .map(|_| ())
            .map_err(|e| bad(e.to_string()))
    }
}

fn parse_json_path(p: &str) -> Result<Vec<String>, String> {
    let body = p
        .strip_prefix("$.")
        .or_else(|| if p == "$" { Some("") } else { None })
        .unwrap_or(p);
    if body.is_empty() {
        return Err(format!("JSON path {p:?} names no field (write e.g. $.a.b)"));
    }
    let segs: Vec<String> = body.split('.').map(str::to_owned).collect();
    if segs.iter().any(String::is_empty) {
        return Err(format!("JSON path {p:?} has an empty segment"));
    }
    Ok(segs)
}

/// Split a template into pieces; `captures` = the regex's capture names (None: no regex).
fn parse_template(t: &str, captures: Option<&[Option<&str>]>) -> Result<Template, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = t.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|x| x.1) == Some('{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek().map(|x| x.1) == Some('}') => {
                chars.next();
                lit.push('}');
            }
            '}' => {
                return Err(format!(
                    "template {t:?}: unmatched `}}` (write `}}}}` for a literal brace)"
                ));
            }
            '{' => {
                let rest = &t[i + 1..];
                let Some(end) = rest.find('}') else {
                    return Err(format!(
                        "template {t:?}: unclosed `{{` (write `{{{{` for a literal brace)"
                    ));
                };
                let inner = &rest[..end];
                let mut vars = Vec::new();
                for alt in inner.split('|') {
                    vars.push(parse_var(alt.trim(), captures, t)?);
                }
                if !lit.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                }
                pieces.push(Piece::Vars(vars));
                // Skip the variable's characters and the closing brace.
                let stop = i + 1 + end;
                while chars.peek().is_some_and(|&(j, _)| j <= stop) {
                    chars.next();
                }
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Literal(lit));
    }
    Ok(Template { pieces })
}

fn parse_var(name: &str, captures: Option<&[Option<&str>]>, t: &str) -> Result<Var, String> {
    if let Some((inner, filter)) = name.rsplit_once(':') {
        let filter = match filter.trim() {
            "unquote" => Filter::Unquote,
            "upper" => Filter::Upper,
            "bearer" => Filter::Bearer,
            "first" => Filter::First,
            other => match other.strip_prefix("jwt.") {
                Some(path) if !path.split('.').any(str::is_empty) => {
                    Filter::JwtClaim(path.split('.').map(str::to_owned).collect())
                }
                _ => {
                    return Err(format!(
                        "template {t:?}: unknown filter {other:?} (allowed: unquote, upper, bearer, first, jwt.<claim>)"
                    ));
                }
            },
        };
        let var = parse_var(inner.trim(), captures, t)?;
        return Ok(Var::Filtered(Box::new(var), filter));
    }
    if name.starts_with('$') {
        return parse_json_path(name)
            .map(Var::Json)
            .map_err(|e| format!("template {t:?}: {e}"));
    }
    if name.is_empty() {
        return Err(format!("template {t:?}: empty `{{}}`"));
    }
    if let Some(key) = name.strip_prefix("kv.") {
        if !is_pair_key(key) {
            return Err(format!(
                "template {t:?}: {{{name}}}: a pair key is a letter or `_` followed by letters, digits, `_`, `.` or `-`"
            ));
        }
        return Ok(Var::Pair(key.to_owned()));
    }
    if let Some(idx) = captures.and_then(|c| c.iter().position(|n| *n == Some(name))) {
        return Ok(Var::Capture(idx));
    }
    match name {
        "host" => return Ok(Var::Host),
        "program" => return Ok(Var::Program),
        "pid" => return Ok(Var::Pid),
        _ => {}
    }
    match captures {
        None => Err(format!(
            "template {t:?}: {{{name}}} names a regex capture but the rule has no regex"
        )),
        Some(c) => {
            let names: Vec<&str> = c.iter().flatten().copied().collect();
            Err(format!(
                "template {t:?}: the regex has no capture named {name:?} (captures: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ))
        }
    }
}

impl CompiledParser {
    /// The parser's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// `None`: no rule matched; `Some(x)`: a rule matched and emits `x` (None = noise).
    /// Stateless: `fold` is applied by [`ParserSet::parse`].
    pub fn parse(&self, decoded: &Decoded, tz: &TimeZone) -> Option<Option<Extracted>> {
        self.match_line(decoded, tz).map(|m| m.extracted)
    }

    /// [`parse`](Self::parse), with the matching rule's `fold` and its rendered key.
    fn match_line(&self, decoded: &Decoded, tz: &TimeZone) -> Option<RuleMatch<'_>> {
        if !self.programs.is_empty() {
            let prog = decoded.program.as_deref()?;
            let base = prog.split_once('(').map_or(prog, |(b, _)| b);
            if !self.programs.iter().any(|p| p == prog || p == base) {
                return None;
            }
        }
        let msg = decoded.message.as_str();
        for rule in &self.rules {
            // A rule whose fields need captures searches once, for the captures; a search
            // for the match alone first would scan every matching line twice.
            let mut locs = rule.locs.as_ref().map(RefCell::borrow_mut);
            let caps = match (&rule.regex, locs.as_deref_mut()) {
                (Some(re), Some(locs)) if rule.needs_captures => {
                    match re.captures_read(locs, msg) {
                        Some(_) => Some(Caps { locs, text: msg }),
                        None => continue,
                    }
                }
                (Some(re), _) if !re.is_match(msg) => continue,
                _ => None,
            };
            if !rule.json_match.is_empty() {
                let Some(obj) = decoded.json.as_ref() else {
                    continue;
                };
                let all = rule.json_match.iter().all(|(path, re)| {
                    json_lookup(obj, path)
                        .and_then(json_text)
                        .is_some_and(|s| re.is_match(&s))
                });
                if !all {
                    continue;
                }
            }
            let pairs = match (rule.pairs, caps.as_ref()) {
                (Some(PairsFrom::Capture(i)), Some(c)) => c.get(i).map(scan_pairs),
                (Some(PairsFrom::Rest), Some(c)) => c
                    .locs
                    .get(0)
                    .and_then(|(_, end)| msg.get(end..))
                    .map(scan_pairs),
                _ => None,
            };
            let ctx = Ctx {
                caps: caps.as_ref(),
                pairs: pairs.as_deref().unwrap_or_default(),
                decoded,
            };
            let carry = match (&rule.stash, &rule.take) {
                (Some((key, fields)), _) => Some(Carry::Stash(
                    key.render(&ctx),
                    fields
                        .iter()
                        .map(|(name, tpl)| (*name, tpl.render(&ctx)))
                        .collect(),
                )),
                (None, Some((key, fields))) => {
                    Some(Carry::Take(key.render(&ctx), fields.as_slice()))
                }
                (None, None) => None,
            };
            let Some(pattern) = rule.pattern else {
                return Some(RuleMatch {
                    extracted: None,
                    fold: None,
                    carry,
                });
            };
            let mut fields = Fields::with_capacity(rule.fields.len());
            for (name, tpl) in &rule.fields {
                fields.set(*name, tpl.render(&ctx));
            }
            // An empty time template (an optional capture, as when a syslog header carries the
            // time) falls back to the header silently; a time that is there but unreadable,
            // or no time at all, is flagged: the event must not pass for correctly timed.
            let written = rule
                .time
                .as_ref()
                .map(|(tpl, fmt)| (tpl.render(&ctx), fmt))
                .filter(|(t, _)| !t.trim().is_empty());
            // A time no FHIR instant can hold (year 0, negative or five digits: `%Y` and epoch
            // numbers read them) counts as unreadable too (found by the fuzz target `parse`:
            // `[25/Nov/-026:…]` made `recorded` "-026-11-25T…", failing conformance).
            let header = decoded.time.filter(Stamp::fits_fhir);
            let (time, time_unreadable) = match written {
                Some((t, fmt)) => match parse_time(&t, fmt, tz).filter(Stamp::fits_fhir) {
                    Some(stamp) => (Some(stamp), false),
                    None => (header, true),
                },
                None => (header, header.is_none()),
            };
            return Some(RuleMatch {
                extracted: Some(Extracted {
                    parser: self.name.clone(),
                    pattern,
                    time,
                    time_unreadable,
                    fields,
                }),
                fold: rule.fold.as_ref().map(|f| {
                    let key = f.key.as_ref().map(|t| t.render(&ctx)).unwrap_or_default();
                    (f, key)
                }),
                carry,
            });
        }
        None
    }
}

/// A successful search's capture positions over the text searched.
struct Caps<'a> {
    locs: &'a CaptureLocations,
    text: &'a str,
}

impl<'a> Caps<'a> {
    fn get(&self, i: usize) -> Option<&'a str> {
        self.locs.get(i).and_then(|(s, e)| self.text.get(s..e))
    }
}

struct Ctx<'a> {
    caps: Option<&'a Caps<'a>>,
    /// The rule's `pairs`, in line order.
    pairs: &'a [(&'a str, &'a str)],
    decoded: &'a Decoded,
}

fn is_pair(v: &Var) -> bool {
    match v {
        Var::Pair(_) => true,
        Var::Filtered(inner, _) => is_pair(inner),
        _ => false,
    }
}

fn is_pair_key(k: &str) -> bool {
    let mut b = k.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Read `key="value"` and `key=value` pairs, each after whitespace, as access logs append
/// them. The scan ends at the first token that is not a pair, as the regex repetition it
/// replaces did, so text after junk is never read as a pair. A quoted value ends at the
/// first `"` not escaped by a backslash and is kept raw (escapes included, quotes removed);
/// a value whose quote never closes is skipped. A key that appears twice keeps its last
/// value (lookups search from the end).
fn scan_pairs(s: &str) -> Vec<(&str, &str)> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(8);
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == start || i == b.len() {
            return out;
        }
        let key_start = i;
        if !(b[i].is_ascii_alphabetic() || b[i] == b'_') {
            return out;
        }
        while i < b.len() && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'-')) {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' {
            return out;
        }
        let key = &s[key_start..i];
        i += 1;
        if i < b.len() && b[i] == b'"' {
            let mut j = i + 1;
            let mut closed = false;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => {
                        closed = true;
                        break;
                    }
                    _ => j += 1,
                }
            }
            if closed {
                out.push((key, &s[i + 1..j]));
                i = j + 1;
                continue;
            }
        }
        let value_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(value_start) != Some(&b'"') {
            out.push((key, &s[value_start..i]));
        }
    }
}

impl Template {
    fn render(&self, ctx: &Ctx<'_>) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Vars(vars) => {
                    if let Some(v) = vars.iter().find_map(|v| {
                        var_value(v, ctx).filter(|s| {
                            let t = s.trim();
                            !t.is_empty() && t != "-"
                        })
                    }) {
                        out.push_str(&v);
                    }
                }
            }
        }
        out
    }
}

fn var_value<'a>(v: &Var, ctx: &Ctx<'a>) -> Option<Cow<'a, str>> {
    match v {
        Var::Capture(i) => ctx.caps.and_then(|c| c.get(*i)).map(Cow::Borrowed),
        Var::Pair(key) => ctx
            .pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| Cow::Borrowed(*v)),
        Var::Json(path) => ctx
            .decoded
            .json
            .as_ref()
            .and_then(|o| json_lookup(o, path))
            .and_then(json_text),
        Var::Host => ctx.decoded.host.as_deref().map(Cow::Borrowed),
        Var::Program => ctx.decoded.program.as_deref().map(Cow::Borrowed),
        Var::Pid => ctx.decoded.pid.as_deref().map(Cow::Borrowed),
        Var::Filtered(inner, filter) => {
            let v = var_value(inner, ctx)?;
            Some(Cow::Owned(match filter {
                Filter::Unquote => unquote(&v),
                Filter::Upper => v.to_uppercase(),
                Filter::First => v.split([',', ' ']).next().unwrap_or_default().to_owned(),
                Filter::Bearer => {
                    let t = bearer_token(&v)?;
                    if jwt_payload(t).is_some() {
                        return None;
                    }
                    t.to_owned()
                }
                Filter::JwtClaim(path) => jwt_claim(&v, path)?,
            }))
        }
    }
}

/// The token of an `Authorization` value: `Bearer <t>` (any case) or a bare token; None for
/// another scheme (`Basic …` holds a password) or an empty value.
fn bearer_token(v: &str) -> Option<&str> {
    let v = v.trim();
    let t = match v.split_once(char::is_whitespace) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => return None,
        None => v,
    };
    (!t.is_empty()).then_some(t)
}

/// The payload object of a signed JWT (`header.payload.signature`, base64url), or None.
fn jwt_payload(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    // A JWS header always starts with `{"` (`eyJ`): cheap rejection of dotted non-JWTs.
    if !header.starts_with("eyJ") {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A claim of the JWT in `v`, as template text: strings as they are, numbers as JSON, a
/// list (`aud`, purpose-of-use codes) comma-joined, a Coding-like object by its `code`.
fn jwt_claim(v: &str, path: &[String]) -> Option<String> {
    let claims = jwt_payload(bearer_token(v)?)?;
    let value = json_lookup(&claims, path)?;
    let text = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Object(o) => o.get("code").and_then(|c| c.as_str()).map(str::to_owned),
        _ => None,
    };
    match value {
        serde_json::Value::Array(items) => {
            let all: Vec<String> = items.iter().filter_map(text).collect();
            (!all.is_empty()).then(|| all.join(","))
        }
        other => text(other),
    }
}

/// `'a\'b''c\n'` → `a'b'c` + newline; `"a""b"` → `a"b`; anything else unchanged.
fn unquote(v: &str) -> String {
    let quote = match v.as_bytes() {
        [q @ (b'\'' | b'"'), .., last] if last == q && v.len() >= 2 => *q as char,
        _ => return v.to_owned(),
    };
    let body = &v[1..v.len() - 1];
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quote == '\'' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('0') => out.push('\0'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            c if c == quote && chars.peek() == Some(&quote) => {
                chars.next();
                out.push(quote);
            }
            c => out.push(c),
        }
    }
    out
}

fn json_lookup<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    path: &[String],
) -> Option<&'a serde_json::Value> {
    let (first, rest) = path.split_first()?;
    let mut cur = obj.get(first)?;
    for seg in rest {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(seg)?,
            serde_json::Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A JSON value as template text: strings as they are, null as absent, the rest as JSON.
fn json_text(v: &serde_json::Value) -> Option<Cow<'_, str>> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(other.to_string())),
    }
}

fn parse_time(s: &str, fmt: &TimeFormat, tz: &TimeZone) -> Option<Stamp> {
    let s = s.trim();
    match fmt {
        TimeFormat::Auto => parse_rfc3339(s, tz).or_else(|| {
            let digits = s.split_once('.').map_or(s, |(i, _)| i);
            let digits = digits.strip_prefix('-').unwrap_or(digits).len();
            let unit = match digits {
                0..AUTO_EPOCH_MIN_DIGITS => return None,
                AUTO_EPOCH_MIN_DIGITS..=11 => 0,
                12..=14 => 3,
                15..=17 => 6,
                _ => 9,
            };
            parse_epoch(s, unit, tz)
        }),
        TimeFormat::Rfc3339 => parse_rfc3339(s, tz),
        TimeFormat::Epoch(unit) => parse_epoch(s, *unit, tz),
        TimeFormat::Strftime(f) => {
            let bdt = jiff::fmt::strtime::parse(f, s).ok()?;
            if let Some(offset) = bdt.offset() {
                let ts = bdt.to_timestamp().ok()?;
                Some(Stamp { ts, offset })
            } else {
                let dt = bdt.to_datetime().ok()?;
                let ts = tz.to_ambiguous_timestamp(dt).earlier().ok()?;
                Some(Stamp::in_zone(ts, tz))
            }
        }
    }
}

/// A decimal epoch time in units of 10^-`unit` s (`1764084333.5`, `1764084333500`): exact
/// integer arithmetic, since a float would round microseconds and nanoseconds away.
fn parse_epoch(s: &str, unit: u32, tz: &TimeZone) -> Option<Stamp> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty()
        || int.len() > 30
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let scale = 9 - unit.min(9);
    let mut nanos: i128 = int.parse::<i128>().ok()? * 10i128.pow(scale);
    for (k, b) in frac.bytes().take(scale as usize).enumerate() {
        nanos += i128::from(b - b'0') * 10i128.pow(scale - 1 - k as u32);
    }
    if neg {
        nanos = -nanos;
    }
    Timestamp::from_nanosecond(nanos)
        .ok()
        .map(|ts| Stamp::in_zone(ts, tz))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parser::ParserFile;

    fn spec(toml_text: &str) -> ParserSpec {
        let f: ParserFile = toml::from_str(toml_text).unwrap();
        f.parsers.into_iter().next().unwrap()
    }

    fn raw(line: &str) -> Decoded {
        crate::decode::raw::decode(line)
    }

    #[test]
    fn template_fills_fields_from_captures_literals_and_alternatives() {
        let p = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "app"
            [[parsers.rules]]
            regex = '^user=(?P<user>\S+) alt=(?P<alt>\S+) read (?P<type>\w+)/(?P<id>\S+)'
            pattern = "read"
            fields = { user = "{user|alt}", resource = "{type}/{id}", description = "{{x}} {alt}" }
            "#,
        ))
        .unwrap();
        let e = p
            .parse(&raw("user=- alt=bob read Patient/1"), &TimeZone::UTC)
            .unwrap()
            .unwrap();
        assert_eq!(e.pattern, Pattern::Read);
        assert_eq!(e.fields.get(FieldName::User), Some("bob"));
        assert_eq!(e.fields.get(FieldName::Resource), Some("Patient/1"));
        assert_eq!(e.fields.get(FieldName::Description), Some("{x} bob"));
    }

    #[test]
    fn filters_unquote_sql_and_csv_and_upper_case() {
        let p = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "f"
            [[parsers.rules]]
            regex = '^(?P<q>.*?)\|(?P<c>.*?)\|(?P<w>\w+)$'
            pattern = "database"
            fields = { statement = "{q:unquote}", description = "{c:unquote}", command = "{w:upper}" }
            "#,
        ))
        .unwrap();
        let e = p
            .parse(
                &raw(r#"'UPDATE p SET f = \'O\'\'Brien, "Jr"\'\nWHERE 1'|"a ""b"", c"|select"#),
                &TimeZone::UTC,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            e.fields.get(FieldName::Statement),
            Some("UPDATE p SET f = 'O''Brien, \"Jr\"'\nWHERE 1")
        );
        assert_eq!(e.fields.get(FieldName::Description), Some("a \"b\", c"));
        assert_eq!(e.fields.get(FieldName::Command), Some("SELECT"));
        assert_eq!(unquote("plain"), "plain");
        assert_eq!(unquote("'"), "'");
        let err = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "f"
            [[parsers.rules]]
            regex = '(?P<a>x)'
            pattern = "read"
            fields = { user = "{a:lower}" }
            "#,
        ))
        .unwrap_err();
        assert!(err[0].contains("unknown filter \"lower\""), "{err:?}");
    }

    #[test]
    fn every_problem_of_a_parser_is_reported() {
        let errs = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "bad"
            [[parsers.rules]]
            regex = '(unclosed'
            pattern = "read"
            [[parsers.rules]]
            regex = '(?P<a>x)'
            pattern = "reed"
            time_format = "%H"
            fields = { user = "{b}", colour = "{a}", time = "{a}" }
            "#,
        ))
        .unwrap_err();
        let all = errs.join("\n");
        assert!(all.contains("rules[0].regex: invalid regex"), "{all}");
        assert!(
            all.contains("rules[1].pattern: unknown pattern \"reed\""),
            "{all}"
        );
        assert!(
            all.contains("rules[1].time_format: invalid time_format"),
            "{all}"
        );
        assert!(
            all.contains("rules[1].fields.user: template \"{b}\": the regex has no capture named \"b\" (captures: a)"),
            "{all}"
        );
        assert!(
            all.contains("rules[1].fields.colour: unknown field"),
            "{all}"
        );
        assert_eq!(errs.len(), 5, "{all}");
    }

    #[test]
    fn time_formats_are_checked_by_round_trip() {
        assert!(check_strftime("%d/%b/%Y:%H:%M:%S %z").is_ok());
        assert!(check_strftime("%Y-%m-%d %H:%M:%S%.f").is_ok());
        assert!(check_strftime("%H:%M:%S").is_err());
        assert!(check_strftime("%Y-%m-%d %H:%M:%S %Z").is_err());
        assert!(check_strftime("%Y %!").is_err());
    }

    #[test]
    fn json_paths_and_json_match() {
        let p = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "j"
            [[parsers.rules]]
            json_match = { "$.class" = "^connection$", "$.data.status" = "^0$" }
            pattern = "login"
            time_format = "epoch_ms"
            fields = { user = "{$.account.user}", client_address = "{$.ips.1}", time = "{$.ts}", outcome = "{$.data.status}" }
            "#,
        ))
        .unwrap();
        let d = crate::decode::json::decode(
            r#"{"class":"connection","ts":1700000000123,"account":{"user":"a"},"ips":["x","1.2.3.4"],"data":{"status":0}}"#,
        );
        let e = p.parse(&d, &TimeZone::UTC).unwrap().unwrap();
        assert_eq!(e.fields.get(FieldName::User), Some("a"));
        assert_eq!(e.fields.get(FieldName::ClientAddress), Some("1.2.3.4"));
        assert_eq!(e.fields.get(FieldName::Outcome), Some("0"));
        assert_eq!(
            e.time.unwrap().to_instant(),
            "2023-11-14T22:13:20.123+00:00"
        );
        let d = crate::decode::json::decode(r#"{"class":"connection","data":{"status":1045}}"#);
        assert_eq!(p.parse(&d, &TimeZone::UTC), None);
    }

    #[test]
    fn time_without_offset_is_read_in_source_zone() {
        let p = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "t"
            [[parsers.rules]]
            regex = '^(?P<t>\d{8} \d\d:\d\d:\d\d),'
            pattern = "read"
            time_format = "%Y%m%d %H:%M:%S"
            fields = { time = "{t}" }
            "#,
        ))
        .unwrap();
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let e = p
            .parse(&raw("20261125 15:21:39,vm,x"), &tz)
            .unwrap()
            .unwrap();
        assert_eq!(e.time.unwrap().to_instant(), "2026-11-25T15:21:39+01:00");
    }

    #[test]
    fn a_time_no_fhir_instant_can_hold_is_unreadable() {
        // Found by the fuzz target `parse` (fuzz/crashes/parse/negative-year): `%Y` reads
        // "-026", and `recorded` became "-026-11-25T15:25:33+00:00".
        let p = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "t"
            [[parsers.rules]]
            regex = '^at \[(?P<t>[^\]]*)\]'
            pattern = "read"
            time_format = "%d/%b/%Y:%H:%M:%S %z"
            fields = { time = "{t}" }
            "#,
        ))
        .unwrap();
        let e = p.parse(&raw("at [25/Nov/2026:15:25:33 +0000]"), &TimeZone::UTC);
        assert!(!e.unwrap().unwrap().time_unreadable);
        for line in [
            "at [25/Nov/-026:15:25:33 +0000]",
            "at [25/Nov/0000:15:25:33 +0000]",
        ] {
            let e = p.parse(&raw(line), &TimeZone::UTC).unwrap().unwrap();
            assert_eq!((e.time, e.time_unreadable), (None, true), "{line}");
        }
        // The same for a header time out of range (an empty capture falls back to it).
        let mut d = raw("at []");
        d.time = Some(Stamp {
            ts: jiff::tz::Offset::UTC
                .to_timestamp(jiff::civil::date(-26, 11, 25).at(15, 25, 33, 0))
                .unwrap(),
            offset: jiff::tz::Offset::UTC,
        });
        let e = p.parse(&d, &TimeZone::UTC).unwrap().unwrap();
        assert_eq!((e.time, e.time_unreadable), (None, true));
    }

    #[test]
    fn unreadable_time_is_flagged_and_falls_back_to_header_time() {
        let p = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "t"
            [[parsers.rules]]
            regex = '^at (?P<t>\S*)'
            pattern = "read"
            fields = { time = "{t}" }
            "#,
        ))
        .unwrap();
        let header = Some(Stamp::now_utc());
        let mut d = raw("at yesterday");
        d.time = header;
        let e = p.parse(&d, &TimeZone::UTC).unwrap().unwrap();
        assert_eq!(e.time, header);
        assert!(e.time_unreadable);
        // Without a header there is no time at all: still flagged, never a silent "now".
        d.time = None;
        let e = p.parse(&d, &TimeZone::UTC).unwrap().unwrap();
        assert_eq!(e.time, None);
        assert!(e.time_unreadable);
        // An empty capture (the time is in the header) is the header's time, unflagged.
        let mut d = raw("at ");
        d.time = header;
        let e = p.parse(&d, &TimeZone::UTC).unwrap().unwrap();
        assert_eq!((e.time, e.time_unreadable), (header, false));
        let e = p.parse(&raw("at 2026-11-25T15:30:01Z"), &TimeZone::UTC);
        assert!(!e.unwrap().unwrap().time_unreadable);
    }

    #[test]
    fn epoch_times_in_every_unit_are_exact() {
        let utc = TimeZone::UTC;
        let at = |s: &str, f: &TimeFormat| parse_time(s, f, &utc).map(|t| t.to_instant());
        let want = Some("2025-11-25T15:25:33.123456789+00:00".to_owned());
        // Go zap (float seconds), pino (ms), µs, ns; all exact to the nanosecond given.
        assert_eq!(at("1764084333.123456789", &TimeFormat::Epoch(0)), want);
        assert_eq!(at("1764084333123.456789", &TimeFormat::Epoch(3)), want);
        assert_eq!(at("1764084333123456.789", &TimeFormat::Epoch(6)), want);
        assert_eq!(at("1764084333123456789", &TimeFormat::Epoch(9)), want);
        // auto: RFC 3339, or the unit from the number's magnitude.
        for s in [
            "1764084333.123456789",
            "1764084333123.456789",
            "1764084333123456.789",
            "1764084333123456789",
            "2025-11-25T15:25:33.123456789Z",
        ] {
            assert_eq!(at(s, &TimeFormat::Auto), want, "{s}");
        }
        assert_eq!(
            at("1764084333", &TimeFormat::Auto).as_deref(),
            Some("2025-11-25T15:25:33+00:00")
        );
        // Python's time.time() as JSON (float seconds, 6-7 fraction digits).
        assert_eq!(
            at("1764084333.5", &TimeFormat::Auto).as_deref(),
            Some("2025-11-25T15:25:33.500+00:00")
        );
        // Short numbers (hours, counters) are not times; garbage is not either.
        for s in [
            "12",
            "12345678",
            "1e9",
            "17640843.3.3",
            "",
            "-",
            "0x1764084333",
        ] {
            assert_eq!(at(s, &TimeFormat::Auto), None, "{s}");
        }
        assert_eq!(at("1764084333", &TimeFormat::Rfc3339), None);
        assert_eq!(at("abc", &TimeFormat::Epoch(3)), None);
    }

    #[test]
    fn json_lines_with_numeric_times_are_read_by_default() {
        let p = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "j"
            [[parsers.rules]]
            json_match = { "$.msg" = "^read$" }
            pattern = "read"
            fields = { time = "{$.time|$.ts}", user = "{$.user}" }
            "#,
        ))
        .unwrap();
        for (line, want) in [
            // pino: epoch milliseconds
            (
                r#"{"level":30,"time":1764084333123,"msg":"read","user":"a"}"#,
                "2025-11-25T15:25:33.123+00:00",
            ),
            // zap production encoder: float seconds in "ts"
            (
                r#"{"level":"info","ts":1764084333.1234567,"msg":"read","user":"a"}"#,
                "2025-11-25T15:25:33.123456700+00:00",
            ),
            // nanoseconds (zap epochNanos)
            (
                r#"{"ts":1764084333123456789,"msg":"read","user":"a"}"#,
                "2025-11-25T15:25:33.123456789+00:00",
            ),
        ] {
            let e = p
                .parse(&crate::decode::json::decode(line), &TimeZone::UTC)
                .unwrap()
                .unwrap();
            assert_eq!(
                e.time.map(|t| t.to_instant()).as_deref(),
                Some(want),
                "{line}"
            );
            assert!(!e.time_unreadable);
        }
        let e = p
            .parse(
                &crate::decode::json::decode(r#"{"msg":"read","user":"a"}"#),
                &TimeZone::UTC,
            )
            .unwrap()
            .unwrap();
        assert!(e.time_unreadable);
    }

    /// A JWT with the given payload (header `{"alg":"RS256"}`, fake signature).
    fn jwt(payload: &str) -> String {
        use base64::Engine as _;
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.c2lnbmF0dXJl",
            b(r#"{"alg":"RS256","typ":"JWT"}"#),
            b(payload)
        )
    }

    #[test]
    fn jwt_claims_are_read_from_a_logged_bearer_token() {
        let p = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "t"
            [[parsers.rules]]
            regex = '^auth="(?P<auth>[^"]*)"'
            pattern = "read"
            fields = { user = "{auth:jwt.sub}", iss = "{auth:jwt.iss}", jti = "{auth:jwt.jti}", client_id = "{auth:jwt.client_id|auth:jwt.azp}", purpose_of_use = "{auth:jwt.extensions.ihe_iua.purpose_of_use}", token = "{auth:bearer}", description = "{auth:jwt.exp}" }
            "#,
        ))
        .unwrap();
        let token = jwt(
            r#"{"sub":"8f1c","iss":"https://idp.example.org","jti":"j-1","azp":"portal","exp":1764084333,"extensions":{"ihe_iua":{"purpose_of_use":[{"system":"urn:oid:2.16.840.1.113883.5.8","code":"TREAT"},{"code":"ETREAT"}]}}}"#,
        );
        let e = p
            .parse(&raw(&format!(r#"auth="Bearer {token}""#)), &TimeZone::UTC)
            .unwrap()
            .unwrap();
        let g = |f| e.fields.get(f);
        assert_eq!(g(FieldName::User), Some("8f1c"));
        assert_eq!(g(FieldName::Issuer), Some("https://idp.example.org"));
        assert_eq!(g(FieldName::Jti), Some("j-1"));
        assert_eq!(g(FieldName::ClientId), Some("portal"));
        assert_eq!(g(FieldName::PurposeOfUse), Some("TREAT,ETREAT"));
        assert_eq!(g(FieldName::Description), Some("1764084333"));
        // The JWT itself goes nowhere.
        assert_eq!(g(FieldName::Token), None);
        assert!(e.fields.iter().all(|(_, v)| !v.contains(&token[..20])));

        // An opaque bearer token is the token; Basic credentials are nothing at all.
        let e = p
            .parse(
                &raw(r#"auth="Bearer 2YotnFZFEjr1zCsicMWpAA""#),
                &TimeZone::UTC,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            e.fields.get(FieldName::Token),
            Some("2YotnFZFEjr1zCsicMWpAA")
        );
        assert_eq!(e.fields.get(FieldName::User), None);
        let e = p
            .parse(&raw(r#"auth="Basic YWxpY2U6c2VjcmV0""#), &TimeZone::UTC)
            .unwrap()
            .unwrap();
        assert_eq!(e.fields.iter().count(), 0);
        // Not a JWT: a dotted string, a bad payload, an encrypted (5-part) token.
        for v in ["a.b.c", "eyJhbGciOiJub25lIn0.!!!.x", "eyJ.eyJ.x.y.z"] {
            let e = p
                .parse(&raw(&format!(r#"auth="{v}""#)), &TimeZone::UTC)
                .unwrap()
                .unwrap();
            assert_eq!(e.fields.get(FieldName::User), None, "{v}");
        }
    }

    #[test]
    fn unknown_filters_are_named() {
        let err = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "t"
            [[parsers.rules]]
            regex = '^(?P<a>x)'
            pattern = "read"
            fields = { user = "{a:jwt.}" }
            "#,
        ))
        .unwrap_err()
        .join("\n");
        assert!(err.contains("unknown filter \"jwt.\""), "{err}");
    }

    #[test]
    fn programs_filter_accepts_module_suffix() {
        let p = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "s"
            programs = ["sshd"]
            [[parsers.rules]]
            regex = 'x'
            pattern = "none"
            "#,
        ))
        .unwrap();
        let mut d = raw("x");
        assert_eq!(p.parse(&d, &TimeZone::UTC), None);
        d.program = Some("sshd(pam_unix)".into());
        assert_eq!(p.parse(&d, &TimeZone::UTC), Some(None));
        d.program = Some("sudo".into());
        assert_eq!(p.parse(&d, &TimeZone::UTC), None);
    }

    #[test]
    fn build_reports_unknown_names_and_user_parsers_shadow_presets() {
        let user = spec(
            r#"
            [[parsers]]
            name = "sshd"
            [[parsers.rules]]
            regex = 'mine'
            pattern = "logout"
            "#,
        );
        let mut set = ParserSet::build(&["sshd".into()], std::slice::from_ref(&user)).unwrap();
        let out = set.parse(&raw("mine"), &TimeZone::UTC);
        assert!(matches!(
            out,
            LineOutcome::Matched {
                extracted: Some(_),
                ..
            }
        ));
        let errs = ParserSet::build(&["nope".into(), "fhir_access".into()], &[]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("unknown parser \"nope\""), "{errs:?}");
    }

    #[test]
    fn pairs_are_read_until_the_first_token_that_is_not_one() {
        assert_eq!(
            scan_pairs(r#" a="1" b=2  c="x \"y\" z" d= e="""#),
            [
                ("a", "1"),
                ("b", "2"),
                ("c", r#"x \"y\" z"#),
                ("d", ""),
                ("e", "")
            ]
        );
        // Junk ends the scan: nothing after it is read as a pair.
        assert_eq!(scan_pairs(r#" a=1 junk user="x""#), [("a", "1")]);
        assert_eq!(scan_pairs(r#" a=1 ="x" user="x""#), [("a", "1")]);
        assert_eq!(scan_pairs(r#" a="1"b=2"#), [("a", "1")]);
        // A pair must follow whitespace; an unclosed quote is skipped as one token.
        assert_eq!(scan_pairs(r#"a=1"#), []);
        assert_eq!(scan_pairs(r#" a="open b=2 c=3"#), [("b", "2"), ("c", "3")]);
        assert_eq!(scan_pairs(" a=\"tail\\"), []);
        assert_eq!(scan_pairs(" k.x-y_1=v ä=1"), [("k.x-y_1", "v")]);
        assert_eq!(scan_pairs(""), []);
    }

    #[test]
    fn pair_values_reach_templates_last_one_winning() {
        let p = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "kv"
            [[parsers.rules]]
            regex = '^GET (?P<path>\S+)(?P<tail>.*)'
            pairs = "tail"
            pattern = "read"
            fields = { user = "{kv.user|kv.uid}", resource = "{path}", client_address = "{kv.xff:first}", request_id = "{kv.rid}" }
            "#,
        ))
        .unwrap();
        let get = |line: &str| {
            p.parse(&raw(line), &TimeZone::UTC)
                .flatten()
                .map(|e| {
                    [
                        FieldName::User,
                        FieldName::ClientAddress,
                        FieldName::RequestId,
                    ]
                    .map(|f| e.fields.get(f).unwrap_or("").to_owned())
                })
                .unwrap()
        };
        assert_eq!(
            get(r#"GET /a user="x" xff="203.0.113.7, 10.0.0.1" rid=r1 user="y""#),
            ["y", "203.0.113.7", "r1"]
        );
        assert_eq!(get("GET /a uid=7"), ["7", "", ""]);
        assert_eq!(get("GET /a"), ["", "", ""]);
    }

    #[test]
    fn pairs_after_the_match_are_read_from_where_the_regex_stopped() {
        let p = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "kv"
            [[parsers.rules]]
            regex = '^GET (?P<path>\S+)(?: "[^"]*")?'
            pairs = "$rest"
            pattern = "read"
            fields = { user = "{kv.user}", resource = "{path}" }
            "#,
        ))
        .unwrap();
        let user = |line: &str| {
            p.parse(&raw(line), &TimeZone::UTC)
                .flatten()
                .and_then(|e| e.fields.get(FieldName::User).map(str::to_owned))
        };
        assert_eq!(
            user(r#"GET /a "ua user=planted" user="x""#).as_deref(),
            Some("x")
        );
        assert_eq!(user(r#"GET /a user=y"#).as_deref(), Some("y"));
        assert_eq!(user(r#"GET /a"#), None);
    }

    #[test]
    fn pairs_mistakes_are_named() {
        let errs = |rule: &str| {
            compile_parser(&spec(&format!(
                "[[parsers]]\nname = \"p\"\n[[parsers.rules]]\npattern = \"read\"\n{rule}\n"
            )))
            .unwrap_err()
            .join("\n")
        };
        assert!(
            errs("regex = '(?P<a>.*)'\npairs = \"b\"")
                .contains("rules[0].pairs: the regex has no capture named \"b\""),
            "{}",
            errs("regex = '(?P<a>.*)'\npairs = \"b\"")
        );
        assert!(
            errs("regex = '(?P<a>.*)'\nfields = { user = \"{kv.user}\" }")
                .contains("rules[0].fields.user: uses {kv.…} but the rule has no `pairs` capture"),
        );
        assert!(
            errs("regex = '(?P<a>.*)'\npairs = \"a\"\nfields = { user = \"{kv.9x}\" }")
                .contains("a pair key is a letter"),
        );
    }

    #[test]
    fn repeated_group_keeps_captures_of_earlier_iterations() {
        // The fhir_access preset relies on this for order-independent key="value" suffixes.
        let re = Regex::new(r#"(?:\s+(?:a="(?P<a>[^"]*)"|b="(?P<b>[^"]*)"|\w+=\S*))*"#).unwrap();
        let c = re.captures(r#" a="1" b="2" c=3"#).unwrap();
        assert_eq!(c.name("a").map(|m| m.as_str()), Some("1"));
        assert_eq!(c.name("b").map(|m| m.as_str()), Some("2"));
    }

    /// A set of one user parser whose lines are `<time> fail <user> <host>` or `<time> ok
    /// <user>`, with `time` in epoch milliseconds so gaps are easy to read.
    fn fold_set(fold: &str) -> ParserSet {
        let user = spec(&format!(
            r#"
            [[parsers]]
            name = "db"
            [[parsers.rules]]
            regex = '^(?P<t>\d+) fail (?P<u>\S+) (?P<h>\S+)$'
            pattern = "login"
            time_format = "epoch_ms"
            fields = {{ time = "{{t}}", outcome = "4", user = "{{u}}", client_address = "{{h}}" }}
            {fold}
            [[parsers.rules]]
            regex = '^(?P<t>\d+) refused (?P<u>\S+) (?P<h>\S+)$'
            pattern = "login"
            time_format = "epoch_ms"
            fields = {{ time = "{{t}}", outcome = "4", user = "{{u}}", client_address = "{{h}}" }}
            {fold}
            [[parsers.rules]]
            regex = '^(?P<t>\d+) ok (?P<u>\S+)$'
            pattern = "login"
            time_format = "epoch_ms"
            fields = {{ time = "{{t}}", outcome = "0", user = "{{u}}" }}
            "#
        ));
        ParserSet::build(&["db".into()], &[user]).unwrap()
    }

    /// `E` for an event, `f` for a folded line, per line.
    fn fold_trace(set: &mut ParserSet, lines: &[&str]) -> String {
        lines
            .iter()
            .map(|l| match set.parse(&raw(l), &TimeZone::UTC) {
                LineOutcome::Matched {
                    extracted: Some(_), ..
                } => 'E',
                LineOutcome::Folded { .. } => 'f',
                other => panic!("{l}: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn fold_takes_one_retry_per_event_within_the_window() {
        let rep = r#"fold = { fields = ["user", "client_address", "outcome"], within_ms = 1000 }"#;
        let mut set = fold_set(rep);
        // A pair 30 ms apart is one attempt; the third try 200 ms later is a new attempt
        // (each event absorbs at most one line), whose own retry folds again.
        assert_eq!(
            fold_trace(
                &mut set,
                &[
                    "1000 fail alice 10.0.0.1",
                    "1030 fail alice 10.0.0.1",
                    "1230 fail alice 10.0.0.1",
                    "1240 fail alice 10.0.0.1",
                ]
            ),
            "EfEf"
        );
        // Outside the window, another user, another host: all events.
        assert_eq!(
            fold_trace(
                &mut set,
                &[
                    "5000 fail alice 10.0.0.1",
                    "6001 fail alice 10.0.0.1",
                    "6002 fail bob 10.0.0.1",
                    "6003 fail alice 10.0.0.2",
                ]
            ),
            "EEEE"
        );
        // Two clients interleaved: each retry folds into its own first try; a success
        // (no `fold` on its rule) never folds and leaves the failures' state alone.
        assert_eq!(
            fold_trace(
                &mut set,
                &[
                    "9000 fail carol 10.0.0.3",
                    "9001 fail dave 10.0.0.4",
                    "9002 ok carol",
                    "9003 ok carol",
                    "9010 fail carol 10.0.0.3",
                    "9011 fail dave 10.0.0.4",
                ]
            ),
            "EEEEff"
        );
        // A retry matched by another rule of the parser (SSL refused, then password wrong)
        // folds as well: the state is the parser's.
        assert_eq!(
            fold_trace(
                &mut set,
                &["20000 refused erin 10.0.0.5", "20010 fail erin 10.0.0.5"]
            ),
            "Ef"
        );
    }

    #[test]
    fn fold_max_and_lines_without_time_are_respected() {
        let rep = r#"fold = { fields = ["user"], within_ms = 500, max = 2 }"#;
        let mut set = fold_set(rep);
        assert_eq!(
            fold_trace(
                &mut set,
                &[
                    "1000 fail a h",
                    "1100 fail a h",
                    "1200 fail a h",
                    "1300 fail a h",
                ]
            ),
            "EffE"
        );
        // Many distinct keys do not grow the state without bound: expired anchors go.
        for i in 0..5000u64 {
            let line = format!("{} fail u{i} h", 100_000 + i * 1000);
            assert_eq!(fold_trace(&mut set, &[&line]), "E");
        }
        assert!(set.folds.anchors.len() <= FoldState::SWEEP_AT);
        // Many anchors alive at once (a wide window): sweeps keep every one of them, so
        // each line's retry still folds.
        let rep = r#"fold = { fields = ["user"], within_ms = 600000 }"#;
        let mut set = fold_set(rep);
        let firsts: Vec<String> = (0..3000u64)
            .map(|i| format!("{} fail v{i} h", 1_000_000 + i))
            .collect();
        let retries: Vec<String> = (0..3000u64)
            .map(|i| format!("{} fail v{i} h", 1_010_000 + i))
            .collect();
        let lines: Vec<&str> = firsts.iter().map(String::as_str).collect();
        assert_eq!(fold_trace(&mut set, &lines), "E".repeat(3000));
        let lines: Vec<&str> = retries.iter().map(String::as_str).collect();
        assert_eq!(fold_trace(&mut set, &lines), "f".repeat(3000));
        // A line without a time of its own (the header time is unknown) is never folded.
        let mut user = spec(
            r#"
            [[parsers]]
            name = "p"
            [[parsers.rules]]
            regex = '^fail (?P<u>\S+)$'
            pattern = "login"
            fields = { outcome = "4", user = "{u}" }
            fold = { fields = ["user"], within_ms = 1000 }
            "#,
        );
        user.name = "p".into();
        let mut set = ParserSet::build(&["p".into()], &[user]).unwrap();
        assert_eq!(fold_trace(&mut set, &["fail a", "fail a"]), "EE");
    }

    #[test]
    fn fold_spec_problems_are_reported_by_key() {
        let errs = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "p"
            [[parsers.rules]]
            regex = 'x'
            pattern = "none"
            fold = { fields = ["user", "colour"], key = "{nope}", within_ms = 0, max = 0 }
            [[parsers.rules]]
            regex = 'y'
            pattern = "login"
            fold = { within_ms = 10 }
            "#,
        ))
        .unwrap_err();
        let want = [
            "parser \"p\": rules[0].fold.fields: unknown field \"colour\"",
            "parser \"p\": rules[0].fold.key: template \"{nope}\": the regex has no capture named \"nope\" (captures: none)",
            "parser \"p\": rules[0].fold.within_ms: 0 is out of range (1 to 600000)",
            "parser \"p\": rules[0].fold.max: must be at least 1",
            "parser \"p\": rules[0].fold: a rule with pattern \"none\" emits nothing to fold into",
            "parser \"p\": rules[1].fold: needs `fields` or `key`: what makes two lines the same",
        ];
        assert_eq!(errs, want);
    }

    #[test]
    fn fold_group_and_key_join_rules_of_different_patterns() {
        // MariaDB's shape: a failed connect (login) is followed by a DISCONNECT (logout) of
        // the same connection id, which is not an event field: `key` takes the capture, and
        // a shared `group` lets a logout fold into a login.
        let user = spec(
            r#"
            [[parsers]]
            name = "m"
            [[parsers.rules]]
            regex = '^(?P<t>\d+),(?P<u>\w+),(?P<c>\d+),FAILED_CONNECT$'
            pattern = "login"
            time_format = "epoch_ms"
            fields = { time = "{t}", outcome = "4", user = "{u}" }
            fold = { group = "conn", fields = ["user"], key = "{c}", within_ms = 2000 }
            [[parsers.rules]]
            regex = '^(?P<t>\d+),(?P<u>\w+),(?P<c>\d+),DISCONNECT$'
            pattern = "logout"
            time_format = "epoch_ms"
            fields = { time = "{t}", user = "{u}" }
            fold = { group = "conn", fields = ["user"], key = "{c}", within_ms = 2000 }
            [[parsers.rules]]
            regex = '^(?P<t>\d+),(?P<u>\w+),(?P<c>\d+),CONNECT$'
            pattern = "login"
            time_format = "epoch_ms"
            fields = { time = "{t}", outcome = "0", user = "{u}" }
            "#,
        );
        let mut set = ParserSet::build(&["m".into()], &[user]).unwrap();
        assert_eq!(
            fold_trace(
                &mut set,
                &[
                    "1000,a,5,FAILED_CONNECT",
                    "1000,a,5,DISCONNECT",
                    "1000,a,6,CONNECT",
                    "1500,a,6,DISCONNECT",
                    "1600,a,7,FAILED_CONNECT",
                    "1600,a,8,CONNECT",
                    "1700,a,8,DISCONNECT",
                    "1700,a,7,DISCONNECT",
                ]
            ),
            // conn 6 and 8 are real sessions: their logouts stay; 5 and 7 fold.
            "EfEEEEEf"
        );
    }

    fn stash_set() -> ParserSet {
        let user = spec(
            r#"
            [[parsers]]
            name = "db"
            [[parsers.rules]]
            regex = '^(?P<c>\d+) touch (?P<t>\S+) (?P<who>\S+)$'
            pattern = "none"
            stash = { key = "{c}", fields = { resource = "{t}", client_id = "{who}" } }
            [[parsers.rules]]
            regex = '^(?P<c>\d+) stmt(?: on (?P<t>\S+))?$'
            pattern = "database"
            fields = { command = "SELECT", resource = "{t}" }
            take = { key = "{c}", fields = ["resource"] }
            [[parsers.rules]]
            regex = '^(?P<c>\d+) ping$'
            pattern = "none"
            take = { key = "{c}" }
            "#,
        );
        ParserSet::build(&["db".into()], &[user]).unwrap()
    }

    fn resource_of(set: &mut ParserSet, line: &str) -> Option<String> {
        match set.parse(&raw(line), &TimeZone::UTC) {
            LineOutcome::Matched {
                extracted: Some(e), ..
            } => {
                assert_eq!(
                    e.fields.get(FieldName::ClientId),
                    None,
                    "only listed fields"
                );
                e.fields.get(FieldName::Resource).map(str::to_owned)
            }
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn stashed_values_reach_the_line_that_takes_them_once() {
        let mut set = stash_set();
        for l in ["1 touch a x", "2 touch z y", "1 touch b x", "1 touch a x"] {
            assert!(matches!(
                set.parse(&raw(l), &TimeZone::UTC),
                LineOutcome::Matched {
                    extracted: None,
                    ..
                }
            ));
        }
        // Distinct values in order, under their own key only; taken once.
        assert_eq!(resource_of(&mut set, "1 stmt").as_deref(), Some("a, b"));
        assert_eq!(resource_of(&mut set, "1 stmt"), None);
        // A value the line sets itself is kept.
        assert_eq!(
            resource_of(&mut set, "2 stmt on own").as_deref(),
            Some("own")
        );
        assert_eq!(resource_of(&mut set, "2 stmt"), None);
        // A `take` without fields only discards.
        set.parse(&raw("3 touch c x"), &TimeZone::UTC);
        set.parse(&raw("3 ping"), &TimeZone::UTC);
        assert_eq!(resource_of(&mut set, "3 stmt"), None);
    }

    #[test]
    fn stash_is_bounded_oldest_keys_first() {
        let mut set = stash_set();
        let n = StashState::MAX_KEYS + 10;
        for c in 0..n {
            set.parse(&raw(&format!("{c} touch t{c} x")), &TimeZone::UTC);
        }
        assert_eq!(set.stash.entries.len(), StashState::MAX_KEYS);
        assert_eq!(resource_of(&mut set, "0 stmt"), None);
        assert_eq!(
            resource_of(&mut set, &format!("{} stmt", n - 1)),
            Some(format!("t{}", n - 1))
        );
        // Keys taken as fast as they come keep the order queue bounded too.
        for c in 0..(10 * StashState::MAX_KEYS) {
            set.parse(&raw(&format!("{c} touch t x")), &TimeZone::UTC);
            set.parse(&raw(&format!("{c} ping")), &TimeZone::UTC);
        }
        assert!(set.stash.order.len() <= 2 * StashState::MAX_KEYS + 1);
        for c in 0..100 {
            set.parse(&raw(&format!("{c} touch t x y")), &TimeZone::UTC);
            set.parse(&raw(&format!("{c} touch t{c} x")), &TimeZone::UTC);
        }
        assert!(
            set.stash
                .entries
                .values()
                .all(|e| e.iter().all(|(_, v)| v.len() <= StashState::MAX_VALUES))
        );
    }

    #[test]
    fn stash_and_take_mistakes_are_named() {
        let err = compile_parser(&spec(
            r#"
            [[parsers]]
            name = "t"
            [[parsers.rules]]
            regex = '^(?P<a>x)'
            pattern = "none"
            stash = { key = "{nope}", fields = { colour = "{a}", time = "{a}" } }
            take = { key = "{a}", fields = ["size"] }
            [[parsers.rules]]
            regex = '^y'
            pattern = "none"
            stash = { key = "k", fields = {} }
            "#,
        ))
        .unwrap_err()
        .join("\n");
        for want in [
            "stash.key",
            "nope",
            "stash.fields.colour",
            "stash.fields.time",
            "take.fields",
            "\"size\"",
            "either stashes values or takes them",
            "needs at least one field",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}

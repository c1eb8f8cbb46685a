//! `balp-agent check`: a config file's text in, every problem out at once, each as
//! `PATH:LINE:COL: key.path: message` (line and column 1-based, the column counted in
//! characters; array indices in key paths are 0-based, e.g. `sources[1].read_from`).
//!
//! Order of work: TOML syntax (if the text does not parse, only syntax problems are reported,
//! as `syntax`); then the spanned tree is walked against a static schema (unknown keys, wrong
//! types, bad durations/sizes/enum values, missing required keys); then cross-checks (duplicate
//! names, parser references, regexes and templates via the parser engine, time zones, URLs,
//! globs, and whether the files and directories the agent will use are usable). Only a file
//! without problems is turned into a [`Config`] by [`load`].
//!
//! Writability of `agent.state_dir` and `output.path` is probed by creating and removing a
//! small file in the directory (or in its nearest existing ancestor when it does not exist
//! yet, since the agent creates it).

use crate::config::parser::ParserSpec;
use crate::config::units::{parse_duration, parse_size};
use crate::config::{Config, ConfigError, DecodeKind};
use crate::parse::engine::{
    PATTERN_NAMES, SpecProblem, compile_parser_located, quote_key, unknown_parser_message,
};
use crate::parse::presets;
use serde::Deserialize;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Read, validate and deserialize a config file; relative paths are then taken relative to
/// the file's directory. Any problem makes this fail with all of them listed.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let mut config = load_as_written(path)?;
    if let Some(dir) = path.parent() {
        config.resolve_relative(dir);
    }
    Ok(config)
}

fn load_as_written(path: &Path) -> Result<Config, ConfigError> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        problems: vec![format!("{label}:1:1: (file): cannot read: {e}")],
    })?;
    let problems = check_text(&label, &text);
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    toml::from_str(&text).map_err(|e| ConfigError {
        problems: vec![format!("{label}:1:1: (config): {}", one_line(e.message()))],
    })
}

/// Every problem of a config text, formatted `PATH:LINE:COL: key.path: message`, in file
/// order. Empty = valid.
pub fn check_text(path_label: &str, text: &str) -> Vec<String> {
    let mut c = Checker {
        problems: Vec::new(),
        base: Path::new(path_label)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    match DeTable::parse(text) {
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            c.problems
                .push((at, "syntax".into(), one_line(e.message())));
        }
        Ok(root) => {
            c.walk_table(root.get_ref(), ROOT, "", root.span());
            c.cross_check(root.get_ref(), text);
        }
    }
    c.problems.sort_by_key(|p| p.0);
    let lines = LineIndex::new(text);
    c.problems
        .into_iter()
        .map(|(at, key, msg)| {
            let (line, col) = lines.position(text, at);
            format!("{path_label}:{line}:{col}: {key}: {msg}")
        })
        .collect()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn position(&self, text: &str, at: usize) -> (usize, usize) {
        let at = at.min(text.len());
        let line = self.starts.partition_point(|&s| s <= at).max(1);
        let start = self.starts[line - 1];
        let col = text
            .get(start..at)
            .map_or(at - start, |s| s.chars().count())
            + 1;
        (line, col)
    }
}

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    PositiveInt,
    Duration,
    Size,
    /// A size within [min, max] bytes.
    SizeIn(u64, u64),
    /// A number in (0, 1].
    Fraction,
    Enum(&'static [&'static str]),
    StrList,
    StrOrList,
    StrMap,
    Table(&'static [Field]),
    TableArray(&'static [Field]),
}

struct Field {
    name: &'static str,
    ty: Ty,
    required: bool,
}

const fn opt(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: false,
    }
}

const fn req(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: true,
    }
}

const SOURCE_TYPES: &[&str] = &["file", "syslog", "journald", "nats"];
const DECODERS: &[&str] = DecodeKind::NAMES;
const MULTILINE: &[&str] = &["none", "indented", "csv"];

const ROOT: &[Field] = &[
    opt("agent", Ty::Table(AGENT)),
    opt("sources", Ty::TableArray(SOURCE)),
    opt("parsers", Ty::TableArray(PARSER)),
    opt("output", Ty::Table(OUTPUT)),
    opt("spool", Ty::Table(SPOOL)),
    opt("metrics", Ty::Table(METRICS)),
    opt("tamper", Ty::Table(TAMPER)),
    opt("alerts", Ty::TableArray(ALERT)),
];
const TAMPER: &[Field] = &[opt("enabled", Ty::Bool), opt("seal_interval", Ty::Duration)];
const AGENT: &[Field] = &[
    opt("state_dir", Ty::Str),
    opt("hostname", Ty::Str),
    opt("mode", Ty::Enum(&["minimal", "comprehensive"])),
    opt("observer", Ty::Table(OBSERVER)),
    opt("event_id_extension", Ty::Str),
];
const OBSERVER: &[Field] = &[
    opt("display", Ty::Str),
    opt("site", Ty::Str),
    opt("type", Ty::Str),
];
const SOURCE: &[Field] = &[
    req("name", Ty::Str),
    req("type", Ty::Enum(SOURCE_TYPES)),
    opt("include", Ty::StrList),
    opt("exclude", Ty::StrList),
    opt("read_from", Ty::Enum(&["beginning", "end"])),
    opt("decode", Ty::Enum(DECODERS)),
    opt("parsers", Ty::StrList),
    opt("multiline", Ty::Enum(MULTILINE)),
    opt("log_line_prefix", Ty::Str),
    opt("max_line_bytes", Ty::Size),
    opt("timezone", Ty::Str),
    opt("fhir_base", Ty::StrOrList),
    opt("trust_forwarded_for", Ty::Bool),
    opt("poll_interval", Ty::Duration),
    opt("listen", Ty::Str),
    opt("match", Ty::StrList),
    opt("namespace", Ty::Str),
    opt("tls", Ty::Table(LISTEN_TLS)),
    opt("max_connections", Ty::PositiveInt),
    opt("max_frame_bytes", Ty::Size),
    opt("nats", Ty::Table(NATS)),
];
/// `[output.nats]` and `[sources.nats]` (one schema; `check_nats` says which side uses what).
const NATS: &[Field] = &[
    req("servers", Ty::StrList),
    opt("subject", Ty::Str),
    opt("stream", Ty::Str),
    opt("consumer", Ty::Str),
    opt("subject_filter", Ty::Str),
    opt("ack_wait", Ty::Duration),
    opt("max_ack_pending", Ty::PositiveInt),
    opt("batch", Ty::PositiveInt),
    opt("token_file", Ty::Str),
    opt("nkey_seed_file", Ty::Str),
    opt("credentials_file", Ty::Str),
    opt("username", Ty::Str),
    opt("password_file", Ty::Str),
    opt("tls", Ty::Table(TLS)),
];
const LISTEN_TLS: &[Field] = &[
    req("cert_file", Ty::Str),
    req("key_file", Ty::Str),
    opt("client_ca_file", Ty::Str),
];
const PARSER: &[Field] = &[
    req("name", Ty::Str),
    opt("description", Ty::Str),
    opt("programs", Ty::StrList),
    opt("decode", Ty::Enum(DECODERS)),
    opt("multiline", Ty::Enum(MULTILINE)),
    opt("rules", Ty::TableArray(RULE)),
    opt("samples", Ty::TableArray(SAMPLE)),
];
const RULE: &[Field] = &[
    opt("name", Ty::Str),
    opt("regex", Ty::Str),
    opt("json_match", Ty::StrMap),
    req("pattern", Ty::Enum(PATTERN_NAMES)),
    opt("time_format", Ty::Str),
    opt("fields", Ty::StrMap),
    opt("fold", Ty::Table(FOLD)),
    opt("stash", Ty::Table(STASH)),
    opt("take", Ty::Table(TAKE)),
];
const STASH: &[Field] = &[req("key", Ty::Str), req("fields", Ty::StrMap)];
const TAKE: &[Field] = &[req("key", Ty::Str), opt("fields", Ty::StrList)];
const FOLD: &[Field] = &[
    opt("fields", Ty::StrList),
    opt("key", Ty::Str),
    opt("group", Ty::Str),
    req("within_ms", Ty::PositiveInt),
    opt("max", Ty::PositiveInt),
];
const SAMPLE: &[Field] = &[req("line", Ty::Str), req("yields", Ty::Str)];
const OUTPUT: &[Field] = &[
    opt("type", Ty::Enum(&["http", "directory", "stdout", "nats"])),
    opt("url", Ty::Str),
    opt("fhir_base", Ty::Str),
    opt("path", Ty::Str),
    opt(
        "bundle_type",
        Ty::Enum(&["collection", "batch", "transaction"]),
    ),
    opt("max_events", Ty::PositiveInt),
    opt("max_in_flight", Ty::PositiveInt),
    opt("max_bytes", Ty::Size),
    opt("flush_interval", Ty::Duration),
    opt("compression", Ty::Enum(&["gzip", "none"])),
    opt("timeout", Ty::Duration),
    opt("headers", Ty::StrMap),
    opt("retry", Ty::Table(RETRY)),
    opt("auth", Ty::Table(AUTH)),
    opt("tls", Ty::Table(TLS)),
    opt("nats", Ty::Table(NATS)),
];
const RETRY: &[Field] = &[
    opt("initial_backoff", Ty::Duration),
    opt("max_backoff", Ty::Duration),
];
const AUTH: &[Field] = &[
    opt("type", Ty::Enum(&["none", "bearer", "basic", "oauth2"])),
    opt("token_file", Ty::Str),
    opt("username", Ty::Str),
    opt("password_file", Ty::Str),
    opt("token_url", Ty::Str),
    opt("client_id", Ty::Str),
    opt("client_secret_file", Ty::Str),
    opt("scope", Ty::Str),
];
const TLS: &[Field] = &[
    opt("ca_file", Ty::Str),
    opt("client_cert_file", Ty::Str),
    opt("client_key_file", Ty::Str),
    opt("insecure_skip_verify", Ty::Bool),
];
const SPOOL: &[Field] = &[
    opt("max_bytes", Ty::Size),
    opt("when_full", Ty::Enum(&["block"])),
    opt("min_free", Ty::Size),
    opt("segment_size", Ty::SizeIn(1 << 20, 1 << 30)),
];
const METRICS: &[Field] = &[
    req("listen", Ty::Str),
    opt("spool_threshold", Ty::Fraction),
    opt("delivery_failure_threshold", Ty::Duration),
];

const ALERT: &[Field] = &[
    req("rule", Ty::Enum(crate::config::AlertRuleKind::NAMES)),
    opt("name", Ty::Str),
    opt("enabled", Ty::Bool),
    opt("threshold", Ty::PositiveInt),
    opt("window", Ty::Duration),
    opt("cooldown", Ty::Duration),
    opt("by", Ty::StrOrList),
    opt("patients", Ty::StrList),
    opt("users", Ty::StrList),
    opt("ignore_users", Ty::StrList),
    opt("days", Ty::StrList),
    opt("hours", Ty::Str),
    opt("timezone", Ty::Str),
    opt("sources", Ty::StrOrList),
    opt("silent_after", Ty::Duration),
    opt("max_keys", Ty::PositiveInt),
];

type Table<'i> = DeTable<'i>;
type Value<'i> = Spanned<DeValue<'i>>;

struct Checker {
    /// (byte offset, key path, message)
    problems: Vec<(usize, String, String)>,
    /// Directory of the config file: relative paths in it are relative to this.
    base: std::path::PathBuf,
}

fn join(path: &str, key: &str) -> String {
    let k = quote_key(key);
    if path.is_empty() {
        k
    } else {
        format!("{path}.{k}")
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The value of `key` in `t`, if present.
fn get<'a, 'i>(t: &'a Table<'i>, key: &str) -> Option<&'a Value<'i>> {
    t.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v)
}

fn get_str<'a>(t: &'a Table<'_>, key: &str) -> Option<(&'a str, Range<usize>)> {
    get(t, key).and_then(|v| v.get_ref().as_str().map(|s| (s, v.span())))
}

fn get_table<'a, 'i>(t: &'a Table<'i>, key: &str) -> Option<(&'a Table<'i>, Range<usize>)> {
    get(t, key).and_then(|v| v.get_ref().as_table().map(|s| (s, v.span())))
}

fn tables<'a, 'i>(t: &'a Table<'i>, key: &str) -> Vec<(&'a Table<'i>, Range<usize>)> {
    get(t, key)
        .and_then(|v| v.get_ref().as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.get_ref().as_table().map(|t| (t, v.span())))
                .collect()
        })
        .unwrap_or_default()
}

fn str_list<'a>(t: &'a Table<'_>, key: &str) -> Vec<(&'a str, Range<usize>)> {
    match get(t, key) {
        Some(v) => match v.get_ref() {
            DeValue::Array(a) => a
                .iter()
                .filter_map(|x| x.get_ref().as_str().map(|s| (s, x.span())))
                .collect(),
            DeValue::String(s) => vec![(s.as_ref(), v.span())],
            _ => Vec::new(),
        },
        None => Vec::new(),
    }
}

impl Checker {
    fn report(&mut self, at: &Range<usize>, path: impl Into<String>, msg: impl Into<String>) {
        self.problems.push((at.start, path.into(), msg.into()));
    }

    fn walk_table(&mut self, t: &Table<'_>, schema: &[Field], path: &str, span: Range<usize>) {
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            let kpath = join(path, key);
            match schema.iter().find(|f| f.name == key) {
                Some(f) => self.check_value(v, f.ty, &kpath),
                None => {
                    let allowed: Vec<&str> = schema.iter().map(|f| f.name).collect();
                    self.report(
                        &k.span(),
                        kpath,
                        format!("unknown key {key:?} (allowed: {})", allowed.join(", ")),
                    );
                }
            }
        }
        for f in schema.iter().filter(|f| f.required) {
            if get(t, f.name).is_none() {
                let shown = if path.is_empty() { "(top level)" } else { path };
                self.report(&span, shown, format!("missing required key `{}`", f.name));
            }
        }
    }

    fn check_value(&mut self, v: &Value<'_>, ty: Ty, path: &str) {
        let span = v.span();
        let val = v.get_ref();
        let expected = |what: &str| format!("expected {what}, found {}", type_name(val));
        match ty {
            Ty::Str => {
                if !val.is_str() {
                    self.report(&span, path, expected("a string"));
                }
            }
            Ty::Bool => {
                if !val.is_bool() {
                    self.report(&span, path, expected("true or false"));
                }
            }
            Ty::PositiveInt => match val.as_integer() {
                Some(i) => {
                    let n = i64::from_str_radix(i.as_str(), i.radix()).unwrap_or(0);
                    if n < 1 {
                        self.report(&span, path, "must be at least 1");
                    }
                }
                None => self.report(&span, path, expected("an integer")),
            },
            Ty::Duration => match val.as_str() {
                Some(s) => {
                    if let Err(e) = parse_duration(s) {
                        self.report(&span, path, e);
                    }
                }
                None => self.report(&span, path, expected("a duration string like \"5s\"")),
            },
            Ty::Size => match val {
                DeValue::String(s) => {
                    if let Err(e) = parse_size(s) {
                        self.report(&span, path, e);
                    }
                }
                DeValue::Integer(i) => {
                    if u64::from_str_radix(i.as_str(), i.radix()).is_err() {
                        self.report(&span, path, "a size must not be negative");
                    }
                }
                _ => self.report(&span, path, expected("a size like \"64KiB\"")),
            },
            Ty::SizeIn(min, max) => {
                let n = match val {
                    DeValue::String(s) => parse_size(s),
                    DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
                        .map_err(|_| "a size must not be negative".to_owned()),
                    _ => Err(expected("a size like \"64MiB\"")),
                };
                match n {
                    Ok(n) if (min..=max).contains(&n) => {}
                    Ok(_) => self.report(
                        &span,
                        path,
                        format!("must be between {} MiB and {} MiB", min >> 20, max >> 20),
                    ),
                    Err(e) => self.report(&span, path, e),
                }
            }
            Ty::Fraction => {
                let n = match val {
                    DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
                    DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                        .ok()
                        .map(|n| n as f64),
                    _ => {
                        self.report(&span, path, expected("a number between 0 and 1"));
                        return;
                    }
                };
                if !n.is_some_and(|n| n > 0.0 && n <= 1.0) {
                    self.report(&span, path, "must be greater than 0 and at most 1");
                }
            }
            Ty::Enum(allowed) => match val.as_str() {
                Some(s) if allowed.contains(&s) => {}
                Some(s) => self.report(
                    &span,
                    path,
                    format!("unknown value {s:?} (allowed: {})", allowed.join(", ")),
                ),
                None => self.report(
                    &span,
                    path,
                    expected(&format!("one of {}", allowed.join(", "))),
                ),
            },
            Ty::StrList | Ty::StrOrList => match val {
                DeValue::String(_) if matches!(ty, Ty::StrOrList) => {}
                DeValue::Array(a) => {
                    for (i, x) in a.iter().enumerate() {
                        if !x.get_ref().is_str() {
                            self.report(
                                &x.span(),
                                format!("{path}[{i}]"),
                                format!("expected a string, found {}", type_name(x.get_ref())),
                            );
                        }
                    }
                }
                _ => self.report(&span, path, expected("an array of strings")),
            },
            Ty::StrMap => match val.as_table() {
                Some(t) => {
                    for (k, x) in t.iter() {
                        if !x.get_ref().is_str() {
                            self.report(
                                &x.span(),
                                join(path, k.get_ref()),
                                format!("expected a string, found {}", type_name(x.get_ref())),
                            );
                        }
                    }
                }
                None => self.report(&span, path, expected("a table of strings")),
            },
            Ty::Table(schema) => match val.as_table() {
                Some(t) => self.walk_table(t, schema, path, span),
                None => self.report(&span, path, expected("a table")),
            },
            Ty::TableArray(schema) => match val.as_array() {
                Some(a) => {
                    for (i, x) in a.iter().enumerate() {
                        let p = format!("{path}[{i}]");
                        match x.get_ref().as_table() {
                            Some(t) => self.walk_table(t, schema, &p, x.span()),
                            None => self.report(
                                &x.span(),
                                p,
                                format!("expected a table, found {}", type_name(x.get_ref())),
                            ),
                        }
                    }
                }
                None => self.report(&span, path, expected("an array of tables")),
            },
        }
    }

    fn cross_check(&mut self, root: &Table<'_>, text: &str) {
        let user_parsers = self.check_parsers(root, text);
        self.check_sources(root, &user_parsers);
        self.check_agent(root);
        self.check_output(root);
        if let Some((t, _)) = get_table(root, "tamper")
            && let Some((interval, span)) = get_str(t, "seal_interval")
            && parse_duration(interval).is_ok_and(|d| d < std::time::Duration::from_millis(100))
        {
            self.report(
                &span,
                "tamper.seal_interval",
                "must be at least 100ms".to_string(),
            );
        }
        self.check_alerts(root);
        if let Some((m, _)) = get_table(root, "metrics")
            && let Some((listen, span)) = get_str(m, "listen")
            && !valid_listen(listen)
        {
            self.report(
                &span,
                "metrics.listen",
                format!("invalid address {listen:?}: expected host:port, e.g. \"127.0.0.1:9464\""),
            );
        }
    }

    /// Duplicate names, and every parser compiled. Returns the user parsers that could be
    /// read (for references and decoder checks).
    fn check_parsers(&mut self, root: &Table<'_>, text: &str) -> Vec<ParserSpec> {
        let entries = tables(root, "parsers");
        let mut seen: Vec<&str> = Vec::new();
        for (i, (t, _)) in entries.iter().enumerate() {
            if let Some((name, span)) = get_str(t, "name") {
                if seen.contains(&name) {
                    self.report(
                        &span,
                        format!("parsers[{i}].name"),
                        format!("duplicate parser name {name:?}"),
                    );
                }
                seen.push(name);
            }
        }
        #[derive(Deserialize)]
        struct OnlyParsers {
            #[serde(default)]
            parsers: Vec<ParserSpec>,
        }
        // Typed problems under `parsers` were reported by the schema walk already.
        if self.problems.iter().any(|p| p.1.starts_with("parsers[")) {
            return Vec::new();
        }
        let Ok(only) = toml::from_str::<OnlyParsers>(text) else {
            return Vec::new();
        };
        for (i, spec) in only.parsers.iter().enumerate() {
            let Err(problems) = compile_parser_located(spec) else {
                continue;
            };
            let Some((t, tspan)) = entries.get(i) else {
                continue;
            };
            for p in problems {
                self.report_spec_problem(i, t, tspan, &p);
            }
        }
        only.parsers
    }

    fn report_spec_problem(
        &mut self,
        i: usize,
        t: &Table<'_>,
        tspan: &Range<usize>,
        p: &SpecProblem,
    ) {
        let mut path = format!("parsers[{i}]");
        let mut span = tspan.clone();
        let mut table: Option<&Table<'_>> = Some(t);
        if let Some(r) = p.rule {
            path = format!("{path}.rules[{r}]");
            match tables(t, "rules").get(r) {
                Some((rt, rspan)) => {
                    table = Some(rt);
                    span = rspan.clone();
                }
                None => table = None,
            }
        }
        for seg in &p.key {
            path = join(&path, seg);
            let Some(cur) = table else { break };
            match get(cur, seg) {
                Some(v) => {
                    span = v.span();
                    table = v.get_ref().as_table();
                }
                None => table = None,
            }
        }
        self.report(&span, path, p.message.clone());
    }

    fn check_sources(&mut self, root: &Table<'_>, user: &[ParserSpec]) {
        let mut seen: Vec<&str> = Vec::new();
        for (i, (t, tspan)) in tables(root, "sources").into_iter().enumerate() {
            let p = format!("sources[{i}]");
            if let Some((name, span)) = get_str(t, "name") {
                if seen.contains(&name) {
                    self.report(
                        &span,
                        format!("{p}.name"),
                        format!("duplicate source name {name:?}"),
                    );
                }
                seen.push(name);
            }
            if let Some((ty, _)) = get_str(t, "type") {
                if ty == "journald" {
                    self.check_journald_source(t, &p);
                } else {
                    for key in ["match", "namespace"] {
                        if let Some(span) = get(t, key).map(|v| v.span()) {
                            self.report(
                                &span,
                                format!("{p}.{key}"),
                                format!("`{key}` is only used by a journald source"),
                            );
                        }
                    }
                }
                if ty == "syslog" {
                    self.check_syslog_source(t, &tspan, &p);
                }
                if ty == "nats" {
                    self.check_nats(t, &tspan, &p, false);
                    continue; // forwards finished events: no parsers
                } else if let Some(span) = get(t, "nats").map(|v| v.span()) {
                    self.report(
                        &span,
                        format!("{p}.nats"),
                        "`nats` is only used by a nats source",
                    );
                }
                if ty == "file" && str_list(t, "include").is_empty() {
                    self.report(
                        &tspan,
                        p.clone(),
                        "a file source needs `include` (globs of files to follow)",
                    );
                }
            }
            for key in ["include", "exclude"] {
                for (k, (g, span)) in str_list(t, key).into_iter().enumerate() {
                    if let Err(e) = glob::Pattern::new(g) {
                        self.report(
                            &span,
                            format!("{p}.{key}[{k}]"),
                            format!("invalid glob {g:?}: {e}"),
                        );
                    } else if key == "include"
                        && crate::source::file::watcher::is_compressed_name(Path::new(g))
                    {
                        self.report(
                            &span,
                            format!("{p}.{key}[{k}]"),
                            format!("{g:?} names compressed files, which are never read (their lines were read from the live file before rotation); include the live file only"),
                        );
                    }
                }
            }
            if let Some((tz, span)) = get_str(t, "timezone")
                && let Err(e) = crate::decode::zone(tz)
            {
                self.report(&span, format!("{p}.timezone"), one_line(&e));
            }
            let decode = get_str(t, "decode").map_or("syslog", |(d, _)| d);
            let multiline = get_str(t, "multiline").map_or("none", |(m, _)| m);
            self.check_postgres_source(t, &tspan, &p, decode, multiline);
            let names = str_list(t, "parsers");
            if names.is_empty() && get(t, "parsers").is_none() {
                self.report(&tspan, p.clone(), "a source needs `parsers` (preset or [[parsers]] names); without them it emits nothing");
            }
            for (k, (name, span)) in names.iter().enumerate() {
                let kp = format!("{p}.parsers[{k}]");
                if names[..k].iter().any(|(n, _)| n == name) {
                    self.report(span, kp.clone(), format!("parser {name:?} is listed twice"));
                }
                let spec = user
                    .iter()
                    .find(|u| u.name == *name)
                    .cloned()
                    .or_else(|| presets::get(name));
                match spec {
                    None => {
                        // Without readable user parsers we cannot tell whether the name exists.
                        if user.is_empty() && tables_present_but_unread(self) {
                            continue;
                        }
                        self.report(span, kp, unknown_parser_message(name, user));
                    }
                    Some(spec) => {
                        if let Some(want) = spec.decode.as_deref()
                            && !decode_fits(want, decode)
                        {
                            self.report(
                                span,
                                kp.clone(),
                                format!("parser {name:?} is written for decode = {want:?} but this source uses decode = {decode:?}"),
                            );
                        }
                        if let Some(want) = spec.multiline.as_deref()
                            && want != multiline
                        {
                            self.report(
                                span,
                                kp,
                                format!("parser {name:?} is written for multiline = {want:?} but this source uses multiline = {multiline:?}"),
                            );
                        }
                    }
                }
            }
        }
    }

    /// PostgreSQL decoders: the prefix translates, and records spanning lines are joined the
    /// way the destination writes them (else statements arrive cut into pieces).
    fn check_postgres_source(
        &mut self,
        t: &Table<'_>,
        tspan: &Range<usize>,
        p: &str,
        decode: &str,
        multiline: &str,
    ) {
        if let Some((prefix, span)) = get_str(t, "log_line_prefix") {
            if decode != "postgres" {
                self.report(
                    &span,
                    format!("{p}.log_line_prefix"),
                    format!("only used with decode = \"postgres\" (this source uses decode = {decode:?})"),
                );
            } else if let Err(e) = crate::decode::postgres::prefix_regex(prefix) {
                self.report(&span, format!("{p}.log_line_prefix"), e);
            }
        }
        let want = match decode {
            "postgres" => "indented",
            "postgres_csv" => "csv",
            _ => return,
        };
        if multiline != want {
            let span = get_str(t, "multiline").map_or(tspan.clone(), |(_, s)| s);
            self.report(
                &span,
                format!("{p}.multiline"),
                format!("decode = {decode:?} needs multiline = {want:?} (PostgreSQL continues records over several lines); this source has multiline = {multiline:?}"),
            );
        }
    }

    /// Journal entries are rewritten as syslog file lines, one entry per line.
    fn check_journald_source(&mut self, t: &Table<'_>, p: &str) {
        if let Some((decode, span)) = get_str(t, "decode")
            && decode != "syslog"
        {
            self.report(
                &span,
                format!("{p}.decode"),
                format!("a journald source always uses decode = \"syslog\" (entries are rewritten as syslog lines); this source has decode = {decode:?}"),
            );
        }
        if let Some((m, span)) = get_str(t, "multiline")
            && m != "none"
        {
            self.report(
                &span,
                format!("{p}.multiline"),
                format!("a journald source reads one entry per record; multiline = {m:?} is not supported"),
            );
        }
        for key in ["include", "exclude", "listen"] {
            if let Some(span) = get(t, key).map(|v| v.span()) {
                self.report(
                    &span,
                    format!("{p}.{key}"),
                    format!("`{key}` is not used by a journald source (use `match`)"),
                );
            }
        }
        if let Some((ns, span)) = get_str(t, "namespace")
            && (ns.is_empty()
                || !ns
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
        {
            self.report(
                &span,
                format!("{p}.namespace"),
                format!("journal namespace {ns:?} must be a non-empty name of letters, digits, `_`, `-`, `.`"),
            );
        }
        for (k, (m, span)) in str_list(t, "match").into_iter().enumerate() {
            if m != "+" && !m.contains('=') {
                self.report(
                    &span,
                    format!("{p}.match[{k}]"),
                    format!(
                        "journal match {m:?} must be FIELD=value (or \"+\" between alternatives)"
                    ),
                );
            }
        }
    }

    /// `listen` present and well-formed; `tls://` needs a readable `[sources.tls]`.
    fn check_syslog_source(&mut self, t: &Table<'_>, tspan: &Range<usize>, p: &str) {
        let Some((listen, span)) = get_str(t, "listen") else {
            self.report(
                tspan,
                p.to_owned(),
                "a syslog source needs `listen` (e.g. \"udp://0.0.0.0:5514\")",
            );
            return;
        };
        match crate::source::syslog::Listen::parse(listen) {
            Err(e) => self.report(&span, format!("{p}.listen"), e),
            Ok(l) => {
                let tls = get_table(t, "tls");
                if l.proto == crate::source::syslog::Proto::Tls && tls.is_none() {
                    self.report(
                        &span,
                        format!("{p}.listen"),
                        "tls:// needs a [sources.tls] table with cert_file and key_file",
                    );
                }
                if let Some((tls, _)) = tls {
                    let prefix = format!("{p}.tls");
                    for k in ["cert_file", "key_file", "client_ca_file"] {
                        self.check_readable(tls, k, &prefix);
                    }
                }
            }
        }
    }

    fn check_agent(&mut self, root: &Table<'_>) {
        let agent = get_table(root, "agent");
        // An unset state_dir (the default) is not probed: it only matters on the host that
        // runs the agent, under systemd's StateDirectory.
        if let Some((dir, span)) = agent.as_ref().and_then(|(a, _)| get_str(a, "state_dir"))
            && let Err(e) = probe_writable_dir(&self.base.join(dir))
        {
            self.report(&span, "agent.state_dir", e);
        }
        if let Some((a, _)) = agent
            && let Some((ext, span)) = get_str(a, "event_id_extension")
            && reqwest::Url::parse(ext).is_err()
        {
            self.report(
                &span,
                "agent.event_id_extension",
                format!("{ext:?} is not an absolute URI"),
            );
        }
    }

    fn check_output(&mut self, root: &Table<'_>) {
        let Some((out, ospan)) = get_table(root, "output") else {
            return;
        };
        let ty = get_str(out, "type").map_or("directory", |(t, _)| t);
        match ty {
            "http" => match get_str(out, "url") {
                Some((url, span)) => {
                    if let Err(e) = crate::deliver::http_url(url).map(drop) {
                        self.report(&span, "output.url", e);
                    }
                }
                None => self.report(&ospan, "output", "output.type = \"http\" needs `url`"),
            },
            "nats" => self.check_nats(out, &ospan, "output", true),
            "directory" => match get_str(out, "path") {
                Some((dir, span)) => {
                    if let Err(e) = probe_writable_dir(&self.base.join(dir)) {
                        self.report(&span, "output.path", e);
                    }
                }
                None => self.report(&ospan, "output", "output.type = \"directory\" needs `path`"),
            },
            _ => {}
        }
        if let Some((base, span)) = get_str(out, "fhir_base")
            && let Err(e) = crate::deliver::http_url(base).map(drop)
        {
            self.report(&span, "output.fhir_base", e);
        }
        if let Some((retry, _)) = get_table(out, "retry")
            && let (Some((a, _)), Some((b, bspan))) = (
                get_str(retry, "initial_backoff"),
                get_str(retry, "max_backoff"),
            )
            && let (Ok(a), Ok(b)) = (parse_duration(a), parse_duration(b))
            && a > b
        {
            self.report(
                &bspan,
                "output.retry.max_backoff",
                "must not be smaller than initial_backoff",
            );
        }
        if let Some((auth, aspan)) = get_table(out, "auth") {
            let needs: &[&str] = match get_str(auth, "type").map_or("none", |(t, _)| t) {
                "bearer" => &["token_file"],
                "basic" => &["username", "password_file"],
                "oauth2" => &["token_url", "client_id", "client_secret_file"],
                _ => &[],
            };
            for k in needs {
                if get(auth, k).is_none() {
                    self.report(&aspan, "output.auth", format!("this auth type needs `{k}`"));
                }
            }
            for k in ["token_file", "password_file", "client_secret_file"] {
                self.check_readable(auth, k, "output.auth");
            }
            if let Some((url, span)) = get_str(auth, "token_url")
                && let Err(e) = crate::deliver::http_url(url).map(drop)
            {
                self.report(&span, "output.auth.token_url", e);
            }
        }
        if let Some((tls, tspan)) = get_table(out, "tls") {
            for k in ["ca_file", "client_cert_file", "client_key_file"] {
                self.check_readable(tls, k, "output.tls");
            }
            if let Err(e) = crate::deliver::client_pair_complete(
                get(tls, "client_cert_file").is_some(),
                get(tls, "client_key_file").is_some(),
            ) {
                self.report(&tspan, "output.tls", e);
            }
        }
    }

    /// `[[alerts]]`: keys the rule uses, values it understands, sources that exist, one
    /// entry per name.
    fn check_alerts(&mut self, root: &Table<'_>) {
        use crate::alert::rules;
        use crate::config::AlertRuleKind;
        let source_names: Vec<&str> = tables(root, "sources")
            .iter()
            .filter_map(|(t, _)| get_str(t, "name").map(|(n, _)| n))
            .collect();
        let mut names: Vec<String> = Vec::new();
        for (i, (t, tspan)) in tables(root, "alerts").into_iter().enumerate() {
            let p = format!("alerts[{i}]");
            let Some(kind) = get_str(t, "rule").and_then(|(r, _)| AlertRuleKind::parse(r)) else {
                continue;
            };
            let allowed = crate::config::alerts::rule_keys(kind);
            for (k, v) in t.iter() {
                let key = k.get_ref().as_ref();
                if !["rule", "name", "enabled"].contains(&key) && !allowed.contains(&key) {
                    self.report(
                        &k.span(),
                        format!("{p}.{key}"),
                        format!(
                            "`{key}` is not used by rule {:?} (it takes: {})",
                            kind.as_str(),
                            allowed.join(", ")
                        ),
                    );
                }
                let _ = v;
            }
            let name = get_str(t, "name").map_or(kind.as_str(), |(n, _)| n);
            if names.iter().any(|n| n == name) {
                let span = get_str(t, "name").map_or(tspan.clone(), |(_, s)| s);
                self.report(
                    &span,
                    format!("{p}.name"),
                    format!("two [[alerts]] entries are named {name:?}; give each instance its own `name`"),
                );
            }
            names.push(name.to_owned());
            for (k, (b, span)) in str_list(t, "by").into_iter().enumerate() {
                if b != "user" && b != "address" {
                    let at = if get(t, "by").is_some_and(|v| v.get_ref().is_str()) {
                        format!("{p}.by")
                    } else {
                        format!("{p}.by[{k}]")
                    };
                    self.report(
                        &span,
                        at,
                        format!("unknown value {b:?} (allowed: user, address)"),
                    );
                }
            }
            for (k, (d, span)) in str_list(t, "days").into_iter().enumerate() {
                if rules::weekday(d).is_none() {
                    self.report(
                        &span,
                        format!("{p}.days[{k}]"),
                        format!("unknown day {d:?} (use mon, tue, wed, thu, fri, sat, sun)"),
                    );
                }
            }
            if let Some((h, span)) = get_str(t, "hours")
                && let Err(e) = rules::hours(h)
            {
                self.report(&span, format!("{p}.hours"), e);
            }
            if let Some((tz, span)) = get_str(t, "timezone")
                && let Err(e) = crate::decode::zone(tz)
            {
                self.report(&span, format!("{p}.timezone"), one_line(&e));
            }
            for (k, (src, span)) in str_list(t, "sources").into_iter().enumerate() {
                if !source_names.contains(&src) {
                    let at = if get(t, "sources").is_some_and(|v| v.get_ref().is_str()) {
                        format!("{p}.sources")
                    } else {
                        format!("{p}.sources[{k}]")
                    };
                    self.report(
                        &span,
                        at,
                        format!(
                            "no [[sources]] entry is named {src:?} (sources: {})",
                            source_names.join(", ")
                        ),
                    );
                }
            }
            for key in ["window", "silent_after"] {
                if let Some((d, span)) = get_str(t, key)
                    && parse_duration(d).is_ok_and(|d| d.is_zero())
                {
                    self.report(&span, format!("{p}.{key}"), "must be longer than 0");
                }
            }
            let enabled = get(t, "enabled").and_then(|v| v.get_ref().as_bool()) != Some(false);
            if kind == AlertRuleKind::Watchlist
                && enabled
                && str_list(t, "patients").is_empty()
                && str_list(t, "users").is_empty()
            {
                self.report(
                    &tspan,
                    p.clone(),
                    "a watchlist needs `patients` and/or `users` (ids to watch)",
                );
            }
        }
    }

    /// `[output.nats]` (`output`) or `[sources.nats]` of the table `t` at `p`.
    fn check_nats(&mut self, t: &Table<'_>, tspan: &Range<usize>, p: &str, output: bool) {
        let Some((n, nspan)) = get_table(t, "nats") else {
            let side = if output {
                "output.type = \"nats\""
            } else {
                "a nats source"
            };
            self.report(tspan, p, format!("{side} needs [{p}.nats] with `servers`"));
            return;
        };
        let np = format!("{p}.nats");
        for (k, (url, span)) in str_list(n, "servers").into_iter().enumerate() {
            if let Err(e) = crate::deliver::nats::server_addrs(&[url.to_owned()]) {
                self.report(&span, format!("{np}.servers[{k}]"), e);
            }
        }
        let (needed, unused): (&[&str], &[&str]) = if output {
            (
                &[],
                &[
                    "consumer",
                    "subject_filter",
                    "ack_wait",
                    "max_ack_pending",
                    "batch",
                ],
            )
        } else {
            (&["stream", "consumer"], &["subject"])
        };
        for k in needed {
            if get(n, k).is_none() {
                self.report(&nspan, np.clone(), format!("a nats source needs `{k}`"));
            }
        }
        for k in unused {
            if let Some(span) = get(n, k).map(|v| v.span()) {
                let side = if output {
                    "a nats source"
                } else {
                    "the nats output"
                };
                self.report(
                    &span,
                    format!("{np}.{k}"),
                    format!("`{k}` is only used by {side}"),
                );
            }
        }
        if output && let Some((s, span)) = get_str(n, "subject") {
            let subject = crate::deliver::nats::subject_for(Some(s), "host");
            if subject.is_empty() || subject.contains(['*', '>', ' ']) || subject.contains("..") {
                self.report(
                    &span,
                    format!("{np}.subject"),
                    "not a subject to publish to (no wildcards, spaces or empty tokens)",
                );
            }
        }
        if get(n, "username").is_some() != get(n, "password_file").is_some() {
            self.report(&nspan, np.clone(), "username and password_file go together");
        }
        for k in [
            "token_file",
            "nkey_seed_file",
            "credentials_file",
            "password_file",
        ] {
            self.check_readable(n, k, &np);
        }
        if let Some((tls, tspan)) = get_table(n, "tls") {
            let tp = format!("{np}.tls");
            for k in ["ca_file", "client_cert_file", "client_key_file"] {
                self.check_readable(tls, k, &tp);
            }
            if let Err(e) = crate::deliver::client_pair_complete(
                get(tls, "client_cert_file").is_some(),
                get(tls, "client_key_file").is_some(),
            ) {
                self.report(&tspan, tp.clone(), e);
            }
            if let Some(span) = get(tls, "insecure_skip_verify").map(|v| v.span()) {
                self.report(
                    &span,
                    format!("{tp}.insecure_skip_verify"),
                    "not supported for NATS: give the server's CA in ca_file",
                );
            }
        }
    }

    fn check_readable(&mut self, t: &Table<'_>, key: &str, prefix: &str) {
        if let Some((file, span)) = get_str(t, key)
            && let Err(e) = std::fs::File::open(self.base.join(file))
        {
            self.report(
                &span,
                format!("{prefix}.{key}"),
                format!("cannot read {file:?}: {e}"),
            );
        }
    }
}

/// True when `[[parsers]]` exist but could not be read (type problems): unknown-name
/// reports would then be noise.
fn tables_present_but_unread(c: &Checker) -> bool {
    c.problems.iter().any(|p| p.1.starts_with("parsers["))
}

fn valid_listen(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Can the agent create files in `dir` (or create `dir` itself)?
fn probe_writable_dir(dir: &Path) -> Result<(), String> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(format!(
            "{} exists and is not a directory",
            existing.display()
        ));
    }
    // Unique per call, not only per process: checks run on several threads at once (the
    // fuzz regression test did, and two probes of one name met as EEXIST), and a probe left
    // by a killed process of the same pid only costs another name.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut result = Err(std::io::Error::other("no probe tried"));
    for _ in 0..8 {
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = existing.join(format!(".balp-agent-check-{}-{n}", std::process::id()));
        result = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map(|_| {
                let _ = std::fs::remove_file(&probe);
            });
        if !matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists) {
            break;
        }
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(format!(
            "{} is not writable{}: {e}",
            existing.display(),
            if existing == dir {
                ""
            } else {
                " (needed to create the directory)"
            }
        )),
    }
}

/// Whether a parser written for decoder `want` reads lines of decoder `have`: equal, or the
/// PostgreSQL family (`postgres` presets read all three PostgreSQL destinations).
fn decode_fits(want: &str, have: &str) -> bool {
    want == have || (want == "postgres" && have.starts_with("postgres_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_probes_on_many_threads_at_once_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    (0..200).all(|_| probe_writable_dir(&path.join("state")).is_ok())
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
        assert_eq!(
            std::fs::read_dir(&path).unwrap().count(),
            0,
            "no probe left behind"
        );
    }

    fn valid_config(dir: &Path) -> String {
        format!(
            r#"
[agent]
state_dir = "{state}"
mode = "minimal"
[agent.observer]
display = "balp-agent@host01"
type = "4"

[[sources]]
name = "auth"
type = "file"
include = ["/var/log/auth.log"]
exclude = ["*.gz"]
read_from = "end"
decode = "syslog"
parsers = ["sshd"]
max_line_bytes = "64KiB"
timezone = "Europe/Berlin"

[[sources]]
name = "nginx"
type = "file"
include = ["/var/log/nginx/fhir-access.log"]
decode = "raw"
parsers = ["fhir_access", "billing-app"]
fhir_base = "/fhir"

[[parsers]]
name = "billing-app"
[[parsers.rules]]
regex = '^user=(?P<user>\S+) read (?P<type>\w+)/(?P<id>\S+) from (?P<ip>\S+)$'
pattern = "read"
fields = {{ user = "{{user}}", resource = "{{type}}/{{id}}", client_address = "{{ip}}" }}

[output]
type = "http"
url = "https://arr.example.org/fhir"
bundle_type = "collection"
max_events = 500
max_bytes = "4MiB"
flush_interval = "1s"
compression = "gzip"
timeout = "30s"
headers = {{ "X-Tenant" = "a" }}
[output.retry]
initial_backoff = "1s"
max_backoff = "5m"
[output.auth]
type = "none"

[spool]
max_bytes = "1GiB"
when_full = "block"

[metrics]
listen = "127.0.0.1:9464"
spool_threshold = 0.9
delivery_failure_threshold = "5m"
"#,
            state = dir.join("state").display()
        )
    }

    #[test]
    fn valid_config_has_no_problems_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let text = valid_config(dir.path());
        assert_eq!(check_text("c.toml", &text), Vec::<String>::new());
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &text).unwrap();
        let cfg = load(&path).unwrap();
        assert_eq!(cfg.sources.len(), 2);
        assert_eq!(cfg.parsers[0].name, "billing-app");
    }

    #[test]
    fn compressed_include_globs_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"[agent]
state_dir = "{state}"
[[sources]]
name = "fhir"
type = "file"
include = ["/var/log/nginx/access.log", "/var/log/nginx/access.log.*.gz"]
decode = "raw"
parsers = ["fhir_access"]
[output]
type = "directory"
path = "{out}"
"#,
            state = dir.path().join("state").display(),
            out = dir.path().join("out").display()
        );
        let got = check_text("g.toml", &text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("sources[0].include[1]") && got[0].contains("compressed"),
            "{got:?}"
        );
    }

    #[test]
    fn fold_of_a_user_parser_is_checked_with_positions() {
        let dir = tempfile::tempdir().unwrap();
        let config = |fold: &str| {
            format!(
                r#"[agent]
state_dir = "{state}"
[[sources]]
name = "app"
type = "file"
include = ["/var/log/app.log"]
decode = "raw"
parsers = ["myapp"]
[[parsers]]
name = "myapp"
[[parsers.rules]]
regex = '^(?P<u>\S+) failed$'
pattern = "login"
fields = {{ outcome = "4", user = "{{u}}" }}
{fold}
[output]
type = "stdout"
"#,
                state = dir.path().join("state").display(),
            )
        };
        let ok = check_text(
            "f.toml",
            &config(r#"fold = { fields = ["user"], key = "{u}", within_ms = 1000 }"#),
        );
        assert!(ok.is_empty(), "{ok:?}");
        let got = check_text(
            "f.toml",
            &config(r#"fold = { fields = ["user", "colour"], key = "{nope}", within_ms = 10 }"#),
        );
        assert_eq!(
            got,
            [
                "f.toml:15:19: parsers[0].rules[0].fold.fields: unknown field \"colour\"",
                "f.toml:15:45: parsers[0].rules[0].fold.key: template \"{nope}\": the regex has no capture named \"nope\" (captures: u)",
            ]
        );
        let got = check_text("f.toml", &config("fold = { within_ms = 0, colour = 1 }"));
        assert!(
            got.iter()
                .any(|g| g.contains("fold.within_ms: must be at least 1")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|g| g.contains("fold.colour: unknown key \"colour\"")),
            "{got:?}"
        );
    }

    #[test]
    fn journald_source_needs_syslog_decode_and_field_matches() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"[agent]
state_dir = "{state}"

[[sources]]
name = "journal"
type = "journald"
match = ["_SYSTEMD_UNIT=ssh.service", "+", "sshd"]
decode = "raw"
include = ["/var/log/x"]
parsers = ["sshd"]

[[sources]]
name = "ok"
type = "journald"
match = ["SYSLOG_IDENTIFIER=sshd"]
namespace = "fhir-app"
parsers = ["sshd"]

[[sources]]
name = "files"
type = "file"
include = ["/var/log/auth.log"]
namespace = "x"
parsers = ["sshd"]

[[sources]]
name = "ns"
type = "journald"
namespace = "a b"
parsers = ["sshd"]

[output]
type = "directory"
path = "{out}"
"#,
            state = dir.path().join("state").display(),
            out = dir.path().join("out").display()
        );
        let got = check_text("j.toml", &text);
        let expect = [
            "j.toml:7:44: sources[0].match[2]: journal match \"sshd\" must be FIELD=value",
            "j.toml:8:10: sources[0].decode: a journald source always uses decode = \"syslog\"",
            "j.toml:9:11: sources[0].include: `include` is not used by a journald source",
            "j.toml:23:13: sources[2].namespace: `namespace` is only used by a journald source",
            "j.toml:29:13: sources[3].namespace: journal namespace \"a b\" must be a non-empty name",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in\n{}",
                got.join("\n")
            );
        }
        assert!(!got.iter().any(|g| g.contains("sources[1]")), "{got:?}");
        assert!(
            !got.iter().any(|g| g.contains("not implemented")),
            "{got:?}"
        );
    }

    #[test]
    fn every_mistake_is_reported_with_position_and_key_path() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"[agent]
state_dir = "{state}"
colour = "blue"

[[sources]]
name = "auth"
type = "file"
include = ["/var/log/[auth.log"]
read_from = "middle"
parsers = ["sshd", "nope"]
timezone = "Mars/Olympus"
poll_interval = "5 parsecs"

[[sources]]
name = "auth"
type = "journald"
parsers = ["fhir_access"]

[[sources]]
type = "file"
include = ["/x"]
decode = "raw"
parsers = ["bad"]

[[parsers]]
name = "bad"
[[parsers.rules]]
regex = '^(?P<a>x)'
pattern = "read"
fields = {{ user = "{{b}}" }}

[output]
type = "http"
url = "ftp://arr.example.org"
fhir_base = "arr.example.org/fhir"
max_events = "many"
[output.retry]
max_backoff = "5"
[output.tls]
ca_file = "/nonexistent/ca.pem"
"#,
            state = dir.path().join("state").display()
        );
        let got = check_text("c.toml", &text);
        let expect = [
            "c.toml:3:1: agent.colour: unknown key \"colour\"",
            "c.toml:8:12: sources[0].include[0]: invalid glob",
            "c.toml:9:13: sources[0].read_from: unknown value \"middle\" (allowed: beginning, end)",
            "c.toml:10:20: sources[0].parsers[1]: unknown parser \"nope\"",
            "c.toml:11:12: sources[0].timezone: unknown time zone \"Mars/Olympus\"",
            "c.toml:12:17: sources[0].poll_interval: invalid duration \"5 parsecs\"",
            "c.toml:15:8: sources[1].name: duplicate source name \"auth\"",
            "c.toml:17:12: sources[1].parsers[0]: parser \"fhir_access\" is written for decode = \"raw\" but this source uses decode = \"syslog\"",
            "c.toml:19:1: sources[2]: missing required key `name`",
            "c.toml:30:19: parsers[0].rules[0].fields.user: template \"{b}\": the regex has no capture named \"b\" (captures: a)",
            "c.toml:34:7: output.url: \"ftp://arr.example.org\": expected an http:// or https:// URL",
            "c.toml:35:13: output.fhir_base: invalid URL \"arr.example.org/fhir\"",
            "c.toml:36:14: output.max_events: expected an integer, found a string",
            "c.toml:38:15: output.retry.max_backoff: invalid duration \"5\": a unit is required",
            "c.toml:40:11: output.tls.ca_file: cannot read \"/nonexistent/ca.pem\"",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in\n{}",
                got.join("\n")
            );
        }
        assert_eq!(got.len(), expect.len(), "{}", got.join("\n"));
    }

    #[test]
    fn alert_entries_are_checked_key_by_key() {
        let text = r#"[[sources]]
name = "auth"
type = "file"
include = ["/var/log/auth.log"]
parsers = ["sshd"]

[[alerts]]
rule = "failed-login-burst"
threshold = 0
by = ["user", "host"]
days = ["mon"]

[[alerts]]
rule = "off-hours"
days = ["mon", "funday"]
hours = "7-19"
timezone = "Mars/Olympus"
sources = "nginx"

[[alerts]]
rule = "watchlist"

[[alerts]]
rule = "silent-source"
name = "failed-login-burst"
silent_after = "0s"

[[alerts]]
rule = "snooping"

[[alerts]]
rule = "many-patients"
enabled = false
ignore_users = ["svc-batch"]
window = "30m"
"#;
        let got = check_text("c.toml", text);
        let expect = [
            "c.toml:9:13: alerts[0].threshold: must be at least 1",
            "c.toml:10:15: alerts[0].by[1]: unknown value \"host\" (allowed: user, address)",
            "c.toml:11:1: alerts[0].days: `days` is not used by rule \"failed-login-burst\" (it takes: threshold, window, cooldown, by, ignore_users, sources, max_keys)",
            "c.toml:15:16: alerts[1].days[1]: unknown day \"funday\"",
            "c.toml:16:9: alerts[1].hours: invalid hours \"7-19\"",
            "c.toml:17:12: alerts[1].timezone: unknown time zone \"Mars/Olympus\"",
            "c.toml:18:11: alerts[1].sources: no [[sources]] entry is named \"nginx\" (sources: auth)",
            "c.toml:20:1: alerts[2]: a watchlist needs `patients` and/or `users`",
            "c.toml:25:8: alerts[3].name: two [[alerts]] entries are named \"failed-login-burst\"",
            "c.toml:26:16: alerts[3].silent_after: must be longer than 0",
            "c.toml:29:8: alerts[4].rule: unknown value \"snooping\" (allowed: failed-login-burst, success-after-failures, many-patients, off-hours, watchlist, silent-source)",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in\n{}",
                got.join("\n")
            );
        }
        assert_eq!(got.len(), expect.len(), "{}", got.join("\n"));

        let ok = "[[alerts]]\nrule = \"watchlist\"\npatients = [\"p1\"]\ncooldown = \"2h\"\n\
                  [[alerts]]\nrule = \"failed-login-burst\"\nenabled = false\n";
        assert_eq!(check_text("c.toml", ok), Vec::<String>::new());
        let cfg: Config = toml::from_str(ok).unwrap();
        assert_eq!(cfg.alerts.len(), 2);
    }

    #[test]
    fn spool_segment_size_must_be_between_1_mib_and_1_gib() {
        let got = check_text("c.toml", "[spool]\nsegment_size = \"64KiB\"\n");
        assert_eq!(
            got,
            ["c.toml:2:16: spool.segment_size: must be between 1 MiB and 1024 MiB"],
            "{got:?}"
        );
        let got = check_text("c.toml", "[spool]\nsegment_size = \"2GiB\"\n");
        assert_eq!(got.len(), 1, "{got:?}");
        let got = check_text("c.toml", "[spool]\nsegment_size = \"lots\"\n");
        assert!(got[0].contains("invalid size"), "{got:?}");
        assert!(check_text("c.toml", "[spool]\nsegment_size = \"16MiB\"\n").is_empty());
    }

    #[test]
    fn tamper_keys_are_known_and_the_seal_interval_checked() {
        assert_eq!(
            check_text(
                "c.toml",
                "[tamper]\nenabled = false\nseal_interval = \"10m\"\n"
            ),
            Vec::<String>::new()
        );
        let got = check_text(
            "c.toml",
            "[tamper]\nenabled = \"yes\"\nseal_interval = \"10ms\"\nkey = \"x\"\n",
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("c.toml:2:11: tamper.enabled:")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("c.toml:3:17: tamper.seal_interval: must be at least 100ms")),
            "{got:?}"
        );
        assert!(got.iter().any(|g| g.contains("tamper.key")), "{got:?}");
    }

    #[test]
    fn metrics_thresholds_are_checked_and_default() {
        let got = check_text(
            "c.toml",
            "[metrics]\nlisten = \"127.0.0.1:9464\"\nspool_threshold = 1.5\n\
             delivery_failure_threshold = \"soon\"\n",
        );
        assert!(
            got.iter().any(|g| g.starts_with(
                "c.toml:3:19: metrics.spool_threshold: must be greater than 0 and at most 1"
            )),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("c.toml:4:30: metrics.delivery_failure_threshold:")),
            "{got:?}"
        );
        let got = check_text(
            "c.toml",
            "[metrics]\nlisten = \"127.0.0.1:9464\"\nspool_threshold = \"90%\"\n",
        );
        assert!(
            got.iter()
                .any(|g| g.contains("metrics.spool_threshold: expected a number between 0 and 1")),
            "{got:?}"
        );
        let m: crate::config::MetricsConfig =
            toml::from_str("listen = \"127.0.0.1:9464\"").unwrap();
        assert_eq!(m.spool_threshold, 0.9);
        assert_eq!(
            m.delivery_failure_threshold.0,
            std::time::Duration::from_secs(300)
        );
    }

    #[test]
    fn postgres_sources_need_their_multiline_mode_and_a_valid_prefix() {
        let text = r#"
[[sources]]
name = "pg"
type = "file"
include = ["/var/log/postgresql/*.log"]
decode = "postgres"
log_line_prefix = "%m [%p] %Z "
parsers = ["postgres", "pgaudit"]

[[sources]]
name = "pgcsv"
type = "file"
include = ["/var/log/postgresql/*.csv"]
decode = "postgres_csv"
multiline = "indented"
parsers = ["pgaudit", "sshd"]

[[sources]]
name = "pgjson"
type = "file"
include = ["/var/log/postgresql/*.json"]
decode = "postgres_json"
log_line_prefix = "%m "
parsers = ["pgaudit", "mine"]

[[parsers]]
name = "mine"
multiline = "csv"
[[parsers.rules]]
regex = 'x'
pattern = "none"
"#;
        let got = check_text("c.toml", text);
        let expect = [
            "c.toml:7:19: sources[0].log_line_prefix: log_line_prefix \"%m [%p] %Z \": unsupported escape %Z",
            "c.toml:2:1: sources[0].multiline: decode = \"postgres\" needs multiline = \"indented\"",
            "c.toml:15:13: sources[1].multiline: decode = \"postgres_csv\" needs multiline = \"csv\"",
            "c.toml:16:23: sources[1].parsers[1]: parser \"sshd\" is written for decode = \"syslog\" but this source uses decode = \"postgres_csv\"",
            "c.toml:23:19: sources[2].log_line_prefix: only used with decode = \"postgres\"",
            "c.toml:24:23: sources[2].parsers[1]: parser \"mine\" is written for multiline = \"csv\" but this source uses multiline = \"none\"",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in\n{}",
                got.join("\n")
            );
        }
        assert_eq!(got.len(), expect.len(), "{}", got.join("\n"));
    }

    #[test]
    fn syslog_sources_need_a_valid_listen_and_tls_files() {
        let text = r#"
[[sources]]
name = "a"
type = "syslog"
parsers = ["sshd"]

[[sources]]
name = "b"
type = "syslog"
listen = "udp://localhost:5514"
parsers = ["sshd"]

[[sources]]
name = "c"
type = "syslog"
listen = "tls://0.0.0.0:6514"
parsers = ["sshd"]

[[sources]]
name = "d"
type = "syslog"
listen = "tls://0.0.0.0:6514"
parsers = ["sshd"]
max_connections = 10
max_frame_bytes = "8KiB"
[sources.tls]
cert_file = "/nonexistent/cert.pem"
key_file = "/nonexistent/key.pem"

[[sources]]
name = "e"
type = "syslog"
listen = "tcp://[::]:514"
parsers = ["sshd"]
max_connections = 0
"#;
        let got = check_text("c.toml", text);
        let expect = [
            "c.toml:2:1: sources[0]: a syslog source needs `listen`",
            "c.toml:10:10: sources[1].listen: \"udp://localhost:5514\": expected an IP address",
            "c.toml:16:10: sources[2].listen: tls:// needs a [sources.tls] table",
            "c.toml:27:13: sources[3].tls.cert_file: cannot read \"/nonexistent/cert.pem\"",
            "c.toml:28:12: sources[3].tls.key_file: cannot read \"/nonexistent/key.pem\"",
            "c.toml:35:19: sources[4].max_connections: must be at least 1",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in\n{}",
                got.join("\n")
            );
        }
        assert_eq!(got.len(), expect.len(), "{}", got.join("\n"));
    }

    #[test]
    fn nats_outputs_and_sources_need_their_keys() {
        let text = r#"
[[sources]]
name = "fleet"
type = "nats"
[sources.nats]
servers = ["nats://127.0.0.1:4222", "http://[::1"]
stream = "AUDIT"
subject = "x"

[[sources]]
name = "bare"
type = "nats"

[output]
type = "nats"
[output.nats]
servers = ["tls://nats.example.org:4222"]
subject = "balp.*.{hostname}"
consumer = "c"
token_file = "/nonexistent/token"
"#;
        let got = check_text("c.toml", text);
        let expect = [
            "c.toml:5:1: sources[0].nats: a nats source needs `consumer`",
            "c.toml:6:37: sources[0].nats.servers[1]: servers: \"http://[::1\" is not a NATS server URL",
            "c.toml:8:11: sources[0].nats.subject: `subject` is only used by the nats output",
            "c.toml:10:1: sources[1]: a nats source needs [sources[1].nats] with `servers`",
            "c.toml:18:11: output.nats.subject: not a subject to publish to",
            "c.toml:19:12: output.nats.consumer: `consumer` is only used by a nats source",
            "c.toml:20:14: output.nats.token_file: cannot read \"/nonexistent/token\"",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in\n{}",
                got.join("\n")
            );
        }
        assert!(
            !got.iter().any(|g| g.contains("parsers")),
            "a nats source needs no parsers: {got:?}"
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let got = check_text("c.toml", "[agent]\nmode = \n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("c.toml:2:"), "{got:?}");
        assert!(got[0].contains(": syntax: "), "{got:?}");
    }

    #[test]
    fn output_requirements_and_unwritable_dirs() {
        let got = check_text(
            "c.toml",
            "[output]\ntype = \"directory\"\n[output.auth]\ntype = \"bearer\"\n",
        );
        let all = got.join("\n");
        assert!(
            all.contains("output: output.type = \"directory\" needs `path`"),
            "{all}"
        );
        assert!(
            all.contains("output.auth: this auth type needs `token_file`"),
            "{all}"
        );
        let f = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            "[agent]\nstate_dir = \"{}\"\n[output]\ntype = \"http\"\n",
            f.path().join("sub").display()
        );
        let all = check_text("c.toml", &text).join("\n");
        assert!(all.contains("agent.state_dir: "), "{all}");
        assert!(all.contains("is not a directory"), "{all}");
        assert!(all.contains("needs `url`"), "{all}");
    }

    #[test]
    fn load_lists_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[spool]\nwhen_full = \"drop\"\n").unwrap();
        let err = load(&path).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(
            err.problems[0]
                .contains(":2:13: spool.when_full: unknown value \"drop\" (allowed: block)"),
            "{err}"
        );
    }
}

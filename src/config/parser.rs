//! The TOML form of a parser. Built-in presets (`presets/*.toml`) and user `[[parsers]]` use
//! exactly this schema, so a user can copy a preset and change it.
//!
//! ```toml
//! [[parsers]]
//! name = "billing-app"
//! programs = ["billing"]          # optional: only syslog lines from these programs
//! [[parsers.rules]]
//! regex = '^user=(?P<user>\S+) read (?P<type>\w+)/(?P<id>\S+) from (?P<ip>\S+)$'
//! pattern = "read"
//! fields = { user = "{user}", resource = "{type}/{id}", client_address = "{ip}" }
//! ```
//!
//! Templates: `{name}` is a named regex capture, `{$.a.b}` a field of a JSON line (with
//! `decode = "json"`; `{$.a.0}` indexes an array), `{host}` / `{program}` / `{pid}` the syslog
//! header (a regex capture of the same name takes precedence); anything else is literal text.
//! `{{` and `}}` write literal braces. `{a|b|$.c}` takes the first alternative that is set
//! (not empty and not `-`), e.g. `user = "{kv_user|remote_user}"`. A field whose template
//! renders empty or `-` is left unset. A filter may follow a name: `{stmt:unquote}` removes
//! SQL/CSV quoting (`'…'` with backslash escapes and `''`, or `"…"` with `""`), `{verb:upper}`
//! upper-cases.
//!
//! A rule's conditions are its `regex` (matched against the decoded message) and its
//! `json_match` entries; all must hold. Conditions on a captured value (e.g. "only when the
//! status is below 400") are written into the regex itself, splitting the rule in two (see the
//! `fhir_access` preset).
//!
//! `fold` on a rule folds a line that only repeats an earlier event into it (see
//! [`FoldSpec`]). `stash` and `take` carry values from the lines that detail an operation to
//! the line that records it (see [`StashSpec`]).
//!
//! `programs` compares the syslog tag; a tag like `sshd(pam_unix)` also counts as `sshd`.

use serde::Deserialize;
use std::collections::BTreeMap;

/// One parser: a named, ordered list of rules. The first rule that matches a line wins.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParserSpec {
    /// Unique name, referenced from `[[sources]] parsers`.
    pub name: String,
    /// What the parser is for (shown by `presets`).
    #[serde(default)]
    pub description: String,
    /// Only lines whose syslog program (tag) is one of these; empty = any line.
    #[serde(default)]
    pub programs: Vec<String>,
    /// The decoder this parser is written for (`syslog`, `raw`, `json`, `postgres`, …);
    /// `check` reports a source that uses it with another decoder (`postgres` also accepts
    /// `postgres_csv` and `postgres_json`). Unset = any.
    #[serde(default)]
    pub decode: Option<String>,
    /// The `multiline` mode this parser expects of its source (`none`, `indented`, `csv`);
    /// `check` reports a source with another. Unset = any.
    #[serde(default)]
    pub multiline: Option<String>,
    /// The rules, tried in order.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Example lines with what they produce (documentation, checked by tests).
    #[serde(default)]
    pub samples: Vec<SampleSpec>,
}

/// One rule: a condition on the line and the event it emits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Name for counts and messages (defaults to the rule's index).
    #[serde(default)]
    pub name: Option<String>,
    /// Regular expression (Rust `regex` syntax) matched against the message.
    #[serde(default)]
    pub regex: Option<String>,
    /// For JSON lines: conditions `path = "regex"` that must all match.
    #[serde(default)]
    pub json_match: BTreeMap<String, String>,
    /// The event pattern to emit; `"none"` matches the line but emits nothing (known noise).
    pub pattern: String,
    /// How to read the `time` field (strftime, e.g. `%d/%b/%Y:%H:%M:%S %z`; `rfc3339`;
    /// `epoch`; `epoch_ms`). Without it, `time` must be RFC 3339.
    #[serde(default)]
    pub time_format: Option<String>,
    /// Field templates.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// A capture of `regex` read as whitespace-separated `key="value"` / `key=value` pairs
    /// (the fields access logs append), each available to templates as `{kv.<key>}`.
    #[serde(default)]
    pub pairs: Option<String>,
    /// Fold this line into an earlier event it only repeats (see [`FoldSpec`]).
    #[serde(default)]
    pub fold: Option<FoldSpec>,
    /// Keep values of this line for a later line's event (see [`StashSpec`]).
    #[serde(default)]
    pub stash: Option<StashSpec>,
    /// Add the values earlier lines stashed under a key to this line's event (see [`TakeSpec`]).
    #[serde(default)]
    pub take: Option<TakeSpec>,
}

/// `stash = { key = "...", fields = { resource = "{db}.{table}" } }` on a rule: the rendered
/// values are kept, under the rendered `key`, for the next line of the same parser whose
/// rule `take`s that key. Several lines may stash under one key; their distinct values are
/// kept in order. Usually on a `pattern = "none"` rule.
///
/// Made for logs that write one operation as several lines, the detail first: MariaDB's
/// server_audit logs the tables a statement touched as TABLE rows before the QUERY row of
/// the statement (same connection and query id). The state lives in memory and is bounded
/// (the oldest keys are dropped first): a restart between the lines loses the detail, not
/// the event.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StashSpec {
    /// Which later line gets the values.
    pub key: String,
    /// Field templates to keep.
    pub fields: BTreeMap<String, String>,
}

/// `take = { key = "...", fields = ["resource"] }` on a rule: the values stashed under the
/// rendered `key` are removed from the stash; each listed field the event does not set
/// itself gets them, joined with `, `. An empty list only discards them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TakeSpec {
    /// The key the values were stashed under.
    pub key: String,
    /// The fields to fill.
    #[serde(default)]
    pub fields: Vec<String>,
}

/// `fold = { fields = [...], key = "...", group = "...", within_ms = N, max = M }` on a rule:
/// a line the rule matches whose key equals that of an event emitted, in the same group of
/// the same parser, at most `within_ms` earlier (by the lines' own times), emits nothing: it
/// logs again what that event recorded. The key is the values of `fields` of the event plus
/// the `key` template (captures of this rule's regex, `{$.json}` paths, ...). The group
/// defaults to the rule's pattern; rules with `fold` in one group share it, so the first
/// line of a pair can come from one rule and the second from another. A line that does not
/// fold becomes an event the later lines of its group may fold into, each absorbing at most
/// `max` (default 1), so a burst of real attempts is not merged into one.
///
/// Made for libpq's `sslmode=prefer`, which repeats a refused login without SSL (the server
/// logs two failures for one attempt), and MariaDB's DISCONNECT after a FAILED_CONNECT. The
/// state lives in memory: a restart between the two lines emits both.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FoldSpec {
    /// Event fields that must be equal (unset counts as a value: equal when both unset).
    #[serde(default)]
    pub fields: Vec<String>,
    /// A template that must render equal, for values that are not event fields.
    #[serde(default)]
    pub key: Option<String>,
    /// The rules whose events fold into each other (default: the rule's pattern).
    #[serde(default)]
    pub group: Option<String>,
    /// The longest gap, in milliseconds, between the kept event and a folded line.
    pub within_ms: u64,
    /// How many lines one kept event absorbs.
    #[serde(default = "default_fold_max")]
    pub max: u32,
}

fn default_fold_max() -> u32 {
    1
}

/// A sample line and a short statement of what it produces.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SampleSpec {
    /// The input line, as it appears in the log file.
    pub line: String,
    /// What it yields: `nothing` (a `pattern = "none"` rule), `unmatched`, `folded` (a
    /// `fold` into the event of a sample before it: samples are read in order, as one log), or the pattern
    /// followed by every set value as `field=value` in field declaration order, `time` first
    /// (as a FHIR instant), values containing spaces in double quotes, e.g.
    /// `login time=2026-11-25T15:22:44+00:00 outcome=0 user=alice`. Tests check it exactly.
    pub yields: String,
}

/// A file of parsers (the form presets are stored in).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParserFile {
    /// The parsers in the file.
    pub parsers: Vec<ParserSpec>,
}

//! The parser engine: configured parsers (user-defined `[[parsers]]` or built-in
//! [`presets`]) turn a [`Decoded`](crate::decode::Decoded) line into zero or more
//! [`Extracted`] records: which event pattern to emit and the [`Fields`] captured for it.

pub mod engine;
pub mod fields;
pub mod presets;
pub mod spec;

pub use fields::{FieldName, Fields};

use crate::decode::Stamp;
use std::sync::Arc;

/// The kind of event a rule emits (SPEC §4 pattern names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// A FHIR REST request; the interaction (create/read/…/search) follows from method and URL.
    Rest,
    /// A create of a data object.
    Create,
    /// A read of a data object.
    Read,
    /// An update of a data object.
    Update,
    /// A delete of a data object.
    Delete,
    /// A query / search.
    Query,
    /// A user authentication (success or failure).
    Login,
    /// The end of a user session.
    Logout,
    /// A security-relevant action (DCM 110113 with a DCM subtype).
    SecurityAlert,
    /// A disclosure of patient data to a recipient (recorded by the disclosing side).
    Disclosure,
    /// Patient data received from another party (recorded by the recipient side).
    DisclosureReceived,
    /// A database access (no BALP profile exists): `command` holds the SQL verb (SELECT,
    /// INSERT, UPDATE, DELETE, …), `resource` the table as logged.
    Database,
}

impl Pattern {
    /// The name used in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Rest => "rest",
            Pattern::Create => "create",
            Pattern::Read => "read",
            Pattern::Update => "update",
            Pattern::Delete => "delete",
            Pattern::Query => "query",
            Pattern::Login => "login",
            Pattern::Logout => "logout",
            Pattern::SecurityAlert => "security-alert",
            Pattern::Disclosure => "disclosure",
            Pattern::DisclosureReceived => "disclosure-received",
            Pattern::Database => "database",
        }
    }
}

/// What one parser rule made of one line.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    /// Name of the parser that matched (for per-parser counts).
    pub parser: Arc<str>,
    /// Which event to emit.
    pub pattern: Pattern,
    /// When it happened: the rule's `time` field if set, else the decoder's header time.
    pub time: Option<Stamp>,
    /// The line's time could not be read (a `time` that does not parse, or no time at all):
    /// `time` is the header's time or None, and the event is flagged and counted.
    pub time_unreadable: bool,
    /// The captured fields.
    pub fields: Fields,
}

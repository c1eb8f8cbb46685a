//! The parser engine: configured parsers (user-defined `[[parsers]]` or built-in
//! [`presets`]) turn a [`Decoded`](crate::decode::Decoded) line into zero or more
//! [`Extracted`] records: which event pattern to emit and the [`Fields`] captured for it.

pub mod engine;
pub mod fields;
pub mod presets;
/// The TOML form of a parser (defined with the rest of the configuration).
pub use crate::config::parser as spec;

pub use fields::{FieldName, Fields};

use crate::decode::Stamp;
use std::sync::Arc;

macro_rules! patterns {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal ),* $(,)?) => {
        /// The kind of event a rule emits (SPEC §4 pattern names).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
        pub enum Pattern {
            $( $(#[$doc])* #[serde(rename = $name)] $variant ),*
        }

        impl Pattern {
            /// Every pattern, in declaration order: the one table of pattern names.
            pub const ALL: &'static [Pattern] = &[ $( Pattern::$variant ),* ];

            /// The name used in TOML, metrics and the spool.
            pub const fn as_str(self) -> &'static str {
                match self { $( Pattern::$variant => $name ),* }
            }

            /// Look a TOML name up.
            pub fn parse(name: &str) -> Option<Pattern> {
                match name { $( $name => Some(Pattern::$variant), )* _ => None }
            }
        }
    };
}

patterns! {
    /// A FHIR REST request; the interaction (create/read/…/search) follows from method and URL.
    Rest = "rest",
    /// A create of a data object.
    Create = "create",
    /// A read of a data object.
    Read = "read",
    /// An update of a data object.
    Update = "update",
    /// A delete of a data object.
    Delete = "delete",
    /// A query / search.
    Query = "query",
    /// A user authentication (success or failure).
    Login = "login",
    /// The end of a user session.
    Logout = "logout",
    /// A security-relevant action (DCM 110113 with a DCM subtype).
    SecurityAlert = "security-alert",
    /// A disclosure of patient data to a recipient (recorded by the disclosing side).
    Disclosure = "disclosure",
    /// Patient data received from another party (recorded by the recipient side).
    DisclosureReceived = "disclosure-received",
    /// A database access (no BALP profile exists): `command` holds the SQL verb (SELECT,
    /// INSERT, UPDATE, DELETE, …), `resource` the table as logged.
    Database = "database",
}

/// What a rule's `pattern` may name: every [`Pattern`], then `none` (a rule that matches
/// known noise and emits nothing).
pub const PATTERN_NAMES: &[&str] = &{
    let mut names = [""; Pattern::ALL.len() + 1];
    let mut i = 0;
    while i < Pattern::ALL.len() {
        names[i] = Pattern::ALL[i].as_str();
        i += 1;
    }
    names[i] = "none";
    names
};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_names_every_pattern_everywhere() {
        for p in Pattern::ALL {
            assert_eq!(Pattern::parse(p.as_str()), Some(*p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert_eq!(PATTERN_NAMES.len(), Pattern::ALL.len() + 1);
        assert_eq!(PATTERN_NAMES.last(), Some(&"none"));
        assert_eq!(Pattern::parse("none"), None);
    }
}

//! The named fields a parser can fill from a line. They are the whole vocabulary between the
//! parser engine and the BALP mapping: a parser rule says `user = "{user}"`, the mapping reads
//! [`FieldName::User`].

macro_rules! field_names {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal ),* $(,)?) => {
        /// A field a parser rule can set.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum FieldName {
            $( $(#[$doc])* $variant ),*
        }

        impl FieldName {
            /// Every field, in declaration order.
            pub const ALL: &'static [FieldName] = &[ $( FieldName::$variant ),* ];

            /// The name used in TOML.
            pub fn as_str(self) -> &'static str {
                match self { $( FieldName::$variant => $name ),* }
            }

            /// Look a TOML name up.
            pub fn parse(name: &str) -> Option<FieldName> {
                match name { $( $name => Some(FieldName::$variant), )* _ => None }
            }
        }
    };
}

field_names! {
    /// When it happened, as written in the line (read with the rule's `time_format`).
    Time = "time",
    /// Outcome: `0`/`4`/`8`/`12`, or `success` / `failure` / `serious` / `major`.
    Outcome = "outcome",
    /// HTTP status code; 4xx gives outcome 4, 5xx gives 8.
    Status = "status",
    /// Free-text description of the outcome.
    OutcomeDesc = "outcome_desc",
    /// The user's identifier (login name, token subject).
    User = "user",
    /// The user's display name (comprehensive mode only).
    UserName = "user_name",
    /// The user's role.
    UserRole = "user_role",
    /// Network address of the client (IP or host name).
    ClientAddress = "client_address",
    /// Client application identifier (e.g. the OAuth client_id or the user agent).
    ClientId = "client_id",
    /// Network address of the server; defaults to the agent's host name.
    ServerAddress = "server_address",
    /// First hop of X-Forwarded-For, when the parser captured it.
    ForwardedFor = "forwarded_for",
    /// HTTP method.
    Method = "method",
    /// Request target (path and query, raw as logged).
    Url = "url",
    /// X-Request-Id / transaction id of the request.
    RequestId = "request_id",
    /// Patient id(s) touched, comma-separated; in addition to those found in the URL.
    Patient = "patient",
    /// The data object touched, `Type/id` or a name (table, file).
    Resource = "resource",
    /// A query, kept raw (base64 in the event).
    Query = "query",
    /// Human-readable description of the object or query.
    Description = "description",
    /// The user a command ran as / was switched to.
    TargetUser = "target_user",
    /// A command line (sudo) or statement.
    Command = "command",
    /// Event subtype code (DCM) for security alerts, e.g. `110132`.
    Subtype = "subtype",
    /// Database name.
    Database = "database",
    /// Terminal or session the action came from.
    Terminal = "terminal",
    /// OAuth token id (jti).
    Jti = "jti",
    /// OAuth token issuer (iss).
    Issuer = "iss",
    /// Purpose of use code.
    PurposeOfUse = "purpose_of_use",
    /// Full statement text (SQL); only comprehensive mode puts it in events, redacted.
    Statement = "statement",
    /// The account that started a switch of user (the user who ran `su`); `user` is the
    /// account switched to.
    InvokingUser = "invoking_user",
    /// An opaque OAuth bearer token; only its last 32 characters reach an event.
    Token = "token",
    /// SAML assertion Subject NameID.
    SamlSubject = "saml_subject",
    /// SAML assertion Issuer.
    SamlIssuer = "saml_issuer",
    /// SAML assertion ID.
    SamlAssertionId = "saml_assertion_id",
}

/// Values of the fields a rule filled. Empty strings and `-` are treated as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    values: Vec<(FieldName, String)>,
}

impl Fields {
    /// Room for `n` fields without regrowing.
    pub fn with_capacity(n: usize) -> Fields {
        Fields {
            values: Vec::with_capacity(n),
        }
    }

    /// Set a field (replacing an earlier value). Values that mean "nothing" in logs (`""`, `-`)
    /// are not stored.
    pub fn set(&mut self, name: FieldName, value: impl Into<String>) {
        let value = value.into();
        let trimmed = value.trim();
        if trimmed.is_empty() || trimmed == "-" {
            self.values.retain(|(n, _)| *n != name);
            return;
        }
        if let Some(slot) = self.values.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            self.values.push((name, value));
        }
    }

    /// Read a field.
    pub fn get(&self, name: FieldName) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All set fields.
    pub fn iter(&self) -> impl Iterator<Item = (FieldName, &str)> {
        self.values.iter().map(|(n, v)| (*n, v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in FieldName::ALL {
            assert_eq!(FieldName::parse(f.as_str()), Some(*f));
        }
        assert_eq!(FieldName::parse("nope"), None);
    }

    #[test]
    fn dash_and_empty_mean_absent() {
        let mut f = Fields::default();
        f.set(FieldName::User, "-");
        assert_eq!(f.get(FieldName::User), None);
        f.set(FieldName::User, "alice");
        f.set(FieldName::User, "bob");
        assert_eq!(f.get(FieldName::User), Some("bob"));
    }
}

//! `[[alerts]]`: the discrepancy-alert rules as written (docs/alerts.md). The resolved rules,
//! with their defaults filled in, are built by [`crate::alert::rules`].

use super::{ConfigDuration, OneOrMany};
use serde::Deserialize;

macro_rules! rule_kinds {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal ),* $(,)?) => {
        /// `[[alerts]] rule`: which detector an entry configures.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        pub enum AlertRuleKind {
            $( $(#[$doc])* #[serde(rename = $name)] $variant ),*
        }

        impl AlertRuleKind {
            /// Every rule, in documentation order.
            pub const ALL: &'static [AlertRuleKind] = &[ $( AlertRuleKind::$variant ),* ];
            /// The names used in TOML (for `check`).
            pub const NAMES: &'static [&'static str] = &[ $( $name ),* ];

            /// The name used in TOML, in alert ids, subtypes and metrics.
            pub const fn as_str(self) -> &'static str {
                match self { $( AlertRuleKind::$variant => $name ),* }
            }

            /// Look a TOML name up.
            pub fn parse(name: &str) -> Option<AlertRuleKind> {
                match name { $( $name => Some(AlertRuleKind::$variant), )* _ => None }
            }
        }
    };
}

rule_kinds! {
    /// N failed logins for one user or from one address within a window.
    FailedLoginBurst = "failed-login-burst",
    /// A successful login right after a burst of failures (same user or address).
    SuccessAfterFailures = "success-after-failures",
    /// One user reading or querying many distinct patients within a window.
    ManyPatients = "many-patients",
    /// Access outside working hours (weekdays, hours, time zone).
    OffHours = "off-hours",
    /// Any access to listed patients or by listed users.
    Watchlist = "watchlist",
    /// A source that produced lines has produced none for a while.
    SilentSource = "silent-source",
}

/// One `[[alerts]]` entry. Every key but `rule` is optional; a key a rule does not use is an
/// error reported by `check`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Which detector.
    pub rule: AlertRuleKind,
    /// Instance name (default: the rule's name); an entry named like a built-in default
    /// replaces it.
    #[serde(default)]
    pub name: Option<String>,
    /// `false` turns the rule off.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Events (or distinct patients) that make an alert.
    #[serde(default)]
    pub threshold: Option<usize>,
    /// The stretch of event time the threshold must be reached within.
    #[serde(default)]
    pub window: Option<ConfigDuration>,
    /// An incident ends after this much event time without a further matching event.
    #[serde(default)]
    pub cooldown: Option<ConfigDuration>,
    /// `user` and/or `address`: what failures are counted per.
    #[serde(default)]
    pub by: Option<OneOrMany>,
    /// `watchlist`: patient ids.
    #[serde(default)]
    pub patients: Vec<String>,
    /// `watchlist`: user ids.
    #[serde(default)]
    pub users: Vec<String>,
    /// Users a rule leaves alone (service accounts).
    #[serde(default)]
    pub ignore_users: Vec<String>,
    /// `off-hours`: working days (`mon` … `sun`).
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// `off-hours`: working hours, `"HH:MM-HH:MM"`.
    #[serde(default)]
    pub hours: Option<String>,
    /// `off-hours`: IANA zone of the working hours (default: the system's).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Only lines and events of these sources (default: all).
    #[serde(default)]
    pub sources: Option<OneOrMany>,
    /// `silent-source`: no line for this long (wall clock) raises the alert.
    #[serde(default)]
    pub silent_after: Option<ConfigDuration>,
    /// Keys (users, addresses, patients) tracked at most; the least recently active go.
    #[serde(default)]
    pub max_keys: Option<usize>,
}

/// The keys each rule takes besides `rule`, `name` and `enabled` (for `check`).
pub fn rule_keys(kind: AlertRuleKind) -> &'static [&'static str] {
    match kind {
        AlertRuleKind::FailedLoginBurst | AlertRuleKind::SuccessAfterFailures => &[
            "threshold",
            "window",
            "cooldown",
            "by",
            "ignore_users",
            "sources",
            "max_keys",
        ],
        AlertRuleKind::ManyPatients => &[
            "threshold",
            "window",
            "cooldown",
            "ignore_users",
            "sources",
            "max_keys",
        ],
        AlertRuleKind::OffHours => &[
            "days",
            "hours",
            "timezone",
            "cooldown",
            "ignore_users",
            "sources",
            "max_keys",
        ],
        AlertRuleKind::Watchlist => &["patients", "users", "cooldown", "sources", "max_keys"],
        AlertRuleKind::SilentSource => &["silent_after", "sources"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_names_round_trip() {
        assert_eq!(AlertRuleKind::ALL.len(), AlertRuleKind::NAMES.len());
        for k in AlertRuleKind::ALL {
            assert_eq!(AlertRuleKind::parse(k.as_str()), Some(*k));
        }
    }
}

//! The resolved alert rules: `[[alerts]]` entries with their defaults filled in, plus the
//! built-in default instances (docs/alerts.md, "Defaults").

use crate::config::{AlertConfig, AlertRuleKind, Config};
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use std::collections::BTreeSet;
use std::time::Duration;

/// What failures are counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The user the login named.
    User,
    /// The client address the login came from.
    Address,
}

impl By {
    /// The prefix of keys of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            By::User => "user",
            By::Address => "address",
        }
    }
}

/// Working hours for `off-hours`.
#[derive(Debug, Clone)]
pub struct Calendar {
    /// Working days.
    pub days: Vec<Weekday>,
    /// Start of work, minutes after midnight.
    pub from_min: u16,
    /// End of work (exclusive), minutes after midnight; less than `from_min` spans midnight.
    pub to_min: u16,
    /// The zone the hours are meant in.
    pub tz: TimeZone,
}

impl Calendar {
    /// Whether `ts` lies outside working hours.
    pub fn outside(&self, ts: jiff::Timestamp) -> bool {
        let dt = self.tz.to_datetime(ts);
        let minute = dt.hour() as u16 * 60 + dt.minute() as u16;
        let in_hours = if self.from_min <= self.to_min {
            (self.from_min..self.to_min).contains(&minute)
        } else {
            minute >= self.from_min || minute < self.to_min
        };
        !(self.days.contains(&dt.weekday()) && in_hours)
    }
}

/// One resolved rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Instance name (ids, state, metrics).
    pub name: String,
    /// Which detector.
    pub kind: AlertRuleKind,
    /// Events (or distinct patients) that make an alert.
    pub threshold: usize,
    /// Event-time window of the threshold.
    pub window: Duration,
    /// Quiet event time that ends an incident.
    pub cooldown: Duration,
    /// Keys of the login rules.
    pub by: Vec<By>,
    /// Watched patients.
    pub patients: BTreeSet<String>,
    /// Watched users.
    pub users: BTreeSet<String>,
    /// Users left alone.
    pub ignore_users: BTreeSet<String>,
    /// `off-hours` calendar.
    pub calendar: Option<Calendar>,
    /// Only these sources (empty: all).
    pub sources: BTreeSet<String>,
    /// `silent-source` threshold (wall clock).
    pub silent_after: Duration,
    /// Keys tracked at most.
    pub max_keys: usize,
}

impl Rule {
    /// Whether the rule looks at lines and events of `source`.
    pub fn covers(&self, source: &str) -> bool {
        self.sources.is_empty() || self.sources.contains(source)
    }
}

/// Keys tracked per rule unless `max_keys` says otherwise.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// The rules on when `[[alerts]]` does not name them.
pub const DEFAULT_ON: &[AlertRuleKind] = &[
    AlertRuleKind::FailedLoginBurst,
    AlertRuleKind::SuccessAfterFailures,
    AlertRuleKind::ManyPatients,
    AlertRuleKind::SilentSource,
];

const MIN: u64 = 60;

/// (threshold, window, cooldown) defaults of a rule.
fn defaults(kind: AlertRuleKind) -> (usize, Duration, Duration) {
    let d = Duration::from_secs;
    match kind {
        // Wazuh/OSSEC's sshd brute-force rule: 8 failures in 120 s.
        AlertRuleKind::FailedLoginBurst => (8, d(2 * MIN), d(10 * MIN)),
        AlertRuleKind::SuccessAfterFailures => (5, d(10 * MIN), d(10 * MIN)),
        AlertRuleKind::ManyPatients => (50, d(60 * MIN), d(60 * MIN)),
        AlertRuleKind::OffHours => (1, Duration::ZERO, d(8 * 60 * MIN)),
        AlertRuleKind::Watchlist => (1, Duration::ZERO, d(60 * MIN)),
        AlertRuleKind::SilentSource => (1, Duration::ZERO, Duration::ZERO),
    }
}

/// Default `silent_after`.
pub const DEFAULT_SILENT_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Default working hours of `off-hours`.
pub const DEFAULT_HOURS: &str = "07:00-19:00";
/// Default working days of `off-hours`.
pub const DEFAULT_DAYS: &[&str] = &["mon", "tue", "wed", "thu", "fri"];

/// A weekday from its TOML name (`mon` … `sun`, or the full English name).
pub fn weekday(name: &str) -> Option<Weekday> {
    let n = name.trim().to_ascii_lowercase();
    let w = match n.get(..3)? {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    };
    let full = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    (n.len() == 3 || full.contains(&n.as_str())).then_some(w)
}

/// `"HH:MM-HH:MM"` as minutes after midnight (from, to); `to` may be `24:00`.
pub fn hours(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid hours {s:?}: expected \"HH:MM-HH:MM\", e.g. \"07:00-19:00\"");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let minute = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
    };
    let (from, to) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
    if from == to {
        return Err(format!(
            "invalid hours {s:?}: start and end are equal (no working time)"
        ));
    }
    Ok((from, to))
}

/// Build one rule from an entry (defaults for every key left out).
pub fn resolve(c: &AlertConfig) -> Result<Rule, String> {
    let (threshold, window, cooldown) = defaults(c.rule);
    let by = match &c.by {
        None => vec![By::User, By::Address],
        Some(list) => {
            let mut by = Vec::new();
            for b in list.to_vec() {
                match b.as_str() {
                    "user" => by.push(By::User),
                    "address" => by.push(By::Address),
                    other => {
                        return Err(format!(
                            "by: unknown value {other:?} (allowed: user, address)"
                        ));
                    }
                }
            }
            by.dedup();
            by
        }
    };
    let calendar = if c.rule == AlertRuleKind::OffHours {
        let names: Vec<String> = c
            .days
            .clone()
            .unwrap_or_else(|| DEFAULT_DAYS.iter().map(|d| (*d).to_owned()).collect());
        let mut days = Vec::new();
        for d in &names {
            days.push(weekday(d).ok_or_else(|| {
                format!("days: unknown day {d:?} (use mon, tue, wed, thu, fri, sat, sun)")
            })?);
        }
        let (from_min, to_min) = hours(c.hours.as_deref().unwrap_or(DEFAULT_HOURS))
            .map_err(|e| format!("hours: {e}"))?;
        let tz = match &c.timezone {
            Some(z) => crate::decode::zone(z).map_err(|e| format!("timezone: {e}"))?,
            None => TimeZone::system(),
        };
        Some(Calendar {
            days,
            from_min,
            to_min,
            tz,
        })
    } else {
        None
    };
    let set = |v: &[String]| v.iter().map(|s| s.trim().to_owned()).collect();
    Ok(Rule {
        name: c.name.clone().unwrap_or_else(|| c.rule.as_str().to_owned()),
        kind: c.rule,
        threshold: c.threshold.unwrap_or(threshold).max(1),
        window: c.window.map_or(window, |w| w.0),
        cooldown: c.cooldown.map_or(cooldown, |w| w.0),
        by,
        patients: set(&c.patients),
        users: set(&c.users),
        ignore_users: set(&c.ignore_users),
        calendar,
        sources: c
            .sources
            .as_ref()
            .map(|s| set(&s.to_vec()))
            .unwrap_or_default(),
        silent_after: c.silent_after.map_or(DEFAULT_SILENT_AFTER, |d| d.0),
        max_keys: c.max_keys.unwrap_or(DEFAULT_MAX_KEYS).max(1),
    })
}

/// The rules in force: the built-in defaults not replaced by an entry of the same name,
/// then every enabled entry, in file order. Problems name the entry (`alerts[i].key`).
pub fn from_config(config: &Config) -> Result<Vec<Rule>, Vec<String>> {
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    let named = |c: &AlertConfig| c.name.clone().unwrap_or_else(|| c.rule.as_str().to_owned());
    for kind in DEFAULT_ON {
        if config.alerts.iter().any(|c| named(c) == kind.as_str()) {
            continue;
        }
        let entry = AlertConfig::default_for(*kind);
        match resolve(&entry) {
            Ok(r) => rules.push(r),
            Err(e) => problems.push(format!("alerts (default {}): {e}", kind.as_str())),
        }
    }
    for (i, c) in config.alerts.iter().enumerate() {
        if c.enabled == Some(false) {
            continue;
        }
        match resolve(c) {
            Ok(r) => rules.push(r),
            Err(e) => problems.push(format!("alerts[{i}].{e}")),
        }
    }
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems)
    }
}

impl AlertConfig {
    /// An entry naming only `rule` (every other key at its default).
    pub fn default_for(rule: AlertRuleKind) -> AlertConfig {
        AlertConfig {
            rule,
            name: None,
            enabled: None,
            threshold: None,
            window: None,
            cooldown: None,
            by: None,
            patients: Vec::new(),
            users: Vec::new(),
            ignore_users: Vec::new(),
            days: None,
            hours: None,
            timezone: None,
            sources: None,
            silent_after: None,
            max_keys: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_and_days_parse() {
        assert_eq!(hours("07:00-19:00"), Ok((420, 1140)));
        assert_eq!(hours("22:00-06:30"), Ok((1320, 390)));
        assert_eq!(hours("00:00-24:00"), Ok((0, 1440)));
        assert!(hours("7-19").is_err());
        assert!(hours("07:00-07:00").is_err());
        assert!(hours("25:00-26:00").is_err());
        assert_eq!(weekday("Sat"), Some(Weekday::Saturday));
        assert_eq!(weekday("sunday"), Some(Weekday::Sunday));
        assert_eq!(weekday("sundae"), None);
        assert_eq!(weekday("x"), None);
    }

    #[test]
    fn calendar_knows_weekends_nights_and_spans_over_midnight() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let cal = Calendar {
            days: DEFAULT_DAYS.iter().filter_map(|d| weekday(d)).collect(),
            from_min: 420,
            to_min: 1140,
            tz: tz.clone(),
        };
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        // Wednesday 2026-11-25, 15:00 UTC = 16:00 in Berlin.
        assert!(!cal.outside(at("2026-11-25T15:00:00Z")));
        // 18:30 UTC = 19:30 in Berlin: after hours.
        assert!(cal.outside(at("2026-11-25T18:30:00Z")));
        // 06:30 UTC = 07:30 in Berlin: within.
        assert!(!cal.outside(at("2026-11-25T06:30:00Z")));
        // Saturday.
        assert!(cal.outside(at("2026-11-28T10:00:00Z")));
        let night = Calendar {
            from_min: 1320,
            to_min: 360,
            ..cal
        };
        assert!(!night.outside(at("2026-11-25T23:30:00Z")));
        assert!(night.outside(at("2026-11-25T12:00:00Z")));
    }

    #[test]
    fn defaults_apply_unless_an_entry_replaces_or_disables_them() {
        let cfg: Config = toml::from_str("").unwrap();
        let names: Vec<String> = from_config(&cfg)
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            names,
            [
                "failed-login-burst",
                "success-after-failures",
                "many-patients",
                "silent-source"
            ]
        );
        let cfg: Config = toml::from_str(
            "[[alerts]]\nrule = \"many-patients\"\nenabled = false\n\
             [[alerts]]\nrule = \"failed-login-burst\"\nthreshold = 3\nby = \"address\"\n\
             [[alerts]]\nrule = \"watchlist\"\nname = \"vip\"\npatients = [\"p1\"]\n",
        )
        .unwrap();
        let rules = from_config(&cfg).unwrap();
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "success-after-failures",
                "silent-source",
                "failed-login-burst",
                "vip"
            ]
        );
        let burst = &rules[2];
        assert_eq!(
            (burst.threshold, burst.by.as_slice()),
            (3, &[By::Address][..])
        );
        assert_eq!(burst.window, Duration::from_secs(120));
    }
}

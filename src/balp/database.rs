//! Database access (`Pattern::Database`, e.g. pgaudit): one SQL statement becomes an AuditEvent
//! in the DICOM style older IHE audit profiles used, since BALP has no database profile — no
//! BALP profile is claimed.
//!
//! In: the fields `command` (SQL verb), `resource` (table as logged), `database`, `user` (db
//! role), `client_address`/`client_id`, `statement` (SQL text), `patient`. Out: a `Built`
//! event (one event per patient after fan-out). Guarantees: the SQL text appears only in
//! comprehensive mode and only after [`redact_sql`]; `source.type` is 5 Database Server.
//!
//! Decisions (by verb, case-insensitive):
//!
//! | verb | type | action |
//! |---|---|---|
//! | SELECT (also WITH, SHOW, FETCH) | DCM 110112 Query | E |
//! | INSERT | DCM 110110 Patient Record | C |
//! | UPDATE, MERGE | 110110 | U |
//! | DELETE, TRUNCATE (removes rows) | 110110 | D |
//! | COPY … FROM (bulk load) | 110110 | C |
//! | COPY … TO / COPY without a known direction (bulk export) | 110110 | R |
//! | GRANT, REVOKE, CREATE/ALTER/DROP ROLE or USER | DCM 110113 Security Alert, subtype 110136 Security Roles Changed | E |
//! | anything else (DDL, CALL, DO, unknown or missing verb) | 110110 | E |
//!
//! * Each table is an entity `audit-entity-type#2` System Object with role `object-role#22`
//!   Table (R4 object-role defines Table; `Domain Resource` is for FHIR resources),
//!   `what.identifier.value` = the name exactly as logged (schema-qualified when the log is);
//!   `resource = "a, b"` names several.
//! * The database is an entity `#2` with role `object-role#17` Data Repository,
//!   `what.identifier.value` = its name: it is the store the table lives in, not a participant.
//! * The db role is the user agent (`who.identifier.value`), typed IRCP for reads and AUT for
//!   everything else like the REST patterns; the client is `DCM#110153` Source Role ID with
//!   its network address (only when an address or client id is known); the database server
//!   (`server_address` or the host) is `DCM#110152` Destination Role ID.
//! * Comprehensive mode adds the redacted statement as an entity `#2` with role `object-role#24`
//!   Query and the statement as `description` (no base64 `query`: the raw statement may hold
//!   secrets).

use super::MapContext;
use super::agents as m;
use super::codes::{self, Code};
use super::model::{Action, AuditEvent, Entity, Reference};
use super::parts::{self as mp, Built, Claim};
use crate::config::Mode;
use crate::parse::{FieldName as F, Fields};
use std::borrow::Cow;
use std::sync::LazyLock;

/// object-role#22 Table.
const ROLE_TABLE: Code = Code {
    system: codes::SYS_OBJECT_ROLE,
    code: "22",
    display: "Table",
};
/// object-role#17 Data Repository.
const ROLE_DATA_REPOSITORY: Code = Code {
    system: codes::SYS_OBJECT_ROLE,
    code: "17",
    display: "Data Repository",
};
/// security-source-type 5 Database Server.
const SOURCE_DATABASE_SERVER: &str = "5";

/// What a SQL verb is recorded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// DCM 110112 Query.
    Query,
    /// DCM 110110 Patient Record with this action.
    Record(Action),
    /// DCM 110113 Security Alert / 110136 Security Roles Changed.
    RolesChanged,
}

/// Classify a SQL verb (with the statement, when known, for COPY's direction and role DDL).
pub fn classify(command: Option<&str>, statement: Option<&str>) -> DbKind {
    let verb = command
        .and_then(|c| c.split_whitespace().next())
        .or_else(|| statement.and_then(|s| s.split_whitespace().next()))
        .unwrap_or("")
        .to_ascii_uppercase();
    let words: Vec<String> = statement
        .unwrap_or("")
        .split_whitespace()
        .take(64)
        .map(str::to_ascii_uppercase)
        .collect();
    let second = command
        .and_then(|c| c.split_whitespace().nth(1))
        .map(str::to_ascii_uppercase)
        .or_else(|| words.get(1).cloned())
        .unwrap_or_default();
    match verb.as_str() {
        "SELECT" | "WITH" | "SHOW" | "FETCH" => DbKind::Query,
        "INSERT" => DbKind::Record(Action::C),
        "UPDATE" | "MERGE" => DbKind::Record(Action::U),
        "DELETE" | "TRUNCATE" => DbKind::Record(Action::D),
        "COPY" => {
            if words.iter().any(|w| w == "FROM") {
                DbKind::Record(Action::C)
            } else {
                DbKind::Record(Action::R)
            }
        }
        "GRANT" | "REVOKE" => DbKind::RolesChanged,
        "CREATE" | "ALTER" | "DROP" if second == "ROLE" || second == "USER" => DbKind::RolesChanged,
        _ => DbKind::Record(Action::E),
    }
}

static SECRETS: LazyLock<Vec<regex::Regex>> = LazyLock::new(|| {
    [
        // PASSWORD 'x' / ENCRYPTED PASSWORD 'x' / IDENTIFIED BY 'x' (quoted, '' escapes)
        r"(?i)(\b(?:password|identified\s+by)\s*)'(?:[^']|'')*'?",
        r#"(?i)(\b(?:password|identified\s+by)\s*)"(?:[^"]|"")*"?"#,
        // password=x in connection strings (dblink, postgres_fdw options)
        r#"(?i)(\b(?:password|pwd)\s*=\s*)(?:'(?:[^']|'')*'?|"[^"]*"?|[^\s;'",)]+)"#,
        // IDENTIFIED BY x without quotes (MySQL/Oracle)
        r"(?i)(\bidentified\s+by\s+)[^\s;'\x22]+",
    ]
    .iter()
    .filter_map(|p| regex::Regex::new(p).ok())
    .collect()
});

/// The SQL text with passwords replaced by `'***'` (`PASSWORD '…'`, `password=…`,
/// `IDENTIFIED BY '…'`); borrowed when there was nothing to redact.
pub fn redact_sql(sql: &str) -> Cow<'_, str> {
    let mut out: Cow<'_, str> = Cow::Borrowed(sql);
    for re in SECRETS.iter() {
        if re.is_match(&out) {
            out = Cow::Owned(re.replace_all(&out, "$1'***'").into_owned());
        }
    }
    out
}

/// The tables `resource` names: one, or several as `a, b` (a statement's tables, e.g. from
/// MariaDB's TABLE rows), each once. A `, ` inside a quoted identifier (`public."a, b"`, as
/// pgaudit logs such a name) is part of the name.
fn tables<'a>(resource: Option<&'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    let Some(r) = resource else {
        return out;
    };
    let mut push = |t: &'a str| {
        let t = t.trim();
        if !t.is_empty() && !out.contains(&t) {
            out.push(t);
        }
    };
    let (mut quote, mut start) = (None, 0);
    let bytes = r.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'`') => quote = Some(b),
            (Some(q), _) if b == q => quote = None,
            (None, b',') if bytes.get(i + 1) == Some(&b' ') => {
                push(&r[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&r[start..]);
    out
}

/// Build the event of one database access.
pub(super) fn database_event(ctx: &MapContext, f: &Fields) -> Built {
    let statement = f.get(F::Statement);
    let kind = classify(f.get(F::Command), statement);
    let (type_, subtype, action) = match kind {
        DbKind::Query => (codes::DCM_QUERY, None, Action::E),
        DbKind::Record(a) => (codes::DCM_PATIENT_RECORD, None, a),
        DbKind::RolesChanged => (
            codes::DCM_SECURITY_ALERT,
            Some(codes::DCM_SECURITY_ROLES_CHANGED),
            Action::E,
        ),
    };
    let mut ev = AuditEvent {
        type_: type_.coding(),
        subtype: subtype.map(|s| s.coding()).into_iter().collect(),
        action: Some(action),
        outcome: Some(mp::outcome(f)),
        outcome_desc: f.get(F::OutcomeDesc).map(str::to_owned),
        ..AuditEvent::default()
    };
    // Those who receive data are recipients, everyone else writes or changes something.
    let user_type = if kind == DbKind::Query || action == Action::R {
        codes::PART_IRCP
    } else {
        codes::PART_AUT
    };
    if let Some(u) = m::user_agent(ctx, f, user_type) {
        ev.agent.push(u);
    }
    let mut client_idx = None;
    if m::client_address(f).is_some() || f.get(F::ClientId).is_some() {
        client_idx = Some(ev.agent.len());
        ev.agent.push(m::client_agent(f, codes::DCM_SOURCE_ROLE_ID));
    }
    ev.agent
        .push(m::server_agent(ctx, f, codes::DCM_DESTINATION_ROLE_ID));
    for table in tables(f.get(F::Resource)) {
        ev.entity.push(Entity {
            what: Some(Reference::identifier(table)),
            type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
            role: Some(ROLE_TABLE.coding()),
            ..Entity::default()
        });
    }
    if let Some(db) = f.get(F::Database).map(str::trim) {
        ev.entity.push(Entity {
            what: Some(Reference::identifier(db)),
            type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
            role: Some(ROLE_DATA_REPOSITORY.coding()),
            ..Entity::default()
        });
    }
    if ctx.mode == Mode::Comprehensive
        && let Some(sql) = statement.map(str::trim).filter(|s| !s.is_empty())
    {
        ev.entity.push(Entity {
            type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
            role: Some(codes::ROLE_QUERY.coding()),
            description: Some(redact_sql(sql).into_owned()),
            ..Entity::default()
        });
    }
    let mut patients = Vec::new();
    mp::field_patients(f, &mut patients);
    let mut b = Built::new(ev, Claim::default(), mp::dedup(patients));
    b.source_type = Some(SOURCE_DATABASE_SERVER);
    b.client_idx = client_idx;
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        for (sql, want) in [
            (
                "ALTER ROLE bob PASSWORD 'hunter2'",
                "ALTER ROLE bob PASSWORD '***'",
            ),
            (
                "create user x with encrypted password 'it''s secret' valid until 'infinity'",
                "create user x with encrypted password '***' valid until 'infinity'",
            ),
            (
                "SELECT dblink_connect('host=db user=a password=s3cr3t dbname=x')",
                "SELECT dblink_connect('host=db user=a password='***' dbname=x')",
            ),
            (
                "CREATE USER 'u'@'%' IDENTIFIED BY 'pw'",
                "CREATE USER 'u'@'%' IDENTIFIED BY '***'",
            ),
            (
                "ALTER USER scott IDENTIFIED BY tiger;",
                "ALTER USER scott IDENTIFIED BY '***';",
            ),
            (
                "ALTER ROLE bob PASSWORD 'unterminated",
                "ALTER ROLE bob PASSWORD '***'",
            ),
        ] {
            assert_eq!(redact_sql(sql), want, "{sql}");
        }
        assert!(matches!(
            redact_sql("SELECT * FROM patients WHERE id = 1"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn several_tables_are_several_entities() {
        assert_eq!(
            tables(Some("fhir.patient, fhir.observation, fhir.patient")),
            ["fhir.patient", "fhir.observation"]
        );
        assert_eq!(tables(Some("public.orders")), ["public.orders"]);
        assert_eq!(
            tables(Some(r#"public."a, b", `x, y`.t, c"#)),
            [r#"public."a, b""#, "`x, y`.t", "c"]
        );
        assert!(tables(Some(" , ")).is_empty());
        assert!(tables(None).is_empty());
    }

    #[test]
    fn verbs_map_to_dicom_types_and_actions() {
        assert_eq!(classify(Some("select"), None), DbKind::Query);
        assert_eq!(classify(Some("INSERT"), None), DbKind::Record(Action::C));
        assert_eq!(classify(Some("Update"), None), DbKind::Record(Action::U));
        assert_eq!(classify(Some("DELETE"), None), DbKind::Record(Action::D));
        assert_eq!(
            classify(Some("TRUNCATE TABLE"), None),
            DbKind::Record(Action::D)
        );
        assert_eq!(
            classify(Some("COPY"), Some("COPY t FROM '/tmp/x'")),
            DbKind::Record(Action::C)
        );
        assert_eq!(
            classify(Some("COPY"), Some("COPY t TO STDOUT")),
            DbKind::Record(Action::R)
        );
        assert_eq!(classify(Some("GRANT"), None), DbKind::RolesChanged);
        assert_eq!(classify(Some("ALTER ROLE"), None), DbKind::RolesChanged);
        assert_eq!(
            classify(Some("ALTER"), Some("alter role x password 'y'")),
            DbKind::RolesChanged
        );
        assert_eq!(
            classify(Some("CREATE TABLE"), None),
            DbKind::Record(Action::E)
        );
        assert_eq!(classify(None, Some("select 1")), DbKind::Query);
        assert_eq!(classify(None, None), DbKind::Record(Action::E));
    }
}

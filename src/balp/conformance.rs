//! A table-driven conformance checker for AuditEvent JSON: FHIR R4 base rules plus the rules of
//! every BALP profile the event claims in `meta.profile` (REFERENCE.md §1–§7, §9, Appendix A).
//!
//! In: an event as `serde_json::Value`. Out: a list of problems (empty = conformant). It is not
//! a full FHIR validator: it checks the shapes, cardinalities, patterns and slices that a log
//! mapper can get wrong. Slices are matched the way the published profiles do it: an element
//! belongs to a slice when its discriminator (`type`, or `role` for IHE.IUA.71) contains one of
//! the slice's codings.

use super::codes::{self, PROFILE_BASE};
use serde_json::Value;
use std::sync::LazyLock;

/// Elements allowed at the root of an R4 AuditEvent.
const ROOT_ELEMENTS: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
    "type",
    "subtype",
    "action",
    "period",
    "recorded",
    "outcome",
    "outcomeDesc",
    "purposeOfEvent",
    "agent",
    "source",
    "entity",
];
const AGENT_ELEMENTS: &[&str] = &[
    "id",
    "extension",
    "modifierExtension",
    "type",
    "role",
    "who",
    "altId",
    "name",
    "requestor",
    "location",
    "policy",
    "media",
    "network",
    "purposeOfUse",
];
const ENTITY_ELEMENTS: &[&str] = &[
    "id",
    "extension",
    "modifierExtension",
    "what",
    "type",
    "role",
    "lifecycle",
    "securityLabel",
    "name",
    "description",
    "query",
    "detail",
];
const CODING_ELEMENTS: &[&str] = &[
    "id",
    "extension",
    "system",
    "version",
    "code",
    "display",
    "userSelected",
];
const REFERENCE_ELEMENTS: &[&str] = &[
    "id",
    "extension",
    "reference",
    "type",
    "identifier",
    "display",
];

static INSTANT: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$",
    )
    .unwrap_or_else(|e| unreachable!("static regex: {e}"))
});
static BASE64: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^(\s*([0-9a-zA-Z+/=]){4}\s*)+$")
        .unwrap_or_else(|e| unreachable!("static regex: {e}"))
});
static CODE: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^[^\s]+(\s[^\s]+)*$").unwrap_or_else(|e| unreachable!("static regex: {e}"))
});
static ID: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^[A-Za-z0-9\-.]{1,64}$")
        .unwrap_or_else(|e| unreachable!("static regex: {e}"))
});

type Sc = (&'static str, &'static str);

/// Which slice an agent/entity belongs to and what it must carry.
struct Slice {
    name: &'static str,
    /// The discriminator contains any of these (system, code).
    codes: &'static [Sc],
    min: usize,
    max: usize,
    /// Dotted paths that must be present (non-empty).
    required: &'static [&'static str],
    /// Dotted paths that must be absent.
    forbidden: &'static [&'static str],
    /// Arrays limited to one item.
    single: &'static [&'static str],
    requestor: Option<bool>,
    /// (element, allowed codings): when present (or `required`), the Coding must be one of these.
    bound: Option<(&'static str, &'static [Sc])>,
    /// `what` must point to this resource type.
    what_type: Option<&'static str>,
    /// Obeys val-audit-source (`who` identical to `source.observer`).
    audit_source: bool,
    /// Longest allowed `policy` entry in characters (OAuth Opaque: the token's last 32).
    policy_max_chars: Option<usize>,
}

const fn slice(name: &'static str, codes: &'static [Sc], min: usize, max: usize) -> Slice {
    Slice {
        name,
        codes,
        min,
        max,
        required: &[],
        forbidden: &[],
        single: &[],
        requestor: None,
        bound: None,
        what_type: None,
        audit_source: false,
        policy_max_chars: None,
    }
}

/// The rules of one profile (in addition to its parent's).
struct Profile {
    id: &'static str,
    parent: Option<&'static str>,
    type_code: Option<Sc>,
    /// Required subtype slice: allowed codes, min 1, max 1.
    subtype: Option<&'static [Sc]>,
    action: Option<&'static str>,
    outcome_required: bool,
    outcome_fixed: Option<&'static str>,
    agent_min: usize,
    agent_max: Option<usize>,
    agents: &'static [Slice],
    agents_closed: bool,
    entity_min: usize,
    entity_max: Option<usize>,
    /// Entity discriminator element (`type` or `role`).
    entity_disc: &'static str,
    entities: &'static [Slice],
    entities_closed: bool,
    no_modifier_extension: bool,
    /// Stricter than the open slicing: every agent with `requestor = true` must fall in this
    /// slice. Catches a user typed for the wrong direction (IRCP on a write, AUT on a read),
    /// which the open slicing would silently treat as an extra agent.
    requestor_slice: Option<&'static str>,
}

const fn profile(id: &'static str) -> Profile {
    Profile {
        id,
        parent: None,
        type_code: None,
        subtype: None,
        action: None,
        outcome_required: false,
        outcome_fixed: None,
        agent_min: 0,
        agent_max: None,
        agents: &[],
        agents_closed: false,
        entity_min: 0,
        entity_max: None,
        entity_disc: "type",
        entities: &[],
        entities_closed: false,
        no_modifier_extension: false,
        requestor_slice: None,
    }
}

const REST: Sc = (
    "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "rest",
);
const RI: &str = codes::SYS_RESTFUL_INTERACTION;
const DCM: &str = codes::SYS_DCM;
const PT: &str = codes::SYS_PARTICIPATION_TYPE;
const IRCP: &[Sc] = &[(PT, "IRCP")];
const DATA_SOURCES: &[Sc] = &[(PT, "AUT"), (PT, "INF"), (PT, "CST")];
const REST_OBJECT_ROLES: &[Sc] = &[
    (codes::SYS_OBJECT_ROLE, "4"),
    (codes::SYS_OBJECT_ROLE, "3"),
    (codes::SYS_OBJECT_ROLE, "20"),
];
const TYPE_2: &[Sc] = &[(codes::SYS_AUDIT_ENTITY_TYPE, "2")];
const TYPE_1: &[Sc] = &[(codes::SYS_AUDIT_ENTITY_TYPE, "1")];
const XREQ: &[Sc] = &[(codes::SYS_BASIC_AUDIT_ENTITY_TYPE, "XrequestId")];

const fn rest_endpoint(name: &'static str, code: &'static [Sc]) -> Slice {
    Slice {
        required: &["who", "network"],
        forbidden: &["media"],
        ..slice(name, code, 1, 1)
    }
}

const fn rest_user(types: &'static [Sc]) -> Slice {
    Slice {
        required: &["who"],
        forbidden: &["media", "network"],
        requestor: Some(true),
        ..slice("user", types, 0, 1)
    }
}

const TRANSACTION: Slice = Slice {
    required: &["what.identifier.value"],
    ..slice("transaction", XREQ, 0, 1)
};
const fn data(role_required: bool) -> Slice {
    Slice {
        required: if role_required {
            &["what", "role"]
        } else {
            &["what"]
        },
        bound: Some(("role", REST_OBJECT_ROLES)),
        ..slice("data", TYPE_2, 1, 1)
    }
}
const QUERY: Slice = Slice {
    required: &["query", "role"],
    forbidden: &["what", "lifecycle", "detail"],
    bound: Some(("role", &[(codes::SYS_OBJECT_ROLE, "24")])),
    ..slice("query", TYPE_2, 1, 1)
};
const PATIENT: Slice = Slice {
    required: &["what", "role"],
    bound: Some(("role", &[(codes::SYS_OBJECT_ROLE, "1")])),
    what_type: Some("Patient"),
    ..slice("patient", TYPE_1, 1, 1)
};

const fn rest(
    id: &'static str,
    subtypes: &'static [Sc],
    action: &'static str,
    agents: &'static [Slice],
    entities: &'static [Slice],
) -> Profile {
    Profile {
        type_code: Some(REST),
        subtype: Some(subtypes),
        action: Some(action),
        outcome_required: true,
        outcome_fixed: Some("0"),
        agent_min: 2,
        agents,
        entity_min: 1,
        entities,
        requestor_slice: Some("user"),
        ..profile(id)
    }
}

const fn patient_of(id: &'static str, parent: &'static str) -> Profile {
    Profile {
        parent: Some(parent),
        entity_min: 2,
        entities: &[PATIENT],
        ..profile(id)
    }
}

const SRC: &[Sc] = &[(DCM, "110153")];
const DST: &[Sc] = &[(DCM, "110152")];
const APP: &[Sc] = &[(DCM, "110150")];
const CUSTODIAN: &[Sc] = &[(codes::SYS_PROVENANCE_PARTICIPANT_TYPE, "custodian")];
const UA: &str = codes::SYS_USER_AGENT_TYPES;

static PROFILES: &[Profile] = &[
    rest(
        codes::profile::CREATE,
        &[(RI, "create")],
        "C",
        &[
            rest_endpoint("client", SRC),
            rest_endpoint("server", DST),
            rest_user(DATA_SOURCES),
        ],
        &[TRANSACTION, data(true)],
    ),
    patient_of(codes::profile::PATIENT_CREATE, codes::profile::CREATE),
    rest(
        codes::profile::READ,
        &[(RI, "read"), (RI, "vread")],
        "R",
        &[
            rest_endpoint("client", DST),
            rest_endpoint("server", SRC),
            rest_user(IRCP),
        ],
        &[TRANSACTION, data(false)],
    ),
    patient_of(codes::profile::PATIENT_READ, codes::profile::READ),
    rest(
        codes::profile::UPDATE,
        &[(RI, "update"), (RI, "patch")],
        "U",
        &[
            rest_endpoint("client", SRC),
            rest_endpoint("server", DST),
            rest_user(DATA_SOURCES),
        ],
        &[TRANSACTION, data(true)],
    ),
    patient_of(codes::profile::PATIENT_UPDATE, codes::profile::UPDATE),
    rest(
        codes::profile::DELETE,
        &[(RI, "delete")],
        "D",
        &[
            rest_endpoint("client", APP),
            rest_endpoint("server", CUSTODIAN),
            rest_user(DATA_SOURCES),
        ],
        &[TRANSACTION, data(true)],
    ),
    patient_of(codes::profile::PATIENT_DELETE, codes::profile::DELETE),
    rest(
        codes::profile::QUERY,
        &[(RI, "search"), (RI, "search-type"), (RI, "search-system")],
        "E",
        &[
            rest_endpoint("client", SRC),
            rest_endpoint("server", DST),
            rest_user(IRCP),
        ],
        &[TRANSACTION, QUERY],
    ),
    patient_of(codes::profile::PATIENT_QUERY, codes::profile::QUERY),
    disclosure(
        codes::profile::DISCLOSURE_RECIPIENT,
        (DCM, "110107"),
        "C",
        false,
    ),
    disclosure(
        codes::profile::DISCLOSURE_SOURCE,
        (DCM, "110106"),
        "R",
        true,
    ),
    Profile {
        type_code: Some((DCM, "110113")),
        action: Some("E"),
        outcome_required: true,
        no_modifier_extension: true,
        agent_min: 4,
        agents: &[
            Slice {
                required: &["who", "network"],
                forbidden: &["role", "altId", "name", "location", "media", "purposeOfUse"],
                ..slice("client", APP, 1, 1)
            },
            Slice {
                required: &["who"],
                forbidden: &["altId", "location", "media", "network"],
                requestor: Some(true),
                ..slice("user", IRCP, 1, 1)
            },
            Slice {
                required: &["who"],
                forbidden: &[
                    "role", "altId", "name", "location", "policy", "media", "network",
                ],
                requestor: Some(false),
                ..slice("userorg", &[(codes::SYS_ROLE_CLASS, "PROV")], 1, 1)
            },
            Slice {
                required: &["who"],
                forbidden: &[
                    "role",
                    "altId",
                    "name",
                    "location",
                    "policy",
                    "media",
                    "network",
                    "purposeOfUse",
                ],
                requestor: Some(false),
                audit_source: true,
                ..slice(
                    "authorizer",
                    &[(codes::SYS_EXTRA_SECURITY_ROLE_TYPE, "authserver")],
                    1,
                    1,
                )
            },
        ],
        entity_min: 2,
        entities_closed: true,
        entities: &[
            PATIENT,
            Slice {
                required: &["what"],
                ..slice(
                    "consent",
                    &[(codes::SYS_RESOURCE_TYPES, "Consent")],
                    1,
                    usize::MAX,
                )
            },
            Slice {
                required: &["what.identifier.value"],
                ..slice("token", &[(UA, "UserOauthAgent")], 0, 1)
            },
        ],
        ..profile(codes::profile::AUTHZ_CONSENT)
    },
    Profile {
        agents: &[Slice {
            required: &["who", "who.identifier.value", "policy"],
            forbidden: &["altId", "media", "network"],
            single: &["policy"],
            requestor: Some(true),
            ..slice("user", &[(UA, "UserSamlAgent")], 1, usize::MAX)
        }],
        ..profile(codes::profile::SAML_MINIMAL)
    },
    Profile {
        parent: Some(codes::profile::SAML_MINIMAL),
        agents: &[
            Slice {
                required: &["who.identifier.value", "who.display"],
                forbidden: &[
                    "role",
                    "altId",
                    "name",
                    "location",
                    "policy",
                    "media",
                    "network",
                    "purposeOfUse",
                ],
                requestor: Some(false),
                ..slice("userorg", &[(codes::SYS_ROLE_CLASS, "PROV")], 0, usize::MAX)
            },
            Slice {
                required: &["who.identifier"],
                forbidden: &[
                    "role",
                    "altId",
                    "name",
                    "location",
                    "policy",
                    "media",
                    "network",
                    "purposeOfUse",
                ],
                requestor: Some(false),
                ..slice(
                    "homeCommunityId",
                    &[(codes::SYS_XCA, "homeCommunityId")],
                    0,
                    usize::MAX,
                )
            },
        ],
        ..profile(codes::profile::SAML_COMPREHENSIVE)
    },
    Profile {
        agents: &[Slice {
            required: &["policy"],
            single: &["policy"],
            requestor: Some(true),
            policy_max_chars: Some(32),
            ..slice("oUser", &[(UA, "UserOauthAgent")], 1, usize::MAX)
        }],
        ..profile(codes::profile::OAUTH_OPAQUE)
    },
    Profile {
        agents: &[Slice {
            required: &["policy"],
            forbidden: &["media", "network"],
            single: &["policy"],
            requestor: Some(true),
            ..slice("oUser", &[(UA, "UserOauthAgent")], 1, usize::MAX)
        }],
        ..profile(codes::profile::OAUTH_MINIMAL)
    },
    Profile {
        agents: &[
            Slice {
                required: &["who", "who.identifier", "who.identifier.value"],
                forbidden: &["media"],
                ..slice("oClient", APP, 1, 1)
            },
            Slice {
                required: &["who", "who.identifier", "policy"],
                forbidden: &["media", "network"],
                single: &["policy"],
                requestor: Some(true),
                ..slice("oUser", IRCP, 0, 1)
            },
        ],
        ..profile(codes::profile::OAUTH_COMPREHENSIVE)
    },
    Profile {
        type_code: Some((DCM, "110114")),
        subtype: Some(&[(codes::SYS_IHE_EVENT_TYPE, "ITI-71")]),
        action: Some("E"),
        outcome_required: true,
        outcome_fixed: Some("0"),
        agent_min: 2,
        agent_max: Some(3),
        agents_closed: true,
        agents: &[
            Slice {
                required: &["who", "network"],
                forbidden: &["media"],
                ..slice("client", APP, 1, 1)
            },
            Slice {
                required: &["who", "network"],
                forbidden: &["media"],
                ..slice("auth-server", &[(UA, "AuthzOauthService")], 1, 1)
            },
            Slice {
                required: &["who"],
                forbidden: &["altId", "media", "network"],
                requestor: Some(true),
                ..slice("user", IRCP, 0, 1)
            },
        ],
        entity_min: 1,
        entity_max: Some(1),
        entity_disc: "role",
        entities_closed: true,
        entities: &[
            Slice {
                required: &["query", "type"],
                forbidden: &["what"],
                bound: Some(("type", TYPE_2)),
                ..slice("token-request", &[(codes::SYS_OBJECT_ROLE, "24")], 1, 1)
            },
            Slice {
                required: &["what", "type", "detail"],
                bound: Some(("type", TYPE_2)),
                ..slice("token-response", &[(codes::SYS_OBJECT_ROLE, "13")], 0, 1)
            },
        ],
        ..profile(codes::profile::IUA_71)
    },
];

const DISCLOSURE_AGENTS_AT_SOURCE: &[Slice] = &[
    Slice {
        required: &["who", "network"],
        audit_source: true,
        ..slice("source", SRC, 1, 1)
    },
    Slice {
        required: &["who", "network"],
        ..slice("recipient", DST, 1, 1)
    },
    Slice {
        required: &["who"],
        ..slice("custodian", &[(codes::SYS_SCT, "159541003")], 0, 1)
    },
    Slice {
        required: &["who"],
        ..slice("authorizer", &[(codes::SYS_SCT, "429577009")], 0, 1)
    },
];
const DISCLOSURE_AGENTS_AT_RECIPIENT: &[Slice] = &[
    Slice {
        required: &["who", "network"],
        ..slice("source", SRC, 1, 1)
    },
    Slice {
        required: &["who", "network"],
        audit_source: true,
        ..slice("recipient", DST, 1, 1)
    },
    Slice {
        required: &["who"],
        ..slice("custodian", &[(codes::SYS_SCT, "159541003")], 0, 1)
    },
    Slice {
        required: &["who"],
        ..slice("authorizer", &[(codes::SYS_SCT, "429577009")], 0, 1)
    },
];

const fn disclosure(
    id: &'static str,
    type_code: Sc,
    action: &'static str,
    at_source: bool,
) -> Profile {
    Profile {
        type_code: Some(type_code),
        subtype: Some(&[(codes::SYS_ISO_21089_LIFECYCLE, "disclose")]),
        action: Some(action),
        outcome_required: true,
        no_modifier_extension: true,
        agent_min: 2,
        agents: if at_source {
            DISCLOSURE_AGENTS_AT_SOURCE
        } else {
            DISCLOSURE_AGENTS_AT_RECIPIENT
        },
        entity_min: 2,
        entities: &[PATIENT],
        ..profile(id)
    }
}

/// Check one event. Returns the problems found; empty means conformant to R4 and to every
/// BALP profile it claims.
pub fn check(event: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let Some(root) = event.as_object() else {
        return vec!["event is not a JSON object".to_owned()];
    };
    base(root, &mut p);
    strings(event, "", &mut p);
    for url in event
        .pointer("/meta/profile")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(url) = url.as_str() else { continue };
        let Some(id) = url.strip_prefix(PROFILE_BASE) else {
            continue;
        };
        match find(id) {
            Some(prof) => check_profile(event, prof, &mut p),
            None if id.starts_with("IHE.") => p.push(format!("unknown BALP profile {url}")),
            None => {}
        }
    }
    p
}

fn find(id: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.id == id)
}

// ---- R4 base ----------------------------------------------------------------------------

fn base(root: &serde_json::Map<String, Value>, p: &mut Vec<String>) {
    if root.get("resourceType").and_then(Value::as_str) != Some("AuditEvent") {
        p.push("resourceType is not \"AuditEvent\"".into());
    }
    if root.contains_key("identifier") {
        p.push("R4 AuditEvent has no `identifier` element".into());
    }
    for k in root.keys() {
        if !ROOT_ELEMENTS.contains(&k.as_str()) && k != "identifier" {
            p.push(format!("unknown root element `{k}`"));
        }
    }
    match root.get("id") {
        Some(Value::String(s)) if ID.is_match(s) => {}
        Some(_) => p.push("id is not a valid FHIR id".into()),
        None => {}
    }
    if let Some(meta) = root.get("meta") {
        if let Some(prof) = meta.get("profile")
            && !prof
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string))
        {
            p.push("meta.profile must be an array of canonical strings".into());
        }
        for key in ["tag", "security"] {
            codings(meta.get(key), &format!("meta.{key}"), p);
        }
    }
    for (i, ext) in array(root.get("extension")).iter().enumerate() {
        if !ext.get("url").is_some_and(Value::is_string) {
            p.push(format!("extension[{i}] has no url"));
        }
    }
    match root.get("type") {
        Some(t) => coding(t, "type", p),
        None => p.push("type is required (1..1)".into()),
    }
    codings(root.get("subtype"), "subtype", p);
    code_in(root.get("action"), "action", &["C", "R", "U", "D", "E"], p);
    code_in(root.get("outcome"), "outcome", &["0", "4", "8", "12"], p);
    match root.get("recorded").and_then(Value::as_str) {
        Some(s) if INSTANT.is_match(s) => {}
        Some(s) => p.push(format!(
            "recorded {s:?} is not an instant with seconds and zone"
        )),
        None => p.push("recorded is required (1..1)".into()),
    }
    concepts(root.get("purposeOfEvent"), "purposeOfEvent", p);
    let agents = array(root.get("agent"));
    if agents.is_empty() {
        p.push("agent is required (1..*)".into());
    }
    for (i, a) in agents.iter().enumerate() {
        let at = format!("agent[{i}]");
        let Some(o) = a.as_object() else {
            p.push(format!("{at} is not an object"));
            continue;
        };
        for k in o.keys() {
            if !AGENT_ELEMENTS.contains(&k.as_str()) {
                p.push(format!("{at} has unknown element `{k}`"));
            }
        }
        if !o.get("requestor").is_some_and(Value::is_boolean) {
            p.push(format!("{at}.requestor is required (1..1 boolean)"));
        }
        if let Some(t) = o.get("type") {
            concept(t, &format!("{at}.type"), p);
        }
        concepts(o.get("role"), &format!("{at}.role"), p);
        concepts(o.get("purposeOfUse"), &format!("{at}.purposeOfUse"), p);
        if let Some(w) = o.get("who") {
            reference(w, &format!("{at}.who"), p);
        }
        if let Some(m) = o.get("media") {
            coding(m, &format!("{at}.media"), p);
        }
        if let Some(n) = o.get("network") {
            if let Some(no) = n.as_object() {
                for k in no.keys() {
                    if !["id", "extension", "address", "type"].contains(&k.as_str()) {
                        p.push(format!("{at}.network has unknown element `{k}`"));
                    }
                }
                code_in(
                    no.get("type"),
                    &format!("{at}.network.type"),
                    &["1", "2", "3", "4", "5"],
                    p,
                );
            } else {
                p.push(format!("{at}.network is not an object"));
            }
        }
        if o.get("policy").is_some_and(|v| {
            !v.as_array()
                .is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(is_uri)))
        }) {
            p.push(format!("{at}.policy must be an array of uri strings"));
        }
    }
    match root.get("source") {
        Some(s) => {
            match s.get("observer") {
                Some(o) => reference(o, "source.observer", p),
                None => p.push("source.observer is required (1..1)".into()),
            }
            codings(s.get("type"), "source.type", p);
        }
        None => p.push("source is required (1..1)".into()),
    }
    for (i, e) in array(root.get("entity")).iter().enumerate() {
        let at = format!("entity[{i}]");
        let Some(o) = e.as_object() else {
            p.push(format!("{at} is not an object"));
            continue;
        };
        for k in o.keys() {
            if !ENTITY_ELEMENTS.contains(&k.as_str()) {
                p.push(format!("{at} has unknown element `{k}`"));
            }
        }
        for k in ["type", "role", "lifecycle"] {
            if let Some(c) = o.get(k) {
                coding(c, &format!("{at}.{k}"), p);
            }
        }
        codings(o.get("securityLabel"), &format!("{at}.securityLabel"), p);
        if let Some(w) = o.get("what") {
            reference(w, &format!("{at}.what"), p);
        }
        if o.contains_key("name") && o.contains_key("query") {
            p.push(format!(
                "{at}: sev-1 violated (name and query both present)"
            ));
        }
        if let Some(q) = o.get("query")
            && !q.as_str().is_some_and(|s| BASE64.is_match(s))
        {
            p.push(format!("{at}.query is not base64Binary"));
        }
        for (j, d) in array(o.get("detail")).iter().enumerate() {
            let n = ["valueString", "valueBase64Binary"]
                .iter()
                .filter(|k| d.get(**k).is_some())
                .count();
            if !d.get("type").is_some_and(Value::is_string) || n != 1 {
                p.push(format!(
                    "{at}.detail[{j}] needs type and exactly one value[x]"
                ));
            }
        }
    }
}

/// FHIR primitives: no empty strings, no control characters but tab, CR and LF.
fn strings(v: &Value, at: &str, p: &mut Vec<String>) {
    match v {
        Value::String(s) if s.is_empty() => p.push(format!("{at}: empty string")),
        Value::String(s)
            if s.chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n')) =>
        {
            p.push(format!("{at}: control character in string"));
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| strings(x, &format!("{at}[{i}]"), p)),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| strings(x, &format!("{at}/{k}"), p)),
        _ => {}
    }
}

fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn coding(v: &Value, at: &str, p: &mut Vec<String>) {
    match v.as_object() {
        Some(o) if o.contains_key("coding") => {
            p.push(format!("{at} must be a Coding, not a CodeableConcept"))
        }
        Some(o) => {
            if let Some(c) = o.get("code")
                && !c.as_str().is_some_and(|c| CODE.is_match(c))
            {
                p.push(format!(
                    "{at}.code is not a FHIR code (no edge or repeated whitespace)"
                ));
            }
            for k in o.keys() {
                if !CODING_ELEMENTS.contains(&k.as_str()) {
                    p.push(format!("{at} has unknown Coding element `{k}`"));
                }
            }
        }
        None => p.push(format!("{at} must be a Coding object")),
    }
}

fn codings(v: Option<&Value>, at: &str, p: &mut Vec<String>) {
    let Some(v) = v else { return };
    match v.as_array() {
        Some(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| coding(c, &format!("{at}[{i}]"), p)),
        None => p.push(format!("{at} must be an array")),
    }
}

fn concept(v: &Value, at: &str, p: &mut Vec<String>) {
    match v.as_object() {
        Some(o) => {
            for k in o.keys() {
                if !["id", "extension", "coding", "text"].contains(&k.as_str()) {
                    p.push(format!("{at} must be a CodeableConcept (found `{k}`)"));
                }
            }
            codings(o.get("coding"), &format!("{at}.coding"), p);
        }
        None => p.push(format!("{at} must be a CodeableConcept object")),
    }
}

fn concepts(v: Option<&Value>, at: &str, p: &mut Vec<String>) {
    let Some(v) = v else { return };
    match v.as_array() {
        Some(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| concept(c, &format!("{at}[{i}]"), p)),
        None => p.push(format!("{at} must be an array")),
    }
}

fn reference(v: &Value, at: &str, p: &mut Vec<String>) {
    match v.as_object() {
        Some(o) => {
            for k in o.keys() {
                if !REFERENCE_ELEMENTS.contains(&k.as_str()) {
                    p.push(format!("{at} has unknown Reference element `{k}`"));
                }
            }
            if o.is_empty() {
                p.push(format!("{at} is empty"));
            }
            if let Some(sys) = v.pointer("/identifier/system")
                && !sys.as_str().is_some_and(is_uri)
            {
                p.push(format!(
                    "{at}.identifier.system is not a uri (no whitespace)"
                ));
            }
        }
        None => p.push(format!("{at} must be a Reference object")),
    }
}

/// FHIR `uri`: any string without whitespace.
fn is_uri(s: &str) -> bool {
    !s.chars().any(char::is_whitespace)
}

fn code_in(v: Option<&Value>, at: &str, allowed: &[&str], p: &mut Vec<String>) {
    let Some(v) = v else { return };
    match v.as_str() {
        Some(s) if allowed.contains(&s) => {}
        Some(s) => p.push(format!("{at} {s:?} is not one of {allowed:?}")),
        None => p.push(format!("{at} must be a code string")),
    }
}

// ---- profiles ---------------------------------------------------------------------------

fn check_profile(event: &Value, prof: &Profile, p: &mut Vec<String>) {
    if let Some(parent) = prof.parent.and_then(find) {
        check_profile(event, parent, p);
    }
    let id = prof.id;
    if prof.no_modifier_extension && event.get("modifierExtension").is_some() {
        p.push(format!("{id}: modifierExtension is not allowed"));
    }
    if let Some(tc) = prof.type_code
        && !event.get("type").is_some_and(|t| coding_is(t, tc))
    {
        p.push(format!("{id}: type must be {}#{}", tc.0, tc.1));
    }
    if let Some(allowed) = prof.subtype {
        let n = array(event.get("subtype"))
            .iter()
            .filter(|c| allowed.iter().any(|a| coding_is(c, *a)))
            .count();
        if n != 1 {
            p.push(format!(
                "{id}: exactly one subtype from {:?} required, found {n}",
                allowed.iter().map(|a| a.1).collect::<Vec<_>>()
            ));
        }
    }
    if let Some(a) = prof.action
        && event.get("action").and_then(Value::as_str) != Some(a)
    {
        p.push(format!("{id}: action must be {a}"));
    }
    let outcome = event.get("outcome").and_then(Value::as_str);
    if prof.outcome_required && outcome.is_none() {
        p.push(format!("{id}: outcome is required"));
    }
    if let (Some(f), Some(o)) = (prof.outcome_fixed, outcome)
        && o != f
    {
        p.push(format!(
            "{id}: outcome must be {f} (the profile covers success only), is {o}"
        ));
    }
    let agents = array(event.get("agent"));
    if agents.len() < prof.agent_min {
        p.push(format!("{id}: at least {} agents required", prof.agent_min));
    }
    if prof.agent_max.is_some_and(|m| agents.len() > m) {
        p.push(format!("{id}: too many agents"));
    }
    slices(
        event,
        id,
        "agent",
        agents,
        "type",
        prof.agents,
        prof.agents_closed,
        true,
        p,
    );
    if let Some(name) = prof.requestor_slice {
        let slice = prof.agents.iter().find(|s| s.name == name);
        for (i, a) in agents.iter().enumerate() {
            let in_slice = slice.is_some_and(|s| agent_in(a, s));
            if a.get("requestor").and_then(Value::as_bool) == Some(true) && !in_slice {
                p.push(format!(
                    "{id}: agent[{i}]: a requestor agent must be in the `{name}` slice"
                ));
            }
        }
    }
    let entities = array(event.get("entity"));
    if entities.len() < prof.entity_min {
        p.push(format!(
            "{id}: at least {} entities required",
            prof.entity_min
        ));
    }
    if prof.entity_max.is_some_and(|m| entities.len() > m) {
        p.push(format!("{id}: too many entities"));
    }
    slices(
        event,
        id,
        "entity",
        entities,
        prof.entity_disc,
        prof.entities,
        prof.entities_closed,
        false,
        p,
    );
}

#[allow(clippy::too_many_arguments)]
fn slices(
    event: &Value,
    id: &str,
    what: &str,
    items: &[Value],
    disc: &str,
    table: &[Slice],
    closed: bool,
    concept_disc: bool,
    p: &mut Vec<String>,
) {
    let matches = |item: &Value, s: &Slice| -> bool {
        let Some(d) = item.get(disc) else {
            return false;
        };
        s.codes.iter().any(|c| {
            if concept_disc {
                array(d.get("coding")).iter().any(|x| coding_is(x, *c))
            } else {
                coding_is(d, *c)
            }
        })
    };
    for s in table {
        let members: Vec<(usize, &Value)> = items
            .iter()
            .enumerate()
            .filter(|(_, it)| matches(it, s))
            .collect();
        if members.len() < s.min {
            p.push(format!(
                "{id}: {what} slice `{}` needs at least {} (found {})",
                s.name,
                s.min,
                members.len()
            ));
        }
        if members.len() > s.max {
            p.push(format!(
                "{id}: {what} slice `{}` allows at most {} (found {})",
                s.name,
                s.max,
                members.len()
            ));
        }
        for (i, it) in members {
            let at = format!("{id}: {what}[{i}] ({})", s.name);
            for path in s.required {
                if !present(it, path) {
                    p.push(format!("{at} needs {path}"));
                }
            }
            for path in s.forbidden {
                if present(it, path) {
                    p.push(format!("{at} must not have {path}"));
                }
            }
            for path in s.single {
                if array(it.get(*path)).len() > 1 {
                    p.push(format!("{at} allows one {path}"));
                }
            }
            if let Some(r) = s.requestor
                && it.get("requestor").and_then(Value::as_bool) != Some(r)
            {
                p.push(format!("{at} requestor must be {r}"));
            }
            if let Some((el, allowed)) = s.bound
                && let Some(c) = it.get(el)
                && !allowed.iter().any(|a| coding_is(c, *a))
            {
                p.push(format!(
                    "{at}.{el} is not in {:?}",
                    allowed.iter().map(|a| a.1).collect::<Vec<_>>()
                ));
            }
            if let Some(t) = s.what_type
                && let Some(w) = it.get("what")
                && !refers_to(w, t)
            {
                p.push(format!("{at}.what must reference a {t}"));
            }
            if let Some(max) = s.policy_max_chars
                && array(it.get("policy"))
                    .iter()
                    .any(|x| x.as_str().is_some_and(|x| x.chars().count() > max))
            {
                p.push(format!(
                    "{at}.policy holds more than the last {max} characters of the token"
                ));
            }
            if s.audit_source && it.get("who") != event.pointer("/source/observer") {
                p.push(format!(
                    "{at}: val-audit-source (who must equal source.observer)"
                ));
            }
        }
    }
    if closed {
        for (i, it) in items.iter().enumerate() {
            if !table.iter().any(|s| matches(it, s)) {
                p.push(format!(
                    "{id}: {what}[{i}] matches no slice of a closed slicing"
                ));
            }
        }
    }
}

fn agent_in(a: &Value, s: &Slice) -> bool {
    let codings = array(a.get("type").and_then(|t| t.get("coding")));
    s.codes
        .iter()
        .any(|c| codings.iter().any(|x| coding_is(x, *c)))
}

/// Pattern match on a Coding: system and code equal (UserAgentTypes codes case-insensitively).
fn coding_is(c: &Value, (system, code): Sc) -> bool {
    let sys = c.get("system").and_then(Value::as_str);
    let cd = c.get("code").and_then(Value::as_str);
    sys == Some(system)
        && cd.is_some_and(|x| {
            if system == UA {
                x.eq_ignore_ascii_case(code)
            } else {
                x == code
            }
        })
}

fn present(v: &Value, path: &str) -> bool {
    let mut cur = v;
    for part in path.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    match cur {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Whether a Reference points at a resource of type `t` (literal, absolute, or by `type`).
fn refers_to(w: &Value, t: &str) -> bool {
    if let Some(r) = w.get("reference").and_then(Value::as_str) {
        let prefix = format!("{t}/");
        return r.starts_with(&prefix) || r.contains(&format!("/{prefix}"));
    }
    w.get("type").and_then(Value::as_str) == Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example(name: &str) -> Value {
        let path = format!(
            "{}/../shared/balp/examples/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn every_ig_example_passes() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/balp/examples");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let problems = check(&v);
            assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
            n += 1;
        }
        assert_eq!(n, 46);
    }

    fn fails(v: &Value, needle: &str) {
        let problems = check(v);
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "expected a problem containing {needle:?}, got {problems:#?}"
        );
    }

    #[test]
    fn read_with_flipped_agent_codes_fails() {
        let mut v = example("ex-auditBasicReadServer");
        // A full swap of both codes is indistinguishable by slicing alone (the map tests check
        // direction); typing the client like a Create's leaves the Read without a client.
        v["agent"][0]["type"]["coding"][0]["code"] = json!("110153");
        fails(&v, "slice `client` needs at least 1");
        fails(&v, "slice `server` allows at most 1");
    }

    #[test]
    fn ircp_user_on_create_fails() {
        let mut v = example("ex-auditBasicCreateServer");
        let user = v["agent"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|a| a["requestor"] == json!(true))
            .unwrap();
        user["type"] = json!({"coding": [{"system": PT, "code": "IRCP"}]});
        fails(&v, "requestor agent must be in the `user` slice");
        let mut q = example("ex-auditBasicQueryGetServer");
        q["agent"][2]["type"] = json!({"coding": [{"system": PT, "code": "AUT"}]});
        fails(&q, "requestor agent must be in the `user` slice");
        let mut two = example("ex-auditBasicCreateServer");
        let agents = two["agent"].as_array_mut().unwrap();
        let mut extra = agents
            .iter()
            .find(|a| a["requestor"] == json!(true))
            .unwrap()
            .clone();
        extra["type"] = json!({"coding": [{"system": PT, "code": "INF"}]});
        agents.push(extra);
        fails(&two, "slice `user` allows at most 1");
    }

    #[test]
    fn rest_profile_on_failed_request_fails() {
        let mut v = example("ex-auditBasicReadServer");
        v["outcome"] = json!("4");
        fails(&v, "outcome must be 0");
    }

    #[test]
    fn missing_requestor_fails() {
        let mut v = example("ex-auditBasicDeleteServer");
        v["agent"][0].as_object_mut().unwrap().remove("requestor");
        fails(&v, "requestor is required");
    }

    #[test]
    fn base_shape_errors_are_found() {
        let mut v = example("ex-auditBasicQueryGetServer");
        v["identifier"] = json!({"value": "x"});
        v["recorded"] = json!("2020-04-29T09:49");
        v["type"] = json!({"coding": [{"system": "s", "code": "c"}]});
        v["entity"][0]["name"] = json!("n");
        v["agent"][0]["network"]["type"] = json!("7");
        v["outcomeDesc"] = json!("a\u{1}b");
        v["source"]["site"] = json!("");
        let problems = check(&v);
        for needle in [
            "control character",
            "empty string",
            "identifier",
            "recorded",
            "Coding, not a CodeableConcept",
            "sev-1",
            "network.type",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle}: {problems:#?}"
            );
        }
    }

    #[test]
    fn query_slice_rules_and_max_one_are_enforced() {
        let mut v = example("ex-auditBasicQueryGetServer");
        v["entity"][0]["what"] = json!({"reference": "Observation/1"});
        fails(&v, "must not have what");
        let mut v = example("ex-auditBasicQueryGetServer");
        let extra = v["entity"][0].clone();
        v["entity"].as_array_mut().unwrap().push(extra);
        fails(&v, "slice `query` allows at most 1");
        let mut v = example("ex-auditBasicQueryGetServer");
        v["entity"][0].as_object_mut().unwrap().remove("query");
        fails(&v, "needs query");
        let mut v = example("ex-auditBasicReadServer");
        let p2 = v["entity"][1].clone();
        v["entity"].as_array_mut().unwrap().push(p2);
        fails(&v, "slice `patient` allows at most 1");
        let mut v = example("ex-auditBasicReadServer");
        v["entity"][1]["what"] = json!({"reference": "Group/1"});
        fails(&v, "must reference a Patient");
        let mut v = example("ex-auditBasicReadServer");
        v["entity"][2]["what"] = json!({"display": "x"});
        fails(&v, "needs what.identifier.value");
    }

    #[test]
    fn wrong_subtype_or_action_fails() {
        let mut v = example("ex-auditBasicReadServer");
        v["subtype"][0]["code"] = json!("search");
        v["action"] = json!("E");
        fails(&v, "exactly one subtype");
        fails(&v, "action must be R");
    }

    fn claim(v: &mut Value, ids: &[&str]) {
        v["meta"]["profile"] = json!(
            ids.iter()
                .map(|i| format!("{PROFILE_BASE}{i}"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn rest_and_token_profiles_are_both_enforced() {
        // One agent typed IRCP + UserOauthAgent is both the REST user and the oUser.
        let mut v = example("ex-auditBasicReadServer");
        claim(
            &mut v,
            &[codes::profile::PATIENT_READ, codes::profile::OAUTH_MINIMAL],
        );
        let user = v["agent"][2].clone();
        v["agent"][2]["type"]["coding"]
            .as_array_mut()
            .unwrap()
            .push(json!({"system": UA, "code": "UserOauthAgent"}));
        v["agent"][2]["policy"] = json!(["urn:ietf:params:oauth:jti:x"]);
        assert!(check(&v).is_empty(), "{:#?}", check(&v));
        // A separate token agent is a second requestor outside the REST user slice.
        let mut sep = v.clone();
        sep["agent"][2] = user;
        sep["agent"].as_array_mut().unwrap().push(json!({
            "type": {"coding": [{"system": UA, "code": "UserOauthAgent"}]},
            "who": {"display": "x"}, "requestor": true, "policy": ["urn:ietf:params:oauth:jti:x"]
        }));
        fails(&sep, "requestor agent must be in the `user` slice");
        // Without the token user the token profile fails on its own.
        let mut none = example("ex-auditBasicReadServer");
        claim(
            &mut none,
            &[codes::profile::PATIENT_READ, codes::profile::OAUTH_MINIMAL],
        );
        fails(&none, "slice `oUser` needs at least 1");
        // A separate oClient on a Delete breaks the REST client slice (max 1).
        let mut d = example("ex-auditBasicDeleteServer");
        claim(
            &mut d,
            &[
                codes::profile::PATIENT_DELETE,
                codes::profile::OAUTH_COMPREHENSIVE,
            ],
        );
        d["agent"].as_array_mut().unwrap().push(json!({
            "type": {"coding": [{"system": DCM, "code": "110150"}]},
            "who": {"identifier": {"value": "app"}}, "requestor": false
        }));
        fails(&d, "slice `client` allows at most 1");
    }

    #[test]
    fn opaque_policy_longer_than_32_fails() {
        let mut v = example("ex-auditBasicReadOClient");
        v["agent"][0]["policy"] = json!(["x".repeat(33)]);
        fails(&v, "last 32 characters");
    }
}

//! FHIR RESTful interactions (`rest`, and the explicit `create`/`read`/`update`/`delete`/
//! `query` patterns): the request is classified from method and URL below a FHIR base, its
//! patients are found in the path, the search parameters and the `patient` field, and a BALP
//! REST profile is claimed only for a successful, profile-covered interaction (see
//! [`super::map`] for the choices).

use super::MapContext;
use super::agents::*;
use super::codes::{self, Code};
use super::model::{Action, AuditEvent, Entity, EntityDetail, Reference};
use super::parts::*;
use crate::config::Mode;
use crate::parse::{FieldName as F, Fields, Pattern};
use base64::Engine as _;

/// The FHIR RESTful interaction a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interaction {
    Create,
    Read,
    Vread,
    Update,
    Patch,
    Delete,
    Search,
    SearchType,
    SearchSystem,
    Operation,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    Transaction,
    /// A request under the base that is no FHIR interaction (or has malformed ids).
    Unknown,
}

impl Interaction {
    fn subtype(self) -> Option<Code> {
        use Interaction::*;
        Some(match self {
            Create => codes::RI_CREATE,
            Read => codes::RI_READ,
            Vread => codes::RI_VREAD,
            Update => codes::RI_UPDATE,
            Patch => codes::RI_PATCH,
            Delete => codes::RI_DELETE,
            Search => codes::RI_SEARCH,
            SearchType => codes::RI_SEARCH_TYPE,
            SearchSystem => codes::RI_SEARCH_SYSTEM,
            Operation => codes::RI_OPERATION,
            HistoryInstance => codes::RI_HISTORY_INSTANCE,
            HistoryType => codes::RI_HISTORY_TYPE,
            HistorySystem => codes::RI_HISTORY_SYSTEM,
            Transaction => codes::RI_TRANSACTION,
            Unknown => return None,
        })
    }

    fn action(self, method: &str) -> Action {
        use Interaction::*;
        match self {
            Create => Action::C,
            Read | Vread | HistoryInstance | HistoryType | HistorySystem => Action::R,
            Update | Patch => Action::U,
            Delete => Action::D,
            Search | SearchType | SearchSystem | Operation | Transaction => Action::E,
            Unknown if is_read_method(method) => Action::R,
            Unknown => Action::E,
        }
    }

    fn profiles(self) -> Option<(&'static str, &'static str)> {
        use Interaction::*;
        use codes::profile as p;
        match self {
            Create => Some((p::CREATE, p::PATIENT_CREATE)),
            Read | Vread => Some((p::READ, p::PATIENT_READ)),
            Update | Patch => Some((p::UPDATE, p::PATIENT_UPDATE)),
            Delete => Some((p::DELETE, p::PATIENT_DELETE)),
            Search | SearchType | SearchSystem => Some((p::QUERY, p::PATIENT_QUERY)),
            _ => None,
        }
    }

    /// (client, server) agent types: Read flips the direction, Delete has its own pair.
    fn endpoint_types(self) -> (Code, Code) {
        use Interaction::*;
        match self {
            Read | Vread | HistoryInstance | HistoryType | HistorySystem => {
                (codes::DCM_DESTINATION_ROLE_ID, codes::DCM_SOURCE_ROLE_ID)
            }
            Delete => (codes::DCM_APPLICATION, codes::PROV_CUSTODIAN),
            _ => (codes::DCM_SOURCE_ROLE_ID, codes::DCM_DESTINATION_ROLE_ID),
        }
    }

    /// IRCP for those who receive data, AUT for those who write it.
    fn user_type(self, method: &str) -> Code {
        use Interaction::*;
        match self {
            Create | Update | Patch | Delete => codes::PART_AUT,
            Read | Vread | Search | SearchType | SearchSystem | HistoryInstance | HistoryType
            | HistorySystem => codes::PART_IRCP,
            Operation | Transaction | Unknown if is_read_method(method) => codes::PART_IRCP,
            Operation | Transaction | Unknown => codes::PART_AUT,
        }
    }

    fn is_search(self) -> bool {
        matches!(
            self,
            Interaction::Search | Interaction::SearchType | Interaction::SearchSystem
        )
    }

    fn is_crud(self) -> bool {
        use Interaction::*;
        matches!(self, Create | Read | Vread | Update | Patch | Delete)
    }
}

fn is_read_method(method: &str) -> bool {
    method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD")
}

/// What a request line says.
#[derive(Debug, Clone, Default)]
struct Request {
    interaction: Option<Interaction>,
    rtype: Option<String>,
    id: Option<String>,
    version: Option<String>,
    /// Update/patch without an id (not covered by BALP).
    conditional: bool,
    path_patients: Vec<String>,
}

/// Split a logged request target into path and query, dropping scheme, authority and fragment.
fn split_target(url: &str) -> (&str, Option<&str>) {
    let mut u = url.trim();
    if let Some(i) = u.find('#') {
        u = &u[..i];
    }
    if !u.starts_with('/')
        && let Some(i) = u.find("://")
    {
        let after = &u[i + 3..];
        u = match after.find(['/', '?']) {
            Some(j) => &after[j..],
            None => "",
        };
    }
    match u.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (u, None),
    }
}

/// The part of `path` below the longest matching base, or None when outside every base.
fn below_base<'a>(path: &'a str, bases: &[String]) -> Option<&'a str> {
    let mut best: Option<(usize, &'a str)> = None;
    for b in bases {
        let (bpath, _) = split_target(b);
        let bpath = bpath.trim().trim_end_matches('/');
        let bpath = bpath.strip_prefix('/').unwrap_or(bpath);
        let p = path.strip_prefix('/').unwrap_or(path);
        let rest = if bpath.is_empty() {
            Some(p)
        } else if p == bpath {
            Some("")
        } else {
            p.strip_prefix(bpath).filter(|r| r.starts_with('/'))
        };
        if let Some(r) = rest
            && best.is_none_or(|(len, _)| bpath.len() >= len)
        {
            best = Some((bpath.len(), r));
        }
    }
    best.map(|(_, r)| r)
}

/// Classify a request below the base. `None` means "produce no event" (capabilities).
fn classify(method: &str, rest: &str, has_query: bool) -> Option<Request> {
    use Interaction::*;
    let m = method.to_ascii_uppercase();
    let m = m.as_str();
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let mut r = Request::default();
    let get = m == "GET" || m == "HEAD";
    let interaction = match segs.as_slice() {
        [] => match m {
            _ if get => SearchSystem,
            "POST" => Transaction,
            _ => Unknown,
        },
        ["metadata"] if get || m == "OPTIONS" => return None,
        ["_search"] if m == "POST" || get => SearchSystem,
        ["_history"] => HistorySystem,
        [op] if op.starts_with('$') => Operation,
        [t] if is_type(t) => {
            r.rtype = Some((*t).to_owned());
            match m {
                _ if get => SearchType,
                "POST" => Create,
                "PUT" => {
                    r.conditional = true;
                    Update
                }
                "PATCH" => {
                    r.conditional = true;
                    Patch
                }
                "DELETE" if has_query => Delete,
                _ => Unknown,
            }
        }
        [t, "_search"] if is_type(t) && (m == "POST" || get) => {
            r.rtype = Some((*t).to_owned());
            SearchType
        }
        [t, "_history"] if is_type(t) => {
            r.rtype = Some((*t).to_owned());
            HistoryType
        }
        [t, op] if is_type(t) && op.starts_with('$') => {
            r.rtype = Some((*t).to_owned());
            Operation
        }
        [t, id] if is_type(t) && is_id(id) => {
            r.rtype = Some((*t).to_owned());
            r.id = Some((*id).to_owned());
            match m {
                _ if get => Read,
                "PUT" => Update,
                "PATCH" => Patch,
                "DELETE" => Delete,
                _ => Unknown,
            }
        }
        [t, id, "_history"] if is_type(t) && is_id(id) => {
            r.rtype = Some((*t).to_owned());
            r.id = Some((*id).to_owned());
            HistoryInstance
        }
        [t, id, "_history", v] if is_type(t) && is_id(id) && is_id(v) => {
            r.rtype = Some((*t).to_owned());
            r.id = Some((*id).to_owned());
            r.version = Some((*v).to_owned());
            if get { Vread } else { Unknown }
        }
        [t, id, op] if is_type(t) && is_id(id) && op.starts_with('$') => {
            r.rtype = Some((*t).to_owned());
            r.id = Some((*id).to_owned());
            Operation
        }
        [c, id, t] if is_type(c) && is_id(id) && is_type(t) && get => {
            // Compartment search: the compartment owner is known, the result type searched.
            if *c == "Patient" {
                r.path_patients.push((*id).to_owned());
            }
            r.rtype = Some((*t).to_owned());
            SearchType
        }
        _ => Unknown,
    };
    if r.rtype.as_deref() == Some("Patient")
        && let Some(id) = &r.id
    {
        r.path_patients.push(id.clone());
    }
    r.interaction = Some(interaction);
    Some(r)
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Percent-decoded, with control characters replaced, for `entity.description`.
fn clean(s: &str) -> String {
    decode(s)
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Patients named by search parameters.
fn query_patients(query: &str, rtype: Option<&str>, out: &mut Vec<String>) {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k);
        let v = decode(v);
        let (name, modifier) = match k.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (k.as_str(), None),
        };
        let plain = match (name, modifier) {
            ("patient", None | Some("Patient")) => true,
            ("subject", Some("Patient")) => true,
            ("subject", None) => false,
            ("_id", None) if rtype == Some("Patient") => true,
            _ => continue,
        };
        out.extend(v.split(',').filter_map(|item| patient_id(item, plain)));
    }
}

pub(super) fn rest_pattern(ctx: &MapContext, f: &Fields, raw: &Fields) -> Option<Built> {
    let method = f.get(F::Method).unwrap_or("GET").trim();
    let Some(url) = f.get(F::Url) else {
        // Best effort: a request whose target was not logged is still recorded, as a generic
        // `rest` event without interaction or profile.
        let req = Request {
            interaction: Some(Interaction::Unknown),
            ..Request::default()
        };
        return Some(rest_event(ctx, f, raw, method, None, None, req, None));
    };
    let (path, query) = split_target(url);
    let rest = below_base(path, &ctx.fhir_bases)?;
    let req = classify(method, rest, query.is_some_and(|q| !q.is_empty()))?;
    Some(rest_event(ctx, f, raw, method, Some(url), query, req, None))
}

/// Build the REST-shaped event for a classified request.
#[allow(clippy::too_many_arguments)]
fn rest_event(
    ctx: &MapContext,
    f: &Fields,
    raw_fields: &Fields,
    method: &str,
    url: Option<&str>,
    query: Option<&str>,
    req: Request,
    resource_name: Option<&str>,
) -> Built {
    let interaction = req.interaction.unwrap_or(Interaction::Unknown);
    let outcome = outcome(f);
    let (client_type, server_type) = interaction.endpoint_types();
    let mut ev = AuditEvent {
        type_: codes::TYPE_REST.coding(),
        subtype: interaction
            .subtype()
            .map(|c| c.coding())
            .into_iter()
            .collect(),
        action: Some(interaction.action(method)),
        outcome: Some(outcome),
        outcome_desc: f.get(F::OutcomeDesc).map(str::to_owned),
        ..AuditEvent::default()
    };
    let client = client_agent(f, client_type);
    let client_ok = client.network.is_some() && client.who.is_some();
    ev.agent.push(client);
    ev.agent.push(server_agent(ctx, f, server_type));
    if let Some(u) = user_agent(ctx, f, interaction.user_type(method)) {
        ev.agent.push(u);
    }
    // The query entity keeps exactly what was requested (BALP), so it reads the fields as
    // logged, before control characters were replaced.
    let raw_method = raw_fields.get(F::Method).map(str::trim).unwrap_or(method);
    let raw_request = match (raw_fields.get(F::Query), raw_fields.get(F::Url)) {
        (Some(q), _) => Some(q.to_owned()),
        (None, Some(u)) => Some(format!("{raw_method} {u}")),
        (None, None) => url.map(|u| format!("{method} {u}")),
    };
    if interaction.is_crud() {
        ev.entity
            .push(data_entity(&req, resource_name, query, f, ctx.mode));
    } else {
        let raw = raw_request.unwrap_or_else(|| method.to_owned());
        let description = f
            .get(F::Description)
            .map(str::to_owned)
            .unwrap_or_else(|| clean(&raw));
        if !interaction.is_search()
            && let (Some(t), Some(id)) = (&req.rtype, &req.id)
        {
            ev.entity.push(Entity {
                what: Some(Reference::to(&format!("{t}/{id}"))),
                type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
                role: Some(codes::ROLE_DOMAIN_RESOURCE.coding()),
                ..Entity::default()
            });
        }
        ev.entity.push(Entity {
            type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
            role: Some(codes::ROLE_QUERY.coding()),
            description: Some(description),
            query: Some(base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())),
            ..Entity::default()
        });
    }
    if let Some(rid) = f.get(F::RequestId) {
        ev.entity.push(Entity {
            what: Some(Reference::identifier(rid.trim())),
            type_: Some(codes::ENTITY_XREQUEST_ID.coding()),
            ..Entity::default()
        });
    }
    let mut patients = req.path_patients.clone();
    if let Some(q) = query {
        query_patients(q, req.rtype.as_deref(), &mut patients);
    }
    field_patients(f, &mut patients);
    let claim = Claim::rest(interaction.profiles().filter(|_| !req.conditional))
        .unless_missing(client_ok, "client network address unknown");
    let mut b = Built::new(ev, claim, dedup(patients));
    b.client_idx = Some(0);
    b
}

fn data_entity(
    req: &Request,
    resource_name: Option<&str>,
    query: Option<&str>,
    f: &Fields,
    mode: Mode,
) -> Entity {
    let what = match (&req.rtype, &req.id, &req.version) {
        (Some(t), Some(id), Some(v)) => Reference::to(&format!("{t}/{id}/_history/{v}")),
        (Some(t), Some(id), None) => Reference::to(&format!("{t}/{id}")),
        // Create (id assigned by the server, not logged) or conditional: the type only.
        (Some(t), None, _) => Reference {
            type_: Some(t.clone()),
            ..Reference::default()
        },
        _ => match resource_name {
            Some(name) => Reference::identifier(name),
            None => Reference::display("unknown"),
        },
    };
    let mut detail = Vec::new();
    if resource_name.is_some()
        && req.rtype.is_none()
        && let Some(db) = f.get(F::Database)
    {
        detail.push(EntityDetail {
            type_: "database".to_owned(),
            value_string: Some(db.to_owned()),
            value_base64_binary: None,
        });
    }
    let description = match (f.get(F::Description), query) {
        (Some(d), _) if mode == Mode::Comprehensive || req.rtype.is_none() => Some(d.to_owned()),
        (_, Some(q)) if req.id.is_none() && !q.is_empty() => Some(clean(q)),
        _ => None,
    };
    Entity {
        what: Some(what),
        type_: Some(codes::ENTITY_SYSTEM_OBJECT.coding()),
        role: Some(codes::ROLE_DOMAIN_RESOURCE.coding()),
        description,
        detail,
        ..Entity::default()
    }
}

// ---- explicit CRUD/query patterns -------------------------------------------------------

pub(super) fn explicit_pattern(
    ctx: &MapContext,
    f: &Fields,
    raw: &Fields,
    pattern: Pattern,
) -> Option<Built> {
    use Interaction::*;
    let url = f.get(F::Url);
    let (path, query) = url.map(split_target).unwrap_or(("", None));
    let mut req = Request::default();
    let mut resource_name = None;
    let resource = f.get(F::Resource).map(str::trim);
    let target = match resource {
        Some(r) => Some(r),
        None if !path.is_empty() => Some(below_base(path, &ctx.fhir_bases).unwrap_or(path)),
        None => None,
    };
    if let Some(t) = target {
        let segs: Vec<&str> = t.split('/').filter(|s| !s.is_empty()).collect();
        match segs.as_slice() {
            [ty] if is_type(ty) => req.rtype = Some((*ty).to_owned()),
            [ty, id] | [ty, id, "_history"] if is_type(ty) && is_id(id) => {
                req.rtype = Some((*ty).to_owned());
                req.id = Some((*id).to_owned());
            }
            [ty, id, "_history", v] if is_type(ty) && is_id(id) && is_id(v) => {
                req.rtype = Some((*ty).to_owned());
                req.id = Some((*id).to_owned());
                req.version = Some((*v).to_owned());
            }
            _ => resource_name = resource,
        }
    }
    let interaction = match pattern {
        Pattern::Create => Create,
        Pattern::Read if req.version.is_some() => Vread,
        Pattern::Read => Read,
        Pattern::Update => Update,
        Pattern::Delete => Delete,
        _ if req.rtype.is_some() => SearchType,
        _ => Search,
    };
    if interaction == Update && req.id.is_none() && req.rtype.is_some() {
        req.conditional = true;
    }
    if req.rtype.as_deref() == Some("Patient")
        && let Some(id) = &req.id
    {
        req.path_patients.push(id.clone());
    }
    req.interaction = Some(interaction);
    let method = f
        .get(F::Method)
        .map(str::trim)
        .unwrap_or(match interaction {
            Create => "POST",
            Update => "PUT",
            Delete => "DELETE",
            _ => "GET",
        });
    Some(rest_event(
        ctx,
        f,
        raw,
        method,
        url,
        query,
        req,
        resource_name,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_matching_base_wins_and_only_whole_segments_match() {
        assert_eq!(below_base("/fhir", &["/fhir".into()]), Some(""));
        assert_eq!(below_base("/fhirx/Patient", &["/fhir".into()]), None);
        assert_eq!(
            below_base("/a/fhir/X", &["/a".into(), "/a/fhir".into()]),
            Some("/X")
        );
    }
}

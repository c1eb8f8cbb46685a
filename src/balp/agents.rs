//! The agents every pattern uses: the user (with a security token's parts, see
//! [`super::token`]), the client application with its network address, and the server.

use super::MapContext;
use super::codes::{self, Code};
use super::model::{Agent, CodeableConcept, Coding, Identifier, Network, NetworkType, Reference};
use crate::config::Mode;
use crate::parse::{FieldName as F, Fields};

pub(super) fn network(addr: &str) -> Network {
    let a = addr.trim();
    let bare = a.trim_start_matches('[').trim_end_matches(']');
    let type_ =
        if bare.parse::<std::net::IpAddr>().is_ok() || a.parse::<std::net::SocketAddr>().is_ok() {
            NetworkType::IpAddress
        } else if a.contains("://") {
            NetworkType::Uri
        } else {
            NetworkType::MachineName
        };
    Network {
        address: Some(a.to_owned()),
        type_: Some(type_),
    }
}

/// The client's address: the first X-Forwarded-For hop when known, else the peer address.
pub(crate) fn client_address(f: &Fields) -> Option<&str> {
    let hop = f
        .get(F::ForwardedFor)
        .and_then(|x| x.split(',').next())
        .map(str::trim)
        .filter(|h| !h.is_empty() && *h != "-" && !h.eq_ignore_ascii_case("unknown"));
    hop.or_else(|| f.get(F::ClientAddress).map(str::trim))
        .filter(|a| !a.is_empty())
}

pub(super) fn client_agent(f: &Fields, type_: Code) -> Agent {
    let addr = client_address(f);
    let display = f.get(F::ClientId).map(str::trim).or(addr);
    Agent {
        type_: Some(type_.concept()),
        who: display.map(Reference::display),
        requestor: false,
        network: addr.map(network),
        ..Agent::default()
    }
}

pub(super) fn server_agent(ctx: &MapContext, f: &Fields, type_: Code) -> Agent {
    let name = f
        .get(F::ServerAddress)
        .map(str::trim)
        .unwrap_or(ctx.hostname.as_str());
    Agent {
        type_: Some(type_.concept()),
        who: Some(Reference::display(name)),
        requestor: false,
        network: Some(network(name)),
        ..Agent::default()
    }
}

/// The requesting user, typed `type_` for the pattern; a security token the fields carry adds
/// its agent type and `policy` to this same agent (see [`super::token`]), so the user slice of
/// a REST profile and the token profile's user slice are one agent.
pub(super) fn user_agent(ctx: &MapContext, f: &Fields, type_: Code) -> Option<Agent> {
    let token = super::token::Token::of(f);
    let saml = matches!(token, super::token::Token::Saml { .. });
    let subject = if saml { f.get(F::SamlSubject) } else { None };
    let user = subject.or_else(|| f.get(F::User))?.trim();
    let issuer_field = if saml { F::SamlIssuer } else { F::Issuer };
    let issuer = f
        .get(issuer_field)
        .map(str::trim)
        // Identifier.system is a uri: an issuer that is none is left out, not mangled.
        .filter(|i| i.contains(':') && !i.chars().any(char::is_whitespace))
        .map(str::to_owned);
    let mut who = Reference {
        identifier: Some(Identifier {
            system: issuer,
            value: Some(user.to_owned()),
            type_: None,
        }),
        ..Reference::default()
    };
    let mut agent = Agent {
        type_: Some(type_.concept()),
        requestor: true,
        ..Agent::default()
    };
    if ctx.mode == Mode::Comprehensive {
        if let Some(name) = f.get(F::UserName).map(str::trim) {
            who.display = Some(name.to_owned());
            agent.name = Some(name.to_owned());
        }
        if let Some(role) = f.get(F::UserRole).map(str::trim) {
            agent.role.push(CodeableConcept::from_text(role));
        }
    }
    agent.purpose_of_use = purposes(f);
    agent.who = Some(who);
    token.enhance(&mut agent);
    Some(agent)
}

/// The purpose-of-use codes (v3-ActReason), one per comma- or space-separated item: a FHIR
/// `code` holds no leading, trailing or repeated whitespace.
pub(super) fn purposes(f: &Fields) -> Vec<CodeableConcept> {
    f.get(F::PurposeOfUse)
        .unwrap_or("")
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|c| !c.is_empty())
        .map(|code| CodeableConcept::from_coding(Coding::new(codes::SYS_ACT_REASON, code, None)))
        .collect()
}

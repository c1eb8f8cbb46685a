//! Security-token add-ons (REFERENCE.md §7): when the fields of a line carry an OAuth or SAML
//! token, the user agent of the event says so and the event claims the matching token profile
//! *in addition to* its pattern profile (e.g. `PatientRead` + `OAUTHaccessTokenUse.Minimal`).
//!
//! In: the fields and the built event. Out: the user agent's type and `policy` extended, the
//! client agent extended for OAuth Comprehensive, and the add-on profiles or the reasons they
//! were withheld. Guarantees: the whole opaque token never reaches an event (only its last 32
//! characters), and nothing here logs a token.
//!
//! How the REST user slice and the token slices coexist: BALP slices agents by `type` with a
//! *pattern* (an agent belongs to a slice when its `type` contains the slice's coding), so one
//! agent typed `{IRCP, UserOauthAgent}` (or `{AUT, UserOauthAgent}` on a write) is both the REST
//! profile's `user` and the token profile's `oUser` — as the IG's own SAML examples do with
//! `{IRCP, UserSamlAgent}`. Their constraints are compatible (`who` 1..1, `requestor` = true, no
//! `media`/`network`, `policy` 1..1). A separate token agent would be a second requestor outside
//! the REST `user` slice, which the conformance checker rejects. Likewise the OAuth
//! Comprehensive `oClient` (`DCM#110150`, `who.identifier.value` = client_id) is the REST client
//! agent with `DCM#110150` added to its type: a separate agent would break the REST Delete
//! profile, whose client slice is itself `DCM#110150` with max 1.
//!
//! Decisions:
//! * OAuth with a `jti`: `.Minimal`, policy `urn:ietf:params:oauth:jti:<jti>` (prefixed unless it
//!   already is — the profile's SHALL; the IG example's unprefixed jti is a known quirk).
//!   `.Comprehensive` in addition in comprehensive mode when `client_id` is known and the event
//!   has a client agent; the user keeps `who.identifier` = (iss, sub), `who.display`/`name` =
//!   `user_name`, `role` = `user_role`, `purposeOfUse`.
//! * An opaque `token` without `jti`: `.Opaque`, policy = its last 32 characters.
//! * SAML (`saml_subject`/`saml_issuer`/`saml_assertion_id`): `.Minimal`, user typed
//!   `UserSamlAgent`, `who.identifier` = (issuer, subject), policy = [assertion id];
//!   `.Comprehensive` in addition in comprehensive mode (all its extra slices are optional).
//!   SAML wins over OAuth fields on the same line (one `policy` only).
//! * No user/subject, no assertion id, or no client_id: the profile is withheld and the
//!   downgrade counted (`events::profile_downgraded`).

use super::MapContext;
use super::codes::{self, profile};
use super::model::{Agent, Identifier, Reference};
use super::parts::Built;
use crate::config::Mode;
use crate::parse::{FieldName as F, Fields};

/// Prefix of a jti in `agent.policy` (RFC 3553 URN, OAuth Minimal profile).
pub const JTI_PREFIX: &str = "urn:ietf:params:oauth:jti:";

/// How many trailing characters of an opaque token are recorded.
pub const OPAQUE_KEEP: usize = 32;

/// The security token a line's fields carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// SAML assertion (any of the saml_* fields set).
    Saml {
        /// Assertion ID.
        assertion: Option<&'a str>,
    },
    /// OAuth token with a jti claim.
    Jti(&'a str),
    /// Opaque OAuth bearer token.
    Opaque(&'a str),
    /// None.
    None,
}

impl<'a> Token<'a> {
    /// Which token the fields carry.
    pub fn of(f: &'a Fields) -> Token<'a> {
        let get = |n| f.get(n).map(str::trim).filter(|v| !v.is_empty());
        if get(F::SamlAssertionId).is_some() || get(F::SamlSubject).is_some() {
            return Token::Saml {
                assertion: get(F::SamlAssertionId),
            };
        }
        if let Some(jti) = get(F::Jti) {
            return Token::Jti(jti);
        }
        match get(F::Token) {
            Some(t) => Token::Opaque(t),
            None => Token::None,
        }
    }

    /// Add the token's agent type and policy to the user agent.
    pub fn enhance(self, agent: &mut Agent) {
        let (code, policy) = match self {
            Token::Saml { assertion } => (codes::UA_USER_SAML, assertion.map(str::to_owned)),
            Token::Jti(jti) => (codes::UA_USER_OAUTH, Some(jti_policy(jti))),
            Token::Opaque(t) => (codes::UA_USER_OAUTH, Some(opaque_policy(t))),
            Token::None => return,
        };
        if let Some(t) = agent.type_.as_mut() {
            t.coding.push(code.coding());
        } else {
            agent.type_ = Some(code.concept());
        }
        if let Some(p) = policy {
            agent.policy = vec![uri_safe(&p)];
        }
    }
}

/// `policy` is a FHIR `uri` (no whitespace): whitespace is percent-encoded, so a mangled
/// identifier stays recognisable instead of being dropped.
fn uri_safe(s: &str) -> String {
    if !s.chars().any(char::is_whitespace) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_whitespace() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The jti as a policy URI: prefixed with [`JTI_PREFIX`] unless it already is.
pub fn jti_policy(jti: &str) -> String {
    if jti.starts_with(JTI_PREFIX) {
        jti.to_owned()
    } else {
        format!("{JTI_PREFIX}{jti}")
    }
}

/// The last [`OPAQUE_KEEP`] characters of an opaque token (never the whole token when longer).
/// A bearer token holds no whitespace (RFC 6750 b64token), so whitespace a log put in the value
/// is dropped first: `policy` is a `uri` and must not hold any.
pub fn opaque_policy(token: &str) -> String {
    let chars: Vec<char> = token.chars().filter(|c| !c.is_whitespace()).collect();
    chars[chars.len().saturating_sub(OPAQUE_KEEP)..]
        .iter()
        .collect()
}

/// Claim (or withhold) the token profiles the built event supports.
pub(super) fn apply(ctx: &MapContext, f: &Fields, b: &mut Built) {
    let token = Token::of(f);
    if token == Token::None {
        return;
    }
    let user = b
        .event
        .agent
        .iter()
        .any(|a| a.requestor && !a.policy.is_empty());
    let comprehensive = ctx.mode == Mode::Comprehensive;
    match token {
        Token::Saml { assertion } => {
            let has_user = b.event.agent.iter().any(|a| a.requestor);
            let reason = if !has_user {
                Some("no SAML subject")
            } else if assertion.is_none() {
                Some("no SAML assertion id")
            } else {
                None
            };
            match reason {
                None => {
                    b.extra.push(profile::SAML_MINIMAL);
                    if comprehensive {
                        b.extra.push(profile::SAML_COMPREHENSIVE);
                    }
                }
                Some(r) => b.withheld.push((profile::SAML_MINIMAL, r)),
            }
        }
        Token::Jti(_) => {
            if !user {
                b.withheld.push((profile::OAUTH_MINIMAL, "no user (sub)"));
                return;
            }
            b.extra.push(profile::OAUTH_MINIMAL);
            if !comprehensive {
                return;
            }
            let client_id = f.get(F::ClientId).map(str::trim);
            match (client_id, b.client_idx) {
                (Some(id), Some(i)) if i < b.event.agent.len() => {
                    o_client(&mut b.event.agent[i], id);
                    b.extra.push(profile::OAUTH_COMPREHENSIVE);
                }
                (None, _) => b
                    .withheld
                    .push((profile::OAUTH_COMPREHENSIVE, "client_id unknown")),
                _ => b
                    .withheld
                    .push((profile::OAUTH_COMPREHENSIVE, "no client agent")),
            }
        }
        Token::Opaque(_) => {
            if user {
                b.extra.push(profile::OAUTH_OPAQUE);
            } else {
                b.withheld.push((profile::OAUTH_OPAQUE, "no user"));
            }
        }
        Token::None => {}
    }
}

/// Make the client agent the OAuth Comprehensive `oClient` as well.
fn o_client(agent: &mut Agent, client_id: &str) {
    let app = codes::DCM_APPLICATION;
    match agent.type_.as_mut() {
        Some(t) if t.coding.iter().any(|c| c.is(app.system, app.code)) => {}
        Some(t) => t.coding.push(app.coding()),
        None => agent.type_ = Some(app.concept()),
    }
    let who = agent.who.get_or_insert_with(Reference::default);
    who.identifier = Some(Identifier::value(client_id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_policy_keeps_only_the_last_32_characters() {
        let token = "a".repeat(40) + &"b".repeat(32);
        assert_eq!(opaque_policy(&token), "b".repeat(32));
        assert_eq!(opaque_policy("short"), "short");
        assert_eq!(opaque_policy("a b"), "ab");
        assert_eq!(opaque_policy(&"ü".repeat(40)).chars().count(), 32);
    }

    #[test]
    fn policies_never_hold_whitespace() {
        assert_eq!(uri_safe("a b\u{a0}c"), "a%20b%C2%A0c");
        assert_eq!(uri_safe("plain"), "plain");
    }

    #[test]
    fn jti_is_prefixed_once() {
        assert_eq!(jti_policy("abc"), "urn:ietf:params:oauth:jti:abc");
        assert_eq!(
            jti_policy("urn:ietf:params:oauth:jti:abc"),
            "urn:ietf:params:oauth:jti:abc"
        );
    }

    #[test]
    fn saml_wins_over_oauth_and_jti_over_opaque() {
        let mut f = Fields::default();
        f.set(F::Token, "t");
        assert_eq!(Token::of(&f), Token::Opaque("t"));
        f.set(F::Jti, "j");
        assert_eq!(Token::of(&f), Token::Jti("j"));
        f.set(F::SamlSubject, "s");
        assert_eq!(Token::of(&f), Token::Saml { assertion: None });
    }
}

//! A typed serde model of the FHIR R4 (4.0.1) `AuditEvent` resource, restricted to the elements
//! BALP and this agent use.
//!
//! In: nothing (plain data). Out: JSON through serde. Guarantees: the R4 shapes are distinct
//! types — `type`/`subtype`/`entity.type`/`entity.role`/`source.type` are [`Coding`],
//! `agent.type`/`agent.role`/`purposeOfUse` are [`CodeableConcept`], and `action`, `outcome` and
//! `network.type` are code enums that serialize as bare strings. Empty and absent elements are
//! never written, `resourceType` is always `"AuditEvent"`, and there is no `identifier` element
//! (R4 AuditEvent has none; the event id travels in a root extension instead).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use uuid::Uuid;

/// Marker that serializes as the string `"AuditEvent"` and accepts only that on input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditEventResourceType;

impl Serialize for AuditEventResourceType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("AuditEvent")
    }
}

impl<'de> Deserialize<'de> for AuditEventResourceType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "AuditEvent" {
            Ok(AuditEventResourceType)
        } else {
            Err(serde::de::Error::custom(format!(
                "resourceType is {s:?}, expected \"AuditEvent\""
            )))
        }
    }
}

/// A `Coding`: one code from one system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
///
/// The parts are `Cow` because nearly every coding an event carries is a constant of
/// [`codes`](super::codes): borrowing them saves three allocations per coding.
pub struct Coding {
    /// Code system URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Cow<'static, str>>,
    /// The code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Cow<'static, str>>,
    /// Human-readable display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<Cow<'static, str>>,
}

impl Coding {
    /// A coding with system, code and an optional display.
    pub fn new(system: &str, code: &str, display: Option<&str>) -> Coding {
        Coding {
            system: Some(Cow::Owned(system.to_owned())),
            code: Some(Cow::Owned(code.to_owned())),
            display: display.map(|d| Cow::Owned(d.to_owned())),
        }
    }

    /// A coding of constants, borrowed rather than copied.
    pub fn constant(
        system: &'static str,
        code: &'static str,
        display: Option<&'static str>,
    ) -> Coding {
        Coding {
            system: Some(Cow::Borrowed(system)),
            code: Some(Cow::Borrowed(code)),
            display: display.map(Cow::Borrowed),
        }
    }

    /// True when system and code equal the given ones.
    pub fn is(&self, system: &str, code: &str) -> bool {
        self.system.as_deref() == Some(system) && self.code.as_deref() == Some(code)
    }
}

/// A `CodeableConcept`: codings and/or text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeableConcept {
    /// The codings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coding: Vec<Coding>,
    /// Plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl CodeableConcept {
    /// A concept holding one coding.
    pub fn from_coding(c: Coding) -> CodeableConcept {
        CodeableConcept {
            coding: vec![c],
            text: None,
        }
    }

    /// A concept holding only text.
    pub fn from_text(text: &str) -> CodeableConcept {
        CodeableConcept {
            coding: Vec::new(),
            text: Some(text.to_owned()),
        }
    }
}

/// An `Identifier` (system, value, and the optional type the IG's token examples use).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identifier {
    /// Identifier type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<CodeableConcept>,
    /// Namespace URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl Identifier {
    /// An identifier with only a value.
    pub fn value(value: &str) -> Identifier {
        Identifier {
            value: Some(value.to_owned()),
            ..Identifier::default()
        }
    }
}

/// A `Reference`: literal reference, logical identifier, type and/or display.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// Literal reference, e.g. `Patient/123`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Type the reference refers to (a resource type name).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Logical reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
    /// Text alternative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Reference {
    /// A literal reference (`Type/id`).
    pub fn to(reference: &str) -> Reference {
        Reference {
            reference: Some(reference.to_owned()),
            ..Reference::default()
        }
    }

    /// A reference carrying only a display.
    pub fn display(display: &str) -> Reference {
        Reference {
            display: Some(display.to_owned()),
            ..Reference::default()
        }
    }

    /// A logical reference by identifier value.
    pub fn identifier(value: &str) -> Reference {
        Reference {
            identifier: Some(Identifier::value(value)),
            ..Reference::default()
        }
    }
}

/// An `Extension` with the value types the agent and the IG examples use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    /// Extension definition URL.
    pub url: String,
    /// `valueIdentifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_identifier: Option<Identifier>,
    /// `valueCodeableConcept`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_codeable_concept: Option<CodeableConcept>,
}

/// Resource `meta`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Claimed profiles (canonical URLs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<String>,
    /// Security labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security: Vec<Coding>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag: Vec<Coding>,
}

impl Meta {
    /// True when nothing is set (then `meta` is left out).
    pub fn is_empty(&self) -> bool {
        self.profile.is_empty() && self.security.is_empty() && self.tag.is_empty()
    }
}

/// A `Period`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// Start instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// End instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// `AuditEvent.action` (required binding audit-event-action).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Create.
    C,
    /// Read/View/Print.
    R,
    /// Update.
    U,
    /// Delete.
    D,
    /// Execute.
    E,
}

/// `AuditEvent.outcome` (required binding audit-event-outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// 0 Success.
    #[serde(rename = "0")]
    Success,
    /// 4 Minor failure.
    #[serde(rename = "4")]
    MinorFailure,
    /// 8 Serious failure.
    #[serde(rename = "8")]
    SeriousFailure,
    /// 12 Major failure.
    #[serde(rename = "12")]
    MajorFailure,
}

/// `agent.network.type` (required binding network-type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkType {
    /// 1 Machine Name.
    #[serde(rename = "1")]
    MachineName,
    /// 2 IP Address.
    #[serde(rename = "2")]
    IpAddress,
    /// 3 Telephone Number.
    #[serde(rename = "3")]
    Telephone,
    /// 4 Email address.
    #[serde(rename = "4")]
    Email,
    /// 5 URI.
    #[serde(rename = "5")]
    Uri,
}

/// `agent.network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// What kind of address.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<NetworkType>,
}

/// `AuditEvent.agent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// Agent extensions (e.g. BALP otherId / assuranceLevel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    /// How the agent participated (the slice discriminator).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<CodeableConcept>,
    /// Roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role: Vec<CodeableConcept>,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<Reference>,
    /// Alternative user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_id: Option<String>,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether this agent initiated the event (R4: 1..1, always written).
    pub requestor: bool,
    /// Where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Reference>,
    /// Policies that authorized the event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<String>,
    /// Media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Coding>,
    /// Network location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Reasons given for this user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purpose_of_use: Vec<CodeableConcept>,
}

/// `AuditEvent.source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Logical site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Who recorded the event (R4: 1..1).
    pub observer: Reference,
    /// security-source-type codings.
    #[serde(default, rename = "type", skip_serializing_if = "Vec::is_empty")]
    pub type_: Vec<Coding>,
}

/// `entity.detail`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityDetail {
    /// Name of the property.
    #[serde(rename = "type")]
    pub type_: String,
    /// `valueString`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_string: Option<String>,
    /// `valueBase64Binary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64_binary: Option<String>,
}

/// `AuditEvent.entity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entity {
    /// The object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<Reference>,
    /// audit-entity-type (the slice discriminator).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<Coding>,
    /// object-role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Coding>,
    /// object-lifecycle-events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Coding>,
    /// Security labels of the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_label: Vec<Coding>,
    /// Name (never together with `query`: sev-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The raw query, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Additional properties.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detail: Vec<EntityDetail>,
}

/// An R4 AuditEvent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Always "AuditEvent".
    pub resource_type: AuditEventResourceType,
    /// Deterministic id (a UUID for agent-made events).
    pub id: String,
    /// Profiles, tags, security labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
    /// Root extensions (the event-id extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    /// Event type (a Coding, 1..1).
    #[serde(rename = "type")]
    pub type_: Coding,
    /// Event subtypes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtype: Vec<Coding>,
    /// C/R/U/D/E.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// When the activity occurred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// FHIR instant.
    pub recorded: String,
    /// 0/4/8/12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Outcome text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_desc: Option<String>,
    /// Purpose of the event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purpose_of_event: Vec<CodeableConcept>,
    /// Actors (1..*).
    #[serde(default)]
    pub agent: Vec<Agent>,
    /// Who recorded it.
    pub source: Source,
    /// Objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entity: Vec<Entity>,
}

impl AuditEvent {
    /// The id as a UUID (nil if it is not one).
    pub fn uuid(&self) -> Uuid {
        Uuid::parse_str(&self.id).unwrap_or_default()
    }

    /// The claimed profiles (empty when none).
    pub fn profiles(&self) -> &[String] {
        self.meta
            .as_ref()
            .map(|m| m.profile.as_slice())
            .unwrap_or(&[])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The IG's example AuditEvents: (path, JSON), sorted by path.
    pub(crate) fn examples() -> Vec<(String, serde_json::Value)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/balp/examples");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((
                path.display().to_string(),
                serde_json::from_str(&text).unwrap(),
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn every_ig_example_round_trips_through_the_model() {
        let all = examples();
        assert_eq!(all.len(), 46);
        for (name, mut value) in all {
            // The narrative is generated by the IG publisher and is not part of the model.
            if let Some(o) = value.as_object_mut() {
                o.remove("text");
            }
            let event: AuditEvent =
                serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let back = serde_json::to_value(&event).unwrap();
            assert_eq!(back, value, "{name} changed in the round trip");
        }
    }

    #[test]
    fn resource_type_is_audit_event_and_nothing_empty_is_written() {
        let ev = AuditEvent::default();
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["resourceType"], "AuditEvent");
        let o = v.as_object().unwrap();
        assert!(!o.contains_key("identifier"));
        assert!(!o.contains_key("meta"));
        assert!(!o.contains_key("entity"));
        assert_eq!(o["source"]["observer"], serde_json::json!({}));
        let bad = serde_json::json!({"resourceType": "Patient", "id": "x", "type": {},
            "recorded": "2020-01-01T00:00:00Z", "agent": [], "source": {"observer": {}}});
        assert!(serde_json::from_value::<AuditEvent>(bad).is_err());
    }

    #[test]
    fn codes_serialize_as_bare_strings() {
        assert_eq!(serde_json::to_value(Outcome::SeriousFailure).unwrap(), "8");
        assert_eq!(serde_json::to_value(Action::E).unwrap(), "E");
        assert_eq!(serde_json::to_value(NetworkType::IpAddress).unwrap(), "2");
    }
}

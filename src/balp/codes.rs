//! The code systems, codes and profile URLs BALP 1.1.4 and FHIR R4 AuditEvent use
//! (REFERENCE.md §1 and §3), as constants.
//!
//! In: nothing. Out: [`Code`] constants (system, code, display) that turn into [`Coding`] or
//! [`CodeableConcept`] values, and profile canonical URLs. Displays are the R4 / IG ones.

use super::model::{CodeableConcept, Coding};

/// A code with its system and display, usable in `const` tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// Code system URI.
    pub system: &'static str,
    /// The code.
    pub code: &'static str,
    /// Display text.
    pub display: &'static str,
}

impl Code {
    /// As a `Coding` with display.
    pub fn coding(&self) -> Coding {
        Coding::constant(self.system, self.code, Some(self.display))
    }

    /// As a `CodeableConcept` with one coding.
    pub fn concept(&self) -> CodeableConcept {
        CodeableConcept::from_coding(self.coding())
    }
}

const fn code(system: &'static str, code: &'static str, display: &'static str) -> Code {
    Code {
        system,
        code,
        display,
    }
}

/// `http://terminology.hl7.org/CodeSystem/audit-event-type`.
pub const SYS_AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
/// `http://hl7.org/fhir/restful-interaction`.
pub const SYS_RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
/// DICOM controlled terminology.
pub const SYS_DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// `http://terminology.hl7.org/CodeSystem/audit-entity-type`.
pub const SYS_AUDIT_ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
/// `http://terminology.hl7.org/CodeSystem/object-role`.
pub const SYS_OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
/// `http://terminology.hl7.org/CodeSystem/security-source-type`.
pub const SYS_SECURITY_SOURCE_TYPE: &str =
    "http://terminology.hl7.org/CodeSystem/security-source-type";
/// `http://terminology.hl7.org/CodeSystem/v3-ParticipationType`.
pub const SYS_PARTICIPATION_TYPE: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
/// `http://terminology.hl7.org/CodeSystem/provenance-participant-type`.
pub const SYS_PROVENANCE_PARTICIPANT_TYPE: &str =
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
/// `http://terminology.hl7.org/CodeSystem/extra-security-role-type`.
pub const SYS_EXTRA_SECURITY_ROLE_TYPE: &str =
    "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
/// `http://terminology.hl7.org/CodeSystem/v3-RoleClass`.
pub const SYS_ROLE_CLASS: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleClass";
/// `http://terminology.hl7.org/CodeSystem/v3-ActReason` (purpose of use).
pub const SYS_ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
/// SNOMED CT.
pub const SYS_SCT: &str = "http://snomed.info/sct";
/// `http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle`.
pub const SYS_ISO_21089_LIFECYCLE: &str =
    "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle";
/// `http://hl7.org/fhir/resource-types`.
pub const SYS_RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";
/// `urn:ihe:event-type-code`.
pub const SYS_IHE_EVENT_TYPE: &str = "urn:ihe:event-type-code";
/// `urn:ihe:iti:xca:2010`.
pub const SYS_XCA: &str = "urn:ihe:iti:xca:2010";
/// `http://terminology.hl7.org/CodeSystem/v2-0203`.
pub const SYS_V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
/// BALP `BasicAuditEntityType`.
pub const SYS_BASIC_AUDIT_ENTITY_TYPE: &str =
    "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
/// BALP `UserAgentTypes` (case-insensitive code system).
pub const SYS_USER_AGENT_TYPES: &str =
    "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes";
/// BALP `AuthZsubType`.
pub const SYS_AUTHZ_SUBTYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType";
/// BALP `OtherIdentifierTypes`.
pub const SYS_OTHER_IDENTIFIER_TYPES: &str =
    "https://profiles.ihe.net/ITI/BALP/CodeSystem/OtherIdentifierTypes";
/// System of the `meta.tag` codings that flag altered lines (agent-defined).
pub const SYS_LINE_FLAG: &str = "urn:balp-agent:line-flag";
/// System of `valueIdentifier` in the event-id extension.
pub const SYS_RFC3986: &str = "urn:ietf:rfc:3986";

// --- event types -------------------------------------------------------------------------

/// audit-event-type#rest.
pub const TYPE_REST: Code = code(SYS_AUDIT_EVENT_TYPE, "rest", "Restful Operation");
/// DCM 110100 Application Activity.
pub const DCM_APPLICATION_ACTIVITY: Code = code(SYS_DCM, "110100", "Application Activity");
/// DCM 110106 Export.
pub const DCM_EXPORT: Code = code(SYS_DCM, "110106", "Export");
/// DCM 110107 Import.
pub const DCM_IMPORT: Code = code(SYS_DCM, "110107", "Import");
/// DCM 110110 Patient Record.
pub const DCM_PATIENT_RECORD: Code = code(SYS_DCM, "110110", "Patient Record");
/// DCM 110112 Query.
pub const DCM_QUERY: Code = code(SYS_DCM, "110112", "Query");
/// DCM 110113 Security Alert.
pub const DCM_SECURITY_ALERT: Code = code(SYS_DCM, "110113", "Security Alert");
/// DCM 110114 User Authentication.
pub const DCM_USER_AUTHENTICATION: Code = code(SYS_DCM, "110114", "User Authentication");

// --- DCM subtypes ------------------------------------------------------------------------

/// DCM 110120 Application Start.
pub const DCM_APPLICATION_START: Code = code(SYS_DCM, "110120", "Application Start");
/// DCM 110121 Application Stop.
pub const DCM_APPLICATION_STOP: Code = code(SYS_DCM, "110121", "Application Stop");
/// DCM 110122 Login.
pub const DCM_LOGIN: Code = code(SYS_DCM, "110122", "Login");
/// DCM 110123 Logout.
pub const DCM_LOGOUT: Code = code(SYS_DCM, "110123", "Logout");
/// DCM 110126 Node Authentication.
pub const DCM_NODE_AUTHENTICATION: Code = code(SYS_DCM, "110126", "Node Authentication");
/// DCM 110127 Emergency Override Started.
pub const DCM_EMERGENCY_OVERRIDE_STARTED: Code =
    code(SYS_DCM, "110127", "Emergency Override Started");
/// DCM 110129 Security Configuration.
pub const DCM_SECURITY_CONFIGURATION: Code = code(SYS_DCM, "110129", "Security Configuration");
/// DCM 110131 Software Configuration.
pub const DCM_SOFTWARE_CONFIGURATION: Code = code(SYS_DCM, "110131", "Software Configuration");
/// DCM 110132 Use of Restricted Function.
pub const DCM_USE_OF_RESTRICTED_FUNCTION: Code =
    code(SYS_DCM, "110132", "Use of Restricted Function");
/// DCM 110136 Security Roles Changed.
pub const DCM_SECURITY_ROLES_CHANGED: Code = code(SYS_DCM, "110136", "Security Roles Changed");
/// DCM 110137 User security Attributes Changed.
pub const DCM_USER_SECURITY_ATTRIBUTES_CHANGED: Code =
    code(SYS_DCM, "110137", "User security Attributes Changed");
/// DCM 110139 Remote Service Operation Started.
pub const DCM_REMOTE_SERVICE_OPERATION_STARTED: Code =
    code(SYS_DCM, "110139", "Remote Service Operation Started");

/// Every DCM subtype this agent knows a display for (SecurityAlert `subtype` field lookup).
pub const DCM_SUBTYPES: &[Code] = &[
    DCM_APPLICATION_START,
    DCM_APPLICATION_STOP,
    DCM_LOGIN,
    DCM_LOGOUT,
    DCM_NODE_AUTHENTICATION,
    DCM_EMERGENCY_OVERRIDE_STARTED,
    DCM_SECURITY_CONFIGURATION,
    DCM_SOFTWARE_CONFIGURATION,
    DCM_USE_OF_RESTRICTED_FUNCTION,
    DCM_SECURITY_ROLES_CHANGED,
    DCM_USER_SECURITY_ATTRIBUTES_CHANGED,
    DCM_REMOTE_SERVICE_OPERATION_STARTED,
];

// --- DCM agent types ---------------------------------------------------------------------

/// DCM 110150 Application.
pub const DCM_APPLICATION: Code = code(SYS_DCM, "110150", "Application");
/// DCM 110151 Application Launcher.
pub const DCM_APPLICATION_LAUNCHER: Code = code(SYS_DCM, "110151", "Application Launcher");
/// DCM 110152 Destination Role ID.
pub const DCM_DESTINATION_ROLE_ID: Code = code(SYS_DCM, "110152", "Destination Role ID");
/// DCM 110153 Source Role ID.
pub const DCM_SOURCE_ROLE_ID: Code = code(SYS_DCM, "110153", "Source Role ID");
/// DCM 110154 Destination Media.
pub const DCM_DESTINATION_MEDIA: Code = code(SYS_DCM, "110154", "Destination Media");
/// DCM 110155 Source Media.
pub const DCM_SOURCE_MEDIA: Code = code(SYS_DCM, "110155", "Source Media");

// --- restful-interaction -----------------------------------------------------------------

/// restful-interaction#create.
pub const RI_CREATE: Code = code(SYS_RESTFUL_INTERACTION, "create", "create");
/// restful-interaction#read.
pub const RI_READ: Code = code(SYS_RESTFUL_INTERACTION, "read", "read");
/// restful-interaction#vread.
pub const RI_VREAD: Code = code(SYS_RESTFUL_INTERACTION, "vread", "vread");
/// restful-interaction#update.
pub const RI_UPDATE: Code = code(SYS_RESTFUL_INTERACTION, "update", "update");
/// restful-interaction#patch.
pub const RI_PATCH: Code = code(SYS_RESTFUL_INTERACTION, "patch", "patch");
/// restful-interaction#delete.
pub const RI_DELETE: Code = code(SYS_RESTFUL_INTERACTION, "delete", "delete");
/// restful-interaction#search.
pub const RI_SEARCH: Code = code(SYS_RESTFUL_INTERACTION, "search", "search");
/// restful-interaction#search-type.
pub const RI_SEARCH_TYPE: Code = code(SYS_RESTFUL_INTERACTION, "search-type", "search-type");
/// restful-interaction#search-system.
pub const RI_SEARCH_SYSTEM: Code = code(SYS_RESTFUL_INTERACTION, "search-system", "search-system");
/// restful-interaction#history.
pub const RI_HISTORY: Code = code(SYS_RESTFUL_INTERACTION, "history", "history");
/// restful-interaction#history-instance.
pub const RI_HISTORY_INSTANCE: Code = code(
    SYS_RESTFUL_INTERACTION,
    "history-instance",
    "history-instance",
);
/// restful-interaction#history-type.
pub const RI_HISTORY_TYPE: Code = code(SYS_RESTFUL_INTERACTION, "history-type", "history-type");
/// restful-interaction#history-system.
pub const RI_HISTORY_SYSTEM: Code =
    code(SYS_RESTFUL_INTERACTION, "history-system", "history-system");
/// restful-interaction#capabilities.
pub const RI_CAPABILITIES: Code = code(SYS_RESTFUL_INTERACTION, "capabilities", "capabilities");
/// restful-interaction#transaction.
pub const RI_TRANSACTION: Code = code(SYS_RESTFUL_INTERACTION, "transaction", "transaction");
/// restful-interaction#batch.
pub const RI_BATCH: Code = code(SYS_RESTFUL_INTERACTION, "batch", "batch");
/// restful-interaction#operation.
pub const RI_OPERATION: Code = code(SYS_RESTFUL_INTERACTION, "operation", "operation");

// --- participation -----------------------------------------------------------------------

/// v3-ParticipationType#IRCP.
pub const PART_IRCP: Code = code(SYS_PARTICIPATION_TYPE, "IRCP", "information recipient");
/// v3-ParticipationType#AUT.
pub const PART_AUT: Code = code(SYS_PARTICIPATION_TYPE, "AUT", "author (originator)");
/// v3-ParticipationType#INF.
pub const PART_INF: Code = code(SYS_PARTICIPATION_TYPE, "INF", "Informant");
/// v3-ParticipationType#CST.
pub const PART_CST: Code = code(SYS_PARTICIPATION_TYPE, "CST", "Custodian");
/// provenance-participant-type#custodian.
pub const PROV_CUSTODIAN: Code = code(SYS_PROVENANCE_PARTICIPANT_TYPE, "custodian", "Custodian");
/// extra-security-role-type#humanuser (R4 core `example-login` user agent).
pub const ROLE_HUMANUSER: Code = code(SYS_EXTRA_SECURITY_ROLE_TYPE, "humanuser", "human user");
/// extra-security-role-type#authserver.
pub const ROLE_AUTHSERVER: Code = code(
    SYS_EXTRA_SECURITY_ROLE_TYPE,
    "authserver",
    "authorization server",
);
/// v3-RoleClass#PROV.
pub const ROLE_CLASS_PROV: Code = code(SYS_ROLE_CLASS, "PROV", "healthcare provider");
/// SNOMED 159541003 Record keeping/library clerk (disclosure custodian).
pub const SCT_CUSTODIAN: Code = code(SYS_SCT, "159541003", "Record keeping/library clerk");
/// SNOMED 429577009 Patient Advocate (disclosure authorizer).
pub const SCT_AUTHORIZER: Code = code(SYS_SCT, "429577009", "Patient Advocate");

// --- entities ----------------------------------------------------------------------------

/// audit-entity-type#1 Person.
pub const ENTITY_PERSON: Code = code(SYS_AUDIT_ENTITY_TYPE, "1", "Person");
/// audit-entity-type#2 System Object.
pub const ENTITY_SYSTEM_OBJECT: Code = code(SYS_AUDIT_ENTITY_TYPE, "2", "System Object");
/// audit-entity-type#3 Organization.
pub const ENTITY_ORGANIZATION: Code = code(SYS_AUDIT_ENTITY_TYPE, "3", "Organization");
/// audit-entity-type#4 Other.
pub const ENTITY_OTHER: Code = code(SYS_AUDIT_ENTITY_TYPE, "4", "Other");
/// object-role#1 Patient.
pub const ROLE_PATIENT: Code = code(SYS_OBJECT_ROLE, "1", "Patient");
/// object-role#3 Report.
pub const ROLE_REPORT: Code = code(SYS_OBJECT_ROLE, "3", "Report");
/// object-role#4 Domain Resource.
pub const ROLE_DOMAIN_RESOURCE: Code = code(SYS_OBJECT_ROLE, "4", "Domain Resource");
/// object-role#11 Security User Entity.
pub const ROLE_SECURITY_USER: Code = code(SYS_OBJECT_ROLE, "11", "Security User Entity");
/// object-role#13 Security Resource.
pub const ROLE_SECURITY_RESOURCE: Code = code(SYS_OBJECT_ROLE, "13", "Security Resource");
/// object-role#20 Job.
pub const ROLE_JOB: Code = code(SYS_OBJECT_ROLE, "20", "Job");
/// object-role#24 Query.
pub const ROLE_QUERY: Code = code(SYS_OBJECT_ROLE, "24", "Query");
/// BasicAuditEntityType#XrequestId.
pub const ENTITY_XREQUEST_ID: Code = code(
    SYS_BASIC_AUDIT_ENTITY_TYPE,
    "XrequestId",
    "transport specific unique identifier where http X-Request-Id is used",
);
/// resource-types#Consent.
pub const RESOURCE_CONSENT: Code = code(SYS_RESOURCE_TYPES, "Consent", "Consent");
/// iso-21089-lifecycle#disclose.
pub const LIFECYCLE_DISCLOSE: Code = code(
    SYS_ISO_21089_LIFECYCLE,
    "disclose",
    "Disclose Record Lifecycle Event",
);
/// UserAgentTypes#UserOauthAgent.
pub const UA_USER_OAUTH: Code = code(
    SYS_USER_AGENT_TYPES,
    "UserOauthAgent",
    "User OAuth Agent participant",
);
/// UserAgentTypes#UserSamlAgent.
pub const UA_USER_SAML: Code = code(
    SYS_USER_AGENT_TYPES,
    "UserSamlAgent",
    "User SAML Agent participant",
);
/// UserAgentTypes#AuthzOauthService.
pub const UA_AUTHZ_OAUTH_SERVICE: Code = code(
    SYS_USER_AGENT_TYPES,
    "AuthzOauthService",
    "OAuth Authorization Server",
);
/// urn:ihe:event-type-code#ITI-71.
pub const IHE_ITI_71: Code = code(SYS_IHE_EVENT_TYPE, "ITI-71", "Get Access Token");

/// Line flag tag: the line was truncated.
pub const FLAG_TRUNCATED: Code = code(SYS_LINE_FLAG, "truncated", "line truncated");
/// Line flag tag: the line held invalid UTF-8.
pub const FLAG_INVALID_UTF8: Code = code(SYS_LINE_FLAG, "invalid-utf8", "invalid UTF-8 replaced");
/// Line flag tag: the line's time could not be read; `recorded` is the syslog header's time
/// or, without one, the time the agent read the line.
pub const FLAG_TIME_UNREADABLE: Code = code(
    SYS_LINE_FLAG,
    "time-unreadable",
    "time not readable from the line",
);

// --- security-source-type ----------------------------------------------------------------

/// security-source-type codes with displays.
pub const SOURCE_TYPES: &[Code] = &[
    code(SYS_SECURITY_SOURCE_TYPE, "1", "User Device"),
    code(SYS_SECURITY_SOURCE_TYPE, "2", "Data Interface"),
    code(SYS_SECURITY_SOURCE_TYPE, "3", "Web Server"),
    code(SYS_SECURITY_SOURCE_TYPE, "4", "Application Server"),
    code(SYS_SECURITY_SOURCE_TYPE, "5", "Database Server"),
    code(SYS_SECURITY_SOURCE_TYPE, "6", "Security Server"),
    code(SYS_SECURITY_SOURCE_TYPE, "7", "Network Device"),
    code(SYS_SECURITY_SOURCE_TYPE, "8", "Network Router"),
    code(SYS_SECURITY_SOURCE_TYPE, "9", "Other"),
];

/// The `source.type` coding for a security-source-type code (no display for unknown codes).
pub fn source_type(code_value: &str) -> Coding {
    match SOURCE_TYPES.iter().find(|c| c.code == code_value) {
        Some(c) => c.coding(),
        None => Coding::new(SYS_SECURITY_SOURCE_TYPE, code_value, None),
    }
}

/// The DCM subtype for a code from a parser's `subtype` field, if it is one this agent knows.
pub fn dcm_subtype(code_value: &str) -> Option<Code> {
    DCM_SUBTYPES.iter().copied().find(|c| c.code == code_value)
}

// --- profiles ----------------------------------------------------------------------------

/// Prefix of every BALP StructureDefinition canonical URL.
pub const PROFILE_BASE: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/";

/// Canonical URL of a BALP profile from its id (e.g. `IHE.BasicAudit.PatientRead`).
pub fn profile_url(id: &str) -> String {
    format!("{PROFILE_BASE}{id}")
}

/// Profile ids (append to [`PROFILE_BASE`]).
pub mod profile {
    /// Create.
    pub const CREATE: &str = "IHE.BasicAudit.Create";
    /// PatientCreate.
    pub const PATIENT_CREATE: &str = "IHE.BasicAudit.PatientCreate";
    /// Read.
    pub const READ: &str = "IHE.BasicAudit.Read";
    /// PatientRead.
    pub const PATIENT_READ: &str = "IHE.BasicAudit.PatientRead";
    /// Update.
    pub const UPDATE: &str = "IHE.BasicAudit.Update";
    /// PatientUpdate.
    pub const PATIENT_UPDATE: &str = "IHE.BasicAudit.PatientUpdate";
    /// Delete.
    pub const DELETE: &str = "IHE.BasicAudit.Delete";
    /// PatientDelete.
    pub const PATIENT_DELETE: &str = "IHE.BasicAudit.PatientDelete";
    /// Query.
    pub const QUERY: &str = "IHE.BasicAudit.Query";
    /// PatientQuery.
    pub const PATIENT_QUERY: &str = "IHE.BasicAudit.PatientQuery";
    /// Privacy disclosure at the recipient.
    pub const DISCLOSURE_RECIPIENT: &str = "IHE.BasicAudit.PrivacyDisclosure.Recipient";
    /// Privacy disclosure at the source.
    pub const DISCLOSURE_SOURCE: &str = "IHE.BasicAudit.PrivacyDisclosure.Source";
    /// Authorization decision.
    pub const AUTHZ_CONSENT: &str = "IHE.BasicAudit.AuthZconsent";
    /// SAML token use, minimal.
    pub const SAML_MINIMAL: &str = "IHE.BasicAudit.SAMLaccessTokenUse.Minimal";
    /// SAML token use, comprehensive.
    pub const SAML_COMPREHENSIVE: &str = "IHE.BasicAudit.SAMLaccessTokenUse.Comprehensive";
    /// OAuth opaque token use.
    pub const OAUTH_OPAQUE: &str = "IHE.BasicAudit.OAUTHaccessTokenUse.Opaque";
    /// OAuth token use, minimal.
    pub const OAUTH_MINIMAL: &str = "IHE.BasicAudit.OAUTHaccessTokenUse.Minimal";
    /// OAuth token use, comprehensive.
    pub const OAUTH_COMPREHENSIVE: &str = "IHE.BasicAudit.OAUTHaccessTokenUse.Comprehensive";
    /// IUA ITI-71 Get Access Token.
    pub const IUA_71: &str = "IHE.IUA.71";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_urls_are_canonical() {
        assert_eq!(
            profile_url(profile::PATIENT_READ),
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
        );
    }

    #[test]
    fn source_type_and_subtype_lookups() {
        assert_eq!(
            source_type("4").display.as_deref(),
            Some("Application Server")
        );
        assert_eq!(source_type("x").display, None);
        assert_eq!(dcm_subtype("110132"), Some(DCM_USE_OF_RESTRICTED_FUNCTION));
        assert_eq!(dcm_subtype("nope"), None);
    }
}

//! The part of the FHIR R4 data model this crate writes and reads, as serde types.
//!
//! Only the elements in the mapping (docs/fhir.md) are modelled. Deserialising ignores every other element, so a
//! foreign AuditEvent with narrative, contained resources or elements we do not map still reads; what is ignored
//! is listed in the docs as lossy.

use serde::{Deserialize, Serialize};

use crate::codes;

/// A code from a code system.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Coding {
    /// The code system's URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human-readable text for the code (never used when reading back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Coding {
    /// A coding with system, code and display.
    pub fn new(system: &str, code: &str, display: &str) -> Self {
        Self { system: Some(system.into()), code: Some(code.into()), display: Some(display.into()) }
    }

    /// Whether this coding is `code` in `system` (display ignored, as FHIR compares codings).
    pub fn is(&self, system: &str, code: &str) -> bool {
        self.system.as_deref() == Some(system) && self.code.as_deref() == Some(code)
    }

    /// The (system, code) pair that identifies the concept.
    pub fn key(&self) -> (Option<&str>, Option<&str>) {
        (self.system.as_deref(), self.code.as_deref())
    }
}

/// Codings plus text.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CodeableConcept {
    /// Codes for the concept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coding: Vec<Coding>,
    /// Plain text for the concept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Extensions of `text`.
    #[serde(rename = "_text", default, skip_serializing_if = "Option::is_none")]
    pub text_ext: Option<PrimitiveExtensions>,
}

/// An identifier of a business object.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Identifier {
    /// Namespace of the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Kind of identifier; audit-db puts the target resource type in `text`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<CodeableConcept>,
    /// The identifier itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Extensions of `value`.
    #[serde(rename = "_value", default, skip_serializing_if = "Option::is_none")]
    pub value_ext: Option<PrimitiveExtensions>,
}

/// A reference to another resource, literal (`Patient/123`) or logical (by identifier).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Reference {
    /// Literal reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Type the reference refers to (a resource type name).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Logical reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
    /// Text alternative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// A UCUM quantity of time.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Duration {
    /// Numerical value (JSON number; kept as its text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Number>,
    /// Unit for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Unit system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Unit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// An extension with the value types audit-db uses. Other value types are not modelled (ignored on reading).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    /// What the extension means.
    pub url: String,
    /// String value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_string: Option<String>,
    /// Extensions of `valueString`.
    #[serde(rename = "_valueString", default, skip_serializing_if = "Option::is_none")]
    pub value_string_ext: Option<PrimitiveExtensions>,
    /// Instant value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_instant: Option<String>,
    /// Boolean value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_boolean: Option<bool>,
    /// Duration value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_duration: Option<Duration>,
}

impl Extension {
    /// A valueString extension (any text: see [`FhirString`]).
    pub fn string(url: &str, value: &str) -> Self {
        let (value_string, value_string_ext) = FhirString::split(value);
        Self { url: url.into(), value_string, value_string_ext, ..Self::default() }
    }
}

/// The extensions of a primitive element (`_outcomeDesc` in JSON).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PrimitiveExtensions {
    /// The extensions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
}

/// Text in FHIR JSON: a FHIR `string` must contain a character other than whitespace (space, tab, CR and LF
/// excepted), so the empty string and strings of only other whitespace (U+00A0, U+2028, vertical tab, ...) travel
/// as JSON string text in the [`codes::ext::JSON_STRING`] extension of the primitive instead of as its value.
#[derive(Debug)]
pub struct FhirString;

impl FhirString {
    /// Whether FHIR's `string` pattern `[ \r\n\t\S]+` accepts `s` (`\s` is Unicode White_Space).
    pub fn is_valid(s: &str) -> bool {
        s.chars().any(|c| matches!(c, ' ' | '\r' | '\n' | '\t') || !c.is_whitespace())
    }

    /// The value and the primitive's extensions to write for `s`.
    pub fn split(s: &str) -> (Option<String>, Option<PrimitiveExtensions>) {
        if Self::is_valid(s) {
            (Some(s.to_string()), None)
        } else {
            let text = serde_json::to_string(s).expect("a string serialises");
            let ext =
                Extension { url: codes::ext::JSON_STRING.into(), value_string: Some(text), ..Extension::default() };
            (None, Some(PrimitiveExtensions { extension: vec![ext] }))
        }
    }

    /// The exact text from a primitive's value and extensions; `Err` says what is wrong with the marker.
    pub fn join(value: Option<&String>, ext: Option<&PrimitiveExtensions>) -> Result<Option<String>, String> {
        let marker = ext.and_then(|e| e.extension.iter().find(|x| x.url == codes::ext::JSON_STRING));
        match marker {
            None => Ok(value.cloned()),
            Some(m) => {
                let text = m.value_string.as_deref().ok_or("json-string extension without valueString")?;
                serde_json::from_str::<String>(text)
                    .map(Some)
                    .map_err(|e| format!("json-string extension holds {text:?}, not a JSON string: {e}"))
            }
        }
    }
}

/// Resource metadata; only the security labels are used.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Security labels (confidentiality and audit-db's exact classification).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security: Vec<Coding>,
}

/// `AuditEvent.agent`: an actor taking part in the event.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Agent {
    /// How the agent took part.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<CodeableConcept>,
    /// Who the agent is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<Reference>,
    /// Whether this agent initiated the event (required in R4; absent reads as false).
    #[serde(default)]
    pub requestor: bool,
}

/// `AuditEvent.source`: who reported the event.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Source {
    /// Logical location within the enterprise; audit-db's organisation (tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Extensions of `site`.
    #[serde(rename = "_site", default, skip_serializing_if = "Option::is_none")]
    pub site_ext: Option<PrimitiveExtensions>,
    /// The reporting system (required in R4; optional here so foreign resources without it still read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<Reference>,
    /// Kind of reporting system.
    #[serde(rename = "type", default, skip_serializing_if = "Vec::is_empty")]
    pub type_: Vec<Coding>,
}

/// `AuditEvent.entity.detail`: a named value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    /// The name (a `details` key).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Extensions of `type` (the empty-string marker).
    #[serde(rename = "_type", default, skip_serializing_if = "Option::is_none")]
    pub type_ext: Option<PrimitiveExtensions>,
    /// The value; audit-db writes the JSON text of the `details` value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_string: Option<String>,
    /// A binary value (foreign resources only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64_binary: Option<String>,
}

/// `AuditEvent.entity`: data or objects used.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Entity {
    /// The object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<Reference>,
    /// Kind of object.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<Coding>,
    /// What the object was in the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Coding>,
    /// Named values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detail: Vec<Detail>,
}

/// A FHIR R4 AuditEvent as audit-db writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Always `AuditEvent`.
    pub resource_type: String,
    /// The event's event_id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Security labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
    /// audit-db's extensions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    /// Event type.
    #[serde(rename = "type")]
    pub type_: Coding,
    /// Event subtype.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtype: Vec<Coding>,
    /// C, R, U, D or E.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// When the event was recorded.
    pub recorded: String,
    /// 0, 4, 8 or 12; absent when the outcome is not known (status `attempt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Free-text outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_desc: Option<String>,
    /// Extensions of outcomeDesc (the empty-string marker).
    #[serde(rename = "_outcomeDesc", default, skip_serializing_if = "Option::is_none")]
    pub outcome_desc_ext: Option<PrimitiveExtensions>,
    /// Actors.
    pub agent: Vec<Agent>,
    /// Reporter.
    pub source: Source,
    /// Objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entity: Vec<Entity>,
}

/// `Bundle.link`: a related URL of this Bundle (`self`: this page; `next`: the following page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleLink {
    /// `self`, `next` (FHIR's IANA link relations).
    pub relation: String,
    /// The page's URL (an absolute-path reference: resolve it against the server that answered).
    pub url: String,
}

/// One entry of a Bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry {
    /// `urn:uuid:<event_id>`.
    pub full_url: String,
    /// The AuditEvent.
    pub resource: AuditEvent,
}

/// A Bundle of type `collection`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    /// Always `Bundle`.
    pub resource_type: String,
    /// Always `collection`.
    #[serde(rename = "type")]
    pub type_: String,
    /// When the bundle was assembled, if the caller says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Paging links of an API page (`self`, `next`), as FHIR search paging gives them; none in a file export.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<BundleLink>,
    /// The AuditEvents.
    #[serde(default)]
    pub entry: Vec<BundleEntry>,
}

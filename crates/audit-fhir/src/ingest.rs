//! AuditEvent (ours or anyone's) → the event JSON that `audit-db ingest` accepts.

use std::collections::BTreeMap;

use audit_core::event::{format_timestamp, truncate_to_micros};
use audit_core::{DataClassification, Status};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::FhirError;
use crate::action::{ActionCode, EventCoding, action_for};
use crate::codes::{self, cs, ext};
use crate::export::is_reference_id;
use crate::model::{Agent, Coding, Entity, Extension, FhirString, Meta, Reference, Source};

/// Namespace of the UUIDv5 event ids given to foreign AuditEvents whose id is not a UUID.
const FOREIGN_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b8e_94d3_4c5a_a1f7_3e0d_5b92_c846);

/// The event in the NDJSON shape `audit-db ingest` reads (audit-core's `validate::FIELDS`).
#[derive(Debug, Serialize)]
struct IngestEvent {
    event_id: String,
    timestamp: String,
    action: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    organization_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_resource_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_resource_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome_description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_classification: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    processing_latency: Option<i32>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    details: Map<String, Value>,
}

/// Maps one AuditEvent to the event JSON `audit-db ingest` accepts (feed it to audit-core's validator).
/// Errors name the FHIR path, e.g. `AuditEvent.recorded: missing`.
pub fn from_audit_event(resource: &Value) -> Result<Value, FhirError> {
    ingest_at(resource, "AuditEvent")
}

/// Maps an AuditEvent or a Bundle of AuditEvents (any Bundle type) to events, in entry order.
pub fn from_fhir(resource: &Value) -> Result<Vec<Value>, FhirError> {
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => {
            let entries = match resource.get("entry") {
                None | Some(Value::Null) => return Ok(Vec::new()),
                Some(Value::Array(a)) => a,
                Some(other) => {
                    return Err(FhirError::new("Bundle.entry", format!("expected an array, got {}", kind(other))));
                }
            };
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let path = format!("Bundle.entry[{i}].resource");
                    let r = e.get("resource").ok_or_else(|| FhirError::new(&path, "missing"))?;
                    ingest_at(r, &path)
                })
                .collect()
        }
        _ => from_audit_event(resource).map(|v| vec![v]),
    }
}

/// What a FHIR consumer needs to ask audit-db for an inclusion proof, read from audit-db's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofReference {
    /// `audit-db proof --event-id` takes this.
    pub event_id: Uuid,
    /// The organisation, whose integrity log holds the event (None: the shared log).
    pub organization_id: Option<String>,
    /// Position in that log.
    pub seq: i64,
    /// The leaf hash the proof must lead from.
    pub leaf_hash: [u8; 32],
    /// When audit-db stored the event.
    pub ingested_at: DateTime<Utc>,
}

/// The proof reference of an AuditEvent exported by audit-db; `Ok(None)` for a resource without audit-db's
/// `seq` and `leaf-hash` extensions (not exported by audit-db).
pub fn proof_reference(resource: &Value) -> Result<Option<ProofReference>, FhirError> {
    let root = "AuditEvent";
    let obj = object(resource, root)?;
    let exts = OurExtensions::read(obj, root)?;
    let (Some((seq_path, seq)), Some((hash_path, hash))) = (exts.string(ext::SEQ)?, exts.string(ext::LEAF_HASH)?)
    else {
        return Ok(None);
    };
    let seq = seq
        .parse::<i64>()
        .ok()
        .filter(|s| *s >= 0)
        .ok_or_else(|| FhirError::new(&seq_path, format!("`{seq}` is not a log position")))?;
    let leaf_hash = hex::decode(&hash)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| FhirError::new(&hash_path, format!("`{hash}` is not 64 hex digits")))?;
    let ingested_at = match exts.get(ext::INGESTED_AT) {
        None => return Err(FhirError::new(format!("{root}.extension({})", ext::INGESTED_AT), "missing")),
        Some((path, x)) => {
            let text = x.value_instant.as_deref().ok_or_else(|| FhirError::new(&path, "valueInstant missing"))?;
            instant(text, &format!("{path}.valueInstant"))?
        }
    };
    let event_id = event_id(obj, &exts, root)?;
    let source: Option<Source> = opt_de(obj, "source", root)?;
    let organization_id = site(source.as_ref(), root)?;
    Ok(Some(ProofReference { event_id, organization_id, seq, leaf_hash, ingested_at }))
}

fn ingest_at(resource: &Value, root: &str) -> Result<Value, FhirError> {
    let obj = object(resource, root)?;
    match obj.get("resourceType") {
        Some(Value::String(s)) if s == "AuditEvent" => {}
        other => {
            return Err(FhirError::new(
                format!("{root}.resourceType"),
                format!("expected `AuditEvent`, got {}", other.map(kind).unwrap_or_else(|| "nothing".into())),
            ));
        }
    }
    let exts = OurExtensions::read(obj, root)?;

    let recorded: String = req_de(obj, "recorded", root)?;
    let timestamp = instant(&recorded, &format!("{root}.recorded"))?;

    let status = match opt_de::<String>(obj, "outcome", root)?.as_deref() {
        None => Status::Attempt,
        Some("0") => Status::Success,
        Some("4" | "8" | "12") => Status::Failure,
        Some(o) => {
            return Err(FhirError::new(format!("{root}.outcome"), format!("`{o}` is not one of 0, 4, 8, 12")));
        }
    };
    let outcome_description = FhirString::join(
        opt_de::<String>(obj, "outcomeDesc", root)?.as_ref(),
        opt_de(obj, "_outcomeDesc", root)?.as_ref(),
    )
    .map_err(|r| FhirError::new(format!("{root}._outcomeDesc"), r))?;

    let agents: Vec<Agent> = list_de(obj, "agent", root)?;
    let principal_id = principal(&agents, root)?;
    let source: Option<Source> = opt_de(obj, "source", root)?;
    let organization_id = site(source.as_ref(), root)?;

    let entities: Vec<Entity> = list_de(obj, "entity", root)?;
    let target = target(&entities, root)?;
    let correlation_id = correlation(&entities, root)?;
    let details = details(&entities, root)?;

    let action = match exts.string(ext::ACTION)? {
        Some((_, a)) => a,
        None => {
            let type_: Coding = req_de(obj, "type", root)?;
            let subtype: Vec<Coding> = list_de(obj, "subtype", root)?;
            let code = match opt_de::<String>(obj, "action", root)? {
                None => None,
                Some(c) => Some(ActionCode::parse(&c).ok_or_else(|| {
                    FhirError::new(format!("{root}.action"), format!("`{c}` is not one of C, R, U, D, E"))
                })?),
            };
            let ec = EventCoding { type_, subtype: subtype.into_iter().next(), action: code };
            let patient = target.0.as_deref() == Some("Patient");
            action_for(&ec, patient).map_err(|r| FhirError::new(format!("{root}.type"), r))?
        }
    };

    let meta: Option<Meta> = opt_de(obj, "meta", root)?;
    let data_classification = classification(meta.as_ref(), root)?;

    let processing_latency = match exts.get(ext::PROCESSING_LATENCY) {
        None => None,
        Some((path, x)) => Some(latency(x, &path)?),
    };

    let event = IngestEvent {
        event_id: event_id(obj, &exts, root)?.to_string(),
        timestamp: format_timestamp(timestamp),
        action,
        status: status.as_str(),
        principal_id,
        organization_id,
        target_resource_type: target.0,
        target_resource_id: target.1,
        outcome_description,
        correlation_id,
        data_classification: data_classification.map(DataClassification::as_str),
        retention_policy: exts.string(ext::RETENTION_POLICY)?.map(|(_, v)| v),
        event_version: exts.string(ext::EVENT_VERSION)?.map(|(_, v)| v),
        ttl: exts.string(ext::TTL)?.map(|(_, v)| v),
        processing_latency,
        details,
    };
    Ok(serde_json::to_value(event).expect("the event serialises"))
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("`{}`", s.chars().take(60).collect::<String>()),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, FhirError> {
    v.as_object().ok_or_else(|| FhirError::new(path, format!("expected a JSON object, got {}", kind(v))))
}

fn de<T: DeserializeOwned>(v: &Value, path: &str) -> Result<T, FhirError> {
    T::deserialize(v).map_err(|e| FhirError::new(path, e.to_string()))
}

fn opt_de<T: DeserializeOwned>(obj: &Map<String, Value>, key: &str, root: &str) -> Result<Option<T>, FhirError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => de(v, &format!("{root}.{key}")).map(Some),
    }
}

fn req_de<T: DeserializeOwned>(obj: &Map<String, Value>, key: &str, root: &str) -> Result<T, FhirError> {
    opt_de(obj, key, root)?.ok_or_else(|| FhirError::new(format!("{root}.{key}"), "missing"))
}

fn list_de<T: DeserializeOwned>(obj: &Map<String, Value>, key: &str, root: &str) -> Result<Vec<T>, FhirError> {
    let path = format!("{root}.{key}");
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().enumerate().map(|(i, v)| de(v, &format!("{path}[{i}]"))).collect(),
        Some(other) => Err(FhirError::new(path, format!("expected an array, got {}", kind(other)))),
    }
}

/// A FHIR instant (RFC 3339 with seconds and an offset) as audit-db's UTC microsecond time.
fn instant(text: &str, path: &str) -> Result<DateTime<Utc>, FhirError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| truncate_to_micros(t.with_timezone(&Utc)))
        .map_err(|e| FhirError::new(path, format!("`{text}` is not a FHIR instant such as 2026-01-31T12:00:00Z: {e}")))
}

/// audit-db's extensions of a resource, by URL, with the path of each; other extensions are ignored.
struct OurExtensions {
    by_url: BTreeMap<String, (String, Extension)>,
}

impl OurExtensions {
    fn read(obj: &Map<String, Value>, root: &str) -> Result<Self, FhirError> {
        let mut by_url = BTreeMap::new();
        let list = match obj.get("extension") {
            None | Some(Value::Null) => return Ok(Self { by_url }),
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(FhirError::new(
                    format!("{root}.extension"),
                    format!("expected an array, got {}", kind(other)),
                ));
            }
        };
        for (i, v) in list.iter().enumerate() {
            let path = format!("{root}.extension[{i}]");
            let Some(url) = v.get("url").and_then(Value::as_str) else { continue };
            if !url.starts_with(codes::BASE) {
                continue;
            }
            let x: Extension = de(v, &path)?;
            if let Some((first, _)) = by_url.get(url) {
                return Err(FhirError::new(path, format!("extension {url} appears twice (first at {first})")));
            }
            by_url.insert(url.to_string(), (path, x));
        }
        Ok(Self { by_url })
    }

    fn get(&self, url: &str) -> Option<(String, &Extension)> {
        self.by_url.get(url).map(|(p, x)| (p.clone(), x))
    }

    /// A valueString extension's exact text (with the path of the extension).
    fn string(&self, url: &str) -> Result<Option<(String, String)>, FhirError> {
        let Some((path, x)) = self.get(url) else { return Ok(None) };
        let value = FhirString::join(x.value_string.as_ref(), x.value_string_ext.as_ref())
            .map_err(|r| FhirError::new(format!("{path}._valueString"), r))?
            .ok_or_else(|| FhirError::new(format!("{path}.valueString"), "missing"))?;
        Ok(Some((path, value)))
    }
}

/// audit-db's event-id extension, else the resource id when it is a UUID, else a UUIDv5 of the resource's JSON
/// text, so that sending the same foreign resource twice is recognised as one event.
fn event_id(obj: &Map<String, Value>, exts: &OurExtensions, root: &str) -> Result<Uuid, FhirError> {
    if let Some((path, text)) = exts.string(ext::EVENT_ID)? {
        return Uuid::parse_str(&text)
            .map_err(|_| FhirError::new(format!("{path}.valueString"), format!("`{text}` is not a UUID")));
    }
    if let Some(id) = opt_de::<String>(obj, "id", root)?
        && let Ok(u) = Uuid::parse_str(&id)
    {
        return Ok(u);
    }
    let text = serde_json::to_string(obj).expect("a JSON object serialises");
    Ok(Uuid::new_v5(&FOREIGN_ID_NAMESPACE, text.as_bytes()))
}

fn join(
    value: Option<&String>,
    ext: Option<&crate::model::PrimitiveExtensions>,
    path: &str,
) -> Result<Option<String>, FhirError> {
    FhirString::join(value, ext).map_err(|r| FhirError::new(path, r))
}

/// Who did it: the first agent marked as requestor, by identifier value, else reference, else display.
fn principal(agents: &[Agent], root: &str) -> Result<Option<String>, FhirError> {
    let Some((i, a)) = agents.iter().enumerate().find(|(_, a)| a.requestor) else { return Ok(None) };
    let Some(who) = &a.who else { return Ok(None) };
    let path = format!("{root}.agent[{i}].who");
    if let Some(id) = &who.identifier
        && let Some(v) = join(id.value.as_ref(), id.value_ext.as_ref(), &format!("{path}.identifier._value"))?
    {
        return Ok(Some(v));
    }
    Ok(who.reference.clone().or_else(|| who.display.clone()))
}

fn site(source: Option<&Source>, root: &str) -> Result<Option<String>, FhirError> {
    match source {
        None => Ok(None),
        Some(s) => join(s.site.as_ref(), s.site_ext.as_ref(), &format!("{root}.source._site")),
    }
}

fn is_correlation(e: &Entity) -> bool {
    e.type_.as_ref().is_some_and(|t| t.is(codes::BALP_ENTITY_TYPE, codes::BALP_XREQUEST_ID))
}

type Target = (Option<String>, Option<String>);

/// The target: the first entity with a `what` that is not the correlation (X-Request-Id) entity.
fn target(entities: &[Entity], root: &str) -> Result<Target, FhirError> {
    let Some((i, what)) = entities
        .iter()
        .enumerate()
        .filter(|(_, e)| !is_correlation(e))
        .find_map(|(i, e)| e.what.as_ref().map(|w| (i, w)))
    else {
        return Ok((None, None));
    };
    target_of(what, &format!("{root}.entity[{i}].what"))
}

/// A literal `Type/id` reference first, then the identifier (type text = resource type, value = id), then any
/// other reference as the id.
fn target_of(what: &Reference, path: &str) -> Result<Target, FhirError> {
    if let Some(r) = &what.reference
        && let Some((t, id)) = r.split_once('/')
        && codes::FHIR_R4_RESOURCE_TYPES.contains(&t)
        && is_reference_id(id)
    {
        return Ok((Some(t.to_string()), Some(id.to_string())));
    }
    if let Some(ident) = &what.identifier {
        let ty = match &ident.type_ {
            Some(cc) => join(cc.text.as_ref(), cc.text_ext.as_ref(), &format!("{path}.identifier.type._text"))?,
            None => None,
        };
        let id = join(ident.value.as_ref(), ident.value_ext.as_ref(), &format!("{path}.identifier._value"))?;
        if ty.is_some() || id.is_some() {
            return Ok((ty, id));
        }
    }
    Ok((None, what.reference.clone()))
}

fn correlation(entities: &[Entity], root: &str) -> Result<Option<String>, FhirError> {
    let Some((i, e)) = entities.iter().enumerate().find(|(_, e)| is_correlation(e)) else { return Ok(None) };
    let Some(ident) = e.what.as_ref().and_then(|w| w.identifier.as_ref()) else { return Ok(None) };
    join(ident.value.as_ref(), ident.value_ext.as_ref(), &format!("{root}.entity[{i}].what.identifier._value"))
}

/// Every entity's details, merged into one object; a name given twice is refused (which value would be meant?).
fn details(entities: &[Entity], root: &str) -> Result<Map<String, Value>, FhirError> {
    let mut out = Map::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (i, e) in entities.iter().enumerate() {
        for (j, d) in e.detail.iter().enumerate() {
            let path = format!("{root}.entity[{i}].detail[{j}]");
            let key = join(d.type_.as_ref(), d.type_ext.as_ref(), &format!("{path}._type"))?
                .ok_or_else(|| FhirError::new(format!("{path}.type"), "missing"))?;
            let value = match (&d.value_string, &d.value_base64_binary) {
                (Some(s), _) => decode_detail(s),
                (None, Some(b)) => Value::String(b.clone()),
                (None, None) => return Err(FhirError::new(format!("{path}.value[x]"), "missing")),
            };
            if let Some(first) = seen.get(&key) {
                return Err(FhirError::new(
                    format!("{path}.type"),
                    format!("`{key}` appears twice (first at {first})"),
                ));
            }
            seen.insert(key.clone(), path);
            out.insert(key, value);
        }
    }
    Ok(out)
}

/// A detail's value: audit-db writes compact JSON text; text that is not exactly that is kept as a string.
fn decode_detail(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if serde_json::to_string(&v).is_ok_and(|t| t == text) => v,
        _ => Value::String(text.to_string()),
    }
}

/// audit-db's own classification label first; otherwise the most restrictive v3 confidentiality code.
fn classification(meta: Option<&Meta>, root: &str) -> Result<Option<DataClassification>, FhirError> {
    let Some(meta) = meta else { return Ok(None) };
    for (i, c) in meta.security.iter().enumerate() {
        if c.system.as_deref() == Some(cs::DATA_CLASSIFICATION) {
            let code = c.code.as_deref().unwrap_or("");
            return code
                .parse::<DataClassification>()
                .map(Some)
                .map_err(|e| FhirError::new(format!("{root}.meta.security[{i}].code"), e.to_string()));
        }
    }
    const ORDER: [&str; 6] = ["U", "L", "M", "N", "R", "V"];
    let most = meta
        .security
        .iter()
        .filter(|c| c.system.as_deref() == Some(codes::V3_CONFIDENTIALITY))
        .filter_map(|c| ORDER.iter().position(|o| Some(*o) == c.code.as_deref()))
        .max();
    Ok(most.map(|i| match ORDER[i] {
        "U" => DataClassification::Public,
        "L" | "M" => DataClassification::Internal,
        "N" => DataClassification::Phi,
        _ => DataClassification::Confidential,
    }))
}

fn latency(x: &Extension, path: &str) -> Result<i32, FhirError> {
    let d = x.value_duration.as_ref().ok_or_else(|| FhirError::new(format!("{path}.valueDuration"), "missing"))?;
    if d.code.as_deref().is_some_and(|c| c != "ms") || d.system.as_deref().is_some_and(|s| s != codes::UCUM) {
        return Err(FhirError::new(
            format!("{path}.valueDuration"),
            format!("expected UCUM `ms`, got {:?} in {:?}", d.code, d.system),
        ));
    }
    let n = d.value.as_ref().ok_or_else(|| FhirError::new(format!("{path}.valueDuration.value"), "missing"))?;
    n.as_i64().and_then(|v| i32::try_from(v).ok()).filter(|v| *v >= 0).ok_or_else(|| {
        FhirError::new(
            format!("{path}.valueDuration.value"),
            format!("`{n}` is not a whole number of milliseconds between 0 and {}", i32::MAX),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({
            "resourceType": "AuditEvent",
            "type": {"system": codes::DICOM, "code": "110114"},
            "subtype": [{"system": codes::DICOM, "code": "110122"}],
            "action": "E",
            "recorded": "2013-06-20T23:41:23+02:00",
            "outcome": "8",
            "agent": [{"who": {"identifier": {"value": "95"}}, "requestor": true}],
            "source": {"observer": {"display": "x"}}
        })
    }

    fn err(v: Value) -> FhirError {
        from_audit_event(&v).unwrap_err()
    }

    #[test]
    fn a_foreign_login_maps_to_the_seed_vocabulary() {
        let e = from_audit_event(&minimal()).unwrap();
        assert_eq!(e["action"], "user_authentication");
        assert_eq!(e["status"], "failure");
        assert_eq!(e["timestamp"], "2013-06-20T21:41:23.000000Z");
        assert_eq!(e["principal_id"], "95");
        assert!(e.get("organization_id").is_none());
        // No UUID id: a deterministic v5 id, the same for the same resource, different for another.
        let again = from_audit_event(&minimal()).unwrap();
        assert_eq!(e["event_id"], again["event_id"]);
        let mut other = minimal();
        other["recorded"] = json!("2013-06-20T23:41:24+02:00");
        assert_ne!(e["event_id"], from_audit_event(&other).unwrap()["event_id"]);
    }

    #[test]
    fn errors_name_the_fhir_path() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("recorded");
        assert_eq!(err(v).to_string(), "AuditEvent.recorded: missing");
        let mut v = minimal();
        v["recorded"] = json!("2013-06-20");
        assert_eq!(err(v).path, "AuditEvent.recorded");
        let mut v = minimal();
        v["outcome"] = json!("3");
        assert_eq!(err(v).to_string(), "AuditEvent.outcome: `3` is not one of 0, 4, 8, 12");
        let mut v = minimal();
        v["action"] = json!("X");
        assert_eq!(err(v).path, "AuditEvent.action");
        let mut v = minimal();
        v["agent"] = json!([{"who": {"identifier": {"value": 95}}, "requestor": true}]);
        assert_eq!(err(v).path, "AuditEvent.agent[0]");
        let mut v = minimal();
        v["resourceType"] = json!("Patient");
        assert_eq!(err(v).to_string(), "AuditEvent.resourceType: expected `AuditEvent`, got `Patient`");
        let mut v = minimal();
        v["entity"] = json!([{"detail": [{"type": "a", "valueString": "1"}, {"type": "a", "valueString": "2"}]}]);
        assert_eq!(err(v).path, "AuditEvent.entity[0].detail[1].type");
        let mut v = minimal();
        v["meta"] = json!({"security": [{"system": cs::DATA_CLASSIFICATION, "code": "SECRET"}]});
        assert_eq!(err(v).path, "AuditEvent.meta.security[0].code");
        let mut v = minimal();
        v["extension"] = json!([{"url": ext::PROCESSING_LATENCY, "valueDuration": {"value": 1.5, "code": "ms"}}]);
        assert_eq!(err(v).path, "AuditEvent.extension[0].valueDuration.value");
        let mut v = minimal();
        v["extension"] = json!([{"url": ext::EVENT_ID, "valueString": "nope"}]);
        assert_eq!(err(v).path, "AuditEvent.extension[0].valueString");
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": minimal()}, {"resource": {"resourceType": "AuditEvent"}}]});
        assert_eq!(from_fhir(&bundle).unwrap_err().to_string(), "Bundle.entry[1].resource.recorded: missing");
    }

    #[test]
    fn confidentiality_without_our_label_picks_the_most_restrictive() {
        let mut v = minimal();
        v["meta"] = json!({"security": [
            {"system": codes::V3_CONFIDENTIALITY, "code": "N"},
            {"system": codes::V3_CONFIDENTIALITY, "code": "R"},
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}
        ]});
        assert_eq!(from_audit_event(&v).unwrap()["data_classification"], "CONFIDENTIAL");
        v["meta"] = json!({"security": [{"system": codes::V3_CONFIDENTIALITY, "code": "N"}]});
        assert_eq!(from_audit_event(&v).unwrap()["data_classification"], "PHI");
    }

    #[test]
    fn foreign_detail_values_that_are_not_our_json_stay_strings() {
        assert_eq!(decode_detail("http POST ..... "), json!("http POST ..... "));
        assert_eq!(decode_detail("[\"a\",1]"), json!(["a", 1]));
        assert_eq!(decode_detail("{\"b\":1,\"a\":2}"), json!("{\"b\":1,\"a\":2}"));
        assert_eq!(decode_detail("1250.00").to_string(), "1250.00");
    }
}

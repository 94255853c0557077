//! Stored event → AuditEvent, Bundle and NDJSON.

use std::io::{self, Write};

use audit_core::event::format_timestamp;
use audit_core::{DataClassification, Status, StoredEvent};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::action::coding_for;
use crate::codes::{self, cs, ext};
use crate::model::{
    Agent, AuditEvent, Bundle, BundleEntry, BundleLink, CodeableConcept, Coding, Detail, Duration, Entity, Extension,
    FhirString, Identifier, Meta, Reference, Source,
};

/// What an export needs besides the events: who is reporting them.
#[derive(Debug, Clone)]
pub struct ExportContext {
    /// Name of the reporting service, written as `source.observer` and as the source agent (e.g. `audit-db`);
    /// must contain a visible character (it is a FHIR string).
    pub service: String,
    /// `Bundle.timestamp`; the crate reads no clock, so the caller passes it (None leaves it out).
    pub bundle_timestamp: Option<DateTime<Utc>>,
}

impl Default for ExportContext {
    fn default() -> Self {
        Self { service: "audit-db".into(), bundle_timestamp: None }
    }
}

/// The v3-Confidentiality code for a classification (justified in docs/fhir.md).
pub(crate) fn confidentiality(c: DataClassification) -> (&'static str, &'static str) {
    match c {
        DataClassification::Public => ("U", "unrestricted"),
        DataClassification::Internal => ("M", "moderate"),
        DataClassification::Phi => ("N", "normal"),
        DataClassification::Confidential | DataClassification::Financial => ("R", "restricted"),
    }
}

/// `AuditEvent.outcome` for a status: unknown outcome (attempt) has no code.
pub(crate) fn outcome(s: Status) -> Option<&'static str> {
    match s {
        Status::Attempt => None,
        Status::Success => Some("0"),
        Status::Failure => Some("4"),
    }
}

/// Whether `id` fits a FHIR literal reference after the type: an id, optionally with `/_history/<version>`.
pub(crate) fn is_reference_id(id: &str) -> bool {
    let fhir_id =
        |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    match id.split_once("/_history/") {
        Some((i, v)) => fhir_id(i) && fhir_id(v),
        None => fhir_id(id),
    }
}

fn identifier(type_text: Option<&str>, value: Option<&str>) -> Identifier {
    let type_ = type_text.map(|t| {
        let (text, text_ext) = FhirString::split(t);
        CodeableConcept { coding: Vec::new(), text, text_ext }
    });
    let (value, value_ext) = match value {
        Some(v) => FhirString::split(v),
        None => (None, None),
    };
    Identifier { system: None, type_, value, value_ext }
}

/// The target as `entity.what`: a literal reference for a FHIR resource type with a FHIR id, else an identifier
/// whose type text is the resource type.
fn target_what(ty: Option<&str>, id: Option<&str>) -> Option<Reference> {
    match (ty, id) {
        (None, None) => None,
        (Some(t), Some(i)) if codes::FHIR_R4_RESOURCE_TYPES.contains(&t) && is_reference_id(i) => {
            Some(Reference { reference: Some(format!("{t}/{i}")), ..Reference::default() })
        }
        _ => Some(Reference { identifier: Some(identifier(ty, id)), ..Reference::default() }),
    }
}

fn details(e: &audit_core::NewEvent) -> Vec<Detail> {
    e.details
        .iter()
        .map(|(k, v)| {
            let (type_, type_ext) = FhirString::split(k);
            let json = serde_json::to_string(v).expect("a JSON value serialises");
            Detail { type_, type_ext, value_string: Some(json), value_base64_binary: None }
        })
        .collect()
}

/// The AuditEvent for a stored event, as the typed model.
pub fn to_audit_event_model(stored: &StoredEvent, ctx: &ExportContext) -> AuditEvent {
    let e = &stored.event;
    let coding = coding_for(&e.action);

    let mut extension = vec![
        Extension::string(ext::ACTION, &e.action),
        Extension::string(ext::EVENT_ID, &e.event_id.to_string()),
        Extension::string(ext::SEQ, &stored.seq.to_string()),
        Extension::string(ext::LEAF_HASH, &hex::encode(stored.leaf_hash)),
        Extension {
            url: ext::INGESTED_AT.into(),
            value_instant: Some(format_timestamp(stored.ingested_at)),
            ..Extension::default()
        },
        Extension::string(ext::RETENTION_POLICY, &e.retention_policy),
        Extension::string(ext::EVENT_VERSION, &e.event_version),
    ];
    if let Some(ttl) = &e.ttl {
        extension.push(Extension::string(ext::TTL, ttl));
    }
    if let Some(ms) = e.processing_latency {
        extension.push(Extension {
            url: ext::PROCESSING_LATENCY.into(),
            value_duration: Some(Duration {
                value: Some(ms.into()),
                unit: Some("ms".into()),
                system: Some(codes::UCUM.into()),
                code: Some("ms".into()),
            }),
            ..Extension::default()
        });
    }

    let (conf_code, conf_display) = confidentiality(e.data_classification);
    let class = e.data_classification.as_str();
    let meta = Meta {
        security: vec![
            Coding::new(codes::V3_CONFIDENTIALITY, conf_code, conf_display),
            Coding::new(cs::DATA_CLASSIFICATION, class, class),
        ],
    };

    let (outcome_desc, outcome_desc_ext) = match &e.outcome_description {
        Some(d) => FhirString::split(d),
        None => (None, None),
    };

    let mut agent = Vec::new();
    if let Some(p) = &e.principal_id {
        agent.push(Agent {
            type_: None,
            who: Some(Reference { identifier: Some(identifier(None, Some(p))), ..Reference::default() }),
            requestor: true,
        });
    }
    let source_role = codes::DICOM_SOURCE_ROLE_ID;
    agent.push(Agent {
        type_: Some(CodeableConcept {
            coding: vec![Coding::new(codes::DICOM, source_role.code, source_role.display)],
            ..CodeableConcept::default()
        }),
        who: Some(Reference { display: Some(ctx.service.clone()), ..Reference::default() }),
        requestor: false,
    });

    let (site, site_ext) = match &e.organization_id {
        Some(o) => FhirString::split(o),
        None => (None, None),
    };
    let source = Source {
        site,
        site_ext,
        observer: Some(Reference {
            type_: Some("Device".into()),
            display: Some(ctx.service.clone()),
            ..Reference::default()
        }),
        type_: vec![Coding::new(codes::SECURITY_SOURCE_TYPE, "4", "Application Server")],
    };

    let mut entity = Vec::new();
    let what = target_what(e.target_resource_type.as_deref(), e.target_resource_id.as_deref());
    let detail = details(e);
    if what.is_some() || !detail.is_empty() {
        let is_patient = e.target_resource_type.as_deref() == Some("Patient");
        let (type_, role) = match (&what, is_patient) {
            (None, _) => (None, None),
            (Some(_), true) => (
                Some(Coding::new(codes::AUDIT_ENTITY_TYPE, "1", "Person")),
                Some(Coding::new(codes::OBJECT_ROLE, "1", "Patient")),
            ),
            (Some(_), false) => (
                Some(Coding::new(codes::AUDIT_ENTITY_TYPE, "2", "System Object")),
                Some(Coding::new(codes::OBJECT_ROLE, "4", "Domain Resource")),
            ),
        };
        entity.push(Entity { what, type_, role, detail });
    }
    if let Some(c) = &e.correlation_id {
        entity.push(Entity {
            what: Some(Reference { identifier: Some(identifier(None, Some(c))), ..Reference::default() }),
            type_: Some(Coding::new(
                codes::BALP_ENTITY_TYPE,
                codes::BALP_XREQUEST_ID,
                "transport specific unique identifier where http X-Request-Id is used",
            )),
            role: None,
            detail: Vec::new(),
        });
    }

    AuditEvent {
        resource_type: "AuditEvent".into(),
        id: Some(e.event_id.to_string()),
        meta: Some(meta),
        extension,
        type_: coding.type_,
        subtype: coding.subtype.into_iter().collect(),
        action: coding.action.map(|a| a.as_str().to_string()),
        recorded: format_timestamp(e.timestamp),
        outcome: outcome(e.status).map(str::to_string),
        outcome_desc,
        outcome_desc_ext,
        agent,
        source,
        entity,
    }
}

/// The AuditEvent for a stored event, as JSON.
pub fn to_audit_event(stored: &StoredEvent, ctx: &ExportContext) -> Value {
    serde_json::to_value(to_audit_event_model(stored, ctx)).expect("the model serialises")
}

fn entry(stored: &StoredEvent, ctx: &ExportContext) -> BundleEntry {
    BundleEntry { full_url: format!("urn:uuid:{}", stored.event.event_id), resource: to_audit_event_model(stored, ctx) }
}

fn bundle_header(ctx: &ExportContext, link: Vec<BundleLink>, entry: Vec<BundleEntry>) -> Bundle {
    Bundle {
        resource_type: "Bundle".into(),
        type_: "collection".into(),
        timestamp: ctx.bundle_timestamp.map(format_timestamp),
        link,
        entry,
    }
}

/// A Bundle of type `collection` holding one AuditEvent per event, in the given order.
pub fn bundle_collection<'a>(events: impl IntoIterator<Item = &'a StoredEvent>, ctx: &ExportContext) -> Value {
    bundle_page(events, ctx, Vec::new())
}

/// [`bundle_collection`] with paging links (`Bundle.link`: `self`, and `next` unless this is the last page): one
/// page of an API answer, walked by following `next`.
pub fn bundle_page<'a>(
    events: impl IntoIterator<Item = &'a StoredEvent>,
    ctx: &ExportContext,
    links: Vec<BundleLink>,
) -> Value {
    let entries = events.into_iter().map(|e| entry(e, ctx)).collect();
    serde_json::to_value(bundle_header(ctx, links, entries)).expect("the model serialises")
}

/// Writes a collection Bundle entry by entry, so that an export of millions of events never holds them all:
/// [`BundleWriter::new`] writes the opening, [`push`](BundleWriter::push) one entry, [`finish`](BundleWriter::finish)
/// the closing. The bytes parse to exactly what [`bundle_collection`] returns for the same events.
#[derive(Debug)]
pub struct BundleWriter<W: Write> {
    out: W,
    ctx: ExportContext,
    entries: usize,
}

impl<W: Write> BundleWriter<W> {
    /// Writes the Bundle's opening.
    pub fn new(mut out: W, ctx: &ExportContext) -> io::Result<Self> {
        // The header is serialised by serde; only the still-open `entry` array is framed by hand.
        let header = serde_json::to_string(&bundle_header(ctx, Vec::new(), Vec::new()))?;
        let open = header.strip_suffix("\"entry\":[]}").expect("entry is the header's last field");
        out.write_all(open.as_bytes())?;
        out.write_all(b"\"entry\":[")?;
        Ok(Self { out, ctx: ctx.clone(), entries: 0 })
    }

    /// Writes one entry.
    pub fn push(&mut self, stored: &StoredEvent) -> io::Result<()> {
        if self.entries > 0 {
            self.out.write_all(b",")?;
        }
        serde_json::to_writer(&mut self.out, &entry(stored, &self.ctx))?;
        self.entries += 1;
        Ok(())
    }

    /// Entries written so far.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether no entry has been written.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Closes the Bundle and gives the writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(b"]}\n")?;
        Ok(self.out)
    }
}

/// Writes FHIR bulk NDJSON: one AuditEvent per line.
pub fn write_ndjson<'a, W: Write>(
    mut out: W,
    events: impl IntoIterator<Item = &'a StoredEvent>,
    ctx: &ExportContext,
) -> io::Result<W> {
    for e in events {
        serde_json::to_writer(&mut out, &to_audit_event_model(e, ctx))?;
        out.write_all(b"\n")?;
    }
    Ok(out)
}

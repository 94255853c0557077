//! event → FHIR AuditEvent → event keeps every mapped field, for the seed's examples, the generated sample and
//! property-generated events with arbitrary text; and the Bundle/NDJSON writers agree with each other.

mod common;

use audit_core::{DataClassification, NewEvent, Status, StoredEvent};
use audit_fhir::{
    BundleWriter, ExportContext, ProofReference, bundle_collection, codes, from_audit_event, from_fhir,
    proof_reference, to_audit_event, write_ndjson,
};
use chrono::{DateTime, Utc};
use common::{all_stored, now, seed_examples, stored, validate};
use proptest::prelude::*;
use serde_json::{Map, Number, Value, json};

fn ctx() -> ExportContext {
    ExportContext { service: "audit-db test".into(), bundle_timestamp: Some(now()) }
}

/// Exports, sends as text (as a FHIR client would), ingests and validates again.
fn through_fhir(s: &StoredEvent) -> (Value, NewEvent) {
    let text = to_audit_event(s, &ctx()).to_string();
    let resource: Value = serde_json::from_str(&text).unwrap();
    let back = from_audit_event(&resource).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (resource, validate(back))
}

fn assert_same_event(original: &NewEvent, back: &NewEvent) {
    // Re-ingesting always supplies the id; everything else must be identical.
    let expected = NewEvent { event_id_supplied: true, ..original.clone() };
    assert_eq!(&expected, back);
}

fn assert_proof_reference(s: &StoredEvent, resource: &Value) {
    let p = proof_reference(resource).unwrap().expect("audit-db's extensions are there");
    assert_eq!(
        p,
        ProofReference {
            event_id: s.event.event_id,
            organization_id: s.event.organization_id.clone(),
            seq: s.seq,
            leaf_hash: s.leaf_hash,
            ingested_at: s.ingested_at,
        }
    );
}

#[test]
fn every_seed_and_generated_event_survives_the_round_trip() {
    let events = all_stored();
    assert!(events.len() > 7_000);
    for s in &events {
        let (resource, back) = through_fhir(s);
        assert_same_event(&s.event, &back);
        assert_proof_reference(s, &resource);
    }
}

#[test]
fn seed_examples_follow_balp() {
    let events: Vec<StoredEvent> =
        seed_examples().into_iter().enumerate().map(|(n, v)| stored(validate(v), n as i64)).collect();
    let health = to_audit_event(&events[0], &ctx());
    assert_eq!(health["type"]["system"], codes::AUDIT_EVENT_TYPE);
    assert_eq!(health["type"]["code"], "rest");
    assert_eq!(health["subtype"][0]["code"], "read");
    assert_eq!(health["action"], "R");
    assert_eq!(health["outcome"], "0");
    assert_eq!(health["recorded"], "2026-11-20T09:15:00.123456Z");
    assert_eq!(
        health["meta"]["security"][0],
        json!({"system": codes::V3_CONFIDENTIALITY, "code": "N", "display": "normal"})
    );
    assert_eq!(health["agent"][0]["who"]["identifier"]["value"], "dr_smith_123");
    assert_eq!(health["agent"][0]["requestor"], true);
    assert_eq!(health["source"]["site"], "hospital_456");
    assert_eq!(health["source"]["observer"]["display"], "audit-db test");
    let target = &health["entity"][0];
    assert_eq!(target["what"]["identifier"], json!({"type": {"text": "patient_record"}, "value": "patient_789"}));
    let detail = target["detail"].as_array().unwrap();
    assert!(detail.contains(&json!({"type": "access_method", "valueString": "\"web_portal\""})), "{detail:?}");
    assert!(
        detail.contains(&json!({"type": "fields_accessed", "valueString": "[\"name\",\"dob\",\"medical_history\"]"}))
    );
    assert_eq!(health["id"], events[0].event.event_id.to_string());

    let pay = to_audit_event(&events[1], &ctx());
    assert_eq!(
        pay["type"],
        json!({"system": codes::cs::ACTION, "code": "payment_processed", "display": "payment_processed"})
    );
    assert_eq!(pay["action"], "E");
    assert_eq!(pay["meta"]["security"][0]["code"], "R");
    assert_eq!(
        pay["meta"]["security"][1],
        json!({"system": codes::cs::DATA_CLASSIFICATION, "code": "FINANCIAL", "display": "FINANCIAL"})
    );
    let correlation = &pay["entity"][1];
    assert_eq!(correlation["type"]["code"], codes::BALP_XREQUEST_ID);
    assert_eq!(correlation["what"]["identifier"]["value"], "req_abc123");
    let amount = pay["entity"][0]["detail"].as_array().unwrap().iter().find(|d| d["type"] == "amount").unwrap();
    assert_eq!(amount["valueString"], "1250.00", "the seed's number keeps its spelling");

    let login = to_audit_event(&events[2], &ctx());
    assert_eq!(login["type"], json!({"system": codes::DICOM, "code": "110114", "display": "User Authentication"}));
    assert_eq!(login["subtype"][0]["code"], "110122");
    assert_eq!(login["outcome"], "4");
    assert_eq!(login["recorded"], "2026-11-20T10:30:00.000000Z");
    // INTERNAL by default.
    assert_eq!(login["meta"]["security"][0]["code"], "M");

    for (s, resource) in events.iter().zip([health, pay, login]) {
        let ext = resource["extension"].as_array().unwrap();
        let value = |url: &str| ext.iter().find(|x| x["url"] == url).cloned();
        assert_eq!(value(codes::ext::SEQ).unwrap()["valueString"], s.seq.to_string());
        assert_eq!(value(codes::ext::LEAF_HASH).unwrap()["valueString"], hex::encode(s.leaf_hash));
        assert_eq!(value(codes::ext::ACTION).unwrap()["valueString"], s.event.action);
    }
}

#[test]
fn status_maps_to_outcome_and_back() {
    for (status, outcome) in [(Status::Attempt, None), (Status::Success, Some("0")), (Status::Failure, Some("4"))] {
        let e = validate(json!({"action": "a", "status": status.as_str(), "timestamp": "2026-01-01T00:00:00Z"}));
        let r = to_audit_event(&stored(e, 0), &ctx());
        assert_eq!(r.get("outcome").and_then(Value::as_str), outcome);
        assert_eq!(from_audit_event(&r).unwrap()["status"], status.as_str());
    }
}

#[test]
fn bundle_writer_ndjson_and_bundle_collection_agree() {
    let events: Vec<StoredEvent> = all_stored().into_iter().take(200).collect();
    let bundle = bundle_collection(&events, &ctx());
    assert_eq!(bundle["type"], "collection");
    assert_eq!(bundle["timestamp"], "2026-11-25T12:00:00.000000Z");
    assert_eq!(bundle["entry"][0]["fullUrl"], format!("urn:uuid:{}", events[0].event.event_id));

    let mut w = BundleWriter::new(Vec::new(), &ctx()).unwrap();
    for e in &events {
        w.push(e).unwrap();
    }
    assert_eq!(w.len(), events.len());
    let streamed: Value = serde_json::from_slice(&w.finish().unwrap()).unwrap();
    assert_eq!(streamed, bundle);
    let empty: Value =
        serde_json::from_slice(&BundleWriter::new(Vec::new(), &ctx()).unwrap().finish().unwrap()).unwrap();
    assert_eq!(empty, bundle_collection([], &ctx()));

    let ndjson = String::from_utf8(write_ndjson(Vec::new(), &events, &ctx()).unwrap()).unwrap();
    let lines: Vec<Value> = ndjson.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let entries: Vec<Value> = bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).collect();
    assert_eq!(lines, entries);

    let from_bundle = from_fhir(&bundle).unwrap();
    let one_by_one: Vec<Value> = lines.iter().map(|r| from_audit_event(r).unwrap()).collect();
    assert_eq!(from_bundle, one_by_one);
}

// ---- property test over arbitrary events ----

fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::string::string_regex(&format!("\\PC{{1,{max}}}")).unwrap(),
        1 => proptest::sample::select(vec!["\u{a0}", " x ", "%|%", "\u{2028}", "Patient", "a/_history/1", "fhir|E|s|c"])
            .prop_map(str::to_string),
    ]
}

fn json_number() -> impl Strategy<Value = Value> {
    "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,6})?([eE][-+]?[0-9]{1,2})?"
        .prop_map(|t| Value::Number(serde_json::from_str::<Number>(&t).unwrap()))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        "[^\\x00]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[^\\x00]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn opt<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    proptest::option::of(s)
}

prop_compose! {
    fn event_json()(
        action in text(40).prop_filter("an action has a visible character", |a| !a.trim().is_empty()),
        status in proptest::sample::select(Status::ALL.to_vec()),
        micros in 0i64..1_790_000_000_000_000,
        offset_minutes in -720i32..=720,
        event_id in opt(any::<u128>()),
        principal in opt(text(30)),
        org in opt(text(30)),
        target_type in opt(text(20)),
        target_id in opt(text(30)),
        outcome in opt("[^\\x00]{0,30}"),
        correlation in opt(text(30)),
        class in opt(proptest::sample::select(DataClassification::ALL.to_vec())),
        retention in opt(text(20)),
        version in opt(text(20)),
        ttl in opt(text(20)),
        latency in opt(0i32..=i32::MAX),
        details in opt(proptest::collection::btree_map("[^\\x00]{0,8}", json_value(), 0..6)),
    ) -> Value {
        let offset = chrono::FixedOffset::east_opt(offset_minutes * 60).unwrap();
        let ts = DateTime::<Utc>::from_timestamp_micros(micros).unwrap().with_timezone(&offset);
        let mut e = json!({"action": action, "status": status.as_str(), "timestamp": ts.to_rfc3339()});
        let mut set = |k: &str, v: Option<Value>| if let Some(v) = v { e[k] = v; };
        set("event_id", event_id.map(|u| json!(uuid::Uuid::from_u128(u).to_string())));
        set("principal_id", principal.map(Value::from));
        set("organization_id", org.map(Value::from));
        set("target_resource_type", target_type.map(Value::from));
        set("target_resource_id", target_id.map(Value::from));
        set("outcome_description", outcome.map(Value::from));
        set("correlation_id", correlation.map(Value::from));
        set("data_classification", class.map(|c| json!(c.as_str())));
        set("retention_policy", retention.map(Value::from));
        set("event_version", version.map(Value::from));
        set("ttl", ttl.map(Value::from));
        set("processing_latency", latency.map(Value::from));
        set("details", details.map(|d| Value::Object(d.into_iter().collect())));
        e
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_keeps_every_mapped_field(
        e in event_json(),
        seq in 0i64..=i64::MAX,
        leaf_hash in any::<[u8; 32]>(),
        ingested_micros in 0i64..1_790_000_000_000_000,
    ) {
        let event = validate(e);
        let s = StoredEvent {
            id: 1,
            ingested_at: DateTime::<Utc>::from_timestamp_micros(ingested_micros).unwrap(),
            seq,
            leaf_hash,
            event,
        };
        let (resource, back) = through_fhir(&s);
        assert_same_event(&s.event, &back);
        assert_proof_reference(&s, &resource);
    }
}

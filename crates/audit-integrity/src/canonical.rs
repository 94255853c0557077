//! The canonical byte form of a stored event and its RFC 6962 leaf hash (`docs/integrity.md`, "Canonical form").
//!
//! The form is length-prefixed (no escaping ambiguity between fields), lists the fields in one fixed order, and
//! puts the row `id` last so that the writer can hash everything else before its transaction and only finish
//! the hash once the database has assigned the id. `seq` is deliberately absent: a leaf's position *is* its seq.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::merkle::Hash;
use audit_core::event::{NewEvent, StoredEvent, format_timestamp};
use audit_core::validate::pg_numeric_text;

/// Domain separation prefix that opens every canonical form; bumping `v1` changes every leaf.
pub const DOMAIN: &[u8] = b"audit-db:event:v1\n";

/// Marker written instead of a length for an absent (SQL NULL) field.
const NULL_MARKER: [u8; 4] = [0xFF; 4];

/// Where canonical bytes go: a buffer (to show or test them) or a running SHA-256 (to hash without copying).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

fn field(out: &mut impl Sink, value: Option<&[u8]>) {
    match value {
        None => out.put(&NULL_MARKER),
        Some(v) => {
            // PostgreSQL cannot hold a field of 1 GiB or more, so every stored value fits the u32 prefix (and never
            // produces the NULL marker 0xFFFFFFFF).
            let len = u32::try_from(v.len()).ok().filter(|l| *l != u32::MAX).expect("field shorter than 4 GiB");
            out.put(&len.to_be_bytes());
            out.put(v);
        }
    }
}

fn text(out: &mut impl Sink, value: Option<&str>) {
    field(out, value.map(str::as_bytes));
}

/// Writes the domain prefix and every field except the trailing `id`.
fn write_without_id(out: &mut impl Sink, e: &NewEvent, ingested_at: DateTime<Utc>) {
    out.put(DOMAIN);
    text(out, Some(&e.event_id.hyphenated().to_string()));
    text(out, Some(&format_timestamp(e.timestamp)));
    text(out, Some(&format_timestamp(ingested_at)));
    text(out, e.organization_id.as_deref());
    text(out, e.principal_id.as_deref());
    text(out, Some(&e.action));
    text(out, Some(e.status.as_str()));
    text(out, e.target_resource_type.as_deref());
    text(out, e.target_resource_id.as_deref());
    text(out, e.outcome_description.as_deref());
    text(out, e.correlation_id.as_deref());
    text(out, Some(e.data_classification.as_str()));
    text(out, Some(&e.retention_policy));
    text(out, Some(&e.event_version));
    text(out, e.ttl.as_deref());
    text(out, e.processing_latency.map(|v| v.to_string()).as_deref());
    text(out, Some(&canonical_json(&Value::Object(e.details.clone()))));
}

fn write_id(out: &mut impl Sink, id: i64) {
    text(out, Some(&id.to_string()));
}

/// The canonical byte form of a stored event (without the 0x00 leaf prefix), byte for byte as documented.
pub fn canonical_bytes(stored: &StoredEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write_without_id(&mut out, &stored.event, stored.ingested_at);
    write_id(&mut out, stored.id);
    out
}

/// The RFC 6962 leaf hash of a stored event: SHA-256(0x00 || canonical_bytes). Ignores the `seq` and `leaf_hash`
/// fields of `stored`, so verify can recompute it from what the row holds.
pub fn leaf_hash(stored: &StoredEvent) -> Hash {
    LeafPrefix::new(&stored.event, stored.ingested_at).finish(stored.id)
}

/// A leaf hash with everything but the row id already absorbed: the writer builds it before its transaction and
/// calls [`LeafPrefix::finish`] once the id is known, keeping the work done under the log's row lock minimal.
#[derive(Clone)]
pub struct LeafPrefix(Sha256);

impl std::fmt::Debug for LeafPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeafPrefix(..)")
    }
}

impl LeafPrefix {
    /// Hashes 0x00 || the canonical form without the trailing id field.
    pub fn new(event: &NewEvent, ingested_at: DateTime<Utc>) -> Self {
        let mut h = Sha256::new();
        h.update([0x00]);
        write_without_id(&mut h, event, ingested_at);
        Self(h)
    }

    /// Appends the id field to a copy of the state and returns the leaf hash; the prefix stays reusable.
    pub fn finish(&self, id: i64) -> Hash {
        let mut h = self.0.clone();
        write_id(&mut h, id);
        h.finalize().into()
    }
}

/// Canonical JSON text of a value: no whitespace, object keys sorted by their UTF-8 bytes, minimal string escapes,
/// numbers in PostgreSQL numeric text form. Equal jsonb values give equal text, whatever order or spelling the
/// producer used.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, v);
    out
}

fn write_json(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            let original = n.to_string();
            // Out-of-range exponents are refused at validation, so a stored number always converts; the fallback
            // keeps this function total for arbitrary input (e.g. a hand-edited evidence pack).
            out.push_str(&pg_numeric_text(&original).unwrap_or(original));
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_json(out, val);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use audit_core::event::{DataClassification, Status};
    use serde_json::json;
    use uuid::Uuid;

    fn ts(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The worked example of docs/integrity.md (every optional field present).
    pub(crate) fn full_example() -> StoredEvent {
        let details: Value = serde_json::from_str(
            r#"{"resource": {"name": "chart-7", "ward": 3}, "amount": 1250.00, "tags": ["a", "b"],
                "note": "line1\nline2 \"q\" é/", "ok": true, "none": null}"#,
        )
        .unwrap();
        StoredEvent {
            id: 42,
            ingested_at: ts("2026-01-31T12:00:00.654321Z"),
            seq: 7,
            leaf_hash: [0; 32],
            event: NewEvent {
                event_id: Uuid::parse_str("0190a5c4-7b1e-7c3a-9f00-123456789abc").unwrap(),
                event_id_supplied: true,
                timestamp: ts("2026-01-31T12:00:00.123456Z"),
                action: "patient_data_access".into(),
                status: Status::Success,
                principal_id: Some("dr.smith".into()),
                organization_id: Some("hospital-1".into()),
                target_resource_type: Some("patient_record".into()),
                target_resource_id: Some("P-1001".into()),
                outcome_description: Some("viewed".into()),
                correlation_id: Some("req-9".into()),
                data_classification: DataClassification::Phi,
                retention_policy: "hipaa".into(),
                event_version: "1.0".into(),
                ttl: Some("7y".into()),
                processing_latency: Some(12),
                details: details.as_object().unwrap().clone(),
            },
        }
    }

    /// The minimal example of docs/integrity.md (every optional field absent).
    pub(crate) fn minimal_example() -> StoredEvent {
        StoredEvent {
            id: 1,
            ingested_at: ts("2026-01-31T12:00:01Z"),
            seq: 0,
            leaf_hash: [0; 32],
            event: NewEvent {
                event_id: Uuid::parse_str("00000000-0000-0000-0000-000000000001").unwrap(),
                event_id_supplied: true,
                timestamp: ts("2026-01-31T12:00:00Z"),
                action: "user_login".into(),
                status: Status::Failure,
                principal_id: None,
                organization_id: None,
                target_resource_type: None,
                target_resource_id: None,
                outcome_description: None,
                correlation_id: None,
                data_classification: DataClassification::Internal,
                retention_policy: "standard".into(),
                event_version: "1.0".into(),
                ttl: None,
                processing_latency: None,
                details: serde_json::Map::new(),
            },
        }
    }

    fn sha_leaf(bytes: &[u8]) -> Hash {
        let mut h = Sha256::new();
        h.update([0x00]);
        h.update(bytes);
        h.finalize().into()
    }

    #[test]
    fn prefix_then_id_equals_the_whole_leaf() {
        for e in [full_example(), minimal_example()] {
            let p = LeafPrefix::new(&e.event, e.ingested_at);
            assert_eq!(p.finish(e.id), sha_leaf(&canonical_bytes(&e)));
            assert_eq!(leaf_hash(&e), sha_leaf(&canonical_bytes(&e)));
            // The prefix is reusable and the id matters.
            assert_ne!(p.finish(e.id + 1), p.finish(e.id));
            assert_eq!(p.finish(e.id), leaf_hash(&e));
        }
    }

    #[test]
    fn minimal_example_bytes_are_as_documented() {
        let b = canonical_bytes(&minimal_example());
        let mut want = Vec::new();
        want.extend_from_slice(b"audit-db:event:v1\n");
        let mut f = |s: Option<&str>| match s {
            None => want.extend_from_slice(&[0xFF; 4]),
            Some(s) => {
                want.extend_from_slice(&(s.len() as u32).to_be_bytes());
                want.extend_from_slice(s.as_bytes());
            }
        };
        f(Some("00000000-0000-0000-0000-000000000001"));
        f(Some("2026-01-31T12:00:00.000000Z"));
        f(Some("2026-01-31T12:00:01.000000Z"));
        f(None);
        f(None);
        f(Some("user_login"));
        f(Some("failure"));
        f(None);
        f(None);
        f(None);
        f(None);
        f(Some("INTERNAL"));
        f(Some("standard"));
        f(Some("1.0"));
        f(None);
        f(None);
        f(Some("{}"));
        f(Some("1"));
        assert_eq!(hex::encode(&b), hex::encode(&want));
    }

    /// Known answers, also printed in docs/integrity.md; they were cross-checked with an independent Python
    /// implementation written from the document.
    #[test]
    fn test_vectors() {
        let full = full_example();
        assert_eq!(
            canonical_json(&Value::Object(full.event.details.clone())),
            r#"{"amount":1250.00,"none":null,"note":"line1\nline2 \"q\" é/","ok":true,"resource":{"name":"chart-7","ward":3},"tags":["a","b"]}"#
        );
        assert_eq!(hex::encode(leaf_hash(&full)), FULL_LEAF_HEX);
        assert_eq!(hex::encode(leaf_hash(&minimal_example())), MINIMAL_LEAF_HEX);
        assert_eq!(hex::encode(canonical_bytes(&minimal_example())), MINIMAL_CANONICAL_HEX);
    }

    pub(crate) const FULL_LEAF_HEX: &str = "5e6cf46ef531d9dbaf6416100ed3476ca519798e3bbb9cc16c054ff08fb40819";
    pub(crate) const MINIMAL_LEAF_HEX: &str = "0ab4223fb77a5dc130081221b33ef67216de6b9b3cedaca11a010b7f937e7504";
    const MINIMAL_CANONICAL_HEX: &str = concat!(
        "61756469742d64623a6576656e743a76310a0000002430303030303030302d303030302d303030302d303030302d3030303030",
        "303030303030310000001b323032362d30312d33315431323a30303a30302e3030303030305a0000001b323032362d30312d33",
        "315431323a30303a30312e3030303030305affffffffffffffff0000000a757365725f6c6f67696e000000076661696c757265",
        "ffffffffffffffffffffffffffffffff00000008494e5445524e414c000000087374616e6461726400000003312e30ffffffff",
        "ffffffff000000027b7d0000000131"
    );

    #[test]
    fn canonical_json_rules() {
        let v: Value =
            serde_json::from_str(r#"{"b":1.50e1,"a":[-0,1E2,"x\u0001\u001f\u007f/\b\f\r\t"],"é":{},"Z":false}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&v),
            "{\"Z\":false,\"a\":[0,100,\"x\\u0001\\u001f\u{7f}/\\b\\f\\r\\t\"],\"b\":15.0,\"é\":{}}"
        );
        // Keys sort by UTF-8 bytes, not by UTF-16 units or char properties.
        let v = json!({"\u{e9}": 1, "\u{1F600}": 2, "\u{FB01}": 3, "z": 4});
        assert_eq!(canonical_json(&v), "{\"z\":4,\"é\":1,\"ﬁ\":3,\"😀\":2}");
        // Different spelling of the same jsonb gives the same text.
        let a: Value = serde_json::from_str(r#"{ "x" : 1.0e0 , "y":[ 1, 2 ] }"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y":[1,2],"x":1.0}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }

    #[test]
    fn every_field_changes_the_leaf() {
        let base = full_example();
        let h0 = leaf_hash(&base);
        let mut variants: Vec<StoredEvent> = Vec::new();
        let mut push = |f: &dyn Fn(&mut StoredEvent)| {
            let mut e = base.clone();
            f(&mut e);
            variants.push(e);
        };
        push(&|e| e.id += 1);
        push(&|e| e.ingested_at += chrono::Duration::microseconds(1));
        push(&|e| e.event.timestamp += chrono::Duration::microseconds(1));
        push(&|e| e.event.event_id = Uuid::nil());
        push(&|e| e.event.action.push('x'));
        push(&|e| e.event.status = Status::Attempt);
        push(&|e| e.event.principal_id = None);
        push(&|e| e.event.organization_id = Some("hospital-2".into()));
        push(&|e| e.event.target_resource_type = None);
        push(&|e| e.event.target_resource_id = Some(String::new()));
        push(&|e| e.event.outcome_description = None);
        push(&|e| e.event.correlation_id = None);
        push(&|e| e.event.data_classification = DataClassification::Public);
        push(&|e| e.event.retention_policy = "standard".into());
        push(&|e| e.event.event_version = "1.1".into());
        push(&|e| e.event.ttl = None);
        push(&|e| e.event.processing_latency = Some(13));
        push(&|e| {
            e.event.details.insert("amount".into(), json!(1250));
        });
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(leaf_hash(v), h0, "variant {i} did not change the leaf");
        }
        // seq and the stored leaf_hash are not part of the leaf.
        let mut moved = base.clone();
        moved.seq = 99;
        moved.leaf_hash = [7; 32];
        assert_eq!(leaf_hash(&moved), h0);
        // Moving a value between adjacent fields changes the leaf (length prefixes, NULL markers).
        let mut a = minimal_example();
        a.event.principal_id = Some("x".into());
        let mut b = minimal_example();
        b.event.organization_id = Some("x".into());
        assert_ne!(leaf_hash(&a), leaf_hash(&b));
    }
}

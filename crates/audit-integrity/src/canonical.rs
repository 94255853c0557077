//! The canonical byte form of a stored event and its RFC 6962 leaf hash (`docs/integrity.md`, "Canonical form").
//!
//! The form is length-prefixed (no escaping ambiguity between fields), lists the fields in one fixed order, and
//! puts the row `id` last so that the writer can hash everything else before its transaction and only finish
//! the hash once the database has assigned the id. `seq` is deliberately absent: a leaf's position *is* its seq.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::IntegrityError;
use super::merkle::Hash;
use audit_core::event::{NewEvent, StoredEvent, format_timestamp};
use audit_core::validate::pg_numeric_text;
use audit_pg::RawEventRow;

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

/// The leaf hash of a row read with binary COPY ([`RawEventRow`]), byte for byte what [`leaf_hash`] gives for the
/// same row as a [`StoredEvent`], but written straight from the row's fields: no `serde_json::Value`, no per-field
/// `String`. `buf` is scratch space reused across rows. This is `verify`'s hot path.
pub fn leaf_hash_raw(row: &RawEventRow<'_>, buf: &mut Vec<u8>) -> Result<Hash, IntegrityError> {
    buf.clear();
    buf.push(0x00);
    write_raw(buf, row)?;
    Ok(Sha256::digest(&buf[..]).into())
}

/// [`canonical_bytes`] of a row read with binary COPY (see [`leaf_hash_raw`]).
pub fn canonical_bytes_raw(row: &RawEventRow<'_>) -> Result<Vec<u8>, IntegrityError> {
    let mut out = Vec::with_capacity(512);
    write_raw(&mut out, row)?;
    Ok(out)
}

fn raw_text(out: &mut Vec<u8>, value: Option<&str>) {
    field(out, value.map(str::as_bytes));
}

/// A decimal integer as a length-prefixed field.
fn raw_int(out: &mut Vec<u8>, v: i64) {
    let mut b = itoa::Buffer::new();
    raw_text(out, Some(b.format(v)));
}

/// `format_timestamp` (`%Y-%m-%dT%H:%M:%S%.6fZ`) as a length-prefixed field, with the digits written by hand for
/// years 0–9999 (every other year goes through chrono's formatter, as the reference does).
fn raw_timestamp(out: &mut Vec<u8>, t: DateTime<Utc>) {
    use chrono::{Datelike as _, Timelike as _};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        raw_text(out, Some(&format_timestamp(t)));
        return;
    }
    fn two(b: &mut [u8], v: u32) {
        b[0] = b'0' + (v / 10) as u8;
        b[1] = b'0' + (v % 10) as u8;
    }
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let y = year as u32;
    two(&mut b[0..2], y / 100);
    two(&mut b[2..4], y % 100);
    two(&mut b[5..7], t.month());
    two(&mut b[8..10], t.day());
    two(&mut b[11..13], t.hour());
    two(&mut b[14..16], t.minute());
    two(&mut b[17..19], t.second());
    let mut micros = t.nanosecond() / 1_000;
    for i in (20..26).rev() {
        b[i] = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    field(out, Some(&b));
}

fn write_raw(out: &mut Vec<u8>, r: &RawEventRow<'_>) -> Result<(), IntegrityError> {
    out.extend_from_slice(DOMAIN);
    let mut id = [0u8; 36];
    raw_text(out, Some(r.event_id.hyphenated().encode_lower(&mut id)));
    raw_timestamp(out, r.timestamp);
    raw_timestamp(out, r.ingested_at);
    raw_text(out, r.organization_id);
    raw_text(out, r.principal_id);
    raw_text(out, Some(r.action));
    raw_text(out, Some(r.status.as_str()));
    raw_text(out, r.target_resource_type);
    raw_text(out, r.target_resource_id);
    raw_text(out, r.outcome_description);
    raw_text(out, r.correlation_id);
    raw_text(out, Some(r.data_classification.as_str()));
    raw_text(out, Some(r.retention_policy));
    raw_text(out, Some(r.event_version));
    raw_text(out, r.ttl);
    match r.processing_latency {
        Some(v) => raw_int(out, v.into()),
        None => raw_text(out, None),
    }
    // details: the length prefix is patched in once the canonical text is written.
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    canonical_json_text(r.details, out)
        .map_err(|e| IntegrityError::MalformedEvent(format!("event {}: details: {e}", r.event_id)))?;
    let len = u32::try_from(out.len() - at - 4).ok().filter(|l| *l != u32::MAX).expect("field shorter than 4 GiB");
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    raw_int(out, r.id);
    Ok(())
}

/// Appends [`canonical_json`] of the JSON object `text` to `out`, without building a `serde_json::Value`: one pass
/// that copies strings without escapes and numbers already in PostgreSQL's numeric form as they are, and sorts each
/// object's members by key. Input the pass does not take (invalid JSON, nesting deeper than serde_json accepts)
/// goes through serde_json and [`canonical_json`], so the result — or the error — is always the reference's.
pub fn canonical_json_text(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    let mut p = JsonPass { s: text.as_bytes(), i: 0 };
    p.ws();
    if p.peek() == Some(b'{') && p.value(out, 0).is_some() {
        p.ws();
        if p.i == p.s.len() {
            return Ok(());
        }
    }
    out.truncate(start);
    match serde_json::from_str::<Value>(text).map_err(|e| e.to_string())? {
        v @ Value::Object(_) => {
            out.extend_from_slice(canonical_json(&v).as_bytes());
            Ok(())
        }
        _ => Err("not a JSON object".into()),
    }
}

/// serde_json's default recursion limit: deeper input is left to serde_json (which refuses it).
const MAX_DEPTH: u32 = 120;

/// The single pass of [`canonical_json_text`]; `None` hands the input to the reference path.
struct JsonPass<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> JsonPass<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.ws();
        (self.peek()? == b).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>) -> Option<()> {
        self.s[self.i..].starts_with(word).then(|| {
            self.i += word.len();
            out.extend_from_slice(word);
        })
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'{' => self.object(out, depth),
            b'[' => self.array(out, depth),
            b'"' => self.string(out).map(drop),
            b't' => self.literal(b"true", out),
            b'f' => self.literal(b"false", out),
            b'n' => self.literal(b"null", out),
            b'-' | b'0'..=b'9' => self.number(out),
            _ => None,
        }
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: u32) -> Option<()> {
        self.i += 1;
        out.push(b'[');
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            out.push(b']');
            return Some(());
        }
        loop {
            self.value(out, depth + 1)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    out.push(b',');
                }
                b']' => {
                    self.i += 1;
                    out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: u32) -> Option<()> {
        self.i += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            out.extend_from_slice(b"{}");
            return Some(());
        }
        // Members are written in input order, then put in key order (keys by their UTF-8 bytes; of equal keys the
        // last wins, as in serde_json's map and in jsonb).
        let base = out.len();
        let mut members: Vec<(std::borrow::Cow<'a, [u8]>, usize, usize)> = Vec::new();
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return None;
            }
            let at = out.len();
            let key = self.string(out)?;
            self.eat(b':')?;
            out.push(b':');
            self.value(out, depth + 1)?;
            members.push((key, at - base, out.len() - base));
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        let body = out.split_off(base);
        members.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(b'{');
        let mut first = true;
        for (k, m) in members.iter().enumerate() {
            if members.get(k + 1).is_some_and(|next| next.0 == m.0) {
                continue; // a later duplicate wins
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&body[m.1..m.2]);
        }
        out.push(b'}');
        Some(())
    }

    /// Writes the canonical form of the string at the cursor and returns its decoded bytes (for key order).
    fn string(&mut self, out: &mut Vec<u8>) -> Option<std::borrow::Cow<'a, [u8]>> {
        self.i += 1;
        let start = self.i;
        loop {
            match *self.s.get(self.i)? {
                b'"' => break,
                b'\\' => return self.escaped_string(start, out),
                c if c < 0x20 => return None,
                _ => self.i += 1,
            }
        }
        let s = self.s;
        let raw = &s[start..self.i];
        self.i += 1;
        out.push(b'"');
        out.extend_from_slice(raw);
        out.push(b'"');
        Some(std::borrow::Cow::Borrowed(raw))
    }

    /// The slow path of [`Self::string`]: decode every escape, then write the canonical escapes.
    fn escaped_string(&mut self, start: usize, out: &mut Vec<u8>) -> Option<std::borrow::Cow<'a, [u8]>> {
        let mut decoded: Vec<u8> = self.s[start..self.i].to_vec();
        loop {
            match *self.s.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    break;
                }
                b'\\' => {
                    let e = *self.s.get(self.i + 1)?;
                    self.i += 2;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{08}',
                        b'f' => '\u{0C}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.i..self.i + 2)? != b"\\u" {
                                    return None;
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    let mut b = [0u8; 4];
                    decoded.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
                c if c < 0x20 => return None,
                c => {
                    decoded.push(c);
                    self.i += 1;
                }
            }
        }
        let text = std::str::from_utf8(&decoded).ok()?;
        let mut escaped = String::with_capacity(text.len() + 2);
        write_string(&mut escaped, text);
        out.extend_from_slice(escaped.as_bytes());
        Some(std::borrow::Cow::Owned(decoded))
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
        let v = u32::from_str_radix(h, 16).ok()?;
        if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        Some(v)
    }

    /// A JSON number; copied as it is when it is already PostgreSQL's numeric text (no exponent, not a negative
    /// zero), otherwise converted as the reference converts it.
    fn number(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let from = p.i;
            while p.peek().is_some_and(|b| b.is_ascii_digit()) {
                p.i += 1;
            }
            p.i > from
        };
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !digits(self) {
                return None;
            }
        }
        let mut plain = true;
        if let Some(b'e' | b'E') = self.peek() {
            plain = false;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !digits(self) {
                return None;
            }
        }
        let token = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        let negative_zero = neg && token.bytes().all(|b| matches!(b, b'-' | b'0' | b'.'));
        if plain && !negative_zero {
            out.extend_from_slice(token.as_bytes());
        } else {
            out.extend_from_slice(pg_numeric_text(token).as_deref().unwrap_or(token).as_bytes());
        }
        Some(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use audit_core::event::{DataClassification, Status};
    use proptest::prelude::*;
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

    /// A JSON document as a producer might spell it: the generator keeps the number text and duplicate keys.
    #[derive(Debug, Clone)]
    enum J {
        Null,
        Bool(bool),
        Num(String),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    /// How a document is spelled: PostgreSQL's jsonb output (`", "` and `": "`), compact, or with `\uXXXX` and
    /// `\/` escapes and extra whitespace.
    #[derive(Debug, Clone, Copy)]
    struct Style {
        pg_spaces: bool,
        escape_non_ascii: bool,
        escape_slash: bool,
        newlines: bool,
    }

    fn render_str(out: &mut String, s: &str, st: Style) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '/' if st.escape_slash => out.push_str("\\/"),
                '\n' => out.push_str("\\n"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
                c if st.escape_non_ascii && !c.is_ascii() => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn render(out: &mut String, j: &J, st: Style) {
        let (comma, colon) = match (st.pg_spaces, st.newlines) {
            (_, true) => (",\n  ", " :\t"),
            (true, false) => (", ", ": "),
            (false, false) => (",", ":"),
        };
        match j {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => render_str(out, s, st),
            J::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(comma);
                    }
                    render(out, v, st);
                }
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push_str(comma);
                    }
                    render_str(out, k, st);
                    out.push_str(colon);
                    render(out, v, st);
                }
                out.push('}');
            }
        }
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-c]{0,3}",
            prop::collection::vec(any::<char>(), 0..6).prop_map(|c| c.into_iter().collect()),
            prop::collection::vec(
                prop::sample::select(vec!['é', 'ﬁ', '😀', '\u{7f}', '\u{1}', '"', '\\', '/', 'Z', 'a']),
                0..5
            )
            .prop_map(|c| c.into_iter().collect()),
        ]
    }

    fn json_strategy() -> impl Strategy<Value = J> {
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,12})?([eE][+-]?[0-9]{1,3})?".prop_map(J::Num),
            text_strategy().prop_map(J::Str),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
                prop::collection::vec((prop_oneof!["[a-d]", text_strategy()], inner), 0..5).prop_map(J::Obj),
            ]
        })
    }

    fn style_strategy() -> impl Strategy<Value = Style> {
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c, d)| Style {
            pg_spaces: a,
            escape_non_ascii: b,
            escape_slash: c,
            newlines: d,
        })
    }

    fn object_text(members: Vec<(String, J)>, st: Style) -> String {
        let mut text = String::new();
        render(&mut text, &J::Obj(members), st);
        text
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        prop::option::of(text_strategy())
    }

    fn time_strategy() -> impl Strategy<Value = DateTime<Utc>> {
        // Years 0–9999 mostly (the hand-written digits), a few beyond on both sides (chrono's formatter).
        prop_oneof![
            9 => -62_167_219_200_000_000i64..253_402_300_799_999_999i64,
            1 => -200_000_000_000_000_000i64..8_000_000_000_000_000_000i64,
        ]
        .prop_map(|us| DateTime::from_timestamp_micros(us).unwrap())
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The single-pass canonical JSON equals the reference (serde_json `Value`, then `canonical_json`) for
        /// every spelling of every document, numbers, escapes, unicode, nesting and duplicate keys included.
        #[test]
        fn canonical_json_text_equals_the_value_path(
            members in prop::collection::vec((prop_oneof!["[a-d]", text_strategy()], json_strategy()), 0..6),
            st in style_strategy(),
        ) {
            let text = object_text(members, st);
            let want = canonical_json(&serde_json::from_str::<Value>(&text).unwrap());
            let mut got = Vec::new();
            canonical_json_text(&text, &mut got).unwrap();
            prop_assert_eq!(String::from_utf8(got).unwrap(), want, "{}", text);
        }

        /// A whole event read as binary COPY fields hashes byte for byte as the same event as a `StoredEvent`.
        #[test]
        fn raw_rows_give_the_reference_canonical_bytes(
            id in any::<i64>(),
            seq in 0i64..1_000_000,
            times in (time_strategy(), time_strategy()),
            texts in (text_strategy(), text_strategy(), text_strategy(), text_strategy()),
            opts in (opt_text(), opt_text(), opt_text(), opt_text(), opt_text(), opt_text(), opt_text()),
            status in prop::sample::select(Status::ALL.to_vec()),
            class in prop::sample::select(DataClassification::ALL.to_vec()),
            latency in prop::option::of(any::<i32>()),
            members in prop::collection::vec(("[a-d]", json_strategy()), 0..4),
            st in style_strategy(),
            uuid in any::<u128>(),
        ) {
            let details_text = object_text(members, st);
            let details = serde_json::from_str::<Value>(&details_text).unwrap().as_object().unwrap().clone();
            let (principal, org, rtype, rid, outcome, corr, ttl) = opts;
            let e = StoredEvent {
                id,
                ingested_at: times.1,
                seq,
                leaf_hash: [3; 32],
                event: NewEvent {
                    event_id: Uuid::from_u128(uuid),
                    event_id_supplied: true,
                    timestamp: times.0,
                    action: texts.0.clone(),
                    status,
                    principal_id: principal.clone(),
                    organization_id: org.clone(),
                    target_resource_type: rtype.clone(),
                    target_resource_id: rid.clone(),
                    outcome_description: outcome.clone(),
                    correlation_id: corr.clone(),
                    data_classification: class,
                    retention_policy: texts.1.clone(),
                    event_version: texts.2.clone(),
                    ttl: ttl.clone(),
                    processing_latency: latency,
                    details,
                },
            };
            let raw = RawEventRow {
                id,
                event_id: e.event.event_id,
                timestamp: times.0,
                ingested_at: times.1,
                action: &texts.0,
                status,
                principal_id: principal.as_deref(),
                organization_id: org.as_deref(),
                target_resource_type: rtype.as_deref(),
                target_resource_id: rid.as_deref(),
                outcome_description: outcome.as_deref(),
                correlation_id: corr.as_deref(),
                data_classification: class,
                retention_policy: &texts.1,
                event_version: &texts.2,
                ttl: ttl.as_deref(),
                processing_latency: latency,
                details: &details_text,
                seq,
                leaf_hash: [3; 32],
            };
            prop_assert_eq!(hex::encode(canonical_bytes_raw(&raw).unwrap()), hex::encode(canonical_bytes(&e)));
            let mut buf = Vec::new();
            prop_assert_eq!(leaf_hash_raw(&raw, &mut buf).unwrap(), leaf_hash(&e));
        }
    }

    #[test]
    fn canonical_json_text_falls_back_and_refuses_like_the_reference() {
        let mut out = Vec::new();
        // Valid JSON the single pass leaves to serde_json: a lone surrogate escape is refused by both.
        assert!(canonical_json_text(r#"{"a":"\ud800"}"#, &mut out).is_err());
        assert!(canonical_json_text("[1]", &mut out).is_err(), "details must be an object");
        assert!(canonical_json_text(r#"{"a":01}"#, &mut out).is_err());
        assert!(canonical_json_text(r#"{"a":1} x"#, &mut out).is_err());
        assert!(out.is_empty(), "nothing written for refused input");
        // Deep nesting beyond the single pass's limit but within serde_json's: same text as the reference.
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(125), "]".repeat(125));
        canonical_json_text(&deep, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), canonical_json(&serde_json::from_str::<Value>(&deep).unwrap()));
        // The documented vector, spelled as jsonb prints it.
        let mut out = Vec::new();
        let pg = r#"{"ok": true, "none": null, "note": "line1\nline2 \"q\" é/", "tags": ["a", "b"], "amount": 1250.00, "resource": {"name": "chart-7", "ward": 3}}"#;
        canonical_json_text(pg, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"amount":1250.00,"none":null,"note":"line1\nline2 \"q\" é/","ok":true,"resource":{"name":"chart-7","ward":3},"tags":["a","b"]}"#
        );
    }
}

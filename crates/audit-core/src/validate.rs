//! Validation of incoming events: every rejection names the field and what was wrong with it.
//!
//! Input is a JSON object with the seed's snake_case field names. Types are never coerced (an organisation id of
//! `123` is an error), unknown fields are refused by name (a typo such as `principalId` must not drop data
//! silently), and `details` numbers are rewritten to PostgreSQL's numeric text form so that the hash computed
//! before the insert equals the hash of what the database gives back.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::{DataClassification, NewEvent, Status, truncate_to_micros};

/// A rejected event: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The offending field (`details.a.b` for nested details problems, `event` for the whole object).
    pub field: String,
    /// What was wrong, with the value where it helps.
    pub reason: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl From<ValidationError> for crate::AuditError {
    fn from(e: ValidationError) -> Self {
        crate::AuditError::invalid(e.to_string())
    }
}

/// Limits applied to every event; the defaults are the documented ones.
#[derive(Debug, Clone)]
pub struct Validator {
    /// How far in the future a timestamp may lie (clock skew allowance).
    pub max_future_skew: Duration,
    /// Largest serialized `details` object, in bytes.
    pub max_details_bytes: usize,
}

impl Default for Validator {
    fn default() -> Self {
        Self { max_future_skew: Duration::hours(1), max_details_bytes: 64 * 1024 }
    }
}

/// Every accepted top-level field, in schema order.
pub const FIELDS: &[&str] = &[
    "event_id",
    "timestamp",
    "action",
    "status",
    "principal_id",
    "organization_id",
    "target_resource_type",
    "target_resource_id",
    "outcome_description",
    "correlation_id",
    "data_classification",
    "retention_policy",
    "event_version",
    "ttl",
    "processing_latency",
    "details",
];

/// Column length limits (characters), matching the migration's varchar sizes.
pub const MAX_ID_CHARS: usize = 255;
/// `outcome_description` limit.
pub const MAX_OUTCOME_CHARS: usize = 4096;
/// `retention_policy` limit.
pub const MAX_POLICY_CHARS: usize = 64;
/// `event_version` limit.
pub const MAX_VERSION_CHARS: usize = 20;
/// `ttl` limit.
pub const MAX_TTL_CHARS: usize = 64;
/// Largest decimal exponent accepted in a `details` number (PostgreSQL numeric can hold far more, but such
/// values are never audit data and would expand to huge text).
pub const MAX_NUMBER_EXPONENT: i64 = 1000;

/// Earliest accepted event time.
pub fn earliest_timestamp() -> DateTime<Utc> {
    DateTime::from_timestamp(0, 0).expect("epoch is valid")
}

impl Validator {
    /// Validates one event given as JSON text (one NDJSON line).
    pub fn validate_str(&self, line: &str, now: DateTime<Utc>) -> Result<NewEvent, ValidationError> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| ValidationError::new("event", format!("not valid JSON: {e}")))?;
        self.validate_value(value, now)
    }

    /// Validates one event given as a parsed JSON value: the object and its field names, then each field in turn
    /// (each stage names the field it refuses).
    pub fn validate_value(&self, value: Value, now: DateTime<Utc>) -> Result<NewEvent, ValidationError> {
        let mut obj = known_fields(value)?;
        let action = req_string(&mut obj, "action", MAX_ID_CHARS)?;
        if action.trim().is_empty() {
            return Err(ValidationError::new("action", "must not be empty"));
        }
        let status_text = req_string(&mut obj, "status", 32)?;
        let status = status_text.parse::<Status>().map_err(|e| ValidationError::new("status", e.to_string()))?;
        let timestamp = self.timestamp(&mut obj, now)?;
        let (event_id, event_id_supplied) = event_id(&mut obj, now)?;
        let data_classification = match opt_string(&mut obj, "data_classification", 32)? {
            None => DataClassification::Internal,
            Some(s) => s
                .parse::<DataClassification>()
                .map_err(|e| ValidationError::new("data_classification", e.to_string()))?,
        };
        Ok(NewEvent {
            event_id,
            event_id_supplied,
            timestamp,
            action,
            status,
            principal_id: opt_identifier(&mut obj, "principal_id")?,
            organization_id: opt_identifier(&mut obj, "organization_id")?,
            target_resource_type: opt_identifier(&mut obj, "target_resource_type")?,
            target_resource_id: opt_identifier(&mut obj, "target_resource_id")?,
            outcome_description: opt_string(&mut obj, "outcome_description", MAX_OUTCOME_CHARS)?,
            correlation_id: opt_identifier(&mut obj, "correlation_id")?,
            data_classification,
            retention_policy: opt_identifier_limited(&mut obj, "retention_policy", MAX_POLICY_CHARS)?
                .unwrap_or_else(|| "standard".into()),
            event_version: opt_identifier_limited(&mut obj, "event_version", MAX_VERSION_CHARS)?
                .unwrap_or_else(|| "1.0".into()),
            ttl: opt_identifier_limited(&mut obj, "ttl", MAX_TTL_CHARS)?,
            processing_latency: processing_latency(&mut obj)?,
            details: self.details(&mut obj)?,
        })
    }

    /// `timestamp`: RFC 3339 with an offset, to UTC microseconds, not too far in the future, not before 1970.
    fn timestamp(&self, obj: &mut Map<String, Value>, now: DateTime<Utc>) -> Result<DateTime<Utc>, ValidationError> {
        let ts_text = req_string(obj, "timestamp", 64)?;
        let timestamp = DateTime::parse_from_rfc3339(&ts_text)
            .map_err(|e| {
                ValidationError::new(
                    "timestamp",
                    format!("`{ts_text}` is not an RFC 3339 time with an offset (e.g. 2026-01-31T12:00:00Z): {e}"),
                )
            })?
            .with_timezone(&Utc);
        let timestamp = truncate_to_micros(timestamp);
        if timestamp > now + self.max_future_skew {
            return Err(ValidationError::new(
                "timestamp",
                format!(
                    "`{ts_text}` is more than {} s in the future (clock skew allowance)",
                    self.max_future_skew.num_seconds()
                ),
            ));
        }
        if timestamp < earliest_timestamp() {
            return Err(ValidationError::new("timestamp", format!("`{ts_text}` is before 1970-01-01")));
        }
        Ok(timestamp)
    }

    /// `details`: an object (absent → empty), numbers in PostgreSQL's numeric form, within the size limit.
    fn details(&self, obj: &mut Map<String, Value>) -> Result<Map<String, Value>, ValidationError> {
        match obj.remove("details") {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(mut m)) => {
                normalize_details(&mut m, "details")?;
                let size = serde_json::to_vec(&m).map(|v| v.len()).unwrap_or(usize::MAX);
                if size > self.max_details_bytes {
                    return Err(ValidationError::new(
                        "details",
                        format!("is {size} bytes, more than the {} byte limit", self.max_details_bytes),
                    ));
                }
                Ok(m)
            }
            Some(other) => {
                Err(ValidationError::new("details", format!("expected a JSON object, got {}", kind(&other))))
            }
        }
    }
}

/// The event's object, refusing a non-object and any unknown field by name (with a "did you mean" for the camelCase
/// spellings of the seed's TypeScript API).
fn known_fields(value: Value) -> Result<Map<String, Value>, ValidationError> {
    let Value::Object(obj) = value else {
        return Err(ValidationError::new("event", format!("expected a JSON object, got {}", kind(&value))));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let hint = suggestion(unknown).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
        return Err(ValidationError::new(unknown.clone(), format!("unknown field{hint}")));
    }
    Ok(obj)
}

/// `event_id`: the caller's UUID (then a re-send is recognised), or a fresh time-ordered one.
fn event_id(obj: &mut Map<String, Value>, now: DateTime<Utc>) -> Result<(Uuid, bool), ValidationError> {
    match obj.remove("event_id") {
        None | Some(Value::Null) => Ok((event_id_at(now), false)),
        Some(Value::String(s)) => {
            let id =
                Uuid::parse_str(&s).map_err(|_| ValidationError::new("event_id", format!("`{s}` is not a UUID")))?;
            Ok((id, true))
        }
        Some(other) => Err(ValidationError::new("event_id", format!("expected a UUID string, got {}", kind(&other)))),
    }
}

/// `processing_latency`: whole milliseconds in `0..=i32::MAX`, or absent.
fn processing_latency(obj: &mut Map<String, Value>) -> Result<Option<i32>, ValidationError> {
    match obj.remove("processing_latency") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_i64().filter(|v| (0..=i64::from(i32::MAX)).contains(v)).ok_or_else(|| {
                ValidationError::new(
                    "processing_latency",
                    format!("`{n}` is not a whole number of milliseconds between 0 and {}", i32::MAX),
                )
            })?;
            Ok(Some(v as i32))
        }
        Some(other) => Err(ValidationError::new(
            "processing_latency",
            format!("expected an integer (milliseconds), got {}", kind(&other)),
        )),
    }
}

/// A fresh UUIDv7 for an event that came without an id, time-ordered by the validation time `now` (so ids the
/// library generates sort with time, which keeps index insertions at the right edge of the b-tree).
fn event_id_at(now: DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(now.timestamp()).unwrap_or(0);
    Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, now.timestamp_subsec_nanos()))
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {:?}", truncate_for_message(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn truncate_for_message(s: &str) -> String {
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s.to_string() }
}

fn suggestion(unknown: &str) -> Option<&'static str> {
    // camelCase → snake_case, and case-insensitive match.
    let mut snake = String::new();
    for c in unknown.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    let snake = snake.trim_start_matches('_').replace('-', "_");
    FIELDS.iter().copied().find(|f| *f == snake || f.eq_ignore_ascii_case(unknown))
}

fn check_text(field: &str, s: &str, max_chars: usize) -> Result<(), ValidationError> {
    if s.contains('\0') {
        return Err(ValidationError::new(field, "contains a NUL character"));
    }
    let n = s.chars().count();
    if n > max_chars {
        return Err(ValidationError::new(field, format!("is {n} characters long, more than {max_chars}")));
    }
    Ok(())
}

fn req_string(obj: &mut Map<String, Value>, field: &str, max: usize) -> Result<String, ValidationError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Err(ValidationError::new(field, "is required")),
        Some(Value::String(s)) => {
            check_text(field, &s, max)?;
            Ok(s)
        }
        Some(other) => Err(ValidationError::new(field, format!("expected a string, got {}", kind(&other)))),
    }
}

fn opt_string(obj: &mut Map<String, Value>, field: &str, max: usize) -> Result<Option<String>, ValidationError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_text(field, &s, max)?;
            Ok(Some(s))
        }
        Some(other) => Err(ValidationError::new(field, format!("expected a string, got {}", kind(&other)))),
    }
}

fn opt_identifier(obj: &mut Map<String, Value>, field: &str) -> Result<Option<String>, ValidationError> {
    opt_identifier_limited(obj, field, MAX_ID_CHARS)
}

/// Identifiers may not be empty nor contain control characters: they appear in signed checkpoint text lines.
fn opt_identifier_limited(
    obj: &mut Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, ValidationError> {
    let v = opt_string(obj, field, max)?;
    if let Some(s) = &v {
        if s.is_empty() {
            return Err(ValidationError::new(field, "must not be empty (omit it or use null instead)"));
        }
        if s.chars().any(char::is_control) {
            return Err(ValidationError::new(field, "contains a control character"));
        }
    }
    Ok(v)
}

/// Rejects NULs (PostgreSQL text and jsonb cannot hold them) and rewrites numbers to PostgreSQL numeric form.
fn normalize_details(m: &mut Map<String, Value>, path: &str) -> Result<(), ValidationError> {
    for (k, v) in m.iter_mut() {
        let p = format!("{path}.{k}");
        if k.contains('\0') {
            return Err(ValidationError::new(path, "has a key containing a NUL character"));
        }
        normalize_value(v, &p)?;
    }
    Ok(())
}

fn normalize_value(v: &mut Value, path: &str) -> Result<(), ValidationError> {
    match v {
        Value::String(s) => {
            if s.contains('\0') {
                return Err(ValidationError::new(path, "contains a NUL character"));
            }
        }
        Value::Number(n) => {
            let text = n.to_string();
            let canon = pg_numeric_text(&text).ok_or_else(|| {
                ValidationError::new(
                    path,
                    format!("number `{text}` is out of range (exponent beyond ±{MAX_NUMBER_EXPONENT})"),
                )
            })?;
            if canon != text {
                *v = serde_json::from_str(&canon).expect("canonical number text is valid JSON");
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                normalize_value(x, &format!("{path}[{i}]"))?;
            }
        }
        Value::Object(m) => normalize_details(m, path)?,
        Value::Null | Value::Bool(_) => {}
    }
    Ok(())
}

/// The text PostgreSQL's numeric type prints for a JSON number: plain decimal notation, display scale
/// `max(0, fraction digits − exponent)`, no negative zero. `None` when the exponent is out of the accepted range.
pub fn pg_numeric_text(json_number: &str) -> Option<String> {
    let (neg, rest) = match json_number.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, json_number),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => {
            let e: i64 = rest[i + 1..].parse().ok()?;
            (&rest[..i], e)
        }
        None => (rest, 0),
    };
    if exp.abs() > MAX_NUMBER_EXPONENT {
        return None;
    }
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    let digits: String = format!("{int_part}{frac_part}");
    // value = digits × 10^(exp − frac_len)
    let scale = frac_part.len() as i64 - exp; // digits after the point
    let (int_digits, frac_digits) = if scale <= 0 {
        let mut s = digits.clone();
        s.extend(std::iter::repeat_n('0', (-scale) as usize));
        (s, String::new())
    } else {
        let scale = scale as usize;
        if digits.len() > scale {
            (digits[..digits.len() - scale].to_string(), digits[digits.len() - scale..].to_string())
        } else {
            let mut f = "0".repeat(scale - digits.len());
            f.push_str(&digits);
            (String::new(), f)
        }
    };
    let int_trimmed = int_digits.trim_start_matches('0');
    let int_out = if int_trimmed.is_empty() { "0" } else { int_trimmed };
    let is_zero = int_out == "0" && frac_digits.chars().all(|c| c == '0');
    let mut out = String::new();
    if neg && !is_zero {
        out.push('-');
    }
    out.push_str(int_out);
    if !frac_digits.is_empty() {
        out.push('.');
        out.push_str(&frac_digits);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn base() -> Value {
        json!({"action": "user_login", "status": "success", "timestamp": "2026-11-25T11:00:00.123456789+01:00"})
    }

    fn err(v: Value) -> ValidationError {
        Validator::default().validate_value(v, now()).unwrap_err()
    }

    fn with(field: &str, value: Value) -> Value {
        let mut b = base();
        b[field] = value;
        b
    }

    #[test]
    fn a_minimal_event_gets_defaults_and_utc_micros() {
        let e = Validator::default().validate_value(base(), now()).unwrap();
        assert_eq!(e.timestamp.to_rfc3339(), "2026-11-25T10:00:00.123456+00:00");
        assert_eq!(e.data_classification, DataClassification::Internal);
        assert_eq!(e.retention_policy, "standard");
        assert!(!e.event_id_supplied);
        assert_eq!(e.event_id.get_version_num(), 7);
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut no_action = base();
        no_action.as_object_mut().unwrap().remove("action");
        assert_eq!(err(no_action).field, "action");
        assert_eq!(err(with("action", json!(""))).field, "action");
        assert_eq!(err(with("action", json!("x".repeat(256)))).field, "action");
        assert_eq!(err(with("status", json!("ok"))).field, "status");
        assert_eq!(err(with("timestamp", json!("2026-11-25T11:00:00"))).field, "timestamp");
        let future = err(with("timestamp", json!("2036-11-25T11:00:00Z")));
        assert!(future.to_string().contains("future"), "{future}");
        assert_eq!(err(with("organization_id", json!(123))).field, "organization_id");
        assert_eq!(err(with("event_id", json!("not-a-uuid"))).field, "event_id");
        assert_eq!(err(with("data_classification", json!("phi"))).field, "data_classification");
        assert_eq!(err(with("details", json!([1, 2]))).field, "details");
        assert_eq!(err(with("details", json!({"a": "x\u{0}y"}))).field, "details.a");
        assert_eq!(err(with("principal_id", json!("a\u{0}b"))).field, "principal_id");
        assert_eq!(err(with("processing_latency", json!(1.5))).field, "processing_latency");
        assert_eq!(err(with("processing_latency", json!("12"))).field, "processing_latency");
        let big = json!({"blob": "x".repeat(70_000)});
        assert_eq!(err(with("details", big)).field, "details");
        let typo = err(with("principalId", json!("u1")));
        assert_eq!(typo.field, "principalId");
        assert!(typo.reason.contains("principal_id"), "{typo}");
    }

    #[test]
    fn numbers_take_postgres_numeric_form() {
        for (input, expected) in [
            ("1250.00", "1250.00"),
            ("1.5e3", "1500"),
            ("1.50e1", "15.0"),
            ("1e-3", "0.001"),
            ("-0", "0"),
            ("-0.0", "0.0"),
            ("0.00", "0.00"),
            ("12", "12"),
            ("-12.5E-2", "-0.125"),
            ("1E2", "100"),
        ] {
            assert_eq!(pg_numeric_text(input).as_deref(), Some(expected), "{input}");
        }
        assert_eq!(pg_numeric_text("1e5000"), None);
    }
}

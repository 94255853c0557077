//! The one query input shared by `audit-db query` (flags) and `GET /v1/events` (query-string parameters): same
//! fields, same parsing and normalisation, and errors that name the flag or parameter that was wrong.

use audit_core::{AuditError, AuditResult, Cursor, DataClassification, EventFilter, Status};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// Every filter a caller can give. CLI flags are the field names in kebab case (`--resource-type`); HTTP
/// parameters are the same names in snake case (`resource_type`); multi-valued ones are comma-separated in both.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Deserialize, Serialize, utoipa::IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilterParams {
    /// Organisation.
    #[arg(long)]
    pub org: Option<String>,
    /// Principal.
    #[arg(long)]
    pub principal: Option<String>,
    /// Action; repeat or comma-separate for any of several.
    #[arg(long, value_delimiter = ',')]
    #[serde(deserialize_with = "comma_list", skip_serializing_if = "Vec::is_empty")]
    #[param(value_type = Option<String>)]
    pub action: Vec<String>,
    /// Status (attempt, success, failure); repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    #[serde(deserialize_with = "comma_list", skip_serializing_if = "Vec::is_empty")]
    #[param(value_type = Option<String>)]
    pub status: Vec<String>,
    /// Target resource type.
    #[arg(long)]
    pub resource_type: Option<String>,
    /// Target resource id.
    #[arg(long)]
    pub resource_id: Option<String>,
    /// Data classification (PUBLIC, INTERNAL, CONFIDENTIAL, PHI, FINANCIAL; any case).
    #[arg(long)]
    pub classification: Option<String>,
    /// Correlation id.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Retention policy.
    #[arg(long)]
    pub retention_policy: Option<String>,
    /// Exact event id.
    #[arg(long)]
    pub event_id: Option<String>,
    /// Earliest timestamp, inclusive: RFC 3339, or `now`, `now-30d`, `now-1h`, `now-15m` (counted from the start of
    /// the current minute, so repeated questions share cache entries).
    #[arg(long)]
    pub from: Option<String>,
    /// Latest timestamp, inclusive (same forms as --from).
    #[arg(long)]
    pub to: Option<String>,
    /// JSON object that `details` must contain (`@>`), e.g. '{"access_reason":"treatment"}'.
    #[arg(long)]
    pub details: Option<String>,
    /// Rows per page (default 100, at most 10000).
    #[arg(long)]
    #[serde(deserialize_with = "limit_number")]
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// Continue after this cursor (from a previous `next_cursor`).
    #[arg(long)]
    pub after: Option<String>,
}

/// How parameter names appear in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamNames {
    /// `--resource-type`
    Cli,
    /// `resource_type`
    Http,
}

impl ParamNames {
    fn name(self, field: &str) -> String {
        match self {
            ParamNames::Cli => format!("--{}", field.replace('_', "-")),
            ParamNames::Http => field.to_string(),
        }
    }
}

fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let raw = String::deserialize(d)?;
    Ok(raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

/// `limit` from a query string, naming the parameter when it is not a number (serde's own message does not).
fn limit_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let raw = String::deserialize(d)?;
    raw.trim()
        .parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("limit: `{raw}` is not a whole number from 1 to 10000")))
}

/// Parses an RFC 3339 time or a `now[-N{s,m,h,d}]` expression. `now-N…` is counted from the start of the current
/// minute, so the same question asked by different processes within a minute is the same query (and can be answered
/// from the shared cache); a bare `now` is exact.
pub fn parse_time(param: &str, s: &str, now: DateTime<Utc>) -> AuditResult<DateTime<Utc>> {
    let t = s.trim();
    let shape = || AuditError::invalid(format!("{param}: `{s}` should look like now-30d"));
    if let Some(rest) = t.strip_prefix("now") {
        if rest.is_empty() {
            return Ok(now);
        }
        let minute = DateTime::from_timestamp(now.timestamp() - now.timestamp().rem_euclid(60), 0).unwrap_or(now);
        let amount = rest.strip_prefix('-').ok_or_else(shape)?;
        let (num, unit) = amount.split_at(amount.len().saturating_sub(1));
        let n: i64 = num.parse().map_err(|_| shape())?;
        let d = match unit {
            "s" => Duration::try_seconds(n),
            "m" => Duration::try_minutes(n),
            "h" => Duration::try_hours(n),
            "d" => Duration::try_days(n),
            _ => return Err(AuditError::invalid(format!("{param}: unit of `{s}` must be s, m, h or d"))),
        }
        .ok_or_else(shape)?;
        return minute.checked_sub_signed(d).ok_or_else(shape);
    }
    Ok(DateTime::parse_from_rfc3339(t)
        .map_err(|_| {
            AuditError::invalid(format!("{param}: `{s}` is not an RFC 3339 time with an offset nor now-N[smhd]"))
        })?
        .with_timezone(&Utc))
}

impl FilterParams {
    /// The parameters given, as JSON (what an audited read records as its filter).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.retain(|_, x| !x.is_null());
        }
        v
    }

    /// Builds the filter, naming the flag or parameter of any bad value.
    pub fn to_filter(&self, now: DateTime<Utc>, names: ParamNames) -> AuditResult<EventFilter> {
        let n = |f: &str| names.name(f);
        let statuses = self
            .status
            .iter()
            .map(|s| s.parse::<Status>().map_err(|e| AuditError::invalid(format!("{}: {e}", n("status")))))
            .collect::<AuditResult<Vec<_>>>()?;
        let data_classification = self
            .classification
            .as_deref()
            .map(|c| {
                c.to_ascii_uppercase()
                    .parse::<DataClassification>()
                    .map_err(|e| AuditError::invalid(format!("{}: {e}", n("classification"))))
            })
            .transpose()?;
        let details_contains = match &self.details {
            None => None,
            Some(text) => {
                let v: serde_json::Value = serde_json::from_str(text)
                    .map_err(|_| AuditError::invalid(format!("{}: `{text}` is not JSON", n("details"))))?;
                if !v.is_object() {
                    return Err(AuditError::invalid(format!("{}: must be a JSON object", n("details"))));
                }
                Some(v)
            }
        };
        let event_id = self
            .event_id
            .as_deref()
            .map(|s| {
                s.parse::<uuid::Uuid>()
                    .map_err(|_| AuditError::invalid(format!("{}: `{s}` is not a UUID", n("event_id"))))
            })
            .transpose()?;
        let after = self
            .after
            .as_deref()
            .map(|c| Cursor::decode(c).map_err(|e| AuditError::invalid(format!("{}: {}", n("after"), e.message()))))
            .transpose()?;
        let mut f = EventFilter {
            event_id,
            actions: self.action.clone(),
            statuses,
            principal_id: self.principal.clone(),
            organization_id: self.org.clone(),
            target_resource_type: self.resource_type.clone(),
            target_resource_id: self.resource_id.clone(),
            correlation_id: self.correlation_id.clone(),
            data_classification,
            retention_policy: self.retention_policy.clone(),
            details_contains,
            limit: self.limit,
            after,
            ..Default::default()
        };
        f.time.gte = self.from.as_deref().map(|s| parse_time(&n("from"), s, now)).transpose()?;
        f.time.lte = self.to.as_deref().map(|s| parse_time(&n("to"), s, now)).transpose()?;
        f.effective_limit().map_err(|e| AuditError::invalid(format!("{}: {}", n("limit"), e.message())))?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(q: &str) -> Result<FilterParams, String> {
        serde_urlencoded::from_str(q).map_err(|e| e.to_string())
    }

    #[test]
    fn cli_and_http_build_the_same_filter() {
        let now = Utc::now();
        let p = http("org=h1&action=a,b&status=failure&classification=phi&from=now-1h&limit=5").unwrap();
        let f = p.to_filter(now, ParamNames::Http).unwrap();
        assert_eq!(f.organization_id.as_deref(), Some("h1"));
        assert_eq!(f.actions, ["a", "b"]);
        assert_eq!(f.statuses, [Status::Failure]);
        assert_eq!(f.data_classification, Some(DataClassification::Phi), "classification is upper-cased");
        assert_eq!(f.limit, Some(5));
        let cli = FilterParams {
            org: Some("h1".into()),
            action: vec!["a".into(), "b".into()],
            status: vec!["failure".into()],
            classification: Some("phi".into()),
            from: Some("now-1h".into()),
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(cli.to_filter(now, ParamNames::Cli).unwrap(), f);
    }

    #[test]
    fn unknown_and_bad_parameters_are_named() {
        let e = http("orgg=x").unwrap_err();
        assert!(e.contains("orgg"), "{e}");
        let bad = http("status=nope").unwrap().to_filter(Utc::now(), ParamNames::Http).unwrap_err();
        assert!(bad.message().starts_with("status:"), "{bad}");
        let bad = http("resource_type=x&limit=0").unwrap().to_filter(Utc::now(), ParamNames::Cli).unwrap_err();
        assert!(bad.message().starts_with("--limit:"), "{bad}");
        let bad = http("from=yesterday").unwrap().to_filter(Utc::now(), ParamNames::Http).unwrap_err();
        assert!(bad.message().starts_with("from:"), "{bad}");
        // Found by fuzzing: serde's integer error named no parameter.
        for q in ["limit=", "limit=-1", "limit=x", "limit=99999999999"] {
            let e = http(q).unwrap_err();
            assert!(e.starts_with("limit: `"), "{q}: {e}");
        }
        let bad = http("from=now-99999999999999d").unwrap().to_filter(Utc::now(), ParamNames::Http).unwrap_err();
        assert!(bad.message().starts_with("from:"), "{bad}");
    }
}

//! Who is calling: the `Authorization: Bearer <key>` of every `/v1` request, resolved to an API key, and the rules
//! binding a key to its organisation. Missing or unknown key → 401; known key without the scope, or asking for
//! another organisation → 403.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};

use super::{ApiError, ServiceState};
use crate::api_keys::{ApiKey, Scope};

/// The authenticated caller of a `/v1` route.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<ApiKey>);

fn unauthorized(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required", detail)
}

/// 403 naming what the key lacks.
pub(crate) fn forbidden(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed for this key", detail)
}

impl FromRequestParts<Arc<ServiceState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ServiceState>) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("Authorization: missing; send `Authorization: Bearer <api key>`"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("Authorization: expected `Bearer <api key>`"))?;
        match state.keys.authenticate(token).await? {
            Some(key) => Ok(Caller(key)),
            None => Err(unauthorized("Authorization: unknown or revoked API key")),
        }
    }
}

impl Caller {
    /// The key.
    pub fn key(&self) -> &ApiKey {
        &self.0
    }

    /// Refuses unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.0.has(scope) {
            Ok(())
        } else {
            let have: Vec<&str> = self.0.scopes.iter().map(|s| s.as_str()).collect();
            Err(forbidden(format!("this key needs scope `{scope}` (it has: {})", have.join(", "))))
        }
    }

    /// The organisation a read is confined to: the key's own (an admin key: what was asked, `None` for all).
    /// Asking for another organisation with a non-admin key is refused, naming the parameter.
    pub fn read_org(&self, param: &str, requested: Option<&str>) -> Result<Option<String>, ApiError> {
        if self.0.is_admin() {
            return Ok(requested.map(str::to_string));
        }
        match requested {
            Some(o) if o != self.0.organization_id => Err(forbidden(format!(
                "{param}: this key is bound to organisation `{}` and cannot read `{o}`",
                self.0.organization_id
            ))),
            _ => Ok(Some(self.0.organization_id.clone())),
        }
    }

    /// Whether the key may see data of `org` (`None`: the shared log, admin only).
    pub fn may_see(&self, org: Option<&str>) -> bool {
        self.0.is_admin() || org == Some(self.0.organization_id.as_str())
    }

    /// The organisation a written event gets: its own `organization_id` when the key may write it (a missing one
    /// becomes the key's), else the reason it is refused, naming the field.
    pub fn write_org(&self, event_org: Option<&str>) -> Result<Option<String>, String> {
        match event_org {
            None if self.0.is_admin() => Ok(None),
            None => Ok(Some(self.0.organization_id.clone())),
            Some(o) if self.0.is_admin() || o == self.0.organization_id => Ok(Some(o.to_string())),
            Some(o) => Err(format!(
                "organization_id: this key is bound to organisation `{}` and cannot write for `{o}`",
                self.0.organization_id
            )),
        }
    }
}

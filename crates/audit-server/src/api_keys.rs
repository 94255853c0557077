//! Tenant API keys of the HTTP service: creation (the key is shown once), listing, revocation, and the lookup every
//! `/v1` request makes. Keys are stored only as SHA-256 hashes (a 32-byte random key needs no slow hash: there is
//! nothing to brute-force), each bound to one organisation with scopes. Lookups are cached for at most
//! [`MAX_CACHE_TTL`], so a revocation is in force on every instance within that time. All the SQL of keys is here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit_core::{AuditError, AuditResult};
use audit_pg::{PgPool, checkout, pg_error};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

/// Prefix of every key, so that a leaked key is recognisable (secret scanners, logs).
pub const KEY_PREFIX: &str = "adb_";

/// The longest a cached lookup is trusted: the bound on how late a revocation takes effect.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(1);

/// Entries the lookup cache holds before it is emptied (bounds memory under a flood of unknown keys).
const CACHE_CAPACITY: usize = 10_000;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Write events (`POST /v1/events`, `POST /v1/events:batch`).
    Ingest,
    /// Read events, proofs and checkpoints.
    Query,
    /// Run verification (`POST /v1/verify`).
    Verify,
    /// Everything, for every organisation.
    Admin,
}

impl Scope {
    /// The stored and printed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Query => "query",
            Scope::Verify => "verify",
            Scope::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ingest" => Ok(Scope::Ingest),
            "query" => Ok(Scope::Query),
            "verify" => Ok(Scope::Verify),
            "admin" => Ok(Scope::Admin),
            _ => Err(format!("`{s}` is not a scope (ingest, query, verify, admin)")),
        }
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    /// The key's id (what `revoke` takes; recorded as the principal of audited reads).
    pub id: Uuid,
    /// The organisation it is bound to.
    pub organization_id: String,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked (`None`: in force).
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Whether the key has `scope` (admin has every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Whether the key may act for organisations other than its own.
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }
}

/// A key just created: the record and the secret, which is never stored nor shown again.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The stored record.
    pub key: ApiKey,
    /// The bearer token (`adb_…`).
    pub secret: String,
}

type CacheEntry = (Instant, Option<Arc<ApiKey>>);

/// The keys in PostgreSQL, with a short-lived lookup cache.
pub struct ApiKeyStore {
    pool: PgPool,
    acquire_timeout: Duration,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], CacheEntry>>,
}

impl std::fmt::Debug for ApiKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyStore").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// SHA-256 of a presented key.
fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

const COLUMNS: &str = "id, organization_id, name, scopes, created_at, revoked_at, key_hash";

fn from_row(r: &tokio_postgres::Row) -> AuditResult<ApiKey> {
    let scopes: Vec<String> = r.get(3);
    Ok(ApiKey {
        id: r.get(0),
        organization_id: r.get(1),
        name: r.get(2),
        scopes: scopes
            .iter()
            .map(|s| s.parse::<Scope>().map_err(|e| AuditError::integrity(format!("stored api key: {e}"))))
            .collect::<AuditResult<_>>()?,
        created_at: r.get(4),
        revoked_at: r.get(5),
    })
}

impl ApiKeyStore {
    /// A store over `pool`; lookups are cached for `ttl` (at most [`MAX_CACHE_TTL`]).
    pub fn new(pool: PgPool, acquire_timeout: Duration, ttl: Duration) -> Self {
        Self { pool, acquire_timeout, ttl: ttl.min(MAX_CACHE_TTL), cache: Mutex::new(HashMap::new()) }
    }

    async fn rows(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> AuditResult<Vec<tokio_postgres::Row>> {
        let conn = checkout(&self.pool, self.acquire_timeout).await?;
        conn.query(sql, params).await.map_err(|e| pg_error(e, what))
    }

    /// Creates a key for `org` with `scopes`; the secret is returned once.
    pub async fn create(&self, org: &str, scopes: &[Scope], name: &str) -> AuditResult<NewKey> {
        if org.trim().is_empty() {
            return Err(AuditError::invalid("--org: must not be empty"));
        }
        if scopes.is_empty() {
            return Err(AuditError::invalid("--scopes: give at least one of ingest, query, verify, admin"));
        }
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret = format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
        let id = Uuid::now_v7();
        let names: Vec<String> = scopes.iter().map(|s| s.as_str().to_string()).collect();
        let hash = hash_key(&secret).to_vec();
        let rows = self
            .rows(
                "creating an api key",
                &format!(
                    "INSERT INTO audit_api_keys (id, organization_id, name, scopes, key_hash) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
                ),
                &[&id, &org, &name, &names, &hash],
            )
            .await?;
        let row = rows.first().ok_or_else(|| AuditError::permanent("creating an api key returned no row"))?;
        Ok(NewKey { key: from_row(row)?, secret })
    }

    /// Every key (revoked ones too), oldest first; `org` narrows to one organisation.
    pub async fn list(&self, org: Option<&str>) -> AuditResult<Vec<ApiKey>> {
        let rows = self
            .rows(
                "listing api keys",
                &format!(
                    "SELECT {COLUMNS} FROM audit_api_keys WHERE $1::text IS NULL OR organization_id = $1 \
                     ORDER BY created_at, id"
                ),
                &[&org],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Revokes a key (idempotent: a revoked key keeps its first revocation time). `NotFound` for an unknown id.
    pub async fn revoke(&self, id: Uuid) -> AuditResult<ApiKey> {
        let rows = self
            .rows(
                "revoking an api key",
                &format!(
                    "UPDATE audit_api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 \
                     RETURNING {COLUMNS}"
                ),
                &[&id],
            )
            .await?;
        let row = rows.first().ok_or_else(|| AuditError::not_found(format!("id: no api key has id {id}")))?;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        from_row(row)
    }

    /// The key in force for a presented secret (`None`: unknown or revoked). Cached for the TTL; the stored hash is
    /// compared in constant time.
    pub async fn authenticate(&self, secret: &str) -> AuditResult<Option<Arc<ApiKey>>> {
        let hash = hash_key(secret);
        if let Some((at, hit)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&hash)
            && at.elapsed() < self.ttl
        {
            return Ok(hit.clone());
        }
        let rows = self
            .rows(
                "looking up an api key",
                &format!("SELECT {COLUMNS} FROM audit_api_keys WHERE key_hash = $1"),
                &[&hash.to_vec()],
            )
            .await?;
        let mut found = None;
        for r in &rows {
            let stored: Vec<u8> = r.get(6);
            let revoked: Option<DateTime<Utc>> = r.get(5);
            if bool::from(stored.as_slice().ct_eq(&hash)) && revoked.is_none() {
                found = Some(Arc::new(from_row(r)?));
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(hash, (Instant::now(), found.clone()));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_admin_implies_every_scope() {
        assert_eq!("Query".parse::<Scope>(), Ok(Scope::Query));
        assert!("read".parse::<Scope>().unwrap_err().contains("read"));
        let k = ApiKey {
            id: Uuid::nil(),
            organization_id: "o".into(),
            name: "n".into(),
            scopes: vec![Scope::Ingest],
            created_at: Utc::now(),
            revoked_at: None,
        };
        assert!(k.has(Scope::Ingest) && !k.has(Scope::Query) && !k.is_admin());
        let admin = ApiKey { scopes: vec![Scope::Admin], ..k };
        assert!(admin.has(Scope::Verify) && admin.is_admin());
    }
}

//! Running diesel-built queries on the product's tokio-postgres connections.
//!
//! The read path builds its SQL with diesel's query DSL (type-checked against [`crate::schema`]); this module
//! turns such a query into SQL text plus binary parameters and runs it as a prepared statement on a [`PgConn`].
//! Executing it here rather than through diesel-async keeps the server's SQLSTATE on every read error
//! (diesel-async reports most codes as `Unknown` without them) and lets reads share the pool, deadlines and TLS of
//! every other statement.

use audit_core::{AuditError, AuditResult};
use diesel::pg::{Pg, PgMetadataLookup, PgQueryBuilder, PgTypeMetadata};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{QueryBuilder, QueryFragment};
use postgres_types::{IsNull, ToSql, Type};

use crate::error::pg_error;
use crate::pool::PgConn;

/// A query as SQL text and already encoded parameters.
#[derive(Debug, Clone)]
pub struct BuiltQuery {
    /// The SQL, with `$n` placeholders.
    pub sql: String,
    types: Vec<Type>,
    binds: Vec<EncodedBind>,
}

/// One parameter as diesel encoded it (PostgreSQL binary format).
#[derive(Debug, Clone)]
struct EncodedBind(Option<Vec<u8>>);

impl ToSql for EncodedBind {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Some(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        // The statement was prepared with the types diesel declared for these very bytes.
        true
    }

    postgres_types::to_sql_checked!();
}

/// Type lookups for user-defined types; the read path binds only built-in types, so a lookup is a bug.
struct BuiltinTypesOnly;

impl PgMetadataLookup for BuiltinTypesOnly {
    fn lookup_type(&mut self, type_name: &str, schema: Option<&str>) -> PgTypeMetadata {
        let key = diesel::pg::PgMetadataCacheKey::new(
            schema.map(|s| std::borrow::Cow::Owned(s.to_string())),
            std::borrow::Cow::Owned(type_name.to_string()),
        );
        PgTypeMetadata::from_result(Err(diesel::pg::FailedToLookupTypeError::new(key)))
    }
}

/// Turns a diesel query into SQL and encoded parameters.
pub fn build_query<Q: QueryFragment<Pg>>(query: &Q) -> AuditResult<BuiltQuery> {
    let mut builder = PgQueryBuilder::default();
    query.to_sql(&mut builder, &Pg).map_err(|e| AuditError::permanent(format!("building SQL: {e}")))?;
    let sql = builder.finish();
    let mut collector = RawBytesBindCollector::<Pg>::new();
    query
        .collect_binds(&mut collector, &mut BuiltinTypesOnly, &Pg)
        .map_err(|e| AuditError::invalid(format!("encoding query parameters: {e}")))?;
    let types = collector
        .metadata
        .iter()
        .map(|m| {
            let oid = m.oid().map_err(|e| AuditError::permanent(format!("parameter type: {e}")))?;
            Type::from_oid(oid)
                .ok_or_else(|| AuditError::permanent(format!("parameter type oid {oid} is not built in")))
        })
        .collect::<AuditResult<Vec<_>>>()?;
    let binds = collector.binds.into_iter().map(EncodedBind).collect();
    Ok(BuiltQuery { sql, types, binds })
}

impl BuiltQuery {
    /// The parameter types the statement is prepared with (as diesel declared them).
    pub fn types(&self) -> &[Type] {
        &self.types
    }

    /// The encoded parameters, in placeholder order, for executing the statement prepared with [`Self::types`].
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect()
    }

    /// Runs the query as a (cached) prepared statement and returns its rows. `what` names the operation in errors.
    pub async fn fetch(&self, conn: &mut PgConn, what: &str) -> AuditResult<Vec<tokio_postgres::Row>> {
        let stmt = conn.prepare_cached(&self.sql, &self.types).await.map_err(|e| e.context(what))?;
        conn.query(&stmt, &self.params()).await.map_err(|e| pg_error(e, what))
    }

    /// Runs the query and returns its single row, or `None`.
    pub async fn fetch_optional(&self, conn: &mut PgConn, what: &str) -> AuditResult<Option<tokio_postgres::Row>> {
        let mut rows = self.fetch(conn, what).await?;
        Ok(if rows.is_empty() { None } else { Some(rows.swap_remove(0)) })
    }
}

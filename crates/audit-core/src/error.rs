//! The error every audit-db crate hands to another.
//!
//! An [`AuditError`] carries an [`ErrorKind`] (what happened, precisely enough to act on), its [`ErrorClass`] (what a
//! retry policy, a circuit breaker or an exit code may do about it), the PostgreSQL SQLSTATE when the server produced
//! it, the dependency it came from, a message that already names what was wrong, and the underlying error as its
//! `source()`. Every decision in the workspace is made on the kind, the class or the SQLSTATE — never on message text.

use std::error::Error as StdError;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// What a caller may do about an error. The class, not the message, drives retries and breakers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// A retry of the same operation may succeed (serialization failure, deadlock, lock timeout).
    Transient,
    /// The dependency is unhealthy (connection lost, server shutting down, pool exhausted, timeout, breaker open).
    Unavailable,
    /// The caller's input is wrong; retrying cannot help and no breaker may count it.
    InvalidInput,
    /// Stored data or evidence does not match what it must (tamper evidence, our own invariants).
    Integrity,
    /// Anything else that will not get better by itself (schema missing, permission denied, bug).
    Permanent,
}

impl ErrorClass {
    /// Whether a bounded retry is worth it.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::Unavailable)
    }

    /// Whether a circuit breaker should count this failure against the dependency's health.
    pub fn trips_breaker(self) -> bool {
        matches!(self, ErrorClass::Unavailable)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::InvalidInput => "invalid input",
            ErrorClass::Integrity => "integrity",
            ErrorClass::Permanent => "permanent",
        })
    }
}

/// What happened. Several kinds share a class; the kind is what code that reacts to one situation matches on
/// (the write path on [`ErrorKind::NoPartition`], the retry loop on [`ErrorKind::CircuitOpen`], the HTTP service on
/// [`ErrorKind::Overloaded`] and [`ErrorKind::NotFound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A circuit breaker refused the call without calling the dependency. Never retried by a retry loop: waiting for
    /// the dependency is the breaker's job.
    CircuitOpen,
    /// PostgreSQL found no partition of `audit_log` for a row (another process dropped one we believed in).
    NoPartition,
    /// More work is waiting than the service accepts (the insert queue is full); shed, retry later.
    Overloaded,
    /// The dependency did not answer, refused, or answered that it cannot serve now.
    Unavailable,
    /// A retry of the same operation may succeed.
    Transient,
    /// The caller's input is wrong; the message names the field or value.
    InvalidInput,
    /// What the caller asked for does not exist.
    NotFound,
    /// Stored data or evidence does not match what it must.
    Integrity,
    /// Anything else that will not get better by itself.
    Permanent,
}

impl ErrorKind {
    /// The class that retry policies, breakers and exit codes act on.
    pub fn class(self) -> ErrorClass {
        match self {
            ErrorKind::CircuitOpen | ErrorKind::Overloaded | ErrorKind::Unavailable => ErrorClass::Unavailable,
            ErrorKind::Transient => ErrorClass::Transient,
            ErrorKind::InvalidInput | ErrorKind::NotFound => ErrorClass::InvalidInput,
            ErrorKind::Integrity => ErrorClass::Integrity,
            // A missing partition is repaired by its caller (create it, then write again), not by a blind retry.
            ErrorKind::NoPartition | ErrorKind::Permanent => ErrorClass::Permanent,
        }
    }

    /// The kind that stands for a whole class when nothing more precise is known.
    pub fn of_class(class: ErrorClass) -> Self {
        match class {
            ErrorClass::Transient => ErrorKind::Transient,
            ErrorClass::Unavailable => ErrorKind::Unavailable,
            ErrorClass::InvalidInput => ErrorKind::InvalidInput,
            ErrorClass::Integrity => ErrorKind::Integrity,
            ErrorClass::Permanent => ErrorKind::Permanent,
        }
    }

    /// Stable snake_case name (`circuit_open`, `no_partition`, …), used in problem types and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::NoPartition => "no_partition",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Transient => "transient",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Permanent => "permanent",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A PostgreSQL SQLSTATE (five characters, see PostgreSQL's Appendix A), kept as the server sent it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// `unique_violation`.
    pub const UNIQUE_VIOLATION: SqlState = SqlState(*b"23505");
    /// `check_violation` (also "no partition of relation … found for row").
    pub const CHECK_VIOLATION: SqlState = SqlState(*b"23514");
    /// `lock_not_available` (a `lock_timeout` fired).
    pub const LOCK_NOT_AVAILABLE: SqlState = SqlState(*b"55P03");
    /// `duplicate_table`.
    pub const DUPLICATE_TABLE: SqlState = SqlState(*b"42P07");
    /// `duplicate_object` (e.g. a trigger or index that exists already).
    pub const DUPLICATE_OBJECT: SqlState = SqlState(*b"42710");
    /// `invalid_object_definition` (a new partition would overlap an existing one).
    pub const INVALID_OBJECT_DEFINITION: SqlState = SqlState(*b"42P17");
    /// `undefined_table`.
    pub const UNDEFINED_TABLE: SqlState = SqlState(*b"42P01");
    /// `insufficient_privilege` (also our append-only triggers' refusal).
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState(*b"42501");
    /// `query_canceled` (statement_timeout or a cancel request).
    pub const QUERY_CANCELED: SqlState = SqlState(*b"57014");
    /// `read_only_sql_transaction` (we reached a standby).
    pub const READ_ONLY_SQL_TRANSACTION: SqlState = SqlState(*b"25006");
    /// `object_not_in_prerequisite_state` (e.g. a replica asked for something only a primary does).
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState(*b"55000");

    /// The five characters.
    pub fn as_str(&self) -> &str {
        // Construction only accepts ASCII alphanumerics.
        std::str::from_utf8(&self.0).unwrap_or("?????")
    }

    /// The two-character class (`08` connection exception, `23` integrity constraint violation, …).
    pub fn class_code(&self) -> &str {
        &self.as_str()[..2]
    }

    /// What a caller may do about an error with this SQLSTATE.
    pub fn kind(&self) -> ErrorKind {
        match self.as_str() {
            // serialization_failure, deadlock_detected
            "40001" | "40P01" => ErrorKind::Transient,
            // admin_shutdown, crash_shutdown, cannot_connect_now
            "57P01" | "57P02" | "57P03" => ErrorKind::Unavailable,
            // query_canceled (statement_timeout or cancel request): the dependency did not answer in time
            "57014" => ErrorKind::Unavailable,
            // lock_not_available (lock_timeout): someone else holds the lock; try again later
            "55P03" => ErrorKind::Transient,
            // read_only_sql_transaction: we reached a standby; the primary is elsewhere
            "25006" => ErrorKind::Unavailable,
            _ => match self.class_code() {
                "08" | "53" | "58" => ErrorKind::Unavailable, // connection, resources, system I/O
                "22" | "23" => ErrorKind::InvalidInput,
                "40" => ErrorKind::Transient,
                _ => ErrorKind::Permanent, // 42 syntax/access and everything else
            },
        }
    }
}

impl FromStr for SqlState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; 5] = s.as_bytes().try_into().map_err(|_| format!("SQLSTATE `{s}` is not 5 characters"))?;
        if bytes.iter().all(u8::is_ascii_alphanumeric) {
            Ok(SqlState(bytes))
        } else {
            Err(format!("SQLSTATE `{s}` has characters other than letters and digits"))
        }
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SqlState({})", self.as_str())
    }
}

impl serde::Serialize for SqlState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Maps a PostgreSQL SQLSTATE to a class (see PostgreSQL's Appendix A); unknown text is permanent.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    code.parse::<SqlState>().map(|s| s.kind().class()).unwrap_or(ErrorClass::Permanent)
}

/// The underlying error, shared so that one failure can be handed to every caller of a group commit.
pub type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// The one error type crates hand each other: a kind to act on, the SQLSTATE, the failing dependency, a message
/// naming what was wrong, and the underlying error. Cheap to clone (group commit answers many callers with one).
#[derive(Clone)]
pub struct AuditError {
    kind: ErrorKind,
    sqlstate: Option<SqlState>,
    component: Option<String>,
    message: String,
    source: Option<Source>,
}

impl AuditError {
    /// An error of `kind` with a message that names what was wrong.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, sqlstate: None, component: None, message: message.into(), source: None }
    }
    /// An error of the most general kind of `class`.
    pub fn of_class(class: ErrorClass, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::of_class(class), message)
    }
    /// Invalid caller input.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    /// What the caller asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// Dependency unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    /// A retry may succeed.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    /// Permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }
    /// Integrity failure.
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, message)
    }
    /// A breaker refused the call.
    pub fn circuit_open(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::CircuitOpen, message)
    }
    /// Too much work is waiting; the caller should back off.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Overloaded, message)
    }
    /// An error PostgreSQL reported with a SQLSTATE; the kind follows from the code.
    pub fn from_sqlstate(code: SqlState, message: impl Into<String>) -> Self {
        Self { sqlstate: Some(code), ..Self::new(code.kind(), message) }
    }

    /// Names the dependency the error came from.
    pub fn with_component(mut self, component: impl Into<String>) -> Self {
        self.component = Some(component.into());
        self
    }
    /// Names the dependency unless one is named already.
    pub fn or_component(self, component: &str) -> Self {
        if self.component.is_some() { self } else { self.with_component(component) }
    }
    /// Keeps the underlying error (available through `source()`).
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }
    /// Keeps an already shared underlying error.
    pub fn with_shared_source(mut self, source: Source) -> Self {
        self.source = Some(source);
        self
    }
    /// Replaces the kind (e.g. a lookup that found nothing is `NotFound` for this caller).
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
    /// Puts `context: ` in front of the message, keeping kind, SQLSTATE, component and source.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// What happened.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// What a caller may do about it.
    pub fn class(&self) -> ErrorClass {
        self.kind.class()
    }
    /// The SQLSTATE, when PostgreSQL produced the error.
    pub fn sqlstate(&self) -> Option<SqlState> {
        self.sqlstate
    }
    /// The failing dependency (`primary`, `replica:r1`, `redis`, …), when known.
    pub fn component(&self) -> Option<&str> {
        self.component.as_deref()
    }
    /// The human-readable message (already naming what was wrong).
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Whether a circuit breaker returned this without calling the dependency.
    pub fn is_circuit_open(&self) -> bool {
        self.kind == ErrorKind::CircuitOpen
    }
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AuditError");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(s) = &self.sqlstate {
            d.field("sqlstate", s);
        }
        if let Some(c) = &self.component {
            d.field("component", c);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl StdError for AuditError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

/// Result alias used across the workspace.
pub type AuditResult<T> = Result<T, AuditError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_the_documented_classes() {
        assert_eq!(classify_sqlstate("08006"), ErrorClass::Unavailable);
        assert_eq!(classify_sqlstate("53300"), ErrorClass::Unavailable);
        assert_eq!(classify_sqlstate("57P01"), ErrorClass::Unavailable);
        assert_eq!(classify_sqlstate("57P03"), ErrorClass::Unavailable);
        assert_eq!(classify_sqlstate("40001"), ErrorClass::Transient);
        assert_eq!(classify_sqlstate("40P01"), ErrorClass::Transient);
        assert_eq!(classify_sqlstate("23505"), ErrorClass::InvalidInput);
        assert_eq!(classify_sqlstate("22P02"), ErrorClass::InvalidInput);
        assert_eq!(classify_sqlstate("42P01"), ErrorClass::Permanent);
        assert_eq!(classify_sqlstate("nonsense"), ErrorClass::Permanent);
        for code in ["22001", "23505", "42601"] {
            assert!(!classify_sqlstate(code).trips_breaker(), "{code} must never trip a breaker");
        }
    }

    #[test]
    fn the_kind_not_the_message_says_what_happened() {
        let open = AuditError::circuit_open("anything at all");
        assert!(open.is_circuit_open());
        assert_eq!(open.class(), ErrorClass::Unavailable);
        let look_alike = AuditError::unavailable("circuit open: breaker `p` is open");
        assert!(!look_alike.is_circuit_open(), "a message that looks like a breaker's is not one");
        let e = AuditError::from_sqlstate(SqlState::UNIQUE_VIOLATION, "x");
        assert_eq!((e.kind(), e.sqlstate()), (ErrorKind::InvalidInput, Some(SqlState::UNIQUE_VIOLATION)));
    }

    #[test]
    fn the_source_chain_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = AuditError::unavailable("connecting to PostgreSQL at db:5432").with_source(io).context("health check");
        assert_eq!(e.to_string(), "health check: connecting to PostgreSQL at db:5432");
        let source = StdError::source(&e).expect("source kept");
        assert_eq!(
            source.downcast_ref::<std::io::Error>().map(|i| i.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
    }
}

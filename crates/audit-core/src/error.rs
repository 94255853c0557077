//! Error classes shared by every crate.
//!
//! Every failure that crosses a crate boundary is an [`AuditError`] with an [`ErrorClass`], so that retry
//! policies, circuit breakers and the CLI's exit codes decide from the class alone and never from message text.

use std::fmt;

/// What a caller may do about an error. The class, not the message, drives retries and breakers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// A retry of the same operation may succeed (serialization failure, deadlock).
    Transient,
    /// The dependency is unhealthy (connection lost, server shutting down, pool exhausted, timeout).
    Unavailable,
    /// The caller's input is wrong; retrying cannot help and no breaker may count it.
    InvalidInput,
    /// Stored data or evidence does not match what it must (tamper evidence, constraint on our own invariants).
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

/// Maps a PostgreSQL SQLSTATE to a class (see PostgreSQL's Appendix A).
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    match code {
        // serialization_failure, deadlock_detected
        "40001" | "40P01" => ErrorClass::Transient,
        // admin_shutdown, crash_shutdown, cannot_connect_now
        "57P01" | "57P02" | "57P03" => ErrorClass::Unavailable,
        // query_canceled (statement_timeout or cancel request): the dependency did not answer in time
        "57014" => ErrorClass::Unavailable,
        // lock_not_available (lock_timeout): someone else holds the lock; try again later
        "55P03" => ErrorClass::Transient,
        // read_only_sql_transaction: we reached a standby; the primary is elsewhere
        "25006" => ErrorClass::Unavailable,
        _ => match &code[..code.len().min(2)] {
            "08" => ErrorClass::Unavailable, // connection exception
            "53" => ErrorClass::Unavailable, // insufficient resources
            "58" => ErrorClass::Unavailable, // system error (I/O)
            "22" | "23" => ErrorClass::InvalidInput,
            "42" => ErrorClass::Permanent, // syntax error or access rule violation
            "40" => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        },
    }
}

/// The one error type crates hand each other.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AuditError {
    /// Drives retry, breaker and exit-code decisions.
    pub class: ErrorClass,
    /// The SQLSTATE when PostgreSQL produced the error, kept for operators and for classification tests.
    pub sqlstate: Option<String>,
    /// Which dependency failed (`primary`, `replica-1`, `redis`, …), when known.
    pub component: Option<String>,
    /// Human-readable, already naming what was wrong.
    pub message: String,
}

impl AuditError {
    /// Builds an error of a class with a message.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self { class, sqlstate: None, component: None, message: message.into() }
    }
    /// Invalid caller input.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::InvalidInput, message)
    }
    /// Dependency unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Unavailable, message)
    }
    /// Permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }
    /// Integrity failure.
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Integrity, message)
    }
    /// An error that PostgreSQL reported with a SQLSTATE; the class follows from the code.
    pub fn from_sqlstate(code: &str, message: impl Into<String>) -> Self {
        Self {
            class: classify_sqlstate(code),
            sqlstate: Some(code.to_string()),
            component: None,
            message: message.into(),
        }
    }
    /// Names the dependency the error came from.
    pub fn with_component(mut self, component: impl Into<String>) -> Self {
        self.component = Some(component.into());
        self
    }
    /// Whether a circuit breaker returned this without calling the dependency.
    pub fn is_circuit_open(&self) -> bool {
        self.message.starts_with(CIRCUIT_OPEN_PREFIX)
    }
}

/// Message prefix of the error a breaker returns when it refuses a call, so callers can tell it apart.
pub const CIRCUIT_OPEN_PREFIX: &str = "circuit open";

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
        for code in ["22001", "23505", "42601"] {
            assert!(!classify_sqlstate(code).trips_breaker(), "{code} must never trip a breaker");
        }
    }
}

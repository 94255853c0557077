//! TLS to PostgreSQL and the one connect path every connection of the product takes.
//!
//! Settings follow libpq so that a URL that works with `psql` works here: `sslmode` (`disable`, `allow`, `prefer`,
//! `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file of CA certificates, or `system` for the
//! operating system's trust store), in a `postgres://` URL or a `key=value` string. tokio-postgres parses everything
//! else. The product's `AUDIT_DB_SSL=true` (the seed's `ssl: true`) asks for TLS when the URL names no `sslmode`.
//!
//! TLS is rustls with the `ring` provider (no OpenSSL, no C/cmake build). What is checked:
//!
//! | sslmode | encrypted | chain checked against sslrootcert | host name checked |
//! |---|---|---|---|
//! | `disable` | no | – | – |
//! | `allow` | only if the server refuses a plain connection | if sslrootcert is given | no |
//! | `prefer` | if the server offers TLS | if sslrootcert is given | no |
//! | `require` | yes | if sslrootcert is given (libpq: `require` + root cert = `verify-ca`) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes (DNS or IP subjectAltName; the CN only when the certificate has no such SAN) |
//!
//! As with OpenSSL (libpq), a server certificate listed itself in `sslrootcert` is trusted (PostgreSQL's documented
//! self-signed setup). The handshake signature is always checked, so the server must hold the certificate's key.
//!
//! Build a [`PgConnector`] once (it loads the CA file and builds the rustls configuration) and call
//! [`PgConnector::connect`] for every connection, e.g. from a bb8 manager; [`connect`] is the one-shot form.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use audit_core::{AuditError, ErrorClass, ErrorKind, SqlState, classify_sqlstate};
use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{
    CryptoProvider, verify_tls12_signature, verify_tls13_signature, verify_tls13_signature_with_raw_key,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::Host;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The `sslmode` of libpq: how much TLS a connection insists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS only if the server refuses the plain connection (e.g. a `hostssl`-only pg_hba.conf).
    Allow,
    /// TLS if the server offers it, plain otherwise.
    Prefer,
    /// TLS or nothing; the certificate is not verified unless `sslrootcert` is given (then as `verify-ca`).
    Require,
    /// TLS, and the server certificate must chain to a CA in `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// All modes, weakest first.
    pub const ALL: [SslMode; 6] =
        [SslMode::Disable, SslMode::Allow, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull];

    /// The libpq spelling (`verify-full`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(self, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConnectError;

    fn from_str(s: &str) -> Result<Self, ConnectError> {
        SslMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ConnectError::InvalidSslMode { value: s.to_string() })
    }
}

/// Where the CA certificates that vouch for the server come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RootCert {
    /// A PEM file holding one or more CA certificates.
    File(PathBuf),
    /// The operating system's trust store (libpq's `sslrootcert=system`); only with `verify-full`, as in libpq,
    /// because any public CA could vouch for any name.
    System,
}

impl fmt::Display for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCert::File(p) => write!(f, "sslrootcert {}", p.display()),
            RootCert::System => f.write_str("the operating system's trust store (sslrootcert=system)"),
        }
    }
}

/// What is checked about the server's certificate, derived from [`TlsSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing: the session is encrypted but the server is not authenticated (libpq `require` without a root cert).
    None,
    /// The chain must end at a CA in `sslrootcert`; any host name is accepted.
    Chain,
    /// The chain and the host name.
    ChainAndHostName,
}

/// The TLS part of a connection string, validated: which `sslmode` applies and which CAs to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    mode: SslMode,
    root_cert: Option<RootCert>,
}

impl TlsSettings {
    /// No TLS at all.
    pub const DISABLED: TlsSettings = TlsSettings { mode: SslMode::Disable, root_cert: None };

    /// Validated settings from an explicit mode and root certificate (the rules of [`TlsSettings::from_url`] with
    /// `AUDIT_DB_SSL` off).
    pub fn new(mode: SslMode, root_cert: Option<RootCert>) -> Result<Self, ConnectError> {
        resolve(Some(mode), root_cert, false)
    }

    /// Reads `sslmode` and `sslrootcert` from a `postgres://` URL or a `key=value` string and combines them with the
    /// product's `AUDIT_DB_SSL` flag (`ssl_flag`):
    ///
    /// - no `sslmode`: `verify-full` if `sslrootcert=system`; else `require` if `ssl_flag` or an `sslrootcert` file
    ///   is given (with the file, `require` verifies the chain as libpq does, i.e. behaves as `verify-ca`); else
    ///   `disable` (the product's default `ssl: false`; libpq's default would be `prefer`);
    /// - `ssl_flag` raises an explicit `allow`/`prefer` to `require` and never lowers a mode; an explicit
    ///   `sslmode=disable` with `ssl_flag` is [`ConnectError::ConflictingSettings`];
    /// - `verify-ca`/`verify-full` need `sslrootcert`; `sslrootcert=system` needs `verify-full`.
    ///
    /// The rest of the string must parse as a tokio-postgres configuration.
    pub fn from_url(url: &str, ssl_flag: bool) -> Result<Self, ConnectError> {
        parse_url(url, ssl_flag).map(|(_, tls)| tls)
    }

    /// The effective `sslmode`.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The CAs to trust, if any were given.
    pub fn root_cert(&self) -> Option<&RootCert> {
        self.root_cert.as_ref()
    }

    /// What is checked about the server certificate when TLS is used.
    pub fn verification(&self) -> Verification {
        match (self.mode, &self.root_cert) {
            (SslMode::Disable, _) => Verification::None,
            (SslMode::VerifyFull, _) => Verification::ChainAndHostName,
            (SslMode::VerifyCa, _) => Verification::Chain,
            (_, Some(_)) => Verification::Chain,
            (_, None) => Verification::None,
        }
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings::DISABLED
    }
}

fn resolve(mode: Option<SslMode>, root_cert: Option<RootCert>, ssl_flag: bool) -> Result<TlsSettings, ConnectError> {
    let mode = match mode {
        Some(SslMode::Disable) if ssl_flag => {
            return Err(ConnectError::ConflictingSettings { sslmode: SslMode::Disable });
        }
        Some(SslMode::Allow | SslMode::Prefer) if ssl_flag => SslMode::Require,
        Some(mode) => mode,
        None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
        None if ssl_flag || root_cert.is_some() => SslMode::Require,
        None => SslMode::Disable,
    };
    if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull && mode != SslMode::Disable {
        return Err(ConnectError::SystemRootsNeedVerifyFull { mode });
    }
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
        return Err(ConnectError::RootCertRequired { mode });
    }
    Ok(TlsSettings { mode, root_cert })
}

/// libpq TLS parameters we do not implement: refused by name rather than half-honoured.
const UNSUPPORTED_PARAMETERS: [(&str, &str); 10] = [
    ("sslcert", "client certificates are not supported; authenticate with a password (SCRAM) over TLS"),
    ("sslkey", "client certificates are not supported; authenticate with a password (SCRAM) over TLS"),
    ("sslpassword", "client certificates are not supported"),
    ("sslcertmode", "client certificates are not supported"),
    ("sslcrl", "certificate revocation lists are not supported"),
    ("sslcrldir", "certificate revocation lists are not supported"),
    ("sslsni", "SNI is always sent for host names"),
    ("ssl_min_protocol_version", "TLS 1.2 and 1.3 are always allowed and older versions never"),
    ("ssl_max_protocol_version", "TLS 1.2 and 1.3 are always allowed and older versions never"),
    ("requirepeer", "peer checks on Unix-domain sockets are not supported"),
];

/// The TLS parameters found in a connection string, and the string without them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Extracted {
    rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

impl Extracted {
    /// Records a parameter we handle; returns false for parameters tokio-postgres should see.
    fn take(&mut self, key: &str, value: impl FnOnce() -> Result<String, ConnectError>) -> Result<bool, ConnectError> {
        match key {
            "sslmode" => self.sslmode = Some(value()?),
            "sslrootcert" => self.sslrootcert = Some(value()?),
            // Ignored by libpq since PostgreSQL 14 as well (TLS compression is never used).
            "sslcompression" => {}
            _ => {
                if let Some((name, hint)) = UNSUPPORTED_PARAMETERS.iter().find(|(name, _)| *name == key) {
                    return Err(ConnectError::UnsupportedParameter { name: (*name).to_string(), hint });
                }
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Splits the TLS parameters off a URL or `key=value` string, keeping everything else byte for byte.
fn extract_tls_params(conninfo: &str) -> Result<Extracted, ConnectError> {
    for prefix in ["postgres://", "postgresql://"] {
        if let Some(body) = conninfo.strip_prefix(prefix) {
            return extract_from_url(prefix, body);
        }
    }
    extract_from_keywords(conninfo)
}

fn extract_from_url(prefix: &str, body: &str) -> Result<Extracted, ConnectError> {
    // Like tokio-postgres (and libpq): credentials end at the first '@', the query starts at the next '?'.
    let after_credentials = body.find('@').map_or(0, |i| i + 1);
    let Some(q) = body[after_credentials..].find('?').map(|i| i + after_credentials) else {
        return Ok(Extracted { rest: format!("{prefix}{body}"), ..Extracted::default() });
    };
    let mut out = Extracted::default();
    let mut kept = Vec::new();
    for pair in body[q + 1..].split('&') {
        let handled = match pair.split_once('=') {
            Some((key, value)) => match percent_decode_str(key).decode_utf8() {
                Ok(key) => out.take(&key, || {
                    percent_decode_str(value).decode_utf8().map(|v| v.into_owned()).map_err(|_| {
                        ConnectError::InvalidConnectionString {
                            reason: format!("the value of {key} is not valid percent-encoded UTF-8"),
                        }
                    })
                })?,
                Err(_) => false,
            },
            None => false,
        };
        if !handled {
            kept.push(pair);
        }
    }
    out.rest = if kept.is_empty() {
        format!("{prefix}{}", &body[..q])
    } else {
        format!("{prefix}{}?{}", &body[..q], kept.join("&"))
    };
    Ok(out)
}

/// `key = value` pairs as libpq and tokio-postgres read them: values bare or single-quoted, `\` escapes.
fn extract_from_keywords(conninfo: &str) -> Result<Extracted, ConnectError> {
    let mut out = Extracted::default();
    let mut kept: Vec<&str> = Vec::new();
    let bytes = conninfo.as_bytes();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && (bytes[i] as char).is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !(bytes[i] as char).is_ascii_whitespace() {
            i += 1;
        }
        let key = &conninfo[start..i];
        i = skip_ws(i);
        if i >= bytes.len() || bytes[i] != b'=' {
            // Malformed: let tokio-postgres report it with its own position information.
            return Ok(Extracted { rest: conninfo.to_string(), ..Extracted::default() });
        }
        i = skip_ws(i + 1);
        let mut value = Vec::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Ok(Extracted { rest: conninfo.to_string(), ..Extracted::default() }),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1]);
                        i += 2;
                    }
                    Some(&b) => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
        } else {
            while i < bytes.len() && !(bytes[i] as char).is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i]);
                i += 1;
            }
        }
        let handled = out.take(key, || {
            String::from_utf8(value).map_err(|_| ConnectError::InvalidConnectionString {
                reason: format!("the value of {key} is not valid UTF-8"),
            })
        })?;
        if !handled {
            kept.push(&conninfo[start..i]);
        }
    }
    out.rest = kept.join(" ");
    Ok(out)
}

/// Splits a connection string into its tokio-postgres configuration and its validated TLS settings.
pub fn parse_url(url: &str, ssl_flag: bool) -> Result<(tokio_postgres::Config, TlsSettings), ConnectError> {
    let extracted = extract_tls_params(url)?;
    let mode = extracted.sslmode.as_deref().map(SslMode::from_str).transpose()?;
    let root_cert = match extracted.sslrootcert.as_deref() {
        None | Some("") => None,
        Some("system") => Some(RootCert::System),
        Some(path) => Some(RootCert::File(PathBuf::from(path))),
    };
    let tls = resolve(mode, root_cert, ssl_flag)?;
    let config: tokio_postgres::Config = extracted
        .rest
        .parse()
        .map_err(|e: tokio_postgres::Error| ConnectError::InvalidConnectionString { reason: error_chain(&e) })?;
    Ok((config, tls))
}

/// Connects the whole product to PostgreSQL: parsed settings plus a rustls configuration built once.
///
/// Cloning is cheap (the rustls configuration and its CA store are shared), so a bb8 manager keeps one and calls
/// [`PgConnector::connect`] per pooled connection.
#[derive(Clone)]
pub struct PgConnector {
    config: tokio_postgres::Config,
    tls: TlsSettings,
    rustls: MakeRustlsConnect,
    connect_timeout: Duration,
}

impl fmt::Debug for PgConnector {
    // Never prints the configuration: it holds the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnector")
            .field("target", &self.target())
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// The TLS stream type of connections made by [`PgConnector`] (also for plain ones, which never use it).
pub type PgTlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// A connection made by [`PgConnector::connect_unspawned`], to be driven by the caller (e.g. diesel-async).
pub type PgConnection = tokio_postgres::Connection<Socket, PgTlsStream>;

impl PgConnector {
    /// Parses `url` (see [`TlsSettings::from_url`] for `ssl_flag`), loads the CA certificates and builds the TLS
    /// configuration. `connect_timeout` bounds every [`PgConnector::connect`] from TCP connect to authenticated
    /// session.
    pub fn from_url(url: &str, ssl_flag: bool, connect_timeout: Duration) -> Result<Self, ConnectError> {
        let (config, tls) = parse_url(url, ssl_flag)?;
        Self::new(config, tls, connect_timeout)
    }

    /// A connector for an already built configuration. The configuration's own `sslmode` is replaced by the one
    /// `tls` implies.
    pub fn new(
        mut config: tokio_postgres::Config,
        tls: TlsSettings,
        connect_timeout: Duration,
    ) -> Result<Self, ConnectError> {
        check_hosts(&config, tls.mode)?;
        if config.get_ssl_negotiation() == tokio_postgres::config::SslNegotiation::Direct
            && matches!(tls.mode, SslMode::Allow | SslMode::Prefer)
        {
            return Err(ConnectError::InvalidConnectionString {
                reason: format!("sslnegotiation=direct needs sslmode=require or stronger, not {}", tls.mode),
            });
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(connect_timeout);
        }
        let rustls = MakeRustlsConnect::new(client_config(&tls)?);
        Ok(Self { config, tls, rustls, connect_timeout })
    }

    /// The tokio-postgres configuration (without the TLS keys), e.g. to read the database name.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The same TLS configuration (CA store and rustls configuration shared, not rebuilt) with another
    /// tokio-postgres configuration, e.g. the URL's with other session options.
    pub fn with_config(&self, mut config: tokio_postgres::Config) -> Result<Self, ConnectError> {
        check_hosts(&config, self.tls.mode)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        Ok(Self { config, ..self.clone() })
    }

    /// The same connector for another database of the same server (shares the TLS configuration).
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut c = self.clone();
        c.config.dbname(dbname);
        c
    }

    /// The validated TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// The bound on one connect.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// `PostgreSQL at host:port[,host:port]`, for messages (never includes credentials).
    pub fn target(&self) -> String {
        describe_target(&self.config)
    }

    /// Opens a session and drives it on a spawned task, whose handle ends when the connection closes.
    pub async fn connect(&self) -> Result<(Client, tokio::task::JoinHandle<()>), ConnectError> {
        let (client, connection) = self.connect_unspawned().await?;
        let handle = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %error_chain(&e), "database connection closed");
            }
        });
        Ok((client, handle))
    }

    /// Opens a session and returns the connection future undriven, for callers that drive it themselves, e.g.
    /// `diesel_async::AsyncPgConnection::try_from_client_and_connection(client, connection)`.
    pub async fn connect_unspawned(&self) -> Result<(Client, PgConnection), ConnectError> {
        check_hosts(&self.config, self.tls.mode)?;
        let attempt = async {
            match self.tls.mode {
                SslMode::Allow => match self.connect_once(tokio_postgres::config::SslMode::Disable).await {
                    // Plain first; TLS when the server refused the plain session (pg_hba.conf `hostssl`, SQLSTATE
                    // class 28), as libpq does.
                    Err(ConnectError::Server { sqlstate, .. }) if sqlstate.starts_with("28") => {
                        self.connect_once(tokio_postgres::config::SslMode::Require).await
                    }
                    other => other,
                },
                SslMode::Disable => self.connect_once(tokio_postgres::config::SslMode::Disable).await,
                SslMode::Prefer => self.connect_once(tokio_postgres::config::SslMode::Prefer).await,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    self.connect_once(tokio_postgres::config::SslMode::Require).await
                }
            }
        };
        // A libpq multi-host URL tries its hosts in turn, each within the connect timeout (a failover's old primary
        // may hang before the new one answers): the whole attempt gets one timeout per host.
        let hosts = self.config.get_hosts().len().max(self.config.get_hostaddrs().len()).max(1);
        let timeout = self.connect_timeout.saturating_mul(u32::try_from(hosts).unwrap_or(u32::MAX));
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout { target: self.target(), timeout }),
        }
    }

    async fn connect_once(
        &self,
        ssl_mode: tokio_postgres::config::SslMode,
    ) -> Result<(Client, PgConnection), ConnectError> {
        let mut config = self.config.clone();
        config.ssl_mode(ssl_mode);
        let phase = Arc::new(AtomicU8::new(PHASE_CONNECTING));
        let tls = TrackedTls { inner: self.rustls.clone(), phase: phase.clone() };
        match config.connect(tls).await {
            Ok(pair) => {
                tracing::debug!(
                    server = %self.target(),
                    sslmode = %self.tls.mode,
                    encrypted = phase.load(Ordering::SeqCst) == PHASE_ENCRYPTED,
                    "connected to PostgreSQL"
                );
                Ok(pair)
            }
            Err(e) => Err(self.classify(e, phase.load(Ordering::SeqCst), ssl_mode)),
        }
    }

    /// Turns a tokio-postgres failure into a [`ConnectError`], by the types in its source chain and by how far the
    /// last attempt got (never by message text).
    fn classify(&self, e: tokio_postgres::Error, phase: u8, ssl_mode: tokio_postgres::config::SslMode) -> ConnectError {
        let target = self.target();
        if let Some(tls_error) = find_in_chain::<rustls::Error>(&e) {
            return self.tls_failure(target, tls_error);
        }
        if let Some(db) = e.as_db_error() {
            return ConnectError::Server {
                target,
                sqlstate: db.code().code().to_string(),
                message: db.message().to_string(),
                source: e,
            };
        }
        if find_in_chain::<io::Error>(&e).is_some() {
            let detail = error_chain(&e);
            let detail = if phase == PHASE_HANDSHAKE { format!("during the TLS handshake: {detail}") } else { detail };
            return ConnectError::Unreachable { target, detail, source: e };
        }
        // Not I/O, not the server, not rustls: after the socket was connected and before a TLS handshake started,
        // the only failure left is the server answering "N" to the SSLRequest.
        if phase == PHASE_NEGOTIATING && ssl_mode == tokio_postgres::config::SslMode::Require {
            return ConnectError::ServerDoesNotSupportTls { target, mode: self.tls.mode };
        }
        ConnectError::Unreachable { target, detail: error_chain(&e), source: e }
    }

    fn tls_failure(&self, target: String, e: &rustls::Error) -> ConnectError {
        let trusted = self.tls.root_cert.as_ref().map_or_else(|| "no CA".to_string(), ToString::to_string);
        match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                if let Some(m) = other.0.downcast_ref::<HostNameMismatch>() {
                    return ConnectError::HostNameMismatch {
                        target,
                        expected: m.expected.clone(),
                        presented: m.presented.clone(),
                    };
                }
                let (problem, reason) = match other.0.downcast_ref::<webpki::Error>() {
                    Some(webpki::Error::UnsupportedCertVersion) => (
                        CertificateProblem::UnsupportedVersion,
                        "the server certificate is X.509 version 1 (as `openssl x509 -req` makes without -extfile); \
                         rustls accepts version 3 only: re-issue it with extensions (see docs/tls.md)"
                            .to_string(),
                    ),
                    Some(webpki::Error::CaUsedAsEndEntity) => (
                        CertificateProblem::CaAsServerCertificate,
                        "the server certificate is a CA certificate (basicConstraints CA:TRUE) and is not itself \
                         listed in sslrootcert: list it there, or sign the server certificate with a separate CA \
                         (see docs/tls.md)"
                            .to_string(),
                    ),
                    _ => (CertificateProblem::Other, other.to_string()),
                };
                ConnectError::CertificateRejected { target, problem, reason }
            }
            rustls::Error::InvalidCertificate(ce) => {
                let (problem, reason) = match ce {
                    CertificateError::UnknownIssuer => (
                        CertificateProblem::UnknownIssuer,
                        format!("unknown issuer: the server certificate is not signed by a CA in {trusted}"),
                    ),
                    CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                        (CertificateProblem::Expired, ce.to_string())
                    }
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                        (CertificateProblem::NotYetValid, ce.to_string())
                    }
                    CertificateError::Revoked => (CertificateProblem::Revoked, "certificate revoked".to_string()),
                    CertificateError::BadSignature => {
                        (CertificateProblem::BadSignature, "certificate signature is invalid".to_string())
                    }
                    other => (CertificateProblem::Other, other.to_string()),
                };
                ConnectError::CertificateRejected { target, problem, reason }
            }
            other => ConnectError::Handshake { target, reason: other.to_string() },
        }
    }
}

/// Opens one session to `url` with the TLS settings it and `ssl_flag` (`AUDIT_DB_SSL`) imply, bounded by
/// `connect_timeout`, and drives it on a spawned task. Pools should build a [`PgConnector`] once instead.
pub async fn connect(
    url: &str,
    ssl_flag: bool,
    connect_timeout: Duration,
) -> Result<(Client, tokio::task::JoinHandle<()>), ConnectError> {
    PgConnector::from_url(url, ssl_flag, connect_timeout)?.connect().await
}

/// Refuses host forms tokio-postgres cannot use with TLS, naming them, before anything is sent.
fn check_hosts(config: &tokio_postgres::Config, mode: SslMode) -> Result<(), ConnectError> {
    if mode == SslMode::Disable {
        return Ok(());
    }
    for host in config.get_hosts() {
        #[cfg(unix)]
        if let Host::Unix(path) = host
            && mode.requires_tls()
        {
            return Err(ConnectError::UnsuitableHost {
                mode,
                host: path.display().to_string(),
                why: "TLS is only used over TCP; connect by host name or address, or use sslmode=disable or prefer",
            });
        }
        #[cfg(not(unix))]
        let _ = host;
    }
    if config.get_hosts().len() < config.get_hostaddrs().len() {
        let addr = config.get_hostaddrs()[config.get_hosts().len()];
        return Err(ConnectError::UnsuitableHost {
            mode,
            host: addr.to_string(),
            why: "hostaddr without host gives TLS no name to send or check; add host=<name> (it may be the address)",
        });
    }
    Ok(())
}

/// `PostgreSQL at host:port[,host:port]` for messages (never credentials).
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let n = hosts.len().max(addrs.len()).max(1);
    let list: Vec<String> = (0..n)
        .map(|i| {
            let host = match (hosts.get(i), addrs.get(i)) {
                (Some(Host::Tcp(h)), Some(a)) => format!("{h} ({a})"),
                (Some(Host::Tcp(h)), None) => h.clone(),
                #[cfg(unix)]
                (Some(Host::Unix(p)), _) => p.display().to_string(),
                (None, Some(a)) => a.to_string(),
                (None, None) => "localhost".to_string(),
            };
            let port = ports.get(i).or_else(|| ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    format!("PostgreSQL at {}", list.join(","))
}

// ---- rustls configuration and certificate verification ----

/// Builds the rustls configuration for `tls` (once per [`PgConnector`]): ring provider, CA store, verifier.
fn client_config(tls: &TlsSettings) -> Result<ClientConfig, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match (&tls.root_cert, tls.mode) {
        (_, SslMode::Disable) | (None, _) => None,
        (Some(RootCert::File(path)), _) => Some(Arc::new(load_root_file(path)?)),
        (Some(RootCert::System), _) => Some(Arc::new(Trust { store: load_system_roots()?, pinned: Vec::new() })),
    };
    let verifier = PgServerVerifier {
        roots,
        check_host_name: tls.verification() == Verification::ChainAndHostName,
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::TlsSetup { reason: e.to_string() })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // PostgreSQL 17 requires this ALPN for direct TLS (sslnegotiation=direct); older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The CAs to trust, and the certificates of the `sslrootcert` file themselves: a server presenting exactly one of
/// them is trusted as OpenSSL (libpq) trusts it, which keeps the self-signed certificate recipe of PostgreSQL's
/// documentation working (rustls alone refuses a CA certificate used as a server certificate).
#[derive(Debug)]
struct Trust {
    store: RootCertStore,
    pinned: Vec<CertificateDer<'static>>,
}

fn load_root_file(path: &Path) -> Result<Trust, ConnectError> {
    let pem = std::fs::read(path).map_err(|source| ConnectError::RootCertUnreadable { path: path.into(), source })?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| {
        ConnectError::RootCertInvalid { path: path.into(), reason: format!("not a PEM certificate file: {e}") }
    })?;
    if certs.is_empty() {
        return Err(ConnectError::RootCertInvalid {
            path: path.into(),
            reason: "no certificate (-----BEGIN CERTIFICATE-----) in the file".to_string(),
        });
    }
    let mut store = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        store.add(cert.clone()).map_err(|e| ConnectError::RootCertInvalid {
            path: path.into(),
            reason: format!("certificate {} of the file cannot be a trust anchor: {e}", i + 1),
        })?;
    }
    Ok(Trust { store, pinned: certs })
}

fn load_system_roots() -> Result<RootCertStore, ConnectError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let reason = if found.errors.is_empty() {
            "none found (is the ca-certificates package installed?)".to_string()
        } else {
            found.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        };
        return Err(ConnectError::SystemRootsUnavailable { reason });
    }
    Ok(store)
}

/// Checks the server certificate as the `sslmode` asks: nothing, the chain, or the chain and the host name. The
/// handshake signatures are always checked, so the server must hold the key of the certificate it presents.
#[derive(Debug)]
struct PgServerVerifier {
    roots: Option<Arc<Trust>>,
    check_host_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PgServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            // libpq `require`/`prefer`/`allow` without a root certificate: encrypted, not authenticated.
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        let chain = verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots.store,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        );
        if let Err(e) = chain {
            if !roots.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
                return Err(e);
            }
            // Exactly a certificate the operator listed in sslrootcert: trusted as such, if within its validity.
            check_validity(end_entity, now)?;
        }
        if self.check_host_name {
            match verify_server_name(&cert, server_name) {
                Ok(()) => {}
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => check_host_name_fallback(end_entity, server_name)?,
                Err(e) => return Err(e),
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        match verify_tls12_signature(message, cert, dss, algorithms) {
            // Unverified mode and a certificate webpki cannot parse (X.509 version 1): libpq's `require` accepts it.
            // Checking the signature would prove nothing here (an impostor could present its own certificate and
            // key), and rustls offers no TLS 1.2 check by raw key, so the session proceeds, encrypted.
            Err(rustls::Error::InvalidCertificate(_))
                if self.roots.is_none() && ParsedCertificate::try_from(cert).is_err() =>
            {
                Ok(HandshakeSignatureValid::assertion())
            }
            other => other,
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        match verify_tls13_signature(message, cert, dss, algorithms) {
            // Unverified mode and a certificate webpki cannot parse (X.509 version 1): check the signature with the
            // certificate's raw public key, so such servers work under `require` as with libpq.
            Err(e @ rustls::Error::InvalidCertificate(_)) if self.roots.is_none() => {
                let spki = subject_public_key_info(cert).ok_or(e)?;
                verify_tls13_signature_with_raw_key(message, &SubjectPublicKeyInfoDer::from(spki), dss, algorithms)
            }
            other => other,
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The DER SubjectPublicKeyInfo of a certificate, read without webpki's restrictions (any X.509 version).
fn subject_public_key_info(der: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_cert::der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
    cert.tbs_certificate.subject_public_key_info.to_der().ok()
}

/// `notBefore <= now <= notAfter`, for a certificate trusted by being listed itself in sslrootcert.
fn check_validity(der: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = &cert.tbs_certificate.validity;
    let not_before = UnixTime::since_unix_epoch(validity.not_before.to_unix_duration());
    let not_after = UnixTime::since_unix_epoch(validity.not_after.to_unix_duration());
    if now.as_secs() < not_before.as_secs() {
        return Err(CertificateError::NotValidYetContext { time: now, not_before }.into());
    }
    if now.as_secs() > not_after.as_secs() {
        return Err(CertificateError::ExpiredContext { time: now, not_after }.into());
    }
    Ok(())
}

/// The names a certificate carries, as libpq reads them for `verify-full`.
#[derive(Debug, Default, PartialEq, Eq)]
struct CertNames {
    /// DNS and IP subjectAltNames.
    san: Vec<String>,
    /// Subject common names.
    common_names: Vec<String>,
}

/// The server certificate does not name the host connected to (carried through rustls to [`ConnectError`]).
#[derive(Debug)]
struct HostNameMismatch {
    expected: String,
    presented: Vec<String>,
}

impl fmt::Display for HostNameMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate is not valid for {}; it names {}", self.expected, presented_names(&self.presented))
    }
}

impl StdError for HostNameMismatch {}

/// webpki matches subjectAltNames only. libpq also accepts the subject CN when the certificate has no DNS or IP
/// subjectAltName (the certificate recipe in PostgreSQL's documentation makes such certificates), so do we.
fn check_host_name_fallback(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
) -> Result<(), rustls::Error> {
    let expected = match server_name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    };
    let names = cert_names(end_entity);
    if names.san.is_empty() && names.common_names.iter().any(|cn| common_name_matches(cn, &expected)) {
        return Ok(());
    }
    let presented =
        if names.san.is_empty() { names.common_names.iter().map(|cn| format!("CN={cn}")).collect() } else { names.san };
    Err(rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(HostNameMismatch {
        expected,
        presented,
    })))))
}

fn cert_names(der: &CertificateDer<'_>) -> CertNames {
    use x509_cert::der::oid::db::rfc4519::CN;
    use x509_cert::der::{Decode, Tag, Tagged};
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;

    let Ok(cert) = x509_cert::Certificate::from_der(der.as_ref()) else {
        return CertNames::default();
    };
    let tbs = &cert.tbs_certificate;
    let mut names = CertNames::default();
    if let Ok(Some((_, SubjectAltName(general)))) = tbs.get::<SubjectAltName>() {
        for name in general {
            match name {
                GeneralName::DnsName(d) => names.san.push(d.to_string()),
                GeneralName::IpAddress(octets) => {
                    let b = octets.as_bytes();
                    let ip =
                        <[u8; 4]>::try_from(b).map(IpAddr::from).or_else(|_| <[u8; 16]>::try_from(b).map(IpAddr::from));
                    if let Ok(ip) = ip {
                        names.san.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    for rdn in tbs.subject.0.iter() {
        for atv in rdn.0.iter().filter(|atv| atv.oid == CN) {
            let text_tag =
                matches!(atv.value.tag(), Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString);
            if let (true, Ok(s)) = (text_tag, std::str::from_utf8(atv.value.value())) {
                names.common_names.push(s.to_string());
            }
        }
    }
    names
}

/// libpq's rule: case-insensitive equality, or a leading `*.` matching exactly one label.
fn common_name_matches(cn: &str, host: &str) -> bool {
    if cn.eq_ignore_ascii_case(host) {
        return true;
    }
    match (cn.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((first, rest))) => !first.is_empty() && rest.eq_ignore_ascii_case(suffix),
        _ => false,
    }
}

fn presented_names(names: &[String]) -> String {
    if names.is_empty() { "no host name at all".to_string() } else { names.join(", ") }
}

// ---- tracking how far a connect attempt got ----

const PHASE_CONNECTING: u8 = 0;
/// The socket is connected and tokio-postgres asked for a TLS connector: the SSLRequest is next.
const PHASE_NEGOTIATING: u8 = 1;
/// The server accepted the SSLRequest; the TLS handshake runs.
const PHASE_HANDSHAKE: u8 = 2;
/// The handshake completed.
const PHASE_ENCRYPTED: u8 = 3;

/// tokio-postgres-rustls plus a record of the last attempt's progress, which tells "server does not support TLS"
/// apart from other failures without reading messages.
struct TrackedTls {
    inner: MakeRustlsConnect,
    phase: Arc<AtomicU8>,
}

type InnerConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;

struct TrackedConnect {
    inner: InnerConnect,
    phase: Arc<AtomicU8>,
}

impl MakeTlsConnect<Socket> for TrackedTls {
    type Stream = PgTlsStream;
    type TlsConnect = TrackedConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<TrackedConnect, Self::Error> {
        self.phase.store(PHASE_NEGOTIATING, Ordering::SeqCst);
        let inner = <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(&mut self.inner, domain)?;
        Ok(TrackedConnect { inner, phase: self.phase.clone() })
    }
}

type HandshakeFuture = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

impl TlsConnect<Socket> for TrackedConnect {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = HandshakeFuture;

    fn connect(self, stream: Socket) -> HandshakeFuture {
        self.phase.store(PHASE_HANDSHAKE, Ordering::SeqCst);
        let phase = self.phase;
        let handshake = self.inner.connect(stream);
        Box::pin(async move {
            let stream = handshake.await?;
            phase.store(PHASE_ENCRYPTED, Ordering::SeqCst);
            Ok(stream)
        })
    }
}

// ---- errors ----

/// Why the server certificate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateProblem {
    /// Not signed (directly or through the presented intermediates) by a trusted CA.
    UnknownIssuer,
    /// Past its `notAfter`.
    Expired,
    /// Before its `notBefore`.
    NotYetValid,
    /// Revoked.
    Revoked,
    /// A signature in the chain does not verify.
    BadSignature,
    /// An X.509 version 1 certificate (rustls verifies version 3 only).
    UnsupportedVersion,
    /// A CA certificate (basicConstraints CA:TRUE) presented as the server certificate without being listed itself
    /// in sslrootcert.
    CaAsServerCertificate,
    /// Anything else (malformed, unsupported algorithm, wrong key usage, …); the message says which.
    Other,
}

/// Why a connection could not be set up. Settings errors are found before anything is sent; the others name the
/// server tried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// `sslmode` has a value libpq does not know.
    #[error("sslmode={value:?} is not valid: expected disable, allow, prefer, require, verify-ca or verify-full")]
    InvalidSslMode {
        /// The value given.
        value: String,
    },
    /// `AUDIT_DB_SSL=true` and `sslmode=disable` both given: one of them is a mistake, and guessing could send
    /// PHI in clear text.
    #[error(
        "conflicting TLS settings: AUDIT_DB_SSL=true (database.ssl) requires TLS but the connection string says \
         sslmode={sslmode}; remove one of them"
    )]
    ConflictingSettings {
        /// The explicit mode that conflicts.
        sslmode: SslMode,
    },
    /// A verifying mode without CA certificates to verify against.
    #[error(
        "sslmode={mode} verifies the server certificate and needs sslrootcert: the CA certificate file (PEM), or \
         `system` for the operating system's trust store"
    )]
    RootCertRequired {
        /// The verifying mode.
        mode: SslMode,
    },
    /// `sslrootcert=system` with a mode that does not check the host name (any public CA could vouch).
    #[error("sslrootcert=system requires sslmode=verify-full (as in libpq), but sslmode={mode}")]
    SystemRootsNeedVerifyFull {
        /// The weaker mode given.
        mode: SslMode,
    },
    /// A libpq TLS parameter this implementation does not honour.
    #[error("connection parameter {name} is not supported: {hint}")]
    UnsupportedParameter {
        /// The parameter.
        name: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// The rest of the connection string does not parse.
    #[error("invalid connection string: {reason}")]
    InvalidConnectionString {
        /// What is wrong (never includes the password).
        reason: String,
    },
    /// A host form that cannot carry TLS with this mode.
    #[error("sslmode={mode} cannot be used with host {host}: {why}")]
    UnsuitableHost {
        /// The mode.
        mode: SslMode,
        /// The host or address.
        host: String,
        /// Why, and what to do.
        why: &'static str,
    },
    /// The `sslrootcert` file cannot be read.
    #[error("cannot read sslrootcert {}: {source}", path.display())]
    RootCertUnreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The `sslrootcert` file holds no usable CA certificate.
    #[error("sslrootcert {} is not usable: {reason}", path.display())]
    RootCertInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `sslrootcert=system` but the operating system's trust store is empty or unreadable.
    #[error("sslrootcert=system: no CA certificate could be loaded from the operating system's trust store: {reason}")]
    SystemRootsUnavailable {
        /// What was found.
        reason: String,
    },
    /// rustls refused the configuration (not expected with the ring provider).
    #[error("setting up TLS failed: {reason}")]
    TlsSetup {
        /// rustls' reason.
        reason: String,
    },
    /// The server answered the SSLRequest with "no" and the mode requires TLS.
    #[error("connecting to {target}: server does not support TLS, but sslmode={mode} requires it")]
    ServerDoesNotSupportTls {
        /// Where.
        target: String,
        /// The mode that requires TLS.
        mode: SslMode,
    },
    /// The server certificate failed verification (other than its host name).
    #[error("connecting to {target}: certificate verification failed: {reason}")]
    CertificateRejected {
        /// Where.
        target: String,
        /// What was wrong, as a type.
        problem: CertificateProblem,
        /// What was wrong, for people.
        reason: String,
    },
    /// `verify-full`: the certificate chains to a trusted CA but does not name the host connected to.
    #[error(
        "connecting to {target}: certificate verification failed: the server certificate is not valid for host name \
         {expected}; it names {}",
        presented_names(presented)
    )]
    HostNameMismatch {
        /// Where.
        target: String,
        /// The host name (or address) connected to.
        expected: String,
        /// The DNS/IP subjectAltNames of the certificate, or `CN=…` when it has none.
        presented: Vec<String>,
    },
    /// The TLS handshake failed for a reason other than the certificate (protocol versions, ciphers, alerts).
    #[error("connecting to {target}: TLS handshake failed: {reason}")]
    Handshake {
        /// Where.
        target: String,
        /// rustls' reason.
        reason: String,
    },
    /// No session within the connect timeout.
    #[error("connecting to {target}: no answer within {} ms", timeout.as_millis())]
    Timeout {
        /// Where.
        target: String,
        /// The bound.
        timeout: Duration,
    },
    /// The server refused the session (authentication, pg_hba.conf, unknown database, too many clients, …).
    #[error("connecting to {target}: {message} (SQLSTATE {sqlstate})")]
    Server {
        /// Where.
        target: String,
        /// The SQLSTATE, e.g. `28000` for "no pg_hba.conf entry".
        sqlstate: String,
        /// The server's message.
        message: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server could not be reached or the connection broke (DNS, refused, reset).
    #[error("connecting to {target}: {detail}")]
    Unreachable {
        /// Where.
        target: String,
        /// The failure chain.
        detail: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// How callers should treat the failure: a wrong connection string or TLS file is invalid input and
    /// certificate or TLS refusals are permanent (neither gets better by retrying nor counts against the server's
    /// health); timeouts and unreachable servers are unavailable; server refusals follow their SQLSTATE.
    pub fn class(&self) -> ErrorClass {
        match self {
            ConnectError::Timeout { .. } | ConnectError::Unreachable { .. } => ErrorClass::Unavailable,
            ConnectError::Server { sqlstate, .. } => classify_sqlstate(sqlstate),
            e if e.is_configuration() => ErrorClass::InvalidInput,
            _ => ErrorClass::Permanent,
        }
    }

    /// The SQLSTATE when the server refused the session.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ConnectError::Server { sqlstate, .. } => Some(sqlstate),
            _ => None,
        }
    }

    /// Whether the connection string or TLS files are at fault (found before anything was sent).
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            ConnectError::InvalidSslMode { .. }
                | ConnectError::ConflictingSettings { .. }
                | ConnectError::RootCertRequired { .. }
                | ConnectError::SystemRootsNeedVerifyFull { .. }
                | ConnectError::UnsupportedParameter { .. }
                | ConnectError::InvalidConnectionString { .. }
                | ConnectError::UnsuitableHost { .. }
                | ConnectError::RootCertUnreadable { .. }
                | ConnectError::RootCertInvalid { .. }
                | ConnectError::SystemRootsUnavailable { .. }
                | ConnectError::TlsSetup { .. }
        )
    }
}

impl From<ConnectError> for AuditError {
    fn from(e: ConnectError) -> Self {
        // Every variant's message already carries its cause; the error itself is kept as the source for callers
        // that need the variant.
        let message = e.to_string();
        let out = match e.sqlstate().and_then(|s| s.parse::<SqlState>().ok()) {
            Some(code) => AuditError::from_sqlstate(code, message),
            None => AuditError::new(ErrorKind::of_class(e.class()), message),
        };
        out.with_source(e)
    }
}

/// The error and its sources joined with ": ", skipping repeats (tokio-postgres' own text is terse).
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// The first error of type `T` in `e`'s source chain, looking inside `io::Error`s (tokio-rustls wraps rustls
/// errors in them).
fn find_in_chain<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref())
            && let Some(found) = inner.downcast_ref::<T>()
        {
            return Some(found);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, flag: bool) -> Result<TlsSettings, ConnectError> {
        TlsSettings::from_url(url, flag)
    }

    #[test]
    fn every_libpq_mode_parses_and_prints_back() {
        for mode in SslMode::ALL {
            assert_eq!(mode.as_str().parse::<SslMode>().unwrap(), mode);
        }
        let e = "verify_full".parse::<SslMode>().unwrap_err();
        assert!(matches!(&e, ConnectError::InvalidSslMode { value } if value == "verify_full"), "{e}");
        assert!(e.to_string().contains("\"verify_full\""), "{e}");
    }

    #[test]
    fn url_tls_parameters_are_taken_out_and_the_rest_is_kept() {
        let x = extract_tls_params(
            "postgres://u:p%40ss@db.example:6432/audit?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20dir%2Froot.crt&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(x.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(x.sslrootcert.as_deref(), Some("/etc/ca dir/root.crt"));
        assert_eq!(x.rest, "postgres://u:p%40ss@db.example:6432/audit?application_name=x&connect_timeout=3");

        let x = extract_tls_params("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!((x.sslmode.as_deref(), x.rest.as_str()), (Some("require"), "postgresql://h/db"));

        let x = extract_tls_params("postgres://h/db").unwrap();
        assert_eq!((x.sslmode, x.rest.as_str()), (None, "postgres://h/db"));
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let x = extract_tls_params("postgres://u:pa?ss@h/db?sslmode=require").unwrap();
        assert_eq!((x.sslmode.as_deref(), x.rest.as_str()), (Some("require"), "postgres://u:pa?ss@h/db"));
    }

    #[test]
    fn keyword_tls_parameters_are_taken_out_with_quotes_and_escapes() {
        let x = extract_tls_params(
            "host=db.example  sslmode = verify-ca password='a b\\'c' sslrootcert='/etc/my ca/root\\'s.crt' dbname=audit",
        )
        .unwrap();
        assert_eq!(x.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(x.sslrootcert.as_deref(), Some("/etc/my ca/root's.crt"));
        assert_eq!(x.rest, "host=db.example password='a b\\'c' dbname=audit");
        let c: tokio_postgres::Config = x.rest.parse().unwrap();
        assert_eq!(c.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn the_last_occurrence_of_a_parameter_wins() {
        let x = extract_tls_params("host=h sslmode=disable sslmode=verify-full").unwrap();
        assert_eq!(x.sslmode.as_deref(), Some("verify-full"));
    }

    #[test]
    fn unsupported_libpq_tls_parameters_are_refused_by_name() {
        for url in ["postgres://h/db?sslcert=/c.crt", "host=h sslkey=/k.key", "postgres://h/db?sslcrl=/x"] {
            let e = settings(url, false).unwrap_err();
            assert!(matches!(e, ConnectError::UnsupportedParameter { .. }), "{url}: {e}");
            assert!(e.to_string().contains(url.rsplit(['?', ' ']).next().unwrap().split('=').next().unwrap()), "{e}");
        }
        // Ignored by libpq too.
        assert!(settings("postgres://h/db?sslcompression=1", false).is_ok());
    }

    #[test]
    fn defaults_follow_the_product_flag() {
        let plain = settings("postgres://h/db", false).unwrap();
        assert_eq!((plain.mode(), plain.verification()), (SslMode::Disable, Verification::None));
        let flagged = settings("postgres://h/db", true).unwrap();
        assert_eq!((flagged.mode(), flagged.verification()), (SslMode::Require, Verification::None));
    }

    #[test]
    fn a_root_certificate_makes_require_verify_the_chain_like_libpq() {
        for flag in [false, true] {
            let s = settings("postgres://h/db?sslrootcert=/ca.pem", flag).unwrap();
            assert_eq!((s.mode(), s.verification()), (SslMode::Require, Verification::Chain), "flag {flag}");
        }
        let s = settings("postgres://h/db?sslmode=require&sslrootcert=/ca.pem", false).unwrap();
        assert_eq!(s.verification(), Verification::Chain);
        let s = settings("postgres://h/db?sslmode=prefer&sslrootcert=/ca.pem", false).unwrap();
        assert_eq!(s.verification(), Verification::Chain);
        let s = settings("postgres://h/db?sslmode=disable&sslrootcert=/ca.pem", false).unwrap();
        assert_eq!(s.verification(), Verification::None);
    }

    #[test]
    fn the_flag_raises_weak_modes_and_never_lowers_strong_ones() {
        for (given, expected) in [
            ("allow", SslMode::Require),
            ("prefer", SslMode::Require),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let s = settings(&format!("postgres://h/db?sslmode={given}&sslrootcert=/ca.pem"), true).unwrap();
            assert_eq!(s.mode(), expected, "sslmode={given} with AUDIT_DB_SSL=true");
            let s = settings(&format!("postgres://h/db?sslmode={given}&sslrootcert=/ca.pem"), false).unwrap();
            assert_eq!(s.mode().as_str(), given, "sslmode={given} without the flag is kept");
        }
    }

    #[test]
    fn disable_with_the_flag_is_a_conflict_naming_both() {
        for url in ["postgres://h/db?sslmode=disable", "host=h sslmode=disable"] {
            let e = settings(url, true).unwrap_err();
            assert!(matches!(e, ConnectError::ConflictingSettings { sslmode: SslMode::Disable }), "{e}");
            let m = e.to_string();
            assert!(m.contains("AUDIT_DB_SSL=true") && m.contains("sslmode=disable"), "{m}");
        }
    }

    #[test]
    fn verifying_modes_need_a_root_certificate() {
        for mode in ["verify-ca", "verify-full"] {
            let e = settings(&format!("postgres://h/db?sslmode={mode}"), false).unwrap_err();
            assert!(matches!(e, ConnectError::RootCertRequired { .. }), "{e}");
            assert!(e.to_string().contains(mode) && e.to_string().contains("sslrootcert"), "{e}");
        }
    }

    #[test]
    fn system_roots_mean_verify_full() {
        let s = settings("postgres://h/db?sslrootcert=system", false).unwrap();
        assert_eq!((s.mode(), s.root_cert()), (SslMode::VerifyFull, Some(&RootCert::System)));
        let s = settings("postgres://h/db?sslrootcert=system", true).unwrap();
        assert_eq!(s.mode(), SslMode::VerifyFull);
        for weak in ["require", "verify-ca", "prefer"] {
            let e = settings(&format!("postgres://h/db?sslrootcert=system&sslmode={weak}"), false).unwrap_err();
            assert!(matches!(e, ConnectError::SystemRootsNeedVerifyFull { .. }), "{weak}: {e}");
        }
    }

    #[test]
    fn the_rest_must_parse_and_the_error_never_shows_the_password() {
        let e = settings("postgres://u:s3cret@h/db?sslmode=require&bogus=1", false).unwrap_err();
        assert!(matches!(e, ConnectError::InvalidConnectionString { .. }), "{e}");
        let m = e.to_string();
        assert!(m.contains("bogus") && !m.contains("s3cret"), "{m}");
    }

    #[test]
    fn tls_needs_tcp_host_names() {
        let (config, tls) = parse_url("host=/var/run/postgresql sslmode=require", false).unwrap();
        let e = PgConnector::new(config, tls, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ConnectError::UnsuitableHost { .. }), "{e}");
        let (config, tls) = parse_url("hostaddr=127.0.0.1 sslmode=require", false).unwrap();
        let e = PgConnector::new(config, tls, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(&e, ConnectError::UnsuitableHost { host, .. } if host == "127.0.0.1"), "{e}");
        let (config, tls) = parse_url("hostaddr=127.0.0.1 sslmode=disable", false).unwrap();
        assert!(PgConnector::new(config, tls, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn common_names_match_as_in_libpq() {
        assert!(common_name_matches("DB.example.org", "db.EXAMPLE.org"));
        assert!(common_name_matches("*.example.org", "db.example.org"));
        assert!(!common_name_matches("*.example.org", "a.db.example.org"));
        assert!(!common_name_matches("*.example.org", "example.org"));
        assert!(!common_name_matches("db.example.org", "db2.example.org"));
    }

    fn generated_cert(
        sans: &[&str],
        cn: &str,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn certificate_names_are_read_from_san_and_cn() {
        let cert = generated_cert(&["db.example.org", "10.0.0.5", "::1"], "Audit DB", (2020, 1, 1), (2090, 1, 1));
        let names = cert_names(&cert);
        assert_eq!(names.san, ["db.example.org", "10.0.0.5", "::1"]);
        assert_eq!(names.common_names, ["Audit DB"]);
        let cn_only = generated_cert(&[], "db.example.org", (2020, 1, 1), (2090, 1, 1));
        assert_eq!(cert_names(&cn_only), CertNames { san: vec![], common_names: vec!["db.example.org".into()] });
        let name = ServerName::try_from("db.example.org").unwrap();
        assert!(check_host_name_fallback(&cn_only, &name).is_ok());
        let other = ServerName::try_from("db2.example.org").unwrap();
        assert!(check_host_name_fallback(&cn_only, &other).is_err());
        // With a subjectAltName, the CN is not consulted (libpq's rule).
        let with_san = generated_cert(&["other.example.org"], "db.example.org", (2020, 1, 1), (2090, 1, 1));
        assert!(check_host_name_fallback(&with_san, &name).is_err());
    }

    #[test]
    fn a_pinned_certificate_must_be_within_its_validity() {
        let now = UnixTime::now();
        assert!(check_validity(&generated_cert(&["h"], "h", (2020, 1, 1), (2090, 1, 1)), now).is_ok());
        let expired = check_validity(&generated_cert(&["h"], "h", (2000, 1, 1), (2001, 1, 1)), now).unwrap_err();
        assert!(matches!(expired, rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })));
        let early = check_validity(&generated_cert(&["h"], "h", (2080, 1, 1), (2090, 1, 1)), now).unwrap_err();
        assert!(matches!(early, rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })));
    }

    #[test]
    fn the_public_key_is_read_from_any_certificate() {
        let cert = generated_cert(&["h"], "h", (2020, 1, 1), (2090, 1, 1));
        let spki = subject_public_key_info(&cert).unwrap();
        let parsed = ParsedCertificate::try_from(&cert).unwrap();
        assert_eq!(spki, parsed.subject_public_key_info().as_ref());
        assert_eq!(subject_public_key_info(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    #[test]
    fn the_target_names_host_and_address() {
        let (config, _) = parse_url("host=db.example.org hostaddr=10.0.0.5 port=6432", false).unwrap();
        assert_eq!(describe_target(&config), "PostgreSQL at db.example.org (10.0.0.5):6432");
        let (config, _) = parse_url("postgres://u@a:1,b:2/db", false).unwrap();
        assert_eq!(describe_target(&config), "PostgreSQL at a:1,b:2");
    }

    #[test]
    fn the_debug_form_of_a_connector_hides_the_password() {
        let c = PgConnector::from_url("postgres://u:s3cret@h:5433/db", false, Duration::from_secs(1)).unwrap();
        let d = format!("{c:?}");
        assert!(d.contains("h:5433") && !d.contains("s3cret"), "{d}");
    }
}

#![allow(unreachable_pub)]
//! Test PKI for the TLS tests: certificate authorities and server certificates generated per run with rcgen, and
//! files a private PostgreSQL cluster (running as the `postgres` OS user when the tests run as root) can read.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// A certificate authority that can sign server certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// PEM file of the CA certificate (what a client passes as `sslrootcert`).
    pub cert_path: PathBuf,
}

/// A server certificate and its key, as files for `ssl_cert_file` / `ssl_key_file`.
pub struct ServerCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A directory of generated certificates, readable by the cluster's OS user; deleted when dropped.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self { dir: audit_testkit::cluster::cluster_tempdir()? })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new CA named `name`, its certificate written to `<name>.crt`.
    pub fn ca(&self, name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("audit-db test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let cert_path = self.path(&format!("{name}.crt"));
        write_file(&cert_path, &cert.pem(), 0o644, false)?;
        Ok(Ca { issuer: Issuer::new(params, key), cert_path })
    }

    /// A server certificate signed by `ca` with the given DNS/IP subjectAltNames (none → only the CN names the
    /// host, as in the certificate recipe of PostgreSQL's documentation).
    pub fn server_cert(&self, name: &str, ca: &Ca, common_name: &str, sans: &[&str]) -> anyhow::Result<ServerCert> {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = dn(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca.issuer)?;
        let cert_path = self.path(&format!("{name}.crt"));
        let key_path = self.path(&format!("{name}.key"));
        write_file(&cert_path, &cert.pem(), 0o644, true)?;
        // PostgreSQL refuses a key readable by others; when the tests run as root the cluster runs as `postgres`,
        // which must own it.
        write_file(&key_path, &key.serialize_pem(), 0o600, true)?;
        Ok(ServerCert { cert_path, key_path })
    }

    /// A self-signed server certificate that is its own CA (basicConstraints CA:TRUE), as `openssl req -x509`
    /// makes with the recipe in PostgreSQL's documentation; the certificate file doubles as the client's root.
    pub fn self_signed_server_cert(&self, name: &str, sans: &[&str]) -> anyhow::Result<ServerCert> {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = dn(sans.first().copied().unwrap_or("localhost"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let cert_path = self.path(&format!("{name}.crt"));
        let key_path = self.path(&format!("{name}.key"));
        write_file(&cert_path, &cert.pem(), 0o644, true)?;
        write_file(&key_path, &key.serialize_pem(), 0o600, true)?;
        Ok(ServerCert { cert_path, key_path })
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes `text` with `mode`; when `for_server`, makes it usable by the server ([`hand_to_server`]).
fn write_file(path: &Path, text: &str, mode: u32, for_server: bool) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if for_server {
        hand_to_server(path, mode)?;
    }
    Ok(())
}

/// Gives a file `mode` and, when the tests run as root (so the cluster runs as `postgres`), to the `postgres` user:
/// PostgreSQL refuses a key file it does not own or that others can read.
pub fn hand_to_server(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    let running_as_root = std::fs::metadata(path)?.uid() == 0;
    if running_as_root {
        let (uid, gid) = postgres_user()?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown postgres {}", path.display()))?;
    }
    Ok(())
}

/// Runs the `openssl` command line tool in `dir` (Debian package `openssl`).
pub fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running `openssl` (install the Debian package `openssl`)")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// uid and gid of the `postgres` OS user (from /etc/passwd).
fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .context("no `postgres` user in /etc/passwd (the PostgreSQL server package creates it)")?;
    let fields: Vec<&str> = line.split(':').collect();
    Ok((fields[2].parse()?, fields[3].parse()?))
}

/// Retries `attempt` until it returns `Some` or 15 s pass (for effects of a configuration reload, which the
/// postmaster applies asynchronously).
pub async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!("{what}: still not the case after 15 s; last: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

//! The cryptography: the file master key, subject keys, and the stored form of a personal value.
//!
//! Stored form of a personal value: `pd1.<key id, 32 hex>.<base64url(nonce ‖ ciphertext ‖ tag)>`.
//! - AES-256-GCM (ring) under a key derived from the subject key, with the field name (`principal_id`,
//!   `details.patient_name`) as associated data, so a ciphertext cannot be moved to another field.
//! - The nonce is synthetic: the first 12 bytes of HMAC-SHA256(nonce key, field ‖ 0 ‖ plaintext), the nonce key
//!   also derived from the subject key. Encryption is therefore deterministic per (subject, field, value): the
//!   whole stored text *is* the equality token, so "events of principal X" is `principal_id = <stored form of X>`
//!   on the existing index, and a re-sent event hashes the same. GCM's nonce-reuse weakness does not arise: the
//!   same nonce only ever comes with the same plaintext (SIV construction), which reveals equality — exactly what
//!   the equality token is meant to reveal, and only while the subject key exists.
//! - The key id is random (not derived from the subject), so after erasure nothing in a row points to who it was.

use std::sync::LazyLock;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use audit_core::{AuditError, AuditResult};

/// Prefix of every stored personal value.
pub const STORED_PREFIX: &str = "pd1.";
/// Bytes of a subject key id.
pub const KEY_ID_LEN: usize = 16;
const TAG_LEN: usize = 16;

/// Fills a fresh array from the system's CSPRNG.
pub(crate) fn random<const N: usize>() -> AuditResult<[u8; N]> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

/// Fills `out` from the system's CSPRNG: one call (one system call) for a whole batch of keys and nonces.
pub(crate) fn fill_random(out: &mut [u8]) -> AuditResult<()> {
    SystemRandom::new().fill(out).map_err(|_| AuditError::permanent("the system random generator failed"))
}

/// The HKDF salt, keyed once per process (keying HMAC costs as much as using it).
static SALT: LazyLock<hkdf::Salt> = LazyLock::new(|| hkdf::Salt::new(hkdf::HKDF_SHA256, b"audit-db personal data v1"));

/// HKDF-SHA256 of `ikm` for `label` (32 bytes): one secret, many independent keys.
pub(crate) fn derive(ikm: &[u8], label: &str) -> [u8; 32] {
    expand(&SALT.extract(ikm), label)
}

/// The HKDF expand step for `label`: several labels of one secret share one extract ([`SubjectKey::new`]).
fn expand(prk: &hkdf::Prk, label: &str) -> [u8; 32] {
    let info = [label.as_bytes()];
    let okm = prk.expand(&info, hkdf::HKDF_SHA256).expect("32 bytes is a valid HKDF-SHA256 length");
    let mut out = [0u8; 32];
    okm.fill(&mut out).expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

fn aead_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"))
}

/// A subject's key, ready to use: the encryption key and the synthetic-nonce key, both derived from the 32 random
/// bytes that are stored (wrapped) in `audit_subject_keys`.
pub struct SubjectKey {
    /// Random id written into every stored value (hex in the text form).
    pub key_id: [u8; KEY_ID_LEN],
    enc: LessSafeKey,
    nonce: hmac::Key,
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("SubjectKey").field("key_id", &hex::encode(self.key_id)).finish_non_exhaustive()
    }
}

impl SubjectKey {
    /// The key from its id and its 32 secret bytes.
    pub fn new(key_id: [u8; KEY_ID_LEN], secret: &[u8]) -> AuditResult<Self> {
        if secret.len() != 32 {
            return Err(AuditError::integrity(format!(
                "subject key {}: {} bytes, expected 32",
                hex::encode(key_id),
                secret.len()
            )));
        }
        // The same keys as `derive(secret, label)` for each label, with one HKDF extract for both.
        let prk = SALT.extract(secret);
        Ok(Self {
            key_id,
            enc: aead_key(&expand(&prk, "subject/encrypt")),
            nonce: hmac::Key::new(hmac::HMAC_SHA256, &expand(&prk, "subject/nonce")),
        })
    }

    /// The stored form of `plaintext` in `field` (deterministic, see the module doc).
    pub fn seal(&self, field: &str, plaintext: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.nonce);
        ctx.update(field.as_bytes());
        ctx.update(&[0]);
        ctx.update(plaintext);
        let tag = ctx.sign();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);
        let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext);
        let mut body = buf.split_off(NONCE_LEN);
        self.enc
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(field.as_bytes()), &mut body)
            .expect("AES-GCM seals any length we store");
        buf.extend_from_slice(&body);
        let mut out = String::with_capacity(STORED_PREFIX.len() + 33 + buf.len() * 4 / 3 + 4);
        out.push_str(STORED_PREFIX);
        out.push_str(&hex::encode(self.key_id));
        out.push('.');
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&buf, &mut out);
        out
    }

    /// The plaintext of a stored form sealed by this key in `field`; an integrity error when it does not open
    /// (altered, another field's, another key's).
    pub fn open(&self, field: &str, stored: &str) -> AuditResult<Vec<u8>> {
        let bad = || AuditError::integrity(format!("{field}: the stored personal value does not decrypt"));
        let (key_id, payload) = parse_stored(stored).ok_or_else(bad)?;
        if key_id != self.key_id {
            return Err(bad());
        }
        let mut buf = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad())?;
        if buf.len() < NONCE_LEN + TAG_LEN {
            return Err(bad());
        }
        let mut body = buf.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&buf).map_err(|_| bad())?;
        let plain = self.enc.open_in_place(nonce, Aad::from(field.as_bytes()), &mut body).map_err(|_| bad())?;
        Ok(plain.to_vec())
    }
}

/// The key id and payload of a stored form, or `None` if `text` is not one.
pub fn parse_stored(text: &str) -> Option<([u8; KEY_ID_LEN], &str)> {
    let rest = text.strip_prefix(STORED_PREFIX)?;
    let (id_hex, payload) = rest.split_once('.')?;
    let mut key_id = [0u8; KEY_ID_LEN];
    hex::decode_to_slice(id_hex, &mut key_id).ok()?;
    (!payload.is_empty()).then_some((key_id, payload))
}

/// The master key read from a file (`audit-db keygen --master`): 32 random bytes, base64 on one line.
pub struct FileMasterKey {
    wrap: LessSafeKey,
    index: hmac::Key,
    index_secret: [u8; 32],
    id: String,
}

impl std::fmt::Debug for FileMasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileMasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl FileMasterKey {
    /// The first line of a master key file.
    pub const HEADER: &'static str = "audit-db master key v1";

    /// A new random master key, as the text of its file.
    pub fn generate_text() -> AuditResult<String> {
        let secret: [u8; 32] = random()?;
        Ok(format!("{}\n{}", Self::HEADER, base64::engine::general_purpose::STANDARD.encode(secret)))
    }

    /// Parses the text of a master key file; the error says what is wrong without echoing any of it.
    pub fn parse(text: &str) -> AuditResult<Self> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(Self::HEADER) {
            return Err(AuditError::invalid(format!("a master key file starts with the line `{}`", Self::HEADER)));
        }
        let secret = lines
            .next()
            .and_then(|l| base64::engine::general_purpose::STANDARD.decode(l).ok())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| AuditError::invalid("the master key's second line is not 32 bytes of base64"))?;
        let id_key = hmac::Key::new(hmac::HMAC_SHA256, &derive(&secret, "master/id"));
        let id = hex::encode(&hmac::sign(&id_key, b"master key id").as_ref()[..8]);
        let index_secret = derive(&secret, "master/subject-index");
        Ok(Self {
            wrap: aead_key(&derive(&secret, "master/wrap")),
            index: hmac::Key::new(hmac::HMAC_SHA256, &index_secret),
            index_secret,
            id,
        })
    }

    fn wrap_now(&self, key: &[u8], context: &[u8]) -> AuditResult<Vec<u8>> {
        self.wrap_with_nonce(random()?, key, context)
    }

    /// Wraps under a fresh random nonce (the caller draws it; [`Self::wrap_many`] draws all of a batch at once).
    fn wrap_with_nonce(&self, nonce: [u8; NONCE_LEN], key: &[u8], context: &[u8]) -> AuditResult<Vec<u8>> {
        let mut body = key.to_vec();
        self.wrap
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut body)
            .map_err(|_| AuditError::permanent("wrapping a subject key failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn unwrap_now(&self, wrapped: &[u8], context: &[u8]) -> AuditResult<Vec<u8>> {
        let bad = || {
            AuditError::integrity(format!(
                "a subject key does not unwrap under master key {} (wrong master key, or the row was altered)",
                self.id
            ))
        };
        if wrapped.len() < NONCE_LEN + TAG_LEN {
            return Err(bad());
        }
        let (nonce, body) = wrapped.split_at(NONCE_LEN);
        let mut body = body.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let plain = self.wrap.open_in_place(nonce, Aad::from(context), &mut body).map_err(|_| bad())?;
        Ok(plain.to_vec())
    }
}

impl audit_core::KeyManager for FileMasterKey {
    fn master_key_id(&self) -> String {
        self.id.clone()
    }

    fn wrap<'a>(
        &'a self,
        key: &'a [u8],
        context: &'a [u8],
    ) -> audit_core::privacy::PrivacyFuture<'a, AuditResult<Vec<u8>>> {
        Box::pin(std::future::ready(self.wrap_now(key, context)))
    }

    fn wrap_many<'a>(
        &'a self,
        items: &'a [(&'a [u8], &'a [u8])],
    ) -> audit_core::privacy::PrivacyFuture<'a, AuditResult<Vec<Vec<u8>>>> {
        let wrapped = (|| {
            let mut nonces = vec![0u8; items.len() * NONCE_LEN];
            fill_random(&mut nonces)?;
            items
                .iter()
                .zip(nonces.chunks_exact(NONCE_LEN))
                .map(|((key, context), nonce)| {
                    self.wrap_with_nonce(nonce.try_into().expect("NONCE_LEN bytes"), key, context)
                })
                .collect()
        })();
        Box::pin(std::future::ready(wrapped))
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a [u8],
        context: &'a [u8],
    ) -> audit_core::privacy::PrivacyFuture<'a, AuditResult<Vec<u8>>> {
        Box::pin(std::future::ready(self.unwrap_now(wrapped, context)))
    }

    fn subject_index(&self, subject: &str) -> AuditResult<[u8; 32]> {
        Ok(index_with(&self.index, subject))
    }

    fn subject_index_secret(&self) -> Option<Vec<u8>> {
        Some(self.index_secret.to_vec())
    }
}

fn index_with(key: &hmac::Key, subject: &str) -> [u8; 32] {
    let tag = hmac::sign(key, subject.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Associated data of the wrapped subject-index key (`audit_subject_index_key`).
pub(crate) const INDEX_KEY_CONTEXT: &[u8] = b"audit-db subject index key";

/// The subject-index key as stored (unwrapped): computes what [`audit_core::KeyManager::subject_index`] computed
/// under the master key it was first derived from, whatever master key wraps it now.
pub(crate) struct IndexKey(hmac::Key);

impl IndexKey {
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    pub(crate) fn index(&self, subject: &str) -> [u8; 32] {
        index_with(&self.0, subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_core::KeyManager as _;

    #[test]
    fn seal_is_deterministic_bound_to_field_and_key() {
        let k = SubjectKey::new([7; 16], &[1; 32]).unwrap();
        let a = k.seal("principal_id", b"dr_smith");
        assert_eq!(a, k.seal("principal_id", b"dr_smith"), "equality token");
        assert_ne!(a, k.seal("target_resource_id", b"dr_smith"));
        assert_ne!(a, k.seal("principal_id", b"dr_smitH"));
        assert!(!a.contains("dr_smith"));
        assert_eq!(k.open("principal_id", &a).unwrap(), b"dr_smith");
        assert!(k.open("target_resource_id", &a).is_err(), "field is bound as associated data");
        let other = SubjectKey::new([7; 16], &[2; 32]).unwrap();
        assert!(other.open("principal_id", &a).is_err());
        let mut tampered = a.clone();
        tampered.pop();
        tampered.push(if a.ends_with('A') { 'B' } else { 'A' });
        assert!(k.open("principal_id", &tampered).is_err());
        assert_eq!(parse_stored(&a).unwrap().0, [7; 16]);
        assert!(parse_stored("dr_smith").is_none());
    }

    #[tokio::test]
    async fn master_key_wraps_with_context_and_indexes_subjects() {
        let m = FileMasterKey::parse(&FileMasterKey::generate_text().unwrap()).unwrap();
        let w = m.wrap(&[9; 32], b"ctx").await.unwrap();
        assert_eq!(m.unwrap(&w, b"ctx").await.unwrap(), [9; 32]);
        assert!(m.unwrap(&w, b"other").await.is_err());
        let other = FileMasterKey::parse(&FileMasterKey::generate_text().unwrap()).unwrap();
        assert!(other.unwrap(&w, b"ctx").await.is_err());
        assert_ne!(m.master_key_id(), other.master_key_id());
        assert_eq!(m.subject_index("x").unwrap(), m.subject_index("x").unwrap());
        assert_ne!(m.subject_index("x").unwrap(), other.subject_index("x").unwrap());
        let stored = IndexKey::new(&m.subject_index_secret().unwrap());
        assert_eq!(stored.index("x"), m.subject_index("x").unwrap(), "the exported index key computes the same");
        assert!(FileMasterKey::parse("garbage").is_err());
        let many = m.wrap_many(&[(&[1; 32], b"a"), (&[2; 32], b"b")]).await.unwrap();
        assert_eq!(m.unwrap(&many[0], b"a").await.unwrap(), [1; 32]);
        assert_eq!(m.unwrap(&many[1], b"b").await.unwrap(), [2; 32]);
        assert_ne!(many[0][..NONCE_LEN], many[1][..NONCE_LEN], "each wrap has its own nonce");
    }
}

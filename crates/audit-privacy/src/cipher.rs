//! The cryptography: the file master key, subject keys, and the stored forms of a personal value.
//!
//! Two stored forms; each subject key seals in one of them (its `value_format`), so a subject's equality token is
//! one string, and readers open both:
//! - `pd2.<key id, 22 base64url>.<base64url(ciphertext ‖ tag)>` (keys created from session 6 on): AES-256-GCM-SIV
//!   (RFC 8452, a deterministic AEAD when its nonce is fixed) under a key derived from the subject key. Its
//!   nonce-misuse resistance means the fixed nonce reveals only that two plaintexts are equal (the equality token).
//!   16 bytes of overhead.
//! - `pd1.<key id, 32 hex>.<base64url(nonce ‖ ciphertext ‖ tag)>` (keys created before): AES-256-GCM (ring) with a
//!   synthetic nonce, the first 12 bytes of HMAC-SHA256(nonce key, field ‖ 0 ‖ plaintext), stored in front (an SIV
//!   construction: the same nonce only ever comes with the same plaintext). 28 bytes of overhead.
//!
//! In both, encryption is deterministic per (subject, field, value): the whole stored text *is* the equality token,
//! so "events of principal X" is `principal_id = <stored form of X>` on the existing index, and a re-sent event
//! hashes the same. The field name is the associated data, so a ciphertext cannot be moved to another field. The
//! key id is random (not derived from the subject), so after erasure nothing in a row points to who it was.

use std::sync::LazyLock;

use aes_gcm_siv::Aes256GcmSiv;
use aes_gcm_siv::aead::{Aead as _, KeyInit as _, Payload};
use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use audit_core::{AuditError, AuditResult};

/// Prefix of a stored personal value in the first form.
pub const STORED_PREFIX_V1: &str = "pd1.";
/// Prefix of a stored personal value in the second form.
pub const STORED_PREFIX_V2: &str = "pd2.";
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

/// The stored form a subject key seals in (`audit_subject_keys.value_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFormat {
    /// `pd1.`: hex key id, AES-256-GCM with the synthetic nonce stored.
    V1,
    /// `pd2.`: base64url key id, AES-256-GCM-SIV under a fixed nonce.
    V2,
}

impl ValueFormat {
    /// The format new keys get.
    pub const NEW_KEYS: ValueFormat = ValueFormat::V2;

    /// The `value_format` column's value.
    pub fn code(self) -> i16 {
        match self {
            ValueFormat::V1 => 1,
            ValueFormat::V2 => 2,
        }
    }

    /// From the `value_format` column; an integrity error for a value no release wrote.
    pub fn from_code(code: i16) -> AuditResult<Self> {
        match code {
            1 => Ok(ValueFormat::V1),
            2 => Ok(ValueFormat::V2),
            other => Err(AuditError::integrity(format!("a subject key has value_format {other}, expected 1 or 2"))),
        }
    }
}

/// The keys of the first form: the AEAD key and the synthetic-nonce key.
struct V1Keys {
    enc: LessSafeKey,
    nonce: hmac::Key,
}

/// The cipher of a subject key's form (boxed: both are hundreds of bytes of expanded key schedule).
enum Sealer {
    V1(Box<V1Keys>),
    V2(Box<Aes256GcmSiv>),
}

/// The fixed nonce of the `pd2` form (see the module doc).
const SIV_NONCE: [u8; 12] = [0; 12];

/// Base64url without padding: the payload of both forms and the key id of `pd2`.
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A subject's key, ready to use: the cipher of its form, derived from the 32 random bytes that are stored
/// (wrapped) in `audit_subject_keys`.
pub struct SubjectKey {
    /// Random id written into every stored value.
    pub key_id: [u8; KEY_ID_LEN],
    sealer: Sealer,
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("SubjectKey").field("key_id", &hex::encode(self.key_id)).finish_non_exhaustive()
    }
}

impl SubjectKey {
    /// The key from its id, its 32 secret bytes and the form it seals in.
    pub fn new(key_id: [u8; KEY_ID_LEN], secret: &[u8], format: ValueFormat) -> AuditResult<Self> {
        if secret.len() != 32 {
            return Err(AuditError::integrity(format!(
                "subject key {}: {} bytes, expected 32",
                hex::encode(key_id),
                secret.len()
            )));
        }
        // The same keys as `derive(secret, label)` for each label, with one HKDF extract.
        let prk = SALT.extract(secret);
        let sealer = match format {
            ValueFormat::V1 => Sealer::V1(Box::new(V1Keys {
                enc: aead_key(&expand(&prk, "subject/encrypt")),
                nonce: hmac::Key::new(hmac::HMAC_SHA256, &expand(&prk, "subject/nonce")),
            })),
            ValueFormat::V2 => {
                let key = expand(&prk, "subject/encrypt-siv");
                Sealer::V2(Box::new(Aes256GcmSiv::new(aes_gcm_siv::Key::<Aes256GcmSiv>::from_slice(&key))))
            }
        };
        Ok(Self { key_id, sealer })
    }

    /// The form this key seals in.
    pub fn format(&self) -> ValueFormat {
        match self.sealer {
            Sealer::V1(_) => ValueFormat::V1,
            Sealer::V2(_) => ValueFormat::V2,
        }
    }

    /// The prefix of this key's form.
    fn prefix(&self) -> &'static str {
        match self.sealer {
            Sealer::V1(_) => STORED_PREFIX_V1,
            Sealer::V2(_) => STORED_PREFIX_V2,
        }
    }

    /// What every value this key sealed starts with (`pd1.<id>.` or `pd2.<id>.`): an erasure finds the key's
    /// values inside `details` by it.
    pub fn stored_tag(&self) -> String {
        match self.sealer {
            Sealer::V1(_) => format!("{}{}.", self.prefix(), hex::encode(self.key_id)),
            Sealer::V2(_) => format!("{}{}.", self.prefix(), B64.encode(self.key_id)),
        }
    }

    /// The stored form of `plaintext` in `field` (deterministic, see the module doc).
    pub fn seal(&self, field: &str, plaintext: &[u8]) -> String {
        let body = match &self.sealer {
            Sealer::V1(keys) => {
                let mut ctx = hmac::Context::with_key(&keys.nonce);
                ctx.update(field.as_bytes());
                ctx.update(&[0]);
                ctx.update(plaintext);
                let tag = ctx.sign();
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);
                let mut sealed = plaintext.to_vec();
                keys.enc
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(field.as_bytes()),
                        &mut sealed,
                    )
                    .expect("AES-GCM seals any length we store");
                let mut buf = Vec::with_capacity(NONCE_LEN + sealed.len());
                buf.extend_from_slice(&nonce);
                buf.extend_from_slice(&sealed);
                buf
            }
            Sealer::V2(siv) => siv
                .encrypt(aes_gcm_siv::Nonce::from_slice(&SIV_NONCE), Payload { msg: plaintext, aad: field.as_bytes() })
                .expect("AES-GCM-SIV seals any length we store"),
        };
        let mut out = self.stored_tag();
        out.reserve(body.len() * 4 / 3 + 4);
        B64.encode_string(&body, &mut out);
        out
    }

    /// The plaintext of a stored form sealed by this key in `field`; an integrity error when it does not open
    /// (altered, another field's, another key's, another form's).
    pub fn open(&self, field: &str, stored: &str) -> AuditResult<Vec<u8>> {
        let bad = || AuditError::integrity(format!("{field}: the stored personal value does not decrypt"));
        let (key_id, payload) = parse_stored(stored).ok_or_else(bad)?;
        if key_id != self.key_id || !stored.starts_with(self.prefix()) {
            return Err(bad());
        }
        let mut buf = B64.decode(payload).map_err(|_| bad())?;
        match &self.sealer {
            Sealer::V1(keys) => {
                if buf.len() < NONCE_LEN + TAG_LEN {
                    return Err(bad());
                }
                let mut body = buf.split_off(NONCE_LEN);
                let nonce = Nonce::try_assume_unique_for_key(&buf).map_err(|_| bad())?;
                let plain = keys.enc.open_in_place(nonce, Aad::from(field.as_bytes()), &mut body).map_err(|_| bad())?;
                Ok(plain.to_vec())
            }
            Sealer::V2(siv) => siv
                .decrypt(aes_gcm_siv::Nonce::from_slice(&SIV_NONCE), Payload { msg: &buf, aad: field.as_bytes() })
                .map_err(|_| bad()),
        }
    }
}

/// Whether `text` is a stored form (of either version), by its prefix.
pub fn is_stored(text: &str) -> bool {
    text.starts_with(STORED_PREFIX_V1) || text.starts_with(STORED_PREFIX_V2)
}

/// The key id and payload of a stored form (either version), or `None` if `text` is not one.
pub fn parse_stored(text: &str) -> Option<([u8; KEY_ID_LEN], &str)> {
    let mut key_id = [0u8; KEY_ID_LEN];
    let payload = if let Some(rest) = text.strip_prefix(STORED_PREFIX_V1) {
        let (id_hex, payload) = rest.split_once('.')?;
        hex::decode_to_slice(id_hex, &mut key_id).ok()?;
        payload
    } else {
        let (id_b64, payload) = text.strip_prefix(STORED_PREFIX_V2)?.split_once('.')?;
        key_id = B64.decode(id_b64).ok()?.as_slice().try_into().ok()?;
        payload
    };
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
        for format in [ValueFormat::V1, ValueFormat::V2] {
            let k = SubjectKey::new([7; 16], &[1; 32], format).unwrap();
            let a = k.seal("principal_id", b"dr_smith");
            assert_eq!(a, k.seal("principal_id", b"dr_smith"), "equality token");
            assert_ne!(a, k.seal("target_resource_id", b"dr_smith"));
            assert_ne!(a, k.seal("principal_id", b"dr_smitH"));
            assert!(!a.contains("dr_smith"));
            assert!(is_stored(&a));
            assert_eq!(k.open("principal_id", &a).unwrap(), b"dr_smith");
            assert!(k.open("target_resource_id", &a).is_err(), "field is bound as associated data");
            let other = SubjectKey::new([7; 16], &[2; 32], format).unwrap();
            assert!(other.open("principal_id", &a).is_err());
            let mut tampered = a.clone();
            tampered.pop();
            tampered.push(if a.ends_with('A') { 'B' } else { 'A' });
            assert!(k.open("principal_id", &tampered).is_err());
            assert_eq!(parse_stored(&a).unwrap().0, [7; 16]);
            assert!(a.starts_with(&k.stored_tag()));
        }
        assert!(parse_stored("dr_smith").is_none());
        assert!(!is_stored("dr_smith"));
    }

    /// The second form: its own prefix and base64 key id, 26 characters shorter than the first for any value, and
    /// a value of one form never opens under a key of the other (same id and secret).
    #[test]
    fn the_second_form_is_shorter_and_the_forms_do_not_mix() {
        let v1 = SubjectKey::new([9; 16], &[3; 32], ValueFormat::V1).unwrap();
        let v2 = SubjectKey::new([9; 16], &[3; 32], ValueFormat::V2).unwrap();
        for plain in [&b""[..], b"x", b"patient_012345", &[b'z'; 255]] {
            let (a, b) = (v1.seal("principal_id", plain), v2.seal("principal_id", plain));
            assert!(a.starts_with(STORED_PREFIX_V1) && b.starts_with(STORED_PREFIX_V2), "{a} {b}");
            assert!(b.len() + 25 <= a.len() && a.len() <= b.len() + 27, "{} vs {}", a.len(), b.len());
            assert_eq!(v2.open("principal_id", &b).unwrap(), plain);
            assert!(v2.open("principal_id", &a).is_err() && v1.open("principal_id", &b).is_err());
        }
        assert_eq!(ValueFormat::from_code(ValueFormat::NEW_KEYS.code()).unwrap(), ValueFormat::V2);
        assert!(ValueFormat::from_code(3).is_err());
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

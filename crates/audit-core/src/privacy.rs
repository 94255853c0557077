//! Personal data (GDPR Art. 17, crypto-shredding): which fields hold personal data, whose they are, and the traits
//! through which the write and read paths protect and reveal them without knowing how.
//!
//! Why here: the client (write path, read path) and the crate that does the cryptography (`audit-privacy`) meet
//! only through these traits, so a KMS-backed key manager or another cipher can replace the file master key and
//! AES-256-GCM without the client changing.

use std::future::Future;
use std::pin::Pin;

use crate::event::{NewEvent, StoredEvent};
use crate::filter::EventFilter;
use crate::{AuditError, AuditResult};

/// What a personal value reads as once its subject's key is destroyed.
pub const ERASED: &str = "[erased]";

/// A boxed future (the personal-data traits are used as trait objects: one protector serves every client type).
pub type PrivacyFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A field that may hold personal data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PersonalField {
    /// `principal_id`: its subject is the principal (the value itself).
    PrincipalId,
    /// `target_resource_id`: its subject is the resource's identity (the value itself, e.g. a patient id).
    TargetResourceId,
    /// `details.K`: its subject is the event's target (`target_resource_id`), else its principal, else the value.
    Detail(String),
}

impl PersonalField {
    /// The name as configured and as bound into each ciphertext (`principal_id`, `details.patient_name`).
    pub fn name(&self) -> String {
        match self {
            PersonalField::PrincipalId => "principal_id".into(),
            PersonalField::TargetResourceId => "target_resource_id".into(),
            PersonalField::Detail(k) => format!("details.{k}"),
        }
    }
}

impl std::str::FromStr for PersonalField {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "principal_id" => Ok(PersonalField::PrincipalId),
            "target_resource_id" => Ok(PersonalField::TargetResourceId),
            other => match other.strip_prefix("details.") {
                Some(k) if !k.is_empty() => Ok(PersonalField::Detail(k.to_string())),
                _ => {
                    Err(format!("`{other}` is not a personal field (principal_id, target_resource_id or details.KEY)"))
                }
            },
        }
    }
}

/// The personal-data policy: the fields that hold personal data. Empty (the default) means the policy is off and
/// every value is stored as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonalFields {
    /// The fields, without duplicates, in the order given.
    pub fields: Vec<PersonalField>,
}

impl PersonalFields {
    /// Parses `principal_id,target_resource_id,details.patient_name` (comma-separated; blanks ignored).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut fields: Vec<PersonalField> = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let f: PersonalField = part.parse()?;
            if !fields.contains(&f) {
                fields.push(f);
            }
        }
        Ok(Self { fields })
    }

    /// Whether any field is personal (the policy is on).
    pub fn is_on(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Whether `f` is one of the personal fields.
    pub fn contains(&self, f: &PersonalField) -> bool {
        self.fields.contains(f)
    }

    /// The `details` keys that are personal.
    pub fn detail_keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().filter_map(|f| match f {
            PersonalField::Detail(k) => Some(k.as_str()),
            _ => None,
        })
    }

    /// The comma-separated form [`PersonalFields::parse`] reads.
    pub fn to_list(&self) -> String {
        self.fields.iter().map(PersonalField::name).collect::<Vec<_>>().join(",")
    }

    /// The data subject a personal value of `field` in `event` belongs to: the identifier itself for
    /// `principal_id` and `target_resource_id`; for a `details` value the event's target, else its principal, else
    /// the value's own text. Decided on the plaintext event, before anything is encrypted.
    pub fn subject_of(field: &PersonalField, event: &NewEvent, value_text: &str) -> String {
        match field {
            PersonalField::PrincipalId | PersonalField::TargetResourceId => value_text.to_string(),
            PersonalField::Detail(_) => event
                .target_resource_id
                .clone()
                .or_else(|| event.principal_id.clone())
                .unwrap_or_else(|| value_text.to_string()),
        }
    }
}

impl serde::Serialize for PersonalFields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_list())
    }
}

impl<'de> serde::Deserialize<'de> for PersonalFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        // Either "a,b,details.c" or ["a", "b", "details.c"].
        let v = serde_json::Value::deserialize(d)?;
        let text = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|i| i.as_str().map(str::to_string).ok_or_else(|| D::Error::custom("a field name must be text")))
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => return Err(D::Error::custom(format!("`{other}` is not a list of personal fields"))),
        };
        PersonalFields::parse(&text).map_err(D::Error::custom)
    }
}

/// Protects personal values on the write path and reveals them on the read path. Implemented by
/// `audit_privacy::Shredder`; the client holds one as a trait object.
///
/// Contract: [`PersonalData::protect`] runs before the leaf hash is computed, so the canonical form, the leaf hash,
/// every checkpoint and proof cover exactly what is stored (ciphertext and equality token) and stay valid when a
/// key is destroyed. [`PersonalData::reveal`] never fails for a destroyed key: the value reads as [`ERASED`].
pub trait PersonalData: Send + Sync + 'static {
    /// The policy in force.
    fn fields(&self) -> &PersonalFields;

    /// Replaces every personal value of `events` by its stored (encrypted) form, creating subject keys as needed.
    fn protect<'a>(&'a self, events: Vec<NewEvent>) -> PrivacyFuture<'a, AuditResult<Vec<NewEvent>>>;

    /// Replaces every stored personal value of `events` by its plaintext, or by [`ERASED`] when the key is gone.
    fn reveal<'a>(&'a self, events: Vec<StoredEvent>) -> PrivacyFuture<'a, AuditResult<Vec<StoredEvent>>>;

    /// Rewrites equality conditions on personal fields into conditions on their stored form (the equality token),
    /// so "events of principal X" stays an indexed equality query. A subject without a key keeps its plaintext
    /// condition, which matches no encrypted row.
    fn translate_filter<'a>(&'a self, filter: &'a mut EventFilter) -> PrivacyFuture<'a, AuditResult<()>>;
}

/// Wraps and unwraps subject keys under a master key, and derives the blind index that finds a subject's key
/// without storing the subject's identifier. The file master key implements it; a KMS can later (wrap/unwrap are
/// asynchronous for that reason).
pub trait KeyManager: Send + Sync + 'static {
    /// Identifies the master key (stored beside each wrapped key, so a wrong master key is named, not guessed).
    fn master_key_id(&self) -> String;

    /// Encrypts a subject key; `context` is bound to the result (it must be given again to unwrap).
    fn wrap<'a>(&'a self, key: &'a [u8], context: &'a [u8]) -> PrivacyFuture<'a, AuditResult<Vec<u8>>>;

    /// Wraps many `(key, context)` pairs, in order: the write path creates a batch's new subject keys at once, and a
    /// KMS would take them in one request. The default wraps one by one.
    fn wrap_many<'a>(&'a self, items: &'a [(&'a [u8], &'a [u8])]) -> PrivacyFuture<'a, AuditResult<Vec<Vec<u8>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(items.len());
            for (key, context) in items {
                out.push(self.wrap(key, context).await?);
            }
            Ok(out)
        })
    }

    /// Decrypts a wrapped subject key; fails with an integrity error if it or `context` was altered.
    fn unwrap<'a>(&'a self, wrapped: &'a [u8], context: &'a [u8]) -> PrivacyFuture<'a, AuditResult<Vec<u8>>>;

    /// A keyed hash of a subject's identifier (HMAC-SHA256 under a key derived from the master key): the lookup
    /// column of the subject-key table, so that table holds no identifier in clear.
    fn subject_index(&self, subject: &str) -> AuditResult<[u8; 32]>;

    /// The HMAC key behind [`Self::subject_index`], so that it can be stored wrapped and outlive this master key:
    /// a master-key rotation must not change any subject's index. `None` when it cannot leave the key manager
    /// (then the master key cannot be rotated by re-wrapping).
    fn subject_index_secret(&self) -> Option<Vec<u8>> {
        None
    }
}

/// Rejects a personal-field list that names a field twice or an unknown one (for configuration checks).
pub fn check_fields(list: &str) -> AuditResult<PersonalFields> {
    PersonalFields::parse(list).map_err(AuditError::invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_and_name_what_is_wrong() {
        let f = PersonalFields::parse("principal_id, target_resource_id,details.patient_name,principal_id").unwrap();
        assert_eq!(f.fields.len(), 3);
        assert_eq!(f.to_list(), "principal_id,target_resource_id,details.patient_name");
        assert_eq!(f.detail_keys().collect::<Vec<_>>(), ["patient_name"]);
        assert!(!PersonalFields::parse("").unwrap().is_on());
        let e = PersonalFields::parse("principal_id,email").unwrap_err();
        assert!(e.contains("`email`"), "{e}");
        assert!(PersonalFields::parse("details.").is_err());
    }
}

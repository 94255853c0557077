//! TEMPORARY stand-in until audit_core::integrity lands (replaced before commit).
use audit_core::NewEvent;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
#[derive(Clone)]
pub struct LeafPrefix(Sha256);
impl LeafPrefix {
    pub fn new(e: &NewEvent, at: DateTime<Utc>) -> Self {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(format!("{e:?}{at}"));
        Self(h)
    }
    pub fn finish(&self, id: i64) -> [u8; 32] {
        let mut h = self.0.clone();
        h.update(id.to_string());
        h.finalize().into()
    }
}

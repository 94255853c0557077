//! `[privacy]`: the personal-data policy (off by default).

use std::path::PathBuf;

use audit_core::PersonalFields;
use serde::{Deserialize, Serialize};

/// `[privacy]` — which fields hold personal data and where the master key is. With no personal field the policy is
/// off and nothing is encrypted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PrivacyConfig {
    /// `AUDIT_DB_PERSONAL_FIELDS`: `principal_id`, `target_resource_id`, `details.KEY`, comma-separated.
    pub personal_fields: PersonalFields,
    /// `AUDIT_DB_MASTER_KEY_FILE`: the master key (`audit-db keygen --master --out DIR` writes `DIR/master.key`).
    pub master_key_file: Option<PathBuf>,
    /// How long a process trusts a cached subject key, seconds: an erasure by another process takes effect here
    /// within this time (the erasing process forgets the key at once).
    pub key_cache_ttl_secs: u64,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self { personal_fields: PersonalFields::default(), master_key_file: None, key_cache_ttl_secs: 60 }
    }
}

impl PrivacyConfig {
    /// Whether personal values are encrypted.
    pub fn is_on(&self) -> bool {
        self.personal_fields.is_on()
    }

    /// Checks what types cannot: a policy needs a master key. Errors name the key at fault.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.is_on() && self.master_key_file.is_none() {
            return Err((
                "privacy.masterKeyFile".into(),
                "personal fields are configured but no master key is (set AUDIT_DB_MASTER_KEY_FILE; \
                 `audit-db keygen --master --out DIR` creates DIR/master.key)"
                    .into(),
            ));
        }
        Ok(())
    }
}

//! `[integrity]`: the checkpoint signing key and sealing period.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[integrity]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct IntegrityConfig {
    /// Ed25519 signing key file (`audit-db keygen`).
    pub signing_key_file: Option<PathBuf>,
    /// Seal every log on this period, seconds (`None`: only on demand).
    pub checkpoint_interval_secs: Option<u64>,
}

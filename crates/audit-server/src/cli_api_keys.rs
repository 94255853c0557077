//! `audit-db api-keys create|list|revoke`: the tenant keys of the HTTP service. A new key is printed once and only
//! its hash is stored.

use std::process::ExitCode;

use audit_server::api_keys::{ApiKey, Scope};
use audit_server::app::App;

/// Output format of the key commands.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum KeyFormat {
    /// For people.
    Text,
    /// One JSON document.
    Json,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ApiKeysCommand {
    /// Create a key bound to one organisation; the key is printed once on stdout.
    Create {
        /// The organisation the key may write and read.
        #[arg(long)]
        org: String,
        /// Comma-separated: ingest, query, verify, admin (admin spans organisations).
        #[arg(long, value_delimiter = ',', required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// A name for people (recorded as the principal of audited reads).
        #[arg(long, default_value = "")]
        name: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: KeyFormat,
    },
    /// List keys (never their secrets).
    List {
        /// Only this organisation's keys.
        #[arg(long)]
        org: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: KeyFormat,
    },
    /// Revoke a key by id; every instance refuses it within a second.
    Revoke {
        /// The key's id (from `create` or `list`).
        id: uuid::Uuid,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse()
}

fn scopes_text(k: &ApiKey) -> String {
    k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

/// Runs a key command.
pub(crate) async fn run(app: App, cmd: ApiKeysCommand) -> anyhow::Result<ExitCode> {
    let store = app.api_keys()?;
    match cmd {
        ApiKeysCommand::Create { org, scopes, name, format } => {
            let created = store.create(&org, &scopes, &name).await?;
            let k = &created.key;
            match format {
                KeyFormat::Json => println!(
                    "{}",
                    serde_json::json!({
                        "id": k.id, "key": created.secret, "organization_id": k.organization_id,
                        "scopes": k.scopes, "name": k.name,
                    })
                ),
                KeyFormat::Text => {
                    println!("{}", created.secret);
                    eprintln!(
                        "key {} for organisation `{}` (scopes {}): shown once, store it now",
                        k.id,
                        k.organization_id,
                        scopes_text(k)
                    );
                }
            }
        }
        ApiKeysCommand::List { org, format } => {
            let keys = store.list(org.as_deref()).await?;
            match format {
                KeyFormat::Json => println!("{}", serde_json::to_string(&keys)?),
                KeyFormat::Text => {
                    for k in &keys {
                        println!(
                            "{}  {:<20} {:<24} {:<26} {}",
                            k.id,
                            k.organization_id,
                            scopes_text(k),
                            k.name,
                            match k.revoked_at {
                                Some(t) => format!("revoked {}", audit_core::event::format_timestamp(t)),
                                None => "active".into(),
                            }
                        );
                    }
                }
            }
        }
        ApiKeysCommand::Revoke { id } => {
            let k = store.revoke(id).await?;
            println!("{}", serde_json::json!({"id": k.id, "revoked_at": k.revoked_at}));
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! Building the product's pieces on a test database, the way `audit-server` wires them but with the null policy and
//! cache unless a test asks otherwise (shared by the end-to-end test files through `mod support;`).
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use audit_client::{AuditClient, ClientConfig};
use audit_core::{Direct, NoCache};
use audit_integrity::store::IntegrityStore;
use audit_partition::{PartitionConfig, PartitionManager};
use audit_pg::{Connector, DatabaseConfig, build_pool};

/// A connector with the default `[database]` settings.
pub fn connector(url: &str) -> Connector {
    Connector::new(url, DatabaseConfig::default().connect_options("primary")).expect("a valid test URL")
}

/// Applies the migrations; returns the versions applied now.
pub async fn migrate(url: &str) -> Vec<String> {
    audit_pg::run_migrations(&connector(url)).await.expect("migrations apply")
}

/// A partition manager without a resilience policy.
pub async fn partitions(url: &str, config: PartitionConfig) -> PartitionManager {
    PartitionManager::connect(&connector(url), config).await.expect("partition manager")
}

/// The client type of these tests.
pub type Client = AuditClient<PartitionManager, NoCache, Direct>;

/// Migrations, then a client on `client_url` (which may go through a fault proxy) with `config`.
pub async fn client_with(db_url: &str, client_url: &str, config: ClientConfig) -> Client {
    migrate(db_url).await;
    let pm = partitions(db_url, PartitionConfig::default()).await;
    AuditClient::connect(config, client_url, pm, NoCache, Direct).await.expect("client connects")
}

/// Migrations, then a client with the default configuration.
pub async fn client(url: &str) -> Client {
    client_with(url, url, ClientConfig::default()).await
}

/// The integrity store over a small pool, without a resilience policy.
pub fn integrity(url: &str) -> IntegrityStore {
    let options = DatabaseConfig::default().pool_options();
    IntegrityStore::new(build_pool(connector(url), &options).expect("a pool"), Direct, Duration::from_secs(5))
}

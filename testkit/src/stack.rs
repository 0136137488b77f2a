//! Where the local stack's components live (`scripts/stack.sh up`), for tests, benchmarks and
//! development runs. Production deployments configure the invoker through OpenWhisk's
//! environment (`KAFKA_HOSTS`, `CONFIG_whisk_couchdb_*`), not through this module.
//!
//! Every value comes from the same `WHISK_*` environment variable the stack script reads, with
//! the same default, so that a test run without the env file still finds a default stack.

use std::time::Duration;

use openwhisk::couchdb::{CouchDbConfig, DEFAULT_REQUEST_TIMEOUT};

/// The endpoints of a running local stack.
#[derive(Clone, Debug)]
pub struct Stack {
    /// Kafka bootstrap servers, `127.0.0.1:9092` by default.
    pub kafka_hosts: String,
    /// The CouchDB-API server.
    pub couchdb: CouchDbConfig,
}

impl Stack {
    /// Reads `KAFKA_HOSTS` or `WHISK_KAFKA_PORT`, and `WHISK_COUCHDB_{PORT,USER,PASSWORD}`.
    pub fn from_env() -> Self {
        let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
        let kafka_hosts = std::env::var("KAFKA_HOSTS")
            .unwrap_or_else(|_| format!("127.0.0.1:{}", var("WHISK_KAFKA_PORT", "9092")));
        let couchdb = CouchDbConfig {
            url: format!("http://127.0.0.1:{}", var("WHISK_COUCHDB_PORT", "5984")),
            username: var("WHISK_COUCHDB_USER", "whisk_admin"),
            password: var("WHISK_COUCHDB_PASSWORD", "some_passw0rd").into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        };
        Self {
            kafka_hosts,
            couchdb,
        }
    }

    /// How long a test waits for a component before it fails and says which one is missing.
    pub const COMPONENT_TIMEOUT: Duration = Duration::from_secs(20);
}

//! What a pool manager is told: the pause image, the label that marks its containers, pool
//! sizes, and the network configurations (keys) it keeps pools for.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The pause image `runtimes/build.sh` builds (FROM scratch, the static `pcpm-pause`).
pub const DEFAULT_PAUSE_IMAGE: &str = "whisk-pcpm/pause:latest";

/// A network configuration: pause containers are interchangeable only within one key.
///
/// A container that joins another's network (`--network container:<id>`) cannot set its own
/// DNS servers or expose ports (Docker refuses: "conflicting options"); they belong to the
/// network's owner, the pause container. So function containers with different needs of this
/// kind get pause containers from different pools (the PCPM paper, §4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkKey {
    /// The Docker network the pause container is attached to (`bridge`, a user network, `none`).
    pub network: String,
    /// DNS servers (`--dns`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// DNS search domains (`--dns-search`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// DNS resolver options (`--dns-option`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_options: Vec<String>,
    /// TCP ports the network owner exposes (`--expose`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<u16>,
}

impl NetworkKey {
    /// The key for a Docker network with no DNS settings and no exposed ports.
    pub fn network(network: &str) -> Self {
        Self {
            network: network.to_owned(),
            ..Self::default()
        }
    }

    /// A short stable id of the key: it names the pool in labels, container names and metrics.
    pub fn id(&self) -> String {
        // FNV-1a over the canonical JSON: stable across runs and builds, unlike `Hash`.
        let json = serde_json::to_string(self).unwrap_or_default();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in json.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:012x}", hash & 0xffff_ffff_ffff)
    }
}

/// What `acquire` does when the pool has no idle pause container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnEmpty {
    /// Wait for the refill up to this long, then fail with `PcpmError::Exhausted`.
    Wait(Duration),
    /// Return [`crate::Endpoint::Fallback`] at once: the function container gets ordinary
    /// Docker networking (the paper's default path). Counted in `pcpm_fallbacks_total`.
    Fallback,
}

/// A pool manager's configuration. Build one with [`PcpmConfig::new`] and adjust the fields.
#[derive(Clone, Debug)]
pub struct PcpmConfig {
    /// Marks this manager's containers (label `pcpm.manager`) and prefixes their names:
    /// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 40 characters. Crash recovery finds an earlier
    /// run's containers by it, so give each invoker its own.
    pub name: String,
    /// The pause image.
    pub image: String,
    /// The refill starts when fewer pause containers than this are idle in a pool...
    pub low_watermark: usize,
    /// ...and stops when this many are idle.
    pub high_watermark: usize,
    /// Most pause containers a pool holds at once, idle, leased and being created.
    pub max_per_pool: usize,
    /// Most pause containers being created at once, over all pools: dockerd serializes much of
    /// its network setup, so more only queues up inside it.
    pub max_concurrent_creates: usize,
    /// What `acquire` does on an empty pool.
    pub on_empty: OnEmpty,
    /// Pools started (and filled to the high watermark) at once; others start on first use.
    pub keys: Vec<NetworkKey>,
}

impl PcpmConfig {
    /// Defaults: the local pause image, watermarks 4 and 16, 256 per pool, 8 concurrent
    /// creations, waiting up to 10 s on an empty pool, a pool for the default `bridge` network.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: DEFAULT_PAUSE_IMAGE.to_owned(),
            low_watermark: 4,
            high_watermark: 16,
            max_per_pool: 256,
            max_concurrent_creates: 8,
            on_empty: OnEmpty::Wait(Duration::from_secs(10)),
            keys: vec![NetworkKey::network("bridge")],
        }
    }

    /// Checks every rule; the error names the one broken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 40
            && self.name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !name_ok {
            return Err(ConfigError::Name(self.name.clone()));
        }
        if self.image.is_empty() {
            return Err(ConfigError::Image);
        }
        if self.low_watermark > self.high_watermark {
            return Err(ConfigError::Watermarks {
                low: self.low_watermark,
                high: self.high_watermark,
            });
        }
        if self.max_per_pool == 0 || self.high_watermark > self.max_per_pool {
            return Err(ConfigError::MaxPerPool {
                max: self.max_per_pool,
                high: self.high_watermark,
            });
        }
        if self.max_concurrent_creates == 0 {
            return Err(ConfigError::Concurrency);
        }
        if let Some(key) = self.keys.iter().find(|k| k.network.is_empty()) {
            return Err(ConfigError::Network(key.clone()));
        }
        Ok(())
    }
}

/// A broken configuration rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("pcpm name {0:?} must be 1 to 40 characters of [a-zA-Z0-9_.-], starting alphanumeric")]
    Name(String),
    #[error("pcpm image must not be empty")]
    Image,
    #[error("pcpm low watermark {low} is above the high watermark {high}")]
    Watermarks { low: usize, high: usize },
    #[error("pcpm max per pool {max} must be at least 1 and at least the high watermark {high}")]
    MaxPerPool { max: usize, high: usize },
    #[error("pcpm max concurrent creates must be at least 1")]
    Concurrency,
    #[error("pcpm network key {0:?} names no network")]
    Network(NetworkKey),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_stable_and_distinct() {
        let bridge = NetworkKey::network("bridge");
        assert_eq!(bridge.id(), NetworkKey::network("bridge").id());
        assert_eq!(bridge.id().len(), 12);
        let with_dns = NetworkKey {
            dns: vec!["10.0.0.53".into()],
            ..bridge.clone()
        };
        let with_port = NetworkKey {
            exposed_ports: vec![8080],
            ..bridge.clone()
        };
        assert_ne!(bridge.id(), with_dns.id());
        assert_ne!(bridge.id(), with_port.id());
        assert_ne!(with_dns.id(), with_port.id());
        // The label carries the key as JSON; it must read back equal.
        let json = serde_json::to_string(&with_dns).unwrap();
        assert_eq!(serde_json::from_str::<NetworkKey>(&json).unwrap(), with_dns);
    }

    #[test]
    fn validation_names_the_broken_rule() {
        assert_eq!(PcpmConfig::new("inv0").validate(), Ok(()));
        let bad = |f: fn(&mut PcpmConfig)| {
            let mut c = PcpmConfig::new("inv0");
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.name = "-x".into()).contains("pcpm name"));
        assert!(bad(|c| c.name = "a b".into()).contains("pcpm name"));
        assert!(bad(|c| c.low_watermark = 20).contains("low watermark 20"));
        assert!(bad(|c| c.max_per_pool = 8).contains("max per pool 8"));
        assert!(bad(|c| c.max_concurrent_creates = 0).contains("concurrent"));
        assert!(bad(|c| c.keys = vec![NetworkKey::default()]).contains("names no network"));
    }
}

//! Reading OpenWhisk's configuration the way the Scala invoker's image does (contract §1.4).
//!
//! # Behavior
//! - Every environment variable `CONFIG_<a>_<b>…` becomes the property `<a>.<b>…`, each segment
//!   turned from camelCase into kebab-case unless it starts with an upper-case letter
//!   (`CONFIG_whisk_containerPool_userMemory` → `whisk.container-pool.user-memory`,
//!   `CONFIG_whisk_spi_LogStoreProvider` → `whisk.spi.LogStoreProvider`), exactly as
//!   `common/scala/transformEnvironment.sh` rewrites them; a value `$OTHER` takes the value of
//!   `OTHER` when that is set; empty values are skipped.
//! - `-Dkey=value` tokens in `JAVA_OPTS` and then `INVOKER_OPTS` are read too and win, as later
//!   `-D` flags do on a JVM command line; other tokens are ignored.
//! - Sizes (`2048 m`, `"2147483648 B"`, `1 MiB`) and durations (`10 minutes`, `100 ms`) parse
//!   as HOCON writes them.

use std::collections::BTreeMap;
use std::time::Duration;

/// A value that does not parse; names the property.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigValueError {
    #[error("{key}: {value:?} is not a size (expected e.g. \"2048 m\" or \"2147483648 B\")")]
    Size { key: String, value: String },
    #[error("{key}: {value:?} is not a duration (expected e.g. \"10 minutes\" or \"100 ms\")")]
    Duration { key: String, value: String },
}

/// The property name of a `CONFIG_…` variable, `None` for other variables.
pub fn property_name(env_name: &str) -> Option<String> {
    let rest = env_name.strip_prefix("CONFIG_")?;
    let parts: Vec<String> = rest
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|part| {
            if part.starts_with(|c: char| c.is_ascii_uppercase()) {
                part.to_owned()
            } else {
                kebab(part)
            }
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("."))
}

/// `sed -r 's/([a-z0-9])([A-Z])/\1-\L\2/g'`: a lower-case letter or digit followed by an
/// upper-case one gets a dash, and the upper-case one is lowered; matches do not overlap.
fn kebab(part: &str) -> String {
    let chars: Vec<char> = part.chars().collect();
    let mut out = String::with_capacity(part.len() + 4);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if (c.is_ascii_lowercase() || c.is_ascii_digit())
            && chars.get(i + 1).is_some_and(char::is_ascii_uppercase)
        {
            out.push(c);
            out.push('-');
            out.push(chars[i + 1].to_ascii_lowercase());
            i += 2;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The properties an environment defines, from `CONFIG_*` variables and `-D` options.
pub fn properties<I>(env: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (String, String)>,
{
    let env: BTreeMap<String, String> = env.into_iter().collect();
    let mut props = BTreeMap::new();
    for (name, value) in &env {
        let Some(key) = property_name(name) else {
            continue;
        };
        let value = match value.strip_prefix('$') {
            Some(other) => match env.get(other) {
                Some(v) if !v.is_empty() => v.clone(),
                _ => value.clone(),
            },
            None => value.clone(),
        };
        if !value.is_empty() {
            props.insert(key, value);
        }
    }
    for opts in ["JAVA_OPTS", "INVOKER_OPTS"] {
        for token in env
            .get(opts)
            .map(String::as_str)
            .unwrap_or("")
            .split_whitespace()
        {
            if let Some((key, value)) = token.strip_prefix("-D").and_then(|t| t.split_once('=')) {
                props.insert(key.to_owned(), value.trim_matches(['\'', '"']).to_owned());
            }
        }
    }
    props
}

/// Parses a HOCON size into bytes: a number and an optional unit (`B`, `K`/`KB`/`KiB`, `M`…,
/// `G`…, `T`…; powers of 1024 as the Scala `ByteSize` uses them), case-insensitive.
pub fn parse_bytes(key: &str, value: &str) -> Result<u64, ConfigValueError> {
    let err = || ConfigValueError::Size {
        key: key.to_owned(),
        value: value.to_owned(),
    };
    let (n, unit) = number_and_unit(value).ok_or_else(err)?;
    let mult: u64 = match unit.as_str() {
        "" | "b" | "byte" | "bytes" => 1,
        "k" | "kb" | "kib" | "kilobytes" => 1 << 10,
        "m" | "mb" | "mib" | "megabytes" => 1 << 20,
        "g" | "gb" | "gib" | "gigabytes" => 1 << 30,
        "t" | "tb" | "tib" | "terabytes" => 1 << 40,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

/// Parses a HOCON duration: a number and a unit (`ms`, `s`/`seconds`, `m`/`minutes`,
/// `h`/`hours`, `d`/`days`, and their long and plural forms); a bare number is milliseconds.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigValueError> {
    let err = || ConfigValueError::Duration {
        key: key.to_owned(),
        value: value.to_owned(),
    };
    let (n, unit) = number_and_unit(value).ok_or_else(err)?;
    let secs = |per: u64| n.checked_mul(per).map(Duration::from_secs).ok_or_else(err);
    match unit.as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => {
            Ok(Duration::from_millis(n))
        }
        "s" | "second" | "seconds" => secs(1),
        // A number of minutes, hours or days past u64 seconds is refused, not wrapped around
        // (found by the `invoker_settings` fuzz target).
        "m" | "minute" | "minutes" => secs(60),
        "h" | "hour" | "hours" => secs(3600),
        "d" | "day" | "days" => secs(86_400),
        _ => Err(err()),
    }
}

/// `"2048 m"` → `(2048, "m")`: leading digits, then the rest trimmed and lower-cased.
fn number_and_unit(value: &str) -> Option<(u64, String)> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    Some((num.parse().ok()?, unit.trim().to_ascii_lowercase()))
}

/// A password or other secret from the configuration: its `Debug` never shows the value, so a
/// logged settings struct or client does not leak it. [`Secret::expose`] is the one way to read
/// it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_past_u64_seconds_are_refused() {
        let huge = format!("{} m", u64::MAX / 30);
        assert!(matches!(
            parse_duration("k", &huge),
            Err(ConfigValueError::Duration { .. })
        ));
        assert_eq!(
            parse_duration("k", &format!("{} s", u64::MAX)).unwrap(),
            Duration::from_secs(u64::MAX)
        );
        assert!(parse_duration("k", &format!("{} d", u64::MAX / 86_400 + 1)).is_err());
        assert_eq!(
            parse_duration("k", "3 minutes").unwrap(),
            Duration::from_secs(180)
        );
    }

    #[test]
    fn names_transform_like_the_scala_image() {
        for (env, prop) in [
            (
                "CONFIG_whisk_containerPool_userMemory",
                "whisk.container-pool.user-memory",
            ),
            (
                "CONFIG_whisk_loadbalancer_invokerBusyThreshold",
                "whisk.loadbalancer.invoker-busy-threshold",
            ),
            (
                "CONFIG_akka_remote_netty_tcp_bindPort",
                "akka.remote.netty.tcp.bind-port",
            ),
            (
                "CONFIG_whisk_spi_LogStoreProvider",
                "whisk.spi.LogStoreProvider",
            ),
            (
                "CONFIG_whisk_containerFactory_containerArgs_dnsServers_0",
                "whisk.container-factory.container-args.dns-servers.0",
            ),
            (
                "CONFIG_whisk_couchdb_databases_WhiskActivation",
                "whisk.couchdb.databases.WhiskActivation",
            ),
            (
                "CONFIG_whisk_kafka_topics_invoker_retentionBytes",
                "whisk.kafka.topics.invoker.retention-bytes",
            ),
            ("CONFIG_a_aBC", "a.a-bC"),
        ] {
            assert_eq!(property_name(env).as_deref(), Some(prop), "{env}");
        }
        assert_eq!(property_name("KAFKA_HOSTS"), None);
    }

    #[test]
    fn values_dereference_skip_empty_and_take_java_options() {
        let env = [
            ("CONFIG_whisk_couchdb_password", "$DB_PASSWORD"),
            ("DB_PASSWORD", "secret"),
            ("CONFIG_whisk_couchdb_username", "$UNSET_VAR"),
            ("CONFIG_whisk_couchdb_host", ""),
            ("CONFIG_whisk_containerPool_userMemory", "1024m"),
            (
                "JAVA_OPTS",
                "-Xmx512m -Dwhisk.container-pool.user-memory=2048m",
            ),
            (
                "INVOKER_OPTS",
                "-Dwhisk.spi.ContainerFactoryProvider=org.apache.openwhisk.core.containerpool.docker.DockerContainerFactoryProvider",
            ),
        ];
        let p = properties(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(p["whisk.couchdb.password"], "secret");
        assert_eq!(p["whisk.couchdb.username"], "$UNSET_VAR");
        assert!(!p.contains_key("whisk.couchdb.host"));
        assert_eq!(p["whisk.container-pool.user-memory"], "2048m");
        assert!(
            p["whisk.spi.ContainerFactoryProvider"].ends_with("DockerContainerFactoryProvider")
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("k", "2048m"), Ok(2_147_483_648));
        assert_eq!(parse_bytes("k", "2048 m"), Ok(2_147_483_648));
        assert_eq!(parse_bytes("k", "2147483648 B"), Ok(2_147_483_648));
        assert_eq!(parse_bytes("k", "1 MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("k", "16 k"), Ok(16 << 10));
        assert!(
            parse_bytes("whisk.x", "lots")
                .unwrap_err()
                .to_string()
                .contains("whisk.x")
        );
        assert_eq!(
            parse_duration("k", "10 minutes"),
            Ok(Duration::from_secs(600))
        );
        assert_eq!(
            parse_duration("k", "10 seconds"),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(
            parse_duration("k", "100 ms"),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(parse_duration("k", "5 m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("k", "soon").is_err());
    }
}

//! OpenWhisk's Kafka topics, their configuration, and the client settings the invoker uses.
//!
//! # Behavior
//! - [`TopicKind`] carries the per-topic configuration of `whisk.kafka.topics.<key>`
//!   (contract §2.2); [`ensure_topic`] creates a topic with it and treats "already exists" as
//!   success, retrying retriable errors, as the Scala `ensureTopic` does.
//! - [`consumer_config`] and [`producer_config`] start from OpenWhisk's client settings
//!   (contract §2.3). Two differ on purpose and are documented where they are set: the fetch
//!   wait (a long-poll fetch is not woken by new data on tansu, so its wait is the latency of
//!   every hop) and the offset store (the invoker stores offsets itself, after acknowledging).
//!
//! # Limitations
//! - With tansu 0.6.0, a group member that has asked the broker for its committed offsets
//!   (`Consumer::committed`) never finishes closing: its drop waits forever. Read committed
//!   offsets from outside the group, or not at all; resuming after a restart does not need it.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// `whisk.activation.payload.max` (1 MiB) plus `whisk.activation.serdes-overhead` (6068 B).
pub const MAX_MESSAGE_BYTES: u64 = 1_048_576 + 6_068;

/// Default `fetch.wait.max.ms`. OpenWhisk uses 500 ms with Apache Kafka, which answers a
/// long-poll fetch as soon as data arrives; tansu 0.6.0 answers only when the wait is over
/// (`shared/stack-notes.md` §1.4), so each hop would cost half a second.
pub const DEFAULT_FETCH_WAIT_MAX_MS: u32 = 10;

/// Errors of the Kafka helpers; each names the topic concerned.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot create a kafka admin client for {bootstrap}")]
    Admin {
        bootstrap: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot create topic {topic}")]
    CreateTopic {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot create topic {topic}: broker answered {code}")]
    TopicRejected {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// The topics OpenWhisk knows, each with its configuration key in `whisk.kafka.topics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicKind {
    /// `invoker<N>`: activations for one invoker; created by the invoker.
    Invoker,
    /// `completed<C>`: acknowledgements for one controller; created by the controller.
    Completed,
    /// `health`: invoker pings; created by the controller.
    Health,
    /// `events`: user events; created by the controller.
    Events,
    /// `cacheInvalidation`: between controllers; not used by the invoker.
    CacheInvalidation,
}

/// A topic's creation settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    pub partitions: i32,
    pub replication_factor: i32,
    pub segment_bytes: u64,
    pub retention_bytes: u64,
    pub retention_ms: u64,
    /// `None` leaves the broker's default.
    pub max_message_bytes: Option<u64>,
}

impl TopicKind {
    /// The defaults of `whisk.kafka.topics.<key>` (contract §2.2).
    pub fn default_config(self) -> TopicConfig {
        let (retention_ms, max_message_bytes) = match self {
            Self::Invoker => (172_800_000, Some(MAX_MESSAGE_BYTES)),
            Self::Completed => (3_600_000, Some(MAX_MESSAGE_BYTES)),
            Self::Health | Self::Events => (3_600_000, None),
            Self::CacheInvalidation => (300_000, None),
        };
        TopicConfig {
            partitions: 1,
            replication_factor: 1,
            segment_bytes: 536_870_912,
            retention_bytes: 1_073_741_824,
            retention_ms,
            max_message_bytes,
        }
    }
}

impl TopicConfig {
    /// The topic-level settings as the broker receives them.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("segment.bytes", self.segment_bytes.to_string()),
            ("retention.bytes", self.retention_bytes.to_string()),
            ("retention.ms", self.retention_ms.to_string()),
        ];
        if let Some(max) = self.max_message_bytes {
            v.push(("max.message.bytes", max.to_string()));
        }
        v
    }
}

/// Whether [`ensure_topic`] created the topic or found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensured {
    Created,
    Existed,
}

/// Settings every client shares: the bootstrap servers and plaintext transport.
pub fn common_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("security.protocol", "plaintext");
    c
}

/// An admin client for topic management.
pub fn admin_client(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>, KafkaSetupError> {
    admin_client_with(bootstrap, &[])
}

/// An admin client with the configured common properties (see [`apply_properties`]).
pub fn admin_client_with(
    bootstrap: &str,
    properties: &[(String, String)],
) -> Result<AdminClient<DefaultClientContext>, KafkaSetupError> {
    let mut config = common_config(bootstrap);
    apply_properties(&mut config, properties);
    config.create().map_err(|source| KafkaSetupError::Admin {
        bootstrap: bootstrap.to_owned(),
        source,
    })
}

/// Creates `topic` with `config` unless it exists. Retriable errors are retried up to five
/// times, 100 ms apart, like OpenWhisk's `ensureTopic`.
pub async fn ensure_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    config: &TopicConfig,
) -> Result<Ensured, KafkaSetupError> {
    let entries = config.entries();
    let mut new_topic = NewTopic::new(
        topic,
        config.partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
    for (k, v) in &entries {
        new_topic = new_topic.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = admin
            .create_topics(std::slice::from_ref(&new_topic), &opts)
            .await
            .map_err(|source| KafkaSetupError::CreateTopic {
                topic: topic.to_owned(),
                source,
            })?;
        match result.into_iter().next() {
            Some(Ok(_)) => return Ok(Ensured::Created),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => return Ok(Ensured::Existed),
            Some(Err((_, code))) if attempt < 5 && is_retriable(code) => {
                tracing::warn!(topic, %code, attempt, "topic creation failed, retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(Err((_, code))) => {
                return Err(KafkaSetupError::TopicRejected {
                    topic: topic.to_owned(),
                    code,
                });
            }
            None => {
                return Err(KafkaSetupError::TopicRejected {
                    topic: topic.to_owned(),
                    code: RDKafkaErrorCode::Unknown,
                });
            }
        }
    }
}

fn is_retriable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::OperationTimedOut
    )
}

/// Consumer settings for group `group` (contract §2.3), with:
/// - `enable.auto.commit=false` as OpenWhisk, and `enable.auto.offset.store=false`: the invoker
///   stores an offset only once every activation up to it is acknowledged;
/// - `fetch.wait.max.ms` from [`DEFAULT_FETCH_WAIT_MAX_MS`] instead of 500;
/// - a 6 s session and 1 s heartbeat instead of 30 s / 10 s, so that a restarted invoker rejoins
///   its group quickly (the group has one member; the longer session buys nothing).
pub fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut c = common_config(bootstrap);
    c.set("group.id", group)
        .set("client.id", format!("consumer-{group}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "1800000")
        .set("fetch.wait.max.ms", DEFAULT_FETCH_WAIT_MAX_MS.to_string())
        .set("socket.timeout.ms", "30000");
    c
}

/// Producer settings (contract §2.3): `acks=1`, records up to [`MAX_MESSAGE_BYTES`].
pub fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut c = common_config(bootstrap);
    c.set("acks", "1")
        .set("request.timeout.ms", "30000")
        .set("metadata.max.age.ms", "15000")
        .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30000");
    c
}

/// Java client property names (OpenWhisk's) whose librdkafka counterpart has another name.
const JAVA_NAMES: &[(&str, &str)] = &[
    ("max.request.size", "message.max.bytes"),
    ("fetch.max.wait.ms", "fetch.wait.max.ms"),
];

/// Java client properties without a librdkafka counterpart, skipped: the serializers (records
/// are UTF-8 JSON here) and `max.poll.records` (the feed's `maxPeek` bounds what is taken).
const JAVA_ONLY: &[&str] = &[
    "max.poll.records",
    "key.serializer",
    "value.serializer",
    "key.deserializer",
    "value.deserializer",
];

/// Sets the configured client properties (`whisk.kafka.common.*`, then the client kind's; see
/// [`crate::settings::KafkaProperties`]) over `config`'s, the operator's value winning. Java
/// client names are translated ([`JAVA_NAMES`]) or skipped ([`JAVA_ONLY`]); any other name goes
/// to librdkafka as it is, which refuses one it does not know when the client is created.
pub fn apply_properties(config: &mut ClientConfig, properties: &[(String, String)]) {
    for (key, value) in properties {
        if JAVA_ONLY.contains(&key.as_str()) {
            continue;
        }
        let key = JAVA_NAMES
            .iter()
            .find(|(java, _)| java == key)
            .map_or(key.as_str(), |(_, ours)| ours);
        config.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_properties_win_and_java_names_are_translated() {
        let mut c = producer_config("127.0.0.1:9092");
        let props: Vec<(String, String)> = [
            ("linger.ms", "2"),
            ("max.request.size", "2000000"),
            ("max.poll.records", "10"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        apply_properties(&mut c, &props);
        assert_eq!(c.get("linger.ms"), Some("2"));
        assert_eq!(c.get("message.max.bytes"), Some("2000000"));
        assert_eq!(c.get("max.poll.records"), None);
        assert_eq!(c.get("max.request.size"), None);
        assert_eq!(c.get("acks"), Some("1"));
    }

    #[test]
    fn invoker_topic_config_matches_openwhisk() {
        let c = TopicKind::Invoker.default_config();
        assert_eq!(c.partitions, 1);
        assert_eq!(
            c.entries(),
            vec![
                ("segment.bytes", "536870912".to_owned()),
                ("retention.bytes", "1073741824".to_owned()),
                ("retention.ms", "172800000".to_owned()),
                ("max.message.bytes", "1054644".to_owned()),
            ]
        );
    }

    #[test]
    fn health_topic_keeps_broker_default_message_size() {
        let c = TopicKind::Health.default_config();
        assert_eq!(c.max_message_bytes, None);
        assert_eq!(c.retention_ms, 3_600_000);
        assert_eq!(
            TopicKind::CacheInvalidation.default_config().retention_ms,
            300_000
        );
    }

    #[test]
    fn consumer_never_auto_commits() {
        let c = consumer_config("127.0.0.1:9092", "invoker0");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("client.id"), Some("consumer-invoker0"));
    }
}

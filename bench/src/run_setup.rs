//! The controller's side of one benchmark run, shared by the benchmarks that play it through
//! Kafka (`coldstart`, `warm`, `soak`): databases and topics of the run's own (a controller or
//! front door on the same broker never sees the run's invokers, nor routes work to them), a
//! producer for `invoker<N>` and a consumer of the run's `completed<C>`.

use anyhow::Result;
use openwhisk::couchdb::CouchDb;
use openwhisk::kafka::{self, TopicKind};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use testkit::stack::Stack;

/// What [`RunSetup::new`] made; the fields are the run's names and clients.
pub struct RunSetup {
    pub stack: Stack,
    pub db: CouchDb,
    /// This process's id: with the benchmark's short name, every name of the run.
    pub tag: u32,
    /// `<short><tag>_whisks`.
    pub whisks: String,
    /// `<short><tag>_activations`.
    pub activations: String,
    /// The controller instance, `<short><tag>`.
    pub controller: String,
    /// `whisk.kafka.topics.prefix` of the run's invokers, `<short><tag>_`.
    pub topics_prefix: String,
    pub producer: FutureProducer,
    /// Subscribed to `<prefix>completed<controller>`.
    pub acks: StreamConsumer,
}

impl std::fmt::Debug for RunSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSetup")
            .field("stack", &self.stack)
            .field("whisks", &self.whisks)
            .field("activations", &self.activations)
            .field("controller", &self.controller)
            .field("topics_prefix", &self.topics_prefix)
            .finish_non_exhaustive()
    }
}

impl RunSetup {
    /// Creates the run's databases and topics (`completed<C>`, `health`) on the stack, and
    /// its clients. `short` tells benchmarks apart (`cs`, `wm`, `sk`).
    pub async fn new(short: &str) -> Result<Self> {
        let stack = Stack::from_env();
        let db = CouchDb::new(&stack.couchdb)?;
        let tag = std::process::id();
        let (whisks, activations) = (
            format!("{short}{tag}_whisks"),
            format!("{short}{tag}_activations"),
        );
        for d in [&whisks, &activations] {
            if let Err(e) = db.create_db(d).await {
                remove_databases(&db, &whisks, &activations).await;
                return Err(e.into());
            }
        }
        // What follows fails without its databases left behind.
        match Self::clients(short, tag, &stack).await {
            Ok((controller, topics_prefix, producer, acks)) => Ok(Self {
                stack,
                db,
                tag,
                whisks,
                activations,
                controller,
                topics_prefix,
                producer,
                acks,
            }),
            Err(e) => {
                remove_databases(&db, &whisks, &activations).await;
                Err(e)
            }
        }
    }

    /// The run's topics and its clients: the controller, the topics prefix, the producer and
    /// the consumer of `completed<C>`.
    async fn clients(
        short: &str,
        tag: u32,
        stack: &Stack,
    ) -> Result<(String, String, FutureProducer, StreamConsumer)> {
        let admin = kafka::admin_client(&stack.kafka_hosts)?;
        let controller = format!("{short}{tag}");
        let topics_prefix = format!("{short}{tag}_");
        let completed = format!("{topics_prefix}completed{controller}");
        kafka::ensure_topic(&admin, &completed, &TopicKind::Completed.default_config()).await?;
        kafka::ensure_topic(
            &admin,
            &format!("{topics_prefix}health"),
            &TopicKind::Health.default_config(),
        )
        .await?;
        let producer: FutureProducer = kafka::producer_config(&stack.kafka_hosts).create()?;
        let acks: StreamConsumer =
            kafka::consumer_config(&stack.kafka_hosts, &format!("bench-{short}-{tag}")).create()?;
        acks.subscribe(&[&completed])?;
        Ok((controller, topics_prefix, producer, acks))
    }
}

/// Deletes the run's databases (best effort: a benchmark's result does not depend on it).
pub async fn remove_databases(db: &CouchDb, whisks: &str, activations: &str) {
    for d in [whisks, activations] {
        let _ = db.delete_db(d).await;
    }
}

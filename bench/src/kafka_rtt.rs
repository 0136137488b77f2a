//! `bench kafka-rtt`: N sequential round trips produce → group consumer on a fresh topic, with
//! the invoker's own client settings; prints p50/p99/max. This is the floor under every
//! invoker↔controller hop the other benchmarks measure.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use openwhisk::kafka::{self, TopicKind};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use testkit::stack::Stack;

use crate::stats::Summary;

/// Runs `n` round trips against the local stack's broker and prints the summary.
pub async fn run(n: usize) -> Result<()> {
    let stack = Stack::from_env();
    let topic = format!("bench-rtt-{}", std::process::id());
    let admin = kafka::admin_client(&stack.kafka_hosts)?;
    kafka::ensure_topic(&admin, &topic, &TopicKind::Invoker.default_config()).await?;

    let producer: FutureProducer = kafka::producer_config(&stack.kafka_hosts).create()?;
    let consumer: StreamConsumer = kafka::consumer_config(&stack.kafka_hosts, &topic).create()?;
    consumer.subscribe(&[&topic])?;

    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let payload = format!("{{\"i\":{i}}}");
        let start = Instant::now();
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("no message within 30 s")??;
        samples.push(start.elapsed());
        anyhow::ensure!(
            msg.payload() == Some(payload.as_bytes()),
            "round trip {i} got another message"
        );
    }
    let s = Summary::of(&samples).context("no samples")?;
    println!(
        "kafka-rtt n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        s.count,
        s.p50_s * 1e3,
        s.p99_s * 1e3,
        s.max_s * 1e3
    );
    // Close the clients before deleting the topic: librdkafka 2.12 crashes in its metadata cache
    // when a subscribed topic disappears under a live consumer.
    consumer.unsubscribe();
    drop(consumer);
    drop(producer);
    admin
        .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
        .await?;
    Ok(())
}

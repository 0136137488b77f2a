//! The Kafka-API broker of the stack, used the way the invoker uses it: OpenWhisk's topic
//! configuration, a consumer group with manual commits, and a restart that resumes exactly after
//! the committed offset.

mod common;

use std::time::Duration;

use common::{Stack, chain, down, unique};
use openwhisk::kafka::{self, Ensured, MAX_MESSAGE_BYTES, TopicKind};
use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const RECV_TIMEOUT: Duration = Duration::from_secs(20);

async fn recv(consumer: &StreamConsumer) -> (i64, String) {
    let msg = tokio::time::timeout(RECV_TIMEOUT, consumer.recv())
        .await
        .expect("no message within 20 s")
        .expect("consumer error");
    let payload = String::from_utf8(msg.payload().expect("payload").to_vec()).expect("utf-8");
    (msg.offset(), payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoker_topic_group_commit_and_resume() {
    let stack = Stack::from_env();
    let topic = unique("it-invoker");
    let group = topic.clone();
    let admin = kafka::admin_client(&stack.kafka_hosts).expect("admin client");

    // The topic, created as the invoker creates `invoker<N>`; a second ensure finds it.
    let config = TopicKind::Invoker.default_config();
    let first = tokio::time::timeout(
        Stack::COMPONENT_TIMEOUT,
        kafka::ensure_topic(&admin, &topic, &config),
    )
    .await
    .unwrap_or_else(|_| panic!("{}", down("kafka", &stack.kafka_hosts)))
    .unwrap_or_else(|e| panic!("{}", down("kafka", chain(&e))));
    assert_eq!(first, Ensured::Created);
    assert_eq!(
        kafka::ensure_topic(&admin, &topic, &config).await.unwrap(),
        Ensured::Existed
    );

    // The broker kept OpenWhisk's configuration and one partition.
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let resource = described.into_iter().next().unwrap().expect("topic config");
    let max = resource
        .get("max.message.bytes")
        .and_then(|e| e.value.clone());
    assert_eq!(max, Some(MAX_MESSAGE_BYTES.to_string()));
    let retention = resource.get("retention.ms").and_then(|e| e.value.clone());
    assert_eq!(retention.as_deref(), Some("172800000"));
    let producer: FutureProducer = kafka::producer_config(&stack.kafka_hosts).create().unwrap();
    let metadata = producer
        .client()
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 1);

    // Ten records, produced as the controller does: no key, a JSON value.
    for i in 0..10 {
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&format!("{{\"n\":{i}}}")),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    // Consume four in the group and commit after the fourth.
    {
        let consumer: StreamConsumer = kafka::consumer_config(&stack.kafka_hosts, &group)
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        for i in 0..4 {
            let (offset, payload) = recv(&consumer).await;
            assert_eq!((offset, payload), (i, format!("{{\"n\":{i}}}")));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(4))
            .unwrap();
        consumer.commit(&tpl, CommitMode::Sync).expect("commit");
        // Read one more without committing it: it must come again after the restart.
        assert_eq!(recv(&consumer).await.0, 4);
    }

    // A new consumer in the same group resumes right after the committed offset.
    let consumer: StreamConsumer = kafka::consumer_config(&stack.kafka_hosts, &group)
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let (offset, payload) = recv(&consumer).await;
    assert_eq!((offset, payload.as_str()), (4, "{\"n\":4}"));
    drop(consumer);

    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .expect("delete topic");
}

//! `bench activate`: plays the controller against a running invoker, the way OpenWhisk's
//! controller does it: an action document in the whisks database, `ActivationMessage`s on
//! `invoker<N>`, acks read from `completed<C>`. Prints each activation's time from produce to
//! its slot-freeing ack (p50/p99/max), its start kind and the result, and checks each record.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use openwhisk::action::{self, ActionDocument, AttachmentRef, Code, CodeExec, Exec};
use openwhisk::couchdb::CouchDb;
use openwhisk::kafka::{self, TopicKind};
use openwhisk::messages::{
    Ack, ActivationMessage, ControllerInstanceId, FullyQualifiedEntityName, Identity, KeyValue,
    TransactionId, USER_RIGHTS,
};
use openwhisk::time::now_ms;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use testkit::stack::Stack;

use crate::stats::Summary;

/// What to run.
#[derive(Clone, Debug)]
pub struct ActivateParams {
    pub invoker: u32,
    pub controller: String,
    pub count: usize,
    pub whisks_db: String,
    pub activations_db: String,
}

impl Default for ActivateParams {
    fn default() -> Self {
        Self {
            invoker: 0,
            controller: "0".into(),
            count: 10,
            whisks_db: "whisks".into(),
            activations_db: "activations".into(),
        }
    }
}

/// Runs `count` blocking activations of `guest/hello` one after the other.
pub async fn run(p: &ActivateParams) -> Result<()> {
    let stack = Stack::from_env();
    let db = CouchDb::new(&stack.couchdb)?;
    for name in [&p.whisks_db, &p.activations_db] {
        db.create_db(name)
            .await
            .with_context(|| format!("couchdb database {name}"))?;
    }
    let code =
        "function main(p) { console.log('hello', p.name); return {greeting: 'Hello ' + p.name} }";
    let mut doc = ActionDocument::new(
        "guest",
        "hello",
        Exec::Managed(CodeExec {
            kind: "nodejs:default".into(),
            code: Some(Code::Attachment(AttachmentRef::inline(
                code.as_bytes(),
                action::TEXT_CODE_TYPE,
            ))),
            main: None,
            binary: false,
        }),
    );
    doc.annotations = vec![KeyValue {
        key: "provide-api-key".into(),
        value: Value::Bool(false),
    }];
    if let Ok(existing) = db.get_doc(&p.whisks_db, &doc.id).await {
        doc.rev = existing["_rev"].as_str().map(str::to_owned);
    }
    let rev = db
        .put_doc(&p.whisks_db, &doc.id, &doc.to_value())
        .await?
        .rev;
    let user = Identity::guest(&USER_RIGHTS);

    let admin = kafka::admin_client(&stack.kafka_hosts)?;
    let completed = format!("completed{}", p.controller);
    kafka::ensure_topic(&admin, &completed, &TopicKind::Completed.default_config()).await?;
    kafka::ensure_topic(&admin, "health", &TopicKind::Health.default_config()).await?;
    let producer: FutureProducer = kafka::producer_config(&stack.kafka_hosts).create()?;
    let acks: StreamConsumer = kafka::consumer_config(
        &stack.kafka_hosts,
        &format!("bench-activate-{}", std::process::id()),
    )
    .set("auto.offset.reset", "latest")
    .create()?;
    acks.subscribe(&[&completed])?;
    // Let the group settle before producing, so no ack is missed.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let topic = format!("invoker{}", p.invoker);
    let mut samples = Vec::new();
    for i in 0..p.count {
        let id = format!(
            "{:016x}{:016x}",
            std::process::id(),
            i as u64 + now_ms() as u64
        );
        let msg = ActivationMessage::builder(
            TransactionId::new(&format!("bench{id}"), now_ms()),
            FullyQualifiedEntityName::new("guest", "hello").with_version("0.0.1"),
            user.clone(),
            &id,
            ControllerInstanceId::controller(&p.controller),
        )
        .revision(&rev)
        .blocking(true)
        .content(json!({"name": format!("#{i}")}))
        .build()?;
        let started = Instant::now();
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&msg.to_json()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        let mut result = Value::Null;
        let mut init = None;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(120), acks.recv())
                .await
                .with_context(|| format!("no ack for activation {id} within 120 s: is the invoker running with --id {}?", p.invoker))??;
            // Anything that is not an ack is not ours.
            let Ok(ack) = serde_json::from_slice::<Ack>(m.payload().unwrap_or_default()) else {
                continue;
            };
            if ack.activation_id() != id {
                continue;
            }
            if let Some(activation) = ack.record() {
                result = activation.response.result.clone().unwrap_or_default();
                init = activation.annotation("initTime").cloned();
            }
            if ack.frees_slot() {
                break;
            }
        }
        let took = started.elapsed();
        samples.push(took);
        let record = db
            .get_doc(&p.activations_db, &format!("guest/{id}"))
            .await?;
        if record["response"]["result"] != result {
            bail!("the record of {id} does not hold the acked result");
        }
        println!(
            "activation {i:>3}: {:>8.1} ms  {}  result {}  ({} log line(s) stored)",
            took.as_secs_f64() * 1e3,
            if init.is_some() {
                "cold/prewarm"
            } else {
                "warm        "
            },
            result,
            record["logs"].as_array().map_or(0, Vec::len),
        );
    }
    if let Some(s) = Summary::of(&samples) {
        println!(
            "{} activations: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (produce -> completion ack)",
            s.count,
            s.p50_s * 1e3,
            s.p99_s * 1e3,
            s.max_s * 1e3
        );
    }
    Ok(())
}

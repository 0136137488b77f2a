//! `bench activate`: plays the controller against a running invoker, the way OpenWhisk's
//! controller does it: an action document in the whisks database, `ActivationMessage`s on
//! `invoker<N>`, acks read from `completed<C>`. Prints each activation's time from produce to
//! its slot-freeing ack (p50/p99/max), its start kind and the result, and checks each record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use invoker::couchdb::CouchDb;
use invoker::kafka::{self, TopicKind};
use invoker::stack::Stack;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::stats::Summary;

const GUEST_UUID: &str = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502";
const GUEST_KEY: &str = "123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";

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
    let mut doc = json!({
        "_id": "guest/hello", "entityType": "action", "namespace": "guest", "name": "hello",
        "exec": {"kind": "nodejs:default", "binary": false, "code": {
            "attachmentName": format!("mem:{}", base64::engine::general_purpose::URL_SAFE.encode(code)),
            "attachmentType": "text/plain; charset=UTF-8"}},
        "parameters": [], "limits": {"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1},
        "version": "0.0.1", "publish": false, "annotations": [{"key": "provide-api-key", "value": false}]
    });
    if let Ok(existing) = db.get_doc(&p.whisks_db, "guest/hello").await {
        doc["_rev"] = existing["_rev"].clone();
    }
    let rev = db.put_doc(&p.whisks_db, "guest/hello", &doc).await?.rev;

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
        let msg = json!({
            "transid": [format!("bench{id}"), now_ms()],
            "action": {"path": "guest", "name": "hello", "version": "0.0.1"},
            "revision": rev,
            "user": {"subject": "guest", "namespace": {"name": "guest", "uuid": GUEST_UUID},
                     "authkey": {"api_key": format!("{GUEST_UUID}:{GUEST_KEY}")},
                     "rights": ["READ", "PUT", "DELETE", "ACTIVATE"], "limits": {}},
            "activationId": id,
            "rootControllerIndex": {"asString": p.controller, "instanceType": "controller"},
            "blocking": true,
            "content": {"name": format!("#{i}")},
            "initArgs": [], "lockedArgs": {},
        });
        let started = Instant::now();
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&msg.to_string()),
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
            let v: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
            let about = v["activationId"]
                .as_str()
                .or(v["response"]["activationId"].as_str())
                .or(v["response"].as_str());
            if about != Some(id.as_str()) {
                continue;
            }
            if let Some(activation) = v["response"].as_object() {
                result = activation["response"]["result"].clone();
                let anns: HashMap<String, Value> =
                    serde_json::from_value::<Vec<invoker::messages::KeyValue>>(
                        activation["annotations"].clone(),
                    )
                    .unwrap_or_default()
                    .into_iter()
                    .map(|kv| (kv.key, kv.value))
                    .collect();
                init = anns.get("initTime").cloned();
            }
            if v.get("instance").is_some() {
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0)
}

//! The invoker binary end to end against the real broker, CouchDB-API server and dockerd. The
//! test plays the controller: it writes action documents the way the controller stores them,
//! produces `ActivationMessage`s into `invoker<N>` exactly as a controller writes them, and
//! asserts what arrives on `completed<C>` and `health` and in the activations database.
//!
//! Each run uses its own invoker id, controller id and databases, so runs never see each
//! other's messages or documents.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Stack, chain, down};
use invoker::couchdb::CouchDb;
use invoker::kafka::{self, TopicKind};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

const GUEST_UUID: &str = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502";
const GUEST_KEY: &str = "123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";

struct Harness {
    id: u32,
    controller: String,
    whisks: String,
    activations: String,
    db: CouchDb,
    producer: FutureProducer,
    acks: StreamConsumer,
    health: StreamConsumer,
    invoker: Child,
    /// Acks received but not yet claimed, by activation id.
    seen: HashMap<String, Vec<Value>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // SIGTERM: the invoker drains and removes its containers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.invoker.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.invoker.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.invoker.kill();
        let _ = self.invoker.wait();
    }
}

fn mem_code(code: &str) -> Value {
    json!({
        "attachmentName": format!("mem:{}", base64::engine::general_purpose::URL_SAFE.encode(code)),
        "attachmentType": "text/plain; charset=UTF-8",
    })
}

fn action_doc(name: &str, kind: &str, code: &str, timeout_ms: u64) -> Value {
    json!({
        "_id": format!("guest/{name}"),
        "entityType": "action",
        "namespace": "guest",
        "name": name,
        "updated": 1_714_559_000_000_i64,
        "exec": {"kind": kind, "binary": false, "code": mem_code(code)},
        "parameters": [],
        "limits": {"timeout": timeout_ms, "memory": 256, "logs": 10, "concurrency": 1},
        "version": "0.0.1",
        "publish": false,
        "annotations": [{"key": "provide-api-key", "value": false}, {"key": "exec", "value": kind}],
    })
}

impl Harness {
    async fn start() -> Self {
        let stack = Stack::from_env();
        let id = 100 + (std::process::id() % 800);
        let tag = format!("{id}x{}", std::process::id());
        let controller = format!("t{tag}");
        let whisks = format!("t{tag}_whisks");
        let activations = format!("t{tag}_activations");
        let db = CouchDb::new(&stack.couchdb).unwrap();
        for name in [&whisks, &activations] {
            db.create_db(name)
                .await
                .unwrap_or_else(|e| panic!("{}", down("couchdb", chain(&e))));
        }
        let admin = kafka::admin_client(&stack.kafka_hosts).unwrap();
        for (topic, kind) in [
            (format!("completed{controller}"), TopicKind::Completed),
            ("health".to_owned(), TopicKind::Health),
        ] {
            kafka::ensure_topic(&admin, &topic, &kind.default_config())
                .await
                .unwrap_or_else(|e| panic!("{}", down("kafka", chain(&e))));
        }
        // `completed<C>` is this run's own topic: read it from the start. `health` is shared.
        let consumer = |topic: &str| {
            let reset = if topic == "health" {
                "latest"
            } else {
                "earliest"
            };
            let c: StreamConsumer =
                kafka::consumer_config(&stack.kafka_hosts, &format!("test-{tag}-{topic}"))
                    .set("auto.offset.reset", reset)
                    .create()
                    .unwrap();
            c.subscribe(&[topic]).unwrap();
            c
        };
        let acks = consumer(&format!("completed{controller}"));
        let health = consumer("health");
        let producer: FutureProducer = kafka::producer_config(&stack.kafka_hosts).create().unwrap();
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../runtimes/runtimes.json");
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        let invoker = Command::new(env!("CARGO_BIN_EXE_invoker"))
            .args(["--id", &id.to_string(), "--uniqueName", &format!("e2e{id}")])
            .env("KAFKA_HOSTS", &stack.kafka_hosts)
            .env("RUNTIMES_MANIFEST", manifest)
            .env("PORT", port.to_string())
            .env(
                "CONFIG_whisk_couchdb_port",
                stack.couchdb.url.rsplit(':').next().unwrap(),
            )
            .env("CONFIG_whisk_couchdb_username", &stack.couchdb.username)
            .env("CONFIG_whisk_couchdb_password", &stack.couchdb.password)
            .env("CONFIG_whisk_couchdb_databases_WhiskEntity", &whisks)
            .env(
                "CONFIG_whisk_couchdb_databases_WhiskActivation",
                &activations,
            )
            .env("CONFIG_whisk_containerPool_userMemory", "1024 m")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the invoker binary");
        let mut h = Self {
            id,
            controller,
            whisks,
            activations,
            db,
            producer,
            acks,
            health,
            invoker,
            seen: HashMap::new(),
        };
        // Ready when it pings.
        let ping = h.next_ping(Duration::from_secs(60)).await;
        assert_eq!(ping["name"]["instance"], json!(id));
        assert_eq!(ping["name"]["userMemory"], json!("1073741824 B"));
        h
    }

    async fn next_ping(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.health.recv())
                .await
                .expect("no ping from the invoker")
                .unwrap();
            let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            if v["name"]["instance"] == json!(self.id) {
                return v;
            }
        }
    }

    async fn put_action(&self, doc: &Value) -> String {
        let id = doc["_id"].as_str().unwrap();
        self.db.put_doc(&self.whisks, id, doc).await.unwrap().rev
    }

    /// Produces an activation as the controller writes it; returns its activation id.
    async fn invoke(
        &self,
        name: &str,
        rev: Option<&str>,
        blocking: bool,
        content: Value,
    ) -> String {
        let activation_id = format!("{:032x}", rand_u128());
        let msg = json!({
            "transid": [format!("tx{activation_id}"), 1_714_560_000_123_i64],
            "action": {"path": "guest", "name": name, "version": "0.0.1"},
            "revision": rev,
            "user": {"subject": "guest", "namespace": {"name": "guest", "uuid": GUEST_UUID},
                     "authkey": {"api_key": format!("{GUEST_UUID}:{GUEST_KEY}")},
                     "rights": ["READ", "PUT", "DELETE", "ACTIVATE"], "limits": {}},
            "activationId": activation_id,
            "rootControllerIndex": {"asString": self.controller, "instanceType": "controller"},
            "blocking": blocking,
            "content": content,
            "initArgs": [],
            "lockedArgs": {},
        });
        self.produce(&msg.to_string()).await;
        activation_id
    }

    async fn produce(&self, payload: &str) {
        let topic = format!("invoker{}", self.id);
        self.producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    /// The next `n` acks of `activation_id`, in arrival order.
    async fn acks_of(&mut self, activation_id: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if self.seen.get(activation_id).is_some_and(|v| v.len() >= n) {
                return self.seen.remove(activation_id).unwrap();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.acks.recv())
                .await
                .unwrap_or_else(|_| panic!("no ack for {activation_id}; have {:?}", self.seen))
                .unwrap();
            let raw = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            let v: Value = serde_json::from_str(&raw).unwrap();
            let id = match (&v["response"], &v["activationId"]) {
                (Value::String(s), _) => s.clone(),
                (Value::Object(o), _) => o["activationId"].as_str().unwrap().to_owned(),
                (_, Value::String(s)) => s.clone(),
                _ => panic!("unexpected ack {raw}"),
            };
            // The transid comes back byte for byte.
            assert!(
                raw.contains(&format!(r#""transid":["tx{id}",1714560000123]"#)),
                "{raw}"
            );
            self.seen.entry(id).or_default().push(v);
        }
    }

    async fn record(&self, activation_id: &str) -> Value {
        let id = format!("guest/{activation_id}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.db.get_doc(&self.activations, &id).await {
                Ok(doc) => return doc,
                Err(e) if Instant::now() > deadline => panic!("no record {id}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let b = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (u128::from(a) << 64) | u128::from(b)
}

fn annotation(activation: &Value, key: &str) -> Option<Value> {
    activation["annotations"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| a["value"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_invoker_answers_a_controller_like_the_scala_one() {
    let mut h = Harness::start().await;

    // Node.js, blocking, with logs: a result ack, then a completion ack; the record holds the
    // logs formatted as `<time> stdout: <line>`.
    let rev = h
        .put_action(&action_doc(
            "hello",
            "nodejs:default",
            "function main(p) { console.log('hello from', p.name); return {payload: 'Hello ' + p.name} }",
            10_000,
        ))
        .await;
    let a = h
        .invoke("hello", Some(&rev), true, json!({"name": "World"}))
        .await;
    let acks = h.acks_of(&a, 2).await;
    assert!(
        acks[0].get("instance").is_none(),
        "result first: {:?}",
        acks[0]
    );
    assert_eq!(
        acks[0]["response"]["response"]["result"],
        json!({"payload": "Hello World"})
    );
    assert_eq!(acks[0]["response"]["response"]["statusCode"], json!(0));
    assert_eq!(acks[1]["activationId"], json!(a));
    assert_eq!(acks[1]["isSystemError"], json!(false));
    assert_eq!(acks[1]["instance"]["instance"], json!(h.id));
    let first = &acks[0]["response"];
    assert!(
        annotation(first, "initTime").is_some(),
        "a cold start has initTime"
    );
    assert_eq!(annotation(first, "kind"), Some(json!("nodejs:18")));
    assert_eq!(annotation(first, "path"), Some(json!("guest/hello")));
    let record = h.record(&a).await;
    assert_eq!(record["entityType"], json!("activation"));
    let logs: Vec<String> = serde_json::from_value(record["logs"].clone()).unwrap();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].ends_with(" stdout: hello from World"), "{logs:?}");
    assert_eq!(
        logs[0].find(" stdout").unwrap(),
        30,
        "time padded to 30: {logs:?}"
    );

    // Warm: the same action again runs without init.
    let a = h
        .invoke("hello", Some(&rev), true, json!({"name": "again"}))
        .await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(
        acks[0]["response"]["response"]["result"]["payload"],
        json!("Hello again")
    );
    assert!(
        annotation(&acks[0]["response"], "initTime").is_none(),
        "warm runs have no initTime"
    );

    // Non-blocking: only a completion ack.
    let a = h
        .invoke("hello", Some(&rev), false, json!({"name": "nb"}))
        .await;
    let acks = h.acks_of(&a, 1).await;
    assert!(acks[0].get("response").is_none() && acks[0]["activationId"] == json!(a));
    assert_eq!(
        h.record(&a).await["response"]["result"]["payload"],
        json!("Hello nb")
    );

    // Python.
    let rev_py = h
        .put_action(&action_doc(
            "py",
            "python:3.11",
            "def main(args):\n    return {'sum': args['a'] + args['b']}\n",
            10_000,
        ))
        .await;
    let a = h
        .invoke("py", Some(&rev_py), true, json!({"a": 2, "b": 3}))
        .await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(acks[0]["response"]["response"]["result"], json!({"sum": 5}));

    // Application error: status 1, the container is kept.
    let rev_app = h
        .put_action(&action_doc(
            "apperr",
            "nodejs:default",
            "function main() { return {error: 'nope'} }",
            10_000,
        ))
        .await;
    let a = h.invoke("apperr", Some(&rev_app), true, json!({})).await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(
        acks[0]["response"]["response"],
        json!({"statusCode": 1, "result": {"error": "nope"}, "size": 16})
    );

    // Developer errors: output that is not JSON, a failed init, a timeout.
    let rev_bad = h
        .put_action(&action_doc(
            "notjson",
            "nodejs:default",
            "function main() { return 42 }",
            10_000,
        ))
        .await;
    let a = h.invoke("notjson", Some(&rev_bad), true, json!({})).await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(acks[0]["response"]["response"]["statusCode"], json!(2));
    let rev_init = h
        .put_action(&action_doc(
            "badinit",
            "nodejs:default",
            "this is not javascript(",
            10_000,
        ))
        .await;
    let a = h.invoke("badinit", Some(&rev_init), true, json!({})).await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(acks[0]["response"]["response"]["statusCode"], json!(2));
    let rev_slow = h
        .put_action(&action_doc(
            "slow",
            "nodejs:default",
            "function main() { return new Promise(r => setTimeout(() => r({}), 5000)) }",
            1_000,
        ))
        .await;
    let a = h.invoke("slow", Some(&rev_slow), true, json!({})).await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(
        acks[0]["response"]["response"]["result"]["error"],
        json!("The action exceeded its time limits of 1000 milliseconds.")
    );
    assert_eq!(
        annotation(&acks[0]["response"], "timeout"),
        Some(json!(true))
    );

    // Action not found: one combined ack, status 1, the controller's message; stored.
    let a = h.invoke("missing", Some("1-abc"), true, json!({})).await;
    let acks = h.acks_of(&a, 1).await;
    assert_eq!(
        acks[0]["response"]["response"],
        json!({"statusCode": 1, "result": {"error": "Action could not be found or may have been deleted."}})
    );
    assert_eq!(acks[0]["instance"]["instance"], json!(h.id));
    // Non-blocking errors are shrunk to the id.
    let a = h.invoke("missing", None, false, json!({})).await;
    let acks = h.acks_of(&a, 1).await;
    assert_eq!(acks[0]["response"], json!(a));

    // A sequence is refused as a whisk error.
    let seq = json!({"_id": "guest/seq", "entityType": "action", "namespace": "guest", "name": "seq",
        "exec": {"kind": "sequence", "components": ["/guest/hello"]}, "parameters": [],
        "limits": {"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1},
        "version": "0.0.1", "publish": false, "annotations": []});
    let rev_seq = h.put_action(&seq).await;
    let a = h.invoke("seq", Some(&rev_seq), true, json!({})).await;
    let acks = h.acks_of(&a, 1).await;
    assert_eq!(acks[0]["isSystemError"], json!(true));
    assert_eq!(
        acks[0]["response"]["response"]["result"]["error"],
        json!("Action could not be fetched.")
    );

    // A malformed message is skipped and nothing gets stuck.
    h.produce("{this is not json").await;
    let a = h
        .invoke("hello", Some(&rev), true, json!({"name": "after"}))
        .await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(
        acks[0]["response"]["response"]["result"]["payload"],
        json!("Hello after")
    );

    // The controller's health-check activation: `whisk.system`, `revision: null`, no content.
    let health_action = json!({"_id": "whisk.system/invokerHealthTestAction0", "entityType": "action",
        "namespace": "whisk.system", "name": "invokerHealthTestAction0",
        "exec": {"kind": "nodejs:default", "code": mem_code("function main(params) { return params; }")},
        "parameters": [], "limits": {"timeout": 60000, "memory": 128, "logs": 10, "concurrency": 1},
        "version": "0.0.1", "publish": false, "annotations": []});
    h.db.put_doc(
        &h.whisks,
        "whisk.system/invokerHealthTestAction0",
        &health_action,
    )
    .await
    .unwrap();
    let activation_id = format!("{:032x}", rand_u128());
    let probe = format!(
        r#"{{"transid":["sid_invokerHealth",1714559990000],"action":{{"path":"whisk.system","name":"invokerHealthTestAction0","version":"0.0.1"}},"revision":null,"user":{{"subject":"whisk.system","namespace":{{"name":"whisk.system","uuid":"{GUEST_UUID}"}},"authkey":{{"api_key":"{GUEST_UUID}:{GUEST_KEY}"}},"rights":[],"limits":{{}}}},"activationId":"{activation_id}","rootControllerIndex":{{"asString":"{}","instanceType":"controller"}},"blocking":false,"initArgs":[],"lockedArgs":{{}}}}"#,
        h.controller
    );
    h.produce(&probe).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let m = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            h.acks.recv(),
        )
        .await
        .expect("no ack for the health probe")
        .unwrap();
        let raw = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
        if raw.contains(&activation_id) {
            assert!(
                raw.contains(r#""transid":["sid_invokerHealth",1714559990000]"#),
                "{raw}"
            );
            let v: Value = serde_json::from_str(&raw).unwrap();
            assert_eq!(v["isSystemError"], json!(false), "{raw}");
            break;
        }
    }

    // Still pinging.
    let ping = h.next_ping(Duration::from_secs(5)).await;
    assert!(ping.get("isEnabled").is_none() || ping["isEnabled"] == json!(true));
    for db in [&h.whisks, &h.activations] {
        let _ = h.db.delete_db(db).await;
    }
}

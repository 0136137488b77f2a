//! The front door end to end, against the local stack (`scripts/stack.sh up`): a real invoker
//! process, the front door process, tansu, pouchdb-server and dockerd. One test drives it with
//! the real `openwhisk` npm client (`tests/npm/e2e.js`), the other checks the HTTP details a
//! client library hides (status codes, headers, list filters, 202 on a blocking timeout).
//!
//! Each test has its own Kafka topic prefix, databases, invoker id and ports, so they run side by
//! side and next to other suites. A component that is down fails the test with its name.

#[path = "../../invoker/tests/common/native.rs"]
mod native;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use openwhisk::couchdb::CouchDb;
use serde_json::{Value, json};
use testkit::invoker::{InvokerCommand, InvokerProcess, free_port};
use testkit::stack::Stack;

const GUEST: &str = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";
const WHISK_SYSTEM: &str = "789c46b1-71f6-4ed5-8c54-816aa4f8c502:abczO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";

fn down(component: &str, detail: impl std::fmt::Display) -> String {
    format!("{component} is not reachable ({detail}); start the stack with `scripts/stack.sh up`")
}

/// The invoker binary of this build (built here: this crate cannot name another crate's binary).
fn invoker_binary() -> std::path::PathBuf {
    let standalone = std::path::PathBuf::from(env!("CARGO_BIN_EXE_standalone"));
    let dir = standalone.parent().unwrap().to_owned();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "invoker", "--bin", "invoker"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("cargo").success(),
        "building the invoker failed"
    );
    dir.join("invoker")
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// An invoker and a front door sharing a topic prefix and databases of their own.
struct Door {
    api: String,
    prefix: String,
    dbs: [String; 3],
    invokers: Vec<InvokerProcess>,
    door: Child,
}

impl Drop for Door {
    fn drop(&mut self) {
        stop(&mut self.door);
        for i in &mut self.invokers {
            i.stop();
        }
        let dbs = self.dbs.clone();
        // Best effort: the databases are this run's own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let db = CouchDb::new(&Stack::from_env().couchdb).unwrap();
                for d in &dbs {
                    let _ = db.delete_db(d).await;
                }
            });
        })
        .join();
    }
}

impl Door {
    /// An invoker per id (`--uniqueName` = the id) and the front door.
    async fn start(tag: &str, ids: &[u32], user_memory: &str) -> Self {
        let stack = Stack::from_env();
        let db = CouchDb::new(&stack.couchdb).unwrap();
        db.server_info()
            .await
            .unwrap_or_else(|e| panic!("{}", down("couchdb", e)));
        let prefix = format!("fd{tag}{}_", std::process::id());
        let dbs = [
            format!("{prefix}whisks"),
            format!("{prefix}activations"),
            format!("{prefix}subjects"),
        ];
        let couch_port = stack.couchdb.url.rsplit(':').next().unwrap().to_owned();
        let common = [
            ("KAFKA_HOSTS", stack.kafka_hosts.clone()),
            (
                "RUNTIMES_MANIFEST",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../runtimes/runtimes.json").to_owned(),
            ),
            ("CONFIG_whisk_kafka_topics_prefix", prefix.clone()),
            ("CONFIG_whisk_couchdb_port", couch_port),
            (
                "CONFIG_whisk_couchdb_username",
                stack.couchdb.username.clone(),
            ),
            (
                "CONFIG_whisk_couchdb_password",
                stack.couchdb.password.expose().to_owned(),
            ),
            ("CONFIG_whisk_couchdb_databases_WhiskEntity", dbs[0].clone()),
            (
                "CONFIG_whisk_couchdb_databases_WhiskActivation",
                dbs[1].clone(),
            ),
            ("CONFIG_whisk_couchdb_databases_WhiskAuth", dbs[2].clone()),
        ];
        let binary = invoker_binary();
        let invokers = ids
            .iter()
            .map(|id| {
                InvokerCommand::new(&binary, &stack, *id, &id.to_string())
                    .envs(common.iter().map(|(k, v)| (k, v.clone())))
                    .port(free_port())
                    .env("CONFIG_whisk_containerPool_userMemory", user_memory)
                    .spawn()
                    .expect("start the invoker")
            })
            .collect();
        let port = free_port();
        let door = Command::new(env!("CARGO_BIN_EXE_standalone"))
            .args(["--port", &port.to_string(), "--controller", "0"])
            .envs(common.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the front door");
        let d = Self {
            api: format!("http://127.0.0.1:{port}"),
            prefix,
            dbs,
            invokers,
            door,
        };
        // Ready when the front door has seen every invoker's ping.
        let deadline = Instant::now() + Duration::from_secs(90);
        for id in ids {
            let want = format!("invoker{id}/{id}");
            loop {
                if let Ok(r) = reqwest::get(format!("{}/invokers", d.api)).await
                    && let Ok(v) = r.json::<Value>().await
                    && v[&want] == "up"
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the front door never listed {want} as up (kafka at {})",
                    stack.kafka_hosts
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        d
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.api));
        if let Some(a) = auth {
            req = req.header(
                "Authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(a)
                ),
            );
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, v)
    }

    async fn guest(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        self.call(
            method,
            &format!("/api/v1/namespaces/_{path}"),
            Some(GUEST),
            body,
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openwhisk_npm_client_works_end_to_end() {
    let node_path = std::env::var("WHISK_OPENWHISK_NODE_PATH")
        .unwrap_or_else(|_| "/opt/whisk-tools/openwhisk-3.21.9/node_modules".to_owned());
    assert!(
        std::path::Path::new(&node_path)
            .join("openwhisk/package.json")
            .exists(),
        "the openwhisk npm client is not installed at {node_path}; `scripts/stack.sh up` installs it"
    );
    // 50 concurrent 128 MB actions, and room for the stem cells.
    let door = Door::start("n", &[610 + std::process::id() % 40], "8 g").await;
    let dir = std::env::temp_dir().join(format!("{}native", door.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let zip = dir.join("native.zip");
    std::fs::write(&zip, native::native_zip()).unwrap();
    let hello_wat = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../unikernel/functions/hello.wat"
    );
    let wasm_zip = dir.join("wasm.zip");
    {
        use std::io::Write as _;
        let module = wat::parse_file(hello_wat).expect("unikernel/functions/hello.wat");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&wasm_zip).unwrap());
        z.start_file("main.wasm", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(&module).unwrap();
        z.finish().unwrap();
    }
    let out = tokio::process::Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/npm/e2e.js"))
        .env("NODE_PATH", &node_path)
        .env("APIHOST", &door.api)
        .env("AUTH", GUEST)
        .env("WHISK_SYSTEM_AUTH", WHISK_SYSTEM)
        .env("NATIVE_ZIP", &zip)
        .env("WASM_WAT", hello_wat)
        .env("WASM_ZIP", &wasm_zip)
        .output()
        .await
        .expect("node");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "the npm client's checks failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_answers_like_the_controller() {
    use reqwest::Method;
    // Two invokers: work is spread over the healthy ones.
    let base = 700 + (std::process::id() % 40) * 2;
    let door = Door::start("r", &[base, base + 1], "1 g").await;
    let (s, _, v) = door.call(Method::GET, "/invokers", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(v[format!("invoker{base}/{base}")], "up", "{v}");
    assert_eq!(v[format!("invoker{}/{}", base + 1, base + 1)], "up", "{v}");

    // Authentication.
    let (s, _, v) = door
        .call(Method::GET, "/api/v1/namespaces", None, None)
        .await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"], "The supplied authentication is invalid.");
    assert!(v["code"].is_string());
    let (s, _, v) = door
        .call(Method::GET, "/api/v1/namespaces", Some(GUEST), None)
        .await;
    assert_eq!((s, v), (200, json!(["guest"])));
    let (s, _, _) = door
        .call(
            Method::GET,
            "/api/v1/namespaces/whisk.system/actions",
            Some(GUEST),
            None,
        )
        .await;
    assert_eq!(s, 403, "another namespace");

    // Validation of actions.
    let bad_kind = json!({"exec": {"kind": "cobol:85", "code": "x"}});
    let (s, _, v) = door.guest(Method::PUT, "/actions/x", Some(&bad_kind)).await;
    assert_eq!(s, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("The specified runtime 'cobol:85' is not supported"),
        "{v}"
    );
    let too_big =
        json!({"exec": {"kind": "nodejs:default", "code": "x"}, "limits": {"memory": 100000}});
    let (s, _, v) = door.guest(Method::PUT, "/actions/x", Some(&too_big)).await;
    assert_eq!(s, 400, "{v}");

    // An action with a default parameter, an init parameter and code above the inline size
    // (stored as a CouchDB attachment).
    let code = format!(
        "// {}\nfunction main(p) {{ return {{greeting: p.greeting + ' ' + p.name, key: process.env.__OW_API_KEY || null, token: p.token || null}} }}",
        "x".repeat(20_000)
    );
    let action = json!({
        "exec": {"kind": "nodejs:default", "code": code},
        "parameters": [{"key": "greeting", "value": "Hi"}, {"key": "token", "value": "s3cret", "init": true}],
        "limits": {"timeout": 5000, "memory": 128},
        "annotations": [{"key": "description", "value": "greets"}]
    });
    let (s, _, v) = door
        .guest(Method::PUT, "/actions/greet", Some(&action))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["limits"],
        json!({"timeout": 5000, "memory": 128, "logs": 10, "concurrency": 1})
    );
    assert_eq!(v["exec"]["code"], json!(code), "the attachment reads back");
    let (_, _, v) = door
        .guest(Method::GET, "/actions/greet?code=false", None)
        .await;
    assert!(v["exec"].get("code").is_none(), "{v}");
    // An update without exec keeps the code (and its attachment) and bumps the version.
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/actions/greet?overwrite=true",
            Some(&json!({"annotations": [{"key": "description", "value": "greets warmly"}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["version"], "0.0.2");
    assert_eq!(
        v["exec"]["code"],
        json!(code),
        "the attachment survives an update"
    );
    assert_eq!(v["parameters"][0]["value"], "Hi", "parameters are kept");

    // Blocking with result=true, as `wsk action invoke --result` sends it: the action's default
    // parameter merged under the request's, the init parameter not passed to the run, no API key.
    let (s, h, v) = door
        .guest(
            Method::POST,
            "/actions/greet?blocking=true&result=true",
            Some(&json!({"name": "Ada"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"greeting": "Hi Ada", "key": null, "token": null}));
    let id = h["x-openwhisk-activation-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);

    // Blocking without result: the extended record.
    let (s, h, v) = door
        .guest(
            Method::POST,
            "/actions/greet?blocking=true",
            Some(&json!({"name": "Bo"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["response"]["status"], "success");
    assert_eq!(v["response"]["success"], true);
    assert!(v["response"].get("statusCode").is_none());
    assert_eq!(
        v["activationId"],
        h["x-openwhisk-activation-id"].to_str().unwrap()
    );
    assert_eq!(v["namespace"], "guest");

    // A developer error (a timeout) is a 502; a blocking wait shorter than the run is a 202.
    let slow = json!({"exec": {"kind": "nodejs:default", "code": "function main(p) { return new Promise(r => setTimeout(() => r({done: true}), p.ms)) }"}, "limits": {"timeout": 3000}});
    let (s, _, _) = door.guest(Method::PUT, "/actions/slow", Some(&slow)).await;
    assert_eq!(s, 200);
    let (s, _, v) = door
        .guest(
            Method::POST,
            "/actions/slow?blocking=true",
            Some(&json!({"ms": 10000})),
        )
        .await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(v["response"]["status"], "action developer error");
    let (s, h, v) = door
        .guest(
            Method::POST,
            "/actions/slow?blocking=true&timeout=500",
            Some(&json!({"ms": 2000})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let late = v["activationId"].as_str().unwrap().to_owned();
    assert_eq!(h["x-openwhisk-activation-id"].to_str().unwrap(), late);

    // Non-blocking: 202 and the id; the record shows up later.
    let (s, _, v) = door
        .guest(Method::POST, "/actions/greet", Some(&json!({"name": "Cy"})))
        .await;
    assert_eq!(s, 202);
    let nb = v["activationId"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let (s, _, v) = door
            .guest(Method::GET, &format!("/activations/{nb}"), None)
            .await;
        if s == 200 {
            break v;
        }
        assert_eq!(s, 404, "{v}");
        assert!(
            Instant::now() < deadline,
            "the non-blocking record never appeared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(record["response"]["result"]["greeting"], "Hi Cy");

    // Lists: newest first, filtered by name and time, counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, v) = door
            .guest(Method::GET, "/activations?name=slow&count=true", None)
            .await;
        if v["activations"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "slow's records: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, _, all) = door
        .guest(Method::GET, "/activations?limit=200", None)
        .await;
    let all = all.as_array().unwrap().clone();
    // greet three times, slow twice ("nope" was never produced).
    assert_eq!(all.len(), 5, "{all:#?}");
    let starts: Vec<i64> = all.iter().map(|a| a["start"].as_i64().unwrap()).collect();
    assert!(
        starts.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {starts:?}"
    );
    assert!(
        all.iter()
            .all(|a| a.get("logs").is_none() && a["statusCode"].is_u64())
    );
    let (_, _, page) = door
        .guest(Method::GET, "/activations?limit=2&skip=1", None)
        .await;
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert_eq!(page[0]["activationId"], all[1]["activationId"]);
    let since = starts[2];
    let (_, _, recent) = door
        .guest(Method::GET, &format!("/activations?since={since}"), None)
        .await;
    assert!(
        recent
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["start"].as_i64().unwrap() >= since)
    );
    let (_, _, old) = door
        .guest(
            Method::GET,
            &format!("/activations?upto={}", starts[3]),
            None,
        )
        .await;
    assert_eq!(old.as_array().unwrap().len(), 2);
    let (s, _, v) = door
        .guest(Method::GET, &format!("/activations/{late}/result"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["result"],
        json!({"done": true}),
        "the 202'd activation finished"
    );
    let (s, _, _) = door
        .guest(
            Method::GET,
            "/activations/0123456789abcdef0123456789abcdef",
            None,
        )
        .await;
    assert_eq!(s, 404);

    // Unknown action, then delete.
    let (s, _, v) = door
        .guest(Method::POST, "/actions/nope?blocking=true", None)
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("The requested resource does not exist."))
    );
    let (s, _, _) = door.guest(Method::DELETE, "/actions/greet", None).await;
    assert_eq!(s, 200);
    let (s, _, _) = door.guest(Method::DELETE, "/actions/greet", None).await;
    assert_eq!(s, 404);
    let (s, _, _) = door.call(Method::GET, "/ping", None, None).await;
    assert_eq!(s, 200);
    let (s, _, text) = door.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, 200);
    let text = text.as_str().unwrap_or_default().to_owned();
    for line in [
        r#"standalone_invocations_total{blocking="true",outcome="success"} 2"#,
        r#"standalone_invocations_total{blocking="true",outcome="action_developer_error"} 1"#,
        r#"standalone_invocations_total{blocking="true",outcome="accepted"} 1"#,
        r#"standalone_invocations_total{blocking="false",outcome="accepted"} 1"#,
        r#"standalone_invocations_total{blocking="true",outcome="not_found"} 1"#,
        r#"standalone_invokers{state="up"} 2"#,
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }

    // Twelve distinct actions land on both invokers (each action has a stable home): both
    // have action containers now.
    let echo = json!({"exec": {"kind": "nodejs:default", "code": "function main(p) { return p }"}, "limits": {"memory": 128}});
    let mut calls = Vec::new();
    let door = &door;
    for i in 0..12 {
        let (s, _, _) = door
            .guest(Method::PUT, &format!("/actions/echo{i}"), Some(&echo))
            .await;
        assert_eq!(s, 200);
        calls.push(async move {
            door.guest(
                Method::POST,
                &format!("/actions/echo{i}?blocking=true&result=true"),
                Some(&json!({"i": i})),
            )
            .await
        });
    }
    for (i, (s, _, v)) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!((s, v), (200, json!({"i": i})));
    }
    let docker = bollard::Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    for id in [base, base + 1] {
        let prefix = format!("wsk{id}{id}_");
        let filters = std::collections::HashMap::from([("name", vec![prefix.clone()])]);
        let list = docker
            .list_containers(Some(
                bollard::query_parameters::ListContainersOptionsBuilder::new()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap();
        let echoes = list
            .iter()
            .filter(|c| {
                c.names
                    .iter()
                    .flatten()
                    .any(|n| n.starts_with(&format!("/{prefix}")) && n.contains("echo"))
            })
            .count();
        assert!(echoes > 0, "invoker {id} ran none of the 12 actions");
    }
}

/// Polls `GET /activations/<id>` until the record is there.
async fn record_of(door: &Door, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, _, v) = door
            .guest(reqwest::Method::GET, &format!("/activations/{id}"), None)
            .await;
        if s == 200 {
            return v;
        }
        assert_eq!(s, 404, "{v}");
        assert!(Instant::now() < deadline, "activation {id} never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn annotation<'a>(record: &'a Value, key: &str) -> &'a Value {
    record["annotations"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == key))
        .map_or(&Value::Null, |kv| &kv["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_sequences_web_actions_and_triggers_answer_like_the_controller() {
    use reqwest::Method;
    let door = Door::start("e", &[900 + std::process::id() % 40], "2 g").await;
    let echo = json!({"exec": {"kind": "nodejs:default", "code": "function main(p) { return p }"}});

    // Packages: the reserved name, bindings, actions inside, delete with and without force.
    let (s, _, v) = door.guest(Method::PUT, "/packages/default", None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("Package name 'default' is reserved."))
    );
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/packages/p",
            Some(&json!({"parameters": [{"key": "from", "value": "package"}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["binding"], json!({}));
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/packages/p?overwrite=true",
            Some(&json!({"binding": {"namespace": "_", "name": "p"}})),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (
            409,
            Some("Resource is a package and cannot be converted into a binding.")
        )
    );
    let (s, _, _) = door
        .guest(Method::PUT, "/actions/nopkg/a", Some(&echo))
        .await;
    assert_eq!(s, 404, "an action in a package that does not exist");
    let (s, _, _) = door
        .guest(Method::PUT, "/actions/p/echo", Some(&echo))
        .await;
    assert_eq!(s, 200);
    let (s, _, _) = door.guest(Method::PUT, "/actions/top", Some(&echo)).await;
    assert_eq!(s, 200);
    let (_, _, v) = door.guest(Method::GET, "/actions/p/", None).await;
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo"], "one package's actions");
    let (_, _, v) = door.guest(Method::GET, "/actions", None).await;
    assert_eq!(
        v.as_array().unwrap().len(),
        2,
        "the namespace's actions, packaged ones too: {v}"
    );
    let (s, h, v) = door
        .guest(
            Method::POST,
            "/actions/p/echo?blocking=true",
            Some(&json!({"x": 1})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["response"]["result"], json!({"from": "package", "x": 1}));
    assert_eq!(annotation(&v, "path"), "guest/p/echo");
    assert!(annotation(&v, "binding").is_null(), "not through a binding");
    assert!(h.contains_key("x-openwhisk-activation-id"));
    let (s, _, v) = door.guest(Method::DELETE, "/packages/p", None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (
            409,
            Some(
                "Package not empty (contains 1 entity). Set force param or delete package contents."
            )
        )
    );
    let (s, _, _) = door
        .guest(Method::DELETE, "/packages/p?force=true", None)
        .await;
    assert_eq!(s, 200);
    let (s, _, _) = door.guest(Method::GET, "/actions/p/echo", None).await;
    assert_eq!(s, 404, "force deleted the package's actions");
    let (s, _, _) = door.guest(Method::PATCH, "/packages/p", None).await;
    assert_eq!(s, 405);

    // Another namespace: only published packages, only reads.
    for (method, path) in [
        (Method::PUT, "/api/v1/namespaces/whisk.system/packages/x"),
        (Method::GET, "/api/v1/namespaces/whisk.system/actions"),
        (Method::GET, "/api/v1/namespaces/whisk.system/triggers"),
    ] {
        let (s, _, _) = door.call(method, path, Some(GUEST), Some(&json!({}))).await;
        assert_eq!(s, 403, "{path}");
    }
    // Nor may a sequence or a rule name another namespace's action outside a published
    // package (the controller's entitlement check on the entities a request refers to).
    let (s, _, v) = door
        .call(
            Method::PUT,
            "/api/v1/namespaces/whisk.system/actions/secret",
            Some(WHISK_SYSTEM),
            Some(&echo),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/actions/steal",
            Some(&json!({"exec": {"kind": "sequence", "components": ["/whisk.system/secret"]}})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, _, _) = door
        .guest(Method::PUT, "/triggers/other", Some(&json!({})))
        .await;
    assert_eq!(s, 200);
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/rules/steal",
            Some(&json!({"trigger": "/_/other", "action": "/whisk.system/secret"})),
        )
        .await;
    assert_eq!(s, 403, "{v}");

    // Sequences: validation, the stored form, a blocking run with result=true.
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/actions/s",
            Some(&json!({"exec": {"kind": "sequence", "components": []}})),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("No component specified for the sequence."))
    );
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/actions/s",
            Some(&json!({"exec": {"kind": "sequence", "components": ["/_/top", "/guest/top"]}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["exec"],
        json!({"kind": "sequence", "components": ["/guest/top", "/guest/top"]})
    );
    assert_eq!(
        v["parameters"],
        json!([{"key": "_actions", "value": ["/guest/top", "/guest/top"]}]),
        "the controller keeps the components in _actions"
    );
    let (s, h, v) = door
        .guest(
            Method::POST,
            "/actions/s?blocking=true&result=true",
            Some(&json!({"k": "v"})),
        )
        .await;
    assert_eq!((s, v), (200, json!({"k": "v"})));
    let seq_id = h["x-openwhisk-activation-id"].to_str().unwrap().to_owned();
    let record = record_of(&door, &seq_id).await;
    assert_eq!(record["logs"].as_array().unwrap().len(), 2);
    assert!(
        record.get("cause").is_none(),
        "the topmost sequence has no cause"
    );
    let (_, _, listed) = door.guest(Method::GET, "/activations?name=s", None).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "the sequence's record is listed: {listed}"
    );

    // A cycle closed behind the create-time check, by re-pointing a binding: c/s runs b/s,
    // which was q/s (an action) and becomes c/s itself. Invoking it ends with the
    // controller's error instead of recursing forever; so does creating a sequence over it.
    for (path, body) in [
        ("/packages/q", json!({})),
        ("/actions/q/s", echo.clone()),
        (
            "/packages/b",
            json!({"binding": {"namespace": "_", "name": "q"}}),
        ),
        ("/packages/c", json!({})),
        (
            "/actions/c/s",
            json!({"exec": {"kind": "sequence", "components": ["/_/b/s"]}}),
        ),
        (
            "/packages/b?overwrite=true",
            json!({"binding": {"namespace": "_", "name": "c"}}),
        ),
    ] {
        let (s, _, v) = door.guest(Method::PUT, path, Some(&body)).await;
        assert_eq!(s, 200, "{path}: {v}");
    }
    let (s, _, v) = door
        .guest(Method::POST, "/actions/c/s?blocking=true", Some(&json!({})))
        .await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(
        v["response"]["result"],
        json!({"error": "Too many actions in the sequence."})
    );
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/actions/loops",
            Some(&json!({"exec": {"kind": "sequence", "components": ["/_/c/s"]}})),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("Too many actions in the sequence."))
    );

    // Web actions: statuses, headers, content types.
    let web = json!({
        "exec": {"kind": "nodejs:default", "code": "function main(p) { return {statusCode: p.code || 302, headers: {location: '/there'}, body: ''} }"},
        "annotations": [{"key": "web-export", "value": true}]
    });
    let (s, _, _) = door.guest(Method::PUT, "/actions/moved", Some(&web)).await;
    assert_eq!(s, 200);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/api/v1/web/guest/default/moved.http", door.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 302);
    assert_eq!(r.headers()["location"], "/there");
    assert!(r.headers().contains_key("x-openwhisk-activation-id"));
    let r = client
        .get(format!(
            "{}/api/v1/web/guest/default/moved.json?code=200",
            door.api
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let (s, _, v) = door
        .call(
            Method::GET,
            "/api/v1/web/guest/default/top.json",
            None,
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("The requested resource does not exist."))
    );
    assert!(v["code"].is_string());
    let (s, _, _) = door
        .call(
            Method::GET,
            "/api/v1/web/nobody/default/moved.json",
            None,
            None,
        )
        .await;
    assert_eq!(s, 404, "an unknown namespace");

    // Triggers and rules: 204 without active rules, 202 with the id, status validation.
    let (s, _, _) = door
        .guest(Method::PUT, "/triggers/t", Some(&json!({})))
        .await;
    assert_eq!(s, 200);
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/namespaces/_/triggers/t", door.api))
        .basic_auth(GUEST.split(':').next().unwrap(), GUEST.split(':').nth(1))
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(r.text().await.unwrap().is_empty());
    let rule = json!({"trigger": "/_/t", "action": "/_/top"});
    let (s, _, v) = door.guest(Method::PUT, "/rules/r", Some(&rule)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "active");
    let (s, _, _) = door.guest(Method::PUT, "/rules/r", Some(&rule)).await;
    assert_eq!(s, 409, "exists");
    let (s, _, v) = door
        .guest(Method::POST, "/rules/r", Some(&json!({"status": "paused"})))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/rules/r2",
            Some(&json!({"trigger": "/_/t", "action": "/_/missing"})),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("action /guest/missing does not exist"))
    );
    let (s, h, v) = door
        .guest(Method::POST, "/triggers/t", Some(&json!({"a": 1})))
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["activationId"].as_str().unwrap().to_owned();
    assert_eq!(h["x-openwhisk-activation-id"].to_str().unwrap(), id);
    let fired = record_of(&door, &id).await;
    assert_eq!(fired["response"]["result"], json!({"a": 1}));
    assert_eq!(
        fired["end"], 0,
        "the controller's trigger records end at the epoch"
    );
    let line: Value = serde_json::from_str(fired["logs"][0].as_str().unwrap()).unwrap();
    let ran = record_of(&door, line["activationId"].as_str().unwrap()).await;
    assert_eq!(ran["response"]["result"]["a"], 1);
    assert!(
        ran["response"]["result"]["__ow_headers"].is_object(),
        "as the controller passes them"
    );

    // An inactive rule has its line in the fire's record; a rule may name its action
    // through a binding.
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/rules/r_off",
            Some(&json!({"trigger": "/_/t", "action": "/_/top"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = door
        .guest(
            Method::POST,
            "/rules/r_off",
            Some(&json!({"status": "inactive"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/packages/qb",
            Some(&json!({"binding": {"namespace": "_", "name": "q"}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = door
        .guest(
            Method::PUT,
            "/rules/rb",
            Some(&json!({"trigger": "/_/t", "action": "/_/qb/s"})),
        )
        .await;
    assert_eq!(s, 200, "an action through a binding: {v}");
    let (s, _, v) = door
        .guest(Method::POST, "/triggers/t", Some(&json!({"a": 2})))
        .await;
    assert_eq!(s, 202, "{v}");
    let fired = record_of(&door, v["activationId"].as_str().unwrap()).await;
    let lines: Vec<Value> = fired["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "a line per rule: {lines:?}");
    let line = |rule: &str| lines.iter().find(|l| l["rule"] == rule).unwrap().clone();
    assert_eq!(
        line("guest/r_off"),
        json!({"rule": "guest/r_off", "action": "guest/top", "statusCode": 1, "success": false,
               "error": "Rule 'guest/r_off' is inactive, action 'guest/top' was not activated."})
    );
    let through = line("guest/rb");
    assert_eq!(through["success"], true, "{through}");
    let ran = record_of(&door, through["activationId"].as_str().unwrap()).await;
    assert_eq!(ran["response"]["result"]["a"], 2);

    let (s, _, _) = door.guest(Method::DELETE, "/rules/r", None).await;
    assert_eq!(s, 200);
    let (s, _, _) = door.guest(Method::DELETE, "/triggers/t", None).await;
    assert_eq!(s, 200);
    let (s, _, v) = door
        .guest(
            Method::POST,
            "/rules/r_off",
            Some(&json!({"status": "active"})),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (
            404,
            Some("Only rules with existing triggers can be activated")
        )
    );
}

//! One conformance suite, run against every runtime image built by `runtimes/build.sh` (part of
//! `scripts/stack.sh up`), through the real Docker engine: the OpenWhisk action protocol as the
//! invoker uses it (`shared/openwhisk-contract.md` §5).

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use serde_json::{Value, json};

const SENTINEL: &str = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX";
const NOT_A_DICTIONARY: &str = "The action did not return a dictionary or array.";

const NODE_ACTION: &str = r#"
function main(p) {
  switch (p.mode) {
    case 'hello': console.log('stdout line'); console.error('stderr line'); return { payload: 'Hello ' + p.name };
    case 'app_error': return { error: 'bad input' };
    case 'exception': throw new Error('boom');
    case 'not_json': return 'just a string';
    case 'exit': process.exit(3);
    case 'slow': return new Promise(r => setTimeout(() => r({ slept: true }), 3000));
    case 'env': return { ns: process.env.__OW_NAMESPACE, id: process.env.__OW_ACTIVATION_ID,
                         name: process.env.__OW_ACTION_NAME, deadline: process.env.__OW_DEADLINE };
    case 'len': return { len: p.data.length };
  }
  return { unknown: p.mode };
}
"#;

const PYTHON_ACTION: &str = r#"
import os, sys, time
def main(p):
    mode = p.get("mode")
    if mode == "hello":
        print("stdout line")
        print("stderr line", file=sys.stderr)
        return {"payload": "Hello " + p["name"]}
    if mode == "app_error":
        return {"error": "bad input"}
    if mode == "exception":
        raise Exception("boom")
    if mode == "not_json":
        return "just a string"
    if mode == "exit":
        sys.exit(3)
    if mode == "slow":
        time.sleep(3)
        return {"slept": True}
    if mode == "env":
        e = os.environ
        return {"ns": e.get("__OW_NAMESPACE"), "id": e.get("__OW_ACTIVATION_ID"),
                "name": e.get("__OW_ACTION_NAME"), "deadline": e.get("__OW_DEADLINE")}
    if mode == "len":
        return {"len": len(p["data"])}
    return {"unknown": mode}
"#;

/// The native action: a static C program (FROM scratch has nothing else) that dispatches on
/// the `mode` parameter like the others.
const NATIVE_ACTION_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static char buf[4 << 20];
static int has(const char *in, const char *mode) {
    char pat[64]; snprintf(pat, sizeof pat, "\"mode\":\"%s\"", mode); return strstr(in, pat) != NULL;
}
static const char *env(const char *k) { const char *v = getenv(k); return v ? v : ""; }
int main(int argc, char **argv) {
    const char *in = argc > 1 ? argv[1] : NULL;
    if (!in) { size_t n = fread(buf, 1, sizeof buf - 1, stdin); buf[n] = 0; in = buf; }
    if (has(in, "hello")) { printf("stdout line\n"); fprintf(stderr, "stderr line\n");
        const char *n = strstr(in, "\"name\":\""); char name[64] = "";
        if (n) sscanf(n + 8, "%63[^\"]", name);
        printf("{\"payload\":\"Hello %s\"}\n", name); return 0; }
    if (has(in, "app_error")) { printf("{\"error\":\"bad input\"}\n"); return 0; }
    if (has(in, "not_json")) { printf("just a string\n"); return 0; }
    if (has(in, "exit")) return 3;
    if (has(in, "slow")) { sleep(3); printf("{\"slept\":true}\n"); return 0; }
    if (has(in, "env")) { printf("{\"ns\":\"%s\",\"id\":\"%s\",\"name\":\"%s\",\"deadline\":\"%s\"}\n",
        env("__OW_NAMESPACE"), env("__OW_ACTIVATION_ID"), env("__OW_ACTION_NAME"), env("__OW_DEADLINE")); return 0; }
    if (has(in, "len")) { printf("{\"len\":%zu}\n", strlen(in)); return 0; }
    printf("{\"unknown\":true}\n"); return 0;
}
"#;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Native,
    Node,
    Python,
}

impl Kind {
    fn image(self) -> &'static str {
        match self {
            Kind::Native => "openwhisk/dockerskeleton:nightly",
            Kind::Node => "openwhisk/action-nodejs-v18:nightly",
            Kind::Python => "openwhisk/action-python-v3.11:nightly",
        }
    }

    /// The `/init` value of the mode-dispatching action.
    fn init_value(self) -> Value {
        match self {
            Kind::Native => {
                json!({"name": "modes", "main": "main", "binary": true, "code": zip_b64(&[("exec", &native_exec(), 0o755)])})
            }
            Kind::Node => {
                json!({"name": "modes", "main": "main", "binary": false, "code": NODE_ACTION})
            }
            Kind::Python => {
                json!({"name": "modes", "main": "main", "binary": false, "code": PYTHON_ACTION})
            }
        }
    }

    /// A zip action with a dependency of its own.
    fn zip_value(self) -> Value {
        let files: Vec<(&str, Vec<u8>, u32)> = match self {
            Kind::Native => vec![("exec", native_exec(), 0o755), ("data.txt", b"a file next to exec".to_vec(), 0o644)],
            Kind::Node => vec![
                ("package.json", br#"{"name":"dep","main":"lib/entry.js"}"#.to_vec(), 0o644),
                ("lib/entry.js", br#"const h = require('./helper'); exports.main = p => ({ payload: h.greet(p.name) });"#.to_vec(), 0o644),
                ("lib/helper.js", br#"exports.greet = n => 'Hello ' + n + ' from a dependency';"#.to_vec(), 0o644),
            ],
            Kind::Python => vec![
                ("__main__.py", b"import helper\ndef main(p):\n    return {'payload': helper.greet(p['name'])}\n".to_vec(), 0o644),
                ("helper.py", b"def greet(n):\n    return 'Hello ' + n + ' from a dependency'\n".to_vec(), 0o644),
            ],
        };
        let refs: Vec<(&str, &[u8], u32)> = files
            .iter()
            .map(|(n, d, m)| (*n, d.as_slice(), *m))
            .collect();
        json!({"name": "dep", "main": "main", "binary": true, "code": zip_b64(&refs)})
    }
}

fn native_exec() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.c"), NATIVE_ACTION_C).unwrap();
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.path().join("exec"))
        .arg(dir.path().join("a.c"))
        .status()
        .expect("cc (apt-get install gcc libc6-dev)");
    assert!(status.success());
    std::fs::read(dir.path().join("exec")).unwrap()
}

fn zip_b64(files: &[(&str, &[u8], u32)]) -> String {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, mode) in files {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    base64::engine::general_purpose::STANDARD.encode(w.finish().unwrap().into_inner())
}

struct Container {
    docker: Docker,
    id: String,
    url: String,
    http: reqwest::Client,
}

impl Container {
    async fn start(docker: &Docker, image: &str) -> (Self, Duration) {
        Self::start_with_env(docker, image, Vec::new()).await
    }

    async fn start_with_env(docker: &Docker, image: &str, env: Vec<String>) -> (Self, Duration) {
        let started = Instant::now();
        if docker.inspect_image(image).await.is_err() {
            panic!(
                "image {image} is missing: build it with runtimes/build.sh (part of scripts/stack.sh up)"
            );
        }
        let body = ContainerCreateBody {
            image: Some(image.into()),
            env: Some(env),
            host_config: Some(HostConfig {
                network_mode: Some("bridge".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("whisk-conformance-{}-{}", std::process::id(), rand_suffix());
        let id = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .unwrap()
            .id;
        docker.start_container(&id, None).await.unwrap();
        let ip = docker
            .inspect_container(&id, None)
            .await
            .unwrap()
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|nets| nets.get("bridge").and_then(|e| e.ip_address.clone()))
            .filter(|ip| !ip.is_empty())
            .expect("container ip");
        let c = Self {
            docker: docker.clone(),
            id,
            url: format!("http://{ip}:8080"),
            http: reqwest::Client::builder().build().unwrap(),
        };
        (c, started.elapsed())
    }

    /// `/init`, retried while the proxy is not listening yet (as the invoker does).
    async fn init(&self, value: Value) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self
                .post("/init", &json!({ "value": value }), Duration::from_secs(10))
                .await
            {
                Ok(r) => return r,
                Err(e) if e.is_connect() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("init: {e}"),
            }
        }
    }

    async fn run(&self, body: Value) -> (u16, Value) {
        self.post("/run", &body, Duration::from_secs(10))
            .await
            .expect("run")
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<(u16, Value), reqwest::Error> {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .timeout(timeout)
            .body(body.to_string())
            .header("content-type", "application/json")
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn logs(&self) -> (String, String) {
        let mut out = String::new();
        let mut err = String::new();
        let mut s = self.docker.logs(
            &self.id,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .build(),
            ),
        );
        while let Some(chunk) = s.next().await {
            match chunk.unwrap() {
                bollard::container::LogOutput::StdOut { message } => {
                    out.push_str(&String::from_utf8_lossy(&message))
                }
                bollard::container::LogOutput::StdErr { message } => {
                    err.push_str(&String::from_utf8_lossy(&message))
                }
                _ => {}
            }
        }
        (out, err)
    }

    /// The logs once both streams hold `n` sentinel lines (Docker copies a container's output to
    /// its log asynchronously, so the invoker, too, reads until the sentinels arrive), or after
    /// five seconds whatever they hold.
    async fn logs_with_sentinels(&self, n: usize) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (out, err) = self.logs().await;
            if (count(&out, SENTINEL) >= n && count(&err, SENTINEL) >= n)
                || Instant::now() > deadline
            {
                return (out, err);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn running(&self) -> bool {
        let state = self
            .docker
            .inspect_container(&self.id, None)
            .await
            .unwrap()
            .state;
        state.and_then(|s| s.running).unwrap_or(false)
    }

    async fn remove(self) {
        let rm = RemoveContainerOptionsBuilder::default().force(true).build();
        self.docker
            .remove_container(&self.id, Some(rm))
            .await
            .unwrap();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn docker() -> Docker {
    let d = Docker::connect_with_local_defaults().expect("docker socket");
    d.negotiate_version().await.unwrap_or_else(|e| {
        panic!("docker is not reachable ({e}); start the stack with scripts/stack.sh up")
    })
}

fn count(s: &str, line: &str) -> usize {
    s.lines().filter(|l| *l == line).count()
}

async fn conformance(kind: Kind) {
    let docker = docker().await;

    // Cold start of a no-op: docker create+start → /init → /run → answer.
    let init = kind.init_value();
    let started = Instant::now();
    let (c, _) = Container::start(&docker, kind.image()).await;
    let (s, _) = c.init(init).await;
    assert_eq!(s, 200);
    let (s, _) = c.run(json!({"value": {"mode": "noop"}})).await;
    assert_eq!(s, 200);
    println!(
        "{kind:?}: cold start of a no-op action (create, start, /init, /run) took {:?}",
        started.elapsed()
    );
    c.remove().await;

    let (c, _) = Container::start(&docker, kind.image()).await;
    let (s, body) = c.init(kind.init_value()).await;
    assert_eq!(s, 200, "init: {body}");
    let mut runs = 0;

    // Success, with output on both streams.
    let (s, body) = c
        .run(json!({"value": {"mode": "hello", "name": "World"}}))
        .await;
    runs += 1;
    assert_eq!(
        (s, &body["payload"]),
        (200, &json!("Hello World")),
        "{body}"
    );

    // An application error is a result.
    let (s, body) = c.run(json!({"value": {"mode": "app_error"}})).await;
    runs += 1;
    assert_eq!((s, body), (200, json!({"error": "bad input"})));

    // Developer errors: an exception, output that is not a dictionary.
    if kind != Kind::Native {
        let (s, body) = c.run(json!({"value": {"mode": "exception"}})).await;
        runs += 1;
        assert_eq!(s, 502);
        assert!(body["error"].as_str().unwrap().contains("boom"), "{body}");
    }
    let (s, body) = c.run(json!({"value": {"mode": "not_json"}})).await;
    runs += 1;
    assert_eq!((s, body), (502, json!({"error": NOT_A_DICTIONARY})));

    // A second init is refused.
    let (s, body) = c.init(kind.init_value()).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(
        body["error"],
        "Cannot initialize the action more than once."
    );

    // 1 MiB of parameters.
    let data = "x".repeat(1024 * 1024);
    let (s, body) = c.run(json!({"value": {"mode": "len", "data": data}})).await;
    runs += 1;
    assert_eq!(s, 200, "{body}");
    assert!(body["len"].as_u64().unwrap() >= 1024 * 1024, "{body}");

    // The context as __OW_* variables.
    let (s, body) = c
        .run(json!({"value": {"mode": "env"}, "namespace": "guest", "action_name": "/guest/modes",
                    "activation_id": "0123456789abcdef0123456789abcdef", "deadline": "1714560060210",
                    "transaction_id": "tid", "action_version": "0.0.1"}))
        .await;
    runs += 1;
    assert_eq!(
        (s, body),
        (
            200,
            json!({"ns": "guest", "id": "0123456789abcdef0123456789abcdef", "name": "/guest/modes", "deadline": "1714560060210"})
        )
    );

    // A slow action that the caller times out.
    let slow = c
        .post(
            "/run",
            &json!({"value": {"mode": "slow"}}),
            Duration::from_millis(500),
        )
        .await;
    assert!(
        slow.is_err_and(|e| e.is_timeout()),
        "the caller must time out"
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;
    runs += 1;

    // Sentinels on both streams after every run and the refused init, after the action's lines.
    let (out, err) = c.logs_with_sentinels(runs + 1).await;
    assert_eq!(count(&out, SENTINEL), runs + 1, "stdout:\n{out}");
    assert_eq!(count(&err, SENTINEL), runs + 1, "stderr:\n{err}");
    assert!(out.lines().last() == Some(SENTINEL) && err.lines().last() == Some(SENTINEL));
    let hello_out = out.find("stdout line").expect("action stdout logged");
    assert!(
        hello_out < out.find(SENTINEL).unwrap(),
        "action output precedes its sentinel"
    );
    assert!(err.contains("stderr line"));

    // The action process exiting.
    let exited = c
        .post(
            "/run",
            &json!({"value": {"mode": "exit"}}),
            Duration::from_secs(5),
        )
        .await;
    match kind {
        // Each native run is its own process: its exit is a run without a result.
        Kind::Native => assert_eq!(exited.unwrap(), (502, json!({"error": NOT_A_DICTIONARY}))),
        // The language runtimes' process is the container's, as in OpenWhisk's runtimes.
        _ => {
            assert!(exited.is_err(), "the connection must drop: {exited:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!c.running().await, "the container must stop");
        }
    }
    c.remove().await;

    // A zip action with a dependency.
    let (c, _) = Container::start(&docker, kind.image()).await;
    let (s, body) = c.init(kind.zip_value()).await;
    assert_eq!(s, 200, "zip init: {body}");
    let (s, body) = c
        .run(json!({"value": {"mode": "hello", "name": "Zip"}}))
        .await;
    assert_eq!(s, 200, "{body}");
    let expected = if kind == Kind::Native {
        "Hello Zip"
    } else {
        "Hello Zip from a dependency"
    };
    assert_eq!(body["payload"], expected);
    c.remove().await;

    // A failed init answers with an error and sentinels.
    let (c, _) = Container::start(&docker, kind.image()).await;
    let broken = match kind {
        Kind::Native => {
            json!({"name": "x", "binary": true, "code": zip_b64(&[("not-exec", b"x", 0o644)])})
        }
        Kind::Node => json!({"name": "x", "code": "function main( {"}),
        Kind::Python => json!({"name": "x", "code": "def main(:"}),
    };
    let (s, body) = c.init(broken).await;
    assert_eq!(s, 502, "{body}");
    assert!(body["error"].is_string());
    let (out, err) = c.logs_with_sentinels(1).await;
    assert_eq!((count(&out, SENTINEL), count(&err, SENTINEL)), (1, 1));
    c.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_image_conforms() {
    conformance(Kind::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodejs_image_conforms() {
    conformance(Kind::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_image_conforms() {
    conformance(Kind::Python).await;
}

/// Every image the runtimes manifest names exists locally, and every kind it lists is one the
/// conformance suite covers.
#[tokio::test]
async fn manifest_names_the_built_images() {
    let docker = docker().await;
    let manifest: Value = serde_json::from_str(include_str!("../../runtimes.json")).unwrap();
    let image_of = |i: &Value| {
        format!(
            "{}/{}:{}",
            i["prefix"].as_str().unwrap(),
            i["name"].as_str().unwrap(),
            i["tag"].as_str().unwrap()
        )
    };
    let mut images = Vec::new();
    let mut kinds = Vec::new();
    for family in manifest["runtimes"].as_object().unwrap().values() {
        for entry in family.as_array().unwrap() {
            kinds.push(entry["kind"].as_str().unwrap().to_owned());
            images.push(image_of(&entry["image"]));
        }
    }
    for bb in manifest["blackboxes"].as_array().unwrap() {
        images.push(image_of(bb));
    }
    kinds.sort();
    assert_eq!(kinds, ["nodejs:18", "python:3.11"]);
    for image in images {
        assert!(
            [Kind::Native, Kind::Node, Kind::Python]
                .iter()
                .any(|k| k.image() == image),
            "{image} is not covered by the conformance suite"
        );
        docker
            .inspect_image(&image)
            .await
            .unwrap_or_else(|_| panic!("{image} is missing: run runtimes/build.sh"));
    }
}

/// Runs overlap only when the container allows it (`__OW_ALLOW_CONCURRENT=true`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_only_when_allowed() {
    let docker = docker().await;
    for allow in [false, true] {
        let (c, _) = Container::start_with_env(
            &docker,
            Kind::Node.image(),
            vec![format!("__OW_ALLOW_CONCURRENT={allow}")],
        )
        .await;
        assert_eq!(c.init(Kind::Node.init_value()).await.0, 200);
        let started = Instant::now();
        let (a, b) = tokio::join!(
            c.run(json!({"value": {"mode": "slow"}})),
            c.run(json!({"value": {"mode": "slow"}}))
        );
        let took = started.elapsed();
        assert_eq!((a.0, b.0), (200, 200));
        if allow {
            assert!(
                took < Duration::from_millis(6000),
                "allowed runs overlap: {took:?}"
            );
        } else {
            assert!(
                took >= Duration::from_millis(6000),
                "runs must not overlap: {took:?}"
            );
        }
        c.remove().await;
    }
}

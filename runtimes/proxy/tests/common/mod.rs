//! The action-proxy conformance suite, shared by the runtime images under Docker (`images.rs`)
//! and the microVM guest under QEMU (`vm_guest.rs`): the OpenWhisk action protocol as the
//! invoker uses it (`shared/openwhisk-contract.md` §5), against any sandbox that serves the
//! proxy on a URL and hands out its stdout and stderr.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

pub const SENTINEL: &str = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX";
pub const NOT_A_DICTIONARY: &str = "The action did not return a dictionary or array.";

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
pub enum Kind {
    Native,
    Node,
    Python,
}

impl Kind {
    /// The `/init` value of the mode-dispatching action.
    pub fn init_value(self) -> Value {
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
    pub fn zip_value(self) -> Value {
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

pub fn native_exec() -> Vec<u8> {
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

pub fn zip_b64(files: &[(&str, &[u8], u32)]) -> String {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, mode) in files {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    base64::engine::general_purpose::STANDARD.encode(w.finish().unwrap().into_inner())
}

/// How long a backend may take; a VM under TCG is an order of magnitude slower than a container.
#[derive(Clone, Copy, Debug)]
pub struct Patience {
    /// `/init` and `/run` requests (and the wait for the proxy to listen).
    pub request: Duration,
    /// The wait for the sentinels to reach the log.
    pub logs: Duration,
}

/// Where the sandboxes of a suite come from.
pub trait Backend {
    type Sandbox: Sandbox;
    /// A fresh sandbox of `kind`, started.
    async fn start(&self, kind: Kind) -> Self::Sandbox;
}

/// One running action sandbox: the proxy on [`Sandbox::url`], its output as [`Sandbox::logs`].
pub trait Sandbox {
    fn url(&self) -> &str;
    fn http(&self) -> &reqwest::Client;
    fn patience(&self) -> Patience;
    /// Everything the proxy has written so far, as (stdout, stderr).
    async fn logs(&self) -> (String, String);
    /// Whether the sandbox has ended on its own (the proxy's exit ends a container or a VM).
    async fn stopped(&mut self) -> bool;
    async fn remove(self);

    /// `/init`, retried while the proxy is not listening yet (as the invoker does).
    async fn init(&self, value: Value) -> (u16, Value) {
        let timeout = self.patience().request;
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .post("/init", &json!({ "value": value }), timeout)
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
        self.post("/run", &body, self.patience().request)
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
            .http()
            .post(format!("{}{path}", self.url()))
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

    /// The logs once both streams hold `n` sentinel lines (a backend copies the output to its
    /// log asynchronously, so the invoker, too, reads until the sentinels arrive), or after
    /// the backend's log patience whatever they hold.
    async fn logs_with_sentinels(&self, n: usize) -> (String, String) {
        let deadline = Instant::now() + self.patience().logs;
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
}

pub fn count(s: &str, line: &str) -> usize {
    s.lines().filter(|l| *l == line).count()
}

/// The whole suite for `kind` on `backend`.
pub async fn conformance<B: Backend>(backend: &B, kind: Kind) {
    // Cold start of a no-op: start → /init → /run → answer.
    let init = kind.init_value();
    let started = Instant::now();
    let c = backend.start(kind).await;
    let (s, _) = c.init(init).await;
    assert_eq!(s, 200);
    let (s, _) = c.run(json!({"value": {"mode": "noop"}})).await;
    assert_eq!(s, 200);
    println!(
        "{kind:?}: cold start of a no-op action (start, /init, /run) took {:?}",
        started.elapsed()
    );
    c.remove().await;

    let mut c = backend.start(kind).await;
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
            assert!(c.stopped().await, "the sandbox must stop");
        }
    }
    c.remove().await;

    // A zip action with a dependency.
    let c = backend.start(kind).await;
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
    let c = backend.start(kind).await;
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

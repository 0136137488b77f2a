//! The invoker binary end to end against the real broker, CouchDB-API server and dockerd. The
//! test plays the controller: it writes action documents the way the controller stores them,
//! produces `ActivationMessage`s into `invoker<N>` exactly as a controller writes them, and
//! asserts what arrives on `completed<C>` and `health` and in the activations database.
//!
//! Each run uses its own invoker id, controller id and databases, so runs never see each
//! other's messages or documents.

mod common;
#[path = "common/native.rs"]
mod native;

#[path = "common/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use base64::Engine;
use common::Stack;
use harness::*;
use openwhisk::kafka;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use serde_json::{Value, json};
use testkit::invoker::free_port;

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
            limit_ms(10_000, 60_000),
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

    // The container's network comes from the mode under test.
    let modes = h.network_modes().await;
    assert!(!modes.is_empty());
    match network_mode().as_str() {
        "pcpm" => assert!(
            modes.iter().all(|m| m.starts_with("container:")),
            "{modes:?}"
        ),
        "netns" => assert!(
            modes.iter().all(|m| m.starts_with("/run/netpool/")),
            "{modes:?}"
        ),
        // QEMU inside one of the pool's VM slots, on the slot's TAP.
        "vm" => assert!(
            modes.iter().all(|m| {
                m.starts_with(&format!("/run/netpool/{}/", h.vm_pool_name()))
                    && m.contains(" tap,")
                    && m.contains("ifname=tap0")
            }),
            "{modes:?}"
        ),
        _ => assert!(modes.iter().all(|m| m == "bridge"), "{modes:?}"),
    }

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
            limit_ms(10_000, 60_000),
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
            limit_ms(10_000, 60_000),
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
            limit_ms(10_000, 60_000),
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
            limit_ms(10_000, 60_000),
        ))
        .await;
    let a = h.invoke("badinit", Some(&rev_init), true, json!({})).await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(acks[0]["response"]["response"]["statusCode"], json!(2));
    // vm mode: a limit that Node.js's start in the guest fits in, so that the run (not the
    // init) is what exceeds it; the action sleeps five times the limit.
    let slow_ms = limit_ms(1_000, 20_000);
    let rev_slow = h
        .put_action(&action_doc(
            "slow",
            "nodejs:default",
            &format!(
                "function main() {{ return new Promise(r => setTimeout(() => r({{}}), {})) }}",
                slow_ms * 5
            ),
            slow_ms,
        ))
        .await;
    let a = h.invoke("slow", Some(&rev_slow), true, json!({})).await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(
        acks[0]["response"]["response"]["result"]["error"],
        json!(format!(
            "The action exceeded its time limits of {slow_ms} milliseconds."
        ))
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

    // Action limits above the namespace's: an application error, nothing runs.
    let a = h
        .invoke_as(
            "hello",
            Some(&rev),
            true,
            json!({}),
            json!({"maxActionMemory": 128}),
        )
        .await;
    let acks = h.acks_of(&a, 1).await;
    assert_eq!(
        acks[0]["response"]["response"],
        json!({"statusCode": 1, "result": {"error": "The memory limit of 256 MB exceeds the namespace's maximum of 128 MB."}})
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_actions_with_couch_attachments_and_truncated_logs() {
    let mut h = Harness::start().await;
    // A native action whose zip is a CouchDB attachment (`couch:`), as the controller stores
    // code above the inline size.
    let mut doc = json!({"_id": "guest/native", "entityType": "action", "namespace": "guest",
        "name": "native", "exec": {"kind": "blackbox", "image": "openwhisk/dockerskeleton:nightly",
        "binary": true, "code": {"attachmentName": "couch:7a1e6c3d-native", "attachmentType": "application/octet-stream"}},
        "parameters": [], "limits": {"timeout": limit_ms(10_000, 60_000), "memory": 256, "logs": 10, "concurrency": 1},
        "version": "0.0.1", "publish": false, "annotations": []});
    let info = h.db.put_doc(&h.whisks, "guest/native", &doc).await.unwrap();
    let info =
        h.db.put_attachment(
            &h.whisks,
            "guest/native",
            &info.rev,
            "7a1e6c3d-native",
            "application/octet-stream",
            native::native_zip(),
        )
        .await
        .unwrap();
    doc["_rev"] = json!(info.rev);
    let a = h
        .invoke("native", Some(&info.rev), true, json!({"name": "zig"}))
        .await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(
        acks[0]["response"]["response"]["result"],
        json!({"native": "zig"}),
        "{:?}",
        acks[0]
    );
    assert_eq!(
        annotation(&acks[0]["response"], "kind"),
        Some(json!("blackbox"))
    );
    let logs = h.record(&a).await["logs"].clone();
    assert!(
        logs[0]
            .as_str()
            .unwrap()
            .ends_with("stdout: native log line"),
        "{logs}"
    );

    // Logs above the action's limit (1 MB) are cut with the notice.
    let mut chatty = action_doc(
        "chatty",
        "nodejs:default",
        "function main() { const l = 'x'.repeat(1000); for (let i = 0; i < 2000; i++) console.log(l); return {done: true} }",
        limit_ms(20_000, 60_000),
    );
    chatty["limits"]["logs"] = json!(1);
    let rev = h.put_action(&chatty).await;
    let a = h.invoke("chatty", Some(&rev), true, json!({})).await;
    h.acks_of(&a, 2).await;
    let logs: Vec<String> = serde_json::from_value(h.record(&a).await["logs"].clone()).unwrap();
    let last = logs.last().unwrap();
    assert!(
        last.ends_with("stderr: Logs were truncated because the total bytes size exceeds the limit of 1048576 bytes."),
        "{} lines, the last: {}",
        logs.len(),
        &last[..last.len().min(120)]
    );
    assert!(
        logs.len() > 500 && logs.len() < 2000,
        "{} lines kept",
        logs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prewarms_are_taken_memory_is_never_exceeded_and_idle_containers_are_evicted() {
    // 768 MB: the manifest's two 256 MB Node.js stem cells plus one more container.
    let mut h = Harness::start_with(Options {
        user_memory: "768 m",
        ..Options::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while h
        .containers()
        .await
        .iter()
        .filter(|(n, _)| n.contains("_prewarm_nodejs18"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the stem cells never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if network_mode() == "vm" {
        // A VM's QEMU process exists from the start of its boot; a stem cell is in the pool
        // once its guest's proxy accepts connections (the factory's own readiness test).
        let deadline = Instant::now() + Duration::from_secs(120);
        for (name, _) in h.containers().await {
            if !name.contains("_prewarm_nodejs18") {
                continue;
            }
            let ip = h.vm_ip(&name).expect("a stem cell VM's address");
            while tokio::net::TcpStream::connect((ip, 8080)).await.is_err() {
                assert!(Instant::now() < deadline, "stem cell {name} never booted");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let rev = h
        .put_action(&action_doc(
            "p0",
            "nodejs:default",
            "function main(p) { return {n: p.n} }",
            limit_ms(10_000, 60_000),
        ))
        .await;
    let a = h.invoke("p0", Some(&rev), true, json!({"n": 0})).await;
    h.acks_of(&a, 2).await;
    let (_, metrics) = h.http("GET", "/metrics", false).await;
    assert!(
        metrics.contains(r#"invoker_container_starts_total{start="prewarm"} 1"#),
        "the first Node.js activation did not take a stem cell:\n{metrics}"
    );

    // A burst of 8 distinct 256 MB actions: never more than 768 MB of containers at once;
    // idle warm containers are evicted to make room; all succeed.
    let mut ids = Vec::new();
    for i in 1..=8 {
        let name = format!("p{i}");
        let rev = h
            .put_action(&action_doc(
                &name,
                "nodejs:default",
                "function main(p) { return {n: p.n} }",
                // vm mode: three VMs boot and start Node.js at once on 2 cores.
                limit_ms(10_000, 60_000),
            ))
            .await;
        ids.push((i, h.invoke(&name, Some(&rev), true, json!({"n": i})).await));
    }
    let mut runs = Vec::new();
    for (i, a) in &ids {
        let acks = h.acks_of(a, 2).await;
        assert_eq!(
            acks[0]["response"]["response"]["result"],
            json!({"n": i}),
            "{:?}",
            acks[0]
        );
        let record = h.record(a).await;
        assert_eq!(record["response"]["statusCode"], json!(0), "{record}");
        assert_eq!(record["response"]["result"], json!({"n": i}), "{record}");
        assert_eq!(
            annotation(&record, "limits").map(|l| l["memory"].clone()),
            Some(json!(256)),
            "{record}"
        );
        let (start, end) = (record["start"].as_i64(), record["end"].as_i64());
        runs.push((start.unwrap(), end.unwrap()));
    }
    // The pool's own accounting: a high-water mark kept on every change of the used memory,
    // so no sampling interval decides whether a peak is seen.
    let (_, metrics) = h.http("GET", "/metrics", false).await;
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}")) as u64
    };
    let user_memory = 768 << 20;
    let peak = gauge("invoker_pool_memory_peak_bytes");
    assert!(
        peak <= user_memory,
        "the pool held {} MB of containers at once in 768 MB",
        peak >> 20
    );
    assert!(
        peak > 512 << 20,
        "the burst never filled the memory (peak {} MB): it tested nothing",
        peak >> 20
    );
    assert!(gauge("invoker_pool_memory_used_bytes") <= user_memory);
    // And from the records: each activation ran in a 256 MB container of its own from its
    // start to its end, so at no instant did more than three of them overlap.
    let most_at_once = runs
        .iter()
        .map(|&(t, _)| runs.iter().filter(|&&(s, e)| s <= t && t < e).count())
        .max()
        .unwrap();
    assert!(
        most_at_once * 256 <= 768,
        "{most_at_once} activations of 256 MB overlapped: {runs:?}"
    );
    let (_, metrics) = h.http("GET", "/metrics", false).await;
    assert!(
        metrics.contains(r#"invoker_containers_removed_total{reason="evicted"}"#),
        "no idle container was evicted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_http_server_pings_enables_disables_and_serves_metrics() {
    let mut h = Harness::start().await;
    assert_eq!(h.http("GET", "/ping", false).await, (200, "pong".into()));
    assert_eq!(h.http("GET", "/isEnabled", false).await.0, 401);
    assert_eq!(h.http("POST", "/disable", false).await.0, 401);
    assert_eq!(
        h.http("GET", "/isEnabled", true).await,
        (200, r#"{"enabled":true}"#.into())
    );
    let (code, text) = h.http("POST", "/disable", true).await;
    assert_eq!(code, 200);
    assert!(text.ends_with("is now disabled."), "{text}");
    // One ping with isEnabled false, then silence.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ping = h
            .next_ping(deadline.saturating_duration_since(Instant::now()))
            .await;
        if ping["isEnabled"] == json!(false) {
            break;
        }
    }
    assert!(
        tokio::time::timeout(
            Duration::from_millis(2500),
            h.next_ping(Duration::from_secs(3))
        )
        .await
        .is_err(),
        "pings went on after /disable"
    );
    let (_, text) = h.http("POST", "/enable", true).await;
    assert!(text.ends_with("is now enabled."), "{text}");
    h.next_ping(Duration::from_secs(5)).await;
    let (code, metrics) = h.http("GET", "/metrics", false).await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("invoker_") || metrics.is_empty(),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_killed_mid_run_is_a_developer_error_and_is_replaced() {
    // vm mode: the port the run calls back on, the one host port its slot's host guard lets
    // functions reach (`whisk.invoker.network.allow-host-ports`).
    let callback_port = free_port();
    let allow: &'static str = Box::leak(callback_port.to_string().into_boxed_str());
    let mut h = Harness::start_with(Options {
        manifest: Some(manifest_without_stem_cells()),
        env: vec![("CONFIG_whisk_invoker_network_allowHostPorts", allow)],
        ..Options::default()
    })
    .await;
    // With `p.started`, the action calls that URL as its run begins (vm mode below).
    let rev = h
        .put_action(&action_doc(
            "sleepy",
            "nodejs:default",
            "function main(p) { if (p.started) require('http').get(p.started).on('error', () => {}); return new Promise(r => setTimeout(() => r({slept: true}), p.ms || 0)) }",
            limit_ms(20_000, 30_000),
        ))
        .await;
    // vm mode: 1.5 s after its QEMU appears, a VM is still booting (killing it then is a
    // failed provisioning: `vm_backend.rs` covers that). The run itself tells the harness
    // that it has begun, on the host's side of the guest's bridge.
    let started = if network_mode() == "vm" {
        Some(
            tokio::net::TcpListener::bind((h.vm_gateway(), callback_port))
                .await
                .unwrap(),
        )
    } else {
        None
    };
    let params = match &started {
        Some(l) => json!({"ms": 5_000, "started": format!("http://{}/", l.local_addr().unwrap())}),
        None => json!({"ms": 4000}),
    };
    let a = h.invoke("sleepy", Some(&rev), true, params).await;
    // Kill the action's container while it runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let victim = loop {
        let running: Vec<_> = h
            .containers()
            .await
            .into_iter()
            .filter(|(n, _)| n.ends_with("_guest_sleepy"))
            .collect();
        if let Some((name, _)) = running.first() {
            break name.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the action's container never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match &started {
        Some(l) => {
            tokio::time::timeout(Duration::from_secs(90), l.accept())
                .await
                .expect("the action's run never began")
                .unwrap();
        }
        None => tokio::time::sleep(Duration::from_millis(1500)).await,
    }
    h.kill(&victim).await;
    if network_mode() == "vm" {
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.vms().iter().any(|v| v.name == victim) {
            assert!(
                Instant::now() < deadline,
                "QEMU of {victim} outlived SIGKILL"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(acks[0]["response"]["response"]["statusCode"], json!(2));
    let error = &acks[0]["response"]["response"]["result"]["error"];
    // In vm mode too: the run races QEMU's exit (a dead guest closes no connection).
    assert_eq!(
        error,
        &json!("The action did not produce a valid response and exited unexpectedly.")
    );
    assert_eq!(acks[1]["isSystemError"], json!(false));
    // The next activation gets a new container (a cold start again).
    let a = h.invoke("sleepy", Some(&rev), true, json!({"ms": 0})).await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(
        acks[0]["response"]["response"]["result"],
        json!({"slept": true})
    );
    assert!(
        annotation(&acks[0]["response"], "initTime").is_some(),
        "not a new container"
    );
}

/// A TCP proxy in front of the stack's CouchDB that the test can take down (connections
/// refused, open ones cut) and bring back on the same port.
struct CouchProxy {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl CouchProxy {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut p = Self { port, task: None };
        p.serve(listener);
        p
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let upstream = Stack::from_env()
            .couchdb
            .url
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut out) =
                        tokio::net::TcpStream::connect(format!("127.0.0.1:{upstream}")).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        }));
    }

    /// Refuses connections and cuts the open ones (dropping the task aborts its JoinSet).
    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => panic!("cannot rebind the proxy: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_couchdb_down_activations_are_system_errors_and_processing_recovers() {
    let mut proxy = CouchProxy::start().await;
    let mut h = Harness::start_with(Options {
        couch_port: Some(proxy.port),
        ..Options::default()
    })
    .await;
    let code = "function main(p) { return {got: p.v} }";
    let rev = h
        .put_action(&action_doc(
            "before",
            "nodejs:default",
            code,
            limit_ms(10_000, 60_000),
        ))
        .await;
    let a = h.invoke("before", Some(&rev), true, json!({"v": 1})).await;
    assert_eq!(
        h.acks_of(&a, 2).await[0]["response"]["response"]["result"],
        json!({"got": 1})
    );

    proxy.down();
    let rev = h
        .put_action(&action_doc(
            "during",
            "nodejs:default",
            code,
            limit_ms(10_000, 60_000),
        ))
        .await;
    let a = h.invoke("during", Some(&rev), true, json!({"v": 2})).await;
    let acks = h.acks_of(&a, 1).await;
    assert_eq!(acks[0]["isSystemError"], json!(true), "{:?}", acks[0]);
    assert_eq!(
        acks[0]["response"]["response"],
        json!({"statusCode": 3, "result": {"error": "Action could not be fetched."}})
    );

    proxy.up().await;
    let b = h.invoke("during", Some(&rev), true, json!({"v": 3})).await;
    assert_eq!(
        h.acks_of(&b, 2).await[0]["response"]["response"]["result"],
        json!({"got": 3})
    );
    // The failed activation's record, held back while the store was down, arrives too.
    assert_eq!(h.record(&a).await["response"]["statusCode"], json!(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invoker_killed_mid_burst_and_restarted_loses_nothing() {
    let mut h = Harness::start_with(Options {
        manifest: Some(manifest_without_stem_cells()),
        ..Options::default()
    })
    .await;
    let rev = h
        .put_action(&action_doc(
            "echo",
            "nodejs:default",
            "function main(p) { return new Promise(r => setTimeout(() => r({n: p.n}), 100)) }",
            // vm mode: up to four VMs boot and start Node.js at once on 2 cores.
            limit_ms(10_000, 60_000),
        ))
        .await;
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push((n, h.invoke("echo", Some(&rev), true, json!({"n": n})).await));
    }
    // Let some finish, then SIGKILL the invoker in the middle of the burst.
    let slot_freeing = |acks: &[Value]| acks.iter().any(|a| a.get("instance").is_some());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = ids
            .iter()
            .filter(|(_, id)| h.seen.get(id).is_some_and(|a| slot_freeing(a)))
            .count();
        if done >= 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing finished before the kill"
        );
        h.pump_ack(Duration::from_secs(5)).await;
    }
    h.invoker.as_mut().expect("running").kill();
    h.invoker = Some(h.spawn_invoker());

    // Every activation gets its slot-freeing ack; all result-bearing acks of one activation
    // carry the same result; each has one record with that result.
    let deadline = Instant::now() + Duration::from_secs(180);
    while !ids
        .iter()
        .all(|(_, id)| h.seen.get(id).is_some_and(|a| slot_freeing(a)))
    {
        assert!(
            Instant::now() < deadline,
            "activations never acknowledged after the restart: {:?}",
            ids.iter()
                .filter(|(_, id)| !h.seen.get(id).is_some_and(|a| slot_freeing(a)))
                .collect::<Vec<_>>()
        );
        h.pump_ack(Duration::from_secs(10)).await;
    }
    for (n, id) in &ids {
        for ack in &h.seen[id] {
            if let Some(Value::Object(activation)) = ack.get("response") {
                assert_eq!(activation["response"]["result"], json!({"n": n}), "{ack}");
            }
        }
        assert_eq!(h.record(id).await["response"]["result"], json!({"n": n}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_containers_are_paused_resumed_and_removed() {
    let mut h = Harness::start_with(Options {
        manifest: Some(manifest_without_stem_cells()),
        env: vec![
            (
                "CONFIG_whisk_containerProxy_timeouts_pauseGrace",
                "1 second",
            ),
            (
                "CONFIG_whisk_containerProxy_timeouts_idleContainer",
                "6 seconds",
            ),
        ],
        ..Options::default()
    })
    .await;
    let rev = h
        .put_action(&action_doc(
            "idle",
            "nodejs:default",
            "function main(p) { return {n: p.n} }",
            limit_ms(10_000, 60_000),
        ))
        .await;
    let a = h.invoke("idle", Some(&rev), true, json!({"n": 1})).await;
    h.acks_of(&a, 2).await;
    let name = h
        .containers()
        .await
        .into_iter()
        .find(|(n, _)| n.ends_with("_guest_idle"))
        .unwrap()
        .0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.paused(&name).await != Some(true) {
        assert!(
            Instant::now() < deadline,
            "never paused after the grace period"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A warm run resumes it: no init.
    let a = h.invoke("idle", Some(&rev), true, json!({"n": 2})).await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(acks[0]["response"]["response"]["result"], json!({"n": 2}));
    assert!(annotation(&acks[0]["response"], "initTime").is_none());
    // Removed after the idle timeout.
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.paused(&name).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "never removed after the idle timeout"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_action_allowing_concurrency_shares_one_container() {
    let mut h = Harness::start_with(Options {
        manifest: Some(manifest_without_stem_cells()),
        env: vec![(
            "CONFIG_whisk_containerFactory_containerArgs_extraEnvVars_0",
            "__OW_ALLOW_CONCURRENT=true",
        )],
        ..Options::default()
    })
    .await;
    let mut doc = action_doc(
        "shared",
        "nodejs:default",
        "function main(p) { return new Promise(r => setTimeout(() => r({n: p.n}), 1500)) }",
        limit_ms(10_000, 60_000),
    );
    doc["limits"]["concurrency"] = json!(4);
    let rev = h.put_action(&doc).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push((
            n,
            h.invoke("shared", Some(&rev), true, json!({"n": n})).await,
        ));
    }
    for (n, id) in ids {
        // Logs are not collected for shared containers: one combined ack each.
        let acks = h.acks_of(&id, 1).await;
        assert_eq!(
            acks[0]["response"]["response"]["result"],
            json!({"n": n}),
            "{:?}",
            acks[0]
        );
    }
    let containers: Vec<_> = h
        .containers()
        .await
        .into_iter()
        .filter(|(n, _)| n.ends_with("_guest_shared"))
        .collect();
    assert_eq!(containers.len(), 1, "{containers:?}");
}

/// A WASI command that logs a line and answers `{"echo": <its parameters>}`: argv[1] is the
/// run's value as JSON (OpenWhisk's native-action convention, which `wasm:0.1` follows).
const WASM_ECHO: &str = r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "log line from wasm\n{\"echo\":")
  (data (i32.const 32) "}\n")
  (func (export "_start")
    (local $arg i32) (local $len i32)
    (drop (call $sizes (i32.const 100) (i32.const 104)))
    (drop (call $args (i32.const 200) (i32.const 1024)))
    (local.set $arg (i32.load (i32.const 204)))
    (block $end (loop $next
      (br_if $end (i32.eqz (i32.load8_u (i32.add (local.get $arg) (local.get $len)))))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (br $next)))
    (i32.store (i32.const 300) (i32.const 0)) (i32.store (i32.const 304) (i32.const 27))
    (i32.store (i32.const 308) (local.get $arg)) (i32.store (i32.const 312) (local.get $len))
    (i32.store (i32.const 316) (i32.const 32)) (i32.store (i32.const 320) (i32.const 2))
    (drop (call $write (i32.const 1) (i32.const 300) (i32.const 3) (i32.const 400)))))"#;

/// The native test action's zip as an inline (`mem:`) attachment.
fn native_zip_code() -> Value {
    json!({
        "attachmentName": format!("mem:{}", base64::engine::general_purpose::URL_SAFE.encode(native::native_zip())),
        "attachmentType": "application/octet-stream",
    })
}

/// `wasm:0.1` actions run in the unikernel on the VM backend whatever the network mode (the
/// container modes start one beside theirs), from WebAssembly text the invoker assembles; a
/// trap and text that does not assemble are developer errors; and a native action annotated
/// `sandbox: vm` runs in the Linux microVM in the container modes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wasm_actions_run_in_the_unikernel_and_annotated_actions_in_a_vm() {
    let mut h = Harness::start_with(Options {
        manifest: Some(manifest_without_stem_cells()),
        ..Options::default()
    })
    .await;
    let boots_before = h.vm_boots().await;

    let rev = h
        .put_action(&action_doc("echo", "wasm:0.1", WASM_ECHO, 20_000))
        .await;
    for name in ["zig", "zag"] {
        let a = h
            .invoke("echo", Some(&rev), true, json!({"name": name}))
            .await;
        let acks = h.acks_of(&a, 2).await;
        assert_eq!(
            acks[0]["response"]["response"]["result"],
            json!({"echo": {"name": name}}),
            "{:?}",
            acks[0]
        );
        let record = h.record(&a).await;
        assert_eq!(annotation(&record, "kind"), Some(json!("wasm:0.1")));
        let logs = record["logs"].as_array().unwrap().clone();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(
            logs[0]
                .as_str()
                .unwrap()
                .ends_with("stdout: log line from wasm"),
            "{logs:?}"
        );
    }
    // One boot served both runs (the second was warm), and it was a VM.
    assert_eq!(h.vm_boots().await, boots_before + 1);

    let rev = h
        .put_action(&action_doc(
            "trap",
            "wasm:0.1",
            r#"(module (func (export "_start") unreachable))"#,
            20_000,
        ))
        .await;
    let a = h.invoke("trap", Some(&rev), true, json!({})).await;
    let acks = h.acks_of(&a, 2).await;
    let response = &acks[0]["response"]["response"];
    assert_eq!(
        (&response["statusCode"], &response["result"]),
        (
            &json!(2),
            &json!({"error": "The action did not return a dictionary or array."})
        ),
        "{:?}",
        acks[0]
    );
    let logs = h.record(&a).await["logs"].clone();
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("stderr: wasm trap")),
        "{logs}"
    );

    let rev = h
        .put_action(&action_doc("broken", "wasm:0.1", "(module (func", 20_000))
        .await;
    let a = h.invoke("broken", Some(&rev), true, json!({})).await;
    let acks = h.acks_of(&a, 2).await;
    assert_eq!(acks[0]["response"]["response"]["statusCode"], json!(2));
    let error = acks[0]["response"]["response"]["result"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.starts_with("The action's WebAssembly text does not assemble: "),
        "{error}"
    );

    if network_mode() != "vm" {
        // The annotation moves a native action into the Linux microVM.
        let boots = h.vm_boots().await;
        let mut doc = json!({"_id": "guest/isolated", "entityType": "action", "namespace": "guest",
            "name": "isolated", "exec": {"kind": "blackbox", "image": "openwhisk/dockerskeleton:nightly",
            "binary": true, "code": native_zip_code()},
            "parameters": [], "limits": {"timeout": 60_000, "memory": 256, "logs": 10, "concurrency": 1},
            "version": "0.0.1", "publish": false,
            "annotations": [{"key": "sandbox", "value": "vm"}]});
        let rev = h.put_action(&doc).await;
        doc["_rev"] = json!(rev);
        let a = h
            .invoke("isolated", Some(&rev), true, json!({"name": "vm"}))
            .await;
        let acks = h.acks_of(&a, 2).await;
        assert_eq!(
            acks[0]["response"]["response"]["result"],
            json!({"native": "vm"}),
            "{:?}",
            acks[0]
        );
        assert_eq!(
            h.vm_boots().await,
            boots + 1,
            "the annotated action ran outside a VM"
        );
        let containers = h.containers().await;
        assert!(
            containers
                .iter()
                .all(|(n, _)| !n.ends_with("_guest_isolated")),
            "a Docker container ran the VM action: {containers:?}"
        );
    }
}

/// Delivery without holes (issue 16): CouchDB unreachable for longer than the old 30 s
/// give-up: the activations run and are held, not committed, the invoker stops pinging and
/// says why on `/metrics`; once CouchDB is back each gets its record and slot-freeing ack and
/// only then is its offset committed (read from outside the consumer group). Then a SIGTERM
/// with a 3 s grace period ends a 60 s activation with a system error ack and record within
/// the bound, commits it and removes the containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_couchdb_outage_and_a_sigterm_leave_no_activation_unfinished_or_uncommitted() {
    /// The invoker group's committed offset of partition 0, from a client that never joins
    /// the group (a member's `committed` hangs tansu's close).
    async fn committed(prefix: &str, id: u32) -> Option<i64> {
        let topic = format!("{prefix}invoker{id}");
        tokio::task::spawn_blocking(move || {
            let c: rdkafka::consumer::BaseConsumer =
                kafka::consumer_config(&Stack::from_env().kafka_hosts, &topic)
                    .create()
                    .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition(&topic, 0);
            let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
            match got.find_partition(&topic, 0).map(|p| p.offset()) {
                Some(rdkafka::Offset::Offset(o)) => Some(o),
                _ => None,
            }
        })
        .await
        .unwrap()
    }
    async fn committed_reaches(prefix: &str, id: u32, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = committed(prefix, id).await;
            if got == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "committed {got:?}, want {want}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    async fn metrics(port: u16) -> String {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    let mut proxy = CouchProxy::start().await;
    let mut h = Harness::start_with(Options {
        couch_port: Some(proxy.port),
        manifest: Some(manifest_without_stem_cells()),
        env: vec![("CONFIG_whisk_invoker_shutdown_gracePeriod", "3 seconds")],
        ..Options::default()
    })
    .await;
    let code = "function main(p) { return {got: p.v} }";
    let rev = h
        .put_action(&action_doc(
            "echo",
            "nodejs:default",
            code,
            limit_ms(10_000, 60_000),
        ))
        .await;
    let first = h.invoke("echo", Some(&rev), true, json!({"v": 0})).await;
    h.acks_of(&first, 2).await;
    committed_reaches(&h.prefix, h.id, 1).await;

    // The action is cached: its activations run while the store is down, and are held.
    proxy.down();
    let down_at = Instant::now();
    let mut during = Vec::new();
    for v in 1..=3 {
        during.push((v, h.invoke("echo", Some(&rev), true, json!({"v": v})).await));
    }
    for (v, id) in &during {
        // The result ack; the slot-freeing one follows the record (logs are collected).
        let acks = h.acks_of(id, 1).await;
        assert_eq!(acks[0]["response"]["response"]["result"], json!({"got": v}));
        assert!(acks[0].get("instance").is_none(), "{:?}", acks[0]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(h.port)
        .await
        .contains(r#"invoker_component_down{component="couchdb"} 1"#)
    {
        assert!(Instant::now() < deadline, "{}", metrics(h.port).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Pings sent before the store was found down may still be queued.
    while tokio::time::timeout(Duration::from_secs(2), h.health.recv())
        .await
        .is_ok()
    {}
    let quiet_until = Instant::now() + Duration::from_secs(4);
    while let Ok(m) = tokio::time::timeout_at(quiet_until.into(), h.health.recv()).await {
        let v: Value = serde_json::from_slice(m.unwrap().payload().unwrap()).unwrap();
        assert_ne!(
            v["name"]["instance"],
            json!(h.id),
            "pinged while CouchDB was down"
        );
    }
    // Longer than the old give-up: nothing was dropped, nothing after `first` committed.
    tokio::time::sleep(
        (down_at + Duration::from_secs(40)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert_eq!(committed(&h.prefix, h.id).await, Some(1));
    assert!(
        h.seen
            .values()
            .flatten()
            .all(|a| a.get("instance").is_none())
    );

    proxy.up().await;
    for (v, id) in &during {
        let acks = h.acks_of(id, 1).await;
        assert_eq!(acks[0]["activationId"], json!(id), "{:?}", acks[0]);
        assert_eq!(acks[0]["isSystemError"], json!(false));
        assert_eq!(h.record(id).await["response"]["result"], json!({"got": v}));
    }
    committed_reaches(&h.prefix, h.id, 4).await;
    h.next_ping(Duration::from_secs(10)).await;
    assert!(
        metrics(h.port)
            .await
            .contains(r#"invoker_component_down{component="couchdb"} 0"#)
    );

    // SIGTERM with an activation that would take 60 s and a 3 s grace period.
    let rev = h
        .put_action(&action_doc(
            "sleepy",
            "nodejs:default",
            "function main() { return new Promise(r => setTimeout(() => r({late: true}), 60000)) }",
            120_000,
        ))
        .await;
    let slow = h.invoke("sleepy", Some(&rev), true, json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !h
        .containers()
        .await
        .iter()
        .any(|(n, _)| n.ends_with("_guest_sleepy"))
    {
        assert!(
            Instant::now() < deadline,
            "the slow activation never got a container"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut invoker = h.invoker.take().expect("running");
    let sigterm = Instant::now();
    let stopped = tokio::task::spawn_blocking(move || {
        invoker.stop();
        (sigterm.elapsed(), invoker.try_wait().unwrap())
    });
    let acks = h.acks_of(&slow, 1).await;
    let acked_after = sigterm.elapsed();
    assert!(
        acked_after < Duration::from_secs(3) + Duration::from_secs(5) + Duration::from_secs(4),
        "the error ack came {acked_after:?} after SIGTERM"
    );
    assert_eq!(acks[0]["isSystemError"], json!(true), "{:?}", acks[0]);
    assert_eq!(
        acks[0]["response"]["response"],
        json!({"statusCode": 3, "result": {"error": "The invoker shut down before the action completed."}})
    );
    assert!(acks[0].get("instance").is_some(), "a combined ack");
    let (exited_after, status) = stopped.await.unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "the invoker did not exit on its own: {status:?} after {exited_after:?}"
    );
    assert_eq!(h.record(&slow).await["response"]["statusCode"], json!(3));
    assert_eq!(committed(&h.prefix, h.id).await, Some(5));
    let left = h.containers().await;
    assert!(left.is_empty(), "containers left: {left:?}");
}

//! The runc backend against the real kernel, runc and the locally built images: a Node.js
//! action container in a netpool namespace answers `/init` and `/run` on the lease's address,
//! writes sentinelled logs that arrive through its pipes, pauses and resumes, and leaves nothing
//! behind; an image whose entry point is missing is refused as a developer error before runc
//! runs.

use std::sync::Arc;
use std::time::Duration;

use invoker::container::proxy::{self, ProxyClient};
use invoker::container::runc::RuncFactory;
use invoker::container::{ContainerFactory, ContainerSpec, CreateError, ImageRef};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_action_runs_under_runc_in_a_netpool_namespace() {
    let docker = invoker::docker::connect()
        .await
        .expect("docker (for image export) is needed; scripts/stack.sh up");
    let mut cfg = netpool::PoolConfig::new("rb", std::net::Ipv4Addr::new(10, 211, 0, 0), 16);
    cfg.low_watermark = 2;
    cfg.high_watermark = 2;
    cfg.max_slots = 8;
    cfg.isolate_slots = false;
    let pool = Arc::new(
        netpool::NetPool::new(cfg)
            .await
            .expect("netpool (run as root)"),
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let factory = RuncFactory::new(
        docker,
        pool.clone(),
        &dir.path().join("images"),
        &dir.path().join("bundles"),
        &state,
    );
    let spec = ContainerSpec {
        name: "wskrb0_1_guest_sieve".into(),
        image: ImageRef::local("openwhisk/action-nodejs-v18:nightly"),
        memory_mb: 256,
        cpu_shares: 128,
        cpus: Some(0.5),
        env: vec!["__OW_API_HOST=http://127.0.0.1".into()],
    };
    // An image that is not there is the developer's error, as under Docker.
    let missing = ContainerSpec {
        name: "wskrb0_0_guest_missing".into(),
        image: ImageRef::local("wsk-no-such-image:none"),
        ..spec.clone()
    };
    match factory.create(&missing).await {
        Err(CreateError::NoExecutable { image, .. }) => assert_eq!(image, "wsk-no-such-image:none"),
        other => panic!("expected NoExecutable, got {other:?}"),
    }
    let c = factory.create(&spec).await.expect("runc create");
    let client = ProxyClient::new();
    let code = "function main(p) { console.log('counting to', p.n); return {n: p.n} }";
    let init = json!({"value": {"name": "sieve", "main": "main", "binary": false, "code": code}});
    let (answer, _) = client
        .init(c.addr(), &init, Duration::from_secs(30), 1 << 20)
        .await;
    proxy::init_verdict(&answer, 30_000, false).expect("init");
    let (answer, _) = client
        .run(
            c.addr(),
            &json!({"value": {"n": 7}}),
            Duration::from_secs(30),
            1 << 20,
        )
        .await;
    let r = proxy::run_response(&answer, 30_000, 1 << 20, false);
    assert_eq!(r.result, Some(json!({"n": 7})), "{r:?}");
    // Sentinelled logs, read from the container's pipes.
    let logs = invoker::container::logs::collect(
        &mut **c.logs().expect("runc collects logs").lock().await,
        invoker::container::logs::Collect {
            limit_bytes: 1 << 20,
            wait: true,
            developer_error: false,
            idle_timeout: Duration::from_secs(2),
        },
    )
    .await;
    assert!(!logs.failed, "{logs:?}");
    assert!(
        logs.lines
            .iter()
            .any(|l| l.ends_with("stdout: counting to 7")),
        "{logs:?}"
    );
    // Pause and resume.
    c.pause().await.unwrap();
    c.resume().await.unwrap();
    let (answer, _) = client
        .run(
            c.addr(),
            &json!({"value": {"n": 8}}),
            Duration::from_secs(30),
            1 << 20,
        )
        .await;
    assert_eq!(
        proxy::run_response(&answer, 30_000, 1 << 20, false).result,
        Some(json!({"n": 8}))
    );
    c.destroy().await.unwrap();
    assert_eq!(
        factory.remove_all("wskrb0_").await.unwrap(),
        0,
        "destroy left a container"
    );
    assert!(!dir.path().join("bundles/wskrb0_1_guest_sieve").exists());
    assert!(!state.exists(), "an empty runc state folder is left behind");
    assert!(
        !dir.path().join("bundles").exists(),
        "an empty bundles folder is left behind"
    );
    drop((c, factory));
    Arc::try_unwrap(pool)
        .expect("one owner")
        .shutdown()
        .await
        .unwrap();
}

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
    let docker = pcpm::docker::connect()
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
        sandbox: invoker::container::Sandbox::Mode,
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

/// netns mode without dockerd at run time: the runtime image is read from the image store that
/// `runtimes/build.sh` writes (`docker save` archives); the factory's Docker client points at a
/// file that is no socket, so any Docker call would fail the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_image_from_the_image_store_runs_without_dockerd() {
    let store = std::env::var("WHISK_IMAGE_STORE")
        .unwrap_or_else(|_| "/var/lib/wsk-invoker/image-store".into());
    let image = "openwhisk/action-nodejs-v18:nightly";
    assert!(
        invoker::container::image_store::find(std::path::Path::new(&store), image).is_some(),
        "no archive of {image} in the image store {store}; run runtimes/build.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let not_a_socket = dir.path().join("docker.sock");
    std::fs::write(&not_a_socket, b"").unwrap();
    let nowhere = bollard::Docker::connect_with_unix(
        not_a_socket.to_str().unwrap(),
        5,
        bollard::API_DEFAULT_VERSION,
    )
    .unwrap();
    let pool = testkit::vm::slot_pool(
        "rs",
        std::net::Ipv4Addr::new(10, 212, 0, 0),
        16,
        netpool::SlotKind::Container,
    )
    .await;
    let factory = RuncFactory::new(
        nowhere,
        pool.clone(),
        &dir.path().join("images"),
        &dir.path().join("bundles"),
        &dir.path().join("state"),
    )
    .with_image_store(std::path::Path::new(&store));
    factory
        .prepare(image)
        .await
        .expect("unpacked from the store");
    let spec = ContainerSpec {
        name: "wskrs0_1_guest_echo".into(),
        image: ImageRef::local(image),
        memory_mb: 128,
        cpu_shares: 128,
        cpus: None,
        env: vec!["__OW_API_HOST=http://127.0.0.1".into()],
        sandbox: invoker::container::Sandbox::Mode,
    };
    let c = factory.create(&spec).await.expect("runc create");
    let client = ProxyClient::new();
    let init = json!({"value": {"name": "echo", "main": "main", "binary": false,
        "code": "function main(p) { return {echo: p.x} }"}});
    let (answer, _) = client
        .init(c.addr(), &init, Duration::from_secs(30), 1 << 20)
        .await;
    proxy::init_verdict(&answer, 30_000, false).expect("init");
    let (answer, _) = client
        .run(
            c.addr(),
            &json!({"value": {"x": "stored"}}),
            Duration::from_secs(30),
            1 << 20,
        )
        .await;
    assert_eq!(
        proxy::run_response(&answer, 30_000, 1 << 20, false).result,
        Some(json!({"echo": "stored"}))
    );
    c.destroy().await.unwrap();
    drop((c, factory));
    Arc::try_unwrap(pool)
        .expect("one owner")
        .shutdown()
        .await
        .unwrap();
}

//! The runc backend against the real kernel, the OCI runtimes (runc, and crun, which on this
//! host's hybrid cgroup layout runs from a mount namespace without the unified hierarchy) and
//! the locally built images: a Node.js action container in a netpool namespace answers `/init`
//! and `/run` on the lease's address, writes sentinelled logs that arrive through its pipes,
//! pauses (the runtime itself then reports it paused) and resumes, a paused one is destroyed,
//! and nothing is left behind; an image whose entry point is missing is refused as a developer
//! error before the runtime runs.

use std::sync::Arc;
use std::time::Duration;

use invoker::container::proxy::{self, ProxyClient};
use invoker::container::runc::RuncFactory;
use invoker::container::{ContainerFactory, ContainerSpec, CreateError, ImageRef};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_action_runs_under_runc_in_a_netpool_namespace() {
    node_action_in_a_netpool_namespace("runc", "rb", [10, 211, 0, 0], "wskrb0_").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_action_runs_under_crun_in_a_netpool_namespace() {
    node_action_in_a_netpool_namespace("crun", "rc", [10, 211, 128, 0], "wskrc0_").await;
}

/// The runtime's own word on a container's status (`<runtime> state`).
async fn status(runtime: &str, state: &std::path::Path, id: &str) -> String {
    let out = tokio::process::Command::new(runtime)
        .arg("--root")
        .arg(state)
        .args(["state", id])
        .output()
        .await
        .unwrap_or_else(|e| panic!("{runtime} state: {e}"));
    assert!(out.status.success(), "{runtime} state {id}: {out:?}");
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    state["status"].as_str().unwrap().to_owned()
}

async fn node_action_in_a_netpool_namespace(
    runtime: &str,
    pool_name: &str,
    subnet: [u8; 4],
    prefix: &str,
) {
    let docker = pcpm::docker::connect()
        .await
        .expect("docker (for image export) is needed; scripts/stack.sh up");
    let mut cfg = netpool::PoolConfig::new(pool_name, subnet.into(), 17);
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
    )
    .with_runtime(std::path::Path::new(runtime));
    let version = factory
        .runtime_version()
        .await
        .unwrap_or_else(|e| panic!("{runtime} is needed (scripts/stack.sh installs it): {e}"));
    assert!(version.contains(runtime), "{version}");
    let spec = ContainerSpec {
        name: format!("{prefix}1_guest_sieve"),
        image: ImageRef::local("openwhisk/action-nodejs-v18:nightly"),
        memory_mb: 256,
        cpu_shares: 128,
        cpus: Some(0.5),
        env: vec!["__OW_API_HOST=http://127.0.0.1".into()],
        sandbox: invoker::container::Sandbox::Mode,
    };
    // An image that is not there is the developer's error, as under Docker.
    let missing = ContainerSpec {
        name: format!("{prefix}0_guest_missing"),
        image: ImageRef::local("wsk-no-such-image:none"),
        ..spec.clone()
    };
    match factory.create(&missing).await {
        Err(CreateError::NoExecutable { image, .. }) => assert_eq!(image, "wsk-no-such-image:none"),
        other => panic!("expected NoExecutable, got {other:?}"),
    }
    let c = factory.create(&spec).await.expect("create");
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
    // Pause and resume, through the cgroup freezer: the runtime sees what was done.
    assert_eq!(status(runtime, &state, c.id()).await, "running");
    c.pause().await.unwrap();
    assert_eq!(status(runtime, &state, c.id()).await, "paused");
    c.resume().await.unwrap();
    assert_eq!(status(runtime, &state, c.id()).await, "running");
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
    // A paused container is destroyed as it is (the pool removes paused idle containers).
    let paused = factory
        .create(&ContainerSpec {
            name: format!("{prefix}2_guest_sieve"),
            ..spec.clone()
        })
        .await
        .expect("create");
    paused.pause().await.unwrap();
    assert_eq!(status(runtime, &state, paused.id()).await, "paused");
    paused.destroy().await.unwrap();
    assert_eq!(
        factory.remove_all(prefix).await.unwrap(),
        0,
        "destroy left a container"
    );
    assert!(
        !dir.path()
            .join(format!("bundles/{prefix}1_guest_sieve"))
            .exists()
    );
    assert!(
        !dir.path()
            .join(format!("bundles/{prefix}2_guest_sieve"))
            .exists()
    );
    for h in ["memory", "freezer", "pids", "cpu", "unified", ""] {
        for n in [1, 2] {
            let cg = std::path::Path::new("/sys/fs/cgroup")
                .join(h)
                .join(format!("wsk-runc/{prefix}{n}_guest_sieve"));
            assert!(!cg.exists(), "{} is left behind", cg.display());
        }
    }
    assert!(!state.exists(), "an empty runc state folder is left behind");
    assert!(
        !dir.path().join("bundles").exists(),
        "an empty bundles folder is left behind"
    );
    drop((c, paused, factory));
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

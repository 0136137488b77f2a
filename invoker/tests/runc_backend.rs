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

/// A netpool pool of `idle` slots (at most three times as many) in the /17 at `subnet`, and a
/// factory on it running `runtime`, its folders in `dir`.
async fn backend(
    runtime: &str,
    pool_name: &str,
    subnet: [u8; 4],
    idle: usize,
    dir: &std::path::Path,
) -> (Arc<netpool::NetPool>, RuncFactory) {
    let docker = pcpm::docker::connect()
        .await
        .expect("docker (for image export) is needed; scripts/stack.sh up");
    let mut cfg = netpool::PoolConfig::new(pool_name, subnet.into(), 17);
    cfg.low_watermark = idle;
    cfg.high_watermark = idle;
    cfg.max_slots = 3 * idle;
    cfg.isolate_slots = false;
    let pool = Arc::new(
        netpool::NetPool::new(cfg)
            .await
            .expect("netpool (run as root)"),
    );
    let factory = RuncFactory::new(
        docker,
        pool.clone(),
        &dir.join("images"),
        &dir.join("bundles"),
        &dir.join("state"),
    )
    .with_runtime(std::path::Path::new(runtime));
    (pool, factory)
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
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (pool, factory) = backend(runtime, pool_name, subnet, 2, dir.path()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "flaky under runc (1 of 3 runs on 2026-12-04): destroying the first container, made with run beside sandboxes made with create, met EBUSY on every cgroup hierarchy past the 2.1 s retry bound; not yet diagnosed; crun, the default, passes"]
async fn pre_created_sandboxes_are_only_started_by_cold_starts_under_runc() {
    pre_created_sandboxes("runc", "pr", [10, 220, 0, 0], "wskpr0_").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_created_sandboxes_are_only_started_by_cold_starts_under_crun() {
    pre_created_sandboxes("crun", "pc", [10, 220, 128, 0], "wskpc0_").await;
}

/// The containers the runtime state folder holds, with their status (`creating` while the
/// runtime has made the folder and not yet written the state).
async fn containers(runtime: &str, state: &std::path::Path) -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(state) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = dir
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    let mut out = Vec::new();
    for id in ids {
        let answer = tokio::process::Command::new(runtime)
            .arg("--root")
            .arg(state)
            .args(["state", &id])
            .output()
            .await
            .unwrap_or_else(|e| panic!("{runtime} state: {e}"));
        // The runtime makes the folder before it writes the state.
        let status = serde_json::from_slice::<serde_json::Value>(&answer.stdout)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "creating".into());
        out.push((id, status));
    }
    out
}

/// Waits (at most 60 s) until the shelf holds `n` created sandboxes.
async fn wait_created(runtime: &str, state: &std::path::Path, prefix: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = containers(runtime, state).await;
        let created = now
            .iter()
            .filter(|(id, s)| id.starts_with(&format!("{prefix}presandbox")) && s == "created")
            .count();
        if created >= n {
            assert_eq!(created, n, "more sandboxes than the shelf holds: {now:?}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the shelf never held {n} created sandboxes: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bundle's spec with what names a container taken out (hostname, cgroup, paths, the
/// namespace's path): what is left is its sandbox.
fn sandbox_of(bundle: &std::path::Path) -> serde_json::Value {
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    for key in ["hostname", "root"] {
        spec.as_object_mut().unwrap().remove(key);
    }
    let linux = spec["linux"].as_object_mut().unwrap();
    linux.remove("cgroupsPath");
    for ns in linux["namespaces"].as_array_mut().unwrap() {
        ns.as_object_mut().unwrap().remove("path");
    }
    for m in spec["mounts"].as_array_mut().unwrap() {
        if m["type"] == "bind" {
            m.as_object_mut().unwrap().remove("source");
        }
    }
    spec
}

/// Pre-created sandboxes under `runtime`: the first cold start of a shape misses and fills its
/// shelf with created containers (nothing runs in them); the next cold start of that shape
/// takes one and only starts it, and the action runs there with its logs from the pipes and
/// the same spec a started container gets; a sandbox whose waiting process died is replaced
/// by a container made as without the shelf; `remove_all` removes the shelf with everything
/// it held: containers, bundles, cgroups, leases.
async fn pre_created_sandboxes(runtime: &str, pool_name: &str, subnet: [u8; 4], prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (pool, factory) = backend(runtime, pool_name, subnet, 4, dir.path()).await;
    let factory = factory.with_presandboxes(prefix, 2);
    let spec = |n: u32| ContainerSpec {
        name: format!("{prefix}{n}_guest_hello"),
        image: ImageRef::local("openwhisk/action-nodejs-v18:nightly"),
        memory_mb: 128,
        cpu_shares: 128,
        cpus: Some(0.5),
        env: vec!["__OW_API_HOST=http://127.0.0.1".into()],
        sandbox: invoker::container::Sandbox::Mode,
    };
    let client = ProxyClient::new();
    let hello = |c: &dyn invoker::container::Container, word: &'static str| {
        let client = &client;
        let addr = c.addr();
        async move {
            let code = "function main(p) { console.log('hello', p.w); return {w: p.w} }";
            let init =
                json!({"value": {"name": "hello", "main": "main", "binary": false, "code": code}});
            let (answer, _) = client
                .init(addr, &init, Duration::from_secs(30), 1 << 20)
                .await;
            proxy::init_verdict(&answer, 30_000, false).expect("init");
            let (answer, _) = client
                .run(
                    addr,
                    &json!({"value": {"w": word}}),
                    Duration::from_secs(30),
                    1 << 20,
                )
                .await;
            assert_eq!(
                proxy::run_response(&answer, 30_000, 1 << 20, false).result,
                Some(json!({ "w": word }))
            );
        }
    };

    // The first cold start of the shape: nothing on the shelf, a container made as always.
    let first = factory.create(&spec(1)).await.expect("create");
    assert_eq!(first.id(), format!("{prefix}1_guest_hello"));
    hello(first.as_ref(), "first").await;
    wait_created(runtime, &state, prefix, 2).await;

    // The next one takes a created sandbox and starts it.
    let second = factory.create(&spec(2)).await.expect("create");
    assert!(
        second.id().starts_with(&format!("{prefix}presandbox")),
        "{} is not a pre-created sandbox",
        second.id()
    );
    assert_eq!(status(runtime, &state, second.id()).await, "running");
    hello(second.as_ref(), "second").await;
    let logs = invoker::container::logs::collect(
        &mut **second.logs().expect("logs").lock().await,
        invoker::container::logs::Collect {
            limit_bytes: 1 << 20,
            wait: true,
            developer_error: false,
            idle_timeout: Duration::from_secs(2),
        },
    )
    .await;
    assert!(
        logs.lines
            .iter()
            .any(|l| l.ends_with("stdout: hello second")),
        "{logs:?}"
    );
    // The same sandbox as a container made at the cold start: limits, namespaces, mounts,
    // capabilities, seccomp, masked paths.
    let bundles = dir.path().join("bundles");
    assert_eq!(
        sandbox_of(&bundles.join(first.id())),
        sandbox_of(&bundles.join(second.id()))
    );
    // Another shape has a shelf of its own: this one misses.
    let bigger = factory
        .create(&ContainerSpec {
            memory_mb: 256,
            ..spec(3)
        })
        .await
        .expect("create");
    assert_eq!(bigger.id(), format!("{prefix}3_guest_hello"));
    bigger.destroy().await.unwrap();

    // Sandboxes whose waiting process died: the cold start makes a container instead, and the
    // dead one is removed. (Two shelves of two now.)
    wait_created(runtime, &state, prefix, 4).await;
    let waiting: Vec<String> = containers(runtime, &state)
        .await
        .into_iter()
        .filter(|(_, s)| s == "created")
        .map(|(id, _)| id)
        .collect();
    for id in &waiting {
        let out = tokio::process::Command::new(runtime)
            .arg("--root")
            .arg(&state)
            .args(["state", id])
            .output()
            .await
            .unwrap();
        let pid = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["pid"]
            .as_i64()
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let replaced = factory.create(&spec(4)).await.expect("create");
    assert_eq!(replaced.id(), format!("{prefix}4_guest_hello"));
    hello(replaced.as_ref(), "replaced").await;
    let left: Vec<String> = containers(runtime, &state)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        waiting.iter().filter(|id| left.contains(id)).count(),
        waiting.len() - 1,
        "the dead sandbox taken is removed, the others still wait: {left:?}"
    );

    for c in [first, second, replaced] {
        c.destroy().await.unwrap();
    }
    // The shelf goes with `remove_all`: nothing left for the sweep itself to find.
    assert_eq!(factory.remove_all(prefix).await.unwrap(), 0);
    assert!(!state.exists(), "{:?}", containers(runtime, &state).await);
    assert!(!bundles.exists(), "a bundle is left behind");
    for h in ["memory", "freezer", "pids", "cpu", "unified", ""] {
        let parent = std::path::Path::new("/sys/fs/cgroup")
            .join(h)
            .join("wsk-runc");
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                assert!(
                    !e.file_name().to_string_lossy().starts_with(prefix),
                    "{} is left behind",
                    e.path().display()
                );
            }
        }
    }
    assert_eq!(pool.stats().leased, 0, "a lease was not given back");
    drop(factory);
    Arc::try_unwrap(pool)
        .expect("one owner")
        .shutdown()
        .await
        .unwrap();
}

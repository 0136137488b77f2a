//! The pool against the real Docker engine, with the locally built images (`runtimes/build.sh`,
//! part of `scripts/stack.sh up`): function containers join pooled pause containers, released
//! pause containers are checked before reuse, exhaustion waits or falls back, a crashed
//! manager's containers are reconciled.
//!
//! Each test uses its own manager name, so tests running side by side never see each other's
//! containers.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptions,
};
use futures::StreamExt;
use pcpm::{Endpoint, NetworkKey, OnEmpty, Pcpm, PcpmConfig, PcpmError, Released, ReplaceReason};

const NATIVE_IMAGE: &str = "openwhisk/dockerskeleton:nightly";
const NODE_IMAGE: &str = "openwhisk/action-nodejs-v18:nightly";
const CHILD_ENV: &str = "PCPM_TEST_CHILD";

async fn docker() -> Docker {
    pcpm::docker::connect().await.unwrap_or_else(|e| {
        panic!("docker is not reachable ({e}); start the stack with scripts/stack.sh up")
    })
}

fn bridge() -> NetworkKey {
    NetworkKey::network("bridge")
}

fn config(name: &str, high: usize, max: usize, on_empty: OnEmpty) -> PcpmConfig {
    let mut c = PcpmConfig::new(name);
    c.low_watermark = 0;
    c.high_watermark = high;
    c.max_per_pool = max;
    c.on_empty = on_empty;
    c
}

/// Containers labelled with manager `name`, any state.
async fn labelled(docker: &Docker, name: &str) -> Vec<String> {
    let filters = HashMap::from([("label", vec![format!("{}={name}", pcpm::LABEL_MANAGER)])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Removes the listed containers when dropped, whatever the test's outcome.
struct Cleanup(Arc<Mutex<Vec<String>>>);

impl Cleanup {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Vec::new())))
    }
    fn track(&self, id: &str) {
        self.0.lock().unwrap().push(id.to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut *self.0.lock().unwrap());
        if ids.is_empty() {
            return;
        }
        // Drop may run on a runtime thread (after a panic); a fresh thread has no runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let d = docker().await;
                for id in ids {
                    let opts = RemoveContainerOptionsBuilder::new().force(true).build();
                    let _ = d.remove_container(&id, Some(opts)).await;
                }
            });
        })
        .join()
        .unwrap();
    }
}

/// Creates and starts a function container on `endpoint`'s network; `entrypoint` replaces the
/// image's (the action proxy).
async fn run_function(
    docker: &Docker,
    endpoint: &Endpoint,
    image: &str,
    entrypoint: Option<Vec<String>>,
    host: HostConfig,
) -> String {
    let mut body = ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint,
        host_config: Some(host),
        ..Default::default()
    };
    endpoint.apply(&mut body);
    let id = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("create from {image}: {e}"))
        .id;
    if let Err(e) = docker.start_container(&id, None).await {
        // The test fails; the container it created goes first.
        remove(docker, &id).await;
        panic!("start {id} from {image}: {e}");
    }
    id
}

async fn remove(docker: &Docker, id: &str) {
    let opts = RemoveContainerOptionsBuilder::new().force(true).build();
    docker.remove_container(id, Some(opts)).await.unwrap();
}

/// The HTTP status the action proxy at `ip:8080` answers `GET /` with, retried for 10 s.
async fn http_status(client: &reqwest::Client, ip: IpAddr) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get(format!("http://{ip}:8080/")).send().await {
            Ok(r) => return r.status().as_u16(),
            Err(e) if Instant::now() > deadline => panic!("{ip}:8080 never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn container_ip(docker: &Docker, id: &str) -> IpAddr {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    pcpm::docker::ip_on(&info, "bridge").expect("a bridge address")
}

/// The container's exit code; fails the test after 60 s.
async fn exit_code(docker: &Docker, id: &str) -> i64 {
    let mut wait = docker.wait_container(id, None::<WaitContainerOptions>);
    let next = tokio::time::timeout(Duration::from_secs(60), wait.next())
        .await
        .unwrap_or_else(|_| panic!("container {id} still runs after 60 s"));
    match next {
        Some(Ok(r)) => r.status_code,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        other => panic!("wait {id}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_function_containers_join_pause_containers_concurrently() {
    let docker = docker().await;
    let name = "pcpm-t-fifty";
    let pcpm = Pcpm::new(
        docker.clone(),
        config(name, 50, 60, OnEmpty::Wait(Duration::from_secs(60))),
    )
    .await
    .unwrap();
    let cleanup = Cleanup::new();
    pcpm.wait_idle(&bridge(), 50, Duration::from_secs(120))
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // Live function containers per pause container, and the most ever seen at once.
    let live: Arc<Mutex<(HashMap<String, usize>, usize)>> = Arc::default();
    for wave in 0..2 {
        let outcomes = futures::future::join_all((0..50).map(|_| {
            let (docker, pcpm, client, live) =
                (docker.clone(), pcpm.clone(), client.clone(), live.clone());
            let cleanup = &cleanup;
            async move {
                let endpoint = pcpm.acquire(&bridge()).await.unwrap();
                let Endpoint::Pause(handle) = &endpoint else {
                    panic!("a fallback from a pool that waits");
                };
                let pause = handle.id().to_owned();
                {
                    let mut l = live.lock().unwrap();
                    let n = l.0.entry(pause.clone()).or_default();
                    *n += 1;
                    let n = *n;
                    l.1 = l.1.max(n);
                }
                let id = run_function(
                    &docker,
                    &endpoint,
                    NATIVE_IMAGE,
                    None,
                    HostConfig::default(),
                )
                .await;
                cleanup.track(&id);
                let ip = endpoint
                    .ip()
                    .expect("a pause container on bridge has an address");
                // The action proxy answers an unknown path with 404: HTTP from the function
                // container, on the pause container's address.
                assert_eq!(http_status(&client, ip).await, 404);
                remove(&docker, &id).await;
                *live.lock().unwrap().0.get_mut(&pause).unwrap() -= 1;
                endpoint.release().await
            }
        }))
        .await;
        assert!(
            outcomes
                .iter()
                .all(|o| o.as_ref().is_some_and(Released::is_recycled)),
            "wave {wave}: {outcomes:?}"
        );
    }
    assert_eq!(
        live.lock().unwrap().1,
        1,
        "a pause container served two live functions"
    );
    let stats = pcpm.stats(&bridge()).unwrap();
    assert_eq!(stats.recycled, 100, "{stats:?}");
    assert_eq!(stats.replaced, 0, "{stats:?}");
    pcpm.shutdown().await.unwrap();
    assert!(labelled(&docker, name).await.is_empty());
}

/// Node.js script: listen on 9000 and leave a file, then stay up.
const LEAVE_BEHIND: &str = r#"
require('fs').writeFileSync('/tmp/left-behind', 'x');
require('net').createServer(s => s.end('previous')).listen(9000, () => console.log('listening'));
"#;

/// Node.js script: exit 0 only when nothing of the previous function is here (no listener on
/// 9000, no file) and port 9000 can be taken.
const FIND_NOTHING: &str = r#"
const fs = require('fs'), net = require('net');
if (fs.existsSync('/tmp/left-behind')) { console.log('file left'); process.exit(2); }
const c = net.connect(9000, '127.0.0.1');
c.on('connect', () => { console.log('listener left'); process.exit(3); });
c.on('error', () => {
  const s = net.createServer().listen(9000, () => { s.close(); process.exit(0); });
  s.on('error', e => { console.log('cannot listen', e.code); process.exit(4); });
});
"#;

fn node(script: &str) -> Option<Vec<String>> {
    Some(vec!["node".into(), "-e".into(), script.into()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_pause_container_serves_the_next_function_clean() {
    let docker = docker().await;
    let name = "pcpm-t-reuse";
    // One pause container at most: the second function must get the same one.
    let pcpm = Pcpm::new(
        docker.clone(),
        config(name, 1, 1, OnEmpty::Wait(Duration::from_secs(30))),
    )
    .await
    .unwrap();
    let cleanup = Cleanup::new();

    let first = pcpm.acquire(&bridge()).await.unwrap();
    let Endpoint::Pause(handle) = &first else {
        panic!("fallback")
    };
    let (pause, ip) = (handle.id().to_owned(), handle.ip().unwrap());
    let a = run_function(
        &docker,
        &first,
        NODE_IMAGE,
        node(LEAVE_BEHIND),
        HostConfig::default(),
    )
    .await;
    cleanup.track(&a);
    // The listener is reachable on the pause container's address.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect((ip, 9000)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the first function never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    remove(&docker, &a).await;
    assert_recycled(first.release().await);

    let second = pcpm.acquire(&bridge()).await.unwrap();
    let Endpoint::Pause(handle) = &second else {
        panic!("fallback")
    };
    assert_eq!(
        handle.id(),
        pause,
        "the pool of one handed out another container"
    );
    assert_eq!(handle.previous_uses(), 1);
    let b = run_function(
        &docker,
        &second,
        NODE_IMAGE,
        node(FIND_NOTHING),
        HostConfig::default(),
    )
    .await;
    cleanup.track(&b);
    assert_eq!(
        exit_code(&docker, &b).await,
        0,
        "the second function found a trace of the first"
    );
    remove(&docker, &b).await;
    assert_recycled(second.release().await);
    pcpm.shutdown().await.unwrap();
    assert!(labelled(&docker, name).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_or_dropped_pause_containers_are_replaced() {
    let docker = docker().await;
    let name = "pcpm-t-dirty";
    let pcpm = Pcpm::new(
        docker.clone(),
        config(name, 1, 2, OnEmpty::Wait(Duration::from_secs(30))),
    )
    .await
    .unwrap();
    let cleanup = Cleanup::new();

    // A function that rewrote /etc/hosts, which joining containers share with the pause
    // container: the next function would resolve names through it.
    let endpoint = pcpm.acquire(&bridge()).await.unwrap();
    let pause = endpoint_id(&endpoint);
    let script = "require('fs').appendFileSync('/etc/hosts', '10.6.6.6 registry.local\\n')";
    let f = run_function(
        &docker,
        &endpoint,
        NODE_IMAGE,
        node(script),
        HostConfig::default(),
    )
    .await;
    cleanup.track(&f);
    assert_eq!(exit_code(&docker, &f).await, 0);
    remove(&docker, &f).await;
    match endpoint.release().await {
        Some(Released::Replaced(ReplaceReason::FileChanged(path))) => {
            assert_eq!(path.file_name(), Some("hosts".as_ref()), "{path:?}");
        }
        other => panic!("a rewritten /etc/hosts was recycled: {other:?}"),
    }
    assert_gone(&docker, &pause).await;

    // Released while the function container still runs: a process is left in the namespace.
    let endpoint = pcpm.acquire(&bridge()).await.unwrap();
    let pause = endpoint_id(&endpoint);
    let f = run_function(
        &docker,
        &endpoint,
        NODE_IMAGE,
        node(LEAVE_BEHIND),
        HostConfig::default(),
    )
    .await;
    cleanup.track(&f);
    match endpoint.release().await {
        Some(Released::Replaced(ReplaceReason::Processes(_))) => {}
        other => panic!("a namespace with a live process was recycled: {other:?}"),
    }
    remove(&docker, &f).await;
    assert_gone(&docker, &pause).await;

    // Dropped without release: its state is unknown, so it is replaced.
    let endpoint = pcpm.acquire(&bridge()).await.unwrap();
    let pause = endpoint_id(&endpoint);
    drop(endpoint);
    assert_gone(&docker, &pause).await;

    // The refill replaced every one of them.
    pcpm.wait_idle(&bridge(), 1, Duration::from_secs(30))
        .await
        .unwrap();
    let stats = pcpm.stats(&bridge()).unwrap();
    assert_eq!((stats.replaced, stats.recycled), (3, 0), "{stats:?}");
    pcpm.shutdown().await.unwrap();
    assert!(labelled(&docker, name).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_container_killed_while_idle_is_never_handed_out() {
    let docker = docker().await;
    let name = "pcpm-t-killed";
    let pcpm = Pcpm::new(
        docker.clone(),
        config(name, 1, 2, OnEmpty::Wait(Duration::from_secs(30))),
    )
    .await
    .unwrap();
    let cleanup = Cleanup::new();
    pcpm.wait_idle(&bridge(), 1, Duration::from_secs(30))
        .await
        .unwrap();
    let idle = labelled(&docker, name).await;
    assert_eq!(idle.len(), 1, "{idle:?}");
    // What a dockerd restart does to every container: its process is gone.
    docker
        .kill_container(
            &idle[0],
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    exit_code(&docker, &idle[0]).await;

    // Handed out, it would fail the function's start ("cannot join network of a non running
    // container"); the pool removes it and creates another.
    let endpoint = pcpm.acquire(&bridge()).await.unwrap();
    assert_ne!(endpoint_id(&endpoint), idle[0]);
    let f = run_function(
        &docker,
        &endpoint,
        NODE_IMAGE,
        node("process.exit(0)"),
        HostConfig::default(),
    )
    .await;
    cleanup.track(&f);
    assert_eq!(exit_code(&docker, &f).await, 0);
    remove(&docker, &f).await;
    assert_recycled(endpoint.release().await);
    assert_gone(&docker, &idle[0]).await;
    let stats = pcpm.stats(&bridge()).unwrap();
    assert_eq!((stats.replaced, stats.recycled), (1, 1), "{stats:?}");
    pcpm.shutdown().await.unwrap();
    assert!(labelled(&docker, name).await.is_empty());
}

fn assert_recycled(released: Option<Released>) {
    match released {
        Some(Released::Recycled) => {}
        other => panic!("not recycled: {other:?}"),
    }
}

fn endpoint_id(e: &Endpoint) -> String {
    match e {
        Endpoint::Pause(h) => h.id().to_owned(),
        Endpoint::Fallback(_) => panic!("fallback"),
    }
}

/// Waits until the container no longer exists (removal runs in the background).
async fn assert_gone(docker: &Docker, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "container {id} was not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_pool_waits_to_its_deadline_and_a_release_serves_the_waiter() {
    const WAIT: Duration = Duration::from_secs(1);
    let docker = docker().await;
    let name = "pcpm-t-wait";
    let pcpm = Pcpm::new(docker.clone(), config(name, 1, 1, OnEmpty::Wait(WAIT)))
        .await
        .unwrap();
    let held = pcpm.acquire(&bridge()).await.unwrap();
    let pause = endpoint_id(&held);

    let started = Instant::now();
    match pcpm.acquire(&bridge()).await {
        Err(PcpmError::Exhausted { waited, .. }) => assert_eq!(waited, WAIT),
        other => panic!("expected exhaustion, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited >= WAIT, "gave up after {waited:?}");

    // A waiter is served by the next release. Polled once, the acquire has queued as a waiter
    // (the pool is empty and at its maximum); the release then hands it the very container.
    // Its deadline cannot win even if the release checks outlast it: the waiter is not polled
    // meanwhile, and a timeout polls the future it bounds before its timer.
    let key = bridge();
    let mut waiter = std::pin::pin!(pcpm.acquire(&key));
    assert!(
        futures::poll!(waiter.as_mut()).is_pending(),
        "an acquire on an empty pool did not wait"
    );
    assert_eq!(pcpm.stats(&bridge()).unwrap().waiting, 1);
    assert_recycled(held.release().await);
    // A bound only against hanging: the handed-over container is ready at the next poll.
    let served = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter was not served by the release")
        .unwrap();
    assert_eq!(endpoint_id(&served), pause);
    assert_recycled(served.release().await);
    let stats = pcpm.stats(&bridge()).unwrap();
    assert_eq!(stats.exhausted, 1, "{stats:?}");
    assert_eq!(stats.fallbacks, 0, "{stats:?}");
    pcpm.shutdown().await.unwrap();
    assert!(labelled(&docker, name).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_pool_falls_back_to_ordinary_networking() {
    let docker = docker().await;
    let name = "pcpm-t-fallback";
    let pcpm = Pcpm::new(docker.clone(), config(name, 1, 1, OnEmpty::Fallback))
        .await
        .unwrap();
    pcpm.wait_idle(&bridge(), 1, Duration::from_secs(30))
        .await
        .unwrap();
    let cleanup = Cleanup::new();
    let held = pcpm.acquire(&bridge()).await.unwrap();
    assert!(matches!(held, Endpoint::Pause(_)));
    let fallback = pcpm.acquire(&bridge()).await.unwrap();
    let Endpoint::Fallback(key) = &fallback else {
        panic!("no fallback from a full pool")
    };
    assert_eq!(key, &bridge());
    assert_eq!(fallback.network_mode(), "bridge");
    // The fallback container gets its own network and answers on its own address.
    let f = run_function(
        &docker,
        &fallback,
        NATIVE_IMAGE,
        None,
        HostConfig::default(),
    )
    .await;
    cleanup.track(&f);
    let client = reqwest::Client::new();
    assert_eq!(
        http_status(&client, container_ip(&docker, &f).await).await,
        404
    );
    remove(&docker, &f).await;
    assert!(fallback.release().await.is_none());
    assert_eq!(pcpm.stats(&bridge()).unwrap().fallbacks, 1);
    drop(held);
    pcpm.shutdown().await.unwrap();
    assert!(labelled(&docker, name).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_manager_is_reconciled_and_nothing_is_left() {
    let docker = docker().await;
    let name = "pcpm-t-crash";
    let cleanup = Cleanup::new();
    // A manager in a child process fills a pool of 3, hands one out to a function container
    // that joins it, then is killed with SIGKILL.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_role",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, name)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut function = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints "test child_role ... " on the same line first.
        if let Some((_, id)) = line.trim_end().split_once("FUNCTION ") {
            function = id.to_owned();
            break;
        }
    }
    assert!(!function.is_empty(), "the child never started its function");
    cleanup.track(&function);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(labelled(&docker, name).await.len(), 3);

    // The next run adopts the two clean idle ones and removes the one a function joined.
    let pcpm = Pcpm::new(docker.clone(), config(name, 2, 4, OnEmpty::Fallback))
        .await
        .unwrap();
    let r = pcpm.reconciled();
    assert_eq!((r.adopted, r.removed), (2, 1), "{r:?}");
    let stats = pcpm.stats(&bridge()).unwrap();
    assert_eq!(stats.adopted, 2);
    // Adopted containers serve functions like new ones.
    let endpoint = pcpm.acquire(&bridge()).await.unwrap();
    assert!(matches!(endpoint, Endpoint::Pause(_)));
    let f = run_function(
        &docker,
        &endpoint,
        NATIVE_IMAGE,
        None,
        HostConfig::default(),
    )
    .await;
    cleanup.track(&f);
    let client = reqwest::Client::new();
    assert_eq!(http_status(&client, endpoint.ip().unwrap()).await, 404);
    remove(&docker, &f).await;
    remove(&docker, &function).await;
    assert_recycled(endpoint.release().await);
    pcpm.shutdown().await.unwrap();
    assert!(labelled(&docker, name).await.is_empty());
}

/// The child side of `a_killed_manager_is_reconciled_and_nothing_is_left`: a manager named by
/// the environment, a pool of 3, one handed out and joined by a function container whose id
/// it prints; then it waits to be killed.
#[test]
#[ignore = "not a test: the body of the child process another test starts and kills"]
fn child_role() {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        panic!("child_role runs only as a child of another test");
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let docker = docker().await;
        let pcpm = Pcpm::new(docker.clone(), config(&name, 3, 3, OnEmpty::Fallback))
            .await
            .unwrap();
        pcpm.wait_idle(&bridge(), 3, Duration::from_secs(60))
            .await
            .unwrap();
        let endpoint = pcpm.acquire(&bridge()).await.unwrap();
        let options = CreateContainerOptionsBuilder::new().build();
        let mut body = ContainerCreateBody {
            image: Some(NATIVE_IMAGE.to_owned()),
            ..Default::default()
        };
        endpoint.apply(&mut body);
        let id = docker
            .create_container(Some(options), body)
            .await
            .unwrap()
            .id;
        docker.start_container(&id, None).await.unwrap();
        println!("FUNCTION {id}");
        std::mem::forget(endpoint);
        std::future::pending::<()>().await;
    });
}

//! Tenant isolation in netns mode, from inside real functions: a Node.js action under runc in a
//! netpool namespace, configured as the invoker configures its pool, tries TCP connections to
//! the host and to other functions and returns what happened. The host guard refuses every
//! connection a function starts towards the host's addresses (the gateway and the host's other
//! links) and towards another bridge, but for the port the operator allowed; functions of one
//! bridge are kept apart by isolated bridge ports; the invoker still reaches each function.
//!
//! Also here, as they leave objects of the same kinds behind when they fail: a start-up that
//! fails after the invoker's pools exist (vm mode, whose VM factory cannot find QEMU) leaves no
//! namespace, link or firewall rule; the runc backend's sweep removes a container cgroup that
//! is busy for a moment.
//!
//! Ranges: 10.241.0.0/22 (pool `iso`), 10.241.4.0/22 (invoker 802's VM slots) and
//! 10.241.8.0/22 (pool `rc`), apart from every other test's.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use invoker::container::proxy::{self, ProxyClient};
use invoker::container::runc::RuncFactory;
use invoker::container::{Container, ContainerFactory, ContainerSpec, ImageRef};
use serde_json::{Value, json};

const NODE: &str = "openwhisk/action-nodejs-v18:nightly";

/// Tries each `host:port` target with a 1.5 s bound: `connected`, the error code
/// (`ECONNREFUSED`, `EHOSTUNREACH`, ...) or `timeout`.
const PROBE: &str = r"
const net = require('net');
function probe(target) {
  const [host, port] = target.split(':');
  return new Promise(resolve => {
    const s = net.connect({host, port: Number(port)});
    const t = setTimeout(() => { s.destroy(); resolve('timeout'); }, 1500);
    s.on('connect', () => { clearTimeout(t); s.destroy(); resolve('connected'); });
    s.on('error', e => { clearTimeout(t); resolve(e.code || String(e)); });
  });
}
async function main(p) {
  const out = {};
  for (const t of p.targets) out[t] = await probe(t);
  return out;
}
";

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the isolation tests create namespaces, bridges and firewall rules: run them as root"
    );
}

/// Every line of `iptables -S` (all chains of the filter table) that mentions `needle`.
fn iptables_lines(needle: &str) -> Vec<String> {
    let out = Command::new("iptables").arg("-S").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Host links whose name starts with `prefix`.
fn links(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// An IPv4 address of the host on a link that is neither loopback nor one of `pool`'s.
fn other_host_address(pool: &str) -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        let link = *words.get(1)?;
        if link == "lo" || link.starts_with(&format!("{pool}br")) {
            return None;
        }
        words.get(3)?.split('/').next()?.parse().ok()
    })
}

async fn start(factory: &RuncFactory, name: &str) -> Box<dyn Container> {
    let spec = ContainerSpec {
        name: name.into(),
        image: ImageRef::local(NODE),
        memory_mb: 128,
        cpu_shares: 128,
        cpus: None,
        env: vec!["__OW_API_HOST=http://127.0.0.1".into()],
        sandbox: invoker::container::Sandbox::Mode,
    };
    let c = factory.create(&spec).await.expect("runc create");
    let init = json!({"value": {"name": "probe", "main": "main", "binary": false, "code": PROBE}});
    let (answer, _) = ProxyClient::new()
        .init(c.addr(), &init, Duration::from_secs(30), 1 << 20)
        .await;
    proxy::init_verdict(&answer, 30_000, false).expect("init: the invoker reaches the function");
    c
}

/// Runs the probe in `c` against `targets`; the map of target to outcome.
async fn probe(c: &dyn Container, targets: &[String]) -> serde_json::Map<String, Value> {
    let (answer, _) = ProxyClient::new()
        .run(
            c.addr(),
            &json!({"value": {"targets": targets}}),
            Duration::from_secs(60),
            1 << 20,
        )
        .await;
    let r = proxy::run_response(&answer, 60_000, 1 << 20, false);
    match r.result.clone() {
        Some(Value::Object(m)) => m,
        _ => panic!("the probe did not answer: {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_reach_neither_the_host_nor_each_other_but_for_an_allowed_port() {
    require_root();
    let docker = pcpm::docker::connect()
        .await
        .expect("docker (for image export) is needed; scripts/stack.sh up");
    // Host services listening on every address (as the invoker's admin port and the front
    // door do): one on the port the operator allows, one not.
    let allowed = TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let denied = TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let (allowed_port, denied_port) = (
        allowed.local_addr().unwrap().port(),
        denied.local_addr().unwrap().port(),
    );
    // Two bridges of two slots: a and b share the first, c is alone on the second.
    let mut cfg = netpool::PoolConfig::new("iso", Ipv4Addr::new(10, 241, 0, 0), 22);
    cfg.bridge_prefix_len = 23;
    cfg.slots_per_bridge = 2;
    cfg.max_slots = 4;
    cfg.low_watermark = 3;
    cfg.high_watermark = 3;
    assert!(cfg.guard_host, "the guard is on by default");
    cfg.allow_host_ports = vec![(allowed_port, allowed_port)];
    let pool = Arc::new(
        netpool::NetPool::new(cfg)
            .await
            .expect("netpool (run as root)"),
    );
    pool.wait_idle(3, Duration::from_secs(30)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let factory = RuncFactory::new(
        docker,
        pool.clone(),
        &dir.path().join("images"),
        &dir.path().join("bundles"),
        &dir.path().join("state"),
    );
    factory.prepare(NODE).await.expect("image unpacked");
    // Names (and so cgroups) of this run only: a failed run's containers cannot share them.
    let run = std::process::id();
    let mut started = Vec::new();
    for n in ["a", "b", "c"] {
        started.push(start(&factory, &format!("wskiso0_{run}{n}_guest_{n}")).await);
    }
    let ip = |c: &dyn Container| match c.addr().ip() {
        std::net::IpAddr::V4(v4) => v4,
        other => panic!("not IPv4: {other}"),
    };
    let bridge_of = |addr: Ipv4Addr| u32::from(addr) >> 9;
    // Three slots of two-slot bridges: two share one bridge (a and b), c has the other. Which
    // function got which slot depends on the order the refill finished them.
    let bridges: Vec<u32> = started.iter().map(|c| bridge_of(ip(&**c))).collect();
    let lone = (0..3)
        .find(|&i| bridges.iter().filter(|&&b| b == bridges[i]).count() == 1)
        .unwrap_or_else(|| panic!("no function alone on a bridge: {bridges:?}"));
    let c = started.remove(lone);
    let b = started.pop().unwrap();
    let a = started.pop().unwrap();
    let (ia, ib, ic) = (ip(&*a), ip(&*b), ip(&*c));
    assert_eq!(bridge_of(ia), bridge_of(ib), "a and b share a bridge");
    assert_ne!(bridge_of(ia), bridge_of(ic), "c is on the other bridge");
    let gateway = Ipv4Addr::from((u32::from(ia) & !0x1ff) + 1);

    let mut targets = vec![
        format!("{gateway}:{allowed_port}"),
        format!("{gateway}:{denied_port}"),
        // The stack's broker and database (the invoker's own ports, the front door and
        // anything else bound to every address are what the denied listener stands for).
        format!("{gateway}:9092"),
        format!("{gateway}:5984"),
        format!("{ib}:8080"),
        format!("{ic}:8080"),
    ];
    let other = other_host_address("iso");
    if let Some(o) = other {
        targets.push(format!("{o}:{allowed_port}"));
        targets.push(format!("{o}:{denied_port}"));
    }
    let seen = probe(&*a, &targets).await;
    eprintln!("from function a ({ia}): {seen:#?}");
    let outcome = |t: &str| {
        seen.get(t)
            .and_then(Value::as_str)
            .unwrap_or("missing")
            .to_owned()
    };
    assert_eq!(outcome(&targets[0]), "connected", "the allowed port");
    // A reset from the guard: the listener is there, so only the guard refuses.
    assert_eq!(
        outcome(&targets[1]),
        "ECONNREFUSED",
        "a host port not allowed"
    );
    assert_ne!(outcome(&targets[2]), "connected", "the broker");
    assert_ne!(outcome(&targets[3]), "connected", "the database");
    // Same bridge: isolated ports, the frame never arrives (no ARP answer).
    assert_ne!(
        outcome(&targets[4]),
        "connected",
        "function b on a's bridge"
    );
    // Other bridge: the guard refuses the forward (without it, the host's FORWARD policy
    // would drop it silently, or accept it on a host without Docker).
    assert_eq!(
        outcome(&targets[5]),
        "ECONNREFUSED",
        "function c on another bridge"
    );
    if let Some(o) = other {
        assert_eq!(outcome(&targets[6]), "connected", "{o} on the allowed port");
        assert_eq!(
            outcome(&targets[7]),
            "ECONNREFUSED",
            "{o} on a port not allowed"
        );
    }
    // And from the other bridge back to a.
    let back = probe(&*c, &[format!("{ia}:8080")]).await;
    assert_ne!(
        back.values().next().and_then(Value::as_str),
        Some("connected"),
        "c reached a: {back:?}"
    );
    // The guard is what the pool installed, nothing more: refusals and returns only.
    let rules = iptables_lines("NETPOOL-iso-");
    assert!(
        rules.iter().all(|r| !r.contains("ACCEPT")),
        "the guard accepts something: {rules:#?}"
    );

    for c in [a, b, c] {
        c.destroy().await.unwrap();
    }
    assert_eq!(factory.remove_all("wskiso0_").await.unwrap(), 0);
    drop(factory);
    Arc::try_unwrap(pool)
        .expect("one owner")
        .shutdown()
        .await
        .unwrap();
    assert!(links("isobr").is_empty() && links("isov").is_empty());
    let left = iptables_lines("NETPOOL-iso-");
    assert!(left.is_empty(), "firewall rules left: {left:#?}");
    drop((allowed, denied));
}

/// vm mode, with a QEMU that does not exist: the VM slots' pool is up (bridge, namespaces,
/// firewall guard) when the VM factory fails; start-up reports the factory's error and leaves
/// nothing of the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_up_failing_after_the_pools_exist_leaves_nothing() {
    require_root();
    let stack = common::Stack::from_env();
    let vars = [
        ("KAFKA_HOSTS", stack.kafka_hosts.clone()),
        ("RUNTIMES_MANIFEST", r#"{"runtimes": {}}"#.to_owned()),
        ("CONFIG_whisk_couchdb_port", {
            let url = &stack.couchdb.url;
            url.rsplit(':').next().unwrap_or("5984").to_owned()
        }),
        (
            "CONFIG_whisk_couchdb_username",
            stack.couchdb.username.clone(),
        ),
        (
            "CONFIG_whisk_couchdb_password",
            stack.couchdb.password.expose().to_owned(),
        ),
        ("CONFIG_whisk_kafka_topics_prefix", common::unique("iso")),
        ("CONFIG_whisk_invoker_network_mode", "vm".to_owned()),
        (
            "CONFIG_whisk_invoker_network_vm_subnet",
            "10.241.4.0/22".to_owned(),
        ),
        ("CONFIG_whisk_invoker_vm_pool_lowWatermark", "1".to_owned()),
        ("CONFIG_whisk_invoker_vm_pool_highWatermark", "1".to_owned()),
        ("CONFIG_whisk_invoker_vm_accelerator", "auto".to_owned()),
        (
            "CONFIG_whisk_invoker_vm_qemu",
            "/nonexistent/qemu-system-x86_64".to_owned(),
        ),
    ];
    let settings = openwhisk::settings::Settings::from_vars(
        vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())),
        None,
    )
    .unwrap();
    let config = invoker::service::ServiceConfig {
        settings,
        id: 802,
        unique_name: None,
        displayed_name: None,
        metrics: None,
    };
    let e = invoker::service::check(config)
        .await
        .expect_err("no QEMU: the VM factory cannot start");
    let chain = common::chain(&e);
    assert!(chain.contains("VM backend"), "{chain}");
    assert!(links("v802").is_empty(), "links left: {:?}", links("v802"));
    assert!(!std::path::Path::new("/run/netpool/v802").exists());
    let left = iptables_lines("NETPOOL-v802-");
    assert!(left.is_empty(), "firewall rules left: {left:#?}");
    // The VM factory's run folder (`/run/wsk-vm/wsk<unique><id>`), made by the canary's start.
    let folders: Vec<String> = std::fs::read_dir("/run/wsk-vm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("wsk") && n.ends_with("802"))
        .collect();
    assert!(folders.is_empty(), "VM run folders left: {folders:?}");
}

/// The leak seen under load: a container's cgroup still busy with its last, exiting process
/// when runc deletes it. The sweep retries it while busy (and removes the empty ones outright)
/// on every hierarchy. A process in the cgroup stands for the exiting one; it ends 600 ms into
/// the sweep, which reaches the cgroup long before (the sweep without the retry fails here
/// with EBUSY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_a_cgroup_that_is_busy_for_a_moment_and_the_empty_ones() {
    let docker = pcpm::docker::connect()
        .await
        .expect("docker is needed; scripts/stack.sh up");
    let pool = testkit::vm::slot_pool(
        "rc",
        Ipv4Addr::new(10, 241, 8, 0),
        22,
        netpool::SlotKind::Container,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let factory = RuncFactory::new(
        docker,
        pool.clone(),
        &dir.path().join("images"),
        &dir.path().join("bundles"),
        &dir.path().join("state"),
    );
    let root = std::path::Path::new("/sys/fs/cgroup");
    // cgroup v1 (one hierarchy per controller, as on this host) or v2 (the root itself).
    let hierarchies: Vec<std::path::PathBuf> = if root.join("cgroup.controllers").is_file() {
        vec![root.to_owned()]
    } else {
        ["memory", "pids", "cpu"]
            .iter()
            .map(|h| root.join(h))
            .filter(|h| h.join("cgroup.procs").is_file())
            .collect()
    };
    assert!(
        !hierarchies.is_empty(),
        "no cgroup hierarchy under {root:?}"
    );
    let busy = "wskrc0_1_guest_busy";
    let empty = "wskrc0_2_guest_empty";
    for h in &hierarchies {
        std::fs::create_dir_all(h.join("wsk-runc").join(busy)).unwrap();
        std::fs::create_dir_all(h.join("wsk-runc").join(empty)).unwrap();
    }
    let mut holder = Command::new("sleep").arg("300").spawn().unwrap();
    std::fs::write(
        hierarchies[0]
            .join("wsk-runc")
            .join(busy)
            .join("cgroup.procs"),
        holder.id().to_string(),
    )
    .unwrap();
    let began = std::time::Instant::now();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        holder.kill().unwrap();
        holder.wait().unwrap();
    });
    let swept = factory.remove_all("wskrc0_").await;
    let took = began.elapsed();
    release.join().unwrap();
    swept.expect("the sweep removes the busy cgroup once it is free");
    assert!(
        took >= Duration::from_millis(500),
        "the sweep waited {took:?}"
    );
    for h in &hierarchies {
        for name in [busy, empty] {
            assert!(
                !h.join("wsk-runc").join(name).exists(),
                "{name} left in {}",
                h.display()
            );
        }
    }
    drop(factory);
    Arc::try_unwrap(pool)
        .expect("one owner")
        .shutdown()
        .await
        .unwrap();
}

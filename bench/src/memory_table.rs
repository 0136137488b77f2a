//! `bench memory`: the PCPM paper's Table 2 on this machine: what 50 functions' worth of
//! readiness costs in memory, and how long 50 concurrent functions take, for
//!
//! - `cold`: nothing kept (each function: create, start, `/init`, `/run`, bridge networking);
//! - `warm`: 50 containers with the action initialized and run once (each function: `/run`);
//! - `prewarm`: 50 stem cells, the runtime started but no action (each: `/init`, `/run`);
//! - `pcpm`: 50 pause containers (each: create and start joined to one, `/init`, `/run`);
//! - `netns`: 50 netpool namespaces (each function: crun, the invoker's default OCI runtime,
//!   with the namespace, `/init`, `/run`);
//! - `presandbox`: 50 sandboxes created ahead of need on netpool namespaces
//!   (`whisk.invoker.runc.presandboxes`: overlay, cgroup, namespaces, the container's process
//!   waiting to run the runtime; each function: `start`, `/init`, `/run`);
//! - `vm`: Linux microVMs (QEMU, TCG) on netpool VM slots, Node.js initialized and run once
//!   (each function: boot, `/init`, `/run`); 10 of them, not 50 (each boots a kernel under TCG
//!   and keeps about 200 MiB);
//! - `unikernel`: our WebAssembly unikernels on VM slots with the sieve module initialized and
//!   run once (each function: boot, `/init`, `/run`).
//!
//! For the VM rows the idle objects' CPU is measured too (utime + stime of their QEMU
//! processes over 5 s while idle, in cores).
//!
//! Memory is measured, not estimated: for the 50 idle objects, the PSS of every process they
//! keep (container processes and their `containerd-shim`s), what their cgroups are charged, and
//! the growth of the kernel's unreclaimable memory (slab, kernel stacks, page tables, per-CPU)
//! from before they were created. Times are at the container level (Docker or runc and the action
//! proxy, no Kafka); `bench coldstart` has the end-to-end times.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{InspectContainerOptions, RemoveContainerOptionsBuilder};
use pcpm::{Endpoint, NetworkKey, OnEmpty, Pcpm, PcpmConfig};
use serde_json::{Value, json};

use crate::machine::Machine;
use crate::memory::{
    KernelGrowth, KernelMemory, ProcessMemory, cgroup_charge_kib, comm, parent_pid,
};

const NODE_IMAGE: &str = "openwhisk/action-nodejs-v18:nightly";
const SIEVE: &str = "function main(p) { const n = p.n || 20000; const s = new Uint8Array(n + 1); let c = 0; for (let i = 2; i <= n; i++) { if (!s[i]) { c++; for (let j = i * i; j <= n; j += i) s[j] = 1; } } return {primes: c}; }";
const LABEL: &str = "whisk-bench";

/// One row of the table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub objects: usize,
    pub processes: ProcessMemory,
    pub cgroup_charge_kib: u64,
    pub kernel: KernelGrowth,
    /// Processes' PSS plus the kernel's unreclaimable growth.
    pub committed_kib: i64,
    /// Time for 50 concurrent functions from this state, seconds (None: not measured).
    pub total_s: Option<f64>,
    /// VM rows: CPU the idle objects use together, in cores (None: not measured).
    pub idle_cpu_cores: Option<f64>,
}

/// Everything `bench memory` writes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryReport {
    pub machine: Machine,
    pub n: usize,
    pub rows: Vec<Row>,
    pub method: &'static str,
}

const METHOD: &str = "VM rows (vm, unikernel): the PSS of each VM's QEMU process (guest memory it touched included), the kernel's growth as below, no cgroup charge; time: the VMs booted, initialized and run concurrently from nothing; idle CPU: utime+stime of the QEMU processes over 5 s while idle. Other rows: for each scenario the machine starts with none of our containers; the kernel's /proc/meminfo is read, the N objects are created and left idle for 2 s, then: the PSS (smaps_rollup) of every process in each container (the init process and its descendants) and of each container's containerd-shim, each container's memory cgroup charge (user + kernel), and the growth of SUnreclaim + KernelStack + PageTables + Percpu. committed = PSS + kernel growth. presandbox: the PSS and cgroup charge of each created sandbox's waiting process (no shim), the kernel's growth from before its netpool pool (n + 2 namespaces: the sandboxes', the primer's and a spare) was made. Times: N concurrent functions from that state at the container level, one sample.";

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

async fn post(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    body: &Value,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client
            .post(format!("http://{addr}{path}"))
            .json(body)
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    bail!("{path} answered {status}: {v}");
                }
                return Ok(v);
            }
            // Not listening yet, or (`/init`, which has not run when no answer came) reset by
            // a guest whose sockets were all taken: try again, as the invoker's client does.
            Err(e) if Instant::now() < deadline && (e.is_connect() || path == "/init") => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn init_and_run(client: &reqwest::Client, addr: SocketAddr, init: bool) -> Result<()> {
    if init {
        post(
            client,
            addr,
            "/init",
            &json!({"value": {"name": "sieve", "main": "main", "binary": false, "code": SIEVE}}),
        )
        .await?;
    }
    let v = post(client, addr, "/run", &json!({"value": {"n": 20000}})).await?;
    if v.get("primes").is_none() {
        bail!("unexpected result {v}");
    }
    Ok(())
}

/// Creates and starts a node container; returns (id, proxy address).
async fn node_container(
    docker: &Docker,
    endpoint: Option<&Endpoint>,
) -> Result<(String, SocketAddr)> {
    let mut body = ContainerCreateBody {
        image: Some(NODE_IMAGE.to_owned()),
        labels: Some(HashMap::from([(LABEL.to_owned(), "memory".to_owned())])),
        host_config: Some(HostConfig {
            network_mode: Some("bridge".into()),
            memory: Some(128 << 20),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some(e) = endpoint {
        e.apply(&mut body);
    }
    let id = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            body,
        )
        .await?
        .id;
    docker.start_container(&id, None).await?;
    let ip = match endpoint.and_then(Endpoint::ip) {
        Some(ip) => ip,
        None => crate::docker_start::bridge_ip(docker, &id).await?,
    };
    Ok((id, SocketAddr::new(ip, 8080)))
}

/// N concurrent functions (create, `/init`, `/run`) under runc on the pool's namespaces; the
/// image is unpacked before the clock starts (the invoker does it at start-up).
async fn netns_functions(
    docker: &Docker,
    client: &reqwest::Client,
    np: &netpool::NetPool,
    n: usize,
) -> Result<f64> {
    use invoker::container::{ContainerFactory, runc::RuncFactory};
    let dir = std::env::temp_dir().join(format!("bench-memory-{}", std::process::id()));
    let factory = RuncFactory::new(
        docker.clone(),
        std::sync::Arc::new(np.clone()),
        std::path::Path::new("/var/lib/wsk-invoker/images"),
        &dir.join("bundles"),
        &dir.join("state"),
    )
    .with_runtime(std::path::Path::new(OCI_RUNTIME));
    factory.prepare(NODE_IMAGE).await?;
    let ran = runc_functions(&factory, client, n, "wskbm_").await;
    factory.remove_all("wskbm_").await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ran?.0)
}

/// `n` concurrent functions from `factory` (create, `/init`, `/run`), each container destroyed
/// after; the time until the last ran, and how many were pre-created sandboxes (their ids
/// start with `<prefix>presandbox`). Any failure is the error.
async fn runc_functions(
    factory: &invoker::container::runc::RuncFactory,
    client: &reqwest::Client,
    n: usize,
    prefix: &str,
) -> Result<(f64, usize)> {
    use invoker::container::ContainerFactory;
    let t0 = Instant::now();
    let made = futures::future::join_all((0..n).map(|i| async move {
        let c = factory
            .create(&sieve_spec(format!("{prefix}{i}_sieve")))
            .await?;
        let ran = init_and_run(client, c.addr(), true).await;
        anyhow::Ok((c, ran))
    }))
    .await;
    let took = t0.elapsed().as_secs_f64();
    let mut failed = Vec::new();
    let mut pre_created = 0;
    for m in made {
        match m {
            Ok((c, ran)) => {
                pre_created += usize::from(c.id().starts_with(&format!("{prefix}presandbox")));
                if let Err(e) = ran {
                    failed.push(format!("{e:#}"));
                }
                if let Err(e) = c.destroy().await {
                    failed.push(format!("destroy: {e}"));
                }
            }
            Err(e) => failed.push(format!("create: {e:#}")),
        }
    }
    if let Some(first) = failed.first() {
        bail!("{} of {n} functions failed; first: {first}", failed.len());
    }
    Ok((took, pre_created))
}

/// The invoker's default OCI runtime (`whisk.invoker.runc.runtime`).
const OCI_RUNTIME: &str = "crun";

fn sieve_spec(name: String) -> invoker::container::ContainerSpec {
    invoker::container::ContainerSpec {
        name,
        image: invoker::container::ImageRef::local(NODE_IMAGE),
        memory_mb: 128,
        cpu_shares: 128,
        cpus: None,
        env: Vec::new(),
        sandbox: invoker::container::Sandbox::Mode,
    }
}

/// The `presandbox` row: `n` sandboxes pre-created on a pool of `n` namespaces (primed by one
/// cold start of the shape, which is removed again), their memory measured idle, then `n`
/// concurrent functions that each take one, start it, `/init` and `/run`.
async fn presandbox_row(docker: &Docker, client: &reqwest::Client, n: usize) -> Result<Row> {
    use invoker::container::ContainerFactory;
    use invoker::container::runc::RuncFactory;
    let before = KernelMemory::now()?;
    let mut cfg = netpool::PoolConfig::new("bp", std::net::Ipv4Addr::new(10, 209, 0, 0), 16);
    // n for the sandboxes, the primer's and one spare: never refilled (which would count
    // namespaces nothing uses), and a refill of the shelf always finds one idle.
    cfg.high_watermark = n + 2;
    cfg.low_watermark = 1;
    cfg.max_slots = n + 2;
    let np = netpool::NetPool::new(cfg).await?;
    np.wait_idle(n + 2, Duration::from_secs(120)).await?;
    let dir = std::env::temp_dir().join(format!("bench-presandbox-{}", std::process::id()));
    let state = dir.join("state");
    let factory = RuncFactory::new(
        docker.clone(),
        std::sync::Arc::new(np.clone()),
        std::path::Path::new("/var/lib/wsk-invoker/images"),
        &dir.join("bundles"),
        &state,
    )
    .with_runtime(std::path::Path::new(OCI_RUNTIME))
    .with_presandboxes("wskbp_", n);
    let measured = async {
        factory.prepare(NODE_IMAGE).await?;
        factory
            .create(&sieve_spec("wskbp_prime_sieve".into()))
            .await?
            .destroy()
            .await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while factory.presandboxes_ready() < n {
            if Instant::now() > deadline {
                bail!(
                    "{} of {n} sandboxes pre-created after 300 s",
                    factory.presandboxes_ready()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Each sandbox's waiting process (its only one), from the runtime's state.
        let mut pids = Vec::new();
        for entry in std::fs::read_dir(&state)?.flatten() {
            let out = tokio::process::Command::new(OCI_RUNTIME)
                .arg("--root")
                .arg(&state)
                .arg("state")
                .arg(entry.file_name())
                .output()
                .await?;
            let v: Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("{OCI_RUNTIME} state {:?}", entry.file_name()))?;
            if v["status"] == "created" {
                pids.push(u32::try_from(v["pid"].as_u64().context("no pid")?)?);
            }
        }
        if pids.len() != n {
            bail!("{} created sandboxes, not {n}", pids.len());
        }
        let processes = ProcessMemory::sum(pids.iter().filter_map(|&p| ProcessMemory::of(p).ok()));
        let charge = pids
            .iter()
            .map(|&p| cgroup_charge_kib(p).unwrap_or(0))
            .sum();
        let mut row = row("presandbox", n, processes, charge, &before, None)?;
        let (took, pre_created) = runc_functions(&factory, client, n, "wskbp_").await?;
        if pre_created != n {
            bail!("{pre_created} of {n} functions found a pre-created sandbox");
        }
        row.total_s = Some(took);
        Ok(row)
    }
    .await;
    let removed = factory.remove_all("wskbp_").await;
    drop(factory);
    np.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    let row = measured?;
    removed?;
    Ok(row)
}

async fn remove_all(docker: &Docker, ids: &[String]) {
    for id in ids {
        let o = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = docker.remove_container(id, Some(o)).await;
    }
}

/// PSS of a container's processes (init and descendants) and of its shim, and its cgroup charge.
fn container_memory(init_pid: u32) -> Result<(ProcessMemory, u64)> {
    let mut pids = vec![init_pid];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        for entry in std::fs::read_dir("/proc")?.flatten() {
            if let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>()
                && parent_pid(pid).ok() == Some(parent)
            {
                pids.push(pid);
            }
        }
        i += 1;
    }
    let shim = parent_pid(init_pid)?;
    if !comm(shim).starts_with("containerd-shim") {
        bail!("the parent of {init_pid} is {}, not a shim", comm(shim));
    }
    pids.push(shim);
    let mem = ProcessMemory::sum(pids.iter().filter_map(|&p| ProcessMemory::of(p).ok()));
    Ok((mem, cgroup_charge_kib(init_pid).unwrap_or(0)))
}

async fn pid_of(docker: &Docker, id: &str) -> Result<u32> {
    let pid = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await?
        .state
        .and_then(|s| s.pid)
        .context("no pid")?;
    Ok(u32::try_from(pid)?)
}

fn row(
    scenario: &'static str,
    n: usize,
    processes: ProcessMemory,
    charge: u64,
    before: &KernelMemory,
    total_s: Option<f64>,
) -> Result<Row> {
    let kernel = before.growth_to(&KernelMemory::now()?);
    Ok(Row {
        scenario,
        objects: n,
        processes,
        cgroup_charge_kib: charge,
        kernel,
        committed_kib: i64::try_from(processes.pss_kib).unwrap_or(0)
            + kernel.unreclaimable_kib.max(0),
        total_s,
        idle_cpu_cores: None,
    })
}

/// Runs the benchmark for `n` objects.
pub async fn run(n: usize) -> Result<MemoryReport> {
    let docker = pcpm::docker::connect().await?;
    let client = http_client();
    let mut rows = Vec::new();

    // cold: nothing idle; time N cold functions.
    let before = KernelMemory::now()?;
    let t0 = Instant::now();
    let started = futures::future::try_join_all((0..n).map(|_| async {
        let (id, addr) = node_container(&docker, None).await?;
        init_and_run(&client, addr, true).await?;
        anyhow::Ok(id)
    }))
    .await?;
    let cold_s = t0.elapsed().as_secs_f64();
    remove_all(&docker, &started).await;
    rows.push(row(
        "cold",
        0,
        ProcessMemory::default(),
        0,
        &before,
        Some(cold_s),
    )?);
    println!("cold: {n} functions in {cold_s:.1} s");

    // prewarm and warm: N node containers, idle (then initialized and run once for warm).
    for warm in [false, true] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = KernelMemory::now()?;
        let made =
            futures::future::try_join_all((0..n).map(|_| node_container(&docker, None))).await?;
        if warm {
            futures::future::try_join_all(
                made.iter().map(|(_, a)| init_and_run(&client, *a, true)),
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut mem = Vec::new();
        let mut charge = 0;
        for (id, _) in &made {
            let (m, c) = container_memory(pid_of(&docker, id).await?)?;
            mem.push(m);
            charge += c;
        }
        let processes = ProcessMemory::sum(mem);
        let t0 = Instant::now();
        futures::future::try_join_all(made.iter().map(|(_, a)| init_and_run(&client, *a, !warm)))
            .await?;
        let took = t0.elapsed().as_secs_f64();
        let name = if warm { "warm" } else { "prewarm" };
        rows.push(row(name, n, processes, charge, &before, Some(took))?);
        println!(
            "{name}: {} KiB PSS, {n} functions in {took:.1} s",
            processes.pss_kib
        );
        let ids: Vec<String> = made.into_iter().map(|(id, _)| id).collect();
        remove_all(&docker, &ids).await;
    }

    // pcpm: N idle pause containers; each function joins one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = KernelMemory::now()?;
    let key = NetworkKey::network("bridge");
    let mut config = PcpmConfig::new("bench-memory");
    config.low_watermark = 0;
    config.high_watermark = n;
    config.max_per_pool = n;
    config.on_empty = OnEmpty::Wait(Duration::from_secs(60));
    config.keys = vec![key.clone()];
    let pool = Pcpm::new(docker.clone(), config).await?;
    pool.wait_idle(&key, n, Duration::from_secs(300)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut endpoints = Vec::new();
    for _ in 0..n {
        endpoints.push(pool.acquire(&key).await?);
    }
    let mut mem = Vec::new();
    let mut charge = 0;
    for e in &endpoints {
        if let Endpoint::Pause(h) = e {
            let (m, c) = container_memory(h.pid())?;
            mem.push(m);
            charge += c;
        }
    }
    let processes = ProcessMemory::sum(mem);
    let t0 = Instant::now();
    let made = futures::future::try_join_all(endpoints.iter().map(|e| async {
        let (id, addr) = node_container(&docker, Some(e)).await?;
        init_and_run(&client, addr, true).await?;
        anyhow::Ok(id)
    }))
    .await?;
    let took = t0.elapsed().as_secs_f64();
    remove_all(&docker, &made).await;
    for e in endpoints {
        e.release().await;
    }
    pool.shutdown().await?;
    rows.push(row("pcpm", n, processes, charge, &before, Some(took))?);
    println!(
        "pcpm: {} KiB PSS, {n} functions in {took:.1} s",
        processes.pss_kib
    );

    // netns: N netpool namespaces, nothing but the kernel's memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = KernelMemory::now()?;
    let mut cfg = netpool::PoolConfig::new("bm", std::net::Ipv4Addr::new(10, 209, 0, 0), 16);
    cfg.high_watermark = n;
    cfg.low_watermark = n;
    cfg.max_slots = n;
    let np = netpool::NetPool::new(cfg).await?;
    np.wait_idle(n, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut netns_row = row("netns", n, ProcessMemory::default(), 0, &before, None)?;
    // Then N functions on them, as the invoker's netns mode runs them: runc, an overlay on the
    // unpacked image, the lease's namespace in the OCI spec.
    let took = netns_functions(&docker, &client, &np, n).await;
    np.shutdown().await?;
    netns_row.total_s = Some(took?);
    println!(
        "netns: kernel +{} KiB, {n} functions in {:.1} s",
        netns_row.kernel.unreclaimable_kib,
        netns_row.total_s.unwrap_or(f64::NAN)
    );
    rows.push(netns_row);

    // presandbox: N sandboxes created ahead of need on N namespaces.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = presandbox_row(&docker, &client, n).await?;
    println!(
        "presandbox: {} KiB PSS, kernel +{} KiB, {n} functions in {:.1} s",
        r.processes.pss_kib,
        r.kernel.unreclaimable_kib,
        r.total_s.unwrap_or(f64::NAN)
    );
    rows.push(r);

    // vm and unikernel: VMs on netpool VM slots, as the invoker's VM backend runs them.
    for (scenario, count) in [("vm", n.min(VM_ROW_MAX)), ("unikernel", n)] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = vm_row(scenario, count, &client).await?;
        println!(
            "{scenario}: {} KiB PSS for {count}, idle CPU {:.3} cores, {count} functions in {:.1} s",
            r.processes.pss_kib,
            r.idle_cpu_cores.unwrap_or(f64::NAN),
            r.total_s.unwrap_or(f64::NAN)
        );
        rows.push(r);
    }

    Ok(MemoryReport {
        machine: Machine::describe(),
        n,
        rows,
        method: METHOD,
    })
}

/// The `vm` row keeps this many Linux guests (see the module docs).
const VM_ROW_MAX: usize = 10;

/// The sieve as a WebAssembly module, base64 for `/init` (as the invoker sends binary code).
fn sieve_wasm_b64() -> Result<String> {
    use base64::Engine;
    let module = wat::parse_str(include_str!("../../unikernel/functions/sieve.wat"))
        .context("unikernel/functions/sieve.wat")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(module))
}

/// `count` VMs of `scenario` (`vm`: the Linux guest with Node.js; `unikernel`: wasm), booted,
/// initialized and run once concurrently (the time), then idle: PSS of their QEMU processes,
/// the kernel's growth, their idle CPU.
async fn vm_row(scenario: &'static str, count: usize, client: &reqwest::Client) -> Result<Row> {
    use invoker::container::vm::{VmConfig, VmFactory};
    use invoker::container::{ContainerFactory, ContainerSpec, ImageRef, Sandbox};
    let settings = openwhisk::settings::Settings::from_vars(
        [
            ("KAFKA_HOSTS".to_owned(), "127.0.0.1:9092".to_owned()),
            ("RUNTIMES_MANIFEST".to_owned(), "{}".to_owned()),
        ],
        None,
    )?;
    let run_dir = std::env::temp_dir().join(format!("bench-memory-vm-{}", std::process::id()));
    let mut config = VmConfig::from_settings(&settings.vm, "wskbv");
    config.run_dir = run_dir.clone();
    config.cgroup_parent = Some("wsk-bench-vm".into());
    let (image, init) = match scenario {
        "vm" => (
            NODE_IMAGE,
            json!({"value": {"name": "sieve", "main": "main", "binary": false, "code": SIEVE}}),
        ),
        _ => (
            "openwhisk/action-wasm-v0.1:nightly",
            json!({"value": {"name": "sieve", "main": "main", "binary": true,
                             "code": sieve_wasm_b64()?, "timeout": 60_000}}),
        ),
    };
    let before = KernelMemory::now()?;
    let mut cfg = netpool::PoolConfig::new("bmv", std::net::Ipv4Addr::new(10, 207, 0, 0), 16);
    cfg.kind = netpool::SlotKind::Vm;
    cfg.high_watermark = count;
    cfg.low_watermark = count;
    cfg.max_slots = count;
    let np = std::sync::Arc::new(netpool::NetPool::new(cfg).await?);
    np.wait_idle(count, Duration::from_secs(120)).await?;
    let factory = VmFactory::new(np.clone(), config).await?;
    let t0 = Instant::now();
    let made = futures::future::join_all((0..count).map(|i| {
        let (factory, init) = (&factory, &init);
        async move {
            let spec = ContainerSpec {
                name: format!("wskbv_{i}_{scenario}"),
                image: ImageRef::local(image),
                memory_mb: if scenario == "vm" { 256 } else { 128 },
                cpu_shares: 128,
                cpus: None,
                env: Vec::new(),
                sandbox: Sandbox::Vm,
            };
            let c = factory.create(&spec).await?;
            let ran = async {
                post(client, c.addr(), "/init", init).await?;
                let v = post(client, c.addr(), "/run", &json!({"value": {"n": 20000}})).await?;
                if v.get("primes").is_none() {
                    bail!("unexpected result {v}");
                }
                Ok(())
            }
            .await;
            anyhow::Ok((spec.name, c, ran))
        }
    }))
    .await;
    let took = t0.elapsed().as_secs_f64();
    let mut vms = Vec::new();
    let mut failed = Vec::new();
    for m in made {
        match m {
            Ok((name, c, ran)) => {
                if let Err(e) = ran {
                    failed.push(format!("{e:#}"));
                }
                vms.push((name, c));
            }
            Err(e) => failed.push(format!("create: {e:#}")),
        }
    }
    let measured = async {
        if let Some(first) = failed.first() {
            bail!(
                "{} of {count} {scenario} functions failed; first: {first}",
                failed.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pids: Vec<u32> = vms
            .iter()
            .map(|(name, _)| {
                let file = run_dir.join(name).join("qemu.pid");
                std::fs::read_to_string(&file)
                    .with_context(|| file.display().to_string())?
                    .trim()
                    .parse::<u32>()
                    .context("QEMU's pid file")
            })
            .collect::<Result<_>>()?;
        let processes = ProcessMemory::sum(pids.iter().filter_map(|&p| ProcessMemory::of(p).ok()));
        let cpu = |pids: &[u32]| -> u64 { pids.iter().filter_map(|&p| cpu_ticks(p)).sum() };
        let (c0, t) = (cpu(&pids), Instant::now());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let ticks = cpu(&pids).saturating_sub(c0);
        let cores = ticks as f64 / clock_ticks_per_second() / t.elapsed().as_secs_f64();
        let mut r = row(scenario, count, processes, 0, &before, Some(took))?;
        r.idle_cpu_cores = Some(cores);
        Ok(r)
    }
    .await;
    for (_, c) in vms {
        if let Err(e) = c.destroy().await {
            eprintln!("{scenario}: destroy: {e}");
        }
    }
    factory.remove_all("wskbv_").await?;
    drop(factory);
    if let Ok(np) = std::sync::Arc::try_unwrap(np) {
        np.shutdown().await?;
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    measured
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf with a valid name has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

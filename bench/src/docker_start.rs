//! `bench docker-start`: N concurrent cold starts of a no-op function container through the
//! Docker engine, with (a) default bridge networking, as stock OpenWhisk does
//! (`--network bridge`, then an inspect for the address), and (b) a pause container from a
//! `pcpm` pool (`--network container:<id>`, the address known up front).
//!
//! One cold start: create, start, wait until the action proxy answers HTTP on port 8080,
//! remove (and, for pcpm, release the pause container, whose checks are part of the time).
//! Modes alternate which goes first from round to round; the pcpm pool is refilled to N idle
//! before each timed cell, so a cell measures the cold start, not the refill.
//!
//! Then the memory of 50 idle pause containers: the PSS and RSS of every process they cost (the
//! pause processes and their runtime shims), what their cgroups were charged, and how the
//! kernel's unreclaimable memory grew when they were created.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use pcpm::{Endpoint, NetworkKey, OnEmpty, Pcpm, PcpmConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::machine::Machine;
use crate::memory::{KernelGrowth, KernelMemory, ProcessMemory};
use crate::stats::Summary;

/// The no-op function: the native runtime's action proxy, FROM scratch, 2.7 MB.
pub const FUNCTION_IMAGE: &str = "openwhisk/dockerskeleton:nightly";
const LABEL: &str = "whisk-bench";
const MANAGER: &str = "bench-docker-start";

/// Benchmark parameters.
#[derive(Clone, Debug)]
pub struct DockerStartParams {
    pub sizes: Vec<usize>,
    pub rounds: usize,
    /// Idle pause containers whose memory is measured.
    pub memory_pool: usize,
}

impl Default for DockerStartParams {
    fn default() -> Self {
        Self {
            sizes: vec![1, 10, 50, 100],
            rounds: 3,
            memory_pool: 50,
        }
    }
}

/// One (mode, N) cell over all rounds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cell {
    pub mode: &'static str,
    pub n: usize,
    /// Time until all N cold starts were done, one sample per round.
    pub total: Summary,
    /// Time from create to HTTP answer, every cold start of every round.
    pub ready: Summary,
    /// Time from create to removed (and released), every cold start of every round.
    pub each: Summary,
    /// Where the time of one cold start goes, median over every cold start: `acquire` (pcpm
    /// only), `create`, `start`, `http` (address and first HTTP answer), `remove`, `release`
    /// (pcpm only: the pause container's checks).
    pub phases_p50_s: Phases,
    /// Cold starts that failed (counted, not timed).
    pub errors: usize,
}

/// Seconds spent in each phase of one cold start.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Phases {
    pub acquire: f64,
    pub create: f64,
    pub start: f64,
    pub http: f64,
    pub remove: f64,
    pub release: f64,
}

impl Phases {
    fn median(all: &[Phases]) -> Phases {
        let med = |f: fn(&Phases) -> f64| {
            let mut v: Vec<f64> = all.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            if v.is_empty() {
                0.0
            } else {
                crate::stats::percentile(&v, 50.0)
            }
        };
        Phases {
            acquire: med(|p| p.acquire),
            create: med(|p| p.create),
            start: med(|p| p.start),
            http: med(|p| p.http),
            remove: med(|p| p.remove),
            release: med(|p| p.release),
        }
    }
}

/// The memory of idle pause containers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PauseMemory {
    pub containers: usize,
    pub pause_processes: ProcessMemory,
    /// The per-container runtime shims (`containerd-shim`), one per container.
    pub shims: ProcessMemory,
    /// What the containers' memory cgroups were charged (user and kernel).
    pub cgroup_charge_kib: u64,
    /// Kernel memory growth from before the pool existed to when it was idle: namespaces,
    /// veths, bridge ports, iptables and cgroup objects among it. Noisy: other activity on the
    /// machine moves it too.
    pub kernel: KernelGrowth,
    /// dockerd and containerd RSS growth over the same interval (their bookkeeping per
    /// container).
    pub daemons_rss_growth_kib: i64,
    /// The sum that counts: pause + shim PSS, plus unreclaimable kernel growth.
    pub total_kib: i64,
    /// The paper's figure for 50 pause containers.
    pub paper_kib_for_50: u64,
}

/// Everything `bench docker-start` writes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DockerStartReport {
    pub machine: Machine,
    pub docker_version: String,
    pub image: &'static str,
    pub rounds: usize,
    pub cells: Vec<Cell>,
    /// At the largest N: pcpm's median total over bridge's (target: at most 0.5).
    pub ratio_at_max_n: f64,
    pub memory: PauseMemory,
}

#[derive(Default)]
struct Samples {
    totals: Vec<Duration>,
    ready: Vec<Duration>,
    each: Vec<Duration>,
    phases: Vec<Phases>,
    errors: usize,
}

/// Runs the benchmark and returns its report; prints progress as it goes.
pub async fn run(params: &DockerStartParams) -> Result<DockerStartReport> {
    let docker = pcpm::docker::connect().await?;
    let version = docker.version().await?.version.unwrap_or_default();
    remove_leftovers(&docker).await?;
    let max_n = params.sizes.iter().copied().max().unwrap_or(1);
    let key = NetworkKey::network("bridge");
    let mut config = PcpmConfig::new(MANAGER);
    config.low_watermark = 0;
    config.high_watermark = max_n;
    config.max_per_pool = max_n;
    config.on_empty = OnEmpty::Wait(Duration::from_secs(120));
    config.keys = vec![key.clone()];
    let pcpm = Pcpm::new(docker.clone(), config).await?;

    let mut samples: HashMap<(&'static str, usize), Samples> = HashMap::new();
    for round in 0..params.rounds {
        for &n in &params.sizes {
            let modes: [&'static str; 2] = if round % 2 == 0 {
                ["bridge", "pcpm"]
            } else {
                ["pcpm", "bridge"]
            };
            for mode in modes {
                let pool = (mode == "pcpm").then_some(&pcpm);
                if let Some(p) = pool {
                    p.wait_idle(&key, n, Duration::from_secs(300)).await?;
                }
                let cell = samples.entry((mode, n)).or_default();
                let started = Instant::now();
                let results =
                    futures::future::join_all((0..n).map(|_| cold_start(&docker, pool, &key)))
                        .await;
                let total = started.elapsed();
                cell.totals.push(total);
                for r in results {
                    match r {
                        Ok((ready, each, phases)) => {
                            cell.ready.push(ready);
                            cell.each.push(each);
                            cell.phases.push(phases);
                        }
                        Err(e) => {
                            cell.errors += 1;
                            eprintln!("  {mode} N={n}: {e:#}");
                        }
                    }
                }
                let ph = Phases::median(&cell.phases[cell.phases.len().saturating_sub(n)..]);
                println!(
                    "round {}/{} {mode:>6} N={n:>3}: total {:>8.1} ms  (p50 create {:.0} start {:.0} http {:.0} remove {:.0} release {:.0} ms)",
                    round + 1,
                    params.rounds,
                    total.as_secs_f64() * 1e3,
                    ph.create * 1e3,
                    ph.start * 1e3,
                    ph.http * 1e3,
                    ph.remove * 1e3,
                    ph.release * 1e3,
                );
            }
        }
    }
    pcpm.shutdown().await?;

    let mut cells = Vec::new();
    for &n in &params.sizes {
        for mode in ["bridge", "pcpm"] {
            let s = &samples[&(mode, n)];
            cells.push(Cell {
                mode,
                n,
                total: Summary::of(&s.totals).context("no rounds")?,
                ready: Summary::of(&s.ready).context("every cold start failed")?,
                each: Summary::of(&s.each).context("every cold start failed")?,
                phases_p50_s: Phases::median(&s.phases),
                errors: s.errors,
            });
        }
    }
    let median = |mode| {
        cells
            .iter()
            .find(|c| c.mode == mode && c.n == max_n)
            .map_or(f64::NAN, |c| c.total.p50_s)
    };
    let ratio_at_max_n = median("pcpm") / median("bridge");
    println!("pcpm / bridge total at N={max_n}: {ratio_at_max_n:.3} (target <= 0.5)");

    let memory = pause_memory(&docker, params.memory_pool).await?;
    println!(
        "{} idle pause containers: pause PSS {} KiB, shim PSS {} KiB, kernel +{} KiB, total {} KiB (paper: {} KiB)",
        memory.containers,
        memory.pause_processes.pss_kib,
        memory.shims.pss_kib,
        memory.kernel.unreclaimable_kib,
        memory.total_kib,
        memory.paper_kib_for_50
    );
    Ok(DockerStartReport {
        machine: Machine::describe(),
        docker_version: version,
        image: FUNCTION_IMAGE,
        rounds: params.rounds,
        cells,
        ratio_at_max_n,
        memory,
    })
}

/// One cold start; returns (time to HTTP answer, time to removed and released, phases).
async fn cold_start(
    docker: &Docker,
    pool: Option<&Pcpm>,
    key: &NetworkKey,
) -> Result<(Duration, Duration, Phases)> {
    let t0 = Instant::now();
    let mut phases = Phases::default();
    let mut mark = {
        let mut last = t0;
        move || {
            let now = Instant::now();
            let d = now.duration_since(last).as_secs_f64();
            last = now;
            d
        }
    };
    let endpoint = match pool {
        Some(p) => Some(p.acquire(key).await?),
        None => None,
    };
    phases.acquire = mark();
    let mut body = ContainerCreateBody {
        image: Some(FUNCTION_IMAGE.to_owned()),
        labels: Some(HashMap::from([(
            LABEL.to_owned(),
            "docker-start".to_owned(),
        )])),
        host_config: Some(HostConfig {
            network_mode: Some("bridge".to_owned()),
            memory: Some(256 * 1024 * 1024),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some(e) = &endpoint {
        e.apply(&mut body);
    }
    let id = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            body,
        )
        .await?
        .id;
    phases.create = mark();
    let result = async {
        docker.start_container(&id, None).await?;
        phases.start = mark();
        let ip = match endpoint.as_ref().and_then(Endpoint::ip) {
            Some(ip) => ip,
            None => bridge_ip(docker, &id).await?,
        };
        wait_http(ip, 8080, Duration::from_secs(60)).await?;
        phases.http = mark();
        anyhow::Ok(())
    }
    .await;
    let ready = t0.elapsed();
    mark();
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    docker.remove_container(&id, Some(options)).await?;
    phases.remove = mark();
    if let Some(e) = endpoint {
        e.release().await;
    }
    phases.release = mark();
    result?;
    Ok((ready, t0.elapsed(), phases))
}

/// A container's address on the default bridge, as stock OpenWhisk reads it after start.
pub(crate) async fn bridge_ip(docker: &Docker, id: &str) -> Result<IpAddr> {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await?;
    pcpm::docker::ip_on(&info, "bridge").context("no bridge address")
}

/// Waits until `ip:port` answers an HTTP request (any status).
async fn wait_http(ip: IpAddr, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect((ip, port)).await {
            let _ = s
                .write_all(b"GET / HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n")
                .await;
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{ip}:{port} did not answer HTTP within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn remove_leftovers(docker: &Docker) -> Result<()> {
    let filters = HashMap::from([("label", vec![LABEL.to_owned()])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    for c in docker.list_containers(Some(options)).await? {
        if let Some(id) = c.id {
            let options = RemoveContainerOptionsBuilder::new().force(true).build();
            docker.remove_container(&id, Some(options)).await?;
        }
    }
    Ok(())
}

fn daemons_rss_kib() -> i64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if matches!(crate::memory::comm(pid).as_str(), "dockerd" | "containerd")
            && let Ok(m) = ProcessMemory::of(pid)
        {
            total += i64::try_from(m.rss_kib).unwrap_or(0);
        }
    }
    total
}

/// Creates a pool of `n` idle pause containers and measures what they cost.
async fn pause_memory(docker: &Docker, n: usize) -> Result<PauseMemory> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kernel_before = KernelMemory::now()?;
    let daemons_before = daemons_rss_kib();
    let key = NetworkKey::network("bridge");
    let mut config = PcpmConfig::new(MANAGER);
    config.low_watermark = 0;
    config.high_watermark = n;
    config.max_per_pool = n;
    config.keys = vec![key.clone()];
    let pcpm = Pcpm::new(docker.clone(), config).await?;
    pcpm.wait_idle(&key, n, Duration::from_secs(300)).await?;
    // Take every one out to read its pid, then hand them back.
    let mut endpoints = Vec::new();
    for _ in 0..n {
        endpoints.push(pcpm.acquire(&key).await?);
    }
    let pids: Vec<u32> = endpoints
        .iter()
        .filter_map(|e| match e {
            Endpoint::Pause(h) => Some(h.pid()),
            Endpoint::Fallback(_) => None,
        })
        .collect();
    ensure!(pids.len() == n, "the pool handed out fallbacks");
    for e in endpoints {
        e.release().await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kernel_after = KernelMemory::now()?;
    let daemons_after = daemons_rss_kib();
    let mut pause = Vec::new();
    let mut shims = Vec::new();
    let mut charge = 0;
    for &pid in &pids {
        pause.push(ProcessMemory::of(pid)?);
        let shim = crate::memory::parent_pid(pid)?;
        let name = crate::memory::comm(shim);
        ensure!(
            name.starts_with("containerd-shim"),
            "the parent of pause pid {pid} is {name}, not a containerd shim"
        );
        shims.push(ProcessMemory::of(shim)?);
        charge += crate::memory::cgroup_charge_kib(pid)?;
    }
    pcpm.shutdown().await?;
    let pause_processes = ProcessMemory::sum(pause);
    let shims = ProcessMemory::sum(shims);
    let kernel = kernel_before.growth_to(&kernel_after);
    let total_kib = i64::try_from(pause_processes.pss_kib + shims.pss_kib).unwrap_or(0)
        + kernel.unreclaimable_kib.max(0);
    Ok(PauseMemory {
        containers: n,
        pause_processes,
        shims,
        cgroup_charge_kib: charge,
        kernel,
        daemons_rss_growth_kib: daemons_after - daemons_before,
        total_kib,
        paper_kib_for_50: 2 * 1024,
    })
}

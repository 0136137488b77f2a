//! `bench netns`: the PCPM paper's Table 1 (time to create and to clean up N concurrent network
//! endpoints) on this machine, for three ways of getting an endpoint:
//!
//! - `ip`: `ip` commands the way the paper did it, one shell per endpoint, all N at once:
//!   `ip netns add`, a veth pair, the peer moved into the namespace, an address, links up;
//!   cleanup deletes the host veth and the namespace.
//! - `rtnetlink`: the same endpoint built in-process by netpool's creation path (namespace on a
//!   dedicated thread, veth born inside, address, route), N at once, with no pool ahead of
//!   time; cleanup unmounts them and waits until the kernel has removed every veth.
//! - `netpool`: N concurrent leases from a warm pool; cleanup is the time from handing the N
//!   leases back (`release_nowait`) until every one of them is scrubbed and leasable again
//!   (`recycle`); the hand-back alone (`cleanup` of the netpool row) is only the enqueueing.
//!
//! Each (way, N) is measured `runs` times (default 20, so that the p99 is not just the max);
//! the figures are the median, p99 and max of the totals over the runs. A separate loop times
//! single leases from a warm pool. The cleanup speed-up compares like with like: `ip` cleanup
//! against netpool's recycle, both until the endpoints are gone or usable again.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use netpool::{Lease, NetPool, OnEmpty, PoolConfig};

use crate::machine::Machine;
use crate::stats::Summary;

/// Benchmark parameters.
#[derive(Clone, Debug)]
pub struct NetnsParams {
    pub sizes: Vec<usize>,
    pub runs: usize,
    pub single_leases: usize,
}

impl Default for NetnsParams {
    fn default() -> Self {
        Self {
            sizes: vec![1, 10, 50, 100],
            runs: 20,
            single_leases: 2000,
        }
    }
}

/// One (way, N) cell of the table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cell {
    pub way: &'static str,
    pub n: usize,
    pub create: Summary,
    pub cleanup: Summary,
    /// netpool only: time from handing back until every slot is idle again.
    pub recycle: Option<Summary>,
}

/// Everything `bench netns` writes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NetnsReport {
    pub machine: Machine,
    pub runs: usize,
    pub cells: Vec<Cell>,
    pub single_lease: Summary,
    /// At the largest N: `ip` median over `netpool` median.
    pub speedup_create: f64,
    /// At the largest N: `ip` cleanup median over netpool's recycle median (handed back until
    /// leasable again).
    pub speedup_cleanup: f64,
    /// At the largest N: `ip` cleanup median over netpool's hand-back median (enqueueing the
    /// returns only; not a cleanup figure, kept to show what the caller waits for).
    pub speedup_hand_back: f64,
}

const IP_SUBNET: &str = "10.240";

/// Runs the benchmark; prints progress and the table to stdout.
pub async fn run(params: &NetnsParams) -> Result<NetnsReport> {
    let max_n = params.sizes.iter().copied().max().context("no sizes")?;
    ip_cleanup_leftovers(max_n).await;

    // (b) no pool ahead of time: every lease creates its slot inline.
    let mut cold = PoolConfig::new("bnb", "10.241.0.0".parse()?, 16);
    cold.on_empty = OnEmpty::CreateInline;
    cold.max_slots = max_n;
    cold.max_concurrent_creates = max_n;
    let cold = NetPool::new(cold).await?;

    // (c) a warm pool that holds every endpoint a round needs.
    let mut warm = PoolConfig::new("bnc", "10.242.0.0".parse()?, 16);
    warm.max_slots = max_n * 2;
    warm.low_watermark = max_n;
    warm.high_watermark = max_n * 2;
    let warm = NetPool::new(warm).await?;
    warm.wait_idle(max_n * 2, Duration::from_secs(120)).await?;

    let mut cells = Vec::new();
    for &n in &params.sizes {
        let mut samples: [Vec<Duration>; 7] = Default::default();
        for run in 0..params.runs {
            eprintln!("netns: N={n} run {}/{}", run + 1, params.runs);
            let (c, d) = ip_round(n).await?;
            samples[0].push(c);
            samples[1].push(d);
            let (c, d) = cold_round(&cold, n).await?;
            samples[2].push(c);
            samples[3].push(d);
            warm.wait_idle(n, Duration::from_secs(60)).await?;
            let (c, d, r) = warm_round(&warm, n).await?;
            samples[4].push(c);
            samples[5].push(d);
            samples[6].push(r);
        }
        let s = |i: usize| Summary::of(&samples[i]).context("no samples");
        cells.push(Cell {
            way: "ip",
            n,
            create: s(0)?,
            cleanup: s(1)?,
            recycle: None,
        });
        cells.push(Cell {
            way: "rtnetlink",
            n,
            create: s(2)?,
            cleanup: s(3)?,
            recycle: None,
        });
        cells.push(Cell {
            way: "netpool",
            n,
            create: s(4)?,
            cleanup: s(5)?,
            recycle: Some(s(6)?),
        });
    }

    eprintln!("netns: {} single leases", params.single_leases);
    let single_lease = single_leases(&warm, params.single_leases, max_n).await?;
    cold.shutdown().await?;
    warm.shutdown().await?;

    let at = |way: &str| cells.iter().find(|c| c.way == way && c.n == max_n);
    let (ip, pool) = (
        at("ip").context("ip cell")?,
        at("netpool").context("netpool cell")?,
    );
    let report = NetnsReport {
        machine: Machine::describe(),
        runs: params.runs,
        speedup_create: ip.create.p50_s / pool.create.p50_s,
        speedup_cleanup: ip.cleanup.p50_s / pool.recycle.as_ref().context("netpool recycle")?.p50_s,
        speedup_hand_back: ip.cleanup.p50_s / pool.cleanup.p50_s,
        cells,
        single_lease,
    };
    print_table(&report);
    Ok(report)
}

/// (a) N shells at once, each building one endpoint with `ip`; then N shells deleting them.
async fn ip_round(n: usize) -> Result<(Duration, Duration)> {
    let create = |i: usize| {
        format!(
            "ip netns add nbip{i} && ip link add nbipv{i} type veth peer name nbipp{i} && \
             ip link set nbipp{i} netns nbip{i} && \
             ip -n nbip{i} addr add {IP_SUBNET}.{}.{}/16 dev nbipp{i} && \
             ip -n nbip{i} link set nbipp{i} up && ip -n nbip{i} link set lo up && \
             ip link set nbipv{i} up",
            i / 250,
            i % 250 + 1
        )
    };
    let started = Instant::now();
    shells(n, create)
        .await
        .context("create endpoints with ip")?;
    let created = started.elapsed();
    let started = Instant::now();
    shells(n, |i| {
        format!("ip link del nbipv{i} && ip netns del nbip{i}")
    })
    .await
    .context("clean up endpoints with ip")?;
    Ok((created, started.elapsed()))
}

async fn shells(n: usize, script: impl Fn(usize) -> String) -> Result<()> {
    let children: Vec<_> = (0..n)
        .map(|i| {
            tokio::process::Command::new("sh")
                .arg("-c")
                .arg(script(i))
                .output()
        })
        .collect();
    for (i, out) in futures::future::join_all(children)
        .await
        .into_iter()
        .enumerate()
    {
        let out = out?;
        ensure!(
            out.status.success(),
            "endpoint {i}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes endpoints an interrupted earlier run of the `ip` way left behind.
async fn ip_cleanup_leftovers(n: usize) {
    let _ = shells(n, |i| {
        format!("ip link del nbipv{i} 2>/dev/null; ip netns del nbip{i} 2>/dev/null; true")
    })
    .await;
}

/// (b) N leases that each create their slot inline; cleanup destroys them and waits until the
/// kernel has removed every veth.
async fn cold_round(pool: &NetPool, n: usize) -> Result<(Duration, Duration)> {
    let started = Instant::now();
    let leases = lease_all(pool, n).await?;
    let created = started.elapsed();
    let started = Instant::now();
    drop(leases);
    wait_until(|| pool.stats().allocated == 0).await?;
    Ok((created, started.elapsed()))
}

/// (c) N leases from the warm pool; cleanup hands them back; recycle waits until all are idle.
async fn warm_round(pool: &NetPool, n: usize) -> Result<(Duration, Duration, Duration)> {
    let idle_before = pool.stats().idle;
    let started = Instant::now();
    let leases = lease_all(pool, n).await?;
    let created = started.elapsed();
    let started = Instant::now();
    for l in leases {
        l.release_nowait();
    }
    let cleaned = started.elapsed();
    wait_until(|| pool.stats().idle >= idle_before).await?;
    Ok((created, cleaned, started.elapsed()))
}

async fn lease_all(pool: &NetPool, n: usize) -> Result<Vec<Lease>> {
    let leases = futures::future::join_all((0..n).map(|_| pool.lease())).await;
    Ok(leases.into_iter().collect::<Result<Vec<_>, _>>()?)
}

async fn wait_until(done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        ensure!(Instant::now() < deadline, "not done within 60 s");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(())
}

/// Times `count` single leases, one after the other, from a warm pool.
async fn single_leases(pool: &NetPool, count: usize, keep_idle: usize) -> Result<Summary> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        if i % 50 == 0 {
            // Untimed: let the background scrubs put the handed-back slots in the queue again.
            pool.wait_idle(keep_idle, Duration::from_secs(60)).await?;
        }
        let started = Instant::now();
        let lease = pool.lease().await?;
        samples.push(started.elapsed());
        lease.release_nowait();
    }
    Summary::of(&samples).context("no samples")
}

fn print_table(r: &NetnsReport) {
    let ms = |s: f64| s * 1e3;
    println!(
        "\nbench netns: {} runs per cell; totals for N concurrent endpoints (ms): median, p99, max;\n\
         netpool's cleanup is handing the leases back, its recycle the time until all are leasable again\n",
        r.runs
    );
    println!(
        "{:<10} {:>4}  {:>9} {:>9} {:>9}  {:>9} {:>9} {:>9}  {:>9}",
        "way", "N", "create", "p99", "max", "cleanup", "p99", "max", "recycle"
    );
    for c in &r.cells {
        let recycle = c
            .recycle
            .as_ref()
            .map(|r| format!("{:.2}", ms(r.p50_s)))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<10} {:>4}  {:>9.2} {:>9.2} {:>9.2}  {:>9.3} {:>9.3} {:>9.3}  {:>9}",
            c.way,
            c.n,
            ms(c.create.p50_s),
            ms(c.create.p99_s),
            ms(c.create.max_s),
            ms(c.cleanup.p50_s),
            ms(c.cleanup.p99_s),
            ms(c.cleanup.max_s),
            recycle
        );
    }
    let l = &r.single_lease;
    println!(
        "\nsingle lease from a warm pool (n={}): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        l.count,
        l.p50_s * 1e6,
        l.p99_s * 1e6,
        l.max_s * 1e6
    );
    println!(
        "at the largest N, netpool vs ip: create {:.0}x faster, cleanup (ip cleanup vs netpool recycle) {:.1}x faster; the hand-back alone {:.0}x",
        r.speedup_create, r.speedup_cleanup, r.speedup_hand_back
    );
}

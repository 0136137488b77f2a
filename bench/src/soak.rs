//! `bench soak`: many activations through Kafka, cold and warm mixed, one invoker per network
//! mode in turn, while the host's kernel objects, the containers and the invoker process are
//! counted; everything must stay flat.
//!
//! Per mode, C closed-loop clients share the mode's share of the activations. Every 20th
//! activation is of an action no container has run yet (a cold start: a fresh endpoint from the
//! pool, a container or VM made for it, and, once the user memory is full, an older container
//! evicted), the others go to a warm no-op action; blocking and non-blocking alternate. Every
//! `sample_every` activations the bench counts: network namespaces (nsfs mounts), network devices, mounts, cgroups (every hierarchy), Docker containers, runc
//! containers, QEMU processes, and the invoker's open fds, threads and RSS. Per count the report
//! gives the value before the first activation, after the last, the least-squares slope over
//! the run's second half (per 1,000 activations: a leak grows with the activations, a pool
//! filling up does not) and, after the invoker stopped, what is left over the baseline taken
//! before it started.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use openwhisk::couchdb::CouchDb;
use rdkafka::producer::FutureProducer;
use testkit::invoker::InvokerCommand;
use testkit::stack::Stack;

use crate::machine::Machine;
use crate::run_setup::{RunSetup, remove_databases};
use crate::warm::{Client, Waiters, noop_action, route_acks};

/// Benchmark parameters.
#[derive(Clone, Debug)]
pub struct SoakParams {
    /// Network modes, run one after the other (`bridge`, `pcpm`, `netns`, `vm`).
    pub modes: Vec<String>,
    /// Activations over all modes (split evenly).
    pub activations: usize,
    /// One activation in `cold_every` is a cold start.
    pub cold_every: usize,
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Activations between two samples.
    pub sample_every: usize,
}

impl Default for SoakParams {
    fn default() -> Self {
        Self {
            modes: ["bridge", "pcpm", "netns", "vm"].map(String::from).to_vec(),
            activations: 10_000,
            cold_every: 20,
            concurrency: 4,
            sample_every: 100,
        }
    }
}

/// The counted objects, in the order of [`Counts::values`].
pub const COUNTED: &[&str] = &[
    "netns",
    "links",
    "mounts",
    "cgroups",
    "docker_containers",
    "runc_containers",
    "qemu_processes",
    "invoker_fds",
    "invoker_threads",
    "invoker_rss_mib",
];

/// One sample of every count.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Counts {
    pub netns: f64,
    pub links: f64,
    pub mounts: f64,
    pub cgroups: f64,
    pub docker_containers: f64,
    pub runc_containers: f64,
    pub qemu_processes: f64,
    pub invoker_fds: f64,
    pub invoker_threads: f64,
    pub invoker_rss_mib: f64,
}

impl Counts {
    /// Counts the host's objects now; the invoker's process figures when it runs (`pid`).
    pub async fn take(docker: &bollard::Docker, pid: Option<u32>) -> Self {
        let docker_containers = docker
            .list_containers(Some(
                bollard::query_parameters::ListContainersOptionsBuilder::new()
                    .all(true)
                    .build(),
            ))
            .await
            .map_or(f64::NAN, |l| l.len() as f64);
        let host = tokio::task::spawn_blocking(move || HostCounts::take(pid))
            .await
            .unwrap_or_default();
        Self {
            netns: host.netns,
            links: host.links,
            mounts: host.mounts,
            cgroups: host.cgroups,
            docker_containers,
            runc_containers: host.runc_containers,
            qemu_processes: host.qemu,
            invoker_fds: host.fds,
            invoker_threads: host.threads,
            invoker_rss_mib: host.rss_mib,
        }
    }

    /// The counts in the order of [`COUNTED`].
    pub fn values(&self) -> [f64; 10] {
        [
            self.netns,
            self.links,
            self.mounts,
            self.cgroups,
            self.docker_containers,
            self.runc_containers,
            self.qemu_processes,
            self.invoker_fds,
            self.invoker_threads,
            self.invoker_rss_mib,
        ]
    }
}

/// The counts read from `/proc` and `/sys` (blocking reads, off the workers).
#[derive(Default)]
struct HostCounts {
    netns: f64,
    links: f64,
    mounts: f64,
    cgroups: f64,
    runc_containers: f64,
    qemu: f64,
    fds: f64,
    threads: f64,
    rss_mib: f64,
}

impl HostCounts {
    fn take(pid: Option<u32>) -> Self {
        let entries = |dir: &Path| std::fs::read_dir(dir).map_or(0, |d| d.flatten().count());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // Pinned network namespaces are nsfs bind mounts (netpool's, `ip netns`', Docker's).
        let netns = mountinfo
            .lines()
            .filter(|l| {
                l.split(" - ")
                    .nth(1)
                    .is_some_and(|f| f.starts_with("nsfs "))
            })
            .count();
        let mut cgroups = 0;
        for root in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            cgroups += count_dirs(&root.path(), 3);
        }
        let runc_containers = std::fs::read_dir("/run/wsk-runc")
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| entries(&d.path()))
            .sum::<usize>();
        let qemu = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("qemu-system"))
            })
            .count();
        let (mut fds, mut threads, mut rss_mib) = (f64::NAN, f64::NAN, f64::NAN);
        if let Some(pid) = pid {
            fds = entries(Path::new(&format!("/proc/{pid}/fd"))) as f64;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            threads = field("Threads:");
            rss_mib = field("VmRSS:") / 1024.0;
        }
        Self {
            netns: netns as f64,
            links: entries(Path::new("/sys/class/net")) as f64,
            mounts: mountinfo.lines().count() as f64,
            cgroups: cgroups as f64,
            runc_containers: runc_containers as f64,
            qemu: qemu as f64,
            fds,
            threads,
            rss_mib,
        }
    }
}

/// Directories under `dir` down to `depth` levels (a hierarchy's cgroups).
fn count_dirs(dir: &Path, depth: usize) -> usize {
    if depth == 0 {
        return 0;
    }
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| 1 + count_dirs(&e.path(), depth - 1))
        .sum()
}

/// One sample: after `activations` had been answered, `seconds` into the mode's run.
#[derive(Debug, serde::Serialize)]
pub struct Sample {
    pub activations: usize,
    pub seconds: f64,
    pub counts: Counts,
}

/// One count over a mode's run.
#[derive(Debug, serde::Serialize)]
pub struct Trend {
    pub name: &'static str,
    /// Before the first activation (the invoker up, its pools full).
    pub before: f64,
    /// After the last activation.
    pub after: f64,
    /// Least-squares slope over the second half of the samples, per 1,000 activations.
    pub slope_per_1000: f64,
    /// Once the invoker stopped, minus the baseline taken before it started (host objects
    /// only; the invoker's own figures have no value then).
    pub left_after_stop: Option<f64>,
}

/// One network mode's soak.
#[derive(Debug, serde::Serialize)]
pub struct SoakMode {
    pub mode: String,
    pub activations: usize,
    pub cold_starts_sent: usize,
    /// Answered with an error status, or not answered within 60 s.
    pub failures: usize,
    pub seconds: f64,
    pub activations_per_second: f64,
    pub samples: Vec<Sample>,
    pub trends: Vec<Trend>,
}

#[derive(Debug, serde::Serialize)]
pub struct SoakReport {
    pub machine: Machine,
    pub kind: &'static str,
    pub method: String,
    pub modes: Vec<SoakMode>,
}

pub async fn run(p: &SoakParams) -> Result<SoakReport> {
    if p.modes.is_empty() || p.concurrency == 0 || p.cold_every == 0 || p.sample_every == 0 {
        bail!("soak needs at least one mode, one client, and non-zero cold and sample periods");
    }
    let RunSetup {
        stack,
        db,
        tag,
        whisks,
        activations,
        controller,
        topics_prefix,
        producer,
        acks,
    } = RunSetup::new("sk").await?;
    let docker = pcpm::docker::connect().await?;
    let waiters: Waiters = Arc::default();
    let router = tokio::spawn(route_acks(acks, waiters.clone()));
    let ctx = Ctx {
        stack: &stack,
        db: &db,
        docker: &docker,
        producer: &producer,
        waiters: &waiters,
        tag,
        whisks: &whisks,
        activations: &activations,
        topics_prefix: &topics_prefix,
        controller: &controller,
    };
    let mut modes = Vec::new();
    let mut outcome = Ok(());
    for (m, mode) in p.modes.iter().enumerate() {
        match soak_mode(&ctx, p, m, mode).await {
            Ok(r) => modes.push(r),
            Err(e) => {
                outcome = Err(e.context(format!("soak in {mode} mode")));
                break;
            }
        }
    }
    router.abort();
    remove_databases(&db, &whisks, &activations).await;
    outcome?;
    Ok(SoakReport {
        machine: Machine::describe(),
        kind: "soak",
        method: format!(
            "per mode, {} closed-loop clients send {} activations through Kafka (1 in {} to an \
             action never run before: a cold start; the rest to a warm no-op action; blocking \
             and non-blocking alternate), sampling every {} answered activations the host's \
             pinned network namespaces (nsfs mounts), network devices, mounts, cgroups (all \
             hierarchies, 3 levels), Docker containers, runc containers, QEMU processes and the \
             invoker's fds, threads and RSS; slope = least squares over the second half of the \
             samples per 1,000 activations; left_after_stop = counted after the invoker stopped \
             minus the count before it started",
            p.concurrency,
            p.activations / p.modes.len(),
            p.cold_every,
            p.sample_every
        ),
        modes,
    })
}

/// What every mode's run shares.
struct Ctx<'a> {
    stack: &'a Stack,
    db: &'a CouchDb,
    docker: &'a bollard::Docker,
    producer: &'a FutureProducer,
    waiters: &'a Waiters,
    tag: u32,
    whisks: &'a str,
    activations: &'a str,
    topics_prefix: &'a str,
    controller: &'a str,
}

async fn soak_mode(ctx: &Ctx<'_>, p: &SoakParams, m: usize, mode: &str) -> Result<SoakMode> {
    let total = p.activations / p.modes.len();
    let id = 940 + u32::try_from(m).unwrap_or(0);
    let port = 19_400 + u16::try_from(m).unwrap_or(0);
    let baseline = Counts::take(ctx.docker, None).await;
    println!("== mode {mode}: starting invoker {id}");
    let invoker = InvokerCommand::new("target/release/invoker", ctx.stack, id, &format!("sk{id}"))
        .topics_prefix(ctx.topics_prefix)
        .databases(ctx.whisks, ctx.activations)
        .port(port)
        .env(
            "RUNTIMES_MANIFEST",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../runtimes/runtimes.json"),
        )
        // Room for the two 256 MB stem cells and 12 containers of 128 MB: the cold starts'
        // containers push older ones out.
        .env("CONFIG_whisk_containerPool_userMemory", "2 g")
        .env("CONFIG_whisk_invoker_network_mode", mode)
        // Ranges of its own, apart from the quickstart's (10.230, 10.232), `bench
        // coldstart`'s (10.231, 10.233) and `bench warm`'s (10.235, 10.236).
        .env("CONFIG_whisk_invoker_network_netns_subnet", "10.237.0.0/16")
        .env("CONFIG_whisk_invoker_network_vm_subnet", "10.238.0.0/16")
        .stderr(std::fs::File::create(format!(
            "/tmp/bench-soak-{mode}.log"
        ))?)
        .spawn()
        .context("target/release/invoker (cargo build --release first)")?;
    let pid = invoker.pid();
    crate::coldstart::wait_ready(port).await?;
    let warm_name = format!("soak-{mode}-warm");
    let warm_doc = noop_action(&warm_name);
    let warm_rev = ctx
        .db
        .put_doc(ctx.whisks, &warm_doc.id, &warm_doc.to_value())
        .await?
        .rev;
    let client = Client {
        producer: ctx.producer,
        waiters: ctx.waiters,
        topic: format!("{}invoker{id}", ctx.topics_prefix),
        controller: ctx.controller,
        name: &warm_name,
        rev: &warm_rev,
        tag: ctx.tag,
        seq: AtomicU64::new(u64::from(u32::try_from(m).unwrap_or(0)) << 48),
    };
    // Warm-up: the warm action in as many containers as there are clients.
    let warmed = futures::future::join_all((0..p.concurrency).map(|_| client.activate(true))).await;
    if let Some(e) = warmed.into_iter().find_map(|a| match a {
        Ok(a) if a.success => None,
        Ok(_) => Some(anyhow::anyhow!("a warm-up activation failed")),
        Err(e) => Some(e),
    }) {
        bail!("{mode}: warm-up: {e:#}");
    }

    let counters = Counters::default();
    let t0 = Instant::now();
    let mut samples = vec![Sample {
        activations: 0,
        seconds: 0.0,
        counts: Counts::take(ctx.docker, Some(pid)).await,
    }];
    let clients = futures::future::join_all(
        (0..p.concurrency).map(|_| drive(ctx, &client, p, mode, total, &counters)),
    );
    tokio::pin!(clients);
    let mut next_sample = p.sample_every;
    let results = loop {
        tokio::select! {
            r = &mut clients => break r,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let done = counters.answered.load(Ordering::Relaxed);
        if done >= next_sample {
            samples.push(Sample {
                activations: done,
                seconds: t0.elapsed().as_secs_f64(),
                counts: Counts::take(ctx.docker, Some(pid)).await,
            });
            println!(
                "{mode:>6} {done:>6}/{total}: failures {}  {:?}",
                counters.failures.load(Ordering::Relaxed),
                samples.last().map(|s| s.counts.values())
            );
            next_sample = done + p.sample_every;
        }
    };
    let seconds = t0.elapsed().as_secs_f64();
    for r in results {
        r?;
    }
    samples.push(Sample {
        activations: counters.answered.load(Ordering::Relaxed),
        seconds,
        counts: Counts::take(ctx.docker, Some(pid)).await,
    });
    drop(invoker);
    let stopped = Counts::take(ctx.docker, None).await;
    let trends = trends(&samples, &baseline, &stopped);
    for t in &trends {
        println!(
            "{mode:>6} {:>18}: before {:>8.1}  after {:>8.1}  slope {:>+8.2}/1000  left {}",
            t.name,
            t.before,
            t.after,
            t.slope_per_1000,
            t.left_after_stop.map_or("-".into(), |l| format!("{l:+}"))
        );
    }
    let done = counters.answered.load(Ordering::Relaxed);
    Ok(SoakMode {
        mode: mode.to_owned(),
        activations: done,
        cold_starts_sent: counters.cold_sent.load(Ordering::Relaxed),
        failures: counters.failures.load(Ordering::Relaxed),
        seconds,
        activations_per_second: done as f64 / seconds,
        samples,
        trends,
    })
}

/// What the clients of one mode's run count together.
#[derive(Default)]
struct Counters {
    /// The next activation's number.
    next: AtomicUsize,
    answered: AtomicUsize,
    failures: AtomicUsize,
    cold_sent: AtomicUsize,
}

/// One closed-loop client: takes the next activation number until `total`, every
/// `cold_every`th a cold start of a new action, and counts what came back.
async fn drive(
    ctx: &Ctx<'_>,
    client: &Client<'_>,
    p: &SoakParams,
    mode: &str,
    total: usize,
    counters: &Counters,
) -> Result<()> {
    loop {
        let k = counters.next.fetch_add(1, Ordering::Relaxed);
        if k >= total {
            return Ok(());
        }
        let cold = k % p.cold_every == p.cold_every - 1;
        // The cold starts alternate too (with an even `cold_every` every one has an odd `k`):
        // a blocking one's answer is its record, which says whether it succeeded.
        let blocking = if cold {
            (k / p.cold_every).is_multiple_of(2)
        } else {
            k.is_multiple_of(2)
        };
        let answer = if cold {
            counters.cold_sent.fetch_add(1, Ordering::Relaxed);
            let name = format!("soak-{mode}-cold{k}");
            let doc = noop_action(&name);
            let rev = ctx
                .db
                .put_doc(ctx.whisks, &doc.id, &doc.to_value())
                .await?
                .rev;
            client.activate_of(&name, &rev, blocking).await
        } else {
            client.activate(blocking).await
        };
        if !matches!(answer, Ok(a) if a.success) {
            counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        counters.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Each count's before, after, slope and leftover.
fn trends(samples: &[Sample], baseline: &Counts, stopped: &Counts) -> Vec<Trend> {
    let half = &samples[samples.len() / 2..];
    COUNTED
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let points: Vec<(f64, f64)> = half
                .iter()
                .map(|s| (s.activations as f64, s.counts.values()[i]))
                .collect();
            let left = stopped.values()[i] - baseline.values()[i];
            Trend {
                name,
                before: samples.first().map_or(f64::NAN, |s| s.counts.values()[i]),
                after: samples.last().map_or(f64::NAN, |s| s.counts.values()[i]),
                slope_per_1000: slope(&points) * 1000.0,
                left_after_stop: left.is_finite().then_some(left),
            }
        })
        .collect()
}

/// The least-squares slope of `points` (0 with fewer than two distinct x).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_and_of_a_flat_series() {
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(0.0, 4.0), (10.0, 4.0), (20.0, 4.0)]), 0.0);
        assert_eq!(slope(&[(5.0, 1.0)]), 0.0);
        assert_eq!(slope(&[(5.0, 1.0), (5.0, 9.0)]), 0.0);
    }

    #[test]
    fn cgroups_are_counted_to_the_depth_asked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c/d")).unwrap();
        std::fs::create_dir_all(dir.path().join("e")).unwrap();
        std::fs::write(dir.path().join("a/file"), "").unwrap();
        assert_eq!(count_dirs(dir.path(), 3), 4);
        assert_eq!(count_dirs(dir.path(), 1), 2);
    }
}

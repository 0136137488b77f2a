//! `bench coldstart`: the PCPM paper's Fig 6 end to end through Kafka. For each network mode an
//! invoker process is started (`target/release/invoker`); the bench plays the controller and
//! produces N concurrent activations of N distinct actions (nothing is warm: fresh names each
//! cell, stem cells off, idle containers removed between cells), a CPU-light prime sieve as in
//! the paper, and times each from produce to its result. Per cell: p50, p99, max of the
//! activations and the total until the last result; for N = 50 the timeline of every
//! activation, split into queue + container start (produce → `/init` start), init and run.
//!
//! Columns: `bridge`, `pcpm`, `netns` (Node.js in containers; `netns` with the invoker's default
//! OCI runtime, `netns-runc` and `netns-crun` with that runtime, `whisk.invoker.runc.runtime`),
//! `netns-<runtime>-pre` as `netns-<runtime>` with 100 pre-created sandboxes per shape
//! (`whisk.invoker.runc.presandboxes`; primed by one untimed cold start before the first cell,
//! and refilled between cells, which the CPU account counts as it counts the pool's refill),
//! `vm` (Node.js in the Linux microVM guest, N ≤ 50) and `unikernel` (the sieve as a WebAssembly
//! module, `wasm:0.1`, in our unikernel); the last two run an invoker in vm mode, so under TCG
//! on this machine.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use openwhisk::action::{self, ActionDocument, ActionLimits, AttachmentRef, Code, CodeExec, Exec};
use openwhisk::messages::{
    Ack, ActivationMessage, ControllerInstanceId, FullyQualifiedEntityName, Identity, TransactionId,
};
use openwhisk::time::now_ms;
use rdkafka::Message;
use rdkafka::producer::FutureRecord;
use serde_json::{Value, json};
use testkit::invoker::InvokerCommand;

use crate::cpu_account::{CpuAccount, CpuShares, CpuTimes};
use crate::machine::Machine;
use crate::run_setup::{RunSetup, remove_databases};
use crate::stats::Summary;

/// The same sieve as a WebAssembly command for the `unikernel` column (`wasm:0.1`), deployed as
/// a binary module as `wsk action create --kind wasm:0.1` would.
const SIEVE_WAT: &str = include_str!("../../unikernel/functions/sieve.wat");

/// The largest N of the `vm` column: every Linux guest boots its kernel and Node.js under TCG
/// (seconds of CPU each on 2 cores; `runtimes/vm/README.md`), so N = 100 would take many minutes
/// per round and says nothing N = 50 does not.
const VM_MAX_N: usize = 50;

/// The invoker's network mode for a column: `unikernel` is vm mode running `wasm:0.1`, and
/// `netns-<runtime>` netns mode with that OCI runtime.
fn network_mode(column: &str) -> &str {
    match column {
        "unikernel" => "vm",
        c if c.starts_with("netns-") => "netns",
        other => other,
    }
}

/// The OCI runtime a `netns-<runtime>` column pins (`whisk.invoker.runc.runtime`).
fn oci_runtime(column: &str) -> Option<&str> {
    column
        .strip_prefix("netns-")
        .map(|r| r.strip_suffix("-pre").unwrap_or(r))
}

/// Whether a column keeps pre-created sandboxes (`netns-<runtime>-pre`).
fn presandboxes(column: &str) -> bool {
    column.starts_with("netns-") && column.ends_with("-pre")
}

/// The sizes a column runs.
fn sizes_of(column: &str, sizes: &[usize]) -> Vec<usize> {
    match column {
        "vm" => sizes.iter().copied().filter(|n| *n <= VM_MAX_N).collect(),
        _ => sizes.to_vec(),
    }
}

const SIEVE: &str = "function main(p) { const n = p.n || 20000; const s = new Uint8Array(n + 1); let c = 0; for (let i = 2; i <= n; i++) { if (!s[i]) { c++; for (let j = i * i; j <= n; j += i) s[j] = 1; } } return {primes: c}; }";

/// Benchmark parameters.
#[derive(Clone, Debug)]
pub struct ColdstartParams {
    pub sizes: Vec<usize>,
    pub rounds: usize,
    pub modes: Vec<String>,
    /// N whose timelines are kept (the paper's Fig 3 and 7).
    pub timeline_n: usize,
}

impl Default for ColdstartParams {
    fn default() -> Self {
        Self {
            sizes: vec![1, 10, 25, 50, 75, 100],
            rounds: 3,
            modes: [
                "bridge",
                "pcpm",
                "netns-runc",
                "netns-crun",
                "netns-crun-pre",
                "vm",
                "unikernel",
            ]
            .map(String::from)
            .to_vec(),
            timeline_n: 50,
        }
    }
}

/// One (mode, N) cell over all rounds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cell {
    pub mode: String,
    pub n: usize,
    pub total: Summary,
    /// The successful activations (`None`: every one failed; `errors` counts them).
    pub each: Option<Summary>,
    pub errors: usize,
    /// Share of all CPUs busy (user + system + irq) from the first produce to the last result,
    /// median over rounds: near 1 means the cell was CPU-bound.
    pub cpu_busy: f64,
    /// CPU ms per cold start per component (`bench::cpu_account`), mean over rounds, from the
    /// first produce until the containers are removed and the pool is full again (so the
    /// clean-up is in it, and the idle components' background work over that time).
    pub cpu_ms_per_cold_start: Option<CpuShares>,
}

/// One activation on the timeline, seconds from the cell's first produce.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Span {
    pub produced: f64,
    pub init_start: f64,
    pub run_start: f64,
    pub end: f64,
    pub acked: f64,
}

/// Everything `bench coldstart` writes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ColdstartReport {
    pub machine: Machine,
    pub rounds: usize,
    pub cells: Vec<Cell>,
    pub timelines: HashMap<String, Vec<Span>>,
    /// Median total at the largest N, per mode, over bridge's (a mode that did not run that N
    /// is left out).
    pub ratios_at_max_n: HashMap<String, f64>,
    /// Median of each activation (produce → result) at N = 1, per mode, over bridge's.
    pub ratios_p50_at_n1: HashMap<String, f64>,
    /// Per mode: p99 of each activation at the largest N over p99 at the smallest N (both from
    /// at least 20 samples; below 100 samples a p99 is the cell's largest sample, see
    /// `p99_is_max`).
    pub p99_growth: HashMap<String, f64>,
    /// Per mode: the median of each activation at the largest N over the median at the smallest.
    pub p50_growth: HashMap<String, f64>,
}

/// The invoker's stderr: `$BENCH_INVOKER_LOG_DIR/invoker-<mode>.log` when that is set (for
/// traces: add `RUST_LOG=invoker=debug`), else nowhere.
fn invoker_log(mode: &str) -> Result<Stdio> {
    match std::env::var_os("BENCH_INVOKER_LOG_DIR") {
        Some(dir) => {
            let path = std::path::Path::new(&dir).join(format!("invoker-{mode}.log"));
            Ok(std::fs::File::create(&path)
                .with_context(|| format!("{}", path.display()))?
                .into())
        }
        None => Ok(Stdio::null()),
    }
}

fn manifest_without_stem_cells() -> Result<String> {
    let mut m: Value = serde_json::from_str(
        &std::fs::read_to_string("runtimes/runtimes.json")
            .context("run from the repository root")?,
    )?;
    for kinds in m["runtimes"]
        .as_object_mut()
        .context("runtimes")?
        .values_mut()
    {
        for k in kinds.as_array_mut().context("kinds")? {
            if let Some(o) = k.as_object_mut() {
                o.remove("stemCells");
            }
        }
    }
    Ok(m.to_string())
}

/// Runs the benchmark.
pub async fn run(p: &ColdstartParams) -> Result<ColdstartReport> {
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
    } = RunSetup::new("cs").await?;
    let manifest = manifest_without_stem_cells()?;
    let user = Identity::guest(&[]);
    let docker = pcpm::docker::connect().await?;
    let sieve_wasm = wat::parse_str(SIEVE_WAT).context("unikernel/functions/sieve.wat")?;

    let stack_dir =
        std::env::var_os("WHISK_STACK_DIR").map_or(".stack".into(), std::path::PathBuf::from);
    // Where the CPU goes, per component; without it (no cgroup hierarchy, not root) the cells
    // still have the machine's busy share.
    let mut account = match CpuAccount::start(&stack_dir) {
        Ok(a) => Some(a),
        Err(e) => {
            eprintln!("no CPU account per component: {e:#}");
            None
        }
    };
    let mut cells = Vec::new();
    let mut timelines = HashMap::new();
    for (m, mode) in p.modes.iter().enumerate() {
        let id = 900 + u32::try_from(m).unwrap_or(0);
        let port = 19_000 + u16::try_from(m).unwrap_or(0);
        let prefix = format!("wskcs{id}{id}_");
        // netns mode: runc keeps a folder per container under the invoker's state root; the VM
        // backend a folder per VM.
        let runc_state = std::path::PathBuf::from(format!("/run/wsk-runc/wskcs{id}{id}"));
        let vm_state = std::path::PathBuf::from(format!("/run/wsk-vm/wskcs{id}{id}"));
        let sizes = sizes_of(mode, &p.sizes);
        println!("== mode {mode}: starting invoker {id}");
        let mut invoker =
            InvokerCommand::new("target/release/invoker", &stack, id, &format!("cs{id}"));
        if let Some(runtime) = oci_runtime(mode) {
            invoker = invoker.env("CONFIG_whisk_invoker_runc_runtime", runtime);
        }
        let pre = presandboxes(mode);
        // Enough for the largest cell (0: none, the default).
        invoker = invoker.env(
            "CONFIG_whisk_invoker_runc_presandboxes",
            if pre {
                POOL_READY.to_string()
            } else {
                "0".into()
            },
        );
        let invoker = invoker
            .topics_prefix(&topics_prefix)
            .databases(&whisks, &activations)
            .port(port)
            .env("RUNTIMES_MANIFEST", &manifest)
            .env("CONFIG_whisk_containerPool_userMemory", "16 g")
            .env(
                "CONFIG_whisk_containerProxy_timeouts_idleContainer",
                "2 seconds",
            )
            .env("CONFIG_whisk_invoker_network_mode", network_mode(mode))
            // netns mode: a range of its own beside the quickstart's invoker 0, which keeps
            // the default 10.230.0.0/16 (netpool refuses a pool overlapping another).
            .env("CONFIG_whisk_invoker_network_netns_subnet", "10.231.0.0/16")
            // Likewise the VM slots (vm mode's, or the VM backend's beside a container
            // mode's), apart from the quickstart's 10.232.0.0/16.
            .env("CONFIG_whisk_invoker_network_vm_subnet", "10.233.0.0/16")
            // 50 Linux guests booting at once under TCG on 2 cores take minutes, not the
            // default 60 s; a boot that still times out is counted as a failed activation.
            .env("CONFIG_whisk_invoker_vm_bootTimeout", "600 seconds")
            .env(
                "CONFIG_whisk_invoker_network_pool_lowWatermark",
                POOL_READY.to_string(),
            )
            .env("CONFIG_whisk_invoker_network_pool_highWatermark", "110")
            .env("CONFIG_whisk_invoker_network_pool_max", "256")
            .env("CONFIG_whisk_docker_client_parallelRuns", "100")
            .stderr(invoker_log(mode)?)
            .grace(Duration::from_secs(120))
            .spawn()
            .context("target/release/invoker (cargo build --release first)")?;
        if let Some(a) = account.as_mut() {
            a.add_invoker(invoker.pid())?;
        }
        wait_ready(port).await?;
        wait_pool_ready(port, mode, pre).await?;
        let mut cpu: HashMap<usize, Vec<CpuShares>> = HashMap::new();
        let mut totals: HashMap<usize, Vec<Duration>> = HashMap::new();
        let mut each: HashMap<usize, Vec<Duration>> = HashMap::new();
        let mut errors: HashMap<usize, usize> = HashMap::new();
        let mut busy: HashMap<usize, Vec<f64>> = HashMap::new();
        let rounds_of = |n: usize| p.rounds.max(MIN_SAMPLES.div_ceil(n.max(1)));
        let max_rounds = sizes
            .iter()
            .map(|&n| rounds_of(n))
            .max()
            .unwrap_or(p.rounds);
        // A column with pre-created sandboxes begins with one cold start that is not a sample:
        // the first cold start of a shape makes its shelf.
        let smallest = sizes.iter().copied().min().unwrap_or(1);
        for pass in usize::from(!pre)..=max_rounds {
            let round = pass.checked_sub(1);
            let sample = round.is_some();
            if !sample {
                println!("== mode {mode}: priming the pre-created sandboxes");
            }
            for &n in sizes.iter().filter(|&&n| match round {
                Some(r) => r < rounds_of(n),
                None => n == smallest,
            }) {
                let n = if sample { n } else { 1 };
                let round_name = round.map_or("prime".to_owned(), |r| r.to_string());
                // Actions named for this cell: nothing can be warm.
                let mut revs = Vec::new();
                for i in 0..n {
                    let name = format!("sieve-{mode}-r{round_name}-n{n}-{i}");
                    let exec = match mode.as_str() {
                        "unikernel" => CodeExec {
                            kind: "wasm:0.1".into(),
                            code: Some(Code::Attachment(AttachmentRef::inline(
                                &sieve_wasm,
                                action::BINARY_CODE_TYPE,
                            ))),
                            main: None,
                            binary: true,
                        },
                        _ => CodeExec {
                            kind: "nodejs:default".into(),
                            code: Some(Code::Attachment(AttachmentRef::inline(
                                SIEVE.as_bytes(),
                                action::TEXT_CODE_TYPE,
                            ))),
                            main: None,
                            binary: false,
                        },
                    };
                    let mut doc = ActionDocument::new("guest", &name, Exec::Managed(exec));
                    doc.limits = ActionLimits {
                        timeout: 300_000,
                        // A Linux guest runs Node.js in its own kernel: more than the
                        // container's 128 MB would be tight.
                        memory: if mode == "vm" { 256 } else { 128 },
                        ..ActionLimits::default()
                    };
                    revs.push((
                        name.clone(),
                        db.put_doc(&whisks, &doc.id, &doc.to_value()).await?.rev,
                    ));
                }
                let cpu0 = CpuTimes::now();
                let account0 = account.as_ref().map(CpuAccount::snapshot);
                let t0 = Instant::now();
                let base_ms = now_ms();
                let mut pending: HashMap<String, (usize, Instant)> = HashMap::new();
                for (i, (name, rev)) in revs.iter().enumerate() {
                    let aid = format!(
                        "{:08x}{:04x}{:04x}{:016x}",
                        tag,
                        round.unwrap_or(0xffff),
                        n,
                        i
                    );
                    let msg = ActivationMessage::builder(
                        TransactionId::new(&format!("cs{aid}"), now_ms()),
                        FullyQualifiedEntityName::new("guest", name).with_version("0.0.1"),
                        user.clone(),
                        &aid,
                        ControllerInstanceId::controller(&controller),
                    )
                    .revision(rev)
                    .blocking(true)
                    .content(json!({"n": 20000}))
                    .build()?;
                    let sent = Instant::now();
                    producer
                        .send(
                            FutureRecord::<(), _>::to(&format!("{topics_prefix}invoker{id}"))
                                .payload(&msg.to_json()),
                            Duration::from_secs(10),
                        )
                        .await
                        .map_err(|(e, _)| e)?;
                    pending.insert(aid, (i, sent));
                }
                let mut spans = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(600);
                while !pending.is_empty() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let m = tokio::time::timeout(left, acks.recv())
                        .await
                        .context("activations never answered")??;
                    let Ok(ack) = serde_json::from_slice::<Ack>(m.payload().unwrap_or_default())
                    else {
                        continue;
                    };
                    let Some(a) = ack.record() else {
                        continue;
                    };
                    let Some((_, sent)) = pending.remove(&a.activation_id) else {
                        continue;
                    };
                    let took = sent.elapsed();
                    if a.response.status_code != 0 {
                        *errors.entry(n).or_default() += 1;
                        eprintln!(
                            "  {mode} N={n}: {}",
                            a.response.result.clone().unwrap_or_default()
                        );
                        continue;
                    }
                    each.entry(n).or_default().push(took);
                    let ann = |k: &str| a.annotation(k).and_then(Value::as_i64).unwrap_or(0);
                    let s = |ms: i64| (ms - base_ms) as f64 / 1e3;
                    spans.push(Span {
                        produced: sent.duration_since(t0).as_secs_f64(),
                        init_start: s(a.start),
                        run_start: s(a.start + ann("initTime")),
                        end: s(a.end),
                        acked: t0.elapsed().as_secs_f64(),
                    });
                }
                let total = t0.elapsed();
                totals.entry(n).or_default().push(total);

                if let (Some(a), Some(b)) = (cpu0, CpuTimes::now()) {
                    busy.entry(n).or_default().push(a.busy_share_until(&b));
                }
                println!(
                    "round {}/{} {mode:>6} N={n:>3}: total {:>8.1} ms",
                    round.map_or("prime".to_owned(), |r| (r + 1).to_string()),
                    rounds_of(n),
                    total.as_secs_f64() * 1e3
                );
                if n == p.timeline_n && round.is_some_and(|r| r + 1 == rounds_of(n)) {
                    timelines.insert(mode.clone(), spans);
                }
                wait_no_containers(&docker, &prefix, &[&runc_state, &vm_state], port, pre).await?;
                wait_pool_ready(port, mode, pre).await?;
                // A cold start's CPU includes its clean-up: the container removed (after the 2 s
                // idle timeout) and its endpoint back in the pool.
                if let (Some(a), Some(before)) = (account.as_ref(), account0.as_ref()) {
                    cpu.entry(n)
                        .or_default()
                        .push(a.snapshot().since(before, n));
                }
                wait_cpu_quiet().await;
                if !sample {
                    // Not a sample: what it measured goes.
                    if errors.remove(&n).unwrap_or(0) > 0 {
                        bail!("{mode}: the cold start that primes the sandboxes failed");
                    }
                    totals.remove(&n);
                    each.remove(&n);
                    busy.remove(&n);
                    cpu.remove(&n);
                }
            }
        }
        for &n in &sizes {
            cells.push(Cell {
                mode: mode.clone(),
                n,
                total: Summary::of(&totals[&n]).context("no rounds")?,
                each: Summary::of(each.get(&n).map_or(&[][..], Vec::as_slice)),
                errors: errors.get(&n).copied().unwrap_or(0),
                cpu_busy: median(busy.get(&n).map_or(&[][..], Vec::as_slice)),
                cpu_ms_per_cold_start: cpu.get(&n).map(|v| CpuShares::mean(v)),
            });
        }
    }
    let max_n = p.sizes.iter().copied().max().unwrap_or(1);
    let median = |mode: &str| {
        cells
            .iter()
            .find(|c| c.mode == mode && c.n == max_n)
            .map_or(f64::NAN, |c| c.total.p50_s)
    };
    let ratios_at_max_n = p
        .modes
        .iter()
        .map(|m| (m.clone(), median(m) / median("bridge")))
        .filter(|(_, r)| r.is_finite())
        .collect();
    let each_p50 = |mode: &str| {
        cells
            .iter()
            .find(|c| c.mode == mode && c.n == 1)
            .and_then(|c| c.each.as_ref())
            .map_or(f64::NAN, |e| e.p50_s)
    };
    let ratios_p50_at_n1 = p
        .modes
        .iter()
        .map(|m| (m.clone(), each_p50(m) / each_p50("bridge")))
        .filter(|(_, r)| r.is_finite())
        .collect();
    let min_n = p.sizes.iter().copied().min().unwrap_or(1);
    let p99 = |mode: &str, n: usize| {
        cells
            .iter()
            .find(|c| c.mode == mode && c.n == n)
            .and_then(|c| c.each.as_ref())
            .map_or(f64::NAN, |e| e.p99_s)
    };
    let p99_growth = p
        .modes
        .iter()
        .map(|m| {
            let top = sizes_of(m, &p.sizes).into_iter().max().unwrap_or(max_n);
            (m.clone(), p99(m, top) / p99(m, min_n))
        })
        .collect();
    let p50 = |mode: &str, n: usize| {
        cells
            .iter()
            .find(|c| c.mode == mode && c.n == n)
            .and_then(|c| c.each.as_ref())
            .map_or(f64::NAN, |e| e.p50_s)
    };
    let p50_growth = p
        .modes
        .iter()
        .map(|m| {
            let top = sizes_of(m, &p.sizes).into_iter().max().unwrap_or(max_n);
            (m.clone(), p50(m, top) / p50(m, min_n))
        })
        .collect();
    remove_databases(&db, &whisks, &activations).await;
    Ok(ColdstartReport {
        machine: Machine::describe(),
        rounds: p.rounds,
        cells,
        timelines,
        ratios_at_max_n,
        ratios_p50_at_n1,
        p99_growth,
        p50_growth,
    })
}

pub(crate) async fn wait_ready(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"GET /ping HTTP/1.0\r\n\r\n").await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            if out.contains("pong") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the invoker never answered /ping on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Waits (at most 30 s) until the CPUs are at least 85% idle over half a second: the kernel
/// tears the last cell's namespaces, cgroups and mounts down after their processes are gone, and
/// that work would land on the next cell's clock.
async fn wait_cpu_quiet() {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(a) = CpuTimes::now() else { return };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(b) = CpuTimes::now() else { return };
        if a.busy_share_until(&b) <= 0.15 {
            return;
        }
    }
}

/// Activations per cell at least: a cell of N runs `max(rounds, ceil(20 / N))` rounds, so that
/// the p99 of its activations comes from 20 samples or more (N = 1 runs 20 rounds; from N = 10
/// the rounds asked for are enough). With fewer than 100 samples the nearest-rank p99 is still
/// the largest sample: the report says so (`p99_is_max`).
const MIN_SAMPLES: usize = 20;

/// The pool every cell starts from: `POOL_READY` idle endpoints and none leased.
const POOL_READY: u64 = 100;

/// Waits until the invoker's endpoint pool (pcpm or netns) is full again and nothing is still
/// being returned to it, read from its `/metrics`: the cell before must not be scrubbing slots
/// while the next one is timed, and a just-started invoker answers `/ping` before its pool is
/// filled. Bridge mode has no pool. With pre-created sandboxes (`pre`), their shelf is full too
/// once primed, and their endpoints are the only ones leased.
async fn wait_pool_ready(port: u16, mode: &str, pre: bool) -> Result<()> {
    let (idle, leased) = match network_mode(mode) {
        "pcpm" => ("pcpm_pause_containers_idle", "pcpm_pause_containers_leased"),
        "netns" | "vm" => ("netpool_slots_idle", "netpool_slots_leased"),
        _ => return Ok(()),
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let http = reqwest::Client::new();
    loop {
        let text = metrics_text(&http, port).await?;
        let gauge = |name: &str| gauge_in(&text, name);
        let shelf = gauge(PRESANDBOXES_READY);
        let primed = shelf > 0 || gauge(PRESANDBOX_TAKES) > 0;
        let shelf_full = !pre || !primed || shelf >= POOL_READY;
        if gauge(idle) >= POOL_READY && gauge(leased) == shelf && shelf_full {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the {mode} pool did not refill within 300 s: {} idle, {} leased, {shelf} sandboxes pre-created",
                gauge(idle),
                gauge(leased)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The invoker's gauge of sandboxes on the shelf, and its counter of cold starts that looked.
const PRESANDBOXES_READY: &str = "invoker_runc_presandboxes_ready";
const PRESANDBOX_TAKES: &str = "invoker_runc_presandbox_takes_total";

/// Waits until the invoker removed its idle action containers (idle timeout 2 s): Docker's and
/// the ones in `state_dirs`, which hold a folder per container (runc's state in netns mode, the
/// VM backend's folders). With pre-created sandboxes (`pre`) the runtime's folder keeps theirs:
/// as many as the invoker's `/metrics` on `port` says are on the shelf.
async fn wait_no_containers(
    docker: &bollard::Docker,
    prefix: &str,
    state_dirs: &[&std::path::Path],
    port: u16,
    pre: bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let http = reqwest::Client::new();
    loop {
        let kept = if pre {
            gauge_in(&metrics_text(&http, port).await?, PRESANDBOXES_READY) as usize
        } else {
            0
        };
        let filters = HashMap::from([("name", vec![prefix.to_owned()])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let runc_left: usize = state_dirs
            .iter()
            .map(|dir| std::fs::read_dir(dir).map_or(0, |d| d.flatten().count()))
            .sum();
        if docker.list_containers(Some(options)).await?.is_empty() && runc_left == kept {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("idle containers were not removed within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The invoker's `/metrics` on `port`.
async fn metrics_text(http: &reqwest::Client, port: u16) -> Result<String> {
    Ok(http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// A metric's value in Prometheus text, its series summed (0 when it is not there).
fn gauge_in(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_name_the_mode_the_runtime_and_the_sandboxes() {
        assert_eq!(network_mode("netns-crun-pre"), "netns");
        assert_eq!(oci_runtime("netns-crun-pre"), Some("crun"));
        assert_eq!(oci_runtime("netns-runc"), Some("runc"));
        assert_eq!(oci_runtime("bridge"), None);
        assert!(presandboxes("netns-crun-pre"));
        assert!(!presandboxes("netns-crun"));
        assert!(!presandboxes("pcpm"));
        assert_eq!(network_mode("unikernel"), "vm");
    }

    #[test]
    fn metrics_are_read_from_prometheus_text() {
        let text = "# TYPE invoker_runc_presandboxes_ready gauge\n\
                    invoker_runc_presandboxes_ready 42\n\
                    invoker_runc_presandbox_takes_total{outcome=\"hit\"} 3\n\
                    invoker_runc_presandbox_takes_total{outcome=\"miss\"} 1\n";
        assert_eq!(gauge_in(text, PRESANDBOXES_READY), 42);
        assert_eq!(gauge_in(text, PRESANDBOX_TAKES), 4);
        assert_eq!(gauge_in(text, "netpool_slots_idle"), 0);
    }
}

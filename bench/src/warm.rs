//! `bench warm`: the warm path through Kafka. One invoker per network mode; one no-op Node.js
//! action (`function main(p) { return p; }`, concurrency limit 1) made warm in as many containers
//! as the highest concurrency level; then, per cell, C closed-loop clients each keep one
//! activation outstanding for a fixed time: produce the `ActivationMessage`, wait for its ack,
//! produce the next. Blocking cells wait for the ack that carries the result, non-blocking ones
//! for the completion that frees the slot (what a controller waits for in each case).
//!
//! Per cell: activations answered, failures (an error status or no answer within 60 s), cold
//! starts among them (a record with an `initTime` annotation: the pool had to start a
//! container, which the warm-up should have made unnecessary), throughput, p50/p99/max from
//! produce to the ack, the invoker process's own CPU per activation (its `utime + stime` from
//! `/proc`, which excludes the containers) and the whole machine's busy CPU per activation
//! (everything: broker, CouchDB-API server, containers, the bench itself).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use openwhisk::action::{self, ActionDocument, ActionLimits, AttachmentRef, Code, CodeExec, Exec};
use openwhisk::couchdb::CouchDb;
use openwhisk::messages::{
    Ack, ActivationMessage, ControllerInstanceId, FullyQualifiedEntityName, Identity, TransactionId,
};
use openwhisk::time::now_ms;
use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use testkit::invoker::InvokerCommand;
use testkit::stack::Stack;
use tokio::sync::oneshot;

use crate::cpu_account::{CpuAccount, CpuShares, machine_busy_s, process_cpu_s};
use crate::machine::Machine;
use crate::run_setup::{RunSetup, remove_databases};
use crate::stats::Summary;

const NOOP: &str = "function main(p) { return p; }";

/// How long one activation may take before it counts as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Benchmark parameters.
#[derive(Clone, Debug)]
pub struct WarmParams {
    /// Network modes (`bridge`, `pcpm`, `netns`): the warm path does not touch the network
    /// set-up, so the modes differ only in how a container was made.
    pub modes: Vec<String>,
    /// Closed-loop clients per cell.
    pub concurrency: Vec<usize>,
    /// Measured time per cell.
    pub seconds: u64,
}

impl Default for WarmParams {
    fn default() -> Self {
        Self {
            modes: vec!["bridge".into(), "netns".into()],
            concurrency: vec![1, 4, 16, 32],
            seconds: 15,
        }
    }
}

/// One mode × blocking × concurrency cell.
#[derive(Debug, serde::Serialize)]
pub struct WarmCell {
    pub mode: String,
    pub blocking: bool,
    pub concurrency: usize,
    /// Activations answered with success within the cell's time.
    pub activations: usize,
    /// Activations answered with an error status or not answered within 60 s.
    pub failures: usize,
    /// Answered activations whose container was started for them.
    pub cold_starts: usize,
    pub seconds: f64,
    pub activations_per_second: f64,
    /// Produce → ack, successful activations.
    pub latency: Option<Summary>,
    /// The invoker process's CPU (user + system) per answered activation.
    pub invoker_cpu_ms_per_activation: f64,
    /// The whole machine's busy CPU per answered activation (all cores).
    pub machine_cpu_ms_per_activation: f64,
    /// CPU ms per answered activation per component (`bench::cpu_account`), over the cell.
    pub cpu_ms_per_activation: Option<CpuShares>,
}

#[derive(Debug, serde::Serialize)]
pub struct WarmReport {
    pub machine: Machine,
    /// What each figure measures.
    pub method: &'static str,
    pub seconds_per_cell: u64,
    pub cells: Vec<WarmCell>,
}

/// Acks routed to whoever waits for an activation id.
pub(crate) type Waiters = Arc<Mutex<HashMap<String, (bool, oneshot::Sender<Answer>)>>>;

/// What the bench learns from the ack it waited for.
pub(crate) struct Answer {
    pub(crate) success: bool,
    pub(crate) cold: bool,
}

pub async fn run(p: &WarmParams) -> Result<WarmReport> {
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
    } = RunSetup::new("wm").await?;
    let waiters: Waiters = Arc::default();
    let router = tokio::spawn(route_acks(acks, waiters.clone()));

    let result = measure(
        p,
        &stack,
        &db,
        &producer,
        &waiters,
        tag,
        &whisks,
        &activations,
        &topics_prefix,
        &controller,
    )
    .await;
    router.abort();
    remove_databases(&db, &whisks, &activations).await;
    Ok(WarmReport {
        machine: Machine::describe(),
        method: "closed loop: each of C clients produces an ActivationMessage, waits for its ack \
                 (blocking: the one with the result; non-blocking: the completion), then produces \
                 the next; latency is produce -> that ack; invoker CPU is the invoker process's \
                 utime+stime over the cell divided by the answered activations; machine CPU is \
                 all cores' busy time over the cell divided likewise",
        seconds_per_cell: p.seconds,
        cells: result?,
    })
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    p: &WarmParams,
    stack: &Stack,
    db: &CouchDb,
    producer: &FutureProducer,
    waiters: &Waiters,
    tag: u32,
    whisks: &str,
    activations: &str,
    topics_prefix: &str,
    controller: &str,
) -> Result<Vec<WarmCell>> {
    let max_c = p.concurrency.iter().copied().max().unwrap_or(1);
    let stack_dir =
        std::env::var_os("WHISK_STACK_DIR").map_or(".stack".into(), std::path::PathBuf::from);
    let mut account = match CpuAccount::start(&stack_dir) {
        Ok(a) => Some(a),
        Err(e) => {
            eprintln!("no CPU account per component: {e:#}");
            None
        }
    };
    let mut cells = Vec::new();
    for (m, mode) in p.modes.iter().enumerate() {
        let id = 920 + u32::try_from(m).unwrap_or(0);
        let port = 19_200 + u16::try_from(m).unwrap_or(0);
        println!("== mode {mode}: starting invoker {id}");
        let invoker = InvokerCommand::new("target/release/invoker", stack, id, &format!("wm{id}"))
            .topics_prefix(topics_prefix)
            .databases(whisks, activations)
            .port(port)
            .env(
                "RUNTIMES_MANIFEST",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../runtimes/runtimes.json"),
            )
            .env("CONFIG_whisk_containerPool_userMemory", "16 g")
            .env("CONFIG_whisk_invoker_network_mode", mode.as_str())
            // Ranges of its own, apart from the quickstart's (10.230, 10.232) and `bench
            // coldstart`'s (10.231, 10.233).
            .env("CONFIG_whisk_invoker_network_netns_subnet", "10.235.0.0/16")
            .env("CONFIG_whisk_invoker_network_vm_subnet", "10.236.0.0/16")
            .stderr(std::fs::File::create(format!(
                "/tmp/bench-warm-{mode}.log"
            ))?)
            .spawn()
            .context("target/release/invoker (cargo build --release first)")?;
        if let Some(a) = account.as_mut() {
            a.add_invoker(invoker.pid())?;
        }
        crate::coldstart::wait_ready(port).await?;
        let name = format!("noop-{mode}");
        let doc = noop_action(&name);
        let rev = db.put_doc(whisks, &doc.id, &doc.to_value()).await?.rev;
        let client = Client {
            producer,
            waiters,
            topic: format!("{topics_prefix}invoker{id}"),
            controller,
            name: &name,
            rev: &rev,
            tag,
            seq: std::sync::atomic::AtomicU64::new(u64::from(u32::try_from(m).unwrap_or(0)) << 48),
        };
        // Warm-up: max_c at once, twice over, so that max_c containers exist and are warm.
        for _ in 0..2 {
            let answers =
                futures::future::join_all((0..max_c).map(|_| client.activate(true))).await;
            let failed = answers
                .iter()
                .filter(|a| !matches!(a, Ok(a) if a.success))
                .count();
            if failed > 0 {
                bail!("{mode}: {failed} of {max_c} warm-up activations failed");
            }
        }
        for &blocking in &[true, false] {
            for &c in &p.concurrency {
                let cell = client
                    .cell(
                        mode,
                        blocking,
                        c,
                        p.seconds,
                        invoker.pid(),
                        account.as_ref(),
                    )
                    .await?;
                println!(
                    "{mode:>6} {:>12} C={c:>3}: {:>7.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  \
                     invoker {:.3} ms/act  machine {:.2} ms/act  failures {}  cold {}",
                    if blocking { "blocking" } else { "non-blocking" },
                    cell.activations_per_second,
                    cell.latency.as_ref().map_or(f64::NAN, |l| l.p50_s * 1e3),
                    cell.latency.as_ref().map_or(f64::NAN, |l| l.p99_s * 1e3),
                    cell.invoker_cpu_ms_per_activation,
                    cell.machine_cpu_ms_per_activation,
                    cell.failures,
                    cell.cold_starts,
                );
                cells.push(cell);
            }
        }
        drop(invoker);
    }
    Ok(cells)
}

/// The no-op Node.js action `guest/<name>`, 128 MB, concurrency limit 1.
pub(crate) fn noop_action(name: &str) -> ActionDocument {
    let mut doc = ActionDocument::new(
        "guest",
        name,
        Exec::Managed(CodeExec {
            kind: "nodejs:default".into(),
            code: Some(Code::Attachment(AttachmentRef::inline(
                NOOP.as_bytes(),
                action::TEXT_CODE_TYPE,
            ))),
            main: None,
            binary: false,
        }),
    );
    doc.limits = ActionLimits {
        memory: 128,
        ..ActionLimits::default()
    };
    doc
}

/// Plays the controller for one action: produces its activations, waits for their acks.
pub(crate) struct Client<'a> {
    pub(crate) producer: &'a FutureProducer,
    pub(crate) waiters: &'a Waiters,
    /// `invoker<N>`.
    pub(crate) topic: String,
    pub(crate) controller: &'a str,
    pub(crate) name: &'a str,
    pub(crate) rev: &'a str,
    pub(crate) tag: u32,
    /// The next activation's number: with `tag`, its 32 hex digit id.
    pub(crate) seq: std::sync::atomic::AtomicU64,
}

impl Client<'_> {
    /// One activation of the client's action: produce, wait for its ack.
    pub(crate) async fn activate(&self, blocking: bool) -> Result<Answer> {
        self.activate_of(self.name, self.rev, blocking).await
    }

    /// One activation of the action `name` at `rev`: produce, wait for its ack.
    pub(crate) async fn activate_of(
        &self,
        name: &str,
        rev: &str,
        blocking: bool,
    ) -> Result<Answer> {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let aid = format!("{:08x}{seq:024x}", self.tag);
        let msg = ActivationMessage::builder(
            TransactionId::new(&format!("wm{aid}"), now_ms()),
            FullyQualifiedEntityName::new("guest", name).with_version("0.0.1"),
            Identity::guest(&[]),
            &aid,
            ControllerInstanceId::controller(self.controller),
        )
        .revision(rev)
        .blocking(blocking)
        .content(json!({}))
        .build()?;
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(aid.clone(), (blocking, tx));
        let sent = self
            .producer
            .send(
                FutureRecord::<(), _>::to(&self.topic).payload(&msg.to_json()),
                Duration::from_secs(10),
            )
            .await;
        if let Err((e, _)) = sent {
            self.waiters.lock().remove(&aid);
            return Err(e.into());
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(a)) => Ok(a),
            _ => {
                self.waiters.lock().remove(&aid);
                bail!("activation {aid} not answered within {ANSWER_TIMEOUT:?}")
            }
        }
    }

    async fn cell(
        &self,
        mode: &str,
        blocking: bool,
        concurrency: usize,
        seconds: u64,
        invoker_pid: u32,
        account: Option<&CpuAccount>,
    ) -> Result<WarmCell> {
        let cpu0 = (process_cpu_s(invoker_pid)?, machine_busy_s()?);
        let account0 = account.map(CpuAccount::snapshot);
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(seconds);
        let loops = (0..concurrency).map(|_| async move {
            let (mut ok, mut failed, mut cold, mut lat) = (0, 0, 0, Vec::new());
            while Instant::now() < until {
                let start = Instant::now();
                match self.activate(blocking).await {
                    Ok(a) if a.success => {
                        ok += 1;
                        cold += usize::from(a.cold);
                        lat.push(start.elapsed());
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed, cold, lat)
        });
        let results = futures::future::join_all(loops).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu1 = (process_cpu_s(invoker_pid)?, machine_busy_s()?);
        let after = account.map(CpuAccount::snapshot);
        let (mut ok, mut failed, mut cold, mut lat) = (0, 0, 0, Vec::new());
        for (o, f, c, l) in results {
            ok += o;
            failed += f;
            cold += c;
            lat.extend(l);
        }
        let per = |ms: f64| if ok == 0 { f64::NAN } else { ms / ok as f64 };
        let cpu = after.zip(account0.as_ref()).map(|(a, b)| a.since(b, ok));
        Ok(WarmCell {
            mode: mode.to_owned(),
            blocking,
            concurrency,
            activations: ok,
            failures: failed,
            cold_starts: cold,
            seconds: elapsed,
            activations_per_second: ok as f64 / elapsed,
            latency: Summary::of(&lat),
            invoker_cpu_ms_per_activation: per((cpu1.0 - cpu0.0) * 1e3),
            machine_cpu_ms_per_activation: per((cpu1.1 - cpu0.1) * 1e3),
            cpu_ms_per_activation: cpu,
        })
    }
}

/// Reads `completed<C>` and hands each ack to the activation waiting for it: a blocking one
/// waits for the ack with the result, a non-blocking one for the ack that frees the slot.
pub(crate) async fn route_acks(acks: StreamConsumer, waiters: Waiters) {
    loop {
        let Ok(m) = acks.recv().await else { continue };
        let Ok(ack) = serde_json::from_slice::<Ack>(m.payload().unwrap_or_default()) else {
            continue;
        };
        let id = ack.activation_id().to_owned();
        let mut w = waiters.lock();
        let wanted = match w.get(&id) {
            Some((true, _)) => ack.record().is_some(),
            Some((false, _)) => ack.frees_slot(),
            None => false,
        };
        if !wanted {
            continue;
        }
        let Some((_, tx)) = w.remove(&id) else {
            continue;
        };
        drop(w);
        let answer = match ack.record() {
            Some(r) => Answer {
                success: r.response.status_code == 0,
                cold: r.annotation("initTime").is_some(),
            },
            // A completion carries no record, only whether the activation was a system error
            // (an application or developer error is not told apart from a success here).
            None => Answer {
                success: !matches!(
                    ack,
                    Ack::Completion {
                        is_system_error: true,
                        ..
                    } | Ack::Combined {
                        is_system_error: true,
                        ..
                    }
                ),
                cold: false,
            },
        };
        let _ = tx.send(answer);
    }
}

//! `bench`: benchmarks against the local stack (`scripts/stack.sh up`).
//!
//! Subcommands:
//! - `kafka-rtt [N]`: N sequential round trips produce → group consumer on a fresh topic, with
//!   the invoker's own client settings; prints p50/p99/max. This is the floor under every
//!   invoker↔controller hop measured by the later benchmarks.
//! - `netns [--runs R] [--out FILE]`: the PCPM paper's Table 1 on this machine (see
//!   [`bench::netns`]); writes JSON (default `bench/results/netns.json`).
//! - `activate [--invoker N] [--controller C] [--count K]`: plays the controller against a
//!   running invoker (see [`bench::activate`]).
//! - `coldstart [--rounds R] [--sizes 1,10,25,50,75,100] [--modes bridge,pcpm,netns-runc,netns-crun,netns-crun-pre,vm,unikernel] [--timeline N]
//!   [--out FILE]`: the paper's Fig 6 through Kafka, one invoker per network mode (see
//!   [`bench::coldstart`]); writes JSON (default `bench/results/coldstart.json`).
//! - `memory [--n 50] [--out FILE]`: the paper's Table 2 (see [`bench::memory_table`]); writes
//!   JSON (default `bench/results/memory.json`).
//! - `warm [--modes bridge,netns] [--concurrency 1,4,16,32] [--seconds 15] [--out FILE]`: the
//!   warm path through Kafka (see [`bench::warm`]); writes JSON (default
//!   `bench/results/warm.json`).
//! - `soak [--modes bridge,pcpm,netns,vm] [--activations 10000] [--cold-every 20]
//!   [--concurrency 4] [--out FILE]`: cold and warm activations across the modes while kernel
//!   objects, containers and the invoker process are counted (see [`bench::soak`]); writes JSON
//!   (default `bench/results/soak.json`).
//! - `docker-start [--rounds R] [--sizes 1,10,50,100] [--out FILE]`: N concurrent Docker cold
//!   starts, bridge networking against pcpm pause containers, and the memory of 50 idle pause
//!   containers (see [`bench::docker_start`]); writes JSON (default
//!   `bench/results/docker-start.json`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Benchmarks against the local stack (`scripts/stack.sh up`); results as JSON.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// N sequential produce -> consume round trips on a fresh topic (the floor under every hop).
    KafkaRtt {
        /// Round trips.
        #[arg(default_value_t = 500)]
        n: usize,
    },
    /// The PCPM paper's Table 1: namespace + veth set-up and clean-up, `ip` against netpool.
    Netns {
        /// Runs per cell (default 20).
        #[arg(long)]
        runs: Option<usize>,
        /// Where the JSON report goes.
        #[arg(long, default_value = "bench/results/netns.json")]
        out: PathBuf,
    },
    /// Plays the controller against a running invoker: activations through Kafka, acks and
    /// records checked.
    Activate {
        /// The invoker's instance number (`invoker<N>`, default 0).
        #[arg(long)]
        invoker: Option<u32>,
        /// The controller instance whose `completed<C>` is read (default 0).
        #[arg(long)]
        controller: Option<String>,
        /// Activations to send (default 10).
        #[arg(long)]
        count: Option<usize>,
    },
    /// The paper's Fig 6 through Kafka: N concurrent cold starts, one invoker per network mode.
    Coldstart {
        /// Rounds per cell (default 3).
        #[arg(long)]
        rounds: Option<usize>,
        /// Concurrency levels, comma-separated (default 1,10,25,50,75,100).
        #[arg(long, value_delimiter = ',')]
        sizes: Option<Vec<usize>>,
        /// Columns, comma-separated (default bridge,pcpm,netns-runc,netns-crun,netns-crun-pre,
        /// vm,unikernel): the network modes, `netns-<runtime>` for netns mode with that OCI
        /// runtime, `netns-<runtime>-pre` with pre-created sandboxes too, and `unikernel` for
        /// `wasm:0.1` in vm mode.
        #[arg(long, value_delimiter = ',')]
        modes: Option<Vec<String>>,
        /// The N whose timelines are kept (default 50).
        #[arg(long)]
        timeline: Option<usize>,
        /// Where the JSON report goes.
        #[arg(long, default_value = "bench/results/coldstart.json")]
        out: PathBuf,
    },
    /// The warm path through Kafka: closed-loop clients against warm containers of a no-op
    /// action, blocking and non-blocking.
    Warm {
        /// Network modes, comma-separated (default bridge,netns).
        #[arg(long, value_delimiter = ',')]
        modes: Option<Vec<String>>,
        /// Closed-loop clients per cell, comma-separated (default 1,4,16,32).
        #[arg(long, value_delimiter = ',')]
        concurrency: Option<Vec<usize>>,
        /// Measured seconds per cell (default 15).
        #[arg(long)]
        seconds: Option<u64>,
        /// Where the JSON report goes.
        #[arg(long, default_value = "bench/results/warm.json")]
        out: PathBuf,
    },
    /// Many activations, cold and warm, per network mode, while kernel objects, containers and
    /// the invoker's fds, threads and RSS are counted.
    Soak {
        /// Network modes, comma-separated, run one after the other (default bridge,pcpm,netns,vm).
        #[arg(long, value_delimiter = ',')]
        modes: Option<Vec<String>>,
        /// Activations over all modes (default 10000).
        #[arg(long)]
        activations: Option<usize>,
        /// One activation in this many is a cold start (default 20).
        #[arg(long)]
        cold_every: Option<usize>,
        /// Closed-loop clients (default 4).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Where the JSON report goes.
        #[arg(long, default_value = "bench/results/soak.json")]
        out: PathBuf,
    },
    /// The paper's Table 2: memory of cold, warm, prewarm, pcpm and netns functions.
    Memory {
        /// Functions per row.
        #[arg(long, default_value_t = 50)]
        n: usize,
        /// Where the JSON report goes.
        #[arg(long, default_value = "bench/results/memory.json")]
        out: PathBuf,
    },
    /// N concurrent Docker cold starts, bridge against pcpm pause containers, and the memory of
    /// idle pause containers.
    DockerStart {
        /// Rounds per cell (default 3).
        #[arg(long)]
        rounds: Option<usize>,
        /// Concurrency levels, comma-separated (default 1,10,50,100).
        #[arg(long, value_delimiter = ',')]
        sizes: Option<Vec<usize>>,
        /// Where the JSON report goes.
        #[arg(long, default_value = "bench/results/docker-start.json")]
        out: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = Cli::parse().command;
    // Stopped by a signal, the benchmark's future is dropped, which stops the invokers it
    // started (they drain and remove their containers and pools) before the process exits.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bench: cannot listen for SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = tokio::select! {
        r = run(command) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; the invokers it started were stopped")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated; the invokers it started were stopped")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::KafkaRtt { n } => bench::kafka_rtt::run(n).await,
        Command::Netns { runs, out } => {
            let mut params = bench::netns::NetnsParams::default();
            if let Some(r) = runs {
                params.runs = r;
            }
            write_report(&out, &bench::netns::run(&params).await?)
        }
        Command::Activate {
            invoker,
            controller,
            count,
        } => {
            let mut params = bench::activate::ActivateParams::default();
            if let Some(i) = invoker {
                params.invoker = i;
            }
            if let Some(c) = controller {
                params.controller = c;
            }
            if let Some(c) = count {
                params.count = c;
            }
            bench::activate::run(&params).await
        }
        Command::Coldstart {
            rounds,
            sizes,
            modes,
            timeline,
            out,
        } => {
            let mut params = bench::coldstart::ColdstartParams::default();
            if let Some(r) = rounds {
                params.rounds = r;
            }
            if let Some(s) = sizes {
                params.sizes = s;
            }
            if let Some(m) = modes {
                params.modes = m;
            }
            if let Some(t) = timeline {
                params.timeline_n = t;
            }
            write_report(&out, &bench::coldstart::run(&params).await?)
        }
        Command::Warm {
            modes,
            concurrency,
            seconds,
            out,
        } => {
            let mut params = bench::warm::WarmParams::default();
            if let Some(m) = modes {
                params.modes = m;
            }
            if let Some(c) = concurrency {
                params.concurrency = c;
            }
            if let Some(s) = seconds {
                params.seconds = s;
            }
            write_report(&out, &bench::warm::run(&params).await?)
        }
        Command::Soak {
            modes,
            activations,
            cold_every,
            concurrency,
            out,
        } => {
            let mut params = bench::soak::SoakParams::default();
            if let Some(m) = modes {
                params.modes = m;
            }
            if let Some(a) = activations {
                params.activations = a;
            }
            if let Some(c) = cold_every {
                params.cold_every = c;
            }
            if let Some(c) = concurrency {
                params.concurrency = c;
            }
            write_report(&out, &bench::soak::run(&params).await?)
        }
        Command::Memory { n, out } => write_report(&out, &bench::memory_table::run(n).await?),
        Command::DockerStart { rounds, sizes, out } => {
            let mut params = bench::docker_start::DockerStartParams::default();
            if let Some(r) = rounds {
                params.rounds = r;
            }
            if let Some(s) = sizes {
                params.sizes = s;
            }
            write_report(&out, &bench::docker_start::run(&params).await?)
        }
    }
}

fn write_report(out: &std::path::Path, report: &impl serde::Serialize) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(report)?)?;
    println!("wrote {}", out.display());
    Ok(())
}

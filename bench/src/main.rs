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
//! - `coldstart [--rounds R] [--sizes 1,10,25,50,75,100] [--modes bridge,pcpm,netns] [--timeline N]
//!   [--out FILE]`: the paper's Fig 6 through Kafka, one invoker per network mode (see
//!   [`bench::coldstart`]); writes JSON (default `bench/results/coldstart.json`).
//! - `memory [--n 50] [--out FILE]`: the paper's Table 2 (see [`bench::memory_table`]); writes
//!   JSON (default `bench/results/memory.json`).
//! - `docker-start [--rounds R] [--sizes 1,10,50,100] [--out FILE]`: N concurrent Docker cold
//!   starts, bridge networking against pcpm pause containers, and the memory of 50 idle pause
//!   containers (see [`bench::docker_start`]); writes JSON (default
//!   `bench/results/docker-start.json`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bench::stats::Summary;
use invoker::kafka::{self, TopicKind};
use invoker::stack::Stack;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("kafka-rtt") => {
            let n = match args.next() {
                Some(v) => v
                    .parse()
                    .with_context(|| format!("N must be a number, not {v:?}"))?,
                None => 500,
            };
            kafka_rtt(n).await
        }
        Some("netns") => {
            let mut params = bench::netns::NetnsParams::default();
            let mut out = std::path::PathBuf::from("bench/results/netns.json");
            for (flag, value) in flag_pairs(&mut args)? {
                match flag.as_str() {
                    "--runs" => params.runs = value.parse().context("--runs")?,
                    "--out" => out = value.into(),
                    other => bail!("unknown flag {other}"),
                }
            }
            let report = bench::netns::run(&params).await?;
            write_report(&out, &report)
        }
        Some("activate") => {
            let mut params = bench::activate::ActivateParams::default();
            for (flag, value) in flag_pairs(&mut args)? {
                match flag.as_str() {
                    "--invoker" => params.invoker = value.parse().context("--invoker")?,
                    "--controller" => params.controller = value,
                    "--count" => params.count = value.parse().context("--count")?,
                    other => bail!("unknown flag {other}"),
                }
            }
            bench::activate::run(&params).await
        }
        Some("memory") => {
            let mut n = 50;
            let mut out = std::path::PathBuf::from("bench/results/memory.json");
            for (flag, value) in flag_pairs(&mut args)? {
                match flag.as_str() {
                    "--n" => n = value.parse().context("--n")?,
                    "--out" => out = value.into(),
                    other => bail!("unknown flag {other}"),
                }
            }
            let report = bench::memory_table::run(n).await?;
            write_report(&out, &report)
        }
        Some("coldstart") => {
            let mut params = bench::coldstart::ColdstartParams::default();
            let mut out = std::path::PathBuf::from("bench/results/coldstart.json");
            for (flag, value) in flag_pairs(&mut args)? {
                match flag.as_str() {
                    "--rounds" => params.rounds = value.parse().context("--rounds")?,
                    "--sizes" => params.sizes = sizes(&value)?,
                    "--modes" => params.modes = value.split(',').map(str::to_owned).collect(),
                    "--timeline" => params.timeline_n = value.parse().context("--timeline")?,
                    "--out" => out = value.into(),
                    other => bail!("unknown flag {other}"),
                }
            }
            let report = bench::coldstart::run(&params).await?;
            write_report(&out, &report)
        }
        Some("docker-start") => {
            let mut params = bench::docker_start::DockerStartParams::default();
            let mut out = std::path::PathBuf::from("bench/results/docker-start.json");
            for (flag, value) in flag_pairs(&mut args)? {
                match flag.as_str() {
                    "--rounds" => params.rounds = value.parse().context("--rounds")?,
                    "--sizes" => params.sizes = sizes(&value)?,
                    "--out" => out = value.into(),
                    other => bail!("unknown flag {other}"),
                }
            }
            let report = bench::docker_start::run(&params).await?;
            write_report(&out, &report)
        }
        _ => bail!(
            "usage: bench kafka-rtt [N] | bench activate [--invoker N] [--controller C] [--count K] | \
             bench coldstart [--rounds R] [--sizes ..] [--modes bridge,pcpm,netns] [--out FILE] | \
             bench memory [--n 50] [--out FILE] | bench netns [--runs R] [--out FILE] | \
             bench docker-start [--rounds R] [--sizes 1,10,50,100] [--out FILE]"
        ),
    }
}

/// `--flag value` pairs, every flag needing a value.
fn flag_pairs(args: &mut impl Iterator<Item = String>) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        out.push((flag, value));
    }
    Ok(out)
}

/// `1,10,50`.
fn sizes(value: &str) -> Result<Vec<usize>> {
    value
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("--sizes takes numbers separated by commas")
}

fn write_report(out: &std::path::Path, report: &impl serde::Serialize) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(report)?)?;
    println!("wrote {}", out.display());
    Ok(())
}

async fn kafka_rtt(n: usize) -> Result<()> {
    let stack = Stack::from_env();
    let topic = format!("bench-rtt-{}", std::process::id());
    let admin = kafka::admin_client(&stack.kafka_hosts)?;
    kafka::ensure_topic(&admin, &topic, &TopicKind::Invoker.default_config()).await?;

    let producer: FutureProducer = kafka::producer_config(&stack.kafka_hosts).create()?;
    let consumer: StreamConsumer = kafka::consumer_config(&stack.kafka_hosts, &topic).create()?;
    consumer.subscribe(&[&topic])?;

    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let payload = format!("{{\"i\":{i}}}");
        let start = Instant::now();
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("no message within 30 s")??;
        samples.push(start.elapsed());
        anyhow::ensure!(
            msg.payload() == Some(payload.as_bytes()),
            "round trip {i} got another message"
        );
    }
    let s = Summary::of(&samples).context("no samples")?;
    println!(
        "kafka-rtt n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        s.count,
        s.p50_s * 1e3,
        s.p99_s * 1e3,
        s.max_s * 1e3
    );
    // Close the clients before deleting the topic: librdkafka 2.12 crashes in its metadata cache
    // when a subscribed topic disappears under a live consumer.
    consumer.unsubscribe();
    drop(consumer);
    drop(producer);
    admin
        .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
        .await?;
    Ok(())
}

//! The `invoker` binary.
//!
//! Today it performs the start-up steps of contract §1.6 that exist (read the command line and
//! the environment, ensure the `invoker<N>` topic, reach CouchDB and the Docker engine) and, with
//! `--check-only`, exits once they pass. Activation processing comes with the invoker issue.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use invoker::couchdb::CouchDb;
use invoker::kafka::{self, TopicKind};
use invoker::stack::Stack;

#[derive(Debug, Default)]
struct Args {
    id: Option<u32>,
    unique_name: Option<String>,
    displayed_name: Option<String>,
    check_only: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args> {
    let mut args = Args::default();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--id" => {
                let v = value("--id")?;
                args.id = Some(
                    v.parse()
                        .with_context(|| format!("--id must be a number, not {v:?}"))?,
                );
            }
            "--uniqueName" => args.unique_name = Some(value("--uniqueName")?),
            "--displayedName" => args.displayed_name = Some(value("--displayedName")?),
            "--check-only" => args.check_only = true,
            other => bail!(
                "unknown argument {other:?} (expected --id, --uniqueName, --displayedName, --check-only)"
            ),
        }
    }
    if args.id.is_none() && args.unique_name.is_none() {
        bail!("either --id or --uniqueName is required");
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("invoker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let Some(id) = args.id else {
        bail!(
            "--uniqueName without --id needs ZooKeeper id assignment, which is not supported yet"
        );
    };
    let stack = Stack::from_env();
    let name = args
        .displayed_name
        .as_deref()
        .or(args.unique_name.as_deref())
        .unwrap_or("");
    tracing::info!(id, name, kafka = %stack.kafka_hosts, "invoker starting");

    let admin = kafka::admin_client(&stack.kafka_hosts)?;
    let topic = format!("invoker{id}");
    let ensured = kafka::ensure_topic(&admin, &topic, &TopicKind::Invoker.default_config())
        .await
        .with_context(|| format!("kafka at {}", stack.kafka_hosts))?;
    tracing::info!(topic, ?ensured, "kafka topic ready");

    let couch = CouchDb::new(&stack.couchdb)?;
    let info = couch
        .server_info()
        .await
        .with_context(|| format!("couchdb at {}", stack.couchdb.url))?;
    tracing::info!(url = %stack.couchdb.url, %info, "couchdb answers");

    let docker = invoker::docker::connect().await?;
    let version = docker.version().await.context("docker version")?;
    tracing::info!(
        version = version.version.as_deref().unwrap_or("?"),
        api = version.api_version.as_deref().unwrap_or("?"),
        "docker engine answers"
    );

    if args.check_only {
        println!("invoker{id}: start-up checks passed (kafka topic {topic}, couchdb, docker)");
        return Ok(());
    }
    bail!("activation processing is not part of this build yet; run with --check-only")
}

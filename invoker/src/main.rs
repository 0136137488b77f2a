//! The `invoker` binary: parses the command line OpenWhisk's `/init.sh` passes, reads the
//! settings, and runs [`invoker::service`] until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use invoker::service::{self, ServiceConfig};
use openwhisk::settings::Settings;
use tokio_util::sync::CancellationToken;

/// A drop-in replacement for the Apache OpenWhisk invoker.
///
/// Consumes `invoker<N>` on Kafka, runs each action in a container, answers on `completed<C>`
/// and `health`. Settings come from OpenWhisk's environment (`KAFKA_HOSTS`, `PORT`,
/// `RUNTIMES_MANIFEST`, `CONFIG_whisk_*`) and an optional file; see the README.
#[derive(Debug, Parser)]
#[command(version)]
// The flags are OpenWhisk's own spelling (`/init.sh --uniqueName ...`).
#[allow(clippy::struct_field_names)]
struct Cli {
    /// The invoker's instance number: it consumes `invoker<ID>`.
    #[arg(long)]
    id: Option<u32>,
    /// A name unique among the invokers (defaults to the id).
    #[arg(long = "uniqueName", value_name = "NAME")]
    unique_name: Option<String>,
    /// The name shown in the controller's invoker list.
    #[arg(long = "displayedName", value_name = "NAME")]
    displayed_name: Option<String>,
    /// A settings file (`whisk.x.y = value` lines, or HOCON-style nesting).
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Run the start-up checks (Kafka topic, CouchDB, Docker, the network pools), undo them and
    /// exit.
    #[arg(long)]
    check_only: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    openwhisk::logging::init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("invoker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(id) = cli.id else {
        anyhow::bail!(
            "--uniqueName without --id needs ZooKeeper id assignment, which is not supported; pass --id"
        );
    };
    let settings = Settings::from_env(cli.config.as_deref())?;
    let mut config = ServiceConfig {
        settings,
        id,
        unique_name: cli.unique_name,
        displayed_name: cli.displayed_name,
        metrics: None,
    };
    if cli.check_only {
        let topic = service::check(config).await?;
        println!("{topic}: start-up checks passed (kafka topic, couchdb, docker)");
        return Ok(());
    }
    config.metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(service::run(config, shutdown.clone()));
    tokio::pin!(service);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        // Ended on its own: a start-up error, or a task that stopped.
        ended = &mut service => return Ok(ended??),
    }
    shutdown.cancel();
    Ok(service.await??)
}

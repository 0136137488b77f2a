//! The `standalone` binary: the front door (see the crate docs) until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use openwhisk::settings::Settings;
use standalone::service::{self, ServiceConfig};
use tokio_util::sync::CancellationToken;

/// A small OpenWhisk front door for one machine.
///
/// Serves the REST API subset `wsk` and the `openwhisk` npm client use and plays the
/// controller's part on Kafka. Reads the invoker's settings (`KAFKA_HOSTS`, `RUNTIMES_MANIFEST`,
/// `CONFIG_whisk_*`) for the broker, CouchDB, the database names, the runtimes and the action
/// limits. Production deployments use OpenWhisk's controller instead.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The HTTP port of the REST API.
    #[arg(long, default_value_t = 3233)]
    port: u16,
    /// The controller instance this front door plays (it reads `completed<ID>`).
    #[arg(long, value_name = "ID", default_value = "0")]
    controller: String,
    /// A settings file, as the invoker reads it.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    openwhisk::logging::init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("standalone: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::from_env(cli.config.as_deref())?;
    let config = ServiceConfig {
        settings,
        port: cli.port,
        controller_id: cli.controller,
        metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .ok(),
    };
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(service::run(config, shutdown.clone()));
    tokio::pin!(service);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        ended = &mut service => return Ok(ended??),
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    Ok(service.await??)
}

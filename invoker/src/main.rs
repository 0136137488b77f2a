//! The `invoker` binary: parses the command line OpenWhisk's `/init.sh` passes, reads the
//! settings, and runs [`invoker::service`] until SIGTERM or SIGINT.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use invoker::service::{self, ServiceConfig};
use invoker::zookeeper;
use openwhisk::settings::Settings;
use tokio_util::sync::CancellationToken;

/// A drop-in replacement for the Apache OpenWhisk invoker.
///
/// Consumes `invoker<N>` on Kafka, runs each action in a container, answers on `completed<C>`
/// and `health`. Settings come from OpenWhisk's environment (`KAFKA_HOSTS`, `PORT`,
/// `RUNTIMES_MANIFEST`, `ZOOKEEPER_HOSTS`, `CONFIG_whisk_*`) and an optional file; see the
/// README.
#[derive(Debug, Parser)]
#[command(version)]
// The flags are OpenWhisk's own spelling (`/init.sh --uniqueName ...`).
#[allow(clippy::struct_field_names)]
struct Cli {
    /// The invoker's instance number: it consumes `invoker<ID>`. Without it, the id of
    /// `--uniqueName` comes from ZooKeeper (`ZOOKEEPER_HOSTS`).
    #[arg(long, required_unless_present = "unique_name")]
    id: Option<u32>,
    /// A name unique among the invokers (defaults to the id).
    #[arg(long = "uniqueName", value_name = "NAME")]
    unique_name: Option<String>,
    /// The name shown in the controller's invoker list.
    #[arg(long = "displayedName", value_name = "NAME")]
    displayed_name: Option<String>,
    /// Forces the ZooKeeper mapping of `--uniqueName` to this id (with ZooKeeper id
    /// assignment only; ignored with `--id`).
    #[arg(long = "overwriteId", value_name = "ID")]
    overwrite_id: Option<u32>,
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
    let settings = Settings::from_env(cli.config.as_deref())?;
    // The environment is checked before an id is taken from ZooKeeper (contract §1.6): the
    // runtimes manifest, and a keystore that cannot be used.
    let (manifest, https) = (
        settings.runtimes_manifest.clone(),
        settings.invoker_https.clone(),
    );
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        openwhisk::manifest::Manifest::load(&manifest)?;
        if let Some(https) = https {
            invoker::tls::server_config(&https).context("whisk.invoker.protocol = https")?;
        }
        Ok(())
    })
    .await??;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let id = match (cli.id, cli.unique_name.as_deref()) {
        (Some(id), _) => {
            if cli.overwrite_id.is_some() {
                tracing::warn!("--overwriteId is for ZooKeeper id assignment; --id is used");
            }
            id
        }
        (None, Some(name)) => {
            let hosts = settings.zookeeper_hosts.as_deref().context(
                "--uniqueName without --id takes the id from ZooKeeper: set ZOOKEEPER_HOSTS",
            )?;
            // The assignment waits for ZooKeeper without limit; a stop request ends the wait.
            tokio::select! {
                id = zookeeper::assign_id(hosts, name, cli.overwrite_id) => {
                    id.context("zookeeper id assignment")?
                }
                _ = term.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
        // clap requires one of the two.
        (None, None) => anyhow::bail!("either --id or --uniqueName is required"),
    };
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
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        // Ended on its own: a start-up error, or a task that stopped.
        ended = &mut service => return Ok(ended??),
    }
    shutdown.cancel();
    Ok(service.await??)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn what_the_deployments_pass_is_accepted() {
        // ansible: `--id N --uniqueName N`; compose: `--id 0`; helm: `--uniqueName $NAME`.
        let c = Cli::try_parse_from(["invoker", "--id", "3", "--uniqueName", "3"]).unwrap();
        assert_eq!((c.id, c.unique_name.as_deref()), (Some(3), Some("3")));
        let c = Cli::try_parse_from(["invoker", "--id", "0"]).unwrap();
        assert_eq!(c.id, Some(0));
        let c = Cli::try_parse_from(["invoker", "--uniqueName", "node-a", "--displayedName", "a"])
            .unwrap();
        assert_eq!((c.id, c.displayed_name.as_deref()), (None, Some("a")));
        let c =
            Cli::try_parse_from(["invoker", "--uniqueName", "x", "--overwriteId", "7"]).unwrap();
        assert_eq!(c.overwrite_id, Some(7));
    }

    #[test]
    fn neither_id_nor_name_is_a_usage_error() {
        let e = Cli::try_parse_from(["invoker"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(Cli::try_parse_from(["invoker", "--id", "x"]).is_err());
    }
}

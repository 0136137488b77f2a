//! `standalone [--port 3233] [--controller 0] [--config FILE]`: the front door (see the crate
//! docs). Reads the invoker's settings (`KAFKA_HOSTS`, `RUNTIMES_MANIFEST`, `CONFIG_whisk_*`) for
//! the broker, CouchDB, the database names, the runtimes and the action limits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use standalone::actions::{Actions, LimitBounds};
use standalone::activations::Activations;
use standalone::api::{self, App};
use standalone::controller::Controller;
use standalone::subjects::Subjects;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: standalone [--port N (3233)] [--controller ID (0)] [--config FILE]";

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut port: u16 = 3233;
    let mut controller_id = "0".to_owned();
    let mut config_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--port" => port = value()?.parse().context("--port")?,
            "--controller" => controller_id = value()?,
            "--config" => config_file = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let settings = invoker::settings::Settings::from_env(config_file.as_deref())
        .context("reading the settings")?;
    let manifest_json = match std::fs::read_to_string(&settings.runtimes_manifest) {
        Ok(text) => text,
        Err(_) => settings.runtimes_manifest.clone(),
    };
    let manifest =
        invoker::manifest::Manifest::parse(&manifest_json).context("RUNTIMES_MANIFEST")?;
    // The port first: a taken port is reported before anything else is set up.
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("cannot listen on port {port}"))?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();

    let db = invoker::couchdb::CouchDb::new(&settings.couchdb)?;
    db.server_info()
        .await
        .with_context(|| format!("couchdb at {}", settings.couchdb.url))?;
    let subjects = Subjects::open(db.clone(), &settings.db_subjects).await?;
    let actions = Actions::new(
        db.clone(),
        &settings.db_whisks,
        manifest,
        LimitBounds::from_settings(&settings),
    );
    actions.ensure_db().await?;
    let activations = Activations::new(db, &settings.db_activations);
    activations.ensure_db().await?;

    let cancel = CancellationToken::new();
    let controller = Controller::start(
        &settings.kafka_hosts,
        &settings.topics_prefix,
        &controller_id,
        cancel.clone(),
    )
    .await
    .context("kafka")?;
    let app = Arc::new(App {
        subjects,
        actions,
        activations,
        controller,
        max_blocking_wait: Duration::from_secs(60),
        // Action code up to the store's limit, in base64, plus the document around it.
        max_body_bytes: standalone::actions::MAX_CODE_BYTES / 3 * 4 + (1 << 20),
        max_payload_bytes: usize::try_from(settings.payload_max).unwrap_or(usize::MAX),
        metrics,
    });
    tracing::info!(port, controller = %controller_id, kafka = %settings.kafka_hosts, "front door ready");
    let server = tokio::spawn(api::serve(listener, app, cancel.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
    cancel.cancel();
    let _ = server.await;
    Ok(())
}

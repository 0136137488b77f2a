//! The front door as a service: opens the databases and the Kafka side, serves the REST API
//! until `shutdown` is cancelled.

use std::sync::Arc;
use std::time::Duration;

use openwhisk::couchdb::{CouchDb, CouchDbError};
use openwhisk::manifest::{Manifest, ManifestError};
use openwhisk::settings::Settings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::actions::{Actions, LimitBounds, MAX_CODE_BYTES};
use crate::activations::Activations;
use crate::api::{self, App};
use crate::controller::{Controller, ControllerError};
use crate::entities::Whisks;
use crate::packages::Packages;
use crate::subjects::{Subjects, SubjectsError};
use crate::triggers::Triggers;

/// What the front door runs with.
#[derive(Debug)]
pub struct ServiceConfig {
    /// The invoker's settings: broker, CouchDB, database names, runtimes, action limits.
    pub settings: Settings,
    /// The HTTP port (3233 by default, as OpenWhisk's standalone mode).
    pub port: u16,
    /// The controller instance it plays (`completed<C>`).
    pub controller_id: String,
    /// Serves `/metrics` when set (the recorder is process-global: the binary installs it).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// Why the front door could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on port {port}")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("RUNTIMES_MANIFEST")]
    Manifest(#[from] ManifestError),
    #[error("couchdb at {url}")]
    CouchDb {
        url: String,
        #[source]
        source: CouchDbError,
    },
    #[error("the subjects database")]
    Subjects(#[from] SubjectsError),
    #[error("kafka")]
    Controller(#[from] ControllerError),
}

/// Serves until `shutdown` is cancelled; connections in progress finish on their own.
pub async fn run(config: ServiceConfig, shutdown: CancellationToken) -> Result<(), ServiceError> {
    let ServiceConfig {
        settings,
        port,
        controller_id,
        metrics,
    } = config;
    let manifest = Manifest::load(&settings.runtimes_manifest)?;
    // The port first: a taken port is reported before anything else is set up.
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| ServiceError::Listen { port, source })?;

    let couch_error = |source| ServiceError::CouchDb {
        url: settings.couchdb.url.clone(),
        source,
    };
    let db = CouchDb::new(&settings.couchdb).map_err(couch_error)?;
    db.server_info().await.map_err(couch_error)?;
    let subjects = Subjects::open(db.clone(), &settings.db_subjects).await?;
    let actions = Actions::new(
        db.clone(),
        &settings.db_whisks,
        manifest,
        LimitBounds::from_settings(&settings),
    );
    actions.ensure_db().await.map_err(couch_error)?;
    let whisks = Whisks {
        db: db.clone(),
        name: settings.db_whisks.clone(),
    };
    let packages = Packages::new(whisks.clone());
    let triggers = Triggers::new(whisks);
    let activations = Activations::new(db, &settings.db_activations);
    activations.ensure_db().await.map_err(couch_error)?;

    let cancel = shutdown.child_token();
    let controller = Controller::start(
        &settings.kafka_hosts,
        &settings.topics_prefix,
        &controller_id,
        cancel.clone(),
    )
    .await?;
    let app = Arc::new(App {
        subjects,
        actions,
        packages,
        triggers,
        activations,
        controller,
        max_blocking_wait: Duration::from_secs(60),
        // Action code up to the store's limit, in base64, plus the document around it.
        max_body_bytes: MAX_CODE_BYTES / 3 * 4 + (1 << 20),
        max_payload_bytes: usize::try_from(settings.payload_max).unwrap_or(usize::MAX),
        metrics,
    });
    tracing::info!(port, controller = %controller_id, kafka = %settings.kafka_hosts, "front door ready");
    api::serve(listener, app, cancel).await;
    tracing::info!("front door stopped");
    Ok(())
}

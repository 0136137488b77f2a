//! The `invoker` binary: contract §1.6 start-up, then activations until SIGTERM or SIGINT,
//! then a graceful shutdown (drain in-flight activations, remove our containers).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use invoker::action::ActionStore;
use invoker::container::ContainerFactory;
use invoker::container::docker::{DockerFactory, Networking};
use invoker::container::proxy::ProxyClient;
use invoker::container::runc::RuncFactory;
use invoker::couchdb::CouchDb;
use invoker::invoke::Invoker;
use invoker::kafka::{self, TopicKind};
use invoker::manifest::Manifest;
use invoker::messages::InvokerInstanceId;
use invoker::pool::{ContainerPool, PoolConfig};
use invoker::settings::{NetworkMode, Settings};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
struct Args {
    id: Option<u32>,
    unique_name: Option<String>,
    displayed_name: Option<String>,
    config: Option<String>,
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
            "--config" => args.config = Some(value("--config")?),
            "--check-only" => args.check_only = true,
            other => bail!(
                "unknown argument {other:?} (expected --id, --uniqueName, --displayedName, --config, --check-only)"
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
        .with_writer(std::io::stderr)
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
    let settings = Settings::from_env(args.config.as_deref())?;
    // Bound before any container or pause container exists: a taken port stops start-up with
    // nothing to undo.
    let port = settings.port;
    let listener = if args.check_only {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(("0.0.0.0", port))
                .await
                .with_context(|| format!("cannot listen on port {port} (PORT)"))?,
        )
    };
    let manifest_text = if settings.runtimes_manifest.trim_start().starts_with('{') {
        settings.runtimes_manifest.clone()
    } else {
        std::fs::read_to_string(&settings.runtimes_manifest)
            .with_context(|| format!("RUNTIMES_MANIFEST file {}", settings.runtimes_manifest))?
    };
    let manifest = Arc::new(Manifest::parse(&manifest_text)?);
    let Some(id) = args.id else {
        bail!(
            "--uniqueName without --id needs ZooKeeper id assignment, which is not supported; pass --id"
        );
    };
    let unique = args.unique_name.clone().unwrap_or_else(|| id.to_string());
    let instance = InvokerInstanceId::new(
        id,
        settings.user_memory_bytes,
        Some(unique.clone()),
        args.displayed_name.clone(),
    );
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    tracing::info!(id, unique, kafka = %settings.kafka_hosts, user_memory_mb = settings.user_memory_mb(), "invoker starting");

    let admin = kafka::admin_client(&settings.kafka_hosts)?;
    let topic = settings.topic(&format!("invoker{id}"));
    kafka::ensure_topic(&admin, &topic, &TopicKind::Invoker.default_config())
        .await
        .with_context(|| format!("kafka at {}", settings.kafka_hosts))?;

    let db = CouchDb::new(&settings.couchdb)?;
    db.server_info()
        .await
        .with_context(|| format!("couchdb at {}", settings.couchdb.url))?;

    let docker = invoker::docker::connect().await?;
    let version = docker.version().await.context("docker version")?;
    let name_prefix: String = format!("wsk{unique}{id}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .collect();
    let key = pcpm::NetworkKey {
        network: settings.network.clone(),
        dns: settings.dns_servers.clone(),
        dns_search: settings.dns_search.clone(),
        dns_options: settings.dns_options.clone(),
        exposed_ports: Vec::new(),
    };
    let pcpm = match settings.network_mode {
        NetworkMode::Bridge | NetworkMode::Netns => None,
        NetworkMode::Pcpm => {
            let np = settings.network_pool;
            let mut config = pcpm::PcpmConfig::new(&format!("{name_prefix}-pcpm"));
            config.low_watermark = np.low_watermark;
            config.high_watermark = np.high_watermark;
            config.max_per_pool = np.max;
            config.max_concurrent_creates = np.max_concurrent_creates;
            config.on_empty = if np.fallback {
                pcpm::OnEmpty::Fallback
            } else {
                pcpm::OnEmpty::Wait(Duration::from_millis(settings.time_ms.max))
            };
            config.keys = vec![key.clone()];
            let p = pcpm::Pcpm::new(docker.clone(), config)
                .await
                .context("starting the pcpm pool of pause containers")?;
            let r = p.reconciled();
            // Fill the pool before anything (stem cells first) asks for an endpoint.
            if let Err(e) = p
                .wait_idle(&key, np.high_watermark, Duration::from_secs(60))
                .await
            {
                tracing::warn!(error = %e, "the pcpm pool is not full yet; starting anyway");
            }
            tracing::info!(adopted = r.adopted, removed = r.removed, "pcpm pool ready");
            Some(p)
        }
    };
    let netpool = match settings.network_mode {
        NetworkMode::Netns => {
            let np = settings.network_pool;
            let (subnet, len) = settings.netns_subnet;
            // netpool names are 1 to 5 of [a-z0-9]: the invoker id keeps them apart.
            let mut config = netpool::PoolConfig::new(&format!("w{}", id % 10_000), subnet, len);
            config.low_watermark = np.low_watermark;
            config.high_watermark = np.high_watermark;
            config.max_slots = np.max;
            config.max_concurrent_creates = np.max_concurrent_creates;
            let pool = netpool::NetPool::new(config)
                .await
                .context("starting the netpool of network namespaces (needs root)")?;
            if let Err(e) = pool
                .wait_idle(np.high_watermark, Duration::from_secs(60))
                .await
            {
                tracing::warn!(error = %e, "the netpool is not full yet; starting anyway");
            }
            Some(pool)
        }
        _ => None,
    };
    let factory: Arc<dyn ContainerFactory> = match &netpool {
        Some(np) => {
            let runc = RuncFactory::new(
                docker.clone(),
                Arc::new(np.clone()),
                &settings.runc_dir.join("images"),
                &settings.runc_dir.join("bundles").join(&name_prefix),
                &std::path::Path::new("/run/wsk-runc").join(&name_prefix),
            );
            // Unpack the managed runtimes' images before the first cold start needs them.
            for image in manifest.images(&settings.runtimes_registry) {
                if let Err(e) = runc.prepare(&image).await {
                    tracing::warn!(image, error = %e, "cannot unpack a runtime image");
                }
            }
            Arc::new(runc)
        }
        None => {
            let networking = match &pcpm {
                Some(p) => Networking::Pcpm(p.clone(), key),
                None => Networking::Bridge(key),
            };
            Arc::new(DockerFactory::new(
                docker.clone(),
                networking,
                settings.parallel_runs,
            ))
        }
    };
    let leftovers = factory
        .remove_all(&format!("{name_prefix}_"))
        .await
        .context("removing leftover action containers")?;
    tracing::info!(
        docker = version.version.as_deref().unwrap_or("?"),
        leftovers,
        "docker engine ready"
    );
    if args.check_only {
        if let Some(p) = &pcpm {
            p.shutdown().await?;
        }
        if let Some(np) = netpool {
            np.shutdown().await?;
        }
        println!("{topic}: start-up checks passed (kafka topic, couchdb, docker)");
        return Ok(());
    }

    let mut env = vec![format!("__OW_API_HOST={}", settings.api_host)];
    env.extend(settings.extra_env.iter().cloned());
    let stem_cells = manifest
        .stem_cells
        .iter()
        .filter_map(|c| {
            manifest
                .resolve(&c.kind)
                .map(|k| (c.clone(), k.image.reference(&settings.runtimes_registry)))
        })
        .collect();
    let pool = ContainerPool::new(
        factory.clone(),
        PoolConfig {
            user_memory_mb: settings.user_memory_mb(),
            pause_grace: settings.pause_grace,
            idle_timeout: settings.idle_container,
            name_prefix: name_prefix.clone(),
            env,
            user_cpus: settings.user_cpus,
            stem_cells,
        },
    );
    let mut producer_config = kafka::producer_config(&settings.kafka_hosts);
    producer_config.set(
        "message.max.bytes",
        (settings.payload_max + 6068)
            .max(kafka::MAX_MESSAGE_BYTES)
            .to_string(),
    );
    let producer: FutureProducer = producer_config.create()?;
    let consumer: StreamConsumer =
        kafka::consumer_config(&settings.kafka_hosts, &topic).create()?;
    consumer.subscribe(&[&topic])?;
    let consumer = Arc::new(consumer);
    let max_peek = settings.max_peek();
    let actions = ActionStore::new(
        db.clone(),
        &settings.db_whisks,
        manifest.clone(),
        &settings.runtimes_registry,
    );
    let records = invoker::store::RecordStore::start(db.clone(), settings.db_activations.clone());
    let invoker = Arc::new(Invoker {
        settings,
        instance,
        actions,
        pool: pool.clone(),
        proxy: ProxyClient::new(),
        producer,
        db,
        records,
        enabled: AtomicBool::new(true),
    });
    let cancel = CancellationToken::new();

    let prewarm = tokio::spawn({
        let pool = pool.clone();
        async move { pool.prewarm().await }
    });
    let pinger = tokio::spawn({
        let (invoker, cancel) = (invoker.clone(), cancel.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = cancel.cancelled() => return,
                }
                if invoker.is_enabled() {
                    invoker.ping(true).await;
                }
            }
        }
    });
    let listener = listener.context("the listener exists unless --check-only")?;
    let server = tokio::spawn(invoker::server::serve(
        listener,
        invoker.clone(),
        metrics,
        cancel.clone(),
    ));
    let feed = tokio::spawn(invoker::feed::run(
        invoker.clone(),
        consumer,
        topic.clone(),
        max_peek,
        cancel.clone(),
    ));
    tracing::info!(topic, port, max_peek, "invoker ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: draining activations in flight");
    cancel.cancel();
    let _ = feed.await;
    let _ = pinger.await;
    let _ = server.await;
    prewarm.abort();
    let removed = pool.shutdown().await;
    tracing::info!(?removed, "containers removed");
    if let Some(p) = pcpm
        && let Err(e) = p.shutdown().await
    {
        tracing::warn!(error = %e, "removing the pause containers");
    }
    if let Some(np) = netpool
        && let Err(e) = np.shutdown().await
    {
        tracing::warn!(error = %e, "removing the network namespaces");
    }
    tracing::info!("bye");
    Ok(())
}

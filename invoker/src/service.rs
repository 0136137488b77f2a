//! The invoker as a service: contract §1.6 start-up, activations until `shutdown` is cancelled,
//! then a graceful shutdown (drain the activations in flight, remove our containers, pause
//! containers and namespaces).
//!
//! [`run`] owns everything it creates: a start-up step that fails undoes the steps before it,
//! and the shutdown keeps going past a failed step and reports each one in the log.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use openwhisk::couchdb::{CouchDb, CouchDbError};
use openwhisk::kafka::{self, KafkaSetupError, TopicKind};
use openwhisk::manifest::{Manifest, ManifestError};
use openwhisk::messages::InvokerInstanceId;
use openwhisk::settings::{NetworkMode, Settings};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::action::ActionStore;
use crate::container::docker::{DockerFactory, Networking};
use crate::container::proxy::ProxyClient;
use crate::container::router::{Router, VmBackendError};
use crate::container::runc::RuncFactory;
use crate::container::vm::{VmConfig, VmFactory};
use crate::container::{BackendError, ContainerFactory};
use crate::invoke::Invoker;
use crate::pool::{ContainerPool, PoolConfig};

/// Who this invoker is and how it is configured.
#[derive(Debug)]
pub struct ServiceConfig {
    pub settings: Settings,
    /// `--id`: the invoker's instance number (`invoker<N>`).
    pub id: u32,
    /// `--uniqueName` (defaults to the id).
    pub unique_name: Option<String>,
    /// `--displayedName`.
    pub displayed_name: Option<String>,
    /// Serves `/metrics` when set (the recorder is process-global: the binary installs it).
    pub metrics: Option<PrometheusHandle>,
}

/// Why the invoker could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on port {port} (PORT)")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("the runtimes manifest is invalid")]
    Manifest(#[from] ManifestError),
    #[error("kafka at {hosts}")]
    KafkaSetup {
        hosts: String,
        #[source]
        source: Box<KafkaSetupError>,
    },
    #[error("kafka client")]
    Kafka(#[from] KafkaError),
    #[error("couchdb at {url}")]
    CouchDb {
        url: String,
        #[source]
        source: CouchDbError,
    },
    #[error("docker engine")]
    DockerConnect(#[from] pcpm::docker::ConnectError),
    #[error("docker engine")]
    Docker(#[from] bollard::errors::Error),
    #[error("starting the pcpm pool of pause containers")]
    Pcpm(#[from] pcpm::PcpmError),
    #[error("starting the netpool of network namespaces (needs root)")]
    Netpool(#[from] netpool::PoolError),
    #[error("starting the netpool of VM slots (needs root)")]
    VmSlots(#[source] netpool::PoolError),
    #[error("starting the VM backend")]
    VmFactory(#[source] crate::container::vm::VmError),
    #[error("the OCI runtime of netns mode (whisk.invoker.runc.runtime) cannot run")]
    OciRuntime(#[source] crate::container::runc::CommandError),
    #[error("removing leftover action containers")]
    Leftovers(#[source] BackendError),
    /// A task ended on its own: returned (`failure` is `None`) or panicked.
    #[error("the {task} task stopped on its own")]
    TaskEnded {
        task: &'static str,
        #[source]
        failure: Option<tokio::task::JoinError>,
    },
}

/// Resolves when a pool's background work has ended.
type Ended = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The network pools a mode needs; shut down in reverse order of creation.
#[derive(Debug, Default)]
struct Pools {
    pcpm: Option<pcpm::Pcpm>,
    netpool: Option<netpool::NetPool>,
    /// The VM slots (a namespace with a TAP device each): vm mode's pool, or the VM backend
    /// beside a container mode's (for `wasm:0.1` and `sandbox: vm` actions).
    vm_slots: Option<netpool::NetPool>,
}

impl Pools {
    /// One future per pool that resolves when its background work (refill, recycling) has
    /// ended.
    fn maintenance(&self) -> Vec<(&'static str, Ended)> {
        let mut out = Vec::new();
        if let Some(p) = &self.pcpm {
            out.push(("pcpm refill", Box::pin(p.maintenance_ended()) as _));
        }
        if let Some(np) = &self.netpool {
            out.push(("netpool maintenance", Box::pin(np.maintenance_ended()) as _));
        }
        if let Some(np) = &self.vm_slots {
            out.push((
                "VM slot pool maintenance",
                Box::pin(np.maintenance_ended()) as _,
            ));
        }
        out
    }

    /// Removes every pause container and namespace; logs each failure and goes on.
    async fn shutdown(self) {
        if let Some(p) = self.pcpm
            && let Err(e) = p.shutdown().await
        {
            tracing::warn!(error = %openwhisk::errors::chain(&e), "removing the pause containers");
        }
        if let Some(np) = self.netpool
            && let Err(e) = np.shutdown().await
        {
            tracing::warn!(error = %openwhisk::errors::chain(&e), "removing the network namespaces");
        }
        if let Some(np) = self.vm_slots
            && let Err(e) = np.shutdown().await
        {
            tracing::warn!(error = %openwhisk::errors::chain(&e), "removing the VM slots");
        }
    }
}

/// What start-up made, before activations flow.
#[derive(Debug)]
struct Started {
    instance: InvokerInstanceId,
    topic: String,
    name_prefix: String,
    manifest: Arc<Manifest>,
    db: CouchDb,
    factory: Arc<dyn ContainerFactory>,
    pools: Pools,
}

/// Runs the start-up checks (Kafka topic, CouchDB, Docker, the pools of the network mode,
/// leftovers removed), then undoes them; returns the invoker's topic.
pub async fn check(config: ServiceConfig) -> Result<String, ServiceError> {
    let started = start(&config).await?;
    started.pools.shutdown().await;
    Ok(started.topic)
}

/// Runs the invoker until `shutdown` is cancelled, then drains and removes what it created.
pub async fn run(config: ServiceConfig, shutdown: CancellationToken) -> Result<(), ServiceError> {
    // Bound before any container or pause container exists: a taken port stops start-up with
    // nothing to undo.
    let port = config.settings.port;
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| ServiceError::Listen { port, source })?;
    let started = start(&config).await?;
    let Started {
        instance,
        topic,
        name_prefix,
        manifest,
        db,
        factory,
        pools,
    } = started;
    let ServiceConfig {
        settings, metrics, ..
    } = config;
    let has_vms = pools.vm_slots.is_some();
    let vm_dir = settings.vm.dir.clone();

    let wired = (|| {
        let mut producer_config = kafka::producer_config(&settings.kafka_hosts);
        producer_config.set(
            "message.max.bytes",
            (settings.payload_max + 6068)
                .max(kafka::MAX_MESSAGE_BYTES)
                .to_string(),
        );
        // The operator's client properties last: theirs win.
        kafka::apply_properties(&mut producer_config, &settings.kafka_common.0);
        kafka::apply_properties(&mut producer_config, &settings.kafka_producer.0);
        let producer: FutureProducer = producer_config.create()?;
        let mut consumer_config = kafka::consumer_config(&settings.kafka_hosts, &topic);
        kafka::apply_properties(&mut consumer_config, &settings.kafka_common.0);
        kafka::apply_properties(&mut consumer_config, &settings.kafka_consumer.0);
        let consumer: StreamConsumer = consumer_config.create()?;
        consumer.subscribe(&[&topic])?;
        Ok::<_, KafkaError>((producer, consumer))
    })();
    let (producer, consumer) = match wired {
        Ok(c) => c,
        Err(e) => {
            pools.shutdown().await;
            return Err(e.into());
        }
    };

    let pool = ContainerPool::new(
        factory.clone(),
        pool_config(&settings, &manifest, &name_prefix),
    );
    let max_peek = settings.max_peek();
    let actions = ActionStore::new(
        db.clone(),
        &settings.db_whisks,
        manifest.clone(),
        &settings.runtimes_registry,
    );
    let components = Arc::new(crate::invoke::Components::new());
    let records = crate::store::RecordStore::start(
        db.clone(),
        settings.db_activations.clone(),
        components.clone(),
    );
    let grace = settings.shutdown_grace;
    let invoker = Arc::new(Invoker {
        settings,
        instance,
        actions,
        pool: pool.clone(),
        proxy: ProxyClient::new(),
        acks: Arc::new(producer.clone()),
        producer,
        db,
        records,
        components,
        enabled: AtomicBool::new(true),
    });
    let cancel = shutdown.child_token();
    let feed_health = Arc::new(crate::feed::FeedHealth::default());

    let prewarm = tokio::spawn({
        let pool = pool.clone();
        async move { pool.prewarm().await }
    });
    let pinger = tokio::spawn(ping_every_second(
        invoker.clone(),
        feed_health.clone(),
        cancel.clone(),
    ));
    let server = tokio::spawn(crate::server::serve(
        listener,
        invoker.clone(),
        metrics,
        cancel.clone(),
    ));
    let feed = tokio::spawn(crate::feed::run(
        invoker.clone(),
        Arc::new(consumer),
        topic.clone(),
        max_peek,
        grace,
        feed_health,
        cancel.clone(),
    ));
    tracing::info!(topic, port, max_peek, "invoker ready");

    // Runs until asked to stop, or until a task ends on its own: then the invoker would look
    // healthy while doing nothing, so it stops with an error instead.
    let mut tasks = tokio::task::JoinSet::new();
    for (name, task) in [("feed", feed), ("pinger", pinger), ("server", server)] {
        tasks.spawn(async move { (name, task.await) });
    }
    // The pools' refill and recycling: without them every cold start would wait for slots that
    // never come. Watched apart from the tasks: they end only with their pools, after the
    // tasks are joined.
    let mut watchers = tokio::task::JoinSet::new();
    for (name, ended) in pools.maintenance() {
        watchers.spawn(async move {
            ended.await;
            (name, Ok(()))
        });
    }
    // The records writer and the container pool's janitor end only with the invoker's
    // handles and the pool's shutdown, so before that their end is a failure too.
    let inside = [
        ("records writer", invoker.records.take_writer()),
        ("container pool janitor", pool.take_janitor()),
    ];
    for (name, task) in inside {
        if let Some(task) = task {
            watchers.spawn(async move { (name, task.await) });
        }
    }
    let ended = tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        Some(first) = tasks.join_next() => first.ok(),
        Some(Ok(ended)) = watchers.join_next() => Some(ended),
    };
    watchers.abort_all();
    // A task that ended because shutdown began (they all stop on `cancel`) is no failure.
    let ended = ended.filter(|_| !cancel.is_cancelled());
    let failure = match ended {
        None => {
            tracing::info!(
                grace_ms = grace.as_millis(),
                "shutting down: draining activations in flight"
            );
            None
        }
        Some((task, result)) => {
            let failure = result.err();
            let why = failure
                .as_ref()
                .map_or("returned".to_owned(), |e| e.to_string());
            tracing::error!(task, why, "a task stopped on its own; shutting down");
            Some(ServiceError::TaskEnded { task, failure })
        }
    };
    cancel.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((task, Err(e))) = joined {
            tracing::error!(task, error = %e, "task failed");
        }
    }
    prewarm.abort();
    let removed = pool.shutdown().await;
    tracing::info!(?removed, "containers removed");
    if has_vms {
        // The pool has destroyed its VMs; this also removes the factory's runtime folder and
        // cgroup parent, which outlive the last VM.
        match factory.remove_all(&format!("{name_prefix}_")).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(leftovers = n, "VMs the pool did not remove"),
            Err(e) => {
                tracing::warn!(error = %openwhisk::errors::chain(&e), "removing the VMs' runtime folder");
            }
        }
        // The factory made the parent too; it stays while another invoker's VMs are in it (a
        // folder that is not empty is not removed).
        let _ = tokio::fs::remove_dir(&vm_dir).await;
    }
    pools.shutdown().await;
    tracing::info!("bye");
    failure.map_or(Ok(()), Err)
}

/// Announces the invoker on `health` every second while it is enabled, the components an
/// activation needs are up and the feed consumes: while the broker or the database is down,
/// activations cannot finish, and while the feed is stuck or gone none start, so the
/// controller should not send more (it marks an invoker without pings offline, and back
/// online at the next ping).
async fn ping_every_second(
    invoker: Arc<Invoker>,
    feed: Arc<crate::feed::FeedHealth>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut was_consuming = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let consuming = feed.consuming(crate::feed::STALL_BOUND);
        if consuming != was_consuming {
            if consuming {
                tracing::info!("the feed consumes again: health pings resume");
            } else {
                tracing::warn!(
                    bound_ms = crate::feed::STALL_BOUND.as_millis(),
                    "the feed has not consumed within the bound: health pings stop"
                );
            }
            was_consuming = consuming;
        }
        if consuming && invoker.is_enabled() && invoker.components.down().is_empty() {
            invoker.ping(true).await;
        }
    }
}

/// Start-up in contract §1.6 order; a failure after the pools exist shuts them down.
async fn start(config: &ServiceConfig) -> Result<Started, ServiceError> {
    let settings = &config.settings;
    let manifest = Arc::new(Manifest::load(&settings.runtimes_manifest)?);
    let id = config.id;
    let unique = config.unique_name.clone().unwrap_or_else(|| id.to_string());
    let instance = InvokerInstanceId::new(
        id,
        settings.user_memory_bytes,
        Some(unique.clone()),
        config.displayed_name.clone(),
    );
    tracing::info!(id, unique, kafka = %settings.kafka_hosts, user_memory_mb = settings.user_memory_mb(), "invoker starting");

    let kafka_error = |source| ServiceError::KafkaSetup {
        hosts: settings.kafka_hosts.clone(),
        source: Box::new(source),
    };
    let admin = kafka::admin_client_with(&settings.kafka_hosts, &settings.kafka_common.0)
        .map_err(kafka_error)?;
    let topic = settings.topic(&format!("invoker{id}"));
    kafka::ensure_topic(&admin, &topic, &TopicKind::Invoker.default_config())
        .await
        .map_err(kafka_error)?;

    let couch_error = |source| ServiceError::CouchDb {
        url: settings.couchdb.url.clone(),
        source,
    };
    let db = CouchDb::new(&settings.couchdb).map_err(couch_error)?;
    db.server_info().await.map_err(couch_error)?;

    let docker = pcpm::docker::connect().await?;
    let version = docker.version().await?;
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

    let mut pools = Pools::default();
    let made = async {
        match settings.network_mode {
            NetworkMode::Bridge => {}
            NetworkMode::Pcpm => {
                pools.pcpm = Some(start_pcpm(settings, &docker, &name_prefix, &key).await?);
            }
            NetworkMode::Netns => {
                pools.netpool = Some(
                    start_netpool(settings, NetpoolKind::Containers, id)
                        .await
                        .map_err(ServiceError::Netpool)?,
                );
            }
            NetworkMode::Vm => {
                pools.vm_slots = Some(
                    start_netpool(settings, NetpoolKind::VmSlots, id)
                        .await
                        .map_err(ServiceError::VmSlots)?,
                );
            }
        }
        let factory: Arc<dyn ContainerFactory> = match (&pools.vm_slots, &pools.netpool, &pools.pcpm) {
            (Some(slots), _, _) => Arc::new(
                VmFactory::new(
                    Arc::new(slots.clone()),
                    VmConfig::from_settings(&settings.vm, &name_prefix),
                )
                .await
                .map_err(ServiceError::VmFactory)?,
            ),
            (None, Some(np), _) => {
                let runc = RuncFactory::new(
                    docker.clone(),
                    Arc::new(np.clone()),
                    &settings.runc_dir.join("images"),
                    &settings.runc_dir.join("bundles").join(&name_prefix),
                    &Path::new("/run/wsk-runc").join(&name_prefix),
                )
                .with_image_store(&settings.runc_image_store)
                .with_runtime(&settings.runc_runtime)
                .with_presandboxes(&format!("{name_prefix}_"), settings.runc_presandboxes);
                let version = runc.runtime_version().await.map_err(ServiceError::OciRuntime)?;
                tracing::info!(runtime = %settings.runc_runtime.display(), version, "OCI runtime");
                // Unpack the managed runtimes' images before the first cold start needs them.
                for image in manifest
                    .images(&settings.runtimes_registry)
                    .into_iter()
                    .filter(|i| !crate::container::vm::requires_vm(i))
                {
                    if let Err(e) = runc.prepare(&image).await {
                        tracing::warn!(image, error = %openwhisk::errors::chain(&e), "cannot unpack a runtime image");
                    }
                }
                Arc::new(runc)
            }
            (None, None, Some(p)) => Arc::new(DockerFactory::new(
                docker.clone(),
                Networking::Pcpm(p.clone(), key),
                settings.parallel_runs,
            )),
            (None, None, None) => Arc::new(DockerFactory::new(
                docker.clone(),
                Networking::Bridge(key),
                settings.parallel_runs,
            )),
        };
        // The container modes run the actions that ask for a VM on a VM backend beside theirs.
        let factory: Arc<dyn ContainerFactory> =
            if settings.network_mode != NetworkMode::Vm && wants_vms(settings, &manifest) {
                let vms = start_vm_backend(settings, id, &name_prefix, &mut pools).await;
                if let Err(e) = &vms {
                    tracing::warn!(reason = %openwhisk::errors::chain(e), "no VM backend: wasm:0.1 actions and actions annotated sandbox: vm will fail");
                }
                Arc::new(Router::new(factory, vms))
            } else {
                factory
            };
        let leftovers = factory
            .remove_all(&format!("{name_prefix}_"))
            .await
            .map_err(ServiceError::Leftovers)?;
        tracing::info!(
            docker = version.version.as_deref().unwrap_or("?"),
            leftovers,
            "docker engine ready"
        );
        Ok::<_, ServiceError>(factory)
    }
    .await;
    match made {
        Ok(factory) => Ok(Started {
            instance,
            topic,
            name_prefix,
            manifest,
            db,
            factory,
            pools,
        }),
        Err(e) => {
            pools.shutdown().await;
            Err(e)
        }
    }
}

/// Whether a container mode needs a VM backend beside its own: the manifest has a kind only a
/// VM runs (`wasm:0.1`), or actions may ask for a VM with their `sandbox` annotation.
fn wants_vms(settings: &Settings, manifest: &Manifest) -> bool {
    settings.vm.allow_annotation
        || manifest
            .images(&settings.runtimes_registry)
            .iter()
            .any(|image| crate::container::vm::requires_vm(image))
}

/// The VM backend beside a container mode's: its own pool of VM slots and a [`VmFactory`] on
/// them, or why there is none (no QEMU, the slots or the factory failed). What it made is in
/// `pools`, so the invoker's shutdown removes it.
async fn start_vm_backend(
    settings: &Settings,
    id: u32,
    name_prefix: &str,
    pools: &mut Pools,
) -> Result<Arc<dyn ContainerFactory>, VmBackendError> {
    let qemu = settings.vm.qemu.clone();
    let found = tokio::task::spawn_blocking(move || executable_on_path(&qemu))
        .await
        .unwrap_or(false);
    if !found {
        return Err(VmBackendError::NoQemu(settings.vm.qemu.clone()));
    }
    let slots = start_netpool(settings, NetpoolKind::VmSlots, id)
        .await
        .map_err(VmBackendError::Slots)?;
    let factory = match VmFactory::new(
        Arc::new(slots.clone()),
        VmConfig::from_settings(&settings.vm, name_prefix),
    )
    .await
    {
        Ok(f) => f,
        Err(e) => {
            // Undone at once: the slots would otherwise wait, unused, for the shutdown.
            if let Err(teardown) = slots.shutdown().await {
                tracing::warn!(error = %openwhisk::errors::chain(&teardown), "removing the VM slots of a VM backend that did not start");
            }
            return Err(VmBackendError::Factory(e));
        }
    };
    pools.vm_slots = Some(slots);
    tracing::info!(
        accelerator = factory.engine().label(),
        "VM backend ready beside the containers"
    );
    Ok(Arc::new(factory))
}

/// `path` itself when it has a slash, else the first match on `PATH`, is an executable file.
fn executable_on_path(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if path.components().count() > 1 {
        return runnable(path);
    }
    std::env::var_os("PATH")
        .is_some_and(|dirs| std::env::split_paths(&dirs).any(|dir| runnable(&dir.join(path))))
}

/// The pause-container pool, filled before anything (stem cells first) asks for an endpoint.
async fn start_pcpm(
    settings: &Settings,
    docker: &bollard::Docker,
    name_prefix: &str,
    key: &pcpm::NetworkKey,
) -> Result<pcpm::Pcpm, ServiceError> {
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
    let p = pcpm::Pcpm::new(docker.clone(), config).await?;
    let r = p.reconciled();
    if let Err(e) = p
        .wait_idle(key, np.high_watermark, Duration::from_secs(60))
        .await
    {
        tracing::warn!(error = %e, "the pcpm pool is not full yet; starting anyway");
    }
    tracing::info!(adopted = r.adopted, removed = r.removed, "pcpm pool ready");
    Ok(p)
}

/// What a netpool pool of the invoker holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NetpoolKind {
    /// netns mode: namespaces for runc containers.
    Containers,
    /// vm mode: namespaces with a TAP device for QEMU.
    VmSlots,
}

/// The pool's name and settings: 1 to 5 of [a-z0-9] (netpool's limit), the invoker id keeping
/// invokers apart and the letter keeping the kinds apart (`w<id>` namespaces, `v<id>` VM
/// slots), each kind in its own range.
fn netpool_config(settings: &Settings, kind: NetpoolKind, id: u32) -> netpool::PoolConfig {
    let np = match kind {
        NetpoolKind::Containers => settings.network_pool,
        NetpoolKind::VmSlots => settings.vm_pool,
    };
    let (letter, (subnet, len)) = match kind {
        NetpoolKind::Containers => ('w', settings.netns_subnet),
        NetpoolKind::VmSlots => ('v', settings.vm_subnet),
    };
    let mut config = netpool::PoolConfig::new(&format!("{letter}{}", id % 10_000), subnet, len);
    if kind == NetpoolKind::VmSlots {
        config.kind = netpool::SlotKind::Vm;
        config.subnet_auto = settings.vm_subnet_auto;
    }
    config.low_watermark = np.low_watermark;
    config.high_watermark = np.high_watermark;
    config.max_slots = np.max;
    config.max_concurrent_creates = np.max_concurrent_creates;
    // Functions reach nothing on the host (its admin port, the broker, the database, the
    // front door) nor another function, but for the ports the operator allows.
    config.guard_host = true;
    config.allow_host_ports = settings.allow_host_ports.clone();
    config
}

/// A netpool pool (namespaces for runc, or VM slots), filled before the first cold start.
async fn start_netpool(
    settings: &Settings,
    kind: NetpoolKind,
    id: u32,
) -> Result<netpool::NetPool, netpool::PoolError> {
    let np = match kind {
        NetpoolKind::Containers => settings.network_pool,
        NetpoolKind::VmSlots => settings.vm_pool,
    };
    let pool = netpool::NetPool::new(netpool_config(settings, kind, id)).await?;
    if let Err(e) = pool
        .wait_idle(np.high_watermark, Duration::from_secs(60))
        .await
    {
        tracing::warn!(error = %e, "the netpool is not full yet; starting anyway");
    }
    Ok(pool)
}

/// The container pool's settings: user memory, timers, names, environment and stem cells.
fn pool_config(settings: &Settings, manifest: &Manifest, name_prefix: &str) -> PoolConfig {
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
    PoolConfig {
        user_memory_mb: settings.user_memory_mb(),
        pause_grace: settings.pause_grace,
        idle_timeout: settings.idle_container,
        name_prefix: name_prefix.to_owned(),
        env,
        user_cpus: settings.user_cpus,
        stem_cells,
        allow_vm_annotation: settings.vm.allow_annotation,
        mode_is_vm: settings.network_mode == NetworkMode::Vm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut vars = vec![
            ("KAFKA_HOSTS".to_owned(), "127.0.0.1:9092".to_owned()),
            ("RUNTIMES_MANIFEST".to_owned(), "{}".to_owned()),
        ];
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Settings::from_vars(vars, None).unwrap()
    }

    /// netns namespaces and VM slots are pools of their own: names apart (`w<id>`, `v<id>`,
    /// within netpool's five characters), ranges apart, and only the VM slots have a TAP.
    #[test]
    fn vm_slots_are_a_netpool_pool_of_their_own() {
        let s = settings(&[
            ("CONFIG_whisk_invoker_network_mode", "vm"),
            ("CONFIG_whisk_invoker_network_pool_lowWatermark", "2"),
            ("CONFIG_whisk_invoker_network_pool_highWatermark", "4"),
        ]);
        let ns = netpool_config(&s, NetpoolKind::Containers, 12_345);
        let vm = netpool_config(&s, NetpoolKind::VmSlots, 12_345);
        assert_eq!((ns.name.as_str(), vm.name.as_str()), ("w2345", "v2345"));
        assert_eq!(ns.kind, netpool::SlotKind::Container);
        assert_eq!(vm.kind, netpool::SlotKind::Vm);
        assert_eq!(
            (ns.subnet, ns.subnet_prefix_len),
            (std::net::Ipv4Addr::new(10, 230, 0, 0), 16)
        );
        assert_eq!(
            (vm.subnet, vm.subnet_prefix_len),
            (std::net::Ipv4Addr::new(10, 232, 0, 0), 16)
        );
        assert_eq!((vm.low_watermark, vm.high_watermark), (2, 4));
        // The VM slots' own sizes, where set (vm mode: the network pool's by default).
        let s = settings(&[
            ("CONFIG_whisk_invoker_network_mode", "vm"),
            ("CONFIG_whisk_invoker_network_pool_lowWatermark", "20"),
            ("CONFIG_whisk_invoker_network_pool_highWatermark", "40"),
            ("CONFIG_whisk_invoker_vm_pool_highWatermark", "3"),
            ("CONFIG_whisk_invoker_vm_pool_lowWatermark", "1"),
        ]);
        let ns = netpool_config(&s, NetpoolKind::Containers, 1);
        let vm = netpool_config(&s, NetpoolKind::VmSlots, 1);
        assert_eq!((ns.low_watermark, ns.high_watermark), (20, 40));
        assert_eq!((vm.low_watermark, vm.high_watermark), (1, 3));
        assert_eq!(vm.max_slots, ns.max_slots);
        // Beside a container mode: small unless set.
        let s = settings(&[("CONFIG_whisk_invoker_network_pool_highWatermark", "40")]);
        let vm = netpool_config(&s, NetpoolKind::VmSlots, 1);
        assert_eq!(
            (
                vm.low_watermark,
                vm.high_watermark,
                vm.max_concurrent_creates
            ),
            (1, 2, 2)
        );
        vm.validate().unwrap();
        ns.validate().unwrap();
    }

    /// Both kinds of slot keep functions off the host but for the allowed ports.
    #[test]
    fn slots_are_guarded_and_the_allowed_host_ports_reach_the_pool() {
        let s = settings(&[]);
        for kind in [NetpoolKind::Containers, NetpoolKind::VmSlots] {
            let c = netpool_config(&s, kind, 1);
            assert!(c.guard_host && c.allow_host_ports.is_empty(), "{kind:?}");
        }
        let s = settings(&[(
            "CONFIG_whisk_invoker_network_allowHostPorts",
            "[3233, \"40000-40009\"]",
        )]);
        for kind in [NetpoolKind::Containers, NetpoolKind::VmSlots] {
            let c = netpool_config(&s, kind, 1);
            assert_eq!(c.allow_host_ports, [(3233, 3233), (40000, 40009)]);
            c.validate().unwrap();
        }
    }
}

//! The pools: pause containers created ahead of need, handed out, checked on return.

use std::collections::{HashMap, VecDeque};
use std::error::Error;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use futures::StreamExt;
use netpool::SysError;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{ConfigError, NetworkKey, OnEmpty, PcpmConfig};
use crate::engine::{self, DockerEngine, Engine, EngineError, Namespace, NetState, Process};
use crate::metrics as m;

/// Errors of the pool manager.
#[derive(Debug, thiserror::Error)]
pub enum PcpmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("pause container {id}: {action}")]
    Namespace {
        id: String,
        action: &'static str,
        #[source]
        source: Box<SysError>,
    },
    #[error("cannot read {path}, a file joining containers share")]
    SharedFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pause container {id} is not running")]
    NotRunning { id: String },
    #[error(
        "pause container {id} has more than its pause process or open sockets in its namespace"
    )]
    Dirty { id: String },
    /// The source is the last creation failure the pool saw, if any (a later success does not
    /// clear it).
    #[error(
        "pcpm pool {pool} had no pause container within {waited:?}{}",
        if last_error.is_some() { " (its last creation failed)" } else { "" }
    )]
    Exhausted {
        pool: String,
        waited: Duration,
        #[source]
        last_error: Option<Arc<PcpmError>>,
    },
    #[error("the pool manager is shut down")]
    Closed,
    /// Each removal's error is also logged, with its sources, where it happened.
    #[error("{} pause container(s) could not be removed: {}", .0.len(), join(.0))]
    Teardown(Vec<EngineError>),
}

fn join(errors: &[EngineError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What became of a released pause container.
#[derive(Debug)]
pub enum Released {
    /// It passed every check and is idle in its pool again.
    Recycled,
    /// It failed a check; it was removed and the refill replaces it.
    Replaced(ReplaceReason),
}

impl Released {
    /// Whether the pause container went back to its pool.
    pub fn is_recycled(&self) -> bool {
        matches!(self, Self::Recycled)
    }
}

/// Why a released pause container was not reused.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceReason {
    #[error("the pool manager is gone")]
    ManagerGone,
    #[error("the pool is shut down")]
    ShutDown,
    #[error("the pause container is not running")]
    NotRunning,
    #[error("the pause process changed (pid {before} -> {after})")]
    PidChanged { before: u32, after: u32 },
    #[error("processes other than the pause process in the namespace: {0:?}")]
    Processes(Vec<u32>),
    #[error("sockets left open: {}", .0.join(", "))]
    Sockets(Vec<String>),
    #[error("network state changed: {0}")]
    NetworkChanged(String),
    #[error("{} changed", .0.display())]
    FileChanged(PathBuf),
    #[error("a release check failed")]
    Check(#[source] PcpmError),
}

/// A pool's counters and occupancy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub idle: usize,
    pub leased: usize,
    pub creating: usize,
    pub waiting: usize,
    pub created: u64,
    pub adopted: u64,
    pub recycled: u64,
    pub replaced: u64,
    pub create_failures: u64,
    pub fallbacks: u64,
    pub exhausted: u64,
}

/// What start-up found of an earlier run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Running, clean pause containers of a configured key, taken into their pool.
    pub adopted: usize,
    /// Everything else labelled with this manager's name, removed.
    pub removed: usize,
}

/// Where a function container's network comes from.
#[derive(Debug)]
pub enum Endpoint {
    /// A pooled pause container: join its network, release it once the function container is
    /// removed.
    Pause(PauseHandle),
    /// The pool was empty and configured to fall back: ordinary Docker networking with the
    /// key's settings.
    Fallback(NetworkKey),
}

impl Endpoint {
    /// The function container's `HostConfig.NetworkMode`.
    pub fn network_mode(&self) -> String {
        match self {
            Self::Pause(h) => h.network_mode(),
            Self::Fallback(key) => key.network.clone(),
        }
    }

    /// Sets the network fields of a function container's body: the network mode, and for the
    /// fallback the key's DNS settings and exposed ports. A container joining a pause
    /// container must not set those (Docker refuses), so they are cleared.
    pub fn apply(&self, body: &mut ContainerCreateBody) {
        let host = body.host_config.get_or_insert_with(HostConfig::default);
        host.network_mode = Some(self.network_mode());
        match self {
            Self::Pause(_) => {
                host.dns = None;
                host.dns_search = None;
                host.dns_options = None;
                host.port_bindings = None;
                host.publish_all_ports = None;
                body.exposed_ports = None;
                body.hostname = None;
            }
            Self::Fallback(key) => {
                let nonempty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
                host.dns = nonempty(&key.dns);
                host.dns_search = nonempty(&key.dns_search);
                host.dns_options = nonempty(&key.dns_options);
                if !key.exposed_ports.is_empty() {
                    body.exposed_ports = Some(
                        key.exposed_ports
                            .iter()
                            .map(|p| format!("{p}/tcp"))
                            .collect(),
                    );
                }
            }
        }
    }

    /// The address of the function container's network, where Docker gives it up front
    /// (pause containers); a fallback container's address is known only once it runs.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::Pause(h) => h.ip(),
            Self::Fallback(_) => None,
        }
    }

    /// Returns the pause container, if any, once the function container is removed.
    pub async fn release(self) -> Option<Released> {
        match self {
            Self::Pause(h) => Some(h.release().await),
            Self::Fallback(_) => None,
        }
    }
}

/// The pool manager: a pool per network key, one Docker connection, one creation budget.
#[derive(Debug, Clone)]
pub struct Pcpm {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    engine: Arc<dyn Engine>,
    config: PcpmConfig,
    run: String,
    seq: AtomicU64,
    creates: Semaphore,
    cancel: CancellationToken,
    /// Cancelled when a refill task has ended, however it ended (see
    /// [`Pcpm::maintenance_ended`]).
    refill_ended: CancellationToken,
    tasks: TaskTracker,
    pools: Mutex<HashMap<NetworkKey, Arc<Pool>>>,
    reconciled: Reconciled,
}

impl Pcpm {
    /// Validates the configuration, reconciles an earlier run's containers (adopting the
    /// running, clean ones of configured keys, removing the rest) and starts the configured
    /// pools, which fill to their high watermark in the background.
    pub async fn new(docker: Docker, config: PcpmConfig) -> Result<Self, PcpmError> {
        Self::with_engine(Arc::new(DockerEngine(docker)), config).await
    }

    /// Resolves when a pool's refill task has ended: at [`Pcpm::shutdown`], or, while the
    /// manager is in use, because it panicked. A service that depends on the refill watches
    /// this to stop instead of waiting for pause containers that no longer come.
    pub fn maintenance_ended(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.refill_ended.clone().cancelled_owned()
    }

    /// [`Pcpm::new`] on any engine: the unit tests' fake.
    pub(crate) async fn with_engine(
        engine: Arc<dyn Engine>,
        config: PcpmConfig,
    ) -> Result<Self, PcpmError> {
        config.validate()?;
        m::describe();
        let run = run_id();
        let mut shared = Shared {
            creates: Semaphore::new(config.max_concurrent_creates),
            engine,
            config,
            run,
            seq: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            refill_ended: CancellationToken::new(),
            tasks: TaskTracker::new(),
            pools: Mutex::new(HashMap::new()),
            reconciled: Reconciled::default(),
        };
        let (adopted, reconciled) = reconcile(&shared).await?;
        shared.reconciled = reconciled;
        let this = Self {
            shared: Arc::new(shared),
        };
        let mut adopted = adopted;
        for key in this.shared.config.keys.clone() {
            let initial = adopted.remove(&key).unwrap_or_default();
            this.start_pool(&key, initial);
        }
        info!(
            manager = %this.shared.config.name,
            run = %this.shared.run,
            adopted = reconciled.adopted,
            removed = reconciled.removed,
            "pcpm started"
        );
        Ok(this)
    }

    /// What start-up found of an earlier run.
    pub fn reconciled(&self) -> Reconciled {
        self.shared.reconciled
    }

    /// A network endpoint for a function container with network needs `key`: an idle pause
    /// container (the pool for `key` starts on first use), or on an empty pool what
    /// [`PcpmConfig::on_empty`] says.
    pub async fn acquire(&self, key: &NetworkKey) -> Result<Endpoint, PcpmError> {
        if self.shared.cancel.is_cancelled() {
            return Err(PcpmError::Closed);
        }
        self.pool(key).acquire().await
    }

    /// The counters of the pool for `key`, if it has started.
    pub fn stats(&self, key: &NetworkKey) -> Option<PoolStats> {
        let pools = self.shared.pools.lock();
        pools.get(key).map(|p| p.stats())
    }

    /// Waits until the pool for `key` (started if need be) has `n` idle pause containers.
    pub async fn wait_idle(
        &self,
        key: &NetworkKey,
        n: usize,
        timeout: Duration,
    ) -> Result<(), PcpmError> {
        let pool = self.pool(key);
        let deadline = Instant::now() + timeout;
        loop {
            let notified = pool.idle_ready.notified();
            let (idle, last_error) = {
                let s = pool.lock();
                (s.idle.len(), s.last_error.clone())
            };
            if idle >= n {
                return Ok(());
            }
            pool.wake.notify_one();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(PcpmError::Exhausted {
                    pool: pool.id.clone(),
                    waited: timeout,
                    last_error,
                });
            }
        }
    }

    /// Stops every refill, waits for creations under way, and removes every container labelled
    /// with this manager's name, handed out or not. Keeps going past errors and reports them
    /// all. Handles released later find their container gone.
    pub async fn shutdown(&self) -> Result<(), PcpmError> {
        let shared = &self.shared;
        shared.cancel.cancel();
        shared.tasks.close();
        shared.tasks.wait().await;
        let pools: Vec<_> = shared.pools.lock().values().cloned().collect();
        for pool in &pools {
            let mut s = pool.lock();
            s.closed = true;
            s.idle.clear();
            // Dropped senders tell the waiters the pool is closed.
            s.waiters.clear();
            pool.gauges(&s);
            pool.idle_ready.notify_waiters();
        }
        let listed = shared.engine.list(&shared.config.name).await?;
        let errors: Vec<EngineError> = futures::stream::iter(listed)
            .map(|c| async move {
                let pool = c.labels.get(engine::LABEL_KEY).cloned().unwrap_or_default();
                let result = shared.engine.remove(&c.id).await;
                match &result {
                    Ok(()) => {
                        metrics::counter!(m::REMOVED_TOTAL, "pool" => pool, "reason" => "shutdown")
                            .increment(1);
                    }
                    Err(e) => {
                        warn!(container = %c.id, error = e as &dyn Error, "removing a pause container at shutdown failed");
                    }
                }
                result
            })
            .buffer_unordered(shared.config.max_concurrent_creates)
            .filter_map(|r| async move { r.err() })
            .collect()
            .await;
        info!(manager = %shared.config.name, errors = errors.len(), "pcpm shut down");
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PcpmError::Teardown(errors))
        }
    }

    /// The pool for `key`, started (with its refill task) on first use.
    fn pool(&self, key: &NetworkKey) -> Arc<Pool> {
        self.start_pool(key, Vec::new())
    }

    /// The pool for `key`; a new one starts with `adopted` idle, then its refill task.
    fn start_pool(&self, key: &NetworkKey, adopted: Vec<PauseContainer>) -> Arc<Pool> {
        let mut pools = self.shared.pools.lock();
        if let Some(pool) = pools.get(key) {
            return pool.clone();
        }
        let state = State {
            adopted: adopted.len() as u64,
            idle: adopted,
            ..State::default()
        };
        let pool = Arc::new(Pool {
            shared: Arc::downgrade(&self.shared),
            key: key.clone(),
            id: key.id(),
            state: Mutex::new(state),
            idle_ready: Notify::new(),
            wake: Notify::new(),
        });
        pool.gauges(&pool.lock());
        pools.insert(key.clone(), pool.clone());
        let span = info_span!("pcpm_refill", pool = %pool.id, network = %key.network);
        let work = refill(
            pool.clone(),
            self.shared.cancel.clone(),
            self.shared.config.clone(),
        );
        // Dropped when the refill returns, panics or is aborted.
        let ended = self.shared.refill_ended.clone().drop_guard();
        self.shared.tasks.spawn(
            async move {
                let _ended = ended;
                work.await;
            }
            .instrument(span),
        );
        pool
    }
}

/// The last manager handle dropped without [`Pcpm::shutdown`]: the refill tasks stop (they hold
/// their pools, not the manager, so they would go on creating pause containers for nobody).
/// The pause containers stay for the next start's reconcile, which adopts or removes them.
impl Drop for Shared {
    fn drop(&mut self) {
        if !self.cancel.is_cancelled() {
            warn!(manager = %self.config.name, "pcpm dropped without shutdown; its pause containers stay for the next start's reconcile");
            self.cancel.cancel();
        }
    }
}

/// A pause container in the pool's hands: what was seen of it when it was new.
#[derive(Debug)]
struct PauseContainer {
    id: String,
    name: String,
    pid: u32,
    ip: Option<IpAddr>,
    /// The pause process, watched for its exit.
    process: Box<dyn Process>,
    probe: Box<dyn Namespace>,
    fingerprint: Fingerprint,
    uses: u64,
}

/// What a joining container could change and the next one would see: the namespace's links,
/// addresses, routes and qdiscs, and the files shared with the network's owner (`/etc/hosts`,
/// `/etc/resolv.conf`, `/etc/hostname`, writable by a root process in the joining container).
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    net: NetState,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Fingerprint {
    async fn take(probe: &dyn Namespace, id: &str, files: &[PathBuf]) -> Result<Self, PcpmError> {
        let ns_err = |action| namespace_error(id, action);
        probe
            .flush_learned_neighbours()
            .await
            .map_err(ns_err("flush neighbours"))?;
        let net = probe.state().await.map_err(ns_err("read state"))?;
        let mut contents = Vec::with_capacity(files.len());
        for path in files {
            let data = tokio::fs::read(path)
                .await
                .map_err(|source| PcpmError::SharedFile {
                    path: path.clone(),
                    source,
                })?;
            contents.push((path.clone(), data));
        }
        Ok(Self {
            net,
            files: contents,
        })
    }

    /// Why `now` differs from this fingerprint, or `None`.
    fn differs(&self, now: &Self) -> Option<ReplaceReason> {
        if now.net != self.net {
            return Some(ReplaceReason::NetworkChanged(now.net.diff(&self.net)));
        }
        for ((path, before), (_, after)) in self.files.iter().zip(&now.files) {
            if before != after {
                return Some(ReplaceReason::FileChanged(path.clone()));
            }
        }
        None
    }
}

/// A pause container handed out. Join its network with [`PauseHandle::network_mode`]; call
/// [`PauseHandle::release`] once the function container is removed. Dropped without release,
/// the pause container is removed and replaced (its state is unknown).
#[derive(Debug)]
pub struct PauseHandle {
    container: Option<PauseContainer>,
    pool: Arc<Pool>,
}

impl PauseHandle {
    fn container(&self) -> &PauseContainer {
        self.container
            .as_ref()
            .expect("a handle holds its container until release or drop")
    }

    /// The pause container's id.
    pub fn id(&self) -> &str {
        &self.container().id
    }

    /// The pause container's name.
    pub fn name(&self) -> &str {
        &self.container().name
    }

    /// `container:<id>`: the function container's network mode.
    pub fn network_mode(&self) -> String {
        format!("container:{}", self.container().id)
    }

    /// The address on the key's network (none on `none`).
    pub fn ip(&self) -> Option<IpAddr> {
        self.container().ip
    }

    /// The pause process's pid on the host; `/proc/<pid>/ns/net` is the namespace.
    pub fn pid(&self) -> u32 {
        self.container().pid
    }

    /// How many function containers this pause container served before this one.
    pub fn previous_uses(&self) -> u64 {
        self.container().uses
    }

    /// The pool this came from ([`NetworkKey::id`]).
    pub fn pool_id(&self) -> &str {
        &self.pool.id
    }

    /// Hands the pause container back, once the function container that joined it is removed.
    /// It goes back to the pool only if it still runs (same process) and its namespace is as it
    /// was new: no other process, no socket, the same links, addresses, routes and qdiscs, the
    /// same shared files. Otherwise it is removed and the refill replaces it.
    pub async fn release(mut self) -> Released {
        let mut container = self
            .container
            .take()
            .expect("only release and drop take the container, and release consumes the handle");
        let pool = self.pool.clone();
        let span = info_span!("pcpm_release", pool = %pool.id, container = %container.name);
        async move {
            let started = Instant::now();
            let verdict = pool.check(&container).await;
            metrics::histogram!(m::RELEASE_CHECK_SECONDS, "pool" => pool.id.clone())
                .record(started.elapsed().as_secs_f64());
            match verdict {
                Ok(()) => {
                    container.uses += 1;
                    pool.put_back(container);
                    Released::Recycled
                }
                Err(reason) => {
                    info!(reason = &reason as &dyn Error, "pause container replaced");
                    pool.discard(container, "dirty");
                    Released::Replaced(reason)
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl Drop for PauseHandle {
    fn drop(&mut self) {
        if let Some(container) = self.container.take() {
            warn!(pool = %self.pool.id, container = %container.name, "pause handle dropped without release; replacing it");
            self.pool.discard(container, "dropped");
        }
    }
}

#[derive(Debug, Default)]
struct State {
    idle: Vec<PauseContainer>,
    /// Callers waiting on an empty pool, longest-waiting first. A sender whose receiver is gone
    /// (its caller gave up) is skipped and pruned.
    waiters: VecDeque<oneshot::Sender<PauseContainer>>,
    leased: usize,
    creating: usize,
    closed: bool,
    failures: u32,
    not_before: Option<Instant>,
    last_error: Option<Arc<PcpmError>>,
    created: u64,
    adopted: u64,
    recycled: u64,
    replaced: u64,
    create_failures: u64,
    fallbacks: u64,
    exhausted: u64,
}

impl State {
    fn waiting(&self) -> usize {
        self.waiters.iter().filter(|w| !w.is_closed()).count()
    }
}

#[derive(Debug)]
struct Pool {
    // Weak: the manager owns its pools; a handle outliving the manager only removes its
    // container.
    shared: std::sync::Weak<Shared>,
    key: NetworkKey,
    id: String,
    state: Mutex<State>,
    /// Signalled when a pause container becomes idle (or the pool closes).
    idle_ready: Notify,
    /// Wakes the refill task.
    wake: Notify,
}

/// A caller's place in the queue of an empty pool. Dropped before it received its container
/// (the caller's future was dropped, or the deadline passed just as a container was handed
/// over), it gives the container back.
struct Waiter<'a> {
    pool: &'a Pool,
    rx: Option<oneshot::Receiver<PauseContainer>>,
}

impl Waiter<'_> {
    /// Stops waiting; a container handed over meanwhile is the caller's.
    fn give_up(&mut self) -> Option<PauseContainer> {
        let mut rx = self.rx.take()?;
        rx.close();
        rx.try_recv().ok()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.give_up() {
            self.pool.unlease(c);
        }
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn gauges(&self, s: &State) {
        metrics::gauge!(m::IDLE, "pool" => self.id.clone()).set(s.idle.len() as f64);
        metrics::gauge!(m::LEASED, "pool" => self.id.clone()).set(s.leased as f64);
    }

    fn stats(&self) -> PoolStats {
        let s = self.lock();
        PoolStats {
            idle: s.idle.len(),
            leased: s.leased,
            creating: s.creating,
            waiting: s.waiting(),
            created: s.created,
            adopted: s.adopted,
            recycled: s.recycled,
            replaced: s.replaced,
            create_failures: s.create_failures,
            fallbacks: s.fallbacks,
            exhausted: s.exhausted,
        }
    }

    fn low_watermark(&self) -> usize {
        self.shared.upgrade().map_or(0, |s| s.config.low_watermark)
    }

    fn handle(self: &Arc<Self>, c: PauseContainer) -> PauseHandle {
        PauseHandle {
            container: Some(c),
            pool: self.clone(),
        }
    }

    /// Gives `c` to the longest-waiting caller, or makes it idle. Callers that wait are served
    /// in the order they came, and a new caller finds an idle container only when nobody waits.
    fn hand_over(&self, s: &mut State, mut c: PauseContainer) {
        while let Some(waiter) = s.waiters.pop_front() {
            match waiter.send(c) {
                Ok(()) => {
                    s.leased += 1;
                    return;
                }
                Err(back) => c = back,
            }
        }
        s.idle.push(c);
    }

    /// Takes back a container handed to a caller that never received it.
    fn unlease(&self, c: PauseContainer) {
        let mut s = self.lock();
        s.leased -= 1;
        if s.closed {
            drop(s);
            self.discard_unleased(c, "shutdown");
            return;
        }
        self.hand_over(&mut s, c);
        self.gauges(&s);
        drop(s);
        self.idle_ready.notify_waiters();
    }

    async fn acquire(self: &Arc<Self>) -> Result<Endpoint, PcpmError> {
        let started = Instant::now();
        let on_empty = self
            .shared
            .upgrade()
            .ok_or(PcpmError::Closed)?
            .config
            .on_empty;
        let record = |outcome: &'static str| {
            metrics::histogram!(m::ACQUIRE_SECONDS, "pool" => self.id.clone(), "outcome" => outcome)
                .record(started.elapsed().as_secs_f64());
        };
        // A pause container that died idle (a dockerd restart takes them all) is never handed
        // out: the function container could not join its network.
        self.remove_exited();
        let (tx, rx) = oneshot::channel();
        let timeout = {
            let mut s = self.lock();
            if s.closed {
                return Err(PcpmError::Closed);
            }
            if let Some(c) = s.idle.pop() {
                s.leased += 1;
                if s.idle.len() < self.low_watermark() {
                    self.wake.notify_one();
                }
                self.gauges(&s);
                drop(s);
                record("hit");
                return Ok(Endpoint::Pause(self.handle(c)));
            }
            match on_empty {
                OnEmpty::Fallback => {
                    s.fallbacks += 1;
                    drop(s);
                    self.wake.notify_one();
                    metrics::counter!(m::FALLBACKS_TOTAL, "pool" => self.id.clone()).increment(1);
                    record("fallback");
                    debug!(pool = %self.id, "pool empty; falling back to ordinary networking");
                    return Ok(Endpoint::Fallback(self.key.clone()));
                }
                OnEmpty::Wait(timeout) => {
                    s.waiters.retain(|w| !w.is_closed());
                    s.waiters.push_back(tx);
                    timeout
                }
            }
        };
        self.wake.notify_one();
        let mut waiter = Waiter {
            pool: self,
            rx: Some(rx),
        };
        let rx = waiter.rx.as_mut().expect("set just above");
        let container = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(c)) => {
                waiter.rx = None;
                Some(c)
            }
            // The sender was dropped: only shutdown drops a waiter's sender.
            Ok(Err(_)) => return Err(PcpmError::Closed),
            Err(_) => waiter.give_up(),
        };
        if let Some(c) = container {
            record("waited");
            return Ok(Endpoint::Pause(self.handle(c)));
        }
        let last_error = {
            let mut s = self.lock();
            s.exhausted += 1;
            s.last_error.clone()
        };
        metrics::counter!(m::EXHAUSTED_TOTAL, "pool" => self.id.clone()).increment(1);
        record("exhausted");
        Err(PcpmError::Exhausted {
            pool: self.id.clone(),
            waited: timeout,
            last_error,
        })
    }

    /// Removes the idle pause containers whose process exited, and wakes the refill to replace
    /// them.
    fn remove_exited(&self) {
        let exited: Vec<PauseContainer> = {
            let mut s = self.lock();
            if s.idle.iter().all(|c| !c.process.exited()) {
                return;
            }
            let (exited, alive) = std::mem::take(&mut s.idle)
                .into_iter()
                .partition(|c| c.process.exited());
            s.idle = alive;
            s.replaced += exited.len() as u64;
            self.gauges(&s);
            exited
        };
        warn!(pool = %self.id, n = exited.len(), "idle pause containers whose process exited; replacing them");
        for c in exited {
            self.discard_unleased(c, "exited");
        }
        self.wake.notify_one();
    }

    /// The release checks; `Err` is the reason the container cannot be reused.
    async fn check(&self, c: &PauseContainer) -> Result<(), ReplaceReason> {
        let Some(shared) = self.shared.upgrade() else {
            return Err(ReplaceReason::ManagerGone);
        };
        if self.lock().closed {
            return Err(ReplaceReason::ShutDown);
        }
        let failed = |e: PcpmError| ReplaceReason::Check(e);
        let now = shared
            .engine
            .inspect(&c.id, &self.key.network)
            .await
            .map_err(|e| failed(e.into()))?;
        if !now.running {
            return Err(ReplaceReason::NotRunning);
        }
        if now.pid != c.pid {
            return Err(ReplaceReason::PidChanged {
                before: c.pid,
                after: now.pid,
            });
        }
        let processes = c
            .probe
            .processes()
            .await
            .map_err(|e| failed(namespace_error(&c.id, "list processes")(e)))?;
        if processes != [c.pid] {
            return Err(ReplaceReason::Processes(
                processes.into_iter().filter(|&p| p != c.pid).collect(),
            ));
        }
        let sockets = c
            .probe
            .live_sockets()
            .await
            .map_err(|e| failed(namespace_error(&c.id, "list sockets")(e)))?;
        if !sockets.is_empty() {
            return Err(ReplaceReason::Sockets(sockets));
        }
        let paths: Vec<PathBuf> = c.fingerprint.files.iter().map(|(p, _)| p.clone()).collect();
        let fingerprint = Fingerprint::take(&*c.probe, &c.id, &paths)
            .await
            .map_err(failed)?;
        match c.fingerprint.differs(&fingerprint) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    fn put_back(&self, c: PauseContainer) {
        let mut s = self.lock();
        s.leased -= 1;
        if s.closed {
            drop(s);
            self.discard_unleased(c, "shutdown");
            return;
        }
        s.recycled += 1;
        self.hand_over(&mut s, c);
        self.gauges(&s);
        drop(s);
        metrics::counter!(m::RECYCLED_TOTAL, "pool" => self.id.clone()).increment(1);
        self.idle_ready.notify_waiters();
    }

    /// Removes a handed-out container in the background and lets the refill replace it.
    fn discard(&self, c: PauseContainer, reason: &'static str) {
        {
            let mut s = self.lock();
            s.leased -= 1;
            s.replaced += 1;
            self.gauges(&s);
        }
        self.discard_unleased(c, reason);
        self.wake.notify_one();
    }

    fn discard_unleased(&self, c: PauseContainer, reason: &'static str) {
        let Some(shared) = self.shared.upgrade() else {
            warn!(container = %c.name, "pool manager gone; pause container left for the next reconcile");
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(container = %c.name, "no runtime to remove the pause container on; left for the next reconcile");
            return;
        };
        let pool = self.id.clone();
        let engine = shared.engine.clone();
        // Not on the task tracker once it is closed: shutdown removes by label anyway.
        let removal = async move {
            match engine.remove(&c.id).await {
                Ok(()) => {
                    metrics::counter!(m::REMOVED_TOTAL, "pool" => pool, "reason" => reason)
                        .increment(1);
                }
                Err(e) => {
                    warn!(container = %c.name, error = &e as &dyn Error, "removing a pause container failed; the next reconcile removes it");
                }
            }
        };
        if shared.tasks.is_closed() {
            runtime.spawn(removal);
        } else {
            shared.tasks.spawn_on(removal, &runtime);
        }
    }

    /// Creates one pause container and puts it in the pool.
    async fn create_one(self: Arc<Self>, shared: Arc<Shared>) {
        let permit = tokio::select! {
            p = shared.creates.acquire() => p,
            () = shared.cancel.cancelled() => {
                self.lock().creating -= 1;
                return;
            }
        };
        let started = Instant::now();
        let result = create(&shared, &self.key, &self.id).await;
        drop(permit);
        let mut s = self.lock();
        s.creating -= 1;
        match result {
            Ok(c) if s.closed => {
                drop(s);
                self.discard_unleased(c, "shutdown");
            }
            Ok(c) => {
                s.failures = 0;
                s.not_before = None;
                s.created += 1;
                debug!(container = %c.name, ip = ?c.ip, "pause container ready");
                self.hand_over(&mut s, c);
                self.gauges(&s);
                drop(s);
                metrics::counter!(m::CREATED_TOTAL, "pool" => self.id.clone()).increment(1);
                metrics::histogram!(m::CREATE_SECONDS, "pool" => self.id.clone())
                    .record(started.elapsed().as_secs_f64());
                self.idle_ready.notify_waiters();
            }
            Err(e) => {
                s.failures += 1;
                s.create_failures += 1;
                let backoff = backoff(s.failures);
                s.not_before = Some(Instant::now() + backoff);
                let e = Arc::new(e);
                s.last_error = Some(e.clone());
                drop(s);
                metrics::counter!(m::CREATE_FAILURES_TOTAL, "pool" => self.id.clone()).increment(1);
                warn!(
                    error = &*e as &dyn Error,
                    ?backoff,
                    "creating a pause container failed"
                );
                self.wake.notify_one();
            }
        }
    }
}

/// The pause before the next creation after `failures` failures in a row: doubling from
/// 400 ms, at most 6.4 s, so a broken engine or image is retried slowly but soon recovered
/// from.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(200 << failures.clamp(1, 5))
}

/// Keeps a pool between its watermarks: when fewer than the low watermark are idle (or callers
/// wait), creates up to the high watermark (plus one per waiting caller), within the pool's
/// maximum and the manager's creation budget. Backs off after failures. Removes the idle ones
/// whose process exited first.
async fn refill(pool: Arc<Pool>, cancel: CancellationToken, config: PcpmConfig) {
    loop {
        let woken = pool.wake.notified();
        // Each round (at least once a second) replaces the idle ones that died, so a pool is
        // full again soon after a dockerd restart, before cold starts need it.
        pool.remove_exited();
        let (n, pause) = {
            let mut s = pool.lock();
            if s.closed {
                return;
            }
            // A back-off that ends now is over: waiting zero would spin without a creation.
            let backoff = s
                .not_before
                .and_then(|t| t.checked_duration_since(Instant::now()))
                .filter(|d| !d.is_zero());
            let ready = s.idle.len() + s.creating;
            let total = ready + s.leased;
            let waiting = s.waiting();
            let want = if backoff.is_some() {
                0
            } else if ready < config.low_watermark || waiting > 0 || total == 0 {
                (config.high_watermark + waiting).saturating_sub(ready)
            } else {
                0
            };
            let n = want.min(config.max_per_pool.saturating_sub(total));
            s.creating += n;
            (n, backoff.unwrap_or(Duration::from_secs(1)))
        };
        if n > 0 {
            let Some(shared) = pool.shared.upgrade() else {
                return;
            };
            debug!(n, "refilling");
            for _ in 0..n {
                shared
                    .tasks
                    .spawn(pool.clone().create_one(shared.clone()).in_current_span());
            }
        }
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(pause) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Creates, starts and fingerprints a pause container; undone on any failure.
async fn create(
    shared: &Shared,
    key: &NetworkKey,
    pool_id: &str,
) -> Result<PauseContainer, PcpmError> {
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{}_pause_{pool_id}_{}_{seq}",
        shared.config.name, shared.run
    );
    let labels = HashMap::from([
        (engine::LABEL_MANAGER.to_owned(), shared.config.name.clone()),
        (engine::LABEL_KEY.to_owned(), pool_id.to_owned()),
        (
            engine::LABEL_KEY_SPEC.to_owned(),
            serde_json::to_string(key).unwrap_or_default(),
        ),
        (engine::LABEL_RUN.to_owned(), shared.run.clone()),
    ]);
    let id = shared
        .engine
        .create_pause(&name, &shared.config.image, key, labels)
        .await?;
    match take_in(shared, key, &id, &name, false).await {
        Ok(c) => Ok(c),
        Err(e) => {
            if let Err(undo) = shared.engine.remove(&id).await {
                warn!(container = %name, error = &undo as &dyn Error, "undoing a failed creation failed");
            }
            Err(e)
        }
    }
}

/// Inspects a running pause container and takes its fingerprint. For an earlier run's
/// container (`adopting`), first checks that nothing but the pause process and no socket is in
/// its namespace.
async fn take_in(
    shared: &Shared,
    key: &NetworkKey,
    id: &str,
    name: &str,
    adopting: bool,
) -> Result<PauseContainer, PcpmError> {
    let info = shared.engine.inspect(id, &key.network).await?;
    if !info.running || info.pid == 0 {
        return Err(PcpmError::NotRunning { id: id.to_owned() });
    }
    let ns_err = |action| namespace_error(id, action);
    let process = shared
        .engine
        .watch_process(info.pid)
        .map_err(ns_err("watch the pause process"))?;
    let probe = shared
        .engine
        .open_namespace(info.pid)
        .await
        .map_err(ns_err("open namespace"))?;
    if adopting {
        let processes = probe.processes().await.map_err(ns_err("list processes"))?;
        let sockets = probe.live_sockets().await.map_err(ns_err("list sockets"))?;
        if processes != [info.pid] || !sockets.is_empty() {
            return Err(PcpmError::Dirty { id: id.to_owned() });
        }
    }
    let fingerprint = Fingerprint::take(&*probe, id, &info.shared_files).await?;
    Ok(PauseContainer {
        id: id.to_owned(),
        name: name.to_owned(),
        pid: info.pid,
        ip: info.ip,
        process,
        probe,
        fingerprint,
        uses: 0,
    })
}

type Adopted = HashMap<NetworkKey, Vec<PauseContainer>>;

/// Finds every container labelled with the manager's name: adopts the running ones of a
/// configured key that are clean (up to the pool maximum), removes the rest. Adopted
/// containers' state and shared files become their new fingerprint: a function container of
/// the earlier run that changed them without leaving a process or socket behind is not
/// detectable after the fact, which is why a dirty-looking one is removed rather than adopted.
async fn reconcile(shared: &Shared) -> Result<(Adopted, Reconciled), PcpmError> {
    let listed = shared.engine.list(&shared.config.name).await?;
    let mut adopted: Adopted = HashMap::new();
    let mut report = Reconciled::default();
    let mut errors = Vec::new();
    for c in listed {
        let key = c
            .labels
            .get(engine::LABEL_KEY_SPEC)
            .and_then(|spec| serde_json::from_str::<NetworkKey>(spec).ok())
            .filter(|k| shared.config.keys.contains(k));
        let name = c
            .labels
            .get(engine::LABEL_RUN)
            .map(|run| {
                format!(
                    "{}_pause_adopted_{run}_{}",
                    shared.config.name,
                    &c.id[..12.min(c.id.len())]
                )
            })
            .unwrap_or_else(|| c.id.clone());
        if let Some(key) = key.filter(|_| c.running && c.image == shared.config.image) {
            let room = adopted.get(&key).map_or(0, Vec::len) < shared.config.max_per_pool;
            if room {
                match take_in(shared, &key, &c.id, &name, true).await {
                    Ok(container) => {
                        metrics::counter!(m::ADOPTED_TOTAL, "pool" => key.id()).increment(1);
                        adopted.entry(key).or_default().push(container);
                        report.adopted += 1;
                        continue;
                    }
                    Err(e) => {
                        debug!(container = %c.id, reason = &e as &dyn Error, "not adopting");
                    }
                }
            }
        }
        match shared.engine.remove(&c.id).await {
            Ok(()) => {
                report.removed += 1;
                let pool = c.labels.get(engine::LABEL_KEY).cloned().unwrap_or_default();
                metrics::counter!(m::REMOVED_TOTAL, "pool" => pool, "reason" => "reconcile")
                    .increment(1);
            }
            Err(e) => {
                warn!(container = %c.id, error = &e as &dyn Error, "removing an earlier run's container failed");
                errors.push(e);
            }
        }
    }
    if errors.is_empty() {
        Ok((adopted, report))
    } else {
        Err(PcpmError::Teardown(errors))
    }
}

/// A short id for this run, distinct across restarts: container names stay unique next to
/// adopted containers of earlier runs.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{:08x}",
        (nanos as u64 ^ u64::from(std::process::id()) << 40) & 0xffff_ffff
    )
}

/// Wraps a namespace error of pause container `id` while doing `action`.
fn namespace_error(id: &str, action: &'static str) -> impl FnOnce(SysError) -> PcpmError {
    let id = id.to_owned();
    move |source| PcpmError::Namespace {
        id,
        action,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests;

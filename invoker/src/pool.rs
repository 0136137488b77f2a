//! The container pool (contract §6): warm reuse for the same namespace and a structurally
//! equal action, prewarmed stem cells taken by kind and memory, cold starts, LRU eviction of
//! idle warm containers, capacity bounded by the user memory (limits, not usage), and a FIFO
//! run buffer: a run that does not fit waits, and runs behind it wait too (head of line).
//!
//! Idle containers are paused after the grace period and removed after the idle timeout. The
//! pool talks to containers only through [`ContainerFactory`] and [`Container`].
//!
//! Memory is reserved before a backend create starts and given back only once the container's
//! destroy has returned, so the containers a backend holds never add up to more than the user
//! memory. Creates run in tasks of their own: an `acquire` that is dropped (its activation's
//! task aborted) never cancels a create half-way; the container it asked for is removed when
//! the create ends, unless another run joined it.
//!
//! Timers use `tokio::time`, so tests with a paused clock drive the grace period and the idle
//! timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::action::{Action, Exec};
use crate::container::{
    Container, ContainerFactory, ContainerSpec, CreateError, ImageOrigin, ImageRef, Sandbox,
};
use openwhisk::manifest::StemCell;

/// What the pool is configured with.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub user_memory_mb: u64,
    pub pause_grace: Duration,
    pub idle_timeout: Duration,
    /// `wsk<uniqueName><N>`: every container name starts with it and `_`.
    pub name_prefix: String,
    /// `K=V` for every container (`__OW_API_HOST`, extra variables).
    pub env: Vec<String>,
    pub user_cpus: Option<f64>,
    pub stem_cells: Vec<(StemCell, String)>,
    /// An action annotated `sandbox: vm` runs in a VM (`whisk.invoker.vm.allow-annotation`).
    pub allow_vm_annotation: bool,
    /// The mode's backend runs VMs itself (vm mode): every spec is the mode's, so VM actions
    /// share stem cells with the others.
    pub mode_is_vm: bool,
}

/// Whether a container's `/init` happened: the first activation in a container initializes it;
/// the others (concurrent ones) wait and share the outcome.
#[derive(Clone, Debug, Default)]
pub enum InitState {
    #[default]
    Pending,
    Done,
    /// The init failed with this response; runs that waited for it fail the same way.
    Failed(openwhisk::messages::ActivationResponse),
}

/// The outcome of a create: the container, or its error as text for the runs that joined (the
/// run that asked for the container gets the error itself, through [`ErrorSlot`]).
type Outcome = Option<Result<Arc<dyn Container>, String>>;
type ErrorSlot = Arc<Mutex<Option<CreateError>>>;
type Ready = tokio::sync::watch::Receiver<Outcome>;
type ReadyTx = tokio::sync::watch::Sender<Outcome>;

/// How an activation got its container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    Warm,
    Prewarm,
    Cold,
}

#[derive(Debug)]
enum Role {
    /// A stem cell of a kind, not yet initialized.
    Prewarm { kind: String, sandbox: Sandbox },
    /// Serves one namespace's action.
    Warm { namespace: String, identity: String },
}

#[derive(Debug)]
struct Entry {
    key: u64,
    memory_mb: u64,
    role: Role,
    /// None while the container is being created.
    container: Option<Arc<dyn Container>>,
    /// While it is being created: where the outcome will be announced.
    starting: Option<Ready>,
    active: u64,
    max_active: u64,
    paused: bool,
    last_used: Instant,
    /// Bumped on every use; a pause timer only acts if it is unchanged.
    epoch: u64,
    destroying: bool,
    initialized: Arc<tokio::sync::Mutex<InitState>>,
}

impl Entry {
    /// An entry for a container about to be created.
    fn starting(key: u64, memory_mb: u64, role: Role, max_active: u64) -> Self {
        Self {
            key,
            memory_mb,
            role,
            container: None,
            starting: None,
            active: 0,
            max_active,
            paused: false,
            last_used: Instant::now(),
            epoch: 0,
            destroying: false,
            initialized: Arc::default(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Entry>,
    /// Memory of every container that exists or is being created, in MB.
    used_mb: u64,
    /// The most `used_mb` ever was.
    peak_mb: u64,
    /// Acquires not placed yet (waiting for their turn or for memory).
    waiting: usize,
    closed: bool,
}

/// The pool; cheap to clone.
#[derive(Debug, Clone)]
pub struct ContainerPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    factory: Arc<dyn ContainerFactory>,
    config: PoolConfig,
    state: Mutex<State>,
    /// FIFO turn to place a run (tokio's mutex is fair).
    turn: tokio::sync::Mutex<()>,
    changed: Notify,
    keys: AtomicU64,
    names: AtomicU64,
    /// Creates and removals running on their own tasks; shutdown waits for them before the
    /// final sweep, so a create that ends late cannot leave its container behind.
    tasks: tokio_util::task::TaskTracker,
    /// The janitor task, until the service takes it to watch it.
    janitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Cancelled when shutdown begins: removals stop retrying (the sweep follows).
    closing: tokio_util::sync::CancellationToken,
}

/// How long shutdown waits for creates and removals still running.
const SHUTDOWN_TASKS_BOUND: Duration = Duration::from_secs(60);

/// The pauses between the tries of a removal that fails while the pool runs (a backend down for
/// a while: dockerd restarting), doubling from the first to the last, which repeats until the
/// removal works or shutdown begins (its sweep takes over). The container's memory stays
/// reserved meanwhile: the backend may still hold it.
const REMOVE_RETRY_FIRST: Duration = Duration::from_millis(500);
const REMOVE_RETRY_LAST: Duration = Duration::from_secs(30);

/// A container handed to one activation.
#[derive(Debug)]
pub struct Lease {
    inner: Arc<Inner>,
    key: u64,
    pub container: Arc<dyn Container>,
    pub start: Start,
    /// Held by whoever initializes.
    pub initialized: Arc<tokio::sync::Mutex<InitState>>,
    /// More than one activation may run in this container at once (logs are not collected).
    pub shared: bool,
    done: bool,
}

/// Occupancy, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub containers: usize,
    pub prewarms: usize,
    pub busy: usize,
    pub paused: usize,
    pub used_mb: u64,
    /// The most `used_mb` ever was.
    pub peak_mb: u64,
    /// Acquires not placed yet.
    pub waiting: usize,
}

/// A run counted in an entry whose container is being created: until it holds a [`Lease`],
/// dropping it gives its place back.
struct Claim {
    inner: Arc<Inner>,
    key: u64,
    start: Start,
    ready: Ready,
    initialized: Arc<tokio::sync::Mutex<InitState>>,
    shared: bool,
    /// The cold start's own run: where the create's error is left for it.
    error: Option<ErrorSlot>,
    armed: bool,
}

enum Placement {
    Warm(Lease, bool),
    /// A container being created for this run (cold) or for the same action with room for
    /// one more run (joining).
    Starting(Claim),
    Prewarm(Lease, StemCell),
    Wait,
}

impl ContainerPool {
    pub fn new(factory: Arc<dyn ContainerFactory>, config: PoolConfig) -> Self {
        let inner = Arc::new(Inner {
            factory,
            config,
            state: Mutex::new(State::default()),
            turn: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
            keys: AtomicU64::new(1),
            names: AtomicU64::new(1),
            tasks: tokio_util::task::TaskTracker::new(),
            janitor: Mutex::new(None),
            closing: tokio_util::sync::CancellationToken::new(),
        });
        let janitor = Arc::downgrade(&inner);
        let task = tokio::spawn(async move {
            let period = Duration::from_secs(1);
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = janitor.upgrade() else {
                    return;
                };
                if inner.state.lock().closed {
                    return;
                }
                inner.remove_expired();
            }
        });
        *inner.janitor.lock() = Some(task);
        Self { inner }
    }

    /// The janitor task (removes idle containers past their time), once: it ends when the
    /// pool is shut down or dropped, so its end before that (a panic) means idle containers
    /// would hold memory for good.
    pub fn take_janitor(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.janitor.lock().take()
    }

    /// Starts the stem cells of the manifest, as memory allows.
    pub async fn prewarm(&self) {
        let cells = self.inner.config.stem_cells.clone();
        let mut starts = Vec::new();
        for (cell, image) in cells {
            for _ in 0..cell.count {
                // A task each: dropping this future must not cancel a create half-way.
                starts.push(
                    self.inner.tasks.spawn(
                        self.inner
                            .clone()
                            .start_prewarm(cell.clone(), image.clone()),
                    ),
                );
            }
        }
        futures::future::join_all(starts).await;
    }

    /// A container for `action` run by `namespace`: warm, prewarm or cold, waiting in FIFO
    /// order while memory is short. Dropping the future gives back what it held.
    pub async fn acquire(&self, action: &Action, namespace: &str) -> Result<Lease, CreateError> {
        let inner = &self.inner;
        let queued = Queued::new(inner);
        let turn = inner.turn.lock().await;
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match inner.place(action, namespace)? {
                Placement::Warm(lease, was_paused) => {
                    drop((turn, queued));
                    metrics::counter!(crate::metrics::CONTAINER_STARTS_TOTAL, "start" => "warm")
                        .increment(1);
                    if was_paused && let Err(e) = lease.container.resume().await {
                        tracing::warn!(error = %e, "resume failed; replacing the container");
                        lease.destroy();
                        return Box::pin(self.acquire(action, namespace)).await;
                    }
                    return Ok(lease);
                }
                Placement::Prewarm(lease, cell) => {
                    drop((turn, queued));
                    metrics::counter!(crate::metrics::CONTAINER_STARTS_TOTAL, "start" => "prewarm")
                        .increment(1);
                    let image = inner
                        .config
                        .stem_cells
                        .iter()
                        .find(|(c, _)| c.kind == cell.kind && c.memory_mb == cell.memory_mb)
                        .map(|(_, i)| i.clone());
                    if let Some(image) = image {
                        inner.tasks.spawn(inner.clone().start_prewarm(cell, image));
                    }
                    return Ok(lease);
                }
                Placement::Starting(claim) => {
                    drop((turn, queued));
                    let start = match claim.start {
                        Start::Cold => "cold",
                        _ => "warm",
                    };
                    metrics::counter!(crate::metrics::CONTAINER_STARTS_TOTAL, "start" => start)
                        .increment(1);
                    return claim.wait().await;
                }
                Placement::Wait => notified.await,
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        let s = self.inner.state.lock();
        PoolStats {
            containers: s.entries.len(),
            prewarms: s
                .entries
                .iter()
                .filter(|e| matches!(e.role, Role::Prewarm { .. }))
                .count(),
            busy: s.entries.iter().filter(|e| e.active > 0).count(),
            paused: s.entries.iter().filter(|e| e.paused).count(),
            used_mb: s.used_mb,
            peak_mb: s.peak_mb,
            waiting: s.waiting,
        }
    }

    /// Stops placing runs and removes every container (through the backend, by name prefix).
    pub async fn shutdown(&self) -> Result<usize, crate::container::BackendError> {
        let containers: Vec<_> = {
            let mut s = self.inner.state.lock();
            s.closed = true;
            self.inner.closing.cancel();
            // Pause and idle timers leave alone what shutdown removes; containers already
            // being removed are left to whoever removes them.
            let mut containers = Vec::new();
            for e in s.entries.iter_mut() {
                if !std::mem::replace(&mut e.destroying, true)
                    && let Some(c) = e.container.clone()
                {
                    containers.push((e.key, c));
                }
            }
            containers
        };
        self.inner.changed.notify_waiters();
        for (key, c) in containers {
            if let Err(e) = c.destroy().await {
                tracing::warn!(error = %e, "removing a container at shutdown");
            }
            self.inner.forget(key);
        }
        // Creates still running when the pool closed remove their containers when they end:
        // wait for them (and for removals in flight), then sweep whatever the backend still
        // holds under our prefix.
        self.inner.tasks.close();
        if tokio::time::timeout(SHUTDOWN_TASKS_BOUND, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.inner.tasks.len(),
                "creates or removals still running after {SHUTDOWN_TASKS_BOUND:?}; sweeping anyway"
            );
        }
        self.inner
            .factory
            .remove_all(&format!("{}_", self.inner.config.name_prefix))
            .await
    }
}

/// Counts an acquire in [`PoolStats::waiting`] until it is placed or dropped.
struct Queued {
    inner: Arc<Inner>,
}

impl Queued {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.state.lock().waiting += 1;
        Self {
            inner: inner.clone(),
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.inner.state.lock().waiting -= 1;
    }
}

impl Claim {
    /// Waits for the create's outcome; a container becomes this run's lease.
    async fn wait(mut self) -> Result<Lease, CreateError> {
        let outcome = self
            .ready
            .wait_for(Option::is_some)
            .await
            .map(|o| o.clone())
            .ok()
            .flatten();
        match outcome {
            Some(Ok(container)) => {
                self.armed = false;
                Ok(Lease {
                    inner: self.inner.clone(),
                    key: self.key,
                    container,
                    start: self.start,
                    initialized: self.initialized.clone(),
                    shared: self.shared,
                    done: false,
                })
            }
            // The entry is gone with its memory: nothing to give back.
            Some(Err(text)) => {
                self.armed = false;
                match self.error.as_ref().and_then(|slot| slot.lock().take()) {
                    Some(e) => Err(e),
                    None => Err(CreateError::JoinedFailed(text)),
                }
            }
            None => Err(CreateError::Abandoned),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.armed {
            // Never used: the container, if it came to be, is as clean as a new one.
            self.inner.release(self.key, true);
        }
    }
}

impl Inner {
    /// Reserves (`delta > 0`) or gives back memory, and records the level and its peak.
    fn account(s: &mut State, delta: i64) {
        s.used_mb = s.used_mb.saturating_add_signed(delta);
        s.peak_mb = s.peak_mb.max(s.used_mb);
        metrics::gauge!(crate::metrics::POOL_MEMORY_BYTES).set((s.used_mb << 20) as f64);
        metrics::gauge!(crate::metrics::POOL_MEMORY_PEAK_BYTES).set((s.peak_mb << 20) as f64);
    }

    fn place(self: &Arc<Self>, action: &Action, namespace: &str) -> Result<Placement, CreateError> {
        let Exec::Runnable {
            kind, image, local, ..
        } = &action.exec
        else {
            return Err(CreateError::NotRunnable);
        };
        let memory = action.limits.memory_mb;
        let max_active = action.limits.concurrency.max(1);
        let sandbox = self.sandbox_of(action, image);
        let mut s = self.state.lock();
        if s.closed {
            return Err(CreateError::ShuttingDown);
        }
        // 1. Warm.
        let warm = s.entries.iter_mut().find(|e| {
            !e.destroying
                && (e.container.is_some() || e.starting.is_some())
                && e.active < e.max_active
                && matches!(&e.role, Role::Warm { namespace: ns, identity } if ns == namespace && *identity == action.identity)
        });
        if let Some(e) = warm {
            if let (None, Some(ready)) = (&e.container, &e.starting) {
                e.active += 1;
                e.epoch += 1;
                return Ok(Placement::Starting(Claim {
                    inner: self.clone(),
                    key: e.key,
                    start: Start::Warm,
                    ready: ready.clone(),
                    initialized: e.initialized.clone(),
                    shared: e.max_active > 1,
                    error: None,
                    armed: true,
                }));
            }
            let was_paused = std::mem::take(&mut e.paused);
            let lease = self.lease(e, Start::Warm);
            return Ok(Placement::Warm(lease, was_paused));
        }
        // 2. Prewarm of the same kind and memory.
        let pre = s.entries.iter_mut().find(|e| {
            !e.destroying
                && e.container.is_some()
                && e.memory_mb == memory
                && matches!(&e.role, Role::Prewarm { kind: k, sandbox: b } if k == kind && *b == sandbox)
        });
        if let Some(e) = pre {
            e.role = Role::Warm {
                namespace: namespace.to_owned(),
                identity: action.identity.clone(),
            };
            e.max_active = max_active;
            let lease = self.lease(e, Start::Prewarm);
            let cell = StemCell {
                kind: kind.clone(),
                memory_mb: memory,
                count: 1,
            };
            return Ok(Placement::Prewarm(lease, cell));
        }
        // 3. Cold, if it fits.
        if s.used_mb + memory <= self.config.user_memory_mb {
            let key = self.keys.fetch_add(1, Ordering::Relaxed);
            let (ready_tx, ready_rx) = tokio::sync::watch::channel(None);
            Self::account(&mut s, memory as i64);
            let role = Role::Warm {
                namespace: namespace.to_owned(),
                identity: action.identity.clone(),
            };
            let mut entry = Entry::starting(key, memory, role, max_active);
            entry.starting = Some(ready_rx.clone());
            entry.active = 1;
            let error = ErrorSlot::default();
            let claim = Claim {
                inner: self.clone(),
                key,
                start: Start::Cold,
                ready: ready_rx,
                initialized: entry.initialized.clone(),
                shared: max_active > 1,
                error: Some(error.clone()),
                armed: true,
            };
            s.entries.push(entry);
            drop(s);
            let name = self.container_name(namespace, &action.name);
            let origin = match local {
                true => ImageOrigin::Local,
                false => ImageOrigin::Registry,
            };
            let image = ImageRef {
                name: image.clone(),
                origin,
            };
            let spec = self.spec(name, image, memory, sandbox);
            self.tasks
                .spawn(self.clone().cold_start(key, spec, ready_tx, error));
            return Ok(Placement::Starting(claim));
        }
        // 4. Evict least recently used idle warm containers until it would fit.
        let mut freeable: u64 = s
            .entries
            .iter()
            .filter(|e| e.destroying)
            .map(|e| e.memory_mb)
            .sum();
        let need = (s.used_mb + memory).saturating_sub(self.config.user_memory_mb);
        let mut idle: Vec<(Instant, u64, u64)> = s
            .entries
            .iter()
            .filter(|e| {
                !e.destroying
                    && e.active == 0
                    && e.container.is_some()
                    && matches!(e.role, Role::Warm { .. })
            })
            .map(|e| (e.last_used, e.key, e.memory_mb))
            .collect();
        idle.sort();
        let mut victims = Vec::new();
        for (_, key, mb) in idle {
            if freeable >= need {
                break;
            }
            freeable += mb;
            victims.push(key);
        }
        if memory > self.config.user_memory_mb {
            return Err(CreateError::TooBig {
                need_mb: memory,
                have_mb: self.config.user_memory_mb,
            });
        }
        for key in victims {
            if let Some(e) = s.entries.iter_mut().find(|e| e.key == key) {
                tracing::debug!(key, "evicting an idle container");
                e.destroying = true;
                if let Some(c) = e.container.clone() {
                    self.tasks
                        .spawn(self.clone().destroy_entry(key, c, "evicted"));
                }
            }
        }
        Ok(Placement::Wait)
    }

    fn lease(self: &Arc<Self>, e: &mut Entry, start: Start) -> Lease {
        e.active += 1;
        e.epoch += 1;
        e.last_used = Instant::now();
        Lease {
            inner: self.clone(),
            key: e.key,
            container: e
                .container
                .clone()
                .expect("placed entries have a container"),
            start,
            initialized: e.initialized.clone(),
            shared: e.max_active > 1,
            done: false,
        }
    }

    fn container_name(&self, prefix: &str, suffix: &str) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let n = self.names.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}_{n}_{}_{}",
            self.config.name_prefix,
            clean(prefix),
            clean(suffix)
        )
    }

    /// Where an action with this image runs: a VM for the kinds only a VM runs (`wasm:0.1`) and,
    /// where allowed, for an action annotated `sandbox: vm`; else the mode's backend.
    fn sandbox_of(&self, action: &Action, image: &str) -> Sandbox {
        let annotated = || {
            action
                .annotation("sandbox")
                .and_then(serde_json::Value::as_str)
                == Some("vm")
        };
        if !self.config.mode_is_vm
            && (crate::container::vm::requires_vm(image)
                || (self.config.allow_vm_annotation && annotated()))
        {
            Sandbox::Vm
        } else {
            Sandbox::Mode
        }
    }

    fn spec(
        &self,
        name: String,
        image: ImageRef,
        memory_mb: u64,
        sandbox: Sandbox,
    ) -> ContainerSpec {
        let share = (self.config.user_memory_mb / memory_mb.max(1)).max(1);
        ContainerSpec {
            name,
            image,
            memory_mb,
            cpu_shares: (1024 / share).max(2),
            cpus: self
                .config
                .user_cpus
                .map(|c| ((c / share as f64) * 1e5).round() / 1e5)
                .map(|c| c.max(0.01)),
            env: self.config.env.clone(),
            sandbox,
        }
    }

    /// Creates the container of a cold start's entry and announces the outcome to the runs
    /// counted in it. Runs in a task of its own, so it always ends.
    async fn cold_start(
        self: Arc<Self>,
        key: u64,
        spec: ContainerSpec,
        ready: ReadyTx,
        error: ErrorSlot,
    ) {
        let fail = |e: CreateError| {
            let text = openwhisk::errors::chain(&e);
            *error.lock() = Some(e);
            let _ = ready.send(Some(Err(text)));
        };
        let started = Instant::now();
        let created = self.factory.create(&spec).await;
        metrics::histogram!(crate::metrics::CONTAINER_CREATE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let c: Arc<dyn Container> = match created {
            Ok(c) => Arc::from(c),
            Err(e) => {
                fail(e);
                self.forget(key);
                return;
            }
        };
        let unwanted = {
            let mut s = self.state.lock();
            let closed = s.closed;
            match s.entries.iter_mut().find(|e| e.key == key) {
                Some(e) => {
                    e.container = Some(c.clone());
                    e.starting = None;
                    // Shut down meanwhile, or every run that wanted it went away.
                    let why = match (closed, e.active) {
                        (true, _) => Some(CreateError::ShuttingDown),
                        (false, 0) => Some(CreateError::Abandoned),
                        _ => None,
                    };
                    e.destroying |= why.is_some();
                    why
                }
                None => Some(CreateError::Abandoned),
            }
        };
        if let Some(why) = unwanted {
            fail(why);
            self.destroy_entry(key, c, "abandoned").await;
        } else {
            let _ = ready.send(Some(Ok(c)));
        }
    }

    async fn start_prewarm(self: Arc<Self>, cell: StemCell, image: String) {
        let sandbox = match crate::container::vm::requires_vm(&image) && !self.config.mode_is_vm {
            true => Sandbox::Vm,
            false => Sandbox::Mode,
        };
        let key = {
            let mut s = self.state.lock();
            if s.closed || s.used_mb + cell.memory_mb > self.config.user_memory_mb {
                tracing::warn!(kind = %cell.kind, "no memory left for a prewarm container; skipped");
                return;
            }
            Self::account(&mut s, cell.memory_mb as i64);
            let key = self.keys.fetch_add(1, Ordering::Relaxed);
            let role = Role::Prewarm {
                kind: cell.kind.clone(),
                sandbox,
            };
            s.entries
                .push(Entry::starting(key, cell.memory_mb, role, 1));
            key
        };
        let name = self.container_name("prewarm", &cell.kind);
        let spec = self.spec(name, ImageRef::local(image), cell.memory_mb, sandbox);
        match self.factory.create(&spec).await {
            Ok(c) => {
                let c: Arc<dyn Container> = Arc::from(c);
                let unwanted = {
                    let mut s = self.state.lock();
                    let closed = s.closed;
                    match s.entries.iter_mut().find(|e| e.key == key) {
                        Some(e) => {
                            e.container = Some(c.clone());
                            e.destroying |= closed;
                            closed
                        }
                        None => true,
                    }
                };
                if unwanted {
                    self.clone().destroy_entry(key, c, "abandoned").await;
                }
                self.changed.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(kind = %cell.kind, error = %e, "prewarm container failed");
                self.forget(key);
            }
        }
    }

    /// Drops an entry whose container is gone or never came to be, and frees its memory.
    fn forget(&self, key: u64) {
        let mut s = self.state.lock();
        if let Some(i) = s.entries.iter().position(|e| e.key == key) {
            let e = s.entries.remove(i);
            Self::account(&mut s, -(e.memory_mb as i64));
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Removes a container, trying again while it fails and the pool runs, then frees its
    /// memory.
    async fn destroy_entry(self: Arc<Self>, key: u64, c: Arc<dyn Container>, reason: &'static str) {
        metrics::counter!(crate::metrics::CONTAINERS_REMOVED_TOTAL, "reason" => reason)
            .increment(1);
        let mut pause = REMOVE_RETRY_FIRST;
        while let Err(e) = c.destroy().await {
            metrics::counter!(crate::metrics::CONTAINER_REMOVE_FAILURES_TOTAL).increment(1);
            tracing::warn!(container = c.id(), error = %openwhisk::errors::chain(&e), retry_in_ms = pause.as_millis() as u64, "removing a container failed");
            tokio::select! {
                // Checked first: once shutdown began, its sweep removes what is left.
                biased;
                () = self.closing.cancelled() => {
                    tracing::warn!(container = c.id(), "a failed removal is left to the shutdown sweep");
                    break;
                }
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(REMOVE_RETRY_LAST);
        }
        self.forget(key);
    }

    fn release(self: &Arc<Self>, key: u64, healthy: bool) {
        let mut s = self.state.lock();
        let Some(e) = s.entries.iter_mut().find(|e| e.key == key) else {
            return;
        };
        e.active = e.active.saturating_sub(1);
        e.last_used = Instant::now();
        e.epoch += 1;
        if !healthy && !e.destroying {
            e.destroying = true;
            if let Some(c) = e.container.clone() {
                self.tasks
                    .spawn(self.clone().destroy_entry(key, c, "unhealthy"));
            }
        } else if e.active == 0 && !e.destroying && e.container.is_some() {
            let epoch = e.epoch;
            let grace = self.config.pause_grace;
            let inner = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                inner.pause_if_idle(key, epoch).await;
            });
        }
        drop(s);
        self.changed.notify_waiters();
    }

    async fn pause_if_idle(self: Arc<Self>, key: u64, epoch: u64) {
        let c = {
            let mut s = self.state.lock();
            let Some(e) = s.entries.iter_mut().find(|e| e.key == key) else {
                return;
            };
            if e.epoch != epoch || e.active > 0 || e.destroying || e.paused {
                return;
            }
            e.paused = true;
            e.container.clone()
        };
        if let Some(c) = c
            && let Err(e) = c.pause().await
        {
            tracing::warn!(error = %e, "pause failed; removing the container");
            {
                let mut s = self.state.lock();
                if let Some(e) = s.entries.iter_mut().find(|e| e.key == key) {
                    e.destroying = true;
                }
            }
            self.clone().destroy_entry(key, c, "unhealthy").await;
        }
    }

    fn remove_expired(self: &Arc<Self>) {
        let timeout = self.config.idle_timeout;
        let mut s = self.state.lock();
        for e in s.entries.iter_mut() {
            let idle = e.active == 0 && !e.destroying && matches!(e.role, Role::Warm { .. });
            if idle
                && e.last_used.elapsed() >= timeout
                && let Some(c) = e.container.clone()
            {
                e.destroying = true;
                self.tasks
                    .spawn(self.clone().destroy_entry(e.key, c, "idle"));
            }
        }
    }
}

impl Lease {
    /// Hands the container back: `healthy == false` (status 2 or 3, a log error) removes it.
    pub fn finish(mut self, healthy: bool) {
        self.done = true;
        self.inner.release(self.key, healthy);
    }

    fn destroy(mut self) {
        self.done = true;
        self.inner.release(self.key, false);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.done {
            // Dropped mid-activation (a panic, a cancelled task): the state is unknown.
            self.inner.release(self.key, false);
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;

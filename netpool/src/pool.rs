//! The pool: leases, background refill, recycling, crash recovery and shutdown.
//!
//! # Behavior
//! - [`NetPool::lease`] pops an idle slot (no syscall, no RTNL: microseconds). When none is
//!   idle it waits for the refill up to the deadline, or creates one inline, as configured;
//!   either way it fails with an error rather than silently. Waiting leases are served in the
//!   order they came: a slot that becomes idle goes to the oldest one, never to a newcomer.
//! - A background task refills between the watermarks: when fewer than `low_watermark` slots
//!   are idle it creates up to `high_watermark`, at most `max_concurrent_creates` at once.
//!   After a failed creation it pauses, 100 ms doubling with each failure in a row up to 5 s.
//! - [`Lease::release`] scrubs and verifies the slot ([`crate::slot`]) and returns it to the
//!   idle queue, or destroys it and lets the refill replace it; [`Lease::release_nowait`] does
//!   the same in the background, so a teardown path does not wait for it. A lease dropped
//!   without release is tainted and destroyed.
//! - A destroyed slot's id (and so its address and names) is reused only once the kernel has
//!   removed its host veth.
//! - [`NetPool::new`] first refuses a subnet that overlaps an address or a route already on
//!   the host ([`PoolError::Overlap`], naming the pool, its range and each address or route
//!   with its link), before changing anything; only the pool's own bridges from an earlier run
//!   do not count. Each bridge's block is checked again just before the bridge is created, for
//!   ranges that appeared since. With [`PoolConfig::subnet_auto`] it picks a free range instead.
//! - It then removes whatever an earlier run of the same pool (same name) left: namespace
//!   mounts, veths, bridges and their conntrack entries. [`NetPool::shutdown`] removes
//!   everything the pool made, leased slots included.
//! - A pool dropped without shutdown closes and is freed with its last lease; its kernel
//!   objects stay for the next start's reconcile (see [`NetPool`]).
//!
//! All host work goes through [`Sys`] ([`Kernel`] outside unit tests); its unmounts, file
//! removals and conntrack table reads run on tokio's blocking pool, and destructors hand
//! their destroys to a task, so no tokio worker blocks on them.
//!
//! # Limitations
//! - Slots of an earlier run are destroyed, not adopted: their tenants' state is unknown.
//! - Counters of a recycled slot (`/proc/net/snmp`, link statistics) cannot be reset; the next
//!   tenant can read its predecessor's traffic volume.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::addressing::{Addressing, Allocator, SlotAddress, SlotId};
use crate::config::{AUTO_SUBNET_FIRST, AUTO_SUBNET_LAST, OnEmpty, PoolConfig, PoolConfigError};
use crate::metrics as m;
use crate::slot::{ScrubFailure, Slot};
use crate::sys::kernel::Kernel;
use crate::sys::{HostNet, Sys, SysError};

/// How long a destroyed slot's host veth may take to disappear before it is deleted by hand.
const VETH_GONE_TIMEOUT: Duration = Duration::from_secs(5);
const VETH_POLL: Duration = Duration::from_millis(20);
/// The refill's pause after the first failed creation; it doubles with each further failure
/// in a row, up to [`CREATE_BACKOFF_MAX`], so a broken host is not hammered in a loop.
const CREATE_BACKOFF_BASE: Duration = Duration::from_millis(100);
const CREATE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("invalid pool configuration")]
    Config(#[from] PoolConfigError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("pool {pool}: no slot within {waited:?}")]
    Timeout { pool: String, waited: Duration },
    #[error("pool {0} is shut down")]
    ShutDown(String),
    #[error(
        "pool {pool}: subnet {subnet}/{prefix_len} overlaps what is already on the host: {}; \
         give each pool on a host a range of its own",
        conflicts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Overlap {
        pool: String,
        subnet: Ipv4Addr,
        prefix_len: u8,
        /// Every address and route of the host (not of this pool) that the range overlaps.
        conflicts: Vec<HostNet>,
    },
    #[error(
        "pool {pool}: no /{prefix_len} between {AUTO_SUBNET_FIRST} and {AUTO_SUBNET_LAST} is free \
         of the host's addresses and routes"
    )]
    NoFreeSubnet { pool: String, prefix_len: u8 },
    #[error("pool {pool}: {} teardown step(s) failed: {}", errors.len(), join(errors))]
    Teardown { pool: String, errors: Vec<SysError> },
}

fn join(errors: &[SysError]) -> String {
    errors
        .iter()
        .map(|e| {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What became of a released slot.
#[derive(Debug)]
pub enum Released {
    /// Clean: back in the pool for the next tenant.
    Recycled,
    /// Destroyed (the refill replaces it), and why.
    Destroyed(ScrubFailure),
}

/// Counts of the pool's slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub idle: usize,
    pub leased: usize,
    pub creating: usize,
    /// Ids held by live slots or by slots the kernel is still tearing down.
    pub allocated: usize,
    pub bridges: usize,
}

#[derive(Debug)]
struct State {
    idle: VecDeque<Slot>,
    /// Leases waiting for a slot, oldest first; a slot that becomes idle goes to the first one
    /// still waiting. While one waits, `idle` is empty.
    waiters: VecDeque<oneshot::Sender<Slot>>,
    leased: usize,
    creating: usize,
    filling: bool,
    closed: bool,
    allocator: Allocator,
    /// Every live slot's address, idle or leased, so shutdown can reach leased ones too.
    live: HashMap<SlotId, SlotAddress>,
    /// Creations failed in a row, and until when the refill starts no new one.
    create_failures: u32,
    retry_at: Option<Instant>,
}

/// A slot coming back to the background task.
#[derive(Debug)]
enum Returned {
    /// Released without waiting: scrub, then recycle or destroy.
    Released(Slot),
    /// Dropped without release: destroy.
    Tainted(Slot),
}

#[derive(Debug)]
struct Inner {
    config: PoolConfig,
    addressing: Addressing,
    sys: Box<dyn Sys>,
    state: Mutex<State>,
    /// Woken whenever a slot becomes idle or the pool closes.
    available: Notify,
    /// Wakes the background task, which holds its own reference: it waits holding only a
    /// `Weak` to the pool.
    wake: Arc<Notify>,
    create_permits: Semaphore,
    /// Bridge index by bridge number; the async lock serializes their creation.
    bridges: tokio::sync::Mutex<HashMap<u16, u32>>,
    /// Each slot travels with a reference to the pool, so the pool lives until the slot is
    /// dealt with even when its last lease sent it.
    returns: mpsc::UnboundedSender<(Returned, Arc<Inner>)>,
    /// Slot ids waiting for the kernel to remove their host veth.
    pending_frees: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
}

/// A pool of pre-created network namespaces. Cheap to clone; every clone is the same pool.
///
/// # Dropped without shutdown
/// When the last clone is dropped without [`NetPool::shutdown`], the pool closes: the refill
/// stops, waiting leases fail with [`PoolError::ShutDown`], and the pool's memory, fds and
/// tasks are freed once the last [`Lease`] is gone (a lease that ends then destroys its slot).
/// Its kernel objects (namespace mounts, veths, bridges, firewall rules) stay on the host:
/// removing them needs async netlink work that a destructor cannot wait for. The next
/// [`NetPool::new`] with the same name removes them, as after a crash.
#[derive(Clone, Debug)]
pub struct NetPool {
    inner: Arc<Inner>,
    handle: Arc<PoolHandle>,
}

/// Shared by a pool's clones; closes the pool when the last one goes without a shutdown.
struct PoolHandle {
    inner: Arc<Inner>,
    /// The background task; `None` once shut down.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Turns true when the background task has ended, however it ended.
    ended: tokio::sync::watch::Receiver<bool>,
}

/// Tells [`NetPool::maintenance_ended`]'s watchers that the background task ended: dropped
/// when it returns, panics or is aborted.
struct EndedGuard(tokio::sync::watch::Sender<bool>);

impl Drop for EndedGuard {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl std::fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHandle")
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        // The task keeps destroying what leases still return, and ends with the pool.
        if self.task.get_mut().take().is_none() {
            return;
        }
        self.inner.close();
        tracing::warn!(
            pool = %self.inner.config.name,
            "pool dropped without shutdown: its namespaces, veths and bridges stay until the next start of this pool removes them"
        );
    }
}

impl NetPool {
    /// Validates `config`, removes what an earlier run of this pool left behind, and starts the
    /// background refill. Must be called inside a tokio runtime.
    pub async fn new(config: PoolConfig) -> Result<Self, PoolError> {
        config.validate()?;
        let sys = Kernel::new()?;
        // With `subnet_auto`, the search and the claim (the first bridge) happen under a
        // host-wide lock: two pools starting at once would otherwise pick the same range, and
        // one of them would be refused for the other's bridge (or, worse, both would get it).
        let _claim = if config.subnet_auto {
            Some(auto_subnet_lock(&config).await)
        } else {
            None
        };
        Self::with_sys(config, Box::new(sys)).await
    }

    /// [`NetPool::new`] on any [`Sys`]: the kernel, or a fake in unit tests.
    pub(crate) async fn with_sys(
        mut config: PoolConfig,
        sys: Box<dyn Sys>,
    ) -> Result<Self, PoolError> {
        config.validate()?;
        m::describe();
        if config.subnet_auto {
            config.subnet = pick_free_subnet(&config, &*sys).await?;
            tracing::info!(pool = %config.name, subnet = %config.subnet, prefix_len = config.subnet_prefix_len, "free subnet chosen");
        }
        let addressing = Addressing::new(&config);
        // Before anything changes on the host: a refused pool leaves nothing behind.
        check_overlap(&config, &addressing, &*sys).await?;
        reconcile(&config, &addressing, &*sys).await?;
        sys.prepare(&config.ns_dir).await?;
        // Before the first bridge: no slot is ever unguarded.
        if config.guard_host
            && let Err(e) = sys
                .install_guard(&config.name, &config.allow_host_ports)
                .await
        {
            if let Err(undo) = sys.remove_ns_dir(&config.ns_dir).await {
                tracing::error!(pool = %config.name, error = %undo, "cannot remove the namespace folder after a failed start");
            }
            return Err(e.into());
        }
        let (returns, returns_rx) = mpsc::unbounded_channel();
        let bridges = u16::try_from(config.bridge_count()).unwrap_or(u16::MAX);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                idle: VecDeque::new(),
                waiters: VecDeque::new(),
                leased: 0,
                creating: 0,
                filling: false,
                closed: false,
                allocator: Allocator::new(config.slots_per_bridge, bridges),
                live: HashMap::new(),
                create_failures: 0,
                retry_at: None,
            }),
            create_permits: Semaphore::new(config.max_concurrent_creates),
            addressing,
            sys,
            available: Notify::new(),
            wake: Arc::new(Notify::new()),
            bridges: tokio::sync::Mutex::new(HashMap::new()),
            returns,
            pending_frees: tokio::sync::Mutex::new(tokio::task::JoinSet::new()),
            config,
        });
        let (ended_tx, ended) = tokio::sync::watch::channel(false);
        let work = background(Arc::downgrade(&inner), inner.wake.clone(), returns_rx);
        let task = tokio::spawn(async move {
            let _ended = EndedGuard(ended_tx);
            work.await;
        });
        let pool = Self {
            handle: Arc::new(PoolHandle {
                inner: inner.clone(),
                task: Mutex::new(Some(task)),
                ended,
            }),
            inner,
        };
        if pool.inner.config.subnet_auto
            && let Err(e) = pool.inner.bridge(0).await
        {
            // Undo what the start made (the namespace folder), then report the cause.
            if let Err(teardown) = pool.clone().shutdown().await {
                tracing::error!(pool = %pool.inner.config.name, error = %teardown, "teardown after a failed start failed");
            }
            return Err(e);
        }
        pool.inner.wake.notify_one();
        tracing::info!(pool = %pool.inner.config.name, "netpool started");
        Ok(pool)
    }

    /// Resolves when the pool's background task (refill, recycling, destruction) has ended:
    /// at [`NetPool::shutdown`], or, while the pool is in use, because it panicked. A service
    /// that depends on the refill watches this to stop instead of waiting for slots that no
    /// longer come.
    pub fn maintenance_ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut ended = self.handle.ended.clone();
        async move {
            // An error means the sender is gone, i.e. the task ended too.
            let _ = ended.wait_for(|e| *e).await;
        }
    }

    /// The pool's range: the configured one, or the one [`PoolConfig::subnet_auto`] chose.
    pub fn subnet(&self) -> (Ipv4Addr, u8) {
        (
            self.inner.config.subnet,
            self.inner.config.subnet_prefix_len,
        )
    }

    /// Leases a slot, waiting at most the configured `lease_timeout`.
    pub async fn lease(&self) -> Result<Lease, PoolError> {
        self.lease_within(self.inner.config.lease_timeout).await
    }

    /// Leases a slot, waiting at most `timeout`. Callers that wait are served in the order they
    /// came.
    #[tracing::instrument(name = "netpool.lease", skip_all, fields(pool = %self.inner.config.name))]
    pub async fn lease_within(&self, timeout: Duration) -> Result<Lease, PoolError> {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + timeout;
        if let Some(slot) = inner.take_idle()? {
            return Ok(self.leased(slot, started));
        }
        inner.wake.notify_one();
        if inner.config.on_empty == OnEmpty::CreateInline
            && let Some(slot) = inner.create_one().await?
        {
            inner.count_lease();
            return Ok(self.leased(slot, started));
        }
        // Queued behind earlier callers, unless a slot came back meanwhile.
        let mut waiter = match inner.take_or_queue()? {
            Ok(slot) => return Ok(self.leased(slot, started)),
            Err(waiter) => waiter,
        };
        match tokio::time::timeout_at(deadline, &mut waiter.rx).await {
            Ok(Ok(slot)) => Ok(self.leased(slot, started)),
            Ok(Err(_)) => Err(PoolError::ShutDown(inner.config.name.clone())),
            Err(_) => {
                // A slot handed over just as the deadline passed is this caller's.
                waiter.rx.close();
                if let Ok(slot) = waiter.rx.try_recv() {
                    return Ok(self.leased(slot, started));
                }
                counter!(m::LEASE_TIMEOUTS_TOTAL, "pool" => inner.config.name.clone()).increment(1);
                Err(PoolError::Timeout {
                    pool: inner.config.name.clone(),
                    waited: started.elapsed(),
                })
            }
        }
    }

    /// A lease on `slot`, which is already counted as leased.
    fn leased(&self, slot: Slot, started: Instant) -> Lease {
        histogram!(m::LEASE_WAIT_SECONDS, "pool" => self.inner.config.name.clone())
            .record(started.elapsed().as_secs_f64());
        Lease::new(slot, self.inner.clone())
    }

    /// Current counts.
    pub fn stats(&self) -> PoolStats {
        let st = self.inner.state.lock();
        PoolStats {
            idle: st.idle.len(),
            leased: st.leased,
            creating: st.creating,
            allocated: st.allocator.in_use(),
            bridges: self
                .inner
                .bridges
                .try_lock()
                .map(|b| b.len())
                .unwrap_or_default(),
        }
    }

    /// Waits until at least `n` slots are idle (for warm-up), or the timeout passes.
    pub async fn wait_idle(&self, n: usize, timeout: Duration) -> Result<(), PoolError> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.inner.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.state.lock().idle.len() >= n {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(PoolError::Timeout {
                    pool: self.inner.config.name.clone(),
                    waited: timeout,
                });
            }
        }
    }

    /// Stops the refill and removes every slot (leased ones too), bridge and mount of the pool,
    /// waiting until the kernel has removed the veths. Keeps going past failures and reports
    /// all of them.
    #[tracing::instrument(name = "netpool.shutdown", skip_all, fields(pool = %self.inner.config.name))]
    pub async fn shutdown(self) -> Result<(), PoolError> {
        let inner = &self.inner;
        let sys = &*inner.sys;
        inner.close();
        let (idle, leased): (Vec<Slot>, Vec<SlotAddress>) = {
            let mut st = inner.state.lock();
            let idle: Vec<Slot> = st.idle.drain(..).collect();
            for s in &idle {
                st.live.remove(&s.addr.id);
            }
            let leased = st.live.drain().map(|(_, a)| a).collect();
            inner.publish(&st);
            (idle, leased)
        };
        let task = self.handle.task.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        // Wait for creations in flight: they hold permits.
        let _all = inner
            .create_permits
            .acquire_many(u32::try_from(inner.config.max_concurrent_creates).unwrap_or(u32::MAX))
            .await;
        let mut errors = Vec::new();
        let mut gone = Vec::new();
        for slot in idle {
            gone.push(slot.addr.clone());
            if let Err(e) = slot.destroy(sys).await {
                errors.push(e);
            }
            counter!(m::SLOTS_DESTROYED_TOTAL, "pool" => inner.config.name.clone(), "reason" => "shutdown").increment(1);
        }
        for addr in leased {
            // The lease holder's fd keeps its namespace until it lets go; the mount goes now.
            if let Err(e) = sys.remove_netns(&addr.ns_path).await {
                errors.push(e);
            }
            gone.push(addr);
            counter!(m::SLOTS_DESTROYED_TOTAL, "pool" => inner.config.name.clone(), "reason" => "shutdown").increment(1);
        }
        let mut frees = inner.pending_frees.lock().await;
        while frees.join_next().await.is_some() {}
        drop(frees);
        for addr in &gone {
            if let Err(e) = wait_veth_gone(sys, &addr.host_if).await {
                errors.push(e);
            }
            if let Err(e) = sys.flush_conntrack(addr.ip).await {
                errors.push(e);
            }
        }
        let bridges: Vec<(u16, u32)> = inner.bridges.lock().await.drain().collect();
        for (b, index) in bridges {
            let (name, _) = inner.addressing.bridge(b);
            if let Err(e) = sys.delete_host_link(index, &name).await {
                errors.push(e);
            }
            if let Err(e) = sys.remove_intra_bridge(&name).await {
                errors.push(e);
            }
        }
        errors.extend(sys.remove_guard(&inner.config.name).await);
        if let Err(e) = sys.remove_ns_dir(&inner.config.ns_dir).await {
            errors.push(e);
        }
        tracing::info!(pool = %inner.config.name, errors = errors.len(), "netpool shut down");
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PoolError::Teardown {
                pool: inner.config.name.clone(),
                errors,
            })
        }
    }
}

/// A lease's place in the queue. Dropped before it was served (the caller gave up, or its
/// future was dropped), it puts back a slot handed to it meanwhile, so none is lost.
struct Waiter {
    rx: oneshot::Receiver<Slot>,
    pool: Arc<Inner>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(slot) = self.rx.try_recv() {
            self.pool.state.lock().leased -= 1;
            if let Some(slot) = self.pool.push_idle(slot) {
                tracing::debug!(pool = %self.pool.config.name, "pool closed while a slot was handed over");
                self.pool.destroy_detached(slot);
            }
        }
    }
}

/// What the refill does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RefillPlan {
    /// Creations to start now.
    start: usize,
    /// Whether the refill is between the watermarks (it keeps going until `high_watermark`
    /// slots are idle or being created).
    filling: bool,
}

/// The refill's decision: it starts when fewer than `low_watermark` slots are idle, creates up
/// to `high_watermark` idle-or-creating slots without exceeding `max_slots` allocated ids, and
/// starts nothing while backing off after failures.
fn plan_refill(
    config: &PoolConfig,
    idle: usize,
    creating: usize,
    allocated: usize,
    filling: bool,
    backing_off: bool,
) -> RefillPlan {
    let filling = filling || idle < config.low_watermark;
    let have = idle + creating;
    let room = config.max_slots.saturating_sub(allocated);
    let start = if filling && !backing_off && have < config.high_watermark {
        (config.high_watermark - have).min(room)
    } else {
        0
    };
    RefillPlan {
        start,
        filling: filling && have < config.high_watermark,
    }
}

/// The refill's pause after `failures` failed creations in a row.
fn create_backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => CREATE_BACKOFF_BASE
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(CREATE_BACKOFF_MAX),
    }
}

impl Inner {
    /// Refuses new leases, fails the waiting ones and stops the refill.
    fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        // Dropping the senders tells every waiting lease that the pool is shut down.
        st.waiters.clear();
        self.publish(&st);
        drop(st);
        self.available.notify_waiters();
        self.wake.notify_one();
    }

    /// Destroys `slot` from a destructor: on tokio's blocking pool through a task when a
    /// runtime is there; without one the mount stays for the next start's reconcile.
    fn destroy_detached(self: &Arc<Self>, slot: Slot) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let inner = self.clone();
                rt.spawn(async move {
                    let id = slot.addr.id;
                    if let Err(e) = slot.destroy(&*inner.sys).await {
                        tracing::error!(pool = %inner.config.name, slot = %id, error = %e, "slot destroy failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(pool = %self.config.name, slot = %slot.addr.id, "no tokio runtime to destroy the slot: its mount stays for the next start");
            }
        }
    }

    fn publish(&self, st: &State) {
        gauge!(m::SLOTS_IDLE, "pool" => self.config.name.clone()).set(st.idle.len() as f64);
        gauge!(m::SLOTS_LEASED, "pool" => self.config.name.clone()).set(st.leased as f64);
    }

    fn count_lease(&self) {
        let mut st = self.state.lock();
        st.leased += 1;
        self.publish(&st);
    }

    /// Takes the oldest idle slot, counted as leased. Fails when the pool is shut down.
    fn take_idle(&self) -> Result<Option<Slot>, PoolError> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(PoolError::ShutDown(self.config.name.clone()));
        }
        Ok(self.pop_idle(&mut st))
    }

    /// Like [`Inner::take_idle`], but when no slot is idle the caller joins the queue of
    /// waiting leases.
    fn take_or_queue(self: &Arc<Self>) -> Result<Result<Slot, Waiter>, PoolError> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(PoolError::ShutDown(self.config.name.clone()));
        }
        if let Some(slot) = self.pop_idle(&mut st) {
            return Ok(Ok(slot));
        }
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back(tx);
        Ok(Err(Waiter {
            rx,
            pool: self.clone(),
        }))
    }

    fn pop_idle(&self, st: &mut State) -> Option<Slot> {
        let slot = st.idle.pop_front()?;
        st.leased += 1;
        self.publish(st);
        if st.idle.len() < self.config.low_watermark {
            self.wake.notify_one();
        }
        Some(slot)
    }

    /// Creates one slot, respecting `max_slots` and the creation bound. `Ok(None)` when the pool
    /// is full (or closed).
    async fn create_one(self: &Arc<Self>) -> Result<Option<Slot>, PoolError> {
        let _permit = self
            .create_permits
            .acquire()
            .await
            .map_err(|_| PoolError::ShutDown(self.config.name.clone()))?;
        let id = {
            let mut st = self.state.lock();
            if st.closed || st.allocator.in_use() >= self.config.max_slots {
                return Ok(None);
            }
            match st.allocator.allocate() {
                Some(id) => id,
                None => return Ok(None),
            }
        };
        let started = Instant::now();
        let result = async {
            let bridge = self.bridge(id.bridge).await?;
            let slot = self
                .sys
                .create_slot(
                    self.addressing.slot(id),
                    bridge,
                    self.config.kind,
                    self.config.isolate_slots,
                )
                .await?;
            Ok::<_, PoolError>(slot)
        }
        .await;
        match result {
            Ok(slot) => {
                counter!(m::SLOTS_CREATED_TOTAL, "pool" => self.config.name.clone()).increment(1);
                histogram!(m::SLOT_CREATE_SECONDS, "pool" => self.config.name.clone())
                    .record(started.elapsed().as_secs_f64());
                let closed = {
                    let mut st = self.state.lock();
                    st.create_failures = 0;
                    st.retry_at = None;
                    if !st.closed {
                        st.live.insert(id, slot.addr.clone());
                    }
                    st.closed
                };
                if closed {
                    let _ = slot.destroy(&*self.sys).await;
                    return Ok(None);
                }
                Ok(Some(slot))
            }
            Err(e) => {
                counter!(m::SLOT_CREATE_FAILURES_TOTAL, "pool" => self.config.name.clone())
                    .increment(1);
                let pause = {
                    let mut st = self.state.lock();
                    st.create_failures = st.create_failures.saturating_add(1);
                    let pause = create_backoff(st.create_failures);
                    st.retry_at = Some(Instant::now() + pause);
                    pause
                };
                tracing::warn!(pool = %self.config.name, slot = %id, error = %e, retry_in_ms = pause.as_millis() as u64, "slot creation failed");
                self.free_when_gone(self.addressing.slot(id)).await;
                Err(e)
            }
        }
    }

    /// The index of bridge `b`, created (with its gateway address) on first use, unless its
    /// block overlaps a range that appeared on the host since the pool started.
    async fn bridge(&self, b: u16) -> Result<u32, PoolError> {
        let mut bridges = self.bridges.lock().await;
        if let Some(&index) = bridges.get(&b) {
            return Ok(index);
        }
        let (name, gateway) = self.addressing.bridge(b);
        let block = Ipv4Addr::from(u32::from(gateway) - 1);
        let prefix_len = self.addressing.bridge_prefix_len();
        let conflicts = foreign_overlaps(
            &self.addressing.bridge_prefix(),
            self.sys.host_networks().await?,
            block,
            prefix_len,
        );
        if !conflicts.is_empty() {
            return Err(PoolError::Overlap {
                pool: self.config.name.clone(),
                subnet: block,
                prefix_len,
                conflicts,
            });
        }
        let index = self
            .sys
            .create_bridge(
                &name,
                gateway,
                self.addressing.bridge_prefix_len(),
                self.addressing.bridge_mac(b),
            )
            .await?;
        let guarded = if self.config.guard_host {
            self.sys.guard_bridge(&self.config.name, &name).await
        } else {
            Ok(())
        };
        let opened = match guarded {
            Ok(()) if !self.config.isolate_slots => self.sys.allow_intra_bridge(&name).await,
            other => other,
        };
        if let Err(e) = opened {
            // The guard's jumps of this bridge go with the guard (at shutdown) when they
            // cannot go now; the bridge goes at once.
            if let Err(undo) = self.sys.delete_host_link(index, &name).await {
                tracing::error!(pool = %self.config.name, bridge = %name, error = %undo, "cannot delete a bridge whose firewall rules failed");
            }
            let _ = self.sys.remove_intra_bridge(&name).await;
            return Err(e.into());
        }
        tracing::info!(pool = %self.config.name, bridge = %name, %gateway, "bridge created");
        bridges.insert(b, index);
        Ok(index)
    }

    /// Scrubs a returned slot, then puts it back in the idle queue or destroys it.
    #[tracing::instrument(name = "netpool.recycle", skip_all, fields(pool = %self.config.name, slot = %slot.addr.id))]
    async fn recycle(self: &Arc<Self>, slot: Slot) -> Released {
        let name = self.config.name.clone();
        match slot.scrub().await {
            Ok(()) => match self.push_idle(slot) {
                None => {
                    counter!(m::SLOTS_RECYCLED_TOTAL, "pool" => name).increment(1);
                    Released::Recycled
                }
                Some(slot) => {
                    self.destroy(slot, "shutdown").await;
                    Released::Destroyed(ScrubFailure::State("the pool is shut down".into()))
                }
            },
            Err(failure) => {
                counter!(m::SCRUB_FAILURES_TOTAL, "pool" => name.clone(), "check" => failure.check()).increment(1);
                tracing::info!(pool = %name, slot = %slot.addr.id, reason = %failure, "released slot destroyed");
                self.destroy(slot, "scrub_failed").await;
                Released::Destroyed(failure)
            }
        }
    }

    /// Hands `slot` to the oldest waiting lease, or puts it in the idle queue. Gives it back
    /// when the pool is shut down.
    #[must_use = "a slot given back must be destroyed"]
    fn push_idle(&self, mut slot: Slot) -> Option<Slot> {
        let mut st = self.state.lock();
        if st.closed {
            return Some(slot);
        }
        // Senders whose lease gave up fail and give the slot back.
        while let Some(waiter) = st.waiters.pop_front() {
            match waiter.send(slot) {
                Ok(()) => {
                    st.leased += 1;
                    self.publish(&st);
                    return None;
                }
                Err(back) => slot = back,
            }
        }
        st.idle.push_back(slot);
        self.publish(&st);
        drop(st);
        self.available.notify_waiters();
        None
    }

    /// Destroys a slot and frees its id once the kernel has removed its host veth.
    async fn destroy(self: &Arc<Self>, slot: Slot, reason: &'static str) {
        let addr = slot.addr.clone();
        self.state.lock().live.remove(&addr.id);
        if let Err(e) = slot.destroy(&*self.sys).await {
            tracing::error!(pool = %self.config.name, slot = %addr.id, error = %e, "slot destroy failed");
        }
        counter!(m::SLOTS_DESTROYED_TOTAL, "pool" => self.config.name.clone(), "reason" => reason)
            .increment(1);
        self.free_when_gone(addr).await;
        self.wake.notify_one();
    }

    async fn free_when_gone(self: &Arc<Self>, addr: SlotAddress) {
        let weak = Arc::downgrade(self);
        let mut frees = self.pending_frees.lock().await;
        frees.spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            if let Err(e) = wait_veth_gone(&*inner.sys, &addr.host_if).await {
                // The id stays allocated: reusing it could clash with what still exists.
                tracing::error!(pool = %inner.config.name, slot = %addr.id, error = %e, "slot id quarantined");
                return;
            }
            if let Err(e) = inner.sys.flush_conntrack(addr.ip).await {
                tracing::warn!(pool = %inner.config.name, slot = %addr.id, error = %e, "conntrack flush failed");
            }
            inner.state.lock().allocator.free(addr.id);
            inner.wake.notify_one();
        });
        // Reap finished ones so the set stays small.
        while frees.try_join_next().is_some() {}
    }
}

/// Waits until host link `name` is gone; deletes it when the kernel has not removed it in time
/// (something still pins the namespace).
async fn wait_veth_gone(sys: &dyn Sys, name: &str) -> Result<(), SysError> {
    let deadline = Instant::now() + VETH_GONE_TIMEOUT;
    loop {
        match sys.host_link_index(name).await? {
            None => return Ok(()),
            Some(index) if Instant::now() >= deadline => {
                tracing::warn!(veth = name, "host veth outlived its namespace; deleting it");
                return sys.delete_host_link(index, name).await;
            }
            Some(_) => tokio::time::sleep(VETH_POLL).await,
        }
    }
}

/// The background task: destroys tainted slots and refills between the watermarks. It waits
/// holding only `weak`, so a pool whose handles and leases are all gone is freed (the return
/// channel then closes, which ends the task).
async fn background(
    weak: std::sync::Weak<Inner>,
    wake: Arc<Notify>,
    mut returns: mpsc::UnboundedReceiver<(Returned, Arc<Inner>)>,
) {
    loop {
        let Some(retry_at) = weak.upgrade().map(|inner| inner.state.lock().retry_at) else {
            return;
        };
        let (woke, held) = tokio::select! {
            r = returns.recv() => match r {
                Some((r, inner)) => (Some(r), Some(inner)),
                // Every sender is gone with the pool.
                None => return,
            },
            () = wake.notified() => (None, None),
            // The end of a back-off: the refill resumes by itself.
            () = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => (None, None),
        };
        let Some(inner) = held.or_else(|| weak.upgrade()) else {
            return;
        };
        match woke {
            Some(Returned::Released(slot)) => {
                let inner = inner.clone();
                tokio::spawn(async move { inner.recycle(slot).await });
            }
            Some(Returned::Tainted(slot)) => inner.destroy(slot, "tainted").await,
            None => {}
        }
        let to_start = {
            let mut st = inner.state.lock();
            // A closed pool refills no more, but slots its leases return are still destroyed,
            // until the pool is freed.
            if st.closed {
                continue;
            }
            let now = Instant::now();
            if st.retry_at.is_some_and(|at| at <= now) {
                st.retry_at = None;
            }
            let plan = plan_refill(
                &inner.config,
                st.idle.len(),
                st.creating,
                st.allocator.in_use(),
                st.filling,
                st.retry_at.is_some(),
            );
            st.filling = plan.filling;
            st.creating += plan.start;
            plan.start
        };
        for _ in 0..to_start {
            let inner = inner.clone();
            tokio::spawn(async move {
                // Failures are logged, counted and turned into a back-off in create_one.
                let created = inner.create_one().await;
                inner.state.lock().creating -= 1;
                if let Ok(Some(slot)) = created
                    && let Some(slot) = inner.push_idle(slot)
                {
                    tracing::debug!("pool closed while a slot was being created");
                    inner.destroy(slot, "shutdown").await;
                }
                inner.wake.notify_one();
            });
        }
    }
}

/// Whether host link `name` is one of this pool's bridges (`<name>br<digits>`).
fn is_own_bridge(bridge_prefix: &str, name: &str) -> bool {
    name.strip_prefix(bridge_prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Refuses a subnet that overlaps an address or a route already on the host, other than those
/// of this pool's own bridges (an earlier run's, which reconcile removes). Two pools sharing a
/// range would both route it, and one's slots would be unreachable.
///
/// This sees what exists now: a pool that has not created its first bridge yet (no slot
/// created) is invisible, so each bridge's block is checked again before it is created.
async fn check_overlap(
    config: &PoolConfig,
    addressing: &Addressing,
    sys: &dyn Sys,
) -> Result<(), PoolError> {
    let conflicts = foreign_overlaps(
        &addressing.bridge_prefix(),
        sys.host_networks().await?,
        config.subnet,
        config.subnet_prefix_len,
    );
    if conflicts.is_empty() {
        return Ok(());
    }
    tracing::error!(pool = %config.name, subnet = %config.subnet, prefix_len = config.subnet_prefix_len, conflicts = ?conflicts, "subnet overlaps the host's");
    Err(PoolError::Overlap {
        pool: config.name.clone(),
        subnet: config.subnet,
        prefix_len: config.subnet_prefix_len,
        conflicts,
    })
}

/// The first range of the configured length in the automatic window that overlaps nothing on
/// the host but this pool's own bridges (an earlier run's, which reconcile removes).
async fn pick_free_subnet(config: &PoolConfig, sys: &dyn Sys) -> Result<Ipv4Addr, PoolError> {
    let host = sys.host_networks().await?;
    let bridge_prefix = Addressing::new(config).bridge_prefix();
    let size = 1u64 << (32 - u32::from(config.subnet_prefix_len));
    let first = u64::from(u32::from(AUTO_SUBNET_FIRST)).div_ceil(size) * size;
    let last = u64::from(u32::from(AUTO_SUBNET_LAST));
    let mut base = first;
    while base + size - 1 <= last {
        let candidate = Ipv4Addr::from(u32::try_from(base).unwrap_or(u32::MAX));
        if foreign_overlaps(
            &bridge_prefix,
            host.clone(),
            candidate,
            config.subnet_prefix_len,
        )
        .is_empty()
        {
            return Ok(candidate);
        }
        base += size;
    }
    Err(PoolError::NoFreeSubnet {
        pool: config.name.clone(),
        prefix_len: config.subnet_prefix_len,
    })
}

/// The host ranges that overlap `subnet/prefix_len` and are not on this pool's bridges.
fn foreign_overlaps(
    bridge_prefix: &str,
    host: Vec<HostNet>,
    subnet: Ipv4Addr,
    prefix_len: u8,
) -> Vec<HostNet> {
    host.into_iter()
        .filter(|n| n.overlaps(subnet, prefix_len) && !is_own_bridge(bridge_prefix, &n.link))
        .collect()
}

/// Removes what an earlier run of the pool named `config.name` left on the host.
#[tracing::instrument(name = "netpool.reconcile", skip_all, fields(pool = %config.name))]
async fn reconcile(
    config: &PoolConfig,
    addressing: &Addressing,
    sys: &dyn Sys,
) -> Result<(), PoolError> {
    let mut errors = Vec::new();
    let mut found = 0usize;
    // Slots found by their mount or their veth: the host's conntrack entries of their addresses
    // go too, even when the veth went with the mount before the links were listed.
    let mut ids = std::collections::BTreeSet::new();
    // Namespace mounts: unmounting lets the kernel free each namespace with its veth.
    for path in sys.ns_files(&config.ns_dir) {
        found += 1;
        if let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| addressing.parse_id(n))
        {
            ids.insert(id);
        }
        if let Err(e) = sys.remove_netns(&path).await {
            errors.push(e);
        }
    }
    let links = sys.host_links().await?;
    let veth_prefix = addressing.veth_prefix();
    let bridge_prefix = addressing.bridge_prefix();
    for (_, name) in links.iter().filter(|(_, n)| n.starts_with(&veth_prefix)) {
        if let Some(id) = addressing.parse_id(name) {
            found += 1;
            ids.insert(id);
            // Usually gone with its namespace by now; deleted when something pins it.
            if let Err(e) = wait_veth_gone(sys, name).await {
                errors.push(e);
            }
        }
    }
    for id in ids {
        if let Err(e) = sys.flush_conntrack(addressing.slot(id).ip).await {
            errors.push(e);
        }
    }
    for (index, name) in links.iter() {
        if is_own_bridge(&bridge_prefix, name) {
            found += 1;
            if let Err(e) = sys.delete_host_link(*index, name).await {
                errors.push(e);
            }
            if let Err(e) = sys.remove_intra_bridge(name).await {
                errors.push(e);
            }
        }
    }
    // The guard of an earlier run (installed again by the start, if configured).
    errors.extend(sys.remove_guard(&config.name).await);
    if found > 0 {
        tracing::warn!(pool = %config.name, objects = found, "removed what an earlier run left behind");
        counter!(m::SLOTS_DESTROYED_TOTAL, "pool" => config.name.clone(), "reason" => "reconcile")
            .increment(found as u64);
    }
    if let Err(e) = sys.remove_ns_dir(&config.ns_dir).await {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PoolError::Teardown {
            pool: config.name.clone(),
            errors,
        })
    }
}

/// A leased slot. Release it with [`Lease::release`]; dropping it instead marks the slot
/// tainted, and the pool destroys it.
#[derive(Debug)]
pub struct Lease {
    slot: Option<Slot>,
    pool: Arc<Inner>,
    leased_at: Instant,
}

impl Lease {
    fn new(slot: Slot, pool: Arc<Inner>) -> Self {
        Self {
            slot: Some(slot),
            pool,
            leased_at: Instant::now(),
        }
    }

    fn slot(&self) -> &Slot {
        // `slot` is taken only by `release` and `drop`, which consume the lease.
        #[allow(clippy::expect_used)]
        self.slot.as_ref().expect("a live lease holds its slot")
    }

    /// The slot's id.
    pub fn id(&self) -> SlotId {
        self.slot().addr.id
    }

    /// The namespace, as an fd (valid while the lease lives).
    pub fn netns_fd(&self) -> BorrowedFd<'_> {
        self.slot().ns.file().as_fd()
    }

    /// The namespace's bind mount: what an OCI runtime takes as `linux.namespaces[].path`, or
    /// a jailer as `--netns`.
    pub fn netns_path(&self) -> &Path {
        &self.slot().addr.ns_path
    }

    /// The slot's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.slot().addr.ip
    }

    /// The prefix length of the slot's subnet.
    pub fn prefix_len(&self) -> u8 {
        self.slot().addr.prefix_len
    }

    /// The default gateway (the host's address on the bridge).
    pub fn gateway(&self) -> Ipv4Addr {
        self.slot().addr.gateway
    }

    /// eth0's MAC; a VM guest must use it.
    pub fn mac(&self) -> [u8; 6] {
        self.slot().addr.mac
    }

    /// The MAC as `02:xx:…`.
    pub fn mac_string(&self) -> String {
        let m = self.mac();
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }

    /// The TAP device of a VM slot.
    pub fn tap_name(&self) -> Option<&str> {
        self.slot().tap
    }

    /// Opens an fd on the VM slot's TAP device (for VMMs that take TAP fds, such as QEMU's
    /// `-netdev tap,fd=N`). `None` for container slots.
    pub async fn open_tap(&self) -> Result<Option<OwnedFd>, SysError> {
        let Some(tap) = self.slot().tap else {
            return Ok(None);
        };
        self.slot().ns.open_tap(tap).await.map(Some)
    }

    /// Makes `cmd` start its process inside the slot's namespace (a `setns` between fork and
    /// exec; the parent never changes namespace).
    ///
    /// `cmd` holds its own duplicate of the namespace fd (close-on-exec, so the program does
    /// not inherit it): the lease may end before `spawn`, and the child still enters this
    /// slot's namespace, never a closed or reused fd. When the fd cannot be duplicated, `spawn`
    /// fails with that error.
    pub fn enter_on_exec<'c>(
        &self,
        cmd: &'c mut std::process::Command,
    ) -> &'c mut std::process::Command {
        use std::os::unix::process::CommandExt;
        let ns: Result<OwnedFd, i32> = self
            .slot()
            .ns
            .file()
            .try_clone()
            .map(OwnedFd::from)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EMFILE));
        // SAFETY: the closure runs in the forked child before exec and calls only `setns`, or
        // builds an OS error (no allocation), both async-signal-safe; the fd it uses is owned
        // by the closure, which `cmd` keeps until it is dropped, after the spawn.
        unsafe {
            cmd.pre_exec(move || match &ns {
                Ok(fd) => nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from),
                Err(errno) => Err(std::io::Error::from_raw_os_error(*errno)),
            })
        }
    }

    fn take(&mut self) -> Slot {
        // Only `release*` and `drop` take the slot, and they consume the lease.
        #[allow(clippy::expect_used)]
        let slot = self.slot.take().expect("a live lease holds its slot");
        let mut st = self.pool.state.lock();
        st.leased -= 1;
        self.pool.publish(&st);
        drop(st);
        tracing::debug!(pool = %self.pool.config.name, slot = %slot.addr.id, held_ms = self.leased_at.elapsed().as_millis() as u64, "lease returned");
        slot
    }

    /// Hands the slot back and waits for the verdict: scrubbed and verified, then recycled, or
    /// destroyed (and replaced by the refill).
    pub async fn release(mut self) -> Released {
        let slot = self.take();
        self.pool.recycle(slot).await
    }

    /// Hands the slot back without waiting: the scrub runs in the background and its outcome
    /// goes to the metrics and the log. This is what a cold-start path calls on teardown.
    pub fn release_nowait(mut self) {
        let slot = self.take();
        if let Err(mpsc::error::SendError((
            Returned::Released(slot) | Returned::Tainted(slot),
            _,
        ))) = self
            .pool
            .returns
            .send((Returned::Released(slot), self.pool.clone()))
        {
            // The background task is gone (shutdown, or the pool was dropped).
            self.pool.destroy_detached(slot);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut st = self.pool.state.lock();
            st.leased -= 1;
            self.pool.publish(&st);
            drop(st);
            tracing::warn!(pool = %self.pool.config.name, slot = %slot.addr.id, "lease dropped without release: slot tainted");
            if let Err(mpsc::error::SendError((
                Returned::Released(slot) | Returned::Tainted(slot),
                _,
            ))) = self
                .pool
                .returns
                .send((Returned::Tainted(slot), self.pool.clone()))
            {
                // The background task is gone (shutdown, or the pool was dropped).
                self.pool.destroy_detached(slot);
            }
        }
    }
}

/// The host-wide lock of [`PoolConfig::subnet_auto`]'s search and claim: an exclusive `flock`
/// on a file beside the pools' namespace folders, taken off the runtime's workers. Without it
/// (the folder cannot be made, say) the start goes on unlocked, as before, and says so.
async fn auto_subnet_lock(config: &PoolConfig) -> Option<nix::fcntl::Flock<std::fs::File>> {
    let dir = config
        .ns_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/run/netpool"));
    let taken = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".subnet-auto.lock"))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| std::io::Error::from(errno))
    })
    .await;
    match taken {
        Ok(Ok(lock)) => Some(lock),
        Ok(Err(e)) => {
            tracing::warn!(pool = %config.name, error = %e, "cannot take the automatic-subnet lock; choosing a range without it");
            None
        }
        Err(e) => {
            tracing::warn!(pool = %config.name, error = %e, "cannot take the automatic-subnet lock; choosing a range without it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    use super::*;
    use crate::fake::{FakeSys, Op, ScrubOutcome};

    const LONG: Duration = Duration::from_secs(60);

    /// A small pool: 16 bridges of 4 slots; the fake never touches `ns_dir`.
    fn config(name: &str, low: usize, high: usize, max_slots: usize) -> PoolConfig {
        let mut c = PoolConfig::new(name, Ipv4Addr::new(10, 50, 0, 0), 20);
        c.bridge_prefix_len = 24;
        c.slots_per_bridge = 4;
        c.low_watermark = low;
        c.high_watermark = high;
        c.max_slots = max_slots;
        c.max_concurrent_creates = 2;
        c
    }

    async fn start(config: PoolConfig, fake: &FakeSys) -> NetPool {
        NetPool::with_sys(config, Box::new(fake.clone()))
            .await
            .expect("a pool on the fake starts")
    }

    /// Lets every task that can run, run, and lets paused time pass.
    async fn settle() {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }

    fn host_if(lease: &Lease) -> String {
        lease.slot().addr.host_if.clone()
    }

    fn assert_no_violations(fake: &FakeSys) {
        let h = fake.host.lock();
        assert!(h.violations.is_empty(), "{:#?}", h.violations);
    }

    /// Yields until `weak`'s pool is freed; false when it is still alive after many turns.
    async fn freed(weak: &std::sync::Weak<Inner>) -> bool {
        for _ in 0..100 {
            if weak.upgrade().is_none() {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    #[tokio::test(start_paused = true)]
    async fn a_subnet_overlapping_an_address_on_the_host_is_refused_naming_both() {
        let fake = FakeSys::default();
        {
            let mut h = fake.host.lock();
            // Another pool's bridge inside our 10.50.0.0/20, and an unrelated network.
            h.foreign_address("w0br0", Ipv4Addr::new(10, 50, 4, 1), 22);
            h.foreign_address("eth0", Ipv4Addr::new(192, 168, 1, 7), 24);
        }
        let err = NetPool::with_sys(config("ov", 0, 0, 4), Box::new(fake.clone()))
            .await
            .unwrap_err();
        let PoolError::Overlap {
            pool,
            subnet,
            prefix_len,
            conflicts,
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(
            (pool.as_str(), *subnet, *prefix_len),
            ("ov", Ipv4Addr::new(10, 50, 0, 0), 20)
        );
        let found: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "address 10.50.4.1/22 on w0br0",
                "route 10.50.4.0/22 via w0br0"
            ]
        );
        let msg = err.to_string();
        for part in ["pool ov", "10.50.0.0/20", "10.50.4.1/22 on w0br0"] {
            assert!(msg.contains(part), "{msg:?} should name {part:?}");
        }
        // Refused before anything changed: no reconcile, no folder, no bridge.
        assert!(
            fake.host.lock().log.is_empty(),
            "{:?}",
            fake.host.lock().log
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_broader_route_through_another_link_overlaps_too() {
        let fake = FakeSys::default();
        fake.host.lock().nets.push(HostNet {
            kind: crate::sys::HostNetKind::Route,
            ip: Ipv4Addr::new(10, 0, 0, 0),
            prefix_len: 8,
            link: "wg0".into(),
        });
        let err = NetPool::with_sys(config("rt", 0, 0, 4), Box::new(fake.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PoolError::Overlap { conflicts, .. } if conflicts.len() == 1),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_pools_own_bridges_from_an_earlier_run_do_not_count() {
        let fake = FakeSys::default();
        {
            let mut h = fake.host.lock();
            h.foreign_address("obbr0", Ipv4Addr::new(10, 50, 0, 1), 24);
            // Looks alike but is not one of pool ob's bridges (`ob` + `br` + digits).
            h.foreign_address("obbrx", Ipv4Addr::new(10, 99, 0, 1), 24);
        }
        let pool = start(config("ob", 1, 1, 4), &fake).await;
        pool.wait_idle(1, LONG).await.unwrap();
        {
            let h = fake.host.lock();
            // The earlier run's bridge went with reconcile; this run made its own again.
            assert_eq!(h.count(&Op::DeleteLink("obbr0".into())), 1);
            assert_eq!(h.count(&Op::CreateBridge("obbr0".into())), 1);
        }
        pool.shutdown().await.unwrap();
        assert_no_violations(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_pool_on_the_same_range_is_refused_and_one_beside_it_starts() {
        let fake = FakeSys::default();
        let first = start(config("pa", 1, 1, 4), &fake).await;
        first.wait_idle(1, LONG).await.unwrap();
        let err = NetPool::with_sys(config("pb", 1, 1, 4), Box::new(fake.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PoolError::Overlap { pool, .. } if pool == "pb"),
            "{err}"
        );
        assert!(err.to_string().contains("on pabr0"), "{err}");
        let mut beside = config("pb", 1, 1, 4);
        beside.subnet = Ipv4Addr::new(10, 50, 16, 0);
        let second = start(beside, &fake).await;
        second.wait_idle(1, LONG).await.unwrap();
        second.shutdown().await.unwrap();
        first.shutdown().await.unwrap();
        assert!(fake.host.lock().links.is_empty());
        assert_no_violations(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bridge_block_taken_after_the_start_is_not_created() {
        let fake = FakeSys::default();
        let mut c = config("lb", 0, 0, 4);
        c.on_empty = OnEmpty::CreateInline;
        let pool = start(c, &fake).await;
        fake.host
            .lock()
            .foreign_address("late0", Ipv4Addr::new(10, 50, 0, 1), 24);
        let err = pool.lease_within(LONG).await.unwrap_err();
        assert!(
            matches!(&err, PoolError::Overlap { subnet, prefix_len: 24, .. } if *subnet == Ipv4Addr::new(10, 50, 0, 0)),
            "{err}"
        );
        assert_eq!(fake.host.lock().count(&Op::CreateBridge("lbbr0".into())), 0);
        pool.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn subnet_auto_takes_the_first_free_range_and_claims_it_at_start() {
        let fake = FakeSys::default();
        {
            let mut h = fake.host.lock();
            h.foreign_address("w0br0", Ipv4Addr::new(10, 200, 0, 1), 16);
            h.nets.push(HostNet {
                kind: crate::sys::HostNetKind::Route,
                ip: Ipv4Addr::new(10, 201, 0, 0),
                prefix_len: 16,
                link: "wg0".into(),
            });
        }
        let mut c = config("au", 0, 0, 4);
        c.subnet_auto = true;
        let first = start(c.clone(), &fake).await;
        assert_eq!(first.subnet(), (Ipv4Addr::new(10, 202, 0, 0), 20));
        // The first bridge exists before any slot, so the next search sees the range taken.
        assert_eq!(first.stats().bridges, 1);
        c.name = "av".into();
        let second = start(c, &fake).await;
        assert_eq!(second.subnet(), (Ipv4Addr::new(10, 202, 16, 0), 20));
        second.shutdown().await.unwrap();
        first.shutdown().await.unwrap();
        let h = fake.host.lock();
        assert_eq!(h.links.keys().collect::<Vec<_>>(), ["w0br0"]);
        drop(h);
        assert_no_violations(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn subnet_auto_without_a_free_range_is_refused_untouched() {
        let fake = FakeSys::default();
        fake.host.lock().nets.push(HostNet {
            kind: crate::sys::HostNetKind::Route,
            ip: Ipv4Addr::new(10, 192, 0, 0),
            prefix_len: 10,
            link: "wg0".into(),
        });
        let mut c = config("an", 0, 0, 4);
        c.subnet_auto = true;
        let err = NetPool::with_sys(c, Box::new(fake.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PoolError::NoFreeSubnet { prefix_len: 20, .. }),
            "{err}"
        );
        assert!(fake.host.lock().log.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_dropped_without_shutdown_is_freed_and_the_next_start_removes_its_objects() {
        let fake = FakeSys::default();
        let pool = start(config("dr", 2, 2, 4), &fake).await;
        pool.wait_idle(2, LONG).await.unwrap();
        let weak = Arc::downgrade(&pool.inner);
        let clone = pool.clone();
        drop(pool);
        assert!(weak.upgrade().is_some(), "a clone still holds the pool");
        drop(clone);
        assert!(freed(&weak).await, "the dropped pool was never freed");
        {
            let h = fake.host.lock();
            // Every slot's fds closed (nothing but the test holds the fake host)...
            assert_eq!(Arc::strong_count(&fake.host), 1);
            // ...and its kernel objects left for the next start.
            assert_eq!(h.ns_files.len(), 2);
            assert_eq!(h.links.len(), 3, "{:?}", h.links);
        }
        let again = start(config("dr", 0, 0, 4), &fake).await;
        {
            let h = fake.host.lock();
            assert!(h.ns_files.is_empty(), "{:?}", h.ns_files);
            assert!(h.links.is_empty(), "{:?}", h.links);
        }
        again.shutdown().await.unwrap();
        assert_no_violations(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_outliving_its_dropped_pool_closes_it_and_destroys_its_slot() {
        let fake = FakeSys::default();
        let pool = start(config("dl", 1, 1, 2), &fake).await;
        let lease = pool.lease().await.unwrap();
        pool.wait_idle(1, LONG).await.unwrap();
        let path = lease.netns_path().to_owned();
        let weak = Arc::downgrade(&pool.inner);
        drop(pool);
        assert!(weak.upgrade().is_some(), "the lease still holds the pool");
        drop(lease);
        assert!(freed(&weak).await, "the pool outlived its last lease");
        let h = fake.host.lock();
        assert!(
            !h.ns_files.contains(&path),
            "the ended lease's mount stayed"
        );
        assert_eq!(Arc::strong_count(&fake.host), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn initial_fill_reaches_the_high_watermark_within_the_creation_bound() {
        let fake = FakeSys::default();
        fake.host.lock().create_delay = Duration::from_millis(10);
        let pool = start(config("fi", 2, 5, 8), &fake).await;
        pool.wait_idle(5, LONG).await.unwrap();
        settle().await;
        let st = pool.stats();
        assert_eq!((st.idle, st.leased, st.creating), (5, 0, 0));
        let h = fake.host.lock();
        assert_eq!(h.creates(), 5, "filled past the high watermark");
        assert_eq!(
            h.max_creating, 2,
            "max_concurrent_creates not used or exceeded"
        );
        assert_eq!(h.count(&Op::CreateBridge("fibr0".into())), 1);
        assert_eq!(h.count(&Op::CreateBridge("fibr1".into())), 1);
        drop(h);
        assert_no_violations(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn refill_starts_below_the_low_watermark_and_stops_at_the_high_one() {
        let fake = FakeSys::default();
        let pool = start(config("rf", 2, 4, 8), &fake).await;
        pool.wait_idle(4, LONG).await.unwrap();
        let a = pool.lease().await.unwrap();
        let b = pool.lease().await.unwrap();
        settle().await;
        assert_eq!(pool.stats().idle, 2);
        assert_eq!(
            fake.host.lock().creates(),
            4,
            "refilled at the low watermark"
        );
        let c = pool.lease().await.unwrap();
        pool.wait_idle(4, LONG).await.unwrap();
        settle().await;
        assert_eq!(pool.stats().idle, 4);
        assert_eq!(pool.stats().leased, 3);
        assert_eq!(
            fake.host.lock().creates(),
            7,
            "refill overshot the high watermark"
        );
        drop((a, b, c));
        assert_no_violations(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_released_slot_is_scrubbed_and_leased_again() {
        let fake = FakeSys::default();
        let pool = start(config("rr", 1, 1, 1), &fake).await;
        let lease = pool.lease().await.unwrap();
        let (id, ns_path) = (lease.id(), lease.netns_path().to_owned());
        assert!(matches!(lease.release().await, Released::Recycled));
        assert_eq!(pool.stats().idle, 1);
        let again = pool.lease().await.unwrap();
        assert_eq!(again.id(), id);
        assert_eq!(again.netns_path(), ns_path);
        let h = fake.host.lock();
        assert_eq!(h.count(&Op::Scrub(id)), 1, "the release did not scrub");
        assert_eq!(
            h.count(&Op::RemoveNetns(ns_path)),
            0,
            "a clean slot was destroyed"
        );
        assert_eq!(h.creates(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_failing_a_scrub_check_is_destroyed_and_replaced() {
        for outcome in [
            ScrubOutcome::Process,
            ScrubOutcome::Socket,
            ScrubOutcome::State,
        ] {
            let fake = FakeSys::default();
            let pool = start(config("sf", 1, 1, 2), &fake).await;
            let lease = pool.lease().await.unwrap();
            let (id, ns_path) = (lease.id(), lease.netns_path().to_owned());
            pool.wait_idle(1, LONG).await.unwrap();
            fake.host.lock().scrub_plan.insert(id, outcome);
            let released = lease.release().await;
            let check = match &released {
                Released::Destroyed(f) => f.check(),
                Released::Recycled => panic!("{outcome:?}: a dirty slot was recycled"),
            };
            assert_eq!(
                check,
                match outcome {
                    ScrubOutcome::Process => "process",
                    ScrubOutcome::Socket => "socket",
                    ScrubOutcome::State => "state",
                }
            );
            // The pool had one idle slot besides; it now leases that one, then a replacement.
            let other = pool.lease().await.unwrap();
            assert_ne!(other.id(), id);
            let replacement = pool.lease().await.unwrap();
            let h = fake.host.lock();
            let scrubbed = h.position(&Op::Scrub(id)).unwrap();
            let removed = h
                .position(&Op::RemoveNetns(ns_path.clone()))
                .expect("the dirty slot was not destroyed");
            assert!(scrubbed < removed);
            assert!(!h.ns_files.contains(&ns_path) || replacement.id() == id);
            assert_eq!(h.creates(), 3, "{outcome:?}: no replacement was created");
            drop(h);
            assert_no_violations(&fake);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn release_nowait_and_a_dropped_lease_are_handled_in_the_background() {
        let fake = FakeSys::default();
        let pool = start(config("bg", 2, 2, 4), &fake).await;
        pool.wait_idle(2, LONG).await.unwrap();
        let clean = pool.lease().await.unwrap();
        let dirty = pool.lease().await.unwrap();
        pool.wait_idle(2, LONG).await.unwrap();
        let clean_id = clean.id();
        let (dirty_id, dirty_path) = (dirty.id(), dirty.netns_path().to_owned());
        clean.release_nowait();
        // Dropped without release: tainted, destroyed without a scrub.
        drop(dirty);
        settle().await;
        let h = fake.host.lock();
        assert_eq!(h.count(&Op::Scrub(clean_id)), 1);
        assert_eq!(
            h.count(&Op::Scrub(dirty_id)),
            0,
            "a tainted slot was scrubbed"
        );
        assert_eq!(h.count(&Op::RemoveNetns(dirty_path.clone())), 1);
        assert!(!h.ns_files.contains(&dirty_path));
        assert_eq!(
            h.creates(),
            4,
            "idle stayed above the low watermark, yet the pool created"
        );
        drop(h);
        let st = pool.stats();
        assert_eq!(
            (st.idle, st.leased),
            (3, 0),
            "the clean slot did not come back"
        );
        assert_no_violations(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_on_an_empty_pool_waits_until_its_deadline() {
        let fake = FakeSys::default();
        let pool = start(config("em", 0, 0, 1), &fake).await;
        let started = Instant::now();
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.lease_within(Duration::from_secs(3)).await }
        });
        tokio::time::sleep(Duration::from_millis(2999)).await;
        assert!(!waiting.is_finished(), "gave up before its deadline");
        let err = waiting.await.unwrap().unwrap_err();
        assert!(matches!(err, PoolError::Timeout { .. }), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_millis(3010),
            "{waited:?}"
        );
        assert_eq!(fake.host.lock().creates(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_leases_are_served_in_the_order_they_came() {
        let fake = FakeSys::default();
        let pool = start(config("fo", 1, 1, 1), &fake).await;
        let held = pool.lease().await.unwrap();
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for who in ["a", "b", "c"] {
            let (pool, served) = (pool.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let lease = pool.lease_within(LONG).await.unwrap();
                served.lock().push(who);
                lease.release().await;
            }));
            // Each one queues before the next arrives.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(matches!(held.release().await, Released::Recycled));
        // A newcomer does not take the slot from those already waiting.
        let late = pool.lease_within(Duration::ZERO).await;
        assert!(
            matches!(late, Err(PoolError::Timeout { .. })),
            "a newcomer jumped the queue"
        );
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*served.lock(), ["a", "b", "c"]);
        assert_eq!(pool.stats().idle, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_lease_that_is_dropped_gives_back_the_slot_handed_to_it() {
        let fake = FakeSys::default();
        let pool = start(config("gv", 1, 1, 1), &fake).await;
        let held = pool.lease().await.unwrap();
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.lease_within(LONG).await.map(|l| l.id()) }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let second = tokio::spawn({
            let pool = pool.clone();
            async move { pool.lease_within(LONG).await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The slot goes to the first waiter, which is dropped before it runs.
        held.release().await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        let lease = second
            .await
            .unwrap()
            .expect("the slot was lost with the dropped waiter");
        let st = pool.stats();
        assert_eq!((st.idle, st.leased), (0, 1));
        drop(lease);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_fails_waiting_leases() {
        let fake = FakeSys::default();
        let pool = start(config("sw", 0, 0, 1), &fake).await;
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.lease_within(LONG).await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        pool.clone().shutdown().await.unwrap();
        let err = waiting.await.unwrap().unwrap_err();
        assert!(matches!(err, PoolError::ShutDown(_)), "{err}");
        assert!(matches!(pool.lease().await, Err(PoolError::ShutDown(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_removes_an_earlier_runs_leftovers_and_nothing_foreign() {
        let fake = FakeSys::default();
        let dir = PathBuf::from("/run/netpool/rc");
        {
            let mut h = fake.host.lock();
            h.leftover_slot(&dir.join("0-1"), "rcv0-1", false);
            // Something pins this one: its veth must be deleted by hand.
            h.leftover_slot(&dir.join("1-0"), "rcv1-0", true);
            h.foreign_link("rcbr0");
            h.foreign_link("rcbr1");
            h.firewall.extend(["rcbr0".to_owned(), "rcbr1".to_owned()]);
            // Another pool's, and the host's own.
            h.leftover_slot(Path::new("/run/netpool/rc2/0-1"), "rc2v0-1", false);
            for name in ["lo", "eth0", "docker0", "rcbr", "rcbrx", "rcvx", "rcx0-1"] {
                h.foreign_link(name);
            }
            h.firewall.insert("docker0".to_owned());
        }
        let pool = start(config("rc", 0, 0, 4), &fake).await;
        {
            let h = fake.host.lock();
            let links: Vec<&str> = h.links.keys().map(String::as_str).collect();
            assert_eq!(
                links,
                [
                    "docker0", "eth0", "lo", "rc2v0-1", "rcbr", "rcbrx", "rcvx", "rcx0-1"
                ]
            );
            assert_eq!(
                h.ns_files.iter().collect::<Vec<_>>(),
                [Path::new("/run/netpool/rc2/0-1")]
            );
            assert_eq!(h.firewall.iter().collect::<Vec<_>>(), ["docker0"]);
            let addressing = Addressing::new(&config("rc", 0, 0, 4));
            for (bridge, index) in [(0, 1), (1, 0)] {
                let ip = addressing.slot(SlotId { bridge, index }).ip;
                assert_eq!(
                    h.count(&Op::FlushConntrack(ip)),
                    1,
                    "conntrack of {ip} kept"
                );
            }
            // The folder is removed, then made again for this run.
            let removed = h.position(&Op::RemoveNsDir).unwrap();
            assert!(removed < h.position(&Op::Prepare).unwrap());
        }
        pool.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_keeps_going_past_failures_and_reports_them_all() {
        let fake = FakeSys::default();
        let dir = PathBuf::from("/run/netpool/rk");
        {
            let mut h = fake.host.lock();
            h.leftover_slot(&dir.join("0-0"), "rkv0-0", false);
            h.leftover_slot(&dir.join("0-1"), "rkv0-1", false);
            h.foreign_link("rkbr0");
            h.foreign_link("rkbr1");
            h.fail_remove_netns.insert(dir.join("0-0"));
            h.fail_delete_link.insert("rkbr0".into());
        }
        let err = NetPool::with_sys(config("rk", 0, 0, 4), Box::new(fake.clone()))
            .await
            .unwrap_err();
        let PoolError::Teardown { errors, .. } = err else {
            panic!("{err}");
        };
        let targets: Vec<String> = errors
            .iter()
            .map(|e| match e {
                SysError::Io { target, .. } => target.clone(),
                other => panic!("unexpected error {other}"),
            })
            .collect();
        assert_eq!(targets, ["/run/netpool/rk/0-0", "rkbr0"]);
        let h = fake.host.lock();
        assert!(!h.ns_files.contains(&dir.join("0-1")));
        assert!(!h.links.contains_key("rkv0-1"));
        assert!(
            !h.links.contains_key("rkbr1"),
            "stopped at the first failure"
        );
        // The veth of the namespace that could not be unmounted was deleted by hand.
        assert!(!h.links.contains_key("rkv0-0"));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_removes_every_slot_bridge_and_rule() {
        let fake = FakeSys::default();
        let mut c = config("sd", 1, 5, 8);
        c.isolate_slots = false;
        let pool = start(c, &fake).await;
        pool.wait_idle(5, LONG).await.unwrap();
        let leased = pool.lease().await.unwrap();
        // The tenant's fd keeps the leased namespace, and so its veth, alive.
        fake.host.lock().pinned.insert(host_if(&leased));
        assert_eq!(fake.host.lock().firewall.len(), 2);
        pool.shutdown().await.unwrap();
        let h = fake.host.lock();
        assert!(h.ns_files.is_empty(), "{:?}", h.ns_files);
        assert!(h.links.is_empty(), "{:?}", h.links);
        assert!(h.firewall.is_empty(), "{:?}", h.firewall);
        assert_eq!(
            h.log
                .iter()
                .filter(|o| matches!(o, Op::FlushConntrack(_)))
                .count(),
            5
        );
        assert_eq!(h.log.last(), Some(&Op::RemoveNsDir));
        drop(h);
        drop(leased);
    }

    #[tokio::test(start_paused = true)]
    async fn maintenance_ended_resolves_when_the_background_task_ends_and_not_before() {
        let fake = FakeSys::default();
        let pool = start(config("me", 1, 2, 8), &fake).await;
        pool.wait_idle(2, LONG).await.unwrap();
        let ended = pool.maintenance_ended();
        tokio::pin!(ended);
        assert!(
            tokio::time::timeout(LONG, &mut ended).await.is_err(),
            "resolved while the task runs"
        );
        // A panic in the task stands for any unexpected end: abort it the same way.
        let task = pool.handle.task.lock().take().unwrap();
        task.abort();
        tokio::time::timeout(LONG, &mut ended)
            .await
            .expect("resolves once the task is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn the_host_guard_exists_before_the_first_bridge_and_goes_at_shutdown() {
        let fake = FakeSys::default();
        let mut c = config("gd", 1, 5, 8);
        c.allow_host_ports = vec![(3233, 3233)];
        let pool = start(c, &fake).await;
        pool.wait_idle(5, LONG).await.unwrap();
        {
            let h = fake.host.lock();
            assert_eq!(h.guards.get("gd"), Some(&vec![(3233, 3233)]));
            // Five slots of four per bridge: two bridges, each guarded.
            assert_eq!(
                h.guarded.keys().collect::<Vec<_>>(),
                ["gdbr0", "gdbr1"],
                "{:?}",
                h.guarded
            );
            let install = h.log.iter().position(|o| matches!(o, Op::InstallGuard(_)));
            let bridge = h.log.iter().position(|o| matches!(o, Op::CreateBridge(_)));
            assert!(install.is_some() && install < bridge, "{:?}", h.log);
        }
        pool.shutdown().await.unwrap();
        {
            let h = fake.host.lock();
            assert!(
                h.guards.is_empty() && h.guarded.is_empty(),
                "{:?}",
                h.guards
            );
        }
        assert_no_violations(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_whose_guard_cannot_be_installed_does_not_start_and_leaves_nothing() {
        let fake = FakeSys::default();
        fake.host.lock().fail_install_guard = 1;
        let err = NetPool::with_sys(config("gf", 1, 2, 8), Box::new(fake.clone()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("gf"), "{err}");
        let h = fake.host.lock();
        assert!(h.links.is_empty() && h.guards.is_empty(), "{:?}", h.links);
        assert_eq!(h.log.last(), Some(&Op::RemoveNsDir), "{:?}", h.log);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_runs_guard_is_removed_and_a_pool_without_the_guard_installs_none() {
        let fake = FakeSys::default();
        fake.host
            .lock()
            .guards
            .insert("go".into(), vec![(1, 65535)]);
        let mut c = config("go", 1, 1, 8);
        c.guard_host = false;
        let pool = start(c, &fake).await;
        pool.wait_idle(1, LONG).await.unwrap();
        {
            let h = fake.host.lock();
            assert!(
                h.guards.is_empty() && h.guarded.is_empty(),
                "{:?}",
                h.guards
            );
        }
        pool.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_keeps_going_past_failures_and_reports_them_all() {
        let fake = FakeSys::default();
        let mut c = config("sk", 1, 3, 8);
        c.isolate_slots = false;
        let pool = start(c, &fake).await;
        pool.wait_idle(3, LONG).await.unwrap();
        let leased = pool.lease().await.unwrap();
        let stuck = PathBuf::from("/run/netpool/sk/0-1");
        assert_ne!(leased.netns_path(), stuck, "the test needs 0-1 idle");
        {
            let mut h = fake.host.lock();
            h.fail_remove_netns.insert(stuck.clone());
            h.fail_delete_link.insert("skbr0".into());
        }
        let err = pool.shutdown().await.unwrap_err();
        let PoolError::Teardown { errors, .. } = err else {
            panic!("{err}");
        };
        let mut targets: Vec<String> = errors
            .iter()
            .map(|e| match e {
                SysError::Io { target, .. } => target.clone(),
                other => panic!("unexpected error {other}"),
            })
            .collect();
        targets.sort();
        assert_eq!(targets, ["/run/netpool/sk/0-1", "skbr0"]);
        let h = fake.host.lock();
        // Everything else went: the other namespaces, every veth (the stuck one's by hand),
        // the firewall rule of the bridge that could not be deleted, the folder.
        assert_eq!(h.ns_files.iter().collect::<Vec<_>>(), [&stuck]);
        assert_eq!(h.links.keys().collect::<Vec<_>>(), ["skbr0"]);
        assert!(h.firewall.is_empty());
        assert_eq!(
            h.log
                .iter()
                .filter(|o| matches!(o, Op::FlushConntrack(_)))
                .count(),
            3
        );
        assert_eq!(h.log.last(), Some(&Op::RemoveNsDir));
        drop(h);
        drop(leased);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_creations_back_off_and_the_refill_recovers() {
        let fake = FakeSys::default();
        fake.host.lock().fail_creates = usize::MAX;
        let pool = start(config("bo", 1, 2, 4), &fake).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let times = fake.host.lock().create_times.clone();
        assert!(
            (4..=12).contains(&times.len()),
            "{} creations in 10 s",
            times.len()
        );
        // Attempts come in rounds (one per free creation permit); rounds get further apart,
        // from the base pause up to the cap.
        let mut rounds: Vec<Instant> = times.clone();
        rounds.dedup();
        let gaps: Vec<Duration> = rounds.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 3, "{gaps:?}");
        assert!(gaps[0] >= CREATE_BACKOFF_BASE, "{gaps:?}");
        assert!(gaps.windows(2).all(|g| g[0] <= g[1]), "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= CREATE_BACKOFF_MAX), "{gaps:?}");
        fake.host.lock().fail_creates = 0;
        pool.wait_idle(2, CREATE_BACKOFF_MAX + Duration::from_millis(1))
            .await
            .expect("the refill did not resume after the back-off");
        // Every failed attempt gave its id back.
        assert_eq!(pool.stats().allocated, 2);
        assert_no_violations(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bridge_whose_firewall_rule_fails_is_deleted_again() {
        let fake = FakeSys::default();
        fake.host.lock().fail_allow_intra = 1;
        let mut c = config("fw", 1, 1, 2);
        c.isolate_slots = false;
        let pool = start(c, &fake).await;
        pool.wait_idle(1, LONG).await.unwrap();
        let h = fake.host.lock();
        assert_eq!(h.count(&Op::CreateBridge("fwbr0".into())), 2);
        let deleted = h.position(&Op::DeleteLink("fwbr0".into())).unwrap();
        assert!(
            deleted
                < h.log
                    .iter()
                    .rposition(|o| *o == Op::CreateBridge("fwbr0".into()))
                    .unwrap()
        );
        assert!(h.firewall.contains("fwbr0"));
        drop(h);
        assert_no_violations(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn no_address_is_handed_out_twice_while_its_veth_exists() {
        let fake = FakeSys::default();
        let pool = start(config("ad", 3, 3, 8), &fake).await;
        pool.wait_idle(3, LONG).await.unwrap();
        let mut leases = Vec::new();
        for _ in 0..3 {
            leases.push(pool.lease().await.unwrap());
        }
        pool.wait_idle(3, LONG).await.unwrap();
        // A tenant process pins this slot: its veth outlives the mount.
        let gone = leases.remove(0);
        let (gone_id, gone_if) = (gone.id(), host_if(&gone));
        fake.host.lock().pinned.insert(gone_if.clone());
        drop(gone);
        // The refill creates two more, reaching max_slots with the quarantined id.
        for _ in 0..2 {
            leases.push(pool.lease().await.unwrap());
        }
        // Until the pinned veth is deleted (after VETH_GONE_TIMEOUT), its id is not reused.
        tokio::time::sleep(VETH_GONE_TIMEOUT - Duration::from_millis(100)).await;
        assert!(fake.host.lock().links.contains_key(&gone_if));
        assert!(leases.iter().all(|l| l.id() != gone_id));
        assert_eq!(pool.stats().allocated, 8);
        // Then it is deleted by hand, the id comes back, and the refill uses it again: the
        // three idle slots go first, the fourth lease waits for it.
        for _ in 0..4 {
            leases.push(pool.lease().await.unwrap());
        }
        let h = fake.host.lock();
        let deleted = h.position(&Op::DeleteLink(gone_if.clone())).unwrap();
        let reused = h.log.iter().rposition(|o| *o == Op::CreateSlot(gone_id));
        assert!(
            reused.is_some_and(|r| r > deleted),
            "id {gone_id} reused while its veth existed, or never"
        );
        let mut ips = h.slot_ips();
        let n = ips.len();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), n, "two live slots share an address");
        drop(h);
        let mut leased: Vec<Ipv4Addr> = leases.iter().map(Lease::ip).collect();
        leased.sort();
        leased.dedup();
        assert_eq!(leased.len(), leases.len());
        assert_no_violations(&fake);
    }

    #[test]
    fn the_refill_plan_follows_the_watermarks() {
        let c = config("pl", 2, 5, 8);
        // idle, creating, allocated, filling, backing off -> start, filling
        let cases = [
            ((5, 0, 5, false, false), (0, false)),
            ((2, 0, 5, false, false), (0, false)),
            ((1, 0, 4, false, false), (4, true)),
            ((1, 0, 5, false, false), (3, true)),
            ((1, 4, 9, true, false), (0, false)),
            ((3, 1, 6, true, false), (1, true)),
            ((3, 0, 7, true, false), (1, true)),
            ((0, 0, 0, false, true), (0, true)),
            ((0, 0, 0, true, false), (5, true)),
        ];
        for ((idle, creating, allocated, filling, backing_off), (start, still)) in cases {
            let plan = plan_refill(&c, idle, creating, allocated, filling, backing_off);
            assert_eq!(
                plan,
                RefillPlan {
                    start,
                    filling: still
                },
                "idle={idle} creating={creating} allocated={allocated} filling={filling} backing_off={backing_off}"
            );
        }
    }

    #[test]
    fn the_refill_plan_never_exceeds_max_slots() {
        let c = config("pl", 4, 8, 8);
        for allocated in 0..=10 {
            let plan = plan_refill(&c, 0, 0, allocated, false, false);
            assert_eq!(
                plan.start,
                8usize.saturating_sub(allocated),
                "allocated={allocated}"
            );
        }
    }

    #[test]
    fn the_creation_back_off_doubles_up_to_its_cap() {
        let delays: Vec<Duration> = (0..10).map(create_backoff).collect();
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(delays[1], CREATE_BACKOFF_BASE);
        assert_eq!(delays[2], CREATE_BACKOFF_BASE * 2);
        assert_eq!(delays[3], CREATE_BACKOFF_BASE * 4);
        assert!(delays.windows(2).all(|d| d[0] <= d[1]));
        assert_eq!(create_backoff(9), CREATE_BACKOFF_MAX);
        assert_eq!(create_backoff(u32::MAX), CREATE_BACKOFF_MAX);
    }
}

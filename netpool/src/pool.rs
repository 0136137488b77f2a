//! The pool: leases, background refill, recycling, crash recovery and shutdown.
//!
//! # Behavior
//! - [`NetPool::lease`] pops an idle slot (no syscall, no RTNL: microseconds). When none is
//!   idle it waits for the refill up to the deadline, or creates one inline, as configured;
//!   either way it fails with an error rather than silently.
//! - A background task refills between the watermarks: when fewer than `low_watermark` slots
//!   are idle it creates up to `high_watermark`, at most `max_concurrent_creates` at once.
//! - [`Lease::release`] scrubs and verifies the slot ([`crate::slot`]) and returns it to the
//!   idle queue, or destroys it and lets the refill replace it; [`Lease::release_nowait`] does
//!   the same in the background, so a teardown path does not wait for it. A lease dropped
//!   without release is tainted and destroyed.
//! - A destroyed slot's id (and so its address and names) is reused only once the kernel has
//!   removed its host veth.
//! - [`NetPool::new`] first removes whatever an earlier run of the same pool (same name) left:
//!   namespace mounts, veths, bridges and their conntrack entries. [`NetPool::shutdown`]
//!   removes everything the pool made, leased slots included.
//!
//! # Limitations
//! - Slots of an earlier run are destroyed, not adopted: their tenants' state is unknown.
//! - Counters of a recycled slot (`/proc/net/snmp`, link statistics) cannot be reset; the next
//!   tenant can read its predecessor's traffic volume.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::addressing::{Addressing, Allocator, SlotAddress, SlotId};
use crate::config::{OnEmpty, PoolConfig, PoolConfigError};
use crate::metrics as m;
use crate::slot::{ScrubFailure, Slot};
use crate::sys::net::{self, Netlink};
use crate::sys::{SysError, conntrack, firewall, ns};

/// How long a destroyed slot's host veth may take to disappear before it is deleted by hand.
const VETH_GONE_TIMEOUT: Duration = Duration::from_secs(5);
const VETH_POLL: Duration = Duration::from_millis(20);

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
    leased: usize,
    creating: usize,
    filling: bool,
    closed: bool,
    allocator: Allocator,
    /// Every live slot's address, idle or leased, so shutdown can reach leased ones too.
    live: HashMap<SlotId, SlotAddress>,
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
    host: Netlink,
    /// The namespace slots are created from (see `sys::ns::create_parent_netns`).
    parent_ns: Option<Arc<std::fs::File>>,
    state: Mutex<State>,
    /// Woken whenever a slot becomes idle or the pool closes.
    available: Notify,
    /// Wakes the background task.
    wake: Notify,
    create_permits: Semaphore,
    /// Bridge index by bridge number; the async lock serializes their creation.
    bridges: tokio::sync::Mutex<HashMap<u16, u32>>,
    returns: mpsc::UnboundedSender<Returned>,
    /// Slot ids waiting for the kernel to remove their host veth.
    pending_frees: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
}

/// A pool of pre-created network namespaces. Cheap to clone; every clone is the same pool.
#[derive(Clone, Debug)]
pub struct NetPool {
    inner: Arc<Inner>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl NetPool {
    /// Validates `config`, removes what an earlier run of this pool left behind, and starts the
    /// background refill. Must be called inside a tokio runtime.
    pub async fn new(config: PoolConfig) -> Result<Self, PoolError> {
        config.validate()?;
        m::describe();
        let addressing = Addressing::new(&config);
        let host = Netlink::host()?;
        reconcile(&config, &addressing, &host).await?;
        ns::prepare_ns_dir(&config.ns_dir)?;
        let parent_ns = tokio::task::spawn_blocking(ns::create_parent_netns)
            .await
            .map_err(|_| SysError::ThreadPanicked)??
            .map(Arc::new);
        let (returns, returns_rx) = mpsc::unbounded_channel();
        let bridges = u16::try_from(config.bridge_count()).unwrap_or(u16::MAX);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                idle: VecDeque::new(),
                leased: 0,
                creating: 0,
                filling: false,
                closed: false,
                allocator: Allocator::new(config.slots_per_bridge, bridges),
                live: HashMap::new(),
            }),
            create_permits: Semaphore::new(config.max_concurrent_creates),
            addressing,
            host,
            parent_ns,
            available: Notify::new(),
            wake: Notify::new(),
            bridges: tokio::sync::Mutex::new(HashMap::new()),
            returns,
            pending_frees: tokio::sync::Mutex::new(tokio::task::JoinSet::new()),
            config,
        });
        let task = tokio::spawn(background(Arc::downgrade(&inner), returns_rx));
        inner.wake.notify_one();
        tracing::info!(pool = %inner.config.name, "netpool started");
        Ok(Self {
            inner,
            task: Arc::new(Mutex::new(Some(task))),
        })
    }

    /// Leases a slot, waiting at most the configured `lease_timeout`.
    pub async fn lease(&self) -> Result<Lease, PoolError> {
        self.lease_within(self.inner.config.lease_timeout).await
    }

    /// Leases a slot, waiting at most `timeout`.
    #[tracing::instrument(name = "netpool.lease", skip_all, fields(pool = %self.inner.config.name))]
    pub async fn lease_within(&self, timeout: Duration) -> Result<Lease, PoolError> {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = inner.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = inner.lock();
                if st.closed {
                    return Err(PoolError::ShutDown(inner.config.name.clone()));
                }
                if let Some(slot) = st.idle.pop_front() {
                    st.leased += 1;
                    inner.publish(&st);
                    if st.idle.len() < inner.config.low_watermark {
                        inner.wake.notify_one();
                    }
                    drop(st);
                    histogram!(m::LEASE_WAIT_SECONDS, "pool" => inner.config.name.clone())
                        .record(started.elapsed().as_secs_f64());
                    return Ok(Lease::new(slot, inner.clone()));
                }
            }
            inner.wake.notify_one();
            if inner.config.on_empty == OnEmpty::CreateInline
                && let Some(slot) = inner.create_one().await?
            {
                let mut st = inner.lock();
                st.leased += 1;
                inner.publish(&st);
                drop(st);
                histogram!(m::LEASE_WAIT_SECONDS, "pool" => inner.config.name.clone())
                    .record(started.elapsed().as_secs_f64());
                return Ok(Lease::new(slot, inner.clone()));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                counter!(m::LEASE_TIMEOUTS_TOTAL, "pool" => inner.config.name.clone()).increment(1);
                return Err(PoolError::Timeout {
                    pool: inner.config.name.clone(),
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// Current counts.
    pub fn stats(&self) -> PoolStats {
        let st = self.inner.lock();
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
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.lock().idle.len() >= n {
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
        let (idle, leased): (Vec<Slot>, Vec<SlotAddress>) = {
            let mut st = inner.lock();
            st.closed = true;
            let idle: Vec<Slot> = st.idle.drain(..).collect();
            for s in &idle {
                st.live.remove(&s.addr.id);
            }
            let leased = st.live.drain().map(|(_, a)| a).collect();
            inner.publish(&st);
            (idle, leased)
        };
        inner.available.notify_waiters();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
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
            if let Err(e) = slot.destroy() {
                errors.push(e);
            }
            counter!(m::SLOTS_DESTROYED_TOTAL, "pool" => inner.config.name.clone(), "reason" => "shutdown").increment(1);
        }
        for addr in leased {
            // The lease holder's fd keeps its namespace until it lets go; the mount goes now.
            if let Err(e) = ns::remove_netns(&addr.ns_path) {
                errors.push(e);
            }
            gone.push(addr);
            counter!(m::SLOTS_DESTROYED_TOTAL, "pool" => inner.config.name.clone(), "reason" => "shutdown").increment(1);
        }
        let mut frees = inner.pending_frees.lock().await;
        while frees.join_next().await.is_some() {}
        drop(frees);
        for addr in &gone {
            if let Err(e) = wait_veth_gone(&inner.host, &addr.host_if).await {
                errors.push(e);
            }
            if let Err(e) = conntrack::flush(addr.ip).await {
                errors.push(e);
            }
        }
        let bridges: Vec<(u16, u32)> = inner.bridges.lock().await.drain().collect();
        for (b, index) in bridges {
            let (name, _) = inner.addressing.bridge(b);
            if let Err(e) = net::delete_link(&inner.host.handle, index, &name).await {
                errors.push(e);
            }
            if let Err(e) = firewall::remove_intra_bridge(&name).await {
                errors.push(e);
            }
        }
        if let Err(e) = ns::remove_ns_dir(&inner.config.ns_dir) {
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

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves counts that are still consistent (each
        // critical section is a few assignments), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, st: &State) {
        gauge!(m::SLOTS_IDLE, "pool" => self.config.name.clone()).set(st.idle.len() as f64);
        gauge!(m::SLOTS_LEASED, "pool" => self.config.name.clone()).set(st.leased as f64);
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
            let mut st = self.lock();
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
            Slot::create(
                &self.host,
                self.parent_ns.clone(),
                self.addressing.slot(id),
                bridge,
                self.config.kind,
                self.config.isolate_slots,
            )
            .await
        }
        .await;
        match result {
            Ok(slot) => {
                counter!(m::SLOTS_CREATED_TOTAL, "pool" => self.config.name.clone()).increment(1);
                histogram!(m::SLOT_CREATE_SECONDS, "pool" => self.config.name.clone())
                    .record(started.elapsed().as_secs_f64());
                let mut st = self.lock();
                st.live.insert(id, slot.addr.clone());
                if st.closed {
                    drop(st);
                    let _ = slot.destroy();
                    return Ok(None);
                }
                Ok(Some(slot))
            }
            Err(e) => {
                counter!(m::SLOT_CREATE_FAILURES_TOTAL, "pool" => self.config.name.clone())
                    .increment(1);
                tracing::warn!(pool = %self.config.name, slot = %id, error = %e, "slot creation failed");
                self.free_when_gone(self.addressing.slot(id)).await;
                Err(e.into())
            }
        }
    }

    /// The index of bridge `b`, created (with its gateway address) on first use.
    async fn bridge(&self, b: u16) -> Result<u32, SysError> {
        let mut bridges = self.bridges.lock().await;
        if let Some(&index) = bridges.get(&b) {
            return Ok(index);
        }
        let (name, gateway) = self.addressing.bridge(b);
        let index = net::create_bridge(
            &self.host.handle,
            &name,
            gateway,
            self.addressing.bridge_prefix_len(),
            self.addressing.bridge_mac(b),
        )
        .await?;
        if !self.config.isolate_slots
            && let Err(e) = firewall::allow_intra_bridge(&name).await
        {
            let _ = net::delete_link(&self.host.handle, index, &name).await;
            return Err(e);
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
            Ok(()) => {
                if self.push_idle(slot) {
                    counter!(m::SLOTS_RECYCLED_TOTAL, "pool" => name).increment(1);
                    Released::Recycled
                } else {
                    Released::Destroyed(ScrubFailure::State("the pool is shut down".into()))
                }
            }
            Err(failure) => {
                counter!(m::SCRUB_FAILURES_TOTAL, "pool" => name.clone(), "check" => failure.check()).increment(1);
                tracing::info!(pool = %name, slot = %slot.addr.id, reason = %failure, "released slot destroyed");
                self.destroy(slot, "scrub_failed").await;
                Released::Destroyed(failure)
            }
        }
    }

    fn push_idle(&self, slot: Slot) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        st.idle.push_back(slot);
        self.publish(&st);
        drop(st);
        self.available.notify_waiters();
        true
    }

    /// Destroys a slot and frees its id once the kernel has removed its host veth.
    async fn destroy(self: &Arc<Self>, slot: Slot, reason: &'static str) {
        let addr = slot.addr.clone();
        {
            let mut st = self.lock();
            st.live.remove(&addr.id);
        }
        if let Err(e) = slot.destroy() {
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
            if let Err(e) = wait_veth_gone(&inner.host, &addr.host_if).await {
                // The id stays allocated: reusing it could clash with what still exists.
                tracing::error!(pool = %inner.config.name, slot = %addr.id, error = %e, "slot id quarantined");
                return;
            }
            if let Err(e) = conntrack::flush(addr.ip).await {
                tracing::warn!(pool = %inner.config.name, slot = %addr.id, error = %e, "conntrack flush failed");
            }
            inner.lock().allocator.free(addr.id);
            inner.wake.notify_one();
        });
        // Reap finished ones so the set stays small.
        while frees.try_join_next().is_some() {}
    }
}

/// Waits until host link `name` is gone; deletes it when the kernel has not removed it in time
/// (something still pins the namespace).
async fn wait_veth_gone(host: &Netlink, name: &str) -> Result<(), SysError> {
    let deadline = Instant::now() + VETH_GONE_TIMEOUT;
    loop {
        match net::link_index(&host.handle, name).await? {
            None => return Ok(()),
            Some(index) if Instant::now() >= deadline => {
                tracing::warn!(veth = name, "host veth outlived its namespace; deleting it");
                return net::delete_link(&host.handle, index, name).await;
            }
            Some(_) => tokio::time::sleep(VETH_POLL).await,
        }
    }
}

/// The background task: destroys tainted slots and refills between the watermarks.
async fn background(weak: std::sync::Weak<Inner>, mut returns: mpsc::UnboundedReceiver<Returned>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let wake = async {
            tokio::select! {
                r = returns.recv() => r,
                () = inner.wake.notified() => None,
            }
        };
        match wake.await {
            Some(Returned::Released(slot)) => {
                let inner = inner.clone();
                tokio::spawn(async move { inner.recycle(slot).await });
            }
            Some(Returned::Tainted(slot)) => inner.destroy(slot, "tainted").await,
            None => {}
        }
        let to_start = {
            let mut st = inner.lock();
            if st.closed {
                return;
            }
            let idle = st.idle.len();
            if idle < inner.config.low_watermark {
                st.filling = true;
            }
            let have = idle + st.creating;
            let room = inner.config.max_slots.saturating_sub(st.allocator.in_use());
            let n = if st.filling && have < inner.config.high_watermark {
                (inner.config.high_watermark - have).min(room)
            } else {
                0
            };
            if have >= inner.config.high_watermark {
                st.filling = false;
            }
            st.creating += n;
            n
        };
        for _ in 0..to_start {
            let inner = inner.clone();
            tokio::spawn(async move {
                let created = inner.create_one().await;
                {
                    let mut st = inner.lock();
                    st.creating -= 1;
                }
                match created {
                    Ok(Some(slot)) => {
                        if !inner.push_idle(slot) {
                            tracing::debug!("pool closed while a slot was being created");
                        }
                    }
                    Ok(None) => {}
                    // Logged and counted in create_one; back off before the next attempt.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                inner.wake.notify_one();
            });
        }
    }
}

/// Removes what an earlier run of the pool named `config.name` left on the host.
#[tracing::instrument(name = "netpool.reconcile", skip_all, fields(pool = %config.name))]
async fn reconcile(
    config: &PoolConfig,
    addressing: &Addressing,
    host: &Netlink,
) -> Result<(), PoolError> {
    let mut errors = Vec::new();
    let mut found = 0usize;
    // Namespace mounts: unmounting lets the kernel free each namespace with its veth.
    if let Ok(entries) = std::fs::read_dir(&config.ns_dir) {
        for entry in entries.flatten() {
            found += 1;
            if let Err(e) = ns::remove_netns(&entry.path()) {
                errors.push(e);
            }
        }
    }
    let links = net::links(&host.handle).await?;
    let veth_prefix = addressing.veth_prefix();
    let bridge_prefix = addressing.bridge_prefix();
    for (_, name) in links.iter().filter(|(_, n)| n.starts_with(&veth_prefix)) {
        if let Some(id) = addressing.parse_id(name) {
            found += 1;
            // Usually gone with its namespace by now; deleted when something pins it.
            if let Err(e) = wait_veth_gone(host, name).await {
                errors.push(e);
            }
            if let Err(e) = conntrack::flush(addressing.slot(id).ip).await {
                errors.push(e);
            }
        }
    }
    for (index, name) in links.iter().filter(|(_, n)| n.starts_with(&bridge_prefix)) {
        let suffix = &name[bridge_prefix.len()..];
        if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) {
            found += 1;
            if let Err(e) = net::delete_link(&host.handle, *index, name).await {
                errors.push(e);
            }
            if let Err(e) = firewall::remove_intra_bridge(name).await {
                errors.push(e);
            }
        }
    }
    if found > 0 {
        tracing::warn!(pool = %config.name, objects = found, "removed what an earlier run left behind");
        counter!(m::SLOTS_DESTROYED_TOTAL, "pool" => config.name.clone(), "reason" => "reconcile")
            .increment(found as u64);
    }
    if let Err(e) = ns::remove_ns_dir(&config.ns_dir) {
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
        self.slot().ns.as_fd()
    }

    /// The namespace's bind mount: what an OCI runtime takes as `linux.namespaces[].path`, or
    /// a jailer as `--netns`.
    pub fn netns_path(&self) -> &Path {
        &self.slot().addr.ns_path
    }

    /// The slot's address.
    pub fn ip(&self) -> std::net::Ipv4Addr {
        self.slot().addr.ip
    }

    /// The prefix length of the slot's subnet.
    pub fn prefix_len(&self) -> u8 {
        self.slot().addr.prefix_len
    }

    /// The default gateway (the host's address on the bridge).
    pub fn gateway(&self) -> std::net::Ipv4Addr {
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
        let ns_file = self
            .slot()
            .ns
            .try_clone()
            .map_err(SysError::io("duplicate fd of", "namespace"))?;
        tokio::task::spawn_blocking(move || ns::open_tap(&ns_file, tap))
            .await
            .map_err(|_| SysError::ThreadPanicked)?
            .map(Some)
    }

    /// Makes `cmd` start its process inside the slot's namespace (a `setns` between fork and
    /// exec; the parent never changes namespace).
    pub fn enter_on_exec<'c>(
        &self,
        cmd: &'c mut std::process::Command,
    ) -> &'c mut std::process::Command {
        use std::os::unix::process::CommandExt;
        let fd = self.slot().ns.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and calls only `setns`,
        // which is async-signal-safe; `fd` stays open in the child until exec (the lease,
        // which owns it, outlives the spawn call that borrows it through `cmd`).
        unsafe {
            cmd.pre_exec(move || {
                // SAFETY: `fd` is an open nsfs fd of the parent, inherited by the child.
                let ns = BorrowedFd::borrow_raw(fd);
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            })
        }
    }

    fn take(&mut self) -> Slot {
        // Only `release*` and `drop` take the slot, and they consume the lease.
        #[allow(clippy::expect_used)]
        let slot = self.slot.take().expect("a live lease holds its slot");
        let mut st = self.pool.lock();
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
        if let Err(mpsc::error::SendError(Returned::Released(slot) | Returned::Tainted(slot))) =
            self.pool.returns.send(Returned::Released(slot))
        {
            // The background task is gone (shutdown): destroy right here.
            let _ = slot.destroy();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut st = self.pool.lock();
            st.leased -= 1;
            self.pool.publish(&st);
            drop(st);
            tracing::warn!(pool = %self.pool.config.name, slot = %slot.addr.id, "lease dropped without release: slot tainted");
            if let Err(mpsc::error::SendError(Returned::Released(slot) | Returned::Tainted(slot))) =
                self.pool.returns.send(Returned::Tainted(slot))
            {
                // The background task is gone (shutdown): destroy right here.
                let _ = slot.destroy();
            }
        }
    }
}

//! One slot: creating it (undone on partial failure), checking it after a tenant, destroying it.
//!
//! # Design
//! A slot is created in this order: namespace (bind-mounted, IPv6 off) with a netlink socket
//! opened inside, veth with its peer `eth0` born in the namespace and the host end on the
//! bridge, then inside: `lo` up, address, `eth0` up, default route; VM slots add a persistent
//! TAP and the tc redirects. Last, the baseline [`NetState`] is read through the slot's socket.
//! If a step fails, the namespace is unmounted (the kernel then frees the veth with it) and the
//! host end is deleted, so nothing is left half-built.
//!
//! The pool sees a [`Slot`]: the address, and the namespace behind [`SlotNs`], here a
//! kernel namespace (a fake one in unit tests).
//!
//! # Behavior on release
//! [`Slot::scrub`] fails a kernel slot, and the pool destroys it, when a process or a live
//! socket is still in the namespace, when the host conntrack entries of its address cannot be
//! flushed, or when its links, addresses, routes or qdiscs differ from the baseline after
//! learned neighbours are flushed. Destroying means unmounting: the caller does not wait for
//! the kernel's teardown.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use tokio::time::Instant;

use crate::addressing::SlotAddress;
use crate::config::SlotKind;
use crate::sys::kernel::blocking;
use crate::sys::net::{self, NetState, Netlink};
use crate::sys::{BoxFuture, SlotNs, Sys, SysError, conntrack, ns};

/// The TAP device of VM slots.
pub const TAP_NAME: &str = "tap0";

/// A slot owned by the pool or by exactly one lease.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) addr: SlotAddress,
    pub(crate) tap: Option<&'static str>,
    pub(crate) ns: Box<dyn SlotNs>,
}

impl Slot {
    /// Checks and cleans the slot after a tenant; `Ok` means it can serve the next one.
    #[tracing::instrument(name = "netpool.scrub", skip_all, fields(slot = %self.addr.id))]
    pub(crate) async fn scrub(&self) -> Result<(), ScrubFailure> {
        self.ns.scrub(&self.addr).await
    }

    /// Closes the pool's fds on the namespace, then unmounts it; the kernel frees the
    /// namespace and its devices once nothing else holds it.
    pub(crate) async fn destroy(self, sys: &dyn Sys) -> Result<(), SysError> {
        let path = self.addr.ns_path.clone();
        drop(self);
        sys.remove_netns(&path).await
    }
}

/// A kernel slot's namespace: its file, its inode, the netlink socket opened inside it, and
/// the state read right after creation.
#[derive(Debug)]
struct KernelSlot {
    ns: File,
    ns_inode: u64,
    netlink: Netlink,
    baseline: NetState,
}

/// Why a released slot cannot be reused.
#[derive(Debug, thiserror::Error)]
pub enum ScrubFailure {
    #[error("processes {0:?} are still in the namespace")]
    Process(Vec<u32>),
    #[error("sockets are still open in the namespace: {0:?}")]
    Socket(Vec<String>),
    #[error("the namespace differs from its baseline: {0}")]
    State(String),
    #[error("host conntrack entries could not be flushed")]
    Conntrack(#[source] SysError),
    #[error("the slot could not be inspected")]
    Error(#[source] SysError),
}

impl ScrubFailure {
    /// The `check` label of the scrub-failure metric.
    pub(crate) fn check(&self) -> &'static str {
        match self {
            Self::Process(_) => "process",
            Self::Socket(_) => "socket",
            Self::State(_) => "state",
            Self::Conntrack(_) => "conntrack",
            Self::Error(_) => "error",
        }
    }
}

/// Creates a slot at `addr` whose host end joins bridge `bridge_index`.
#[tracing::instrument(name = "netpool.create", skip_all, fields(slot = %addr.id, ip = %addr.ip))]
pub(crate) async fn create(
    host: &Netlink,
    parent: Option<Arc<File>>,
    addr: SlotAddress,
    bridge_index: u32,
    kind: SlotKind,
    isolate: bool,
) -> Result<Slot, SysError> {
    let started = Instant::now();
    let path = addr.ns_path.clone();
    let created = tokio::task::spawn_blocking(move || ns::create_netns(&path, parent.as_deref()))
        .await
        .map_err(|_| SysError::ThreadPanicked)??;
    let result = configure(host, &addr, bridge_index, kind, isolate, created).await;
    match result {
        Ok(slot) => {
            tracing::debug!(slot = %slot.addr.id, ip = %slot.addr.ip, elapsed_us = started.elapsed().as_micros() as u64, "slot created");
            Ok(slot)
        }
        Err(e) => {
            // Undo: unmounting frees the namespace and eth0 with it; the host end goes with its
            // peer, and is deleted here in case something else pins the namespace.
            let mut cleanup = Vec::new();
            let path = addr.ns_path.clone();
            if let Err(c) = blocking(move || ns::remove_netns(&path)).await {
                cleanup.push(c.to_string());
            }
            if let Ok(Some(index)) = net::link_index(&host.handle, &addr.host_if).await
                && let Err(c) = net::delete_link(&host.handle, index, &addr.host_if).await
            {
                cleanup.push(c.to_string());
            }
            if !cleanup.is_empty() {
                tracing::error!(slot = %addr.id, error = %e, cleanup = ?cleanup, "slot creation failed and its cleanup failed too");
            }
            Err(e)
        }
    }
}

async fn configure(
    host: &Netlink,
    addr: &SlotAddress,
    bridge_index: u32,
    kind: SlotKind,
    isolate: bool,
    created: ns::NewNamespace,
) -> Result<Slot, SysError> {
    let ns_inode = ns::ns_inode(&created.ns)?;
    let netlink = Netlink::from_socket(created.netlink);
    net::create_veth(
        &host.handle,
        &addr.host_if,
        bridge_index,
        created.ns.as_raw_fd(),
        addr.mac,
        isolate,
    )
    .await?;
    let eth0 = net::configure_slot(&netlink.handle, addr.ip, addr.prefix_len, addr.gateway).await?;
    let tap = match kind {
        SlotKind::Container => None,
        SlotKind::Vm => {
            let ns_file = created
                .ns
                .try_clone()
                .map_err(SysError::io("duplicate fd of", "namespace"))?;
            tokio::task::spawn_blocking(move || ns::create_tap(&ns_file, TAP_NAME))
                .await
                .map_err(|_| SysError::ThreadPanicked)??;
            net::wire_tap(&netlink.handle, eth0, TAP_NAME).await?;
            Some(TAP_NAME)
        }
    };
    let baseline = net::net_state(&netlink.handle).await?;
    Ok(Slot {
        addr: addr.clone(),
        tap,
        ns: Box::new(KernelSlot {
            ns: created.ns,
            ns_inode,
            netlink,
            baseline,
        }),
    })
}

impl KernelSlot {
    async fn scrub(&self, addr: &SlotAddress) -> Result<(), ScrubFailure> {
        let inode = self.ns_inode;
        let procs = tokio::task::spawn_blocking(move || ns::processes_in(inode))
            .await
            .map_err(|_| ScrubFailure::Error(SysError::ThreadPanicked))?
            .map_err(ScrubFailure::Error)?;
        if !procs.is_empty() {
            return Err(ScrubFailure::Process(procs));
        }
        let ns_file = self
            .ns
            .try_clone()
            .map_err(|e| ScrubFailure::Error(SysError::io("duplicate fd of", "namespace")(e)))?;
        let sockets = tokio::task::spawn_blocking(move || ns::sockets(&ns_file))
            .await
            .map_err(|_| ScrubFailure::Error(SysError::ThreadPanicked))?
            .map_err(ScrubFailure::Error)?;
        if !sockets.live.is_empty() {
            return Err(ScrubFailure::Socket(sockets.live));
        }
        net::flush_neighbours(&self.netlink.handle)
            .await
            .map_err(ScrubFailure::Error)?;
        conntrack::flush(addr.ip)
            .await
            .map_err(ScrubFailure::Conntrack)?;
        let now = net::net_state(&self.netlink.handle)
            .await
            .map_err(ScrubFailure::Error)?;
        if now != self.baseline {
            return Err(ScrubFailure::State(self.baseline.diff(&now)));
        }
        Ok(())
    }

    async fn open_tap(&self, name: &'static str) -> Result<OwnedFd, SysError> {
        let ns_file = self
            .ns
            .try_clone()
            .map_err(SysError::io("duplicate fd of", "namespace"))?;
        tokio::task::spawn_blocking(move || ns::open_tap(&ns_file, name))
            .await
            .map_err(|_| SysError::ThreadPanicked)?
    }
}

impl SlotNs for KernelSlot {
    fn file(&self) -> &File {
        &self.ns
    }

    fn scrub<'a>(&'a self, addr: &'a SlotAddress) -> BoxFuture<'a, Result<(), ScrubFailure>> {
        Box::pin(KernelSlot::scrub(self, addr))
    }

    fn open_tap(&self, name: &'static str) -> BoxFuture<'_, Result<OwnedFd, SysError>> {
        Box::pin(KernelSlot::open_tap(self, name))
    }
}

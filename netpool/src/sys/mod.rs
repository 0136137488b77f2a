//! The only place that talks to the kernel: namespaces, mounts and TAP devices through `nix`
//! and `libc` on dedicated threads ([`ns`]), links, addresses, routes, neighbours and tc through
//! rtnetlink ([`net`]), the host's conntrack table ([`conntrack`]) and the host's packet
//! filter ([`firewall`]: the guard that keeps slots off the host, and the intra-bridge accept
//! of non-isolated pools).
//!
//! Namespace switches (`unshare`, `setns`) happen only on short-lived threads named
//! `netpool-ns` that this module spawns and joins; a tokio worker never changes namespace.
//! A namespace's netlink socket is opened on such a thread while it is inside the namespace,
//! then driven from async code.
//!
//! The pool reaches all of this through the [`Sys`] trait, whose real implementation is
//! [`kernel::Kernel`]; unit tests put a fake behind it (`crate::fake`) to drive the pool's
//! refill, recycle, reconcile and shutdown decisions without root.

pub(crate) mod conntrack;
pub(crate) mod firewall;
pub(crate) mod kernel;
pub(crate) mod net;
pub(crate) mod ns;

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use crate::addressing::SlotAddress;
use crate::config::SlotKind;
use crate::slot::{ScrubFailure, Slot};

/// A boxed future, so that [`Sys`] can be used as a trait object.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Every host operation the pool performs. Methods that return a future do their blocking
/// work off the tokio workers (on `netpool-ns` threads or through `spawn_blocking`); the
/// synchronous ones are directory reads of a tmpfs folder.
pub(crate) trait Sys: Send + Sync + std::fmt::Debug + 'static {
    /// Creates the pool's namespace folder and whatever slots are created from.
    fn prepare<'a>(&'a self, ns_dir: &'a Path) -> BoxFuture<'a, Result<(), SysError>>;
    /// Unmounts and removes the pool's namespace folder.
    fn remove_ns_dir<'a>(&'a self, ns_dir: &'a Path) -> BoxFuture<'a, Result<(), SysError>>;
    /// The entries of the pool's namespace folder (empty when it does not exist).
    fn ns_files(&self, ns_dir: &Path) -> Vec<PathBuf>;
    /// Unmounts and removes a namespace's bind mount; a missing one is not an error.
    fn remove_netns<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), SysError>>;
    /// Every IPv4 address on a host link and every IPv4 route of the host's main table but
    /// the default route.
    fn host_networks(&self) -> BoxFuture<'_, Result<Vec<HostNet>, SysError>>;
    /// Every host link, as (index, name).
    fn host_links(&self) -> BoxFuture<'_, Result<Vec<(u32, String)>, SysError>>;
    /// The index of host link `name`, if it exists.
    fn host_link_index<'a>(&'a self, name: &'a str)
    -> BoxFuture<'a, Result<Option<u32>, SysError>>;
    /// Deletes host link `index`; a missing one is not an error.
    fn delete_host_link<'a>(
        &'a self,
        index: u32,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), SysError>>;
    /// Deletes the host's conntrack entries of `ip`.
    fn flush_conntrack(&self, ip: Ipv4Addr) -> BoxFuture<'_, Result<(), SysError>>;
    /// Creates bridge `name` with its gateway address and MAC; returns its index.
    fn create_bridge<'a>(
        &'a self,
        name: &'a str,
        gateway: Ipv4Addr,
        prefix_len: u8,
        mac: [u8; 6],
    ) -> BoxFuture<'a, Result<u32, SysError>>;
    /// Lets the ports of bridge `name` reach each other through the host's firewall.
    fn allow_intra_bridge<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SysError>>;
    /// Removes what [`Sys::allow_intra_bridge`] added; a missing rule is not an error.
    fn remove_intra_bridge<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SysError>>;
    /// Creates the host guard of pool `pool` ([`firewall`]): what its slots may not reach on
    /// the host and beyond, but the host ports in `allow`. Undoes itself on failure.
    fn install_guard<'a>(
        &'a self,
        pool: &'a str,
        allow: &'a [(u16, u16)],
    ) -> BoxFuture<'a, Result<(), SysError>>;
    /// Sends bridge `bridge`'s traffic through the guard of `pool`; undoes itself on failure.
    fn guard_bridge<'a>(
        &'a self,
        pool: &'a str,
        bridge: &'a str,
    ) -> BoxFuture<'a, Result<(), SysError>>;
    /// Removes the guard of `pool` and every bridge's way into it; missing parts are not
    /// errors. Keeps going past failures and returns every one.
    fn remove_guard<'a>(&'a self, pool: &'a str) -> BoxFuture<'a, Vec<SysError>>;
    /// Creates a slot at `addr` whose host end joins bridge `bridge_index`; undoes itself on
    /// failure.
    fn create_slot(
        &self,
        addr: SlotAddress,
        bridge_index: u32,
        kind: SlotKind,
        isolate: bool,
    ) -> BoxFuture<'_, Result<Slot, SysError>>;
}

/// A created slot's namespace, as the [`Sys`] that created it holds it.
pub(crate) trait SlotNs: Send + Sync + std::fmt::Debug {
    /// The namespace's nsfs file; valid as long as the slot lives.
    fn file(&self) -> &File;
    /// Checks and cleans the namespace after a tenant; `Ok` means it can serve the next one.
    fn scrub<'a>(&'a self, addr: &'a SlotAddress) -> BoxFuture<'a, Result<(), ScrubFailure>>;
    /// Opens an fd on TAP device `name` inside the namespace.
    fn open_tap(&self, name: &'static str) -> BoxFuture<'_, Result<OwnedFd, SysError>>;
}

/// What a [`HostNet`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostNetKind {
    /// An address on a link, with the prefix length of its subnet.
    Address,
    /// A route of the main table.
    Route,
}

/// An IPv4 range already in use on the host: an address on a link (`10.230.0.1/22` on
/// `w0br0`), or a route of the main table (`10.230.0.0/22` dev `w0br0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostNet {
    pub kind: HostNetKind,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The link it is on or routes through; empty when the route names none.
    pub link: String,
}

impl HostNet {
    /// Whether this range and `ip/prefix_len` share an address.
    pub fn overlaps(&self, ip: Ipv4Addr, prefix_len: u8) -> bool {
        let common = self.prefix_len.min(prefix_len).min(32);
        let mask = u32::MAX.checked_shl(32 - u32::from(common)).unwrap_or(0);
        u32::from(self.ip) & mask == u32::from(ip) & mask
    }
}

impl std::fmt::Display for HostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let link = if self.link.is_empty() {
            "no link"
        } else {
            &self.link
        };
        match self.kind {
            HostNetKind::Address => write!(f, "address {}/{} on {link}", self.ip, self.prefix_len),
            HostNetKind::Route => write!(f, "route {}/{} via {link}", self.ip, self.prefix_len),
        }
    }
}

/// A failed kernel operation; each variant names the operation and its target.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("cannot {op} {target}")]
    Io {
        op: &'static str,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {op} {target}")]
    Nix {
        op: &'static str,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("netlink: cannot {op} {target}")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot start a netpool-ns thread")]
    Thread(#[source] std::io::Error),
    #[error("a netpool-ns thread panicked")]
    ThreadPanicked,
    #[error("{0} not found")]
    NotFound(String),
    #[error("cannot flush conntrack entries of {ip}: {detail}")]
    Conntrack { ip: Ipv4Addr, detail: String },
    #[error("iptables {command}: {detail}")]
    Firewall { command: String, detail: String },
}

impl SysError {
    pub(crate) fn io(
        op: &'static str,
        target: impl std::fmt::Display,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let target = target.to_string();
        move |source| Self::Io { op, target, source }
    }

    pub(crate) fn nix(
        op: &'static str,
        target: impl std::fmt::Display,
    ) -> impl FnOnce(nix::Error) -> Self {
        let target = target.to_string();
        move |source| Self::Nix { op, target, source }
    }

    pub(crate) fn netlink(
        op: &'static str,
        target: impl std::fmt::Display,
    ) -> impl FnOnce(rtnetlink::Error) -> Self {
        let target = target.to_string();
        move |source| Self::Netlink { op, target, source }
    }
}

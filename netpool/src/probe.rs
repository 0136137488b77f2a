//! Inspecting any network namespace by path, with the checks a slot gets on release: for
//! namespaces this crate did not create, such as a Docker pause container's
//! (`/proc/<pid>/ns/net`), which `pcpm` checks before it reuses one.

use std::fs::File;
use std::path::Path;

use crate::sys::net::{self, NetState, Netlink};
use crate::sys::{SysError, ns};

/// What a tenant could change in a namespace: links, addresses, routes, learned neighbours,
/// qdiscs. Compare two to see whether anything changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceState(NetState);

impl NamespaceState {
    /// What differs from `before`, one `+`/`-` entry per line of state; empty when equal.
    pub fn diff(&self, before: &Self) -> String {
        before.0.diff(&self.0)
    }
}

/// An open namespace: its fd and a netlink socket opened inside it.
#[derive(Debug)]
pub struct NamespaceProbe {
    ns: File,
    inode: u64,
    netlink: Netlink,
}

impl NamespaceProbe {
    /// Opens the namespace at `path` (an nsfs file: a bind mount or `/proc/<pid>/ns/net`).
    pub async fn open(path: &Path) -> Result<Self, SysError> {
        let path = path.to_owned();
        let (ns, socket) = tokio::task::spawn_blocking(move || {
            let ns = File::open(&path).map_err(SysError::io("open namespace", path.display()))?;
            let socket = ns::netlink_socket_in(&ns)?;
            Ok::<_, SysError>((ns, socket))
        })
        .await
        .map_err(|_| SysError::ThreadPanicked)??;
        Ok(Self {
            inode: ns::ns_inode(&ns)?,
            netlink: Netlink::from_socket(socket),
            ns,
        })
    }

    /// The namespace's current state.
    pub async fn state(&self) -> Result<NamespaceState, SysError> {
        net::net_state(&self.netlink.handle)
            .await
            .map(NamespaceState)
    }

    /// Deletes the neighbour entries the kernel learned from traffic.
    pub async fn flush_learned_neighbours(&self) -> Result<(), SysError> {
        net::flush_neighbours(&self.netlink.handle).await
    }

    /// Sockets some fd still holds (TCP, UDP, raw, UNIX, packet).
    pub async fn live_sockets(&self) -> Result<Vec<String>, SysError> {
        let ns = self
            .ns
            .try_clone()
            .map_err(SysError::io("duplicate fd of", "namespace"))?;
        tokio::task::spawn_blocking(move || ns::sockets(&ns))
            .await
            .map_err(|_| SysError::ThreadPanicked)?
            .map(|inv| inv.live)
    }

    /// Processes (other than this one) with a thread in the namespace.
    pub async fn processes(&self) -> Result<Vec<u32>, SysError> {
        let inode = self.inode;
        tokio::task::spawn_blocking(move || ns::processes_in(inode))
            .await
            .map_err(|_| SysError::ThreadPanicked)?
    }
}

//! Pools of pre-created network namespaces.
//!
//! Creating a namespace with a veth pair, an address and a route takes milliseconds and a turn
//! on the kernel's global RTNL lock; under concurrency those turns queue up. `netpool` does that
//! work ahead of need, so a cold start only takes a ready namespace: a lease costs microseconds
//! and no syscall.
//!
//! A slot is a network namespace, bind-mounted under the pool's folder, with `lo` up and an
//! `eth0` (the inner end of a veth pair born inside the namespace; the host end sits on one of
//! the pool's bridges) carrying an address, a MAC and a default route via the bridge's gateway
//! address. VM slots add a persistent TAP device wired to `eth0` by tc redirects, so a guest
//! owns the slot's address and MAC.
//!
//! - [`PoolConfig`]: sizes, watermarks, addressing, slot kind, isolation; validated up front.
//! - [`NetPool`]: reconciles an earlier run's leftovers, refills in the background, hands out
//!   [`Lease`]s and shuts down leaving nothing behind.
//! - [`Lease`]: the namespace's fd and path (for an OCI runtime's spec), a way to start a
//!   process inside it, its address, gateway and MAC, and for VM slots its TAP.
//! - [`NamespaceProbe`]: the same checks for any namespace by path (a Docker pause container's,
//!   say): state to compare, live sockets, processes, learned neighbours to flush.
//! - [`metrics`]: the metric names this crate records.
//!
//! Threading: no tokio worker ever changes namespace. Namespace work runs on short-lived
//! threads named `netpool-ns`; each slot's netlink socket is opened inside the slot on such a
//! thread and then used from async code (`shared/netpool-notes.md` §1).

mod addressing;
mod config;
#[cfg(test)]
mod fake;
pub mod metrics;
mod pool;
mod probe;
mod slot;
mod sys;

pub use addressing::{SlotAddress, SlotId};
pub use config::{OnEmpty, PoolConfig, PoolConfigError, SlotKind};
pub use pool::{Lease, NetPool, PoolError, PoolStats, Released};
pub use probe::{NamespaceProbe, NamespaceState};
pub use slot::{ScrubFailure, TAP_NAME};
pub use sys::{HostNet, HostNetKind, SysError};

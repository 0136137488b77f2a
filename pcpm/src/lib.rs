//! Pause-container pool manager (PCPM).
//!
//! Docker creates a container's network (namespace, veth, address, iptables) on the cold-start
//! path, and dockerd serializes much of that work: under concurrency, cold starts queue behind
//! each other. PCPM (`shared/papers/004_…`) keeps pause containers whose network already
//! exists; a function container joins one (`--network container:<id>`) and hands it back when it
//! is removed. A pause container is environment-agnostic: one that served a Python function
//! serves a Node.js function next.
//!
//! - [`PcpmConfig`], [`NetworkKey`], [`OnEmpty`]: the pause image, watermarks, limits, and the
//!   network configurations (Docker network, DNS, exposed ports) pools are kept for.
//! - [`Pcpm`]: reconciles an earlier run's containers (adopts the clean ones, removes the
//!   rest), refills each pool in the background, hands out [`Endpoint`]s, shuts down leaving
//!   nothing behind.
//! - [`Endpoint`] / [`PauseHandle`]: the network mode for the function container, the pause
//!   container's id and IP; [`PauseHandle::release`] checks the namespace is as it was new
//!   before reuse ([`Released`], [`ReplaceReason`]). An idle pause container whose process
//!   exited (stopped, killed, gone with a restarted dockerd) is removed, never handed out.
//! - [`metrics`]: the metric names this crate records.
//! - [`docker`]: what every Docker user in the workspace shares (connect with version
//!   negotiation, a container's address, a removal that tolerates absence).
//!
//! The pause process itself is `src/bin/pause.rs` (binary `pcpm-pause`), linked statically by
//! `runtimes/build.sh` into `whisk-pcpm/pause:latest` (FROM scratch, 1.2 MB): PID 1 of its
//! container, it reaps the zombies handed to it and exits 0 on SIGTERM or SIGINT, as the
//! Kubernetes pause container does.
//!
//! Threading: the namespace checks go through [`netpool::NamespaceProbe`], which does its
//! namespace work on dedicated threads; nothing here changes a tokio worker's namespace.

mod config;
pub mod docker;
mod engine;
#[cfg(test)]
mod fake;
pub mod metrics;
mod pool;
mod process;

pub use config::{ConfigError, DEFAULT_PAUSE_IMAGE, NetworkKey, OnEmpty, PcpmConfig};
pub use engine::{EngineError, LABEL_KEY, LABEL_KEY_SPEC, LABEL_MANAGER, LABEL_RUN};
pub use pool::{
    Endpoint, PauseHandle, Pcpm, PcpmError, PoolStats, Reconciled, Released, ReplaceReason,
};

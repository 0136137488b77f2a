//! The narrow interface between the container pool and the sandbox backends.
//!
//! The pool decides *which* sandbox runs an activation; a backend only knows how to make one
//! from a [`ContainerSpec`], pause and resume it, say where its action proxy listens, hand out
//! its output as a [`logs::LogSource`], and remove it. Nothing in the seam is Docker's: the
//! Docker backend ([`docker::DockerFactory`]) tails its `json-file` log, the OCI-runtime
//! backend ([`runc::RuncFactory`]) reads the container's pipes, and a microVM or unikernel
//! backend would feed its console into the same kind of source.
//!
//! - [`ContainerFactory`] / [`Container`]: the seam.
//! - [`proxy`]: the HTTP protocol of the action proxy (`/init`, `/run`) and how its answers
//!   become activation responses (contract §5.2, §5.3).
//! - [`logs`]: log sources and the collector with sentinels, limits and notices (§5.4).
//! - [`image_store`]: runtime images read from `docker save` archives on disk, so the OCI-runtime
//!   backend needs no Docker daemon to unpack them.
//! - [`router`]: in the container modes, sends the specs that ask for a VM ([`Sandbox::Vm`]) to
//!   the VM backend and the others to the container backend.

mod cgroup;
pub mod docker;
#[cfg(test)]
pub mod fake;
pub mod image_store;
pub mod logs;
pub mod proxy;
pub mod router;
pub mod runc;
pub mod vm;

use std::error::Error;
use std::fmt::{self, Debug};
use std::net::SocketAddr;

/// A backend's own error behind the seam (each backend has a typed enum of its own).
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Where an image comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageOrigin {
    /// Already on the host (built by `runtimes/build.sh` or placed there by the deployment):
    /// never fetched.
    Local,
    /// A user's blackbox image in a registry: fetched before use by backends that fetch
    /// images (contract §5.1).
    Registry,
}

/// An image by name and origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub name: String,
    pub origin: ImageOrigin,
}

impl ImageRef {
    pub fn local(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            origin: ImageOrigin::Local,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// What kind of sandbox a spec asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Sandbox {
    /// The invoker's backend for its network mode (a VM in `vm` mode).
    #[default]
    Mode,
    /// A microVM whatever the mode: a `wasm:0.1` action (the unikernel), or an action annotated
    /// `sandbox: vm` where the invoker allows it.
    Vm,
}

/// What a sandbox is created with (contract §5.1): what every backend needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSpec {
    /// `wsk<uniqueName><N>_<counter>_<prefix>_<suffix>`.
    pub name: String,
    pub image: ImageRef,
    pub memory_mb: u64,
    /// The relative CPU weight (Docker's `--cpu-shares` scale, 2..1024).
    pub cpu_shares: u64,
    /// A hard CPU limit in CPUs (`whisk.containerPool.user-cpus` set).
    pub cpus: Option<f64>,
    /// `K=V` pairs: `__OW_API_HOST` and the configured extra variables.
    pub env: Vec<String>,
    /// Which backend: the mode's, or a VM beside it (see [`router`]).
    pub sandbox: Sandbox,
}

/// No container for a run. The variants decide the activation's answer (see
/// `invoke.rs`): [`CreateError::ImagePull`] and [`CreateError::NoExecutable`] are developer
/// errors, every other variant is the whisk error `Failed to provision resources to run the
/// action.`
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The backend failed.
    #[error("cannot provision a container")]
    Provision(#[source] BoxError),
    /// The image could not be fetched.
    #[error("cannot pull image {image}")]
    ImagePull {
        image: String,
        #[source]
        source: BoxError,
    },
    /// The image is missing or has no runnable entry point.
    #[error("executable file not found in image {image}")]
    NoExecutable {
        image: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The action has no code to run in a container (a sequence).
    #[error("the action is not runnable")]
    NotRunnable,
    /// The pool is closed.
    #[error("the invoker is shutting down")]
    ShuttingDown,
    /// The action needs more memory than the whole pool has.
    #[error("the action needs {need_mb} MB, more than the invoker's {have_mb} MB")]
    TooBig { need_mb: u64, have_mb: u64 },
    /// The run waited for a container being created for the same action, and that failed
    /// (with this error, as text: the first run got the error itself).
    #[error("the container this run waited for failed: {0}")]
    JoinedFailed(String),
    /// The run waited for a container being created, and its creation was dropped.
    #[error("the container start was abandoned")]
    Abandoned,
}

impl CreateError {
    /// A backend failure.
    pub fn provision(e: impl Into<BoxError>) -> Self {
        Self::Provision(e.into())
    }
}

/// A backend operation on an existing container failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} container {id}")]
pub struct BackendError {
    pub action: &'static str,
    pub id: String,
    #[source]
    pub source: BoxError,
}

/// Several failures of one teardown, which keeps going past each (shown in order, each with
/// its sources: there is no single source to chain).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| openwhisk::errors::chain(e.as_ref())).collect::<Vec<_>>().join("; "))]
pub struct Errors(pub Vec<BoxError>);

/// Makes containers and cleans up after an earlier run.
#[async_trait::async_trait]
pub trait ContainerFactory: Send + Sync + Debug {
    /// Creates and starts a container whose action proxy listens on port 8080.
    async fn create(&self, spec: &ContainerSpec) -> Result<Box<dyn Container>, CreateError>;

    /// Removes every container whose name starts with `prefix` (an earlier run's, or ours at
    /// shutdown); returns how many.
    async fn remove_all(&self, prefix: &str) -> Result<usize, BackendError>;
}

/// A running action container.
#[async_trait::async_trait]
pub trait Container: Send + Sync + Debug {
    /// The backend's id.
    fn id(&self) -> &str;
    /// Where the action proxy listens.
    fn addr(&self) -> SocketAddr;
    /// The container's output, if the backend collects it. One reader at a time (the lock),
    /// across activations: each collection continues where the previous one stopped.
    fn logs(&self) -> Option<&logs::Logs>;
    /// Freezes the container's processes.
    async fn pause(&self) -> Result<(), BackendError>;
    /// Thaws them.
    async fn resume(&self) -> Result<(), BackendError>;
    /// Whether the kernel killed the container for memory.
    async fn oom_killed(&self) -> bool;
    /// Completes when the sandbox has ended on its own. A container's processes close their
    /// connections when they die, so a request in flight learns of it; a dead VMM's guest
    /// closes nothing, so callers race requests against this. The default never completes.
    async fn ended(&self) {
        std::future::pending::<()>().await;
    }
    /// Removes the container and gives back what it held (a network endpoint, say).
    async fn destroy(&self) -> Result<(), BackendError>;
}

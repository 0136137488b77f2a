//! The narrow interface between the container pool and the container backends.
//!
//! The pool decides *which* container runs an activation; a backend only knows how to make a
//! container, pause and resume it, say where its action proxy listens and where its log file
//! is, and remove it. The Docker backend ([`docker::DockerFactory`]) implements it today with
//! bridge networking or pcpm pause containers; the OCI-runtime backend with netpool namespaces
//! and a VM backend plug in behind the same two traits without touching the pool.
//!
//! - [`ContainerFactory`] / [`Container`]: the seam.
//! - [`proxy`]: the HTTP protocol of the action proxy (`/init`, `/run`) and how its answers
//!   become activation responses (contract §5.2, §5.3).
//! - [`logs`]: reading a container's JSON-lines log with sentinels, limits and notices (§5.4).

pub mod docker;
pub mod logs;
pub mod proxy;
pub mod runc;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::Path;

/// What a container is created with (contract §5.1).
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSpec {
    /// `wsk<uniqueName><N>_<counter>_<prefix>_<suffix>`.
    pub name: String,
    pub image: String,
    pub memory_mb: u64,
    pub cpu_shares: u64,
    pub cpus: Option<f64>,
    /// `K=V` pairs: `__OW_API_HOST` and the configured extra variables.
    pub env: Vec<String>,
    /// Pull the image first (blackbox images that are not local).
    pub pull: bool,
}

/// A container could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The backend failed (a whisk error: `Failed to provision resources to run the action.`).
    #[error("cannot provision a container: {0}")]
    Provision(String),
    /// The image could not be pulled (a developer error).
    #[error("cannot pull image {0}")]
    ImagePull(String),
    /// The image has no runnable entry point (a developer error).
    #[error("executable file not found in image {0}")]
    NoExecutable(String),
}

/// A backend operation on an existing container failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} container {id}: {detail}")]
pub struct BackendError {
    pub action: &'static str,
    pub id: String,
    pub detail: String,
}

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
    /// The container's log in Docker's `json-file` format, if the backend collects one.
    fn log_file(&self) -> Option<&Path>;
    /// Freezes the container's processes.
    async fn pause(&self) -> Result<(), BackendError>;
    /// Thaws them.
    async fn resume(&self) -> Result<(), BackendError>;
    /// Whether the kernel killed the container for memory.
    async fn oom_killed(&self) -> bool;
    /// Removes the container and gives back what it held (a network endpoint, say).
    async fn destroy(&self) -> Result<(), BackendError>;
}

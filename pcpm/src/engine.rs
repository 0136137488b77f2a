//! The Docker calls the pool makes, in one place: create and start a pause container, inspect
//! it, list a manager's containers, remove one; and opening a pause container's network
//! namespace for the release checks. Everything goes through the Engine API (bollard); no
//! docker CLI.
//!
//! The pool reaches all of it through the [`Engine`] trait, so its state machine runs against a
//! fake in unit tests; [`DockerEngine`] is the real one.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
};
use futures::future::BoxFuture;
use netpool::{NamespaceProbe, NamespaceState, SysError};

use crate::config::NetworkKey;

/// Label: the manager that owns the container ([`crate::PcpmConfig::name`]).
pub const LABEL_MANAGER: &str = "pcpm.manager";
/// Label: the pool's key id ([`NetworkKey::id`]).
pub const LABEL_KEY: &str = "pcpm.key";
/// Label: the pool's key as JSON, so a restarted manager can tell which pool a container fits.
pub const LABEL_KEY_SPEC: &str = "pcpm.key.spec";
/// Label: the run of the manager that created it.
pub const LABEL_RUN: &str = "pcpm.run";

/// A Docker call that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Docker has no such container (it answered 404).
    #[error("docker: {action} {target}: no such container")]
    NotFound {
        action: &'static str,
        target: String,
    },
    #[error("docker: {action} {target}")]
    Docker {
        action: &'static str,
        target: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl EngineError {
    fn new(action: &'static str, target: &str) -> impl FnOnce(bollard::errors::Error) -> Self {
        let target = target.to_owned();
        move |source| match source {
            source if crate::docker::is_not_found(&source) => Self::NotFound { action, target },
            source => Self::Docker {
                action,
                target,
                source,
            },
        }
    }

    /// Whether Docker answered 404 (no such container).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// What the pool needs of the container engine and of the host's namespaces. [`DockerEngine`]
/// is the real one; the pool's unit tests use a fake.
pub(crate) trait Engine: Debug + Send + Sync {
    /// Creates and starts a pause container and returns its id; a container created but not
    /// started is removed again.
    fn create_pause<'a>(
        &'a self,
        name: &'a str,
        image: &'a str,
        key: &'a NetworkKey,
        labels: HashMap<String, String>,
    ) -> BoxFuture<'a, Result<String, EngineError>>;

    /// The container's state, namespace pid, address on `network` and shared files.
    fn inspect<'a>(
        &'a self,
        id: &'a str,
        network: &'a str,
    ) -> BoxFuture<'a, Result<Inspected, EngineError>>;

    /// Every container, running or not, labelled by the manager `manager`.
    fn list<'a>(&'a self, manager: &'a str) -> BoxFuture<'a, Result<Vec<Listed>, EngineError>>;

    /// Removes a container (force: a running one is killed). A container already gone is fine.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Opens the network namespace of the process `pid` (a pause container's).
    fn open_namespace(&self, pid: u32) -> BoxFuture<'_, Result<Box<dyn Namespace>, SysError>>;

    /// Watches the process `pid` (a pause process) for its exit.
    fn watch_process(&self, pid: u32) -> Result<Box<dyn Process>, SysError>;
}

/// A pause process the pool holds on to: tells, without waiting, whether it has exited (its
/// container stopped, was killed, or died with its dockerd). Idle pause containers whose process
/// exited are removed instead of handed out.
pub(crate) trait Process: Debug + Send + Sync {
    fn exited(&self) -> bool;
}

/// An open network namespace: what the release checks read of it.
pub(crate) trait Namespace: Debug + Send + Sync {
    /// Deletes the neighbour entries the kernel learned from traffic.
    fn flush_learned_neighbours(&self) -> BoxFuture<'_, Result<(), SysError>>;
    /// The links, addresses, routes and qdiscs.
    fn state(&self) -> BoxFuture<'_, Result<NetState, SysError>>;
    /// Sockets some fd still holds.
    fn live_sockets(&self) -> BoxFuture<'_, Result<Vec<String>, SysError>>;
    /// Processes with a thread in the namespace.
    fn processes(&self) -> BoxFuture<'_, Result<Vec<u32>, SysError>>;
}

/// A namespace's state as the release check compares it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NetState {
    /// Read by [`netpool::NamespaceProbe`].
    Probed(NamespaceState),
    /// Made up by a unit test's fake (netpool's state cannot be built outside netpool).
    #[cfg(test)]
    Fake(String),
}

impl NetState {
    /// What differs from `before`.
    pub fn diff(&self, before: &Self) -> String {
        match (self, before) {
            (Self::Probed(now), Self::Probed(before)) => now.diff(before),
            #[cfg(test)]
            (now, before) => format!("{before:?} -> {now:?}"),
        }
    }
}

/// The real engine: Docker through bollard, namespaces through [`netpool::NamespaceProbe`].
#[derive(Debug, Clone)]
pub(crate) struct DockerEngine(pub Docker);

impl Engine for DockerEngine {
    fn create_pause<'a>(
        &'a self,
        name: &'a str,
        image: &'a str,
        key: &'a NetworkKey,
        labels: HashMap<String, String>,
    ) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(create_pause(&self.0, name, image, key, labels))
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
        network: &'a str,
    ) -> BoxFuture<'a, Result<Inspected, EngineError>> {
        Box::pin(inspect(&self.0, id, network))
    }

    fn list<'a>(&'a self, manager: &'a str) -> BoxFuture<'a, Result<Vec<Listed>, EngineError>> {
        Box::pin(list(&self.0, manager))
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(remove(&self.0, id))
    }

    fn open_namespace(&self, pid: u32) -> BoxFuture<'_, Result<Box<dyn Namespace>, SysError>> {
        Box::pin(async move {
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            let probe = NamespaceProbe::open(Path::new(&path)).await?;
            Ok(Box::new(probe) as Box<dyn Namespace>)
        })
    }

    fn watch_process(&self, pid: u32) -> Result<Box<dyn Process>, SysError> {
        crate::process::Watch::open(pid)
            .map(|w| Box::new(w) as Box<dyn Process>)
            .map_err(|source| SysError::Io {
                op: "watch",
                target: format!("process {pid}"),
                source,
            })
    }
}

impl Process for crate::process::Watch {
    fn exited(&self) -> bool {
        crate::process::Watch::exited(self)
    }
}

impl Namespace for NamespaceProbe {
    fn flush_learned_neighbours(&self) -> BoxFuture<'_, Result<(), SysError>> {
        Box::pin(NamespaceProbe::flush_learned_neighbours(self))
    }

    fn state(&self) -> BoxFuture<'_, Result<NetState, SysError>> {
        Box::pin(async move { NamespaceProbe::state(self).await.map(NetState::Probed) })
    }

    fn live_sockets(&self) -> BoxFuture<'_, Result<Vec<String>, SysError>> {
        Box::pin(NamespaceProbe::live_sockets(self))
    }

    fn processes(&self) -> BoxFuture<'_, Result<Vec<u32>, SysError>> {
        Box::pin(NamespaceProbe::processes(self))
    }
}

/// What the pool needs to know of a running pause container.
#[derive(Clone, Debug)]
pub(crate) struct Inspected {
    pub running: bool,
    pub pid: u32,
    pub ip: Option<IpAddr>,
    /// The files a joining container shares with its network's owner (`/etc/hosts`,
    /// `/etc/resolv.conf`, `/etc/hostname`), as host paths.
    pub shared_files: Vec<PathBuf>,
}

/// A container some manager labelled.
#[derive(Clone, Debug)]
pub(crate) struct Listed {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
    pub image: String,
}

/// The container body of a pause container for `key`.
fn pause_body(
    image: &str,
    key: &NetworkKey,
    labels: HashMap<String, String>,
) -> ContainerCreateBody {
    let nonempty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    ContainerCreateBody {
        image: Some(image.to_owned()),
        labels: Some(labels),
        exposed_ports: (!key.exposed_ports.is_empty()).then(|| {
            key.exposed_ports
                .iter()
                .map(|p| format!("{p}/tcp"))
                .collect()
        }),
        network_disabled: Some(false),
        host_config: Some(HostConfig {
            network_mode: Some(key.network.clone()),
            dns: nonempty(&key.dns),
            dns_search: nonempty(&key.dns_search),
            dns_options: nonempty(&key.dns_options),
            // The pause process needs nothing: no capability, a read-only root, few pids.
            cap_drop: Some(vec!["ALL".to_owned()]),
            readonly_rootfs: Some(true),
            pids_limit: Some(16),
            memory: Some(16 * 1024 * 1024),
            // Not `--init`: the pause process is the init.
            init: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates and starts a pause container; a container created but not started is removed again.
async fn create_pause(
    docker: &Docker,
    name: &str,
    image: &str,
    key: &NetworkKey,
    labels: HashMap<String, String>,
) -> Result<String, EngineError> {
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    let id = docker
        .create_container(Some(options), pause_body(image, key, labels))
        .await
        .map_err(EngineError::new("create pause container", name))?
        .id;
    if let Err(e) = docker.start_container(&id, None).await {
        let _ = remove(docker, &id).await;
        return Err(EngineError::new("start pause container", name)(e));
    }
    Ok(id)
}

/// The container's state, namespace pid, address on `network` and shared files.
async fn inspect(docker: &Docker, id: &str, network: &str) -> Result<Inspected, EngineError> {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(EngineError::new("inspect", id))?;
    let ip = crate::docker::ip_on(&info, network);
    let state = info.state.unwrap_or_default();
    let running = state.status == Some(ContainerStateStatusEnum::RUNNING);
    let pid = state
        .pid
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_default();
    let shared_files = [info.hosts_path, info.resolv_conf_path, info.hostname_path]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    Ok(Inspected {
        running,
        pid,
        ip,
        shared_files,
    })
}

/// Every container, running or not, labelled by the manager `manager`.
async fn list(docker: &Docker, manager: &str) -> Result<Vec<Listed>, EngineError> {
    let filters = HashMap::from([("label", vec![format!("{LABEL_MANAGER}={manager}")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .map_err(EngineError::new("list containers of manager", manager))?;
    Ok(containers
        .into_iter()
        .filter_map(|c| {
            Some(Listed {
                id: c.id?,
                labels: c.labels.unwrap_or_default(),
                running: c
                    .state
                    .is_some_and(|s| s == bollard::models::ContainerSummaryStateEnum::RUNNING),
                image: c.image.unwrap_or_default(),
            })
        })
        .collect())
}

/// Removes a container (force: a running one is killed). A container already gone is fine.
async fn remove(docker: &Docker, id: &str) -> Result<(), EngineError> {
    crate::docker::remove_container(docker, id)
        .await
        .map(|_| ())
        .map_err(EngineError::new("remove", id))
}

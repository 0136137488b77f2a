//! The Docker calls the pool makes, in one place: create and start a pause container, inspect
//! it, list a manager's containers, remove one. Everything goes through the Engine API
//! (bollard); no docker CLI.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};

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
#[error("docker: {action} {target}")]
pub struct EngineError {
    action: &'static str,
    target: String,
    #[source]
    source: bollard::errors::Error,
}

impl EngineError {
    fn new(action: &'static str, target: &str) -> impl FnOnce(bollard::errors::Error) -> Self {
        let target = target.to_owned();
        move |source| Self {
            action,
            target,
            source,
        }
    }

    /// Whether Docker answered 404 (no such container).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.source,
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            }
        )
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
pub(crate) async fn create_pause(
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
pub(crate) async fn inspect(
    docker: &Docker,
    id: &str,
    network: &str,
) -> Result<Inspected, EngineError> {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(EngineError::new("inspect", id))?;
    let state = info.state.unwrap_or_default();
    let running = state.status == Some(ContainerStateStatusEnum::RUNNING);
    let pid = state
        .pid
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_default();
    let ip = info
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|mut nets| nets.remove(network))
        .and_then(|n| n.ip_address)
        .and_then(|ip| ip.parse().ok());
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
pub(crate) async fn list(docker: &Docker, manager: &str) -> Result<Vec<Listed>, EngineError> {
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
pub(crate) async fn remove(docker: &Docker, id: &str) -> Result<(), EngineError> {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let e = EngineError::new("remove", id)(e);
            if e.is_not_found() { Ok(()) } else { Err(e) }
        }
    }
}

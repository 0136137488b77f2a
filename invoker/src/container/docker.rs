//! The Docker backend through the Engine API (bollard; no docker CLI): the flags of contract
//! §5.1, the address on the configured network (or a pcpm pause container's), the `json-file`
//! log tailed with inotify, pause and unpause, removal of our leftovers by name prefix.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder,
};
use futures::StreamExt;
use pcpm::{Endpoint, NetworkKey, Pcpm};
use tokio::sync::Semaphore;

use super::logs::{FileWatcher, JsonFile, Logs};
use super::{
    BackendError, Container, ContainerFactory, ContainerSpec, CreateError, Errors, ImageOrigin,
};

/// How long `oom_killed` waits for a broken container to stop before reading Docker's verdict.
const OOM_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// A Docker backend failure.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The Engine API answered 404 (no such container or image).
    #[error("docker {call}: not found")]
    NotFound {
        call: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("docker {call}")]
    Api {
        call: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("no pause container")]
    Pcpm(#[source] pcpm::PcpmError),
    #[error("container {id} has no address on network {network}")]
    NoAddress { id: String, network: String },
}

impl DockerError {
    fn api(call: &'static str) -> impl FnOnce(bollard::errors::Error) -> Self {
        move |source| match source {
            source if pcpm::docker::is_not_found(&source) => Self::NotFound { call, source },
            source => Self::Api { call, source },
        }
    }
}

/// Where function containers get their network.
#[derive(Debug, Clone)]
pub enum Networking {
    /// Stock OpenWhisk: Docker creates the network (`--network <key.network>`, DNS of the key).
    Bridge(NetworkKey),
    /// A pause container from a pcpm pool (`--network container:<id>`), released on removal.
    Pcpm(Pcpm, NetworkKey),
}

/// Creates action containers through dockerd.
#[derive(Debug)]
pub struct DockerFactory {
    docker: Docker,
    networking: Networking,
    /// `whisk.docker.client.parallel-runs`.
    runs: Semaphore,
    /// Wakes the log collectors of every container of this factory.
    log_watcher: FileWatcher,
}

impl DockerFactory {
    pub fn new(docker: Docker, networking: Networking, parallel_runs: usize) -> Self {
        Self {
            docker,
            networking,
            runs: Semaphore::new(parallel_runs.max(1)),
            log_watcher: FileWatcher::default(),
        }
    }

    fn key(&self) -> &NetworkKey {
        match &self.networking {
            Networking::Bridge(k) | Networking::Pcpm(_, k) => k,
        }
    }

    /// Starts a created container: its address, and its log file if Docker writes one.
    async fn start(
        &self,
        id: &str,
        endpoint: &Endpoint,
        network: &str,
    ) -> Result<(IpAddr, Option<String>), DockerError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(DockerError::api("start"))?;
        let info = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(DockerError::api("inspect"))?;
        let ip = match endpoint.ip() {
            Some(ip) => ip,
            None => pcpm::docker::ip_on(&info, network).ok_or_else(|| DockerError::NoAddress {
                id: id.to_owned(),
                network: network.to_owned(),
            })?,
        };
        Ok((ip, info.log_path.filter(|p| !p.is_empty())))
    }

    async fn pull(&self, image: &str) -> Result<(), CreateError> {
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(step) = stream.next().await {
            if let Err(e) = step {
                let tag_given = image.rsplit('/').next().is_some_and(|n| n.contains(':'))
                    && !image.ends_with(":latest");
                // A pinned tag may already be here; `latest` must be fresh.
                if tag_given {
                    tracing::warn!(image, error = %e, "pull failed; using the local image");
                    return Ok(());
                }
                return Err(CreateError::ImagePull {
                    image: image.to_owned(),
                    source: Box::new(DockerError::api("pull")(e)),
                });
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ContainerFactory for DockerFactory {
    async fn create(&self, spec: &ContainerSpec) -> Result<Box<dyn Container>, CreateError> {
        let image = &spec.image.name;
        if spec.image.origin == ImageOrigin::Registry {
            self.pull(image).await?;
        }
        let endpoint = match &self.networking {
            Networking::Bridge(key) => Endpoint::Fallback(key.clone()),
            Networking::Pcpm(pcpm, key) => pcpm
                .acquire(key)
                .await
                .map_err(|e| CreateError::provision(DockerError::Pcpm(e)))?,
        };
        let memory = i64::try_from(spec.memory_mb << 20).unwrap_or(i64::MAX);
        let mut body = ContainerCreateBody {
            image: Some(image.clone()),
            env: Some(spec.env.clone()),
            host_config: Some(HostConfig {
                cpu_shares: i64::try_from(spec.cpu_shares).ok(),
                nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
                memory: Some(memory),
                memory_swap: Some(memory),
                cap_drop: Some(vec!["NET_RAW".into(), "NET_ADMIN".into()]),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(1024),
                    hard: Some(1024),
                }]),
                pids_limit: Some(1024),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        endpoint.apply(&mut body);
        let network = self.key().network.clone();
        let _permit = self.runs.acquire().await;
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = self.docker.create_container(Some(options), body).await;
        let id = match created.map_err(DockerError::api("create")) {
            Ok(c) => c.id,
            Err(e) => {
                release(endpoint).await;
                // The only 404 of a create: no such image.
                return Err(match e {
                    e @ DockerError::NotFound { .. } => CreateError::NoExecutable {
                        image: image.clone(),
                        source: Some(Box::new(e)),
                    },
                    e => CreateError::provision(e),
                });
            }
        };
        match self.start(&id, &endpoint, &network).await {
            Ok((ip, log)) => Ok(Box::new(DockerContainer {
                docker: self.docker.clone(),
                id,
                addr: SocketAddr::new(ip, 8080),
                logs: log
                    .map(|p| Logs::new(JsonFile::new(Path::new(&p), self.log_watcher.clone()))),
                endpoint: parking_lot::Mutex::new(Some(endpoint)),
            })),
            Err(e) => {
                // Exit code 127 is Docker's verdict on an entry point it cannot find
                // (contract §5.1), read before the container goes.
                let exit_code = self
                    .docker
                    .inspect_container(&id, None::<InspectContainerOptions>)
                    .await
                    .ok()
                    .and_then(|i| i.state)
                    .and_then(|s| s.exit_code);
                if let Err(undo) = pcpm::docker::remove_container(&self.docker, &id).await {
                    tracing::warn!(container = %id, error = %undo, "removing a container that did not start");
                }
                release(endpoint).await;
                if exit_code == Some(127) {
                    Err(CreateError::NoExecutable {
                        image: image.clone(),
                        source: Some(Box::new(e)),
                    })
                } else {
                    Err(CreateError::provision(e))
                }
            }
        }
    }

    async fn remove_all(&self, prefix: &str) -> Result<usize, BackendError> {
        let filters = HashMap::from([("name", vec![prefix.to_owned()])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| BackendError {
                action: "list",
                id: prefix.to_owned(),
                source: Box::new(DockerError::api("list")(e)),
            })?;
        let mut removed = 0;
        let mut errors = Vec::new();
        for c in list {
            // The name filter matches anywhere in the name; keep only true prefixes.
            let ours = c
                .names
                .unwrap_or_default()
                .iter()
                .any(|n| n.trim_start_matches('/').starts_with(prefix));
            let Some(id) = c.id.filter(|_| ours) else {
                continue;
            };
            let _ = self.docker.unpause_container(&id).await;
            match pcpm::docker::remove_container(&self.docker, &id).await {
                Ok(_) => removed += 1,
                Err(e) => errors.push(Box::new(BackendError {
                    action: "remove",
                    id,
                    source: Box::new(DockerError::api("remove")(e)),
                }) as super::BoxError),
            }
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(BackendError {
                action: "remove",
                id: prefix.to_owned(),
                source: Box::new(Errors(errors)),
            })
        }
    }
}

async fn release(endpoint: Endpoint) {
    if let Some(pcpm::Released::Replaced(reason)) = endpoint.release().await {
        tracing::debug!(%reason, "pause container replaced");
    }
}

#[derive(Debug)]
struct DockerContainer {
    docker: Docker,
    id: String,
    addr: SocketAddr,
    logs: Option<Logs>,
    endpoint: parking_lot::Mutex<Option<Endpoint>>,
}

impl DockerContainer {
    fn err(
        &self,
        action: &'static str,
    ) -> impl FnOnce(bollard::errors::Error) -> BackendError + '_ {
        move |e| BackendError {
            action,
            id: self.id.clone(),
            source: Box::new(DockerError::api(action)(e)),
        }
    }
}

#[async_trait::async_trait]
impl Container for DockerContainer {
    fn id(&self) -> &str {
        &self.id
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn logs(&self) -> Option<&Logs> {
        self.logs.as_ref()
    }

    async fn pause(&self) -> Result<(), BackendError> {
        self.docker
            .pause_container(&self.id)
            .await
            .map_err(self.err("pause"))
    }

    async fn resume(&self) -> Result<(), BackendError> {
        self.docker
            .unpause_container(&self.id)
            .await
            .map_err(self.err("resume"))
    }

    /// Docker's `State.OOMKilled`, read once the container has stopped: the connection to
    /// the proxy breaks as the kernel kills the process, before dockerd has heard of the OOM
    /// from containerd, so a read at once races it. A container still running after
    /// [`OOM_SETTLE`] (the connection broke for another reason) is read as it is.
    async fn oom_killed(&self) -> bool {
        let options = bollard::query_parameters::WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut exited = self.docker.wait_container(&self.id, Some(options));
        // Its result is the exit code (an error for a non-zero one): only the stop matters.
        let _ = tokio::time::timeout(OOM_SETTLE, exited.next()).await;
        self.docker
            .inspect_container(&self.id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false)
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        let _ = self.docker.unpause_container(&self.id).await;
        let removed = match pcpm::docker::remove_container(&self.docker, &self.id).await {
            Ok(_) => Ok(()),
            Err(e) => Err(BackendError {
                action: "remove",
                id: self.id.clone(),
                source: Box::new(DockerError::api("remove")(e)),
            }),
        };
        let endpoint = self.endpoint.lock().take();
        if let Some(endpoint) = endpoint {
            if removed.is_ok() {
                release(endpoint).await;
            } else {
                drop(endpoint); // state unknown: the pool replaces the pause container
            }
        }
        removed
    }
}

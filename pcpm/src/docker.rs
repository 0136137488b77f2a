//! What every user of the Docker engine in this workspace shares (pcpm, the invoker's Docker
//! backend, the tests and benchmarks), so that each is written once: the connection with API
//! version negotiation, a container's address on a network, and a removal that tolerates a
//! container already gone.

use std::net::IpAddr;

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::RemoveContainerOptionsBuilder;

/// The engine could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot open a connection to the docker engine")]
    Connect(#[source] bollard::errors::Error),
    #[error("the docker engine does not answer a version negotiation")]
    Negotiate(#[source] bollard::errors::Error),
}

/// Connects to the local engine (`DOCKER_HOST` or the local socket) and negotiates the API
/// version: Debian 12's dockerd 20.10 speaks API 1.41, older than bollard's default, and
/// refuses a client that asks for a newer one.
pub async fn connect() -> Result<Docker, ConnectError> {
    let docker = Docker::connect_with_local_defaults().map_err(ConnectError::Connect)?;
    docker
        .negotiate_version()
        .await
        .map_err(ConnectError::Negotiate)
}

/// Whether Docker answered "no such object" (404).
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The container's address on `network`, from an inspect, if it has one.
pub fn ip_on(info: &ContainerInspectResponse, network: &str) -> Option<IpAddr> {
    info.network_settings
        .as_ref()?
        .networks
        .as_ref()?
        .get(network)?
        .ip_address
        .as_deref()?
        .parse()
        .ok()
}

/// Removes a container, killing it if it runs. `Ok(false)` when it was already gone.
pub async fn remove_container(docker: &Docker, id: &str) -> Result<bool, bollard::errors::Error> {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_from_the_named_network_only() {
        let info: ContainerInspectResponse = serde_json::from_value(serde_json::json!({
            "NetworkSettings": {"Networks": {
                "bridge": {"IPAddress": "172.17.0.5"},
                "other": {"IPAddress": ""}
            }}
        }))
        .unwrap();
        assert_eq!(ip_on(&info, "bridge"), Some("172.17.0.5".parse().unwrap()));
        assert_eq!(ip_on(&info, "other"), None, "an empty address is none");
        assert_eq!(ip_on(&info, "missing"), None);
    }

    #[test]
    fn only_a_404_is_not_found() {
        let e = |status_code| bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: "x".into(),
        };
        assert!(is_not_found(&e(404)));
        assert!(!is_not_found(&e(500)));
        assert!(!is_not_found(&e(409)));
    }
}

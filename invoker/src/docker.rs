//! The connection to the Docker engine.
//!
//! The engine is reached through bollard on `DOCKER_HOST` or the local socket, and the API
//! version is negotiated: Debian 12's dockerd 20.10 speaks API 1.41, older than bollard's
//! default, and refuses a client that asks for a newer one.

use bollard::Docker;

/// Errors connecting to the Docker engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerConnectError {
    #[error("cannot open a connection to the docker engine")]
    Connect(#[source] bollard::errors::Error),
    #[error("the docker engine does not answer a version negotiation")]
    Negotiate(#[source] bollard::errors::Error),
}

/// Connects to the local engine and negotiates the API version with it.
pub async fn connect() -> Result<Docker, DockerConnectError> {
    let docker = Docker::connect_with_local_defaults().map_err(DockerConnectError::Connect)?;
    docker
        .negotiate_version()
        .await
        .map_err(DockerConnectError::Negotiate)
}

//! The conformance suite (`common/mod.rs`), run against every runtime image built by
//! `runtimes/build.sh` (part of `scripts/stack.sh up`), through the real Docker engine.

mod common;

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use serde_json::{Value, json};

use common::{Backend, Kind, Patience, Sandbox, conformance};

const PATIENCE: Patience = Patience {
    request: Duration::from_secs(10),
    logs: Duration::from_secs(5),
};

fn image(kind: Kind) -> &'static str {
    match kind {
        Kind::Native => "openwhisk/dockerskeleton:nightly",
        Kind::Node => "openwhisk/action-nodejs-v18:nightly",
        Kind::Python => "openwhisk/action-python-v3.11:nightly",
    }
}

struct DockerBackend(Docker);

impl Backend for DockerBackend {
    type Sandbox = Container;

    async fn start(&self, kind: Kind) -> Container {
        Container::start(&self.0, image(kind), Vec::new()).await
    }
}

struct Container {
    docker: Docker,
    id: String,
    url: String,
    http: reqwest::Client,
}

impl Container {
    async fn start(docker: &Docker, image: &str, env: Vec<String>) -> Self {
        if docker.inspect_image(image).await.is_err() {
            panic!(
                "image {image} is missing: build it with runtimes/build.sh (part of scripts/stack.sh up)"
            );
        }
        let body = ContainerCreateBody {
            image: Some(image.into()),
            env: Some(env),
            host_config: Some(HostConfig {
                network_mode: Some("bridge".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("whisk-conformance-{}-{}", std::process::id(), rand_suffix());
        let id = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .unwrap()
            .id;
        docker.start_container(&id, None).await.unwrap();
        let info = docker.inspect_container(&id, None).await.unwrap();
        let ip = pcpm::docker::ip_on(&info, "bridge").expect("container ip");
        Self {
            docker: docker.clone(),
            id,
            url: format!("http://{ip}:8080"),
            http: reqwest::Client::builder().build().unwrap(),
        }
    }

    async fn running(&self) -> bool {
        let state = self
            .docker
            .inspect_container(&self.id, None)
            .await
            .unwrap()
            .state;
        state.and_then(|s| s.running).unwrap_or(false)
    }
}

impl Sandbox for Container {
    fn url(&self) -> &str {
        &self.url
    }

    fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn patience(&self) -> Patience {
        PATIENCE
    }

    async fn logs(&self) -> (String, String) {
        let mut out = String::new();
        let mut err = String::new();
        let mut s = self.docker.logs(
            &self.id,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .build(),
            ),
        );
        while let Some(chunk) = s.next().await {
            match chunk.unwrap() {
                bollard::container::LogOutput::StdOut { message } => {
                    out.push_str(&String::from_utf8_lossy(&message))
                }
                bollard::container::LogOutput::StdErr { message } => {
                    err.push_str(&String::from_utf8_lossy(&message))
                }
                _ => {}
            }
        }
        (out, err)
    }

    /// The container, a moment after its process was told to end.
    async fn stopped(&mut self) -> bool {
        tokio::time::sleep(Duration::from_millis(300)).await;
        !self.running().await
    }

    async fn remove(self) {
        let rm = RemoveContainerOptionsBuilder::default().force(true).build();
        self.docker
            .remove_container(&self.id, Some(rm))
            .await
            .unwrap();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn docker() -> Docker {
    pcpm::docker::connect().await.unwrap_or_else(|e| {
        panic!("docker is not reachable ({e}); start the stack with scripts/stack.sh up")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_image_conforms() {
    conformance(&DockerBackend(docker().await), Kind::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodejs_image_conforms() {
    conformance(&DockerBackend(docker().await), Kind::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_image_conforms() {
    conformance(&DockerBackend(docker().await), Kind::Python).await;
}

/// Every image the runtimes manifest names exists locally, and every kind it lists is one the
/// conformance suite covers.
#[tokio::test]
async fn manifest_names_the_built_images() {
    let docker = docker().await;
    let manifest: Value = serde_json::from_str(include_str!("../../runtimes.json")).unwrap();
    let image_of = |i: &Value| {
        format!(
            "{}/{}:{}",
            i["prefix"].as_str().unwrap(),
            i["name"].as_str().unwrap(),
            i["tag"].as_str().unwrap()
        )
    };
    let mut images = Vec::new();
    let mut kinds = Vec::new();
    for family in manifest["runtimes"].as_object().unwrap().values() {
        for entry in family.as_array().unwrap() {
            // The unikernel serves wasm:0.1 (its own suite: unikernel/); no image is built.
            if entry["kind"] == "wasm:0.1" {
                continue;
            }
            kinds.push(entry["kind"].as_str().unwrap().to_owned());
            images.push(image_of(&entry["image"]));
        }
    }
    for bb in manifest["blackboxes"].as_array().unwrap() {
        images.push(image_of(bb));
    }
    kinds.sort();
    assert_eq!(kinds, ["nodejs:18", "python:3.11"]);
    for name in images {
        assert!(
            [Kind::Native, Kind::Node, Kind::Python]
                .iter()
                .any(|k| image(*k) == name),
            "{name} is not covered by the conformance suite"
        );
        docker
            .inspect_image(&name)
            .await
            .unwrap_or_else(|_| panic!("{name} is missing: run runtimes/build.sh"));
    }
}

/// Runs overlap only when the container allows it (`__OW_ALLOW_CONCURRENT=true`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_only_when_allowed() {
    let docker = docker().await;
    for allow in [false, true] {
        let c = Container::start(
            &docker,
            image(Kind::Node),
            vec![format!("__OW_ALLOW_CONCURRENT={allow}")],
        )
        .await;
        assert_eq!(c.init(Kind::Node.init_value()).await.0, 200);
        let started = Instant::now();
        let (a, b) = tokio::join!(
            c.run(json!({"value": {"mode": "slow"}})),
            c.run(json!({"value": {"mode": "slow"}}))
        );
        let took = started.elapsed();
        assert_eq!((a.0, b.0), (200, 200));
        if allow {
            assert!(
                took < Duration::from_millis(6000),
                "allowed runs overlap: {took:?}"
            );
        } else {
            assert!(
                took >= Duration::from_millis(6000),
                "runs must not overlap: {took:?}"
            );
        }
        c.remove().await;
    }
}

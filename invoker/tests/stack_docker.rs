//! The Docker engine of the stack, through bollard as the invoker drives it: an image built
//! locally FROM scratch (no registry is reachable), a container run from it, its logs read,
//! then both removed.

mod common;

use std::io::Write;
use std::process::Command;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, WaitContainerOptions,
};
use common::{chain, down, unique};
use futures::StreamExt;

const GREETING: &str = "hello from a scratch image";

/// A static executable that prints the greeting and its arguments, built with the machine's C
/// compiler: the only thing a FROM scratch image can run.
fn static_hello(dir: &std::path::Path) -> Vec<u8> {
    let src = dir.join("hello.c");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\nint main(int c, char **v) {{ printf(\"{GREETING}\"); \
             for (int i = 1; i < c; i++) printf(\" %s\", v[i]); printf(\"\\n\"); \
             fprintf(stderr, \"to stderr\\n\"); return 3; }}\n"
        ),
    )
    .unwrap();
    let bin = dir.join("hello");
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("run cc (apt-get install gcc libc6-dev)");
    assert!(status.success(), "cc -static failed");
    std::fs::read(&bin).unwrap()
}

fn context_tar(hello: &[u8]) -> Vec<u8> {
    let dockerfile = b"FROM scratch\nCOPY hello /hello\nENTRYPOINT [\"/hello\"]\n";
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        ("Dockerfile", &dockerfile[..], 0o644),
        ("hello", hello, 0o755),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    }
    tar.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_from_scratch_run_logs_remove() {
    let docker = pcpm::docker::connect()
        .await
        .unwrap_or_else(|e| panic!("{}", down("docker", chain(&e))));
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("{}:latest", unique("whisk-it-hello"));

    // Build.
    let options = BuildImageOptionsBuilder::default()
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut build = docker.build_image(
        options,
        None,
        Some(bollard::body_full(
            context_tar(&static_hello(dir.path())).into(),
        )),
    );
    let mut build_log = Vec::new();
    while let Some(step) = build.next().await {
        let info = step.expect("build step");
        if let Some(e) = info.error_detail {
            panic!("build failed: {e:?}");
        }
        if let Some(s) = info.stream {
            build_log.push(s);
        }
    }
    let image = docker
        .inspect_image(&tag)
        .await
        .expect("image exists after build");
    assert!(image.id.is_some(), "build log: {}", build_log.concat());

    // Run, with no network (nothing to reach), and wait for the exit.
    let name = unique("whisk-it-hello");
    let create = CreateContainerOptionsBuilder::default().name(&name).build();
    let body = ContainerCreateBody {
        image: Some(tag.clone()),
        cmd: Some(vec!["arg1".into(), "arg2".into()]),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(Some(create), body)
        .await
        .expect("create")
        .id;
    docker.start_container(&id, None).await.expect("start");
    let exit = docker
        .wait_container(&id, None::<WaitContainerOptions>)
        .next()
        .await
        .expect("wait result");
    // bollard reports a non-zero exit as an error carrying the code.
    let code = match exit {
        Ok(r) => r.status_code,
        Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => code,
        Err(e) => panic!("wait: {e}"),
    };
    assert_eq!(code, 3);

    // Logs: both streams, told apart.
    let logs = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .build();
    let mut out = String::new();
    let mut err = String::new();
    let mut stream = docker.logs(&id, Some(logs));
    while let Some(chunk) = stream.next().await {
        match chunk.expect("log chunk") {
            bollard::container::LogOutput::StdOut { message } => {
                out.push_str(&String::from_utf8_lossy(&message))
            }
            bollard::container::LogOutput::StdErr { message } => {
                err.push_str(&String::from_utf8_lossy(&message))
            }
            _ => {}
        }
    }
    assert_eq!(out, format!("{GREETING} arg1 arg2\n"));
    assert_eq!(err, "to stderr\n");

    // Remove both; neither is left.
    let rm = RemoveContainerOptionsBuilder::default().force(true).build();
    docker
        .remove_container(&id, Some(rm))
        .await
        .expect("remove container");
    assert!(
        docker.inspect_container(&id, None).await.is_err(),
        "container still there"
    );
    let rmi = RemoveImageOptionsBuilder::default().force(true).build();
    docker
        .remove_image(&tag, Some(rmi), None)
        .await
        .expect("remove image");
    assert!(
        docker.inspect_image(&tag).await.is_err(),
        "image still there"
    );
    let _ = std::io::stdout().flush();
}

//! The pause image (`whisk-pcpm/pause:latest`, built by `runtimes/build.sh`) against the real
//! Docker engine: it runs as PID 1 of its container, reaps the zombies handed to it, and stops
//! cleanly (exit 0) on SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;

const PAUSE_IMAGE: &str = "whisk-pcpm/pause:latest";

/// Forks a child that forks a grandchild (which sleeps 1 s and exits) and exits at once: the
/// grandchild is handed to PID 1 of the PID namespace, the pause process.
const ORPHAN_MAKER_C: &str = r#"
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    pid_t child = fork();
    if (child == 0) {
        if (fork() == 0) { sleep(1); _exit(0); }
        _exit(0);
    }
    waitpid(child, NULL, 0);
    sleep(30);
    return 0;
}
"#;

struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

async fn docker() -> Docker {
    pcpm::docker::connect().await.unwrap_or_else(|e| {
        panic!("docker is not reachable ({e}); start the stack with scripts/stack.sh up")
    })
}

async fn run(docker: &Docker, image: &str, host: HostConfig) -> (String, u32) {
    let body = ContainerCreateBody {
        image: Some(image.into()),
        host_config: Some(host),
        ..Default::default()
    };
    let id = docker
        .create_container(None::<bollard::query_parameters::CreateContainerOptions>, body)
        .await
        .unwrap_or_else(|e| panic!("create from {image}: {e} (images come from runtimes/build.sh, part of scripts/stack.sh up)"))
        .id;
    // Until the caller has the id, a failure removes the container here.
    let mut guard = Cleanup(vec![id.clone()]);
    docker
        .start_container(&id, None)
        .await
        .unwrap_or_else(|e| panic!("start {id} from {image}: {e}"));
    let pid = docker
        .inspect_container(&id, None)
        .await
        .unwrap()
        .state
        .and_then(|s| s.pid)
        .unwrap();
    guard.0.clear();
    (id, u32::try_from(pid).unwrap())
}

/// `(pid, state)` of every process whose parent is `ppid`.
fn children_of(ppid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or("")
                .to_owned()
        };
        if field("PPid:") == ppid.to_string() {
            out.push((pid, field("State:").chars().next().unwrap_or('?')));
        }
    }
    out
}

async fn orphan_maker_image(docker: &Docker) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("o.c"), ORPHAN_MAKER_C).unwrap();
    let ok = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.path().join("orphans"))
        .arg(dir.path().join("o.c"))
        .status()
        .expect("cc")
        .success();
    assert!(ok);
    let bin = std::fs::read(dir.path().join("orphans")).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        (
            "Dockerfile",
            &b"FROM scratch\nCOPY orphans /orphans\nENTRYPOINT [\"/orphans\"]\n"[..],
            0o644,
        ),
        ("orphans", &bin[..], 0o755),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    }
    let tag = format!("whisk-pcpm-test/orphans:{}", std::process::id());
    let opts = BuildImageOptionsBuilder::default().t(&tag).rm(true).build();
    let mut build = docker.build_image(
        opts,
        None,
        Some(bollard::body_full(tar.into_inner().unwrap().into())),
    );
    while let Some(step) = build.next().await {
        assert!(step.unwrap().error_detail.is_none());
    }
    tag
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_is_pid_1_reaps_orphans_and_stops_on_sigterm() {
    let docker = docker().await;
    let mut cleanup = Cleanup(Vec::new());
    let (pause, pause_pid) = run(
        &docker,
        PAUSE_IMAGE,
        HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        },
    )
    .await;
    cleanup.0.push(pause.clone());

    // PID 1 inside its PID namespace.
    let status = std::fs::read_to_string(format!("/proc/{pause_pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");

    // An orphan handed to it is reaped once it exits.
    let image = orphan_maker_image(&docker).await;
    let (helper, _) = run(
        &docker,
        &image,
        HostConfig {
            network_mode: Some(format!("container:{pause}")),
            pid_mode: Some(format!("container:{pause}")),
            ..Default::default()
        },
    )
    .await;
    cleanup.0.push(helper);
    // Within a second the sleeping grandchild is the pause process's child...
    let deadline = Instant::now() + Duration::from_secs(1);
    while children_of(pause_pid).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let adopted = children_of(pause_pid);
    assert!(
        !adopted.is_empty(),
        "the orphan was not handed to the pause process"
    );
    // ...and once it has exited, no zombie is left behind.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let zombies: Vec<_> = children_of(pause_pid)
            .into_iter()
            .filter(|(_, s)| *s == 'Z')
            .collect();
        let alive = children_of(pause_pid).into_iter().any(|(_, s)| s != 'Z');
        if zombies.is_empty() && !alive {
            break;
        }
        assert!(Instant::now() < deadline, "zombies left: {zombies:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM: a clean exit 0 (without a handler, PID 1 ignores it and Docker kills it: 137).
    let stop = StopContainerOptionsBuilder::default().t(10).build();
    docker.stop_container(&pause, Some(stop)).await.unwrap();
    let state = docker
        .inspect_container(&pause, None)
        .await
        .unwrap()
        .state
        .unwrap();
    assert_eq!(state.exit_code, Some(0));

    let rm = RemoveContainerOptionsBuilder::default().force(true).build();
    for id in cleanup.0.drain(..) {
        docker
            .remove_container(&id, Some(rm.clone()))
            .await
            .unwrap();
    }
    let _ = docker
        .remove_image(
            &image,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
}

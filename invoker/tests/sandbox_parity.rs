//! The runc sandbox against Docker's, on the real kernel, dockerd, runc and the locally built
//! Node.js runtime image: the same action, run once in a container the Docker backend makes
//! (contract §5.1 flags, bridge networking) and once in one the runc backend makes (netns mode),
//! reports its own `/proc/self/status` security lines and what it sees of the masked and
//! read-only paths; the two reports must agree, under either OCI runtime of netns mode (runc,
//! crun). And an action that allocates past its memory limit under either is reported as
//! OOM-killed. Needs root, `scripts/stack.sh up` and
//! `runtimes/build.sh`.

use std::sync::Arc;
use std::time::Duration;

use invoker::container::docker::{DockerFactory, Networking};
use invoker::container::proxy::{self, ProxyClient};
use invoker::container::runc::RuncFactory;
use invoker::container::{Container, ContainerFactory, ContainerSpec, ImageRef};
use serde_json::{Value, json};

const IMAGE: &str = "openwhisk/action-nodejs-v18:nightly";

/// Paths Docker masks in every version since 20.10, and paths it makes read-only.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/sys/kernel/hostname",
];

/// The action: the process's security lines of `/proc/self/status`; for each masked path what
/// reading it gives (`file:<bytes read>`, `dir:<entries>`, or the error code); for each
/// read-only path whether it may be written (`access(W_OK)`, which never writes), and one real
/// write (the UTS namespace's own hostname, written back unchanged); and whether a user
/// namespace can be made (`unshare --user`, refused by Docker's profile).
fn probe_code() -> String {
    format!(
        r#"
const fs = require('fs');
const FIELDS = ['Seccomp', 'Seccomp_filters', 'NoNewPrivs', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'];
function main() {{
  const status = {{}};
  for (const line of fs.readFileSync('/proc/self/status', 'utf8').split('\n')) {{
    const i = line.indexOf(':');
    if (i > 0 && FIELDS.includes(line.slice(0, i))) status[line.slice(0, i)] = line.slice(i + 1).trim();
  }}
  const masked = {{}};
  for (const p of {masked}.concat(['/proc/interrupts'])) {{
    try {{
      masked[p] = fs.statSync(p).isDirectory()
        ? 'dir:' + fs.readdirSync(p).length
        : 'file:' + fs.readFileSync(p).length;
    }} catch (e) {{ masked[p] = e.code; }}
  }}
  const readonly = {{}};
  for (const p of {readonly}) {{
    try {{ fs.accessSync(p, fs.constants.W_OK); readonly[p] = 'writable'; }}
    catch (e) {{ readonly[p] = e.code; }}
  }}
  try {{
    const h = fs.readFileSync('/proc/sys/kernel/hostname', 'utf8');
    fs.writeFileSync('/proc/sys/kernel/hostname', h.trim());
    readonly.write = 'written';
  }} catch (e) {{ readonly.write = e.code; }}
  // A call the profile refuses without CAP_SYS_ADMIN that the kernel alone would allow.
  const u = require('child_process').spawnSync('unshare', ['--user', 'true'], {{encoding: 'utf8'}});
  const seccomp = {{unshare_user: u.status === 0 ? 'allowed' : (u.stderr || String(u.error)).trim()}};
  return {{status, masked, readonly, seccomp}};
}}
"#,
        masked = json!(MASKED),
        readonly = json!(READONLY),
    )
}

fn spec(name: &str, memory_mb: u64) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: ImageRef::local(IMAGE),
        memory_mb,
        cpu_shares: 128,
        cpus: None,
        env: vec!["__OW_API_HOST=http://127.0.0.1".into()],
        sandbox: invoker::container::Sandbox::Mode,
    }
}

/// `/init` with `code`, then one `/run`: the run's raw answer.
async fn init_and_run(c: &dyn Container, code: &str) -> proxy::Answer {
    let client = ProxyClient::new();
    let init = json!({"value": {"name": "probe", "main": "main", "binary": false, "code": code}});
    let (answer, _) = client
        .init(c.addr(), &init, Duration::from_secs(30), 1 << 20)
        .await;
    proxy::init_verdict(&answer, 30_000, false).expect("init");
    let (answer, _) = client
        .run(
            c.addr(),
            &json!({"value": {}}),
            Duration::from_secs(30),
            1 << 20,
        )
        .await;
    answer
}

async fn probe(c: &dyn Container) -> Value {
    let answer = init_and_run(c, &probe_code()).await;
    let r = proxy::run_response(&answer, 30_000, 1 << 20, false);
    match r.result {
        Some(v) => v,
        None => panic!("the probe answered nothing: {r:?}"),
    }
}

/// A netpool pool of this file's own (name and range unused by every other test).
async fn pool(name: &str, subnet: [u8; 4]) -> Arc<netpool::NetPool> {
    testkit::vm::slot_pool(name, subnet.into(), 17, netpool::SlotKind::Container).await
}

async fn shut(pool: Arc<netpool::NetPool>) {
    Arc::try_unwrap(pool)
        .expect("one owner")
        .shutdown()
        .await
        .unwrap();
}

/// The probe's report from a container the runc backend makes with OCI runtime `runtime`, in a
/// pool of its own (`pool_name`, `subnet`); the container is checked healthy and removed.
async fn view_under(
    runtime: &str,
    docker: &bollard::Docker,
    dir: &std::path::Path,
    pool_name: &str,
    subnet: [u8; 4],
    n: u32,
) -> Value {
    let pool = pool(pool_name, subnet).await;
    let factory = RuncFactory::new(
        docker.clone(),
        pool.clone(),
        &dir.join("images"),
        &dir.join("bundles"),
        &dir.join(format!("{runtime}-state")),
    )
    .with_runtime(std::path::Path::new(runtime));
    let c = factory
        .create(&spec(&format!("wsksp0_{n}_guest_probe"), 256))
        .await
        .unwrap_or_else(|e| panic!("{runtime} create: {e}"));
    let view = probe(&*c).await;
    // A healthy container was not OOM-killed.
    assert!(!c.oom_killed().await);
    c.destroy().await.unwrap();
    drop((c, factory));
    shut(pool).await;
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runc_function_has_dockers_sandbox() {
    let docker = pcpm::docker::connect()
        .await
        .expect("docker is needed; scripts/stack.sh up");
    let dir = tempfile::tempdir().unwrap();

    let docker_factory = DockerFactory::new(
        docker.clone(),
        Networking::Bridge(pcpm::NetworkKey::network("bridge")),
        1,
    );
    let _ = docker_factory.remove_all("wsksp0_").await;
    let under_docker = docker_factory
        .create(&spec("wsksp0_1_guest_probe", 256))
        .await
        .expect("docker create");
    let docker_view = probe(&*under_docker).await;
    under_docker.destroy().await.unwrap();

    let runc_view = view_under("runc", &docker, dir.path(), "sp", [10, 214, 0, 0], 2).await;
    let crun_view = view_under("crun", &docker, dir.path(), "sc", [10, 219, 0, 0], 3).await;

    eprintln!("docker: {docker_view:#}\nrunc: {runc_view:#}\ncrun: {crun_view:#}");
    // What Docker applies, as seen by the process itself.
    let status = &docker_view["status"];
    assert_eq!(status["Seccomp"], "2", "Docker's seccomp filter: {status}");
    assert_eq!(status["CapInh"], "0000000000000000", "{status}");
    assert_eq!(status["CapAmb"], "0000000000000000", "{status}");
    assert_eq!(status["NoNewPrivs"], "0", "{status}");
    // The host's timer list is not empty: inside, masking makes it so.
    assert!(!std::fs::read("/proc/timer_list").unwrap().is_empty());
    assert_eq!(docker_view["masked"]["/proc/timer_list"], "file:0");
    assert_eq!(
        docker_view["readonly"]["/proc/sys/kernel/hostname"],
        "EROFS"
    );
    assert_eq!(docker_view["readonly"]["write"], "EROFS");
    assert_eq!(
        docker_view["seccomp"]["unshare_user"],
        "unshare: unshare failed: Operation not permitted"
    );
    // The same under runc, line for line and path for path.
    assert_eq!(runc_view["status"], docker_view["status"]);
    for p in MASKED {
        assert_eq!(
            runc_view["masked"][p], docker_view["masked"][p],
            "masked path {p}"
        );
    }
    assert_eq!(runc_view["readonly"], docker_view["readonly"]);
    assert_eq!(runc_view["seccomp"], docker_view["seccomp"]);
    // Masked by current Docker (GHSA-6fw5-f8r9-fgfm), not yet by the 20.10 daemon of the stack:
    // runc follows current Docker.
    assert_eq!(runc_view["masked"]["/proc/interrupts"], "file:0");
    // crun is given the same spec and applies it the same way.
    assert_eq!(crun_view, runc_view);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runc_function_past_its_memory_limit_is_oom_killed() {
    past_its_memory_limit("runc", "so", [10, 214, 128, 0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crun_function_past_its_memory_limit_is_oom_killed() {
    past_its_memory_limit("crun", "sd", [10, 219, 128, 0]).await;
}

async fn past_its_memory_limit(runtime: &str, pool_name: &str, subnet: [u8; 4]) {
    let docker = pcpm::docker::connect()
        .await
        .expect("docker (for image export) is needed; scripts/stack.sh up");
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(pool_name, subnet).await;
    let factory = RuncFactory::new(
        docker,
        pool.clone(),
        &dir.path().join("images"),
        &dir.path().join("bundles"),
        &dir.path().join("state"),
    )
    .with_runtime(std::path::Path::new(runtime));
    let c = factory
        .create(&spec(&format!("wsk{pool_name}0_1_guest_hog"), 128))
        .await
        .unwrap_or_else(|e| panic!("{runtime} create: {e}"));
    // Buffers live outside V8's heap and `alloc` fills them, so every page counts against
    // the cgroup long before Node's own limits.
    let code =
        "function main() { const kept = []; for (;;) kept.push(Buffer.alloc(16 << 20, 1)); }";
    let answer = init_and_run(&*c, code).await;
    // As the invoker sees it: the connection dropped, then the backend is asked why.
    assert!(
        matches!(answer, proxy::Answer::Broken(_)),
        "the hog answered: {answer:?}"
    );
    assert!(c.oom_killed().await, "not reported as OOM-killed");
    let r = proxy::run_response(&answer, 30_000, 1 << 20, true);
    assert_eq!(
        r.result,
        Some(json!({"error": proxy::MEMORY_EXHAUSTED})),
        "{r:?}"
    );
    c.destroy().await.unwrap();
    drop((c, factory));
    shut(pool).await;
}

//! The VM backend against the real kernel, QEMU (TCG) and the guest that `runtimes/build.sh`
//! builds (`runtimes/vm/`): a native action's microVM on a netpool VM slot answers `/init` and
//! `/run` on the lease's address, its sentinelled logs arrive through the serial console, a
//! paused VM does not answer and answers again once resumed, and destroying it leaves no QEMU
//! process, file, cgroup or neighbour entry and gives the slot back; a missing kernel, a kernel
//! QEMU cannot load and a boot timeout each give their typed error and leak nothing; a killed
//! invoker's QEMU, folder and cgroup are removed when the next factory starts.
//!
//! `auto` on this machine, whose `/dev/kvm` is a PVM that opens but cannot run the guest, ends
//! on TCG, says why, and leaves nothing of its canaries.
//!
//! Needs root. Boots cost seconds of CPU under TCG, so each test boots as few VMs as it can.

#[path = "common/native.rs"]
mod native;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use invoker::container::logs::{self, Collect};
use invoker::container::proxy::{self, Answer, ProxyClient};
use invoker::container::vm::{self, VmConfig, VmError, VmFactory};
use invoker::container::{ContainerFactory, ContainerSpec, CreateError, ImageRef};
use serde_json::json;
use testkit::vm::{guest_dir, guest_file, processes_under, vm_slot_pool as vm_pool};

/// A boot under TCG on this shared 2-core machine: seconds when quiet, far more when others
/// build.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn config(run_dir: &Path, cgroup_parent: &str) -> VmConfig {
    VmConfig {
        qemu: "qemu-system-x86_64".into(),
        accelerator: vm::Accelerator::Tcg,
        kernel: guest_file("vmlinux"),
        initrd: guest_file("initrd.img"),
        // Checked by the wasm tests that boot it (unikernel_backend.rs).
        unikernel: guest_dir().join("wasm-unikernel"),
        root_images: guest_dir(),
        boot_timeout: BOOT_TIMEOUT,
        qmp_timeout: vm::DEFAULT_QMP_TIMEOUT,
        quit_timeout: vm::DEFAULT_QUIT_TIMEOUT,
        run_dir: run_dir.to_owned(),
        cgroup_parent: Some(cgroup_parent.to_owned()),
        vcpus: 1,
        name_prefix: "wskvx0_".into(),
        canary_timeout: vm::DEFAULT_CANARY_TIMEOUT,
    }
}

fn spec(name: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: ImageRef::local("openwhisk/dockerskeleton:nightly"),
        memory_mb: 256,
        cpu_shares: 128,
        cpus: None,
        env: vec!["__OW_API_HOST=http://127.0.0.1".into()],
        sandbox: invoker::container::Sandbox::Mode,
    }
}

/// The host's permanent neighbour entries on the pool's (first) bridge, as `ip neigh` shows
/// them.
fn permanent_neighbours(pool_name: &str) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "neigh",
            "show",
            "dev",
            &format!("{pool_name}br0"),
            "nud",
            "permanent",
        ])
        .output()
        .expect("ip (iproute2)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The cgroup v1 `cpu` folder of the VM's cgroup (this host has v1).
fn cgroup_dir(parent: &str, name: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/cpu").join(parent).join(name)
}

/// No QEMU of ours, no VM folder (nor the runtime folder once `remove_all` ran), no cgroup, no
/// permanent neighbour entry, no leased slot.
fn assert_nothing_left(
    run_dir: &Path,
    cgroup_parent: &str,
    name: &str,
    pool_name: &str,
    pool: &netpool::NetPool,
) {
    let procs = processes_under(run_dir);
    assert!(procs.is_empty(), "QEMU processes left: {procs:?}");
    assert!(
        !run_dir.join(name).exists(),
        "the VM's folder {} is left",
        run_dir.join(name).display()
    );
    assert!(
        !cgroup_dir(cgroup_parent, name).exists(),
        "the VM's cgroup is left"
    );
    let n = permanent_neighbours(pool_name);
    assert!(n.is_empty(), "neighbour entries left: {n}");
    assert_eq!(pool.stats().leased, 0, "a slot is still leased");
}

/// A QEMU as a killed invoker's VM leaves it: running (an idle machine, no guest), its pid file
/// in the VM's folder `<run_dir>/<name>`, its pid in the VM's cgroup. The child and the name.
fn killed_runs_vm(
    run_dir: &Path,
    cgroup_parent: &str,
    name: &str,
) -> (std::process::Child, String) {
    let vm_dir = run_dir.join(name);
    std::fs::create_dir_all(&vm_dir).unwrap();
    let child = std::process::Command::new("qemu-system-x86_64")
        .args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
        .arg("-pidfile")
        .arg(vm_dir.join("qemu.pid"))
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 (runtimes/build.sh installs it)");
    let cgroup = cgroup_dir(cgroup_parent, name);
    std::fs::create_dir_all(&cgroup).unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).unwrap();
    (child, name.to_owned())
}

async fn shut_down(pool: Arc<netpool::NetPool>) {
    Arc::try_unwrap(pool)
        .expect("one owner")
        .shutdown()
        .await
        .expect("the pool shuts down cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_action_runs_in_a_microvm_on_a_vm_slot() {
    let pool = vm_pool("vb", 215).await;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let cgroup_parent = "wsk-vm-test-vb";
    let factory = VmFactory::new(pool.clone(), config(&run_dir, cgroup_parent))
        .await
        .unwrap();
    let name = "wskvb0_1_guest_native";

    // A runtime image with no guest is the developer's error, before any slot is taken.
    let custom = ContainerSpec {
        image: ImageRef::local("someone/custom:latest"),
        ..spec("wskvb0_0_guest_custom")
    };
    match factory.create(&custom).await {
        Err(CreateError::NoExecutable { image, .. }) => assert_eq!(image, "someone/custom:latest"),
        other => panic!("expected NoExecutable, got {other:?}"),
    }

    let booting = std::time::Instant::now();
    let c = factory
        .create(&spec(name))
        .await
        .unwrap_or_else(|e| panic!("the microVM did not boot: {}", openwhisk::errors::chain(&e)));
    println!(
        "create (lease, QEMU, boot, proxy listening): {:?}",
        booting.elapsed()
    );
    let addr = c.addr();
    assert_eq!(addr.port(), 8080);
    // While it runs: QEMU in the VM's cgroup with the action's share, and the guest's
    // permanent neighbour entry on the host.
    let cg = cgroup_dir(cgroup_parent, name);
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.shares"))
            .unwrap()
            .trim(),
        "128"
    );
    let pids = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    let pid = std::fs::read_to_string(run_dir.join(name).join("qemu.pid"))
        .expect("QEMU's pid file")
        .trim()
        .to_owned();
    assert!(
        pids.lines().any(|p| p == pid),
        "QEMU {pid} not in its cgroup: {pids:?}"
    );
    let n = permanent_neighbours("vb");
    assert!(
        n.starts_with(&format!("{} lladdr ", addr.ip())),
        "no permanent neighbour entry for the guest: {n:?}"
    );

    let client = ProxyClient::new();
    let code = base64::engine::general_purpose::STANDARD.encode(native::native_zip());
    let init = json!({"value": {"name": "native", "main": "main", "binary": true, "code": code}});
    let (answer, _) = client
        .init(addr, &init, Duration::from_secs(60), 1 << 20)
        .await;
    proxy::init_verdict(&answer, 60_000, false).expect("init");
    let (answer, _) = client
        .run(
            addr,
            &json!({"value": {"name": "vm"}}),
            Duration::from_secs(60),
            1 << 20,
        )
        .await;
    let r = proxy::run_response(&answer, 60_000, 1 << 20, false);
    assert_eq!(r.result, Some(json!({"native": "vm"})), "{r:?}");
    println!("create to the first /run answered: {:?}", booting.elapsed());

    // The action's output and both sentinels, through the console.
    let collected = logs::collect(
        &mut **c.logs().expect("the VM backend collects logs").lock().await,
        Collect {
            limit_bytes: 1 << 20,
            wait: true,
            developer_error: false,
            idle_timeout: Duration::from_secs(20),
        },
    )
    .await;
    assert!(!collected.failed, "{collected:?}");
    assert!(
        collected
            .lines
            .iter()
            .any(|l| l.ends_with("stdout: native log line")),
        "{collected:?}"
    );
    assert!(
        collected.lines.iter().all(|l| !l.contains(logs::SENTINEL)),
        "sentinels must be consumed by the collector: {collected:?}"
    );

    // Paused: the guest does not answer (a client of its own, so that no request is left
    // queued on the first client's pooled connection).
    c.pause().await.expect("QMP stop");
    let (answer, _) = ProxyClient::new()
        .run(
            addr,
            &json!({"value": {"name": "paused"}}),
            Duration::from_secs(3),
            1 << 20,
        )
        .await;
    assert!(
        matches!(answer, Answer::Timeout),
        "a paused VM answered: {answer:?}"
    );
    c.resume().await.expect("QMP cont");
    let (answer, _) = client
        .run(
            addr,
            &json!({"value": {"name": "resumed"}}),
            Duration::from_secs(60),
            1 << 20,
        )
        .await;
    assert_eq!(
        proxy::run_response(&answer, 60_000, 1 << 20, false).result,
        Some(json!({"native": "resumed"}))
    );

    c.destroy().await.expect("destroy");
    assert_nothing_left(&run_dir, cgroup_parent, name, "vb", &pool);
    assert_eq!(
        factory.remove_all("wskvb0_").await.expect("remove_all"),
        0,
        "destroy left a VM"
    );
    assert!(!run_dir.exists(), "the empty runtime folder is left");

    // A QEMU an earlier run left behind (a crash): found by its pid file under the runtime
    // folder, killed, its folder removed. Started with `-S`, so its vCPU never runs.
    let left = run_dir.join("wskvb0_9_guest_left");
    std::fs::create_dir_all(&left).unwrap();
    let mut leftover = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm",
            "-accel",
            "tcg",
            "-S",
            "-nodefaults",
            "-display",
            "none",
        ])
        .arg("-pidfile")
        .arg(left.join("qemu.pid"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !left.join("qemu.pid").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU did not write its pid file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        factory.remove_all("wskvb0_").await.expect("remove_all"),
        1,
        "the leftover VM"
    );
    let status = leftover.wait().unwrap();
    assert!(
        !status.success(),
        "QEMU was killed, it did not end: {status}"
    );
    assert!(processes_under(&run_dir).is_empty());
    assert!(!run_dir.exists(), "the leftover's folder is left");
    assert!(
        !Path::new("/sys/fs/cgroup/cpu").join(cgroup_parent).exists(),
        "the empty cgroup parent is left"
    );
    drop((c, factory));
    shut_down(pool).await;
}

/// Each fault is its typed error, and the VM's QEMU, folder, cgroup, neighbour entry and slot
/// are all gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_give_typed_errors_and_leak_nothing() {
    let pool = vm_pool("vf", 216).await;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let cgroup_parent = "wsk-vm-test-vf";
    // What a SIGKILLed invoker leaves: its QEMU still running, in the VM's cgroup, with its
    // folder; another factory's cgroup beside it.
    let (mut qemu, left) = killed_runs_vm(&run_dir, cgroup_parent, "wskvx0_7_guest_left");
    let foreign = cgroup_dir(cgroup_parent, "wskvy0_1_guest_other");
    std::fs::create_dir_all(&foreign).unwrap();
    // A missing kernel: refused before a slot is leased or QEMU started.
    let mut missing = config(&run_dir, cgroup_parent);
    missing.kernel = dir.path().join("no-such-vmlinux");
    let factory = VmFactory::new(pool.clone(), missing).await.unwrap();
    // The factory's start removed the earlier run's VM, and only that.
    // `new` waited for it to die: our child is a zombie now, or it is still running.
    let status = qemu
        .try_wait()
        .expect("wait for the leftover QEMU")
        .unwrap_or_else(|| {
            let _ = qemu.kill();
            let _ = qemu.wait();
            panic!("the factory's start left an earlier run's QEMU running")
        });
    assert!(
        !status.success(),
        "the leftover QEMU was not killed: {status}"
    );
    assert_nothing_left(&run_dir, cgroup_parent, &left, "vf", &pool);
    assert!(foreign.exists(), "another factory's cgroup was removed");
    std::fs::remove_dir(&foreign).unwrap();
    let name = "wskvf0_1_guest_nokernel";
    let e = factory.create(&spec(name)).await.expect_err("no kernel");
    println!("{name}: {}", openwhisk::errors::chain(&e));
    match &e {
        CreateError::Provision(s) => match s.downcast_ref::<VmError>() {
            Some(VmError::GuestFile { what, path, .. }) => {
                assert_eq!(*what, "kernel");
                assert_eq!(path, &dir.path().join("no-such-vmlinux"));
                assert!(s.to_string().contains("runtimes/build.sh"), "{s}");
            }
            other => panic!("expected GuestFile, got {other:?}"),
        },
        other => panic!("expected a provisioning error, got {other:?}"),
    }
    assert_nothing_left(&run_dir, cgroup_parent, name, "vf", &pool);
    drop(factory);

    // A kernel QEMU cannot load: QEMU exits during boot, its stderr in the error.
    let corrupt = dir.path().join("corrupt-vmlinux");
    std::fs::write(&corrupt, b"this is not a kernel image\n").unwrap();
    let mut bad = config(&run_dir, cgroup_parent);
    bad.kernel = corrupt;
    let factory = VmFactory::new(pool.clone(), bad).await.unwrap();
    let name = "wskvf0_2_guest_corrupt";
    let e = factory
        .create(&spec(name))
        .await
        .expect_err("corrupt kernel");
    println!("{name}: {}", openwhisk::errors::chain(&e));
    match &e {
        CreateError::Provision(s) => match s.downcast_ref::<VmError>() {
            Some(VmError::Exited { stderr, .. }) => {
                assert!(!stderr.is_empty(), "QEMU's stderr is not in the error")
            }
            other => panic!("expected Exited, got {other:?}"),
        },
        other => panic!("expected a provisioning error, got {other:?}"),
    }
    // The failed create releases its slot without waiting for the scrub.
    pool.wait_idle(1, Duration::from_secs(30))
        .await
        .expect("the slot comes back");
    assert_nothing_left(&run_dir, cgroup_parent, name, "vf", &pool);
    drop(factory);

    // A guest that cannot boot in time.
    let mut hurried = config(&run_dir, cgroup_parent);
    hurried.boot_timeout = Duration::from_secs(1);
    let factory = VmFactory::new(pool.clone(), hurried).await.unwrap();
    let name = "wskvf0_3_guest_slow";
    let e = factory.create(&spec(name)).await.expect_err("boot timeout");
    println!("{name}: {}", openwhisk::errors::chain(&e));
    match &e {
        CreateError::Provision(s) => match s.downcast_ref::<VmError>() {
            Some(VmError::BootTimeout { after, .. }) => {
                assert_eq!(*after, Duration::from_secs(1))
            }
            other => panic!("expected BootTimeout, got {other:?}"),
        },
        other => panic!("expected a provisioning error, got {other:?}"),
    }
    pool.wait_idle(1, Duration::from_secs(30))
        .await
        .expect("the slot comes back");
    assert_nothing_left(&run_dir, cgroup_parent, name, "vf", &pool);
    assert_eq!(factory.remove_all("wskvf0_").await.expect("remove_all"), 0);
    assert!(!run_dir.exists(), "the empty runtime folder is left");
    assert!(
        !Path::new("/sys/fs/cgroup/cpu").join(cgroup_parent).exists(),
        "the empty cgroup parent is left"
    );
    drop(factory);
    shut_down(pool).await;
}

/// This test binary's Prometheus recorder (one per process), to read the metrics back.
fn recorder() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this test binary")
    })
}

/// `auto` here: `/dev/kvm` opens, but the KVM canary does not boot (the PVM hangs the guest,
/// `shared/unikernel-notes.md` §0), so the factory runs on TCG, says why KVM was not used
/// (also in `invoker_vm_canary_total`), and both canaries leave no QEMU, folder, cgroup,
/// neighbour entry or leased slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_tcg_here_says_why_and_leaves_nothing() {
    let metrics = recorder();
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        "this test is about a host whose /dev/kvm opens"
    );
    let pool = vm_pool("va", 217).await;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let cgroup_parent = "wsk-vm-test-va";
    let mut cfg = config(&run_dir, cgroup_parent);
    cfg.accelerator = vm::Accelerator::Auto;
    cfg.name_prefix = "wskva0_".into();
    let started = std::time::Instant::now();
    let factory = VmFactory::new(pool.clone(), cfg).await.unwrap_or_else(|e| {
        panic!(
            "auto found no accelerator: {}",
            openwhisk::errors::chain(&e)
        )
    });
    println!("auto settled in {:?}", started.elapsed());
    assert_eq!(factory.engine(), vm::Engine::Tcg);
    let why = factory.kvm_failure().expect("the reason KVM was not used");
    println!("kvm not used: {}", openwhisk::errors::chain(why));
    // The device opened, so KVM failed by booting, not by being absent.
    assert!(
        matches!(why, vm::CanaryFailure::Boot(_)),
        "expected a failed KVM boot, got {why:?}"
    );

    let text = metrics.render();
    assert!(
        text.lines()
            .any(|l| l == r#"invoker_vm_accelerator{accelerator="tcg"} 1"#),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == r#"invoker_vm_accelerator{accelerator="kvm"} 0"#),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("invoker_vm_canary_total{")
                && l.contains(r#"accelerator="tcg""#)
                && l.contains(r#"outcome="ready""#)),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("invoker_vm_canary_total{")
                && l.contains(r#"accelerator="kvm""#)
                && !l.contains(r#"outcome="ready""#)),
        "{text}"
    );

    // The failed KVM canary gave its slot back without waiting for the scrub, which may
    // still be running.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pool.stats().leased != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a canary's slot was not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_nothing_left(&run_dir, cgroup_parent, "wskva0_canary", "va", &pool);
    assert_eq!(factory.remove_all("wskva0_").await.expect("remove_all"), 0);
    assert!(!run_dir.exists(), "the empty runtime folder is left");
    drop(factory);
    shut_down(pool).await;
}

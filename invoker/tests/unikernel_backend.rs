//! `wasm:0.1` on the VM backend against the real kernel, QEMU (TCG) and the unikernel that
//! `runtimes/build.sh` builds (`unikernel/`): the conformance cases of the action proxy adapted
//! to WebAssembly functions, through the invoker's own proxy client and log collector, on a
//! netpool VM slot's TAP: results, logs and sentinels through the console, `__OW_*` fields,
//! application errors, the 403 of a second `/init`; and the faults: a trap, a run past its time
//! limit, a module over its memory limit, no result line, a module that is not WebAssembly, a
//! guest killed mid-run. Each ends as the OpenWhisk error the invoker reports, and nothing is
//! left behind (no QEMU process, folder, cgroup, neighbour entry or leased slot).
//!
//! Needs root.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use invoker::container::logs::{self, Collect};
use invoker::container::proxy::{self, Answer, ProxyClient};
use invoker::container::vm::{self, VmConfig, VmFactory};
use invoker::container::{Container, ContainerFactory, ContainerSpec, ImageRef, Sandbox};
use openwhisk::messages::ActivationResponse;
use serde_json::{Value, json};
use testkit::vm::{processes_under, vm_slot_pool as vm_pool};

/// A unikernel boots in well under a second under TCG; the bound is for a machine busy with
/// builds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const NOT_A_DICTIONARY: &str = "The action did not return a dictionary or array.";
const WASM_IMAGE: &str = "openwhisk/action-wasm-v0.1:nightly";

fn config(run_dir: &Path, cgroup_parent: &str) -> VmConfig {
    VmConfig {
        qemu: "qemu-system-x86_64".into(),
        accelerator: vm::Accelerator::Tcg,
        // The Linux guest's files are never opened for wasm:0.1.
        kernel: "/nonexistent/vmlinux".into(),
        initrd: "/nonexistent/initrd.img".into(),
        root_images: "/nonexistent".into(),
        unikernel: testkit::vm::guest_file("wasm-unikernel"),
        boot_timeout: BOOT_TIMEOUT,
        qmp_timeout: vm::DEFAULT_QMP_TIMEOUT,
        quit_timeout: vm::DEFAULT_QUIT_TIMEOUT,
        run_dir: run_dir.to_owned(),
        cgroup_parent: Some(cgroup_parent.to_owned()),
        vcpus: 1,
        name_prefix: "wskux0_".into(),
        canary_timeout: vm::DEFAULT_CANARY_TIMEOUT,
    }
}

fn spec(name: &str, memory_mb: u64) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: ImageRef::local(WASM_IMAGE),
        memory_mb,
        cpu_shares: 256,
        cpus: None,
        env: vec!["__OW_API_HOST=http://127.0.0.1".into()],
        sandbox: Sandbox::Vm,
    }
}

/// WebAssembly text → the base64 module `/init` carries (what the invoker does for text).
fn module(wat: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(wat::parse_str(wat).expect("valid WAT"))
}

/// A WASI command: `$body` (which may use the locals `$m`, `$n`, `$i`) runs with `$write(ptr, len)` to stdout, `$err(ptr, len)` to stderr,
/// and `$arg` (argv[1], the run's value as JSON) at `$argp`/`$argl`; memory page 0 holds the
/// data segments given.
fn command(data: &str, body: &str, pages: u32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $esizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") {pages})
  {data}
  (global $argp (mut i32) (i32.const 0))
  (global $argl (mut i32) (i32.const 0))
  (func $out (param $fd i32) (param $p i32) (param $l i32)
    (i32.store (i32.const 8000) (local.get $p))
    (i32.store (i32.const 8004) (local.get $l))
    (drop (call $fd_write (local.get $fd) (i32.const 8000) (i32.const 1) (i32.const 8008))))
  (func $write (param $p i32) (param $l i32) (call $out (i32.const 1) (local.get $p) (local.get $l)))
  (func $err (param $p i32) (param $l i32) (call $out (i32.const 2) (local.get $p) (local.get $l)))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $end (loop $next
      (br_if $end (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))
  (func (export "_start") (local $m i32) (local $n i32) (local $i i32)
    (drop (call $sizes (i32.const 8100) (i32.const 8104)))
    (drop (call $args (i32.const 8200) (i32.const 16384)))
    (global.set $argp (i32.load (i32.const 8204)))
    (global.set $argl (call $strlen (global.get $argp)))
    {body}))"#
    )
}

/// By the parameter `m` (its one letter, at argv[1][6] of `{"m":"?"}`): `a` an application
/// error, `t` a trap, `g` memory grown until refused, `x` a line that is not JSON, `l` a
/// loop that never ends; anything else echoes the parameters with a log line on each stream.
fn modes() -> String {
    command(
        r#"(data (i32.const 0) "stdout line\n{\"echo\":") (data (i32.const 32) "}\n")
  (data (i32.const 48) "stderr line\n") (data (i32.const 64) "{\"error\":\"bad input\"}\n")
  (data (i32.const 96) "just text\n")"#,
        r#"(local.set $m (i32.load8_u (i32.add (global.get $argp) (i32.const 6))))
    (if (i32.eq (local.get $m) (i32.const 97)) (then (call $write (i32.const 64) (i32.const 22)) (return)))
    (if (i32.eq (local.get $m) (i32.const 116)) (then unreachable))
    (if (i32.eq (local.get $m) (i32.const 103)) (then
      (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
      unreachable))
    (if (i32.eq (local.get $m) (i32.const 120)) (then (call $write (i32.const 96) (i32.const 10)) (return)))
    (if (i32.eq (local.get $m) (i32.const 108)) (then (loop $forever (br $forever))))
    (call $err (i32.const 48) (i32.const 12))
    (call $write (i32.const 0) (i32.const 20))
    (call $write (global.get $argp) (global.get $argl))
    (call $write (i32.const 32) (i32.const 2))"#,
        1,
    )
}

/// Prints the environment (NUL-separated `K=V` strings joined by `,`) as `{"env":"..."}`.
fn environment() -> String {
    command(
        r#"(data (i32.const 0) "{\"env\":\"") (data (i32.const 32) "\"}\n")"#,
        r#"(drop (call $esizes (i32.const 8300) (i32.const 8304)))
    (drop (call $environ (i32.const 8400) (i32.const 32768)))
    (local.set $n (i32.load (i32.const 8304)))
    ;; NULs between the strings become commas, the last one is dropped; quotes are not
    ;; expected in the test's values.
    (block $end (loop $next
      (br_if $end (i32.ge_u (local.get $i) (local.get $n)))
      (if (i32.eqz (i32.load8_u (i32.add (i32.const 32768) (local.get $i))))
        (then (i32.store8 (i32.add (i32.const 32768) (local.get $i)) (i32.const 44))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (call $write (i32.const 0) (i32.const 8))
    (call $write (i32.const 32768) (i32.sub (local.get $n) (i32.const 1)))
    (call $write (i32.const 32) (i32.const 3))"#,
        1,
    )
}

struct Vm {
    c: Box<dyn Container>,
    client: ProxyClient,
}

impl Vm {
    /// `/init` with the action's time limit (`timeout`, which the invoker adds for
    /// `wasm:0.1`).
    async fn init(&self, code: &str, timeout_ms: u64) -> Answer {
        let init = json!({"value": {"name": "f", "main": "main", "binary": true, "code": code,
            "timeout": timeout_ms, "env": {"FROM_INIT": "yes"}}});
        self.client
            .init(self.c.addr(), &init, Duration::from_secs(60), 1 << 20)
            .await
            .0
    }

    async fn run(&self, body: Value, limit_ms: u64) -> ActivationResponse {
        let (answer, _) = self
            .client
            .run(
                self.c.addr(),
                &body,
                Duration::from_millis(limit_ms),
                1 << 20,
            )
            .await;
        proxy::run_response(&answer, limit_ms, 1 << 20, false)
    }

    async fn logs(&self) -> Vec<String> {
        let collected = logs::collect(
            &mut **self
                .c
                .logs()
                .expect("the VM backend collects logs")
                .lock()
                .await,
            Collect {
                limit_bytes: 1 << 20,
                wait: true,
                developer_error: false,
                idle_timeout: Duration::from_secs(20),
            },
        )
        .await;
        assert!(!collected.failed, "no sentinels: {collected:?}");
        collected.lines
    }
}

async fn boot(factory: &VmFactory, name: &str, memory_mb: u64) -> Vm {
    let started = Instant::now();
    let c = factory
        .create(&spec(name, memory_mb))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the unikernel did not boot: {}",
                openwhisk::errors::chain(&e)
            )
        });
    println!("{name}: create to listening {:?}", started.elapsed());
    Vm {
        c,
        client: ProxyClient::new(),
    }
}

fn error_of(r: &ActivationResponse) -> (u8, String) {
    let e = r
        .result
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    (r.status_code, e)
}

/// The action-proxy conformance cases, adapted to WebAssembly, and the faults a function can
/// cause, in two unikernels (one per module: `/init` happens once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_functions_run_in_the_unikernel_with_the_runtime_protocol_and_its_errors() {
    let pool = vm_pool("ub", 218).await;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let cgroup_parent = "wsk-vm-test-ub";
    let factory = VmFactory::new(pool.clone(), config(&run_dir, cgroup_parent))
        .await
        .unwrap();

    // 32 MB: the module's memory limit; 3 s: each run's time limit.
    let limit = 3_000;
    let vm = boot(&factory, "wskub0_1_guest_modes", 32).await;
    let r = vm.init(&module(&modes()), limit).await;
    proxy::init_verdict(&r, 60_000, false).expect("init");
    // A second /init is refused, as every runtime refuses it.
    let again = vm.init(&module(&modes()), 60_000).await;
    let refused = proxy::init_verdict(&again, 60_000, false).unwrap_err();
    assert_eq!(
        error_of(&refused),
        (2, "Cannot initialize the action more than once.".into())
    );
    assert!(
        matches!(again, Answer::Http { status: 403, .. }),
        "{again:?}"
    );
    // Its sentinels (a failed init writes them too).
    vm.logs().await;

    let r = vm.run(json!({"value": {"name": "wasm"}}), 60_000).await;
    assert_eq!(r.status_code, 0, "{r:?}");
    assert_eq!(r.result, Some(json!({"echo": {"name": "wasm"}})));
    let lines = vm.logs().await;
    assert!(
        lines.iter().any(|l| l.ends_with("stdout: stdout line")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("stderr: stderr line")),
        "{lines:?}"
    );

    let r = vm.run(json!({"value": {"m": "a"}}), 60_000).await;
    assert_eq!(
        (r.status_code, r.result.clone()),
        (1, Some(json!({"error": "bad input"})))
    );
    vm.logs().await;

    let r = vm.run(json!({"value": {"m": "t"}}), 60_000).await;
    assert_eq!(error_of(&r), (2, NOT_A_DICTIONARY.into()));
    let lines = vm.logs().await;
    assert!(
        lines.iter().any(|l| l.contains("stderr: wasm trap")),
        "{lines:?}"
    );

    let r = vm.run(json!({"value": {"m": "x"}}), 60_000).await;
    assert_eq!(error_of(&r), (2, NOT_A_DICTIONARY.into()));
    let lines = vm.logs().await;
    assert!(lines.iter().any(|l| l.ends_with("just text")), "{lines:?}");

    let r = vm.run(json!({"value": {"m": "g"}}), 60_000).await;
    assert_eq!(
        error_of(&r),
        (2, "The action exhausted its memory and was aborted.".into())
    );
    vm.logs().await;

    // The guest stops a run at its time limit itself (fuel), with the invoker's message for
    // it, and answers the next run; an interpreter left looping would not. (The client waits
    // longer, so the 3 s in the message is the guest's.)
    let r = vm.run(json!({"value": {"m": "l"}}), limit + 10_000).await;
    assert_eq!(
        error_of(&r),
        (
            2,
            "The action exceeded its time limits of 3000 milliseconds.".into()
        )
    );
    vm.logs().await;
    let r = vm.run(json!({"value": {"name": "after"}}), 60_000).await;
    assert_eq!(r.result, Some(json!({"echo": {"name": "after"}})), "{r:?}");
    vm.logs().await;
    vm.c.destroy().await.expect("destroy");

    // The environment: the init's `env` and the run's `__OW_*` fields.
    let vm = boot(&factory, "wskub0_2_guest_env", 32).await;
    proxy::init_verdict(
        &vm.init(&module(&environment()), 60_000).await,
        60_000,
        false,
    )
    .expect("init");
    let r = vm
        .run(
            json!({"value": {}, "namespace": "guest", "activation_id": "a1b2",
                   "action_name": "/guest/env", "deadline": "1714560060210"}),
            60_000,
        )
        .await;
    let env = r
        .result
        .as_ref()
        .and_then(|v| v["env"].as_str())
        .unwrap_or_default()
        .to_owned();
    let mut vars: Vec<&str> = env.split(',').collect();
    vars.sort();
    for want in [
        "FROM_INIT=yes",
        "__OW_ACTION_NAME=/guest/env",
        "__OW_ACTIVATION_ID=a1b2",
        "__OW_DEADLINE=1714560060210",
        "__OW_NAMESPACE=guest",
    ] {
        assert!(vars.contains(&want), "{want} not in {vars:?}");
    }
    vm.logs().await;
    vm.c.destroy().await.expect("destroy");

    // Code that is not a WebAssembly module: the init fails as OpenWhisk's runtimes fail it.
    let vm = boot(&factory, "wskub0_3_guest_bad", 32).await;
    let not_wasm = base64::engine::general_purpose::STANDARD.encode(b"not a module at all");
    let r = proxy::init_verdict(&vm.init(&not_wasm, 60_000).await, 60_000, false).unwrap_err();
    assert_eq!(
        error_of(&r),
        (
            2,
            "The action failed to generate or locate a binary. See logs for details.".into()
        )
    );
    vm.c.destroy().await.expect("destroy");

    // A module whose initial memory is over the limit fails its run, not the guest.
    let vm = boot(&factory, "wskub0_4_guest_big", 32).await;
    let big = command("", "(call $write (i32.const 0) (i32.const 0))", 1024);
    proxy::init_verdict(&vm.init(&module(&big), 60_000).await, 60_000, false).expect("init");
    let r = vm.run(json!({"value": {}}), 60_000).await;
    assert_eq!(
        error_of(&r),
        (2, "The action exhausted its memory and was aborted.".into())
    );
    vm.logs().await;

    vm.c.destroy().await.expect("destroy");

    // A guest killed mid-run: the run ends at once (the backend sees QEMU go), not at its
    // time limit.
    let vm = boot(&factory, "wskub0_5_guest_killed", 32).await;
    proxy::init_verdict(&vm.init(&module(&modes()), 60_000).await, 60_000, false).expect("init");
    let pid: i32 = std::fs::read_to_string(run_dir.join("wskub0_5_guest_killed").join("qemu.pid"))
        .expect("QEMU's pid file")
        .trim()
        .parse()
        .unwrap();
    let killed = Instant::now();
    let run = vm.run(json!({"value": {"m": "l"}}), 60_000);
    let kill = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill QEMU");
    };
    let (r, ()) = tokio::join!(
        async {
            tokio::select! {
                r = run => Some(r),
                () = vm.c.ended() => None,
            }
        },
        kill
    );
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "the killed guest's run waited for its time limit"
    );
    if let Some(r) = r {
        assert_eq!(r.status_code, 2, "{r:?}");
    }
    vm.c.destroy().await.expect("destroy after a kill");

    let procs = processes_under(&run_dir);
    assert!(procs.is_empty(), "QEMU processes left: {procs:?}");
    assert_eq!(pool.stats().leased, 0, "a slot is still leased");
    assert_eq!(factory.remove_all("wskub0_").await.expect("remove_all"), 0);
    assert!(
        !Path::new("/sys/fs/cgroup/cpu")
            .join(cgroup_parent)
            .join("wskub0_1_guest_modes")
            .exists(),
        "a VM cgroup is left"
    );
    drop(factory);
    Arc::try_unwrap(pool)
        .expect("one owner")
        .shutdown()
        .await
        .expect("the pool shuts down cleanly");
}

//! The fault-injection suite: one invoker binary against the real components while one of them
//! fails under it. In each test every activation ends with the acks and the record the contract
//! says (a result, or the proper error activation), none is lost, the invoker recovers without
//! a restart, and when it stops nothing of it is left: the harness checks containers, runc
//! state, namespaces, devices, firewall chains, mounts, cgroups, VMs and processes when it is
//! dropped ([`Harness::leftovers`]).
//!
//! Faults the end-to-end suite (`invoker_e2e.rs`, run in every network mode) covers already:
//! CouchDB down for longer than the old 30 s give-up time
//! (`a_long_couchdb_outage_and_a_sigterm_leave_no_activation_unfinished_or_uncommitted`), the
//! invoker killed with SIGKILL mid-burst and restarted
//! (`an_invoker_killed_mid_burst_and_restarted_loses_nothing`), a container killed mid-run.
//!
//! These tests restart shared components (dockerd) and fill the machine, so they are ignored in
//! the workspace's test run and `scripts/test.sh` runs them alone, one at a time
//! (`--ignored --test-threads=1`), in each network mode (`INVOKER_E2E_NETWORK_MODE`): the
//! broker's restart once (it does not depend on the mode), dockerd's in the container modes
//! (vm mode's VMs use nothing of Docker's once the invoker is up).

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;
use serde_json::{Value, json};
use testkit::invoker::free_port_outside_ephemeral;

/// Whether an ack frees the activation's slot (a completion, or a combined ack).
fn slot_freeing(acks: &[Value]) -> bool {
    acks.iter().any(|a| a.get("instance").is_some())
}

/// Produces `n` blocking activations of `action` with `{"n": i, "ms": ms}`.
async fn burst(h: &Harness, action: &str, rev: &str, n: u32, ms: u64) -> Vec<(u32, String)> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push((
            i,
            h.invoke(action, Some(rev), true, json!({"n": i, "ms": ms}))
                .await,
        ));
    }
    ids
}

/// Reads acks until at least `want` of `ids` have their slot-freeing ack.
async fn until_acked(h: &mut Harness, ids: &[(u32, String)], want: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done = ids
            .iter()
            .filter(|(_, id)| h.seen.get(id).is_some_and(|a| slot_freeing(a)))
            .count();
        if done >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {} activations acknowledged within {within:?}, {want} expected; missing: {:?}",
            ids.len(),
            ids.iter()
                .filter(|(_, id)| !h.seen.get(id).is_some_and(|a| slot_freeing(a)))
                .collect::<Vec<_>>()
        );
        h.pump_ack(Duration::from_secs(5)).await;
    }
}

/// How one blocking activation ended, from its acks and its record, which must agree: its
/// result (`Ok`) or its error activation (`Err((statusCode, error))`). Each delivery answers
/// with a result ack and a completion ack, or one combined ack, so there is at least one
/// result-bearing and one slot-freeing ack (more when the activation was redelivered, or a
/// produce was retried across the broker's restart: the producer is not idempotent), and
/// every result-bearing ack carries the same response as the record.
async fn outcome(h: &Harness, id: &str) -> Result<Value, (i64, String)> {
    let record = h.record(id).await;
    let response = record["response"].clone();
    let acks = &h.seen[id];
    let results = acks.iter().filter(|a| a.get("response").is_some()).count();
    let freeing = acks.iter().filter(|a| a.get("instance").is_some()).count();
    assert!(
        results >= 1 && freeing >= 1,
        "{id}: {results} result-bearing and {freeing} slot-freeing acks: {acks:?}"
    );
    for ack in &h.seen[id] {
        if let Some(Value::Object(activation)) = ack.get("response") {
            assert_eq!(
                activation["response"], response,
                "an ack and the record of {id} disagree"
            );
        }
        if let Some(system) = ack.get("isSystemError") {
            let status = response["statusCode"].as_i64().unwrap_or(-1);
            assert_eq!(system, &json!(status == 3), "{id}: {ack} with {response}");
        }
    }
    match response["statusCode"].as_i64() {
        Some(0) => Ok(response["result"].clone()),
        Some(code @ (1..=3)) => Err((
            code,
            response["result"]["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{id}: error activation without an error: {response}"))
                .to_owned(),
        )),
        _ => panic!("{id}: no status code in its record: {record}"),
    }
}

/// An action that answers `{n}` after `ms` milliseconds.
fn echo(name: &str) -> Value {
    action_doc(
        name,
        "nodejs:default",
        "function main(p) { return new Promise(r => setTimeout(() => r({n: p.n}), p.ms || 0)) }",
        // vm mode: several VMs boot and start Node.js at once on 2 cores.
        limit_ms(20_000, 90_000),
    )
}

/// The invoker process is still the one the harness started: it survived the fault.
fn assert_alive(h: &mut Harness) {
    let status = h
        .invoker
        .as_mut()
        .expect("started")
        .try_wait()
        .expect("wait");
    assert!(status.is_none(), "the invoker exited: {status:?}");
}

/// A tansu broker of the test's own, with its data in SQLite so that it keeps topics, records
/// and committed offsets across a restart, as a Kafka broker does.
struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    fn binary() -> PathBuf {
        let tools = std::env::var("WHISK_TOOLS_DIR").unwrap_or_else(|_| "/opt/whisk-tools".into());
        let bin = Path::new(&tools).join("tansu-0.6.0/bin/tansu");
        assert!(
            bin.exists(),
            "{} is missing; `scripts/stack.sh up` installs it",
            bin.display()
        );
        bin
    }

    async fn start() -> Self {
        let mut b = Self {
            port: free_port_outside_ephemeral(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        b.up().await;
        b
    }

    fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again, on the same port and data) and waits until it accepts.
    async fn up(&mut self) {
        let url = format!("tcp://{}", self.hosts());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let mut command = Command::new(Self::binary());
        command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
            ])
            .arg(&url)
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // A test killed by a signal takes its broker with it. The thread that starts it is a
        // worker of the test's runtime, which lives as long as the test.
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid, kill on itself); it allocates nothing.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                use nix::sys::signal::{Signal, kill};
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                // The parent may have died before the line above: then no signal would come.
                if nix::unistd::getppid().as_raw() != i32::try_from(parent).unwrap_or(-1) {
                    let _ = kill(nix::unistd::getpid(), Signal::SIGKILL);
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.hosts()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30 s; see {}",
                self.hosts(),
                self.dir.path().join("tansu.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, and SIGKILL if it has not exited after 30 s; waits for its exit.
    async fn down(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts shared components: scripts/test.sh runs the suite alone, --ignored --test-threads=1"]
async fn a_broker_restarted_mid_burst_loses_no_activation() {
    let mut broker = Broker::start().await;
    let mut h = Harness::start_with(Options {
        manifest: Some(manifest_without_stem_cells()),
        kafka_hosts: Some(broker.hosts()),
        ..Options::default()
    })
    .await;
    let rev = h.put_action(&echo("echo")).await;
    let ids = burst(&h, "echo", &rev, 24, 300).await;
    until_acked(&mut h, &ids, 4, Duration::from_secs(120)).await;

    // The broker goes away while activations run and wait: their acks cannot be sent, the
    // offsets cannot be committed.
    broker.down().await;
    eprintln!("[faults] broker down");
    // Down past the producer's 30 s message timeout, so the acks of the activations that end
    // meanwhile fail and are retried: the invoker must say the broker is down (and stop its
    // health pings) rather than give the acks up.
    let down_until = Instant::now() + Duration::from_secs(50);
    let mut said_down = false;
    while Instant::now() < down_until {
        assert_alive(&mut h);
        said_down |= metric(&h, "invoker_component_down", "component=\"kafka\"").await == 1.0;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        said_down,
        "50 s without the broker and invoker_component_down{{component=\"kafka\"}} never said so"
    );
    broker.up().await;
    eprintln!("[faults] broker up again");

    until_acked(&mut h, &ids, ids.len(), Duration::from_secs(240)).await;
    for (n, id) in &ids {
        assert_eq!(outcome(&h, id).await, Ok(json!({"n": n})), "{id}");
    }
    // And it goes on taking work.
    let after = burst(&h, "echo", &rev, 2, 0).await;
    until_acked(&mut h, &after, after.len(), Duration::from_secs(120)).await;
    for (n, id) in &after {
        assert_eq!(outcome(&h, id).await, Ok(json!({"n": n})), "{id}");
    }
    assert_alive(&mut h);
}

/// The stack's dockerd: its pid from `scripts/stack.sh`'s pid file. A dockerd the stack did
/// not start is not this test's to restart.
fn stack_dockerd() -> i32 {
    let dir = std::env::var("WHISK_STACK_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.stack").into());
    let file = Path::new(&dir).join("pids/docker.pid");
    let pid = std::fs::read_to_string(&file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .unwrap_or_else(|| {
            panic!(
                "{} names no dockerd: this test restarts the dockerd `scripts/stack.sh up` started, \
                 and no other",
                file.display()
            )
        });
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "dockerd",
        "pid {pid} of {} is not dockerd",
        file.display()
    );
    pid
}

/// Stops the stack's dockerd (SIGTERM: without live-restore it stops every container) and
/// starts it again the way the stack does.
async fn restart_dockerd() {
    let pid = stack_dockerd();
    // Whatever happens below, the next test finds a Docker engine.
    let _back = DockerdBack;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM dockerd");
    let deadline = Instant::now() + Duration::from_secs(90);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "dockerd {pid} did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("[faults] dockerd {pid} stopped");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/stack.sh");
    let status = tokio::process::Command::new(script)
        .arg("docker")
        .status()
        .await
        .expect("scripts/stack.sh docker");
    assert!(status.success(), "scripts/stack.sh docker: {status}");
    eprintln!("[faults] dockerd {} started", stack_dockerd());
}

/// Starts the stack's dockerd again when it is dropped and no engine answers: a restart that
/// failed halfway must not leave the later tests (and the harness's own clean-up) without one.
struct DockerdBack;

impl Drop for DockerdBack {
    fn drop(&mut self) {
        let answers = Command::new("docker")
            .args(["info", "--format", "{{.ID}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !answers {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/stack.sh");
            let status = Command::new(script).arg("docker").status();
            eprintln!(
                "[faults] dockerd was down after the test: scripts/stack.sh docker: {status:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts shared components: scripts/test.sh runs the suite alone, --ignored --test-threads=1"]
async fn a_dockerd_restart_mid_burst_ends_every_activation_and_the_invoker_recovers() {
    let mut h = Harness::start_with(Options {
        manifest: Some(manifest_without_stem_cells()),
        user_memory: "2048 m",
        ..Options::default()
    })
    .await;
    let rev = h.put_action(&echo("echo")).await;
    // Warm containers first, then a burst of runs long enough to be cut by the restart.
    let warm = burst(&h, "echo", &rev, 2, 0).await;
    until_acked(&mut h, &warm, warm.len(), Duration::from_secs(120)).await;
    let ids = burst(&h, "echo", &rev, 16, 1_500).await;
    until_acked(&mut h, &ids, 2, Duration::from_secs(120)).await;
    restart_dockerd().await;

    until_acked(&mut h, &ids, ids.len(), Duration::from_secs(300)).await;
    let mut failed = Vec::new();
    for (n, id) in &ids {
        match outcome(&h, id).await {
            Ok(result) => assert_eq!(result, json!({"n": n}), "{id}"),
            // A run whose container Docker stopped, or a cold start while Docker was away.
            Err((code, error)) => {
                assert!(code == 2 || code == 3, "{id}: status {code}: {error}");
                failed.push((id.clone(), code, error));
            }
        }
    }
    eprintln!(
        "[faults] {} of {} activations failed across the restart: {failed:?}",
        failed.len(),
        ids.len()
    );
    if network_mode() == "netns" || network_mode() == "vm" {
        // Neither runc's containers nor QEMU depend on dockerd once the images are unpacked.
        assert!(
            failed.is_empty(),
            "failed without Docker's help: {failed:?}"
        );
    }
    if network_mode() == "netns" {
        // dockerd rewrote its FORWARD rules at start: the pool's guard is still jumped to.
        let rules = String::from_utf8(
            Command::new("iptables")
                .args(["-S"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let pool = h.netns_pool_name();
        for (chain, target) in [("INPUT", "IN"), ("FORWARD", "FWD")] {
            let jump = format!("-j NETPOOL-{pool}-{target}");
            assert!(
                rules
                    .lines()
                    .any(|r| r.starts_with(&format!("-A {chain} ")) && r.ends_with(&jump)),
                "no jump to NETPOOL-{pool}-{target} in {chain} after the restart:\n{rules}"
            );
        }
    }
    // Containers that died with the old dockerd are not handed out again: the next
    // activations all succeed.
    let after = burst(&h, "echo", &rev, 4, 0).await;
    until_acked(&mut h, &after, after.len(), Duration::from_secs(180)).await;
    for (n, id) in &after {
        assert_eq!(outcome(&h, id).await, Ok(json!({"n": n})), "{id}");
    }
    assert_alive(&mut h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts shared components: scripts/test.sh runs the suite alone, --ignored --test-threads=1"]
async fn an_action_past_its_memory_limit_is_a_developer_error_and_its_slot_is_freed() {
    let mut h = Harness::start_with(Options {
        manifest: Some(manifest_without_stem_cells()),
        // Room for one 256 MB container, or the hog's 128 MB: the echo below fits only once the
        // hog's memory has come back.
        user_memory: "256 m",
        ..Options::default()
    })
    .await;
    let mut hog = action_doc(
        "hog",
        "nodejs:default",
        // Buffers live outside V8's heap and `alloc` fills them, so every page counts
        // against the memory limit long before Node's own limits.
        "function main() { const kept = []; for (;;) kept.push(Buffer.alloc(16 << 20, 1)); }",
        limit_ms(30_000, 120_000),
    );
    hog["limits"]["memory"] = json!(128);
    let hog_rev = h.put_action(&hog).await;
    let rev = h.put_action(&echo("echo")).await;
    for _ in 0..2 {
        let a = h.invoke("hog", Some(&hog_rev), true, json!({})).await;
        let acks = h.acks_of(&a, 2).await;
        h.seen.insert(a.clone(), acks);
        let (code, error) = outcome(&h, &a).await.expect_err("the hog succeeded");
        assert_eq!(code, 2, "{error}");
        if network_mode() == "vm" {
            // The guest's kernel kills the process inside the VM: the host sees a guest
            // whose proxy went away, not a cgroup's OOM kill (vm.rs `oom_killed`).
            eprintln!("[faults] vm mode's answer to an out-of-memory action: {error}");
        } else {
            assert_eq!(error, "The action exhausted its memory and was aborted.");
        }
    }
    // Its memory was given back: an ordinary action still fits.
    let b = h.invoke("echo", Some(&rev), true, json!({"n": 7})).await;
    let acks = h.acks_of(&b, 2).await;
    h.seen.insert(b.clone(), acks);
    assert_eq!(outcome(&h, &b).await, Ok(json!({"n": 7})));
    assert_alive(&mut h);
}

/// The invoker's metric `name` from its `/metrics`, summed over the series whose labels
/// contain `labels` (0 when absent).
async fn metric(h: &Harness, name: &str, labels: &str) -> f64 {
    let (_, text) = h.http("GET", "/metrics", false).await;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts shared components: scripts/test.sh runs the suite alone, --ignored --test-threads=1"]
async fn a_storm_of_cold_starts_drains_the_pool_every_activation_succeeds_and_it_refills() {
    // Every activation its own action, so each is a cold start needing an endpoint: three
    // times the pool's high watermark of 4 (vm mode: fewer, each boots a kernel under TCG).
    let n = if network_mode() == "vm" { 6 } else { 12 };
    let mut h = Harness::start_with(Options {
        manifest: Some(manifest_without_stem_cells()),
        user_memory: "3072 m",
        ..Options::default()
    })
    .await;
    let mut ids = Vec::new();
    let mut revs = Vec::new();
    for i in 0..n {
        let name = format!("storm{i}");
        revs.push((name.clone(), h.put_action(&echo(&name)).await));
    }
    for (i, (name, rev)) in revs.iter().enumerate() {
        let i = u32::try_from(i).unwrap();
        ids.push((
            i,
            h.invoke(name, Some(rev), true, json!({"n": i, "ms": 200}))
                .await,
        ));
    }
    until_acked(&mut h, &ids, ids.len(), Duration::from_secs(300)).await;
    for (n, id) in &ids {
        assert_eq!(outcome(&h, id).await, Ok(json!({"n": n})), "{id}");
    }
    // The storm took every endpoint; the pool refills (below its low watermark of 2 it makes
    // endpoints up to its high watermark of 4, `network_mode_env`), while the storm's
    // containers, warm now, keep theirs.
    // (The VM slots beside the container modes are a netpool pool too: `pool` tells them
    // apart.)
    let idle = match network_mode().as_str() {
        "pcpm" => Some(("pcpm_pause_containers_idle", String::new())),
        "netns" => Some((
            "netpool_slots_idle",
            format!("pool=\"{}\"", h.netns_pool_name()),
        )),
        "vm" => Some((
            "netpool_slots_idle",
            format!("pool=\"{}\"", h.vm_pool_name()),
        )),
        _ => {
            eprintln!("[faults] bridge mode has no endpoint pool: the storm's cold starts only");
            None
        }
    };
    if let Some((idle, labels)) = idle {
        // The storm drained it: cold starts found it empty and waited for an endpoint to be
        // made (or, pcpm, fell back to ordinary networking). A lease from a ready slot takes
        // microseconds; one that waits for a slot's creation, tens of milliseconds.
        if idle.starts_with("pcpm") {
            let empty = metric(&h, "pcpm_acquire_seconds_count", "outcome=\"waited\"").await
                + metric(&h, "pcpm_acquire_seconds_count", "outcome=\"fallback\"").await;
            assert!(empty > 0.0, "no acquisition found the pcpm pool empty");
        } else {
            let waited = metric(&h, "netpool_lease_wait_seconds_sum", &labels).await;
            assert!(
                waited >= 0.01,
                "{n} leases waited {waited} s in all: the pool was never empty"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let now = metric(&h, idle, &labels).await;
            if now >= 2.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{idle} is {now} 120 s after the storm, at least 2 expected"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert_alive(&mut h);
}

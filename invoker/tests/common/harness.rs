//! The end-to-end harness: a test plays the controller against one invoker binary of its own
//! (its own id, topics and databases), on the real broker, CouchDB-API server and dockerd.
//! Shared by `invoker_e2e.rs` and `faults.rs`; [`Harness::leftovers`] is what every harness
//! checks when it is dropped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use openwhisk::couchdb::CouchDb;
use openwhisk::kafka::{self, TopicKind};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use testkit::invoker::{InvokerCommand, InvokerProcess, free_port};

use crate::common::{Stack, chain, down};

pub const GUEST_UUID: &str = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502";
pub const GUEST_KEY: &str = "123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";

/// How a test's invoker is started.
#[derive(Clone, Debug)]
pub struct Options {
    pub user_memory: &'static str,
    /// `RUNTIMES_MANIFEST` (JSON); the repository's manifest when `None`.
    pub manifest: Option<String>,
    /// Reach CouchDB through this port instead of the stack's (a proxy the test controls).
    pub couch_port: Option<u16>,
    /// More environment variables for the invoker (`CONFIG_…` settings).
    pub env: Vec<(&'static str, &'static str)>,
    /// Talk to this broker instead of the stack's (one the test restarts).
    pub kafka_hosts: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            user_memory: "1024 m",
            manifest: None,
            couch_port: None,
            env: Vec::new(),
            kafka_hosts: None,
        }
    }
}

pub struct Harness {
    pub id: u32,
    pub prefix: String,
    pub port: u16,
    pub controller: String,
    pub whisks: String,
    pub activations: String,
    pub options: Options,
    pub db: CouchDb,
    pub docker: bollard::Docker,
    pub producer: FutureProducer,
    pub acks: StreamConsumer,
    pub health: StreamConsumer,
    pub invoker: Option<InvokerProcess>,
    /// Acks received but not yet claimed, by activation id.
    pub seen: HashMap<String, Vec<Value>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // SIGTERM: the invoker drains and removes its containers.
        if let Some(mut invoker) = self.invoker.take() {
            invoker.stop();
        }
        // Whatever the mode: containers, pause containers, runc state, namespaces, devices,
        // firewall chains, mounts, cgroups, VMs and processes of this invoker.
        let left = self.leftovers();
        if std::thread::panicking() {
            // A second panic would abort the run and hide the first.
            if !left.is_empty() {
                eprintln!("[harness {}] also left behind: {left:?}", self.id);
            }
        } else {
            assert!(
                left.is_empty(),
                "the invoker's shutdown left state behind: {left:?}"
            );
        }
    }
}

/// vm mode: one of this invoker's QEMU processes.
#[derive(Debug)]
pub struct Vm {
    /// The container's name (its VM folder's).
    pub name: String,
    pub pid: i32,
    /// QEMU's command line.
    pub args: Vec<String>,
}

impl Vm {
    /// The value after `flag` on QEMU's command line.
    pub fn arg(&self, flag: &str) -> Option<&str> {
        let at = self.args.iter().position(|a| a == flag)?;
        self.args.get(at + 1).map(String::as_str)
    }
}

/// A process's command line, split at its NULs; `None` once it is gone.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The processes whose command line mentions `needle`, as `pid: command line`.
pub fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(args) = cmdline(pid)
            && args.iter().any(|a| a.contains(needle))
        {
            found.push(format!("{pid}: {}", args.join(" ")));
        }
    }
    found
}

/// User and system CPU time (clock ticks) of a process's vCPU threads (QEMU names them
/// `CPU <n>/TCG` or `CPU <n>/KVM`).
pub fn vcpu_ticks(pid: i32) -> u64 {
    let mut ticks = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("CPU ") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // The fields after the command (which is in parentheses): state is the first, utime
        // and stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks
}

pub fn mem_code(code: &str) -> Value {
    json!({
        "attachmentName": format!("mem:{}", base64::engine::general_purpose::URL_SAFE.encode(code)),
        "attachmentType": "text/plain; charset=UTF-8",
    })
}

pub fn action_doc(name: &str, kind: &str, code: &str, timeout_ms: u64) -> Value {
    json!({
        "_id": format!("guest/{name}"),
        "entityType": "action",
        "namespace": "guest",
        "name": name,
        "updated": 1_714_559_000_000_i64,
        "exec": {"kind": kind, "binary": false, "code": mem_code(code)},
        "parameters": [],
        "limits": {"timeout": timeout_ms, "memory": 256, "logs": 10, "concurrency": 1},
        "version": "0.0.1",
        "publish": false,
        "annotations": [{"key": "provide-api-key", "value": false}, {"key": "exec", "value": kind}],
    })
}

/// The repository's runtimes manifest without stem cells: every first activation is a cold
/// start in a container named after its action.
pub fn manifest_without_stem_cells() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../runtimes/runtimes.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for kinds in m["runtimes"].as_object_mut().unwrap().values_mut() {
        for k in kinds.as_array_mut().unwrap() {
            k.as_object_mut().unwrap().remove("stemCells");
        }
    }
    m.to_string()
}

/// The network mode the suite runs in: `INVOKER_E2E_NETWORK_MODE` (`bridge` by default,
/// `pcpm`, `netns` or `vm`); `scripts/test.sh` runs the suite once per mode. Pools are kept
/// small so the tests running side by side do not crowd dockerd (or, in vm mode, the CPU:
/// every VM boots a Linux kernel under TCG).
pub fn network_mode() -> String {
    std::env::var("INVOKER_E2E_NETWORK_MODE").unwrap_or_else(|_| "bridge".into())
}

pub fn network_mode_env() -> Vec<(&'static str, String)> {
    let mode = network_mode();
    let mut env = vec![("CONFIG_whisk_invoker_network_mode", mode.clone())];
    if mode != "bridge" {
        env.extend([
            (
                "CONFIG_whisk_invoker_network_pool_lowWatermark",
                "2".to_owned(),
            ),
            (
                "CONFIG_whisk_invoker_network_pool_highWatermark",
                "4".to_owned(),
            ),
        ]);
    }
    env
}

/// An action's time limit in ms: `ms`, or `vm_ms` in vm mode, for every action whose first
/// activation is a cold start. The init runs under the action's limit, and under TCG a boot
/// takes about 2 s and Node.js's start about 5 s on a quiet machine, several times that while
/// the other test booting VMs beside it and other builds share the 2 cores (a 10 s limit ran
/// out during a Node.js init in one of the suite's vm runs).
pub fn limit_ms(ms: u64, vm_ms: u64) -> u64 {
    if network_mode() == "vm" { vm_ms } else { ms }
}

/// A distinct small number per harness in this process (invoker ids, ports, names).
pub fn next_slot() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A netpool pool's namespaces folder and host devices (`<pool>br<n>` bridges, `<pool>v<b>-<i>`
/// veths), while they exist.
fn netpool_leftovers(pool: &str) -> Vec<String> {
    let mut left = Vec::new();
    let ns_dir = Path::new("/run/netpool").join(pool);
    if ns_dir.exists() {
        left.push(format!("namespaces {}", ns_dir.display()));
    }
    for dev in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let dev = dev.file_name().to_string_lossy().into_owned();
        if dev.starts_with(&format!("{pool}br")) || dev.starts_with(&format!("{pool}v")) {
            left.push(format!("device {dev}"));
        }
    }
    left
}

/// The stack's endpoints, with the broker `options` names instead of the stack's.
fn stack_for(options: &Options) -> Stack {
    let mut stack = Stack::from_env();
    if let Some(hosts) = &options.kafka_hosts {
        stack.kafka_hosts.clone_from(hosts);
    }
    stack
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let stack = stack_for(&options);
        let slot = next_slot();
        let id = 100 + (std::process::id() % 80) * 10 + slot;
        let tag = format!("{id}x{}", std::process::id());
        let controller = format!("t{tag}");
        // Topics of this harness only (`whisk.kafka.topics.prefix`): a controller or front door
        // running on the same broker never sees these invokers' pings.
        let prefix = format!("{controller}_");
        let whisks = format!("t{tag}_whisks");
        let activations = format!("t{tag}_activations");
        let db = CouchDb::new(&stack.couchdb).unwrap();
        for name in [&whisks, &activations] {
            db.create_db(name)
                .await
                .unwrap_or_else(|e| panic!("{}", down("couchdb", chain(&e))));
        }
        let admin = kafka::admin_client(&stack.kafka_hosts).unwrap();
        for (topic, kind) in [
            (
                format!("{prefix}completed{controller}"),
                TopicKind::Completed,
            ),
            (format!("{prefix}health"), TopicKind::Health),
        ] {
            kafka::ensure_topic(&admin, &topic, &kind.default_config())
                .await
                .unwrap_or_else(|e| panic!("{}", down("kafka", chain(&e))));
        }
        // `completed<C>` is this run's own topic: read it from the start. `health` is shared.
        let consumer = |topic: &str| {
            let reset = if topic.ends_with("health") {
                "latest"
            } else {
                "earliest"
            };
            let c: StreamConsumer =
                kafka::consumer_config(&stack.kafka_hosts, &format!("test-{tag}-{topic}"))
                    .set("auto.offset.reset", reset)
                    .create()
                    .unwrap();
            c.subscribe(&[topic]).unwrap();
            c
        };
        let acks = consumer(&format!("{prefix}completed{controller}"));
        let health = consumer(&format!("{prefix}health"));
        let producer: FutureProducer = kafka::producer_config(&stack.kafka_hosts).create().unwrap();
        let port = free_port();
        let docker = pcpm::docker::connect()
            .await
            .unwrap_or_else(|e| panic!("{}", down("docker", chain(&e))));
        let mut h = Self {
            id,
            prefix,
            port,
            controller,
            whisks,
            activations,
            options,
            db,
            docker,
            producer,
            acks,
            health,
            invoker: None,
            seen: HashMap::new(),
        };
        h.invoker = Some(h.spawn_invoker());
        // Ready when it pings.
        let ping = h.next_ping(Duration::from_secs(60)).await;
        assert_eq!(ping["name"]["instance"], json!(id));
        h
    }

    pub fn spawn_invoker(&self) -> InvokerProcess {
        let stack = stack_for(&self.options);
        let manifest = self.options.manifest.clone().unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../runtimes/runtimes.json").to_owned()
        });
        let couch_port = self
            .options
            .couch_port
            .map(|p| p.to_string())
            .unwrap_or_else(|| stack.couchdb.url.rsplit(':').next().unwrap().to_owned());
        InvokerCommand::new(
            env!("CARGO_BIN_EXE_invoker"),
            &stack,
            self.id,
            &format!("e2e{}", self.id),
        )
        .topics_prefix(&self.prefix)
        .databases(&self.whisks, &self.activations)
        .port(self.port)
        .env("RUNTIMES_MANIFEST", manifest)
        .env("CONFIG_whisk_couchdb_port", couch_port)
        .env(
            "CONFIG_whisk_containerPool_userMemory",
            self.options.user_memory,
        )
        .envs(self.options.env.iter().copied())
        .envs(network_mode_env())
        // netns mode: invokers running side by side need address ranges of their own.
        .env(
            "CONFIG_whisk_invoker_network_netns_subnet",
            format!("10.{}.0.0/16", 150 + self.id % 50),
        )
        // The VM slots (vm mode's, and the VM backend's beside the container modes), likewise:
        // 10.100–10.149, apart from netns's (above, and the stack's 10.230), the benchmark's
        // 10.231 and 10.233, vm mode's default 10.232, the free ranges the invokers of other
        // tests pick (netpool's `subnet_auto`, from 10.200) and the ranges of netpool's and the
        // VM backend's own tests (10.213, 10.215–10.218). Ids are a multiple of 10 plus the
        // harness's slot in this process, so `id % 50`, like netns's, keeps the ranges of one
        // process's first 50 invokers apart.
        .env(
            "CONFIG_whisk_invoker_network_vm_subnet",
            format!("10.{}.0.0/16", 100 + self.id % 50),
        )
        .grace(Duration::from_secs(30))
        .spawn()
        .expect("start the invoker binary")
    }

    /// `wsk<uniqueName><N>_`: the prefix of every container of this harness's invoker.
    pub fn container_prefix(&self) -> String {
        format!("wske2e{}{}_", self.id, self.id)
    }

    /// vm mode: the VM factory's runtime folder, `<whisk.invoker.vm.dir>/<name prefix>`
    /// (`VmConfig::from_settings`), with a folder per VM.
    pub fn vm_run_dir(&self) -> PathBuf {
        Path::new("/run/wsk-vm").join(self.container_prefix().trim_end_matches('_'))
    }

    /// vm mode: the netpool pool of the invoker's VM slots (`v<id>`, service.rs).
    pub fn vm_pool_name(&self) -> String {
        format!("v{}", self.id % 10_000)
    }

    /// vm mode: this invoker's live QEMU processes, by the pid file in each VM folder. A pid
    /// counts only while that process's `-pidfile` is this file, so a reused pid is never
    /// taken for a VM.
    pub fn vms(&self) -> Vec<Vm> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.vm_run_dir()) else {
            return out;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pidfile = e.path().join("qemu.pid");
            let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let Some(args) = cmdline(pid) else { continue };
            let vm = Vm { name, pid, args };
            if vm.arg("-pidfile") == pidfile.to_str() {
                out.push(vm);
            }
        }
        out
    }

    /// vm mode: a VM's guest address, from the neighbour entry its folder records.
    pub fn vm_ip(&self, name: &str) -> Option<std::net::Ipv4Addr> {
        let record = self.vm_run_dir().join(name).join("neighbour");
        std::fs::read_to_string(record)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// vm mode: the host's address on the pool's first bridge, the gateway its guests reach.
    pub fn vm_gateway(&self) -> std::net::Ipv4Addr {
        let dev = format!("{}br0", self.vm_pool_name());
        let out = Command::new("ip")
            .args(["-o", "-4", "addr", "show", "dev", &dev])
            .output()
            .expect("ip");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no IPv4 address on {dev}: {text}"))
    }

    /// vm mode: what this invoker left behind after it stopped: QEMU processes, its VM
    /// folders, its VM slots' namespaces and host devices (the TAPs are inside the
    /// namespaces), the VMs' cgroups.
    pub fn vm_leftovers(&self) -> Vec<String> {
        let run_dir = self.vm_run_dir();
        let mut left = processes_naming(run_dir.to_str().unwrap());
        if run_dir.exists() {
            left.push(format!("folder {}", run_dir.display()));
        }
        left.extend(netpool_leftovers(&self.vm_pool_name()));
        let prefix = self.container_prefix();
        for parent in ["/sys/fs/cgroup/cpu/wsk-vm", "/sys/fs/cgroup/wsk-vm"] {
            for cg in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                if cg.file_name().to_string_lossy().starts_with(&prefix) {
                    left.push(format!("cgroup {}", cg.path().display()));
                }
            }
        }
        left
    }

    /// The netpool pool of the invoker's namespaces in netns mode (`w<id>`, service.rs).
    pub fn netns_pool_name(&self) -> String {
        format!("w{}", self.id % 10_000)
    }

    /// Everything of this invoker's that outlives it, after it stopped: Docker containers
    /// (its action containers and pcpm's pause containers), runc's state and bundles, both
    /// netpool pools' namespaces, host devices and firewall chains, mounts, cgroups in every
    /// hierarchy, the VMs' state, and processes. Empty after a clean shutdown, in every mode.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = self.vm_leftovers();
        let prefix = self.container_prefix();
        let name_prefix = prefix.trim_end_matches('_').to_owned();
        let pool = self.netns_pool_name();
        let vm_pool = self.vm_pool_name();
        // Docker: action containers `<prefix>…`, pause containers `<name prefix>-pcpm…`.
        match Command::new("docker")
            .args(["ps", "-a", "--format", "{{.Names}}"])
            .output()
        {
            Ok(out) if out.status.success() => {
                for name in String::from_utf8_lossy(&out.stdout).lines() {
                    if name.starts_with(&name_prefix) {
                        left.push(format!("container {name}"));
                    }
                }
            }
            Ok(out) => left.push(format!(
                "(docker ps failed: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => left.push(format!("(docker ps failed: {e})")),
        }
        // runc: its state and the bundles of this invoker's containers.
        for dir in [
            Path::new("/run/wsk-runc").join(&name_prefix),
            Path::new("/var/lib/wsk-invoker/bundles").join(&name_prefix),
        ] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                left.push(format!("runc {}", e.path().display()));
            }
            // The invoker removes its folders once they are empty.
            if dir.exists() {
                left.push(format!("folder {}", dir.display()));
            }
        }
        left.extend(processes_naming(&format!("/run/wsk-runc/{name_prefix}")));
        // netns mode's pool (vm_leftovers has the VM slots' namespaces and devices).
        left.extend(netpool_leftovers(&pool));
        // Both pools' host guards (`NETPOOL-<pool>-IN` and `-FWD`, the jumps into them) and
        // their bridges' own FORWARD rules (`-i <pool>br<n> -o <pool>br<n> -j ACCEPT`).
        match Command::new("iptables").args(["-S"]).output() {
            Ok(out) if out.status.success() => {
                for rule in String::from_utf8_lossy(&out.stdout).lines() {
                    if [&pool, &vm_pool].iter().any(|p| {
                        rule.contains(&format!("NETPOOL-{p}-"))
                            || rule.contains(&format!("-i {p}br"))
                            || rule.contains(&format!("-o {p}br"))
                    }) {
                        left.push(format!("iptables {rule}"));
                    }
                }
            }
            Ok(out) => left.push(format!(
                "(iptables -S failed: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => left.push(format!("(iptables -S failed: {e})")),
        }
        // Mounts: the namespaces' nsfs bind mounts, the containers' overlays.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for m in mounts.lines() {
            let point = m.split(' ').nth(4).unwrap_or("");
            if point.starts_with(&format!("/run/netpool/{pool}/"))
                || point.starts_with(&format!("/run/netpool/{vm_pool}/"))
                || point.contains(&format!("/{name_prefix}/"))
            {
                left.push(format!("mount {point}"));
            }
        }
        // cgroups, in every hierarchy (v1 has one per controller; v2 is the root itself).
        let roots: Vec<PathBuf> = std::iter::once(PathBuf::from("/sys/fs/cgroup"))
            .chain(
                std::fs::read_dir("/sys/fs/cgroup")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            )
            .collect();
        for root in roots {
            for parent in ["wsk-runc", "wsk-vm"] {
                for cg in std::fs::read_dir(root.join(parent))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if cg.file_name().to_string_lossy().starts_with(&prefix) {
                        let path = cg.path().display().to_string();
                        if !left.contains(&format!("cgroup {path}")) {
                            left.push(format!("cgroup {path}"));
                        }
                    }
                }
            }
        }
        left
    }

    /// VM boots that ended ready, from the invoker's `/metrics` (none yet: 0).
    pub async fn vm_boots(&self) -> u64 {
        let (_, metrics) = self.http("GET", "/metrics", false).await;
        metrics
            .lines()
            .filter_map(|l| l.strip_prefix("invoker_vm_boots_total{outcome=\"ready\"} "))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// In netns mode: the OCI runtime's view of this invoker's containers (id, status).
    pub fn runc_list(&self) -> Vec<(String, String)> {
        let state = format!(
            "/run/wsk-runc/{}",
            self.container_prefix().trim_end_matches('_')
        );
        // No state folder, no container; and asking crun would make the folder.
        if !Path::new(&state).exists() {
            return Vec::new();
        }
        let runtime = oci_runtime();
        let out = Command::new(&runtime)
            .args(["--root", &state, "list", "-f", "json"])
            .output()
            .unwrap_or_else(|e| panic!("{runtime}: {e}"));
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        list.as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["id"].as_str().unwrap_or("").to_owned(),
                            c["status"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// In netns mode: a container's OCI spec.
    pub fn runc_spec(&self, id: &str) -> Value {
        let path = format!(
            "/var/lib/wsk-invoker/bundles/{}/{id}/config.json",
            self.container_prefix().trim_end_matches('_')
        );
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    /// Kills a container's processes (SIGKILL), whatever runs it (in vm mode, QEMU).
    pub async fn kill(&self, name: &str) {
        if network_mode() == "vm" {
            let vm = self
                .vms()
                .into_iter()
                .find(|v| v.name == name)
                .unwrap_or_else(|| panic!("no QEMU process of {name}"));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(vm.pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap_or_else(|e| panic!("kill QEMU {} of {name}: {e}", vm.pid));
        } else if network_mode() == "netns" {
            let state = format!(
                "/run/wsk-runc/{}",
                self.container_prefix().trim_end_matches('_')
            );
            let runtime = oci_runtime();
            let ok = Command::new(&runtime)
                .args(["--root", &state, "kill", name, "KILL"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "{runtime} kill {name}");
        } else {
            self.docker
                .kill_container(
                    name,
                    None::<bollard::query_parameters::KillContainerOptions>,
                )
                .await
                .unwrap();
        }
    }

    /// Whether a container is paused; `None` when it no longer exists.
    ///
    /// vm mode: QMP's `query-status` is out of reach (QEMU serves one QMP client, and the
    /// invoker holds the connection), so a VM counts as paused when its vCPUs neither answer
    /// a TCP connection to the guest's proxy within a second nor use any CPU meanwhile. A
    /// running guest answers a SYN in milliseconds, and handling it takes vCPU time.
    pub async fn paused(&self, name: &str) -> Option<bool> {
        if network_mode() == "vm" {
            let vm = self.vms().into_iter().find(|v| v.name == name)?;
            let ip = self.vm_ip(name)?;
            let before = vcpu_ticks(vm.pid);
            let answered = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect((ip, 8080)),
            )
            .await
            .is_ok();
            let ran = vcpu_ticks(vm.pid) != before;
            // Gone meanwhile: no longer exists.
            self.vms().iter().find(|v| v.name == name)?;
            return Some(!answered && !ran);
        }
        if network_mode() == "netns" {
            return self
                .runc_list()
                .into_iter()
                .find(|(id, _)| id == name)
                .map(|(_, status)| status == "paused");
        }
        self.docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.paused)
    }

    /// (name, memory limit in MB) of this invoker's containers (in vm mode, QEMU's `-m`).
    pub async fn containers(&self) -> Vec<(String, u64)> {
        if network_mode() == "vm" {
            let prefix = self.container_prefix();
            return self
                .vms()
                .into_iter()
                .filter(|v| v.name.starts_with(&prefix))
                .map(|v| {
                    let mb = v
                        .arg("-m")
                        .and_then(|m| m.trim_end_matches('M').parse().ok())
                        .unwrap_or(0);
                    (v.name, mb)
                })
                .collect();
        }
        if network_mode() == "netns" {
            let prefix = self.container_prefix();
            return self
                .runc_list()
                .into_iter()
                .filter(|(id, _)| id.starts_with(&prefix))
                .map(|(id, _)| {
                    let mb = self.runc_spec(&id)["linux"]["resources"]["memory"]["limit"]
                        .as_u64()
                        .unwrap_or(0)
                        >> 20;
                    (id, mb)
                })
                .collect();
        }
        let filters = HashMap::from([("name", vec![self.container_prefix()])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let mut out = Vec::new();
        for c in self.docker.list_containers(Some(options)).await.unwrap() {
            let name = c
                .names
                .unwrap_or_default()
                .first()
                .cloned()
                .unwrap_or_default();
            let Some(id) = c.id else { continue };
            let Ok(info) = self
                .docker
                .inspect_container(
                    &id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            else {
                continue;
            };
            let mb = info.host_config.and_then(|h| h.memory).unwrap_or(0) >> 20;
            out.push((
                name.trim_start_matches('/').to_owned(),
                u64::try_from(mb).unwrap_or(0),
            ));
        }
        out
    }

    /// `HostConfig.NetworkMode` of this invoker's action containers (netns mode: the network
    /// namespace path in their OCI spec; vm mode: the netpool namespace QEMU runs in, found
    /// by inode, and the TAP device it opened there, as `<namespace> <netdev>`).
    pub async fn network_modes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if network_mode() == "vm" {
            let ns_dir = Path::new("/run/netpool").join(self.vm_pool_name());
            let slots: Vec<(PathBuf, u64)> = std::fs::read_dir(&ns_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| Some((e.path(), std::fs::metadata(e.path()).ok()?.ino())))
                .collect();
            for vm in self.vms() {
                let ino = std::fs::metadata(format!("/proc/{}/ns/net", vm.pid))
                    .map(|m| m.ino())
                    .unwrap_or(0);
                let ns = slots
                    .iter()
                    .find(|(_, i)| *i == ino)
                    .map(|(p, _)| p.display().to_string())
                    .unwrap_or_default();
                out.push(format!("{ns} {}", vm.arg("-netdev").unwrap_or("")));
            }
            return out;
        }
        if network_mode() == "netns" {
            for (id, _) in self.containers().await {
                let spec = self.runc_spec(&id);
                let ns = spec["linux"]["namespaces"]
                    .as_array()
                    .and_then(|a| a.iter().find(|n| n["type"] == "network"))
                    .and_then(|n| n["path"].as_str())
                    .unwrap_or("")
                    .to_owned();
                out.push(ns);
            }
            return out;
        }
        for (name, _) in self.containers().await {
            let info = self
                .docker
                .inspect_container(
                    &name,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .unwrap();
            out.push(
                info.host_config
                    .and_then(|h| h.network_mode)
                    .unwrap_or_default(),
            );
        }
        out
    }

    pub async fn http(&self, method: &str, path: &str, auth: bool) -> (u16, String) {
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut req = match method {
            "POST" => client.post(url),
            _ => client.get(url),
        };
        if auth {
            req = req.basic_auth("invoker.user", Some("invoker.pass"));
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn next_ping(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.health.recv())
                .await
                .expect("no ping from the invoker")
                .unwrap();
            let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            if v["name"]["instance"] == json!(self.id) {
                return v;
            }
        }
    }

    pub async fn put_action(&self, doc: &Value) -> String {
        let id = doc["_id"].as_str().unwrap();
        self.db.put_doc(&self.whisks, id, doc).await.unwrap().rev
    }

    /// Produces an activation as the controller writes it; returns its activation id.
    pub async fn invoke(
        &self,
        name: &str,
        rev: Option<&str>,
        blocking: bool,
        content: Value,
    ) -> String {
        self.invoke_as(name, rev, blocking, content, json!({}))
            .await
    }

    /// The same, for a user with namespace limits `limits`.
    pub async fn invoke_as(
        &self,
        name: &str,
        rev: Option<&str>,
        blocking: bool,
        content: Value,
        limits: Value,
    ) -> String {
        let activation_id = format!("{:032x}", rand_u128());
        let msg = json!({
            "transid": [format!("tx{activation_id}"), 1_714_560_000_123_i64],
            "action": {"path": "guest", "name": name, "version": "0.0.1"},
            "revision": rev,
            "user": {"subject": "guest", "namespace": {"name": "guest", "uuid": GUEST_UUID},
                     "authkey": {"api_key": format!("{GUEST_UUID}:{GUEST_KEY}")},
                     "rights": ["READ", "PUT", "DELETE", "ACTIVATE"], "limits": limits},
            "activationId": activation_id,
            "rootControllerIndex": {"asString": self.controller, "instanceType": "controller"},
            "blocking": blocking,
            "content": content,
            "initArgs": [],
            "lockedArgs": {},
        });
        self.produce(&msg.to_string()).await;
        eprintln!("[harness {}] invoked {name} as {activation_id}", self.id);
        activation_id
    }

    pub async fn produce(&self, payload: &str) {
        let topic = format!("{}invoker{}", self.prefix, self.id);
        self.producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    /// Reads one ack (if one comes within `within`) into `seen`.
    pub async fn pump_ack(&mut self, within: Duration) {
        // Nothing within `within`, or a consumer error (the broker is away: the fault suite
        // stops it; the client reconnects by itself).
        let Ok(Ok(m)) = tokio::time::timeout(within, self.acks.recv()).await else {
            return;
        };
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        self.seen.entry(ack_id(&v)).or_default().push(v);
    }

    /// The next `n` acks of `activation_id`, in arrival order.
    pub async fn acks_of(&mut self, activation_id: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if self.seen.get(activation_id).is_some_and(|v| v.len() >= n) {
                return self.seen.remove(activation_id).unwrap();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.acks.recv())
                .await
                .unwrap_or_else(|_| panic!("no ack for {activation_id}; have {:?}", self.seen))
                .unwrap();
            let raw = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            let v: Value = serde_json::from_str(&raw).unwrap();
            let id = ack_id(&v);
            // The transid comes back byte for byte.
            assert!(
                raw.contains(&format!(r#""transid":["tx{id}",1714560000123]"#)),
                "{raw}"
            );
            self.seen.entry(id).or_default().push(v);
        }
    }

    pub async fn record(&self, activation_id: &str) -> Value {
        let id = format!("guest/{activation_id}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.db.get_doc(&self.activations, &id).await {
                Ok(doc) => return doc,
                Err(e) if Instant::now() > deadline => panic!("no record {id}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// The activation an ack is about: the shrunk response, the record's id, or `activationId`.
pub fn ack_id(v: &Value) -> String {
    match (&v["response"], &v["activationId"]) {
        (Value::String(s), _) => s.clone(),
        (Value::Object(o), _) => o["activationId"].as_str().unwrap().to_owned(),
        (_, Value::String(s)) => s.clone(),
        _ => panic!("unexpected ack {v}"),
    }
}

pub fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let b = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (u128::from(a) << 64) | u128::from(b)
}

pub fn annotation(activation: &Value, key: &str) -> Option<Value> {
    activation["annotations"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| a["value"].clone())
}

/// netns mode's OCI runtime in the invokers the harness starts: the one the environment sets
/// (`CONFIG_whisk_invoker_runc_runtime`), else the invoker's default, crun. Each runtime reads
/// only its own state files, so the harness must ask the same one.
pub fn oci_runtime() -> String {
    std::env::var("CONFIG_whisk_invoker_runc_runtime")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "crun".into())
}

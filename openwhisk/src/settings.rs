//! The invoker's typed settings: the environment variables of contract §1.3 and the
//! `whisk.*` properties of §1.5 (from `CONFIG_*`, `-D` options or a config file), with
//! OpenWhisk's defaults. An invalid setting stops start-up with an error naming it.
//!
//! A config file (`--config FILE` or `INVOKER_CONFIG_FILE`) holds `key = value` lines with the
//! same property names (`whisk.container-pool.user-memory = 2048 m`); `#` starts a comment.
//! The environment wins over the file.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{ConfigValueError, Secret, parse_bytes, parse_duration, properties};
use crate::couchdb::CouchDbConfig;

const MB: u64 = 1 << 20;

/// A setting that is missing or does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error(transparent)]
    Value(#[from] ConfigValueError),
    #[error("{key}: {value:?} is not valid: {why}")]
    Invalid {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("config file {path}: line {line}: expected `key = value`")]
    FileSyntax { path: String, line: usize },
    #[error("config file {path}: {error}")]
    FileRead { path: String, error: String },
}

/// When an activation record is stored (`whisk.activation.store-*-result-level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreLevel {
    Always,
    Failures,
    FailuresNotApplicationErrors,
}

impl StoreLevel {
    /// Whether a record with `status_code` is stored at this level.
    pub fn stores(self, status_code: u8) -> bool {
        match self {
            Self::Always => true,
            Self::Failures => status_code != 0,
            Self::FailuresNotApplicationErrors => status_code >= 2,
        }
    }
}

/// Where action containers get their network (`whisk.invoker.network.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// Stock OpenWhisk: Docker creates each container's network (`--network <net>`).
    Bridge,
    /// Docker with `--network container:<pause>` from a pcpm pool of pause containers.
    Pcpm,
    /// runc directly, the network namespace leased from a netpool pool (no Docker daemon on
    /// the cold path).
    Netns,
    /// Every action in a QEMU microVM on a netpool VM slot (`whisk.invoker.vm.*`); the slots
    /// have their own range, `whisk.invoker.network.vm.subnet`.
    Vm,
}

/// How QEMU runs a VM's vCPU (`whisk.invoker.vm.accelerator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmAccelerator {
    /// Software emulation: works everywhere, seconds per Linux boot.
    Tcg,
    /// The host's `/dev/kvm` (hardware virtualisation).
    Kvm,
    /// Decided once when the VM backend starts: a canary guest is booted with KVM and, if
    /// that fails, with TCG; the first that boots is used for every VM.
    Auto,
}

/// The VM backend's settings (`whisk.invoker.vm.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSettings {
    pub accelerator: VmAccelerator,
    /// The QEMU binary (`qemu`, default `qemu-system-x86_64` on `PATH`).
    pub qemu: std::path::PathBuf,
    /// The guest kernel (`kernel`, default `<guest-dir>/vmlinux`: the uncompressed PVH ELF,
    /// which QEMU starts without running the real-mode setup and decompressor under TCG).
    pub kernel: std::path::PathBuf,
    /// The guest's initramfs (`initrd`, default `<guest-dir>/initrd.img`).
    pub initrd: std::path::PathBuf,
    /// The folder of the read-only root images `root-<kind>.ext4` (`root-images`, default
    /// `<guest-dir>`).
    pub root_images: std::path::PathBuf,
    /// The WebAssembly unikernel that runs every `wasm:0.1` action (`unikernel`, default
    /// `<guest-dir>/wasm-unikernel`).
    pub unikernel: std::path::PathBuf,
    /// In the container modes, an action annotated `sandbox: vm` runs in a VM
    /// (`allow-annotation`, default true).
    pub allow_annotation: bool,
    /// Spawn to the action proxy accepting connections (`boot-timeout`).
    pub boot_timeout: Duration,
    /// Runtime state: a folder per VM with its QMP socket and pid file (`dir`).
    pub dir: std::path::PathBuf,
}

/// Where `runtimes/vm/build-guest.sh` puts the guest by default.
pub const DEFAULT_VM_GUEST_DIR: &str = "/opt/whisk-tools/vm";

/// `whisk.invoker.runc.presandboxes` by default: sandboxes kept created per shape (see
/// `bench coldstart`'s `netns-crun-pre` column in the README: they cut only the largest
/// bursts, and cost CPU and memory).
const PRESANDBOXES: u64 = 0;

/// The format of `whisk.invoker.https.keystore-path` (`keystore-flavor`, compared without
/// regard to case as Java's `KeyStore.getInstance` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeystoreFlavor {
    /// A PKCS#12 file: what ansible deploys (`invoker-openwhisk-keystore.p12`).
    Pkcs12,
    /// Java's own format, which cannot be read here; a PKCS#12 file under this flavor is read
    /// as PKCS#12, as Java 9 and later read it.
    Jks,
    /// Not a Java flavor: a PEM file with the private key and the certificate chain, for
    /// deployments whose certificates come as PEM (a Kubernetes TLS secret, say).
    Pem,
}

/// The invoker's port over https (`whisk.invoker.protocol = https`, contract §8): the keys of
/// `whisk.invoker.https`, all required, as the Scala invoker requires them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsSettings {
    /// The keystore: the server's key and certificate chain; its certificates are also the ones
    /// a client certificate must be issued by (the Scala invoker uses the keystore as its trust
    /// store).
    pub keystore_path: std::path::PathBuf,
    pub keystore_password: Secret,
    pub keystore_flavor: KeystoreFlavor,
    /// Clients must present a certificate the keystore trusts (`client-auth = true`); otherwise
    /// none is asked for.
    pub client_auth: bool,
}

/// Sizes of the network endpoint pool (`whisk.invoker.network.pool.*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkPoolSizes {
    pub low_watermark: usize,
    pub high_watermark: usize,
    pub max: usize,
    pub max_concurrent_creates: usize,
    /// On an empty pool: fall back to ordinary networking (true) or wait (false).
    pub fallback: bool,
}

/// Lower and upper bounds and the default of one action limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub min: u64,
    pub max: u64,
    pub std: u64,
}

/// Everything the invoker reads at start-up.
/// Kafka client properties set in the configuration, as OpenWhisk's `KafkaConfiguration` reads
/// them: `whisk.kafka.common.*` for every client, `whisk.kafka.producer.*` and
/// `whisk.kafka.consumer.*` for one kind, each key the rest after the prefix with its dashes as
/// dots (`CONFIG_whisk_kafka_producer_lingerMs=1` is `linger.ms=1`). Applied over the
/// invoker's own client settings by [`crate::kafka::apply_properties`]. `Debug` hides the values
/// of passwords and other secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub Vec<(String, String)>);

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_hiding_secrets(f, self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// Every property seen, for the settings not typed in [`Settings`]; `Debug` hides secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(pub BTreeMap<String, String>);

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_hiding_secrets(f, self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// A map's `Debug` with the values of passwords, secrets and SASL settings hidden.
fn debug_hiding_secrets<'a>(
    f: &mut std::fmt::Formatter<'_>,
    entries: impl Iterator<Item = (&'a str, &'a str)>,
) -> std::fmt::Result {
    let secret = |k: &str| {
        [
            "password",
            "secret",
            "sasl.jaas",
            "sasl-jaas",
            "key.pem",
            "key-pem",
        ]
        .iter()
        .any(|s| k.contains(s))
    };
    f.debug_map()
        .entries(entries.map(|(k, v)| (k, if secret(k) { "<hidden>" } else { v })))
        .finish()
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub port: u16,
    pub kafka_hosts: String,
    /// `whisk.kafka.common.*` (see [`KafkaProperties`]).
    pub kafka_common: KafkaProperties,
    /// `whisk.kafka.producer.*`.
    pub kafka_producer: KafkaProperties,
    /// `whisk.kafka.consumer.*`.
    pub kafka_consumer: KafkaProperties,
    pub runtimes_manifest: String,
    /// `__OW_API_HOST` for action containers.
    pub api_host: String,
    pub topics_prefix: String,
    pub user_events_prefix: String,
    pub user_events: bool,
    pub user_memory_bytes: u64,
    pub concurrent_peek_factor: f64,
    pub user_cpus: Option<f64>,
    pub pause_grace: Duration,
    pub idle_container: Duration,
    pub network: String,
    pub dns_servers: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    pub extra_env: Vec<String>,
    pub runtimes_registry: String,
    pub payload_max: u64,
    pub payload_truncation: u64,
    pub store_blocking: StoreLevel,
    pub store_non_blocking: StoreLevel,
    /// Memory limits in MB.
    pub memory_mb: Bounds,
    /// Time limits in ms.
    pub time_ms: Bounds,
    /// Log limits in MB.
    pub logs_mb: Bounds,
    pub concurrency: Bounds,
    pub couchdb: CouchDbConfig,
    pub db_whisks: String,
    pub db_activations: String,
    pub db_subjects: String,
    pub invoker_username: String,
    pub invoker_password: Secret,
    /// `Some` when `whisk.invoker.protocol = https`.
    pub invoker_https: Option<HttpsSettings>,
    /// The ZooKeeper ensemble for id assignment (`ZOOKEEPER_HOSTS`, or the property
    /// `zookeeper.hosts`): needed only for `--uniqueName` without `--id` (contract §1.2).
    pub zookeeper_hosts: Option<String>,
    /// False with `LogDriverLogStoreProvider`: logs are not collected in-band.
    pub collect_logs: bool,
    /// Where action containers get their network.
    pub network_mode: NetworkMode,
    pub network_pool: NetworkPoolSizes,
    /// The VM slots' pool (`whisk.invoker.vm.pool.*`): in vm mode each size defaults to the
    /// network pool's; beside a container mode, where the VM backend serves only `wasm:0.1` and
    /// `sandbox: vm` actions, to low 1, high 2, 2 creates at a time (and the network pool's max).
    pub vm_pool: NetworkPoolSizes,
    /// netns mode: the namespaces' address range (`whisk.invoker.network.netns.subnet`).
    pub netns_subnet: (std::net::Ipv4Addr, u8),
    /// vm mode: the VM slots' address range (`whisk.invoker.network.vm.subnet`), apart from
    /// netns mode's so that an invoker of each mode can run on one host.
    pub vm_subnet: (std::net::Ipv4Addr, u8),
    /// The VM slots take the first free range of `vm_subnet`'s length instead (netpool's
    /// `subnet_auto`): `whisk.invoker.network.vm.subnet = auto`, and the default beside a
    /// container mode (a /20), so that the VM backends of several invokers on one host and the
    /// host's other networks never collide.
    pub vm_subnet_auto: bool,
    /// netns mode: unpacked images and bundles (`whisk.invoker.runc.dir`).
    pub runc_dir: std::path::PathBuf,
    /// netns mode: runtime image archives (`docker save` format) read without dockerd
    /// (`whisk.invoker.runc.image-store`, default `<runc.dir>/image-store`).
    pub runc_image_store: std::path::PathBuf,
    /// netns mode: the OCI runtime, a name looked up in `PATH` or a path
    /// (`whisk.invoker.runc.runtime`, default `crun`, or `runc`): crun starts a container with
    /// less CPU (measured by `bench coldstart`'s `netns-crun` and `netns-runc` columns, README).
    pub runc_runtime: std::path::PathBuf,
    /// netns mode: containers created ahead of need per shape (image, limits, environment) a
    /// cold start asked for, so that a cold start only starts one
    /// (`whisk.invoker.runc.presandboxes`; 0 turns them off).
    pub runc_presandboxes: usize,
    /// The VM backend (`whisk.invoker.vm.*`).
    pub vm: VmSettings,
    /// Most `docker run`s at once (`whisk.docker.client.parallel-runs`).
    pub parallel_runs: usize,
    /// How long a shutdown waits for the activations in flight before it ends them with
    /// error activations (`whisk.invoker.shutdown.grace-period`). The Scala invoker has no
    /// such setting; the deployments bound the whole stop from outside (helm: 30 s for the
    /// actor system's termination and the pod's default termination grace; ansible: `docker
    /// stop` after 60 s), so the default leaves room within 30 s for the ending, the commit
    /// and the removal of the containers.
    pub shutdown_grace: Duration,
    /// netns and vm slots: the host ports (inclusive ranges) a function may open connections
    /// to, TCP and UDP, on any of the host's addresses (`whisk.invoker.network.allow-host-ports`,
    /// e.g. `[3233, "30000-30099"]`). Everything else a function starts towards the host,
    /// another slot or a private network is refused; empty by default.
    pub allow_host_ports: Vec<(u16, u16)>,
    /// Every property seen, for the settings not typed here.
    pub properties: Properties,
}

impl Settings {
    /// Reads the process environment (and `file`, if given).
    pub fn from_env(file: Option<&str>) -> Result<Self, SettingsError> {
        Self::from_vars(std::env::vars(), file)
    }

    /// Reads settings from `vars` (environment variables) and an optional config file.
    pub fn from_vars<I>(vars: I, file: Option<&str>) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let env: BTreeMap<String, String> = vars.into_iter().collect();
        let mut props = match file.or(env.get("INVOKER_CONFIG_FILE").map(String::as_str)) {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        props.extend(properties(env.clone()));
        let p = Props(&props);
        let var = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();

        let port = match var("PORT") {
            Some(v) => v
                .parse()
                .map_err(|_| invalid("PORT", &v, "not a port number"))?,
            None => 8080,
        };
        let kafka_hosts = var("KAFKA_HOSTS").ok_or(SettingsError::Missing("KAFKA_HOSTS"))?;
        let runtimes_manifest =
            var("RUNTIMES_MANIFEST").ok_or(SettingsError::Missing("RUNTIMES_MANIFEST"))?;
        let api_host = api_host(
            &var("WHISK_API_HOST_PROTO").unwrap_or_else(|| "https".into()),
            &var("WHISK_API_HOST_PORT").unwrap_or_else(|| "443".into()),
            &var("WHISK_API_HOST_NAME").unwrap_or_else(|| "localhost".into()),
        );

        let couch_protocol = p.str("whisk.couchdb.protocol", "http");
        let couch_host = p.str("whisk.couchdb.host", "127.0.0.1");
        let couch_port = p.str("whisk.couchdb.port", "5984");
        let couchdb = CouchDbConfig {
            url: format!("{couch_protocol}://{couch_host}:{couch_port}"),
            username: p.str("whisk.couchdb.username", "whisk_admin"),
            password: p.str("whisk.couchdb.password", "some_passw0rd").into(),
            request_timeout: crate::couchdb::DEFAULT_REQUEST_TIMEOUT,
        };
        let log_store = p.str(
            "whisk.spi.LogStoreProvider",
            "org.apache.openwhisk.core.containerpool.logging.DockerToActivationLogStoreProvider",
        );
        let mut settings = Self {
            port,
            kafka_hosts,
            kafka_common: p.kafka("whisk.kafka.common."),
            kafka_producer: p.kafka("whisk.kafka.producer."),
            kafka_consumer: p.kafka("whisk.kafka.consumer."),
            runtimes_manifest,
            api_host,
            topics_prefix: p.str("whisk.kafka.topics.prefix", ""),
            user_events_prefix: p.str("whisk.kafka.topics.user-event.prefix", ""),
            user_events: p.bool("whisk.user-events.enabled", false)?,
            user_memory_bytes: p.bytes("whisk.container-pool.user-memory", "1024 m")?,
            concurrent_peek_factor: p.float("whisk.container-pool.concurrent-peek-factor", 0.5)?,
            user_cpus: p.opt_float("whisk.container-pool.user-cpus")?,
            pause_grace: p.duration("whisk.container-proxy.timeouts.pause-grace", "10 seconds")?,
            idle_container: p.duration(
                "whisk.container-proxy.timeouts.idle-container",
                "10 minutes",
            )?,
            network: p.str("whisk.container-factory.container-args.network", "bridge"),
            dns_servers: p.list("whisk.container-factory.container-args.dns-servers"),
            dns_search: p.list("whisk.container-factory.container-args.dns-search"),
            dns_options: p.list("whisk.container-factory.container-args.dns-options"),
            extra_env: p.list("whisk.container-factory.container-args.extra-env-vars"),
            runtimes_registry: p.str("whisk.container-factory.runtimes-registry.url", ""),
            payload_max: p.bytes("whisk.activation.payload.max", "1 m")?,
            payload_truncation: p.bytes("whisk.activation.payload.truncation", "1 m")?,
            store_blocking: p.store_level("whisk.activation.store-blocking-result-level")?,
            store_non_blocking: p
                .store_level("whisk.activation.store-non-blocking-result-level")?,
            memory_mb: Bounds {
                min: p.bytes("whisk.memory.min", "128 m")? / MB,
                max: p.bytes("whisk.memory.max", "512 m")? / MB,
                std: p.bytes("whisk.memory.std", "256 m")? / MB,
            },
            time_ms: Bounds {
                min: millis(p.duration("whisk.time-limit.min", "100 ms")?),
                max: millis(p.duration("whisk.time-limit.max", "5 minutes")?),
                std: millis(p.duration("whisk.time-limit.std", "1 minute")?),
            },
            logs_mb: Bounds {
                min: p.bytes("whisk.log-limit.min", "0 m")? / MB,
                max: p.bytes("whisk.log-limit.max", "10 m")? / MB,
                std: p.bytes("whisk.log-limit.std", "10 m")? / MB,
            },
            concurrency: Bounds {
                min: p.int("whisk.concurrency-limit.min", 1)?,
                max: p.int("whisk.concurrency-limit.max", 1)?,
                std: p.int("whisk.concurrency-limit.std", 1)?,
            },
            db_whisks: p.str("whisk.couchdb.databases.WhiskEntity", "whisks"),
            db_activations: p.str("whisk.couchdb.databases.WhiskActivation", "activations"),
            db_subjects: p.str("whisk.couchdb.databases.WhiskAuth", "subjects"),
            invoker_username: p.str("whisk.invoker.username", "invoker.user"),
            invoker_password: p.str("whisk.invoker.password", "invoker.pass").into(),
            invoker_https: https_settings(&p)?,
            zookeeper_hosts: var("ZOOKEEPER_HOSTS").or_else(|| {
                p.get("zookeeper.hosts")
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            }),
            collect_logs: !log_store.ends_with("LogDriverLogStoreProvider"),
            network_mode: match p.str("whisk.invoker.network.mode", "bridge").as_str() {
                "bridge" => NetworkMode::Bridge,
                "pcpm" => NetworkMode::Pcpm,
                "netns" => NetworkMode::Netns,
                "vm" => NetworkMode::Vm,
                other => {
                    return Err(invalid(
                        "whisk.invoker.network.mode",
                        other,
                        "expected bridge, pcpm, netns or vm",
                    ));
                }
            },
            network_pool: NetworkPoolSizes {
                low_watermark: count(p.int("whisk.invoker.network.pool.low-watermark", 8)?),
                high_watermark: count(p.int("whisk.invoker.network.pool.high-watermark", 32)?),
                max: count(p.int("whisk.invoker.network.pool.max", 256)?),
                max_concurrent_creates: count(
                    p.int("whisk.invoker.network.pool.max-concurrent-creates", 8)?,
                ),
                fallback: p.bool("whisk.invoker.network.pool.fallback", true)?,
            },
            vm_pool: NetworkPoolSizes::default(),
            netns_subnet: subnet(&p, "whisk.invoker.network.netns.subnet", "10.230.0.0/16")?,
            vm_subnet: (std::net::Ipv4Addr::new(10, 232, 0, 0), 16),
            vm_subnet_auto: false,
            runc_dir: p
                .str("whisk.invoker.runc.dir", "/var/lib/wsk-invoker")
                .into(),
            runc_runtime: p.str("whisk.invoker.runc.runtime", "crun").into(),
            runc_presandboxes: count(p.int("whisk.invoker.runc.presandboxes", PRESANDBOXES)?),
            runc_image_store: match p.str("whisk.invoker.runc.image-store", "") {
                s if s.is_empty() => {
                    std::path::Path::new(&p.str("whisk.invoker.runc.dir", "/var/lib/wsk-invoker"))
                        .join("image-store")
                }
                s => s.into(),
            },
            vm: vm_settings(&p)?,
            parallel_runs: usize::try_from(p.int("whisk.docker.client.parallel-runs", 10)?)
                .unwrap_or(10)
                .max(1),
            shutdown_grace: p.duration("whisk.invoker.shutdown.grace-period", "20 seconds")?,
            allow_host_ports: port_ranges(&p, "whisk.invoker.network.allow-host-ports")?,
            couchdb,
            properties: Properties(props.clone()),
        };
        let key = "whisk.invoker.network.vm.subnet";
        (settings.vm_subnet, settings.vm_subnet_auto) = match p.get(key) {
            Some(v) if v.trim() == "auto" => ((std::net::Ipv4Addr::new(10, 200, 0, 0), 20), true),
            Some(_) => (subnet(&p, key, "")?, false),
            None if settings.network_mode == NetworkMode::Vm => {
                ((std::net::Ipv4Addr::new(10, 232, 0, 0), 16), false)
            }
            None => ((std::net::Ipv4Addr::new(10, 200, 0, 0), 20), true),
        };
        // The VM backend beside a container mode serves only the actions that ask for a VM:
        // a small pool unless told otherwise.
        let np = match settings.network_mode {
            NetworkMode::Vm => settings.network_pool,
            _ => NetworkPoolSizes {
                low_watermark: 1,
                high_watermark: 2,
                max_concurrent_creates: 2,
                ..settings.network_pool
            },
        };
        let int_or = |key: &str, default: usize| -> Result<usize, SettingsError> {
            Ok(count(
                p.int(key, u64::try_from(default).unwrap_or(u64::MAX))?,
            ))
        };
        settings.vm_pool = NetworkPoolSizes {
            low_watermark: int_or("whisk.invoker.vm.pool.low-watermark", np.low_watermark)?,
            high_watermark: int_or("whisk.invoker.vm.pool.high-watermark", np.high_watermark)?,
            max: int_or("whisk.invoker.vm.pool.max", np.max)?,
            max_concurrent_creates: int_or(
                "whisk.invoker.vm.pool.max-concurrent-creates",
                np.max_concurrent_creates,
            )?,
            fallback: false,
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let key = "whisk.container-pool.user-memory";
        if self.user_memory_bytes < self.memory_mb.min * MB {
            return Err(invalid(
                key,
                &self.user_memory_bytes.to_string(),
                "smaller than whisk.memory.min",
            ));
        }
        if self.concurrent_peek_factor.is_nan() || self.concurrent_peek_factor <= 0.0 {
            return Err(invalid(
                "whisk.container-pool.concurrent-peek-factor",
                &self.concurrent_peek_factor.to_string(),
                "must be above 0",
            ));
        }
        for (key, np) in [
            ("whisk.invoker.network.pool", self.network_pool),
            ("whisk.invoker.vm.pool", self.vm_pool),
        ] {
            if np.low_watermark > np.high_watermark || np.high_watermark > np.max || np.max == 0 {
                return Err(invalid(
                    key,
                    &format!("{np:?}"),
                    "needs low-watermark <= high-watermark <= max and max >= 1",
                ));
            }
        }
        for (k, b) in [
            ("whisk.memory", self.memory_mb),
            ("whisk.time-limit", self.time_ms),
            ("whisk.log-limit", self.logs_mb),
            ("whisk.concurrency-limit", self.concurrency),
        ] {
            if !(b.min <= b.std && b.std <= b.max) {
                return Err(invalid(k, &format!("{b:?}"), "needs min <= std <= max"));
            }
        }
        Ok(())
    }

    /// The user memory in MB.
    pub fn user_memory_mb(&self) -> u64 {
        self.user_memory_bytes / MB
    }

    /// Contract §2.4: the most activations held at once.
    pub fn max_peek(&self) -> usize {
        let containers = (self.user_memory_mb() / self.memory_mb.min.max(1)).max(1);
        let by_concurrency =
            (containers as f64 * self.concurrency.max as f64 * self.concurrent_peek_factor).floor();
        usize::try_from(containers.max(by_concurrency as u64)).unwrap_or(usize::MAX)
    }

    /// A topic name with the configured prefix.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topics_prefix)
    }
}

fn vm_settings(p: &Props<'_>) -> Result<VmSettings, SettingsError> {
    let key = "whisk.invoker.vm.accelerator";
    let accelerator = match p.str(key, "tcg").as_str() {
        "tcg" => VmAccelerator::Tcg,
        "kvm" => VmAccelerator::Kvm,
        "auto" => VmAccelerator::Auto,
        other => return Err(invalid(key, other, "expected tcg, kvm or auto")),
    };
    let guest_dir =
        std::path::PathBuf::from(p.str("whisk.invoker.vm.guest-dir", DEFAULT_VM_GUEST_DIR));
    let path = |key: &str, default: std::path::PathBuf| match p.get(key) {
        Some(v) if !v.is_empty() => std::path::PathBuf::from(v),
        _ => default,
    };
    let boot_timeout = p.duration("whisk.invoker.vm.boot-timeout", "60 seconds")?;
    if boot_timeout.is_zero() {
        return Err(invalid(
            "whisk.invoker.vm.boot-timeout",
            "0",
            "must be above 0",
        ));
    }
    Ok(VmSettings {
        accelerator,
        qemu: path("whisk.invoker.vm.qemu", "qemu-system-x86_64".into()),
        kernel: path("whisk.invoker.vm.kernel", guest_dir.join("vmlinux")),
        initrd: path("whisk.invoker.vm.initrd", guest_dir.join("initrd.img")),
        root_images: path("whisk.invoker.vm.root-images", guest_dir.clone()),
        unikernel: path(
            "whisk.invoker.vm.unikernel",
            guest_dir.join("wasm-unikernel"),
        ),
        allow_annotation: p.bool("whisk.invoker.vm.allow-annotation", true)?,
        boot_timeout,
        dir: path("whisk.invoker.vm.dir", "/run/wsk-vm".into()),
    })
}

fn https_settings(p: &Props<'_>) -> Result<Option<HttpsSettings>, SettingsError> {
    let key = "whisk.invoker.protocol";
    match p.str(key, "http").as_str() {
        "http" => return Ok(None),
        "https" => {}
        other => return Err(invalid(key, other, "expected http or https")),
    }
    let required = |key: &'static str| {
        p.get(key)
            .filter(|v| !v.is_empty())
            .ok_or(SettingsError::Missing(key))
    };
    let key = "whisk.invoker.https.keystore-flavor";
    let flavor = required(key)?;
    let keystore_flavor = match flavor.to_ascii_uppercase().as_str() {
        "PKCS12" => KeystoreFlavor::Pkcs12,
        "JKS" => KeystoreFlavor::Jks,
        "PEM" => KeystoreFlavor::Pem,
        _ => return Err(invalid(key, flavor, "expected PKCS12, JKS or PEM")),
    };
    let key = "whisk.invoker.https.client-auth";
    let auth = required(key)?;
    // Scala's `String.toBoolean`: true or false in any case.
    let client_auth = match auth.to_ascii_lowercase().as_str() {
        "true" => true,
        "false" => false,
        _ => return Err(invalid(key, auth, "expected true or false")),
    };
    Ok(Some(HttpsSettings {
        keystore_path: required("whisk.invoker.https.keystore-path")?.into(),
        keystore_password: required("whisk.invoker.https.keystore-password")?.into(),
        keystore_flavor,
        client_auth,
    }))
}

/// An IPv4 range `a.b.c.d/len`.
fn subnet(
    p: &Props<'_>,
    key: &str,
    default: &str,
) -> Result<(std::net::Ipv4Addr, u8), SettingsError> {
    let v = p.str(key, default);
    v.split_once('/')
        .and_then(|(a, l)| Some((a.parse().ok()?, l.parse().ok()?)))
        .ok_or_else(|| invalid(key, &v, "expected an IPv4 range like 10.230.0.0/16"))
}

/// A list of ports and inclusive port ranges (`3233`, `30000-30099`).
fn port_ranges(p: &Props<'_>, key: &str) -> Result<Vec<(u16, u16)>, SettingsError> {
    p.list(key)
        .iter()
        .map(|v| {
            let (lo, hi) = v.split_once('-').unwrap_or((v, v));
            match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                (Ok(lo), Ok(hi)) if lo >= 1 && lo <= hi => Ok((lo, hi)),
                _ => Err(invalid(
                    key,
                    v,
                    "expected ports or ranges like 3233 or 30000-30099",
                )),
            }
        })
        .collect()
}

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn invalid(key: &str, value: &str, why: &'static str) -> SettingsError {
    SettingsError::Invalid {
        key: key.to_owned(),
        value: value.to_owned(),
        why,
    }
}

/// `proto://name:port`, the default port of the protocol dropped (`https://host`).
fn api_host(proto: &str, port: &str, name: &str) -> String {
    let default = matches!((proto, port), ("https", "443") | ("http", "80"));
    if default || port.is_empty() {
        format!("{proto}://{name}")
    } else {
        format!("{proto}://{name}:{port}")
    }
}

fn read_file(path: &str) -> Result<BTreeMap<String, String>, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|e| SettingsError::FileRead {
        path: path.to_owned(),
        error: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .or_else(|| line.split_once(':'))
            .ok_or(SettingsError::FileSyntax {
                path: path.to_owned(),
                line: i + 1,
            })?;
        out.insert(k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
    }
    Ok(out)
}

struct Props<'a>(&'a BTreeMap<String, String>);

impl Props<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn str(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or(default).to_owned()
    }

    /// The Kafka client properties under `prefix` (see [`KafkaProperties`]).
    fn kafka(&self, prefix: &str) -> KafkaProperties {
        KafkaProperties(
            self.0
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k[prefix.len()..].replace('-', "."), v.clone()))
                .collect(),
        )
    }

    fn bytes(&self, key: &str, default: &str) -> Result<u64, SettingsError> {
        Ok(parse_bytes(key, self.get(key).unwrap_or(default))?)
    }

    fn duration(&self, key: &str, default: &str) -> Result<Duration, SettingsError> {
        Ok(parse_duration(key, self.get(key).unwrap_or(default))?)
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, SettingsError> {
        match self.get(key) {
            None => Ok(default),
            Some("true" | "yes" | "on") => Ok(true),
            Some("false" | "no" | "off") => Ok(false),
            Some(v) => Err(invalid(key, v, "not a boolean")),
        }
    }

    fn int(&self, key: &str, default: u64) -> Result<u64, SettingsError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| invalid(key, v, "not a whole number")),
        }
    }

    fn float(&self, key: &str, default: f64) -> Result<f64, SettingsError> {
        Ok(self.opt_float(key)?.unwrap_or(default))
    }

    fn opt_float(&self, key: &str) -> Result<Option<f64>, SettingsError> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| invalid(key, v, "not a number"))
            })
            .transpose()
    }

    /// A list: `key.0`, `key.1`, … (from `CONFIG_…_0`), or a HOCON/JSON array or a comma list
    /// under `key` itself.
    fn list(&self, key: &str) -> Vec<String> {
        let mut indexed: Vec<(usize, String)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                let i = k.strip_prefix(key)?.strip_prefix('.')?.parse().ok()?;
                Some((i, v.clone()))
            })
            .collect();
        if !indexed.is_empty() {
            indexed.sort();
            return indexed.into_iter().map(|(_, v)| v).collect();
        }
        match self.get(key) {
            None => Vec::new(),
            Some(v) => v
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|s| s.trim().trim_matches('"').to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }

    fn store_level(&self, key: &str) -> Result<StoreLevel, SettingsError> {
        match self.get(key).unwrap_or("STORE_ALWAYS") {
            "STORE_ALWAYS" => Ok(StoreLevel::Always),
            "STORE_FAILURES" => Ok(StoreLevel::Failures),
            "STORE_FAILURES_NOT_APPLICATION_ERRORS" => Ok(StoreLevel::FailuresNotApplicationErrors),
            v => Err(invalid(
                key,
                v,
                "expected STORE_ALWAYS, STORE_FAILURES or STORE_FAILURES_NOT_APPLICATION_ERRORS",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v = vec![
            ("KAFKA_HOSTS".to_owned(), "127.0.0.1:9092".to_owned()),
            ("RUNTIMES_MANIFEST".to_owned(), "{}".to_owned()),
        ];
        v.extend(
            extra
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned())),
        );
        v
    }

    #[test]
    fn defaults_are_openwhisks() {
        let s = Settings::from_vars(vars(&[]), None).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.user_memory_bytes, 1024 * MB);
        assert_eq!(s.max_peek(), 8);
        assert_eq!(s.pause_grace, Duration::from_secs(10));
        assert_eq!(s.shutdown_grace, Duration::from_secs(20));
        assert_eq!(
            s.memory_mb,
            Bounds {
                min: 128,
                max: 512,
                std: 256
            }
        );
        assert_eq!(
            s.time_ms,
            Bounds {
                min: 100,
                max: 300_000,
                std: 60_000
            }
        );
        assert_eq!(s.api_host, "https://localhost");
        assert!(s.collect_logs);
        assert_eq!(s.store_blocking, StoreLevel::Always);
        // Not OpenWhisk's: netns mode's OCI runtime, chosen by `bench coldstart`.
        assert_eq!(s.runc_runtime, std::path::Path::new("crun"));
        assert_eq!(s.runc_presandboxes, 0);
    }

    #[test]
    fn config_env_vars_and_opts_map_as_the_scala_image() {
        let s = Settings::from_vars(
            vars(&[
                ("CONFIG_whisk_containerPool_userMemory", "2048m"),
                ("CONFIG_whisk_containerFactory_containerArgs_dnsServers_0", "10.0.0.2"),
                ("CONFIG_whisk_containerFactory_containerArgs_dnsServers_1", "10.0.0.3"),
                ("CONFIG_whisk_couchdb_databases_WhiskActivation", "local_activations"),
                ("CONFIG_whisk_kafka_topics_prefix", "$PREFIX"),
                ("PREFIX", "dev-"),
                ("WHISK_API_HOST_PROTO", "http"),
                ("WHISK_API_HOST_PORT", "3233"),
                ("WHISK_API_HOST_NAME", "172.17.0.1"),
                (
                    "INVOKER_OPTS",
                    "-Xmx1g -Dwhisk.spi.LogStoreProvider=org.apache.openwhisk.core.containerpool.logging.LogDriverLogStoreProvider",
                ),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(s.user_memory_mb(), 2048);
        assert_eq!(s.max_peek(), 16);
        assert_eq!(s.dns_servers, ["10.0.0.2", "10.0.0.3"]);
        assert_eq!(s.db_activations, "local_activations");
        assert_eq!(s.topic("invoker0"), "dev-invoker0");
        assert_eq!(s.api_host, "http://172.17.0.1:3233");
        assert!(!s.collect_logs);
    }

    #[test]
    fn kafka_client_properties_are_read_as_openwhisk_reads_them() {
        let s = Settings::from_vars(
            vars(&[
                ("CONFIG_whisk_kafka_producer_lingerMs", "2"),
                ("CONFIG_whisk_kafka_consumer_fetchMinBytes", "1000"),
                ("CONFIG_whisk_kafka_common_securityProtocol", "SSL"),
                ("CONFIG_whisk_kafka_common_sslKeyPassword", "hunter2"),
                ("CONFIG_whisk_kafka_topics_prefix", "dev-"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            s.kafka_producer.0,
            [("linger.ms".to_owned(), "2".to_owned())]
        );
        assert_eq!(
            s.kafka_consumer.0,
            [("fetch.min.bytes".to_owned(), "1000".to_owned())]
        );
        assert_eq!(
            s.kafka_common.0,
            [
                ("security.protocol".to_owned(), "SSL".to_owned()),
                ("ssl.key.password".to_owned(), "hunter2".to_owned())
            ]
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("\"linger.ms\": \"2\""), "{shown}");
        assert!(
            Settings::from_vars(vars(&[]), None)
                .unwrap()
                .kafka_producer
                .0
                .is_empty()
        );
    }

    #[test]
    fn debug_never_shows_a_password() {
        let s = Settings::from_vars(
            vars(&[
                ("CONFIG_whisk_couchdb_password", "couch-secret-1"),
                ("CONFIG_whisk_invoker_password", "invoker-secret-2"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(s.couchdb.password.expose(), "couch-secret-1");
        assert_eq!(s.invoker_password.expose(), "invoker-secret-2");
        let shown = format!("{s:?} {:?}", s.couchdb);
        assert!(!shown.contains("secret-"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn the_host_ports_functions_may_reach_are_a_list_of_ports_and_ranges() {
        let s = Settings::from_vars(vars(&[]), None).unwrap();
        assert!(s.allow_host_ports.is_empty());
        let s = Settings::from_vars(
            vars(&[(
                "CONFIG_whisk_invoker_network_allowHostPorts",
                "[3233, \"30000-30099\"]",
            )]),
            None,
        )
        .unwrap();
        assert_eq!(s.allow_host_ports, [(3233, 3233), (30000, 30099)]);
        let s = Settings::from_vars(
            vars(&[("CONFIG_whisk_invoker_network_allowHostPorts_0", "9092")]),
            None,
        )
        .unwrap();
        assert_eq!(s.allow_host_ports, [(9092, 9092)]);
        for bad in ["0", "70000", "20-10", "http"] {
            let e = Settings::from_vars(
                vars(&[("CONFIG_whisk_invoker_network_allowHostPorts", bad)]),
                None,
            )
            .unwrap_err();
            assert!(
                e.to_string()
                    .contains("whisk.invoker.network.allow-host-ports"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_shutdown_grace_period_is_a_setting() {
        let s = Settings::from_vars(
            vars(&[("CONFIG_whisk_invoker_shutdown_gracePeriod", "3 seconds")]),
            None,
        )
        .unwrap();
        assert_eq!(s.shutdown_grace, Duration::from_secs(3));
        let e = Settings::from_vars(
            vars(&[("CONFIG_whisk_invoker_shutdown_gracePeriod", "soon")]),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("whisk.invoker.shutdown.grace-period"),
            "{e}"
        );
    }

    #[test]
    fn an_invalid_setting_is_named() {
        let err = |extra: &[(&str, &str)]| {
            Settings::from_vars(vars(extra), None)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(&[("CONFIG_whisk_containerPool_userMemory", "lots")])
                .contains("whisk.container-pool.user-memory")
        );
        assert!(
            err(&[("CONFIG_whisk_userEvents_enabled", "maybe")])
                .contains("whisk.user-events.enabled")
        );
        assert!(err(&[("PORT", "http")]).contains("PORT"));
        assert!(
            err(&[("CONFIG_whisk_invoker_network_mode", "tcp")])
                .contains("whisk.invoker.network.mode")
        );
        assert!(
            err(&[("CONFIG_whisk_invoker_network_pool_lowWatermark", "100")])
                .contains("whisk.invoker.network.pool")
        );
        assert!(
            err(&[("CONFIG_whisk_activation_storeBlockingResultLevel", "NEVER")])
                .contains("store-blocking-result-level")
        );
        let missing = Settings::from_vars(Vec::<(String, String)>::new(), None).unwrap_err();
        assert_eq!(missing, SettingsError::Missing("KAFKA_HOSTS"));
    }

    #[test]
    fn a_config_file_is_an_alternative_and_the_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invoker.conf");
        std::fs::write(
            &path,
            "# invoker settings\nwhisk.container-pool.user-memory = 512 m\nwhisk.invoker.username = \"ops\"\n",
        )
        .unwrap();
        let s = Settings::from_vars(vars(&[]), path.to_str()).unwrap();
        assert_eq!(
            (s.user_memory_mb(), s.invoker_username.as_str()),
            (512, "ops")
        );
        let s = Settings::from_vars(
            vars(&[("CONFIG_whisk_containerPool_userMemory", "768 m")]),
            path.to_str(),
        )
        .unwrap();
        assert_eq!(s.user_memory_mb(), 768);
        std::fs::write(&path, "no equals sign here\n").unwrap();
        let e = Settings::from_vars(vars(&[]), path.to_str()).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    /// The VM backend's paths default to where `runtimes/vm/build-guest.sh` writes the guest,
    /// follow `guest-dir`, and each can be set on its own.
    #[test]
    fn vm_settings_default_to_the_guest_build() {
        let s = Settings::from_vars(vars(&[]), None).unwrap().vm;
        assert_eq!(s.accelerator, VmAccelerator::Tcg);
        assert_eq!(s.qemu, std::path::Path::new("qemu-system-x86_64"));
        assert_eq!(
            s.kernel,
            std::path::Path::new("/opt/whisk-tools/vm/vmlinux")
        );
        assert_eq!(
            s.initrd,
            std::path::Path::new("/opt/whisk-tools/vm/initrd.img")
        );
        assert_eq!(s.root_images, std::path::Path::new("/opt/whisk-tools/vm"));
        assert_eq!(
            s.unikernel,
            std::path::Path::new("/opt/whisk-tools/vm/wasm-unikernel")
        );
        assert!(s.allow_annotation);
        assert_eq!(s.boot_timeout, Duration::from_secs(60));
        assert_eq!(s.dir, std::path::Path::new("/run/wsk-vm"));
        let s = Settings::from_vars(
            vars(&[
                ("CONFIG_whisk_invoker_vm_accelerator", "kvm"),
                ("CONFIG_whisk_invoker_vm_guestDir", "/g"),
                ("CONFIG_whisk_invoker_vm_initrd", "/i/initrd"),
                ("CONFIG_whisk_invoker_vm_bootTimeout", "5 seconds"),
                ("CONFIG_whisk_invoker_vm_allowAnnotation", "false"),
            ]),
            None,
        )
        .unwrap()
        .vm;
        assert_eq!(s.accelerator, VmAccelerator::Kvm);
        assert_eq!(s.kernel, std::path::Path::new("/g/vmlinux"));
        assert_eq!(s.initrd, std::path::Path::new("/i/initrd"));
        assert_eq!(s.root_images, std::path::Path::new("/g"));
        assert_eq!(s.unikernel, std::path::Path::new("/g/wasm-unikernel"));
        assert!(!s.allow_annotation);
        assert_eq!(s.boot_timeout, Duration::from_secs(5));
        let s = Settings::from_vars(
            vars(&[("CONFIG_whisk_invoker_vm_accelerator", "auto")]),
            None,
        )
        .unwrap()
        .vm;
        assert_eq!(s.accelerator, VmAccelerator::Auto);
        let e = Settings::from_vars(
            vars(&[("CONFIG_whisk_invoker_vm_accelerator", "hvf")]),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("whisk.invoker.vm.accelerator"),
            "{e}"
        );
        let e = Settings::from_vars(
            vars(&[("CONFIG_whisk_invoker_vm_bootTimeout", "0 s")]),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("whisk.invoker.vm.boot-timeout"),
            "{e}"
        );
    }

    /// https and its keystore as ansible passes them (`CONFIG_whisk_invoker_https_*`); every key
    /// is required once the protocol is https, as in the Scala invoker.
    #[test]
    fn https_settings_as_ansible_passes_them() {
        let s = Settings::from_vars(vars(&[]), None).unwrap();
        assert_eq!(s.invoker_https, None);
        let ansible = [
            ("CONFIG_whisk_invoker_protocol", "https"),
            (
                "CONFIG_whisk_invoker_https_keystorePath",
                "/conf/invoker-openwhisk-keystore.p12",
            ),
            ("CONFIG_whisk_invoker_https_keystorePassword", "openwhisk"),
            ("CONFIG_whisk_invoker_https_keystoreFlavor", "PKCS12"),
            ("CONFIG_whisk_invoker_https_clientAuth", "true"),
        ];
        let s = Settings::from_vars(vars(&ansible), None).unwrap();
        let https = s.invoker_https.unwrap();
        assert_eq!(
            https,
            HttpsSettings {
                keystore_path: "/conf/invoker-openwhisk-keystore.p12".into(),
                keystore_password: "openwhisk".into(),
                keystore_flavor: KeystoreFlavor::Pkcs12,
                client_auth: true,
            }
        );
        assert!(!format!("{https:?}").contains("openwhisk\""));
        let mut no_auth = ansible;
        no_auth[4].1 = "FALSE";
        no_auth[3].1 = "pem";
        let https = Settings::from_vars(vars(&no_auth), None)
            .unwrap()
            .invoker_https
            .unwrap();
        assert!(!https.client_auth);
        assert_eq!(https.keystore_flavor, KeystoreFlavor::Pem);
        for (i, key) in [
            (1, "whisk.invoker.https.keystore-path"),
            (2, "whisk.invoker.https.keystore-password"),
            (3, "whisk.invoker.https.keystore-flavor"),
            (4, "whisk.invoker.https.client-auth"),
        ] {
            let mut missing = ansible.to_vec();
            missing.remove(i);
            let e = Settings::from_vars(vars(&missing), None).unwrap_err();
            assert_eq!(e, SettingsError::Missing(key));
        }
        let mut bad = ansible;
        bad[4].1 = "yes please";
        let e = Settings::from_vars(vars(&bad), None).unwrap_err();
        assert!(e.to_string().contains("client-auth"), "{e}");
        let e = Settings::from_vars(vars(&[("CONFIG_whisk_invoker_protocol", "h2")]), None)
            .unwrap_err();
        assert!(e.to_string().contains("whisk.invoker.protocol"), "{e}");
    }

    /// `ZOOKEEPER_HOSTS` as every deployment passes it; the property as an alternative.
    #[test]
    fn zookeeper_hosts() {
        let s = Settings::from_vars(vars(&[]), None).unwrap();
        assert_eq!(s.zookeeper_hosts, None);
        let s =
            Settings::from_vars(vars(&[("ZOOKEEPER_HOSTS", "zk-0:2181,zk-1:2181")]), None).unwrap();
        assert_eq!(s.zookeeper_hosts.as_deref(), Some("zk-0:2181,zk-1:2181"));
        let s = Settings::from_vars(vars(&[("CONFIG_zookeeper_hosts", "zk:2181")]), None).unwrap();
        assert_eq!(s.zookeeper_hosts.as_deref(), Some("zk:2181"));
        let s = Settings::from_vars(vars(&[("ZOOKEEPER_HOSTS", "")]), None).unwrap();
        assert_eq!(s.zookeeper_hosts, None);
    }

    /// `vm` mode is a network mode; its slots take a range of their own, apart from netns
    /// mode's default and the benchmark's 10.231.0.0/16.
    #[test]
    fn vm_mode_and_its_subnet() {
        let s = Settings::from_vars(vars(&[]), None).unwrap();
        assert_eq!(s.netns_subnet, (std::net::Ipv4Addr::new(10, 230, 0, 0), 16));
        // Beside a container mode: a free /20, chosen at start.
        assert!(s.vm_subnet_auto);
        assert_eq!(s.vm_subnet.1, 20);
        let s = Settings::from_vars(vars(&[("CONFIG_whisk_invoker_network_mode", "vm")]), None)
            .unwrap();
        assert!(!s.vm_subnet_auto);
        assert_eq!(s.vm_subnet, (std::net::Ipv4Addr::new(10, 232, 0, 0), 16));
        let s = Settings::from_vars(
            vars(&[
                ("CONFIG_whisk_invoker_network_mode", "vm"),
                ("CONFIG_whisk_invoker_network_vm_subnet", "auto"),
            ]),
            None,
        )
        .unwrap();
        assert!(s.vm_subnet_auto);
        let s = Settings::from_vars(
            vars(&[
                ("CONFIG_whisk_invoker_network_mode", "vm"),
                ("CONFIG_whisk_invoker_network_vm_subnet", "10.240.16.0/20"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(s.network_mode, NetworkMode::Vm);
        assert_eq!(s.vm_subnet, (std::net::Ipv4Addr::new(10, 240, 16, 0), 20));
        assert!(!s.vm_subnet_auto);
        let e = Settings::from_vars(
            vars(&[("CONFIG_whisk_invoker_network_vm_subnet", "10.240/x")]),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("whisk.invoker.network.vm.subnet"),
            "{e}"
        );
    }
}

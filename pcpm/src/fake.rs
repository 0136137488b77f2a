//! An in-memory [`Engine`] for the pool's unit tests: containers are records, a namespace is
//! a few fields the test changes to play a function container that left something behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use netpool::SysError;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::NetworkKey;
use crate::engine::{
    Engine, EngineError, Inspected, LABEL_MANAGER, Listed, Namespace, NetState, Process,
};

/// What a pause container's namespace shows the release checks.
#[derive(Clone, Debug)]
pub(crate) struct FakeNs {
    pub net: String,
    pub processes: Vec<u32>,
    pub sockets: Vec<String>,
}

#[derive(Debug)]
struct FakeContainer {
    labels: HashMap<String, String>,
    image: String,
    running: bool,
    pid: u32,
    /// Whether the pause process `pid` still runs: a watch of it reads this.
    alive: Arc<AtomicBool>,
    ns: Arc<Mutex<FakeNs>>,
}

#[derive(Debug, Default)]
struct FakeState {
    seq: u32,
    containers: BTreeMap<String, FakeContainer>,
    create_calls: Vec<Instant>,
    fail_creates: bool,
    fail_removes: HashSet<String>,
    removed: Vec<String>,
    shared_files: Vec<PathBuf>,
}

/// More creation calls than any test makes on purpose.
const MAX_CREATE_CALLS: usize = 1000;

#[derive(Debug)]
pub(crate) struct FakeEngine {
    state: Mutex<FakeState>,
    /// Creations wait here for a permit: tests hold them back to keep a pool empty.
    gate: Semaphore,
}

fn docker_error(action: &'static str, target: &str) -> EngineError {
    EngineError::Docker {
        action,
        target: target.to_owned(),
        source: bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "fake engine refuses".into(),
        },
    }
}

impl FakeState {
    /// The running container whose process is `pid`.
    fn running(&self, pid: u32) -> Result<&FakeContainer, SysError> {
        self.containers
            .values()
            .find(|c| c.running && c.pid == pid)
            .ok_or_else(|| SysError::NotFound(format!("process {pid}")))
    }
}

impl FakeEngine {
    /// Creations go through at once.
    pub fn new() -> Arc<Self> {
        Self::with_permits(Semaphore::MAX_PERMITS)
    }

    /// Creations wait until [`FakeEngine::let_through`].
    pub fn gated() -> Arc<Self> {
        Self::with_permits(0)
    }

    fn with_permits(permits: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(FakeState::default()),
            gate: Semaphore::new(permits),
        })
    }

    /// Lets `n` more (waiting or future) creations finish.
    pub fn let_through(&self, n: usize) {
        self.gate.add_permits(n);
    }

    pub fn fail_creates(&self, fail: bool) {
        self.state.lock().fail_creates = fail;
    }

    pub fn fail_remove(&self, id: &str) {
        self.state.lock().fail_removes.insert(id.to_owned());
    }

    /// Files every container reports as shared with joining containers.
    pub fn share_files(&self, files: Vec<PathBuf>) {
        self.state.lock().shared_files = files;
    }

    /// When each creation was asked for, failed or not.
    pub fn create_times(&self) -> Vec<Instant> {
        self.state.lock().create_calls.clone()
    }

    /// The containers that exist.
    pub fn live(&self) -> Vec<String> {
        self.state.lock().containers.keys().cloned().collect()
    }

    /// The containers removed, in order.
    pub fn removed(&self) -> Vec<String> {
        self.state.lock().removed.clone()
    }

    /// Changes what the namespace of container `id` shows.
    pub fn ns(&self, id: &str, f: impl FnOnce(&mut FakeNs)) {
        let s = self.state.lock();
        f(&mut s.containers[id].ns.lock());
    }

    /// Stops container `id` (its pause process exits); `restart` gives it a new pause process.
    pub fn stop(&self, id: &str, restart: bool) {
        let mut s = self.state.lock();
        let c = s.containers.get_mut(id).expect("a known container");
        c.alive.store(false, Ordering::Relaxed);
        if restart {
            c.pid += 50_000;
            c.alive = Arc::new(AtomicBool::new(true));
            c.ns.lock().processes = vec![c.pid];
        } else {
            c.running = false;
        }
    }

    /// Puts a container there as an earlier run would have left it.
    pub fn leftover(&self, labels: HashMap<String, String>, image: &str, running: bool) -> String {
        let mut s = self.state.lock();
        let (id, c) = Self::record(&mut s, labels, image);
        s.containers
            .insert(id.clone(), FakeContainer { running, ..c });
        id
    }

    fn record(
        s: &mut FakeState,
        labels: HashMap<String, String>,
        image: &str,
    ) -> (String, FakeContainer) {
        s.seq += 1;
        let pid = 1000 + s.seq;
        let ns = FakeNs {
            net: "new".into(),
            processes: vec![pid],
            sockets: Vec::new(),
        };
        let c = FakeContainer {
            labels,
            image: image.to_owned(),
            running: true,
            pid,
            alive: Arc::new(AtomicBool::new(true)),
            ns: Arc::new(Mutex::new(ns)),
        };
        (format!("c{:04}", s.seq), c)
    }
}

impl Engine for FakeEngine {
    fn create_pause<'a>(
        &'a self,
        name: &'a str,
        image: &'a str,
        _key: &'a NetworkKey,
        labels: HashMap<String, String>,
    ) -> BoxFuture<'a, Result<String, EngineError>> {
        Box::pin(async move {
            let calls = {
                let mut s = self.state.lock();
                s.create_calls.push(Instant::now());
                s.create_calls.len()
            };
            if calls > MAX_CREATE_CALLS {
                // A runaway retry loop would keep the paused clock from ever moving and hang
                // the test; parked here, it lets the test go on and see the count.
                return futures::future::pending().await;
            }
            self.gate
                .acquire()
                .await
                .expect("the gate is never closed")
                .forget();
            let mut s = self.state.lock();
            if s.fail_creates {
                return Err(docker_error("create pause container", name));
            }
            let (id, c) = Self::record(&mut s, labels, image);
            s.containers.insert(id.clone(), c);
            Ok(id)
        })
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
        _network: &'a str,
    ) -> BoxFuture<'a, Result<Inspected, EngineError>> {
        Box::pin(async move {
            let s = self.state.lock();
            let c = s.containers.get(id).ok_or_else(|| EngineError::NotFound {
                action: "inspect",
                target: id.to_owned(),
            })?;
            Ok(Inspected {
                running: c.running,
                pid: if c.running { c.pid } else { 0 },
                ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, (c.pid % 250) as u8))),
                shared_files: s.shared_files.clone(),
            })
        })
    }

    fn list<'a>(&'a self, manager: &'a str) -> BoxFuture<'a, Result<Vec<Listed>, EngineError>> {
        Box::pin(async move {
            let s = self.state.lock();
            Ok(s.containers
                .iter()
                .filter(|(_, c)| c.labels.get(LABEL_MANAGER).map(String::as_str) == Some(manager))
                .map(|(id, c)| Listed {
                    id: id.clone(),
                    labels: c.labels.clone(),
                    running: c.running,
                    image: c.image.clone(),
                })
                .collect())
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let mut s = self.state.lock();
            if s.fail_removes.contains(id) {
                return Err(docker_error("remove", id));
            }
            // As with Docker's force removal, a container already gone is fine.
            if s.containers.remove(id).is_some() {
                s.removed.push(id.to_owned());
            }
            Ok(())
        })
    }

    fn open_namespace(&self, pid: u32) -> BoxFuture<'_, Result<Box<dyn Namespace>, SysError>> {
        Box::pin(async move {
            let s = self.state.lock();
            let c = s.running(pid)?;
            Ok(Box::new(FakeNamespace(c.ns.clone())) as Box<dyn Namespace>)
        })
    }

    fn watch_process(&self, pid: u32) -> Result<Box<dyn Process>, SysError> {
        let s = self.state.lock();
        let c = s.running(pid)?;
        Ok(Box::new(FakeProcess(c.alive.clone())))
    }
}

#[derive(Debug)]
struct FakeProcess(Arc<AtomicBool>);

impl Process for FakeProcess {
    fn exited(&self) -> bool {
        !self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct FakeNamespace(Arc<Mutex<FakeNs>>);

impl Namespace for FakeNamespace {
    fn flush_learned_neighbours(&self) -> BoxFuture<'_, Result<(), SysError>> {
        Box::pin(async { Ok(()) })
    }

    fn state(&self) -> BoxFuture<'_, Result<NetState, SysError>> {
        let net = self.0.lock().net.clone();
        Box::pin(async move { Ok(NetState::Fake(net)) })
    }

    fn live_sockets(&self) -> BoxFuture<'_, Result<Vec<String>, SysError>> {
        let sockets = self.0.lock().sockets.clone();
        Box::pin(async move { Ok(sockets) })
    }

    fn processes(&self) -> BoxFuture<'_, Result<Vec<u32>, SysError>> {
        let processes = self.0.lock().processes.clone();
        Box::pin(async move { Ok(processes) })
    }
}

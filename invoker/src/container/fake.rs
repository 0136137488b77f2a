//! A fake backend for the pool's unit tests: no dockerd, runc or root.
//!
//! [`FakeFactory`] records every backend call in order, keeps the memory of the containers that
//! exist (from the moment their create starts to the moment their destroy returns, the window
//! in which a real backend holds the memory) and its high-water mark, and can be told to fail
//! creates, pauses or resumes, or to hold creates until the test releases them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};

use super::{BackendError, Container, ContainerFactory, ContainerSpec, CreateError, Sandbox};

/// One backend call, in the order the pool made them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A create started (the container's name; its id is the same).
    Create(String),
    Pause(String),
    Resume(String),
    Destroy(String),
    RemoveAll(String),
}

/// What the fake has seen and holds.
#[derive(Debug, Default)]
pub struct FakeState {
    pub calls: Vec<Call>,
    /// Containers that exist or are being created: id → memory in MB.
    pub live: BTreeMap<String, u64>,
    /// What sandbox each create asked for, by name.
    pub sandboxes: BTreeMap<String, Sandbox>,
    /// The most memory `live` ever held at once, in MB.
    pub peak_mb: u64,
    /// Creates waiting at the gate.
    pub held: usize,
    /// This many of the next creates fail.
    pub fail_creates: usize,
    pub fail_pause: bool,
    pub fail_resume: bool,
    /// This many of the next destroys fail and leave their container as it was.
    pub fail_destroys: usize,
    /// How long a create takes (on the tokio clock, which tests pause).
    pub create_delay: std::time::Duration,
    /// How long a destroy takes; the container holds its memory until the destroy returns.
    pub destroy_delay: std::time::Duration,
}

impl FakeState {
    pub fn live_mb(&self) -> u64 {
        self.live.values().sum()
    }

    pub fn count(&self, f: impl Fn(&Call) -> bool) -> usize {
        self.calls.iter().filter(|c| f(c)).count()
    }

    pub fn creates(&self) -> usize {
        self.count(|c| matches!(c, Call::Create(_)))
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<FakeState>,
    changed: Notify,
    /// Present while creates are held: each create takes a permit first.
    gate: Mutex<Option<Arc<Semaphore>>>,
}

/// The fake [`ContainerFactory`]; cheap to clone, clones share everything.
#[derive(Debug, Clone)]
pub struct FakeFactory {
    shared: Arc<Shared>,
}

impl Default for FakeFactory {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                changed: Notify::new(),
                gate: Mutex::new(None),
            }),
        }
    }
}

impl FakeFactory {
    /// Reads the state.
    pub fn with<T>(&self, f: impl FnOnce(&FakeState) -> T) -> T {
        f(&self.shared.state.lock())
    }

    /// Changes the state (failure switches).
    pub fn set(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.shared.state.lock());
        self.shared.changed.notify_waiters();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.clone())
    }

    /// Waits until `f` holds; it is checked after every backend call. Panics after 5 s on the
    /// tokio clock (no time at all in real time when the test's clock is paused; less than the
    /// pool's timers in the tests, so they cannot be what makes `f` hold), so a test whose
    /// condition never comes fails instead of hanging.
    pub async fn until(&self, f: impl Fn(&FakeState) -> bool) {
        let wait = async {
            loop {
                let notified = self.shared.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.with(&f) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            panic!(
                "the fake backend never got there: {:?}",
                self.with(|s| format!("{s:?}"))
            );
        }
    }

    /// From now on, creates wait at a gate until [`Self::release`] lets them through.
    pub fn hold_creates(&self) {
        *self.shared.gate.lock() = Some(Arc::new(Semaphore::new(0)));
    }

    /// Lets `n` held (or future held) creates through.
    pub fn release(&self, n: usize) {
        if let Some(gate) = self.shared.gate.lock().as_ref() {
            gate.add_permits(n);
        }
    }

    /// Lets every held create through and holds no more.
    pub fn open_gate(&self) {
        if let Some(gate) = self.shared.gate.lock().take() {
            gate.add_permits(Semaphore::MAX_PERMITS - gate.available_permits());
        }
    }

    fn record(&self, call: Call) {
        self.shared.state.lock().calls.push(call);
        self.shared.changed.notify_waiters();
    }
}

#[async_trait::async_trait]
impl ContainerFactory for FakeFactory {
    async fn create(&self, spec: &ContainerSpec) -> Result<Box<dyn Container>, CreateError> {
        let id = spec.name.clone();
        {
            let mut s = self.shared.state.lock();
            s.calls.push(Call::Create(id.clone()));
            s.sandboxes.insert(id.clone(), spec.sandbox);
            s.live.insert(id.clone(), spec.memory_mb);
            s.peak_mb = s.peak_mb.max(s.live_mb());
        }
        self.shared.changed.notify_waiters();
        // If the pool drops this future, the container is forgotten as a real backend undoes a
        // half-made one.
        struct Undo<'a> {
            factory: &'a FakeFactory,
            id: Option<String>,
            held: bool,
        }
        impl Drop for Undo<'_> {
            fn drop(&mut self) {
                let mut s = self.factory.shared.state.lock();
                if self.held {
                    s.held -= 1;
                }
                if let Some(id) = self.id.take() {
                    s.live.remove(&id);
                }
                drop(s);
                self.factory.shared.changed.notify_waiters();
            }
        }
        let mut undo = Undo {
            factory: self,
            id: Some(id.clone()),
            held: false,
        };
        let gate = self.shared.gate.lock().clone();
        if let Some(gate) = gate {
            self.set(|s| s.held += 1);
            undo.held = true;
            let permit = gate.acquire().await.expect("the gate is never closed");
            permit.forget();
            self.set(|s| s.held -= 1);
            undo.held = false;
        }
        let delay = self.with(|s| s.create_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let fail = {
            let mut s = self.shared.state.lock();
            let fail = s.fail_creates > 0;
            s.fail_creates = s.fail_creates.saturating_sub(1);
            fail
        };
        if fail {
            drop(undo);
            return Err(CreateError::provision(format!(
                "fake create of {id} failed"
            )));
        }
        undo.id = None;
        Ok(Box::new(FakeContainer {
            id,
            factory: self.clone(),
        }))
    }

    async fn remove_all(&self, prefix: &str) -> Result<usize, BackendError> {
        let mut s = self.shared.state.lock();
        s.calls.push(Call::RemoveAll(prefix.to_owned()));
        let before = s.live.len();
        s.live.retain(|id, _| !id.starts_with(prefix));
        let removed = before - s.live.len();
        drop(s);
        self.shared.changed.notify_waiters();
        Ok(removed)
    }
}

/// A container of the fake backend.
#[derive(Debug)]
pub struct FakeContainer {
    id: String,
    factory: FakeFactory,
}

impl FakeContainer {
    fn fails(&self, action: &'static str) -> BackendError {
        BackendError {
            action,
            id: self.id.clone(),
            source: "fake failure".into(),
        }
    }
}

#[async_trait::async_trait]
impl Container for FakeContainer {
    fn id(&self) -> &str {
        &self.id
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))
    }

    fn logs(&self) -> Option<&super::logs::Logs> {
        None
    }

    async fn pause(&self) -> Result<(), BackendError> {
        self.factory.record(Call::Pause(self.id.clone()));
        match self.factory.with(|s| s.fail_pause) {
            true => Err(self.fails("pause")),
            false => Ok(()),
        }
    }

    async fn resume(&self) -> Result<(), BackendError> {
        self.factory.record(Call::Resume(self.id.clone()));
        match self.factory.with(|s| s.fail_resume) {
            true => Err(self.fails("resume")),
            false => Ok(()),
        }
    }

    async fn oom_killed(&self) -> bool {
        false
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        self.factory.record(Call::Destroy(self.id.clone()));
        let delay = self.factory.with(|s| s.destroy_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut s = self.factory.shared.state.lock();
        if s.fail_destroys > 0 {
            s.fail_destroys -= 1;
            return Err(self.fails("destroy"));
        }
        let existed = s.live.remove(&self.id).is_some();
        drop(s);
        self.factory.shared.changed.notify_waiters();
        match existed {
            true => Ok(()),
            false => Err(self.fails("destroy")),
        }
    }
}

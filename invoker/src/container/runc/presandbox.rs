//! Sandboxes created before a cold start needs them (`whisk.invoker.runc.presandboxes`).
//!
//! The netns mode already leases its network namespace from a pool; this goes on with the rest
//! of an empty sandbox. For every *shape* a cold start has asked for (the image, the memory and
//! CPU limits, the environment: everything of a [`ContainerSpec`] but its name) a shelf keeps
//! up to `per_shape` containers that the OCI runtime has *created* and not started: a leased
//! namespace in the spec, the bundle with its overlay mounted, the cgroup with its limits, the
//! mount, PID, IPC and UTS namespaces, and the container's process waiting (on the runtime's
//! exec FIFO) before it runs the image's entry point. A cold start that finds one on the shelf
//! of its shape only runs `start`: the action's runtime is then a fresh process, exactly as
//! after `run`. A sandbox is started once and destroyed like any container, so nothing is
//! shared between actions or tenants; its spec is the one `run` would have had, limits
//! included, so isolation is the same.
//!
//! Refills run one sandbox at a time per shape, and only while no cold start is being made
//! (or after waiting [`QUIET_WAIT`] for that): they take the same CPUs. They lease only a
//! namespace the netpool has idle, so they never make a cold start wait for one; the pool's
//! `max` must leave room for them. A created sandbox's memory is its waiting process and the
//! kernel's objects (`bench memory`'s `presandbox` row); its limit is not counted in the
//! container pool's user memory, since nothing runs in it until a cold start takes it, and then
//! the pool counts it as it counts any container.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::super::{BoxError, Container, ContainerSpec};
use super::{ImageConfig, Launcher, RuncContainer, Verb};

/// How long a refill waits for cold starts to end before it makes a sandbox anyway (so that a
/// steady trickle of cold starts does not starve the shelves).
const QUIET_WAIT: Duration = Duration::from_secs(5);

/// The first pause after a failed refill, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a pre-created sandbox fits: a spec without its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Shape {
    image: String,
    memory_mb: u64,
    cpu_shares: u64,
    /// `cpus` in 1/100,000 CPU (the CFS quota per 100 ms period the spec gets).
    cpus: Option<i64>,
    env: Vec<String>,
}

impl Shape {
    fn of(spec: &ContainerSpec) -> Self {
        Self {
            image: spec.image.name.clone(),
            memory_mb: spec.memory_mb,
            cpu_shares: spec.cpu_shares,
            cpus: spec.cpus.map(|c| (c * 100_000.0).round() as i64),
            env: spec.env.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Shelf {
    ready: Vec<RuncContainer>,
    /// A refill task runs for this shape.
    refilling: bool,
}

/// The shelves of created, not started sandboxes, one per shape.
#[derive(Debug)]
pub(super) struct Presandboxes {
    /// The ids' prefix (the invoker's container prefix, `_` included).
    prefix: String,
    per_shape: usize,
    next: AtomicU64,
    shelves: parking_lot::Mutex<HashMap<Shape, Shelf>>,
    /// Cold starts being made now.
    starting: AtomicUsize,
    /// Set while [`Presandboxes::drain`] runs: no refill starts or keeps going.
    closed: AtomicBool,
    /// Refill tasks running (changed under the `shelves` lock).
    refills: AtomicUsize,
    /// Woken when the last cold start in flight ends, when a drain begins and when a refill
    /// task ends.
    wake: Notify,
}

/// Counts a cold start in flight while it lives.
pub(super) struct Starting<'a>(&'a Presandboxes);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        if self.0.starting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.wake.notify_waiters();
        }
    }
}

impl Presandboxes {
    pub(super) fn new(prefix: &str, per_shape: usize) -> Self {
        Self {
            prefix: prefix.to_owned(),
            per_shape,
            next: AtomicU64::new(0),
            shelves: parking_lot::Mutex::new(HashMap::new()),
            starting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            refills: AtomicUsize::new(0),
            wake: Notify::new(),
        }
    }

    /// Marks a cold start in flight until the guard drops.
    pub(super) fn starting(&self) -> Starting<'_> {
        self.starting.fetch_add(1, Ordering::SeqCst);
        Starting(self)
    }

    /// A created sandbox of `spec`'s shape, if the shelf has one; either way the shelf is
    /// refilled in the background (the first ask for a shape makes its shelf).
    pub(super) fn take(
        self: &Arc<Self>,
        spec: &ContainerSpec,
        image: &ImageConfig,
        launcher: &Arc<Launcher>,
    ) -> Option<RuncContainer> {
        let shape = Shape::of(spec);
        let (taken, refill, ready) = {
            let mut shelves = self.shelves.lock();
            let shelf = shelves.entry(shape.clone()).or_default();
            let taken = shelf.ready.pop();
            let refill = !shelf.refilling && !self.closed.load(Ordering::SeqCst);
            if refill {
                shelf.refilling = true;
                self.refills.fetch_add(1, Ordering::SeqCst);
            }
            (taken, refill, ready_count(&shelves))
        };
        let outcome = if taken.is_some() { "hit" } else { "miss" };
        metrics::counter!(crate::metrics::PRESANDBOX_TAKES_TOTAL, "outcome" => outcome)
            .increment(1);
        metrics::gauge!(crate::metrics::PRESANDBOXES_READY).set(ready as f64);
        if refill {
            tokio::spawn(Arc::clone(self).refill(
                shape,
                spec.clone(),
                image.clone(),
                Arc::clone(launcher),
            ));
        }
        taken
    }

    /// Fills `shape`'s shelf up to `per_shape`, one sandbox at a time, between cold starts.
    async fn refill(
        self: Arc<Self>,
        shape: Shape,
        template: ContainerSpec,
        image: ImageConfig,
        launcher: Arc<Launcher>,
    ) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            self.wait_until(Instant::now() + QUIET_WAIT, || {
                self.starting.load(Ordering::SeqCst) == 0
            })
            .await;
            let name = {
                let mut shelves = self.shelves.lock();
                let shelf = shelves.entry(shape.clone()).or_default();
                if self.closed.load(Ordering::SeqCst) || shelf.ready.len() >= self.per_shape {
                    shelf.refilling = false;
                    self.refills.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
                format!(
                    "{}presandbox{}",
                    self.prefix,
                    self.next.fetch_add(1, Ordering::Relaxed)
                )
            };
            // Only a namespace nobody waits for: a cold start's lease comes first.
            if launcher.netpool.stats().idle == 0 {
                self.wait_until(Instant::now() + backoff, || false).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            let spec = ContainerSpec {
                name,
                ..template.clone()
            };
            match launcher.make(&spec, &image, Verb::Create).await {
                Ok(sandbox) => {
                    backoff = FIRST_BACKOFF;
                    let (late, ready) = {
                        let mut shelves = self.shelves.lock();
                        let late = if self.closed.load(Ordering::SeqCst) {
                            Some(sandbox)
                        } else {
                            shelves
                                .entry(shape.clone())
                                .or_default()
                                .ready
                                .push(sandbox);
                            None
                        };
                        (late, ready_count(&shelves))
                    };
                    metrics::gauge!(crate::metrics::PRESANDBOXES_READY).set(ready as f64);
                    if let Some(sandbox) = late
                        && let Err(e) = sandbox.destroy().await
                    {
                        tracing::warn!(container = %spec.name, error = %openwhisk::errors::chain(&e), "removing a pre-created sandbox made during a drain");
                    }
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::PRESANDBOX_FAILURES_TOTAL, "stage" => "create")
                        .increment(1);
                    tracing::warn!(container = %spec.name, image = %shape.image, error = %openwhisk::errors::chain(&e), retry_in = ?backoff, "cannot pre-create a sandbox");
                    self.wait_until(Instant::now() + backoff, || false).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.wake.notify_waiters();
    }

    /// Waits until `done` holds, a drain begins or `deadline` passes.
    async fn wait_until(&self, deadline: Instant, done: impl Fn() -> bool) {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if done() || self.closed.load(Ordering::SeqCst) {
                return;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return;
            }
        }
    }

    /// Stops the refills (waiting for the sandbox each is making), removes every sandbox on
    /// the shelves and forgets the shapes; the next cold start begins again. Returns what
    /// could not be removed.
    pub(super) async fn drain(&self) -> Vec<BoxError> {
        {
            // Under the lock `take` starts refills with: none starts after this.
            let _shelves = self.shelves.lock();
            self.closed.store(true, Ordering::SeqCst);
        }
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            // Refills waiting for quiet or pausing after a failure see `closed` now.
            self.wake.notify_waiters();
            if self.refills.load(Ordering::SeqCst) == 0 {
                break;
            }
            woken.await;
        }
        let sandboxes: Vec<RuncContainer> = self
            .shelves
            .lock()
            .drain()
            .flat_map(|(_, shelf)| shelf.ready)
            .collect();
        metrics::gauge!(crate::metrics::PRESANDBOXES_READY).set(0.0);
        let removed = futures::future::join_all(sandboxes.iter().map(|s| s.destroy())).await;
        self.closed.store(false, Ordering::SeqCst);
        removed
            .into_iter()
            .filter_map(Result::err)
            .map(|e| Box::new(e) as BoxError)
            .collect()
    }

    /// Sandboxes on the shelves now, every shape together.
    pub(super) fn ready(&self) -> usize {
        ready_count(&self.shelves.lock())
    }
}

fn ready_count(shelves: &HashMap<Shape, Shelf>) -> usize {
    shelves.values().map(|s| s.ready.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{ImageRef, Sandbox};

    fn spec(memory_mb: u64, cpus: Option<f64>) -> ContainerSpec {
        ContainerSpec {
            name: "wsk0_1_guest_a".into(),
            image: ImageRef::local("whisk/action-nodejs-v20"),
            memory_mb,
            cpu_shares: 256,
            cpus,
            env: vec!["__OW_API_HOST=http://127.0.0.1:3233".into()],
            sandbox: Sandbox::Mode,
        }
    }

    #[test]
    fn a_shape_is_a_spec_without_its_name() {
        let a = spec(256, Some(0.5));
        let b = ContainerSpec {
            name: "wsk0_2_guest_b".into(),
            ..a.clone()
        };
        assert_eq!(Shape::of(&a), Shape::of(&b));
        assert_ne!(Shape::of(&a), Shape::of(&spec(128, Some(0.5))));
        assert_ne!(Shape::of(&a), Shape::of(&spec(256, None)));
        let other_env = ContainerSpec {
            env: vec![],
            ..a.clone()
        };
        assert_ne!(Shape::of(&a), Shape::of(&other_env));
    }

    #[tokio::test]
    async fn a_drain_with_nothing_made_ends_and_leaves_the_shelves_open() {
        let p = Presandboxes::new("wsk0_", 2);
        assert!(p.drain().await.is_empty());
        assert_eq!(p.ready(), 0);
        assert!(!p.closed.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_quiet_ends_with_the_last_cold_start_or_the_bound() {
        let p = Arc::new(Presandboxes::new("wsk0_", 2));
        let guard = p.starting();
        let waiter = tokio::spawn({
            let p = Arc::clone(&p);
            async move {
                let t0 = Instant::now();
                p.wait_until(Instant::now() + QUIET_WAIT, || {
                    p.starting.load(Ordering::SeqCst) == 0
                })
                .await;
                t0.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(guard);
        let waited = waiter.await.unwrap();
        assert_eq!(
            waited,
            Duration::from_secs(1),
            "woken when the cold start ended"
        );

        let _busy = p.starting();
        let t0 = Instant::now();
        p.wait_until(Instant::now() + QUIET_WAIT, || {
            p.starting.load(Ordering::SeqCst) == 0
        })
        .await;
        assert_eq!(
            t0.elapsed(),
            QUIET_WAIT,
            "a busy invoker still refills, later"
        );
    }
}

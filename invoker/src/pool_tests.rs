//! The pool's state machine against the fake backend ([`crate::container::fake`]): no root,
//! dockerd or broker. The tokio clock is paused, so the grace period and the idle timeout pass
//! in no time and in a fixed order.
//!
//! Waiting for something to happen goes through [`FakeFactory::until`] (woken on every backend
//! call) or the pool's stats. To check that something did *not* happen, [`settle`] lets every
//! task run as far as it can: with the clock paused, a sleep ends only once every other task
//! is blocked.

use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::*;
use crate::action::{Action, Exec, Limits};
use crate::container::fake::{Call, FakeFactory};

const PREFIX: &str = "wsktest0";

fn config(user_memory_mb: u64) -> PoolConfig {
    PoolConfig {
        user_memory_mb,
        pause_grace: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(600),
        name_prefix: PREFIX.into(),
        env: vec!["__OW_API_HOST=http://localhost".into()],
        user_cpus: None,
        stem_cells: Vec::new(),
        allow_vm_annotation: true,
        mode_is_vm: false,
    }
}

fn setup(config: PoolConfig) -> (FakeFactory, ContainerPool) {
    let fake = FakeFactory::default();
    let pool = ContainerPool::new(Arc::new(fake.clone()), config);
    (fake, pool)
}

/// An action of `guest`; its identity covers what `ActionStore` puts in it (name, exec with
/// code, limits).
fn action(name: &str, kind: &str, memory_mb: u64, concurrency: u64) -> Action {
    with_code(
        Action {
            doc_id: format!("guest/{name}"),
            rev: "1-a".into(),
            namespace: "guest".into(),
            name: name.into(),
            version: "0.0.1".into(),
            publish: false,
            exec: Exec::Runnable {
                kind: kind.into(),
                image: format!("whisk/{}", kind.replace(':', "")),
                code: None,
                main: None,
                binary: false,
                sentinelled: true,
                local: true,
            },
            parameters: Vec::new(),
            limits: Limits {
                timeout_ms: 60_000,
                memory_mb,
                logs_mb: 10,
                concurrency,
                json: json!({"timeout": 60_000, "memory": memory_mb, "logs": 10,
                             "concurrency": concurrency}),
            },
            annotations: Vec::new(),
            identity: String::new(),
        },
        "function main() { return {} }",
    )
}

/// The same action with other code: another identity.
fn with_code(mut a: Action, new_code: &str) -> Action {
    if let Exec::Runnable { code, .. } = &mut a.exec {
        *code = Some(new_code.to_owned());
    }
    a.identity = json!([a.namespace, a.name, format!("{:?}", a.exec), a.limits.json]).to_string();
    a
}

fn stem_cell(kind: &str, memory_mb: u64, count: usize) -> (StemCell, String) {
    let cell = StemCell {
        kind: kind.into(),
        memory_mb,
        count,
    };
    (cell, format!("whisk/{}", kind.replace(':', "")))
}

/// Lets every task run until all are blocked (see the module's docs).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// `f`, or a panic after 30 s on the paused clock (far less than the idle timeout of the
/// tests): a run that never gets its container fails the test instead of hanging it.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("still waiting after 30 s")
}

/// Waits until the pool's stats satisfy `f`, settling in between.
async fn until_stats(pool: &ContainerPool, f: impl Fn(&PoolStats) -> bool) {
    for _ in 0..1000 {
        if f(&pool.stats()) {
            return;
        }
        settle().await;
    }
    panic!("the pool never got there: {:?}", pool.stats());
}

async fn acquire(pool: &ContainerPool, a: &Action, namespace: &str) -> Result<Lease, CreateError> {
    within(pool.acquire(a, namespace)).await
}

fn spawn_acquire(
    pool: &ContainerPool,
    a: &Action,
    namespace: &str,
) -> JoinHandle<Result<Lease, CreateError>> {
    let (pool, a, namespace) = (pool.clone(), a.clone(), namespace.to_owned());
    tokio::spawn(async move { pool.acquire(&a, &namespace).await })
}

/// With 256 MB of user memory: `a` (256 MB) runs and finishes, then `b` (256 MB) asks for a
/// container, which evicts `a`. Returns `a`'s id and `b`'s acquire.
async fn evict_a_for_b(pool: &ContainerPool) -> (String, JoinHandle<Result<Lease, CreateError>>) {
    let a = acquire(pool, &action("a", "nodejs:18", 256, 1), "guest")
        .await
        .unwrap();
    let id = a.container.id().to_owned();
    a.finish(true);
    (
        id,
        spawn_acquire(pool, &action("b", "nodejs:18", 256, 1), "guest"),
    )
}

fn destroys_of(fake: &FakeFactory, id: &str) -> usize {
    fake.with(|s| s.count(|c| *c == Call::Destroy(id.to_owned())))
}

#[tokio::test(start_paused = true)]
async fn a_finished_container_is_reused_for_the_same_namespace_and_an_equal_action() {
    let (fake, pool) = setup(config(1024));
    let a = action("hello", "nodejs:18", 256, 1);
    let first = acquire(&pool, &a, "guest").await.unwrap();
    assert_eq!(first.start, Start::Cold);
    let id = first.container.id().to_owned();
    first.finish(true);

    // Another revision of the same document: a separate but structurally equal value.
    let mut equal = action("hello", "nodejs:18", 256, 1);
    equal.rev = "2-b".into();
    let second = acquire(&pool, &equal, "guest").await.unwrap();
    assert_eq!(second.start, Start::Warm);
    assert_eq!(second.container.id(), id);
    assert_eq!(fake.with(|s| s.creates()), 1);
    assert_eq!(pool.stats().used_mb, 256);
}

#[tokio::test(start_paused = true)]
async fn a_container_is_not_reused_by_another_namespace() {
    let (fake, pool) = setup(config(1024));
    let a = action("hello", "nodejs:18", 256, 1);
    let first = acquire(&pool, &a, "guest").await.unwrap();
    let id = first.container.id().to_owned();
    first.finish(true);

    let other = acquire(&pool, &a, "alice").await.unwrap();
    assert_eq!(other.start, Start::Cold);
    assert_ne!(other.container.id(), id);
    assert_eq!(fake.with(|s| s.creates()), 2);
    assert_eq!(pool.stats().used_mb, 512);
}

#[tokio::test(start_paused = true)]
async fn a_container_is_not_reused_when_the_action_changed() {
    let (fake, pool) = setup(config(1024));
    let a = action("hello", "nodejs:18", 256, 1);
    let first = acquire(&pool, &a, "guest").await.unwrap();
    let id = first.container.id().to_owned();
    first.finish(true);

    let changed = with_code(a.clone(), "function main() { return {changed: true} }");
    let l = acquire(&pool, &changed, "guest").await.unwrap();
    assert_eq!(l.start, Start::Cold);
    assert_ne!(l.container.id(), id);
    l.finish(true);
    let renamed = action("hello2", "nodejs:18", 256, 1);
    let l = acquire(&pool, &renamed, "guest").await.unwrap();
    assert_eq!(l.start, Start::Cold);
    assert_eq!(fake.with(|s| s.creates()), 3);
}

#[tokio::test(start_paused = true)]
async fn a_second_run_joins_a_starting_container_when_concurrency_allows() {
    let (fake, pool) = setup(config(1024));
    let a = action("shared", "nodejs:18", 256, 2);
    fake.hold_creates();
    let first = spawn_acquire(&pool, &a, "guest");
    fake.until(|s| s.held == 1).await;
    let second = spawn_acquire(&pool, &a, "guest");
    settle().await;
    assert_eq!(
        fake.with(|s| s.creates()),
        1,
        "the second run started a container"
    );
    assert!(
        !second.is_finished(),
        "the second run did not wait for the start"
    );

    fake.release(1);
    let (first, second) = (
        within(first).await.unwrap().unwrap(),
        within(second).await.unwrap().unwrap(),
    );
    assert_eq!(first.start, Start::Cold);
    assert_eq!(second.start, Start::Warm);
    assert_eq!(first.container.id(), second.container.id());
    assert!(first.shared && second.shared);
    assert!(Arc::ptr_eq(&first.initialized, &second.initialized));
    assert_eq!(pool.stats().used_mb, 256);

    // Full (two runs): a third one gets a container of its own.
    fake.open_gate();
    let third = acquire(&pool, &a, "guest").await.unwrap();
    assert_eq!(third.start, Start::Cold);
    assert_ne!(third.container.id(), first.container.id());
}

#[tokio::test(start_paused = true)]
async fn without_concurrency_a_second_run_does_not_join_a_starting_container() {
    let (fake, pool) = setup(config(1024));
    let a = action("single", "nodejs:18", 256, 1);
    fake.hold_creates();
    let first = spawn_acquire(&pool, &a, "guest");
    fake.until(|s| s.held == 1).await;
    let second = spawn_acquire(&pool, &a, "guest");
    fake.until(|s| s.held == 2).await;
    fake.release(2);
    let (first, second) = (
        within(first).await.unwrap().unwrap(),
        within(second).await.unwrap().unwrap(),
    );
    assert_eq!((first.start, second.start), (Start::Cold, Start::Cold));
    assert_ne!(first.container.id(), second.container.id());
    assert!(!first.shared && !second.shared);
}

#[tokio::test(start_paused = true)]
async fn a_stem_cell_is_taken_by_kind_and_memory_and_replaced() {
    let mut cfg = config(1024);
    cfg.stem_cells = vec![stem_cell("nodejs:18", 256, 1)];
    let (fake, pool) = setup(cfg);
    pool.prewarm().await;
    let stem = fake.with(|s| s.live.keys().next().cloned()).unwrap();
    assert!(stem.starts_with(&format!("{PREFIX}_")) && stem.contains("prewarm"));
    assert_eq!(pool.stats().prewarms, 1);

    let l = acquire(&pool, &action("hello", "nodejs:18", 256, 1), "guest")
        .await
        .unwrap();
    assert_eq!(l.start, Start::Prewarm);
    assert_eq!(l.container.id(), stem);
    // A new stem cell of the same kind and memory takes its place.
    fake.until(|s| s.creates() == 2 && s.live.len() == 2).await;
    until_stats(&pool, |s| s.prewarms == 1 && s.containers == 2).await;
    let replacement = fake
        .with(|s| s.live.keys().find(|k| **k != stem).cloned())
        .unwrap();
    assert!(replacement.contains("prewarm"), "{replacement}");
    assert_eq!(fake.with(|s| s.live[&replacement]), 256);
}

#[tokio::test(start_paused = true)]
async fn a_stem_cell_of_another_kind_or_memory_is_not_taken() {
    let mut cfg = config(1024);
    cfg.stem_cells = vec![stem_cell("nodejs:18", 256, 1)];
    let (fake, pool) = setup(cfg);
    pool.prewarm().await;

    let python = acquire(&pool, &action("py", "python:3", 256, 1), "guest")
        .await
        .unwrap();
    assert_eq!(python.start, Start::Cold);
    let big = acquire(&pool, &action("big", "nodejs:18", 512, 1), "guest")
        .await
        .unwrap();
    assert_eq!(big.start, Start::Cold);
    assert_eq!(pool.stats().prewarms, 1);
    assert_eq!(fake.with(|s| s.creates()), 3);
}

#[tokio::test(start_paused = true)]
async fn a_run_starts_cold_with_its_own_memory_when_nothing_fits() {
    let mut cfg = config(1024);
    cfg.stem_cells = vec![stem_cell("python:3", 256, 1)];
    let (fake, pool) = setup(cfg);
    pool.prewarm().await;
    let busy = acquire(&pool, &action("other", "nodejs:18", 256, 1), "guest")
        .await
        .unwrap();
    assert_eq!(busy.start, Start::Cold);

    let l = acquire(&pool, &action("hello", "nodejs:18", 128, 1), "guest")
        .await
        .unwrap();
    assert_eq!(l.start, Start::Cold);
    let id = l.container.id().to_owned();
    assert!(id.starts_with(&format!("{PREFIX}_")) && id.ends_with("_guest_hello"));
    assert_eq!(fake.with(|s| s.live[&id]), 128);
    assert_eq!(pool.stats().used_mb, 256 + 256 + 128);
}

#[tokio::test(start_paused = true)]
async fn the_least_recently_used_idle_container_is_evicted_when_memory_is_needed() {
    let (fake, pool) = setup(config(768));
    let [a, b, c] = ["a", "b", "c"].map(|n| action(n, "nodejs:18", 256, 1));
    let mut ids = Vec::new();
    let mut leases = Vec::new();
    for x in [&a, &b, &c] {
        let l = acquire(&pool, x, "guest").await.unwrap();
        ids.push(l.container.id().to_owned());
        leases.push(l);
    }
    // Used in the order a, b, c, then a again: b is the least recently used.
    for l in leases {
        l.finish(true);
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    acquire(&pool, &a, "guest").await.unwrap().finish(true);
    tokio::time::advance(Duration::from_millis(100)).await;

    let d = acquire(&pool, &action("d", "nodejs:18", 256, 1), "guest")
        .await
        .unwrap();
    assert_eq!(d.start, Start::Cold);
    assert_eq!(destroys_of(&fake, &ids[1]), 1, "b was not evicted");
    assert_eq!(fake.with(|s| s.count(|c| matches!(c, Call::Destroy(_)))), 1);
    let live: Vec<String> = fake.with(|s| s.live.keys().cloned().collect());
    assert!(live.contains(&ids[0]) && live.contains(&ids[2]), "{live:?}");
    assert_eq!(pool.stats().used_mb, 768);
}

#[tokio::test(start_paused = true)]
async fn an_evicted_container_holds_its_memory_until_its_destroy_returns() {
    let (fake, pool) = setup(config(256));
    fake.set(|s| s.destroy_delay = Duration::from_secs(1));
    let (id, b) = evict_a_for_b(&pool).await;
    fake.until(|s| s.count(|c| *c == Call::Destroy(id.clone())) == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        !b.is_finished(),
        "b started while a was still being removed"
    );
    assert_eq!(fake.with(|s| s.creates()), 1);
    assert_eq!(pool.stats().used_mb, 256);
    let b = within(b).await.unwrap().unwrap();
    assert_eq!(b.start, Start::Cold);
    assert_eq!(fake.with(|s| s.peak_mb), 256);
}

#[tokio::test(start_paused = true)]
async fn a_failed_removal_is_tried_again_and_holds_its_memory_until_it_works() {
    let (fake, pool) = setup(config(256));
    fake.set(|s| s.fail_destroys = 3);
    let started = Instant::now();
    let (id, b) = evict_a_for_b(&pool).await;
    fake.until(|s| s.count(|c| *c == Call::Destroy(id.clone())) == 3)
        .await;
    assert!(!b.is_finished(), "b started while a still existed");
    assert_eq!(pool.stats().used_mb, 256, "a's memory is still reserved");
    let b = within(b).await.unwrap().unwrap();
    assert_eq!(b.start, Start::Cold);
    assert_eq!(
        destroys_of(&fake, &id),
        4,
        "three failures, then the removal"
    );
    assert_eq!(
        fake.with(|s| s.peak_mb),
        256,
        "a and b never existed at once"
    );
    // 0.5 + 1 + 2 s of pauses between the four tries.
    assert!(
        started.elapsed() >= Duration::from_millis(3500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_removal_that_keeps_failing_is_left_to_the_shutdown_sweep() {
    let (fake, pool) = setup(config(256));
    fake.set(|s| s.fail_destroys = usize::MAX);
    let (id, b) = evict_a_for_b(&pool).await;
    fake.until(|s| s.count(|c| *c == Call::Destroy(id.clone())) >= 3)
        .await;
    // Shutdown does not wait out the retries (its bound for running removals is 60 s).
    tokio::time::timeout(Duration::from_secs(5), pool.shutdown())
        .await
        .expect("shutdown waited for the retries")
        .unwrap();
    assert!(within(b).await.unwrap().is_err(), "b never got a container");
    let calls = fake.calls();
    assert!(
        calls.contains(&Call::RemoveAll(format!("{PREFIX}_"))),
        "{calls:?}"
    );
    assert_eq!(pool.stats().used_mb, 0);
}

#[tokio::test(start_paused = true)]
async fn runs_that_do_not_fit_wait_in_order_and_block_the_runs_behind_them() {
    let (fake, pool) = setup(config(768));
    let a = acquire(&pool, &action("a", "nodejs:18", 256, 1), "guest")
        .await
        .unwrap();
    let b = acquire(&pool, &action("b", "nodejs:18", 256, 1), "guest")
        .await
        .unwrap();
    // x needs 512 MB with 256 free; y and z (256 MB each) would fit now but queue behind it.
    let (served_tx, mut served) = mpsc::unbounded_channel();
    let mut waiting = Vec::new();
    for (i, (name, mb)) in [("x", 512), ("y", 256), ("z", 256)].into_iter().enumerate() {
        let (p, tx) = (pool.clone(), served_tx.clone());
        let act = action(name, "nodejs:18", mb, 1);
        waiting.push(tokio::spawn(async move {
            let l = acquire(&p, &act, "guest").await.unwrap();
            tx.send(name).unwrap();
            l
        }));
        until_stats(&pool, |s| s.waiting == i + 1).await;
    }
    settle().await;
    assert!(
        served.try_recv().is_err(),
        "a run went past the one that does not fit"
    );
    assert_eq!(fake.with(|s| s.creates()), 2);

    a.finish(true); // a is evicted for x: 256 (b) + 512 (x)
    assert_eq!(within(served.recv()).await, Some("x"));
    settle().await;
    assert!(served.try_recv().is_err(), "y ran without memory");
    b.finish(true); // b is evicted for y
    assert_eq!(within(served.recv()).await, Some("y"));
    settle().await;
    assert!(served.try_recv().is_err(), "z ran without memory");
    let x = within(waiting.remove(0)).await.unwrap();
    x.finish(true); // x is evicted for z
    assert_eq!(within(served.recv()).await, Some("z"));
    assert_eq!(pool.stats().waiting, 0);
    assert!(fake.with(|s| s.peak_mb) <= 768);
}

#[tokio::test(start_paused = true)]
async fn an_idle_container_is_paused_after_the_grace_period_and_resumed_on_reuse() {
    let (fake, pool) = setup(config(1024));
    let a = action("hello", "nodejs:18", 256, 1);
    let l = acquire(&pool, &a, "guest").await.unwrap();
    let id = l.container.id().to_owned();
    l.finish(true);

    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(fake.with(|s| s.count(|c| matches!(c, Call::Pause(_)))), 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.calls().last(), Some(&Call::Pause(id.clone())));
    assert_eq!(pool.stats().paused, 1);

    let l = acquire(&pool, &a, "guest").await.unwrap();
    assert_eq!(l.start, Start::Warm);
    assert_eq!(l.container.id(), id);
    assert_eq!(fake.calls().last(), Some(&Call::Resume(id.clone())));
    assert_eq!(pool.stats().paused, 0);
}

#[tokio::test(start_paused = true)]
async fn a_reuse_within_the_grace_period_postpones_the_pause() {
    let (fake, pool) = setup(config(1024));
    let a = action("hello", "nodejs:18", 256, 1);
    acquire(&pool, &a, "guest").await.unwrap().finish(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let l = acquire(&pool, &a, "guest").await.unwrap();
    let id = l.container.id().to_owned();
    l.finish(true);

    // The first finish's timer ends at 10 s; the second finish's at 15 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(fake.with(|s| s.count(|c| matches!(c, Call::Pause(_)))), 0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fake.calls().last(), Some(&Call::Pause(id)));
    // Never resumed: nothing ran in it while paused.
    assert_eq!(fake.with(|s| s.count(|c| matches!(c, Call::Resume(_)))), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_container_is_removed_after_the_idle_timeout_but_stem_cells_stay() {
    let mut cfg = config(1024);
    cfg.idle_timeout = Duration::from_secs(60);
    cfg.stem_cells = vec![stem_cell("python:3", 256, 1)];
    let (fake, pool) = setup(cfg);
    pool.prewarm().await;
    let l = acquire(&pool, &action("hello", "nodejs:18", 128, 1), "guest")
        .await
        .unwrap();
    let id = l.container.id().to_owned();
    l.finish(true);

    tokio::time::sleep(Duration::from_secs(58)).await;
    assert_eq!(
        destroys_of(&fake, &id),
        0,
        "removed before the idle timeout"
    );
    assert_eq!(pool.stats().used_mb, 384);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        destroys_of(&fake, &id),
        1,
        "not removed after the idle timeout"
    );
    assert_eq!(fake.with(|s| s.live.len()), 1);
    assert_eq!(pool.stats().used_mb, 256);
    assert_eq!(pool.stats().prewarms, 1);
}

#[tokio::test(start_paused = true)]
async fn memory_is_never_exceeded_under_a_burst_of_concurrent_runs() {
    let mut cfg = config(1024);
    cfg.stem_cells = vec![stem_cell("nodejs:18", 256, 2)];
    let (fake, pool) = setup(cfg);
    fake.set(|s| {
        s.create_delay = Duration::from_millis(300);
        s.destroy_delay = Duration::from_millis(200);
    });
    pool.prewarm().await;
    let actions: Vec<Action> = (0..12)
        .map(|i| {
            let mb = [128, 256, 512][i % 3];
            action(&format!("f{i}"), "nodejs:18", mb, 1 + u64::from(i % 4 == 0))
        })
        .collect();
    let mut runs = Vec::new();
    for n in 0..80u64 {
        let (p, a) = (pool.clone(), actions[(n * 7 % 12) as usize].clone());
        runs.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(n * 37 % 500)).await;
            let l = acquire(&p, &a, "guest").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100 + n * 53 % 400)).await;
            l.finish(n % 11 != 0);
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
    settle().await;
    let (peak, creates, destroys) = fake.with(|s| {
        let destroys = s.count(|c| matches!(c, Call::Destroy(_)));
        (s.peak_mb, s.creates(), destroys)
    });
    assert!(peak <= 1024, "the backend held {peak} MB at once");
    assert!(pool.stats().peak_mb <= 1024, "{:?}", pool.stats());
    // The burst did press on the limit, with evictions and removals of unhealthy containers.
    assert!(peak > 768, "{peak}");
    assert!(
        creates > 12 && destroys > 0,
        "{creates} creates, {destroys} destroys"
    );
    assert_eq!(pool.stats().busy, 0);
    assert_eq!(pool.stats().used_mb, fake.with(|s| s.live_mb()));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_cold_start_gives_its_memory_back() {
    let (fake, pool) = setup(config(512));
    fake.hold_creates();
    let run = spawn_acquire(&pool, &action("a", "nodejs:18", 256, 1), "guest");
    fake.until(|s| s.held == 1).await;
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    // The backend is still making the container: its memory stays counted until it is gone.
    assert_eq!(pool.stats().used_mb, 256);
    fake.release(1);
    // Removed as soon as it is made (not left idle until a timer or an eviction removes it).
    settle().await;
    assert_eq!(fake.with(|s| s.live.len()), 0);
    assert_eq!(pool.stats().used_mb, 0);
    assert_eq!(pool.stats().containers, 0);
    assert_eq!(fake.with(|s| s.count(|c| matches!(c, Call::Destroy(_)))), 1);
}

#[tokio::test(start_paused = true)]
async fn a_run_waiting_behind_a_cancelled_cold_start_proceeds() {
    let (fake, pool) = setup(config(256));
    fake.hold_creates();
    let cancelled = spawn_acquire(&pool, &action("a", "nodejs:18", 256, 1), "guest");
    fake.until(|s| s.held == 1).await;
    let behind = spawn_acquire(&pool, &action("b", "nodejs:18", 256, 1), "guest");
    until_stats(&pool, |s| s.waiting == 1).await;
    cancelled.abort();
    fake.open_gate();
    let l = within(behind).await.unwrap().unwrap();
    assert_eq!(l.start, Start::Cold);
    assert!(l.container.id().ends_with("_b"));
    assert_eq!(pool.stats().used_mb, 256);
    assert_eq!(fake.with(|s| s.live.len()), 1);
    l.finish(false);
    until_stats(&pool, |s| s.used_mb == 0 && s.containers == 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_lets_the_run_behind_it_proceed() {
    let (fake, pool) = setup(config(256));
    let a = acquire(&pool, &action("a", "nodejs:18", 256, 1), "guest")
        .await
        .unwrap();
    let cancelled = spawn_acquire(&pool, &action("b", "nodejs:18", 256, 1), "guest");
    until_stats(&pool, |s| s.waiting == 1).await;
    let behind = spawn_acquire(&pool, &action("c", "nodejs:18", 256, 1), "guest");
    until_stats(&pool, |s| s.waiting == 2).await;
    cancelled.abort();
    until_stats(&pool, |s| s.waiting == 1).await;
    a.finish(true);
    let l = within(behind).await.unwrap().unwrap();
    assert!(l.container.id().ends_with("_c"));
    assert_eq!(fake.with(|s| s.creates()), 2);
    assert_eq!(pool.stats().used_mb, 256);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_join_leaves_the_container_to_the_others() {
    let (fake, pool) = setup(config(1024));
    let a = action("shared", "nodejs:18", 256, 2);
    fake.hold_creates();
    let first = spawn_acquire(&pool, &a, "guest");
    fake.until(|s| s.held == 1).await;
    let joined = spawn_acquire(&pool, &a, "guest");
    settle().await;
    assert_eq!(pool.stats().waiting, 0, "the second run did not join");
    joined.abort();
    settle().await;
    fake.release(1);
    let first = within(first).await.unwrap().unwrap();
    let id = first.container.id().to_owned();
    // The cancelled run gave its place back: two more runs fit next to the first.
    let second = acquire(&pool, &a, "guest").await.unwrap();
    assert_eq!(
        (second.start, second.container.id()),
        (Start::Warm, id.as_str())
    );
    first.finish(true);
    second.finish(true);
    // And once they are done the container is idle: it gets paused.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(fake.calls().last(), Some(&Call::Pause(id)));
    assert_eq!(fake.with(|s| s.creates()), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_gives_its_memory_back_and_reports_the_error_to_every_waiting_run() {
    let (fake, pool) = setup(config(1024));
    let a = action("shared", "nodejs:18", 256, 2);
    fake.set(|s| s.fail_creates = 1);
    fake.hold_creates();
    let first = spawn_acquire(&pool, &a, "guest");
    fake.until(|s| s.held == 1).await;
    let joined = spawn_acquire(&pool, &a, "guest");
    settle().await;
    assert_eq!(pool.stats().waiting, 0, "the second run did not join");
    assert_eq!(fake.with(|s| s.creates()), 1);
    assert_eq!(pool.stats().used_mb, 256);
    fake.open_gate();
    // The run that asked for the container gets the backend's error; the joined one its text.
    match within(first).await.unwrap() {
        Err(e @ CreateError::Provision(_)) => {
            assert!(
                openwhisk::errors::chain(&e).contains("fake create"),
                "{e:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    match within(joined).await.unwrap() {
        Err(CreateError::JoinedFailed(text)) => assert!(text.contains("fake create"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.stats().used_mb, 0);
    assert_eq!(pool.stats().containers, 0);
    assert_eq!(fake.with(|s| s.live.len()), 0);
    // The next run tries again.
    let l = acquire(&pool, &a, "guest").await.unwrap();
    assert_eq!(l.start, Start::Cold);
    assert_eq!(fake.with(|s| s.creates()), 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_removes_every_container_and_refuses_new_runs() {
    let mut cfg = config(2048);
    cfg.stem_cells = vec![stem_cell("python:3", 256, 1)];
    let (fake, pool) = setup(cfg);
    pool.prewarm().await;
    let paused = action("paused", "nodejs:18", 256, 1);
    acquire(&pool, &paused, "guest").await.unwrap().finish(true);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(pool.stats().paused, 1);
    acquire(&pool, &action("idle", "nodejs:18", 256, 1), "guest")
        .await
        .unwrap()
        .finish(true);
    let busy = acquire(&pool, &action("busy", "nodejs:18", 256, 1), "guest")
        .await
        .unwrap();
    fake.hold_creates();
    let starting = spawn_acquire(&pool, &action("starting", "nodejs:18", 256, 1), "guest");
    fake.until(|s| s.held == 1).await;

    pool.shutdown().await.unwrap();
    assert!(matches!(
        acquire(&pool, &paused, "guest").await,
        Err(CreateError::ShuttingDown)
    ));
    // The create still running at shutdown removes its container when it ends.
    fake.open_gate();
    assert!(matches!(
        within(starting).await.unwrap(),
        Err(CreateError::ShuttingDown)
    ));
    fake.until(|s| s.live.is_empty()).await;
    let calls = fake.calls();
    assert!(calls.contains(&Call::RemoveAll(format!("{PREFIX}_"))));
    for call in &calls {
        if let Call::Create(id) = call {
            assert_eq!(destroys_of(&fake, id), 1, "{id}: {calls:?}");
        }
    }
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(c, Call::Create(_)))
            .count(),
        5
    );
    drop(busy);
    until_stats(&pool, |s| s.used_mb == 0 && s.containers == 0).await;
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_container_is_removed_and_not_reused() {
    let (fake, pool) = setup(config(1024));
    let a = action("hello", "nodejs:18", 256, 1);
    let l = acquire(&pool, &a, "guest").await.unwrap();
    let id = l.container.id().to_owned();
    l.finish(false);
    fake.until(|s| s.live.is_empty()).await;
    until_stats(&pool, |s| s.used_mb == 0).await;
    let l = acquire(&pool, &a, "guest").await.unwrap();
    assert_eq!(l.start, Start::Cold);
    assert_ne!(l.container.id(), id);
    assert_eq!(destroys_of(&fake, &id), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_lease_removes_its_container() {
    let (fake, pool) = setup(config(1024));
    let l = acquire(&pool, &action("hello", "nodejs:18", 256, 1), "guest")
        .await
        .unwrap();
    let id = l.container.id().to_owned();
    drop(l);
    fake.until(|s| s.live.is_empty()).await;
    assert_eq!(destroys_of(&fake, &id), 1);
    until_stats(&pool, |s| s.used_mb == 0 && s.containers == 0).await;
}

#[tokio::test(start_paused = true)]
async fn an_action_larger_than_the_user_memory_is_refused_without_waiting() {
    let (fake, pool) = setup(config(256));
    match acquire(&pool, &action("huge", "nodejs:18", 512, 1), "guest").await {
        Err(CreateError::TooBig {
            need_mb: 512,
            have_mb: 256,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.with(|s| s.creates()), 0);
    assert_eq!(pool.stats(), PoolStats::default());
}

#[tokio::test(start_paused = true)]
async fn a_container_that_fails_to_resume_is_replaced() {
    let (fake, pool) = setup(config(1024));
    let a = action("hello", "nodejs:18", 256, 1);
    let l = acquire(&pool, &a, "guest").await.unwrap();
    let id = l.container.id().to_owned();
    l.finish(true);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(pool.stats().paused, 1);
    fake.set(|s| s.fail_resume = true);
    let l = acquire(&pool, &a, "guest").await.unwrap();
    assert_eq!(l.start, Start::Cold);
    assert_ne!(l.container.id(), id);
    fake.until(|s| !s.live.contains_key(&id)).await;
    assert_eq!(destroys_of(&fake, &id), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_a_create_still_running_before_its_final_sweep() {
    let (fake, pool) = setup(config(1024));
    fake.hold_creates();
    let starting = spawn_acquire(&pool, &action("late", "nodejs:18", 256, 1), "guest");
    fake.until(|s| s.held == 1).await;
    let shutdown = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown().await })
    };
    settle().await;
    assert!(!shutdown.is_finished(), "shutdown must wait for the create");
    assert_eq!(
        fake.with(|s| s.count(|c| matches!(c, Call::RemoveAll(_)))),
        0,
        "no sweep while a create runs"
    );
    fake.open_gate();
    within(shutdown).await.unwrap().unwrap();
    assert!(matches!(
        within(starting).await.unwrap(),
        Err(CreateError::ShuttingDown)
    ));
    // The late container was removed by its own task, before the sweep.
    let calls = fake.calls();
    let destroyed = calls
        .iter()
        .position(|c| matches!(c, Call::Destroy(id) if id.ends_with("_late")))
        .expect("the late container is removed");
    let swept = calls
        .iter()
        .position(|c| matches!(c, Call::RemoveAll(_)))
        .expect("the sweep ran");
    assert!(destroyed < swept, "{calls:?}");
    assert_eq!(fake.with(|s| s.live.len()), 0);
}

/// `action` with an annotation.
fn annotated(mut a: Action, key: &str, value: serde_json::Value) -> Action {
    a.annotations.push(openwhisk::messages::KeyValue {
        key: key.into(),
        value,
    });
    a.identity = format!("{}+{key}", a.identity);
    a
}

#[tokio::test(start_paused = true)]
async fn wasm_and_vm_annotated_actions_ask_for_a_vm_and_skip_container_stem_cells() {
    let mut cfg = config(2048);
    cfg.stem_cells = vec![stem_cell("nodejs:18", 256, 1)];
    let (fake, pool) = setup(cfg);
    pool.prewarm().await;
    let stem = fake.with(|s| s.live.keys().next().cloned()).unwrap();
    assert_eq!(fake.with(|s| s.sandboxes[&stem]), Sandbox::Mode);

    let vm_node = annotated(
        action("isolated", "nodejs:18", 256, 1),
        "sandbox",
        json!("vm"),
    );
    let l = acquire(&pool, &vm_node, "guest").await.unwrap();
    assert_eq!(
        l.start,
        Start::Cold,
        "a container stem cell served a VM action"
    );
    assert_eq!(fake.with(|s| s.sandboxes[l.container.id()]), Sandbox::Vm);

    let mut wasm = action("w", "wasm:0.1", 256, 1);
    if let Exec::Runnable { image, .. } = &mut wasm.exec {
        *image = "openwhisk/action-wasm-v0.1:nightly".into();
    }
    let w = acquire(&pool, &wasm, "guest").await.unwrap();
    assert_eq!(fake.with(|s| s.sandboxes[w.container.id()]), Sandbox::Vm);

    // Any other annotation value, or none, stays in the mode's sandbox (here: the stem cell).
    let plain = annotated(
        action("plain", "nodejs:18", 256, 1),
        "sandbox",
        json!("container"),
    );
    let p = acquire(&pool, &plain, "guest").await.unwrap();
    assert_eq!((p.start, p.container.id()), (Start::Prewarm, stem.as_str()));
}

#[tokio::test(start_paused = true)]
async fn the_vm_annotation_is_ignored_where_the_invoker_does_not_allow_it() {
    let mut cfg = config(1024);
    cfg.allow_vm_annotation = false;
    let (fake, pool) = setup(cfg);
    let vm_node = annotated(
        action("isolated", "nodejs:18", 256, 1),
        "sandbox",
        json!("vm"),
    );
    let l = acquire(&pool, &vm_node, "guest").await.unwrap();
    assert_eq!(fake.with(|s| s.sandboxes[l.container.id()]), Sandbox::Mode);
}

#[tokio::test(start_paused = true)]
async fn in_vm_mode_every_spec_is_the_mode_s_and_vm_actions_take_its_stem_cells() {
    let mut cfg = config(1024);
    cfg.mode_is_vm = true;
    cfg.stem_cells = vec![stem_cell("nodejs:18", 256, 1)];
    let (fake, pool) = setup(cfg);
    pool.prewarm().await;
    let vm_node = annotated(
        action("isolated", "nodejs:18", 256, 1),
        "sandbox",
        json!("vm"),
    );
    let l = acquire(&pool, &vm_node, "guest").await.unwrap();
    assert_eq!(l.start, Start::Prewarm);
    assert!(fake.with(|s| s.sandboxes.values().all(|b| *b == Sandbox::Mode)));
}

/// The janitor's handle is given out once, and its task runs until the pool shuts down (the
/// service watches it: an end before that stops the invoker).
#[tokio::test(start_paused = true)]
async fn the_janitor_runs_until_shutdown_and_its_handle_is_given_once() {
    let (_fake, pool) = setup(config(1024));
    let janitor = pool.take_janitor().expect("the janitor's handle");
    assert!(pool.take_janitor().is_none(), "given out twice");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!janitor.is_finished(), "the janitor ended on its own");
    pool.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), janitor)
        .await
        .expect("the janitor outlived the shutdown")
        .unwrap();
}

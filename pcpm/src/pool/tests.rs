//! The pool's state machine against [`FakeEngine`]: no dockerd, no root, tokio's clock paused.
//!
//! Each test names its own manager and network, so its pool has an id of its own and the
//! gauges it reads from the process-wide recorder are its own.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::*;
use crate::fake::FakeEngine;

fn config(name: &str, low: usize, high: usize, max: usize, on_empty: OnEmpty) -> PcpmConfig {
    let mut c = PcpmConfig::new(name);
    c.low_watermark = low;
    c.high_watermark = high;
    c.max_per_pool = max;
    c.on_empty = on_empty;
    c.keys = vec![NetworkKey::network(name)];
    c
}

fn key(name: &str) -> NetworkKey {
    NetworkKey::network(name)
}

const LONG: OnEmpty = OnEmpty::Wait(Duration::from_secs(3600));

/// Lets every task that can run, run: with the clock paused, time moves on only once the
/// runtime has nothing else to do.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn pause(e: Endpoint) -> PauseHandle {
    match e {
        Endpoint::Pause(h) => h,
        Endpoint::Fallback(k) => panic!("fell back for {k:?}"),
    }
}

async fn start(engine: &Arc<FakeEngine>, config: PcpmConfig) -> Pcpm {
    Pcpm::with_engine(engine.clone(), config).await.unwrap()
}

fn labels(manager: &str, key: &NetworkKey) -> HashMap<String, String> {
    HashMap::from([
        (engine::LABEL_MANAGER.to_owned(), manager.to_owned()),
        (engine::LABEL_KEY.to_owned(), key.id()),
        (
            engine::LABEL_KEY_SPEC.to_owned(),
            serde_json::to_string(key).unwrap(),
        ),
        (engine::LABEL_RUN.to_owned(), "earlier".to_owned()),
    ])
}

/// The gauges recorded in this process, by (name, pool).
type GaugeMap = Arc<Mutex<HashMap<(String, String), f64>>>;

struct Recorder(GaugeMap);

struct GaugeCell(GaugeMap, (String, String));

impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        *self.0.lock().entry(self.1.clone()).or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self.0.lock().entry(self.1.clone()).or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.0.lock().insert(self.1.clone(), value);
    }
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let pool = key
            .labels()
            .find(|l| l.key() == "pool")
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        Gauge::from_arc(Arc::new(GaugeCell(
            self.0.clone(),
            (key.name().to_owned(), pool),
        )))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// The value gauge `name` of pool `key` was last set to.
fn gauge(name: &str, key: &NetworkKey) -> Option<f64> {
    static GAUGES: OnceLock<GaugeMap> = OnceLock::new();
    let map = GAUGES.get_or_init(|| {
        let map = GaugeMap::default();
        metrics::set_global_recorder(Recorder(map.clone()))
            .expect("only this test module installs a recorder");
        map
    });
    map.lock().get(&(name.to_owned(), key.id())).copied()
}

/// Installs the recorder before a test records anything it reads.
fn record_gauges() {
    let _ = gauge(m::IDLE, &key("none"));
}

/// The refill's end is visible to a supervisor: not while the manager runs, at once after
/// shutdown stopped the refill.
#[tokio::test(start_paused = true)]
async fn maintenance_ended_resolves_when_the_refill_stops_and_not_before() {
    let engine = FakeEngine::new();
    let pcpm = start(&engine, config("t-ended", 1, 2, 4, LONG)).await;
    let ended = pcpm.maintenance_ended();
    tokio::pin!(ended);
    assert!(
        tokio::time::timeout(Duration::from_secs(600), &mut ended)
            .await
            .is_err(),
        "resolved while the refill runs"
    );
    pcpm.shutdown().await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), &mut ended)
        .await
        .expect("resolves once the refill is gone");
}

#[tokio::test(start_paused = true)]
async fn fills_to_the_high_watermark_and_no_further() {
    let engine = FakeEngine::new();
    let pcpm = start(&engine, config("t-fill", 2, 4, 8, LONG)).await;
    let k = key("t-fill");
    pcpm.wait_idle(&k, 4, Duration::from_secs(1)).await.unwrap();
    // Minutes of refill ticks later, still exactly the high watermark.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.idle, stats.created, stats.creating),
        (4, 4, 0),
        "{stats:?}"
    );
    assert_eq!(engine.live().len(), 4);
    assert_eq!(engine.create_times().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn refills_to_the_high_watermark_once_idle_falls_under_the_low_one() {
    let engine = FakeEngine::new();
    let pcpm = start(&engine, config("t-low", 2, 4, 16, LONG)).await;
    let k = key("t-low");
    pcpm.wait_idle(&k, 4, Duration::from_secs(1)).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(pause(pcpm.acquire(&k).await.unwrap()));
    }
    // Two idle is not under the low watermark of two: no refill.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.idle, stats.leased, stats.created),
        (2, 2, 4),
        "{stats:?}"
    );
    // One idle is: back up to four idle, the three held ones aside.
    held.push(pause(pcpm.acquire(&k).await.unwrap()));
    settle().await;
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.idle, stats.leased, stats.created),
        (4, 3, 7),
        "{stats:?}"
    );
    assert_eq!(engine.live().len(), 7);
    for h in held {
        assert!(h.release().await.is_recycled());
    }
    pcpm.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_refill_stops_at_the_pool_maximum() {
    let engine = FakeEngine::new();
    let pcpm = start(&engine, config("t-max", 1, 2, 3, LONG)).await;
    let k = key("t-max");
    pcpm.wait_idle(&k, 2, Duration::from_secs(1)).await.unwrap();
    let a = pause(pcpm.acquire(&k).await.unwrap());
    let b = pause(pcpm.acquire(&k).await.unwrap());
    settle().await;
    let c = pause(pcpm.acquire(&k).await.unwrap());
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Three leased is the maximum: nothing idle, nothing created beyond it.
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.idle, stats.leased, stats.created),
        (0, 3, 3),
        "{stats:?}"
    );
    assert_eq!(engine.live().len(), 3);
    for h in [a, b, c] {
        assert!(h.release().await.is_recycled());
    }
}

#[tokio::test(start_paused = true)]
async fn create_failures_back_off_longer_each_time_up_to_a_bound() {
    let engine = FakeEngine::new();
    engine.fail_creates(true);
    let pcpm = start(&engine, config("t-backoff", 1, 1, 4, OnEmpty::Fallback)).await;
    let k = key("t-backoff");
    let began = Instant::now();
    // Acquires on the empty pool wake the refill each time: they must not defeat the back-off.
    for _ in 0..60 {
        assert!(matches!(pcpm.acquire(&k).await, Ok(Endpoint::Fallback(_))));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let times = engine.create_times();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let ms = |n| Duration::from_millis(n);
    assert_eq!(times[0], began, "the first creation waits for nothing");
    assert_eq!(
        gaps[..6],
        [ms(400), ms(800), ms(1600), ms(3200), ms(6400), ms(6400)],
        "{gaps:?}"
    );
    assert!(gaps.iter().all(|&g| g <= ms(6400)), "{gaps:?}");
    // 12.4 s of growing pauses, then one try per 6.4 s: 13 tries in the first minute.
    assert_eq!(times.len(), 13, "{gaps:?}");
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(stats.create_failures, 13, "{stats:?}");
    assert_eq!((stats.idle, stats.creating), (0, 0), "{stats:?}");

    // Recovered: the next try fills the pool and the failure count starts over.
    engine.fail_creates(false);
    pcpm.wait_idle(&k, 1, Duration::from_millis(6400))
        .await
        .unwrap();
    let h = pause(pcpm.acquire(&k).await.unwrap());
    engine.fail_creates(true);
    let before = engine.create_times().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let times = engine.create_times();
    assert_eq!(
        times.len(),
        before + 2,
        "one failure, then 400 ms later the next try"
    );
    assert_eq!(times[before + 1] - times[before], ms(400));
    drop(h);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_the_order_they_came() {
    let engine = FakeEngine::gated();
    let pcpm = start(&engine, config("t-fifo", 0, 1, 8, LONG)).await;
    let k = key("t-fifo");
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..4 {
        waiters.push(tokio::spawn({
            let (pcpm, k, served) = (pcpm.clone(), k.clone(), served.clone());
            async move {
                let h = pause(pcpm.acquire(&k).await.unwrap());
                served.lock().push(i);
                h
            }
        }));
        settle().await;
        assert_eq!(pcpm.stats(&k).unwrap().waiting, i + 1);
    }
    // Each creation let through serves the longest waiter, not the latest.
    for n in 1..=4 {
        engine.let_through(1);
        settle().await;
        assert_eq!(*served.lock(), (0..n).collect::<Vec<_>>());
    }
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.waiting, stats.leased, stats.idle),
        (0, 4, 0),
        "{stats:?}"
    );
    for w in waiters {
        assert!(w.await.unwrap().release().await.is_recycled());
    }
}

#[tokio::test(start_paused = true)]
async fn a_release_serves_the_first_waiter_with_that_container_before_any_newcomer() {
    let engine = FakeEngine::new();
    let pcpm = start(&engine, config("t-handover", 0, 1, 1, LONG)).await;
    let k = key("t-handover");
    let held = pause(pcpm.acquire(&k).await.unwrap());
    let id = held.id().to_owned();
    let mut first = std::pin::pin!(pcpm.acquire(&k));
    assert!(futures::poll!(first.as_mut()).is_pending());
    let mut second = std::pin::pin!(pcpm.acquire(&k));
    assert!(futures::poll!(second.as_mut()).is_pending());
    assert_eq!(pcpm.stats(&k).unwrap().waiting, 2);

    assert!(held.release().await.is_recycled());
    // Handed over, not made idle: a newcomer finds nothing to take.
    assert_eq!(pcpm.stats(&k).unwrap().idle, 0);
    let mut newcomer = std::pin::pin!(pcpm.acquire(&k));
    assert!(futures::poll!(newcomer.as_mut()).is_pending());
    let first = pause(first.await.unwrap());
    assert_eq!(first.id(), id);
    assert_eq!(first.previous_uses(), 1);
    assert!(futures::poll!(second.as_mut()).is_pending());
    // The next release goes to the second waiter, who came before the newcomer.
    assert!(first.release().await.is_recycled());
    assert!(futures::poll!(newcomer.as_mut()).is_pending());
    assert_eq!(pause(second.await.unwrap()).id(), id);
}

#[tokio::test(start_paused = true)]
async fn an_empty_pool_waits_to_its_deadline_then_reports_the_last_failure() {
    let engine = FakeEngine::new();
    engine.fail_creates(true);
    let wait = Duration::from_secs(5);
    let pcpm = start(&engine, config("t-exhaust", 0, 1, 4, OnEmpty::Wait(wait))).await;
    let k = key("t-exhaust");
    let began = Instant::now();
    let err = pcpm.acquire(&k).await.unwrap_err();
    assert_eq!(began.elapsed(), wait, "gave up early or late");
    let PcpmError::Exhausted {
        pool,
        waited,
        last_error,
    } = &err
    else {
        panic!("expected exhaustion, got {err:?}");
    };
    assert_eq!((pool.as_str(), *waited), (k.id().as_str(), wait));
    let last = last_error.as_deref().expect("the creations failed");
    assert!(
        matches!(last, PcpmError::Engine(EngineError::Docker { .. })),
        "{last:?}"
    );
    // The chain reaches the failure through `source`, not through the message.
    assert!(err.source().is_some());
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.exhausted, stats.waiting, stats.leased),
        (1, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_pool_configured_to_fall_back_gives_ordinary_networking_at_once() {
    let engine = FakeEngine::gated();
    let pcpm = start(&engine, config("t-fallback", 0, 1, 4, OnEmpty::Fallback)).await;
    let k = key("t-fallback");
    settle().await;
    let began = Instant::now();
    let endpoint = pcpm.acquire(&k).await.unwrap();
    assert_eq!(began.elapsed(), Duration::ZERO);
    let Endpoint::Fallback(got) = &endpoint else {
        panic!("expected a fallback, got {endpoint:?}");
    };
    assert_eq!(got, &k);
    assert_eq!(endpoint.network_mode(), "t-fallback");
    assert!(endpoint.release().await.is_none());
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.fallbacks, stats.waiting, stats.leased),
        (1, 0, 0),
        "{stats:?}"
    );
    // Once a creation completes, the pool serves pause containers again.
    engine.let_through(1);
    pcpm.wait_idle(&k, 1, Duration::from_secs(1)).await.unwrap();
    let h = pause(pcpm.acquire(&k).await.unwrap());
    assert_eq!(pcpm.stats(&k).unwrap().fallbacks, 1);
    assert!(h.release().await.is_recycled());
}

#[test]
fn a_fallback_carries_the_key_settings() {
    let k = NetworkKey {
        dns: vec!["10.0.0.53".into()],
        exposed_ports: vec![8080],
        ..key("t-apply")
    };
    let mut body = ContainerCreateBody::default();
    Endpoint::Fallback(k).apply(&mut body);
    let host = body.host_config.as_ref().unwrap();
    assert_eq!(host.network_mode.as_deref(), Some("t-apply"));
    assert_eq!(host.dns, Some(vec!["10.0.0.53".to_owned()]));
    assert_eq!(body.exposed_ports, Some(vec!["8080/tcp".to_owned()]));
}

#[tokio::test(start_paused = true)]
async fn a_clean_release_is_recycled_and_served_again() {
    let engine = FakeEngine::new();
    let pcpm = start(&engine, config("t-recycle", 0, 1, 1, LONG)).await;
    let k = key("t-recycle");
    for uses in 0..3 {
        let h = pause(pcpm.acquire(&k).await.unwrap());
        assert_eq!(h.previous_uses(), uses);
        assert_eq!(h.network_mode(), format!("container:{}", h.id()));
        assert!(h.release().await.is_recycled());
    }
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.recycled, stats.replaced, stats.created),
        (3, 0, 1),
        "{stats:?}"
    );
    assert!(engine.removed().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_release_that_left_something_behind_is_removed_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    tokio::fs::write(&hosts, "127.0.0.1 localhost\n")
        .await
        .unwrap();
    let engine = FakeEngine::new();
    engine.share_files(vec![hosts.clone()]);
    let pcpm = start(&engine, config("t-dirty", 0, 1, 1, LONG)).await;
    let k = key("t-dirty");

    type Dirty = Box<dyn Fn(&FakeEngine, &str)>;
    type Case = (&'static str, Dirty, fn(&ReplaceReason) -> bool);
    let cases: Vec<Case> = vec![
        (
            "socket",
            Box::new(|e, id| e.ns(id, |ns| ns.sockets.push("tcp 0.0.0.0:8080".into()))),
            |r| matches!(r, ReplaceReason::Sockets(s) if s == &["tcp 0.0.0.0:8080"]),
        ),
        (
            "process",
            Box::new(|e, id| e.ns(id, |ns| ns.processes.push(4242))),
            |r| matches!(r, ReplaceReason::Processes(p) if p == &[4242]),
        ),
        (
            "route",
            Box::new(|e, id| e.ns(id, |ns| ns.net = "a route added".into())),
            |r| matches!(r, ReplaceReason::NetworkChanged(_)),
        ),
        ("restart", Box::new(|e, id| e.stop(id, true)), |r| {
            matches!(r, ReplaceReason::PidChanged { .. })
        }),
        ("stopped", Box::new(|e, id| e.stop(id, false)), |r| {
            matches!(r, ReplaceReason::NotRunning)
        }),
        (
            "hosts",
            Box::new(move |_, _| std::fs::write(&hosts, "6.6.6.6 example.com\n").unwrap()),
            |r| matches!(r, ReplaceReason::FileChanged(p) if p.ends_with("hosts")),
        ),
    ];
    for (n, (what, dirty, expected)) in cases.into_iter().enumerate() {
        let h = pause(pcpm.acquire(&k).await.unwrap());
        let id = h.id().to_owned();
        dirty(&engine, &id);
        match h.release().await {
            Released::Replaced(reason) => assert!(expected(&reason), "{what}: {reason:?}"),
            Released::Recycled => panic!("{what}: a dirty pause container was recycled"),
        }
        settle().await;
        assert!(!engine.live().contains(&id), "{what}: {id} was not removed");
        let stats = pcpm.stats(&k).unwrap();
        assert_eq!(stats.replaced, n as u64 + 1, "{what}: {stats:?}");
        // The refill replaced it.
        pcpm.wait_idle(&k, 1, Duration::from_secs(1)).await.unwrap();
    }
    assert_eq!(pcpm.stats(&k).unwrap().recycled, 0);
}

#[tokio::test(start_paused = true)]
async fn idle_pause_containers_whose_process_exited_are_never_handed_out() {
    let engine = FakeEngine::new();
    let pcpm = start(&engine, config("t-exited", 0, 2, 2, LONG)).await;
    let k = key("t-exited");
    pcpm.wait_idle(&k, 2, Duration::from_secs(1)).await.unwrap();
    // A dockerd restart stops every pause container at once.
    let dead = engine.live();
    for id in &dead {
        engine.stop(id, false);
    }
    let h = pause(pcpm.acquire(&k).await.unwrap());
    assert!(!dead.contains(&h.id().to_owned()), "{} had died", h.id());
    settle().await;
    let mut removed = engine.removed();
    removed.sort();
    assert_eq!(removed, dead);
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!((stats.replaced, stats.leased), (2, 1), "{stats:?}");
    assert!(h.release().await.is_recycled());
}

#[tokio::test(start_paused = true)]
async fn the_refill_replaces_idle_pause_containers_that_died_before_anyone_asks() {
    let engine = FakeEngine::new();
    let pcpm = start(&engine, config("t-exited-refill", 2, 2, 2, LONG)).await;
    let k = key("t-exited-refill");
    pcpm.wait_idle(&k, 2, Duration::from_secs(1)).await.unwrap();
    let dead = engine.live()[0].clone();
    engine.stop(&dead, false);
    // The refill's next round, at most a second away on the paused clock.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(engine.removed(), std::slice::from_ref(&dead));
    assert!(!engine.live().contains(&dead));
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.idle, stats.replaced, stats.created),
        (2, 1, 3),
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_handle_dropped_without_release_is_removed_and_replaced() {
    let engine = FakeEngine::new();
    let pcpm = start(&engine, config("t-drop", 0, 1, 1, LONG)).await;
    let k = key("t-drop");
    let h = pause(pcpm.acquire(&k).await.unwrap());
    let id = h.id().to_owned();
    drop(h);
    pcpm.wait_idle(&k, 1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(engine.removed(), [id]);
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.replaced, stats.leased, stats.created),
        (1, 0, 2),
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_gives_up_leaves_no_container_behind() {
    let engine = FakeEngine::gated();
    let pcpm = start(&engine, config("t-giveup", 0, 1, 1, LONG)).await;
    let k = key("t-giveup");
    {
        let mut waiter = std::pin::pin!(pcpm.acquire(&k));
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        engine.let_through(1);
        settle().await;
        // Handed over, but its caller drops the future before it sees the container.
        assert_eq!(pcpm.stats(&k).unwrap().leased, 1);
    }
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.idle, stats.leased, stats.waiting),
        (1, 0, 0),
        "{stats:?}"
    );
    let h = pause(pcpm.acquire(&k).await.unwrap());
    assert!(h.release().await.is_recycled());
}

#[tokio::test(start_paused = true)]
async fn start_up_adopts_clean_leftovers_and_removes_the_rest() {
    let engine = FakeEngine::new();
    let name = "t-reconcile";
    let k = key(name);
    let image = crate::DEFAULT_PAUSE_IMAGE;
    let clean = engine.leftover(labels(name, &k), image, true);
    let dirty = engine.leftover(labels(name, &k), image, true);
    engine.ns(&dirty, |ns| ns.sockets.push("udp 0.0.0.0:53".into()));
    let stopped = engine.leftover(labels(name, &k), image, false);
    let other_image = engine.leftover(labels(name, &k), "busybox", true);
    let other_key = engine.leftover(labels(name, &key("elsewhere")), image, true);
    let no_spec = {
        let mut l = labels(name, &k);
        l.remove(engine::LABEL_KEY_SPEC);
        engine.leftover(l, image, true)
    };
    let someone_elses = engine.leftover(labels("t-other-manager", &k), image, true);

    let pcpm = start(&engine, config(name, 0, 1, 4, LONG)).await;
    assert_eq!(
        pcpm.reconciled(),
        Reconciled {
            adopted: 1,
            removed: 5
        }
    );
    let mut removed = engine.removed();
    removed.sort();
    let mut expected = vec![dirty, stopped, other_image, other_key, no_spec];
    expected.sort();
    assert_eq!(removed, expected);
    settle().await;
    // The adopted one fills the pool: nothing created.
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.adopted, stats.idle, stats.created),
        (1, 1, 0),
        "{stats:?}"
    );
    let h = pause(pcpm.acquire(&k).await.unwrap());
    assert_eq!(h.id(), clean);
    assert!(h.release().await.is_recycled());
    assert!(engine.live().contains(&someone_elses));
}

#[tokio::test(start_paused = true)]
async fn start_up_reports_every_leftover_it_could_not_remove() {
    let engine = FakeEngine::new();
    let name = "t-reconcile-fail";
    let k = key(name);
    let a = engine.leftover(labels(name, &k), "busybox", true);
    let b = engine.leftover(labels(name, &k), "busybox", true);
    let c = engine.leftover(labels(name, &k), "busybox", true);
    engine.fail_remove(&a);
    engine.fail_remove(&c);
    let err = Pcpm::with_engine(engine.clone(), config(name, 0, 1, 4, LONG))
        .await
        .unwrap_err();
    let PcpmError::Teardown(errors) = &err else {
        panic!("expected a teardown error, got {err:?}");
    };
    assert_eq!(errors.len(), 2, "{err}");
    // It kept going past the first failure.
    assert_eq!(engine.removed(), [b]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_removes_everything_and_refuses_new_acquires() {
    let engine = FakeEngine::new();
    let name = "t-shutdown";
    // At its maximum once both are leased: the waiter below gets no creation.
    let pcpm = start(&engine, config(name, 0, 2, 2, LONG)).await;
    let k = key(name);
    pcpm.wait_idle(&k, 2, Duration::from_secs(1)).await.unwrap();
    let held = pause(pcpm.acquire(&k).await.unwrap());
    let other = key("t-shutdown-other");
    let from_other = pause(pcpm.acquire(&other).await.unwrap());
    let _held_too = pause(pcpm.acquire(&k).await.unwrap());
    let mut waiter = std::pin::pin!(pcpm.acquire(&k));
    settle().await;
    assert!(futures::poll!(waiter.as_mut()).is_pending());
    assert!(!engine.live().is_empty());

    pcpm.shutdown().await.unwrap();
    assert!(engine.live().is_empty(), "left: {:?}", engine.live());
    assert!(matches!(waiter.await, Err(PcpmError::Closed)));
    assert!(matches!(pcpm.acquire(&k).await, Err(PcpmError::Closed)));
    assert!(matches!(pcpm.acquire(&other).await, Err(PcpmError::Closed)));
    // Handed-out handles find their pool closed; nothing comes back to life.
    assert!(matches!(
        held.release().await,
        Released::Replaced(ReplaceReason::ShutDown)
    ));
    drop(from_other);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(engine.live().is_empty());
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (stats.idle, stats.creating, stats.waiting),
        (0, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_keeps_going_past_failed_removals_and_reports_them() {
    let engine = FakeEngine::new();
    let name = "t-shutdown-fail";
    let pcpm = start(&engine, config(name, 0, 3, 3, LONG)).await;
    let k = key(name);
    pcpm.wait_idle(&k, 3, Duration::from_secs(1)).await.unwrap();
    let live = engine.live();
    engine.fail_remove(&live[1]);
    let err = pcpm.shutdown().await.unwrap_err();
    let PcpmError::Teardown(errors) = &err else {
        panic!("expected a teardown error, got {err:?}");
    };
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(engine.live(), [live[1].clone()]);
}

#[tokio::test(start_paused = true)]
async fn stats_and_gauges_follow_every_step() {
    record_gauges();
    let engine = FakeEngine::gated();
    let name = "t-gauges";
    let pcpm = start(&engine, config(name, 1, 2, 4, LONG)).await;
    let k = key(name);
    let check = |idle: usize, leased: usize| {
        let stats = pcpm.stats(&k).unwrap();
        assert_eq!((stats.idle, stats.leased), (idle, leased), "{stats:?}");
        assert_eq!(gauge(m::IDLE, &k), Some(idle as f64));
        assert_eq!(gauge(m::LEASED, &k), Some(leased as f64));
        // Every container the engine holds is idle, leased or being made ready.
        assert!(
            engine.live().len() <= stats.idle + stats.leased + stats.creating,
            "{stats:?} {:?}",
            engine.live()
        );
    };
    settle().await;
    assert_eq!(pcpm.stats(&k).unwrap().creating, 2);
    check(0, 0);
    engine.let_through(2);
    settle().await;
    check(2, 0);
    let a = pause(pcpm.acquire(&k).await.unwrap());
    check(1, 1);
    let b = pause(pcpm.acquire(&k).await.unwrap());
    check(0, 2);
    settle().await;
    assert_eq!(pcpm.stats(&k).unwrap().creating, 2);
    assert!(a.release().await.is_recycled());
    check(1, 1);
    engine.ns(b.id(), |ns| ns.sockets.push("tcp".into()));
    assert!(!b.release().await.is_recycled());
    check(1, 0);
    engine.let_through(2);
    settle().await;
    check(3, 0);
    let stats = pcpm.stats(&k).unwrap();
    assert_eq!(
        (
            stats.created,
            stats.recycled,
            stats.replaced,
            stats.creating
        ),
        (4, 1, 1, 0),
        "{stats:?}"
    );
    assert_eq!(engine.live().len(), 3);
    pcpm.shutdown().await.unwrap();
    check(0, 0);
}

#[test]
fn the_backoff_doubles_from_400_ms_to_at_most_6400_ms() {
    let ms: Vec<u128> = (1..=8).map(|f| backoff(f).as_millis()).collect();
    assert_eq!(ms, [400, 800, 1600, 3200, 6400, 6400, 6400, 6400]);
}

#[tokio::test(start_paused = true)]
async fn a_manager_dropped_without_shutdown_stops_refilling_and_is_freed() {
    let engine = FakeEngine::new();
    let pcpm = start(&engine, config("t-drop", 2, 4, 8, LONG)).await;
    let k = key("t-drop");
    pcpm.wait_idle(&k, 4, Duration::from_secs(1)).await.unwrap();
    let pool = Arc::downgrade(&pcpm.pool(&k));
    let shared = Arc::downgrade(&pcpm.shared);
    drop(pcpm);
    settle().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(shared.upgrade().is_none(), "the manager is freed");
    assert!(
        pool.upgrade().is_none(),
        "the refill task ended and let go of its pool"
    );
    // Nothing was created after the drop; what exists stays for the next reconcile.
    assert_eq!(engine.create_times().len(), 4);
    assert_eq!(engine.live().len(), 4);
}

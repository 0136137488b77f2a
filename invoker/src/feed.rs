//! Consuming `invoker<N>` (contract §2.4) with bounded in-flight work and safe commits.
//!
//! At most `maxPeek` activations are held at once; further messages stay in Kafka. An
//! activation holds its permit until its acks were accepted by the broker and its record by
//! the database, however long either is down (they are retried, see [`crate::invoke`]), so
//! while a component is down the feed takes no more than it already holds and memory stays
//! bounded. Unlike the Scala invoker, which commits right after each poll (a crash loses what
//! it had peeked), an offset is committed only once every activation before it is finished.
//! After a crash the broker re-delivers from the last commit; a re-delivered activation whose
//! record exists is answered from the record instead of running again. Messages that were
//! already in the topic when the invoker started are the only ones that can be re-deliveries,
//! so only those are looked up.
//!
//! On shutdown the feed stops taking messages and waits for the activations in flight until
//! the grace period ends; then it asks the rest to end (with system error activations, acks
//! and records), waits [`END_BOUND`] more, and gives up what is still left without committing
//! it (the broker re-delivers it to the next start).

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::invoke::Invoker;

/// How long after the grace period the activations it ended get for their error acks and
/// records.
pub const END_BOUND: Duration = Duration::from_secs(5);
/// How long the feed may go without showing it consumes before the health pings stop: well
/// above its one-second beat, below the controller's 10 s timeout for a silent invoker, so
/// that a stuck feed is taken offline about as fast as a dead invoker.
pub const STALL_BOUND: Duration = Duration::from_secs(5);
/// How often a waiting feed shows it is alive.
const BEAT: Duration = Duration::from_secs(1);

/// Whether the feed is consuming, for the health pings (contract §3.4: an invoker that is not
/// consuming must not announce itself healthy). The feed beats while it waits for a message
/// (Kafka is polled) or for room (all of `maxPeek` is in use), and when it takes a message; it
/// does not beat while each receive fails, nor when its loop is stuck, nor after its task ended
/// or panicked.
#[derive(Debug, Default)]
pub struct FeedHealth {
    state: Mutex<Beats>,
}

#[derive(Debug, Default)]
struct Beats {
    /// The last sign of life; `None` before the feed started.
    beat: Option<Instant>,
    /// The last failed receive.
    failed: Option<Instant>,
    ended: bool,
}

impl FeedHealth {
    /// A message was taken, or the feed waits for room.
    fn took(&self) {
        self.state.lock().beat = Some(Instant::now());
    }

    /// The feed has been waiting in a receive for a beat: alive, unless a receive failed
    /// during the last beat (then Kafka is not answering and the beat is not given).
    fn waiting(&self) {
        let mut st = self.state.lock();
        if st.failed.is_none_or(|t| t.elapsed() > BEAT) {
            st.beat = Some(Instant::now());
        }
    }

    fn failed(&self) {
        self.state.lock().failed = Some(Instant::now());
    }

    fn end(&self) {
        self.state.lock().ended = true;
    }

    /// Whether the feed showed it consumes within the last `bound`.
    pub fn consuming(&self, bound: Duration) -> bool {
        let st = self.state.lock();
        !st.ended && st.beat.is_some_and(|b| b.elapsed() <= bound)
    }
}

/// Marks the feed ended however its task ends: returned, panicked or aborted.
struct Ending(Arc<FeedHealth>);

impl Drop for Ending {
    fn drop(&mut self) {
        self.0.end();
    }
}
/// Offsets handed out and not yet done, per partition.
#[derive(Debug, Default)]
struct Offsets {
    in_flight: BTreeMap<i32, BTreeSet<i64>>,
    /// Next offset after the highest one seen, per partition.
    next: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
}

impl Offsets {
    fn start(&mut self, partition: i32, offset: i64) {
        self.in_flight.entry(partition).or_default().insert(offset);
        let next = self.next.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
    }

    fn done(&mut self, partition: i32, offset: i64) {
        if let Some(s) = self.in_flight.get_mut(&partition) {
            s.remove(&offset);
        }
    }

    /// Per partition, the offset to commit if it moved: the lowest in flight, or the next.
    fn take_commits(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&p, &next) in &self.next {
            let safe = self
                .in_flight
                .get(&p)
                .and_then(|s| s.iter().next().copied())
                .unwrap_or(next);
            if self.committed.get(&p) != Some(&safe) {
                out.push((p, safe));
            }
        }
        for &(p, o) in &out {
            self.committed.insert(p, o);
        }
        out
    }
}

/// What the feed does with one message; the [`Invoker`] in production, fakes in tests.
#[async_trait::async_trait]
pub trait Handler: Clone + Send + Sync + 'static {
    /// Processes one message; returns once its acks and record are delivered (the feed then
    /// commits it). After `stop` is cancelled it should end the activation early.
    async fn process(&self, payload: Vec<u8>, maybe_redelivered: bool, stop: CancellationToken);
}

#[async_trait::async_trait]
impl Handler for Arc<Invoker> {
    async fn process(&self, payload: Vec<u8>, maybe_redelivered: bool, stop: CancellationToken) {
        Invoker::process(self, &payload, maybe_redelivered, &stop).await;
    }
}

/// Gives the permit back and counts the activation out of the in-flight gauge however its
/// task ends: finished, panicked or aborted.
struct Held {
    _permit: OwnedSemaphorePermit,
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::IN_FLIGHT).decrement(1.0);
    }
}

/// The activations in flight, their permits and their offsets.
struct Dispatch<H> {
    handler: H,
    offsets: Arc<Mutex<Offsets>>,
    permits: Arc<Semaphore>,
    tasks: JoinSet<()>,
    /// Cancelled when the grace period ends.
    stop: CancellationToken,
}

impl<H: Handler> Dispatch<H> {
    fn new(handler: H, max_peek: usize) -> Self {
        Self {
            handler,
            offsets: Arc::default(),
            permits: Arc::new(Semaphore::new(max_peek.max(1))),
            tasks: JoinSet::new(),
            stop: CancellationToken::new(),
        }
    }

    async fn permit(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Starts one message's activation. Its offset is done (committable) when the handler
    /// returns; a panic that escapes the handler's own guard is logged and committed too, so
    /// that it cannot stall the partition.
    fn dispatch(
        &mut self,
        permit: OwnedSemaphorePermit,
        partition: i32,
        offset: i64,
        payload: Vec<u8>,
        maybe_redelivered: bool,
    ) {
        self.offsets.lock().start(partition, offset);
        metrics::gauge!(crate::metrics::IN_FLIGHT).increment(1.0);
        let held = Held { _permit: permit };
        let (handler, offsets, stop) = (
            self.handler.clone(),
            self.offsets.clone(),
            self.stop.clone(),
        );
        self.tasks.spawn(async move {
            let _held = held;
            let work = handler.process(payload, maybe_redelivered, stop);
            if AssertUnwindSafe(work).catch_unwind().await.is_err() {
                metrics::counter!(crate::metrics::ACTIVATION_PANICS_TOTAL).increment(1);
                tracing::error!(
                    partition,
                    offset,
                    "an activation panicked outside its guard; committed without its acks"
                );
            }
            offsets.lock().done(partition, offset);
        });
        // Finished tasks keep their slot in the set until joined.
        while self.tasks.try_join_next().is_some() {}
    }

    /// Waits for the activations in flight until `grace` has passed; then asks the rest to
    /// end, waits [`END_BOUND`] more and aborts what is left (their offsets stay
    /// uncommitted). Returns how many were aborted.
    async fn drain(&mut self, grace: Duration) -> usize {
        let tasks = &mut self.tasks;
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_ok() {
            return 0;
        }
        tracing::warn!(
            left = self.tasks.len(),
            grace_ms = grace.as_millis(),
            "the shutdown grace period is over; ending the activations left"
        );
        self.stop.cancel();
        let tasks = &mut self.tasks;
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(END_BOUND, all).await.is_ok() {
            return 0;
        }
        let left = self.tasks.len();
        tracing::error!(
            left,
            "activations still without their acks or record at exit; left uncommitted for re-delivery"
        );
        metrics::counter!(crate::metrics::ABANDONED_AT_EXIT_TOTAL).increment(left as u64);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        left
    }
}

/// Runs the feed until `cancel`; then stops taking messages, drains the activations in flight
/// within `grace` (see the module's doc), and commits what they finished. Reports whether it
/// consumes to `health`.
pub async fn run<H: Handler>(
    handler: H,
    consumer: Arc<StreamConsumer>,
    topic: String,
    max_peek: usize,
    grace: Duration,
    health: Arc<FeedHealth>,
    cancel: CancellationToken,
) {
    let _ending = Ending(health.clone());
    let mut dispatch = Dispatch::new(handler, max_peek);
    let offsets = dispatch.offsets.clone();
    // Messages below the end offset at start-up may have been seen by an earlier run.
    let redelivery_below: Option<i64> = {
        let c = consumer.clone();
        let t = topic.clone();
        tokio::task::spawn_blocking(move || c.fetch_watermarks(&t, 0, Duration::from_secs(10)))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|(_, high)| high)
    };
    tracing::info!(topic, max_peek, ?redelivery_below, "feed started");
    // Commits go on while the feed drains: an activation finished during the grace period is
    // committed even if the process is killed before the end.
    let committed = CancellationToken::new();
    let committer = {
        let (consumer, offsets, topic, stop) = (
            consumer.clone(),
            offsets.clone(),
            topic.clone(),
            committed.clone(),
        );
        tokio::spawn(async move {
            loop {
                let stop = tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => false,
                    () = stop.cancelled() => true,
                };
                if stop {
                    return;
                }
                commit(&consumer, &offsets, &topic);
            }
        })
    };
    let mut beat = tokio::time::interval(BEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.took();
    loop {
        let permit = {
            let wait = dispatch.permit();
            tokio::pin!(wait);
            loop {
                // Biased: a permit at hand is taken before any beat, so that a feed whose
                // receives keep failing does not beat here.
                tokio::select! {
                    biased;
                    p = &mut wait => break Some(p),
                    _ = beat.tick() => health.took(),
                    () = cancel.cancelled() => break None,
                }
            }
        };
        let Some(permit) = permit else { break };
        let msg = {
            let recv = consumer.recv();
            tokio::pin!(recv);
            loop {
                tokio::select! {
                    m = &mut recv => break Some(m),
                    _ = beat.tick() => health.waiting(),
                    () = cancel.cancelled() => break None,
                }
            }
        };
        let Some(msg) = msg else { break };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                health.failed();
                tracing::warn!(error = %e, "kafka receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        health.took();
        let (partition, offset) = (msg.partition(), msg.offset());
        let payload = msg.payload().unwrap_or_default().to_vec();
        drop(msg);
        let maybe_redelivered = redelivery_below.is_none_or(|high| offset < high);
        dispatch.dispatch(permit, partition, offset, payload, maybe_redelivered);
    }
    tracing::info!(
        in_flight = dispatch.tasks.len(),
        grace_ms = grace.as_millis(),
        "feed stopped taking messages; draining"
    );
    dispatch.drain(grace).await;
    committed.cancel();
    let _ = committer.await;
    // The last commit waits for the broker's answer: off the async workers.
    let last = tokio::task::spawn_blocking(move || {
        commit_with(&consumer, &offsets, &topic, CommitMode::Sync);
    })
    .await;
    if let Err(e) = last {
        tracing::warn!(error = %e, "the last offset commit was lost");
    }
}

fn commit(consumer: &StreamConsumer, offsets: &Mutex<Offsets>, topic: &str) {
    commit_with(consumer, offsets, topic, CommitMode::Async);
}

fn commit_with(consumer: &StreamConsumer, offsets: &Mutex<Offsets>, topic: &str, mode: CommitMode) {
    let moves = offsets.lock().take_commits();
    if moves.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in moves {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::warn!(error = %e, "offset commit failed");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::invoke::Backoff;

    /// An activation's work as its payload says: `quick` delivers at once; `sink` delivers
    /// through a sink that fails while it is down (retried with back-off, as acks and records
    /// are); `panic` panics; `slow` runs until stopped, then delivers its error; `stubborn`
    /// ignores the stop and never ends.
    #[derive(Clone, Default)]
    struct Fake {
        sink_up: Arc<AtomicBool>,
        delivered: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl Handler for Fake {
        async fn process(&self, payload: Vec<u8>, _: bool, stop: CancellationToken) {
            let what = String::from_utf8(payload).unwrap();
            match what.as_str() {
                "quick" => {}
                "sink" => {
                    let mut backoff =
                        Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
                    while !self.sink_up.load(Ordering::SeqCst) {
                        tokio::time::sleep(backoff.next_pause()).await;
                    }
                }
                "panic" => panic!("a bug"),
                "slow" => {
                    stop.cancelled().await;
                    self.delivered.lock().push("slow ended".into());
                    return;
                }
                "stubborn" => std::future::pending().await,
                other => panic!("{other}"),
            }
            self.delivered.lock().push(what);
        }
    }

    async fn start(d: &mut Dispatch<Fake>, offset: i64, what: &str) {
        let permit = d.permit().await;
        d.dispatch(permit, 0, offset, what.as_bytes().to_vec(), false);
    }

    /// While the sink is down its activations keep their permits (the feed takes nothing
    /// more) and their offsets uncommitted, also behind one that finished; once it is back
    /// they finish and everything is committed.
    #[tokio::test(start_paused = true)]
    async fn offsets_wait_for_a_sink_that_fails_then_recovers() {
        let fake = Fake::default();
        let mut d = Dispatch::new(fake.clone(), 3);
        start(&mut d, 10, "sink").await;
        start(&mut d, 11, "quick").await;
        start(&mut d, 12, "sink").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(d.offsets.lock().take_commits(), [(0, 10)]);
        assert_eq!(
            d.permits.available_permits(),
            1,
            "the retrying two hold theirs"
        );
        start(&mut d, 13, "sink").await;
        assert_eq!(d.permits.available_permits(), 0);
        let blocked = tokio::time::timeout(Duration::from_secs(30), d.permit()).await;
        assert!(
            blocked.is_err(),
            "no permit while maxPeek activations are held"
        );
        fake.sink_up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(d.offsets.lock().take_commits(), [(0, 14)]);
        assert_eq!(d.permits.available_permits(), 3);
        assert_eq!(d.drain(Duration::from_secs(1)).await, 0);
    }

    /// A panic that escapes the handler does not stall the partition or keep its permit.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_does_not_stall_commits() {
        let mut d = Dispatch::new(Fake::default(), 2);
        start(&mut d, 0, "panic").await;
        start(&mut d, 1, "quick").await;
        assert_eq!(d.drain(Duration::from_secs(1)).await, 0);
        assert_eq!(d.offsets.lock().take_commits(), [(0, 2)]);
        assert_eq!(d.permits.available_permits(), 2);
    }

    /// At the end of the grace period the activations left are told to stop; one that ends
    /// (with its error) is committed, one that does not end within the bound is aborted and
    /// stays uncommitted; the drain returns at grace + bound, not later.
    #[tokio::test(start_paused = true)]
    async fn the_grace_period_ends_what_is_left() {
        let fake = Fake::default();
        let mut d = Dispatch::new(fake.clone(), 4);
        start(&mut d, 0, "quick").await;
        start(&mut d, 1, "slow").await;
        start(&mut d, 2, "stubborn").await;
        start(&mut d, 3, "quick").await;
        let began = Instant::now();
        assert_eq!(d.drain(Duration::from_secs(3)).await, 1);
        assert_eq!(began.elapsed(), Duration::from_secs(3) + END_BOUND);
        let mut delivered = fake.delivered.lock().clone();
        delivered.sort();
        assert_eq!(delivered, ["quick", "quick", "slow ended"]);
        assert_eq!(d.offsets.lock().take_commits(), [(0, 2)]);
        assert_eq!(d.permits.available_permits(), 4);
    }

    /// Activations that finish within the grace period are not stopped, and the drain
    /// returns as soon as they have.
    #[tokio::test(start_paused = true)]
    async fn a_drain_within_the_grace_period_stops_nothing() {
        let fake = Fake {
            sink_up: Arc::new(AtomicBool::new(false)),
            ..Fake::default()
        };
        let mut d = Dispatch::new(fake.clone(), 2);
        start(&mut d, 0, "sink").await;
        let up = fake.sink_up.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            up.store(true, Ordering::SeqCst);
        });
        let began = Instant::now();
        assert_eq!(d.drain(Duration::from_secs(20)).await, 0);
        assert!(
            began.elapsed() < Duration::from_secs(8),
            "{:?}",
            began.elapsed()
        );
        assert!(!d.stop.is_cancelled());
        assert_eq!(d.offsets.lock().take_commits(), [(0, 1)]);
    }

    /// The feed counts as consuming only after it started, while it beats, not while every
    /// receive fails, and never after it ended.
    #[tokio::test(start_paused = true)]
    async fn the_feed_consumes_while_it_beats_and_not_while_kafka_fails() {
        let h = Arc::new(FeedHealth::default());
        assert!(!h.consuming(STALL_BOUND), "not before it started");
        h.took();
        assert!(h.consuming(STALL_BOUND));
        // Waiting in a receive that does not fail keeps it consuming.
        for _ in 0..10 {
            tokio::time::sleep(BEAT).await;
            h.waiting();
        }
        assert!(h.consuming(STALL_BOUND));
        // Every receive fails (every 200 ms): the beats stop, and so, after the bound, does
        // consuming.
        for _ in 0..30 {
            h.failed();
            tokio::time::sleep(Duration::from_millis(200)).await;
            h.waiting();
        }
        assert!(!h.consuming(STALL_BOUND));
        // Kafka answers again, with no message to give: a beat after the last failure.
        tokio::time::sleep(BEAT * 2).await;
        h.waiting();
        assert!(h.consuming(STALL_BOUND));
        // A stuck loop gives no beat.
        tokio::time::sleep(STALL_BOUND + BEAT).await;
        assert!(!h.consuming(STALL_BOUND));
        h.took();
        drop(Ending(h.clone()));
        assert!(!h.consuming(STALL_BOUND), "never after the task ended");
    }

    /// A feed task that panics is marked ended by its guard.
    #[tokio::test]
    async fn a_feed_that_panics_is_not_consuming() {
        let h = Arc::new(FeedHealth::default());
        let task = tokio::spawn({
            let h = h.clone();
            async move {
                let _ending = Ending(h.clone());
                h.took();
                panic!("a bug in the feed");
            }
        });
        assert!(task.await.is_err());
        assert!(!h.consuming(STALL_BOUND));
    }

    #[test]
    fn commits_only_below_the_lowest_unfinished() {
        let mut o = Offsets::default();
        for off in 10..15 {
            o.start(0, off);
        }
        o.done(0, 11);
        o.done(0, 12);
        assert_eq!(o.take_commits(), [(0, 10)]);
        o.done(0, 10);
        assert_eq!(o.take_commits(), [(0, 13)]);
        assert!(o.take_commits().is_empty(), "nothing moved");
        o.done(0, 14);
        o.done(0, 13);
        assert_eq!(o.take_commits(), [(0, 15)]);
    }
}

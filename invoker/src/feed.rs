//! Consuming `invoker<N>` (contract §2.4) with bounded in-flight work and safe commits.
//!
//! At most `maxPeek` activations are held at once; further messages stay in Kafka. Unlike the
//! Scala invoker, which commits right after each poll (a crash loses what it had peeked), an
//! offset is committed only once every activation before it has been acknowledged and stored.
//! After a crash the broker re-delivers from the last commit; a re-delivered activation whose
//! record exists is answered from the record instead of running again. Messages that were
//! already in the topic when the invoker started are the only ones that can be re-deliveries,
//! so only those are looked up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::invoke::Invoker;
use openwhisk::messages::ActivationMessage;

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

/// Runs the feed until `cancel`; then stops taking messages, waits for the activations in
/// flight, and commits what they finished.
pub async fn run(
    invoker: Arc<Invoker>,
    consumer: Arc<StreamConsumer>,
    topic: String,
    max_peek: usize,
    cancel: CancellationToken,
) {
    let offsets = Arc::new(Mutex::new(Offsets::default()));
    let permits = Arc::new(Semaphore::new(max_peek.max(1)));
    let tasks = TaskTracker::new();
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
    let committer = {
        let (consumer, offsets, topic, cancel) = (
            consumer.clone(),
            offsets.clone(),
            topic.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            loop {
                let stop = tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => false,
                    () = cancel.cancelled() => true,
                };
                commit(&consumer, &offsets, &topic);
                if stop {
                    return;
                }
            }
        })
    };
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = cancel.cancelled() => break,
        };
        let msg = tokio::select! {
            m = consumer.recv() => m,
            () = cancel.cancelled() => break,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (partition, offset) = (msg.partition(), msg.offset());
        let payload = msg.payload().unwrap_or_default().to_vec();
        drop(msg);
        offsets.lock().start(partition, offset);
        metrics::gauge!(crate::metrics::IN_FLIGHT).increment(1.0);
        let maybe_redelivered = redelivery_below.is_none_or(|high| offset < high);
        let (invoker, offsets) = (invoker.clone(), offsets.clone());
        tasks.spawn(async move {
            match ActivationMessage::parse(&payload) {
                Ok(m) => {
                    let answered = maybe_redelivered
                        && invoker.answer_from_record(&m).await.unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot look up an earlier record; running the activation");
                            false
                        });
                    if !answered {
                        invoker.handle(m).await;
                    }
                }
                Err(e) => {
                    let text = String::from_utf8_lossy(&payload);
                    let head: String = text.chars().take(200).collect();
                    tracing::error!(error = %e, offset, message = %head, "malformed activation message skipped");
                    metrics::counter!(crate::metrics::MALFORMED_TOTAL).increment(1);
                }
            }
            offsets.lock().done(partition, offset);
            metrics::gauge!(crate::metrics::IN_FLIGHT).decrement(1.0);
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
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
    use super::Offsets;

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

//! Writing activation records in batches (contract §4.1: `POST /<activations>/_bulk_docs`).
//!
//! Records arrive from many activations at once; one writer task takes what is queued (up to
//! [`MAX_BATCH`], waiting at most [`LINGER`] for more after the first) and writes it in one
//! request. Each caller waits for its own record's outcome, so the feed commits an offset only
//! after the database answered for the record.
//!
//! While the database is unreachable or answers the request with an error, the batch is
//! retried with capped exponential back-off for as long as it takes: there is no give-up, so a
//! record is never dropped while its activation's offset could still be committed. The store
//! is reported down meanwhile ([`Components`]), which stops the health pings. The memory this
//! holds is bounded by the feed: every waiting caller holds one of its `maxPeek` permits.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::invoke::{Backoff, Component, Components};
use openwhisk::couchdb::{BulkResult, CouchDb, CouchDbError};

pub const MAX_BATCH: usize = 100;
pub const LINGER: Duration = Duration::from_millis(2);
/// The first pause after a failed batch; it doubles up to [`MAX_RETRY_PAUSE`].
pub const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(100);
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// What became of a record. Every outcome is an answer of the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Written,
    /// A record with this id exists already (a re-delivered activation ran twice).
    AlreadyThere,
    /// The database answered with an error for this document (not for the request):
    /// retrying the same document would get the same answer.
    Refused(String),
}

/// The writer is gone (the runtime is shutting down): the record's fate is unknown.
#[derive(Debug, thiserror::Error)]
#[error("the record writer has stopped")]
pub struct WriterStopped;

/// The `_bulk_docs` call the writer makes; CouchDB in production, fakes in tests.
#[async_trait::async_trait]
pub trait BulkWriter: Send + Sync + 'static {
    async fn bulk_docs(&self, db: &str, docs: &[Value]) -> Result<Vec<BulkResult>, CouchDbError>;
}

#[async_trait::async_trait]
impl BulkWriter for CouchDb {
    async fn bulk_docs(&self, db: &str, docs: &[Value]) -> Result<Vec<BulkResult>, CouchDbError> {
        CouchDb::bulk_docs(self, db, docs).await
    }
}

type Job = (Value, oneshot::Sender<Stored>);

/// The batching writer; cheap to clone.
#[derive(Clone, Debug)]
pub struct RecordStore {
    tx: mpsc::Sender<Job>,
    /// The writer task, until the service takes it to watch it.
    writer: Arc<parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl RecordStore {
    /// Starts the writer task for database `db`; it reports the store's state to
    /// `components`.
    pub fn start(couch: impl BulkWriter, db: String, components: Arc<Components>) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let writer = tokio::spawn(writer(couch, db, rx, components));
        Self {
            tx,
            writer: Arc::new(parking_lot::Mutex::new(Some(writer))),
        }
    }

    /// The writer task, once: it ends only when every handle is dropped, so its end while the
    /// invoker runs (a panic) means no record would be stored again.
    pub fn take_writer(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.writer.lock().take()
    }

    /// Stores one record and waits until the database answered for it.
    pub async fn store(&self, doc: Value) -> Result<Stored, WriterStopped> {
        let (done, outcome) = oneshot::channel();
        self.tx.send((doc, done)).await.map_err(|_| WriterStopped)?;
        outcome.await.map_err(|_| WriterStopped)
    }
}

async fn writer(
    couch: impl BulkWriter,
    db: String,
    mut rx: mpsc::Receiver<Job>,
    components: Arc<Components>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(linger, rx.recv()).await {
                Ok(Some(job)) => batch.push(job),
                _ => break,
            }
        }
        let mut docs: Vec<Value> = batch.iter().map(|(d, _)| d.clone()).collect();
        let mut backoff = Backoff::new(FIRST_RETRY_PAUSE, MAX_RETRY_PAUSE);
        let results = loop {
            match couch.bulk_docs(&db, &docs).await {
                Ok(r) => break r,
                // The database refused the request itself (too large, say): retrying it would
                // get the same answer, and would hold every record behind it. Each record is
                // written on its own instead, and one refused alone is that record's answer.
                Err(e) if refuses_the_request(&e) => {
                    components.set(Component::Store, false);
                    tracing::warn!(
                        error = %openwhisk::errors::chain(&e),
                        records = docs.len(),
                        "the database refused a batch of activation records; writing them one by one"
                    );
                    for (doc, done) in batch.drain(..) {
                        let outcome = write_alone(&couch, &db, &doc, &components).await;
                        if let Stored::Refused(why) = &outcome {
                            let id = doc.get("_id").and_then(Value::as_str).unwrap_or("");
                            tracing::error!(id, why, "activation record refused");
                        }
                        let _ = done.send(outcome);
                    }
                    break Vec::new();
                }
                Err(e) => {
                    components.set(Component::Store, true);
                    let pause = backoff.next_pause();
                    tracing::warn!(
                        error = %openwhisk::errors::chain(&e),
                        records = docs.len(),
                        retry_in_ms = pause.as_millis(),
                        "storing activation records; retrying"
                    );
                    tokio::time::sleep(pause).await;
                    // What queued meanwhile goes with the retry: after an outage the backlog
                    // is written in a few requests, not one per pause.
                    while batch.len() < MAX_BATCH {
                        let Ok(job) = rx.try_recv() else { break };
                        docs.push(job.0.clone());
                        batch.push(job);
                    }
                }
            }
        };
        if batch.is_empty() {
            continue;
        }
        components.set(Component::Store, false);
        metrics::histogram!(crate::metrics::RECORD_BATCH_SIZE).record(docs.len() as f64);
        for (i, (doc, done)) in batch.into_iter().enumerate() {
            let id = doc.get("_id").and_then(Value::as_str).unwrap_or("");
            let outcome = outcome_of(&results, id, i);
            if let Stored::Refused(why) = &outcome {
                tracing::error!(id, why, "activation record refused");
            }
            let _ = done.send(outcome);
        }
    }
}

/// The database's answer for the document `id` (the `i`th sent).
fn outcome_of(results: &[BulkResult], id: &str, i: usize) -> Stored {
    let r = results.iter().find(|r| r.id == id).or(results.get(i));
    match r.and_then(|r| r.error.as_deref()) {
        None => Stored::Written,
        Some("conflict") => Stored::AlreadyThere,
        Some(e) => Stored::Refused(format!(
            "{e}: {}",
            r.and_then(|r| r.reason.clone()).unwrap_or_default()
        )),
    }
}

/// A 4xx answer to the request (but 408 and 429, which say "later"): the request itself will
/// never be taken.
fn refuses_the_request(e: &CouchDbError) -> bool {
    matches!(e, CouchDbError::Status { status, .. }
        if status.is_client_error()
            && *status != StatusCode::REQUEST_TIMEOUT
            && *status != StatusCode::TOO_MANY_REQUESTS)
}

/// One record on its own, retried with back-off while the database is unreachable; refused
/// when the database refuses the request.
async fn write_alone(
    couch: &impl BulkWriter,
    db: &str,
    doc: &Value,
    components: &Components,
) -> Stored {
    let mut backoff = Backoff::new(FIRST_RETRY_PAUSE, MAX_RETRY_PAUSE);
    loop {
        match couch.bulk_docs(db, std::slice::from_ref(doc)).await {
            Ok(results) => {
                components.set(Component::Store, false);
                let id = doc.get("_id").and_then(Value::as_str).unwrap_or("");
                return outcome_of(&results, id, 0);
            }
            Err(e) if refuses_the_request(&e) => {
                return Stored::Refused(openwhisk::errors::chain(&e));
            }
            Err(e) => {
                components.set(Component::Store, true);
                let pause = backoff.next_pause();
                tracing::warn!(error = %openwhisk::errors::chain(&e), retry_in_ms = pause.as_millis(), "storing an activation record; retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use parking_lot::Mutex;
    use reqwest::Method;
    use reqwest::StatusCode;
    use serde_json::json;
    use tokio::time::Instant;

    use super::*;

    /// Fails every `_bulk_docs` before `up_at` (a 503, as a proxy in front of a stopped
    /// database answers), then takes everything; remembers when each call came.
    struct FlakyDb {
        up_at: Instant,
        calls: Mutex<Vec<Instant>>,
        written: AtomicUsize,
    }

    impl FlakyDb {
        /// A database that answers 503 until `up_at`.
        fn up_at(up_at: Instant) -> Arc<Self> {
            Arc::new(Self {
                up_at,
                calls: Mutex::new(Vec::new()),
                written: AtomicUsize::new(0),
            })
        }
    }

    #[async_trait::async_trait]
    impl BulkWriter for Arc<FlakyDb> {
        async fn bulk_docs(
            &self,
            db: &str,
            docs: &[Value],
        ) -> Result<Vec<BulkResult>, CouchDbError> {
            let now = Instant::now();
            self.calls.lock().push(now);
            if now < self.up_at {
                return Err(CouchDbError::Status {
                    method: Method::POST,
                    path: format!("/{db}/_bulk_docs"),
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    body: String::new(),
                });
            }
            self.written.fetch_add(docs.len(), Ordering::SeqCst);
            Ok(docs
                .iter()
                .map(|d| BulkResult {
                    id: d["_id"].as_str().unwrap().to_owned(),
                    rev: Some("1-a".into()),
                    error: (d["_id"] == "bad").then(|| "forbidden".to_owned()),
                    reason: Some("no".into()),
                })
                .collect())
        }
    }

    /// A store down for longer than the old 30 s give-up: the record waits, with pauses that
    /// double up to the cap, the store is reported down meanwhile, and the record is written
    /// once the store is back.
    #[tokio::test(start_paused = true)]
    async fn a_record_waits_out_a_long_outage_with_capped_backoff() {
        let start = Instant::now();
        let db = FlakyDb::up_at(start + Duration::from_secs(75));
        let components = Arc::new(Components::default());
        let store = RecordStore::start(db.clone(), "acts".into(), components.clone());
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.store(json!({"_id": "guest/a"})).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert!(!waiting.is_finished(), "no give-up after 30 s");
        assert_eq!(components.down(), ["couchdb"]);
        assert_eq!(waiting.await.unwrap(), Stored::Written);
        assert!(components.down().is_empty());
        assert_eq!(db.written.load(Ordering::SeqCst), 1);
        let calls = db.calls.lock().clone();
        let pauses: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            &pauses[..7],
            [100, 200, 400, 800, 1600, 3200, 5000].map(Duration::from_millis)
        );
        assert!(pauses.iter().all(|p| *p <= MAX_RETRY_PAUSE), "{pauses:?}");
        // Written within one pause of the store's return.
        let last = *calls.last().unwrap();
        assert!(last >= db.up_at && last - db.up_at <= MAX_RETRY_PAUSE);
    }

    /// The writer's handle is given out once; its task ends only when every store handle is
    /// dropped (the service watches it: an end before that stops the invoker).
    #[tokio::test(start_paused = true)]
    async fn the_writer_ends_only_with_its_last_handle() {
        let db = FlakyDb::up_at(Instant::now());
        let store = RecordStore::start(db.clone(), "acts".into(), Arc::default());
        let writer = store.take_writer().expect("the writer's handle");
        assert!(store.take_writer().is_none(), "given out twice");
        let other = store.clone();
        drop(store);
        assert_eq!(
            other.store(json!({"_id": "guest/a"})).await.unwrap(),
            Stored::Written
        );
        assert!(!writer.is_finished(), "the writer ended with handles left");
        drop(other);
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer outlived its last handle")
            .unwrap();
    }

    /// Records that queue behind a failing batch are written with its retry.
    #[tokio::test(start_paused = true)]
    async fn records_queued_during_an_outage_join_the_retry() {
        let db = FlakyDb::up_at(Instant::now() + Duration::from_secs(10));
        let store = RecordStore::start(db.clone(), "acts".into(), Arc::default());
        let mut waiting = Vec::new();
        for i in 0..5 {
            let store = store.clone();
            waiting.push(tokio::spawn(async move {
                store
                    .store(json!({"_id": format!("guest/{i}")}))
                    .await
                    .unwrap()
            }));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for w in waiting {
            assert_eq!(w.await.unwrap(), Stored::Written);
        }
        assert_eq!(db.written.load(Ordering::SeqCst), 5);
        let successful = db.calls.lock().iter().filter(|t| **t >= db.up_at).count();
        assert_eq!(successful, 1, "one request once the store is back");
    }

    /// A document the database refuses (an answer about the document) is not retried.
    #[tokio::test(start_paused = true)]
    async fn a_refused_document_is_an_answer() {
        let db = FlakyDb::up_at(Instant::now());
        let store = RecordStore::start(db.clone(), "acts".into(), Arc::default());
        let outcome = store.store(json!({"_id": "bad"})).await.unwrap();
        assert_eq!(outcome, Stored::Refused("forbidden: no".into()));
        assert_eq!(db.calls.lock().len(), 1);
    }

    /// Answers 413 for any request that holds a document `huge` (CouchDB refuses a request
    /// over its size limit as a whole), takes the rest.
    struct SizeLimitedDb {
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl BulkWriter for Arc<SizeLimitedDb> {
        async fn bulk_docs(
            &self,
            _db: &str,
            docs: &[Value],
        ) -> Result<Vec<BulkResult>, CouchDbError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if docs.iter().any(|d| d["_id"] == "huge") {
                return Err(CouchDbError::Status {
                    method: Method::POST,
                    path: "/acts/_bulk_docs".into(),
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    body: "{\"error\":\"too_large\"}".into(),
                });
            }
            Ok(docs
                .iter()
                .map(|d| BulkResult {
                    id: d["_id"].as_str().unwrap_or_default().into(),
                    rev: Some("1-a".into()),
                    error: None,
                    reason: None,
                })
                .collect())
        }
    }

    /// A record the database never takes is refused on its own; the records batched with it
    /// are written, and nothing waits behind it.
    #[tokio::test(start_paused = true)]
    async fn a_request_the_database_refuses_does_not_hold_the_records_batched_with_it() {
        let db = Arc::new(SizeLimitedDb {
            calls: AtomicUsize::new(0),
        });
        let components: Arc<Components> = Arc::default();
        let store = RecordStore::start(db.clone(), "acts".into(), components.clone());
        let outcomes = futures::future::join_all(
            ["a", "b", "huge", "c", "d"].map(|id| store.store(json!({"_id": id}))),
        )
        .await;
        for (id, outcome) in ["a", "b", "huge", "c", "d"].iter().zip(outcomes) {
            let outcome = outcome.unwrap();
            if *id == "huge" {
                assert!(
                    matches!(&outcome, Stored::Refused(why) if why.contains("413")),
                    "{outcome:?}"
                );
            } else {
                assert_eq!(outcome, Stored::Written, "{id}");
            }
        }
        // One batch, then one request per record.
        assert_eq!(db.calls.load(Ordering::SeqCst), 6);
        let later = store.store(json!({"_id": "e"})).await.unwrap();
        assert_eq!(later, Stored::Written);
    }
}

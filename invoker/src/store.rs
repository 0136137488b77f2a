//! Writing activation records in batches (contract §4.1: `POST /<activations>/_bulk_docs`).
//!
//! Records arrive from many activations at once; one writer task takes what is queued (up to
//! [`MAX_BATCH`], waiting at most [`LINGER`] for more after the first) and writes it in one
//! request. Each caller waits for its own record's outcome, so the feed commits an offset only
//! after the record is stored. While the database is unavailable the batch is retried with
//! backoff for up to [`GIVE_UP_AFTER`]; then its records are reported lost, loudly.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use openwhisk::couchdb::CouchDb;

pub const MAX_BATCH: usize = 100;
pub const LINGER: Duration = Duration::from_millis(2);
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// What became of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Written,
    /// A record with this id exists already (a re-delivered activation ran twice).
    AlreadyThere,
    /// The database refused it or stayed unavailable.
    Lost(String),
}

type Job = (Value, oneshot::Sender<Stored>);

/// The batching writer; cheap to clone.
#[derive(Clone, Debug)]
pub struct RecordStore {
    tx: mpsc::Sender<Job>,
}

impl RecordStore {
    /// Starts the writer task for database `db`.
    pub fn start(couch: CouchDb, db: String) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(writer(couch, db, rx));
        Self { tx }
    }

    /// Stores one record and waits for the outcome.
    pub async fn store(&self, doc: Value) -> Stored {
        let (done, outcome) = oneshot::channel();
        if self.tx.send((doc, done)).await.is_err() {
            return Stored::Lost("the record writer has stopped".into());
        }
        outcome
            .await
            .unwrap_or_else(|_| Stored::Lost("the record writer has stopped".into()))
    }
}

async fn writer(couch: CouchDb, db: String, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(linger, rx.recv()).await {
                Ok(Some(job)) => batch.push(job),
                _ => break,
            }
        }
        let docs: Vec<Value> = batch.iter().map(|(d, _)| d.clone()).collect();
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        let results = loop {
            match couch.bulk_docs(&db, &docs).await {
                Ok(r) => break Ok(r),
                Err(e) if started.elapsed() < GIVE_UP_AFTER => {
                    tracing::warn!(error = %e, records = docs.len(), "storing activation records; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        metrics::histogram!(crate::metrics::RECORD_BATCH_SIZE).record(docs.len() as f64);
        match results {
            Ok(results) => {
                for (i, (doc, done)) in batch.into_iter().enumerate() {
                    let id = doc.get("_id").and_then(Value::as_str).unwrap_or("");
                    let r = results.iter().find(|r| r.id == id).or(results.get(i));
                    let outcome = match r.and_then(|r| r.error.as_deref()) {
                        None => Stored::Written,
                        Some("conflict") => Stored::AlreadyThere,
                        Some(e) => Stored::Lost(format!(
                            "{e}: {}",
                            r.and_then(|r| r.reason.clone()).unwrap_or_default()
                        )),
                    };
                    if let Stored::Lost(why) = &outcome {
                        tracing::error!(id, why, "activation record refused");
                    }
                    let _ = done.send(outcome);
                }
            }
            Err(why) => {
                tracing::error!(
                    records = batch.len(),
                    why,
                    "activation records lost: the store stayed unavailable"
                );
                for (_, done) in batch {
                    let _ = done.send(Stored::Lost(why.clone()));
                }
            }
        }
    }
}

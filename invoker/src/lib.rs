//! The OpenWhisk invoker, in Rust.
//!
//! An unmodified OpenWhisk controller writes `ActivationMessage`s to the Kafka topic
//! `invoker<N>`; this crate consumes them, runs each action in a container, writes the
//! activation record to CouchDB and answers on `completed<C>` and `health` exactly as the
//! Scala invoker does (`shared/openwhisk-contract.md` is the contract).
//!
//! The crate is built bottom-up from clients of the real components it talks to:
//!
//! - [`config`]: OpenWhisk's `CONFIG_*` environment mapping, sizes and durations.
//! - [`kafka`]: OpenWhisk's topics, their configuration and the client settings the invoker uses
//!   with the broker.
//! - [`couchdb`]: a small CouchDB HTTP API client (documents, revisions, attachments) written
//!   for what OpenWhisk stores there.
//! - [`docker`]: the connection to the Docker engine.
//! - [`messages`]: OpenWhisk's wire messages (activation, the three acks, ping, the activation
//!   record), with golden tests against the contract's examples.
//! - [`settings`]: the typed settings (environment, `CONFIG_*`, a config file) with OpenWhisk's
//!   defaults; an invalid one names itself.
//! - [`manifest`]: the runtimes manifest (kinds, images, stem cells).
//! - [`action`]: action documents and their code, fetched by revision and cached.
//! - [`container`]: the seam between the pool and the container backends (Docker today), the
//!   action proxy protocol and log collection.
//! - [`pool`]: the container pool (warm, prewarm, cold, eviction, pause, idle removal).
//! - [`invoke`]: one activation end to end: acks, record, logs.
//! - [`feed`]: consuming `invoker<N>` with bounded in-flight work and commits only of finished
//!   work.
//! - [`server`]: the invoker's own HTTP server.
//! - [`store`]: activation records written in batches.
//! - [`metrics`]: the metric names the invoker records.
//! - [`stack`]: where the components of the local development stack live (`scripts/stack.sh`).
//!
//! The data flow and the ownership of every process are described in `docs/architecture.md`.

pub mod action;
pub mod config;
pub mod container;
pub mod couchdb;
pub mod docker;
pub mod feed;
pub mod invoke;
pub mod kafka;
pub mod manifest;
pub mod messages;
pub mod metrics;
pub mod pool;
pub mod server;
pub mod settings;
pub mod stack;
pub mod store;

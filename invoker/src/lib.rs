//! The OpenWhisk invoker, in Rust.
//!
//! An unmodified OpenWhisk controller writes `ActivationMessage`s to the Kafka topic
//! `invoker<N>`; this crate consumes them, runs each action in a container, writes the
//! activation record to CouchDB and answers on `completed<C>` and `health` exactly as the
//! Scala invoker does (`shared/openwhisk-contract.md` is the contract).
//!
//! OpenWhisk's formats (messages, documents, topics, settings) live in the `openwhisk` crate;
//! this crate is the service built on them:
//!
//! - [`action`]: action documents and their code, fetched by revision and cached.
//! - [`container`]: the sandbox seam between the pool and its backends (Docker containers, runc
//!   sandboxes on netpool namespaces, QEMU microVMs on netpool VM slots), the action proxy
//!   protocol, log sources and collection, the on-disk image store.
//! - [`pool`]: the container pool (warm, prewarm, cold, eviction, pause, idle removal).
//! - [`invoke`]: one activation end to end: acks, record, logs.
//! - [`feed`]: consuming `invoker<N>` with bounded in-flight work and commits only of finished
//!   work.
//! - [`server`]: the invoker's own HTTP server; [`tls`]: its https set-up from the keystore.
//! - [`service`]: start-up, the running service and its shutdown (`run(config, shutdown)`);
//!   the binary only parses the command line and wires signals to it.
//! - [`store`]: activation records written in batches.
//! - [`metrics`]: the metric names the invoker records.
//! - [`zookeeper`]: the invoker id from ZooKeeper for `--uniqueName` without `--id`.
//!
//! The data flow and the ownership of every process are described in `docs/architecture.md`.

pub mod action;
pub mod container;
pub mod feed;
pub mod invoke;
pub mod metrics;
pub mod pool;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod zookeeper;

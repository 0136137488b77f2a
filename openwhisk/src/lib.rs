//! OpenWhisk's protocol as this project speaks it: what crosses Kafka, what lives in CouchDB,
//! how OpenWhisk is configured. The invoker, the front door and the benchmarks all read and
//! write OpenWhisk's formats through this crate and nowhere else (`shared/openwhisk-contract.md`
//! is the contract).
//!
//! - [`messages`]: the wire messages (activation, the three acks, ping, the activation record),
//!   with golden tests against the contract's examples.
//! - [`action`]: the action document of the whisks database (exec, code attachments, limits).
//! - [`couchdb`]: a small CouchDB HTTP API client (documents, revisions, attachments).
//! - [`kafka`]: OpenWhisk's topics, their configuration and the client settings (feature
//!   `kafka`, on by default).
//! - [`manifest`]: the runtimes manifest (kinds, images, stem cells).
//! - [`config`]: OpenWhisk's `CONFIG_*` environment mapping, `-D` properties, sizes and
//!   durations.
//! - [`settings`]: the invoker's typed settings with OpenWhisk's defaults.
//! - [`http`]: the HTTP/1.1 accept loop of the endpoints we serve.
//! - [`errors`], [`time`], [`logging`]: an error chain as one line; epoch milliseconds; the
//!   binaries' log set-up.

pub mod action;
pub mod config;
pub mod couchdb;
pub mod errors;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod logging;
pub mod manifest;
pub mod messages;
pub mod settings;
pub mod time;

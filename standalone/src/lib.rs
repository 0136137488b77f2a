//! A standalone OpenWhisk front door for one machine.
//!
//! It serves the REST API subset that `wsk` and the `openwhisk` npm client use (contract §10) on
//! port 3233, as OpenWhisk's own standalone mode does, and plays the controller's part on Kafka:
//! it writes the `ActivationMessage` a controller would write to a healthy invoker's topic and
//! reads the answers on `completed<C>`. It exists for the quickstart, for end-to-end tests and for
//! researchers on a single machine; **in a production deployment the real OpenWhisk controller
//! is used and this front door is not deployed.**
//!
//! - [`subjects`]: who may call (the subjects database, default `guest` and `whisk.system`).
//! - [`entities`]: what all entities of the whisks database share (names, versions, errors).
//! - [`actions`]: actions stored in the whisks database the way the controller stores them.
//! - [`packages`]: packages and bindings, and the parameters their actions inherit.
//! - [`triggers`]: triggers and rules, and firing a trigger.
//! - [`invocations`]: invoking an action as the controller does (resolved, through Kafka).
//! - [`sequences`]: sequences run component by component, with their own record.
//! - [`web`]: web actions on `/api/v1/web`, their arguments and answers by extension.
//! - [`activations`]: activation records read back, listed and shown in the extended form.
//! - [`health`]: which invokers may get work, from their pings and completions.
//! - [`controller`]: the Kafka side: activation messages out, acks and pings in.
//! - [`api`]: the HTTP routes and the controller's status codes and error bodies.
//! - [`ids`]: activation and transaction ids, attachment uuids.
//! - [`metrics`]: the metric names the front door records.
//! - [`service`]: the front door as `run(config, shutdown)`; the binary only wires.

pub mod actions;
pub mod activations;
pub mod api;
pub mod controller;
pub mod entities;
pub mod health;
pub mod ids;
pub mod invocations;
pub mod metrics;
pub mod packages;
pub mod sequences;
pub mod service;
pub mod subjects;
pub mod triggers;
pub mod web;

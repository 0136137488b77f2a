//! Benchmark support shared by the `bench` subcommands.
//!
//! - [`stats`]: summaries of measured durations (p50, p99, max), the figures every benchmark
//!   prints and writes.
//! - [`machine`]: the description of the machine written next to every result.
//! - [`cpu_account`]: each component in a cgroup of its own, CPU per cold start or activation.
//! - [`coldstart`]: `bench coldstart`, the paper's Fig 6 through Kafka per network mode.
//! - [`activate`]: `bench activate`, the controller's part against a running invoker.
//! - [`kafka_rtt`]: `bench kafka-rtt`, sequential produce → consume round trips (the floor
//!   under every hop).
//! - [`memory`]: process PSS/RSS, cgroup charges and kernel memory growth, for the memory
//!   figures.
//! - [`docker_start`]: `bench docker-start`, N concurrent Docker cold starts with bridge
//!   networking against pcpm pause containers, and the memory of idle pause containers.
//! - [`memory_table`]: `bench memory`, the paper's Table 2: memory committed and time for 50
//!   functions, cold / warm / prewarm / pcpm / netns.
//! - [`netns`]: `bench netns`, the PCPM paper's Table 1 on this machine: network endpoints
//!   created and cleaned up with `ip` commands, in-process with rtnetlink, and leased from a
//!   warm netpool.
//! - [`run_setup`]: the controller's side of a run through Kafka: its own databases and
//!   topics, a producer and the acks consumer.
//! - [`soak`]: `bench soak`, many activations cold and warm across the network modes while
//!   kernel objects, containers and the invoker's fds, threads and RSS are counted (all flat).
//! - [`warm`]: `bench warm`, the warm path through Kafka: closed-loop clients against warm
//!   containers, throughput, latency and the invoker's CPU per activation.

pub mod activate;
pub mod coldstart;
pub mod cpu_account;
pub mod docker_start;
pub mod kafka_rtt;
pub mod machine;
pub mod memory;
pub mod memory_table;
pub mod netns;
pub mod run_setup;
pub mod soak;
pub mod stats;
pub mod warm;

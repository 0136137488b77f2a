//! Benchmark support shared by the `bench` subcommands.
//!
//! - [`stats`]: summaries of measured durations (p50, p99, max), the figures every benchmark
//!   prints and writes.

pub mod stats;

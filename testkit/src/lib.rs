//! What the end-to-end tests and the benchmarks share, so that each is written once.
//!
//! - [`stack`]: where the local stack's components live (`scripts/stack.sh up`).
//! - [`invoker`]: an invoker binary as a child process (start with OpenWhisk's environment,
//!   drain on stop).
//! - [`vm`]: the VM backend tests' guest files, VM slot pools and leftover QEMU processes.

pub mod invoker;
pub mod stack;
pub mod vm;

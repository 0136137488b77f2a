//! Runs OpenWhisk actions written as WebAssembly (WASI preview 1 commands) inside the unikernel.
//!
//! The kernel parses HTTP and calls [`Runtime::handle`] once per request; this crate speaks the
//! action protocol of our std action proxy (`runtimes/proxy`): `/init` once, `/run` many times,
//! the same status codes, error messages and log sentinels.

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

use alloc::vec::Vec;

/// One of the action's two output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What the library needs from its environment.
pub trait Host {
    /// A monotonic clock in microseconds (the kernel: TSC-based).
    fn now_us(&self) -> u64;
    /// Appends the action's output to one of its two streams. The library always ends what it
    /// writes with '\n' before a sentinel.
    fn write(&mut self, stream: Stream, bytes: &[u8]);
    /// Fills `buf` with random bytes (WASI random_get).
    fn random(&mut self, buf: &mut [u8]);
}

/// The resources one run may use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The most linear memory (all memories and tables together, in bytes) one run may use.
    pub memory_bytes: u64,
}

/// An HTTP answer: status and JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The action runtime: nothing, then one compiled action.
#[derive(Debug)]
pub struct Runtime {
    limits: Limits,
}

impl Runtime {
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// One HTTP request: `POST /init`, `POST /run`; anything else is 404 `{"error":"..."}`.
    pub fn handle(&mut self, method: &str, path: &str, body: &[u8], host: &mut dyn Host) -> Reply {
        let _ = (method, path, body, host, self.limits);
        Reply {
            status: 404,
            body: b"{\"error\":\"not implemented yet\"}".to_vec(),
        }
    }
}

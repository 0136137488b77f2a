//! The action library's [`Host`]: the TSC clock, the console, random bytes.

use wasm_action::{Host, Stream};

use crate::clock;
use crate::console::ActionOutput;
use crate::cpu;

/// Random bytes from RDRAND if the CPU has it, else from a xorshift generator seeded with the
/// TSC at boot (not cryptographic; WASI's random_get gets the best this machine offers).
#[derive(Debug)]
pub struct KernelHost {
    rdrand: bool,
    state: u64,
}

impl KernelHost {
    pub fn new() -> Self {
        Self {
            rdrand: cpu::has_rdrand(),
            state: cpu::rdtsc() | 1,
        }
    }

    pub fn random_source(&self) -> &'static str {
        if self.rdrand {
            "rdrand"
        } else {
            "tsc-seeded xorshift"
        }
    }

    fn next(&mut self) -> u64 {
        if self.rdrand
            && let Some(v) = cpu::rdrand()
        {
            return v;
        }
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl Host for KernelHost {
    fn now_us(&self) -> u64 {
        clock::now_us()
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        ActionOutput::write(stream == Stream::Stderr, bytes);
    }

    fn random(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

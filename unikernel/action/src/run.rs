//! One run of a compiled module: a fresh instance, `_start` in fuel slices, the outcome.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use wasmi::{Engine, Extern, Instance, Module, Store, TypedResumableCall};

use crate::wasi::{self, Ctx};

/// Fuel given to the guest between two looks at the clock. wasmi charges roughly one unit per
/// instruction, so a slice is a few milliseconds of interpretation even under TCG, which bounds
/// how far past its time limit a run can go.
pub const FUEL_SLICE: u64 = 1_000_000;

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// `_start` returned or the guest called `proc_exit`.
    Finished,
    /// A trap, or a failure to instantiate: the reason, for the logs.
    Trap(String),
    /// The time limit was reached.
    TimedOut,
    /// The memory budget refused a growth and the run could not go on.
    OutOfMemory,
}

/// Instantiates `module` in a store holding `ctx` and runs its `_start` until it ends or
/// `timeout_ms` have passed on the host's clock; gives the store data back.
pub fn execute<'h>(
    engine: &Engine,
    module: &Module,
    ctx: Ctx<'h>,
    timeout_ms: u64,
) -> (Outcome, Ctx<'h>) {
    let mut store = Store::new(engine, ctx);
    store.limiter(wasi::budget);
    let outcome = start(&mut store, module, timeout_ms);
    (outcome, store.into_data())
}

fn start(store: &mut Store<Ctx<'_>>, module: &Module, timeout_ms: u64) -> Outcome {
    let mut externs: Vec<Extern> = Vec::new();
    for import in module.imports() {
        match wasi::link(store, &import) {
            Ok(e) => externs.push(e),
            // Checked at init already; kept as an error rather than a panic.
            Err(e) => return Outcome::Trap(format!("{e}")),
        }
    }
    // A start section runs during instantiation, within the first slice.
    if let Err(e) = store.set_fuel(FUEL_SLICE) {
        return Outcome::Trap(format!("{e}"));
    }
    let instance = match Instance::new(&mut *store, module, &externs) {
        Ok(i) => i,
        Err(e) => return failure(store, &e),
    };
    let func = match instance.get_typed_func::<(), ()>(&*store, "_start") {
        Ok(f) => f,
        Err(e) => return Outcome::Trap(format!("{e}")),
    };
    let deadline = store
        .data()
        .host
        .now_us()
        .saturating_add(timeout_ms.saturating_mul(1000));
    let mut call = func.call_resumable(&mut *store, ());
    loop {
        match call {
            Ok(TypedResumableCall::Finished(())) => return Outcome::Finished,
            Ok(TypedResumableCall::OutOfFuel(paused)) => {
                if store.data().host.now_us() >= deadline {
                    return Outcome::TimedOut;
                }
                // Some instructions (bulk memory) cost more than a slice at once.
                let fuel = FUEL_SLICE.max(paused.required_fuel());
                if let Err(e) = store.set_fuel(fuel) {
                    return Outcome::Trap(format!("{e}"));
                }
                call = paused.resume(&mut *store);
            }
            Ok(TypedResumableCall::HostTrap(paused)) => {
                return failure(store, paused.host_error());
            }
            Err(e) => return failure(store, &e),
        }
    }
}

fn failure(store: &Store<Ctx<'_>>, error: &wasmi::Error) -> Outcome {
    if error.i32_exit_status().is_some() {
        Outcome::Finished
    } else if store.data().budget.refused {
        Outcome::OutOfMemory
    } else {
        Outcome::Trap(format!("{error}"))
    }
}

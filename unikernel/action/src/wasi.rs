//! WASI preview 1 (`wasi_snapshot_preview1`) for one run: argv, environment, stdin from memory,
//! stdout and stderr captured, clocks and randomness from the [`Host`], no files.
//!
//! The host functions are plain `fn` items rather than closures: wasmi wants `'static`
//! functions, and a `fn` item whose store-data lifetime is late-bound is `'static` while the data
//! it reaches through its `Caller` (which borrows the kernel's [`Host`]) is not.

use alloc::string::String;
use alloc::vec::Vec;

use wasmi::{
    Caller, Error, Extern, ExternType, Func, FuncType, ImportType, ResourceLimiter, Store, Val,
    ValType,
};
use wasmi_core::LimiterError;

use crate::Host;

/// The module every supported import comes from.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";

// WASI errno values.
const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
pub const ENOSYS: i32 = 52;
const ESPIPE: i32 = 70;

/// `filetype::character_device`: what stdin, stdout and stderr are.
const FILETYPE_CHARACTER_DEVICE: u8 = 2;
const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_WRITE: u64 = 1 << 6;
const RIGHT_POLL_FD_READWRITE: u64 = 1 << 27;

/// Bytes counted for one table element against the memory limit (a reference is 8 bytes).
const TABLE_ELEMENT_BYTES: u64 = 8;

/// Why an import cannot be provided.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("unsupported import {module}.{name}: only {WASI_MODULE} functions are provided")]
    Module { module: String, name: String },
    #[error("unsupported import {WASI_MODULE}.{name}: only functions are provided")]
    NotAFunction { name: String },
    #[error("import {WASI_MODULE}.{name} has type {found}, WASI's is {expected}")]
    Signature {
        name: String,
        found: String,
        expected: String,
    },
}

/// One captured output stream, keeping at most `cap` bytes.
#[derive(Debug)]
pub struct Capture {
    pub bytes: Vec<u8>,
    /// How many bytes past the cap were dropped.
    pub dropped: u64,
    cap: usize,
}

impl Capture {
    pub fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            dropped: 0,
            cap,
        }
    }

    fn push(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.bytes.len());
        let keep = data.len().min(room);
        self.bytes.extend_from_slice(&data[..keep]);
        self.dropped = self.dropped.saturating_add((data.len() - keep) as u64);
    }
}

/// The memory budget of one run: all memories and tables together.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: u64,
    /// The last growth allowed, taken back if the growth then fails for another reason.
    last_growth: u64,
    /// Set when this budget refused a growth: a trap or failed instantiation that follows is
    /// the action running out of memory.
    pub refused: bool,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: 0,
            last_growth: 0,
            refused: false,
        }
    }

    fn grow(&mut self, current: u64, desired: u64) -> bool {
        let growth = desired.saturating_sub(current);
        match self.used.checked_add(growth) {
            Some(total) if total <= self.limit => {
                self.used = total;
                self.last_growth = growth;
                true
            }
            _ => {
                self.refused = true;
                false
            }
        }
    }

    fn undo_last(&mut self) {
        self.used = self.used.saturating_sub(self.last_growth);
        self.last_growth = 0;
    }
}

impl ResourceLimiter for Budget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        Ok(self.grow(current as u64, desired as u64))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        let bytes = |n: usize| (n as u64).saturating_mul(TABLE_ELEMENT_BYTES);
        Ok(self.grow(bytes(current), bytes(desired)))
    }

    fn memory_grow_failed(
        &mut self,
        error: &wasmi::errors::MemoryError,
    ) -> Result<(), LimiterError> {
        self.undo_last();
        // The budget allowed it but the guest's heap could not hold it: the action ran out
        // of memory all the same (the module's own maximum is another error, not this one).
        if matches!(error, wasmi::errors::MemoryError::OutOfSystemMemory) {
            self.refused = true;
        }
        Ok(())
    }

    fn table_grow_failed(
        &mut self,
        _error: &wasmi::errors::TableError,
    ) -> Result<(), LimiterError> {
        self.undo_last();
        Ok(())
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        16
    }
}

/// The store data of one run.
pub struct Ctx<'h> {
    pub host: &'h mut dyn Host,
    /// NUL-terminated arguments.
    args: Vec<Vec<u8>>,
    /// NUL-terminated `KEY=VALUE` strings.
    env: Vec<Vec<u8>>,
    stdin: Vec<u8>,
    stdin_at: usize,
    pub stdout: Capture,
    pub stderr: Capture,
    pub budget: Budget,
}

impl core::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ctx")
            .field("args", &self.args.len())
            .field("env", &self.env.len())
            .field("stdout", &self.stdout.bytes.len())
            .field("stderr", &self.stderr.bytes.len())
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

impl<'h> Ctx<'h> {
    pub fn new(
        host: &'h mut dyn Host,
        args: &[&str],
        env: &[(String, String)],
        stdin: Vec<u8>,
        output_cap: usize,
        memory_bytes: u64,
    ) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| {
                let mut s = Vec::with_capacity(k.len() + v.len() + 2);
                s.extend_from_slice(k.as_bytes());
                s.push(b'=');
                s.extend_from_slice(v.as_bytes());
                s.push(0);
                s
            })
            .collect();
        Self {
            host,
            args: args.iter().map(|a| nul_terminated(a)).collect(),
            env,
            stdin,
            stdin_at: 0,
            stdout: Capture::new(output_cap),
            stderr: Capture::new(output_cap),
            budget: Budget::new(memory_bytes),
        }
    }
}

/// The limiter of a store whose data is a [`Ctx`].
pub fn budget<'a>(ctx: &'a mut Ctx<'_>) -> &'a mut dyn ResourceLimiter {
    &mut ctx.budget
}

/// The function provided for `import`, checked against the import's type.
pub fn link(store: &mut Store<Ctx<'_>>, import: &ImportType<'_>) -> Result<Extern, LinkError> {
    let name = import.name();
    if import.module() != WASI_MODULE {
        return Err(LinkError::Module {
            module: import.module().into(),
            name: name.into(),
        });
    }
    let ExternType::Func(ty) = import.ty() else {
        return Err(LinkError::NotAFunction { name: name.into() });
    };
    let func = match name {
        "args_get" => Func::wrap(&mut *store, args_get),
        "args_sizes_get" => Func::wrap(&mut *store, args_sizes_get),
        "environ_get" => Func::wrap(&mut *store, environ_get),
        "environ_sizes_get" => Func::wrap(&mut *store, environ_sizes_get),
        "fd_write" => Func::wrap(&mut *store, fd_write),
        "fd_read" => Func::wrap(&mut *store, fd_read),
        "fd_close" => Func::wrap(&mut *store, fd_close),
        "fd_fdstat_get" => Func::wrap(&mut *store, fd_fdstat_get),
        "fd_seek" => Func::wrap(&mut *store, fd_seek),
        "fd_prestat_get" => Func::wrap(&mut *store, fd_prestat_get),
        "fd_prestat_dir_name" => Func::wrap(&mut *store, fd_prestat_dir_name),
        "proc_exit" => Func::wrap(&mut *store, proc_exit),
        "clock_time_get" => Func::wrap(&mut *store, clock_time_get),
        "clock_res_get" => Func::wrap(&mut *store, clock_res_get),
        "random_get" => Func::wrap(&mut *store, random_get),
        "sched_yield" => Func::wrap(&mut *store, sched_yield),
        _ => Func::new(&mut *store, ty.clone(), enosys),
    };
    let provided = func.ty(&*store);
    if provided != *ty {
        return Err(LinkError::Signature {
            name: name.into(),
            found: type_text(ty),
            expected: type_text(&provided),
        });
    }
    Ok(Extern::Func(func))
}

/// `(param i32 i32) (result i32)`, for error messages.
fn type_text(ty: &FuncType) -> String {
    use core::fmt::Write as _;
    let mut s = String::from("(param");
    for p in ty.params() {
        let _ = write!(s, " {}", val_type(*p));
    }
    s.push_str(") (result");
    for r in ty.results() {
        let _ = write!(s, " {}", val_type(*r));
    }
    s.push(')');
    s
}

fn val_type(t: ValType) -> &'static str {
    match t {
        ValType::I32 => "i32",
        ValType::I64 => "i64",
        ValType::F32 => "f32",
        ValType::F64 => "f64",
        ValType::FuncRef => "funcref",
        ValType::ExternRef => "externref",
        #[allow(unreachable_patterns)]
        _ => "v128",
    }
}

/// Any other WASI function: ENOSYS when it returns one i32 (every preview 1 function that
/// returns anything returns an errno), zeros otherwise.
fn enosys(_caller: Caller<'_, Ctx<'_>>, _params: &[Val], results: &mut [Val]) -> Result<(), Error> {
    for r in results.iter_mut() {
        *r = Val::default_for_ty(r.ty());
    }
    if let [r @ Val::I32(_)] = results {
        *r = Val::I32(ENOSYS);
    }
    Ok(())
}

/// A guest address.
fn addr(p: i32) -> usize {
    p as u32 as usize
}

fn slice(mem: &[u8], at: usize, len: usize) -> Result<&[u8], i32> {
    mem.get(at..at.checked_add(len).ok_or(EFAULT)?)
        .ok_or(EFAULT)
}

fn slice_mut(mem: &mut [u8], at: usize, len: usize) -> Result<&mut [u8], i32> {
    mem.get_mut(at..at.checked_add(len).ok_or(EFAULT)?)
        .ok_or(EFAULT)
}

fn write_bytes(mem: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), i32> {
    slice_mut(mem, at, bytes.len())?.copy_from_slice(bytes);
    Ok(())
}

fn write_u32(mem: &mut [u8], at: usize, v: u32) -> Result<(), i32> {
    write_bytes(mem, at, &v.to_le_bytes())
}

fn write_u64(mem: &mut [u8], at: usize, v: u64) -> Result<(), i32> {
    write_bytes(mem, at, &v.to_le_bytes())
}

/// Runs `f` on the instance's exported memory and the run's data; its error is the errno.
fn with_memory(
    caller: &mut Caller<'_, Ctx<'_>>,
    f: impl FnOnce(&mut [u8], &mut Ctx<'_>) -> Result<(), i32>,
) -> i32 {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return EFAULT;
    };
    let (mem, ctx) = memory.data_and_store_mut(&mut *caller);
    match f(mem, ctx) {
        Ok(()) => SUCCESS,
        Err(errno) => errno,
    }
}

/// The most iovecs one call may pass (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// The `(ptr, len)` pairs of an iovec array.
fn iovecs(mem: &[u8], iovs: i32, count: i32) -> Result<Vec<(usize, usize)>, i32> {
    let count = addr(count);
    // POSIX's IOV_MAX: the list is copied onto the kernel's heap, outside the memory budget.
    if count > IOV_MAX {
        return Err(EINVAL);
    }
    let table = slice(mem, addr(iovs), count.checked_mul(8).ok_or(EFAULT)?)?;
    table
        .chunks_exact(8)
        .map(|c| {
            let ptr = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
            let len = u32::from_le_bytes([c[4], c[5], c[6], c[7]]) as usize;
            slice(mem, ptr, len).map(|_| (ptr, len))
        })
        .collect()
}

/// Writes a list of NUL-terminated strings the way `args_get` and `environ_get` return them.
fn write_strings(mem: &mut [u8], list: &[Vec<u8>], ptrs: i32, buf: i32) -> Result<(), i32> {
    let mut at = addr(buf);
    for (i, s) in list.iter().enumerate() {
        let slot = addr(ptrs).checked_add(i * 4).ok_or(EFAULT)?;
        write_u32(mem, slot, u32::try_from(at).map_err(|_| EFAULT)?)?;
        write_bytes(mem, at, s)?;
        at = at.checked_add(s.len()).ok_or(EFAULT)?;
    }
    Ok(())
}

fn write_sizes(mem: &mut [u8], list: &[Vec<u8>], count: i32, size: i32) -> Result<(), i32> {
    let bytes: usize = list.iter().map(Vec::len).sum();
    write_u32(mem, addr(count), list.len() as u32)?;
    write_u32(mem, addr(size), u32::try_from(bytes).map_err(|_| EINVAL)?)
}

fn args_get(mut caller: Caller<'_, Ctx<'_>>, argv: i32, buf: i32) -> i32 {
    with_memory(&mut caller, |mem, ctx| {
        write_strings(mem, &ctx.args, argv, buf)
    })
}

fn args_sizes_get(mut caller: Caller<'_, Ctx<'_>>, count: i32, size: i32) -> i32 {
    with_memory(&mut caller, |mem, ctx| {
        write_sizes(mem, &ctx.args, count, size)
    })
}

fn environ_get(mut caller: Caller<'_, Ctx<'_>>, environ: i32, buf: i32) -> i32 {
    with_memory(&mut caller, |mem, ctx| {
        write_strings(mem, &ctx.env, environ, buf)
    })
}

fn environ_sizes_get(mut caller: Caller<'_, Ctx<'_>>, count: i32, size: i32) -> i32 {
    with_memory(&mut caller, |mem, ctx| {
        write_sizes(mem, &ctx.env, count, size)
    })
}

fn fd_write(mut caller: Caller<'_, Ctx<'_>>, fd: i32, iovs: i32, count: i32, written: i32) -> i32 {
    with_memory(&mut caller, |mem, ctx| {
        let sink = match fd {
            1 => &mut ctx.stdout,
            2 => &mut ctx.stderr,
            _ => return Err(EBADF),
        };
        let mut total = 0u32;
        for (ptr, len) in iovecs(mem, iovs, count)? {
            sink.push(&mem[ptr..ptr + len]);
            // A single write is at most the guest's 4 GiB address space.
            total = total.saturating_add(len as u32);
        }
        write_u32(mem, addr(written), total)
    })
}

fn fd_read(mut caller: Caller<'_, Ctx<'_>>, fd: i32, iovs: i32, count: i32, read: i32) -> i32 {
    with_memory(&mut caller, |mem, ctx| {
        if fd != 0 {
            return Err(EBADF);
        }
        let mut total = 0usize;
        for (ptr, len) in iovecs(mem, iovs, count)? {
            let rest = &ctx.stdin[ctx.stdin_at..];
            let n = len.min(rest.len());
            mem[ptr..ptr + n].copy_from_slice(&rest[..n]);
            ctx.stdin_at += n;
            total += n;
            if n < len {
                break;
            }
        }
        write_u32(mem, addr(read), total as u32)
    })
}

fn fd_close(_caller: Caller<'_, Ctx<'_>>, fd: i32) -> i32 {
    if (0..=2).contains(&fd) {
        SUCCESS
    } else {
        EBADF
    }
}

fn fd_fdstat_get(mut caller: Caller<'_, Ctx<'_>>, fd: i32, out: i32) -> i32 {
    let rights = match fd {
        0 => RIGHT_FD_READ | RIGHT_POLL_FD_READWRITE,
        1 | 2 => RIGHT_FD_WRITE | RIGHT_POLL_FD_READWRITE,
        _ => return EBADF,
    };
    with_memory(&mut caller, |mem, _| {
        // struct fdstat { u8 filetype; u16 flags; u64 rights_base; u64 rights_inheriting; }
        let mut stat = [0u8; 24];
        stat[0] = FILETYPE_CHARACTER_DEVICE;
        stat[8..16].copy_from_slice(&rights.to_le_bytes());
        write_bytes(mem, addr(out), &stat)
    })
}

fn fd_seek(_caller: Caller<'_, Ctx<'_>>, fd: i32, _offset: i64, _whence: i32, _out: i32) -> i32 {
    if (0..=2).contains(&fd) { ESPIPE } else { EBADF }
}

/// No directories are preopened: a program asking for the first one learns there is none.
fn fd_prestat_get(_caller: Caller<'_, Ctx<'_>>, _fd: i32, _out: i32) -> i32 {
    EBADF
}

fn fd_prestat_dir_name(_caller: Caller<'_, Ctx<'_>>, _fd: i32, _path: i32, _len: i32) -> i32 {
    EBADF
}

/// Ends the run; any status is a normal end (the result is read from stdout either way).
fn proc_exit(_caller: Caller<'_, Ctx<'_>>, status: i32) -> Result<(), Error> {
    Err(Error::i32_exit(status))
}

/// Every clock is the host's monotonic microsecond clock in nanoseconds. The unikernel has no
/// wall clock, so `realtime` is time since boot as well: an action cannot tell the date.
fn clock_time_get(mut caller: Caller<'_, Ctx<'_>>, id: i32, _precision: i64, out: i32) -> i32 {
    if !(0..=3).contains(&id) {
        return EINVAL;
    }
    with_memory(&mut caller, |mem, ctx| {
        let ns = ctx.host.now_us().saturating_mul(1000);
        write_u64(mem, addr(out), ns)
    })
}

fn clock_res_get(mut caller: Caller<'_, Ctx<'_>>, id: i32, out: i32) -> i32 {
    if !(0..=3).contains(&id) {
        return EINVAL;
    }
    with_memory(&mut caller, |mem, _| write_u64(mem, addr(out), 1000))
}

fn random_get(mut caller: Caller<'_, Ctx<'_>>, buf: i32, len: i32) -> i32 {
    with_memory(&mut caller, |mem, ctx| {
        ctx.host.random(slice_mut(mem, addr(buf), addr(len))?);
        Ok(())
    })
}

fn sched_yield(_caller: Caller<'_, Ctx<'_>>) -> i32 {
    SUCCESS
}

//! Runs OpenWhisk actions written as WebAssembly (WASI preview 1 commands) inside the unikernel.
//!
//! The kernel parses HTTP and calls [`Runtime::handle`] once per request; this crate speaks the
//! action protocol of our std action proxy (`runtimes/proxy`, native actions): `/init` once,
//! `/run` many times, the same status codes, error messages and log sentinels.
//!
//! An action is a WASI command: each run instantiates the module compiled at `/init` afresh and
//! calls `_start` with `argv = [<name>, <the run's value as JSON>]`, the same JSON on stdin and
//! the environment of the init message plus the run's `__OW_*` fields. The last line of stdout
//! is the result; everything else written is the activation's logs.

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod code;
mod run;
mod wasi;
mod zip;

#[cfg(test)]
mod tests;

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{Map, Value};
use wasmi::{CompilationMode, Config, Engine, ExternType, Module};

use run::Outcome;

/// Written on stdout and stderr after every failed init and every run, so that the invoker
/// can tell where an activation's logs end.
pub const SENTINEL: &str = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX";

/// OpenWhisk's message when a run's output is neither a JSON object nor an array.
pub const NOT_A_DICTIONARY: &str = "The action did not return a dictionary or array.";
const NO_BINARY_AT_INIT: &str =
    "The action failed to generate or locate a binary. See logs for details.";
const NO_BINARY_AT_RUN: &str = "The action failed to locate a binary. See logs for details.";
const INIT_TWICE: &str = "Cannot initialize the action more than once.";
const INIT_VALUE_NOT_OBJECT: &str = "The init message's value must be an object.";
const RUN_VALUE_NOT_DICTIONARY: &str =
    "The action did not receive a dictionary or array as an argument.";
const OUT_OF_MEMORY: &str = "The action exhausted its memory and was aborted.";

/// The run time limit when the init message has no `timeout` (OpenWhisk's default, 60 s).
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// The most of each output stream one run keeps; the excess is dropped with a note.
pub const OUTPUT_CAP: usize = 8 << 20;

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

impl Reply {
    fn ok(body: &Value) -> Self {
        Self {
            status: 200,
            // Serializing a `Value` cannot fail: its map keys are strings.
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    fn error(status: u16, message: &str) -> Self {
        let mut body = Map::new();
        body.insert("error".to_owned(), Value::String(message.to_owned()));
        Self {
            status,
            body: serde_json::to_vec(&Value::Object(body)).unwrap_or_default(),
        }
    }
}

/// Why `/init` found no usable module; written to stderr.
#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error(transparent)]
    Code(#[from] code::CodeError),
    #[error("the action's module does not validate or compile: {0}")]
    Compile(wasmi::Error),
    #[error(transparent)]
    Link(#[from] wasi::LinkError),
    #[error("the action's module has no _start function (it must be a WASI command)")]
    NoStart,
    #[error("the action's _start takes parameters or returns results (it must be [] -> [])")]
    StartType,
}

/// The action compiled at `/init`.
#[derive(Debug)]
struct Action {
    module: Module,
    /// `argv[0]`.
    name: String,
    env: Vec<(String, String)>,
    timeout_ms: u64,
}

/// The action runtime: nothing, then one compiled action.
#[derive(Debug)]
pub struct Runtime {
    limits: Limits,
    engine: Engine,
    action: Option<Action>,
}

impl Runtime {
    pub fn new(limits: Limits) -> Self {
        let mut config = Config::default();
        config.consume_fuel(true);
        // Everything is compiled at /init, so a run never pays for (or fails at) translation.
        config.compilation_mode(CompilationMode::Eager);
        Self {
            limits,
            engine: Engine::new(&config),
            action: None,
        }
    }

    /// One HTTP request: `POST /init`, `POST /run`; anything else is 404 `{"error":"..."}`.
    pub fn handle(&mut self, method: &str, path: &str, body: &[u8], host: &mut dyn Host) -> Reply {
        match (method, path) {
            ("POST", "/init") => self.init(body, host),
            ("POST", "/run") => {
                let mut out = Output::new(host);
                let reply = self.run(body, &mut out);
                out.sentinels();
                reply
            }
            _ => Reply::error(404, "Not found."),
        }
    }

    fn init(&mut self, body: &[u8], host: &mut dyn Host) -> Reply {
        let mut out = Output::new(host);
        if self.action.is_some() {
            out.line(Stream::Stderr, INIT_TWICE.as_bytes());
            out.sentinels();
            return Reply::error(403, INIT_TWICE);
        }
        let mut message: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        // Taken, not cloned: the code may be most of the guest's memory.
        let value = match message.get_mut("value").map(Value::take) {
            None => Map::new(),
            Some(Value::Object(v)) => v,
            Some(_) => {
                out.sentinels();
                return Reply::error(404, INIT_VALUE_NOT_OBJECT);
            }
        };
        let name = match value.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => "main".to_owned(),
        };
        let main = match value.get("main").and_then(Value::as_str) {
            Some(m) if !m.is_empty() => m,
            _ => "main",
        };
        let compiled = self.compile(&value, main, out.host);
        match compiled {
            Ok(module) => {
                self.action = Some(Action {
                    module,
                    name,
                    env: env_of(value.get("env")),
                    timeout_ms: value
                        .get("timeout")
                        .and_then(Value::as_u64)
                        .unwrap_or(DEFAULT_TIMEOUT_MS),
                });
                let mut ok = Map::new();
                ok.insert("ok".to_owned(), Value::Bool(true));
                Reply::ok(&Value::Object(ok))
            }
            Err(e) => {
                out.line(Stream::Stderr, e.to_string().as_bytes());
                out.sentinels();
                Reply::error(502, NO_BINARY_AT_INIT)
            }
        }
    }

    fn compile(
        &self,
        value: &Map<String, Value>,
        main: &str,
        host: &mut dyn Host,
    ) -> Result<Module, InitError> {
        let bytes = code::module_bytes(
            value.get("code").and_then(Value::as_str),
            value
                .get("binary")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            main,
        )?;
        let module = Module::new(&self.engine, &bytes).map_err(InitError::Compile)?;
        match module.get_export("_start") {
            Some(ExternType::Func(ty)) if ty.params().is_empty() && ty.results().is_empty() => {}
            Some(ExternType::Func(_)) => return Err(InitError::StartType),
            _ => return Err(InitError::NoStart),
        }
        // Link once against a throwaway store, so that an unsupported import fails /init
        // rather than every run.
        let ctx = wasi::Ctx::new(host, &[], &[], Vec::new(), 0, 0);
        let mut store = wasmi::Store::new(&self.engine, ctx);
        for import in module.imports() {
            wasi::link(&mut store, &import)?;
        }
        Ok(module)
    }

    fn run(&mut self, body: &[u8], out: &mut Output<'_>) -> Reply {
        let message = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(Value::Null) | Err(_) if body.iter().all(u8::is_ascii_whitespace) => Map::new(),
            _ => return Reply::error(404, RUN_VALUE_NOT_DICTIONARY),
        };
        let value = message
            .get("value")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        if !(value.is_object() || value.is_array()) {
            return Reply::error(404, RUN_VALUE_NOT_DICTIONARY);
        }
        let Some(action) = &self.action else {
            return Reply::error(502, NO_BINARY_AT_RUN);
        };
        let input = serde_json::to_string(&value).unwrap_or_default();
        let mut env = action.env.clone();
        env.extend(context_env(&message));
        let ctx = wasi::Ctx::new(
            &mut *out.host,
            &[action.name.as_str(), input.as_str()],
            &env,
            input.clone().into_bytes(),
            OUTPUT_CAP,
            self.limits.memory_bytes,
        );
        let (outcome, ctx) = run::execute(&self.engine, &action.module, ctx, action.timeout_ms);
        let stdout = String::from_utf8_lossy(&ctx.stdout.bytes).into_owned();
        let stderr = ctx.stderr.bytes;
        let dropped = [
            ("stdout", ctx.stdout.dropped),
            ("stderr", ctx.stderr.dropped),
        ];
        let (logs, last) = split_last_line(&stdout);
        out.write(Stream::Stdout, logs.as_bytes());
        out.write(Stream::Stderr, &stderr);
        for (name, n) in dropped.into_iter().filter(|(_, n)| *n > 0) {
            let note = format!(
                "wasm: the action wrote more than {OUTPUT_CAP} bytes to {name}; {n} bytes were dropped"
            );
            out.line(Stream::Stderr, note.as_bytes());
        }
        let last = last.trim();
        match outcome {
            Outcome::Finished => match serde_json::from_str::<Value>(last) {
                Ok(v @ (Value::Object(_) | Value::Array(_))) => Reply::ok(&v),
                _ => {
                    // Like OpenWhisk's proxy: the unparsable last line is logged.
                    out.line(Stream::Stdout, last.as_bytes());
                    Reply::error(502, NOT_A_DICTIONARY)
                }
            },
            Outcome::Trap(reason) => {
                if !last.is_empty() {
                    out.line(Stream::Stdout, last.as_bytes());
                }
                out.line(Stream::Stderr, format!("wasm trap: {reason}").as_bytes());
                Reply::error(502, NOT_A_DICTIONARY)
            }
            Outcome::TimedOut => {
                if !last.is_empty() {
                    out.line(Stream::Stdout, last.as_bytes());
                }
                let ms = action.timeout_ms;
                let note = format!("wasm: the run was stopped at its time limit of {ms} ms");
                out.line(Stream::Stderr, note.as_bytes());
                let msg = format!("The action exceeded its time limits of {ms} milliseconds.");
                Reply::error(502, &msg)
            }
            Outcome::OutOfMemory => {
                if !last.is_empty() {
                    out.line(Stream::Stdout, last.as_bytes());
                }
                let limit = self.limits.memory_bytes;
                let note =
                    format!("wasm: the run needed more than its memory limit of {limit} bytes");
                out.line(Stream::Stderr, note.as_bytes());
                Reply::error(502, OUT_OF_MEMORY)
            }
        }
    }
}

/// What goes to the host's streams, remembering whether each ends a line, so that a sentinel
/// always starts a line of its own.
struct Output<'h> {
    host: &'h mut dyn Host,
    /// Per stream (stdout, stderr): nothing written, or the last byte written was '\n'.
    at_line_start: [bool; 2],
}

impl<'h> Output<'h> {
    fn new(host: &'h mut dyn Host) -> Self {
        Self {
            host,
            at_line_start: [true; 2],
        }
    }

    fn index(stream: Stream) -> usize {
        match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            self.host.write(stream, bytes);
            self.at_line_start[Self::index(stream)] = last == b'\n';
        }
    }

    /// Writes `bytes` as one line of its own.
    fn line(&mut self, stream: Stream, bytes: &[u8]) {
        self.end_line(stream);
        let mut line = Vec::with_capacity(bytes.len() + 1);
        line.extend_from_slice(bytes);
        line.push(b'\n');
        self.write(stream, &line);
    }

    fn end_line(&mut self, stream: Stream) {
        if !self.at_line_start[Self::index(stream)] {
            self.write(stream, b"\n");
        }
    }

    /// The sentinel line on stdout and on stderr.
    fn sentinels(&mut self) {
        self.line(Stream::Stdout, SENTINEL.as_bytes());
        self.line(Stream::Stderr, SENTINEL.as_bytes());
    }
}

/// Splits stdout into the log part (ending with a newline) and its last line.
fn split_last_line(out: &str) -> (&str, &str) {
    let body = out.strip_suffix('\n').unwrap_or(out);
    match body.rfind('\n') {
        Some(i) => (&out[..=i], &body[i + 1..]),
        None => ("", body),
    }
}

/// `{"k": v}` → `[("k", "v")]`, strings as they are, `null` as empty, others as compact JSON.
fn env_of(env: Option<&Value>) -> Vec<(String, String)> {
    let Some(Value::Object(map)) = env else {
        return Vec::new();
    };
    map.iter().map(|(k, v)| (k.clone(), env_value(v))).collect()
}

fn env_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Every field of a run message but `value`, as `__OW_<FIELD>` (contract §5.3).
fn context_env(message: &Map<String, Value>) -> Vec<(String, String)> {
    message
        .iter()
        .filter(|(k, _)| k.as_str() != "value")
        .map(|(k, v)| (format!("__OW_{}", k.to_uppercase()), env_value(v)))
        .collect()
}

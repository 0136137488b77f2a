//! The runtime through its public API, with WAT actions and a fake host.

use std::borrow::ToOwned;
use std::format;
use std::string::String;
use std::vec::Vec;

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

/// A clock that moves `step_us` every time it is read, and the two streams as written.
struct FakeHost {
    now: core::cell::Cell<u64>,
    step_us: u64,
    out: Vec<u8>,
    err: Vec<u8>,
}

impl FakeHost {
    fn new() -> Self {
        Self::with_step(0)
    }

    fn with_step(step_us: u64) -> Self {
        Self {
            now: core::cell::Cell::new(1_000_000),
            step_us,
            out: Vec::new(),
            err: Vec::new(),
        }
    }

    fn out(&self) -> String {
        String::from_utf8(self.out.clone()).unwrap()
    }

    fn err(&self) -> String {
        String::from_utf8(self.err.clone()).unwrap()
    }
}

impl Host for FakeHost {
    fn now_us(&self) -> u64 {
        let t = self.now.get();
        self.now.set(t + self.step_us);
        t
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        match stream {
            Stream::Stdout => self.out.extend_from_slice(bytes),
            Stream::Stderr => self.err.extend_from_slice(bytes),
        }
    }

    fn random(&mut self, buf: &mut [u8]) {
        buf.fill(0xa5);
    }
}

const MIB: u64 = 1 << 20;

fn sentinel_line() -> String {
    format!("{SENTINEL}\n")
}

/// A WAT string literal for `text`.
fn lit(text: &str) -> String {
    let mut s = String::from("\"");
    for b in text.bytes() {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\{b:02x}"));
        }
    }
    s.push('"');
    s
}

/// Builds the WAT of a WASI command: the imports, helpers `$print (fd ptr len)`, `$print_cstr
/// (fd ptr)`, `$arg1 (result ptr)`, constant strings placed by `text`, and a `_start` body.
struct Wat {
    memory: String,
    data: String,
    next: u32,
    extra: String,
}

impl Wat {
    fn new() -> Self {
        Self {
            memory: "(memory (export \"memory\") 1)".into(),
            data: String::new(),
            next: 1024,
            extra: String::new(),
        }
    }

    /// `(i32.const ptr) (i32.const len)` of a constant string.
    fn text(&mut self, text: &str) -> String {
        let at = self.next;
        self.data
            .push_str(&format!("(data (i32.const {at}) {})\n", lit(text)));
        self.next += u32::try_from(text.len()).unwrap() + 1;
        format!("(i32.const {at}) (i32.const {})", text.len())
    }

    /// Code that writes `text` to `fd`.
    fn print(&mut self, fd: u32, text: &str) -> String {
        let t = self.text(text);
        format!("(call $print (i32.const {fd}) {t})\n")
    }

    fn build(&self, start: &str) -> Vec<u8> {
        let wat = format!(
            r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  {extra}
  {memory}
  {data}
  (func $print (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $l
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $l)))
    (local.get $n))
  (func $print_cstr (param $fd i32) (param $p i32)
    (call $print (local.get $fd) (local.get $p) (call $strlen (local.get $p))))
  (func $arg1 (result i32)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 64) (i32.const 8192)))
    (i32.load (i32.const 68)))
  (func (export "_start") {start}))"#,
            extra = self.extra,
            memory = self.memory,
            data = self.data,
        );
        wat::parse_str(&wat).unwrap_or_else(|e| panic!("{e}\n{wat}"))
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn init_body(code: &[u8], extra: Value) -> Vec<u8> {
    let mut value = json!({"name": "f", "main": "main", "binary": true, "code": b64(code)});
    if let (Value::Object(v), Value::Object(e)) = (&mut value, extra) {
        v.extend(e);
    }
    serde_json::to_vec(&json!({ "value": value })).unwrap()
}

fn runtime() -> Runtime {
    Runtime::new(Limits {
        memory_bytes: 16 * MIB,
    })
}

fn body(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn error(msg: &str) -> Value {
    json!({ "error": msg })
}

/// A runtime initialized with `module`; panics unless /init succeeds.
fn ready(module: &[u8], extra: Value, host: &mut FakeHost) -> Runtime {
    let mut rt = runtime();
    let r = rt.handle("POST", "/init", &init_body(module, extra), host);
    assert_eq!(
        (r.status, body(&r)),
        (200, json!({"ok": true})),
        "{}",
        host.err()
    );
    rt
}

fn run(rt: &mut Runtime, message: Value, host: &mut FakeHost) -> Reply {
    rt.handle("POST", "/run", &serde_json::to_vec(&message).unwrap(), host)
}

/// Prints a log line on each stream, then `{"echo":<argv[1]>}` as the result.
fn echo_module() -> Vec<u8> {
    let mut w = Wat::new();
    let mut start = w.print(1, "log line\n");
    start += &w.print(2, "err line\n");
    start += &w.print(1, "{\"echo\":");
    start += "(call $print_cstr (i32.const 1) (call $arg1))\n";
    start += &w.print(1, "}\n");
    w.build(&start)
}

#[test]
fn hello_params_in_result_out_logs_then_sentinels() {
    let mut host = FakeHost::new();
    let mut rt = ready(&echo_module(), json!({}), &mut host);
    assert_eq!((host.out(), host.err()), (String::new(), String::new()));
    let r = run(
        &mut rt,
        json!({"value": {"name": "Ada", "n": [1, 2]}}),
        &mut host,
    );
    assert_eq!(
        (r.status, body(&r)),
        (200, json!({"echo": {"name": "Ada", "n": [1, 2]}}))
    );
    assert_eq!(host.out(), format!("log line\n{}", sentinel_line()));
    assert_eq!(host.err(), format!("err line\n{}", sentinel_line()));
    // A second run gets a fresh instance and its own input.
    let r = run(&mut rt, json!({"value": [true]}), &mut host);
    assert_eq!((r.status, body(&r)), (200, json!({"echo": [true]})));
}

#[test]
fn argv0_is_the_action_name() {
    let mut w = Wat::new();
    let start = "(drop (call $arg1)) (call $print_cstr (i32.const 1) (i32.load (i32.const 64)))"
        .to_owned()
        + &w.print(1, "\n[]\n");
    let module = w.build(&start);
    let mut host = FakeHost::new();
    let mut rt = ready(&module, json!({"name": "hello"}), &mut host);
    assert_eq!(run(&mut rt, json!({}), &mut host).status, 200);
    assert_eq!(host.out(), format!("hello\n{}", sentinel_line()));
}

#[test]
fn init_env_and_run_fields_are_the_environment() {
    // Prints every environment string on its own line, then `{}`. The pointer table is at
    // 256, the strings at 16384, the constants from 1024.
    let mut w = Wat::new();
    let nl = w.text("\n");
    let mut start = format!(
        "(local $i i32)
        (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
        (drop (call $environ_get (i32.const 256) (i32.const 16384)))
        (block $done (loop $l
          (br_if $done (i32.ge_u (local.get $i) (i32.load (i32.const 16))))
          (call $print_cstr (i32.const 1)
            (i32.load (i32.add (i32.const 256) (i32.shl (local.get $i) (i32.const 2)))))
          (call $print (i32.const 1) {nl})
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $l)))"
    );
    start += &w.print(1, "{}\n");
    let module = w.build(&start);
    let mut host = FakeHost::new();
    let env = json!({"env": {"TOKEN": "x", "NUM": 3, "NOTHING": null}});
    let mut rt = ready(&module, env, &mut host);
    let r = run(
        &mut rt,
        json!({"value": {}, "activation_id": "abc", "deadline": "1714560060210", "action_version": null}),
        &mut host,
    );
    assert_eq!((r.status, body(&r)), (200, json!({})), "{}", host.err());
    let out = host.out();
    let mut lines: Vec<&str> = out.lines().filter(|l| *l != SENTINEL).collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "NOTHING=",
            "NUM=3",
            "TOKEN=x",
            "__OW_ACTION_VERSION=",
            "__OW_ACTIVATION_ID=abc",
            "__OW_DEADLINE=1714560060210",
        ]
    );
}

#[test]
fn stdin_holds_the_same_json() {
    // Reads stdin in 7-byte pieces until it ends, then prints `{"stdin":<it>}`.
    let mut w = Wat::new();
    let mut start = "(local $at i32) (local $n i32)
        (local.set $at (i32.const 16384))
        (block $eof (loop $l
          (i32.store (i32.const 32) (local.get $at))
          (i32.store (i32.const 36) (i32.const 7))
          (drop (call $fd_read (i32.const 0) (i32.const 32) (i32.const 1) (i32.const 40)))
          (local.set $n (i32.load (i32.const 40)))
          (br_if $eof (i32.eqz (local.get $n)))
          (local.set $at (i32.add (local.get $at) (local.get $n)))
          (br $l)))"
        .to_owned();
    start += &w.print(1, "{\"stdin\":");
    start +=
        "(call $print (i32.const 1) (i32.const 16384) (i32.sub (local.get $at) (i32.const 16384)))";
    start += &w.print(1, "}\n");
    let module = w.build(&start);
    let mut host = FakeHost::new();
    let mut rt = ready(&module, json!({}), &mut host);
    let params = json!({"text": "a longer string than one read", "k": [1, 2, 3]});
    let r = run(&mut rt, json!({"value": params}), &mut host);
    assert_eq!((r.status, body(&r)), (200, json!({ "stdin": params })));
}

#[test]
fn an_object_with_error_is_an_application_error() {
    let mut w = Wat::new();
    let start = w.print(1, "{\"error\":\"bad input\"}\n");
    let mut host = FakeHost::new();
    let mut rt = ready(&w.build(&start), json!({}), &mut host);
    let r = run(&mut rt, json!({"value": {}}), &mut host);
    assert_eq!((r.status, body(&r)), (200, error("bad input")));
}

#[test]
fn proc_exit_ends_the_run_normally() {
    let mut w = Wat::new();
    let mut start = w.print(1, "[1]\n");
    start += "(call $proc_exit (i32.const 3))";
    start += &w.print(1, "never\n");
    let mut host = FakeHost::new();
    let mut rt = ready(&w.build(&start), json!({}), &mut host);
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!((r.status, body(&r)), (200, json!([1])));
    assert_eq!(host.out(), sentinel_line());
}

#[test]
fn a_trap_is_logged_and_not_a_dictionary() {
    let mut w = Wat::new();
    let mut start = w.print(1, "before\n{\"partial\":1}\n");
    start += "unreachable";
    let mut host = FakeHost::new();
    let mut rt = ready(&w.build(&start), json!({}), &mut host);
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!((r.status, body(&r)), (502, error(NOT_A_DICTIONARY)));
    assert_eq!(
        host.out(),
        format!("before\n{{\"partial\":1}}\n{}", sentinel_line())
    );
    let err = host.err();
    assert!(err.starts_with("wasm trap: "), "{err}");
    assert!(err.ends_with(&format!("\n{}", sentinel_line())), "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
}

#[test]
fn out_of_bounds_and_stack_overflow_are_traps() {
    let mut host = FakeHost::new();
    let w = Wat::new();
    let mut rt = ready(
        &w.build("(drop (i32.load (i32.const 70000)))"),
        json!({}),
        &mut host,
    );
    assert_eq!(run(&mut rt, json!({}), &mut host).status, 502);
    assert!(host.err().starts_with("wasm trap: "));

    let mut w = Wat::new();
    w.extra = "(func $down (call $down))".into();
    let mut host = FakeHost::new();
    let mut rt = ready(&w.build("(call $down)"), json!({}), &mut host);
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!((r.status, body(&r)), (502, error(NOT_A_DICTIONARY)));
    assert!(host.err().starts_with("wasm trap: "));
}

#[test]
fn an_endless_loop_stops_at_its_time_limit() {
    let mut w = Wat::new();
    let start = w.print(1, "started\n") + "(loop $forever (br $forever))";
    // Every look at the clock moves it 30 ms: the 100 ms limit is passed after a few slices.
    let mut host = FakeHost::with_step(30_000);
    let mut rt = ready(&w.build(&start), json!({"timeout": 100}), &mut host);
    let before = host.now.get();
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!(
        (r.status, body(&r)),
        (
            502,
            error("The action exceeded its time limits of 100 milliseconds.")
        )
    );
    // Stopped at the first look past the limit, not later.
    assert_eq!(host.now.get() - before, 5 * 30_000);
    assert_eq!(host.out(), format!("started\n{}", sentinel_line()));
    assert!(host.err().ends_with(&sentinel_line()));
}

#[test]
fn the_default_time_limit_is_a_minute() {
    let w = Wat::new();
    let mut host = FakeHost::with_step(1_000_000);
    let mut rt = ready(&w.build("(loop $l (br $l))"), json!({}), &mut host);
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!(
        body(&r),
        error("The action exceeded its time limits of 60000 milliseconds.")
    );
}

#[test]
fn a_run_within_its_time_limit_is_not_stopped() {
    // About 3 slices of work, with a clock that moves 1 ms a look and a 1 s limit.
    let mut w = Wat::new();
    let start = "(local $i i32)
        (loop $l
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))"
        .to_owned()
        + &w.print(1, "{}\n");
    let mut host = FakeHost::with_step(1_000);
    let mut rt = ready(&w.build(&start), json!({"timeout": 1000}), &mut host);
    assert_eq!(run(&mut rt, json!({}), &mut host).status, 200);
}

fn small_runtime(module: &[u8], host: &mut FakeHost) -> Runtime {
    let mut rt = Runtime::new(Limits { memory_bytes: MIB });
    let r = rt.handle("POST", "/init", &init_body(module, json!({})), host);
    assert_eq!(r.status, 200, "{}", host.err());
    rt
}

#[test]
fn initial_memory_over_the_limit_is_exhausted_memory() {
    let mut w = Wat::new();
    w.memory = "(memory (export \"memory\") 17)".into(); // 17 × 64 KiB > 1 MiB
    let module = w.build("");
    let mut host = FakeHost::new();
    let mut rt = small_runtime(&module, &mut host);
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!((r.status, body(&r)), (502, error(OUT_OF_MEMORY)));
    assert!(host.err().ends_with(&sentinel_line()));

    // 16 pages is exactly the limit.
    let mut w = Wat::new();
    w.memory = "(memory (export \"memory\") 16)".into();
    let start = w.print(1, "{}\n");
    let mut host = FakeHost::new();
    let mut rt = small_runtime(&w.build(&start), &mut host);
    assert_eq!(run(&mut rt, json!({}), &mut host).status, 200);
}

#[test]
fn a_trap_after_a_refused_grow_is_exhausted_memory() {
    // Grows by 8 pages (allowed), then by 8 more (refused: 17 > 16), trapping on -1.
    let mut w = Wat::new();
    let start = w.print(1, "growing\n")
        + "(if (i32.eq (memory.grow (i32.const 8)) (i32.const -1)) (then unreachable))
           (if (i32.eq (memory.grow (i32.const 8)) (i32.const -1)) (then unreachable))";
    let mut host = FakeHost::new();
    let mut rt = small_runtime(&w.build(&start), &mut host);
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!((r.status, body(&r)), (502, error(OUT_OF_MEMORY)));
    assert_eq!(host.out(), format!("growing\n{}", sentinel_line()));

    // The budget is per run: the next run starts from the initial memory again, and growth
    // within the limit succeeds.
    let mut w = Wat::new();
    let start = "(if (i32.eq (memory.grow (i32.const 15)) (i32.const -1)) (then unreachable))"
        .to_owned()
        + &w.print(1, "{}\n");
    let mut host = FakeHost::new();
    let mut rt = small_runtime(&w.build(&start), &mut host);
    for _ in 0..2 {
        assert_eq!(run(&mut rt, json!({}), &mut host).status, 200);
    }
}

#[test]
fn a_grow_refused_by_the_module_maximum_is_a_plain_trap() {
    let mut w = Wat::new();
    w.memory = "(memory (export \"memory\") 1 2)".into();
    let start = "(if (i32.eq (memory.grow (i32.const 4)) (i32.const -1)) (then unreachable))";
    let mut host = FakeHost::new();
    let mut rt = small_runtime(&w.build(start), &mut host);
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!((r.status, body(&r)), (502, error(NOT_A_DICTIONARY)));
}

#[test]
fn no_output_is_not_a_dictionary() {
    let w = Wat::new();
    let mut host = FakeHost::new();
    let mut rt = ready(&w.build(""), json!({}), &mut host);
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!((r.status, body(&r)), (502, error(NOT_A_DICTIONARY)));
    // The proxy logs the (empty) last line.
    assert_eq!(host.out(), format!("\n{}", sentinel_line()));
    assert_eq!(host.err(), sentinel_line());
}

#[test]
fn a_last_line_that_is_not_an_object_or_array_is_logged() {
    for last in ["hello world", "42", "\"text\"", "{\"unterminated\":"] {
        let mut w = Wat::new();
        let start = w.print(1, &format!("log\n{last}"));
        let mut host = FakeHost::new();
        let mut rt = ready(&w.build(&start), json!({}), &mut host);
        let r = run(&mut rt, json!({}), &mut host);
        assert_eq!(
            (r.status, body(&r)),
            (502, error(NOT_A_DICTIONARY)),
            "{last}"
        );
        assert_eq!(host.out(), format!("log\n{last}\n{}", sentinel_line()));
    }
}

#[test]
fn stderr_without_a_final_newline_still_ends_before_the_sentinel() {
    let mut w = Wat::new();
    let start = w.print(2, "no newline") + &w.print(1, "{}");
    let mut host = FakeHost::new();
    let mut rt = ready(&w.build(&start), json!({}), &mut host);
    assert_eq!(run(&mut rt, json!({}), &mut host).status, 200);
    assert_eq!(host.err(), format!("no newline\n{}", sentinel_line()));
    assert_eq!(host.out(), sentinel_line());
}

#[test]
fn output_past_the_cap_is_dropped_with_a_note() {
    // Writes 129 times 64 KiB of 'a' (over the 8 MiB cap).
    let mut w = Wat::new();
    let start = "(local $i i32)
        (memory.fill (i32.const 65536) (i32.const 97) (i32.const 65536))
        (loop $l
          (call $print (i32.const 1) (i32.const 65536) (i32.const 65536))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 129))))"
        .to_owned()
        + &w.print(1, "\n{}\n");
    w.memory = "(memory (export \"memory\") 2)".into();
    let mut host = FakeHost::new();
    let mut rt = ready(&w.build(&start), json!({}), &mut host);
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!(r.status, 502);
    assert_eq!(host.out.len(), OUTPUT_CAP + 1 + sentinel_line().len());
    assert!(
        host.err()
            .contains("more than 8388608 bytes to stdout; 65540 bytes were dropped"),
        "{}",
        host.err()
    );
}

fn init_fails(rt: &mut Runtime, body: &[u8]) -> String {
    let mut host = FakeHost::new();
    let r = rt.handle("POST", "/init", body, &mut host);
    assert_eq!(
        (r.status, self::body(&r)),
        (
            502,
            error("The action failed to generate or locate a binary. See logs for details.")
        )
    );
    assert_eq!(host.out(), sentinel_line());
    let err = host.err();
    assert!(err.ends_with(&format!("\n{}", sentinel_line())), "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
    err.lines().next().unwrap().to_owned()
}

#[test]
fn an_invalid_module_fails_init_and_runs_find_no_binary() {
    let mut rt = runtime();
    // Valid header, then a type section that lies about its length.
    let reason = init_fails(
        &mut rt,
        &init_body(b"\0asm\x01\0\0\0\x01\x05\x01", json!({})),
    );
    assert!(reason.contains("does not validate or compile"), "{reason}");
    let mut host = FakeHost::new();
    let r = run(&mut rt, json!({"value": {}}), &mut host);
    assert_eq!(
        (r.status, body(&r)),
        (
            502,
            error("The action failed to locate a binary. See logs for details.")
        )
    );
    assert_eq!(host.out(), sentinel_line());
    assert_eq!(host.err(), sentinel_line());
}

#[test]
fn an_invalid_function_body_fails_init() {
    // Validation is eager: a body that only fails when translated (`i32.add` on an empty
    // stack) fails /init, not the first run. Built by hand: type () -> (); one function;
    // exported as _start.
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]); // type section
    m.extend_from_slice(&[0x03, 0x02, 0x01, 0x00]); // function section
    m.extend_from_slice(&[0x07, 0x0a, 0x01, 0x06]); // export section, name of 6 bytes
    m.extend_from_slice(b"_start");
    m.extend_from_slice(&[0x00, 0x00]); // function 0
    m.extend_from_slice(&[0x0a, 0x05, 0x01, 0x03, 0x00, 0x6a, 0x0b]); // code: i32.add end
    let mut rt = runtime();
    let reason = init_fails(&mut rt, &init_body(&m, json!({})));
    assert!(reason.contains("does not validate or compile"), "{reason}");
}

#[test]
fn a_module_without_start_fails_init() {
    let m =
        wat::parse_str("(module (memory (export \"memory\") 1) (func (export \"main\")))").unwrap();
    let reason = init_fails(&mut runtime(), &init_body(&m, json!({})));
    assert!(reason.contains("_start"), "{reason}");
    let m = wat::parse_str("(module (func (export \"_start\") (param i32)))").unwrap();
    let reason = init_fails(&mut runtime(), &init_body(&m, json!({})));
    assert!(reason.contains("_start"), "{reason}");
}

#[test]
fn imports_outside_wasi_fail_init_naming_them() {
    let mut w = Wat::new();
    w.extra = "(import \"env\" \"log_it\" (func $log_it (param i32)))".into();
    let reason = init_fails(&mut runtime(), &init_body(&w.build(""), json!({})));
    assert!(reason.contains("env.log_it"), "{reason}");
    // A WASI function with the wrong type.
    let m = wat::parse_str(
        "(module (import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32)))
                 (func (export \"_start\")))",
    )
    .unwrap();
    let reason = init_fails(&mut runtime(), &init_body(&m, json!({})));
    assert!(reason.contains("fd_write"), "{reason}");
    // A WASI memory import.
    let m = wat::parse_str(
        "(module (import \"wasi_snapshot_preview1\" \"memory\" (memory 1))
                 (func (export \"_start\")))",
    )
    .unwrap();
    let reason = init_fails(&mut runtime(), &init_body(&m, json!({})));
    assert!(reason.contains("memory"), "{reason}");
}

#[test]
fn other_wasi_functions_return_enosys() {
    // path_open returns an errno (printed as `{"errno":<digit><digit>}`); poll_oneoff too.
    let mut w = Wat::new();
    w.extra = "(import \"wasi_snapshot_preview1\" \"path_open\"
                 (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"
        .into();
    let mut start = "(local $e i32)
        (local.set $e (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 0)
                                       (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0)
                                       (i32.const 0)))
        (i32.store8 (i32.const 100) (i32.add (i32.const 48) (i32.div_u (local.get $e) (i32.const 10))))
        (i32.store8 (i32.const 101) (i32.add (i32.const 48) (i32.rem_u (local.get $e) (i32.const 10))))"
        .to_owned();
    start += &w.print(1, "{\"errno\":");
    start += "(call $print (i32.const 1) (i32.const 100) (i32.const 2))";
    start += &w.print(1, "}\n");
    let mut host = FakeHost::new();
    let mut rt = ready(&w.build(&start), json!({}), &mut host);
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!((r.status, body(&r)), (200, json!({"errno": 52})));
}

#[test]
fn clocks_random_and_std_fds() {
    let mut w = Wat::new();
    w.extra = r#"
      (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "clock_res_get" (func $res (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fdstat (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
      (func $check (param $ok i32) (if (i32.eqz (local.get $ok)) (then unreachable)))"#
        .into();
    let start = w.print(1, "[]\n")
        + "
        (call $check (i32.eqz (call $clock (i32.const 1) (i64.const 1) (i32.const 200))))
        ;; The fake clock reads 1 s: 10^9 ns.
        (call $check (i64.eq (i64.load (i32.const 200)) (i64.const 1000000000)))
        (call $check (i32.eqz (call $clock (i32.const 0) (i64.const 1) (i32.const 200))))
        (call $check (i32.eq (call $clock (i32.const 9) (i64.const 1) (i32.const 200)) (i32.const 28)))
        (call $check (i32.eqz (call $res (i32.const 1) (i32.const 200))))
        (call $check (i64.eq (i64.load (i32.const 200)) (i64.const 1000)))
        (call $check (i32.eqz (call $random (i32.const 300) (i32.const 4))))
        (call $check (i32.eq (i32.load (i32.const 300)) (i32.const 0xa5a5a5a5)))
        (call $check (i32.eq (call $random (i32.const 65530) (i32.const 100)) (i32.const 21)))
        (call $check (i32.eq (call $seek (i32.const 1) (i64.const 0) (i32.const 0) (i32.const 200)) (i32.const 70)))
        (call $check (i32.eq (call $seek (i32.const 5) (i64.const 0) (i32.const 0) (i32.const 200)) (i32.const 8)))
        (call $check (i32.eq (call $prestat (i32.const 3) (i32.const 200)) (i32.const 8)))
        (call $check (i32.eqz (call $fdstat (i32.const 1) (i32.const 200))))
        (call $check (i32.eq (i32.load8_u (i32.const 200)) (i32.const 2)))
        (call $check (i32.eq (call $fdstat (i32.const 7) (i32.const 200)) (i32.const 8)))
        (call $check (i32.eq (call $fd_write (i32.const 9) (i32.const 0) (i32.const 0) (i32.const 8)) (i32.const 8)))
        ;; An iovec past the end of memory is EFAULT, not a trap.
        (i32.store (i32.const 0) (i32.const 65000))
        (i32.store (i32.const 4) (i32.const 1000))
        (call $check (i32.eq (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)) (i32.const 21)))
        (call $check (i32.eqz (call $yield)))
        (call $check (i32.eqz (call $close (i32.const 0))))";
    let mut host = FakeHost::new();
    let mut rt = ready(&w.build(&start), json!({}), &mut host);
    let r = run(&mut rt, json!({}), &mut host);
    assert_eq!((r.status, body(&r)), (200, json!([])), "{}", host.err());
}

fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = ::zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        let opts = ::zip::write::SimpleFileOptions::default()
            .compression_method(::zip::CompressionMethod::Deflated);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn printer(text: &str) -> Vec<u8> {
    let mut w = Wat::new();
    let start = w.print(1, text);
    w.build(&start)
}

#[test]
fn zip_archives_are_searched_for_the_module() {
    let a = printer("{\"from\":\"a\"}\n");
    let main = printer("{\"from\":\"main\"}\n");
    let only = printer("{\"from\":\"only\"}\n");
    let cases: [(Vec<u8>, &str, &str); 3] = [
        // `<main>.wasm` first.
        (
            zip(&[("README", b"x"), ("main.wasm", &main), ("a.wasm", &a)]),
            "a",
            "a",
        ),
        // Else `main.wasm`.
        (
            zip(&[("a.wasm", &a), ("main.wasm", &main)]),
            "other",
            "main",
        ),
        // Else the only module.
        (
            zip(&[("lib/", b""), ("lib/only.wasm", &only), ("x.txt", b"t")]),
            "main",
            "only",
        ),
    ];
    for (archive, main_name, from) in cases {
        let mut host = FakeHost::new();
        let mut rt = ready(&archive, json!({"main": main_name}), &mut host);
        let r = run(&mut rt, json!({}), &mut host);
        assert_eq!((r.status, body(&r)), (200, json!({ "from": from })));
    }
    let reason = init_fails(
        &mut runtime(),
        &init_body(&zip(&[("a.wasm", &a), ("b.wasm", &a)]), json!({})),
    );
    assert!(reason.contains("several .wasm files"), "{reason}");
    let reason = init_fails(&mut runtime(), &init_body(&zip(&[("x", b"y")]), json!({})));
    assert!(reason.contains("no .wasm file"), "{reason}");
    // A truncated archive.
    let whole = zip(&[("main.wasm", &main)]);
    let reason = init_fails(
        &mut runtime(),
        &init_body(&whole[..whole.len() - 30], json!({})),
    );
    assert!(reason.contains("zip"), "{reason}");
}

#[test]
fn base64_with_whitespace_and_without_padding_is_accepted() {
    let module = printer("{}\n");
    let code = b64(&module);
    let wrapped: String = code
        .as_bytes()
        .chunks(20)
        .map(|c| format!("{}\r\n  ", std::str::from_utf8(c).unwrap()))
        .collect();
    for code in [wrapped, code.trim_end_matches('=').to_owned()] {
        let body = json!({"value": {"binary": true, "code": code}});
        let mut host = FakeHost::new();
        let mut rt = runtime();
        let r = rt.handle(
            "POST",
            "/init",
            &serde_json::to_vec(&body).unwrap(),
            &mut host,
        );
        assert_eq!(r.status, 200, "{}", host.err());
        assert_eq!(run(&mut rt, json!({}), &mut host).status, 200);
    }
}

#[test]
fn code_that_is_not_a_module_fails_init() {
    let cases = [
        json!({"value": {"binary": true, "code": "not base64!"}}),
        json!({"value": {"binary": true, "code": b64(b"plain bytes, not a zip")}}),
        json!({"value": {"binary": false, "code": "(module)"}}),
        json!({"value": {"code": "(module)"}}),
        json!({"value": {"binary": true}}),
        json!({"value": {}}),
    ];
    for case in cases {
        init_fails(&mut runtime(), &serde_json::to_vec(&case).unwrap());
    }
    // A body that is not JSON is an init without code, as in the proxy.
    init_fails(&mut runtime(), b"\xff{garbage");
    init_fails(&mut runtime(), b"");
}

#[test]
fn a_second_init_is_refused() {
    let mut host = FakeHost::new();
    let mut rt = ready(&echo_module(), json!({}), &mut host);
    let r = rt.handle(
        "POST",
        "/init",
        &init_body(&printer("[2]\n"), json!({})),
        &mut host,
    );
    assert_eq!(
        (r.status, body(&r)),
        (403, error("Cannot initialize the action more than once."))
    );
    assert_eq!(host.out(), sentinel_line());
    assert_eq!(
        host.err(),
        format!(
            "Cannot initialize the action more than once.\n{}",
            sentinel_line()
        )
    );
    // The first action stays.
    let r = run(&mut rt, json!({"value": {}}), &mut host);
    assert_eq!(body(&r), json!({"echo": {}}));
}

#[test]
fn an_init_value_that_is_not_an_object_is_404() {
    for value in [json!("x"), json!([1]), json!(null), json!(3)] {
        let mut host = FakeHost::new();
        let mut rt = runtime();
        let b = serde_json::to_vec(&json!({ "value": value })).unwrap();
        let r = rt.handle("POST", "/init", &b, &mut host);
        assert_eq!(
            (r.status, body(&r)),
            (404, error("The init message's value must be an object."))
        );
        assert_eq!((host.out(), host.err()), (sentinel_line(), sentinel_line()));
    }
}

#[test]
fn malformed_run_bodies_are_404_with_sentinels() {
    let msg = "The action did not receive a dictionary or array as an argument.";
    let mut host = FakeHost::new();
    let mut rt = ready(&echo_module(), json!({}), &mut host);
    for b in [
        &b"[1]"[..],
        b"null",
        b"\"x\"",
        b"{\"value\": 3}",
        b"{\"value\": \"s\"}",
        b"{\"value\": null}",
        b"{not json",
        b"\xff\xfe",
    ] {
        let mut host = FakeHost::new();
        let r = rt.handle("POST", "/run", b, &mut host);
        assert_eq!((r.status, body(&r)), (404, error(msg)), "{b:?}");
        assert_eq!((host.out(), host.err()), (sentinel_line(), sentinel_line()));
    }
    // An empty (or blank) body and a message without value run with `{}`.
    for b in [&b""[..], b" \n", b"{}"] {
        let mut host = FakeHost::new();
        let r = rt.handle("POST", "/run", b, &mut host);
        assert_eq!((r.status, body(&r)), (200, json!({"echo": {}})), "{b:?}");
    }
}

#[test]
fn a_run_before_init_finds_no_binary() {
    let mut host = FakeHost::new();
    let r = runtime().handle("POST", "/run", b"{\"value\":{}}", &mut host);
    assert_eq!(
        (r.status, body(&r)),
        (
            502,
            error("The action failed to locate a binary. See logs for details.")
        )
    );
    assert_eq!((host.out(), host.err()), (sentinel_line(), sentinel_line()));
}

#[test]
fn other_routes_are_404_without_sentinels() {
    let mut host = FakeHost::new();
    let mut rt = runtime();
    for (m, p) in [
        ("GET", "/run"),
        ("POST", "/"),
        ("PUT", "/init"),
        ("POST", "/run/x"),
    ] {
        let r = rt.handle(m, p, b"{}", &mut host);
        assert_eq!((r.status, body(&r)), (404, error("Not found.")));
    }
    assert_eq!((host.out(), host.err()), (String::new(), String::new()));
}

fn function(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).unwrap()
}

#[test]
fn functions_hello_greets_by_name() {
    let module = function(include_str!("../../functions/hello.wat"));
    let mut host = FakeHost::new();
    let mut rt = ready(&module, json!({"name": "hello"}), &mut host);
    let cases = [
        (json!({"name": "World"}), "Hello World"),
        (
            json!({"other": {"x": 1}, "name" : "Ada \"L\""}),
            "Hello Ada \"L\"",
        ),
        (json!({}), "Hello stranger"),
        (json!({"name": 3}), "Hello stranger"),
        (json!([1]), "Hello stranger"),
    ];
    for (params, greeting) in cases {
        let mut host = FakeHost::new();
        let r = run(&mut rt, json!({ "value": params }), &mut host);
        assert_eq!(
            (r.status, body(&r)),
            (200, json!({ "greeting": greeting })),
            "{params}"
        );
        assert_eq!(
            host.out(),
            format!("hello: composing a greeting\n{}", sentinel_line())
        );
    }
    // A parameter larger than the initial page.
    let long = "x".repeat(100_000);
    let r = run(&mut rt, json!({"value": {"name": long}}), &mut host);
    assert_eq!(body(&r), json!({ "greeting": format!("Hello {long}") }));
}

#[test]
fn functions_sieve_counts_primes() {
    let module = function(include_str!("../../functions/sieve.wat"));
    let mut host = FakeHost::new();
    let mut rt = ready(&module, json!({}), &mut host);
    for (params, primes) in [
        (json!({}), 2262),
        (json!({"n": 0}), 2262),
        (json!({"n": 1}), 0),
        (json!({"n": 2}), 1),
        (json!({"n": 100}), 25),
        (json!({"x": "n", "n" : 1000}), 168),
        (json!({"n": 200000}), 17984),
    ] {
        let r = run(&mut rt, json!({ "value": params }), &mut host);
        assert_eq!(
            (r.status, body(&r)),
            (200, json!({ "primes": primes })),
            "{params}: {}",
            host.err()
        );
    }
    // A sieve that does not fit the memory limit.
    let mut rt = Runtime::new(Limits { memory_bytes: MIB });
    let r = rt.handle("POST", "/init", &init_body(&module, json!({})), &mut host);
    assert_eq!(r.status, 200);
    let r = run(&mut rt, json!({"value": {"n": 2000000}}), &mut host);
    assert_eq!((r.status, body(&r)), (502, error(OUT_OF_MEMORY)));
}

#[test]
fn context_env_and_env_of_follow_the_proxy() {
    let Value::Object(m) =
        json!({"value": {"x": 1}, "namespace": "guest", "api_key": "k:v", "n": 1})
    else {
        unreachable!()
    };
    let mut env: Vec<String> = context_env(&m)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.sort();
    assert_eq!(
        env,
        ["__OW_API_KEY=k:v", "__OW_N=1", "__OW_NAMESPACE=guest"]
    );
    let env = env_of(Some(&json!({"o": {"a": [1]}, "b": true})));
    let mut env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    assert_eq!(env, ["b=true", "o={\"a\":[1]}"]);
    assert!(env_of(Some(&json!([1]))).is_empty());
}

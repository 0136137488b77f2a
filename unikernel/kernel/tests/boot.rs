//! Boots the real kernel under QEMU (TCG, `-M microvm`, user-mode networking bound to loopback)
//! and speaks the action protocol to it, as the invoker does.
//!
//! Needs `qemu-system-x86_64`. Bounds are generous (TCG on two shared cores); no sleep decides an
//! outcome: waits poll for a condition until a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;

/// The kernel cargo built for this test; `WASM_UNIKERNEL_ELF` points elsewhere (e.g. the
/// release build, for `boot_times`).
fn kernel() -> String {
    std::env::var("WASM_UNIKERNEL_ELF")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_wasm-unikernel").to_owned())
}
const BOOT_BOUND: Duration = Duration::from_secs(10);
const SENTINEL: &str = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX";

/// The action (`tests/action.wat`, assembled by build.rs with the `wat` crate): a WASI command
/// that writes a line on stdout, a line on stderr, then its result as stdout's last line.
const ACTION: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/boot_action.wasm"));

/// The console, collected line by line by a reader thread.
#[derive(Default)]
struct Console {
    lines: Mutex<Vec<String>>,
    /// QEMU's stdout reached its end.
    closed: Mutex<bool>,
    changed: Condvar,
}

struct Vm {
    child: Child,
    port: u16,
    console: Arc<Console>,
    started: Instant,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl Vm {
    fn start(extra: &str) -> Vm {
        let port = free_port();
        let started = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,pit=on,pic=on,rtc=on",
                "-accel",
                "tcg",
                "-m",
                "96M",
            ])
            .args([
                "-smp",
                "1",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
            ])
            .args(["-no-reboot", "-chardev", "stdio,id=console,signal=off"])
            .args(["-serial", "chardev:console"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .arg("-netdev")
            .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8080"))
            .args(["-device", "virtio-net-device,netdev=n0"])
            .args(["-kernel", &kernel(), "-append"])
            .arg(format!(
                "ip=10.0.2.15::10.0.2.2:255.255.255.0:boottest:eth0:off wasm_memory_mb=64 {extra}"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu-system-x86_64");
        let console = Arc::new(Console::default());
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&console);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lines.lock().unwrap().push(line);
                sink.changed.notify_all();
            }
            *sink.closed.lock().unwrap() = true;
            sink.changed.notify_all();
        });
        Vm {
            child,
            port,
            console,
            started,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Waits until `count` console lines satisfy `pred`; panics with the console at the deadline.
    fn wait_lines(&self, count: usize, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut lines = self.console.lines.lock().unwrap();
        loop {
            if lines.iter().filter(|l| pred(l)).count() >= count {
                return;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "console lines not seen; console:\n{}",
                lines.join("\n")
            );
            lines = self
                .console
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    fn console_text(&self) -> String {
        self.console.lines.lock().unwrap().join("\n")
    }

    /// Waits for QEMU to exit on its own.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for qemu") {
                // The console's last lines may still be in the pipe.
                let mut closed = self.console.closed.lock().unwrap();
                while !*closed {
                    let now = Instant::now();
                    assert!(now < deadline, "console not closed");
                    closed = self
                        .console
                        .changed
                        .wait_timeout(closed, deadline - now)
                        .unwrap()
                        .0;
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "qemu still running; console:\n{}",
                self.console_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the kernel's ready line, then for the first answer to a request; returns the
    /// times from spawn to both. User-mode networking accepts on the host side itself, so only an
    /// answer shows that the guest accepted; and a SYN it forwards before the guest listens is
    /// retried only after a second, so connecting starts after the ready line.
    fn wait_ready(&self) -> (Duration, Duration) {
        let deadline = self.started + BOOT_BOUND;
        self.wait_lines(1, BOOT_BOUND, |l| l.starts_with("uk: ready: "));
        let ready_line = self.started.elapsed();
        loop {
            if let Ok(mut s) = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)) {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                if s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
                    .is_ok()
                {
                    let mut buf = [0u8; 12];
                    if s.read_exact(&mut buf).is_ok() {
                        assert_eq!(&buf, b"HTTP/1.1 404", "the first answer");
                        return (ready_line, self.started.elapsed());
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "not ready in {BOOT_BOUND:?}; console:\n{}",
                self.console_text()
            );
            // Pacing between attempts only; the deadline decides.
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 response: status and body (by Content-Length).
fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {status_line:?}"));
    let mut length = None;
    let mut content_type = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("header");
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = Some(value.trim().parse::<usize>().expect("length")),
            "content-type" => content_type = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let mut body = vec![0; length.expect("Content-Length")];
    reader.read_exact(&mut body).expect("body");
    (status, String::from_utf8(body).expect("UTF-8 body"))
}

fn post(reader: &mut BufReader<TcpStream>, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    reader
        .get_mut()
        .write_all(request.as_bytes())
        .expect("send request");
    read_response(reader)
}

fn connect(vm: &Vm) -> BufReader<TcpStream> {
    let s = TcpStream::connect_timeout(&vm.addr(), Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    BufReader::new(s)
}

fn init_body() -> String {
    let code = base64::engine::general_purpose::STANDARD.encode(ACTION);
    format!(r#"{{"value":{{"name":"boot","main":"main","binary":true,"code":"{code}"}}}}"#)
}

#[test]
fn serves_the_action_protocol() {
    let vm = Vm::start("");
    let (line, answer) = vm.wait_ready();
    eprintln!("spawn to ready line {line:?}, to first answer {answer:?}");
    vm.wait_lines(1, BOOT_BOUND, |l| l.starts_with("uk: ready: 10.0.2.15/24"));

    // Readiness probes: connect and close without a request, several times.
    for _ in 0..3 {
        drop(TcpStream::connect_timeout(&vm.addr(), Duration::from_secs(5)).expect("probe"));
    }

    // One keep-alive connection: /init, then two /runs.
    let mut conn = connect(&vm);
    let (status, body) = post(&mut conn, "/init", &init_body());
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
    for _ in 0..2 {
        let (status, body) = post(&mut conn, "/run", r#"{"value":{"x":1}}"#);
        assert_eq!(status, 200, "{body}");
        assert_eq!(serde_like(&body), r#"{"ok":true}"#);
    }
    vm.wait_lines(2, Duration::from_secs(10), |l| l == "out| log from wasm");
    vm.wait_lines(2, Duration::from_secs(10), |l| {
        l == "err| warning from wasm"
    });
    vm.wait_lines(2, Duration::from_secs(10), |l| {
        l == format!("out| {SENTINEL}")
    });
    vm.wait_lines(2, Duration::from_secs(10), |l| {
        l == format!("err| {SENTINEL}")
    });
    // The result line is the result, not a log line.
    assert!(
        !vm.console_text().contains("out| {\"ok\":true}"),
        "{}",
        vm.console_text()
    );

    // A second /init is refused, an unknown path is 404, on the same connection.
    let (status, _) = post(&mut conn, "/init", &init_body());
    assert_eq!(status, 403);
    let (status, body) = post(&mut conn, "/nowhere", "{}");
    assert_eq!(status, 404, "{body}");

    // Garbage gets a 400 and a closed connection; the guest keeps serving.
    let mut bad = connect(&vm);
    bad.get_mut()
        .write_all(b"\x00\x01garbage \xff\r\n\r\n")
        .expect("send garbage");
    let (status, _) = read_response(&mut bad);
    assert_eq!(status, 400);
    let mut rest = Vec::new();
    bad.read_to_end(&mut rest)
        .expect("the server closes the connection");
    assert!(rest.is_empty());
    let (status, body) = post(&mut conn, "/run", r#"{"value":{}}"#);
    assert_eq!(
        (status, serde_like(&body).as_str()),
        (200, r#"{"ok":true}"#)
    );

    // A body beyond OpenWhisk's 48 MiB is refused up front.
    let mut big = connect(&vm);
    big.get_mut()
        .write_all(b"POST /run HTTP/1.1\r\nContent-Length: 50331649\r\n\r\n")
        .expect("send head");
    assert_eq!(read_response(&mut big).0, 413);

    // Every kernel line is untagged.
    for line in vm.console.lines.lock().unwrap().iter() {
        assert!(
            line.starts_with("uk: ") || line.starts_with("out| ") || line.starts_with("err| "),
            "unframed console line {line:?}"
        );
    }
}

/// The result without insignificant whitespace (the library may pretty-print or not).
fn serde_like(body: &str) -> String {
    body.chars().filter(|c| !c.is_whitespace()).collect()
}

#[test]
fn a_page_fault_is_reported_and_ends_qemu() {
    let mut vm = Vm::start("crash_test=pf");
    let status = vm.wait_exit(BOOT_BOUND);
    assert_eq!(status.code(), Some(7), "console:\n{}", vm.console_text());
    let console = vm.console_text();
    assert!(
        console.contains("uk: fatal: CPU exception 14 (page fault) error 0x0 rip 0x"),
        "{console}"
    );
    assert!(
        console.contains("uk: fatal: page fault address (cr2) 0x4000000000"),
        "{console}"
    );
}

#[test]
fn a_stack_overflow_hits_the_guard_page() {
    let mut vm = Vm::start("crash_test=stack");
    let status = vm.wait_exit(BOOT_BOUND);
    assert_eq!(status.code(), Some(7), "console:\n{}", vm.console_text());
    let console = vm.console_text();
    assert!(
        console.contains("uk: fatal: CPU exception 14 (page fault) error 0x2 rip 0x"),
        "{console}"
    );
    assert!(
        console.contains("uk: fatal: page fault address (cr2) 0x"),
        "{console}"
    );
}

#[test]
fn a_panic_is_reported_and_ends_qemu() {
    let mut vm = Vm::start("crash_test=panic");
    let status = vm.wait_exit(BOOT_BOUND);
    assert_eq!(status.code(), Some(5), "console:\n{}", vm.console_text());
    assert!(
        vm.console_text().contains("uk: fatal: panic: "),
        "{}",
        vm.console_text()
    );
}

#[test]
fn an_allocation_failure_ends_as_a_panic() {
    let mut vm = Vm::start("crash_test=oom");
    let status = vm.wait_exit(BOOT_BOUND);
    assert_eq!(status.code(), Some(5), "console:\n{}", vm.console_text());
    assert!(
        vm.console_text().contains("uk: fatal: panic: "),
        "{}",
        vm.console_text()
    );
}

/// Spawn to ready line and to first answer over 10 boots (by hand: `--ignored --nocapture`,
/// with `WASM_UNIKERNEL_ELF=target/release/wasm-unikernel` for the release build).
#[test]
#[ignore = "a measurement, not a check"]
fn boot_times() {
    let (mut lines, mut answers): (Vec<Duration>, Vec<Duration>) =
        (0..10).map(|_| Vm::start("").wait_ready()).unzip();
    for (what, times) in [("ready line", &mut lines), ("first answer", &mut answers)] {
        times.sort();
        eprintln!(
            "spawn to {what} over 10 boots: min {:?} median {:?} max {:?}",
            times[0],
            (times[4] + times[5]) / 2,
            times[9]
        );
    }
}

//! The HTTP/1.1 server of the action protocol on smoltcp TCP sockets.
//!
//! Several sockets listen on the port; each has its connection's state here. Requests are handled
//! one at a time, synchronously (the action library is; OpenWhisk's concurrency 1): the server
//! reads a complete request (head, then the body by `Content-Length` into a growing buffer),
//! calls the runtime, and queues the reply. Other connections wait in their sockets meanwhile.
//! A connection that closes without a request (the invoker's readiness probe) is just closed.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use wasm_action::{Host, Runtime};
use wasm_unikernel::http::{self, Head};

use crate::console::ActionOutput;

/// Sockets listening at once. smoltcp has no backlog: a SYN that finds no socket listening is
/// reset, and on a busy host the invoker's readiness probes (each a connect with a short
/// timeout) can hold several sockets in SYN-RECEIVED at once; 8 were seen to run out when 50
/// guests booted together. 32 cost 2.5 MiB of buffers.
pub const SOCKETS: usize = 32;
const RX_BUFFER: usize = 64 * 1024;
const TX_BUFFER: usize = 16 * 1024;

#[derive(Debug, Default)]
struct Conn {
    /// Received bytes not yet consumed by a request.
    input: Vec<u8>,
    head: Option<Head>,
    /// A queued reply and how much of it is sent.
    output: Vec<u8>,
    sent: usize,
    /// Close once `output` is sent.
    close: bool,
}

impl Conn {
    fn queue(&mut self, status: u16, body: &[u8], keep_alive: bool) {
        self.output
            .extend_from_slice(http::response_head(status, body.len(), keep_alive).as_bytes());
        self.output.extend_from_slice(body);
        self.close |= !keep_alive;
    }

    fn fail(&mut self, error: http::Error) {
        let body = http::error_body(error.message());
        self.input = Vec::new();
        self.head = None;
        self.queue(error.status(), body.as_bytes(), false);
    }
}

/// The listening sockets and their connections.
#[derive(Debug)]
pub struct Server {
    port: u16,
    conns: Vec<(SocketHandle, Conn)>,
}

impl Server {
    /// Adds [`SOCKETS`] sockets to `sockets`, listening on `port`.
    pub fn new(sockets: &mut SocketSet<'_>, port: u16) -> Self {
        let conns = (0..SOCKETS)
            .map(|_| {
                let mut socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
                    tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
                );
                // Acknowledge at once: with smoltcp's 10 ms delayed ACK, QEMU's user-mode
                // network sent a 3 MB body at ~110 KB/s (one segment per delay), 10 MB/s without.
                socket.set_ack_delay(None);
                (sockets.add(socket), Conn::default())
            })
            .collect();
        Self { port, conns }
    }

    /// Moves every connection along as far as it goes; true if anything happened.
    pub fn serve(
        &mut self,
        sockets: &mut SocketSet<'_>,
        runtime: &mut Runtime,
        host: &mut dyn Host,
    ) -> bool {
        let mut progress = false;
        for (handle, conn) in &mut self.conns {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            progress |= step(socket, conn, self.port, runtime, host);
        }
        progress
    }
}

fn step(
    socket: &mut tcp::Socket<'_>,
    conn: &mut Conn,
    port: u16,
    runtime: &mut Runtime,
    host: &mut dyn Host,
) -> bool {
    if !socket.is_open() {
        *conn = Conn::default();
        if let Err(e) = socket.listen(port) {
            crate::kprintln!("listen: {e:?}");
        }
        return true;
    }
    let mut progress = false;
    // Send what is queued first: no new request is read while a reply is pending.
    if conn.sent < conn.output.len() {
        if !socket.may_send() {
            socket.abort();
            return true;
        }
        match socket.send_slice(&conn.output[conn.sent..]) {
            Ok(n) => {
                progress |= n > 0;
                conn.sent += n;
            }
            Err(_) => {
                socket.abort();
                return true;
            }
        }
        if conn.sent < conn.output.len() {
            return progress;
        }
        conn.output = Vec::new();
        conn.sent = 0;
        if conn.close {
            socket.close();
            return true;
        }
    }
    if socket.can_recv() {
        let result = socket.recv(|data| {
            let ok = conn.input.try_reserve(data.len()).is_ok();
            if ok {
                conn.input.extend_from_slice(data);
            }
            (if ok { data.len() } else { 0 }, ok)
        });
        match result {
            Ok(true) => progress = true,
            Ok(false) => {
                conn.fail(http::Error::BodyTooLarge);
                return true;
            }
            Err(_) => {}
        }
    }
    progress |= process(conn, runtime, host);
    if !socket.may_recv() && conn.output.is_empty() && socket.state() == tcp::State::CloseWait {
        // The peer is done and nothing is left to answer (a probe, or a half request).
        socket.close();
        progress = true;
    }
    progress
}

/// Parses and handles the complete request at the start of the input, if there is one.
fn process(conn: &mut Conn, runtime: &mut Runtime, host: &mut dyn Host) -> bool {
    if !conn.output.is_empty() {
        return false;
    }
    if conn.head.is_none() {
        match http::parse_head(&conn.input) {
            Ok(None) => return false,
            Ok(Some(head)) => {
                let total = head.len + head.content_length;
                // Grow the buffer once to the whole request. Refuse what memory cannot hold: the
                // body, and about as much again for the library's copy of what it parses from it
                // (an allocation failure later would end the VM with a panic).
                if head.content_length > crate::mem::heap_free() / 2
                    || conn
                        .input
                        .try_reserve_exact(total.saturating_sub(conn.input.len()))
                        .is_err()
                {
                    conn.fail(http::Error::BodyTooLarge);
                    return true;
                }
                if head.expect_continue && conn.input.len() < total {
                    conn.output
                        .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                conn.head = Some(head);
            }
            Err(e) => {
                conn.fail(e);
                return true;
            }
        }
    }
    let Some(head) = conn.head.as_ref() else {
        return false;
    };
    let total = head.len + head.content_length;
    if conn.input.len() < total {
        return false;
    }
    let (method, path) = (
        core::str::from_utf8(&conn.input[head.method.clone()]),
        core::str::from_utf8(&conn.input[head.path.clone()]),
    );
    let keep_alive = head.keep_alive;
    let reply = match (method, path) {
        (Ok(method), Ok(path)) => runtime.handle(method, path, &conn.input[head.len..total], host),
        _ => wasm_action::Reply {
            status: 400,
            body: http::error_body(http::Error::BadRequest.message()).into_bytes(),
        },
    };
    ActionOutput::flush();
    conn.queue(reply.status, &reply.body, keep_alive);
    conn.input.drain(..total);
    if conn.input.capacity() > RX_BUFFER && conn.input.len() < RX_BUFFER {
        conn.input.shrink_to(RX_BUFFER);
    }
    conn.head = None;
    true
}

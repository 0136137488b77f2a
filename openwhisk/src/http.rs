//! The HTTP/1.1 accept loop shared by the OpenWhisk HTTP endpoints this project serves (the
//! invoker's own port and the front door's REST API).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long a connection may take to send a request's headers before it is closed (a client
/// that opens connections and sends nothing must not hold the connection slots).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP/1.1 server: accepts until `cancel`, each connection on its own task, each request
/// answered by `handle`. At most `max_connections` are open at once: past that, new ones wait
/// in the kernel's backlog until one closes. Connections in progress finish on their own.
pub async fn serve_http<F, Fut>(
    listener: TcpListener,
    cancel: CancellationToken,
    max_connections: usize,
    handle: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return, // never closed
            },
            () = cancel.cancelled() => return,
        };
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn get(stream: &mut TcpStream, n: u8) -> String {
        let req = format!("GET / HTTP/1.1\r\nhost: x\r\nx-n: {n}\r\nconnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_connection_past_the_limit_waits_for_a_free_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(serve_http(listener, cancel.clone(), 1, move |req| {
            let n = req.headers()["x-n"].to_str().unwrap().to_owned();
            let _ = seen_tx.send(n);
            async move { Response::new(Full::new(Bytes::from_static(b"ok"))) }
        }));
        // The only slot: held by a connection that has sent nothing yet.
        let mut first = TcpStream::connect(addr).await.unwrap();
        // The second connects (into the kernel's backlog) and sends its request before the
        // first sends anything: it is read only once the first has closed.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let (written_tx, written) = tokio::sync::oneshot::channel();
        let second = tokio::spawn(async move {
            let req = "GET / HTTP/1.1\r\nhost: x\r\nx-n: 2\r\nconnection: close\r\n\r\n";
            second.write_all(req.as_bytes()).await.unwrap();
            let _ = written_tx.send(());
            let mut out = String::new();
            second.read_to_string(&mut out).await.unwrap();
            out
        });
        written.await.unwrap();
        assert!(get(&mut first, 1).await.ends_with("ok"));
        assert!(second.await.unwrap().ends_with("ok"));
        assert_eq!(
            seen.recv().await.unwrap(),
            "1",
            "the second was served past the limit"
        );
        assert_eq!(seen.recv().await.unwrap(), "2");
        cancel.cancel();
        server.await.unwrap();
    }
}

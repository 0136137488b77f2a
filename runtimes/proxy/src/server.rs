//! The HTTP server: `POST /init` and `POST /run` on `0.0.0.0:<port>`, HTTP/1.1 with keep-alive.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::protocol::{Proxy, Reply};

/// Largest request body accepted: well above OpenWhisk's 1 MiB payload limit plus the context.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Serves the proxy on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, proxy: Arc<Proxy>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, proxy.clone()));
    }
}

/// Serves one connection (HTTP/1.1, keep-alive) until the client closes it. A client that
/// hangs up mid-request is not the proxy's problem: the connection's error is dropped. Public
/// for the fuzz target, which feeds it arbitrary bytes through an in-memory stream.
pub async fn serve_connection<I>(io: I, proxy: Arc<Proxy>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(proxy.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn handle(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let route = (req.method().clone(), req.uri().path().to_owned());
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(reply(&Reply {
                status: 413,
                body: serde_json::json!({ "error": "The request is too large." }),
            }));
        }
    };
    // The work runs in a task of its own: hyper drops this future when the caller hangs up
    // (an invoker that timed out), but the action still finishes and its sentinels are written.
    let work = tokio::spawn(async move {
        match (route.0, route.1.as_str()) {
            (Method::POST, "/init") => proxy.init(&body).await,
            (Method::POST, "/run") => proxy.run(&body).await,
            _ => Reply {
                status: 404,
                body: serde_json::json!({ "error": "Not found." }),
            },
        }
    });
    let r = work.await.unwrap_or_else(|_| Reply {
        status: 500,
        body: serde_json::json!({ "error": "The proxy failed." }),
    });
    Ok(reply(&r))
}

fn reply(r: &Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(r.body.to_string())));
    *resp.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

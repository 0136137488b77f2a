//! The invoker's own HTTP server (contract §8): `GET /ping`, `POST /enable`, `POST /disable`,
//! `GET /isEnabled` (basic auth with `whisk.invoker.username:password`), `GET /metrics`
//! (Prometheus text). Over https with `whisk.invoker.protocol = https` ([`crate::tls`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::invoke::Invoker;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

/// How long a client may take over its TLS handshake: one that connects and sends nothing must
/// not hold a connection slot.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `cancel`: plain HTTP, or https when the settings ask for it. A keystore that
/// cannot be used ends the server at once (and so the invoker, which stops when a task ends):
/// `main` has checked it before start-up, so this happens only when it changed since.
pub async fn serve(
    listener: TcpListener,
    invoker: Arc<Invoker>,
    metrics: Option<PrometheusHandle>,
    cancel: CancellationToken,
) {
    let https = invoker.settings.invoker_https.clone();
    let handle = move |req: Request<Incoming>| {
        let (invoker, metrics) = (invoker.clone(), metrics.clone());
        async move { route(&invoker, metrics.as_ref(), &req).await }
    };
    let Some(https) = https else {
        openwhisk::http::serve_http(listener, cancel, MAX_CONNECTIONS, handle).await;
        return;
    };
    let path = https.keystore_path.clone();
    match tokio::task::spawn_blocking(move || crate::tls::server_config(&https)).await {
        Ok(Ok(config)) => {
            tracing::info!(keystore = %path.display(), "serving https");
            serve_https(
                listener,
                TlsAcceptor::from(config),
                cancel,
                MAX_CONNECTIONS,
                handle,
            )
            .await;
        }
        Ok(Err(e)) => {
            tracing::error!(error = %openwhisk::errors::chain(&e), "https: the keystore cannot be used");
        }
        Err(e) => tracing::error!(error = %e, "https: loading the keystore failed"),
    }
}

/// [`openwhisk::http::serve_http`] over TLS: each connection's handshake (bounded by
/// [`TLS_HANDSHAKE_TIMEOUT`]) and then its requests on a task of their own, at most
/// `max_connections` at once. A handshake the acceptor refuses (no client certificate, one it
/// does not trust) closes that connection only.
pub async fn serve_https<F, Fut>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
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
        let (stream, peer) = tokio::select! {
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
        let (acceptor, handle) = (acceptor.clone(), handle.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let tls =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "tls handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "tls handshake timed out");
                        return;
                    }
                };
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(openwhisk::http::HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}
fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn authorized(invoker: &Invoker, req: &Request<Incoming>) -> bool {
    let expected = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        invoker.settings.invoker_username,
        invoker.settings.invoker_password.expose()
    ));
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|v| v.trim() == expected)
}

async fn route(
    invoker: &Arc<Invoker>,
    metrics: Option<&PrometheusHandle>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let name = format!(
        "invoker{}/{}",
        invoker.instance.instance,
        invoker.instance.unique_name.as_deref().unwrap_or("")
    );
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ping") => reply(StatusCode::OK, "text/plain", "pong".into()),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.map(PrometheusHandle::render).unwrap_or_default(),
        ),
        (_, "/enable" | "/disable" | "/isEnabled") if !authorized(invoker, req) => {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "The supplied authentication is invalid".into(),
            );
            if let Ok(v) = "Basic realm=\"invoker\"".parse() {
                r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, v);
            }
            r
        }
        (&Method::POST, "/enable") => {
            let was = invoker.enabled.swap(true, Ordering::SeqCst);
            let text = if was {
                format!("{name} already enabled.")
            } else {
                format!("{name} is now enabled.")
            };
            reply(StatusCode::OK, "text/plain", text)
        }
        (&Method::POST, "/disable") => {
            let was = invoker.enabled.swap(false, Ordering::SeqCst);
            if was {
                invoker.ping(false).await;
            }
            let text = if was {
                format!("{name} is now disabled.")
            } else {
                format!("{name} already disabled.")
            };
            reply(StatusCode::OK, "text/plain", text)
        }
        (&Method::GET, "/isEnabled") => reply(
            StatusCode::OK,
            "application/json",
            serde_json::json!({ "enabled": invoker.is_enabled() }).to_string(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "The requested resource does not exist.".into(),
        ),
    }
}

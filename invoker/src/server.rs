//! The invoker's own HTTP server (contract §8): `GET /ping`, `POST /enable`, `POST /disable`,
//! `GET /isEnabled` (basic auth with `whisk.invoker.username:password`), `GET /metrics`
//! (Prometheus text).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::invoke::Invoker;

/// Serves until `cancel`.
pub async fn serve(
    listener: TcpListener,
    invoker: Arc<Invoker>,
    metrics: Option<PrometheusHandle>,
    cancel: CancellationToken,
) {
    serve_http(listener, cancel, move |req| {
        let (invoker, metrics) = (invoker.clone(), metrics.clone());
        async move { route(&invoker, metrics.as_ref(), &req).await }
    })
    .await;
}

/// An HTTP/1.1 server: accepts until `cancel`, each connection on its own task, each request
/// answered by `handle`. Connections in progress finish on their own. (The standalone front
/// door serves through this too.)
pub async fn serve_http<F, Fut>(listener: TcpListener, cancel: CancellationToken, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
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
        invoker.settings.invoker_username, invoker.settings.invoker_password
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

//! The invoker's own HTTP server (contract §8): `GET /ping`, `POST /enable`, `POST /disable`,
//! `GET /isEnabled` (basic auth with `whisk.invoker.username:password`), `GET /metrics`
//! (Prometheus text).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::invoke::Invoker;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

/// Serves until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    invoker: Arc<Invoker>,
    metrics: Option<PrometheusHandle>,
    cancel: CancellationToken,
) {
    openwhisk::http::serve_http(listener, cancel, MAX_CONNECTIONS, move |req| {
        let (invoker, metrics) = (invoker.clone(), metrics.clone());
        async move { route(&invoker, metrics.as_ref(), &req).await }
    })
    .await;
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

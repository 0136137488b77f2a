//! The REST API subset of contract §10 over HTTP/1.1: actions (in packages too), invoke,
//! packages and bindings, triggers and rules, activations, namespaces, web actions,
//! `/invokers` and `/ping`. Errors are the controller's `{"error", "code"}` bodies.
//!
//! Another namespace's entities are readable only as the controller's entitlement allows for
//! shared packages: `GET` of its published packages and of the actions in them, and invoking
//! those actions; everything else there is a 403.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use openwhisk::errors;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::actions::{ActionError, Actions};
use crate::activations::{self, Activations, ListQuery};
use crate::controller::Controller;
use crate::entities::EntityError;
use crate::ids;
use crate::invocations::{self, Answer, InvokeError};
use crate::metrics;
use crate::packages::Packages;
use crate::subjects::{Identity, Subjects};
use crate::triggers::{self, Triggers};
use crate::web::{self, WebRequest};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;

/// Everything a request needs.
#[derive(Debug)]
pub struct App {
    pub subjects: Subjects,
    pub actions: Actions,
    pub packages: Packages,
    pub triggers: Triggers,
    pub activations: Activations,
    pub controller: Arc<Controller>,
    /// The longest a blocking invoke waits before answering 202 (the controller's
    /// `max-wait-for-blocking-activation`, 60 s).
    pub max_blocking_wait: Duration,
    /// The largest request body accepted (action code included).
    pub max_body_bytes: usize,
    /// The largest invoke parameters accepted (`whisk.activation.payload.max`).
    pub max_payload_bytes: usize,
    /// Renders `/metrics`; `None` serves no metrics.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// Serves until `cancel`; connections in progress finish on their own.
pub async fn serve(listener: TcpListener, app: Arc<App>, cancel: CancellationToken) {
    openwhisk::http::serve_http(listener, cancel, MAX_CONNECTIONS, move |req| {
        let app = app.clone();
        async move { handle(&app, req).await }
    })
    .await;
}

type Reply = Response<Full<Bytes>>;

/// The `method` label: the methods the API knows, everything else `other` (a client's verbatim
/// method would make the label set unbounded).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The body of a 202: the id to fetch the activation by later (contract §10).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted<'a> {
    activation_id: &'a str,
}

/// An error answer: status and message; the body gets the request's transaction id.
#[derive(Debug)]
struct Fail(StatusCode, String);

impl From<ActionError> for Fail {
    fn from(e: ActionError) -> Self {
        EntityError::from(e).into()
    }
}

impl From<EntityError> for Fail {
    fn from(e: EntityError) -> Self {
        let status = match &e {
            EntityError::Invalid(_) => StatusCode::BAD_REQUEST,
            EntityError::Forbidden => StatusCode::FORBIDDEN,
            EntityError::NotFound | EntityError::TriggerGone => StatusCode::NOT_FOUND,
            EntityError::Conflict(_) => StatusCode::CONFLICT,
            EntityError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            EntityError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %errors::chain(&e), "request failed");
            return Self(status, "There was an error processing your request.".into());
        }
        Self(status, e.to_string())
    }
}

impl From<InvokeError> for Fail {
    fn from(e: InvokeError) -> Self {
        match e {
            InvokeError::Entity(e) => e.into(),
            InvokeError::FinalParameters => Self(StatusCode::BAD_REQUEST, e.to_string()),
            InvokeError::NoInvokers => Self(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            InvokeError::Store(e) => e.into(),
            other => {
                tracing::error!(error = %errors::chain(&other), "activation not produced");
                Self(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "There was an error processing your request.".into(),
                )
            }
        }
    }
}

impl From<openwhisk::couchdb::CouchDbError> for Fail {
    fn from(e: openwhisk::couchdb::CouchDbError) -> Self {
        tracing::error!(error = %errors::chain(&e), "database request failed");
        Self(
            StatusCode::INTERNAL_SERVER_ERROR,
            "There was an error processing your request.".into(),
        )
    }
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Reply {
    let transid = ids::transaction_id();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = std::time::Instant::now();
    let reply = match route(app, req).await {
        Ok(r) => r,
        Err(Fail(status, error)) => json_reply(status, &json!({"error": error, "code": transid})),
    };
    let class = match reply.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    ::metrics::counter!(metrics::REQUESTS_TOTAL, "method" => method_label(&method), "status" => class)
        .increment(1);
    tracing::debug!(%method, path, status = reply.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
    reply
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> Result<Reply, Fail> {
    let method = req.method().clone();
    let segments: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    // `GET .../actions/<pkg>/` lists a package (the trailing slash is all that tells it from
    // getting action `<pkg>`).
    let trailing_slash = req.uri().path().ends_with('/');

    // Without authentication.
    match (&method, seg.as_slice()) {
        (&Method::GET, ["ping"]) => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"pong")));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain"),
            );
            return Ok(r);
        }
        (&Method::GET, ["invokers"]) => {
            return Ok(json_reply(StatusCode::OK, &app.controller.health.to_json()));
        }
        (&Method::GET, ["metrics"]) => {
            for (state, n) in app.controller.health.counts() {
                ::metrics::gauge!(metrics::INVOKERS, "state" => state.as_str()).set(n as f64);
            }
            let text = app.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return Ok(r);
        }
        (&Method::GET, ["api", "v1"]) => {
            return Ok(json_reply(
                StatusCode::OK,
                &json!({"description": "OpenWhisk standalone front door (this machine only)",
                        "api_paths": ["/api/v1"], "swagger_paths": {}}),
            ));
        }
        (_, ["api", "v1", "web", rest @ ..]) => {
            let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
            return web_action(app, req, rest).await;
        }
        _ => {}
    }
    let ["api", "v1", "namespaces", rest @ ..] = seg.as_slice() else {
        return Err(Fail(
            StatusCode::NOT_FOUND,
            "The requested resource could not be found.".into(),
        ));
    };
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = app
        .subjects
        .authenticate(header)
        .await
        .map_err(|e| {
            tracing::error!(error = %errors::chain(&e), "authentication failed");
            Fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is currently unavailable (because it is overloaded or down for maintenance).".into(),
            )
        })?
        .ok_or_else(|| {
            Fail(
                StatusCode::UNAUTHORIZED,
                "The supplied authentication is invalid.".into(),
            )
        })?;
    if rest.is_empty() {
        return if method == Method::GET {
            Ok(json_reply(StatusCode::OK, &json!([user.namespace])))
        } else {
            Err(method_not_allowed())
        };
    }
    let (ns, own) = match rest[0] {
        "_" => (user.namespace.clone(), true),
        n => (n.to_owned(), n == user.namespace),
    };
    // Reads of another namespace's shared packages; the stores check that they are published.
    let shared =
        matches!(
            (&method, &rest[1..]),
            (
                &Method::GET,
                ["packages"] | ["packages", _] | ["actions", _, _]
            ) | (&Method::POST, ["actions", _, _])
        ) || (method == Method::GET && trailing_slash && matches!(&rest[1..], ["actions", _]));
    if !own && !shared {
        return Err(Fail(
            StatusCode::FORBIDDEN,
            "The supplied authentication is not authorized to access this resource.".into(),
        ));
    }
    // The request's headers for a trigger's `__ow_headers`, without the caller's credentials.
    let headers: Map<String, Value> = req
        .headers()
        .iter()
        .filter(|(k, _)| *k != hyper::header::AUTHORIZATION)
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_owned(),
                Value::String(v.to_str().ok()?.to_owned()),
            ))
        })
        .collect();
    let body = read_body(req, app.max_body_bytes).await?;
    let flag = |key: &str| query.get(key).is_some_and(|v| v == "true");
    let caller = user.namespace.as_str();
    match (&method, &rest[1..]) {
        // `wsk namespace get` and `wsk list` (openwhisk-client-go's `Namespaces.Get`).
        (&Method::GET, []) => {
            let limit = activations::MAX_LIST_LIMIT;
            let v = json!({
                "actions": app.actions.list(&ns, 0, limit).await?,
                "packages": app.packages.list(&ns, caller, 0, limit).await?,
                "triggers": app.triggers.list(&ns, triggers::TRIGGER, 0, limit).await?,
                "rules": app.triggers.list(&ns, triggers::RULE, 0, limit).await?,
            });
            Ok(json_reply(StatusCode::OK, &v))
        }
        (&Method::GET, ["actions"]) => {
            let (skip, limit) = paging(&query, "actions")?;
            let list = app.actions.list(&ns, skip, limit).await?;
            Ok(json_reply(StatusCode::OK, &Value::Array(list)))
        }
        (&Method::GET, ["actions", pkg]) if trailing_slash => {
            let (skip, limit) = paging(&query, "actions")?;
            let package = app.packages.resolve(&ns, pkg, caller).await?;
            let list = app.actions.list(&package.path, skip, limit).await?;
            Ok(json_reply(StatusCode::OK, &Value::Array(list)))
        }
        (&Method::GET, ["actions", name]) => {
            let code = query.get("code").is_none_or(|c| c != "false");
            let a = app.actions.get(&ns, name, code).await?;
            Ok(json_reply(StatusCode::OK, &a))
        }
        (&Method::GET, ["actions", pkg, name]) => {
            let code = query.get("code").is_none_or(|c| c != "false");
            let package = app.packages.resolve(&ns, pkg, caller).await?;
            let a = app.actions.get(&package.path, name, code).await?;
            Ok(json_reply(StatusCode::OK, &a))
        }
        (&Method::PUT, ["actions", name]) => {
            let body = parse_json(&body)?;
            let a = app.actions.put(&ns, name, &body, flag("overwrite")).await?;
            Ok(json_reply(StatusCode::OK, &a))
        }
        (&Method::PUT, ["actions", pkg, name]) => {
            app.packages.check_writable(&ns, pkg).await?;
            let body = parse_json(&body)?;
            let path = format!("{ns}/{pkg}");
            let a = app
                .actions
                .put(&path, name, &body, flag("overwrite"))
                .await?;
            Ok(json_reply(StatusCode::OK, &a))
        }
        (&Method::DELETE, ["actions", name]) => {
            let a = app.actions.delete(&ns, name).await?;
            Ok(json_reply(StatusCode::OK, &a))
        }
        (&Method::DELETE, ["actions", pkg, name]) => {
            app.packages.check_writable(&ns, pkg).await?;
            let a = app.actions.delete(&format!("{ns}/{pkg}"), name).await?;
            Ok(json_reply(StatusCode::OK, &a))
        }
        (&Method::POST, ["actions", name @ ..]) if (1..=2).contains(&name.len()) => {
            let path = match name {
                [pkg, _] => format!("{ns}/{pkg}"),
                _ => ns.clone(),
            };
            let name = name[name.len() - 1];
            let blocking = flag("blocking");
            let started = std::time::Instant::now();
            let answer = invoke(app, &user, &path, name, &query, &body).await;
            let outcome = match &answer {
                Ok((_, outcome)) => *outcome,
                Err(Fail(StatusCode::NOT_FOUND, _)) => "not_found",
                Err(Fail(StatusCode::SERVICE_UNAVAILABLE, _)) => "no_invoker",
                Err(Fail(s, _)) if s.is_client_error() => "rejected",
                Err(_) => "failed",
            };
            let blocking = if blocking { "true" } else { "false" };
            ::metrics::counter!(metrics::INVOCATIONS_TOTAL, "blocking" => blocking, "outcome" => outcome)
                .increment(1);
            ::metrics::histogram!(metrics::INVOKE_SECONDS, "blocking" => blocking)
                .record(started.elapsed().as_secs_f64());
            answer.map(|(reply, _)| reply)
        }
        (&Method::GET, ["packages"]) => {
            let (skip, limit) = paging(&query, "packages")?;
            let list = app.packages.list(&ns, caller, skip, limit).await?;
            Ok(json_reply(StatusCode::OK, &Value::Array(list)))
        }
        (&Method::GET, ["packages", name]) => {
            let p = app.packages.get(&ns, name, caller).await?;
            Ok(json_reply(StatusCode::OK, &p))
        }
        (&Method::PUT, ["packages", name]) => {
            let body = parse_json(&body)?;
            let p = app
                .packages
                .put(&ns, name, &body, flag("overwrite"))
                .await?;
            Ok(json_reply(StatusCode::OK, &p))
        }
        (&Method::DELETE, ["packages", name]) => {
            let p = app.packages.delete(&ns, name, flag("force")).await?;
            Ok(json_reply(StatusCode::OK, &p))
        }
        (&Method::GET, [kind @ ("triggers" | "rules")]) => {
            let (skip, limit) = paging(&query, kind)?;
            let entity = if *kind == "triggers" {
                triggers::TRIGGER
            } else {
                triggers::RULE
            };
            let list = app.triggers.list(&ns, entity, skip, limit).await?;
            Ok(json_reply(StatusCode::OK, &Value::Array(list)))
        }
        (&Method::GET, ["triggers", name]) => Ok(json_reply(
            StatusCode::OK,
            &app.triggers.get_trigger(&ns, name).await?,
        )),
        (&Method::PUT, ["triggers", name]) => {
            let body = parse_json(&body)?;
            let t = app
                .triggers
                .put_trigger(&ns, name, &body, flag("overwrite"))
                .await?;
            Ok(json_reply(StatusCode::OK, &t))
        }
        (&Method::DELETE, ["triggers", name]) => Ok(json_reply(
            StatusCode::OK,
            &app.triggers.delete_trigger(&ns, name).await?,
        )),
        (&Method::POST, ["triggers", name]) => {
            let payload = match parse_json(&body)? {
                Value::Object(m) => m,
                _ => {
                    return Err(Fail(
                        StatusCode::BAD_REQUEST,
                        "The request content was malformed: parameters must be a JSON object."
                            .into(),
                    ));
                }
            };
            match triggers::fire(app, &user, &ns, name, payload, headers).await? {
                Some(id) => Ok(with_activation_header(
                    json_reply(StatusCode::ACCEPTED, &json!({"activationId": id})),
                    &id,
                )),
                None => {
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    Ok(r)
                }
            }
        }
        (&Method::GET, ["rules", name]) => Ok(json_reply(
            StatusCode::OK,
            &app.triggers.get_rule(&ns, name).await?,
        )),
        (&Method::PUT, ["rules", name]) => {
            let body = parse_json(&body)?;
            let r = app
                .triggers
                .put_rule(&ns, name, &body, flag("overwrite"))
                .await?;
            Ok(json_reply(StatusCode::OK, &r))
        }
        (&Method::POST, ["rules", name]) => {
            let body = parse_json(&body)?;
            app.triggers.set_status(&ns, name, &body).await?;
            Ok(json_reply(StatusCode::OK, &json!({})))
        }
        (&Method::DELETE, ["rules", name]) => Ok(json_reply(
            StatusCode::OK,
            &app.triggers.delete_rule(&ns, name).await?,
        )),
        (&Method::GET, ["activations"]) => list_activations(app, &ns, &query).await,
        (&Method::GET, ["activations", id]) => {
            let doc = app.activations.get(&ns, id).await?.ok_or_else(not_found)?;
            Ok(json_reply(StatusCode::OK, &activations::extended(&doc)))
        }
        (&Method::GET, ["activations", id, "result"]) => {
            let doc = app.activations.get(&ns, id).await?.ok_or_else(not_found)?;
            Ok(json_reply(StatusCode::OK, &activations::result_view(&doc)))
        }
        (&Method::GET, ["activations", id, "logs"]) => {
            let doc = app.activations.get(&ns, id).await?.ok_or_else(not_found)?;
            Ok(json_reply(StatusCode::OK, &activations::logs_view(&doc)))
        }
        (
            _,
            ["actions" | "packages" | "triggers" | "rules"]
            | ["actions" | "packages" | "triggers" | "rules", _]
            | ["actions", _, _]
            | ["activations"]
            | ["activations", ..],
        ) => Err(method_not_allowed()),
        _ => Err(Fail(
            StatusCode::NOT_FOUND,
            "The requested resource could not be found.".into(),
        )),
    }
}

fn not_found() -> Fail {
    Fail(
        StatusCode::NOT_FOUND,
        "The requested resource does not exist.".into(),
    )
}

fn method_not_allowed() -> Fail {
    Fail(
        StatusCode::METHOD_NOT_ALLOWED,
        "HTTP method not allowed, supported methods: GET, PUT, POST, DELETE".into(),
    )
}

async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Fail> {
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The request content was too large (more than {max} bytes)."),
            ))
        }
        Err(_) => Err(Fail(
            StatusCode::BAD_REQUEST,
            "Failed extracting request body.".into(),
        )),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, Fail> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        Fail(
            StatusCode::BAD_REQUEST,
            format!("The request content was malformed:\n{e}"),
        )
    })
}

fn paging(query: &HashMap<String, String>, what: &str) -> Result<(usize, usize), Fail> {
    let number = |key: &str, default: usize| -> Result<usize, Fail> {
        match query.get(key) {
            None => Ok(default),
            Some(v) => v.parse::<usize>().map_err(|_| {
                Fail(
                    StatusCode::BAD_REQUEST,
                    format!("The value '{v}' is not an integer for {what}."),
                )
            }),
        }
    };
    let skip = number("skip", 0)?;
    let limit = number("limit", activations::DEFAULT_LIST_LIMIT)?;
    if limit > activations::MAX_LIST_LIMIT {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            format!(
                "The value '{limit}' is not in the range of 0 to {} for {what}.",
                activations::MAX_LIST_LIMIT
            ),
        ));
    }
    // `limit=0` means the largest page, as in the controller.
    Ok((
        skip,
        if limit == 0 {
            activations::MAX_LIST_LIMIT
        } else {
            limit
        },
    ))
}

async fn list_activations(
    app: &App,
    ns: &str,
    query: &HashMap<String, String>,
) -> Result<Reply, Fail> {
    let (skip, limit) = paging(query, "activations")?;
    let epoch = |key: &str| -> Result<Option<i64>, Fail> {
        query
            .get(key)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    Fail(
                        StatusCode::BAD_REQUEST,
                        format!("Parameter is not a valid value for epoch seconds: {v}"),
                    )
                })
            })
            .transpose()
    };
    let q = ListQuery {
        limit,
        skip,
        // `name` may be `package/action`; the last part is the action's name.
        name: query
            .get("name")
            .map(|n| n.rsplit('/').next().unwrap_or(n).to_owned()),
        since: epoch("since")?,
        upto: epoch("upto")?,
        docs: query.get("docs").is_some_and(|d| d == "true"),
    };
    if query.get("count").is_some_and(|c| c == "true") {
        if q.docs {
            return Err(Fail(
                StatusCode::BAD_REQUEST,
                "The parameter 'docs' is not permitted with 'count'.".into(),
            ));
        }
        let n = app.activations.count(ns, &q).await?;
        return Ok(json_reply(StatusCode::OK, &json!({"activations": n})));
    }
    let list = app.activations.list(ns, &q).await?;
    Ok(json_reply(StatusCode::OK, &Value::Array(list)))
}

/// `POST /namespaces/<ns>/actions/[<pkg>/]<name>?blocking=&result=&timeout=`; `path` is the
/// namespace or `ns/pkg`.
async fn invoke(
    app: &Arc<App>,
    user: &Identity,
    path: &str,
    name: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<(Reply, &'static str), Fail> {
    let blocking = query.get("blocking").is_some_and(|b| b == "true");
    if body.len() > app.max_payload_bytes {
        return Err(Fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "The request content was too large ({} > {} bytes).",
                body.len(),
                app.max_payload_bytes
            ),
        ));
    }
    let result_only = query.get("result").is_some_and(|r| r == "true");
    let wait = match query.get("timeout") {
        None => app.max_blocking_wait,
        Some(t) => match t.parse::<u64>() {
            Ok(ms) if ms > 0 && Duration::from_millis(ms) <= app.max_blocking_wait => {
                Duration::from_millis(ms)
            }
            _ => {
                return Err(Fail(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Timeout must be number of milliseconds up to {}.",
                        app.max_blocking_wait.as_millis()
                    ),
                ));
            }
        },
    };
    let params = match parse_json(body)? {
        Value::Object(m) => m,
        _ => {
            return Err(Fail(
                StatusCode::BAD_REQUEST,
                "The request content was malformed: parameters must be a JSON object.".into(),
            ));
        }
    };
    let action = invocations::resolve(app, path, name, &user.namespace).await?;
    invocations::check_final(&action, &params)?;
    let answer = invocations::invoke(app, user, action, params, blocking, wait).await?;
    let record = match answer {
        Answer::Record(r) => r,
        Answer::Accepted(id) => {
            return Ok((
                with_activation_header(
                    json_reply(
                        StatusCode::ACCEPTED,
                        &serde_json::to_value(Accepted { activation_id: &id }).unwrap_or_default(),
                    ),
                    &id,
                ),
                "accepted",
            ));
        }
    };
    let id = record["activationId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let extended = activations::extended(&record);
    let (status, outcome) = match record["response"]["statusCode"].as_u64() {
        Some(0) => (StatusCode::OK, "success"),
        Some(1) => (StatusCode::BAD_GATEWAY, "application_error"),
        Some(2) => (StatusCode::BAD_GATEWAY, "action_developer_error"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "whisk_internal_error"),
    };
    let body = if result_only {
        extended["response"]["result"].clone()
    } else {
        extended
    };
    Ok((
        with_activation_header(json_reply(status, &body), &id),
        outcome,
    ))
}

/// `/api/v1/web/<ns>/<pkg>/<action>.<ext>[/path]`, any method.
async fn web_action(
    app: &Arc<App>,
    req: Request<Incoming>,
    segments: Vec<String>,
) -> Result<Reply, Fail> {
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Credentials are optional here; wrong ones are the same as none.
    let caller = match header {
        Some(h) => app.subjects.authenticate(Some(&h)).await.ok().flatten(),
        None => None,
    };
    let method = req.method().as_str().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let headers = req
        .headers()
        .iter()
        .filter(|(k, _)| *k != hyper::header::AUTHORIZATION)
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let body = read_body(req, app.max_payload_bytes).await?.to_vec();
    let request = WebRequest {
        method,
        headers,
        query,
        body,
        segments,
        caller,
    };
    let reply = web::serve(app, request)
        .await
        .map_err(|web::WebError(status, message)| {
            Fail(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                message,
            )
        })?;
    let mut r = Response::new(Full::new(Bytes::from(reply.body)));
    *r.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    for (k, v) in &reply.headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    if let Some(ct) = reply
        .content_type
        .and_then(|c| hyper::header::HeaderValue::from_str(&c).ok())
    {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, ct);
    }
    Ok(match reply.activation_id {
        Some(id) => with_activation_header(r, &id),
        None => r,
    })
}

fn with_activation_header(mut r: Reply, id: &str) -> Reply {
    if let Ok(v) = hyper::header::HeaderValue::from_str(id) {
        r.headers_mut().insert("x-openwhisk-activation-id", v);
    }
    r
}

/// `%xx` sequences decoded; invalid ones kept as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_label_is_bounded() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let odd = Method::from_bytes(b"SOMETHING-ELSE").unwrap();
        assert_eq!(method_label(&odd), "other");
    }

    #[test]
    fn paths_are_percent_decoded() {
        assert_eq!(percent_decode("hello%20world"), "hello world");
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%2"), "end%2");
    }

    #[test]
    fn paging_follows_the_controller() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(paging(&q(&[]), "x").unwrap(), (0, 30));
        assert_eq!(
            paging(&q(&[("skip", "5"), ("limit", "0")]), "x").unwrap(),
            (5, 200)
        );
        assert!(paging(&q(&[("limit", "201")]), "x").is_err());
        assert!(paging(&q(&[("skip", "-1")]), "x").is_err());
    }

    #[test]
    fn empty_bodies_are_empty_objects() {
        assert_eq!(parse_json(b"").unwrap(), json!({}));
        assert_eq!(parse_json(br#"{"a":1}"#).unwrap(), json!({"a": 1}));
        assert!(parse_json(b"{nope").is_err());
    }
}

//! Web actions, as the controller's `WebActions` serves them: `/api/v1/web/<ns>/<pkg>/<action>.<ext>[/path]`
//! (`<pkg>` is `default` for an action outside a package), no authentication unless the
//! action asks for it with `require-whisk-auth`. Only actions annotated `web-export: true`
//! answer; they run as the namespace's owner.
//!
//! The action gets the HTTP context as `__ow_method` (lower case), `__ow_headers` (lower-case
//! names), `__ow_path` (what follows the action's segment) and `__ow_user` when the caller
//! authenticated; the query parameters and a JSON (or form) body object are merged in, any
//! other body is `__ow_body` (base64 for binary types and, as the controller does,
//! `application/json` bodies that are not objects it could merge). A `raw-http` action gets
//! the query string as `__ow_query` and the body as `__ow_body` instead. A request may not set
//! an `__ow_` property or, on a `final` action, a parameter the action defines (400).
//!
//! The result is answered by extension: `.json` the result object, `.text`/`.html`/`.svg`
//! its `body` (or `text`/`html`/`svg`) field, `.http` (the default) `statusCode`, `headers`
//! and `body`, with a base64 body decoded for binary content types. An application error
//! answers its `error` field the same way; any other failure is a 400.

use std::sync::Arc;

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::api::App;
use crate::entities::EntityError;
use crate::invocations::{self, Answer, InvokeError};
use crate::packages::DEFAULT_PACKAGE;
use crate::subjects::Identity;

/// The content extensions the controller knows.
const EXTENSIONS: &[&str] = &["json", "html", "http", "svg", "text"];

/// The properties the front door sets for a web action; a request may not.
const RESERVED: &[&str] = &[
    "__ow_method",
    "__ow_headers",
    "__ow_path",
    "__ow_user",
    "__ow_query",
    "__ow_body",
];

/// An HTTP request to a web action, as the route read it.
#[derive(Debug)]
pub struct WebRequest {
    pub method: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    /// The raw query string.
    pub query: String,
    pub body: Vec<u8>,
    /// The path segments after `/api/v1/web/`.
    pub segments: Vec<String>,
    /// The caller, when it sent valid credentials.
    pub caller: Option<Identity>,
}

impl WebRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A web action's answer.
#[derive(Debug, PartialEq)]
pub struct WebReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub activation_id: Option<String>,
}

/// A refusal: status and the controller's message (the route adds the transaction id).
#[derive(Debug, PartialEq)]
pub struct WebError(pub u16, pub String);

impl From<EntityError> for WebError {
    fn from(e: EntityError) -> Self {
        match e {
            EntityError::Store(_) => {
                Self(500, "There was an error processing your request.".into())
            }
            // The controller leaks nothing about what is not exported or not there.
            _ => Self(404, "The requested resource does not exist.".into()),
        }
    }
}

/// `name.ext` → `(name, ext)`; without a known extension the whole segment and `http`.
pub fn split_extension(segment: &str) -> (&str, &str) {
    for ext in EXTENSIONS {
        if let Some(base) = segment.strip_suffix(ext).and_then(|b| b.strip_suffix('.')) {
            return (base, ext);
        }
    }
    (segment, "http")
}

/// Serves a web action request.
pub async fn serve(app: &Arc<App>, req: WebRequest) -> Result<WebReply, WebError> {
    let not_found = || WebError(404, "The requested resource does not exist.".into());
    let [ns, pkg, action_segment, rest @ ..] = req.segments.as_slice() else {
        return Err(not_found());
    };
    let (name, ext) = split_extension(action_segment);
    let path = if pkg == DEFAULT_PACKAGE {
        ns.clone()
    } else {
        format!("{ns}/{pkg}")
    };
    let owner = app
        .subjects
        .by_namespace(ns)
        .await
        .map_err(|_| WebError(500, "There was an error processing your request.".into()))?
        .ok_or_else(not_found)?;
    let action = invocations::resolve(app, &path, name, ns).await?;
    let annotation = |k: &str| openwhisk::action::annotation(&action.annotations, k);
    if annotation("web-export") != Some(&Value::Bool(true)) {
        return Err(not_found());
    }
    let allowed = match annotation("require-whisk-auth") {
        None | Some(Value::Bool(false)) => true,
        Some(Value::Bool(true)) => req.caller.is_some(),
        Some(Value::String(s)) => req.header("x-require-whisk-auth") == Some(s.as_str()),
        Some(Value::Number(n)) => {
            req.header("x-require-whisk-auth") == Some(n.to_string().as_str())
        }
        Some(_) => false,
    };
    if !allowed {
        return Err(WebError(
            401,
            "The supplied authentication is invalid.".into(),
        ));
    }
    let raw = annotation("raw-http") == Some(&Value::Bool(true));
    let sub_path = if rest.is_empty() {
        String::new()
    } else {
        format!("/{}", rest.join("/"))
    };
    let args = arguments(&req, &sub_path, raw, &action.final_parameters())?;
    let answer = invocations::invoke(app, &owner, action, args, true, app.max_blocking_wait)
        .await
        .map_err(|e| match e {
            InvokeError::NoInvokers => WebError(503, e.to_string()),
            InvokeError::Entity(e) => e.into(),
            InvokeError::FinalParameters => WebError(400, e.to_string()),
            other => {
                tracing::error!(error = %openwhisk::errors::chain(&other), "web action not activated");
                WebError(500, "There was an error processing your request.".into())
            }
        })?;
    let record = match answer {
        Answer::Record(r) => r,
        Answer::Accepted(id) => {
            return Ok(WebReply {
                status: 202,
                headers: Vec::new(),
                content_type: Some("application/json".into()),
                body: json!({"error": "Response not yet ready."})
                    .to_string()
                    .into_bytes(),
                activation_id: Some(id),
            });
        }
    };
    let id = record["activationId"].as_str().map(str::to_owned);
    let result = &record["response"]["result"];
    let projected = match record["response"]["statusCode"].as_u64() {
        Some(0) => Some(result.clone()),
        Some(1) => result.get("error").cloned(),
        _ => {
            return Err(WebError(
                400,
                "There was an error processing your request.".into(),
            ));
        }
    };
    let Some(projected) = projected else {
        return Err(WebError(
            404,
            "Response does not include requested property.".into(),
        ));
    };
    let mut reply = transcode(ext, &projected)?;
    reply.activation_id = id;
    Ok(reply)
}

/// The action's arguments for a request (the controller's `Context.toActionArgument`).
fn arguments(
    req: &WebRequest,
    sub_path: &str,
    raw: bool,
    final_params: &[&str],
) -> Result<Map<String, Value>, WebError> {
    let query: Vec<(String, String)> = url::form_urlencoded::parse(req.query.as_bytes())
        .into_owned()
        .collect();
    let content_type = req
        .header("content-type")
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let is_json = content_type == "application/json" || content_type.ends_with("+json");
    let body: Option<Value> = if req.body.is_empty() {
        None
    } else if is_json && !raw {
        Some(
            serde_json::from_slice(&req.body)
                .map_err(|_| WebError(400, "The request content was malformed.".into()))?,
        )
    } else if content_type == "application/x-www-form-urlencoded" && !raw {
        Some(Value::Object(
            url::form_urlencoded::parse(&req.body)
                .into_owned()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ))
    } else if is_binary_type(&content_type) || content_type == "application/json" {
        Some(Value::String(
            base64::engine::general_purpose::STANDARD.encode(&req.body),
        ))
    } else {
        Some(Value::String(
            String::from_utf8_lossy(&req.body).into_owned(),
        ))
    };
    if !raw {
        let body_keys = body
            .as_ref()
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys());
        let refused = query
            .iter()
            .map(|(k, _)| k)
            .chain(body_keys)
            .any(|k| RESERVED.contains(&k.as_str()) || final_params.contains(&k.as_str()));
        if refused {
            return Err(WebError(
                400,
                "Request defines parameters that are not allowed (e.g., reserved properties)."
                    .into(),
            ));
        }
    }
    let mut args = Map::new();
    args.insert(
        "__ow_method".into(),
        Value::String(req.method.to_ascii_lowercase()),
    );
    let headers: Map<String, Value> = req
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    args.insert("__ow_headers".into(), Value::Object(headers));
    args.insert("__ow_path".into(), Value::String(sub_path.to_owned()));
    if let Some(c) = &req.caller {
        args.insert("__ow_user".into(), Value::String(c.namespace.clone()));
    }
    if raw {
        args.insert("__ow_query".into(), Value::String(req.query.clone()));
        args.insert(
            "__ow_body".into(),
            body.unwrap_or_else(|| Value::String(String::new())),
        );
    } else {
        for (k, v) in query {
            args.insert(k, Value::String(v));
        }
        match body {
            Some(Value::Object(fields)) => args.extend(fields),
            Some(other) => {
                args.insert("__ow_body".into(), other);
            }
            None => {}
        }
    }
    Ok(args)
}

/// Whether a media type is binary for the controller (everything but text, JSON, XML and
/// form data).
fn is_binary_type(media: &str) -> bool {
    let text = media.starts_with("text/")
        || media.ends_with("+json")
        || media.ends_with("+xml")
        || media.ends_with("/xml")
        || matches!(
            media,
            "application/json"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "message/http"
                | "image/svg+xml"
                | ""
        );
    !text
}

fn invalid_media(media: &str) -> WebError {
    WebError(400, format!("Response is not valid '{media}'."))
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> WebReply {
    WebReply {
        status,
        headers: Vec::new(),
        content_type: Some(content_type.to_owned()),
        body,
        activation_id: None,
    }
}

/// The HTTP answer for a result by extension.
pub fn transcode(ext: &str, result: &Value) -> Result<WebReply, WebError> {
    let field = |name: &str| -> Option<Value> {
        match result {
            Value::Object(f) => f.get("body").or_else(|| f.get(name)).cloned(),
            other => Some(other.clone()),
        }
    };
    match ext {
        "json" => match result {
            Value::Object(_) | Value::Array(_) => Ok(reply(
                200,
                "application/json",
                result.to_string().into_bytes(),
            )),
            _ => Err(invalid_media("application/json")),
        },
        "html" => match field("html") {
            Some(Value::String(s)) => Ok(reply(200, "text/html; charset=UTF-8", s.into_bytes())),
            _ => Err(invalid_media("text/html")),
        },
        "svg" => match field("svg") {
            Some(Value::String(s)) => Ok(reply(200, "image/svg+xml", s.into_bytes())),
            _ => Err(invalid_media("image/svg+xml")),
        },
        "text" => {
            let text = match field("text") {
                Some(v @ (Value::Object(_) | Value::Array(_))) => {
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                }
                Some(Value::String(s)) => s,
                Some(v) => v.to_string(),
                None => {
                    return Err(WebError(
                        404,
                        "Response does not include requested property.".into(),
                    ));
                }
            };
            Ok(reply(200, "text/plain; charset=UTF-8", text.into_bytes()))
        }
        _ => http_response(result).ok_or_else(|| invalid_media("message/http"))?,
    }
}

/// `.http`: `statusCode`, `headers` and `body` of a result object; `None` when it is not one.
fn http_response(result: &Value) -> Option<Result<WebReply, WebError>> {
    let fields = result.as_object()?;
    let mut headers = Vec::new();
    if let Some(h) = fields.get("headers") {
        for (k, v) in h.as_object()? {
            header_values(k, v, &mut headers)?;
        }
    }
    let status: Option<u16> = match fields.get("statusCode") {
        None => None,
        Some(Value::Number(n)) => Some(u16::try_from(n.as_u64()?).ok()?),
        Some(Value::String(s)) => Some(s.parse().ok()?),
        Some(_) => return None,
    };
    if status.is_some_and(|s| !(100..=599).contains(&s)) {
        return None;
    }
    let content_type_header = headers
        .iter()
        .position(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|i| headers.remove(i).1);
    let empty = |code: u16, headers: Vec<(String, String)>| WebReply {
        status: code,
        headers,
        content_type: None,
        body: Vec::new(),
        activation_id: None,
    };
    Some(match fields.get("body") {
        None | Some(Value::Null) => Ok(empty(status.unwrap_or(204), headers)),
        Some(Value::String(s)) if s.is_empty() => Ok(empty(status.unwrap_or(204), headers)),
        Some(Value::String(s)) => {
            let ct = content_type_header.unwrap_or_else(|| "text/html".into());
            let media = ct
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if media.is_empty() || !media.contains('/') {
                return Some(Err(WebError(
                    400,
                    "Response did not specify a known content-type.".into(),
                )));
            }
            let json_family = media == "application/json" || media.ends_with("+json");
            let decode =
                is_binary_type(&media) || (json_family && crate::actions::is_binary_code(s));
            let body = if decode {
                match base64::engine::general_purpose::STANDARD.decode(s.trim()) {
                    Ok(b) => b,
                    Err(_) => {
                        return Some(Err(WebError(
                            400,
                            "Response type in header did not match generated content type.".into(),
                        )));
                    }
                }
            } else {
                s.clone().into_bytes()
            };
            let ct = if is_binary_type(&media) || ct.contains("charset") {
                ct
            } else {
                format!("{ct}; charset=UTF-8")
            };
            Ok(WebReply {
                status: status.unwrap_or(200),
                headers,
                content_type: Some(ct),
                body,
                activation_id: None,
            })
        }
        Some(js) => {
            let ct = content_type_header.unwrap_or_else(|| "application/json".into());
            let media = ct
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if media != "application/json" && !media.ends_with("+json") {
                return Some(Err(WebError(
                    400,
                    "Response type in header did not match generated content type.".into(),
                )));
            }
            Ok(WebReply {
                status: status.unwrap_or(200),
                headers,
                content_type: Some(ct),
                body: js.to_string().into_bytes(),
                activation_id: None,
            })
        }
    })
}

/// A header's values: strings, booleans and numbers, or arrays of them (one header each).
fn header_values(k: &str, v: &Value, out: &mut Vec<(String, String)>) -> Option<()> {
    match v {
        Value::String(s) => out.push((k.to_owned(), s.clone())),
        Value::Bool(b) => out.push((k.to_owned(), b.to_string())),
        Value::Number(n) => out.push((k.to_owned(), n.to_string())),
        Value::Array(items) => {
            for i in items {
                header_values(k, i, out)?;
            }
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, content_type: Option<&str>, query: &str, body: &[u8]) -> WebRequest {
        let mut headers = vec![("accept".to_owned(), "*/*".to_owned())];
        if let Some(c) = content_type {
            headers.push(("content-type".into(), c.into()));
        }
        WebRequest {
            method: method.into(),
            headers,
            query: query.into(),
            body: body.to_vec(),
            segments: vec![],
            caller: None,
        }
    }

    #[test]
    fn extensions_are_split_off_the_action_name() {
        assert_eq!(split_extension("hello.json"), ("hello", "json"));
        assert_eq!(split_extension("hello.http"), ("hello", "http"));
        assert_eq!(split_extension("hello.text"), ("hello", "text"));
        assert_eq!(split_extension("hello"), ("hello", "http"));
        assert_eq!(split_extension("v1.2"), ("v1.2", "http"));
        assert_eq!(split_extension("a.b.html"), ("a.b", "html"));
    }

    #[test]
    fn query_and_json_bodies_are_merged_with_the_context() {
        let req = request(
            "POST",
            Some("application/json"),
            "a=1&b=x",
            br#"{"c": [1]}"#,
        );
        let args = arguments(&req, "/p/q", false, &[]).unwrap();
        assert_eq!(
            Value::Object(args),
            json!({"__ow_method": "post", "__ow_headers": {"accept": "*/*", "content-type": "application/json"},
                   "__ow_path": "/p/q", "a": "1", "b": "x", "c": [1]})
        );
        let text = request("PUT", Some("text/plain"), "", b"hi there");
        let args = arguments(&text, "", false, &[]).unwrap();
        assert_eq!(args["__ow_body"], "hi there");
        let bin = request("PUT", Some("application/octet-stream"), "", &[0, 1, 2]);
        assert_eq!(
            arguments(&bin, "", false, &[]).unwrap()["__ow_body"],
            "AAEC"
        );
    }

    #[test]
    fn raw_actions_get_the_query_and_body_as_they_came() {
        let req = request("POST", Some("application/json"), "a=1&a=2", br#"{"c":1}"#);
        let args = arguments(&req, "", true, &[]).unwrap();
        assert_eq!(args["__ow_query"], "a=1&a=2");
        // As the controller: a JSON body is base64 for a raw action.
        assert_eq!(args["__ow_body"], "eyJjIjoxfQ==");
        assert!(args.get("a").is_none());
        let empty = request("GET", None, "", b"");
        assert_eq!(arguments(&empty, "", true, &[]).unwrap()["__ow_body"], "");
    }

    #[test]
    fn reserved_and_final_parameters_are_refused() {
        let req = request("GET", None, "__ow_method=x", b"");
        assert_eq!(arguments(&req, "", false, &[]).unwrap_err().0, 400);
        let req = request("POST", Some("application/json"), "", br#"{"name": "x"}"#);
        assert_eq!(arguments(&req, "", false, &["name"]).unwrap_err().0, 400);
        assert!(arguments(&req, "", false, &["other"]).is_ok());
    }

    #[test]
    fn results_are_answered_by_extension() {
        let r = json!({"body": "<b>hi</b>", "text": "t", "html": "h"});
        assert_eq!(transcode("html", &r).unwrap().body, b"<b>hi</b>");
        assert_eq!(transcode("text", &json!({"text": "t"})).unwrap().body, b"t");
        assert_eq!(transcode("text", &json!({"text": 3})).unwrap().body, b"3");
        assert_eq!(transcode("text", &json!({"x": 3})).unwrap_err().0, 404);
        let j = transcode("json", &json!({"a": 1})).unwrap();
        assert_eq!(
            (j.status, j.body.as_slice()),
            (200, br#"{"a":1}"#.as_slice())
        );
        assert_eq!(transcode("json", &json!("s")).unwrap_err().0, 400);
        assert_eq!(transcode("html", &json!({"x": 1})).unwrap_err().0, 400);
    }

    #[test]
    fn http_results_follow_the_controllers_rules() {
        let r = transcode(
            "http",
            &json!({"statusCode": 201, "headers": {"X-A": ["1", 2], "Content-Type": "text/plain"}, "body": "made"}),
        )
        .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(
            r.headers,
            vec![
                ("X-A".to_owned(), "1".to_owned()),
                ("X-A".to_owned(), "2".to_owned())
            ]
        );
        assert_eq!(r.content_type.as_deref(), Some("text/plain; charset=UTF-8"));
        assert_eq!(r.body, b"made");
        // A binary type's body is base64.
        let png = transcode(
            "http",
            &json!({"headers": {"content-type": "image/png"}, "body": "iVBORw=="}),
        )
        .unwrap();
        assert_eq!(png.body, b"\x89PNG");
        // No body: 204; a JSON body: application/json.
        assert_eq!(transcode("http", &json!({})).unwrap().status, 204);
        let js = transcode("http", &json!({"body": {"a": 1}})).unwrap();
        assert_eq!(
            (js.status, js.content_type.as_deref()),
            (200, Some("application/json"))
        );
        // Without a content type a string body is HTML.
        let html = transcode("http", &json!({"body": "<p>"})).unwrap();
        assert_eq!(
            html.content_type.as_deref(),
            Some("text/html; charset=UTF-8")
        );
        for bad in [
            json!("s"),
            json!({"statusCode": "x"}),
            json!({"statusCode": 1000}),
            json!({"headers": {"a": {}}}),
            json!({"headers": {"content-type": "text/plain"}, "body": {"a": 1}}),
        ] {
            assert_eq!(transcode("http", &bad).unwrap_err().0, 400, "{bad}");
        }
    }
}

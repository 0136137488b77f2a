//! The action proxy's HTTP protocol (contract §5.2, §5.3): `/init` retried while the proxy is
//! not yet listening, `/run` once, with the time limit as the deadline, and the answer turned
//! into an activation response with the controller's exact messages.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use openwhisk::errors;
use serde_json::Value;

use openwhisk::messages::ActivationResponse;

pub const ABNORMAL_INIT: &str = "The action did not initialize and exited unexpectedly.";
pub const ABNORMAL_RUN: &str =
    "The action did not produce a valid response and exited unexpectedly.";
pub const MEMORY_EXHAUSTED: &str = "The action exhausted its memory and was aborted.";

/// The time-limit message of a run or an init.
pub fn timed_out(limit_ms: u64, init: bool) -> String {
    if init {
        format!(
            "The action exceeded its time limits of {limit_ms} milliseconds during initialization."
        )
    } else {
        format!("The action exceeded its time limits of {limit_ms} milliseconds.")
    }
}

/// What came back from the proxy.
#[derive(Debug)]
pub enum Answer {
    /// An HTTP answer: status, `Content-Length` if given, the body (at most the limit read).
    Http {
        status: u16,
        content_length: Option<u64>,
        body: Vec<u8>,
    },
    /// The time limit passed first.
    Timeout,
    /// The connection failed or dropped.
    Broken(Broken),
}

/// How a connection to the proxy failed, from the I/O error under the HTTP client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// Nothing listens yet (the runtime is starting).
    Refused,
    /// No route yet (the sandbox's network is coming up).
    Unreachable,
    /// The peer reset the connection.
    Reset,
    /// Anything else: closed mid-answer, a protocol error.
    Other,
}

impl Broken {
    fn of(e: &reqwest::Error) -> Self {
        use std::io::ErrorKind;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    ErrorKind::ConnectionRefused => Self::Refused,
                    ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => Self::Unreachable,
                    ErrorKind::ConnectionReset => Self::Reset,
                    _ => Self::Other,
                };
            }
            source = err.source();
        }
        Self::Other
    }
}

/// A client for action proxies; cheap to clone.
#[derive(Clone, Debug)]
pub struct ProxyClient {
    http: reqwest::Client,
}

impl Default for ProxyClient {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyClient {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(30))
                .tcp_nodelay(true)
                .build()
                .unwrap_or_default(),
        }
    }

    /// `POST /init`; a refused connection is retried every 50 ms until `limit` is used up (the
    /// runtime is still starting).
    pub async fn init(
        &self,
        addr: SocketAddr,
        body: &Value,
        limit: Duration,
        max_body: u64,
    ) -> (Answer, Duration) {
        let started = Instant::now();
        loop {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return (Answer::Timeout, started.elapsed());
            }
            match self.post(addr, "/init", body, left, max_body).await {
                Answer::Broken(Broken::Refused | Broken::Unreachable) => {
                    tokio::time::sleep(Duration::from_millis(50).min(left)).await;
                }
                // A reset right after start: the proxy accepted before it was ready.
                Answer::Broken(Broken::Reset) if started.elapsed() < Duration::from_millis(500) => {
                    tokio::time::sleep(Duration::from_millis(50).min(left)).await;
                }
                answer => return (answer, started.elapsed()),
            }
        }
    }

    /// `POST /run`, once.
    pub async fn run(
        &self,
        addr: SocketAddr,
        body: &Value,
        limit: Duration,
        max_body: u64,
    ) -> (Answer, Duration) {
        let started = Instant::now();
        let answer = self.post(addr, "/run", body, limit, max_body).await;
        (answer, started.elapsed())
    }

    async fn post(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &Value,
        limit: Duration,
        max_body: u64,
    ) -> Answer {
        let request = self
            .http
            .post(format!("http://{addr}{path}"))
            .header("Accept", "application/json")
            .json(body)
            .timeout(limit);
        let deadline = tokio::time::Instant::now() + limit;
        let mut resp = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Answer::Timeout,
            Err(e) => return broken(&e),
        };
        let status = resp.status().as_u16();
        let content_length = resp.content_length();
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Err(_) => return Answer::Timeout,
                Ok(Ok(Some(chunk))) => {
                    let room = usize::try_from(max_body)
                        .unwrap_or(usize::MAX)
                        .saturating_sub(out.len());
                    out.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if room <= chunk.len() {
                        break;
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) if e.is_timeout() => return Answer::Timeout,
                Ok(Err(e)) => return broken(&e),
            }
        }
        Answer::Http {
            status,
            content_length,
            body: out,
        }
    }
}

fn broken(e: &reqwest::Error) -> Answer {
    let kind = Broken::of(e);
    tracing::debug!(?kind, error = %errors::chain(e), "action proxy connection failed");
    Answer::Broken(kind)
}

/// An init's verdict: `Ok` or the developer error to report (the container is destroyed).
pub fn init_verdict(answer: &Answer, limit_ms: u64, oom: bool) -> Result<(), ActivationResponse> {
    match answer {
        Answer::Http { status: 200, .. } => Ok(()),
        Answer::Http { body, .. } => {
            let text = String::from_utf8_lossy(body);
            let message = match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(o)) if o.contains_key("error") => o["error"].clone(),
                _ if text.is_empty() => {
                    Value::String("The action failed during initialization.".into())
                }
                _ => Value::String(format!("The action failed during initialization: {text}")),
            };
            Err(developer_error(message))
        }
        Answer::Timeout => Err(developer_error(Value::String(timed_out(limit_ms, true)))),
        Answer::Broken(_) if oom => Err(developer_error(Value::String(MEMORY_EXHAUSTED.into()))),
        Answer::Broken(_) => Err(developer_error(Value::String(ABNORMAL_INIT.into()))),
    }
}

/// A run's activation response (contract §5.3 table).
pub fn run_response(
    answer: &Answer,
    limit_ms: u64,
    max_payload: u64,
    oom: bool,
) -> ActivationResponse {
    match answer {
        Answer::Http {
            status,
            content_length,
            body,
        } => {
            if let Some(len) = content_length
                && *len > max_payload
            {
                let trunk = String::from_utf8_lossy(body);
                return ActivationResponse {
                    status_code: 1,
                    result: Some(serde_json::json!({ "error": format!(
                        "The action produced a response that exceeded the allowed length: {len} > {max_payload} bytes. The truncated response was: {trunk}"
                    )})),
                    size: Some(*len),
                };
            }
            if content_length.is_none() && body.is_empty() {
                return with_size(developer_error(Value::String(ABNORMAL_RUN.into())), 0);
            }
            let size = body.len() as u64;
            let parsed = serde_json::from_slice::<Value>(body).ok();
            let response = match (status, parsed) {
                (200, Some(Value::Object(o))) if o.contains_key("error") => ActivationResponse {
                    status_code: 1,
                    result: Some(serde_json::json!({ "error": o["error"] })),
                    size: None,
                },
                (200, Some(v @ (Value::Object(_) | Value::Array(_)))) => ActivationResponse {
                    status_code: 0,
                    result: Some(v),
                    size: None,
                },
                (_, Some(Value::Object(o))) if *status != 200 && o.contains_key("error") => {
                    developer_error(o["error"].clone())
                }
                _ => developer_error(Value::String(format!(
                    "The action did not produce a valid JSON or JSON Array response: {}",
                    String::from_utf8_lossy(body)
                ))),
            };
            with_size(response, size)
        }
        Answer::Timeout => developer_error(Value::String(timed_out(limit_ms, false))),
        Answer::Broken(_) if oom => developer_error(Value::String(MEMORY_EXHAUSTED.into())),
        Answer::Broken(_) => developer_error(Value::String(ABNORMAL_RUN.into())),
    }
}

fn with_size(mut r: ActivationResponse, size: u64) -> ActivationResponse {
    r.size = Some(size);
    r
}

/// Status 2 with `{"error": message}`.
#[allow(clippy::needless_pass_by_value)] // callers build the value for this call
pub fn developer_error(message: Value) -> ActivationResponse {
    ActivationResponse {
        status_code: 2,
        result: Some(serde_json::json!({ "error": message })),
        size: None,
    }
}

/// Status 3 with `{"error": message}`.
pub fn whisk_error(message: &str) -> ActivationResponse {
    ActivationResponse {
        status_code: 3,
        result: Some(serde_json::json!({ "error": message })),
        size: None,
    }
}

/// Status 1 with `{"error": message}`.
pub fn application_error(message: &str) -> ActivationResponse {
    ActivationResponse {
        status_code: 1,
        result: Some(serde_json::json!({ "error": message })),
        size: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, body: &str) -> Answer {
        Answer::Http {
            status,
            content_length: Some(body.len() as u64),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn run_answers_map_as_the_contract_table() {
        let r = run_response(&http(200, r#"{"a":1}"#), 1000, 1 << 20, false);
        assert_eq!((r.status_code, r.size), (0, Some(7)));
        let r = run_response(&http(200, "[1,2]"), 1000, 1 << 20, false);
        assert_eq!(r.status_code, 0);
        let r = run_response(&http(200, r#"{"error":"boom"}"#), 1000, 1 << 20, false);
        assert_eq!(
            (r.status_code, r.result.unwrap()),
            (1, serde_json::json!({"error":"boom"}))
        );
        let r = run_response(&http(502, r#"{"error":"crash"}"#), 1000, 1 << 20, false);
        assert_eq!(r.status_code, 2);
        let r = run_response(&http(200, "42"), 1000, 1 << 20, false);
        assert_eq!(
            r.result.unwrap()["error"],
            "The action did not produce a valid JSON or JSON Array response: 42"
        );
        let r = run_response(&Answer::Timeout, 1500, 1 << 20, false);
        assert_eq!(
            r.result.unwrap()["error"],
            "The action exceeded its time limits of 1500 milliseconds."
        );
        let r = run_response(&Answer::Broken(Broken::Other), 1, 1, true);
        assert_eq!(r.result.unwrap()["error"], MEMORY_EXHAUSTED);
        let big = Answer::Http {
            status: 200,
            content_length: Some(20),
            body: b"0123456789".to_vec(),
        };
        let r = run_response(&big, 1, 10, false);
        assert_eq!(r.status_code, 1);
        assert!(r.result.unwrap()["error"].as_str().unwrap().starts_with(
            "The action produced a response that exceeded the allowed length: 20 > 10 bytes. The truncated response was: 0123456789"
        ));
    }

    #[test]
    fn init_answers() {
        assert!(init_verdict(&http(200, "OK"), 1, false).is_ok());
        let e = init_verdict(&http(502, r#"{"error":"no main"}"#), 1, false).unwrap_err();
        assert_eq!(e.result.unwrap()["error"], "no main");
        let e = init_verdict(&http(500, "oops"), 1, false).unwrap_err();
        assert_eq!(
            e.result.unwrap()["error"],
            "The action failed during initialization: oops"
        );
        let e = init_verdict(&Answer::Timeout, 300, false).unwrap_err();
        assert_eq!(
            e.result.unwrap()["error"],
            "The action exceeded its time limits of 300 milliseconds during initialization."
        );
        let e = init_verdict(&Answer::Broken(Broken::Reset), 1, false).unwrap_err();
        assert_eq!(e.result.unwrap()["error"], ABNORMAL_INIT);
    }
}

//! A small client for the CouchDB HTTP API, shaped by what OpenWhisk keeps there: actions
//! (documents whose code may live in an attachment), activation records (written in bulk) and
//! subjects.
//!
//! # Behavior
//! - Every request carries basic auth; document ids travel as one path segment, so `guest/hello`
//!   is sent as `guest%2Fhello`, as OpenWhisk's `CouchDbRestClient` does.
//! - Revisions are sent as `?rev=` or as `_rev` in the body, never as `If-Match`: CouchDB honours
//!   both, pouchdb-server ignores `If-Match` on writes (`shared/stack-notes.md` §2.2).
//! - A 404 becomes [`CouchDbError::NotFound`], a 409 [`CouchDbError::Conflict`] and a 401
//!   [`CouchDbError::Unauthorized`], so callers can tell a missing action from a broken store.
//! - Idle pooled connections are dropped after [`POOL_IDLE_TIMEOUT`], before a Node.js server
//!   (pouchdb-server) closes them at its 5 s keep-alive; a GET or HEAD whose connection fails
//!   anyway (a server closing it as the request goes out) is sent once more on a new one. Writes
//!   are never re-sent: the caller decides (the invoker's record writer retries with back-off).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

use crate::config::Secret;

/// Default time a single CouchDB request may take.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an idle connection stays in the pool: under Node.js's default keep-alive timeout
/// (5 s), so the client never picks a connection the server is about to close.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Errors of the CouchDB client. Each names the request that failed.
#[derive(Debug, thiserror::Error)]
pub enum CouchDbError {
    #[error("invalid couchdb url {url}")]
    InvalidUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("couchdb url {0} cannot carry a path")]
    BaseUrl(String),
    #[error("couchdb {method} {path} failed")]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("couchdb {method} {path}: not found")]
    NotFound { method: Method, path: String },
    #[error("couchdb {method} {path}: revision conflict")]
    Conflict { method: Method, path: String },
    #[error("couchdb {method} {path}: unauthorized")]
    Unauthorized { method: Method, path: String },
    #[error("couchdb {method} {path} answered {status}: {body}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("couchdb {method} {path} answered with a body that is not the expected JSON")]
    Decode {
        method: Method,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl CouchDbError {
    /// True when the store could not be reached or answered with a server error, as opposed to
    /// an answer about the document (missing, conflict).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

/// Where the CouchDB-API server is and how to log in.
#[derive(Clone, Debug)]
pub struct CouchDbConfig {
    /// `protocol://host:port`, e.g. `http://127.0.0.1:5984`.
    pub url: String,
    pub username: String,
    pub password: Secret,
    pub request_timeout: Duration,
}

/// The outcome of a write: the document's id and its new revision.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct DocInfo {
    pub id: String,
    pub rev: String,
}

/// One element of a `_bulk_docs` answer: a new revision, or the error for that document.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct BulkResult {
    pub id: String,
    #[serde(default)]
    pub rev: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// An attachment's bytes and content type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub content_type: String,
    pub data: Vec<u8>,
}

/// A CouchDB client; cheap to clone (the HTTP connection pool is shared).
#[derive(Clone, Debug)]
pub struct CouchDb {
    http: reqwest::Client,
    base: Url,
    username: String,
    password: Secret,
}

impl CouchDb {
    /// Builds a client. Nothing is sent until the first request.
    pub fn new(config: &CouchDbConfig) -> Result<Self, CouchDbError> {
        let base = Url::parse(&config.url).map_err(|source| CouchDbError::InvalidUrl {
            url: config.url.clone(),
            source,
        })?;
        if base.cannot_be_a_base() {
            return Err(CouchDbError::BaseUrl(config.url.clone()));
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|source| CouchDbError::Transport {
                method: Method::GET,
                path: "/".into(),
                source,
            })?;
        Ok(Self {
            http,
            base,
            username: config.username.clone(),
            password: config.password.clone(),
        })
    }

    /// `GET /`: the server's welcome object; proves that the server answers and accepts our
    /// credentials.
    pub async fn server_info(&self) -> Result<Value, CouchDbError> {
        self.json(Method::GET, &[], &[], None).await
    }

    /// `PUT /db`: creates a database. Returns `false` when it existed already.
    pub async fn create_db(&self, db: &str) -> Result<bool, CouchDbError> {
        match self.json(Method::PUT, &[db], &[], None).await {
            Ok(_) => Ok(true),
            Err(CouchDbError::Status { status, .. })
                if status == StatusCode::PRECONDITION_FAILED =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// `DELETE /db`. Returns `false` when there was no such database.
    pub async fn delete_db(&self, db: &str) -> Result<bool, CouchDbError> {
        match self.json(Method::DELETE, &[db], &[], None).await {
            Ok(_) => Ok(true),
            Err(CouchDbError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `PUT /db/id`: creates the document, or updates it when `doc` carries the current `_rev`.
    pub async fn put_doc(&self, db: &str, id: &str, doc: &Value) -> Result<DocInfo, CouchDbError> {
        let v = self.json(Method::PUT, &[db, id], &[], Some(doc)).await?;
        self.decode(Method::PUT, &[db, id], v)
    }

    /// `GET /db/id`: the current revision of a document.
    pub async fn get_doc(&self, db: &str, id: &str) -> Result<Value, CouchDbError> {
        self.json(Method::GET, &[db, id], &[], None).await
    }

    /// `GET /db/id?rev=`: a given revision of a document.
    pub async fn get_doc_rev(&self, db: &str, id: &str, rev: &str) -> Result<Value, CouchDbError> {
        self.json(Method::GET, &[db, id], &[("rev", rev)], None)
            .await
    }

    /// `DELETE /db/id?rev=`.
    pub async fn delete_doc(&self, db: &str, id: &str, rev: &str) -> Result<DocInfo, CouchDbError> {
        let v = self
            .json(Method::DELETE, &[db, id], &[("rev", rev)], None)
            .await?;
        self.decode(Method::DELETE, &[db, id], v)
    }

    /// `GET /db/_all_docs?include_docs=true`, ids from `start` to `end` (inclusive; `None`
    /// leaves that side open): the documents in id order, deleted ones left out.
    pub async fn all_docs(
        &self,
        db: &str,
        start: Option<&str>,
        end: Option<&str>,
    ) -> Result<Vec<Value>, CouchDbError> {
        let key = |k: Option<&str>| k.map(|k| Value::String(k.to_owned()).to_string());
        let (start, end) = (key(start), key(end));
        let mut query = vec![("include_docs", "true")];
        if let Some(s) = &start {
            query.push(("startkey", s));
        }
        if let Some(e) = &end {
            query.push(("endkey", e));
        }
        let v = self
            .json(Method::GET, &[db, "_all_docs"], &query, None)
            .await?;
        Ok(v["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| r.get("doc"))
                    .filter(|d| d.is_object())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The documents whose id starts with `prefix` (such as `guest/`), in id order.
    pub async fn docs_with_prefix(
        &self,
        db: &str,
        prefix: &str,
    ) -> Result<Vec<Value>, CouchDbError> {
        // U+FFF0 sorts after every character an id uses.
        self.all_docs(db, Some(prefix), Some(&format!("{prefix}\u{fff0}")))
            .await
    }

    /// `POST /db/_bulk_docs`: writes many documents in one request; each gets its own result.
    pub async fn bulk_docs(
        &self,
        db: &str,
        docs: &[Value],
    ) -> Result<Vec<BulkResult>, CouchDbError> {
        let body = serde_json::json!({ "docs": docs });
        let v = self
            .json(Method::POST, &[db, "_bulk_docs"], &[], Some(&body))
            .await?;
        self.decode(Method::POST, &[db, "_bulk_docs"], v)
    }

    /// `PUT /db/id/name?rev=`: attaches `data` to revision `rev` of a document and returns the
    /// document's new revision.
    pub async fn put_attachment(
        &self,
        db: &str,
        id: &str,
        rev: &str,
        name: &str,
        content_type: &str,
        data: Vec<u8>,
    ) -> Result<DocInfo, CouchDbError> {
        let segments = [db, id, name];
        let resp = self
            .request(Method::PUT, &segments, &[("rev", rev)])
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(data)
            .send()
            .await;
        let bytes = self.check(Method::PUT, &segments, resp).await?;
        let v = self.parse(Method::PUT, &segments, &bytes)?;
        self.decode(Method::PUT, &segments, v)
    }

    /// `GET /db/id/name`: an attachment's bytes and content type.
    pub async fn get_attachment(
        &self,
        db: &str,
        id: &str,
        name: &str,
    ) -> Result<Attachment, CouchDbError> {
        let segments = [db, id, name];
        let resp = send(&Method::GET, self.request(Method::GET, &segments, &[])).await;
        let resp = match resp {
            Ok(r) => r,
            Err(source) => return Err(self.transport(Method::GET, &segments, source)),
        };
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let data = self.check(Method::GET, &segments, Ok(resp)).await?;
        Ok(Attachment { content_type, data })
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        {
            // `cannot_be_a_base` was rejected in `new`, so the URL has path segments.
            #[allow(clippy::expect_used)]
            let mut path = url.path_segments_mut().expect("base url checked in new()");
            path.pop_if_empty();
            for s in segments {
                // `push` percent-encodes `/`, so `guest/hello` stays one segment.
                path.push(s);
            }
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn request(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(segments, query))
            .basic_auth(&self.username, Some(self.password.expose()))
    }

    async fn json(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, CouchDbError> {
        let mut req = self.request(method.clone(), segments, query);
        if let Some(body) = body {
            req = req.json(body);
        }
        let bytes = self
            .check(method.clone(), segments, send(&method, req).await)
            .await?;
        self.parse(method, segments, &bytes)
    }

    async fn check(
        &self,
        method: Method,
        segments: &[&str],
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Vec<u8>, CouchDbError> {
        let resp = resp.map_err(|source| self.transport(method.clone(), segments, source))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| self.transport(method.clone(), segments, source))?;
        let path = path_of(segments);
        match status {
            s if s.is_success() => Ok(bytes.to_vec()),
            StatusCode::NOT_FOUND => Err(CouchDbError::NotFound { method, path }),
            StatusCode::CONFLICT => Err(CouchDbError::Conflict { method, path }),
            StatusCode::UNAUTHORIZED => Err(CouchDbError::Unauthorized { method, path }),
            status => Err(CouchDbError::Status {
                method,
                path,
                status,
                body: String::from_utf8_lossy(&bytes).chars().take(512).collect(),
            }),
        }
    }

    fn parse(
        &self,
        method: Method,
        segments: &[&str],
        bytes: &[u8],
    ) -> Result<Value, CouchDbError> {
        serde_json::from_slice(bytes).map_err(|source| CouchDbError::Decode {
            method,
            path: path_of(segments),
            source,
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        v: Value,
    ) -> Result<T, CouchDbError> {
        serde_json::from_value(v).map_err(|source| CouchDbError::Decode {
            method,
            path: path_of(segments),
            source,
        })
    }

    fn transport(&self, method: Method, segments: &[&str], source: reqwest::Error) -> CouchDbError {
        CouchDbError::Transport {
            method,
            path: path_of(segments),
            source,
        }
    }
}

/// Sends `req`; a GET or HEAD that failed on its connection (not by its timeout) is sent once
/// more, on a new connection: a pooled connection the server closed as the request went out fails
/// it without the server having read it.
async fn send(
    method: &Method,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let again = match *method {
        Method::GET | Method::HEAD => req.try_clone(),
        _ => None,
    };
    match (req.send().await, again) {
        (Err(e), Some(again)) if !e.is_timeout() => {
            tracing::debug!(%method, error = %crate::errors::chain(&e), "couchdb request sent again");
            again.send().await
        }
        (result, _) => result,
    }
}

fn path_of(segments: &[&str]) -> String {
    let mut p = String::new();
    for s in segments {
        p.push('/');
        p.push_str(s);
    }
    if p.is_empty() { "/".into() } else { p }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> CouchDb {
        CouchDb::new(&CouchDbConfig {
            url: url.into(),
            username: "u".into(),
            password: "p".into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
        .unwrap()
    }

    #[test]
    fn ids_with_slashes_stay_one_segment() {
        let c = client("http://127.0.0.1:5984");
        let url = c.url(&["whisks", "guest/hello"], &[("rev", "1-abc")]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:5984/whisks/guest%2Fhello?rev=1-abc"
        );
    }

    #[test]
    fn base_path_is_kept() {
        let c = client("http://127.0.0.1:5984/couch/");
        let url = c.url(&["db", "doc", "att"], &[]);
        assert_eq!(url.as_str(), "http://127.0.0.1:5984/couch/db/doc/att");
    }

    /// A server that answers every request with `{}` on a keep-alive connection, except the
    /// requests (counted from 1 over all connections) in `close_at`: for those it closes the
    /// connection having read the request, as a server closing an idle connection does when the
    /// request crosses its close. Returns its url and its request count.
    async fn closing_server(
        close_at: &'static [usize],
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                        if close_at.contains(&n) {
                            return;
                        }
                        let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                     content-length: 2\r\nconnection: keep-alive\r\n\r\n{}";
                        if conn.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, count)
    }

    #[tokio::test]
    async fn a_read_whose_connection_closes_is_sent_again() {
        let (url, count) = closing_server(&[2]).await;
        let c = client(&url);
        c.server_info().await.unwrap();
        // The second request goes out on the pooled connection, which the server closes.
        c.server_info().await.unwrap();
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_write_whose_connection_closes_is_not_sent_again() {
        let (url, count) = closing_server(&[2]).await;
        let c = client(&url);
        c.server_info().await.unwrap();
        let err = c.bulk_docs("db", &[serde_json::json!({"a": 1})]).await;
        assert!(
            matches!(err, Err(CouchDbError::Transport { .. })),
            "{err:?}"
        );
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn invalid_url_is_named() {
        let err = CouchDb::new(&CouchDbConfig {
            url: "not a url".into(),
            username: String::new(),
            password: Secret::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
        .unwrap_err();
        assert!(err.to_string().contains("not a url"), "{err}");
    }
}

//! Actions in the whisks database (`WhiskEntity`), stored the way the controller stores them
//! (contract §4.2) so that the invoker cannot tell who wrote them: `_id` `<namespace>/<name>`,
//! the kind resolved through the runtimes manifest, code as an attachment reference (`mem:` inline
//! up to 16 KiB, a CouchDB attachment `couch:<uuid>` above), limits with the deployment's
//! defaults and bounds, `provide-api-key: false` and `exec` annotations added, and the version
//! bumped on every update.
//!
//! Packages and sequences are not supported by this front door: the names are flat and the kinds
//! are the manifest's plus `blackbox`.

use base64::Engine;
use invoker::couchdb::{CouchDb, CouchDbError};
use invoker::manifest::Manifest;
use invoker::settings::Bounds;
use serde_json::{Map, Value, json};

use crate::ids;

/// Code up to this size is inlined in the attachment name (`mem:`), as the controller's
/// `max-inline-size`.
pub const MAX_INLINE_BYTES: usize = 16 * 1024;

/// Largest action code accepted (the controller's `whisk.activation.payload.max`-like limit for
/// entities is 48 MB; we keep one document's attachment reasonable).
pub const MAX_CODE_BYTES: usize = 48 * 1024 * 1024;

/// Errors of the action store; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// 400: the request is not a valid action.
    #[error("{0}")]
    Invalid(String),
    /// 404.
    #[error("The requested resource does not exist.")]
    NotFound,
    /// 409: it exists and `overwrite` was not given, or it changed under us.
    #[error("Concurrent modification to resource detected.")]
    Conflict,
    /// 500: the database failed.
    #[error("the whisks database failed")]
    Store(#[source] CouchDbError),
}

impl From<CouchDbError> for ActionError {
    fn from(e: CouchDbError) -> Self {
        match e {
            CouchDbError::NotFound { .. } => Self::NotFound,
            CouchDbError::Conflict { .. } => Self::Conflict,
            other => Self::Store(other),
        }
    }
}

/// The limits an action may ask for, and their defaults.
#[derive(Clone, Debug)]
pub struct LimitBounds {
    pub memory_mb: Bounds,
    pub timeout_ms: Bounds,
    pub logs_mb: Bounds,
    pub concurrency: Bounds,
}

impl LimitBounds {
    /// The bounds an invoker was configured with.
    pub fn from_settings(s: &invoker::settings::Settings) -> Self {
        Self {
            memory_mb: s.memory_mb,
            timeout_ms: s.time_ms,
            logs_mb: s.logs_mb,
            concurrency: s.concurrency,
        }
    }
}

/// What an invocation needs of an action.
#[derive(Clone, Debug)]
pub struct StoredAction {
    pub namespace: String,
    pub name: String,
    pub rev: String,
    pub version: String,
    /// `{key, value, init?}` items.
    pub parameters: Vec<Value>,
    pub timeout_ms: u64,
}

/// The whisks database, as far as actions go.
#[derive(Debug)]
pub struct Actions {
    db: CouchDb,
    name: String,
    manifest: Manifest,
    bounds: LimitBounds,
}

impl Actions {
    pub fn new(db: CouchDb, name: &str, manifest: Manifest, bounds: LimitBounds) -> Self {
        Self {
            db,
            name: name.to_owned(),
            manifest,
            bounds,
        }
    }

    /// Creates the database if it does not exist.
    pub async fn ensure_db(&self) -> Result<(), CouchDbError> {
        self.db.create_db(&self.name).await.map(|_| ())
    }

    /// `PUT /namespaces/<ns>/actions/<name>[?overwrite=true]`: creates or updates; returns the
    /// action as the API shows it (code included).
    pub async fn put(
        &self,
        namespace: &str,
        name: &str,
        body: &Value,
        overwrite: bool,
    ) -> Result<Value, ActionError> {
        check_name(name)?;
        let body = body
            .as_object()
            .ok_or_else(|| ActionError::Invalid("The request content was malformed.".into()))?;
        let id = format!("{namespace}/{name}");
        let existing = match self.db.get_doc(&self.name, &id).await {
            Ok(d) => Some(d),
            Err(CouchDbError::NotFound { .. }) => None,
            Err(e) => return Err(ActionError::Store(e)),
        };
        if existing.is_some() && !overwrite {
            return Err(ActionError::Conflict);
        }
        let old = existing.as_ref();

        // exec: given, or kept from the old document on an update.
        let (exec, code) = match body.get("exec") {
            Some(e) => self.exec_of(e)?,
            None => match old {
                Some(o) => (o["exec"].clone(), None),
                None => {
                    return Err(ActionError::Invalid(
                        "The request content was malformed: exec undefined.".into(),
                    ));
                }
            },
        };
        let limits = self.limits_of(body.get("limits"), old.map(|o| &o["limits"]))?;
        let parameters = match body.get("parameters") {
            Some(Value::Array(p)) => Value::Array(check_key_values(p, "parameters")?),
            Some(Value::Null) | None => old.map_or(json!([]), |o| o["parameters"].clone()),
            Some(_) => return Err(ActionError::Invalid("parameters must be an array".into())),
        };
        let mut annotations = match body.get("annotations") {
            Some(Value::Array(a)) => check_key_values(a, "annotations")?,
            Some(Value::Null) | None => old
                .and_then(|o| o["annotations"].as_array().cloned())
                .unwrap_or_default(),
            Some(_) => return Err(ActionError::Invalid("annotations must be an array".into())),
        };
        let kind = exec["kind"].as_str().unwrap_or("blackbox").to_owned();
        annotations.retain(|a| a["key"] != "exec");
        if !annotations.iter().any(|a| a["key"] == "provide-api-key") {
            annotations.push(json!({"key": "provide-api-key", "value": false}));
        }
        annotations.push(json!({"key": "exec", "value": kind}));
        let version = match old {
            Some(o) => bump_patch(o["version"].as_str().unwrap_or("0.0.0")),
            None => body
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or("0.0.1")
                .to_owned(),
        };
        let publish = body
            .get("publish")
            .and_then(Value::as_bool)
            .or_else(|| old.and_then(|o| o["publish"].as_bool()))
            .unwrap_or(false);

        let mut doc = json!({
            "_id": id, "entityType": "action", "namespace": namespace, "name": name,
            "updated": ids::now_ms(), "exec": exec, "parameters": parameters, "limits": limits,
            "version": version, "publish": publish, "annotations": annotations,
        });
        if let Some(o) = old {
            doc["_rev"] = o["_rev"].clone();
            // The code stays where it was when exec is not replaced: keep the attachment
            // (CouchDB drops attachments a new revision does not list).
            if body.get("exec").is_none() && o.get("_attachments").is_some() {
                doc["_attachments"] = o["_attachments"].clone();
            }
        }
        // Code above the inline size goes in an attachment: the document first (with the
        // attachment's name), then the bytes on the new revision.
        let info = self.db.put_doc(&self.name, &id, &doc).await?;
        if let Some(Code::Attachment {
            name: att,
            content_type,
            bytes,
        }) = code
        {
            self.db
                .put_attachment(&self.name, &id, &info.rev, &att, &content_type, bytes)
                .await?;
        }
        // What was just written, as the API shows it (no second read of the document).
        self.shown(&id, &doc, true).await
    }

    /// The action document `namespace/name`; `NotFound` for anything that is not an action.
    async fn doc(&self, namespace: &str, name: &str) -> Result<(String, Value), ActionError> {
        check_name(name)?;
        let id = format!("{namespace}/{name}");
        let doc = self.db.get_doc(&self.name, &id).await?;
        if doc["entityType"] != "action" {
            return Err(ActionError::NotFound);
        }
        Ok((id, doc))
    }

    /// A document as the API shows it, with or without its code.
    async fn shown(&self, id: &str, doc: &Value, code: bool) -> Result<Value, ActionError> {
        let mut out = api_view(doc);
        if code {
            if let Some(text) = self.code_text(id, &doc["exec"]).await? {
                out["exec"]["code"] = Value::String(text);
            }
        } else if let Some(exec) = out["exec"].as_object_mut() {
            exec.remove("code");
        }
        Ok(out)
    }

    /// The stored document, with its revision.
    pub async fn fetch(&self, namespace: &str, name: &str) -> Result<StoredAction, ActionError> {
        let (_, doc) = self.doc(namespace, name).await?;
        Ok(StoredAction {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            rev: doc["_rev"].as_str().unwrap_or_default().to_owned(),
            version: doc["version"].as_str().unwrap_or("0.0.1").to_owned(),
            parameters: doc["parameters"].as_array().cloned().unwrap_or_default(),
            timeout_ms: doc["limits"]["timeout"]
                .as_u64()
                .unwrap_or(self.bounds.timeout_ms.std),
        })
    }

    /// `GET /namespaces/<ns>/actions/<name>[?code=false]`.
    pub async fn get(&self, namespace: &str, name: &str, code: bool) -> Result<Value, ActionError> {
        let (id, doc) = self.doc(namespace, name).await?;
        self.shown(&id, &doc, code).await
    }

    /// `GET /namespaces/<ns>/actions?skip=&limit=`: summaries, most recently updated first.
    pub async fn list(
        &self,
        namespace: &str,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<Value>, ActionError> {
        let mut docs: Vec<Value> = self
            .db
            .docs_with_prefix(&self.name, &format!("{namespace}/"))
            .await?
            .into_iter()
            .filter(|d| d["entityType"] == "action")
            .collect();
        docs.sort_by_key(|d| std::cmp::Reverse(d["updated"].as_i64().unwrap_or(0)));
        Ok(docs
            .iter()
            .skip(skip)
            .take(limit)
            .map(|d| {
                let v = api_view(d);
                json!({
                    "namespace": v["namespace"], "name": v["name"], "version": v["version"],
                    "publish": v["publish"], "annotations": v["annotations"], "limits": v["limits"],
                    "exec": {"binary": v["exec"]["binary"]}, "updated": v["updated"],
                })
            })
            .collect())
    }

    /// `DELETE /namespaces/<ns>/actions/<name>`: returns what was deleted.
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<Value, ActionError> {
        let (id, doc) = self.doc(namespace, name).await?;
        let rev = doc["_rev"].as_str().unwrap_or_default();
        self.db.delete_doc(&self.name, &id, rev).await?;
        self.shown(&id, &doc, false).await
    }

    /// Validates `exec` and turns its code into an attachment reference.
    fn exec_of(&self, e: &Value) -> Result<(Value, Option<Code>), ActionError> {
        let kind = e["kind"]
            .as_str()
            .ok_or_else(|| ActionError::Invalid("exec.kind is required".into()))?;
        let mut exec = Map::new();
        match kind {
            "blackbox" => {
                let image = e["image"]
                    .as_str()
                    .filter(|i| !i.is_empty())
                    .ok_or_else(|| {
                        ActionError::Invalid("a blackbox action needs exec.image".into())
                    })?;
                exec.insert("kind".into(), json!("blackbox"));
                exec.insert("image".into(), json!(image));
            }
            "sequence" => {
                return Err(ActionError::Invalid(
                    "Sequences are not supported by the standalone front door.".into(),
                ));
            }
            _ => {
                let k = self.manifest.resolve(kind).ok_or_else(|| {
                    ActionError::Invalid(format!(
                        "The specified runtime '{kind}' is not supported by this platform. Valid values are: '{}'.",
                        self.manifest.kind_names().join("', '")
                    ))
                })?;
                if k.deprecated {
                    return Err(ActionError::Invalid(format!(
                        "The '{}' runtime is no longer supported. You may read and delete but not update or invoke this action.",
                        k.kind
                    )));
                }
                exec.insert("kind".into(), json!(k.kind));
            }
        }
        if let Some(main) = e["main"].as_str().filter(|m| !m.is_empty()) {
            exec.insert("main".into(), json!(main));
        }
        let code = match &e["code"] {
            Value::String(c) => Some(c.as_str()),
            Value::Null => None,
            _ => return Err(ActionError::Invalid("exec.code must be a string".into())),
        };
        let mut stored_code = None;
        match code {
            None if kind == "blackbox" => {
                exec.insert("binary".into(), json!(false));
            }
            None => {
                return Err(ActionError::Invalid(
                    "The request content was malformed: exec.code undefined.".into(),
                ));
            }
            Some(c) => {
                let binary = e["binary"].as_bool().unwrap_or_else(|| is_binary_code(c));
                let bytes = if binary {
                    base64::engine::general_purpose::STANDARD
                        .decode(c.trim())
                        .map_err(|_| {
                            ActionError::Invalid("binary code must be base64 (a zip)".into())
                        })?
                } else {
                    c.as_bytes().to_vec()
                };
                if bytes.len() > MAX_CODE_BYTES {
                    return Err(ActionError::Invalid(format!(
                        "exec larger than allowed: {} > {MAX_CODE_BYTES} bytes.",
                        bytes.len()
                    )));
                }
                let content_type = if binary {
                    "application/octet-stream"
                } else {
                    "text/plain; charset=UTF-8"
                };
                let length = bytes.len();
                let name = if length < MAX_INLINE_BYTES {
                    format!(
                        "mem:{}",
                        base64::engine::general_purpose::URL_SAFE.encode(&bytes)
                    )
                } else {
                    let att = ids::uuid();
                    stored_code = Some(Code::Attachment {
                        name: att.clone(),
                        content_type: content_type.to_owned(),
                        bytes,
                    });
                    format!("couch:{att}")
                };
                exec.insert("binary".into(), json!(binary));
                exec.insert(
                    "code".into(),
                    json!({"attachmentName": name, "attachmentType": content_type, "length": length}),
                );
            }
        }
        Ok((Value::Object(exec), stored_code))
    }

    /// The limits: given values checked against the bounds, the rest from the old document or
    /// the defaults.
    fn limits_of(&self, given: Option<&Value>, old: Option<&Value>) -> Result<Value, ActionError> {
        let b = &self.bounds;
        let mut out = Map::new();
        for (key, bounds, unit) in [
            ("timeout", &b.timeout_ms, "ms"),
            ("memory", &b.memory_mb, "MB"),
            ("logs", &b.logs_mb, "MB"),
            ("concurrency", &b.concurrency, ""),
        ] {
            let value = match given.and_then(|g| g.get(key)) {
                Some(v) => {
                    let n = v.as_u64().ok_or_else(|| {
                        ActionError::Invalid(format!("limits.{key} must be a whole number"))
                    })?;
                    if n < bounds.min {
                        return Err(ActionError::Invalid(format!(
                            "{key} {n} {unit} below allowed threshold of {} {unit}",
                            bounds.min
                        )));
                    }
                    if n > bounds.max {
                        return Err(ActionError::Invalid(format!(
                            "{key} {n} {unit} exceeds allowed threshold of {} {unit}",
                            bounds.max
                        )));
                    }
                    n
                }
                None => old
                    .and_then(|o| o.get(key))
                    .and_then(Value::as_u64)
                    .unwrap_or(bounds.std),
            };
            out.insert(key.into(), json!(value));
        }
        Ok(Value::Object(out))
    }

    /// The code as the API shows it: text, or base64 for binary code.
    async fn code_text(&self, id: &str, exec: &Value) -> Result<Option<String>, ActionError> {
        let Some(name) = exec["code"]["attachmentName"].as_str() else {
            return Ok(exec["code"].as_str().map(str::to_owned));
        };
        let bytes = if let Some(inline) = name.strip_prefix("mem:") {
            base64::engine::general_purpose::URL_SAFE
                .decode(inline)
                .map_err(|_| ActionError::Invalid("stored code is not valid base64".into()))?
        } else {
            let att = name.strip_prefix("couch:").unwrap_or(name);
            self.db.get_attachment(&self.name, id, att).await?.data
        };
        Ok(Some(if exec["binary"].as_bool().unwrap_or(false) {
            base64::engine::general_purpose::STANDARD.encode(bytes)
        } else {
            String::from_utf8_lossy(&bytes).into_owned()
        }))
    }
}

/// Code that goes into a CouchDB attachment.
enum Code {
    Attachment {
        name: String,
        content_type: String,
        bytes: Vec<u8>,
    },
}

/// The document without CouchDB's and the store's own fields.
fn api_view(doc: &Value) -> Value {
    let mut v = doc.clone();
    if let Some(o) = v.as_object_mut() {
        for k in ["_id", "_rev", "_attachments", "entityType"] {
            o.remove(k);
        }
    }
    v
}

/// Entity names as OpenWhisk allows them: word characters, then also `@ . -` and spaces
/// inside, at most 256 characters.
fn check_name(name: &str) -> Result<(), ActionError> {
    let ok_inner = |c: char| c.is_alphanumeric() || "_@.- ".contains(c);
    let valid = !name.is_empty()
        && name.chars().count() <= 256
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        && name.chars().all(ok_inner)
        && !name.ends_with(' ');
    if valid {
        Ok(())
    } else if name.contains('/') {
        Err(ActionError::Invalid(
            "Packages are not supported by the standalone front door.".into(),
        ))
    } else {
        Err(ActionError::Invalid(
            "The name of the entity contains illegal characters.".into(),
        ))
    }
}

fn check_key_values(items: &[Value], what: &str) -> Result<Vec<Value>, ActionError> {
    for item in items {
        if !item["key"].is_string() || item.get("value").is_none() {
            return Err(ActionError::Invalid(format!(
                "{what} must be objects with a string key and a value"
            )));
        }
    }
    Ok(items.to_vec())
}

/// The controller's `Exec.isBinaryCode`: a non-empty string in standard base64 (padded).
fn is_binary_code(code: &str) -> bool {
    let t = code.trim();
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    let bytes = t.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return false;
    }
    let pad = bytes.iter().rev().take_while(|&&c| c == b'=').count();
    pad <= 2 && bytes[..bytes.len() - pad].iter().all(|&c| b64(c))
}

/// `0.0.1` → `0.0.2`; anything unparsable starts over at `0.0.1`.
fn bump_patch(version: &str) -> String {
    let parts: Vec<u64> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [major, minor, patch] => format!("{major}.{minor}.{}", patch + 1),
        _ => "0.0.1".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_code_is_recognised_as_the_controller_does() {
        assert!(is_binary_code("UEsDBBQAAAAIAA=="));
        assert!(is_binary_code("abcd"));
        assert!(!is_binary_code("function main() {}"));
        assert!(!is_binary_code("abc"));
        assert!(!is_binary_code(""));
        assert!(!is_binary_code("ab=c"));
    }

    #[test]
    fn versions_bump_their_patch() {
        assert_eq!(bump_patch("0.0.1"), "0.0.2");
        assert_eq!(bump_patch("1.2.9"), "1.2.10");
        assert_eq!(bump_patch("x"), "0.0.1");
    }

    #[test]
    fn names_follow_openwhisk() {
        assert!(check_name("hello").is_ok());
        assert!(check_name("hello-world_2.v1@x").is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"a".repeat(257)).is_err());
    }
}

//! Actions as the controller stores them (contract §4.2): the document, its code (inline,
//! `mem:` or `couch:` attachment), fetched by id and revision and cached by both; the fetch and
//! limit errors mapped to the fallback responses of §4.2.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{Map, Value};

use crate::couchdb::{CouchDb, CouchDbError};
use crate::manifest::Manifest;
use crate::messages::KeyValue;

/// The controller's messages for failed fetches (Scala `Messages`).
pub const ACTION_REMOVED: &str = "Action could not be found or may have been deleted.";
pub const ACTION_MISMATCH: &str = "Action version is not compatible and cannot be invoked.";
pub const ACTION_FETCH_ERROR: &str = "Action could not be fetched.";

/// An action's limits (`{"timeout":ms,"memory":MB,"logs":MB,"concurrency":n}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub logs_mb: u64,
    pub concurrency: u64,
    /// As stored, for the `limits` annotation.
    pub json: Value,
}

/// How the action runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exec {
    /// A kind from the manifest, or a blackbox image.
    Runnable {
        /// The resolved kind (`nodejs:18`), or `blackbox`.
        kind: String,
        image: String,
        /// What `/init` gets as `code`: text, or base64 for binary code.
        code: Option<String>,
        main: Option<String>,
        binary: bool,
        /// The runtime writes sentinels (managed kinds and local blackboxes).
        sentinelled: bool,
        /// The image is built locally (never pulled).
        local: bool,
    },
    /// A sequence: the controller runs those; the invoker refuses it.
    Sequence,
}

/// An action ready to run.
#[derive(Clone, Debug)]
pub struct Action {
    pub doc_id: String,
    pub rev: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub publish: bool,
    pub exec: Exec,
    pub parameters: Vec<Parameter>,
    pub limits: Limits,
    pub annotations: Vec<KeyValue>,
    /// Everything that makes two actions structurally equal for warm reuse (contract §6.2:
    /// namespace, name, exec with code, parameters, limits, version, publish, annotations; not
    /// the revision).
    pub identity: String,
}

/// One parameter; `init` ones go to `/init`'s `env`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parameter {
    pub key: String,
    pub value: Value,
    pub init: bool,
}

impl Action {
    /// `provide-api-key` is truthy or absent.
    pub fn provides_api_key(&self) -> bool {
        match self.annotation("provide-api-key") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(Value::Null) => false,
            Some(_) => true,
        }
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&Value> {
        self.annotations
            .iter()
            .find(|a| a.key == key)
            .map(|a| &a.value)
    }

    /// The resolved kind, for the `kind` annotation.
    pub fn kind(&self) -> &str {
        match &self.exec {
            Exec::Runnable { kind, .. } => kind,
            Exec::Sequence => "sequence",
        }
    }
}

/// Why an action could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("action {0} does not exist")]
    NotFound(String),
    #[error("action {id} cannot be read: {why}")]
    Unreadable { id: String, why: String },
    #[error("action {id} could not be fetched")]
    Store {
        id: String,
        #[source]
        source: CouchDbError,
    },
    #[error("action {0} is a sequence; the controller runs sequences")]
    NotExecutable(String),
}

impl FetchError {
    /// The fallback response (status code, error message) of contract §4.2.
    pub fn response(&self) -> (u8, &'static str) {
        match self {
            Self::NotFound(_) => (1, ACTION_REMOVED),
            Self::Unreadable { .. } => (3, ACTION_MISMATCH),
            Self::Store { .. } | Self::NotExecutable(_) => (3, ACTION_FETCH_ERROR),
        }
    }
}

type Cache = Arc<Mutex<HashMap<(String, String), Arc<Action>>>>;

/// Reads actions from the whisks database, caching by id and revision.
#[derive(Debug, Clone)]
pub struct ActionStore {
    db: CouchDb,
    whisks: String,
    manifest: Arc<Manifest>,
    registry: String,
    cache: Cache,
}

/// Most cached action revisions; the cache is cleared when it grows past this.
const CACHE_MAX: usize = 4096;

impl ActionStore {
    pub fn new(db: CouchDb, whisks: &str, manifest: Arc<Manifest>, registry: &str) -> Self {
        Self {
            db,
            whisks: whisks.to_owned(),
            manifest,
            registry: registry.to_owned(),
            cache: Arc::default(),
        }
    }

    /// The action `path/name` at `rev`; a missing revision (or one that no longer exists) reads
    /// the latest, uncached, as the Scala invoker does.
    pub async fn get(
        &self,
        path: &str,
        name: &str,
        rev: Option<&str>,
    ) -> Result<Arc<Action>, FetchError> {
        let id = format!("{path}/{name}");
        if let Some(rev) = rev {
            let key = (id.clone(), rev.to_owned());
            if let Some(hit) = self.lock().get(&key) {
                return Ok(hit.clone());
            }
            match self.db.get_doc_rev(&self.whisks, &id, rev).await {
                Ok(doc) => {
                    let action = Arc::new(self.build(&id, doc).await?);
                    let mut cache = self.lock();
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(key, action.clone());
                    return Ok(action);
                }
                Err(CouchDbError::NotFound { .. }) => {} // revision mismatch: retry without
                Err(source) => return Err(FetchError::Store { id, source }),
            }
        }
        match self.db.get_doc(&self.whisks, &id).await {
            Ok(doc) => Ok(Arc::new(self.build(&id, doc).await?)),
            Err(CouchDbError::NotFound { .. }) => Err(FetchError::NotFound(id)),
            Err(source) => Err(FetchError::Store { id, source }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Action>>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn build(&self, id: &str, doc: Value) -> Result<Action, FetchError> {
        let unreadable = |why: &str| FetchError::Unreadable {
            id: id.to_owned(),
            why: why.to_owned(),
        };
        let obj = doc.as_object().ok_or_else(|| unreadable("not an object"))?;
        if obj
            .get("entityType")
            .and_then(Value::as_str)
            .unwrap_or("action")
            != "action"
        {
            return Err(unreadable("not an action document"));
        }
        let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        let namespace = s("namespace").ok_or_else(|| unreadable("no namespace"))?;
        let name = s("name").ok_or_else(|| unreadable("no name"))?;
        let exec_doc = obj
            .get("exec")
            .and_then(Value::as_object)
            .ok_or_else(|| unreadable("no exec"))?;
        let kind = exec_doc
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| unreadable("exec has no kind"))?;
        let exec = if kind == "sequence" {
            Exec::Sequence
        } else {
            self.exec(id, obj, exec_doc, kind).await?
        };
        let limits_json = obj
            .get("limits")
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        let limit = |k: &str, default: u64| {
            limits_json
                .get(k)
                .and_then(Value::as_u64)
                .unwrap_or(default)
        };
        let limits = Limits {
            timeout_ms: limit("timeout", 60_000),
            memory_mb: limit("memory", 256),
            logs_mb: limit("logs", 10),
            concurrency: limit("concurrency", 1).max(1),
            json: limits_json.clone(),
        };
        let parameters = obj
            .get("parameters")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        Some(Parameter {
                            key: p.get("key")?.as_str()?.to_owned(),
                            value: p.get("value").cloned().unwrap_or(Value::Null),
                            init: p.get("init").and_then(Value::as_bool).unwrap_or(false),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let annotations: Vec<KeyValue> = obj
            .get("annotations")
            .cloned()
            .and_then(|a| serde_json::from_value(a).ok())
            .unwrap_or_default();
        let version = s("version").unwrap_or_else(|| "0.0.1".into());
        let publish = obj.get("publish").and_then(Value::as_bool).unwrap_or(false);
        let identity = serde_json::to_string(&serde_json::json!([
            namespace,
            name,
            format!("{exec:?}"),
            obj.get("parameters"),
            limits_json,
            version,
            publish,
            obj.get("annotations"),
        ]))
        .unwrap_or_default();
        Ok(Action {
            doc_id: id.to_owned(),
            rev: s("_rev").unwrap_or_default(),
            namespace,
            name,
            version,
            publish,
            exec,
            parameters,
            limits,
            annotations,
            identity,
        })
    }

    async fn exec(
        &self,
        id: &str,
        doc: &Map<String, Value>,
        exec: &Map<String, Value>,
        kind: &str,
    ) -> Result<Exec, FetchError> {
        let unreadable = |why: String| FetchError::Unreadable {
            id: id.to_owned(),
            why,
        };
        let binary = exec.get("binary").and_then(Value::as_bool).unwrap_or(false);
        let main = exec.get("main").and_then(Value::as_str).map(str::to_owned);
        let code_ref = exec.get("code").or_else(|| exec.get("jar"));
        let code = match code_ref {
            None | Some(Value::Null) => None,
            Some(Value::String(inline)) => Some(inline.clone()),
            Some(Value::Object(att)) => {
                let name = att
                    .get("attachmentName")
                    .and_then(Value::as_str)
                    .ok_or_else(|| unreadable("code attachment has no name".into()))?;
                let bytes = self.attachment(id, doc, name).await?;
                Some(if binary {
                    base64::engine::general_purpose::STANDARD.encode(&bytes)
                } else {
                    String::from_utf8(bytes).map_err(|_| unreadable("code is not UTF-8".into()))?
                })
            }
            Some(_) => return Err(unreadable("code is neither text nor an attachment".into())),
        };
        if kind == "blackbox" {
            let image = exec
                .get("image")
                .and_then(Value::as_str)
                .ok_or_else(|| unreadable("blackbox without image".into()))?;
            let local = self.manifest.is_native_blackbox(image);
            return Ok(Exec::Runnable {
                kind: "blackbox".into(),
                image: image.to_owned(),
                code,
                main,
                binary,
                sentinelled: local,
                local,
            });
        }
        let k = self
            .manifest
            .resolve(kind)
            .ok_or_else(|| unreadable(format!("kind {kind} is not in the runtimes manifest")))?;
        Ok(Exec::Runnable {
            kind: k.kind.clone(),
            image: k.image.reference(&self.registry),
            code,
            main,
            binary,
            sentinelled: k.sentinelled_logs,
            local: true,
        })
    }

    /// The bytes of a code attachment: `mem:` inline (URL-safe base64), else from CouchDB.
    async fn attachment(
        &self,
        id: &str,
        doc: &Map<String, Value>,
        name: &str,
    ) -> Result<Vec<u8>, FetchError> {
        if let Some(inline) = name.strip_prefix("mem:") {
            let trimmed = inline.trim_end_matches('=');
            return base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(trimmed)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
                .map_err(|_| FetchError::Unreadable {
                    id: id.to_owned(),
                    why: "mem: code is not base64".into(),
                });
        }
        let stored = name.strip_prefix("couch:").unwrap_or(name);
        if stored.contains(':') {
            return Err(FetchError::Unreadable {
                id: id.to_owned(),
                why: format!("attachment {name} lives in an external store"),
            });
        }
        let _ = doc; // `_attachments` lists it; the GET below is the authority.
        match self.db.get_attachment(&self.whisks, id, stored).await {
            Ok(att) => Ok(att.data),
            Err(CouchDbError::NotFound { .. }) => Err(FetchError::Unreadable {
                id: id.to_owned(),
                why: format!("attachment {stored} is missing"),
            }),
            Err(source) => Err(FetchError::Store {
                id: id.to_owned(),
                source,
            }),
        }
    }
}

/// Checks the action's limits against the namespace's (`user.limits`); `Err` is the
/// application error to answer with.
pub fn check_namespace_limits(
    action: &Action,
    user_limits: &Map<String, Value>,
) -> Result<(), String> {
    let l = &action.limits;
    let checks = [
        (
            "memory",
            "MB",
            l.memory_mb,
            "minActionMemory",
            "maxActionMemory",
        ),
        (
            "timeout",
            "ms",
            l.timeout_ms,
            "minActionTimeout",
            "maxActionTimeout",
        ),
        ("logs", "MB", l.logs_mb, "minActionLogs", "maxActionLogs"),
        (
            "concurrency",
            "",
            l.concurrency,
            "minActionConcurrency",
            "maxActionConcurrency",
        ),
    ];
    for (what, unit, value, min_key, max_key) in checks {
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        if let Some(max) = user_limits.get(max_key).and_then(Value::as_u64)
            && value > max
        {
            return Err(format!(
                "The {what} limit of {value}{unit} exceeds the namespace's maximum of {max}{unit}."
            ));
        }
        if let Some(min) = user_limits.get(min_key).and_then(Value::as_u64)
            && value < min
        {
            return Err(format!(
                "The {what} limit of {value}{unit} is below the namespace's minimum of {min}{unit}."
            ));
        }
    }
    Ok(())
}

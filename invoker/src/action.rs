//! Actions as the controller stores them (contract §4.2): the document (read as
//! [`openwhisk::action::ActionDocument`]), its code (inline, `mem:` or `couch:` attachment),
//! fetched by id and revision and cached by both; the fetch and limit errors mapped to the
//! fallback responses of §4.2.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use parking_lot::Mutex;
use serde_json::{Map, Value};

use openwhisk::action::{self, ActionDocError, ActionDocument, AttachmentRef, Code, CodeLocation};
use openwhisk::couchdb::{CouchDb, CouchDbError};
use openwhisk::manifest::Manifest;
use openwhisk::messages::KeyValue;

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
    /// The document's limits with OpenWhisk's defaults filled in, for the `limits` annotation.
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
pub use openwhisk::action::Parameter;

impl Action {
    /// `provide-api-key` is truthy or absent.
    pub fn provides_api_key(&self) -> bool {
        action::provides_api_key(&self.annotations)
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&Value> {
        action::annotation(&self.annotations, key)
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
    #[error("action {id} is not a readable action document")]
    Document {
        id: String,
        #[source]
        source: ActionDocError,
    },
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
            Self::Document { .. } | Self::Unreadable { .. } => (3, ACTION_MISMATCH),
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
            if let Some(hit) = self.cache.lock().get(&key) {
                return Ok(hit.clone());
            }
            match self.db.get_doc_rev(&self.whisks, &id, rev).await {
                Ok(doc) => {
                    let action = Arc::new(self.build(&id, doc).await?);
                    let mut cache = self.cache.lock();
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

    async fn build(&self, id: &str, doc: Value) -> Result<Action, FetchError> {
        let doc = ActionDocument::from_value(doc).map_err(|source| FetchError::Document {
            id: id.to_owned(),
            source,
        })?;
        let exec = self.exec(id, &doc).await?;
        let limits = Limits {
            timeout_ms: doc.limits.timeout,
            memory_mb: doc.limits.memory,
            logs_mb: doc.limits.logs,
            concurrency: doc.limits.concurrency.max(1),
            json: serde_json::to_value(&doc.limits).unwrap_or(Value::Null),
        };
        let identity = serde_json::to_string(&serde_json::json!([
            doc.namespace,
            doc.name,
            format!("{exec:?}"),
            doc.parameters,
            limits.json,
            doc.version,
            doc.publish,
            doc.annotations,
        ]))
        .unwrap_or_default();
        Ok(Action {
            doc_id: id.to_owned(),
            rev: doc.rev.unwrap_or_default(),
            namespace: doc.namespace,
            name: doc.name,
            version: doc.version,
            publish: doc.publish,
            exec,
            parameters: doc.parameters,
            limits,
            annotations: doc.annotations,
            identity,
        })
    }

    async fn exec(&self, id: &str, doc: &ActionDocument) -> Result<Exec, FetchError> {
        let unreadable = |why: String| FetchError::Unreadable {
            id: id.to_owned(),
            why,
        };
        let binary = doc.exec.binary();
        let main = doc.exec.main().map(str::to_owned);
        let code = match doc.exec.code() {
            None => None,
            Some(Code::Inline(inline)) => Some(inline.clone()),
            Some(Code::Attachment(att)) => {
                let bytes = self.attachment(id, att).await?;
                Some(if binary {
                    base64::engine::general_purpose::STANDARD.encode(&bytes)
                } else {
                    String::from_utf8(bytes).map_err(|_| unreadable("code is not UTF-8".into()))?
                })
            }
        };
        match &doc.exec {
            action::Exec::Sequence(_) => Ok(Exec::Sequence),
            action::Exec::Blackbox(b) => {
                let local = self.manifest.is_native_blackbox(&b.image);
                Ok(Exec::Runnable {
                    kind: action::BLACKBOX.into(),
                    image: b.image.clone(),
                    code,
                    main,
                    binary,
                    sentinelled: local,
                    local,
                })
            }
            action::Exec::Managed(m) => {
                let k = self.manifest.resolve(&m.kind).ok_or_else(|| {
                    unreadable(format!("kind {} is not in the runtimes manifest", m.kind))
                })?;
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
        }
    }

    /// The bytes of a code attachment: `mem:` inline, else from CouchDB.
    async fn attachment(&self, id: &str, att: &AttachmentRef) -> Result<Vec<u8>, FetchError> {
        let stored = match att.location() {
            Ok(CodeLocation::Inline(bytes)) => return Ok(bytes),
            Ok(CodeLocation::Couch(stored)) => stored,
            Ok(CodeLocation::External(name)) => {
                return Err(FetchError::Unreadable {
                    id: id.to_owned(),
                    why: format!("attachment {name} lives in an external store"),
                });
            }
            Err(source) => {
                return Err(FetchError::Document {
                    id: id.to_owned(),
                    source,
                });
            }
        };
        // The document's `_attachments` lists it; the GET below is the authority.
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A store whose database is never reached: the documents below carry their code inline.
    fn store() -> ActionStore {
        let db = CouchDb::new(&openwhisk::couchdb::CouchDbConfig {
            url: "http://127.0.0.1:9".into(),
            username: "u".into(),
            password: "p".into(),
            request_timeout: std::time::Duration::from_secs(1),
        })
        .unwrap();
        let manifest = Manifest::parse(include_str!("../../runtimes/runtimes.json")).unwrap();
        ActionStore::new(db, "whisks", Arc::new(manifest), "")
    }

    fn contract_doc() -> Value {
        json!({"_id":"guest/hello","_rev":"1-967a00dff5e02add41819138abb3284d",
            "entityType":"action","namespace":"guest","name":"hello","updated":1714559000000_i64,
            "exec":{"kind":"nodejs:default","binary":false,
                    "code":{"attachmentName":"mem:ZnVuY3Rpb24gbWFpbihwKXtyZXR1cm4gcH0=",
                            "attachmentType":"text/plain; charset=UTF-8","length":26}},
            "parameters":[{"key":"greeting","value":"Hi"},{"key":"token","value":"x","init":true}],
            "limits":{"timeout":60000,"memory":256,"logs":10,"concurrency":1},
            "version":"0.0.1","publish":false,
            "annotations":[{"key":"provide-api-key","value":false},{"key":"exec","value":"nodejs:20"}]})
    }

    #[tokio::test]
    async fn a_managed_action_with_mem_code() {
        let a = store().build("guest/hello", contract_doc()).await.unwrap();
        assert_eq!(a.rev, "1-967a00dff5e02add41819138abb3284d");
        assert_eq!(a.kind(), "nodejs:18", "resolved through the manifest");
        let Exec::Runnable {
            code,
            image,
            binary,
            sentinelled,
            local,
            ..
        } = &a.exec
        else {
            panic!("{:?}", a.exec)
        };
        assert_eq!(code.as_deref(), Some("function main(p){return p}"));
        assert_eq!(image, "openwhisk/action-nodejs-v18:nightly");
        assert!(!binary && *sentinelled && *local);
        assert_eq!(a.parameters.iter().filter(|p| p.init).count(), 1);
        assert!(!a.provides_api_key());
        assert_eq!(
            a.limits.json,
            json!({"timeout":60000,"memory":256,"logs":10,"concurrency":1})
        );
    }

    #[tokio::test]
    async fn binary_code_goes_to_init_as_base64_and_limits_default() {
        let mut doc = contract_doc();
        doc["exec"] = json!({"kind":"blackbox","image":"me/img:1","binary":true,
            "code":{"attachmentName":"mem:UEsDBA","attachmentType":"application/octet-stream"}});
        doc["limits"] = json!({"memory": 512, "concurrency": 0});
        let a = store().build("guest/hello", doc).await.unwrap();
        let Exec::Runnable {
            kind, code, local, ..
        } = &a.exec
        else {
            panic!("{:?}", a.exec)
        };
        assert_eq!(
            (kind.as_str(), code.as_deref()),
            ("blackbox", Some("UEsDBA=="))
        );
        assert!(!local, "not a native blackbox");
        assert_eq!(
            (a.limits.memory_mb, a.limits.timeout_ms, a.limits.logs_mb),
            (512, 60_000, 10)
        );
        assert_eq!(a.limits.concurrency, 1, "at least one");
    }

    #[tokio::test]
    async fn warm_identity_ignores_the_revision_only() {
        let s = store();
        let a = s.build("guest/hello", contract_doc()).await.unwrap();
        let mut other_rev = contract_doc();
        other_rev["_rev"] = json!("2-x");
        other_rev["updated"] = json!(1);
        let b = s.build("guest/hello", other_rev).await.unwrap();
        assert_eq!(a.identity, b.identity);
        let mut other_param = contract_doc();
        other_param["parameters"][0]["value"] = json!("Hello");
        let c = s.build("guest/hello", other_param).await.unwrap();
        assert_ne!(a.identity, c.identity);
    }

    #[tokio::test]
    async fn unreadable_documents_answer_as_the_scala_invoker() {
        let s = store();
        let seq = json!({"namespace":"guest","name":"s","exec":{"kind":"sequence","components":["/guest/a"]}});
        assert!(matches!(
            s.build("guest/s", seq).await.unwrap().exec,
            Exec::Sequence
        ));
        let mut cases = Vec::new();
        let mut trigger = contract_doc();
        trigger["entityType"] = json!("trigger");
        cases.push(trigger);
        let mut no_image = contract_doc();
        no_image["exec"] = json!({"kind": "blackbox"});
        cases.push(no_image);
        let mut unknown_kind = contract_doc();
        unknown_kind["exec"]["kind"] = json!("cobol:85");
        cases.push(unknown_kind);
        let mut bad_mem = contract_doc();
        bad_mem["exec"]["code"]["attachmentName"] = json!("mem:@@@");
        cases.push(bad_mem);
        let mut external = contract_doc();
        external["exec"]["code"]["attachmentName"] = json!("s3:bucket/key");
        cases.push(external);
        cases.push(json!("not an object"));
        for doc in cases {
            let e = s.build("guest/hello", doc.clone()).await.unwrap_err();
            assert_eq!(e.response(), (3, ACTION_MISMATCH), "{doc}: {e}");
        }
        assert_eq!(
            FetchError::NotFound("guest/x".into()).response(),
            (1, ACTION_REMOVED)
        );
    }
}

//! Actions in the whisks database (`WhiskEntity`), stored the way the controller stores them
//! (contract §4.2) so that the invoker cannot tell who wrote them: `_id` `<namespace>/<name>`,
//! the kind resolved through the runtimes manifest, code as an attachment reference (`mem:` inline
//! up to 16 KiB, a CouchDB attachment `couch:<uuid>` above), limits with the deployment's
//! defaults and bounds, `provide-api-key: false` and `exec` annotations added, and the version
//! bumped on every update.
//!
//! Actions may live in a package (`_id` `<namespace>/<package>/<name>`, `namespace`
//! `<namespace>/<package>`). Sequences are stored as the controller stores them: `exec`
//! `{"kind": "sequence", "components": ["/ns/[pkg/]name", …]}` with the components in the
//! `_actions` parameter, at most [`MAX_SEQUENCE_LENGTH`] atomic actions once inner sequences are
//! counted, and no cycle. A blackbox image without a tag that names one of the manifest's
//! `blackboxes` gets that entry's tag: those images are built locally and never pulled, so the
//! untagged name `wsk --native` sends (`openwhisk/dockerskeleton`) means the local build.

use base64::Engine;
use openwhisk::action::{
    self, ActionDocError, ActionDocument, ActionLimits, AttachmentRef, BlackboxExec, Code,
    CodeExec, CodeLocation, Exec, Parameter, SequenceExec,
};
use openwhisk::couchdb::{CouchDb, CouchDbError};
use openwhisk::errors;
use openwhisk::manifest::Manifest;
use openwhisk::messages::KeyValue;
use openwhisk::settings::Bounds;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ids;

/// Code up to this size is inlined in the attachment name (`mem:`), as the controller's
/// `max-inline-size`.
pub const MAX_INLINE_BYTES: usize = 16 * 1024;

/// Largest action code accepted (the controller's `whisk.activation.payload.max`-like limit for
/// entities is 48 MB; we keep one document's attachment reasonable).
pub const MAX_CODE_BYTES: usize = 48 * 1024 * 1024;

/// Most atomic actions a sequence may run, inner sequences counted (the controller's
/// `whisk.actionSequence.limit`, 50).
pub const MAX_SEQUENCE_LENGTH: usize = 50;

/// Most component documents one sequence create or update reads to count its atomic actions;
/// more and it is refused as too long. Every legitimate sequence fits: at most
/// [`MAX_SEQUENCE_LENGTH`] atomic actions, and inner sequences far fewer than this.
const MAX_SEQUENCE_CHECK_READS: usize = 4 * MAX_SEQUENCE_LENGTH;

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
    /// 403: a sequence names a component the caller may not read.
    #[error("The supplied authentication is not authorized to access this resource.")]
    Forbidden,
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
    pub fn from_settings(s: &openwhisk::settings::Settings) -> Self {
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
    /// `ns` or `ns/pkg` of the package that holds the action (a binding followed).
    pub namespace: String,
    pub name: String,
    pub rev: String,
    pub version: String,
    /// The package's (and binding's) parameters with the action's over them.
    pub parameters: Vec<Parameter>,
    pub timeout_ms: u64,
    pub limits: ActionLimits,
    pub annotations: Vec<KeyValue>,
    /// `ns/binding` when invoked through a binding (`FullyQualifiedEntityName.binding`).
    pub binding: Option<String>,
    /// The components of a sequence, as stored (`/ns/[pkg/]name`); `None` for an action
    /// that an invoker runs.
    pub components: Option<Vec<String>>,
}

impl StoredAction {
    /// The action as found in `package`: its parameters go over the package's.
    pub fn inherit(mut self, package: &crate::packages::ResolvedPackage) -> Self {
        let mut merged = package.parameters.clone();
        for p in self.parameters {
            match merged.iter_mut().find(|m| m.key == p.key) {
                Some(m) => *m = p,
                None => merged.push(p),
            }
        }
        self.parameters = merged;
        self.binding.clone_from(&package.binding);
        self
    }

    /// `ns/[pkg/]name`, the `path` annotation of its activations.
    pub fn path(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The parameters a request may not set: with a truthy `final` annotation, every
    /// parameter that has a value (`WhiskActionMetaData.immutableParameters`).
    pub fn final_parameters(&self) -> Vec<&str> {
        if !crate::entities::truthy(action::annotation(&self.annotations, "final")) {
            return Vec::new();
        }
        self.parameters
            .iter()
            .filter(|p| !p.value.is_null())
            .map(|p| p.key.as_str())
            .collect()
    }
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
        let id = ActionDocument::doc_id(namespace, name);
        let existing = match self.db.get_doc(&self.name, &id).await {
            Ok(d) => Some(d),
            Err(CouchDbError::NotFound { .. }) => None,
            Err(e) => return Err(ActionError::Store(e)),
        };
        if existing.is_some() && !overwrite {
            return Err(ActionError::Conflict);
        }
        let old = match existing {
            // Another kind of entity under this name (a package, a trigger): as the
            // controller, a conflict.
            Some(d) if !is_action(&d) => return Err(ActionError::Conflict),
            Some(d) => Some(ActionDocument::from_value(d).map_err(|e| match e {
                ActionDocError::NotAnAction(_) => ActionError::Conflict,
                other => unreadable(&self.name, &id, other),
            })?),
            None => None,
        };
        let old = old.as_ref();

        // exec: given, or kept from the old document on an update.
        let (exec, code) = match body.get("exec") {
            Some(e) => {
                let (exec, code) = self.exec_of(e, namespace)?;
                if let Exec::Sequence(s) = &exec {
                    self.check_entitled(&s.components, namespace).await?;
                    self.check_sequence(&id, &s.components).await?;
                }
                (exec, code)
            }
            None => match old {
                Some(o) => (o.exec.clone(), None),
                None => {
                    return Err(ActionError::Invalid(
                        "The request content was malformed: exec undefined.".into(),
                    ));
                }
            },
        };
        let limits = self.limits_of(body.get("limits"), old.map(|o| &o.limits))?;
        let parameters = match (&exec, body.get("parameters")) {
            // As the controller: a sequence's only parameter names its components.
            (Exec::Sequence(s), _) => vec![Parameter::new(
                "_actions",
                Value::Array(s.components.iter().cloned().map(Value::String).collect()),
            )],
            (_, Some(Value::Array(p))) => key_values(p, "parameters")?,
            (_, Some(Value::Null) | None) => old.map(|o| o.parameters.clone()).unwrap_or_default(),
            (_, Some(_)) => {
                return Err(ActionError::Invalid("parameters must be an array".into()));
            }
        };
        let mut annotations: Vec<KeyValue> = match body.get("annotations") {
            Some(Value::Array(a)) => key_values(a, "annotations")?,
            Some(Value::Null) | None => old.map(|o| o.annotations.clone()).unwrap_or_default(),
            Some(_) => return Err(ActionError::Invalid("annotations must be an array".into())),
        };
        annotations.retain(|a| a.key != "exec");
        if !annotations.iter().any(|a| a.key == "provide-api-key") {
            annotations.push(KeyValue {
                key: "provide-api-key".into(),
                value: Value::Bool(false),
            });
        }
        annotations.push(KeyValue {
            key: "exec".into(),
            value: Value::String(exec.kind().to_owned()),
        });
        let version = match old {
            Some(o) => bump_patch(&o.version),
            None => body
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or(action::DEFAULT_VERSION)
                .to_owned(),
        };
        let publish = body
            .get("publish")
            .and_then(Value::as_bool)
            .or_else(|| old.map(|o| o.publish))
            .unwrap_or(false);

        let replaces_exec = body.contains_key("exec");
        let doc = ActionDocument {
            rev: old.and_then(|o| o.rev.clone()),
            updated: Some(openwhisk::time::now_ms()),
            parameters,
            limits,
            version,
            publish,
            annotations,
            // The code stays where it was when exec is not replaced: keep the attachment
            // (CouchDB drops attachments a new revision does not list).
            attachments: old
                .filter(|_| !replaces_exec)
                .and_then(|o| o.attachments.clone()),
            ..ActionDocument::new(namespace, name, exec)
        };
        // Code above the inline size goes in an attachment: the document first (with the
        // attachment's name), then the bytes on the new revision.
        let info = self.db.put_doc(&self.name, &id, &doc.to_value()).await?;
        if let Some(NewAttachment {
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
        self.shown(&doc, true).await
    }

    /// The action document `namespace/name`; `NotFound` for anything that is not an action.
    async fn doc(&self, namespace: &str, name: &str) -> Result<ActionDocument, ActionError> {
        check_name(name)?;
        let id = ActionDocument::doc_id(namespace, name);
        let doc = self.db.get_doc(&self.name, &id).await?;
        if !is_action(&doc) {
            return Err(ActionError::NotFound);
        }
        ActionDocument::from_value(doc).map_err(|e| match e {
            ActionDocError::NotAnAction(_) => ActionError::NotFound,
            e => unreadable(&self.name, &id, e),
        })
    }

    /// A document as the API shows it, with or without its code.
    async fn shown(&self, doc: &ActionDocument, code: bool) -> Result<Value, ActionError> {
        let mut out = api_view(doc);
        if code {
            if let Some(text) = self.code_text(&doc.id, &doc.exec).await? {
                out["exec"]["code"] = Value::String(text);
            }
        } else if let Some(exec) = out["exec"].as_object_mut() {
            exec.remove("code");
        }
        Ok(out)
    }

    /// The stored document, with its revision; `namespace` is `ns` or `ns/pkg` of the
    /// package that holds it (the caller resolves bindings).
    pub async fn fetch(&self, namespace: &str, name: &str) -> Result<StoredAction, ActionError> {
        let doc = self.doc(namespace, name).await?;
        let components = match &doc.exec {
            Exec::Sequence(s) => Some(s.components.clone()),
            _ => None,
        };
        Ok(StoredAction {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            rev: doc.rev.unwrap_or_default(),
            version: doc.version,
            // A sequence's `_actions` parameter is bookkeeping, not an argument.
            parameters: if components.is_some() {
                Vec::new()
            } else {
                doc.parameters
            },
            timeout_ms: doc.limits.timeout,
            limits: doc.limits,
            annotations: doc.annotations,
            binding: None,
            components,
        })
    }

    /// The document of a sequence component `path/name`, a binding in `path` followed.
    async fn component_doc(&self, path: &str, name: &str) -> Result<ActionDocument, ActionError> {
        match self.doc(path, name).await {
            Err(ActionError::NotFound) if path.contains('/') => {
                let pkg = self.db.get_doc(&self.name, path).await?;
                let (Some(ns), Some(target)) = (
                    pkg["binding"]["namespace"].as_str(),
                    pkg["binding"]["name"].as_str(),
                ) else {
                    return Err(ActionError::NotFound);
                };
                self.doc(&format!("{ns}/{target}"), name).await
            }
            other => other,
        }
    }

    /// The controller's entitlement check on a sequence's components (READ on each, as it
    /// checks the entities a request refers to): another namespace's action only in a
    /// published package.
    async fn check_entitled(
        &self,
        components: &[String],
        namespace: &str,
    ) -> Result<(), ActionError> {
        let caller = namespace.split('/').next().unwrap_or(namespace);
        for c in components {
            let Ok((path, _)) = crate::entities::parse_fqn(c, caller) else {
                continue;
            };
            if !crate::entities::readable(&self.db, &self.name, &path, caller).await? {
                return Err(ActionError::Forbidden);
            }
        }
        Ok(())
    }

    /// The controller's `checkSequenceActionLimits`: at least one component, every component
    /// exists, no cycle back to `id`, at most [`MAX_SEQUENCE_LENGTH`] atomic actions with inner
    /// sequences inlined.
    async fn check_sequence(&self, id: &str, components: &[String]) -> Result<(), ActionError> {
        if components.is_empty() {
            return Err(ActionError::Invalid(
                "No component specified for the sequence.".into(),
            ));
        }
        let mut atomic = 0usize;
        // Components read so far: a cycle among other sequences (one that does not lead back
        // to `id`, closed by a re-pointed binding or by racing updates) would keep the stack
        // from ever emptying without adding an atomic action.
        let mut read = 0usize;
        // Depth-first over the inlined sequence, without recursion.
        let mut stack: Vec<String> = components.to_vec();
        while let Some(c) = stack.pop() {
            read += 1;
            if atomic > MAX_SEQUENCE_LENGTH
                || stack.len() > MAX_SEQUENCE_LENGTH * 4
                || read > MAX_SEQUENCE_CHECK_READS
            {
                stack.push(c);
                break;
            }
            let (path, name) = crate::entities::parse_fqn(&c, "_")
                .map_err(|_| ActionError::Invalid("Sequence component does not exist.".into()))?;
            if format!("{path}/{name}") == id {
                return Err(ActionError::Invalid(
                    "Sequence may not refer to itself.".into(),
                ));
            }
            let doc = match self.component_doc(&path, &name).await {
                Err(ActionError::NotFound) => {
                    return Err(ActionError::Invalid(
                        "Sequence component does not exist.".into(),
                    ));
                }
                other => other?,
            };
            if doc.id == id {
                return Err(ActionError::Invalid(
                    "Sequence may not refer to itself.".into(),
                ));
            }
            match doc.exec {
                Exec::Sequence(inner) => stack.extend(inner.components),
                _ => atomic += 1,
            }
        }
        if atomic > MAX_SEQUENCE_LENGTH || !stack.is_empty() {
            return Err(ActionError::Invalid(
                "Too many actions in the sequence.".into(),
            ));
        }
        Ok(())
    }

    /// `GET /namespaces/<ns>/actions/<name>[?code=false]`.
    pub async fn get(&self, namespace: &str, name: &str, code: bool) -> Result<Value, ActionError> {
        let doc = self.doc(namespace, name).await?;
        self.shown(&doc, code).await
    }

    /// `GET /namespaces/<ns>/actions?skip=&limit=`: summaries, most recently updated first,
    /// the namespace's packaged actions included; `namespace` `ns/pkg` lists one package.
    pub async fn list(
        &self,
        namespace: &str,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<Value>, ActionError> {
        let in_package = namespace.contains('/');
        let mut docs: Vec<ActionDocument> = self
            .db
            .docs_with_prefix(&self.name, &format!("{namespace}/"))
            .await?
            .into_iter()
            // Packages, triggers and rules share the database (an absent type is an action).
            .filter(is_action)
            .filter(|d| !in_package || d["namespace"] == namespace)
            .filter_map(|d| {
                let id = d["_id"].as_str().unwrap_or_default().to_owned();
                match ActionDocument::from_value(d) {
                    Ok(doc) => Some(doc),
                    Err(ActionDocError::NotAnAction(_)) => None,
                    Err(e) => {
                        tracing::warn!(db = %self.name, id, error = %errors::chain(&e), "an action document is unreadable; not listed");
                        None
                    }
                }
            })
            .collect();
        docs.sort_by_key(|d| std::cmp::Reverse(d.updated.unwrap_or(0)));
        Ok(docs
            .iter()
            .skip(skip)
            .take(limit)
            .map(|d| {
                let summary = Summary {
                    namespace: &d.namespace,
                    name: &d.name,
                    version: &d.version,
                    publish: d.publish,
                    annotations: &d.annotations,
                    limits: &d.limits,
                    exec: SummaryExec {
                        binary: d.exec.binary(),
                    },
                    updated: d.updated,
                };
                // Strings, numbers and `Value`s under string keys: serde_json cannot fail.
                serde_json::to_value(summary).expect("a summary is always valid JSON")
            })
            .collect())
    }

    /// `DELETE /namespaces/<ns>/actions/<name>`: returns what was deleted.
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<Value, ActionError> {
        let doc = self.doc(namespace, name).await?;
        let rev = doc.rev.as_deref().unwrap_or_default();
        self.db.delete_doc(&self.name, &doc.id, rev).await?;
        self.shown(&doc, false).await
    }

    /// Validates `exec` and turns its code into an attachment reference.
    fn exec_of(
        &self,
        e: &Value,
        namespace: &str,
    ) -> Result<(Exec, Option<NewAttachment>), ActionError> {
        let kind = e["kind"]
            .as_str()
            .ok_or_else(|| ActionError::Invalid("exec.kind is required".into()))?;
        // The image of a blackbox, or the resolved kind.
        let runs = match kind {
            action::BLACKBOX => {
                let image = e["image"]
                    .as_str()
                    .filter(|i| !i.is_empty())
                    .ok_or_else(|| {
                        ActionError::Invalid("a blackbox action needs exec.image".into())
                    })?;
                Runs::Image(self.resolve_image(image))
            }
            action::SEQUENCE => {
                let root = namespace.split('/').next().unwrap_or(namespace);
                let components = e["components"]
                    .as_array()
                    .ok_or_else(|| {
                        ActionError::Invalid(
                            "The request content was malformed: exec.components undefined.".into(),
                        )
                    })?
                    .iter()
                    .map(|c| {
                        let s = c.as_str().ok_or_else(|| {
                            ActionError::Invalid("sequence components must be strings".into())
                        })?;
                        let (path, name) =
                            crate::entities::parse_fqn(s, root).map_err(ActionError::Invalid)?;
                        Ok(format!("/{path}/{name}"))
                    })
                    .collect::<Result<Vec<_>, ActionError>>()?;
                if components.len() > MAX_SEQUENCE_LENGTH {
                    return Err(ActionError::Invalid(
                        "Too many actions in the sequence.".into(),
                    ));
                }
                return Ok((Exec::Sequence(SequenceExec { components }), None));
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
                Runs::Kind(k.kind.clone())
            }
        };
        let main = e["main"]
            .as_str()
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        let code = match &e["code"] {
            Value::String(c) => Some(c.as_str()),
            Value::Null => None,
            _ => return Err(ActionError::Invalid("exec.code must be a string".into())),
        };
        let mut stored_code = None;
        let (code, binary) = match code {
            None if matches!(runs, Runs::Image(_)) => (None, false),
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
                    action::BINARY_CODE_TYPE
                } else {
                    action::TEXT_CODE_TYPE
                };
                let reference = if bytes.len() < MAX_INLINE_BYTES {
                    AttachmentRef::inline(&bytes, content_type)
                } else {
                    let att = ids::uuid();
                    let reference = AttachmentRef::couch(&att, content_type, bytes.len() as u64);
                    stored_code = Some(NewAttachment {
                        name: att,
                        content_type: content_type.to_owned(),
                        bytes,
                    });
                    reference
                };
                (Some(Code::Attachment(reference)), binary)
            }
        };
        let exec = match runs {
            Runs::Image(image) => Exec::Blackbox(BlackboxExec {
                image,
                code,
                main,
                binary,
            }),
            Runs::Kind(kind) => Exec::Managed(CodeExec {
                kind,
                code,
                main,
                binary,
            }),
        };
        Ok((exec, stored_code))
    }

    /// A blackbox image without a tag that names one of the manifest's `blackboxes` gets its
    /// tag (the local build); any other image is kept as given.
    fn resolve_image(&self, image: &str) -> String {
        let last = image.rsplit('/').next().unwrap_or(image);
        if last.contains(':') || image.contains('@') {
            return image.to_owned();
        }
        self.manifest
            .images("")
            .into_iter()
            .find(|i| {
                i.rsplit_once(':').is_some_and(|(repo, _)| repo == image)
                    && self.manifest.is_native_blackbox(i)
            })
            .unwrap_or_else(|| image.to_owned())
    }

    /// The limits: given values checked against the bounds, the rest from the old document or
    /// the defaults.
    fn limits_of(
        &self,
        given: Option<&Value>,
        old: Option<&ActionLimits>,
    ) -> Result<ActionLimits, ActionError> {
        let b = &self.bounds;
        let pick = |key: &str, bounds: &Bounds, unit: &str, old: Option<u64>| {
            let Some(v) = given.and_then(|g| g.get(key)) else {
                return Ok(old.unwrap_or(bounds.std));
            };
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
            Ok(n)
        };
        Ok(ActionLimits {
            timeout: pick("timeout", &b.timeout_ms, "ms", old.map(|o| o.timeout))?,
            memory: pick("memory", &b.memory_mb, "MB", old.map(|o| o.memory))?,
            logs: pick("logs", &b.logs_mb, "MB", old.map(|o| o.logs))?,
            concurrency: pick(
                "concurrency",
                &b.concurrency,
                "",
                old.map(|o| o.concurrency),
            )?,
            instances: old.and_then(|o| o.instances),
        })
    }

    /// The code as the API shows it: text, or base64 for binary code.
    async fn code_text(&self, id: &str, exec: &Exec) -> Result<Option<String>, ActionError> {
        let att = match exec.code() {
            None => return Ok(None),
            Some(Code::Inline(text)) => return Ok(Some(text.clone())),
            Some(Code::Attachment(att)) => att,
        };
        let bytes = match att
            .location()
            .map_err(|_| ActionError::Invalid("stored code is not valid base64".into()))?
        {
            CodeLocation::Inline(bytes) => bytes,
            CodeLocation::Couch(name) | CodeLocation::External(name) => {
                self.db.get_attachment(&self.name, id, name).await?.data
            }
        };
        Ok(Some(if exec.binary() {
            base64::engine::general_purpose::STANDARD.encode(bytes)
        } else {
            String::from_utf8_lossy(&bytes).into_owned()
        }))
    }
}

/// Whether a stored document is an action (an absent `entityType` counts as one, as in
/// `ActionDocument`): packages, triggers and rules share the database.
fn is_action(doc: &Value) -> bool {
    doc.get("entityType")
        .is_none_or(|t| t == action::ENTITY_TYPE)
}

/// What runs a new exec: a blackbox image or a resolved kind.
enum Runs {
    Image(String),
    Kind(String),
}

/// Code that goes into a CouchDB attachment.
struct NewAttachment {
    name: String,
    content_type: String,
    bytes: Vec<u8>,
}

/// An action in a list.
#[derive(Serialize)]
struct Summary<'a> {
    namespace: &'a str,
    name: &'a str,
    version: &'a str,
    publish: bool,
    annotations: &'a [KeyValue],
    limits: &'a ActionLimits,
    exec: SummaryExec,
    updated: Option<i64>,
}

#[derive(Serialize)]
struct SummaryExec {
    binary: bool,
}

/// A stored document that cannot be read as an action: a 500, as a store that answers
/// nonsense.
fn unreadable(db: &str, id: &str, e: ActionDocError) -> ActionError {
    let source = match e {
        ActionDocError::Malformed(source) => source,
        other => serde::de::Error::custom(errors::chain(&other)),
    };
    ActionError::Store(CouchDbError::Decode {
        method: hyper::Method::GET,
        path: format!("{db}/{id}"),
        source,
    })
}

/// The document without CouchDB's and the store's own fields.
fn api_view(doc: &ActionDocument) -> Value {
    let mut v = doc.to_value();
    if let Some(o) = v.as_object_mut() {
        for k in ["_id", "_rev", "_attachments", "entityType"] {
            o.remove(k);
        }
    }
    v
}

/// Entity names as OpenWhisk allows them (see [`crate::entities::check_name`]).
fn check_name(name: &str) -> Result<(), ActionError> {
    crate::entities::check_name(name).map_err(ActionError::Invalid)
}

/// Key/value items of a request (parameters, annotations): each a string key and a value.
fn key_values<T: DeserializeOwned>(items: &[Value], what: &str) -> Result<Vec<T>, ActionError> {
    crate::entities::key_values(items, what).map_err(ActionError::Invalid)
}

/// The controller's `Exec.isBinaryCode`: a non-empty string in standard base64 (padded).
pub(crate) fn is_binary_code(code: &str) -> bool {
    let t = code.trim();
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    let bytes = t.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return false;
    }
    let pad = bytes.iter().rev().take_while(|&&c| c == b'=').count();
    pad <= 2 && bytes[..bytes.len() - pad].iter().all(|&c| b64(c))
}

use crate::entities::bump_patch;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An action store whose database is never reached (the tests below send nothing).
    fn actions() -> Actions {
        let db = CouchDb::new(&openwhisk::couchdb::CouchDbConfig {
            url: "http://127.0.0.1:9".into(),
            username: "u".into(),
            password: "p".into(),
            request_timeout: std::time::Duration::from_secs(1),
        })
        .unwrap();
        let manifest = Manifest::parse(include_str!("../../runtimes/runtimes.json")).unwrap();
        let bounds = |min, max, std| Bounds { min, max, std };
        Actions::new(
            db,
            "whisks",
            manifest,
            LimitBounds {
                memory_mb: bounds(128, 512, 256),
                timeout_ms: bounds(100, 300_000, 60_000),
                logs_mb: bounds(0, 10, 10),
                concurrency: bounds(1, 1, 1),
            },
        )
    }

    #[test]
    fn small_code_is_inlined_and_large_code_goes_to_an_attachment() {
        let a = actions();
        let (exec, att) = a
            .exec_of(
                &json!({"kind": "nodejs:default", "code": "function main(p){return p}"}),
                "guest",
            )
            .unwrap();
        assert!(att.is_none());
        assert_eq!(
            serde_json::to_value(&exec).unwrap(),
            json!({"kind": "nodejs:18", "binary": false, "code": {
                "attachmentName": "mem:ZnVuY3Rpb24gbWFpbihwKXtyZXR1cm4gcH0=",
                "attachmentType": "text/plain; charset=UTF-8", "length": 26}})
        );
        let big = format!("// {}", "x".repeat(MAX_INLINE_BYTES - 3));
        let (exec, att) = a
            .exec_of(
                &json!({"kind": "nodejs:default", "code": big, "main": "run"}),
                "guest",
            )
            .unwrap();
        let att = att.expect("16 KiB of code is an attachment");
        assert_eq!(att.bytes.len(), MAX_INLINE_BYTES);
        assert_eq!(att.content_type, action::TEXT_CODE_TYPE);
        assert_eq!(
            serde_json::to_value(&exec).unwrap(),
            json!({"kind": "nodejs:18", "binary": false, "main": "run", "code": {
                "attachmentName": format!("couch:{}", att.name),
                "attachmentType": "text/plain; charset=UTF-8", "length": MAX_INLINE_BYTES}})
        );
        // Base64 code is binary (a zip), stored as its bytes.
        let (exec, _) = a
            .exec_of(&json!({"kind": "python:3.11", "code": "UEsDBA=="}), "guest")
            .unwrap();
        let Some(Code::Attachment(r)) = exec.code() else {
            panic!("{exec:?}")
        };
        assert!(exec.binary());
        assert_eq!(
            r.location().unwrap(),
            CodeLocation::Inline(b"PK\x03\x04".to_vec())
        );
        assert_eq!(r.attachment_type, action::BINARY_CODE_TYPE);
    }

    #[test]
    fn exec_kinds_are_checked() {
        let a = actions();
        let (exec, att) = a
            .exec_of(&json!({"kind": "blackbox", "image": "me/img:1"}), "guest")
            .unwrap();
        assert!(att.is_none());
        assert_eq!(
            serde_json::to_value(&exec).unwrap(),
            json!({"kind": "blackbox", "image": "me/img:1", "binary": false})
        );
        for (bad, says) in [
            (json!({"code": "x"}), "exec.kind is required"),
            (
                json!({"kind": "blackbox"}),
                "a blackbox action needs exec.image",
            ),
            (
                json!({"kind": "sequence", "components": 1}),
                "exec.components undefined",
            ),
            (
                json!({"kind": "sequence", "components": ["/guest/-x"]}),
                "is not a valid entity name",
            ),
            (
                json!({"kind": "cobol:85", "code": "x"}),
                "The specified runtime 'cobol:85' is not supported",
            ),
            (json!({"kind": "nodejs:default"}), "exec.code undefined"),
            (
                json!({"kind": "nodejs:default", "code": 1}),
                "exec.code must be a string",
            ),
            (
                json!({"kind": "nodejs:default", "code": "x", "binary": true}),
                "binary code must be base64",
            ),
        ] {
            match a.exec_of(&bad, "guest") {
                Err(ActionError::Invalid(m)) => assert!(m.contains(says), "{bad}: {m}"),
                other => panic!("{bad}: {:?}", other.map(|(e, _)| e)),
            }
        }
    }

    #[test]
    fn sequences_store_resolved_components() {
        let a = actions();
        let (exec, att) = a
            .exec_of(
                &json!({"kind": "sequence", "components": ["/_/a", "/guest/p/b", "c", "/whisk.system/utils/echo"]}),
                "guest",
            )
            .unwrap();
        assert!(att.is_none());
        assert_eq!(
            serde_json::to_value(&exec).unwrap(),
            json!({"kind": "sequence", "components": ["/guest/a", "/guest/p/b", "/guest/c", "/whisk.system/utils/echo"]})
        );
        let long: Vec<String> = (0..=MAX_SEQUENCE_LENGTH)
            .map(|i| format!("/_/a{i}"))
            .collect();
        assert!(matches!(
            a.exec_of(&json!({"kind": "sequence", "components": long}), "guest"),
            Err(ActionError::Invalid(m)) if m == "Too many actions in the sequence."
        ));
    }

    #[test]
    fn untagged_local_blackbox_images_get_the_manifests_tag() {
        let a = actions();
        assert_eq!(
            a.resolve_image("openwhisk/dockerskeleton"),
            "openwhisk/dockerskeleton:nightly"
        );
        assert_eq!(
            a.resolve_image("openwhisk/dockerskeleton:1.0"),
            "openwhisk/dockerskeleton:1.0"
        );
        assert_eq!(a.resolve_image("me/img"), "me/img");
        assert_eq!(
            a.resolve_image("localhost:5000/me/img"),
            "localhost:5000/me/img"
        );
    }

    #[test]
    fn final_parameters_are_those_with_values() {
        let mut s = StoredAction {
            namespace: "guest".into(),
            name: "w".into(),
            rev: String::new(),
            version: "0.0.1".into(),
            parameters: vec![
                Parameter::new("a", json!(1)),
                Parameter::new("b", Value::Null),
            ],
            timeout_ms: 1,
            limits: ActionLimits::default(),
            annotations: vec![],
            binding: None,
            components: None,
        };
        assert!(s.final_parameters().is_empty());
        s.annotations.push(KeyValue {
            key: "final".into(),
            value: json!(true),
        });
        assert_eq!(s.final_parameters(), vec!["a"]);
        let pkg = crate::packages::ResolvedPackage {
            path: "guest/p".into(),
            parameters: vec![Parameter::new("a", json!(0)), Parameter::new("c", json!(3))],
            binding: Some("guest/bound".into()),
        };
        let s = s.inherit(&pkg);
        let keys: Vec<(&str, &Value)> = s
            .parameters
            .iter()
            .map(|p| (p.key.as_str(), &p.value))
            .collect();
        assert_eq!(
            keys,
            vec![("a", &json!(1)), ("c", &json!(3)), ("b", &Value::Null)]
        );
        assert_eq!(s.binding.as_deref(), Some("guest/bound"));
    }

    #[test]
    fn limits_take_the_request_then_the_old_document_then_the_defaults() {
        let a = actions();
        let fresh = a.limits_of(Some(&json!({"memory": 128})), None).unwrap();
        assert_eq!(
            serde_json::to_value(&fresh).unwrap(),
            json!({"timeout": 60000, "memory": 128, "logs": 10, "concurrency": 1})
        );
        let old = ActionLimits {
            timeout: 5000,
            ..fresh
        };
        let kept = a.limits_of(Some(&json!({"logs": 0})), Some(&old)).unwrap();
        assert_eq!((kept.timeout, kept.memory, kept.logs), (5000, 128, 0));
        for bad in [
            json!({"memory": 100_000}),
            json!({"memory": 64}),
            json!({"timeout": "long"}),
        ] {
            assert!(
                matches!(a.limits_of(Some(&bad), None), Err(ActionError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_api_view_drops_the_stores_fields() {
        let mut doc = ActionDocument::new(
            "guest",
            "hello",
            Exec::Blackbox(BlackboxExec {
                image: "me/img".into(),
                code: None,
                main: None,
                binary: false,
            }),
        );
        doc.rev = Some("2-x".into());
        doc.updated = Some(17);
        doc.attachments = Some(json!({"u": {"stub": true}}).as_object().cloned().unwrap());
        doc.parameters = key_values(
            &[json!({"key": "k", "value": 1, "init": true})],
            "parameters",
        )
        .unwrap();
        assert_eq!(
            api_view(&doc),
            json!({"namespace": "guest", "name": "hello", "updated": 17,
                   "exec": {"kind": "blackbox", "image": "me/img", "binary": false},
                   "parameters": [{"key": "k", "value": 1, "init": true}],
                   "limits": {"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1},
                   "version": "0.0.1", "publish": false, "annotations": []})
        );
        assert!(key_values::<KeyValue>(&[json!({"key": 1, "value": 1})], "annotations").is_err());
        assert!(key_values::<KeyValue>(&[json!({"key": "k"})], "annotations").is_err());
    }

    #[test]
    fn unreadable_documents_are_store_errors() {
        let e = ActionDocument::from_value(Value::String("not a document".into())).unwrap_err();
        assert!(matches!(
            unreadable("whisks", "guest/x", e),
            ActionError::Store(CouchDbError::Decode { .. })
        ));
    }

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

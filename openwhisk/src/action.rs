//! Action documents as the controller stores them in the whisks database (contract §4.2):
//! `_id` `<namespace>/[<package>/]<name>`, `entityType: "action"`, the `exec` with its code
//! (inline text, or an attachment reference: `mem:` inlined, `couch:` in CouchDB), parameters,
//! limits, annotations.
//!
//! # Behavior
//! - Field names are exactly the controller's; absent optional fields are omitted on write.
//! - Reading is lenient where the Scala reader is: unknown fields are ignored (a newer
//!   controller may add some), `null` or absent `parameters`, `limits`, `annotations`,
//!   `publish`, `version` take their defaults, each limit defaults on its own (OpenWhisk's
//!   standard limits), an absent `entityType` counts as an action, and old documents' `jar`
//!   is read as `code`. A non-numeric `updated` (ISO-8601 in old documents) reads as absent.
//! - `_attachments` is CouchDB's and kept as given: a new revision that does not list an
//!   attachment drops it.

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::messages::KeyValue;

/// `entityType` of action documents.
pub const ENTITY_TYPE: &str = "action";
/// The version of a new action.
pub const DEFAULT_VERSION: &str = "0.0.1";
/// OpenWhisk's standard limits (`whisk.time-limit.std`, `whisk.memory.std`,
/// `whisk.log-limit.std`, `whisk.concurrency-limit.std`).
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_MEMORY_MB: u64 = 256;
pub const DEFAULT_LOGS_MB: u64 = 10;
pub const DEFAULT_CONCURRENCY: u64 = 1;
/// `attachmentType` of text code.
pub const TEXT_CODE_TYPE: &str = "text/plain; charset=UTF-8";
/// `attachmentType` of binary code (a zip, an executable).
pub const BINARY_CODE_TYPE: &str = "application/octet-stream";

/// Errors reading an action document or its code.
#[derive(Debug, thiserror::Error)]
pub enum ActionDocError {
    #[error("the document is not a readable action")]
    Malformed(#[source] serde_json::Error),
    #[error("the document is a {0:?}, not an action")]
    NotAnAction(String),
    #[error("the mem: code of attachment reference is not base64")]
    InlineCode,
}

/// An action document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionDocument {
    #[serde(rename = "_id", default)]
    pub id: String,
    #[serde(rename = "_rev", default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<String>,
    #[serde(rename = "entityType", default = "entity_type")]
    pub entity_type: String,
    pub namespace: String,
    pub name: String,
    /// Epoch milliseconds of the last write.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "epoch_ms"
    )]
    pub updated: Option<i64>,
    pub exec: Exec,
    #[serde(default, deserialize_with = "null_as_default")]
    pub parameters: Vec<Parameter>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub limits: ActionLimits,
    #[serde(default = "default_version", deserialize_with = "version")]
    pub version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub publish: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub annotations: Vec<KeyValue>,
    /// CouchDB's attachment stubs, as given.
    #[serde(
        rename = "_attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub attachments: Option<Map<String, Value>>,
}

impl ActionDocument {
    /// A new action `namespace/name` with OpenWhisk's defaults: version 0.0.1, not published,
    /// standard limits, no parameters, no annotations.
    pub fn new(namespace: &str, name: &str, exec: Exec) -> Self {
        Self {
            id: Self::doc_id(namespace, name),
            rev: None,
            entity_type: ENTITY_TYPE.into(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            updated: None,
            exec,
            parameters: Vec::new(),
            limits: ActionLimits::default(),
            version: DEFAULT_VERSION.into(),
            publish: false,
            annotations: Vec::new(),
            attachments: None,
        }
    }

    /// The document id of action `name` in `namespace` (which may include a package).
    pub fn doc_id(namespace: &str, name: &str) -> String {
        format!("{namespace}/{name}")
    }

    /// Reads a document as CouchDB returned it; anything whose `entityType` is not `action`
    /// is refused.
    pub fn from_value(doc: Value) -> Result<Self, ActionDocError> {
        let doc: Self = serde_json::from_value(doc).map_err(ActionDocError::Malformed)?;
        if doc.entity_type != ENTITY_TYPE {
            return Err(ActionDocError::NotAnAction(doc.entity_type));
        }
        Ok(doc)
    }

    /// The document as JSON, for CouchDB.
    pub fn to_value(&self) -> Value {
        // Strings, numbers, booleans and `Value`s under string keys: serde_json cannot fail.
        serde_json::to_value(self).expect("an action document is always valid JSON")
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&Value> {
        annotation(&self.annotations, key)
    }

    /// Whether runs get the caller's API key (contract §5.3).
    pub fn provides_api_key(&self) -> bool {
        provides_api_key(&self.annotations)
    }
}

/// The value of annotation `key` in `annotations`.
pub fn annotation<'a>(annotations: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    annotations.iter().find(|a| a.key == key).map(|a| &a.value)
}

/// `provide-api-key` is truthy or absent (contract §5.3; the controller adds `false` to new
/// actions).
pub fn provides_api_key(annotations: &[KeyValue]) -> bool {
    match annotation(annotations, "provide-api-key") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(Value::Null) => false,
        Some(_) => true,
    }
}

/// One parameter; `init` ones go to `/init`'s `env`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    pub key: String,
    #[serde(default)]
    pub value: Value,
    #[serde(default, skip_serializing_if = "is_false")]
    pub init: bool,
    /// The scheme (`aes-128`, `aes-256`) of a value still encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
}

impl Parameter {
    /// A plain (not `init`, not encrypted) parameter.
    pub fn new(key: impl Into<String>, value: Value) -> Self {
        Self {
            key: key.into(),
            value,
            init: false,
            encryption: None,
        }
    }
}

/// An action's limits: ms, MB, MB, count (+ the optional instances limit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionLimits {
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    #[serde(default = "default_memory")]
    pub memory: u64,
    #[serde(default = "default_logs")]
    pub logs: u64,
    #[serde(default = "default_concurrency")]
    pub concurrency: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u64>,
}

impl Default for ActionLimits {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT_MS,
            memory: DEFAULT_MEMORY_MB,
            logs: DEFAULT_LOGS_MB,
            concurrency: DEFAULT_CONCURRENCY,
            instances: None,
        }
    }
}

/// How the action runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ExecFields", into = "ExecFields")]
pub enum Exec {
    /// A kind of the runtimes manifest (`nodejs:20`, `python:default`).
    Managed(CodeExec),
    /// `kind: "blackbox"`: a Docker image, maybe with code for its proxy.
    Blackbox(BlackboxExec),
    /// `kind: "sequence"`: the controller runs those.
    Sequence(SequenceExec),
}

/// A managed kind's exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeExec {
    pub kind: String,
    pub code: Option<Code>,
    pub main: Option<String>,
    /// The code is bytes (base64 to `/init`), not text.
    pub binary: bool,
}

/// A blackbox exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlackboxExec {
    pub image: String,
    pub code: Option<Code>,
    pub main: Option<String>,
    pub binary: bool,
}

/// A sequence's exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceExec {
    /// `/ns/[pkg/]action` names.
    pub components: Vec<String>,
}

/// `kind` of blackbox actions.
pub const BLACKBOX: &str = "blackbox";
/// `kind` of sequences.
pub const SEQUENCE: &str = "sequence";

impl Exec {
    /// The kind as stored (`nodejs:20`, `blackbox`, `sequence`).
    pub fn kind(&self) -> &str {
        match self {
            Self::Managed(e) => &e.kind,
            Self::Blackbox(_) => BLACKBOX,
            Self::Sequence(_) => SEQUENCE,
        }
    }

    /// The code, if there is one.
    pub fn code(&self) -> Option<&Code> {
        match self {
            Self::Managed(e) => e.code.as_ref(),
            Self::Blackbox(e) => e.code.as_ref(),
            Self::Sequence(_) => None,
        }
    }

    /// The entry point, if one is given.
    pub fn main(&self) -> Option<&str> {
        match self {
            Self::Managed(e) => e.main.as_deref(),
            Self::Blackbox(e) => e.main.as_deref(),
            Self::Sequence(_) => None,
        }
    }

    /// Whether the code is bytes rather than text.
    pub fn binary(&self) -> bool {
        match self {
            Self::Managed(e) => e.binary,
            Self::Blackbox(e) => e.binary,
            Self::Sequence(_) => false,
        }
    }
}

/// The code of an exec: inline text (kinds without `attached`), or an attachment reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Code {
    Inline(String),
    Attachment(AttachmentRef),
}

/// `{"attachmentName", "attachmentType", "length"?, "digest"?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRef {
    /// `mem:<base64url>`, `couch:<uuid>`, a bare CouchDB attachment name (very old documents)
    /// or another store's `<scheme>:<name>`.
    pub attachment_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attachment_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Where an attachment's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeLocation<'a> {
    /// `mem:`: in the name itself, decoded.
    Inline(Vec<u8>),
    /// A CouchDB attachment of the document, by this name.
    Couch(&'a str),
    /// In an external attachment store (`s3:`, `az:`): the whole name.
    External(&'a str),
}

impl AttachmentRef {
    /// Code inlined in the name (`mem:`, URL-safe base64), as the controller stores code below
    /// `max-inline-size`.
    pub fn inline(bytes: &[u8], content_type: &str) -> Self {
        Self {
            attachment_name: format!(
                "mem:{}",
                base64::engine::general_purpose::URL_SAFE.encode(bytes)
            ),
            attachment_type: content_type.to_owned(),
            length: Some(bytes.len() as u64),
            digest: None,
        }
    }

    /// Code in the CouchDB attachment `name` of the document (`couch:<name>`).
    pub fn couch(name: &str, content_type: &str, length: u64) -> Self {
        Self {
            attachment_name: format!("couch:{name}"),
            attachment_type: content_type.to_owned(),
            length: Some(length),
            digest: None,
        }
    }

    /// Where the bytes are; `mem:` code decoded (URL-safe base64, padded or not, and the
    /// standard alphabet too).
    pub fn location(&self) -> Result<CodeLocation<'_>, ActionDocError> {
        let name = self.attachment_name.as_str();
        if let Some(inline) = name.strip_prefix("mem:") {
            let trimmed = inline.trim_end_matches('=');
            return base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(trimmed)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
                .map(CodeLocation::Inline)
                .map_err(|_| ActionDocError::InlineCode);
        }
        let stored = name.strip_prefix("couch:").unwrap_or(name);
        Ok(if stored.contains(':') {
            CodeLocation::External(name)
        } else {
            CodeLocation::Couch(stored)
        })
    }
}

/// The flat form of `exec` on the wire.
#[derive(Serialize, Deserialize)]
struct ExecFields {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<Code>,
    /// Old documents' name for `code`; read only.
    #[serde(default, skip_serializing)]
    jar: Option<Code>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    main: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    binary: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    components: Option<Vec<String>>,
}

impl TryFrom<ExecFields> for Exec {
    type Error = String;

    fn try_from(f: ExecFields) -> Result<Self, String> {
        let code = f.code.or(f.jar);
        let binary = f.binary.unwrap_or(false);
        Ok(match f.kind.as_str() {
            SEQUENCE => Self::Sequence(SequenceExec {
                components: f.components.unwrap_or_default(),
            }),
            BLACKBOX => Self::Blackbox(BlackboxExec {
                image: f.image.ok_or("a blackbox exec needs an image")?,
                code,
                main: f.main,
                binary,
            }),
            _ => Self::Managed(CodeExec {
                kind: f.kind,
                code,
                main: f.main,
                binary,
            }),
        })
    }
}

impl From<Exec> for ExecFields {
    fn from(e: Exec) -> Self {
        let empty = |kind: &str| Self {
            kind: kind.to_owned(),
            code: None,
            jar: None,
            main: None,
            binary: None,
            image: None,
            components: None,
        };
        match e {
            Exec::Managed(m) => Self {
                code: m.code,
                main: m.main,
                binary: Some(m.binary),
                ..empty(&m.kind)
            },
            Exec::Blackbox(b) => Self {
                image: Some(b.image),
                code: b.code,
                main: b.main,
                binary: Some(b.binary),
                ..empty(BLACKBOX)
            },
            Exec::Sequence(s) => Self {
                components: Some(s.components),
                ..empty(SEQUENCE)
            },
        }
    }
}

fn entity_type() -> String {
    ENTITY_TYPE.into()
}

fn default_version() -> String {
    DEFAULT_VERSION.into()
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY_MB
}

fn default_logs() -> u64 {
    DEFAULT_LOGS_MB
}

fn default_concurrency() -> u64 {
    DEFAULT_CONCURRENCY
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

fn version<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Option::<String>::deserialize(d).map(|v| v.unwrap_or_else(default_version))
}

fn epoch_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Value::deserialize(d).map(|v| v.as_i64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The contract's §4.2 example, with a concrete digest.
    const CONTRACT_DOC: &str = r#"{"_id":"guest/hello","_rev":"1-967a00dff5e02add41819138abb3284d",
 "entityType":"action","namespace":"guest","name":"hello","updated":1714559000000,
 "exec":{"kind":"nodejs:20","binary":false,
         "code":{"attachmentName":"mem:ZnVuY3Rpb24gbWFpbihwKXtyZXR1cm4gcH0=",
                 "attachmentType":"text/plain; charset=UTF-8","length":26,
                 "digest":"sha256-0c1f9b5bd1fd4a4d6f8e2a2c0e6e0f6b8c3a5f7d9e1b2c4d6f8a0b2c4d6e8f0a"}},
 "parameters":[{"key":"greeting","value":"Hi"},{"key":"token","value":"x","init":true}],
 "limits":{"timeout":60000,"memory":256,"logs":10,"concurrency":1},
 "version":"0.0.1","publish":false,
 "annotations":[{"key":"provide-api-key","value":false},{"key":"exec","value":"nodejs:20"}]}"#;

    #[test]
    fn the_contracts_document_round_trips() {
        let original: Value = serde_json::from_str(CONTRACT_DOC).unwrap();
        let doc = ActionDocument::from_value(original.clone()).unwrap();
        assert_eq!(doc.id, "guest/hello");
        assert_eq!(
            doc.rev.as_deref(),
            Some("1-967a00dff5e02add41819138abb3284d")
        );
        assert_eq!(doc.updated, Some(1714559000000));
        assert_eq!(doc.exec.kind(), "nodejs:20");
        assert!(!doc.exec.binary());
        assert_eq!(
            doc.parameters[1],
            Parameter {
                init: true,
                ..Parameter::new("token", json!("x"))
            }
        );
        assert_eq!(doc.limits, ActionLimits::default());
        assert!(!doc.provides_api_key());
        assert_eq!(doc.annotation("exec"), Some(&json!("nodejs:20")));
        assert_eq!(doc.to_value(), original);
    }

    #[test]
    fn mem_code_decodes_to_the_source() {
        let doc: ActionDocument = serde_json::from_str(CONTRACT_DOC).unwrap();
        let Some(Code::Attachment(att)) = doc.exec.code() else {
            panic!("no attachment: {:?}", doc.exec)
        };
        assert_eq!(
            att.location().unwrap(),
            CodeLocation::Inline(b"function main(p){return p}".to_vec())
        );
        // What `inline` writes reads back, also without padding.
        let made = AttachmentRef::inline(b"\xff\xfe binary", BINARY_CODE_TYPE);
        assert_eq!(made.length, Some(9));
        assert_eq!(
            made.location().unwrap(),
            CodeLocation::Inline(b"\xff\xfe binary".to_vec())
        );
        let unpadded = AttachmentRef {
            attachment_name: made.attachment_name.trim_end_matches('=').to_owned(),
            ..made
        };
        assert_eq!(
            unpadded.location().unwrap(),
            CodeLocation::Inline(b"\xff\xfe binary".to_vec())
        );
        let bad = AttachmentRef {
            attachment_name: "mem:not base64!".into(),
            ..unpadded
        };
        assert!(matches!(bad.location(), Err(ActionDocError::InlineCode)));
    }

    #[test]
    fn attachment_names_say_where_the_code_is() {
        let at = |name: &str| AttachmentRef {
            attachment_name: name.into(),
            attachment_type: BINARY_CODE_TYPE.into(),
            length: None,
            digest: None,
        };
        let couch = at("couch:3f0c2a1e-aaaa");
        assert_eq!(
            couch.location().unwrap(),
            CodeLocation::Couch("3f0c2a1e-aaaa")
        );
        let bare = at("3f0c2a1e-bbbb");
        assert_eq!(
            bare.location().unwrap(),
            CodeLocation::Couch("3f0c2a1e-bbbb")
        );
        let s3 = at("s3:bucket/key");
        assert_eq!(
            s3.location().unwrap(),
            CodeLocation::External("s3:bucket/key")
        );
        assert_eq!(
            AttachmentRef::couch("u-1", TEXT_CODE_TYPE, 20_000),
            AttachmentRef {
                length: Some(20_000),
                attachment_type: TEXT_CODE_TYPE.into(),
                ..at("couch:u-1")
            }
        );
    }

    #[test]
    fn the_contracts_exec_variants_read_and_write_back() {
        for exec in [
            json!({"kind":"python:3.11","binary":true,"main":"handler","code":{"attachmentName":"couch:3f0c2a1e","attachmentType":"application/octet-stream"}}),
            json!({"kind":"blackbox","image":"myorg/myaction:1.0","binary":false}),
            json!({"kind":"blackbox","image":"openwhisk/dockerskeleton:nightly","binary":true,"code":{"attachmentName":"mem:UEsDBA==","attachmentType":"application/octet-stream","length":4,"digest":"sha256-00"}}),
            json!({"kind":"sequence","components":["/guest/a","/guest/b"]}),
            json!({"kind":"nodejs:20","binary":false,"code":"function main(p){return p}"}),
        ] {
            let e: Exec = serde_json::from_value(exec.clone()).unwrap();
            assert_eq!(serde_json::to_value(&e).unwrap(), exec);
        }
        let bb: Exec = serde_json::from_value(json!({"kind":"blackbox","image":"i"})).unwrap();
        assert_eq!(
            bb,
            Exec::Blackbox(BlackboxExec {
                image: "i".into(),
                code: None,
                main: None,
                binary: false
            })
        );
        assert!(serde_json::from_value::<Exec>(json!({"kind":"blackbox"})).is_err());
        assert!(serde_json::from_value::<Exec>(json!({"code":"x"})).is_err());
        assert!(serde_json::from_value::<Exec>(json!({"kind":"nodejs:20","code":5})).is_err());
        // Old documents: `jar` is the code, written back as `code`.
        let old: Exec = serde_json::from_value(
            json!({"kind":"java:8","jar":{"attachmentName":"couch:j"},"main":"Main","binary":true}),
        )
        .unwrap();
        assert!(matches!(old.code(), Some(Code::Attachment(a)) if a.attachment_name == "couch:j"));
        assert_eq!(old.main(), Some("Main"));
        assert!(serde_json::to_value(&old).unwrap().get("jar").is_none());
    }

    #[test]
    fn unknown_fields_and_missing_optionals_do_not_make_a_document_unreadable() {
        let doc = ActionDocument::from_value(json!({
            "_id": "guest/x", "namespace": "guest", "name": "x", "futureField": {"a": 1},
            "updated": "2024-05-01T10:40:00Z",
            "exec": {"kind": "nodejs:20", "code": "c", "futureExecField": true},
            "parameters": [{"key": "k", "future": 1}],
            "limits": {"memory": 128, "futureLimit": 3},
            "annotations": null, "version": null, "publish": null,
        }))
        .unwrap();
        assert_eq!(doc.entity_type, ENTITY_TYPE);
        assert_eq!(doc.updated, None);
        assert_eq!(doc.version, DEFAULT_VERSION);
        assert!(!doc.publish);
        assert!(doc.annotations.is_empty());
        assert!(doc.provides_api_key(), "absent provide-api-key means yes");
        assert_eq!(doc.parameters, vec![Parameter::new("k", Value::Null)]);
        assert_eq!(
            doc.limits,
            ActionLimits {
                memory: 128,
                ..ActionLimits::default()
            }
        );
        assert_eq!(doc.rev, None);
        assert!(doc.to_value().get("_rev").is_none());
    }

    #[test]
    fn other_entities_and_broken_documents_are_refused() {
        let mut pkg: Value = serde_json::from_str(CONTRACT_DOC).unwrap();
        pkg["entityType"] = json!("package");
        assert!(matches!(
            ActionDocument::from_value(pkg),
            Err(ActionDocError::NotAnAction(t)) if t == "package"
        ));
        for broken in [
            json!("not an object"),
            json!({"namespace": "guest", "name": "x"}),
            json!({"namespace": "guest", "exec": {"kind": "nodejs:20"}}),
            json!({"namespace": "guest", "name": "x", "exec": {"kind": "nodejs:20"}, "limits": {"memory": "lots"}}),
        ] {
            assert!(
                matches!(
                    ActionDocument::from_value(broken.clone()),
                    Err(ActionDocError::Malformed(_))
                ),
                "{broken}"
            );
        }
    }

    #[test]
    fn a_new_document_has_openwhisks_defaults() {
        let exec = Exec::Managed(CodeExec {
            kind: "nodejs:20".into(),
            code: Some(Code::Attachment(AttachmentRef::inline(
                b"function main(p){return p}",
                TEXT_CODE_TYPE,
            ))),
            main: None,
            binary: false,
        });
        let doc = ActionDocument::new("guest", "hello", exec);
        assert_eq!(
            doc.to_value(),
            json!({"_id": "guest/hello", "entityType": "action", "namespace": "guest", "name": "hello",
                   "exec": {"kind": "nodejs:20", "binary": false, "code": {
                       "attachmentName": "mem:ZnVuY3Rpb24gbWFpbihwKXtyZXR1cm4gcH0=",
                       "attachmentType": "text/plain; charset=UTF-8", "length": 26}},
                   "parameters": [], "limits": {"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1},
                   "version": "0.0.1", "publish": false, "annotations": []})
        );
        let annotations = [KeyValue {
            key: "provide-api-key".into(),
            value: json!("yes"),
        }];
        assert!(provides_api_key(&annotations), "truthy values count");
    }
}

//! OpenWhisk's wire messages (contract §3), as the Scala controller writes and reads them.
//!
//! # Behavior
//! - Optional fields that are absent are omitted on write, as spray-json does; required fields
//!   are required on read.
//! - The transaction id is kept as the exact JSON text it arrived in and echoed byte for byte:
//!   the controller matches acks by id *and* start time.
//! - An entity name may arrive as an object or as a plain `"path/name"` string.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Errors reading a message.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message is not a valid {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("activation id {0:?} is not 32 lowercase hex characters")]
    ActivationId(String),
}

/// A transaction id: `[id, startMillis]` (plus optional elements), kept verbatim.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransactionId(Box<RawValue>);

impl PartialEq for TransactionId {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl TransactionId {
    /// The exact JSON text it arrived in.
    pub fn raw(&self) -> &str {
        self.0.get()
    }

    /// The id part (`"sid_unknown"` when the array does not start with a string).
    pub fn id(&self) -> String {
        let v: Value = serde_json::from_str(self.raw()).unwrap_or(Value::Null);
        v.get(0)
            .and_then(Value::as_str)
            .unwrap_or("sid_unknown")
            .to_owned()
    }

    /// A new transaction id `[id, startMillis]`, as the controller writes one.
    pub fn new(id: &str, start_ms: i64) -> Self {
        // A string and a number: serde_json cannot fail, and its output is valid JSON.
        let text = serde_json::to_string(&(id, start_ms)).expect("a pair is always valid JSON");
        Self(RawValue::from_string(text).expect("serde_json writes valid JSON"))
    }

    /// The start time in epoch milliseconds, when present.
    pub fn start_ms(&self) -> Option<i64> {
        let v: Value = serde_json::from_str(self.raw()).ok()?;
        v.get(1).and_then(Value::as_i64)
    }
}

/// A fully qualified entity name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FullyQualifiedEntityName {
    pub path: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}

impl<'de> Deserialize<'de> for FullyQualifiedEntityName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Object {
            path: String,
            name: String,
            version: Option<String>,
            binding: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Object(Object),
            Text(String),
        }
        match Form::deserialize(d)? {
            Form::Object(o) => Ok(Self {
                path: o.path,
                name: o.name,
                version: o.version,
                binding: o.binding,
            }),
            Form::Text(s) => {
                let (path, name) = s.rsplit_once('/').ok_or_else(|| {
                    serde::de::Error::custom(format!("entity name {s:?} has no path"))
                })?;
                Ok(Self {
                    path: path.trim_start_matches('/').to_owned(),
                    name: name.to_owned(),
                    version: None,
                    binding: None,
                })
            }
        }
    }
}

impl FullyQualifiedEntityName {
    /// `path/name` without version or binding.
    pub fn new(path: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            name: name.into(),
            version: None,
            binding: None,
        }
    }

    /// The same name at `version`.
    #[must_use]
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// `path/name`, the form of the `path` annotation and of CouchDB ids.
    pub fn qualified(&self) -> String {
        format!("{}/{}", self.path, self.name)
    }
}

/// `{"name": "guest", "uuid": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub uuid: String,
}

/// The invoking identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub subject: String,
    pub namespace: Namespace,
    /// Opaque; for basic auth `{"api_key": "<uuid>:<key>"}`.
    pub authkey: Value,
    pub rights: Vec<String>,
    pub limits: Map<String, Value>,
}

/// The rights of a user's own namespace.
pub const USER_RIGHTS: [&str; 4] = ["READ", "PUT", "DELETE", "ACTIVATE"];

impl Identity {
    /// A basic-auth identity: `authkey` `{"api_key": "<uuid>:<key>"}`, no namespace limits.
    pub fn basic(subject: &str, namespace: Namespace, key: &str, rights: &[&str]) -> Self {
        let api_key = format!("{}:{key}", namespace.uuid);
        Self {
            subject: subject.to_owned(),
            namespace,
            authkey: serde_json::json!({ "api_key": api_key }),
            rights: rights.iter().map(|&r| r.to_owned()).collect(),
            limits: Map::new(),
        }
    }

    /// OpenWhisk's default development subject `guest` (the key ansible and the standalone
    /// OpenWhisk ship), with `rights`.
    pub fn guest(rights: &[&str]) -> Self {
        let (subject, uuid, key) = DEFAULT_SUBJECTS[0];
        Self::basic(
            subject,
            Namespace {
                name: subject.to_owned(),
                uuid: uuid.to_owned(),
            },
            key,
            rights,
        )
    }
}

/// OpenWhisk's default development subjects (`ansible/files/auth.guest`, `auth.whisk.system`):
/// (subject and namespace, uuid, key).
pub const DEFAULT_SUBJECTS: [(&str, &str, &str); 2] = [
    (
        "guest",
        "23bc46b1-71f6-4ed5-8c54-816aa4f8c502",
        "123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP",
    ),
    (
        "whisk.system",
        "789c46b1-71f6-4ed5-8c54-816aa4f8c502",
        "abczO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP",
    ),
];

/// `{"asString": "0", "instanceType": "controller"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerInstanceId {
    #[serde(rename = "asString")]
    pub as_string: String,
    #[serde(rename = "instanceType")]
    pub instance_type: String,
}

impl ControllerInstanceId {
    /// Controller `as_string` (`"0"`).
    pub fn controller(as_string: impl Into<String>) -> Self {
        Self {
            as_string: as_string.into(),
            instance_type: "controller".into(),
        }
    }
}

/// A controller's request to run an action (`invoker<N>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationMessage {
    pub transid: TransactionId,
    pub action: FullyQualifiedEntityName,
    /// `null` means "the latest": fetch it and bypass the cache.
    pub revision: Option<String>,
    pub user: Identity,
    pub activation_id: String,
    pub root_controller_index: ControllerInstanceId,
    pub blocking: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
    #[serde(default)]
    pub init_args: Vec<String>,
    #[serde(default)]
    pub locked_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<Map<String, Value>>,
}

impl ActivationMessage {
    /// Parses a Kafka record's value and checks the activation id.
    pub fn parse(bytes: &[u8]) -> Result<Self, MessageError> {
        let m: Self = serde_json::from_slice(bytes).map_err(|source| MessageError::Json {
            what: "ActivationMessage",
            source,
        })?;
        if !is_activation_id(&m.activation_id) {
            return Err(MessageError::ActivationId(m.activation_id));
        }
        Ok(m)
    }

    /// A message as the controller writes one; the builder's defaults are the health probe's:
    /// `revision: null` (the latest), not blocking, no content, no init or locked arguments.
    pub fn builder(
        transid: TransactionId,
        action: FullyQualifiedEntityName,
        user: Identity,
        activation_id: impl Into<String>,
        root_controller_index: ControllerInstanceId,
    ) -> ActivationMessageBuilder {
        ActivationMessageBuilder(Self {
            transid,
            action,
            revision: None,
            user,
            activation_id: activation_id.into(),
            root_controller_index,
            blocking: false,
            content: None,
            init_args: Vec::new(),
            locked_args: Map::new(),
            cause: None,
            trace_context: None,
        })
    }

    /// The Kafka record's value: compact JSON.
    pub fn to_json(&self) -> String {
        // Strings, numbers, booleans, raw JSON and `Value`s under string keys: serde_json
        // cannot fail.
        serde_json::to_string(self).expect("an activation message is always valid JSON")
    }
}

/// 32 lowercase hex characters, the controller's `ActivationId`.
fn is_activation_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Builds an [`ActivationMessage`]; see [`ActivationMessage::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ActivationMessageBuilder(ActivationMessage);

impl ActivationMessageBuilder {
    /// The action's document revision (the invoker caches by it).
    pub fn revision(mut self, rev: impl Into<String>) -> Self {
        self.0.revision = Some(rev.into());
        self
    }

    pub fn blocking(mut self, blocking: bool) -> Self {
        self.0.blocking = blocking;
        self
    }

    /// The merged parameters (package < action < request): an object, or an array.
    pub fn content(mut self, content: Value) -> Self {
        self.0.content = Some(content);
        self
    }

    /// The names of the parameters flagged `init`.
    pub fn init_args(mut self, init_args: Vec<String>) -> Self {
        self.0.init_args = init_args;
        self
    }

    /// Parameter name -> encryption scheme, for values of `content` still encrypted.
    pub fn locked_args(mut self, locked_args: Map<String, Value>) -> Self {
        self.0.locked_args = locked_args;
        self
    }

    /// The activation id of the sequence this activation is a component of.
    pub fn cause(mut self, cause: impl Into<String>) -> Self {
        self.0.cause = Some(cause.into());
        self
    }

    pub fn trace_context(mut self, trace_context: Map<String, Value>) -> Self {
        self.0.trace_context = Some(trace_context);
        self
    }

    /// The message; the activation id must be one the invoker accepts.
    pub fn build(self) -> Result<ActivationMessage, MessageError> {
        if !is_activation_id(&self.0.activation_id) {
            return Err(MessageError::ActivationId(self.0.activation_id));
        }
        Ok(self.0)
    }
}

/// An invoker's identity, in acks (`instance`) and pings (`name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvokerInstanceId {
    pub instance: u32,
    /// A ByteSize string; the Scala invoker prints bytes: `"2147483648 B"`.
    pub user_memory: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_memory: Option<String>,
    pub instance_type: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub dedicated_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displayed_name: Option<String>,
}

impl InvokerInstanceId {
    /// The id of invoker `instance` with `user_memory_bytes` of user memory.
    pub fn new(
        instance: u32,
        user_memory_bytes: u64,
        unique_name: Option<String>,
        displayed_name: Option<String>,
    ) -> Self {
        Self {
            instance,
            user_memory: format!("{user_memory_bytes} B"),
            busy_memory: None,
            instance_type: "invoker".into(),
            tags: Vec::new(),
            dedicated_namespaces: Vec::new(),
            unique_name,
            displayed_name,
        }
    }
}

/// `{"key": …, "value": …}`, as in parameters and annotations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: Value,
}

/// The `response` of an activation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationResponse {
    /// 0 success, 1 application error, 2 action developer error, 3 whisk internal error.
    pub status_code: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// An activation record (contract §4.4), as sent in acks; [`WhiskActivation::to_document`]
/// adds what CouchDB stores besides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhiskActivation {
    pub namespace: String,
    pub name: String,
    pub subject: String,
    pub activation_id: String,
    pub start: i64,
    pub end: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    pub response: ActivationResponse,
    pub logs: Vec<String>,
    pub version: String,
    pub publish: bool,
    pub annotations: Vec<KeyValue>,
}

impl WhiskActivation {
    /// The CouchDB document: `_id` = `<namespace>/<activationId>`, `entityType`, `updated`.
    pub fn to_document(&self, updated_ms: i64) -> Value {
        let mut doc = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut doc {
            m.insert(
                "_id".into(),
                Value::String(format!("{}/{}", self.namespace, self.activation_id)),
            );
            m.insert("entityType".into(), Value::String("activation".into()));
            m.insert("updated".into(), Value::from(updated_ms));
        }
        doc
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&Value> {
        self.annotations
            .iter()
            .find(|a| a.key == key)
            .map(|a| &a.value)
    }

    /// Whether the status counts against the invoker's health.
    pub fn is_system_error(&self) -> bool {
        self.response.status_code == 3
    }
}

/// An ack's `response`: the whole record, or only its id (the "shrunk" form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AckResponse {
    Full(Box<WhiskActivation>),
    Shrunk(String),
}

/// The three acknowledgement shapes on `completed<C>`; the controller tells them apart by which
/// fields are present.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Ack {
    /// Result and slot release together.
    Combined {
        transid: TransactionId,
        response: AckResponse,
        #[serde(rename = "isSystemError")]
        is_system_error: bool,
        instance: InvokerInstanceId,
    },
    /// The slot release.
    Completion {
        transid: TransactionId,
        #[serde(rename = "activationId")]
        activation_id: String,
        #[serde(rename = "isSystemError")]
        is_system_error: bool,
        instance: InvokerInstanceId,
    },
    /// The result of a blocking activation, ahead of its completion.
    Result {
        transid: TransactionId,
        response: AckResponse,
    },
}

impl<'de> Deserialize<'de> for Ack {
    // By field presence, as the controller does. (Not `#[serde(untagged)]`: it buffers the
    // input, and the verbatim transaction id cannot be read from a buffer.)
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Fields {
            transid: TransactionId,
            response: Option<AckResponse>,
            activation_id: Option<String>,
            is_system_error: Option<bool>,
            instance: Option<InvokerInstanceId>,
        }
        let f = Fields::deserialize(d)?;
        match (f.response, f.instance, f.activation_id) {
            (Some(response), Some(instance), _) => Ok(Self::Combined {
                transid: f.transid,
                response,
                is_system_error: f.is_system_error.unwrap_or(false),
                instance,
            }),
            (None, Some(instance), Some(activation_id)) => Ok(Self::Completion {
                transid: f.transid,
                activation_id,
                is_system_error: f.is_system_error.unwrap_or(false),
                instance,
            }),
            (Some(response), None, _) => Ok(Self::Result {
                transid: f.transid,
                response,
            }),
            _ => Err(serde::de::Error::custom(
                "an ack needs a response, an instance, or both",
            )),
        }
    }
}

impl AckResponse {
    /// The activation the response is about.
    pub fn activation_id(&self) -> &str {
        match self {
            Self::Full(a) => &a.activation_id,
            Self::Shrunk(id) => id,
        }
    }
}

impl Ack {
    pub fn transid(&self) -> &TransactionId {
        match self {
            Self::Combined { transid, .. }
            | Self::Completion { transid, .. }
            | Self::Result { transid, .. } => transid,
        }
    }

    /// The activation the ack is about.
    pub fn activation_id(&self) -> &str {
        match self {
            Self::Combined { response, .. } | Self::Result { response, .. } => {
                response.activation_id()
            }
            Self::Completion { activation_id, .. } => activation_id,
        }
    }

    /// The activation record, when the ack carries it whole.
    pub fn record(&self) -> Option<&WhiskActivation> {
        match self {
            Self::Combined {
                response: AckResponse::Full(a),
                ..
            }
            | Self::Result {
                response: AckResponse::Full(a),
                ..
            } => Some(a),
            _ => None,
        }
    }

    /// Whether the ack releases the activation's slot (the last ack of an activation).
    pub fn frees_slot(&self) -> bool {
        !matches!(self, Self::Result { .. })
    }

    /// The same ack with the record replaced by its id (non-blocking acks and records too
    /// large for Kafka).
    pub fn shrunk(&self) -> Self {
        let shrink = |r: &AckResponse| match r {
            AckResponse::Full(a) => AckResponse::Shrunk(a.activation_id.clone()),
            s @ AckResponse::Shrunk(_) => s.clone(),
        };
        match self {
            Self::Combined {
                transid,
                response,
                is_system_error,
                instance,
            } => Self::Combined {
                transid: transid.clone(),
                response: shrink(response),
                is_system_error: *is_system_error,
                instance: instance.clone(),
            },
            Self::Result { transid, response } => Self::Result {
                transid: transid.clone(),
                response: shrink(response),
            },
            c @ Self::Completion { .. } => c.clone(),
        }
    }
}

/// The invoker's heartbeat on `health`: the instance under key `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PingMessage {
    pub name: InvokerInstanceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_enabled: Option<bool>,
}

/// A user event on `<prefix>events` (contract §3.5), written when `whisk.user-events.enabled`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMessage {
    /// `invoker<N>`.
    pub source: String,
    pub body: ActivationEvent,
    pub subject: String,
    pub namespace: String,
    pub user_id: String,
    pub event_type: &'static str,
    pub timestamp: i64,
}

/// The body of an `Activation` event; the values that come from the record's annotations stay
/// as the annotations carry them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationEvent {
    pub name: Value,
    pub activation_id: String,
    pub status_code: u8,
    pub duration: i64,
    pub wait_time: Value,
    pub init_time: Value,
    pub kind: Value,
    pub conductor: Value,
    pub memory: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_defined_status_code: Option<Value>,
}

impl EventMessage {
    /// The event of a finished activation `a` of `msg`, sent by invoker `invoker` at
    /// `timestamp` (epoch ms).
    pub fn activation(
        msg: &ActivationMessage,
        a: &WhiskActivation,
        invoker: u32,
        timestamp: i64,
    ) -> Self {
        let ann = |k: &str| a.annotation(k).cloned();
        let user_defined_status_code = a
            .response
            .result
            .as_ref()
            .and_then(|r| {
                r.get("error")
                    .and_then(|e| e.get("statusCode"))
                    .or_else(|| r.get("statusCode"))
            })
            .cloned();
        Self {
            source: format!("invoker{invoker}"),
            body: ActivationEvent {
                name: ann("path").unwrap_or(Value::Null),
                activation_id: a.activation_id.clone(),
                status_code: a.response.status_code,
                duration: a.duration.unwrap_or(0),
                wait_time: ann("waitTime").unwrap_or(Value::from(0)),
                init_time: ann("initTime").unwrap_or(Value::from(0)),
                kind: ann("kind").unwrap_or(Value::from("unknown")),
                conductor: ann("conductor").unwrap_or(Value::Bool(false)),
                memory: ann("limits")
                    .and_then(|l| l.get("memory").cloned())
                    .unwrap_or(Value::from(0)),
                caused_by: a.cause.clone(),
                size: a.response.size,
                user_defined_status_code,
            },
            subject: msg.user.subject.clone(),
            namespace: msg.user.namespace.name.clone(),
            user_id: msg.user.namespace.uuid.clone(),
            event_type: "Activation",
            timestamp,
        }
    }

    /// The message as sent.
    pub fn to_json(&self) -> String {
        // Strings, numbers and `Value`s under string keys: serde_json cannot fail.
        serde_json::to_string(self).expect("an event is always valid JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_pass_through_a_decode_and_encode_unchanged() {
        // A number must read as the nearest f64 (serde_json's `float_roundtrip`): the fast
        // parser read this integer a unit in the last place off, so its encoding changed on a
        // second pass (found by the activation_message fuzz target).
        let v: Value = serde_json::from_str(
            "[666666666666666600000000000000000000000000000000000000000003074457345618258603]",
        )
        .unwrap();
        let once = serde_json::to_string(&v).unwrap();
        let twice = serde_json::to_string(&serde_json::from_str::<Value>(&once).unwrap()).unwrap();
        assert_eq!(once, twice);
    }

    use serde_json::json;

    /// Contract §3.5's example, field for field.
    #[test]
    fn event_message_golden() {
        let msg = ActivationMessage::parse(br#"{"transid":["x",1],"action":{"path":"guest","name":"hello","version":"0.0.1"},"revision":null,
            "user":{"subject":"guest","namespace":{"name":"guest","uuid":"23bc46b1-71f6-4ed5-8c54-816aa4f8c502"},"authkey":{},"rights":[],"limits":{}},
            "activationId":"c7bb1339cb4f40e3a6ccead6c99f804e","rootControllerIndex":{"asString":"0","instanceType":"controller"},"blocking":true}"#).unwrap();
        let a: WhiskActivation = serde_json::from_value(json!({
            "namespace":"guest","name":"hello","subject":"guest","activationId":"c7bb1339cb4f40e3a6ccead6c99f804e",
            "start":1714560000160_i64,"end":1714560000421_i64,"duration":261,
            "response":{"statusCode":0,"result":{"payload":"Hello World"},"size":25},"logs":[],"version":"0.0.1","publish":false,
            "annotations":[{"key":"limits","value":{"concurrency":1,"logs":10,"memory":256,"timeout":60000}},
                {"key":"path","value":"guest/hello"},{"key":"kind","value":"nodejs:20"},{"key":"timeout","value":false},
                {"key":"initTime","value":212},{"key":"waitTime","value":37}]})).unwrap();
        let expected = json!({"source":"invoker0",
            "body":{"name":"guest/hello","activationId":"c7bb1339cb4f40e3a6ccead6c99f804e","statusCode":0,
                    "duration":261,"waitTime":37,"initTime":212,"kind":"nodejs:20","conductor":false,
                    "memory":256,"size":25},
            "subject":"guest","namespace":"guest","userId":"23bc46b1-71f6-4ed5-8c54-816aa4f8c502",
            "eventType":"Activation","timestamp":1714560000500_i64});
        assert_eq!(
            serde_json::to_value(EventMessage::activation(&msg, &a, 0, 1_714_560_000_500)).unwrap(),
            expected
        );
    }

    const USER_ACTIVATION: &str = r#"{"transid":["dbyaSw8MclQ8z5XrHc1OHanU8v1yAmMS",1714560000123],
 "action":{"path":"guest","name":"hello","version":"0.0.1"},
 "revision":"1-967a00dff5e02add41819138abb3284d",
 "user":{"subject":"guest",
         "namespace":{"name":"guest","uuid":"23bc46b1-71f6-4ed5-8c54-816aa4f8c502"},
         "authkey":{"api_key":"23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP"},
         "rights":["READ","PUT","DELETE","ACTIVATE"],"limits":{}},
 "activationId":"c7bb1339cb4f40e3a6ccead6c99f804e",
 "rootControllerIndex":{"asString":"0","instanceType":"controller"},
 "blocking":true,
 "content":{"name":"World"},
 "initArgs":[],
 "lockedArgs":{}}"#;

    const HEALTH_ACTIVATION: &str = r#"{"transid":["sid_invokerHealth",1714559990000],
 "action":{"path":"whisk.system","name":"invokerHealthTestAction0","version":"0.0.1"},
 "revision":null,
 "user":{"subject":"whisk.system","namespace":{"name":"whisk.system","uuid":"2f5b1c5c-1a7e-4b5e-9a4c-0f2d8e6f7a1b"},
         "authkey":{"api_key":"2f5b1c5c-1a7e-4b5e-9a4c-0f2d8e6f7a1b:xyz"},"rights":[],"limits":{}},
 "activationId":"0123456789abcdef0123456789abcdef","rootControllerIndex":{"asString":"0","instanceType":"controller"},
 "blocking":false,"initArgs":[],"lockedArgs":{}}"#;

    fn record() -> WhiskActivation {
        serde_json::from_value(json!({
            "namespace":"guest","name":"hello","subject":"guest",
            "activationId":"c7bb1339cb4f40e3a6ccead6c99f804e",
            "start":1714560000160_i64,"end":1714560000421_i64,"duration":261,
            "response":{"statusCode":0,"result":{"payload":"Hello World"},"size":25},
            "logs":[],"version":"0.0.1","publish":false,
            "annotations":[{"key":"limits","value":{"concurrency":1,"logs":10,"memory":256,"timeout":60000}},
                           {"key":"path","value":"guest/hello"},{"key":"kind","value":"nodejs:20"},
                           {"key":"timeout","value":false},{"key":"initTime","value":212},
                           {"key":"waitTime","value":37}]
        }))
        .unwrap()
    }

    fn transid() -> TransactionId {
        serde_json::from_str(r#"["dbyaSw8MclQ8z5XrHc1OHanU8v1yAmMS",1714560000123]"#).unwrap()
    }

    #[test]
    fn activation_message_round_trips() {
        let m = ActivationMessage::parse(USER_ACTIVATION.as_bytes()).unwrap();
        assert_eq!(m.transid.id(), "dbyaSw8MclQ8z5XrHc1OHanU8v1yAmMS");
        assert_eq!(m.transid.start_ms(), Some(1714560000123));
        assert_eq!(m.action.qualified(), "guest/hello");
        let back: Value = serde_json::to_value(&m).unwrap();
        let original: Value = serde_json::from_str(USER_ACTIVATION).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn health_probe_has_null_revision_and_no_content() {
        let m = ActivationMessage::parse(HEALTH_ACTIVATION.as_bytes()).unwrap();
        assert_eq!(m.revision, None);
        assert_eq!(m.content, None);
        assert!(!m.blocking);
        let back = serde_json::to_string(&m).unwrap();
        assert!(back.contains(r#""revision":null"#), "{back}");
        assert!(!back.contains("content"), "{back}");
    }

    #[test]
    fn transid_is_echoed_byte_for_byte() {
        let raw = r#"{"transid":["abc", 1714560000123, true],"activationId":"0123456789abcdef0123456789abcdef","isSystemError":false,"instance":{"instance":0,"userMemory":"1 B","instanceType":"invoker"}}"#;
        let ack: Ack = serde_json::from_str(raw).unwrap();
        let Ack::Completion { transid, .. } = &ack else {
            panic!("not a completion: {ack:?}")
        };
        assert_eq!(transid.raw(), r#"["abc", 1714560000123, true]"#);
        assert!(
            serde_json::to_string(&ack)
                .unwrap()
                .contains(r#""transid":["abc", 1714560000123, true]"#)
        );
    }

    #[test]
    fn entity_name_may_be_a_string() {
        let n: FullyQualifiedEntityName = serde_json::from_str(r#""guest/pkg/hello""#).unwrap();
        assert_eq!((n.path.as_str(), n.name.as_str()), ("guest/pkg", "hello"));
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(ActivationMessage::parse(b"not json").is_err());
        assert!(ActivationMessage::parse(b"{}").is_err());
        let bad_id = USER_ACTIVATION.replace("c7bb1339cb4f40e3a6ccead6c99f804e", "XYZ");
        assert!(matches!(
            ActivationMessage::parse(bad_id.as_bytes()),
            Err(MessageError::ActivationId(_))
        ));
    }

    #[test]
    fn golden_acks() {
        let instance = InvokerInstanceId::new(0, 2_147_483_648, Some("0".into()), None);
        let result = Ack::Result {
            transid: transid(),
            response: AckResponse::Full(Box::new(record())),
        };
        assert_eq!(
            serde_json::to_value(&result).unwrap(),
            json!({"transid":["dbyaSw8MclQ8z5XrHc1OHanU8v1yAmMS",1714560000123_i64],
                   "response": serde_json::to_value(record()).unwrap()})
        );
        let completion = Ack::Completion {
            transid: transid(),
            activation_id: "c7bb1339cb4f40e3a6ccead6c99f804e".into(),
            is_system_error: false,
            instance: instance.clone(),
        };
        assert_eq!(
            serde_json::to_string(&completion).unwrap(),
            r#"{"transid":["dbyaSw8MclQ8z5XrHc1OHanU8v1yAmMS",1714560000123],"activationId":"c7bb1339cb4f40e3a6ccead6c99f804e","isSystemError":false,"instance":{"instance":0,"userMemory":"2147483648 B","instanceType":"invoker","tags":[],"dedicatedNamespaces":[],"uniqueName":"0"}}"#
        );
        let combined = Ack::Combined {
            transid: transid(),
            response: AckResponse::Full(Box::new(record())),
            is_system_error: false,
            instance,
        };
        assert_eq!(
            serde_json::to_string(&combined.shrunk()).unwrap(),
            r#"{"transid":["dbyaSw8MclQ8z5XrHc1OHanU8v1yAmMS",1714560000123],"response":"c7bb1339cb4f40e3a6ccead6c99f804e","isSystemError":false,"instance":{"instance":0,"userMemory":"2147483648 B","instanceType":"invoker","tags":[],"dedicatedNamespaces":[],"uniqueName":"0"}}"#
        );
        // Read back, each shape is recognised by its fields.
        for ack in [result, completion, combined] {
            let text = serde_json::to_string(&ack).unwrap();
            assert_eq!(serde_json::from_str::<Ack>(&text).unwrap(), ack);
        }
    }

    #[test]
    fn the_builder_writes_the_contracts_messages() {
        let user = Identity::basic(
            "guest",
            Namespace {
                name: "guest".into(),
                uuid: "23bc46b1-71f6-4ed5-8c54-816aa4f8c502".into(),
            },
            "123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP",
            &USER_RIGHTS,
        );
        let built = ActivationMessage::builder(
            TransactionId::new("dbyaSw8MclQ8z5XrHc1OHanU8v1yAmMS", 1714560000123),
            FullyQualifiedEntityName::new("guest", "hello").with_version("0.0.1"),
            user,
            "c7bb1339cb4f40e3a6ccead6c99f804e",
            ControllerInstanceId::controller("0"),
        )
        .revision("1-967a00dff5e02add41819138abb3284d")
        .blocking(true)
        .content(json!({"name": "World"}))
        .build()
        .unwrap();
        let written: Value = serde_json::from_str(&built.to_json()).unwrap();
        assert_eq!(
            written,
            serde_json::from_str::<Value>(USER_ACTIVATION).unwrap()
        );
        assert_eq!(
            built,
            ActivationMessage::parse(USER_ACTIVATION.as_bytes()).unwrap()
        );
        assert_eq!(
            built.transid.raw(),
            r#"["dbyaSw8MclQ8z5XrHc1OHanU8v1yAmMS",1714560000123]"#
        );

        let probe = ActivationMessage::builder(
            TransactionId::new("sid_invokerHealth", 1714559990000),
            FullyQualifiedEntityName::new("whisk.system", "invokerHealthTestAction0")
                .with_version("0.0.1"),
            Identity::basic(
                "whisk.system",
                Namespace {
                    name: "whisk.system".into(),
                    uuid: "2f5b1c5c-1a7e-4b5e-9a4c-0f2d8e6f7a1b".into(),
                },
                "xyz",
                &[],
            ),
            "0123456789abcdef0123456789abcdef",
            ControllerInstanceId::controller("0"),
        )
        .build()
        .unwrap();
        assert_eq!(
            serde_json::to_value(&probe).unwrap(),
            serde_json::from_str::<Value>(HEALTH_ACTIVATION).unwrap()
        );
    }

    #[test]
    fn the_builder_refuses_ids_the_invoker_would_refuse() {
        let user = Identity::basic(
            "guest",
            Namespace {
                name: "guest".into(),
                uuid: "u".into(),
            },
            "k",
            &USER_RIGHTS,
        );
        let b = ActivationMessage::builder(
            TransactionId::new("t", 1),
            FullyQualifiedEntityName::new("guest", "hello"),
            user,
            "C7BB1339CB4F40E3A6CCEAD6C99F804E",
            ControllerInstanceId::controller("0"),
        );
        assert!(matches!(b.build(), Err(MessageError::ActivationId(_))));
    }

    #[test]
    fn acks_name_their_activation() {
        let instance = InvokerInstanceId::new(0, 1, None, None);
        let result = Ack::Result {
            transid: transid(),
            response: AckResponse::Full(Box::new(record())),
        };
        assert_eq!(result.activation_id(), "c7bb1339cb4f40e3a6ccead6c99f804e");
        assert_eq!(result.record(), Some(&record()));
        assert!(!result.frees_slot());
        assert_eq!(result.transid(), &transid());
        let shrunk = Ack::Combined {
            transid: transid(),
            response: AckResponse::Full(Box::new(record())),
            is_system_error: false,
            instance: instance.clone(),
        }
        .shrunk();
        assert_eq!(shrunk.activation_id(), "c7bb1339cb4f40e3a6ccead6c99f804e");
        assert_eq!(shrunk.record(), None);
        assert!(shrunk.frees_slot());
        let completion = Ack::Completion {
            transid: transid(),
            activation_id: "0123456789abcdef0123456789abcdef".into(),
            is_system_error: true,
            instance,
        };
        assert_eq!(
            completion.activation_id(),
            "0123456789abcdef0123456789abcdef"
        );
        assert!(completion.frees_slot());
        assert_eq!(record().annotation("initTime"), Some(&json!(212)));
        assert_eq!(record().annotation("nope"), None);
    }

    #[test]
    fn golden_ping() {
        let ping = PingMessage {
            name: InvokerInstanceId::new(0, 2_147_483_648, Some("0".into()), None),
            is_enabled: Some(true),
        };
        assert_eq!(
            serde_json::to_string(&ping).unwrap(),
            r#"{"name":{"instance":0,"userMemory":"2147483648 B","instanceType":"invoker","tags":[],"dedicatedNamespaces":[],"uniqueName":"0"},"isEnabled":true}"#
        );
    }

    #[test]
    fn activation_document() {
        let doc = record().to_document(1714560000600);
        assert_eq!(doc["_id"], "guest/c7bb1339cb4f40e3a6ccead6c99f804e");
        assert_eq!(doc["entityType"], "activation");
        assert_eq!(doc["updated"], 1714560000600_i64);
        assert_eq!(doc["response"]["statusCode"], 0);
        assert!(!record().is_system_error());
    }
}

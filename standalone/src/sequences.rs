//! Sequences, run as the controller's `SequenceActions` runs them: each component is its own
//! activation through Kafka to an invoker (blocking, `cause` = the sequence's activation id),
//! the result of one the input of the next; an inner sequence runs the same way with its own
//! record. A component whose result has an `error` field ends the sequence with that
//! result; a missing component, a component that does not answer in its time limit plus a
//! minute, or more than [`MAX_SEQUENCE_LENGTH`] atomic actions end it with the controller's
//! error. The front door writes the sequence's record, as the controller does: `logs` the
//! component activation ids, `response` the last component's, `duration` their sum,
//! annotations `topmost`, `path`, `kind: sequence`, `waitTime`, `causedBy` (inner sequences),
//! `binding` and `limits` (the largest memory of the components).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openwhisk::action::{ActionLimits, SEQUENCE};
use openwhisk::errors;
use openwhisk::messages::{ActivationResponse, KeyValue, WhiskActivation};
use openwhisk::time::now_ms;
use serde_json::{Map, Value, json};

pub use crate::actions::MAX_SEQUENCE_LENGTH;
use crate::actions::StoredAction;
use crate::api::App;
use crate::entities::{self, EntityError};
use crate::ids;
use crate::invocations::{self, Answer};
use crate::subjects::Identity;

/// How long a component may take beyond its own time limit before the sequence gives up on
/// it (the controller's `timeout + 1.minute`).
const COMPONENT_GRACE: Duration = Duration::from_secs(60);

/// Most sequences nested in one another under a topmost sequence. Only atomic actions count
/// against [`MAX_SEQUENCE_LENGTH`], so a cycle of sequences that runs none (closed behind the
/// create-time check, e.g. by re-pointing a binding, or by two updates racing) would otherwise
/// recurse without end; the controller has no such bound. A legitimate sequence nests at most
/// as deep as it has atomic actions plus chains of single-component sequences, far below this.
pub const MAX_SEQUENCE_DEPTH: usize = 2 * MAX_SEQUENCE_LENGTH;

/// Runs a topmost sequence and writes its record. A blocking caller waits up to `wait`; the
/// sequence goes on after that (and for a non-blocking caller) on its own task.
pub async fn invoke(
    app: &Arc<App>,
    user: &Identity,
    seq: StoredAction,
    params: Map<String, Value>,
    blocking: bool,
    wait: Duration,
) -> Answer {
    let id = ids::activation_id();
    let requested = now_ms();
    let task = tokio::spawn({
        let (app, user, id) = (app.clone(), user.clone(), id.clone());
        async move {
            let mut budget = Budget {
                atomic: 0,
                depth: 0,
            };
            let record = run(&app, &user, &seq, params, &id, None, &mut budget, requested).await;
            store(&app, &record).await;
            record.to_document(now_ms())
        }
    });
    if !blocking {
        return Answer::Accepted(id);
    }
    match tokio::time::timeout(wait, task).await {
        Ok(Ok(doc)) => Answer::Record(doc),
        // Still running (it finishes on its own), or its task panicked.
        _ => Answer::Accepted(id),
    }
}

async fn store(app: &App, record: &WhiskActivation) {
    if let Err(e) = app.activations.put(record).await {
        tracing::error!(activation = %record.activation_id, error = %errors::chain(&e), "the sequence's record was not stored");
    }
}

/// What a topmost sequence has used of its limits so far.
#[derive(Debug)]
struct Budget {
    /// Atomic actions run (the controller's `atomicActionCnt`).
    atomic: usize,
    /// Sequences entered and not yet ended, the topmost included.
    depth: usize,
}

/// Runs the components of `seq` and returns its record. `cause` is the enclosing sequence's
/// activation id (`None` for the topmost); `budget` what has run so far under the topmost
/// sequence.
#[allow(clippy::too_many_arguments)]
fn run<'a>(
    app: &'a Arc<App>,
    user: &'a Identity,
    seq: &'a StoredAction,
    input: Map<String, Value>,
    id: &'a str,
    cause: Option<&'a str>,
    budget: &'a mut Budget,
    requested: i64,
) -> Pin<Box<dyn Future<Output = WhiskActivation> + Send + 'a>> {
    Box::pin(async move {
        let start = now_ms();
        let mut acc = Accounting::new(input);
        budget.depth += 1;
        if budget.depth > MAX_SEQUENCE_DEPTH {
            acc.fail(application_error(TOO_LONG), None);
        }
        for component in seq.components.iter().flatten() {
            if acc.shortcircuit {
                break;
            }
            if budget.atomic >= MAX_SEQUENCE_LENGTH {
                acc.fail(application_error(TOO_LONG), None);
                break;
            }
            let next_input = acc.next_input();
            let action = match entities::parse_fqn(component, &user.namespace) {
                Ok((path, name)) => invocations::resolve(app, &path, &name, &user.namespace).await,
                Err(_) => Err(EntityError::NotFound),
            };
            let action = match action {
                Ok(a) => a,
                Err(EntityError::NotFound | EntityError::Forbidden | EntityError::Invalid(_)) => {
                    acc.fail(
                        application_error("Sequence component does not exist."),
                        None,
                    );
                    break;
                }
                Err(e) => {
                    tracing::error!(sequence = %id, component, error = %errors::chain(&e), "a sequence component could not be read");
                    acc.fail(whisk_error("Sequence failed."), None);
                    break;
                }
            };
            if action.components.is_some() {
                let inner_id = ids::activation_id();
                let inner = run(
                    app,
                    user,
                    &action,
                    next_input,
                    &inner_id,
                    Some(id),
                    budget,
                    requested,
                )
                .await;
                store(app, &inner).await;
                let doc = inner.to_document(now_ms());
                acc.record(&doc);
            } else {
                budget.atomic += 1;
                let wait = Duration::from_millis(action.timeout_ms) + COMPONENT_GRACE;
                match invocations::primitive(app, user, &action, next_input, true, wait, Some(id))
                    .await
                {
                    Ok(Answer::Record(doc)) => acc.record(&doc),
                    Ok(Answer::Accepted(aid)) => acc.fail(
                        whisk_error(&format!(
                            "Timeout reached when retrieving activation {aid} for sequence component."
                        )),
                        Some(aid),
                    ),
                    Err(e) => {
                        tracing::error!(sequence = %id, component, error = %errors::chain(&e), "a sequence component failed");
                        acc.fail(whisk_error("Sequence failed."), None);
                    }
                }
            }
        }
        budget.depth -= 1;
        acc.into_record(user, seq, id, cause, start, now_ms(), requested)
    })
}

/// What a sequence has gathered so far (the controller's `SequenceAccounting`).
#[derive(Debug)]
struct Accounting {
    /// The last component's response; the sequence's input before the first.
    response: ActivationResponse,
    /// The component activation ids.
    logs: Vec<String>,
    duration: i64,
    max_memory: Option<u64>,
    shortcircuit: bool,
}

impl Accounting {
    fn new(input: Map<String, Value>) -> Self {
        Self {
            response: ActivationResponse {
                status_code: 0,
                result: Some(Value::Object(input)),
                size: None,
            },
            logs: Vec::new(),
            duration: 0,
            max_memory: None,
            shortcircuit: false,
        }
    }

    /// The input of the next component: the last result when it is an object.
    fn next_input(&self) -> Map<String, Value> {
        match &self.response.result {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        }
    }

    /// A component's record (a stored document): its response becomes the sequence's, an
    /// `error` field in its result ends the sequence.
    fn record(&mut self, doc: &Value) {
        let response: ActivationResponse = serde_json::from_value(doc["response"].clone())
            .unwrap_or_else(|_| whisk_error("Sequence failed."));
        self.shortcircuit = response
            .result
            .as_ref()
            .is_some_and(|r| r.get("error").is_some());
        self.response = response;
        if let Some(id) = doc["activationId"].as_str() {
            self.logs.push(id.to_owned());
        }
        self.duration += doc["duration"].as_i64().unwrap_or(0);
        let memory = doc["annotations"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "limits")
            .and_then(|a| a["value"]["memory"].as_u64());
        self.max_memory = self.max_memory.max(memory);
    }

    /// The sequence ends with `response`; `activation_id` is the component's, if it has one.
    fn fail(&mut self, response: ActivationResponse, activation_id: Option<String>) {
        self.logs.extend(activation_id);
        self.response = response;
        self.shortcircuit = true;
    }

    #[allow(clippy::too_many_arguments)]
    fn into_record(
        self,
        user: &Identity,
        seq: &StoredAction,
        id: &str,
        cause: Option<&str>,
        start: i64,
        end: i64,
        requested: i64,
    ) -> WhiskActivation {
        let kv = |key: &str, value: Value| KeyValue {
            key: key.into(),
            value,
        };
        let topmost = cause.is_none();
        let mut annotations = vec![
            kv("topmost", Value::Bool(topmost)),
            kv("path", Value::String(seq.path())),
            kv("kind", Value::String(SEQUENCE.into())),
        ];
        if !topmost {
            annotations.push(kv("causedBy", Value::String(SEQUENCE.into())));
        }
        annotations.push(kv("waitTime", json!((start - requested).max(0))));
        if let Some(b) = &seq.binding {
            annotations.push(kv("binding", Value::String(b.clone())));
        }
        if let Some(memory) = self.max_memory {
            let limits = ActionLimits {
                memory,
                instances: None,
                ..seq.limits.clone()
            };
            annotations.push(kv(
                "limits",
                serde_json::to_value(limits).unwrap_or_default(),
            ));
        }
        WhiskActivation {
            namespace: user.namespace.clone(),
            name: seq.name.clone(),
            subject: user.subject.clone(),
            activation_id: id.to_owned(),
            start,
            end,
            duration: Some(self.duration),
            cause: cause.map(str::to_owned),
            response: self.response,
            logs: self.logs,
            version: seq.version.clone(),
            publish: false,
            annotations,
        }
    }
}

/// The controller's `sequenceIsTooLong`.
const TOO_LONG: &str = "Too many actions in the sequence.";

/// `ActivationResponse.applicationError`.
fn application_error(message: &str) -> ActivationResponse {
    ActivationResponse {
        status_code: 1,
        result: Some(json!({"error": message})),
        size: None,
    }
}

/// `ActivationResponse.whiskError`.
fn whisk_error(message: &str) -> ActivationResponse {
    ActivationResponse {
        status_code: 3,
        result: Some(json!({"error": message})),
        size: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(id: &str, code: u8, result: &Value, duration: i64, memory: u64) -> Value {
        json!({"activationId": id, "duration": duration,
               "response": {"statusCode": code, "result": result},
               "annotations": [{"key": "limits", "value": {"memory": memory, "timeout": 100, "logs": 10, "concurrency": 1}}]})
    }

    fn user() -> Identity {
        Identity {
            subject: "guest".into(),
            namespace: "guest".into(),
            uuid: "u".into(),
            key: "k".into(),
        }
    }

    fn seq() -> StoredAction {
        StoredAction {
            namespace: "guest/p".into(),
            name: "s".into(),
            rev: "1-x".into(),
            version: "0.0.3".into(),
            parameters: vec![],
            timeout_ms: 60_000,
            limits: ActionLimits::default(),
            annotations: vec![],
            binding: Some("guest/b".into()),
            components: Some(vec!["/guest/a".into(), "/guest/b".into()]),
        }
    }

    #[test]
    fn results_flow_from_one_component_to_the_next() {
        let mut acc = Accounting::new(json!({"x": 1}).as_object().cloned().unwrap());
        assert_eq!(Value::Object(acc.next_input()), json!({"x": 1}));
        acc.record(&component("a1", 0, &json!({"y": 2}), 5, 128));
        assert!(!acc.shortcircuit);
        assert_eq!(Value::Object(acc.next_input()), json!({"y": 2}));
        acc.record(&component("a2", 0, &json!({"z": 3}), 7, 256));
        let r = acc.into_record(&user(), &seq(), "s1", None, 100, 130, 90);
        assert_eq!(r.logs, vec!["a1", "a2"]);
        assert_eq!(r.duration, Some(12));
        assert_eq!(r.response.result, Some(json!({"z": 3})));
        assert_eq!(r.cause, None);
        let ann: Vec<(&str, &Value)> = r
            .annotations
            .iter()
            .map(|a| (a.key.as_str(), &a.value))
            .collect();
        assert_eq!(
            ann,
            vec![
                ("topmost", &json!(true)),
                ("path", &json!("guest/p/s")),
                ("kind", &json!("sequence")),
                ("waitTime", &json!(10)),
                ("binding", &json!("guest/b")),
                (
                    "limits",
                    &json!({"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1})
                ),
            ]
        );
    }

    #[test]
    fn an_error_ends_the_sequence_with_that_components_response() {
        let mut acc = Accounting::new(Map::new());
        acc.record(&component("a1", 1, &json!({"error": "boom"}), 5, 128));
        assert!(acc.shortcircuit);
        let r = acc.into_record(&user(), &seq(), "s1", Some("outer"), 0, 1, 0);
        assert_eq!(r.response.status_code, 1);
        assert_eq!(r.response.result, Some(json!({"error": "boom"})));
        assert_eq!(r.cause.as_deref(), Some("outer"));
        assert!(
            r.annotations
                .iter()
                .any(|a| a.key == "causedBy" && a.value == "sequence")
        );
        assert!(
            r.annotations
                .iter()
                .any(|a| a.key == "topmost" && a.value == false)
        );
    }

    #[test]
    fn failures_without_a_record_are_the_controllers_errors() {
        let mut acc = Accounting::new(Map::new());
        acc.fail(
            application_error("Sequence component does not exist."),
            None,
        );
        assert!(acc.shortcircuit);
        assert!(acc.logs.is_empty());
        acc.fail(whisk_error("Timeout reached"), Some("a9".into()));
        assert_eq!(acc.logs, vec!["a9"]);
        assert_eq!(acc.response.status_code, 3);
        let r = acc.into_record(&user(), &seq(), "s1", None, 0, 0, 0);
        assert!(
            !r.annotations.iter().any(|a| a.key == "limits"),
            "no component ran"
        );
    }
}

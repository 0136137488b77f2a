//! The controller's part on Kafka: `ActivationMessage`s written to a healthy invoker's topic,
//! acks read from `completed<C>` and handed to the callers waiting for them, pings read from
//! `health` (contract §2, §3, §7).
//!
//! Consumers: `completed<C>` in group `completed<C>` from the earliest uncommitted ack (an ack
//! produced while the front door starts is not lost), committed automatically; `health` in group
//! `health<C>` from the latest ping (old pings say nothing about now).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openwhisk::kafka::{self, KafkaSetupError, TopicKind};
use openwhisk::messages::{
    self, Ack, AckResponse, ActivationMessage, ControllerInstanceId, FullyQualifiedEntityName,
    MessageError, Namespace, PingMessage, TransactionId, USER_RIGHTS, WhiskActivation,
};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::actions::StoredAction;
use crate::health::{self, Health};
use crate::ids;
use crate::subjects::Identity;

/// How long start-up waits for the ack consumer to be assigned its partition.
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the Kafka side.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("kafka client for {what}")]
    Client {
        what: String,
        #[source]
        source: KafkaError,
    },
    #[error("the consumer of {0} was not assigned a partition within 30 s")]
    NotAssigned(String),
    /// 503 to the caller.
    #[error("No invokers available.")]
    NoInvokers,
    #[error("activation {activation_id} cannot be written")]
    Message {
        activation_id: String,
        #[source]
        source: MessageError,
    },
    #[error("producing the activation to {topic}")]
    Produce {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

/// What a blocking caller learns from `completed<C>`.
#[derive(Debug)]
pub enum Outcome {
    /// The record came with the ack.
    Record(Box<WhiskActivation>),
    /// The ack carried only the id (record too large, or a completion without a result): the
    /// record is in the activations database.
    InDatabase,
}

/// An activation on its way.
#[derive(Debug)]
pub struct Pending {
    pub activation_id: String,
    pub invoker: u32,
    /// For blocking activations: resolved by the first ack that carries the result.
    pub outcome: Option<oneshot::Receiver<Outcome>>,
}

/// The Kafka side of the front door.
pub struct Controller {
    instance: String,
    topics_prefix: String,
    producer: FutureProducer,
    waiters: parking_lot::Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    pub health: Health,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("instance", &self.instance)
            .field("topics_prefix", &self.topics_prefix)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Ensures `completed<C>` and `health`, starts both consumers (until `cancel`) and returns
    /// once acks can be received.
    pub async fn start(
        kafka_hosts: &str,
        topics_prefix: &str,
        instance: &str,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, ControllerError> {
        let client = |what: &str| {
            let what = what.to_owned();
            move |source| ControllerError::Client { what, source }
        };
        let completed = format!("{topics_prefix}completed{instance}");
        let health_topic = format!("{topics_prefix}health");
        let admin = kafka::admin_client(kafka_hosts)?;
        kafka::ensure_topic(&admin, &completed, &TopicKind::Completed.default_config()).await?;
        kafka::ensure_topic(&admin, &health_topic, &TopicKind::Health.default_config()).await?;
        drop(admin);

        let producer: FutureProducer = kafka::producer_config(kafka_hosts)
            .create()
            .map_err(client("the producer"))?;
        let acks: StreamConsumer =
            kafka::consumer_config(kafka_hosts, &format!("completed{instance}"))
                .set("enable.auto.commit", "true")
                .set("enable.auto.offset.store", "true")
                .create()
                .map_err(client(&completed))?;
        acks.subscribe(&[&completed]).map_err(client(&completed))?;
        let pings: StreamConsumer =
            kafka::consumer_config(kafka_hosts, &format!("health{instance}"))
                .set("auto.offset.reset", "latest")
                .create()
                .map_err(client(&health_topic))?;
        pings
            .subscribe(&[&health_topic])
            .map_err(client(&health_topic))?;

        let controller = Arc::new(Self {
            instance: instance.to_owned(),
            topics_prefix: topics_prefix.to_owned(),
            producer,
            waiters: parking_lot::Mutex::new(HashMap::new()),
            health: Health::new(),
        });
        let acks = Arc::new(acks);
        tokio::spawn(Self::consume(
            Arc::downgrade(&controller),
            acks.clone(),
            cancel.clone(),
            "acks",
            Self::route,
        ));
        tokio::spawn(Self::consume(
            Arc::downgrade(&controller),
            Box::new(pings),
            cancel.clone(),
            "pings",
            |me: &Self, p: PingMessage| me.health.ping(&p),
        ));
        let deadline = tokio::time::Instant::now() + ASSIGNMENT_TIMEOUT;
        while acks.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
            if tokio::time::Instant::now() > deadline {
                return Err(ControllerError::NotAssigned(completed));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(controller)
    }

    /// Reads `consumer` until `cancel` or until the controller is gone, handing each message
    /// parsed as `T` to `on`; what does not parse is logged and skipped.
    async fn consume<C, T>(
        me: std::sync::Weak<Self>,
        consumer: C,
        cancel: CancellationToken,
        what: &'static str,
        on: fn(&Self, T),
    ) where
        C: std::ops::Deref<Target = StreamConsumer>,
        T: serde::de::DeserializeOwned,
    {
        let mut stream = consumer.stream();
        loop {
            let next = tokio::select! {
                n = stream.next() => n,
                () = cancel.cancelled() => return,
            };
            let Some(me) = me.upgrade() else { return };
            match next {
                Some(Ok(m)) => match serde_json::from_slice::<T>(m.payload().unwrap_or_default()) {
                    Ok(v) => on(&me, v),
                    Err(e) => tracing::warn!(error = %e, what, "a message of the wrong shape"),
                },
                Some(Err(e)) => tracing::warn!(error = %e, what, "reading failed"),
                None => return,
            }
        }
    }

    /// Hands an ack to its waiter and counts completions for health.
    fn route(&self, ack: Ack) {
        let (id, outcome) = match ack {
            Ack::Result { response, .. } => outcome_of(response),
            Ack::Combined {
                response,
                is_system_error,
                instance,
                ..
            } => {
                self.health.completion(instance.instance, is_system_error);
                outcome_of(response)
            }
            Ack::Completion {
                activation_id,
                is_system_error,
                instance,
                ..
            } => {
                self.health.completion(instance.instance, is_system_error);
                (activation_id, Outcome::InDatabase)
            }
        };
        let waiter = self.waiters.lock().remove(&id);
        if let Some(w) = waiter {
            let _ = w.send(outcome);
        }
    }

    /// Forgets a waiter whose caller gave up.
    pub fn forget(&self, activation_id: &str) {
        self.waiters.lock().remove(activation_id);
    }

    /// Writes the `ActivationMessage` a controller would write to the action's home invoker.
    /// `params` are the request's parameters; the action's own are merged under them. `cause`
    /// is the activation id of the sequence this activation is a component of.
    pub async fn activate(
        &self,
        user: &Identity,
        action: &StoredAction,
        params: Map<String, Value>,
        blocking: bool,
        cause: Option<&str>,
    ) -> Result<Pending, ControllerError> {
        let invoker = health::home(&self.health.healthy(), &action.namespace, &action.name)
            .ok_or(ControllerError::NoInvokers)?;
        let activation_id = ids::activation_id();
        let message = activation_message(
            TransactionId::new(&ids::transaction_id(), openwhisk::time::now_ms()),
            &self.instance,
            user,
            action,
            params,
            blocking,
            &activation_id,
            cause,
        )
        .map_err(|source| ControllerError::Message {
            activation_id: activation_id.clone(),
            source,
        })?;
        let outcome = blocking.then(|| {
            let (tx, rx) = oneshot::channel();
            self.waiters.lock().insert(activation_id.clone(), tx);
            rx
        });
        let topic = format!("{}invoker{invoker}", self.topics_prefix);
        let payload = message.to_json();
        let sent = self
            .producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&payload),
                Duration::from_secs(10),
            )
            .await;
        if let Err((source, _)) = sent {
            self.forget(&activation_id);
            return Err(ControllerError::Produce { topic, source });
        }
        tracing::debug!(activation = %activation_id, invoker, blocking, "activation produced");
        Ok(Pending {
            activation_id,
            invoker,
            outcome,
        })
    }
}

/// The message a controller writes for `action`: its parameters merged under the request's
/// `params`, the `init` ones named in `initArgs`; the action's path is the package that holds
/// it and `binding` the binding it was invoked through, as `PrimitiveActions` writes them.
#[allow(clippy::too_many_arguments)]
fn activation_message(
    transid: TransactionId,
    controller: &str,
    user: &Identity,
    action: &StoredAction,
    params: Map<String, Value>,
    blocking: bool,
    activation_id: &str,
    cause: Option<&str>,
) -> Result<ActivationMessage, MessageError> {
    let mut content = Map::new();
    let mut init_args = Vec::new();
    for p in &action.parameters {
        if p.init {
            init_args.push(p.key.clone());
        }
        content.insert(p.key.clone(), p.value.clone());
    }
    content.extend(params);
    let mut name = FullyQualifiedEntityName::new(&action.namespace, &action.name)
        .with_version(&action.version);
    name.binding.clone_from(&action.binding);
    let message = ActivationMessage::builder(
        transid,
        name,
        user_identity(user),
        activation_id,
        ControllerInstanceId::controller(controller),
    )
    .revision(&action.rev)
    .blocking(blocking)
    .content(Value::Object(content))
    .init_args(init_args);
    match cause {
        Some(c) => message.cause(c),
        None => message,
    }
    .build()
}

/// The `user` of an `ActivationMessage` for an authenticated caller: its own namespace, all
/// user rights, no namespace limits.
fn user_identity(user: &Identity) -> messages::Identity {
    messages::Identity::basic(
        &user.subject,
        Namespace {
            name: user.namespace.clone(),
            uuid: user.uuid.clone(),
        },
        &user.key,
        &USER_RIGHTS,
    )
}

fn outcome_of(response: AckResponse) -> (String, Outcome) {
    match response {
        AckResponse::Full(a) => (a.activation_id.clone(), Outcome::Record(a)),
        AckResponse::Shrunk(id) => (id, Outcome::InDatabase),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openwhisk::action::Parameter;
    use serde_json::json;

    #[test]
    fn activations_are_written_as_the_controller_writes_them() {
        let user = Identity {
            subject: "guest".into(),
            namespace: "guest".into(),
            uuid: "23bc46b1-71f6-4ed5-8c54-816aa4f8c502".into(),
            key: "123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP".into(),
        };
        let action = StoredAction {
            namespace: "guest".into(),
            name: "hello".into(),
            rev: "1-967a00dff5e02add41819138abb3284d".into(),
            version: "0.0.2".into(),
            parameters: vec![
                Parameter::new("greeting", json!("Hi")),
                Parameter::new("name", json!("nobody")),
                Parameter {
                    init: true,
                    ..Parameter::new("token", json!("x"))
                },
            ],
            timeout_ms: 60_000,
            limits: openwhisk::action::ActionLimits::default(),
            annotations: vec![],
            binding: None,
            components: None,
        };
        let params = json!({"name": "World"}).as_object().cloned().unwrap();
        let m = activation_message(
            TransactionId::new("dbyaSw8MclQ8z5XrHc1OHanU8v1yAmMS", 1714560000123),
            "0",
            &user,
            &action,
            params,
            true,
            "c7bb1339cb4f40e3a6ccead6c99f804e",
            None,
        )
        .unwrap();
        let expected = ActivationMessage {
            transid: TransactionId::new("dbyaSw8MclQ8z5XrHc1OHanU8v1yAmMS", 1714560000123),
            action: FullyQualifiedEntityName {
                path: "guest".into(),
                name: "hello".into(),
                version: Some("0.0.2".into()),
                binding: None,
            },
            revision: Some("1-967a00dff5e02add41819138abb3284d".into()),
            user: messages::Identity {
                subject: "guest".into(),
                namespace: Namespace {
                    name: "guest".into(),
                    uuid: "23bc46b1-71f6-4ed5-8c54-816aa4f8c502".into(),
                },
                authkey: json!({"api_key": "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP"}),
                rights: vec![
                    "READ".into(),
                    "PUT".into(),
                    "DELETE".into(),
                    "ACTIVATE".into(),
                ],
                limits: Map::new(),
            },
            activation_id: "c7bb1339cb4f40e3a6ccead6c99f804e".into(),
            root_controller_index: ControllerInstanceId {
                as_string: "0".into(),
                instance_type: "controller".into(),
            },
            blocking: true,
            // The action's parameters under the request's.
            content: Some(json!({"greeting": "Hi", "name": "World", "token": "x"})),
            init_args: vec!["token".into()],
            locked_args: Map::new(),
            cause: None,
            trace_context: None,
        };
        // (The JSON of each field is the golden test's in `openwhisk::messages`.)
        assert_eq!(m, expected);
        // The invoker reads it back.
        assert_eq!(ActivationMessage::parse(m.to_json().as_bytes()).unwrap(), m);
        // A packaged action invoked through a binding, as a sequence's component: the path is
        // the package's, the binding and the cause are named.
        let packaged = StoredAction {
            namespace: "guest/utils".into(),
            binding: Some("guest/mine".into()),
            ..action
        };
        let m = activation_message(
            TransactionId::new("dbyaSw8MclQ8z5XrHc1OHanU8v1yAmMS", 1714560000123),
            "0",
            &user,
            &packaged,
            Map::new(),
            true,
            "c7bb1339cb4f40e3a6ccead6c99f804f",
            Some("c7bb1339cb4f40e3a6ccead6c99f8000"),
        )
        .unwrap();
        let wire: Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(
            wire["action"],
            json!({"path": "guest/utils", "name": "hello", "version": "0.0.2", "binding": "guest/mine"})
        );
        assert_eq!(wire["cause"], "c7bb1339cb4f40e3a6ccead6c99f8000");
        // The `user` is what the subjects store has always sent.
        assert_eq!(
            serde_json::to_value(user_identity(&user)).unwrap(),
            user.to_message()
        );
    }
}

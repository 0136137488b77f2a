//! Running one activation end to end (contract §4–§6): fetch the action, check limits, get a
//! container, `/init` once, `/run`, build the activation record, send the acks in the order of
//! §3.3, collect logs, store the record, hand the container back.
//!
//! Every parsed message produces an ack, whatever fails; the record is stored before the
//! slot-freeing ack when logs are collected (so a re-delivered activation whose ack was sent
//! finds its record, see `docs/architecture.md`, "Delivery semantics").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use openwhisk::time::now_ms;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Map, Value, json};

use crate::action::{ActionStore, Exec, check_namespace_limits};
use crate::container::CreateError;
use crate::container::logs::{self, Collect};
use crate::container::proxy::{self, Answer, Broken, ProxyClient};
use crate::pool::{ContainerPool, InitState};
use openwhisk::couchdb::{CouchDb, CouchDbError};
use openwhisk::messages::{
    Ack, AckResponse, ActivationMessage, ActivationResponse, EventMessage, InvokerInstanceId,
    KeyValue, PingMessage, WhiskActivation,
};
use openwhisk::settings::Settings;

pub const PROVISION_ERROR: &str = "Failed to provision resources to run the action.";

/// Everything an activation needs; shared by all activations.
pub struct Invoker {
    pub settings: Settings,
    pub instance: InvokerInstanceId,
    pub actions: ActionStore,
    pub pool: ContainerPool,
    pub proxy: ProxyClient,
    pub producer: FutureProducer,
    pub db: CouchDb,
    pub records: crate::store::RecordStore,
    pub enabled: AtomicBool,
}

impl std::fmt::Debug for Invoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invoker")
            .field("instance", &self.instance)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value,
    }
}

impl Invoker {
    /// Handles one parsed activation message; never fails: errors become error activations.
    pub async fn handle(self: &Arc<Self>, msg: ActivationMessage) {
        let span = tracing::info_span!("activation", id = %msg.activation_id, action = %msg.action.qualified());
        let started = Instant::now();
        tracing::Instrument::instrument(self.clone().handle_inner(msg), span).await;
        metrics::histogram!(crate::metrics::ACTIVATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
    }

    async fn handle_inner(self: Arc<Self>, msg: ActivationMessage) {
        let action = match self
            .actions
            .get(&msg.action.path, &msg.action.name, msg.revision.as_deref())
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(error = %e, "action fetch failed");
                let (code, text) = e.response();
                let response = match code {
                    1 => proxy::application_error(text),
                    _ => proxy::whisk_error(text),
                };
                return self.fallback(&msg, response).await;
            }
        };
        if matches!(action.exec, Exec::Sequence) {
            return self
                .fallback(&msg, proxy::whisk_error(crate::action::ACTION_FETCH_ERROR))
                .await;
        }
        if let Err(text) = check_namespace_limits(&action, &msg.user.limits) {
            return self.fallback(&msg, proxy::application_error(&text)).await;
        }
        let lease = match self.pool.acquire(&action, &msg.user.namespace.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %openwhisk::errors::chain(&e), "no container");
                let response = match &e {
                    CreateError::ImagePull { image, .. } => proxy::developer_error(Value::String(
                        format!("Failed to pull container image '{image}'."),
                    )),
                    CreateError::NoExecutable { image, .. } => proxy::developer_error(
                        Value::String(format!("executable file not found in image {image}")),
                    ),
                    CreateError::Provision(_)
                    | CreateError::NotRunnable
                    | CreateError::ShuttingDown
                    | CreateError::TooBig { .. }
                    | CreateError::JoinedFailed(_)
                    | CreateError::Abandoned => proxy::whisk_error(PROVISION_ERROR),
                };
                return self.fallback_with(&msg, response, action.kind()).await;
            }
        };
        let addr = lease.container.addr();
        let limit = Duration::from_millis(action.limits.timeout_ms);
        let Exec::Runnable {
            code,
            main,
            binary,
            sentinelled,
            ..
        } = &action.exec
        else {
            unreachable!("sequences were refused above")
        };
        let deadline = now_ms() + i64::try_from(action.limits.timeout_ms).unwrap_or(i64::MAX);
        let tx_start = msg.transid.start_ms().unwrap_or_else(now_ms);
        let api_key = action
            .provides_api_key()
            .then(|| msg.user.authkey.get("api_key").cloned())
            .flatten();

        // /init, once per container.
        let mut init_ms = None;
        let mut start_ms = now_ms();
        let mut response: Option<ActivationResponse> = None;
        let mut timed_out = false;
        {
            let mut initialized = lease.initialized.lock().await;
            if let InitState::Failed(r) = &*initialized {
                // A concurrent run initialized this container and failed: so does this run.
                response = Some(r.clone());
            } else if matches!(*initialized, InitState::Pending) {
                let mut env = Map::new();
                for p in action.parameters.iter().filter(|p| p.init) {
                    env.insert(p.key.clone(), Value::String(stringify(&p.value)));
                }
                let ctx = [
                    (
                        "__OW_NAMESPACE",
                        Value::String(msg.user.namespace.name.clone()),
                    ),
                    (
                        "__OW_ACTION_NAME",
                        Value::String(format!("/{}", msg.action.qualified())),
                    ),
                    ("__OW_ACTION_VERSION", Value::String(action.version.clone())),
                    (
                        "__OW_ACTIVATION_ID",
                        Value::String(msg.activation_id.clone()),
                    ),
                    ("__OW_TRANSACTION_ID", Value::String(msg.transid.id())),
                    ("__OW_DEADLINE", Value::String(deadline.to_string())),
                ];
                for (k, v) in ctx {
                    env.insert(k.into(), v);
                }
                if let Some(k) = &api_key {
                    env.insert("__OW_API_KEY".into(), Value::String(stringify(k)));
                }
                let mut value = json!({
                    "name": action.name,
                    "main": main.clone().unwrap_or_else(|| "main".into()),
                    "binary": binary,
                    "env": env,
                });
                if let Some(code) = code {
                    value["code"] = Value::String(code.clone());
                }
                let wasm = action.kind() == WASM_ACTION_KIND;
                if wasm {
                    // The unikernel stops a run at the action's time limit itself.
                    value["timeout"] = json!(action.limits.timeout_ms);
                }
                let assembled = match (wasm, code) {
                    (true, Some(code)) if !*binary => Some(assemble_wat(code.clone()).await),
                    _ => None,
                };
                start_ms = now_ms();
                let init_started = Instant::now();
                let answer = match assembled {
                    // What a runtime that refuses the code answers.
                    Some(Err(message)) => Some((
                        Answer::Http {
                            status: 502,
                            content_length: None,
                            body: json!({ "error": message }).to_string().into_bytes(),
                        },
                        init_started.elapsed(),
                    )),
                    Some(Ok(module)) => {
                        value["code"] = Value::String(module);
                        value["binary"] = Value::Bool(true);
                        None
                    }
                    None => None,
                };
                let (answer, took) = match answer {
                    Some(failed) => failed,
                    None => {
                        let init_body = json!({ "value": value });
                        tokio::select! {
                            a = self.proxy.init(addr, &init_body, limit, self.settings.payload_max) => a,
                            () = lease.container.ended() => (Answer::Broken(Broken::Other), init_started.elapsed()),
                        }
                    }
                };
                init_ms = Some(i64::try_from(took.as_millis()).unwrap_or(i64::MAX));
                let oom = matches!(answer, Answer::Broken(_)) && lease.container.oom_killed().await;
                match proxy::init_verdict(&answer, action.limits.timeout_ms, oom) {
                    Ok(()) => *initialized = InitState::Done,
                    Err(r) => {
                        timed_out = matches!(answer, Answer::Timeout);
                        *initialized = InitState::Failed(r.clone());
                        response = Some(r);
                    }
                }
            }
        }
        // /run.
        let run_start = now_ms();
        if init_ms.is_none() {
            start_ms = run_start;
        }
        if response.is_none() {
            // The controller merged package and action parameters into `content` already.
            let value = match &msg.content {
                Some(Value::Object(o)) => {
                    let mut o = o.clone();
                    for k in &msg.init_args {
                        o.remove(k);
                    }
                    Value::Object(o)
                }
                Some(other) => other.clone(),
                None => json!({}),
            };
            let mut body = json!({
                "value": value,
                "namespace": msg.user.namespace.name,
                "action_name": format!("/{}", msg.action.qualified()),
                "action_version": action.version,
                "activation_id": msg.activation_id,
                "transaction_id": msg.transid.id(),
                "deadline": deadline.to_string(),
            });
            if let Some(k) = &api_key {
                body["api_key"] = k.clone();
            }
            let (answer, _) = tokio::select! {
                a = self.proxy.run(addr, &body, limit, self.settings.payload_max) => a,
                // A sandbox that ended mid-run is a broken connection, as for a container.
                () = lease.container.ended() => (Answer::Broken(Broken::Other), Duration::ZERO),
            };
            timed_out = matches!(answer, Answer::Timeout);
            let oom = matches!(answer, Answer::Broken(_)) && lease.container.oom_killed().await;
            response = Some(proxy::run_response(
                &answer,
                action.limits.timeout_ms,
                self.settings.payload_max,
                oom,
            ));
        }
        let response = response.expect("init or run produced a response");
        let end_ms = now_ms();
        let status = response.status_code;

        let mut annotations = vec![
            kv("limits", action.limits.json.clone()),
            kv(
                "path",
                Value::String(format!("{}/{}", action.namespace, action.name)),
            ),
            kv("kind", Value::String(action.kind().to_owned())),
            kv("timeout", Value::Bool(timed_out)),
        ];
        if let Some(ms) = init_ms {
            annotations.push(kv("initTime", json!(ms)));
        }
        annotations.push(kv("waitTime", json!((start_ms - tx_start).max(0))));
        if msg.cause.is_some() {
            annotations.push(kv("causedBy", json!("sequence")));
        }
        if let Some(b) = &msg.action.binding {
            annotations.push(kv("binding", json!(b)));
        }
        let mut activation = WhiskActivation {
            namespace: msg.user.namespace.name.clone(),
            name: action.name.clone(),
            subject: msg.user.subject.clone(),
            activation_id: msg.activation_id.clone(),
            start: start_ms,
            end: end_ms,
            duration: Some(end_ms - start_ms),
            cause: msg.cause.clone(),
            response,
            logs: Vec::new(),
            version: action.version.clone(),
            publish: action.publish,
            annotations,
        };
        tracing::debug!(start = ?lease.start, status, "activation ran");

        let logs = lease
            .container
            .logs()
            .filter(|_| self.settings.collect_logs && action.limits.logs_mb > 0 && !lease.shared);
        let mut healthy = status < 2;
        if let Some(logs) = logs {
            if msg.blocking {
                self.send_ack(&msg, result_ack(&msg, &activation)).await;
            }
            let collected = logs::collect(
                &mut **logs.lock().await,
                Collect {
                    limit_bytes: action.limits.logs_mb << 20,
                    wait: *sentinelled && status < 2,
                    developer_error: status == 2,
                    idle_timeout: Duration::from_secs(2),
                },
            )
            .await;
            healthy &= !collected.failed;
            activation.logs = collected.lines;
            lease.finish(healthy);
            self.store(&msg, &activation).await;
            self.send_ack(&msg, completion_ack(&msg, &activation, &self.instance))
                .await;
        } else {
            lease.finish(healthy);
            self.send_ack(&msg, combined_ack(&msg, &activation, &self.instance))
                .await;
            self.store(&msg, &activation).await;
        }
    }

    /// A fetch or limit error: a zero-length activation, a combined ack, stored.
    async fn fallback(&self, msg: &ActivationMessage, response: ActivationResponse) {
        self.fallback_with(msg, response, "unknown").await;
    }

    async fn fallback_with(
        &self,
        msg: &ActivationMessage,
        response: ActivationResponse,
        kind: &str,
    ) {
        let now = now_ms();
        let mut annotations = vec![
            kv("path", Value::String(msg.action.qualified())),
            kv("kind", Value::String(kind.to_owned())),
        ];
        if msg.cause.is_some() {
            annotations.push(kv("causedBy", json!("sequence")));
        }
        let activation = WhiskActivation {
            namespace: msg.user.namespace.name.clone(),
            name: msg.action.name.clone(),
            subject: msg.user.subject.clone(),
            activation_id: msg.activation_id.clone(),
            start: now,
            end: now,
            duration: Some(0),
            cause: msg.cause.clone(),
            response,
            logs: Vec::new(),
            version: msg.action.version.clone().unwrap_or_else(|| "0.0.1".into()),
            publish: false,
            annotations,
        };
        self.send_ack(msg, combined_ack(msg, &activation, &self.instance))
            .await;
        self.store(msg, &activation).await;
    }

    /// Stores the record if the store level and the user's limits say so (batched; retried
    /// while the database is unavailable, see [`crate::store`]), and counts the activation.
    async fn store(&self, msg: &ActivationMessage, activation: &WhiskActivation) {
        metrics::counter!(
            crate::metrics::ACTIVATIONS_TOTAL,
            "status" => crate::metrics::status_label(activation.response.status_code)
        )
        .increment(1);
        self.publish_event(msg, activation).await;
        let level = if msg.blocking {
            self.settings.store_blocking
        } else {
            self.settings.store_non_blocking
        };
        let user_allows = msg
            .user
            .limits
            .get("storeActivations")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if !user_allows || !level.stores(activation.response.status_code) {
            return;
        }
        let doc = activation.to_document(now_ms());
        match self.records.store(doc).await {
            crate::store::Stored::Written => {}
            crate::store::Stored::AlreadyThere => {
                tracing::info!("a record of this activation exists already; kept the first");
            }
            crate::store::Stored::Lost(why) => {
                metrics::counter!(crate::metrics::RECORDS_LOST_TOTAL).increment(1);
                tracing::error!(why, "activation record lost");
            }
        }
    }

    /// Sends an ack to `completed<C>`: non-blocking acks shrunk; a record too large for the
    /// topic re-sent shrunk; other errors retried 3 times.
    pub async fn send_ack(&self, msg: &ActivationMessage, ack: Ack) {
        let ack = if msg.blocking { ack } else { ack.shrunk() };
        let kind = match &ack {
            Ack::Result { .. } => "result",
            Ack::Completion { .. } => "completion",
            Ack::Combined { .. } => "combined",
        };
        metrics::counter!(crate::metrics::ACKS_TOTAL, "kind" => kind).increment(1);
        let topic = self
            .settings
            .topic(&format!("completed{}", msg.root_controller_index.as_string));
        let mut payload = serde_json::to_string(&ack).unwrap_or_default();
        for attempt in 0..4 {
            let sent = self
                .producer
                .send(
                    FutureRecord::<(), _>::to(&topic).payload(&payload),
                    Duration::from_secs(30),
                )
                .await;
            match sent {
                Ok(_) => return,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge,
                    ),
                    _,
                )) => {
                    payload = serde_json::to_string(&ack.shrunk()).unwrap_or_default();
                }
                Err((e, _)) => {
                    tracing::warn!(error = %e, attempt, topic, "ack send failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::error!(topic, "ack lost after retries");
    }

    /// Re-sends the ack of an activation whose record exists (a re-delivered message that was
    /// processed before a crash). Returns false when there is no record.
    pub async fn answer_from_record(&self, msg: &ActivationMessage) -> Result<bool, CouchDbError> {
        let id = format!("{}/{}", msg.user.namespace.name, msg.activation_id);
        let doc = match self.db.get_doc(&self.settings.db_activations, &id).await {
            Ok(d) => d,
            Err(CouchDbError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Ok(activation) = serde_json::from_value::<WhiskActivation>(doc) else {
            return Ok(false);
        };
        tracing::info!(id = %msg.activation_id, "re-delivered activation answered from its record");
        metrics::counter!(crate::metrics::REDELIVERED_TOTAL).increment(1);
        self.send_ack(msg, combined_ack(msg, &activation, &self.instance))
            .await;
        Ok(true)
    }

    /// The user event of contract §3.5 on `<UP>events`, when `whisk.user-events.enabled`.
    async fn publish_event(&self, msg: &ActivationMessage, a: &WhiskActivation) {
        if !self.settings.user_events {
            return;
        }
        let event = EventMessage::activation(msg, a, self.instance.instance, now_ms());
        let topic = format!("{}events", self.settings.user_events_prefix);
        self.send_once(&topic, &event.to_json(), "user event lost")
            .await;
    }

    /// One record on `topic`; a failure is logged as `failure`.
    async fn send_once(&self, topic: &str, payload: &str, failure: &str) {
        if let Err((e, _)) = self
            .producer
            .send(
                FutureRecord::<(), _>::to(topic).payload(payload),
                Duration::from_secs(5),
            )
            .await
        {
            tracing::warn!(error = %e, topic, "{failure}");
        }
    }

    /// One ping on `health`.
    pub async fn ping(&self, enabled: bool) {
        let ping = PingMessage {
            name: self.instance.clone(),
            is_enabled: (!enabled).then_some(false),
        };
        let payload = serde_json::to_string(&ping).unwrap_or_default();
        let topic = self.settings.topic("health");
        self.send_once(&topic, &payload, "health ping failed").await;
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }
}

fn result_ack(msg: &ActivationMessage, a: &WhiskActivation) -> Ack {
    Ack::Result {
        transid: msg.transid.clone(),
        response: AckResponse::Full(Box::new(a.clone())),
    }
}

fn completion_ack(
    msg: &ActivationMessage,
    a: &WhiskActivation,
    instance: &InvokerInstanceId,
) -> Ack {
    Ack::Completion {
        transid: msg.transid.clone(),
        activation_id: a.activation_id.clone(),
        is_system_error: a.is_system_error(),
        instance: instance.clone(),
    }
}

fn combined_ack(msg: &ActivationMessage, a: &WhiskActivation, instance: &InvokerInstanceId) -> Ack {
    Ack::Combined {
        transid: msg.transid.clone(),
        response: AckResponse::Full(Box::new(a.clone())),
        is_system_error: a.is_system_error(),
        instance: instance.clone(),
    }
}

/// The kind the WebAssembly unikernel runs (`unikernel/`).
const WASM_ACTION_KIND: &str = "wasm:0.1";

/// `wasm:0.1` code given as WebAssembly text, assembled into the base64 binary module the
/// unikernel reads; or the developer's error. Off the workers: a large module takes a while.
async fn assemble_wat(text: String) -> Result<String, String> {
    use base64::Engine;
    let assembled = tokio::task::spawn_blocking(move || {
        wat::parse_str(&text).map(|module| base64::engine::general_purpose::STANDARD.encode(module))
    })
    .await;
    match assembled {
        Ok(Ok(module)) => Ok(module),
        Ok(Err(e)) => Err(format!(
            "The action's WebAssembly text does not assemble: {e}"
        )),
        Err(e) => Err(format!(
            "The action's WebAssembly text was not assembled: {e}"
        )),
    }
}

/// A parameter value as an `/init` env string: strings as is, `null` empty, others as JSON.
fn stringify(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod wasm_tests {
    use base64::Engine;

    use super::assemble_wat;

    #[tokio::test]
    async fn webassembly_text_is_assembled_into_a_base64_module() {
        let b64 = assemble_wat(r#"(module (func (export "_start")))"#.into())
            .await
            .unwrap();
        let module = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(&module[..4], b"\0asm");
        let e = assemble_wat("(module (func (export \"_start\") (i32.bogus)))".into())
            .await
            .unwrap_err();
        assert!(
            e.starts_with("The action's WebAssembly text does not assemble: "),
            "{e}"
        );
    }
}

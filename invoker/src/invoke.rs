//! Running one activation end to end (contract §4–§6): fetch the action, check limits, get a
//! container, `/init` once, `/run`, build the activation record, send the acks in the order of
//! §3.3, collect logs, store the record, hand the container back.
//!
//! Every parsed message produces an ack, whatever fails; the record is stored before the
//! slot-freeing ack when logs are collected (so a re-delivered activation whose ack was sent
//! finds its record, see `docs/architecture.md`, "Delivery semantics").
//!
//! An activation returns from [`Invoker::process`] only once the broker accepted its acks (the
//! producer's delivery report) and the database answered for its record: while either is down
//! both are retried with capped exponential back-off, the component is reported down
//! ([`Components`]) and the feed keeps the activation's offset uncommitted. A panic in an
//! activation becomes a system error activation with its ack and record. After the feed's
//! `stop` (the shutdown grace period is over) an activation that has not begun to deliver its
//! acks is ended with a system error instead.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use openwhisk::time::now_ms;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

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
/// The error of an activation still running when the shutdown grace period ended.
pub const SHUTDOWN_ERROR: &str = "The invoker shut down before the action completed.";
/// The first pause after a failed ack; it doubles up to [`ACK_MAX_RETRY_PAUSE`].
pub const ACK_FIRST_RETRY_PAUSE: Duration = Duration::from_millis(100);
pub const ACK_MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Pauses that double from `first` up to `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first.min(max),
            max,
        }
    }

    /// The pause before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }
}

/// A component the invoker needs to finish an activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The broker, which takes the acks.
    Broker,
    /// The database, which takes the records.
    Store,
}

impl Component {
    /// The `component` label of [`crate::metrics::COMPONENT_DOWN`].
    pub fn label(self) -> &'static str {
        match self {
            Self::Broker => "kafka",
            Self::Store => "couchdb",
        }
    }
}

/// Which components are down: one whose last attempt failed and is being retried. While one
/// is, the invoker stops its health pings, so the controller stops sending it work.
#[derive(Debug, Default)]
pub struct Components {
    broker: AtomicBool,
    store: AtomicBool,
}

impl Components {
    /// Both up, and the gauge says so (it is on `/metrics` before anything fails).
    pub fn new() -> Self {
        for c in [Component::Broker, Component::Store] {
            metrics::gauge!(crate::metrics::COMPONENT_DOWN, "component" => c.label()).set(0.0);
        }
        Self::default()
    }

    /// Records the outcome of an attempt against `c`.
    pub fn set(&self, c: Component, down: bool) {
        let flag = match c {
            Component::Broker => &self.broker,
            Component::Store => &self.store,
        };
        if flag.swap(down, Ordering::SeqCst) == down {
            return;
        }
        metrics::gauge!(crate::metrics::COMPONENT_DOWN, "component" => c.label()).set(if down {
            1.0
        } else {
            0.0
        });
        if down {
            tracing::warn!(
                component = c.label(),
                "component down: holding activations until it returns"
            );
        } else {
            tracing::info!(component = c.label(), "component back");
        }
    }

    /// The labels of the components down.
    pub fn down(&self) -> Vec<&'static str> {
        [
            (Component::Broker, &self.broker),
            (Component::Store, &self.store),
        ]
        .into_iter()
        .filter(|(_, f)| f.load(Ordering::SeqCst))
        .map(|(c, _)| c.label())
        .collect()
    }
}

/// Where acks go: the broker in production, fakes in tests.
#[async_trait::async_trait]
pub trait AckSink: Send + Sync + 'static {
    /// Sends one record on `topic`; `Ok` once the broker accepted it (the delivery report).
    async fn send(&self, topic: &str, payload: &str) -> Result<(), KafkaError>;
}

#[async_trait::async_trait]
impl AckSink for FutureProducer {
    async fn send(&self, topic: &str, payload: &str) -> Result<(), KafkaError> {
        FutureProducer::send(
            self,
            FutureRecord::<(), _>::to(topic).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
    }
}

tokio::task_local! {
    /// Set once an activation began to send an ack or store its record: from then on a
    /// shutdown lets it finish (within the feed's bound) rather than answer it a second time.
    static DELIVERING: Arc<AtomicBool>;
}

tokio::task_local! {
    /// The activation a blocking caller has been sent as its result: a panic after that is
    /// answered with this activation's record and completion, not a second, contradicting
    /// result.
    static ANSWERED: Arc<parking_lot::Mutex<Option<WhiskActivation>>>;
}

fn delivering() {
    let _ = DELIVERING.try_with(|d| d.store(true, Ordering::SeqCst));
}

/// Everything an activation needs; shared by all activations.
pub struct Invoker {
    pub settings: Settings,
    pub instance: InvokerInstanceId,
    pub actions: ActionStore,
    pub pool: ContainerPool,
    pub proxy: ProxyClient,
    /// Health pings and user events (sent once, lost on failure).
    pub producer: FutureProducer,
    /// Acks (retried until the broker takes them).
    pub acks: Arc<dyn AckSink>,
    pub db: CouchDb,
    pub records: crate::store::RecordStore,
    pub components: Arc<Components>,
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
    /// Processes one message of `invoker<N>` until its acks and record are delivered: parses
    /// it (a malformed one is counted and skipped), answers a re-delivered one from its
    /// record, runs the others. Once `stop` is cancelled, an activation that has not begun to
    /// deliver is ended with a system error ([`SHUTDOWN_ERROR`]); one that has goes on.
    pub async fn process(
        self: &Arc<Self>,
        payload: &[u8],
        maybe_redelivered: bool,
        stop: &CancellationToken,
    ) {
        let msg = match ActivationMessage::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                let text = String::from_utf8_lossy(payload);
                let head: String = text.chars().take(200).collect();
                tracing::error!(error = %e, message = %head, "malformed activation message skipped");
                metrics::counter!(crate::metrics::MALFORMED_TOTAL).increment(1);
                return;
            }
        };
        let flag = Arc::new(AtomicBool::new(false));
        let work = DELIVERING.scope(flag.clone(), async {
            let answered = maybe_redelivered
                && self.answer_from_record(&msg).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot look up an earlier record; running the activation");
                    false
                });
            if !answered {
                self.handle(msg.clone()).await;
            }
        });
        // Boxed so that dropping it below drops the activation (and its container lease).
        let mut work = Box::pin(work);
        tokio::select! {
            () = &mut work => return,
            () = stop.cancelled() => {}
        }
        if flag.load(Ordering::SeqCst) {
            // Its acks or record are on their way: the feed bounds how long it may take.
            return work.await;
        }
        drop(work);
        tracing::warn!(id = %msg.activation_id, "the shutdown grace period ended before the activation did");
        metrics::counter!(crate::metrics::ENDED_AT_SHUTDOWN_TOTAL).increment(1);
        self.fallback(&msg, proxy::whisk_error(SHUTDOWN_ERROR))
            .await;
    }

    /// Handles one parsed activation message; never fails: errors become error activations,
    /// and so does a panic (a system error with OpenWhisk's message for an unexpected failure
    /// of a run, as the Scala invoker's container proxy answers one).
    pub async fn handle(self: &Arc<Self>, msg: ActivationMessage) {
        let span = tracing::info_span!("activation", id = %msg.activation_id, action = %msg.action.qualified());
        let started = Instant::now();
        let answered = Arc::new(parking_lot::Mutex::new(None));
        let work = ANSWERED.scope(
            answered.clone(),
            AssertUnwindSafe(self.clone().handle_inner(msg.clone())).catch_unwind(),
        );
        if let Err(panic) = tracing::Instrument::instrument(work, span.clone()).await {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            span.in_scope(|| {
                tracing::error!(
                    why,
                    "the activation panicked; answering with a system error"
                )
            });
            metrics::counter!(crate::metrics::ACTIVATION_PANICS_TOTAL).increment(1);
            let sent = answered.lock().take();
            match sent {
                // The caller has its result: the record says the same, and the completion
                // frees the slot.
                Some(mut activation) => {
                    activation.logs = vec![format!(
                        "{:<30} stderr: {}",
                        logs::rfc3339_now(),
                        logs::LOG_FAILURE
                    )];
                    let finish = async {
                        self.store(&msg, &activation).await;
                        self.send_ack(&msg, completion_ack(&msg, &activation, &self.instance))
                            .await;
                    };
                    tracing::Instrument::instrument(finish, span).await;
                }
                None => {
                    let answer = self.fallback(&msg, proxy::whisk_error(proxy::ABNORMAL_RUN));
                    tracing::Instrument::instrument(answer, span).await;
                }
            }
        }
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
                let _ = ANSWERED.try_with(|a| *a.lock() = Some(activation.clone()));
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
        delivering();
        let doc = activation.to_document(now_ms());
        match self.records.store(doc).await {
            Ok(crate::store::Stored::Written) => {}
            Ok(crate::store::Stored::AlreadyThere) => {
                tracing::info!("a record of this activation exists already; kept the first");
            }
            Ok(crate::store::Stored::Refused(why)) => {
                metrics::counter!(crate::metrics::RECORDS_LOST_TOTAL).increment(1);
                tracing::error!(why, "activation record refused by the database");
            }
            Err(e) => {
                // Only while the runtime shuts down; the feed commits nothing after that.
                tracing::error!(error = %e, "activation record not stored");
            }
        }
    }

    /// Sends an ack to `completed<C>` and returns once the broker took it: non-blocking acks
    /// shrunk; a record too large for the topic re-sent shrunk; other errors retried with
    /// capped back-off for as long as it takes (the broker is reported down meanwhile).
    pub async fn send_ack(&self, msg: &ActivationMessage, ack: Ack) {
        delivering();
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
        let mut shrunk = false;
        let mut backoff = Backoff::new(ACK_FIRST_RETRY_PAUSE, ACK_MAX_RETRY_PAUSE);
        for attempt in 0_u64.. {
            match self.acks.send(&topic, &payload).await {
                Ok(()) => {
                    self.components.set(Component::Broker, false);
                    return;
                }
                Err(KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge,
                )) if !shrunk => {
                    shrunk = true;
                    payload = serde_json::to_string(&ack.shrunk()).unwrap_or_default();
                }
                Err(e) => {
                    self.components.set(Component::Broker, true);
                    let pause = backoff.next_pause();
                    tracing::warn!(error = %e, attempt, topic, retry_in_ms = pause.as_millis(), "ack send failed; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
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

#[cfg(test)]
mod delivery_tests {
    use std::sync::atomic::AtomicUsize;

    use parking_lot::Mutex;
    use rdkafka::ClientConfig;
    use serde_json::Value;
    use tokio::time::Instant;

    use super::*;
    use crate::container::fake::FakeFactory;
    use crate::pool::PoolConfig;
    use crate::store::{BulkWriter, RecordStore};
    use openwhisk::couchdb::BulkResult;

    /// A broker that fails the first `failures` sends (or panics on the first, as a bug in an
    /// activation's task would), then takes everything.
    #[derive(Default)]
    struct FakeBroker {
        failures: AtomicUsize,
        panic_once: AtomicBool,
        attempts: Mutex<Vec<Instant>>,
        taken: Mutex<Vec<Value>>,
    }

    #[async_trait::async_trait]
    impl AckSink for FakeBroker {
        async fn send(&self, _topic: &str, payload: &str) -> Result<(), KafkaError> {
            self.attempts.lock().push(Instant::now());
            assert!(
                !self.panic_once.swap(false, Ordering::SeqCst),
                "a bug in the activation's task"
            );
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
                ));
            }
            self.taken
                .lock()
                .push(serde_json::from_str(payload).unwrap());
            Ok(())
        }
    }

    /// A database that takes every record.
    #[derive(Clone, Default)]
    struct FakeDb {
        docs: Arc<Mutex<Vec<Value>>>,
    }

    #[async_trait::async_trait]
    impl BulkWriter for FakeDb {
        async fn bulk_docs(
            &self,
            _db: &str,
            docs: &[Value],
        ) -> Result<Vec<BulkResult>, CouchDbError> {
            self.docs.lock().extend(docs.iter().cloned());
            Ok(docs
                .iter()
                .map(|d| BulkResult {
                    id: d["_id"].as_str().unwrap_or_default().to_owned(),
                    rev: Some("1-a".into()),
                    error: None,
                    reason: None,
                })
                .collect())
        }
    }

    /// An invoker whose action store cannot be reached (every fetch fails at once), with a
    /// fake broker for acks and a fake database for records.
    fn invoker(broker: Arc<FakeBroker>, db: FakeDb) -> Arc<Invoker> {
        let settings = Settings::from_vars(
            [
                ("KAFKA_HOSTS", "127.0.0.1:9"),
                ("RUNTIMES_MANIFEST", r#"{"runtimes":{}}"#),
                ("CONFIG_whisk_couchdb_port", "9"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
            None,
        )
        .unwrap();
        let couch = CouchDb::new(&settings.couchdb).unwrap();
        let manifest =
            Arc::new(openwhisk::manifest::Manifest::parse(r#"{"runtimes":{}}"#).unwrap());
        let pool = ContainerPool::new(
            Arc::new(FakeFactory::default()),
            PoolConfig {
                user_memory_mb: 1024,
                pause_grace: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(600),
                name_prefix: "wsktest0".into(),
                env: Vec::new(),
                user_cpus: None,
                stem_cells: Vec::new(),
                allow_vm_annotation: false,
                mode_is_vm: false,
            },
        );
        let components = Arc::new(Components::default());
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .create()
            .unwrap();
        Arc::new(Invoker {
            instance: InvokerInstanceId::new(0, settings.user_memory_bytes, Some("0".into()), None),
            actions: ActionStore::new(couch.clone(), "whisks", manifest, ""),
            pool,
            proxy: ProxyClient::new(),
            producer,
            acks: broker,
            db: couch,
            records: RecordStore::start(db, "activations".into(), components.clone()),
            components,
            enabled: AtomicBool::new(true),
            settings,
        })
    }

    fn message() -> ActivationMessage {
        ActivationMessage::parse(
            br#"{"transid":["tx1",1714560000123],
                "action":{"path":"guest","name":"hello","version":"0.0.1"},
                "revision":null,
                "user":{"subject":"guest","namespace":{"name":"guest","uuid":"u"},
                        "authkey":{"api_key":"u:k"},"rights":[],"limits":{}},
                "activationId":"c7bb1339cb4f40e3a6ccead6c99f804e",
                "rootControllerIndex":{"asString":"0","instanceType":"controller"},
                "blocking":true,"initArgs":[],"lockedArgs":{}}"#,
        )
        .unwrap()
    }

    /// Far more failures than the old 4 tries: the ack is retried, with pauses that double up
    /// to the cap, until the broker takes it; the broker is reported down meanwhile.
    #[tokio::test(start_paused = true)]
    async fn an_ack_is_retried_with_capped_backoff_until_the_broker_takes_it() {
        let broker = Arc::new(FakeBroker::default());
        broker.failures.store(12, Ordering::SeqCst);
        let inv = invoker(broker.clone(), FakeDb::default());
        let msg = message();
        let sending = tokio::spawn({
            let inv = inv.clone();
            async move {
                let ack = Ack::Completion {
                    transid: msg.transid.clone(),
                    activation_id: msg.activation_id.clone(),
                    is_system_error: false,
                    instance: inv.instance.clone(),
                };
                inv.send_ack(&msg, ack).await;
            }
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!sending.is_finished());
        assert_eq!(inv.components.down(), ["kafka"]);
        sending.await.unwrap();
        assert!(inv.components.down().is_empty());
        assert_eq!(broker.taken.lock().len(), 1);
        let attempts = broker.attempts.lock().clone();
        assert_eq!(attempts.len(), 13);
        let pauses: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            &pauses[..8],
            [100, 200, 400, 800, 1600, 3200, 5000, 5000].map(Duration::from_millis)
        );
        assert!(pauses.iter().all(|p| *p <= ACK_MAX_RETRY_PAUSE));
    }

    /// A panic in an activation's task (here in its first ack's send) ends it with a system
    /// error: a combined ack with OpenWhisk's message and a record, both delivered.
    #[tokio::test]
    async fn a_panic_becomes_a_system_error_with_its_ack_and_record() {
        let broker = Arc::new(FakeBroker::default());
        broker.panic_once.store(true, Ordering::SeqCst);
        let db = FakeDb::default();
        let inv = invoker(broker.clone(), db.clone());
        let msg = message();
        inv.process(
            &serde_json::to_vec(&msg).unwrap(),
            false,
            &CancellationToken::new(),
        )
        .await;
        let taken = broker.taken.lock().clone();
        assert_eq!(taken.len(), 1, "{taken:?}");
        assert_eq!(taken[0]["isSystemError"], json!(true));
        assert_eq!(
            taken[0]["response"]["response"],
            json!({"statusCode": 3, "result": {"error": proxy::ABNORMAL_RUN}})
        );
        let docs = db.docs.lock().clone();
        assert_eq!(docs.len(), 1);
        assert_eq!(
            docs[0]["_id"],
            json!(format!("guest/{}", msg.activation_id))
        );
        assert_eq!(docs[0]["response"]["statusCode"], json!(3));
    }

    /// A malformed message is skipped: no ack, no record.
    #[tokio::test]
    async fn a_malformed_message_is_skipped() {
        let broker = Arc::new(FakeBroker::default());
        let db = FakeDb::default();
        let inv = invoker(broker.clone(), db.clone());
        inv.process(b"{not json", false, &CancellationToken::new())
            .await;
        assert!(broker.attempts.lock().is_empty());
        assert!(db.docs.lock().is_empty());
    }
}

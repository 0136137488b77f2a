//! Invoking an action as the controller does, for every route that does (invoke, sequence
//! components, rules fired by a trigger, web actions): the name resolved through its package
//! or binding, then an `ActivationMessage` through Kafka to an invoker and, for a blocking
//! caller, the record from the ack or the activations database.

use std::sync::Arc;
use std::time::Duration;

use openwhisk::couchdb::CouchDbError;
use openwhisk::time::now_ms;
use serde_json::{Map, Value};

use crate::actions::StoredAction;
use crate::activations::Activations;
use crate::api::App;
use crate::controller::{ControllerError, Outcome};
use crate::entities::EntityError;
use crate::metrics;
use crate::sequences;
use crate::subjects::Identity;

/// Why an invocation did not get as far as an activation.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error(transparent)]
    Entity(#[from] EntityError),
    /// 400: the request sets a `final` parameter.
    #[error("Request defines parameters that are not allowed (e.g., reserved properties).")]
    FinalParameters,
    /// 503.
    #[error("No invokers available.")]
    NoInvokers,
    #[error("the activation was not produced")]
    Controller(#[source] ControllerError),
    #[error("the activations database failed")]
    Store(#[from] CouchDbError),
}

impl From<ControllerError> for InvokeError {
    fn from(e: ControllerError) -> Self {
        match e {
            ControllerError::NoInvokers => Self::NoInvokers,
            other => Self::Controller(other),
        }
    }
}

/// How an invocation ended for its caller.
#[derive(Debug)]
pub enum Answer {
    /// The activation record, as stored.
    Record(Value),
    /// Not blocking, or not finished within the wait: the activation id.
    Accepted(String),
}

/// The action `name` in `path` (`ns` or `ns/pkg`), as `caller` may see it: a package's or
/// binding's parameters merged under the action's. Actions outside a package of another
/// namespace are not shared; a package of another namespace must be published.
pub async fn resolve(
    app: &App,
    path: &str,
    name: &str,
    caller: &str,
) -> Result<StoredAction, EntityError> {
    match path.split_once('/') {
        None if path != caller => Err(EntityError::Forbidden),
        None => Ok(app.actions.fetch(path, name).await?),
        Some((ns, pkg)) => {
            let package = app.packages.resolve(ns, pkg, caller).await?;
            Ok(app
                .actions
                .fetch(&package.path, name)
                .await?
                .inherit(&package))
        }
    }
}

/// Refuses request parameters that a `final` action defines already.
pub fn check_final(action: &StoredAction, params: &Map<String, Value>) -> Result<(), InvokeError> {
    let fixed = action.final_parameters();
    if params.keys().any(|k| fixed.contains(&k.as_str())) {
        return Err(InvokeError::FinalParameters);
    }
    Ok(())
}

/// Invokes `action` (a sequence or an action an invoker runs) with the request's `params`;
/// a blocking caller waits up to `wait`.
pub async fn invoke(
    app: &Arc<App>,
    user: &Identity,
    action: StoredAction,
    params: Map<String, Value>,
    blocking: bool,
    wait: Duration,
) -> Result<Answer, InvokeError> {
    if action.components.is_some() {
        Ok(sequences::invoke(app, user, action, params, blocking, wait).await)
    } else {
        primitive(app, user, &action, params, blocking, wait, None).await
    }
}

/// One activation through Kafka; `cause` names the enclosing sequence's activation.
pub async fn primitive(
    app: &App,
    user: &Identity,
    action: &StoredAction,
    params: Map<String, Value>,
    blocking: bool,
    wait: Duration,
    cause: Option<&str>,
) -> Result<Answer, InvokeError> {
    let pending = app
        .controller
        .activate(user, action, params, blocking, cause)
        .await?;
    let id = pending.activation_id.clone();
    let Some(outcome) = pending.outcome else {
        return Ok(Answer::Accepted(id));
    };
    let ns = &user.namespace;
    let deadline = tokio::time::Instant::now() + wait;
    let record = match tokio::time::timeout_at(deadline, outcome).await {
        Ok(Ok(Outcome::Record(a))) => Some(a.to_document(now_ms())),
        // The ack carried only the id, or the waiter was dropped: the record is (or will be)
        // in the database.
        Ok(Ok(Outcome::InDatabase) | Err(_)) => {
            ::metrics::counter!(metrics::RECORDS_FROM_DATABASE_TOTAL).increment(1);
            poll_record(&app.activations, ns, &id, deadline).await?
        }
        Err(_) => {
            app.controller.forget(&id);
            app.activations.get(ns, &id).await?
        }
    };
    Ok(match record {
        Some(r) => Answer::Record(r),
        None => Answer::Accepted(id),
    })
}

/// Reads the record until it is there or `deadline` passes.
async fn poll_record(
    store: &Activations,
    ns: &str,
    id: &str,
    deadline: tokio::time::Instant,
) -> Result<Option<Value>, CouchDbError> {
    loop {
        if let Some(doc) = store.get(ns, id).await? {
            return Ok(Some(doc));
        }
        if tokio::time::Instant::now() + Duration::from_millis(100) > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

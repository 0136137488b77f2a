//! Triggers and rules in the whisks database, as the controller keeps them: a rule document
//! names its trigger and action (`{"path", "name"}`); its status lives in the trigger, whose
//! `rules` map holds `"<ns>/<rule>": {"action": {"path", "name"}, "status": "active"|"inactive"}`.
//!
//! Firing a trigger with an active rule answers 202 with a new activation id at once; each
//! active rule's action is then invoked non-blocking with the trigger's parameters under the
//! request's (and `__ow_headers`, as the controller adds them), and the trigger's record is
//! written with one log line per rule. A trigger without active rules answers 204 and writes
//! no record.

use std::sync::Arc;
use std::time::Duration;

use openwhisk::errors;
use openwhisk::messages::{ActivationResponse, WhiskActivation};
use openwhisk::time::now_ms;
use serde_json::{Map, Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::App;
use crate::entities::{
    self, CONFLICT, EntityError, Whisks, api_view, check_name, key_values_field, next_version,
    parse_fqn,
};
use crate::ids;
use crate::invocations::{self, Answer, InvokeError};
use crate::subjects::Identity;

/// `entityType` of triggers.
pub const TRIGGER: &str = "trigger";
/// `entityType` of rules.
pub const RULE: &str = "rule";
const ACTIVE: &str = "active";
const INACTIVE: &str = "inactive";

/// Most trigger fires whose rules are still being activated. A fire answers 202 before its
/// rules' actions are invoked, so without a bound a storm of fires would pile up tasks (and
/// Kafka messages) faster than they finish; past it a fire is refused with 429, as the
/// controller refuses what exceeds its throttles.
pub const MAX_FIRES_IN_FLIGHT: usize = 256;

/// The triggers and rules of the whisks database.
#[derive(Debug)]
pub struct Triggers {
    whisks: Whisks,
    /// One permit per fire whose rules are being activated.
    fires: Arc<Semaphore>,
}

/// `{"path", "name"}` of `path/name`.
fn fqn(path: &str, name: &str) -> Value {
    json!({"path": path, "name": name})
}

/// `path/name` of `{"path", "name"}`.
fn fqn_string(v: &Value) -> String {
    format!(
        "{}/{}",
        v["path"].as_str().unwrap_or_default(),
        v["name"].as_str().unwrap_or_default()
    )
}

impl Triggers {
    pub fn new(whisks: Whisks) -> Self {
        Self {
            whisks,
            fires: Arc::new(Semaphore::new(MAX_FIRES_IN_FLIGHT)),
        }
    }

    /// A permit for one fire's rule activations, or the controller's 429 when
    /// [`MAX_FIRES_IN_FLIGHT`] fires are still activating theirs.
    fn fire_permit(&self) -> Result<OwnedSemaphorePermit, EntityError> {
        self.fires.clone().try_acquire_owned().map_err(|_| {
            EntityError::TooMany(format!(
                "Too many concurrent requests in flight (count: {MAX_FIRES_IN_FLIGHT}, allowed: {MAX_FIRES_IN_FLIGHT})."
            ))
        })
    }

    async fn doc(&self, namespace: &str, name: &str, kind: &str) -> Result<Value, EntityError> {
        check_name(name).map_err(EntityError::Invalid)?;
        self.whisks
            .get_typed(&format!("{namespace}/{name}"), kind)
            .await?
            .ok_or(EntityError::NotFound)
    }

    /// The existing document for a write: absent, or of `kind` with `overwrite`.
    async fn for_write(
        &self,
        id: &str,
        kind: &str,
        overwrite: bool,
    ) -> Result<Option<Value>, EntityError> {
        match self.whisks.get(id).await? {
            None => Ok(None),
            Some(d) if overwrite && d["entityType"] == kind => Ok(Some(d)),
            Some(_) => Err(EntityError::Conflict(CONFLICT.into())),
        }
    }

    async fn write(&self, doc: &mut Value, old: Option<&Value>) -> Result<(), EntityError> {
        if let Some(rev) = old.and_then(|o| o.get("_rev")) {
            doc["_rev"] = rev.clone();
        }
        let id = doc["_id"].as_str().unwrap_or_default().to_owned();
        let info = self.whisks.db.put_doc(&self.whisks.name, &id, doc).await?;
        doc["_rev"] = Value::String(info.rev);
        Ok(())
    }

    /// `PUT /namespaces/<ns>/triggers/<name>`; an update keeps the trigger's rules.
    pub async fn put_trigger(
        &self,
        namespace: &str,
        name: &str,
        body: &Value,
        overwrite: bool,
    ) -> Result<Value, EntityError> {
        check_name(name).map_err(EntityError::Invalid)?;
        if !body.is_object() {
            return Err(EntityError::Invalid(
                "The request content was malformed.".into(),
            ));
        }
        let id = format!("{namespace}/{name}");
        let old = self.for_write(&id, TRIGGER, overwrite).await?;
        let old = old.as_ref();
        let mut doc = json!({
            "_id": id, "entityType": TRIGGER, "namespace": namespace, "name": name,
            "parameters": key_values_field(body, "parameters", old).map_err(EntityError::Invalid)?,
            "annotations": key_values_field(body, "annotations", old).map_err(EntityError::Invalid)?,
            "limits": {},
            "version": next_version(body, old),
            "publish": body["publish"].as_bool().or_else(|| old.and_then(|o| o["publish"].as_bool())).unwrap_or(false),
            "updated": now_ms(),
        });
        if let Some(rules) = old.map(|o| &o["rules"]).filter(|r| r.is_object()) {
            doc["rules"] = rules.clone();
        }
        self.write(&mut doc, old).await?;
        Ok(api_view(&doc))
    }

    /// `GET /namespaces/<ns>/triggers/<name>`.
    pub async fn get_trigger(&self, namespace: &str, name: &str) -> Result<Value, EntityError> {
        Ok(api_view(&self.doc(namespace, name, TRIGGER).await?))
    }

    /// `DELETE /namespaces/<ns>/triggers/<name>`: its rules stay, as in the controller.
    pub async fn delete_trigger(&self, namespace: &str, name: &str) -> Result<Value, EntityError> {
        let doc = self.doc(namespace, name, TRIGGER).await?;
        self.delete_doc(&doc).await?;
        Ok(api_view(&doc))
    }

    async fn delete_doc(&self, doc: &Value) -> Result<(), EntityError> {
        let (Some(id), Some(rev)) = (doc["_id"].as_str(), doc["_rev"].as_str()) else {
            return Err(EntityError::NotFound);
        };
        self.whisks
            .db
            .delete_doc(&self.whisks.name, id, rev)
            .await?;
        Ok(())
    }

    /// `GET /namespaces/<ns>/triggers` or `.../rules`: most recently updated first.
    pub async fn list(
        &self,
        namespace: &str,
        kind: &str,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<Value>, EntityError> {
        let mut docs: Vec<Value> = self
            .whisks
            .list_typed(namespace, kind)
            .await?
            .into_iter()
            .filter(|d| d["namespace"] == namespace)
            .collect();
        docs.sort_by_key(|d| std::cmp::Reverse(d["updated"].as_i64().unwrap_or(0)));
        Ok(docs
            .iter()
            .skip(skip)
            .take(limit)
            .map(|d| {
                let mut v = api_view(d);
                if let Some(o) = v.as_object_mut() {
                    // Summaries, as the controller's entity lists.
                    for k in ["parameters", "limits", "rules"] {
                        o.remove(k);
                    }
                }
                v
            })
            .collect())
    }

    /// A rule's status as its trigger records it (`inactive` when the trigger is gone).
    async fn status_of(&self, rule: &Value) -> Result<&'static str, EntityError> {
        let trigger = self.whisks.get(&fqn_string(&rule["trigger"])).await?;
        let key = format!(
            "{}/{}",
            rule["namespace"].as_str().unwrap_or_default(),
            rule["name"].as_str().unwrap_or_default()
        );
        Ok(match trigger {
            Some(t) if t["rules"][&key]["status"] == ACTIVE => ACTIVE,
            _ => INACTIVE,
        })
    }

    fn rule_view(rule: &Value, status: &str) -> Value {
        let mut v = api_view(rule);
        v["status"] = Value::String(status.to_owned());
        v
    }

    /// Sets (or with `status` `None` removes) the link of rule `key` in trigger `trigger_id`.
    async fn link(
        &self,
        trigger_id: &str,
        key: &str,
        action: &Value,
        status: Option<&str>,
    ) -> Result<(), EntityError> {
        let Some(mut trigger) = self.whisks.get_typed(trigger_id, TRIGGER).await? else {
            return Ok(());
        };
        let old = trigger.clone();
        if !trigger["rules"].is_object() {
            trigger["rules"] = json!({});
        }
        if let Some(rules) = trigger["rules"].as_object_mut() {
            match status {
                Some(s) => {
                    rules.insert(key.into(), json!({"action": action, "status": s}));
                }
                None => {
                    rules.remove(key);
                }
            }
        }
        self.write(&mut trigger, Some(&old)).await
    }

    /// `PUT /namespaces/<ns>/rules/<name>` with `{"trigger": "/ns/t", "action": "/ns/[pkg/]a"}`:
    /// both must exist; a new rule is active, an update keeps its status.
    pub async fn put_rule(
        &self,
        namespace: &str,
        name: &str,
        body: &Value,
        overwrite: bool,
    ) -> Result<Value, EntityError> {
        check_name(name).map_err(EntityError::Invalid)?;
        let id = format!("{namespace}/{name}");
        let old = self.for_write(&id, RULE, overwrite).await?;
        let old = old.as_ref();
        let name_of = |field: &str| -> Result<Value, EntityError> {
            match (body.get(field).and_then(Value::as_str), old) {
                (Some(s), _) => {
                    let (path, n) = parse_fqn(s, namespace).map_err(EntityError::Invalid)?;
                    Ok(fqn(&path, &n))
                }
                (None, Some(o)) => Ok(o[field].clone()),
                (None, None) => Err(EntityError::Invalid(
                    "rule requires a valid trigger and a valid action".into(),
                )),
            }
        };
        let (trigger, action) = (name_of("trigger")?, name_of("action")?);
        let trigger_id = fqn_string(&trigger);
        if self.whisks.get_typed(&trigger_id, TRIGGER).await?.is_none() {
            return Err(EntityError::Invalid(format!(
                "trigger /{trigger_id} does not exist"
            )));
        }
        let action_id = fqn_string(&action);
        // As the controller's entitlement check on the entities a rule names.
        for end in [&trigger, &action] {
            let path = end["path"].as_str().unwrap_or_default();
            if !entities::readable(&self.whisks.db, &self.whisks.name, path, namespace).await? {
                return Err(EntityError::Forbidden);
            }
        }
        if !self.action_exists(&action).await? {
            return Err(EntityError::Invalid(format!(
                "action /{action_id} does not exist"
            )));
        }
        let status = match old {
            Some(o) => self.status_of(o).await?,
            None => ACTIVE,
        };
        let mut doc = json!({
            "_id": id, "entityType": RULE, "namespace": namespace, "name": name,
            "trigger": trigger, "action": action,
            "annotations": key_values_field(body, "annotations", old).map_err(EntityError::Invalid)?,
            "version": next_version(body, old),
            "publish": body["publish"].as_bool().or_else(|| old.and_then(|o| o["publish"].as_bool())).unwrap_or(false),
            "updated": now_ms(),
        });
        if let Some(o) = old
            && fqn_string(&o["trigger"]) != trigger_id
        {
            self.link(&fqn_string(&o["trigger"]), &id, &Value::Null, None)
                .await?;
        }
        self.link(&trigger_id, &id, &action, Some(status)).await?;
        self.write(&mut doc, old).await?;
        Ok(Self::rule_view(&doc, status))
    }

    /// Whether the action `{"path", "name"}` exists, a binding in its path followed (the
    /// controller's `WhiskAction.resolveAction`: a rule may name an action through a binding).
    async fn action_exists(&self, action: &Value) -> Result<bool, EntityError> {
        let kind = openwhisk::action::ENTITY_TYPE;
        if self
            .whisks
            .get_typed(&fqn_string(action), kind)
            .await?
            .is_some()
        {
            return Ok(true);
        }
        let path = action["path"].as_str().unwrap_or_default();
        if !path.contains('/') {
            return Ok(false);
        }
        let Some(pkg) = self
            .whisks
            .get_typed(path, crate::packages::ENTITY_TYPE)
            .await?
        else {
            return Ok(false);
        };
        let (Some(ns), Some(target)) = (
            pkg["binding"]["namespace"].as_str(),
            pkg["binding"]["name"].as_str(),
        ) else {
            return Ok(false);
        };
        let name = action["name"].as_str().unwrap_or_default();
        Ok(self
            .whisks
            .get_typed(&format!("{ns}/{target}/{name}"), kind)
            .await?
            .is_some())
    }

    /// `GET /namespaces/<ns>/rules/<name>`, with the status from its trigger.
    pub async fn get_rule(&self, namespace: &str, name: &str) -> Result<Value, EntityError> {
        let doc = self.doc(namespace, name, RULE).await?;
        let status = self.status_of(&doc).await?;
        Ok(Self::rule_view(&doc, status))
    }

    /// `POST /namespaces/<ns>/rules/<name>` with `{"status": "active"|"inactive"}`.
    pub async fn set_status(
        &self,
        namespace: &str,
        name: &str,
        body: &Value,
    ) -> Result<(), EntityError> {
        let wanted = match body["status"].as_str() {
            Some(s @ (ACTIVE | INACTIVE)) => s,
            _ => {
                return Err(EntityError::Invalid(
                    "status must be 'active' or 'inactive'".into(),
                ));
            }
        };
        let doc = self.doc(namespace, name, RULE).await?;
        let trigger_id = fqn_string(&doc["trigger"]);
        if self.whisks.get_typed(&trigger_id, TRIGGER).await?.is_none() {
            return Err(EntityError::TriggerGone);
        }
        if self.status_of(&doc).await? == wanted {
            return Ok(());
        }
        self.link(
            &trigger_id,
            &format!("{namespace}/{name}"),
            &doc["action"],
            Some(wanted),
        )
        .await
    }

    /// `DELETE /namespaces/<ns>/rules/<name>`: unlinked from its trigger, shown inactive.
    pub async fn delete_rule(&self, namespace: &str, name: &str) -> Result<Value, EntityError> {
        let doc = self.doc(namespace, name, RULE).await?;
        self.link(
            &fqn_string(&doc["trigger"]),
            &format!("{namespace}/{name}"),
            &Value::Null,
            None,
        )
        .await?;
        self.delete_doc(&doc).await?;
        Ok(Self::rule_view(&doc, INACTIVE))
    }

    /// The trigger `namespace/name` for firing.
    pub async fn trigger(&self, namespace: &str, name: &str) -> Result<Value, EntityError> {
        self.doc(namespace, name, TRIGGER).await
    }
}

/// `POST /namespaces/<ns>/triggers/<name>`: the activation id of the trigger's record, or
/// `None` (204) when no rule is active.
pub async fn fire(
    app: &Arc<App>,
    user: &Identity,
    namespace: &str,
    name: &str,
    payload: Map<String, Value>,
    headers: Map<String, Value>,
) -> Result<Option<String>, EntityError> {
    let trigger = app.triggers.trigger(namespace, name).await?;
    // Every rule of the trigger, active or not: the controller's record has a line for each.
    let rules: Vec<(String, Value, bool)> = trigger["rules"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, r)| (k.clone(), r["action"].clone(), r["status"] == ACTIVE))
        .collect();
    if !rules.iter().any(|(_, _, active)| *active) {
        return Ok(None);
    }
    let permit = app.triggers.fire_permit()?;
    let id = ids::activation_id();
    let mut args = Map::new();
    for p in crate::packages::parameters_of(&trigger["parameters"]) {
        args.insert(p.key, p.value);
    }
    args.insert("__ow_headers".into(), Value::Object(headers));
    args.extend(payload.clone());
    let record = WhiskActivation {
        namespace: user.namespace.clone(),
        name: name.to_owned(),
        subject: user.subject.clone(),
        activation_id: id.clone(),
        start: now_ms(),
        // The controller's trigger records end at the epoch.
        end: 0,
        duration: None,
        cause: None,
        response: ActivationResponse {
            status_code: 0,
            result: Some(Value::Object(payload)),
            size: None,
        },
        logs: Vec::new(),
        version: trigger["version"].as_str().unwrap_or("0.0.1").to_owned(),
        publish: false,
        annotations: Vec::new(),
    };
    tokio::spawn({
        let (app, user) = (app.clone(), user.clone());
        async move {
            let _permit = permit;
            let mut record = record;
            for (rule, action, active) in rules {
                let line = if active {
                    activate_rule(&app, &user, &rule, &action, args.clone()).await
                } else {
                    inactive_rule_line(&rule, &action)
                };
                record.logs.push(line.to_string());
            }
            if let Err(e) = app.activations.put(&record).await {
                tracing::error!(activation = %record.activation_id, error = %errors::chain(&e), "the trigger's record was not stored");
            }
        }
    });
    Ok(Some(id))
}

/// The trigger record's line for a rule that is inactive (`Messages.triggerWithInactiveRule`).
fn inactive_rule_line(rule: &str, action: &Value) -> Value {
    let action = fqn_string(action);
    json!({"rule": rule, "action": action, "statusCode": 1, "success": false,
           "error": format!("Rule '{rule}' is inactive, action '{action}' was not activated.")})
}

/// Invokes a rule's action non-blocking; the trigger record's log line about it.
async fn activate_rule(
    app: &Arc<App>,
    user: &Identity,
    rule: &str,
    action: &Value,
    args: Map<String, Value>,
) -> Value {
    let action_name = fqn_string(action);
    let path = action["path"].as_str().unwrap_or_default();
    let name = action["name"].as_str().unwrap_or_default();
    let answer = match invocations::resolve(app, path, name, &user.namespace).await {
        Ok(a) => invocations::invoke(app, user, a, args, false, Duration::ZERO).await,
        Err(e) => Err(InvokeError::Entity(e)),
    };
    let (code, outcome) = match answer {
        Ok(Answer::Accepted(id)) => (0, Ok(id)),
        // A non-blocking invoke does not wait for a record; one that came anyway names its id.
        Ok(Answer::Record(doc)) => (
            0,
            Ok(doc["activationId"].as_str().unwrap_or_default().to_owned()),
        ),
        Err(
            e @ (InvokeError::Entity(EntityError::Store(_))
            | InvokeError::Controller(_)
            | InvokeError::Store(_)
            | InvokeError::NoInvokers),
        ) => {
            tracing::error!(rule, action = %action_name, error = %errors::chain(&e), "a rule's action was not activated");
            (3, Err(e.to_string()))
        }
        Err(e) => (1, Err(e.to_string())),
    };
    let mut line =
        json!({"rule": rule, "action": action_name, "statusCode": code, "success": code == 0});
    match outcome {
        Ok(id) => line["activationId"] = Value::String(id),
        Err(e) => line["error"] = Value::String(e),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_path_and_name_objects() {
        let v = fqn("guest/p", "a");
        assert_eq!(v, json!({"path": "guest/p", "name": "a"}));
        assert_eq!(fqn_string(&v), "guest/p/a");
    }

    #[test]
    fn fires_in_flight_are_bounded() {
        let db = openwhisk::couchdb::CouchDb::new(&openwhisk::couchdb::CouchDbConfig {
            url: "http://127.0.0.1:9".into(),
            username: "u".into(),
            password: "p".into(),
            request_timeout: Duration::from_secs(1),
        })
        .unwrap();
        let t = Triggers::new(Whisks {
            db,
            name: "whisks".into(),
        });
        let permits: Vec<_> = (0..MAX_FIRES_IN_FLIGHT)
            .map(|_| t.fire_permit().unwrap())
            .collect();
        match t.fire_permit() {
            Err(EntityError::TooMany(m)) => assert!(m.starts_with("Too many concurrent requests")),
            other => panic!("{other:?}"),
        }
        drop(permits);
        assert!(
            t.fire_permit().is_ok(),
            "a finished fire gives its permit back"
        );
    }

    #[test]
    fn an_inactive_rule_has_the_controllers_line() {
        assert_eq!(
            inactive_rule_line("guest/r", &fqn("guest/p", "a")),
            json!({"rule": "guest/r", "action": "guest/p/a", "statusCode": 1, "success": false,
                   "error": "Rule 'guest/r' is inactive, action 'guest/p/a' was not activated."})
        );
    }

    #[test]
    fn rule_views_carry_the_status() {
        let doc = json!({"_id": "guest/r", "_rev": "1-x", "entityType": "rule", "namespace": "guest",
                         "name": "r", "trigger": fqn("guest", "t"), "action": fqn("guest", "a")});
        let v = Triggers::rule_view(&doc, ACTIVE);
        assert_eq!(
            v,
            json!({"namespace": "guest", "name": "r", "trigger": {"path": "guest", "name": "t"},
                   "action": {"path": "guest", "name": "a"}, "status": "active"})
        );
    }
}

//! What packages, triggers and rules share with actions in the whisks database: entity names,
//! key/value lists, versions, the API view of a document, and the errors of their stores.
//!
//! Every entity is one document `_id` `<namespace>/<name>` (a packaged action
//! `<namespace>/<package>/<name>`) with an `entityType`; the controller keeps them all in one
//! database, so a name is taken by whichever kind was written first.

use openwhisk::couchdb::{CouchDb, CouchDbError};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::actions::ActionError;

/// Errors of the package, trigger and rule stores; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum EntityError {
    /// 400: the request is not valid.
    #[error("{0}")]
    Invalid(String),
    /// 403: another namespace's entity that is not shared.
    #[error("The supplied authentication is not authorized to access this resource.")]
    Forbidden,
    /// 404.
    #[error("The requested resource does not exist.")]
    NotFound,
    /// 404: a rule whose trigger is gone cannot change its status.
    #[error("Only rules with existing triggers can be activated")]
    TriggerGone,
    /// 409, with the controller's message.
    #[error("{0}")]
    Conflict(String),
    /// 429, with the controller's throttle message.
    #[error("{0}")]
    TooMany(String),
    /// 500: the database failed, or a stored document cannot be read.
    #[error("the whisks database failed")]
    Store(#[source] CouchDbError),
}

/// The controller's message for a write that lost a race or found the name taken.
pub const CONFLICT: &str = "Concurrent modification to resource detected.";

impl From<CouchDbError> for EntityError {
    fn from(e: CouchDbError) -> Self {
        match e {
            CouchDbError::NotFound { .. } => Self::NotFound,
            CouchDbError::Conflict { .. } => Self::Conflict(CONFLICT.into()),
            other => Self::Store(other),
        }
    }
}

impl From<ActionError> for EntityError {
    fn from(e: ActionError) -> Self {
        match e {
            ActionError::Invalid(m) => Self::Invalid(m),
            ActionError::NotFound => Self::NotFound,
            ActionError::Conflict => Self::Conflict(CONFLICT.into()),
            ActionError::Forbidden => Self::Forbidden,
            ActionError::Store(s) => Self::Store(s),
        }
    }
}

/// The whisks database and its name, shared by the entity stores.
#[derive(Clone, Debug)]
pub struct Whisks {
    pub db: CouchDb,
    pub name: String,
}

impl Whisks {
    /// The document `id`, or `None`.
    pub async fn get(&self, id: &str) -> Result<Option<Value>, CouchDbError> {
        match self.db.get_doc(&self.name, id).await {
            Ok(d) => Ok(Some(d)),
            Err(CouchDbError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The document `id` if it is of `entity_type`; another kind under the name is `None`.
    pub async fn get_typed(
        &self,
        id: &str,
        entity_type: &str,
    ) -> Result<Option<Value>, CouchDbError> {
        Ok(self
            .get(id)
            .await?
            .filter(|d| d["entityType"] == entity_type))
    }

    /// The namespace's documents of `entity_type` (packaged actions included for actions).
    pub async fn list_typed(
        &self,
        namespace: &str,
        entity_type: &str,
    ) -> Result<Vec<Value>, CouchDbError> {
        Ok(self
            .db
            .docs_with_prefix(&self.name, &format!("{namespace}/"))
            .await?
            .into_iter()
            .filter(|d| d["entityType"] == entity_type)
            .collect())
    }
}

/// Whether `caller` may read the entities under `path` (`ns` or `ns/pkg`), as the controller's
/// entitlement check allows: its own namespace, or another's package (or binding) that is
/// published.
pub async fn readable(
    db: &CouchDb,
    whisks: &str,
    path: &str,
    caller: &str,
) -> Result<bool, CouchDbError> {
    let (ns, pkg) = match path.split_once('/') {
        None => return Ok(path == caller),
        Some(split) => split,
    };
    if ns == caller {
        return Ok(true);
    }
    Ok(match db.get_doc(whisks, &format!("{ns}/{pkg}")).await {
        Ok(d) => d["entityType"] == crate::packages::ENTITY_TYPE && d["publish"] == true,
        Err(CouchDbError::NotFound { .. }) => false,
        Err(e) => return Err(e),
    })
}

/// Entity names as OpenWhisk allows them: word characters, then also `@ . -` and spaces
/// inside, at most 256 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_inner = |c: char| c.is_alphanumeric() || "_@.- ".contains(c);
    let valid = !name.is_empty()
        && name.chars().count() <= 256
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        && name.chars().all(ok_inner)
        && !name.ends_with(' ');
    if valid {
        Ok(())
    } else {
        Err("The name of the entity contains illegal characters.".into())
    }
}

/// Key/value items of a request (parameters, annotations): each a string key and a value.
pub fn key_values<T: DeserializeOwned>(items: &[Value], what: &str) -> Result<Vec<T>, String> {
    let invalid = || format!("{what} must be objects with a string key and a value");
    items
        .iter()
        .map(|item| {
            if !item["key"].is_string() || item.get("value").is_none() {
                return Err(invalid());
            }
            serde_json::from_value(item.clone()).map_err(|_| invalid())
        })
        .collect()
}

/// `body[field]` as key/value items: given, `null` or absent (then `old`, or empty).
pub fn key_values_field(body: &Value, field: &str, old: Option<&Value>) -> Result<Value, String> {
    match body.get(field) {
        Some(Value::Array(items)) => {
            key_values::<Value>(items, field)?;
            Ok(Value::Array(items.clone()))
        }
        Some(Value::Null) | None => Ok(old
            .and_then(|o| o.get(field))
            .filter(|v| v.is_array())
            .cloned()
            .unwrap_or_else(|| Value::Array(Vec::new()))),
        Some(_) => Err(format!("{field} must be an array")),
    }
}

/// `0.0.1` → `0.0.2`; anything unparsable starts over at `0.0.1`.
pub fn bump_patch(version: &str) -> String {
    let parts: Vec<u64> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [major, minor, patch] => format!("{major}.{minor}.{}", patch + 1),
        _ => "0.0.1".into(),
    }
}

/// The version of a written entity: the old one bumped, or the request's, or 0.0.1.
pub fn next_version(body: &Value, old: Option<&Value>) -> String {
    match old {
        Some(o) => bump_patch(o["version"].as_str().unwrap_or_default()),
        None => body["version"]
            .as_str()
            .unwrap_or(openwhisk::action::DEFAULT_VERSION)
            .to_owned(),
    }
}

/// A document without CouchDB's and the store's own fields.
pub fn api_view(doc: &Value) -> Value {
    let mut v = doc.clone();
    if let Some(o) = v.as_object_mut() {
        for k in ["_id", "_rev", "_attachments", "entityType"] {
            o.remove(k);
        }
    }
    v
}

/// OpenWhisk's truthiness of a parameter or annotation value (`Parameters.isTruthy`).
pub fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// The value of `key` in a key/value array.
pub fn lookup<'a>(items: &'a Value, key: &str) -> Option<&'a Value> {
    items
        .as_array()?
        .iter()
        .find(|i| i["key"] == key)
        .map(|i| &i["value"])
}

/// `/ns/name`, `/ns/pkg/name`, `ns/name` or a bare `name` → `(path, name)` with `_` and a
/// missing namespace resolved to `namespace` (the controller's `FullyQualifiedEntityName`
/// reader plus `resolve`).
pub fn parse_fqn(s: &str, namespace: &str) -> Result<(String, String), String> {
    let bad = || format!("The name '{s}' is not a valid entity name.");
    let trimmed = s.strip_prefix('/').unwrap_or(s);
    let parts: Vec<&str> = trimmed.split('/').collect();
    let (ns, rest): (&str, &[&str]) = match (s.starts_with('/'), parts.as_slice()) {
        (_, []) => return Err(bad()),
        (false, [name]) => (namespace, std::slice::from_ref(name)),
        (true, [_]) => return Err(bad()),
        (_, [ns, rest @ ..]) if rest.len() <= 2 => (ns, rest),
        _ => return Err(bad()),
    };
    let ns = if ns == "_" { namespace } else { ns };
    for part in std::iter::once(&ns).chain(rest.iter()) {
        check_name(part).map_err(|_| bad())?;
    }
    let (pkg, name) = rest.split_at(rest.len() - 1);
    let path = match pkg {
        [] => ns.to_owned(),
        [p] => format!("{ns}/{p}"),
        _ => return Err(bad()),
    };
    Ok((path, name[0].to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fully_qualified_names_resolve_the_default_namespace() {
        let p = |s| parse_fqn(s, "guest");
        assert_eq!(p("/_/a").unwrap(), ("guest".into(), "a".into()));
        assert_eq!(p("/guest/p/a").unwrap(), ("guest/p".into(), "a".into()));
        assert_eq!(
            p("/whisk.system/utils/echo").unwrap(),
            ("whisk.system/utils".into(), "echo".into())
        );
        assert_eq!(p("a").unwrap(), ("guest".into(), "a".into()));
        assert_eq!(p("guest/a").unwrap(), ("guest".into(), "a".into()));
        for bad in ["", "/a", "/a/b/c/d", "/guest/-x", "/guest//a"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn truthiness_is_the_controllers() {
        assert!(truthy(Some(&json!(true))));
        assert!(truthy(Some(&json!("x"))));
        assert!(truthy(Some(&json!(1))));
        assert!(truthy(Some(&json!({}))));
        assert!(!truthy(Some(&json!(0))));
        assert!(!truthy(Some(&json!(""))));
        assert!(!truthy(Some(&json!(null))));
        assert!(!truthy(None));
    }

    #[test]
    fn versions_and_key_values() {
        assert_eq!(bump_patch("0.0.1"), "0.0.2");
        assert_eq!(bump_patch("1.2.9"), "1.2.10");
        assert_eq!(bump_patch("x"), "0.0.1");
        let old = json!({"parameters": [{"key": "a", "value": 1}], "version": "0.0.3"});
        assert_eq!(
            key_values_field(&json!({}), "parameters", Some(&old)).unwrap(),
            old["parameters"]
        );
        assert_eq!(
            key_values_field(&json!({"parameters": null}), "parameters", None).unwrap(),
            json!([])
        );
        assert!(key_values_field(&json!({"parameters": [{"k": 1}]}), "parameters", None).is_err());
        assert_eq!(next_version(&json!({}), Some(&old)), "0.0.4");
        assert_eq!(next_version(&json!({"version": "1.0.0"}), None), "1.0.0");
        assert_eq!(lookup(&old["parameters"], "a"), Some(&json!(1)));
    }
}

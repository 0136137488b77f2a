//! Packages and package bindings in the whisks database (`WhiskPackage`), as the controller
//! stores and shows them: `_id` `<namespace>/<name>`, `entityType: "package"`, `binding` `{}`
//! for a package or `{"namespace", "name"}` for a binding (with a `binding` annotation the
//! controller always sets itself), parameters that the package's actions inherit.
//!
//! Resolving `ns/pkg` for an invoke follows a binding to its package and merges the parameters
//! package < binding; the action's own parameters then go over both. Another namespace's
//! package is readable (get, list, bind to, invoke its actions) only when it is published, as
//! the controller's entitlement allows for `whisk.system`'s shared packages.

use openwhisk::action::Parameter;
use serde_json::{Value, json};

use crate::entities::{
    self, CONFLICT, EntityError, Whisks, api_view, check_name, key_values_field, next_version,
};

/// `entityType` of packages and bindings.
pub const ENTITY_TYPE: &str = "package";

/// The name the controller reserves for the default package (`/ns/default/action` in web
/// action paths).
pub const DEFAULT_PACKAGE: &str = "default";

/// A package as an invoke sees it, its binding followed.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedPackage {
    /// `ns/pkg` of the package that holds the actions.
    pub path: String,
    /// Package parameters with the binding's over them.
    pub parameters: Vec<Parameter>,
    /// `ns/binding` when the request named a binding.
    pub binding: Option<String>,
}

/// The packages of the whisks database.
#[derive(Debug)]
pub struct Packages {
    whisks: Whisks,
}

impl Packages {
    pub fn new(whisks: Whisks) -> Self {
        Self { whisks }
    }

    /// The package document `namespace/name`; `NotFound` for anything else.
    async fn doc(&self, namespace: &str, name: &str) -> Result<Value, EntityError> {
        check_name(name).map_err(EntityError::Invalid)?;
        self.whisks
            .get_typed(&format!("{namespace}/{name}"), ENTITY_TYPE)
            .await?
            .ok_or(EntityError::NotFound)
    }

    /// A package of another namespace is visible only when published.
    fn visible(doc: &Value, caller: &str) -> bool {
        doc["namespace"] == caller || doc["publish"] == true
    }

    /// `PUT /namespaces/<ns>/packages/<name>[?overwrite=true]`.
    pub async fn put(
        &self,
        namespace: &str,
        name: &str,
        body: &Value,
        overwrite: bool,
    ) -> Result<Value, EntityError> {
        check_name(name).map_err(EntityError::Invalid)?;
        if name == DEFAULT_PACKAGE {
            return Err(EntityError::Invalid(format!(
                "Package name '{name}' is reserved."
            )));
        }
        if !body.is_object() {
            return Err(EntityError::Invalid(
                "The request content was malformed.".into(),
            ));
        }
        let id = format!("{namespace}/{name}");
        let old = self.whisks.get(&id).await?;
        match &old {
            Some(_) if !overwrite => return Err(EntityError::Conflict(CONFLICT.into())),
            Some(d) if d["entityType"] != ENTITY_TYPE => {
                return Err(EntityError::Conflict(CONFLICT.into()));
            }
            _ => {}
        }
        let binding = match body.get("binding") {
            None | Some(Value::Null) => None,
            Some(b) if b.as_object().is_some_and(|o| o.is_empty()) => None,
            Some(b) => Some(self.check_binding(b, namespace).await?),
        };
        let old_binding = old
            .as_ref()
            .map(|o| &o["binding"])
            .filter(|b| b.as_object().is_some_and(|o| !o.is_empty()));
        if binding.is_some() && old.is_some() && old_binding.is_none() {
            return Err(EntityError::Conflict(
                "Resource is a package and cannot be converted into a binding.".into(),
            ));
        }
        let binding = binding.or_else(|| old_binding.cloned());
        let parameters =
            key_values_field(body, "parameters", old.as_ref()).map_err(EntityError::Invalid)?;
        let mut annotations =
            key_values_field(body, "annotations", old.as_ref()).map_err(EntityError::Invalid)?;
        // The controller sets the binding annotation itself.
        if let Some(a) = annotations.as_array_mut() {
            a.retain(|kv| kv["key"] != "binding");
            if let Some(b) = &binding {
                a.push(json!({"key": "binding", "value": b}));
            }
        }
        let publish = body["publish"]
            .as_bool()
            .or_else(|| old.as_ref().and_then(|o| o["publish"].as_bool()))
            .unwrap_or(false);
        let mut doc = json!({
            "_id": id,
            "entityType": ENTITY_TYPE,
            "namespace": namespace,
            "name": name,
            "binding": binding.clone().unwrap_or_else(|| json!({})),
            "parameters": parameters,
            "version": next_version(body, old.as_ref()),
            "publish": publish,
            "annotations": annotations,
            "updated": openwhisk::time::now_ms(),
        });
        if let Some(rev) = old.as_ref().and_then(|o| o.get("_rev")) {
            doc["_rev"] = rev.clone();
        }
        self.whisks.db.put_doc(&self.whisks.name, &id, &doc).await?;
        Ok(api_view(&doc))
    }

    /// A binding's target: it exists, is a package (not a binding) and is visible.
    async fn check_binding(&self, b: &Value, namespace: &str) -> Result<Value, EntityError> {
        let (Some(ns), Some(name)) = (b["namespace"].as_str(), b["name"].as_str()) else {
            return Err(EntityError::Invalid(
                "The request content was malformed: binding needs a namespace and a name.".into(),
            ));
        };
        let ns = if ns == "_" { namespace } else { ns };
        let target = self
            .whisks
            .get(&format!("{ns}/{name}"))
            .await?
            .ok_or_else(|| {
                EntityError::Invalid("Binding references a package that does not exist.".into())
            })?;
        if target["entityType"] != ENTITY_TYPE {
            return Err(EntityError::Conflict(
                "Cannot bind to a resource that is not a package.".into(),
            ));
        }
        if !Self::visible(&target, namespace) {
            return Err(EntityError::Forbidden);
        }
        if is_binding(&target) {
            return Err(EntityError::Invalid(
                "Cannot bind to another package binding.".into(),
            ));
        }
        Ok(json!({"namespace": ns, "name": name}))
    }

    /// `GET /namespaces/<ns>/packages/<name>`: a binding shows its package's actions and the
    /// parameters package < binding, as the controller's `mergePackageWithBinding`.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
        caller: &str,
    ) -> Result<Value, EntityError> {
        let doc = self.doc(namespace, name).await?;
        if !Self::visible(&doc, caller) {
            return Err(EntityError::Forbidden);
        }
        let mut shown = api_view(&doc);
        let holder = if is_binding(&doc) {
            let (ns, pkg) = binding_target(&doc);
            let target = self.doc(&ns, &pkg).await?;
            shown["parameters"] = Value::Array(
                merge_key_values(&target["parameters"], &doc["parameters"])
                    .into_iter()
                    .collect(),
            );
            format!("{ns}/{pkg}")
        } else {
            format!("{namespace}/{name}")
        };
        let (feeds, actions): (Vec<Value>, Vec<Value>) = self
            .whisks
            .list_typed(&holder, openwhisk::action::ENTITY_TYPE)
            .await?
            .into_iter()
            .filter(|a| a["namespace"] == holder.as_str())
            .map(|a| json!({"name": a["name"], "version": a["version"], "annotations": a["annotations"]}))
            .partition(|a| entities::lookup(&a["annotations"], "feed").is_some());
        shown["actions"] = Value::Array(actions);
        shown["feeds"] = Value::Array(feeds);
        Ok(shown)
    }

    /// `GET /namespaces/<ns>/packages`: summaries, most recently updated first; another
    /// namespace lists only its published packages.
    pub async fn list(
        &self,
        namespace: &str,
        caller: &str,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<Value>, EntityError> {
        let mut docs: Vec<Value> = self
            .whisks
            .list_typed(namespace, ENTITY_TYPE)
            .await?
            .into_iter()
            .filter(|d| d["namespace"] == namespace && Self::visible(d, caller))
            .collect();
        docs.sort_by_key(|d| std::cmp::Reverse(d["updated"].as_i64().unwrap_or(0)));
        Ok(docs
            .iter()
            .skip(skip)
            .take(limit)
            .map(|d| {
                let binding = if is_binding(d) {
                    d["binding"].clone()
                } else {
                    Value::Bool(false)
                };
                json!({"namespace": d["namespace"], "name": d["name"], "version": d["version"],
                       "publish": d["publish"], "annotations": d["annotations"],
                       "binding": binding, "updated": d["updated"]})
            })
            .collect())
    }

    /// `DELETE /namespaces/<ns>/packages/<name>[?force=true]`: a package with actions only
    /// with `force` (its actions deleted first); a binding always.
    pub async fn delete(
        &self,
        namespace: &str,
        name: &str,
        force: bool,
    ) -> Result<Value, EntityError> {
        let doc = self.doc(namespace, name).await?;
        if !is_binding(&doc) {
            let path = format!("{namespace}/{name}");
            let inside: Vec<Value> = self
                .whisks
                .list_typed(&path, openwhisk::action::ENTITY_TYPE)
                .await?
                .into_iter()
                .filter(|a| a["namespace"] == path.as_str())
                .collect();
            if !inside.is_empty() && !force {
                let n = inside.len();
                return Err(EntityError::Conflict(format!(
                    "Package not empty (contains {n} {}). Set force param or delete package contents.",
                    if n == 1 { "entity" } else { "entities" }
                )));
            }
            for a in &inside {
                let (Some(id), Some(rev)) = (a["_id"].as_str(), a["_rev"].as_str()) else {
                    continue;
                };
                self.whisks
                    .db
                    .delete_doc(&self.whisks.name, id, rev)
                    .await?;
            }
        }
        let (Some(id), Some(rev)) = (doc["_id"].as_str(), doc["_rev"].as_str()) else {
            return Err(EntityError::NotFound);
        };
        self.whisks
            .db
            .delete_doc(&self.whisks.name, id, rev)
            .await?;
        Ok(api_view(&doc))
    }

    /// `ns/pkg` for an action of it: the package holding the actions and the merged
    /// parameters (`WhiskPackage.resolveBinding` with `mergeParameters`). Another namespace's
    /// package must be published.
    pub async fn resolve(
        &self,
        namespace: &str,
        name: &str,
        caller: &str,
    ) -> Result<ResolvedPackage, EntityError> {
        let doc = self.doc(namespace, name).await?;
        if !Self::visible(&doc, caller) {
            return Err(EntityError::Forbidden);
        }
        if !is_binding(&doc) {
            return Ok(ResolvedPackage {
                path: format!("{namespace}/{name}"),
                parameters: parameters_of(&doc["parameters"]),
                binding: None,
            });
        }
        let (ns, pkg) = binding_target(&doc);
        let target = self.doc(&ns, &pkg).await?;
        if !Self::visible(&target, caller) {
            return Err(EntityError::Forbidden);
        }
        Ok(ResolvedPackage {
            path: format!("{ns}/{pkg}"),
            parameters: parameters_of(&Value::Array(merge_key_values(
                &target["parameters"],
                &doc["parameters"],
            ))),
            binding: Some(format!("{namespace}/{name}")),
        })
    }

    /// Whether `ns/pkg` is a package (not a binding) that actions may be written into.
    pub async fn check_writable(&self, namespace: &str, name: &str) -> Result<(), EntityError> {
        let doc = self.doc(namespace, name).await?;
        if is_binding(&doc) {
            return Err(EntityError::Invalid(
                "Operation not permitted on package binding.".into(),
            ));
        }
        Ok(())
    }
}

/// Whether a package document is a binding.
fn is_binding(doc: &Value) -> bool {
    doc["binding"].as_object().is_some_and(|b| !b.is_empty())
}

/// `(namespace, name)` of a binding's package.
fn binding_target(doc: &Value) -> (String, String) {
    let s = |k: &str| doc["binding"][k].as_str().unwrap_or_default().to_owned();
    (s("namespace"), s("name"))
}

/// `base` with `over`'s keys replacing or added (the controller's `Parameters ++`).
pub fn merge_key_values(base: &Value, over: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = base.as_array().cloned().unwrap_or_default();
    for kv in over.as_array().into_iter().flatten() {
        match out.iter_mut().find(|o| o["key"] == kv["key"]) {
            Some(o) => *o = kv.clone(),
            None => out.push(kv.clone()),
        }
    }
    out
}

/// Stored parameters as typed parameters; unreadable items are skipped.
pub fn parameters_of(items: &Value) -> Vec<Parameter> {
    items
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| serde_json::from_value(p.clone()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_parameters_go_over_the_packages() {
        let base = json!([{"key": "a", "value": 1}, {"key": "b", "value": 2}]);
        let over = json!([{"key": "b", "value": 20}, {"key": "c", "value": 30}]);
        assert_eq!(
            merge_key_values(&base, &over),
            vec![
                json!({"key": "a", "value": 1}),
                json!({"key": "b", "value": 20}),
                json!({"key": "c", "value": 30})
            ]
        );
        let typed = parameters_of(&Value::Array(merge_key_values(&base, &over)));
        assert_eq!(typed.len(), 3);
        assert_eq!(typed[1].value, json!(20));
    }

    #[test]
    fn bindings_are_told_from_packages() {
        assert!(!is_binding(&json!({"binding": {}})));
        assert!(!is_binding(&json!({})));
        let b = json!({"binding": {"namespace": "whisk.system", "name": "utils"}});
        assert!(is_binding(&b));
        assert_eq!(
            binding_target(&b),
            ("whisk.system".to_owned(), "utils".to_owned())
        );
    }
}

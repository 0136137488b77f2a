//! Activation records as the REST API shows them (contract §4.4, §10): the invoker writes them
//! to the activations database; this module reads them back, lists them with the controller's
//! filters and turns them into the "extended" form (`statusCode` replaced by `status` and
//! `success`).

use openwhisk::couchdb::{CouchDb, CouchDbError};
use openwhisk::messages::WhiskActivation;
use serde_json::{Value, json};

/// Most records one list call returns (the controller's `maxListLimit`).
pub const MAX_LIST_LIMIT: usize = 200;
/// Records a list call returns when no limit is given.
pub const DEFAULT_LIST_LIMIT: usize = 30;

/// Filters of `GET /namespaces/<ns>/activations`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: usize,
    pub skip: usize,
    /// Only activations of this action (a simple name).
    pub name: Option<String>,
    /// Only activations that started at or after this epoch millisecond.
    pub since: Option<i64>,
    /// Only activations that started at or before this epoch millisecond.
    pub upto: Option<i64>,
    /// Whole records instead of summaries.
    pub docs: bool,
}

/// The activations database.
#[derive(Debug)]
pub struct Activations {
    db: CouchDb,
    name: String,
}

impl Activations {
    pub fn new(db: CouchDb, name: &str) -> Self {
        Self {
            db,
            name: name.to_owned(),
        }
    }

    /// Creates the database if it does not exist.
    pub async fn ensure_db(&self) -> Result<(), CouchDbError> {
        self.db.create_db(&self.name).await.map(|_| ())
    }

    /// The stored record of `namespace/activation_id`, if there is one yet.
    pub async fn get(
        &self,
        namespace: &str,
        activation_id: &str,
    ) -> Result<Option<Value>, CouchDbError> {
        match self
            .db
            .get_doc(&self.name, &format!("{namespace}/{activation_id}"))
            .await
        {
            Ok(d) if d["entityType"] == "activation" => Ok(Some(d)),
            Ok(_) | Err(CouchDbError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a record the front door makes itself (sequences, trigger fires: the controller
    /// writes those, contract §4.3).
    pub async fn put(&self, record: &WhiskActivation) -> Result<(), CouchDbError> {
        let doc = record.to_document(openwhisk::time::now_ms());
        let id = format!("{}/{}", record.namespace, record.activation_id);
        self.db.put_doc(&self.name, &id, &doc).await.map(|_| ())
    }

    /// The namespace's records matching `q`, newest first, extended (whole or summarized).
    pub async fn list(&self, namespace: &str, q: &ListQuery) -> Result<Vec<Value>, CouchDbError> {
        Ok(self
            .matching(namespace, q)
            .await?
            .iter()
            .skip(q.skip)
            .take(q.limit)
            .map(|d| if q.docs { extended(d) } else { summary(d) })
            .collect())
    }

    /// How many records match `q` (skip and limit aside).
    pub async fn count(&self, namespace: &str, q: &ListQuery) -> Result<usize, CouchDbError> {
        Ok(self.matching(namespace, q).await?.len())
    }

    async fn matching(&self, namespace: &str, q: &ListQuery) -> Result<Vec<Value>, CouchDbError> {
        let mut docs: Vec<Value> = self
            .db
            .docs_with_prefix(&self.name, &format!("{namespace}/"))
            .await?
            .into_iter()
            .filter(|d| d["entityType"] == "activation")
            .filter(|d| q.name.as_deref().is_none_or(|n| d["name"] == n))
            .filter(|d| {
                let start = d["start"].as_i64().unwrap_or(0);
                q.since.is_none_or(|s| start >= s) && q.upto.is_none_or(|u| start <= u)
            })
            .collect();
        docs.sort_by_key(|d| std::cmp::Reverse(d["start"].as_i64().unwrap_or(0)));
        Ok(docs)
    }
}

/// The status name of a status code, as the REST API shows it.
pub fn status_name(code: u64) -> &'static str {
    match code {
        0 => "success",
        1 => "application error",
        2 => "action developer error",
        _ => "whisk internal error",
    }
}

/// The "extended" record: CouchDB's fields gone, `response.statusCode` replaced by
/// `response.status` and `response.success`.
pub fn extended(doc: &Value) -> Value {
    let mut v = doc.clone();
    if let Some(o) = v.as_object_mut() {
        for k in ["_id", "_rev", "entityType", "updated"] {
            o.remove(k);
        }
    }
    let code = v["response"]["statusCode"].as_u64().unwrap_or(3);
    if let Some(r) = v["response"].as_object_mut() {
        r.remove("statusCode");
        r.insert("status".into(), json!(status_name(code)));
        r.insert("success".into(), json!(code == 0));
        r.entry("result").or_insert(json!({}));
    }
    v
}

/// A list entry without logs and result: identity, times, status code and annotations.
pub fn summary(doc: &Value) -> Value {
    let mut v = extended(doc);
    let code = doc["response"]["statusCode"].as_u64().unwrap_or(3);
    if let Some(o) = v.as_object_mut() {
        o.remove("logs");
        o.remove("response");
        o.insert("statusCode".into(), json!(code));
    }
    v
}

/// `GET .../activations/<id>/result`.
pub fn result_view(doc: &Value) -> Value {
    extended(doc)["response"].clone()
}

/// `GET .../activations/<id>/logs`.
pub fn logs_view(doc: &Value) -> Value {
    json!({"logs": doc["logs"].as_array().cloned().unwrap_or_default()})
}

#[cfg(test)]
mod tests {
    use openwhisk::messages::ActivationResponse;

    use super::*;

    fn record(code: u8) -> Value {
        let mut doc = WhiskActivation {
            namespace: "guest".into(),
            name: "hello".into(),
            subject: "guest".into(),
            activation_id: "a1".into(),
            start: 1,
            end: 3,
            duration: Some(2),
            cause: None,
            response: ActivationResponse {
                status_code: code,
                result: Some(json!({"error": "e"})),
                size: Some(13),
            },
            logs: vec!["l".into()],
            version: "0.0.1".into(),
            publish: false,
            annotations: vec![],
        }
        .to_document(5);
        doc["_rev"] = json!("1-x");
        doc
    }

    #[test]
    fn extended_form_replaces_the_status_code() {
        let e = extended(&record(1));
        assert_eq!(e["response"]["status"], "application error");
        assert_eq!(e["response"]["success"], false);
        assert!(e["response"].get("statusCode").is_none());
        assert!(e.get("_id").is_none() && e.get("entityType").is_none());
        assert_eq!(e["logs"], json!(["l"]));
        assert_eq!(extended(&record(0))["response"]["success"], true);
        assert_eq!(
            extended(&record(3))["response"]["status"],
            "whisk internal error"
        );
    }

    #[test]
    fn summaries_drop_logs_and_result() {
        let s = summary(&record(2));
        assert!(s.get("logs").is_none() && s.get("response").is_none());
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Summary {
            activation_id: String,
            status_code: u8,
        }
        let typed: Summary = serde_json::from_value(s).unwrap();
        assert_eq!((typed.activation_id.as_str(), typed.status_code), ("a1", 2));
    }

    #[test]
    fn result_and_logs_views() {
        let r = result_view(&record(0));
        assert_eq!(r["status"], "success");
        assert_eq!(r["size"], 13);
        assert_eq!(logs_view(&record(0)), json!({"logs": ["l"]}));
    }
}

//! Who may call: the subjects database (`WhiskAuth`), seeded with OpenWhisk's default `guest`
//! and `whisk.system` keys (contract §10), and basic-auth checks against it.
//!
//! Subjects are read once at start-up and again whenever a key is not known (someone may have
//! added a subject), at most once a second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use openwhisk::couchdb::{CouchDb, CouchDbError};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use openwhisk::messages::DEFAULT_SUBJECTS;

/// How often an unknown key may trigger a re-read of the database.
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Errors of the subjects store.
#[derive(Debug, thiserror::Error)]
pub enum SubjectsError {
    #[error("subjects database {db}")]
    Db {
        db: String,
        #[source]
        source: CouchDbError,
    },
}

/// An authenticated caller and its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub namespace: String,
    pub uuid: String,
    pub key: String,
}

impl Identity {
    /// The `user` of an `ActivationMessage` (contract §3.2).
    pub fn to_message(&self) -> Value {
        json!({
            "subject": self.subject,
            "namespace": {"name": self.namespace, "uuid": self.uuid},
            "authkey": {"api_key": format!("{}:{}", self.uuid, self.key)},
            "rights": ["READ", "PUT", "DELETE", "ACTIVATE"],
            "limits": {}
        })
    }
}

#[derive(Debug)]
struct Cache {
    by_uuid: HashMap<String, Identity>,
    loaded: Instant,
}

/// The subjects database and a cache of its keys.
#[derive(Debug)]
pub struct Subjects {
    db: CouchDb,
    name: String,
    cache: Mutex<Cache>,
}

impl Subjects {
    /// Creates the database if needed, adds the default subjects that are missing and reads
    /// every subject.
    pub async fn open(db: CouchDb, name: &str) -> Result<Self, SubjectsError> {
        let err = |source| SubjectsError::Db {
            db: name.to_owned(),
            source,
        };
        db.create_db(name).await.map_err(err)?;
        for (subject, uuid, key) in DEFAULT_SUBJECTS {
            let doc = json!({
                "_id": subject, "subject": subject,
                "namespaces": [{"name": subject, "uuid": uuid, "key": key}]
            });
            match db.put_doc(name, subject, &doc).await {
                Ok(_) | Err(CouchDbError::Conflict { .. }) => {}
                Err(e) => return Err(err(e)),
            }
        }
        let subjects = Self {
            db,
            name: name.to_owned(),
            cache: Mutex::new(Cache {
                by_uuid: HashMap::new(),
                loaded: Instant::now(),
            }),
        };
        let loaded = subjects.read_all().await?;
        subjects.cache.lock().await.by_uuid = loaded;
        Ok(subjects)
    }

    async fn read_all(&self) -> Result<HashMap<String, Identity>, SubjectsError> {
        let docs = self
            .db
            .all_docs(&self.name, None, None)
            .await
            .map_err(|source| SubjectsError::Db {
                db: self.name.clone(),
                source,
            })?;
        let mut out = HashMap::new();
        for doc in docs {
            let subject = doc["subject"].as_str().unwrap_or_default();
            for ns in doc["namespaces"].as_array().into_iter().flatten() {
                let (Some(name), Some(uuid), Some(key)) =
                    (ns["name"].as_str(), ns["uuid"].as_str(), ns["key"].as_str())
                else {
                    continue;
                };
                out.insert(
                    uuid.to_owned(),
                    Identity {
                        subject: subject.to_owned(),
                        namespace: name.to_owned(),
                        uuid: uuid.to_owned(),
                        key: key.to_owned(),
                    },
                );
            }
        }
        Ok(out)
    }

    /// The identity of an `Authorization: Basic base64(uuid:key)` header, or `None` when the
    /// header is missing, malformed or names no subject.
    pub async fn authenticate(
        &self,
        header: Option<&str>,
    ) -> Result<Option<Identity>, SubjectsError> {
        let Some((uuid, key)) = header.and_then(parse_basic) else {
            return Ok(None);
        };
        let mut cache = self.cache.lock().await;
        if !cache.by_uuid.contains_key(&uuid) && cache.loaded.elapsed() >= RELOAD_AT_MOST_EVERY {
            cache.by_uuid = self.read_all().await?;
            cache.loaded = Instant::now();
        }
        // Both parts must match; the key comparison does not stop at the first difference.
        Ok(cache
            .by_uuid
            .get(&uuid)
            .filter(|id| constant_time_eq(id.key.as_bytes(), key.as_bytes()))
            .cloned())
    }
}

impl Subjects {
    /// The identity that owns `namespace` (web actions run as their namespace's owner); the
    /// database is read again when the namespace is not known yet, at most once a second.
    pub async fn by_namespace(&self, namespace: &str) -> Result<Option<Identity>, SubjectsError> {
        let mut cache = self.cache.lock().await;
        let find = |c: &Cache| {
            c.by_uuid
                .values()
                .find(|i| i.namespace == namespace)
                .cloned()
        };
        if let Some(found) = find(&cache) {
            return Ok(Some(found));
        }
        if cache.loaded.elapsed() >= RELOAD_AT_MOST_EVERY {
            cache.by_uuid = self.read_all().await?;
            cache.loaded = Instant::now();
        }
        Ok(find(&cache))
    }
}

/// `Basic base64(user:password)` → `(user, password)`.
fn parse_basic(header: &str) -> Option<(String, String)> {
    let b64 = header.trim().strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_headers_are_parsed() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("u-1:k:with:colons")
        );
        assert_eq!(
            parse_basic(&h),
            Some(("u-1".into(), "k:with:colons".into()))
        );
        assert_eq!(parse_basic("Bearer x"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        let no_colon = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("nocolon")
        );
        assert_eq!(parse_basic(&no_colon), None);
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn message_identity_has_the_controllers_shape() {
        let id = Identity {
            subject: "guest".into(),
            namespace: "guest".into(),
            uuid: "u".into(),
            key: "k".into(),
        };
        let m = id.to_message();
        assert_eq!(m["authkey"]["api_key"], "u:k");
        assert_eq!(m["namespace"]["name"], "guest");
        assert_eq!(m["rights"].as_array().map(Vec::len), Some(4));
    }
}

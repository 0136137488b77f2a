//! The protocol: init once, run many times, the response rules and the sentinels.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::launcher::Launcher;
use crate::native;

/// Written on stdout and stderr after every failed init and every run, so that the invoker
/// can tell where an activation's logs end.
pub const SENTINEL: &str = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX";

/// OpenWhisk's message when a run's output is neither a JSON object nor an array.
pub const NOT_A_DICTIONARY: &str = "The action did not return a dictionary or array.";

/// How the image configures the proxy.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the action's code goes (`OW_ACTION_DIR`, default `/action`).
    pub action_dir: PathBuf,
    /// The launcher command line (`OW_LAUNCHER`, split on spaces); `None` for native actions.
    pub launcher: Option<Vec<String>>,
    /// The file plain-text code is written to (`OW_SOURCE_FILE`; `exec` for native actions).
    pub source_file: String,
    /// Whether runs may overlap (`__OW_ALLOW_CONCURRENT=true`).
    pub allow_concurrent: bool,
    /// The port (`OW_PROXY_PORT`, default 8080).
    pub port: u16,
}

impl Config {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let launcher =
            var("OW_LAUNCHER").map(|l| l.split_whitespace().map(str::to_owned).collect());
        Self {
            action_dir: var("OW_ACTION_DIR")
                .unwrap_or_else(|| "/action".into())
                .into(),
            source_file: var("OW_SOURCE_FILE").unwrap_or_else(|| "exec".into()),
            launcher,
            allow_concurrent: var("__OW_ALLOW_CONCURRENT")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            port: var("OW_PROXY_PORT")
                .and_then(|p| p.parse().ok())
                .unwrap_or(8080),
        }
    }
}

/// An HTTP answer: status and JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub(crate) fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }

    pub(crate) fn error(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

/// The initialized action.
#[derive(Debug)]
enum Action {
    Native { init_env: Vec<(String, String)> },
    Launcher(Arc<Launcher>),
}

/// The proxy's state: nothing, then an action.
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    action: tokio::sync::RwLock<Option<Action>>,
    /// Held by a run when runs may not overlap.
    run_lock: tokio::sync::Mutex<()>,
    /// Held by `/init`, so two inits cannot both pass the "not yet initialized" check.
    init_lock: tokio::sync::Mutex<()>,
}

impl Proxy {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            action: tokio::sync::RwLock::new(None),
            run_lock: tokio::sync::Mutex::new(()),
            init_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// `POST /init`.
    pub async fn init(&self, body: &[u8]) -> Reply {
        let _init = self.init_lock.lock().await;
        if self.action.read().await.is_some() {
            let msg = "Cannot initialize the action more than once.";
            eprintln!("{msg}");
            sentinels();
            return Reply::error(403, msg);
        }
        let message: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let value = match message.get("value") {
            None => json!({}),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                sentinels();
                return Reply::error(404, "The init message's value must be an object.");
            }
        };
        let init_env = env_of(value.get("env"));
        let result = match &self.config.launcher {
            None => native::init(&self.config, &value)
                .await
                .map(|()| Action::Native { init_env }),
            Some(argv) => Launcher::start(&self.config, argv, &value, &init_env)
                .await
                .map(|l| Action::Launcher(Arc::new(l))),
        };
        match result {
            Ok(action) => {
                *self.action.write().await = Some(action);
                Reply::ok(json!({ "ok": true }))
            }
            Err(message) => {
                eprintln!("{message}");
                sentinels();
                Reply::error(502, message)
            }
        }
    }

    /// `POST /run`.
    pub async fn run(&self, body: &[u8]) -> Reply {
        let reply = self.run_inner(body).await;
        sentinels();
        reply
    }

    async fn run_inner(&self, body: &[u8]) -> Reply {
        let message: Value = match serde_json::from_slice(body) {
            Ok(Value::Object(m)) => Value::Object(m),
            Ok(Value::Null) | Err(_) if body.iter().all(u8::is_ascii_whitespace) => json!({}),
            _ => {
                return Reply::error(
                    404,
                    "The action did not receive a dictionary or array as an argument.",
                );
            }
        };
        let value = message.get("value").cloned().unwrap_or_else(|| json!({}));
        if !(value.is_object() || value.is_array()) {
            return Reply::error(
                404,
                "The action did not receive a dictionary or array as an argument.",
            );
        }
        let _serial = if self.config.allow_concurrent {
            None
        } else {
            Some(self.run_lock.lock().await)
        };
        let action = self.action.read().await;
        match action.as_ref() {
            None => Reply::error(
                502,
                "The action failed to locate a binary. See logs for details.",
            ),
            Some(Action::Native { init_env }) => {
                let mut env = init_env.clone();
                env.extend(context_env(&message));
                native::run(&self.config, &value, &env).await
            }
            Some(Action::Launcher(l)) => {
                let l = l.clone();
                drop(action);
                l.run(message).await
            }
        }
    }
}

/// The response rules for a value an action returned: an object or array is the result (an
/// object with `error` is the invoker's application error); anything else is a developer error.
pub(crate) fn result_reply(result: Value) -> Reply {
    match result {
        v @ (Value::Object(_) | Value::Array(_)) => Reply::ok(v),
        _ => Reply::error(502, NOT_A_DICTIONARY),
    }
}

/// `{"k": v}` → `[("k", "v")]`, strings as they are, `null` as empty, others as compact JSON.
pub(crate) fn env_of(env: Option<&Value>) -> Vec<(String, String)> {
    let Some(Value::Object(map)) = env else {
        return Vec::new();
    };
    map.iter().map(|(k, v)| (k.clone(), env_value(v))).collect()
}

fn env_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Every field of a run message but `value`, as `__OW_<FIELD>` (contract §5.3).
pub(crate) fn context_env(message: &Value) -> Vec<(String, String)> {
    let Value::Object(map) = message else {
        return Vec::new();
    };
    map.iter()
        .filter(|(k, _)| k.as_str() != "value")
        .map(|(k, v)| (format!("__OW_{}", k.to_uppercase()), env_value(v)))
        .collect()
}

/// Writes the sentinel line on stdout and stderr.
pub(crate) fn sentinels() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{SENTINEL}");
    let _ = out.flush();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{SENTINEL}");
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_rules() {
        assert_eq!(result_reply(json!({"a": 1})).status, 200);
        assert_eq!(result_reply(json!([1, 2])).status, 200);
        let app_error = result_reply(json!({"error": "bad"}));
        assert_eq!(
            (app_error.status, app_error.body),
            (200, json!({"error": "bad"}))
        );
        for v in [json!("text"), json!(3), json!(null), json!(true)] {
            let r = result_reply(v);
            assert_eq!(
                (r.status, r.body),
                (502, json!({"error": NOT_A_DICTIONARY}))
            );
        }
    }

    #[test]
    fn context_fields_become_ow_variables() {
        let env = context_env(&json!({
            "value": {"x": 1}, "namespace": "guest", "deadline": "1714560060210",
            "action_version": null, "api_key": "k:v"
        }));
        let mut env: Vec<_> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.sort();
        assert_eq!(
            env,
            [
                "__OW_ACTION_VERSION=",
                "__OW_API_KEY=k:v",
                "__OW_DEADLINE=1714560060210",
                "__OW_NAMESPACE=guest"
            ]
        );
    }
}

//! Language actions: a launcher process loads the code once and answers one JSON line per run on
//! fd 3 (protocol in the crate docs).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

use crate::native::write_code;
use crate::protocol::{Config, Reply, result_reply, sentinels};

type Pending = parking_lot::Mutex<HashMap<u64, oneshot::Sender<Value>>>;

/// A running launcher.
#[derive(Debug)]
pub(crate) struct Launcher {
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    pending: std::sync::Arc<Pending>,
    next_id: AtomicU64,
    _child: tokio::process::Child,
}

impl Launcher {
    /// Writes the code, starts the launcher with the init environment, and waits until it says
    /// the code is loaded.
    pub(crate) async fn start(
        config: &Config,
        argv: &[String],
        value: &Value,
        init_env: &[(String, String)],
    ) -> Result<Self, String> {
        let binary = value
            .get("binary")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let main = value
            .get("main")
            .and_then(Value::as_str)
            .unwrap_or("main")
            .to_owned();
        let Some(code) = value.get("code").and_then(Value::as_str) else {
            return Err("Missing main/no code to execute.".into());
        };
        let (dir, file, code) = (
            config.action_dir.clone(),
            config.action_dir.join(&config.source_file),
            code.to_owned(),
        );
        tokio::task::spawn_blocking(move || write_code(&dir, &file, &code, binary))
            .await
            .map_err(|e| format!("init failed: {e}"))??;

        let (reader, writer) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let writer: OwnedFd = writer.into();
        let writer_fd = writer.as_raw_fd();
        let (program, args) = argv.split_first().ok_or("OW_LAUNCHER is empty")?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(&config.action_dir)
            .envs(init_env.iter().map(|(k, v)| (k, v)))
            .env("OW_ACTION_DIR", &config.action_dir)
            .env("OW_SOURCE_FILE", &config.source_file)
            .env("OW_MAIN", &main)
            .env("OW_BINARY", if binary { "true" } else { "false" })
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // SAFETY: between fork and exec the closure only calls dup2, which is async-signal-safe;
        // `writer_fd` is open in the child (inherited) until exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(writer_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the launcher {program}: {e}"))?;
        drop(writer);
        let stdin = child.stdin.take().ok_or("the launcher has no stdin")?;
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
            .map_err(|e| format!("cannot read the launcher's replies: {e}"))?;
        let mut lines = BufReader::new(reader).lines();

        let first = lines
            .next_line()
            .await
            .map_err(|e| format!("the launcher failed: {e}"))?;
        let first: Value = match first {
            Some(l) => serde_json::from_str(&l).map_err(|_| format!("the launcher said {l:?}"))?,
            None => return Err("The action failed to initialize: the launcher exited.".into()),
        };
        if let Some(error) = first.get("error") {
            return Err(error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_owned));
        }

        let pending: std::sync::Arc<Pending> = std::sync::Arc::default();
        let routes = pending.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(reply) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("the launcher wrote a line that is not JSON: {line}");
                    continue;
                };
                let id = reply.get("id").and_then(Value::as_u64).unwrap_or(u64::MAX);
                let waiter = routes.lock().remove(&id);
                if let Some(w) = waiter {
                    let _ = w.send(reply);
                }
            }
            // The launcher is gone. Like a runtime whose process died, the container stops
            // answering: the invoker sees the connection drop and reports the developer error.
            eprintln!("The action process exited unexpectedly.");
            sentinels();
            std::process::exit(1);
        });
        Ok(Self {
            stdin: tokio::sync::Mutex::new(stdin),
            pending,
            next_id: AtomicU64::new(0),
            _child: child,
        })
    }

    /// Sends one run to the launcher and waits for its answer.
    pub(crate) async fn run(&self, mut message: Value) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        message["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let mut line = message.to_string();
        line.push('\n');
        {
            let mut stdin = self.stdin.lock().await;
            if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                return Reply::error(502, "The action process exited unexpectedly.");
            }
        }
        let Ok(reply) = rx.await else {
            return Reply::error(502, "The action process exited unexpectedly.");
        };
        if let Some(exception) = reply.get("exception") {
            let text = exception
                .as_str()
                .map_or_else(|| exception.to_string(), str::to_owned);
            return Reply::error(502, format!("An error has occurred: {text}"));
        }
        result_reply(reply.get("result").cloned().unwrap_or(Value::Null))
    }
}

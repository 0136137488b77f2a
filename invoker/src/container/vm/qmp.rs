//! A minimal client of QEMU's machine protocol (QMP) on a unix socket: the greeting, the
//! capabilities handshake, and one command at a time with its answer. Asynchronous events
//! that QEMU sends between answers (`STOP`, `RESUME`, `SHUTDOWN`, …) are skipped.
//!
//! Every exchange is bounded by the client's timeout: a VMM that stops answering must not hold
//! a pause, a resume or a teardown forever. After a timeout or a broken answer the connection
//! is in an unknown state and must be dropped; the caller decides whether to reconnect or kill.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// The longest answer line accepted (QEMU's answers to our commands are a few hundred bytes;
/// a `query-*` with large output would need more).
const MAX_LINE: usize = 1 << 20;
/// Between connection attempts while QEMU has not created its socket yet.
const CONNECT_RETRY: Duration = Duration::from_millis(5);

/// A QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {}", .path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP did not answer {what} within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("QMP connection broke during {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP closed the connection during {what}")]
    Closed { what: String },
    #[error("QMP sent something that is not a QMP message during {what}: {line:?}")]
    Protocol { what: String, line: String },
    /// QEMU refused the command.
    #[error("QMP {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// One QMP connection, past the capabilities handshake.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl Qmp {
    /// Connects to `path` (retrying while the socket is missing or refuses, until `timeout`),
    /// reads the greeting and leaves negotiation mode.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        Self::connect_within(path, timeout, timeout).await
    }

    /// [`Qmp::connect`] with `within` for the connection, greeting and negotiation (a VM that
    /// is starting beside many others on a busy host may take longer than one exchange's
    /// bound) and `timeout` for every later exchange.
    pub async fn connect_within(
        path: &Path,
        within: Duration,
        timeout: Duration,
    ) -> Result<Self, QmpError> {
        let mut qmp = Self::negotiate(path, within).await?;
        qmp.timeout = timeout;
        Ok(qmp)
    }

    async fn negotiate(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(r),
            writer: w,
            timeout,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let what = "the greeting";
        let greeting = tokio::time::timeout(left, qmp.next_message(what))
            .await
            .map_err(|_| QmpError::Timeout {
                what: what.into(),
                after: timeout,
            })??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol {
                what: what.into(),
                line: greeting.to_string(),
            });
        }
        qmp.execute("qmp_capabilities").await?;
        Ok(qmp)
    }

    /// Runs `command` (no arguments) and returns its `return` value.
    pub async fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        let after = self.timeout;
        tokio::time::timeout(after, self.exchange(command))
            .await
            .map_err(|_| QmpError::Timeout {
                what: command.to_owned(),
                after,
            })?
    }

    /// Sends `quit` and waits for its answer or for QEMU to close the socket, whichever comes
    /// first: QEMU may exit before its answer is read.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit").await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn exchange(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut line = json!({ "execute": command }).to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| QmpError::Io {
                what: command.to_owned(),
                source,
            })?;
        loop {
            let m = self.next_message(command).await?;
            if m.get("event").is_some() {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol {
                what: command.to_owned(),
                line: m.to_string(),
            });
        }
    }

    /// The next JSON object QEMU sends (one per line).
    async fn next_message(&mut self, what: &str) -> Result<Value, QmpError> {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut buf)
                .await
                .map_err(|source| QmpError::Io {
                    what: what.to_owned(),
                    source,
                })?;
            if n == 0 {
                return Err(QmpError::Closed {
                    what: what.to_owned(),
                });
            }
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            return match serde_json::from_str::<Value>(text) {
                Ok(v) if v.is_object() => Ok(v),
                _ => Err(QmpError::Protocol {
                    what: what.to_owned(),
                    line: text.chars().take(200).collect(),
                }),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#;

    /// A QMP server that answers each line with the next of `answers` (several lines may be
    /// one answer, separated by `\n`; an empty one is no answer, and the server then holds the
    /// connection open until the client goes), and records what it was sent.
    async fn server(
        dir: &Path,
        greeting: Option<&'static str>,
        answers: Vec<&'static str>,
    ) -> (PathBuf, tokio::task::JoinHandle<Vec<String>>) {
        let path = dir.join("qmp");
        let listener = UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            let mut got = Vec::new();
            if let Some(g) = greeting {
                w.write_all(format!("{g}\r\n").as_bytes()).await.unwrap();
            } else {
                // Never greets: holds the connection open until the client goes.
                while let Ok(Some(_)) = lines.next_line().await {}
                return got;
            }
            for a in answers {
                match lines.next_line().await {
                    Ok(Some(l)) => got.push(l),
                    _ => return got,
                }
                if a.is_empty() {
                    while let Ok(Some(_)) = lines.next_line().await {}
                    return got;
                }
                w.write_all(format!("{a}\r\n").as_bytes()).await.unwrap();
            }
            got
        });
        (path, task)
    }

    #[tokio::test]
    async fn commands_are_answered_past_events() {
        let dir = tempfile::tempdir().unwrap();
        let (path, task) = server(
            dir.path(),
            Some(GREETING),
            vec![
                r#"{"return": {}}"#,
                "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\n{\"return\": {}}",
                r#"{"return": {"status": "paused", "running": false}}"#,
                r#"{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#,
            ],
        )
        .await;
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(q.execute("stop").await.unwrap(), json!({}));
        assert_eq!(q.execute("query-status").await.unwrap()["status"], "paused");
        match q.execute("nope").await {
            Err(QmpError::Command { command, class, .. }) => {
                assert_eq!(
                    (command.as_str(), class.as_str()),
                    ("nope", "CommandNotFound")
                );
            }
            other => panic!("expected a command error, got {other:?}"),
        }
        drop(q);
        let sent = task.await.unwrap();
        assert_eq!(
            sent,
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"stop"}"#,
                r#"{"execute":"query-status"}"#,
                r#"{"execute":"nope"}"#,
            ]
        );
    }

    /// A socket that accepts but never greets is a timeout, not a hang.
    #[tokio::test(start_paused = true)]
    async fn a_silent_socket_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _task) = server(dir.path(), None, vec![]).await;
        match Qmp::connect(&path, Duration::from_secs(2)).await {
            Err(QmpError::Timeout { what, after }) => {
                assert_eq!(what, "the greeting");
                assert!(after <= Duration::from_secs(2));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    /// A command whose answer never comes is a timeout.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_command_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _task) = server(dir.path(), Some(GREETING), vec![r#"{"return": {}}"#, ""]).await;
        let mut q = Qmp::connect(&path, Duration::from_secs(3)).await.unwrap();
        match q.execute("cont").await {
            Err(QmpError::Timeout { what, after }) => {
                assert_eq!((what.as_str(), after), ("cont", Duration::from_secs(3)));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    /// `quit` succeeds when QEMU closes the socket instead of answering.
    #[tokio::test]
    async fn quit_accepts_a_closed_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (path, task) = server(dir.path(), Some(GREETING), vec![r#"{"return": {}}"#]).await;
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        // The server ends after the handshake: the next line it would read is `quit`.
        task.await.unwrap();
        q.quit().await.unwrap();
    }

    /// No socket at all, once the connect deadline passed, is a connect error naming the path.
    #[tokio::test(start_paused = true)]
    async fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none");
        match Qmp::connect(&path, Duration::from_millis(50)).await {
            Err(QmpError::Connect { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
}

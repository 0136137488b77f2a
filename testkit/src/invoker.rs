//! An invoker binary run as a child process against the local stack, the way the end-to-end
//! suites and the benchmarks run it: OpenWhisk's own environment (`KAFKA_HOSTS`,
//! `CONFIG_whisk_*`), databases and topics of the caller's choosing, and a stop that drains
//! (SIGTERM) before it kills.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::stack::Stack;

/// How to start one invoker.
#[derive(Debug)]
pub struct InvokerCommand {
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, OsString)>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
    grace: Duration,
}

impl InvokerCommand {
    /// `binary --id <id> --uniqueName <unique_name>` with the stack's broker and CouchDB.
    pub fn new(binary: impl Into<PathBuf>, stack: &Stack, id: u32, unique_name: &str) -> Self {
        let mut c = Self {
            binary: binary.into(),
            args: vec![
                "--id".into(),
                id.to_string(),
                "--uniqueName".into(),
                unique_name.into(),
            ],
            env: Vec::new(),
            stdout: None,
            stderr: None,
            grace: Duration::from_secs(60),
        };
        let couch_port = stack
            .couchdb
            .url
            .rsplit(':')
            .next()
            .unwrap_or("5984")
            .to_owned();
        c = c
            .env("KAFKA_HOSTS", &stack.kafka_hosts)
            .env("CONFIG_whisk_couchdb_port", couch_port)
            .env("CONFIG_whisk_couchdb_username", &stack.couchdb.username)
            .env("CONFIG_whisk_couchdb_password", &stack.couchdb.password);
        c
    }

    /// One environment variable (a later value for the same key wins).
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Several environment variables.
    pub fn envs<K: AsRef<str>, V: Into<OsString>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in vars {
            self.env.push((k.as_ref().to_owned(), v.into()));
        }
        self
    }

    /// The Kafka topics prefix (`whisk.kafka.topics.prefix`): topics of the caller's own.
    pub fn topics_prefix(self, prefix: &str) -> Self {
        self.env("CONFIG_whisk_kafka_topics_prefix", prefix)
    }

    /// The whisks and activations databases.
    pub fn databases(self, whisks: &str, activations: &str) -> Self {
        self.env("CONFIG_whisk_couchdb_databases_WhiskEntity", whisks)
            .env(
                "CONFIG_whisk_couchdb_databases_WhiskActivation",
                activations,
            )
    }

    /// The invoker's HTTP port (`PORT`).
    pub fn port(self, port: u16) -> Self {
        self.env("PORT", port.to_string())
    }

    /// Where its stdout goes (default: nowhere).
    pub fn stdout(mut self, to: impl Into<Stdio>) -> Self {
        self.stdout = Some(to.into());
        self
    }

    /// Where its stderr (its log) goes (default: the caller's stderr).
    pub fn stderr(mut self, to: impl Into<Stdio>) -> Self {
        self.stderr = Some(to.into());
        self
    }

    /// How long [`InvokerProcess::stop`] waits for the drain after SIGTERM before SIGKILL.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Starts it.
    pub fn spawn(self) -> io::Result<InvokerProcess> {
        let child = Command::new(&self.binary)
            .args(&self.args)
            .envs(self.env)
            .stdout(self.stdout.unwrap_or_else(Stdio::null))
            .stderr(self.stderr.unwrap_or_else(Stdio::inherit))
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.binary.display())))?;
        Ok(InvokerProcess {
            child,
            grace: self.grace,
        })
    }
}

/// A running invoker; stopped (drained, then killed if it must be) when dropped.
#[derive(Debug)]
pub struct InvokerProcess {
    child: Child,
    grace: Duration,
}

impl InvokerProcess {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (and how).
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// SIGTERM (the invoker drains and removes its containers), then SIGKILL after the grace
    /// period; waits until the process is gone.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL now, no drain (a crash, for the tests that need one).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for InvokerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port the kernel says is free now (not one from a formula: those can fall in the
/// ephemeral range and collide with a client's local port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

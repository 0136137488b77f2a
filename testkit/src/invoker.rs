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
            .env(
                "CONFIG_whisk_couchdb_password",
                stack.couchdb.password.expose(),
            );
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

    /// Starts it. The invoker gets SIGTERM (drains and removes what it made) when the thread
    /// that started it ends, so a test or benchmark killed by a signal leaves no invoker
    /// behind.
    pub fn spawn(self) -> io::Result<InvokerProcess> {
        let parent = std::process::id();
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .envs(self.env)
            .stdout(self.stdout.unwrap_or_else(Stdio::null))
            .stderr(self.stderr.unwrap_or_else(Stdio::inherit));
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid, kill on itself); it allocates nothing.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)?;
                // The parent may have died before the line above: then no signal would come.
                if nix::unistd::getppid().as_raw() != i32::try_from(parent).unwrap_or(-1) {
                    let _ = kill(nix::unistd::getpid(), Signal::SIGTERM);
                }
                Ok(())
            });
        }
        let child = command
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

/// A TCP port free now and below the kernel's ephemeral range, for a server that is stopped
/// and started again on the same port: while it is down, no client's local port can take it
/// (a port from [`free_port`] can be, it is in that range).
pub fn free_port_outside_ephemeral() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, last) = (20_000u16, low.saturating_sub(1));
    assert!(
        first < last,
        "the ephemeral range starts at {low}: no room below it"
    );
    let span = u32::from(last - first) + 1;
    // Starting from this process's id keeps two test processes off the same first choice.
    let start = std::process::id() % span;
    (0..span)
        .map(|i| first + u16::try_from((start + i) % span).unwrap_or(0))
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or_else(|| panic!("no free port in {first}..={last}"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A stand-in for the invoker binary: writes `TERM` to `$OUT` when SIGTERM arrives.
    fn stand_in(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("fake-invoker");
        std::fs::write(
            &path,
            "#!/bin/sh\ntrap 'echo TERM > \"$OUT\"; exit 0' TERM\nwhile :; do sleep 0.05; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn stack() -> Stack {
        Stack::from_env()
    }

    #[test]
    fn the_invoker_is_told_to_stop_when_the_thread_that_started_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (binary, out) = (stand_in(dir.path()), dir.path().join("out"));
        let out2 = out.clone();
        // Leaked on purpose: no Drop runs, as when the test process is killed.
        let pid = std::thread::spawn(move || {
            let p = InvokerCommand::new(binary, &stack(), 7, "7")
                .env("OUT", &out2)
                .spawn()
                .unwrap();
            let pid = p.pid();
            std::mem::forget(p);
            pid
        })
        .join()
        .unwrap();
        // SIGTERM may arrive before the shell has set its trap: then it dies of the signal.
        // Either way it ends (waitpid blocks until it does; the process is still our child).
        let pid = Pid::from_raw(i32::try_from(pid).unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).unwrap()
            {
                nix::sys::wait::WaitStatus::StillAlive => {
                    if Instant::now() > deadline {
                        let _ = kill(pid, Signal::SIGKILL);
                        panic!("the invoker got no SIGTERM when the thread that started it ended");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                s => break s,
            }
        };
        let trapped = std::fs::read_to_string(&out).is_ok_and(|s| s.trim() == "TERM");
        assert!(
            trapped
                || matches!(
                    status,
                    nix::sys::wait::WaitStatus::Signaled(_, Signal::SIGTERM, _)
                ),
            "the invoker ended otherwise: {status:?}"
        );
    }

    #[test]
    fn stop_drains_with_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let (binary, out) = (stand_in(dir.path()), dir.path().join("out"));
        let mut p = InvokerCommand::new(binary, &stack(), 7, "7")
            .env("OUT", &out)
            .spawn()
            .unwrap();
        // The trap is set before the loop; give the shell a moment to reach it, bounded.
        std::thread::sleep(Duration::from_millis(200));
        p.stop();
        assert!(matches!(p.try_wait(), Ok(Some(s)) if s.success()));
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "TERM");
    }
}

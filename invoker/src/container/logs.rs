//! A container's output as a source of lines, and collecting an activation's logs from it
//! (contract §5.4).
//!
//! A backend hands out its container's output as a [`LogSource`]: timestamped stdout and stderr
//! lines in arrival order, awaited as they arrive (never polled). Two sources exist:
//! - [`JsonFile`] tails Docker's `json-file` log and sleeps on inotify between writes (one
//!   inotify instance per [`FileWatcher`], shared by a factory's containers: the kernel allows
//!   only 128 instances per user by default);
//! - [`channel`] is fed line by line by a backend that reads the container's streams itself
//!   (runc's pipes; a VM's serial console would do the same).
//!
//! After each activation the collector reads the container's source from where the previous
//! collection stopped: in wait mode (the runtime writes sentinels and the activation is not a
//! developer error) until the sentinel line has been seen on stdout and on stderr; in no-wait
//! mode what has arrived. Sentinel lines are dropped; the size budget counts each line as its
//! `json-file` line (+1 for the newline), whichever backend read it; lines are formatted
//! `"%-30s %s: %s"`; notices are appended as stderr lines.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use serde::Deserialize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, Interest};
use tokio::sync::Notify;
use tokio::time::Instant;

pub const SENTINEL: &str = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX";
pub const LOG_FAILURE: &str =
    "There was an issue while collecting your logs. Data might be missing.";
pub const DEVELOPER_ERROR_WARNING: &str =
    "The action did not initialize or run as expected. Log data might be missing.";

/// The truncation notice for a limit of `bytes`.
pub fn truncated_notice(bytes: u64) -> String {
    format!("Logs were truncated because the total bytes size exceeds the limit of {bytes} bytes.")
}

/// Which of the container's streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One line of a container's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// When it was read, RFC 3339 UTC as the backend writes times (Docker: nanoseconds,
    /// trailing zeros trimmed; the channel: nine digits).
    pub time: String,
    pub stream: Stream,
    /// Without its trailing newline.
    pub text: String,
    /// What the line counts against the activation's log limit: the length of its `json-file`
    /// line plus the newline (contract §5.4).
    pub size: u64,
}

impl LogLine {
    /// A line read now, sized as the `json-file` line serde_json would write for it.
    pub fn now(stream: Stream, text: String) -> Self {
        let time = rfc3339_now();
        // {"log":"<text>\n","stream":"<stream>","time":"<time>"}\n
        let size = 8 + escaped_len(&text) + 2 + 12 + stream.as_str().len() + 10 + time.len() + 3;
        Self {
            time,
            stream,
            text,
            size: size as u64,
        }
    }
}

/// The length of `s` as the inside of a JSON string written by serde_json.
fn escaped_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum()
}

/// What a source had.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Line(LogLine),
    /// Lines were lost before the next one (a full buffer): the bytes they count.
    Dropped(u64),
    /// Nothing has arrived yet (only when not waiting).
    Empty,
    /// The container's streams are closed: nothing more will come.
    Closed,
}

/// A source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// One line is not a `json-file` entry; the source has moved past it.
    #[error("log line {line:?} is not a json-file entry")]
    Garbled {
        line: String,
        #[source]
        source: Option<serde_json::Error>,
    },
    /// The log cannot be read any further.
    #[error("cannot read log {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A container's output, line by line, in arrival order.
#[async_trait::async_trait]
pub trait LogSource: Send + std::fmt::Debug {
    /// The next line. With `wait`, waits until one arrives or the source closes (the
    /// collector bounds the wait); without, answers [`Next::Empty`] when nothing has arrived.
    /// Cancel-safe: a dropped call loses no line.
    async fn next(&mut self, wait: bool) -> Result<Next, LogError>;
}

/// A container's source behind the lock that gives one collector at a time.
#[derive(Debug)]
pub struct Logs(tokio::sync::Mutex<Box<dyn LogSource>>);

impl Logs {
    pub fn new(source: impl LogSource + 'static) -> Self {
        Self(tokio::sync::Mutex::new(Box::new(source)))
    }

    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Box<dyn LogSource>> {
        self.0.lock().await
    }
}

/// An activation's logs and whether collecting them went wrong (which retires the container).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub lines: Vec<String>,
    pub failed: bool,
}

/// How to collect.
#[derive(Clone, Copy, Debug)]
pub struct Collect {
    pub limit_bytes: u64,
    /// Wait for the sentinels (sentinelled runtime, not a developer error).
    pub wait: bool,
    /// The activation was a developer error: add the warning.
    pub developer_error: bool,
    /// Longest wait between two lines.
    pub idle_timeout: Duration,
}

/// Reads the activation's lines from `source`, which is left after the last one read.
pub async fn collect(source: &mut dyn LogSource, how: Collect) -> Collected {
    let limit_mb = how.limit_bytes >> 20;
    let deadline = Instant::now() + Duration::from_secs(limit_mb.max(5) * 2);
    let mut out = Collected::default();
    let mut used: u64 = 0;
    let mut truncated = false;
    let mut sentinels = (false, false);
    while !(sentinels.0 && sentinels.1) {
        let next = if how.wait {
            let until = (Instant::now() + how.idle_timeout).min(deadline);
            match tokio::time::timeout_at(until, source.next(true)).await {
                Ok(next) => next,
                Err(_) => {
                    out.failed = true;
                    break;
                }
            }
        } else {
            source.next(false).await
        };
        match next {
            Ok(Next::Line(line)) => {
                if line.text == SENTINEL {
                    match line.stream {
                        Stream::Stdout => sentinels.0 = true,
                        Stream::Stderr => sentinels.1 = true,
                    }
                    continue;
                }
                used += line.size;
                if used > how.limit_bytes {
                    truncated = true;
                    continue;
                }
                out.lines.push(format!(
                    "{:<30} {}: {}",
                    line.time,
                    line.stream.as_str(),
                    line.text
                ));
            }
            Ok(Next::Dropped(bytes)) => {
                used += bytes;
                if used > how.limit_bytes {
                    truncated = true;
                } else {
                    out.failed = true;
                }
            }
            Ok(Next::Empty) => break,
            Ok(Next::Closed) => {
                out.failed |= how.wait;
                break;
            }
            Err(LogError::Garbled { .. }) => out.failed = true,
            Err(e) => {
                tracing::debug!(error = %openwhisk::errors::chain(&e), "log collection stopped");
                out.failed = true;
                break;
            }
        }
    }
    if truncated {
        out.lines.push(notice(&truncated_notice(how.limit_bytes)));
    }
    if out.failed {
        out.lines.push(notice(LOG_FAILURE));
    }
    if how.developer_error {
        out.lines.push(notice(DEVELOPER_ERROR_WARNING));
    }
    out
}

fn notice(text: &str) -> String {
    format!("{:<30} stderr: {text}", rfc3339_now())
}

/// Docker's `json-file` log of one container, tailed.
#[derive(Debug)]
pub struct JsonFile {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    /// Read but not yet returned (a partial line at most, after a complete one is taken).
    pending: Vec<u8>,
    watcher: FileWatcher,
    watch: Option<Watch>,
    /// inotify is unavailable: sleep between reads, as Docker's own reader falls back to.
    poll: bool,
    /// The file was removed (the container is gone).
    gone: bool,
}

#[derive(Deserialize)]
struct Entry {
    log: String,
    stream: String,
    time: String,
}

impl JsonFile {
    pub fn new(path: &Path, watcher: FileWatcher) -> Self {
        Self {
            path: path.to_owned(),
            file: None,
            pending: Vec::new(),
            watcher,
            watch: None,
            poll: false,
            gone: false,
        }
    }

    fn take_line(&mut self) -> Option<Result<Next, LogError>> {
        let nl = self.pending.iter().position(|&b| b == b'\n')?;
        let raw: Vec<u8> = self.pending.drain(..=nl).collect();
        let garbled = |source| LogError::Garbled {
            line: String::from_utf8_lossy(&raw).trim_end().to_owned(),
            source,
        };
        let entry = match serde_json::from_slice::<Entry>(&raw) {
            Ok(e) => e,
            Err(e) => return Some(Err(garbled(Some(e)))),
        };
        let stream = match entry.stream.as_str() {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            _ => return Some(Err(garbled(None))),
        };
        let text = match entry.log.strip_suffix('\n') {
            Some(t) => t.to_owned(),
            None => entry.log,
        };
        Some(Ok(Next::Line(LogLine {
            time: entry.time,
            stream,
            text,
            size: raw.len() as u64,
        })))
    }
}

#[async_trait::async_trait]
impl LogSource for JsonFile {
    async fn next(&mut self, wait: bool) -> Result<Next, LogError> {
        let read_error = |path: &Path| {
            let path = path.to_owned();
            move |source| LogError::Read { path, source }
        };
        loop {
            if let Some(next) = self.take_line() {
                return next;
            }
            if self.file.is_none() {
                let f = tokio::fs::File::open(&self.path)
                    .await
                    .map_err(read_error(&self.path))?;
                self.file = Some(f);
            }
            let file = self.file.as_mut().expect("opened above");
            // Cancel-safe: tokio's file keeps an interrupted read's bytes for the next call.
            let n = file
                .read_buf(&mut self.pending)
                .await
                .map_err(read_error(&self.path))?;
            if n > 0 {
                continue;
            }
            if !wait {
                return Ok(Next::Empty);
            }
            if self.gone {
                return Ok(Next::Closed);
            }
            if self.poll {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let Some(watch) = &self.watch else {
                // Watch first, then read again: a write between the last read and the watch
                // would otherwise never wake us.
                match self.watcher.watch(&self.path) {
                    Ok(w) => self.watch = Some(w),
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e, "no inotify watch on a log; polling it");
                        self.poll = true;
                    }
                }
                continue;
            };
            // Removed: read what is left, then report the end. An unlinked file we hold open
            // gets no delete event, only an attribute change (its link count).
            match watch.changed().await.map_err(read_error(&self.path))? {
                Change::Written => {}
                Change::Gone => self.gone = true,
                Change::Attributes => {
                    use std::os::unix::fs::MetadataExt;
                    let meta = file.metadata().await.map_err(read_error(&self.path))?;
                    self.gone = meta.nlink() == 0;
                }
            }
        }
    }
}

/// One inotify instance for many files; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct FileWatcher {
    inner: Arc<parking_lot::Mutex<Option<Arc<WatcherInner>>>>,
}

#[derive(Debug)]
struct WatcherInner {
    fd: AsyncFd<InotifyFd>,
    watches: parking_lot::Mutex<HashMap<WatchDescriptor, Arc<WatchState>>>,
}

#[derive(Debug)]
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

#[derive(Debug, Default)]
struct WatchState {
    /// A permit means "changed since the last wait".
    changed: Notify,
    attributes: AtomicBool,
    gone: AtomicBool,
}

/// What happened to a watched file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Written,
    /// Its metadata changed (among others: it was unlinked while open).
    Attributes,
    /// It was removed and closed, or moved away.
    Gone,
}

/// A watch on one file; removed when dropped.
#[derive(Debug)]
pub struct Watch {
    inner: Arc<WatcherInner>,
    wd: WatchDescriptor,
    state: Arc<WatchState>,
}

impl FileWatcher {
    /// Watches `path` for writes and removal. The inotify instance is made on first use (it
    /// needs the tokio runtime).
    pub fn watch(&self, path: &Path) -> std::io::Result<Watch> {
        let inner = {
            let mut slot = self.inner.lock();
            match &*slot {
                Some(i) => i.clone(),
                None => {
                    let fd = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
                    // SAFETY: the descriptor is owned by the `Inotify` inside, which the
                    // `AsyncFd` owns until it is dropped; `as_raw_fd` always returns it.
                    let fd = unsafe {
                        AsyncFd::register_with_interest(InotifyFd(fd), Interest::READABLE)
                    }
                    .map_err(std::io::Error::from)?;
                    let i = Arc::new(WatcherInner {
                        fd,
                        watches: parking_lot::Mutex::default(),
                    });
                    *slot = Some(i.clone());
                    i
                }
            }
        };
        let wd = inner.fd.get_ref().0.add_watch(
            path,
            AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_ATTRIB
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF,
        )?;
        let state = Arc::new(WatchState::default());
        inner.watches.lock().insert(wd, state.clone());
        Ok(Watch { inner, wd, state })
    }
}

impl Watch {
    /// Waits for a change. Whichever waiter finds the inotify descriptor readable reads its
    /// events and wakes the watches they name.
    pub async fn changed(&self) -> std::io::Result<Change> {
        loop {
            if self.state.gone.load(Ordering::Acquire) {
                return Ok(Change::Gone);
            }
            tokio::select! {
                () = self.state.changed.notified() => {
                    return Ok(if self.state.gone.load(Ordering::Acquire) {
                        Change::Gone
                    } else if self.state.attributes.swap(false, Ordering::AcqRel) {
                        Change::Attributes
                    } else {
                        Change::Written
                    });
                }
                ready = self.inner.fd.readable() => {
                    let mut guard = ready?;
                    match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                        Ok(events) => self.inner.dispatch(&events?),
                        Err(_would_block) => {}
                    }
                }
            }
        }
    }
}

impl WatcherInner {
    fn dispatch(&self, events: &[nix::sys::inotify::InotifyEvent]) {
        let mut watches = self.watches.lock();
        for ev in events {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Events were lost: wake everyone to read again.
                for w in watches.values() {
                    w.changed.notify_one();
                }
                continue;
            }
            let gone = ev.mask.intersects(
                AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_IGNORED,
            );
            let state = if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                watches.remove(&ev.wd)
            } else {
                watches.get(&ev.wd).cloned()
            };
            if let Some(w) = state {
                if gone {
                    w.gone.store(true, Ordering::Release);
                }
                if ev.mask.contains(AddWatchFlags::IN_ATTRIB) {
                    w.attributes.store(true, Ordering::Release);
                }
                w.changed.notify_one();
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.inner.watches.lock().remove(&self.wd).is_some() {
            // Fails when the kernel dropped the watch already (the file is gone): nothing to do.
            let _ = self.inner.fd.get_ref().0.rm_watch(self.wd);
        }
    }
}

/// The most a [`channel`] holds by default, counted as [`LogLine::size`]: above OpenWhisk's
/// largest log limit (`whisk.log-limit.max`, 10 MB), so nothing the collector would keep is
/// dropped.
pub const CHANNEL_CAPACITY: u64 = 16 << 20;

/// A source fed line by line: `(sender for the backend's readers, source for the container)`.
/// Holds up to `capacity` bytes; beyond that ordinary lines are dropped and counted
/// ([`Next::Dropped`]), sentinels are kept up to twice the capacity, so that a chatty action
/// whose logs nobody collects (shared containers, `limits.logs = 0`) costs bounded memory
/// and a collected one still finds its activation's end.
pub fn channel(capacity: u64) -> (LineSender, LineReceiver) {
    let shared = Arc::new(Channel {
        queue: parking_lot::Mutex::new(Queue {
            capacity,
            senders: 1,
            ..Queue::default()
        }),
        arrived: Notify::new(),
    });
    (
        LineSender {
            shared: shared.clone(),
        },
        LineReceiver { shared },
    )
}

#[derive(Debug)]
struct Channel {
    queue: parking_lot::Mutex<Queue>,
    arrived: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<LogLine>,
    /// Lines dropped after the last queued one: reported before the next.
    dropped_tail: u64,
    /// Dropped bytes to report before each queued line (`items[i]` ⇐ `dropped_before[i]`).
    dropped_before: VecDeque<u64>,
    bytes: u64,
    capacity: u64,
    senders: usize,
    reader_gone: bool,
}

/// The feeding half of [`channel`].
#[derive(Debug)]
pub struct LineSender {
    shared: Arc<Channel>,
}

impl LineSender {
    /// Queues `line` (or counts it as dropped when full); false once the reader is gone.
    pub fn send(&self, line: LogLine) -> bool {
        let mut q = self.shared.queue.lock();
        if q.reader_gone {
            return false;
        }
        let room = if line.text == SENTINEL {
            q.capacity.saturating_mul(2)
        } else {
            q.capacity
        };
        if q.bytes + line.size > room {
            q.dropped_tail += line.size;
            return true;
        }
        let before = std::mem::take(&mut q.dropped_tail);
        q.bytes += line.size;
        q.items.push_back(line);
        q.dropped_before.push_back(before);
        drop(q);
        self.shared.arrived.notify_one();
        true
    }
}

impl Clone for LineSender {
    fn clone(&self) -> Self {
        self.shared.queue.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for LineSender {
    fn drop(&mut self) {
        self.shared.queue.lock().senders -= 1;
        self.shared.arrived.notify_one();
    }
}

/// The reading half of [`channel`].
#[derive(Debug)]
pub struct LineReceiver {
    shared: Arc<Channel>,
}

impl Drop for LineReceiver {
    fn drop(&mut self) {
        let mut q = self.shared.queue.lock();
        q.reader_gone = true;
        q.items.clear();
        q.dropped_before.clear();
    }
}

#[async_trait::async_trait]
impl LogSource for LineReceiver {
    async fn next(&mut self, wait: bool) -> Result<Next, LogError> {
        loop {
            {
                let mut q = self.shared.queue.lock();
                if let Some(before) = q.dropped_before.front_mut()
                    && *before > 0
                {
                    return Ok(Next::Dropped(std::mem::take(before)));
                }
                if let Some(line) = q.items.pop_front() {
                    q.dropped_before.pop_front();
                    q.bytes -= line.size;
                    return Ok(Next::Line(line));
                }
                if q.dropped_tail > 0 {
                    return Ok(Next::Dropped(std::mem::take(&mut q.dropped_tail)));
                }
                if q.senders == 0 {
                    return Ok(Next::Closed);
                }
            }
            if !wait {
                return Ok(Next::Empty);
            }
            self.shared.arrived.notified().await;
        }
    }
}

/// Now as RFC 3339 UTC with nanoseconds, as Docker writes log times.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(stream: &str, log: &str) -> String {
        serde_json::json!({"log": format!("{log}\n"), "stream": stream, "time": "2024-05-01T10:40:00.321987654Z"})
            .to_string()
            + "\n"
    }

    fn how(limit: u64, wait: bool) -> Collect {
        Collect {
            limit_bytes: limit,
            wait,
            developer_error: false,
            idle_timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn lines_until_both_sentinels_then_the_next_activation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut f = std::fs::File::create(&path).unwrap();
        for l in [
            line("stdout", "hello"),
            line("stderr", "warn"),
            line("stdout", SENTINEL),
            line("stderr", SENTINEL),
            line("stdout", "second"),
            line("stdout", SENTINEL),
            line("stderr", SENTINEL),
        ] {
            f.write_all(l.as_bytes()).unwrap();
        }
        let mut source = JsonFile::new(&path, FileWatcher::default());
        let c = collect(&mut source, how(1 << 20, true)).await;
        assert_eq!(
            c.lines,
            [
                "2024-05-01T10:40:00.321987654Z stdout: hello",
                "2024-05-01T10:40:00.321987654Z stderr: warn"
            ]
        );
        assert!(!c.failed);
        let c = collect(&mut source, how(1 << 20, true)).await;
        assert_eq!(c.lines, ["2024-05-01T10:40:00.321987654Z stdout: second"]);
    }

    #[tokio::test]
    async fn truncation_and_missing_sentinels_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut f = std::fs::File::create(&path).unwrap();
        let one = line("stdout", "0123456789");
        for _ in 0..3 {
            f.write_all(one.as_bytes()).unwrap();
        }
        let mut source = JsonFile::new(&path, FileWatcher::default());
        let c = collect(&mut source, how(one.len() as u64 + 5, true)).await;
        assert_eq!(c.lines.len(), 3, "{:?}", c.lines);
        assert!(c.lines[1].ends_with(&truncated_notice(one.len() as u64 + 5)));
        assert!(
            c.lines[2].ends_with(LOG_FAILURE),
            "no sentinel arrived: {:?}",
            c.lines
        );
        assert!(c.failed);
    }

    /// The collector sleeps on inotify and wakes for lines written while it waits, complete
    /// or in pieces; the file's removal ends the wait at once.
    #[tokio::test]
    async fn json_file_lines_written_while_waiting_wake_the_collector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        std::fs::File::create(&path).unwrap();
        let watcher = FileWatcher::default();
        let mut source = JsonFile::new(&path, watcher.clone());
        assert_eq!(source.next(false).await.unwrap(), Next::Empty);
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                let hello = line("stdout", "late");
                let (a, b) = hello.split_at(10);
                for piece in [a, b, &line("stdout", SENTINEL), &line("stderr", SENTINEL)] {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    f.write_all(piece.as_bytes()).unwrap();
                }
            })
        };
        let c = collect(
            &mut source,
            Collect {
                idle_timeout: Duration::from_secs(10),
                ..how(1 << 20, true)
            },
        )
        .await;
        writer.await.unwrap();
        assert_eq!(c.lines, ["2024-05-01T10:40:00.321987654Z stdout: late"]);
        assert!(!c.failed);
        // Removal: the source reports the end instead of waiting out the idle timeout.
        let waiting = tokio::spawn(async move { source.next(true).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::remove_file(&path).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("removal wakes the waiter")
            .unwrap();
        assert_eq!(end, Next::Closed);
        assert!(
            watcher
                .inner
                .lock()
                .as_ref()
                .unwrap()
                .watches
                .lock()
                .is_empty()
        );
    }

    #[test]
    fn a_channel_line_counts_as_its_json_file_line() {
        for text in [
            "hello",
            "",
            "quote \" back \\ tab \t bell \u{7} é ü 😀",
            "</&>",
        ] {
            let l = LogLine::now(Stream::Stderr, text.to_owned());
            let json =
                serde_json::json!({"log": format!("{text}\n"), "stream": "stderr", "time": l.time});
            assert_eq!(l.size, json.to_string().len() as u64 + 1, "{text:?}");
        }
    }

    fn out(text: &str) -> LogLine {
        LogLine::now(Stream::Stdout, text.to_owned())
    }

    fn end(tx: &LineSender) {
        tx.send(LogLine::now(Stream::Stdout, SENTINEL.into()));
        tx.send(LogLine::now(Stream::Stderr, SENTINEL.into()));
    }

    #[tokio::test(start_paused = true)]
    async fn channel_keeps_order_across_activations_and_waits_for_lines() {
        let (tx, mut rx) = channel(CHANNEL_CAPACITY);
        tx.send(out("one"));
        end(&tx);
        tx.send(out("two"));
        let c = collect(&mut rx, how(1 << 20, true)).await;
        assert!(!c.failed);
        assert_eq!(c.lines.len(), 1);
        assert!(c.lines[0].ends_with(" stdout: one"), "{:?}", c.lines);
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            tx.send(out("three"));
            end(&tx);
            tx
        });
        let c = collect(&mut rx, how(1 << 20, true)).await;
        assert!(!c.failed, "{:?}", c.lines);
        let texts: Vec<_> = c.lines.iter().map(|l| &l[31..]).collect();
        assert_eq!(texts, ["stdout: two", "stdout: three"]);
        let _tx = late.await.unwrap();
        assert_eq!(rx.next(false).await.unwrap(), Next::Empty);
    }

    #[tokio::test(start_paused = true)]
    async fn channel_without_sentinels_times_out_and_no_wait_takes_what_arrived() {
        let (tx, mut rx) = channel(CHANNEL_CAPACITY);
        tx.send(out("a"));
        let started = Instant::now();
        let c = collect(&mut rx, how(1 << 20, true)).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(200),
            "the idle timeout"
        );
        assert!(c.failed);
        assert!(c.lines[1].ends_with(LOG_FAILURE), "{:?}", c.lines);
        tx.send(out("b"));
        let c = collect(
            &mut rx,
            Collect {
                developer_error: true,
                ..how(1 << 20, false)
            },
        )
        .await;
        assert!(!c.failed);
        assert_eq!(c.lines.len(), 2);
        assert!(c.lines[0].ends_with(" stdout: b"));
        assert!(c.lines[1].ends_with(DEVELOPER_ERROR_WARNING));
        // The streams closed (the container died): no wait for the idle timeout.
        drop(tx);
        let started = Instant::now();
        let c = collect(&mut rx, how(1 << 20, true)).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(c.failed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_channel_drops_lines_counts_them_and_keeps_the_sentinels() {
        let line_size = out("0123456789").size;
        let (tx, mut rx) = channel(line_size * 3);
        for _ in 0..10 {
            tx.send(out("0123456789"));
        }
        end(&tx);
        // A limit above what was kept: the dropped lines still count, so it is a truncation.
        let c = collect(&mut rx, how(line_size * 5, true)).await;
        assert!(!c.failed, "{:?}", c.lines);
        assert_eq!(c.lines.len(), 4, "{:?}", c.lines);
        assert!(c.lines[3].ends_with(&truncated_notice(line_size * 5)));
        // Read out, there is room again.
        tx.send(out("next"));
        let c = collect(&mut rx, how(1 << 20, false)).await;
        assert!(c.lines[0].ends_with(" stdout: next"), "{:?}", c.lines);
        // Lost below the limit: data is missing, not truncated.
        for _ in 0..5 {
            tx.send(out("0123456789"));
        }
        end(&tx);
        let c = collect(&mut rx, how(1 << 20, true)).await;
        assert!(c.failed);
        assert!(c.lines.last().unwrap().ends_with(LOG_FAILURE));
    }

    #[test]
    fn time_format() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}

#[cfg(test)]
mod big {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn over_the_limit_with_sentinels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut f = std::fs::File::create(&path).unwrap();
        let x = "x".repeat(1000);
        for _ in 0..2000 {
            let l = serde_json::json!({"log": format!("{x}\n"), "stream": "stdout", "time": "2024-05-01T10:40:00.321987654Z"});
            writeln!(f, "{l}").unwrap();
        }
        for s in ["stdout", "stderr"] {
            let l = serde_json::json!({"log": format!("{SENTINEL}\n"), "stream": s, "time": "2024-05-01T10:40:00.321987654Z"});
            writeln!(f, "{l}").unwrap();
        }
        let c = collect(
            &mut JsonFile::new(&path, FileWatcher::default()),
            Collect {
                limit_bytes: 1 << 20,
                wait: true,
                developer_error: false,
                idle_timeout: Duration::from_secs(2),
            },
        )
        .await;
        assert!(!c.failed, "both sentinels were there");
        assert!(
            c.lines
                .last()
                .unwrap()
                .ends_with(&truncated_notice(1 << 20))
        );
    }
}

//! Collecting an activation's logs from a container's `json-file` log (contract §5.4).
//!
//! Per container the pool keeps the byte offset already consumed. After each activation the
//! file is read from there: in wait mode (the runtime writes sentinels and the activation is
//! not a developer error) until the sentinel line has been seen on stdout and on stderr; in
//! no-wait mode to the current end. Sentinel lines are dropped; the size budget counts the raw
//! JSON lines (+1 per newline); lines are formatted `"%-30s %s: %s"`; notices are appended as
//! stderr lines.

use std::io::SeekFrom;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

pub const SENTINEL: &str = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX";
pub const LOG_FAILURE: &str =
    "There was an issue while collecting your logs. Data might be missing.";
pub const DEVELOPER_ERROR_WARNING: &str =
    "The action did not initialize or run as expected. Log data might be missing.";

/// The truncation notice for a limit of `bytes`.
pub fn truncated_notice(bytes: u64) -> String {
    format!("Logs were truncated because the total bytes size exceeds the limit of {bytes} bytes.")
}

#[derive(Deserialize)]
struct Line {
    log: String,
    stream: String,
    time: String,
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

/// Reads the activation's lines from `path`, starting at `*offset`, which moves past them.
pub async fn collect(path: &Path, offset: &mut u64, how: Collect) -> Collected {
    let limit_mb = how.limit_bytes >> 20;
    let overall = Duration::from_secs(limit_mb.max(5) * 2);
    let started = Instant::now();
    let mut last_line = Instant::now();
    let mut out = Collected::default();
    let mut used: u64 = 0;
    let mut truncated = false;
    let mut sentinels = (false, false);
    let mut pending = Vec::new();
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(_) => {
            out.failed = true;
            out.lines.push(notice(LOG_FAILURE));
            return out;
        }
    };
    loop {
        let mut chunk = Vec::new();
        let read = async {
            file.seek(SeekFrom::Start(*offset + pending.len() as u64))
                .await?;
            file.read_to_end(&mut chunk).await
        }
        .await;
        if read.is_err() {
            out.failed = true;
            break;
        }
        pending.extend_from_slice(&chunk);
        while !(sentinels.0 && sentinels.1)
            && let Some(nl) = pending.iter().position(|&b| b == b'\n')
        {
            let raw: Vec<u8> = pending.drain(..=nl).collect();
            *offset += raw.len() as u64;
            last_line = Instant::now();
            let Ok(line) = serde_json::from_slice::<Line>(&raw) else {
                out.failed = true;
                continue;
            };
            let text = line.log.strip_suffix('\n').unwrap_or(&line.log);
            if text == SENTINEL {
                match line.stream.as_str() {
                    "stdout" => sentinels.0 = true,
                    _ => sentinels.1 = true,
                }
                continue;
            }
            used += raw.len() as u64;
            if used > how.limit_bytes {
                truncated = true;
                continue;
            }
            if !truncated {
                out.lines
                    .push(format!("{:<30} {}: {}", line.time, line.stream, text));
            }
        }
        if !how.wait || (sentinels.0 && sentinels.1) {
            break;
        }
        if started.elapsed() > overall || last_line.elapsed() > how.idle_timeout {
            out.failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
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
        let mut offset = 0;
        let c = collect(&path, &mut offset, how(1 << 20, true)).await;
        assert_eq!(
            c.lines,
            [
                "2024-05-01T10:40:00.321987654Z stdout: hello",
                "2024-05-01T10:40:00.321987654Z stderr: warn"
            ]
        );
        assert!(!c.failed);
        let c = collect(&path, &mut offset, how(1 << 20, true)).await;
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
        let mut offset = 0;
        let c = collect(&path, &mut offset, how(one.len() as u64 + 5, true)).await;
        assert_eq!(c.lines.len(), 3, "{:?}", c.lines);
        assert!(c.lines[1].ends_with(&truncated_notice(one.len() as u64 + 5)));
        assert!(
            c.lines[2].ends_with(LOG_FAILURE),
            "no sentinel arrived: {:?}",
            c.lines
        );
        assert!(c.failed);
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
        let mut offset = 0;
        let c = collect(
            &path,
            &mut offset,
            Collect {
                limit_bytes: 1 << 20,
                wait: true,
                developer_error: false,
                idle_timeout: Duration::from_secs(2),
            },
        )
        .await;
        eprintln!(
            "{} lines, last {:?}",
            c.lines.len(),
            c.lines.last().map(|l| &l[l.len().saturating_sub(80)..])
        );
        assert!(c.lines.last().unwrap().contains("truncated"));
    }
}

//! Wall-clock time as OpenWhisk writes it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (activation `start`/`end`, document `updated`); 0 if the
/// clock is before the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

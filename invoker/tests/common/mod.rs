//! Helpers shared by the integration tests that run against the local stack
//! (`scripts/stack.sh up`). A test whose component is down fails with a message that names the
//! component and the command that starts it; none of them skips.

#![allow(dead_code, unused_imports)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use openwhisk::errors::chain;
pub use testkit::stack::Stack;

/// A name no other test or run uses: `<prefix>-<pid>-<millis>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{ms}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The panic message for a component that does not answer.
pub fn down(component: &str, detail: impl std::fmt::Display) -> String {
    format!("{component} is not reachable ({detail}); start the stack with `scripts/stack.sh up`")
}

//! The OpenWhisk action protocol, served on port 8080 inside an action container
//! (`shared/openwhisk-contract.md` §5): `POST /init` once, then `POST /run` per activation.
//!
//! - [`Config`]: how the image configures the proxy (environment variables).
//! - [`Proxy`]: the protocol: one init per container, the response rules, the log sentinels.
//! - [`serve`]: the HTTP server ([`serve_connection`]: one connection of it).
//!
//! Two ways to run an action:
//! - **native** (OpenWhisk's blackbox convention, no `OW_LAUNCHER`): `/init` puts an executable
//!   `exec` in the action folder (a base64 zip with `exec` at its root, or plain text); every
//!   `/run` starts it with the parameters as one JSON argument (on stdin too, and only there when
//!   longer than the kernel's 128 KiB argument limit); its last stdout line is the result.
//! - **launcher** (`OW_LAUNCHER="node /launcher/launcher.js"` or a Python one): `/init` writes
//!   the code and starts the launcher once; it loads the code once, then answers one JSON line
//!   per run. The launcher protocol (ours): the launcher reads the action from `OW_ACTION_DIR`,
//!   `OW_SOURCE_FILE`, `OW_MAIN` and `OW_BINARY`, writes `{"ok":true}` or `{"error":"…"}` on fd 3
//!   once loaded, then for every request line `{"id":N,"value":…,<context>…}` on stdin writes
//!   `{"id":N,"result":…}` or `{"id":N,"exception":"…"}` on fd 3, after flushing the action's
//!   stdout and stderr (which it shares with the proxy, so the sentinels come after them).

mod launcher;
mod native;
mod protocol;
mod server;

pub use protocol::{Config, Proxy, Reply, SENTINEL};
pub use server::{serve, serve_connection};

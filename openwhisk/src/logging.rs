//! Log set-up shared by the binaries: `tracing` events as text on stderr (stdout stays free
//! for what a command prints), filtered by `RUST_LOG` (default `info`), coloured only when
//! stderr is a terminal (a log file or `docker logs` gets plain text).

/// Installs the global subscriber; a second call does nothing.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
}

//! `action-proxy`: serves the OpenWhisk action protocol on port 8080 (see the crate docs).

use std::process::ExitCode;
use std::sync::Arc;

use action_proxy::{Config, Proxy, serve};

fn main() -> ExitCode {
    let config = Config::from_env();
    // One worker is plenty for a proxy; runs happen in child processes.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("action-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(("0.0.0.0", config.port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("action-proxy: cannot listen on port {}: {e}", config.port);
                return ExitCode::FAILURE;
            }
        };
        match serve(listener, Arc::new(Proxy::new(config))).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("action-proxy: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

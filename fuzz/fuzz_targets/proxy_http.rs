//! The action proxy's HTTP and JSON handling (`runtimes/proxy`, what listens on port 8080 in
//! every action container): any bytes on a connection get well-formed answers or a closed
//! connection, never a panic or a hang. The input is what a client sends on one keep-alive
//! connection (requests for `/init`, `/run` or anything else, bodies of any shape).
//!
//! The proxy is a launcher-mode proxy with an empty launcher command line, so an `/init` goes
//! through the message's JSON and the code (plain, or a base64 zip unpacked into a scratch
//! directory) and then fails before any process is started: no input ever gets code executed,
//! and no fork slows the fuzzer down.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use action_proxy::{Config, Proxy, serve_connection};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn action_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| PathBuf::from(format!("/dev/shm/whisk-fuzz-proxy-{}", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let dir = action_dir();
    let _ = std::fs::remove_dir_all(dir);
    let proxy = Arc::new(Proxy::new(Config {
        action_dir: dir.clone(),
        launcher: Some(Vec::new()),
        source_file: "index.js".into(),
        allow_concurrent: false,
        port: 0,
    }));
    let data = data.to_vec();
    runtime().block_on(async move {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let conn = tokio::spawn(serve_connection(server, proxy));
        let writer = async {
            client.write_all(&data).await.ok();
            client.shutdown().await.ok();
            let mut answers = Vec::new();
            client.read_to_end(&mut answers).await.ok();
            answers
        };
        // A request the input leaves unfinished ends at the input's end (the write side is shut),
        // so the connection ends too; the bound only turns a hang into a finding.
        let answers = tokio::time::timeout(std::time::Duration::from_secs(10), writer)
            .await
            .expect("the proxy did not finish a connection whose client had sent everything");
        conn.await.expect("the connection task panicked");
        // HTTP/1.0 requests get HTTP/1.0 answers.
        assert!(
            answers.is_empty() || answers.starts_with(b"HTTP/1."),
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&answers[..answers.len().min(200)])
        );
    });
});

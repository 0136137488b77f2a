//! The invoker's configuration as a deployment passes it: `CONFIG_*` environment variables
//! (OpenWhisk's Typesafe mapping), the variables of contract §1.3, and a config file. The input is
//! split at its first NUL byte: before it, `NAME=value` lines taken as the environment; after it,
//! the config file's text. Any input is settings or an error naming the setting, never a panic.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use openwhisk::config;
use openwhisk::settings::Settings;

/// One file per fuzzing process, rewritten for every input (in memory: /dev/shm).
fn config_file() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| format!("/dev/shm/whisk-fuzz-settings-{}.conf", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (env_text, file_text) = text.split_once('\0').unwrap_or((&text, ""));
    // What every deployment sets, so the fuzzer gets past the required variables; the input can
    // still override them.
    let mut vars = vec![
        ("KAFKA_HOSTS".to_owned(), "127.0.0.1:9092".to_owned()),
        (
            "RUNTIMES_MANIFEST".to_owned(),
            r#"{"runtimes":{}}"#.to_owned(),
        ),
    ];
    for line in env_text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            vars.push((k.to_owned(), v.to_owned()));
            // The mapping alone, as the front door and the bench use it too.
            let _ = config::property_name(k);
        }
    }
    let _ = config::properties(vars.clone());
    let file = if file_text.is_empty() {
        None
    } else {
        let path = config_file();
        let mut f = std::fs::File::create(path).expect("the fuzz config file can be written");
        f.write_all(file_text.as_bytes())
            .expect("the fuzz config file can be written");
        Some(path)
    };
    if let Ok(settings) = Settings::from_vars(vars, file) {
        let _ = settings.user_memory_mb();
        let _ = settings.max_peek();
        let _ = settings.topic("completed0");
    }
    for (k, v) in text.lines().filter_map(|l| l.split_once('=')) {
        let _ = config::parse_bytes(k, v);
        let _ = config::parse_duration(k, v);
    }
});

//! Native actions (OpenWhisk's blackbox convention): an executable `exec` gets the parameters as
//! a JSON argument and prints its result as the last line of stdout.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;

use base64::Engine;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::protocol::{Config, NOT_A_DICTIONARY, Reply, result_reply};

/// The kernel's limit on one argument (`MAX_ARG_STRLEN` − 1); longer input goes on stdin only.
const MAX_ARG: usize = 131_071;

/// Puts the code of an init message into the action folder: a base64 zip is unpacked there
/// (its `exec` must be at the root), plain text becomes `exec`. Without code, an `exec` already in
/// the image is used. The executable must exist afterwards.
pub(crate) async fn init(config: &Config, value: &Value) -> Result<(), String> {
    let dir = config.action_dir.clone();
    let exec = dir.join(&config.source_file);
    let binary = value
        .get("binary")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(code) = value.get("code").and_then(Value::as_str) {
        let code = code.to_owned();
        tokio::task::spawn_blocking(move || write_code(&dir, &exec, &code, binary))
            .await
            .map_err(|e| format!("init failed: {e}"))??;
    }
    let exec = config.action_dir.join(&config.source_file);
    let executable =
        std::fs::metadata(&exec).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if executable {
        Ok(())
    } else {
        Err("The action failed to generate or locate a binary. See logs for details.".into())
    }
}

pub(crate) fn write_code(dir: &Path, file: &Path, code: &str, binary: bool) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if binary {
        unzip_base64(code, dir)
    } else {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(file)
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        f.write_all(code.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", file.display()))
    }
}

/// Unpacks a base64-encoded zip archive into `dir`, keeping its files' modes.
pub(crate) fn unzip_base64(code: &str, dir: &Path) -> Result<(), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(code.trim())
        .map_err(|e| format!("the action's code is not base64: {e}"))?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("the action's code is not a zip archive: {e}"))?;
    archive
        .extract(dir)
        .map_err(|e| format!("cannot unpack the action's zip archive: {e}"))
}

/// Runs `exec` once with `value` and turns its output into a reply; the action's own output goes
/// to the container's stdout and stderr.
pub(crate) async fn run(config: &Config, value: &Value, env: &[(String, String)]) -> Reply {
    let exec = config.action_dir.join(&config.source_file);
    let input = value.to_string();
    let mut cmd = tokio::process::Command::new(&exec);
    if input.len() <= MAX_ARG {
        cmd.arg(&input);
    }
    cmd.current_dir(&config.action_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            println!("cannot start {}: {e}", exec.display());
            return Reply::error(502, NOT_A_DICTIONARY);
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // An action that does not read stdin closes it early; that is fine.
        let _ = stdin.write_all(input.as_bytes()).await;
    }
    let out = match child.wait_with_output().await {
        Ok(o) => o,
        Err(e) => {
            println!("cannot wait for {}: {e}", exec.display());
            return Reply::error(502, NOT_A_DICTIONARY);
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (logs, last) = split_last_line(&stdout);
    {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(logs.as_bytes());
        let _ = o.flush();
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(&out.stderr);
        let _ = e.flush();
    }
    match serde_json::from_str::<Value>(last.trim()) {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => result_reply(v),
        _ => {
            // Like OpenWhisk's proxy: the unparsable last line is logged.
            println!("{}", last.trim());
            Reply::error(502, NOT_A_DICTIONARY)
        }
    }
}

/// Splits stdout into the log part (ending with a newline) and its last line.
fn split_last_line(out: &str) -> (&str, &str) {
    let body = out.strip_suffix('\n').unwrap_or(out);
    match body.rfind('\n') {
        Some(i) => (&out[..=i], &body[i + 1..]),
        None => ("", body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_is_the_result() {
        assert_eq!(
            split_last_line("a\nb\n{\"x\":1}\n"),
            ("a\nb\n", "{\"x\":1}")
        );
        assert_eq!(split_last_line("{\"x\":1}"), ("", "{\"x\":1}"));
        assert_eq!(split_last_line(""), ("", ""));
        assert_eq!(split_last_line("log\n\n"), ("log\n", ""));
    }
}

//! A static native action for the end-to-end suites (the invoker's and the front door's,
//! which includes this file by path): C compiled with `cc -static`, zipped as `exec`, as
//! OpenWhisk's native (dockerskeleton) actions are.

use std::process::Command;

/// A static native action: prints a log line and `{"native":"<name>"}`.
const NATIVE_C: &str = r#"
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *in = argc > 1 ? argv[1] : "";
    const char *n = strstr(in, "\"name\":\""); char name[64] = "";
    if (n) sscanf(n + 8, "%63[^\"]", name);
    printf("native log line\n");
    printf("{\"native\":\"%s\"}\n", name);
    return 0;
}
"#;

/// The zip of the action, built now.
pub fn native_zip() -> Vec<u8> {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.c"), NATIVE_C).unwrap();
    let ok = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(dir.path().join("exec"))
        .arg(dir.path().join("a.c"))
        .status()
        .expect("cc (gcc) is needed to build the native test action")
        .success();
    assert!(ok, "compiling the native action failed");
    let bin = std::fs::read(dir.path().join("exec")).unwrap();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    zip.start_file("exec", opts).unwrap();
    zip.write_all(&bin).unwrap();
    zip.finish().unwrap().into_inner()
}

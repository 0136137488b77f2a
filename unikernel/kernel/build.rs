//! Links the kernel binary as a static, non-PIE ELF at 1 MiB with the PVH note (see `link.ld`).
//! The arguments apply to the bin only: the library's unit tests and the boot test are ordinary
//! host programs. It also assembles the boot test's WAT action.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    for arg in [
        format!("-T{dir}/link.ld"),
        "-nostartfiles".into(),
        "-nostdlib".into(),
        "-static".into(),
        "-no-pie".into(),
        "-Wl,--build-id=none".into(),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=link.ld");
    // The boot test's action (tests/boot.rs includes it from OUT_DIR).
    let wasm = wat::parse_file(format!("{dir}/tests/action.wat")).expect("tests/action.wat");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(format!("{out}/boot_action.wasm"), wasm).expect("write boot_action.wasm");
    println!("cargo:rerun-if-changed=tests/action.wat");
    println!("cargo:rerun-if-changed=src/boot.s");
}

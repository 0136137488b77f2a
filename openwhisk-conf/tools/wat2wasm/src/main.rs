//! `owconf-wat2wasm IN.wat OUT.wasm`: assembles WebAssembly text.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: owconf-wat2wasm IN.wat OUT.wasm");
        return ExitCode::from(2);
    };
    match wat::parse_file(input).map(|module| std::fs::write(output, module)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("owconf-wat2wasm: writing {output}: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("owconf-wat2wasm: {e}");
            ExitCode::FAILURE
        }
    }
}

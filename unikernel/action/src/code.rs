//! From an init message's `code` to the bytes of a WebAssembly module.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::zip::{Archive, ZipError};

/// `\0asm`: the first four bytes of every WebAssembly binary.
pub const WASM_MAGIC: &[u8] = b"\0asm";

/// The largest module this crate takes out of a zip archive (and so the most one entry may
/// inflate to).
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// The standard alphabet, with or without padding (`wsk` pads; hand-made requests may not).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why an init message's code is not a module.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("the init message has no code")]
    Missing,
    #[error(
        "the action's code is text; a wasm action's code is a WebAssembly binary or a zip archive \
         holding one, sent base64-encoded with binary: true (WAT is assembled before /init)"
    )]
    Text,
    #[error("the action's code is not base64: {0}")]
    Base64(base64::DecodeError),
    #[error("the action's code is neither a WebAssembly binary nor a zip archive: {0}")]
    Zip(ZipError),
    #[error("the action's zip archive holds no .wasm file")]
    NoModule,
    #[error(
        "the action's zip archive holds several .wasm files and none is named {wanted}: {found}"
    )]
    Ambiguous { wanted: String, found: String },
    #[error("cannot read {name} from the action's zip archive: {error}")]
    Entry { name: String, error: ZipError },
}

/// The module in `code`: base64 of a module or of a zip archive holding one (`binary: true`).
/// `main` names the entry point: `<main>.wasm` in an archive is preferred.
pub fn module_bytes(code: Option<&str>, binary: bool, main: &str) -> Result<Vec<u8>, CodeError> {
    let code = code.ok_or(CodeError::Missing)?;
    if !binary {
        return Err(CodeError::Text);
    }
    let compact: Vec<u8> = code.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = BASE64.decode(&compact).map_err(CodeError::Base64)?;
    if bytes.starts_with(WASM_MAGIC) {
        return Ok(bytes);
    }
    let archive = Archive::new(&bytes).map_err(CodeError::Zip)?;
    let entry = choose(&archive, main)?;
    archive
        .read(entry, MAX_MODULE_BYTES)
        .map_err(|error| CodeError::Entry {
            name: entry.name.clone(),
            error,
        })
}

/// `<main>.wasm`, else `main.wasm`, else the only `*.wasm` file.
fn choose<'z>(archive: &'z Archive<'_>, main: &str) -> Result<&'z crate::zip::Entry, CodeError> {
    let by_name = |name: &str| archive.entries().iter().find(|e| e.name == name);
    let wanted = format!("{main}.wasm");
    if let Some(e) = by_name(&wanted).or_else(|| by_name("main.wasm")) {
        return Ok(e);
    }
    let mut modules = archive
        .entries()
        .iter()
        .filter(|e| e.name.ends_with(".wasm") && !e.name.ends_with('/'));
    match (modules.next(), modules.next()) {
        (None, _) => Err(CodeError::NoModule),
        (Some(only), None) => Ok(only),
        (Some(_), Some(_)) => {
            let found: Vec<&str> = archive
                .entries()
                .iter()
                .filter(|e| e.name.ends_with(".wasm"))
                .map(|e| e.name.as_str())
                .collect();
            Err(CodeError::Ambiguous {
                wanted,
                found: found.join(", "),
            })
        }
    }
}

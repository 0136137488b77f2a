//! Action documents as the invoker reads them from the whisks database (written by any
//! controller, or by hand): a document is an error or an action; an accepted one round-trips
//! through the form the front door writes, and where its code lives is an answer, not a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openwhisk::action::{ActionDocument, Code};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(doc) = ActionDocument::from_value(value) else {
        return;
    };
    let written = doc.to_value();
    let again = ActionDocument::from_value(written.clone())
        .unwrap_or_else(|e| panic!("an accepted document does not read back: {e}\n{written}"));
    assert_eq!(
        again.to_value(),
        written,
        "writing the document is not stable"
    );
    let _ = doc.exec.kind();
    let _ = doc.exec.main();
    let _ = doc.exec.binary();
    if let Some(Code::Attachment(attachment)) = doc.exec.code() {
        let _ = attachment.location();
    }
    let _ = doc.provides_api_key();
});

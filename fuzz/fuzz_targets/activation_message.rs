//! `ActivationMessage::parse`, what the invoker does first with every record of `invoker<N>`:
//! any bytes are an error or a message, never a panic; a message it accepts survives its own
//! encoding (what the invoker writes back into acks and records).
#![no_main]

use libfuzzer_sys::fuzz_target;
use openwhisk::messages::ActivationMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = ActivationMessage::parse(data) else {
        return;
    };
    let json = msg.to_json();
    let again = ActivationMessage::parse(json.as_bytes()).unwrap_or_else(|e| {
        panic!("an accepted message does not parse once re-encoded: {e}\n{json}")
    });
    assert_eq!(again.to_json(), json, "re-encoding is not stable");
    // What the invoker reads of it on every activation.
    let _ = msg.transid.id();
    let _ = msg.transid.start_ms();
    let _ = msg.action.qualified();
});

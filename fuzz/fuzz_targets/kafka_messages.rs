//! The other Kafka messages read from outside: the invoker's acks on `completed<C>` and its pings
//! on `health`, which the front door (and a controller in our tests) decodes. Any bytes are an
//! error or a message; an accepted one re-encodes to something that decodes to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openwhisk::messages::{Ack, PingMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(ack) = serde_json::from_slice::<Ack>(data) {
        let json = serde_json::to_string(&ack).expect("an ack encodes");
        let again: Ack = serde_json::from_str(&json).unwrap_or_else(|e| {
            panic!("an accepted ack does not decode once re-encoded: {e}\n{json}")
        });
        assert_eq!(again.activation_id(), ack.activation_id());
        assert_eq!(again.frees_slot(), ack.frees_slot());
        assert_eq!(again.record().is_some(), ack.record().is_some());
        let _ = ack.transid();
    }
    if let Ok(ping) = serde_json::from_slice::<PingMessage>(data) {
        let json = serde_json::to_string(&ping).expect("a ping encodes");
        let again: PingMessage = serde_json::from_str(&json).unwrap_or_else(|e| {
            panic!("an accepted ping does not decode once re-encoded: {e}\n{json}")
        });
        assert_eq!(again, ping);
    }
});

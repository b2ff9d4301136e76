//! A queue entry as JetStream hands it out (what any process with access to the stream could
//! have written): decoding never panics, and what decodes encodes back to the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_queue::entry::{decode, encode};

fuzz_target!(|payload: &[u8]| {
    if let Ok((envelope, body)) = decode(payload) {
        let encoded = encode(&envelope, Some(body));
        let (again, again_body) = decode(&encoded).expect("an encoded entry decodes");
        assert_eq!(again, envelope);
        assert_eq!(again_body, body);
    }
});

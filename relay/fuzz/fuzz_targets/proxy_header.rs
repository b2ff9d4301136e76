//! The first bytes of a connection behind a load balancer: the PROXY header parser never
//! panics, asks only for a bounded number of bytes more, and never claims more bytes than it
//! was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_smtp::proxy::{self, Parse, V2_MAX};

fuzz_target!(|input: &[u8]| {
    match proxy::parse(input) {
        Ok(Parse::NeedMore(more)) => assert!(more > 0 && input.len() + more <= V2_MAX),
        Ok(Parse::Done { length, .. }) => assert!(length <= input.len()),
        Err(_) => {}
    }
});

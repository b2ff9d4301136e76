//! A path from MAIL FROM or RCPT TO: parsing never panics, a parsed address prints without CR or
//! LF, and what it prints parses back to the same address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_smtp::address::{parse_forward_path, parse_reverse_path};
use postern_smtp::{Address, ReversePath};

fuzz_target!(|text: &str| {
    if let Ok(ReversePath::Mailbox(address)) = parse_reverse_path(text) {
        printed_back(&address);
    }
    if let Ok(address) = parse_forward_path(text) {
        printed_back(&address);
    }
    if let Ok(address) = Address::parse(text) {
        printed_back(&address);
    }
});

fn printed_back(address: &Address) {
    let printed = address.to_string();
    assert!(!printed.contains(['\r', '\n']), "{printed:?}");
    assert_eq!(
        parse_forward_path(&format!("<{printed}>")).as_ref(),
        Ok(address),
        "{printed:?}"
    );
}

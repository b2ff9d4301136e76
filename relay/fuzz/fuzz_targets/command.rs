//! A command line from a client: parsing never panics, and what parses as MAIL or RCPT names
//! addresses that print without CR or LF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_smtp::Command;

fuzz_target!(|line: &[u8]| {
    match Command::parse(line) {
        Ok(Command::Mail { from, .. }) => assert!(!from.to_string().contains(['\r', '\n'])),
        Ok(Command::Rcpt { to, .. }) => assert!(!to.to_string().contains(['\r', '\n'])),
        _ => {}
    }
});

//! Replies from a remote server, cut into pieces anywhere: the parser never panics, holds no
//! more than its limit, and a reply it parsed writes out as bytes that parse back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_smtp::ReplyParser;

const LIMIT: usize = 2048;

fuzz_target!(|input: &[u8]| {
    let Some((&piece, bytes)) = input.split_first() else {
        return;
    };
    let mut parser = ReplyParser::new(LIMIT);
    for chunk in bytes.chunks(usize::from(piece).max(1)) {
        parser.feed(chunk);
        loop {
            match parser.next_reply() {
                Ok(Some(reply)) => {
                    assert!((100..600).contains(&reply.code), "{reply:?}");
                    let mut again = ReplyParser::new(usize::MAX);
                    again.feed(&reply.to_bytes());
                    assert_eq!(again.next_reply().ok().flatten().as_ref(), Some(&reply));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

//! Message content from a client, cut into pieces anywhere: the decoder never panics, never
//! hands out more than the limit, and what it accepts is clean (CRLF line endings, no NUL),
//! whether it came as DATA or as BDAT chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_smtp::BareLineEndings;
use postern_smtp::body::{BodyDecoder, is_clean};

const LIMIT: usize = 4096;

fuzz_target!(|input: &[u8]| {
    let Some((&settings, content)) = input.split_first() else {
        return;
    };
    let policy = match settings & 1 {
        0 => BareLineEndings::Normalize,
        _ => BareLineEndings::Reject,
    };
    let piece = usize::from(settings >> 1).max(1);
    let mut decoder = match settings & 2 {
        0 => BodyDecoder::data(policy, LIMIT),
        _ => BodyDecoder::bdat(policy, LIMIT),
    };
    let dot_terminated = settings & 2 == 0;
    let mut taken = Vec::new();
    let mut ended = false;
    for chunk in content.chunks(piece) {
        if let Some(used) = decoder.feed(chunk) {
            assert!(dot_terminated, "BDAT content has no terminator");
            assert!(used <= chunk.len());
            ended = true;
            break;
        }
        if decoder.fault().is_none() {
            taken.extend(decoder.take());
        }
    }
    let fault = decoder.fault();
    let rest = match (dot_terminated, ended) {
        (true, true) => decoder.into_body(),
        (true, false) => return,
        (false, _) => decoder.finish(),
    };
    // A fault seen on the way stays; the end (a trailing bare CR of BDAT) may add one.
    if let Ok(rest) = rest {
        assert_eq!(fault, None);
        taken.extend(rest);
        assert!(taken.len() <= LIMIT + 2, "{} bytes", taken.len());
        assert!(is_clean(&taken), "{taken:?}");
    }
});

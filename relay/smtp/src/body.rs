//! Message body decoding for DATA and BDAT.
//!
//! The only end of DATA is `<CRLF>.<CRLF>`. Bare CR, bare LF and NUL never reach the decoded body:
//! in [`BareLineEndings::Normalize`] mode a bare LF becomes CRLF, a bare CR a space and NUL is
//! dropped; in [`BareLineEndings::Reject`] mode the message is read to its real end and refused.
//! A line that only looks like a terminator after such a byte (`\n.\n`, `\r.\r\n`, ...) is body
//! text, so nothing after it is ever taken as a command.

/// What to do with bare CR, bare LF and NUL inside a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BareLineEndings {
    #[default]
    Normalize,
    Reject,
}

/// The longest text line RFC 5321 §4.5.3.1.6 allows, without its CRLF.
pub const MAX_LINE_LENGTH: usize = 998;

/// What was wrong with a body once it was read to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    TooBig,
    BareLineEnding,
    LineTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After a real CRLF (or at the start): a dot here is special in DATA.
    LineStart,
    /// `.` at a line start.
    Dot,
    /// `.\r` at a line start.
    DotCr,
    /// Inside a line.
    Text,
    /// A CR inside a line, not yet known to be followed by LF.
    Cr,
}

/// Incremental decoder of one message body.
///
/// The decoded bytes collect in a buffer that the caller may empty as they come
/// ([`BodyDecoder::take`]), to stream a large body on instead of holding it.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
    dot_terminated: bool,
    policy: BareLineEndings,
    max_size: usize,
    body: Vec<u8>,
    line_len: usize,
    size: usize,
    fault: Option<BodyFault>,
    header: HeaderScan,
    eight_bit: bool,
}

/// Watches the header section go by: how many `Received:` fields it has, and where it ends.
#[derive(Debug, Default)]
struct HeaderScan {
    done: bool,
    /// The first bytes of the current line.
    start: [u8; 9],
    len: usize,
    received: usize,
}

impl HeaderScan {
    fn byte(&mut self, b: u8) {
        if self.done {
            return;
        }
        if b == b'\n' {
            let line = &self.start[..self.len.min(9)];
            if line.is_empty() || line == b"\r" {
                self.done = true;
            } else if line.eq_ignore_ascii_case(b"received:") {
                self.received += 1;
            }
            self.len = 0;
            return;
        }
        if let Some(slot) = self.start.get_mut(self.len) {
            *slot = b;
        }
        self.len += 1;
    }
}

impl BodyDecoder {
    /// A decoder for DATA: dot-unstuffing, ends at `<CRLF>.<CRLF>`.
    pub fn data(policy: BareLineEndings, max_size: usize) -> Self {
        Self::new(true, policy, max_size)
    }

    /// A decoder for BDAT chunks: no dot handling, the chunk sizes delimit the body.
    pub fn bdat(policy: BareLineEndings, max_size: usize) -> Self {
        Self::new(false, policy, max_size)
    }

    fn new(dot_terminated: bool, policy: BareLineEndings, max_size: usize) -> Self {
        BodyDecoder {
            state: State::LineStart,
            dot_terminated,
            policy,
            max_size,
            body: Vec::new(),
            line_len: 0,
            size: 0,
            fault: None,
            header: HeaderScan::default(),
            eight_bit: false,
        }
    }

    /// Decodes `input`. For DATA, returns `Some(n)` when the terminator ended after `n` bytes of
    /// input (the rest belongs to the next command); `None` means all of it was body.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            // Inside a line, ordinary bytes are copied as a run: only CR, LF and NUL need
            // the state machine.
            if self.state == State::Text {
                let run = input[i..]
                    .iter()
                    .position(|&b| matches!(b, b'\r' | b'\n' | 0))
                    .unwrap_or(input.len() - i);
                if run > 0 {
                    self.line_len += run;
                    if self.line_len > MAX_LINE_LENGTH {
                        self.set_fault(BodyFault::LineTooLong);
                    }
                    self.emit(&input[i..i + run]);
                    i += run;
                    continue;
                }
            }
            i += 1;
            if self.step(b) {
                return Some(i);
            }
        }
        None
    }

    /// Size of the decoded body so far, counting what was discarded over the limit.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The first fault seen, if any.
    pub fn fault(&self) -> Option<BodyFault> {
        self.fault
    }

    /// `Received:` fields in the header section so far.
    pub fn received(&self) -> usize {
        self.header.received
    }

    /// True once a byte above 127 was decoded.
    pub fn eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// Decoded bytes not taken yet.
    pub fn buffered(&self) -> usize {
        self.body.len()
    }

    /// Takes the decoded bytes so far; later bytes start a new buffer. Only bytes of a body
    /// without a fault so far are ever handed out.
    pub fn take(&mut self) -> Vec<u8> {
        // The next run of content is likely as large: start its buffer at that size, and give
        // back what the taken one over-allocated while it grew.
        let next = Vec::with_capacity(self.body.len());
        let mut taken = std::mem::replace(&mut self.body, next);
        taken.shrink_to_fit();
        taken
    }

    /// Ends a BDAT body: resolves a trailing CR and makes the body end with CRLF.
    pub fn finish(mut self) -> Result<Vec<u8>, BodyFault> {
        if self.state == State::Cr {
            self.bare(b' ');
        }
        if self.size > 0 && self.line_len > 0 {
            self.emit_crlf();
        }
        match self.fault {
            Some(fault) => Err(fault),
            None => Ok(self.body),
        }
    }

    /// Processes one byte; true at the end of DATA.
    fn step(&mut self, b: u8) -> bool {
        match self.state {
            State::LineStart if b == b'.' && self.dot_terminated => self.state = State::Dot,
            State::Dot if b == b'\r' => self.state = State::DotCr,
            State::DotCr if b == b'\n' => return true,
            State::DotCr => {
                // `.` + bare CR: the dot was stuffing, the CR is bare.
                self.state = State::Text;
                self.bare(b' ');
                self.text(b);
            }
            State::Cr => match b {
                b'\n' => {
                    self.emit_crlf();
                    self.state = State::LineStart;
                }
                b'\r' => self.bare(b' '),
                _ => {
                    self.bare(b' ');
                    self.state = State::Text;
                    self.text(b);
                }
            },
            // LineStart (not a dot), Dot (stuffing dot dropped) and Text.
            _ => {
                self.state = State::Text;
                self.text(b);
            }
        }
        false
    }

    /// A byte inside a line.
    fn text(&mut self, b: u8) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                self.fault_if_rejecting();
                self.emit_crlf();
            }
            0 => self.fault_if_rejecting(),
            _ => {
                self.line_len += 1;
                if self.line_len > MAX_LINE_LENGTH {
                    self.set_fault(BodyFault::LineTooLong);
                }
                self.emit(&[b]);
            }
        }
    }

    /// A bare CR, replaced by `replacement` when normalizing.
    fn bare(&mut self, replacement: u8) {
        self.fault_if_rejecting();
        self.line_len += 1;
        self.emit(&[replacement]);
    }

    fn emit_crlf(&mut self) {
        self.line_len = 0;
        self.emit(b"\r\n");
    }

    fn fault_if_rejecting(&mut self) {
        if self.policy == BareLineEndings::Reject {
            self.set_fault(BodyFault::BareLineEnding);
        }
    }

    fn set_fault(&mut self, fault: BodyFault) {
        self.fault.get_or_insert(fault);
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size += bytes.len();
        if !self.header.done {
            for &b in bytes {
                self.header.byte(b);
            }
        }
        self.eight_bit = self.eight_bit || !bytes.is_ascii();
        if self.size > self.max_size {
            self.set_fault(BodyFault::TooBig);
            self.body = Vec::new();
        } else if self.fault.is_none() {
            self.body.extend_from_slice(bytes);
        }
    }

    /// The decoded body of a finished DATA transfer.
    pub fn into_body(self) -> Result<Vec<u8>, BodyFault> {
        match self.fault {
            Some(fault) => Err(fault),
            None => Ok(self.body),
        }
    }
}

/// True when `body` holds only CRLF line endings and no NUL: what the queue may hold.
pub fn is_clean(body: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in body.iter().enumerate() {
        let bad = match b {
            b'\n' => prev != b'\r',
            b'\r' => body.get(i + 1) != Some(&b'\n'),
            0 => true,
            _ => false,
        };
        if bad {
            return false;
        }
        prev = b;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(input: &[u8], policy: BareLineEndings) -> (Option<usize>, Result<Vec<u8>, BodyFault>) {
        let mut d = BodyDecoder::data(policy, 1 << 20);
        let end = d.feed(input);
        (end, d.into_body())
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf_and_unstuffs() {
        let input = b"a\r\n..b\r\n.c\r\n.\r\nMAIL";
        let (end, body) = data(input, BareLineEndings::Normalize);
        assert_eq!(end, Some(input.len() - 4));
        assert_eq!(body.unwrap(), b"a\r\n.b\r\nc\r\n");
    }

    #[test]
    fn empty_message() {
        assert_eq!(
            data(b".\r\n", BareLineEndings::Normalize),
            (Some(3), Ok(vec![]))
        );
    }

    #[test]
    fn lookalike_terminators_are_body_text() {
        for fake in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r.\r",
            b"\r.\n",
            b"\n.\r",
            b"\r\n\x00.\r\n",
            b"\r\n.\r\r\n",
            b"\r\r\n.\r\r\n",
        ] {
            let mut input = b"Subject: x\r\n\r\nbody".to_vec();
            input.extend_from_slice(fake);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            let mut d = BodyDecoder::data(BareLineEndings::Normalize, 1 << 20);
            assert_eq!(d.feed(&input), None, "{fake:?} ended data");
            assert_eq!(d.feed(b"\r\n.\r\n"), Some(5));
            let body = d.into_body().unwrap();
            assert!(is_clean(&body), "{fake:?} left {body:?}");
            let mut d = BodyDecoder::data(BareLineEndings::Reject, 1 << 20);
            assert_eq!(d.feed(&input), None);
            assert_eq!(d.feed(b"\r\n.\r\n"), Some(5));
            assert_eq!(d.into_body(), Err(BodyFault::BareLineEnding), "{fake:?}");
        }
    }

    #[test]
    fn normalizes_bare_endings() {
        let (_, body) = data(b"a\nb\rc\r\r\nd\0e\r\n.\r\n", BareLineEndings::Normalize);
        assert_eq!(body.unwrap(), b"a\r\nb c \r\nde\r\n");
    }

    #[test]
    fn limits_size_and_line_length() {
        let mut d = BodyDecoder::data(BareLineEndings::Normalize, 10);
        assert_eq!(d.feed(b"0123456789abc\r\n.\r\n"), Some(18));
        assert_eq!(d.into_body(), Err(BodyFault::TooBig));
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            data(&long, BareLineEndings::Normalize).1,
            Err(BodyFault::LineTooLong)
        );
        long.remove(0);
        assert!(data(&long, BareLineEndings::Normalize).1.is_ok());
    }

    #[test]
    fn bdat_keeps_dots_and_joins_crlf_across_chunks() {
        let mut d = BodyDecoder::bdat(BareLineEndings::Normalize, 100);
        d.feed(b".a\r");
        d.feed(b"\n.\r\n\r");
        assert_eq!(d.finish().unwrap(), b".a\r\n.\r\n \r\n");
    }

    #[test]
    fn counts_received_in_headers_only_and_sees_8bit() {
        let mut d = BodyDecoder::bdat(BareLineEndings::Normalize, 1000);
        d.feed(
            b"Received: a\r\nreceived: b\r\nReceived:\r\n c\r\nSubject: x\r\n\r\nReceived: d\r\n",
        );
        assert_eq!(d.received(), 3);
        assert!(!d.eight_bit());
        d.feed("ü\r\n".as_bytes());
        assert!(d.eight_bit());
    }

    #[test]
    fn taking_content_leaves_the_rest_and_the_checks() {
        let mut d = BodyDecoder::data(BareLineEndings::Reject, 1000);
        assert_eq!(d.feed(b"a\r\n..b"), None);
        assert_eq!(d.take(), b"a\r\n.b");
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.feed(b"c\r\nbare\nlf\r\n.\r\n"), Some(15));
        assert_eq!(d.into_body(), Err(BodyFault::BareLineEnding));
        let mut b = BodyDecoder::bdat(BareLineEndings::Normalize, 1000);
        b.feed(b"no end");
        assert_eq!(b.take(), b"no end");
        assert_eq!(
            b.finish().unwrap(),
            b"\r\n",
            "the line ends although it was taken"
        );
    }

    proptest! {
        #[test]
        fn decoded_body_is_always_clean(chunks in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(0u8), Just(b'a')], 0..20), 0..10)) {
            let mut d = BodyDecoder::data(BareLineEndings::Normalize, 1 << 20);
            let mut b = BodyDecoder::bdat(BareLineEndings::Normalize, 1 << 20);
            let mut ended = false;
            for chunk in &chunks {
                b.feed(chunk);
                if !ended && d.feed(chunk).is_some() {
                    ended = true;
                }
            }
            if ended {
                prop_assert!(is_clean(&d.into_body().unwrap()));
            }
            prop_assert!(is_clean(&b.finish().unwrap()));
        }

        #[test]
        fn stuffed_body_round_trips(lines in proptest::collection::vec("[.a-z ]{0,20}", 0..10)) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for line in &lines {
                if line.starts_with('.') { wire.push(b'.'); }
                wire.extend_from_slice(line.as_bytes());
                wire.extend_from_slice(b"\r\n");
                expected.extend_from_slice(line.as_bytes());
                expected.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b".\r\n");
            let mut d = BodyDecoder::data(BareLineEndings::Reject, 1 << 20);
            prop_assert_eq!(d.feed(&wire), Some(wire.len()));
            prop_assert_eq!(d.into_body().unwrap(), expected);
        }
    }
}

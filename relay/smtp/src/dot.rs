//! Dot-stuffing for DATA (RFC 5321 §4.5.2), incremental so a body can be sent in pieces as it
//! is read from the queue.

/// Turns a body into its DATA form piece by piece: lines starting with `.` get another, every
/// line ends in CRLF (a bare CR or LF becomes CRLF), and [`DotStuffer::finish`] adds the `.`
/// line that ends the data. Pieces may split a line or a CRLF anywhere.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    line_start: bool,
    /// The last piece ended in a CR whose LF, if any, starts the next piece.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            pending_cr: false,
        }
    }
}

impl DotStuffer {
    /// Appends the DATA form of `piece` to `out`.
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        out.reserve(piece.len() + piece.len() / 64 + 2);
        let mut rest = piece;
        if std::mem::take(&mut self.pending_cr) {
            match rest.first() {
                Some(b'\n') => rest = &rest[1..],
                Some(_) => {}
                None => {
                    self.pending_cr = true;
                    return;
                }
            }
        }
        // Line by line: the text up to a CR or LF is copied as is.
        while let Some(&first) = rest.first() {
            if self.line_start && first == b'.' {
                out.push(b'.');
            }
            let Some(end) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
                out.extend_from_slice(rest);
                self.line_start = false;
                return;
            };
            out.extend_from_slice(&rest[..end]);
            out.extend_from_slice(b"\r\n");
            self.line_start = true;
            let skip = match (rest[end], rest.get(end + 1)) {
                (b'\r', Some(b'\n')) => 2,
                (b'\r', None) => {
                    self.pending_cr = true;
                    1
                }
                _ => 1,
            };
            rest = &rest[end + skip..];
        }
    }

    /// Ends the data: a last line without CRLF gets one, then the `.` line. Nothing may be
    /// pushed after it.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.line_start = true;
    }
}

/// The whole DATA form of a body, terminator included.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stuffer = DotStuffer::default();
    stuffer.push(body, &mut out);
    stuffer.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{BareLineEndings, BodyDecoder, is_clean};
    use proptest::prelude::*;

    #[test]
    fn stuffs_dots_and_ends_lines_with_crlf() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(
            dot_stuff(b"bare\nlf\rcr\r\n.\n"),
            b"bare\r\nlf\r\ncr\r\n..\r\n.\r\n"
        );
    }

    #[test]
    fn a_crlf_split_between_pieces_stays_one_line_end() {
        let mut out = Vec::new();
        let mut stuffer = DotStuffer::default();
        stuffer.push(b"a\r", &mut out);
        stuffer.push(b"", &mut out);
        stuffer.push(b"\n.b", &mut out);
        stuffer.finish(&mut out);
        assert_eq!(out, b"a\r\n..b\r\n.\r\n");
    }

    proptest! {
        /// What delivery writes, ingress reads back unchanged: no bare CR/LF, no early end.
        #[test]
        fn stuffed_bodies_decode_to_the_original(body in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'x')], 0..200)) {
            let wire = dot_stuff(&body);
            prop_assert!(is_clean(&wire));
            let mut decoder = BodyDecoder::data(BareLineEndings::Reject, 1 << 20);
            prop_assert_eq!(decoder.feed(&wire), Some(wire.len()));
            let decoded = decoder.into_body().unwrap();
            if is_clean(&body) && (body.is_empty() || body.ends_with(b"\r\n")) {
                prop_assert_eq!(decoded, body);
            }
        }

        /// Any split of a body into pieces gives the same wire bytes as the whole body.
        #[test]
        fn pieces_stuff_like_the_whole(
            body in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'x')], 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let mut out = Vec::new();
            let mut stuffer = DotStuffer::default();
            let mut from = 0;
            for cut in cuts {
                stuffer.push(&body[from..cut], &mut out);
                from = cut;
            }
            stuffer.push(&body[from..], &mut out);
            stuffer.finish(&mut out);
            prop_assert_eq!(out, dot_stuff(&body));
        }
    }
}

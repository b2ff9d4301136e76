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
        let mut bytes = piece.iter().copied();
        if std::mem::take(&mut self.pending_cr) {
            match piece.first() {
                Some(b'\n') => {
                    bytes.next();
                }
                Some(_) => {}
                None => {
                    self.pending_cr = true;
                    return;
                }
            }
        }
        let mut bytes = bytes.peekable();
        while let Some(b) = bytes.next() {
            if self.line_start && b == b'.' {
                out.push(b'.');
            }
            match b {
                b'\r' => {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                    match bytes.peek() {
                        Some(b'\n') => {
                            bytes.next();
                        }
                        Some(_) => {}
                        None => self.pending_cr = true,
                    }
                }
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                }
                _ => {
                    out.push(b);
                    self.line_start = false;
                }
            }
        }
    }

    /// Ends the data: a last line without CRLF gets one, then the `.` line.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
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

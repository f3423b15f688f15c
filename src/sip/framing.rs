//! Finding message boundaries on stream transports (TCP, TLS) before any parsing.
//!
//! RFC 3261 §18.3: on a stream the body length comes only from Content-Length, so a frame
//! is complete when the blank line and that many body bytes have arrived. Keep-alives
//! (RFC 5626 §4.4.1) are a double CRLF ping, answered with a single CRLF pong.

/// What the front of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet.
    Incomplete,
    /// A CRLF CRLF keep-alive ping of this many bytes; answer with one CRLF.
    Ping(usize),
    /// Stray CRLFs (a pong, or padding before a message) to skip (RFC 3261 §7.5).
    Skip(usize),
    /// One whole message of this many bytes.
    Message(usize),
    /// The stream cannot be framed any further; the connection must be closed after
    /// answering. `header_len` bytes hold the offending header block when it was complete.
    Invalid {
        cause: FrameError,
        header_len: Option<usize>,
    },
}

/// Why a stream could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than the configured limit")]
    TooLarge,
    #[error("Content-Length is not a non-negative integer")]
    BadContentLength,
    #[error("several different Content-Length values")]
    ConflictingContentLength,
}

impl FrameError {
    /// A metrics label.
    pub fn cause(self) -> &'static str {
        match self {
            FrameError::TooLarge => "too_large",
            FrameError::BadContentLength => "bad_content_length",
            FrameError::ConflictingContentLength => "conflicting_content_length",
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Looks at the front of `buf` and says what it holds. Never consumes; the caller advances
/// by the returned length.
pub fn next_frame(buf: &[u8], max_message_bytes: usize) -> Frame {
    if buf.starts_with(b"\r\n\r\n") {
        return Frame::Ping(4);
    }
    if buf.starts_with(b"\r\n") {
        // A lone CRLF: a pong, or the start of a ping that has not fully arrived.
        return match buf.get(2) {
            None | Some(b'\r') => Frame::Incomplete,
            Some(_) => Frame::Skip(2),
        };
    }
    let Some(blank) = find(buf, b"\r\n\r\n") else {
        if buf.len() > max_message_bytes {
            return Frame::Invalid {
                cause: FrameError::TooLarge,
                header_len: None,
            };
        }
        return Frame::Incomplete;
    };
    let header_len = blank + 4;
    let body_len = match content_length(&buf[..blank]) {
        Ok(n) => n.unwrap_or(0),
        Err(cause) => {
            return Frame::Invalid {
                cause,
                header_len: Some(header_len),
            }
        }
    };
    let total = header_len.saturating_add(body_len);
    if total > max_message_bytes {
        return Frame::Invalid {
            cause: FrameError::TooLarge,
            header_len: Some(header_len),
        };
    }
    if buf.len() < total {
        Frame::Incomplete
    } else {
        Frame::Message(total)
    }
}

/// The Content-Length of a header block (long or compact `l` name, any case), `None` when
/// absent. Repeated equal values are tolerated; different ones are an error (RFC 4475 §3.3.9).
pub fn content_length(headers: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut found: Option<usize> = None;
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            continue; // a folded continuation line
        }
        let name = trim(&line[..colon]);
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        for value in line[colon + 1..].split(|&b| b == b',') {
            let value = trim(value);
            if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
                return Err(FrameError::BadContentLength);
            }
            // Cannot fail: at most nine ASCII digits.
            let n: usize = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            match found {
                Some(prev) if prev != n => return Err(FrameError::ConflictingContentLength),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4096;

    #[test]
    fn whole_message_with_body() {
        let msg = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(next_frame(msg, MAX), Frame::Message(msg.len()));
    }

    #[test]
    fn partial_header_and_partial_body_wait() {
        let msg = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";
        for cut in 1..msg.len() {
            assert_eq!(
                next_frame(&msg[..cut], MAX),
                Frame::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn coalesced_messages_are_split() {
        let one = b"OPTIONS sip:a@b SIP/2.0\r\nl: 2\r\n\r\nhi";
        let mut two = one.to_vec();
        two.extend_from_slice(b"OPTIONS sip:c@d SIP/2.0\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(next_frame(&two, MAX), Frame::Message(one.len()));
        assert_eq!(
            next_frame(&two[one.len()..], MAX),
            Frame::Message(two.len() - one.len())
        );
    }

    #[test]
    fn missing_content_length_means_empty_body() {
        let msg = b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\nrest";
        assert_eq!(next_frame(msg, MAX), Frame::Message(msg.len() - 4));
    }

    #[test]
    fn keepalives() {
        assert_eq!(next_frame(b"\r\n\r\n", MAX), Frame::Ping(4));
        assert_eq!(next_frame(b"\r\n", MAX), Frame::Incomplete);
        assert_eq!(next_frame(b"\r\nOPTIONS", MAX), Frame::Skip(2));
    }

    #[test]
    fn bad_content_lengths() {
        let neg = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -999\r\n\r\n";
        assert!(matches!(
            next_frame(neg, MAX),
            Frame::Invalid {
                cause: FrameError::BadContentLength,
                header_len: Some(_)
            }
        ));
        let two = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 0\r\nl: 5\r\n\r\n";
        assert!(matches!(
            next_frame(two, MAX),
            Frame::Invalid {
                cause: FrameError::ConflictingContentLength,
                ..
            }
        ));
        let same = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 0\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(next_frame(same, MAX), Frame::Message(same.len()));
    }

    #[test]
    fn oversize_is_refused_without_waiting() {
        let big = vec![b'a'; MAX + 1];
        assert!(matches!(
            next_frame(&big, MAX),
            Frame::Invalid {
                cause: FrameError::TooLarge,
                header_len: None
            }
        ));
        let huge_body = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 999999\r\n\r\n";
        assert!(matches!(
            next_frame(huge_body, MAX),
            Frame::Invalid {
                cause: FrameError::TooLarge,
                ..
            }
        ));
    }

    #[test]
    fn torture_framing_cases() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475");
        let ncl = std::fs::read(dir.join("ncl.dat")).unwrap();
        assert!(matches!(next_frame(&ncl, 65535), Frame::Invalid { .. }));
        let mcl = std::fs::read(dir.join("mcl01.dat")).unwrap();
        assert!(matches!(next_frame(&mcl, 65535), Frame::Invalid { .. }));
        let mpart = std::fs::read(dir.join("mpart01.dat")).unwrap();
        assert_eq!(next_frame(&mpart, 65535), Frame::Message(mpart.len()));
    }
}

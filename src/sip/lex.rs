//! The basic rules of RFC 3261 §25.1 that the message, URI and digest parsers share:
//! linear whitespace (SP and HTAB; folding is undone by the lexer) and tokens.

pub(crate) fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

pub(crate) fn trim_ws(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

pub(crate) fn trim_start_ws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

pub(crate) fn trim_end_ws(s: &str) -> &str {
    s.trim_end_matches([' ', '\t'])
}

/// RFC 3261 token characters.
pub(crate) fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

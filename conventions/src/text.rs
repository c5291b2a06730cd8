//! Strings from peers (a control plane's error messages, resource names inside an agent's
//! NACK reasons, an agent's nonces) reach logs and `/status` on both sides. They are cut to a
//! bound there, so no peer can make either grow without limit.

use std::borrow::Cow;

/// How much of a peer-supplied string logs and status keep.
pub const PEER_TEXT_MAX: usize = 512;

/// At most `max` bytes of `s`, cut at a character boundary and saying how much was cut.
pub fn bounded(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} more bytes)", &s[..end], s.len() - end))
}

/// [`bounded`] at [`PEER_TEXT_MAX`].
pub fn peer(s: &str) -> Cow<'_, str> {
    bounded(s, PEER_TEXT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_pass_and_long_ones_are_cut_on_a_boundary() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcdef", 3), "abc… (3 more bytes)");
        // "é" is two bytes: a cut inside it moves back.
        assert_eq!(bounded("aé", 2), "a… (2 more bytes)");
        assert!(peer(&"x".repeat(1 << 20)).len() < PEER_TEXT_MAX + 32);
    }
}

//! Lines as libyaml sees them: it breaks lines at `\r\n`, `\n` and `\r`, and at the Unicode
//! NEL, LS and PS too, so the precheck must, or a line it takes for one could be two to the
//! parser.

/// The text's lines, split at every line break libyaml knows: `\r\n`, `\n`, `\r`, and the
/// Unicode NEL, LS and PS.
pub fn lines(text: &str) -> impl Iterator<Item = &str> {
    let b = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            let len = match (b[i], b.get(i + 1), b.get(i + 2)) {
                (b'\r', Some(b'\n'), _) => 2,
                (b'\n' | b'\r', _, _) => 1,
                (0xc2, Some(0x85), _) => 2,
                (0xe2, Some(0x80), Some(0xa8 | 0xa9)) => 3,
                _ => 0,
            };
            if len > 0 {
                let line = &text[start..i];
                i += len;
                start = i;
                return Some(line);
            }
            i += 1;
        }
        (start <= b.len()).then(|| {
            let line = &text[start..];
            start = b.len() + 1;
            line
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_break_libyaml_knows() {
        let text = "a\r\nb\nc\rd\u{85}e\u{2028}f\u{2029}g\n";
        assert_eq!(lines(text).collect::<Vec<_>>(), ["a", "b", "c", "d", "e", "f", "g", ""]);
        assert_eq!(lines("").collect::<Vec<_>>(), [""]);
        assert_eq!(lines("é\u{e9}x").collect::<Vec<_>>(), ["ééx"]);
    }
}

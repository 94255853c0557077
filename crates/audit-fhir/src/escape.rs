//! Percent-escaping of free text into FHIR `code` values and into the parts of a generic action name.
//!
//! A FHIR `code` may not contain leading, trailing or repeated whitespace; audit-db actions may. Escaping every
//! whitespace and control character (and `%` itself, plus any extra delimiter) as `%XX` of its UTF-8 bytes gives
//! a code that is always valid and that decodes back to exactly the original text.

/// Escapes `%`, whitespace, control characters and any character in `extra`.
pub(crate) fn escape(text: &str, extra: &[char]) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '%' || c.is_whitespace() || c.is_control() || extra.contains(&c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`escape`]; `None` when `text` has a malformed escape or the bytes are not UTF-8.
pub(crate) fn unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_what_a_code_cannot_hold() {
        assert_eq!(escape("user login", &[]), "user%20login");
        assert_eq!(escape(" 100%\u{a0}", &[]), "%20100%25%C2%A0");
        assert_eq!(escape("a|b", &['|']), "a%7Cb");
        assert_eq!(escape("a|b", &[]), "a|b");
        assert_eq!(unescape("%zz"), None);
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("%FF"), None);
    }

    proptest! {
        #[test]
        fn unescape_reverses_escape(s in any::<String>()) {
            let e = escape(&s, &['|']);
            prop_assert!(!e.chars().any(|c| c.is_whitespace() || c.is_control() || c == '|'));
            prop_assert_eq!(unescape(&e), Some(s));
        }
    }
}

//! Bounded quoting of client-provided text inside error messages.

/// At most 64 characters of `text`, quoted and escaped as Rust's `{:?}`
/// does, with the full length appended when cut: `"abc..."... (5000
/// bytes)`.
///
/// Every error that echoes something a client sent (a name, a field, a
/// value) goes through this: a gRPC status message travels in an HTTP/2
/// header, and one that echoed unbounded input would be dropped by standard
/// clients (header list too large), hiding the real status.
pub fn excerpt(text: &str) -> String {
    const MAX: usize = 64;
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(MAX).collect();
    if chars.next().is_none() {
        format!("{head:?}")
    } else {
        format!("{head:?}... ({} bytes)", text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::excerpt;

    #[test]
    fn short_text_is_quoted_whole() {
        assert_eq!(excerpt("a\"b\n"), r#""a\"b\n""#);
    }

    #[test]
    fn long_text_is_cut_at_64_characters_with_its_length() {
        let long = "é".repeat(5000);
        let e = excerpt(&long);
        assert_eq!(e, format!("{:?}... (10000 bytes)", "é".repeat(64)));
    }
}

//! Text that AWS restricts to a character set and a length (AMI names, role session names, tag
//! values): one pure helper that keeps what is allowed and replaces the rest.

/// `text` with every character that is neither ASCII alphanumeric nor in `allowed` replaced by
/// `replacement`, cut to `max` characters. Pure.
pub fn restricted(text: &str, allowed: &str, replacement: char, max: usize) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || allowed.contains(c) {
                c
            } else {
                replacement
            }
        })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_is_allowed_and_replaces_the_rest() {
        assert_eq!(restricted("a b/c{d}", "/", '-', 100), "a-b/c-d-");
        assert_eq!(restricted("abcdef", "", '-', 3), "abc");
    }
}

//! Bounded text: the one rule for cutting a message to a byte budget.

/// `text` cut to at most `max` bytes on a character boundary, ending in `…` when cut (the
/// mark counts towards `max`).
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn short_text_is_kept_long_text_is_cut_on_a_char_boundary() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcdef", 5), "ab…");
        // `é` is two bytes: a cut never splits it.
        let cut = truncate("ééééé", 6);
        assert_eq!(cut, "é…");
        assert!(cut.len() <= 6);
        assert_eq!(truncate("abcdef", 2), "…");
    }
}

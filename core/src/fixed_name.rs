//! Names kept in shared memory: fixed, NUL-terminated byte arrays, because a struct in
//! PostgreSQL's shared segment must not point into one backend's memory.

/// Stores what fits of `name`: at most `N - 1` bytes (the last is the terminator), cut
/// back to a character boundary so that reading it back never invents a replacement
/// character.
pub fn fixed_name<const N: usize>(name: &str) -> [u8; N] {
    let mut end = name.len().min(N.saturating_sub(1));
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = [0u8; N];
    out[..end].copy_from_slice(&name.as_bytes()[..end]);
    out
}

/// Reads back a name stored by [`fixed_name`]: the bytes up to the first NUL.
pub fn fixed_name_str(stored: &[u8]) -> String {
    let end = stored.iter().position(|b| *b == 0).unwrap_or(stored.len());
    String::from_utf8_lossy(&stored[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_name_that_fits_comes_back_whole() {
        let stored: [u8; 64] = fixed_name("vrs_bidx");
        assert_eq!(fixed_name_str(&stored), "vrs_bidx");
        assert_eq!(stored[8], 0);
    }

    #[test]
    fn a_long_name_keeps_n_minus_one_bytes_and_its_terminator() {
        let stored: [u8; 8] = fixed_name("abcdefghij");
        assert_eq!(&stored, b"abcdefg\0");
        assert_eq!(fixed_name_str(&stored), "abcdefg");
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // "é" is two bytes: seven bytes would end inside the fourth one.
        let stored: [u8; 8] = fixed_name("abéé\u{e9}z");
        assert_eq!(fixed_name_str(&stored), "abéé");
        let empty: [u8; 1] = fixed_name("x");
        assert_eq!(fixed_name_str(&empty), "");
        let none: [u8; 0] = fixed_name("x");
        assert_eq!(fixed_name_str(&none), "");
    }

    proptest! {
        #[test]
        fn what_is_read_back_is_the_longest_prefix_that_fits(name in "\\PC{0,40}") {
            let stored: [u8; 16] = fixed_name(&name);
            let back = fixed_name_str(&stored);
            prop_assert!(name.starts_with(&back));
            prop_assert!(back.len() <= 15);
            // Nothing more would have fitted: the next character would pass 15 bytes.
            if let Some(next) = name[back.len()..].chars().next() {
                prop_assert!(back.len() + next.len_utf8() > 15);
            }
        }
    }
}

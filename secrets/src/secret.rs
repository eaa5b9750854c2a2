//! The plaintext of a secret, kept out of logs and wiped from memory when dropped.

use std::fmt;

use zeroize::Zeroize;

/// A plaintext secret (an API token, a provider key): text that must not reach a log, a response or an event.
///
/// - `Debug` and `Display` print `[redacted]`; the text is reached only through [`expose`](Secret::expose).
/// - Its memory (the whole allocation) is overwritten with zeros when it is dropped. Copies made before it was
///   wrapped (a request body, a `String` that grew) are the caller's to avoid: move the `String` in.
/// - It implements neither `Serialize` nor `Clone`, so it cannot slip into an event or a response by derive,
///   nor `PartialEq` (a comparison that stops at the first difference tells an attacker how much they guessed):
///
/// ```compile_fail
/// fn serializable<T: serde::Serialize>() {}
/// serializable::<secrets::Secret>();
/// ```
pub struct Secret(String);

impl Secret {
    /// Wraps `text` (moved, not copied).
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    /// The plaintext. Use it where it is needed (a request header, an environment variable) and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The last four characters, for telling tokens apart in a list ("…4f2a"), or `None` when the secret is
    /// shorter than 12 characters (four of them would give away too much of it).
    pub fn last_four(&self) -> Option<String> {
        last_four(&self.0)
    }
}

/// The last four characters of `token` (Unicode scalar values), or `None` when it has fewer than 12 characters.
pub fn last_four(token: &str) -> Option<String> {
    let count = token.chars().count();
    (count >= 12).then(|| token.chars().skip(count - 4).collect())
}

impl From<String> for Secret {
    fn from(text: String) -> Secret {
        Secret(text)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Secret {
        Secret(text.to_owned())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let secret = Secret::from("qov_0123456789abcdef");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&secret)), "Some([redacted])");
        assert_eq!(secret.expose(), "qov_0123456789abcdef");
    }

    #[test]
    fn last_four_only_for_long_tokens() {
        assert_eq!(Secret::from("sk-ant-0123456789").last_four().as_deref(), Some("6789"));
        assert_eq!(last_four("abcdefghijkl").as_deref(), Some("ijkl"));
        assert_eq!(last_four("abcdefghijk"), None);
        assert_eq!(last_four(""), None);
        // Characters, not bytes: never a split code point.
        assert_eq!(last_four("ééééééééééé€🔑").as_deref(), Some("éé€🔑"));
        assert_eq!(last_four("ééééééééééé"), None);
    }
}

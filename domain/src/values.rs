//! Values more than one aggregate is made of, and the checks every free-text field goes through. Parsing is the only
//! way to build a value, so an invalid one never reaches an event.

/// Why a value was refused: the field and a sentence a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    /// The field, as the API names it.
    pub field: &'static str,
    /// What is wrong, safe to show.
    pub reason: String,
}

impl InvalidValue {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// A string newtype: `as_str`, `Display`, `Into<String>` and transparent serde. Its `parse` is written by hand.
macro_rules! string_value {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The value as stored.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}
pub(crate) use string_value;

string_value!(
    /// The key of a blueprint (`BLUEPRINT_KEY`): the id of its aggregate, the segment of its URLs, and what
    /// workspaces, publish requests and trust rules name it by.
    BlueprintKey
);

/// 1–128 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
pub(crate) fn identifier(field: &'static str, raw: &str) -> Result<String, InvalidValue> {
    let valid = !raw.is_empty()
        && raw.len() <= 128
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && raw.as_bytes()[0].is_ascii_alphanumeric();
    if valid {
        Ok(raw.to_string())
    } else {
        Err(InvalidValue::new(
            field,
            "1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
        ))
    }
}

impl BlueprintKey {
    /// See [`identifier`]'s rule. This is the form every *reference* to a blueprint takes (publish requests, trust
    /// rules and agent tokens took it before blueprints were registered); a new blueprint's key must also be
    /// [`BlueprintKey::parse_new`]'s.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        identifier("blueprint_key", raw).map(Self)
    }

    /// The key of a blueprint being registered: [`BlueprintKey::parse`]'s rule without upper case, so that two keys
    /// differing only in case never name two blueprints (aggregate ids and URLs are case-sensitive). Upper case is
    /// refused rather than folded, so that the key the admin typed is the key in every URL.
    pub fn parse_new(raw: &str) -> Result<Self, InvalidValue> {
        let key = Self::parse(raw)?;
        if !key.is_lower_case() {
            return Err(InvalidValue::new("key", "a new blueprint's key has no upper-case letters"));
        }
        Ok(key)
    }

    /// Whether the key has no upper-case letters (the form [`BlueprintKey::parse_new`] demands).
    pub fn is_lower_case(&self) -> bool {
        !self.0.bytes().any(|b| b.is_ascii_uppercase())
    }
}

/// Checks free text: trimmed, not empty, at most `max` characters, no control characters other than newlines and
/// tabs.
pub fn text(field: &'static str, raw: &str, max: usize) -> Result<String, InvalidValue> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(InvalidValue::new(field, "must not be empty"));
    }
    if trimmed.chars().count() > max {
        return Err(InvalidValue::new(field, format!("at most {max} characters")));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(InvalidValue::new(field, "must not contain control characters"));
    }
    Ok(trimmed.to_string())
}

/// Checks one line of text: like [`text`], but newlines and tabs are refused too.
pub fn line(field: &'static str, raw: &str, max: usize) -> Result<String, InvalidValue> {
    let checked = text(field, raw, max)?;
    if checked.chars().any(char::is_control) {
        return Err(InvalidValue::new(field, "must be one line without control characters"));
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blueprint_keys_are_identifiers_and_new_ones_are_lower_case() {
        for good in ["web", "Web", "env-1234_abc.d", &"k".repeat(128)] {
            assert!(BlueprintKey::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "-web", ".web", "a b", "a/b", "a%2Fb", "wéb", "a\0b", &"k".repeat(129)] {
            assert_eq!(BlueprintKey::parse(bad).map_err(|e| e.field), Err("blueprint_key"), "{bad:?}");
        }
        assert!(BlueprintKey::parse_new("web-2.0_beta").is_ok());
        assert_eq!(BlueprintKey::parse_new("Web").map_err(|e| e.field), Err("key"));
        assert!(!BlueprintKey::parse("Web").expect("valid").is_lower_case());
    }

    #[test]
    fn lines_refuse_every_control_character() {
        assert_eq!(line("name", "  Frontend starter ", 20).as_deref(), Ok("Frontend starter"));
        for bad in ["a\nb", "a\tb", "a\0b", "a\u{1b}b", "a\u{7f}b", "a\u{85}b"] {
            assert_eq!(line("name", bad, 20).map_err(|e| e.field), Err("name"), "{bad:?}");
        }
        assert!(line("name", "", 20).is_err());
        assert!(line("name", &"é".repeat(20), 20).is_ok(), "characters, not bytes");
        assert!(line("name", &"é".repeat(21), 20).is_err());
    }
}

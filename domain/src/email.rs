//! Email addresses: the identity of every person in Gatehouse.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A syntactically valid, lower-cased email address.
///
/// Identity in Gatehouse is the email claim of a token, so two spellings of one address must compare equal:
/// parsing lower-cases the whole address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

/// Why a string is not an [`Email`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEmail {
    /// Shorter than 3 characters, or longer than RFC 5321's 254.
    #[error("an email address has 3 to 254 characters")]
    Length,
    /// Not exactly one `@` with something on both sides.
    #[error("an email address is local-part@domain")]
    Shape,
    /// Whitespace, control characters or characters outside printable ASCII.
    #[error("an email address contains only printable ASCII without spaces")]
    Characters,
}

impl Email {
    /// Parses and normalises an address.
    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let trimmed = raw.trim();
        if trimmed.len() < 3 || trimmed.len() > 254 {
            return Err(InvalidEmail::Length);
        }
        if !trimmed.chars().all(|c| c.is_ascii_graphic()) {
            return Err(InvalidEmail::Characters);
        }
        let mut parts = trimmed.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(InvalidEmail::Shape);
        };
        if local.is_empty() || local.len() > 64 || domain.is_empty() || domain.starts_with('.') || domain.ends_with('.')
        {
            return Err(InvalidEmail::Shape);
        }
        Ok(Self(trimmed.to_ascii_lowercase()))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Email {
    type Error = InvalidEmail;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_lower_cased_and_trimmed() {
        assert_eq!(Email::parse("  Ada@Example.COM ").unwrap().as_str(), "ada@example.com");
    }

    #[test]
    fn malformed_addresses_are_refused_with_the_reason() {
        assert_eq!(Email::parse(""), Err(InvalidEmail::Length));
        assert_eq!(Email::parse("ada.example.com"), Err(InvalidEmail::Shape));
        assert_eq!(Email::parse("a@b@c"), Err(InvalidEmail::Shape));
        assert_eq!(Email::parse("@example.com"), Err(InvalidEmail::Shape));
        assert_eq!(Email::parse("ada@"), Err(InvalidEmail::Shape));
        assert_eq!(Email::parse("ad a@example.com"), Err(InvalidEmail::Characters));
        assert_eq!(Email::parse("adé@example.com"), Err(InvalidEmail::Characters));
        assert_eq!(Email::parse(&format!("{}@example.com", "a".repeat(300))), Err(InvalidEmail::Length));
    }

    #[test]
    fn deserialising_validates() {
        let parsed: Result<Email, _> = serde_json::from_str("\"not-an-email\"");
        assert!(parsed.is_err());
    }
}

//! Where a secret belongs, and the associated data that binds a ciphertext to it.

use std::fmt;

use crate::ciphertext::VERSION;

/// Where a secret belongs: the field of one aggregate of one organisation. Authenticated with the ciphertext as
/// associated data (never stored in it), so a ciphertext decrypts only for the binding it was encrypted for: one
/// copied into another field, another aggregate or another organisation's records fails to decrypt.
///
/// Every part must be stable for the secret's lifetime (renaming a field or an aggregate type means re-encrypting
/// its secrets). Values are not secret: they appear in [`MissingKeys`](crate::MissingKeys) and in `Debug`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Binding {
    /// The organisation (tenant) the secret belongs to: a stable identifier such as the control plane's
    /// organisation id, not a display name.
    pub org: String,
    /// The aggregate type holding the secret, e.g. `"roster"`.
    pub aggregate_type: String,
    /// The aggregate's id, e.g. `"org"`.
    pub aggregate_id: String,
    /// The field of that aggregate, e.g. `"admin_token"` or `"ai_providers.anthropic.api_key"`.
    pub field: String,
}

impl Binding {
    /// A binding from its four parts.
    pub fn new(
        org: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        field: impl Into<String>,
    ) -> Binding {
        Binding {
            org: org.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            field: field.into(),
        }
    }

    /// The associated data for AES-GCM-SIV:
    /// `"ghs1" ‖ u64be(len(org)) ‖ org ‖ u64be(len(aggregate_type)) ‖ aggregate_type ‖ u64be(len(aggregate_id)) ‖
    /// aggregate_id ‖ u64be(len(field)) ‖ field` (lengths in bytes of UTF-8). Each part is length-prefixed, so no
    /// two different bindings have the same encoding (a naive join would let `("a:b", "c")` equal `("a", "b:c")`).
    pub(crate) fn associated_data(&self) -> Vec<u8> {
        let parts = [&self.org, &self.aggregate_type, &self.aggregate_id, &self.field];
        let mut aad = Vec::with_capacity(VERSION.len() + parts.iter().map(|p| 8 + p.len()).sum::<usize>());
        aad.extend_from_slice(VERSION.as_bytes());
        for part in parts {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// `org:aggregate_type/aggregate_id.field`, e.g. `acme:roster/org.admin_token` (for messages, not parsed back).
impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}.{}", self.org, self.aggregate_type, self.aggregate_id, self.field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn associated_data_is_length_prefixed_and_versioned() {
        let aad = Binding::new("acme", "roster", "org", "admin_token").associated_data();
        let mut expected = b"ghs1".to_vec();
        for part in ["acme", "roster", "org", "admin_token"] {
            expected.extend_from_slice(&(part.len() as u64).to_be_bytes());
            expected.extend_from_slice(part.as_bytes());
        }
        assert_eq!(aad, expected);
    }

    #[test]
    fn parts_cannot_slide_into_each_other() {
        let bindings = [
            Binding::new("a", "b", "c", "d"),
            Binding::new("a:b", "", "c", "d"),
            Binding::new("", "a:b", "c", "d"),
            Binding::new("a", "b", "c:d", ""),
            Binding::new("a", "b", "", "c:d"),
            Binding::new("ab", "", "c", "d"),
            Binding::new("a", "bc", "", "d"),
            Binding::new("", "", "", ""),
            Binding::new("", "", "", "\0"),
        ];
        for (i, a) in bindings.iter().enumerate() {
            for b in &bindings[i + 1..] {
                assert_ne!(a.associated_data(), b.associated_data(), "{a:?} and {b:?}");
            }
        }
    }
}

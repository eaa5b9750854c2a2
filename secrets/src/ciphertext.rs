//! The stored form of an encrypted secret: `ghs1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::KeyId;

/// The format version: the first part of every ciphertext, and the first bytes of its associated data.
pub const VERSION: &str = "ghs1";

/// Bytes of an AES-GCM-SIV nonce (96 bits, random for each encryption).
pub const NONCE_BYTES: usize = 12;

/// Bytes of an AES-GCM-SIV authentication tag.
pub const TAG_BYTES: usize = 16;

/// The longest plaintext a secret may have (64 KiB): tokens and API keys are far shorter, and the bound keeps the
/// work of parsing an untrusted ciphertext string small.
pub const MAX_PLAINTEXT_BYTES: usize = 64 * 1024;

/// The longest ciphertext string, that of a [`MAX_PLAINTEXT_BYTES`] plaintext.
pub const MAX_ENCODED_BYTES: usize =
    VERSION.len() + 1 + 16 + 1 + base64_len(NONCE_BYTES + MAX_PLAINTEXT_BYTES + TAG_BYTES);

/// Characters of unpadded base64 for `n` bytes.
const fn base64_len(n: usize) -> usize {
    (4 * n).div_ceil(3)
}

/// An encrypted secret, as stored in an event or a read model.
///
/// Its text form (`encode`, `parse`, and serde as a JSON string) is `ghs1:<key id>:<data>`: the format version,
/// the [`KeyId`] of the key that encrypted it (16 lower-case hex digits), and the 12-byte nonce, the ciphertext
/// and the 16-byte tag, concatenated and written as base64url without padding. `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext {
    pub(crate) key_id: KeyId,
    pub(crate) nonce: [u8; NONCE_BYTES],
    pub(crate) body: Vec<u8>,
    pub(crate) tag: [u8; TAG_BYTES],
}

/// Why a string is not a ciphertext. Never contains the string (it could be a plaintext pasted by mistake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The empty string.
    #[error("empty ciphertext")]
    Empty,
    /// Longer than any ciphertext can be ([`MAX_ENCODED_BYTES`]).
    #[error("ciphertext is {len} bytes, longer than the {max} of the longest secret")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Does not start with `ghs1:` (another format, or another version of this one).
    #[error("not a ghs1 ciphertext: it must start with `ghs1:`")]
    Version,
    /// No `:` after the key id.
    #[error("ghs1 ciphertext without its key id (expected `ghs1:<key id>:<data>`)")]
    MissingKeyId,
    /// A key id that is not exactly 16 lower-case hex digits.
    #[error("ghs1 ciphertext key id is not 16 lower-case hex digits")]
    BadKeyId,
    /// Data that is not canonical base64url without padding.
    #[error("ghs1 ciphertext data is not unpadded base64url")]
    BadBase64,
    /// Data too short to hold a nonce and a tag.
    #[error("ghs1 ciphertext data is {len} bytes, shorter than its nonce and tag ({min})")]
    TooShort {
        /// Bytes of data.
        len: usize,
        /// Nonce and tag.
        min: usize,
    },
}

impl Ciphertext {
    /// Parses the text form, strictly: nothing but exactly what [`encode`](Ciphertext::encode) writes.
    pub fn parse(s: &str) -> Result<Ciphertext, FormatError> {
        if s.is_empty() {
            return Err(FormatError::Empty);
        }
        if s.len() > MAX_ENCODED_BYTES {
            return Err(FormatError::TooLong { len: s.len(), max: MAX_ENCODED_BYTES });
        }
        let rest = s.strip_prefix(VERSION).and_then(|r| r.strip_prefix(':')).ok_or(FormatError::Version)?;
        let (key_id, data) = rest.split_once(':').ok_or(FormatError::MissingKeyId)?;
        let key_id = KeyId::from_str(key_id)?;
        let data = URL_SAFE_NO_PAD.decode(data).map_err(|_| FormatError::BadBase64)?;
        let min = NONCE_BYTES + TAG_BYTES;
        if data.len() < min {
            return Err(FormatError::TooShort { len: data.len(), min });
        }
        let (nonce, rest) = data.split_at(NONCE_BYTES);
        let (body, tag) = rest.split_at(rest.len() - TAG_BYTES);
        Ok(Ciphertext {
            key_id,
            nonce: nonce.try_into().map_err(|_| FormatError::TooShort { len: data.len(), min })?,
            body: body.to_vec(),
            tag: tag.try_into().map_err(|_| FormatError::TooShort { len: data.len(), min })?,
        })
    }

    /// The text form, `ghs1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`.
    pub fn encode(&self) -> String {
        let mut data = Vec::with_capacity(NONCE_BYTES + self.body.len() + TAG_BYTES);
        data.extend_from_slice(&self.nonce);
        data.extend_from_slice(&self.body);
        data.extend_from_slice(&self.tag);
        format!("{VERSION}:{}:{}", self.key_id, URL_SAFE_NO_PAD.encode(data))
    }

    /// The id of the key that encrypted it.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }
}

impl FromStr for Ciphertext {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Ciphertext, FormatError> {
        Ciphertext::parse(s)
    }
}

impl fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ciphertext(key {})", self.key_id)
    }
}

impl serde::Serialize for Ciphertext {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.encode())
    }
}

impl<'de> serde::Deserialize<'de> for Ciphertext {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Ciphertext, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Ciphertext;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a ghs1 ciphertext string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Ciphertext, E> {
                Ciphertext::parse(s).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

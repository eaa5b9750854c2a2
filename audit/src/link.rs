use std::fmt;
use std::str::FromStr;

use crate::hex::{self, HexError};

/// A link of the hash chain: 32 bytes, written as 64 lower-case hex digits.
///
/// `link_0` is [`GENESIS`] (32 zero bytes); `link_N = SHA-256(link_{N-1} ‖ canonical(event_N))`,
/// see [`next_link`](crate::next_link).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Link(pub [u8; 32]);

/// The link before the first event (`link_0`): 32 zero bytes.
pub const GENESIS: Link = Link([0u8; 32]);

impl Link {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// Parses exactly 64 lower-case hex digits.
    pub fn from_hex(s: &str) -> Result<Link, HexError> {
        hex::decode(s).map(Link)
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex::fmt(&self.0, f)
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Link(")?;
        hex::fmt(&self.0, f)?;
        f.write_str(")")
    }
}

impl FromStr for Link {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Link, HexError> {
        Link::from_hex(s)
    }
}

/// Identifies a signing key: the first 8 bytes of SHA-256(public key bytes), written as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// 16 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// Parses exactly 16 lower-case hex digits.
    pub fn from_hex(s: &str) -> Result<KeyId, HexError> {
        hex::decode(s).map(KeyId)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex::fmt(&self.0, f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyId(")?;
        hex::fmt(&self.0, f)?;
        f.write_str(")")
    }
}

impl FromStr for KeyId {
    type Err = HexError;
    fn from_str(s: &str) -> Result<KeyId, HexError> {
        KeyId::from_hex(s)
    }
}

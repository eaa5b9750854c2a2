//! Secrets at rest for Gatehouse (the organisation's admin API token, AI provider keys): AES-256-GCM-SIV under
//! a key ring from configuration (ADR 0016; the format is described in this crate's README.md).
//!
//! - [`KeyRing`]: the keys, from a list ([`KeyRing::parse`], for `GATEHOUSE_SECRETS_KEYS`) or a key file
//!   ([`KeyRing::load`]). The first key encrypts, every key decrypts; [`KeyRing::rewrap`] moves a secret to the
//!   first key and [`KeyRing::check_in_use`] tells which stored secrets have lost their key.
//! - [`KeyId`]: names a key without revealing it (a truncated SHA-256 over a label and the key).
//! - [`Ciphertext`]: `ghs1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`, parsed strictly.
//! - [`Binding`]: where a secret belongs (organisation, aggregate, field), authenticated as associated data, so
//!   a ciphertext moved elsewhere does not decrypt.
//! - [`Secret`]: a plaintext that prints as `[redacted]`, is never serialised and is wiped when dropped.
//!
//! No database, network or async runtime; the only I/O is reading a key file.
//!
//! ```
//! use secrets::{generate_key, Binding, Ciphertext, KeyRing, Secret};
//!
//! let old = generate_key()?;
//! let ring = KeyRing::parse(old.expose())?;
//! let admin_token = Binding::new("acme", "roster", "org", "admin_token");
//! let stored = ring.encrypt(&Secret::from("qov_t0k3n_0123456789"), &admin_token)?.encode();
//! assert!(stored.starts_with(&format!("ghs1:{}:", ring.primary_key_id())));
//!
//! // Rotation: a new key first, the old one after it until every secret is rewrapped.
//! let new = generate_key()?;
//! let ring = KeyRing::parse(&format!("{},{}", new.expose(), old.expose()))?;
//! let ciphertext = Ciphertext::parse(&stored)?;
//! let moved = ring.rewrap(&ciphertext, &admin_token)?.expect("under the old key");
//! assert_eq!(moved.key_id(), ring.primary_key_id());
//! assert_eq!(ring.rewrap(&moved, &admin_token)?, None);
//! assert_eq!(ring.decrypt(&moved, &admin_token)?.expose(), "qov_t0k3n_0123456789");
//!
//! // Elsewhere, it does not decrypt.
//! let other_field = Binding::new("acme", "roster", "org", "anthropic_api_key");
//! assert!(ring.decrypt(&moved, &other_field).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod binding;
mod ciphertext;
mod keys;
mod ring;
mod secret;

pub use binding::Binding;
pub use ciphertext::{
    Ciphertext, FormatError, MAX_ENCODED_BYTES, MAX_PLAINTEXT_BYTES, NONCE_BYTES, TAG_BYTES, VERSION,
};
pub use keys::{generate_key, KeyAt, KeyError, KeyId, KEY_BYTES, MAX_KEY_FILE_BYTES};
pub use ring::{CryptoError, KeyRing, MissingKeys};
pub use secret::{last_four, Secret};

//! The key ring: encrypts under its first key, decrypts under any, and moves secrets to the first key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aes_gcm_siv::aead::{AeadInOut, Generate, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use zeroize::{Zeroize, Zeroizing};

use crate::ciphertext::{MAX_PLAINTEXT_BYTES, NONCE_BYTES};
use crate::keys::{parse_keys, read_key_file, KeyAt, KEY_BYTES};
use crate::{Binding, Ciphertext, KeyError, KeyId, Secret};

/// The keys secrets are encrypted under, from configuration: the first (the primary) encrypts, every key
/// decrypts. Rotating: put a new key first and keep the old ones after it until [`rewrap`](KeyRing::rewrap)
/// has moved every secret to the new key.
///
/// `Debug` shows the key ids only; the keys' AES key schedules are wiped when the ring is dropped.
#[derive(Clone)]
pub struct KeyRing {
    /// Never empty; `keys[0]` is the primary.
    keys: Vec<RingKey>,
}

#[derive(Clone)]
struct RingKey {
    id: KeyId,
    cipher: Aes256GcmSiv,
}

/// Why a secret could not be encrypted or decrypted. Never contains a plaintext, a ciphertext or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The ciphertext names a key the ring does not hold (removed too early, or never configured here).
    #[error("secret is encrypted under key {0}, which the secrets key ring does not hold")]
    UnknownKey(KeyId),
    /// The ciphertext does not authenticate: it was altered, or it belongs to another [`Binding`] (copied into
    /// another field, aggregate or organisation).
    #[error("secret does not decrypt under key {0}: altered, or encrypted for another place")]
    Decrypt(KeyId),
    /// A plaintext longer than [`MAX_PLAINTEXT_BYTES`].
    #[error("secret is {len} bytes, longer than the {max} allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// It decrypted, to bytes that are not UTF-8 (not written by this crate, whose secrets are text).
    #[error("secret under key {0} decrypts to bytes that are not text")]
    NotText(KeyId),
    /// The operating system's random number generator failed.
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

/// Secrets whose keys are missing from the ring, grouped by key (see [`KeyRing::check_in_use`]). Its `Display`
/// is one line, fit for refusing to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MissingKeys {
    /// Each missing key id, with the bindings of the secrets encrypted under it (in the order given).
    pub keys: BTreeMap<KeyId, Vec<Binding>>,
}

/// How many bindings the one-line message names per key.
const NAMED_PER_KEY: usize = 3;

impl fmt::Display for MissingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secrets: usize = self.keys.values().map(Vec::len).sum();
        write!(f, "{secrets} stored secret(s) are encrypted under key(s) missing from the secrets key ring:")?;
        for (n, (key_id, bindings)) in self.keys.iter().enumerate() {
            f.write_str(if n == 0 { " " } else { "; " })?;
            write!(f, "key {key_id} for ")?;
            for (i, binding) in bindings.iter().take(NAMED_PER_KEY).enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{binding}")?;
            }
            if bindings.len() > NAMED_PER_KEY {
                write!(f, " and {} more", bindings.len() - NAMED_PER_KEY)?;
            }
        }
        f.write_str(" (add those keys after the primary key, or enter those secrets again)")
    }
}

impl KeyRing {
    /// From a list of base64 keys (standard alphabet, padded: 44 characters for 32 bytes), separated by commas or
    /// line breaks, as `GATEHOUSE_SECRETS_KEYS` holds them. Whitespace around keys, empty items and lines starting
    /// with `#` are ignored. The first key encrypts.
    pub fn parse(keys: &str) -> Result<KeyRing, KeyError> {
        KeyRing::build(parse_keys(keys, false)?.iter().map(|(at, key)| (*at, &**key)))
    }

    /// From a key file: one base64 key per line (the list format of [`parse`](KeyRing::parse)), `#` comments,
    /// at most [`MAX_KEY_FILE_BYTES`](crate::MAX_KEY_FILE_BYTES). Errors name the key's line.
    ///
    /// On unix, refuses a file that users other than the owner and the group can access (mode `& 0o007`), with
    /// [`KeyError::InsecurePermissions`], as audit keys do: group access is allowed so that a secret mounted for
    /// a service's group (e.g. mode 0440) works.
    pub fn load(path: impl AsRef<Path>) -> Result<KeyRing, KeyError> {
        let path = path.as_ref();
        let text = read_key_file(path)?;
        parse_keys(&text, true)
            .and_then(|keys| KeyRing::build(keys.iter().map(|(at, key)| (*at, &**key))))
            .map_err(|e| KeyError::InFile { path: path.to_path_buf(), source: Box::new(e) })
    }

    /// [`load`](KeyRing::load), or, when `path` does not exist, first creates it with one new random key (mode
    /// 0600 on unix, written beside it and hard-linked into place, so it appears complete or not at all; a
    /// concurrent creator's file wins and is loaded). The embedded default: a fresh machine gets a ring without
    /// configuration. Every process of a deployment must share the file.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<KeyRing, KeyError> {
        let path = path.as_ref();
        match std::fs::symlink_metadata(path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = crate::generate_key()?;
                let contents = Zeroizing::new(format!(
                    "# Gatehouse secrets key ring: one base64 key per line, the first encrypts, all decrypt.\n\
                     # Back it up with the database: secrets encrypted under a lost key are lost.\n{}\n",
                    key.expose()
                ));
                match crate::keys::write_new_private_file(path, contents.as_bytes()) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(source) => return Err(KeyError::Io { path: path.to_path_buf(), source }),
                }
                KeyRing::load(path)
            }
            _ => KeyRing::load(path),
        }
    }

    /// From raw 32-byte keys, the first encrypting.
    pub fn from_keys(keys: &[[u8; KEY_BYTES]]) -> Result<KeyRing, KeyError> {
        KeyRing::build(keys.iter().enumerate().map(|(i, key)| (KeyAt { index: i + 1, line: None }, key)))
    }

    fn build<'k>(keys: impl Iterator<Item = (KeyAt, &'k [u8; KEY_BYTES])>) -> Result<KeyRing, KeyError> {
        // Sized up front (the iterators given are exact), so key schedules are not copied by growth.
        let mut ring: Vec<RingKey> = Vec::with_capacity(keys.size_hint().0);
        for (at, key) in keys {
            let id = KeyId::of(key);
            if let Some(same_as) = ring.iter().position(|k| k.id == id) {
                return Err(KeyError::Duplicate { at, same_as: same_as + 1, key_id: id });
            }
            ring.push(RingKey { id, cipher: Aes256GcmSiv::new(key.into()) });
        }
        if ring.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(KeyRing { keys: ring })
    }

    fn primary(&self) -> &RingKey {
        // `build` never makes an empty ring.
        &self.keys[0]
    }

    fn key(&self, id: KeyId) -> Result<&RingKey, CryptoError> {
        self.keys.iter().find(|k| k.id == id).ok_or(CryptoError::UnknownKey(id))
    }

    /// The id of the key that encrypts.
    pub fn primary_key_id(&self) -> KeyId {
        self.primary().id
    }

    /// The ids of all keys, the primary first.
    pub fn key_ids(&self) -> impl ExactSizeIterator<Item = KeyId> + '_ {
        self.keys.iter().map(|k| k.id)
    }

    /// The id of the key `ciphertext` was encrypted under, when the ring holds that key
    /// ([`CryptoError::UnknownKey`] otherwise).
    pub fn key_id_of(&self, ciphertext: &Ciphertext) -> Result<KeyId, CryptoError> {
        self.key(ciphertext.key_id).map(|k| k.id)
    }

    /// Encrypts `secret` for `binding` under the primary key, with a fresh random nonce: encrypting the same
    /// secret twice gives two different ciphertexts.
    pub fn encrypt(&self, secret: &Secret, binding: &Binding) -> Result<Ciphertext, CryptoError> {
        let nonce = Nonce::try_generate().map_err(|e| CryptoError::Random(e.to_string()))?;
        self.encrypt_with_nonce(secret, binding, nonce.into())
    }

    pub(crate) fn encrypt_with_nonce(
        &self,
        secret: &Secret,
        binding: &Binding,
        nonce: [u8; NONCE_BYTES],
    ) -> Result<Ciphertext, CryptoError> {
        let too_long = CryptoError::TooLong { len: secret.len(), max: MAX_PLAINTEXT_BYTES };
        if secret.len() > MAX_PLAINTEXT_BYTES {
            return Err(too_long);
        }
        let key = self.primary();
        let mut body = secret.expose().as_bytes().to_vec();
        match key.cipher.encrypt_inout_detached(&nonce.into(), &binding.associated_data(), body.as_mut_slice().into()) {
            Ok(tag) => Ok(Ciphertext { key_id: key.id, nonce, body, tag: tag.into() }),
            Err(_) => {
                // Only for plaintexts beyond RFC 8452's limits, which the check above excludes; the buffer may
                // still hold the plaintext.
                body.zeroize();
                Err(too_long)
            }
        }
    }

    /// Decrypts `ciphertext`, which must have been encrypted for `binding`.
    pub fn decrypt(&self, ciphertext: &Ciphertext, binding: &Binding) -> Result<Secret, CryptoError> {
        let key = self.key(ciphertext.key_id)?;
        let mut plain = Zeroizing::new(ciphertext.body.clone());
        let tag = Tag::from(ciphertext.tag);
        key.cipher
            .decrypt_inout_detached(
                &Nonce::from(ciphertext.nonce),
                &binding.associated_data(),
                plain.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| CryptoError::Decrypt(key.id))?;
        match String::from_utf8(std::mem::take(&mut *plain)) {
            Ok(text) => Ok(Secret::new(text)),
            Err(e) => {
                drop(Zeroizing::new(e.into_bytes()));
                Err(CryptoError::NotText(key.id))
            }
        }
    }

    /// Moves a secret to the primary key: decrypts it and encrypts it again under the primary key, or `None`
    /// when it already is under the primary key (so running a rotation twice changes nothing the second time;
    /// such a ciphertext is not checked). The caller stores the new ciphertext in place of the old one.
    pub fn rewrap(&self, ciphertext: &Ciphertext, binding: &Binding) -> Result<Option<Ciphertext>, CryptoError> {
        if ciphertext.key_id == self.primary_key_id() {
            return Ok(None);
        }
        let secret = self.decrypt(ciphertext, binding)?;
        self.encrypt(&secret, binding).map(Some)
    }

    /// Checks that the ring holds the key of every secret in use (each given by its binding and its key id):
    /// `Err` names every missing key with the secrets that need it, so a server can refuse to start with one
    /// line rather than fail at the first use of each.
    pub fn check_in_use(&self, in_use: impl IntoIterator<Item = (Binding, KeyId)>) -> Result<(), MissingKeys> {
        let mut missing: BTreeMap<KeyId, Vec<Binding>> = BTreeMap::new();
        for (binding, key_id) in in_use {
            if self.key(key_id).is_err() {
                missing.entry(key_id).or_default().push(binding);
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(MissingKeys { keys: missing })
        }
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing").field("keys", &self.keys.iter().map(|k| k.id).collect::<Vec<_>>()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key 00 01 … 1f; nonce 40 41 … 4b; binding acme:roster/org.admin_token; plaintext "qov_t0k3n_0123456789".
    /// Computed independently of this crate, with Python's `cryptography` 48 (OpenSSL's AES-GCM-SIV):
    /// `AESGCMSIV(key).encrypt(nonce, plaintext, b"ghs1" + b"".join(struct.pack(">Q", len(p)) + p for p in parts))`
    /// and `hashlib.sha256(label + key).hexdigest()[:16]`.
    const PINNED: &str = "ghs1:7ccba5f2f02f5af0:QEFCQ0RFRkdISUpL8UDEPnrihAJI3RvfBqOr-HOLRWO0PEMVtUuAAds5St4LZppS";
    /// The same with the empty plaintext.
    const PINNED_EMPTY: &str = "ghs1:7ccba5f2f02f5af0:QEFCQ0RFRkdISUpLlmoe58LyhXjrTiTa4DVSdw";

    #[test]
    fn load_or_create_makes_one_private_key_file_and_then_loads_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");
        let first = KeyRing::load_or_create(&path).expect("created");
        let again = KeyRing::load_or_create(&path).expect("loaded");
        assert_eq!(first.primary_key_id(), again.primary_key_id());
        assert_eq!(first.key_ids().len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("secrets.key")], "no temporary file is left behind");
    }

    fn pinned_ring() -> KeyRing {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        KeyRing::from_keys(&[key]).expect("ring")
    }

    fn nonce() -> [u8; NONCE_BYTES] {
        std::array::from_fn(|i| 0x40 + i as u8)
    }

    #[test]
    fn encryption_matches_an_independent_implementation() {
        let ring = pinned_ring();
        let binding = Binding::new("acme", "roster", "org", "admin_token");
        for (plaintext, pinned) in [("qov_t0k3n_0123456789", PINNED), ("", PINNED_EMPTY)] {
            let ciphertext = ring.encrypt_with_nonce(&Secret::from(plaintext), &binding, nonce()).expect("encrypts");
            assert_eq!(ciphertext.encode(), pinned);
            let parsed = Ciphertext::parse(pinned).expect("parses");
            assert_eq!(ring.decrypt(&parsed, &binding).expect("decrypts").expose(), plaintext);
        }
    }

    #[test]
    fn too_long_is_refused_before_encrypting() {
        let ring = pinned_ring();
        let binding = Binding::new("acme", "roster", "org", "admin_token");
        let secret = Secret::new("x".repeat(MAX_PLAINTEXT_BYTES + 1));
        assert_eq!(
            ring.encrypt(&secret, &binding),
            Err(CryptoError::TooLong { len: MAX_PLAINTEXT_BYTES + 1, max: MAX_PLAINTEXT_BYTES })
        );
    }
}

//! Keys from configuration: the list format, the key file, key ids and new keys.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{FormatError, Secret};

/// Bytes of an AES-256 key.
pub const KEY_BYTES: usize = 32;

/// The largest key file [`KeyRing::load`](crate::KeyRing::load) reads (about 1,400 keys with comments).
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;

/// What a key id hashes before the key: names the cipher and the format, so that a key id says nothing about
/// the key's use elsewhere (and no other system's fingerprint of the same bytes matches it).
pub(crate) const KEY_ID_LABEL: &[u8] = b"gatehouse-secrets ghs1 AES-256-GCM-SIV key id\n";

/// Names a key of the ring without revealing it: the first 8 bytes of
/// `SHA-256("gatehouse-secrets ghs1 AES-256-GCM-SIV key id\n" ‖ key)`, written as 16 lower-case hex digits.
/// Each ciphertext carries the id of the key that encrypted it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of `key`.
    pub(crate) fn of(key: &[u8; KEY_BYTES]) -> KeyId {
        let digest = Sha256::new().chain_update(KEY_ID_LABEL).chain_update(key).finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// 16 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Exactly 16 lower-case hex digits (what [`Display`](fmt::Display) writes).
impl FromStr for KeyId {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<KeyId, FormatError> {
        let mut id = [0u8; 8];
        if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(FormatError::BadKeyId);
        }
        hex::decode_to_slice(s, &mut id).map_err(|_| FormatError::BadKeyId)?;
        Ok(KeyId(id))
    }
}

/// Which key of a list an error is about: its position among the keys (1 is the primary), and its line in a
/// key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    /// 1-based position of the key in the ring.
    pub index: usize,
    /// 1-based line of the key file, for keys read from a file.
    pub line: Option<usize>,
}

impl fmt::Display for KeyAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "key {} (line {line})", self.index),
            None => write!(f, "key {}", self.index),
        }
    }
}

/// Why a key ring could not be built, loaded or a key generated. Never contains key material: a bad key is named
/// by its position and described by its length only.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key at all (an empty list, or only comments).
    #[error("no secrets key: give at least one base64-encoded 32-byte key (the first encrypts)")]
    NoKeys,
    /// A key that is not standard base64 with its padding (what `openssl rand -base64 32` prints).
    #[error("{at} is not standard base64 with padding ({chars} characters; a 32-byte key is 44)")]
    NotBase64 {
        /// Which key.
        at: KeyAt,
        /// How many characters it has.
        chars: usize,
    },
    /// A key that decodes to another length than 32 bytes.
    #[error("{at} is {len} bytes, expected 32")]
    WrongLength {
        /// Which key.
        at: KeyAt,
        /// Its decoded length.
        len: usize,
    },
    /// The same key twice: a copy-paste mistake that would hide a missing key.
    #[error("{at} is the same key as key {same_as} (key id {key_id})")]
    Duplicate {
        /// The later copy.
        at: KeyAt,
        /// Position of the earlier one.
        same_as: usize,
        /// The key's id.
        key_id: KeyId,
    },
    /// Reading the key file failed.
    #[error("secrets key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The key file can be read or written by users other than its owner and group (unix mode `& 0o007 != 0`).
    #[error("secrets key file {path} is accessible to other users (mode {mode:o}); run `chmod 600` on it")]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is larger than [`MAX_KEY_FILE_BYTES`].
    #[error("secrets key file {path} is larger than {max} bytes")]
    FileTooLarge {
        /// The key file.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// The key file is not UTF-8 text.
    #[error("secrets key file {path} is not UTF-8 text")]
    FileNotText {
        /// The key file.
        path: PathBuf,
    },
    /// A key of the key file is wrong (the inner error says which and how).
    #[error("secrets key file {path}: {source}")]
    InFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<KeyError>,
    },
    /// The operating system's random number generator failed.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// A key's bytes, wiped when dropped.
pub(crate) type RawKey = Zeroizing<[u8; KEY_BYTES]>;

/// Parses a list of base64 keys: items separated by commas or line breaks, surrounding whitespace ignored, empty
/// items and lines starting with `#` skipped. `lines`: whether errors name the line (for key files).
pub(crate) fn parse_keys(text: &str, lines: bool) -> Result<Vec<(KeyAt, RawKey)>, KeyError> {
    // Room for every item up front: a vector that grew would leave copies of keys in the memory it let go.
    let mut keys = Vec::with_capacity(text.split(['\n', ',']).count());
    for (n, line) in text.split('\n').enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        for item in line.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let at = KeyAt { index: keys.len() + 1, line: lines.then_some(n + 1) };
            keys.push((at, decode_key(item, at)?));
        }
    }
    if keys.is_empty() {
        return Err(KeyError::NoKeys);
    }
    Ok(keys)
}

fn decode_key(item: &str, at: KeyAt) -> Result<RawKey, KeyError> {
    // The decoder's own error names the offending byte: dropped, it could be part of the key.
    let bytes =
        Zeroizing::new(STANDARD.decode(item).map_err(|_| KeyError::NotBase64 { at, chars: item.chars().count() })?);
    if bytes.len() != KEY_BYTES {
        return Err(KeyError::WrongLength { at, len: bytes.len() });
    }
    let mut key = RawKey::new([0u8; KEY_BYTES]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// Reads a key file's text: at most [`MAX_KEY_FILE_BYTES`], UTF-8, refused when other users can access it.
pub(crate) fn read_key_file(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let io_err = |source| KeyError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o7777;
        if mode & 0o007 != 0 {
            return Err(KeyError::InsecurePermissions { path: path.to_path_buf(), mode });
        }
    }
    // Room for one byte more than allowed, reserved up front: the buffer never moves, so no copy of the keys
    // is left behind in freed memory, and a larger file is recognised.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_BYTES + 1));
    file.take(MAX_KEY_FILE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(io_err)?;
    if bytes.len() > MAX_KEY_FILE_BYTES {
        return Err(KeyError::FileTooLarge { path: path.to_path_buf(), max: MAX_KEY_FILE_BYTES });
    }
    let text = String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
        drop(Zeroizing::new(e.into_bytes()));
        KeyError::FileNotText { path: path.to_path_buf() }
    })?;
    Ok(Zeroizing::new(text))
}

/// Creates `path` with `contents`, readable by its owner only: a temporary file beside it, then a hard link, which
/// fails with `AlreadyExists` if `path` exists (so a concurrent creator never sees a partial file).
pub(crate) fn write_new_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let mut nonce = [0u8; 8];
    aes_gcm_siv::aead::common::getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), hex::encode(nonce)));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    linked?;
    if let Ok(dir) = File::open(&dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A new random key, as the 44 characters of standard base64 that a key list or key file holds (for
/// `gatehouse secrets generate-key`). From the operating system's generator.
pub fn generate_key() -> Result<Secret, KeyError> {
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    aes_gcm_siv::aead::common::getrandom::fill(&mut *key).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(Secret::new(STANDARD.encode(*key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    #[test]
    fn list_separators_whitespace_and_comments() {
        let (a, b, c) = (b64(&[1; 32]), b64(&[2; 32]), b64(&[3; 32]));
        let keys = parse_keys(&format!(" {a} ,{b}\r\n\n# old keys\n  {c},\n"), true).expect("keys");
        let found: Vec<_> = keys.iter().map(|(at, key)| (*at, key[0])).collect();
        assert_eq!(
            found,
            [
                (KeyAt { index: 1, line: Some(1) }, 1),
                (KeyAt { index: 2, line: Some(1) }, 2),
                (KeyAt { index: 3, line: Some(4) }, 3)
            ]
        );
        assert!(matches!(parse_keys("", false), Err(KeyError::NoKeys)));
        assert!(matches!(parse_keys(" , \n# only a comment\n", false), Err(KeyError::NoKeys)));
    }

    #[test]
    fn bad_keys_are_named_by_position_and_never_echoed() {
        let good = b64(&[1; 32]);
        let short = b64(&[0xab; 31]);
        let err = parse_keys(&format!("{good},{short}"), false).expect_err("31 bytes");
        assert_eq!(err.to_string(), "key 2 is 31 bytes, expected 32");
        let long = b64(&[0xab; 33]);
        let err = parse_keys(&format!("# keys\n{good}\n\n{long}"), true).expect_err("33 bytes");
        assert_eq!(err.to_string(), "key 2 (line 4) is 33 bytes, expected 32");

        for bad in [
            good.trim_end_matches('=').to_owned(),    // padding required
            good.replace('A', "-").replace("Q", "_"), // url-safe alphabet
            format!("{}!", &good[..43]),              // not base64 at all
            format!("{}B=", &good[..42]),             // non-canonical trailing bits
        ] {
            let err = parse_keys(&bad, false).expect_err(&bad);
            assert!(matches!(err, KeyError::NotBase64 { at: KeyAt { index: 1, line: None }, .. }), "{bad}: {err}");
            let message = format!("{err} {err:?}");
            assert!(!message.contains(&bad[..20]), "{message}");
        }
        // 64 hex digits are base64 too, of 48 bytes.
        let hex_key = "0123456789abcdef".repeat(4);
        assert_eq!(parse_keys(&hex_key, false).expect_err("hex").to_string(), "key 1 is 48 bytes, expected 32");
    }

    #[test]
    fn key_id_hashes_label_and_key() {
        let key = [7u8; 32];
        let mut input = KEY_ID_LABEL.to_vec();
        input.extend_from_slice(&key);
        assert_eq!(KeyId::of(&key).to_hex(), hex::encode(&Sha256::digest(&input)[..8]));
        assert_ne!(KeyId::of(&key).to_hex(), hex::encode(&Sha256::digest(key)[..8]), "not a bare hash of the key");
    }

    #[test]
    fn key_id_text_is_strict() {
        let id: KeyId = "0123456789abcdef".parse().expect("id");
        assert_eq!(id.to_string(), "0123456789abcdef");
        assert_eq!(format!("{id:?}"), "KeyId(0123456789abcdef)");
        for bad in
            ["", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg", "é123456789abcde"]
        {
            assert_eq!(bad.parse::<KeyId>(), Err(FormatError::BadKeyId), "{bad}");
        }
    }

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = generate_key().expect("key");
        let b = generate_key().expect("key");
        assert_eq!(a.len(), 44);
        assert_ne!(a.expose(), b.expose());
        let keys = parse_keys(&format!("{},{}", a.expose(), b.expose()), false).expect("parses");
        assert_eq!(keys.len(), 2);
    }
}

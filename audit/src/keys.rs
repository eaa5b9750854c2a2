use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::hex::{self, HexError};
use crate::{KeyId, Link};

/// The bytes that open a checkpoint's signed message (followed by a line feed, 0x0A).
pub const CHECKPOINT_CONTEXT: &[u8] = b"gatehouse-audit/1 checkpoint";

/// A signed assertion "the chain's event `index` has link `link`" (`index` 0: the empty log, link = genesis).
#[derive(Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Chain index of the event the checkpoint covers (0 for the empty log).
    pub index: u64,
    /// The link of that event.
    pub link: Link,
    /// When it was signed, RFC 3339 UTC (as for `recorded_at`). Signed as given.
    pub signed_at: String,
    /// Which key signed it.
    pub key_id: KeyId,
    /// Ed25519 signature over [`checkpoint_message`].
    pub signature: [u8; 64],
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("index", &self.index)
            .field("link", &self.link)
            .field("signed_at", &self.signed_at)
            .field("key_id", &self.key_id)
            .field("signature", &hex::encode(&self.signature))
            .finish()
    }
}

impl Checkpoint {
    /// The signed message of this checkpoint, see [`checkpoint_message`].
    pub fn message(&self) -> Vec<u8> {
        checkpoint_message(self.index, &self.link, &self.signed_at)
    }
}

/// The bytes a checkpoint signs:
/// `"gatehouse-audit/1 checkpoint" ‖ 0x0A ‖ u64be(index) ‖ link (32 bytes) ‖ u32be(len(signed_at)) ‖ signed_at`.
pub fn checkpoint_message(index: u64, link: &Link, signed_at: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_CONTEXT.len() + 1 + 8 + 32 + 4 + signed_at.len());
    m.extend_from_slice(CHECKPOINT_CONTEXT);
    m.push(b'\n');
    m.extend_from_slice(&index.to_be_bytes());
    m.extend_from_slice(&link.0);
    // A signed_at longer than 4 GiB cannot occur in practice (export lines are capped far below that).
    m.extend_from_slice(&u32::try_from(signed_at.len()).unwrap_or(u32::MAX).to_be_bytes());
    m.extend_from_slice(signed_at.as_bytes());
    m
}

/// Why a key could not be loaded, created or parsed. Never contains secret key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("audit key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The key file can be read or written by users other than its owner and group (unix mode `& 0o007 != 0`).
    #[error("audit key file {path} is accessible to other users (mode {mode:o}); run `chmod 600` on it")]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret seed that is not 64 lower-case hex digits (the text itself is not repeated).
    #[error("the audit signing key seed is not 64 lower-case hex digits{0}")]
    BadSeed(String),
    /// A public key that is not 64 hex digits or not a valid Ed25519 point.
    #[error("invalid audit public key: {0}")]
    BadPublicKey(String),
    /// The operating system's random number generator failed.
    #[error("no randomness for key generation: {0}")]
    Random(String),
}

/// Why a checkpoint does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint names another key than the one verifying.
    #[error("checkpoint signed by key {found}, expected key {expected}")]
    UnknownKey {
        /// The verifying key's id.
        expected: KeyId,
        /// The checkpoint's key_id.
        found: KeyId,
    },
    /// The signature does not verify under the key (the checkpoint was altered or forged).
    #[error("checkpoint signature does not verify")]
    BadSignature,
}

/// An Ed25519 public key that verifies checkpoints.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: KeyId,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, key_id {})", self.to_hex(), self.id)
    }
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), followed by the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

impl PublicKey {
    /// From the 32 raw key bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
        Ok(PublicKey { id: key_id_of(bytes), key })
    }

    /// From 64 lower-case hex digits (surrounding whitespace ignored).
    pub fn from_hex(s: &str) -> Result<PublicKey, KeyError> {
        let bytes: [u8; 32] = hex::decode(s.trim()).map_err(|e: HexError| KeyError::BadPublicKey(e.to_string()))?;
        PublicKey::from_bytes(&bytes)
    }

    /// The 32 raw key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// The key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), for `openssl pkeyutl -verify -pubin`.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.key.as_bytes());
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", base64(&der))
    }

    /// First 8 bytes of SHA-256(public key bytes).
    pub fn key_id(&self) -> KeyId {
        self.id
    }

    /// Checks that `checkpoint` names this key and that its signature verifies (strict Ed25519 verification:
    /// non-canonical signatures are refused).
    pub fn verify_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        if checkpoint.key_id != self.id {
            return Err(CheckpointError::UnknownKey { expected: self.id, found: checkpoint.key_id });
        }
        let signature = Signature::from_bytes(&checkpoint.signature);
        self.key.verify_strict(&checkpoint.message(), &signature).map_err(|_| CheckpointError::BadSignature)
    }
}

fn key_id_of(public: &[u8; 32]) -> KeyId {
    let digest = Sha256::digest(public);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    KeyId(id)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The audit signing key (Ed25519). Its `Debug` shows the key id only; the secret is zeroed on drop.
pub struct AuditKey {
    signing: SigningKey,
    public: PublicKey,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditKey(key_id {})", self.public.id)
    }
}

impl AuditKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<AuditKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = AuditKey::from_seed(&seed);
        seed.fill(0);
        Ok(key)
    }

    /// From the 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> AuditKey {
        let signing = SigningKey::from_bytes(seed);
        let public_bytes = signing.verifying_key().to_bytes();
        let public = PublicKey { key: signing.verifying_key(), id: key_id_of(&public_bytes) };
        AuditKey { signing, public }
    }

    /// From the secret seed as 64 lower-case hex digits (surrounding whitespace ignored).
    pub fn from_seed_hex(s: &str) -> Result<AuditKey, KeyError> {
        let s = s.trim();
        let mut seed: [u8; 32] =
            hex::decode(s).map_err(|_| KeyError::BadSeed(format!(" (found {} characters)", s.chars().count())))?;
        let key = AuditKey::from_seed(&seed);
        seed.fill(0);
        Ok(key)
    }

    /// The secret seed as 64 hex digits: what a key file holds. Handle with care.
    pub fn seed_hex(&self) -> String {
        hex::encode(self.signing.as_bytes())
    }

    /// Loads a key file: 64 lower-case hex digits of the secret seed, optionally followed by a newline.
    ///
    /// On unix, refuses a file that users other than the owner and the group can access (mode `& 0o007`),
    /// with [`KeyError::InsecurePermissions`]. Group access is allowed so that a secret mounted for a
    /// service's group (e.g. mode 0440) works.
    pub fn load(path: impl AsRef<Path>) -> Result<AuditKey, KeyError> {
        let path = path.as_ref();
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
        let mut text = String::new();
        file.take(1024).read_to_string(&mut text).map_err(io_err)?;
        let key = AuditKey::from_seed_hex(&text);
        // Best effort: do not leave the seed in freed memory.
        text.replace_range(.., &"0".repeat(text.len()));
        key
    }

    /// Writes a new random key to `path`, which must not exist: the file is created with mode 0600 (unix)
    /// and appears complete or not at all (written aside, then hard-linked into place).
    /// Fails with an `AlreadyExists` I/O error when the file exists.
    pub fn create(path: impl AsRef<Path>) -> Result<AuditKey, KeyError> {
        let path = path.as_ref();
        let key = AuditKey::generate()?;
        let mut contents = key.seed_hex();
        contents.push('\n');
        let result = write_new_private_file(path, contents.as_bytes());
        contents.replace_range(.., &"0".repeat(contents.len()));
        result.map_err(|source| KeyError::Io { path: path.to_path_buf(), source })?;
        Ok(key)
    }

    /// Loads the key file at `path`, or creates it with a new random key if it does not exist
    /// (see [`load`](AuditKey::load) and [`create`](AuditKey::create)). Safe against a concurrent creator:
    /// whoever creates first wins and the other loads that key.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<AuditKey, KeyError> {
        let path = path.as_ref();
        match AuditKey::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                match AuditKey::create(path) {
                    Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                        AuditKey::load(path)
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public key as 64 hex digits (what verifiers are given).
    pub fn public_key_hex(&self) -> String {
        self.public.to_hex()
    }

    /// First 8 bytes of SHA-256(public key bytes).
    pub fn key_id(&self) -> KeyId {
        self.public.id
    }

    /// Signs "the chain's event `index` has link `link`" at time `signed_at` (RFC 3339 UTC, e.g.
    /// `2026-11-29T02:20:17.145000Z`).
    pub fn sign_checkpoint(&self, index: u64, link: &Link, signed_at: &str) -> Checkpoint {
        let signature = self.signing.sign(&checkpoint_message(index, link, signed_at));
        Checkpoint {
            index,
            link: *link,
            signed_at: signed_at.to_owned(),
            key_id: self.public.id,
            signature: signature.to_bytes(),
        }
    }
}

fn open_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Creates `path` with `contents`, atomically: a temporary file beside it, then a hard link (which fails if
/// `path` exists). Where hard links are not supported, falls back to creating `path` directly.
fn write_new_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut nonce = [0u8; 8];
    getrandom::getrandom(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), hex::encode(&nonce)));
    let written = open_private(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
        Err(_) => {
            let mut f = open_private(path)?;
            f.write_all(contents)?;
            f.sync_all()?;
        }
    }
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    #[test]
    fn rfc8032_test_vector_1() {
        let key = AuditKey::from_seed_hex(SEED).expect("seed");
        assert_eq!(key.public_key_hex(), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let sig = key.signing.sign(b"");
        assert_eq!(
            hex::encode(&sig.to_bytes()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn sign_and_verify_checkpoint() {
        let key = AuditKey::from_seed_hex(SEED).expect("seed");
        let link = Link([7; 32]);
        let cp = key.sign_checkpoint(42, &link, "2026-11-29T02:20:17.145000Z");
        assert_eq!(cp.key_id, key.key_id());
        key.public_key().verify_checkpoint(&cp).expect("verifies");
        for altered in [
            Checkpoint { index: 43, ..cp.clone() },
            Checkpoint { link: Link([8; 32]), ..cp.clone() },
            Checkpoint { signed_at: "2026-11-29T02:20:17.145001Z".into(), ..cp.clone() },
            Checkpoint {
                signature: {
                    let mut s = cp.signature;
                    s[0] ^= 1;
                    s
                },
                ..cp.clone()
            },
            Checkpoint {
                signature: {
                    let mut s = cp.signature;
                    s[63] ^= 0x10;
                    s
                },
                ..cp.clone()
            },
        ] {
            assert_eq!(key.public_key().verify_checkpoint(&altered), Err(CheckpointError::BadSignature));
        }
    }

    #[test]
    fn wrong_key_is_refused() {
        let key = AuditKey::from_seed_hex(SEED).expect("seed");
        let other = AuditKey::generate().expect("random key");
        let cp = key.sign_checkpoint(1, &Link([1; 32]), "2026-01-01T00:00:00.000000Z");
        assert!(matches!(
            other.public_key().verify_checkpoint(&cp),
            Err(CheckpointError::UnknownKey { expected, found }) if expected == other.key_id() && found == key.key_id()
        ));
        // Even when the checkpoint lies about its key id, the other key's signature check fails.
        let lying = Checkpoint { key_id: other.key_id(), ..cp };
        assert_eq!(other.public_key().verify_checkpoint(&lying), Err(CheckpointError::BadSignature));
    }

    #[test]
    fn key_id_and_pem() {
        let key = AuditKey::from_seed_hex(SEED).expect("seed");
        let digest = Sha256::digest(key.public_key().to_bytes());
        assert_eq!(key.key_id().to_hex(), hex::encode(&digest[..8]));
        assert_eq!(
            key.public_key().to_pem(),
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n"
        );
        let again = PublicKey::from_hex(&key.public_key_hex()).expect("hex");
        assert_eq!(&again, key.public_key());
        assert!(PublicKey::from_hex("00").is_err());
    }

    #[test]
    fn bad_seed_error_does_not_echo_the_secret() {
        let text = format!("{}X", &SEED[..63]);
        let err = AuditKey::from_seed_hex(&text).expect_err("bad seed");
        assert!(!err.to_string().contains(&SEED[..20]), "{err}");
    }

    #[test]
    fn key_file_create_load_and_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.key");
        let created = AuditKey::load_or_create(&path).expect("create");
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        let loaded = AuditKey::load_or_create(&path).expect("load");
        assert_eq!(loaded.public_key_hex(), created.public_key_hex());
        assert!(
            matches!(AuditKey::create(&path), Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists)
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
            AuditKey::load(&path).expect("group-readable is accepted");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(AuditKey::load(&path), Err(KeyError::InsecurePermissions { mode: 0o644, .. })));
        }
        fs::write(dir.path().join("bad.key"), "nothex\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path().join("bad.key"), fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        assert!(matches!(AuditKey::load(dir.path().join("bad.key")), Err(KeyError::BadSeed(_))));
    }
}

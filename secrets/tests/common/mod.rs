#![allow(dead_code)]

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use secrets::{Binding, Ciphertext, KeyRing};

/// A key whose every byte is `n`.
pub fn key(n: u8) -> [u8; 32] {
    [n; 32]
}

/// The key as a key list holds it.
pub fn key_text(n: u8) -> String {
    STANDARD.encode(key(n))
}

pub fn ring(keys: &[u8]) -> KeyRing {
    KeyRing::from_keys(&keys.iter().map(|n| key(*n)).collect::<Vec<_>>()).expect("ring")
}

pub fn admin_token() -> Binding {
    Binding::new("acme", "roster", "org", "admin_token")
}

/// The decoded data of a ciphertext: nonce ‖ ciphertext ‖ tag.
pub fn data(c: &Ciphertext) -> Vec<u8> {
    let encoded = c.encode();
    let data = encoded.rsplit(':').next().expect("data");
    URL_SAFE_NO_PAD.decode(data).expect("base64url")
}

/// `c` with other data under the same key id.
pub fn with_data(c: &Ciphertext, data: &[u8]) -> Ciphertext {
    Ciphertext::parse(&format!("ghs1:{}:{}", c.key_id(), URL_SAFE_NO_PAD.encode(data))).expect("still well-formed")
}

/// xorshift64*, for reproducible random inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// A random string of about `bytes` bytes of UTF-8 (ASCII, two-, three- and four-byte characters).
    pub fn text(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes + 4);
        while s.len() < bytes {
            let c = match self.below(4) {
                0 => char::from_u32(self.below(0x80) as u32),
                1 => char::from_u32(0x80 + self.below(0x780) as u32),
                2 => char::from_u32(0x800 + self.below(0xd000) as u32),
                _ => char::from_u32(0x10000 + self.below(0x100000) as u32),
            };
            s.push(c.unwrap_or('?'));
        }
        s
    }
}

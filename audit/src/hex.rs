//! Strict lower-case hexadecimal, fixed sizes: every hex field of the format is written in lower case,
//! and the verifier accepts nothing else, so that no byte of a hex field can change unnoticed.

use std::fmt;

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// A hex string that is not exactly `2 * N` lower-case hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} lower-case hexadecimal digits, found {found:?}")]
pub struct HexError {
    /// Number of digits expected.
    pub expected: usize,
    /// The offending text, shortened to 140 characters.
    pub found: String,
}

pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

pub(crate) fn fmt(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut buf = [0u8; 2];
    for b in bytes {
        buf[0] = DIGITS[usize::from(b >> 4)];
        buf[1] = DIGITS[usize::from(b & 15)];
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)?;
    }
    Ok(())
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

pub(crate) fn decode<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let err = || HexError { expected: 2 * N, found: s.chars().take(140).collect() };
    let bytes = s.as_bytes();
    if bytes.len() != 2 * N {
        return Err(err());
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
            return Err(err());
        };
        *o = (hi << 4) | lo;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        assert_eq!(encode(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(decode::<3>("00abff"), Ok([0x00, 0xab, 0xff]));
        assert!(decode::<3>("00ABff").is_err(), "upper case is refused");
        assert!(decode::<3>("00abf").is_err());
        assert!(decode::<3>("00abfff0").is_err());
        assert!(decode::<1>("g0").is_err());
        assert!(decode::<1>("é").is_err());
    }
}

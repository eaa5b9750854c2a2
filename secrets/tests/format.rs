//! The text form is parsed strictly: every malformed string is a typed error, never a panic, and no error repeats
//! the string it refused.

mod common;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::{admin_token, ring, Rng};
use secrets::{Ciphertext, FormatError, Secret, MAX_ENCODED_BYTES, MAX_PLAINTEXT_BYTES};

fn valid() -> Ciphertext {
    ring(&[1]).encrypt(&Secret::from("qov_t0k3n_0123456789"), &admin_token()).expect("encrypts")
}

fn parse(s: &str) -> Result<Ciphertext, FormatError> {
    let result = Ciphertext::parse(s);
    if let Err(err) = &result {
        // A refused string is never repeated (it could be a plaintext pasted in the wrong place).
        let message = format!("{err} {err:?}");
        for part in s.split(':').filter(|p| p.len() >= 8) {
            assert!(!message.contains(part), "{message} repeats {part}");
        }
    }
    result
}

#[test]
fn malformed_strings_are_typed_errors() {
    let good = valid().encode();
    let (_, rest) = good.split_once(':').expect("version");
    let (id, data) = rest.split_once(':').expect("key id");
    let too_short = URL_SAFE_NO_PAD.encode([7u8; 27]);
    let cases: Vec<(String, FormatError)> = vec![
        (String::new(), FormatError::Empty),
        ("ghs1".into(), FormatError::Version),
        ("ghs2:".to_string() + rest, FormatError::Version),
        ("GHS1:".to_string() + rest, FormatError::Version),
        (" ".to_string() + &good, FormatError::Version),
        ("ghs1".to_string() + rest, FormatError::Version),
        ("\0ghs1:".to_string() + rest, FormatError::Version),
        ("qov_t0k3n_0123456789".into(), FormatError::Version),
        ("ghs1:".into(), FormatError::MissingKeyId),
        (format!("ghs1:{id}"), FormatError::MissingKeyId),
        (format!("ghs1:{data}"), FormatError::MissingKeyId),
        (format!("ghs1::{data}"), FormatError::BadKeyId),
        (format!("ghs1:{}:{data}", id.to_uppercase()), FormatError::BadKeyId),
        (format!("ghs1:{}:{data}", &id[..15]), FormatError::BadKeyId),
        (format!("ghs1:{id}0:{data}"), FormatError::BadKeyId),
        (format!("ghs1:{}g:{data}", &id[..15]), FormatError::BadKeyId),
        (format!("ghs1:{}\0:{data}", &id[..15]), FormatError::BadKeyId),
        (format!("ghs1:{id}:"), FormatError::TooShort { len: 0, min: 28 }),
        (format!("ghs1:{id}:{too_short}"), FormatError::TooShort { len: 27, min: 28 }),
        (format!("ghs1:{id}:{data}="), FormatError::BadBase64),
        (format!("ghs1:{id}:{data}\n"), FormatError::BadBase64),
        (format!("ghs1:{id}:{data} "), FormatError::BadBase64),
        (format!("ghs1:{id}:{data}\0"), FormatError::BadBase64),
        (format!("ghs1:{id}:\0{data}"), FormatError::BadBase64),
        (format!("ghs1:{id}:{data}:{data}"), FormatError::BadBase64),
        (format!("ghs1:{id}:{}", STANDARD.encode([0xfbu8; 48])), FormatError::BadBase64),
        // One character past a 4-character group is never base64.
        (format!("ghs1:{id}:{data}A"), FormatError::BadBase64),
    ];
    for (input, expected) in &cases {
        assert_eq!(parse(input).map(|_| ()), Err(*expected), "{input:?}");
    }
    assert!(parse(&good).is_ok());
}

#[test]
fn non_canonical_base64_is_refused() {
    // 48 bytes are 64 characters exactly; one byte more leaves 2 characters whose last 4 bits must be zero.
    let good = valid();
    let mut data = common::data(&good);
    data.push(0);
    let encoded = URL_SAFE_NO_PAD.encode(&data);
    assert!(encoded.ends_with("AA"));
    let id = good.key_id();
    assert!(parse(&format!("ghs1:{id}:{encoded}")).is_ok());
    let non_canonical = format!("{}AB", &encoded[..encoded.len() - 2]);
    assert_eq!(parse(&format!("ghs1:{id}:{non_canonical}")).err(), Some(FormatError::BadBase64));
}

#[test]
fn length_is_bounded_before_anything_is_decoded() {
    let id = valid().key_id();
    let longest = ring(&[1]).encrypt(&Secret::new("a".repeat(MAX_PLAINTEXT_BYTES)), &admin_token()).expect("encrypts");
    assert_eq!(longest.encode().len(), MAX_ENCODED_BYTES);
    assert!(parse(&longest.encode()).is_ok());

    let one_more = format!("ghs1:{id}:{}", "A".repeat(MAX_ENCODED_BYTES - 21));
    assert_eq!(one_more.len(), MAX_ENCODED_BYTES + 1);
    assert_eq!(parse(&one_more).err(), Some(FormatError::TooLong { len: one_more.len(), max: MAX_ENCODED_BYTES }));

    // A megabyte of garbage, valid-looking or not.
    let mut rng = Rng::new(5);
    let bytes: Vec<u8> = (0..1 << 20).map(|_| rng.next_u64() as u8).collect();
    let garbage = String::from_utf8_lossy(&bytes).into_owned();
    assert!(matches!(parse(&garbage), Err(FormatError::TooLong { .. })));
    let prefixed = format!("ghs1:{id}:{}", "A".repeat(1 << 20));
    assert!(matches!(parse(&prefixed), Err(FormatError::TooLong { .. })));
}

#[test]
fn short_random_strings_never_panic() {
    let mut rng = Rng::new(9);
    let id = valid().key_id().to_string();
    let alphabet: Vec<char> = "ghs1:0123456789abcdefABCDEF-_=+/\0 \n\u{e9}".chars().collect();
    for _ in 0..20_000 {
        let len = rng.below(80);
        let mut s: String = (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        if rng.below(2) == 0 {
            s = format!("ghs1:{id}:{s}");
        }
        let _ = parse(&s);
    }
}

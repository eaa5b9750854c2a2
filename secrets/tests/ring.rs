//! The key ring's behaviour through the public API: round trips, keys, bindings, tampering and rotation.

mod common;

use common::{admin_token, data, ring, with_data, Rng};
use secrets::{Binding, Ciphertext, CryptoError, KeyId, KeyRing, Secret, MAX_PLAINTEXT_BYTES};

#[test]
fn round_trip() {
    let ring = ring(&[1]);
    let binding = admin_token();
    for plaintext in
        ["", "x", "qov_t0k3n_0123456789", "clé 🔑 with\nnewlines\0and NUL", &"a".repeat(MAX_PLAINTEXT_BYTES)]
    {
        let ciphertext = ring.encrypt(&Secret::from(plaintext), &binding).expect("encrypts");
        assert_eq!(ciphertext.key_id(), ring.primary_key_id());
        let stored = ciphertext.encode();
        let parsed = Ciphertext::parse(&stored).expect("parses what it wrote");
        assert_eq!(parsed, ciphertext);
        assert_eq!(ring.decrypt(&parsed, &binding).expect("decrypts").expose(), plaintext);
    }
}

#[test]
fn each_encryption_has_its_own_nonce() {
    let ring = ring(&[1]);
    let secret = Secret::from("qov_t0k3n_0123456789");
    let a = ring.encrypt(&secret, &admin_token()).expect("encrypts");
    let b = ring.encrypt(&secret, &admin_token()).expect("encrypts");
    assert_ne!(a.encode(), b.encode());
    assert_ne!(data(&a)[..12], data(&b)[..12], "nonces differ");
    for c in [a, b] {
        assert_eq!(ring.decrypt(&c, &admin_token()).expect("decrypts").expose(), secret.expose());
    }
}

#[test]
fn serde_is_the_text_form() {
    let ring = ring(&[1]);
    let ciphertext = ring.encrypt(&Secret::from("token"), &admin_token()).expect("encrypts");
    let json = serde_json::to_string(&ciphertext).expect("serialises");
    assert_eq!(json, format!("\"{}\"", ciphertext.encode()));
    assert_eq!(serde_json::from_str::<Ciphertext>(&json).expect("deserialises"), ciphertext);
    let err = serde_json::from_str::<Ciphertext>("\"ghs1:0123456789abcdef:not base64!\"").expect_err("bad");
    assert!(err.to_string().contains("not unpadded base64url"), "{err}");
    assert!(!err.to_string().contains("not base64!"), "{err}");
    assert!(serde_json::from_str::<Ciphertext>("42").is_err());
}

#[test]
fn key_id_is_pinned() {
    // SHA-256("gatehouse-secrets ghs1 AES-256-GCM-SIV key id\n" ‖ 00 01 … 1f), first 8 bytes: computed once (and
    // with Python's hashlib), never to change, or every stored secret would name a key no ring holds.
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let ring = KeyRing::from_keys(&[key]).expect("ring");
    assert_eq!(ring.primary_key_id().to_string(), "7ccba5f2f02f5af0");
    let text = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    assert_eq!(KeyRing::parse(text).expect("ring").primary_key_id().to_string(), "7ccba5f2f02f5af0");
    assert_eq!(common::ring(&[1]).primary_key_id(), common::ring(&[1]).primary_key_id());
    assert_ne!(common::ring(&[1]).primary_key_id(), common::ring(&[2]).primary_key_id());
}

#[test]
fn a_pinned_ciphertext_decrypts() {
    // The stored contract: written with Python's cryptography (OpenSSL AES-GCM-SIV), see src/ring.rs.
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let ring = KeyRing::from_keys(&[key]).expect("ring");
    let stored = "ghs1:7ccba5f2f02f5af0:QEFCQ0RFRkdISUpL8UDEPnrihAJI3RvfBqOr-HOLRWO0PEMVtUuAAds5St4LZppS";
    let ciphertext = Ciphertext::parse(stored).expect("parses");
    assert_eq!(ring.decrypt(&ciphertext, &admin_token()).expect("decrypts").expose(), "qov_t0k3n_0123456789");
}

#[test]
fn wrong_key() {
    let ciphertext = ring(&[1]).encrypt(&Secret::from("token"), &admin_token()).expect("encrypts");
    let other = ring(&[2]);
    assert_eq!(other.decrypt(&ciphertext, &admin_token()).err(), Some(CryptoError::UnknownKey(ciphertext.key_id())));
    // Relabelled with the other ring's key id, it names a key that did not encrypt it.
    let relabelled = Ciphertext::parse(
        &ciphertext.encode().replace(&ciphertext.key_id().to_string(), &other.primary_key_id().to_string()),
    )
    .expect("well-formed");
    assert_eq!(other.decrypt(&relabelled, &admin_token()).err(), Some(CryptoError::Decrypt(other.primary_key_id())));
}

#[test]
fn unknown_key_id_is_named() {
    let ciphertext = ring(&[1]).encrypt(&Secret::from("token"), &admin_token()).expect("encrypts");
    let err = ring(&[2, 3]).decrypt(&ciphertext, &admin_token()).expect_err("unknown key");
    assert_eq!(
        err.to_string(),
        format!("secret is encrypted under key {}, which the secrets key ring does not hold", ciphertext.key_id())
    );
    assert_eq!(ring(&[2, 3]).key_id_of(&ciphertext), Err(CryptoError::UnknownKey(ciphertext.key_id())));
    assert_eq!(ring(&[2, 1]).key_id_of(&ciphertext), Ok(ring(&[1]).primary_key_id()));
}

#[test]
fn tampering_with_any_byte_fails() {
    let ring = ring(&[1]);
    let ciphertext = ring.encrypt(&Secret::from("qov_t0k3n_0123456789"), &admin_token()).expect("encrypts");
    let original = data(&ciphertext);
    assert_eq!(original.len(), 12 + 20 + 16);
    for i in 0..original.len() {
        for bit in [0x01, 0x10, 0x80, 0xff] {
            let mut altered = original.clone();
            altered[i] ^= bit;
            let err = ring.decrypt(&with_data(&ciphertext, &altered), &admin_token()).expect_err("altered");
            assert_eq!(err, CryptoError::Decrypt(ring.primary_key_id()), "byte {i} ^ {bit:#x}");
        }
    }
    // Bytes removed or added.
    for altered in [&original[..original.len() - 1], &original[1..], &[&original[..], &[0]].concat()] {
        assert!(ring.decrypt(&with_data(&ciphertext, altered), &admin_token()).is_err());
    }
    assert_eq!(
        ring.decrypt(&with_data(&ciphertext, &original), &admin_token()).expect("intact").expose(),
        "qov_t0k3n_0123456789"
    );
}

#[test]
fn a_ciphertext_decrypts_only_where_it_belongs() {
    let ring = ring(&[1]);
    let binding = Binding::new("acme", "blueprint", "web-app", "anthropic_api_key");
    let ciphertext = ring.encrypt(&Secret::from("sk-ant-0123456789"), &binding).expect("encrypts");
    let elsewhere = [
        Binding { org: "globex".into(), ..binding.clone() },
        Binding { aggregate_type: "roster".into(), ..binding.clone() },
        Binding { aggregate_id: "api".into(), ..binding.clone() },
        Binding { field: "openai_api_key".into(), ..binding.clone() },
        Binding { field: "anthropic_api_key ".into(), ..binding.clone() },
        // The same characters, cut differently: the encoding is length-prefixed.
        Binding::new("acmeblueprint", "", "web-app", "anthropic_api_key"),
        Binding::new("acme", "blueprintweb-app", "", "anthropic_api_key"),
        Binding::new("acme", "blueprint", "web-appanthropic_api_key", ""),
    ];
    for other in &elsewhere {
        assert_eq!(
            ring.decrypt(&ciphertext, other).err(),
            Some(CryptoError::Decrypt(ring.primary_key_id())),
            "{other}"
        );
    }
    let same = Binding::new("acme", "blueprint", "web-app", "anthropic_api_key");
    assert_eq!(ring.decrypt(&ciphertext, &same).expect("its own binding").expose(), "sk-ant-0123456789");
}

#[test]
fn the_first_key_encrypts_and_every_key_decrypts() {
    let (one, two, three) = (ring(&[1]), ring(&[2]), ring(&[3]));
    let ring = common::ring(&[1, 2, 3]);
    assert_eq!(ring.primary_key_id(), one.primary_key_id());
    assert_eq!(
        ring.key_ids().collect::<Vec<KeyId>>(),
        [one.primary_key_id(), two.primary_key_id(), three.primary_key_id()]
    );
    let binding = admin_token();
    let encrypted = ring.encrypt(&Secret::from("new"), &binding).expect("encrypts");
    assert_eq!(encrypted.key_id(), one.primary_key_id());
    assert_eq!(one.decrypt(&encrypted, &binding).expect("under key 1").expose(), "new");
    for (n, single) in [(2, &two), (3, &three)] {
        let c = single.encrypt(&Secret::from(format!("under {n}")), &binding).expect("encrypts");
        assert_eq!(ring.decrypt(&c, &binding).expect("any key decrypts").expose(), format!("under {n}"));
    }
    assert_eq!(
        common::ring(&[3, 1]).encrypt(&Secret::from("x"), &binding).expect("encrypts").key_id(),
        three.primary_key_id()
    );
}

#[test]
fn rewrap_moves_to_the_new_primary_once() {
    let binding = admin_token();
    let old_ring = ring(&[1]);
    let stored = old_ring.encrypt(&Secret::from("qov_t0k3n_0123456789"), &binding).expect("encrypts");

    let rotated = ring(&[2, 1]);
    let moved = rotated.rewrap(&stored, &binding).expect("rewraps").expect("was under the old key");
    assert_eq!(moved.key_id(), rotated.primary_key_id());
    assert_eq!(rotated.rewrap(&moved, &binding), Ok(None), "idempotent");
    // The old key can now leave the ring.
    let new_only = ring(&[2]);
    assert_eq!(new_only.decrypt(&moved, &binding).expect("decrypts").expose(), "qov_t0k3n_0123456789");
    assert_eq!(new_only.rewrap(&moved, &binding), Ok(None));

    // Rewrap checks the binding, and needs the old key.
    let elsewhere = Binding { field: "other".into(), ..binding.clone() };
    assert_eq!(rotated.rewrap(&stored, &elsewhere), Err(CryptoError::Decrypt(old_ring.primary_key_id())));
    assert_eq!(new_only.rewrap(&stored, &binding), Err(CryptoError::UnknownKey(old_ring.primary_key_id())));
}

#[test]
fn missing_keys_are_all_named_in_one_line() {
    let ring = ring(&[1, 2]);
    let (k1, k3, k4) =
        (common::ring(&[1]).primary_key_id(), common::ring(&[3]).primary_key_id(), common::ring(&[4]).primary_key_id());
    let field = |f: &str| Binding::new("acme", "blueprint", "web-app", f);
    let mut in_use = vec![(common::admin_token(), k1), (field("anthropic_api_key"), k3)];
    in_use.extend((0..5).map(|i| (field(&format!("key_{i}")), k4)));
    assert_eq!(ring.check_in_use(in_use[..1].to_vec()), Ok(()));
    assert_eq!(ring.check_in_use(Vec::new()), Ok(()));

    let missing = ring.check_in_use(in_use).expect_err("two keys missing");
    assert_eq!(missing.keys.len(), 2);
    assert_eq!(missing.keys[&k3], [field("anthropic_api_key")]);
    assert_eq!(missing.keys[&k4].len(), 5);
    let line = missing.to_string();
    assert!(!line.contains('\n'), "{line}");
    let (first, second) = if k3 < k4 { (k3, k4) } else { (k4, k3) };
    assert!(
        line.starts_with("6 stored secret(s) are encrypted under key(s) missing from the secrets key ring: key "),
        "{line}"
    );
    assert!(line.contains(&format!("key {k3} for acme:blueprint/web-app.anthropic_api_key")), "{line}");
    assert!(
        line.contains(&format!("key {k4} for acme:blueprint/web-app.key_0, acme:blueprint/web-app.key_1, acme:blueprint/web-app.key_2 and 2 more")),
        "{line}"
    );
    assert!(line.find(&first.to_string()) < line.find(&second.to_string()), "ordered by key id: {line}");
}

#[test]
fn many_random_plaintexts() {
    let ring = ring(&[1, 2]);
    let old = common::ring(&[2]);
    let mut rng = Rng::new(13);
    for i in 0..200 {
        let len = if i < 20 { i } else { rng.below(64 * 1024 - 3) };
        let plaintext = rng.text(len);
        let (org, id, field) = (rng.below(8), rng.below(40), rng.below(40));
        let binding = Binding::new(rng.text(org), "blueprint", rng.text(id), rng.text(field));
        let ciphertext = ring.encrypt(&Secret::from(plaintext.as_str()), &binding).expect("encrypts");
        let parsed = Ciphertext::parse(&ciphertext.encode()).expect("parses");
        assert_eq!(ring.decrypt(&parsed, &binding).expect("decrypts").expose(), plaintext);

        let mut altered = data(&ciphertext);
        let at = rng.below(altered.len());
        altered[at] ^= 1 << rng.below(8);
        assert!(ring.decrypt(&with_data(&ciphertext, &altered), &binding).is_err(), "plaintext {i}, byte {at}");

        let under_old = old.encrypt(&Secret::from(plaintext.as_str()), &binding).expect("encrypts");
        let moved = ring.rewrap(&under_old, &binding).expect("rewraps").expect("moved");
        assert_eq!(ring.decrypt(&moved, &binding).expect("decrypts").expose(), plaintext);
    }
}

//! Key rings from configuration: the list, the key file and its permissions, duplicates, and what errors and
//! `Debug` may show (never a key, a plaintext or a ciphertext).

mod common;

use std::fs;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use common::{admin_token, key, key_text, ring};
use secrets::{generate_key, Ciphertext, KeyAt, KeyError, KeyRing, Secret};

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

#[test]
fn a_list_from_the_environment() {
    let ring = KeyRing::parse(&format!("{}, {}\n", key_text(2), key_text(1))).expect("two keys");
    assert_eq!(
        ring.key_ids().collect::<Vec<_>>(),
        [common::ring(&[2]).primary_key_id(), common::ring(&[1]).primary_key_id()]
    );
    let newline_separated = KeyRing::parse(&format!("{}\n{}", key_text(2), key_text(1))).expect("two keys");
    assert_eq!(newline_separated.key_ids().collect::<Vec<_>>(), ring.key_ids().collect::<Vec<_>>());
    assert!(matches!(KeyRing::parse(""), Err(KeyError::NoKeys)));
    assert!(matches!(KeyRing::parse(" ,, "), Err(KeyError::NoKeys)));
    assert!(matches!(KeyRing::from_keys(&[]), Err(KeyError::NoKeys)));
}

#[test]
fn duplicate_keys_are_refused() {
    let err = KeyRing::parse(&format!("{},{},{}", key_text(1), key_text(2), key_text(1))).expect_err("duplicate");
    let id = ring(&[1]).primary_key_id();
    assert!(
        matches!(err, KeyError::Duplicate { at: KeyAt { index: 3, line: None }, same_as: 1, key_id } if key_id == id),
        "{err:?}"
    );
    assert_eq!(err.to_string(), format!("key 3 is the same key as key 1 (key id {id})"));
    assert!(matches!(KeyRing::from_keys(&[key(4), key(4)]), Err(KeyError::Duplicate { same_as: 1, .. })));
}

#[test]
fn a_key_file_with_comments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secrets.keys");
    write_private(
        &path,
        &format!("# rotated 2026-12-01\n{}\n\n# the old key, until rewrap is done\n  {}  \n", key_text(2), key_text(1)),
    );
    let ring = KeyRing::load(&path).expect("loads");
    assert_eq!(ring.key_ids().collect::<Vec<_>>(), common::ring(&[2, 1]).key_ids().collect::<Vec<_>>());

    write_private(&path, &format!("{}\n# old\n{}\n", key_text(1), &key_text(2)[..41]));
    let err = KeyRing::load(&path).expect_err("truncated key");
    assert_eq!(err.to_string(), format!("secrets key file {}: key 2 (line 3) is not standard base64 with padding (41 characters; a 32-byte key is 44)", path.display()));
    assert!(
        matches!(&err, KeyError::InFile { source, .. } if matches!(**source, KeyError::NotBase64 { at: KeyAt { index: 2, line: Some(3) }, chars: 41 }))
    );

    write_private(&path, &format!("{}\n{}\n", key_text(1), key_text(1)));
    let err = KeyRing::load(&path).expect_err("duplicate");
    assert!(
        matches!(&err, KeyError::InFile { source, .. } if matches!(**source, KeyError::Duplicate { at: KeyAt { index: 2, line: Some(2) }, same_as: 1, .. }))
    );

    write_private(&path, "# nothing yet\n");
    assert!(
        matches!(KeyRing::load(&path), Err(KeyError::InFile { source, .. }) if matches!(*source, KeyError::NoKeys))
    );

    write_private(&path, &"#".repeat(secrets::MAX_KEY_FILE_BYTES + 1));
    assert!(matches!(KeyRing::load(&path), Err(KeyError::FileTooLarge { .. })));
    fs::write(&path, [0xff, 0xfe, b'\n']).expect("write (the mode stays 0600)");
    assert!(matches!(KeyRing::load(&path), Err(KeyError::FileNotText { .. })));

    let missing = dir.path().join("absent.keys");
    assert!(
        matches!(KeyRing::load(&missing), Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound)
    );
}

#[cfg(unix)]
#[test]
fn a_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secrets.keys");
    write_private(&path, &format!("{}\n", key_text(1)));
    for (mode, accepted) in [
        (0o600, true),
        (0o400, true),
        (0o640, true),
        (0o440, true),
        (0o604, false),
        (0o644, false),
        (0o606, false),
        (0o601, false),
    ] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        match KeyRing::load(&path) {
            Ok(_) => assert!(accepted, "mode {mode:o} accepted"),
            Err(KeyError::InsecurePermissions { mode: found, .. }) => {
                assert!(!accepted, "mode {mode:o} refused");
                assert_eq!(found, mode);
            }
            Err(e) => panic!("mode {mode:o}: {e}"),
        }
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = KeyRing::load(&path).expect_err("world-readable");
    assert_eq!(
        err.to_string(),
        format!("secrets key file {} is accessible to other users (mode 644); run `chmod 600` on it", path.display())
    );
}

#[test]
fn nothing_secret_in_debug_or_errors() {
    let plaintext = "qov_t0k3n_SUPERSECRET_0123456789";
    let keys = [generate_key().expect("key").expose().to_owned(), generate_key().expect("key").expose().to_owned()];
    let raw_hex = keys.each_ref().map(|k| hex::encode(STANDARD.decode(k).expect("base64")));
    let ring = KeyRing::parse(&keys.join(",")).expect("ring");
    let secret = Secret::from(plaintext);
    let ciphertext = ring.encrypt(&secret, &admin_token()).expect("encrypts");
    let encoded = ciphertext.encode();
    let data = encoded.rsplit(':').next().expect("data").to_owned();
    let decrypted = ring.decrypt(&ciphertext, &admin_token()).expect("decrypts");

    let elsewhere = secrets::Binding { field: "other".into(), ..admin_token() };
    let mut shown = vec![
        format!("{secret:?} {secret} {decrypted:?} {decrypted}"),
        format!("{ciphertext:?}"),
        format!("{ring:?}"),
        format!("{:?}", ring.decrypt(&ciphertext, &elsewhere)),
        format!("{:?}", ring.decrypt(&ciphertext, &elsewhere).err().map(|e| e.to_string())),
        format!("{:?}", Ciphertext::parse(&format!("{encoded}!"))),
        format!("{:?}", Ciphertext::parse(plaintext)),
        format!("{:?}", Ciphertext::parse(&format!("ghs1:{plaintext}:{data}"))),
        format!("{:?}", generate_key().expect("key")),
    ];
    for bad_list in [
        format!("{},{}", keys[0], &keys[1][..43]),
        format!("{},{}!{}", keys[0], &keys[1][..10], &keys[1][11..]),
        format!("{}{}", keys[0], keys[1]),
    ] {
        let err = KeyRing::parse(&bad_list).expect_err("bad key");
        shown.push(format!("{err} {err:?}"));
    }
    let missing = common::ring(&[3]).check_in_use([(admin_token(), ciphertext.key_id())]).expect_err("missing");
    shown.push(format!("{missing} {missing:?}"));

    assert_eq!(format!("{ciphertext:?}"), format!("Ciphertext(key {})", ciphertext.key_id()));
    for text in &shown {
        for needle in [
            plaintext,
            "SUPERSECRET",
            &data[..16],
            &keys[0][..16],
            &keys[1][..16],
            &raw_hex[0][..16],
            &raw_hex[1][..16],
        ] {
            assert!(!text.contains(needle), "{text:?} shows {needle:?}");
        }
    }
}

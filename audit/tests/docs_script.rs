//! The Python verifier printed in docs/AUDIT.md works on the crate's exports, signatures included (through
//! `openssl pkeyutl -rawin`), and finds tamperings; the known-answer script in the docs is tests/kat.py.

mod common;

use std::path::Path;
use std::process::Command;

const DOC: &str = include_str!("../../docs/AUDIT.md");

fn verify_script() -> &'static str {
    let marker = DOC.find("<!-- verify-script").expect("docs/AUDIT.md has the verify-script marker");
    let start = marker + DOC[marker..].find("```python\n").expect("a python block after the marker") + 10;
    let end = start + DOC[start..].find("\n```").expect("end of the python block") + 1;
    &DOC[start..end]
}

fn python_available() -> bool {
    Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn openssl3_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("OpenSSL 3"))
}

fn run_script(script: &Path, export: &Path, key: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(export);
    if let Some(k) = key {
        cmd.arg(k);
    }
    let out = cmd.output().expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn docs_known_answer_script_is_tests_kat_py() {
    let kat = include_str!("kat.py");
    assert!(DOC.contains(kat), "docs/AUDIT.md must contain audit/tests/kat.py verbatim");
}

#[test]
fn python_verifier_from_the_docs_agrees_with_the_crate() {
    if !python_available() {
        println!("skipped: python3 not available");
        return;
    }
    let with_signatures = openssl3_available();
    if !with_signatures {
        println!("skipped (partly): OpenSSL 3 not available, signatures not checked by the script");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("verify_audit.py");
    std::fs::write(&script, verify_script()).expect("write script");
    let key = common::test_key();
    let key_hex = key.public_key_hex();
    let key_arg = with_signatures.then_some(key_hex.as_str());
    let (bytes, _) = common::export_bytes(21, 250, 100, 300);
    let export = dir.path().join("export.ndjson");
    std::fs::write(&export, &bytes).expect("write export");

    let (ok, out) = run_script(&script, &export, key_arg);
    assert!(ok, "{out}");
    assert!(out.starts_with("OK: events 1..250, 3 checkpoints"), "{out}");
    if with_signatures {
        assert!(out.contains("(signatures verified)"), "{out}");
    }
    let report = audit::verify(&bytes[..], key.public_key(), None, |_| {}).expect("crate verifies");
    assert!(out.contains(&report.last_link.to_hex()), "{out}");

    // The empty log.
    let (empty, _) = common::export_bytes(22, 0, 100, 0);
    std::fs::write(&export, &empty).expect("write");
    let (ok, out) = run_script(&script, &export, key_arg);
    assert!(ok && out.starts_with("OK: events 1..0, 1 checkpoints"), "{out}");

    // Tamperings the crate reports are reported by the script too.
    let text = String::from_utf8(bytes).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    let event = lines[57];
    let checkpoint = lines.iter().rposition(|l| l.contains("\"kind\":\"checkpoint\"")).expect("checkpoint");
    let sig_at = lines[checkpoint].find("\"signature\":\"").expect("signature") + 13;
    let mut cases: Vec<(String, &str)> = vec![
        (event.replacen("\"actor\":\"user:", "\"actor\":\"user:x", 1), "does not hash"),
        (event.replacen("\"actor\":", "\"actor\" :", 1), "malformed"),
        (event.replacen("}", " }", 1), "malformed"),
        (lines[58].to_owned(), "event"),
    ];
    let flipped_sig = {
        let mut l = lines[checkpoint].to_owned();
        let c = if &l[sig_at..sig_at + 1] == "0" { "1" } else { "0" };
        l.replace_range(sig_at..sig_at + 1, c);
        l
    };
    if with_signatures {
        cases.push((flipped_sig, "bad checkpoint signature"));
    }
    for (i, (replacement, expected)) in cases.iter().enumerate() {
        let mut tampered = lines.clone();
        let at = if i == 4 { checkpoint } else { 57 };
        tampered[at] = replacement;
        let body = tampered.join("\n") + "\n";
        std::fs::write(&export, &body).expect("write");
        let (ok, out) = run_script(&script, &export, key_arg);
        assert!(!ok, "case {i} not detected by the script: {out}");
        assert!(out.contains(expected), "case {i}: {out}");
        assert!(audit::verify(body.as_bytes(), key.public_key(), None, |_| {}).is_err(), "case {i}: crate");
    }
    // A cut tail.
    let cut = lines[..lines.len() - 1].join("\n") + "\n";
    std::fs::write(&export, cut).expect("write");
    let (ok, out) = run_script(&script, &export, key_arg);
    assert!(!ok && out.starts_with("truncated"), "{out}");
}

#[test]
fn openssl_verifies_a_checkpoint_signed_by_the_crate() {
    if !openssl3_available() {
        println!("skipped: OpenSSL 3 not available");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let key = common::test_key();
    let cp = key.sign_checkpoint(42, &audit::Link([0x5a; 32]), "2026-11-29T02:20:17.145000Z");
    std::fs::write(dir.path().join("key.pem"), key.public_key().to_pem()).expect("pem");
    std::fs::write(dir.path().join("msg"), cp.message()).expect("msg");
    std::fs::write(dir.path().join("sig"), cp.signature).expect("sig");
    let verify = |msg: &str| {
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-inkey", "key.pem", "-rawin", "-in", msg, "-sigfile", "sig"])
            .current_dir(dir.path())
            .output()
            .expect("openssl runs")
    };
    let out = verify("msg");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut other = cp.message();
    other[40] ^= 1;
    std::fs::write(dir.path().join("other"), other).expect("other");
    assert!(!verify("other").status.success(), "openssl must refuse an altered message");
}

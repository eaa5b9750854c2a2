//! cj(value) is byte-identical to Python's
//! `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use audit::{canonical_json, canonical_json_text};
use common::Rng;
use serde_json::{json, Value};

const SCRIPT: &str = r#"
import json, sys
for line in sys.stdin.buffer:
    v = json.loads(line)
    sys.stdout.buffer.write(json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n")
"#;

fn samples() -> Vec<Value> {
    let mut all_controls = String::new();
    for c in 0u8..0x20 {
        all_controls.push(char::from(c));
    }
    let mut v = vec![
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(u64::MAX),
        json!(u64::MAX - 1),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(""),
        json!(all_controls),
        json!("\u{7f}\u{80}\u{9f}\u{a0}\u{ad}\u{2028}\u{2029}\u{feff}\u{fffd}\u{ffff}\u{10000}\u{10ffff}"),
        json!("quote \" backslash \\ slash / tab \t"),
        json!("Zürich 日本語 😀 emoji"),
        json!([]),
        json!({}),
        json!([[[[]]], {"": {"": ""}}]),
        json!({"b": 1, "a": 2, "A": 3, "_": 4, "aa": 5, "a\u{0}": 6, "é": 7, "e\u{301}": 8, "😀": 9, "\u{ffff}": 10}),
        json!({"\n": 1, "!": 2, "\"": 3, "\\": 4, "\u{1f}": 5, " ": 6}),
        json!({"nested": {"z": [1, {"y": {"x": null, "w": [true, false]}}], "a": -9007199254740993i64}}),
        json!([9007199254740993u64, -9223372036854775807i64, 18446744073709551614u64]),
    ];
    let seed = common::seed();
    println!("random samples seed: {seed} (set AUDIT_TEST_SEED to reproduce)");
    let mut rng = Rng::new(seed);
    for i in 0..300 {
        v.push(common::synthetic_event(&mut rng, i, if i % 2 == 0 { 0 } else { 400 }).payload);
    }
    v
}

#[test]
fn canonical_json_matches_python() {
    let samples = samples();
    let mut input = Vec::new();
    for s in &samples {
        // Feed Python non-canonical text: pretty-printed, members in serde_json's order, re-indented.
        let text = serde_json::to_string(s).expect("json");
        input.extend_from_slice(text.as_bytes());
        input.push(b'\n');
    }
    let child = Command::new("python3").args(["-c", SCRIPT]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            println!("skipped: python3 not available ({e})");
            return;
        }
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("python3 ran");
    writer.join().expect("writer thread").expect("wrote to python3");
    assert!(output.status.success(), "python3 failed: {}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&[u8]> = output.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), samples.len());
    for (i, (sample, python)) in samples.iter().zip(lines).enumerate() {
        let rust = canonical_json(sample).expect("canonical");
        assert_eq!(String::from_utf8_lossy(&rust), String::from_utf8_lossy(python), "sample {i} differs from Python");
        assert_eq!(&rust[..], python, "sample {i} bytes");
        // The text path (what the verifier uses) agrees, from pretty-printed input too.
        let pretty = serde_json::to_string_pretty(sample).expect("json");
        assert_eq!(canonical_json_text(&pretty).expect("canonical text"), rust, "sample {i}, text path");
    }
}

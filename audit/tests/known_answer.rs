//! Known-answer test: a fixed 3-event chain whose links were computed independently with Python's hashlib,
//! struct and json (tests/kat.py, also in docs/AUDIT.md). Re-run against Python when python3 is available.

use std::process::Command;

use audit::{canonical_bytes, next_link, ChainEvent, Link, GENESIS};
use serde_json::json;

const EXPECTED: [&str; 3] = [
    "8490a550d04d12f7c298d5a992b54c2a383b03c2ffc9cc4c48b2ad70f653c555",
    "0a4bdf704627f7e0736d25d87410fe54c4cb64efa754891a6887f9510b4a27ed",
    "f48dec5d92e1e0e24c27e941637c94575ca00f30aa6015a4e7a2d9a228fd9510",
];

#[allow(clippy::too_many_arguments)]
fn event(
    index: u64,
    position: u64,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: u64,
    event_type: &str,
    event_version: &str,
    payload: serde_json::Value,
    metadata: serde_json::Value,
    recorded_at: &str,
) -> ChainEvent {
    ChainEvent {
        index,
        cursor: format!("cursor-{index}"),
        position,
        aggregate_type: aggregate_type.into(),
        aggregate_id: aggregate_id.into(),
        sequence,
        event_type: event_type.into(),
        event_version: event_version.into(),
        payload,
        metadata,
        recorded_at: recorded_at.into(),
    }
}

fn events() -> Vec<ChainEvent> {
    vec![
        event(
            1,
            1,
            "organisation",
            "acme",
            1,
            "OrganisationCreated",
            "1",
            json!({"slug": "acme", "name": "Acme"}),
            json!({"correlation_id": "c-1", "actor": "user:alice"}),
            "2026-11-29T02:20:17.145000Z",
        ),
        event(
            2,
            2,
            "organisation",
            "acme",
            2,
            "MemberInvited",
            "1",
            json!({"role": "admin", "email": "bob@example.com", "quota": -5, "big": u64::MAX}),
            json!({"actor": "user:alice"}),
            "2026-11-29T02:20:18.000001Z",
        ),
        event(
            3,
            5,
            "publishing",
            "acme/portal",
            1,
            "RequestSubmitted",
            "2",
            json!({"title": "Café ☕ \"quoted\"\n\u{1}", "tags": ["a", "b"], "nested": {"z": 1, "a": {"y": null, "x": true}}}),
            json!({}),
            "2026-11-29T02:21:00.000000Z",
        ),
    ]
}

#[test]
fn links_match_the_fixed_vectors() {
    let mut link = GENESIS;
    for (event, expected) in events().iter().zip(EXPECTED) {
        link = next_link(&link, event).expect("link");
        assert_eq!(link.to_hex(), expected, "link of event {}", event.index);
    }
}

#[test]
fn canonical_bytes_layout_of_the_first_event() {
    let bytes = canonical_bytes(&events()[0]).expect("canonical");
    let mut expected = Vec::new();
    expected.extend_from_slice(b"GHA1");
    expected.extend_from_slice(&1u64.to_be_bytes());
    expected.extend_from_slice(&1u64.to_be_bytes());
    for (i, field) in
        ["organisation", "acme", "OrganisationCreated", "1", r#"{"name":"Acme","slug":"acme"}"#].iter().enumerate()
    {
        if i == 2 {
            expected.extend_from_slice(&1u64.to_be_bytes());
        }
        expected.extend_from_slice(&(field.len() as u32).to_be_bytes());
        expected.extend_from_slice(field.as_bytes());
    }
    for field in [r#"{"actor":"user:alice","correlation_id":"c-1"}"#, "2026-11-29T02:20:17.145000Z"] {
        expected.extend_from_slice(&(field.len() as u32).to_be_bytes());
        expected.extend_from_slice(field.as_bytes());
    }
    assert_eq!(bytes, expected);
}

#[test]
fn cursor_is_not_hashed_but_everything_else_is() {
    let base = events()[1].clone();
    let link = next_link(&GENESIS, &base).expect("link");
    let mut e = base.clone();
    e.cursor = "something else".into();
    assert_eq!(next_link(&GENESIS, &e).expect("link"), link);
    type Change = Box<dyn Fn(&mut ChainEvent)>;
    let variants: Vec<Change> = vec![
        Box::new(|e| e.index += 1),
        Box::new(|e| e.position += 1),
        Box::new(|e| e.aggregate_type.push('x')),
        Box::new(|e| e.aggregate_id.push('x')),
        Box::new(|e| e.sequence += 1),
        Box::new(|e| e.event_type.push('x')),
        Box::new(|e| e.event_version.push('x')),
        Box::new(|e| e.payload["role"] = json!("user")),
        Box::new(|e| e.metadata["actor"] = json!("user:mallory")),
        Box::new(|e| e.recorded_at.replace_range(25..26, "2")),
    ];
    for (i, change) in variants.iter().enumerate() {
        let mut e = base.clone();
        change(&mut e);
        assert_ne!(next_link(&GENESIS, &e).expect("link"), link, "variant {i}");
    }
    // The previous link is hashed too.
    assert_ne!(next_link(&Link([1; 32]), &base).expect("link"), link);
}

#[test]
fn python_computes_the_same_links() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kat.py");
    let output = match Command::new("python3").arg(script).output() {
        Ok(o) => o,
        Err(e) => {
            println!("skipped: python3 not available ({e})");
            return;
        }
    };
    assert!(output.status.success(), "kat.py failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let python: Vec<&str> = stdout.lines().map(|l| l.split_whitespace().nth(1).unwrap_or("")).collect();
    assert_eq!(python, EXPECTED, "Python's links");
}

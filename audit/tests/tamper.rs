//! Round trip of a synthetic export, and 1,000 random single tamperings, each of which must be reported as a
//! break of a plausible kind. The seed is printed; set AUDIT_TEST_SEED to reproduce a run.

mod common;

use std::collections::BTreeMap;

use audit::{next_link, verify, Break, BreakKind, Checkpoint, ExportLine, ExportWriter, Link, Report};
use common::{export_bytes, test_key, Rng};

const EVENTS: u64 = 2_000;
const EVERY: u64 = 100;

fn run(bytes: &[u8], trusted: Option<&Checkpoint>) -> Result<Report, Break> {
    verify(bytes, test_key().public_key(), trusted, |_| {})
}

fn split(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    if lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    lines
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

fn kind_of(line: &[u8]) -> &'static str {
    if line.starts_with(b"{\"kind\":\"event\"") {
        "event"
    } else if line.starts_with(b"{\"kind\":\"checkpoint\"") {
        "checkpoint"
    } else {
        "header"
    }
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).expect("field present")
}

/// Byte range of a field's value in a line written by ExportWriter (`"name":` … up to the next `,"` or `}`).
fn value_range(line: &[u8], name: &str, next: &str) -> std::ops::Range<usize> {
    let start = find(line, format!("\"{name}\":").as_bytes()) + name.len() + 3;
    let end =
        if next.is_empty() { line.len() - 1 } else { start + find(&line[start..], format!(",\"{next}\":").as_bytes()) };
    start..end
}

/// Whether a line is still exactly what the exporter would write (then an edit must show in the chain).
fn canonical(line: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(line) else { return false };
    ExportLine::parse(text)
        .ok()
        .and_then(|l| l.to_ndjson().ok())
        .is_some_and(|enc| enc.as_bytes()[..enc.len() - 1] == *line)
}

fn different_hex_digit(rng: &mut Rng, old: u8) -> u8 {
    loop {
        let d = *rng.pick(b"0123456789abcdef");
        if d != old {
            return d;
        }
    }
}

#[test]
fn round_trip() {
    let (bytes, last) = export_bytes(7, EVENTS, EVERY, 0);
    let mut calls = Vec::new();
    let report = verify(&bytes[..], test_key().public_key(), Some(&last), |n| calls.push(n)).expect("verifies");
    assert_eq!(report.first_index, 1);
    assert_eq!(report.last_index, EVENTS);
    assert_eq!(report.events_verified, EVENTS);
    assert_eq!(report.checkpoints_verified, EVENTS / EVERY);
    assert_eq!(report.last_checkpoint, last);
    assert_eq!(report.last_link, last.link);
    assert_eq!(report.bytes, bytes.len() as u64);
    assert_eq!(report.lines, 1 + EVENTS + EVENTS / EVERY);
    assert_eq!(calls.last(), Some(&(bytes.len() as u64)), "progress ends with the total");
    assert!(calls.windows(2).all(|w| w[0] <= w[1]));

    // A final checkpoint that does not fall on the interval, and the empty log.
    let (bytes, last) = export_bytes(8, 257, EVERY, 300);
    let report = run(&bytes, Some(&last)).expect("verifies");
    assert_eq!((report.last_index, report.checkpoints_verified, report.last_checkpoint.index), (257, 3, 257));
    let (bytes, last) = export_bytes(9, 0, EVERY, 0);
    let report = run(&bytes, Some(&last)).expect("empty log verifies");
    assert_eq!((report.first_index, report.last_index, report.events_verified, last.index), (1, 0, 0, 0));
}

#[test]
fn partial_exports_and_trusted_checkpoints() {
    let (bytes, last) = export_bytes(11, 1_000, EVERY, 0);
    let lines = split(&bytes);
    let parsed: Vec<ExportLine> =
        lines.iter().map(|l| ExportLine::parse(std::str::from_utf8(l).expect("utf-8")).expect("parse")).collect();
    let checkpoint = |index: u64| {
        parsed
            .iter()
            .find_map(|l| match l {
                ExportLine::Checkpoint(c) if c.index == index => Some(c.clone()),
                _ => None,
            })
            .expect("checkpoint")
    };
    // Events 501..=1000 with the header carrying link_500.
    let cp500 = checkpoint(500);
    let mut w = ExportWriter::new(Vec::new());
    w.write_header(501, &cp500.link).expect("header");
    for l in &parsed {
        match l {
            ExportLine::Event { event, link } if event.index > 500 => w.write_event(event, link).expect("event"),
            ExportLine::Checkpoint(c) if c.index > 500 => w.write_checkpoint(c).expect("checkpoint"),
            _ => {}
        }
    }
    let partial = w.into_inner();
    let report = run(&partial, None).expect("partial verifies");
    assert_eq!((report.first_index, report.last_index, report.events_verified), (501, 1000, 500));
    run(&partial, Some(&cp500)).expect("continues from the trusted checkpoint");
    run(&partial, Some(&checkpoint(700))).expect("contains the trusted checkpoint");
    run(&partial, Some(&last)).expect("ends at the trusted checkpoint");
    let e = run(&partial, Some(&checkpoint(400))).expect_err("starts after the trusted checkpoint");
    assert_eq!((e.kind, e.line, e.index), (BreakKind::MissingEvents, 1, Some(401)));

    // A trusted checkpoint of a rewritten history (same key) is a mismatch.
    let key = test_key();
    let forged = key.sign_checkpoint(700, &Link([9; 32]), "2026-01-01T00:00:00.000000Z");
    let e = run(&bytes, Some(&forged)).expect_err("mismatch");
    assert_eq!((e.kind, e.index), (BreakKind::CheckpointMismatch, Some(700)));
    let forged = key.sign_checkpoint(500, &Link([9; 32]), "2026-01-01T00:00:00.000000Z");
    let e = run(&partial, Some(&forged)).expect_err("header mismatch");
    assert_eq!((e.kind, e.line), (BreakKind::CheckpointMismatch, 1));
    // A trusted checkpoint signed by another key, or altered, is refused before reading.
    let other = audit::AuditKey::from_seed(&[1; 32]).sign_checkpoint(10, &Link([0; 32]), "x");
    assert_eq!(run(&bytes, Some(&other)).expect_err("unknown key").kind, BreakKind::UnknownKey);
    let altered = Checkpoint { index: last.index - 1, ..last.clone() };
    assert_eq!(run(&bytes, Some(&altered)).expect_err("bad sig").kind, BreakKind::BadCheckpointSignature);
    // Checkpoint lines parse back for use as trusted checkpoints.
    assert_eq!(Checkpoint::from_line(&last.to_line()).expect("parse"), last);
}

#[test]
fn structural_breaks() {
    let (bytes, _) = export_bytes(12, 50, 10, 0);
    let lines = split(&bytes);
    let check = |b: &[u8], kind: BreakKind| {
        let e = run(b, None).expect_err("break");
        assert_eq!(e.kind, kind, "{e}");
        e
    };
    check(b"", BreakKind::Truncated);
    check(b"{}\n", BreakKind::Malformed);
    check(&join(&lines[1..]), BreakKind::Malformed);
    check(&join(&lines[..1]), BreakKind::Truncated);
    let mut twice = lines.clone();
    twice.insert(5, lines[0].clone());
    check(&join(&twice), BreakKind::Malformed);
    let header = String::from_utf8(lines[0].clone()).expect("utf-8").replace("gatehouse-audit/1", "gatehouse-audit/2");
    check(&join(&[&[header.into_bytes()][..], &lines[1..]].concat()), BreakKind::Malformed);
    let mut cut = bytes.clone();
    cut.truncate(bytes.len() - 40);
    let e = check(&cut, BreakKind::Truncated);
    assert!(e.detail.contains("middle of a line"), "{e}");
    let mut crlf = join(&lines[..3]);
    crlf.insert(crlf.len() - 1, b'\r');
    check(&crlf, BreakKind::Malformed);
    // Another key's export is refused at its first checkpoint.
    let mut other = Vec::new();
    common::write_export(&mut other, &audit::AuditKey::from_seed(&[5; 32]), 12, 50, 10, 0).expect("export");
    let e = check(&other, BreakKind::UnknownKey);
    assert_eq!(e.index, Some(10));
    // Display names line, index and kind.
    assert!(e.to_string().starts_with(&format!("line {} (chain index 10): unknown_key: ", e.line)), "{e}");
}

/// The kinds of tampering tried, each with the break kinds that are a correct diagnosis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tamper {
    PayloadLetter,
    PayloadByte,
    HashedFieldByte,
    DeleteEvent,
    InsertDuplicate,
    InsertForged,
    SwapAdjacent,
    SwapDistant,
    DropTailAfterCheckpoint,
    CutAnywhere,
    CheckpointSignature,
    CheckpointSignedAt,
    CheckpointKeyId,
    EventLink,
    RewriteHistory,
}

const ALL: [Tamper; 15] = [
    Tamper::PayloadLetter,
    Tamper::PayloadByte,
    Tamper::HashedFieldByte,
    Tamper::DeleteEvent,
    Tamper::InsertDuplicate,
    Tamper::InsertForged,
    Tamper::SwapAdjacent,
    Tamper::SwapDistant,
    Tamper::DropTailAfterCheckpoint,
    Tamper::CutAnywhere,
    Tamper::CheckpointSignature,
    Tamper::CheckpointSignedAt,
    Tamper::CheckpointKeyId,
    Tamper::EventLink,
    Tamper::RewriteHistory,
];

struct Tampered {
    bytes: Vec<u8>,
    expected: Vec<BreakKind>,
    /// The lines the break may be reported on (empty: any).
    line: Vec<u64>,
    what: String,
}

fn tamper(t: Tamper, rng: &mut Rng, lines: &[Vec<u8>], parsed: &[ExportLine]) -> Tampered {
    use BreakKind::*;
    let of_kind = |k: &str| (0..lines.len()).filter(|i| kind_of(&lines[*i]) == k).collect::<Vec<_>>();
    let events = of_kind("event");
    let checkpoints = of_kind("checkpoint");
    let mut out = lines.to_vec();
    let edited = |out: &mut Vec<Vec<u8>>, i: usize, what: String| {
        let kind = if canonical(&out[i]) { EditedEvent } else { Malformed };
        Tampered { bytes: join(out), expected: vec![kind], line: vec![i as u64 + 1], what }
    };
    match t {
        Tamper::PayloadLetter => loop {
            let i = *rng.pick(&events);
            let r = value_range(&lines[i], "payload", "metadata");
            let letters: Vec<usize> = r.filter(|p| lines[i][*p].is_ascii_alphabetic()).collect();
            if letters.is_empty() {
                continue;
            }
            let p = *rng.pick(&letters);
            let old = lines[i][p];
            let new = loop {
                let c = *rng.pick(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ");
                if c != old {
                    break c;
                }
            };
            out[i][p] = new;
            return edited(
                &mut out,
                i,
                format!("line {}: payload byte {p} {:?} -> {:?}", i + 1, old as char, new as char),
            );
        },
        Tamper::PayloadByte => {
            let i = *rng.pick(&events);
            let r = value_range(&lines[i], "payload", "metadata");
            let p = r.start + rng.below(r.len());
            let old = lines[i][p];
            let new = loop {
                let c = 0x20 + rng.below(0x5f) as u8;
                if c != old {
                    break c;
                }
            };
            out[i][p] = new;
            edited(&mut out, i, format!("line {}: payload byte {p} {old:#x} -> {new:#x}", i + 1))
        }
        Tamper::HashedFieldByte => {
            let i = *rng.pick(&events);
            let (name, next) = *rng.pick(&[
                ("aggregate_type", "aggregate_id"),
                ("aggregate_id", "sequence"),
                ("sequence", "event_type"),
                ("event_type", "event_version"),
                ("event_version", "payload"),
                ("metadata", "recorded_at"),
                ("recorded_at", "link"),
                ("position", "aggregate_type"),
            ]);
            let r = value_range(&lines[i], name, next);
            let p = r.start + rng.below(r.len());
            let old = lines[i][p];
            let new = if old.is_ascii_digit() { b'0' + (old - b'0' + 1 + rng.below(9) as u8) % 10 } else { old ^ 0x01 };
            out[i][p] = new;
            let mut t = edited(&mut out, i, format!("line {}: {name} byte {old:#x} -> {new:#x}", i + 1));
            if name == "position" || name == "sequence" {
                // A digit edit may turn "10" into "00", which no longer parses as a canonical integer.
                t.expected = vec![EditedEvent, Malformed];
            }
            t
        }
        Tamper::DeleteEvent => {
            let i = *rng.pick(&events);
            out.remove(i);
            Tampered {
                bytes: join(&out),
                expected: vec![MissingEvents],
                line: vec![i as u64 + 1],
                what: format!("deleted line {}", i + 1),
            }
        }
        Tamper::InsertDuplicate => {
            let i = *rng.pick(&events);
            let at = 1 + rng.below(lines.len());
            out.insert(at, lines[i].clone());
            Tampered {
                bytes: join(&out),
                expected: vec![InsertedOrReordered],
                line: vec![],
                what: format!("copied line {} to before line {}", i + 1, at + 1),
            }
        }
        Tamper::InsertForged => {
            // An attacker without the key writes a plausible event with the next index and a correct link.
            let at = 1 + rng.below(lines.len());
            let (prev_index, prev_link) = match &parsed[at - 1] {
                ExportLine::Header(h) => (h.first_index - 1, h.previous_link),
                ExportLine::Event { event, link } => (event.index, *link),
                ExportLine::Checkpoint(c) => (c.index, c.link),
            };
            let mut event = common::synthetic_event(rng, prev_index + 1, 0);
            let link = if rng.chance(50) { next_link(&prev_link, &event).expect("link") } else { Link([3; 32]) };
            event.payload["forged"] = serde_json::json!(true);
            let link = if rng.chance(50) { next_link(&prev_link, &event).expect("link") } else { link };
            let line = ExportLine::Event { event, link }.to_ndjson().expect("encode");
            out.insert(at, line.trim_end().as_bytes().to_vec());
            let expected = if at == lines.len() {
                vec![Truncated, EditedEvent]
            } else if prev_index + 1 == EVENTS {
                // A forged event with the index of the trusted checkpoint (the last event's) is met first, and its
                // link is not the one the checkpoint signed (seen with seed 1796421296410989783).
                vec![InsertedOrReordered, CheckpointMismatch]
            } else {
                vec![InsertedOrReordered]
            };
            Tampered {
                bytes: join(&out),
                expected,
                line: vec![],
                what: format!("forged event inserted before line {}", at + 1),
            }
        }
        Tamper::SwapAdjacent => loop {
            let i = 1 + rng.below(lines.len() - 2);
            if kind_of(&lines[i]) == "checkpoint" && kind_of(&lines[i + 1]) == "checkpoint" {
                continue;
            }
            out.swap(i, i + 1);
            return Tampered {
                bytes: join(&out),
                expected: vec![InsertedOrReordered],
                // Event N+1 moved before checkpoint N still chains: the misplaced checkpoint is the break.
                line: vec![i as u64 + 1, i as u64 + 2],
                what: format!("swapped lines {} and {}", i + 1, i + 2),
            };
        },
        Tamper::SwapDistant => {
            let a = rng.below(events.len() - 10);
            let b = a + 5 + rng.below(events.len() - a - 5);
            let (i, j) = (events[a], events[b]);
            out.swap(i, j);
            Tampered {
                bytes: join(&out),
                expected: vec![InsertedOrReordered],
                line: vec![i as u64 + 1],
                what: format!("swapped lines {} and {}", i + 1, j + 1),
            }
        }
        Tamper::DropTailAfterCheckpoint => {
            let c = checkpoints[rng.below(checkpoints.len() - 1)];
            out.truncate(c + 1);
            Tampered {
                bytes: join(&out),
                expected: vec![Truncated],
                line: vec![],
                what: format!("dropped lines after {}", c + 1),
            }
        }
        Tamper::CutAnywhere => {
            let bytes = join(lines);
            let end = bytes.len() - 1;
            let cut = lines[0].len() + 1 + rng.below(end - lines[0].len() - 1);
            Tampered {
                bytes: bytes[..cut].to_vec(),
                expected: vec![Truncated],
                line: vec![],
                what: format!("cut at byte {cut}"),
            }
        }
        Tamper::CheckpointSignature | Tamper::CheckpointSignedAt | Tamper::CheckpointKeyId | Tamper::EventLink => {
            let (pool, name, next) = match t {
                Tamper::CheckpointSignature => (&checkpoints, "signature", ""),
                Tamper::CheckpointSignedAt => (&checkpoints, "signed_at", "key_id"),
                Tamper::CheckpointKeyId => (&checkpoints, "key_id", "signature"),
                _ => (&events, "link", ""),
            };
            let i = *rng.pick(pool);
            let r = value_range(&lines[i], name, next);
            let p = r.start + 1 + rng.below(r.len() - 2);
            let old = lines[i][p];
            out[i][p] = if old.is_ascii_hexdigit() { different_hex_digit(rng, old) } else { old ^ 0x01 };
            let expected = match t {
                Tamper::CheckpointKeyId => vec![UnknownKey],
                Tamper::EventLink => vec![BadLink],
                _ => vec![BadCheckpointSignature],
            };
            Tampered {
                bytes: join(&out),
                expected,
                line: vec![i as u64 + 1],
                what: format!("line {}: {name} byte {p}", i + 1),
            }
        }
        Tamper::RewriteHistory => {
            // Edit one event and recompute every later link: only the signed checkpoints can tell.
            let i = *rng.pick(&events);
            let mut link = Link::default();
            let mut w = ExportWriter::new(Vec::new());
            let mut next_checkpoint_line = None;
            for (n, l) in parsed.iter().enumerate() {
                match l {
                    ExportLine::Header(h) => {
                        link = h.previous_link;
                        w.write_header(h.first_index, &h.previous_link).expect("write");
                    }
                    ExportLine::Event { event, link: stored } => {
                        if n < i {
                            link = *stored;
                        } else {
                            let mut e = event.clone();
                            if n == i {
                                e.metadata["actor"] = serde_json::json!("user:mallory");
                            }
                            link = next_link(&link, &e).expect("link");
                        }
                        w.write_event(event, &link).expect("write");
                        if n == i {
                            // Write the edited event, not the original.
                            let mut buf = ExportWriter::new(Vec::new());
                            let mut e = event.clone();
                            e.metadata["actor"] = serde_json::json!("user:mallory");
                            buf.write_event(&e, &link).expect("write");
                            let tail = w.get_mut();
                            let original_len =
                                ExportLine::Event { event: event.clone(), link }.to_ndjson().expect("enc").len();
                            tail.truncate(tail.len() - original_len);
                            tail.extend_from_slice(&buf.into_inner());
                        }
                    }
                    ExportLine::Checkpoint(c) => {
                        if n > i && next_checkpoint_line.is_none() {
                            next_checkpoint_line = Some(n as u64 + 1);
                        }
                        w.write_checkpoint(c).expect("write");
                    }
                }
            }
            Tampered {
                bytes: w.into_inner(),
                expected: vec![CheckpointMismatch],
                // The trusted checkpoint (the last one) is checked at its event, the line before it.
                line: next_checkpoint_line
                    .into_iter()
                    .flat_map(|l| if l == lines.len() as u64 { vec![l - 1, l] } else { vec![l] })
                    .collect(),
                what: format!("edited line {} and recomputed all later links", i + 1),
            }
        }
    }
}

#[test]
fn thousand_random_tamperings_are_all_detected() {
    let seed = common::seed();
    println!("tamper seed: {seed} (set AUDIT_TEST_SEED={seed} to reproduce)");
    let (bytes, last) = export_bytes(seed ^ 0x5eed, EVENTS, EVERY, 0);
    run(&bytes, Some(&last)).expect("the untouched export verifies");
    let lines = split(&bytes);
    let parsed: Vec<ExportLine> =
        lines.iter().map(|l| ExportLine::parse(std::str::from_utf8(l).expect("utf-8")).expect("parse")).collect();
    let count: usize = std::env::var("AUDIT_TAMPER_COUNT").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000);
    // Two threads (debug builds verify signatures slowly); each tampering has its own RNG, derived from the seed
    // and its number, so a run reproduces whatever the scheduling.
    type Tally = BTreeMap<(String, &'static str), usize>;
    let results: Vec<(Tally, Vec<String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let (lines, parsed, last) = (&lines, &parsed, &last);
                s.spawn(move || {
                    let mut tally = Tally::new();
                    let mut failures = Vec::new();
                    for n in (worker..count).step_by(2) {
                        let mut rng = Rng::new(seed ^ (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                        let t = ALL[n % ALL.len()];
                        let tampered = tamper(t, &mut rng, lines, parsed);
                        match run(&tampered.bytes, Some(last)) {
                            Ok(_) => failures.push(format!("#{n} {t:?} NOT DETECTED: {}", tampered.what)),
                            Err(b) => {
                                *tally.entry((format!("{t:?}"), b.kind.as_str())).or_default() += 1;
                                if !tampered.expected.contains(&b.kind) {
                                    failures.push(format!(
                                        "#{n} {t:?} ({}): reported {b}, expected {:?}",
                                        tampered.what, tampered.expected
                                    ));
                                } else if !tampered.line.is_empty() && !tampered.line.contains(&b.line) {
                                    failures.push(format!(
                                        "#{n} {t:?} ({}): reported on the wrong line: {b}",
                                        tampered.what
                                    ));
                                }
                            }
                        }
                    }
                    (tally, failures)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).collect()
    });
    let mut tally = Tally::new();
    let mut failures = Vec::new();
    for (t, f) in results {
        for (k, v) in t {
            *tally.entry(k).or_default() += v;
        }
        failures.extend(f);
    }
    for ((t, kind), count) in &tally {
        println!("{t:>24} -> {kind:<24} {count}");
    }
    assert_eq!(tally.values().sum::<usize>() + failures.iter().filter(|f| f.contains("NOT DETECTED")).count(), count);
    assert!(failures.is_empty(), "seed {seed}: {} failures:\n{}", failures.len(), failures.join("\n"));
}

//! Shared by the integration tests and the benchmark: a seeded RNG and a synthetic export generator.
#![allow(dead_code)]

use std::io::{self, Write};

use audit::{next_link, AuditKey, ChainEvent, Checkpoint, ExportWriter, Link, GENESIS};
use serde_json::{json, Map, Value};

/// xorshift64* — tiny, seeded, reproducible.
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
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A seed from `AUDIT_TEST_SEED` or the clock; printed by the caller so failures reproduce.
pub fn seed() -> u64 {
    match std::env::var("AUDIT_TEST_SEED") {
        Ok(s) => s.trim().parse().unwrap_or(1),
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        }
    }
}

const WORDS: &[&str] = &[
    "portal",
    "service",
    "team",
    "owner",
    "deploy",
    "review",
    "catalog",
    "api",
    "gateway",
    "Zürich",
    "naïve",
    "日本語",
    "emoji😀",
    "quote\"d",
    "back\\slash",
    "tab\there",
    "line\nbreak",
    "nul\u{0}byte",
    "bell\u{7}",
    "del\u{7f}",
    "slash/ok",
    "€uro",
    "\u{2028}sep",
    "café",
];

fn text(rng: &mut Rng, words: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(rng.pick::<&str>(WORDS));
    }
    s
}

fn scalar(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(rng.next_u64()),
        3 => json!(-(rng.below(1_000_000) as i64) - 1),
        4 => json!(i64::MIN),
        5 => json!(u64::MAX),
        6 => json!(rng.below(100)),
        _ => {
            let words = 1 + rng.below(4);
            json!(text(rng, words))
        }
    }
}

fn value(rng: &mut Rng, depth: usize) -> Value {
    if depth >= 3 || rng.chance(55) {
        return scalar(rng);
    }
    if rng.chance(50) {
        let n = rng.below(4);
        Value::Array((0..n).map(|_| value(rng, depth + 1)).collect())
    } else {
        let mut m = Map::new();
        let n = rng.below(5);
        for _ in 0..n {
            m.insert(text(rng, 1), value(rng, depth + 1));
        }
        Value::Object(m)
    }
}

/// A varied event of roughly `payload_bytes` bytes of payload (0: small, varied shapes).
pub fn synthetic_event(rng: &mut Rng, index: u64, payload_bytes: usize) -> ChainEvent {
    let aggregate_type = rng.pick(&["organisation", "service", "publishing", "trust_rule"]).to_string();
    let mut payload = Map::new();
    payload.insert("actor".into(), json!(format!("user:{}", rng.below(500))));
    payload.insert("n".into(), value(rng, 0));
    payload.insert("detail".into(), value(rng, 0));
    if payload_bytes > 0 {
        let mut filler = String::new();
        while filler.len() + 200 < payload_bytes {
            filler.push_str(rng.pick::<&str>(WORDS));
            filler.push(' ');
        }
        payload.insert("description".into(), json!(filler));
        payload.insert(
            "changes".into(),
            json!({"field": *rng.pick(&["name", "owner", "tier"]), "from": text(rng, 2), "to": text(rng, 2), "version": rng.below(1000)}),
        );
    }
    let metadata = json!({
        "correlation_id": format!("{:016x}", rng.next_u64()),
        "actor": {"kind": "user", "id": rng.below(10_000)},
    });
    let micros = 1_790_000_000_000_000u64 + index * 1_234_567;
    ChainEvent {
        index,
        cursor: format!("{:020}", index * 3),
        position: index * 3,
        aggregate_id: format!("{}-{}", aggregate_type, rng.below(300)),
        aggregate_type,
        sequence: 1 + rng.below(50) as u64,
        event_type: rng.pick(&["Created", "Renamed", "OwnerChanged", "Deleted", "RequestSubmitted"]).to_string(),
        event_version: rng.pick(&["1", "2", "1.1"]).to_string(),
        payload: Value::Object(payload),
        metadata,
        recorded_at: format_micros(micros),
    }
}

/// RFC 3339 UTC with 6 fraction digits, from microseconds since the epoch (days to civil date: H. Hinnant).
pub fn format_micros(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub const TEST_SEED_HEX: &str = "4f3c2b1a09f8e7d6c5b4a392817f6e5d4c3b2a190817263544536271807f6e5d";

pub fn test_key() -> AuditKey {
    AuditKey::from_seed_hex(TEST_SEED_HEX).expect("seed")
}

/// Writes a full export of `events` synthetic events, a checkpoint after every `every`-th event and a final
/// one; returns the final checkpoint.
pub fn write_export<W: Write>(
    out: W,
    key: &AuditKey,
    seed: u64,
    events: u64,
    every: u64,
    payload_bytes: usize,
) -> io::Result<Checkpoint> {
    let mut rng = Rng::new(seed);
    let mut w = ExportWriter::new(out);
    w.write_header(1, &GENESIS)?;
    let mut link: Link = GENESIS;
    let mut last = None;
    for index in 1..=events {
        let event = synthetic_event(&mut rng, index, payload_bytes);
        link = next_link(&link, &event).map_err(io::Error::other)?;
        w.write_event(&event, &link).map_err(io::Error::other)?;
        if index % every == 0 || index == events {
            let cp = key.sign_checkpoint(index, &link, &format_micros(1_800_000_000_000_000 + index));
            w.write_checkpoint(&cp)?;
            last = Some(cp);
        }
    }
    if events == 0 {
        let cp = key.sign_checkpoint(0, &GENESIS, "2026-01-01T00:00:00.000000Z");
        w.write_checkpoint(&cp)?;
        last = Some(cp);
    }
    w.flush()?;
    last.ok_or_else(|| io::Error::other("no checkpoint"))
}

pub fn export_bytes(seed: u64, events: u64, every: u64, payload_bytes: usize) -> (Vec<u8>, Checkpoint) {
    let mut out = Vec::new();
    let last = write_export(&mut out, &test_key(), seed, events, every, payload_bytes).expect("export");
    (out, last)
}

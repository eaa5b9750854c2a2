//! The verifier's fast path for event lines.
//!
//! The verifier accepts only lines exactly as `ExportWriter` writes them, so an event line can be checked
//! against that template in one pass, without building any value: fixed field order, canonical integers,
//! canonical strings, and payload/metadata that are already canonical JSON (validated in place, then hashed as
//! they are). Whatever this scanner does not recognise (escapes in a hashed top-level string or in an object
//! key, deep nesting, anything non-canonical or invalid) returns `None`, and the general path (serde_json,
//! canonicalisation, re-encoding) decides. The scanner is therefore only required to be sound: when it accepts
//! a line, the general path accepts it too, with the same canonical event bytes (tested below).

use std::ops::Range;

use crate::event::EventParts;
use crate::Link;

/// Deeper than this, the general path decides (it has its own, slightly higher, limits).
const FAST_MAX_DEPTH: u32 = 100;

/// An event line recognised by the fast path; strings borrowed from the line.
pub(crate) struct FastEvent<'a> {
    pub(crate) index: u64,
    pub(crate) link: Link,
    pub(crate) parts: EventParts<'a>,
}

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cur<'_> {
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + s.len()) == Some(s) {
            self.i += s.len();
            Some(())
        } else {
            None
        }
    }

    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Digits of a canonical non-negative integer (no leading zero), at most u64::MAX.
    fn digits(&mut self) -> Option<u64> {
        let first = self.next()?;
        if !first.is_ascii_digit() {
            return None;
        }
        let mut v = u64::from(first - b'0');
        if first != b'0' {
            while let Some(c @ b'0'..=b'9') = self.peek() {
                v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
                self.i += 1;
            }
        }
        match self.peek() {
            Some(b'0'..=b'9' | b'.' | b'e' | b'E') => None,
            _ => Some(v),
        }
    }

    /// A canonical integer in `i64::MIN ..= u64::MAX`; `-0` is left to the general path.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
            let v = self.digits()?;
            if v == 0 || v > 1 << 63 {
                return None;
            }
        } else {
            self.digits()?;
        }
        Some(())
    }

    /// A string without escapes or control characters; returns the range of its contents.
    fn plain_string(&mut self) -> Option<Range<usize>> {
        self.lit(b"\"")?;
        let start = self.i;
        loop {
            match self.next()? {
                b'"' => return Some(start..self.i - 1),
                b'\\' => return None,
                c if c < 0x20 => return None,
                _ => {}
            }
        }
    }

    /// A string escaped exactly as the canonical writer escapes it.
    fn string(&mut self) -> Option<()> {
        self.lit(b"\"")?;
        loop {
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        self.lit(b"00")?;
                        let hi = self.next()?;
                        let lo = self.next()?;
                        let lo = match lo {
                            b'0'..=b'9' => lo - b'0',
                            b'a'..=b'f' => lo - b'a' + 10,
                            _ => return None,
                        };
                        let code = match hi {
                            b'0' => lo,
                            b'1' => 16 + lo,
                            _ => return None,
                        };
                        if matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                            return None;
                        }
                    }
                    _ => return None,
                },
                c if c < 0x20 => return None,
                _ => {}
            }
        }
    }

    /// A canonical JSON value: no whitespace, object keys (without escapes) strictly increasing.
    fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'{' => {
                if depth >= FAST_MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Some(());
                }
                let mut previous: Option<Range<usize>> = None;
                loop {
                    let key = self.plain_string()?;
                    if let Some(p) = previous {
                        if self.b[p] >= self.b[key.clone()] {
                            return None;
                        }
                    }
                    previous = Some(key);
                    self.lit(b":")?;
                    self.value(depth + 1)?;
                    match self.next()? {
                        b',' => {}
                        b'}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'[' => {
                if depth >= FAST_MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.value(depth + 1)?;
                    match self.next()? {
                        b',' => {}
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'"' => self.string(),
            b't' => self.lit(b"true"),
            b'f' => self.lit(b"false"),
            b'n' => self.lit(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn link(&mut self) -> Option<Link> {
        self.lit(b"\"")?;
        let hex = self.b.get(self.i..self.i + 64)?;
        self.i += 64;
        self.lit(b"\"")?;
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let nib = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            *o = (nib(pair[0])? << 4) | nib(pair[1])?;
        }
        Some(Link(out))
    }
}

/// Recognises an event line (without newline) exactly as the canonical writer writes it.
pub(crate) fn scan_event(text: &str) -> Option<FastEvent<'_>> {
    let mut c = Cur { b: text.as_bytes(), i: 0 };
    c.lit(b"{\"kind\":\"event\",\"index\":")?;
    let index = c.digits()?;
    c.lit(b",\"cursor\":")?;
    c.string()?;
    c.lit(b",\"position\":")?;
    let position = c.digits()?;
    c.lit(b",\"aggregate_type\":")?;
    let aggregate_type = c.plain_string()?;
    c.lit(b",\"aggregate_id\":")?;
    let aggregate_id = c.plain_string()?;
    c.lit(b",\"sequence\":")?;
    let sequence = c.digits()?;
    c.lit(b",\"event_type\":")?;
    let event_type = c.plain_string()?;
    c.lit(b",\"event_version\":")?;
    let event_version = c.plain_string()?;
    c.lit(b",\"payload\":")?;
    let start = c.i;
    c.value(0)?;
    let payload = start..c.i;
    c.lit(b",\"metadata\":")?;
    let start = c.i;
    c.value(0)?;
    let metadata = start..c.i;
    c.lit(b",\"recorded_at\":")?;
    let recorded_at = c.plain_string()?;
    c.lit(b",\"link\":")?;
    let link = c.link()?;
    c.lit(b"}")?;
    if c.i != text.len() {
        return None;
    }
    // Every range starts and ends next to an ASCII quote or delimiter, so these are char boundaries.
    let s = |r: Range<usize>| text.get(r);
    Some(FastEvent {
        index,
        link,
        parts: EventParts {
            index,
            position,
            aggregate_type: s(aggregate_type)?,
            aggregate_id: s(aggregate_id)?,
            sequence,
            event_type: s(event_type)?,
            event_version: s(event_version)?,
            payload: text.as_bytes().get(payload)?,
            metadata: text.as_bytes().get(metadata)?,
            recorded_at: s(recorded_at)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{parse_line, Line, LineBuffers};
    use crate::{ChainEvent, ExportLine};
    use serde_json::{json, Value};

    fn canonical_of(parts: &EventParts<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        parts.feed(|b| out.extend_from_slice(b)).expect("feed");
        out
    }

    /// What the general path concludes: the canonical event bytes, or None if it refuses the line.
    fn general(text: &str) -> Option<(u64, Link, Vec<u8>)> {
        let mut bufs = LineBuffers::default();
        let line = parse_line(text, &mut bufs).ok()?;
        if !bufs.is_canonical(&line, text.as_bytes()) {
            return None;
        }
        match line {
            Line::Event(e) => Some((e.index, e.link, canonical_of(&e.parts(&bufs)))),
            _ => None,
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const STRINGS: &[&str] =
        &["", "a", "b", "ab", "é", "😀", "q\"", "\\", "\n", "\u{1}", "\u{1f}", "\u{7f}", "/", "\t\r"];

    fn value(rng: &mut Rng, depth: u32) -> Value {
        match rng.below(if depth > 3 { 6 } else { 9 }) {
            0 => Value::Null,
            1 => json!(rng.below(2) == 0),
            2 => json!(rng.next()),
            3 => json!(-(rng.below(1 << 62) as i64) - 1),
            4 => json!(STRINGS[rng.below(STRINGS.len() as u64) as usize]),
            5 => json!(rng.below(11)),
            6 | 7 => {
                let mut m = serde_json::Map::new();
                for _ in 0..rng.below(4) {
                    m.insert(STRINGS[rng.below(STRINGS.len() as u64) as usize].to_owned(), value(rng, depth + 1));
                }
                Value::Object(m)
            }
            _ => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        }
    }

    #[test]
    fn fast_path_is_sound_and_usually_taken() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut taken = 0;
        let mut accepted_mutants = 0;
        for i in 0..3_000u64 {
            let text_field =
                |rng: &mut Rng| if rng.below(8) == 0 { "esc\"aped".to_owned() } else { format!("t{}", rng.below(50)) };
            let event = ChainEvent {
                index: i + 1,
                cursor: text_field(&mut rng),
                position: rng.next() >> rng.below(64),
                aggregate_type: text_field(&mut rng),
                aggregate_id: text_field(&mut rng),
                sequence: rng.below(10),
                event_type: text_field(&mut rng),
                event_version: "1".into(),
                payload: value(&mut rng, 0),
                metadata: value(&mut rng, 0),
                recorded_at: "2026-11-29T02:20:17.145000Z".into(),
            };
            let line = ExportLine::Event { event, link: Link([i as u8; 32]) }.to_ndjson().expect("encode");
            let line = line.trim_end_matches('\n');
            let expected = general(line).expect("the writer's output is accepted");
            if let Some(fe) = scan_event(line) {
                taken += 1;
                assert_eq!((fe.index, fe.link, canonical_of(&fe.parts)), expected, "{line}");
            }
            // Random single-byte mutations: whenever the fast path accepts, the general path agrees.
            for _ in 0..10 {
                let mut bytes = line.as_bytes().to_vec();
                let p = rng.below(bytes.len() as u64) as usize;
                bytes[p] =
                    *b"\"\\{}[],:-0123456789abcdefnlrstuE.e \x01\x7fA".get(rng.below(41) as usize).unwrap_or(&b'x');
                let Ok(text) = std::str::from_utf8(&bytes) else { continue };
                if let Some(fe) = scan_event(text) {
                    accepted_mutants += 1;
                    let got = (fe.index, fe.link, canonical_of(&fe.parts));
                    assert_eq!(
                        Some(got),
                        general(text),
                        "fast path accepted what the general path refuses or reads differently: {text}"
                    );
                }
            }
        }
        assert!(taken > 1_000, "fast path taken only {taken} times");
        assert!(accepted_mutants > 100, "mutants accepted: {accepted_mutants}");
    }

    #[test]
    fn refuses_what_it_cannot_vouch_for() {
        let base = ExportLine::Event {
            event: ChainEvent {
                index: 1,
                cursor: "c".into(),
                position: 2,
                aggregate_type: "t".into(),
                aggregate_id: "i".into(),
                sequence: 3,
                event_type: "e".into(),
                event_version: "1".into(),
                payload: json!({"a": [1, -2, "x"], "b": {"c": null}}),
                metadata: json!({}),
                recorded_at: "r".into(),
            },
            link: Link([0xab; 32]),
        }
        .to_ndjson()
        .expect("encode");
        let base = base.trim_end();
        assert!(scan_event(base).is_some());
        for (from, to) in [
            ("\"a\":", "\"b\":"),        // keys out of order (and duplicate)
            ("[1,", "[01,"),             // leading zero
            ("-2", "-0"),                // negative zero
            ("-2", "2.0"),               // float
            ("\"x\"", "\"\\u0041\""),    // non-canonical escape
            ("\"x\"", "\"\\/\""),        // non-canonical escape
            ("{\"c\"", "{ \"c\""),       // whitespace
            ("abab", "ABAB"),            // upper-case hex
            ("\"c\":null", "\"c\":nul"), // invalid literal
            ("\"i\"", "\"\\u0069\""),    // escape in a hashed top-level string
        ] {
            let changed = base.replacen(from, to, 1);
            assert_ne!(changed, base, "{from}");
            assert!(scan_event(&changed).is_none(), "accepted {changed}");
        }
        assert!(scan_event(&format!("{base} ")).is_none());
        assert!(scan_event(&base.replace("-2", "-9223372036854775809")).is_none());
        assert!(scan_event(&base.replace("-2", "-9223372036854775808")).is_some());
        assert!(scan_event(&base.replace("[1,", "[18446744073709551615,")).is_some());
        assert!(scan_event(&base.replace("[1,", "[18446744073709551616,")).is_none());
    }
}

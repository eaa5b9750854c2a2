//! Canonical JSON (`cj` in docs/AUDIT.md).
//!
//! No insignificant whitespace; object members sorted by key in UTF-8 byte order (= code point order);
//! strings escaped exactly as serde_json's compact writer does (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`,
//! other control characters as `\u00xx`, nothing else); integers in decimal (`i64::MIN ..= u64::MAX`);
//! floating-point numbers, integers outside that range and duplicate object keys are refused.
//! The output is byte-identical to Python's
//! `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` for such values.
//!
//! One implementation serves both inputs: a `serde_json::Value` (the server side) and JSON text straight
//! from an export line (the verifier), by driving a serde `Visitor` that writes the canonical form as the
//! input is visited. Nothing is allocated when the input is already canonical, which is what exports hold.

use std::cmp::Ordering;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Deepest nesting of arrays and objects accepted (serde_json's own parser stops at 128 as well).
pub const MAX_DEPTH: u32 = 128;

/// Why a JSON value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// A floating-point number, or an integer outside `i64::MIN ..= u64::MAX` (which JSON parsers read as one).
    #[error("number {0} is not an integer in i64::MIN..=u64::MAX: audit events carry integers only")]
    NotAnInteger(String),
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The same key twice in one object (JSON text only: a `Value` cannot hold it).
    #[error("duplicate object key {0:?}")]
    DuplicateKey(String),
    /// A field longer than the 4 GiB its u32 length prefix can describe.
    #[error("{0} is longer than 4 GiB")]
    TooLong(&'static str),
    /// JSON text that does not parse.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
}

/// `cj(value)`: the canonical JSON bytes of a value.
pub fn canonical_json(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write_canonical_json(value, &mut out)?;
    Ok(out)
}

/// Appends `cj(value)` to `out` (on error, `out` holds an unspecified partial value).
pub fn write_canonical_json(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    let mut scratch = Scratch::default();
    let result = CanonSeed { out, scratch: &mut scratch, depth: 0 }.deserialize(value);
    result.map_err(|e| scratch.failure.take().unwrap_or_else(|| CanonicalError::InvalidJson(e.to_string())))
}

/// `cj` of JSON text: parses `text` (one JSON value, surrounding whitespace allowed) and returns its
/// canonical form. Refuses duplicate keys, which a `Value` would silently collapse.
pub fn canonical_json_text(text: &str) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    let mut scratch = Scratch::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let result =
        CanonSeed { out: &mut out, scratch: &mut scratch, depth: 0 }.deserialize(&mut de).and_then(|()| de.end());
    match result {
        Ok(()) => Ok(out),
        Err(e) => Err(scratch.failure.take().unwrap_or_else(|| CanonicalError::InvalidJson(e.to_string()))),
    }
}

/// Reusable working memory of the canonicaliser; `failure` records the typed reason behind a serde error.
#[derive(Default)]
pub(crate) struct Scratch {
    members: Vec<Member>,
    pub(crate) failure: Option<CanonicalError>,
}

/// One object member already written to the output: `"key":value` at `start..end`, key quotes included in
/// `start..key_end`; `escaped` when the written key contains a backslash escape.
#[derive(Clone, Copy)]
struct Member {
    start: usize,
    key_end: usize,
    end: usize,
    escaped: bool,
}

fn fail<E: de::Error>(scratch: &mut Scratch, error: CanonicalError) -> E {
    let e = E::custom(&error);
    scratch.failure = Some(error);
    e
}

/// Deserializes any JSON value, appending its canonical form to `out`.
pub(crate) struct CanonSeed<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) scratch: &'a mut Scratch,
    pub(crate) depth: u32,
}

impl<'de> DeserializeSeed<'de> for CanonSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CanonSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        write_u64(self.out, v);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        if v < 0 {
            self.out.push(b'-');
        }
        write_u64(self.out, v.unsigned_abs());
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        Err(fail(self.scratch, CanonicalError::NotAnInteger(v.to_string())))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        write_json_string(self.out, v);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let CanonSeed { out, scratch, depth } = self;
        if depth >= MAX_DEPTH {
            return Err(fail(scratch, CanonicalError::TooDeep));
        }
        out.push(b'[');
        let mut first = true;
        loop {
            let mark = out.len();
            if !first {
                out.push(b',');
            }
            let seed = CanonSeed { out: &mut *out, scratch: &mut *scratch, depth: depth + 1 };
            if seq.next_element_seed(seed)?.is_none() {
                out.truncate(mark);
                break;
            }
            first = false;
        }
        out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let CanonSeed { out, scratch, depth } = self;
        if depth >= MAX_DEPTH {
            return Err(fail(scratch, CanonicalError::TooDeep));
        }
        out.push(b'{');
        let base = scratch.members.len();
        let mut sorted = true;
        loop {
            let mark = out.len();
            if scratch.members.len() > base {
                out.push(b',');
            }
            let start = out.len();
            let Some(escaped) = map.next_key_seed(KeySeed { out: &mut *out })? else {
                out.truncate(mark);
                break;
            };
            let key_end = out.len();
            out.push(b':');
            map.next_value_seed(CanonSeed { out: &mut *out, scratch: &mut *scratch, depth: depth + 1 })?;
            let member = Member { start, key_end, end: out.len(), escaped };
            if sorted {
                if let Some(previous) = scratch.members[base..].last() {
                    sorted = compare_keys(out, previous, &member) == Ordering::Less;
                }
            }
            scratch.members.push(member);
        }
        let result = if sorted { Ok(()) } else { reorder(out, &scratch.members[base..]) };
        scratch.members.truncate(base);
        result.map_err(|e| fail(scratch, e))?;
        out.push(b'}');
        Ok(())
    }
}

/// Deserializes an object key, appending it as a JSON string; returns whether it needed escapes.
struct KeySeed<'a> {
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(write_json_string(self.out, v))
    }
}

/// The key of a written member, unescaped (only the escapes [`write_json_string`] produces occur).
fn key_bytes<'o>(out: &'o [u8], m: &Member) -> std::borrow::Cow<'o, [u8]> {
    let inner = &out[m.start + 1..m.key_end - 1];
    if !m.escaped {
        return std::borrow::Cow::Borrowed(inner);
    }
    let mut key = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let b = inner[i];
        if b != b'\\' {
            key.push(b);
            i += 1;
            continue;
        }
        let (byte, width) = match inner.get(i + 1) {
            Some(b'b') => (0x08, 2),
            Some(b'f') => (0x0c, 2),
            Some(b'n') => (b'\n', 2),
            Some(b'r') => (b'\r', 2),
            Some(b't') => (b'\t', 2),
            Some(b'u') => {
                let hex = |j: usize| inner.get(i + j).and_then(|c| char::from(*c).to_digit(16)).unwrap_or(0) as u8;
                ((hex(4) << 4) | hex(5), 6)
            }
            Some(c) => (*c, 2),
            None => (b'\\', 1),
        };
        key.push(byte);
        i += width;
    }
    std::borrow::Cow::Owned(key)
}

fn compare_keys(out: &[u8], a: &Member, b: &Member) -> Ordering {
    key_bytes(out, a).cmp(&key_bytes(out, b))
}

/// Rewrites the members of one object (already in `out`, in input order) in key order.
fn reorder(out: &mut Vec<u8>, members: &[Member]) -> Result<(), CanonicalError> {
    let Some(first) = members.first() else { return Ok(()) };
    let base = first.start;
    let mut keyed: Vec<(Vec<u8>, Member)> = members.iter().map(|m| (key_bytes(out, m).into_owned(), *m)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = keyed.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(CanonicalError::DuplicateKey(String::from_utf8_lossy(&pair[0].0).into_owned()));
    }
    let segment = out[base..].to_vec();
    out.truncate(base);
    for (i, (_, m)) in keyed.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&segment[m.start - base..m.end - base]);
    }
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";
const UU: u8 = b'u';
const __: u8 = 0;

/// For each byte: 0 when written as is, else the character after the backslash (`u` for `\u00xx`).
/// The same table as serde_json's compact formatter.
static ESCAPE: [u8; 256] = [
    //   1   2   3   4   5   6   7   8   9   A   B   C   D   E   F
    UU, UU, UU, UU, UU, UU, UU, UU, b'b', b't', b'n', UU, b'f', b'r', UU, UU, // 0
    UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, // 1
    __, __, b'"', __, __, __, __, __, __, __, __, __, __, __, __, __, // 2
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 3
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 4
    __, __, __, __, __, __, __, __, __, __, __, __, b'\\', __, __, __, // 5
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 6
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 7
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 8
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 9
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // A
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // B
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // C
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // D
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // E
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // F
];

/// Appends `s` as a JSON string literal, escaped as serde_json's compact writer does. Returns whether any
/// escape was needed.
pub(crate) fn write_json_string(out: &mut Vec<u8>, s: &str) -> bool {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        let e = ESCAPE[usize::from(b)];
        if e == 0 {
            continue;
        }
        escaped = true;
        out.extend_from_slice(&bytes[start..i]);
        if e == UU {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.extend_from_slice(&[b'\\', e]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
    escaped
}

/// Appends `v` in decimal.
pub(crate) fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cj(v: &Value) -> String {
        String::from_utf8(canonical_json(v).expect("canonical")).expect("utf-8")
    }

    fn cjt(t: &str) -> Result<String, CanonicalError> {
        canonical_json_text(t).map(|b| String::from_utf8(b).expect("utf-8"))
    }

    #[test]
    fn scalars() {
        assert_eq!(cj(&json!(null)), "null");
        assert_eq!(cj(&json!(true)), "true");
        assert_eq!(cj(&json!(false)), "false");
        assert_eq!(cj(&json!(0)), "0");
        assert_eq!(cj(&json!(-1)), "-1");
        assert_eq!(cj(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(cj(&json!(i64::MIN)), "-9223372036854775808");
        assert_eq!(cj(&json!("")), "\"\"");
    }

    #[test]
    fn string_escapes_match_serde_json() {
        let s = "q\" b\\ \u{8}\u{c}\n\r\t \u{0}\u{1f}\u{7f} / é 😀 \u{2028}";
        assert_eq!(cj(&json!(s)), "\"q\\\" b\\\\ \\b\\f\\n\\r\\t \\u0000\\u001f\u{7f} / é 😀 \u{2028}\"");
        assert_eq!(canonical_json(&json!(s)).expect("cj"), serde_json::to_vec(&json!(s)).expect("json"));
        assert_eq!(cj(&json!("\u{1b}")), "\"\\u001b\"", "lower-case hex");
    }

    #[test]
    fn objects_sorted_by_code_point_nested_and_compact() {
        let v = json!({"b": 1, "a": [1, {"z": null, "é": 2, "e": 3, "Z": 4}], "": {}, "aa": []});
        assert_eq!(cj(&v), r#"{"":{},"a":[1,{"Z":4,"e":3,"z":null,"é":2}],"aa":[],"b":1}"#);
        // Code point order, not UTF-16 order: U+FFFF sorts before U+1F600.
        assert_eq!(cj(&json!({"😀": 1, "\u{ffff}": 2})), "{\"\u{ffff}\":2,\"😀\":1}");
    }

    #[test]
    fn text_input_is_reordered_and_unescaped_then_reescaped() {
        assert_eq!(cjt(" { \"b\" : 1 , \"a\" : [ 1 , 2 ] } ").expect("cj"), r#"{"a":[1,2],"b":1}"#);
        assert_eq!(cjt(r#""\u00e9\/\u0041\ud83d\ude00""#).expect("cj"), "\"é/A😀\"");
        // Keys compared unescaped: "\n" (0x0a) sorts before "!" (0x21) although its escape "\\n" would not.
        assert_eq!(cjt(r#"{"!":1,"\n":2}"#).expect("cj"), r#"{"\n":2,"!":1}"#);
        assert_eq!(cjt(r#"{"\u0000":1,"\"":2,"\\":3}"#).expect("cj"), r#"{"\u0000":1,"\"":2,"\\":3}"#);
    }

    #[test]
    fn refusals() {
        assert!(matches!(canonical_json(&json!(1.5)), Err(CanonicalError::NotAnInteger(_))));
        assert!(matches!(canonical_json(&json!({"a": [0.0]})), Err(CanonicalError::NotAnInteger(_))));
        assert!(matches!(cjt("1.0"), Err(CanonicalError::NotAnInteger(_))));
        assert!(matches!(cjt("1e3"), Err(CanonicalError::NotAnInteger(_))));
        assert!(matches!(cjt("18446744073709551616"), Err(CanonicalError::NotAnInteger(_))));
        assert!(matches!(cjt("-9223372036854775809"), Err(CanonicalError::NotAnInteger(_))));
        assert!(matches!(cjt(r#"{"a":1,"a":1}"#), Err(CanonicalError::DuplicateKey(k)) if k == "a"));
        assert!(matches!(cjt(r#"{"b":1,"a":1,"b":2}"#), Err(CanonicalError::DuplicateKey(k)) if k == "b"));
        assert!(matches!(cjt(r#"{"a":1,"\u0061":2}"#), Err(CanonicalError::DuplicateKey(_))));
        assert!(matches!(cjt("{\"a\":1,}"), Err(CanonicalError::InvalidJson(_))));
        assert!(matches!(cjt("[1] x"), Err(CanonicalError::InvalidJson(_))));
        assert!(matches!(cjt(r#""\ud800""#), Err(CanonicalError::InvalidJson(_))));
        let mut deep = Value::Null;
        for _ in 0..=MAX_DEPTH {
            deep = json!([deep]);
        }
        assert_eq!(canonical_json(&deep), Err(CanonicalError::TooDeep));
    }

    #[test]
    fn negative_zero_is_refused_or_zero_consistently() {
        // serde_json reads "-0" as a float; either way it never hashes as "-0".
        match cjt("-0") {
            Ok(s) => assert_eq!(s, "0"),
            Err(e) => assert!(matches!(e, CanonicalError::NotAnInteger(_))),
        }
    }

    #[test]
    fn value_and_text_paths_agree() {
        let v = json!({"k": ["x\u{1}y", -5, 7, {"b": {"d": 1, "c": 2}, "a": true}], "€": "\\"});
        let pretty = serde_json::to_string_pretty(&v).expect("json");
        assert_eq!(cj(&v), cjt(&pretty).expect("cj"));
        assert_eq!(cj(&v), cjt(&cj(&v)).expect("cj"), "idempotent");
    }
}

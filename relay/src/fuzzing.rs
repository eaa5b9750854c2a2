//! The properties the fuzz targets check, written once: `fuzz/` (cargo-fuzz, nightly) calls each function on the bytes
//! libFuzzer makes up, and `relay/tests/fuzz_corpus.rs` (stable, in CI) calls it on every committed corpus file and
//! fixed crash. Each function takes arbitrary bytes, returns when the property holds (a refused input is fine), and
//! panics when it does not. Not part of the crate's API; see docs/FUZZING.md.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::agent::Hello;
use crate::browser::{ClientMessage, CloseCode, FrameError, MAX_CONTROL_FRAME, MAX_DIMENSION};
use crate::mux::{Frame, MuxError, Window, INITIAL_WINDOW, MAX_DATA};

/// The names of the fuzz targets, which are also the folders of `fuzz/corpus/` and `fuzz/regressions/`.
pub const TARGETS: [&str; 3] = ["mux_frame", "browser_message", "agent_hello"];

/// Runs the check of the target named `target` (one of [`TARGETS`]) on `data`.
pub fn check(target: &str, data: &[u8]) {
    match target {
        "mux_frame" => mux_frame(data),
        "browser_message" => browser_message(data),
        "agent_hello" => agent_hello(data),
        other => panic!("no fuzz target named {other}"),
    }
}

/// `mux_frame`: [`Frame::decode`] never panics and refuses exactly what the frame layout refuses (see
/// [`layout_refusal`]); a frame it accepts is canonical (encoding it gives back exactly the input, so
/// `decode(encode(frame)) == frame`), its `Data` stays within [`MAX_DATA`], and it fits a fresh [`Window`].
pub fn mux_frame(data: &[u8]) {
    let decoded = Frame::decode(data);
    assert_eq!(decoded.as_ref().err(), layout_refusal(data).as_ref(), "decode gave {decoded:?}");
    let Ok(frame) = decoded else {
        return;
    };
    let encoded = frame.encode();
    assert_eq!(encoded, data, "{frame:?} was decoded from bytes that are not its encoding");
    assert_eq!(Frame::decode(&encoded).as_ref(), Ok(&frame), "{frame:?} does not survive encode then decode");
    match &frame {
        Frame::Data { session, bytes } => {
            assert!(bytes.len() <= MAX_DATA, "a Data frame of {} bytes was accepted", bytes.len());
            assert_eq!(Frame::encode_data(*session, bytes), encoded, "encode_data disagrees with encode");
            // Any single accepted frame fits the window a session starts with.
            let mut window = Window::new(*session);
            assert!(
                window.consume(bytes.len()).is_ok(),
                "a Data frame of {} bytes overruns a fresh window",
                bytes.len()
            );
        }
        Frame::Credit { session, bytes } => {
            let mut window = Window::new(*session);
            window.grant(*bytes);
            assert!(window.available() <= INITIAL_WINDOW, "a credit grew the window past INITIAL_WINDOW");
        }
        _ => {}
    }
}

/// `browser_message`: [`ClientMessage::parse`] never panics, and accepts exactly the control messages docs/API.md
/// describes: a JSON object of at most [`MAX_CONTROL_FRAME`] bytes with a known `type`, exactly that type's fields
/// (each once) and terminal sizes in 1..=[`MAX_DIMENSION`]. Bytes that are not UTF-8 are taken lossily (the gateway
/// closes on those with 1007 before parsing).
pub fn browser_message(data: &[u8]) {
    let text = utf8(data);
    let parsed = ClientMessage::parse(&text);
    let documented = documented_client_message(&text);
    match (&parsed, &documented) {
        (Ok(message), Some(expected)) => assert_eq!(message, expected, "parsed differently than documented"),
        (Ok(message), None) => panic!("accepted {message:?}, which the protocol does not allow"),
        (Err(error), Some(expected)) => panic!("refused the valid {expected:?}: {error}"),
        (Err(_), None) => {}
    }
    match parsed {
        Ok(ClientMessage::Resize { cols, rows }) => {
            assert!((1..=MAX_DIMENSION).contains(&cols) && (1..=MAX_DIMENSION).contains(&rows), "{cols}x{rows}");
        }
        Ok(_) => {}
        Err(error) => {
            // Too large is told apart from malformed, whatever the text holds.
            let too_large = text.len() > MAX_CONTROL_FRAME;
            assert_eq!(matches!(error, FrameError::TooLarge(_)), too_large, "{error} for {} bytes", text.len());
            let expected = if too_large { CloseCode::TooLarge } else { CloseCode::ProtocolError };
            assert_eq!(error.close_code(), expected, "{error}");
        }
    }
}

/// `agent_hello`: the gateway's parse of the agent's first message ([`Hello::parse`]) never panics, accepts only a
/// JSON object whose `type` is `"hello"`, and a hello it accepts survives serialising and parsing again unchanged.
pub fn agent_hello(data: &[u8]) {
    let text = utf8(data);
    let Some(hello) = Hello::parse(&text) else {
        return;
    };
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|error| panic!("{text:?}: {error}"));
    assert_eq!(value.get("type").and_then(serde_json::Value::as_str), Some("hello"), "accepted {text:?}");
    let json = serde_json::to_string(&hello).unwrap_or_else(|error| panic!("{hello:?} does not serialise: {error}"));
    let again = Hello::parse(&json);
    assert_eq!(again.as_ref(), Some(&hello), "{json} does not parse back: {again:?}");
}

/// Why the frame layout (`[kind u8][session u32 BE][body]`, fixed-size bodies but `Data`'s) refuses `data`, if it
/// does, worked out from the lengths alone rather than as [`Frame::decode`] does it.
fn layout_refusal(data: &[u8]) -> Option<MuxError> {
    let Some((&kind, rest)) = data.split_first() else {
        return Some(MuxError::Truncated);
    };
    let body = rest.len().checked_sub(4);
    // The body each known kind must have: exactly that many bytes, or (`Data`) at most MAX_DATA.
    let (length, exact) = match kind {
        0x01 => (7, true),
        0x02 | 0x07 => (0, true),
        0x03 | 0x08 => (MAX_DATA, false),
        0x04..=0x06 => (4, true),
        // A known kind comes first: a short frame of an unknown kind is refused as truncated.
        _ if body.is_none() => return Some(MuxError::Truncated),
        other => return Some(MuxError::UnknownKind(other)),
    };
    match body {
        None => Some(MuxError::Truncated),
        Some(body) if exact && body < length => Some(MuxError::Truncated),
        Some(body) if body > length => Some(MuxError::BadLength(data.len())),
        _ if kind == 0x01 && data[5] > 1 => Some(MuxError::UnknownSessionKind(data[5])),
        _ => None,
    }
}

fn utf8(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// The message docs/API.md's "Terminal WebSocket" says `text` is, if any, worked out without `ClientMessage`'s serde
/// derive (from a `serde_json::Value`), so that the two can be compared.
fn documented_client_message(text: &str) -> Option<ClientMessage> {
    if text.len() > MAX_CONTROL_FRAME {
        return None;
    }
    let Object(fields) = serde_json::from_str::<Object>(text).ok()?;
    let keys: BTreeSet<&str> = fields.iter().map(|(key, _)| key.as_str()).collect();
    if keys.len() != fields.len() {
        return None; // A key given twice.
    }
    let field = |name: &str| fields.iter().find(|(key, _)| key == name).map(|(_, value)| value);
    let dimension = |name: &str| {
        field(name)?.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| (1..=MAX_DIMENSION).contains(n))
    };
    let (message, expected_keys): (ClientMessage, &[&str]) = match field("type")?.as_str()? {
        "auth" => {
            // `session` and `offset` are optional (null is absent); an offset needs a session.
            let session = match field("session") {
                None | Some(Value::Null) => None,
                Some(value) => Some(value.as_str()?.to_owned()),
            };
            let offset = match field("offset") {
                None | Some(Value::Null) => None,
                Some(value) => Some(value.as_u64()?),
            };
            if session.is_none() && offset.is_some() {
                return None;
            }
            let message = ClientMessage::Auth { ticket: field("ticket")?.as_str()?.to_owned(), session, offset };
            let allowed: BTreeSet<&str> = ["type", "ticket", "session", "offset"].into();
            return (keys.is_subset(&allowed) && keys.contains("ticket")).then_some(message);
        }
        "resize" => {
            (ClientMessage::Resize { cols: dimension("cols")?, rows: dimension("rows")? }, &["type", "cols", "rows"])
        }
        "ping" => (ClientMessage::Ping {}, &["type"]),
        "ack" => (ClientMessage::Ack { offset: field("offset")?.as_u64()? }, &["type", "offset"]),
        _ => return None,
    };
    (keys == expected_keys.iter().copied().collect()).then_some(message)
}

/// A JSON object with its members in order, duplicates kept (`serde_json::Value` keeps only the last of each key).
struct Object(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Object;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Object(members))
            }
        }
        deserializer.deserialize_map(Members).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_parser_knows_the_documented_messages() {
        assert_eq!(
            documented_client_message(r#" {"ticket":"t","type":"auth"} "#),
            Some(ClientMessage::Auth { ticket: "t".into(), session: None, offset: None })
        );
        assert_eq!(
            documented_client_message(r#"{"type":"auth","ticket":"t","session":"s","offset":5}"#),
            Some(ClientMessage::Auth { ticket: "t".into(), session: Some("s".into()), offset: Some(5) })
        );
        assert_eq!(
            documented_client_message(r#"{"type":"resize","cols":1,"rows":1000}"#),
            Some(ClientMessage::Resize { cols: 1, rows: 1000 })
        );
        assert_eq!(documented_client_message(r#"{"type":"ping"}"#), Some(ClientMessage::Ping {}));
        assert_eq!(documented_client_message(r#"{"type":"ack","offset":0}"#), Some(ClientMessage::Ack { offset: 0 }));
        for refused in [
            r#"{"type":"ping","type":"ping"}"#,
            r#"{"type":"resize","cols":80,"rows":24,"rows":24}"#,
            r#"{"type":"resize","cols":80.0,"rows":24}"#,
            r#"{"type":"resize","cols":80,"rows":1001}"#,
            r#"{"type":"ping","x":null}"#,
            r#"{"type":"auth"}"#,
            r#"{"type":"ack","offset":-1}"#,
            r#"{"type":"ack"}"#,
            r#"{"type":"auth","ticket":"t","offset":1}"#,
            r#"{"type":"auth","ticket":"t","session":"s","offset":1.5}"#,
            r#"{"type":"auth","ticket":"t","session":7}"#,
            r#"{"type":"auth","ticket":"t","resume":true}"#,
            r#"["ping"]"#,
            "",
        ] {
            assert_eq!(documented_client_message(refused), None, "{refused}");
        }
    }

    #[test]
    fn the_frame_layout_refuses_by_length() {
        assert_eq!(layout_refusal(&[]), Some(MuxError::Truncated));
        assert_eq!(layout_refusal(&[0x09, 0, 0]), Some(MuxError::Truncated));
        assert_eq!(layout_refusal(&[0x09, 0, 0, 0, 1]), Some(MuxError::UnknownKind(9)));
        assert_eq!(layout_refusal(&[0x01, 0, 0, 0, 1, 2, 0, 80, 0, 24, 0, 0]), Some(MuxError::UnknownSessionKind(2)));
        assert_eq!(layout_refusal(&[0x01, 0, 0, 0, 1, 1, 0, 80, 0, 24, 0]), Some(MuxError::Truncated));
        assert_eq!(layout_refusal(&[0x07, 0, 0, 0, 1, 0]), Some(MuxError::BadLength(6)));
        assert_eq!(layout_refusal(&[0x03, 0, 0, 0, 1]), None);
        let mut data = vec![0x03, 0, 0, 0, 1];
        data.resize(5 + MAX_DATA, 0);
        assert_eq!(layout_refusal(&data), None);
        data.push(0);
        assert_eq!(layout_refusal(&data), Some(MuxError::BadLength(6 + MAX_DATA)));
    }

    #[test]
    fn each_check_passes_on_valid_input() {
        for frame in [
            Frame::Open { session: 1, kind: crate::mux::SessionKind::Terminal, cols: 80, rows: 24, port: 0 },
            Frame::Data { session: 1, bytes: vec![0; MAX_DATA] },
            Frame::Credit { session: 1, bytes: u32::MAX },
        ] {
            check("mux_frame", &frame.encode());
        }
        check("browser_message", br#"{"type":"resize","cols":80,"rows":24}"#);
        check("agent_hello", br#"{"type":"hello","token":"t","workspace":"w","tags":{"EDITOR":"vim"}}"#);
    }
}

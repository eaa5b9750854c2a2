//! The NDJSON export line format `gatehouse-audit/1`: writing and parsing lines.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

use crate::canonical::{write_canonical_json, write_json_string, write_u64, CanonSeed, CanonicalError, Scratch};
use crate::event::EventParts;
use crate::{hex, ChainEvent, Checkpoint, KeyId, Link};

/// The value of the header's `format` field.
pub const FORMAT: &str = "gatehouse-audit/1";

/// Longest line the parser and the verifier accept, in bytes (without the newline).
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// The first line of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Chain index of the first event in the file (1 for a full export).
    pub first_index: u64,
    /// Link of event `first_index - 1` ([`GENESIS`](crate::GENESIS) when `first_index` is 1).
    pub previous_link: Link,
}

/// One line of an export, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportLine {
    /// `{"kind":"header",…}`
    Header(Header),
    /// `{"kind":"event",…}`: the event and its stored link.
    Event {
        /// The event.
        event: ChainEvent,
        /// The link stored with it (the verifier recomputes and compares it).
        link: Link,
    },
    /// `{"kind":"checkpoint",…}`
    Checkpoint(Checkpoint),
}

/// A line that does not parse as a `gatehouse-audit/1` line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Why an export line could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The event has no canonical encoding (e.g. a float in its payload).
    #[error("event cannot be encoded: {0}")]
    Canonical(#[from] CanonicalError),
    /// The writer failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ExportLine {
    /// Parses one line (without or with its trailing newline). Unknown, missing, duplicate or misplaced fields,
    /// non-lower-case hex, floats and duplicate keys in payload/metadata are refused; otherwise any JSON encoding
    /// of the content is accepted (whitespace, member order, escapes), e.g. a checkpoint re-serialised by an API.
    /// [`verify`](crate::verify) is stricter: it requires each line exactly as [`ExportWriter`] writes it.
    /// Payload and metadata are returned in canonical form.
    pub fn parse(line: &str) -> Result<ExportLine, ParseError> {
        let mut bufs = LineBuffers::default();
        match parse_line(line, &mut bufs)? {
            Line::Header(h) => Ok(ExportLine::Header(h)),
            Line::Checkpoint(c) => Ok(ExportLine::Checkpoint(c)),
            Line::Event(e) => {
                let value = |bytes: &[u8]| serde_json::from_slice(bytes).map_err(|e| ParseError(e.to_string()));
                let event = ChainEvent {
                    index: e.index,
                    cursor: e.cursor.into_owned(),
                    position: e.position,
                    aggregate_type: e.aggregate_type.into_owned(),
                    aggregate_id: e.aggregate_id.into_owned(),
                    sequence: e.sequence,
                    event_type: e.event_type.into_owned(),
                    event_version: e.event_version.into_owned(),
                    payload: value(&bufs.payload)?,
                    metadata: value(&bufs.metadata)?,
                    recorded_at: e.recorded_at.into_owned(),
                };
                Ok(ExportLine::Event { event, link: e.link })
            }
        }
    }

    /// The line as written in an export, newline included.
    pub fn to_ndjson(&self) -> Result<String, CanonicalError> {
        let mut out = Vec::new();
        match self {
            ExportLine::Header(h) => encode_header(&mut out, h.first_index, &h.previous_link),
            ExportLine::Event { event, link } => encode_event(&mut out, event, link, &mut Vec::new(), &mut Vec::new())?,
            ExportLine::Checkpoint(c) => encode_checkpoint(&mut out, c),
        }
        // Only JSON text built from `&str`s and ASCII was written.
        String::from_utf8(out).map_err(|e| CanonicalError::InvalidJson(e.to_string()))
    }
}

impl Checkpoint {
    /// Parses a checkpoint line, e.g. the last line of an earlier export (to use as trusted checkpoint).
    pub fn from_line(line: &str) -> Result<Checkpoint, ParseError> {
        match ExportLine::parse(line)? {
            ExportLine::Checkpoint(c) => Ok(c),
            _ => Err(ParseError("not a checkpoint line".into())),
        }
    }

    /// The checkpoint line, newline included.
    pub fn to_line(&self) -> String {
        let mut out = Vec::new();
        encode_checkpoint(&mut out, self);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Writes export lines in the exact `gatehouse-audit/1` form (field order as documented, payload and
/// metadata in canonical JSON, one `write_all` per line). Wrap files and sockets in a `BufWriter`.
///
/// The writer does not check the sequence it is given: an export is a header, then events in chain order
/// with each checkpoint right after the event it covers, and must end with a checkpoint of the last event.
pub struct ExportWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    payload: Vec<u8>,
    metadata: Vec<u8>,
}

impl<W: Write> ExportWriter<W> {
    /// A writer on `inner`.
    pub fn new(inner: W) -> Self {
        ExportWriter { inner, buf: Vec::with_capacity(4096), payload: Vec::new(), metadata: Vec::new() }
    }

    /// Writes the header line.
    pub fn write_header(&mut self, first_index: u64, previous_link: &Link) -> io::Result<()> {
        self.buf.clear();
        encode_header(&mut self.buf, first_index, previous_link);
        self.inner.write_all(&self.buf)
    }

    /// Writes an event line with its link.
    pub fn write_event(&mut self, event: &ChainEvent, link: &Link) -> Result<(), ExportError> {
        self.buf.clear();
        encode_event(&mut self.buf, event, link, &mut self.payload, &mut self.metadata)?;
        Ok(self.inner.write_all(&self.buf)?)
    }

    /// Writes a checkpoint line.
    pub fn write_checkpoint(&mut self, checkpoint: &Checkpoint) -> io::Result<()> {
        self.buf.clear();
        encode_checkpoint(&mut self.buf, checkpoint);
        self.inner.write_all(&self.buf)
    }

    /// Writes any line.
    pub fn write_line(&mut self, line: &ExportLine) -> Result<(), ExportError> {
        match line {
            ExportLine::Header(h) => Ok(self.write_header(h.first_index, &h.previous_link)?),
            ExportLine::Event { event, link } => self.write_event(event, link),
            ExportLine::Checkpoint(c) => Ok(self.write_checkpoint(c)?),
        }
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Unwraps the underlying writer (not flushed).
    pub fn into_inner(self) -> W {
        self.inner
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(hex::encode(bytes).as_bytes());
    out.push(b'"');
}

fn encode_header(out: &mut Vec<u8>, first_index: u64, previous_link: &Link) {
    out.extend_from_slice(b"{\"kind\":\"header\",\"format\":\"");
    out.extend_from_slice(FORMAT.as_bytes());
    out.extend_from_slice(b"\",\"first_index\":");
    write_u64(out, first_index);
    out.extend_from_slice(b",\"previous_link\":");
    push_hex(out, &previous_link.0);
    out.extend_from_slice(b"}\n");
}

/// An event line's fields as written, payload and metadata already canonical.
pub(crate) struct EventText<'a> {
    pub(crate) index: u64,
    pub(crate) cursor: &'a str,
    pub(crate) position: u64,
    pub(crate) aggregate_type: &'a str,
    pub(crate) aggregate_id: &'a str,
    pub(crate) sequence: u64,
    pub(crate) event_type: &'a str,
    pub(crate) event_version: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) metadata: &'a [u8],
    pub(crate) recorded_at: &'a str,
    pub(crate) link: &'a Link,
}

fn encode_event_text(out: &mut Vec<u8>, e: &EventText<'_>) {
    out.extend_from_slice(b"{\"kind\":\"event\",\"index\":");
    write_u64(out, e.index);
    out.extend_from_slice(b",\"cursor\":");
    write_json_string(out, e.cursor);
    out.extend_from_slice(b",\"position\":");
    write_u64(out, e.position);
    out.extend_from_slice(b",\"aggregate_type\":");
    write_json_string(out, e.aggregate_type);
    out.extend_from_slice(b",\"aggregate_id\":");
    write_json_string(out, e.aggregate_id);
    out.extend_from_slice(b",\"sequence\":");
    write_u64(out, e.sequence);
    out.extend_from_slice(b",\"event_type\":");
    write_json_string(out, e.event_type);
    out.extend_from_slice(b",\"event_version\":");
    write_json_string(out, e.event_version);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(e.payload);
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(e.metadata);
    out.extend_from_slice(b",\"recorded_at\":");
    write_json_string(out, e.recorded_at);
    out.extend_from_slice(b",\"link\":");
    push_hex(out, &e.link.0);
    out.extend_from_slice(b"}\n");
}

fn encode_event(
    out: &mut Vec<u8>,
    e: &ChainEvent,
    link: &Link,
    payload: &mut Vec<u8>,
    metadata: &mut Vec<u8>,
) -> Result<(), CanonicalError> {
    payload.clear();
    write_canonical_json(&e.payload, payload)?;
    metadata.clear();
    write_canonical_json(&e.metadata, metadata)?;
    encode_event_text(
        out,
        &EventText {
            index: e.index,
            cursor: &e.cursor,
            position: e.position,
            aggregate_type: &e.aggregate_type,
            aggregate_id: &e.aggregate_id,
            sequence: e.sequence,
            event_type: &e.event_type,
            event_version: &e.event_version,
            payload,
            metadata,
            recorded_at: &e.recorded_at,
            link,
        },
    );
    Ok(())
}

fn encode_checkpoint(out: &mut Vec<u8>, c: &Checkpoint) {
    out.extend_from_slice(b"{\"kind\":\"checkpoint\",\"index\":");
    write_u64(out, c.index);
    out.extend_from_slice(b",\"link\":");
    push_hex(out, &c.link.0);
    out.extend_from_slice(b",\"signed_at\":");
    write_json_string(out, &c.signed_at);
    out.extend_from_slice(b",\"key_id\":");
    push_hex(out, &c.key_id.0);
    out.extend_from_slice(b",\"signature\":");
    push_hex(out, &c.signature);
    out.extend_from_slice(b"}\n");
}

// ---------------------------------------------------------------------------------------------------------
// Parsing: one pass of serde_json over the line, payload and metadata canonicalised while they are parsed.

/// Reusable buffers of the line parser: the canonical payload and metadata of the last event line parsed.
#[derive(Default)]
pub(crate) struct LineBuffers {
    pub(crate) payload: Vec<u8>,
    pub(crate) metadata: Vec<u8>,
    encoded: Vec<u8>,
    scratch: Scratch,
}

impl LineBuffers {
    /// Whether `text` (without newline) is exactly the canonical encoding of `line`, as [`ExportWriter`]
    /// writes it: the verifier accepts no other encoding, so that no byte of an export can change unnoticed
    /// (except inside a cursor, which is not hashed).
    pub(crate) fn is_canonical(&mut self, line: &Line<'_>, text: &[u8]) -> bool {
        let LineBuffers { payload, metadata, encoded, .. } = self;
        encoded.clear();
        match line {
            Line::Header(h) => encode_header(encoded, h.first_index, &h.previous_link),
            Line::Checkpoint(c) => encode_checkpoint(encoded, c),
            Line::Event(e) => encode_event_text(
                encoded,
                &EventText {
                    index: e.index,
                    cursor: &e.cursor,
                    position: e.position,
                    aggregate_type: &e.aggregate_type,
                    aggregate_id: &e.aggregate_id,
                    sequence: e.sequence,
                    event_type: &e.event_type,
                    event_version: &e.event_version,
                    payload,
                    metadata,
                    recorded_at: &e.recorded_at,
                    link: &e.link,
                },
            ),
        }
        encoded.pop();
        encoded[..] == *text
    }
}

/// An event line, borrowing from the line text; payload and metadata are in the [`LineBuffers`].
pub(crate) struct EventLine<'a> {
    pub(crate) index: u64,
    pub(crate) cursor: Cow<'a, str>,
    pub(crate) position: u64,
    pub(crate) aggregate_type: Cow<'a, str>,
    pub(crate) aggregate_id: Cow<'a, str>,
    pub(crate) sequence: u64,
    pub(crate) event_type: Cow<'a, str>,
    pub(crate) event_version: Cow<'a, str>,
    pub(crate) recorded_at: Cow<'a, str>,
    pub(crate) link: Link,
}

impl EventLine<'_> {
    pub(crate) fn parts<'s>(&'s self, bufs: &'s LineBuffers) -> EventParts<'s> {
        EventParts {
            index: self.index,
            position: self.position,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            payload: &bufs.payload,
            metadata: &bufs.metadata,
            recorded_at: &self.recorded_at,
        }
    }
}

pub(crate) enum Line<'a> {
    Header(Header),
    Event(EventLine<'a>),
    Checkpoint(Checkpoint),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Header,
    Event,
    Checkpoint,
}

#[derive(Clone, Copy)]
enum Field {
    Kind,
    Format,
    FirstIndex,
    PreviousLink,
    Index,
    Cursor,
    Position,
    AggregateType,
    AggregateId,
    Sequence,
    EventType,
    EventVersion,
    Payload,
    Metadata,
    RecordedAt,
    Link,
    SignedAt,
    KeyId,
    Signature,
}

const FIELD_NAMES: [&str; 19] = [
    "kind",
    "format",
    "first_index",
    "previous_link",
    "index",
    "cursor",
    "position",
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "event_type",
    "event_version",
    "payload",
    "metadata",
    "recorded_at",
    "link",
    "signed_at",
    "key_id",
    "signature",
];

const fn bit(f: Field) -> u32 {
    1 << (f as u32)
}

const HEADER_FIELDS: u32 = bit(Field::Kind) | bit(Field::Format) | bit(Field::FirstIndex) | bit(Field::PreviousLink);
const EVENT_FIELDS: u32 = bit(Field::Kind)
    | bit(Field::Index)
    | bit(Field::Cursor)
    | bit(Field::Position)
    | bit(Field::AggregateType)
    | bit(Field::AggregateId)
    | bit(Field::Sequence)
    | bit(Field::EventType)
    | bit(Field::EventVersion)
    | bit(Field::Payload)
    | bit(Field::Metadata)
    | bit(Field::RecordedAt)
    | bit(Field::Link);
const CHECKPOINT_FIELDS: u32 = bit(Field::Kind)
    | bit(Field::Index)
    | bit(Field::Link)
    | bit(Field::SignedAt)
    | bit(Field::KeyId)
    | bit(Field::Signature);

fn field_list(mask: u32) -> String {
    FIELD_NAMES.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

#[derive(Default)]
struct RawLine<'a> {
    seen: u32,
    kind: Option<Kind>,
    format: Option<Cow<'a, str>>,
    first_index: Option<u64>,
    previous_link: Option<Link>,
    index: Option<u64>,
    cursor: Option<Cow<'a, str>>,
    position: Option<u64>,
    aggregate_type: Option<Cow<'a, str>>,
    aggregate_id: Option<Cow<'a, str>>,
    sequence: Option<u64>,
    event_type: Option<Cow<'a, str>>,
    event_version: Option<Cow<'a, str>>,
    recorded_at: Option<Cow<'a, str>>,
    link: Option<Link>,
    signed_at: Option<Cow<'a, str>>,
    key_id: Option<KeyId>,
    signature: Option<[u8; 64]>,
}

/// Parses one line into `bufs` (payload and metadata) and the returned borrowed line.
pub(crate) fn parse_line<'a>(text: &'a str, bufs: &mut LineBuffers) -> Result<Line<'a>, ParseError> {
    bufs.payload.clear();
    bufs.metadata.clear();
    bufs.scratch.failure = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = LineSeed { bufs: &mut *bufs }.deserialize(&mut de).and_then(|raw| de.end().map(|()| raw));
    let raw = raw.map_err(|e| ParseError(format!("not a valid line: {e}")))?;
    raw.validate()
}

impl<'a> RawLine<'a> {
    fn validate(self) -> Result<Line<'a>, ParseError> {
        let Some(kind) = self.kind else {
            return Err(ParseError("no \"kind\" field".into()));
        };
        let (expected, name) = match kind {
            Kind::Header => (HEADER_FIELDS, "header"),
            Kind::Event => (EVENT_FIELDS, "event"),
            Kind::Checkpoint => (CHECKPOINT_FIELDS, "checkpoint"),
        };
        if self.seen != expected {
            let mut problems = Vec::new();
            if expected & !self.seen != 0 {
                problems.push(format!("missing {}", field_list(expected & !self.seen)));
            }
            if self.seen & !expected != 0 {
                problems.push(format!("not allowed: {}", field_list(self.seen & !expected)));
            }
            return Err(ParseError(format!("{name} line: {}", problems.join("; "))));
        }
        let missing = || ParseError(format!("{name} line: missing field"));
        match kind {
            Kind::Header => {
                let format = self.format.ok_or_else(missing)?;
                if format != FORMAT {
                    return Err(ParseError(format!("unknown format {format:?}, expected {FORMAT:?}")));
                }
                Ok(Line::Header(Header {
                    first_index: self.first_index.ok_or_else(missing)?,
                    previous_link: self.previous_link.ok_or_else(missing)?,
                }))
            }
            Kind::Event => Ok(Line::Event(EventLine {
                index: self.index.ok_or_else(missing)?,
                cursor: self.cursor.ok_or_else(missing)?,
                position: self.position.ok_or_else(missing)?,
                aggregate_type: self.aggregate_type.ok_or_else(missing)?,
                aggregate_id: self.aggregate_id.ok_or_else(missing)?,
                sequence: self.sequence.ok_or_else(missing)?,
                event_type: self.event_type.ok_or_else(missing)?,
                event_version: self.event_version.ok_or_else(missing)?,
                recorded_at: self.recorded_at.ok_or_else(missing)?,
                link: self.link.ok_or_else(missing)?,
            })),
            Kind::Checkpoint => Ok(Line::Checkpoint(Checkpoint {
                index: self.index.ok_or_else(missing)?,
                link: self.link.ok_or_else(missing)?,
                signed_at: self.signed_at.ok_or_else(missing)?.into_owned(),
                key_id: self.key_id.ok_or_else(missing)?,
                signature: self.signature.ok_or_else(missing)?,
            })),
        }
    }
}

struct LineSeed<'b> {
    bufs: &'b mut LineBuffers,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = RawLine<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawLine<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LineSeed<'_> {
    type Value = RawLine<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawLine<'de>, A::Error> {
        let bufs = self.bufs;
        let mut raw = RawLine::default();
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            if raw.seen & bit(field) != 0 {
                return Err(de::Error::custom(format_args!("duplicate field {:?}", FIELD_NAMES[field as usize])));
            }
            raw.seen |= bit(field);
            match field {
                Field::Kind => raw.kind = Some(map.next_value_seed(KindSeed)?),
                Field::Format => raw.format = Some(map.next_value_seed(StrSeed)?),
                Field::FirstIndex => raw.first_index = Some(map.next_value()?),
                Field::PreviousLink => raw.previous_link = Some(Link(map.next_value_seed(HexSeed)?)),
                Field::Index => raw.index = Some(map.next_value()?),
                Field::Cursor => raw.cursor = Some(map.next_value_seed(StrSeed)?),
                Field::Position => raw.position = Some(map.next_value()?),
                Field::AggregateType => raw.aggregate_type = Some(map.next_value_seed(StrSeed)?),
                Field::AggregateId => raw.aggregate_id = Some(map.next_value_seed(StrSeed)?),
                Field::Sequence => raw.sequence = Some(map.next_value()?),
                Field::EventType => raw.event_type = Some(map.next_value_seed(StrSeed)?),
                Field::EventVersion => raw.event_version = Some(map.next_value_seed(StrSeed)?),
                Field::Payload => {
                    map.next_value_seed(CanonSeed { out: &mut bufs.payload, scratch: &mut bufs.scratch, depth: 0 })?
                }
                Field::Metadata => {
                    map.next_value_seed(CanonSeed { out: &mut bufs.metadata, scratch: &mut bufs.scratch, depth: 0 })?
                }
                Field::RecordedAt => raw.recorded_at = Some(map.next_value_seed(StrSeed)?),
                Field::Link => raw.link = Some(Link(map.next_value_seed(HexSeed)?)),
                Field::SignedAt => raw.signed_at = Some(map.next_value_seed(StrSeed)?),
                Field::KeyId => raw.key_id = Some(KeyId(map.next_value_seed(HexSeed)?)),
                Field::Signature => raw.signature = Some(map.next_value_seed(HexSeed)?),
            }
        }
        Ok(raw)
    }
}

struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = Field;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
        use Field::*;
        const ALL: [Field; 19] = [
            Kind,
            Format,
            FirstIndex,
            PreviousLink,
            Index,
            Cursor,
            Position,
            AggregateType,
            AggregateId,
            Sequence,
            EventType,
            EventVersion,
            Payload,
            Metadata,
            RecordedAt,
            Link,
            SignedAt,
            KeyId,
            Signature,
        ];
        match FIELD_NAMES.iter().position(|n| *n == v) {
            Some(i) => Ok(ALL[i]),
            None => Err(E::custom(format_args!("unknown field {v:?}"))),
        }
    }
}

struct KindSeed;

impl<'de> DeserializeSeed<'de> for KindSeed {
    type Value = Kind;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Kind, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KindSeed {
    type Value = Kind;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"header\", \"event\" or \"checkpoint\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        match v {
            "header" => Ok(Kind::Header),
            "event" => Ok(Kind::Event),
            "checkpoint" => Ok(Kind::Checkpoint),
            _ => Err(E::custom(format_args!("unknown kind {v:?}"))),
        }
    }
}

/// A string, borrowed from the line when it has no escapes.
struct StrSeed;

impl<'de> DeserializeSeed<'de> for StrSeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for StrSeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// A string of exactly `2 * N` lower-case hex digits.
struct HexSeed<const N: usize>;

impl<'de, const N: usize> DeserializeSeed<'de> for HexSeed<N> {
    type Value = [u8; N];
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<[u8; N], D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for HexSeed<N> {
    type Value = [u8; N];
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} lower-case hex digits", 2 * N)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<[u8; N], E> {
        hex::decode(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditKey, GENESIS};
    use serde_json::json;

    fn event() -> ChainEvent {
        ChainEvent {
            index: 1,
            cursor: "c\u{1}1".into(),
            position: 10,
            aggregate_type: "organisation".into(),
            aggregate_id: "org-1".into(),
            sequence: 1,
            event_type: "OrganisationCreated".into(),
            event_version: "1.0".into(),
            payload: json!({"name": "Acme \"Q\"", "b": [1, -2], "a": null}),
            metadata: json!({}),
            recorded_at: "2026-11-29T02:20:17.145000Z".into(),
        }
    }

    #[test]
    fn lines_have_the_documented_shape() {
        let e = event();
        let link = Link([0xab; 32]);
        let line = ExportLine::Event { event: e.clone(), link }.to_ndjson().expect("encode");
        assert_eq!(
            line,
            format!(
                "{{\"kind\":\"event\",\"index\":1,\"cursor\":\"c\\u00011\",\"position\":10,\"aggregate_type\":\"organisation\",\
                 \"aggregate_id\":\"org-1\",\"sequence\":1,\"event_type\":\"OrganisationCreated\",\"event_version\":\"1.0\",\
                 \"payload\":{{\"a\":null,\"b\":[1,-2],\"name\":\"Acme \\\"Q\\\"\"}},\"metadata\":{{}},\
                 \"recorded_at\":\"2026-11-29T02:20:17.145000Z\",\"link\":\"{}\"}}\n",
                "ab".repeat(32)
            )
        );
        let header = ExportLine::Header(Header { first_index: 1, previous_link: GENESIS }).to_ndjson().expect("encode");
        assert_eq!(
            header,
            format!(
                "{{\"kind\":\"header\",\"format\":\"gatehouse-audit/1\",\"first_index\":1,\"previous_link\":\"{}\"}}\n",
                "0".repeat(64)
            )
        );
        let key = AuditKey::from_seed(&[3; 32]);
        let cp = key.sign_checkpoint(0, &GENESIS, "2026-11-29T02:20:17.145000Z");
        assert_eq!(
            cp.to_line(),
            format!(
                "{{\"kind\":\"checkpoint\",\"index\":0,\"link\":\"{}\",\"signed_at\":\"2026-11-29T02:20:17.145000Z\",\"key_id\":\"{}\",\"signature\":\"{}\"}}\n",
                "0".repeat(64),
                key.key_id(),
                hex::encode(&cp.signature)
            )
        );
        for line in [line, header, cp.to_line()] {
            let parsed = ExportLine::parse(&line).expect("parse");
            assert_eq!(parsed.to_ndjson().expect("encode"), line, "round trip");
            // serde_json agrees it is one valid JSON object.
            let v: serde_json::Value = serde_json::from_str(&line).expect("json");
            assert!(v.is_object());
        }
    }

    #[test]
    fn strict_parsing() {
        let good = ExportLine::Event { event: event(), link: Link([1; 32]) }.to_ndjson().expect("encode");
        let bad = [
            good.replace("\"cursor\"", "\"kursor\""),
            good.replace("\"kind\":\"event\",", ""),
            good.replace("\"kind\":\"event\"", "\"kind\":\"evnt\""),
            good.replace("\"index\":1,", "\"index\":1,\"index\":1,"),
            good.replace("\"index\":1,", "\"index\":1.0,"),
            good.replace("\"index\":1,", "\"index\":-1,"),
            good.replace("\"sequence\":1,", "\"sequence\":1,\"signed_at\":\"x\","),
            good.replace(&"01".repeat(32), &"01".repeat(31)),
            good.replace(&"01".repeat(32), &"0A".repeat(32)),
            good.replace("\"a\":null", "\"a\":1.5"),
            good.replace("\"a\":null", "\"a\":null,\"a\":null"),
            good.replace('}', "},"),
            good.replace("\n", " x"),
            "[]".into(),
            "".into(),
        ];
        for line in bad {
            assert!(ExportLine::parse(&line).is_err(), "accepted {line}");
        }
        // Semantically equal variants are accepted: whitespace, member order, escapes.
        let variant =
            good.replace("{\"kind\":\"event\",", "{ \"kind\" : \"event\" ,").replace("\"org-1\"", "\"\\u006frg-1\"");
        let parsed = ExportLine::parse(&variant).expect("parse");
        assert_eq!(parsed.to_ndjson().expect("encode"), good);
    }

    #[test]
    fn unknown_format_is_refused() {
        let h = format!(
            "{{\"kind\":\"header\",\"format\":\"gatehouse-audit/2\",\"first_index\":1,\"previous_link\":\"{}\"}}",
            "0".repeat(64)
        );
        assert!(ExportLine::parse(&h).expect_err("refused").0.contains("unknown format"));
    }
}

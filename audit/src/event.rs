use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical::{write_canonical_json, CanonicalError};
use crate::Link;

/// The 4 ASCII bytes that open `canonical(event)`.
pub const EVENT_MAGIC: &[u8; 4] = b"GHA1";

/// One event of the audit chain: an event of the event store plus its dense chain index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEvent {
    /// Position in the chain: 1 for the first event ever chained, then +1 per event, no gaps.
    pub index: u64,
    /// Opaque resume token of the export (e.g. the store's position as text). Informational: not hashed,
    /// so not protected by the chain.
    pub cursor: String,
    /// The event store's global position of the event (may have gaps).
    pub position: u64,
    /// Aggregate type, e.g. `"organisation"`.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Sequence number of the event within its aggregate.
    pub sequence: u64,
    /// Event type name.
    pub event_type: String,
    /// Event version (schema version of the payload).
    pub event_version: String,
    /// Event payload; integers only (floats are refused by the canonical encoding).
    pub payload: Value,
    /// Event metadata; integers only.
    pub metadata: Value,
    /// When the store recorded the event, RFC 3339 UTC with exactly 6 fraction digits, e.g.
    /// `2026-11-29T02:20:17.145000Z` (chrono: `format("%Y-%m-%dT%H:%M:%S%.6fZ")`). Hashed as given.
    pub recorded_at: String,
}

/// The parts of `canonical(event)`, with payload and metadata already in canonical JSON.
pub(crate) struct EventParts<'a> {
    pub index: u64,
    pub position: u64,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: u64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a [u8],
    pub metadata: &'a [u8],
    pub recorded_at: &'a str,
}

fn lp_len(what: &'static str, bytes: &[u8]) -> Result<[u8; 4], CanonicalError> {
    u32::try_from(bytes.len()).map(u32::to_be_bytes).map_err(|_| CanonicalError::TooLong(what))
}

impl EventParts<'_> {
    /// Feeds `canonical(event)` to `sink` piece by piece.
    pub(crate) fn feed(&self, mut sink: impl FnMut(&[u8])) -> Result<(), CanonicalError> {
        let fields: [(&'static str, &[u8]); 7] = [
            ("aggregate_type", self.aggregate_type.as_bytes()),
            ("aggregate_id", self.aggregate_id.as_bytes()),
            ("event_type", self.event_type.as_bytes()),
            ("event_version", self.event_version.as_bytes()),
            ("payload", self.payload),
            ("metadata", self.metadata),
            ("recorded_at", self.recorded_at.as_bytes()),
        ];
        let mut lens = [[0u8; 4]; 7];
        for (len, (what, bytes)) in lens.iter_mut().zip(fields.iter()) {
            *len = lp_len(what, bytes)?;
        }
        let mut head = [0u8; 20];
        head[..4].copy_from_slice(EVENT_MAGIC);
        head[4..12].copy_from_slice(&self.index.to_be_bytes());
        head[12..20].copy_from_slice(&self.position.to_be_bytes());
        sink(&head);
        for (i, (len, (_, bytes))) in lens.iter().zip(fields.iter()).enumerate() {
            if i == 2 {
                sink(&self.sequence.to_be_bytes());
            }
            sink(len);
            sink(bytes);
        }
        Ok(())
    }

    /// `SHA-256(previous ‖ canonical(event))`.
    pub(crate) fn link(&self, previous: &Link) -> Result<Link, CanonicalError> {
        let mut hasher = Sha256::new();
        hasher.update(previous.0);
        self.feed(|bytes| hasher.update(bytes))?;
        Ok(Link(hasher.finalize().into()))
    }
}

/// `SHA-256(previous ‖ canonical)` for already encoded canonical bytes.
pub(crate) fn link_of_canonical(previous: &Link, canonical: &[u8]) -> Link {
    let mut hasher = Sha256::new();
    hasher.update(previous.0);
    hasher.update(canonical);
    Link(hasher.finalize().into())
}

fn with_parts<T>(
    event: &ChainEvent,
    f: impl FnOnce(&EventParts<'_>) -> Result<T, CanonicalError>,
) -> Result<T, CanonicalError> {
    let mut payload = Vec::new();
    write_canonical_json(&event.payload, &mut payload)?;
    let mut metadata = Vec::new();
    write_canonical_json(&event.metadata, &mut metadata)?;
    f(&EventParts {
        index: event.index,
        position: event.position,
        aggregate_type: &event.aggregate_type,
        aggregate_id: &event.aggregate_id,
        sequence: event.sequence,
        event_type: &event.event_type,
        event_version: &event.event_version,
        payload: &payload,
        metadata: &metadata,
        recorded_at: &event.recorded_at,
    })
}

/// `canonical(event)`: the bytes hashed into the chain (layout in docs/AUDIT.md, "Canonical encoding").
///
/// Fails when the payload or metadata hold a float, an out-of-range number or nest too deep, or a field
/// exceeds 4 GiB.
pub fn canonical_bytes(event: &ChainEvent) -> Result<Vec<u8>, CanonicalError> {
    with_parts(event, |parts| {
        let mut out = Vec::new();
        parts.feed(|bytes| out.extend_from_slice(bytes))?;
        Ok(out)
    })
}

/// `link_N = SHA-256(link_{N-1} ‖ canonical(event_N))`, with `previous` = `link_{N-1}`
/// ([`GENESIS`](crate::GENESIS) before event 1). Does not check that `event.index` follows the previous one.
pub fn next_link(previous: &Link, event: &ChainEvent) -> Result<Link, CanonicalError> {
    with_parts(event, |parts| parts.link(previous))
}

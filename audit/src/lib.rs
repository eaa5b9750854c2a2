//! The pure core of Gatehouse's tamper-evident audit log, format `gatehouse-audit/1`
//! (specification: docs/AUDIT.md).
//!
//! - [`ChainEvent`], [`canonical_bytes`], [`next_link`], [`Link`], [`GENESIS`]: the SHA-256 hash chain,
//!   `link_N = SHA-256(link_{N-1} ‖ canonical(event_N))`, over [`canonical_json`] payloads.
//! - [`AuditKey`], [`PublicKey`], [`Checkpoint`]: Ed25519-signed assertions "event N has link L".
//! - [`ExportWriter`], [`ExportLine`]: the NDJSON export lines (header, events, checkpoints).
//! - [`verify`]: the streaming offline verifier, returning a [`Report`] or the first [`Break`]. It accepts each
//!   line only exactly as [`ExportWriter`] writes it, parses on worker threads and hashes in order.
//!
//! No database, network or async runtime: the server side (projector, export endpoint, CLI) builds on this.
//!
//! ```
//! use audit::{next_link, verify, AuditKey, ChainEvent, ExportWriter, GENESIS};
//! use serde_json::json;
//!
//! let key = AuditKey::from_seed(&[7; 32]);
//! let event = ChainEvent {
//!     index: 1,
//!     cursor: "1".into(),
//!     position: 1,
//!     aggregate_type: "organisation".into(),
//!     aggregate_id: "acme".into(),
//!     sequence: 1,
//!     event_type: "OrganisationCreated".into(),
//!     event_version: "1".into(),
//!     payload: json!({"name": "Acme"}),
//!     metadata: json!({}),
//!     recorded_at: "2026-11-29T02:20:17.145000Z".into(),
//! };
//! let link = next_link(&GENESIS, &event)?;
//!
//! let mut export = ExportWriter::new(Vec::new());
//! export.write_header(1, &GENESIS)?;
//! export.write_event(&event, &link)?;
//! export.write_checkpoint(&key.sign_checkpoint(1, &link, "2026-11-29T02:20:18.000000Z"))?;
//! let file = export.into_inner();
//!
//! let report = verify(&file[..], key.public_key(), None, |_bytes_read| {})?;
//! assert_eq!((report.first_index, report.last_index), (1, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod canonical;
mod event;
mod export;
mod fast;
mod hex;
mod keys;
mod link;
mod verify;

pub use canonical::{canonical_json, canonical_json_text, write_canonical_json, CanonicalError, MAX_DEPTH};
pub use event::{canonical_bytes, next_link, ChainEvent, EVENT_MAGIC};
pub use export::{ExportError, ExportLine, ExportWriter, Header, ParseError, FORMAT, MAX_LINE_BYTES};
pub use hex::HexError;
pub use keys::{checkpoint_message, AuditKey, Checkpoint, CheckpointError, KeyError, PublicKey, CHECKPOINT_CONTEXT};
pub use link::{KeyId, Link, GENESIS};
pub use verify::{verify, Break, BreakKind, Report, PROGRESS_INTERVAL};

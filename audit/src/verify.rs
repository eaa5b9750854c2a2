//! The offline verifier: streams an export once, recomputes the chain, checks every stored link, the placement,
//! signature and link of every checkpoint, and that the file ends with a checkpoint of its last event.

use std::fmt;
use std::io::{BufRead, Read};

use crate::export::{parse_line, Line, LineBuffers, MAX_LINE_BYTES};
use crate::keys::CheckpointError;
use crate::{Checkpoint, Link, PublicKey, GENESIS};

/// The progress callback is called at most once per this many bytes read (and once at the end).
pub const PROGRESS_INTERVAL: u64 = 1 << 20;

/// What kind of break the verifier found. See docs/AUDIT.md, "What a break means".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakKind {
    /// A line is not JSON, not UTF-8, has the wrong shape (unknown, missing, duplicate fields), the first line
    /// is not a header, or the format is unknown.
    Malformed,
    /// An event's content does not hash to its stored link (its index is where expected): the event was edited.
    EditedEvent,
    /// An index gap: one or more events were deleted.
    MissingEvents,
    /// An index repeats or goes down, or an event appears later than its place: lines were inserted,
    /// duplicated or moved.
    InsertedOrReordered,
    /// An event's stored `link` field is not the recomputed link, while the chain continues from the recomputed
    /// one: the link field itself was edited.
    BadLink,
    /// A checkpoint's signature does not verify (the checkpoint was altered or forged).
    BadCheckpointSignature,
    /// A validly signed checkpoint (or the trusted checkpoint) asserts another link than the chain's at its
    /// index: events were altered and the links recomputed, or the file is of another chain.
    CheckpointMismatch,
    /// A checkpoint is signed by another key than the one given.
    UnknownKey,
    /// The file does not end with a checkpoint of its last event, ends in the middle of a line, is empty, or
    /// ends before the trusted checkpoint's index.
    Truncated,
    /// The file could not be read (not evidence about the log).
    Io,
}

impl BreakKind {
    /// A stable snake_case name, e.g. `"edited_event"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Malformed => "malformed",
            BreakKind::EditedEvent => "edited_event",
            BreakKind::MissingEvents => "missing_events",
            BreakKind::InsertedOrReordered => "inserted_or_reordered",
            BreakKind::BadLink => "bad_link",
            BreakKind::BadCheckpointSignature => "bad_checkpoint_signature",
            BreakKind::CheckpointMismatch => "checkpoint_mismatch",
            BreakKind::UnknownKey => "unknown_key",
            BreakKind::Truncated => "truncated",
            BreakKind::Io => "io",
        }
    }
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first break found in an export.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Break {
    /// What was found.
    pub kind: BreakKind,
    /// 1-based line number in the file; 0 for the trusted checkpoint given to [`verify`] and for an empty file.
    pub line: u64,
    /// The chain index where the chain breaks, when known (e.g. the first missing index).
    pub index: Option<u64>,
    /// A sentence for people.
    pub detail: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.kind)?;
        } else {
            write!(f, "line {}", self.line)?;
            if let Some(i) = self.index {
                write!(f, " (chain index {i})")?;
            }
            write!(f, ": {}", self.kind)?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The header's `first_index` (1 for a full export: check it if you expect one).
    pub first_index: u64,
    /// Index of the last event (`first_index - 1` when the file holds no event).
    pub last_index: u64,
    /// Number of event lines verified.
    pub events_verified: u64,
    /// Link of the last event (the header's `previous_link` when there is none).
    pub last_link: Link,
    /// Number of checkpoint lines verified.
    pub checkpoints_verified: u64,
    /// The last checkpoint, which covers `last_index`: keep it as the trusted checkpoint of the next verification.
    pub last_checkpoint: Checkpoint,
    /// Lines read.
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
}

/// Verifies an export read from `reader`, streaming, in one pass.
///
/// - `public_key`: the audit key; every checkpoint must be signed by it.
/// - `trusted_checkpoint`: optionally, a checkpoint obtained earlier (e.g. `Report::last_checkpoint` of a previous
///   verification, or published elsewhere). The file must then reach its index, with the same link there; its
///   index may be `first_index - 1` (checked against the header). Its signature is checked first (break on line 0).
/// - `progress`: called with the number of bytes read so far, at most every [`PROGRESS_INTERVAL`] bytes and once
///   at the end.
///
/// Returns the first break found, with its line, chain index and [`BreakKind`]. After a break the verifier may
/// read further lines to tell apart similar kinds (e.g. a deleted line from a moved one).
pub fn verify<R: BufRead, P: FnMut(u64)>(
    reader: R,
    public_key: &PublicKey,
    trusted_checkpoint: Option<&Checkpoint>,
    progress: P,
) -> Result<Report, Break> {
    if let Some(t) = trusted_checkpoint {
        public_key.verify_checkpoint(t).map_err(|e| {
            let kind = match e {
                CheckpointError::UnknownKey { .. } => BreakKind::UnknownKey,
                CheckpointError::BadSignature => BreakKind::BadCheckpointSignature,
            };
            brk(kind, 0, Some(t.index), format!("the trusted checkpoint does not verify: {e}"))
        })?;
    }
    let mut lines = Lines { reader, progress, buf: Vec::with_capacity(4096), line: 0, bytes: 0, next_progress: 0 };
    let mut bufs = LineBuffers::default();
    let mut chain = read_header(&mut lines, &mut bufs, public_key, trusted_checkpoint)?;
    while let Some(terminated) = lines.next()? {
        if let Err(anomaly) = chain.step(&lines.buf, terminated, lines.line, &mut bufs) {
            return Err(resolve(anomaly, &mut lines, &mut bufs, public_key));
        }
    }
    let report = chain.finish(lines.line, lines.bytes)?;
    (lines.progress)(lines.bytes);
    Ok(report)
}

fn brk(kind: BreakKind, line: u64, index: Option<u64>, detail: impl Into<String>) -> Break {
    Break { kind, line, index, detail: detail.into() }
}

struct Lines<R, P> {
    reader: R,
    progress: P,
    buf: Vec<u8>,
    line: u64,
    bytes: u64,
    next_progress: u64,
}

impl<R: BufRead, P: FnMut(u64)> Lines<R, P> {
    /// Reads the next line into `buf`, without its newline. `Some(true)` if it ended with a newline.
    fn next(&mut self) -> Result<Option<bool>, Break> {
        self.buf.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| brk(BreakKind::Io, self.line + 1, None, format!("cannot read the export: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        self.bytes += n as u64;
        if self.bytes >= self.next_progress {
            (self.progress)(self.bytes);
            self.next_progress = self.bytes + PROGRESS_INTERVAL;
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            return Ok(Some(true));
        }
        if self.buf.len() > MAX_LINE_BYTES {
            return Err(brk(BreakKind::Malformed, self.line, None, format!("line longer than {MAX_LINE_BYTES} bytes")));
        }
        Ok(Some(false))
    }
}

/// Parses a line; an unparsable last line without newline is a cut file rather than a malformed one.
fn parse<'a>(bytes: &'a [u8], terminated: bool, line: u64, bufs: &mut LineBuffers) -> Result<Line<'a>, Break> {
    let result = match std::str::from_utf8(bytes) {
        Ok(text) => parse_line(text, bufs).map_err(|e| e.0),
        Err(e) => Err(format!("not UTF-8: {e}")),
    };
    let parsed = result.map_err(|detail| {
        if terminated {
            brk(BreakKind::Malformed, line, None, detail)
        } else {
            brk(BreakKind::Truncated, line, None, format!("the file ends in the middle of a line ({detail})"))
        }
    })?;
    if !bufs.is_canonical(&parsed, bytes) {
        return Err(brk(
            BreakKind::Malformed,
            line,
            None,
            "the line is valid but not in canonical form (field order, escapes, whitespace, key order or number format differ from what the exporter writes)",
        ));
    }
    Ok(parsed)
}

fn read_header<R: BufRead, P: FnMut(u64)>(
    lines: &mut Lines<R, P>,
    bufs: &mut LineBuffers,
    key: &PublicKey,
    trusted: Option<&Checkpoint>,
) -> Result<Chain, Break> {
    let Some(terminated) = lines.next()? else {
        return Err(brk(BreakKind::Truncated, 0, None, "the file is empty"));
    };
    let header = match parse(&lines.buf, terminated, 1, bufs) {
        Ok(Line::Header(h)) => h,
        Ok(_) => return Err(brk(BreakKind::Malformed, 1, None, "the first line is not a header")),
        Err(b) if b.kind == BreakKind::Malformed => {
            return Err(brk(
                BreakKind::Malformed,
                1,
                None,
                format!("the first line is not a valid header: {}", b.detail),
            ))
        }
        Err(b) => return Err(b),
    };
    let k = header.first_index;
    if k == 0 {
        return Err(brk(BreakKind::Malformed, 1, None, "first_index is 0: chain indexes start at 1"));
    }
    if k == 1 && header.previous_link != GENESIS {
        return Err(brk(
            BreakKind::Malformed,
            1,
            Some(0),
            "a full export (first_index 1) must start from the genesis link",
        ));
    }
    if let Some(t) = trusted {
        if t.index < k - 1 {
            return Err(brk(
                BreakKind::MissingEvents,
                1,
                Some(t.index + 1),
                format!(
                    "the export starts at event {k}, after the trusted checkpoint's event {}: events {}..={} are not in the file, so it cannot be checked against that checkpoint",
                    t.index,
                    t.index + 1,
                    k - 1
                ),
            ));
        }
        if t.index == k - 1 && t.link != header.previous_link {
            return Err(brk(
                BreakKind::CheckpointMismatch,
                1,
                Some(t.index),
                format!(
                    "the header's previous_link {} is not the trusted checkpoint's link {} for event {}",
                    header.previous_link, t.link, t.index
                ),
            ));
        }
    }
    Ok(Chain {
        key_id: key.key_id(),
        key: key.clone(),
        trusted: trusted.map(|t| (t.index, t.link)),
        first_index: k,
        tip_index: k - 1,
        tip_link: header.previous_link,
        events: 0,
        checkpoints: 0,
        last_checkpoint: None,
        last_was_checkpoint: false,
    })
}

struct Chain {
    key: PublicKey,
    key_id: crate::KeyId,
    trusted: Option<(u64, Link)>,
    first_index: u64,
    tip_index: u64,
    tip_link: Link,
    events: u64,
    checkpoints: u64,
    last_checkpoint: Option<Checkpoint>,
    last_was_checkpoint: bool,
}

/// A break, or a suspicion that the following lines help classify.
enum Anomaly {
    Break(Break),
    /// An event at its expected index whose content does not hash to its stored link.
    LinkMismatch {
        line: u64,
        index: u64,
        stored: Link,
        recomputed: Link,
    },
    /// A line whose index is past the expected next one.
    Gap {
        line: u64,
        expected: u64,
        found: u64,
        what: &'static str,
    },
}

impl From<Break> for Anomaly {
    fn from(b: Break) -> Anomaly {
        Anomaly::Break(b)
    }
}

impl Chain {
    fn step(&mut self, bytes: &[u8], terminated: bool, line: u64, bufs: &mut LineBuffers) -> Result<(), Anomaly> {
        match parse(bytes, terminated, line, bufs)? {
            Line::Header(_) => Err(brk(BreakKind::Malformed, line, None, "a second header").into()),
            Line::Event(e) => {
                let Some(expected) = self.tip_index.checked_add(1) else {
                    return Err(brk(BreakKind::Malformed, line, None, "event after index u64::MAX").into());
                };
                if e.index < expected {
                    return Err(brk(
                        BreakKind::InsertedOrReordered,
                        line,
                        Some(e.index),
                        format!(
                            "event {} comes after event {}: a duplicated, inserted or moved event line",
                            e.index, self.tip_index
                        ),
                    )
                    .into());
                }
                if e.index > expected {
                    return Err(Anomaly::Gap { line, expected, found: e.index, what: "event" });
                }
                let recomputed = e
                    .parts(bufs)
                    .link(&self.tip_link)
                    .map_err(|err| brk(BreakKind::Malformed, line, Some(e.index), err.to_string()))?;
                if recomputed != e.link {
                    return Err(Anomaly::LinkMismatch { line, index: e.index, stored: e.link, recomputed });
                }
                self.tip_index = e.index;
                self.tip_link = recomputed;
                self.events += 1;
                self.last_was_checkpoint = false;
                if let Some((t_index, t_link)) = self.trusted {
                    if t_index == e.index && t_link != recomputed {
                        return Err(brk(
                            BreakKind::CheckpointMismatch,
                            line,
                            Some(e.index),
                            format!("event {} has link {recomputed}, the trusted checkpoint says {t_link}: the history up to it was rewritten", e.index),
                        )
                        .into());
                    }
                }
                Ok(())
            }
            Line::Checkpoint(c) => {
                if c.index > self.tip_index {
                    return Err(Anomaly::Gap {
                        line,
                        expected: self.tip_index + 1,
                        found: c.index,
                        what: "a checkpoint of event",
                    });
                }
                if c.index < self.tip_index {
                    return Err(brk(
                        BreakKind::InsertedOrReordered,
                        line,
                        Some(c.index),
                        format!(
                            "checkpoint of event {} after event {}: a checkpoint follows the event it covers",
                            c.index, self.tip_index
                        ),
                    )
                    .into());
                }
                self.key.verify_checkpoint(&c).map_err(|e| match e {
                    CheckpointError::UnknownKey { .. } => {
                        brk(BreakKind::UnknownKey, line, Some(c.index), e.to_string())
                    }
                    CheckpointError::BadSignature => brk(
                        BreakKind::BadCheckpointSignature,
                        line,
                        Some(c.index),
                        "the checkpoint's signature does not verify: it was altered or forged",
                    ),
                })?;
                if c.link != self.tip_link {
                    let since = match &self.last_checkpoint {
                        Some(p) => format!("after the previous checkpoint (event {})", p.index),
                        None => format!("since the start of the file (event {})", self.first_index),
                    };
                    return Err(brk(
                        BreakKind::CheckpointMismatch,
                        line,
                        Some(c.index),
                        format!(
                            "the signed checkpoint says event {} has link {}, the chain computes {}: events {since} were altered and their links recomputed",
                            c.index, c.link, self.tip_link
                        ),
                    )
                    .into());
                }
                debug_assert_eq!(c.key_id, self.key_id);
                self.checkpoints += 1;
                self.last_checkpoint = Some(c);
                self.last_was_checkpoint = true;
                Ok(())
            }
        }
    }

    fn finish(self, lines: u64, bytes: u64) -> Result<Report, Break> {
        let last_index = self.tip_index;
        let last_checkpoint = match self.last_checkpoint {
            Some(c) if self.last_was_checkpoint => c,
            Some(c) => {
                return Err(brk(
                    BreakKind::Truncated,
                    lines,
                    Some(last_index),
                    format!(
                        "the file ends after event {last_index} without a checkpoint of it: the events after the last checkpoint (event {}) are not authenticated; every export ends with a checkpoint of its last event",
                        c.index
                    ),
                ))
            }
            None => {
                return Err(brk(
                    BreakKind::Truncated,
                    lines,
                    Some(last_index),
                    "the file holds no checkpoint: every export ends with a checkpoint of its last event",
                ))
            }
        };
        if let Some((t_index, _)) = self.trusted {
            if t_index > last_index {
                return Err(brk(
                    BreakKind::Truncated,
                    lines,
                    Some(last_index + 1),
                    format!("the file ends at event {last_index}, before the trusted checkpoint's event {t_index}"),
                ));
            }
        }
        Ok(Report {
            first_index: self.first_index,
            last_index,
            events_verified: self.events,
            last_link: self.tip_link,
            checkpoints_verified: self.checkpoints,
            last_checkpoint,
            lines,
            bytes,
        })
    }
}

/// Turns an anomaly into the reported break, reading further lines where that tells similar kinds apart.
fn resolve<R: BufRead, P: FnMut(u64)>(
    anomaly: Anomaly,
    lines: &mut Lines<R, P>,
    bufs: &mut LineBuffers,
    key: &PublicKey,
) -> Break {
    match anomaly {
        Anomaly::Break(b) => b,
        Anomaly::LinkMismatch { line, index, stored, recomputed } => {
            let edited = |how: &str| {
                brk(
                    BreakKind::EditedEvent,
                    line,
                    Some(index),
                    format!("event {index} does not hash to its stored link: {how}"),
                )
            };
            let next = match lines.next() {
                Ok(Some(terminated)) => parse(&lines.buf, terminated, lines.line, bufs).ok(),
                _ => None,
            };
            match next {
                Some(Line::Event(n)) if n.index <= index => brk(
                    BreakKind::InsertedOrReordered,
                    line,
                    Some(index),
                    format!("event line {index} does not chain and the next line repeats index {}: an inserted or forged event", n.index),
                ),
                Some(Line::Event(n)) if n.index == index + 1 => {
                    let parts = n.parts(bufs);
                    if parts.link(&stored).is_ok_and(|l| l == n.link) {
                        edited("its content was altered (the next event chains from the stored link)")
                    } else if parts.link(&recomputed).is_ok_and(|l| l == n.link) {
                        brk(
                            BreakKind::BadLink,
                            line,
                            Some(index),
                            format!("the stored link of event {index} was altered: its content hashes to {recomputed}, from which the chain continues"),
                        )
                    } else {
                        edited("the event or its link was altered")
                    }
                }
                Some(Line::Checkpoint(c)) if c.index < index => brk(
                    BreakKind::InsertedOrReordered,
                    line,
                    Some(index),
                    format!("event line {index} does not chain and the next line is a checkpoint of event {}: an inserted or forged event", c.index),
                ),
                Some(Line::Checkpoint(c)) if c.index == index && key.verify_checkpoint(&c).is_ok() => {
                    if c.link == recomputed {
                        brk(
                            BreakKind::BadLink,
                            line,
                            Some(index),
                            format!("the stored link of event {index} was altered: its content hashes to {recomputed}, as the signed checkpoint says"),
                        )
                    } else {
                        edited("its content was altered (the signed checkpoint has the stored link)")
                    }
                }
                _ => edited("the event, its link, or an earlier link was altered"),
            }
        }
        Anomaly::Gap { line, expected, found, what } => {
            let mut moved_to = None;
            while let Ok(Some(terminated)) = lines.next() {
                if let Ok(Line::Event(e)) = parse(&lines.buf, terminated, lines.line, bufs) {
                    if e.index == expected {
                        moved_to = Some(lines.line);
                        break;
                    }
                }
            }
            match moved_to {
                Some(later) => brk(
                    BreakKind::InsertedOrReordered,
                    line,
                    Some(expected),
                    format!("line {line} holds {what} {found} where event {expected} was expected, and event {expected} appears later, on line {later}: lines were moved"),
                ),
                None if found == expected + 1 => brk(
                    BreakKind::MissingEvents,
                    line,
                    Some(expected),
                    format!("event {expected} is missing (line {line} holds {what} {found})"),
                ),
                None => brk(
                    BreakKind::MissingEvents,
                    line,
                    Some(expected),
                    format!("events {expected}..={} are missing (line {line} holds {what} {found})", found - 1),
                ),
            }
        }
    }
}

//! The offline verifier: streams an export once, recomputes the chain, checks every stored link, the placement,
//! signature and link of every checkpoint, and that the file ends with a checkpoint of its last event.

//!
//! Parsing (JSON, canonical form, canonical event bytes) runs on worker threads over chunks of whole lines;
//! the calling thread reads the chunks, and hashes and checks the chain in order. Memory stays bounded: a few
//! chunks of [`PROGRESS_INTERVAL`] bytes per worker are in flight.

use std::fmt;
use std::io::{BufRead, Read};
use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use crate::event::link_of_canonical;
use crate::export::{parse_line, Header, Line, LineBuffers, MAX_LINE_BYTES};
use crate::fast;
use crate::keys::CheckpointError;
use crate::{Checkpoint, Link, PublicKey, GENESIS};

/// The file is read and parsed in chunks of about this many bytes (whole lines); the progress callback is
/// called once per chunk.
pub const PROGRESS_INTERVAL: u64 = 1 << 20;

/// Chunks queued per worker thread.
const IN_FLIGHT: usize = 2;
/// Most worker threads used.
const MAX_WORKERS: usize = 4;

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
    /// The file could not be read, or the verifier could not start its threads (not evidence about the log).
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
/// - `progress`: called with the number of bytes processed so far, about every [`PROGRESS_INTERVAL`] bytes and
///   once at the end.
///
/// Every line must be exactly as [`ExportWriter`](crate::ExportWriter) writes it (a semantically equal but
/// differently encoded line is `Malformed`), so no byte can change unnoticed except inside a `cursor` value.
///
/// Returns the first break found, with its line, chain index and [`BreakKind`]. After a break the verifier may
/// read further lines to tell similar kinds apart (e.g. a deleted line from a moved one).
///
/// Uses up to 4 worker threads for parsing (as many as the machine has cores); `reader` and `progress` stay on
/// the calling thread.
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
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_WORKERS);
    std::thread::scope(|scope| {
        let mut to_workers = Vec::with_capacity(workers);
        let mut from_workers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(IN_FLIGHT);
            let (parsed_tx, parsed_rx) = sync_channel::<Parsed>(IN_FLIGHT);
            let spawned = std::thread::Builder::new()
                .name("audit-verify".into())
                .spawn_scoped(scope, move || worker(chunk_rx, parsed_tx));
            match spawned {
                Ok(_) => {
                    to_workers.push(chunk_tx);
                    from_workers.push(parsed_rx);
                }
                // Fewer threads than cores is fine; none at all is not.
                Err(e) if to_workers.is_empty() => {
                    return Err(brk(BreakKind::Io, 0, None, format!("cannot start a verifier thread: {e}")))
                }
                Err(_) => break,
            }
        }
        let mut stream = Stream {
            reader,
            progress,
            to_workers,
            from_workers,
            dispatched: 0,
            received: 0,
            eof: false,
            read_error: None,
            lines_dispatched: 0,
            spare: Vec::new(),
            current: None,
            next_record: 0,
            lines: 0,
            bytes: 0,
        };
        let result = run(&mut stream, public_key, trusted_checkpoint);
        if result.is_ok() {
            (stream.progress)(stream.bytes);
        }
        result
        // `stream` is dropped here: the channels close and the workers end before the scope returns.
    })
}

fn brk(kind: BreakKind, line: u64, index: Option<u64>, detail: impl Into<String>) -> Break {
    Break { kind, line, index, detail: detail.into() }
}

// ---------------------------------------------------------------------------------------------------------
// Parsing stage (worker threads).

/// Whole lines of the file, and the number of the first.
struct Chunk {
    data: Vec<u8>,
    first_line: u64,
    /// Buffers of an earlier parsed chunk, for reuse.
    recycled: Option<Recycled>,
}

/// The record and arena buffers of a consumed chunk.
type Recycled = (Vec<Record>, Vec<u8>);

/// A chunk's lines, parsed; canonical event bytes in `arena`.
struct Parsed {
    data: Vec<u8>,
    records: Vec<Record>,
    arena: Vec<u8>,
}

/// One line, parsed and checked for canonical form.
enum Record {
    Header { line: u64, header: Header },
    Event { line: u64, index: u64, link: Link, canonical: Range<usize> },
    Checkpoint { line: u64, checkpoint: Checkpoint },
    Bad(Break),
}

fn worker(chunks: Receiver<Chunk>, parsed: SyncSender<Parsed>) {
    let mut bufs = LineBuffers::default();
    while let Ok(chunk) = chunks.recv() {
        let (mut records, mut arena) = chunk.recycled.unwrap_or_default();
        records.clear();
        arena.clear();
        let mut line = chunk.first_line;
        let mut rest = &chunk.data[..];
        while !rest.is_empty() {
            let (text, terminated, next) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], true, &rest[i + 1..]),
                None => (rest, false, &rest[rest.len()..]),
            };
            records.push(prepare(text, terminated, line, &mut bufs, &mut arena));
            line += 1;
            rest = next;
        }
        if parsed.send(Parsed { data: chunk.data, records, arena }).is_err() {
            break;
        }
    }
}

fn prepare(bytes: &[u8], terminated: bool, line: u64, bufs: &mut LineBuffers, arena: &mut Vec<u8>) -> Record {
    if let Some(e) = std::str::from_utf8(bytes).ok().and_then(fast::scan_event) {
        let start = arena.len();
        if e.parts.feed(|piece| arena.extend_from_slice(piece)).is_ok() {
            return Record::Event { line, index: e.index, link: e.link, canonical: start..arena.len() };
        }
        arena.truncate(start);
    }
    match parse(bytes, terminated, line, bufs) {
        Err(b) => Record::Bad(b),
        Ok(Line::Header(header)) => Record::Header { line, header },
        Ok(Line::Checkpoint(checkpoint)) => Record::Checkpoint { line, checkpoint },
        Ok(Line::Event(e)) => {
            let start = arena.len();
            match e.parts(bufs).feed(|piece| arena.extend_from_slice(piece)) {
                Ok(()) => Record::Event { line, index: e.index, link: e.link, canonical: start..arena.len() },
                Err(err) => {
                    arena.truncate(start);
                    Record::Bad(brk(BreakKind::Malformed, line, Some(e.index), err.to_string()))
                }
            }
        }
    }
}

/// Parses a line; an unparsable last line without newline is a cut file rather than a malformed one.
fn parse<'a>(bytes: &'a [u8], terminated: bool, line: u64, bufs: &mut LineBuffers) -> Result<Line<'a>, Break> {
    if bytes.len() > MAX_LINE_BYTES {
        return Err(brk(BreakKind::Malformed, line, None, format!("line longer than {MAX_LINE_BYTES} bytes")));
    }
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
            "the line is valid JSON but not in canonical form (field order, escapes, whitespace, key order or number format differ from what the exporter writes)",
        ));
    }
    Ok(parsed)
}

// ---------------------------------------------------------------------------------------------------------
// Reading and ordering stage (calling thread).

struct Stream<R, P> {
    reader: R,
    progress: P,
    to_workers: Vec<SyncSender<Chunk>>,
    from_workers: Vec<Receiver<Parsed>>,
    dispatched: usize,
    received: usize,
    eof: bool,
    /// A read failure (or an overlong line), reported once the chunks before it are consumed.
    read_error: Option<Break>,
    lines_dispatched: u64,
    spare: Vec<(Vec<u8>, Option<Recycled>)>,
    current: Option<Parsed>,
    next_record: usize,
    /// Lines and bytes of the records handed out so far.
    lines: u64,
    bytes: u64,
}

impl<R: BufRead, P: FnMut(u64)> Stream<R, P> {
    /// Reads the next chunk of whole lines (`None` at the end of the file).
    fn read_chunk(&mut self, mut data: Vec<u8>) -> Result<Option<Vec<u8>>, Break> {
        data.clear();
        let io = |e: std::io::Error, line: u64| brk(BreakKind::Io, line, None, format!("cannot read the export: {e}"));
        let n = (&mut self.reader)
            .take(PROGRESS_INTERVAL)
            .read_to_end(&mut data)
            .map_err(|e| io(e, self.lines_dispatched + 1))?;
        if n == 0 {
            return Ok(None);
        }
        if data.last() != Some(&b'\n') {
            // Complete the last line (or reach the end of the file).
            let limit = MAX_LINE_BYTES as u64 + 1;
            (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut data)
                .map_err(|e| io(e, self.lines_dispatched + 1))?;
            if data.last() != Some(&b'\n') {
                let start = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                if data.len() - start > MAX_LINE_BYTES {
                    let line = self.lines_dispatched + count_lines(&data[..start]) + 1;
                    return Err(brk(
                        BreakKind::Malformed,
                        line,
                        None,
                        format!("line longer than {MAX_LINE_BYTES} bytes"),
                    ));
                }
            }
        }
        Ok(Some(data))
    }

    /// Keeps every worker supplied with chunks.
    fn dispatch(&mut self) {
        let capacity = self.to_workers.len() * IN_FLIGHT;
        while !self.eof && self.dispatched - self.received < capacity {
            let (data, recycled) = self.spare.pop().unwrap_or_default();
            match self.read_chunk(data) {
                Ok(Some(data)) => {
                    let first_line = self.lines_dispatched + 1;
                    self.lines_dispatched += count_lines(&data) + u64::from(data.last() != Some(&b'\n'));
                    let worker = self.dispatched % self.to_workers.len();
                    if self.to_workers[worker].send(Chunk { data, first_line, recycled }).is_err() {
                        self.read_error = Some(brk(BreakKind::Io, first_line, None, "a verifier thread failed"));
                        self.eof = true;
                        return;
                    }
                    self.dispatched += 1;
                }
                Ok(None) => self.eof = true,
                Err(b) => {
                    self.read_error = Some(b);
                    self.eof = true;
                }
            }
        }
    }

    /// The next record, in file order, with the arena holding its canonical bytes.
    fn next(&mut self) -> Result<Option<(&Record, &[u8])>, Break> {
        loop {
            if let Some(parsed) = &self.current {
                if self.next_record < parsed.records.len() {
                    break;
                }
            }
            if let Some(done) = self.current.take() {
                self.spare.push((done.data, Some((done.records, done.arena))));
            }
            self.dispatch();
            if self.received == self.dispatched {
                return match self.read_error.take() {
                    Some(b) => Err(b),
                    None => Ok(None),
                };
            }
            let worker = self.received % self.from_workers.len();
            let parsed = self.from_workers[worker]
                .recv()
                .map_err(|_| brk(BreakKind::Io, self.lines + 1, None, "a verifier thread failed"))?;
            self.received += 1;
            self.bytes += parsed.data.len() as u64;
            (self.progress)(self.bytes);
            self.current = Some(parsed);
            self.next_record = 0;
        }
        let Some(parsed) = self.current.as_ref() else {
            return Ok(None);
        };
        let record = &parsed.records[self.next_record];
        self.next_record += 1;
        self.lines += 1;
        Ok(Some((record, &parsed.arena)))
    }
}

fn count_lines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

// ---------------------------------------------------------------------------------------------------------
// Chain stage (calling thread).

fn run<R: BufRead, P: FnMut(u64)>(
    stream: &mut Stream<R, P>,
    key: &PublicKey,
    trusted: Option<&Checkpoint>,
) -> Result<Report, Break> {
    let mut chain = match stream.next()? {
        None => return Err(brk(BreakKind::Truncated, 0, None, "the file is empty")),
        Some((Record::Header { header, .. }, _)) => Chain::start(header, key, trusted)?,
        Some((Record::Bad(b), _)) if b.kind == BreakKind::Malformed => {
            return Err(brk(
                BreakKind::Malformed,
                1,
                None,
                format!("the first line is not a valid header: {}", b.detail),
            ))
        }
        Some((Record::Bad(b), _)) => return Err(b.clone()),
        Some(_) => return Err(brk(BreakKind::Malformed, 1, None, "the first line is not a header")),
    };
    while let Some((record, arena)) = stream.next()? {
        if let Err(anomaly) = chain.apply(record, arena) {
            return Err(resolve(anomaly, stream, key));
        }
    }
    chain.finish(stream.lines, stream.bytes)
}

struct Chain {
    key: PublicKey,
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
    fn start(header: &Header, key: &PublicKey, trusted: Option<&Checkpoint>) -> Result<Chain, Break> {
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

    fn apply(&mut self, record: &Record, arena: &[u8]) -> Result<(), Anomaly> {
        match record {
            Record::Bad(b) => Err(b.clone().into()),
            Record::Header { line, .. } => Err(brk(BreakKind::Malformed, *line, None, "a second header").into()),
            &Record::Event { line, index, link, ref canonical } => {
                let Some(expected) = self.tip_index.checked_add(1) else {
                    return Err(brk(BreakKind::Malformed, line, None, "event after index u64::MAX").into());
                };
                if index < expected {
                    return Err(brk(
                        BreakKind::InsertedOrReordered,
                        line,
                        Some(index),
                        format!(
                            "event {index} comes after event {}: a duplicated, inserted or moved event line",
                            self.tip_index
                        ),
                    )
                    .into());
                }
                if index > expected {
                    return Err(Anomaly::Gap { line, expected, found: index, what: "event" });
                }
                let recomputed = link_of_canonical(&self.tip_link, &arena[canonical.clone()]);
                if recomputed != link {
                    return Err(Anomaly::LinkMismatch { line, index, stored: link, recomputed });
                }
                self.tip_index = index;
                self.tip_link = recomputed;
                self.events += 1;
                self.last_was_checkpoint = false;
                if let Some((t_index, t_link)) = self.trusted {
                    if t_index == index && t_link != recomputed {
                        return Err(brk(
                            BreakKind::CheckpointMismatch,
                            line,
                            Some(index),
                            format!("event {index} has link {recomputed}, the trusted checkpoint says {t_link}: the history up to it was rewritten"),
                        )
                        .into());
                    }
                }
                Ok(())
            }
            Record::Checkpoint { line, checkpoint: c } => {
                let line = *line;
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
                self.key.verify_checkpoint(c).map_err(|e| match e {
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
                self.checkpoints += 1;
                self.last_checkpoint = Some(c.clone());
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
fn resolve<R: BufRead, P: FnMut(u64)>(anomaly: Anomaly, stream: &mut Stream<R, P>, key: &PublicKey) -> Break {
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
            let bad_link = |how: &str| {
                brk(
                    BreakKind::BadLink,
                    line,
                    Some(index),
                    format!("the stored link of event {index} was altered: its content hashes to {recomputed}, {how}"),
                )
            };
            let inserted = |next: String| {
                brk(
                    BreakKind::InsertedOrReordered,
                    line,
                    Some(index),
                    format!(
                        "event line {index} does not chain and the next line is {next}: an inserted or forged event"
                    ),
                )
            };
            match stream.next() {
                Ok(Some((&Record::Event { index: n, link: next_link, ref canonical, .. }, arena))) => {
                    if n <= index {
                        inserted(format!("event {n}"))
                    } else if n > index.saturating_add(1) {
                        edited("the event or its link was altered")
                    } else if link_of_canonical(&stored, &arena[canonical.clone()]) == next_link {
                        edited("its content was altered (the next event chains from the stored link)")
                    } else if link_of_canonical(&recomputed, &arena[canonical.clone()]) == next_link {
                        bad_link("from which the chain continues")
                    } else {
                        edited("the event or its link was altered")
                    }
                }
                Ok(Some((Record::Checkpoint { checkpoint: c, .. }, _))) if c.index < index => {
                    inserted(format!("a checkpoint of event {}", c.index))
                }
                Ok(Some((Record::Checkpoint { checkpoint: c, .. }, _)))
                    if c.index == index && key.verify_checkpoint(c).is_ok() =>
                {
                    if c.link == recomputed {
                        bad_link("as the signed checkpoint says")
                    } else {
                        edited("its content was altered (the signed checkpoint has the stored link)")
                    }
                }
                _ => edited("the event, its link, or an earlier link was altered"),
            }
        }
        Anomaly::Gap { line, expected, found, what } => {
            let mut moved_to = None;
            while let Ok(Some((record, _))) = stream.next() {
                if let Record::Event { line: later, index, .. } = record {
                    if *index == expected {
                        moved_to = Some(*later);
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

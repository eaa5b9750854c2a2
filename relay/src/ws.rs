//! The server side of WebSocket (RFC 6455) on a TCP connection the HTTP server has upgraded: the gateway's end of
//! both the browsers' terminal connections and the agents' connections.
//!
//! Lean by design (ADR 0011): a connection holds no buffer while it is idle. Reads wait for readiness first and
//! only then take a buffer sized for what is coming (at least [`Config::read_chunk`], or the rest of the frame
//! being read), which is given back as soon as a read finds nothing more and no partial frame is left; writes go
//! straight to the socket with vectored writes (header and payload, never copied into a connection buffer).
//! A thousand idle terminals therefore cost their tasks and sockets, not a thousand pairs of buffers.
//!
//! What it speaks: FIN/continuation fragmentation, text (validated UTF-8), binary, ping, pong and close, with
//! masked client frames as the RFC requires; no extensions (none is negotiated) and no subprotocols. What a peer
//! gets wrong is an [`Error`] that names the close code to answer with.
//!
//! **Invariants:** [`WebSocket::recv`] is cancel-safe (bytes read stay in the connection until a message is
//! whole), so it can be one branch of a `select!`. Writes are serialized by a lock shared by every [`Sender`] of a
//! connection; a write cancelled half-way leaves the connection *broken* (later writes fail at once) rather than
//! sending a torn frame.

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Opcodes (RFC 6455 §5.2).
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Largest header of a server frame (unmasked, 64-bit length).
const MAX_SERVER_HEADER: usize = 10;
/// The most a read reserves ahead for the rest of a large frame (the buffer grows further as its bytes arrive).
const MAX_RESERVE: usize = 256 * 1024;

/// The `Sec-WebSocket-Accept` answer to a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// Whether a `Sec-WebSocket-Key` is well formed: base64 of 16 bytes (RFC 6455 §4.1).
pub fn valid_key(key: &str) -> bool {
    let key = key.as_bytes();
    key.len() == 24
        && key[..22].iter().all(|byte| byte.is_ascii_alphanumeric() || *byte == b'+' || *byte == b'/')
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && key[22..] == *b"=="
}

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Largest message (the sum of its frames' payloads) accepted; a larger one is [`Error::TooLarge`] (close
    /// 1009) as soon as its header says so, before its payload is read.
    pub max_message: usize,
    /// The least a read asks the kernel for. Bigger reads mean fewer system calls on a busy connection; the buffer
    /// exists only while bytes are arriving.
    pub read_chunk: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { max_message: 1024 * 1024, read_chunk: 16 * 1024 }
    }
}

/// A message from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping; answer it with [`Sender::pong`].
    Ping(Vec<u8>),
    /// A pong.
    Pong(Vec<u8>),
    /// The peer's close frame: its code and reason, when it sent a code. Answer with [`WebSocket::close`].
    Close(Option<(u16, String)>),
}

/// Why a connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed, or closed in the middle of a frame.
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol (close 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A message over [`Config::max_message`] (close 1009).
    #[error("message of at least {0} bytes is over the limit")]
    TooLarge(u64),
    /// A text message or close reason that is not UTF-8 (close 1007).
    #[error("text that is not UTF-8")]
    InvalidUtf8,
}

impl Error {
    /// The close code to answer with, when the connection can still take a close frame.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Error::Io(_) => None,
            Error::Protocol(_) => Some(1002),
            Error::TooLarge(_) => Some(1009),
            Error::InvalidUtf8 => Some(1007),
        }
    }
}

struct Shared {
    stream: OwnedWriteHalf,
    /// Whose turn it is to write.
    writing: tokio::sync::Mutex<()>,
    /// A write was cancelled half-way: the byte stream is no longer frames.
    broken: AtomicBool,
}

/// Writes frames to a connection; clones share it (and take turns).
#[derive(Clone)]
pub struct Sender {
    shared: Arc<Shared>,
}

/// The reading end of a connection (and, through [`WebSocket::sender`], its writing end).
pub struct WebSocket {
    /// Reads go through tokio's `AsyncRead`, which knows a short read drained the socket (no `EAGAIN` read after
    /// each message).
    stream: OwnedReadHalf,
    sender: Sender,
    read: Reading,
}

/// Where reading a connection stands (it moves with the connection, see [`WebSocket::detach`]).
struct Reading {
    config: Config,
    /// Bytes read: `buffer[start..]` are not yet parsed. Empty (no allocation) while idle.
    buffer: Vec<u8>,
    start: usize,
    /// A fragmented message being put together: its opcode and payload so far.
    partial: Option<(u8, Vec<u8>)>,
    /// The peer closed its side of the TCP connection.
    eof: bool,
    /// The peer sent its close frame.
    close_received: bool,
}

impl WebSocket {
    /// A connection over `stream`, after the `101 Switching Protocols` answer was written. `already_read` holds bytes
    /// the HTTP server read past the request's head (the first frames of an eager client).
    pub fn new(stream: TcpStream, already_read: &[u8], config: Config) -> Self {
        let read = Reading {
            config,
            buffer: already_read.to_vec(),
            start: 0,
            partial: None,
            eof: false,
            close_received: false,
        };
        Self::resume(stream, read)
    }

    fn resume(stream: TcpStream, read: Reading) -> Self {
        let (stream, writer) = stream.into_split();
        let shared =
            Arc::new(Shared { stream: writer, writing: tokio::sync::Mutex::new(()), broken: AtomicBool::new(false) });
        Self { stream, sender: Sender { shared }, read }
    }

    /// Takes the connection off the current runtime's reactor so that another runtime can serve it
    /// ([`Detached::attach`]), with whatever was read and not yet parsed. Fails when a [`Sender`] of it is still
    /// alive, or a write was torn.
    pub fn detach(self) -> io::Result<Detached> {
        let WebSocket { stream, sender, read } = self;
        let shared =
            Arc::try_unwrap(sender.shared).map_err(|_| io::Error::other("the connection has other senders"))?;
        if shared.broken.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let stream = stream.reunite(shared.stream).map_err(io::Error::other)?.into_std()?;
        Ok(Detached { stream, read })
    }

    /// A handle for writing frames (from this task or another).
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// The peer's next message; `Ok(None)` when it closed the TCP connection between messages (without a close
    /// frame, or after one). Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Message>, Error> {
        loop {
            if let Some(message) = self.parse()? {
                return Ok(Some(message));
            }
            if self.read.eof {
                return if self.read.start == self.read.buffer.len() && self.read.partial.is_none() {
                    Ok(None)
                } else {
                    Err(Error::Io(io::ErrorKind::UnexpectedEof.into()))
                };
            }
            self.fill().await?;
        }
    }

    /// Sends a binary message (see [`Sender::binary`]).
    pub async fn binary(&self, payload: &[u8]) -> io::Result<()> {
        self.sender.binary(payload).await
    }

    /// Sends one binary message made of `parts` (see [`Sender::binary_parts`]).
    pub async fn binary_parts(&self, parts: &[&[u8]]) -> io::Result<()> {
        self.sender.binary_parts(parts).await
    }

    /// Sends a text message (see [`Sender::text`]).
    pub async fn text(&self, text: &str) -> io::Result<()> {
        self.sender.text(text).await
    }

    /// Answers a ping.
    pub async fn pong(&self, payload: &[u8]) -> io::Result<()> {
        self.sender.pong(payload).await
    }

    /// Ends the connection: sends a close frame (`code` and `reason`, or none), then, unless the peer's close frame
    /// already came, waits up to `linger` for it (discarding whatever else arrives) so that the peer reads the close
    /// frame before the socket goes away, and closes the socket.
    ///
    /// After the peer broke the protocol (the [`Error`] this close usually answers), what it sends can no longer be
    /// read as frames: it is drained unread until the peer hangs up or `linger` ends (RFC 6455 §7.1.7). Closing a
    /// socket with unread bytes would reset the connection, and the peer might lose the close frame.
    pub async fn close(self, code: Option<(u16, &str)>, linger: Duration) {
        if self.sender.close(code).await.is_err() {
            return;
        }
        self.linger(linger).await;
    }

    /// The second half of [`WebSocket::close`], for a caller that sent its close frame itself ([`Sender::close`])
    /// and had something to do before waiting for the peer's answer: waits up to `linger` for the peer's close
    /// frame (discarding the rest, draining a peer that broke the protocol), then closes the socket.
    pub async fn linger(mut self, linger: Duration) {
        if self.read.close_received || self.read.eof {
            return;
        }
        let _ = tokio::time::timeout(linger, async {
            loop {
                match self.recv().await {
                    Ok(Some(Message::Close(_))) | Ok(None) | Err(Error::Io(_)) => break,
                    Ok(Some(_)) => {}
                    Err(_) => {
                        self.drain().await;
                        break;
                    }
                }
            }
        })
        .await;
    }

    /// Reads and drops whatever arrives until the peer closes its side of the connection (or the socket fails).
    async fn drain(&mut self) {
        self.read.buffer = Vec::with_capacity(self.read.config.read_chunk);
        self.read.start = 0;
        loop {
            if self.stream.readable().await.is_err() {
                return;
            }
            self.read.buffer.clear();
            match self.stream.try_read_buf(&mut self.read.buffer) {
                Ok(0) => {
                    self.read.eof = true;
                    return;
                }
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    /// Reads more bytes: waits for the socket to be readable, then reads into a buffer that exists only now.
    async fn fill(&mut self) -> Result<(), Error> {
        if self.read.start > 0 {
            self.read.buffer.drain(..self.read.start);
            self.read.start = 0;
        }
        loop {
            match self.stream.readable().now_or_never() {
                Some(ready) => ready?,
                None => {
                    if self.read.buffer.is_empty() {
                        // Nothing pending and nothing arriving: give the buffer back while the connection waits.
                        self.read.buffer = Vec::new();
                    }
                    self.stream.readable().await?;
                }
            }
            // A frame's announced size is not trusted with memory: at most `MAX_RESERVE` is taken ahead of its bytes.
            let wanted = self.read.config.read_chunk.max(self.frame_remaining().min(MAX_RESERVE));
            self.read.buffer.reserve(wanted);
            // Through `AsyncRead`: a read that does not fill the buffer marks the socket drained, so the next `fill`
            // waits for readiness instead of first trying a read that would find nothing (`try_read_buf` would).
            // `None`: the readiness was stale, the read found nothing and cleared it; wait again.
            match self.stream.read_buf(&mut self.read.buffer).now_or_never() {
                Some(Ok(0)) => {
                    self.read.eof = true;
                    return Ok(());
                }
                Some(Ok(_)) => return Ok(()),
                Some(Err(error)) => return Err(error.into()),
                None => {}
            }
        }
    }

    /// How many bytes the frame at the front still needs (0 when its header is incomplete or nothing is pending).
    fn frame_remaining(&self) -> usize {
        let available = &self.read.buffer[self.read.start..];
        match frame_header(available) {
            Ok(Some(header)) => {
                let total = (header.length as usize).saturating_add(header.size);
                total
                    .saturating_sub(available.len())
                    .min(self.read.config.max_message.saturating_add(MAX_CLIENT_HEADER))
            }
            _ => 0,
        }
    }

    /// The next whole message in the buffer, handling fragments; `None` when more bytes are needed.
    fn parse(&mut self) -> Result<Option<Message>, Error> {
        loop {
            let available = &self.read.buffer[self.read.start..];
            let Some(header) = frame_header(available)? else { return Ok(None) };
            // Limits first: a peer announcing a huge frame is refused before its payload is waited for.
            match header.opcode {
                OP_CONTINUATION => {
                    let Some((_, so_far)) = &self.read.partial else {
                        return Err(Error::Protocol("continuation frame without a message to continue"));
                    };
                    let total = so_far.len() as u64 + header.length;
                    if total > self.read.config.max_message as u64 {
                        return Err(Error::TooLarge(total));
                    }
                }
                OP_TEXT | OP_BINARY => {
                    if self.read.partial.is_some() {
                        return Err(Error::Protocol("new message before the fragmented one ended"));
                    }
                    if header.length > self.read.config.max_message as u64 {
                        return Err(Error::TooLarge(header.length));
                    }
                }
                _ => {}
            }
            // Control frames are at most 125 bytes and data frames within `max_message`: this fits a usize.
            let length = header.length as usize;
            if available.len() < header.size + length {
                return Ok(None);
            }
            let from = self.read.start + header.size;
            let payload = &mut self.read.buffer[from..from + length];
            unmask(payload, header.mask);
            let payload = payload.to_vec();
            self.read.start = from + length;
            if self.read.start == self.read.buffer.len() {
                self.read.buffer.clear();
                self.read.start = 0;
            }
            if let Some(message) = self.finish(header, payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// Turns one unmasked frame into a message, or keeps it as a fragment (`None`).
    fn finish(&mut self, header: Header, payload: Vec<u8>) -> Result<Option<Message>, Error> {
        let (opcode, payload) = match header.opcode {
            OP_PING => return Ok(Some(Message::Ping(payload))),
            OP_PONG => return Ok(Some(Message::Pong(payload))),
            OP_CLOSE => {
                self.read.close_received = true;
                return close_payload(&payload).map(|close| Some(Message::Close(close)));
            }
            OP_CONTINUATION => {
                let Some((opcode, mut so_far)) = self.read.partial.take() else {
                    return Err(Error::Protocol("continuation frame without a message to continue"));
                };
                so_far.extend_from_slice(&payload);
                if !header.fin {
                    self.read.partial = Some((opcode, so_far));
                    return Ok(None);
                }
                (opcode, so_far)
            }
            opcode => {
                if !header.fin {
                    self.read.partial = Some((opcode, payload));
                    return Ok(None);
                }
                (opcode, payload)
            }
        };
        if opcode == OP_TEXT {
            String::from_utf8(payload).map(|text| Some(Message::Text(text))).map_err(|_| Error::InvalidUtf8)
        } else {
            Ok(Some(Message::Binary(payload)))
        }
    }
}

/// A connection between two runtimes (see [`WebSocket::detach`]).
pub struct Detached {
    stream: std::net::TcpStream,
    read: Reading,
}

impl Detached {
    /// Serves the connection on the current runtime, where it left off.
    pub fn attach(self) -> io::Result<WebSocket> {
        Ok(WebSocket::resume(TcpStream::from_std(self.stream)?, self.read))
    }
}

/// A client frame's header.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    length: u64,
    /// The header's own size in bytes.
    size: usize,
}

/// Largest header of a client frame (masked, 64-bit length).
const MAX_CLIENT_HEADER: usize = 14;

/// The header at the front of `bytes`; `None` when it is not all there yet.
fn frame_header(bytes: &[u8]) -> Result<Option<Header>, Error> {
    let [first, second, ..] = *bytes else { return Ok(None) };
    let fin = first & 0x80 != 0;
    if first & 0x70 != 0 {
        return Err(Error::Protocol("reserved bits set (no extension was negotiated)"));
    }
    let opcode = first & 0x0F;
    if !matches!(opcode, OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
        return Err(Error::Protocol("unknown opcode"));
    }
    if second & 0x80 == 0 {
        return Err(Error::Protocol("client frames must be masked"));
    }
    let (length, length_size) = match second & 0x7F {
        126 => {
            let Some(bytes) = bytes.get(2..4) else { return Ok(None) };
            (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 2)
        }
        127 => {
            let Some(bytes) = bytes.get(2..10) else { return Ok(None) };
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            let length = u64::from_be_bytes(word);
            if length >> 63 != 0 {
                return Err(Error::Protocol("frame length with its most significant bit set"));
            }
            (length, 8)
        }
        short => (u64::from(short), 0),
    };
    if opcode & 0x08 != 0 {
        if !fin {
            return Err(Error::Protocol("fragmented control frame"));
        }
        if length > 125 {
            return Err(Error::Protocol("control frame longer than 125 bytes"));
        }
    }
    let size = 2 + length_size + 4;
    let Some(mask) = bytes.get(2 + length_size..size) else { return Ok(None) };
    Ok(Some(Header { fin, opcode, mask: [mask[0], mask[1], mask[2], mask[3]], length, size }))
}

/// XORs `payload` with the frame's masking key, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut words = payload.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key lines up again from its first byte.
    for (index, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[index % 4];
    }
}

/// A close frame's code and reason (RFC 6455 §5.5.1, §7.4).
fn close_payload(payload: &[u8]) -> Result<Option<(u16, String)>, Error> {
    match payload {
        [] => Ok(None),
        [_] => Err(Error::Protocol("close frame with a one-byte body")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1011 | 1012..=1014 | 3000..=4999);
            if !allowed {
                return Err(Error::Protocol("close code that may not be sent"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Error::InvalidUtf8)?;
            Ok(Some((code, reason.to_string())))
        }
    }
}

/// Writes the header of a server frame (final, unmasked) with a `payload_length`-byte payload at the start of `out`
/// (at least [`MAX_SERVER_HEADER`] bytes); returns its size.
fn header_into(out: &mut [u8], opcode: u8, payload_length: usize) -> usize {
    out[0] = 0x80 | opcode;
    if payload_length < 126 {
        out[1] = payload_length as u8;
        2
    } else if let Ok(short) = u16::try_from(payload_length) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_length as u64).to_be_bytes());
        10
    }
}

/// Appends the header of one binary server frame with a `payload_length`-byte payload to `out` (the payload is
/// written after it, for instance as its own slice in [`Sender::write_slices`]).
pub fn encode_binary_header(out: &mut Vec<u8>, payload_length: usize) {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let size = header_into(&mut header, OP_BINARY, payload_length);
    out.extend_from_slice(&header[..size]);
}

/// Appends one binary server frame whose payload is the concatenation of `parts` to `out` (for writers that batch
/// several frames into one [`Sender::write_slices`]).
pub fn encode_binary(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let length = parts.iter().map(|part| part.len()).sum();
    let mut header = [0u8; MAX_SERVER_HEADER];
    let size = header_into(&mut header, OP_BINARY, length);
    out.reserve(size + length);
    out.extend_from_slice(&header[..size]);
    for part in parts {
        out.extend_from_slice(part);
    }
}

impl Sender {
    /// Sends a binary message.
    pub async fn binary(&self, payload: &[u8]) -> io::Result<()> {
        self.frame(OP_BINARY, payload).await
    }

    /// Sends one binary message whose payload is `parts`, one after the other: header and parts leave in one
    /// vectored write, nothing is copied.
    pub async fn binary_parts(&self, parts: &[&[u8]]) -> io::Result<()> {
        let mut header = [0u8; MAX_SERVER_HEADER];
        let size = header_into(&mut header, OP_BINARY, parts.iter().map(|part| part.len()).sum());
        let mut slices = Vec::with_capacity(parts.len() + 1);
        slices.push(IoSlice::new(&header[..size]));
        slices.extend(parts.iter().map(|part| IoSlice::new(part)));
        self.write_all(&mut slices).await
    }

    /// Sends a text message.
    pub async fn text(&self, text: &str) -> io::Result<()> {
        self.frame(OP_TEXT, text.as_bytes()).await
    }

    /// Answers a ping with its payload.
    pub async fn pong(&self, payload: &[u8]) -> io::Result<()> {
        self.frame(OP_PONG, &payload[..payload.len().min(125)]).await
    }

    /// Sends a close frame: `code` and `reason` (cut to fit a control frame at a character boundary), or no body.
    pub async fn close(&self, code: Option<(u16, &str)>) -> io::Result<()> {
        let mut body = Vec::with_capacity(125);
        if let Some((code, reason)) = code {
            body.extend_from_slice(&code.to_be_bytes());
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            body.extend_from_slice(&reason.as_bytes()[..end]);
        }
        self.frame(OP_CLOSE, &body).await
    }

    /// Writes the slices whole, in order, as one turn (frames whose headers and payloads are separate slices; see
    /// [`encode_binary_header`]).
    pub async fn write_slices(&self, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        self.write_all(slices).await
    }

    async fn frame(&self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        // Header and payload leave in one vectored write; nothing is copied, and the future stays small (it is part
        // of every idle session's task).
        let mut header = [0u8; MAX_SERVER_HEADER];
        let size = header_into(&mut header, opcode, payload.len());
        self.write_all(&mut [IoSlice::new(&header[..size]), IoSlice::new(payload)]).await
    }

    /// Writes every slice, in turn with the connection's other writers; a write cancelled half-way marks the
    /// connection broken.
    async fn write_all(&self, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        let _turn = self.shared.writing.lock().await;
        if self.shared.broken.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut torn = TornGuard { shared: &self.shared, armed: false };
        while !slices.is_empty() {
            match self.shared.stream.try_write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    torn.armed = true;
                    IoSlice::advance_slices(&mut slices, written);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => self.shared.stream.writable().await?,
                Err(error) => return Err(error),
            }
        }
        torn.armed = false;
        Ok(())
    }
}

/// Marks the connection broken when dropped armed (a write stopped after some of its bytes left).
struct TornGuard<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for TornGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.broken.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut frame = vec![first];
        match payload.len() {
            length if length < 126 => frame.push(0x80 | length as u8),
            length if length <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(length as u16).to_be_bytes());
            }
            length => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
        frame
    }

    #[test]
    fn unmasking_matches_the_byte_by_byte_definition() {
        for length in 0..40 {
            let original: Vec<u8> = (0..length).map(|byte: u32| (byte * 7) as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let mut payload: Vec<u8> = original.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            unmask(&mut payload, mask);
            assert_eq!(payload, original, "length {length}");
        }
    }

    #[test]
    fn headers_of_every_length_form() {
        for length in [0usize, 125, 126, 65_535, 65_536] {
            let frame = client_frame(0x82, &vec![1u8; length], [1, 2, 3, 4]);
            let header = frame_header(&frame).unwrap().unwrap();
            assert_eq!(header.length, length as u64);
            assert_eq!(header.size + length, frame.len());
            // Every cut inside the header asks for more bytes.
            for cut in 0..header.size {
                assert!(frame_header(&frame[..cut]).unwrap().is_none(), "length {length} cut {cut}");
            }
        }
    }

    #[test]
    fn peers_breaking_the_protocol_are_named() {
        let unmasked = [0x82, 0x01, 0x00];
        assert!(matches!(frame_header(&unmasked), Err(Error::Protocol(_))));
        let reserved = client_frame(0xC2, b"x", [0; 4]);
        assert!(matches!(frame_header(&reserved), Err(Error::Protocol(_))));
        let opcode = client_frame(0x83, b"x", [0; 4]);
        assert!(matches!(frame_header(&opcode), Err(Error::Protocol(_))));
        let fragmented_ping = client_frame(0x09, b"x", [0; 4]);
        assert!(matches!(frame_header(&fragmented_ping), Err(Error::Protocol(_))));
        let long_ping = client_frame(0x89, &[0; 126], [0; 4]);
        assert!(matches!(frame_header(&long_ping), Err(Error::Protocol(_))));
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(frame_header(&huge), Err(Error::Protocol(_))));
    }

    #[test]
    fn close_bodies() {
        assert_eq!(close_payload(&[]).unwrap(), None);
        assert!(close_payload(&[3]).is_err());
        assert_eq!(close_payload(&[0x03, 0xE8, b'o', b'k']).unwrap(), Some((1000, "ok".to_string())));
        assert_eq!(close_payload(&[0x0F, 0xA0]).unwrap(), Some((4000, String::new())));
        for forbidden in [999u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(close_payload(&forbidden.to_be_bytes()).is_err(), "{forbidden}");
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xFF, 0xFE]);
        assert!(matches!(close_payload(&bad_reason), Err(Error::InvalidUtf8)));
    }

    #[test]
    fn server_headers() {
        let mut out = [0u8; MAX_SERVER_HEADER];
        assert_eq!(header_into(&mut out, OP_BINARY, 5), 2);
        assert_eq!(out[..2], [0x82, 5]);
        assert_eq!(header_into(&mut out, OP_TEXT, 300), 4);
        assert_eq!(out[..4], [0x81, 126, 0x01, 0x2C]);
        assert_eq!(header_into(&mut out, OP_BINARY, 70_000), 10);
        assert_eq!(out[..10], [0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
    }

    #[test]
    fn keys() {
        // RFC 6455 §1.3.
        assert!(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(!valid_key(""));
        assert!(!valid_key("dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!valid_key("dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!valid_key("dGhlIHNhbXBsZSBub25j!Q=="));
    }

    /// A connection waiting for its peer holds no read buffer, after small and large messages alike.
    #[tokio::test]
    async fn an_idle_connection_holds_no_read_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut socket = WebSocket::new(server, &[], Config::default());
        for size in [5usize, 300, 70_000] {
            let payload = vec![b'x'; size];
            client.write_all(&client_frame(0x82, &payload, [0; 4])).await.unwrap();
            assert_eq!(socket.recv().await.unwrap(), Some(Message::Binary(payload)));
            // Waiting for the next message, which does not come.
            let waiting = tokio::time::timeout(Duration::from_millis(50), socket.recv()).await;
            assert!(waiting.is_err());
            assert_eq!(socket.read.buffer.capacity(), 0, "after a {size}-byte message");
        }
    }

    /// A connection moved to another runtime keeps what it had read but not parsed, and goes on in both directions.
    #[tokio::test]
    async fn a_detached_connection_goes_on_on_another_runtime() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut socket = WebSocket::new(server, &[], Config::default());
        // One whole frame and the first half of the next arrive together.
        let (first, second) = (client_frame(0x82, b"first", [1, 2, 3, 4]), client_frame(0x82, b"second", [1, 2, 3, 4]));
        let mut bytes = first.clone();
        bytes.extend_from_slice(&second[..4]);
        client.write_all(&bytes).await.unwrap();
        assert_eq!(socket.recv().await.unwrap(), Some(Message::Binary(b"first".to_vec())));
        // Make sure the half frame was read too before the move.
        let waiting = tokio::time::timeout(Duration::from_millis(50), socket.recv()).await;
        assert!(waiting.is_err());
        let detached = socket.detach().unwrap();
        let other = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut socket = detached.attach().unwrap();
                let message = socket.recv().await.unwrap();
                socket.binary(b"moved").await.unwrap();
                message
            })
        });
        client.write_all(&second[4..]).await.unwrap();
        let mut answer = [0u8; 7];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [0x82, 5, b'm', b'o', b'v', b'e', b'd']);
        assert_eq!(other.join().unwrap(), Some(Message::Binary(b"second".to_vec())));
    }

    /// A connection with a live sender elsewhere cannot move.
    #[tokio::test]
    async fn a_connection_with_another_sender_does_not_move() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let socket = WebSocket::new(server, &[], Config::default());
        let sender = socket.sender();
        assert!(socket.detach().is_err());
        drop(sender);
    }
}

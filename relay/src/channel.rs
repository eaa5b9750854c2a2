//! A port-forward session as a byte stream: [`Channel`] is `AsyncRead + AsyncWrite` over one mux session, so an HTTP
//! client can speak to the workspace's app through the agent as it would over TCP (ADR 0026).
//!
//! Flow control is the session's: a write waits for the agent's window (so a fast upload never queues more than a
//! window per connection), and output read out of the channel is returned to the agent as credit (so a slow browser
//! holds back only its own app connection). Bytes each way are counted into the [`Counters`] given, for the audit.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::PollSemaphore;

use crate::hub::{SessionHandle, ToBrowser};
use crate::mux::MAX_DATA;

/// Bytes carried each way, shared by every connection of one preview session.
#[derive(Debug, Default)]
pub struct Counters {
    /// Browser → app.
    pub bytes_in: AtomicU64,
    /// App → browser.
    pub bytes_out: AtomicU64,
}

impl Counters {
    /// Browser → app and app → browser, so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.bytes_in.load(Ordering::Relaxed), self.bytes_out.load(Ordering::Relaxed))
    }
}

/// One open port-forward session, as a stream. Dropping it closes the session (the agent closes its connection to
/// the app).
pub struct Channel {
    handle: SessionHandle,
    window: PollSemaphore,
    credit: Arc<tokio::sync::Semaphore>,
    /// Output received and not yet read, from `at`.
    pending: Vec<u8>,
    at: usize,
    ended: bool,
    counters: Arc<Counters>,
}

impl Channel {
    /// The stream over `handle`, a session the agent has opened.
    pub fn new(handle: SessionHandle, counters: Arc<Counters>) -> Self {
        let credit = handle.credit();
        Self {
            window: PollSemaphore::new(credit.clone()),
            credit,
            handle,
            pending: Vec::new(),
            at: 0,
            ended: false,
            counters,
        }
    }
}

impl AsyncRead for Channel {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.at < this.pending.len() {
                let count = (this.pending.len() - this.at).min(buf.remaining());
                buf.put_slice(&this.pending[this.at..this.at + count]);
                this.at += count;
                if this.at == this.pending.len() {
                    this.pending = Vec::new();
                    this.at = 0;
                }
                // Read out of the channel: the agent may send that much more.
                this.handle.consumed(count);
                this.counters.bytes_out.fetch_add(count as u64, Ordering::Relaxed);
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.handle.poll_recv(cx)) {
                Some(ToBrowser::Data(bytes)) => (this.pending, this.at) = (bytes, 0),
                Some(ToBrowser::Opened) | Some(ToBrowser::Exit(_)) => {}
                // The app closed its connection: the end of the stream.
                Some(ToBrowser::Closed) => this.ended = true,
                Some(ToBrowser::AgentLost) | Some(ToBrowser::AgentRevoked) | None => {
                    this.ended = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the workspace's agent disconnected",
                    )));
                }
            }
        }
    }
}

impl AsyncWrite for Channel {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        // As much as the window has room for now; when it has none, wait for the first byte of room and take what
        // came with it.
        let wanted = buf.len().min(MAX_DATA);
        let Some(first) = ready!(this.window.poll_acquire(cx)) else {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the preview connection is closed")));
        };
        first.forget();
        let more = (wanted - 1).min(this.credit.available_permits());
        if let Ok(permit) = this.credit.try_acquire_many(more as u32) {
            permit.forget();
        }
        let count = 1 + more;
        if !this.handle.send_granted(buf[..count].to_vec()) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the workspace's agent disconnected")));
        }
        this.counters.bytes_in.fetch_add(count as u64, Ordering::Relaxed);
        Poll::Ready(Ok(count))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Every write is a frame already handed to the agent connection's writer.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sessions have no half-close: shutting down closes the session (the app sees its connection end).
        self.handle.close();
        Poll::Ready(Ok(()))
    }
}

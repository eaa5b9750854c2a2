//! The agent's side of a preview: a port-forward session is one TCP connection from the agent to a port of the
//! workspace's loopback interface (`127.0.0.1`, then `::1`), carried over the agent's outbound connection like a
//! terminal (ADR 0026). The workspace never accepts a connection from outside: the agent dials its own loopback.
//!
//! Flow control is the mux's, per session: the agent reads from the app only while the gateway's window has room,
//! and returns credit for each write into the app. Reading and writing are separate tasks, so an app that answers
//! while it is still reading a large upload (an echo) never deadlocks against its own request.
//!
//! A connection that cannot be made (nothing listens, or no answer in [`CONNECT_TIMEOUT`]) is answered with `Close`
//! before any `Opened`: the gateway tells that apart from a session that opened and ended.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use crate::mux::{Frame, INITIAL_WINDOW, MAX_DATA};

/// The protocol feature an agent announces in its `hello` when it forwards ports. A gateway never opens a preview on
/// an agent without it: an older agent would start a shell for it.
pub const FEATURE_PREVIEW: &str = "preview";

/// How long the agent tries to reach the app's port.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One forwarded connection, as the agent's connection loop holds it.
pub struct Forward {
    input: mpsc::UnboundedSender<Vec<u8>>,
    window: Arc<Semaphore>,
    work: tokio::task::AbortHandle,
}

impl Forward {
    /// Dials `port` on the loopback interface for `session` and relays it; frames go to `out`. Port 0 is refused.
    pub fn spawn(session: u32, port: u16, out: &mpsc::UnboundedSender<Frame>) -> Self {
        let window = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
        let (input, inputs) = mpsc::unbounded_channel();
        let (out, credit) = (out.clone(), window.clone());
        let work = tokio::spawn(async move {
            let stream = match connect(port).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::info!(session, port, %error, "cannot reach the preview's port");
                    let _ = out.send(Frame::Close { session });
                    return;
                }
            };
            if out.send(Frame::Opened { session }).is_err() {
                return;
            }
            relay(session, stream, inputs, credit, &out).await;
            let _ = out.send(Frame::Close { session });
        });
        Self { input, window, work: work.abort_handle() }
    }

    /// Bytes from the gateway, for the app.
    pub fn input(&self, bytes: Vec<u8>) {
        let _ = self.input.send(bytes);
    }

    /// The gateway returned `bytes` of credit.
    pub fn credit(&self, bytes: u32) {
        let room = (INITIAL_WINDOW as usize).saturating_sub(self.window.available_permits());
        self.window.add_permits((bytes as usize).min(room));
    }

    /// Whether the connection is over (the app closed it, or it never opened).
    pub fn finished(&self) -> bool {
        self.work.is_finished()
    }

    /// Ends the connection (the gateway closed the session).
    pub fn close(&self) {
        self.window.close();
        self.work.abort();
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.close();
    }
}

/// The app's port on the loopback interface: IPv4 first, then IPv6 (dev servers that bind `localhost` may take
/// either).
async fn connect(port: u16) -> std::io::Result<TcpStream> {
    if port == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "port 0"));
    }
    let mut last = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "nothing listens");
    for address in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(SocketAddr::new(address, port))).await {
            Ok(Ok(stream)) => {
                // Small requests and responses go out at once (as the gateway's own sockets: src/app.rs).
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(error)) => last = error,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "the port did not answer in time"),
        }
    }
    Err(last)
}

/// Moves bytes both ways until the app closes its side, or the gateway closes the session.
async fn relay(
    session: u32,
    stream: TcpStream,
    mut inputs: mpsc::UnboundedReceiver<Vec<u8>>,
    window: Arc<Semaphore>,
    out: &mpsc::UnboundedSender<Frame>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let credits = out.clone();
    let writing = tokio::spawn(async move {
        while let Some(bytes) = inputs.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
            if credits.send(Frame::Credit { session, bytes: bytes.len() as u32 }).is_err() {
                break;
            }
        }
        // The gateway's side is done (or the app stopped reading): the app sees the end of its request stream.
        let _ = writer.shutdown().await;
    });
    let mut buffer = vec![0u8; MAX_DATA];
    loop {
        // Read only what the window lets through; wait for credit when it is empty.
        let room = match window.acquire().await {
            Ok(permit) => {
                drop(permit);
                window.available_permits().min(MAX_DATA)
            }
            Err(_) => break,
        };
        let count = match reader.read(&mut buffer[..room]).await {
            Ok(0) | Err(_) => break,
            Ok(count) => count,
        };
        match window.try_acquire_many(count as u32) {
            Ok(permit) => permit.forget(),
            Err(_) => break,
        }
        if out.send(Frame::Data { session, bytes: buffer[..count].to_vec() }).is_err() {
            break;
        }
    }
    writing.abort();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn next(frames: &mut mpsc::UnboundedReceiver<Frame>) -> Frame {
        tokio::time::timeout(Duration::from_secs(10), frames.recv()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn nothing_listening_is_a_close_without_opened() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (out, mut frames) = mpsc::unbounded_channel();
        let _forward = Forward::spawn(7, port, &out);
        assert_eq!(next(&mut frames).await, Frame::Close { session: 7 });
        let _zero = Forward::spawn(8, 0, &out);
        assert_eq!(next(&mut frames).await, Frame::Close { session: 8 });
    }

    #[tokio::test]
    async fn an_app_that_talks_faster_than_the_gateway_reads_stops_at_the_window() {
        // An app that writes 1 MiB at once, then echoes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(&vec![1u8; 1 << 20]).await.unwrap();
            let mut buffer = [0u8; 1024];
            while let Ok(count) = stream.read(&mut buffer).await {
                if count == 0 || stream.write_all(&buffer[..count]).await.is_err() {
                    break;
                }
            }
        });
        let (out, mut frames) = mpsc::unbounded_channel();
        let forward = Forward::spawn(3, port, &out);
        assert_eq!(next(&mut frames).await, Frame::Opened { session: 3 });
        let mut received = 0;
        while received < INITIAL_WINDOW as usize {
            match next(&mut frames).await {
                Frame::Data { session: 3, bytes } => received += bytes.len(),
                other => panic!("{other:?}"),
            }
        }
        // The window is spent: nothing more until credit comes.
        assert_eq!(received, INITIAL_WINDOW as usize);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(frames.try_recv().is_err(), "the agent overran its window");
        forward.credit(4096);
        // Input reaches the app, and each write is credited back; meanwhile at most the credit's bytes came out.
        forward.input(b"ping".to_vec());
        let mut after_credit = 0;
        loop {
            match next(&mut frames).await {
                Frame::Data { bytes, .. } => after_credit += bytes.len(),
                Frame::Credit { session: 3, bytes: 4 } => break,
                other => panic!("{other:?}"),
            }
        }
        assert!(after_credit <= 4096, "{after_credit} bytes for 4096 of credit");
        // Closing ends the connection.
        forward.close();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(forward.finished());
    }
}

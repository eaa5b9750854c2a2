//! A TCP proxy on loopback that a test can switch off, to make a database unreachable without touching the
//! server (which other tests share).
//!
//! Point the service at [`TcpProxy::url`] instead of the database and switch the proxy's [`Mode`]:
//!
//! - [`Mode::Pass`] forwards bytes both ways.
//! - [`Mode::BlackHole`] is a network partition, the worst case for a client: new connections are accepted and
//!   never answered (a connect hangs until the client's own timeout), and connections already open stop moving
//!   bytes in either direction (a query in flight hangs; pooled connections look alive). Switching back to
//!   `Pass` resumes them where they stopped, as TCP would after a partition heals; connections accepted during
//!   the black hole are dropped then.
//! - [`Mode::Refuse`] cuts every open connection and closes each new one as soon as it is accepted: the client
//!   sees the connection end at once (like a restarting server).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Accept and never answer; open connections freeze.
    BlackHole,
    /// Close new connections at once and cut open ones.
    Refuse,
}

/// A proxy from a free loopback port to `upstream`; stops when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Pass);
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(listener, upstream.to_string(), mode.clone(), accepted.clone()));
        Self { addr, mode, accepted, task }
    }

    /// A proxy in front of the PostgreSQL server of `database_url`, and that URL rewritten to go through it.
    pub async fn for_postgres(database_url: &str) -> (Self, String) {
        let (scheme, rest) = database_url.split_once("://").unwrap();
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((credentials, rest)) => (Some(credentials), rest),
            None => (None, rest),
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (host, tail) = rest.split_at(end);
        let upstream = if host.contains(':') { host.to_string() } else { format!("{host}:5432") };
        let proxy = Self::start(&upstream).await;
        let credentials = credentials.map(|credentials| format!("{credentials}@")).unwrap_or_default();
        let url = format!("{scheme}://{credentials}{}{tail}", proxy.addr);
        (proxy, url)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the proxy; open connections follow at once.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// How many connections the proxy has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Refuse);
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, mode: watch::Sender<Mode>, accepted: Arc<AtomicUsize>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        accepted.fetch_add(1, Ordering::Relaxed);
        let mut watcher = mode.subscribe();
        let current = *watcher.borrow_and_update();
        match current {
            Mode::Refuse => drop(client),
            Mode::BlackHole => {
                // Held open without a byte in reply until the black hole ends, then dropped.
                tokio::spawn(async move {
                    let _client = client;
                    while *watcher.borrow_and_update() == Mode::BlackHole {
                        if watcher.changed().await.is_err() {
                            return;
                        }
                    }
                });
            }
            Mode::Pass => {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    // When either direction ends, both connections are dropped (closed).
                    tokio::select! {
                        () = pump(client_read, server_write, watcher.clone()) => {}
                        () = pump(server_read, client_write, watcher) => {}
                    }
                });
            }
        }
    }
}

/// Waits while the proxy is a black hole; false when the connection must be cut.
async fn flowing(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            Mode::Pass => return true,
            Mode::Refuse => return false,
            Mode::BlackHole => {}
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

/// Copies bytes from `from` to `to` while the mode lets them through.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if !flowing(&mut mode).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // The mode moved: look again before reading.
            _ = mode.changed() => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just as a black hole began are held until it ends.
        if !flowing(&mut mode).await {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

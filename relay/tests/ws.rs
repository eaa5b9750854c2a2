//! `relay::ws` over real sockets on 127.0.0.1: a real WebSocket client (tokio-tungstenite, upgraded by a small
//! handshake server written here, as the gateway would) and a raw TCP client that writes hand-built masked frames
//! in pieces of every size, to prove what the module promises: every length form and the size limit (checked from
//! the header), fragmentation, the protocol errors and their close codes, the closing handshake, bytes the HTTP
//! layer read past the request head, cancel-safe `recv`, and whole frames from concurrent senders.
//!
//! The read buffer being given back while idle cannot be observed from outside the module and is not tested here.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay::ws::{self, Config, Error, Message, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Tungstenite;
use tokio_tungstenite::WebSocketStream;

/// The default `Config::max_message`.
const LIMIT: usize = 1024 * 1024;

/// Longer than anything takes on loopback: a test that waits this long has found a hang, and fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// The first byte of a frame: FIN and the opcodes.
const FIN: u8 = 0x80;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

// ---------------------------------------------------------------------------------------------------------------
// Connections.

/// The gateway's part of the upgrade, done by hand: reads the request head (in whatever pieces it comes, so possibly
/// past its end), checks the key, answers `101 Switching Protocols` with its accept key, and returns the bytes read
/// past the head: the `already_read` of [`WebSocket::new`].
async fn upgrade(stream: &mut TcpStream) -> Vec<u8> {
    let mut read = Vec::new();
    let head_end = loop {
        if let Some(at) = read.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let count = stream.read(&mut chunk).await.unwrap();
        assert!(count > 0, "the client hung up before the end of its request head");
        read.extend_from_slice(&chunk[..count]);
    };
    let head = std::str::from_utf8(&read[..head_end]).unwrap();
    assert!(head.starts_with("GET "), "{head}");
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
        })
    };
    assert!(header("upgrade").unwrap().eq_ignore_ascii_case("websocket"), "{head}");
    let key = header("sec-websocket-key").unwrap();
    assert!(ws::valid_key(&key), "{key}");
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        ws::accept_key(&key)
    );
    stream.write_all(response.as_bytes()).await.unwrap();
    read.split_off(head_end)
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

type Client = WebSocketStream<TcpStream>;

/// A connection with the default limits, and a tokio-tungstenite client on its other end.
async fn tungstenite_pair() -> (WebSocket, Client) {
    tungstenite_pair_with_buffers(None).await
}

/// [`tungstenite_pair`], with socket buffers of about `buffers` bytes (the server's for sending, the client's for
/// receiving) when given: small buffers make the server write large frames in many pieces.
async fn tungstenite_pair_with_buffers(buffers: Option<u32>) -> (WebSocket, Client) {
    let listening = TcpSocket::new_v4().unwrap();
    let connecting = TcpSocket::new_v4().unwrap();
    if let Some(size) = buffers {
        // Accepted connections take the listening socket's buffer sizes.
        listening.set_send_buffer_size(size).unwrap();
        connecting.set_recv_buffer_size(size).unwrap();
    }
    listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = listening.listen(16).unwrap();
    let address = listener.local_addr().unwrap();
    let server = async {
        let (mut stream, _) = listener.accept().await.unwrap();
        let already_read = upgrade(&mut stream).await;
        WebSocket::new(stream, &already_read, Config::default())
    };
    let client = async {
        let stream = connecting.connect(address).await.unwrap();
        tokio_tungstenite::client_async(format!("ws://{address}/terminal"), stream).await.unwrap().0
    };
    patiently("handshake", async { tokio::join!(server, client) }).await
}

/// A connection and a raw TCP client on its other end (no HTTP: the test writes frames itself).
async fn raw_pair(config: Config) -> (WebSocket, TcpStream) {
    let (listener, address) = listen().await;
    let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    let client = client.unwrap();
    client.set_nodelay(true).unwrap();
    (WebSocket::new(accepted.unwrap().0, &[], config), client)
}

async fn patiently<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: still waiting after {PATIENCE:?}"),
    }
}

async fn recv(ws: &mut WebSocket) -> Result<Option<Message>, Error> {
    patiently("recv", ws.recv()).await
}

async fn recv_message(ws: &mut WebSocket) -> Message {
    match recv(ws).await {
        Ok(Some(message)) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn recv_error(ws: &mut WebSocket) -> Error {
    match recv(ws).await {
        Err(error) => error,
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

async fn client_next(client: &mut Client) -> Tungstenite {
    match patiently("tungstenite client", client.next()).await {
        Some(Ok(message)) => message,
        other => panic!("expected a message on the client, got {other:?}"),
    }
}

/// What the tungstenite client reads until its stream ends; fails on any error (a reset, a protocol error).
async fn client_rest(client: &mut Client) -> Vec<Tungstenite> {
    let mut messages = Vec::new();
    while let Some(message) = patiently("tungstenite client", client.next()).await {
        messages.push(message.unwrap_or_else(|error| panic!("after {messages:?}: {error:?}")));
    }
    messages
}

// ---------------------------------------------------------------------------------------------------------------
// Frames and payloads.

/// The header of a masked client frame with a `length`-byte payload; `first` is FIN, RSV and opcode.
fn header(first: u8, length: u64, mask: [u8; 4]) -> Vec<u8> {
    let mut bytes = vec![first];
    if length < 126 {
        bytes.push(0x80 | length as u8);
    } else if let Ok(short) = u16::try_from(length) {
        bytes.push(0x80 | 126);
        bytes.extend_from_slice(&short.to_be_bytes());
    } else {
        bytes.push(0x80 | 127);
        bytes.extend_from_slice(&length.to_be_bytes());
    }
    bytes.extend_from_slice(&mask);
    bytes
}

/// A masked client frame.
fn masked(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut bytes = header(first, payload.len() as u64, mask);
    bytes.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
    bytes
}

/// A masked client frame with the RFC's example key.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    masked(first, payload, [0x37, 0xFA, 0x21, 0x3D])
}

fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason);
    body
}

/// Reads one server frame from a raw client: it must be final and unmasked. Returns its opcode and payload.
async fn read_server_frame(client: &mut TcpStream) -> (u8, Vec<u8>) {
    patiently("server frame", async {
        let mut start = [0u8; 2];
        client.read_exact(&mut start).await.unwrap();
        assert_eq!(start[0] & 0xF0, 0x80, "a server frame is final with no RSV bits: {:#04x}", start[0]);
        assert_eq!(start[1] & 0x80, 0, "server frames are not masked");
        let length = match start[1] & 0x7F {
            126 => u64::from(client.read_u16().await.unwrap()),
            127 => client.read_u64().await.unwrap(),
            short => u64::from(short),
        };
        let mut payload = vec![0u8; usize::try_from(length).unwrap()];
        client.read_exact(&mut payload).await.unwrap();
        (start[0] & 0x0F, payload)
    })
    .await
}

/// Reads from a raw client until the server's end of the connection closes: fails if it resets instead, or if any
/// byte arrives.
async fn assert_clean_eof(client: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let read = patiently("end of connection", client.read(&mut byte)).await;
    assert_eq!(read.unwrap(), 0, "expected the end of the connection, got a byte");
}

fn random_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; length];
    StdRng::seed_from_u64(seed).fill(&mut bytes[..]);
    bytes
}

/// Text of exactly `length` bytes mixing one-, two-, three- and four-byte characters.
fn text_of(length: usize) -> String {
    let mut text = String::with_capacity(length);
    for character in ['a', 'é', '€', '𝄞', ' ', 'z'].into_iter().cycle() {
        if text.len() == length {
            break;
        }
        text.push(if text.len() + character.len_utf8() <= length { character } else { '.' });
    }
    text
}

// ---------------------------------------------------------------------------------------------------------------
// Messages from a real client.

#[tokio::test]
async fn text_and_binary_round_trips_with_tungstenite_at_every_length_form_up_to_the_limit() {
    let (mut ws, mut client) = tungstenite_pair().await;
    for length in [0, 1, 125, 126, 65_535, 65_536, LIMIT] {
        let text = text_of(length);
        let (sent, received) = tokio::join!(client.send(Tungstenite::Text(text.clone().into())), recv_message(&mut ws));
        sent.unwrap();
        assert!(received == Message::Text(text.clone()), "text of {length} bytes came in different");
        let (sent, echoed) = tokio::join!(ws.text(&text), client_next(&mut client));
        sent.unwrap();
        assert!(echoed == Tungstenite::Text(text.into()), "text of {length} bytes went out different");

        let bytes = random_bytes(length, length as u64);
        let (sent, received) =
            tokio::join!(client.send(Tungstenite::Binary(bytes.clone().into())), recv_message(&mut ws));
        sent.unwrap();
        assert!(received == Message::Binary(bytes.clone()), "binary of {length} bytes came in different");
        let (sent, echoed) = tokio::join!(ws.binary(&bytes), client_next(&mut client));
        sent.unwrap();
        assert!(echoed == Tungstenite::Binary(bytes.into()), "binary of {length} bytes went out different");
    }
}

#[tokio::test]
async fn a_message_of_parts_reaches_tungstenite_whole_at_every_length_form() {
    let (ws, mut client) = tungstenite_pair().await;
    // Totals of 0, 125 and 126 bytes, 65,535 and 65,536 (the 16- and 64-bit length forms), with empty parts among them.
    for lengths in [vec![0], vec![0, 0], vec![100, 0, 25], vec![126], vec![65_000, 535], vec![1, 65_534, 0, 1]] {
        let parts: Vec<Vec<u8>> =
            lengths.iter().enumerate().map(|(index, length)| random_bytes(*length, index as u64 + 7)).collect();
        let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let (sent, received) = tokio::join!(ws.binary_parts(&slices), client_next(&mut client));
        sent.unwrap();
        assert!(
            received == Tungstenite::Binary(parts.concat().into()),
            "parts of {lengths:?} bytes went out different"
        );
    }
}

#[tokio::test]
async fn pings_from_tungstenite_are_answered_with_pongs() {
    let (mut ws, mut client) = tungstenite_pair().await;
    client.send(Tungstenite::Ping(b"are you there".to_vec().into())).await.unwrap();
    let Message::Ping(payload) = recv_message(&mut ws).await else { panic!("expected a ping") };
    assert_eq!(payload, b"are you there");
    ws.sender().pong(&payload).await.unwrap();
    assert_eq!(client_next(&mut client).await, Tungstenite::Pong(b"are you there".to_vec().into()));
    client.send(Tungstenite::Pong(b"unasked".to_vec().into())).await.unwrap();
    assert_eq!(recv_message(&mut ws).await, Message::Pong(b"unasked".to_vec()));
}

#[tokio::test]
async fn a_message_over_the_limit_from_tungstenite_is_refused_with_1009_and_the_client_reads_it() {
    let (mut ws, mut client) = tungstenite_pair().await;
    let too_large = vec![7u8; LIMIT + 1];
    let server = async {
        let error = recv_error(&mut ws).await;
        assert!(matches!(error, Error::TooLarge(length) if length == LIMIT as u64 + 1), "{error:?}");
        assert_eq!(error.close_code(), Some(1009));
        // The client, still sending, reads the close frame, answers it and waits for the end of the connection:
        // the server drains what it sends until the linger ends.
        ws.close(Some((1009, "too large")), Duration::from_millis(300)).await;
    };
    let talk = async {
        client.send(Tungstenite::Binary(too_large.into())).await.unwrap();
        client_rest(&mut client).await
    };
    let ((), messages) = patiently("refusal", async { tokio::join!(server, talk) }).await;
    let expected = CloseFrame { code: CloseCode::Size, reason: "too large".into() };
    assert_eq!(messages, [Tungstenite::Close(Some(expected))]);
}

// ---------------------------------------------------------------------------------------------------------------
// The size limit, from the header.

#[tokio::test]
async fn a_frame_over_the_limit_is_refused_from_its_header_before_its_payload_is_sent() {
    for opcode in [TEXT, BINARY] {
        let (mut ws, mut client) = raw_pair(Config::default()).await;
        // Only the header: a server that waited for the payload would wait forever.
        client.write_all(&header(FIN | opcode, LIMIT as u64 + 1, [1, 2, 3, 4])).await.unwrap();
        let error = tokio::time::timeout(Duration::from_secs(2), ws.recv())
            .await
            .expect("the header alone must be refused, without waiting for the payload")
            .unwrap_err();
        assert!(matches!(error, Error::TooLarge(length) if length == LIMIT as u64 + 1), "{error:?}");
        assert_eq!(error.close_code(), Some(1009));
    }
    // A length the limit could not even be added to.
    let (mut ws, mut client) = raw_pair(Config::default()).await;
    client.write_all(&header(FIN | BINARY, i64::MAX as u64, [1, 2, 3, 4])).await.unwrap();
    assert!(matches!(recv_error(&mut ws).await, Error::TooLarge(_)));
}

#[tokio::test]
async fn fragments_are_limited_by_their_sum_and_the_limit_itself_is_accepted() {
    // Exactly the limit, in two fragments.
    let (mut ws, mut client) = raw_pair(Config::default()).await;
    let payload = random_bytes(LIMIT, 1);
    let mut frames = frame(BINARY, &payload[..LIMIT - 10]);
    frames.extend(frame(FIN | CONTINUATION, &payload[LIMIT - 10..]));
    let (written, received) = tokio::join!(client.write_all(&frames), recv_message(&mut ws));
    written.unwrap();
    assert!(received == Message::Binary(payload), "the limit in two fragments came in different");

    // One byte more: refused from the continuation's header alone.
    let (mut ws, mut client) = raw_pair(Config::default()).await;
    let mut frames = frame(TEXT, text_of(LIMIT - 10).as_bytes());
    frames.extend(header(FIN | CONTINUATION, 11, [9, 8, 7, 6]));
    let (written, error) = tokio::join!(client.write_all(&frames), recv_error(&mut ws));
    written.unwrap();
    assert!(matches!(error, Error::TooLarge(length) if length == LIMIT as u64 + 1), "{error:?}");
    assert_eq!(error.close_code(), Some(1009));

    // A small limit, crossed by the third fragment.
    let (mut ws, mut client) = raw_pair(Config { max_message: 100, read_chunk: 16 }).await;
    let mut frames = frame(BINARY, &[1; 40]);
    frames.extend(frame(CONTINUATION, &[2; 40]));
    frames.extend(header(FIN | CONTINUATION, 21, [0; 4]));
    client.write_all(&frames).await.unwrap();
    assert!(matches!(recv_error(&mut ws).await, Error::TooLarge(101)));
}

// ---------------------------------------------------------------------------------------------------------------
// Fragmentation.

#[tokio::test]
async fn fragmented_messages_with_control_frames_between_fragments() {
    let (mut ws, mut client) = raw_pair(Config::default()).await;
    // "fr€ag" with the euro sign (E2 82 AC) cut twice, and control frames between the fragments.
    let mut frames = frame(TEXT, b"fr\xE2");
    frames.extend(frame(FIN | PING, b"first"));
    frames.extend(frame(CONTINUATION, b"\x82"));
    frames.extend(frame(FIN | PONG, b""));
    frames.extend(frame(FIN | PING, b"second"));
    frames.extend(frame(FIN | CONTINUATION, b"\xACag"));
    // Binary with an empty first fragment, an empty middle one and an empty last one.
    frames.extend(frame(BINARY, b""));
    frames.extend(frame(CONTINUATION, &[1, 2, 3]));
    frames.extend(frame(CONTINUATION, b""));
    frames.extend(frame(CONTINUATION, &[4]));
    frames.extend(frame(FIN | CONTINUATION, b""));
    // A four-byte character cut after each of its first three bytes.
    let clef = "\u{1D11E}".as_bytes();
    frames.extend(frame(TEXT, &clef[..1]));
    frames.extend(frame(CONTINUATION, &clef[1..2]));
    frames.extend(frame(CONTINUATION, &clef[2..3]));
    frames.extend(frame(FIN | CONTINUATION, &clef[3..]));
    // And an unfragmented message after them all.
    frames.extend(frame(FIN | TEXT, b"done"));
    client.write_all(&frames).await.unwrap();

    assert_eq!(recv_message(&mut ws).await, Message::Ping(b"first".to_vec()));
    assert_eq!(recv_message(&mut ws).await, Message::Pong(Vec::new()));
    assert_eq!(recv_message(&mut ws).await, Message::Ping(b"second".to_vec()));
    assert_eq!(recv_message(&mut ws).await, Message::Text("fr€ag".to_string()));
    assert_eq!(recv_message(&mut ws).await, Message::Binary(vec![1, 2, 3, 4]));
    assert_eq!(recv_message(&mut ws).await, Message::Text("\u{1D11E}".to_string()));
    assert_eq!(recv_message(&mut ws).await, Message::Text("done".to_string()));
}

#[tokio::test]
async fn fragmented_messages_from_tungstenite() {
    let (mut ws, mut client) = tungstenite_pair().await;
    // tungstenite sends what it is given as frames: fragments by hand, a ping between them.
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let pieces: [(bool, OpCode, &[u8]); 3] = [
        (false, OpCode::Data(Data::Text), b"caf\xC3"),
        (false, OpCode::Data(Data::Continue), b"\xA9 "),
        (true, OpCode::Data(Data::Continue), "crème".as_bytes()),
    ];
    for (index, (fin, opcode, payload)) in pieces.into_iter().enumerate() {
        client.send(Tungstenite::Frame(Frame::message(payload.to_vec(), opcode, fin))).await.unwrap();
        if index == 0 {
            client.send(Tungstenite::Ping(b"between".to_vec().into())).await.unwrap();
        }
    }
    assert_eq!(recv_message(&mut ws).await, Message::Ping(b"between".to_vec()));
    assert_eq!(recv_message(&mut ws).await, Message::Text("café crème".to_string()));
}

// ---------------------------------------------------------------------------------------------------------------
// Peers breaking the protocol.

/// Sends a good message, then `bad`; the good one must come out, then the error.
async fn refusal(bad: &[u8]) -> Error {
    let (mut ws, mut client) = raw_pair(Config::default()).await;
    let mut bytes = frame(FIN | TEXT, b"before");
    bytes.extend_from_slice(bad);
    client.write_all(&bytes).await.unwrap();
    assert_eq!(recv_message(&mut ws).await, Message::Text("before".to_string()));
    recv_error(&mut ws).await
}

#[tokio::test]
async fn protocol_violations_are_refused_with_1002() {
    let concat = |frames: &[Vec<u8>]| frames.concat();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("continuation without a start".into(), frame(FIN | CONTINUATION, b"x")),
        ("non-final continuation without a start".into(), frame(CONTINUATION, b"x")),
        ("text in the middle of text".into(), concat(&[frame(TEXT, b"a"), frame(FIN | TEXT, b"b")])),
        ("binary in the middle of text".into(), concat(&[frame(TEXT, b"a"), frame(FIN | BINARY, b"b")])),
        ("text in the middle of binary".into(), concat(&[frame(BINARY, b"a"), frame(FIN | TEXT, b"b")])),
        ("new fragmented message in the middle of one".into(), concat(&[frame(BINARY, b"a"), frame(BINARY, b"b")])),
        ("unmasked binary".into(), vec![FIN | BINARY, 0x01, b'x']),
        ("unmasked empty text".into(), vec![FIN | TEXT, 0x00]),
        ("unmasked ping".into(), vec![FIN | PING, 0x00]),
        ("unmasked close".into(), vec![FIN | CLOSE, 0x02, 0x03, 0xE8]),
        ("ping of 126 bytes".into(), frame(FIN | PING, &[0; 126])),
        ("pong of 126 bytes".into(), frame(FIN | PONG, &[0; 126])),
        ("close of 126 bytes".into(), frame(FIN | CLOSE, &close_body(1000, &[b'a'; 124]))),
        ("ping announcing a 64-bit length".into(), masked(FIN | PING, &[0; 70_000], [1, 2, 3, 4])),
        ("fragmented ping".into(), frame(PING, b"x")),
        ("fragmented pong".into(), frame(PONG, b"")),
        ("fragmented close".into(), frame(CLOSE, &close_body(1000, b""))),
        ("fragmented ping in a fragmented message".into(), concat(&[frame(TEXT, b"a"), frame(PING, b"")])),
    ];
    for (bit, name) in [(0x40, "RSV1"), (0x20, "RSV2"), (0x10, "RSV3")] {
        cases.push((format!("{name} on text"), frame(FIN | bit | TEXT, b"x")));
        cases.push((format!("{name} on a ping"), frame(FIN | bit | PING, b"")));
        cases.push((format!("{name} on a continuation"), concat(&[frame(TEXT, b"a"), frame(FIN | bit, b"b")])));
    }
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        cases.push((format!("opcode {opcode:#x}"), frame(FIN | opcode, b"x")));
    }
    for (name, bad) in cases {
        let error = refusal(&bad).await;
        assert!(matches!(error, Error::Protocol(_)), "{name}: {error:?}");
        assert_eq!(error.close_code(), Some(1002), "{name}");
    }
}

#[tokio::test]
async fn text_that_is_not_utf8_is_refused_with_1007() {
    let concat = |frames: &[Vec<u8>]| frames.concat();
    let cases: [(&str, Vec<u8>); 8] = [
        ("a byte that starts nothing", frame(FIN | TEXT, b"ok \xFF")),
        ("a character cut at the end", frame(FIN | TEXT, b"ok \xE2\x82")),
        ("an overlong encoding", frame(FIN | TEXT, b"\xC0\x80")),
        ("a surrogate", frame(FIN | TEXT, b"\xED\xA0\x80")),
        ("above U+10FFFF", frame(FIN | TEXT, b"\xF4\x90\x80\x80")),
        (
            "fragments that end inside a character",
            concat(&[frame(TEXT, b"ab\xE2"), frame(FIN | CONTINUATION, b"\x82")]),
        ),
        ("fragments that join wrongly", concat(&[frame(TEXT, b"ab\xE2"), frame(FIN | CONTINUATION, b"c")])),
        ("a bad byte in the last fragment", concat(&[frame(TEXT, b"abc"), frame(FIN | CONTINUATION, b"\x80")])),
    ];
    for (name, bad) in cases {
        let error = refusal(&bad).await;
        assert!(matches!(error, Error::InvalidUtf8), "{name}: {error:?}");
        assert_eq!(error.close_code(), Some(1007), "{name}");
    }
    // The same bytes are fine in a binary message.
    let (mut ws, mut client) = raw_pair(Config::default()).await;
    client.write_all(&frame(FIN | BINARY, b"\xFF\xC0\x80")).await.unwrap();
    assert_eq!(recv_message(&mut ws).await, Message::Binary(b"\xFF\xC0\x80".to_vec()));
}

// ---------------------------------------------------------------------------------------------------------------
// Close frames from the peer.

#[tokio::test]
async fn close_frames_from_the_peer() {
    let (mut ws, mut client) = raw_pair(Config::default()).await;
    let mut frames = frame(FIN | CLOSE, b"");
    frames.extend(frame(FIN | CLOSE, &close_body(1000, "bye ✓".as_bytes())));
    for code in [1001, 1003, 1007, 1011, 1014, 3000, 4999] {
        frames.extend(frame(FIN | CLOSE, &close_body(code, b"")));
    }
    client.write_all(&frames).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(recv_message(&mut ws).await, Message::Close(None));
    assert_eq!(recv_message(&mut ws).await, Message::Close(Some((1000, "bye ✓".to_string()))));
    for code in [1001, 1003, 1007, 1011, 1014, 3000, 4999] {
        assert_eq!(recv_message(&mut ws).await, Message::Close(Some((code, String::new()))));
    }
    assert!(recv(&mut ws).await.unwrap().is_none(), "the end of the connection after the close frames");
}

#[tokio::test]
async fn malformed_close_frames_are_refused() {
    let error = refusal(&frame(FIN | CLOSE, &[0x03])).await;
    assert!(matches!(error, Error::Protocol(_)), "one-byte body: {error:?}");
    assert_eq!(error.close_code(), Some(1002));
    for code in [1005, 1006, 999, 0, 1004, 1015, 1016, 2999, 5000, 65_535] {
        let error = refusal(&frame(FIN | CLOSE, &close_body(code, b"why"))).await;
        assert!(matches!(error, Error::Protocol(_)), "code {code}: {error:?}");
        assert_eq!(error.close_code(), Some(1002), "code {code}");
    }
    let error = refusal(&frame(FIN | CLOSE, &close_body(1000, b"bad \xFF reason"))).await;
    assert!(matches!(error, Error::InvalidUtf8), "reason not UTF-8: {error:?}");
    assert_eq!(error.close_code(), Some(1007));
}

// ---------------------------------------------------------------------------------------------------------------
// Closing.

#[tokio::test]
async fn close_reaches_tungstenite_with_its_code_and_reason_and_the_connection_ends_cleanly() {
    let (ws, mut client) = tungstenite_pair().await;
    let linger = Duration::from_secs(5);
    let started = Instant::now();
    let ((), messages) = tokio::join!(ws.close(Some((4001, "session ended")), linger), client_rest(&mut client));
    assert!(started.elapsed() < linger / 2, "the client answered, yet close took {:?}", started.elapsed());
    let expected = CloseFrame { code: CloseCode::from(4001), reason: "session ended".into() };
    assert_eq!(messages, [Tungstenite::Close(Some(expected))]);
}

#[tokio::test]
async fn close_without_a_code_reaches_tungstenite() {
    let (ws, mut client) = tungstenite_pair().await;
    let ((), messages) = tokio::join!(ws.close(None, Duration::from_secs(5)), client_rest(&mut client));
    assert_eq!(messages, [Tungstenite::Close(None)]);
}

#[tokio::test]
async fn a_close_from_tungstenite_is_answered_and_the_connection_ends_cleanly() {
    let (mut ws, mut client) = tungstenite_pair().await;
    let frame = CloseFrame { code: CloseCode::Away, reason: "tab closed".into() };
    client.send(Tungstenite::Close(Some(frame.clone()))).await.unwrap();
    assert_eq!(recv_message(&mut ws).await, Message::Close(Some((1001, "tab closed".to_string()))));
    let started = Instant::now();
    let ((), messages) =
        tokio::join!(ws.close(Some((1001, "tab closed")), Duration::from_secs(5)), client_rest(&mut client));
    assert!(started.elapsed() < Duration::from_secs(1), "the peer's close had come, yet close lingered");
    assert_eq!(messages, [Tungstenite::Close(Some(frame))]);
}

#[tokio::test]
async fn a_long_close_reason_is_cut_to_fit_a_control_frame_at_a_character_boundary() {
    let (ws, mut client) = tungstenite_pair().await;
    // 122 bytes of ASCII then three-byte characters: byte 123 falls inside one.
    let reason = format!("{}{}", "x".repeat(122), "€".repeat(20));
    let ((), messages) =
        tokio::join!(ws.close(Some((1000, &reason)), Duration::from_secs(5)), client_rest(&mut client));
    let [Tungstenite::Close(Some(close))] = &messages[..] else { panic!("{messages:?}") };
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(close.reason, "x".repeat(122));

    // A pong longer than a control frame may be is cut too.
    let (ws, mut client) = raw_pair(Config::default()).await;
    ws.pong(&[7; 200]).await.unwrap();
    assert_eq!(read_server_frame(&mut client).await, (PONG, vec![7; 125]));
}

#[tokio::test]
async fn close_returns_after_the_linger_when_the_peer_never_answers() {
    let (ws, mut client) = raw_pair(Config::default()).await;
    let linger = Duration::from_millis(300);
    let closing = tokio::spawn(async move {
        let started = Instant::now();
        ws.close(Some((1001, "going away")), linger).await;
        started.elapsed()
    });
    assert_eq!(read_server_frame(&mut client).await, (CLOSE, close_body(1001, b"going away")));
    // The peer talks on without answering the close: what it says is discarded.
    client.write_all(&frame(FIN | TEXT, b"still typing")).await.unwrap();
    client.write_all(&frame(FIN | PING, b"")).await.unwrap();
    let elapsed = patiently("close", closing).await.unwrap();
    assert!(elapsed >= linger, "close returned after {elapsed:?}, before the linger");
    assert!(elapsed < linger + Duration::from_secs(1), "close returned after {elapsed:?}");
    assert_clean_eof(&mut client).await;
}

#[tokio::test]
async fn close_returns_at_once_when_the_peer_hangs_up() {
    let (ws, mut client) = raw_pair(Config::default()).await;
    let linger = Duration::from_secs(5);
    let closing = tokio::spawn(async move {
        let started = Instant::now();
        ws.close(None, linger).await;
        started.elapsed()
    });
    assert_eq!(read_server_frame(&mut client).await, (CLOSE, Vec::new()));
    drop(client);
    let elapsed = patiently("close", closing).await.unwrap();
    assert!(elapsed < Duration::from_secs(1), "the peer hung up, yet close took {elapsed:?}");
}

#[tokio::test]
async fn close_after_a_raw_peer_answers_ends_the_connection_cleanly() {
    let (ws, mut client) = raw_pair(Config::default()).await;
    let closing = tokio::spawn(ws.close(Some((1000, "")), Duration::from_secs(5)));
    assert_eq!(read_server_frame(&mut client).await, (CLOSE, close_body(1000, b"")));
    client.write_all(&frame(FIN | CLOSE, &close_body(1000, b""))).await.unwrap();
    patiently("close", closing).await.unwrap();
    assert_clean_eof(&mut client).await;
}

#[tokio::test]
async fn close_after_a_refusal_drains_what_the_peer_still_sends_instead_of_resetting_the_connection() {
    let cases: [(&str, Vec<u8>, u16); 2] = [
        ("a frame over the limit", header(FIN | BINARY, LIMIT as u64 + 1, [1, 2, 3, 4]), 1009),
        ("an unmasked frame", vec![FIN | BINARY, 0x7E, 0xFF, 0xFF], 1002),
    ];
    for (name, bad, code) in cases {
        let (mut ws, mut client) = raw_pair(Config::default()).await;
        client.write_all(&bad).await.unwrap();
        let error = recv_error(&mut ws).await;
        assert_eq!(error.close_code(), Some(code), "{name}: {error:?}");
        // The peer sends on; these bytes sit unread on the server's socket when it closes.
        client.write_all(&[0x55; 32_000]).await.unwrap();
        let started = Instant::now();
        let closing = tokio::spawn(ws.close(Some((code, "refused")), Duration::from_secs(5)));
        assert_eq!(read_server_frame(&mut client).await, (CLOSE, close_body(code, b"refused")), "{name}");
        // The rest of the payload, then the answer to the close, then the end of the peer's side.
        client.write_all(&vec![0x55; LIMIT + 1 - 32_000]).await.unwrap();
        client.write_all(&frame(FIN | CLOSE, &close_body(code, b""))).await.unwrap();
        client.shutdown().await.unwrap();
        patiently("close", closing).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "{name}: the peer hung up, yet close lingered on");
        assert_clean_eof(&mut client).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The end of the TCP connection.

#[tokio::test]
async fn the_connection_ending_between_messages_is_none_and_inside_one_is_an_io_error() {
    let (mut ws, mut client) = raw_pair(Config::default()).await;
    client.write_all(&frame(FIN | TEXT, b"last words")).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(recv_message(&mut ws).await, Message::Text("last words".to_string()));
    assert!(recv(&mut ws).await.unwrap().is_none());
    assert!(recv(&mut ws).await.unwrap().is_none(), "the end stays the end");

    let whole = frame(FIN | BINARY, &[5; 300]);
    let cases: [(&str, Vec<u8>); 5] = [
        ("one byte of a header", whole[..1].to_vec()),
        ("a header without its extended length", whole[..3].to_vec()),
        ("a header without its mask", whole[..6].to_vec()),
        ("part of a payload", whole[..whole.len() - 1].to_vec()),
        ("between the fragments of a message", frame(TEXT, b"to be continued")),
    ];
    for (name, bytes) in cases {
        let (mut ws, mut client) = raw_pair(Config::default()).await;
        client.write_all(&bytes).await.unwrap();
        client.shutdown().await.unwrap();
        match recv(&mut ws).await {
            Err(error @ Error::Io(_)) => assert_eq!(error.close_code(), None, "{name}"),
            other => panic!("{name}: expected an I/O error, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Bytes the HTTP layer read past the request head.

#[tokio::test]
async fn frames_read_past_the_request_head_are_parsed_first() {
    let (listener, address) = listen().await;
    let mut client = TcpStream::connect(address).await.unwrap();
    let (mut stream, _) = listener.accept().await.unwrap();
    let first = frame(FIN | TEXT, b"eager");
    let second = frame(FIN | BINARY, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let request = "GET /terminal HTTP/1.1\r\nHost: gatehouse\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    // The head, the first frame and three bytes of the second (inside its header), in one write.
    let mut bytes = request.as_bytes().to_vec();
    bytes.extend_from_slice(&first);
    bytes.extend_from_slice(&second[..3]);
    client.write_all(&bytes).await.unwrap();
    let already_read = patiently("upgrade", upgrade(&mut stream)).await;
    assert_eq!(already_read, bytes[request.len()..], "the test needs the frames read along with the head");
    let mut ws = WebSocket::new(stream, &already_read, Config::default());

    let mut response = vec![0u8; 1024];
    let count = client.read(&mut response).await.unwrap();
    let response = std::str::from_utf8(&response[..count]).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{response}");

    // Nothing more is on the socket, yet the first message is whole.
    assert_eq!(recv_message(&mut ws).await, Message::Text("eager".to_string()));
    client.write_all(&second[3..]).await.unwrap();
    assert_eq!(recv_message(&mut ws).await, Message::Binary(vec![1, 2, 3, 4, 5, 6, 7, 8]));

    // Already-read bytes followed by the end of the connection.
    let (mut ws, mut client) = {
        let (listener, address) = listen().await;
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        let mut already_read = frame(FIN | TEXT, b"one");
        already_read.extend(frame(FIN | TEXT, b"two"));
        (WebSocket::new(accepted.unwrap().0, &already_read, Config::default()), client.unwrap())
    };
    client.shutdown().await.unwrap();
    assert_eq!(recv_message(&mut ws).await, Message::Text("one".to_string()));
    assert_eq!(recv_message(&mut ws).await, Message::Text("two".to_string()));
    assert!(recv(&mut ws).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------------------------
// Arbitrary read boundaries.

/// Runs `recv` in a task of its own and forwards what it returns, until the connection ends or fails.
fn spawn_reader(mut ws: WebSocket) -> mpsc::UnboundedReceiver<Result<Option<Message>, Error>> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let result = ws.recv().await;
            let more = matches!(result, Ok(Some(_)));
            if sender.send(result).is_err() || !more {
                break;
            }
        }
    });
    receiver
}

/// Lets the reader task take in what was just written (loopback delivers a write before it returns), so that the
/// next write lands in a read of its own.
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

/// Writes `pieces` one at a time, each read apart from the next, then checks the messages they make.
async fn feed<'a>(
    client: &mut TcpStream,
    reader: &mut mpsc::UnboundedReceiver<Result<Option<Message>, Error>>,
    pieces: impl IntoIterator<Item = &'a [u8]>,
    expected: &[Message],
    what: &str,
) {
    for piece in pieces {
        client.write_all(piece).await.unwrap();
        settle().await;
    }
    for (index, expected) in expected.iter().enumerate() {
        match patiently(what, reader.recv()).await {
            Some(Ok(Some(message))) => assert!(&message == expected, "{what}: message {index} came in different"),
            other => panic!("{what}: expected message {index}, got {other:?}"),
        }
    }
    assert!(reader.try_recv().is_err(), "{what}: more messages than were sent");
}

/// Frames of every kind, with fragments and every length form short of 64 bits, and the messages they make.
fn conversation(rng: &mut StdRng) -> (Vec<u8>, Vec<Message>) {
    let mut bytes = Vec::new();
    let mut add = |first: u8, payload: &[u8]| bytes.extend(masked(first, payload, rng.gen()));
    add(FIN | TEXT, "héllo wörld".as_bytes());
    add(FIN | BINARY, b"");
    add(TEXT, b"fr\xE2");
    add(FIN | PING, b"mid");
    add(CONTINUATION, b"\x82");
    add(FIN | PONG, b"");
    add(FIN | CONTINUATION, b"\xACag");
    add(FIN | BINARY, &random_bytes(125, 125));
    add(FIN | TEXT, text_of(126).as_bytes());
    let long = random_bytes(203, 203);
    add(BINARY, &long[..200]);
    add(CONTINUATION, b"");
    add(FIN | CONTINUATION, &long[200..]);
    add(FIN | PING, &[0xA5; 125]);
    let messages = vec![
        Message::Text("héllo wörld".to_string()),
        Message::Binary(Vec::new()),
        Message::Ping(b"mid".to_vec()),
        Message::Pong(Vec::new()),
        Message::Text("fr€ag".to_string()),
        Message::Binary(random_bytes(125, 125)),
        Message::Text(text_of(126)),
        Message::Binary(long),
        Message::Ping(vec![0xA5; 125]),
    ];
    (bytes, messages)
}

#[tokio::test]
async fn frames_split_at_every_position() {
    let mut rng = StdRng::seed_from_u64(6455);
    for config in [Config::default(), Config { read_chunk: 1, ..Config::default() }] {
        let (ws, mut client) = raw_pair(config).await;
        let mut reader = spawn_reader(ws);
        let (bytes, messages) = conversation(&mut rng);
        for at in 0..=bytes.len() {
            let what = format!("split at {at} of {} (read_chunk {})", bytes.len(), config.read_chunk);
            feed(&mut client, &mut reader, [&bytes[..at], &bytes[at..]], &messages, &what).await;
        }
        // The 64-bit length form: every split within the header and the first and last bytes of the payload.
        let payload = random_bytes(65_536, 64);
        let mut bytes = masked(FIN | BINARY, &payload, rng.gen());
        bytes.extend(masked(FIN | TEXT, b"after", rng.gen()));
        let messages = [Message::Binary(payload), Message::Text("after".to_string())];
        for at in (0..=32).chain(bytes.len() - 32..=bytes.len()) {
            let what = format!("64-bit length split at {at} (read_chunk {})", config.read_chunk);
            feed(&mut client, &mut reader, [&bytes[..at], &bytes[at..]], &messages, &what).await;
        }
    }
}

#[tokio::test]
async fn frames_written_byte_by_byte() {
    let mut rng = StdRng::seed_from_u64(13);
    let (ws, mut client) = raw_pair(Config::default()).await;
    let mut reader = spawn_reader(ws);
    let (bytes, messages) = conversation(&mut rng);
    feed(&mut client, &mut reader, bytes.chunks(1), &messages, "byte by byte").await;
    client.write_all(&masked(FIN | CLOSE, &close_body(1000, b"bye"), rng.gen())).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(
        patiently("close", reader.recv()).await.unwrap().unwrap(),
        Some(Message::Close(Some((1000, "bye".into()))))
    );
    assert!(patiently("end", reader.recv()).await.unwrap().unwrap().is_none());
}

#[tokio::test]
async fn frames_in_random_pieces() {
    let mut rng = StdRng::seed_from_u64(0x6A7E_4005E);
    for config in [Config::default(), Config { read_chunk: 1, ..Config::default() }] {
        let (ws, mut client) = raw_pair(config).await;
        let mut reader = spawn_reader(ws);
        for round in 0..3 {
            let (mut bytes, mut messages) = conversation(&mut rng);
            // And large messages: the longest 16-bit length, 64-bit lengths, a fragmented one.
            let binary = random_bytes(65_535, round);
            bytes.extend(masked(FIN | BINARY, &binary, rng.gen()));
            messages.push(Message::Binary(binary));
            let text = text_of(70_000);
            bytes.extend(masked(FIN | TEXT, text.as_bytes(), rng.gen()));
            messages.push(Message::Text(text));
            let fragmented = random_bytes(300_000, round + 100);
            bytes.extend(masked(BINARY, &fragmented[..100_000], rng.gen()));
            bytes.extend(masked(FIN | PING, b"in between", rng.gen()));
            bytes.extend(masked(CONTINUATION, &fragmented[100_000..200_001], rng.gen()));
            bytes.extend(masked(FIN | CONTINUATION, &fragmented[200_001..], rng.gen()));
            messages.push(Message::Ping(b"in between".to_vec()));
            messages.push(Message::Binary(fragmented));

            let mut pieces = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let size = if rng.gen_bool(0.5) { rng.gen_range(1..=16) } else { rng.gen_range(17..=4096) };
                let (piece, after) = rest.split_at(size.min(rest.len()));
                pieces.push(piece);
                rest = after;
            }
            let what = format!("round {round} in {} pieces (read_chunk {})", pieces.len(), config.read_chunk);
            feed(&mut client, &mut reader, pieces, &messages, &what).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Cancel-safety of recv.

#[tokio::test]
async fn recv_raced_against_a_timer_loses_nothing() {
    for config in [Config::default(), Config { read_chunk: 64, ..Config::default() }] {
        let (mut ws, mut client) = raw_pair(config).await;
        let message = random_bytes(LIMIT, 99);
        let text = text_of(100_000);
        let mut rng = StdRng::seed_from_u64(config.read_chunk as u64);
        let mut bytes = Vec::new();
        // The 1 MiB message in fragments, a ping among them, then a text message.
        let cuts = [0, 1, 300_000, 300_126, 700_000, LIMIT];
        for (index, window) in cuts.windows(2).enumerate() {
            let first = if index == 0 { BINARY } else { CONTINUATION };
            let fin = if window[1] == LIMIT { FIN } else { 0 };
            bytes.extend(masked(fin | first, &message[window[0]..window[1]], rng.gen()));
            if index == 2 {
                bytes.extend(masked(FIN | PING, b"ping", rng.gen()));
            }
        }
        bytes.extend(masked(FIN | TEXT, text.as_bytes(), rng.gen()));
        let writer = tokio::spawn(async move {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (piece, after) = rest.split_at(rng.gen_range(1..=1024).min(rest.len()));
                client.write_all(piece).await.unwrap();
                rest = after;
                tokio::task::yield_now().await;
            }
            client
        });

        // The timer fires on the scheduler's next turn (tokio's own timers tick by the millisecond, too coarse to
        // race thousands of times in a fast test): `recv` is dropped wherever it waits, often with part of a frame
        // read.
        let mut received = Vec::new();
        let mut cancelled = 0u32;
        let started = Instant::now();
        while received.len() < 3 {
            assert!(started.elapsed() < PATIENCE, "only {} messages after {PATIENCE:?}", received.len());
            tokio::select! {
                biased;
                result = ws.recv() => received.push(result.unwrap().expect("a message")),
                () = tokio::task::yield_now() => cancelled += 1,
            }
        }
        let _client = writer.await.unwrap();
        assert!(cancelled >= 1000, "recv was cancelled only {cancelled} times");
        assert_eq!(received[0], Message::Ping(b"ping".to_vec()));
        assert!(received[1] == Message::Binary(message), "the 1 MiB message came in different");
        assert!(received[2] == Message::Text(text), "the text after it came in different");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Writing.

/// A payload of `length` (at least 20) ASCII bytes that names its writer, its number and its length, every byte
/// of it predictable from those.
fn numbered(task: usize, number: usize, length: usize) -> Vec<u8> {
    let mut payload = format!("{task:04}:{number:06}:{length:07}:").into_bytes();
    let mut index = payload.len();
    while payload.len() < length {
        payload.push(b'a' + ((index * 7 + task * 13 + number) % 26) as u8);
        index += 1;
    }
    payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_write_whole_frames_in_each_senders_order() {
    const TASKS: usize = 8;
    const EACH: usize = 150;
    let (ws, mut client) = tungstenite_pair_with_buffers(Some(8 * 1024)).await;
    let mut writers = Vec::new();
    for task in 0..TASKS {
        let sender = ws.sender();
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(task as u64);
            for number in 0..EACH {
                // Mostly small frames (one slice), some larger than the socket buffers (two slices, written in
                // several calls, between which the other writers wait for their turns).
                let length = match rng.gen_range(0..20) {
                    0 => rng.gen_range(20_000..300_000),
                    1..=5 => rng.gen_range(513..20_000),
                    _ => rng.gen_range(20..=512),
                };
                let payload = numbered(task, number, length);
                if number % 3 == 0 {
                    sender.text(std::str::from_utf8(&payload).unwrap()).await.unwrap();
                } else {
                    sender.binary(&payload).await.unwrap();
                }
            }
        }));
    }
    // Let the writers fill the socket buffers and queue up for their turns before the client reads.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut next = [0usize; TASKS];
    for _ in 0..TASKS * EACH {
        let (payload, text) = match client_next(&mut client).await {
            Tungstenite::Text(text) => (text.as_bytes().to_vec(), true),
            Tungstenite::Binary(bytes) => (bytes.to_vec(), false),
            other => panic!("unexpected {other:?}"),
        };
        let name = std::str::from_utf8(&payload[..20.min(payload.len())]).unwrap_or("?").to_string();
        let fields: Vec<usize> = name.split(':').take(3).map(|field| field.parse().unwrap_or(usize::MAX)).collect();
        let [task, number, length] = fields[..] else { panic!("a torn frame: {name:?}") };
        assert!(task < TASKS, "a torn frame: {name:?}");
        assert_eq!(number, next[task], "task {task}'s messages out of order");
        assert!(payload == numbered(task, number, length), "message {name} came torn");
        assert_eq!(text, number % 3 == 0, "message {name} changed its kind");
        next[task] += 1;
    }
    for writer in writers {
        writer.await.unwrap();
    }
}

#[tokio::test]
async fn an_encoded_batch_arrives_as_separate_messages() {
    let (ws, mut client) = tungstenite_pair().await;
    let large = random_bytes(70_000, 7);
    let medium = random_bytes(126, 8);
    let parts: [&[&[u8]]; 6] = [
        &[],
        &[b"a"],
        &[b"hello ", b"", b"world"],
        &[&medium[..1], &medium[1..100], &medium[100..]],
        &[&large[..65_536]],
        &[&large[..10], &large[10..60_000], &large[60_000..]],
    ];
    let mut batch = Vec::new();
    for frame in parts {
        ws::encode_binary(&mut batch, frame);
    }
    let sender = ws.sender();
    let (written, messages) = tokio::join!(
        async {
            sender.write_slices(&mut [std::io::IoSlice::new(&batch)]).await?;
            sender.text("after the batch").await
        },
        async {
            let mut messages = Vec::new();
            for _ in 0..parts.len() + 1 {
                messages.push(client_next(&mut client).await);
            }
            messages
        }
    );
    written.unwrap();
    for (index, (frame, message)) in parts.iter().zip(&messages).enumerate() {
        assert!(*message == Tungstenite::Binary(frame.concat().into()), "frame {index} of the batch came different");
    }
    assert_eq!(messages[parts.len()], Tungstenite::Text("after the batch".into()));
}

#[tokio::test]
async fn a_write_cancelled_half_way_breaks_the_connection_instead_of_tearing_a_frame() {
    let (ws, _client) = raw_pair(Config::default()).await;
    let sender = ws.sender();
    // Far more than the socket buffers of a client that does not read take.
    let huge = vec![0u8; 64 << 20];
    let cut = tokio::time::timeout(Duration::from_millis(100), sender.binary(&huge)).await;
    assert!(cut.is_err(), "64 MiB went out to a client that does not read");
    // Later writes fail at once (had they been let through, they would wait forever on the full socket).
    let at_once = Duration::from_secs(1);
    let after = tokio::time::timeout(at_once, sender.binary(b"after")).await.expect("a write after a torn one");
    assert_eq!(after.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    let after = tokio::time::timeout(at_once, ws.text("after")).await.expect("a write after a torn one");
    assert_eq!(after.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    let after = tokio::time::timeout(at_once, ws.sender().close(None)).await.expect("a write after a torn one");
    assert_eq!(after.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn a_write_cancelled_while_waiting_for_its_turn_sends_nothing_and_breaks_nothing() {
    let (ws, mut client) = raw_pair(Config::default()).await;
    let big = random_bytes(16 << 20, 32);
    let writing = tokio::spawn({
        let sender = ws.sender();
        let big = big.clone();
        async move { sender.binary(&big).await }
    });
    // The first writer fills the socket buffers and waits, holding the turn.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!writing.is_finished(), "16 MiB went out to a client that does not read");
    let waited = tokio::time::timeout(Duration::from_millis(50), ws.text("never sent")).await;
    assert!(waited.is_err(), "a write went ahead of the one holding the turn");

    let (opcode, payload) = read_server_frame(&mut client).await;
    assert_eq!(opcode, BINARY);
    assert!(payload == big, "the big frame came in different");
    writing.await.unwrap().unwrap();
    ws.text("after").await.unwrap();
    assert_eq!(read_server_frame(&mut client).await, (TEXT, b"after".to_vec()));
}

//! A git remote over smart HTTP that wants a token, like a hosted forge's.
//!
//! [`GitHttpServer::start`] serves every bare repository under a directory (`ROOT/acme/web.git` is
//! `{base}/acme/web.git`) through the real `git http-backend` CGI, so clone, fetch and push speak the real protocol
//! (v0 and v2, gzipped request bodies, chunked pushes of any size, streamed both ways).
//!
//! Every request must carry HTTP Basic credentials whose password is the current token (the user name is free, as
//! with forges' `x-access-token` or `oauth2`); any other request gets `401` with `WWW-Authenticate: Basic
//! realm="git"`, which is what makes git ask `GIT_ASKPASS` (or a credential helper) for credentials. The user name
//! becomes the CGI's `REMOTE_USER`, without which `http-backend` refuses pushes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::serve::{percent_decode, respond, Body, Outcome, Peer, Server};

/// One request the remote received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenGitRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The path and query as sent, e.g. `/acme/web.git/info/refs?service=git-receive-pack`.
    pub path: String,
    /// Whether its Basic credentials carried the token accepted at that moment.
    pub authorized: bool,
    /// The raw `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// A smart-HTTP git remote on `127.0.0.1`; stops when dropped.
pub struct GitHttpServer {
    server: Server,
    shared: Arc<Shared>,
}

struct Shared {
    root: PathBuf,
    token: Mutex<String>,
    requests: Mutex<Vec<SeenGitRequest>>,
    fail_next_receive_pack: AtomicBool,
    /// Clones and fetches need no token (a public repository on a forge); pushes always do.
    public_read: AtomicBool,
    /// The next push's upload is held (unanswered) until released.
    hold_next_receive_pack: AtomicBool,
    /// A push's upload is being held now.
    holding: AtomicBool,
    released: tokio::sync::Notify,
}

impl GitHttpServer {
    /// Serves the bare repositories under `root` to clients that present `token`.
    ///
    /// Not async: the server runs on a thread of its own, so it can be started from any test, and keeps
    /// answering while the test's own thread waits on a `git` child process.
    pub fn start(root: &Path, token: &str) -> Self {
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            token: Mutex::new(token.to_string()),
            requests: Mutex::new(Vec::new()),
            fail_next_receive_pack: AtomicBool::new(false),
            public_read: AtomicBool::new(false),
            hold_next_receive_pack: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            released: tokio::sync::Notify::new(),
        });
        let handler_shared = shared.clone();
        let server = Server::start("git-http", move |request| handle(handler_shared.clone(), request));
        Self { server, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        self.server.base()
    }

    /// The URL of the repository at `repo` under the root, e.g. `url("acme/web.git")`.
    pub fn url(&self, repo: &str) -> String {
        format!("{}/{}", self.base(), repo.trim_start_matches('/'))
    }

    /// Lets clones and fetches in without a token, as a forge does for a public repository; pushes still need
    /// it. Returns the server, for chaining after [`GitHttpServer::start`].
    pub fn public_read(self) -> Self {
        self.shared.public_read.store(true, Ordering::SeqCst);
        self
    }

    /// Accepts `token` from now on (and no longer the previous one).
    pub fn set_token(&self, token: &str) {
        *self.shared.token.lock().unwrap() = token.to_string();
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<SeenGitRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Cuts the next push's upload (an authorized `POST …/git-receive-pack`, git's four-byte probe before a
    /// large upload aside): the connection breaks after the first bytes of the body have arrived and of the
    /// answer have left, as in a network cut mid-push. Nothing of it reaches the repository, and git fails
    /// (`RPC failed`) rather than retrying.
    pub fn fail_next_receive_pack(&self) {
        self.shared.fail_next_receive_pack.store(true, Ordering::SeqCst);
    }

    /// Holds the next push's upload unanswered (the push hangs mid-way, as on a stalled network) until
    /// [`GitHttpServer::release`]; then its connection is cut and nothing of it reaches the repository.
    pub fn hold_next_receive_pack(&self) {
        self.shared.hold_next_receive_pack.store(true, Ordering::SeqCst);
    }

    /// Whether a push is being held now.
    pub fn holding(&self) -> bool {
        self.shared.holding.load(Ordering::SeqCst)
    }

    /// Ends the hold of [`GitHttpServer::hold_next_receive_pack`].
    pub fn release(&self) {
        self.shared.released.notify_waiters();
        self.shared.released.notify_one();
    }
}

/// The Basic credentials' user and password, if the header is Basic and well formed.
fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    let (scheme, encoded) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Outcome {
    let header = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_string);
    let authorization = header("authorization");
    let credentials = authorization.as_deref().and_then(basic_credentials);
    let user = {
        let token = shared.token.lock().unwrap();
        credentials.filter(|(_, password)| *password == *token).map(|(user, _)| user)
    };
    let method = request.method().as_str().to_string();
    let path = request.uri().path_and_query().map_or("/", |path| path.as_str()).to_string();
    shared.requests.lock().unwrap().push(SeenGitRequest {
        method: method.clone(),
        path: path.clone(),
        authorized: user.is_some(),
        authorization,
    });
    let pushing = path.contains("git-receive-pack");
    let user = match user {
        None if !pushing && shared.public_read.load(Ordering::SeqCst) => Some("anonymous".to_string()),
        user => user,
    };
    let Some(user) = user else {
        let mut response = respond(StatusCode::UNAUTHORIZED, "text/plain", "Unauthorized\n");
        response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Basic realm=\"git\""));
        return Ok(response);
    };

    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        // Nothing of the test's environment (a GIT_DIR, the user's configuration) leaks into the remote.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", percent_decode(request.uri().path()))
        .env("REQUEST_METHOD", &method)
        .env("QUERY_STRING", request.uri().query().unwrap_or(""))
        // http-backend takes an empty user for none and would refuse the push; any user name is welcome here.
        .env("REMOTE_USER", if user.is_empty() { "git" } else { &user })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(Peer(peer)) = request.extensions().get::<Peer>() {
        command.env("REMOTE_ADDR", peer.ip().to_string());
    }
    // Without CONTENT_LENGTH (a chunked upload) http-backend reads to the end of its input.
    for (header_name, variable) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-length", "CONTENT_LENGTH"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(value) = header(header_name) {
            command.env(variable, value);
        }
    }

    // git's probe before a large upload is the four bytes of a flush packet; the cut waits for the upload.
    let probe = header("content-length").as_deref() == Some("4");
    let mut body = request.into_body();
    if method == "POST"
        && request_path(&path).ends_with("/git-receive-pack")
        && !probe
        && shared.fail_next_receive_pack.swap(false, Ordering::SeqCst)
    {
        let _ = body.frame().await;
        return Ok(cut_short());
    }
    if method == "POST"
        && request_path(&path).ends_with("/git-receive-pack")
        && !probe
        && shared.hold_next_receive_pack.swap(false, Ordering::SeqCst)
    {
        let _ = body.frame().await;
        shared.holding.store(true, Ordering::SeqCst);
        shared.released.notified().await;
        shared.holding.store(false, Ordering::SeqCst);
        return Ok(cut_short());
    }

    let Ok(mut child) = command.spawn() else {
        return Ok(respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "cannot run git http-backend\n"));
    };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Ok(respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "no pipes to git http-backend\n"));
    };
    // The request body streams into the CGI while its answer streams out; closing stdin is its end of input.
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                if stdin.write_all(&data).await.is_err() {
                    return;
                }
            }
        }
    });
    tokio::spawn(async move {
        let _ = child.wait().await;
    });

    let mut stdout = BufReader::new(stdout);
    let mut response = Response::builder();
    loop {
        let mut line = String::new();
        match stdout.read_line(&mut line).await {
            Ok(0) | Err(_) => {
                return Ok(respond(StatusCode::BAD_GATEWAY, "text/plain", "git http-backend gave no answer\n"));
            }
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().and_then(|code| code.parse().ok());
            response = response.status(code.and_then(|code| StatusCode::from_u16(code).ok()).unwrap_or(StatusCode::OK));
        } else {
            response = response.header(name.trim(), value);
        }
    }
    let frames = futures::stream::unfold(Some(stdout), |reader| async move {
        let mut reader = reader?;
        let mut buffer = vec![0u8; 64 * 1024];
        match reader.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(Frame::data(Bytes::from(buffer))), Some(reader)))
            }
            Err(error) => Some((Err(error), None)),
        }
    });
    Ok(response.body(StreamBody::new(frames).boxed()).unwrap())
}

/// An answer that breaks off after its first bytes. Not a bare hang-up: curl silently retries a request whose
/// reused connection closes before any answer, and the retry would succeed.
fn cut_short() -> Response<Body> {
    let frames = futures::stream::unfold(0, |step| async move {
        match step {
            0 => Some((Ok(Frame::data(Bytes::from_static(b"00"))), 1)),
            1 => {
                // Time for hyper to flush the head and the first bytes before the connection breaks.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                Some((Err(std::io::Error::other("connection cut on purpose")), 2))
            }
            _ => None,
        }
    });
    Response::builder()
        .header("content-type", "application/x-git-receive-pack-result")
        .body(StreamBody::new(frames).boxed())
        .unwrap()
}

/// The path without its query.
fn request_path(path: &str) -> &str {
    path.split_once('?').map_or(path, |(path, _)| path)
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Output};

    use super::*;

    /// Runs git with no configuration but the test's and the credentials from an askpass script printing `token`.
    fn git(dir: &Path, token: &str, args: &[&str]) -> Output {
        let askpass = dir.join(format!("askpass-{token}.sh"));
        if !askpass.exists() {
            let script =
                format!("#!/bin/sh\ncase \"$1\" in Username*) echo x-access-token ;; *) echo '{token}' ;; esac\n");
            std::fs::write(&askpass, script).unwrap();
            Command::new("chmod").arg("+x").arg(&askpass).status().unwrap();
        }
        Command::new("git")
            .current_dir(dir)
            .args(["-c", "credential.helper=", "-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args(args)
            .env("GIT_ASKPASS", &askpass)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap()
    }

    fn ok(output: Output) -> String {
        assert!(output.status.success(), "git failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// A bare remote `acme/web.git` and a clone-to-be `work` with one commit holding `size` pseudo-random bytes.
    fn setup(size: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("remote");
        let work = dir.path().join("work");
        std::fs::create_dir_all(root.join("acme")).unwrap();
        ok(git(dir.path(), "-", &["init", "-q", "--bare", "-b", "main", "remote/acme/web.git"]));
        ok(git(dir.path(), "-", &["init", "-q", "-b", "main", "work"]));
        // Incompressible, so that the pack is as big as the file.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(work.join("noise.bin"), noise).unwrap();
        std::fs::write(work.join("README.md"), "hello\n").unwrap();
        ok(git(&work, "-", &["add", "-A"]));
        ok(git(&work, "-", &["commit", "-qm", "first"]));
        (dir, root, work)
    }

    #[test]
    fn pushes_fetches_and_clones_with_the_token_only() {
        let (dir, root, work) = setup(1024);
        let server = GitHttpServer::start(&root, "s3cret-token");
        let url = server.url("acme/web.git");
        let head = ok(git(&work, "-", &["rev-parse", "HEAD"]));

        ok(git(&work, "s3cret-token", &["push", "-q", &url, "main:refs/heads/feature"]));
        let remote = root.join("acme/web.git");
        let arrived =
            ok(git(dir.path(), "-", &["--git-dir", remote.to_str().unwrap(), "rev-parse", "refs/heads/feature"]));
        assert_eq!(arrived, head);

        ok(git(dir.path(), "s3cret-token", &["clone", "-q", "-b", "feature", &url, "copy"]));
        assert_eq!(std::fs::read_to_string(dir.path().join("copy/README.md")).unwrap(), "hello\n");
        ok(git(&work, "s3cret-token", &["fetch", "-q", &url, "feature"]));

        let requests = server.requests();
        assert!(requests.iter().any(|seen| seen.method == "POST" && seen.path.ends_with("/git-receive-pack")));
        assert!(requests.iter().any(|seen| seen.method == "POST" && seen.path.ends_with("/git-upload-pack")));
        for seen in &requests {
            assert!(!seen.path.contains("s3cret"), "{seen:?}");
            match &seen.authorization {
                // git first asks without credentials and is told to come back with some.
                None => assert!(!seen.authorized),
                Some(header) => {
                    assert!(seen.authorized, "{seen:?}");
                    let (user, password) = basic_credentials(header).unwrap();
                    assert_eq!((user.as_str(), password.as_str()), ("x-access-token", "s3cret-token"));
                }
            }
        }
    }

    #[test]
    fn a_wrong_token_is_refused_until_it_is_the_accepted_one() {
        let (dir, root, work) = setup(1024);
        let server = GitHttpServer::start(&root, "right");
        let url = server.url("acme/web.git");

        let refused = git(&work, "wrong", &["push", "-q", &url, "main"]);
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("Authentication failed"), "{refused:?}");
        let refused = git(dir.path(), "wrong", &["clone", "-q", &url, "copy"]);
        assert!(String::from_utf8_lossy(&refused.stderr).contains("Authentication failed"), "{refused:?}");
        assert!(server.requests().iter().all(|seen| !seen.authorized));

        server.set_token("wrong");
        ok(git(&work, "wrong", &["push", "-q", &url, "main"]));
        let refused = git(&work, "right", &["push", "-q", &url, "main:refs/heads/other"]);
        assert!(!refused.status.success());

        // A small (gzipped, sized) upload is cut as well, and nothing retries it behind git's back.
        server.fail_next_receive_pack();
        let cut = git(&work, "wrong", &["push", "-q", &url, "main:refs/heads/cut"]);
        assert!(String::from_utf8_lossy(&cut.stderr).contains("RPC failed"), "{cut:?}");
        let remote = root.join("acme/web.git");
        let missing =
            git(dir.path(), "-", &["--git-dir", remote.to_str().unwrap(), "rev-parse", "-q", "--verify", "cut"]);
        assert!(!missing.status.success());
    }

    #[test]
    fn a_large_push_streams_and_a_cut_push_leaves_nothing() {
        // Larger than git's 1 MiB post buffer: a probe, then a chunked upload http-backend reads to its end.
        let (dir, root, work) = setup(24 * 1024 * 1024);
        let server = GitHttpServer::start(&root, "token");
        let url = server.url("acme/web.git");
        let remote = root.join("acme/web.git");
        let remote = remote.to_str().unwrap();

        server.fail_next_receive_pack();
        let cut = git(&work, "token", &["push", "-q", &url, "main"]);
        assert!(!cut.status.success(), "{cut:?}");
        let missing = git(dir.path(), "-", &["--git-dir", remote, "rev-parse", "--verify", "-q", "refs/heads/main"]);
        assert!(!missing.status.success());

        ok(git(&work, "token", &["push", "-q", &url, "main"]));
        let head = ok(git(&work, "-", &["rev-parse", "HEAD"]));
        assert_eq!(ok(git(dir.path(), "-", &["--git-dir", remote, "rev-parse", "refs/heads/main"])), head);
        let pushes: Vec<_> =
            server.requests().into_iter().filter(|seen| seen.path.ends_with("/git-receive-pack")).collect();
        assert!(pushes.len() >= 2, "{pushes:?}");
    }
}

//! Previews, the gateway's side (ADR 0026): the preview hosts' names, and the preview sessions, one per cookie.
//!
//! A preview is served from its own origin, `<label>--<port>.<preview domain>`, so the app's scripts never share an
//! origin with the portal's API or with another workspace. A browser gets there with a one-time `preview` ticket,
//! which the gateway exchanges for a cookie scoped to that one host; the cookie names a [`PreviewSession`], which
//! lives while it is used (its idle time is renewed by each request) up to a maximum age, and is recorded as one
//! connection session however many requests it serves.
//!
//! The cookie's value is a random secret; only its SHA-256 is held, so the table of live sessions holds nothing that
//! would open them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::Email;
use sha2::{Digest, Sha256};

use crate::channel::Counters;

/// The name of the preview cookie (over TLS it is `__Host-` prefixed: host-only, `Secure`, `Path=/`).
pub const COOKIE: &str = "gatehouse_preview";

/// Requests of one preview session in flight at once (each its own channel to the app). Browsers open at most 6
/// connections per host; the rest is for hot-reload sockets and event streams.
pub const MAX_CONNECTIONS: usize = 64;

/// The longest label a host name may have (RFC 1035).
const MAX_LABEL: usize = 63;

/// The preview's settings (settings `preview_*`).
#[derive(Debug, Clone)]
pub struct PreviewLimits {
    /// The wildcard domain previews are served under (`preview.example.com` serves
    /// `<label>--<port>.preview.example.com`); lower case, without a trailing dot. Empty: previews are off.
    pub domain: String,
    /// The lowest workspace port a preview may show.
    pub min_port: u16,
    /// The highest.
    pub max_port: u16,
    /// How long a preview cookie lasts without a request (renewed by each one).
    pub idle: Duration,
    /// How long it lasts at most, however much it is used.
    pub max_age: Duration,
    /// How long the app may take to start answering a request.
    pub response_timeout: Duration,
}

impl Default for PreviewLimits {
    fn default() -> Self {
        Self {
            domain: "preview.localhost".into(),
            min_port: 1024,
            max_port: 65535,
            idle: Duration::from_secs(600),
            max_age: Duration::from_secs(12 * 3600),
            response_timeout: Duration::from_secs(60),
        }
    }
}

impl PreviewLimits {
    /// Whether a preview may show `port`.
    pub fn allows(&self, port: u16) -> bool {
        (self.min_port..=self.max_port).contains(&port)
    }

    /// The host a workspace's port is previewed at.
    pub fn host(&self, workspace: &str, port: u16) -> String {
        format!("{}--{port}.{}", label(workspace), self.domain)
    }

    /// The workspace label and port a request's `Host` names, when it is a preview host: `None` for any other host
    /// (the portal's own). The gateway's port, if the host carries one, is ignored; case is not significant.
    pub fn parse_host<'h>(&self, host: &'h str) -> Option<(&'h str, u16)> {
        if self.domain.is_empty() {
            return None;
        }
        let name = match host.rsplit_once(':') {
            Some((name, port)) if !name.ends_with(']') && port.bytes().all(|byte| byte.is_ascii_digit()) => name,
            _ => host,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let suffix = name.len().checked_sub(self.domain.len() + 1)?;
        let (first, domain) = name.split_at(suffix);
        if !domain.get(1..)?.eq_ignore_ascii_case(&self.domain) || !domain.starts_with('.') || first.contains('.') {
            return None;
        }
        let (label, port) = first.rsplit_once("--")?;
        // Digits only, no leading zero: one host per port.
        let port = port.parse::<u16>().ok().filter(|number| *number > 0 && number.to_string() == port)?;
        (!label.is_empty()).then_some((label, port))
    }
}

/// The DNS label a workspace is previewed under: its id when that is already a lower-case label without `--` (so a
/// person can read the URL), else `h--` and a hash of the id (ids may hold capitals, `_` and `.`, and be up to 128
/// characters; those cannot be labels). Distinct workspaces get distinct labels: a readable label never holds `--`,
/// a hashed one always begins with it.
pub fn label(workspace: &str) -> String {
    let readable = workspace.len() <= MAX_LABEL - 6
        && !workspace.is_empty()
        && !workspace.contains("--")
        && !workspace.starts_with('-')
        && !workspace.ends_with('-')
        && workspace.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    if readable {
        return workspace.to_string();
    }
    let digest = Sha256::digest(workspace.as_bytes());
    let hex: String = digest.iter().take(16).map(|byte| format!("{byte:02x}")).collect();
    format!("h--{hex}")
}

/// One preview cookie's session: whose, which workspace port, and what it carried.
#[derive(Debug)]
pub struct PreviewSession {
    /// The connection session's id (its aggregate).
    pub id: String,
    /// Whose cookie it is.
    pub user: Email,
    /// The workspace.
    pub workspace: String,
    /// The port shown.
    pub port: u16,
    /// The one host the cookie is good for.
    pub host: String,
    /// Bytes each way, over all its requests.
    pub counters: Arc<Counters>,
    /// Its requests in flight ([`MAX_CONNECTIONS`] at most).
    pub connections: Arc<tokio::sync::Semaphore>,
    opened: Instant,
    clock: Mutex<Clock>,
}

#[derive(Debug)]
struct Clock {
    /// It ends if no request comes before this.
    idle_until: Instant,
    /// When the browser's cookie was last renewed.
    renewed: Instant,
}

impl PreviewSession {
    /// How long it has been open.
    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }
}

/// What a preview cookie opens.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A live session: the request may go on (its owner and the firewall still to be checked).
    Live {
        /// The session.
        session: Arc<PreviewSession>,
        /// Whether the browser's cookie should be renewed with this response.
        renew: bool,
    },
    /// No live session has this cookie (never, or it ended).
    Unknown,
    /// A session for another host: a cookie set for one preview does not open another.
    OtherHost,
}

/// Why a preview session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// No request for the idle time.
    Idle,
    /// Its maximum age.
    MaxAge,
}

/// The live preview sessions, by the hash of their cookie.
#[derive(Debug, Default)]
pub struct PreviewSessions {
    live: Mutex<HashMap<String, Arc<PreviewSession>>>,
}

impl PreviewSessions {
    /// No sessions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a session for `user` on `workspace`'s `port`, served at `host`; its cookie value (the only time it
    /// exists outside the browser) and the session. `None`: no randomness.
    pub fn start(
        &self,
        id: String,
        user: Email,
        workspace: String,
        port: u16,
        host: String,
        limits: &PreviewLimits,
    ) -> Option<(String, Arc<PreviewSession>)> {
        let cookie = crate::gateway::random_secret().ok()?;
        let now = Instant::now();
        let session = Arc::new(PreviewSession {
            id,
            user,
            workspace,
            port,
            host,
            counters: Arc::new(Counters::default()),
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            opened: now,
            clock: Mutex::new(Clock { idle_until: now + limits.idle, renewed: now }),
        });
        if let Ok(mut live) = self.live.lock() {
            live.insert(crate::gateway::sha256_hex(&cookie), session.clone());
        }
        Some((cookie, session))
    }

    /// The session `cookie` names for a request to `host`, its idle time renewed. The browser's cookie is renewed
    /// (the answer says so) once a minute at most, so that a page's many sub-requests do not each set it.
    pub fn find(&self, cookie: &str, host: &str, limits: &PreviewLimits) -> Lookup {
        let now = Instant::now();
        let session = match self.live.lock() {
            Ok(live) => live.get(&crate::gateway::sha256_hex(cookie)).cloned(),
            Err(_) => None,
        };
        let Some(session) = session else { return Lookup::Unknown };
        if !session.host.eq_ignore_ascii_case(host) {
            return Lookup::OtherHost;
        }
        let Ok(mut clock) = session.clock.lock() else { return Lookup::Unknown };
        if now >= clock.idle_until || now.duration_since(session.opened) >= limits.max_age {
            // Ended: the sweep records it.
            return Lookup::Unknown;
        }
        clock.idle_until = now + limits.idle;
        let renew = now.duration_since(clock.renewed) >= Duration::from_secs(60).min(limits.idle / 2);
        if renew {
            clock.renewed = now;
        }
        drop(clock);
        Lookup::Live { session, renew }
    }

    /// How long the browser's cookie should last from now: the idle time, or less when the maximum age comes first.
    pub fn cookie_lifetime(session: &PreviewSession, limits: &PreviewLimits) -> Duration {
        limits.idle.min(limits.max_age.saturating_sub(session.age()))
    }

    /// Removes and returns the sessions that ended by `now` (idle, or at their maximum age), for their close
    /// records.
    pub fn sweep(&self, limits: &PreviewLimits) -> Vec<(Arc<PreviewSession>, Ending)> {
        let now = Instant::now();
        let mut ended = Vec::new();
        if let Ok(mut live) = self.live.lock() {
            live.retain(|_, session| {
                let ending = if now.duration_since(session.opened) >= limits.max_age {
                    Some(Ending::MaxAge)
                } else {
                    session.clock.lock().ok().filter(|clock| now >= clock.idle_until).map(|_| Ending::Idle)
                };
                match ending {
                    Some(ending) => {
                        ended.push((session.clone(), ending));
                        false
                    }
                    None => true,
                }
            });
        }
        ended
    }

    /// Ends the session `id` now (its user lost access, or the firewall blocked it); the session, if it was live.
    pub fn end(&self, id: &str) -> Option<Arc<PreviewSession>> {
        let mut live = self.live.lock().ok()?;
        let key = live.iter().find(|(_, session)| session.id == id).map(|(key, _)| key.clone())?;
        live.remove(&key)
    }

    /// Removes every session (the gateway is shutting down).
    pub fn drain(&self) -> Vec<Arc<PreviewSession>> {
        self.live.lock().map(|mut live| live.drain().map(|(_, session)| session).collect()).unwrap_or_default()
    }

    /// The live session of `user` whose last request is the oldest (to make room for a new one).
    pub fn least_recent_of(&self, user: &Email) -> Option<Arc<PreviewSession>> {
        let mut live = self.live.lock().ok()?;
        let idle_until = |session: &PreviewSession| session.clock.lock().map(|clock| clock.idle_until).ok();
        let key = live
            .iter()
            .filter(|(_, session)| session.user == *user)
            .min_by_key(|(_, session)| idle_until(session))
            .map(|(key, _)| key.clone())?;
        live.remove(&key)
    }

    /// Live sessions of `user`.
    pub fn of_user(&self, user: &Email) -> usize {
        self.live.lock().map(|live| live.values().filter(|session| session.user == *user).count()).unwrap_or(0)
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.live.lock().map(|live| live.len()).unwrap_or(0)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits() -> PreviewLimits {
        PreviewLimits { domain: "preview.example.com".into(), ..PreviewLimits::default() }
    }

    #[test]
    fn readable_workspace_ids_are_their_own_label_and_others_are_hashed() {
        assert_eq!(label("ws-1"), "ws-1");
        for odd in ["WS-1", "ws_1", "ws.1", "a--b", "-ws", "ws-", &"w".repeat(100), ""] {
            let hashed = label(odd);
            assert!(hashed.starts_with("h--") && hashed.len() == 35, "{odd}: {hashed}");
            assert!(hashed.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-'));
        }
        assert_ne!(label("WS-1"), label("ws-1"));
        assert_ne!(label("WS-1"), label("Ws-1"));
    }

    #[test]
    fn preview_hosts_parse_and_nothing_else_does() {
        let limits = limits();
        let host = limits.host("ws-1", 3000);
        assert_eq!(host, "ws-1--3000.preview.example.com");
        assert_eq!(limits.parse_host(&host), Some(("ws-1", 3000)));
        assert_eq!(limits.parse_host("WS-1--3000.Preview.Example.COM:8443"), Some(("WS-1", 3000)));
        assert_eq!(limits.parse_host("ws-1--3000.preview.example.com."), Some(("ws-1", 3000)));
        let hashed = limits.host("Odd_Id", 8080);
        assert_eq!(
            limits.parse_host(&hashed).map(|(label, port)| (label.to_string(), port)),
            Some((label("Odd_Id"), 8080))
        );
        for other in [
            "portal.example.com",
            "preview.example.com",
            "ws-1.preview.example.com",
            "ws-1--3000.preview.example.com.evil.net",
            "ws-1--3000.evilpreview.example.com",
            "a.ws-1--3000.preview.example.com",
            "ws-1--0.preview.example.com",
            "ws-1--70000.preview.example.com",
            "ws-1--03000.preview.example.com",
            "ws-1--+300.preview.example.com",
            "--3000.preview.example.com",
            "",
            "[::1]:8080",
        ] {
            assert_eq!(limits.parse_host(other), None, "{other}");
        }
    }

    #[test]
    fn a_cookie_opens_its_own_host_only_and_ends_when_idle() {
        let mut limits = limits();
        let sessions = PreviewSessions::new();
        let ada = Email::parse("ada@example.com").unwrap();
        let host = limits.host("ws-1", 3000);
        let (cookie, session) =
            sessions.start("s-1".into(), ada.clone(), "ws-1".into(), 3000, host.clone(), &limits).unwrap();
        assert!(matches!(sessions.find(&cookie, &host, &limits), Lookup::Live { renew: false, .. }));
        assert!(matches!(sessions.find(&cookie, &limits.host("ws-2", 3000), &limits), Lookup::OtherHost));
        assert!(matches!(sessions.find(&cookie, &limits.host("ws-1", 3001), &limits), Lookup::OtherHost));
        assert!(matches!(sessions.find("forged", &host, &limits), Lookup::Unknown));
        assert_eq!(sessions.of_user(&ada), 1);
        assert!(sessions.sweep(&limits).is_empty());
        // Idle past its time: unknown at once, and swept once.
        limits.idle = Duration::from_millis(50);
        assert!(matches!(sessions.find(&cookie, &host, &limits), Lookup::Live { .. }), "renewed with the new time");
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(sessions.find(&cookie, &host, &limits), Lookup::Unknown));
        let swept = sessions.sweep(&limits);
        assert_eq!(swept.len(), 1);
        assert!(Arc::ptr_eq(&swept[0].0, &session) && swept[0].1 == Ending::Idle);
        assert!(sessions.sweep(&limits).is_empty() && sessions.is_empty());
    }

    #[test]
    fn a_session_ends_on_demand_and_at_its_maximum_age() {
        let mut limits = limits();
        let sessions = PreviewSessions::new();
        let ada = Email::parse("ada@example.com").unwrap();
        let host = limits.host("ws-1", 3000);
        let (_, _) = sessions.start("s-1".into(), ada.clone(), "ws-1".into(), 3000, host.clone(), &limits).unwrap();
        let (cookie, _) = sessions.start("s-2".into(), ada, "ws-1".into(), 3000, host.clone(), &limits).unwrap();
        assert_eq!(sessions.end("s-1").map(|session| session.id.clone()).as_deref(), Some("s-1"));
        assert!(sessions.end("s-1").is_none());
        limits.max_age = Duration::ZERO;
        assert!(matches!(sessions.find(&cookie, &host, &limits), Lookup::Unknown));
        assert_eq!(sessions.sweep(&limits).iter().map(|(_, ending)| *ending).collect::<Vec<_>>(), [Ending::MaxAge]);
    }
}

//! The gateway's state and rules, free of any HTTP framework: connected agents ([`Hub`]), agent tokens, one-time
//! tickets, the IP firewall and the bookkeeping of open sessions. The `api` crate's routes and WebSocket handlers call
//! these methods; the facts they decide are aggregates (`domain::relay`, `domain::firewall`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};
use domain::firewall::{Cidr, Firewall, FirewallAction, FirewallCommand, FirewallError, FirewallRule, FIREWALL_ID};
use domain::relay::{
    AgentRefusal, AgentToken, AgentTokenCommand, AgentTokenError, TerminalSession, Ticket, TicketCommand, TicketError,
};
use domain::Email;
use sha2::{Digest, Sha256};
use store::{AggregateRepository, CommandError, EventMetadata, EventStore, StoreError};
use tokio_util::sync::CancellationToken;

use crate::hub::{AgentConn, Hub};

/// The relay's limits (settings `relay_*`).
#[derive(Debug, Clone)]
pub struct RelayLimits {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// How long a ticket stays redeemable.
    pub ticket_ttl: Duration,
    /// Origins allowed besides none and same-host.
    pub allowed_origins: Vec<String>,
    /// Time for the first message.
    pub auth_timeout: Duration,
    /// Idle timeout of a session.
    pub idle_timeout: Duration,
    /// Maximum age of a session.
    pub max_age: Duration,
    /// Largest WebSocket message accepted.
    pub max_frame: usize,
    /// Sessions per user.
    pub max_sessions_per_user: usize,
}

/// The gateway's shared state.
pub struct Gateway {
    /// Connected agents.
    pub hub: Hub,
    /// Terminals held for their browsers (ADR 0025).
    pub terminals: crate::terminal::Terminals,
    /// Live preview sessions, one per cookie (ADR 0026).
    pub previews: crate::preview::PreviewSessions,
    /// The preview's settings.
    pub preview_limits: crate::preview::PreviewLimits,
    /// The limits in force.
    pub limits: RelayLimits,
    /// Terminal sessions' aggregates.
    pub sessions: AggregateRepository<TerminalSession>,
    /// Cancelled when the gateway shuts down: every session closes, recording `shutdown`.
    pub shutdown: CancellationToken,
    /// Cancelled after the sessions are recorded closed, so that they end as `shutdown`, not `agent_lost`.
    pub agents_shutdown: CancellationToken,
    tickets: AggregateRepository<Ticket>,
    agent_tokens: AggregateRepository<AgentToken>,
    firewall: AggregateRepository<Firewall>,
    /// The rules in force; sessions watch it and re-check their client when it changes.
    rules: tokio::sync::watch::Sender<Arc<Firewall>>,
    /// Open sessions: id → user.
    active: Mutex<HashMap<String, Email>>,
    /// Connected agents by the id of their token: cancelled when the token is revoked.
    live_tokens: Mutex<HashMap<String, Vec<(u64, CancellationToken)>>>,
    next_watch: AtomicU64,
}

/// A connected agent's interest in its token: `revoked` is cancelled when an admin revokes the token. Dropping it
/// stops watching.
pub struct TokenWatch<'a> {
    gateway: &'a Gateway,
    token_id: String,
    id: u64,
    /// Cancelled when the token is revoked.
    pub revoked: CancellationToken,
}

impl Drop for TokenWatch<'_> {
    fn drop(&mut self) {
        if let Ok(mut live) = self.gateway.live_tokens.lock() {
            if let Some(watches) = live.get_mut(&self.token_id) {
                watches.retain(|(id, _)| *id != self.id);
                if watches.is_empty() {
                    live.remove(&self.token_id);
                }
            }
        }
    }
}

/// A newly minted agent token: the only time the token itself exists outside the agent.
#[derive(Debug)]
pub struct MintedToken {
    /// Its id, the hex SHA-256 of the token (what is stored).
    pub id: String,
    /// The token.
    pub token: String,
}

/// A newly issued ticket.
#[derive(Debug)]
pub struct IssuedTicket {
    /// The ticket (32 random bytes, base64url); only its hash is stored.
    pub ticket: String,
    /// When it stops being redeemable.
    pub expires_at: DateTime<Utc>,
}

/// Why an agent token cannot be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The store refused or failed.
    #[error(transparent)]
    Command(#[from] CommandError<AgentTokenError>),
    /// No randomness.
    #[error("no randomness available")]
    Random,
}

/// Why a ticket cannot be issued.
#[derive(Debug, thiserror::Error)]
pub enum TicketIssueError {
    /// The workspace has no connected agent.
    #[error("the workspace has no connected agent")]
    NoAgent,
    /// The caller is neither the workspace's owner nor an admin.
    #[error("only the workspace's owner or an admin may open it")]
    NotOwner,
    /// The store refused or failed.
    #[error(transparent)]
    Command(#[from] CommandError<TicketError>),
    /// No randomness.
    #[error("no randomness available")]
    Random,
}

/// Why a preview session cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PreviewStartError {
    /// The store did not record it.
    #[error("cannot record the preview session")]
    NotRecorded,
    /// No randomness for its cookie.
    #[error("no randomness available")]
    Random,
}

/// Why a preview's connection to the workspace's port cannot be made. **API Boundary:** each is a documented answer
/// of the preview host (docs/API.md, "Previews").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PreviewConnectError {
    /// Nothing listens on the port inside the workspace (502).
    #[error("nothing listens on the port inside the workspace")]
    NothingListens,
    /// The agent disconnected (503).
    #[error("the workspace's agent disconnected")]
    AgentLost,
    /// The agent predates previews (503).
    #[error("the workspace's agent is too old to forward ports: restart the workspace")]
    AgentTooOld,
    /// The agent did not answer (504).
    #[error("the workspace's agent did not answer in time")]
    NoAnswer,
}

/// A connection attempt the firewall judged.
struct Judged {
    action: FirewallAction,
    rule: Option<usize>,
}

impl Gateway {
    /// A gateway over `store`.
    pub fn new(store: EventStore, limits: RelayLimits) -> Self {
        Self {
            hub: Hub::new(),
            terminals: crate::terminal::Terminals::new(crate::terminal::ResumeLimits::default()),
            previews: crate::preview::PreviewSessions::new(),
            preview_limits: crate::preview::PreviewLimits::default(),
            limits,
            sessions: AggregateRepository::new(store.clone(), ()),
            shutdown: CancellationToken::new(),
            agents_shutdown: CancellationToken::new(),
            tickets: AggregateRepository::new(store.clone(), ()),
            agent_tokens: AggregateRepository::new(store.clone(), ()),
            firewall: AggregateRepository::new(store, ()),
            rules: tokio::sync::watch::Sender::new(Arc::new(Firewall::default())),
            active: Mutex::new(HashMap::new()),
            live_tokens: Mutex::new(HashMap::new()),
            next_watch: AtomicU64::new(0),
        }
    }

    /// The gateway with these resume limits (the default: [`crate::terminal::ResumeLimits::default`]).
    pub fn with_resume_limits(mut self, limits: crate::terminal::ResumeLimits) -> Self {
        self.terminals = crate::terminal::Terminals::new(limits);
        self
    }

    /// The gateway with these preview settings (the default: [`crate::preview::PreviewLimits::default`]).
    pub fn with_preview_limits(mut self, limits: crate::preview::PreviewLimits) -> Self {
        self.preview_limits = limits;
        self
    }

    /// Whether `caller` may open the workspace `agent` serves: its owner (the token's `RDE_OWNER_EMAIL`) or an admin.
    /// The one owner rule, used by ticket issue and by the workspace list.
    pub fn may_open(agent: &AgentConn, caller: &Email, is_admin: bool) -> bool {
        is_admin || agent.owner().is_some_and(|owner| owner.eq_ignore_ascii_case(caller.as_str()))
    }

    /// Mints an agent token bound to `workspace` and its discovery `tags`.
    pub async fn mint_token(
        &self,
        name: String,
        workspace: String,
        tags: BTreeMap<String, String>,
        by: &Email,
        metadata: &EventMetadata,
    ) -> Result<MintedToken, MintError> {
        let token = format!("gha_{}", random_secret().map_err(|_| MintError::Random)?);
        let id = sha256_hex(&token);
        let command = AgentTokenCommand::Mint { name, workspace, tags, by: by.clone() };
        self.agent_tokens.execute(&id, command, metadata).await?;
        Ok(MintedToken { id, token })
    }

    /// Revokes the token `id` and disconnects the agents connected with it (also when it was revoked already: a
    /// connection that slipped in before is not left behind); how many were disconnected.
    pub async fn revoke_token(
        &self,
        id: &str,
        by: &Email,
        metadata: &EventMetadata,
    ) -> Result<usize, CommandError<AgentTokenError>> {
        match self.agent_tokens.execute_retrying(id, AgentTokenCommand::Revoke { by: by.clone() }, metadata, 3).await {
            Ok(_) | Err(CommandError::Rejected(AgentTokenError::AlreadyRevoked)) => Ok(self.disconnect_token(id)),
            Err(error) => Err(error),
        }
    }

    /// Checks an agent's `hello`: the token must be valid and bound to `workspace`. The tags the workspace is to be
    /// known by (the token's discovery tags and the agent's others) when it may connect.
    pub async fn admit_agent(
        &self,
        token_id: &str,
        workspace: &str,
        announced: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, AgentRefusal> {
        let token = match self.agent_tokens.load(token_id).await {
            Ok((token, _)) => token,
            Err(error) => {
                tracing::warn!(%error, "cannot check an agent token");
                return Err(AgentRefusal::Invalid);
            }
        };
        token.admits(workspace)?;
        Ok(token.tags_for(announced))
    }

    /// Watches an agent token for revocation. Taken before the token is checked, so a revocation committed after
    /// the check still reaches the connection.
    pub fn watch_token(&self, token_id: &str) -> TokenWatch<'_> {
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        let revoked = CancellationToken::new();
        if let Ok(mut live) = self.live_tokens.lock() {
            live.entry(token_id.to_string()).or_default().push((id, revoked.clone()));
        }
        TokenWatch { gateway: self, token_id: token_id.to_string(), id, revoked }
    }

    /// Disconnects every agent connected with the token `token_id` (after its revocation was committed); how many.
    fn disconnect_token(&self, token_id: &str) -> usize {
        let watches = self.live_tokens.lock().map(|mut live| live.remove(token_id).unwrap_or_default());
        let watches = watches.unwrap_or_default();
        for (_, revoked) in &watches {
            revoked.cancel();
        }
        watches.len()
    }

    /// Issues a one-time ticket of `kind` (and, for a preview, `port`) for `workspace` to `user`, who must be allowed
    /// to open it.
    pub async fn issue_ticket(
        &self,
        workspace: &str,
        kind: &str,
        port: Option<u16>,
        user: &Email,
        is_admin: bool,
        metadata: &EventMetadata,
    ) -> Result<IssuedTicket, TicketIssueError> {
        let agent = self.hub.get(workspace).ok_or(TicketIssueError::NoAgent)?;
        if !Self::may_open(&agent, user, is_admin) {
            return Err(TicketIssueError::NotOwner);
        }
        let ticket = random_secret().map_err(|_| TicketIssueError::Random)?;
        let ticket_hash = sha256_hex(&ticket);
        let expires_at =
            Utc::now() + chrono::Duration::from_std(self.limits.ticket_ttl).unwrap_or(chrono::Duration::MAX);
        let command = TicketCommand::Issue {
            ticket_hash: ticket_hash.clone(),
            user: user.clone(),
            workspace: workspace.to_string(),
            kind: kind.to_string(),
            port,
            expires_at,
        };
        self.tickets.execute(&ticket_hash, command, metadata).await?;
        Ok(IssuedTicket { ticket, expires_at })
    }

    /// The user a ticket was issued to, without redeeming it (`None`: unknown ticket, or the store failed).
    pub async fn ticket_user(&self, ticket: &str) -> Option<Email> {
        match self.tickets.load(&sha256_hex(ticket)).await {
            Ok((state, _)) => state.user,
            Err(error) => {
                tracing::warn!(%error, "cannot read a ticket");
                None
            }
        }
    }

    /// The workspace a ticket was issued for, without redeeming it (`None`: unknown ticket, or the store failed).
    pub async fn ticket_workspace(&self, ticket: &str) -> Option<String> {
        match self.tickets.load(&sha256_hex(ticket)).await {
            Ok((state, _)) => state.user.map(|_| state.workspace),
            Err(error) => {
                tracing::warn!(%error, "cannot read a ticket");
                None
            }
        }
    }

    /// Redeems a ticket for `workspace`; the ticket's user when it wins. Every refusal is recorded, with the
    /// client's address.
    pub async fn redeem(&self, ticket: &str, workspace: &str, client: Option<IpAddr>) -> Option<Email> {
        self.redeem_for(ticket, workspace, "terminal", None, client).await
    }

    /// Redeems a ticket of `kind` (and `port`) for `workspace`: [`Gateway::redeem`] for any kind of connection.
    pub async fn redeem_for(
        &self,
        ticket: &str,
        workspace: &str,
        kind: &str,
        port: Option<u16>,
        client: Option<IpAddr>,
    ) -> Option<Email> {
        let hash = sha256_hex(ticket);
        let metadata = EventMetadata::system("relay");
        let command = TicketCommand::Redeem {
            workspace: workspace.to_string(),
            kind: kind.to_string(),
            port,
            now: Utc::now(),
            client_ip: client.map(|address| address.to_string()),
        };
        let committed = match self.tickets.execute_retrying(&hash, command, &metadata, 5).await {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "cannot redeem a ticket");
                return None;
            }
        };
        let (state, _) = self.tickets.load(&hash).await.ok()?;
        // A ticket is used once: its cached state would only take memory (a replay reads it from the store).
        self.tickets.forget(&hash);
        if state.redeemed_at == Some(committed.version) {
            state.user
        } else {
            tracing::info!(workspace, client_ip = ?client, "ticket refused");
            None
        }
    }

    /// Loads the firewall rules from the store.
    pub async fn load_firewall(&self) -> Result<(), StoreError> {
        let (firewall, _) = self.firewall.load(FIREWALL_ID).await?;
        self.rules.send_replace(Arc::new(firewall));
        Ok(())
    }

    /// The firewall as stored, and its version.
    pub async fn firewall(&self) -> Result<(Firewall, u64), StoreError> {
        self.firewall.load(FIREWALL_ID).await
    }

    /// Replaces the firewall's rules; live sessions re-check their clients against the new ones.
    pub async fn replace_firewall(
        &self,
        rules: Vec<FirewallRule>,
        default_action: FirewallAction,
        by: &Email,
        metadata: &EventMetadata,
    ) -> Result<(Firewall, u64), CommandError<FirewallError>> {
        let command = FirewallCommand::Replace { rules, default_action, by: by.clone() };
        self.firewall.execute_retrying(FIREWALL_ID, command, metadata, 5).await?;
        let (firewall, version) = self.firewall.load(FIREWALL_ID).await?;
        self.rules.send_replace(Arc::new(firewall.clone()));
        Ok((firewall, version))
    }

    /// Follows the rules in force.
    pub fn rules(&self) -> tokio::sync::watch::Receiver<Arc<Firewall>> {
        self.rules.subscribe()
    }

    fn judge(&self, address: Option<IpAddr>) -> Judged {
        let firewall = self.rules.borrow().clone();
        let (action, rule) = match address {
            Some(address) => firewall.evaluate(address),
            None => (firewall.default_action, None),
        };
        Judged { action, rule }
    }

    /// Records a blocked attempt (logged once) and answers whether the address is denied. `user` names whose
    /// attempt it was; it is asked only for a blocked one.
    pub async fn blocked<F, Fut>(&self, address: Option<IpAddr>, workspace: &str, user: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<Email>>,
    {
        let Judged { action, rule } = self.judge(address);
        if action == FirewallAction::Allow {
            return false;
        }
        let client_ip = address.map(|address| address.to_string()).unwrap_or_default();
        tracing::info!(client_ip, ?rule, workspace, "connection blocked by the firewall");
        let command =
            FirewallCommand::RecordBlocked { client_ip, rule, workspace: workspace.to_string(), user: user().await };
        if let Err(error) =
            self.firewall.execute_retrying(FIREWALL_ID, command, &EventMetadata::system("relay"), 5).await
        {
            tracing::warn!(%error, "cannot record a blocked connection");
        }
        true
    }

    /// Starts a preview session (one per cookie) for `client` on `port` of the workspace `agent` serves, and records
    /// it opened; its cookie and the session.
    pub async fn start_preview(
        &self,
        agent: &AgentConn,
        client: &crate::terminal::Client,
        port: u16,
    ) -> Result<(String, Arc<crate::preview::PreviewSession>), PreviewStartError> {
        let session_id = uuid::Uuid::new_v4().to_string();
        let metadata = EventMetadata::for_request(client.user.as_str(), session_id.clone());
        let open = domain::relay::SessionCommand::Open {
            session_id: session_id.clone(),
            user: client.user.clone(),
            workspace: client.workspace.clone(),
            agent: agent.id.clone(),
            client_ip: client.client_ip.clone(),
            user_agent: client.user_agent.clone(),
            kind: domain::relay::SessionKind::Preview,
            port: Some(port),
        };
        if let Err(error) = self.sessions.execute(&session_id, open, &metadata).await {
            tracing::warn!(%error, "cannot record a preview session");
            return Err(PreviewStartError::NotRecorded);
        }
        let host = self.preview_limits.host(&client.workspace, port);
        self.previews
            .start(session_id, client.user.clone(), client.workspace.clone(), port, host, &self.preview_limits)
            .ok_or(PreviewStartError::Random)
    }

    /// Records a preview session closed, with what it carried.
    pub async fn end_preview(&self, session: &crate::preview::PreviewSession, reason: domain::relay::CloseReason) {
        let (bytes_in, bytes_out) = session.counters.totals();
        let duration_ms = u64::try_from(session.age().as_millis()).unwrap_or(u64::MAX);
        let close = domain::relay::SessionCommand::Close { bytes_in, bytes_out, duration_ms, reason };
        let metadata = EventMetadata::for_request(session.user.as_str(), session.id.clone());
        match self.sessions.execute_retrying(&session.id, close, &metadata, 5).await {
            Ok(_) => tracing::info!(
                session = session.id,
                workspace = session.workspace,
                port = session.port,
                reason = reason.as_str(),
                bytes_in,
                bytes_out,
                "preview session closed"
            ),
            Err(error) => tracing::warn!(%error, session = session.id, "cannot record a preview session closed"),
        }
        // A closed session is read from the store when replayed; its cached state would only take memory.
        self.sessions.forget(&session.id);
    }

    /// Ends preview sessions idle past their time or at their maximum age, every `every`, recording each, until the
    /// gateway shuts down ([`Gateway::shut_down`] ends the rest).
    pub async fn sweep_previews(self: Arc<Self>, every: Duration) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            for (session, ending) in self.previews.sweep(&self.preview_limits) {
                let reason = match ending {
                    crate::preview::Ending::Idle => domain::relay::CloseReason::IdleTimeout,
                    crate::preview::Ending::MaxAge => domain::relay::CloseReason::MaxAge,
                };
                self.end_preview(&session, reason).await;
            }
        }
    }

    /// Opens one connection to `port` of the workspace `agent` serves, through the agent (a preview's request); the
    /// channel once the agent reached the port.
    pub async fn connect_preview(
        &self,
        agent: &Arc<AgentConn>,
        port: u16,
        counters: Arc<crate::channel::Counters>,
    ) -> Result<crate::channel::Channel, PreviewConnectError> {
        if !agent.supports(crate::forward::FEATURE_PREVIEW) {
            return Err(PreviewConnectError::AgentTooOld);
        }
        let mut handle = agent.open_preview(port);
        // The agent tries the port for CONNECT_TIMEOUT; a little more for the answer to come back.
        let answer =
            tokio::time::timeout(crate::forward::CONNECT_TIMEOUT + Duration::from_secs(5), handle.recv()).await;
        match answer {
            Ok(Some(crate::hub::ToBrowser::Opened)) => Ok(crate::channel::Channel::new(handle, counters)),
            Ok(Some(crate::hub::ToBrowser::Closed)) => Err(PreviewConnectError::NothingListens),
            Ok(Some(_)) | Ok(None) => Err(PreviewConnectError::AgentLost),
            Err(_) => Err(PreviewConnectError::NoAnswer),
        }
    }

    /// Closes every session (recording `shutdown`) and every agent connection; waits up to `limit` for the records.
    pub async fn shut_down(&self, limit: Duration) {
        self.shutdown.cancel();
        let deadline = Instant::now() + limit;
        for session in self.previews.drain() {
            let ending = self.end_preview(&session, domain::relay::CloseReason::Shutdown);
            if tokio::time::timeout_at(deadline.into(), ending).await.is_err() {
                break;
            }
        }
        while Instant::now() < deadline && self.active.lock().map(|active| !active.is_empty()).unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.agents_shutdown.cancel();
    }

    /// Open sessions of `user` in this process.
    pub fn sessions_of(&self, user: &Email) -> usize {
        self.active.lock().map(|active| active.values().filter(|owner| *owner == user).count()).unwrap_or(0)
    }

    /// Counts an open session (for the per-user limit and the shutdown wait).
    pub fn session_opened(&self, session_id: &str, user: &Email) {
        if let Ok(mut active) = self.active.lock() {
            active.insert(session_id.to_string(), user.clone());
        }
    }

    /// Forgets a session once its end is recorded.
    pub fn session_ended(&self, session_id: &str) {
        if let Ok(mut active) = self.active.lock() {
            active.remove(session_id);
        }
    }
}

/// The hex SHA-256 of a secret: how tokens and tickets are stored.
pub fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// 32 random bytes, base64url: tickets, agent tokens, preview cookies.
pub(crate) fn random_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the right-most `X-Forwarded-For` hop
/// that is not a trusted proxy (hops are read right to left, each header in order; an address written by an
/// untrusted party is never believed, so a client cannot spoof its way past the firewall). When every hop is a
/// trusted proxy, the left-most one is the client. A hop that is not an address (bracketed IPv6 and a `:port` are
/// accepted) ends the walk: the client is unknown (`None`), because what lies left of it cannot be trusted.
/// IPv4-mapped IPv6 addresses are reported as IPv4.
pub fn client_address<'a>(
    peer: Option<IpAddr>,
    forwarded: impl IntoIterator<Item = &'a str>,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |address: IpAddr| trusted.iter().any(|cidr| cidr.contains(address));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let hops: Vec<&str> =
        forwarded.into_iter().flat_map(|value| value.split(',')).map(str::trim).filter(|hop| !hop.is_empty()).collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = parse_hop(hop)?;
        if !is_trusted(client) {
            return Some(client);
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: `ADDRESS`, `[IPV6]`, `IPV4:PORT` or `[IPV6]:PORT`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Ok(socket) = hop.parse::<std::net::SocketAddr>() {
        return Some(socket.ip().to_canonical());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok().map(|v6| IpAddr::V6(v6).to_canonical())
}

/// Whether a terminal may be opened from `origin` (the request's `Origin` header): none (not a browser), one of
/// `allowed` (or `*`), or the request's own `host`.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    if allowed.iter().any(|allowed| allowed == origin || allowed == "*") {
        return true;
    }
    let host = host.unwrap_or_default();
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    fn cidrs(raw: &[&str]) -> Vec<Cidr> {
        raw.iter().map(|cidr| Cidr::parse(cidr).unwrap()).collect()
    }

    fn client(peer: &str, forwarded: &[&str], trusted: &[&str]) -> Option<IpAddr> {
        client_address(Some(ip(peer)), forwarded.iter().copied(), &cidrs(trusted))
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(client("203.0.113.9", &["10.1.2.3"], &["127.0.0.1/32"]), Some(ip("203.0.113.9")));
        assert_eq!(client("2001:db8::9", &["2001:db8::1"], &["::1/128"]), Some(ip("2001:db8::9")));
        // Spoofed from an IPv6 peer that is not a proxy; also when the proxy list is empty.
        assert_eq!(client("2001:db8::9", &["::1", "fd00::5"], &["fd00::/8", "::1/128"]), Some(ip("2001:db8::9")));
        assert_eq!(client("::1", &["2001:db8::7"], &[]), Some(ip("::1")));
        assert_eq!(client_address(None, ["2001:db8::7"], &cidrs(&["::1/128"])), None);
    }

    #[test]
    fn ipv6_clients_through_ipv6_proxies() {
        let trusted = ["::1/128", "fd00::/8"];
        assert_eq!(client("::1", &["2001:db8::7"], &trusted), Some(ip("2001:db8::7")));
        assert_eq!(client("fd00::2", &["2001:db8::7"], &trusted), Some(ip("2001:db8::7")));
        // A chain: only the right-most hop that is not a trusted proxy counts; what is left of it could be forged.
        assert_eq!(client("::1", &["198.51.100.1, 2001:db8::7, fd00::5"], &trusted), Some(ip("2001:db8::7")));
        assert_eq!(client("::1", &["2001:db8::66, 2001:db8::7"], &trusted), Some(ip("2001:db8::7")));
        // Several headers are one list, in order.
        assert_eq!(client("::1", &["2001:db8::66", "2001:db8::7, fd00::5"], &trusted), Some(ip("2001:db8::7")));
        // Bracketed and with a port.
        assert_eq!(client("::1", &["[2001:db8::7]"], &trusted), Some(ip("2001:db8::7")));
        assert_eq!(client("::1", &["[2001:db8::7]:4431"], &trusted), Some(ip("2001:db8::7")));
        assert_eq!(client("::1", &["192.0.2.4:4431"], &trusted), Some(ip("192.0.2.4")));
        // An IPv4 client behind an IPv6 proxy, and IPv4-mapped addresses reported as IPv4.
        assert_eq!(client("::1", &["192.0.2.4"], &trusted), Some(ip("192.0.2.4")));
        assert_eq!(client("::1", &["::ffff:192.0.2.4"], &trusted), Some(ip("192.0.2.4")));
        assert_eq!(client("::ffff:127.0.0.1", &["2001:db8::7"], &["127.0.0.0/8"]), Some(ip("2001:db8::7")));
        assert_eq!(client("::ffff:203.0.113.9", &[], &["127.0.0.0/8"]), Some(ip("203.0.113.9")));
    }

    #[test]
    fn odd_forwarded_headers() {
        let trusted = ["::1/128", "fd00::/8"];
        // Nothing forwarded: the proxy itself.
        assert_eq!(client("::1", &[], &trusted), Some(ip("::1")));
        assert_eq!(client("::1", &[" , "], &trusted), Some(ip("::1")));
        // Only proxies: the left-most is where the request came from.
        assert_eq!(client("::1", &["fd00::9, fd00::5"], &trusted), Some(ip("fd00::9")));
        // Garbage right of the client: unknown, never the forged address left of it.
        assert_eq!(client("::1", &["2001:db8::7, unknown"], &trusted), None);
        assert_eq!(client("::1", &["2001:db8::7, fe80::1%eth0"], &trusted), None);
        // Garbage left of the client does not matter.
        assert_eq!(client("::1", &["nonsense, 2001:db8::7, fd00::5"], &trusted), Some(ip("2001:db8::7")));
    }
}

//! Rate limits (ADR 0020): per user on the API and on workspace launches, and per client address on failed
//! authentication, each a keyed GCRA limiter from `governor`.
//!
//! A limit is "N per minute": a fresh key may spend N requests at once, then one more every 60/N seconds (a
//! token bucket of N refilled evenly over a minute). 0 means no limit. Every limit can be changed while serving
//! ([`RateLimits::set_api_per_minute`] and the others; portal settings will call them): the next request is judged by
//! the new limit, and a change starts every key afresh with a full allowance (governor's quota is fixed per limiter,
//! so a change builds a new one).
//!
//! - **API** ([`RateLimits::check_api`]): every request that takes a [`crate::auth::Caller`], keyed by the verified
//!   email, checked right after the token verifies and before the role is read, so a refused request costs no
//!   database read.
//! - **Launch** ([`RateLimits::check_launch`]): workspace launches per user; no route calls it yet.
//! - **Failed authentication** ([`RateLimits::check_client`], [`RateLimits::record_auth_failure`]): tokens that fail
//!   verification (not a missing token, which costs nothing to refuse) are counted per client address; an address
//!   over its allowance is refused with 429 *before* its next token is verified, until the allowance refills, so a
//!   flood of forged tokens costs a hash-map lookup per request rather than a signature check. The address is the
//!   relay's `client_address` (the TCP peer, or the right-most untrusted `X-Forwarded-For` hop behind a
//!   `relay_trusted_proxies` proxy); IPv6 addresses count per /64, which one host or site holds whole.
//!
//! Memory stays bounded: [`RateLimits::sweep_forever`] drops, every [`SWEEP_INTERVAL`], each key whose allowance is
//! full again (unused for at most a minute), so the maps hold only keys seen in about the last minute.
//! Refusals count in `gatehouse_rate_limited_total{limit}`; neither the metric nor the log names a user or an
//! address.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use actix_web::HttpRequest;
use domain::Email;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::auth::Caller;
use crate::{Problem, ProblemCode};

/// How often keys whose allowance has refilled are dropped.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// The limits to start with (settings `rate_limit_*`); 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    /// API requests per minute per user.
    pub api_per_minute: u32,
    /// Workspace launches per minute per user.
    pub launch_per_minute: u32,
    /// Failed token verifications per minute per client address.
    pub auth_failures_per_minute: u32,
}

impl LimitConfig {
    /// Every limit off.
    pub const OFF: LimitConfig = LimitConfig { api_per_minute: 0, launch_per_minute: 0, auth_failures_per_minute: 0 };
}

/// The per-user limits the operator pinned in settings (`rate_limit_api_per_minute`,
/// `rate_limit_launch_per_minute`); `None` follows the portal settings (`PUT /api/v1/portal/limits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pins {
    /// The pinned API requests per minute per user.
    pub api: Option<u32>,
    /// The pinned launches per minute per user.
    pub launch: Option<u32>,
}

impl RateLimits {
    /// Applies the portal settings' limits to every limit not pinned, changing only what differs (a change gives
    /// every user a full allowance again).
    pub fn follow(&self, pins: Pins, limits: domain::portal::Limits) {
        let current = self.config();
        let api = pins.api.unwrap_or(limits.api_requests_per_minute);
        if api != current.api_per_minute {
            tracing::info!(per_minute = api, "API rate limit per user changed");
            self.set_api_per_minute(api);
        }
        let launch = pins.launch.unwrap_or(limits.launches_per_minute);
        if launch != current.launch_per_minute {
            tracing::info!(per_minute = launch, "launch rate limit per user changed");
            self.set_launch_per_minute(launch);
        }
    }
}

/// Which limit refused a request: the `limit` label of `gatehouse_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// API requests per user.
    Api,
    /// Workspace launches per user.
    Launch,
    /// Failed authentication per client address.
    AuthFailures,
}

impl Limit {
    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Limit::Api => "api",
            Limit::Launch => "launch",
            Limit::AuthFailures => "auth_failures",
        }
    }
}

/// A refusal: the limit and how long until a request would pass again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter {
    /// The limit that refused.
    pub limit: Limit,
    /// Until the next request would pass.
    pub wait: Duration,
}

impl RetryAfter {
    /// The `Retry-After` value: whole seconds, rounded up, at least 1 (a client that waits that long passes).
    pub fn seconds(&self) -> u32 {
        let nanos = self.wait.as_nanos();
        let seconds = nanos.div_ceil(1_000_000_000).max(1);
        u32::try_from(seconds).unwrap_or(u32::MAX)
    }
}

impl From<RetryAfter> for Problem {
    /// 429 `rate_limited` with `Retry-After`; the detail names the limit, never the user or the address.
    fn from(refusal: RetryAfter) -> Self {
        let seconds = refusal.seconds();
        let detail = match refusal.limit {
            Limit::Api => format!("Too many requests for this user; retry after {seconds} s."),
            Limit::Launch => format!("Too many workspace launches for this user; retry after {seconds} s."),
            Limit::AuthFailures => {
                format!("Too many requests with invalid tokens from this address; retry after {seconds} s.")
            }
        };
        Problem::new(ProblemCode::RateLimited, "Too many requests").detail(detail).retry_after(seconds)
    }
}

/// The client address failed authentication is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An IPv4 address (IPv4-mapped IPv6 included).
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
    /// No address could be believed (a trusted proxy forwarded something that is not one): one key for all such.
    Unknown,
}

impl ClientKey {
    /// The key of `address`.
    pub fn of(address: Option<IpAddr>) -> Self {
        match address.map(|address| address.to_canonical()) {
            Some(IpAddr::V4(v4)) => ClientKey::V4(v4),
            Some(IpAddr::V6(v6)) => ClientKey::V6((u128::from(v6) >> 64) as u64),
            None => ClientKey::Unknown,
        }
    }

    /// The key of the client that sent `request`, found as the relay finds a terminal client's address
    /// (`relay::gateway::client_address`: `X-Forwarded-For` is read only from a trusted proxy).
    pub fn of_request(request: &HttpRequest, trusted_proxies: &[domain::firewall::Cidr]) -> Self {
        ClientKey::of(client_address(request, trusted_proxies))
    }
}

/// The address of the client that sent `request`: the TCP peer, or what a trusted proxy forwarded
/// (`relay::gateway::client_address`). The one reading of it for rate limits, terminals, previews and the firewall.
pub fn client_address(request: &HttpRequest, trusted_proxies: &[domain::firewall::Cidr]) -> Option<IpAddr> {
    // A header value that is not text is no address: "\0" makes the walk stop at it.
    let forwarded = request.headers().get_all("x-forwarded-for").map(|value| value.to_str().unwrap_or("\u{0}"));
    relay::gateway::client_address(request.peer_addr().map(|peer| peer.ip()), forwarded, trusted_proxies)
}

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One keyed limit of "N per minute" that can be changed while serving (0: none).
struct PerMinute<K: Hash + Eq + Clone, C: Clock> {
    clock: C,
    current: RwLock<(u32, Option<Keyed<K, C>>)>,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> PerMinute<K, C> {
    fn new(per_minute: u32, clock: C) -> Self {
        let limiter = Self::limiter(per_minute, &clock);
        Self { clock, current: RwLock::new((per_minute, limiter)) }
    }

    fn limiter(per_minute: u32, clock: &C) -> Option<Keyed<K, C>> {
        NonZeroU32::new(per_minute)
            .map(|per_minute| RateLimiter::dashmap_with_clock(Quota::per_minute(per_minute), clock.clone()))
    }

    fn per_minute(&self) -> u32 {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).0
    }

    /// Replaces the limit (a no-op when it is unchanged, so keys keep their state).
    fn set(&self, per_minute: u32) {
        let mut current = self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.0 != per_minute {
            *current = (per_minute, Self::limiter(per_minute, &self.clock));
        }
    }

    /// Spends one request of `key`'s allowance, or tells how long until one is there.
    fn check(&self, key: &K) -> Result<(), Duration> {
        let current = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(limiter) = &current.1 else { return Ok(()) };
        limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn retain_recent(&self) {
        let current = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(limiter) = &current.1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        let current = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        current.1.as_ref().map_or(0, |limiter| limiter.len())
    }
}

/// The failed-authentication limit: the GCRA counts failures; an address that runs out is refused until its
/// allowance has a request again, without its token being looked at.
struct FailureLimit<C: Clock> {
    failures: PerMinute<ClientKey, C>,
    blocked: Mutex<HashMap<ClientKey, C::Instant>>,
    /// `blocked.len()`, read without the lock: almost always 0, so a request pays no lock.
    blocked_count: AtomicUsize,
}

impl<C: Clock + Clone> FailureLimit<C> {
    fn new(per_minute: u32, clock: C) -> Self {
        Self {
            failures: PerMinute::new(per_minute, clock),
            blocked: Mutex::default(),
            blocked_count: AtomicUsize::new(0),
        }
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, C::Instant>> {
        self.blocked.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check(&self, key: ClientKey) -> Result<(), Duration> {
        if self.blocked_count.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let now = self.failures.clock.now();
        let mut blocked = self.blocked();
        match blocked.get(&key) {
            Some(until) if *until > now => Err(until.duration_since(now).into()),
            Some(_) => {
                blocked.remove(&key);
                self.blocked_count.store(blocked.len(), Ordering::Relaxed);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn record(&self, key: ClientKey) {
        if let Err(wait) = self.failures.check(&key) {
            let until = self.failures.clock.now() + wait.into();
            let mut blocked = self.blocked();
            blocked.insert(key, until);
            self.blocked_count.store(blocked.len(), Ordering::Relaxed);
        }
    }

    fn set(&self, per_minute: u32) {
        self.failures.set(per_minute);
        if per_minute == 0 {
            let mut blocked = self.blocked();
            blocked.clear();
            self.blocked_count.store(0, Ordering::Relaxed);
        }
    }

    fn retain_recent(&self) {
        self.failures.retain_recent();
        let now = self.failures.clock.now();
        let mut blocked = self.blocked();
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
        self.blocked_count.store(blocked.len(), Ordering::Relaxed);
    }
}

/// The service's rate limits; shared by every worker ([`crate::AppState::limits`]).
pub struct RateLimits<C: Clock + Clone = DefaultClock> {
    api: PerMinute<Email, C>,
    launch: PerMinute<Email, C>,
    auth_failures: FailureLimit<C>,
    refused: IntCounterVec,
}

impl RateLimits {
    /// The limits in `config`, registering `gatehouse_rate_limited_total` in `registry`.
    pub fn new(config: LimitConfig, registry: &Registry) -> Result<Self, prometheus::Error> {
        Self::with_clock(config, registry, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// The limits on `clock` (tests use governor's fake clock).
    pub fn with_clock(config: LimitConfig, registry: &Registry, clock: C) -> Result<Self, prometheus::Error> {
        let refused = IntCounterVec::new(
            Opts::new("gatehouse_rate_limited_total", "Requests refused with 429 by a rate limit"),
            &["limit"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        Ok(Self {
            api: PerMinute::new(config.api_per_minute, clock.clone()),
            launch: PerMinute::new(config.launch_per_minute, clock.clone()),
            auth_failures: FailureLimit::new(config.auth_failures_per_minute, clock),
            refused,
        })
    }

    /// The limits in force.
    pub fn config(&self) -> LimitConfig {
        LimitConfig {
            api_per_minute: self.api.per_minute(),
            launch_per_minute: self.launch.per_minute(),
            auth_failures_per_minute: self.auth_failures.failures.per_minute(),
        }
    }

    /// Sets the API limit per user (0: none) from the next request on.
    pub fn set_api_per_minute(&self, per_minute: u32) {
        self.api.set(per_minute);
    }

    /// Sets the launch limit per user (0: none) from the next launch on.
    pub fn set_launch_per_minute(&self, per_minute: u32) {
        self.launch.set(per_minute);
    }

    /// Sets the failed-authentication limit per client address (0: none; also lifts every address's refusal).
    pub fn set_auth_failures_per_minute(&self, per_minute: u32) {
        self.auth_failures.set(per_minute);
    }

    /// Spends one API request of `email`'s allowance.
    pub fn check_api(&self, email: &Email) -> Result<(), RetryAfter> {
        self.api.check(email).map_err(|wait| self.refuse(Limit::Api, wait))
    }

    /// Spends one workspace launch of the caller's allowance.
    pub fn check_launch(&self, caller: &Caller) -> Result<(), RetryAfter> {
        self.launch.check(&caller.email).map_err(|wait| self.refuse(Limit::Launch, wait))
    }

    /// Refuses a client address that ran out of failed authentications, before its token is verified.
    pub fn check_client(&self, client: ClientKey) -> Result<(), RetryAfter> {
        self.auth_failures.check(client).map_err(|wait| self.refuse(Limit::AuthFailures, wait))
    }

    /// Counts a token that failed verification against its client address.
    pub fn record_auth_failure(&self, client: ClientKey) {
        self.auth_failures.record(client);
    }

    fn refuse(&self, limit: Limit, wait: Duration) -> RetryAfter {
        self.refused.with_label_values(&[limit.as_str()]).inc();
        tracing::debug!(limit = limit.as_str(), "rate limited");
        RetryAfter { limit, wait }
    }

    /// Drops every key whose allowance is full again (it behaves as a key never seen) and every expired refusal.
    pub fn retain_recent(&self) {
        self.api.retain_recent();
        self.launch.retain_recent();
        self.auth_failures.retain_recent();
    }

    /// Keys held in memory, over every limit.
    pub fn tracked_keys(&self) -> usize {
        self.api.len() + self.launch.len() + self.auth_failures.failures.len() + self.auth_failures.blocked().len()
    }
}

impl RateLimits {
    /// Calls [`RateLimits::retain_recent`] every [`SWEEP_INTERVAL`], forever; `Application` spawns it and aborts it
    /// on shutdown.
    pub async fn sweep_forever(self: std::sync::Arc<Self>) {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.retain_recent();
        }
    }
}

/// Documents `429 rate_limited` with `Retry-After` on every operation that takes a bearer token (those are the
/// operations whose `Caller` applies the limits); called by [`crate::ops::document`].
pub(crate) fn document_refusals(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let retry_after = HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).maximum(Some(u32::MAX)))
        .description(Some("Whole seconds until a request would pass again (also the `retry_after` member)"))
        .build();
    let response = ResponseBuilder::new()
        .description("A rate limit refused the request (`rate_limited`)")
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
        )
        .header("Retry-After", retry_after)
        .build();
    for item in document.paths.paths.values_mut() {
        let operations =
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head];
        for operation in operations.into_iter().flatten() {
            if operation.security.as_ref().is_some_and(|schemes| !schemes.is_empty()) {
                operation.responses.responses.insert("429".to_string(), response.clone().into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use domain::roster::Role;
    use governor::clock::FakeRelativeClock;

    fn limits(config: LimitConfig) -> (RateLimits<FakeRelativeClock>, FakeRelativeClock, Registry) {
        let clock = FakeRelativeClock::default();
        let registry = Registry::new();
        (RateLimits::with_clock(config, &registry, clock.clone()).unwrap(), clock, registry)
    }

    fn caller(email: &str) -> Caller {
        Caller { email: Email::parse(email).unwrap(), role: Role::Member }
    }

    fn refused(registry: &Registry, limit: &str) -> u64 {
        let families = registry.gather();
        let Some(family) = families.iter().find(|family| family.get_name() == "gatehouse_rate_limited_total") else {
            return 0;
        };
        family
            .get_metric()
            .iter()
            .filter(|metric| metric.get_label().iter().any(|label| label.get_value() == limit))
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }

    const LAUNCH_5: LimitConfig = LimitConfig { api_per_minute: 0, launch_per_minute: 5, auth_failures_per_minute: 0 };

    #[test]
    fn a_user_launches_five_times_at_once_and_then_one_every_twelve_seconds() {
        let (limits, clock, registry) = limits(LAUNCH_5);
        let ada = caller("ada@example.com");
        for launch in 0..5 {
            assert_eq!(limits.check_launch(&ada), Ok(()), "launch {launch}");
        }
        let refusal = limits.check_launch(&ada).unwrap_err();
        assert_eq!(refusal.limit, Limit::Launch);
        assert_eq!(refusal.wait, Duration::from_secs(12));
        assert_eq!(refusal.seconds(), 12);
        assert_eq!(refused(&registry, "launch"), 1);

        clock.advance(Duration::from_secs(11));
        assert_eq!(limits.check_launch(&ada).unwrap_err().seconds(), 1, "one second left, rounded up");
        clock.advance(Duration::from_secs(1));
        assert_eq!(limits.check_launch(&ada), Ok(()), "after Retry-After the launch passes");
        assert!(limits.check_launch(&ada).is_err(), "and the next waits again");
    }

    #[test]
    fn one_users_launches_do_not_spend_anothers() {
        let (limits, _, _) = limits(LAUNCH_5);
        let ada = caller("ada@example.com");
        for _ in 0..5 {
            limits.check_launch(&ada).unwrap();
        }
        assert!(limits.check_launch(&ada).is_err());
        assert_eq!(limits.check_launch(&caller("bob@example.com")), Ok(()));
        assert_eq!(limits.check_api(&ada.email), Ok(()), "launches and API requests are separate limits (API off)");
    }

    #[test]
    fn a_changed_limit_judges_the_next_launch_and_zero_is_no_limit() {
        let (limits, _, _) = limits(LAUNCH_5);
        let ada = caller("ada@example.com");
        for _ in 0..5 {
            limits.check_launch(&ada).unwrap();
        }
        assert!(limits.check_launch(&ada).is_err());
        limits.set_launch_per_minute(0);
        for _ in 0..1000 {
            assert_eq!(limits.check_launch(&ada), Ok(()));
        }
        limits.set_launch_per_minute(1);
        assert_eq!(limits.config().launch_per_minute, 1);
        assert_eq!(limits.check_launch(&ada), Ok(()), "a new limit starts with a full allowance");
        let refusal = limits.check_launch(&ada).unwrap_err();
        assert_eq!(refusal.seconds(), 60);
        // Setting the same limit again keeps the state.
        limits.set_launch_per_minute(1);
        assert!(limits.check_launch(&ada).is_err());
    }

    #[test]
    fn the_api_limit_is_per_user_and_changes_at_once() {
        let config = LimitConfig { api_per_minute: 200, ..LimitConfig::OFF };
        let (limits, clock, registry) = limits(config);
        let ada = Email::parse("ada@example.com").unwrap();
        for _ in 0..200 {
            limits.check_api(&ada).unwrap();
        }
        let refusal = limits.check_api(&ada).unwrap_err();
        assert_eq!((refusal.limit, refusal.wait, refusal.seconds()), (Limit::Api, Duration::from_millis(300), 1));
        assert_eq!(refused(&registry, "api"), 1);
        clock.advance(Duration::from_millis(300));
        assert_eq!(limits.check_api(&ada), Ok(()), "one request every 300 ms after the burst");
        limits.set_api_per_minute(2);
        limits.check_api(&ada).unwrap();
        limits.check_api(&ada).unwrap();
        assert_eq!(limits.check_api(&ada).unwrap_err().seconds(), 30);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let at = |wait| RetryAfter { limit: Limit::Api, wait }.seconds();
        assert_eq!(at(Duration::ZERO), 1);
        assert_eq!(at(Duration::from_nanos(1)), 1);
        assert_eq!(at(Duration::from_millis(1000)), 1);
        assert_eq!(at(Duration::from_millis(1001)), 2);
        assert_eq!(at(Duration::from_secs(12)), 12);
        assert_eq!(at(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn a_refusal_is_a_problem_naming_neither_user_nor_address() {
        let problem = Problem::from(RetryAfter { limit: Limit::Api, wait: Duration::from_millis(1500) });
        assert_eq!(problem.code(), ProblemCode::RateLimited);
        assert_eq!(problem.status().as_u16(), 429);
        let document = serde_json::to_value(&problem).unwrap();
        assert_eq!(document["retry_after"], 2);
        let headers = problem.headers();
        assert_eq!(headers, [(actix_web::http::header::RETRY_AFTER, 2.into())]);
        assert!(!document.to_string().contains('@'), "{document}");
    }

    #[test]
    fn keys_unused_for_a_minute_are_dropped() {
        let config = LimitConfig { api_per_minute: 200, launch_per_minute: 5, auth_failures_per_minute: 10 };
        let (limits, clock, _) = limits(config);
        for user in 0..10_000 {
            let email = Email::parse(&format!("user{user}@example.com")).unwrap();
            limits.check_api(&email).unwrap();
            limits.record_auth_failure(ClientKey::of(Some(IpAddr::from([10, 0, (user / 256) as u8, user as u8]))));
        }
        limits.check_launch(&caller("ada@example.com")).unwrap();
        assert_eq!(limits.tracked_keys(), 10_000 + 1 + 10_000);
        limits.retain_recent();
        assert_eq!(limits.tracked_keys(), 10_000 + 1 + 10_000, "all were used just now");
        clock.advance(Duration::from_secs(60));
        limits.retain_recent();
        assert_eq!(limits.tracked_keys(), 0);
    }

    #[test]
    fn an_address_out_of_failed_authentications_is_refused_before_its_token_is_looked_at() {
        let config = LimitConfig { auth_failures_per_minute: 3, ..LimitConfig::OFF };
        let (limits, clock, registry) = limits(config);
        let flood = ClientKey::of(Some("203.0.113.9".parse().unwrap()));
        let other = ClientKey::of(Some("198.51.100.2".parse().unwrap()));
        for _ in 0..3 {
            assert_eq!(limits.check_client(flood), Ok(()));
            limits.record_auth_failure(flood);
        }
        assert_eq!(limits.check_client(flood), Ok(()), "three failures are the allowance");
        limits.record_auth_failure(flood);
        let refusal = limits.check_client(flood).unwrap_err();
        assert_eq!((refusal.limit, refusal.seconds()), (Limit::AuthFailures, 20));
        assert_eq!(refused(&registry, "auth_failures"), 1);
        assert_eq!(limits.check_client(other), Ok(()), "another address is not refused");
        clock.advance(Duration::from_secs(20));
        assert_eq!(limits.check_client(flood), Ok(()), "after Retry-After the address is heard again");
        limits.record_auth_failure(flood);
        limits.record_auth_failure(flood);
        assert!(limits.check_client(flood).is_err(), "one failure refilled, the second is refused again");
        limits.set_auth_failures_per_minute(0);
        assert_eq!(limits.check_client(flood), Ok(()), "turning the limit off lifts refusals");
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let key = |raw: &str| ClientKey::of(Some(raw.parse().unwrap()));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_eq!(ClientKey::of(None), ClientKey::Unknown);
    }
}

//! Building and running the service.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle, Service};
use actix_web::{App, HttpServer};
use anyhow::Context;
use cqrs_es::Aggregate;
use domain::blueprint::Blueprint;
use domain::org::Org;
use domain::publishing::Publishing;
use domain::roster::{Roster, RosterCommand, ROSTER_ID};
use domain::trust::TrustRules;
use domain::Email;
use projections::Projector;
use store::{AggregateRepository, EventMetadata, EventStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Settings;

/// A built service: the listener is bound, the projector runs; [`Application::run_until_stopped`] serves.
pub struct Application {
    port: u16,
    server: Server,
    handle: ServerHandle,
    projector: JoinHandle<()>,
    expiry: JoinHandle<()>,
    checkpoints: JoinHandle<()>,
    revisions: JoinHandle<()>,
    key_refresher: Option<JoinHandle<()>>,
    reloader: JoinHandle<()>,
    limits_sweeper: JoinHandle<()>,
    limits_follower: JoinHandle<()>,
    reconciler: JoinHandle<()>,
    publisher: JoinHandle<()>,
    live_tail: JoinHandle<()>,
    live: Arc<api::stream::LiveLog>,
    limits: Arc<api::limits::RateLimits>,
    shutdown: CancellationToken,
    draining: Arc<AtomicBool>,
    drain_delay: Duration,
    store: EventStore,
    gateway: Arc<relay::gateway::Gateway>,
}

impl Application {
    /// Opens the store, migrates it (or checks it is current), bootstraps the admin, starts the projector and binds
    /// `settings.listen` (port 0 picks a free port; see [`Application::port`]).
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        // Authentication settings first: a bad key source fails before anything else starts.
        let sso_issuer = match settings.sso_issuer().map_err(anyhow::Error::msg).context("SSO token issuer")? {
            Some(config) => Some(api::auth::SsoIssuer::load(config).await.context("SSO token issuer")?),
            None => None,
        };
        let cors_origins = settings.cors_origins()?;
        let store = EventStore::open(&settings.store()).await.context("cannot open the event store")?;
        if settings.migrate_on_start {
            store.migrate().await.context("cannot migrate the event store")?;
        }
        store.check_schema().await.context("the event store is not usable")?;
        tracing::info!(backend = store.backend_name(), "event store open");

        let roster = Arc::new(AggregateRepository::<Roster>::new(store.clone(), ()));
        if let Some(admin) = &settings.bootstrap_admin {
            let email =
                Email::parse(admin).with_context(|| format!("bootstrap_admin {admin:?} is not an email address"))?;
            roster
                .execute_retrying(ROSTER_ID, RosterCommand::Bootstrap { email }, &EventMetadata::system("bootstrap"), 5)
                .await
                .with_context(|| format!("cannot bootstrap the admin ({})", Roster::TYPE))?;
        }
        // Secrets: a ring that lacks a key some stored secret is under is refused here, in one line, rather than
        // at the first request that needs that secret.
        let vault = Arc::new(settings.secrets_vault()?);
        let org = Arc::new(AggregateRepository::<Org>::new(store.clone(), ()));
        let blueprints = Arc::new(AggregateRepository::<Blueprint>::new(store.clone(), ()));
        let holders = api::vault::Holders { store: store.clone(), org: org.clone(), blueprints: blueprints.clone() };
        let in_use = api::vault::inventory(&holders).await.context("cannot list the stored secrets")?;
        api::vault::check_ring(&vault.ring(), &in_use).map_err(|missing| anyhow::anyhow!("{missing}"))?;
        tracing::info!(
            primary_key_id = %vault.ring().primary_key_id(),
            keys = vault.ring().key_ids().len(),
            secrets = in_use.len(),
            "secrets key ring checked"
        );
        let reloader = tokio::spawn(reload_on_hangup(vault.clone(), holders));
        let publishing = Arc::new(AggregateRepository::<Publishing>::new(store.clone(), ()));
        let trust = Arc::new(AggregateRepository::<TrustRules>::new(store.clone(), ()));
        let publish_policy = settings.publish_policy()?;
        let audit_key = Arc::new(settings.audit_key()?);
        let local_issuer = settings.local_issuer().context("local token issuer")?;
        if local_issuer.is_none() && sso_issuer.is_none() {
            tracing::warn!("no token issuer is configured: every API request will get 401");
        }
        let auth = Arc::new(api::auth::Authenticator::new(
            local_issuer.as_ref(),
            sso_issuer,
            &settings.auth_audience,
            Duration::from_secs(settings.auth_leeway_secs),
        ));
        let key_refresher = auth.key_refresher().map(tokio::spawn);

        let registry = prometheus::Registry::new_custom(None, None).context("metrics registry")?;
        let projector = Projector::new(store.clone(), projections::all(), settings.projector(), &registry)
            .context("projector metrics")?;
        let status = projector.status();
        let revisions = projector.revisions();
        let shutdown = CancellationToken::new();
        let projector = tokio::spawn(projector.run(shutdown.clone()));
        // Read caches must know every read model's revision before the first request, and then follow them.
        if let Err(error) = revisions.refresh(&store).await {
            tracing::warn!(error.message = %error, "cannot read the read models' revisions yet; read caches wait");
        }
        let caches = Arc::new(api::cache::Caches::new(&revisions, &registry).context("read cache metrics")?);
        let revisions =
            tokio::spawn(revisions.follow(store.clone(), settings.projector().poll_interval, shutdown.clone()));
        let checkpoints = tokio::spawn(crate::checkpoints::run(
            store.clone(),
            audit_key.clone(),
            Duration::from_secs(settings.audit_checkpoint_secs.max(1)),
            shutdown.clone(),
        ));
        let expiry = tokio::spawn(crate::expiry::run(
            publishing.clone(),
            Duration::from_secs(settings.publish_expiry_sweep_secs.max(1)),
            shutdown.clone(),
        ));

        let gateway = Arc::new(
            relay::gateway::Gateway::new(store.clone(), settings.relay()?)
                .with_resume_limits(settings.resume())
                .with_preview_limits(settings.preview()?),
        );
        gateway.load_firewall().await.context("cannot load the relay firewall")?;
        let draining = Arc::new(AtomicBool::new(false));
        let http_metrics = api::HttpMetrics::register(&registry).context("http metrics")?;
        let limits =
            Arc::new(api::limits::RateLimits::new(settings.rate_limits(), &registry).context("rate limit metrics")?);
        let limits_sweeper = tokio::spawn(limits.clone().sweep_forever());
        // Preview cookies end when idle or old; the sweep records them closed (it stops at shutdown).
        tokio::spawn(gateway.clone().sweep_previews(Duration::from_secs(5)));
        // The stored portal settings' limits apply before the first request, and then follow every change.
        let portal = Arc::new(AggregateRepository::<domain::portal::Portal>::new(store.clone(), ()));
        let (portal_settings, _) =
            portal.load(domain::portal::PORTAL_ID).await.context("cannot read the portal settings")?;
        limits.follow(settings.rate_limit_pins(), portal_settings.limits());
        let limits_follower = tokio::spawn(api::portal::follow_limits(
            portal.clone(),
            limits.clone(),
            settings.rate_limit_pins(),
            Duration::from_secs(1),
            portal_settings.limits(),
        ));
        let listener =
            TcpListener::bind(&settings.listen).with_context(|| format!("cannot listen on {}", settings.listen))?;
        let address = listener.local_addr().context("listener address")?;
        let port = address.port();
        // Workspaces: the local control plane, and its reconciler (ADR 0023).
        let workspaces = Arc::new(AggregateRepository::<domain::workspace::Workspaces>::new(store.clone(), ()));
        let workspace_reads = projections::WorkspacesQuery::new(store.read_models().clone());
        let plane =
            controlplane::local::LocalControlPlane::new(settings.local_control_plane(address)?, gateway.clone());
        let plane = Arc::new(plane);
        let (reconciler, reconciler_handle) = controlplane::Reconciler::new(
            plane.clone(),
            workspaces.clone(),
            workspace_reads.clone(),
            Arc::new(api::workspaces::HubPresence(gateway.clone())),
            Arc::new(api::workspaces::OrgCredentials { org: org.clone(), vault: vault.clone() }),
            settings.reconciler(),
        );
        let reconciler = tokio::spawn(reconciler.run(shutdown.clone()));
        // Publish delivery (ADR 0024): by the gateway that runs the workspaces, whose agents dial in to it.
        let credentials = Arc::new(api::workspaces::OrgCredentials { org: org.clone(), vault: vault.clone() });
        let publisher = publisher::Publisher::new(
            publishing.clone(),
            workspaces.clone(),
            org.clone(),
            gateway.clone(),
            credentials,
            settings.publisher()?,
        );
        let publisher_handle = publisher.handle();
        let publisher = {
            let (plane, shutdown) = (plane.clone(), shutdown.clone());
            tokio::spawn(async move {
                // Only the gateway holding the workspaces directory delivers: the agents are its.
                while !controlplane::ControlPlane::claim(&*plane) {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
                publisher.run(shutdown).await;
            })
        };
        // Live updates (server-sent events) follow one tail of the log.
        let live = api::stream::LiveLog::new(store.clone(), publishing.clone());
        let live_tail = tokio::spawn(live.clone().run(settings.projector().poll_interval, shutdown.clone()));
        let state = api::AppState {
            store: store.clone(),
            projections: status,
            registry,
            draining: draining.clone(),
            auth,
            members: projections::MembersQuery::new(store.read_models().clone()),
            roster,
            publishing,
            trust,
            blueprints,
            org,
            portal,
            vault,
            blueprint_reads: projections::BlueprintsQuery::new(store.read_models().clone()),
            publishing_reads: projections::PublishingQuery::new(store.read_models().clone()),
            publish_policy,
            audit_access: Arc::new(AggregateRepository::new(store.clone(), ())),
            audit_key,
            caches,
            openapi: Arc::new(api::ops::document_for(&gateway.preview_limits)),
            gateway: gateway.clone(),
            idempotency_stale_ms: settings.idempotency_stale_ms()?,
            limits: limits.clone(),
            limit_pins: settings.rate_limit_pins(),
            workspaces,
            workspace_reads,
            reconciler: reconciler_handle,
            publisher: publisher_handle,
            live: live.clone(),
            tags: Arc::new(AggregateRepository::new(store.clone(), ())),
            tag_reads: projections::TagsQuery::new(store.read_models().clone()),
        };
        let hsts_max_age_secs = settings.http_hsts_max_age_secs;
        let make_app = move || {
            let metrics = http_metrics.clone();
            // Inside out: CORS answers preflights, its refusals become problem documents, every answer gets the
            // security headers, and the metrics see the final status.
            App::new()
                .wrap(api::cors::middleware(&cors_origins))
                .wrap(api::cors::preflight_refusals(&cors_origins))
                .wrap(api::headers::security_headers(hsts_max_age_secs))
                // Preview hosts are answered before any of the above: an app's responses are its own.
                .wrap(actix_web::middleware::from_fn(api::preview::intercept))
                .wrap_fn(move |request, service| {
                    let started = Instant::now();
                    let method = request.method().to_string();
                    let metrics = metrics.clone();
                    let response = service.call(request);
                    async move {
                        let response = response.await?;
                        let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".into());
                        let status = response.status().as_u16().to_string();
                        metrics.requests.with_label_values(&[&method, &route, &status]).inc();
                        metrics.duration.with_label_values(&[&method, &route]).observe(started.elapsed().as_secs_f64());
                        Ok(response)
                    }
                })
                .configure(api::configure(state.clone()))
        };
        let server = HttpServer::new(make_app)
            .disable_signals()
            .shutdown_timeout(settings.shutdown_timeout_secs)
            // Terminal keystrokes are tiny frames written back to back; with Nagle's algorithm each waits for a
            // delayed ACK (measured: 88 ms per keystroke round trip through the relay).
            .on_connect(|connection, _| {
                if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
                    if let Err(error) = tcp.set_nodelay(true) {
                        tracing::warn!(%error, "cannot set TCP_NODELAY");
                    }
                }
            })
            .listen(listener)
            .context("cannot start the HTTP server")?
            .run();
        let handle = server.handle();
        tracing::info!(port, "listening");
        let drain_delay = Duration::from_secs(settings.shutdown_drain_secs);
        Ok(Self {
            port,
            server,
            handle,
            projector,
            expiry,
            checkpoints,
            revisions,
            key_refresher,
            reloader,
            limits_sweeper,
            limits_follower,
            reconciler,
            publisher,
            live_tail,
            live,
            limits,
            shutdown,
            draining,
            drain_delay,
            store,
            gateway,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The rate limits in force, to change while serving (`RateLimits::set_api_per_minute` and the others).
    pub fn rate_limits(&self) -> Arc<api::limits::RateLimits> {
        self.limits.clone()
    }

    /// A handle that stops the service gracefully, as SIGTERM does.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            handle: self.handle.clone(),
            draining: self.draining.clone(),
            drain_delay: self.drain_delay,
            gateway: self.gateway.clone(),
            live: self.live.clone(),
        }
    }

    /// Serves until SIGTERM or SIGINT (or a [`Stopper`]), then drains: readiness turns off, in-flight requests
    /// finish, the projector stops after its current batch, connections close.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let stopper = self.stopper();
        let signals = tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            stopper.stop().await;
        });
        let served = self.server.await.context("HTTP server failed");
        signals.abort();
        if let Some(refresher) = &self.key_refresher {
            refresher.abort();
        }
        self.reloader.abort();
        self.limits_sweeper.abort();
        self.limits_follower.abort();
        self.shutdown.cancel();
        // Workspaces keep running while the gateway is down; the next one adopts their agents.
        self.live_tail.abort();
        if tokio::time::timeout(Duration::from_secs(5), self.reconciler).await.is_err() {
            tracing::warn!("the workspace reconciler did not stop within 5 s");
        }
        if tokio::time::timeout(Duration::from_secs(5), self.publisher).await.is_err() {
            tracing::warn!("the publisher did not stop within 5 s");
        }
        if tokio::time::timeout(Duration::from_secs(5), self.checkpoints).await.is_err() {
            tracing::warn!("audit checkpoints did not stop within 5 s");
        }
        if tokio::time::timeout(Duration::from_secs(5), self.expiry).await.is_err() {
            tracing::warn!("publish request expiry did not stop within 5 s");
        }
        if tokio::time::timeout(Duration::from_secs(5), self.revisions).await.is_err() {
            tracing::warn!("read-model revision follower did not stop within 5 s");
        }
        if tokio::time::timeout(Duration::from_secs(10), self.projector).await.is_err() {
            tracing::warn!("projector did not stop within 10 s");
        }
        self.store.close().await;
        tracing::info!("stopped");
        served
    }
}

/// Stops a running [`Application`].
#[derive(Clone)]
pub struct Stopper {
    handle: ServerHandle,
    draining: Arc<AtomicBool>,
    drain_delay: Duration,
    gateway: Arc<relay::gateway::Gateway>,
    live: Arc<api::stream::LiveLog>,
}

impl Stopper {
    /// Turns readiness off, keeps serving for the drain delay (so load balancers notice and stop sending new
    /// requests), then stops accepting connections and lets in-flight requests finish.
    pub async fn stop(&self) {
        self.draining.store(true, Ordering::Relaxed);
        if !self.drain_delay.is_zero() {
            tracing::info!(seconds = self.drain_delay.as_secs(), "draining: readiness is off, still serving");
            tokio::time::sleep(self.drain_delay).await;
        }
        // Terminal sessions are long-lived: close them (recording `shutdown`) before waiting for connections.
        self.gateway.shut_down(Duration::from_secs(5)).await;
        // Live update streams never end by themselves: end them (clients reconnect with Last-Event-ID).
        api::stream::close_all(&self.live);
        self.handle.stop(true).await;
    }
}

/// Reads the secrets key file again on every SIGHUP (a rotation's first and last steps without a restart); a ring
/// that lacks a key current secrets use is refused, and the ring in use stays.
async fn reload_on_hangup(vault: Arc<api::vault::Vault>, holders: api::vault::Holders) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
        while hangups.recv().await.is_some() {
            let secrets = match api::vault::inventory(&holders).await {
                Ok(secrets) => secrets,
                Err(error) => {
                    tracing::error!(error.message = %error, "SIGHUP: cannot list the stored secrets; the key ring stays");
                    continue;
                }
            };
            match vault.reload(&secrets) {
                Ok(true) => {}
                Ok(false) => tracing::info!("SIGHUP: the secrets key ring is unchanged"),
                Err(error) => tracing::error!(error.message = %error, "SIGHUP: the secrets key ring stays"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (vault, holders);
        std::future::pending::<()>().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

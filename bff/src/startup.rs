//! Building, binding, serving and stopping the application.
//!
//! Tests and `bff serve` start the app the same way: `Application::build`
//! binds (port 0 in tests), starts the embedded demo upstreams for every
//! upstream without a configured base URL, and `run_until_stopped` serves
//! until Ctrl-C / SIGTERM, finishing in-flight requests, with the
//! connection limits of [`crate::http::server`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::cache::Caches;
use crate::checkout::pricer::QuotePricer;
use crate::checkout::{Checkout, CheckoutSettings};
use crate::config::Settings;
use crate::demo::orders::RunningOrderService;
use crate::demo::{DemoUpstreams, Service, ServiceControl};
use crate::domain::TenantId;
use crate::graphql::complete::Shape;
use crate::graphql::persisted::PersistedQueries;
use crate::graphql::{BffSchema, Catalog, DocumentCache, Schemas, ValidationCache};
use crate::http::admission::Admission;
use crate::metrics::Metrics;
use crate::outbox::Relay;
use crate::payment::PaymentNotifications;
use crate::pricing::Pricing;
use crate::pricing::host::{PoolSize, RuleHost};
use crate::pricing::pool::{PoolConfig, RulePool};
use crate::pricing::registry::{Registry, UploadRates};
use crate::store::SharedStore;
use crate::upstream::order::OrderClient;
use crate::upstream::{BaseUrls, Upstreams};

/// Shared state of the running app: one cheap-to-clone handle.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    schemas: Schemas,
    validations: ValidationCache,
    upstreams: Arc<Upstreams>,
    authenticator: Authenticator,
    metrics: Metrics,
    documents: DocumentCache,
    shape: Shape,
    persisted: PersistedQueries,
    pricing: Pricing,
    store: SharedStore,
    checkout: Checkout,
    payments: PaymentNotifications,
    caches: Caches,
    catalog: Catalog,
    admission: Admission,
}

impl AppState {
    /// The settings the app runs with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }
    /// The GraphQL schema.
    pub fn schema(&self) -> &BffSchema {
        &self.inner.schemas.strict
    }
    /// The GraphQL schemas: strict, and for requests that passed
    /// validation before (see [`ValidationCache`]).
    pub fn schemas(&self) -> &Schemas {
        &self.inner.schemas
    }
    /// Requests known to pass validation.
    pub fn validations(&self) -> &ValidationCache {
        &self.inner.validations
    }
    /// The upstream clients.
    pub fn upstreams(&self) -> &Upstreams {
        &self.inner.upstreams
    }
    /// The upstream clients, shared.
    pub fn upstreams_arc(&self) -> &Arc<Upstreams> {
        &self.inner.upstreams
    }
    /// Token signing and verification.
    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.authenticator
    }
    /// Parsed GraphQL documents for reuse.
    pub fn documents(&self) -> &DocumentCache {
        &self.inner.documents
    }
    /// The schema's shape, for completing responses.
    pub fn shape(&self) -> &Shape {
        &self.inner.shape
    }
    /// Persisted queries (APQ and the safelist).
    pub fn persisted(&self) -> &PersistedQueries {
        &self.inner.persisted
    }
    /// The promotion engine.
    pub fn pricing(&self) -> &Pricing {
        &self.inner.pricing
    }
    /// The BFF's own state store.
    pub fn store(&self) -> &SharedStore {
        &self.inner.store
    }
    /// One-tap checkout.
    pub fn checkout(&self) -> &Checkout {
        &self.inner.checkout
    }
    /// Payment provider notifications.
    pub fn payments(&self) -> &PaymentNotifications {
        &self.inner.payments
    }
    /// The two-level cache (for invalidation).
    pub fn caches(&self) -> &Caches {
        &self.inner.caches
    }
    /// Reference and catalogue data through the cache.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }
    /// Rate limits and the concurrency limit.
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }
    /// This instance's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
    /// Tenant of anonymous requests.
    pub fn default_tenant(&self) -> &TenantId {
        &self.inner.settings.default_tenant
    }
    /// How long DataLoaders wait to fill a batch.
    pub fn dataloader_delay(&self) -> Duration {
        Duration::from_micros(self.inner.settings.graphql.dataloader_delay_us)
    }
}

/// A built, bound application, ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    demo: Option<DemoUpstreams>,
    order_service: Option<RunningOrderService>,
    relay: Relay,
}

impl Application {
    /// Builds the app from settings and binds its listener. Starts the
    /// demo upstreams if any upstream has no configured base URL.
    pub async fn build(mut settings: Settings) -> anyhow::Result<Self> {
        settings.check()?;
        settings.resolve();
        let needs_demo = settings
            .upstreams
            .iter()
            .iter()
            .any(|(_, u)| u.base_url.is_none());
        let demo = if needs_demo {
            Some(DemoUpstreams::start(&settings.demo).await?)
        } else {
            None
        };
        let pick = |configured: &Option<url::Url>, service: Service| -> anyhow::Result<url::Url> {
            match (configured, &demo) {
                (Some(url), _) => Ok(url.clone()),
                (None, Some(demo)) => Ok(demo.service(service).base_url.clone()),
                (None, None) => anyhow::bail!("no base URL for the {} service", service.name()),
            }
        };
        let urls = BaseUrls {
            mall: pick(&settings.upstreams.mall.base_url, Service::Mall)?,
            member: pick(&settings.upstreams.member.base_url, Service::Member)?,
            product: pick(&settings.upstreams.product.base_url, Service::Product)?,
        };
        let metrics = Metrics::new();
        let upstreams = Upstreams::new(&settings.upstreams, &urls, metrics.clone())?;
        // The demo member and product services keep their holds and sales
        // in this process, so on the embedded store the checkout starts
        // afresh with them (a flash sale open with its whole stock).
        let demo_checkout = settings.upstreams.member.base_url.is_none()
            && settings.upstreams.product.base_url.is_none();
        let (store, checkout_store) = crate::store::open_with_checkout(
            settings.redis_url.as_deref(),
            &settings.store.namespace,
            &settings.store.data_dir,
            demo_checkout,
            Duration::from_secs(settings.checkout.order_retention_secs),
        )
        .await?;
        let caches = Caches::new(&settings.cache, store.clone(), metrics.clone());
        let catalog = Catalog::new(&upstreams, &caches);
        let admission = Admission::new(&settings.admission, store.clone(), metrics.clone());
        let host = RuleHost::shared(PoolSize {
            instances: settings.rules.pool_instances,
        })?;
        let pool = RulePool::start(PoolConfig::from_settings(&settings.rules), metrics.clone())?;
        let registry = Registry::new(
            store.clone(),
            host,
            pool,
            settings.rules.quarantine_after,
            UploadRates {
                per_author: settings.rules.uploads_per_author_per_minute,
                per_tenant: settings.rules.uploads_per_tenant_per_minute,
            },
            metrics.clone(),
        );
        registry.start().await?;
        if settings.rules.demo_deployments && !settings.is_production() {
            let tenant = settings.default_tenant.as_str();
            if crate::demo::rules::install(&registry, tenant).await? {
                tracing::info!(tenant, "installed the demo promotion deployments");
            }
        }
        let schemas = Schemas::new(&settings.graphql);
        let validations = ValidationCache::new(settings.graphql.document_cache_bytes);
        let shape = Shape::from_sdl(&schemas.strict.sdl())?;
        let persisted = PersistedQueries::new(
            settings.graphql.apq,
            Duration::from_secs(settings.graphql.apq_ttl_secs),
            settings.graphql.safelist_manifest.as_deref(),
            store.clone(),
        )?;
        let pricing = Pricing::new(
            registry,
            Duration::from_millis(settings.rules.batch_budget_ms),
        );
        let upstreams = Arc::new(upstreams);
        let pricer = QuotePricer::new(upstreams.clone(), pricing.clone());
        let checkout = Checkout::new(
            checkout_store.clone(),
            upstreams.clone(),
            Arc::new(pricer),
            CheckoutSettings {
                payment_ttl_ms: i64::try_from(settings.checkout.payment_ttl_secs)
                    .unwrap_or(i64::MAX / 2_000)
                    .saturating_mul(1_000),
                ..CheckoutSettings::default()
            },
        );
        let payments = PaymentNotifications::new(
            checkout.clone(),
            settings.checkout.effective_secrets(settings.environment()),
            settings.checkout.signature_tolerance_secs,
        );
        let order_service = match &settings.checkout.order_service_url {
            Some(_) => None,
            None => Some(RunningOrderService::start().await?),
        };
        let order_url = match (&settings.checkout.order_service_url, &order_service) {
            (Some(url), _) => url.clone(),
            (None, Some(running)) => running.base_url.clone(),
            (None, None) => anyhow::bail!("no base URL for the order service"),
        };
        let relay = Relay::new(
            checkout_store,
            OrderClient::new(&order_url, &Default::default(), metrics.clone()),
            format!("bff-{}-{:016x}", std::process::id(), rand::random::<u64>()),
            RELAY_MIN_IDLE,
        )
        .retaining(Duration::from_secs(settings.checkout.outbox_retention_secs));
        let state = AppState {
            inner: Arc::new(Inner {
                caches,
                catalog,
                admission,
                pricing,
                checkout,
                payments,
                store,
                schemas,
                validations,
                shape,
                persisted,
                upstreams,
                authenticator: Authenticator::new(&settings.auth),
                metrics,
                documents: DocumentCache::new(&settings.graphql),
                settings,
            }),
        };
        let listener = TcpListener::bind(state.settings().listen).await?;
        let router = crate::http::router(state.clone());
        Ok(Self {
            listener,
            router,
            state,
            demo,
            order_service,
            relay,
        })
    }

    /// The port the app is bound to (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// The app's shared state (metrics, settings).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Fault control of an embedded demo upstream, if it runs.
    pub fn demo_control(&self, service: Service) -> Option<ServiceControl> {
        self.demo
            .as_ref()
            .map(|d| d.service(service).control.clone())
    }

    /// Base URL of an embedded demo upstream, if it runs (another node can
    /// be pointed at it).
    pub fn demo_url(&self, service: Service) -> Option<url::Url> {
        self.demo
            .as_ref()
            .map(|d| d.service(service).base_url.clone())
    }

    /// Serves until Ctrl-C or SIGTERM, then lets in-flight requests finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "BFF listening; playground at http://{addr}/playground");
        // Keep the demo upstreams alive for as long as we serve.
        let _demo = self.demo;
        let _order_service = self.order_service;
        let state = &self.state;
        let background = Background(vec![
            tokio::spawn(
                state
                    .caches()
                    .clone()
                    .follow_invalidations(state.store().clone()),
            ),
            tokio::spawn(prewarm_loop(
                state.clone(),
                Duration::from_secs(state.settings().cache.prewarm_interval_secs),
            )),
            tokio::spawn(sweep_loop(
                self.state.checkout().clone(),
                Duration::from_millis(self.state.settings().checkout.sweep_interval_ms),
            )),
            tokio::spawn(relay_loop(
                self.relay,
                Duration::from_millis(self.state.settings().checkout.relay_interval_ms),
            )),
        ]);
        let served = crate::http::server::serve(
            self.listener,
            self.router,
            &self.state.settings().server,
            self.state.settings().upstreams.idle_connections_kept(),
            shutdown_signal(),
        )
        .await;
        drop(background);
        served
    }
}

/// How long an undelivered outbox event stays with the relay that read it
/// before another node's relay takes it over.
const RELAY_MIN_IDLE: Duration = Duration::from_secs(30);

/// Background loops of a serving app, stopped when it stops.
struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Expires unpaid orders and finishes half-done checkouts, every `every`
/// (safe on every node at once).
async fn sweep_loop(checkout: Checkout, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = chrono::Utc::now().timestamp_millis();
        match checkout.sweep(now).await {
            Ok(report) if report != crate::checkout::SweepReport::default() => {
                tracing::info!(?report, "checkout sweep");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "checkout sweep failed"),
        }
    }
}

/// Loads the flash sales of every known tenant into both cache levels
/// every `every` (0: never), so a sale opens on warm caches: the default
/// tenant, those named in the configuration (upstream and rate overrides,
/// the demo's extra tenants) and those whose members browsed flash sales in
/// the last hour. One tenant's failing upstream does not stop the others.
async fn prewarm_loop(app: AppState, every: Duration) {
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for tenant in app
            .catalog()
            .products
            .prewarm_tenants(configured_tenants(app.settings()))
        {
            match app
                .catalog()
                .products
                .prewarm(&tenant, &app.upstreams().mall)
                .await
            {
                Ok(products) => tracing::debug!(%tenant, products, "flash sales pre-warmed"),
                Err(err) => tracing::warn!(%tenant, error = %err, "flash-sale pre-warm failed"),
            }
        }
    }
}

/// Every tenant the configuration names.
fn configured_tenants(settings: &Settings) -> Vec<TenantId> {
    let mut tenants = vec![settings.default_tenant.clone()];
    tenants.extend(settings.upstreams.tenants.keys().cloned());
    tenants.extend(
        settings
            .admission
            .tenants
            .keys()
            .filter_map(|t| TenantId::parse(t.clone()).ok()),
    );
    tenants.extend(settings.demo.extra_tenants.iter().cloned());
    tenants
}

/// Delivers outbox events to the order service every `every`.
async fn relay_loop(relay: Relay, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match relay.pass().await {
            Ok(report) if report.failed > 0 => {
                tracing::warn!(?report, "order events left pending");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "outbox relay pass failed"),
        }
    }
}

impl Application {}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

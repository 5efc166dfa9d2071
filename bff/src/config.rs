//! Layered, typed configuration.
//!
//! Layers, later wins: built-in defaults → a TOML file (`--config`) →
//! `BFF_*` environment variables (nested keys with `__`, e.g.
//! `BFF_UPSTREAMS__PRODUCT__BASE_URL`). Unknown keys in any layer are an
//! error, so a typo never silently falls back to a default. Every key is
//! documented here and in `bff/docs/configuration.md`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::domain::TenantId;

/// The signing key of development tokens. It is public (it is in this
/// repository), so a production configuration that uses it is refused.
pub const DEV_JWT_SECRET: &str = "mall-bff-dev-key-do-not-use-in-production";

/// Configuration could not be loaded or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or has unknown / mistyped keys.
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// The values are individually fine but do not make sense together.
    #[error("invalid configuration: {0}")]
    Inconsistent(String),
}

/// Where the BFF runs. Production refuses development conveniences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Local development and demos: dev signing key allowed, demo token
    /// endpoint on, embedded demo upstreams allowed, playground,
    /// introspection and `/metrics` open by default.
    Development,
    /// Real traffic: a real signing key and real upstreams are required.
    Production,
}

/// All settings of the BFF.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `development` or `production`. Unset means development, but only
    /// while nothing real is configured: with a configured upstream base URL
    /// or a Redis URL the mode must be chosen explicitly (see
    /// [`Settings::check`]), so a real deployment never runs with
    /// development conveniences by omission.
    pub environment: Option<Environment>,
    /// Address the HTTP server binds (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Connection limits and timeouts of the HTTP server.
    pub server: ServerSettings,
    /// Tenant of requests that carry no token (public screens).
    pub default_tenant: TenantId,
    /// Member and staff authentication.
    pub auth: AuthSettings,
    /// The upstream services.
    pub upstreams: UpstreamsSettings,
    /// The embedded demo upstreams (used for every upstream without a
    /// `base_url`).
    pub demo: DemoSettings,
    /// GraphQL endpoint limits and behaviour.
    pub graphql: GraphqlSettings,
    /// The two-level cache of reference and catalogue data.
    pub cache: CacheSettings,
    /// Rate limits and the node's concurrency limit.
    pub admission: AdmissionSettings,
    /// Logging.
    pub log: LogSettings,
    /// Redis URL of the shared store (`BFF_REDIS_URL`). Unset: the embedded,
    /// file-backed store in `store.data_dir` (one node only).
    pub redis_url: Option<String>,
    /// The BFF's own state.
    pub store: StoreSettings,
    /// Promotion rules.
    pub rules: RulesSettings,
    /// The `/metrics` endpoint.
    pub metrics: MetricsSettings,
    /// Checkout, payments and the order service.
    pub checkout: CheckoutSettings,
}

/// The signing secret of the `demo` payment provider in development. It is
/// public (it is in this repository), so production refuses it.
pub const DEV_PAYMENT_SECRET: &str = "whsec_mall_bff_dev_do_not_use_in_production";

/// Checkout, payments and the order service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckoutSettings {
    /// How long an unpaid order waits for its payment before it expires.
    pub payment_ttl_secs: u64,
    /// How often the sweeper looks for expired or half-done orders.
    pub sweep_interval_ms: u64,
    /// How often the outbox relay delivers order events.
    pub relay_interval_ms: u64,
    /// Base URL of the order service. Unset: the embedded demo order
    /// service (development only).
    pub order_service_url: Option<Url>,
    /// Signing secret of each payment provider, by provider name (the
    /// `{provider}` of `POST /payments/notify/{provider}`). Empty in
    /// development: the `demo` provider with [`DEV_PAYMENT_SECRET`].
    pub payment_secrets: std::collections::HashMap<String, SecretString>,
    /// How far a notification's timestamp may be from now (replay window).
    pub signature_tolerance_secs: i64,
    /// How long Redis keeps an order once it is final (completed,
    /// cancelled or expired) and nothing is left to do for it; at least a
    /// day (the idempotency records' lifetime), at most ten years.
    pub order_retention_secs: u64,
    /// How long an order event stays in the outbox once the order service
    /// has acknowledged it (for `bff events tail` and audits); events not
    /// yet acknowledged are never removed.
    pub outbox_retention_secs: u64,
}

impl Default for CheckoutSettings {
    fn default() -> Self {
        Self {
            payment_ttl_secs: 15 * 60,
            sweep_interval_ms: 1_000,
            relay_interval_ms: 200,
            order_service_url: None,
            payment_secrets: std::collections::HashMap::new(),
            signature_tolerance_secs: crate::payment::DEFAULT_TOLERANCE_SECS,
            order_retention_secs: 30 * 24 * 3600,
            outbox_retention_secs: 24 * 3600,
        }
    }
}

impl CheckoutSettings {
    /// The provider secrets in effect: the configured ones, or in
    /// development with none configured, `demo` with the public
    /// development secret.
    pub fn effective_secrets(
        &self,
        environment: Environment,
    ) -> std::collections::HashMap<String, SecretString> {
        if self.payment_secrets.is_empty() && environment == Environment::Development {
            std::collections::HashMap::from([(
                "demo".to_owned(),
                SecretString::from(DEV_PAYMENT_SECRET),
            )])
        } else {
            self.payment_secrets.clone()
        }
    }
}

/// Connection limits and timeouts of the HTTP server (HTTP/1.1).
///
/// Every connection costs a file descriptor and buffer memory, so none may
/// be held without doing work: a connection that sends nothing, trickles
/// its request head or body, or sits idle between requests is closed, and
/// past `max_connections` new connections are turned away at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Time a client has to send a whole request head (request line and
    /// headers) once its first byte arrived, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a whole request body once the head
    /// arrived, in milliseconds.
    pub body_read_timeout_ms: u64,
    /// How long a connection may wait for its next request (or, just
    /// accepted, for its first byte) before it is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Most connections open at once; further ones are answered `503` and
    /// closed. Lowered at start to fit the process's file descriptor limit.
    pub max_connections: usize,
    /// Largest request head (request line and headers) accepted, in bytes;
    /// a larger one is answered `431`. At least 8192.
    pub max_header_bytes: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
        }
    }
}

impl ServerSettings {
    /// Time allowed for a request head.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    /// Time allowed for a request body.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
    /// Time a connection may wait for a request.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// Who may read `/metrics`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `/metrics` to anyone. Unset: yes in development, no in
    /// production (there it needs `bearer_token` or an operator token).
    pub public: Option<bool>,
    /// A token a scraper presents as `Authorization: Bearer <token>` to
    /// read `/metrics` (at least 32 bytes). Operator tokens are accepted
    /// too.
    pub bearer_token: Option<SecretString>,
}

/// The BFF's own state store.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Directory of the embedded store's file (embedded mode only).
    pub data_dir: std::path::PathBuf,
    /// Prefix of every Redis key and channel, so several deployments (or
    /// test runs) can share one Redis.
    pub namespace: String,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            data_dir: std::path::PathBuf::from("data"),
            namespace: "bff".to_owned(),
        }
    }
}

/// Promotion rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesSettings {
    /// Rule instances that may run at the same time (the instance pool).
    pub pool_instances: u32,
    /// Failures in a row after which a deployment is quarantined (also: 16
    /// of its last 32 evaluations failed).
    pub quarantine_after: u32,
    /// Wall-clock time all rules of one batch may take together; rules left
    /// when it is spent are skipped (`BUDGET_EXHAUSTED`).
    pub batch_budget_ms: u64,
    /// Publish and activate the example rules for the default tenant when it
    /// has no deployments yet (development only).
    pub demo_deployments: bool,
    /// Serve the rule console at `/console/` (a static page; everything it
    /// does needs a rule-author or operator token).
    pub console: bool,
    /// Threads of the rule evaluation pool, which runs every rule (quotes,
    /// catalogue prices, config checks, uploads, dry runs); never more than
    /// `pool_instances`. 0: the number of CPUs, at least 2.
    pub pool_threads: usize,
    /// Most pool threads one tenant may use at once. 0: all but a quarter
    /// of them (so other tenants always have a thread).
    pub tenant_share: usize,
    /// Most rule jobs waiting on the node; more are refused as
    /// `ENGINE_BUSY`.
    pub queue_limit: usize,
    /// Most rule jobs one tenant may have waiting.
    pub tenant_queue_limit: usize,
    /// Longest a rule job may wait for a thread before it is refused as
    /// `ENGINE_BUSY`.
    pub queue_wait_ms: u64,
    /// Nice value of the rule pool's threads (Linux, 0 to 19). 0: the
    /// request threads' priority. Higher: every rule (quotes' too) gets
    /// only the CPU that serving requests leaves. Rule deadlines count the
    /// rule's own CPU time, so a low priority never counts against a rule.
    pub pool_nice: i32,
    /// A rule job that has run for `pool_demote_after_ms` of CPU drops to
    /// the lowest priority (`SCHED_IDLE`, Linux: only CPU nothing else
    /// wants) and pauses 4 ms after each millisecond it runs while other
    /// tenants have work. Applied only when the process may move a thread
    /// back up again (`CAP_SYS_NICE`, or an `RLIMIT_NICE` that allows
    /// `pool_nice`).
    pub pool_demote_long_jobs: bool,
    /// CPU time after which a running rule job drops to
    /// the lowest priority (`pool_demote_long_jobs`), so ordinary rules' short
    /// jobs keep the CPU before long-running ones.
    pub pool_demote_after_ms: u64,
    /// Component uploads allowed per minute per rule author.
    pub uploads_per_author_per_minute: u32,
    /// Component uploads allowed per minute per tenant.
    pub uploads_per_tenant_per_minute: u32,
}

impl Default for RulesSettings {
    fn default() -> Self {
        Self {
            pool_instances: 64,
            quarantine_after: 5,
            batch_budget_ms: 250,
            demo_deployments: true,
            console: true,
            pool_threads: 0,
            tenant_share: 0,
            queue_limit: 512,
            tenant_queue_limit: 128,
            queue_wait_ms: 2_000,
            pool_nice: 0,
            pool_demote_long_jobs: true,
            pool_demote_after_ms: 20,
            uploads_per_author_per_minute: 30,
            uploads_per_tenant_per_minute: 60,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            environment: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            server: ServerSettings::default(),
            default_tenant: TenantId::parse("demo").expect("literal tenant id is valid"),
            auth: AuthSettings::default(),
            upstreams: UpstreamsSettings::default(),
            demo: DemoSettings::default(),
            graphql: GraphqlSettings::default(),
            cache: CacheSettings::default(),
            admission: AdmissionSettings::default(),
            log: LogSettings::default(),
            redis_url: None,
            store: StoreSettings::default(),
            rules: RulesSettings::default(),
            metrics: MetricsSettings::default(),
            checkout: CheckoutSettings::default(),
        }
    }
}

/// Token verification settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret that signs and verifies tokens. Defaults to the public
    /// development key, which production refuses.
    pub jwt_secret: SecretString,
    /// `iss` claim written into and required of every token.
    pub issuer: String,
    /// Lifetime of tokens printed by `bff token`, in seconds.
    pub token_ttl_secs: u64,
    /// Longest lifetime (`exp` − `iat`, or `exp` − now without `iat`) a
    /// presented token may have, in seconds; a longer-lived token is
    /// refused, so a leaked token cannot stay valid for years.
    pub max_token_lifetime_secs: u64,
    /// Clock skew tolerated when checking `exp` / `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: SecretString::from(DEV_JWT_SECRET),
            issuer: "mall-bff".to_owned(),
            token_ttl_secs: 24 * 3600,
            max_token_lifetime_secs: 7 * 24 * 3600,
            leeway_secs: 30,
        }
    }
}

/// The three upstream services.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamsSettings {
    /// Mall service (malls, stores).
    pub mall: UpstreamSettings,
    /// Member service (members, coupons, points, wallet).
    pub member: UpstreamSettings,
    /// Product service (products, listings, flash sales).
    pub product: UpstreamSettings,
    /// Largest number of idle pooled connections kept per upstream host.
    /// At least the calls in flight to one host at peak: each call beyond
    /// it opens a connection and closes it afterwards (a new TCP handshake
    /// per call, sockets piling up in TIME_WAIT). Idle connections close
    /// after 60 s.
    pub pool_max_idle_per_host: usize,
    /// Time one request (a whole card) may take, in milliseconds: every
    /// upstream call of the request gets at most what is left of it. A
    /// client may ask for less with the `X-Request-Budget-Ms` header, never
    /// for more.
    pub request_budget_ms: u64,
    /// Retries of idempotent reads.
    pub retry: RetrySettings,
    /// Circuit breakers, one per (tenant, upstream).
    pub breaker: BreakerSettings,
    /// Per-tenant upstreams, by tenant id: a tenant's own member (CRM),
    /// mall or product service at its own base URL and timeout. Upstreams
    /// a tenant does not name are the shared ones above.
    pub tenants: std::collections::HashMap<TenantId, TenantUpstreams>,
}

impl UpstreamsSettings {
    /// The most idle upstream connections the process keeps open: the pool
    /// size for each of the three shared services, and for each service a
    /// tenant has its own.
    pub fn idle_connections_kept(&self) -> u64 {
        let hosts = 3 + self
            .tenants
            .values()
            .map(|t| t.iter().count())
            .sum::<usize>();
        (self.pool_max_idle_per_host as u64).saturating_mul(hosts as u64)
    }
}

impl Default for UpstreamsSettings {
    fn default() -> Self {
        Self {
            mall: UpstreamSettings::default(),
            member: UpstreamSettings::default(),
            product: UpstreamSettings::default(),
            pool_max_idle_per_host: 1_024,
            request_budget_ms: 1_000,
            retry: RetrySettings::default(),
            breaker: BreakerSettings::default(),
            tenants: std::collections::HashMap::new(),
        }
    }
}

impl UpstreamsSettings {
    /// The request budget.
    pub fn request_budget(&self) -> Duration {
        Duration::from_millis(self.request_budget_ms)
    }
}

/// A tenant's own upstream services; unnamed ones are the shared ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantUpstreams {
    /// The tenant's mall service.
    pub mall: Option<TenantUpstream>,
    /// The tenant's member (CRM) service.
    pub member: Option<TenantUpstream>,
    /// The tenant's product service.
    pub product: Option<TenantUpstream>,
}

impl TenantUpstreams {
    /// The overridden upstreams with their names, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &TenantUpstream)> {
        [
            ("mall", &self.mall),
            ("member", &self.member),
            ("product", &self.product),
        ]
        .into_iter()
        .filter_map(|(name, u)| u.as_ref().map(|u| (name, u)))
    }
}

/// One tenant's own upstream service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantUpstream {
    /// Base URL of the tenant's service.
    pub base_url: Url,
    /// Time allowed for one call, in milliseconds. Unset: the shared
    /// upstream's `timeout_ms`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Retries of idempotent reads (GETs). Commands (holds, orders) are never
/// retried here: they have their own request keys and recovery.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Most retries of one call (0 turns retries off).
    pub max_retries: u32,
    /// Delay before the first retry, in milliseconds (fractions allowed,
    /// e.g. `0.25`); it doubles with each further retry, with random
    /// jitter. A retry only starts if the request's budget leaves time for
    /// it. Short: the retry budget is what spares a failing upstream; the
    /// delay only spreads retries apart, and a card waits for it. A delay
    /// under 1 ms (below the timer's resolution) yields instead of
    /// sleeping.
    pub min_delay_ms: f64,
    /// Longest delay between two tries, in milliseconds.
    pub max_delay_ms: u64,
    /// Retries allowed as a share of calls, per upstream (the retry
    /// budget), so a failing upstream is not hit much harder than usual.
    pub budget_ratio: f32,
    /// Retries per second always allowed per upstream, whatever the ratio
    /// (so a quiet upstream can still be retried).
    pub budget_min_per_sec: u32,
}

impl RetrySettings {
    /// The delay before the first retry.
    pub fn min_delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.min_delay_ms / 1000.0)
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_retries: 3,
            min_delay_ms: 0.25,
            max_delay_ms: 50,
            budget_ratio: 0.25,
            budget_min_per_sec: 5,
        }
    }
}

/// Circuit breakers: one per (tenant, upstream). A breaker opens when, of
/// the last `window` calls (at least `min_calls`), a share of
/// `failure_ratio` or more failed; while open, calls fail at once with
/// `UPSTREAM_UNAVAILABLE`. After `open_ms` one probe call is let through
/// (half-open): its success closes the breaker, its failure opens it again.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Whether breakers are used.
    pub enabled: bool,
    /// Calls remembered.
    pub window: usize,
    /// Fewest calls in the window before the breaker may open.
    pub min_calls: usize,
    /// Share of failed calls in the window that opens the breaker.
    pub failure_ratio: f64,
    /// How long the breaker stays open before a probe, in milliseconds.
    pub open_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            window: 40,
            min_calls: 20,
            failure_ratio: 0.5,
            open_ms: 5_000,
        }
    }
}

/// One upstream service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Base URL of the service (e.g. `http://mall.internal:8080/api`).
    /// Unset: the embedded demo service is started and used.
    pub base_url: Option<Url>,
    /// Time allowed for one call, connect included, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            base_url: None,
            timeout_ms: 800,
        }
    }
}

impl UpstreamSettings {
    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The embedded demo data set and its fault injection.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoSettings {
    /// Seed of the generated data; the same seed gives the same data.
    pub seed: u64,
    /// Size multiplier: 1 gives 3 malls, 60 stores, 3,000 products and
    /// 1,000 members; 10 gives ten times as many of each.
    pub size: u32,
    /// Faults injected into every demo service.
    pub faults: FaultSettings,
    /// Further tenants served with the demo tenant's data (for trying
    /// several tenants, e.g. a tenant's own upstreams).
    pub extra_tenants: Vec<TenantId>,
}

impl Default for DemoSettings {
    fn default() -> Self {
        Self {
            seed: 42,
            size: 1,
            faults: FaultSettings::default(),
            extra_tenants: Vec::new(),
        }
    }
}

/// Faults a demo service injects into every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Fixed latency added to every response, in milliseconds.
    pub latency_ms: u64,
    /// Extra random latency, uniformly 0..=jitter_ms, in milliseconds.
    pub jitter_ms: u64,
    /// Share of requests answered with HTTP 503 (0.0 ..= 1.0).
    pub error_rate: f64,
    /// Every request is answered with HTTP 503.
    pub down: bool,
}

/// GraphQL endpoint settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlSettings {
    /// Deepest selection nesting accepted.
    pub max_depth: usize,
    /// Largest query complexity accepted (each field counts 1; list
    /// fields count their page size times their children).
    pub max_complexity: usize,
    /// Most aliased fields accepted in one operation.
    pub max_aliases: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Whether schema introspection is served (the playground needs it).
    /// Unset: on in development, off in production; [`Settings::resolve`]
    /// fills it in.
    pub introspection: Option<bool>,
    /// Serve the playground at `/playground/`. Unset: on in development,
    /// off in production.
    pub playground: Option<bool>,
    /// How long a DataLoader waits for more keys before it sends a batch,
    /// in microseconds. See `bff/docs/benchmarks.md` for why this value.
    pub dataloader_delay_us: u64,
    /// Bytes of parsed documents kept for reuse (client apps send the same
    /// few queries over and over), estimated from their text and tokens;
    /// 0 turns the cache off.
    pub document_cache_bytes: u64,
    /// Deepest bracket nesting (`{`, `[`, `(`) anywhere in a document:
    /// bounds selections and argument values alike, checked before the
    /// document is parsed.
    pub max_nesting: usize,
    /// Most lexical tokens in one document, checked before parsing.
    pub max_tokens: usize,
    /// Most directives in one document, checked before parsing.
    pub max_directives: usize,
    /// Most fields an operation or fragment expands to once its fragment
    /// spreads are followed (computed once per fragment, before
    /// validation).
    pub max_fields: usize,
    /// Most operations in one batched request (a JSON array, as Apollo's
    /// `BatchHttpLink` sends); 0 refuses batches.
    pub max_batch: usize,
    /// Serve Apollo's automatic persisted queries.
    pub apq: bool,
    /// How long a registered persisted query is kept, in seconds.
    pub apq_ttl_secs: u64,
    /// Safelist-only mode: the path of an Apollo persisted-query manifest
    /// (`apollo-persisted-query-manifest`, version 1). When set, only its
    /// operations run.
    pub safelist_manifest: Option<std::path::PathBuf>,
}

impl Default for GraphqlSettings {
    fn default() -> Self {
        Self {
            max_depth: 10,
            max_complexity: 2000,
            max_aliases: 30,
            max_body_bytes: 64 * 1024,
            introspection: None,
            playground: None,
            dataloader_delay_us: 0,
            document_cache_bytes: 16 * 1024 * 1024,
            max_nesting: 32,
            max_tokens: 10_000,
            max_directives: 50,
            max_fields: 2_000,
            max_batch: 10,
            apq: true,
            apq_ttl_secs: 7 * 24 * 3600,
            safelist_manifest: None,
        }
    }
}

/// The two-level cache of reference and catalogue data (malls, stores,
/// product details, listings, flash-sale lists): L1 in-process, L2 in the
/// shared store, each kind with its own freshness. Personal data (members,
/// coupons, points) and prices are never cached. See `crate::cache`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Whether the shared store holds the second level (L2); off: each node
    /// caches on its own.
    pub l2: bool,
    /// Most records kept in-process, per kind.
    pub max_entries: u64,
    /// How long a mall record is fresh, in seconds; 0 turns caching of the
    /// kind off.
    pub mall_ttl_secs: u64,
    /// How long a store record is fresh.
    pub store_ttl_secs: u64,
    /// How long a product's details are fresh.
    pub product_ttl_secs: u64,
    /// How long a mall's recommended listing (the card's first page) is
    /// fresh.
    pub listing_ttl_secs: u64,
    /// How long a mall's flash-sale list is fresh.
    pub flash_sale_ttl_secs: u64,
    /// How long an expired record is still kept to be served, marked stale,
    /// when its upstream fails (stale-if-error); 0: never served stale.
    pub stale_secs: u64,
    /// How long one node holds the shared fill lock of a key while it asks
    /// the upstream (other nodes wait for its value meanwhile).
    pub lock_ms: u64,
    /// Longest a node waits for another node's fill of a key before asking
    /// the upstream itself.
    pub lock_wait_ms: u64,
    /// How often flash-sale lists and their products are loaded into both
    /// levels ahead of demand (pre-warm); 0: never.
    pub prewarm_interval_secs: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            l2: true,
            max_entries: 100_000,
            mall_ttl_secs: 300,
            store_ttl_secs: 300,
            product_ttl_secs: 60,
            listing_ttl_secs: 60,
            flash_sale_ttl_secs: 30,
            stale_secs: 600,
            lock_ms: 2_000,
            lock_wait_ms: 500,
            prewarm_interval_secs: 20,
        }
    }
}

/// Admission control: request rates per member and per tenant (shared by
/// every node through the store), and the requests one node serves at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionSettings {
    /// Whether request rates are limited.
    pub enabled: bool,
    /// The rates of every tenant without an override.
    pub limits: RateLimits,
    /// Per-tenant overrides of the rates, by tenant id (a key left out of
    /// an override takes its built-in default).
    pub tenants: std::collections::HashMap<String, RateLimits>,
    /// Most requests one node serves at once; more are shed with 503 and
    /// `Retry-After` rather than queued (0: no limit).
    pub max_concurrent: usize,
    /// The `Retry-After` of a shed request, in seconds.
    pub shed_retry_after_secs: u64,
}

/// Sustained rates and bursts (generic cell rate algorithm: a burst of
/// requests at once, then one per `1 / rate`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Requests per second one member may sustain (0: no member limit).
    pub member_per_sec: f64,
    /// Requests one member may send at once.
    pub member_burst: u32,
    /// Requests per second one tenant may sustain over all its members and
    /// anonymous visitors (0: no tenant limit).
    pub tenant_per_sec: f64,
    /// Requests one tenant may send at once.
    pub tenant_burst: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            member_per_sec: 20.0,
            member_burst: 40,
            tenant_per_sec: 5_000.0,
            tenant_burst: 10_000,
        }
    }
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            limits: RateLimits::default(),
            tenants: std::collections::HashMap::new(),
            max_concurrent: 1_024,
            shed_retry_after_secs: 1,
        }
    }
}

impl AdmissionSettings {
    /// The rates of `tenant`: its override, else the defaults.
    pub fn limits_of(&self, tenant: &str) -> RateLimits {
        self.tenants.get(tenant).copied().unwrap_or(self.limits)
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `tracing` filter directive (overridden by `RUST_LOG`).
    pub filter: String,
    /// `pretty` for people, `json` for log shippers.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info".to_owned(),
            format: LogFormat::Pretty,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl Settings {
    /// Loads defaults, then `file` (if given; it must exist), then `BFF_*`
    /// environment variables, and checks the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("BFF_").split("__"));
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.check()?;
        Ok(settings)
    }

    /// The mode the BFF runs in: the configured one, else development
    /// ([`Settings::check`] refuses an unset mode once anything real is
    /// configured).
    pub fn environment(&self) -> Environment {
        self.environment.unwrap_or(Environment::Development)
    }

    /// Whether this is a production node.
    pub fn is_production(&self) -> bool {
        self.environment() == Environment::Production
    }

    /// Fills in the settings whose default depends on the environment
    /// (playground, introspection, public `/metrics`): on in development,
    /// off in production, unless configured.
    pub fn resolve(&mut self) {
        let development = !self.is_production();
        self.graphql.playground.get_or_insert(development);
        self.graphql.introspection.get_or_insert(development);
        self.metrics.public.get_or_insert(development);
    }

    /// Whether the playground is served.
    pub fn playground_enabled(&self) -> bool {
        self.graphql.playground.unwrap_or(!self.is_production())
    }

    /// Whether anyone may read `/metrics` without a token.
    pub fn metrics_public(&self) -> bool {
        self.metrics.public.unwrap_or(!self.is_production())
    }

    /// Whether `/dev/token` may mint tokens: only in development, and only
    /// while the key is the public development key (such tokens prove
    /// nothing, so handing them out exposes nothing).
    pub fn dev_tokens_allowed(&self) -> bool {
        self.environment() == Environment::Development
            && self.auth.jwt_secret.expose_secret() == DEV_JWT_SECRET
    }

    /// What is configured that only a real deployment has: upstream base
    /// URLs or a shared store.
    fn real_services(&self) -> Option<String> {
        let mut real: Vec<String> = self
            .upstreams
            .iter()
            .into_iter()
            .filter(|(_, u)| u.base_url.is_some())
            .map(|(name, _)| format!("upstreams.{name}.base_url"))
            .collect();
        // A tenant's own services are real ones too.
        let mut tenants: Vec<String> = self
            .upstreams
            .tenants
            .iter()
            .flat_map(|(tenant, own)| {
                own.iter()
                    .map(move |(name, _)| format!("upstreams.tenants.{tenant}.{name}.base_url"))
            })
            .collect();
        tenants.sort();
        real.extend(tenants);
        if self.redis_url.is_some() {
            real.push("redis_url".to_owned());
        }
        (!real.is_empty()).then(|| real.join(", "))
    }

    /// Rejects combinations that cannot work.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.environment.is_none()
            && let Some(real) = self.real_services()
        {
            return Err(ConfigError::Inconsistent(format!(
                "environment is not set, but {real} is configured: set \
                 environment = \"production\" (BFF_ENVIRONMENT=production) for \
                 real traffic, or \"development\" to develop against these services"
            )));
        }
        if self.is_production() {
            if self.auth.jwt_secret.expose_secret() == DEV_JWT_SECRET {
                return Err(ConfigError::Inconsistent(
                    "auth.jwt_secret must be set to a private key in production \
                     (the development key is public)"
                        .into(),
                ));
            }
            for (name, upstream) in self.upstreams.iter() {
                if upstream.base_url.is_none() {
                    return Err(ConfigError::Inconsistent(format!(
                        "upstreams.{name}.base_url is required in production \
                         (demo upstreams are for development)"
                    )));
                }
            }
            if self.checkout.order_service_url.is_none() {
                return Err(ConfigError::Inconsistent(
                    "checkout.order_service_url is required in production \
                     (the demo order service is for development)"
                        .into(),
                ));
            }
            if self
                .checkout
                .payment_secrets
                .values()
                .any(|s| s.expose_secret() == DEV_PAYMENT_SECRET)
            {
                return Err(ConfigError::Inconsistent(
                    "checkout.payment_secrets must not use the public development secret \
                     in production"
                        .into(),
                ));
            }
        }
        if self.checkout.payment_ttl_secs == 0
            || self.checkout.sweep_interval_ms == 0
            || self.checkout.relay_interval_ms == 0
        {
            return Err(ConfigError::Inconsistent(
                "checkout.payment_ttl_secs, sweep_interval_ms and relay_interval_ms \
                 must be positive"
                    .into(),
            ));
        }
        let rules = &self.rules;
        if !(0..=19).contains(&rules.pool_nice) {
            return Err(ConfigError::Inconsistent(
                "rules.pool_nice must be 0 to 19".into(),
            ));
        }
        let admission = &self.admission;
        for (who, limits) in std::iter::once(("admission.limits".to_owned(), &admission.limits))
            .chain(
                admission
                    .tenants
                    .iter()
                    .map(|(t, l)| (format!("admission.tenants.{t}"), l)),
            )
        {
            let rate_ok = |rate: f64, burst: u32| {
                rate.is_finite() && (0.0..=1e6).contains(&rate) && (rate == 0.0 || burst >= 1)
            };
            if !rate_ok(limits.member_per_sec, limits.member_burst)
                || !rate_ok(limits.tenant_per_sec, limits.tenant_burst)
            {
                return Err(ConfigError::Inconsistent(format!(
                    "{who}: rates must be between 0 and 1000000 per second, \
                     with a burst of at least 1 when the rate is positive"
                )));
            }
        }
        if !(24 * 3600..=3650 * 24 * 3600).contains(&self.checkout.order_retention_secs) {
            return Err(ConfigError::Inconsistent(
                "checkout.order_retention_secs must be between 86400 (a day) and 315360000 \
                 (ten years)"
                    .into(),
            ));
        }
        if self.auth.jwt_secret.expose_secret().len() < 32 {
            return Err(ConfigError::Inconsistent(
                "auth.jwt_secret must be at least 32 bytes".into(),
            ));
        }
        if let Some(token) = &self.metrics.bearer_token
            && token.expose_secret().len() < 32
        {
            return Err(ConfigError::Inconsistent(
                "metrics.bearer_token must be at least 32 bytes".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.demo.faults.error_rate) {
            return Err(ConfigError::Inconsistent(
                "demo.faults.error_rate must be between 0.0 and 1.0".into(),
            ));
        }
        if self.auth.token_ttl_secs > 366 * 24 * 3600 {
            return Err(ConfigError::Inconsistent(
                "auth.token_ttl_secs must be at most a year".into(),
            ));
        }
        if self.auth.token_ttl_secs > self.auth.max_token_lifetime_secs {
            return Err(ConfigError::Inconsistent(
                "auth.token_ttl_secs must not exceed auth.max_token_lifetime_secs".into(),
            ));
        }
        if self.demo.size == 0 {
            return Err(ConfigError::Inconsistent(
                "demo.size must be at least 1".into(),
            ));
        }
        for (name, upstream) in self.upstreams.iter() {
            if upstream.timeout_ms == 0 {
                return Err(ConfigError::Inconsistent(format!(
                    "upstreams.{name}.timeout_ms must be positive"
                )));
            }
        }
        self.check_resilience()?;
        let server = &self.server;
        for (key, value) in [
            ("header_read_timeout_ms", server.header_read_timeout_ms),
            ("body_read_timeout_ms", server.body_read_timeout_ms),
            ("idle_timeout_ms", server.idle_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Inconsistent(format!(
                    "server.{key} must be positive"
                )));
            }
        }
        if !(1..=1_000_000).contains(&server.max_connections) {
            return Err(ConfigError::Inconsistent(
                "server.max_connections must be between 1 and 1000000".into(),
            ));
        }
        // hyper's read buffer cannot be smaller than this.
        if server.max_header_bytes < 8192 {
            return Err(ConfigError::Inconsistent(
                "server.max_header_bytes must be at least 8192".into(),
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// Request budget, retries, breakers and tenant upstreams.
    fn check_resilience(&self) -> Result<(), ConfigError> {
        let u = &self.upstreams;
        let bad = |msg: String| Err(ConfigError::Inconsistent(msg));
        if !(1..=600_000).contains(&u.request_budget_ms) {
            return bad("upstreams.request_budget_ms must be between 1 and 600000".into());
        }
        if u.retry.max_retries > 10 {
            return bad("upstreams.retry.max_retries must be at most 10".into());
        }
        if !(u.retry.min_delay_ms.is_finite() && u.retry.min_delay_ms > 0.0)
            || (u.retry.max_delay_ms as f64) < u.retry.min_delay_ms
        {
            return bad(
                "upstreams.retry.min_delay_ms must be positive and at most max_delay_ms".into(),
            );
        }
        if !(0.0..=1.0).contains(&u.retry.budget_ratio) {
            return bad("upstreams.retry.budget_ratio must be between 0.0 and 1.0".into());
        }
        let b = &u.breaker;
        if b.window == 0 || b.min_calls == 0 || b.min_calls > b.window || b.window > 10_000 {
            return bad(
                "upstreams.breaker.window and min_calls must be positive, min_calls at most \
                 window, window at most 10000"
                    .into(),
            );
        }
        if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
            return bad("upstreams.breaker.failure_ratio must be in (0.0, 1.0]".into());
        }
        if b.open_ms == 0 {
            return bad("upstreams.breaker.open_ms must be positive".into());
        }
        for (tenant, overrides) in &u.tenants {
            for (name, upstream) in overrides.iter() {
                if upstream.timeout_ms == Some(0) {
                    return bad(format!(
                        "upstreams.tenants.{tenant}.{name}.timeout_ms must be positive"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl UpstreamsSettings {
    /// The upstreams with their names, in a fixed order.
    pub fn iter(&self) -> [(&'static str, &UpstreamSettings); 3] {
        [
            ("mall", &self.mall),
            ("member", &self.member),
            ("product", &self.product),
        ]
    }
}

#[cfg(test)]
// figment's `Jail` closures must return its (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn idle_upstream_connections_count_every_service_a_tenant_has_its_own() {
        let mut upstreams = UpstreamsSettings {
            pool_max_idle_per_host: 100,
            ..UpstreamsSettings::default()
        };
        assert_eq!(upstreams.idle_connections_kept(), 300);
        let own = TenantUpstream {
            base_url: "http://crm.example/".parse().unwrap(),
            timeout_ms: None,
        };
        upstreams.tenants.insert(
            TenantId::parse("beta").unwrap(),
            TenantUpstreams {
                member: Some(own.clone()),
                product: Some(own),
                mall: None,
            },
        );
        assert_eq!(upstreams.idle_connections_kept(), 500);
    }

    #[test]
    fn file_then_env_layers_override_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "bff.toml",
                r#"
                listen = "127.0.0.1:9999"
                [upstreams.product]
                timeout_ms = 250
                "#,
            )?;
            jail.set_env("BFF_UPSTREAMS__PRODUCT__TIMEOUT_MS", "300");
            let settings =
                Settings::load(Some(Path::new("bff.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(settings.listen.port(), 9999);
            assert_eq!(settings.upstreams.product.timeout_ms, 300);
            assert_eq!(settings.upstreams.mall.timeout_ms, 800);
            Ok(())
        });
    }

    #[test]
    fn the_first_retry_delay_takes_whole_and_fractional_milliseconds() {
        Jail::expect_with(|jail| {
            jail.create_file("bff.toml", "[upstreams.retry]\nmin_delay_ms = 2\n")?;
            let settings =
                Settings::load(Some(Path::new("bff.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                settings.upstreams.retry.min_delay(),
                std::time::Duration::from_millis(2)
            );
            jail.set_env("BFF_UPSTREAMS__RETRY__MIN_DELAY_MS", "0.5");
            let settings =
                Settings::load(Some(Path::new("bff.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                settings.upstreams.retry.min_delay(),
                std::time::Duration::from_micros(500)
            );
            for refused in ["0", "-1", "nan", "51"] {
                jail.set_env("BFF_UPSTREAMS__RETRY__MIN_DELAY_MS", refused);
                let err = Settings::load(Some(Path::new("bff.toml"))).unwrap_err();
                let err = err.to_string().to_lowercase();
                assert!(err.contains("min_delay_ms"), "{refused}: {err}");
            }
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_an_error_in_file_and_env() {
        Jail::expect_with(|jail| {
            jail.create_file("bff.toml", "[graphql]\nmax_dept = 3\n")?;
            let err = Settings::load(Some(Path::new("bff.toml"))).unwrap_err();
            assert!(err.to_string().contains("max_dept"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("BFF_LISTENN", "127.0.0.1:1");
            let err = Settings::load(None).unwrap_err();
            assert!(err.to_string().contains("listenn"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        Jail::expect_with(|_jail| {
            assert!(Settings::load(Some(Path::new("nope.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn production_refuses_the_dev_key_and_demo_upstreams() {
        Jail::expect_with(|jail| {
            jail.set_env("BFF_ENVIRONMENT", "production");
            let err = Settings::load(None).unwrap_err();
            assert!(err.to_string().contains("jwt_secret"), "{err}");
            jail.set_env(
                "BFF_AUTH__JWT_SECRET",
                "a-real-private-key-of-at-least-32-bytes!",
            );
            let err = Settings::load(None).unwrap_err();
            assert!(err.to_string().contains("base_url"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn real_upstreams_or_redis_without_an_explicit_environment_are_refused() {
        Jail::expect_with(|jail| {
            // Nothing real configured: development, as `bff serve` runs it.
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.environment(), Environment::Development);
            assert!(settings.dev_tokens_allowed());

            jail.set_env("BFF_UPSTREAMS__MALL__BASE_URL", "http://mall.internal/");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("environment is not set"), "{err}");
            assert!(err.contains("upstreams.mall.base_url"), "{err}");

            jail.set_env("BFF_ENVIRONMENT", "development");
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.environment(), Environment::Development);
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("BFF_REDIS_URL", "redis://10.0.0.5:6379");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("redis_url"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            // Only one tenant's own CRM: a real service all the same.
            jail.create_file(
                "bff.toml",
                "[upstreams.tenants.acme.member]\nbase_url = \"http://crm.acme.internal/\"\n",
            )?;
            let err = Settings::load(Some(Path::new("bff.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("environment is not set"), "{err}");
            assert!(
                err.contains("upstreams.tenants.acme.member.base_url"),
                "{err}"
            );
            Ok(())
        });
    }

    fn production(jail: &mut Jail) {
        jail.set_env("BFF_ENVIRONMENT", "production");
        jail.set_env(
            "BFF_AUTH__JWT_SECRET",
            "a-real-private-key-of-at-least-32-bytes!",
        );
        for service in ["MALL", "MEMBER", "PRODUCT"] {
            jail.set_env(
                format!("BFF_UPSTREAMS__{service}__BASE_URL"),
                "http://svc.internal/",
            );
        }
        jail.set_env("BFF_CHECKOUT__ORDER_SERVICE_URL", "http://orders.internal/");
    }

    #[test]
    fn production_closes_playground_introspection_and_metrics_unless_configured() {
        Jail::expect_with(|jail| {
            production(jail);
            let mut settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert!(settings.is_production());
            assert!(!settings.dev_tokens_allowed());
            assert!(!settings.playground_enabled());
            assert!(!settings.metrics_public());
            settings.resolve();
            assert_eq!(settings.graphql.introspection, Some(false));
            assert_eq!(settings.graphql.playground, Some(false));

            jail.set_env("BFF_GRAPHQL__INTROSPECTION", "true");
            jail.set_env("BFF_METRICS__PUBLIC", "true");
            let mut settings = Settings::load(None).map_err(|e| e.to_string())?;
            settings.resolve();
            assert_eq!(settings.graphql.introspection, Some(true));
            assert!(settings.metrics_public());
            Ok(())
        });
        let mut development = Settings::default();
        development.resolve();
        assert_eq!(development.graphql.introspection, Some(true));
        assert!(development.playground_enabled() && development.metrics_public());
    }

    #[test]
    fn server_limits_must_be_usable() {
        Jail::expect_with(|jail| {
            jail.set_env("BFF_SERVER__IDLE_TIMEOUT_MS", "0");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("server.idle_timeout_ms"), "{err}");
            jail.set_env("BFF_SERVER__IDLE_TIMEOUT_MS", "1000");
            jail.set_env("BFF_SERVER__MAX_HEADER_BYTES", "1024");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("server.max_header_bytes"), "{err}");
            jail.set_env("BFF_SERVER__MAX_HEADER_BYTES", "16384");
            jail.set_env("BFF_METRICS__BEARER_TOKEN", "short");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.contains("metrics.bearer_token"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn order_retention_is_at_least_a_day() {
        assert_eq!(Settings::default().checkout.order_retention_secs, 2_592_000);
        Jail::expect_with(|jail| {
            jail.set_env("BFF_CHECKOUT__ORDER_RETENTION_SECS", "3600");
            let err = Settings::load(None).unwrap_err();
            assert!(err.to_string().contains("order_retention_secs"), "{err}");
            jail.set_env("BFF_CHECKOUT__ORDER_RETENTION_SECS", "86400");
            assert_eq!(
                Settings::load(None).unwrap().checkout.order_retention_secs,
                86_400
            );
            Ok(())
        });
    }

    #[test]
    fn payment_secrets_default_to_the_demo_provider_in_development_only() {
        let settings = Settings::default();
        let dev = settings
            .checkout
            .effective_secrets(Environment::Development);
        assert_eq!(
            dev.get("demo").map(|s| s.expose_secret().to_owned()),
            Some(DEV_PAYMENT_SECRET.to_owned())
        );
        assert!(
            settings
                .checkout
                .effective_secrets(Environment::Production)
                .is_empty()
        );
        assert_eq!(settings.checkout.payment_ttl_secs, 15 * 60);
        Jail::expect_with(|jail| {
            jail.set_env("BFF_ENVIRONMENT", "production");
            jail.set_env(
                "BFF_AUTH__JWT_SECRET",
                "a-real-private-key-of-at-least-32-bytes!",
            );
            for service in ["MALL", "MEMBER", "PRODUCT"] {
                jail.set_env(
                    format!("BFF_UPSTREAMS__{service}__BASE_URL"),
                    "http://upstream.internal/",
                );
            }
            let err = Settings::load(None).unwrap_err();
            assert!(err.to_string().contains("order_service_url"), "{err}");
            jail.set_env("BFF_CHECKOUT__ORDER_SERVICE_URL", "http://orders.internal/");
            jail.set_env("BFF_CHECKOUT__PAYMENT_SECRETS__DEMO", DEV_PAYMENT_SECRET);
            let err = Settings::load(None).unwrap_err();
            assert!(err.to_string().contains("payment_secrets"), "{err}");
            jail.set_env("BFF_CHECKOUT__PAYMENT_SECRETS__DEMO", "whsec_private");
            let settings = Settings::load(None).unwrap();
            assert!(settings.checkout.payment_secrets.contains_key("demo"));
            Ok(())
        });
    }

    #[test]
    fn budget_retries_breakers_and_tenant_upstreams_load_and_are_checked() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "bff.toml",
                r#"
                environment = "development"
                [upstreams]
                request_budget_ms = 600
                [upstreams.retry]
                max_retries = 2
                [upstreams.breaker]
                open_ms = 2000
                [upstreams.tenants.acme.member]
                base_url = "http://crm.acme.internal/api/"
                timeout_ms = 300
                "#,
            )?;
            let settings =
                Settings::load(Some(Path::new("bff.toml"))).map_err(|e| e.to_string())?;
            let u = &settings.upstreams;
            assert_eq!(u.request_budget(), Duration::from_millis(600));
            assert_eq!(u.retry.max_retries, 2);
            assert_eq!(u.breaker.open_ms, 2000);
            let acme = &u.tenants[&TenantId::parse("acme").unwrap()];
            let (name, member) = acme.iter().next().unwrap();
            assert_eq!(name, "member");
            assert_eq!(member.timeout_ms, Some(300));
            assert!(acme.mall.is_none());

            jail.set_env("BFF_UPSTREAMS__BREAKER__MIN_CALLS", "100");
            let err = Settings::load(Some(Path::new("bff.toml"))).unwrap_err();
            assert!(err.to_string().contains("min_calls"), "{err}");
            jail.set_env("BFF_UPSTREAMS__BREAKER__MIN_CALLS", "10");
            jail.set_env("BFF_UPSTREAMS__RETRY__BUDGET_RATIO", "1.5");
            let err = Settings::load(Some(Path::new("bff.toml"))).unwrap_err();
            assert!(err.to_string().contains("budget_ratio"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file(
                "bff.toml",
                "[upstreams.tenants.acme.crm]\nbase_url = \"http://x/\"\n",
            )?;
            let err = Settings::load(Some(Path::new("bff.toml"))).unwrap_err();
            assert!(err.to_string().contains("crm"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_secret_never_appears_in_debug_output() {
        let settings = Settings::default();
        assert!(!format!("{settings:?}").contains(DEV_JWT_SECRET));
    }
}

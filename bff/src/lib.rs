//! Mall BFF: a GraphQL backend-for-frontend for shopping-mall marketing
//! apps.
//!
//! Client apps ask one GraphQL endpoint for a whole screen; the BFF fans
//! out concurrently to the mall, member and product services and answers
//! in one round trip.
//!
//! Modules, one capability each:
//!
//! * [`config`] — layered settings (defaults → TOML → `BFF_*` env).
//! * [`telemetry`] — logging / tracing setup.
//! * [`startup`] — builds the app, binds, serves, shuts down.
//! * [`error`] — the stable error codes clients switch on.
//! * [`domain`] — ids and money, parsed once at the edge.
//! * [`auth`] — bearer tokens: tenant, member, role.
//! * [`graphql`] — schema assembly, request context, limits, `/graphql`.
//! * [`mall`], [`member`], [`product`] — each capability's types, queries
//!   and DataLoaders.
//! * [`pricing`] — promotion rules as sandboxed WebAssembly components:
//!   the host, the referee, the registry, and the quoter that prices a
//!   cart for both `quote` and checkout.
//! * [`cache`] — the two-level cache (in-process + shared store) of
//!   reference and catalogue data: single flight, stale-if-error,
//!   invalidation on every node.
//! * [`store`] — the BFF's own state: embedded file or Redis.
//! * [`checkout`] — one-tap checkout: orders, stock reservation, holds at
//!   the member service, expiry and recovery.
//! * [`payment`] — signed payment notifications from providers.
//! * [`outbox`] — delivers order events to the order service.
//! * [`home`] — the home card: a whole screen in one round trip.
//! * [`upstream`] — one client per upstream service (anti-corruption
//!   layer), each call under the request's deadline, retried within a
//!   retry budget, behind a circuit breaker per (tenant, upstream).
//! * [`http`] — playground, health, readiness, operator status, metrics,
//!   cache invalidation; admission (rate and concurrency limits); the HTTP
//!   server and its connection limits.
//! * [`metrics`] — the instance's Prometheus registry.
//! * [`demo`] — demo upstream services and their generated data set.

pub mod auth;
pub mod cache;
pub mod checkout;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod home;
pub mod http;
pub mod mall;
pub mod member;
pub mod metrics;
pub mod outbox;
pub mod payment;
pub mod pricing;
pub mod product;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod upstream;

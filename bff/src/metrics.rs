//! Prometheus metrics of one BFF instance, served at `/metrics`.
//!
//! The registry belongs to the application (not a process global) so that
//! several instances in one process — as in the test suite — count
//! separately.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of one upstream call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `mall`, `member` or `product`.
    pub upstream: &'static str,
    /// The endpoint, e.g. `stores.batch`.
    pub endpoint: &'static str,
    /// `ok`, `not_found`, `rejected`, `error`, `timeout` or `deadline`
    /// (not sent: the request's budget was spent).
    pub outcome: &'static str,
}

/// Labels of an upstream latency observation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// `mall`, `member` or `product`.
    pub upstream: &'static str,
    /// The endpoint, e.g. `stores.batch`.
    pub endpoint: &'static str,
}

/// Labels of a GraphQL request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `ok` when the response has no errors, else `error`.
    pub outcome: &'static str,
}

/// Labels of a cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// The kind of record: `mall`, `store`, `product`, `listing`,
    /// `flash_sale`.
    pub kind: &'static str,
    /// `l1` (in-process) or `l2` (the shared store).
    pub level: &'static str,
    /// `hit`, `miss`, or `stale` (an expired record served because the
    /// upstream failed).
    pub outcome: &'static str,
}

/// Labels of an admission decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `admitted`, `rate_limited`, `shed` (the node was at its concurrency
    /// limit) or `store_error` (rates could not be checked; admitted).
    pub outcome: &'static str,
}

/// The metrics of one BFF instance. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    upstream_calls: Family<CallLabels, Counter>,
    upstream_seconds: Family<EndpointLabels, Histogram>,
    graphql_requests: Family<RequestLabels, Counter>,
    rule_evaluations: Family<RuleLabels, Counter>,
    rule_fuel: Histogram,
    rule_queue_depth: Gauge,
    rule_pool_refused: Family<PoolLabels, Counter>,
    rule_pool_wait: Family<PoolLabels, Histogram>,
    rule_pool_run: Family<PoolLabels, Histogram>,
    cache_lookups: Family<CacheLabels, Counter>,
    admission: Family<AdmissionLabels, Counter>,
}

/// Labels of work in the rule evaluation pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The tenant the work is for.
    pub tenant: String,
    /// `price` (catalogue prices, quotes) or `admin` (uploads, config
    /// checks, dry runs).
    pub work: &'static str,
}

/// Labels of a rule evaluation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// `ok` or the failure code (e.g. `OUT_OF_FUEL`).
    pub outcome: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bff");
        let upstream_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "upstream_calls",
            "Calls made to upstream services, by endpoint and outcome",
            upstream_calls.clone(),
        );
        let upstream_seconds = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        });
        registry.register(
            "upstream_call_seconds",
            "Latency of upstream calls",
            upstream_seconds.clone(),
        );
        let graphql_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "graphql_requests",
            "GraphQL requests served, by outcome",
            graphql_requests.clone(),
        );
        let rule_evaluations = Family::<RuleLabels, Counter>::default();
        registry.register(
            "rule_evaluations",
            "Promotion rule evaluations, by outcome (ok or the failure code)",
            rule_evaluations.clone(),
        );
        let rule_fuel = Histogram::new([1e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 1e8]);
        registry.register(
            "rule_fuel",
            "Fuel used per promotion rule evaluation",
            rule_fuel.clone(),
        );
        let rule_queue_depth = Gauge::default();
        registry.register(
            "rule_queue_depth",
            "Rule work waiting for a thread of the evaluation pool",
            rule_queue_depth.clone(),
        );
        let rule_pool_refused = Family::<PoolLabels, Counter>::default();
        registry.register(
            "rule_pool_refused",
            "Rule work refused because the queue was full or it waited too long, by tenant",
            rule_pool_refused.clone(),
        );
        let seconds = || {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        };
        let rule_pool_wait = Family::<PoolLabels, Histogram>::new_with_constructor(seconds);
        registry.register(
            "rule_pool_wait_seconds",
            "Time rule work waited for a thread of the evaluation pool, by tenant",
            rule_pool_wait.clone(),
        );
        let rule_pool_run = Family::<PoolLabels, Histogram>::new_with_constructor(seconds);
        registry.register(
            "rule_pool_run_seconds",
            "Time rule work ran on a thread of the evaluation pool, by tenant",
            rule_pool_run.clone(),
        );
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Cache lookups of reference and catalogue data, by kind, level and outcome",
            cache_lookups.clone(),
        );
        let admission = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission",
            "Admission decisions on API requests, by outcome",
            admission.clone(),
        );
        Self {
            cache_lookups,
            admission,
            registry: Arc::new(Mutex::new(registry)),
            rule_queue_depth,
            rule_pool_refused,
            rule_pool_wait,
            rule_pool_run,
            upstream_calls,
            upstream_seconds,
            graphql_requests,
            rule_evaluations,
            rule_fuel,
        }
    }

    /// Records one upstream call.
    pub fn upstream_call(
        &self,
        upstream: &'static str,
        endpoint: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        self.upstream_calls
            .get_or_create(&CallLabels {
                upstream,
                endpoint,
                outcome,
            })
            .inc();
        self.upstream_seconds
            .get_or_create(&EndpointLabels { upstream, endpoint })
            .observe(took.as_secs_f64());
    }

    /// Calls made so far to one upstream endpoint, whatever their outcome.
    pub fn upstream_calls(&self, upstream: &str, endpoint: &str) -> u64 {
        ["ok", "not_found", "rejected", "error", "timeout"]
            .iter()
            .map(|outcome| {
                // `get_or_create` would register an empty series; reading
                // the family's current value this way does not matter for
                // exposition since zero counters are harmless.
                self.upstream_calls
                    .get_or_create(&CallLabels {
                        upstream: leak_known(upstream),
                        endpoint: leak_known(endpoint),
                        outcome,
                    })
                    .get()
            })
            .sum()
    }

    /// Records one rule evaluation.
    pub fn rule_evaluation(&self, outcome: &'static str, fuel: u64) {
        self.rule_evaluations
            .get_or_create(&RuleLabels { outcome })
            .inc();
        self.rule_fuel.observe(fuel as f64);
    }

    /// Sets the number of jobs waiting in the rule evaluation pool.
    pub fn rule_queue_depth(&self, depth: usize) {
        self.rule_queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Counts rule work refused by the evaluation pool.
    pub fn rule_pool_refused(&self, tenant: &str, work: &'static str) {
        self.rule_pool_refused
            .get_or_create(&PoolLabels {
                tenant: tenant.to_owned(),
                work,
            })
            .inc();
    }

    /// Records how long rule work waited for a pool thread.
    pub fn rule_pool_wait(&self, tenant: &str, work: &'static str, waited: Duration) {
        self.rule_pool_wait
            .get_or_create(&PoolLabels {
                tenant: tenant.to_owned(),
                work,
            })
            .observe(waited.as_secs_f64());
    }

    /// Records how long rule work ran on a pool thread.
    pub fn rule_pool_run(&self, tenant: &str, work: &'static str, ran: Duration) {
        self.rule_pool_run
            .get_or_create(&PoolLabels {
                tenant: tenant.to_owned(),
                work,
            })
            .observe(ran.as_secs_f64());
    }

    /// Counts cache lookups.
    pub fn cache_lookup(
        &self,
        kind: &'static str,
        level: &'static str,
        outcome: &'static str,
        n: u64,
    ) {
        if n > 0 {
            self.cache_lookups
                .get_or_create(&CacheLabels {
                    kind,
                    level,
                    outcome,
                })
                .inc_by(n);
        }
    }

    /// Cache lookups so far of one kind, level and outcome.
    pub fn cache_lookups(
        &self,
        kind: &'static str,
        level: &'static str,
        outcome: &'static str,
    ) -> u64 {
        self.cache_lookups
            .get_or_create(&CacheLabels {
                kind,
                level,
                outcome,
            })
            .get()
    }

    /// Counts one admission decision.
    pub fn admission(&self, outcome: &'static str) {
        self.admission
            .get_or_create(&AdmissionLabels { outcome })
            .inc();
    }

    /// Admission decisions so far with `outcome`.
    pub fn admissions(&self, outcome: &'static str) -> u64 {
        self.admission
            .get_or_create(&AdmissionLabels { outcome })
            .get()
    }

    /// Records one GraphQL response.
    pub fn graphql_request(&self, ok: bool) {
        self.graphql_requests
            .get_or_create(&RequestLabels {
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Registers a metric that another module keeps (it updates its own
    /// handle; this registry only encodes it).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// Label values are `&'static str` (no allocation per call on the hot
/// path); lookups by a borrowed name map it back to the known constant.
fn leak_known(name: &str) -> &'static str {
    crate::upstream::KNOWN_LABELS
        .iter()
        .copied()
        .find(|known| *known == name)
        .unwrap_or("unknown")
}

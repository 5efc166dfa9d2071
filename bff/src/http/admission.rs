//! Admission control of API requests: request rates per member and per
//! tenant, and how many requests the node serves at once.
//!
//! * **Rates** (generic cell rate algorithm): each request counts against
//!   its member's rate (members only) and its tenant's rate (everyone, the
//!   anonymous visitors of the tenant included), in one atomic store call —
//!   one Redis script when the store is Redis, so the limits hold across
//!   every node; in-process (`governor`) with the embedded store. A refused
//!   request gets HTTP 429, `Retry-After` and `RATE_LIMITED`. Rates are
//!   configured under `admission.*`, per tenant overridable. If the store
//!   cannot be asked, the request is admitted (and counted as
//!   `store_error`): the rate limit protects the read path, it must not
//!   take it down.
//! * **Concurrency**: past `admission.max_concurrent` requests in flight,
//!   the node sheds new ones at once with 503, `Retry-After` and
//!   `OVERLOADED` instead of queueing them without bound (a queue would
//!   only make every request late).
//!
//! Health, readiness and metrics are outside both, so an overloaded node
//! still answers its probes and its scraper.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::auth::Principal;
use crate::config::AdmissionSettings;
use crate::error::code;
use crate::metrics::Metrics;
use crate::startup::AppState;
use crate::store::{RateKey, SharedStore};

/// The node's admission control. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    store: SharedStore,
    settings: Arc<AdmissionSettings>,
    metrics: Metrics,
    /// `None`: no concurrency limit.
    slots: Option<Arc<Semaphore>>,
    /// API requests being served now (a request whose client went away
    /// stops counting at once: its work is dropped with it).
    in_flight: Gauge,
}

/// Counts one request in flight until dropped, however its future ends
/// (answered, or dropped because the client went away).
struct InFlight(Gauge);

impl InFlight {
    fn start(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").finish_non_exhaustive()
    }
}

/// A request refused by a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// When the request would be admitted.
    pub retry_after: Duration,
}

impl Admission {
    /// Admission with `settings`, rates kept in `store`.
    pub fn new(settings: &AdmissionSettings, store: SharedStore, metrics: Metrics) -> Self {
        let in_flight = Gauge::default();
        metrics.register(
            "api_requests_in_flight",
            "API requests (GraphQL, rule uploads, cache invalidation) being served now",
            in_flight.clone(),
        );
        Self {
            in_flight,
            store,
            slots: (settings.max_concurrent > 0)
                .then(|| Arc::new(Semaphore::new(settings.max_concurrent))),
            settings: Arc::new(settings.clone()),
            metrics,
        }
    }

    /// The rates `principal`'s request counts against, most specific
    /// first.
    fn rates_of(&self, principal: &Principal) -> Vec<RateKey> {
        let limits = self.settings.limits_of(principal.tenant().as_str());
        let mut rates = Vec::with_capacity(2);
        let interval = |per_sec: f64| Duration::from_secs_f64(1.0 / per_sec);
        if let Some(member) = principal.member()
            && limits.member_per_sec > 0.0
        {
            rates.push(RateKey {
                key: format!("member:{member}"),
                interval: interval(limits.member_per_sec),
                burst: limits.member_burst,
            });
        }
        if limits.tenant_per_sec > 0.0 {
            rates.push(RateKey {
                key: "tenant".into(),
                interval: interval(limits.tenant_per_sec),
                burst: limits.tenant_burst,
            });
        }
        rates
    }

    /// Counts `operations` requests of `principal` (a batch's operations)
    /// against its rates, all or none. A batch larger than a rate's burst
    /// costs that burst: it waits for a full bucket, never for ever.
    pub async fn check_rate(
        &self,
        principal: &Principal,
        operations: usize,
    ) -> Result<(), RateLimited> {
        if !self.settings.enabled {
            return Ok(());
        }
        let rates = self.rates_of(principal);
        let cost = u32::try_from(operations.max(1)).unwrap_or(u32::MAX);
        match self
            .store
            .admit(principal.tenant().as_str(), &rates, cost)
            .await
        {
            Ok(None) => {
                self.metrics.admission("admitted");
                Ok(())
            }
            Ok(Some(wait)) => {
                self.metrics.admission("rate_limited");
                Err(RateLimited { retry_after: wait })
            }
            Err(error) => {
                tracing::warn!(%error, "rate limits could not be checked; request admitted");
                self.metrics.admission("store_error");
                Ok(())
            }
        }
    }
}

/// Whole seconds to wait, at least 1 (`Retry-After` has no fractions).
fn retry_after_secs(wait: Duration) -> u64 {
    let rounded_up = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    rounded_up.max(1)
}

fn refusal(status: StatusCode, code: &str, message: &str, wait: Duration) -> Response {
    let mut resp = (
        status,
        axum::Json(json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&retry_after_secs(wait).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, value);
    }
    resp
}

/// The answer to a rate-limited request: 429, `Retry-After`,
/// `RATE_LIMITED`.
pub fn rate_limited_response(limited: RateLimited) -> Response {
    refusal(
        StatusCode::TOO_MANY_REQUESTS,
        code::RATE_LIMITED,
        "too many requests; retry after the time in Retry-After",
        limited.retry_after,
    )
}

/// Middleware: sheds the request with 503 when the node already serves
/// `admission.max_concurrent` requests.
pub async fn shed_when_full(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let admission = app.admission();
    let Some(slots) = &admission.slots else {
        let _in_flight = InFlight::start(&admission.in_flight);
        return next.run(request).await;
    };
    match slots.clone().try_acquire_owned() {
        Ok(_permit) => {
            let _in_flight = InFlight::start(&admission.in_flight);
            next.run(request).await
        }
        Err(_) => {
            admission.metrics.admission("shed");
            let mut resp = refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                code::OVERLOADED,
                "the server is busy; retry after the time in Retry-After",
                Duration::from_secs(admission.settings.shed_retry_after_secs.max(1)),
            );
            // The body may not have been read.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2_001)), 3);
    }
}

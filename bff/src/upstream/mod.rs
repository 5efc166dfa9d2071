//! One client per upstream service: the anti-corruption layer.
//!
//! Each client owns its wire types (private DTOs in the upstream's own
//! shape) and turns them into the BFF's domain types, so no upstream shape
//! ever reaches the GraphQL schema. All clients share one pooled HTTP
//! client; each has its own timeout and counts every call per endpoint.
//!
//! The contract these clients expect is `bff/docs/upstream-contract.md`.

pub mod mall;
pub mod member;
pub mod order;
pub mod product;
pub mod resilience;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::{RetrySettings, UpstreamSettings, UpstreamsSettings};
use crate::metrics::Metrics;

pub use mall::MallClient;
pub use member::{MemberClient, MemberRecord};
pub use product::ProductClient;
pub use resilience::Guard;

/// Upstream and endpoint names used as metric labels.
pub const KNOWN_LABELS: &[&str] = &[
    "mall",
    "member",
    "product",
    "malls.list",
    "malls.batch",
    "stores.batch",
    "stores.by_mall",
    "members.batch",
    "coupons.list",
    "products.batch",
    "products.listing",
    "flash_sales.list",
    "holds.freeze",
    "holds.release",
    "holds.commit",
    "holds.get",
    "order",
    "order_events.post",
    "orders.get",
    "health",
];

/// Most ids sent in one batch call (the contract allows 200).
pub const MAX_BATCH: usize = 100;

/// Largest upstream response body read; a larger one breaks the contract
/// (a page is at most 100 products) and is refused rather than buffered.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// An upstream call failed. The message names the upstream and nothing
/// else; the cause is logged where it happens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No answer within the upstream's timeout.
    #[error("the {0} service did not answer in time")]
    Timeout(&'static str),
    /// Connection refused / reset, or a 5xx answer.
    #[error("the {0} service is unavailable")]
    Unavailable(&'static str),
    /// The answer did not follow the contract.
    #[error("the {0} service sent an invalid response")]
    BadResponse(&'static str),
    /// The service refused the request as malformed (HTTP 400). Where the
    /// client supplied the refused part (a paging cursor) the resolver
    /// reports it as bad input; anywhere else it is the service failing.
    #[error("the {0} service rejected the request")]
    Rejected(&'static str),
}

impl UpstreamError {
    /// The name of the failing upstream (`mall`, `member`, `product`).
    pub fn upstream(&self) -> &'static str {
        match self {
            UpstreamError::Timeout(name)
            | UpstreamError::Unavailable(name)
            | UpstreamError::BadResponse(name)
            | UpstreamError::Rejected(name) => name,
        }
    }
}

/// Where one upstream is for a tenant (or for everyone): base URL,
/// timeout and retry budget.
#[derive(Debug, Clone)]
struct Route {
    base: Url,
    timeout: Duration,
    retry: resilience::RetryPolicy,
}

impl Route {
    fn new(base: &Url, timeout: Duration, retry: &RetrySettings) -> Self {
        // `Url::join` replaces the last segment unless the base ends in `/`.
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Self {
            base,
            timeout,
            retry: resilience::RetryPolicy::new(retry),
        }
    }
}

/// What every endpoint shares: the connection pool, metrics, breakers and
/// retry settings.
#[derive(Debug, Clone)]
struct Shared {
    http: reqwest::Client,
    metrics: Metrics,
    guard: Guard,
    retry: RetrySettings,
    /// The configured request budget (a client may ask for less).
    request_budget: Duration,
}

/// How one try ended, for the retry loop.
enum Failure {
    /// Worth another try (timeout, 5xx, connection failure).
    Retry(UpstreamError),
    /// Not worth another (refused by the breaker, out of time, a 400 or
    /// an answer that breaks the contract).
    Final(UpstreamError),
}

impl Failure {
    fn into_inner(self) -> UpstreamError {
        match self {
            Failure::Retry(e) | Failure::Final(e) => e,
        }
    }
}

/// What every client has: where the service is (shared, or a tenant's
/// own), how long to wait, and where to count.
///
/// Every call runs under the request's deadline and its (tenant, upstream)
/// circuit breaker; reads are retried (see [`resilience`]). The tenant of
/// a call is the `tenants/{tenant}/…` prefix that every tenant-scoped path
/// of the contract has.
#[derive(Debug, Clone)]
struct Endpoint {
    name: &'static str,
    shared_route: Route,
    tenants: Arc<HashMap<String, Route>>,
    shared: Shared,
}

impl Endpoint {
    fn new(name: &'static str, base: &Url, settings: &UpstreamSettings, shared: &Shared) -> Self {
        Self {
            name,
            shared_route: Route::new(base, settings.timeout(), &shared.retry),
            tenants: Arc::default(),
            shared: shared.clone(),
        }
    }

    /// Adds tenants' own services for this upstream.
    fn with_tenants(mut self, routes: HashMap<String, Route>) -> Self {
        self.tenants = Arc::new(routes);
        self
    }

    /// The tenant a path belongs to, and the route to it.
    fn route<'p>(&self, path: &[&'p str]) -> (Option<&'p str>, &Route) {
        match path {
            ["tenants", tenant, ..] => (
                Some(*tenant),
                self.tenants.get(*tenant).unwrap_or(&self.shared_route),
            ),
            _ => (None, &self.shared_route),
        }
    }

    /// GETs the resource at `path` (segments below the base URL, each
    /// percent-encoded on its own, so an id can never add or climb path
    /// segments) and decodes the JSON body. `Ok(None)` means the upstream
    /// answered 404. Reads are idempotent: a timeout or an unavailable
    /// answer is retried while the request's deadline and the upstream's
    /// retry budget allow.
    #[tracing::instrument(
        name = "upstream",
        level = "debug",
        skip(self, query),
        fields(upstream = self.name, endpoint = endpoint, status)
    )]
    async fn get<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Option<T>, UpstreamError> {
        let (tenant, route) = self.route(path);
        route.retry.deposit();
        let attempt = || self.get_once(tenant, route, endpoint, path, query);
        attempt
            .retry(route.retry.backoff())
            .sleep(resilience::RetryPolicy::pause)
            .when(|failure| matches!(failure, Failure::Retry(_)))
            .adjust(|_, delay| {
                let delay = delay?;
                let allowed = route.retry.may_retry(delay);
                self.shared.guard.retry(self.name, allowed);
                allowed.then_some(delay)
            })
            .await
            .map_err(Failure::into_inner)
    }

    /// One try of a GET, through the breaker, within the deadline.
    async fn get_once<T: DeserializeOwned>(
        &self,
        tenant: Option<&str>,
        route: &Route,
        endpoint: &'static str,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Option<T>, Failure> {
        self.guarded(tenant, route, endpoint, |timeout| {
            self.get_inner(route, timeout, path, query)
        })
        .await
        .map_err(|err| match err {
            UpstreamError::Timeout(_) | UpstreamError::Unavailable(_) => Failure::Retry(err),
            err => Failure::Final(err),
        })
    }

    /// Runs one try of a call: refuses at once when the request is out of
    /// time or the (tenant, upstream) breaker is open, else calls with the
    /// try's timeout, then counts the outcome in metrics and the breaker.
    async fn guarded<T, F, Fut>(
        &self,
        tenant: Option<&str>,
        route: &Route,
        endpoint: &'static str,
        call: F,
    ) -> Result<T, UpstreamError>
    where
        T: Outcome,
        F: FnOnce(Duration) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let Some(timeout) = resilience::attempt_timeout(route.timeout) else {
            tracing::warn!(
                upstream = self.name,
                endpoint,
                "request budget spent before the call"
            );
            self.shared
                .metrics
                .upstream_call(self.name, endpoint, "deadline", Duration::ZERO);
            return Err(UpstreamError::Timeout(self.name));
        };
        let permit = match tenant {
            Some(tenant) => match self.shared.guard.permit(tenant, self.name) {
                Some(permit) => Some(permit),
                None => {
                    tracing::debug!(upstream = self.name, tenant, "circuit breaker open");
                    return Err(UpstreamError::Unavailable(self.name));
                }
            },
            None => None,
        };
        let started = Instant::now();
        let result = call(timeout).await;
        let outcome = match &result {
            Ok(answer) => answer.label(),
            Err(UpstreamError::Timeout(_)) => "timeout",
            Err(UpstreamError::Rejected(_)) => "rejected",
            Err(_) => "error",
        };
        self.shared
            .metrics
            .upstream_call(self.name, endpoint, outcome, started.elapsed());
        if let (Some(tenant), Some(permit)) = (tenant, permit) {
            let failed = match &result {
                // A try cut short by a budget a client asked for says little
                // about the service (it may ask for a tiny one): a timeout
                // counts when the try had at least half of the upstream's
                // timeout or of the configured budget. A probe's outcome is
                // always settled.
                Err(UpstreamError::Timeout(_)) => {
                    timeout * 2 >= route.timeout.min(self.shared.request_budget)
                        || permit == resilience::Permit::Probe
                }
                Err(UpstreamError::Unavailable(_) | UpstreamError::BadResponse(_)) => true,
                Ok(_) | Err(UpstreamError::Rejected(_)) => false,
            };
            let counted = !matches!(&result, Err(UpstreamError::Timeout(_))) || failed;
            if counted {
                self.shared.guard.record(tenant, self.name, permit, failed);
            }
        }
        result
    }

    /// The URL of the resource at `path` below the base URL.
    fn url(&self, base: &Url, path: &[&str]) -> Result<Url, UpstreamError> {
        // Ids are parsed before they get here; this keeps the promise even
        // if one were not: `url` silently drops `.` and `..` segments,
        // which would name another resource.
        if path.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
            tracing::error!(
                ?path,
                "refusing an empty, '.' or '..' upstream path segment"
            );
            return Err(UpstreamError::BadResponse(self.name));
        }
        let mut url = base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                tracing::error!(base = %base, "upstream base URL cannot have a path");
                UpstreamError::BadResponse(self.name)
            })?
            .pop_if_empty()
            .extend(path);
        Ok(url)
    }

    async fn get_inner<T: DeserializeOwned>(
        &self,
        route: &Route,
        timeout: Duration,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Option<T>, UpstreamError> {
        let url = self.url(&route.base, path)?;
        let mut response = self
            .shared
            .http
            .get(url)
            .query(query)
            .timeout(timeout)
            .send()
            .await
            .map_err(|err| self.transport_error(err, timeout))?;
        let status = response.status();
        tracing::Span::current().record("status", status.as_u16());
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status == StatusCode::BAD_REQUEST {
            tracing::warn!(upstream = self.name, "upstream rejected the request");
            return Err(UpstreamError::Rejected(self.name));
        }
        if !status.is_success() {
            tracing::warn!(upstream = self.name, %status, "upstream answered with an error");
            return Err(UpstreamError::Unavailable(self.name));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_BODY_BYTES as u64)
        {
            tracing::error!(
                upstream = self.name,
                "upstream response larger than allowed"
            );
            return Err(UpstreamError::BadResponse(self.name));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport_error(err, timeout))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                tracing::error!(
                    upstream = self.name,
                    "upstream response larger than allowed"
                );
                return Err(UpstreamError::BadResponse(self.name));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map(Some).map_err(|err| {
            tracing::error!(upstream = self.name, error = %err, "upstream response breaks the contract");
            UpstreamError::BadResponse(self.name)
        })
    }

    /// Sends a JSON command (`PUT`/`POST`) that the contract makes
    /// idempotent by a request key in `path`, and decodes the answer. A
    /// `404` or `409` is a refusal the caller interprets (its
    /// `error.code`); a `400` is the BFF breaking the contract. Commands
    /// run under the deadline and the breaker but are never retried here:
    /// their callers own the request key and the recovery.
    #[tracing::instrument(
        name = "upstream",
        level = "debug",
        skip(self, body),
        fields(upstream = self.name, endpoint = endpoint, status)
    )]
    async fn send<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: reqwest::Method,
        path: &[&str],
        body: Option<&serde_json::Value>,
    ) -> Result<Answer<T>, UpstreamError> {
        let (tenant, route) = self.route(path);
        self.guarded(tenant, route, endpoint, |timeout| {
            self.send_inner(route, timeout, method, path, body)
        })
        .await
    }

    async fn send_inner<T: DeserializeOwned>(
        &self,
        route: &Route,
        timeout: Duration,
        method: reqwest::Method,
        path: &[&str],
        body: Option<&serde_json::Value>,
    ) -> Result<Answer<T>, UpstreamError> {
        let url = self.url(&route.base, path)?;
        let mut request = self.shared.http.request(method, url).timeout(timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(err, timeout))?;
        let status = response.status();
        tracing::Span::current().record("status", status.as_u16());
        if status == StatusCode::BAD_REQUEST {
            tracing::warn!(upstream = self.name, "upstream rejected the request");
            return Err(UpstreamError::Rejected(self.name));
        }
        if status == StatusCode::NOT_FOUND || status == StatusCode::CONFLICT {
            #[derive(serde::Deserialize)]
            struct ErrorBody {
                error: ErrorDetail,
            }
            #[derive(serde::Deserialize)]
            struct ErrorDetail {
                code: String,
            }
            let code = response
                .json::<ErrorBody>()
                .await
                .map(|b| b.error.code)
                .unwrap_or_default();
            return Ok(Answer::Refused {
                status: status.as_u16(),
                code,
            });
        }
        if !status.is_success() {
            tracing::warn!(upstream = self.name, %status, "upstream answered with an error");
            return Err(UpstreamError::Unavailable(self.name));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|err| self.transport_error(err, timeout))?;
        if bytes.len() > MAX_BODY_BYTES {
            return Err(UpstreamError::BadResponse(self.name));
        }
        serde_json::from_slice(&bytes).map(Answer::Done).map_err(|err| {
            tracing::error!(upstream = self.name, error = %err, "upstream response breaks the contract");
            UpstreamError::BadResponse(self.name)
        })
    }

    /// GETs a batch endpoint for `ids`, `MAX_BATCH` at a time (the chunks
    /// concurrently), and returns every item of every answer. A 404 counts
    /// as "none of these exist".
    async fn get_batch<D: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &[&str],
        param: &str,
        ids: &[&str],
    ) -> Result<Vec<D>, UpstreamError> {
        let pages = futures::future::try_join_all(ids.chunks(MAX_BATCH).map(|chunk| {
            let joined = join_ids(chunk.iter().copied());
            async move {
                let items: Option<Items<D>> = self
                    .get(endpoint, path, &[(param, joined.as_str())])
                    .await?;
                Ok::<_, UpstreamError>(items.map(|i| i.items).unwrap_or_default())
            }
        }))
        .await?;
        Ok(pages.into_iter().flatten().collect())
    }

    /// `GET healthz`: the shared service's own health check (one try, no
    /// breaker: it is what an operator looks at).
    async fn health(&self) -> Result<(), UpstreamError> {
        let route = &self.shared_route;
        let ok: Option<serde_json::Value> = self
            .guarded(None, route, "health", |timeout| {
                self.get_inner(route, timeout, &["healthz"], &[])
            })
            .await?;
        ok.map(|_| ()).ok_or(UpstreamError::Unavailable(self.name))
    }

    fn transport_error(&self, err: reqwest::Error, timeout: Duration) -> UpstreamError {
        if err.is_timeout() {
            tracing::warn!(upstream = self.name, ?timeout, "upstream timed out");
            UpstreamError::Timeout(self.name)
        } else {
            tracing::warn!(upstream = self.name, error = %err, "upstream unreachable");
            UpstreamError::Unavailable(self.name)
        }
    }
}

/// Joins ids into the contract's comma-separated batch parameter.
fn join_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for id in ids {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(id);
    }
    out
}

/// The three upstream clients. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// Malls and stores.
    pub mall: MallClient,
    /// Members and coupons.
    pub member: MemberClient,
    /// Products, listings, flash sales.
    pub product: ProductClient,
    guard: Guard,
}

/// The base URL of each upstream, once resolved (configured or demo).
#[derive(Debug, Clone)]
pub struct BaseUrls {
    /// Mall service.
    pub mall: Url,
    /// Member service.
    pub member: Url,
    /// Product service.
    pub product: Url,
}

impl Upstreams {
    /// Builds the clients over one shared connection pool, with the
    /// tenants' own services from `settings.tenants`.
    pub fn new(
        settings: &UpstreamsSettings,
        urls: &BaseUrls,
        metrics: Metrics,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            // A service answers at its own address: a redirect is an
            // error (counted, retried like one), never followed elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mall-bff/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let guard = Guard::new(&settings.breaker, &metrics);
        let shared = Shared {
            http,
            metrics,
            guard: guard.clone(),
            retry: settings.retry.clone(),
            request_budget: settings.request_budget(),
        };
        let endpoint = |name: &'static str, base: &Url, upstream: &UpstreamSettings| {
            let routes: HashMap<String, Route> = settings
                .tenants
                .iter()
                .filter_map(|(tenant, overrides)| {
                    let (_, own) = overrides.iter().find(|(n, _)| *n == name)?;
                    let timeout = own
                        .timeout_ms
                        .map(Duration::from_millis)
                        .unwrap_or_else(|| upstream.timeout());
                    Some((
                        tenant.as_str().to_owned(),
                        Route::new(&own.base_url, timeout, &settings.retry),
                    ))
                })
                .collect();
            Endpoint::new(name, base, upstream, &shared).with_tenants(routes)
        };
        Ok(Self {
            mall: MallClient::new(endpoint("mall", &urls.mall, &settings.mall)),
            member: MemberClient::new(endpoint("member", &urls.member, &settings.member)),
            product: ProductClient::new(endpoint("product", &urls.product, &settings.product)),
            guard,
        })
    }

    /// The circuit breakers of every (tenant, upstream).
    pub fn guard(&self) -> &Guard {
        &self.guard
    }
}

/// How a successful call is labelled in metrics.
trait Outcome {
    fn label(&self) -> &'static str;
}

impl<T> Outcome for Option<T> {
    fn label(&self) -> &'static str {
        if self.is_some() { "ok" } else { "not_found" }
    }
}

impl<T> Outcome for Answer<T> {
    fn label(&self) -> &'static str {
        match self {
            Answer::Done(_) => "ok",
            Answer::Refused { status: 404, .. } => "not_found",
            Answer::Refused { .. } => "rejected",
        }
    }
}

/// Converts upstream records to domain values. Records whose ids break
/// the contract are dropped (and logged) rather than failing the batch.
fn keep_valid<D, T>(upstream: &'static str, items: Vec<D>, f: impl Fn(D) -> Option<T>) -> Vec<T> {
    let total = items.len();
    let valid: Vec<T> = items.into_iter().filter_map(f).collect();
    if valid.len() != total {
        tracing::warn!(
            upstream,
            dropped = total - valid.len(),
            "records with invalid ids dropped"
        );
    }
    valid
}

/// The answer to a command: done, or refused with a status and the
/// contract's `error.code`.
#[derive(Debug)]
enum Answer<T> {
    Done(T),
    Refused { status: u16, code: String },
}

/// The batch envelope every batch and list endpoint answers with.
#[derive(serde::Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(base: &str) -> Endpoint {
        let metrics = Metrics::new();
        let shared = Shared {
            http: reqwest::Client::new(),
            guard: Guard::new(&Default::default(), &metrics),
            metrics,
            retry: RetrySettings::default(),
            request_budget: Duration::from_secs(1),
        };
        Endpoint::new(
            "mall",
            &Url::parse(base).unwrap(),
            &UpstreamSettings::default(),
            &shared,
        )
    }

    fn url_of(e: &Endpoint, path: &[&str]) -> Result<Url, UpstreamError> {
        e.url(&e.shared_route.base, path)
    }

    #[test]
    fn path_segments_are_percent_encoded_below_the_base_path() {
        let e = endpoint("http://mall.internal/api");
        let url = url_of(&e, &["tenants", "demo", "malls"]).unwrap();
        assert_eq!(url.as_str(), "http://mall.internal/api/tenants/demo/malls");
        let url = url_of(&e, &["tenants", "a/b?c#d e%"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://mall.internal/api/tenants/a%2Fb%3Fc%23d%20e%25"
        );
    }

    #[test]
    fn dot_segments_are_refused_rather_than_resolved() {
        let e = endpoint("http://mall.internal/api/");
        for bad in [".", "..", ""] {
            assert!(
                matches!(
                    url_of(&e, &["tenants", bad, "malls"]),
                    Err(UpstreamError::BadResponse("mall"))
                ),
                "{bad:?}"
            );
        }
    }
}

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

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::{UpstreamSettings, UpstreamsSettings};
use crate::metrics::Metrics;

pub use mall::MallClient;
pub use member::MemberClient;
pub use product::ProductClient;

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

/// What every client has: where the service is, how long to wait, and
/// where to count.
#[derive(Debug, Clone)]
struct Endpoint {
    name: &'static str,
    base: Url,
    timeout: Duration,
    http: reqwest::Client,
    metrics: Metrics,
}

impl Endpoint {
    fn new(
        name: &'static str,
        base: &Url,
        settings: &UpstreamSettings,
        http: reqwest::Client,
        metrics: Metrics,
    ) -> Self {
        // `Url::join` replaces the last segment unless the base ends in `/`.
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Self {
            name,
            base,
            timeout: settings.timeout(),
            http,
            metrics,
        }
    }

    /// GETs the resource at `path` (segments below the base URL, each
    /// percent-encoded on its own, so an id can never add or climb path
    /// segments) and decodes the JSON body. `Ok(None)` means the upstream
    /// answered 404.
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
        let started = Instant::now();
        let result = self.get_inner(path, query).await;
        let outcome = match &result {
            Ok(Some(_)) => "ok",
            Ok(None) => "not_found",
            Err(UpstreamError::Timeout(_)) => "timeout",
            Err(UpstreamError::Rejected(_)) => "rejected",
            Err(_) => "error",
        };
        self.metrics
            .upstream_call(self.name, endpoint, outcome, started.elapsed());
        result
    }

    /// The URL of the resource at `path` below the base URL.
    fn url(&self, path: &[&str]) -> Result<Url, UpstreamError> {
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
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                tracing::error!(base = %self.base, "upstream base URL cannot have a path");
                UpstreamError::BadResponse(self.name)
            })?
            .pop_if_empty()
            .extend(path);
        Ok(url)
    }

    async fn get_inner<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Option<T>, UpstreamError> {
        let url = self.url(path)?;
        let mut response = self
            .http
            .get(url)
            .query(query)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|err| self.transport_error(err))?;
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
            .map_err(|err| self.transport_error(err))?
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
    /// `error.code`); a `400` is the BFF breaking the contract.
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
        let started = Instant::now();
        let result = self.send_inner(method, path, body).await;
        let outcome = match &result {
            Ok(Answer::Done(_)) => "ok",
            Ok(Answer::Refused { status: 404, .. }) => "not_found",
            Ok(Answer::Refused { .. }) => "rejected",
            Err(UpstreamError::Timeout(_)) => "timeout",
            Err(UpstreamError::Rejected(_)) => "rejected",
            Err(_) => "error",
        };
        self.metrics
            .upstream_call(self.name, endpoint, outcome, started.elapsed());
        result
    }

    async fn send_inner<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &[&str],
        body: Option<&serde_json::Value>,
    ) -> Result<Answer<T>, UpstreamError> {
        let url = self.url(path)?;
        let mut request = self.http.request(method, url).timeout(self.timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|err| self.transport_error(err))?;
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
            .map_err(|err| self.transport_error(err))?;
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

    /// `GET healthz`: the service's own health check.
    async fn health(&self) -> Result<(), UpstreamError> {
        let ok: Option<serde_json::Value> = self.get("health", &["healthz"], &[]).await?;
        ok.map(|_| ()).ok_or(UpstreamError::Unavailable(self.name))
    }

    fn transport_error(&self, err: reqwest::Error) -> UpstreamError {
        if err.is_timeout() {
            tracing::warn!(upstream = self.name, timeout = ?self.timeout, "upstream timed out");
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
    /// Builds the clients over one shared connection pool.
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
            .user_agent(concat!("mall-bff/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            mall: MallClient::new(Endpoint::new(
                "mall",
                &urls.mall,
                &settings.mall,
                http.clone(),
                metrics.clone(),
            )),
            member: MemberClient::new(Endpoint::new(
                "member",
                &urls.member,
                &settings.member,
                http.clone(),
                metrics.clone(),
            )),
            product: ProductClient::new(Endpoint::new(
                "product",
                &urls.product,
                &settings.product,
                http,
                metrics,
            )),
        })
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
        Endpoint::new(
            "mall",
            &Url::parse(base).unwrap(),
            &UpstreamSettings::default(),
            reqwest::Client::new(),
            Metrics::new(),
        )
    }

    #[test]
    fn path_segments_are_percent_encoded_below_the_base_path() {
        let e = endpoint("http://mall.internal/api");
        let url = e.url(&["tenants", "demo", "malls"]).unwrap();
        assert_eq!(url.as_str(), "http://mall.internal/api/tenants/demo/malls");
        let url = e.url(&["tenants", "a/b?c#d e%"]).unwrap();
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
                    e.url(&["tenants", bad, "malls"]),
                    Err(UpstreamError::BadResponse("mall"))
                ),
                "{bad:?}"
            );
        }
    }
}

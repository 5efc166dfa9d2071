//! Client of the order service, the system of record: it receives every
//! order change from the outbox and answers what it has seen.

use serde::Deserialize;
use url::Url;

use super::{Answer, Endpoint, UpstreamError};
use crate::config::UpstreamSettings;
use crate::domain::TenantId;
use crate::metrics::Metrics;

/// One change of an order, as the order service receives it.
#[derive(Debug, Clone, Copy)]
pub struct OrderEvent<'a> {
    /// The order.
    pub order: &'a str,
    /// The order's version after the change; (order, version) is unique.
    pub version: u64,
    /// The change (`order.paid`).
    pub kind: &'a str,
    /// The order's status after the change.
    pub status: &'a str,
    /// The BFF's record of the order after the change (JSON text).
    pub body: &'a str,
}

/// An order as the order service knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOrder {
    /// Status of the newest version it has.
    pub status: String,
    /// Newest version it has.
    pub version: u64,
    /// Event kinds it applied, in version order.
    pub kinds: Vec<String>,
}

#[derive(Deserialize)]
struct SeenOrderDto {
    status: String,
    version: u64,
    events: Vec<SeenEventDto>,
}

#[derive(Deserialize)]
struct SeenEventDto {
    kind: String,
}

#[derive(Deserialize)]
struct AppliedDto {
    #[allow(dead_code)]
    applied: bool,
}

/// Delivers order events and reads what the order service has.
#[derive(Debug, Clone)]
pub struct OrderClient {
    endpoint: Endpoint,
}

impl OrderClient {
    /// A client of the order service at `base` (its own connection pool).
    pub fn new(base: &Url, settings: &UpstreamSettings, metrics: Metrics) -> Self {
        Self {
            endpoint: Endpoint::new(
                "order",
                base,
                settings,
                &super::Shared {
                    http: reqwest::Client::new(),
                    metrics,
                    // The relay and the sweeper have their own pacing and
                    // recovery; a breaker would only delay them.
                    guard: super::Guard::disabled(),
                    retry: Default::default(),
                    request_budget: settings.timeout(),
                },
            ),
        }
    }

    /// Delivers one event. Safe to repeat: the service applies each
    /// (order, version) once.
    pub async fn deliver(
        &self,
        tenant: &TenantId,
        event: OrderEvent<'_>,
    ) -> Result<(), UpstreamError> {
        let path = ["tenants", tenant.as_str(), "order-events"];
        let body = serde_json::json!({
            "order_id": event.order,
            "version": event.version,
            "kind": event.kind,
            "status": event.status,
            "body": event.body,
        });
        match self
            .endpoint
            .send::<AppliedDto>(
                "order_events.post",
                reqwest::Method::POST,
                &path,
                Some(&body),
            )
            .await?
        {
            Answer::Done(_) => Ok(()),
            Answer::Refused { .. } => Err(UpstreamError::Unavailable("order")),
        }
    }

    /// What the service has for an order; `None` if it has never heard of
    /// it.
    pub async fn order(
        &self,
        tenant: &TenantId,
        order: &str,
    ) -> Result<Option<RecordedOrder>, UpstreamError> {
        let seen: Option<SeenOrderDto> = self
            .endpoint
            .get(
                "orders.get",
                &["tenants", tenant.as_str(), "orders", order],
                &[],
            )
            .await?;
        Ok(seen.map(|s| RecordedOrder {
            status: s.status,
            version: s.version,
            kinds: s.events.into_iter().map(|e| e.kind).collect(),
        }))
    }
}

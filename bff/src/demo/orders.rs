//! The demo order service: the system of record for orders. It learns every
//! order from the BFF's outbox events, delivered at least once; it applies
//! each (order, version) once and ignores redeliveries, and it answers what
//! it has seen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

/// One event as delivered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrderEventRecord {
    /// The order.
    pub order_id: String,
    /// The order's version after the change; (order, version) is unique.
    pub version: u64,
    /// `order.paid`, `payment.refund_required`, …
    pub kind: String,
    /// The order's status after the change.
    pub status: String,
    /// The BFF's record of the order (JSON text).
    pub body: String,
}

/// An order as the order service knows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SeenOrder {
    /// The order.
    pub order_id: String,
    /// Status of the newest version seen.
    pub status: String,
    /// Newest version seen.
    pub version: u64,
    /// Every event applied, in version order.
    pub events: Vec<OrderEventRecord>,
}

#[derive(Default)]
struct Book {
    /// (tenant, order) → version → event.
    orders: HashMap<(String, String), std::collections::BTreeMap<u64, OrderEventRecord>>,
    deliveries: u64,
}

/// The service's state. Cloning shares it.
#[derive(Clone, Default)]
pub struct OrderBook {
    book: Arc<Mutex<Book>>,
}

impl std::fmt::Debug for OrderBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderBook").finish_non_exhaustive()
    }
}

impl OrderBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies an event once; returns whether it was new.
    pub fn apply(&self, tenant: &str, event: OrderEventRecord) -> bool {
        let mut book = self.lock();
        book.deliveries += 1;
        let versions = book
            .orders
            .entry((tenant.to_owned(), event.order_id.clone()))
            .or_default();
        if versions.contains_key(&event.version) {
            return false;
        }
        versions.insert(event.version, event);
        true
    }

    /// An order as seen so far.
    pub fn order(&self, tenant: &str, order: &str) -> Option<SeenOrder> {
        let book = self.lock();
        let versions = book.orders.get(&(tenant.to_owned(), order.to_owned()))?;
        let newest = versions.values().next_back()?;
        Some(SeenOrder {
            order_id: order.to_owned(),
            status: newest.status.clone(),
            version: newest.version,
            events: versions.values().cloned().collect(),
        })
    }

    /// Deliveries received, redeliveries included.
    pub fn deliveries(&self) -> u64 {
        self.lock().deliveries
    }

    /// Distinct events applied, over every tenant.
    pub fn applied(&self) -> usize {
        self.lock().orders.values().map(|v| v.len()).sum()
    }
}

async fn post_event(
    State(book): State<OrderBook>,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    match serde_json::from_slice::<OrderEventRecord>(&body) {
        Ok(event) => {
            let new = book.apply(&tenant, event);
            Json(json!({ "applied": new })).into_response()
        }
        Err(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": { "code": "BAD_REQUEST", "message": "not an order event" } })),
        )
            .into_response(),
    }
}

async fn get_order(
    State(book): State<OrderBook>,
    Path((tenant, order)): Path<(String, String)>,
) -> Response {
    match book.order(&tenant, &order) {
        Some(seen) => Json(seen).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": { "code": "NOT_FOUND", "message": "no such order" } })),
        )
            .into_response(),
    }
}

/// The order service's routes.
pub fn router(book: OrderBook) -> Router {
    Router::new()
        .route("/tenants/{tenant}/order-events", post(post_event))
        .route("/tenants/{tenant}/orders/{order}", get(get_order))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .with_state(book)
}

/// The order service running on a loopback port. Dropping it stops it.
#[derive(Debug)]
pub struct RunningOrderService {
    /// Base URL for the BFF's client.
    pub base_url: Url,
    /// What it has seen.
    pub book: OrderBook,
    task: JoinHandle<()>,
}

impl RunningOrderService {
    /// Starts the service on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let book = OrderBook::default();
        let app = router(book.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "demo order service stopped");
            }
        });
        let base_url = Url::parse(&format!("http://{addr}/"))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            base_url,
            book,
            task,
        })
    }
}

impl Drop for RunningOrderService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

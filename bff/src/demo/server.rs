//! The demo upstream services over HTTP/JSON, implementing exactly the
//! contract in `bff/docs/upstream-contract.md`, with fault injection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;

use super::data::{DemoData, ProductRecord, TenantData};
use super::ledger::Ledger;
use crate::config::FaultSettings;

/// Most ids one batch request may carry.
pub const MAX_BATCH_IDS: usize = 200;
/// Largest listing page.
pub const MAX_PAGE: usize = 100;

/// Which demo service a router serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Malls and stores.
    Mall,
    /// Members and coupons.
    Member,
    /// Products, listings and flash sales.
    Product,
}

impl Service {
    /// All services.
    pub const ALL: [Service; 3] = [Service::Mall, Service::Member, Service::Product];

    /// The service's name (also its path prefix when served together).
    pub fn name(self) -> &'static str {
        match self {
            Service::Mall => "mall",
            Service::Member => "member",
            Service::Product => "product",
        }
    }
}

/// Live fault settings, request and connection counters of one running
/// demo service. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct ServiceControl {
    faults: Arc<Mutex<FaultSettings>>,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl ServiceControl {
    /// A control starting with `faults`.
    pub fn new(faults: FaultSettings) -> Self {
        Self {
            faults: Arc::new(Mutex::new(faults)),
            requests: Arc::default(),
            connections: Arc::default(),
        }
    }

    /// Replaces the faults injected from now on.
    pub fn set_faults(&self, faults: FaultSettings) {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// The faults currently injected.
    pub fn faults(&self) -> FaultSettings {
        *self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests received so far (fault-control requests excluded).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far (where the service counts them:
    /// each service of [`super::DemoUpstreams`] on its own listener).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts one accepted connection.
    pub(super) fn accepted(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct AppState {
    data: Arc<DemoData>,
    control: ServiceControl,
    /// Live balances, coupon states and holds (member service only).
    ledger: Ledger,
}

/// The router of one service. `/_faults` (GET, PUT) reads and changes its
/// fault injection at run time.
pub fn router(service: Service, data: Arc<DemoData>, control: ServiceControl) -> Router {
    let ledger = Ledger::new(data.clone());
    let state = AppState {
        data,
        control,
        ledger: ledger.clone(),
    };
    let api = match service {
        Service::Mall => Router::new()
            .route("/tenants/{tenant}/malls", get(malls))
            .route("/tenants/{tenant}/stores", get(stores)),
        Service::Member => Router::new()
            .route("/tenants/{tenant}/members", get(members))
            .route("/tenants/{tenant}/members/{member}/coupons", get(coupons))
            .merge(super::ledger::router(ledger)),
        Service::Product => Router::new()
            .route("/tenants/{tenant}/products", get(products))
            .route("/tenants/{tenant}/malls/{mall}/products", get(listing))
            .route(
                "/tenants/{tenant}/malls/{mall}/flash-sales",
                get(flash_sales),
            ),
    };
    let api = api.route(
        "/healthz",
        get(|| async { Json(json!({ "status": "ok" })) }),
    );
    api.layer(middleware::from_fn_with_state(state.clone(), inject_faults))
        .route("/_faults", get(get_faults).put(put_faults))
        .with_state(state)
}

async fn inject_faults(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let n = state.control.requests.fetch_add(1, Ordering::Relaxed);
    let faults = state.control.faults();
    let (delay, fail) = {
        let mut rng = rand::rng();
        let jitter = if faults.jitter_ms > 0 {
            rng.random_range(0..=faults.jitter_ms)
        } else {
            0
        };
        // Which requests fail follows a fixed pseudo-random pattern over
        // the service's request count, so a run with the same faults fails
        // the same share of its requests every time (reproducible figures).
        let fail = faults.down
            || (faults.error_rate > 0.0
                && rand::rngs::StdRng::seed_from_u64(n).random_bool(faults.error_rate));
        (faults.latency_ms.saturating_add(jitter), fail)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if fail {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "injected fault",
        );
    }
    next.run(req).await
}

async fn get_faults(State(state): State<AppState>) -> Json<FaultSettings> {
    Json(state.control.faults())
}

async fn put_faults(State(state): State<AppState>, Json(faults): Json<FaultSettings>) -> Response {
    if !(0.0..=1.0).contains(&faults.error_rate) {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "error_rate must be in 0..=1",
        );
    }
    state.control.set_faults(faults);
    Json(faults).into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct BatchQuery {
    ids: Option<String>,
    mall_ids: Option<String>,
    /// `coupons`: embed each member's coupons (members only).
    include: Option<String>,
}

/// Splits a comma-separated id list, enforcing the batch limit.
fn split_ids(raw: &str) -> Result<Vec<&str>, Box<Response>> {
    let ids: Vec<&str> = raw.split(',').filter(|s| !s.is_empty()).collect();
    if ids.len() > MAX_BATCH_IDS {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "TOO_MANY_IDS",
            "at most 200 ids per request",
        )));
    }
    Ok(ids)
}

fn batch<'a, T: serde::Serialize + 'a>(
    ids: &str,
    lookup: impl Fn(&str) -> Option<&'a T>,
) -> Response {
    match split_ids(ids) {
        Ok(ids) => {
            let items: Vec<&T> = ids.into_iter().filter_map(lookup).collect();
            Json(json!({ "items": items })).into_response()
        }
        Err(resp) => *resp,
    }
}

/// A batch endpoint whose `ids` parameter is mandatory.
fn required_batch<'a, T: serde::Serialize + 'a>(
    ids: Option<String>,
    lookup: impl Fn(&str) -> Option<&'a T>,
) -> Response {
    match ids {
        Some(ids) => batch(&ids, lookup),
        None => error(StatusCode::BAD_REQUEST, "BAD_REQUEST", "ids is required"),
    }
}

/// An unknown tenant has no data: batches come back empty and single
/// resources are not found.
static EMPTY: std::sync::LazyLock<TenantData> = std::sync::LazyLock::new(TenantData::default);

fn tenant<'a>(data: &'a DemoData, tenant: &str) -> &'a TenantData {
    data.tenant(tenant).unwrap_or(&EMPTY)
}

async fn malls(
    State(s): State<AppState>,
    Path(t): Path<String>,
    Query(q): Query<BatchQuery>,
) -> Response {
    let t = tenant(&s.data, &t);
    match q.ids {
        Some(ids) => batch(&ids, |id| t.mall(id)),
        None => Json(json!({ "items": t.malls })).into_response(),
    }
}

async fn stores(
    State(s): State<AppState>,
    Path(t): Path<String>,
    Query(q): Query<BatchQuery>,
) -> Response {
    let t = tenant(&s.data, &t);
    match (q.ids, q.mall_ids) {
        (Some(ids), None) => batch(&ids, |id| t.store(id)),
        (None, Some(malls)) => match split_ids(&malls) {
            Ok(malls) => {
                let items: Vec<_> = malls
                    .into_iter()
                    .flat_map(|m| t.stores_of_mall(m))
                    .collect();
                Json(json!({ "items": items })).into_response()
            }
            Err(resp) => *resp,
        },
        _ => error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "exactly one of ids or mall_ids is required",
        ),
    }
}

async fn members(
    State(s): State<AppState>,
    Path(t): Path<String>,
    Query(q): Query<BatchQuery>,
) -> Response {
    let tenant_id = t;
    let t = tenant(&s.data, &tenant_id);
    let Some(ids) = q.ids else {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST", "ids is required");
    };
    let with_coupons = q
        .include
        .as_deref()
        .is_some_and(|include| include.split(',').any(|part| part == "coupons"));
    match split_ids(&ids) {
        // Balances are live: what holds froze or spent is not available.
        Ok(ids) => {
            let items: Vec<serde_json::Value> = ids
                .into_iter()
                .filter_map(|id| t.member(id))
                .map(|m| {
                    let mut m = m.clone();
                    if let Some((points, wallet)) = s.ledger.balances(&tenant_id, &m.member_id) {
                        m.points_balance = points;
                        m.wallet_balance_fen = wallet;
                    }
                    let mut record = json!(m);
                    if with_coupons {
                        record["coupons"] = json!(live_coupons(&s, &tenant_id, t, &m.member_id));
                    }
                    record
                })
                .collect();
            Json(json!({ "items": items })).into_response()
        }
        Err(resp) => *resp,
    }
}

async fn coupons(State(s): State<AppState>, Path((t, member)): Path<(String, String)>) -> Response {
    let tenant_id = t;
    let t = tenant(&s.data, &tenant_id);
    if t.member(&member).is_none() {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such member");
    }
    let items = live_coupons(&s, &tenant_id, t, &member);
    Json(json!({ "items": items })).into_response()
}

/// A member's coupons with their live status (what holds and payments
/// used is no longer `UNUSED`).
fn live_coupons(
    s: &AppState,
    tenant_id: &str,
    t: &TenantData,
    member: &str,
) -> Vec<super::data::CouponRecord> {
    let mut items = t.coupons.get(member).cloned().unwrap_or_default();
    for coupon in &mut items {
        let live = s.ledger.coupon_status(tenant_id, &coupon.coupon_id);
        if live != "UNUSED" {
            coupon.status = live.to_owned();
        }
    }
    items
}

async fn products(
    State(s): State<AppState>,
    Path(t): Path<String>,
    Query(q): Query<BatchQuery>,
) -> Response {
    let t = tenant(&s.data, &t);
    required_batch(q.ids, |id| t.product(id))
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Listing cursors are opaque to clients; here they are the position of
/// the item, prefixed so a client cannot mistake them for numbers.
fn cursor_of(position: usize) -> String {
    format!("p{position}")
}

async fn listing(
    State(s): State<AppState>,
    Path((t, mall)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Response {
    let t = tenant(&s.data, &t);
    let Some(all) = t.listing(&mall) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such mall");
    };
    let limit = q.limit.unwrap_or(20);
    if limit == 0 || limit > MAX_PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "limit must be 1..=100",
        );
    }
    let start = match q.cursor.as_deref() {
        None => 0,
        Some(c) => match c.strip_prefix('p').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n < all.len() => n + 1,
            _ => return error(StatusCode::BAD_REQUEST, "BAD_CURSOR", "unknown cursor"),
        },
    };
    let page: Vec<_> = all
        .iter()
        .enumerate()
        .skip(start)
        .take(limit)
        .map(|(i, p): (usize, &&ProductRecord)| json!({ "cursor": cursor_of(i), "product": p }))
        .collect();
    let has_more = start + page.len() < all.len();
    Json(json!({ "items": page, "has_more": has_more })).into_response()
}

async fn flash_sales(
    State(s): State<AppState>,
    Path((t, mall)): Path<(String, String)>,
) -> Response {
    let t = tenant(&s.data, &t);
    match t.flash_sales(&mall) {
        Some(items) => Json(json!({ "items": items })).into_response(),
        None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such mall"),
    }
}

//! Readiness and the operator status.
//!
//! * `GET /readyz` says whether *this node can serve*: it is listening (it
//!   answers), its store answers, and its rule snapshot is loaded. It does
//!   not look at upstreams: when an upstream fails, cards still render
//!   partially on every node, and pulling every replica out of the load
//!   balancer at once would turn a partial outage into a full one. The
//!   answer is cached for [`READY_TTL`] (one check at a time), so probes
//!   cost nothing downstream however often they come.
//! * `GET /status` (operator token) is the detailed view: the store, the
//!   rule registry (lost tenants), each upstream's health check and every
//!   circuit breaker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::auth::{Principal, Role};
use crate::error::code;
use crate::startup::AppState;

/// How long a readiness answer is reused.
pub const READY_TTL: Duration = Duration::from_secs(1);

/// Longest a readiness or status check waits for the store.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// The routes of this module, on their own state.
pub fn router<S: Clone + Send + Sync + 'static>(app: AppState) -> Router<S> {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(Health {
            app,
            ready: Arc::new(tokio::sync::Mutex::new(None)),
        })
}

#[derive(Clone)]
struct Health {
    app: AppState,
    /// The last readiness answer and when it was computed. An async mutex:
    /// concurrent probes wait for the one check under way instead of each
    /// starting their own.
    ready: Arc<tokio::sync::Mutex<Option<(Instant, bool, Value)>>>,
}

/// What this node needs to serve, checked now.
async fn check(app: &AppState) -> (bool, Value) {
    let store = tokio::time::timeout(STORE_CHECK_TIMEOUT, app.store().ping())
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(error) = &store {
        tracing::warn!(%error, "readiness: the store does not answer");
    }
    let rules_loaded = app.pricing().registry().generation() > 0;
    let ready = store.is_ok() && rules_loaded;
    let body = json!({
        "ready": ready,
        "store": if store.is_ok() { "up" } else { "down" },
        "rules": if rules_loaded { "loaded" } else { "not_loaded" },
    });
    (ready, body)
}

/// `GET /readyz`: 200 when this node can serve, else 503; cached briefly.
async fn readyz(State(health): State<Health>) -> Response {
    let mut cached = health.ready.lock().await;
    let (ready, body) = match &*cached {
        Some((at, ready, body)) if at.elapsed() < READY_TTL => (*ready, body.clone()),
        _ => {
            let (ready, body) = check(&health.app).await;
            *cached = Some((Instant::now(), ready, body.clone()));
            (ready, body)
        }
    };
    drop(cached);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// `GET /status`: the detailed state of the node, for operators.
async fn status(State(health): State<Health>, headers: HeaderMap) -> Response {
    let app = &health.app;
    if let Err(refusal) = operator(app, &headers) {
        return *refusal;
    }
    let (ready, mut body) = check(app).await;
    let u = app.upstreams();
    let (mall, member, product) =
        futures::join!(u.mall.health(), u.member.health(), u.product.health());
    let up = |r: &Result<(), _>| if r.is_ok() { "up" } else { "down" };
    let registry = app.pricing().registry();
    body["ready"] = json!(ready);
    body["store_kind"] = json!(app.store().kind());
    body["rules"] = json!({
        "loaded": registry.generation() > 0,
        "generation": registry.generation(),
        "lost_tenants": registry.lost_tenants(),
    });
    body["upstreams"] = json!({
        "mall": up(&mall),
        "member": up(&member),
        "product": up(&product),
    });
    body["breakers"] = json!(u.guard().status());
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

/// Lets operators through; anyone else gets a coded 401 / 403.
fn operator(app: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let refused = |status: StatusCode, code: &str| {
        let body = json!({ "errors": [{
            "message": "the status needs an operator token",
            "extensions": { "code": code },
        }] });
        let mut response = (status, Json(body)).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        Box::new(response)
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_token)
        .ok_or_else(|| refused(StatusCode::UNAUTHORIZED, code::UNAUTHENTICATED))?;
    match app.authenticator().verify(token) {
        Ok(Principal::Staff {
            role: Role::Operator,
            ..
        }) => Ok(()),
        Ok(_) => Err(refused(StatusCode::FORBIDDEN, code::FORBIDDEN)),
        Err(err) => {
            tracing::info!(reason = %err, "status token refused");
            Err(refused(StatusCode::UNAUTHORIZED, code::UNAUTHENTICATED))
        }
    }
}

//! `POST /payments/notify/{provider}`: payment providers report payments
//! here (see [`crate::payment`] for the signature scheme and the body).
//!
//! Answers: `200 {"effect": "paid" | "duplicate" | "refund_required" |
//! "cancelled"}` once the notification is recorded (a provider stops
//! retrying); `401` for a bad or stale signature, `404` for an unknown
//! order, `422` for a wrong amount or currency, `409` for an order that
//! cannot take a payment yet, `400` for a malformed body, `503` when an
//! upstream failed (the provider retries). Error bodies carry the stable
//! code: `{"error": {"code": "INVALID_SIGNATURE", "message": "…"}}`.
//!
//! In development (where `/dev/token` is served), `POST /dev/pay/{order}`
//! simulates the `demo` provider: see [`simulator_router`].

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::checkout::{CheckoutError, PaymentEffect};
use crate::domain::TenantId;
use crate::payment::{PaymentNotifications, SIGNATURE_HEADER, SimulatedOutcome};
use crate::store::checkout::OrderId;

/// Largest notification body accepted.
const MAX_BODY: usize = 16 * 1024;

/// The notification route, over `notifications`.
pub fn router<S: Clone + Send + Sync + 'static>(notifications: PaymentNotifications) -> Router<S> {
    Router::new()
        .route("/payments/notify/{provider}", post(notify))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(notifications)
}

/// The development payment simulator, `POST /dev/pay/{order}`: sends the
/// `demo` provider's signed notification that the order's external part was
/// paid (`?outcome=failed`: that it failed) and answers like the provider
/// route. Mounted only where development tokens are (they prove nothing
/// either). `?tenant=` names the order's tenant (default: `tenant`).
pub fn simulator_router<S: Clone + Send + Sync + 'static>(
    notifications: PaymentNotifications,
    tenant: TenantId,
) -> Router<S> {
    Router::new()
        .route("/dev/pay/{order}", post(simulate))
        .with_state((notifications, tenant))
}

#[derive(Deserialize)]
struct SimulateQuery {
    tenant: Option<String>,
    outcome: Option<String>,
}

async fn simulate(
    State((notifications, default_tenant)): State<(PaymentNotifications, TenantId)>,
    Path(order): Path<String>,
    Query(query): Query<SimulateQuery>,
) -> Response {
    let result = async {
        let tenant = match query.tenant {
            Some(t) => TenantId::parse(t)?,
            None => default_tenant,
        };
        let order =
            OrderId::parse(order.clone()).map_err(|_| CheckoutError::OrderNotFound(order))?;
        let outcome = match query.outcome.as_deref() {
            None | Some("succeeded") => SimulatedOutcome::Succeeded,
            Some("failed") => SimulatedOutcome::Failed,
            Some(_) => {
                return Err(CheckoutError::BadInput(
                    "outcome must be succeeded or failed".into(),
                ));
            }
        };
        notifications
            .simulate("demo", &tenant, &order, outcome)
            .await
    }
    .await;
    answer(result)
}

async fn notify(
    State(notifications): State<PaymentNotifications>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    answer(notifications.notify(&provider, signature, &body, now).await)
}

/// The provider-facing answer to a notification.
fn answer(result: Result<PaymentEffect, CheckoutError>) -> Response {
    match result {
        Ok(effect) => Json(json!({
            "effect": match effect {
                PaymentEffect::Paid => "paid",
                PaymentEffect::Duplicate => "duplicate",
                PaymentEffect::RefundRequired => "refund_required",
                PaymentEffect::Cancelled => "cancelled",
            }
        }))
        .into_response(),
        Err(error) => {
            let status = match &error {
                CheckoutError::InvalidSignature | CheckoutError::SignatureExpired => {
                    StatusCode::UNAUTHORIZED
                }
                CheckoutError::OrderNotFound(_) => StatusCode::NOT_FOUND,
                CheckoutError::AmountMismatch => StatusCode::UNPROCESSABLE_ENTITY,
                CheckoutError::InvalidTransition { .. } => StatusCode::CONFLICT,
                CheckoutError::BadInput(_) => StatusCode::BAD_REQUEST,
                CheckoutError::Upstream(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (
                status,
                Json(json!({ "error": { "code": error.code(), "message": error.to_string() } })),
            )
                .into_response()
        }
    }
}

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

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::checkout::{CheckoutError, PaymentEffect};
use crate::payment::{PaymentNotifications, SIGNATURE_HEADER};

/// Largest notification body accepted.
const MAX_BODY: usize = 16 * 1024;

/// The notification route, over `notifications`.
pub fn router<S: Clone + Send + Sync + 'static>(notifications: PaymentNotifications) -> Router<S> {
    Router::new()
        .route("/payments/notify/{provider}", post(notify))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(notifications)
}

async fn notify(
    State(notifications): State<PaymentNotifications>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    match notifications.notify(&provider, signature, &body, now).await {
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

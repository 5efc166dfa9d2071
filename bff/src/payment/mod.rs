//! Payment notifications from external providers.
//!
//! A provider `POST`s a notification with a `Payment-Signature:
//! t=<unix seconds>,v1=<hex>` header, where `v1` is HMAC-SHA256 over
//! `"<t>.<raw body>"` with the provider's secret (the scheme Stripe uses).
//! The timestamp must be within the replay window; the signature is compared
//! in constant time; several `v1` entries are accepted (secret rotation).
//! Only then is the body read:
//!
//! ```json
//! {"payment_id": "pay_123", "tenant": "demo", "order_id": "mall-1.ab12…",
//!  "amount": 1290, "currency": "CNY", "status": "succeeded"}
//! ```
//!
//! The order, amount and currency are checked against what the order
//! awaits. A notification delivered k times, in any order, has the effect
//! of one; a payment for an order that expired or was cancelled is recorded
//! as needing a refund (with an outbox event), never reviving the order.

use std::collections::HashMap;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

use crate::checkout::{Checkout, CheckoutError, ExternalPayment, PaymentEffect};
use crate::domain::{Money, TenantId};
use crate::store::checkout::{OrderId, OrderStatus, Scope};

type HmacSha256 = Hmac<Sha256>;

/// Default replay window: five minutes either side.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "Payment-Signature";

/// The body of a notification.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Notification {
    payment_id: String,
    tenant: String,
    order_id: String,
    amount: i64,
    currency: String,
    status: String,
}

/// Checks signatures and applies notifications. Cheap to clone.
#[derive(Clone)]
pub struct PaymentNotifications {
    checkout: Checkout,
    secrets: Arc<HashMap<String, SecretString>>,
    tolerance_secs: i64,
}

impl std::fmt::Debug for PaymentNotifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentNotifications")
            .field("providers", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Signs a body as a provider would: the header value for
/// [`SIGNATURE_HEADER`]. Used by the demo payment simulator and tests.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Parses `t=…,v1=…[,v1=…]`.
fn parse_header(header: &str) -> Option<(i64, Vec<Vec<u8>>)> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "t" => timestamp = Some(v.parse::<i64>().ok()?),
            "v1" => signatures.push(hex::decode(v).ok()?),
            _ => {}
        }
    }
    Some((timestamp?, signatures)).filter(|(_, s)| !s.is_empty())
}

impl PaymentNotifications {
    /// Notifications for `checkout`, with one secret per provider.
    pub fn new(
        checkout: Checkout,
        secrets: HashMap<String, SecretString>,
        tolerance_secs: i64,
    ) -> Self {
        Self {
            checkout,
            secrets: Arc::new(secrets),
            tolerance_secs,
        }
    }

    /// Verifies the signature of `body` from `provider` at `now` (Unix
    /// seconds).
    pub fn verify(
        &self,
        provider: &str,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), CheckoutError> {
        let secret = self
            .secrets
            .get(provider)
            .ok_or(CheckoutError::InvalidSignature)?;
        let (timestamp, signatures) = header
            .and_then(parse_header)
            .ok_or(CheckoutError::InvalidSignature)?;
        if (now - timestamp).abs() > self.tolerance_secs {
            return Err(CheckoutError::SignatureExpired);
        }
        let valid = signatures.iter().any(|candidate| {
            let mut mac = match HmacSha256::new_from_slice(secret.expose_secret().as_bytes()) {
                Ok(mac) => mac,
                Err(_) => return false,
            };
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            // Constant-time comparison.
            mac.verify_slice(candidate).is_ok()
        });
        if valid {
            Ok(())
        } else {
            Err(CheckoutError::InvalidSignature)
        }
    }

    /// Handles one notification: signature, then order, amount and
    /// currency, then the payment's effect (at most once).
    #[tracing::instrument(skip(self, header, body))]
    pub async fn notify(
        &self,
        provider: &str,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<PaymentEffect, CheckoutError> {
        self.verify(provider, header, body, now)?;
        let note: Notification = serde_json::from_slice(body)
            .map_err(|_| CheckoutError::BadInput("the notification body is malformed".into()))?;
        if note.payment_id.is_empty() || note.payment_id.len() > 128 {
            return Err(CheckoutError::BadInput(
                "payment_id must be 1-128 characters".into(),
            ));
        }
        let tenant = TenantId::parse(note.tenant)?;
        let order = OrderId::parse(note.order_id.clone())
            .map_err(|_| CheckoutError::OrderNotFound(note.order_id.clone()))?;
        let amount = Money::from_minor(note.amount).map_err(|_| CheckoutError::AmountMismatch)?;
        let scope = Scope::new(tenant.clone(), order.mall().clone());
        // Unknown order: refused before anything is recorded.
        let view = self.checkout.order_any(&tenant, &order).await?;
        let payment = ExternalPayment {
            provider: provider.to_owned(),
            payment_id: note.payment_id,
            amount,
            currency: note.currency,
        };
        match note.status.as_str() {
            "succeeded" => {
                self.checkout
                    .settle_payment(&scope, &order, Some(&payment))
                    .await
            }
            "failed" => {
                // The external part failed: the order is cancelled and the
                // other parts (points, wallet, coupons, stock) reversed.
                if view.status == OrderStatus::AwaitingPayment {
                    self.checkout
                        .cancel(&tenant, &view.record.member, &order)
                        .await?;
                }
                Ok(PaymentEffect::Cancelled)
            }
            _ => Err(CheckoutError::BadInput(
                "status must be succeeded or failed".into(),
            )),
        }
    }
}

/// What the payment simulator reports to the provider route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimulatedOutcome {
    /// The member paid.
    Succeeded,
    /// The payment failed.
    Failed,
}

impl PaymentNotifications {
    /// The development payment simulator: sends, as `provider` would, a
    /// correctly signed notification that the external part of `order` was
    /// paid (or failed), through the same checks as a real notification.
    /// The payment id is derived from the order, so simulating twice is a
    /// duplicate, not a second payment.
    pub async fn simulate(
        &self,
        provider: &str,
        tenant: &TenantId,
        order: &OrderId,
        outcome: SimulatedOutcome,
    ) -> Result<PaymentEffect, CheckoutError> {
        let secret = self
            .secrets
            .get(provider)
            .ok_or(CheckoutError::InvalidSignature)?;
        let view = self.checkout.order_any(tenant, order).await?;
        let body = serde_json::json!({
            "payment_id": format!("sim-{order}"),
            "tenant": tenant.as_str(),
            "order_id": order.as_str(),
            "amount": view.record.external.minor(),
            "currency": view.record.currency,
            "status": match outcome {
                SimulatedOutcome::Succeeded => "succeeded",
                SimulatedOutcome::Failed => "failed",
            },
        })
        .to_string();
        let now = chrono::Utc::now().timestamp();
        let header = sign(secret.expose_secret(), now, body.as_bytes());
        self.notify(provider, Some(&header), body.as_bytes(), now)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_headers_parse_with_several_v1_entries() {
        let (t, sigs) = parse_header("t=12,v1=00ff,v1=abcd").unwrap();
        assert_eq!(t, 12);
        assert_eq!(sigs, vec![vec![0, 255], vec![0xab, 0xcd]]);
        assert!(parse_header("t=12").is_none());
        assert!(parse_header("v1=00").is_none());
        assert!(parse_header("t=x,v1=00").is_none());
        assert!(parse_header("t=1,v1=zz").is_none());
        assert!(parse_header("garbage").is_none());
    }

    #[test]
    fn a_signature_covers_the_timestamp_and_the_body() {
        let a = sign("s", 1, b"body");
        assert_ne!(a, sign("s", 2, b"body"));
        assert_ne!(a, sign("s", 1, b"bodz"));
        assert_ne!(a, sign("t", 1, b"body"));
        assert!(a.starts_with("t=1,v1="));
    }
}

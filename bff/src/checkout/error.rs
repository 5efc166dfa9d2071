//! Why a checkout, a cancellation or a payment was refused.

use crate::error::{ApiError, code};
use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// A refusal of the checkout capability. Each variant has one stable code
/// ([`CheckoutError::code`]) and a message safe to show.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckoutError {
    /// The request is malformed or names things that do not exist.
    #[error("{0}")]
    BadInput(String),
    /// A SKU has no units left.
    #[error("`{0}` is sold out")]
    SoldOut(String),
    /// The member would buy more of a SKU than its sale allows.
    #[error("`{0}` has a per-member limit and this order would exceed it")]
    PurchaseLimitExceeded(String),
    /// A flash-sale SKU outside its sale's window: it is sold only while
    /// the sale is open, at the sale's price.
    #[error("`{0}` is on a flash sale that is not open now")]
    SaleNotOpen(String),
    /// Fewer points than the order uses.
    #[error("not enough points")]
    InsufficientPoints,
    /// Less wallet balance than the order uses.
    #[error("not enough wallet balance")]
    InsufficientBalance,
    /// The idempotency key was used for a different request.
    #[error("this idempotency key was used for a different request")]
    IdempotencyKeyReused,
    /// The `Idempotency-Key` header names another key than the input.
    #[error("the Idempotency-Key header and input.idempotencyKey must be equal")]
    IdempotencyKeyMismatch,
    /// The first request with this key is still running.
    #[error("a request with this idempotency key is still running; retry shortly")]
    IdempotencyKeyInProgress,
    /// The price could not be computed with every rule; nothing is charged
    /// on such a price.
    #[error(
        "the price cannot be computed right now (a promotion rule is unavailable); retry shortly"
    )]
    PriceDegraded,
    /// No such order for this member.
    #[error("order `{0}` was not found")]
    OrderNotFound(String),
    /// The order is past the point where this is possible.
    #[error("order `{order}` is {status} and cannot be {action}")]
    InvalidTransition {
        /// The order.
        order: String,
        /// Its status.
        status: &'static str,
        /// What was asked (`cancelled`).
        action: &'static str,
    },
    /// A payment callback's signature is missing, malformed or wrong.
    #[error("the payment notification's signature is invalid")]
    InvalidSignature,
    /// A payment callback's timestamp is outside the replay window.
    #[error("the payment notification is too old or from the future")]
    SignatureExpired,
    /// A payment's amount or currency is not what the order awaits.
    #[error("the payment's amount or currency does not match the order")]
    AmountMismatch,
    /// An upstream failed; nothing was left half done.
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    /// The BFF's store failed (logged).
    #[error("the order store is unavailable")]
    Store,
    /// A fault point fired (tests): the checkout stopped as a crash would.
    #[error("the checkout stopped at an injected fault point")]
    Crashed,
}

impl CheckoutError {
    /// The stable code clients switch on.
    pub fn code(&self) -> &'static str {
        match self {
            CheckoutError::BadInput(_) => code::BAD_USER_INPUT,
            CheckoutError::SoldOut(_) => code::SOLD_OUT,
            CheckoutError::PurchaseLimitExceeded(_) => code::PURCHASE_LIMIT_EXCEEDED,
            CheckoutError::SaleNotOpen(_) => code::SALE_NOT_OPEN,
            CheckoutError::InsufficientPoints => code::INSUFFICIENT_POINTS,
            CheckoutError::InsufficientBalance => code::INSUFFICIENT_BALANCE,
            CheckoutError::IdempotencyKeyReused => code::IDEMPOTENCY_KEY_REUSED,
            CheckoutError::IdempotencyKeyInProgress => code::IDEMPOTENCY_KEY_IN_PROGRESS,
            CheckoutError::IdempotencyKeyMismatch => code::IDEMPOTENCY_KEY_MISMATCH,
            CheckoutError::PriceDegraded => code::PRICE_DEGRADED,
            CheckoutError::OrderNotFound(_) => code::ORDER_NOT_FOUND,
            CheckoutError::InvalidTransition { .. } => code::INVALID_TRANSITION,
            CheckoutError::InvalidSignature => code::INVALID_SIGNATURE,
            CheckoutError::SignatureExpired => code::SIGNATURE_EXPIRED,
            CheckoutError::AmountMismatch => code::AMOUNT_MISMATCH,
            CheckoutError::Upstream(_) => code::UPSTREAM_UNAVAILABLE,
            CheckoutError::Store | CheckoutError::Crashed => code::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether a retry with the same key may succeed (the idempotency
    /// record is dropped rather than answering this error for ever).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CheckoutError::Upstream(_)
                // The same key may buy once the sale opens.
                | CheckoutError::SaleNotOpen(_)
                | CheckoutError::Store
                | CheckoutError::PriceDegraded
                | CheckoutError::Crashed
        )
    }

    /// Rebuilds a refusal stored as an idempotent answer (code, message).
    pub(super) fn stored(code_text: &str, message: String) -> Self {
        match code_text {
            code::SOLD_OUT => CheckoutError::SoldOut(message),
            code::PURCHASE_LIMIT_EXCEEDED => CheckoutError::PurchaseLimitExceeded(message),
            code::INSUFFICIENT_POINTS => CheckoutError::InsufficientPoints,
            code::INSUFFICIENT_BALANCE => CheckoutError::InsufficientBalance,
            _ => CheckoutError::BadInput(message),
        }
    }

    /// The part of a refusal kept in an idempotency record.
    pub(super) fn detail(&self) -> String {
        match self {
            CheckoutError::SoldOut(sku) | CheckoutError::PurchaseLimitExceeded(sku) => sku.clone(),
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for CheckoutError {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "checkout store failure");
        CheckoutError::Store
    }
}

impl From<crate::domain::InvalidInput> for CheckoutError {
    fn from(err: crate::domain::InvalidInput) -> Self {
        CheckoutError::BadInput(err.to_string())
    }
}

impl From<CheckoutError> for ApiError {
    fn from(err: CheckoutError) -> Self {
        match err {
            CheckoutError::Upstream(cause) => ApiError::Upstream(cause),
            other => ApiError::Coded {
                code: other.code(),
                message: other.to_string(),
            },
        }
    }
}

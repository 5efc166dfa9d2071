//! Errors as clients see them.
//!
//! Every error a client can receive carries one of the stable codes in
//! [`code`] in `extensions.code`, and a message that is safe to show.
//! Internal causes (upstream bodies, I/O errors) are logged where they
//! happen and never returned.

use async_graphql::ErrorExtensions;

use crate::domain::InvalidInput;
use crate::upstream::UpstreamError;

/// The stable, machine-readable error codes of the API. Client apps switch
/// on these; never rename one.
pub mod code {
    /// No valid token was presented where one is required.
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// The token is valid but may not do this.
    pub const FORBIDDEN: &str = "FORBIDDEN";
    /// An argument is malformed or out of range.
    pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
    /// The addressed object does not exist (for this tenant).
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// An upstream service failed or is down (or its circuit breaker is
    /// open).
    pub const UPSTREAM_UNAVAILABLE: &str = "UPSTREAM_UNAVAILABLE";
    /// An upstream service did not answer within its timeout or the
    /// request's budget.
    pub const UPSTREAM_TIMEOUT: &str = "UPSTREAM_TIMEOUT";
    /// The BFF's own store (Redis) cannot be reached; retry shortly.
    pub const STORE_UNAVAILABLE: &str = "STORE_UNAVAILABLE";
    /// The request body is not a GraphQL document.
    pub const GRAPHQL_PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
    /// The document does not validate against the schema.
    pub const GRAPHQL_VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
    /// The query nests deeper than the configured limit.
    pub const QUERY_TOO_DEEP: &str = "QUERY_TOO_DEEP";
    /// The query costs more than the configured complexity limit.
    pub const QUERY_TOO_COMPLEX: &str = "QUERY_TOO_COMPLEX";
    /// The query uses more aliases than allowed.
    pub const TOO_MANY_ALIASES: &str = "TOO_MANY_ALIASES";
    /// The HTTP request is not a GraphQL request (bad JSON, bad method).
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    /// The request body is larger than allowed.
    pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
    /// The request body was not received within the server's body read timeout.
    pub const REQUEST_TIMEOUT: &str = "REQUEST_TIMEOUT";
    /// A POST whose body is not `application/json` (forms, multipart and
    /// plain text are refused: browsers send those cross-site).
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "UNSUPPORTED_MEDIA_TYPE";
    /// The `Accept` header allows no media type the endpoint answers with.
    pub const NOT_ACCEPTABLE: &str = "NOT_ACCEPTABLE";
    /// The HTTP method is not allowed for this request (a mutation over
    /// GET; a method other than GET or POST).
    pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
    /// A batched request holds more operations than allowed.
    pub const BATCH_TOO_LARGE: &str = "BATCH_TOO_LARGE";
    /// The document has more tokens than allowed.
    pub const QUERY_TOO_LARGE: &str = "QUERY_TOO_LARGE";
    /// The document uses more directives than allowed.
    pub const TOO_MANY_DIRECTIVES: &str = "TOO_MANY_DIRECTIVES";
    /// The persisted query's hash is unknown: send the query text with it.
    pub const PERSISTED_QUERY_NOT_FOUND: &str = "PERSISTED_QUERY_NOT_FOUND";
    /// Persisted queries (or this version of them) are not served.
    pub const PERSISTED_QUERY_NOT_SUPPORTED: &str = "PERSISTED_QUERY_NOT_SUPPORTED";
    /// The persisted query's hash is not the sha256 of its text.
    pub const PERSISTED_QUERY_HASH_MISMATCH: &str = "PERSISTED_QUERY_HASH_MISMATCH";
    /// Safelist-only mode: the operation is not in the safelist.
    pub const PERSISTED_QUERY_NOT_IN_LIST: &str = "PERSISTED_QUERY_NOT_IN_LIST";
    /// A promotion rule whose policy is fail-closed failed, so no price can
    /// be given.
    pub const RULE_FAILED: &str = "RULE_FAILED";
    /// The uploaded binary is not WebAssembly or cannot be used.
    pub const INVALID_COMPONENT: &str = "INVALID_COMPONENT";
    /// The component does not implement `mall:promotion/rule@1.0.0`.
    pub const WRONG_WORLD: &str = "WRONG_WORLD";
    /// The uploaded component is larger than allowed.
    pub const COMPONENT_TOO_LARGE: &str = "COMPONENT_TOO_LARGE";
    /// The component is within the size limit but too costly to compile
    /// (too many functions, locals, tables or too much memory declared).
    pub const COMPONENT_TOO_COMPLEX: &str = "COMPONENT_TOO_COMPLEX";
    /// The component traps while it is instantiated (in a start function
    /// or an initialiser), so it can never run.
    pub const RULE_START_TRAPPED: &str = "RULE_START_TRAPPED";
    /// The rule engine has no room for this work right now (its queue or
    /// this tenant's share of it is full); retry shortly.
    pub const ENGINE_BUSY: &str = "ENGINE_BUSY";
    /// The rule refused the deployment's config.
    pub const INVALID_RULE_CONFIG: &str = "INVALID_RULE_CONFIG";
    /// Too many requests of this kind at once; retry shortly.
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// The node is serving as many requests as it may; retry after
    /// `Retry-After` (HTTP 503).
    pub const OVERLOADED: &str = "OVERLOADED";
    /// The object changed concurrently; retry.
    pub const CONFLICT: &str = "CONFLICT";
    /// Something failed inside the BFF; details are in its logs.
    pub const INTERNAL_SERVER_ERROR: &str = "INTERNAL_SERVER_ERROR";
    /// A SKU in the order has no units left.
    pub const SOLD_OUT: &str = "SOLD_OUT";
    /// The member would buy more of a flash-sale SKU than allowed.
    pub const PURCHASE_LIMIT_EXCEEDED: &str = "PURCHASE_LIMIT_EXCEEDED";
    /// A flash-sale SKU bought outside its sale's window (before it opens
    /// or after it closes).
    pub const SALE_NOT_OPEN: &str = "SALE_NOT_OPEN";
    /// The member has fewer points than the order uses.
    pub const INSUFFICIENT_POINTS: &str = "INSUFFICIENT_POINTS";
    /// The member's wallet balance is less than the order uses.
    pub const INSUFFICIENT_BALANCE: &str = "INSUFFICIENT_BALANCE";
    /// The idempotency key was already used for a different request.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
    /// The first request with this idempotency key is still running.
    pub const IDEMPOTENCY_KEY_IN_PROGRESS: &str = "IDEMPOTENCY_KEY_IN_PROGRESS";
    /// The `Idempotency-Key` header and the input's `idempotencyKey`
    /// differ.
    pub const IDEMPOTENCY_KEY_MISMATCH: &str = "IDEMPOTENCY_KEY_MISMATCH";
    /// The price was computed without a rule; no order is made on it.
    pub const PRICE_DEGRADED: &str = "PRICE_DEGRADED";
    /// No such order for this member.
    pub const ORDER_NOT_FOUND: &str = "ORDER_NOT_FOUND";
    /// The order's status does not allow this change.
    pub const INVALID_TRANSITION: &str = "INVALID_TRANSITION";
    /// A payment notification's signature is missing or wrong.
    pub const INVALID_SIGNATURE: &str = "INVALID_SIGNATURE";
    /// A payment notification's timestamp is outside the replay window.
    pub const SIGNATURE_EXPIRED: &str = "SIGNATURE_EXPIRED";
    /// A payment's amount or currency does not match the order.
    pub const AMOUNT_MISMATCH: &str = "AMOUNT_MISMATCH";
}

/// An error raised by a resolver.
///
/// Deliberately not `Display`: async-graphql converts anything `Display`
/// into an error *without* a code, so keeping this type out of that blanket
/// conversion makes `?` in a resolver always go through [`From`] below and
/// always carry the stable code.
#[derive(Debug)]
pub enum ApiError {
    /// The request needs a member token.
    Unauthenticated,
    /// The token may not do this.
    Forbidden(&'static str),
    /// An argument is invalid.
    BadInput(InvalidInput),
    /// The object does not exist for this tenant.
    NotFound {
        /// Kind of object.
        what: &'static str,
        /// The id the client asked for.
        id: String,
    },
    /// An upstream failed; the cause was logged by the upstream client.
    Upstream(UpstreamError),
    /// A fail-closed promotion rule failed.
    RuleFailed {
        /// `name@version` of the rule.
        rule: String,
    },
    /// Any other coded refusal (rule registry, store).
    Coded {
        /// Stable code.
        code: &'static str,
        /// Message safe to show.
        message: String,
    },
}

impl ApiError {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated => code::UNAUTHENTICATED,
            ApiError::Forbidden(_) => code::FORBIDDEN,
            ApiError::BadInput(_) => code::BAD_USER_INPUT,
            ApiError::NotFound { .. } => code::NOT_FOUND,
            ApiError::Upstream(UpstreamError::Timeout(_)) => code::UPSTREAM_TIMEOUT,
            ApiError::Upstream(_) => code::UPSTREAM_UNAVAILABLE,
            ApiError::RuleFailed { .. } => code::RULE_FAILED,
            ApiError::Coded { code, .. } => code,
        }
    }

    /// The message shown to the client.
    pub fn message(&self) -> String {
        match self {
            ApiError::Unauthenticated => {
                "this field needs a member token (Authorization: Bearer <JWT>)".to_owned()
            }
            ApiError::Forbidden(why) => (*why).to_owned(),
            ApiError::BadInput(err) => err.to_string(),
            ApiError::NotFound { what, id } => format!("{what} `{id}` was not found"),
            ApiError::Upstream(err) => err.to_string(),
            ApiError::RuleFailed { rule } => {
                format!("promotion rule {rule} failed and prices cannot be computed without it")
            }
            ApiError::Coded { message, .. } => message.clone(),
        }
    }
}

impl From<InvalidInput> for ApiError {
    fn from(err: InvalidInput) -> Self {
        ApiError::BadInput(err)
    }
}

impl From<crate::pricing::registry::RegistryError> for ApiError {
    fn from(err: crate::pricing::registry::RegistryError) -> Self {
        match &err {
            crate::pricing::registry::RegistryError::Store(cause) => {
                tracing::error!(error = %cause, "rule registry store failure");
                return ApiError::Coded {
                    code: code::STORE_UNAVAILABLE,
                    message: "the rule registry's store is unavailable; retry shortly".into(),
                };
            }
            crate::pricing::registry::RegistryError::Internal(cause) => {
                tracing::error!(error = %cause, "rule registry failure");
                return ApiError::Coded {
                    code: code::INTERNAL_SERVER_ERROR,
                    message: "internal error".into(),
                };
            }
            _ => {}
        }
        ApiError::Coded {
            code: err.code(),
            message: err.to_string(),
        }
    }
}

impl From<UpstreamError> for ApiError {
    fn from(err: UpstreamError) -> Self {
        ApiError::Upstream(err)
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(err: ApiError) -> Self {
        let mut error = async_graphql::Error::new(err.message());
        error = error.extend_with(|_, ext| {
            ext.set("code", err.code());
            if let ApiError::Upstream(cause) = &err {
                ext.set("upstream", cause.upstream());
            }
            if let ApiError::RuleFailed { rule } = &err {
                ext.set("rule", rule.as_str());
            }
        });
        error
    }
}

/// Builds a client error with a code, for the few errors not raised
/// through [`ApiError`] (limits, transport).
pub fn coded(code: &'static str, message: impl Into<String>) -> async_graphql::ServerError {
    let mut err = async_graphql::ServerError::new(message, None);
    let mut ext = async_graphql::ErrorExtensionValues::default();
    ext.set("code", code);
    err.extensions = Some(ext);
    err
}

/// Result of internal functions that fail with a client-visible error.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The request body took longer than `server.body_read_timeout_ms`: the
/// error a request body yields when the server cuts a slow client off, so
/// the handler reading it can answer `408 REQUEST_TIMEOUT`.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
pub struct BodyTimeout;

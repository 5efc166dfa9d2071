//! `POST /admin/cache/invalidate`: an operator drops one cached record of
//! their tenant on every node.
//!
//! Body: `{"kind": "mall" | "store" | "product" | "listing" | "flash_sale",
//! "key": "<id>"}` (a mall id for `listing` and `flash_sale`). The record
//! is deleted from the shared level at once and every node drops it from
//! its in-process level on the store's invalidation event (within a
//! second). Answers `200 {"invalidated": {"kind", "key"}}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Principal, Role};
use crate::cache::Kind;
use crate::domain::{MallId, ProductId, StoreId};
use crate::error::code;
use crate::graphql;
use crate::startup::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Invalidate {
    kind: String,
    key: String,
}

fn coded(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })),
    )
        .into_response()
}

/// Whether `key` is a well-formed id of a record of `kind`.
fn valid_key(kind: Kind, key: &str) -> bool {
    match kind {
        Kind::Mall | Kind::Listing | Kind::FlashSale => MallId::parse(key).is_ok(),
        Kind::Store => StoreId::parse(key).is_ok(),
        Kind::Product => ProductId::parse(key).is_ok(),
    }
}

/// The handler.
pub async fn invalidate(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let principal = match graphql::http::authenticate(&app, &headers) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let tenant = match principal {
        Principal::Staff {
            tenant,
            role: Role::Operator,
            ..
        } => tenant,
        Principal::Anonymous { .. } => {
            return coded(
                StatusCode::UNAUTHORIZED,
                code::UNAUTHENTICATED,
                "cache invalidation needs an operator token",
            );
        }
        _ => {
            return coded(
                StatusCode::FORBIDDEN,
                code::FORBIDDEN,
                "cache invalidation needs an operator token",
            );
        }
    };
    let Ok(request) = serde_json::from_slice::<Invalidate>(&body) else {
        return coded(
            StatusCode::BAD_REQUEST,
            code::BAD_USER_INPUT,
            "expected a JSON body {\"kind\": …, \"key\": …}",
        );
    };
    let Some(kind) = Kind::parse(&request.kind) else {
        return coded(
            StatusCode::BAD_REQUEST,
            code::BAD_USER_INPUT,
            "kind must be mall, store, product, listing or flash_sale",
        );
    };
    if !valid_key(kind, &request.key) {
        return coded(
            StatusCode::BAD_REQUEST,
            code::BAD_USER_INPUT,
            "key is not a valid id of that kind",
        );
    }
    match app.caches().invalidate(kind, &tenant, &request.key).await {
        Ok(()) => {
            tracing::info!(%tenant, kind = kind.name(), key = %request.key, "cache record invalidated");
            Json(json!({ "invalidated": { "kind": kind.name(), "key": request.key } }))
                .into_response()
        }
        Err(error) => {
            tracing::error!(%error, "cache invalidation failed");
            coded(
                StatusCode::SERVICE_UNAVAILABLE,
                code::INTERNAL_SERVER_ERROR,
                "the shared store is unavailable; nothing was invalidated",
            )
        }
    }
}

//! The `/graphql` endpoint over HTTP (GET and POST).
//!
//! Transport errors get the same error shape as GraphQL errors, so a client
//! always finds `errors[].extensions.code`: a malformed body is `400
//! BAD_REQUEST`, a too large one `413 PAYLOAD_TOO_LARGE`, and a presented
//! but invalid token `401 UNAUTHENTICATED` (no token at all is fine: the
//! request is anonymous).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::limits::ensure_codes;
use super::{Loaders, RequestContext};
use crate::auth::Principal;
use crate::domain::TenantId;
use crate::error::code;
use crate::startup::AppState;

/// Header naming the tenant of an anonymous request (optional; the default
/// tenant otherwise). Ignored when a token is presented: the token decides.
pub const TENANT_HEADER: &str = "x-tenant-id";

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, axum::Json(body)).into_response()
}

/// Works out who is asking from the `Authorization` header.
pub fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Principal, Box<Response>> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        let tenant = match headers.get(TENANT_HEADER) {
            None => app.default_tenant().clone(),
            Some(raw) => raw
                .to_str()
                .ok()
                .and_then(|raw| TenantId::parse(raw).ok())
                .ok_or_else(|| {
                    Box::new(error_response(
                        StatusCode::BAD_REQUEST,
                        code::BAD_USER_INPUT,
                        "x-tenant-id is not a valid tenant id",
                    ))
                })?,
        };
        return Ok(Principal::Anonymous { tenant });
    };
    let unauthenticated = |reason: &str| {
        let mut resp = error_response(
            StatusCode::UNAUTHORIZED,
            code::UNAUTHENTICATED,
            "the bearer token is missing, malformed, expired or not ours",
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        tracing::info!(reason, "token refused");
        Box::new(resp)
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| unauthenticated("not a bearer token"))?;
    app.authenticator()
        .verify(token)
        .map_err(|err| unauthenticated(&err.to_string()))
}

/// `GET|POST /graphql`.
pub async fn graphql(
    State(app): State<AppState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let principal = match authenticate(&app, &headers) {
        Ok(principal) => principal,
        Err(resp) => return *resp,
    };
    let mut request = match method {
        Method::GET => {
            match async_graphql::http::parse_query_string(query.as_deref().unwrap_or_default()) {
                Ok(req) => req,
                Err(_) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        code::BAD_REQUEST,
                        "expected ?query=...&variables=... in the URL",
                    );
                }
            }
        }
        _ => {
            let body = match body {
                Ok(body) => body,
                Err(rejection) => {
                    let (status, code) = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        (StatusCode::PAYLOAD_TOO_LARGE, code::PAYLOAD_TOO_LARGE)
                    } else {
                        (StatusCode::BAD_REQUEST, code::BAD_REQUEST)
                    };
                    return error_response(status, code, &rejection.body_text());
                }
            };
            match serde_json::from_slice::<async_graphql::Request>(&body) {
                Ok(req) => req,
                Err(_) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        code::BAD_REQUEST,
                        "expected a JSON body {\"query\": ..., \"variables\": ...}",
                    );
                }
            }
        }
    };

    if let Err(err) = app.documents().prepare(&mut request) {
        app.metrics().graphql_request(false);
        return axum::Json(async_graphql::Response::from_errors(vec![err])).into_response();
    }
    let loaders = Loaders::new(app.upstreams(), &principal, app.dataloader_delay());
    let ctx = RequestContext {
        principal,
        loaders,
        upstreams: Arc::clone(app.upstreams_arc()),
    };
    let mut response = app.schema().execute(request.data(ctx)).await;
    ensure_codes(&mut response);
    app.metrics().graphql_request(response.errors.is_empty());

    let mut resp = axum::Json(&response).into_response();
    // Cards are personal: never let a shared cache keep them.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

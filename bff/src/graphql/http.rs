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
use crate::error::code;
use crate::startup::AppState;

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, axum::Json(body)).into_response()
}

/// Works out who is asking from the `Authorization` header.
pub fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Principal, Box<Response>> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        // Anonymous: the public data of the default tenant, nothing else.
        return Ok(Principal::Anonymous {
            tenant: app.default_tenant().clone(),
        });
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
        .and_then(crate::auth::bearer_token)
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
    let channel = match headers
        .get("x-channel")
        .map(|v| v.to_str().unwrap_or_default())
    {
        None | Some("app") => crate::pricing::model::Channel::App,
        Some("mini-program") => crate::pricing::model::Channel::MiniProgram,
        Some("web") => crate::pricing::model::Channel::Web,
        Some("pos") => crate::pricing::model::Channel::Pos,
        Some(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                code::BAD_REQUEST,
                "X-Channel must be app, mini-program, web or pos",
            );
        }
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
                    return if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        error_response(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            code::PAYLOAD_TOO_LARGE,
                            "the request body is larger than allowed",
                        )
                    } else {
                        error_response(
                            StatusCode::BAD_REQUEST,
                            code::BAD_REQUEST,
                            "the request body could not be read",
                        )
                    };
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
    if method == Method::GET && has_mutation(&mut request) {
        // A GET can be triggered cross-site by a link or an image; changes
        // need a POST with a JSON body.
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            code::BAD_REQUEST,
            "mutations must be sent with POST",
        );
    }
    let loaders = Loaders::new(app.upstreams_arc(), &principal, app.dataloader_delay());
    let ctx = RequestContext {
        principal,
        loaders,
        upstreams: Arc::clone(app.upstreams_arc()),
        pricing: app.pricing().clone(),
        channel,
        prices: crate::product::PriceBook::default(),
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

/// Whether the document holds a mutation.
fn has_mutation(request: &mut async_graphql::Request) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    match request.parsed_query() {
        Ok(doc) => match &doc.operations {
            DocumentOperations::Single(op) => op.node.ty == OperationType::Mutation,
            DocumentOperations::Multiple(ops) => {
                ops.values().any(|op| op.node.ty == OperationType::Mutation)
            }
        },
        Err(_) => false,
    }
}

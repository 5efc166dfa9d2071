//! HTTP routes beside `/graphql`: the playground, health, readiness,
//! metrics and (in development) demo tokens.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use rust_embed::RustEmbed;
use serde::Deserialize;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::auth::Role;
use crate::domain::{MemberId, TenantId};
use crate::error::code;
use crate::graphql;
use crate::startup::AppState;

/// The web pages, embedded in the binary so `bff serve` works from any
/// directory and with no internet (no CDN).
#[derive(RustEmbed)]
#[folder = "../web/"]
#[include = "playground/*"]
#[include = "playground/**/*"]
struct WebAssets;

/// All routes of the app.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings().graphql.max_body_bytes;
    let mut router = Router::new()
        .route(
            "/graphql",
            get(graphql::http::graphql)
                .post(graphql::http::graphql)
                .layer(axum::extract::DefaultBodyLimit::max(max_body)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if state.settings().graphql.playground {
        router = router
            .route("/", get(|| async { Redirect::temporary("/playground/") }))
            .route(
                "/playground",
                get(|| async { Redirect::permanent("/playground/") }),
            )
            .route(
                "/playground/",
                get(|| async { asset_response("playground/index.html") }),
            )
            .route("/playground/{*path}", get(playground_asset));
    }
    if state.settings().dev_tokens_allowed() {
        router = router.route("/dev/token", get(dev_token));
    }
    router
        .layer(TraceLayer::new_for_http())
        // A panic in a handler is a bug; the client gets a coded 500 and
        // the server keeps serving.
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "errors": [{ "message": "internal error", "extensions": { "code": code::INTERNAL_SERVER_ERROR } }] })),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready once every upstream answers its health check.
async fn readyz(State(app): State<AppState>) -> Response {
    let u = app.upstreams();
    let (mall, member, product) =
        futures::join!(u.mall.health(), u.member.health(), u.product.health());
    let status = |r: &Result<(), _>| if r.is_ok() { "up" } else { "down" };
    let ready = mall.is_ok() && member.is_ok() && product.is_ok();
    let body = json!({
        "ready": ready,
        "upstreams": { "mall": status(&mall), "member": status(&member), "product": status(&product) },
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics().encode(),
    )
        .into_response()
}

async fn playground_asset(Path(path): Path<String>) -> Response {
    asset_response(&format!("playground/{path}"))
}

fn asset_response(path: &str) -> Response {
    match WebAssets::get(path) {
        Some(file) => {
            let mime = mime_guess::from_path(path).first_or_octet_stream();
            (
                [(header::CONTENT_TYPE, mime.as_ref().to_owned())],
                file.data.into_owned(),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    member: String,
    tenant: Option<String>,
}

/// `GET /dev/token?member=member-1`: a member token signed with the public
/// development key, so the playground can offer a one-click demo token.
/// The route exists only while the BFF runs in development *with* that
/// public key: a node holding a real key never mints tokens over HTTP.
async fn dev_token(State(app): State<AppState>, Query(q): Query<TokenQuery>) -> Response {
    let bad = |message: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "errors": [{ "message": message, "extensions": { "code": code::BAD_USER_INPUT } }] })),
        )
            .into_response()
    };
    let member = match MemberId::parse(q.member) {
        Ok(m) => m,
        Err(e) => return bad(e.to_string()),
    };
    let tenant = match q.tenant.map(TenantId::parse).transpose() {
        Ok(t) => t.unwrap_or_else(|| app.default_tenant().clone()),
        Err(e) => return bad(e.to_string()),
    };
    match app
        .authenticator()
        .issue(&tenant, member.as_str(), Role::Member, None)
    {
        Ok(token) => Json(json!({ "token": token })).into_response(),
        Err(e) => bad(e.to_string()),
    }
}

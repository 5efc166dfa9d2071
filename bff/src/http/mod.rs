//! HTTP routes beside `/graphql`: the playground, the shop demo page,
//! health, metrics, payment notifications, cache invalidation and (in
//! development) demo tokens and the payment simulator; readiness and the
//! operator status in [`health`]; admission (rate and concurrency limits)
//! in [`admission`]; and, in [`server`], the HTTP server that carries them,
//! with its connection limits.

pub mod admission;
pub mod cache_admin;
pub mod health;
pub mod payments;
pub mod server;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
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
#[include = "console/*"]
#[include = "shop/*"]
struct WebAssets;

/// All routes of the app.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings().graphql.max_body_bytes;
    // The API, behind the node's concurrency limit; probes, metrics, pages
    // and payment notifications are not.
    let api = Router::new()
        .route(
            "/graphql",
            get(graphql::http::graphql)
                .post(graphql::http::graphql)
                .fallback(graphql::http::method_not_allowed)
                .layer(axum::extract::DefaultBodyLimit::max(max_body)),
        )
        .route("/rules/components", post(upload_component))
        .route(
            "/admin/cache/invalidate",
            post(cache_admin::invalidate).layer(axum::extract::DefaultBodyLimit::max(4096)),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admission::shed_when_full,
        ));
    let mut router = Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    if state.settings().playground_enabled() {
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
            .route("/playground/{*path}", get(playground_asset))
            // The member-facing demo page (phone-sized): it shows the API
            // to a newcomer, so it is served where the playground is.
            .route("/shop", get(|| async { Redirect::permanent("/shop/") }))
            .route(
                "/shop/",
                get(|| async { asset_response("shop/index.html") }),
            )
            .route("/shop/{*path}", get(shop_asset));
    }
    if state.settings().rules.console {
        router = router
            .route(
                "/console",
                get(|| async { Redirect::permanent("/console/") }),
            )
            .route(
                "/console/",
                get(|| async { asset_response("console/index.html") }),
            )
            .route("/console/{*path}", get(console_asset));
    }
    if state.settings().dev_tokens_allowed() {
        router = router
            .route("/dev/token", get(dev_token))
            .merge(payments::simulator_router(
                state.payments().clone(),
                state.default_tenant().clone(),
            ));
    }
    router = router.merge(payments::router(state.payments().clone()));
    router = router.merge(health::router(state.clone()));
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

/// `/metrics`: open in development; in production (unless
/// `metrics.public`) for the configured scraper token or an operator.
async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if !app.settings().metrics_public()
        && let Err(refusal) = metrics_access(&app, &headers)
    {
        return *refusal;
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics().encode(),
    )
        .into_response()
}

/// Whether the request may read `/metrics` when they are not public.
fn metrics_access(app: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_token);
    let refused = |status, code, message| {
        let mut response = coded_response(status, code, message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        Box::new(response)
    };
    let Some(token) = presented else {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            code::UNAUTHENTICATED,
            "metrics need the metrics token or an operator token",
        ));
    };
    if let Some(expected) = &app.settings().metrics.bearer_token {
        // Comparing digests keeps the comparison's time independent of
        // how much of the secret a guess gets right.
        use secrecy::ExposeSecret;
        use sha2::{Digest, Sha256};
        if Sha256::digest(token.as_bytes()) == Sha256::digest(expected.expose_secret().as_bytes()) {
            return Ok(());
        }
    }
    match app.authenticator().verify(token) {
        Ok(crate::auth::Principal::Staff {
            role: Role::Operator,
            ..
        }) => Ok(()),
        Ok(_) => Err(refused(
            StatusCode::FORBIDDEN,
            code::FORBIDDEN,
            "metrics need the metrics token or an operator token",
        )),
        Err(err) => {
            tracing::info!(reason = %err, "metrics token refused");
            Err(refused(
                StatusCode::UNAUTHORIZED,
                code::UNAUTHENTICATED,
                "metrics need the metrics token or an operator token",
            ))
        }
    }
}

async fn console_asset(Path(path): Path<String>) -> Response {
    asset_response(&format!("console/{path}"))
}

async fn shop_asset(Path(path): Path<String>) -> Response {
    asset_response(&format!("shop/{path}"))
}

fn coded_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })),
    )
        .into_response()
}

/// A refusal sent before the request body was read in full: the connection
/// is closed after it, so the client never reuses a connection that still
/// carries the rest of its upload.
fn unread(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// `POST /rules/components`: the body is a component (or a core module
/// carrying its component type) for the token's tenant. Answers the sha256
/// to publish it under. A rule-author token is required.
async fn upload_component(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let principal = match graphql::http::authenticate(&app, &headers) {
        Ok(p) => p,
        Err(resp) => return unread(*resp),
    };
    let (tenant, author) = match principal {
        crate::auth::Principal::Staff {
            tenant,
            role: Role::RuleAuthor,
            subject,
        } => (tenant, subject),
        crate::auth::Principal::Anonymous { .. } => {
            return unread(coded_response(
                StatusCode::UNAUTHORIZED,
                code::UNAUTHENTICATED,
                "uploading a rule needs a rule-author token",
            ));
        }
        _ => {
            return unread(coded_response(
                StatusCode::FORBIDDEN,
                code::FORBIDDEN,
                "uploading a rule needs a rule-author token",
            ));
        }
    };
    // The rates are counted before the body is read.
    if let Err(e) = app
        .pricing()
        .registry()
        .admit_upload(tenant.as_str(), &author)
    {
        return unread(coded_response(
            StatusCode::TOO_MANY_REQUESTS,
            e.code(),
            &e.to_string(),
        ));
    }
    // The body is read only once the token is known to be a rule author's.
    let limit = crate::pricing::host::MAX_COMPONENT_BYTES;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) if is_length_limit(&e) => {
            return unread(coded_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::COMPONENT_TOO_LARGE,
                "the component is larger than 4 MiB",
            ));
        }
        Err(_) => {
            return unread(coded_response(
                StatusCode::BAD_REQUEST,
                code::BAD_REQUEST,
                "the body could not be read",
            ));
        }
    };
    match app
        .pricing()
        .registry()
        .upload(tenant.as_str(), body.to_vec())
        .await
    {
        Ok((sha256, size)) => (
            StatusCode::CREATED,
            Json(json!({ "sha256": sha256, "size": size })),
        )
            .into_response(),
        Err(crate::pricing::registry::RegistryError::Store(e)) => {
            tracing::error!(error = %e, "component upload failed");
            coded_response(
                StatusCode::SERVICE_UNAVAILABLE,
                code::STORE_UNAVAILABLE,
                "the rule registry's store is unavailable; retry shortly",
            )
        }
        Err(crate::pricing::registry::RegistryError::Internal(e)) => {
            tracing::error!(error = %e, "component upload failed");
            coded_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::INTERNAL_SERVER_ERROR,
                "internal error",
            )
        }
        Err(e @ crate::pricing::registry::RegistryError::Busy) => {
            coded_response(StatusCode::TOO_MANY_REQUESTS, e.code(), &e.to_string())
        }
        Err(e) => coded_response(StatusCode::UNPROCESSABLE_ENTITY, e.code(), &e.to_string()),
    }
}

/// Whether reading a body failed on its length limit.
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

async fn playground_asset(Path(path): Path<String>) -> Response {
    asset_response(&format!("playground/{path}"))
}

/// The Content-Security-Policy of the web pages: everything they load
/// comes from this server (GraphiQL and React are vendored), nothing may
/// frame them, and no inline script runs. Inline styles are allowed
/// because GraphiQL and CodeMirror set them at run time.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// A web page or one of its assets, with the pages' security headers.
fn asset_response(path: &str) -> Response {
    let mut response = match WebAssets::get(path) {
        Some(file) => {
            let mime = mime_guess::from_path(path).first_or_octet_stream();
            (
                [(header::CONTENT_TYPE, mime.as_ref().to_owned())],
                file.data.into_owned(),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

#[derive(Deserialize)]
struct TokenQuery {
    member: Option<String>,
    tenant: Option<String>,
    /// `rule_author` or `operator` for a staff token (then `subject`).
    role: Option<String>,
    subject: Option<String>,
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
    let tenant = match q.tenant.map(TenantId::parse).transpose() {
        Ok(t) => t.unwrap_or_else(|| app.default_tenant().clone()),
        Err(e) => return bad(e.to_string()),
    };
    let (subject, role) = match q.role.as_deref() {
        None | Some("member") => match q.member.map(MemberId::parse) {
            Some(Ok(m)) => (m.as_str().to_owned(), Role::Member),
            Some(Err(e)) => return bad(e.to_string()),
            None => return bad("member is required".into()),
        },
        Some(role @ ("rule_author" | "operator")) => {
            let subject = q.subject.unwrap_or_else(|| "author-1".into());
            if subject.is_empty() || subject.len() > 64 || subject.chars().any(char::is_control) {
                return bad("subject must be 1 to 64 printable characters".into());
            }
            let role = if role == "operator" {
                Role::Operator
            } else {
                Role::RuleAuthor
            };
            (subject, role)
        }
        Some(_) => return bad("role must be member, rule_author or operator".into()),
    };
    match app.authenticator().issue(&tenant, &subject, role, None) {
        Ok(token) => Json(json!({ "token": token })).into_response(),
        Err(e) => bad(e.to_string()),
    }
}

//! The `/graphql` endpoint over HTTP, as the GraphQL-over-HTTP
//! specification describes it.
//!
//! * **Requests.** GET carries a query in the URL (`query`, `variables`,
//!   `operationName`, `extensions`) and never runs a mutation (a link or an
//!   image could trigger it cross-site): the *selected* operation being a
//!   mutation is answered 405 with `Allow: POST`. POST must be
//!   `application/json` — forms, multipart and plain text are refused with
//!   415, since browsers send those cross-site without asking. A POST body
//!   may be a JSON array of requests (Apollo's `BatchHttpLink`), up to
//!   `graphql.max_batch`, answered by an array.
//! * **Responses.** `application/graphql-response+json` when the client
//!   accepts it (then a request error — a document that does not parse or
//!   validate — is HTTP 400 and has no `data`), else `application/json`
//!   (HTTP 200 for every well-formed GraphQL request). `data` is completed
//!   as the specification requires (see [`super::complete`]); errors come
//!   first, one line each, de-duplicated and bounded.
//! * **Transport errors** have the same shape, so a client always finds
//!   `errors[].extensions.code`: a malformed body is `400 BAD_REQUEST`, a
//!   too large one `413 PAYLOAD_TOO_LARGE`, one sent too slowly
//!   `408 REQUEST_TIMEOUT`, and a presented but invalid
//!   token `401 UNAUTHENTICATED` (no token at all is fine: the request is
//!   anonymous).
//! * **Budget.** A request runs under a deadline: the configured request
//!   budget, or less when the client sends `X-Request-Budget-Ms` (a
//!   malformed value is `400 BAD_REQUEST`). Every upstream call of the
//!   request waits at most what is left of it
//!   ([`crate::upstream::resilience`]).
//! * **Documents** are resolved through persisted queries (APQ and the
//!   safelist, [`super::persisted`]) and checked by the document guard
//!   before anything recursive runs on them.

use std::sync::Arc;

use async_graphql::parser::types::OperationType;
use async_graphql::{ServerError, Value};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::complete::select_operation;
use super::limits::{ensure_codes, tidy};
use super::persisted::Resolved;
use super::{Loaders, RequestContext};
use crate::auth::Principal;
use crate::cache::StaleLog;
use crate::error::{code, coded};
use crate::pricing::model::Channel;
use crate::startup::AppState;
use crate::upstream::resilience::within;

/// The response media types the endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// `application/graphql-response+json`: status codes follow the
    /// GraphQL-over-HTTP specification.
    GraphqlResponse,
    /// `application/json`: the legacy type, always 200 for a well-formed
    /// GraphQL request.
    Json,
}

impl Media {
    fn content_type(self) -> HeaderValue {
        match self {
            Media::GraphqlResponse => {
                HeaderValue::from_static("application/graphql-response+json; charset=utf-8")
            }
            Media::Json => HeaderValue::from_static("application/json"),
        }
    }
}

/// Picks the response media type from `Accept`: the one with the higher
/// quality, `application/graphql-response+json` on a tie; `application/json`
/// when the header is absent or only has wildcards. `None` when it accepts
/// neither.
pub fn negotiate(headers: &HeaderMap) -> Option<Media> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Some(Media::Json);
    };
    let Ok(accept) = accept.to_str() else {
        return Some(Media::Json);
    };
    let mut best: Option<(f32, Media)> = None;
    for part in accept.split(',') {
        let mut params = part.split(';');
        let mime = params
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let quality = params
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if quality <= 0.0 {
            continue;
        }
        let media = match mime.as_str() {
            "application/graphql-response+json" => Media::GraphqlResponse,
            "application/json" | "application/*" | "*/*" => Media::Json,
            _ => continue,
        };
        let better = match best {
            None => true,
            Some((q, m)) => {
                quality > q || (quality == q && media == Media::GraphqlResponse && m != media)
            }
        };
        if better {
            best = Some((quality, media));
        }
    }
    if accept.trim().is_empty() {
        return Some(Media::Json);
    }
    best.map(|(_, media)| media)
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    error_response_as(Media::Json, status, code, message)
}

fn error_response_as(media: Media, status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, media.content_type());
    resp
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

/// Any other method on `/graphql`: 405 with the methods that work.
pub async fn method_not_allowed(headers: HeaderMap) -> Response {
    let media = negotiate(&headers).unwrap_or(Media::Json);
    let mut resp = error_response_as(
        media,
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        "/graphql answers GET (queries) and POST",
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
    resp
}

fn channel_of(headers: &HeaderMap) -> Option<Channel> {
    match headers
        .get("x-channel")
        .map(|v| v.to_str().unwrap_or_default())
    {
        None | Some("app") => Some(Channel::App),
        Some("mini-program") => Some(Channel::MiniProgram),
        Some("web") => Some(Channel::Web),
        Some("pos") => Some(Channel::Pos),
        Some(_) => None,
    }
}

/// The header a client sends to ask for a smaller request budget.
pub const BUDGET_HEADER: &str = "x-request-budget-ms";

/// The request's budget: the configured one, or less when the client asks
/// for less with `X-Request-Budget-Ms` (never more).
fn request_budget(
    headers: &HeaderMap,
    configured: std::time::Duration,
) -> Result<std::time::Duration, &'static str> {
    let Some(value) = headers.get(BUDGET_HEADER) else {
        return Ok(configured);
    };
    let millis = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .ok_or("X-Request-Budget-Ms must be a positive number of milliseconds")?;
    Ok(configured.min(std::time::Duration::from_millis(millis)))
}

/// Whether a POST's `Content-Type` is JSON (`application/json`, with at
/// most a UTF-8 charset).
/// Whether reading the body failed because the server's body read
/// timeout passed (the client sent too slowly), not because it was
/// malformed.
fn is_body_timeout(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(err) = cause {
        if err.is::<crate::error::BodyTimeout>() {
            return true;
        }
        cause = err.source();
    }
    false
}

fn is_json_body(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = value.split(';');
    let mime = parts.next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|p| {
        let p = p.trim();
        p.is_empty()
            || p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("charset")
                    && v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            })
    })
}

/// The answer to one GraphQL request, as serialized.
#[derive(Serialize)]
struct Body {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<ServerError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    extensions: std::collections::BTreeMap<String, Value>,
}

/// How one request ended.
enum Outcome {
    /// Executed (possibly with field errors), or refused before execution
    /// (`data` absent).
    Done(Body),
    /// A mutation sent over GET.
    MutationOverGet,
}

impl Outcome {
    fn request_error(err: ServerError) -> Self {
        Outcome::Done(Body {
            errors: vec![err],
            data: None,
            extensions: Default::default(),
        })
    }
}

/// Who asks, and from where: shared by every request of a batch.
struct Caller {
    principal: Principal,
    channel: Channel,
    idempotency_key: Option<String>,
}

/// `GET|POST /graphql`.
pub async fn graphql(
    State(app): State<AppState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(media) = negotiate(&headers) else {
        return error_response(
            StatusCode::NOT_ACCEPTABLE,
            code::NOT_ACCEPTABLE,
            "accept application/graphql-response+json or application/json",
        );
    };
    let principal = match authenticate(&app, &headers) {
        Ok(principal) => principal,
        Err(resp) => {
            let mut resp = *resp;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, media.content_type());
            return resp;
        }
    };
    let Some(channel) = channel_of(&headers) else {
        return error_response_as(
            media,
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            "X-Channel must be app, mini-program, web or pos",
        );
    };
    let budget = match request_budget(&headers, app.settings().upstreams.request_budget()) {
        Ok(budget) => budget,
        Err(message) => {
            return error_response_as(media, StatusCode::BAD_REQUEST, code::BAD_REQUEST, message);
        }
    };
    let deadline = std::time::Instant::now() + budget;
    // A header that is not visible ASCII cannot equal any valid key: it is
    // kept as empty text, so a checkout sent with it is refused rather than
    // run under the input's key alone.
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned).unwrap_or_default());
    let caller = Caller {
        principal,
        channel,
        idempotency_key,
    };
    let bad_request = |message: &str| {
        error_response_as(media, StatusCode::BAD_REQUEST, code::BAD_REQUEST, message)
    };

    let requests = if method == Method::GET {
        match parse_url_query(query.as_deref().unwrap_or_default()) {
            Some(req) => Requests::Single(Box::new(req)),
            None => {
                return bad_request(
                    "expected ?query=…&variables=…&operationName=…&extensions=… in the URL",
                );
            }
        }
    } else {
        if !is_json_body(&headers) {
            return error_response_as(
                media,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code::UNSUPPORTED_MEDIA_TYPE,
                "send the request as Content-Type: application/json",
            );
        }
        let body = match body {
            Ok(body) => body,
            Err(rejection) => {
                return if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    error_response_as(
                        media,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        code::PAYLOAD_TOO_LARGE,
                        "the request body is larger than allowed",
                    )
                } else if is_body_timeout(&rejection) {
                    error_response_as(
                        media,
                        StatusCode::REQUEST_TIMEOUT,
                        code::REQUEST_TIMEOUT,
                        "the request body was not received in time",
                    )
                } else {
                    bad_request("the request body could not be read")
                };
            }
        };
        let batch = body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'[');
        if batch {
            match serde_json::from_slice::<Vec<async_graphql::Request>>(&body) {
                Ok(batch) if batch.is_empty() => return bad_request("the batch is empty"),
                Ok(batch) if batch.len() > app.settings().graphql.max_batch => {
                    return error_response_as(
                        media,
                        StatusCode::BAD_REQUEST,
                        code::BATCH_TOO_LARGE,
                        &format!(
                            "a batch may hold at most {} operations",
                            app.settings().graphql.max_batch
                        ),
                    );
                }
                Ok(batch) => Requests::Batch(batch),
                Err(_) => {
                    return bad_request(
                        "expected a JSON array of {\"query\": …, \"variables\": …} objects",
                    );
                }
            }
        } else {
            match serde_json::from_slice::<async_graphql::Request>(&body) {
                Ok(req) => Requests::Single(Box::new(req)),
                Err(_) => {
                    return bad_request(
                        "expected a JSON body {\"query\": …, \"variables\": …, \"operationName\": …}",
                    );
                }
            }
        }
    };

    // Every operation counts against the caller's rates: a batch of n
    // costs what n requests would.
    let operations = match &requests {
        Requests::Single(_) => 1,
        Requests::Batch(batch) => batch.len(),
    };
    if let Err(limited) = app
        .admission()
        .check_rate(&caller.principal, operations)
        .await
    {
        let mut resp = crate::http::admission::rate_limited_response(limited);
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, media.content_type());
        return resp;
    }

    match requests {
        Requests::Single(request) => {
            let outcome = within(deadline, run_one(&app, &caller, *request, &method)).await;
            match outcome {
                Outcome::MutationOverGet => {
                    let mut resp = error_response_as(
                        media,
                        StatusCode::METHOD_NOT_ALLOWED,
                        code::METHOD_NOT_ALLOWED,
                        "mutations must be sent with POST",
                    );
                    resp.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("POST"));
                    resp
                }
                Outcome::Done(body) => {
                    let status = if media == Media::GraphqlResponse && body.data.is_none() {
                        StatusCode::BAD_REQUEST
                    } else {
                        StatusCode::OK
                    };
                    respond(media, status, &body)
                }
            }
        }
        Requests::Batch(batch) => {
            let outcomes = within(
                deadline,
                futures::future::join_all(
                    batch
                        .into_iter()
                        .map(|request| run_one(&app, &caller, request, &method)),
                ),
            )
            .await;
            let bodies: Vec<Body> = outcomes
                .into_iter()
                .map(|outcome| match outcome {
                    Outcome::Done(body) => body,
                    // Batches only arrive by POST.
                    Outcome::MutationOverGet => Body {
                        errors: vec![coded(
                            code::METHOD_NOT_ALLOWED,
                            "mutations must be sent with POST",
                        )],
                        data: None,
                        extensions: Default::default(),
                    },
                })
                .collect();
            respond(media, StatusCode::OK, &bodies)
        }
    }
}

/// A GET request's parameters, as GraphQL over HTTP names them: `query`,
/// `operationName`, and `variables` and `extensions` as JSON text.
fn parse_url_query(raw: &str) -> Option<async_graphql::Request> {
    let mut query = None;
    let mut operation_name = None;
    let mut variables = None;
    let mut extensions = None;
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        let slot = match name.as_ref() {
            "query" => &mut query,
            "operationName" => &mut operation_name,
            "variables" => &mut variables,
            "extensions" => &mut extensions,
            _ => continue,
        };
        if slot.is_some() {
            // A parameter given twice is ambiguous.
            return None;
        }
        *slot = Some(value.into_owned());
    }
    let mut request = async_graphql::Request::new(query.unwrap_or_default());
    request.operation_name = operation_name.filter(|n| !n.is_empty());
    if let Some(text) = variables.filter(|v| !v.is_empty()) {
        request.variables = serde_json::from_str(&text).ok()?;
    }
    if let Some(text) = extensions.filter(|e| !e.is_empty()) {
        request.extensions = serde_json::from_str(&text).ok()?;
    }
    Some(request)
}

enum Requests {
    Single(Box<async_graphql::Request>),
    Batch(Vec<async_graphql::Request>),
}

fn respond(media: Media, status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "response serialization failed");
            return error_response_as(
                media,
                StatusCode::INTERNAL_SERVER_ERROR,
                code::INTERNAL_SERVER_ERROR,
                "internal error",
            );
        }
    };
    let mut resp = (status, bytes).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, media.content_type());
    // Cards are personal: never let a shared cache keep them.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Authorization, X-Channel"),
    );
    resp
}

/// Resolves, checks, executes and completes one request.
async fn run_one(
    app: &AppState,
    caller: &Caller,
    mut request: async_graphql::Request,
    method: &Method,
) -> Outcome {
    let persisted = request.extensions.get("persistedQuery");
    let resolved = match app.persisted().resolve(&request.query, persisted).await {
        Ok(resolved) => resolved,
        Err(refused) => {
            app.metrics().graphql_request(false);
            return Outcome::request_error(coded(refused.code, refused.message));
        }
    };
    let (text, register) = match resolved {
        Resolved::Run(text) => (text, None),
        Resolved::RunAndRegister { text, hash } => (text, Some(hash)),
    };
    let doc = match app.documents().prepare(&text) {
        Ok(doc) => doc,
        Err(err) => {
            app.metrics().graphql_request(false);
            return Outcome::request_error(err);
        }
    };
    if let Some(hash) = register {
        app.persisted().register(hash, text.clone()).await;
    }
    let operation = select_operation(&doc, request.operation_name.as_deref());
    if *method == Method::GET && operation.is_some_and(|op| op.ty == OperationType::Mutation) {
        return Outcome::MutationOverGet;
    }
    if *request.query != *text {
        request.query = text.to_string();
    }
    request.set_parsed_query((*doc).clone());
    let variables = request.variables.clone();
    let operation_name = request.operation_name.clone();
    let validation = app
        .validations()
        .key(&text, operation_name.as_deref(), &variables);
    let passed = validation
        .as_ref()
        .and_then(|key| app.validations().passed(key));
    let known = passed.is_some();

    let stale = StaleLog::default();
    let loaders = Loaders::with_catalog(
        app.upstreams_arc(),
        app.catalog().clone(),
        stale.clone(),
        &caller.principal,
        app.dataloader_delay(),
    );
    let ctx = RequestContext {
        principal: caller.principal.clone(),
        loaders,
        upstreams: Arc::clone(app.upstreams_arc()),
        pricing: app.pricing().clone(),
        channel: caller.channel,
        prices: crate::product::PriceBook::default(),
        idempotency_key: caller.idempotency_key.clone(),
        checkout: Some(app.checkout().clone()),
    };
    let general_fields = super::GeneralFields::default();
    let schema = app.schemas().for_request(passed);
    let mut response = schema
        .execute(request.data(ctx).data(general_fields.clone()))
        .await;
    ensure_codes(&mut response);
    let stale = stale.parts();
    if !stale.is_empty() {
        // Which parts were served from expired records (their upstream
        // failing): `[{"kind": "mall", "id": "mall-1"}, …]`.
        if let Ok(parts) = serde_json::to_value(&stale) {
            response.extensions.insert(
                "stale".to_owned(),
                Value::from_json(parts).unwrap_or_default(),
            );
        }
    }
    app.metrics().graphql_request(response.errors.is_empty());

    // Refused before execution (validation, operation selection, variable
    // coercion): no `data` at all. Field errors always carry a path.
    let executed = !(response.data == Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty()));
    if executed && !known {
        // It passed every rule: the same request again needs only the
        // checks of the known-request schema.
        if let Some(key) = validation {
            app.validations().remember(key, general_fields.get());
        }
    }
    let data = executed.then(|| {
        app.shape().complete(
            std::mem::take(&mut response.data),
            &doc,
            operation_name.as_deref(),
            &variables,
            &response.errors,
        )
    });
    Outcome::Done(Body {
        errors: tidy(std::mem::take(&mut response.errors)),
        data,
        extensions: std::mem::take(&mut response.extensions),
    })
}

//! The HTTP API: one router, one module per audience, thin handlers over the vault.
//!
//! Every route is registered through [`api`], which is also what `/openapi.json` documents, and
//! every answer is counted in the request metrics under its route template.

mod auditor;
mod customer;
pub mod error;
pub mod extract;
mod merchant;
pub mod openapi;
pub mod portal;
mod public;
pub mod rate_limit;
mod transparency;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::HttpBody as _;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::Authenticator;
use crate::vault::Vault;
use error::ApiError;
use extract::RequestId;

/// Shared state of every handler: one `Arc`, so the clones axum makes for every extractor and
/// layer of every request touch one reference count, not one per part (`perf` put the drops of
/// a three-`Arc` state at 2 % of the server's CPU on reads).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

/// What [`AppState`] shares (reached through `Deref`: `state.vault`).
pub struct AppParts {
    /// The service layer.
    pub vault: Arc<Vault>,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// Per-caller request budgets.
    pub limiter: Arc<rate_limit::CallerLimiter>,
}

impl AppState {
    /// The state of a router over `vault`, authenticating with `auth` and limiting with `limiter`.
    pub fn new(vault: Arc<Vault>, auth: Arc<Authenticator>, limiter: Arc<rate_limit::CallerLimiter>) -> Self {
        AppState(Arc::new(AppParts { vault, auth, limiter }))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted body, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered 408.
    pub request_timeout: Duration,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route with its OpenAPI operation: the one list the router serves and `/openapi.json`
/// documents. Register routes only here, through `utoipa_axum::routes!`; a route added to the
/// router any other way is undocumented, and `tests/api/openapi.rs` fails.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(merchant::routes())
        .merge(customer::routes())
        .merge(auditor::routes())
        .merge(public::routes())
        .merge(portal::routes())
        .merge(transparency::routes())
}

/// The whole application router, used by `serve` and by the tests alike.
pub fn router(state: AppState, limits: Limits) -> Router {
    let (routes, _) = api().split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            HeadCheck { state, max_body_bytes: limits.max_body_bytes },
            check_head,
        ))
        // Innermost but for the handlers' own layers: the trace and the request counter see a
        // panic's 500 like any other answer.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    // Only the route template is logged: paths carry ids and query strings
                    // carry lookup values.
                    let route =
                        req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
                    let id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
                    tracing::info_span!("request", method = %req.method(), route, request_id = id)
                })
                .on_request(())
                .on_response(|res: &Response, latency: Duration, _: &tracing::Span| {
                    tracing::info!(
                        status = res.status().as_u16(),
                        latency_ms = latency.as_secs_f64() * 1e3,
                        "answered"
                    );
                }),
        )
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout))
        .layer(middleware::from_fn(count))
        .layer(middleware::from_fn(request_id))
}

/// What [`check_head`] needs: the state (to audit a refused `Authorization`) and the limit.
#[derive(Clone)]
struct HeadCheck {
    state: AppState,
    max_body_bytes: usize,
}

/// Headers that carry identity, purpose or the body's framing: given twice, the request's
/// meaning would depend on which copy a reader picks, so it is refused (RFC 9110 §5.3 allows
/// repeating only list-valued fields, and none of these is one).
const SINGLE_HEADERS: [(HeaderName, &str); 5] = [
    (header::AUTHORIZATION, "Authorization"),
    (HeaderName::from_static("x-purpose"), "X-Purpose"),
    (header::CONTENT_TYPE, "Content-Type"),
    (header::CONTENT_LENGTH, "Content-Length"),
    (REQUEST_ID, "X-Request-Id"),
];

/// Decides everything the request head alone can decide, before authentication and before any
/// body byte is read (so no `100 Continue` is sent for a refused request):
/// - a declared body length (`Content-Length`, or the body's exact size hint on HTTP/2) over
///   `max_body_bytes` is 413 `payload_too_large` at once, not after waiting for the bytes;
/// - any of [`SINGLE_HEADERS`] given more than once is 400 `duplicate_header`. A repeated
///   `Authorization` is also recorded as `auth.denied` (`token_invalid`, anonymous actor) under
///   the per-peer budget for failing credentials, like any unusable token, so probes show in
///   the log; once that budget is spent the answer is 429 and nothing is recorded.
///
/// Bodies without a declared length (chunked) are still cut at the limit while being read
/// (`DefaultBodyLimit`, 413). Hyper itself refuses conflicting `Content-Length` values (400)
/// and heads over its limits (431): more than 100 header lines, or a head over ~408 KiB.
async fn check_head(State(check): State<HeadCheck>, req: Request, next: Next) -> Response {
    let by_header = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let declared = by_header.max(req.body().size_hint().lower());
    if declared > u64::try_from(check.max_body_bytes).unwrap_or(u64::MAX) {
        return ApiError::payload_too_large().into_response();
    }
    for (name, shown) in &SINGLE_HEADERS {
        if req.headers().get_all(name).iter().nth(1).is_none() {
            continue;
        }
        if name == header::AUTHORIZATION {
            let reason = crate::auth::AuthError::Invalid.code();
            if let Err(answer) = extract::deny_anonymous(&check.state, req.extensions(), reason).await {
                return answer.into_response();
            }
        }
        return ApiError::bad_request(
            "duplicate_header",
            format!("the {shown} header is given more than once"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Counts every answer (timeouts included) and its latency under the route template, or
/// `unmatched`: never the raw path, which carries ids, nor the query string.
async fn count(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = req.method().clone();
    let started = Instant::now();
    let res = next.run(req).await;
    crate::metric::http_request(
        route.as_deref().unwrap_or(crate::metric::UNMATCHED_ROUTE),
        method.as_str(),
        res.status().as_u16(),
        started.elapsed(),
    );
    res
}

/// Assigns every request a random UUID as its id, echoed in `X-Request-Id` and recorded in its
/// audit events and log line. A client's `X-Request-Id` is never used: the log is append-only,
/// and no shape check keeps personal data out of free text (a card number padded with hex
/// digits is a valid trace id).
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    res
}

/// The answer to a request whose handling panicked (for `tower_http`'s `CatchPanicLayer`): 500
/// `internal`, the same body as any internal error. The panic's message is not repeated here or
/// in the log: the panic hook has printed it with its location, and it is not a client's to see.
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    metrics::counter!("custodia_handler_panics_total").increment(1);
    tracing::error!("a request handler panicked; answered 500");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this path")
}

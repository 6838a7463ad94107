//! The customers' privacy portal (`/portal`) and the transparency report's page
//! (`/transparency`): static HTML, CSS and JavaScript from `web/`, embedded in the binary at build
//! time and served with a strict Content-Security-Policy.
//!
//! The pages load nothing from another origin (`default-src 'self'`, no inline script or
//! style), cannot be framed, and send no referrer. The portal's customer token travels in the
//! URL fragment (`/portal#token=…`), which browsers never send to a server, and is held in the
//! page's memory only; these routes never see it, and they touch no customer data, so they are
//! not audited. Each request takes one from the caller's address's public budget
//! ([`PublicBudget`]; 429 when spent).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, PublicBudget};

/// The Content-Security-Policy of every page and asset: this origin only, no inline code, no
/// plugins, no framing, no `<base>`, no form posts.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its name under its page's path, its media type and its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The portal's page.
const PORTAL_PAGE: &str = include_str!("../../web/portal/index.html");
/// The transparency report's page.
const TRANSPARENCY_PAGE: &str = include_str!("../../web/transparency/index.html");

/// Files under `/portal/`.
const PORTAL_ASSETS: [Asset; 4] = [
    Asset { name: "portal.js", content_type: JS, body: include_str!("../../web/portal/portal.js") },
    Asset { name: "verify.js", content_type: JS, body: include_str!("../../web/portal/verify.js") },
    Asset { name: "words.js", content_type: JS, body: include_str!("../../web/portal/words.js") },
    Asset { name: "style.css", content_type: CSS, body: include_str!("../../web/portal/style.css") },
];

/// Files under `/transparency/`.
const TRANSPARENCY_ASSETS: [Asset; 1] = [Asset {
    name: "transparency.js",
    content_type: JS,
    body: include_str!("../../web/transparency/transparency.js"),
}];

/// The page routes, one `routes!` per path.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(portal_page))
        .routes(routes!(portal_asset))
        .routes(routes!(transparency_page))
        .routes(routes!(transparency_asset))
}

/// A static answer with the security headers every page and asset carries.
fn serve(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The pages change with the binary only; `no-cache` revalidates after an upgrade.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

fn asset(assets: &[Asset], name: &str) -> Result<Response, ApiError> {
    assets
        .iter()
        .find(|a| a.name == name)
        .map(|a| serve(a.content_type, a.body))
        .ok_or_else(ApiError::not_found)
}

/// The customers' privacy portal.
///
/// A merchant's site links customers to `/portal#token=<customer JWT>`; the token stays in the
/// fragment (never sent to a server) and in the page's memory. No token needed to load it.
#[utoipa::path(
    get,
    path = "/portal",
    operation_id = "privacy_portal",
    tag = "public",
    responses(
        (status = 200, description = "The portal's page", body = String, content_type = "text/html"),
        (status = 429, description = "`rate_limited`: this address's budget for public routes is spent", body = ErrorBody),
    )
)]
async fn portal_page(_: PublicBudget) -> Response {
    serve(HTML, PORTAL_PAGE)
}

/// A script or style sheet of the portal (`portal.js`, `verify.js`, `words.js`, `style.css`).
#[utoipa::path(
    get,
    path = "/portal/{asset}",
    operation_id = "privacy_portal_asset",
    tag = "public",
    params(("asset" = String, Path, description = "`portal.js`, `verify.js`, `words.js` or `style.css`")),
    responses(
        (status = 200, description = "The file", body = String, content_type = "text/javascript"),
        (status = 404, description = "`not_found`: no such file", body = ErrorBody),
        (status = 429, description = "`rate_limited`: this address's budget for public routes is spent", body = ErrorBody),
    )
)]
async fn portal_asset(_: PublicBudget, ApiPath(name): ApiPath<String>) -> Result<Response, ApiError> {
    asset(&PORTAL_ASSETS, &name)
}

/// The public transparency report, as a page (the data is `GET /v1/transparency`).
#[utoipa::path(
    get,
    path = "/transparency",
    operation_id = "transparency_page",
    tag = "public",
    responses(
        (status = 200, description = "The report's page", body = String, content_type = "text/html"),
        (status = 429, description = "`rate_limited`: this address's budget for public routes is spent", body = ErrorBody),
    )
)]
async fn transparency_page(_: PublicBudget) -> Response {
    serve(HTML, TRANSPARENCY_PAGE)
}

/// A script of the transparency page (`transparency.js`).
#[utoipa::path(
    get,
    path = "/transparency/{asset}",
    operation_id = "transparency_asset",
    tag = "public",
    params(("asset" = String, Path, description = "`transparency.js`")),
    responses(
        (status = 200, description = "The file", body = String, content_type = "text/javascript"),
        (status = 404, description = "`not_found`: no such file", body = ErrorBody),
        (status = 429, description = "`rate_limited`: this address's budget for public routes is spent", body = ErrorBody),
    )
)]
async fn transparency_asset(_: PublicBudget, ApiPath(name): ApiPath<String>) -> Result<Response, ApiError> {
    asset(&TRANSPARENCY_ASSETS, &name)
}

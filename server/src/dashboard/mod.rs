//! The dashboard: a page for operators, served by the server itself.
//!
//! `GET /` lists every lock; `GET /dashboard/lock/{name}` is one lock's page, with its history
//! and the operators' actions (force-release, reserve). Both are the same HTML page: its script
//! reads the path, then fetches what it shows from the API (`/locks`, `/lock/{name}`,
//! `/lock/{name}/history`) with the browser's credentials, and fetches it again when `/events`
//! says the lock table changed (polling every second where that stream is missing). The HTML,
//! CSS and JavaScript are embedded in the binary: no CDN, no build step, nothing to deploy
//! beside it. Authentication is the API's, from the middleware every path goes through; the
//! page's changes carry the `X-Locker-Client` header, without which the API refuses a
//! browser's change (see `http::middleware::refuse_cross_site`).

use poem::http::{StatusCode, header};
use poem::{Request, Response, handler};

/// The one HTML page, for the list and for a lock's page.
const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// Where the dashboard's own paths begin: its script, its style, and `lock/{name}`.
const PREFIX: &str = "/dashboard/";

/// What the page may load and send: only this server's own script, style and API. Nothing
/// inline, so data that slips into the markup still cannot run; no framing, so no other site
/// can dress the actions up as something else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `GET /`: the list of locks.
#[handler]
pub(crate) fn index() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

/// `GET /dashboard/...`: a lock's page, the script or the style.
#[handler]
pub(crate) fn file(req: &Request) -> poem::Result<Response> {
    let path = req.uri().path().strip_prefix(PREFIX).unwrap_or_default();
    match path {
        "dashboard.js" => Ok(asset(SCRIPT, "text/javascript; charset=utf-8")),
        "dashboard.css" => Ok(asset(STYLE, "text/css; charset=utf-8")),
        _ if path
            .strip_prefix("lock/")
            .is_some_and(|name| !name.is_empty()) =>
        {
            Ok(asset(PAGE, "text/html; charset=utf-8"))
        }
        _ => Err(poem::error::NotFoundError.into()),
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .content_type(content_type)
        // Assets change with the binary; the browser asks again rather than run an old script
        // against a new API.
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        // Build links leave without saying where the operator came from.
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(body)
}

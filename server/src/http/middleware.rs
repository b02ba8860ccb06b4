//! What every request goes through around its handler: the access log, counting it in the
//! metrics, the `Allow` header of a 405, reading the body in full, refusing changes other web
//! sites send, and basic authentication.
//!
//! All of it is one layer ([`every_request`]) rather than one `around` per concern: a layer's
//! future holds the request and the next layer's future, and each is moved into the layer
//! above, so six layers copied several kilobytes per request (7-8 % of the server's CPU in a
//! profile of durable lock cycles, issue 16).

use std::sync::Arc;
use std::time::Instant;

use poem::http::{Method, StatusCode, header};
use poem::web::headers::authorization::Basic;
use poem::web::headers::{Authorization, HeaderMapExt};
use poem::{Endpoint, Request, Response};

use super::answer::error_response;
use super::body::buffer_body;
use crate::config::Credentials;
use crate::metrics::Metrics;

/// Runs a request through everything around its handler `ep`, in this order: the access log
/// and the metrics see every answer (also the refusals below), a 405 says which methods its
/// path has, the body is read in full, a browser's change from another site is refused, and
/// the credentials are checked.
pub(super) async fn every_request<E: Endpoint<Output = Response>>(
    ep: Arc<E>,
    mut req: Request,
    access: Arc<Access>,
    metrics: Arc<Metrics>,
) -> poem::Result<Response> {
    let started = Instant::now();
    // The log line costs a copy of the path: not made when it is not written.
    let logged = tracing::enabled!(tracing::Level::INFO).then(|| req.uri().path().to_owned());
    let method = req.method().clone();
    let route = super::metrics::route(req.uri().path());
    let allow = allowed_methods(req.uri().path());
    let answer = match before_handler(&mut req, &access).await {
        Some(refused) => Ok(refused),
        None => ep.call(req).await,
    };
    let status = match &answer {
        Ok(resp) => resp.status(),
        Err(e) => e.status(),
    };
    metrics.request(route, method.as_str(), status.as_u16(), started.elapsed());
    let mut resp = answer?;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    }
    if let Some(path) = logged {
        tracing::info!(
            "{method} {path} {} {:.3}ms",
            resp.status().as_u16(),
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    Ok(resp)
}

/// What answers a request before its handler, if anything does: reading its body failed, a
/// browser's change came from another site, or the credentials are missing or wrong. Otherwise
/// the request's [`Role`] is noted in its extensions.
async fn before_handler(req: &mut Request, access: &Access) -> Option<Response> {
    // Every body is read before anything answers: a response sent while the body is unread
    // makes hyper close the connection, and a client reusing it then fails.
    if let Err(e) = buffer_body(req).await {
        return Some(e.into_response());
    }
    refuse_cross_site(req).or_else(|| authenticate(req, access))
}

/// RFC 9110: a 405 says which methods the path has.
fn allowed_methods(path: &str) -> &'static str {
    let action = super::body::ACTIONS
        .iter()
        .any(|a| super::body::ends_with_action(path, a));
    if path.starts_with("/lock/") && action {
        "POST"
    } else if path.starts_with("/lock/") && path.contains("/queue/") {
        "DELETE"
    } else if path.starts_with("/lock/") && path.ends_with("/history") {
        "GET"
    } else if path.starts_with("/lock/") {
        "GET, PUT, DELETE"
    } else {
        "GET"
    }
}

/// The header the dashboard sends with its requests.
pub(crate) const CLIENT_HEADER: &str = "x-locker-client";

/// Refuses a change (any method but GET and HEAD) that a browser sends without
/// [`CLIENT_HEADER`], with 403.
///
/// A browser that has logged in to the dashboard sends its basic-auth credentials with every
/// request to this server, also with a form another web site makes it post here (the body is
/// read as JSON whatever its content type, so a form can spell a force-release). Browsers mark
/// their requests with `Origin`; a page of another site cannot add a header of its own without
/// the server's consent (a CORS preflight, which this server never grants), but the dashboard
/// can. Clients that are not browsers send no `Origin` and are not affected.
fn refuse_cross_site(req: &Request) -> Option<Response> {
    let reads = req.method() == Method::GET || req.method() == Method::HEAD;
    let from_a_page = req.headers().contains_key(header::ORIGIN);
    if !reads && from_a_page && !req.headers().contains_key(CLIENT_HEADER) {
        return Some(error_response(
            StatusCode::FORBIDDEN,
            "a browser's request to change a lock must come from this server's dashboard \
             (it sends the X-Locker-Client header); requests from other web pages are refused",
        ));
    }
    None
}

/// Who may do what: the API's credentials, and the operators' (for force-release), if set.
#[derive(Debug, Default)]
pub(crate) struct Access {
    pub(crate) user: Option<Credentials>,
    pub(crate) admin: Option<Credentials>,
    /// True when `/metrics` needs no credentials (`LOCKER_METRICS_PUBLIC`).
    pub(crate) metrics_public: bool,
}

/// What a request may do, as its credentials say; in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    User,
    /// Operators' actions too: the admin credentials, or any request when none are set.
    Admin,
}

/// Asks for basic auth on every path but `/healthz` (and `/metrics` if it is public), when
/// credentials are configured, and notes the request's [`Role`]. The admin credentials are good
/// for everything.
fn authenticate(req: &mut Request, access: &Access) -> Option<Response> {
    let admin = access
        .admin
        .as_ref()
        .is_some_and(|admin| authorized(req, admin));
    let user = admin
        || access
            .user
            .as_ref()
            .is_none_or(|user| authorized(req, user));
    let path = req.uri().path();
    let public = path == "/healthz" || (access.metrics_public && path == "/metrics");
    if !user && !public {
        return Some(unauthorized());
    }
    let role = if admin || access.admin.is_none() {
        Role::Admin
    } else {
        Role::User
    };
    req.extensions_mut().insert(role);
    None
}

/// 401 with the challenge that makes clients send basic auth.
pub(super) fn unauthorized() -> Response {
    let mut resp = error_response(StatusCode::UNAUTHORIZED, "Please Authenticate");
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"locker\""),
    );
    resp
}

/// Compares the request's basic auth with the expected credentials in constant time.
fn authorized(req: &Request, expected: &Credentials) -> bool {
    let Some(Authorization(basic)) = req.headers().typed_get::<Authorization<Basic>>() else {
        return false;
    };
    let user_ok = constant_time_eq(basic.username().as_bytes(), expected.user.as_bytes());
    let pass_ok = constant_time_eq(basic.password().as_bytes(), expected.pass.as_bytes());
    user_ok & pass_ok
}

/// Equality whose running time depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}

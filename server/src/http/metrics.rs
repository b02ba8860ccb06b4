//! `GET /metrics`, and the route template every request is counted under (the metrics
//! themselves are [`crate::metrics`]'s; [`super::middleware`] counts).

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::Data;
use poem::{Response, handler};

use super::Api;
use super::answer::error_response;
use crate::metrics::CONTENT_TYPE;

/// The routes without a lock name in them, counted under their own path.
const FIXED_ROUTES: [&str; 8] = [
    "/",
    "/healthz",
    "/openapi.yaml",
    "/metrics",
    "/locks",
    "/history",
    "/events",
    "/concourse",
];

/// `GET /metrics`: every metric in the Prometheus text format.
#[handler]
pub(super) fn scrape(api: Data<&Arc<Api>>) -> Response {
    match api.metrics.encode(&api.store.snapshot()) {
        Ok(text) => Response::builder().content_type(CONTENT_TYPE).body(text),
        Err(_) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be written",
        ),
    }
}

/// The route template of `path`, like `/lock/{name}/renew`: what a request is counted under,
/// so that no lock name (nor any other path a client makes up) becomes a label value.
pub(super) fn route(path: &str) -> &'static str {
    if path.starts_with("/dashboard/") {
        return "/dashboard/{file}";
    }
    let Some(rest) = path.strip_prefix("/lock/") else {
        return FIXED_ROUTES
            .into_iter()
            .find(|route| *route == path)
            .unwrap_or("other");
    };
    if rest.contains("/queue/") {
        "/lock/{name}/queue/{id}"
    } else if rest.ends_with("/renew") {
        "/lock/{name}/renew"
    } else if rest.ends_with("/force-release") {
        "/lock/{name}/force-release"
    } else if rest.ends_with("/reserve") {
        "/lock/{name}/reserve"
    } else if rest.ends_with("/history") {
        "/lock/{name}/history"
    } else {
        "/lock/{name}"
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn paths_are_counted_under_their_route_template() {
        let cases = [
            ("/lock/staging", "/lock/{name}"),
            ("/lock/a%2Fb", "/lock/{name}"),
            ("/lock/staging/renew", "/lock/{name}/renew"),
            ("/lock/staging/force-release", "/lock/{name}/force-release"),
            ("/lock/staging/reserve", "/lock/{name}/reserve"),
            ("/lock/staging/history", "/lock/{name}/history"),
            ("/lock/staging/queue/req-1", "/lock/{name}/queue/{id}"),
            ("/locks", "/locks"),
            ("/history", "/history"),
            ("/metrics", "/metrics"),
            ("/events", "/events"),
            ("/", "/"),
            ("/concourse", "/concourse"),
            ("/dashboard/app.js", "/dashboard/{file}"),
            ("/healthz", "/healthz"),
            ("/openapi.yaml", "/openapi.yaml"),
            ("/staging", "other"),
            ("/locks/staging", "other"),
        ];
        for (path, expected) in cases {
            assert_eq!(route(path), expected, "{path}");
        }
    }
}

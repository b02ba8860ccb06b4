//! `GET /metrics`, and counting every request by its route template, method and status (the
//! metrics themselves are [`crate::metrics`]'s).

use std::sync::Arc;
use std::time::Instant;

use poem::http::StatusCode;
use poem::web::Data;
use poem::{Endpoint, Request, Response, handler};

use super::Api;
use super::answer::error_response;
use crate::metrics::{CONTENT_TYPE, Metrics};

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

/// Counts the request once it is answered (a long-poll when its answer goes out).
pub(super) async fn count_request<E: Endpoint<Output = Response>>(
    ep: Arc<E>,
    req: Request,
    metrics: Arc<Metrics>,
) -> poem::Result<Response> {
    let started = Instant::now();
    let route = route(req.uri().path());
    let method = req.method().clone();
    let answer = ep.call(req).await;
    let status = match &answer {
        Ok(resp) => resp.status(),
        Err(e) => e.status(),
    };
    metrics.request(route, method.as_str(), status.as_u16(), started.elapsed());
    answer
}

/// The route template of `path`, like `/lock/{name}/renew`: what a request is counted under,
/// so that no lock name (nor any other path a client makes up) becomes a label value.
fn route(path: &str) -> &'static str {
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

//! The HTTP API, wire-compatible with the original locker server.
//!
//! Routes and handlers live here; what every request goes through in [`middleware`], reading
//! requests in [`body`], writing answers in [`answer`]. Decisions are the lock rules',
//! durability the store's.

mod answer;
mod body;
mod middleware;

use std::sync::Arc;
use std::time::Duration;

use poem::http::StatusCode;
use poem::web::Data;
use poem::{Body, Endpoint, EndpointExt, Request, Response, Route, get, handler};
use serde_json::json;

use crate::clock::Clock;
use crate::config::Credentials;
use crate::domain::{Claim, Op};
use crate::store::{LockStore, Request as LockRequest, StoreError};
use answer::{LockJson, decision_response, error_response, json_response};
use body::{lock_action, lock_name, read_claim, request_id};

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// What the handlers share: the store, the clock, and the lease settings.
pub(crate) struct Api {
    pub(crate) store: LockStore,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) leases: Leases,
}

/// Builds the whole HTTP application.
pub(crate) fn app(api: Api, auth: Option<Credentials>) -> impl Endpoint<Output = Response> {
    let auth = auth.map(Arc::new);
    Route::new()
        .at("/healthz", get(healthz))
        .at("/openapi.yaml", get(openapi))
        .at("/locks", get(list_locks))
        .at(
            "/lock/*name",
            get(show_lock)
                .put(lock_handler)
                .delete(unlock_handler)
                .post(lock_action_handler),
        )
        .data(Arc::new(api))
        .catch_all_error(|err: poem::Error| async move {
            let status = err.status();
            let message = match status {
                StatusCode::NOT_FOUND => {
                    "no such endpoint (expected /lock/NAME, /locks or /healthz)".to_string()
                }
                StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this path".to_string(),
                _ => err.to_string(),
            };
            error_response(status, &message)
        })
        .around(move |ep, req| middleware::authenticate(ep, req, auth.clone()))
        .around(middleware::read_body_first)
        .around(middleware::allow_header)
        .around(middleware::access_log)
}

#[handler]
fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

#[handler]
fn openapi() -> Response {
    Response::builder()
        .content_type("application/yaml")
        .body(OPENAPI)
}

/// `GET /locks`: every lock, streamed from one snapshot a slice at a time, so a large table
/// neither holds up the other requests on this worker nor sits in memory whole.
#[handler]
fn list_locks(api: Data<&Arc<Api>>) -> Response {
    let snapshot = api.store.snapshot();
    Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json")
        .body(Body::from_bytes_stream(answer::locks_json_stream(
            snapshot.locks,
            api.clock.now(),
        )))
}

#[handler]
fn show_lock(req: &Request, api: Data<&Arc<Api>>) -> Response {
    match lock_name(req) {
        Ok(name) => {
            let snapshot = api.store.snapshot();
            let lock = snapshot.lock(&name).as_of(api.clock.now());
            json_response(StatusCode::OK, &LockJson(&lock))
        }
        Err(e) => e.into_response(),
    }
}

#[handler]
async fn lock_handler(req: &Request, body: Body, api: Data<&Arc<Api>>) -> Response {
    change_named(req, body, &api, Op::Lock).await
}

#[handler]
async fn unlock_handler(req: &Request, body: Body, api: Data<&Arc<Api>>) -> Response {
    change_named(req, body, &api, Op::Unlock).await
}

/// A change of the lock the path names.
async fn change_named(req: &Request, body: Body, api: &Api, op: Op) -> Response {
    match lock_name(req) {
        Ok(name) => change(req, body, api, name, op).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /lock/{name}/ACTION`: `renew`.
#[handler]
async fn lock_action_handler(req: &Request, body: Body, api: Data<&Arc<Api>>) -> Response {
    match lock_action(req) {
        Ok((name, "renew")) => change(req, body, &api, name, Op::Renew).await,
        Ok((_, action)) => error_response(
            StatusCode::NOT_FOUND,
            &format!("no such action '{action}' on a lock (expected POST /lock/NAME/renew)"),
        ),
        Err(e) => e.into_response(),
    }
}

async fn change(req: &Request, body: Body, api: &Api, name: String, op: Op) -> Response {
    let claim = match (request_id(req), read_claim(body).await) {
        (Ok(request_id), Ok(claim)) => Claim {
            request_id,
            ..claim
        },
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let claim = match api.leases.settle(op, claim) {
        Ok(claim) => claim,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let request = LockRequest {
        name: name.clone(),
        op,
        claim: claim.clone(),
    };
    match api.store.submit(request).await {
        Ok(decision) => decision_response(&name, &claim, &decision),
        Err(e @ StoreError::NotCommitted(_)) | Err(e @ StoreError::Stopped) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

/// How long claims live when they do not say, and at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leases {
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) max_ttl: Duration,
}

impl Leases {
    /// The claim as the server takes it: a lock without `ttl` gets the default; a `ttl` above
    /// the maximum is refused (an unlock ignores its `ttl`, but not one out of bounds), and a
    /// renewal must say how long.
    fn settle(&self, op: Op, mut claim: Claim) -> Result<Claim, String> {
        match op {
            Op::Lock => claim.ttl = claim.ttl.or(self.default_ttl),
            Op::Renew if claim.ttl.is_none() => {
                return Err(
                    "field 'ttl' is required to renew: send how long from now the claim should live, like \"30m\""
                        .into(),
                );
            }
            Op::Renew | Op::Unlock => {}
        }
        match claim.ttl {
            Some(ttl) if ttl > self.max_ttl => Err(format!(
                "field 'ttl' ({}) is more than this server allows ({}, LOCKER_MAX_TTL)",
                humantime::format_duration(ttl),
                humantime::format_duration(self.max_ttl)
            )),
            _ => Ok(claim),
        }
    }
}

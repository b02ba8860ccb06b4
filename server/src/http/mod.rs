//! The HTTP API, wire-compatible with the original locker server.
//!
//! Routes and handlers live here; what every request goes through in [`middleware`], reading
//! requests in [`body`], writing answers in [`answer`]. Decisions are the lock rules',
//! durability the store's.

mod answer;
mod body;
mod middleware;

use poem::http::StatusCode;
use poem::{Body, Endpoint, EndpointExt, Request, Response, Route, get, handler};
use serde_json::json;

use crate::config::Credentials;
use crate::domain::{Claim, Op};
use crate::store::{LockStore, Request as LockRequest, StoreError};
use answer::{LockJson, decision_response, error_response, json_response};
use body::{lock_name, read_claim, request_id};

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// Builds the whole HTTP application.
pub(crate) fn app(store: LockStore, auth: Option<Credentials>) -> impl Endpoint<Output = Response> {
    let auth = auth.map(std::sync::Arc::new);
    Route::new()
        .at("/healthz", get(healthz))
        .at("/openapi.yaml", get(openapi))
        .at("/locks", get(list_locks))
        .at(
            "/lock/*name",
            get(show_lock).put(lock_handler).delete(unlock_handler),
        )
        .data(store)
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
fn list_locks(store: poem::web::Data<&LockStore>) -> Response {
    let snapshot = store.snapshot();
    Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json")
        .body(Body::from_bytes_stream(answer::locks_json_stream(
            snapshot.locks,
        )))
}

#[handler]
fn show_lock(req: &Request, store: poem::web::Data<&LockStore>) -> Response {
    match lock_name(req) {
        Ok(name) => {
            let snapshot = store.snapshot();
            json_response(StatusCode::OK, &LockJson(snapshot.lock(&name)))
        }
        Err(e) => e.into_response(),
    }
}

#[handler]
async fn lock_handler(req: &Request, body: Body, store: poem::web::Data<&LockStore>) -> Response {
    change(req, body, &store, Op::Lock).await
}

#[handler]
async fn unlock_handler(req: &Request, body: Body, store: poem::web::Data<&LockStore>) -> Response {
    change(req, body, &store, Op::Unlock).await
}

async fn change(req: &Request, body: Body, store: &LockStore, op: Op) -> Response {
    let name = match lock_name(req) {
        Ok(name) => name,
        Err(e) => return e.into_response(),
    };
    let claim = match (request_id(req), read_claim(body).await) {
        (Ok(request_id), Ok(claim)) => Claim {
            request_id,
            ..claim
        },
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let request = LockRequest {
        name: name.clone(),
        op,
        claim: claim.clone(),
    };
    match store.submit(request).await {
        Ok(decision) => decision_response(&name, &claim, &decision),
        Err(e @ StoreError::NotCommitted(_)) | Err(e @ StoreError::Stopped) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

//! The HTTP API, wire-compatible with the original locker server.
//!
//! Routes and handlers live here; what every request goes through in [`middleware`], reading
//! requests in [`body`], writing answers in [`answer`]. Decisions are the lock rules',
//! durability the store's.

mod answer;
mod body;
mod metrics;
mod middleware;
mod reads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::http::StatusCode;
use poem::web::Data;
use poem::{Body, Endpoint, EndpointExt, Request, Response, Route, get, handler};
use serde_json::json;

use crate::clock::Clock;
use crate::concourse::Watch;
use crate::config::Concourse;
use crate::domain::{Claim, Op, Verdict};
use crate::metrics::Metrics;
use crate::net::peers::Peers;
use crate::store::{LockStore, Request as LockRequest, StoreError};
use answer::{
    LockJson, ReadView, decision_response, error_response, json_response, withdrawal_response,
};
use body::{
    history_page, history_path, lock_action, lock_name, queue_path, read_claim, read_release,
    request_id, wait_query,
};
pub(crate) use middleware::Access;
use middleware::Role;

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// What the handlers share: the store, the clock, and the lease and queue settings.
pub(crate) struct Api {
    pub(crate) store: LockStore,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) leases: Leases,
    pub(crate) waiting: Waiting,
    pub(crate) peers: Peers,
    pub(crate) metrics: Arc<Metrics>,
    /// The Concourse whose builds claims may be held for, if the server watches one.
    pub(crate) concourse: Option<Concourse>,
    /// What the build watcher learnt, if it runs.
    pub(crate) watch: Option<Watch>,
}

/// How long a lock request may wait in a queue, and how long its place outlives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waiting {
    pub(crate) max_wait: Duration,
    pub(crate) grace: Duration,
}

/// Builds the whole HTTP application.
pub(crate) fn app(api: Api, access: Access) -> impl Endpoint<Output = Response> {
    let access = Arc::new(access);
    let counted = api.metrics.clone();
    Route::new()
        .at("/", get(crate::dashboard::index))
        .at("/dashboard/*path", get(crate::dashboard::file))
        .at("/healthz", get(healthz))
        .at("/openapi.yaml", get(openapi))
        .at("/metrics", get(metrics::scrape))
        .at("/locks", get(list_locks))
        .at("/history", get(all_history))
        .at("/events", get(events))
        .at("/concourse", get(concourse_status))
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
        .around(move |ep, req| middleware::every_request(ep, req, access.clone(), counted.clone()))
}

/// `GET /healthz`: 200 while the server can serve; 503 when its database cannot be reached
/// (a readiness probe takes the server out of rotation meanwhile).
#[handler]
fn healthz(api: Data<&Arc<Api>>) -> Response {
    if !api.store.reports_storage() {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    match api.store.storage_problem() {
        None => json_response(StatusCode::OK, &json!({"status": "ok", "database": "ok"})),
        Some(problem) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unavailable", "database": "unreachable", "error": problem}),
        ),
    }
}

#[handler]
fn openapi() -> Response {
    Response::builder()
        .content_type("application/yaml")
        .body(OPENAPI)
}

/// `GET /locks`: every lock, streamed from one snapshot a slice at a time, so a large table
/// neither holds up the lock requests (see [`reads`]) nor sits in memory whole.
#[handler]
fn list_locks(api: Data<&Arc<Api>>) -> Response {
    let snapshot = api.store.snapshot();
    Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json")
        .body(Body::from_bytes_stream(reads::locks_json_stream(
            snapshot,
            api.watch.as_ref().map(Watch::seen),
            api.clock.now(),
        )))
}

/// `GET /concourse`: whether the server watches a Concourse, whether it answers, and what it
/// last said of each watched build.
#[handler]
fn concourse_status(api: Data<&Arc<Api>>) -> Response {
    let seen = api.watch.as_ref().map(Watch::seen).unwrap_or_default();
    let mut builds: Vec<_> = seen.builds.iter().collect();
    builds.sort_by_key(|(id, _)| **id);
    let builds: Vec<_> = builds
        .into_iter()
        .map(|(id, (status, at))| {
            json!({"id": id, "status": status, "checked_at": locker_protocol::timestamp(*at)})
        })
        .collect();
    let outage = seen
        .outage
        .as_ref()
        .map(|(error, since)| json!({"error": error, "since": locker_protocol::timestamp(*since)}));
    let url = api.concourse.as_ref().map(|c| c.url.clone());
    json_response(
        StatusCode::OK,
        &json!({"url": url, "outage": outage, "builds": builds}),
    )
}

/// How long changes are gathered into one event: a burst of commits makes one refresh.
const EVENT_COALESCE: Duration = Duration::from_millis(200);

/// `GET /events`: server-sent events, `change` with `{"revision": N}` right away and then
/// whenever the lock table (its locks or its queues) changes, at most one per
/// [`EVENT_COALESCE`]; the stream ends when the server stops.
#[handler]
fn events(api: Data<&Arc<Api>>) -> poem::web::sse::SSE {
    use futures_util::StreamExt;
    use poem::web::sse::{Event, SSE};
    let changes = api.store.subscribe();
    let stopping = api.store.stopping();
    let first = changes.borrow().revision;
    let later = futures_util::stream::unfold(changes, |mut changes| async move {
        changes.changed().await.ok()?;
        tokio::time::sleep(EVENT_COALESCE).await;
        let revision = changes.borrow_and_update().revision;
        Some((revision, changes))
    });
    let revisions = futures_util::stream::once(async move { first }).chain(later);
    let stream = revisions
        .map(|revision| Event::message(format!("{{\"revision\":{revision}}}")).event_type("change"))
        .take_until(stopping);
    SSE::new(stream).keep_alive(Duration::from_secs(15))
}

/// `GET /history?limit=N&before=ID`: the latest changes to every lock, newest first.
#[handler]
fn all_history(req: &Request, api: Data<&Arc<Api>>) -> Response {
    match history_page(req) {
        Ok(page) => answer::history_response(&api.store.snapshot(), None, page),
        Err(e) => e.into_response(),
    }
}

/// `GET /lock/{name}` and `GET /lock/{name}/history`.
#[handler]
fn show_lock(req: &Request, api: Data<&Arc<Api>>) -> Response {
    if let Some(name) = history_path(req) {
        return match (name, history_page(req)) {
            (Ok(name), Ok(page)) => {
                answer::history_response(&api.store.snapshot(), Some(&name), page)
            }
            (Err(e), _) | (_, Err(e)) => e.into_response(),
        };
    }
    match lock_name(req) {
        Ok(name) => {
            let snapshot = api.store.snapshot();
            let seen = api.watch.as_ref().map(Watch::seen);
            let now = api.clock.now();
            let lock = snapshot.lock(&name).as_of(now);
            json_response(
                StatusCode::OK,
                &LockJson(
                    &lock,
                    Some(ReadView::of(snapshot.queue(&name), seen.as_deref(), now)),
                ),
            )
        }
        Err(e) => e.into_response(),
    }
}

/// `PUT /lock/{name}`, and `PUT /lock/{name}?wait=DURATION` to wait in its queue.
#[handler]
async fn lock_handler(req: &Request, body: Body, api: Data<&Arc<Api>>) -> Response {
    let name = match lock_name(req) {
        Ok(name) => name,
        Err(e) => return e.into_response(),
    };
    match wait_query(req) {
        Ok(Some(wait)) if !wait.is_zero() => {
            let wait = wait.min(api.waiting.max_wait);
            wait_for(req, body, &api, name, wait).await
        }
        Ok(_) => change(req, body, &api, name, Op::Lock).await,
        Err(e) => e.into_response(),
    }
}

/// `DELETE /lock/{name}`, and `DELETE /lock/{name}/queue/{id}` to withdraw a waiter.
#[handler]
async fn unlock_handler(req: &Request, body: Body, api: Data<&Arc<Api>>) -> Response {
    match queue_path(req) {
        Some(Ok((name, id))) => withdraw(&api, name, id).await,
        Some(Err(e)) => e.into_response(),
        None => match lock_name(req) {
            Ok(name) => change(req, body, &api, name, Op::Unlock).await,
            Err(e) => e.into_response(),
        },
    }
}

/// A lock request that waits in the lock's queue for at most `wait`.
async fn wait_for(req: &Request, body: Body, api: &Api, name: String, wait: Duration) -> Response {
    let arrived = Instant::now();
    let claim = match read_request(req, body, api, Op::Lock).await {
        Ok(claim) => claim,
        Err(response) => return response,
    };
    let decided = api
        .store
        .wait(name.clone(), claim.clone(), wait, api.waiting.grace);
    // hyper does not notice a client that goes away while its request waits; without this
    // watch, its place (or a grant made to it) would outlive it.
    let gone = async {
        match req.remote_addr().as_socket_addr() {
            Some(peer) => api.peers.gone(*peer).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        decided = decided => match decided {
            Ok(decision) => {
                if decision.verdict == Verdict::Acquired {
                    api.metrics.waited(arrived.elapsed());
                }
                decision_response(&name, &claim, &decision)
            }
            Err(e) => store_error(&e),
        },
        () = gone => error_response(
            StatusCode::BAD_REQUEST,
            "the client closed its connection while waiting",
        ),
    }
}

/// Withdraws the waiter with request id `id` from the queue of `name`.
async fn withdraw(api: &Api, name: String, id: String) -> Response {
    let claim = Claim {
        request_id: Some(id.clone()),
        ..Claim::default()
    };
    let request = LockRequest {
        name: name.clone(),
        op: Op::Withdraw,
        claim,
    };
    match api.store.submit(request).await {
        Ok(decision) => withdrawal_response(&name, &id, &decision),
        Err(e) => store_error(&e),
    }
}

/// `POST /lock/{name}/ACTION`: `renew` and `force-release`.
#[handler]
async fn lock_action_handler(req: &Request, body: Body, api: Data<&Arc<Api>>) -> Response {
    match lock_action(req) {
        Ok((name, "renew")) => change(req, body, &api, name, Op::Renew).await,
        Ok((name, "force-release")) => force_release(req, body, &api, name).await,
        Ok((name, "reserve")) => reserve(req, body, &api, name).await,
        Ok((_, action)) => error_response(
            StatusCode::NOT_FOUND,
            &format!(
                "no such action '{action}' on a lock (expected POST /lock/NAME/renew, /lock/NAME/force-release or /lock/NAME/reserve)"
            ),
        ),
        Err(e) => e.into_response(),
    }
}

/// `POST /lock/{name}/force-release`: an operator frees a stuck lock, saying why.
async fn force_release(req: &Request, body: Body, api: &Api, name: String) -> Response {
    if let Some(refused) = refuse_unless_admin(req, "force-release") {
        return refused;
    }
    let release = match (request_id(req), read_release(body).await) {
        (Ok(request_id), Ok(release)) => (request_id, release),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let (request_id, body::Release { reason, by }) = release;
    let by = by
        .or_else(|| basic_user(req))
        .unwrap_or_else(|| "anonymous".to_owned());
    let request = LockRequest {
        name: name.clone(),
        op: Op::ForceRelease,
        claim: Claim {
            request_id,
            reason: Some(reason.clone()),
            client: client_address(req),
            ..Claim::new("", by.clone())
        },
    };
    match api.store.submit(request).await {
        Ok(decision) => {
            if decision.verdict == crate::domain::Verdict::Released {
                tracing::warn!(lock = %name, by = %by, reason = %reason, "lock force-released");
            }
            answer::force_release_response(&name, &by, &reason, &decision)
        }
        Err(e) => store_error(&e),
    }
}

/// `POST /lock/{name}/reserve`: an operator takes a free lock by hand, with a note and a ttl:
/// an ordinary lock (key `reserved-by:BY`, requestor BY, owner `reserved_by` and `note`) that
/// shows, expires and is released like any other.
async fn reserve(req: &Request, body: Body, api: &Api, name: String) -> Response {
    if let Some(refused) = refuse_unless_admin(req, "reserve") {
        return refused;
    }
    let (request_id, reservation) = match (request_id(req), body::read_reservation(body).await) {
        (Ok(request_id), Ok(reservation)) => (request_id, reservation),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let by = reservation
        .by
        .or_else(|| basic_user(req))
        .unwrap_or_else(|| "anonymous".to_owned());
    let owner = crate::domain::Owner::from([
        ("reserved_by".to_owned(), by.clone()),
        ("note".to_owned(), reservation.note.clone()),
    ]);
    let claim = Claim {
        request_id,
        ttl: Some(reservation.ttl),
        owner: Some(owner),
        reason: Some(reservation.note),
        client: client_address(req),
        ..Claim::new(format!("reserved-by:{by}"), by)
    };
    let claim = match api.leases.settle(Op::Reserve, claim) {
        Ok(claim) => claim,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let request = LockRequest {
        name: name.clone(),
        op: Op::Reserve,
        claim: claim.clone(),
    };
    match api.store.submit(request).await {
        Ok(decision) => decision_response(&name, &claim, &decision),
        Err(e) => store_error(&e),
    }
}

/// The answer for a request without the operators' rights to `action`, if it has none: 401
/// without credentials, 403 with the API's.
fn refuse_unless_admin(req: &Request, action: &str) -> Option<Response> {
    if req.extensions().get::<Role>() == Some(&Role::Admin) {
        return None;
    }
    if req
        .headers()
        .contains_key(poem::http::header::AUTHORIZATION)
    {
        return Some(error_response(
            StatusCode::FORBIDDEN,
            &format!("{action} needs the operators' credentials (ADMIN_USER and ADMIN_PASS)"),
        ));
    }
    Some(middleware::unauthorized())
}

/// The client's IP address, for the history.
fn client_address(req: &Request) -> Option<String> {
    let address = req.remote_addr().as_socket_addr()?;
    Some(address.ip().to_canonical().to_string())
}

/// The user name of the request's basic auth, if it has one.
fn basic_user(req: &Request) -> Option<String> {
    use poem::web::headers::authorization::Basic;
    use poem::web::headers::{Authorization, HeaderMapExt};
    let Authorization(basic) = req.headers().typed_get::<Authorization<Basic>>()?;
    Some(basic.username().to_owned())
}

async fn change(req: &Request, body: Body, api: &Api, name: String, op: Op) -> Response {
    let claim = match read_request(req, body, api, op).await {
        Ok(claim) => claim,
        Err(response) => return response,
    };
    let request = LockRequest {
        name: name.clone(),
        op,
        claim: claim.clone(),
    };
    match api.store.submit(request).await {
        Ok(decision) => decision_response(&name, &claim, &decision),
        Err(e) => store_error(&e),
    }
}

/// The claim of a lock, unlock or renewal, with its request id and lease settled.
async fn read_request(req: &Request, body: Body, api: &Api, op: Op) -> Result<Claim, Response> {
    let claim = match (request_id(req), read_claim(body).await) {
        (Ok(request_id), Ok(claim)) => Claim {
            request_id,
            client: client_address(req),
            ..claim
        },
        (Err(e), _) | (_, Err(e)) => return Err(e.into_response()),
    };
    let claim = api
        .leases
        .settle(op, claim)
        .map_err(|message| error_response(StatusCode::BAD_REQUEST, &message))?;
    if claim.hold == Some(crate::domain::Hold::Build)
        && let Some(refused) =
            crate::concourse::refuse_hold(claim.owner.as_ref(), api.concourse.as_ref())
    {
        return Err(error_response(StatusCode::BAD_REQUEST, &refused));
    }
    Ok(claim)
}

/// 503: nothing was decided (the change could not be saved, or the server is stopping).
fn store_error(e: &StoreError) -> Response {
    error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
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
            Op::Lock | Op::Wait { .. } => claim.ttl = claim.ttl.or(self.default_ttl),
            Op::Renew if claim.ttl.is_none() => {
                return Err(
                    "field 'ttl' is required to renew: send how long from now the claim should live, like \"30m\""
                        .into(),
                );
            }
            _ => {}
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

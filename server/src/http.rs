//! The HTTP API, wire-compatible with the original locker server.
//!
//! Routes, request parsing and response shapes live here; decisions are the lock rules',
//! durability the store's. Every answer is JSON, errors included.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::http::{StatusCode, header};
use poem::web::headers::authorization::Basic;
use poem::web::headers::{Authorization, HeaderMapExt};
use poem::{Body, Endpoint, EndpointExt, Request, Response, Route, get, handler};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Credentials;
use crate::names;
use crate::rules::{Claim, Decision, Lock, Op, Verdict};
use crate::state_file::{LockView, LocksView, View};
use crate::store::{LockStore, Request as LockRequest, StoreError};

/// The largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send a request body once its head has arrived; a body that
/// never ends (or a Content-Length larger than what is sent) gets 408 after this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The fields a lock or unlock body may have.
const BODY_FIELDS: &str = "key, locked_by, lock_by, requestor";

/// The header that names one request across its retries (IETF draft "The Idempotency-Key HTTP
/// Header Field").
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("../openapi.yaml");

/// Builds the whole HTTP application.
pub fn app(store: LockStore, auth: Option<Credentials>) -> impl Endpoint<Output = Response> {
    let auth = auth.map(Arc::new);
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
        .around(move |ep, req| {
            let auth = auth.clone();
            async move {
                if let Some(expected) = auth.as_deref()
                    && req.uri().path() != "/healthz"
                    && !authorized(&req, expected)
                {
                    let mut resp = error_response(StatusCode::UNAUTHORIZED, "Please Authenticate");
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Basic realm=\"locker\""),
                    );
                    return Ok(resp);
                }
                ep.call(req).await
            }
        })
        .around(|ep, mut req| async move {
            // Read every body before anything else answers: a response sent while the body
            // is unread makes hyper close the connection, and a client reusing it then fails.
            match buffer_body(&mut req).await {
                Ok(()) => ep.call(req).await,
                Err(e) => Ok(e.into_response()),
            }
        })
        .around(|ep, req| async move {
            // RFC 9110: a 405 says which methods the path has.
            let allow = if req.uri().path().starts_with("/lock/") {
                "GET, PUT, DELETE"
            } else {
                "GET"
            };
            let mut resp = ep.call(req).await?;
            if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
                resp.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static(allow));
            }
            Ok(resp)
        })
        .around(|ep, req| async move {
            let started = Instant::now();
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            let resp = ep.call(req).await?;
            tracing::info!(
                "{method} {path} {} {:.3}ms",
                resp.status().as_u16(),
                started.elapsed().as_secs_f64() * 1000.0
            );
            Ok(resp)
        })
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

#[handler]
fn list_locks(store: poem::web::Data<&LockStore>) -> Response {
    let mut chunks = Chunks::default();
    let written =
        store.read(|table| serde_json::to_writer(&mut chunks, &LocksView(&table.locks, View::Api)));
    match written {
        Ok(()) => {
            let stream = futures_util::stream::iter(
                chunks.finish().into_iter().map(Ok::<_, std::io::Error>),
            );
            Response::builder()
                .status(StatusCode::OK)
                .content_type("application/json")
                .body(Body::from_bytes_stream(stream))
        }
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Output collected in fixed-size chunks: a large body (every lock of a big table) is never
/// copied as it grows, so it costs its own size in memory and no more.
#[derive(Default)]
struct Chunks {
    done: Vec<bytes::Bytes>,
    current: Vec<u8>,
}

impl Chunks {
    const SIZE: usize = 64 * 1024;

    fn finish(mut self) -> Vec<bytes::Bytes> {
        if !self.current.is_empty() {
            self.done.push(self.current.into());
        }
        self.done
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.current.capacity() == 0 {
            self.current.reserve_exact(Self::SIZE);
        }
        let room = Self::SIZE - self.current.len();
        let n = buf.len().min(room);
        self.current.extend_from_slice(&buf[..n]);
        if self.current.len() == Self::SIZE {
            self.done.push(std::mem::take(&mut self.current).into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[handler]
fn show_lock(req: &Request, store: poem::web::Data<&LockStore>) -> Response {
    match lock_name(req) {
        Ok(name) => {
            let lock = store.read(|table| table.get(&name));
            json_response(StatusCode::OK, &LockView(&lock, View::Api))
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
        Err(e @ StoreError::NotPersisted(_)) | Err(e @ StoreError::Stopped) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

/// A refused request: the status and the message of its JSON error body.
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: String) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message)
    }

    fn into_response(self) -> Response {
        error_response(self.0, &self.1)
    }
}

/// The lock name from the raw (still percent-encoded) path.
fn lock_name(req: &Request) -> Result<String, ApiError> {
    let segment = req.uri().path().strip_prefix("/lock/").unwrap_or_default();
    names::lock_name_from_path(segment).map_err(ApiError::bad_request)
}

/// Replaces the request's body by its bytes, read in full (at most [`MAX_BODY`]).
async fn buffer_body(req: &mut Request) -> Result<(), ApiError> {
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(too_large());
    }
    let body = req.take_body().into_bytes_limit(MAX_BODY);
    let Ok(read) = tokio::time::timeout(BODY_TIMEOUT, body).await else {
        return Err(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received in full within {}s",
                BODY_TIMEOUT.as_secs()
            ),
        ));
    };
    match read {
        Ok(bytes) => {
            req.set_body(bytes);
            Ok(())
        }
        Err(poem::error::ReadBodyError::PayloadTooLarge) => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Reads and checks a lock/unlock body, whatever its Content-Type says.
async fn read_claim(body: Body) -> Result<Claim, ApiError> {
    let bytes = body
        .into_bytes()
        .await
        .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
    parse_claim(&bytes).map_err(ApiError::bad_request)
}

/// Parses `{"key": K, "locked_by"|"lock_by"|"requestor": R}`; the requestor defaults to the key.
pub fn parse_claim(bytes: &[u8]) -> Result<Claim, String> {
    match serde_json::from_slice::<ClaimBody>(bytes) {
        Ok(body) => body.into_claim(),
        // Anything unusual (a wrong type, an unknown or repeated field, bad JSON) goes the slow
        // way, which says exactly what is wrong.
        Err(_) => parse_claim_value(bytes),
    }
}

/// A well-formed body, read without building a `serde_json::Value` (the hot path). Fields must
/// be strings: `null` is refused here, so that the slow path can say so.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "some_text")]
    locked_by: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "some_text")]
    lock_by: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "some_text")]
    requestor: Option<Cow<'a, str>>,
}

fn some_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Cow::<'de, str>::deserialize(d).map(Some)
}

impl<'a> ClaimBody<'a> {
    fn into_claim(self) -> Result<Claim, String> {
        names::check_text("field 'key'", &self.key)?;
        let checked = |field: &str, value: Option<Cow<'a, str>>| {
            if let Some(text) = &value {
                names::check_text(&format!("field '{field}'"), text)?;
            }
            Ok(value)
        };
        claim_from(
            self.key,
            [
                checked("locked_by", self.locked_by),
                checked("lock_by", self.lock_by),
                checked("requestor", self.requestor),
            ],
        )
    }
}

/// The claim of `key` and the requestor named by the body's `locked_by`, `lock_by` and
/// `requestor` fields (each already read and checked, in that order; the first error wins):
/// the spellings given must agree, and the requestor defaults to the key.
fn claim_from<T>(key: T, requestors: [Result<Option<T>, String>; 3]) -> Result<Claim, String>
where
    T: AsRef<str> + Into<String>,
{
    let mut requestor: Option<T> = None;
    for named in requestors {
        let Some(r) = named? else { continue };
        if requestor
            .as_ref()
            .is_some_and(|prev| prev.as_ref() != r.as_ref())
        {
            return Err(
                "locked_by, lock_by and requestor name the same thing; they disagree here".into(),
            );
        }
        requestor = Some(r);
    }
    let key: String = key.into();
    Ok(Claim {
        requestor: requestor.map_or_else(|| key.clone(), Into::into),
        key,
        request_id: None,
    })
}

/// Parses a body as a JSON value first, to explain precisely what is wrong with it.
fn parse_claim_value(bytes: &[u8]) -> Result<Claim, String> {
    let example = r#"send JSON like {"key": "my-key", "locked_by": "my-job"}"#;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("request body is empty; {example}"));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("request body is not valid JSON ({e}); {example}"))?;
    let Value::Object(fields) = value else {
        return Err(format!("request body must be a JSON object; {example}"));
    };
    let unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| !matches!(*k, "key" | "locked_by" | "lock_by" | "requestor"))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown field(s) in request body: {} (expected: {BODY_FIELDS})",
            unknown.join(", ")
        ));
    }
    let text = |field: &str| -> Result<Option<String>, String> {
        match fields.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => {
                names::check_text(&format!("field '{field}'"), s)?;
                Ok(Some(s.clone()))
            }
            Some(other) => Err(format!(
                "field '{field}' must be a string, not {}",
                json_type(other)
            )),
        }
    };
    let key = text("key")?.ok_or_else(|| format!("field 'key' is required; {example}"))?;
    claim_from(key, ["locked_by", "lock_by", "requestor"].map(text))
}

/// The request's `Idempotency-Key` header, if it has one: retries of one request share it, so
/// that a retry after a lost answer does not claim or release a second time.
fn request_id(req: &Request) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(format!(
            "{IDEMPOTENCY_KEY} is given more than once; send one per request"
        )));
    }
    // Bytes that are not UTF-8 are not visible ASCII either: the check names them.
    let id = String::from_utf8_lossy(value.as_bytes());
    names::check_request_id(&id)
        .map_err(|e| ApiError::bad_request(format!("{IDEMPOTENCY_KEY}: {e}")))?;
    Ok(Some(id.into_owned()))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The answer to a lock or unlock, in the original server's shape.
fn decision_response(name: &str, claim: &Claim, decision: &Decision) -> Response {
    let lock = &decision.lock;
    let (status, field, message) = match decision.verdict {
        Verdict::Acquired => (
            StatusCode::OK,
            "response",
            format!(
                "Lock for '{name}' acquired by '{}' using key '{}'",
                claim.requestor, claim.key
            ),
        ),
        Verdict::Released => (
            StatusCode::OK,
            "response",
            format!(
                "Lock for '{name}' released by '{}' using key '{}'",
                claim.requestor, claim.key
            ),
        ),
        Verdict::NotHeld => (
            StatusCode::OK,
            "response",
            format!("Lock for '{name}' is not held; nothing to release"),
        ),
        Verdict::NoClaim => (
            StatusCode::OK,
            "response",
            format!(
                "'{}' holds no claim on lock '{name}' with key '{}'; nothing to release",
                claim.requestor, claim.key
            ),
        ),
        Verdict::HeldByOther => (
            StatusCode::LOCKED,
            "error",
            format!(
                "Lock for '{name}' is held by {} using key '{}', not '{}'",
                holders(lock),
                lock.key,
                claim.key
            ),
        ),
    };
    json_response(
        status,
        &ChangeAnswer {
            field,
            message: &message,
            lock,
        },
    )
}

/// The body of a lock or unlock answer, `{FIELD: MESSAGE, "lock": LOCK}`, written straight to
/// bytes (no intermediate `serde_json::Value`: this is the hot path).
struct ChangeAnswer<'a> {
    field: &'static str,
    message: &'a str,
    lock: &'a Lock,
}

impl Serialize for ChangeAnswer<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry(self.field, self.message)?;
        map.serialize_entry("lock", &LockView(self.lock, View::Api))?;
        map.end()
    }
}

/// The holders of a lock for a message: `'a' (2), 'b'`.
fn holders(lock: &Lock) -> String {
    lock.locked_by
        .iter()
        .map(|(r, c)| {
            if c == 1 {
                format!("'{r}'")
            } else {
                format!("'{r}' ({c})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A JSON error body with `status`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(status, body),
        Err(e) => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(format!("{{\"error\":\"{e}\"}}")),
    }
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requestor_spellings_and_default() {
        let c = parse_claim(br#"{"key":"k"}"#).unwrap();
        assert_eq!((c.key.as_str(), c.requestor.as_str()), ("k", "k"));
        for field in ["locked_by", "lock_by", "requestor"] {
            let body = format!(r#"{{"key":"k","{field}":"r"}}"#);
            assert_eq!(parse_claim(body.as_bytes()).unwrap().requestor, "r");
        }
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let cases: [(&[u8], &str); 9] = [
            (b"", "empty"),
            (b"key=k", "not valid JSON"),
            (b"[1]", "JSON object"),
            (
                br#"{"key":"k","lokc_by":"x"}"#,
                "unknown field(s) in request body: lokc_by",
            ),
            (br#"{"key":1}"#, "'key' must be a string, not a number"),
            (br#"{"locked_by":"r"}"#, "'key' is required"),
            (br#"{"key":""}"#, "'key' must not be empty"),
            (br#"{"key":"k","lock_by":"a","locked_by":"b"}"#, "disagree"),
            (b"\xff\xfe", "not valid JSON"),
        ];
        for (body, expected) in cases {
            let err = parse_claim(body).unwrap_err();
            assert!(err.contains(expected), "{body:?}: {err}");
        }
    }

    proptest::proptest! {
        /// The fast path reads every body exactly as the slow, explaining path does: the same
        /// claim, or the same error.
        #[test]
        fn the_fast_path_agrees_with_the_slow_one(
            fields in proptest::collection::vec((0..6usize, 0..8usize), 0..6)
        ) {
            let names = ["key", "locked_by", "lock_by", "requestor", "other", "key"];
            let values = [
                json!("k"), json!("r"), json!(""), json!("a\u{0}b"), json!(null), json!(1),
                json!({"x": "y"}), json!("x".repeat(600)),
            ];
            let mut body = String::from("{");
            for (i, (n, v)) in fields.iter().enumerate() {
                if i > 0 { body.push(','); }
                body.push_str(&format!("{}:{}", json!(names[*n]), values[*v]));
            }
            body.push('}');
            proptest::prop_assert_eq!(
                parse_claim(body.as_bytes()),
                parse_claim_value(body.as_bytes()),
                "{}", body
            );
        }
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}

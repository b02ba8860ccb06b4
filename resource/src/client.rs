//! HTTP to the locker server (and the one call to a BOSH director), on `ureq` with rustls.
//!
//! Every request has a 10 s connect timeout and a 60 s overall timeout (a lock that waits in the
//! server's queue gets its wait and 15 s more), sends `User-Agent: locker-resource/<version>`
//! and basic auth when configured. Errors say whether they
//! are worth retrying ([`RequestError::is_transient`]): a server that restarts or is briefly
//! unreachable must not fail a waiting build, while a bad certificate or a 401 will not heal.
//! Which server certificates are trusted, and the words for one that is not, is [`crate::tls`].
//!
//! The lock is read from the server's JSON with every field optional: a server without leases
//! (the original one, or this one before them) sends no `token` and no `holders`, and the
//! resource treats them as absent, and a server without a queue sends no `queue`. Request
//! bodies carry `ttl`, `owner` and `hold` only when there is one, so a body without them is the
//! one older servers know.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use thiserror::Error;
use ureq::tls::{PemItem, TlsConfig};

use crate::config::{Hold, MAX_LOCK_NAME_BYTES, Source};
use crate::tls::{self, RefusedCertificate, ServerTrust};

/// How the resource introduces itself to servers.
pub const USER_AGENT: &str = concat!("locker-resource/", env!("CARGO_PKG_VERSION"));

/// Where Concourse mounts the worker's certificates in resource containers.
pub const SYSTEM_CERT_DIR: &str = "/etc/ssl/certs";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The least time a request gets when a deadline is near, so the last attempt can be answered.
const MIN_REQUEST_TIME: Duration = Duration::from_secs(1);
/// How long after its wait a lock that waits in the queue may take to be answered: the server
/// answers when the wait runs out, so the answer is late only by the way back (or a slow disk).
const WAIT_ANSWER_TIME: Duration = Duration::from_secs(15);

/// A lock as the server describes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Lock {
    /// The key holding the lock, empty when free.
    #[serde(default)]
    pub key: String,
    /// Requestor to number of claims.
    #[serde(default)]
    pub locked_by: BTreeMap<String, u64>,
    /// The server's revision counter at the lock's last change.
    #[serde(default)]
    pub revision: u64,
    /// When the current key took the lock (RFC 3339), `None` when free.
    #[serde(default)]
    pub locked_at: Option<String>,
    /// The fencing token: it grows each time a key takes the free lock, so whatever the holder
    /// protects can refuse a write carrying an older one. `None` when free, or from a server
    /// without leases.
    #[serde(default)]
    pub token: Option<u64>,
    /// Who holds the lock, one entry per requestor sorted by requestor; empty when free, or
    /// from a server without leases (see [`Lock::locked_by`] then).
    #[serde(default, deserialize_with = "locker_protocol::null_as_default")]
    pub holders: Vec<Holder>,
    /// Who waits for the lock, next in line first; empty when nobody waits, or from a server
    /// without a queue.
    #[serde(default, deserialize_with = "locker_protocol::null_as_default")]
    pub queue: Vec<Waiter>,
    /// The object exactly as the server sent it, fields this version does not know included.
    #[serde(skip)]
    pub json: Value,
}

/// One requestor's claims on a lock, as a server with leases describes them.
pub use locker_protocol::Holder;

/// One request waiting in a lock's queue, as a server with a queue describes it.
pub use locker_protocol::Waiter;

/// Where a waiting lock request stands in the lock's queue, as a 423 after a wait tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct QueuePlace {
    /// 1 for the next in line.
    pub position: u64,
    /// How many wait, this request included.
    pub length: u64,
}

/// A holder for a log line: the build when its owner names one,
/// `main/prod/deploy #12 (https://...) as 'deploy-12' (1 claim)`, else `'deploy-12' (1 claim)`;
/// claims held for their build say so: `(1 claim, held until its build finishes)`.
pub fn describe_holder(holder: &Holder) -> String {
    let build = crate::BuildEnv::from_owner(&holder.owner);
    let mut claims = claims_text(holder.count);
    if holder.hold.as_deref() == Some(Hold::Build.as_str()) {
        claims.push_str(", held until its build finishes");
    }
    if build.is_known() {
        format!("{} as '{}' ({claims})", build.describe(), holder.requestor)
    } else {
        format!("'{}' ({claims})", holder.requestor)
    }
}

fn claims_text(count: u64) -> String {
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} claim{plural}")
}

impl Lock {
    fn from_json(json: Value) -> Result<Self, serde_json::Error> {
        let mut lock: Lock = serde_json::from_value(json.clone())?;
        lock.json = json;
        Ok(lock)
    }

    /// Whether no key holds the lock.
    pub fn is_free(&self) -> bool {
        self.key.is_empty() || self.locked_by.is_empty()
    }

    /// Whether the server describes holders, as a server with leases (and `ttl`) does.
    pub fn server_has_leases(&self) -> bool {
        self.json.get("holders").is_some()
    }

    /// The entry of one requestor, when the server gives holders and it holds the lock.
    pub fn holder(&self, requestor: &str) -> Option<&Holder> {
        self.holders
            .iter()
            .find(|holder| holder.requestor == requestor)
    }

    /// When the lock's lease ends, unless renewed: the latest `expires_at` of its holders.
    /// `None` when it is free, when a holder took it without a ttl (it is held until
    /// unlocked), or when the server has no leases.
    pub fn lease_ends(&self) -> Option<&str> {
        let mut latest: Option<(SystemTime, &str)> = None;
        for holder in &self.holders {
            let text = holder.expires_at.as_deref()?;
            let at = humantime::parse_rfc3339_weak(text).ok()?;
            if latest.is_none_or(|(time, _)| at > time) {
                latest = Some((at, text));
            }
        }
        latest.map(|(_, text)| text)
    }

    /// Requestor to claims as JSON (`{"build-7": 2}`): the `locked_by` file and the `holders`
    /// metadata.
    pub fn locked_by_json(&self) -> String {
        serde_json::to_string(&self.locked_by).unwrap_or_default()
    }

    /// The server's `holders` list as JSON, `[]` from a server without leases: the `holders`
    /// file.
    pub fn holders_json(&self) -> String {
        let holders = self
            .json
            .get("holders")
            .filter(|holders| !holders.is_null());
        holders.map_or_else(|| "[]".to_owned(), Value::to_string)
    }

    /// The holders for a log line, naming the builds when their owners are known:
    /// `main/prod/deploy #12 (https://...) as 'build-12' (1 claim), 'build-8' (2 claims)`.
    pub fn holders_text(&self) -> String {
        if !self.holders.is_empty() {
            return self
                .holders
                .iter()
                .map(describe_holder)
                .collect::<Vec<_>>()
                .join(", ");
        }
        if self.locked_by.is_empty() {
            return "nobody".to_owned();
        }
        self.locked_by
            .iter()
            .map(|(who, count)| format!("'{who}' ({})", claims_text(*count)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A claim on a lock: the key and who claims with it, and the id its retries share.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    /// The key.
    pub key: &'a str,
    /// The requestor.
    pub locked_by: &'a str,
    /// The lease: a `lock` or `renew` asks the server to end the requestor's claims this long
    /// from now unless renewed.
    pub ttl: Option<Duration>,
    /// The claiming build, sent with a `lock` (see [`crate::BuildEnv::owner`]); not sent when
    /// `None` or empty.
    pub owner: Option<&'a BTreeMap<String, String>>,
    /// How long the claim is held, sent with a `lock` when the pipeline chose; `None` leaves it
    /// to the server (until unlocked for a new claim, the holder's own for a held one).
    pub hold: Option<Hold>,
    /// Sent as `Idempotency-Key`: one id for every attempt of one lock, unlock or renew, so
    /// that a retry after a lost answer does not claim or release a second time.
    pub request_id: &'a str,
}

impl Claim<'_> {
    /// The request body: `{"key", "locked_by"}`, plus `ttl`, `owner` and `hold` when there is
    /// one.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("key".to_owned(), json!(self.key));
        body.insert("locked_by".to_owned(), json!(self.locked_by));
        if let Some(ttl) = self.ttl {
            body.insert("ttl".to_owned(), ttl_json(ttl));
        }
        if let Some(owner) = self.owner.filter(|owner| !owner.is_empty()) {
            body.insert("owner".to_owned(), json!(owner));
        }
        if let Some(hold) = self.hold {
            body.insert("hold".to_owned(), json!(hold.as_str()));
        }
        Value::Object(body)
    }
}

/// A ttl as the server reads it: whole seconds as a number (`1800`), anything finer as a
/// duration string (`"1s 500ms"`).
fn ttl_json(ttl: Duration) -> Value {
    if ttl.subsec_nanos() == 0 {
        json!(ttl.as_secs())
    } else {
        json!(humantime::format_duration(ttl).to_string())
    }
}

/// A fresh request id: 128 random bits in hex.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The server's answer to a lock, unlock or renew.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimAnswer {
    /// 200: done; `lock` is the state after the change.
    Done {
        /// The server's `response` text.
        message: String,
        /// The lock after the change.
        lock: Lock,
    },
    /// 423: another key holds the lock.
    Locked {
        /// The server's `error` text, naming who holds it.
        message: String,
        /// The lock as it is.
        lock: Lock,
        /// Where the request waits in the lock's queue, when it was sent with a wait to a
        /// server that queues; `None` from a server without a queue.
        queue: Option<QueuePlace>,
    },
    /// 409 (to a renew): the requestor holds no claim to renew; it expired or was never taken.
    NotHeld {
        /// The server's `error` text.
        message: String,
        /// The lock as it is.
        lock: Lock,
    },
}

/// A request that did not get a usable answer.
#[derive(Debug, Error)]
pub enum RequestError {
    /// No answer: connection refused or reset, timeout, DNS. Worth retrying.
    #[error("could not reach {url}: {cause}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What went wrong.
        cause: String,
    },
    /// The server's certificate was refused; `cause` says what it presented, what was trusted
    /// and what to change.
    #[error("TLS connection to {url} failed: {cause}")]
    CertificateRefused {
        /// The URL asked.
        url: String,
        /// What was refused and why.
        cause: String,
    },
    /// The TLS handshake failed for another reason.
    #[error(
        "TLS connection to {url} failed: {cause} (set source.ca_cert to the server's certificate \
             or its CA's, or source.skip_ssl_validation to true)"
    )]
    Tls {
        /// The URL asked.
        url: String,
        /// What went wrong.
        cause: String,
    },
    /// The request could not be made at all (a malformed URL).
    #[error("could not ask {url}: {cause}")]
    Invalid {
        /// The URL.
        url: String,
        /// What went wrong.
        cause: String,
    },
    /// The server answered with an error status.
    #[error("{url} answered {status}: {message}")]
    Status {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's `error` text, or the start of its body.
        message: String,
    },
    /// The server answered something that is not the locker API's JSON.
    #[error("{url} answered {status} with a body the locker API does not describe: {cause}")]
    BadAnswer {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What was wrong with it.
        cause: String,
    },
}

impl RequestError {
    /// Whether trying again later may succeed: the server was unreachable, or answered
    /// 5xx, 408 or 429.
    pub fn is_transient(&self) -> bool {
        match self {
            RequestError::Unreachable { .. } => true,
            RequestError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            RequestError::CertificateRefused { .. }
            | RequestError::Tls { .. }
            | RequestError::Invalid { .. }
            | RequestError::BadAnswer { .. } => false,
        }
    }
}

/// Setting up the client failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// `ca_cert` could not be read.
    #[error("source.ca_cert is not a valid PEM certificate: {0}")]
    BadCaCert(String),
    /// rustls could not make a certificate verifier of the trusted certificates.
    #[error("could not set up the checks of the server's certificate: {0}")]
    Tls(String),
}

/// Talks to one locker server.
#[derive(Debug, Clone)]
pub struct LockerClient {
    agent: ureq::Agent,
    base_url: String,
    authorization: Option<String>,
    deadline: Option<Instant>,
}

impl LockerClient {
    /// A client for the server in `source`, trusting Mozilla's roots, the certificates under
    /// [`SYSTEM_CERT_DIR`] and `source.ca_cert` (also as the server's own certificate, see
    /// [`crate::tls`]).
    pub fn new(source: &Source) -> Result<Self, ClientError> {
        Self::with_cert_dir(source, Path::new(SYSTEM_CERT_DIR))
    }

    /// As [`LockerClient::new`], reading the extra trusted certificates from `cert_dir`.
    pub fn with_cert_dir(source: &Source, cert_dir: &Path) -> Result<Self, ClientError> {
        let agent = if source.skip_ssl_validation {
            agent(TlsConfig::builder().disable_verification(true).build())
        } else if source.locker_uri.starts_with("https://") {
            let user_certificates = match &source.ca_cert {
                Some(pem) => pem_certificates(pem.as_bytes()).map_err(ClientError::BadCaCert)?,
                None => Vec::new(),
            };
            let trust = ServerTrust::new("source.ca_cert")
                .with_roots(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned())
                .with_roots(certificates_in_dir(cert_dir))
                .with_user_certificates(user_certificates)
                .map_err(ClientError::BadCaCert)?;
            let client_config = trust
                .client_config()
                .map_err(|err| ClientError::Tls(err.to_string()))?;
            tls::connector::agent(agent_config(TlsConfig::default()), Arc::new(client_config))
        } else {
            agent(TlsConfig::default())
        };
        let authorization = source.credentials.as_ref().map(|credentials| {
            let pair = format!("{}:{}", credentials.username, credentials.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(Self {
            agent,
            base_url: source.locker_uri.clone(),
            authorization,
            deadline: None,
        })
    }

    /// Shortens each request's 60 s timeout so that it ends by `deadline` (but gets at least
    /// a second), so that a hanging server cannot stretch a put's `timeout`.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The URL of a lock, its name percent-encoded as one path segment.
    pub fn lock_url(&self, name: &str) -> String {
        format!(
            "{}/lock/{}",
            self.base_url,
            locker_protocol::names::encode_segment(name)
        )
    }

    /// `GET /lock/{name}`: the lock's current state.
    pub fn get_lock(&self, name: &str) -> Result<Lock, RequestError> {
        let url = self.lock_url(name);
        let request = self.prepare(self.agent.get(&url), self.request_timeout());
        let (status, body) = exchange(&url, request.call())?;
        if status != 200 {
            return Err(status_error(&url, status, &body));
        }
        let json = parse_json(&url, status, &body)?;
        Lock::from_json(json).map_err(|err| bad_answer(&url, status, err))
    }

    /// `PUT /lock/{name}`: claim the lock.
    pub fn lock(&self, name: &str, claim: &Claim<'_>) -> Result<ClaimAnswer, RequestError> {
        let url = self.lock_url(name);
        self.send_claim(&url, self.agent.put(&url), claim, self.request_timeout())
    }

    /// `PUT /lock/{name}?wait=WAIT`: claim the lock, or wait in its queue for up to `wait`
    /// (the server may cut it shorter) and hear where the request stands when the wait runs out.
    /// The request waits for the answer until 15 s after `wait`, or 1 s after the client's
    /// deadline if that comes first: the server answers when the wait ends.
    pub fn lock_waiting(
        &self,
        name: &str,
        claim: &Claim<'_>,
        wait: Duration,
    ) -> Result<ClaimAnswer, RequestError> {
        let url = format!("{}?wait={}", self.lock_url(name), wait_text(wait));
        let mut timeout = wait.saturating_add(WAIT_ANSWER_TIME);
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            timeout = timeout.min(left.saturating_add(MIN_REQUEST_TIME));
        }
        self.send_claim(&url, self.agent.put(&url), claim, timeout)
    }

    /// `DELETE /lock/{name}/queue/{request_id}`: leave the lock's queue, releasing the claim if
    /// the lock was granted to that request meanwhile. The request gets `within`, whatever the
    /// deadline: it is what `out` does before it stops.
    pub fn withdraw(
        &self,
        name: &str,
        request_id: &str,
        within: Duration,
    ) -> Result<Lock, RequestError> {
        let url = format!(
            "{}/queue/{}",
            self.lock_url(name),
            locker_protocol::names::encode_segment(request_id)
        );
        let request = self.prepare(self.agent.delete(&url), within);
        let (status, body) = exchange(&url, request.call())?;
        if status != 200 {
            return Err(status_error(&url, status, &body));
        }
        let json = parse_json(&url, status, &body)?;
        let lock = json
            .get("lock")
            .cloned()
            .ok_or_else(|| bad_answer(&url, status, "it has no \"lock\""))?;
        Lock::from_json(lock).map_err(|err| bad_answer(&url, status, err))
    }

    /// `DELETE /lock/{name}`: release one claim.
    pub fn unlock(&self, name: &str, claim: &Claim<'_>) -> Result<ClaimAnswer, RequestError> {
        let url = self.lock_url(name);
        let request = self.agent.delete(&url).force_send_body();
        self.send_claim(&url, request, claim, self.request_timeout())
    }

    /// `POST /lock/{name}/renew`: move the requestor's deadline to now + `claim.ttl`.
    pub fn renew(&self, name: &str, claim: &Claim<'_>) -> Result<ClaimAnswer, RequestError> {
        let url = format!("{}/renew", self.lock_url(name));
        self.send_claim(&url, self.agent.post(&url), claim, self.request_timeout())
    }

    /// Sends `claim` as the body of `request`, with its request id.
    fn send_claim(
        &self,
        url: &str,
        request: ureq::RequestBuilder<ureq::typestate::WithBody>,
        claim: &Claim<'_>,
        timeout: Duration,
    ) -> Result<ClaimAnswer, RequestError> {
        let request = self
            .prepare(request, timeout)
            .header(locker_protocol::IDEMPOTENCY_KEY, claim.request_id);
        claim_answer(url, request.send_json(claim.body()))
    }

    /// The timeout of a request that the server answers at once: 60 s, shortened so that it
    /// ends by the deadline, but at least a second.
    fn request_timeout(&self) -> Duration {
        match self.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                left.clamp(MIN_REQUEST_TIME, REQUEST_TIMEOUT)
            }
            None => REQUEST_TIMEOUT,
        }
    }

    /// Adds the credentials and the timeout.
    fn prepare<B>(
        &self,
        request: ureq::RequestBuilder<B>,
        timeout: Duration,
    ) -> ureq::RequestBuilder<B> {
        let request = match &self.authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        };
        request.config().timeout_global(Some(timeout)).build()
    }
}

/// A wait as the `wait` query parameter: whole seconds (`50s`) or milliseconds (`1500ms`), so
/// that it needs no percent-encoding.
fn wait_text(wait: Duration) -> String {
    let millis = wait.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// The `name` of a BOSH director, read from `<director_url>/info`.
///
/// Certificate checks are skipped for this one call, as the original resource did: directors
/// usually have self-signed certificates, and the name only picks which lock to use.
pub fn director_name(director_url: &str) -> Result<String, RequestError> {
    let url = format!("{}/info", director_url.trim_end_matches('/'));
    let agent = agent(TlsConfig::builder().disable_verification(true).build());
    let (status, body) = exchange(&url, agent.get(&url).call())?;
    if status != 200 {
        return Err(status_error(&url, status, &body));
    }
    let json = parse_json(&url, status, &body)?;
    match json.get("name") {
        Some(Value::String(name)) if !name.is_empty() && name.len() <= MAX_LOCK_NAME_BYTES => {
            Ok(name.clone())
        }
        _ => Err(RequestError::BadAnswer {
            url,
            status,
            cause: format!(
                "expected a non-empty \"name\" of at most {MAX_LOCK_NAME_BYTES} bytes, the director's name"
            ),
        }),
    }
}

fn agent(tls: TlsConfig) -> ureq::Agent {
    agent_config(tls).new_agent()
}

fn agent_config(tls: TlsConfig) -> ureq::config::Config {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(USER_AGENT)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(REQUEST_TIMEOUT))
        .tls_config(tls)
        .build()
}

/// Sends a request and reads the whole answer.
fn exchange(
    url: &str,
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), RequestError> {
    let mut response = sent.map_err(|err| classify(url, err))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|err| classify(url, err))?;
    Ok((status, body))
}

fn claim_answer(
    url: &str,
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<ClaimAnswer, RequestError> {
    let (status, body) = exchange(url, sent)?;
    if !matches!(status, 200 | 409 | 423) {
        return Err(status_error(url, status, &body));
    }
    let json = parse_json(url, status, &body)?;
    let text_field = if status == 200 { "response" } else { "error" };
    let message = json
        .get(text_field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let lock = json
        .get("lock")
        .cloned()
        .ok_or_else(|| bad_answer(url, status, "it has no \"lock\""))
        .and_then(|lock| Lock::from_json(lock).map_err(|err| bad_answer(url, status, err)))?;
    Ok(match status {
        200 => ClaimAnswer::Done { message, lock },
        409 => ClaimAnswer::NotHeld { message, lock },
        _ => ClaimAnswer::Locked {
            message,
            lock,
            queue: queue_place(url, &json)?,
        },
    })
}

/// The `queue` of a 423 after a wait; `None` from a server without a queue.
fn queue_place(url: &str, answer: &Value) -> Result<Option<QueuePlace>, RequestError> {
    match answer.get("queue") {
        None | Some(Value::Null) => Ok(None),
        Some(queue) => QueuePlace::deserialize(queue)
            .map(Some)
            .map_err(|err| bad_answer(url, 423, format!("its \"queue\": {err}"))),
    }
}

fn parse_json(url: &str, status: u16, body: &str) -> Result<Value, RequestError> {
    serde_json::from_str(body).map_err(|err| bad_answer(url, status, err))
}

fn bad_answer(url: &str, status: u16, cause: impl ToString) -> RequestError {
    RequestError::BadAnswer {
        url: url.to_owned(),
        status,
        cause: cause.to_string(),
    }
}

/// An error status, with the server's `error` text when the body is the API's JSON, otherwise
/// the start of the body (a proxy's error page, say).
fn status_error(url: &str, status: u16, body: &str) -> RequestError {
    let from_json = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|json| json.get("error").and_then(Value::as_str).map(str::to_owned));
    let message = from_json.unwrap_or_else(|| {
        let text: String = body.trim().chars().take(200).collect();
        if text.is_empty() {
            "(no body)".to_owned()
        } else {
            text
        }
    });
    RequestError::Status {
        url: url.to_owned(),
        status,
        message,
    }
}

fn classify(url: &str, err: ureq::Error) -> RequestError {
    let url = url.to_owned();
    let cause = err.to_string();
    let rustls_error = match &err {
        ureq::Error::Rustls(rustls_error) => Some(rustls_error),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    if let Some(refused) = rustls_error.and_then(RefusedCertificate::in_rustls_error) {
        return RequestError::CertificateRefused {
            url,
            cause: refused.to_string(),
        };
    }
    let is_tls = rustls_error.is_some() || matches!(err, ureq::Error::Tls(_) | ureq::Error::Pem(_));
    if is_tls {
        return RequestError::Tls { url, cause };
    }
    match err {
        ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl => {
            RequestError::Invalid { url, cause }
        }
        _ => RequestError::Unreachable { url, cause },
    }
}

/// Every certificate in the PEM files of a directory; unreadable files and non-PEM content
/// are skipped, as are duplicates (Debian links each certificate beside its bundle).
fn certificates_in_dir(dir: &Path) -> Vec<CertificateDer<'static>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut certificates = Vec::new();
    for entry in entries.flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        for item in ureq::tls::parse_pem(&bytes).flatten() {
            if let PemItem::Certificate(certificate) = item
                && seen.insert(certificate.der().to_vec())
            {
                certificates.push(CertificateDer::from(certificate.der().to_vec()));
            }
        }
    }
    certificates
}

fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        if let PemItem::Certificate(certificate) = item.map_err(|err| err.to_string())? {
            certificates.push(CertificateDer::from(certificate.der().to_vec()));
        }
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn client(uri: &str) -> LockerClient {
        let source = Source::from_json(&json!({"locker_uri": uri, "lock_name": "x"})).unwrap();
        LockerClient::new(&source).unwrap()
    }

    #[test]
    fn lock_names_are_one_percent_encoded_path_segment() {
        let client = client("http://locker:3000/");
        assert_eq!(client.lock_url("prod"), "http://locker:3000/lock/prod");
        assert_eq!(
            client.lock_url("a/b c?d#e%f"),
            "http://locker:3000/lock/a%2Fb%20c%3Fd%23e%25f"
        );
        assert_eq!(
            client.lock_url("~x-y_z.1"),
            "http://locker:3000/lock/~x-y_z%2E1"
        );
        assert_eq!(
            client.lock_url("🔒"),
            "http://locker:3000/lock/%F0%9F%94%92"
        );
    }

    #[test]
    fn a_wait_is_sent_without_spaces() {
        assert_eq!(wait_text(Duration::from_secs(50)), "50s");
        assert_eq!(wait_text(Duration::from_millis(1500)), "1500ms");
        assert_eq!(wait_text(Duration::from_micros(1_500_700)), "1500ms");
        assert_eq!(wait_text(Duration::from_micros(2_000_700)), "2s");
    }

    #[test]
    fn a_423_after_a_wait_tells_the_place_in_the_queue() {
        let answer = json!({"error": "held", "lock": {}, "queue": {"position": 2, "length": 5}});
        assert_eq!(
            queue_place("u", &answer).unwrap(),
            Some(QueuePlace {
                position: 2,
                length: 5
            })
        );
        let original = json!({"error": "held", "lock": {}});
        assert_eq!(queue_place("u", &original).unwrap(), None);
        assert_eq!(
            queue_place("u", &json!({"queue": null})).unwrap(),
            None,
            "null reads as no queue"
        );
        let err = queue_place("u", &json!({"queue": {"position": "first"}})).unwrap_err();
        assert!(err.to_string().contains("\"queue\""), "{err}");
    }

    #[test]
    fn a_locks_queue_is_read_in_order_and_absent_means_empty() {
        let json = json!({"key": "k", "locked_by": {"a": 1}, "revision": 3, "locked_at": null,
        "queue": [
            {"requestor": "b", "key": "x", "since": "2026-12-02T09:00:00.000Z",
             "owner": {"job": "deploy"}},
            {"requestor": "c", "since": null, "owner": null}
        ]});
        let lock = Lock::from_json(json).unwrap();
        let waiting: Vec<(&str, &str)> = lock
            .queue
            .iter()
            .map(|waiter| (waiter.requestor.as_str(), waiter.key.as_str()))
            .collect();
        assert_eq!(
            waiting,
            [("b", "x"), ("c", "")],
            "what a server leaves out is empty"
        );
        assert_eq!(lock.queue[0].owner["job"], "deploy");
        assert!(lock.queue[1].owner.is_empty());

        let before_the_queue =
            json!({"key": "", "locked_by": {}, "revision": 0, "locked_at": null});
        assert!(Lock::from_json(before_the_queue).unwrap().queue.is_empty());
    }

    #[test]
    fn transient_errors_are_the_ones_worth_retrying() {
        let status = |status| RequestError::Status {
            url: "u".to_owned(),
            status,
            message: "m".to_owned(),
        };
        for code in [500, 502, 503, 408, 429] {
            assert!(status(code).is_transient(), "{code} should be retried");
        }
        for code in [400, 401, 403, 404, 405, 413] {
            assert!(!status(code).is_transient(), "{code} should fail at once");
        }
        assert!(
            RequestError::Unreachable {
                url: "u".to_owned(),
                cause: "refused".to_owned()
            }
            .is_transient()
        );
        assert!(
            !RequestError::Tls {
                url: "u".to_owned(),
                cause: "bad cert".to_owned()
            }
            .is_transient()
        );
        assert!(
            !RequestError::CertificateRefused {
                url: "u".to_owned(),
                cause: "not signed by a trusted CA".to_owned()
            }
            .is_transient(),
            "a refused certificate will not heal by retrying"
        );
    }

    #[test]
    fn status_errors_carry_the_servers_text() {
        let err = status_error("u", 401, r#"{"error":"Please Authenticate"}"#);
        assert_eq!(err.to_string(), "u answered 401: Please Authenticate");
        let err = status_error("u", 502, "<html>Bad Gateway</html>\n");
        assert_eq!(err.to_string(), "u answered 502: <html>Bad Gateway</html>");
        let err = status_error("u", 500, "");
        assert_eq!(err.to_string(), "u answered 500: (no body)");
    }

    #[test]
    fn locks_keep_the_servers_json_and_describe_holders() {
        let json = json!({"key": "k", "locked_by": {"a": 2, "b": 1}, "revision": 7,
                          "locked_at": "2024-01-01T00:00:00Z", "future": true});
        let lock = Lock::from_json(json.clone()).unwrap();
        assert_eq!(lock.revision, 7);
        assert_eq!(lock.json, json);
        assert!(!lock.is_free());
        assert_eq!(lock.locked_by_json(), r#"{"a":2,"b":1}"#);
        assert_eq!(lock.holders_text(), "'a' (2 claims), 'b' (1 claim)");

        let free =
            Lock::from_json(json!({"key": "", "locked_by": {}, "revision": 0, "locked_at": null}))
                .unwrap();
        assert!(free.is_free());
        assert_eq!(free.holders_text(), "nobody");
    }

    #[test]
    fn reads_certificates_from_a_directory_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let pem = certified.cert.pem();
        std::fs::write(dir.path().join("one.pem"), &pem).unwrap();
        std::fs::write(dir.path().join("copy.crt"), &pem).unwrap();
        std::fs::write(dir.path().join("junk"), "not a certificate").unwrap();
        assert_eq!(certificates_in_dir(dir.path()).len(), 1);
        assert!(certificates_in_dir(&dir.path().join("missing")).is_empty());
    }

    fn claim<'a>(ttl: Option<Duration>, owner: Option<&'a BTreeMap<String, String>>) -> Claim<'a> {
        Claim {
            key: "k",
            locked_by: "r",
            ttl,
            owner,
            hold: None,
            request_id: "id",
        }
    }

    #[test]
    fn a_body_without_ttl_or_owner_is_the_original_shape() {
        assert_eq!(
            claim(None, None).body(),
            json!({"key": "k", "locked_by": "r"})
        );
        let nobody = BTreeMap::new();
        assert_eq!(
            claim(None, Some(&nobody)).body(),
            json!({"key": "k", "locked_by": "r"}),
            "an empty owner is not sent"
        );
    }

    #[test]
    fn a_body_carries_ttl_in_seconds_and_the_owner() {
        let owner = BTreeMap::from([
            ("job".to_owned(), "deploy".to_owned()),
            ("build".to_owned(), "42".to_owned()),
        ]);
        assert_eq!(
            claim(Some(Duration::from_secs(1800)), Some(&owner)).body(),
            json!({"key": "k", "locked_by": "r", "ttl": 1800,
                   "owner": {"job": "deploy", "build": "42"}})
        );
        assert_eq!(
            claim(Some(Duration::from_millis(1500)), None).body()["ttl"],
            json!("1s 500ms"),
            "a ttl finer than seconds is sent as a duration string"
        );
    }

    #[test]
    fn a_body_carries_the_hold_only_when_one_was_chosen() {
        for hold in [Hold::Build, Hold::UntilUnlocked] {
            let claim = Claim {
                hold: Some(hold),
                ..claim(None, None)
            };
            assert_eq!(
                claim.body(),
                json!({"key": "k", "locked_by": "r", "hold": hold.as_str()})
            );
        }
        assert!(
            claim(None, None).body().get("hold").is_none(),
            "no hold chosen: none is sent, so older servers get the body they know"
        );
    }

    #[test]
    fn a_holder_held_for_its_build_says_so() {
        let mut json = leased_lock();
        json["holders"][0]["hold"] = json!("build");
        json["holders"][1]["hold"] = json!("until_unlocked");
        let lock = Lock::from_json(json).unwrap();
        assert_eq!(
            lock.holders_text(),
            "main/prod/deploy #42 (https://ci/teams/main/pipelines/prod/jobs/deploy/builds/42) \
             as 'a' (1 claim, held until its build finishes), 'b' (2 claims)"
        );
    }

    fn leased_lock() -> Value {
        json!({
            "key": "K", "locked_by": {"a": 1, "b": 2}, "revision": 9,
            "locked_at": "2026-12-02T09:00:00.000Z", "token": 17,
            "holders": [
                {"requestor": "a", "count": 1, "since": "2026-12-02T09:00:00.000Z",
                 "expires_at": "2026-12-02T10:00:00.000Z",
                 "owner": {"team": "main", "pipeline": "prod", "job": "deploy", "build": "42",
                           "build_url": "https://ci/teams/main/pipelines/prod/jobs/deploy/builds/42"}},
                {"requestor": "b", "count": 2, "since": "2026-12-02T09:05:00.000Z",
                 "expires_at": "2026-12-02T11:30:00.000Z", "owner": {}}
            ]
        })
    }

    #[test]
    fn a_leased_lock_names_its_token_holders_and_lease_end() {
        let lock = Lock::from_json(leased_lock()).unwrap();
        assert!(lock.server_has_leases());
        assert_eq!(lock.token, Some(17));
        assert_eq!(lock.holders.len(), 2);
        assert_eq!(
            lock.holder("a").and_then(|h| h.expires_at.as_deref()),
            Some("2026-12-02T10:00:00.000Z")
        );
        assert_eq!(
            lock.lease_ends(),
            Some("2026-12-02T11:30:00.000Z"),
            "the lock's lease ends with its last holder's"
        );
        assert_eq!(
            lock.holders_text(),
            "main/prod/deploy #42 (https://ci/teams/main/pipelines/prod/jobs/deploy/builds/42) \
             as 'a' (1 claim), 'b' (2 claims)"
        );
        assert_eq!(lock.holders_json(), leased_lock()["holders"].to_string());
    }

    #[test]
    fn a_holder_without_ttl_means_the_lock_has_no_lease_end() {
        let mut json = leased_lock();
        json["holders"][1]["expires_at"] = Value::Null;
        let lock = Lock::from_json(json).unwrap();
        assert_eq!(
            lock.lease_ends(),
            None,
            "'b' holds the lock until it unlocks, whatever 'a' does"
        );
    }

    #[test]
    fn a_lock_from_a_server_without_leases_has_no_token_or_holders() {
        let json = json!({"key": "k", "locked_by": {"a": 1}, "revision": 3,
                          "locked_at": "2024-01-01T00:00:00Z"});
        let lock = Lock::from_json(json).unwrap();
        assert!(!lock.server_has_leases());
        assert_eq!(lock.token, None);
        assert!(lock.holders.is_empty());
        assert_eq!(lock.lease_ends(), None);
        assert_eq!(lock.holders_json(), "[]");
        assert_eq!(lock.holders_text(), "'a' (1 claim)");

        let nulls = json!({"key": "", "locked_by": {}, "revision": 0, "locked_at": null,
                           "token": null, "holders": null});
        let lock = Lock::from_json(nulls).unwrap();
        assert_eq!(lock.token, None);
        assert!(lock.holders.is_empty(), "null holders read as none");
    }
}

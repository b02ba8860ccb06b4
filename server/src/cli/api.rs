//! The locker server's HTTP API as the client calls it. Every request a client command sends
//! is made here, and every answer is read here, either into what the command needs or into a
//! [`Failure`] that says what went wrong in the user's terms (which URL did not answer, which
//! variables hold the credentials, which build holds the lock).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use locker_protocol::names::encode_segment;
use locker_protocol::{IDEMPOTENCY_KEY, Lock};
use serde_json::{Value, json};

use super::args::ServerArgs;
use super::failure::Failure;

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request the server answers at once may take in all.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after its wait a long-poll may take to be answered: the server answers when the
/// wait runs out, so the answer is late only by the way back (or a slow disk).
const WAIT_ANSWER_TIME: Duration = Duration::from_secs(15);

/// The environment variables that hold the credentials.
pub const USERNAME_VAR: &str = "LOCKER_USERNAME";
pub const PASSWORD_VAR: &str = "LOCKER_PASSWORD";

/// A locker server, as the client commands talk to it. Cheap to clone: the connection pool
/// is shared.
#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    /// The base URL without a trailing slash.
    base: Arc<str>,
    /// The `Authorization` header, when credentials are set.
    authorization: Option<Arc<str>>,
    /// How long a request the server answers at once may take in all.
    timeout: Duration,
}

/// A claim as the client sends it.
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: String,
    pub requestor: String,
    pub ttl: Option<Duration>,
    pub owner: BTreeMap<String, String>,
}

impl Claim {
    /// The JSON body of a lock, unlock or renewal.
    fn body(&self) -> String {
        let mut body = json!({"key": self.key, "locked_by": self.requestor});
        if let Some(ttl) = self.ttl {
            body["ttl"] = humantime::format_duration(ttl).to_string().into();
        }
        if !self.owner.is_empty() {
            body["owner"] = json!(self.owner);
        }
        body.to_string()
    }
}

/// What a change answered with 200: the server's message and the lock afterwards.
#[derive(Debug, Clone)]
pub struct Changed {
    pub message: String,
    pub lock: Lock,
}

/// The answer to a lock request.
#[derive(Debug, Clone)]
pub enum LockAnswer {
    Granted(Changed),
    /// The request waits in the lock's queue: its wait ran out at this place.
    Queued {
        message: String,
        position: u64,
        length: u64,
    },
    /// Another key holds the lock, and the request does not wait (or the server has no
    /// queue).
    Held(String),
}

/// An answer as it came: the status, the body's text and its JSON (`null` if not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub text: String,
    pub json: Value,
}

impl Reply {
    /// The message of the answer: its `error` or `response` field, else its text.
    fn message(&self) -> String {
        ["error", "response"]
            .iter()
            .find_map(|field| self.json[field].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| match self.text.trim() {
                "" => format!("HTTP {}", self.status),
                text => text.chars().take(200).collect(),
            })
    }

    fn lock(&self) -> Result<Lock, Failure> {
        serde_json::from_value(self.json["lock"].clone()).map_err(|e| {
            Failure::Failed(format!(
                "the server's answer has no LOCK object that this client can read ({e}): {}",
                self.message()
            ))
        })
    }

    fn changed(&self) -> Result<Changed, Failure> {
        Ok(Changed {
            message: self.message(),
            lock: self.lock()?,
        })
    }
}

/// An endpoint that newer servers have; what the user is told when this one lacks it.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Core,
    /// What it does and its route: `("history", "GET /lock/NAME/history")`.
    Newer(&'static str, &'static str),
}

impl Api {
    /// A client of the server that `server` names, with the credentials of the environment.
    pub fn connect(server: &ServerArgs) -> Result<Api, Failure> {
        let base = server.url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "the server URL '{base}' (--server or LOCKER_URL) must start with http:// or https://"
            )));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &server.ca_cert {
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(
                crate::pem::ca_certificates(path, "--ca-cert").map_err(Failure::Usage)?,
            )));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(format!("locker/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Api {
            agent,
            base: base.into(),
            authorization: basic_authorization()?.map(Into::into),
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The same client, whose requests that the server answers at once give up after
    /// `timeout` (a renewal is of no use after its lease).
    pub fn with_timeout(&self, timeout: Duration) -> Api {
        Api {
            timeout,
            ..self.clone()
        }
    }

    /// The server's base URL, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// `PUT /lock/{name}`; with `wait`, `?wait=` with the request id, so that the request
    /// waits in the lock's queue for up to that long (the server may cut it shorter).
    pub fn lock(
        &self,
        name: &str,
        claim: &Claim,
        wait: Option<(Duration, &str)>,
    ) -> Result<LockAnswer, Failure> {
        let mut path = lock_path(name, "");
        let mut timeout = self.timeout;
        let mut request_id = None;
        if let Some((wait, id)) = wait {
            path = format!("{path}?wait={}ms", wait.as_millis());
            timeout = wait.saturating_add(WAIT_ANSWER_TIME);
            request_id = Some(id);
        }
        let reply = self.send("PUT", &path, Some(claim.body()), request_id, timeout)?;
        match reply.status {
            200 => Ok(LockAnswer::Granted(reply.changed()?)),
            423 => match (
                reply.json["queue"]["position"].as_u64(),
                reply.json["queue"]["length"].as_u64(),
            ) {
                (Some(position), Some(length)) => Ok(LockAnswer::Queued {
                    message: reply.message(),
                    position,
                    length,
                }),
                _ => Ok(LockAnswer::Held(reply.message())),
            },
            _ => Err(self.refusal(&reply, Endpoint::Core)),
        }
    }

    /// `DELETE /lock/{name}`: releases one claim.
    pub fn unlock(&self, name: &str, claim: &Claim) -> Result<Changed, Failure> {
        self.change("DELETE", &lock_path(name, ""), claim.body(), Endpoint::Core)
    }

    /// `POST /lock/{name}/renew`: the claim's lease ends `ttl` from now.
    pub fn renew(&self, name: &str, claim: &Claim, ttl: Duration) -> Result<Changed, Failure> {
        let claim = Claim {
            ttl: Some(ttl),
            owner: BTreeMap::new(),
            ..claim.clone()
        };
        self.change(
            "POST",
            &lock_path(name, "/renew"),
            claim.body(),
            Endpoint::Core,
        )
    }

    /// `DELETE /lock/{name}/queue/{id}`: gives up the place of request `id` in the lock's
    /// queue, and a grant made to it meanwhile.
    pub fn withdraw(&self, name: &str, id: &str) -> Result<String, Failure> {
        let path = lock_path(name, &format!("/queue/{}", encode_segment(id)));
        let reply = self.send("DELETE", &path, None, None, self.timeout)?;
        match reply.status {
            200 => Ok(reply.message()),
            _ => Err(self.refusal(&reply, Endpoint::Core)),
        }
    }

    /// `GET /lock/{name}`, the answer as it came.
    pub fn lock_state(&self, name: &str) -> Result<Reply, Failure> {
        self.read(&lock_path(name, ""), Endpoint::Core)
    }

    /// `GET /locks`, the answer as it came.
    pub fn locks(&self) -> Result<Reply, Failure> {
        self.read("/locks", Endpoint::Core)
    }

    /// `GET /lock/{name}/history?limit=N&before=ID`, the answer as it came.
    pub fn history(&self, name: &str, limit: u32, before: Option<u64>) -> Result<Reply, Failure> {
        let mut path = lock_path(name, &format!("/history?limit={limit}"));
        if let Some(before) = before {
            path = format!("{path}&before={before}");
        }
        self.read(&path, Endpoint::Newer("history", "GET /lock/NAME/history"))
    }

    /// `POST /lock/{name}/force-release`: frees the lock whoever holds it.
    pub fn force_release(&self, name: &str, reason: &str, by: &str) -> Result<Changed, Failure> {
        self.change(
            "POST",
            &lock_path(name, "/force-release"),
            json!({"reason": reason, "by": by}).to_string(),
            Endpoint::Newer("force-release", "POST /lock/NAME/force-release"),
        )
    }

    fn read(&self, path: &str, endpoint: Endpoint) -> Result<Reply, Failure> {
        let reply = self.send("GET", path, None, None, self.timeout)?;
        match reply.status {
            200 => Ok(reply),
            _ => Err(self.refusal(&reply, endpoint)),
        }
    }

    fn change(
        &self,
        method: &str,
        path: &str,
        body: String,
        endpoint: Endpoint,
    ) -> Result<Changed, Failure> {
        let reply = self.send(method, path, Some(body), None, self.timeout)?;
        match reply.status {
            200 => reply.changed(),
            _ => Err(self.refusal(&reply, endpoint)),
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        request_id: Option<&str>,
        timeout: Duration,
    ) -> Result<Reply, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", &**authorization);
        }
        if let Some(id) = request_id {
            request = request.header(IDEMPOTENCY_KEY, id);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(body.unwrap_or_default())
            .map_err(|e| Failure::Usage(format!("cannot make a request to {url}: {e}")))?;
        let request = self
            .agent
            .configure_request(request)
            .timeout_global(Some(timeout))
            .build();
        let mut response = self.agent.run(request).map_err(|e| self.no_answer(e))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.no_answer(e))?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, text, json })
    }

    /// Why there was no answer, naming the server.
    fn no_answer(&self, e: ureq::Error) -> Failure {
        let base = &self.base;
        // rustls reports a refused certificate as an I/O error that wraps its own.
        let tls_in_io = matches!(&e, ureq::Error::Io(io)
            if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()));
        match e {
            _ if tls_in_io => Failure::Unreachable(format!(
                "TLS with the locker server at {base} failed: {e} (for a server whose certificate a private CA signed, pass --ca-cert or set LOCKER_CA_CERT)"
            )),
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => {
                Failure::Unreachable(format!(
                    "TLS with the locker server at {base} failed: {e} (for a server whose certificate a private CA signed, pass --ca-cert or set LOCKER_CA_CERT)"
                ))
            }
            ureq::Error::BadUri(_) | ureq::Error::Http(_) => Failure::Usage(format!(
                "the server URL '{base}' (--server or LOCKER_URL) is not a URL this client can use: {e}"
            )),
            _ => Failure::Unreachable(format!("cannot reach the locker server at {base}: {e}")),
        }
    }

    /// A refusal or a failure of the server, in the user's terms.
    fn refusal(&self, reply: &Reply, endpoint: Endpoint) -> Failure {
        let base = &self.base;
        let message = reply.message();
        match (reply.status, endpoint) {
            (401, _) if self.authorization.is_some() => Failure::Auth(format!(
                "the locker server at {base} refused the credentials in {USERNAME_VAR} and {PASSWORD_VAR} (401: {message})"
            )),
            (401, _) => Failure::Auth(format!(
                "the locker server at {base} wants credentials: set {USERNAME_VAR} and {PASSWORD_VAR} (401: {message})"
            )),
            (403, _) => Failure::Auth(format!(
                "the locker server at {base} refused: {message} (403: these credentials lack the rights; an admin's may have them)"
            )),
            (423, _) => Failure::Held(message),
            (409, _) => Failure::Conflict(message),
            (_, Endpoint::Newer(what, route)) if lacks_endpoint(reply) => {
                Failure::Unsupported(format!(
                    "the locker server at {base} does not support {what} yet: it has no {route} (it answered {}); a newer server has",
                    reply.status
                ))
            }
            (status, _) if status >= 500 => Failure::Server(format!(
                "the locker server at {base} failed ({status}): {message}"
            )),
            (status, _) => Failure::Failed(format!("refused ({status}): {message}")),
        }
    }
}

/// The path of lock `name`, with `rest` after it (`/renew`, `/queue/ID`, ...).
fn lock_path(name: &str, rest: &str) -> String {
    format!("/lock/{}{rest}", encode_segment(name))
}

/// True when the server does not know the endpoint: 404 or 405, or a 400 saying that the
/// lock name contains '/'. The client encodes every '/' of a name, so such a 400 means that
/// the server took `NAME/history` for a lock name: it has no route for it.
fn lacks_endpoint(reply: &Reply) -> bool {
    match reply.status {
        404 | 405 => true,
        400 => reply.message().contains("contains '/'"),
        _ => false,
    }
}

/// The `Authorization` header of the credentials in the environment, if any.
fn basic_authorization() -> Result<Option<String>, Failure> {
    use base64::Engine;
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    match (var(USERNAME_VAR), var(PASSWORD_VAR)) {
        (Some(user), Some(pass)) => Ok(Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Failure::Usage(format!(
            "{USERNAME_VAR} is set but {PASSWORD_VAR} is not; set both or neither"
        ))),
        (None, Some(_)) => Err(Failure::Usage(format!(
            "{PASSWORD_VAR} is set but {USERNAME_VAR} is not; set both or neither"
        ))),
    }
}

//! Asking Concourse about one build, logged in as `fly login` does.
//!
//! With a local user the client gets a bearer token by a password grant on
//! `/sky/issuer/token` with fly's client id, and logs in again when the token is about to
//! expire or a request is answered 401; with `CONCOURSE_TOKEN` it sends that token as is.
//! Every answer that is not a clear "this build is in this state" or "no such build" is an
//! error: the watcher releases nothing on doubt.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::{Concourse, ConcourseAuth};

/// fly's OAuth client, which every Concourse accepts for a password grant.
const FLY_CLIENT: (&str, &str) = ("fly", "Zmx5");
/// The scopes fly asks for.
const FLY_SCOPES: &str = "openid profile email federated:id groups";
/// How long one request to Concourse may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// What Concourse says about a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildAnswer {
    /// Its status: `pending`, `started`, `succeeded`, `failed`, `errored` or `aborted`.
    Status(String),
    /// 404: no such build (or one this user may not see).
    NotFound,
}

/// Why Concourse gave no answer to rely on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    #[error("Concourse cannot be reached: {0}")]
    Unreachable(String),
    #[error("Concourse answered {0}")]
    Failing(String),
    #[error("Concourse refused the credentials: {0}")]
    Refused(String),
}

/// A build as `GET /api/v1/builds/:id` answers it (the fields read here).
#[derive(Debug, Deserialize)]
struct Build {
    id: u64,
    status: String,
}

/// What `/sky/issuer/token` answers.
#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A bearer token and when to stop using it.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    renew_at: Option<Instant>,
}

/// A client of one Concourse.
#[derive(Clone)]
pub struct ConcourseClient {
    agent: ureq::Agent,
    url: String,
    auth: ConcourseAuth,
    token: Arc<Mutex<Option<Token>>>,
}

impl ConcourseClient {
    /// A client of the Concourse `config` names; fails only on an unreadable CA file.
    pub fn new(config: &Concourse) -> Result<ConcourseClient, String> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &config.ca_cert {
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(ca_certificates(
                path,
            )?)));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(format!("locker/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(ConcourseClient {
            agent,
            url: config.url.clone(),
            auth: config.auth.clone(),
            token: Arc::new(Mutex::new(None)),
        })
    }

    /// Asks about build `id` (blocking): logs in first if need be, and once more on a 401.
    pub fn build(&self, id: u64) -> Result<BuildAnswer, AskError> {
        match self.ask(id, false)? {
            Some(answer) => Ok(answer),
            None => self
                .ask(id, true)?
                .ok_or_else(|| AskError::Refused("401 after logging in again".into())),
        }
    }

    /// One request; `None` on a 401 that a new login may cure.
    fn ask(&self, id: u64, fresh_login: bool) -> Result<Option<BuildAnswer>, AskError> {
        let token = self.token(fresh_login)?;
        let url = format!("{}/api/v1/builds/{id}", self.url);
        let mut answer = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .map_err(|e| AskError::Unreachable(e.to_string()))?;
        let status = answer.status().as_u16();
        match status {
            200 => {
                let build: Build = read_json(&mut answer).map_err(|e| {
                    AskError::Failing(format!("200 with a body that is not a build ({e})"))
                })?;
                if build.id != id {
                    return Err(AskError::Failing(format!(
                        "build {} when asked for build {id}",
                        build.id
                    )));
                }
                Ok(Some(BuildAnswer::Status(build.status)))
            }
            404 => Ok(Some(BuildAnswer::NotFound)),
            401 if !fresh_login && matches!(self.auth, ConcourseAuth::Password { .. }) => {
                *self.lock_token() = None;
                Ok(None)
            }
            401 | 403 => Err(AskError::Refused(format!("{status} for {url}"))),
            _ => Err(AskError::Failing(format!("{status} for {url}"))),
        }
    }

    /// The token to send: the configured one, or a current one from a login.
    fn token(&self, fresh: bool) -> Result<String, AskError> {
        let (user, pass) = match &self.auth {
            ConcourseAuth::Token(token) => return Ok(token.clone()),
            ConcourseAuth::Password { user, pass } => (user, pass),
        };
        let mut held = self.lock_token();
        if let Some(token) = held
            .as_ref()
            .filter(|t| !fresh && t.renew_at.is_none_or(|at| Instant::now() < at))
        {
            return Ok(token.value.clone());
        }
        let token = self.login(user, pass)?;
        let value = token.value.clone();
        *held = Some(token);
        Ok(value)
    }

    /// A password grant on `/sky/issuer/token`, as `fly login` makes it.
    fn login(&self, user: &str, pass: &str) -> Result<Token, AskError> {
        use base64::Engine;
        let url = format!("{}/sky/issuer/token", self.url);
        let client = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", FLY_CLIENT.0, FLY_CLIENT.1));
        let mut answer = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Basic {client}"))
            .send_form([
                ("grant_type", "password"),
                ("username", user),
                ("password", pass),
                ("scope", FLY_SCOPES),
            ])
            .map_err(|e| AskError::Unreachable(e.to_string()))?;
        let status = answer.status().as_u16();
        match status {
            200 => {
                let token: TokenAnswer = read_json(&mut answer).map_err(|e| {
                    AskError::Failing(format!("a login answer that is not a token ({e})"))
                })?;
                let renew_at = token.expires_in.map(|seconds| {
                    Instant::now() + Duration::from_secs(seconds).saturating_sub(TOKEN_MARGIN)
                });
                Ok(Token {
                    value: token.access_token,
                    renew_at,
                })
            }
            400 | 401 | 403 => Err(AskError::Refused(format!(
                "logging in as '{user}' was answered {status}"
            ))),
            _ => Err(AskError::Failing(format!("{status} for {url}"))),
        }
    }

    fn lock_token(&self) -> std::sync::MutexGuard<'_, Option<Token>> {
        self.token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The JSON body of an answer (at most a megabyte).
fn read_json<T: serde::de::DeserializeOwned>(
    answer: &mut ureq::http::Response<ureq::Body>,
) -> Result<T, String> {
    let text = answer
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// The CA certificates of a PEM file.
fn ca_certificates(path: &std::path::Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let shown = path.display();
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read CONCOURSE_CA_CERT {shown}: {e}"))?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(certificate)) => certificates.push(certificate),
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "CONCOURSE_CA_CERT {shown} is not a PEM file of certificates: {e}"
                ));
            }
        }
    }
    if certificates.is_empty() {
        return Err(format!(
            "CONCOURSE_CA_CERT {shown} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certificates)
}

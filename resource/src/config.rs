//! Configuration: the resource's `source` and the steps' `params`, validated once at the edge.
//!
//! Every mistake a pipeline author can make (an unknown key such as a typo, a missing key, a
//! wrong type, contradicting keys) is reported with the key's full name and what is expected, so
//! that `lock_nmae` fails the build instead of being ignored. A key set to `null` counts as
//! absent. Validation needs no network: a `bosh_lock` source is resolved to a lock name later, by
//! [`crate::client::director_name`].

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};
use thiserror::Error;

use crate::duration;

/// The longest lock name the server accepts, in bytes.
pub const MAX_LOCK_NAME_BYTES: usize = 512;

/// First wait between attempts when the pipeline does not say.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between attempts when the pipeline does not say.
pub const DEFAULT_MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// How long `unlock` retries a server that cannot be reached when the pipeline does not say.
pub const DEFAULT_UNLOCK_TIMEOUT: Duration = Duration::from_secs(600);

const SOURCE_KEYS: &[&str] = &[
    "locker_uri",
    "lock_name",
    "bosh_lock",
    "username",
    "password",
    "ca_cert",
    "skip_ssl_validation",
    "retry_delay",
    "max_retry_delay",
];

const OUT_PARAM_KEYS: &[&str] = &[
    "lock_op",
    "key",
    "locked_by",
    "lock_by",
    "timeout",
    "retry_delay",
    "max_retry_delay",
];

/// A configuration mistake, worded for the pipeline author.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A whole section (`source`, `params`) is missing.
    #[error("{section} is missing ({hint})")]
    MissingSection {
        /// `source` or `params`.
        section: &'static str,
        /// What the section needs at least.
        hint: &'static str,
    },
    /// A section is not an object.
    #[error("{section} must be an object of settings (got {found})")]
    NotAnObject {
        /// `source` or `params`.
        section: &'static str,
        /// What it was instead.
        found: String,
    },
    /// A key this resource does not know, usually a typo.
    #[error("{section}.{key} is not a known key ({expected})")]
    UnknownKey {
        /// `source` or `params`.
        section: &'static str,
        /// The unknown key.
        key: String,
        /// The keys the section accepts.
        expected: KnownKeys,
    },
    /// A required key is missing.
    #[error("{section}.{key} is missing ({hint})")]
    MissingKey {
        /// `source` or `params`.
        section: &'static str,
        /// The missing key.
        key: &'static str,
        /// What to set it to.
        hint: &'static str,
    },
    /// A key has a value of the wrong JSON type.
    #[error("{section}.{key} must be {expected} (got {found})")]
    WrongType {
        /// `source` or `params`.
        section: &'static str,
        /// The key.
        key: &'static str,
        /// The type expected, with an article (`a string`).
        expected: &'static str,
        /// The type found.
        found: String,
    },
    /// A key has a value of the right type that is still not acceptable.
    #[error("{section}.{key} {problem}")]
    InvalidValue {
        /// `source` or `params`.
        section: &'static str,
        /// The key.
        key: &'static str,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// Keys that contradict each other or need each other.
    #[error("{0}")]
    Conflict(String),
}

/// The keys a section accepts, shown when an unknown one is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownKeys(&'static [&'static str]);

impl fmt::Display for KnownKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            write!(f, "this step takes no params")
        } else {
            write!(f, "expected one of: {}", self.0.join(", "))
        }
    }
}

/// Credentials for the server's basic auth.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password; never printed.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Which lock the resource stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockTarget {
    /// A lock named in the pipeline.
    Name(String),
    /// The lock named after a BOSH director: the `name` in `<url>/info`.
    BoshDirector(String),
}

/// The first and the longest wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryDelays {
    /// The longest first wait (`retry_delay`).
    pub first: Duration,
    /// No wait is longer (`max_retry_delay`).
    pub max: Duration,
}

/// The resource's `source`: where the server is, how to reach it and which lock this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The server's base URL, without a trailing slash.
    pub locker_uri: String,
    /// Basic auth, when the server wants it.
    pub credentials: Option<Credentials>,
    /// Extra trusted certificates (PEM), for a server with a private CA.
    pub ca_cert: Option<String>,
    /// Skip certificate checks for the locker server.
    pub skip_ssl_validation: bool,
    /// The lock.
    pub lock: LockTarget,
    /// Waits between attempts, unless a put's params override them.
    pub retry: RetryDelays,
}

impl Source {
    /// Validates a resource's `source`.
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        let section = Section::new(
            "source",
            value,
            SOURCE_KEYS,
            "it needs at least locker_uri and lock_name",
        )?;
        let locker_uri = section.string("locker_uri")?.ok_or(section.missing(
            "locker_uri",
            "the URL of the locker server, like https://locker.example.com",
        ))?;
        let locker_uri = validate_url(&section, "locker_uri", locker_uri)?;

        let lock = match (section.string("lock_name")?, section.string("bosh_lock")?) {
            (Some(name), None) => {
                LockTarget::Name(validate_lock_name(&section, "lock_name", name)?)
            }
            (None, Some(director)) => {
                LockTarget::BoshDirector(validate_url(&section, "bosh_lock", director)?)
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict(
                    "source has both lock_name and bosh_lock: set exactly one of them".to_owned(),
                ));
            }
            (None, None) => {
                return Err(ConfigError::Conflict(
                    "source needs one of lock_name (the lock's name) or bosh_lock \
                     (a BOSH director URL whose name is the lock's name)"
                        .to_owned(),
                ));
            }
        };

        let credentials = match (section.string("username")?, section.string("password")?) {
            (Some(username), Some(password)) => Some(Credentials {
                username: username.to_owned(),
                password: password.to_owned(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Conflict(
                    "source.username is set but source.password is missing: set both or neither"
                        .to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Conflict(
                    "source.password is set but source.username is missing: set both or neither"
                        .to_owned(),
                ));
            }
        };

        let ca_cert = section.string("ca_cert")?.map(str::to_owned);
        if let Some(pem) = &ca_cert {
            let has_certificate = ureq::tls::parse_pem(pem.as_bytes())
                .any(|item| matches!(item, Ok(ureq::tls::PemItem::Certificate(_))));
            if !has_certificate {
                return Err(section.invalid(
                    "ca_cert",
                    "holds no PEM certificate (expected text starting with -----BEGIN CERTIFICATE-----)"
                        .to_owned(),
                ));
            }
        }

        let first = section.delay("retry_delay")?.unwrap_or(DEFAULT_RETRY_DELAY);
        let max = section
            .delay("max_retry_delay")?
            .unwrap_or(DEFAULT_MAX_RETRY_DELAY);
        check_delay_order(&section, first, max)?;

        Ok(Self {
            locker_uri,
            credentials,
            ca_cert,
            skip_ssl_validation: section.bool("skip_ssl_validation")?.unwrap_or(false),
            lock,
            retry: RetryDelays { first, max },
        })
    }
}

/// What a put does to the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOp {
    /// Claim the lock, waiting while another key holds it.
    Lock,
    /// Release one claim.
    Unlock,
}

impl LockOp {
    /// The name used in params and metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            LockOp::Lock => "lock",
            LockOp::Unlock => "unlock",
        }
    }
}

/// The `params` of a put step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutParams {
    /// Lock or unlock.
    pub lock_op: LockOp,
    /// The key that claims the lock.
    pub key: String,
    /// Who claims it, as given (`locked_by` or `lock_by`); see [`OutParams::requestor`].
    pub locked_by: Option<String>,
    /// How long to wait for the lock, or to retry an unreachable server when unlocking.
    pub timeout: Option<Duration>,
    /// Overrides `source.retry_delay`.
    pub retry_delay: Option<Duration>,
    /// Overrides `source.max_retry_delay`.
    pub max_retry_delay: Option<Duration>,
}

impl OutParams {
    /// Validates a put step's `params`.
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        let section = Section::new(
            "params",
            value,
            OUT_PARAM_KEYS,
            "a put needs at least lock_op and key",
        )?;
        let lock_op = match section.string("lock_op")? {
            Some("lock") => LockOp::Lock,
            Some("unlock") => LockOp::Unlock,
            Some(other) => {
                return Err(section.invalid(
                    "lock_op",
                    format!("must be lock or unlock (got {})", quoted(other)),
                ));
            }
            None => return Err(section.missing("lock_op", "lock or unlock")),
        };
        let key = section.string("key")?.ok_or(section.missing(
            "key",
            "the key that claims the lock, like the build's environment",
        ))?;
        if key.is_empty() {
            return Err(section.invalid("key", "must not be empty".to_owned()));
        }
        let locked_by = match (section.string("locked_by")?, section.string("lock_by")?) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict(
                    "params has both locked_by and lock_by: they are the same setting, keep one"
                        .to_owned(),
                ));
            }
            (Some(name), None) => Some(("locked_by", name)),
            (None, Some(name)) => Some(("lock_by", name)),
            (None, None) => None,
        };
        if let Some((name_key, "")) = locked_by {
            return Err(ConfigError::InvalidValue {
                section: "params",
                key: name_key,
                problem: "must not be empty (leave it out to use the key)".to_owned(),
            });
        }
        let retry_delay = section.delay("retry_delay")?;
        let max_retry_delay = section.delay("max_retry_delay")?;
        if let (Some(first), Some(max)) = (retry_delay, max_retry_delay) {
            check_delay_order(&section, first, max)?;
        }
        Ok(Self {
            lock_op,
            key: key.to_owned(),
            locked_by: locked_by.map(|(_, name)| name.to_owned()),
            timeout: section.duration("timeout")?,
            retry_delay,
            max_retry_delay,
        })
    }

    /// Who claims the lock: `locked_by` when given, otherwise the key.
    pub fn requestor(&self) -> &str {
        self.locked_by.as_deref().unwrap_or(&self.key)
    }

    /// The waits between attempts: these params' over the source's.
    pub fn retry_delays(&self, source: &Source) -> RetryDelays {
        RetryDelays {
            first: self.retry_delay.unwrap_or(source.retry.first),
            max: self.max_retry_delay.unwrap_or(source.retry.max),
        }
    }
}

/// The `params` of a get step: there are none, but a typo must still fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InParams;

impl InParams {
    /// Validates a get step's `params` (absent, null or `{}`).
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        if value.is_null() {
            return Ok(Self);
        }
        Section::new("params", value, &[], "")?;
        Ok(Self)
    }
}

/// One section of settings, checked for unknown keys when made.
struct Section<'a> {
    name: &'static str,
    map: &'a Map<String, Value>,
}

impl<'a> Section<'a> {
    fn new(
        name: &'static str,
        value: &'a Value,
        known: &'static [&'static str],
        hint: &'static str,
    ) -> Result<Self, ConfigError> {
        let map = match value {
            Value::Object(map) => map,
            Value::Null => {
                return Err(ConfigError::MissingSection {
                    section: name,
                    hint,
                });
            }
            other => {
                return Err(ConfigError::NotAnObject {
                    section: name,
                    found: describe_type(other),
                });
            }
        };
        if let Some(key) = map.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(ConfigError::UnknownKey {
                section: name,
                key: key.clone(),
                expected: KnownKeys(known),
            });
        }
        Ok(Self { name, map })
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|value| !value.is_null())
    }

    fn string(&self, key: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    fn bool(&self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(self.wrong_type(key, "true or false", other)),
        }
    }

    fn duration(&self, key: &'static str) -> Result<Option<Duration>, ConfigError> {
        let expected = "a duration like 500ms, 10s, 5m or 1h";
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => duration::parse(text).map(Some).map_err(|problem| {
                self.invalid(
                    key,
                    format!("must be {expected} (got {}: {problem})", quoted(text)),
                )
            }),
            Some(other) => Err(self.wrong_type(key, expected, other)),
        }
    }

    /// A duration that must be longer than zero, since it paces retries.
    fn delay(&self, key: &'static str) -> Result<Option<Duration>, ConfigError> {
        let delay = self.duration(key)?;
        if delay == Some(Duration::ZERO) {
            return Err(self.invalid(key, "must be longer than zero, like 500ms".to_owned()));
        }
        Ok(delay)
    }

    fn missing(&self, key: &'static str, hint: &'static str) -> ConfigError {
        ConfigError::MissingKey {
            section: self.name,
            key,
            hint,
        }
    }

    fn wrong_type(&self, key: &'static str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::WrongType {
            section: self.name,
            key,
            expected,
            found: describe_type(found),
        }
    }

    fn invalid(&self, key: &'static str, problem: String) -> ConfigError {
        ConfigError::InvalidValue {
            section: self.name,
            key,
            problem,
        }
    }
}

fn check_delay_order(
    section: &Section<'_>,
    first: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if max < first {
        return Err(section.invalid(
            "max_retry_delay",
            format!(
                "({}) must not be shorter than {}.retry_delay ({})",
                duration::format(max),
                section.name,
                duration::format(first)
            ),
        ));
    }
    Ok(())
}

fn validate_url(
    section: &Section<'_>,
    key: &'static str,
    text: &str,
) -> Result<String, ConfigError> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    match rest {
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !text.contains(char::is_whitespace) =>
        {
            Ok(text.trim_end_matches('/').to_owned())
        }
        _ => Err(section.invalid(
            key,
            format!(
                "must be an http:// or https:// URL like https://locker.example.com (got {})",
                quoted(text)
            ),
        )),
    }
}

fn validate_lock_name(
    section: &Section<'_>,
    key: &'static str,
    name: &str,
) -> Result<String, ConfigError> {
    if name.is_empty() {
        return Err(section.invalid(key, "must not be empty".to_owned()));
    }
    if name.len() > MAX_LOCK_NAME_BYTES {
        return Err(section.invalid(
            key,
            format!(
                "is {} bytes long; the server accepts at most {MAX_LOCK_NAME_BYTES}",
                name.len()
            ),
        ));
    }
    Ok(name.to_owned())
}

fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Names a JSON value's type for a message, without its content (which may be a secret).
pub(crate) fn describe_type(value: &Value) -> String {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source_error(value: Value) -> String {
        Source::from_json(&value).unwrap_err().to_string()
    }

    fn params_error(value: Value) -> String {
        OutParams::from_json(&value).unwrap_err().to_string()
    }

    fn minimal_source() -> Value {
        json!({"locker_uri": "https://locker.example.com", "lock_name": "prod"})
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        base[key] = value;
        base
    }

    fn without(mut base: Value, key: &str) -> Value {
        base.as_object_mut().unwrap().remove(key);
        base
    }

    #[test]
    fn minimal_source_gets_defaults() {
        let source = Source::from_json(&minimal_source()).unwrap();
        assert_eq!(source.locker_uri, "https://locker.example.com");
        assert_eq!(source.lock, LockTarget::Name("prod".to_owned()));
        assert_eq!(source.credentials, None);
        assert_eq!(source.ca_cert, None);
        assert!(!source.skip_ssl_validation);
        assert_eq!(
            source.retry,
            RetryDelays {
                first: Duration::from_secs(1),
                max: Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn full_source_is_read() {
        let source = Source::from_json(&json!({
            "locker_uri": "http://10.0.0.1:3000/",
            "bosh_lock": "https://director:25555",
            "username": "ci",
            "password": "secret",
            "skip_ssl_validation": true,
            "retry_delay": "50ms",
            "max_retry_delay": "2m",
            "ca_cert": null,
        }))
        .unwrap();
        assert_eq!(source.locker_uri, "http://10.0.0.1:3000");
        assert_eq!(
            source.lock,
            LockTarget::BoshDirector("https://director:25555".to_owned())
        );
        assert_eq!(
            source.credentials,
            Some(Credentials {
                username: "ci".to_owned(),
                password: "secret".to_owned()
            })
        );
        assert!(source.skip_ssl_validation);
        assert_eq!(source.retry.first, Duration::from_millis(50));
        assert_eq!(source.retry.max, Duration::from_secs(120));
    }

    #[test]
    fn password_is_not_in_debug_output() {
        let source = Source::from_json(&with(
            with(minimal_source(), "username", json!("ci")),
            "password",
            json!("hunter2"),
        ))
        .unwrap();
        let debug = format!("{source:?}");
        assert!(
            !debug.contains("hunter2"),
            "the password leaked into {debug}"
        );
    }

    #[test]
    fn a_typo_in_source_is_named_with_the_known_keys() {
        let value = json!({"locker_uri": "https://l", "lock_nmae": "prod"});
        assert_eq!(
            source_error(value),
            "source.lock_nmae is not a known key (expected one of: locker_uri, lock_name, bosh_lock, \
             username, password, ca_cert, skip_ssl_validation, retry_delay, max_retry_delay)"
        );
    }

    #[test]
    fn missing_or_malformed_source_is_explained() {
        assert_eq!(
            source_error(Value::Null),
            "source is missing (it needs at least locker_uri and lock_name)"
        );
        assert_eq!(
            source_error(json!("https://l")),
            "source must be an object of settings (got a string)"
        );
        assert_eq!(
            source_error(without(minimal_source(), "locker_uri")),
            "source.locker_uri is missing (the URL of the locker server, like https://locker.example.com)"
        );
        assert_eq!(
            source_error(with(minimal_source(), "locker_uri", Value::Null)),
            "source.locker_uri is missing (the URL of the locker server, like https://locker.example.com)"
        );
    }

    #[test]
    fn wrong_types_in_source_are_named() {
        assert_eq!(
            source_error(with(minimal_source(), "locker_uri", json!(3000))),
            "source.locker_uri must be a string (got a number)"
        );
        assert_eq!(
            source_error(with(minimal_source(), "lock_name", json!(["a"]))),
            "source.lock_name must be a string (got a list)"
        );
        assert_eq!(
            source_error(with(minimal_source(), "skip_ssl_validation", json!("yes"))),
            "source.skip_ssl_validation must be true or false (got a string)"
        );
        assert_eq!(
            source_error(with(minimal_source(), "retry_delay", json!(5))),
            "source.retry_delay must be a duration like 500ms, 10s, 5m or 1h (got a number)"
        );
        assert_eq!(
            source_error(with(
                with(minimal_source(), "username", json!("ci")),
                "password",
                json!(1234)
            )),
            "source.password must be a string (got a number)"
        );
    }

    #[test]
    fn lock_name_and_bosh_lock_exclude_each_other() {
        assert_eq!(
            source_error(with(minimal_source(), "bosh_lock", json!("https://d"))),
            "source has both lock_name and bosh_lock: set exactly one of them"
        );
        assert_eq!(
            source_error(without(minimal_source(), "lock_name")),
            "source needs one of lock_name (the lock's name) or bosh_lock \
             (a BOSH director URL whose name is the lock's name)"
        );
    }

    #[test]
    fn username_and_password_come_together() {
        assert_eq!(
            source_error(with(minimal_source(), "username", json!("ci"))),
            "source.username is set but source.password is missing: set both or neither"
        );
        assert_eq!(
            source_error(with(minimal_source(), "password", json!("p"))),
            "source.password is set but source.username is missing: set both or neither"
        );
    }

    #[test]
    fn bad_values_in_source_are_explained() {
        assert_eq!(
            source_error(with(minimal_source(), "locker_uri", json!("locker:3000"))),
            "source.locker_uri must be an http:// or https:// URL like https://locker.example.com \
             (got \"locker:3000\")"
        );
        assert_eq!(
            source_error(with(minimal_source(), "locker_uri", json!("https://"))),
            "source.locker_uri must be an http:// or https:// URL like https://locker.example.com \
             (got \"https://\")"
        );
        assert_eq!(
            source_error(without(
                with(minimal_source(), "bosh_lock", json!("director")),
                "lock_name"
            )),
            "source.bosh_lock must be an http:// or https:// URL like https://locker.example.com \
             (got \"director\")"
        );
        assert_eq!(
            source_error(with(minimal_source(), "lock_name", json!(""))),
            "source.lock_name must not be empty"
        );
        assert_eq!(
            source_error(with(minimal_source(), "lock_name", json!("x".repeat(513)))),
            "source.lock_name is 513 bytes long; the server accepts at most 512"
        );
        assert_eq!(
            source_error(with(
                minimal_source(),
                "ca_cert",
                json!("not a certificate")
            )),
            "source.ca_cert holds no PEM certificate (expected text starting with -----BEGIN CERTIFICATE-----)"
        );
    }

    #[test]
    fn bad_delays_in_source_are_explained() {
        assert_eq!(
            source_error(with(minimal_source(), "retry_delay", json!("10"))),
            format!(
                "source.retry_delay must be a duration like 500ms, 10s, 5m or 1h (got \"10\": {})",
                duration::parse("10").unwrap_err()
            )
        );
        assert_eq!(
            source_error(with(minimal_source(), "retry_delay", json!("0s"))),
            "source.retry_delay must be longer than zero, like 500ms"
        );
        assert_eq!(
            source_error(with(minimal_source(), "max_retry_delay", json!("0ms"))),
            "source.max_retry_delay must be longer than zero, like 500ms"
        );
        assert_eq!(
            source_error(with(minimal_source(), "max_retry_delay", json!("500ms"))),
            "source.max_retry_delay (500ms) must not be shorter than source.retry_delay (1s)"
        );
    }

    #[test]
    fn lock_params_are_read() {
        let params = OutParams::from_json(&json!({"lock_op": "lock", "key": "deploy"})).unwrap();
        assert_eq!(params.lock_op, LockOp::Lock);
        assert_eq!(params.key, "deploy");
        assert_eq!(params.requestor(), "deploy");
        assert_eq!(params.timeout, None);

        let params = OutParams::from_json(&json!({
            "lock_op": "unlock", "key": "deploy", "lock_by": "build 7", "timeout": "2m",
            "retry_delay": "50ms", "max_retry_delay": "200ms",
        }))
        .unwrap();
        assert_eq!(params.lock_op, LockOp::Unlock);
        assert_eq!(params.requestor(), "build 7");
        assert_eq!(params.timeout, Some(Duration::from_secs(120)));
        let source = Source::from_json(&minimal_source()).unwrap();
        assert_eq!(
            params.retry_delays(&source),
            RetryDelays {
                first: Duration::from_millis(50),
                max: Duration::from_millis(200)
            }
        );

        let params =
            OutParams::from_json(&json!({"lock_op": "lock", "key": "k", "locked_by": "me"}))
                .unwrap();
        assert_eq!(params.requestor(), "me");
        assert_eq!(params.retry_delays(&source), source.retry);
    }

    #[test]
    fn a_typo_in_params_is_named_with_the_known_keys() {
        assert_eq!(
            params_error(json!({"lock_op": "lock", "key": "k", "lockd_by": "me"})),
            "params.lockd_by is not a known key (expected one of: lock_op, key, locked_by, lock_by, \
             timeout, retry_delay, max_retry_delay)"
        );
    }

    #[test]
    fn missing_or_wrong_params_are_explained() {
        assert_eq!(
            params_error(Value::Null),
            "params is missing (a put needs at least lock_op and key)"
        );
        assert_eq!(
            params_error(json!([])),
            "params must be an object of settings (got a list)"
        );
        assert_eq!(
            params_error(json!({"key": "k"})),
            "params.lock_op is missing (lock or unlock)"
        );
        assert_eq!(
            params_error(json!({"lock_op": "grab", "key": "k"})),
            "params.lock_op must be lock or unlock (got \"grab\")"
        );
        assert_eq!(
            params_error(json!({"lock_op": "lock"})),
            "params.key is missing (the key that claims the lock, like the build's environment)"
        );
        assert_eq!(
            params_error(json!({"lock_op": "lock", "key": 42})),
            "params.key must be a string (got a number)"
        );
        assert_eq!(
            params_error(json!({"lock_op": "lock", "key": ""})),
            "params.key must not be empty"
        );
        assert_eq!(
            params_error(json!({"lock_op": "lock", "key": "k", "lock_by": ""})),
            "params.lock_by must not be empty (leave it out to use the key)"
        );
        assert_eq!(
            params_error(json!({"lock_op": "lock", "key": "k", "lock_by": "a", "locked_by": "b"})),
            "params has both locked_by and lock_by: they are the same setting, keep one"
        );
        assert_eq!(
            params_error(json!({"lock_op": "lock", "key": "k", "timeout": "soon"})),
            format!(
                "params.timeout must be a duration like 500ms, 10s, 5m or 1h (got \"soon\": {})",
                duration::parse("soon").unwrap_err()
            )
        );
        assert_eq!(
            params_error(json!({"lock_op": "lock", "key": "k", "timeout": 60})),
            "params.timeout must be a duration like 500ms, 10s, 5m or 1h (got a number)"
        );
        assert_eq!(
            params_error(json!({"lock_op": "lock", "key": "k", "retry_delay": "0s"})),
            "params.retry_delay must be longer than zero, like 500ms"
        );
        assert_eq!(
            params_error(
                json!({"lock_op": "lock", "key": "k", "retry_delay": "2s", "max_retry_delay": "1s"})
            ),
            "params.max_retry_delay (1s) must not be shorter than params.retry_delay (2s)"
        );
    }

    #[test]
    fn zero_timeout_is_allowed() {
        let params =
            OutParams::from_json(&json!({"lock_op": "lock", "key": "k", "timeout": "0s"})).unwrap();
        assert_eq!(params.timeout, Some(Duration::ZERO));
    }

    #[test]
    fn get_takes_no_params() {
        assert_eq!(InParams::from_json(&Value::Null), Ok(InParams));
        assert_eq!(InParams::from_json(&json!({})), Ok(InParams));
        assert_eq!(
            InParams::from_json(&json!({"lock_op": "lock"}))
                .unwrap_err()
                .to_string(),
            "params.lock_op is not a known key (this step takes no params)"
        );
        assert_eq!(
            InParams::from_json(&json!("x")).unwrap_err().to_string(),
            "params must be an object of settings (got a string)"
        );
    }
}

//! Configuration: the resource's `source` and the steps' `params`, validated once at the edge.
//!
//! serde reads each section into a private struct of its keys (`SourceKeys`, ...) that denies
//! unknown ones and checks each value's type; `serde_path_to_error` names the key at fault and
//! `reword` turns serde's message into ours. The values' rules (a URL, a lock name the server
//! accepts, ...) and the rules across keys (`lock_name` or `bosh_lock`, ...) are checked after.
//! So every mistake names the key in full and what is expected, and `lock_nmae` fails the build
//! instead of being ignored. A key set to `null` counts as absent. Validation needs no network:
//! a `bosh_lock` source is resolved to a lock name later, by [`crate::client::director_name`].

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::duration;

/// The longest lock name the server accepts, in bytes.
pub const MAX_LOCK_NAME_BYTES: usize = locker_protocol::names::MAX_LEN;

/// First wait between attempts when the pipeline does not say.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between attempts when the pipeline does not say.
pub const DEFAULT_MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// How long `unlock` and `renew` retry a server that cannot be reached when the pipeline does
/// not say.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(600);

const DURATION_FORMS: &str = "a duration like 500ms, 10s, 5m or 1h";
const TTL_FORMS: &str = "a duration like 90s, 30m or 2h, or a number of seconds";
const HOLD_FORMS: &str = "build or until_unlocked";

/// A configuration mistake, worded for the pipeline author.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// `source` or `params` is missing or is not an object of settings.
    #[error("{section} {problem}")]
    Section {
        /// `source` or `params`.
        section: &'static str,
        /// What is wrong and what the section needs.
        problem: String,
    },
    /// One key is unknown, missing, of the wrong type or holds a value that is not accepted.
    #[error("{section}.{key} {problem}")]
    Key {
        /// `source` or `params`.
        section: &'static str,
        /// The key.
        key: String,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// Keys that contradict each other or need each other.
    #[error("{0}")]
    Conflict(&'static str),
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
    /// How long a claim lasts unless renewed, unless a put's params say otherwise; `None`:
    /// claims last until unlocked.
    pub ttl: Option<Duration>,
    /// How long a lock's claim is held, unless a put's params say otherwise; `None`: the
    /// server's default, until unlocked.
    pub hold: Option<Hold>,
}

/// The keys `source` accepts, in the order an unknown key's message lists them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceKeys {
    locker_uri: Option<String>,
    lock_name: Option<String>,
    bosh_lock: Option<String>,
    username: Option<String>,
    password: Option<String>,
    ca_cert: Option<String>,
    skip_ssl_validation: Option<bool>,
    retry_delay: Option<WrittenDuration>,
    max_retry_delay: Option<WrittenDuration>,
    ttl: Option<WrittenTtl>,
    hold: Option<Hold>,
}

impl Source {
    /// Validates a resource's `source`.
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        let hint = "it needs at least locker_uri and lock_name";
        let keys: SourceKeys = read_section("source", value, hint)?;
        let hint = "the URL of the locker server, like https://locker.example.com";
        let locker_uri = required(keys.locker_uri, hint)
            .and_then(|uri| http_url(&uri))
            .map_err(at("source", "locker_uri"))?;
        let lock = match (keys.lock_name, keys.bosh_lock) {
            (Some(name), None) => {
                check_lock_name(&name).map_err(at("source", "lock_name"))?;
                LockTarget::Name(name)
            }
            (None, Some(url)) => {
                LockTarget::BoshDirector(http_url(&url).map_err(at("source", "bosh_lock"))?)
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict(
                    "source has both lock_name and bosh_lock: set exactly one of them",
                ));
            }
            (None, None) => {
                return Err(ConfigError::Conflict(
                    "source needs one of lock_name (the lock's name) or bosh_lock \
                     (a BOSH director URL whose name is the lock's name)",
                ));
            }
        };
        let credentials = match (keys.username, keys.password) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Conflict(
                    "source.username is set but source.password is missing: set both or neither",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Conflict(
                    "source.password is set but source.username is missing: set both or neither",
                ));
            }
        };
        if let Some(pem) = &keys.ca_cert {
            check_pem_certificate(pem).map_err(at("source", "ca_cert"))?;
        }
        let first = delay(keys.retry_delay).map_err(at("source", "retry_delay"))?;
        let max = delay(keys.max_retry_delay).map_err(at("source", "max_retry_delay"))?;
        let retry = RetryDelays {
            first: first.unwrap_or(DEFAULT_RETRY_DELAY),
            max: max.unwrap_or(DEFAULT_MAX_RETRY_DELAY),
        };
        check_delay_order("source", retry)?;
        Ok(Self {
            locker_uri,
            credentials,
            ca_cert: keys.ca_cert,
            skip_ssl_validation: keys.skip_ssl_validation.unwrap_or(false),
            lock,
            retry,
            ttl: keys.ttl.map(|WrittenTtl(ttl)| ttl),
            hold: keys.hold,
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
    /// Move the deadline of a claim taken earlier (with a `ttl`) to now + `ttl`.
    Renew,
}

impl LockOp {
    /// The name used in params and metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            LockOp::Lock => "lock",
            LockOp::Unlock => "unlock",
            LockOp::Renew => "renew",
        }
    }
}

/// How long a lock's claims are held, besides a lease: the `hold` of a put's params or of the
/// source, sent to the server with a `lock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Until they are unlocked (or their lease ends): the server's default.
    UntilUnlocked,
    /// Also no longer than the build that took them runs: the server asks Concourse about the
    /// build in the claim's `owner.build_id` and releases them once it has finished.
    Build,
}

impl Hold {
    /// The name used in params, source and the request body.
    pub fn as_str(self) -> &'static str {
        match self {
            Hold::UntilUnlocked => "until_unlocked",
            Hold::Build => "build",
        }
    }
}

/// The `params` of a put step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutParams {
    /// Lock, unlock or renew.
    pub lock_op: LockOp,
    /// The key that claims the lock.
    pub key: String,
    /// Who claims it, as given (`locked_by` or `lock_by`); see [`OutParams::requestor`].
    pub locked_by: Option<String>,
    /// How long to wait for the lock, or to retry an unreachable server when unlocking or
    /// renewing.
    pub timeout: Option<Duration>,
    /// Overrides `source.retry_delay`.
    pub retry_delay: Option<Duration>,
    /// Overrides `source.max_retry_delay`.
    pub max_retry_delay: Option<Duration>,
    /// Overrides `source.ttl`; see [`OutParams::lease_ttl`].
    pub ttl: Option<Duration>,
    /// Overrides `source.hold`; see [`OutParams::hold`].
    pub hold: Option<Hold>,
}

/// The keys a put's `params` accepts, in the order an unknown key's message lists them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutParamKeys {
    lock_op: Option<String>,
    key: Option<String>,
    locked_by: Option<String>,
    lock_by: Option<String>,
    timeout: Option<WrittenDuration>,
    retry_delay: Option<WrittenDuration>,
    max_retry_delay: Option<WrittenDuration>,
    ttl: Option<WrittenTtl>,
    hold: Option<Hold>,
}

impl OutParams {
    /// Validates a put step's `params`.
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        let keys: OutParamKeys =
            read_section("params", value, "a put needs at least lock_op and key")?;
        let lock_op = required(keys.lock_op, "lock, unlock or renew")
            .and_then(|op| match op.as_str() {
                "lock" => Ok(LockOp::Lock),
                "unlock" => Ok(LockOp::Unlock),
                "renew" => Ok(LockOp::Renew),
                other => Err(format!(
                    "must be lock, unlock or renew (got {})",
                    quoted(other)
                )),
            })
            .map_err(at("params", "lock_op"))?;
        let hint = "the key that claims the lock, like the build's environment";
        let key = required(keys.key, hint)
            .and_then(|key| match key.as_str() {
                "" => Err("must not be empty".to_owned()),
                _ => Ok(key),
            })
            .map_err(at("params", "key"))?;
        for (name_key, name) in [("locked_by", &keys.locked_by), ("lock_by", &keys.lock_by)] {
            if name.as_deref() == Some("") {
                let problem = "must not be empty (leave it out to use the key)";
                return Err(at("params", name_key)(problem.to_owned()));
            }
        }
        let locked_by = match (keys.locked_by, keys.lock_by) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict(
                    "params has both locked_by and lock_by: they are the same setting, keep one",
                ));
            }
            (locked_by, lock_by) => locked_by.or(lock_by),
        };
        let retry_delay = delay(keys.retry_delay).map_err(at("params", "retry_delay"))?;
        let max_retry_delay =
            delay(keys.max_retry_delay).map_err(at("params", "max_retry_delay"))?;
        if let (Some(first), Some(max)) = (retry_delay, max_retry_delay) {
            check_delay_order("params", RetryDelays { first, max })?;
        }
        let ttl = keys.ttl.map(|WrittenTtl(ttl)| ttl);
        if lock_op == LockOp::Unlock && ttl.is_some() {
            // Not ignored: whoever wrote it expects something of it, and unlock has no lease
            // to set.
            return Err(ConfigError::Conflict(
                "params.ttl has no effect on unlock, which ends the claim: leave it out \
                 (set it on the lock or renew step)",
            ));
        }
        // A claim keeps the hold it was locked with; these steps send none.
        match (lock_op, keys.hold) {
            (LockOp::Unlock, Some(_)) => {
                return Err(ConfigError::Conflict(
                    "params.hold has no effect on unlock, which ends the claim: leave it out \
                     (set it on the lock step)",
                ));
            }
            (LockOp::Renew, Some(_)) => {
                return Err(ConfigError::Conflict(
                    "params.hold has no effect on renew: a claim keeps the hold it was locked \
                     with, so leave it out (set it on the lock step)",
                ));
            }
            _ => {}
        }
        Ok(Self {
            lock_op,
            key,
            locked_by,
            timeout: keys.timeout.map(|WrittenDuration(timeout)| timeout),
            retry_delay,
            max_retry_delay,
            ttl,
            hold: keys.hold,
        })
    }

    /// The hold this put asks for, `params.hold` over `source.hold`, and the key that chose it
    /// (`"params.hold"` or `"source.hold"`), for messages. `lock` sends it when there is one;
    /// `unlock` and `renew` send none, and a claim keeps the hold it was locked with.
    pub fn hold(&self, source: &Source) -> Option<(Hold, &'static str)> {
        if self.lock_op != LockOp::Lock {
            return None;
        }
        match (self.hold, source.hold) {
            (Some(hold), _) => Some((hold, "params.hold")),
            (None, Some(hold)) => Some((hold, "source.hold")),
            (None, None) => None,
        }
    }

    /// The lease this put asks for: `params.ttl` over `source.ttl`. `lock` sends it when there
    /// is one; `renew` needs one; `unlock` has none.
    pub fn lease_ttl(&self, source: &Source) -> Result<Option<Duration>, ConfigError> {
        let ttl = self.ttl.or(source.ttl);
        match self.lock_op {
            LockOp::Lock => Ok(ttl),
            LockOp::Unlock => Ok(None),
            LockOp::Renew => ttl.map(Some).ok_or(ConfigError::Conflict(
                "lock_op renew needs a ttl, the lease's new length from now: set params.ttl \
                 or source.ttl, like 30m",
            )),
        }
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

/// The keys a get's `params` accepts: none.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InParamKeys {}

impl InParams {
    /// Validates a get step's `params` (absent, null or `{}`).
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        if !value.is_null() {
            let InParamKeys {} = read_section("params", value, "")?;
        }
        Ok(Self)
    }
}

/// Reads a section (`source` or `params`) into the struct of its keys; `hint` says what a
/// missing section needs.
fn read_section<'a, T: Deserialize<'a>>(
    section: &'static str,
    value: &'a Value,
    hint: &str,
) -> Result<T, ConfigError> {
    let problem = match value {
        Value::Object(map) => {
            return serde_path_to_error::deserialize(value)
                .map_err(|err| reword(section, map, err));
        }
        Value::Null => format!("is missing ({hint})"),
        other => format!(
            "must be an object of settings (got {})",
            describe_type(other)
        ),
    };
    Err(ConfigError::Section { section, problem })
}

/// Turns serde's message about one key of `section` into ours.
///
/// serde words an unknown key as ``unknown field `x`, expected one of `a`, `b` `` (or
/// `..., there are no fields`) and a wrong type as `invalid type: string "x", expected a
/// boolean`. The latter shows the value, which may be a secret, so the type found is named from
/// the JSON instead. Any other message is one of ours, like a duration's.
fn reword(
    section: &'static str,
    map: &Map<String, Value>,
    err: serde_path_to_error::Error<serde_json::Error>,
) -> ConfigError {
    let key = err.path().to_string();
    let message = err.into_inner().to_string();
    let wrong_type = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.rsplit_once(", expected "));
    let problem = if let Some(rest) = message.strip_prefix(&format!("unknown field `{key}`, ")) {
        match rest.strip_prefix("expected ") {
            Some(known) => format!(
                "is not a known key (expected {})",
                known.replacen("one of ", "one of: ", 1).replace('`', "")
            ),
            None => "is not a known key (this step takes no params)".to_owned(),
        }
    } else if let Some((_, expected)) = wrong_type {
        // Plainer for a YAML author than "a boolean".
        let expected = expected.replace("a boolean", "true or false");
        let found = map
            .get(&key)
            .map_or("another type".to_owned(), describe_type);
        format!("must be {expected} (got {found})")
    } else {
        message
    };
    ConfigError::Key {
        section,
        key,
        problem,
    }
}

/// Names `section.key` in an error about its value, for `map_err`.
fn at(section: &'static str, key: &'static str) -> impl FnOnce(String) -> ConfigError {
    move |problem| ConfigError::Key {
        section,
        key: key.to_owned(),
        problem,
    }
}

/// A key that must be given; `hint` says what to set it to.
fn required<T>(value: Option<T>, hint: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("is missing ({hint})"))
}

/// An `http://` or `https://` URL with a host, returned without its trailing slash.
fn http_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or_default();
    if rest.is_empty() || rest.starts_with('/') || text.contains(char::is_whitespace) {
        return Err(format!(
            "must be an http:// or https:// URL like https://locker.example.com (got {})",
            quoted(text)
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// A lock name the server accepts: not empty and at most [`MAX_LOCK_NAME_BYTES`] long.
fn check_lock_name(name: &str) -> Result<(), String> {
    match name.len() {
        0 => Err("must not be empty".to_owned()),
        len if len > MAX_LOCK_NAME_BYTES => Err(format!(
            "is {len} bytes long; the server accepts at most {MAX_LOCK_NAME_BYTES}"
        )),
        _ => Ok(()),
    }
}

/// `ca_cert` must hold a certificate: a key or garbage alone would trust nothing.
fn check_pem_certificate(pem: &str) -> Result<(), String> {
    let has_certificate = ureq::tls::parse_pem(pem.as_bytes())
        .any(|item| matches!(item, Ok(ureq::tls::PemItem::Certificate(_))));
    if has_certificate {
        return Ok(());
    }
    Err("holds no PEM certificate (expected text starting with -----BEGIN CERTIFICATE-----)".into())
}

/// A wait between attempts, which must be longer than zero or the retries would spin.
fn delay(written: Option<WrittenDuration>) -> Result<Option<Duration>, String> {
    match written {
        Some(WrittenDuration(delay)) if delay.is_zero() => {
            Err("must be longer than zero, like 500ms".to_owned())
        }
        written => Ok(written.map(|WrittenDuration(delay)| delay)),
    }
}

/// `max_retry_delay` must not be shorter than `retry_delay`: no wait could be both.
fn check_delay_order(section: &'static str, delays: RetryDelays) -> Result<(), ConfigError> {
    if delays.max < delays.first {
        let problem = format!(
            "({}) must not be shorter than {section}.retry_delay ({})",
            duration::format(delays.max),
            duration::format(delays.first)
        );
        return Err(at(section, "max_retry_delay")(problem));
    }
    Ok(())
}

/// A duration as pipelines write it; see [`duration::parse`].
struct WrittenDuration(Duration);

impl<'de> Deserialize<'de> for WrittenDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// Reads a [`WrittenDuration`]; its own `expecting` makes a number read "must be a duration
/// like ...", not "must be a string".
struct DurationVisitor;

impl de::Visitor<'_> for DurationVisitor {
    type Value = WrittenDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(DURATION_FORMS)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<WrittenDuration, E> {
        duration::parse(text)
            .map(WrittenDuration)
            .map_err(|problem| {
                E::custom(format!(
                    "must be {DURATION_FORMS} (got {}: {problem})",
                    quoted(text)
                ))
            })
    }
}

impl<'de> Deserialize<'de> for Hold {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(HoldVisitor)
    }
}

/// Reads a [`Hold`]; its own `expecting` makes a number read "must be build or until_unlocked",
/// not "must be a string".
struct HoldVisitor;

impl de::Visitor<'_> for HoldVisitor {
    type Value = Hold;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(HOLD_FORMS)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Hold, E> {
        [Hold::UntilUnlocked, Hold::Build]
            .into_iter()
            .find(|hold| hold.as_str() == text)
            .ok_or_else(|| E::custom(format!("must be {HOLD_FORMS} (got {})", quoted(text))))
    }
}

/// A lease as pipelines write it: a duration string or a number of seconds, longer than zero.
/// How long the server allows is the server's to say (7 days unless configured).
struct WrittenTtl(Duration);

impl<'de> Deserialize<'de> for WrittenTtl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TtlVisitor)
    }
}

/// Reads a [`WrittenTtl`]; `expecting` words the message for a boolean, a list, ...
struct TtlVisitor;

impl TtlVisitor {
    fn positive<E: de::Error>(ttl: Duration, written: &str) -> Result<WrittenTtl, E> {
        if ttl.is_zero() {
            return Err(E::custom(format!(
                "must be longer than zero, like 30m (got {written})"
            )));
        }
        Ok(WrittenTtl(ttl))
    }
}

impl de::Visitor<'_> for TtlVisitor {
    type Value = WrittenTtl;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(TTL_FORMS)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<WrittenTtl, E> {
        let ttl = duration::parse(text).map_err(|problem| {
            E::custom(format!(
                "must be {TTL_FORMS} (got {}: {problem})",
                quoted(text)
            ))
        })?;
        Self::positive(ttl, &quoted(text))
    }

    fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<WrittenTtl, E> {
        Self::positive(Duration::from_secs(seconds), &seconds.to_string())
    }

    fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<WrittenTtl, E> {
        match u64::try_from(seconds) {
            Ok(seconds) => self.visit_u64(seconds),
            Err(_) => Err(E::custom(format!(
                "must be longer than zero, like 30m (got {seconds})"
            ))),
        }
    }

    fn visit_f64<E: de::Error>(self, seconds: f64) -> Result<WrittenTtl, E> {
        if seconds <= 0.0 {
            return Err(E::custom(format!(
                "must be longer than zero, like 30m (got {seconds})"
            )));
        }
        let ttl = Duration::try_from_secs_f64(seconds).map_err(|_| {
            E::custom(format!(
                "must be {TTL_FORMS} (got {seconds}: it is too long)"
            ))
        })?;
        Self::positive(ttl, &seconds.to_string())
    }
}

fn quoted(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// Names a JSON value's type for a message, without its content (which may be a secret).
pub(crate) fn describe_type(value: &Value) -> String {
    locker_protocol::json_type(value).to_owned()
}

#[cfg(test)]
mod tests;

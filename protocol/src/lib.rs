//! The locker API's wire format, shared by the server, the resource, the benchmark and the
//! tests, so that a field, a limit or an encoding rule is written down once.
//!
//! - [`names`]: what a lock name, key, requestor or request id may be, and how a lock name
//!   travels in a URL path segment.
//! - [`Lock`]: the LOCK object every answer carries.
//! - [`ClaimBody`]: the body of a lock or unlock request.

pub mod names;

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The header that names one request across its retries (IETF draft "The Idempotency-Key
/// HTTP Header Field").
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The LOCK object, as the API writes it. Clients read it leniently: fields a newer server
/// adds are ignored, and fields an older server (or the original one) lacks take defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// The key that holds the lock; empty when it is free.
    pub key: String,
    /// Claims per requestor; empty when the lock is free.
    pub locked_by: BTreeMap<String, u64>,
    /// The table revision of the lock's last change.
    pub revision: u64,
    /// When the current key took the lock (RFC 3339, UTC); `null` when free or unknown.
    pub locked_at: Option<String>,
    /// The fencing token of the current key's tenure: greater than every token the lock had
    /// before; `null` when free.
    #[serde(default)]
    pub token: Option<u64>,
    /// Who holds the lock, sorted by requestor.
    #[serde(default, deserialize_with = "null_as_default")]
    pub holders: Vec<Holder>,
    /// Who waits for the lock, first in line first; reads show it, answers to changes do not.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub queue: Vec<Waiter>,
}

/// One request waiting in a lock's queue. Read leniently too: what a server leaves out (or
/// sends as `null`) takes its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub requestor: String,
    #[serde(default)]
    pub key: String,
    /// When it joined the queue (RFC 3339, UTC).
    #[serde(default, deserialize_with = "null_as_default")]
    pub since: String,
    /// Who it waits for, as its lock request said.
    #[serde(default, deserialize_with = "null_as_default")]
    pub owner: BTreeMap<String, String>,
}

/// One requestor's claims on a lock. Read leniently too: what a server leaves out (or sends
/// as `null`) takes its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub requestor: String,
    #[serde(default)]
    pub count: u64,
    /// When its first current claim was made; `null` when unknown.
    #[serde(default)]
    pub since: Option<String>,
    /// When its claims expire; `null`: never.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Who the claims are for (`team`, `pipeline`, `job`, `build`, `build_url`, ...).
    #[serde(default, deserialize_with = "null_as_default")]
    pub owner: BTreeMap<String, String>,
    /// How long the claims are held besides a lease: `until_unlocked`, or `build` (the server
    /// releases them once the build in `owner.build_id` has finished); `None` from a server
    /// that predates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// For a claim held for its build: the build's status when the server last asked
    /// Concourse (`started`, `succeeded`, ...); `None` until it has asked, and in the answers
    /// to changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_status: Option<String>,
    /// When the server last asked about the build (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_checked_at: Option<String>,
}

/// Reads `null` as the type's default.
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// How many fields an owner may have.
pub const MAX_OWNER_FIELDS: usize = 16;
/// The longest value of an owner's field, in bytes.
pub const MAX_OWNER_VALUE: usize = 192;
/// How many bytes an owner's names and values may add up to.
pub const MAX_OWNER_BYTES: usize = 4096;

/// The fields a lock, unlock or renew body may have: the key, three spellings of the
/// requestor (the original server's `locked_by`, its resource's `lock_by`, and `requestor`),
/// the lease's time to live, and the owner.
pub const CLAIM_FIELDS: [&str; 7] = [
    "key",
    "locked_by",
    "lock_by",
    "requestor",
    "ttl",
    "owner",
    "hold",
];

/// The body of a lock or unlock request, as clients send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimBody<'a> {
    pub key: &'a str,
    pub locked_by: &'a str,
}

impl ClaimBody<'_> {
    /// The body as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings serializes")
    }
}

/// Formats a time as the API and the state file write it: RFC 3339 in UTC, with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The name of a JSON value's type, with an article, for messages (`a string`, `null`), and
/// without its content, which may be a secret. Arrays are "a list", as pipeline authors
/// writing YAML know them.
pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_body_is_the_original_servers_shape() {
        let body = ClaimBody {
            key: "k",
            locked_by: "job \"x\"",
        };
        assert_eq!(body.to_json(), r#"{"key":"k","locked_by":"job \"x\""}"#);
    }

    #[test]
    fn the_original_servers_lock_objects_are_read_with_defaults() {
        let json = r#"{"key":"","locked_by":{},"revision":0,"locked_at":null,"later":1}"#;
        let lock: Lock = serde_json::from_str(json).unwrap();
        assert_eq!((lock.token, lock.holders.len()), (None, 0));
    }
}

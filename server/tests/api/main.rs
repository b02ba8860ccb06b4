//! Integration tests: each starts the real `locker` binary and talks HTTP to it.

mod auth_tls;
mod concurrency;
mod in_process;
mod locks;
mod persistence;
mod retries;
mod startup;

use serde_json::Value;

/// The JSON body of a lock/unlock request.
pub fn body(key: &str, locked_by: &str) -> String {
    serde_json::json!({"key": key, "locked_by": locked_by}).to_string()
}

/// The holders of a LOCK object as `(requestor, count)` pairs.
pub fn holders(lock: &Value) -> Vec<(String, u64)> {
    lock["locked_by"]
        .as_object()
        .expect("locked_by is an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
        .collect()
}

/// Percent-encodes a lock name for a URL path segment.
pub fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

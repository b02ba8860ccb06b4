//! Integration tests: each starts the real `locker` binary and talks HTTP to it.

mod auth_tls;
mod build_watch;
mod cli;
mod concurrency;
mod dashboard;
mod events;
mod force_release;
mod history;
mod in_process;
mod leases;
mod locks;
mod metrics;
mod persistence;
mod postgres;
mod queue;
mod reserve;
mod retries;
mod startup;

use serde_json::Value;

/// The JSON body of a lock/unlock request.
pub fn body(key: &str, locked_by: &str) -> String {
    locker_protocol::ClaimBody { key, locked_by }.to_json()
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

/// True (and says so) when the suite runs against PostgreSQL and a test of the file backend
/// alone must not run: `why` says what the test is about.
pub fn skipped_on_postgres(why: &str) -> bool {
    let skip = locker_testkit::backend_is_postgres();
    if skip {
        eprintln!("skipped with LOCKER_TEST_BACKEND=postgres: {why}");
    }
    skip
}

/// Percent-encodes a lock name for a URL path segment.
pub use locker_protocol::names::encode_segment as encode;

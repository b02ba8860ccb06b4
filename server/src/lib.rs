//! The locker lock server: mutual exclusion for Concourse pipelines over HTTP.
//!
//! # Layout
//! - [`rules`]: the lock rules, a pure state machine (no I/O, time passed in).
//! - [`names`]: what a lock name, key or requestor may be.
//! - [`state_file`]: the YAML state file, the original server's JSON, and atomic replacement.
//! - [`journal`]: the append-only journal of batches between state file rewrites.
//! - [`store`]: the writer thread that group-commits changes and publishes them once durable.
//! - [`http`]: the HTTP API (poem), wire-compatible with the original server.
//! - [`config`]: configuration from the environment.
//! - [`server`]: start-up, graceful shutdown.
//! - [`tls`]: HTTPS with a configuration checked at start-up.
//! - [`connection`]: limits on slow clients and on the number of connections.
//! - [`healthcheck`]: the `locker healthcheck` probe for container runtimes.

pub mod config;
pub mod connection;
pub mod healthcheck;
pub mod http;
pub mod journal;
pub mod names;
pub mod rules;
pub mod server;
pub mod state_file;
pub mod store;
pub mod tls;

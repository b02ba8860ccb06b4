//! The locker lock server: mutual exclusion for Concourse pipelines over HTTP.
//!
//! # Layout
//! - [`domain`]: the lock rules, a pure state machine (no I/O, time passed in).
//! - [`clock`]: the one source of "now", and a clock tests move by hand.
//! - `store`: the backend seam ("decide and commit a batch", `store::backend`), the writer that
//!   group-commits and expires leases, and the published snapshots; `store::file` is the state
//!   file and its journal.
//! - `http`: the HTTP API (poem), wire-compatible with the original server; it owns its JSON.
//! - `dashboard`: the operators' page at `/` (HTML, CSS and JavaScript embedded in the binary),
//!   which reads and changes locks through the API like any other client.
//! - `metrics`: what the server counts for monitoring, served as `GET /metrics`.
//! - `net`: listening, TLS, and limits on slow clients and on connections.
//! - `background`: the lower CPU priority of threads that do background work.
//! - [`app`]: builds the server from a configuration and a port, then serves it.
//! - [`config`]: configuration from the environment.
//! - [`healthcheck`]: the `locker healthcheck` probe for container runtimes.
//! - [`cli`]: the command-line client (`locker lock`, `status`, `run`, ...), which talks to a
//!   server over HTTP like any other client.
//!
//! The wire types the server shares with its clients are in the `locker-protocol` crate.

pub mod app;
mod background;
pub mod cli;
pub mod clock;
mod concourse;
pub mod config;
mod dashboard;
pub mod domain;
pub mod healthcheck;
mod http;
mod metrics;
mod net;
mod pem;
mod store;

pub use http::OPENAPI;
pub use store::postgres::import_state_file;

/// State files as this server writes them, for tools and benchmarks that prepare them.
pub mod state_file {
    pub use crate::store::file::{END_LINE, to_bytes};
}

//! Benchmarks of the locker server: how close durable lock cycles come to what HTTP allows,
//! how they scale with the table, and how they compare with etcd's lock API (issue 5); and how
//! the lock queue serves its waiters (issue 12).
//!
//! # Layout
//! - [`http`]: a minimal keep-alive HTTP/1.1 client on tokio.
//! - [`http2`]: an HTTP/2 client for many waiting requests over few connections.
//! - [`load`]: the load generator: concurrent clients, warm-up, measured period, percentiles.
//! - [`clients`]: what one operation of each scenario is (a health check, a lock cycle, ...).
//! - [`servers`]: starting and stopping `locker` and `etcd` on loopback.
//! - [`state`]: state files with many held locks.
//! - [`order`]: whether a contended lock was granted in arrival order.
//! - [`scenarios`]: the scenarios and their targets.
//! - [`machine`]: what the numbers were measured on.
//! - [`report`]: the table and `BENCHMARKS.md`.

pub mod clients;
pub mod http;
pub mod http2;
pub mod load;
pub mod machine;
pub mod order;
pub mod report;
pub mod scenarios;
pub mod servers;
pub mod state;

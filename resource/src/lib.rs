//! The locker Concourse resource: `check`, `in` and `out` for locks on a locker server.
//!
//! # Layout
//! - [`protocol`]: what Concourse writes on stdin and reads on stdout.
//! - [`config`]: the `source` and `params`, validated with messages that name the key.
//! - [`client`]: HTTP to the locker server (ureq, rustls) and the BOSH director lookup.
//! - [`tls`]: which server certificates are trusted (`ca_cert` also pinned as the server's own),
//!   and the words for one that is refused.
//! - [`abort`]: what SIGTERM and SIGINT do to `out` (give back a place in a lock's queue).
//! - [`backoff`]: full-jitter exponential back-off between attempts.
//! - [`duration`]: durations as pipelines write them.
//! - [`build_env`]: the build variables, for log lines and the claim's `owner`.
//! - [`check`], [`get`] and [`put`]: the three commands; `src/bin/{check,in,out}.rs` only read
//!   stdin, argv and the environment, call these and print.

pub mod abort;
pub mod backoff;
pub mod build_env;
pub mod check;
pub mod client;
pub mod config;
pub mod duration;
pub mod get;
pub mod protocol;
pub mod put;
pub mod tls;

use std::io::{Read, Write};
use std::process::ExitCode;

use thiserror::Error;

pub use build_env::BuildEnv;
use client::{ClientError, RequestError};
use config::{ConfigError, LockTarget, Source};
use protocol::ProtocolError;

/// Why a command failed; the binaries print it as `error: ...`.
#[derive(Debug, Error)]
pub enum Error {
    /// stdin is not what Concourse sends.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A mistake in `source` or `params`.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be set up.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A request to the locker server failed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The BOSH director's name could not be read.
    #[error("could not read the lock name from source.bosh_lock: {0}")]
    Director(RequestError),
    /// The server refused to unlock or renew: another key holds the lock.
    #[error("could not {op} '{name}': {message}")]
    Refused {
        /// `unlock` or `renew`.
        op: &'static str,
        /// The lock.
        name: String,
        /// The server's text, naming who holds it.
        message: String,
    },
    /// A renew found no claim of this requestor: its lease ran out or it never locked.
    #[error(
        "could not renew '{name}': {message} (with lock_op: lock; another build may have held it \
         in between)"
    )]
    NotHeld {
        /// The lock.
        name: String,
        /// The server's text.
        message: String,
    },
    /// The server does not know `renew`: it predates leases.
    #[error(
        "could not renew '{name}': {cause} (this server has no leases: upgrade it, or remove the \
         renew step and the ttl)"
    )]
    RenewUnknown {
        /// The lock.
        name: String,
        /// The server's answer.
        cause: RequestError,
    },
    /// A lock held for its build (`hold: build`) where nothing names the build: checked
    /// before anything is sent.
    #[error(
        "{key} is build, but this put has no {missing} (Concourse's build variables), so the \
         server could not ask Concourse when the build finishes: run the put as a step of a \
         Concourse build, or hold until_unlocked"
    )]
    HoldWithoutBuild {
        /// `params.hold` or `source.hold`.
        key: &'static str,
        /// The variables missing: `BUILD_ID`, `ATC_EXTERNAL_URL` or both.
        missing: String,
    },
    /// A lock held for its build that the server would not watch: it refused the claim, does
    /// not know `hold`, or ignored it.
    #[error("could not lock '{name}' held for its build (hold: build): {reason}")]
    HoldNotWatched {
        /// The lock.
        name: String,
        /// Why, with the server's words.
        reason: String,
    },
    /// `params.timeout` passed.
    #[error("timed out after {timeout} trying to {op} '{name}': {reason}")]
    TimedOut {
        /// `lock`, `unlock` or `renew`.
        op: &'static str,
        /// The lock.
        name: String,
        /// The timeout, formatted.
        timeout: String,
        /// Why the last attempt did not succeed.
        reason: String,
    },
    /// A file could not be written.
    #[error("could not write {path}: {cause}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        cause: String,
    },
}

/// The name of the lock `source` stands for; asks the BOSH director for `bosh_lock`.
pub fn resolve_lock_name(source: &Source) -> Result<String, Error> {
    match &source.lock {
        LockTarget::Name(name) => Ok(name.clone()),
        LockTarget::BoshDirector(url) => client::director_name(url).map_err(Error::Director),
    }
}

/// Runs a command the way Concourse runs a resource binary: reads stdin, passes it to
/// `command`, and prints the result as one JSON document on stdout. Any failure is one
/// `error: ...` line on stderr and exit code 1.
pub fn main_with<T, E>(command: impl FnOnce(&str) -> Result<T, E>) -> ExitCode
where
    T: serde::Serialize,
    E: std::fmt::Display,
{
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("error: reading stdin: {e}");
        return ExitCode::FAILURE;
    }
    let output = match command(&input) {
        Ok(output) => output,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let printed = serde_json::to_writer(&mut stdout, &output)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(stdout));
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

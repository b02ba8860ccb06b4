//! Why a client command failed, as one line for a person and an exit code for a script.

use std::process::ExitCode;

use thiserror::Error;

/// Exit code: the request was refused for another reason, the server failed (5xx), or its
/// answer made no sense.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line is wrong (clap's code, also for a file it names).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: another key holds the lock (423), also after waiting in vain.
pub const EXIT_HELD: u8 = 3;
/// Exit code: the requestor holds no claim to renew (409).
pub const EXIT_CONFLICT: u8 = 4;
/// Exit code: the server wants other credentials (401) or more rights (403).
pub const EXIT_AUTH: u8 = 5;
/// Exit code: no answer from the server (connection, DNS, TLS, timeout).
pub const EXIT_UNREACHABLE: u8 = 6;
/// Exit code: `locker run` lost its lease while the command ran.
pub const EXIT_LEASE_LOST: u8 = 7;
/// Exit code: the server does not have this endpoint yet.
pub const EXIT_UNSUPPORTED: u8 = 8;

/// The exit codes, for `locker --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes of the client commands:
  0  done
  1  refused for another reason, or the server failed (5xx)
  2  bad command line (an unknown option, a bad duration, an unreadable --ca-cert)
  3  another key holds the lock (also when --wait ran out)
  4  the requestor holds no claim on the lock (renew)
  5  the server refused the credentials (401) or wants admin rights (403)
  6  the server could not be reached (connection, DNS, TLS, timeout)
  7  run: the lease was lost while the command ran, so the command was stopped
  8  the server does not support this command yet (history, force-release)
  128+N  interrupted by signal N while waiting; run: the command was ended by signal N
";

/// A failed client command. Each message is one line that names the thing and, where it can,
/// the fix.
#[derive(Debug, Error)]
pub enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Held(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    LeaseLost(String),
    #[error("{0}")]
    Unsupported(String),
    /// Interrupted by a signal before anything was held.
    #[error("{message}")]
    Interrupted { signal: i32, message: String },
    /// The server failed (5xx): it may be restarting.
    #[error("{0}")]
    Server(String),
    #[error("{0}")]
    Failed(String),
}

impl Failure {
    /// The exit code that tells a script what happened.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Held(_) => EXIT_HELD,
            Failure::Conflict(_) => EXIT_CONFLICT,
            Failure::Auth(_) => EXIT_AUTH,
            Failure::Unreachable(_) => EXIT_UNREACHABLE,
            Failure::LeaseLost(_) => EXIT_LEASE_LOST,
            Failure::Unsupported(_) => EXIT_UNSUPPORTED,
            Failure::Interrupted { signal, .. } => signal_exit_code(*signal),
            Failure::Server(_) | Failure::Failed(_) => EXIT_FAILED,
        })
    }

    /// True for a failure that may heal by itself (no answer, or the server busy or
    /// restarting): worth another try while a wait lasts.
    pub fn is_transient(&self) -> bool {
        matches!(self, Failure::Unreachable(_) | Failure::Server(_))
    }
}

/// 128 + the signal, as shells report a process a signal ended.
pub fn signal_exit_code(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

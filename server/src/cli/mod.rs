//! The `locker` command-line client: take, release and renew locks, show them, and hold one
//! for as long as a command runs. Blocking I/O throughout: a client does one thing at a time,
//! and the few that wait (a long-poll, a renewal) run on threads of their own.
//!
//! # Layout
//! - [`args`]: the command line, as clap reads it.
//! - `api`: every HTTP call to the server; answers become what a command needs, or a
//!   [`failure::Failure`].
//! - `waiting`: taking a lock, waiting in its queue with one request id across polls.
//! - `run`: `locker run`, the command under a renewed lease.
//! - `events`: stop signals and background answers, on one channel.
//! - `tables`: the status and history tables.
//! - [`failure`]: what went wrong, as one line and an exit code.

mod api;
pub mod args;
mod events;
pub mod failure;
mod run;
mod tables;
mod waiting;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::SystemTime;

use locker_protocol::Lock;
use serde_json::Value;

use api::{Api, Changed, Claim};
use args::{ClaimArgs, ClientCommand, ForceReleaseArgs, HistoryArgs, LockArgs, StatusArgs};
use events::Events;
use failure::Failure;

/// The environment of the client commands, for `locker --help`.
pub const ENVIRONMENT_HELP: &str = "\
Client environment (the commands lock, unlock, renew, status, history, force-release, run):
  LOCKER_URL       the server's base URL, like https://locker.example.com (or --server)
  LOCKER_USERNAME  HTTP basic auth user name; set together with LOCKER_PASSWORD
  LOCKER_PASSWORD  HTTP basic auth password
  LOCKER_CA_CERT   a PEM file of CA certificates to trust, for a private CA (or --ca-cert)
";

/// Runs a client command and tells how it went: output on stdout, one `error: ...` line on
/// stderr when it failed, and the exit code.
pub fn run(command: ClientCommand) -> ExitCode {
    let result = match command {
        ClientCommand::Lock(args) => lock(args),
        ClientCommand::Unlock(args) => change(&args.server, |api| {
            api.unlock(&args.claim.name, &claim(&args.claim, None, BTreeMap::new()))
        }),
        ClientCommand::Renew(args) => change(&args.server, |api| {
            api.renew(
                &args.claim.name,
                &claim(&args.claim, None, BTreeMap::new()),
                args.ttl,
            )
        }),
        ClientCommand::Status(args) => status(args),
        ClientCommand::History(args) => history(args),
        ClientCommand::ForceRelease(args) => force_release(args),
        ClientCommand::Run(args) => match run::run(args) {
            Ok(code) => return code,
            Err(failure) => Err(failure),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit_code()
        }
    }
}

fn claim(
    args: &ClaimArgs,
    ttl: Option<std::time::Duration>,
    owner: BTreeMap<String, String>,
) -> Claim {
    Claim {
        key: args.key.clone(),
        requestor: args.requestor.clone().unwrap_or_else(|| args.key.clone()),
        ttl,
        owner,
    }
}

fn lock(args: LockArgs) -> Result<(), Failure> {
    let api = Api::connect(&args.server)?;
    let claim = claim(&args.claim, args.ttl, args.owner.iter().cloned().collect());
    // Only a wait needs the signals: a stop then gives the place in the queue back.
    let events = match args.wait {
        Some(_) => Some(Events::listening()?),
        None => None,
    };
    let granted = waiting::acquire(&api, &args.claim.name, &claim, args.wait, events.as_ref())?;
    println!("{}", granted.message);
    println!("{}", lease(&granted.lock, &claim.requestor));
    Ok(())
}

/// The token and lease end of `requestor`'s claim: what a script stamps and watches.
fn lease(lock: &Lock, requestor: &str) -> String {
    let token = lock
        .token
        .map_or_else(|| "none".to_string(), |t| t.to_string());
    let ends = lock
        .holders
        .iter()
        .find(|h| h.requestor == requestor)
        .and_then(|h| h.expires_at.clone())
        .unwrap_or_else(|| "never".into());
    format!("token: {token}, lease ends: {ends}")
}

fn change(
    server: &args::ServerArgs,
    send: impl FnOnce(&Api) -> Result<Changed, Failure>,
) -> Result<(), Failure> {
    let api = Api::connect(server)?;
    println!("{}", send(&api)?.message);
    Ok(())
}

fn status(args: StatusArgs) -> Result<(), Failure> {
    let api = Api::connect(&args.server)?;
    let reply = match &args.name {
        Some(name) => api.lock_state(name)?,
        None => api.locks()?,
    };
    if args.json {
        println!("{}", reply.text.trim_end());
        return Ok(());
    }
    let unreadable = |e: serde_json::Error| {
        Failure::Failed(format!(
            "the server at {} answered with JSON this client cannot read: {e}",
            api.url()
        ))
    };
    let now = SystemTime::now();
    match &args.name {
        Some(name) => {
            let lock: Lock = serde_json::from_value(reply.json).map_err(unreadable)?;
            print!(
                "{}",
                tables::locks(&BTreeMap::from([(name.clone(), lock.clone())]), now)
            );
            print!("{}", tables::queue(name, &lock, now));
        }
        None => {
            let locks: BTreeMap<String, Lock> =
                serde_json::from_value(reply.json).map_err(unreadable)?;
            print!("{}", tables::locks(&locks, now));
        }
    }
    Ok(())
}

fn history(args: HistoryArgs) -> Result<(), Failure> {
    let api = Api::connect(&args.server)?;
    let reply = api.history(&args.name, args.limit, args.before)?;
    if args.json {
        println!("{}", reply.text.trim_end());
        return Ok(());
    }
    let Value::Array(entries) = &reply.json else {
        return Err(Failure::Failed(format!(
            "the server at {} answered the history of '{}' with something other than a JSON list",
            api.url(),
            args.name
        )));
    };
    print!("{}", tables::history(&args.name, entries));
    Ok(())
}

fn force_release(args: ForceReleaseArgs) -> Result<(), Failure> {
    if args.reason.trim().is_empty() {
        return Err(Failure::Usage(
            "--reason must say why the lock is released (it goes into the history)".into(),
        ));
    }
    let by = args.by.clone().unwrap_or_else(|| {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "someone".into());
        format!("{user}@{}", hostname())
    });
    change(&args.server, |api| {
        api.force_release(&args.name, &args.reason, &by)
    })
}

/// This machine's name, for owners and the history.
fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname(2) writes at most `len` bytes into the buffer we own.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return "unknown-host".into();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

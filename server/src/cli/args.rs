//! The `locker` command line, as clap reads it: serving (no command) and `healthcheck`, and
//! the client commands. Only what the user typed lives here; the work is in the sibling
//! modules.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Everything `locker` may be asked to do.
#[derive(Debug, Parser)]
#[command(
    name = "locker",
    version,
    about = "A lock server for Concourse pipelines, and its command-line client",
    long_about = "A lock server for Concourse pipelines, and its command-line client.\n\n\
        Without a command, locker runs the server, configured by the environment (below).\n\
        With one, it is a client of a running server.",
    disable_help_subcommand = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands; none runs the server.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exit 0 if the server on $PORT of this host answers GET /healthz (for containers)
    Healthcheck,
    /// Copy a state file's locks into the PostgreSQL database of LOCKER_DATABASE_URL
    #[command(
        long_about = "Copy a state file's locks (this server's, with its journal, or the original             server's JSON) into the PostgreSQL database of LOCKER_DATABASE_URL, in one             transaction. Refuses, changing nothing, if any of the locks exists in the database             already. Stop the server that uses the file first: the file's lock is taken, as a             server would."
    )]
    Import {
        /// The state file to copy from
        #[arg(value_name = "STATE_FILE")]
        file: PathBuf,
    },
    #[command(flatten)]
    Client(Box<ClientCommand>),
}

/// The commands of the client.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Take a lock, waiting in its queue with --wait
    Lock(LockArgs),
    /// Release one claim on a lock
    Unlock(UnlockArgs),
    /// Move a claim's lease end to now + --ttl
    Renew(RenewArgs),
    /// Show the locks (or one lock): who holds them, for which build, until when, who waits
    Status(StatusArgs),
    /// Show what happened to a lock, newest first
    History(HistoryArgs),
    /// Release every claim on a lock, recording why (needs admin rights where the server has them)
    ForceRelease(ForceReleaseArgs),
    /// Hold a lock for exactly as long as a command runs
    #[command(long_about = RUN_ABOUT, after_help = RUN_EXIT_CODES)]
    Run(RunArgs),
}

impl Args {
    /// Reads the command line, or exits as clap does (help, version, a usage error: 2).
    pub fn parse_with_help() -> Args {
        let help = format!(
            "{}\n{}\n{}",
            crate::config::ENVIRONMENT_HELP,
            super::ENVIRONMENT_HELP,
            super::failure::EXIT_CODES_HELP
        );
        let matches = Args::command().after_help(help).get_matches();
        Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Where the server is and how to trust it; credentials come from the environment only, so
/// that a password never shows in a process list.
#[derive(Debug, Clone, ClapArgs)]
pub struct ServerArgs {
    /// The server's base URL, like https://locker.example.com
    #[arg(long = "server", env = "LOCKER_URL", value_name = "URL")]
    pub url: String,
    /// A PEM file of CA certificates to trust instead of the public ones (a private CA)
    #[arg(long, env = "LOCKER_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

/// A claim: which key, for which requestor.
#[derive(Debug, Clone, ClapArgs)]
pub struct ClaimArgs {
    /// The lock's name
    pub name: String,
    /// The key to hold it with; holders of the same key share the lock
    #[arg(long)]
    pub key: String,
    /// Who claims it (the requestor); default: the key
    #[arg(long = "by", value_name = "REQUESTOR")]
    pub requestor: Option<String>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct LockArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub claim: ClaimArgs,
    /// The lease: the claim ends by itself after this long unless renewed (like 90s, 30m, 2h)
    #[arg(long, value_parser = positive_duration, value_name = "DURATION")]
    pub ttl: Option<Duration>,
    /// Wait up to this long in the lock's queue while another key holds it (default: do not wait)
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
    /// Tell who holds the lock: a field of the claim's owner, like build_url=https://...
    /// (repeatable)
    #[arg(long = "owner", value_parser = owner_field, value_name = "FIELD=VALUE")]
    pub owner: Vec<(String, String)>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub claim: ClaimArgs,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct RenewArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub claim: ClaimArgs,
    /// The new lease, from now (like 90s, 30m, 2h)
    #[arg(long, value_parser = positive_duration, value_name = "DURATION")]
    pub ttl: Duration,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Only this lock, with the requests waiting for it
    pub name: Option<String>,
    /// Print the server's JSON as it is, for scripts
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The lock's name
    pub name: String,
    /// At most this many entries
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only entries older than the one with this id (to page back)
    #[arg(long, value_name = "ID")]
    pub before: Option<u64>,
    /// Print the server's JSON as it is, for scripts
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct ForceReleaseArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The lock's name
    pub name: String,
    /// Why, for the history (required)
    #[arg(long)]
    pub reason: String,
    /// Who releases it, for the history; default: USER@HOST of this machine
    #[arg(long = "by", value_name = "WHO")]
    pub by: Option<String>,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct RunArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The lock's name
    pub name: String,
    /// The key to hold it with; holders of the same key share the lock
    #[arg(long)]
    pub key: String,
    /// Who claims it (the requestor); default: locker-run@HOST:PID, one of its own per run
    #[arg(long = "by", value_name = "REQUESTOR")]
    pub requestor: Option<String>,
    /// The lease, renewed every third of it while the command runs; if the client dies, the
    /// lock is free again at most this long after (like 60s, 5m)
    #[arg(long, value_parser = positive_duration, value_name = "DURATION")]
    pub ttl: Duration,
    /// Wait up to this long in the lock's queue while another key holds it (default: do not wait)
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
    /// How long the command may take to stop after SIGTERM, when the lease is lost, before it
    /// gets SIGKILL
    #[arg(long, value_parser = duration, value_name = "DURATION", default_value = "10s")]
    pub grace: Duration,
    /// A field of the claim's owner, like build_url=https://... (repeatable; host and note
    /// are set for you)
    #[arg(long = "owner", value_parser = owner_field, value_name = "FIELD=VALUE")]
    pub owner: Vec<(String, String)>,
    /// The command and its arguments, after --
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

impl RunArgs {
    /// The owner fields given with --owner, by name (the last of a name wins).
    pub fn owner_fields(&self) -> BTreeMap<String, String> {
        self.owner.iter().cloned().collect()
    }
}

const RUN_ABOUT: &str = "\
Hold a lock for exactly as long as a command runs.

Takes the lock (waiting in its queue with --wait), runs COMMAND, renews the lease every third of
--ttl while it runs, and releases the lock when it ends. SIGINT, SIGTERM and SIGHUP are passed on
to the command (a Ctrl-C at a terminal reaches it directly), and the lock is released once it has
stopped. If the lease is lost (the server says the claim is gone, or renewals fail until the
lease has ended), the command is stopped with SIGTERM (SIGKILL after --grace) and locker exits 7:
whatever the command was protecting is no longer protected.";

const RUN_EXIT_CODES: &str = "\
Exit status: the command's; 128+N if a signal N ended it; 126 if it could not be started, 127 if
it was not found; 7 if the lease was lost while it ran; before the command starts, the codes of
`locker --help`.";

/// A duration as the server writes them (`90s`, `30m`, `1h 30m`), or a number of seconds.
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration like 90s, 30m, 2h or 1h 30m"))
}

/// A duration that is more than zero.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

/// `FIELD=VALUE`.
fn owner_field(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((field, value)) if !field.is_empty() => Ok((field.into(), value.into())),
        _ => Err("write an owner field as FIELD=VALUE, like build_url=https://...".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn durations_are_humantime_or_seconds() {
        assert_eq!(duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("1500ms").unwrap(), Duration::from_millis(1500));
        assert!(duration("soon").unwrap_err().contains("like 90s"));
        assert!(positive_duration("0s").is_err());
    }

    #[test]
    fn run_takes_everything_after_the_double_dash_as_the_command() {
        let args = Args::try_parse_from([
            "locker", "run", "env", "--key", "k", "--ttl", "1m", "--server", "http://x", "--",
            "make", "--key", "deploy",
        ])
        .unwrap();
        let Some(Command::Client(command)) = args.command else {
            panic!("not a client command")
        };
        let ClientCommand::Run(run) = *command else {
            panic!("not run")
        };
        assert_eq!(run.key, "k");
        assert_eq!(run.command, ["make", "--key", "deploy"]);
    }
}

//! Configuration from the environment, with the original server's variable names.

use std::path::PathBuf;
use std::time::Duration;

/// The state file used when `LOCKER_CONFIG` is not set.
pub const DEFAULT_STATE_FILE: &str = "locker-data.yml";
/// The port used when `PORT` is not set.
pub const DEFAULT_PORT: u16 = 3000;
/// The longest ttl when `LOCKER_MAX_TTL` is not set.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most `LOCKER_MAX_TTL` may be (100 years): a deadline stays a time that RFC 3339 can
/// write.
pub const MAX_MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The longest wait for a queued lock when `LOCKER_MAX_WAIT` is not set.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);
/// The most `LOCKER_MAX_WAIT` may be: an answer that takes longer than an hour is cut by
/// something between client and server anyway, and a poll is cheap to repeat.
pub const MAX_MAX_WAIT: Duration = Duration::from_secs(3600);
/// How long a queued place outlives its poll when `LOCKER_QUEUE_GRACE` is not set.
pub const DEFAULT_QUEUE_GRACE: Duration = Duration::from_secs(30);

/// The server's environment, for `locker --help`.
pub const ENVIRONMENT_HELP: &str = "\
Server environment (locker without a command):
  LOCKER_CONFIG  path of the state file (default: locker-data.yml in the working directory)
  LOCKER_DATABASE_URL  a postgres:// URL: keep the locks in PostgreSQL instead of a state
                 file, so several servers can share them (sslmode=require and
                 sslrootcert=PATH are honoured); not together with LOCKER_CONFIG
  PORT           port to listen on, on all interfaces (default: 3000; 0 picks a free port)
  AUTH_USER      HTTP basic auth user name; set together with AUTH_PASS
  AUTH_PASS      HTTP basic auth password; set together with AUTH_USER
  ADMIN_USER     basic auth user name that force-release needs; set together with
                 ADMIN_PASS (default: unset, the AUTH_USER credentials allow it)
  ADMIN_PASS     its password
  SSL_CERT       path of a PEM certificate chain; with SSL_KEY the server speaks HTTPS only
  SSL_KEY        path of the PEM private key for SSL_CERT
  LOCKER_DEFAULT_TTL  how long a claim lives when its lock request gives no ttl, like 12h
                 (default: unset, such claims never expire, as with the original server)
  LOCKER_MAX_TTL the longest ttl a claim may ask for (default: 7d)
  CONCOURSE_URL  the Concourse web node's external URL: claims with hold: build are
                 released once Concourse says their build has finished (default: unset)
  CONCOURSE_USERNAME, CONCOURSE_PASSWORD  a local Concourse user to log in as, or
  CONCOURSE_TOKEN    a bearer token; read-only access to the builds' teams is enough
  CONCOURSE_CA_CERT  PEM CA certificates to trust for CONCOURSE_URL
  CONCOURSE_POLL     how often each build is asked about (default: 30s)
  LOCKER_HISTORY_MAX how many history entries are kept, oldest dropped first
                 (default: 100000)
  LOCKER_MAX_WAIT    the longest a lock request may wait in a queue (?wait=); a longer
                 wait is cut to it (default: 60s, at most 1h)
  LOCKER_QUEUE_GRACE how long a waiter with an Idempotency-Key keeps its place (and a
                 grant made to it) after its request ends (default: 30s)
  LOCKER_METRICS_PUBLIC  true: GET /metrics needs no credentials, for a Prometheus
                 that scrapes without them (default: false, protected like the API)
  RUST_LOG       log filter (default: info)

An empty variable counts as unset.
";

/// Basic auth credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub pass: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// Where the server asks Concourse whether the builds that hold claims still run.
#[derive(Clone, PartialEq, Eq)]
pub struct Concourse {
    /// The web node's external URL, normalised: no trailing slash.
    pub url: String,
    pub auth: ConcourseAuth,
    /// A PEM file of the CA certificates to trust for it (else the system's).
    pub ca_cert: Option<PathBuf>,
    /// How often each watched build is asked about.
    pub poll: Duration,
}

impl std::fmt::Debug for Concourse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Concourse")
            .field("url", &self.url)
            .field("ca_cert", &self.ca_cert)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

/// How the server logs in to Concourse.
#[derive(Clone, PartialEq, Eq)]
pub enum ConcourseAuth {
    /// A local user: a password grant on `/sky/issuer/token`, as `fly login` does.
    Password { user: String, pass: String },
    /// A bearer token given as is.
    Token(String),
}

/// How often a watched build is asked about when `CONCOURSE_POLL` is not set.
pub const DEFAULT_CONCOURSE_POLL: Duration = Duration::from_secs(30);

/// The form of a URL the server compares: scheme and host lower-cased, no trailing slash, no
/// default port. `None` when it is not an http(s) URL.
pub fn normalise_url(url: &str) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    if let Some(host) = authority.strip_suffix(default_port) {
        authority = host.to_owned();
    }
    Some(format!("{scheme}://{authority}{path}"))
}

/// Paths of the TLS certificate chain and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A PostgreSQL connection URL; its `Debug` hides it, since it may hold a password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(pub String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(..)")
    }
}

/// Everything the server needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub state_file: PathBuf,
    /// Where the locks live when not in the state file: PostgreSQL, shared by several servers.
    pub database: Option<DatabaseUrl>,
    /// True when `LOCKER_CONFIG` was not set and the default is used.
    pub state_file_is_default: bool,
    pub port: u16,
    pub auth: Option<Credentials>,
    /// The credentials operators' actions (force-release) need; `None`: `auth`'s allow them.
    pub admin: Option<Credentials>,
    pub tls: Option<TlsFiles>,
    /// How long a claim lives when its lock request gives no ttl; `None`: for ever.
    pub default_ttl: Option<Duration>,
    /// The longest ttl a claim may ask for.
    pub max_ttl: Duration,
    /// The longest a lock request waits in a queue.
    pub max_wait: Duration,
    /// How long a waiter's place (and a grant made to it) outlives its request.
    pub queue_grace: Duration,
    /// How many history entries are kept.
    pub history_max: usize,
    /// True when `/metrics` is served without credentials.
    pub metrics_public: bool,
    /// Where to ask whether builds still run; `None`: claims cannot be held for a build.
    pub concourse: Option<Concourse>,
}

impl Config {
    /// Reads the configuration; `var` looks up one environment variable.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let database = var("LOCKER_DATABASE_URL").map(DatabaseUrl);
        if database.is_some() && var("LOCKER_CONFIG").is_some() {
            return Err("LOCKER_CONFIG and LOCKER_DATABASE_URL are both set: the locks live either in a state file or in PostgreSQL. Unset one (to move a state file's locks into the database, run `locker import STATE_FILE` with LOCKER_DATABASE_URL set)".into());
        }
        let (state_file, state_file_is_default) = match var("LOCKER_CONFIG") {
            Some(path) => (PathBuf::from(path), false),
            None => (PathBuf::from(DEFAULT_STATE_FILE), true),
        };
        let port = match var("PORT") {
            None => DEFAULT_PORT,
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|_| format!("PORT={p:?} is not a port number (expected 0 to 65535)"))?,
        };
        let auth = pair(var("AUTH_USER"), var("AUTH_PASS"), "AUTH_USER", "AUTH_PASS")?
            .map(|(user, pass)| Credentials { user, pass });
        let admin = pair(
            var("ADMIN_USER"),
            var("ADMIN_PASS"),
            "ADMIN_USER",
            "ADMIN_PASS",
        )?
        .map(|(user, pass)| Credentials { user, pass });
        let tls =
            pair(var("SSL_CERT"), var("SSL_KEY"), "SSL_CERT", "SSL_KEY")?.map(|(cert, key)| {
                TlsFiles {
                    cert: cert.into(),
                    key: key.into(),
                }
            });
        let default_ttl = var("LOCKER_DEFAULT_TTL")
            .map(|v| duration("LOCKER_DEFAULT_TTL", &v))
            .transpose()?;
        let max_ttl = var("LOCKER_MAX_TTL")
            .map(|v| duration("LOCKER_MAX_TTL", &v))
            .transpose()?
            .unwrap_or(DEFAULT_MAX_TTL);
        if max_ttl > MAX_MAX_TTL {
            return Err(format!(
                "LOCKER_MAX_TTL ({}) is more than the 100 years a lease may last",
                humantime::format_duration(max_ttl)
            ));
        }
        if let Some(default) = default_ttl.filter(|d| *d > max_ttl) {
            return Err(format!(
                "LOCKER_DEFAULT_TTL ({}) is more than LOCKER_MAX_TTL ({}); lower the one or raise the other",
                humantime::format_duration(default),
                humantime::format_duration(max_ttl)
            ));
        }
        let max_wait = var("LOCKER_MAX_WAIT")
            .map(|v| duration("LOCKER_MAX_WAIT", &v))
            .transpose()?
            .unwrap_or(DEFAULT_MAX_WAIT);
        if max_wait > MAX_MAX_WAIT {
            return Err(format!(
                "LOCKER_MAX_WAIT ({}) is more than an hour; clients poll again, so a shorter wait loses nothing",
                humantime::format_duration(max_wait)
            ));
        }
        let queue_grace = var("LOCKER_QUEUE_GRACE")
            .map(|v| duration("LOCKER_QUEUE_GRACE", &v))
            .transpose()?
            .unwrap_or(DEFAULT_QUEUE_GRACE);
        let history_max = match var("LOCKER_HISTORY_MAX") {
            None => crate::domain::DEFAULT_HISTORY_MAX,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=10_000_000).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "LOCKER_HISTORY_MAX={v:?} is not a number of entries from 1 to 10000000"
                    ));
                }
            },
        };
        let metrics_public = match var("LOCKER_METRICS_PUBLIC") {
            None => false,
            Some(v) => flag("LOCKER_METRICS_PUBLIC", &v)?,
        };
        let concourse = concourse(&var)?;
        Ok(Config {
            state_file,
            database,
            state_file_is_default,
            port,
            auth,
            admin,
            tls,
            default_ttl,
            max_ttl,
            max_wait,
            queue_grace,
            history_max,
            metrics_public,
            concourse,
        })
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, String> {
        Config::from_vars(|name| std::env::var(name).ok())
    }
}

/// A duration variable: more than zero, like `90s`, `30m`, `12h` or `7d`.
fn duration(name: &str, value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{name}={value:?} must be more than zero")),
        Err(e) => Err(format!(
            "{name}={value:?} is not a duration ({e}); write it like 90s, 30m, 12h or 7d"
        )),
    }
}

/// A yes-or-no variable: `true` or `false`.
fn flag(name: &str, value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{name}={value:?} is not true or false")),
    }
}

/// The `CONCOURSE_*` variables, if `CONCOURSE_URL` is set.
fn concourse(var: &impl Fn(&str) -> Option<String>) -> Result<Option<Concourse>, String> {
    let Some(url) = var("CONCOURSE_URL") else {
        for name in [
            "CONCOURSE_USERNAME",
            "CONCOURSE_PASSWORD",
            "CONCOURSE_TOKEN",
        ] {
            if var(name).is_some() {
                return Err(format!("{name} is set but CONCOURSE_URL is not; set both"));
            }
        }
        return Ok(None);
    };
    let normalised = normalise_url(&url).ok_or_else(|| {
        format!("CONCOURSE_URL={url:?} is not an http(s) URL like https://ci.example.com")
    })?;
    let password = pair(
        var("CONCOURSE_USERNAME"),
        var("CONCOURSE_PASSWORD"),
        "CONCOURSE_USERNAME",
        "CONCOURSE_PASSWORD",
    )?;
    let auth = match (password, var("CONCOURSE_TOKEN")) {
        (Some((user, pass)), None) => ConcourseAuth::Password { user, pass },
        (None, Some(token)) => ConcourseAuth::Token(token),
        (Some(_), Some(_)) => {
            return Err(
                "CONCOURSE_TOKEN and CONCOURSE_USERNAME/CONCOURSE_PASSWORD are both set; set one"
                    .into(),
            );
        }
        (None, None) => {
            return Err("CONCOURSE_URL needs credentials: CONCOURSE_USERNAME and CONCOURSE_PASSWORD (a local user), or CONCOURSE_TOKEN".into());
        }
    };
    let poll = var("CONCOURSE_POLL")
        .map(|v| duration("CONCOURSE_POLL", &v))
        .transpose()?
        .unwrap_or(DEFAULT_CONCOURSE_POLL);
    Ok(Some(Concourse {
        url: normalised,
        auth,
        ca_cert: var("CONCOURSE_CA_CERT").map(PathBuf::from),
        poll,
    }))
}

/// Both or neither of two variables.
fn pair(
    a: Option<String>,
    b: Option<String>,
    a_name: &str,
    b_name: &str,
) -> Result<Option<(String, String)>, String> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(format!(
            "{a_name} is set but {b_name} is not; set both or neither"
        )),
        (None, Some(_)) => Err(format!(
            "{b_name} is set but {a_name} is not; set both or neither"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = config(&[]).unwrap();
        assert_eq!(c.state_file, PathBuf::from("locker-data.yml"));
        assert!(c.state_file_is_default);
        assert_eq!(c.port, 3000);
        assert!(c.auth.is_none() && c.tls.is_none());
    }

    #[test]
    fn a_database_url_replaces_the_state_file_but_not_together_with_it() {
        let c = config(&[("LOCKER_DATABASE_URL", "postgres://u:secret@db/locks")]).unwrap();
        assert_eq!(
            c.database.as_ref().map(|d| d.0.as_str()),
            Some("postgres://u:secret@db/locks")
        );
        assert!(
            !format!("{c:?}").contains("secret"),
            "the password never shows in logs"
        );
        let err = config(&[
            ("LOCKER_DATABASE_URL", "postgres://db/locks"),
            ("LOCKER_CONFIG", "/data/locks.yml"),
        ])
        .unwrap_err();
        assert!(
            err.contains("LOCKER_CONFIG and LOCKER_DATABASE_URL are both set")
                && err.contains("locker import"),
            "{err}"
        );
    }

    #[test]
    fn port_out_of_range_is_refused() {
        for bad in ["70000", "-1", "http", ""] {
            let result = config(&[("PORT", bad)]);
            if bad.is_empty() {
                assert_eq!(result.unwrap().port, 3000, "empty counts as unset");
            } else {
                assert!(result.unwrap_err().contains("not a port number"), "{bad}");
            }
        }
    }

    #[test]
    fn half_pairs_name_the_missing_variable() {
        let err = config(&[("AUTH_USER", "u")]).unwrap_err();
        assert!(err.contains("AUTH_PASS is not"), "{err}");
        let err = config(&[("AUTH_PASS", "p")]).unwrap_err();
        assert!(err.contains("AUTH_USER is not"), "{err}");
        let err = config(&[("SSL_KEY", "k.pem")]).unwrap_err();
        assert!(err.contains("SSL_CERT is not"), "{err}");
    }

    #[test]
    fn lease_durations_are_read_and_checked() {
        let c = config(&[("LOCKER_DEFAULT_TTL", "12h"), ("LOCKER_MAX_TTL", "2d")]).unwrap();
        assert_eq!(c.default_ttl, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(c.max_ttl, Duration::from_secs(2 * 24 * 3600));
        assert_eq!(config(&[]).unwrap().max_ttl, DEFAULT_MAX_TTL);
        assert_eq!(config(&[]).unwrap().default_ttl, None);
        let c = config(&[("LOCKER_MAX_WAIT", "5m"), ("LOCKER_QUEUE_GRACE", "10s")]).unwrap();
        assert_eq!(c.max_wait, Duration::from_secs(300));
        assert_eq!(c.queue_grace, Duration::from_secs(10));
        assert_eq!(config(&[]).unwrap().max_wait, DEFAULT_MAX_WAIT);
        assert_eq!(config(&[]).unwrap().queue_grace, DEFAULT_QUEUE_GRACE);
        let cases = [
            (("LOCKER_DEFAULT_TTL", "soon"), "not a duration"),
            (("LOCKER_MAX_TTL", "0s"), "more than zero"),
            (("LOCKER_DEFAULT_TTL", "8d"), "more than LOCKER_MAX_TTL"),
            (("LOCKER_MAX_TTL", "10000years"), "more than the 100 years"),
            (("LOCKER_MAX_WAIT", "2h"), "more than an hour"),
            (("LOCKER_QUEUE_GRACE", "0s"), "more than zero"),
            (("LOCKER_MAX_WAIT", "a while"), "not a duration"),
            (("LOCKER_HISTORY_MAX", "0"), "from 1 to"),
            (("LOCKER_HISTORY_MAX", "lots"), "not a number"),
        ];
        for ((name, value), expected) in cases {
            let err = config(&[(name, value)]).unwrap_err();
            assert!(err.contains(expected), "{name}={value}: {err}");
        }
    }

    #[test]
    fn metrics_are_protected_unless_said_public() {
        assert!(!config(&[]).unwrap().metrics_public, "protected by default");
        for (value, public) in [("true", true), ("false", false), (" TRUE ", true)] {
            let c = config(&[("LOCKER_METRICS_PUBLIC", value)]).unwrap();
            assert_eq!(c.metrics_public, public, "{value:?}");
        }
        for bad in ["yes", "1", "on", "public"] {
            let err = config(&[("LOCKER_METRICS_PUBLIC", bad)]).unwrap_err();
            assert_eq!(
                err,
                format!("LOCKER_METRICS_PUBLIC={bad:?} is not true or false"),
                "a value that is neither says so"
            );
        }
    }

    #[test]
    fn concourse_settings_are_read_and_checked() {
        let c = config(&[
            ("CONCOURSE_URL", "HTTPS://CI.Example.com:443/"),
            ("CONCOURSE_TOKEN", "t"),
            ("CONCOURSE_POLL", "5s"),
        ])
        .unwrap();
        let concourse = c.concourse.unwrap();
        assert_eq!(concourse.url, "https://ci.example.com");
        assert_eq!(concourse.poll, Duration::from_secs(5));
        assert!(matches!(concourse.auth, ConcourseAuth::Token(_)));
        let c = config(&[
            ("CONCOURSE_URL", "http://ci:8080"),
            ("CONCOURSE_USERNAME", "u"),
            ("CONCOURSE_PASSWORD", "p"),
        ])
        .unwrap();
        assert_eq!(c.concourse.unwrap().poll, DEFAULT_CONCOURSE_POLL);
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &[
                    ("CONCOURSE_URL", "ci.example.com"),
                    ("CONCOURSE_TOKEN", "t"),
                ],
                "not an http(s) URL",
            ),
            (&[("CONCOURSE_URL", "https://ci")], "needs credentials"),
            (&[("CONCOURSE_TOKEN", "t")], "CONCOURSE_URL is not"),
            (
                &[
                    ("CONCOURSE_URL", "https://ci"),
                    ("CONCOURSE_TOKEN", "t"),
                    ("CONCOURSE_USERNAME", "u"),
                    ("CONCOURSE_PASSWORD", "p"),
                ],
                "both set",
            ),
            (
                &[("CONCOURSE_URL", "https://ci"), ("CONCOURSE_USERNAME", "u")],
                "CONCOURSE_PASSWORD is not",
            ),
        ];
        for (vars, expected) in cases {
            let err = config(vars).unwrap_err();
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
    }

    #[test]
    fn urls_are_compared_in_a_normal_form() {
        assert_eq!(
            normalise_url("https://CI.example.com/"),
            Some("https://ci.example.com".into())
        );
        assert_eq!(normalise_url("http://ci:80"), Some("http://ci".into()));
        assert_eq!(
            normalise_url("http://ci:8080/sub/"),
            Some("http://ci:8080/sub".into())
        );
        assert_eq!(normalise_url("ftp://ci"), None);
        assert_eq!(normalise_url("https://user@ci"), None);
    }

    #[test]
    fn credentials_are_not_printed_by_debug() {
        let c = config(&[
            ("AUTH_USER", "ci-user"),
            ("AUTH_PASS", "s3cret"),
            ("ADMIN_USER", "ops-user"),
            ("ADMIN_PASS", "0ps-s3cret"),
            ("CONCOURSE_URL", "https://ci"),
            ("CONCOURSE_USERNAME", "cc-user"),
            ("CONCOURSE_PASSWORD", "cc-s3cret"),
        ])
        .unwrap();
        let printed = format!("{c:?}");
        for secret in [
            "ci-user",
            "s3cret",
            "ops-user",
            "0ps-s3cret",
            "cc-user",
            "cc-s3cret",
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }
}

//! Configuration from the environment, with the original server's variable names.

use std::path::PathBuf;

/// The state file used when `LOCKER_CONFIG` is not set.
pub const DEFAULT_STATE_FILE: &str = "locker-data.yml";
/// The port used when `PORT` is not set.
pub const DEFAULT_PORT: u16 = 3000;

/// The text `locker --help` prints.
pub const HELP: &str = "\
locker: a lock server for Concourse pipelines

Usage: locker              run the server, configured by the environment
       locker healthcheck  exit 0 if the server on $PORT answers GET /healthz
       locker --help | --version

Environment:
  LOCKER_CONFIG  path of the state file (default: locker-data.yml in the working directory)
  PORT           port to listen on, on all interfaces (default: 3000; 0 picks a free port)
  AUTH_USER      HTTP basic auth user name; set together with AUTH_PASS
  AUTH_PASS      HTTP basic auth password; set together with AUTH_USER
  SSL_CERT       path of a PEM certificate chain; with SSL_KEY the server speaks HTTPS only
  SSL_KEY        path of the PEM private key for SSL_CERT
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

/// Paths of the TLS certificate chain and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the server needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub state_file: PathBuf,
    /// True when `LOCKER_CONFIG` was not set and the default is used.
    pub state_file_is_default: bool,
    pub port: u16,
    pub auth: Option<Credentials>,
    pub tls: Option<TlsFiles>,
}

impl Config {
    /// Reads the configuration; `var` looks up one environment variable.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
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
        let tls =
            pair(var("SSL_CERT"), var("SSL_KEY"), "SSL_CERT", "SSL_KEY")?.map(|(cert, key)| {
                TlsFiles {
                    cert: cert.into(),
                    key: key.into(),
                }
            });
        Ok(Config {
            state_file,
            state_file_is_default,
            port,
            auth,
            tls,
        })
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, String> {
        Config::from_vars(|name| std::env::var(name).ok())
    }
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
    fn credentials_are_not_printed_by_debug() {
        let c = config(&[("AUTH_USER", "admin"), ("AUTH_PASS", "s3cret")]).unwrap();
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("s3cret") && !printed.contains("admin"),
            "{printed}"
        );
    }
}

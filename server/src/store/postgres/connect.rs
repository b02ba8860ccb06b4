//! How `LOCKER_DATABASE_URL` becomes a connection: the URL parsed (with the libpq parameters
//! tokio-postgres does not know taken out), TLS through rustls, and a pool.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long connecting to the database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the pool: the writer needs one at a time, health checks and the import one
/// more; the rest absorb a connection being replaced.
const POOL_SIZE: usize = 4;

/// The URL parameters handed on to tokio-postgres as they are.
const PASSED_ON: &[&str] = &[
    "user",
    "password",
    "dbname",
    "host",
    "hostaddr",
    "port",
    "options",
    "application_name",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "target_session_attrs",
    "channel_binding",
];

/// A parsed `LOCKER_DATABASE_URL`: what to connect to, and with which TLS.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

impl Target {
    /// Parses a `postgres://` URL. `sslmode` may be `disable`, `prefer` (the default),
    /// `require`, `verify-ca` or `verify-full`; a certificate is always verified when TLS is
    /// used, against `sslrootcert` (a PEM file) if given, else the system's roots.
    pub fn parse(url: &str) -> Result<Target, String> {
        let invalid = |why: String| {
            format!(
                "LOCKER_DATABASE_URL is not a usable PostgreSQL URL: {why} (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=require)"
            )
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid("it does not start with postgres://".into()));
        }
        // tokio-postgres refuses parameters it does not know; libpq's TLS ones are ours.
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let mut root_cert = None;
        let mut mode = SslMode::Prefer;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| invalid(format!("{name} is not UTF-8")))?
                .into_owned();
            match name {
                "sslrootcert" => root_cert = Some(value),
                "sslmode" => {
                    mode = match value.as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" | "allow" => SslMode::Prefer,
                        "require" | "verify-ca" | "verify-full" => SslMode::Require,
                        other => {
                            return Err(invalid(format!(
                                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                            )));
                        }
                    }
                }
                known if PASSED_ON.contains(&known) => kept.push(pair),
                unknown => {
                    return Err(invalid(format!(
                        "unknown parameter {unknown} (known: sslmode, sslrootcert, {})",
                        PASSED_ON.join(", ")
                    )));
                }
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: tokio_postgres::Config =
            rebuilt.parse().map_err(|e| invalid(format!("{e}")))?;
        config.ssl_mode(mode);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A 200 means committed: never acknowledge a commit the database could still lose.
        if config.get_options().is_none() {
            config.options("-c synchronous_commit=on");
        }
        if config.get_application_name().is_none() {
            config.application_name("locker");
        }
        let roots = match &root_cert {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in crate::pem::ca_certificates(std::path::Path::new(path), "sslrootcert")
                    .map_err(invalid)?
                {
                    roots
                        .add(rustls::pki_types::CertificateDer::from(cert.der().to_vec()))
                        .map_err(|e| invalid(format!("sslrootcert {path}: {e}")))?;
                }
                roots
            }
            None if mode == SslMode::Disable => rustls::RootCertStore::empty(),
            None => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                roots
            }
        };
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Target {
            config,
            tls: MakeRustlsConnect::new(tls),
        })
    }

    /// A pool of connections to the target.
    pub fn pool(&self) -> Result<Pool, String> {
        let manager = Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("could not make a connection pool: {e}"))
    }

    /// Where the database is, without credentials, for logs.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgres://{}:{port}/{}",
            hosts.join(","),
            self.config.get_dbname().unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_parameters_are_taken_out_and_the_rest_is_kept() {
        let target = Target::parse(
            "postgres://u:p@db.example:6543/locks?sslmode=require&application_name=x",
        )
        .unwrap();
        assert_eq!(target.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(target.config.get_application_name(), Some("x"));
        assert_eq!(target.config.get_dbname(), Some("locks"));
        assert_eq!(target.describe(), "postgres://db.example:6543/locks");
        assert_eq!(target.config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let given = Target::parse("postgres://h/d?connect_timeout=30").unwrap();
        assert_eq!(
            given.config.get_connect_timeout(),
            Some(&Duration::from_secs(30)),
            "a connect_timeout in the URL is kept"
        );
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (url, expected) in [
            ("mysql://x/y", "does not start with postgres://"),
            ("postgres://h/d?sslmode=sometimes", "sslmode=sometimes"),
            (
                "postgres://h/d?sslrootcert=/nonexistent/ca.pem",
                "sslrootcert",
            ),
            ("postgres://h/d?frobnicate=1", "frobnicate"),
        ] {
            let err = Target::parse(url).err().unwrap_or_default();
            assert!(
                err.contains(expected) && err.contains("LOCKER_DATABASE_URL"),
                "{url}: {err}"
            );
        }
    }
}

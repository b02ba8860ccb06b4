//! Start-up and shutdown: open the state file, check TLS, bind, serve until told to stop.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use poem::listener::{Acceptor, AcceptorExt, Listener, TcpAcceptor, TcpListener};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, TlsFiles};
use crate::connection::{self, Limited};
use crate::http;
use crate::state_file::{Format, OpenError, StateFile};
use crate::store::LockStore;
use crate::tls::TlsAcceptor;

/// How long in-flight requests may take to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may sit idle before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    State(#[from] OpenError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("could not listen on port {port}: {source}")]
    Bind { port: u16, source: io::Error },
    #[error("the server stopped: {0}")]
    Serve(io::Error),
}

/// Listens on every address of `port`, IPv6 and IPv4 (one dual-stack socket, as the original
/// Go server did), or on IPv4 alone where the host has no IPv6.
async fn bind(port: u16) -> io::Result<(TcpAcceptor, SocketAddr)> {
    let dual = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match TcpListener::bind(dual).into_acceptor().await {
        Ok(acceptor) => Ok((acceptor, dual)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
            ) =>
        {
            Err(e)
        }
        Err(e) => {
            tracing::debug!(error = %e, "no IPv6 here; listening on IPv4 only");
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            Ok((TcpListener::bind(v4).into_acceptor().await?, v4))
        }
    }
}

/// Runs the server until `shutdown` completes, then drains in-flight requests and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (state_file, table, format) = StateFile::open(&config.state_file)?;
    let lock_count = table.locks.values().filter(|l| !l.is_free()).count();
    let known = table.locks.len();
    let tls = config.tls.as_ref().map(load_tls).transpose()?;

    let (tcp, addr) = bind(config.port)
        .await
        .map_err(|source| ServerError::Bind {
            port: config.port,
            source,
        })?;
    let (acceptor, scheme) = match tls {
        Some(tls_config) => (TlsAcceptor::new(tcp, tls_config).boxed(), "https"),
        None => (tcp.boxed(), "http"),
    };
    let local = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .unwrap_or(addr);

    let mut notes = Vec::new();
    if config.state_file_is_default {
        notes.push("the default; set LOCKER_CONFIG to choose another");
    }
    match format {
        Format::Created => notes.push("created empty"),
        Format::Legacy => notes.push("the original server's format, rewritten on the first change"),
        Format::Current => {}
    }
    let state_note = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    };
    tracing::info!(
        "locker {} listening on {scheme}://{local}, state file {}{state_note}, {known} locks known ({lock_count} held), auth {}, TLS {}",
        env!("CARGO_PKG_VERSION"),
        state_file.path().display(),
        if config.auth.is_some() { "on" } else { "off" },
        if config.tls.is_some() { "on" } else { "off" },
    );

    let (store, writer) = LockStore::start(table, state_file).map_err(ServerError::Serve)?;
    let app = http::app(store, config.auth.clone());
    let acceptor = Limited::new(
        acceptor,
        connection::HEAD_TIMEOUT,
        connection::MAX_CONNECTIONS,
    );
    let served = poem::Server::new_with_acceptor(acceptor)
        .idle_timeout(IDLE_TIMEOUT)
        .run_with_graceful_shutdown(app, shutdown, Some(SHUTDOWN_GRACE))
        .await;
    // The app held the last store handle: the writer answers what is queued, then stops.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::info!("locker stopped");
    served.map_err(ServerError::Serve)
}

/// Reads the certificate chain and key into a TLS configuration, checking that they match.
fn load_tls(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let read = |path: &std::path::Path, var: &str| {
        std::fs::read(path)
            .map_err(|e| ServerError::Tls(format!("cannot read {var}={}: {e}", path.display())))
    };
    let cert_pem = read(&files.cert, "SSL_CERT")?;
    let key_pem = read(&files.key, "SSL_KEY")?;
    let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ServerError::Tls(format!(
                "SSL_CERT={} is not a PEM certificate chain: {e}",
                files.cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "SSL_CERT={} holds no PEM certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        ServerError::Tls(format!(
            "SSL_KEY={} is not a PEM private key: {e}",
            files.key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| {
            ServerError::Tls(format!(
                "SSL_CERT={} and SSL_KEY={} do not make a usable certificate: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    tls_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls_config))
}

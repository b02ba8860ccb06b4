//! The application: built from a configuration (state file opened, TLS checked, port bound)
//! before it serves, so a caller learns its address first; then served until told to stop.
//!
//! Tests build it in-process on port 0 with a [`ManualClock`](crate::clock::ManualClock);
//! `main` builds it from the environment and runs it until SIGTERM or SIGINT.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use poem::listener::{AcceptorExt, BoxAcceptor};

use crate::clock::{Clock, SystemClock};
use crate::concourse::Watch;
use crate::concourse::client::ConcourseClient;
use crate::config::Concourse;
use crate::config::Config;
use crate::http;
use crate::metrics::Metrics;
use crate::net::connection::{self, Limited};
use crate::net::peers::{PeerAcceptor, Peers};
use crate::net::tls::{TlsAcceptor, load_tls};
use crate::store::LockStore;
use crate::store::file::{FileBackend, Format, OpenError};
use crate::store::postgres::PgBackend;

/// How long in-flight requests may take to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may sit idle before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The most requests one HTTP/2 connection may have open at once (hyper's default; poem would
/// otherwise lift the limit), so that the connection cap also bounds the waiting requests.
const MAX_STREAMS: u32 = 200;

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
    #[error("{0}")]
    Concourse(String),
    #[error("{0}")]
    Database(String),
}

/// The backend the configuration chose, opened.
enum Opened {
    File(FileBackend, Format),
    Postgres(PgBackend),
}

/// Builds an [`Application`], with the seams tests may change.
pub struct Builder {
    config: Config,
    clock: Arc<dyn Clock>,
    head_timeout: Duration,
}

impl Builder {
    /// The clock the server reads (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Builder {
        self.clock = clock;
        self
    }

    /// How long a request head may take (default: [`connection::HEAD_TIMEOUT`]).
    pub fn head_timeout(mut self, timeout: Duration) -> Builder {
        self.head_timeout = timeout;
        self
    }

    /// Opens the state file, checks TLS and binds the port; nothing is served yet.
    pub async fn build(self) -> Result<Application, ServerError> {
        let config = self.config;
        let backend = match &config.database {
            Some(url) => Opened::Postgres(
                PgBackend::open(&url.0, config.history_max, self.clock.clone())
                    .await
                    .map_err(ServerError::Database)?,
            ),
            None => {
                let (backend, format) =
                    FileBackend::open_keeping(&config.state_file, config.history_max)?;
                Opened::File(backend, format)
            }
        };
        let tls = config
            .tls
            .as_ref()
            .map(load_tls)
            .transpose()
            .map_err(ServerError::Tls)?;
        let (tcp, bound) =
            crate::net::bind(config.port)
                .await
                .map_err(|source| ServerError::Bind {
                    port: config.port,
                    source,
                })?;
        let address = crate::net::local_addr(&tcp, bound);
        let peers = Peers::default();
        let tcp = PeerAcceptor::new(tcp, peers.clone());
        let (acceptor, scheme) = match tls {
            Some(tls_config) => (TlsAcceptor::new(tcp, tls_config).boxed(), "https"),
            None => (tcp.boxed(), "http"),
        };
        log_start(&config, &backend, scheme, address);
        let metrics = Arc::new(Metrics::new());
        let (store, writer, clock) = match backend {
            Opened::File(backend, _) => {
                let (store, writer) =
                    LockStore::start(backend, self.clock.clone(), metrics.clone())
                        .map_err(ServerError::Serve)?;
                (store, writer, self.clock)
            }
            Opened::Postgres(backend) => {
                // Leases start and end on the database's clock: this server reads by it too.
                let clock: Arc<dyn Clock> = Arc::new(backend.clock());
                let (store, writer) = LockStore::start(backend, clock.clone(), metrics.clone())
                    .map_err(ServerError::Serve)?;
                (store, writer, clock)
            }
        };
        let watcher = config
            .concourse
            .clone()
            .map(|concourse| {
                ConcourseClient::new(&concourse).map(|client| (client, concourse, Watch::default()))
            })
            .transpose()
            .map_err(ServerError::Concourse)?;
        Ok(Application {
            config,
            acceptor,
            address,
            scheme,
            store,
            clock,
            writer,
            head_timeout: self.head_timeout,
            peers,
            metrics,
            watcher,
        })
    }
}

/// A server that has bound its port and opened its state, ready to serve.
pub struct Application {
    config: Config,
    acceptor: BoxAcceptor,
    /// The open connections, for waiting requests to watch their own.
    peers: Peers,
    address: SocketAddr,
    scheme: &'static str,
    store: LockStore,
    clock: Arc<dyn Clock>,
    writer: JoinHandle<()>,
    head_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The build watcher, when the server watches a Concourse.
    watcher: Option<(ConcourseClient, Concourse, Watch)>,
}

impl Application {
    /// A builder for the server `config` describes.
    pub fn builder(config: Config) -> Builder {
        Builder {
            config,
            clock: Arc::new(SystemClock),
            head_timeout: connection::HEAD_TIMEOUT,
        }
    }

    /// The address the server listens on (all interfaces; the port is the real one).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The server's base URL on loopback: `http://127.0.0.1:PORT` (or https).
    pub fn loopback_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.address.port())
    }

    /// Serves until `shutdown` completes, then drains in-flight requests, lets the writer
    /// answer what is queued, and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        // A stop answers every request waiting in a queue at once (503), so that the drain
        // below is not held up by long-polls.
        let store = self.store.clone();
        let shutdown = async move {
            shutdown.await;
            store.stop_waiters();
            drop(store);
        };
        let watch = self.watcher.as_ref().map(|(_, _, watch)| watch.clone());
        let watcher = self.watcher.map(|(client, concourse, watch)| {
            tokio::spawn(crate::concourse::run(
                self.store.clone(),
                client,
                concourse,
                watch,
                self.metrics.clone(),
            ))
        });
        let api = http::Api {
            store: self.store,
            clock: self.clock,
            leases: http::Leases {
                default_ttl: self.config.default_ttl,
                max_ttl: self.config.max_ttl,
            },
            waiting: http::Waiting {
                max_wait: self.config.max_wait,
                grace: self.config.queue_grace,
            },
            peers: self.peers,
            metrics: self.metrics,
            concourse: self.config.concourse.clone(),
            watch,
        };
        let access = http::Access {
            user: self.config.auth.clone(),
            admin: self.config.admin.clone(),
            metrics_public: self.config.metrics_public,
        };
        let app = http::app(api, access);
        let acceptor = Limited::new(
            self.acceptor,
            self.head_timeout,
            connection::MAX_CONNECTIONS,
        );
        let served = poem::Server::new_with_acceptor(acceptor)
            .idle_timeout(IDLE_TIMEOUT)
            .http2_max_concurrent_streams(Some(MAX_STREAMS))
            .run_with_graceful_shutdown(app, shutdown, Some(SHUTDOWN_GRACE))
            .await;
        // The watcher stops with the server (it held a store handle too).
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        // The app held the last store handle: the writer answers what is queued, then stops.
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        tracing::info!("locker stopped");
        served.map_err(ServerError::Serve)
    }
}

/// Builds the server `config` describes and runs it until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    Application::builder(config)
        .build()
        .await?
        .run_until_stopped(shutdown)
        .await
}

/// The start-up line: where the server listens and what it serves (tests read the address
/// from it).
fn log_start(config: &Config, backend: &Opened, scheme: &str, address: SocketAddr) {
    use crate::store::Backend;
    let (table, storage) = match backend {
        Opened::File(backend, format) => {
            let mut notes = Vec::new();
            if config.state_file_is_default {
                notes.push("the default; set LOCKER_CONFIG to choose another");
            }
            match format {
                Format::Created => notes.push("created empty"),
                Format::Legacy => {
                    notes.push("the original server's format, rewritten on the first change")
                }
                Format::Current => {}
            }
            let state_note = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            };
            (
                backend.table(),
                format!("state file {}{state_note}", backend.path().display()),
            )
        }
        Opened::Postgres(backend) => (backend.table(), format!("database {}", backend.describe())),
    };
    let held = table.locks.values().filter(|l| !l.is_free()).count();
    let known = table.locks.len();
    tracing::info!(
        "locker {} listening on {scheme}://{address}, {storage}, {known} locks known ({held} held), auth {}, TLS {}",
        env!("CARGO_PKG_VERSION"),
        if config.auth.is_some() { "on" } else { "off" },
        if config.tls.is_some() { "on" } else { "off" },
    );
}

//! HTTPS in ureq with a rustls `ClientConfig` of our own.
//!
//! ureq 3 builds its rustls configuration from its `TlsConfig`, which can list root certificates
//! but cannot take a certificate verifier, so [`PinningVerifier`](super::PinningVerifier) needs a
//! connector of its own: ureq's `RustlsConnector` without the configuration building. It uses
//! ureq's `unversioned` transport API, which ureq leaves out of its semver promises, so a ureq
//! upgrade may need a change here.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::time::{Duration, Instant};
use ureq::unversioned::transport::{
    Buffers, ConnectProxyConnector, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout,
    TcpConnector, Transport, TransportAdapter,
};

/// A ureq agent that connects as ureq's default one does (through a CONNECT proxy when one is
/// configured) and speaks TLS with `tls`.
pub fn agent(config: ureq::config::Config, tls: Arc<ClientConfig>) -> ureq::Agent {
    let connector =
        ().chain(ConnectProxyConnector::default())
            .chain(TcpConnector::default())
            .chain(TlsConnector { config: tls });
    ureq::Agent::with_parts(config, connector, DefaultResolver::default())
}

/// Wraps the chained transport in TLS for `https` URLs.
#[derive(Debug)]
struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details.uri.host().unwrap_or_default();
        // An IPv6 host comes in brackets, as written in the URL.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host)
            .map_err(|_| ureq::Error::Tls("the URL's host is not a valid DNS name or IP address"))?
            .to_owned();
        let mut connection = ClientConnection::new(Arc::clone(&self.config), server_name)?;
        let mut socket = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        socket.set_timeout(time_left(details));
        connection.complete_io(&mut socket)?;
        Ok(Some(Either::B(TlsTransport {
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            stream: StreamOwned::new(connection, socket),
        })))
    }
}

/// The connect timeout less the time the connectors before this one took, so that the TCP
/// connection and the TLS handshake share one connect timeout as in ureq's own connector.
fn time_left(details: &ConnectionDetails) -> NextTimeout {
    let mut timeout = details.timeout;
    if let (Duration::Exact(limit), Instant::Exact(started), Instant::Exact(now)) =
        (timeout.after, details.now, (details.current_time)())
    {
        timeout.after =
            Duration::Exact(limit.saturating_sub(now.saturating_duration_since(started)));
    }
    timeout
}

/// A TLS connection over the chained transport.
struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("chained", &self.stream.sock.inner())
            .finish()
    }
}
